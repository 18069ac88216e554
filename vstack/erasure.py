"""Reed-Solomon 3+2 erasure coding of chunks, on zfec.

Theory of operation
-------------------
A chunk of ``L`` bytes becomes :data:`~vstack.redundancy.TOTAL_SHARDS` (5)
shards of ``B`` bytes each: data shards 0, 1 and 2 are the chunk itself, cut
in three; parity shards 3 and 4 are zfec's check blocks over them. zfec's
code is systematic and MDS: *any* 3 of the 5 shards rebuild the three data
shards, so a chunk survives the loss of any two.

What is cut in three is the *coded stream*: the chunk, 0 to 2 zero bytes,
and a 20-byte trailer that records the chunk's exact length::

    stream = chunk (L bytes) | zeros (0..2 bytes) | trailer (20 bytes)   = 3 * B bytes
    B      = ceil((L + 20) / 3)                                          (shard_size(L))
    shard i < 3: stream[i*B : (i+1)*B]      shard 3, 4: zfec check blocks

The trailer (little-endian, ``struct`` format ``<4sBBBBQI``)::

    off len field
      0   4 magic      b"VSEC"
      4   1 version    1
      5   1 k          3, data shards
      6   1 m          5, all shards
      7   1 reserved   0
      8   8 length     L, the chunk's size in bytes
     16   4 CRC32C     of bytes 0-15 (a damaged length is caught, not believed)

It sits at the very end of the stream: inside shard 2 for any chunk of 38
bytes or more, spread over the last shards for tinier ones. Decoding checks
every field of it and that the zero bytes are zero, then returns exactly the
first ``L`` bytes. All shards have the same size, ``B``, for every layout.

Why a trailer in the coded stream rather than a header on each shard:

* *Readers need nothing out of band.* A fragment list (index, node, size,
  checksum) is enough: the length comes back with the data from whichever 3
  shards are read, and the shard's index is the fragment's index, bound to
  its bytes by the SHA-256 recorded in the metadata.
* *Fewer copies.* zfec allocates its check blocks itself, so a header in
  front of each shard would copy all five (5/3 of the chunk) to prepend a
  few bytes. Here the data shards that hold only chunk bytes (shards 0 and 1
  of any chunk of 42 bytes or more) are views of the caller's buffer, the
  rest of the stream (shard 2: chunk tail, zeros, trailer) is built once,
  and the parity shards are zfec's own buffers. Decoding copies the chunk once, into
  the bytes it returns.
* *Protected like the data*: the trailer is coded, and covered by the shard
  checksums, with the chunk.

Integrity: :func:`reconstruct` checks shards against their recorded SHA-256
in index order (data shards first, as they need no arithmetic) and stops at
3 good ones; a shard that fails is skipped and reported, and with fewer than
3 good shards it raises :class:`NotEnoughShards`. Without checksums only the
shape is checked (shard sizes, the trailer), so a shard corrupted in its data
region decodes to wrong bytes: readers pass the checksums, or check the
chunk's own SHA-256 after decoding.

Everything here blocks for milliseconds (zfec and hashlib release the GIL on
large buffers): services call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import zfec

from protocol.api import parse_sha256
from protocol.errors import VStackError
from protocol.frames import crc32c

from .redundancy import DATA_SHARDS, TOTAL_SHARDS

__all__ = [
    "MAGIC",
    "TRAILER",
    "VERSION",
    "Buffer",
    "ErasureError",
    "NotEnoughShards",
    "Reconstructed",
    "Shard",
    "decode",
    "encode",
    "reconstruct",
    "shard_size",
]

K: Final = DATA_SHARDS
M: Final = TOTAL_SHARDS
MAGIC: Final = b"VSEC"
VERSION: Final = 1
TRAILER: Final = struct.Struct("<4sBBBBQI")
#: The zeros and trailer at the end of the stream: what decoding checks.
_TAIL: Final = TRAILER.size + K - 1
_HEX64: Final = re.compile(r"[0-9a-f]{64}")

#: Anything with the buffer protocol that holds bytes contiguously.
Buffer = bytes | bytearray | memoryview


class ErasureError(VStackError, ValueError):
    """Shards that cannot be decoded as given: bad indices, sizes that do not
    agree, a stream without a valid trailer, a shard with no recorded checksum."""


class NotEnoughShards(ErasureError):
    """Fewer than 3 shards passed their checks.

    Attributes:
        good: the indices that passed.
        corrupt: the indices that failed their SHA-256 (or had the wrong size).
    """

    def __init__(self, msg: str, *, good: Sequence[int] = (), corrupt: Sequence[int] = ()) -> None:
        super().__init__(msg)
        self.good = tuple(good)
        self.corrupt = tuple(corrupt)


@dataclass(frozen=True, kw_only=True)
class Shard:
    """One of the 5 shards of a chunk.

    ``data`` is a read-only view, not a copy: shards 0 and 1 are usually views
    of the bytes given to :func:`encode`, which must not change while the
    shards are in use (``bytes`` never do). ``bytes(shard.data)`` copies.
    """

    index: int
    data: memoryview
    sha256: str  # lowercase hex of data

    def __post_init__(self) -> None:
        if not 0 <= self.index < M:
            raise ErasureError(f"shard index must be in [0, {M}), not {self.index}")
        if not _HEX64.fullmatch(self.sha256):
            raise ErasureError("sha256 must be 64 lowercase hex digits")

    @property
    def size(self) -> int:
        return self.data.nbytes


@dataclass(frozen=True, kw_only=True)
class Reconstructed:
    """What :func:`reconstruct` decoded, and from which shards.

    ``corrupt`` lists the shards found bad among those checked: checking stops
    at the third good one, so a bad shard after it is not seen.
    """

    data: bytes
    used: tuple[int, ...]
    corrupt: tuple[int, ...]


def shard_size(length: int) -> int:
    """The size of each of the 5 shards of a ``length``-byte chunk."""
    if length < 0:
        raise ErasureError("a chunk's length cannot be negative")
    return -(-(length + TRAILER.size) // K)


def _bytes_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # TypeError for a buffer that is not contiguous
    return view.toreadonly()


def _trailer(length: int) -> bytes:
    fields = TRAILER.pack(MAGIC, VERSION, K, M, 0, length, 0)[:-4]
    return fields + crc32c(fields).to_bytes(4, "little")


def _data_blocks(view: memoryview, size: int) -> tuple[memoryview, ...]:
    """The 3 data shards: views of the chunk where they hold only chunk bytes,
    and one built buffer for the rest of the stream (chunk tail, zeros, trailer)."""
    length = view.nbytes
    whole = length // size  # data shards that are chunk bytes only (0..2)
    trailer = _trailer(length)
    zeros = bytes(K * size - length - TRAILER.size)
    rest = memoryview(b"".join((view[whole * size:], zeros, trailer)))
    return tuple(view[i * size:(i + 1) * size] if i < whole
                 else rest[(i - whole) * size:(i - whole + 1) * size] for i in range(K))


def _shard_indices(indices: Iterable[int]) -> tuple[int, ...]:
    wanted = tuple(sorted(set(indices)))
    if any(not 0 <= i < M for i in wanted):
        raise ErasureError(f"shard indices must be in [0, {M}): {list(wanted)}")
    return wanted


def encode(data: Buffer, *, indices: Iterable[int] | None = None) -> list[Shard]:
    """Cut ``data`` into 5 shards, any 3 of which rebuild it, each with its SHA-256.

    Args:
        data: the chunk (any size; ``bytes``, or a buffer that does not change
            while the shards live).
        indices: only these shards (e.g. the ones a repair must replace);
            the default is all 5. Parity shards not asked for are not computed.

    Returns:
        The shards, in index order.
    """
    view = _bytes_view(data)
    size = shard_size(view.nbytes)
    wanted = tuple(range(M)) if indices is None else _shard_indices(indices)
    if not wanted:
        return []
    blocks = zfec.Encoder(K, M).encode(_data_blocks(view, size), wanted)
    shards = []
    for index, block in zip(wanted, blocks, strict=True):
        block_view = memoryview(block)
        shards.append(Shard(index=index, data=block_view,
                            sha256=hashlib.sha256(block_view).hexdigest()))
    return shards


def _views(shards: Mapping[int, Buffer]) -> dict[int, memoryview]:
    views = {}
    for index, shard in shards.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < M:
            raise ErasureError(f"shard index must be in [0, {M}), not {index!r}")
        views[index] = _bytes_view(shard)
    return views


def _pick(views: Mapping[int, memoryview], checksums: Mapping[int, str] | None
          ) -> tuple[list[int], list[int]]:
    """The first 3 good shards, in index order, and the bad ones met before them."""
    expected: dict[int, str] | None = None
    common = 0
    if checksums is not None:
        missing = sorted(set(views) - set(checksums))
        if missing:
            raise ErasureError(f"no recorded checksum for shards {missing}")
        expected = {i: parse_sha256(checksums[i]) for i in views}
    elif views:
        # Without checksums, the size most shards have is the size (a truncated shard is bad).
        sizes = [v.nbytes for v in views.values()]
        common = max(sizes, key=lambda s: (sizes.count(s), s))
    good: list[int] = []
    corrupt: list[int] = []
    for index in sorted(views):
        view = views[index]
        if expected is not None:
            ok = hashlib.sha256(view).hexdigest() == expected[index]
        else:
            ok = view.nbytes == common
        (good if ok else corrupt).append(index)
        if len(good) == K:
            break
    return good, corrupt


def reconstruct(shards: Mapping[int, Buffer], *,
                checksums: Mapping[int, str] | None = None) -> Reconstructed:
    """The chunk from any 3 good shards, with which shards were used and which were bad.

    Args:
        shards: shard index -> its bytes (any number; 3 good ones suffice).
        checksums: shard index -> its recorded SHA-256 (hex, as fragments list
            it). When given, every shard in ``shards`` must have one, and a
            shard whose bytes do not match is skipped.

    Raises:
        NotEnoughShards: fewer than 3 shards passed their checks.
        ErasureError: bad indices, good shards of different sizes, or shards
            that do not decode to a V-Stack stream (no valid trailer).
    """
    views = _views(shards)
    good, corrupt = _pick(views, checksums)
    if len(good) < K:
        raise NotEnoughShards(
            f"{len(good)} good shards of the {K} needed (given {sorted(views)}, "
            f"corrupt {corrupt})", good=good, corrupt=corrupt)
    size = views[good[0]].nbytes
    if any(views[i].nbytes != size for i in good):
        raise ErasureError(f"shards {good} differ in size: they are not of one chunk")
    if K * size < TRAILER.size:
        raise ErasureError(f"shards of {size} bytes are too small to hold a chunk")
    primary = zfec.Decoder(K, M).decode(tuple(views[i] for i in good), tuple(good))
    return Reconstructed(data=_unframe(primary, size), used=tuple(good), corrupt=tuple(corrupt))


def decode(shards: Mapping[int, Buffer], *, checksums: Mapping[int, str] | None = None) -> bytes:
    """The exact bytes of the chunk, from any 3 good shards (see :func:`reconstruct`)."""
    return reconstruct(shards, checksums=checksums).data


def _unframe(primary: Sequence[Buffer], size: int) -> bytes:
    """The chunk out of the 3 decoded data shards: check the trailer, drop it."""
    blocks = [memoryview(b) for b in primary]
    # The zeros and trailer: in the last data shard, or (tiny chunks) across the shards.
    tail = blocks[-1][-_TAIL:] if size >= _TAIL else memoryview(b"".join(blocks))[-_TAIL:]
    end = len(tail) - TRAILER.size
    magic, version, k, m, reserved, length, crc = TRAILER.unpack_from(tail, end)
    if (magic != MAGIC or version != VERSION or (k, m, reserved) != (K, M, 0)
            or crc != crc32c(tail[end:-4])):
        raise ErasureError("the shards do not decode to a V-Stack chunk (bad trailer)")
    if shard_size(length) != size:
        raise ErasureError(f"the trailer's length {length} does not fit shards of {size} bytes")
    zeros = K * size - TRAILER.size - length  # 0..2, as the size fits
    if any(tail[end - zeros:end]):
        raise ErasureError("the shards do not decode to a V-Stack chunk (padding not zero)")
    pieces = []
    left = length
    for block in blocks:
        pieces.append(block[:min(left, size)])
        left -= min(left, size)
    return b"".join(pieces)
