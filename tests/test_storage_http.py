"""The storage node's HTTP endpoints, as the contract states them, on real sockets."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from nodes.net.http_client import request


def url(node: Any, path: str) -> str:
    return f"http://127.0.0.1:{node.ports.http}{path}"


async def raw_exchange(port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(10):
            try:
                while chunk := await stream.receive_some(65536):
                    out += chunk
                    if not read_until_close and b"\r\n\r\n" in out:
                        break
            except trio.BrokenResourceError:
                pass  # a reset after the answer; what arrived is what counts
        return out


async def test_put_get_head_delete_round_trip(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    data = os.urandom(2 * 1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    put = await request("PUT", url(node, "/chunk/vid-chunk-000"), body=data,
                        headers=[("X-Chunk-Checksum", sha)])
    assert put.status == 201
    assert put.headers["etag"] == sha
    assert put.headers["location"] == "/chunk/vid-chunk-000"
    assert put.headers["x-chunk-size"] == str(len(data))

    again = await request("PUT", url(node, "/chunk/vid-chunk-000"), body=data)
    assert again.status == 200
    other = await request("PUT", url(node, "/chunk/vid-chunk-000"), body=data[:-1] + b"!")
    assert other.status == 409

    for _ in range(2):  # first read is checked against the CRC, second is zero-copy
        got = await request("GET", url(node, "/chunk/vid-chunk-000"))
        assert got.status == 200
        assert got.body == data
        assert got.headers["etag"] == sha
        assert got.headers["content-type"] == "application/octet-stream"
        assert "x-superblock-id" in got.headers
        assert "x-request-id" in got.headers

    head = await request("HEAD", url(node, "/chunk/vid-chunk-000"))
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["etag"] == sha

    part = await request("GET", url(node, "/chunk/vid-chunk-000"), headers=[("Range", "bytes=100-199")])
    assert part.status == 206
    assert part.body == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"

    assert (await request("DELETE", url(node, "/chunk/vid-chunk-000"))).status == 204
    assert (await request("GET", url(node, "/chunk/vid-chunk-000"))).status == 404
    assert (await request("HEAD", url(node, "/chunk/vid-chunk-000"))).status == 404
    assert (await request("DELETE", url(node, "/chunk/vid-chunk-000"))).status == 404
    # After a delete the id is free again, even for other bytes.
    assert (await request("PUT", url(node, "/chunk/vid-chunk-000"), body=b"new")).status == 201


async def test_ping_and_health(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(node_id="storage-node-7")
    await request("PUT", url(node, "/chunk/a"), body=b"x")
    for method in ("HEAD", "GET"):
        ping = await request(method, url(node, "/ping"))
        assert ping.status == 200
        assert ping.body == b""
        assert ping.headers["x-node-id"] == "storage-node-7"
        assert ping.headers["x-chunk-count"] == "1"
        float(ping.headers["x-disk-usage-percent"])
        float(ping.headers["x-response-time"])
        assert ping.headers["cache-control"] == "no-cache"
    health = await request("GET", url(node, "/health"))
    assert health.status == 200
    body = health.json()
    assert body["status"] in ("healthy", "warning")
    assert body["chunk_count"] == 1
    assert body["node_id"] == "storage-node-7"
    assert isinstance(body["disk_usage"], float)
    assert isinstance(body["uptime"], int)
    assert body["quarantined"] == []


async def test_bad_chunk_ids_never_reach_the_disk(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    for bad in ("a.b", "..%2F..%2Fetc", "x" * 65, "sp%20ace", "%00"):
        res = await request("PUT", url(node, f"/chunk/{bad}"), body=b"data")
        assert res.status == 400, bad
        assert res.json()["error"] == "Invalid chunk ID format"
    assert (await request("GET", url(node, "/chunk/invalid.chunk.id"))).status == 404
    assert os.listdir(node.store.data_dir) == []


async def test_put_needs_a_length_and_a_body(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    chunked = (b"PUT /chunk/c1 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n\r\n")
    out = await raw_exchange(node.ports.http, chunked)
    assert out.startswith(b"HTTP/1.1 400")
    assert b"Content-Length header required" in out
    empty = await request("PUT", url(node, "/chunk/c1"), body=b"")
    assert empty.status == 400
    assert (await request("GET", url(node, "/chunk/c1"))).status == 404


async def test_oversized_body_is_refused_before_it_is_read(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(max_chunk_bytes=1024 * 1024)
    # Announce 100 MiB, send none of it: the answer must come anyway.
    head = b"PUT /chunk/big HTTP/1.1\r\nHost: localhost\r\nContent-Length: 104857600\r\n\r\n"
    out = await raw_exchange(node.ports.http, head)
    assert out.startswith(b"HTTP/1.1 413")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"].startswith("Chunk of")
    assert (await request("GET", url(node, "/chunk/big"))).status == 404


async def test_checksum_mismatch_stores_nothing(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    for header in ("X-Chunk-Checksum", "X-Checksum"):
        res = await request("PUT", url(node, "/chunk/c2"), body=b"hello",
                            headers=[(header, "sha256:" + "0" * 64)])
        assert res.status == 400
        assert res.json()["error"] == "Checksum mismatch"
    res = await request("PUT", url(node, "/chunk/c2"), body=b"hello",
                        headers=[("X-Checksum", "not-a-checksum")])
    assert res.status == 400
    res = await request("PUT", url(node, "/chunk/c2"), body=b"hello",
                        headers=[("X-Chunk-Size", "6")])
    assert res.status == 400
    assert (await request("GET", url(node, "/chunk/c2"))).status == 404
    assert node.store.file_bytes() == 0
    ok = await request("PUT", url(node, "/chunk/c2"), body=b"hello",
                       headers=[("X-Checksum", "sha256:" + hashlib.sha256(b"hello").hexdigest())])
    assert ok.status == 201


async def test_full_node_answers_507_and_keeps_serving(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(capacity_bytes=64 * 1024)
    assert (await request("PUT", url(node, "/chunk/fits"), body=b"a" * 40_000)).status == 201
    full = await request("PUT", url(node, "/chunk/nope"), body=b"b" * 40_000)
    assert full.status == 507
    assert full.json()["error"] == "Insufficient storage space"
    assert (await request("GET", url(node, "/chunk/nope"))).status == 404
    assert (await request("GET", url(node, "/chunk/fits"))).body == b"a" * 40_000


async def test_unknown_paths_methods_and_garbage(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    assert (await request("GET", url(node, "/nope"))).status == 404
    assert (await request("POST", url(node, "/chunk/x"), body=b"1")).status == 405
    out = await raw_exchange(node.ports.http, b"\x16\x03\x01 garbage that is not HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    huge = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    out = await raw_exchange(node.ports.http, huge)
    assert out.startswith(b"HTTP/1.1 431")
    # The node still serves everyone else.
    assert (await request("GET", url(node, "/ping"))).status == 200


async def test_keep_alive_serves_many_requests_on_one_connection(
    start_node: Callable[..., Any]
) -> None:
    node, _ = await start_node()
    await request("PUT", url(node, "/chunk/k"), body=b"0123456789")
    stream = await trio.open_tcp_stream("127.0.0.1", node.ports.http)
    async with stream:
        req = b"GET /chunk/k HTTP/1.1\r\nHost: x\r\n\r\n"
        await stream.send_all(req * 3)
        buf = b""
        with trio.fail_after(10):
            while buf.count(b"0123456789") < 3:
                buf += await stream.receive_some(65536)
        assert buf.count(b"HTTP/1.1 200") == 3


async def test_idle_and_slow_clients_are_dropped(
    start_node: Callable[..., Any], clock: trio.testing.MockClock
) -> None:
    node, _ = await start_node(read_timeout=5, idle_timeout=10)
    idle = await trio.open_tcp_stream("127.0.0.1", node.ports.http)
    slow = await trio.open_tcp_stream("127.0.0.1", node.ports.http)
    await slow.send_all(b"PUT /chunk/s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
    start = trio.current_time()
    with trio.fail_after(60):
        assert await idle.receive_some(100) == b""
        answer = await slow.receive_some(65536)
    assert trio.current_time() - start < 60
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    await idle.aclose()
    await slow.aclose()
    assert (await request("GET", url(node, "/chunk/s"))).status == 404
