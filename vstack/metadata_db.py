"""The metadata replica's SQLite database (apsw): acceptor state and learned tables.

Theory of operation
-------------------
One file holds everything a replica knows:

* ``consensus``: the acceptor's durable slot per register key (promised and
  accepted ballots, accepted value as JSON, phase). :meth:`MetadataDB.persist`
  writes a whole batch of changed slots in one transaction, with
  ``synchronous=FULL``, before any reply for that batch leaves: concurrent
  rounds share one commit.
* ``learned``: the learner's state, apart from the acceptor's: the newest
  chosen value of each key, its ballot, and a change sequence number
  (``seq``) that peers catching up use as a cursor. Learning never depends
  on what the acceptor promised since;
* the *materialized* tables the guide documents (``videos``, ``chunks``,
  ``chunk_replicas``, ``chunk_fragments``, ``storage_nodes``,
  ``redundancy_overrides``), written from a learned value **in the same
  transaction** that records it, so ``sqlite3 metadata.db "SELECT * FROM
  videos"`` always shows chosen values only; each row is a function of
  register values alone, whatever order they were learned in
  (:mod:`vstack.metadata_tables`);
* ``view_counts``: one counter per (video, replica), merged by taking each
  replica's maximum, so views never need consensus and are never lost or
  counted twice;
* heartbeat columns of ``storage_nodes``: what this replica itself last
  heard from each node (local, not replicated: every node heartbeats every
  replica);
* ``meta``: the highest ballot round this replica may use, persisted before
  it is used, and the database's ``epoch`` (a random id: a peer whose
  change cursor points into another epoch starts over).

Register keys and values are described in :mod:`vstack.registers`; every
read the API makes is a method of :class:`~vstack.metadata_reads.MetadataReads`.

Calls block (SQLite, fsync): the service runs them in a worker thread behind
one ``CapacityLimiter(1)``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apsw

from . import fsio
from .metadata_reads import MetadataReads
from .metadata_tables import SCHEMA as TABLES
from .metadata_tables import materialize, migrate
from .paxos import Ballot, Phase, Slot, Value

__all__ = ["Learned", "MetadataDB", "utc_now"]

log = logging.getLogger("vstack.metadata.db")

#: A chosen value as a learner records it: key, ballot (as an integer), value.
Learned = tuple[str, int, Value]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consensus (
    key TEXT PRIMARY KEY,
    promised_ballot INTEGER NOT NULL,
    accepted_ballot INTEGER NOT NULL,
    accepted_value TEXT,
    phase TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS learned (
    key TEXT PRIMARY KEY,
    ballot INTEGER NOT NULL,
    value TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS learned_by_seq ON learned (seq);
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
            fsio.makedirs(Path(self.path).parent)  # synced into its parent, if new
        self.conn = apsw.Connection(self.path)
        self.conn.setbusytimeout(5000)
        cur = self.conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=OFF")
        with self.conn:
            cur.execute(SCHEMA)
            cur.execute(TABLES)
            migrate(cur)
            #: Made by this open: a replica with no past (new, or its state lost).
            self.created = self.get_meta("epoch") is None
            if self.created:
                self.set_meta("epoch", uuid.uuid4().hex)
                # In the same transaction: a database with no past must join its
                # cluster before it votes (the replica clears this only when it
                # has no peers, or the cluster is new: see PaxosReplica).
                self.set_meta("joining", "1")
            if not self._rows("SELECT 1 FROM learned LIMIT 1"):
                self._learn_committed_slots(cur)
        self.epoch = str(self.get_meta("epoch"))
        self._next_seq = int(self._rows("SELECT COALESCE(MAX(seq), 0) FROM learned")[0][0]) + 1

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

    def persist(self, slots: dict[str, Slot], learned: Iterable[Learned] = (), *,
                sync: bool = True) -> None:
        """Write changed slots and learned (chosen) values with their table rows:
        one transaction.

        Each learned value gets the next change sequence number (the cursor
        peers catch up by). A value whose table rows cannot be written is
        logged and its rows left out; the learned value itself is kept, and
        nothing else in the batch is affected.

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
                 learned: Iterable[Learned]) -> None:
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
            for key, ballot, value in learned:
                cur.execute(
                    "INSERT INTO learned (key, ballot, value, seq) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET ballot = excluded.ballot,"
                    " value = excluded.value, seq = excluded.seq WHERE excluded.ballot > ballot",
                    (key, ballot, json.dumps(value, sort_keys=True), self._next_seq))
                self._next_seq += 1
                if not self.conn.changes():
                    continue  # a newer value of this key is learned already
                cur.execute("SAVEPOINT row")
                try:
                    materialize(cur, key, value)
                except (apsw.Error, KeyError, TypeError, ValueError, AttributeError,
                        OverflowError) as exc:
                    cur.execute("ROLLBACK TO row")
                    log.error("chosen value of %s cannot be stored in the tables (%s); skipped",
                              key, exc)
                cur.execute("RELEASE row")

    def _learn_committed_slots(self, cur: apsw.Cursor) -> None:
        """A database from before the learned table: committed slots were learned."""
        for key, ballot, value in list(cur.execute(
                "SELECT key, accepted_ballot, accepted_value FROM consensus"
                " WHERE phase = 'committed' AND accepted_value IS NOT NULL ORDER BY key")):
            seq = int(self._rows("SELECT COALESCE(MAX(seq), 0) FROM learned")[0][0]) + 1
            cur.execute("INSERT INTO learned (key, ballot, value, seq) VALUES (?, ?, ?, ?)",
                        (key, ballot, value, seq))

    # -- learned values ----------------------------------------------------------------

    def load_learned(self) -> dict[str, int]:
        """Every learned key with the ballot it was chosen at."""
        return {k: int(b) for k, b in self._rows("SELECT key, ballot FROM learned")}

    def learned_value(self, key: str) -> tuple[int, Value] | None:
        rows = self._rows("SELECT ballot, value FROM learned WHERE key = ?", (key,))
        return (int(rows[0][0]), json.loads(rows[0][1])) if rows else None

    def learned_since(self, seq: int, limit: int) -> list[tuple[int, str, int, Value]]:
        """``(seq, key, ballot, value)`` learned after change ``seq``, oldest first."""
        return [(int(s), k, int(b), json.loads(v)) for s, k, b, v in self._rows(
            "SELECT seq, key, ballot, value FROM learned WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit))]

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
