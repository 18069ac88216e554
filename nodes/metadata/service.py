"""Wiring of a metadata replica: database, consensus engine, API and jobs in one nursery."""

from __future__ import annotations

import logging

import trio

from nodes.net.storage_client import open_storage_pool
from vstack.metadata_db import MetadataDB
from vstack.settings import MetadataSettings

from .api import serve as serve_api
from .state import MetadataService

__all__ = ["serve_metadata"]

log = logging.getLogger("vstack.metadata")


async def serve_metadata(
    settings: MetadataSettings,
    *,
    task_status: trio.TaskStatus[MetadataService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one metadata replica until cancelled; reports the service when listening."""
    db = await trio.to_thread.run_sync(
        lambda: MetadataDB(settings.database, synchronous=settings.sqlite_synchronous))
    reader = MetadataDB(settings.database, synchronous=settings.sqlite_synchronous)
    service = MetadataService(settings, db, reader)
    service.replica.run_blocking = service.run_db
    try:
        async with open_storage_pool() as storage, trio.open_nursery() as nursery:
            service.storage = storage
            await nursery.start(service.replica.run)
            nursery.start_soon(service.replica.recover)
            service.port = await nursery.start(serve_api, service)
            nursery.start_soon(service.run_liveness_monitor)
            if settings.storage_nodes:
                nursery.start_soon(service.run_prober)
            if settings.replicas > 1:
                nursery.start_soon(service.run_catch_up)
                nursery.start_soon(service.run_views_merger)
            log.info("metadata replica %d of %d ready on port %d (database %s)",
                     settings.replica_id, settings.replicas, service.port, settings.database)
            task_status.started(service)
    finally:
        service.replica.stop()
        with trio.move_on_after(5) as cs:
            cs.shield = True
            await service.transport.aclose()
        reader.close()
        db.close()
        log.info("metadata replica %d stopped", settings.replica_id)
