"""A trio server for the binary frame protocol (see ``protocol/README.md``).

One reader task per connection turns bytes into frames; each request runs in
its own task (at most :data:`MAX_IN_FLIGHT` per connection), so a client can
pipeline many requests and get responses as they complete, matched by
request id. Responses are written under one send lock per connection
(:class:`FrameSession`); a response may end with a file range sent with
``os.sendfile`` straight from disk.

A malformed frame gets an error frame (request id 0) and the connection is
closed; a payload that fails its CRC32C gets a 400 for that request only.
Idle connections are closed after ``idle_timeout``; a frame that stalls
half-way for ``read_timeout`` is dropped the same way. What a request means
is the caller's :data:`FrameHandler` (the storage node's is
:mod:`nodes.storage.binary_api`); any error it raises is answered as an
error frame, so no request can take the server down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.frames import NEED_DATA, ChecksumMismatch, Frame, FrameConnection, Opcode, response

from .zerocopy import receive_frame_bytes, sendfile

__all__ = ["MAX_IN_FLIGHT", "FrameHandler", "FrameLimits", "FrameSession", "serve_frames"]

log = logging.getLogger("vstack.binary")

MAX_IN_FLIGHT = 64


@dataclass(frozen=True, kw_only=True)
class FrameLimits:
    max_payload: int
    read_timeout: float = 30.0
    idle_timeout: float = 75.0
    #: Connections served at once; more are closed as they arrive, so a flood
    #: of connections (each may buffer up to ``max_payload``) stays bounded.
    max_connections: int = 1024


class FrameSession:
    """One connection's sending side: frames leave whole, one at a time."""

    def __init__(self, stream: trio.SocketStream, conn: FrameConnection) -> None:
        self.stream = stream
        self.conn = conn
        self.send_lock = trio.Lock()
        self.broken = False

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
            try:
                if file is not None:
                    await sendfile(self.stream, *file, head=data)
                else:
                    await self.stream.send_all(data)
            except BaseException:
                self.broken = True
                raise


#: Answers one request frame on a session (raising ProtocolError for an error frame).
FrameHandler = Callable[[FrameSession, Frame], Awaitable[None]]


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


async def _serve_connection(handler: FrameHandler, limits: FrameLimits,
                            stream: trio.SocketStream) -> None:
    conn = FrameConnection(max_payload=limits.max_payload)
    session = FrameSession(stream, conn)
    slots = trio.Semaphore(MAX_IN_FLIGHT)

    async def run(req: Frame) -> None:
        try:
            await _answer(session, handler, req)
        finally:
            slots.release()

    try:
        async with trio.open_nursery() as nursery:
            while not session.broken:
                try:
                    event = conn.next_event()
                except ChecksumMismatch as exc:
                    await session.send(response(exc.frame, 400, b"payload CRC32C mismatch"))
                    continue
                except RemoteProtocolError as exc:
                    await session.send(Frame(opcode=Opcode.PING, request_id=0, status=exc.status,
                                             payload=exc.msg.encode(), flags=1))
                    break
                if event is NEED_DATA:
                    timeout = limits.read_timeout if conn.buffered else limits.idle_timeout
                    with trio.move_on_after(timeout):
                        if not await receive_frame_bytes(stream, conn) and not conn.buffered:
                            break
                        continue
                    break  # timed out
                assert isinstance(event, Frame)
                if event.is_response:
                    await session.send(Frame(
                        opcode=Opcode.PING, request_id=event.request_id, status=400,
                        payload=b"clients send requests, not responses", flags=1))
                    break
                await slots.acquire()
                nursery.start_soon(run, event)
    finally:
        with trio.move_on_after(1) as cs:
            cs.shield = True
            await stream.aclose()


async def _handle_connection(handler: FrameHandler, limits: FrameLimits,
                             stream: trio.SocketStream) -> None:
    """One connection's whole life; nothing it does can take the server down."""
    try:
        await _serve_connection(handler, limits, stream)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the peer went away
    except* Exception as group:
        log.error("binary connection failed", exc_info=group)


async def serve_frames(handler: FrameHandler, *, host: str, port: int, limits: FrameLimits,
                       admit: Callable[[trio.SocketStream], bool] | None = None,
                       task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the frame protocol until cancelled; reports the bound port.

    ``admit`` sees each connection before a byte is read from it (e.g. to
    serve loopback peers only); a refused one, or one past
    ``limits.max_connections``, is closed at once.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("binary protocol listening on %s:%d", host, bound)
    slots = trio.Semaphore(limits.max_connections)

    async def gate(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            log.warning("binary connection refused: %d connections open already",
                        limits.max_connections)
            await stream.aclose()
            return
        try:
            if admit is not None and not admit(stream):
                await stream.aclose()
                return
            await _handle_connection(handler, limits, stream)
        finally:
            slots.release()

    task_status.started(bound)
    await trio.serve_listeners(gate, listeners)
