"""The web page (``vstack-node web``, port 8085): upload, watch, the cluster live.

=====================  ==========================================================
:mod:`.api`            the endpoints and pages
:mod:`.dashboard`      the cluster snapshot, made once a second for every page
:mod:`.state`          what handlers share
``static/``            the pages, their scripts and the vendored hls.js and uPlot
=====================  ==========================================================
"""

from __future__ import annotations

import logging

import trio

from nodes.net.http_client import HttpClient
from nodes.net.http_server import HttpLimits, serve_http
from nodes.net.metadata_client import MetadataClient
from vstack.settings import WebSettings

from . import api
from .dashboard import keep_snapshot
from .state import WebService

__all__ = ["serve_web"]

log = logging.getLogger("vstack.web")


async def serve_web(settings: WebSettings, *,
                    task_status: trio.TaskStatus[WebService] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the page until cancelled; reports the :class:`WebService` once listening."""
    auth = settings.auth
    token = auth.cluster_secret or auth.api_token
    headers = [("Authorization", "Bearer " + token.decode("ascii"))] if token else []
    async with HttpClient(headers=headers, max_idle_per_host=8) as http, \
            trio.open_nursery() as nursery:
        svc = WebService(settings, http, MetadataClient(settings.metadata_urls, http=http))
        nursery.start_soon(keep_snapshot, settings, http, svc.metadata, svc.snapshot)
        svc.port = await nursery.start(lambda task_status: serve_http(
            api.build_router(svc), host=settings.host, port=settings.port,
            limits=HttpLimits(read_timeout=60.0), task_status=task_status))
        log.info("web page ready on http://%s:%d/", settings.host, svc.port)
        task_status.started(svc)
