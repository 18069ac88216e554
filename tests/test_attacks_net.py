"""Attacks on the shared servers (issue 9, items 4, 5, 6 and 8), on 127.0.0.1.

Each test plays one attack against a real listening socket, bounded in
count and time (slow attacks on virtual time: the ``clock`` fixture), and
checks the bound the server promises: what it holds (its byte budgets'
accounting and tracemalloc, never RSS), when it hangs up, what it answers.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import resource
import socket
import subprocess
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from nodes.net.bounds import ByteBudget, ConnectionGate
from nodes.net.frame_client import open_frame_client
from nodes.net.frame_server import FrameLimits, FrameSession, serve_frames
from nodes.net.http_client import request
from nodes.net.http_server import Body, Handler, HttpLimits, serve_http
from protocol.errors import ProtocolError
from protocol.frames import (
    HEADER,
    MAGIC,
    NEED_DATA,
    VERSION,
    Frame,
    FrameConnection,
    Opcode,
    encode_range,
    response,
)
from protocol.http import Request, Response, Router, json_response
from protocol.validate import ValidationError
from vstack.auth import AuthPolicy

MiB = 1024 * 1024

# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever the attack, the servers log no error (no traceback, no leak found late)."""
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert errors == []



async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until ``check()`` holds (the server works in its own tasks)."""
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.01)


async def read_frames(stream: trio.SocketStream, codec: FrameConnection, n: int) -> list[Frame]:
    out: list[Frame] = []
    with trio.fail_after(30):
        while len(out) < n:
            event = codec.next_event()
            if event is NEED_DATA:
                data = await stream.receive_some(1 << 20)
                assert data, "closed early"
                codec.receive_data(data)
            else:
                assert isinstance(event, Frame)
                out.append(event)
    return out


async def drip(stream: trio.SocketStream, data: bytes, every: float) -> None:
    """Send ``data`` one byte every ``every`` seconds (a slowloris)."""
    for i in range(len(data)):
        await stream.send_all(data[i : i + 1])
        await trio.sleep(every)


async def read_to_eof(stream: trio.SocketStream, seconds: float = 60.0) -> bytes:
    got = b""
    with trio.fail_after(seconds):
        while data := await stream.receive_some(65536):
            got += data
    return got


def put_header(request_id: int, payload_length: int, key: bytes = b"k") -> bytes:
    return HEADER.pack(MAGIC, VERSION, Opcode.PUT, 0, 0, request_id, len(key), payload_length, 0) + key


class Held:
    """A frame handler that holds every request until released (a slow disk)."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.most = 0
        self.release = trio.Event()

    async def __call__(self, session: FrameSession, req: Frame) -> None:
        self.calls += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        await session.send(response(req, 200))


async def start_frames(nursery: trio.Nursery, handler: Callable[[FrameSession, Frame], Awaitable[None]],
                       limits: FrameLimits, budget: ByteBudget | None = None) -> int:
    port: int = await nursery.start(partial(serve_frames, handler, host="127.0.0.1", port=0,
                                            limits=limits, budget=budget))
    return port


# -- item 4: the binary protocol trusts no length -----------------------------------------------


async def test_headers_promising_8_mib_allocate_nothing_until_the_bytes_come(
        nursery: trio.Nursery) -> None:
    budget = ByteBudget(256 * MiB)
    port = await start_frames(nursery, Held(), FrameLimits(max_payload=8 * MiB + 64), budget)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(10)]
        for i, stream in enumerate(streams):
            await stream.send_all(put_header(i + 1, 8 * MiB) + b"x" * 1000)
        await eventually(lambda: budget.statistics().in_use == 10 * 8 * MiB)  # all headers parsed
        await trio.sleep(0.2)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * MiB, f"{held / MiB:.1f} MiB held for 10 headers and 10 kB of payload"
    for stream in streams:
        await stream.aclose()
    await eventually(lambda: budget.statistics().in_use == 0)


async def test_pipelined_puts_stop_being_read_at_the_connection_budget(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    held = Held()
    budget = ByteBudget(64 * MiB)
    limits = FrameLimits(max_payload=MiB, max_connection_bytes=4 * MiB)
    port = await start_frames(nursery, held, limits, budget)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    payload = b"p" * MiB
    codec = FrameConnection(max_payload=MiB)
    sent = 0

    async def pipeline() -> None:  # 64 PUTs, sent as fast as the server takes them
        nonlocal sent
        for i in range(64):
            await stream.send_all(codec.send(Frame(opcode=Opcode.PUT, request_id=i + 1,
                                                   key=b"k%d" % i, payload=payload)))
            sent += 1

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        nursery.start_soon(pipeline)
        await eventually(lambda: held.calls >= 4)
        await trio.sleep(5)  # the server reads nothing more: the client's sends stall
        grew = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert held.calls == 4
    assert budget.statistics().peak <= 4 * MiB
    assert sent < 64
    assert grew < 12 * MiB, f"{grew / MiB:.1f} MiB"
    held.release.set()  # the disk catches up: everything is answered, in full
    answers = await read_frames(stream, codec, 64)
    assert sorted(f.request_id for f in answers) == list(range(1, 65))
    await eventually(lambda: budget.statistics().in_use == 0)  # the last task ends after its answer
    await stream.aclose()


async def test_all_connections_together_stay_within_the_node_budget(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    held = Held()
    budget = ByteBudget(8 * MiB)
    limits = FrameLimits(max_payload=MiB, max_connection_bytes=4 * MiB)
    port = await start_frames(nursery, held, limits, budget)
    codec = FrameConnection(max_payload=MiB)
    streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(6)]
    for n, stream in enumerate(streams):
        wire = b"".join(codec.send(Frame(opcode=Opcode.PUT, request_id=i + 1, key=b"c%d-%d" % (n, i),
                                         payload=b"q" * (MiB // 2))) for i in range(4))
        nursery.start_soon(stream.send_all, wire)
    await eventually(lambda: held.calls >= 16)
    await trio.sleep(5)
    assert held.calls == 16  # 8 MiB of the 12 MiB sent
    assert budget.statistics().peak <= 8 * MiB
    held.release.set()
    for stream in streams:  # no deadlock: every request is answered
        assert len(await read_frames(stream, FrameConnection(), 4)) == 4
        await stream.aclose()


async def test_small_frames_that_arrive_whole_count_against_the_budget_too(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    held = Held()
    budget = ByteBudget(MiB)
    limits = FrameLimits(max_payload=64 * 1024, max_connection_bytes=256 * 1024)
    port = await start_frames(nursery, held, limits, budget)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    codec = FrameConnection()
    wire = b"".join(codec.send(Frame(opcode=Opcode.PUT, request_id=i + 1, key=b"s%d" % i,
                                     payload=b"s" * 20_000)) for i in range(40))
    nursery.start_soon(stream.send_all, wire)  # 800 kB in one go: frames arrive whole
    await eventually(lambda: held.calls >= 13)
    await trio.sleep(5)
    assert held.calls == 13  # 13 x 20 kB fit in 256 KiB, 14 do not
    assert budget.statistics().peak <= 256 * 1024
    held.release.set()
    assert len(await read_frames(stream, codec, 40)) == 40
    await stream.aclose()


async def test_a_server_stopped_mid_attack_leaves_its_budget_balanced(
        clock: trio.testing.MockClock) -> None:
    held = Held()
    budget = ByteBudget(MiB)
    limits = FrameLimits(max_payload=64 * 1024, max_connection_bytes=256 * 1024)
    codec = FrameConnection()
    wire = b"".join(codec.send(Frame(opcode=Opcode.PUT, request_id=i + 1, key=b"s%d" % i,
                                     payload=b"s" * 20_000)) for i in range(40))
    async with trio.open_nursery() as server:
        port = await start_frames(server, held, limits, budget)
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        for stream in streams:
            server.start_soon(stream.send_all, wire)
        await eventually(lambda: held.calls >= 39)  # 13 per connection
        await trio.sleep(1)
        server.cancel_scope.cancel()  # readers wait for room, requests are being served
    assert budget.statistics().in_use == 0
    for stream in streams:
        await stream.aclose()


async def test_a_payload_cut_off_by_its_peer_is_never_a_frame(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    """Bytes queued before the peer's close are taken (a payload whose last
    byte came with the close is whole and answered); a payload the close cut
    short is not a frame: nothing is answered, nothing stays reserved."""
    held = Held()
    held.release.set()
    budget = ByteBudget(64 * MiB)
    port = await start_frames(nursery, held, FrameLimits(max_payload=4 * MiB), budget)
    codec = FrameConnection(max_payload=4 * MiB)
    whole = codec.send(Frame(opcode=Opcode.PUT, request_id=1, key=b"w", payload=b"w" * (3 * MiB)))
    for wire, answered in ((whole, 1), (whole[:-1], 0), (whole[: 2 * MiB], 0)):
        before = held.calls
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(wire)
        await stream.send_eof()  # the close right behind the bytes
        frames = FrameConnection(max_payload=4 * MiB)
        got = []
        with trio.move_on_after(30):
            while data := await stream.receive_some(65536):
                frames.receive_data(data)
                while isinstance(event := frames.next_event(), Frame):
                    got.append(event)
        await stream.aclose()
        await eventually(lambda: budget.statistics().in_use == 0)
        assert held.calls - before == answered
        assert [(f.request_id, f.status) for f in got if f.request_id] == [(1, 200)] * answered


async def test_requests_in_flight_per_connection_are_capped(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    held = Held()
    port = await start_frames(nursery, held, FrameLimits(max_payload=MiB, max_in_flight=8))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    codec = FrameConnection()
    await stream.send_all(b"".join(codec.send(Frame(opcode=Opcode.PING, request_id=i + 1))
                                   for i in range(100)))
    await eventually(lambda: held.calls >= 8)
    await trio.sleep(5)
    assert (held.calls, held.most) == (8, 8)
    held.release.set()
    assert len(await read_frames(stream, codec, 100)) == 100
    await stream.aclose()


async def test_a_peer_that_never_reads_its_answers_is_dropped(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    sending = 0

    async def big_answer(session: FrameSession, req: Frame) -> None:
        nonlocal sending
        sending += 1
        try:
            await session.send(response(req, 200, b"a" * MiB))
        finally:
            sending -= 1

    limits = FrameLimits(max_payload=MiB, send_timeout=30, idle_timeout=3600)
    port = await start_frames(nursery, big_answer, limits)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    codec = FrameConnection()
    await stream.send_all(b"".join(codec.send(Frame(opcode=Opcode.GET, request_id=i + 1, key=b"g%d" % i))
                                   for i in range(32)))
    await eventually(lambda: sending > 0)
    await trio.sleep(60)  # ... and never reads: the answers cannot leave
    assert sending == 0  # the server gave up on them, and on the connection
    try:
        received = await read_to_eof(stream, seconds=10)
    except trio.BrokenResourceError:
        received = b""
    assert len(received) < 32 * MiB
    await stream.aclose()


async def test_a_frame_header_sent_a_byte_every_20_s_is_dropped_after_the_header_timeout(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    port = await start_frames(nursery, Held(), FrameLimits(max_payload=MiB, header_timeout=30))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    wire = FrameConnection().send(Frame(opcode=Opcode.PING, request_id=1))
    async with trio.open_nursery() as inner:
        inner.start_soon(drip, stream, wire, 20)
        start = trio.current_time()
        assert await read_to_eof(stream, seconds=1000) == b""  # closed, never answered
        assert trio.current_time() - start < 35  # not 24 x 20 s
        inner.cancel_scope.cancel()
    await stream.aclose()


async def test_pipelined_ranged_gets_never_read_hold_a_bounded_number_of_chunks(
        start_node: Callable[..., Any]) -> None:
    # A ranged GET reads its chunk into memory (its CRC32C must be computed);
    # 40 of them whose answers are not read must not hold 40 chunks.
    node, _ = await start_node(max_chunk_bytes=MiB - 64, max_buffered_bytes=4 * MiB)
    chunks = {b"r%d" % i: bytes([i]) * (MiB - 64) for i in range(40)}
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        for key, data in chunks.items():
            await client.put(key.decode(), data)
    codec = FrameConnection(max_payload=MiB)
    wire = b"".join(codec.send(Frame(opcode=Opcode.GET, request_id=i + 1, key=key,
                                     payload=encode_range(1, MiB - 100)))
                    for i, key in enumerate(chunks))
    stream = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await stream.send_all(wire)
        await trio.sleep(0.5)  # ... and read nothing for a while
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB"
    answers = await read_frames(stream, codec, 40)  # then every answer arrives, right
    for frame in answers:
        key = b"r%d" % (frame.request_id - 1)
        assert (frame.status, frame.payload) == (206, chunks[key][1 : MiB - 99])
    await stream.aclose()


def test_out_of_descriptors_a_real_node_backs_off_quietly(node_process: Callable[..., Any]) -> None:
    proc = node_process(MAX_CONNECTIONS="1000", LOG_LEVEL="WARNING")
    proc.start()
    keep = socket.create_connection(("127.0.0.1", proc.port), timeout=10)  # opened before
    pid = proc.proc.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the child's, inherited
    limit = len(os.listdir(f"/proc/{pid}/fd")) + 3
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{hard}"], check=True)
    flood = [socket.create_connection(("127.0.0.1", proc.port), timeout=10) for _ in range(100)]
    time.sleep(2)  # the node runs out of descriptors, retries accept, backs off
    keep.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keep.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")  # served connections go on
    for sock in flood:
        sock.close()
    keep.close()
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:{hard}"], check=True)
    deadline = time.monotonic() + 20
    while True:  # new connections are served again
        try:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n"):
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "not served again"
        time.sleep(0.2)
    proc.kill()
    log = (proc.data_dir.parent / "node-process.log").read_text(errors="replace")
    assert "Traceback" not in log
    assert 1 <= log.count("cannot accept connections") <= 2, log[-2000:]


# -- item 8: order per key on one binary connection ------------------------------------------


async def test_requests_on_one_chunk_are_answered_in_order_and_see_each_other(
        start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        for i in range(20):
            await client.put(f"order-{i}", b"data %d" % i)
    codec = FrameConnection()
    wire = b""
    for i in range(20):  # per chunk: DELETE, GET (must miss), PUT, GET (must hit)
        key = b"order-%d" % i
        wire += codec.send(Frame(opcode=Opcode.DELETE, request_id=4 * i + 1, key=key))
        wire += codec.send(Frame(opcode=Opcode.GET, request_id=4 * i + 2, key=key))
        wire += codec.send(Frame(opcode=Opcode.PUT, request_id=4 * i + 3, key=key, payload=b"new"))
        wire += codec.send(Frame(opcode=Opcode.GET, request_id=4 * i + 4, key=key))
    stream = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
    async with stream:
        await stream.send_all(wire)
        answers = await read_frames(stream, codec, 80)
    for i in range(20):
        mine = [f for f in answers if f.key == b"order-%d" % i]
        assert [f.request_id for f in mine] == [4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4]
        assert [f.status for f in mine] == [204, 404, 201, 200]
        assert mine[3].payload == b"new"


# -- item 5: connections, heads, descriptors --------------------------------------------------


async def test_connections_past_the_cap_are_refused_quietly(
        start_node: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    node, _ = await start_node(max_connections=3)
    caplog.set_level(logging.INFO)
    for port in (node.ports.http, node.ports.binary):
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await trio.sleep(0.2)
        for _ in range(20):
            assert await _answer_of(port, node) == 503
        await held.pop().aclose()  # a slot frees up: served again
        with trio.fail_after(10):
            while await _answer_of(port, node) != 200:
                await trio.sleep(0.05)
        for stream in held:
            await stream.aclose()
    assert not [r for r in caplog.records if r.exc_info]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # one per episode and port, not one per refusal


async def _answer_of(port: int, node: Any) -> int:
    """The status a new connection gets for a ping (HTTP or binary)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if port == node.ports.http:
            await stream.send_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await read_to_eof(stream, seconds=5)
            if answer.startswith(b"HTTP/1.1 503"):
                assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"].startswith("Too many")
            return int(answer.split(b" ", 2)[1])
        codec = FrameConnection()
        await stream.send_all(codec.send(Frame(opcode=Opcode.PING, request_id=7)))
        [frame] = await read_frames(stream, codec, 1)
        assert frame.request_id in (0, 7)
        return frame.status


class Exhausted(trio.abc.Listener[trio.SocketStream]):
    """A listener whose first ``failures`` accepts fail as if out of descriptors."""

    def __init__(self, real: trio.SocketListener, failures: int) -> None:
        self.real = real
        self.failures = failures

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.real.accept()

    async def aclose(self) -> None:
        await self.real.aclose()


async def test_out_of_descriptors_the_accept_loop_backs_off_quietly(
        nursery: trio.Nursery, clock: trio.testing.MockClock,
        caplog: pytest.LogCaptureFixture) -> None:
    [real] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = real.socket.getsockname()[1]
    served = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        served.set()
        await stream.aclose()

    gate = ConnectionGate("test", max_connections=4, refusal=b"")
    start = trio.current_time()
    nursery.start_soon(gate.serve, handler, [Exhausted(real, 40)])
    client = await trio.open_tcp_stream("127.0.0.1", port)  # waits in the backlog meanwhile
    with trio.fail_after(120):
        await served.wait()
    await client.aclose()
    assert gate.statistics().accept_failures == 40
    assert trio.current_time() - start > 30  # backed off (up to 1 s), no busy loop
    assert not [r for r in caplog.records if r.exc_info]  # no traceback per accept
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 2


async def test_a_head_sent_a_byte_every_20_s_gets_408_after_the_header_timeout(
        start_node: Callable[..., Any], clock: trio.testing.MockClock) -> None:
    node, _ = await start_node(header_timeout=30)
    stream = await trio.open_tcp_stream("127.0.0.1", node.ports.http)
    head = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
    async with trio.open_nursery() as inner:
        inner.start_soon(drip, stream, head, 20)
        start = trio.current_time()
        answer = await read_to_eof(stream, seconds=1000)
        assert trio.current_time() - start < 35  # not 32 x 20 s
        inner.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    await stream.aclose()


async def test_the_16_kib_header_limit_is_exact(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()

    def head(size: int) -> bytes:
        start, end = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
        return start + b"a" * (size - len(start) - len(end)) + end

    async def status_of(data: bytes, pieces: int = 1) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", node.ports.http)
        async with stream:
            step = -(-len(data) // pieces)
            for i in range(0, len(data), step):
                await stream.send_all(data[i : i + step])
            got = b""
            with trio.fail_after(10):
                while b"\r\n" not in got:
                    got += await stream.receive_some(4096)
        return got.split(b"\r\n")[0]

    assert await status_of(head(16 * 1024)) == b"HTTP/1.1 200 OK"
    assert await status_of(head(16 * 1024 + 1)) == b"HTTP/1.1 431 Request Header Fields Too Large"
    for pieces in (1, 2, 3):  # however the bytes are split between reads
        assert (await status_of(head(31 * 1024), pieces)).startswith(b"HTTP/1.1 431")
    # A head read whole, with the end of a body, before its turn comes.
    put = b"PUT /chunk/pipelined HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 20000\r\n\r\n" + b"b" * 20000
    stream = await trio.open_tcp_stream("127.0.0.1", node.ports.http)
    async with stream:
        await stream.send_all(put + head(20 * 1024).replace(b"Host: x", b"Host: x\r\nConnection: close"))
        answer = await read_to_eof(stream, seconds=10)
    assert answer.startswith(b"HTTP/1.1 201 Created\r\n")
    assert answer.count(b"HTTP/1.1 431 Request Header Fields Too Large\r\n") == 1


# -- item 6: a 413 reaches a client that sends its whole body ---------------------------------


def blocking_put(port: int, size: int, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """What urllib, requests and aiohttp do: send everything, then read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("PUT", "/chunk/too-big", body=b"x" * size, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


async def test_a_whole_9_mib_body_still_gets_its_413(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    with trio.fail_after(60):
        status, body = await trio.to_thread.run_sync(blocking_put, node.ports.http, 9 * MiB)
    assert status == 413
    assert json.loads(body)["error"] == f"Chunk of {9 * MiB} bytes exceeds the limit of {8 * MiB}"
    assert (await request("GET", f"http://127.0.0.1:{node.ports.http}/ping")).status == 200


async def _refuse(req: Request, body: Body) -> Response:
    raise ProtocolError("body larger than 16 bytes", 413)


async def test_the_drain_is_bounded_in_bytes_and_time(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    router: Router[Handler] = Router()
    router.add("PUT", "/chunk/{chunk_id}", _refuse)
    limits = HttpLimits(drain_bytes=MiB, drain_timeout=10)
    port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0, limits=limits))
    cases = [  # (declared length, extra header, body bytes sent, most seconds until closed)
        (4 * MiB, b"", 0, 5),  # over the bound: not drained at all
        (MiB // 2, b"Expect: 100-continue\r\n", 0, 5),  # will send no body: not drained
        (MiB // 2, b"", 1000, 15),  # a body that stalls: drained for drain_timeout at most
    ]
    for declared, extra, sent, most in cases:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"PUT /chunk/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n%s\r\n%s"
                              % (declared, extra, b"z" * sent))
        start = trio.current_time()
        answer = await read_to_eof(stream, seconds=100)
        assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
        assert trio.current_time() - start < most, (declared, extra)
        await stream.aclose()


# -- item 8: small ones -----------------------------------------------------------------------


async def test_501_has_a_reason_and_options_is_a_preflight(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node()
    stream = await trio.open_tcp_stream("127.0.0.1", node.ports.http)
    async with stream:
        await stream.send_all(b"PUT /chunk/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n")
        answer = await read_to_eof(stream, seconds=10)
    assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
    base = f"http://127.0.0.1:{node.ports.http}"
    res = await request("OPTIONS", f"{base}/chunk/any-chunk", headers=[
        ("Origin", "http://player.example"), ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "content-type")])
    assert res.status == 204
    assert res.headers["access-control-allow-origin"] == "*"
    assert "PUT" in res.headers["access-control-allow-methods"]
    assert res.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PUT"
    assert (await request("OPTIONS", f"{base}/nowhere")).status == 404


async def test_json_bodies_never_carry_nan(nursery: trio.Nursery) -> None:
    async def not_finite(req: Request, body: Body) -> Response:
        if req.query.get("as") == "422":
            raise ValidationError([{"type": "finite_number", "loc": ["body", "duration_sec"],
                                    "msg": "Input should be a finite number", "input": float("nan")}])
        return json_response(200, {"nan": float("nan"), "inf": [float("inf"), -float("inf")]})

    router: Router[Handler] = Router()
    router.add("GET", "/x", not_finite)
    port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0,
                                       limits=HttpLimits()))

    def strict(text: str) -> Any:
        raise AssertionError(f"{text} is not JSON")

    ok = await request("GET", f"http://127.0.0.1:{port}/x")
    assert json.loads(ok.body, parse_constant=strict) == {"nan": None, "inf": [None, None]}
    refused = await request("GET", f"http://127.0.0.1:{port}/x?as=422")
    assert refused.status == 422
    assert json.loads(refused.body, parse_constant=strict)["detail"][0]["input"] is None


# -- review of the network layer: F1 budget DoS, F2 readers that never read, F4, F8, F9 -------

SECRET = b"cluster-secret-for-the-net-attacks"
SECURED = AuthPolicy(cluster_secret=SECRET)


def frame_bytes(opcode: Opcode, request_id: int, payload_length: int, key: bytes = b"") -> bytes:
    """A request header (and key) promising ``payload_length`` bytes it may never send."""
    return HEADER.pack(MAGIC, VERSION, opcode, 0, 0, request_id, len(key), payload_length, 0) + key


async def test_unauthenticated_put_headers_are_refused_before_any_reservation(
        start_node: Callable[..., Any]) -> None:
    # /tmp/sec/budget_dos2.py: 33 x 8 MiB promised (1 byte sent) took the whole
    # 256 MiB budget, and every frame of every connection queued behind it.
    node, _ = await start_node(auth=SECURED)
    attackers = [await trio.open_tcp_stream("127.0.0.1", node.ports.binary) for _ in range(33)]
    for i, stream in enumerate(attackers):
        await stream.send_all(frame_bytes(Opcode.PUT, i + 1, 8 * MiB, b"k%03d" % i) + b"x")
    for i, stream in enumerate(attackers):  # each: 401 at its header, then closed
        codec = FrameConnection()
        codec.receive_data(await read_to_eof(stream, seconds=5))
        answer = codec.next_event()
        assert isinstance(answer, Frame)
        assert (answer.request_id, answer.status) == (i + 1, 401)
        await stream.aclose()
    victim = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
    async with victim:
        codec = FrameConnection()
        await victim.send_all(codec.send(Frame(opcode=Opcode.PING, request_id=1))
                              + codec.send(Frame(opcode=Opcode.GET, request_id=2, key=b"big1")))
        with trio.fail_after(5):
            answers = await read_frames(victim, codec, 2)
    assert sorted((f.request_id, f.status) for f in answers) == [(1, 200), (2, 404)]


async def test_auth_and_reads_cannot_promise_large_payloads(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(auth=SECURED)
    for opcode in (Opcode.AUTH, Opcode.GET, Opcode.PING):
        stream = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
        async with stream:
            await stream.send_all(frame_bytes(opcode, 9, MiB, b"k" if opcode is Opcode.GET else b""))
            codec = FrameConnection()
            codec.receive_data(await read_to_eof(stream, seconds=5))
            answer = codec.next_event()
            assert isinstance(answer, Frame)
            assert (answer.request_id, answer.status) == (9, 413), opcode


async def test_an_auth_pipelined_before_a_put_is_honoured(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(auth=SECURED)
    codec = FrameConnection()
    for i in range(20):  # the order the server's tasks run in varies: try it often
        wire = (codec.send(Frame(opcode=Opcode.AUTH, request_id=1, payload=SECRET))
                + codec.send(Frame(opcode=Opcode.PUT, request_id=2, key=b"piped%d" % i,
                                   payload=b"data")))
        stream = await trio.open_tcp_stream("127.0.0.1", node.ports.binary)
        async with stream:
            await stream.send_all(wire)  # the PUT's header arrives before the AUTH is answered
            answers = await read_frames(stream, codec, 2)
        assert sorted((f.request_id, f.status) for f in answers) == [(1, 200), (2, 201)]


async def test_a_ping_is_not_queued_behind_a_reservation_that_waits(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    async def answer(session: FrameSession, req: Frame) -> None:
        await session.send(response(req, 200))

    budget = ByteBudget(12 * MiB)
    limits = FrameLimits(max_payload=8 * MiB, max_connection_bytes=8 * MiB)
    port = await start_frames(nursery, answer, limits, budget)
    holders = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    for i, stream in enumerate(holders):  # 8 MiB reserved, 8 MiB more waiting
        await stream.send_all(frame_bytes(Opcode.PUT, 1, 8 * MiB, b"h%d" % i) + b"x")
    await eventually(lambda: budget.statistics().waiting == 1)
    ping = await trio.open_tcp_stream("127.0.0.1", port)
    async with ping:
        codec = FrameConnection()
        await ping.send_all(codec.send(Frame(opcode=Opcode.PING, request_id=5)))
        with trio.fail_after(5):
            [frame] = await read_frames(ping, codec, 1)
    assert (frame.request_id, frame.status) == (5, 200)
    for stream in holders:
        await stream.aclose()


async def test_a_binary_connection_that_sends_nothing_is_closed_after_the_header_timeout(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    limits = FrameLimits(max_payload=MiB, header_timeout=30, idle_timeout=75)
    port = await start_frames(nursery, Held(), limits)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    start = trio.current_time()
    assert await read_to_eof(stream, seconds=1000) == b""
    assert trio.current_time() - start < 35  # not the 75 s idle timeout
    await stream.aclose()


def small_window(port: int) -> socket.socket:
    """A client socket that takes almost nothing before it reads (it never does)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_an_http_client_that_never_reads_is_dropped_after_the_send_deadline(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    # /tmp/sec/noread_inproc.py: a 16 MiB answer never read held its connection forever.
    released = trio.Event()

    async def big(req: Request, body: Body) -> Response:
        return Response(status=200, body=b"x" * (16 * MiB), after=released.set)

    router: Router[Handler] = Router()
    router.add("GET", "/big", big)
    limits = HttpLimits(send_timeout=30, min_send_rate=MiB, idle_timeout=3600)
    port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0, limits=limits))
    sock = small_window(port)
    try:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        start = trio.current_time()
        with trio.fail_after(600):
            await released.wait()  # the server gave up: the answer's memory is freed
        assert trio.current_time() - start < 30 + 16 + 5
    finally:
        sock.close()


async def test_http_gets_of_unchecked_chunks_share_the_node_reads_budget(
        start_node: Callable[..., Any]) -> None:
    # Chunks not yet checked since start are read into memory to be checked:
    # HTTP GETs whose answers are not read must not hold more than the budget.
    settings = {"max_chunk_bytes": 2 * MiB - 64, "max_buffered_bytes": 8 * MiB}
    node, stop = await start_node(**settings)
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        for i in range(10):
            await client.put(f"u{i}", bytes([i]) * (2 * MiB - 64))
    await stop()
    node, _ = await start_node(**settings)  # a restart: nothing is checked yet
    reads = node.reads
    socks = [small_window(node.ports.http) for _ in range(10)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"GET /chunk/u%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % i)
        await eventually(lambda: reads.statistics().waiting > 0)
        assert reads.statistics().peak <= reads.capacity == 8 * MiB
    finally:
        for sock in socks:
            sock.close()
    await eventually(lambda: reads.statistics().in_use == 0, seconds=30)


async def _read_body(req: Request, body: Body) -> Response:
    return json_response(200, {"got": len(await body.read(MiB))})


async def _refuse_unread(req: Request, body: Body) -> Response:
    raise ProtocolError("who are you?", 401)


async def test_a_body_trickled_a_byte_every_20_s_is_cut_off(
        nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    # /tmp/sec/bodytrickle.py: each read came within read_timeout, so it never ended.
    router: Router[Handler] = Router()
    router.add("POST", "/read", _read_body)
    router.add("POST", "/refuse", _refuse_unread)
    limits = HttpLimits(header_timeout=30, read_timeout=30, drain_timeout=10)
    port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0, limits=limits))
    for path, status, most in ((b"/read", b"408", 45), (b"/refuse", b"401", 25)):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 65536\r\n\r\n" % path)
        async with trio.open_nursery() as inner:
            inner.start_soon(drip, stream, b"b" * 65536, 20)
            start = trio.current_time()
            answer = await read_to_eof(stream, seconds=1000)
            assert trio.current_time() - start < most, path  # not 65536 x 20 s
            inner.cancel_scope.cancel()
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:40]
        await stream.aclose()


async def test_two_authorization_headers_get_400(nursery: trio.Nursery) -> None:
    async def who(req: Request, body: Body) -> Response:
        return json_response(200, {"authorization": req.header("authorization")})

    router: Router[Handler] = Router()
    router.add("GET", "/who", who)
    port = await nursery.start(partial(serve_http, router, host="127.0.0.1", port=0,
                                       limits=HttpLimits()))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /who HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
                              b"Authorization: Bearer b\r\nConnection: close\r\n\r\n")
        answer = await read_to_eof(stream, seconds=10)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"more than one Authorization header" in answer


# -- second review: frames with a bad CRC are admitted too; the peer port's first frame ----


def bad_crc_frame(opcode: Opcode, request_id: int, payload: bytes, key: bytes = b"") -> bytes:
    """A whole frame whose payload CRC32C is wrong."""
    return HEADER.pack(MAGIC, VERSION, opcode, 0, 0, request_id, len(key), len(payload),
                       0xDEADBEEF) + key + payload


async def test_a_bad_crc_frame_is_admitted_like_any_other(start_node: Callable[..., Any]) -> None:
    node, _ = await start_node(auth=SECURED)
    async with await trio.open_tcp_stream("127.0.0.1", node.ports.binary) as stream:
        await stream.send_all(bad_crc_frame(Opcode.DELETE, 1, b"x", b"victim"))
        codec = FrameConnection()
        codec.receive_data(await read_to_eof(stream, seconds=5))  # closed after the answer
        answer = codec.next_event()
        assert isinstance(answer, Frame)
        assert answer.status == 401  # refused as unauthenticated, not merely a bad CRC
    async with await trio.open_tcp_stream("127.0.0.1", node.ports.binary) as stream:
        codec = FrameConnection()  # an AUTH garbled in transit does not lock the connection
        await stream.send_all(bad_crc_frame(Opcode.AUTH, 1, SECRET))
        [first] = await read_frames(stream, codec, 1)
        assert first.status == 400
        await stream.send_all(codec.send(Frame(opcode=Opcode.AUTH, request_id=2, payload=SECRET)))
        [second] = await read_frames(stream, codec, 1)
        assert second.status == 200


async def test_the_peer_port_reserves_nothing_large_for_an_unproven_connection(
        start_metadata: Callable[..., Any]) -> None:
    from tools.launch import free_port

    port, peer_port = free_port(), free_port()
    await start_metadata(
        port=port, replica_id=0, bootstrap=True, auth=AuthPolicy(cluster_secret=SECRET),
        peer_port=peer_port, peers=(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
        peer_addresses=(f"127.0.0.1:{peer_port}", f"127.0.0.1:{free_port()}"))
    async with await trio.open_tcp_stream("127.0.0.1", peer_port) as stream:
        await stream.send_all(frame_bytes(Opcode.PAXOS, 1, 16 * MiB, b"\0" * 32) + b"x")
        codec = FrameConnection()
        codec.receive_data(await read_to_eof(stream, seconds=5))  # refused at once, closed
        answer = codec.next_event()
        assert isinstance(answer, Frame)
        assert answer.status == 413
