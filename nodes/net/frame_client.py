"""A pipelining trio client for the storage nodes' binary protocol.

One reader task per connection matches responses to requests by request id,
so many requests can be in flight on one connection (as the uploader and the
smart client do). Sends share one lock. Every response payload is checked
against its CRC32C by the codec; a GET whose bytes do not match raises
instead of returning damaged data.

Use it as ``async with open_frame_client(host, port) as client: ...``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from protocol.errors import ConnectionLost, ProtocolError, RemoteProtocolError
from protocol.frames import (
    DEFAULT_MAX_PAYLOAD,
    NEED_DATA,
    ChecksumMismatch,
    ChunkInfo,
    Frame,
    FrameConnection,
    Opcode,
    crc32c,
    encode_range,
)

from .connect import open_tcp
from .errors import map_io_errors
from .zerocopy import receive_frame_bytes

__all__ = ["JOIN_BELOW", "FrameClient", "Payload", "open_frame_client"]

#: A request's payload: any contiguous buffer of bytes (a shard's view is sent as it is).
Payload = bytes | bytearray | memoryview
#: Payloads up to this size leave in one send with their header; larger ones in two, uncopied.
JOIN_BELOW: Final = 64 * 1024


class _Slot:
    __slots__ = ("done", "error", "frame")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.frame: Frame | None = None
        self.error: BaseException | None = None


class FrameClient:
    def __init__(self, stream: trio.SocketStream, *, max_payload: int, peer: str = "storage node"
                 ) -> None:
        self._stream = stream
        self.peer = peer
        self._conn = FrameConnection(max_payload=max_payload)
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._slots: dict[int, _Slot] = {}
        self._closed: BaseException | None = None

    @property
    def usable(self) -> bool:
        return self._closed is None

    async def run_reader(self) -> None:
        """The reader task; run it in a nursery while the client is in use."""
        await self._reader()

    async def aclose(self) -> None:
        self._fail_all(trio.ClosedResourceError("client closed"))
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    async def _reader(self) -> None:
        conn = self._conn
        try:
            while True:
                try:
                    event = conn.next_event()
                except ChecksumMismatch as exc:
                    self._finish(exc.frame.request_id, error=exc)
                    continue
                if event is NEED_DATA:
                    with map_io_errors(self.peer):
                        more = await receive_frame_bytes(self._stream, conn)
                    if not more:
                        raise ConnectionLost(f"{self.peer} closed the connection")
                    continue
                assert isinstance(event, Frame)
                if event.request_id == 0 and event.status >= 400:
                    raise ProtocolError(f"server closed the connection: {event.message}",
                                        event.status)
                self._finish(event.request_id, frame=event)
        except ProtocolError as exc:  # ConnectionLost included
            self._fail_all(exc)

    def _finish(self, request_id: int, *, frame: Frame | None = None,
                error: BaseException | None = None) -> None:
        slot = self._slots.pop(request_id, None)
        if slot is not None:
            slot.frame, slot.error = frame, error
            slot.done.set()

    def _fail_all(self, exc: BaseException) -> None:
        self._closed = exc
        for slot in self._slots.values():
            slot.error = exc
            slot.done.set()
        self._slots.clear()

    def next_request_id(self) -> int:
        """A request id not in use on this connection (for a caller that signs it)."""
        while True:
            rid = next(self._ids) & 0xFFFFFFFF
            if rid and rid not in self._slots:
                return rid

    async def request(self, opcode: Opcode, key: bytes = b"", payload: Payload = b"", *,
                      request_id: int | None = None) -> Frame:
        """Send one request and wait for its response frame.

        Raises:
            ConnectionLost: the connection is (or went) down.
            ProtocolError: the server closed it with an error, or a payload
                failed its CRC32C.
        """
        if self._closed is not None:
            raise ConnectionLost(f"connection to {self.peer} closed") from self._closed
        view = memoryview(payload).cast("B")  # bytes, whatever its items (TypeError if scattered)
        rid = self.next_request_id() if request_id is None else request_id
        head = self._conn.send_header(Frame(opcode=opcode, request_id=rid, key=key), view.nbytes,
                                      crc32c(view))
        # A large payload goes out from the caller's buffer, not copied behind its header.
        parts = (head, view) if view.nbytes > JOIN_BELOW else (head + view,)
        slot = self._slots[rid] = _Slot()
        sending = False
        try:
            async with self._send_lock:
                sending = True
                with map_io_errors(self.peer):
                    for part in parts:
                        await self._stream.send_all(part)
        except BaseException as exc:
            self._slots.pop(rid, None)
            if sending:
                self._fail_all(exc)  # a half-sent frame: nothing after it can be framed
            raise
        await slot.done.wait()
        if slot.error is not None:
            if isinstance(slot.error, ProtocolError):
                raise slot.error
            raise ConnectionLost(f"connection to {self.peer} lost: {slot.error}") from slot.error
        assert slot.frame is not None
        return slot.frame

    @staticmethod
    def _check(frame: Frame) -> Frame:
        if frame.status >= 400:
            raise ProtocolError(frame.message, frame.status)
        return frame

    async def ping(self) -> None:
        self._check(await self.request(Opcode.PING))

    async def authenticate(self, token: bytes) -> None:
        """Present ``token`` (the cluster secret, or an API token) for this connection.

        Raises:
            ProtocolError: 401, the token was refused (the server closes the connection).
        """
        self._check(await self.request(Opcode.AUTH, b"", token))

    async def put(self, chunk_id: str, data: Payload) -> tuple[int, ChunkInfo]:
        """Store a chunk; returns (201 new | 200 same bytes already there, info)."""
        frame = self._check(await self.request(Opcode.PUT, chunk_id.encode(), data))
        return frame.status, ChunkInfo.decode(frame.payload)

    async def get(self, chunk_id: str, offset: int = 0, length: int = 0) -> bytes | bytearray:
        """A chunk's bytes (or a range), verified against the CRC32C sent."""
        payload = encode_range(offset, length) if (offset or length) else b""
        return self._check(await self.request(Opcode.GET, chunk_id.encode(), payload)).payload

    async def head(self, chunk_id: str) -> ChunkInfo:
        frame = self._check(await self.request(Opcode.HEAD, chunk_id.encode()))
        return ChunkInfo.decode(frame.payload)

    async def delete(self, chunk_id: str) -> None:
        self._check(await self.request(Opcode.DELETE, chunk_id.encode()))

    async def stat(self) -> dict[str, Any]:
        frame = self._check(await self.request(Opcode.STAT))
        try:
            result: dict[str, Any] = json.loads(frame.payload)
        except ValueError as exc:
            raise RemoteProtocolError("STAT payload is not JSON", 502) from exc
        return result


@asynccontextmanager
async def open_frame_client(
    host: str, port: int, *, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> AsyncIterator[FrameClient]:
    stream = await open_tcp(host, port)
    client = FrameClient(stream, max_payload=max_payload, peer=f"{host}:{port}")
    try:
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The reader never raises, so a group holds just the caller's own
        # exception: give it back as it was raised.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
