"""A small trio HTTP/1.1 server over h11, shared by every V-Stack service.

One task per connection reads events, routes each request through a
:class:`protocol.http.Router`, and writes the handler's
:class:`~protocol.http.Response`. A body that is a
:class:`~protocol.http.FileRange` goes through h11's
``send_with_data_passthrough`` untouched and leaves with ``os.sendfile``.

Handlers read request bodies through :class:`Body`, which enforces a byte
limit *before* reading (by ``Content-Length``) and while reading. Any
:class:`~protocol.errors.ProtocolError` becomes a JSON error with its status;
any other exception becomes a 500 without a traceback on the wire (it is
logged). ``OPTIONS`` on a routed path is answered 204 with ``Allow`` and,
where the service sends CORS headers, a CORS preflight answer.

Bounds (:class:`HttpLimits`): a request's *head* (request line and headers)
must arrive whole within ``header_timeout`` of its first byte (of the
connection's start, for the first request), as nginx's
``client_header_timeout``, whatever the pace of the bytes; it may not be
longer than ``max_header_bytes`` (431), counted exactly, however the bytes
are split between reads. Between requests a connection may stay idle for
``idle_timeout``; every read of a body must complete within
``read_timeout``, and the whole body within ``header_timeout + length /
min_body_rate`` (408 past it). An answer must leave within ``send_timeout +
length / min_send_rate``, or the connection is closed: a client that does
not read cannot hold it (and the answer's memory). A request with two
``Authorization`` headers gets 400. At most ``max_connections`` connections are served; one
more is answered 503 and closed (:class:`~nodes.net.bounds.ConnectionGate`).

An answer sent before its request body was read (a 413, say) closes the
connection, but only after the rest of the body has been read and thrown
away, up to ``drain_bytes`` or ``drain_timeout``: a client that sends its
whole body before it reads (no ``Expect: 100-continue``, as Python's
urllib, requests and aiohttp do) would otherwise get a reset instead of the
answer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

import h11
import trio

from protocol.errors import ProtocolError, VStackError
from protocol.http import (
    DEFAULT_MAX_HEADER_BYTES,
    FileRange,
    Request,
    Response,
    Router,
    error_response,
    parse_target,
    reason_phrase,
)

from .bounds import ConnectionGate
from .zerocopy import sendfile

__all__ = ["Body", "Handler", "HttpLimits", "serve_http", "serve_stream"]

log = logging.getLogger("vstack.http")

_RECV = 256 * 1024
#: Pieces of an answer up to this size in all are sent as one (copied), larger ones alone.
_COALESCE = 64 * 1024
#: After an answer that left the request body unread: discard at most this much
#: of it, for at most this long, before closing.
DRAIN_BYTES: Final = 64 * 1024 * 1024
DRAIN_SECONDS: Final = 10.0


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """What one HTTP server lets its clients make it hold, and for how long."""

    #: Request line plus headers, in bytes (431 past it).
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    #: One read of a request body.
    read_timeout: float = 30.0
    #: Between requests on a kept-alive connection.
    idle_timeout: float = 75.0
    #: A whole request head, from its first byte (the connection's start, for the first).
    header_timeout: float = 30.0
    #: Connections served at once (None: from the descriptor limit); one more gets a 503.
    max_connections: int | None = None
    #: Unread request body discarded after an early answer, at most (bytes, seconds).
    drain_bytes: int = DRAIN_BYTES
    drain_timeout: float = DRAIN_SECONDS
    #: A whole request body: header_timeout + length / min_body_rate (bytes/s).
    min_body_rate: int = 64 * 1024
    #: A whole answer: send_timeout + length / min_send_rate (bytes/s), or the connection closes.
    send_timeout: float = 30.0
    min_send_rate: int = 64 * 1024

    def __post_init__(self) -> None:
        if min(self.read_timeout, self.idle_timeout, self.header_timeout, self.send_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.min_body_rate, self.min_send_rate) <= 0:
            raise ValueError("rates must be positive")
        if self.max_header_bytes < 64:
            raise ValueError("max_header_bytes is too small for any request")


class _Timeout(VStackError):
    """No byte, a body or an answer did not move in time: the connection closes."""


class _HeadTimeout(_Timeout):
    """A request head started but did not arrive whole within ``header_timeout``."""


class Body:
    """The body of one request, read on demand, whole within its deadline
    (``header_timeout + length / min_body_rate`` from its head, the length
    declared or else the reader's limit)."""

    def __init__(self, conn: _Connection, declared: int | None = None) -> None:
        self._conn = conn
        self.declared = declared  # Content-Length, if the request has one
        self.consumed = False
        self._start = trio.current_time()
        self.deadline = math.inf

    async def chunks(self, limit: int) -> AsyncIterator[bytes]:
        """Yield the body in pieces; 413 before reading if its declared length
        passes ``limit``, and as soon as it passes ``limit`` bytes otherwise."""
        if self.declared is not None and self.declared > limit:
            raise ProtocolError(f"body larger than {limit} bytes", 413)
        if self.deadline == math.inf:
            limits = self._conn.limits
            size = limit if self.declared is None else self.declared
            self.deadline = self._start + limits.header_timeout + size / limits.min_body_rate
        seen = 0
        while True:
            event = await self._conn.next_event(self.deadline)
            if isinstance(event, h11.Data):
                seen += len(event.data)
                if seen > limit:
                    raise ProtocolError(f"body larger than {limit} bytes", 413)
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.consumed = True
                return
            else:  # pragma: no cover - h11 guarantees Data/EndOfMessage here
                raise ProtocolError("unexpected event in body", 400)

    async def read(self, limit: int) -> bytes:
        parts = [part async for part in self.chunks(limit)]
        return b"".join(parts)


Handler = Callable[[Request, Body], Awaitable[Response]]


class _Connection:
    def __init__(self, stream: trio.abc.HalfCloseableStream, limits: HttpLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.head_request = False
        self.peer = _peer_of(stream)
        self.first = True  # the connection's first request: its head deadline runs from now

    async def next_request(self) -> h11.Event | type[h11.PAUSED]:
        """The next request head (or the end of the connection), within the head
        deadline and exactly within ``max_header_bytes``.

        h11 checks its limit only against an *incomplete* head, and only after
        a read: a head completed by the read that crossed the limit would pass.
        So we count every byte the head was given (what h11 still held from the
        previous request, plus what we feed it), read no more than the limit
        at a time, and measure the head once h11 has parsed it.

        Raises:
            h11.RemoteProtocolError: a malformed head, or one over the limit (431).
            _HeadTimeout: the head started but did not complete in time.
            _Timeout: no byte came: within ``header_timeout`` of the
                connection's start, or ``idle_timeout`` after an answer.
        """
        limits = self.limits
        limit = limits.max_header_bytes
        fed = len(self.conn.trailing_data[0])
        deadline = trio.current_time() + limits.header_timeout if fed or self.first else math.inf
        self.first = False
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.Request) and fed - len(self.conn.trailing_data[0]) > limit:
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
                return event  # type: ignore[return-value]
            if fed >= limit:  # h11 only refuses an incomplete head *over* its limit
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            wait = trio.current_time() + limits.idle_timeout if deadline == math.inf else deadline
            with trio.move_on_at(wait):
                data = await self.stream.receive_some(limit - fed)
                if deadline == math.inf:
                    deadline = trio.current_time() + limits.header_timeout
                fed += len(data)
                self.conn.receive_data(bytes(data))  # no copy: sockets give bytes already
                continue
            raise _HeadTimeout if fed else _Timeout  # a 408 only to a head that started

    async def next_event(self, deadline: float = math.inf) -> h11.Event | type[h11.PAUSED]:
        """The next event of a request body, each read within ``read_timeout``
        and all before ``deadline``."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            with trio.move_on_at(min(trio.current_time() + self.limits.read_timeout, deadline)):
                data = await self.stream.receive_some(_RECV)
                self.conn.receive_data(bytes(data))
                continue
            raise _Timeout

    async def send_response(self, resp: Response, extra: list[tuple[str, str]]) -> None:
        """Send ``resp`` within ``send_timeout + length / min_send_rate`` (else
        :class:`_Timeout`); a large body is never copied, a FileRange leaves by sendfile."""
        body = resp.body
        headers = [*resp.header_pairs(), *((k.encode(), v.encode()) for k, v in extra)]
        if not any(k.lower() == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(body)).encode()))
        head = self.conn.send(
            h11.Response(status_code=resp.status, headers=headers,
                         reason=reason_phrase(resp.status))
        ) or b""
        pieces: list[bytes | FileRange] = [head]
        if len(body) and self.conn.our_state is h11.SEND_BODY and not self.head_request:
            event = h11.Data(data=body)  # type: ignore[arg-type]
            pieces += self.conn.send_with_data_passthrough(event) or []
        pieces.append(self.conn.send(h11.EndOfMessage()) or b"")
        limits = self.limits
        size = sum(len(piece) for piece in pieces)
        with trio.move_on_after(limits.send_timeout + size / limits.min_send_rate) as scope:
            await self._send_pieces(pieces)
        if scope.cancelled_caught:
            raise _Timeout("the client does not read its answer")

    async def _send_pieces(self, pieces: list[bytes | FileRange]) -> None:
        pending = b""  # small pieces go out together
        for piece in pieces:
            if isinstance(piece, FileRange):
                await sendfile(self.stream, piece.fd, piece.offset, piece.length, head=pending)
                pending = b""
            elif len(pending) + len(piece) <= _COALESCE:
                pending += piece
            else:
                if pending:
                    await self.stream.send_all(pending)
                pending = b""
                await self.stream.send_all(piece)
        if pending:
            await self.stream.send_all(pending)


async def serve_http(
    router: Router[Handler],
    *,
    host: str,
    port: int,
    limits: HttpLimits,
    default_headers: Callable[[], list[tuple[str, str]]] = list,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``router`` until cancelled; reports the bound port via ``task_status``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("HTTP listening on %s:%d", host, bound)
    gate = ConnectionGate(f"HTTP on port {bound}", max_connections=limits.max_connections,
                          refusal=_REFUSAL)
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        await serve_stream(stream, router, limits=limits, default_headers=default_headers)

    await gate.serve(handle, listeners)


def _refusal() -> bytes:
    """The whole answer to a connection over the cap, sent before a byte is read."""
    body = error_response(503, "Too many connections; retry later").body
    assert isinstance(body, bytes)
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body))


_REFUSAL: Final = _refusal()


async def serve_stream(
    stream: trio.abc.HalfCloseableStream,
    router: Router[Handler],
    *,
    limits: HttpLimits,
    default_headers: Callable[[], list[tuple[str, str]]] = list,
) -> None:
    """Serve the requests of one open connection, then close ``stream``.

    What :func:`serve_http` runs for each accepted socket; any other stream
    (``trio.testing.memory_stream_pair``, TLS) works too, its
    :class:`~protocol.http.FileRange` bodies sent by read and send. Returns
    once the peer closes, times out, breaks the protocol or the connection
    must close; never raises for what a peer can cause.
    """
    conn = _Connection(stream, limits)
    try:
        await _serve_connection(conn, router, default_headers)
    except (trio.BrokenResourceError, trio.ClosedResourceError, _Timeout):
        pass
    except h11.RemoteProtocolError as exc:
        log.debug("bad HTTP from peer: %s", exc)
    except Exception:
        log.exception("HTTP connection failed")
    finally:
        with trio.move_on_after(1) as cs:
            cs.shield = True
            await _lingering_close(stream)


async def _serve_connection(
    conn: _Connection, router: Router[Handler], default_headers: Callable[[], list[tuple[str, str]]]
) -> None:
    while True:
        try:
            event = await conn.next_request()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if conn.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                msg = "Request header fields too large" if status == 431 else str(exc)
                await conn.send_response(error_response(status, msg), [("Connection", "close")])
            return
        except _HeadTimeout:
            if conn.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await conn.send_response(error_response(408, "timed out reading the request head"),
                                         [("Connection", "close")])
            return
        if not isinstance(event, h11.Request):  # ConnectionClosed, PAUSED
            return
        if not await _serve_request(conn, router, default_headers, event):
            return
        try:
            conn.conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _serve_request(conn: _Connection, router: Router[Handler],
                         default_headers: Callable[[], list[tuple[str, str]]],
                         event: h11.Request) -> bool:
    """Answer one request; whether the connection may serve another."""
    started = time.perf_counter()
    length = dict(event.headers).get(b"content-length")
    body = Body(conn, int(length) if length is not None else None)  # h11 checked it
    method = event.method.decode("ascii", "replace")
    conn.head_request = method == "HEAD"
    extra = default_headers()
    try:
        if sum(k.lower() == b"authorization" for k, _ in event.headers) > 1:
            raise ProtocolError("more than one Authorization header", 400)
        path, query = parse_target(event.target)
        request = Request(
            method=method,
            target=event.target.decode("ascii", "replace"),
            path=path,
            query=query,
            headers={k.decode().lower(): v.decode("latin-1") for k, v in event.headers},
            peer=conn.peer,
        )
        allowed = router.allowed(path) if method == "OPTIONS" else set()
        if allowed and "OPTIONS" not in allowed:
            response = _preflight(request, allowed, extra)
        else:
            handler, params = router.match(method, path)
            request = replace(request, params=params)
            response = await handler(request, body)
    except ProtocolError as exc:
        response = error_response(exc.status, exc.msg, getattr(exc, "problems", None))
    except _Timeout:
        response = error_response(408, "timed out reading the request")
    except h11.RemoteProtocolError as exc:
        response = error_response(exc.error_status_hint, str(exc))
    except Exception:
        log.exception("unhandled error serving %s %s", method, event.target)
        response = error_response(500, "Internal server error")
    try:
        if not body.consumed and conn.conn.their_state is h11.SEND_BODY and response.status != 408:
            await _drain_small(conn, body, event)
        unread = conn.conn.their_state is not h11.DONE
        if unread:
            extra.append(("Connection", "close"))
        # Told nothing but this answer, a client waiting for "100 Continue" sends no body.
        drain = unread and response.status != 408 and not conn.conn.client_is_waiting_for_100_continue
        if conn.conn.our_state is not h11.SEND_RESPONSE:
            return False
        await conn.send_response(response, extra)
    finally:
        if response.after is not None:
            response.after()
    log.debug("%s %s -> %d in %.2f ms", method, event.target.decode(errors="replace"),
              response.status, (time.perf_counter() - started) * 1e3)
    if drain:
        await _drain_after_answer(conn, body)
    state: object = conn.conn.our_state  # changed by send_response
    return not unread and state is not h11.MUST_CLOSE


def _preflight(request: Request, allowed: set[str], extra: list[tuple[str, str]]) -> Response:
    """204 to ``OPTIONS`` on a routed path: ``Allow``, and where the service sends
    CORS headers (``extra`` has an allowed origin), the rest of a preflight answer."""
    methods = ", ".join(sorted(allowed | {"OPTIONS"}))
    headers = [("Allow", methods)]
    sent = {name.lower() for name, _ in extra}
    if "access-control-allow-origin" in sent:
        if "access-control-allow-methods" not in sent:
            headers.append(("Access-Control-Allow-Methods", methods))
        asked = request.header("access-control-request-headers")
        if asked and "access-control-allow-headers" not in sent:
            headers.append(("Access-Control-Allow-Headers", asked))
        headers.append(("Access-Control-Max-Age", "600"))
    return Response(status=204, headers=headers)


_DRAIN_LIMIT = 64 * 1024


async def _drain_small(conn: _Connection, body: Body, request: h11.Request) -> None:
    """Read the rest of a small unread body, so the connection can be reused."""
    headers = {k.lower(): v for k, v in request.headers}
    if b"transfer-encoding" in headers or int(headers.get(b"content-length", 0)) > _DRAIN_LIMIT:
        return
    with trio.move_on_after(conn.limits.drain_timeout), contextlib.suppress(
            ProtocolError, _Timeout, h11.RemoteProtocolError):
        await body.read(_DRAIN_LIMIT)


async def _drain_after_answer(conn: _Connection, body: Body) -> None:
    """Read and discard the rest of a body the answer did not need, then let
    the connection close: within ``drain_bytes`` and ``drain_timeout``.

    A client that sends its whole body before reading (no ``Expect:
    100-continue``) reads the answer only once it has sent everything; were
    the connection closed with its body still arriving, the kernel would
    answer the rest with a reset and the answer would be lost. A body
    declared longer than the bound is not drained at all: the client could
    not finish sending it anyway.
    """
    limits = conn.limits
    declared = body.declared
    if declared is not None and declared > limits.drain_bytes:
        return
    left = limits.drain_bytes
    with trio.move_on_after(limits.drain_timeout), contextlib.suppress(
            h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        while conn.conn.their_state is h11.SEND_BODY and left > 0:
            event = conn.conn.next_event()
            if event is h11.NEED_DATA:
                data = await conn.stream.receive_some(min(_RECV, left))
                if not data:
                    return
                left -= len(data)
                conn.conn.receive_data(bytes(data))
            elif not isinstance(event, h11.Data):
                return


async def _lingering_close(stream: trio.abc.HalfCloseableStream) -> None:
    """Close so that a response is not lost to a reset (RFC 9112, section 9.6).

    Closing with unread request bytes makes the kernel send RST, which can
    destroy the response the client has not read yet; so we stop sending,
    read and discard briefly, then close.
    """
    try:
        await stream.send_eof()
        for _ in range(64):
            if not await stream.receive_some(65536):
                break
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


def _peer_of(stream: trio.abc.HalfCloseableStream) -> str:
    """The caller's IP address, for access checks ("" for a stream that is no socket)."""
    sock = getattr(stream, "socket", None)
    try:
        addr = sock.getpeername() if sock is not None else None
    except OSError:
        return ""
    return str(addr[0]) if isinstance(addr, tuple) else ""
