"""The binary protocol against a real node: pipelining, errors, zero-copy reads."""

from __future__ import annotations

import array
import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from nodes.net.frame_client import open_frame_client
from nodes.net.http_client import request
from protocol.errors import ConnectionLost, ProtocolError
from protocol.frames import HEADER, Frame, FrameConnection, Opcode, crc32c

from .test_attacks_net import read_frames


async def test_put_get_head_delete_over_frames(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    data = os.urandom(3 * 1024 * 1024 + 17)
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        await client.ping()
        status, info = await client.put("b-chunk-001", data)
        assert status == 201
        assert info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).digest()
        assert info.crc == crc32c(data)
        assert (await client.put("b-chunk-001", data))[0] == 200
        with pytest.raises(ProtocolError) as conflict:
            await client.put("b-chunk-001", b"other bytes")
        assert conflict.value.status == 409
        assert await client.get("b-chunk-001") == data  # checked read
        assert await client.get("b-chunk-001") == data  # zero-copy read
        assert await client.get("b-chunk-001", 1000, 5000) == data[1000:6000]
        assert await client.get("b-chunk-001", len(data) - 10) == data[-10:]
        assert (await client.head("b-chunk-001")) == info
        await client.delete("b-chunk-001")
        for call in (client.get, client.head, client.delete):
            with pytest.raises(ProtocolError) as missing:
                await call("b-chunk-001")
            assert missing.value.status == 404
        with pytest.raises(ProtocolError) as bad_id:
            await client.put("../../etc/passwd", b"x")
        assert bad_id.value.status == 400
        stats = await client.stat()
        assert stats["node_id"] == "test-node"
    # The same chunk is visible over HTTP.
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        await client.put("shared", b"both protocols")
    res = await request("GET", f"http://127.0.0.1:{node.ports.http}/chunk/shared")
    assert res.body == b"both protocols"


async def test_any_buffer_is_sent_as_its_bytes(start_node: Callable[..., Any]) -> None:
    """A payload is its bytes, whatever the buffer's item size (a large one
    leaves uncopied, in its own send); a scattered buffer is refused before
    anything is sent, and the connection goes on."""
    node, _ = await start_node()
    words = array.array("I", range(100_000))  # 400,000 bytes of 4-byte items
    shard = memoryview(os.urandom(300_000))[1000:250_000]  # a view into a larger buffer
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        for cid, payload in (("words", memoryview(words)), ("view", shard),
                             ("small", memoryview(array.array("H", [7, 8, 9])))):
            status, info = await client.put(cid, payload)
            assert status == 201
            assert info.size == memoryview(payload).nbytes
            assert await client.get(cid) == memoryview(payload).tobytes()
        with pytest.raises(TypeError):
            await client.put("scattered", memoryview(bytes(1000))[::2])
        await client.ping()
        with pytest.raises(ProtocolError) as missing:
            await client.get("scattered")
        assert missing.value.status == 404


async def test_a_request_cut_off_mid_send_ends_the_connection(
    clock: trio.testing.MockClock,
) -> None:
    """A payload half sent (its send cancelled) cannot be followed by another
    frame on that connection: the next request fails, it is not sent."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept_and_never_read() -> None:
            accepted.append(await listeners[0].accept())

        nursery.start_soon(accept_and_never_read)
        async with open_frame_client("127.0.0.1", port) as client:
            with trio.move_on_after(5):  # the socket buffers fill, the send waits
                await client.put("big", os.urandom(16 * 1024 * 1024))
            with pytest.raises(ConnectionLost), trio.fail_after(10):
                await client.ping()
        for stream in accepted:
            await stream.aclose()
        await listeners[0].aclose()


async def test_many_pipelined_requests_on_one_connection(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    blobs = {f"p-{i:03d}": os.urandom(50_000 + i) for i in range(60)}
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        async with trio.open_nursery() as nursery:
            for key, blob in blobs.items():
                nursery.start_soon(client.put, key, blob)
        got: dict[str, bytes | bytearray] = {}

        async def fetch(key: str) -> None:
            got[key] = await client.get(key)

        async with trio.open_nursery() as nursery:
            for key in blobs:
                nursery.start_soon(fetch, key)
    assert got == blobs
    # Concurrent PUTs shared fsyncs (group commit).
    assert node.fsync_batches < node.fsync_writes


async def test_damaged_payload_is_refused_and_the_connection_survives(
    start_node: Callable[..., Any],
) -> None:
    node, _ = await start_node()
    codec = FrameConnection()
    wire = bytearray(codec.send(Frame(opcode=Opcode.PUT, request_id=5, key=b"dmg", payload=b"A" * 100)))
    wire[-1] ^= 0xFF
    stream = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
    async with stream:
        await stream.send_all(bytes(wire) + codec.send(Frame(opcode=Opcode.PING, request_id=6)))
        replies = await read_frames(stream, codec, 2)
    assert [(f.request_id, f.status) for f in replies] == [(5, 400), (6, 200)]
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        with pytest.raises(ProtocolError):
            await client.head("dmg")


async def test_malformed_frame_closes_only_that_connection(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(max_chunk_bytes=1024)
    async with open_frame_client("127.0.0.1", node.ports.binary) as bystander:
        await bystander.put("keep", b"still here")
        for garbage in (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 20,
                        HEADER.pack(b"VS", 1, Opcode.PUT, 0, 0, 9, 1, 10**8, 0)):
            stream = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
            async with stream:
                await stream.send_all(garbage)
                codec = FrameConnection()
                [err] = await read_frames(stream, codec, 1)
                assert err.status in (400, 413)
                assert err.message
                with trio.fail_after(5):
                    assert await stream.receive_some(100) == b""  # closed by the node
        assert await bystander.get("keep") == b"still here"


async def test_idle_binary_connections_time_out(
    start_node: Callable[..., Any], clock: trio.abc.Clock
) -> None:
    node, _ = await start_node(idle_timeout=30, read_timeout=5)
    stream = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
    half = FrameConnection().send(Frame(opcode=Opcode.PUT, request_id=1, key=b"k", payload=b"z" * 100))
    await stream.send_all(half[:50])
    with trio.fail_after(100):
        assert await stream.receive_some(100) == b""
    await stream.aclose()


async def test_connection_reset_mid_request_does_not_hurt_the_node(
    start_node: Callable[..., Any],
) -> None:
    import socket as _socket
    import struct

    node, _ = await start_node()
    for _ in range(3):
        stream = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
        wire = FrameConnection().send(Frame(opcode=Opcode.PUT, request_id=1, key=b"r", payload=b"q" * 5000))
        await stream.send_all(wire[:3000])
        stream.socket.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()  # RST
    with trio.fail_after(10):
        async with open_frame_client("127.0.0.1", node.ports.binary) as client:
            await client.ping()
            with pytest.raises(ProtocolError):
                await client.head("r")
    res = await request("GET", f"http://127.0.0.1:{node.ports.http}/ping")
    assert res.status == 200
