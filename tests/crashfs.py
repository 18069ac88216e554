"""A recording file system, and the states a crash could leave behind it.

Theory of operation (after ALICE, OSDI'14, and CrashMonkey)
-----------------------------------------------------------
:class:`RecordingFS` takes the place of :data:`vstack.fsio.fs`. Every call
still happens on the real disk (the code under test reads real files), and
each one under the recorder's root is also logged, in order, as one of:

* :class:`DirOp`: a change to one directory's names (create, mkdir, rename,
  unlink). It is durable only once that directory is fsynced;
* :class:`DataOp`: a write or truncation of one file (an *inode*: the log
  follows files across renames). It is durable once the file is fsynced
  or fdatasynced (both count alike);
* :class:`Sync`: an fsync of a file or of a directory.

This is the conservative persistence model of ALICE's ``ext4``-like
file system, without its allowances: fsyncing a file does not make its name
durable, and a rename is not ordered after the data of the file renamed.
Changes to one directory's names are persisted in order (a journal commits
them in order): after a crash a directory holds its synced names plus any
*prefix* of its later changes. Unsynced writes may each be persisted whole,
lost, or torn: some of their 4 KiB pages written and the others not, the
file's size already extended over them (zeros), as delayed allocation and
journalled metadata can leave a file.

:func:`crash_states` builds, for a prefix of the log (a crash point), the
named states of the issue (only what was synced; all of it, which is what a
process kill leaves; unsynced names lost; unsynced data lost; unsynced writes
torn) plus a few random mixtures drawn from a seeded generator.
:func:`materialize` writes one of them into an empty directory, where the
code under test can open it.

Only what this module's users need is modelled: no hard links, no renames
across directories, no ``rmdir``, and every file is created under the
recorder (the root starts empty).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


__all__ = ["CrashState", "DataOp", "DirOp", "RecordingFS", "Sync", "crash_points", "crash_states",
           "materialize"]

PAGE: Final = 4096
DIRECTORY: Final = -1  # an entry that is a directory, not an inode


@dataclass(frozen=True)
class DirOp:
    """A change to the names in directory ``dir`` (relative to the root; ``""`` is the root)."""

    dir: str
    kind: str  # "create" | "mkdir" | "rename" | "unlink"
    name: str
    target: str = ""  # rename: the new name
    ino: int = 0  # create: the new file


@dataclass(frozen=True)
class DataOp:
    """A write of ``data`` at ``offset`` of file ``ino``, or (``truncate``) a new size."""

    ino: int
    offset: int = 0
    data: bytes = b""
    truncate: int | None = None


@dataclass(frozen=True)
class Sync:
    """An fsync (or fdatasync) of file ``ino`` or of directory ``dir``."""

    ino: int | None = None
    dir: str | None = None


Op = DirOp | DataOp | Sync


class RecordingFS:
    """:class:`vstack.fsio.FileSystem` that does every call and logs those under ``root``.

    Calls are serialised (one lock), so the log's order is the order the
    calls took effect in, even from worker threads.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.log: list[Op] = []
        self._lock = threading.Lock()
        self._names: dict[str, dict[str, int]] = {"": {}}
        self._fds: dict[int, int | str] = {}  # fd -> inode, or a directory's relative path
        self._next_ino = 1

    # -- the model of the current names ----------------------------------------

    def _rel(self, path: str | Path) -> str | None:
        rel = os.path.relpath(os.path.abspath(path), str(self.root))
        if rel == ".":
            return ""
        return None if rel.startswith("..") else rel

    def _where(self, rel: str) -> tuple[str, str]:
        parent, name = os.path.split(rel)
        return parent, name

    # -- FileSystem ------------------------------------------------------------

    def open(self, path: str | Path, flags: int, mode: int = 0o777) -> int:
        with self._lock:
            fd = os.open(path, flags, mode)
            rel = self._rel(path)
            if rel is None:
                return fd
            if flags & os.O_DIRECTORY or rel == "" or rel in self._names:
                self._fds[fd] = rel
                return fd
            parent, name = self._where(rel)
            ino = self._names[parent].get(name)
            if ino is None:
                ino = self._next_ino
                self._next_ino += 1
                self._names[parent][name] = ino
                self.log.append(DirOp(parent, "create", name, ino=ino))
            elif flags & os.O_TRUNC:
                self.log.append(DataOp(ino, truncate=0))
            self._fds[fd] = ino
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            os.close(fd)
            self._fds.pop(fd, None)

    def pwrite(self, fd: int, data: ReadableBuffer, offset: int) -> int:
        with self._lock:
            n = os.pwrite(fd, data, offset)
            self._data(fd, offset, memoryview(data).cast("B")[:n].tobytes())
            return n

    def pwritev(self, fd: int, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        with self._lock:
            n = os.pwritev(fd, buffers, offset)
            self._data(fd, offset, b"".join(memoryview(b).tobytes() for b in buffers)[:n])
            return n

    def _data(self, fd: int, offset: int, data: bytes) -> None:
        ino = self._fds.get(fd)
        if isinstance(ino, int):
            self.log.append(DataOp(ino, offset, data))

    def fsync(self, fd: int) -> None:
        with self._lock:
            os.fsync(fd)
            self._sync(fd)

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            os.fdatasync(fd)
            self._sync(fd)

    def _sync(self, fd: int) -> None:
        what = self._fds.get(fd)
        if isinstance(what, int):
            self.log.append(Sync(ino=what))
        elif what is not None:
            self.log.append(Sync(dir=what))

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            os.ftruncate(fd, length)
            ino = self._fds.get(fd)
            if isinstance(ino, int):
                self.log.append(DataOp(ino, truncate=length))

    def replace(self, src: str | Path, dst: str | Path) -> None:
        with self._lock:
            os.replace(src, dst)
            a, b = self._rel(src), self._rel(dst)
            if a is None or b is None:
                return
            (pa, na), (pb, nb) = self._where(a), self._where(b)
            if pa != pb:
                raise NotImplementedError("renames across directories are not modelled")
            self._names[pa][nb] = self._names[pa].pop(na)
            self.log.append(DirOp(pa, "rename", na, target=nb))

    def unlink(self, path: str | Path) -> None:
        with self._lock:
            os.unlink(path)
            rel = self._rel(path)
            if rel is None:
                return
            parent, name = self._where(rel)
            del self._names[parent][name]
            self.log.append(DirOp(parent, "unlink", name))

    def mkdir(self, path: str | Path, mode: int = 0o777) -> None:
        with self._lock:
            os.mkdir(path, mode)
            rel = self._rel(path)
            if rel is None:
                return
            parent, name = self._where(rel)
            self._names[parent][name] = DIRECTORY
            self._names[rel] = {}
            self.log.append(DirOp(parent, "mkdir", name))


# -- crash states -------------------------------------------------------------------


@dataclass
class _Durability:
    """What a prefix of the log did to each directory and file, and how much of it is synced."""

    dir_ops: dict[str, list[DirOp]] = field(default_factory=dict)
    dir_synced: dict[str, int] = field(default_factory=dict)
    data_ops: dict[int, list[DataOp]] = field(default_factory=dict)
    data_synced: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, log: Sequence[Op]) -> _Durability:
        d = cls()
        for op in log:
            if isinstance(op, DirOp):
                d.dir_ops.setdefault(op.dir, []).append(op)
            elif isinstance(op, DataOp):
                d.data_ops.setdefault(op.ino, []).append(op)
            elif op.ino is not None:
                d.data_synced[op.ino] = len(d.data_ops.get(op.ino, ()))
            elif op.dir is not None:
                d.dir_synced[op.dir] = len(d.dir_ops.get(op.dir, ()))
        return d


@dataclass(frozen=True)
class CrashState:
    """One state a crash could leave: how many changes of each directory persisted, and
    which writes (possibly torn into pieces) of each file."""

    name: str
    dirs: dict[str, list[DirOp]]
    files: dict[int, list[DataOp]]

    def contents(self) -> dict[str, bytes | None]:
        """Every path reachable from the root: a file's bytes, or ``None`` for a directory."""
        data = {ino: _apply(ops) for ino, ops in self.files.items()}
        out: dict[str, bytes | None] = {}

        def walk(rel: str) -> None:
            for name, ino in sorted(_replay(self.dirs.get(rel, [])).items()):
                path = os.path.join(rel, name)
                if ino == DIRECTORY:
                    out[path] = None
                    walk(path)
                else:
                    out[path] = bytes(data.get(ino, b""))

        walk("")
        return out


def _replay(ops: Sequence[DirOp]) -> dict[str, int]:
    names: dict[str, int] = {}
    for op in ops:
        if op.kind == "create":
            names[op.name] = op.ino
        elif op.kind == "mkdir":
            names[op.name] = DIRECTORY
        elif op.kind == "rename":
            names[op.target] = names.pop(op.name)
        else:
            names.pop(op.name, None)
    return names


def _apply(ops: Sequence[DataOp]) -> bytearray:
    buf = bytearray()
    for op in ops:
        if op.truncate is not None:
            del buf[op.truncate:]
            buf.extend(bytes(op.truncate - len(buf)))
            continue
        end = op.offset + len(op.data)
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        buf[op.offset:end] = op.data
    return buf


def _torn(op: DataOp, rng: random.Random) -> list[DataOp]:
    """Some of ``op``'s pages, never all of them, and the size it extends the file to."""
    if op.truncate is not None:
        return [op] if rng.random() < 0.5 else []
    end = op.offset + len(op.data)
    cuts = sorted({op.offset, end, *range((op.offset // PAGE + 1) * PAGE, end, PAGE)})
    pages = list(itertools.pairwise(cuts))
    keep = [p for p in pages if rng.random() < 0.5]
    if len(keep) == len(pages):
        keep.pop(rng.randrange(len(keep)))
    pieces = [DataOp(op.ino, a, op.data[a - op.offset : b - op.offset]) for a, b in keep]
    return [*pieces, DataOp(op.ino, end)]  # the file's size reaches the end of the write


def crash_states(log: Sequence[Op], *, rng: random.Random, mixtures: int = 3) -> list[CrashState]:
    """The states a crash right after ``log`` could leave (see the module docstring)."""
    d = _Durability.of(log)

    def dirs(synced_only: bool) -> dict[str, list[DirOp]]:
        return {k: ops[: d.dir_synced.get(k, 0)] if synced_only else list(ops)
                for k, ops in d.dir_ops.items()}

    def files(unsynced: str) -> dict[int, list[DataOp]]:
        out: dict[int, list[DataOp]] = {}
        for ino, ops in d.data_ops.items():
            n = d.data_synced.get(ino, 0)
            kept = list(ops[:n])
            for op in ops[n:]:
                how = unsynced if unsynced != "mixed" else rng.choice(("all", "none", "torn"))
                kept += [op] if how == "all" else _torn(op, rng) if how == "torn" else []
            out[ino] = kept
        return out

    states = [
        CrashState("only what was synced", dirs(True), files("none")),
        CrashState("process kill (everything written)", dirs(False), files("all")),
        CrashState("unsynced names lost", dirs(True), files("all")),
        CrashState("unsynced data lost", dirs(False), files("none")),
        CrashState("unsynced writes torn", dirs(False), files("torn")),
    ]
    for i in range(mixtures):
        prefix = {k: ops[: rng.randint(d.dir_synced.get(k, 0), len(ops))]
                  for k, ops in d.dir_ops.items()}
        states.append(CrashState(f"mixture {i}", prefix, files("mixed")))
    return states


def crash_points(log: Sequence[Op], start: int, *, rng: random.Random, limit: int) -> list[int]:
    """Where to crash during the operation that logged ``log[start:]``: just before each
    sync (the most a crash there can lose) and at the end; at most ``limit`` of them,
    the last ones always, the others sampled."""
    points = [i for i in range(start, len(log)) if isinstance(log[i], Sync)] + [len(log)]
    if len(points) <= limit:
        return points
    tail = points[-(limit // 2):]
    head = sorted(rng.sample(points[: -(limit // 2)], limit - len(tail)))
    return head + tail


def fingerprint(contents: dict[str, bytes | None]) -> bytes:
    h = hashlib.sha256()
    for path, data in sorted(contents.items()):
        h.update(path.encode() + b"\0" + (b"D" if data is None else b"F" + data) + b"\0")
    return h.digest()


def materialize(contents: dict[str, bytes | None], dest: Path) -> None:
    """Write ``contents`` (from :meth:`CrashState.contents`) under the empty directory ``dest``."""
    for path, data in sorted(contents.items()):
        target = dest / path
        if data is None:
            target.mkdir()
        else:
            target.write_bytes(data)


def files_under(root: Path) -> Iterator[tuple[str, bytes | None]]:
    """What is really under ``root`` now, in the form of :meth:`CrashState.contents`."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            yield os.path.normpath(os.path.join(rel, name)), None
        for name in filenames:
            yield os.path.normpath(os.path.join(rel, name)), Path(dirpath, name).read_bytes()
