"""The superblock store: durability, recovery, tombstones, compaction helpers."""

from __future__ import annotations

import gc
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest

from vstack import fsio
from vstack.records import ALIGN, HEADER_SIZE, record_length
from vstack.store import Busy, PendingWrite, SuperblockStore

from .crashfs import RecordingFS, crash_states, materialize


def commit(store: SuperblockStore, *pws: PendingWrite) -> None:
    for pw in pws:
        store.write(pw)
        store.mark_written(pw)
    batch = store.sync_batch()
    assert batch is not None
    store.fsync_batch(batch)
    store.publish(batch)


def put(store: SuperblockStore, key: bytes, data: bytes) -> None:
    commit(store, store.reserve_put(key, data))


def read(store: SuperblockStore, key: bytes) -> bytes | None:
    loc = store.lookup(key)
    if loc is None or loc.quarantined:
        return None
    with store.reading(loc) as fd:
        return store.read_verified(fd, loc)


def test_put_read_delete_and_recover(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=1 << 20)
    blobs = {f"c{i}".encode(): os.urandom(1000 * i + 1) for i in range(20)}
    for k, v in blobs.items():
        put(store, k, v)
    loc = store.lookup(b"c3")
    assert loc is not None
    commit(store, store.reserve_delete(loc))
    del blobs[b"c3"]
    assert all(read(store, k) == v for k, v in blobs.items())
    assert store.lookup(b"c3") is None
    store.close()
    for checkpoint in (False, True):
        again = SuperblockStore.open(tmp_path, max_superblock_size=1 << 20)
        assert again.recovery["checkpoint_loaded"] is checkpoint
        assert all(read(again, k) == v for k, v in blobs.items())
        assert again.lookup(b"c3") is None
        again.checkpoint()
        again.close()


def test_superblocks_rotate_at_the_size_limit(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=64 * 1024)
    for i in range(10):
        put(store, f"k{i}".encode(), b"x" * 20_000)
    files = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert len(files) >= 4
    assert all(p.stat().st_size <= 64 * 1024 for p in (tmp_path / "data").iterdir())


def test_torn_tail_is_cut_and_unacknowledged_write_invisible(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=1 << 30)
    put(store, b"good", b"g" * 5000)
    pw = store.reserve_put(b"torn", b"t" * 5000)
    store.write(pw)  # written but never fsynced/acknowledged; now tear it
    path = tmp_path / "data" / "superblock_0.dat"
    store.close()
    with open(path, "r+b") as f:
        f.truncate(pw.offset + HEADER_SIZE + 100)
    again = SuperblockStore.open(tmp_path, max_superblock_size=1 << 30)
    assert read(again, b"good") == b"g" * 5000
    assert again.lookup(b"torn") is None
    assert path.stat().st_size == record_length(5000)  # the torn tail is gone
    put(again, b"after", b"a" * 10)
    assert read(again, b"after") == b"a" * 10


def test_a_torn_record_does_not_hide_the_records_after_it(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=1 << 30)
    first = store.reserve_put(b"first", b"1" * 3000)
    second = store.reserve_put(b"second", b"2" * 3000)
    # Group commit: "second" may not be acknowledged while "first" is unwritten.
    store.write(second)
    store.mark_written(second)
    assert store.sync_batch() is None
    store.write(first)
    store.mark_written(first)
    batch = store.sync_batch()
    assert batch is not None
    assert [p.key for p in batch.writes[0]] == [b"first", b"second"]
    store.fsync_batch(batch)
    store.publish(batch)
    store.close()
    # Damage "first" in place: the scan must resynchronise and keep "second".
    path = tmp_path / "data" / "superblock_0.dat"
    with open(path, "r+b") as f:
        f.seek(first.offset + HEADER_SIZE + 10)
        f.write(b"X")
    again = SuperblockStore.open(tmp_path, max_superblock_size=1 << 30)
    assert again.lookup(b"first") is None
    assert read(again, b"second") == b"2" * 3000
    assert again.recovery["bytes_skipped"] == first.length


def test_writes_of_the_same_key_are_serialised(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=1 << 30)
    pw = store.reserve_put(b"k", b"v")
    with pytest.raises(Busy) as info:
        store.reserve_put(b"k", b"v")
    assert info.value.pending is pw


def test_flipped_byte_is_detected_on_verified_read(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=1 << 30)
    put(store, b"k", b"abc" * 1000)
    loc = store.lookup(b"k")
    assert loc is not None
    with open(tmp_path / "data" / "superblock_0.dat", "r+b") as f:
        f.seek(loc.data_offset + 1234)
        f.write(b"\xff")
    with store.reading(loc) as fd:
        assert store.read_verified(fd, loc) is None
    store.quarantine(loc, "test")
    assert "k" in store.quarantined
    assert b"k" not in store
    # A fresh PUT of the right bytes heals it.
    put(store, b"k", b"abc" * 1000)
    assert read(store, b"k") == b"abc" * 1000
    assert "k" not in store.quarantined


def test_delete_then_put_again_and_recover_in_order(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=8 * ALIGN)
    put(store, b"k", b"old")
    loc = store.lookup(b"k")
    assert loc is not None
    commit(store, store.reserve_delete(loc))
    put(store, b"k", b"new")
    store.close()
    again = SuperblockStore.open(tmp_path, max_superblock_size=8 * ALIGN)
    assert read(again, b"k") == b"new"


def test_compaction_helpers_keep_needed_tombstones(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=4 * ALIGN)
    put(store, b"a", b"a" * 100)  # superblock 0
    put(store, b"b", b"b" * 100)
    loc = store.lookup(b"a")
    assert loc is not None
    commit(store, store.reserve_delete(loc))  # tombstone in sb 0 targets sb 0: not needed
    put(store, b"c", b"c" * 100)
    put(store, b"d", b"d" * 100)  # rotates
    locc = store.lookup(b"c")
    assert locc is not None
    commit(store, store.reserve_delete(locc))
    by_sb = {u[0]: u for u in store.superblock_usage()}
    assert len(by_sb) >= 2
    fd, size = store.superblock_fd(locc.sb + 1)
    carried = store.tombstones_to_carry(fd, locc.sb + 1, size)
    assert [t.key for t in carried] == [b"c"]


@pytest.mark.parametrize("checkpoint_before_crash", [False, True])
def test_crash_in_the_middle_of_compaction(tmp_path: Path, checkpoint_before_crash: bool) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=4 * ALIGN)
    for k in (b"a", b"b", b"c"):
        put(store, k, k * 500)
    loc_b = store.lookup(b"b")
    assert loc_b is not None
    commit(store, store.reserve_delete(loc_b))
    put(store, b"d", b"d" * 500)
    old_sb = store.lookup(b"a").sb  # type: ignore[union-attr]
    # Compaction copies the live records forward, then "crashes" before the
    # old superblock is retired and unlinked.
    for loc in store.live_records(old_sb):
        rec = store.header(loc)
        with store.reading(loc) as fd:
            data = store.read_verified(fd, loc)
        assert rec is not None
        assert data is not None
        commit(store, store.reserve_copy(rec, data))
    assert {store.lookup(k).sb for k in (b"a", b"c")} != {old_sb}  # type: ignore[union-attr]
    if checkpoint_before_crash:
        store.checkpoint()
    store.close()
    again = SuperblockStore.open(tmp_path, max_superblock_size=4 * ALIGN)
    assert {k: read(again, k) for k in (b"a", b"b", b"c", b"d")} == {
        b"a": b"a" * 500, b"b": None, b"c": b"c" * 500, b"d": b"d" * 500}
    assert len(again.index) == 3


def test_a_dropped_quarantined_chunk_is_no_longer_counted(tmp_path: Path) -> None:
    store = SuperblockStore.open(tmp_path, max_superblock_size=1 << 20)
    try:
        put(store, b"good", b"g" * 100)
        put(store, b"bad", b"b" * 100)
        loc = store.lookup(b"bad")
        assert loc is not None
        store.quarantine(loc, "test")
        assert store.statistics().chunk_count == 1
        loc = store.lookup(b"bad")
        assert loc is not None
        store.drop(loc)
        assert store.lookup(b"bad") is None
        assert "bad" not in store.quarantined
        assert store.statistics().chunk_count == 1  # the good one, not 1 - 1
    finally:
        store.close()


def test_a_retired_superblock_left_on_disk_is_removed_before_the_scan(tmp_path: Path) -> None:
    """Compaction retired a superblock and checkpointed, but its unlink never happened
    (a crash, a cancelled or failed unlink): its deleted chunks must not come back."""
    store = SuperblockStore.open(tmp_path, max_superblock_size=2 * ALIGN)
    put(store, b"gone", b"g" * 500)  # superblock 0 (two records fit in one)
    put(store, b"also", b"a" * 500)
    put(store, b"keep", b"k" * 500)  # superblock 1
    for key in (b"gone", b"also"):
        loc = store.lookup(key)
        assert loc is not None
        commit(store, store.reserve_delete(loc))  # tombstones in a later superblock
    old = 0
    assert store.lookup(b"keep").sb != old  # type: ignore[union-attr]
    assert store.live_records(old) == []
    path = store.retire(old)
    store.checkpoint()  # records the retirement; the unlink is "lost"
    store.close()
    assert path.exists()
    again = SuperblockStore.open(tmp_path, max_superblock_size=2 * ALIGN)
    try:
        assert not path.exists()
        assert again.recovery["retired_removed"] == [old]
        assert again.lookup(b"gone") is None
        assert again.lookup(b"also") is None
        assert read(again, b"keep") == b"k" * 500
        again.checkpoint()
    finally:
        again.close()
    third = SuperblockStore.open(tmp_path, max_superblock_size=2 * ALIGN)  # and it stays so
    assert third.recovery["retired_removed"] == []
    assert third.lookup(b"gone") is None
    third.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("damage", ["empty", "truncated", "not a zip", "flipped byte",
                                    "an .npy array"])
def test_an_unreadable_checkpoint_means_a_full_scan(tmp_path: Path, damage: str) -> None:
    """Whatever is wrong with the checkpoint file, the store starts (from the superblocks
    alone) and no descriptor is left open."""
    store = SuperblockStore.open(tmp_path, max_superblock_size=1 << 20)
    blobs = {f"c{i}".encode(): os.urandom(3000 + i) for i in range(8)}
    for k, v in blobs.items():
        put(store, k, v)
    store.checkpoint()
    store.close()
    path = tmp_path / "index" / "checkpoint.npz"
    good = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "not a zip":
        path.write_bytes(b"not a checkpoint at all" * 100)
    elif damage == "flipped byte":
        path.write_bytes(good[:200] + bytes([good[200] ^ 0xFF]) + good[201:])
    else:
        np.save(path.with_suffix(".npy"), np.arange(10))
        path.with_suffix(".npy").replace(path)
    before = _fds()
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")  # ResourceWarning: a file object closed by the collector
        again = SuperblockStore.open(tmp_path, max_superblock_size=1 << 20)
        again.close()
        gc.collect()
    assert [str(w.message) for w in warned] == []
    assert _fds() == before, "a descriptor was left open"
    again = SuperblockStore.open(tmp_path, max_superblock_size=1 << 20)
    try:
        assert again.recovery["checkpoint_loaded"] is False
        assert all(read(again, k) == v for k, v in blobs.items())
        again.checkpoint()  # and the next start uses a good one again
    finally:
        again.close()
    third = SuperblockStore.open(tmp_path, max_superblock_size=1 << 20)
    assert third.recovery["checkpoint_loaded"] is True
    third.close()


# -- what recovery serves is durable (a SIGKILL keeps the page cache; a power loss does not) ----


def _after_power_loss(rec: RecordingFS, dest: Path) -> SuperblockStore:
    """The store as a power loss now would leave it: only what was synced."""
    state = crash_states(rec.log, rng=random.Random(0), mixtures=0)[0]
    assert state.name == "only what was synced"
    dest.mkdir()
    materialize(state.contents(), dest)
    return SuperblockStore.open(dest, max_superblock_size=1 << 20)


def test_a_record_found_only_in_the_page_cache_is_synced_before_it_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed after writing a PUT, before its fdatasync: the restart finds the record and
    answers the client's retry from it, so it must be on the disk by then."""
    root = tmp_path / "node"
    root.mkdir()
    rec = RecordingFS(root)
    monkeypatch.setattr(fsio, "fs", rec)
    store = SuperblockStore.open(root, max_superblock_size=1 << 20)
    put(store, b"acked", b"a" * 3000)
    store.checkpoint()
    store.write(store.reserve_put(b"retried", b"r" * 5000))  # never synced
    store.close()  # SIGKILL
    store = SuperblockStore.open(root, max_superblock_size=1 << 20)
    assert read(store, b"retried") == b"r" * 5000  # served: a retried PUT is answered 200
    store.checkpoint()  # and counted below the checkpoint's watermark
    store.close()
    monkeypatch.setattr(fsio, "fs", fsio.OsFileSystem())
    after = _after_power_loss(rec, tmp_path / "after")
    try:
        assert read(after, b"acked") == b"a" * 3000
        assert read(after, b"retried") == b"r" * 5000
        assert all(after.location_of_row(row) is not None for row in range(after.rows()))
    finally:
        after.close()


def test_a_superblock_whose_name_was_never_synced_is_synced_at_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed inside ``SuperblockFiles.create``, between creating the next superblock
    file and syncing its directory: the restart makes it the active superblock."""
    root = tmp_path / "node"
    root.mkdir()
    rec = RecordingFS(root)
    monkeypatch.setattr(fsio, "fs", rec)
    store = SuperblockStore.open(root, max_superblock_size=1 << 20)
    put(store, b"first", b"f" * 3000)
    fd = fsio.fs.open(root / "data" / "superblock_1.dat", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    fsio.fs.close(fd)
    store.close()  # SIGKILL before the fsync of the directory
    store = SuperblockStore.open(root, max_superblock_size=1 << 20)
    put(store, b"second", b"s" * 3000)  # acknowledged
    assert store.lookup(b"second").sb == 1  # type: ignore[union-attr]
    store.close()
    monkeypatch.setattr(fsio, "fs", fsio.OsFileSystem())
    after = _after_power_loss(rec, tmp_path / "after")
    try:
        assert read(after, b"first") == b"f" * 3000
        assert read(after, b"second") == b"s" * 3000
    finally:
        after.close()
