"""Wiring of a metadata replica: database, consensus engine, API and jobs in one nursery.

The only module of :mod:`nodes.metadata` that knows every other one:

* :mod:`.state` - the replica's state (database, Paxos engine, liveness view);
* :mod:`.paxos_replica` and :mod:`.learner` - the consensus engine;
  :mod:`.transport` and :mod:`.peer_api` - its peer port (frames, HMAC);
* :mod:`.routes` - the HTTP API (handlers in ``api_*.py``);
* :mod:`.liveness` - node registration, heartbeats, the monitor and prober;
* :mod:`.replication` - catch-up and view-counter merging between replicas;
* :mod:`.storage_checks` - calls to storage nodes (commit checks, deletes).

Every background job runs under :func:`nodes.net.jobs.run_forever`: one
failed iteration is logged and retried with back-off, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from nodes.net.http_client import HttpClient
from nodes.net.jobs import run_forever
from nodes.net.storage_client import open_storage_pool
from vstack.metadata_db import MetadataDB
from vstack.settings import MetadataSettings

from . import liveness, replication
from .peer_api import serve_peers
from .routes import serve_api
from .state import MetadataService

__all__ = ["serve_metadata"]

log = logging.getLogger("vstack.metadata")


def _start_jobs(nursery: trio.Nursery, svc: MetadataService) -> None:
    s = svc.settings

    def job(name: str, step: Callable[[MetadataService], Awaitable[object]], every: float,
            initial_delay: float = 0.0) -> None:
        async def run_step() -> None:
            await step(svc)

        nursery.start_soon(partial(run_forever, name, run_step, log=log, every=every,
                                   initial_delay=initial_delay))

    period = min(s.heartbeat_interval, s.node_timeout / 3)
    job("liveness monitor", liveness.monitor_step, period, initial_delay=period)
    if s.storage_nodes:
        job("storage node probe", liveness.probe_step, s.heartbeat_interval)
    if s.replicas > 1:
        job("catch-up", replication.catch_up, replication.CATCH_UP_INTERVAL)
        job("settling", replication.settle, replication.SETTLE_AFTER,
            initial_delay=replication.SETTLE_AFTER)
        job("view counter merge", replication.merge_views, s.views_merge_interval,
            initial_delay=s.views_merge_interval)


#: The largest answer a storage node's health or HEAD check may give this service.
NODE_ANSWER_BYTES = 64 * 1024


async def serve_metadata(
    settings: MetadataSettings,
    *,
    task_status: trio.TaskStatus[MetadataService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one metadata replica until cancelled; reports the service when listening."""
    db = await trio.to_thread.run_sync(
        lambda: MetadataDB(settings.database, synchronous=settings.sqlite_synchronous))
    reader = MetadataDB(settings.database, synchronous=settings.sqlite_synchronous)
    svc = MetadataService(settings, db, reader)
    try:
        # Calls to storage nodes: small answers only (health, HEAD), few idle connections.
        http = HttpClient(max_bytes=NODE_ANSWER_BYTES, max_idle_per_host=2, max_per_host=16,
                          headers=settings.auth.bearer_header())
        async with http, open_storage_pool(http, secret=settings.auth.cluster_secret) as storage, \
                trio.open_nursery() as nursery:
            svc.storage = storage
            await nursery.start(svc.transport.run)
            await nursery.start(svc.replica.run)
            if settings.replicas > 1:
                svc.peer_port = await nursery.start(serve_peers, svc)
            if svc.replica.joining:
                log.warning("replica %d has no past (a new database): joining the cluster "
                            "before it votes", settings.replica_id)
                nursery.start_soon(svc.replica.join)
            nursery.start_soon(svc.replica.recover)
            svc.port = await nursery.start(serve_api, svc)
            _start_jobs(nursery, svc)
            log.info("metadata replica %d of %d ready on port %d (database %s)",
                     settings.replica_id, settings.replicas, svc.port, settings.database)
            task_status.started(svc)
    finally:
        svc.replica.stop()
        with trio.move_on_after(5) as cs:
            cs.shield = True
            await svc.transport.aclose()
        reader.close()
        db.close()
        log.info("metadata replica %d stopped", settings.replica_id)
