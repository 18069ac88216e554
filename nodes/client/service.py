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
from nodes.net.metadata_client import MetadataUnavailable
from protocol.errors import VStackError
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


#: How long the service waits for the metadata service at start before it gives up.
METADATA_WAIT_SEC = 30.0


async def _wait_for_metadata(client: SmartClient) -> None:
    """As the original, listen only once the metadata service answers (but wait for it
    a while: in a cluster starting at once it may come up a moment later).

    Raises:
        MetadataUnavailable: no answer within :data:`METADATA_WAIT_SEC`.
    """
    last: VStackError | None = None
    with trio.move_on_after(METADATA_WAIT_SEC):
        while True:
            try:
                res = await client.metadata.call("GET", "/health")
                if res.status == 200:
                    return
                last = MetadataUnavailable(f"/health answered {res.status}")
            except VStackError as exc:
                last = exc
            log.info("waiting for the metadata service: %s", last)
            await trio.sleep(1)
    raise MetadataUnavailable(f"not reachable in {METADATA_WAIT_SEC:.0f} s: {last}")


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
        await _wait_for_metadata(client)
        svc = await nursery.start(lambda task_status: serve_client_http(
            client, nursery, settings, port=settings.port, task_status=task_status))
        log.info("client service ready on port %d", svc.port)
        task_status.started(svc)
