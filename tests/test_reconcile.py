"""The redundancy manager's decisions, without a network (vstack/reconcile.py)."""

from __future__ import annotations

from protocol.api import Fragment, Manifest, ManifestChunk
from vstack.reconcile import (
    GraceTracker,
    Liveness,
    ViewWindow,
    plan_repairs,
    stored_mode,
    target_mode,
)

A, B, C, D, E = (f"http://127.0.0.1:{9000 + i}" for i in range(5))


def chunk(seq: int, *, replicas: tuple[str, ...] = (), shards: tuple[str, ...] = ()
          ) -> ManifestChunk:
    cid = f"v-chunk-{seq:03d}"
    frags = tuple(Fragment(fragment_id=f"{cid}-s{i}", fragment_index=i, node_url=url,
                           size_bytes=10, checksum="0" * 64) for i, url in enumerate(shards))
    return ManifestChunk(chunk_id=cid, sequence_num=seq, size_bytes=30, checksum="1" * 64,
                         redundancy_mode="erasure_coding" if shards else "replication",
                         duration_sec=1.0, start_sec=float(seq), replicas=replicas,
                         fragments=frags or None)


def manifest(*chunks: ManifestChunk) -> Manifest:
    return Manifest(video_id="v", title="t", duration_sec=1, total_chunks=len(chunks),
                    chunk_size_bytes=1, created_at="", status="active", chunk_duration_sec=10,
                    chunks=chunks)


def test_repairs_come_riskiest_first_and_skip_what_cannot_be_rebuilt() -> None:
    m = manifest(
        chunk(0, replicas=(A, B, C)),  # fine
        chunk(1, replicas=(A, D, E)),  # lost D, E: one copy left (margin 0)
        chunk(2, replicas=(A, B, D)),  # lost D: two left (margin 1)
        chunk(3, shards=(A, B, C, D, E)),  # lost D, E: 3 shards left (margin 0)
        chunk(4, shards=(D, E, D, E, A)),  # 1 shard left: cannot be rebuilt
        chunk(5, replicas=(D, E)),  # nothing left
        chunk(6, replicas=(A, B)),  # committed short of a copy, no loss
    )
    plan = plan_repairs([m], lost={D, E})
    assert [(r.chunk.sequence_num, r.missing, r.margin) for r in plan] == [
        (1, 2, 0), (3, 2, 0), (2, 1, 1), (6, 1, 1)]
    assert [c.node_url for c in plan[0].surviving] == [A]
    assert {c.index for c in plan[1].surviving} == {0, 1, 2}
    # With nothing lost, only chunks committed short of copies are repaired.
    assert [r.chunk.sequence_num for r in plan_repairs([m], lost=set())] == [5, 6]


def test_hysteresis_keeps_a_video_on_the_line_where_it_is() -> None:
    t = 1000
    assert target_mode("erasure_coding", 1001, t, None) == "replication"
    assert target_mode("replication", 700, t, None) == "replication"  # between t/2 and t
    assert target_mode("erasure_coding", 700, t, None) == "erasure_coding"
    assert target_mode("replication", 499, t, None) == "erasure_coding"
    assert target_mode("replication", 5000, t, "erasure_coding") == "erasure_coding"
    assert stored_mode(manifest(chunk(0, replicas=(A,)), chunk(1, shards=(A,) * 5))) is None


def test_views_are_counted_over_the_window() -> None:
    w = ViewWindow(window=100)
    assert w.observe("v", 5000, now=0) is None  # no history yet: not known, not "popular"
    assert w.observe("v", 5080, now=60) is None
    assert w.observe("v", 5090, now=110) == 90  # since the sample at 0
    assert w.observe("v", 5090, now=400) == 0  # no views in the last 100 s
    assert target_mode("erasure_coding", None, 1000, None) == "erasure_coding"  # a restart
    assert target_mode("replication", None, 1000, None) == "replication"


def test_a_node_is_lost_only_after_the_grace_and_forgiven_when_back() -> None:
    live = Liveness(grace=300)
    assert live.observe({A: "down", B: "healthy"}, now=0) == set()
    assert live.observe({A: "down", B: "healthy"}, now=299) == set()
    assert live.observe({A: "down", B: "down"}, now=300) == {A}
    assert live.observe({A: "healthy", B: "down"}, now=301) == set()
    assert live.observe({A: "down", B: "down"}, now=600) == {B}


def test_grace_tracker_forgets_what_left_the_state() -> None:
    g: GraceTracker[str] = GraceTracker(10)
    assert g.observe({"x", "y"}, now=0) == []
    assert g.observe({"x"}, now=10) == ["x"]  # y left the state: forgotten
    assert g.observe({"y"}, now=15) == []  # and starts again from now
    assert g.observe({"y"}, now=25) == ["y"]
    # Things outside the scope checked are kept as they are.
    g.observe({"a"}, now=30)
    assert g.observe(set(), now=41, scope={"y"}) == []
    assert g.observe({"a"}, now=41) == ["a"]
    assert GraceTracker[str](0).observe({"z"}, now=5) == ["z"]
