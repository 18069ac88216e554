"""The numpy chunk index against a plain dict model."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vstack.index import ChunkIndex, key_hash


def check_model(ix: ChunkIndex, model: dict[int, int]) -> None:
    assert len(ix) == len(model)
    for h, seq in model.items():
        rows = ix.find(h)
        assert len(rows) == 1
        assert ix.get(rows[0], "seq") == seq


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(1, 300)), max_size=400))
def test_random_inserts_and_removes_match_a_dict(ops: list[tuple[bool, int]]) -> None:
    ix = ChunkIndex(capacity=4)
    model: dict[int, int] = {}
    for seq, (insert, k) in enumerate(ops):
        # Few distinct table bits: force long probe runs and wrap-around.
        h = (k * 0x9E3779B97F4A7C15) & ((1 << 64) - 1) or 1
        if insert and h not in model:
            ix.insert(h, seq=seq, sb=1, off=2, size=3, crc=4)
            model[h] = seq
        elif not insert and h in model:
            [row] = ix.find(h)
            ix.remove(row)
            del model[h]
    check_model(ix, model)
    again = ChunkIndex.from_arrays(ix.arrays())
    check_model(again, model)
    table_less = ix.arrays()
    del table_less["table"]
    check_model(ChunkIndex.from_arrays(table_less), model)


def test_colliding_hashes_are_all_found() -> None:
    ix = ChunkIndex()
    for seq in range(5):
        ix.insert(42, seq=seq, sb=0, off=seq, size=1, crc=0)
    assert sorted(ix.get(r, "seq") for r in ix.find(42)) == [0, 1, 2, 3, 4]
    ix.remove(ix.find(42)[0])
    assert len(ix.find(42)) == 4


def test_memory_per_chunk_stays_small() -> None:
    ix = ChunkIndex()
    n = 100_000
    for i in range(n):
        ix.insert(key_hash(f"video-chunk-{i:06d}".encode()), seq=i, sb=0, off=i, size=2 << 20,
                  crc=i)
    assert ix.nbytes / n <= 64
    sbs = ix.col("sb")
    assert isinstance(sbs, np.ndarray)
    assert sbs.size == n
