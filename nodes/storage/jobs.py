"""Background jobs of a storage node, each a task in the node's nursery.

* checkpointer: writes the index checkpoint every ``checkpoint_interval``
  seconds when anything changed, so a restart scans only a short tail;
* compactor: rewrites sealed superblocks whose garbage share passes
  ``compaction_garbage_ratio`` (see :func:`compact`), online;
* scrubber: re-reads every chunk at ``scrub_rate_bytes`` per second and
  checks its CRC32C, quarantining any that fail, so corruption of data that
  is only ever served zero-copy is still found;
* registrar: registers with every metadata replica, then heartbeats.
"""

from __future__ import annotations

import logging

import trio

from nodes.net.http_client import request
from protocol.errors import ProtocolError, VStackError
from vstack.store import Busy, Location, PendingWrite

from .node import VERSION, StorageNode

__all__ = ["compact", "compact_once", "register_and_heartbeat", "scrub_pass", "start_all"]

log = logging.getLogger("vstack.storage.jobs")


def start_all(nursery: trio.Nursery, node: StorageNode) -> None:
    s = node.settings
    nursery.start_soon(run_checkpointer, node)
    nursery.start_soon(run_compactor, node)
    if s.scrub_rate_bytes > 0:
        nursery.start_soon(run_scrubber, node)
    if s.metadata_urls and s.node_url:
        for url in s.metadata_urls:
            nursery.start_soon(register_and_heartbeat, node, url)


# -- checkpoints ------------------------------------------------------------------


async def run_checkpointer(node: StorageNode) -> None:
    while True:
        await trio.sleep(node.settings.checkpoint_interval)
        if node.changes:
            await node.checkpoint()


# -- compaction -------------------------------------------------------------------


async def run_compactor(node: StorageNode) -> None:
    while True:
        await trio.sleep(node.settings.compaction_interval)
        await compact_once(node)


async def compact_once(node: StorageNode) -> list[int]:
    """Compact every superblock past the garbage threshold; returns their ids."""
    done = []
    for sb_id in node.store.compaction_candidates(node.settings.compaction_garbage_ratio):
        await compact(node, sb_id)
        done.append(sb_id)
    return done


async def compact(node: StorageNode, sb_id: int) -> None:
    """Move the live records of superblock ``sb_id`` forward, then delete it.

    Reads keep working throughout: a chunk is served from the old place until
    its copy is durable and published, and the old file stays open until the
    last reader of it is done. A crash at any point leaves either the old
    record, the copy, or both (same sequence number: either is right).
    """
    store = node.store
    copied = dropped = 0
    for loc in store.live_records(sb_id):
        if loc.quarantined:
            store.drop(loc)
            dropped += 1
            continue
        if await _copy_forward(node, loc):
            copied += 1
    fd, size = store.superblock_fd(sb_id)
    tombstones = await trio.to_thread.run_sync(store.tombstones_to_carry, fd, sb_id, size)
    for rec in tombstones:
        pw = store.reserve_tombstone_copy(rec)
        await node.commit(pw)
        _raise_if_failed(pw)
    path = store.retire(sb_id)
    await node.checkpoint()  # the index no longer points into sb_id: safe to delete
    await trio.to_thread.run_sync(store.unlink, path)
    log.info("compacted superblock %d: %d chunks moved, %d tombstones kept, %d corrupt dropped",
             sb_id, copied, len(tombstones), dropped)


async def _copy_forward(node: StorageNode, loc: Location) -> bool:
    store = node.store
    while True:
        current = store.lookup(loc.key)
        if current is None or current.sb != loc.sb:
            return False  # deleted or already moved meanwhile
        rec = store.header(current)
        if rec is None:
            return False
        with store.reading(current) as fd:
            data = await trio.to_thread.run_sync(store.read_verified, fd, current)
        if data is None:
            store.quarantine(current, "CRC32C mismatch found by compaction")
            store.drop(current)
            return False
        try:
            pw = store.reserve_copy(rec, data)
        except Busy as busy:
            await busy.pending.waiter.wait()
            continue
        await node.commit(pw)
        _raise_if_failed(pw)
        return True


def _raise_if_failed(pw: PendingWrite) -> None:
    if pw.error is not None:
        raise ProtocolError(f"compaction write failed: {pw.error}", 500)


# -- scrubbing --------------------------------------------------------------------


async def run_scrubber(node: StorageNode) -> None:
    while True:
        await scrub_pass(node, rate=node.settings.scrub_rate_bytes)
        await trio.sleep(node.settings.scrub_pause)


async def scrub_pass(node: StorageNode, *, rate: int) -> tuple[int, int]:
    """Check every chunk once, at most ``rate`` bytes per second.

    Returns:
        ``(chunks checked, chunks quarantined)``.
    """
    store = node.store
    checked = bad = 0
    row = 0
    while row < store.rows():
        loc = store.location_of_row(row)
        row += 1
        if loc is None or loc.quarantined:
            continue
        try:
            fd = store.acquire(loc)
        except ProtocolError:
            continue  # moved by compaction, which checks what it copies
        try:
            data = await trio.to_thread.run_sync(store.read_verified, fd, loc)
        finally:
            store.release(loc)
        checked += 1
        if data is None:
            store.quarantine(loc, "CRC32C mismatch found by scrubber")
            bad += 1
        else:
            store.mark_verified(loc)
        if rate:
            await trio.sleep(loc.size / rate)
    if checked:
        log.info("scrub pass: %d chunks checked, %d quarantined", checked, bad)
    return checked, bad


# -- registration -------------------------------------------------------------------


async def register_and_heartbeat(node: StorageNode, metadata_url: str) -> None:
    """Register with one metadata replica (retrying), then heartbeat forever."""
    s = node.settings
    base = metadata_url.rstrip("/")
    await trio.sleep(2)
    body = {"node_url": s.node_url, "node_id": node.node_id, "version": VERSION}
    delay = 5.0
    while True:
        try:
            with trio.fail_after(5):
                res = await request("POST", f"{base}/nodes/register", json_body=body)
            if res.status == 200:
                log.info("registered with metadata service %s", base)
                break
            log.warning("registration with %s answered %d", base, res.status)
        except (VStackError, trio.TooSlowError, ValueError, KeyError, TypeError) as exc:
            log.warning("registration with %s failed: %s", base, exc)
        await trio.sleep(delay)
        delay = min(delay * 2, 60.0)
    while True:
        await trio.sleep(s.heartbeat_interval)
        beat = {
            "disk_usage_percent": round(node.disk_usage_percent(), 2),
            "chunk_count": node.chunk_count(),
            "free_bytes": node.health()["free_bytes"],
            "version": VERSION,
        }
        try:
            with trio.fail_after(5):
                res = await request("POST", f"{base}/nodes/{node.node_id}/heartbeat", json_body=beat)
            if res.status == 404:
                # The replica forgot us (fresh database): register again.
                with trio.fail_after(5):
                    await request("POST", f"{base}/nodes/register", json_body=body)
        except (VStackError, trio.TooSlowError, ValueError, KeyError, TypeError) as exc:
            log.debug("heartbeat to %s failed: %s", base, exc)
