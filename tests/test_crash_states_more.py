"""More crash states: restarts that find unsynced work, writes in flight, no checkpoint.

The machinery of ``tests/test_crash_states.py`` (its explorer, its store run
and its checks: every acknowledged PUT present, no acknowledged DELETE
undone, nothing else indexed, the checkpoint readable), over more workloads:

* restarts after a process was killed with work only in the page cache. A
  PUT written but never fdatasynced was never acknowledged, but the restart
  finds it and serves it (a GET returns it, the client's retry is answered
  200), so from then on it counts as acknowledged and must survive a power
  loss. A superblock file created but its name never synced (killed inside
  ``SuperblockFiles.create``) becomes the active superblock, and the PUTs
  stored in it must survive too;
* checkpoints and compactions that start while PUTs are in flight, so that
  watermarks stop below writes not yet published;
* the main workload again with every crash state opened *without* its
  checkpoint: the full scan, the fallback for an unreadable checkpoint,
  must be as right (it relies on the tombstones compaction carries forward).

Each has planted bugs that it must catch, and the main workload one more:
a checkpoint renamed into place before it is fsynced.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio

from nodes.storage.jobs import compact_once
from vstack import fsio, recovery
from vstack.store import SuperblockStore
from vstack.superblock import Superblock

from .test_crash_states import Explorer, Step, StoreRun, read, run_store, store_script

Maybe = dict[bytes, tuple[bytes | None, ...]]


class MoreStoreRun(StoreRun):
    """:class:`StoreRun` with the steps of these workloads:

    * ``kill-mid-put name=size``: a PUT written, the process killed before its
      fdatasync, and restarted;
    * ``retry name``: the client of that PUT sends the same bytes again (200);
    * ``kill-mid-create``: the process killed between creating the next
      superblock file and syncing its directory, and restarted;
    * ``put+checkpoint name=size ...``, ``put+compact name=size ...``: PUTs,
      and a checkpoint or a compaction as soon as one of them is in flight.
    """

    def __init__(self, root: Path, nursery: trio.Nursery, explorer: Explorer) -> None:
        super().__init__(root, nursery, explorer)
        self.putting = 0

    async def act(self, kind: str, args: Step, maybe: Maybe) -> None:
        if kind == "kill-mid-put":
            await self._kill_mid_put(args[0], maybe)
        elif kind == "retry":
            status, _ = await self.node.put(args[0], self.model.acked[args[0].encode()])
            assert status == 200
        elif kind == "kill-mid-create":
            await self._kill_mid_create()
        elif kind in ("put+checkpoint", "put+compact"):
            async with trio.open_nursery() as nursery:
                self.start_puts(nursery, args, maybe)
                nursery.start_soon(self._while_writing, kind)
        else:
            await super().act(kind, args, maybe)

    def start_puts(self, nursery: trio.Nursery, args: Step, maybe: Maybe) -> None:
        self.putting += len(args)  # counted before any of them runs
        super().start_puts(nursery, args, maybe)

    async def _put(self, name: str, value: bytes) -> None:
        try:
            await super()._put(name, value)
        finally:
            self.putting -= 1

    async def _kill_mid_put(self, arg: str, maybe: Maybe) -> None:
        name, size = arg.split("=")
        key, value = name.encode(), self.new_value(name, int(size))
        store = self.node.store
        store.write(store.reserve_put(key, value))  # in the page cache, never fdatasynced
        await self.close(clean=False)
        await self.open()
        maybe[key] = (None, value)
        # Served now (a retried PUT is answered 200 from it): acknowledged after this step.
        assert read(self.node.store, key) == value

    async def _kill_mid_create(self) -> None:
        store = self.node.store
        new = 1 + max(sb_id for sb_id, _, _, active in store.superblock_usage() if active)
        fd = fsio.fs.open(store.data_dir / f"superblock_{new}.dat",
                          os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fsio.fs.close(fd)  # and killed before the fsync of the directory
        await self.close(clean=False)
        await self.open()
        assert [sb_id for sb_id, _, _, active in self.node.store.superblock_usage() if active] == [new]

    async def _while_writing(self, kind: str) -> None:
        while not self.node.store.statistics().pending_writes and self.putting:
            await trio.lowlevel.checkpoint()
        if self.node.store.statistics().pending_writes:
            self.explorer.count(f"{kind} with writes in flight")
        if kind == "put+checkpoint":
            await self.node.checkpoint()
        else:
            await compact_once(self.node)


def unsynced_script() -> list[Step]:
    """Restarts that find a PUT only in the page cache, or a superblock whose name is."""
    s: list[Step] = [("put", f"c{i}={4000 + 900 * i}") for i in range(4)]
    s += [("kill-mid-put", "u0=6000"), ("retry", "u0"), ("put", "c4=5000")]
    s += [("checkpoint",), ("kill-mid-put", "u1=3000"), ("delete", "c1"), ("retry", "u1")]
    s += [("kill-mid-create",), ("put", "c5=5000"), ("put", "c6=7000"), ("restart", "clean")]
    s += [("delete", "c0"), ("delete", "u0"), ("compact", "if any"), ("checkpoint",)]
    s += [("kill-mid-create",), ("kill-mid-put", "u0=2000"), ("put", "c7=3000")]
    return [*s, ("retry", "u0"), ("restart", "kill"), ("put", "c8=4000")]


def concurrent_script() -> list[Step]:
    """Checkpoints and a compaction while PUTs are in flight."""
    s: list[Step] = [("put", f"c{i}={5000 + 700 * i}") for i in range(6)]
    s += [("delete", "c1"), ("delete", "c2"), ("put+checkpoint", "d0=9000", "d1=7000", "d2=3000")]
    s += [("delete", "c0"), ("delete", "c3"), ("put+compact", "e0=8000", "e1=8000", "e2=3000")]
    s += [("put+checkpoint", "f0=9000", "f1=7000", "f2=3000"), ("delete", "d0")]
    return [*s, ("put+checkpoint", "g0=9000", "g1=9000"), ("restart", "kill"), ("put", "h0=100")]


# -- the tests ------------------------------------------------------------------------


async def test_restarts_that_find_unsynced_work_lose_nothing_served(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    explorer = await run_store(tmp_path, nursery, monkeypatch, script=unsynced_script,
                               runner=MoreStoreRun)
    print(f"{explorer.states} distinct crash states checked; {explorer.stats}")
    assert explorer.violations == []
    assert explorer.states > 100


async def test_checkpoints_and_compactions_with_writes_in_flight(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    explorer = await run_store(tmp_path, nursery, monkeypatch, script=concurrent_script,
                               runner=MoreStoreRun)
    print(f"{explorer.states} distinct crash states checked; {explorer.stats}")
    assert explorer.violations == []
    assert explorer.stats.get("put+checkpoint with writes in flight", 0) == 3
    assert explorer.stats.get("put+compact with writes in flight", 0) == 1


async def test_every_crash_state_without_its_checkpoint(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The full scan (an unreadable checkpoint's fallback) is as right as the checkpoint."""
    explorer = await run_store(tmp_path, nursery, monkeypatch, drop_checkpoint=True)
    print(f"{explorer.states} distinct crash states checked; {explorer.stats}")
    assert explorer.violations == []
    assert explorer.states > 300
    assert explorer.stats.get("torn record refused by its CRC", 0) > 0


# -- planted bugs: each must be caught ------------------------------------------------


def plant_recovery_syncs_no_superblock(mp: pytest.MonkeyPatch) -> None:
    """Recovery serves the records it found in the page cache without fdatasyncing them."""
    real = recovery._make_durable

    def planted(scanned: list[Superblock], data_dir: Path, index_dir: Path) -> None:
        real([], data_dir, index_dir)

    mp.setattr(recovery, "_make_durable", planted)


def plant_recovery_syncs_no_directory(mp: pytest.MonkeyPatch) -> None:
    """Recovery leaves a superblock's unsynced name unsynced (and makes it the active one)."""
    real = recovery._make_durable

    def planted(scanned: list[Superblock], data_dir: Path, index_dir: Path) -> None:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(fsio, "fsync_dir", lambda path: None)
            real(scanned, data_dir, index_dir)

    mp.setattr(recovery, "_make_durable", planted)


def plant_checkpoint_renamed_unsynced(mp: pytest.MonkeyPatch) -> None:
    """The checkpoint's temporary file is renamed into place before it is fsynced."""

    def write(index_dir: Path, snapshot: dict[str, npt.NDArray[Any]]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **snapshot)  # type: ignore[arg-type]
        path = index_dir / recovery.CHECKPOINT_NAME
        tmp = path.with_name(f".{path.name}.tmp")
        fd = fsio.fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fsio.fs.pwrite(fd, buf.getvalue(), 0)
        fsio.fs.close(fd)
        fsio.fs.replace(tmp, path)
        fsio.fsync_dir(index_dir)

    mp.setattr(recovery, "write_checkpoint", write)


def tombstone_script() -> list[Step]:
    """One at a time (no concurrency, so the same layout every run): ``a`` deleted while
    its record stays live-adjacent in an older superblock, the superblock holding its
    tombstone compacted away; only a carried tombstone keeps ``a`` deleted on a full scan."""
    return [("put", "a=5000"), ("put", "f1=8000"), ("put", "f2=8000"), ("put", "f3=8000"),
            ("delete", "a"), ("put", "g1=5000"), ("delete", "f3"), ("delete", "g1"),
            ("put", "h1=8000"), ("put", "h2=8000"), ("put", "h3=8000"), ("compact", "if any"),
            ("checkpoint",), ("restart", "clean"), ("compact", "if any"),
            ("restart", "kill")]


def plant_no_tombstone_carried(mp: pytest.MonkeyPatch) -> None:
    """Compaction drops the tombstones it should carry forward (only the full scan needs them)."""
    mp.setattr(SuperblockStore, "tombstones_to_carry", lambda self, fd, sb_id, size: [])


def plant_watermark_past_writes_in_flight(mp: pytest.MonkeyPatch) -> None:
    """A checkpoint's watermark covers writes not yet published (seen only with writes in flight)."""
    mp.setattr(Superblock, "watermark", lambda self: self.size)


@pytest.mark.parametrize(("plant", "script", "drop_checkpoint", "symptom"), [
    (plant_recovery_syncs_no_superblock, unsynced_script, False,
     "acknowledged PUT of u0 is missing"),
    (plant_recovery_syncs_no_directory, unsynced_script, False,
     "acknowledged PUT of c5 is missing"),
    (plant_checkpoint_renamed_unsynced, store_script, False, "the checkpoint is unreadable"),
    (plant_no_tombstone_carried, tombstone_script, True,
     "is back after its DELETE was acknowledged"),
    (plant_watermark_past_writes_in_flight, concurrent_script, False, "acknowledged PUT of"),
])
async def test_a_planted_bug_is_caught(
    plant: Callable[[pytest.MonkeyPatch], None], script: Callable[[], list[Step]],
    drop_checkpoint: bool, symptom: str, tmp_path: Path, nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plant(monkeypatch)
    explorer = await run_store(tmp_path, nursery, monkeypatch, stop_early=True, script=script,
                               runner=MoreStoreRun, drop_checkpoint=drop_checkpoint)
    print(explorer.violations[:3])
    assert explorer.violations, "the simulator missed the planted bug"
    assert any(symptom in v for v in explorer.violations), explorer.violations[:3]


async def test_deletes_stay_deleted_on_a_full_scan_after_the_tombstone_moved(
        tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real code on the script the tombstone plant is caught with: no violation."""
    explorer = await run_store(tmp_path, nursery, monkeypatch, script=tombstone_script,
                               runner=MoreStoreRun, drop_checkpoint=True)
    assert explorer.violations == []
    assert explorer.states > 50
