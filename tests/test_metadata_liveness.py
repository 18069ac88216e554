"""Node liveness on virtual time: silent nodes leave /nodes/healthy, and come back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nodes.metadata.transport import MAX_HEARD_NODES, _ages
from nodes.net.http_client import request
from tools.launch import free_port


async def test_silent_nodes_drop_out_and_return_without_flapping(
    start_metadata: Callable[..., Any], clock: trio.testing.MockClock
) -> None:
    svc = await start_metadata(heartbeat_interval=10, node_timeout=30)
    base = f"http://127.0.0.1:{svc.port}"

    async def call(method: str, path: str, body: Any = None) -> Any:
        res = await request(method, base + path, json_body=body)
        assert res.status == 200, res.body
        return res.json()

    for name in ("steady", "flaky"):
        await call("POST", "/nodes/register", {"node_url": f"http://{name}:8081", "node_id": name})

    async def healthy() -> list[str]:
        return sorted(n["node_id"] for n in await call("GET", "/nodes/healthy"))

    start = trio.current_time()
    seen: list[tuple[float, list[str]]] = []
    # "steady" heartbeats every 10 s throughout; "flaky" stops at t=20 and resumes at t=120.
    for tick in range(20):
        now = trio.current_time() - start
        await call("POST", "/nodes/steady/heartbeat", {"disk_usage_percent": 10, "chunk_count": 1})
        if now < 20 or now >= 120:
            await call("POST", "/nodes/flaky/heartbeat", {"disk_usage_percent": 20, "chunk_count": 2})
        seen.append((now, await healthy()))
        await trio.sleep_until(start + 10 * (tick + 1))

    assert all("steady" in names for _, names in seen), "a heartbeating node never drops out"
    flaky_at = [(t, "flaky" in names) for t, names in seen]
    assert all(up for t, up in flaky_at if t < 30)
    assert not any(up for t, up in flaky_at if 60 <= t < 120)
    assert all(up for t, up in flaky_at if t >= 120)
    # The verdicts were decided by consensus: the transitions are on record.
    rows = {n["node_id"]: n for n in (await call("GET", "/nodes/all"))["nodes"]}
    assert rows["flaky"]["status"] == "healthy"
    assert rows["steady"]["chunk_count"] == 1
    state = svc.replica.acceptor.slots["node/flaky"]
    assert state.value is not None
    assert state.value["v"] >= 3  # registered, declared down, back up


async def test_a_replica_that_cannot_hear_a_node_does_not_vote_it_down(
    start_metadata: Callable[..., Any], clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A node heard by replicas 0 and 1 only stays healthy everywhere (no flapping);
    once nobody hears it, every replica lists it down."""
    ports, peer_ports = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    svcs = [await start_metadata(
        port=ports[i], peer_port=peer_ports[i], replica_id=i, bootstrap=True,
        peers=tuple(f"http://127.0.0.1:{p}" for p in ports),
        peer_addresses=tuple(f"127.0.0.1:{p}" for p in peer_ports),
        database=tmp_path / f"m{i}" / "metadata.db", heartbeat_interval=10, node_timeout=30)
        for i in range(3)]

    async def call(i: int, method: str, path: str, body: Any = None) -> Any:
        res = await request(method, f"http://127.0.0.1:{ports[i]}{path}", json_body=body)
        assert res.status == 200, res.body
        return res.json()

    await call(0, "POST", "/nodes/register", {"node_url": "http://n:8081", "node_id": "n"})
    with trio.fail_after(30):
        while not all(svc.reader.node("n") for svc in svcs):
            await trio.sleep(0.5)
    start = trio.current_time()
    listed: list[tuple[float, list[bool]]] = []
    for second in range(240):  # looked at every second, not only just after heartbeats
        if second < 120 and second % 10 == 0:  # replica 2 never hears it (its link is broken)
            for i in (0, 1):
                await call(i, "POST", "/nodes/n/heartbeat",
                           {"disk_usage_percent": 1, "chunk_count": 0})
        listed.append((second, [any(n["node_id"] == "n" for n in await call(i, "GET",
                                                                           "/nodes/healthy"))
                                for i in range(3)]))
        if second == 119:  # no verdict was decided while it was heard: registered only
            for svc in svcs:
                value = svc.replica.acceptor.slots["node/n"].value
                assert value is not None
                assert value["v"] == 1, value
        await trio.sleep_until(start + second + 1)
    assert all(all(up) for t, up in listed if t < 120), [x for x in listed if not all(x[1])]
    # Silent for everyone from t=120: down on every replica by t=120+30+a period.
    assert not any(any(up) for t, up in listed if t >= 170), listed
    assert all(svc.reader.node("n")["status"] == "down" for svc in svcs)


@pytest.mark.parametrize("ages", [
    {"n": float("nan")}, {"n": -1}, {"n": True}, {"n": "3"}, {"n": 1e12},
    {"x" * 257: 1.0}, {f"n{i}": 1.0 for i in range(MAX_HEARD_NODES + 1)}, ["n", 1.0],
])
def test_a_peers_heard_answer_is_checked(ages: Any) -> None:
    """A peer may only vouch with finite, non-negative ages for a bounded set of nodes."""
    with pytest.raises(ValueError):  # noqa: PT011 - the parser's one error type
        _ages({"ages": ages})
    assert _ages({"ages": {"n": 2.5, "m": 0}}) == {"n": 2.5, "m": 0.0}
