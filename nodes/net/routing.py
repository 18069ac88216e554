"""Route tables with an access class per route (see :mod:`vstack.auth`).

Each service lists its endpoints as ``(method, path, access, endpoint)``,
``endpoint(state, request, body)`` a module-level function;
:func:`build_router` binds them to the service's state and puts the access
check in front of every one that is not public, so no endpoint can be added
without saying who may call it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeAlias

from protocol.http import Request, Response, Router
from vstack.auth import Access, AuthPolicy

from .http_server import Body, Handler

__all__ = ["Endpoint", "RouteTable", "build_router", "guarded"]

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


def build_router(table: RouteTable, state: object, policy: AuthPolicy) -> Router[Handler]:
    router: Router[Handler] = Router()
    for method, path, access, endpoint in table:
        router.add(method, path, guarded(policy, access, partial(endpoint, state)))
    return router
