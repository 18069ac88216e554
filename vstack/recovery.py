"""Restart: the index checkpoint, and the scan of what was appended after it.

Theory of operation
-------------------
The superblock files are the truth; the index is memory. Rebuilding it from
the files alone means reading every record and checking every chunk's CRC,
minutes on a full disk, so the store writes a *checkpoint* now and then
(``index/checkpoint.npz``): the index arrays, hash table included
(:meth:`~vstack.index.ChunkIndex.arrays`), the next sequence number and
superblock id, and per superblock its *watermark*, the offset below which
the index reflects the file exactly (:meth:`~vstack.superblock.Superblock.watermark`).
The snapshot is taken on the event-loop thread
(:func:`checkpoint_snapshot`, a copy, so writes go on) and written from a
worker thread atomically: temporary file, fsync, rename, fsync of the
directory (:func:`write_checkpoint`, :func:`vstack.fsio.atomic_writer`).

On open, :func:`recover`:

1. loads the checkpoint if there is a readable one, clearing every VERIFIED
   flag (a check holds only for the process that made it); an unreadable
   checkpoint (empty, truncated, not an archive: whatever fails to load) is
   logged and ignored, and every file is scanned instead;
2. removes the files of *retired* superblocks (below), durably, before it
   reads anything;
3. drops rows that point into superblock files which no longer exist;
4. opens every superblock file, then scans each from its watermark (from 0
   if the checkpoint does not know it, or there is none), checking CRCs and
   skipping torn or failed records (:func:`vstack.records.scan`). Records
   apply in file order, files in id order: a record replaces the row of its
   key if its sequence number is not lower; a tombstone removes an older row
   and hides older records of its key scanned after it;
5. cuts a torn tail, so appending resumes just past the last valid record;
6. makes what it found durable (below);
7. lists the chunks whose rows are flagged quarantined.

Durable before served
---------------------
A SIGKILL keeps the page cache. The records past a watermark may have been
written by a process that died before their ``fdatasync``: never
acknowledged, and not on the disk. Once indexed they are served all the
same (a GET returns them, a retried PUT of the same bytes is answered 200
from them, the next checkpoint counts them below a watermark), and a power
loss would then take back what was acknowledged. So every superblock
scanned past its watermark is fdatasynced before the store serves. Names
too: a process that died inside :meth:`~vstack.superblock.SuperblockFiles.create`,
between creating a superblock file and syncing its directory, leaves a
file that becomes the active superblock here, and ``create`` is not called
again for it. So the data directory is fsynced, and the index directory
(the checkpoint just loaded may be a rename not yet synced), once each.
A superblock the checkpoint fully covers was synced before that checkpoint
was written, and is not synced again.

Retired superblocks
-------------------
Compaction retires a superblock, writes a checkpoint that no longer lists
it, and only then unlinks its file; the unlink is durable once the data
directory is fsynced. A crash (or a cancelled or failed unlink) in between
leaves the file on disk with no watermark, and scanning it from offset 0
would re-insert chunks whose tombstones lie below other superblocks'
watermarks: deleted chunks would come back. So a superblock file whose id
is below the checkpoint's ``next_sb`` and which the checkpoint gives no
watermark is retired (:func:`retired_superblocks`), and is removed before
the scan. That rule, rather than a list of retired ids kept in the
checkpoint, is the sound one because it follows from how every checkpoint
is made, with no new state to keep right: the snapshot takes ``next_sb``
and the watermarks of *every* open superblock in one step on the event-loop
thread, and a superblock is open from the moment its id is taken
(:meth:`~vstack.superblock.SuperblockFiles.create`) until it is retired, so
an id below ``next_sb`` without a watermark can only be a retired
superblock (or one whose creation failed, which holds nothing). Every later
checkpoint carries ``next_sb`` forward and never lists the id again, so the
record cannot be lost by a later write (a list would have to be carried
along until the unlink is known durable), and it also cleans up data
directories written before this rule, with the same checkpoint format.
Without a readable checkpoint there is nothing to compare with and every
file is scanned, as before.

Everything here blocks; the store calls it before serving.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from numpy.lib.npyio import NpzFile

from . import fsio
from .index import FLAG_QUARANTINED, FLAG_VERIFIED, ChunkIndex
from .location import find, insert, relocate, row_header
from .records import ALIGN, RecordHeader, ScanResult, scan
from .superblock import Superblock, SuperblockFiles

__all__ = [
    "CHECKPOINT_NAME",
    "Checkpoint",
    "Recovered",
    "checkpoint_snapshot",
    "load_checkpoint",
    "recover",
    "retired_superblocks",
    "write_checkpoint",
]

log = logging.getLogger("vstack.store")

CHECKPOINT_NAME: Final = "checkpoint.npz"
_VERSION: Final = 1


# -- the checkpoint file ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """What a checkpoint file holds."""

    index: ChunkIndex
    next_seq: int
    next_sb: int
    watermarks: dict[int, int]


def checkpoint_snapshot(index: ChunkIndex, *, next_seq: int, next_sb: int,
                        watermarks: dict[int, int]) -> dict[str, npt.NDArray[Any]]:
    """A copy of the index and its watermarks, ready for :func:`write_checkpoint`."""
    arrays: dict[str, Any] = index.arrays()
    meta = {
        "version": _VERSION,
        "next_seq": next_seq,
        "next_sb": next_sb,
        "watermarks": {str(i): w for i, w in watermarks.items()},
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def write_checkpoint(index_dir: Path, snapshot: dict[str, npt.NDArray[Any]]) -> None:
    """Blocking: write a snapshot atomically (tmp, fsync, rename, fsync dir)."""
    with fsio.atomic_writer(index_dir / CHECKPOINT_NAME) as f:
        np.savez(f, **snapshot)  # type: ignore[arg-type]


def load_checkpoint(path: Path) -> Checkpoint:
    """Blocking: read a checkpoint file; VERIFIED flags come back cleared.

    The file is opened here, in a ``with`` block: ``np.load`` given a path
    leaves its descriptor open when the archive turns out to be damaged.

    Raises:
        Exception: not a readable checkpoint (``OSError``, ``EOFError``,
            ``ValueError``, ``KeyError``, ``zipfile.BadZipFile``, ``zlib.error``...).
    """
    with open(path, "rb") as f:
        z = np.load(f, allow_pickle=False)
        if not isinstance(z, NpzFile):
            raise ValueError("not an .npz archive")
        with z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("version") != _VERSION:
                raise ValueError("unknown checkpoint version")
            arrays = {name: z[name] for name in z.files if name != "meta"}
    arrays["flags"] = np.bitwise_and(arrays["flags"], np.uint8(~FLAG_VERIFIED & 0xFF))
    return Checkpoint(
        index=ChunkIndex.from_arrays(arrays),
        next_seq=int(meta["next_seq"]),
        next_sb=int(meta["next_sb"]),
        watermarks={int(k): int(v) for k, v in meta["watermarks"].items()},
    )


# -- recovery on open ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Recovered:
    """The state :func:`recover` rebuilt, and a report of what it did (for health)."""

    index: ChunkIndex
    next_seq: int
    quarantined: dict[str, str]
    report: dict[str, Any]


def recover(files: SuperblockFiles, index_dir: Path) -> Recovered:
    """Blocking: rebuild the index of ``files`` (unopened) from the checkpoint and a tail scan.

    Opens every superblock file in ``files`` (the caller closes them if this
    raises), cuts torn tails and sets each file's append position.
    """
    ckpt = _load_if_readable(index_dir / CHECKPOINT_NAME)
    index = ckpt.index if ckpt is not None else ChunkIndex()
    if ckpt is not None:
        files.next_id = ckpt.next_sb
    ids = files.ids_on_disk()
    retired = retired_superblocks(ckpt, ids)
    files.remove_retired(retired)  # before anything is scanned: see "Retired superblocks"
    ids = [i for i in ids if i not in retired]
    _drop_rows_of_missing_superblocks(index, ids)
    files.open_existing(ids)  # all open first: lookups during the scan read any of them
    tail = _TailScan(index, files, next_seq=ckpt.next_seq if ckpt is not None else 1)
    for sb_id in ids:
        tail.scan_superblock(files[sb_id], ckpt.watermarks.get(sb_id, 0) if ckpt is not None else 0)
    _make_durable(tail.scanned_superblocks, files.data_dir, index_dir)
    report = {
        "checkpoint_loaded": ckpt is not None,
        "retired_removed": retired,
        "records_scanned": tail.scanned,
        "bytes_skipped": tail.skipped,
        "damaged_records": tail.damaged[:100],
        "chunks": len(index),
    }
    log.info(
        "store open: %d chunks in %d superblocks (checkpoint %s, %d records scanned)",
        len(index), len(files), "loaded" if ckpt is not None else "absent", tail.scanned,
    )
    return Recovered(index=index, next_seq=tail.next_seq,
                     quarantined=_quarantined(index, files), report=report)


def retired_superblocks(ckpt: Checkpoint | None, ids: list[int]) -> list[int]:
    """The superblocks of ``ids`` (on disk) that ``ckpt`` shows were retired.

    Those below its ``next_sb`` that it gives no watermark (see the module
    docstring, "Retired superblocks").
    """
    if ckpt is None:
        return []
    return [i for i in ids if i < ckpt.next_sb and i not in ckpt.watermarks]


def _load_if_readable(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or ``None`` if there is none or it cannot be loaded.

    Any failure to load it (``EOFError`` for an empty file, ``BadZipFile``,
    ``zlib.error``, a missing array, ...) means the same thing: the
    superblocks are scanned in full. It must never stop the store from
    starting.
    """
    if not path.exists():
        return None
    try:
        return load_checkpoint(path)
    except Exception as exc:
        log.error("checkpoint %s unreadable (%r); rebuilding from superblocks", path, exc)
        return None


def _make_durable(scanned: list[Superblock], data_dir: Path, index_dir: Path) -> None:
    """Sync what recovery found before it is served (see "Durable before served")."""
    for sb in scanned:
        fsio.fs.fdatasync(sb.fd)
    fsio.fsync_dir(data_dir)
    fsio.fsync_dir(index_dir)


def _drop_rows_of_missing_superblocks(index: ChunkIndex, ids: list[int]) -> None:
    """Rows that point into superblocks that no longer exist cannot be served."""
    sbcol = index.col("sb")
    if len(index) and not np.isin(sbcol, np.array(ids, dtype=np.uint32)).all():
        # Highest rows first: each removal moves the last row, already checked, into place.
        for row in sorted(np.flatnonzero(~np.isin(sbcol, ids)).tolist(), reverse=True):
            log.error("checkpoint row points to missing superblock; dropped")
            index.remove(row)


@dataclass
class _TailScan:
    """Applies the records found past the watermarks to the index."""

    index: ChunkIndex
    files: SuperblockFiles
    next_seq: int
    scanned: int = 0
    skipped: int = 0
    damaged: list[str] = field(default_factory=list)
    #: Superblocks scanned past their watermark: what they hold may be only in the page cache.
    scanned_superblocks: list[Superblock] = field(default_factory=list)
    #: Highest tombstone sequence number seen per key: hides older records scanned later.
    tombstones: dict[bytes, int] = field(default_factory=dict)

    def scan_superblock(self, sb: Superblock, start: int) -> None:
        file_size = sb.size
        if file_size > start:
            self.scanned_superblocks.append(sb)
        result = ScanResult(end=start)
        for rec in scan(sb.fd, sb.id, start, file_size, result):
            self._apply(rec)
            self.next_seq = max(self.next_seq, rec.seq + 1)
            self.scanned += 1
        self.skipped += result.skipped_bytes
        for key in result.damaged:
            log.warning("superblock %d: record of chunk %s failed its CRC during recovery "
                        "(torn write or damage); not restored", sb.id, key.decode(errors="replace"))
            self.damaged.append(key.decode(errors="replace"))
        if result.end < file_size:
            log.warning("superblock %d: cut %d bytes of torn tail", sb.id, file_size - result.end)
            fsio.fs.ftruncate(sb.fd, result.end)
            fsio.fs.fsync(sb.fd)
        sb.size = -(-result.end // ALIGN) * ALIGN

    def _apply(self, rec: RecordHeader) -> None:
        existing = find(self.index, self.files, rec.key)
        if rec.tombstone:
            self.tombstones[rec.key] = max(self.tombstones.get(rec.key, 0), rec.seq)
            if existing is not None and existing.seq < rec.seq:
                self.index.remove(existing.row)
            return
        if self.tombstones.get(rec.key, 0) > rec.seq:
            return
        if existing is None:
            insert(self.index, rec, flags=FLAG_VERIFIED)
        elif rec.seq >= existing.seq:
            relocate(self.index, existing.row, rec)


def _quarantined(index: ChunkIndex, files: SuperblockFiles) -> dict[str, str]:
    """The chunks flagged quarantined in ``index``, by key."""
    out: dict[str, str] = {}
    flags = index.col("flags")
    for row in np.flatnonzero(np.bitwise_and(flags, FLAG_QUARANTINED)).tolist():
        hdr = row_header(index, files, row)
        if hdr is not None:
            out[hdr.key.decode()] = "found corrupt before restart"
    return out
