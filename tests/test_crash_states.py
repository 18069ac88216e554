"""Crash consistency beyond SIGKILL: every state a power loss could leave, after every operation.

A SIGKILL keeps the page cache, so it never shows a missing fsync. Here the
real store (:class:`~vstack.store.SuperblockStore` under a
:class:`~nodes.storage.node.StorageNode`, no network) and the real upload
session store run a scripted workload with their file-system calls recorded
(:mod:`tests.crashfs`, through the :data:`vstack.fsio.fs` seam). After each
operation, the states a crash during it could leave (only what was synced,
everything written, unsynced names lost, unsynced data lost, unsynced
writes torn, and random mixtures; at a bounded number of points, from a
fixed seed) are written into fresh directories and opened, and each must
show:

* every acknowledged PUT, with its bytes; no acknowledged DELETE undone;
* nothing else indexed, and every indexed chunk passing its CRC;
* the checkpoint, if the state has one, loads (it is replaced atomically);
* every saved upload session as saved: one reported ``completed`` stays so.

The operation in flight at the crash may have happened or not, never
half. Each planted bug (a missing directory fsync of a new superblock, the
tail scan without its data CRC check, a missing directory fsync of a
session file, new directories not synced into their parent, no record of
retired superblocks) must make it fail. More workloads over the same
machinery (restarts that find unsynced work, checkpoints and compactions
with writes in flight, every state again without its checkpoint) are in
``tests/test_crash_states_more.py``.
"""

from __future__ import annotations

import random
import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from nodes.storage.jobs import compact_once
from nodes.storage.node import StorageNode
from protocol.frames import crc32c
from vstack import fsio, records, recovery
from vstack.records import ALIGN
from vstack.settings import StorageSettings
from vstack.store import SuperblockStore
from vstack.superblock import SuperblockFiles
from vstack.upload_session import Session, SessionStore

from .crashfs import RecordingFS, crash_points, crash_states, files_under, fingerprint, materialize

SEED: Final = 15
MAX_SB: Final = 6 * ALIGN  # a superblock holds two or three chunks: rotation, then compaction
POINTS_PER_OPERATION: Final = 16
MIXTURES: Final = 6

CHECKPOINT: Final = f"index/{recovery.CHECKPOINT_NAME}"

Step = tuple[str, ...]
Check = Callable[[Path], list[str]]


# -- exploring the crash states of one operation ------------------------------------


@dataclass
class Explorer:
    """Builds, opens and checks the crash states of each operation in turn."""

    rec: RecordingFS
    scratch: Path
    stop_early: bool = False
    #: Open every state without its checkpoint too: the full-scan fallback must be as right.
    drop_checkpoint: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    violations: list[str] = field(default_factory=list)
    states: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def explore(self, label: str, start: int, check: Check) -> None:
        """Check every distinct crash state of the operation that logged ``rec.log[start:]``."""
        log = self.rec.log
        everything = crash_states(log, rng=random.Random(0), mixtures=0)[1].contents()
        assert everything == dict(files_under(self.rec.root)), "the recorder lost a call"
        seen: set[bytes] = set()
        for point in crash_points(log, start, rng=self.rng, limit=POINTS_PER_OPERATION):
            for state in crash_states(log[:point], rng=self.rng, mixtures=MIXTURES):
                contents = state.contents()
                if self.drop_checkpoint:
                    contents.pop(CHECKPOINT, None)
                fp = fingerprint(contents)
                if fp in seen:
                    continue
                seen.add(fp)
                self.states += 1
                dest = self.scratch / f"state-{self.states}"
                dest.mkdir()
                materialize(contents, dest)
                for problem in check(dest):
                    self.violations.append(f"{label}, crash at call {point} of {len(log)} "
                                           f"({state.name}): {problem}")
                shutil.rmtree(dest)
                if self.stop_early and self.violations:
                    return

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1


# -- the store --------------------------------------------------------------------------


def store_script() -> list[Step]:
    """PUTs, DELETEs, checkpoints, compactions and restarts (clean and killed).

    Chunks take two or three pages each, so a torn write can leave a sound
    header over data that is not there; the first compaction retires a
    superblock whose chunks were all deleted, with their tombstones in later
    superblocks that its checkpoint covers.
    """
    s: list[Step] = [("put", f"c{i}={5000 + 700 * i}") for i in range(6)]
    s += [("delete", "c1"), ("delete", "c2"), ("checkpoint",)]
    s += [("put", "c6=6000"), ("put", "c7=9000"), ("delete", "c0"), ("delete", "c3")]
    s += [("compact",), ("restart", "clean")]
    s += [("put", "c8=4500"), ("delete", "c6"), ("put", "c1=7000"), ("restart", "kill")]
    s += [("delete", "c5"), ("compact",), ("put", "c9=8000"), ("delete", "c7")]
    s += [("checkpoint",), ("compact",), ("restart", "kill"), ("put", "c10=5000")]
    return s + random_steps(random.Random(SEED), live={"c1", "c4", "c8", "c9", "c10"}, count=40)


def random_steps(rng: random.Random, *, live: set[str], count: int) -> list[Step]:
    """More of the same, drawn from a seeded generator; some PUTs concurrent (group commit)."""
    steps: list[Step] = []
    n = 100
    for _ in range(count):
        roll = rng.random()
        if roll < 0.35 or len(live) < 3:
            names = [f"r{n + i}" for i in range(rng.choice((1, 1, 3)))]
            n += len(names)
            steps.append(("put", *(f"{name}={rng.randint(200, 11000)}" for name in names)))
            live.update(names)
        elif roll < 0.7:
            name = rng.choice(sorted(live))
            live.discard(name)
            steps.append(("delete", name))
        elif roll < 0.8:
            steps.append(("checkpoint",))
        elif roll < 0.9:
            steps.append(("compact", "if any"))
        else:
            steps.append(("restart", rng.choice(("clean", "kill"))))
    return steps


@dataclass
class StoreModel:
    """What the store acknowledged: what every crash state must show."""

    acked: dict[bytes, bytes] = field(default_factory=dict)
    deleted: set[bytes] = field(default_factory=set)


Outcome = bytes | str | None  # the bytes, None (absent), or why they cannot be read


def read(store: SuperblockStore, key: bytes) -> Outcome:
    loc = store.lookup(key)
    if loc is None:
        return None
    if loc.quarantined:
        return "quarantined"
    with store.reading(loc) as fd:
        data = store.read_verified(fd, loc)
    return "indexed but failing its CRC" if data is None else data


def store_problems(store: SuperblockStore, model: StoreModel,
                   maybe: dict[bytes, tuple[bytes | None, ...]]) -> Iterator[str]:
    for key in sorted(model.acked.keys() | model.deleted | maybe.keys()):
        allowed = maybe.get(key) or (model.acked.get(key),)
        got = read(store, key)
        if got in allowed:
            continue
        name = key.decode()
        if isinstance(got, str):
            yield f"{name} is {got}"
        elif got is None:
            yield f"acknowledged PUT of {name} is missing"
        elif None in allowed and len(allowed) == 1:
            yield f"{name} is back after its DELETE was acknowledged"
        else:
            yield f"{name} has the wrong bytes"
    keys = set()
    for row in range(store.rows()):
        loc = store.location_of_row(row)
        if loc is None:
            yield f"index row {row} points at no record"
            continue
        keys.add(loc.key)
        if loc.key not in model.acked and loc.key not in maybe and loc.key not in model.deleted:
            yield f"{loc.key.decode()} was never written but is indexed"
    if len(keys) != store.rows():
        yield "a chunk is indexed twice"
    if store.quarantined:
        yield f"chunks quarantined: {sorted(store.quarantined)}"


class StoreRun:
    """The real store under a storage node, no network, driven step by step."""

    def __init__(self, root: Path, nursery: trio.Nursery, explorer: Explorer) -> None:
        self.root = root
        self.nursery = nursery
        self.explorer = explorer
        self.model = StoreModel()
        self.versions: dict[str, int] = {}  # PUTs of each name so far: its bytes differ each time
        self.settings = StorageSettings(data_dir=root, max_superblock_size=MAX_SB, scrub_rate_bytes=0,
                                        compaction_garbage_ratio=0.5)

    async def open(self) -> None:
        store = SuperblockStore.open(self.root, max_superblock_size=MAX_SB)
        self.node = StorageNode(self.settings, store)
        self.scope = trio.CancelScope()
        self.nursery.start_soon(self._commit, self.node, self.scope)

    @staticmethod
    async def _commit(node: StorageNode, scope: trio.CancelScope) -> None:
        with scope:
            await node.run_committer()

    async def close(self, *, clean: bool) -> None:
        if clean:  # what the service does on SIGTERM
            await self.node.checkpoint()
        self.scope.cancel()
        self.node.store.close()

    async def run(self, step: Step) -> None:
        """Do ``step``, then check every crash state it could have left."""
        model = self.model
        start = len(self.explorer.rec.log)
        maybe: dict[bytes, tuple[bytes | None, ...]] = {}
        await self.act(step[0], step[1:], maybe)
        self.explorer.explore(" ".join(step), start, lambda dest: self.check(dest, maybe))
        for key, (_, after) in maybe.items():  # acknowledged now
            if after is None:
                del model.acked[key]
                model.deleted.add(key)
            else:
                model.acked[key] = after
                model.deleted.discard(key)

    async def act(self, kind: str, args: Step, maybe: dict[bytes, tuple[bytes | None, ...]]) -> None:
        """Do one step; ``maybe`` gets, per key it changes, its value before and after."""
        if kind == "put":  # name=size ...: all at once
            async with trio.open_nursery() as nursery:
                self.start_puts(nursery, args, maybe)
        elif kind == "delete":
            key = args[0].encode()
            maybe[key] = (self.model.acked[key], None)
            await self.node.delete(args[0])
        elif kind == "checkpoint":
            await self.node.checkpoint()
        elif kind == "compact":
            done = await compact_once(self.node)
            assert done or args, "the script leaves something to compact"
        else:
            assert kind == "restart", kind
            await self.close(clean=args[0] == "clean")
            await self.open()

    def new_value(self, name: str, size: int) -> bytes:
        """The bytes of the next PUT of ``name`` (different each time)."""
        self.versions[name] = self.versions.get(name, 0) + 1
        return random.Random(f"{name}/{self.versions[name]}").randbytes(size)

    def start_puts(self, nursery: trio.Nursery, args: Step,
                   maybe: dict[bytes, tuple[bytes | None, ...]]) -> None:
        for arg in args:
            name, size = arg.split("=")
            value = self.new_value(name, int(size))
            maybe[name.encode()] = (None, value)
            nursery.start_soon(self._put, name, value)

    async def _put(self, name: str, value: bytes) -> None:
        # Half the names as the binary protocol sends them (its CRC32C checked by the
        # transport: hashed while another thread writes, the header sealed after),
        # half as HTTP does (hashed first): both paths are crash-modelled.
        crc = crc32c(value) if zlib.crc32(name.encode()) % 2 else None
        assert (await self.node.put(name, value, crc=crc))[0] == 201

    def check(self, dest: Path, maybe: dict[bytes, tuple[bytes | None, ...]]) -> list[str]:
        try:
            store = SuperblockStore.open(dest, max_superblock_size=MAX_SB)
        except Exception as exc:
            return [f"the store does not open: {exc!r}"]
        try:
            if store.recovery["retired_removed"]:
                self.explorer.count("retired superblock removed by recovery")
            if store.recovery["damaged_records"]:
                self.explorer.count("torn record refused by its CRC")
            problems = list(store_problems(store, self.model, maybe))
            if (dest / CHECKPOINT).exists() and not store.recovery["checkpoint_loaded"]:
                problems.append("the checkpoint is unreadable")  # it is replaced atomically
            return problems
        finally:
            store.close()


async def run_store(tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, *,
                    stop_early: bool = False, script: Callable[[], list[Step]] = store_script,
                    runner: type[StoreRun] = StoreRun, drop_checkpoint: bool = False) -> Explorer:
    """Run ``script`` under ``runner`` from an empty directory, checking every crash state."""
    root, scratch = tmp_path / "node", tmp_path / "states"
    root.mkdir()
    scratch.mkdir()
    explorer = Explorer(RecordingFS(root), scratch, stop_early=stop_early,
                        drop_checkpoint=drop_checkpoint)
    monkeypatch.setattr(fsio, "fs", explorer.rec)
    run = runner(root, nursery, explorer)
    start = len(explorer.rec.log)
    await run.open()
    explorer.explore("open", start, lambda dest: run.check(dest, {}))
    for step in script():
        await run.run(step)
        if stop_early and explorer.violations:
            break
    await run.close(clean=True)
    return explorer


# -- upload sessions ------------------------------------------------------------------


def session_script() -> list[Step]:
    """Three uploads interleaved: two complete, one fails; and restarts."""
    stages = ("queued", "processing", "chunking", "uploading_chunks", "finalizing", "completed")
    steps: list[Step] = [("open",)]
    for i, stage in enumerate(stages):
        steps.append(("save", "up-a", stage))
        if i < 3:
            steps.append(("save", "up-b", stage))
    steps += [("save", "up-b", "failed"), ("restart",)]
    steps += [("save", "up-c", stage) for stage in stages] + [("restart",)]
    return steps


def session_problems(dest: Path, acked: dict[str, dict[str, Any]],
                     maybe: dict[str, tuple[dict[str, Any] | None, ...]]) -> list[str]:
    where = dest / "uploads" / "sessions"
    loaded = {s.session_id: asdict(s) for s in SessionStore(where).all()} if where.is_dir() else {}
    problems = []
    for sid in sorted(acked.keys() | maybe.keys() | loaded.keys()):
        allowed = maybe.get(sid) or (acked.get(sid),)
        got = loaded.get(sid)
        if got in allowed:
            continue
        want = acked.get(sid)
        if want is not None and want["status"] == "completed":
            state = "missing" if got is None else f"back to {got['status']!r}"
            problems.append(f"session {sid} was reported completed, and is {state}")
        elif got is None:
            problems.append(f"session {sid} ({want and want['status']}) is missing")
        else:
            problems.append(f"session {sid} reads {got['status']!r}, saved "
                            f"{want and want['status']!r}")
    return problems


def run_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Explorer:
    root, scratch = tmp_path / "uploader", tmp_path / "states"
    root.mkdir()
    scratch.mkdir()
    explorer = Explorer(RecordingFS(root), scratch)
    monkeypatch.setattr(fsio, "fs", explorer.rec)
    sessions: dict[str, Session] = {}
    acked: dict[str, dict[str, Any]] = {}
    store: SessionStore | None = None
    for step in session_script():
        start = len(explorer.rec.log)
        maybe: dict[str, tuple[dict[str, Any] | None, ...]] = {}
        if step[0] in ("open", "restart"):
            store = SessionStore(root / "uploads" / "sessions")
            assert {s.session_id: asdict(s) for s in store.all()} == acked
        else:
            assert store is not None
            _, sid, stage = step
            s = sessions.setdefault(sid, Session(session_id=sid, video_id=f"video-{sid}",
                                                 title=sid, filename=f"{sid}.mp4", size_bytes=1))
            if stage == "failed":
                s.fail("planted failure")
            else:
                s.advance(stage)
            maybe[sid] = (acked.get(sid), asdict(s))
            store.save(s)
        explorer.explore(" ".join(step), start,
                         lambda dest: session_problems(dest, acked, maybe))  # noqa: B023
        for sid, (_, after) in maybe.items():
            assert after is not None
            acked[sid] = after
    return explorer


# -- the tests --------------------------------------------------------------------------


async def test_the_store_survives_every_crash_state(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    explorer = await run_store(tmp_path, nursery, monkeypatch)
    print(f"{explorer.states} distinct crash states checked; {explorer.stats}")
    assert explorer.violations == []
    assert explorer.states > 300, "the workload explores many distinct crash states"
    # The states the bugs live in were reached: a retired superblock still on disk,
    # and torn records whose header survived but whose data did not.
    assert explorer.stats.get("retired superblock removed by recovery", 0) > 0
    assert explorer.stats.get("torn record refused by its CRC", 0) > 0


def test_upload_sessions_survive_every_crash_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    explorer = run_sessions(tmp_path, monkeypatch)
    print(f"{explorer.states} distinct crash states checked")
    assert explorer.violations == []
    assert explorer.states > 50


# -- planted bugs: each must be caught ------------------------------------------------


def _without_dir_fsync(real: Callable[..., Any]) -> Callable[..., Any]:
    """``real`` with every directory fsync it makes dropped."""

    def planted(*args: Any, **kwargs: Any) -> Any:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(fsio, "fsync_dir", lambda path: None)
            return real(*args, **kwargs)

    return planted


def plant_no_superblock_dir_fsync(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(SuperblockFiles, "create", _without_dir_fsync(SuperblockFiles.create))


def plant_new_directories_not_synced(mp: pytest.MonkeyPatch) -> None:
    """``data/`` and ``index/`` created, but their names never synced into the data root."""
    mp.setattr(fsio, "makedirs", _without_dir_fsync(fsio.makedirs))


def plant_tail_scan_without_crc(mp: pytest.MonkeyPatch) -> None:
    real = records.scan

    def scan(fd: int, sb_id: int, start: int, size: int, result: records.ScanResult,
             *, verify: bool = True) -> Iterator[records.RecordHeader]:
        return real(fd, sb_id, start, size, result, verify=False)

    mp.setattr(recovery, "scan", scan)


def plant_no_retired_record(mp: pytest.MonkeyPatch) -> None:
    """The original compaction bug: recovery does not know retired superblocks."""
    mp.setattr(recovery, "retired_superblocks", lambda ckpt, ids: [])


@pytest.mark.parametrize(("plant", "symptom"), [
    (plant_no_superblock_dir_fsync, "acknowledged PUT of c0 is missing"),
    (plant_new_directories_not_synced, "acknowledged PUT of c0 is missing"),
    (plant_tail_scan_without_crc, "indexed but failing its CRC"),
    (plant_no_retired_record, "is back after its DELETE was acknowledged"),
])
async def test_a_planted_store_bug_is_caught(
    plant: Callable[[pytest.MonkeyPatch], None], symptom: str, tmp_path: Path,
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    plant(monkeypatch)
    explorer = await run_store(tmp_path, nursery, monkeypatch, stop_early=True)
    print(explorer.violations[:1])
    assert explorer.violations, "the simulator missed the planted bug"
    assert symptom in explorer.violations[0]


def test_a_missing_session_dir_fsync_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SessionStore, "save", _without_dir_fsync(SessionStore.save))
    explorer = run_sessions(tmp_path, monkeypatch)
    print(len(explorer.violations), explorer.violations[:1])
    assert any("up-a was reported completed, and is" in v for v in explorer.violations)
    assert any("up-c (queued) is missing" in v for v in explorer.violations)
