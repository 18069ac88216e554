"""Route tables with an access class per route (see :mod:`vstack.auth`).

Each service lists its endpoints as ``(method, path, access, endpoint)``,
``endpoint(state, request, body)`` a module-level function;
:func:`build_router` binds them to the service's state and puts the access
check in front of every one that is not public, so no endpoint can be added
without saying who may call it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeAlias

import h11

from protocol.errors import ProtocolError
from protocol.http import Request, Response, Router
from vstack.auth import Access, AuthPolicy

from .http_conn import ReadTimeout
from .http_server import Body, Handler
from .metrics import ServiceMetrics, metrics_response

__all__ = ["Endpoint", "RouteTable", "build_router", "guarded", "timed"]

Endpoint: TypeAlias = Callable[[Any, Request, Body], Awaitable[Response]]
RouteTable: TypeAlias = Sequence[tuple[str, str, Access, Endpoint]]


def guarded(policy: AuthPolicy, access: Access, handler: Handler) -> Handler:
    """``handler`` behind the access check (401 with a JSON reason when refused)."""
    if access is Access.PUBLIC:
        return handler

    async def checked(request: Request, body: Body) -> Response:
        policy.check(access, request.header("authorization"), request.peer,
                     origin=request.header("origin"), host=request.header("host"))
        return await handler(request, body)

    return checked


def timed(metrics: ServiceMetrics, method: str, route: str, handler: Handler) -> Handler:
    """``handler``, its requests counted and timed under the route's pattern."""

    async def measured(request: Request, body: Body) -> Response:
        start = time.perf_counter()

        def record(status: int, response: Response | None = None) -> None:
            metrics.observe(method, route, status, time.perf_counter() - start,
                            request.content_length or 0, response)

        try:
            response = await handler(request, body)
        except ProtocolError as exc:
            record(exc.status)
            raise
        except ReadTimeout:
            record(408)  # what the server answers for a body that did not come in time
            raise
        except h11.RemoteProtocolError as exc:
            record(exc.error_status_hint)
            raise
        except Exception:
            record(500)
            raise
        # (A request cancelled because the client left got no answer: not counted.)
        record(response.status, response)
        return response

    return measured


def build_router(table: RouteTable, state: object, policy: AuthPolicy,
                 metrics: ServiceMetrics | None = None) -> Router[Handler]:
    """The routes of ``table``, each behind its access check; with ``metrics``, each
    counted and timed, and ``GET /metrics`` (a READ) added."""
    router: Router[Handler] = Router()
    for method, path, access, endpoint in table:
        handler = guarded(policy, access, partial(endpoint, state))
        router.add(method, path, handler if metrics is None else
                   timed(metrics, method, path, handler))
    if metrics is not None:
        async def scrape(request: Request, body: Body) -> Response:
            return metrics_response(metrics)

        router.add("GET", "/metrics", guarded(policy, Access.READ, scrape))
    return router
