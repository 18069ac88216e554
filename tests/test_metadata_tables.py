"""The materialized tables depend on the chosen values only, never on the order learned.

Two replicas that learned the same values (each key's newest by ballot, the
others skipped) in different orders must hold the same tables: a chunk
learned before its video, a removal before a late commit, two chunk ids at
one (video, sequence).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vstack.metadata_db import MetadataDB

VIDEOS = ("va", "vb")


def video(video_id: str, *, removed: bool = False, status: str = "active") -> dict[str, Any]:
    value: dict[str, Any] = {"video_id": video_id, "title": f"title {video_id}",
                             "duration_sec": 30, "status": status,
                             "created_at": "2026-11-26 12:00:00", "created_ns": hash(video_id) & 0xFFFF,
                             "chunk_size_bytes": 2097152}
    if removed:
        value.update(removed=True, status="deleted")
    return value


def chunk(chunk_id: str, video_id: str, seq: int, committed_ns: int) -> dict[str, Any]:
    return {"chunk_id": chunk_id, "video_id": video_id, "sequence_num": seq, "size_bytes": 1000 + seq,
            "checksum": "ab" * 32, "redundancy_mode": "replication", "duration_sec": 2.0,
            "start_sec": 2.0 * seq, "replicas": [f"http://n{seq % 3}:8081", "http://n9:8081"],
            "fragments": None, "created_at": "2026-11-26 12:00:01", "committed_ns": committed_ns}


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, int, dict[str, Any]]]:
    """Chosen values of a few registers, each key's versions at rising ballots."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    ballot = 64
    for vid in VIDEOS:
        steps = draw(st.lists(st.sampled_from(["active", "uploading", "removed"]), min_size=1,
                              max_size=3))
        for step in steps:
            ballot += 64
            out.append((f"video/{vid}", ballot, video(vid, removed=step == "removed", status=step)))
    for node in ("na", "nb", "nc"):  # nodes claiming (and moving between) a few URLs
        for _ in range(draw(st.integers(0, 2))):
            ballot += 64
            url = draw(st.sampled_from(["http://h1:8081", "http://h2:8081"]))
            since = f"2026-11-26 12:00:{draw(st.integers(0, 3)):02d}"
            out.append((f"node/{node}", ballot, {"node_url": url, "node_id": node,
                                                  "status": draw(st.sampled_from(["healthy",
                                                                                  "down"])),
                                                  "version": "1", "since": since}))
    for n in range(draw(st.integers(1, 6))):
        vid = draw(st.sampled_from(VIDEOS))
        seq = draw(st.integers(0, 2))  # collisions at one (video, sequence) on purpose
        ballot += 64
        cid = f"{vid}-chunk-{n:03d}"
        out.append((f"chunk/{cid}", ballot, chunk(cid, vid, seq, committed_ns=draw(
            st.integers(0, 5)))))
    return out


def learn_in_order(db: MetadataDB, history: list[tuple[str, int, dict[str, Any]]]) -> None:
    for key, ballot, value in history:
        db.persist({}, [(key, ballot, value)])


def tables(db: MetadataDB) -> dict[str, Any]:
    return {
        "videos": db.query("SELECT * FROM videos ORDER BY video_id"),
        "chunks": db.query("SELECT * FROM chunks ORDER BY chunk_id"),
        "visible": db.query("SELECT chunk_id FROM visible_chunks ORDER BY chunk_id"),
        "replicas": db.query("SELECT * FROM chunk_replicas ORDER BY chunk_id, node_url"),
        "manifests": [db.chunks_of_video(v) for v in VIDEOS],
        "totals": [db.totals()],
        "nodes": db.query("SELECT node_url, node_id, status, version FROM storage_nodes"
                          " ORDER BY node_url"),
    }


@settings(max_examples=60, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_tables_do_not_depend_on_learn_order(
        history: list[tuple[str, int, dict[str, Any]]], rng: random.Random) -> None:
    in_order = MetadataDB(":memory:", synchronous="OFF")
    shuffled = MetadataDB(":memory:", synchronous="OFF")
    try:
        learn_in_order(in_order, history)
        mixed = list(history)
        rng.shuffle(mixed)
        learn_in_order(shuffled, mixed)
        assert tables(shuffled) == tables(in_order)
    finally:
        in_order.close()
        shuffled.close()


def test_the_newest_commit_at_a_sequence_number_is_the_one_listed(tmp_path: Path) -> None:
    db = MetadataDB(tmp_path / "m.db", synchronous="OFF")
    try:
        learn_in_order(db, [
            ("chunk/va-chunk-001", 200, chunk("va-chunk-001", "va", 0, committed_ns=20)),
            ("chunk/va-chunk-000", 100, chunk("va-chunk-000", "va", 0, committed_ns=10)),
            ("video/va", 50, video("va")),
        ])
        assert [c["chunk_id"] for c in db.chunks_of_video("va")] == ["va-chunk-001"]
        assert db.video("va") is not None
        assert db.video("va")["total_chunks"] == 1  # type: ignore[index]
        learn_in_order(db, [("video/va", 300, video("va", removed=True))])
        assert db.video("va") is None
        assert db.chunks_of_video("va") == []
        assert db.totals()["total_chunks"] == 0
    finally:
        db.close()


def test_a_value_that_cannot_be_stored_is_skipped_not_fatal(tmp_path: Path) -> None:
    db = MetadataDB(tmp_path / "m.db", synchronous="OFF")
    try:
        bad = chunk("va-chunk-000", "va", 0, committed_ns=1)
        bad["fragments"] = [["not", "an", "object"]]
        bad["replicas"] = ["http://n1:8081"]
        db.persist({}, [("video/va", 10, video("va")), ("chunk/va-chunk-000", 20, bad),
                        ("video/vb", 30, video("vb"))])
        assert db.video("va") is not None
        assert db.video("vb") is not None  # the rest of the batch is applied
        assert db.query("SELECT * FROM chunks") == []  # the bad value's rows are rolled back
        assert db.query("SELECT * FROM chunk_replicas") == []
        assert db.learned_value("chunk/va-chunk-000") == (20, bad)  # still learned
    finally:
        db.close()
