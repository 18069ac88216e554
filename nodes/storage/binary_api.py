"""The storage node's side of the binary protocol: what each opcode does.

The connection handling (framing, pipelining, one send lock, timeouts) is
:mod:`nodes.net.frame_server`; here each request frame becomes an operation
of :class:`~nodes.storage.node.StorageNode`. A GET of a checked chunk sends
the header, then the bytes with ``os.sendfile`` straight from the
superblock; its CRC32C is the one recorded at write time.
"""

from __future__ import annotations

import json
from functools import partial

import trio

from nodes.net.frame_server import FrameLimits, FrameSession, serve_frames
from protocol.frames import ChunkInfo, Frame, Opcode, crc32c, decode_range, response

from .node import StorageNode

__all__ = ["handle", "serve"]


async def handle(node: StorageNode, session: FrameSession, req: Frame) -> None:
    """Answer one request frame (errors are raised as ProtocolError)."""
    op = req.opcode
    if op is Opcode.PING:
        await session.send(response(req, 200))
        return
    if op is Opcode.STAT:
        await session.send(response(req, 200, json.dumps(node.health()).encode()))
        return
    chunk_id = req.key.decode("ascii", "replace")
    if op is Opcode.PUT:
        status, loc = await node.put(chunk_id, req.payload, crc=req.crc)
        info = ChunkInfo(size=loc.size, crc=loc.crc, sha256=loc.sha256)
        await session.send(response(req, status, info.encode()))
    elif op is Opcode.HEAD:
        loc = node.head(chunk_id)
        info = ChunkInfo(size=loc.size, crc=loc.crc, sha256=loc.sha256)
        await session.send(response(req, 200, info.encode()))
    elif op is Opcode.DELETE:
        await node.delete(chunk_id)
        await session.send(response(req, 204))
    elif op is Opcode.GET:
        await _get(node, session, req, chunk_id)


async def _get(node: StorageNode, session: FrameSession, req: Frame, chunk_id: str) -> None:
    rng = decode_range(req.payload)
    start, length = rng if rng is not None else (0, None)
    if length == 0:
        length = None
    partial_read = rng is not None and (start, length) != (0, None)
    read = await node.open_read(chunk_id, start, length, want_bytes=partial_read)
    try:
        status = 206 if partial_read else 200
        conn = session.conn
        if read.data is not None:
            crc = read.loc.crc if read.length == read.loc.size else crc32c(read.data)
            header = conn.send_header(response(req, status), len(read.data), crc)
            await session.send_raw(header + read.data)
        else:
            header = conn.send_header(response(req, status), read.length, read.loc.crc)
            await session.send_raw(header, (read.fd, read.offset, read.length))
    finally:
        read.close()


async def serve(node: StorageNode, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                ) -> None:
    s = node.settings
    limits = FrameLimits(max_payload=s.max_chunk_bytes + 64, read_timeout=s.read_timeout,
                         idle_timeout=s.idle_timeout)
    await serve_frames(partial(handle, node), host=s.host, port=s.effective_binary_port,
                       limits=limits, task_status=task_status)
