"""The network emulator: each fault does what it says, on real sockets, in virtual time.

A proxy sits between a test client and a small server on 127.0.0.1 (an echo
server, or a source that sends N bytes); time is trio's ``MockClock``
(the ``clock`` fixture), so a 200 ms latency is measured as 200 virtual ms
and a five-second bandwidth test takes a fraction of a real second.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import pytest
import trio

from nodes.net.http_client import HttpResult, request
from nodes.netem.service import serve_netem
from nodes.netem.state import Netem
from protocol.validate import ValidationError
from vstack.auth import AuthPolicy
from vstack.netem import (
    SCENARIOS,
    Dice,
    FaultSettings,
    Mode,
    NetemSettings,
    ProxySpec,
    TokenBucket,
    due_time,
    parse_proxy_spec,
)

SECRET = "s" * 20


# -- servers behind the proxy ----------------------------------------------------------------


class Echo:
    """Sends back what it gets; counts connections."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def start_echo(nursery: trio.Nursery) -> tuple[Echo, int]:
    echo = Echo()
    listeners = await nursery.start(partial(trio.serve_tcp, echo.handle, 0, host="127.0.0.1"))
    return echo, listeners[0].socket.getsockname()[1]


async def start_source(nursery: trio.Nursery, size: int) -> int:
    """A server that sends ``size`` bytes to whoever connects, then closes."""

    async def handle(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"v" * size)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def start_netem(nursery: trio.Nursery, *targets: int, **overrides: Any) -> Netem:
    settings = NetemSettings(
        proxies=tuple(ProxySpec(listen_port=0, host="127.0.0.1", port=t) for t in targets),
        control_port=0, **overrides)
    em: Netem = await nursery.start(serve_netem, settings)
    return em


def only_port(em: Netem) -> int:
    [port] = em.proxies
    return port


async def put(em: Netem, port: int, body: Any, **kwargs: Any) -> HttpResult:
    return await request("PUT", f"http://127.0.0.1:{em.control_port}/proxies/{port}",
                         json_body=body, **kwargs)


async def round_trip(stream: trio.SocketStream, data: bytes) -> float:
    """Send ``data``, read it back whole; the virtual seconds it took."""
    start = trio.current_time()
    await stream.send_all(data)
    got = b""
    while len(got) < len(data):
        piece = await stream.receive_some(65536)
        assert piece, "closed early"
        got += piece
    assert got == data
    return trio.current_time() - start


async def send_and_receive(stream: trio.SocketStream, data: bytes) -> bytes:
    await stream.send_all(data)
    return await stream.receive_some(100)


async def echo_link(nursery: trio.Nursery, **overrides: Any) -> tuple[Netem, int, Echo]:
    echo, target = await start_echo(nursery)
    em = await start_netem(nursery, target, **overrides)
    return em, only_port(em), echo


# -- pure decisions --------------------------------------------------------------------------


def test_jitter_stays_within_its_bounds_and_uses_them() -> None:
    dice = Dice(7)
    s = FaultSettings(latency_ms=100, jitter_ms=30)
    delays = [dice.delay(s) for _ in range(2000)]
    assert all(0.070 <= d <= 0.130 for d in delays)
    assert min(delays) < 0.075
    assert max(delays) > 0.125
    assert Dice(0).delay(FaultSettings(latency_ms=5, jitter_ms=50)) >= 0  # never negative


def test_dice_are_repeatable_per_seed() -> None:
    def rolls(seed: int) -> list[bool]:
        dice = Dice(seed)
        return [dice.chance(0.3) for _ in range(200)]

    assert rolls(1) == rolls(1)
    assert rolls(1) != rolls(2)
    assert 30 < sum(rolls(3)) < 90
    assert not any(Dice(1).chance(0) for _ in range(100))
    assert all(Dice(1).chance(1) for _ in range(100))


def test_token_bucket_caps_and_refills() -> None:
    bucket = TokenBucket(1000, now=0.0)
    assert bucket.take(1000, now=0.0) == pytest.approx(1.0)
    # a second later the debt is repaid: the next 1000 bytes cost one second, not two
    assert bucket.take(1000, now=1.0) == pytest.approx(1.0)
    # idle for long: at most a burst is saved, never a second's worth
    assert bucket.take(1000, now=100.0) == pytest.approx(1.0 - 1000 * 0.02 / 1000)
    assert TokenBucket(0, now=0.0).take(10**9, now=0.0) == 0.0  # no cap


def test_token_bucket_rate_changes_at_run_time() -> None:
    bucket = TokenBucket(1000, now=0.0)
    bucket.set_rate(10_000, now=0.0)
    assert bucket.take(10_000, now=0.0) == pytest.approx(1.0)


def test_due_time_keeps_order() -> None:
    assert due_time(1.0, 0.5, 0.0) == 1.5
    assert due_time(1.0, 0.1, 1.5) == 1.5  # never before the chunk ahead of it


def test_settings_validate_every_field_and_change_nothing_when_bad() -> None:
    base = FaultSettings(latency_ms=10)
    changed = base.with_changes({"jitter_ms": 5, "mode": "blackhole", "bandwidth_bps": 1000})
    assert (changed.latency_ms, changed.jitter_ms, changed.mode) == (10, 5, Mode.BLACKHOLE)
    bad: list[dict[str, Any]] = [
           {"latency_ms": -1}, {"latency_ms": 60_001}, {"jitter_ms": "5"}, {"reset_rate": 1.5},
           {"stall_rate": -0.1}, {"bandwidth_bps": 1.5}, {"bandwidth_bps": -1},
           {"mode": "down"}, {"latency_ms": True}, {"colour": "red"}, {"stall_ms": 10**9}]
    for body in bad:
        with pytest.raises(ValidationError) as info:
            base.with_changes(body)
        assert info.value.status == 422
    with pytest.raises(ValidationError) as info:
        base.with_changes({"latency_ms": -1, "reset_rate": 2})
    assert len(info.value.problems) == 2
    assert base == FaultSettings(latency_ms=10)


def test_proxy_specs_parse() -> None:
    assert parse_proxy_spec("9081=127.0.0.1:8081") == ProxySpec(
        listen_port=9081, host="127.0.0.1", port=8081)
    assert parse_proxy_spec("0=[::1]:80").host == "::1"
    for bad in ("9081", "9081=host", "x=h:1", "9081=h:0", "70000=h:1", "1=h:99999"):
        with pytest.raises(ValueError):  # noqa: PT011
            parse_proxy_spec(bad)


def test_scenarios_are_the_guides() -> None:
    assert [s.name for s in SCENARIOS] == ["normal", "high latency", "low bandwidth",
                                            "packet loss", "node failure", "recovery"]
    failure = SCENARIOS[4]
    assert failure.for_proxy(0).mode is Mode.REFUSE
    assert failure.for_proxy(1).mode is Mode.NORMAL


# -- the proxy on real sockets ---------------------------------------------------------------


async def test_no_faults_forwards_at_once_and_counts(nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, echo = await echo_link(nursery)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        assert await round_trip(stream, b"hello" * 1000) < 0.05
        assert await round_trip(stream, b"again") < 0.05
    counters = em.proxies[port].counters
    assert (counters.connections, counters.bytes_up, counters.bytes_down) == (1, 5005, 5005)
    assert echo.connections == 1


async def test_latency_is_added_each_way(nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, _ = await echo_link(nursery)
    assert (await put(em, port, {"latency_ms": 200})).status == 200
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        rtt = await round_trip(stream, b"ping")
    assert 0.4 <= rtt < 0.45


async def test_jitter_delays_vary_within_bounds_and_keep_order(
        nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, _ = await echo_link(nursery, seed=3)
    await put(em, port, {"latency_ms": 100, "jitter_ms": 50})
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        rtts = [await round_trip(stream, b"x%d" % i) for i in range(15)]
        assert all(0.1 <= r <= 0.31 for r in rtts)
        assert max(rtts) - min(rtts) > 0.02  # jitter is there
        # many small sends in flight at once come back in order
        sent = b"".join(b"<%d>" % i for i in range(200))
        for i in range(200):
            await stream.send_all(b"<%d>" % i)
        got = b""
        while len(got) < len(sent):
            got += await stream.receive_some(65536)
        assert got == sent


async def test_bandwidth_cap_caps(nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    size = 1_000_000
    source = await start_source(nursery, size)
    em = await start_netem(nursery, source)
    port = only_port(em)

    async def download() -> float:
        start = trio.current_time()
        total = 0
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            while data := await stream.receive_some(65536):
                total += len(data)
        assert total == size
        return trio.current_time() - start

    assert await download() < 0.05
    await put(em, port, {"bandwidth_bps": 200_000})
    assert 4.9 <= await download() <= 5.3  # 1 MB at 200 kB/s
    await put(em, port, {"bandwidth_bps": 0})
    assert await download() < 0.05
    assert em.proxies[port].counters.bytes_down == 3 * size


async def test_settings_apply_to_open_connections(nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, _ = await echo_link(nursery)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        assert await round_trip(stream, b"fast") < 0.05
        await put(em, port, {"latency_ms": 300})
        assert 0.6 <= await round_trip(stream, b"slow") < 0.65
        await put(em, port, {"latency_ms": 0})
        assert await round_trip(stream, b"fast again") < 0.05


async def test_reset_rate_resets_the_connection(nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, _ = await echo_link(nursery)
    await put(em, port, {"reset_rate": 1})
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"doomed")
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as info:
            await stream.receive_some(100)
        assert isinstance(info.value.__cause__, ConnectionResetError)
    assert em.proxies[port].counters.resets == 1


async def test_stall_pauses_each_chunk(nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, _ = await echo_link(nursery)
    await put(em, port, {"stall_rate": 1, "stall_ms": 1500})
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        rtt = await round_trip(stream, b"slowly")
    assert 3.0 <= rtt < 3.05  # one stall each way
    assert em.proxies[port].counters.stalls == 2


async def test_refuse_closes_new_connections_and_recovery_recovers(
        nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, echo = await echo_link(nursery)
    async with await trio.open_tcp_stream("127.0.0.1", port) as open_before:
        assert await round_trip(open_before, b"up") < 0.05
        await put(em, port, {"mode": "refuse"})
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):  # node went down
            await round_trip(open_before, b"still there?")
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            await send_and_receive(stream, b"anyone?")
    assert em.proxies[port].counters.refused == 1
    assert echo.connections == 1  # the node never saw the refused one
    await put(em, port, {"mode": "normal"})
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        assert await round_trip(stream, b"back") < 0.05


async def test_blackhole_never_answers_until_the_clients_deadline(
        nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, echo = await echo_link(nursery)
    await put(em, port, {"mode": "blackhole"})
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"hello?" * 1000)
        start = trio.current_time()
        with trio.move_on_after(30) as scope:
            await stream.receive_some(100)
        assert scope.cancelled_caught
        assert trio.current_time() - start == pytest.approx(30, abs=0.1)
    assert echo.connections == 0
    assert em.proxies[port].counters.blackholed == 1
    await put(em, port, {"mode": "normal"})
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        assert await round_trip(stream, b"recovered") < 0.05


async def test_connection_cap_closes_one_more(nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    _em, port, _ = await echo_link(nursery, max_connections=2)
    streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    for s in streams:
        assert await round_trip(s, b"in") < 0.05
    async with await trio.open_tcp_stream("127.0.0.1", port) as extra:
        assert await extra.receive_some(10) == b""  # closed at once
    for s in streams:
        await s.aclose()


# -- the control API -------------------------------------------------------------------------


async def test_control_api_shows_and_validates(nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    em, port, _ = await echo_link(nursery)
    base = f"http://127.0.0.1:{em.control_port}"
    ok = await put(em, port, {"latency_ms": 50, "jitter_ms": 10})
    assert ok.status == 200
    assert ok.json()["settings"]["latency_ms"] == 50
    for body in ({"latency_ms": -5}, {"mode": "sideways"}, {"reset_rate": 3},
                 {"bandwidth_bps": "fast"}, {"nope": 1}, [1, 2]):
        bad = await put(em, port, body)
        assert bad.status == 422, body
        assert "error" in bad.json()
    raw = await request("PUT", f"{base}/proxies/{port}", body=b"{not json")
    assert raw.status == 422
    assert (await put(em, 1, {"latency_ms": 1})).status == 404
    assert (await request("GET", f"{base}/proxies/abc")).status == 404
    shown = (await request("GET", f"{base}/proxies")).json()["proxies"]
    assert [p["listen_port"] for p in shown] == [port]
    assert shown[0]["settings"] == FaultSettings(latency_ms=50, jitter_ms=10).to_json()
    assert set(shown[0]["counters"]) >= {"connections", "bytes_up", "bytes_down", "resets",
                                         "stalls"}
    assert (await request("GET", f"{base}/proxies/{port}")).json()["listen_port"] == port


async def test_control_api_needs_the_cluster_secret_to_change(
        nursery: trio.Nursery, clock: trio.abc.Clock) -> None:
    auth = AuthPolicy(cluster_secret=SECRET.encode())
    em, port, _ = await echo_link(nursery, auth=auth)
    assert (await put(em, port, {"latency_ms": 5})).status == 401
    assert em.proxies[port].faults == FaultSettings()
    good = await put(em, port, {"latency_ms": 5},
                     headers=[("Authorization", f"Bearer {SECRET}")])
    assert good.status == 200
    assert (await request("GET", f"http://127.0.0.1:{em.control_port}/proxies")).status == 200
