"""A hostile HTTP peer on 127.0.0.1, for tests of what our services survive.

Every connection gets the server's current ``mode``: ``reset`` (RST after
the request), ``hang`` (never answers), ``garbage`` (bytes that are not
HTTP), ``bad-status`` (a 500 with a broken JSON body) or ``ok`` (200 with
``{"status": "ok"}``); ``forget`` (not in :data:`MODES`) answers 200 to a
registration and 404 to every heartbeat. It records which paths it was asked for.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import Counter

import h11
import trio

__all__ = ["MODES", "HostileServer"]

MODES = ("reset", "hang", "garbage", "bad-status", "ok")


class HostileServer:
    """A peer whose behaviour the test switches (``mode``)."""

    def __init__(self) -> None:
        self.mode = "reset"
        self.seen: Counter[str] = Counter()  # mode -> requests received in that mode
        self.paths: list[str] = []  # answered in mode "ok"
        self.requests: list[str] = []  # every request target received
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
            self.requests.append(data.split(b" ", 2)[1].decode("latin-1") if b" " in data else "")
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
            else:  # "ok", or "forget": 404 to heartbeats, as a replica with a fresh database
                await self._answer(stream, data, forget=mode == "forget")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    async def _answer(self, stream: trio.SocketStream, data: bytes, *, forget: bool = False) -> None:
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
            if isinstance(event, h11.ConnectionClosed):
                return  # the client gave up mid-request (looping here would hang the test)
        status = 404 if forget and self.paths[-1].endswith("/heartbeat") else 200
        body = json.dumps({"status": "ok"} if status == 200 else {"error": "Node not found",
                                                                  "detail": "Node not found"}).encode()
        out = conn.send(h11.Response(status_code=status, headers=[
            ("Content-Length", str(len(body))), ("Content-Type", "application/json"),
            ("Connection", "close")])) or b""
        out += (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)

    async def wait_seen(self, mode: str, count: int) -> None:
        while self.seen[mode] < count:
            await self.changed.wait()
