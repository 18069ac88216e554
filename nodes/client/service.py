"""The client service (``vstack-node client``, port 8086).

The smart client as a service: the contract's status, history, stream and
control endpoints, a live dashboard over a websocket, and the HLS gateway
through which any player plays any stored video.

=====================  ==========================================================
:mod:`.client`         :class:`SmartClient`: pools, node scores, prober, history
:mod:`.session`        one playback: prefetch scheduler and player
:mod:`.chunks`         one chunk: scored choice, hedging, failover, verification
:mod:`.hls`            the HLS playlist and the segment cache
:mod:`.state`          what handlers share; the playback ``/api/control`` runs
:mod:`.http_api`       the endpoints
=====================  ==========================================================
"""

from __future__ import annotations

import logging

import trio

from nodes.net.http_server import HttpLimits, serve_http
from vstack.settings import ClientSettings

from . import http_api
from .client import SmartClient, open_smart_client
from .state import ClientService

__all__ = ["serve_client", "serve_client_http"]

log = logging.getLogger("vstack.client")


async def serve_client_http(client: SmartClient, nursery: trio.Nursery, settings: ClientSettings,
                            *, port: int, task_status: trio.TaskStatus[ClientService]
                            = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the client's endpoints for ``client`` on ``port`` until cancelled."""
    svc = ClientService(client, nursery, settings.auth, hls_cache_bytes=settings.hls_cache_bytes)
    svc.port = await nursery.start(lambda task_status: serve_http(
        http_api.build_router(svc), host=settings.host, port=port, limits=HttpLimits(),
        default_headers=lambda: [("Access-Control-Allow-Origin", "*")],
        task_status=task_status))
    task_status.started(svc)
    await trio.sleep_forever()


async def serve_client(settings: ClientSettings, *,
                       task_status: trio.TaskStatus[ClientService] = trio.TASK_STATUS_IGNORED
                       ) -> None:
    """Run the client service until cancelled; reports it once listening."""
    auth = settings.auth
    token = auth.cluster_secret or auth.api_token
    headers = [("Authorization", "Bearer " + token.decode("ascii"))] if token else []
    async with open_smart_client(settings.metadata_urls, settings.policy(),
                                 headers=headers, token=token,
                                 binary=settings.transport == "auto",
                                 monitoring_interval=settings.monitoring_interval) as client, \
            trio.open_nursery() as nursery:
        svc = await nursery.start(lambda task_status: serve_client_http(
            client, nursery, settings, port=settings.port, task_status=task_status))
        log.info("client service ready on port %d", svc.port)
        task_status.started(svc)
