"""The redundancy manager against a real cluster: metadata, storage nodes, real bytes.

Videos are stored here directly (shards encoded by vstack.erasure, or
replicas) and committed through the metadata service, so no FFmpeg runs and
time can be virtual (MockClock): node timeouts and grace periods pass in
virtual seconds. Each pass of the manager is run by the test
(``run_pass``), and every read goes through the reader players use
(:func:`nodes.client.fetcher.fetch_chunk`), which checks every byte.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from nodes.net.http_client import request
from nodes.redundancy.service import run_pass
from nodes.redundancy.state import Manager
from protocol.api import chunk_id
from vstack.reconcile import copies_of, plan_repairs

from .cluster import Cluster, start_cluster


async def test_a_video_moves_between_modes_and_its_bytes_never_change(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    # Views stay "recent" for the whole test (else the video would cool down again).
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5,
                            popularity_window=1000)
    vid = await c.put_video("erasure_coding")
    failures: list[BaseException] = []

    async def keep_reading() -> None:
        while True:
            try:
                await c.read_all(vid)
            except Exception as exc:  # any failed read is a failure of the test
                failures.append(exc)
            await trio.sleep(20)

    nursery.start_soon(keep_reading)
    for mode in ("replication", "erasure_coding"):
        if mode == "replication":  # viewed past the threshold (10 here): replicated
            await run_pass(c.mgr)  # a window of history first: until then, nothing moves
            await trio.sleep(1000)
            for _ in range(11):
                assert (await request("POST", f"{c.meta}/video/{vid}/view")).status == 200
        else:  # then an operator's override sends it back
            res = await request("POST", f"{c.meta}/redundancy/override/{vid}?mode={mode}")
            assert res.status == 200
        await run_pass(c.mgr)
        m = await c.manifest(vid)
        assert {ch.redundancy_mode for ch in m.chunks} == {mode}
        if mode == "replication":
            assert all(len(set(ch.replicas)) == 3 for ch in m.chunks)
        else:
            assert all(sorted(f.fragment_index for f in ch.fragments) == [0, 1, 2, 3, 4]
                       for ch in m.chunks)
        await c.read_all(vid)
        # The old copies stay until the orphan grace has passed, then go.
        for _ in range(4):
            await trio.sleep(60)
            await run_pass(c.mgr)
        referenced = {(u, s) for ch in m.chunks
                      for u, s in ([(u, ch.chunk_id) for u in ch.replicas] +
                                   [(f.node_url, f.fragment_id) for f in ch.fragments or ()])}
        assert await c.inventory() == referenced
    assert c.mgr.stats.migrations == 2
    assert failures == []


@pytest.mark.parametrize("mode", ["replication", "erasure_coding"])
async def test_a_lost_node_is_rebuilt_elsewhere_and_playback_never_fails(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any, mode: str) -> None:
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=4)
    vid = await c.pinned_video(mode, chunks=4)
    victim = c.nodes[0]  # holds a copy or a shard of every chunk
    await c.stops.pop(victim)()
    start = trio.current_time()
    seen_short = 0
    while True:
        await c.read_all(vid)  # never fails, before, during and after the repair
        health = (await request("GET", f"{c.meta}/storage/overhead")).json()
        seen_short = max(seen_short, health["under_replicated_chunks"])
        await run_pass(c.mgr)
        if c.mgr.stats.repairs >= 4:
            break
        assert trio.current_time() - start < 600, "not repaired within 600 virtual seconds"
        await trio.sleep(5)
    assert trio.current_time() - start >= 60, "repaired before the grace period"
    m = await c.manifest(vid)
    for ch in m.chunks:
        if mode == "replication":
            assert len(set(ch.replicas)) == 3
            assert victim not in ch.replicas
        else:
            per_node = Counter(f.node_url for f in ch.fragments)
            assert sorted(f.fragment_index for f in ch.fragments) == [0, 1, 2, 3, 4]
            assert victim not in per_node
            assert max(per_node.values()) <= 2
    await c.read_all(vid)
    await run_pass(c.mgr)
    assert c.mgr.stats.under_replicated == 0
    health = (await request("GET", f"{c.meta}/storage/overhead")).json()
    assert (health["under_replicated_chunks"], health["unreadable_chunks"]) == (0, 0)
    assert seen_short == 4  # what /storage/overhead said while the node was down


async def test_orphans_go_after_the_grace_and_referenced_chunks_never(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    kept = await c.put_video("replication", chunks=2)
    orphan_id = chunk_id("0" * 8 + "-0000-0000-0000-" + "0" * 12, 0)
    await c.store(c.nodes[1], orphan_id, b"stored, never committed")
    stalled = (await request("POST", f"{c.meta}/video",
                             json_body={"title": "stalled", "duration_sec": 5})).json()["video_id"]
    more: list[str] = []

    async def keep_uploading() -> None:  # commits racing the collector
        while True:
            more.append(await c.put_video("replication", chunks=1, size=1000))
            await trio.sleep(7)

    nursery.start_soon(keep_uploading)
    await run_pass(c.mgr)
    assert (c.nodes[1], orphan_id) in await c.inventory()  # within the grace: kept
    for _ in range(6):
        await trio.sleep(60)
        await run_pass(c.mgr)
    assert (c.nodes[1], orphan_id) not in await c.inventory()
    assert c.mgr.stats.orphans_deleted >= 1
    for vid in [kept, *more]:
        await c.read_all(vid)
    listed = {v["video_id"]: v["status"] for v in
              (await request("GET", f"{c.meta}/videos?limit=1000")).json()}
    assert stalled not in listed or listed[stalled] == "deleted"
    assert c.mgr.stats.uploads_expired == 1


class Crash(Exception):
    """The manager 'dies' here (nothing it holds in memory survives a real crash either)."""


def crash_at(mgr: Manager, step: int) -> tuple[list[int], Callable[[], None]]:
    """Make the ``step``-th storage or metadata operation of ``mgr`` raise :class:`Crash`
    (before it happens); returns the operation counter and what undoes the wrapping."""
    count = [0]
    saved: list[tuple[Any, str, Any]] = []

    def wrap(obj: Any, name: str) -> None:
        real = getattr(obj, name)
        saved.append((obj, name, real))

        async def op(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == step:
                raise Crash(f"{name} #{step}")
            return await real(*args, **kwargs)

        setattr(obj, name, op)

    for name in ("get", "put", "delete"):
        wrap(mgr.pool, name)
    wrap(mgr.metadata, "commit_chunk")

    def undo() -> None:
        for obj, name, real in saved:
            setattr(obj, name, real)

    return count, undo


async def crash_at_every_step(c: Cluster, vid: str, attempt: Callable[[], Any]) -> int:
    """Run ``attempt`` again and again, crashing at its 1st, 2nd, ... operation, until
    it finishes before the crash point; ``vid`` must be readable after every crash.
    Returns how many crashes there were."""
    crashes = 0
    for step in range(1, 200):
        counter, undo = crash_at(c.mgr, step)
        try:
            await attempt()
        except* Crash:
            crashes += 1
        undo()
        await c.read_all(vid)  # readable after every crash
        if counter[0] < step:  # finished before reaching the crash point
            break
    return crashes


@pytest.mark.parametrize(("start", "target"), [("erasure_coding", "replication"),
                                               ("replication", "erasure_coding")])
async def test_a_migration_killed_at_every_step_leaves_the_video_readable_and_converges(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any, start: str, target: str) -> None:
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    vid = await c.put_video(start, chunks=2, size=20_000)
    assert (await request("POST", f"{c.meta}/redundancy/override/{vid}?mode={target}")
            ).status == 200
    from nodes.redundancy import migrate
    from nodes.redundancy.service import observe

    async def migrate_once() -> None:
        snap = await observe(c.mgr)
        await migrate.migrate_video(c.mgr, snap, await c.manifest(vid), target)

    assert await crash_at_every_step(c, vid, migrate_once) >= 5
    m = await c.manifest(vid)
    assert {ch.redundancy_mode for ch in m.chunks} == {target}
    for _ in range(4):  # leftovers of the crashed attempts: collected after the grace
        await trio.sleep(60)
        await run_pass(c.mgr)
    referenced = {(u, s) for ch in m.chunks
                  for u, s in ([(u, ch.chunk_id) for u in ch.replicas] +
                               [(f.node_url, f.fragment_id) for f in ch.fragments or ()])}
    assert await c.inventory() == referenced
    await c.read_all(vid)


# -- the collector never takes a referenced copy (from an adversarial review) -----------------


async def test_nodes_known_by_other_names_keep_their_copies(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """docker-compose's layout: nodes register one URL, NODE_ALIASES shows another in
    manifests. The collector must not take the registered names' copies as orphans."""
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3,
                            aliased=True)
    meta, mgr = c.meta, c.mgr
    vid = await c.put_video("replication", chunks=2)
    assert (await request("POST", f"{meta}/redundancy/override/{vid}?mode=replication")
            ).status == 200
    before = await c.inventory()
    for _ in range(4):
        await trio.sleep(60)
        await run_pass(mgr)
    assert await c.inventory() == before
    assert mgr.stats.orphans_deleted == 0
    await c.read_all(vid)


async def test_a_video_flipped_back_within_the_grace_keeps_its_reused_shards(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """EC -> replication -> EC: the new shards reuse the old (node, shard id) after the
    old ones were tracked as orphans; only the fresh check saves them."""
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    vid = await c.put_video("erasure_coding", chunks=2)
    override = f"{c.meta}/redundancy/override/{vid}?mode="
    assert (await request("POST", override + "replication")).status == 200
    await run_pass(c.mgr)  # t=0: replicated; the shards are orphans from now on
    await trio.sleep(60)
    await run_pass(c.mgr)  # t=60: the collector starts counting them
    assert (await request("POST", override + "erasure_coding")).status == 200
    await trio.sleep(130)
    await run_pass(c.mgr)  # t=190: back to shards (same ids, same nodes); the old ones are due
    m = await c.manifest(vid)
    assert {ch.redundancy_mode for ch in m.chunks} == {"erasure_coding"}
    refs = {(f.node_url, f.fragment_id) for ch in m.chunks for f in ch.fragments or ()}
    assert refs <= await c.inventory()
    await c.read_all(vid)


async def test_chunks_with_ids_of_any_form_are_never_collected_while_referenced(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """The contract lets a writer name chunks as it likes ("clip-0001")."""
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = (await request("POST", f"{c.meta}/video",
                         json_body={"title": "t", "duration_sec": 1})).json()["video_id"]
    data = os.urandom(1000)
    for url in c.nodes:
        await c.store(url, "clip-0001", data)
    body = {"checksum": hashlib.sha256(data).hexdigest(), "size_bytes": 1000, "video_id": vid,
            "sequence_num": 0, "node_urls": c.nodes}
    assert (await request("POST", f"{c.meta}/chunk/clip-0001/commit", json_body=body)
            ).json()["success"]
    for node in ("n0", "n1", "n2"):  # the collector's mark is refused: referenced there
        assert await c.mgr.metadata.mark_collecting("clip-0001", "clip-0001", node) is None
    assert await c.mgr.metadata.mark_collecting("clip-0002", "clip-0002", "n0") is not None


async def test_an_upload_that_went_active_during_the_pass_is_not_expired(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    from nodes.redundancy import gc
    from nodes.redundancy.service import observe

    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = (await request("POST", f"{c.meta}/video",
                         json_body={"title": "slow", "duration_sec": 1})).json()["video_id"]
    await run_pass(c.mgr)  # stalled since now
    await trio.sleep(301)
    snap = await observe(c.mgr)  # this pass still sees it uploading...
    assert (await request("PATCH", f"{c.meta}/video/{vid}/status",
                          json_body={"status": "active"})).status == 200  # ...but it finished
    await gc.expire_uploads(c.mgr, snap)
    m = await c.manifest(vid)
    assert m is not None
    assert m.status == "active"
    assert c.mgr.stats.uploads_expired == 0


async def test_a_stale_migration_never_brings_back_a_replaced_chunk(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    from nodes.redundancy import migrate
    from nodes.redundancy.service import observe

    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    vid = await c.put_video("erasure_coding", chunks=1)
    snap = await observe(c.mgr)  # a pass's snapshot...
    old = next(m for m in snap.manifests if m.video_id == vid)
    new = os.urandom(5000)  # ...then chunk 0 is replaced under another id
    cid = f"{vid}-chunk-000-again"
    for url in c.nodes[:3]:
        await c.store(url, cid, new)
    body = {"checksum": hashlib.sha256(new).hexdigest(), "size_bytes": 5000, "video_id": vid,
            "sequence_num": 0, "node_urls": c.nodes[:3]}
    assert (await request("POST", f"{c.meta}/chunk/{cid}/commit", json_body=body)
            ).json()["success"]
    await migrate.migrate_video(c.mgr, snap, old, "replication")  # from the stale snapshot
    assert [ch.chunk_id for ch in (await c.manifest(vid)).chunks] == [cid]


@pytest.mark.parametrize("mode", ["replication", "erasure_coding"])
async def test_a_copy_gone_from_a_healthy_node_is_rebuilt(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any, mode: str) -> None:
    """Quarantined by the scrubber, or lost with a disk: the node is up, the copy is not."""
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    vid = await c.pinned_video(mode, chunks=1)
    [copy, *_] = copies_of((await c.manifest(vid)).chunks[0])
    assert await c.mgr.pool.delete(copy.node_url, copy.stored_id)
    for _ in range(4):  # gone at two listings in a row, then rebuilt
        await run_pass(c.mgr)
        await trio.sleep(30)
    assert c.mgr.stats.repairs == 1
    chunk = (await c.manifest(vid)).chunks[0]
    inventory = await c.inventory()
    assert all((x.node_url, x.stored_id) in inventory for x in copies_of(chunk))
    assert len(copies_of(chunk)) == (3 if mode == "replication" else 5)
    await c.read_all(vid)


@pytest.mark.parametrize("mode", ["replication", "erasure_coding"])
async def test_a_repair_killed_at_every_step_leaves_the_video_readable_and_converges(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any, mode: str) -> None:
    from nodes.redundancy import repair
    from nodes.redundancy.service import observe

    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5,
                            repair_grace=0)
    vid = await c.pinned_video(mode, chunks=2, size=20_000)
    victim = c.nodes[0]
    await c.stops.pop(victim)()
    with trio.fail_after(120):
        while not (await observe(c.mgr)).lost:
            await trio.sleep(5)
    async def repair_once() -> None:
        snap = await observe(c.mgr)
        for item in plan_repairs(snap.manifests, snap.lost, identity=snap.identity):
            await repair.repair_chunk(c.mgr, snap, item)

    assert await crash_at_every_step(c, vid, repair_once) >= 4
    snap = await observe(c.mgr)
    assert plan_repairs(snap.manifests, snap.lost, identity=snap.identity) == []
    for _ in range(4):
        await trio.sleep(60)
        await run_pass(c.mgr)
    m = await c.manifest(vid)
    referenced = {(x.node_url, x.stored_id) for ch in m.chunks for x in copies_of(ch)}
    assert await c.inventory() == referenced  # no leftover of the crashed attempts
    await c.read_all(vid)


async def test_work_that_keeps_failing_waits_and_does_not_block_the_rest(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """A video whose every copy is gone cannot migrate; it is retried later, and the
    others (more than a pass's cap of migrations) move meanwhile."""
    from nodes.redundancy.service import MIGRATIONS_PER_PASS

    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=5)
    # More than 3 passes' worth if the broken one took a place in every pass.
    others = [await c.put_video("erasure_coding", chunks=1, size=1000)
              for _ in range(3 * (MIGRATIONS_PER_PASS - 1) + 1)]
    broken = await c.put_video("erasure_coding", chunks=1, size=1000)  # newest: listed first
    for x in copies_of((await c.manifest(broken)).chunks[0]):
        await c.mgr.pool.delete(x.node_url, x.stored_id)
    for vid in [broken, *others]:
        res = await request("POST", f"{c.meta}/redundancy/override/{vid}?mode=replication")
        assert res.status == 200
    for _ in range(3):
        await run_pass(c.mgr)
        await trio.sleep(30)
    for vid in others:
        assert {ch.redundancy_mode for ch in (await c.manifest(vid)).chunks} == {"replication"}
    assert c.mgr.deferred(f"migrate:{broken}")


async def test_a_commit_racing_the_collectors_delete_keeps_its_copy(
        clock: trio.testing.MockClock, nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], tmp_path: Any) -> None:
    """An orphan is committed (a writer stored the same bytes again: the node said
    "already there") between the collector's mark and its delete: the commit is
    refused (409), the writer stores the copy again and commits."""
    c = await start_cluster(nursery, start_node, start_metadata, tmp_path, nodes=3)
    vid = (await request("POST", f"{c.meta}/video",
                         json_body={"title": "resumed", "duration_sec": 1})).json()["video_id"]
    data, cid = os.urandom(3000), chunk_id(vid, 0)
    for url in c.nodes:
        await c.store(url, cid, data)  # stored, not (yet) committed: orphans
    real_delete = c.mgr.pool.delete
    body = {"checksum": hashlib.sha256(data).hexdigest(), "size_bytes": 3000, "video_id": vid,
            "sequence_num": 0, "node_urls": c.nodes}
    answers: list[tuple[int, bool]] = []

    async def delete_after_a_commit(url: str, stored_id: str) -> bool:
        res = await request("POST", f"{c.meta}/chunk/{cid}/commit", json_body=body)
        answers.append((res.status, res.status == 200 and res.json()["success"]))
        return await real_delete(url, stored_id)

    c.mgr.pool.delete = delete_after_a_commit  # type: ignore[method-assign,assignment]
    await run_pass(c.mgr)
    await trio.sleep(130)
    await run_pass(c.mgr)  # the orphans are due: marked, then deleted
    c.mgr.pool.delete = real_delete  # type: ignore[method-assign]
    assert answers, "the collector deleted nothing"
    assert answers[0][0] == 409, answers  # every node held it: refused, it may be deleted
    assert not any(ok for _, ok in answers), answers  # later: refused, or too few copies
    for url in c.nodes:  # the writer stores again and retries
        await c.store(url, cid, data)
    res = await request("POST", f"{c.meta}/chunk/{cid}/commit", json_body=body)
    assert res.json()["success"]
    await run_pass(c.mgr)
    assert {(u, cid) for u in c.nodes} <= await c.inventory()
    c.data[vid] = [data]
    await c.read_all(vid)
