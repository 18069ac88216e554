"""A small trio HTTP/1.1 server over h11, shared by every V-Stack service.

One task per connection reads events with a timeout on every read (slow or
idle clients are dropped), routes each request through a
:class:`protocol.http.Router`, and writes the handler's
:class:`~protocol.http.Response`. A body that is a
:class:`~protocol.http.FileRange` goes through h11's
``send_with_data_passthrough`` untouched and leaves with ``os.sendfile``.

Handlers read request bodies through :class:`Body`, which enforces a byte
limit *before* reading (by ``Content-Length``) and while reading. Any
:class:`~protocol.errors.ProtocolError` becomes a JSON error with its status;
any other exception becomes a 500 without a traceback on the wire (it is
logged). After an error with an unread body, the connection is closed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import h11
import trio

from protocol.errors import ProtocolError, VStackError
from protocol.http import (
    DEFAULT_MAX_HEADER_BYTES,
    REASONS,
    FileRange,
    Request,
    Response,
    Router,
    error_response,
    parse_target,
)

from .zerocopy import sendfile

__all__ = ["Body", "Handler", "HttpLimits", "serve_http", "serve_stream"]

log = logging.getLogger("vstack.http")

_RECV = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    read_timeout: float = 30.0
    idle_timeout: float = 75.0


class _Timeout(VStackError):
    pass


class Body:
    """The body of one request, read on demand."""

    def __init__(self, conn: _Connection, declared: int | None = None) -> None:
        self._conn = conn
        self._declared = declared  # Content-Length, if the request has one
        self.consumed = False

    async def chunks(self, limit: int) -> AsyncIterator[bytes]:
        """Yield the body in pieces; 413 before reading if its declared length
        passes ``limit``, and as soon as it passes ``limit`` bytes otherwise."""
        if self._declared is not None and self._declared > limit:
            raise ProtocolError(f"body larger than {limit} bytes", 413)
        seen = 0
        while True:
            event = await self._conn.next_event()
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

    async def next_event(self, *, idle: bool = False) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            timeout = self.limits.idle_timeout if idle else self.limits.read_timeout
            # While headers are awaited, read no more than the header limit at a
            # time: h11 checks the limit only against an incomplete event.
            size = _RECV if self.conn.their_state is h11.SEND_BODY else self.limits.max_header_bytes
            with trio.move_on_after(timeout):
                data = await self.stream.receive_some(size)
                self.conn.receive_data(bytes(data))  # no copy: sockets give bytes already
                continue
            raise _Timeout

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def send_response(self, resp: Response, extra: list[tuple[str, str]]) -> None:
        body = resp.body
        headers = [*resp.header_pairs(), *((k.encode(), v.encode()) for k, v in extra)]
        if not any(k.lower() == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(body)).encode()))
        head = self.conn.send(
            h11.Response(status_code=resp.status, headers=headers,
                         reason=REASONS.get(resp.status, b""))
        ) or b""
        if len(body) and self.conn.our_state is h11.SEND_BODY and not self.head_request:
            if isinstance(body, FileRange):
                event = h11.Data(data=body)  # type: ignore[arg-type]
                for piece in self.conn.send_with_data_passthrough(event) or []:
                    if isinstance(piece, FileRange):
                        await sendfile(self.stream, piece.fd, piece.offset, piece.length, head=head)
                        head = b""
                    else:
                        head += piece
            else:
                head += self.conn.send(h11.Data(data=body)) or b""
        head += self.conn.send(h11.EndOfMessage()) or b""
        if head:
            await self.stream.send_all(head)


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
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        await serve_stream(stream, router, limits=limits, default_headers=default_headers)

    await trio.serve_listeners(handle, listeners)


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
            event = await conn.next_event(idle=True)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if conn.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                msg = "Request header fields too large" if status == 431 else str(exc)
                await conn.send_response(error_response(status, msg), [("Connection", "close")])
            return
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return
        if not isinstance(event, h11.Request):
            return
        started = time.perf_counter()
        length = dict(event.headers).get(b"content-length")
        body = Body(conn, int(length) if length is not None else None)  # h11 checked it
        method = event.method.decode("ascii", "replace")
        conn.head_request = method == "HEAD"
        try:
            path, query = parse_target(event.target)
            handler, params = router.match(method, path)
            request = Request(
                method=method,
                target=event.target.decode("ascii", "replace"),
                path=path,
                query=query,
                headers={k.decode().lower(): v.decode("latin-1") for k, v in event.headers},
                params=params,
            )
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
        extra = default_headers()
        if not body.consumed and conn.conn.their_state is h11.SEND_BODY and response.status != 408:
            await _drain_small(conn, body, event)
        unread = conn.conn.their_state is not h11.DONE
        if unread:
            extra.append(("Connection", "close"))
        try:
            if conn.conn.our_state is not h11.SEND_RESPONSE:
                return
            await conn.send_response(response, extra)
        finally:
            if response.after is not None:
                response.after()
        log.debug("%s %s -> %d in %.2f ms", method, event.target.decode(errors="replace"),
                  response.status, (time.perf_counter() - started) * 1e3)
        state: object = conn.conn.our_state  # changed by send_response
        if unread or state is h11.MUST_CLOSE:
            return
        try:
            conn.conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


_DRAIN_LIMIT = 64 * 1024


async def _drain_small(conn: _Connection, body: Body, request: h11.Request) -> None:
    """Read the rest of a small unread body, so the connection can be reused."""
    headers = {k.lower(): v for k, v in request.headers}
    if b"transfer-encoding" in headers or int(headers.get(b"content-length", 0)) > _DRAIN_LIMIT:
        return
    with contextlib.suppress(ProtocolError, _Timeout, h11.RemoteProtocolError):
        await body.read(_DRAIN_LIMIT)


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
