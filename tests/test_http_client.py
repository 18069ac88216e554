"""The one HTTP client: what it does with connections a server closed or spoke on while idle."""

from __future__ import annotations

import socket

import h11
import pytest
import trio
import trio.testing

from nodes.net.http_client import HttpClient
from nodes.net.http_server import Body, HttpLimits, serve_http
from protocol.errors import PeerUnreachable
from protocol.http import Request, Response, Router, json_response


async def _echo(req: Request, body: Body) -> Response:
    return json_response(200, {"method": req.method, "body": (await body.read(1024)).decode()})


async def test_a_post_after_the_server_dropped_the_idle_connection_goes_on_a_fresh_one(
        clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    # A POST is not repeated after a failure (it may have taken effect), so it
    # must never be sent on a connection the server already closed: with the
    # server's idle timeout passed, it used to fail with ConnectionLost.
    router: Router[object] = Router()
    router.add("POST", "/x", _echo)
    port = await nursery.start(lambda task_status: serve_http(
        router, host="127.0.0.1", port=0, limits=HttpLimits(idle_timeout=1.0),  # type: ignore[arg-type]
        task_status=task_status))
    async with HttpClient() as client:
        first = await client.request("POST", f"http://127.0.0.1:{port}/x", json_body={"n": 1})
        assert first.status == 200
        await trio.sleep(5)  # the server closes the idle connection
        second = await client.request("POST", f"http://127.0.0.1:{port}/x", json_body={"n": 2})
        assert (second.status, second.json()) == (200, {"method": "POST", "body": '{"n": 2}'})


async def test_bytes_sent_on_an_idle_connection_are_not_taken_for_the_next_answer(
        clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    # A server that answers, then writes an unasked-for 408 on the kept-alive
    # connection: that 408 used to become the answer to the next request.
    connections = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.EndOfMessage):
                break
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await stream.send_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    async with HttpClient() as client:
        for _ in range(2):
            with trio.fail_after(5):
                res = await client.request("GET", f"http://127.0.0.1:{port}/")
            assert (res.status, res.body) == (200, b"ok")
            await trio.sleep(1)
    assert connections == 2


async def test_a_host_that_drops_our_syns_is_given_up_after_the_connect_timeout(
        clock: trio.testing.MockClock) -> None:
    """A host whose link is down never refuses: connecting fails after
    ``connect_timeout``, not after the kernel's minutes of SYN retries."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: once the queue is full, SYNs are dropped
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        async with HttpClient(connect_timeout=5) as client:
            start = trio.current_time()
            with trio.fail_after(60), pytest.raises(PeerUnreachable, match="within 5 s"):
                await client.request("GET", f"http://127.0.0.1:{port}/health")
            assert 5 <= trio.current_time() - start < 6
    finally:
        for s in fillers:
            s.close()
        listener.close()
