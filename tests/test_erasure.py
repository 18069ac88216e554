"""Erasure coding: any 3 of the 5 shards give back exactly the chunk; bad shards are skipped."""

from __future__ import annotations

import hashlib
import os
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import VStackError
from protocol.frames import crc32c
from vstack import erasure
from vstack.erasure import (
    MAGIC,
    TRAILER,
    VERSION,
    ErasureError,
    NotEnoughShards,
    Shard,
    decode,
    encode,
    reconstruct,
    shard_size,
)
from vstack.settings import DEFAULT_MAX_CHUNK_BYTES

MIB = 1024 * 1024
SIZES = [0, 1, 2, 3, 4, 1000, 2 * MIB + 1, DEFAULT_MAX_CHUNK_BYTES]
SUBSETS = list(combinations(range(5), 3))


def chunk(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating bytes (a repeating pattern could hide a misplaced block)."""
    out = bytearray()
    block = seed.to_bytes(8, "little")
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size]) if size < 4096 else bytes(out[:64]) + os.urandom(size - 64)


def flip(data: memoryview | bytes, at: int = 0) -> bytes:
    """A copy of ``data`` with one byte changed."""
    b = bytearray(data)
    b[at % len(b)] ^= 0x01
    return bytes(b)


def checksums(shards: list[Shard]) -> dict[int, str]:
    return {s.index: s.sha256 for s in shards}


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}B")
def coded(request: pytest.FixtureRequest) -> tuple[bytes, list[Shard]]:
    data = chunk(request.param, seed=request.param)
    return data, encode(data)


# -- round trips ---------------------------------------------------------------------


def test_every_3_of_5_shards_give_back_exactly_the_chunk(coded: tuple[bytes, list[Shard]]) -> None:
    data, shards = coded
    sums = checksums(shards)
    for subset in SUBSETS:
        got = decode({i: shards[i].data for i in subset},
                     checksums={i: sums[i] for i in subset})
        assert type(got) is bytes
        assert len(got) == len(data), subset
        assert got == data, subset
        # Without checksums too (shape checks only), and from more than 3 shards.
        assert decode({i: shards[i].data for i in subset}) == data
    assert decode({s.index: s.data for s in shards}, checksums=sums) == data


def test_shards_are_five_of_one_size_each_with_its_sha256(coded: tuple[bytes, list[Shard]]) -> None:
    data, shards = coded
    assert [s.index for s in shards] == [0, 1, 2, 3, 4]
    assert {s.size for s in shards} == {shard_size(len(data))}
    for s in shards:
        assert s.sha256 == hashlib.sha256(s.data).hexdigest()
    # Each shard is a third of the chunk, its trailer and at most 2 bytes of padding.
    assert 3 * shards[0].size <= len(data) + TRAILER.size + 2


def test_the_data_shards_are_the_chunk_then_zeros_then_the_trailer() -> None:
    """The stream layout of the module docstring, byte by byte."""
    for size in (0, 1, 2, 3, 37, 38, 41, 42, 1000):
        data = chunk(size, seed=1)
        stream = b"".join(bytes(s.data) for s in encode(data)[:3])
        b = shard_size(size)
        assert b == -(-(size + 20) // 3)
        assert len(stream) == 3 * b
        zeros = 3 * b - size - 20
        assert 0 <= zeros <= 2
        assert stream[:size] == data
        assert stream[size:size + zeros] == bytes(zeros)
        trailer = stream[-20:]
        assert trailer[:4] == MAGIC == b"VSEC"
        assert trailer[4:8] == bytes([VERSION, 3, 5, 0])
        assert int.from_bytes(trailer[8:16], "little") == size
        assert int.from_bytes(trailer[16:20], "little") == crc32c(trailer[:16])


def test_data_shards_are_views_of_the_callers_bytes_not_copies() -> None:
    data = chunk(2 * MIB, seed=2)
    shards = encode(data)
    assert shards[0].data.obj is data
    assert shards[1].data.obj is data
    assert shards[0].data.readonly
    # The last data shard (tail, zeros, trailer) and the parity shards are built.
    assert shards[2].data.obj is not data


def test_any_buffer_encodes_like_bytes() -> None:
    data = chunk(5000, seed=3)
    want = [s.sha256 for s in encode(data)]
    assert [s.sha256 for s in encode(bytearray(data))] == want
    assert [s.sha256 for s in encode(memoryview(data))] == want
    words = memoryview(bytearray(data[:4000])).cast("I")  # not a byte format
    assert decode({s.index: s.data for s in encode(words)}) == data[:4000]


def test_only_the_shards_asked_for_are_made() -> None:
    data = chunk(10_000, seed=4)
    full = encode(data)
    some = encode(data, indices=[4, 1, 4])
    assert [s.index for s in some] == [1, 4]
    assert [s.sha256 for s in some] == [full[1].sha256, full[4].sha256]
    assert encode(data, indices=()) == []
    with pytest.raises(ErasureError):
        encode(data, indices=[5])


def test_shard_validates_itself() -> None:
    with pytest.raises(ErasureError):
        Shard(index=5, data=memoryview(b"x"), sha256="0" * 64)
    with pytest.raises(ErasureError):
        Shard(index=0, data=memoryview(b"x"), sha256="0" * 63)
    with pytest.raises(ErasureError):
        shard_size(-1)


# -- corrupt, missing and mismatched shards -------------------------------------------


@pytest.mark.parametrize("size", [1000, 2 * MIB + 1])
def test_a_corrupt_shard_is_detected_and_skipped(size: int) -> None:
    data = chunk(size, seed=5)
    shards = encode(data)
    sums = checksums(shards)
    for bad in range(5):
        given: dict[int, erasure.Buffer] = {s.index: s.data for s in shards}
        given[bad] = flip(shards[bad].data, at=bad * 7919)
        res = reconstruct(given, checksums=sums)
        assert res.data == data
        assert bad not in res.used
        # Shards are checked in index order and checking stops at 3 good ones.
        assert res.corrupt == ((bad,) if bad < 3 else ())
        # With exactly 4 shards, the corrupt one among them.
        for absent in set(range(5)) - {bad}:
            four = {i: v for i, v in given.items() if i != absent}
            res = reconstruct(four, checksums=sums)
            assert res.data == data
            assert bad not in res.used


def test_two_corrupt_and_three_good_shards_still_decode() -> None:
    data = chunk(1000, seed=6)
    shards = encode(data)
    sums = checksums(shards)
    for bad in combinations(range(5), 2):
        given = {s.index: (flip(s.data, at=-1) if s.index in bad else s.data) for s in shards}
        res = reconstruct(given, checksums=sums)
        assert res.data == data
        assert set(res.used) == set(range(5)) - set(bad)
        # Every bad shard met before the third good one is reported.
        assert set(res.corrupt) == {i for i in bad if i < max(res.used)}


def test_three_corrupt_shards_fail_clearly() -> None:
    data = chunk(1000, seed=7)
    shards = encode(data)
    sums = checksums(shards)
    for bad in combinations(range(5), 3):
        given = {s.index: (flip(s.data) if s.index in bad else s.data) for s in shards}
        with pytest.raises(NotEnoughShards, match="2 good shards of the 3 needed") as err:
            decode(given, checksums=sums)
        assert isinstance(err.value, VStackError)
        assert set(err.value.corrupt) == set(bad)
        assert set(err.value.good) == set(range(5)) - set(bad)


@pytest.mark.parametrize("present", [(), (0,), (3,), (0, 4), (3, 4), (1, 2)])
def test_fewer_than_3_shards_fail_clearly(present: tuple[int, ...]) -> None:
    shards = encode(chunk(100, seed=8))
    given = {i: shards[i].data for i in present}
    for sums in (None, checksums(shards)):
        with pytest.raises(NotEnoughShards) as err:
            decode(given, checksums=sums)
        assert err.value.good == present
        assert err.value.corrupt == ()


def test_without_checksums_a_truncated_shard_is_skipped_by_its_size() -> None:
    data = chunk(1000, seed=9)
    shards = encode(data)
    given = {s.index: s.data for s in shards}
    given[1] = shards[1].data[:-1]
    res = reconstruct(given)
    assert res.data == data
    assert res.corrupt == (1,)


@pytest.mark.parametrize("size", [0, 1, 999, 1000])
def test_a_damaged_trailer_or_padding_is_never_believed(size: int) -> None:
    """Without checksums, any change to the zeros or trailer is caught (CRC32C, zero check)."""
    data = chunk(size, seed=10)
    shards = encode(data)
    b = shard_size(size)
    stream = bytearray(b"".join(bytes(s.data) for s in shards[:3]))
    for at in range(size, 3 * b):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(stream)
            damaged[at] ^= mask
            given = {i: bytes(damaged[i * b:(i + 1) * b]) for i in range(3)}
            with pytest.raises(ErasureError, match="not decode to a V-Stack chunk"):
                decode(given)


@pytest.mark.parametrize("claimed", [0, 100, 994, 998, 5000, 2**64 - 1])
def test_a_well_formed_trailer_with_a_length_that_does_not_fit_is_refused(claimed: int) -> None:
    """A trailer with a valid CRC (another encoder, a crafted shard) still has to fit."""
    b = shard_size(997)  # 995..997 fit shards of this size
    fields = TRAILER.pack(MAGIC, VERSION, 3, 5, 0, claimed, 0)[:16]
    stream = bytes(3 * b - 20) + fields + crc32c(fields).to_bytes(4, "little")
    given = {i: stream[i * b:(i + 1) * b] for i in range(3)}
    with pytest.raises(ErasureError, match=f"length {claimed} does not fit shards of {b} bytes"):
        decode(given)
    fields = TRAILER.pack(MAGIC, VERSION, 3, 5, 0, 996, 0)[:16]
    stream = bytes(3 * b - 20) + fields + crc32c(fields).to_bytes(4, "little")
    assert decode({i: stream[i * b:(i + 1) * b] for i in range(3)}) == bytes(996)


def test_shards_of_different_chunks_are_refused() -> None:
    a, b = encode(chunk(1000, seed=11)), encode(chunk(2000, seed=12))
    mixed = {0: a[0].data, 1: a[1].data, 2: b[2].data}
    with pytest.raises(ErasureError, match="differ in size"):
        decode(mixed, checksums={0: a[0].sha256, 1: a[1].sha256, 2: b[2].sha256})


def test_checksums_must_cover_every_shard_given_and_may_be_written_any_way() -> None:
    data = chunk(500, seed=13)
    shards = encode(data)
    sums = checksums(shards)
    given = {s.index: s.data for s in shards}
    with pytest.raises(ErasureError, match=r"no recorded checksum for shards \[4\]"):
        decode(given, checksums={i: c for i, c in sums.items() if i != 4})
    loose = {i: f"sha256:{c.upper()}" for i, c in sums.items()}
    assert decode(given, checksums=loose) == data


@pytest.mark.parametrize("index", [-1, 5, 255, True, "0"])
def test_bad_shard_indices_are_refused(index: object) -> None:
    shards = encode(b"abc")
    given: dict[object, bytes] = {i: bytes(shards[i].data) for i in (2, 3, 4)}
    given[index] = bytes(shards[0].data)  # True would be shard 1
    with pytest.raises(ErasureError, match="shard index"):
        decode(given)  # type: ignore[arg-type]


def test_tiny_shards_that_cannot_hold_a_trailer_are_refused() -> None:
    with pytest.raises(ErasureError, match="too small"):
        decode({0: b"ab", 1: b"cd", 2: b"ef"})


# -- properties ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=3000), subset=st.sampled_from(SUBSETS),
       extra=st.sets(st.integers(0, 4), max_size=2), bad=st.sets(st.integers(0, 4), max_size=2),
       at=st.integers(0, 10_000))
def test_any_good_3_shards_rebuild_any_chunk(data: bytes, subset: tuple[int, ...],
                                             extra: set[int], bad: set[int], at: int) -> None:
    shards = encode(data)
    sums = checksums(shards)
    # The 3 of ``subset`` are good; up to 2 more shards are given, possibly corrupt.
    given = {i: shards[i].data for i in subset}
    for i in (extra | bad) - set(subset):
        given[i] = memoryview(flip(shards[i].data, at)) if i in bad else shards[i].data
    res = reconstruct(given, checksums=sums)
    assert res.data == data
    assert len(res.used) == 3
    assert not set(res.used) & (bad - set(subset))
    assert decode({i: shards[i].data for i in subset}) == data
