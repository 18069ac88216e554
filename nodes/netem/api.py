"""The emulator's control API: read and change each proxy's faults at run time.

``GET /proxies`` lists every proxy (its target, current settings and
counters); ``GET /proxies/{port}`` one of them; ``PUT /proxies/{port}``
changes the fields its JSON body names (a partial update: ``{"latency_ms":
200}`` leaves the other settings as they were) and answers the proxy as it
now is. A bad body is a 422 listing every problem, and changes nothing; an
unknown port is a 404. Changing faults needs the cluster secret (or a
loopback caller when none is set, :mod:`vstack.auth`); reading them is a
read.
"""

from __future__ import annotations

from typing import Final

from nodes.net import routing
from nodes.net.http_server import Body, Handler
from nodes.net.metrics import ServiceMetrics
from nodes.net.routing import RouteTable
from protocol.errors import ProtocolError
from protocol.http import Request, Response, Router, json_response
from protocol.validate import parse_json_object
from vstack.auth import Access

from .proxy import Proxy
from .state import Netem

__all__ = ["ROUTES", "build_router"]

#: A PUT body is a handful of numbers.
MAX_BODY: Final = 4096


async def health(em: Netem, req: Request, body: Body) -> Response:
    return json_response(200, {"status": "healthy", "service": "netem",
                               "proxies": len(em.proxies)})


async def list_proxies(em: Netem, req: Request, body: Body) -> Response:
    return json_response(200, {"proxies": [p.to_json() for p in em.proxies.values()]})


async def show_proxy(em: Netem, req: Request, body: Body) -> Response:
    return json_response(200, _proxy(em, req).to_json())


async def set_proxy(em: Netem, req: Request, body: Body) -> Response:
    proxy = _proxy(em, req)
    changes = parse_json_object(await body.read(MAX_BODY))
    proxy.set_faults(proxy.faults.with_changes(changes))
    return json_response(200, proxy.to_json())


def _proxy(em: Netem, req: Request) -> Proxy:
    raw = req.params["port"]
    proxy = em.proxies.get(int(raw)) if raw.isdigit() and len(raw) <= 5 else None
    if proxy is None:
        raise ProtocolError(f"no proxy listens on port {raw[:20]}", 404)
    return proxy


#: (method, path, who may call it, endpoint); see :mod:`vstack.auth`.
ROUTES: Final[RouteTable] = [
    ("GET", "/health", Access.PUBLIC, health),
    ("GET", "/proxies", Access.READ, list_proxies),
    ("GET", "/proxies/{port}", Access.READ, show_proxy),
    ("PUT", "/proxies/{port}", Access.CLUSTER, set_proxy),
]


def build_router(em: Netem) -> Router[Handler]:
    return routing.build_router(ROUTES, em, em.settings.auth, ServiceMetrics("netem"))
