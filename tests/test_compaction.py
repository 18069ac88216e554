"""Online compaction: garbage is reclaimed while reads go on, and nothing is lost."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from nodes.net.frame_client import open_frame_client
from nodes.net.http_client import request
from nodes.storage.jobs import compact, compact_once
from protocol.errors import ProtocolError
from vstack.records import ALIGN, ScanResult, scan


async def test_compaction_under_concurrent_reads_loses_nothing(
    start_node: Callable[..., Any],
) -> None:
    node, stop = await start_node(max_superblock_size=60 * ALIGN)
    keep = {f"keep-{i:03d}": os.urandom(20_000 + i) for i in range(40)}
    drop = {f"drop-{i:03d}": os.urandom(20_000 + i) for i in range(60)}
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        for i in range(60):  # interleaved, so superblocks hold live and dead chunks
            await client.put(f"drop-{i:03d}", drop[f"drop-{i:03d}"])
            if i < 40:
                await client.put(f"keep-{i:03d}", keep[f"keep-{i:03d}"])
        for k in drop:
            await client.delete(k)
        before = node.store.statistics()
        assert before.garbage_bytes > 0
        assert before.superblocks >= 4
        files_before = set(os.listdir(node.store.data_dir))
        where_before = {k: node.store.lookup(k.encode()).sb for k in keep}

        errors: list[str] = []
        reads = 0
        done = trio.Event()

        async def reader(n: int) -> None:
            nonlocal reads
            keys = sorted(keep)
            i = n
            while not done.is_set():
                k = keys[i % len(keys)]
                try:
                    got = await client.get(k) if n % 2 else (
                        await request("GET", f"http://127.0.0.1:{node.ports.http}/chunk/{k}")).body
                except Exception as exc:  # any failure is a lost read
                    errors.append(f"{k}: {exc!r}")
                else:
                    if got != keep[k]:
                        errors.append(f"{k}: wrong bytes")
                reads += 1
                i += 7

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(reader, n)
            compacted = await compact_once(node)
            await trio.sleep(0.05)
            done.set()
        assert compacted, "some superblock passed the garbage threshold"
        assert errors == []
        assert reads > 0
        after = node.store.statistics()
        moved = [k for k in keep if node.store.lookup(k.encode()).sb != where_before[k]]
        assert moved, "live chunks were copied out of the compacted superblocks"
        assert after.garbage_bytes < before.garbage_bytes
        assert after.chunk_count == len(keep)
        gone = files_before - set(os.listdir(node.store.data_dir))
        assert gone == {f"superblock_{i}.dat" for i in compacted}
        for k in drop:
            assert (await request("GET", f"http://127.0.0.1:{node.ports.http}/chunk/{k}")).status == 404
    await stop()
    # After a restart (checkpoint) and after a rebuild from the files alone, the same holds.
    for wipe_checkpoint in (False, True):
        if wipe_checkpoint:
            os.unlink(node.settings.data_dir / "index" / "checkpoint.npz")
        node2, stop2 = await start_node(max_superblock_size=60 * ALIGN)
        async with open_frame_client("127.0.0.1", node2.ports.binary) as client:
            for k, v in keep.items():
                assert await client.get(k) == v
            for k in drop:
                with pytest.raises(ProtocolError) as info:
                    await client.head(k)
                assert info.value.status == 404, f"{k} came back after compaction"
        assert node2.chunk_count() == len(keep)
        await stop2()


def data_records_on_disk(data_dir: Path, key: bytes) -> int:
    """Records holding ``key``'s bytes (not tombstones), in every superblock file left."""
    count = 0
    for path in sorted(data_dir.glob("superblock_*.dat")):
        sb_id = int(path.stem.split("_")[1])  # records name their own superblock
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            count += sum(1 for r in scan(fd, sb_id, 0, size, ScanResult())
                         if r.key == key and not r.tombstone)
        finally:
            os.close(fd)
    return count


async def test_a_chunk_deleted_while_compaction_reads_it_stays_deleted(
    start_node: Callable[..., Any],
) -> None:
    """A DELETE that completes while compaction is reading the chunk it is about to
    move: the move must not resurrect it, now or after a restart."""
    node, stop = await start_node(max_superblock_size=60 * ALIGN)
    victim = "victim-000"
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        await client.put(victim, os.urandom(20_000))
        for i in range(8):  # garbage in the same superblock, so it is compacted
            await client.put(f"junk-{i}", os.urandom(20_000))
        for i in range(8):
            await client.delete(f"junk-{i}")
        for i in range(12):  # fill up the superblock so it is sealed (and a candidate)
            await client.put(f"fill-{i}", os.urandom(20_000))
    store = node.store
    where = store.lookup(victim.encode())
    assert where is not None
    assert where.sb in store.compaction_candidates(0.3)
    real_read = store.read_verified
    deleted: list[bool] = []

    def read_and_race(fd: int, loc: Any) -> bytes | None:
        data: bytes | None = real_read(fd, loc)
        if loc.key == victim.encode() and not deleted:
            trio.from_thread.run(node.delete, victim)  # lands while the copy is being made
            deleted.append(True)
        return data

    store.read_verified = read_and_race
    await compact_once(node)
    assert deleted, "compaction did not read the chunk"
    assert store.lookup(victim.encode()) is None
    # Its superblock is gone, and no copy of it was written after its tombstone:
    # once the tombstone is compacted away, a full rescan would bring one back.
    assert data_records_on_disk(store.data_dir, victim.encode()) == 0
    await stop()
    node, _ = await start_node(max_superblock_size=60 * ALIGN)
    assert node.store.lookup(victim.encode()) is None
    res = await request("GET", f"http://127.0.0.1:{node.ports.http}/chunk/{victim}")
    assert res.status == 404


async def test_a_compaction_cancelled_while_it_checkpoints_still_removes_its_file(
    start_node: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM while the compactor writes its checkpoint: the checkpoint and the
    unlink are one shielded step, so the retired file does not outlive the shutdown."""
    node, stop = await start_node(max_superblock_size=60 * ALIGN)
    async with open_frame_client("127.0.0.1", node.ports.binary) as client:
        for i in range(8):
            await client.put(f"junk-{i}", os.urandom(20_000))
        for i in range(12):
            await client.put(f"fill-{i}", os.urandom(20_000))
        for i in range(8):
            await client.delete(f"junk-{i}")
    store = node.store
    [sb_id, *_] = store.compaction_candidates(0.3)
    path = store.data_dir / f"superblock_{sb_id}.dat"
    real_write = store.write_checkpoint
    with trio.CancelScope() as scope:

        def write_while_cancelled(snapshot: Any) -> None:
            trio.from_thread.run_sync(scope.cancel)  # the shutdown lands mid-checkpoint
            real_write(snapshot)

        monkeypatch.setattr(store, "write_checkpoint", write_while_cancelled)
        await compact(node, sb_id)
    monkeypatch.setattr(store, "write_checkpoint", real_write)
    assert scope.cancel_called
    assert not path.exists(), "the retired superblock outlived the cancellation"
    await stop()
    node, _ = await start_node(max_superblock_size=60 * ALIGN)
    for i in range(8):
        res = await request("GET", f"http://127.0.0.1:{node.ports.http}/chunk/junk-{i}")
        assert res.status == 404
    assert node.store.recovery["retired_removed"] == []
