"""The on-disk record format of superblock files, and the scanner that reads it back.

Theory of operation
-------------------
A superblock file (``superblock_<N>.dat``) is a sequence of records, each
starting on a multiple of :data:`ALIGN` bytes. A record is a fixed
:data:`HEADER_SIZE`-byte header followed by the chunk's bytes and zero padding
up to the next boundary. Tombstones (deletes) are records with no data.

The header is self-describing, so the data files alone can rebuild the index:
it names the chunk, its size, its CRC32C and SHA-256, a store-wide sequence
number (later wins), the record's own superblock id and offset (so a copy of a
record that ended up *inside* another chunk's bytes is never mistaken for a
record), and a CRC32C of the header itself.

Layout (little-endian)::

    off len field
      0   4 magic          b"VSR1"
      4   1 version        1
      5   1 flags          bit 0: tombstone
      6   1 key length     1..64
      7   1 reserved       0
      8   8 sequence       store-wide write counter
     16   4 superblock id  of the file this record is in
     20   4 target sb      tombstones: superblock of the record deleted
     24   8 offset         of this record in its file
     32   8 data length
     40   4 data CRC32C
     44   4 header CRC32C  (of these 144 bytes with this field zero)
     48  32 SHA-256 of the data
     80  64 key, zero padded

:func:`scan` walks a file from an offset. A header that fails any check, or
whose data fails its CRC, is skipped one boundary at a time until the next
valid record: a torn write from a crash, or a write that failed for lack of
space, costs only itself, never the records after it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from protocol.frames import crc32c

__all__ = [
    "ALIGN",
    "FLAG_TOMBSTONE",
    "HEADER",
    "HEADER_SIZE",
    "MAX_KEY",
    "RecordHeader",
    "ScanResult",
    "encode_header",
    "parse_header",
    "record_length",
    "scan",
]

MAGIC: Final = b"VSR1"
VERSION: Final = 1
ALIGN: Final = 4096  # a page: a record never shares a page with the one before
MAX_KEY: Final = 64
FLAG_TOMBSTONE: Final = 0x01
HEADER: Final = struct.Struct("<4sBBBxQIIQQII32s64s")
HEADER_SIZE: Final = HEADER.size
assert HEADER_SIZE == 144
_CRC_FIELD: Final = slice(44, 48)
_SCAN_READ: Final = 1 << 20


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordHeader:
    key: bytes
    seq: int
    sb_id: int
    offset: int
    size: int
    crc: int
    sha256: bytes
    tombstone: bool = False
    target_sb: int = 0

    @property
    def data_offset(self) -> int:
        return self.offset + HEADER_SIZE

    @property
    def length(self) -> int:
        return record_length(self.size)


def record_length(size: int) -> int:
    """Bytes a record with ``size`` bytes of data takes, padding included."""
    return -(-(HEADER_SIZE + size) // ALIGN) * ALIGN


def encode_header(rec: RecordHeader) -> bytes:
    if not 0 < len(rec.key) <= MAX_KEY:
        raise ValueError("record key must be 1..64 bytes")
    if rec.offset % ALIGN:
        raise ValueError("record offset must be aligned")
    fields = (
        MAGIC,
        VERSION,
        FLAG_TOMBSTONE if rec.tombstone else 0,
        len(rec.key),
        rec.seq,
        rec.sb_id,
        rec.target_sb,
        rec.offset,
        rec.size,
        rec.crc,
        0,
        rec.sha256,
        rec.key,
    )
    raw = bytearray(HEADER.pack(*fields))
    raw[_CRC_FIELD] = struct.pack("<I", crc32c(raw))
    return bytes(raw)


def parse_header(raw: bytes | bytearray | memoryview, sb_id: int, offset: int) -> RecordHeader | None:
    """The header at ``offset`` of superblock ``sb_id``, or ``None`` if it is not one."""
    if len(raw) < HEADER_SIZE or bytes(raw[:4]) != MAGIC:
        return None
    (_, version, flags, key_len, seq, rec_sb, target_sb, rec_off, size, crc, hcrc, sha, key) = (
        HEADER.unpack_from(raw)
    )
    if version != VERSION or rec_sb != sb_id or rec_off != offset or not 0 < key_len <= MAX_KEY:
        return None
    check = bytearray(raw[:HEADER_SIZE])
    check[_CRC_FIELD] = b"\0\0\0\0"
    if crc32c(check) != hcrc:
        return None
    tomb = bool(flags & FLAG_TOMBSTONE)
    if tomb and size:
        return None
    return RecordHeader(
        key=bytes(key[:key_len]),
        seq=seq,
        sb_id=sb_id,
        offset=offset,
        size=size,
        crc=crc,
        sha256=bytes(sha),
        tombstone=tomb,
        target_sb=target_sb,
    )


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(slots=True)
class ScanResult:
    """Where the scan ended: just past the last valid record."""

    end: int = 0
    skipped_bytes: int = 0
    #: Keys of records whose header was sound but whose data failed its CRC.
    damaged: list[bytes] = field(default_factory=list)


def scan(
    fd: int, sb_id: int, start: int, file_size: int, result: ScanResult, *, verify: bool = True
) -> Iterator[RecordHeader]:
    """Yield the valid records of an open superblock file from ``start``.

    Args:
        verify: read every record's data and check its CRC32C (needed for any
            region that may hold torn writes).
        result: filled in as the scan goes: ``end`` is the offset just past
            the last valid record (where appending may resume).
    """
    off = start
    result.end = start
    while off + HEADER_SIZE <= file_size:
        raw = os.pread(fd, HEADER_SIZE, off)
        rec = parse_header(raw, sb_id, off)
        if rec is None or off + HEADER_SIZE + rec.size > file_size:
            off += ALIGN
            continue
        if verify and rec.size and not _data_ok(fd, rec):
            result.damaged.append(rec.key)
            off += ALIGN
            continue
        result.skipped_bytes += off - result.end
        off += rec.length
        result.end = min(off, file_size)
        yield rec


def _data_ok(fd: int, rec: RecordHeader) -> bool:
    crc = 0
    pos, left = rec.data_offset, rec.size
    while left:
        buf = os.pread(fd, min(left, _SCAN_READ), pos)
        if not buf:
            return False
        crc = crc32c(buf, crc)
        pos += len(buf)
        left -= len(buf)
    return crc == rec.crc
