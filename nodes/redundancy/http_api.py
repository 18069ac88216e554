"""The redundancy manager's small HTTP port: ``/health`` (what it did) and ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterable

import trio

from nodes.net import routing
from nodes.net.http_server import Body, HttpLimits, serve_http
from nodes.net.metrics import CounterMetricFamily, Metric, ServiceMetrics, gauge
from nodes.net.routing import RouteTable
from protocol.http import Request, Response, json_response
from vstack.auth import Access

from .state import Manager

__all__ = ["serve"]

#: The manager's counters, and what each means.
COUNTERS: dict[str, str] = {
    "passes": "Passes over the cluster",
    "repairs": "Chunks brought back to full redundancy",
    "repair_failures": "Repairs that failed (tried again later)",
    "migrations": "Chunks converted between replication and erasure coding",
    "orphans_deleted": "Unreferenced copies collected",
    "uploads_expired": "Stalled uploads marked failed and collected",
    "bytes_moved": "Bytes written by repairs and migrations",
}


async def health(mgr: Manager, req: Request, body: Body) -> Response:
    return json_response(200, {"status": "healthy", "service": "redundancy-manager",
                               **mgr.stats.as_json()})


def manager_metrics(mgr: Manager) -> ServiceMetrics:
    m = ServiceMetrics("redundancy")

    def state() -> Iterable[Metric]:
        stats = mgr.stats
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"vstack_redundancy_{name}", doc,
                                      value=getattr(stats, name))
        yield gauge("vstack_redundancy_repair_backlog", "Chunks short of copies at the last "
                    "pass (the repair backlog)", stats.under_replicated)
        yield gauge("vstack_redundancy_unrecoverable_chunks", "Chunks with too few copies "
                    "left to rebuild, at the last pass", stats.unrecoverable)

    m.collect_with(state)
    return m


ROUTES: RouteTable = (("GET", "/health", Access.PUBLIC, health),)


async def serve(mgr: Manager, host: str, port: int, *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    router = routing.build_router(ROUTES, mgr, mgr.settings.auth, manager_metrics(mgr))
    await serve_http(router, host=host, port=port, limits=HttpLimits(),
                     task_status=task_status)
