"""The superblock store: append-only chunk storage with a checkpointed index.

Theory of operation
-------------------
Chunks are appended as self-describing records (:mod:`vstack.records`) to
superblock files (:mod:`vstack.superblock`); a new superblock is started when
the active one would pass ``max_superblock_size``. The location of every live
chunk is kept in a :class:`~vstack.index.ChunkIndex`, and a key is found
through it and confirmed against its header on disk (:mod:`vstack.location`).

Writes go through four steps so that many can share one ``fdatasync``
(group commit, :mod:`vstack.group_commit`) while trio drives them:

1. :meth:`SuperblockStore.reserve_put` (event-loop thread, never blocks)
   assigns a sequence number and a byte range at the end of the active
   superblock and returns a :class:`PendingWrite`.
2. :meth:`SuperblockStore.write` (worker thread) ``pwritev``\\ s header, data
   and padding into that range.
3. :meth:`SuperblockStore.sync_batch` picks, per superblock, the longest run
   of finished writes at the *front* of its queue; :meth:`fsync_batch`
   (worker thread) fsyncs those files. A write is never acknowledged while an
   earlier byte range of its file is still being written, so the valid
   records after a crash always cover every acknowledged one.
4. :meth:`SuperblockStore.publish` (event-loop thread) applies the batch to
   the index; only then are the chunks visible and the PUTs acknowledged.

Deletes append tombstones through the same path. Compaction copies the live
records of a superblock forward (keeping their sequence numbers, so a later
tombstone still wins), carries forward tombstones whose target superblock
still exists, retires it, checkpoints the index, and only then unlinks the
old file; that checkpoint is what makes the retirement durable (recovery
removes a retired file it still finds before scanning anything, see
:mod:`vstack.recovery`). Readers hold a reference on the file they read, so
the descriptor stays open until the last ``sendfile`` from it ends.

Restart (:mod:`vstack.recovery`): load the checkpoint (index arrays plus, per
superblock, the offset up to which it is reflected), then scan only what was
appended after it, verifying CRCs, skipping torn or failed records and
cutting a torn tail; what it found is synced before anything is served (a
killed process's last writes may be only in the page cache). Without a
readable checkpoint every file is scanned. A data directory is used by one
process at a time (an ``flock`` on ``LOCK``).

Every call that changes the disk (create, write, sync, truncate, rename,
unlink, mkdir) goes through :data:`vstack.fsio.fs`, so the crash-state
tests can record them and rebuild what a power loss would leave.

Threads: every method that changes the store's state runs on the caller's
(event-loop) thread; the blocking ones (``write``, ``fsync_batch``,
``read_data``, ``write_checkpoint``) touch only file descriptors and
snapshots, so no locks are needed.

This module is the facade: the node and the tests import everything they
need from here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.errors import ProtocolError, VStackError
from protocol.frames import crc32c

from . import fsio, group_commit, recovery
from .group_commit import Busy, PendingWrite, SyncBatch, WriteKind
from .index import FLAG_QUARANTINED, FLAG_VERIFIED, ChunkIndex
from .location import Location, find, insert, is_current, relocate, row_header
from .records import ALIGN, HEADER_SIZE, RecordHeader, ScanResult, record_length, scan, sha256
from .superblock import SuperblockFiles

__all__ = [
    "Busy",
    "Location",
    "PendingWrite",
    "StoreInUse",
    "StoreStatistics",
    "SuperblockStore",
    "SyncBatch",
    "WriteKind",
]

log = logging.getLogger("vstack.store")


class StoreInUse(VStackError):
    """Another process holds this data directory."""


@dataclass(frozen=True, kw_only=True)
class StoreStatistics:
    chunk_count: int
    stored_bytes: int
    superblocks: int
    file_bytes: int
    garbage_bytes: int
    quarantined: int
    pending_writes: int
    index_bytes: int


class SuperblockStore:
    """Chunks in superblock files, found through an in-memory index.

    Use :meth:`open`; it recovers whatever a previous process left.
    """

    def __init__(self, root: Path, *, max_superblock_size: int) -> None:
        if max_superblock_size < ALIGN:
            raise ValueError("max_superblock_size is too small")
        self.root = root
        self.data_dir = root / "data"
        self.index_dir = root / "index"
        self.max_superblock_size = max_superblock_size
        self.index = ChunkIndex()
        self._files = SuperblockFiles(self.data_dir)
        self._next_seq = 1
        self._pending: dict[bytes, PendingWrite] = {}
        self.quarantined: dict[str, str] = {}
        self.recovery: dict[str, Any] = {}
        self._lock_fd = -1
        self.closed = False

    # -- opening (blocking) ---------------------------------------------------------

    @classmethod
    def open(cls, root: Path | str, *, max_superblock_size: int = 1 << 30) -> SuperblockStore:
        """Lock the data directory under ``root`` and recover its contents.

        Raises:
            StoreInUse: another process has the directory open.
        """
        self = cls(Path(root), max_superblock_size=max_superblock_size)
        fsio.makedirs(self.data_dir)  # new directories synced into their parents
        fsio.makedirs(self.index_dir)
        self._lock_fd = fsio.fs.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fsio.fs.close(self._lock_fd)
            raise StoreInUse(f"{self.root} is in use by another storage node") from None
        try:
            done = recovery.recover(self._files, self.index_dir)
        except BaseException:
            self.close()
            raise
        self.index = done.index
        self._next_seq = done.next_seq
        self.quarantined = done.quarantined
        self.recovery = done.report
        return self

    # -- lookups -------------------------------------------------------------------

    def _find(self, key: bytes) -> Location | None:
        return find(self.index, self._files, key)

    def _same(self, loc: Location) -> bool:
        return is_current(self.index, loc)

    def lookup(self, key: bytes) -> Location | None:
        """The chunk stored under ``key``, quarantined or not (reads one header)."""
        return self._find(key)

    def __contains__(self, key: bytes) -> bool:
        loc = self._find(key)
        return loc is not None and not loc.quarantined

    def pending(self, key: bytes) -> PendingWrite | None:
        return self._pending.get(key)

    # -- reading -------------------------------------------------------------------

    def acquire(self, loc: Location) -> int:
        """Hold the superblock of ``loc`` open until :meth:`release`; returns its fd.

        Raises:
            ProtocolError: 503 if compaction has just moved the chunk (look it up again).
        """
        if not self._files.is_readable(loc.sb) or not self._same(loc):
            raise ProtocolError("Chunk moved; retry", 503)
        return self._files.acquire(loc.sb)

    def release(self, loc: Location) -> None:
        self._files.release(loc.sb)

    @contextlib.contextmanager
    def reading(self, loc: Location) -> Iterator[int]:
        """:meth:`acquire` and :meth:`release` as a context manager."""
        fd = self.acquire(loc)
        try:
            yield fd
        finally:
            self.release(loc)

    @staticmethod
    def read_data(fd: int, loc: Location, offset: int = 0, length: int | None = None) -> bytes:
        """Blocking read of (part of) a chunk's bytes."""
        n = loc.size - offset if length is None else length
        parts, pos = [], loc.data_offset + offset
        while n > 0:
            buf = os.pread(fd, n, pos)
            if not buf:
                raise OSError("superblock shorter than its record")
            parts.append(buf)
            pos += len(buf)
            n -= len(buf)
        return b"".join(parts)

    @classmethod
    def read_verified(cls, fd: int, loc: Location) -> bytes | None:
        """Blocking: the chunk's bytes if they match their CRC32C, else ``None``."""
        data = cls.read_data(fd, loc)
        return data if crc32c(data) == loc.crc else None

    def refresh(self, loc: Location) -> Location:
        """``loc`` with its row's flags as they are now (checked or quarantined
        since it was looked up); the caller knows the row is still ``loc``'s."""
        flags = self.index.get(loc.row, "flags")
        verified, quarantined = bool(flags & FLAG_VERIFIED), bool(flags & FLAG_QUARANTINED)
        if (verified, quarantined) == (loc.verified, loc.quarantined):
            return loc
        return replace(loc, verified=verified, quarantined=quarantined)

    def mark_verified(self, loc: Location) -> None:
        if self._same(loc):
            ix = self.index
            ix.set(loc.row, "flags", ix.get(loc.row, "flags") | FLAG_VERIFIED)

    def quarantine(self, loc: Location, reason: str) -> None:
        """Never serve ``loc`` again; report it in health. A new PUT replaces it."""
        if self._same(loc):
            ix = self.index
            ix.set(loc.row, "flags", (ix.get(loc.row, "flags") | FLAG_QUARANTINED) & ~FLAG_VERIFIED)
            self.quarantined[loc.key.decode()] = reason
            log.error("chunk %s quarantined: %s", loc.key.decode(), reason)

    # -- writing (event-loop thread) ---------------------------------------------

    def reserve_put(self, key: bytes, data: bytes | bytearray, *, sha: bytes | None = None,
                    crc: int | None = None) -> PendingWrite:
        """Reserve room for a new chunk. The caller checked it is not stored.

        ``sha`` and ``crc`` may be passed when the caller computed them already.

        Raises:
            Busy: a write of ``key`` is in flight.
        """
        self._check_idle(key)
        sha = sha or sha256(data)
        crc = crc32c(data) if crc is None else crc
        return self._reserve(WriteKind.PUT, key, data=data, size=len(data), crc=crc, sha=sha,
                             seq=self._take_seq())

    def reserve_delete(self, loc: Location) -> PendingWrite:
        self._check_idle(loc.key)
        return self._reserve(WriteKind.TOMBSTONE, loc.key, seq=self._take_seq(), target_sb=loc.sb,
                             target_row_seq=loc.seq)

    def reserve_copy(self, rec: RecordHeader, data: bytes) -> PendingWrite:
        self._check_idle(rec.key)
        return self._reserve(WriteKind.COPY, rec.key, data=data, size=rec.size, crc=rec.crc,
                             sha=rec.sha256, seq=rec.seq, source=(rec.sb_id, rec.offset))

    def reserve_tombstone_copy(self, rec: RecordHeader) -> PendingWrite:
        return self._reserve(WriteKind.TOMBSTONE_COPY, rec.key, seq=rec.seq,
                             target_sb=rec.target_sb, track=False)

    def _check_idle(self, key: bytes) -> None:
        if self.closed:
            raise ProtocolError("store is closed", 503)
        pending = self._pending.get(key)
        if pending is not None:
            raise Busy(pending)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _reserve(self, kind: WriteKind, key: bytes, *, seq: int, data: bytes | bytearray = b"",
                 size: int = 0, crc: int = 0, sha: bytes = bytes(32), target_sb: int = 0,
                 source: tuple[int, int] | None = None, target_row_seq: int = 0,
                 track: bool = True) -> PendingWrite:
        sb = self._files.active
        if sb is None or (sb.size and sb.size + record_length(size) > self.max_superblock_size):
            sb = self._files.create()
        pw = group_commit.make_write(kind, key, sb_id=sb.id, offset=sb.size, seq=seq, data=data,
                                     size=size, crc=crc, sha=sha, target_sb=target_sb, source=source,
                                     target_row_seq=target_row_seq)
        sb.queue(pw)
        if track:
            self._pending[key] = pw
        return pw

    def write(self, pw: PendingWrite) -> None:
        """Blocking: put the record's bytes in place (no fsync)."""
        group_commit.write_record(self._files[pw.sb].fd, pw)

    def write_data(self, pw: PendingWrite) -> None:
        """Blocking: the record's data (a put reserved before its SHA-256 was known)."""
        group_commit.write_data(self._files[pw.sb].fd, pw)

    def write_sealed_header(self, pw: PendingWrite, sha: bytes) -> None:
        """Blocking: seal the put with its SHA-256 and write its header."""
        group_commit.seal(pw, sha)
        group_commit.write_header(self._files[pw.sb].fd, pw)

    def mark_written(self, pw: PendingWrite, error: BaseException | None = None) -> None:
        pw.state = "failed" if error is not None else "written"
        pw.error = error

    def sync_batch(self) -> SyncBatch | None:
        """The finished writes at the front of each superblock's queue, if any."""
        return group_commit.collect_batch((sb.id, sb.fd, sb.inflight) for sb in self._files)

    @staticmethod
    def fsync_batch(batch: SyncBatch) -> None:
        group_commit.fsync_batch(batch)

    def publish(self, batch: SyncBatch, error: BaseException | None = None) -> list[PendingWrite]:
        """Apply a synced batch to the index; returns the writes it completed."""
        done: list[PendingWrite] = []
        for sb_id, run in batch.writes.items():
            sb = self._files[sb_id]
            del sb.inflight[: len(run)]
            for pw in run:
                if error is not None and pw.error is None:
                    pw.error = error
                if pw.error is None:
                    self._apply(pw)
                pw.state = "done"
                pw.data = b""
                if self._pending.get(pw.key) is pw:
                    del self._pending[pw.key]
                done.append(pw)
        return done

    def _apply(self, pw: PendingWrite) -> None:
        rec = RecordHeader(key=pw.key, seq=pw.seq, sb_id=pw.sb, offset=pw.offset, size=pw.size,
                           crc=pw.crc, sha256=pw.sha)
        existing = self._find(pw.key)
        if pw.kind is WriteKind.PUT:
            if existing is not None:  # replacing a quarantined copy
                self.quarantined.pop(pw.key.decode(), None)
                relocate(self.index, existing.row, rec)
            else:
                insert(self.index, rec)
        elif pw.kind is WriteKind.TOMBSTONE:
            if existing is not None and existing.seq == pw.target_row_seq:
                self.quarantined.pop(pw.key.decode(), None)
                self.index.remove(existing.row)
        elif (pw.kind is WriteKind.COPY and existing is not None
              and (existing.sb, existing.offset) == pw.source):
            flags = self.index.get(existing.row, "flags")
            relocate(self.index, existing.row, rec)
            self.index.set(existing.row, "flags", flags)

    # -- compaction ----------------------------------------------------------------

    def superblock_usage(self) -> list[tuple[int, int, int, bool]]:
        """``(id, file bytes, live bytes, active)`` for every superblock."""
        sbcol = self.index.col("sb").astype(np.int64)
        sizes = self.index.col("size").astype(np.int64)
        lengths = -(-(sizes + HEADER_SIZE) // ALIGN) * ALIGN
        live = (np.bincount(sbcol, weights=lengths, minlength=self._files.next_id)
                if len(sbcol) else None)
        out = []
        for sb in self._files:
            lb = int(live[sb.id]) if live is not None and sb.id < live.size else 0
            out.append((sb.id, sb.size, lb, sb is self._files.active))
        return out

    def compaction_candidates(self, garbage_ratio: float) -> list[int]:
        """Sealed superblocks whose garbage share is at least ``garbage_ratio``."""
        return [
            sb_id for sb_id, size, live, active in self.superblock_usage()
            if not active and size and (size - live) / size >= garbage_ratio
            and not self._files[sb_id].inflight
        ]

    def live_records(self, sb_id: int) -> list[Location]:
        rows = np.flatnonzero(self.index.col("sb") == sb_id).tolist()
        out = []
        for row in rows:
            hdr = self._files.header_at(sb_id, self.index.get(row, "off") * ALIGN)
            if hdr is not None:
                loc = self._find(hdr.key)
                if loc is not None and loc.sb == sb_id:
                    out.append(loc)
        return out

    def header(self, loc: Location) -> RecordHeader | None:
        return self._files.header_at(loc.sb, loc.offset)

    def tombstones_to_carry(self, fd: int, sb_id: int, size: int) -> list[RecordHeader]:
        """Blocking: tombstones in ``sb_id`` still needed to hide an older record."""
        result = ScanResult()
        return [
            rec for rec in scan(fd, sb_id, 0, size, result, verify=False)
            if rec.tombstone and rec.target_sb != sb_id
            and self._files.exists_on_disk(rec.target_sb)
        ]

    def drop(self, loc: Location) -> None:
        """Forget a (quarantined) chunk without writing a tombstone."""
        if self._same(loc):
            self.index.remove(loc.row)
            self.quarantined.pop(loc.key.decode(), None)  # no longer held: not counted either

    def retire(self, sb_id: int) -> Path:
        """Stop using superblock ``sb_id``; the caller then checkpoints and unlinks it.

        The next checkpoint records the retirement (it no longer lists
        ``sb_id``): from then on, recovery removes the file if it is still there.
        """
        return self._files.retire(sb_id)

    def unlink(self, path: Path) -> None:
        """Blocking: remove a retired superblock file for good."""
        self._files.unlink(path)

    def file_bytes(self) -> int:
        """Bytes in all superblock files (live and garbage)."""
        return self._files.file_bytes()

    def superblock_fd(self, sb_id: int) -> tuple[int, int]:
        sb = self._files[sb_id]
        return sb.fd, sb.size

    # -- checkpoints ---------------------------------------------------------------

    def checkpoint_snapshot(self) -> dict[str, Any]:
        """A consistent copy of the index and its watermarks (event-loop thread)."""
        return recovery.checkpoint_snapshot(self.index, next_seq=self._next_seq,
                                            next_sb=self._files.next_id,
                                            watermarks=self._files.watermarks())

    def write_checkpoint(self, snapshot: dict[str, npt.NDArray[Any]]) -> None:
        """Blocking: write a snapshot atomically (tmp, fsync, rename, fsync dir)."""
        recovery.write_checkpoint(self.index_dir, snapshot)

    def checkpoint(self) -> None:
        """Blocking convenience: snapshot and write in one go."""
        self.write_checkpoint(self.checkpoint_snapshot())

    # -- introspection ---------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        usage = self.superblock_usage()
        file_bytes = sum(u[1] for u in usage)
        live = sum(u[2] for u in usage)
        return StoreStatistics(
            chunk_count=len(self.index) - len(self.quarantined),
            stored_bytes=int(self.index.col("size").astype(np.int64).sum()),
            superblocks=len(usage),
            file_bytes=file_bytes,
            garbage_bytes=file_bytes - live,
            quarantined=len(self.quarantined),
            pending_writes=sum(len(sb.inflight) for sb in self._files),
            index_bytes=self.index.nbytes,
        )

    def rows(self) -> int:
        return len(self.index)

    def location_of_row(self, row: int) -> Location | None:
        """The location in ``row`` (for the scrubber's walk), or ``None``."""
        if row >= len(self.index):
            return None
        hdr = row_header(self.index, self._files, row)
        return None if hdr is None else self._find(hdr.key)

    def close(self) -> None:
        self.closed = True
        self._files.close()
        if self._lock_fd >= 0:
            fsio.fs.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
