"""The storage node's binary protocol server (see ``protocol/README.md``).

One reader task per connection turns bytes into frames; each request runs in
its own task (at most :data:`MAX_IN_FLIGHT` per connection), so a client can
pipeline many requests and get responses as they complete, matched by
request id. Responses are written under one send lock per connection. A GET
of a checked chunk sends the header, then the bytes with ``os.sendfile``
straight from the superblock; its CRC32C is the one recorded at write time.

A malformed frame gets an error frame (request id 0) and the connection is
closed; a payload that fails its CRC32C gets a 400 for that request only.
Idle connections are closed after ``idle_timeout``; a frame that stalls
half-way for ``read_timeout`` is dropped the same way.
"""

from __future__ import annotations

import json
import logging
from functools import partial

import trio

from nodes.net.zerocopy import receive_frame_bytes, sendfile
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.frames import (
    NEED_DATA,
    ChecksumMismatch,
    ChunkInfo,
    Frame,
    FrameConnection,
    Opcode,
    crc32c,
    decode_range,
    response,
)

from .node import StorageNode

__all__ = ["MAX_IN_FLIGHT", "serve"]

log = logging.getLogger("vstack.binary")

MAX_IN_FLIGHT = 64


class _Session:
    def __init__(self, node: StorageNode, stream: trio.SocketStream) -> None:
        self.node = node
        self.stream = stream
        self.send_lock = trio.Lock()
        self.broken = False

    async def send(self, frame: Frame, conn: FrameConnection) -> None:
        await self.send_raw(conn.send(frame))

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

    async def handle(self, conn: FrameConnection, req: Frame) -> None:
        try:
            await self._dispatch(conn, req)
        except ProtocolError as exc:
            await self.send(response(req, exc.status, exc.msg.encode()), conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("binary request %s failed", req.opcode.name)
            await self.send(response(req, 500, b"Internal storage error"), conn)

    async def _dispatch(self, conn: FrameConnection, req: Frame) -> None:
        node = self.node
        op = req.opcode
        if op is Opcode.PING:
            await self.send(response(req, 200), conn)
            return
        if op is Opcode.STAT:
            await self.send(response(req, 200, json.dumps(node.health()).encode()), conn)
            return
        chunk_id = req.key.decode("ascii", "replace")
        if op is Opcode.PUT:
            status, loc = await node.put(chunk_id, req.payload, crc=req.crc)
            info = ChunkInfo(size=loc.size, crc=loc.crc, sha256=loc.sha256)
            await self.send(response(req, status, info.encode()), conn)
        elif op is Opcode.HEAD:
            loc = node.head(chunk_id)
            info = ChunkInfo(size=loc.size, crc=loc.crc, sha256=loc.sha256)
            await self.send(response(req, 200, info.encode()), conn)
        elif op is Opcode.DELETE:
            await node.delete(chunk_id)
            await self.send(response(req, 204), conn)
        elif op is Opcode.GET:
            await self._get(conn, req, chunk_id)

    async def _get(self, conn: FrameConnection, req: Frame, chunk_id: str) -> None:
        rng = decode_range(req.payload)
        start, length = rng if rng is not None else (0, None)
        if length == 0:
            length = None
        partial_read = rng is not None and (start, length) != (0, None)
        read = await self.node.open_read(chunk_id, start, length, want_bytes=partial_read)
        try:
            status = 206 if partial_read else 200
            if read.data is not None:
                crc = read.loc.crc if read.length == read.loc.size else crc32c(read.data)
                header = conn.send_header(response(req, status), len(read.data), crc)
                await self.send_raw(header + read.data)
            else:
                header = conn.send_header(response(req, status), read.length, read.loc.crc)
                await self.send_raw(header, (read.fd, read.offset, read.length))
        finally:
            read.close()


async def _serve_connection(node: StorageNode, stream: trio.SocketStream) -> None:
    s = node.settings
    conn = FrameConnection(max_payload=s.max_chunk_bytes + 64)
    session = _Session(node, stream)
    slots = trio.Semaphore(MAX_IN_FLIGHT)

    async def run(req: Frame) -> None:
        try:
            await session.handle(conn, req)
        finally:
            slots.release()

    try:
        async with trio.open_nursery() as nursery:
            while not session.broken:
                try:
                    event = conn.next_event()
                except ChecksumMismatch as exc:
                    await session.send(response(exc.frame, 400, b"payload CRC32C mismatch"), conn)
                    continue
                except RemoteProtocolError as exc:
                    err = Frame(opcode=Opcode.PING, request_id=0, status=exc.status,
                                payload=exc.msg.encode(), flags=1)
                    await session.send(err, conn)
                    break
                if event is NEED_DATA:
                    timeout = s.read_timeout if conn.buffered else s.idle_timeout
                    with trio.move_on_after(timeout):
                        if not await receive_frame_bytes(stream, conn) and not conn.buffered:
                            break
                        continue
                    break  # timed out
                assert isinstance(event, Frame)
                if event.is_response:
                    err = Frame(opcode=Opcode.PING, request_id=event.request_id, status=400,
                                payload=b"clients send requests, not responses", flags=1)
                    await session.send(err, conn)
                    break
                await slots.acquire()
                nursery.start_soon(run, event)
    finally:
        with trio.move_on_after(1) as cs:
            cs.shield = True
            await stream.aclose()


async def serve(node: StorageNode, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    s = node.settings
    listeners = await trio.open_tcp_listeners(s.effective_binary_port, host=s.host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("binary protocol listening on %s:%d", s.host, bound)
    task_status.started(bound)
    await trio.serve_listeners(partial(_handle_connection, node), listeners)


async def _handle_connection(node: StorageNode, stream: trio.SocketStream) -> None:
    """One connection's whole life; nothing it does can take the node down."""
    try:
        await _serve_connection(node, stream)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away
    except* Exception as group:
        log.error("binary connection failed", exc_info=group)
