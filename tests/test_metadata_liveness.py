"""Node liveness on virtual time: silent nodes leave /nodes/healthy, and come back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from nodes.net.http_client import request


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
