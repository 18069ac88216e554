"""What every metadata endpoint shares: JSON in and out, query integers, the handler type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from nodes.net.http_server import Body
from protocol.http import Request, Response, json_response
from protocol.validate import ValidationError, parse_json_object

from .state import MetadataService

__all__ = ["MAX_BODY", "Endpoint", "ok", "query_int", "read_json"]

#: The largest JSON body any metadata endpoint reads.
MAX_BODY: Final = 1024 * 1024

#: A metadata endpoint: a module-level function over the replica's state.
Endpoint = Callable[[MetadataService, Request, Body], Awaitable[Response]]


def ok(obj: Any, status: int = 200) -> Response:
    return json_response(status, obj)


async def read_json(body: Body) -> dict[str, Any]:
    """The request body as a JSON object (422 otherwise; 413 past :data:`MAX_BODY`)."""
    return parse_json_object(await body.read(MAX_BODY))


def query_int(req: Request, name: str, default: int) -> int:
    raw = req.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValidationError([{"type": "int_parsing", "loc": ["query", name],
                                "msg": "Input should be a valid integer", "input": raw}]) from None
