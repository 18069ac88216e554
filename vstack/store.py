"""The superblock store: append-only chunk storage with a checkpointed index.

Theory of operation
-------------------
Chunks are appended as self-describing records (:mod:`vstack.records`) to
``data/superblock_<N>.dat``; a new superblock is started when the active one
would pass ``max_superblock_size``. The location of every live chunk is kept
in a :class:`~vstack.index.ChunkIndex`.

Writes go through four steps so that many can share one ``fdatasync``
(group commit) while trio drives them:

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
still exists, checkpoints the index, and only then unlinks the old file;
readers hold a reference on the file they read, so the descriptor stays open
until the last ``sendfile`` from it ends.

Restart: load the checkpoint (index arrays plus, per superblock, the offset
up to which it is reflected), then scan only what was appended after it,
verifying CRCs, skipping torn or failed records and cutting a torn tail.
Without a checkpoint every file is scanned.

Threads: every method that changes the store's state runs on the caller's
(event-loop) thread; the blocking ones (``write``, ``fsync_batch``,
``read_data``, ``write_checkpoint``) touch only file descriptors and
snapshots, so no locks are needed.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from protocol.errors import LocalProtocolError, ProtocolError, VStackError
from protocol.frames import crc32c

from .index import FLAG_QUARANTINED, FLAG_VERIFIED, ChunkIndex, key_hash
from .records import (
    ALIGN,
    HEADER_SIZE,
    RecordHeader,
    ScanResult,
    encode_header,
    parse_header,
    record_length,
    scan,
    sha256,
)

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

_SB_NAME: Final = re.compile(r"^superblock_(\d+)\.dat$")
CHECKPOINT_NAME: Final = "checkpoint.npz"
_PAD: Final = bytes(ALIGN)


class StoreInUse(VStackError):
    """Another process holds this data directory."""


class Busy(LocalProtocolError):
    """Another write of the same key is in flight; wait for it, then retry."""

    def __init__(self, pending: PendingWrite) -> None:
        super().__init__("a write of this chunk is in progress", 409)
        self.pending = pending


class WriteKind(enum.Enum):
    PUT = "put"
    TOMBSTONE = "tombstone"
    COPY = "copy"  # compaction: a live record moved forward
    TOMBSTONE_COPY = "tombstone_copy"  # compaction: a tombstone carried forward


@dataclass(frozen=True, kw_only=True, slots=True)
class Location:
    """Where a live chunk is, and what is known of it."""

    key: bytes
    row: int
    sb: int
    offset: int  # of the record header
    size: int
    crc: int
    sha256: bytes
    seq: int
    verified: bool
    quarantined: bool

    @property
    def data_offset(self) -> int:
        return self.offset + HEADER_SIZE

    @property
    def etag(self) -> str:
        return self.sha256.hex()


@dataclass(eq=False, kw_only=True)
class PendingWrite:
    kind: WriteKind
    key: bytes
    seq: int
    sb: int
    offset: int
    length: int
    header: bytes
    data: bytes | bytearray = b""
    size: int = 0
    crc: int = 0
    sha: bytes = b""
    source: tuple[int, int] | None = None  # COPY: (sb, offset) it was copied from
    target_row_seq: int = 0  # TOMBSTONE: seq of the record it deletes
    state: str = "reserved"  # reserved -> written | failed -> done
    error: BaseException | None = None
    waiter: Any = None  # for the I/O layer (a trio.Event)

    @property
    def ok(self) -> bool:
        return self.state == "done" and self.error is None


@dataclass(eq=False)
class Superblock:
    id: int
    path: Path
    fd: int
    size: int  # append position
    inflight: list[PendingWrite] = field(default_factory=list)
    refs: int = 0
    retired: bool = False

    def watermark(self) -> int:
        """Every byte below this offset is reflected in the index."""
        return self.inflight[0].offset if self.inflight else self.size


@dataclass(frozen=True, kw_only=True)
class SyncBatch:
    writes: dict[int, list[PendingWrite]]
    fds: list[int]


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
        self._sbs: dict[int, Superblock] = {}
        self._active: Superblock | None = None
        self._next_seq = 1
        self._next_sb = 0
        self._pending: dict[bytes, PendingWrite] = {}
        self.quarantined: dict[str, str] = {}
        self.recovery: dict[str, Any] = {}
        self._retired: dict[int, Superblock] = {}
        self._lock_fd = -1
        self.closed = False

    # -- opening and recovery (blocking) ----------------------------------------

    @classmethod
    def open(cls, root: Path | str, *, max_superblock_size: int = 1 << 30) -> SuperblockStore:
        self = cls(Path(root), max_superblock_size=max_superblock_size)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreInUse(f"{self.root} is in use by another storage node") from None
        try:
            self._recover()
        except BaseException:
            self.close()
            raise
        return self

    def _recover(self) -> None:
        watermarks: dict[int, int] = {}
        ckpt = self.index_dir / CHECKPOINT_NAME
        loaded = False
        if ckpt.exists():
            try:
                watermarks = self._load_checkpoint(ckpt)
                loaded = True
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.error("checkpoint %s unreadable (%s); rebuilding from superblocks", ckpt, exc)
                self.index = ChunkIndex()
                watermarks = {}
        ids = sorted(
            int(m.group(1)) for p in self.data_dir.iterdir() if (m := _SB_NAME.match(p.name))
        )
        known = set(ids)
        # Rows that point into superblocks that no longer exist cannot be served.
        sbcol = self.index.col("sb")
        if len(self.index) and not np.isin(sbcol, np.array(ids, dtype=np.uint32)).all():
            for row in sorted(np.flatnonzero(~np.isin(sbcol, list(known))).tolist(), reverse=True):
                log.error("checkpoint row points to missing superblock; dropped")
                self.index.remove(row)
        for sb_id in ids:  # all open first: lookups during the scan read any of them
            path = self.data_dir / f"superblock_{sb_id}.dat"
            fd = os.open(path, os.O_RDWR)
            self._sbs[sb_id] = Superblock(sb_id, path, fd, os.fstat(fd).st_size)
            self._next_sb = max(self._next_sb, sb_id + 1)
        tombstones: dict[bytes, int] = {}
        scanned = skipped = 0
        damaged: list[str] = []
        for sb_id in ids:
            sb = self._sbs[sb_id]
            file_size = sb.size
            start = watermarks.get(sb_id, 0) if loaded else 0
            result = ScanResult(end=start)
            for rec in scan(sb.fd, sb_id, start, file_size, result):
                self._apply_recovered(rec, tombstones)
                self._next_seq = max(self._next_seq, rec.seq + 1)
                scanned += 1
            skipped += result.skipped_bytes
            for key in result.damaged:
                log.warning("superblock %d: record of chunk %s failed its CRC during recovery "
                            "(torn write or damage); not restored", sb_id, key.decode(errors="replace"))
                damaged.append(key.decode(errors="replace"))
            if result.end < file_size:
                log.warning("superblock %d: cut %d bytes of torn tail", sb_id, file_size - result.end)
                os.ftruncate(sb.fd, result.end)
                os.fsync(sb.fd)
            sb.size = -(-result.end // ALIGN) * ALIGN
        if ids:
            self._active = self._sbs[ids[-1]]
        self._rebuild_quarantine_list()
        self.recovery = {
            "checkpoint_loaded": loaded,
            "records_scanned": scanned,
            "bytes_skipped": skipped,
            "damaged_records": damaged[:100],
            "chunks": len(self.index),
        }
        log.info(
            "store open: %d chunks in %d superblocks (checkpoint %s, %d records scanned)",
            len(self.index), len(self._sbs), "loaded" if loaded else "absent", scanned,
        )

    def _load_checkpoint(self, path: Path) -> dict[int, int]:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("version") != 1:
                raise ValueError("unknown checkpoint version")
            arrays = {name: z[name] for name in z.files if name != "meta"}
        arrays["flags"] = np.bitwise_and(arrays["flags"], np.uint8(~FLAG_VERIFIED & 0xFF))
        self.index = ChunkIndex.from_arrays(arrays)
        self._next_seq = int(meta["next_seq"])
        self._next_sb = int(meta["next_sb"])
        return {int(k): int(v) for k, v in meta["watermarks"].items()}

    def _apply_recovered(self, rec: RecordHeader, tombstones: dict[bytes, int]) -> None:
        existing = self._find(rec.key)
        if rec.tombstone:
            tombstones[rec.key] = max(tombstones.get(rec.key, 0), rec.seq)
            if existing is not None and existing.seq < rec.seq:
                self.index.remove(existing.row)
            return
        if tombstones.get(rec.key, 0) > rec.seq:
            return
        if existing is None:
            self.index.insert(
                key_hash(rec.key), seq=rec.seq, sb=rec.sb_id, off=rec.offset // ALIGN,
                size=rec.size, crc=rec.crc, flags=FLAG_VERIFIED,
            )
        elif rec.seq >= existing.seq:
            self._relocate(existing.row, rec)

    def _relocate(self, row: int, rec: RecordHeader) -> None:
        ix = self.index
        ix.set(row, "seq", rec.seq)
        ix.set(row, "sb", rec.sb_id)
        ix.set(row, "off", rec.offset // ALIGN)
        ix.set(row, "size", rec.size)
        ix.set(row, "crc", rec.crc)
        ix.set(row, "flags", 0)

    def _rebuild_quarantine_list(self) -> None:
        flags = self.index.col("flags")
        for row in np.flatnonzero(np.bitwise_and(flags, FLAG_QUARANTINED)).tolist():
            hdr = self._header_at(self.index.get(row, "sb"), self.index.get(row, "off") * ALIGN)
            if hdr is not None:
                self.quarantined[hdr.key.decode()] = "found corrupt before restart"

    # -- lookups -------------------------------------------------------------------

    def _header_at(self, sb_id: int, offset: int) -> RecordHeader | None:
        sb = self._sbs.get(sb_id)
        if sb is None:
            return None
        return parse_header(os.pread(sb.fd, HEADER_SIZE, offset), sb_id, offset)

    def _find(self, key: bytes) -> Location | None:
        for row in self.index.find(key_hash(key)):
            sb_id = self.index.get(row, "sb")
            offset = self.index.get(row, "off") * ALIGN
            hdr = self._header_at(sb_id, offset)
            if hdr is None or hdr.key != key:
                continue
            flags = self.index.get(row, "flags")
            return Location(
                key=key, row=row, sb=sb_id, offset=offset, size=hdr.size, crc=hdr.crc,
                sha256=hdr.sha256, seq=self.index.get(row, "seq"),
                verified=bool(flags & FLAG_VERIFIED), quarantined=bool(flags & FLAG_QUARANTINED),
            )
        return None

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
        sb = self._sbs.get(loc.sb)
        if sb is None or sb.retired or not self._same(loc):
            raise ProtocolError("Chunk moved; retry", 503)
        sb.refs += 1
        return sb.fd

    def release(self, loc: Location) -> None:
        sb = self._sbs.get(loc.sb) or self._retired[loc.sb]
        sb.refs -= 1
        if sb.retired and sb.refs == 0:
            self._close_retired(self._retired.pop(sb.id))

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

    def _same(self, loc: Location) -> bool:
        ix = self.index
        return (
            loc.row < len(ix)
            and ix.get(loc.row, "sb") == loc.sb
            and ix.get(loc.row, "off") * ALIGN == loc.offset
            and ix.get(loc.row, "seq") == loc.seq
        )

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

    def _reserve(self, kind: WriteKind, key: bytes, *, seq: int, data: bytes | bytearray = b"", size: int = 0,
                 crc: int = 0, sha: bytes = bytes(32), target_sb: int = 0,
                 source: tuple[int, int] | None = None, target_row_seq: int = 0,
                 track: bool = True) -> PendingWrite:
        length = record_length(size)
        sb = self._active
        if sb is None or (sb.size and sb.size + length > self.max_superblock_size):
            sb = self._new_superblock()
        offset = sb.size
        header = encode_header(RecordHeader(
            key=key, seq=seq, sb_id=sb.id, offset=offset, size=size, crc=crc, sha256=sha,
            tombstone=kind in (WriteKind.TOMBSTONE, WriteKind.TOMBSTONE_COPY), target_sb=target_sb,
        ))
        pw = PendingWrite(kind=kind, key=key, seq=seq, sb=sb.id, offset=offset, length=length,
                          header=header, data=data, size=size, crc=crc, sha=sha, source=source,
                          target_row_seq=target_row_seq)
        sb.size += length
        sb.inflight.append(pw)
        if track:
            self._pending[key] = pw
        return pw

    def _new_superblock(self) -> Superblock:
        sb_id = self._next_sb
        self._next_sb += 1
        path = self.data_dir / f"superblock_{sb_id}.dat"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        _fsync_dir(self.data_dir)
        sb = Superblock(sb_id, path, fd, 0)
        self._sbs[sb_id] = sb
        self._active = sb
        log.info("superblock %d started", sb_id)
        return sb

    def write(self, pw: PendingWrite) -> None:
        """Blocking: put the record's bytes in place (no fsync)."""
        sb = self._sbs[pw.sb]
        pad = pw.length - HEADER_SIZE - pw.size
        bufs: list[bytes | bytearray | memoryview] = [pw.header]
        if pw.size:
            bufs.append(pw.data)
        if pad:
            bufs.append(_PAD[:pad])
        pos, total = pw.offset, pw.length
        while total:
            n = os.pwritev(sb.fd, bufs, pos)
            if n <= 0:
                raise OSError("pwritev wrote nothing")
            pos += n
            total -= n
            bufs = _advance(bufs, n)

    def mark_written(self, pw: PendingWrite, error: BaseException | None = None) -> None:
        pw.state = "failed" if error is not None else "written"
        pw.error = error

    def sync_batch(self) -> SyncBatch | None:
        """The finished writes at the front of each superblock's queue, if any."""
        writes: dict[int, list[PendingWrite]] = {}
        for sb in self._sbs.values():
            run = []
            for pw in sb.inflight:
                if pw.state == "reserved":
                    break
                run.append(pw)
            if run:
                writes[sb.id] = run
        if not writes:
            return None
        return SyncBatch(writes=writes, fds=[self._sbs[i].fd for i in writes])

    @staticmethod
    def fsync_batch(batch: SyncBatch) -> None:
        for fd in batch.fds:
            os.fdatasync(fd)

    def publish(self, batch: SyncBatch, error: BaseException | None = None) -> list[PendingWrite]:
        """Apply a synced batch to the index; returns the writes it completed."""
        done: list[PendingWrite] = []
        for sb_id, run in batch.writes.items():
            sb = self._sbs[sb_id]
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
                self._relocate(existing.row, rec)
            else:
                self.index.insert(key_hash(pw.key), seq=pw.seq, sb=pw.sb, off=pw.offset // ALIGN,
                                  size=pw.size, crc=pw.crc)
        elif pw.kind is WriteKind.TOMBSTONE:
            if existing is not None and existing.seq == pw.target_row_seq:
                self.quarantined.pop(pw.key.decode(), None)
                self.index.remove(existing.row)
        elif (pw.kind is WriteKind.COPY and existing is not None
              and (existing.sb, existing.offset) == pw.source):
            flags = self.index.get(existing.row, "flags")
            self._relocate(existing.row, rec)
            self.index.set(existing.row, "flags", flags)

    # -- compaction ----------------------------------------------------------------

    def superblock_usage(self) -> list[tuple[int, int, int, bool]]:
        """``(id, file bytes, live bytes, active)`` for every superblock."""
        sbcol = self.index.col("sb").astype(np.int64)
        sizes = self.index.col("size").astype(np.int64)
        lengths = -(-(sizes + HEADER_SIZE) // ALIGN) * ALIGN
        live = np.bincount(sbcol, weights=lengths, minlength=self._next_sb) if len(sbcol) else None
        out = []
        for sb in self._sbs.values():
            lb = int(live[sb.id]) if live is not None and sb.id < live.size else 0
            out.append((sb.id, sb.size, lb, sb is self._active))
        return out

    def compaction_candidates(self, garbage_ratio: float) -> list[int]:
        """Sealed superblocks whose garbage share is at least ``garbage_ratio``."""
        return [
            sb_id for sb_id, size, live, active in self.superblock_usage()
            if not active and size and (size - live) / size >= garbage_ratio
            and not self._sbs[sb_id].inflight
        ]

    def live_records(self, sb_id: int) -> list[Location]:
        rows = np.flatnonzero(self.index.col("sb") == sb_id).tolist()
        out = []
        for row in rows:
            hdr = self._header_at(sb_id, self.index.get(row, "off") * ALIGN)
            if hdr is not None:
                loc = self._find(hdr.key)
                if loc is not None and loc.sb == sb_id:
                    out.append(loc)
        return out

    def header(self, loc: Location) -> RecordHeader | None:
        return self._header_at(loc.sb, loc.offset)

    def tombstones_to_carry(self, fd: int, sb_id: int, size: int) -> list[RecordHeader]:
        """Blocking: tombstones in ``sb_id`` still needed to hide an older record."""
        result = ScanResult()
        return [
            rec for rec in scan(fd, sb_id, 0, size, result, verify=False)
            if rec.tombstone and rec.target_sb != sb_id
            and (self.data_dir / f"superblock_{rec.target_sb}.dat").exists()
        ]

    def drop(self, loc: Location) -> None:
        """Forget a (quarantined) chunk without writing a tombstone."""
        if self._same(loc):
            self.index.remove(loc.row)

    def retire(self, sb_id: int) -> Path:
        """Stop using superblock ``sb_id``; the caller then checkpoints and unlinks it."""
        sb = self._sbs.pop(sb_id)
        if sb is self._active:
            raise ValueError("cannot retire the active superblock")
        sb.retired = True
        if sb.refs == 0:
            self._close_retired(sb)
        else:
            self._retired[sb_id] = sb
        return sb.path

    @staticmethod
    def _close_retired(sb: Superblock) -> None:
        if sb.fd >= 0:
            os.close(sb.fd)
            sb.fd = -1

    def unlink(self, path: Path) -> None:
        """Blocking: remove a retired superblock file for good."""
        path.unlink(missing_ok=True)
        _fsync_dir(self.data_dir)

    def file_bytes(self) -> int:
        """Bytes in all superblock files (live and garbage)."""
        return sum(sb.size for sb in self._sbs.values())

    def superblock_fd(self, sb_id: int) -> tuple[int, int]:
        sb = self._sbs[sb_id]
        return sb.fd, sb.size

    # -- checkpoints ---------------------------------------------------------------

    def checkpoint_snapshot(self) -> dict[str, Any]:
        """A consistent copy of the index and its watermarks (event-loop thread)."""
        arrays: dict[str, Any] = self.index.arrays()
        meta = {
            "version": 1,
            "next_seq": self._next_seq,
            "next_sb": self._next_sb,
            "watermarks": {str(i): sb.watermark() for i, sb in self._sbs.items()},
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        return arrays

    def write_checkpoint(self, snapshot: dict[str, npt.NDArray[Any]]) -> None:
        """Blocking: write a snapshot atomically (tmp, fsync, rename, fsync dir)."""
        tmp = self.index_dir / (CHECKPOINT_NAME + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **snapshot)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.index_dir / CHECKPOINT_NAME)
        _fsync_dir(self.index_dir)

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
            pending_writes=sum(len(sb.inflight) for sb in self._sbs.values()),
            index_bytes=self.index.nbytes,
        )

    def rows(self) -> int:
        return len(self.index)

    def location_of_row(self, row: int) -> Location | None:
        """The location in ``row`` (for the scrubber's walk), or ``None``."""
        if row >= len(self.index):
            return None
        hdr = self._header_at(self.index.get(row, "sb"), self.index.get(row, "off") * ALIGN)
        return None if hdr is None else self._find(hdr.key)

    def close(self) -> None:
        self.closed = True
        for sb in [*self._sbs.values(), *self._retired.values()]:
            if sb.fd >= 0:
                os.close(sb.fd)
                sb.fd = -1
        self._sbs.clear()
        self._retired.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


def _advance(
    bufs: list[bytes | bytearray | memoryview], n: int
) -> list[bytes | bytearray | memoryview]:
    out: list[bytes | bytearray | memoryview] = []
    for b in bufs:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(memoryview(b)[n:] if n else b)
        n = 0
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
