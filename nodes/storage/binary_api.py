"""The storage node's side of the binary protocol: what each opcode does.

The connection handling (framing, pipelining, one send lock, timeouts) is
:mod:`nodes.net.frame_server`; here each request frame becomes an operation
of :class:`~nodes.storage.node.StorageNode`. A GET of a checked chunk sends
the header, then the bytes with ``os.sendfile`` straight from the
superblock; its CRC32C is the one recorded at write time.

A GET that needs the chunk in memory (a chunk not yet checked since start,
or a range, whose CRC32C must be computed) first reserves the chunk's size
in a byte budget of the node's (``max_buffered_bytes``, beside the frame
server's budget for request payloads): pipelined GETs whose answers are not
read cannot hold more than that, together. Requests on one connection with
the same chunk id run one after the other, in order
(:mod:`nodes.net.frame_server`).

Access is checked per request as on HTTP (:data:`ACCESS`): a connection
that is to write presents the cluster secret once, with ``AUTH``, and acts
with its rights until it closes; a wrong token gets 401 and the connection
is closed.

Access is checked twice: by :func:`admit` on a frame's *header*, before the
frame server reserves a byte for its payload or reads one, and again by
:func:`handle`. So a caller who may not write cannot make the node reserve
a PUT's 8 MiB (and make every other connection wait behind it): a ``PUT``
or ``DELETE`` on a connection without the right gets 401 at its header,
and the connection is closed. No frame but a writing one carries a payload
of any size: ``AUTH`` at most :data:`MAX_AUTH_PAYLOAD` bytes, one at a time
until the connection is authenticated, any other
:data:`MAX_SMALL_PAYLOAD` (413 past them, and the connection is closed).
With no cluster secret, loopback callers may write without ``AUTH``, as
before.
"""

from __future__ import annotations

from functools import partial
from typing import Final

import trio

from nodes.net.bounds import ByteBudget
from nodes.net.frame_server import FrameLimits, FrameSession, serve_frames
from protocol.errors import ProtocolError
from protocol.frames import (
    RANGE,
    ChunkInfo,
    Frame,
    FrameHeader,
    Opcode,
    crc32c,
    decode_range,
    response,
)
from protocol.http import json_bytes
from vstack.auth import Access
from vstack.location import Location

from .node import StorageNode

__all__ = ["MAX_AUTH_PAYLOAD", "MAX_SMALL_PAYLOAD", "admit", "handle", "serve"]

#: The longest token ``AUTH`` may present (secrets are 16+ bytes; 4 KiB is plenty).
MAX_AUTH_PAYLOAD: Final = 4096
#: The longest payload of any frame that does not write (a GET's range is 16 bytes).
MAX_SMALL_PAYLOAD: Final = max(64, RANGE.size)


def admit(node: StorageNode, session: FrameSession, header: FrameHeader) -> None:
    """Refuse, at its header, a frame this connection may not send (see the module docstring).

    Raises:
        ProtocolError: 401 a write without the right to, or a second ``AUTH``
            before the first was answered; 413 a payload too large for its opcode.
    """
    op = header.opcode
    if op is Opcode.AUTH:
        if header.payload_length > MAX_AUTH_PAYLOAD:
            raise ProtocolError(f"AUTH token longer than {MAX_AUTH_PAYLOAD} bytes", 413)
        if session.bearer is None and session.auth_pending:
            raise ProtocolError("one AUTH at a time", 401)
        session.auth_pending = True
        return
    access = ACCESS.get(op, Access.CLUSTER)
    node.settings.auth.check_token(access, session.bearer, session.peer)
    if access is not Access.CLUSTER and header.payload_length > MAX_SMALL_PAYLOAD:
        raise ProtocolError(f"{op.name} payload longer than {MAX_SMALL_PAYLOAD} bytes", 413)



async def handle(node: StorageNode, reads: ByteBudget, session: FrameSession, req: Frame) -> None:
    """Answer one request frame (errors are raised as ProtocolError).

    ``reads`` bounds the bytes of chunks read into memory to answer GETs.
    """
    op = req.opcode
    if op is Opcode.AUTH:
        await _authenticate(node, session, req)
        return
    node.settings.auth.check_token(ACCESS.get(op, Access.CLUSTER), session.bearer, session.peer)
    if op is Opcode.PING:
        await session.send(response(req, 200))
        return
    if op is Opcode.STAT:
        await session.send(response(req, 200, json_bytes(node.health())))
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
        rng = decode_range(req.payload)
        start, length = rng if rng is not None else (0, None)
        partial_read = rng is not None and (start, length or None) != (0, None)
        loc = node.head(chunk_id)
        in_memory = min(loc.size, reads.capacity) if partial_read or not loc.verified else 0
        await reads.acquire(in_memory)
        try:
            await _get(node, session, req, chunk_id, start, length or None, partial_read, loc)
        finally:
            reads.release(in_memory)


#: Who may make each request (see :mod:`vstack.auth`); any other opcode: the cluster.
ACCESS: Final = {Opcode.PING: Access.PUBLIC, Opcode.STAT: Access.PUBLIC, Opcode.GET: Access.READ,
                 Opcode.HEAD: Access.READ, Opcode.PUT: Access.CLUSTER,
                 Opcode.DELETE: Access.CLUSTER}


async def _authenticate(node: StorageNode, session: FrameSession, req: Frame) -> None:
    """``AUTH``: a known token gives the connection its rights; any other ends the connection."""
    token = bytes(req.payload)
    session.auth_pending = False
    if node.settings.auth.knows(token):
        session.bearer = token
        await session.send(response(req, 200))
        return
    await session.send(response(req, 401, b"unknown token"))
    session.cancel_scope.cancel()  # no second guess on this connection


async def _get(node: StorageNode, session: FrameSession, req: Frame, chunk_id: str,
               start: int, length: int | None, partial_read: bool, loc: Location) -> None:
    read = await node.open_read(chunk_id, start, length, want_bytes=partial_read, loc=loc)
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
                         idle_timeout=s.idle_timeout, header_timeout=s.header_timeout,
                         send_timeout=s.read_timeout, max_connections=s.max_connections,
                         max_buffered_bytes=max(s.max_buffered_bytes, 4 * (s.max_chunk_bytes + 64)))
    await serve_frames(partial(handle, node, node.reads), host=s.host,
                       port=s.effective_binary_port, limits=limits,
                       admit_frame=partial(admit, node), task_status=task_status)
