"""Sans-IO helpers for the HTTP side of every V-Stack service (over h11).

h11 parses and frames HTTP/1.1; this module adds what each service would
otherwise repeat: a small router (method + path pattern), a request object,
responses whose body is either bytes or a :class:`FileRange` (bytes the I/O
layer sends with ``os.sendfile``, passed through h11 untouched with
``send_with_data_passthrough``), and JSON bodies for results and errors.

Errors follow one shape: ``{"error": "<message>", "detail": <anything>}`` with
a 4xx/5xx status, raised as :class:`~protocol.errors.ProtocolError` and turned
into a response by :func:`error_response`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "REASONS",
    "FileRange",
    "Request",
    "Response",
    "Router",
    "error_response",
    "json_bytes",
    "json_response",
    "parse_target",
    "reason_phrase",
]

#: h11's ``max_incomplete_event_size``: request line plus headers.
DEFAULT_MAX_HEADER_BYTES: Final = 16 * 1024

REASONS: Final[dict[int, bytes]] = {
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    206: b"Partial Content",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    411: b"Length Required",
    413: b"Content Too Large",
    416: b"Range Not Satisfiable",
    422: b"Unprocessable Content",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
    507: b"Insufficient Storage",
}


def reason_phrase(status: int) -> bytes:
    """The reason phrase of ``status``: ours, else the standard one, never empty."""
    known = REASONS.get(status)
    if known is not None:
        return known
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


@dataclass(frozen=True, slots=True)
class FileRange:
    """``length`` bytes of the open file ``fd`` from ``offset``.

    A response body the I/O layer sends without copying it through Python.
    ``len()`` is what h11 uses to frame it.
    """

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True, kw_only=True)
class Request:
    """A request line and headers; the body is read by the I/O layer."""

    method: str
    target: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    params: Mapping[str, str] = field(default_factory=dict)
    peer: str = ""  # the caller's IP address ("" when not a socket)

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        if raw is None:
            return None
        return int(raw)  # h11 has validated it already

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass(kw_only=True)
class Response:
    """A status, headers and a body of bytes or a :class:`FileRange`."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | FileRange = b""
    #: Called once the response is sent or abandoned (releases a FileRange's file).
    after: Callable[[], None] | None = None
    #: A body produced as it is sent (chunked transfer coding), instead of ``body``:
    #: called with ``write``, which sends one piece (and raises once the client is
    #: gone). If it raises, the answer is cut off (no final chunk): the client sees
    #: it incomplete, never as a whole answer.
    stream: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]] | None = None
    #: Instead of an answer, the connection is handed over (a websocket handshake):
    #: called with the transport stream, which replays the request's head first.
    takeover: Callable[[Any], Awaitable[None]] | None = None

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]


def json_bytes(obj: Any) -> bytes:
    """Compact JSON that is valid JSON: a non-finite float (NaN, Infinity,
    which ``json.dumps`` writes by default and no JSON parser accepts, e.g. a
    422 echoing the input ``1e999``) is written as ``null``."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def json_response(
    status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    body = json_bytes(obj)
    return Response(
        status=status,
        headers=[("Content-Type", "application/json"), *headers],
        body=body,
    )


def error_response(status: int, error: str, detail: Any = None) -> Response:
    """The JSON error every service answers: ``{"error": ..., "detail": ...}``.

    ``detail`` defaults to the message itself, which is where clients of the
    original (FastAPI) services look for it.
    """
    return json_response(status, {"error": error, "detail": error if detail is None else detail})


def parse_target(target: bytes) -> tuple[str, dict[str, str]]:
    """Split a request target into a decoded path and its query parameters."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError("request target must be ASCII") from None
    if text.startswith("/"):  # origin-form (RFC 9112 3.2.1): never a URL with a host
        path, _, query = text.partition("?")
    else:
        try:
            parts = urlsplit(text)
        except ValueError:
            raise RemoteProtocolError("malformed request target") from None
        path, query = parts.path, parts.query
    return path or "/", dict(parse_qsl(query, keep_blank_values=True))


H = TypeVar("H")
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class Router(Generic[H]):
    """Routes ``(method, path)`` to a handler, with ``{name}`` path segments.

    Unknown paths raise 404; a known path with another method raises 405 and
    lists the allowed methods. ``HEAD`` is routed only where it is declared.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, H]]] = []

    def add(self, method: str, pattern: str, handler: H) -> None:
        parts, pos = ["^"], 0
        for m in _PARAM.finditer(pattern):
            parts += [re.escape(pattern[pos : m.start()]), f"(?P<{m.group(1)}>[^/]+)"]
            pos = m.end()
        parts += [re.escape(pattern[pos:]), "$"]
        regex = re.compile("".join(parts))
        for existing, methods in self._routes:
            if existing.pattern == regex.pattern:
                methods[method.upper()] = handler
                return
        self._routes.append((regex, {method.upper(): handler}))

    def route(self, method: str, pattern: str) -> Callable[[H], H]:
        """Decorator form of :meth:`add`."""

        def register(handler: H) -> H:
            self.add(method, pattern, handler)
            return handler

        return register

    def allowed(self, path: str) -> set[str]:
        """The methods routed for ``path`` (empty: an unknown path)."""
        return {method for regex, methods in self._routes if regex.match(path) for method in methods}

    def match(self, method: str, path: str) -> tuple[H, dict[str, str]]:
        for regex, methods in self._routes:
            m = regex.match(path)
            if m is None:
                continue
            handler = methods.get(method.upper())
            if handler is not None:
                return handler, {k: unquote(v) for k, v in m.groupdict().items()}
        allowed = self.allowed(path)
        if allowed:
            raise ProtocolError(f"Method Not Allowed (allowed: {', '.join(sorted(allowed))})", 405)
        raise ProtocolError("Not Found", 404)
