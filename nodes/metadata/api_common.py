"""What every metadata endpoint shares: JSON in and out, query integers, the handler type."""

from __future__ import annotations

from typing import Any, Final

from nodes.net.http_server import Body
from protocol.http import Request, Response, json_response
from protocol.validate import INT64_MAX, INT64_MIN, ValidationError, parse_json_object

__all__ = ["MAX_BODY", "ok", "query_int", "read_json"]

#: The largest JSON body any metadata endpoint reads.
MAX_BODY: Final = 1024 * 1024

def ok(obj: Any, status: int = 200) -> Response:
    return json_response(status, obj)


async def read_json(body: Body) -> dict[str, Any]:
    """The request body as a JSON object (422 otherwise; 413 past :data:`MAX_BODY`)."""
    return parse_json_object(await body.read(MAX_BODY))


def query_int(req: Request, name: str, default: int) -> int:
    """An integer query parameter (422 if it is not one, or does not fit 64 bits)."""
    raw = req.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if len(raw) <= 20 else None  # 20 digits: every int64, and no slow int()
    except ValueError:
        raise ValidationError([{"type": "int_parsing", "loc": ["query", name],
                                "msg": "Input should be a valid integer", "input": raw[:40]}]) from None
    if value is None or not INT64_MIN <= value <= INT64_MAX:
        raise ValidationError([{"type": "int_range", "loc": ["query", name],
                                "msg": "Input should fit a 64-bit integer", "input": raw[:40]}])
    return value
