"""The shared HTTP server, one connection at a time over in-memory streams.

An h11 client on one end of ``trio.testing.memory_stream_pair`` talks to
:func:`nodes.net.http_server.serve_stream` on the other: the same code that
serves every accepted socket, minus the socket. Timeouts run on virtual time
(the ``autojump_clock`` fixture).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from nodes.net.http_server import Body, Handler, HttpLimits, serve_stream
from protocol.errors import ProtocolError
from protocol.http import FileRange, Request, Response, Router, json_response
from protocol.validate import Validator

# -- a client on the other end ------------------------------------------------------------


@dataclass
class Reply:
    status: int
    reason: bytes
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


class Client:
    """An HTTP/1.1 client (h11) on an in-memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> Reply:
        if self.conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            self.conn.start_next_cycle()  # keep-alive: the same connection again
        head = [("Host", "test"), *(headers or [])]
        if body:
            head.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=head)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)
        return await self.reply()

    async def send_raw(self, data: bytes, method: str = "GET") -> None:
        """Send hand-made bytes; the reply is then read as the answer to ``method``."""
        self.conn.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def reply(self) -> Reply:
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some()))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                headers = {k.decode(): v.decode() for k, v in response.headers}
                return Reply(response.status_code, response.reason, headers, bytes(body))
            else:
                raise AssertionError(f"no reply, got {event!r}")

    async def closed_by_server(self) -> bool:
        """True once the server has closed its side, with nothing more sent."""
        return self.conn.trailing_data == (b"", False) and await self.stream.receive_some() == b""


@asynccontextmanager
async def serving(nursery: trio.Nursery, router: Router[Handler], *, limits: HttpLimits | None = None,
                  default_headers: Callable[[], list[tuple[str, str]]] = list,
                  deadline: float = 10.0) -> AsyncIterator[Client]:
    """A server on one end of an in-memory connection, the client on the other.

    On exit the client hangs up, and the server must then finish by itself.
    """
    client_end, server_end = trio.testing.memory_stream_pair()
    finished = trio.Event()

    async def run() -> None:
        try:
            await serve_stream(server_end, router, limits=limits or HttpLimits(),
                               default_headers=default_headers)
        finally:
            finished.set()

    nursery.start_soon(run)
    with trio.fail_after(deadline):
        yield Client(client_end)
        await client_end.aclose()
        await finished.wait()


# -- handlers -----------------------------------------------------------------------------


async def hello(req: Request, body: Body) -> Response:
    return json_response(200, {"name": req.params["name"], "query": dict(req.query),
                               "agent": req.header("User-Agent")})


async def echo(req: Request, body: Body) -> Response:
    return Response(status=200, body=await body.read(int(req.query.get("limit", "16"))))


async def busy(req: Request, body: Body) -> Response:
    raise ProtocolError("chunk v-chunk-000 is being written", 409)


async def invalid(req: Request, body: Body) -> Response:
    v = Validator({"title": ""})
    v.string("title", min_len=1)
    v.done()
    raise AssertionError("unreachable")


async def crash(req: Request, body: Body) -> Response:
    raise RuntimeError("secret internal detail at /srv/vstack/data")


async def ignore_body(req: Request, body: Body) -> Response:
    return json_response(200, {"ok": True})


async def ping(req: Request, body: Body) -> Response:
    return Response(status=200, headers=[("Content-Type", "text/plain")], body=b"pong")


def router() -> Router[Handler]:
    r: Router[Handler] = Router()
    r.add("GET", "/hello/{name}", hello)
    r.add("POST", "/echo", echo)
    r.add("POST", "/busy", busy)
    r.add("POST", "/video", invalid)
    r.add("GET", "/crash", crash)
    r.add("POST", "/ignore", ignore_body)
    r.add("GET", "/ping", ping)
    r.add("HEAD", "/ping", ping)
    return r


# -- tests --------------------------------------------------------------------------------


async def test_keep_alive_serves_a_second_request_on_the_same_stream(nursery: trio.Nursery) -> None:
    calls: list[int] = []

    def node_header() -> list[tuple[str, str]]:
        calls.append(1)
        return [("X-Node-Id", f"n{len(calls)}")]

    async with serving(nursery, router(), default_headers=node_header) as client:
        first = await client.request("GET", "/hello/w%20orld?x=1&y=", [("User-Agent", "t/1")])
        assert (first.status, first.reason) == (200, b"OK")
        assert first.json() == {"name": "w orld", "query": {"x": "1", "y": ""}, "agent": "t/1"}
        assert first.headers["x-node-id"] == "n1"
        assert first.headers["content-length"] == str(len(first.body))
        assert "connection" not in first.headers
        second = await client.request("GET", "/hello/again")
        assert second.json()["name"] == "again"
        assert second.headers["x-node-id"] == "n2"


async def test_a_protocol_error_becomes_a_json_error_with_its_status(nursery: trio.Nursery) -> None:
    async with serving(nursery, router()) as client:
        reply = await client.request("POST", "/busy", body=b"{}")
        assert (reply.status, reply.reason) == (409, b"Conflict")
        msg = "chunk v-chunk-000 is being written"
        assert reply.json() == {"error": msg, "detail": msg}
        reply = await client.request("POST", "/video", body=b"{}")
        assert reply.status == 422
        assert reply.json()["detail"] == [{
            "type": "string_too_short", "loc": ["body", "title"],
            "msg": "String should have at least 1 characters", "input": ""}]
        reply = await client.request("GET", "/nowhere")
        assert (reply.status, reply.json()["error"]) == (404, "Not Found")
        reply = await client.request("DELETE", "/ping")
        assert reply.status == 405
        assert reply.json()["error"] == "Method Not Allowed (allowed: GET, HEAD)"


async def test_an_unexpected_exception_is_a_500_without_details(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(nursery, router()) as client:
        with caplog.at_level(logging.ERROR, logger="vstack.http"):
            reply = await client.request("GET", "/crash")
        assert (reply.status, reply.reason) == (500, b"Internal Server Error")
        assert reply.json() == {"error": "Internal server error", "detail": "Internal server error"}
        assert b"secret" not in reply.body
        assert b"Traceback" not in reply.body
        assert b"RuntimeError" not in reply.body
        # ... but the operator sees it, with its traceback.
        logged = [r for r in caplog.records if r.exc_info]
        assert len(logged) == 1
        assert "secret internal detail" in str(logged[0].exc_info[1])  # type: ignore[index]
        assert (await client.request("GET", "/ping")).body == b"pong"  # the connection lives on


async def test_a_body_over_the_limit_is_413(nursery: trio.Nursery) -> None:
    async with serving(nursery, router()) as client:
        assert (await client.request("POST", "/echo?limit=16", body=b"0123456789")).body == b"0123456789"
        reply = await client.request("POST", "/echo?limit=16", body=b"x" * 100)
        assert (reply.status, reply.reason) == (413, b"Content Too Large")
        assert reply.json()["error"] == "body larger than 16 bytes"
        # A small refused body is read and dropped: the connection is still good.
        assert (await client.request("GET", "/ping")).body == b"pong"


async def test_a_large_body_over_the_limit_closes_the_connection(nursery: trio.Nursery) -> None:
    async with serving(nursery, router()) as client:
        reply = await client.request("POST", "/echo?limit=16", body=b"x" * 200_000)
        assert reply.status == 413
        assert reply.headers["connection"] == "close"
        assert await client.closed_by_server()


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
) -> None:
    # Body's contract: the limit is enforced by Content-Length before reading,
    # so a client need not send 10 MB (or wait for a timeout) to hear 413.
    async with serving(nursery, router(), deadline=1000) as client:
        await client.send_raw(b"POST /echo?limit=16 HTTP/1.1\r\nHost: t\r\n"
                              b"Content-Length: 10000000\r\n\r\n", method="POST")
        start = trio.current_time()
        reply = await client.reply()
        assert reply.status == 413
        assert trio.current_time() - start < 1


async def test_oversized_headers_are_431(nursery: trio.Nursery) -> None:
    limits = HttpLimits(max_header_bytes=4096)
    async with serving(nursery, router(), limits=limits) as client:
        await client.send_raw(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        reply = await client.reply()
        assert (reply.status, reply.reason) == (431, b"Request Header Fields Too Large")
        assert reply.json()["error"] == "Request header fields too large"
        assert reply.headers["connection"] == "close"
        assert await client.closed_by_server()


async def test_headers_just_under_the_limit_are_fine(nursery: trio.Nursery) -> None:
    limits = HttpLimits(max_header_bytes=4096)
    async with serving(nursery, router(), limits=limits) as client:
        reply = await client.request("GET", "/ping", [("X-Big", "a" * 3000)])
        assert reply.body == b"pong"


async def test_malformed_http_is_400_and_closes(nursery: trio.Nursery) -> None:
    async with serving(nursery, router()) as client:
        await client.send_raw(b"THIS IS NOT HTTP\r\n\r\n")
        reply = await client.reply()
        assert reply.status == 400
        assert set(reply.json()) == {"error", "detail"}
        assert await client.closed_by_server()


async def test_an_odd_target_is_a_4xx_not_a_500(nursery: trio.Nursery) -> None:
    async with serving(nursery, router()) as client:
        for target in (b"//[", b"http://[::1/x", b"//x]/ping"):
            await client.send_raw(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = await client.reply()
            assert 400 <= reply.status < 500, (target, reply.status)
            assert set(reply.json()) == {"error", "detail"}
            client.conn.start_next_cycle()


def file_router(path: Path, closed: list[int]) -> Router[Handler]:
    async def get_range(req: Request, body: Body) -> Response:
        fd = os.open(path, os.O_RDONLY)

        def release() -> None:
            os.close(fd)
            closed.append(fd)

        body_range = FileRange(fd=fd, offset=int(req.query["offset"]), length=int(req.query["length"]))
        return Response(status=206, headers=[("Content-Type", "video/mp2t")], body=body_range,
                        after=release)

    r: Router[Handler] = Router()
    r.add("GET", "/file", get_range)
    r.add("HEAD", "/file", get_range)
    return r


async def test_a_file_range_body_is_sent_by_read_and_send(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 123)
    path = tmp_path / "chunk.ts"
    path.write_bytes(data)
    closed: list[int] = []
    async with serving(nursery, file_router(path, closed)) as client:
        reply = await client.request("GET", f"/file?offset=1000&length={len(data) - 2000}")
        assert (reply.status, reply.reason) == (206, b"Partial Content")
        assert reply.headers["content-length"] == str(len(data) - 2000)
        assert reply.body == data[1000:-1000]
        assert len(closed) == 1  # the file is released once sent
        reply = await client.request("GET", "/file?offset=0&length=0")
        assert (reply.status, reply.body) == (206, b"")
        assert len(closed) == 2


async def test_a_file_shorter_than_its_range_ends_the_connection(
    nursery: trio.Nursery, tmp_path: Path,
) -> None:
    path = tmp_path / "short.ts"
    path.write_bytes(b"x" * 100)
    closed: list[int] = []
    async with serving(nursery, file_router(path, closed)) as client:
        await client.stream.send_all(b"GET /file?offset=50&length=100 HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while chunk := await client.stream.receive_some():
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        assert b"content-length: 100" in head.lower()
        assert len(rest) < 100  # never padded: the connection ends, so the client sees it is short
        assert len(closed) == 1


async def test_head_has_headers_but_no_body(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with serving(nursery, router()) as client:
        reply = await client.request("HEAD", "/ping")
        assert reply.status == 200
        assert reply.headers["content-length"] == "4"
        assert reply.body == b""
        # Had "pong" been sent anyway, it would be read as the next reply.
        assert (await client.request("GET", "/ping")).body == b"pong"
    path = tmp_path / "chunk.ts"
    path.write_bytes(b"y" * 5000)
    closed: list[int] = []
    async with serving(nursery, file_router(path, closed)) as client:
        reply = await client.request("HEAD", "/file?offset=0&length=5000")
        assert (reply.headers["content-length"], reply.body) == ("5000", b"")
        assert len(closed) == 1  # released although nothing was sent
        assert (await client.request("GET", "/file?offset=10&length=5")).body == b"yyyyy"


async def test_an_unread_small_body_still_allows_keep_alive(nursery: trio.Nursery) -> None:
    async with serving(nursery, router()) as client:
        reply = await client.request("POST", "/ignore", body=b"z" * 1000)
        assert reply.json() == {"ok": True}
        assert "connection" not in reply.headers
        assert (await client.request("GET", "/ping")).body == b"pong"


async def test_an_unread_large_body_closes_the_connection(nursery: trio.Nursery) -> None:
    async with serving(nursery, router()) as client:
        reply = await client.request("POST", "/ignore", body=b"z" * 200_000)
        assert reply.json() == {"ok": True}
        assert reply.headers["connection"] == "close"
        assert await client.closed_by_server()


async def test_a_stalled_body_is_408_after_the_read_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
) -> None:
    limits = HttpLimits(read_timeout=30.0, idle_timeout=75.0)
    async with serving(nursery, router(), limits=limits, deadline=1000) as client:
        start = trio.current_time()
        await client.send_raw(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
                              method="POST")
        reply = await client.reply()
        assert (reply.status, reply.reason) == (408, b"Request Timeout")
        assert reply.json()["error"] == "timed out reading the request"
        assert reply.headers["connection"] == "close"
        assert 30.0 <= trio.current_time() - start < 31.0
        assert await client.closed_by_server()


async def test_an_idle_connection_is_closed_after_the_idle_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
) -> None:
    limits = HttpLimits(read_timeout=30.0, idle_timeout=75.0)
    async with serving(nursery, router(), limits=limits, deadline=1000) as client:
        assert (await client.request("GET", "/ping")).body == b"pong"
        start = trio.current_time()
        assert await client.closed_by_server()
        assert 75.0 <= trio.current_time() - start < 76.0
    async with serving(nursery, router(), limits=limits, deadline=1000) as client:
        start = trio.current_time()
        await client.send_raw(b"GET /ping HTTP/1.1\r\n")  # headers never finished:
        reply = await client.reply()  # the head's deadline, not the idle timeout
        assert (reply.status, reply.json()["error"]) == (408, "timed out reading the request head")
        assert 30.0 <= trio.current_time() - start < 31.0
        assert await client.closed_by_server()


async def test_the_server_returns_when_the_client_hangs_up() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(serve_stream, server_end, router(), limits=HttpLimits()))
            client = Client(client_end)
            assert (await client.request("GET", "/ping")).body == b"pong"
            await client_end.send_all(b"GET /pi")  # half a request, then gone
            await client_end.aclose()
