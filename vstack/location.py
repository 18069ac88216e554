"""Finding a chunk: from its key, through the index, to a record on disk.

Theory of operation
-------------------
The in-memory :class:`~vstack.index.ChunkIndex` does not keep keys, only a
64-bit hash of each (to stay near 45 bytes a chunk). A lookup therefore takes
every row filed under the key's hash and reads the record header each one
points at (:meth:`~vstack.superblock.SuperblockFiles.header_at`): the header
names its key, so a hash collision or a stale row is recognised, and it
carries the SHA-256 a reader needs anyway. The answer is a :class:`Location`,
a frozen snapshot of one row joined with its header.

A :class:`Location` can go stale: compaction moves a chunk, a delete removes
it, and removing a row moves the last row into its place. Anything that acts
on a location it looked up earlier first checks :func:`is_current` (same row,
superblock, offset and sequence number).

These functions only read and change the index; who may change it when is the
store's business (:mod:`vstack.store`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .index import FLAG_QUARANTINED, FLAG_VERIFIED, ChunkIndex, key_hash
from .records import ALIGN, HEADER_SIZE, RecordHeader
from .superblock import SuperblockFiles

__all__ = ["Location", "find", "insert", "is_current", "relocate", "row_header"]


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


def find(index: ChunkIndex, files: SuperblockFiles, key: bytes) -> Location | None:
    """The row holding ``key``, confirmed against its record header, or ``None``."""
    for row in index.find(key_hash(key)):
        sb_id = index.get(row, "sb")
        offset = index.get(row, "off") * ALIGN
        hdr = files.header_at(sb_id, offset)
        if hdr is None or hdr.key != key:
            continue
        flags = index.get(row, "flags")
        return Location(
            key=key, row=row, sb=sb_id, offset=offset, size=hdr.size, crc=hdr.crc,
            sha256=hdr.sha256, seq=index.get(row, "seq"),
            verified=bool(flags & FLAG_VERIFIED), quarantined=bool(flags & FLAG_QUARANTINED),
        )
    return None


def row_header(index: ChunkIndex, files: SuperblockFiles, row: int) -> RecordHeader | None:
    """The record header ``row`` points at, or ``None`` if it is not readable."""
    return files.header_at(index.get(row, "sb"), index.get(row, "off") * ALIGN)


def is_current(index: ChunkIndex, loc: Location) -> bool:
    """Whether ``loc`` still describes its row (nothing moved or removed it)."""
    return (
        loc.row < len(index)
        and index.get(loc.row, "sb") == loc.sb
        and index.get(loc.row, "off") * ALIGN == loc.offset
        and index.get(loc.row, "seq") == loc.seq
    )


def insert(index: ChunkIndex, rec: RecordHeader, *, flags: int = 0) -> int:
    """File record ``rec`` as a new row (the caller checked its key has none); returns it."""
    return index.insert(key_hash(rec.key), seq=rec.seq, sb=rec.sb_id, off=rec.offset // ALIGN,
                        size=rec.size, crc=rec.crc, flags=flags)


def relocate(index: ChunkIndex, row: int, rec: RecordHeader) -> None:
    """Point ``row`` at record ``rec`` (a newer version or a moved copy); clears its flags."""
    index.set(row, "seq", rec.seq)
    index.set(row, "sb", rec.sb_id)
    index.set(row, "off", rec.offset // ALIGN)
    index.set(row, "size", rec.size)
    index.set(row, "crc", rec.crc)
    index.set(row, "flags", 0)
