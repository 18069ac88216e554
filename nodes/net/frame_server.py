"""A trio server for the binary frame protocol (see ``protocol/README.md``).

Theory of operation
-------------------
One reader task per connection turns bytes into frames; each request runs in
its own task, so a client can pipeline requests and get responses as they
complete, matched by request id. Responses are written under one send lock
per connection (:class:`FrameSession`); a response may end with a file range
sent with ``os.sendfile`` straight from disk.

**Order per key.** Requests on one connection that carry the same key (a
chunk id) are answered in the order they arrived, and each one runs only
after the one before it has been answered: a GET pipelined after a DELETE of
the same chunk sees the chunk deleted. Requests with different keys (or
none) run concurrently and may be answered in any order.

**Bounds.** Whatever a peer sends, a connection holds at most
``max_in_flight`` requests and ``connection_bytes`` payload bytes, and all
connections of a server together at most ``buffered_bytes``
(:class:`~nodes.net.bounds.ByteBudget`). A frame's payload is reserved as soon
as its header is parsed, before any of it is read; while a reservation (or a
request slot) is not available the reader reads nothing more, so a peer that
sends faster than requests finish is slowed by TCP flow control, never
buffered. Before that reservation, the caller's ``admit_frame`` sees the
header (:class:`~protocol.frames.FrameHeader`) and may refuse the frame by
raising :class:`~protocol.errors.ProtocolError`: the refusal is answered with
that status and the connection is closed, nothing reserved, no payload read.
A refusal is final only once the requests before it on the connection have
been answered (an ``AUTH`` pipelined just before a ``PUT`` counts). The
payload buffer grows with the bytes that arrive (:mod:`protocol.frames`), and
each round of the scheduler takes every byte the socket holds (up to 1 MiB). A
frame's header and key must arrive within ``header_timeout`` of its first
byte (of the connection's start, for the first frame), its payload within
``header_timeout + length / min_payload_rate`` after its reservation, every
read within ``read_timeout``; an idle connection is closed after
``idle_timeout``; a response that cannot leave within ``send_timeout`` (a
peer that does not read) ends the connection, and so releases what its
requests held. At most ``max_connections`` connections are served
(:class:`~nodes.net.bounds.ConnectionGate`); one more gets a 503 error frame.

A malformed frame gets an error frame (request id 0) and the connection is
closed; a payload that fails its CRC32C gets a 400 for that request only.
What a request means is the caller's :data:`FrameHandler` (the storage
node's is :mod:`nodes.storage.binary_api`); any error it raises is answered
as an error frame, so no request can take the server down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from protocol.errors import ProtocolError, RemoteProtocolError, VStackError
from protocol.frames import (
    FLAG_RESPONSE,
    ChecksumMismatch,
    Frame,
    FrameConnection,
    FrameHeader,
    Opcode,
    response,
)

from .bounds import ByteBudget, ConnectionGate
from .zerocopy import receive_frame_bytes, sendfile

__all__ = ["FrameAdmission", "FrameHandler", "FrameLimits", "FrameSession", "serve_frames"]

log = logging.getLogger("vstack.binary")

#: A server's default budget of buffered payload bytes, all connections together.
DEFAULT_BUFFERED_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class FrameLimits:
    """What one frame server lets its peers make it hold, and for how long."""

    max_payload: int
    read_timeout: float = 30.0
    idle_timeout: float = 75.0
    #: A frame's header and key must arrive within this of its first byte.
    header_timeout: float = 30.0
    #: Slowest payload accepted (bytes/s), on top of ``header_timeout``.
    min_payload_rate: int = 64 * 1024
    #: How long one response may take to leave before the connection is dropped.
    send_timeout: float = 30.0
    #: Connections served at once (None: from the descriptor limit); one more gets a 503.
    max_connections: int | None = None
    #: Requests of one connection in flight at once.
    max_in_flight: int = 64
    #: Payload bytes one connection's requests may hold at once (None: 4 x max_payload).
    max_connection_bytes: int | None = None
    #: ... and all connections together (None: 256 MiB, at least one connection's).
    max_buffered_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.connection_bytes < self.max_payload:
            raise ValueError("a connection's byte budget must hold one maximal payload")
        if self.buffered_bytes < self.connection_bytes:
            raise ValueError("the server's byte budget must hold one connection's")
        if min(self.read_timeout, self.idle_timeout, self.header_timeout, self.send_timeout) <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def connection_bytes(self) -> int:
        return self.max_connection_bytes or 4 * self.max_payload

    @property
    def buffered_bytes(self) -> int:
        return self.max_buffered_bytes or max(DEFAULT_BUFFERED_BYTES, self.connection_bytes)


class FrameSession:
    """One connection's sending side: frames leave whole, one at a time.

    Args:
        send_timeout: how long one response may take to leave; past it (or on
            any other failure mid-send) the connection is broken and
            :attr:`cancel_scope`, the connection's, is cancelled.
    """

    def __init__(self, stream: trio.SocketStream, conn: FrameConnection, *,
                 send_timeout: float = math.inf) -> None:
        self.stream = stream
        self.conn = conn
        self.peer = _peer_of(stream)
        self.bearer: bytes | None = None  # the token this connection presented (AUTH)
        self.auth_pending = False  # an AUTH admitted and not yet answered
        self.send_lock = trio.Lock()
        self.broken = False
        self.send_timeout = send_timeout
        self.cancel_scope = trio.CancelScope()

    async def send(self, frame: Frame) -> None:
        await self.send_raw(self.conn.send(frame))

    async def send_raw(self, data: bytes, file: tuple[int, int, int] | None = None) -> None:
        """Send ``data`` then, if given, ``(fd, offset, length)`` of a file, as one unit.

        On any exception mid-send the connection is marked broken: a
        half-sent frame can never be followed by another.
        """
        async with self.send_lock:
            if self.broken:
                raise trio.BrokenResourceError("connection broken")
            # A bare cancel scope, not fail_after: this runs once per response.
            scope = trio.CancelScope(deadline=trio.current_time() + self.send_timeout)
            try:
                with scope:
                    if file is not None:
                        await sendfile(self.stream, *file, head=data)
                    else:
                        await self.stream.send_all(data)
                if scope.cancelled_caught:
                    raise trio.BrokenResourceError("the peer does not read its answers")
            except BaseException:
                self.broken = True
                self.cancel_scope.cancel()
                raise


#: Answers one request frame on a session (raising ProtocolError for an error frame).
FrameHandler = Callable[[FrameSession, Frame], Awaitable[None]]
#: Sees each frame's header before anything is reserved for it or read of it;
#: raises ProtocolError to refuse the frame (and end the connection).
FrameAdmission = Callable[[FrameSession, FrameHeader], None]


class _Refused(VStackError):
    """A frame refused at its header: answer ``status`` and close."""

    def __init__(self, header: FrameHeader, error: ProtocolError) -> None:
        super().__init__(error.msg)
        self.frame = Frame(opcode=header.opcode, request_id=header.request_id,
                           status=error.status, payload=error.msg.encode(), flags=FLAG_RESPONSE)


async def _answer(session: FrameSession, handler: FrameHandler, req: Frame) -> None:
    try:
        await handler(session, req)
    except ProtocolError as exc:
        await session.send(response(req, exc.status, exc.msg.encode()))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        log.exception("binary request %s failed", req.opcode.name)
        await session.send(response(req, 500, b"Internal server error"))


def _error_frame(status: int, message: str, request_id: int = 0) -> Frame:
    """The frame that reports a connection-level error (opcode PING)."""
    return Frame(opcode=Opcode.PING, request_id=request_id, status=status,
                 payload=message.encode(), flags=FLAG_RESPONSE)


class _Connection:
    """One connection: frames read within their deadlines and budgets, run in key order."""

    def __init__(self, handler: FrameHandler, limits: FrameLimits, stream: trio.SocketStream,
                 budget: ByteBudget, admit_frame: FrameAdmission | None = None) -> None:
        self.handler = handler
        self.admit_frame = admit_frame
        self.limits = limits
        self.conn = FrameConnection(max_payload=limits.max_payload)
        self.session = FrameSession(stream, self.conn, send_timeout=limits.send_timeout)
        self.budget = ByteBudget(limits.connection_bytes, parent=budget)
        self.slots = trio.Semaphore(limits.max_in_flight)
        self.last: dict[bytes, trio.Event] = {}  # key -> answered when its latest request is
        self.running = 0  # requests dispatched and not yet answered
        self.idle = trio.Event()  # set when ``running`` drops to 0
        # The first frame's header is due within header_timeout of the connection's start.
        self.first_deadline = trio.current_time() + limits.header_timeout

    async def serve(self) -> None:
        with self.session.cancel_scope:
            async with trio.open_nursery() as nursery:
                while not self.session.broken:
                    await self.slots.acquire()  # at max_in_flight, nothing more is read
                    try:
                        got = await self._next_frame()
                    except ChecksumMismatch as exc:
                        bad = exc.frame  # admitted like any frame before it is answered
                        try:
                            await self._admit(FrameHeader(
                                opcode=bad.opcode, request_id=bad.request_id, flags=0,
                                payload_length=len(bad.payload)))
                        except _Refused as refused:
                            self.slots.release()
                            await self.session.send(refused.frame)
                            break
                        self._dispatch(nursery, bad, 0, bad_crc=True)
                        continue
                    except _Refused as exc:
                        self.slots.release()
                        await self.session.send(exc.frame)
                        break
                    except RemoteProtocolError as exc:
                        self.slots.release()
                        await self.session.send(_error_frame(exc.status, exc.msg))
                        break
                    except BaseException:
                        self.slots.release()
                        raise
                    if got is None:
                        self.slots.release()
                        break
                    frame, charge = got
                    if frame.is_response:
                        self.budget.release(charge)
                        self.slots.release()
                        await self.session.send(_error_frame(
                            400, "clients send requests, not responses", frame.request_id))
                        break
                    self._dispatch(nursery, frame, charge)

    def _dispatch(self, nursery: trio.Nursery, req: Frame, charge: int, *,
                  bad_crc: bool = False) -> None:
        """Start ``req``'s task, behind the previous request with its key."""
        prev = self.last.get(req.key) if req.key else None
        done = trio.Event()
        if req.key:
            self.last[req.key] = done
        self.running += 1
        nursery.start_soon(self._run, req, charge, prev, done, bad_crc)

    async def _run(self, req: Frame, charge: int, prev: trio.Event | None, done: trio.Event,
                   bad_crc: bool) -> None:
        try:
            if prev is not None:
                await prev.wait()
            if bad_crc:
                if req.opcode is Opcode.AUTH:
                    self.session.auth_pending = False  # answered: another may follow
                await self.session.send(response(req, 400, b"payload CRC32C mismatch"))
            else:
                await _answer(self.session, self.handler, req)
        finally:
            done.set()
            if self.last.get(req.key) is done:
                del self.last[req.key]
            self.running -= 1
            if not self.running:
                self.idle.set()
            self.budget.release(charge)
            self.slots.release()

    async def _admit(self, header: FrameHeader) -> None:
        """Raise :class:`_Refused` if the caller's ``admit_frame`` refuses ``header``,
        even once every request before it has been answered."""
        if self.admit_frame is None:
            return
        try:
            self.admit_frame(self.session, header)
            return
        except ProtocolError as exc:
            if not self.running:
                raise _Refused(header, exc) from None
        while self.running:  # an earlier request (an AUTH) may change the answer
            self.idle = trio.Event()
            await self.idle.wait()
        try:
            self.admit_frame(self.session, header)
        except ProtocolError as exc:
            raise _Refused(header, exc) from None

    async def _next_frame(self) -> tuple[Frame, int] | None:
        """The next frame and the bytes reserved for it; ``None`` once the peer
        has closed between frames or is too slow. Nothing stays reserved when
        this raises (a protocol error, a checksum mismatch, a refused frame)."""
        conn, limits = self.conn, self.limits
        charge, reserved, deadline = 0, False, self.first_deadline
        self.first_deadline = math.inf
        try:
            while True:
                event = conn.next_event()
                if isinstance(event, Frame):
                    if not reserved:  # it came whole with earlier bytes: read no more until it fits
                        await self._admit(FrameHeader(
                            opcode=event.opcode, request_id=event.request_id, flags=event.flags,
                            payload_length=len(event.payload)))
                        await self.budget.acquire(len(event.payload))
                        charge = len(event.payload)
                    return event, charge
                header = conn.incoming_header
                if header is not None and not reserved:
                    size = header.payload_length
                    await self._admit(header)  # before anything is reserved or read for it
                    await self.budget.acquire(size)  # before a byte of its payload is read
                    conn.reserve_payload()  # charged: one buffer of its size, never copied
                    charge, reserved = size, True
                    deadline = trio.current_time() + limits.header_timeout + (
                        size / limits.min_payload_rate)
                elif deadline == math.inf and conn.buffered:
                    deadline = trio.current_time() + limits.header_timeout
                busy = bool(conn.buffered) or header is not None
                timeout = limits.read_timeout if busy else limits.idle_timeout
                with trio.move_on_at(min(trio.current_time() + timeout, deadline)):
                    if not await receive_frame_bytes(self.session.stream, conn) and not busy:
                        break  # closed between frames
                    if deadline == math.inf:  # the first bytes of a frame
                        deadline = trio.current_time() + limits.header_timeout
                    continue
                break  # timed out
        except BaseException:
            self.budget.release(charge)
            raise
        self.budget.release(charge)
        return None


async def _handle_connection(handler: FrameHandler, limits: FrameLimits, budget: ByteBudget,
                             stream: trio.SocketStream,
                             admit_frame: FrameAdmission | None = None) -> None:
    """One connection's whole life; nothing it does can take the server down."""
    try:
        await _Connection(handler, limits, stream, budget, admit_frame).serve()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the peer went away
    except* Exception as group:
        log.error("binary connection failed", exc_info=group)
    finally:
        with trio.move_on_after(1) as cs:
            cs.shield = True
            await stream.aclose()


async def serve_frames(handler: FrameHandler, *, host: str, port: int, limits: FrameLimits,
                       admit: Callable[[trio.SocketStream], bool] | None = None,
                       budget: ByteBudget | None = None,
                       admit_frame: FrameAdmission | None = None,
                       task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the frame protocol until cancelled; reports the bound port.

    ``admit`` sees each connection before a byte is read from it (e.g. to
    serve loopback peers only); a refused one is closed at once.
    ``admit_frame`` sees each frame's header before anything is reserved for
    it (see the module docstring). ``budget``
    is the byte budget of all its connections together (default: a new one of
    ``limits.buffered_bytes``; pass one to share it, or to watch it).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("binary protocol listening on %s:%d", host, bound)
    shared = budget if budget is not None else ByteBudget(limits.buffered_bytes)
    if shared.capacity < limits.connection_bytes:
        raise ValueError("the server's byte budget must hold one connection's")
    refusal = FrameConnection().send(_error_frame(503, "too many connections; retry later"))
    gate = ConnectionGate(f"binary protocol on port {bound}",
                          max_connections=limits.max_connections, refusal=refusal)

    async def run(stream: trio.SocketStream) -> None:
        if admit is not None and not admit(stream):
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        await _handle_connection(handler, limits, shared, stream, admit_frame)

    task_status.started(bound)
    await gate.serve(run, listeners)


def _peer_of(stream: trio.SocketStream) -> str:
    """The caller's IP address, for access checks ("" if it cannot be told)."""
    try:
        addr = stream.socket.getpeername()
    except (OSError, AttributeError):
        return ""
    return str(addr[0]) if isinstance(addr, tuple) else ""
