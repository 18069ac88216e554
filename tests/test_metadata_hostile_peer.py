"""A metadata replica survives a peer replica and a storage node that reset, hang or answer garbage.

Replica 0 is real; replica 1 of its two-replica cluster, and the storage
node it probes, are one hostile server whose behaviour the test switches.
Whatever that peer does, replica 0 stays up: it answers reads, refuses
writes it cannot get a quorum for with a 503 (never a wrong answer, never a
crash), and its background jobs (Paxos batches, catch-up, view merging,
probing) keep trying. Timing runs on the MockClock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from nodes.net.http_client import request
from tools.launch import free_port

from .hostile import MODES, HostileServer


async def test_replica_survives_a_hostile_peer(
    clock: trio.testing.MockClock, nursery: trio.Nursery, start_metadata: Callable[..., Any]
) -> None:
    peer = HostileServer()  # replica 1's peer port
    node = HostileServer()  # a storage node the replica probes
    peer_port = await nursery.start(peer.serve)
    node_port = await nursery.start(node.serve)
    port, own_peer_port = free_port(), free_port()
    svc = await start_metadata(
        port=port, replica_id=0, bootstrap=True,
        peers=(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
        peer_port=own_peer_port,
        peer_addresses=(f"127.0.0.1:{own_peer_port}", f"127.0.0.1:{peer_port}"),
        storage_nodes=(f"http://127.0.0.1:{node_port}",), heartbeat_interval=1.0,
        views_merge_interval=0.5)
    base = f"http://127.0.0.1:{svc.port}"

    with trio.fail_after(900):  # virtual seconds
        for mode in MODES:
            peer.mode = node.mode = mode
            await peer.wait_seen(mode, 6)
            await node.wait_seen(mode, 3)
            assert (await request("GET", f"{base}/health")).status == 200
            assert (await request("GET", f"{base}/videos")).json() == []
            write = await request("POST", f"{base}/video", json_body={"title": "t",
                                                                      "duration_sec": 5})
            assert write.status == 503, write.body  # no quorum: refused, nothing decided
            assert "outcome is unknown" in write.json()["error"]
    assert "/health" in node.requests
    assert (await request("GET", f"{base}/videos")).json() == []


async def test_decisions_in_flight_are_capped(
    clock: trio.testing.MockClock, nursery: trio.Nursery, start_metadata: Callable[..., Any]
) -> None:
    """With its peer hung, a round waits out its deadline; meanwhile a replica at its
    cap of rounds in flight refuses more at once (503, nothing proposed) instead of
    queueing them behind."""
    peer = HostileServer()
    peer.mode = "hang"
    peer_port = await nursery.start(peer.serve)
    port, own_peer_port = free_port(), free_port()
    svc = await start_metadata(
        port=port, replica_id=0, bootstrap=True, max_rounds_in_flight=1,
        peers=(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
        peer_port=own_peer_port,
        peer_addresses=(f"127.0.0.1:{own_peer_port}", f"127.0.0.1:{peer_port}"))
    base = f"http://127.0.0.1:{svc.port}"
    answers: list[int] = []

    async def create() -> None:
        res = await request("POST", f"{base}/video", json_body={"title": "t", "duration_sec": 5})
        answers.append(res.status)
        if res.status == 503 and "busy" in res.json()["error"]:
            answers.append(-1)

    async with trio.open_nursery() as both:
        both.start_soon(create)
        await trio.sleep(0.5)  # the first round is in flight, waiting for the hung peer
        both.start_soon(create)
    assert sorted(answers) == [-1, 503, 503]  # one busy refusal at once, one no-quorum
