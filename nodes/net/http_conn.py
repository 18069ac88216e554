"""One HTTP/1.1 connection of the server: reading requests within their bounds,
sending answers within theirs (see :mod:`.http_server` for the rules)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import h11
import trio

from protocol.errors import ProtocolError, VStackError
from protocol.http import DEFAULT_MAX_HEADER_BYTES, FileRange, Response, reason_phrase

from .zerocopy import sendfile

__all__ = ["RECV_BYTES", "AbortedAnswer", "Body", "HeadTimeout", "HttpLimits", "ReadTimeout",
           "ServerConnection", "peer_of"]

RECV_BYTES = 256 * 1024
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


class ReadTimeout(VStackError):
    """No byte, a body or an answer did not move in time: the connection closes."""


class AbortedAnswer(ReadTimeout):
    """A streamed answer whose producer failed midway: the connection is closed
    without the final chunk, so the client knows the answer is incomplete."""


class HeadTimeout(ReadTimeout):
    """A request head started but did not arrive whole within ``header_timeout``."""


class Body:
    """The body of one request, read on demand, whole within its deadline
    (``header_timeout + length / min_body_rate`` from its head, the length
    declared or else the reader's limit)."""

    def __init__(self, conn: ServerConnection, declared: int | None = None) -> None:
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




class ServerConnection:
    def __init__(self, stream: trio.abc.HalfCloseableStream, limits: HttpLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.head_request = False
        self.peer = peer_of(stream)
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
            HeadTimeout: the head started but did not complete in time.
            ReadTimeout: no byte came: within ``header_timeout`` of the
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
            raise HeadTimeout if fed else ReadTimeout  # a 408 only to a head that started

    async def next_event(self, deadline: float = math.inf) -> h11.Event | type[h11.PAUSED]:
        """The next event of a request body, each read within ``read_timeout``
        and all before ``deadline``."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            with trio.move_on_at(min(trio.current_time() + self.limits.read_timeout, deadline)):
                data = await self.stream.receive_some(RECV_BYTES)
                self.conn.receive_data(bytes(data))
                continue
            raise ReadTimeout

    async def send_response(self, resp: Response, extra: list[tuple[str, str]]) -> None:
        """Send ``resp`` within ``send_timeout + length / min_send_rate`` (else
        :class:`ReadTimeout`); a large body is never copied, a FileRange leaves by sendfile."""
        if resp.stream is not None:
            await self._send_stream(resp, extra)
            return
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
            raise ReadTimeout("the client does not read its answer")

    async def _send_stream(self, resp: Response, extra: list[tuple[str, str]]) -> None:
        """A body produced while it is sent: chunked (or up to the close, for an
        HTTP/1.0 client); each piece within the send deadline of its size. If the
        producer fails, the answer is cut off (:class:`AbortedAnswer`)."""
        assert resp.stream is not None
        headers = [*resp.header_pairs(), *((k.encode(), v.encode()) for k, v in extra)]
        limits = self.limits

        async def send(data: bytes) -> None:
            with trio.move_on_after(limits.send_timeout + len(data) / limits.min_send_rate) \
                    as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                raise ReadTimeout("the client does not read its answer")

        async def write(piece: bytes) -> None:
            if piece and not self.head_request:
                await send(self.conn.send(h11.Data(data=piece)) or b"")

        await send(self.conn.send(h11.Response(status_code=resp.status, headers=headers,
                                               reason=reason_phrase(resp.status))) or b"")
        if not self.head_request:
            try:
                await resp.stream(write)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ReadTimeout):
                raise  # the client left, or does not read
            except Exception as exc:
                raise AbortedAnswer(f"the answer failed midway: {exc}") from exc
        await send(self.conn.send(h11.EndOfMessage()) or b"")

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


def peer_of(stream: trio.abc.HalfCloseableStream) -> str:
    """The caller's IP address, for access checks ("" for a stream that is no socket)."""
    sock = getattr(stream, "socket", None)
    try:
        addr = sock.getpeername() if sock is not None else None
    except OSError:
        return ""
    return str(addr[0]) if isinstance(addr, tuple) else ""
