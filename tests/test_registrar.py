"""A storage node survives a metadata replica that resets, hangs or answers garbage.

The replica here is a hostile server on 127.0.0.1 whose behaviour the test
switches; the storage node is real. Whatever the replica does, the node
keeps serving chunks, and once the replica behaves it registers and
heartbeats. Timing runs on the MockClock (the hung calls' deadlines pass in
virtual time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from nodes.net.http_client import request

from .hostile import MODES, HostileServer


async def node_with_replica(nursery: trio.Nursery, start_node: Callable[..., Any], mode: str,
                            **node: Any) -> tuple[Any, HostileServer]:
    """A storage node registering with one hostile replica that starts in ``mode``."""
    replica = HostileServer()
    replica.mode = mode
    port = await nursery.start(replica.serve)
    started, _ = await start_node(metadata_urls=(f"http://127.0.0.1:{port}",),
                                  node_url="http://127.0.0.1:1", heartbeat_interval=1.0, **node)
    return started, replica


async def test_node_survives_reset_hang_and_garbage(
    clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any]
) -> None:
    node, replica = await node_with_replica(nursery, start_node, "reset")
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


async def test_a_replica_that_keeps_forgetting_the_node_gets_back_off_not_a_storm(
    clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any]
) -> None:
    # A heartbeat answered 404 means "register again"; a 404 right after a
    # registration the replica accepted is a failure, backed off like any other.
    # (It used to re-register and heartbeat again at once, in a tight loop.)
    _, replica = await node_with_replica(nursery, start_node, "forget")
    with trio.move_on_after(30):  # virtual seconds
        await replica.wait_seen("forget", 60)
    assert 4 <= replica.seen["forget"] < 30


async def test_a_node_id_that_is_no_url_path_reaches_its_heartbeat_route(
    clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any]
) -> None:
    _, replica = await node_with_replica(nursery, start_node, "ok", node_id="rack 1#a?b")
    with trio.fail_after(30):
        await replica.wait_seen("ok", 3)
    assert replica.paths[:3] == ["/nodes/register"] + ["/nodes/rack%201%23a%3Fb/heartbeat"] * 2
