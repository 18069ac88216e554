"""A storage node survives a metadata replica that resets, hangs or answers garbage.

The replica here is a hostile server on 127.0.0.1 whose behaviour the test
switches; the storage node is real. Whatever the replica does, the node
keeps serving chunks, and once the replica behaves it registers and
heartbeats. Timing runs on the MockClock (the hung calls' deadlines pass in
virtual time).
"""

from __future__ import annotations

import json
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

import h11
import trio
import trio.testing

from nodes.net.http_client import request

MODES = ("reset", "hang", "garbage", "bad-status", "ok")


class HostileReplica:
    """A fake metadata replica: every connection gets the current ``mode``."""

    def __init__(self) -> None:
        self.mode = "reset"
        self.seen: Counter[str] = Counter()  # mode -> requests received in that mode
        self.paths: list[str] = []
        self.port = 0
        self.changed = trio.Event()

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        mode = self.mode
        try:
            data = await stream.receive_some(65536)
            self.seen[mode] += 1  # a request arrived
            self.changed.set()
            self.changed = trio.Event()
            if mode == "reset":
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif mode == "hang":
                await trio.sleep_forever()
            elif mode == "garbage":
                await stream.send_all(b"\x00\xff\x13 this is not HTTP at all\r\n\r\n\x00")
            elif mode == "bad-status":
                await stream.send_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\n{{{{{")
            else:
                await self._answer(stream, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()

    async def _answer(self, stream: trio.SocketStream, data: bytes) -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Request):
                self.paths.append(event.target.decode())
            if isinstance(event, h11.EndOfMessage):
                break
        body = json.dumps({"status": "ok"}).encode()
        out = conn.send(h11.Response(status_code=200, headers=[
            ("Content-Length", str(len(body))), ("Content-Type", "application/json"),
            ("Connection", "close")])) or b""
        out += (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)

    async def wait_seen(self, mode: str, count: int) -> None:
        while self.seen[mode] < count:
            await self.changed.wait()


async def test_node_survives_reset_hang_and_garbage(
    clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any]
) -> None:
    replica = HostileReplica()
    port = await nursery.start(replica.serve)
    node, _ = await start_node(metadata_urls=(f"http://127.0.0.1:{port}",),
                               node_url="http://127.0.0.1:1", heartbeat_interval=1.0)
    base = f"http://127.0.0.1:{node.ports.http}"

    async def node_still_serves(n: int) -> None:
        data = f"chunk {n}".encode() * 1000
        put = await request("PUT", f"{base}/chunk/survivor-{n}", body=data)
        assert put.status == 201
        got = await request("GET", f"{base}/chunk/survivor-{n}")
        assert (got.status, got.body) == (200, data)

    with trio.fail_after(600):  # virtual seconds
        for n, mode in enumerate(MODES[:-1]):
            replica.mode = mode
            await replica.wait_seen(mode, 3)  # three failed attempts, backing off
            await node_still_serves(n)
        assert replica.paths == []
        replica.mode = "ok"
        await replica.wait_seen("ok", 5)  # registered, then heartbeats
    assert replica.paths[0] == "/nodes/register"
    assert replica.paths[1:4] == [f"/nodes/{node.node_id}/heartbeat"] * 3
    await node_still_serves(99)
