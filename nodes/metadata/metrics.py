"""A metadata replica's figures for ``/metrics`` (see :mod:`nodes.net.metrics`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from nodes.net.metrics import CounterMetricFamily, GaugeMetricFamily, Metric, ServiceMetrics, gauge

from .state import MetadataService

__all__ = ["replica_metrics"]

#: Paxos counters of the replica, and what each means.
PAXOS: dict[str, str] = {
    "rounds": "Paxos rounds run (prepare and accept)",
    "fast": "Changes decided on the leader's fast path (accept only)",
    "retries": "Rounds started again after a conflict (a higher ballot, a lost race)",
    "batches_sent": "Batches of Paxos messages sent to peers",
    "messages_sent": "Paxos messages sent to peers",
    "flushes": "Acceptor state flushes to SQLite (group commit)",
    "slots_flushed": "Acceptor slots written by those flushes",
}


def replica_metrics(svc: MetadataService) -> ServiceMetrics:
    m = ServiceMetrics("metadata")

    def state() -> Iterable[Metric]:
        replica = str(svc.settings.replica_id)
        for name, doc in PAXOS.items():
            family = CounterMetricFamily(f"vstack_paxos_{name}", doc, labels=["replica"])
            family.add_metric([replica], svc.replica.stats.get(name, 0))
            yield family
        verdicts = Counter(r.status for r in svc.node_records())
        nodes = GaugeMetricFamily("vstack_storage_nodes", "Storage nodes by liveness verdict",
                                  labels=["status"])
        for status in sorted({"healthy", "degraded", "unhealthy", "down", *verdicts}):
            nodes.add_metric([status], verdicts.get(status, 0))
        yield nodes
        totals = svc.reader.totals()
        yield gauge("vstack_videos", "Videos known", totals.get("total_videos", 0))
        yield gauge("vstack_chunks", "Chunks placed", totals.get("total_chunks", 0))
        yield gauge("vstack_paxos_slots", "Registers this acceptor holds",
                    len(svc.replica.acceptor.slots))

    m.collect_with(state)
    return m
