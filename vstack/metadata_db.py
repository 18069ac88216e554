"""The metadata replica's SQLite database (apsw): acceptor state and learned tables.

Theory of operation
-------------------
One file holds everything a replica knows:

* ``consensus``: the acceptor's durable slot per register key (promised and
  accepted ballots, accepted value as JSON, phase). :meth:`MetadataDB.persist`
  writes a whole batch of changed slots in one transaction, with
  ``synchronous=FULL``, before any reply for that batch leaves: concurrent
  rounds share one commit.
* the *materialized* tables the guide documents (``videos``, ``chunks``,
  ``chunk_replicas``, ``chunk_fragments``, ``storage_nodes``,
  ``redundancy_overrides``), rewritten from a register's value **in the same
  transaction** that marks it committed, so ``sqlite3 metadata.db "SELECT *
  FROM videos"`` always shows chosen values only;
* ``view_counts``: one counter per (video, replica), merged by taking each
  replica's maximum, so views never need consensus and are never lost or
  counted twice;
* ``node_heartbeats``: what this replica itself last heard from each storage
  node (local, not replicated: every node heartbeats every replica);
* ``meta``: the highest ballot round this replica may use, persisted before
  it is used.

Register keys and values are described in :mod:`vstack.registers`; every
read the API makes is a method of :class:`~vstack.metadata_reads.MetadataReads`.

Calls block (SQLite, fsync): the service runs them in a worker thread behind
one ``CapacityLimiter(1)``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apsw

from .metadata_reads import MetadataReads
from .paxos import Ballot, Phase, Slot, Value
from .registers import parse_key

__all__ = ["MetadataDB", "utc_now"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consensus (
    key TEXT PRIMARY KEY,
    promised_ballot INTEGER NOT NULL,
    accepted_ballot INTEGER NOT NULL,
    accepted_value TEXT,
    phase TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS videos (
    video_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    duration_sec INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL DEFAULT 0,
    chunk_size_bytes INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS videos_by_age ON videos (created_ns DESC, video_id);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id TEXT PRIMARY KEY,
    video_id TEXT NOT NULL,
    sequence_num INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    redundancy_mode TEXT NOT NULL,
    duration_sec REAL,
    start_sec REAL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_video ON chunks (video_id, sequence_num);
CREATE TABLE IF NOT EXISTS chunk_replicas (
    chunk_id TEXT NOT NULL,
    node_url TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    PRIMARY KEY (chunk_id, node_url)
);
CREATE TABLE IF NOT EXISTS chunk_fragments (
    fragment_id TEXT PRIMARY KEY,
    chunk_id TEXT NOT NULL,
    fragment_index INTEGER NOT NULL,
    node_url TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fragments_by_chunk ON chunk_fragments (chunk_id, fragment_index);
CREATE TABLE IF NOT EXISTS storage_nodes (
    node_url TEXT PRIMARY KEY,
    node_id TEXT UNIQUE NOT NULL,
    last_heartbeat TEXT,
    disk_usage_percent REAL NOT NULL DEFAULT 0,
    chunk_count INTEGER NOT NULL DEFAULT 0,
    free_bytes INTEGER,
    status TEXT NOT NULL,
    version TEXT
);
CREATE TABLE IF NOT EXISTS redundancy_overrides (video_id TEXT PRIMARY KEY, mode TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS view_counts (
    video_id TEXT NOT NULL,
    replica INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (video_id, replica)
);
"""


def utc_now(now: float | None = None) -> str:
    """SQLite ``CURRENT_TIMESTAMP`` format, in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() if now is None else now))


class MetadataDB(MetadataReads):
    """One replica's database: acceptor state, materialized tables, counters."""

    def __init__(self, path: Path | str, *, synchronous: str = "FULL") -> None:
        """Open (creating) the database; ``synchronous`` is SQLite's durability level.

        Anything but FULL is for tests that crash processes, not machines.
        """
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError("synchronous must be FULL, NORMAL or OFF")
        self.path = str(path)
        self.synchronous = synchronous
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = apsw.Connection(self.path)
        self.conn.setbusytimeout(5000)
        cur = self.conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=OFF")
        with self.conn:
            cur.execute(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.conn.cursor().execute(sql, tuple(args)))

    # -- meta ----------------------------------------------------------------------

    def get_meta(self, name: str, default: str | None = None) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else default

    def set_meta(self, name: str, value: str) -> None:
        with self.conn:
            self.conn.cursor().execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    # -- acceptor state ----------------------------------------------------------------

    def load_slots(self) -> dict[str, Slot]:
        return {
            key: Slot(
                promised=Ballot.from_int(p), accepted=Ballot.from_int(a),
                value=None if v is None else json.loads(v), phase=Phase(ph),
            )
            for key, p, a, v, ph in self._rows(
                "SELECT key, promised_ballot, accepted_ballot, accepted_value, phase FROM consensus")
        }

    def persist(self, slots: dict[str, Slot], learned: Iterable[tuple[str, Value]] = (), *,
                sync: bool = True) -> None:
        """Write changed slots and apply learned (committed) values: one transaction.

        ``sync=False`` (only learned values, already durable on a quorum) skips
        the fsync: with WAL, the transaction is still atomic and ordered, and
        the next synced one makes it durable too.
        """
        cur = self.conn.cursor()
        if not sync and self.synchronous == "FULL":
            cur.execute("PRAGMA synchronous=NORMAL")
        try:
            self._persist(cur, slots, learned)
        finally:
            if not sync and self.synchronous == "FULL":
                cur.execute("PRAGMA synchronous=FULL")

    def _persist(self, cur: apsw.Cursor, slots: dict[str, Slot],
                 learned: Iterable[tuple[str, Value]]) -> None:
        with self.conn:
            for key, slot in slots.items():
                cur.execute(
                    "INSERT INTO consensus (key, promised_ballot, accepted_ballot, accepted_value,"
                    " phase) VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
                    " promised_ballot = excluded.promised_ballot,"
                    " accepted_ballot = excluded.accepted_ballot,"
                    " accepted_value = excluded.accepted_value, phase = excluded.phase",
                    (key, slot.promised.to_int(), slot.accepted.to_int(),
                     None if slot.value is None else json.dumps(slot.value, sort_keys=True),
                     slot.phase.value))
            for key, value in learned:
                self._materialize(cur, key, value)

    # -- materialized tables --------------------------------------------------------------

    def _materialize(self, cur: apsw.Cursor, key: str, value: Value) -> None:
        try:
            rk = parse_key(key)
        except ValueError:
            return  # a register with no table behind it
        kind, ident = rk.kind, rk.ident
        if kind == "video":
            self._put_video(cur, ident, value)
        elif kind == "chunk":
            self._put_chunk(cur, ident, value)
        elif kind == "override":
            if value.get("mode"):
                cur.execute("INSERT INTO redundancy_overrides (video_id, mode) VALUES (?, ?) "
                            "ON CONFLICT(video_id) DO UPDATE SET mode = excluded.mode",
                            (ident, value["mode"]))
            else:
                cur.execute("DELETE FROM redundancy_overrides WHERE video_id = ?", (ident,))
        elif kind == "node":
            cur.execute("DELETE FROM storage_nodes WHERE node_id = ? AND node_url != ?",
                        (ident, value["node_url"]))
            cur.execute(
                "INSERT INTO storage_nodes (node_url, node_id, status, version, last_heartbeat)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(node_url) DO UPDATE SET"
                " node_id = excluded.node_id, status = excluded.status,"
                " version = excluded.version",
                (value["node_url"], ident, value["status"], value.get("version"),
                 value.get("since")))

    @staticmethod
    def _put_video(cur: apsw.Cursor, video_id: str, v: Value) -> None:
        if v.get("removed"):
            chunk_ids = [r[0] for r in cur.execute(
                "SELECT chunk_id FROM chunks WHERE video_id = ?", (video_id,))]
            for cid in chunk_ids:
                cur.execute("DELETE FROM chunk_replicas WHERE chunk_id = ?", (cid,))
                cur.execute("DELETE FROM chunk_fragments WHERE chunk_id = ?", (cid,))
            cur.execute("DELETE FROM chunks WHERE video_id = ?", (video_id,))
            cur.execute("DELETE FROM videos WHERE video_id = ?", (video_id,))
            return
        cur.execute(
            "INSERT INTO videos (video_id, title, duration_sec, chunk_size_bytes, status,"
            " created_at, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(video_id) DO UPDATE"
            " SET title = excluded.title, duration_sec = excluded.duration_sec,"
            " status = excluded.status",
            (video_id, v["title"], v["duration_sec"], v.get("chunk_size_bytes", 2097152),
             v["status"], v["created_at"], v["created_ns"]))
        cur.execute("UPDATE videos SET total_chunks = (SELECT COUNT(*) FROM chunks WHERE video_id = ?)"
                    " WHERE video_id = ?", (video_id, video_id))

    @staticmethod
    def _put_chunk(cur: apsw.Cursor, chunk_id: str, c: Value) -> None:
        # Another chunk id at the same (video, sequence) is replaced (contract).
        for (old,) in list(cur.execute(
                "SELECT chunk_id FROM chunks WHERE video_id = ? AND sequence_num = ? AND chunk_id != ?",
                (c["video_id"], c["sequence_num"], chunk_id))):
            cur.execute("DELETE FROM chunks WHERE chunk_id = ?", (old,))
            cur.execute("DELETE FROM chunk_replicas WHERE chunk_id = ?", (old,))
            cur.execute("DELETE FROM chunk_fragments WHERE chunk_id = ?", (old,))
        cur.execute(
            "INSERT INTO chunks (chunk_id, video_id, sequence_num, size_bytes, checksum,"
            " redundancy_mode, duration_sec, start_sec, created_at) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(chunk_id) DO UPDATE SET video_id = excluded.video_id,"
            " sequence_num = excluded.sequence_num, size_bytes = excluded.size_bytes,"
            " checksum = excluded.checksum, redundancy_mode = excluded.redundancy_mode,"
            " duration_sec = excluded.duration_sec, start_sec = excluded.start_sec",
            (chunk_id, c["video_id"], c["sequence_num"], c["size_bytes"], c["checksum"],
             c.get("redundancy_mode", "replication"), c.get("duration_sec"), c.get("start_sec"),
             c["created_at"]))
        cur.execute("DELETE FROM chunk_replicas WHERE chunk_id = ?", (chunk_id,))
        for url in c.get("replicas") or []:
            cur.execute("INSERT OR IGNORE INTO chunk_replicas (chunk_id, node_url) VALUES (?, ?)",
                        (chunk_id, url))
        cur.execute("DELETE FROM chunk_fragments WHERE chunk_id = ?", (chunk_id,))
        for f in c.get("fragments") or []:
            cur.execute(
                "INSERT OR REPLACE INTO chunk_fragments (fragment_id, chunk_id, fragment_index,"
                " node_url, size_bytes, checksum, created_at) VALUES (?,?,?,?,?,?,?)",
                (f["fragment_id"], chunk_id, f["fragment_index"], f["node_url"], f["size_bytes"],
                 f["checksum"], c["created_at"]))
        cur.execute("UPDATE videos SET total_chunks = (SELECT COUNT(*) FROM chunks WHERE video_id = ?)"
                    " WHERE video_id = ?", (c["video_id"], c["video_id"]))

    # -- heartbeats (local) and view counts (merged) -----------------------------------------

    def record_heartbeat(self, node_url: str, *, when: str, disk_usage_percent: float | None = None,
                         chunk_count: int | None = None, free_bytes: int | None = None,
                         version: str | None = None) -> None:
        with self.conn:
            self.conn.cursor().execute(
                "UPDATE storage_nodes SET last_heartbeat = ?,"
                " disk_usage_percent = COALESCE(?, disk_usage_percent),"
                " chunk_count = COALESCE(?, chunk_count), free_bytes = COALESCE(?, free_bytes),"
                " version = COALESCE(?, version) WHERE node_url = ?",
                (when, disk_usage_percent, chunk_count, free_bytes, version, node_url))

    def add_view(self, video_id: str, replica: int) -> int:
        with self.conn:
            self.conn.cursor().execute(
                "INSERT INTO view_counts (video_id, replica, count) VALUES (?, ?, 1)"
                " ON CONFLICT(video_id, replica) DO UPDATE SET count = count + 1",
                (video_id, replica))
        return self.view_count(video_id)

    def merge_views(self, counts: Iterable[tuple[str, int, int]]) -> None:
        """Merge other replicas' counters: each (video, replica) keeps its maximum."""
        with self.conn:
            cur = self.conn.cursor()
            for video_id, replica, count in counts:
                cur.execute(
                    "INSERT INTO view_counts (video_id, replica, count) VALUES (?, ?, ?)"
                    " ON CONFLICT(video_id, replica) DO UPDATE SET"
                    " count = MAX(count, excluded.count)", (video_id, replica, count))
