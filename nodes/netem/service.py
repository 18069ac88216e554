"""``vstack-node netem``: the proxies and the control API in one nursery.

:func:`serve_netem` starts one :class:`~nodes.netem.proxy.Proxy` per
``--proxy``, then the control API (:mod:`nodes.netem.api`) on the shared
HTTP server, and reports the running :class:`~nodes.netem.state.Netem`
(with the bound ports, so tests can listen on port 0).
"""

from __future__ import annotations

import logging
import signal

import trio

from nodes.net.http_server import HttpLimits, serve_http
from vstack.netem import NetemSettings

from .api import build_router
from .proxy import Proxy
from .state import Netem

__all__ = ["run_netem", "serve_netem"]

log = logging.getLogger("vstack.netem")


async def serve_netem(settings: NetemSettings, *,
                      task_status: trio.TaskStatus[Netem] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the emulator until cancelled."""
    em = Netem(settings)
    async with trio.open_nursery() as nursery:
        for spec in settings.proxies:
            proxy = Proxy(spec, settings)
            port: int = await nursery.start(proxy.serve)
            em.proxies[port] = proxy
        em.control_port = await nursery.start(_serve_control, em)
        task_status.started(em)


async def _serve_control(em: Netem, *, task_status: trio.TaskStatus[int]) -> None:
    await serve_http(build_router(em), host=em.settings.host, port=em.settings.control_port,
                     limits=HttpLimits(max_connections=64), task_status=task_status)


async def run_netem(settings: NetemSettings) -> None:
    """Serve until SIGINT or SIGTERM (what ``vstack-node netem`` runs)."""
    async with trio.open_nursery() as nursery:
        em: Netem = await nursery.start(serve_netem, settings)
        for port, proxy in em.proxies.items():
            log.warning("netem proxy %s:%d -> %s:%d", settings.host, port, proxy.spec.host,
                        proxy.spec.port)
        log.warning("netem control API: http://%s:%d/proxies", settings.host, em.control_port)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("got %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
