"""Wiring of a storage node: open the store, start the listeners and jobs in one nursery.

:func:`serve_storage_node` is the only module of :mod:`nodes.storage` that
knows every other one: the node's operations (:mod:`.node`), its two wire
protocols (:mod:`.http_api`, :mod:`.binary_api`) and its background jobs
(:mod:`.jobs`, :mod:`.registrar`).
"""

from __future__ import annotations

import logging

import trio

from nodes.net.http_client import HttpClient
from vstack.settings import StorageSettings
from vstack.store import SuperblockStore

from . import binary_api, http_api, jobs
from .node import NodePorts, StorageNode
from .registrar import Registrar, load_node_key

__all__ = ["serve_storage_node"]

log = logging.getLogger("vstack.storage")


async def serve_storage_node(
    settings: StorageSettings, *, task_status: trio.TaskStatus[StorageNode] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a storage node until cancelled; reports the :class:`StorageNode` when listening."""
    store = await trio.to_thread.run_sync(
        lambda: SuperblockStore.open(settings.data_dir, max_superblock_size=settings.max_superblock_size)
    )
    node = StorageNode(settings, store)
    http = HttpClient(max_idle_per_host=2, headers=settings.auth.bearer_header())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run_committer)
            http_port = await nursery.start(http_api.serve, node)
            binary_port = await nursery.start(binary_api.serve, node)
            node.ports = NodePorts(http=http_port, binary=binary_port)
            jobs.start_all(nursery, node)
            if settings.metadata_urls and settings.node_url:
                key = await trio.to_thread.run_sync(load_node_key, settings.data_dir,
                                                    settings.node_key)
                for url in settings.metadata_urls:
                    nursery.start_soon(Registrar(node, url, http, node_key=key).run)
            log.info("storage node %s ready: HTTP %d, binary %d, data %s",
                     node.node_id, http_port, binary_port, settings.data_dir)
            task_status.started(node)
    finally:
        with trio.move_on_after(30) as cs:
            cs.shield = True
            await node.checkpoint()
        store.close()
        with trio.CancelScope(shield=True):
            await http.aclose()
        log.info("storage node %s stopped", node.node_id)
