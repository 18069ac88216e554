"""A storage node's figures for ``/metrics`` (see :mod:`nodes.net.metrics`)."""

from __future__ import annotations

from collections.abc import Iterable

from nodes.net.metrics import Metric, ServiceMetrics, counter, gauge

from .node import StorageNode

__all__ = ["node_metrics"]

FSYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def node_metrics(node: StorageNode) -> ServiceMetrics:
    """The node's metrics: HTTP (by the router), fsync and group commit (recorded by
    the committer), and its store's state (read at each scrape)."""
    m = ServiceMetrics("storage")
    fsync = m.histogram("vstack_storage_fsync_duration_seconds",
                        "Time of one group commit's fdatasync (every file of the batch)",
                        FSYNC_BUCKETS)
    size = m.histogram("vstack_storage_group_commit_writes",
                       "Writes acknowledged by one fdatasync (group commit size)", BATCH_BUCKETS)

    def committed(seconds: float, writes: int) -> None:
        fsync.observe(seconds)
        size.observe(writes)

    node.on_commit = committed

    def state() -> Iterable[Metric]:
        stats = node.store.statistics()
        labels = {"node_id": node.node_id}
        yield gauge("vstack_storage_chunks", "Chunks stored (quarantined ones excluded)",
                    stats.chunk_count, labels)
        yield gauge("vstack_storage_stored_bytes", "Bytes of live chunks", stats.stored_bytes,
                    labels)
        yield gauge("vstack_storage_superblock_bytes", "Bytes of superblock files",
                    stats.file_bytes, labels)
        yield gauge("vstack_storage_garbage_bytes", "Bytes compaction would reclaim",
                    stats.garbage_bytes, labels)
        yield gauge("vstack_storage_quarantined_chunks", "Chunks that failed their checksum",
                    stats.quarantined, labels)
        yield gauge("vstack_storage_pending_writes", "Writes waiting for their fsync",
                    stats.pending_writes, labels)
        yield gauge("vstack_storage_disk_usage_ratio", "Used fraction of the file system",
                    node.disk_usage_percent() / 100.0, labels)
        yield counter("vstack_storage_fsync_batches", "Group commits (fdatasync rounds)",
                      node.fsync_batches)

    m.collect_with(state)
    return m
