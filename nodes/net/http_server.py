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
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Final

import h11
import trio

from protocol.errors import ProtocolError
from protocol.http import (
    Request,
    Response,
    Router,
    error_response,
    parse_target,
)

from .bounds import ConnectionGate
from .http_conn import RECV_BYTES, Body, HeadTimeout, HttpLimits, ReadTimeout, ServerConnection

Handler = Callable[[Request, Body], Awaitable[Response]]

__all__ = ["Body", "Handler", "HttpLimits", "serve_http", "serve_stream"]

log = logging.getLogger("vstack.http")


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
    conn = ServerConnection(stream, limits)
    try:
        await _serve_connection(conn, router, default_headers)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ReadTimeout):
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
    conn: ServerConnection, router: Router[Handler], default_headers: Callable[[], list[tuple[str, str]]]
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
        except HeadTimeout:
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


async def _serve_request(conn: ServerConnection, router: Router[Handler],
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
    except ReadTimeout:
        response = error_response(408, "timed out reading the request")
    except h11.RemoteProtocolError as exc:
        response = error_response(exc.error_status_hint, str(exc))
    except Exception:
        log.exception("unhandled error serving %s %s", method, event.target)
        response = error_response(500, "Internal server error")
    if response.takeover is not None and conn.conn.our_state is h11.SEND_RESPONSE:
        try:
            replay = _Replay(conn.stream, _head_bytes(event) + conn.conn.trailing_data[0])
            await response.takeover(replay)
        finally:
            if response.after is not None:
                response.after()
        return False
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


def _head_bytes(event: h11.Request) -> bytes:
    """The request's head again, for a handler that takes the connection over."""
    lines = [b"%s %s HTTP/%s" % (event.method, event.target, event.http_version)]
    lines += [name + b": " + value for name, value in event.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Replay(trio.abc.Stream):
    """A connection taken over: ``prefix`` (bytes already read) first, then the stream."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self.prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.prefix:
            n = len(self.prefix) if max_bytes is None else max_bytes
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            return data
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


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


async def _drain_small(conn: ServerConnection, body: Body, request: h11.Request) -> None:
    """Read the rest of a small unread body, so the connection can be reused."""
    headers = {k.lower(): v for k, v in request.headers}
    if b"transfer-encoding" in headers or int(headers.get(b"content-length", 0)) > _DRAIN_LIMIT:
        return
    with trio.move_on_after(conn.limits.drain_timeout), contextlib.suppress(
            ProtocolError, ReadTimeout, h11.RemoteProtocolError):
        await body.read(_DRAIN_LIMIT)


async def _drain_after_answer(conn: ServerConnection, body: Body) -> None:
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
                data = await conn.stream.receive_some(min(RECV_BYTES, left))
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
