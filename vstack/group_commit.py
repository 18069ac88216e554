"""Group commit: the bookkeeping that lets many writes share one ``fdatasync``.

Theory of operation
-------------------
Every change to a superblock file (a chunk, a tombstone, a record moved by
compaction) is a :class:`PendingWrite` that passes through these states, each
changed on one thread only, so no locks are needed:

``reserved``
    The event-loop thread gave it a sequence number and the byte range at the
    end of the active superblock, encoded its header (:func:`make_write`) and
    queued it on that superblock's ``inflight`` list
    (:meth:`~vstack.superblock.Superblock.queue`). Ranges never overlap, so
    any number of writes proceed at once.
``written`` or ``failed``
    A worker thread put header, data and padding in place with ``pwritev``
    (:func:`write_record`), without syncing; the event-loop thread records
    the outcome.
``done``
    :func:`collect_batch` took, per superblock, the longest run of finished
    writes at the *front* of its queue; a worker thread synced those files
    (:func:`fsync_batch`); the store applied the run to its index, and only
    then are the chunks visible and the writers acknowledged.

Taking only a front run is what makes acknowledgements safe: a write is never
acknowledged while an earlier byte range of its file is still being written,
so after a crash the valid records of a file always cover every acknowledged
one. It also makes the offset of the first queued write a *watermark*: every
byte below it is reflected in the index (:meth:`Superblock.watermark`), which
is what a checkpoint records.

A second write of a key while one is in flight is refused with :class:`Busy`,
which carries the pending write so the caller can wait for it and retry.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from protocol.errors import LocalProtocolError

from . import fsio
from .records import ALIGN, HEADER_SIZE, RecordHeader, encode_header, record_length

__all__ = [
    "Busy",
    "PendingWrite",
    "SyncBatch",
    "WriteKind",
    "collect_batch",
    "fsync_batch",
    "make_write",
    "seal",
    "write_data",
    "write_header",
    "write_record",
]

_PAD: Final = bytes(ALIGN)


class WriteKind(enum.Enum):
    PUT = "put"
    TOMBSTONE = "tombstone"
    COPY = "copy"  # compaction: a live record moved forward
    TOMBSTONE_COPY = "tombstone_copy"  # compaction: a tombstone carried forward


@dataclass(eq=False, kw_only=True)
class PendingWrite:
    """One record on its way into a superblock file (see the module docstring)."""

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


class Busy(LocalProtocolError):
    """Another write of the same key is in flight; wait for it, then retry."""

    def __init__(self, pending: PendingWrite) -> None:
        super().__init__("a write of this chunk is in progress", 409)
        self.pending = pending


@dataclass(frozen=True, kw_only=True)
class SyncBatch:
    """Writes ready to be synced, per superblock id, and the files to sync."""

    writes: dict[int, list[PendingWrite]]
    fds: list[int]


def make_write(kind: WriteKind, key: bytes, *, sb_id: int, offset: int, seq: int,
               data: bytes | bytearray = b"", size: int = 0, crc: int = 0, sha: bytes = bytes(32),
               target_sb: int = 0, source: tuple[int, int] | None = None,
               target_row_seq: int = 0) -> PendingWrite:
    """A write of one record at ``offset`` of superblock ``sb_id``, its header encoded.

    The caller took the byte range (the end of the active superblock) and
    queues the write there (:meth:`~vstack.superblock.Superblock.queue`).
    """
    header = encode_header(RecordHeader(
        key=key, seq=seq, sb_id=sb_id, offset=offset, size=size, crc=crc, sha256=sha,
        tombstone=kind in (WriteKind.TOMBSTONE, WriteKind.TOMBSTONE_COPY), target_sb=target_sb,
    ))
    return PendingWrite(kind=kind, key=key, seq=seq, sb=sb_id, offset=offset,
                        length=record_length(size), header=header, data=data, size=size, crc=crc,
                        sha=sha, source=source, target_row_seq=target_row_seq)


def seal(pw: PendingWrite, sha: bytes) -> None:
    """Give a reserved write its SHA-256, computed while its data was being written
    (:func:`write_data`); its header is encoded again, to be written by
    :func:`write_header`. The write is not ``written`` until both are done."""
    pw.sha = sha
    pw.header = encode_header(RecordHeader(
        key=pw.key, seq=pw.seq, sb_id=pw.sb, offset=pw.offset, size=pw.size, crc=pw.crc,
        sha256=sha, tombstone=False, target_sb=0))


def write_record(fd: int, pw: PendingWrite) -> None:
    """Blocking: put the record's header, data and padding in place (no fsync)."""
    pad = pw.length - HEADER_SIZE - pw.size
    bufs: list[bytes | bytearray | memoryview] = [pw.header]
    if pw.size:
        bufs.append(pw.data)
    if pad:
        bufs.append(_PAD[:pad])
    _pwrite_all(fd, bufs, pw.offset, pw.length)
    if pw.kind is WriteKind.PUT:
        fsio.start_writeback(fd, pw.offset, pw.length)  # the fsync finds less to do


def write_data(fd: int, pw: PendingWrite) -> None:
    """Blocking: the record's data and padding only (its header: :func:`write_header`)."""
    pad = pw.length - HEADER_SIZE - pw.size
    bufs: list[bytes | bytearray | memoryview] = [pw.data] if pw.size else []
    if pad:
        bufs.append(_PAD[:pad])
    _pwrite_all(fd, bufs, pw.offset + HEADER_SIZE, pw.length - HEADER_SIZE)
    fsio.start_writeback(fd, pw.offset + HEADER_SIZE, pw.length - HEADER_SIZE)


def write_header(fd: int, pw: PendingWrite) -> None:
    """Blocking: the record's header only."""
    _pwrite_all(fd, [pw.header], pw.offset, HEADER_SIZE)


def _pwrite_all(fd: int, bufs: list[bytes | bytearray | memoryview], pos: int,
                total: int) -> None:
    while total:
        n = fsio.fs.pwritev(fd, bufs, pos)
        if n <= 0:
            raise OSError("pwritev wrote nothing")
        pos += n
        total -= n
        bufs = _advance(bufs, n)


def collect_batch(queues: Iterable[tuple[int, int, list[PendingWrite]]]) -> SyncBatch | None:
    """The finished writes at the front of each queue, if any.

    Args:
        queues: per superblock, ``(id, descriptor, writes in flight in file order)``.
    """
    writes: dict[int, list[PendingWrite]] = {}
    fds: list[int] = []
    for sb_id, fd, inflight in queues:
        run = []
        for pw in inflight:
            if pw.state == "reserved":
                break
            run.append(pw)
        if run:
            writes[sb_id] = run
            fds.append(fd)
    if not writes:
        return None
    return SyncBatch(writes=writes, fds=fds)


def fsync_batch(batch: SyncBatch) -> None:
    """Blocking: make the batch's files durable."""
    for fd in batch.fds:
        fsio.fs.fdatasync(fd)


def _advance(
    bufs: list[bytes | bytearray | memoryview], n: int
) -> list[bytes | bytearray | memoryview]:
    """``bufs`` without their first ``n`` bytes (after a short ``pwritev``)."""
    out: list[bytes | bytearray | memoryview] = []
    for b in bufs:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(memoryview(b)[n:] if n else b)
        n = 0
    return out
