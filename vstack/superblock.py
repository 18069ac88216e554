"""Superblock files: the append-only data files, their descriptors and who holds them.

Theory of operation
-------------------
Chunks live in ``data/superblock_<N>.dat``, numbered upwards. Only the
*active* superblock (the newest) is appended to; :meth:`SuperblockFiles.create`
starts the next one (``O_EXCL``, then an fsync of the directory so the new
name survives a crash) when a record would not fit. A :class:`Superblock`
keeps its file's descriptor open for the life of the store, its append
position (``size``, which counts space reserved for writes still in flight)
and its queue of those writes (:mod:`vstack.group_commit`).

Compaction removes whole files while readers may still be using them: a
chunk is served with ``sendfile`` from the descriptor, possibly long after it
was looked up. So each read holds a reference
(:meth:`SuperblockFiles.acquire` / :meth:`~SuperblockFiles.release`).
:meth:`~SuperblockFiles.retire` takes a superblock out of the set at once, so
no new reader can find it, but closes its descriptor only when the last
reference is dropped; the file itself may be unlinked before that, as the
open descriptor keeps its bytes readable.

Retiring is made durable by the checkpoint, not by the unlink: the
checkpoint written after :meth:`~SuperblockFiles.retire` no longer lists the
superblock, and recovery removes any such file still on disk before it scans
anything (:func:`vstack.recovery.recover`), so a crash between the
checkpoint and a durable :meth:`~SuperblockFiles.unlink` cannot bring the
file's deleted chunks back.

Methods that change the set run on the event-loop thread (or during
:meth:`~vstack.store.SuperblockStore.open`, before anything else runs);
:meth:`~SuperblockFiles.unlink` and :meth:`~SuperblockFiles.exists_on_disk`
block and only touch the file system, so worker threads may call them. Every
call that changes the disk goes through :data:`vstack.fsio.fs`. Record
headers are read with a short ``pread`` (:meth:`SuperblockFiles.header_at`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from . import fsio
from .group_commit import PendingWrite
from .records import HEADER_SIZE, RecordHeader, parse_header

__all__ = ["Superblock", "SuperblockFiles"]

log = logging.getLogger("vstack.store")

_SB_NAME: Final = re.compile(r"^superblock_(\d+)\.dat$")


@dataclass(eq=False)
class Superblock:
    """One open superblock file."""

    id: int
    path: Path
    fd: int
    size: int  # append position
    inflight: list[PendingWrite] = field(default_factory=list)
    refs: int = 0
    retired: bool = False

    def queue(self, pw: PendingWrite) -> None:
        """Queue ``pw``, reserved at the append position, and move that past it."""
        self.size += pw.length
        self.inflight.append(pw)

    def watermark(self) -> int:
        """Every byte below this offset is reflected in the index."""
        return self.inflight[0].offset if self.inflight else self.size


class SuperblockFiles:
    """The superblock files of one data directory, open and retired."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.active: Superblock | None = None
        self.next_id = 0
        self._open: dict[int, Superblock] = {}
        self._retired: dict[int, Superblock] = {}

    # -- the set --------------------------------------------------------------

    def path(self, sb_id: int) -> Path:
        return self.data_dir / f"superblock_{sb_id}.dat"

    def ids_on_disk(self) -> list[int]:
        """Ids of the superblock files in the data directory, ascending."""
        return sorted(
            int(m.group(1)) for p in self.data_dir.iterdir() if (m := _SB_NAME.match(p.name))
        )

    def exists_on_disk(self, sb_id: int) -> bool:
        """Blocking: whether superblock ``sb_id`` still has a file."""
        return self.path(sb_id).exists()

    def open_existing(self, ids: list[int]) -> None:
        """Open the files ``ids`` (as found on disk); the last becomes active."""
        for sb_id in ids:
            path = self.path(sb_id)
            fd = fsio.fs.open(path, os.O_RDWR)
            self._open[sb_id] = Superblock(sb_id, path, fd, os.fstat(fd).st_size)
            self.next_id = max(self.next_id, sb_id + 1)
        if ids:
            self.active = self._open[ids[-1]]

    def create(self) -> Superblock:
        """Start the next superblock file and make it the active one."""
        sb_id = self.next_id
        self.next_id += 1
        path = self.path(sb_id)
        fd = fsio.fs.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fsio.fsync_dir(self.data_dir)  # the name must outlive a crash before any write is acked
        except BaseException:
            fsio.fs.close(fd)
            raise
        sb = Superblock(sb_id, path, fd, 0)
        self._open[sb_id] = sb
        self.active = sb
        log.info("superblock %d started", sb_id)
        return sb

    def __getitem__(self, sb_id: int) -> Superblock:
        return self._open[sb_id]

    def get(self, sb_id: int) -> Superblock | None:
        return self._open.get(sb_id)

    def __iter__(self) -> Iterator[Superblock]:
        return iter(self._open.values())

    def __len__(self) -> int:
        return len(self._open)

    def watermarks(self) -> dict[int, int]:
        """Per open superblock, the offset below which the index reflects it."""
        return {i: sb.watermark() for i, sb in self._open.items()}

    def file_bytes(self) -> int:
        """Bytes in all open superblock files (live and garbage)."""
        return sum(sb.size for sb in self._open.values())

    def header_at(self, sb_id: int, offset: int) -> RecordHeader | None:
        """The record header at ``offset`` of ``sb_id``, or ``None`` (no such file or record)."""
        sb = self._open.get(sb_id)
        if sb is None:
            return None
        return parse_header(os.pread(sb.fd, HEADER_SIZE, offset), sb_id, offset)

    # -- readers' references --------------------------------------------------

    def is_readable(self, sb_id: int) -> bool:
        """Whether a new reader may take a reference on ``sb_id``."""
        sb = self._open.get(sb_id)
        return sb is not None and not sb.retired

    def acquire(self, sb_id: int) -> int:
        """Hold ``sb_id`` open until :meth:`release`; returns its descriptor."""
        sb = self._open[sb_id]
        sb.refs += 1
        return sb.fd

    def release(self, sb_id: int) -> None:
        sb = self._open.get(sb_id) or self._retired[sb_id]
        sb.refs -= 1
        if sb.retired and sb.refs == 0:
            _close(self._retired.pop(sb.id))

    # -- retiring and closing -------------------------------------------------

    def retire(self, sb_id: int) -> Path:
        """Take ``sb_id`` out of the set; its descriptor closes with the last reader.

        Raises:
            ValueError: ``sb_id`` is the active superblock.
        """
        sb = self._open.pop(sb_id)
        if sb is self.active:
            raise ValueError("cannot retire the active superblock")
        sb.retired = True
        if sb.refs == 0:
            _close(sb)
        else:
            self._retired[sb_id] = sb
        return sb.path

    def unlink(self, path: Path) -> None:
        """Blocking: remove a retired superblock file for good (durably)."""
        with contextlib.suppress(FileNotFoundError):
            fsio.fs.unlink(path)
        fsio.fsync_dir(self.data_dir)

    def remove_retired(self, ids: list[int]) -> None:
        """Blocking: remove the files of superblocks retired by an earlier process (durably)."""
        for sb_id in ids:
            log.warning("superblock %d was retired before the restart; removing its file", sb_id)
            with contextlib.suppress(FileNotFoundError):
                fsio.fs.unlink(self.path(sb_id))
        if ids:
            fsio.fsync_dir(self.data_dir)

    def close(self) -> None:
        """Close every descriptor, readers or not."""
        for sb in [*self._open.values(), *self._retired.values()]:
            _close(sb)
        self._open.clear()
        self._retired.clear()


def _close(sb: Superblock) -> None:
    if sb.fd >= 0:
        fsio.fs.close(sb.fd)
        sb.fd = -1
