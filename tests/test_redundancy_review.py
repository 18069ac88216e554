"""The redundancy manager against the defects an adversarial review of issue 10 found:
node identity (aliases), undecodable commits, overrides of made-up videos, the
collector racing a commit, and stale copies of a node that came back."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from nodes.net.http_client import request
from nodes.redundancy.service import run_pass
from protocol.api import Fragment, Manifest, ManifestChunk, chunk_id
from tools.launch import free_port
from vstack.reconcile import copies_of, plan_repairs

from .cluster import Cluster, start_cluster


async def test_a_node_back_after_its_copies_were_rebuilt_is_reconciled(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """Issue 10: 'A node that comes back with stale copies is reconciled (its extra
    copies deleted once the new placement is committed)'."""
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=4)
    vid = await c.pinned_video("replication", chunks=2)
    victim = c.nodes[0]
    port = int(victim.rsplit(":", 1)[1])
    await c.stops.pop(victim)()
    for _ in range(40):
        await trio.sleep(5)
        await run_pass(c.mgr)
        if c.mgr.stats.repairs >= 2:
            break
    assert c.mgr.stats.repairs >= 2
    _, stop = await start_node(data_dir=tmp_path / "n0", port=port, node_id="n0",
                               node_url=victim, metadata_urls=(c.meta,), heartbeat_interval=5)
    c.stops[victim] = stop
    with trio.fail_after(120):
        while victim not in {n.node_url for n in await c.mgr.metadata.healthy_nodes()}:
            await trio.sleep(1)
    for _ in range(4):  # well past ORPHAN_GRACE_SEC (120 here)
        await trio.sleep(60)
        await run_pass(c.mgr)
    m = await c.manifest(vid)
    referenced = {(x.node_url, x.stored_id) for ch in m.chunks for x in copies_of(ch)}
    assert await c.inventory() == referenced  # the returning node's stale copies are gone
    await c.read_all(vid)


async def aliased_cluster(nursery: trio.Nursery, start_node: Callable[..., Any],
                          start_metadata: Callable[..., Any], tmp_path: Any, n: int,
                          **manager: Any) -> Cluster:
    return await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=n,
                               aliased=True, **manager)


async def test_a_lost_node_known_by_an_alias_is_repaired(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await aliased_cluster(nursery, start_node, start_metadata, tmp_path, 4)
    vid = await c.pinned_video("replication", chunks=2)
    await c.stops.pop(c.nodes[0])()
    for _ in range(60):
        await trio.sleep(5)
        await run_pass(c.mgr)
        if c.mgr.stats.repairs >= 2:
            break
    assert c.mgr.stats.repairs >= 2, "the lost node's copies were never rebuilt"
    m = await c.manifest(vid)
    assert all(len(set(ch.replicas)) == 3 and c.nodes[0].replace("127.0.0.1", "localhost")
               not in ch.replicas for ch in m.chunks), m.chunks
    await c.read_all(vid)


async def test_a_repair_never_puts_two_replicas_on_one_node_known_by_two_names(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await aliased_cluster(nursery, start_node, start_metadata, tmp_path, 2)
    vid = (await request("POST", f"{c.meta}/video",
                         json_body={"title": "t", "duration_sec": 1})).json()["video_id"]
    data = os.urandom(4000)
    cid = chunk_id(vid, 0)
    await c.store(c.nodes[0], cid, data)  # committed with one copy (the others were down)
    body = {"checksum": hashlib.sha256(data).hexdigest(), "size_bytes": 4000, "video_id": vid,
            "sequence_num": 0, "node_urls": [c.nodes[0]]}
    assert (await request("POST", f"{c.meta}/chunk/{cid}/commit", json_body=body)
            ).json()["success"]
    assert (await request("PATCH", f"{c.meta}/video/{vid}/status",
                          json_body={"status": "active"})).status == 200
    assert (await request("POST", f"{c.meta}/redundancy/override/{vid}?mode=replication")
            ).status == 200
    await run_pass(c.mgr)
    replicas = (await c.manifest(vid)).chunks[0].replicas
    assert len(replicas) == len(set(replicas)), f"one node listed twice: {replicas}"


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_overrides_for_made_up_videos_are_refused_and_cost_nothing(
        nursery: trio.Nursery, start_metadata: Callable[..., Any], method: str) -> None:
    """add_view refuses unknown ids ('made-up ids would grow the counter table without
    bound'); the override endpoints decide a Paxos register for any id, forever."""
    svc = await start_metadata()
    meta = f"http://127.0.0.1:{svc.port}"
    before = len(svc.replica.acceptor.slots)
    statuses = set()
    for i in range(50):
        res = await request(method, f"{meta}/redundancy/override/made-up-{i:04d}"
                            + ("?mode=replication" if method == "POST" else ""))
        statuses.add(res.status)
    grown = len(svc.replica.acceptor.slots) - before
    assert grown == 0, f"{grown} registers decided for videos that do not exist ({statuses})"


def test_a_fragment_index_out_of_range_does_not_count_as_a_shard() -> None:
    """The commit accepts fragment_index up to 31; plan_repairs counts any distinct index,
    so a chunk with shards 0-3 and a bogus '7' looks complete and shard 4 is never rebuilt
    (and readers that pick the '7' fail to decode)."""
    frags = tuple(Fragment(fragment_id=f"c-s{i}", fragment_index=i, node_url=f"http://n{i}",
                           size_bytes=10, checksum="a" * 64) for i in (0, 1, 2, 3, 7))
    ch = ManifestChunk(chunk_id="c", sequence_num=0, size_bytes=10, checksum="b" * 64,
                       redundancy_mode="erasure_coding", duration_sec=None, start_sec=None,
                       replicas=(), fragments=frags)
    m = Manifest(video_id="v", title="t", duration_sec=1, total_chunks=1, chunk_size_bytes=10,
                 created_at="", status="active", chunk_duration_sec=10, chunks=(ch,))
    assert len(plan_repairs([m], set())) == 1


async def test_an_ec_commit_that_cannot_be_decoded_is_refused(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """verify_placement accepts 'at least 3 fragments (all, if fewer were listed)': an
    erasure-coded chunk committed with 1 shard is unreadable from the start."""
    from protocol.api import shard_id
    from vstack import erasure

    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = (await request("POST", f"{c.meta}/video",
                         json_body={"title": "t", "duration_sec": 1})).json()["video_id"]
    data = os.urandom(3000)
    cid = chunk_id(vid, 0)
    s = erasure.encode(data)[0]
    await c.store(c.nodes[0], shard_id(cid, 0), bytes(s.data))
    body = {"checksum": hashlib.sha256(data).hexdigest(), "size_bytes": 3000, "video_id": vid,
            "sequence_num": 0, "redundancy_mode": "erasure_coding", "node_urls": [c.nodes[0]],
            "fragments_metadata": [{"fragment_id": shard_id(cid, 0), "fragment_index": 0,
                                    "node_url": c.nodes[0], "size_bytes": s.size,
                                    "checksum": s.sha256}]}
    res = await request("POST", f"{c.meta}/chunk/{cid}/commit", json_body=body)
    assert res.status >= 400 or not res.json()["success"], "1 of 5 shards committed"


async def test_a_commit_whose_decision_lands_after_the_collectors_delete_keeps_its_copy(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """A commit checked the nodes (every one held the copy) just before the collector
    deleted it, and its Paxos round is slower than the whole collection (mark,
    delete, finish): it must not be decided naming a copy that is gone."""
    from vstack.registers import chunk_key

    captured: dict[str, Any] = {}

    async def start_meta(**kw: Any) -> Any:
        captured["svc"] = svc = await start_metadata(**kw)
        return svc

    c = await start_cluster(nursery, start_node, start_meta, tmp_path, nodes=3)
    svc = captured["svc"]
    vid = (await request("POST", f"{c.meta}/video",
                         json_body={"title": "resumed", "duration_sec": 1})).json()["video_id"]
    data, cid = os.urandom(3000), chunk_id(vid, 0)
    for url in c.nodes:
        await c.store(url, cid, data)  # stored, not (yet) committed: orphans
    body = {"checksum": hashlib.sha256(data).hexdigest(), "size_bytes": 3000, "video_id": vid,
            "sequence_num": 0, "node_urls": c.nodes}
    committing, deciding, released = trio.Event(), trio.Event(), trio.Event()
    finished = 0
    real_decide = svc.decide

    async def slow_decide(key: str, change: Any, **kw: Any) -> Any:
        nonlocal finished
        if key == chunk_key(cid) and committing.is_set() and not deciding.is_set():
            deciding.set()  # the commit: every copy checked out; its round is slow
            await released.wait()
            return await real_decide(key, change, **kw)
        value = await real_decide(key, change, **kw)
        if key == chunk_key(cid) and deciding.is_set():
            finished += 1  # the collector finished its mark
            if finished == 1:
                released.set()
        return value

    svc.decide = slow_decide
    results: list[Any] = []

    async def commit() -> None:
        results.append(await request("POST", f"{c.meta}/chunk/{cid}/commit", json_body=body))

    real_delete = c.mgr.pool.delete

    async def delete(url: str, stored_id: str) -> bool:
        if not committing.is_set():
            committing.set()
            nursery.start_soon(commit)
            await deciding.wait()
        return await real_delete(url, stored_id)

    await run_pass(c.mgr)
    await trio.sleep(130)
    c.mgr.pool.delete = delete  # type: ignore[method-assign,assignment]
    await run_pass(c.mgr)
    c.mgr.pool.delete = real_delete  # type: ignore[method-assign]
    with trio.fail_after(30):
        while not results:
            await trio.sleep(0.1)
    res = results[0]
    if res.status == 409:  # refused: the writer stores again and retries
        assert "garbage collector" in res.json()["error"], res.body
        for url in c.nodes:
            await c.store(url, cid, data)
        res = await request("POST", f"{c.meta}/chunk/{cid}/commit", json_body=body)
    assert res.json()["success"], res.body
    committed = {(u, cid) for u in (await c.manifest(vid)).chunks[0].replicas}
    missing = committed - await c.inventory()
    assert not missing, f"committed copies deleted by the collector: {missing}"


async def test_storage_overhead_counts_copies_committed_under_the_contracts_node_names(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """The contract's tests commit with http://storage-node-N:8081, which the alias table
    maps to the nodes; /storage/overhead joins replicas to nodes by the literal URL."""
    ports = [free_port() for _ in range(3)]
    reg = [f"http://127.0.0.1:{p}" for p in ports]
    names = [f"http://storage-node-{i + 1}:8081" for i in range(3)]
    svc = await start_metadata(node_timeout=30, heartbeat_interval=5,
                               aliases=tuple(zip(names, reg, strict=True)))
    meta = f"http://127.0.0.1:{svc.port}"
    for i, p in enumerate(ports):
        await start_node(data_dir=tmp_path / f"n{i}", port=p, node_id=f"n{i}", node_url=reg[i],
                         metadata_urls=(meta,), heartbeat_interval=5)
    with trio.fail_after(60):
        while len((await request("GET", f"{meta}/nodes/healthy")).json()) < 3:
            await trio.sleep(1)
    vid = (await request("POST", f"{meta}/video",
                         json_body={"title": "t", "duration_sec": 1})).json()["video_id"]
    data, cid = os.urandom(2000), chunk_id(vid, 0)
    for url in reg:
        assert (await request("PUT", f"{url}/chunk/{cid}", body=data)).status == 201
    body = {"checksum": hashlib.sha256(data).hexdigest(), "size_bytes": 2000, "video_id": vid,
            "sequence_num": 0, "node_urls": names}
    assert (await request("POST", f"{meta}/chunk/{cid}/commit", json_body=body)).json()["success"]
    health = (await request("GET", f"{meta}/storage/overhead")).json()
    assert (health["under_replicated_chunks"], health["unreadable_chunks"]) == (0, 0)


async def test_a_reader_holding_the_manifest_from_before_a_migration_still_reads(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """Test gap (planted: migrate deleting the old copies right after its commit passes
    every existing test): a player that read the manifest a moment ago still fetches."""
    from nodes.client.fetcher import fetch_chunk

    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    vid = await c.put_video("erasure_coding", chunks=2)
    old = await c.manifest(vid)
    assert (await request("POST", f"{c.meta}/redundancy/override/{vid}?mode=replication")
            ).status == 200
    await run_pass(c.mgr)
    assert {ch.redundancy_mode for ch in (await c.manifest(vid)).chunks} == {"replication"}
    assert [await fetch_chunk(c.http, ch) for ch in old.chunks] == c.data[vid]


async def test_a_referenced_copy_is_never_deleted_even_when_it_cannot_be_read_back_first(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """Test gap (planted: dropping the fresh check before the delete passes every existing
    test, as the restore after the delete hides it) -- unless the backup read fails."""
    from protocol.errors import ProtocolError

    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    vid = await c.put_video("erasure_coding", chunks=1)
    override = f"{c.meta}/redundancy/override/{vid}?mode="
    assert (await request("POST", override + "replication")).status == 200
    await run_pass(c.mgr)
    await trio.sleep(60)
    await run_pass(c.mgr)
    assert (await request("POST", override + "erasure_coding")).status == 200
    await trio.sleep(130)
    real_get = c.mgr.pool.get

    async def get(url: str, stored_id: str, sha: str) -> bytes:
        if "-s" in stored_id.rsplit("-chunk-", 1)[-1]:
            raise ProtocolError(f"{url} timed out", 504)  # a slow node, once
        return await real_get(url, stored_id, sha)

    c.mgr.pool.get = get  # type: ignore[method-assign,assignment]
    await run_pass(c.mgr)  # back to shards (same ids, same nodes); the old ones are due
    c.mgr.pool.get = real_get  # type: ignore[method-assign]
    m = await c.manifest(vid)
    refs = {(f.node_url, f.fragment_id) for ch in m.chunks for f in ch.fragments or ()}
    assert refs <= await c.inventory()


async def test_clearing_an_override_that_was_never_set_decides_nothing(
        nursery: trio.Nursery, start_metadata: Callable[..., Any]) -> None:
    svc = await start_metadata()
    meta = f"http://127.0.0.1:{svc.port}"
    vid = (await request("POST", f"{meta}/video",
                         json_body={"title": "t", "duration_sec": 1})).json()["video_id"]
    before = len(svc.replica.acceptor.slots)
    res = await request("DELETE", f"{meta}/redundancy/override/{vid}")
    assert res.status == 200
    assert res.json()["message"] == "Manual override cleared"
    assert len(svc.replica.acceptor.slots) == before  # no round
    res = await request("POST", f"{meta}/redundancy/override/made-up?mode=replication")
    assert res.status == 404
    assert "error" in res.json()


@pytest.mark.parametrize(("indices", "on", "why"), [
    ((0, 1, 2, 3, 7), (0, 1, 2, 0, 1), "in [0, 5)"),
    ((0, 1, 1, 2, 3), (0, 1, 2, 0, 1), "listed once"),
    ((0, 1), (0, 1), "at least 3"),
    ((0, 1, 2, 3, 4), (0, 0, 0, 1, 2), "at most 2"),
])
async def test_an_ec_placement_that_breaks_the_shard_rules_is_a_422(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any, indices: tuple[int, ...],
        on: tuple[int, ...], why: str) -> None:
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = (await request("POST", f"{c.meta}/video",
                         json_body={"title": "t", "duration_sec": 1})).json()["video_id"]
    cid = chunk_id(vid, 0)
    frags = [{"fragment_id": f"{cid}-s{i}", "fragment_index": i, "node_url": c.nodes[n],
              "size_bytes": 10, "checksum": "a" * 64} for i, n in zip(indices, on, strict=True)]
    body = {"checksum": "b" * 64, "size_bytes": 30, "video_id": vid, "sequence_num": 0,
            "redundancy_mode": "erasure_coding", "node_urls": c.nodes,
            "fragments_metadata": frags}
    res = await request("POST", f"{c.meta}/chunk/{cid}/commit", json_body=body)
    assert res.status == 422
    assert why in res.json()["error"]
