"""The in-memory chunk index: numpy arrays, about 45 bytes per chunk.

Theory of operation
-------------------
A node may hold millions of chunks; a dict of Python objects would cost
~200 bytes each. The index instead keeps one *dense* row per chunk in
parallel numpy arrays (64-bit key hash, sequence, superblock, offset in
:data:`~vstack.records.ALIGN` units, size, CRC32C, flags: 33 bytes) and an
open-addressing hash table of ``uint32`` row numbers + 1 (0 = empty) with
linear probing, kept at most half full.

Keys themselves are not kept in memory. A lookup returns every row whose
64-bit hash matches (almost always one); the store confirms the key against
the record header on disk, which it reads anyway for the SHA-256.

Removing a row moves the last row into its place (the table entry of the
moved row is repointed), and the freed table slot is repaired with
backward-shift deletion, so no tombstones ever accumulate in the table.

The arrays are checkpointed with ``numpy.save`` and loaded back whole, so a
restart does not rebuild the table.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["FLAG_QUARANTINED", "FLAG_VERIFIED", "ChunkIndex", "key_hash"]

FLAG_VERIFIED: Final = 0x01  # data checked against its CRC since this process started
FLAG_QUARANTINED: Final = 0x02  # data found corrupt; never served

_COLUMNS: Final = {
    "hash": np.uint64,
    "seq": np.uint64,
    "sb": np.uint32,
    "off": np.uint32,
    "size": np.uint32,
    "crc": np.uint32,
    "flags": np.uint8,
}
_MIN_TABLE: Final = 1024


def key_hash(key: bytes) -> int:
    """The 64-bit hash the index files a key under (never 0)."""
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return h or 1


class ChunkIndex:
    """Rows of chunk locations, found by key hash."""

    def __init__(self, capacity: int = 1024) -> None:
        self._n = 0
        self._cols: dict[str, npt.NDArray[np.generic]] = {
            name: np.zeros(max(capacity, 16), dtype=dt) for name, dt in _COLUMNS.items()
        }
        self._table: npt.NDArray[np.uint32] = np.zeros(_MIN_TABLE, dtype=np.uint32)
        self._mask = _MIN_TABLE - 1
        while self._table.size < 2 * capacity:
            self._grow_table()

    # -- columns ------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def col(self, name: str) -> npt.NDArray[np.generic]:
        """A live view of one column (rows ``0..len-1``)."""
        return self._cols[name][: self._n]

    def get(self, row: int, name: str) -> int:
        return int(self._cols[name][row])

    def set(self, row: int, name: str, value: int) -> None:
        self._cols[name][row] = value

    @property
    def nbytes(self) -> int:
        """Memory held by the index (arrays and table)."""
        return sum(int(a.nbytes) for a in self._cols.values()) + int(self._table.nbytes)

    # -- lookups ------------------------------------------------------------

    def find(self, h: int) -> list[int]:
        """Rows whose key hash is ``h``."""
        hashes = self._cols["hash"]
        table, mask = self._table, self._mask
        i = h & mask
        rows: list[int] = []
        while True:
            slot = int(table[i])
            if slot == 0:
                return rows
            if int(hashes[slot - 1]) == h:
                rows.append(slot - 1)
            i = (i + 1) & mask

    # -- changes ------------------------------------------------------------

    def insert(self, h: int, *, seq: int, sb: int, off: int, size: int, crc: int,
               flags: int = 0) -> int:
        """Add a row (the caller has checked the key is not present); returns it."""
        if self._n == self._cols["hash"].size:
            self._grow_rows()
        if 2 * (self._n + 1) > self._table.size:
            self._grow_table()
        row = self._n
        c = self._cols
        c["hash"][row] = h
        c["seq"][row] = seq
        c["sb"][row] = sb
        c["off"][row] = off
        c["size"][row] = size
        c["crc"][row] = crc
        c["flags"][row] = flags
        self._n += 1
        self._table_put(h, row)
        return row

    def remove(self, row: int) -> None:
        """Delete ``row``; the last row moves into its place."""
        if not 0 <= row < self._n:
            raise IndexError(row)
        self._table_delete(self._table_index_of(row))
        last = self._n - 1
        if row != last:
            i = self._table_index_of(last)
            for col in self._cols.values():
                col[row] = col[last]
            self._table[i] = row + 1
        self._n -= 1

    def _table_index_of(self, row: int) -> int:
        h = int(self._cols["hash"][row])
        i = h & self._mask
        while int(self._table[i]) != row + 1:
            if int(self._table[i]) == 0:
                raise KeyError(row)
            i = (i + 1) & self._mask
        return i

    def _table_put(self, h: int, row: int) -> None:
        table, mask = self._table, self._mask
        i = h & mask
        while table[i]:
            i = (i + 1) & mask
        table[i] = row + 1

    def _table_delete(self, i: int) -> None:
        """Backward-shift deletion for linear probing."""
        table, mask, hashes = self._table, self._mask, self._cols["hash"]
        j = i
        while True:
            table[i] = 0
            while True:
                j = (j + 1) & mask
                slot = int(table[j])
                if slot == 0:
                    return
                home = int(hashes[slot - 1]) & mask
                # Move table[j] to i unless its home lies cyclically in (i, j].
                if (j > i and (home <= i or home > j)) or (j < i and home <= i and home > j):
                    break
            table[i] = table[j]
            i = j

    def _grow_rows(self) -> None:
        new = max(16, self._cols["hash"].size * 5 // 4 + 16)
        for name, col in self._cols.items():
            bigger = np.zeros(new, dtype=col.dtype)
            bigger[: self._n] = col[: self._n]
            self._cols[name] = bigger

    def _grow_table(self) -> None:
        size = self._table.size * 2
        self._table = np.zeros(size, dtype=np.uint32)
        self._mask = size - 1
        self._rebuild_table()

    def _rebuild_table(self) -> None:
        """Reinsert every row (vectorised placement of rows into the table)."""
        hashes = np.asarray(self._cols["hash"][: self._n], dtype=np.uint64)
        table, mask = self._table, self._mask
        table[:] = 0
        pending = np.arange(self._n, dtype=np.int64)
        pos = (hashes & np.uint64(mask)).astype(np.int64)
        # Place rows in rounds: in each round, the first claimant of each free
        # slot wins and the others probe on, so every row still sits after its
        # home slot with no empty slot in between, as linear probing needs.
        while pending.size:
            free = table[pos] == 0
            cand_rows, cand_pos = pending[free], pos[free]
            uniq_pos, first = np.unique(cand_pos, return_index=True)
            table[uniq_pos] = (cand_rows[first] + 1).astype(np.uint32)
            placed = np.zeros(pending.size, dtype=bool)
            placed_idx = np.flatnonzero(free)[first]
            placed[placed_idx] = True
            pending, pos = pending[~placed], (pos[~placed] + 1) & mask

    # -- persistence --------------------------------------------------------

    def arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Copies of the live rows and the table, for a checkpoint."""
        out = {name: col[: self._n].copy() for name, col in self._cols.items()}
        out["table"] = self._table.copy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> ChunkIndex:
        n = int(arrays["hash"].size)
        self = cls.__new__(cls)
        self._n = n
        self._cols = {}
        for name, dt in _COLUMNS.items():
            col = np.zeros(max(16, n * 5 // 4 + 16), dtype=dt)
            col[:n] = arrays[name]
            self._cols[name] = col
        table = arrays.get("table")
        if table is not None and table.size >= 2 * n and table.size & (table.size - 1) == 0:
            self._table = np.array(table, dtype=np.uint32)
            self._mask = self._table.size - 1
        else:
            size = _MIN_TABLE
            while size < 2 * max(n, 1):
                size *= 2
            self._table = np.zeros(size, dtype=np.uint32)
            self._mask = size - 1
            self._rebuild_table()
        return self
