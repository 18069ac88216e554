"""The materialized tables: each row a function of register values alone.

Replicas learn chosen values in different orders (a lagging replica learns a
chunk before its video, a removal before the last commit). The tables must
come out the same whatever the order, so no value's materialization deletes
or rewrites rows that belong to another register:

* a ``videos`` row is the ``video/<id>`` value (no row once it is removed);
* a ``chunks`` row, with its ``chunk_replicas`` and ``chunk_fragments``, is
  the ``chunk/<id>`` value, kept even while its video is unknown or removed;
* what readers see is the view ``visible_chunks``: chunks whose video
  exists, and, of several chunk ids committed at the same (video, sequence)
  (a re-upload), the one committed last (``committed_ns``, then chunk id);
* ``videos.total_chunks`` is the number of sequence numbers the video has a
  chunk at (what ``visible_chunks`` lists): counted when the video row is
  written, and kept by adding one for each chunk at a new number, so it is
  a function of the same rows whatever the order;
* ``redundancy_overrides`` rows are the ``override/`` values; each
  ``node/`` value is a row of ``node_claims`` (the URL that node claims),
  and a ``storage_nodes`` row goes to the node that claimed its URL last
  (``since``, then node id), so two node ids claiming one URL resolve the
  same way everywhere.

:func:`materialize` writes one value's rows; it raises on a value it cannot
store (the caller rolls that value's rows back and logs it, never dies).
"""

from __future__ import annotations

from typing import Any, Final

import apsw

from .paxos import Value
from .registers import parse_key

__all__ = ["SCHEMA", "materialize", "migrate"]

SCHEMA: Final = """
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
    created_at TEXT NOT NULL,
    committed_ns INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS chunks_by_video ON chunks (video_id, sequence_num);
CREATE TABLE IF NOT EXISTS chunk_replicas (
    chunk_id TEXT NOT NULL,
    node_url TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    PRIMARY KEY (chunk_id, node_url)
);
CREATE TABLE IF NOT EXISTS chunk_fragments (
    fragment_id TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    fragment_index INTEGER NOT NULL,
    node_url TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TEXT NOT NULL,
    PRIMARY KEY (chunk_id, fragment_id)
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
CREATE TABLE IF NOT EXISTS node_claims (
    node_id TEXT PRIMARY KEY,
    node_url TEXT NOT NULL,
    status TEXT NOT NULL,
    version TEXT,
    since TEXT,
    key_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS node_claims_by_url ON node_claims (node_url);
"""

#: Created after :func:`migrate` (it names a column older databases lack).
VIEWS: Final = """
CREATE VIEW IF NOT EXISTS visible_chunks AS
SELECT c.* FROM chunks c JOIN videos v ON v.video_id = c.video_id
WHERE NOT EXISTS (
    SELECT 1 FROM chunks d
    WHERE d.video_id = c.video_id AND d.sequence_num = c.sequence_num
      AND (d.committed_ns, d.chunk_id) > (c.committed_ns, c.chunk_id));
"""


def migrate(cur: apsw.Cursor) -> None:
    """Bring a database made by an earlier version up to this schema."""
    columns = {row[1] for row in cur.execute("PRAGMA table_info(chunks)")}
    if "committed_ns" not in columns:
        cur.execute("ALTER TABLE chunks ADD COLUMN committed_ns INTEGER NOT NULL DEFAULT 0")
    cur.execute(VIEWS)
    if "key_sha256" not in {row[1] for row in cur.execute("PRAGMA table_info(node_claims)")}:
        cur.execute("ALTER TABLE node_claims ADD COLUMN key_sha256 TEXT")
    if not list(cur.execute("SELECT 1 FROM node_claims LIMIT 1")):
        cur.execute("INSERT OR IGNORE INTO node_claims (node_id, node_url, status, version, since)"
                    " SELECT node_id, node_url, status, version, last_heartbeat FROM storage_nodes")


def materialize(cur: apsw.Cursor, key: str, value: Value) -> None:
    """Write the table rows of register ``key`` holding ``value``.

    Raises:
        KeyError, TypeError, ValueError, apsw.Error: the value cannot be stored.
    """
    try:
        rk = parse_key(key)
    except ValueError:
        return  # a register with no table behind it
    if rk.kind == "video":
        _put_video(cur, rk.ident, value)
    elif rk.kind == "chunk":
        if "video_id" in value:  # else only the garbage collector's marks: no placement
            _put_chunk(cur, rk.ident, value)
    elif rk.kind == "override":
        if value.get("mode"):
            cur.execute("INSERT INTO redundancy_overrides (video_id, mode) VALUES (?, ?) "
                        "ON CONFLICT(video_id) DO UPDATE SET mode = excluded.mode",
                        (rk.ident, _text(value["mode"])))
        else:
            cur.execute("DELETE FROM redundancy_overrides WHERE video_id = ?", (rk.ident,))
    elif rk.kind == "node":
        _put_node(cur, rk.ident, value)


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not -(1 << 63) <= v < (1 << 63):
        raise TypeError(f"expected a 64-bit integer, got {v!r}")
    return v


def _real(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def _recount(cur: apsw.Cursor, video_id: str) -> None:
    # Chunks at distinct sequence numbers: what visible_chunks shows once the video exists.
    cur.execute("UPDATE videos SET total_chunks = (SELECT COUNT(DISTINCT sequence_num) FROM chunks"
                " WHERE video_id = ?) WHERE video_id = ?", (video_id, video_id))


def _put_video(cur: apsw.Cursor, video_id: str, v: Value) -> None:
    if v.get("removed"):
        cur.execute("DELETE FROM videos WHERE video_id = ?", (video_id,))
        return
    cur.execute(
        "INSERT INTO videos (video_id, title, duration_sec, chunk_size_bytes, status,"
        " created_at, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(video_id) DO UPDATE"
        " SET title = excluded.title, duration_sec = excluded.duration_sec,"
        " status = excluded.status",
        (video_id, _text(v["title"]), _int(v["duration_sec"]),
         _int(v.get("chunk_size_bytes", 2097152)), _text(v["status"]), _text(v["created_at"]),
         _int(v["created_ns"])))
    _recount(cur, video_id)


def _put_chunk(cur: apsw.Cursor, chunk_id: str, c: Value) -> None:
    video_id = _text(c["video_id"])
    created = _text(c["created_at"])
    seq = _int(c["sequence_num"])
    before = list(cur.execute("SELECT video_id, sequence_num FROM chunks WHERE chunk_id = ?",
                              (chunk_id,)))
    seq_taken = bool(list(cur.execute(
        "SELECT 1 FROM chunks WHERE video_id = ? AND sequence_num = ? AND chunk_id != ? LIMIT 1",
        (video_id, seq, chunk_id))))
    cur.execute(
        "INSERT INTO chunks (chunk_id, video_id, sequence_num, size_bytes, checksum,"
        " redundancy_mode, duration_sec, start_sec, created_at, committed_ns)"
        " VALUES (?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(chunk_id) DO UPDATE SET video_id = excluded.video_id,"
        " sequence_num = excluded.sequence_num, size_bytes = excluded.size_bytes,"
        " checksum = excluded.checksum, redundancy_mode = excluded.redundancy_mode,"
        " duration_sec = excluded.duration_sec, start_sec = excluded.start_sec,"
        " created_at = excluded.created_at, committed_ns = excluded.committed_ns",
        (chunk_id, video_id, seq, _int(c["size_bytes"]),
         _text(c["checksum"]), _text(c.get("redundancy_mode", "replication")),
         _real(c.get("duration_sec")), _real(c.get("start_sec")), created,
         _int(c.get("committed_ns", 0))))
    cur.execute("DELETE FROM chunk_replicas WHERE chunk_id = ?", (chunk_id,))
    for url in c.get("replicas") or []:
        cur.execute("INSERT OR IGNORE INTO chunk_replicas (chunk_id, node_url) VALUES (?, ?)",
                    (chunk_id, _text(url)))
    cur.execute("DELETE FROM chunk_fragments WHERE chunk_id = ?", (chunk_id,))
    for f in c.get("fragments") or []:
        cur.execute(
            "INSERT OR REPLACE INTO chunk_fragments (fragment_id, chunk_id, fragment_index,"
            " node_url, size_bytes, checksum, created_at) VALUES (?,?,?,?,?,?,?)",
            (_text(f["fragment_id"]), chunk_id, _int(f["fragment_index"]), _text(f["node_url"]),
             _int(f["size_bytes"]), _text(f["checksum"]), created))
    # total_chunks counts the sequence numbers a video has a chunk at. A new
    # chunk at a new number adds one (no recount: a video of N chunks costs N,
    # not N squared); anything else (a moved chunk) recounts what it touched.
    if not before:
        if not seq_taken:
            cur.execute("UPDATE videos SET total_chunks = total_chunks + 1 WHERE video_id = ?",
                        (video_id,))
    elif tuple(before[0]) != (video_id, seq):
        _recount(cur, video_id)
        _recount(cur, str(before[0][0]))


def _put_node(cur: apsw.Cursor, node_id: str, value: Value) -> None:
    """A node register claims one URL; of the nodes claiming a URL, the one
    registered last (``since``, then node id) owns its ``storage_nodes`` row."""
    url = _text(value["node_url"])
    old = [r[0] for r in cur.execute("SELECT node_url FROM node_claims WHERE node_id = ?",
                                     (node_id,))]
    since = value.get("since")
    key = value.get("key_sha256")
    cur.execute(
        "INSERT INTO node_claims (node_id, node_url, status, version, since, key_sha256)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT(node_id) DO UPDATE SET node_url = excluded.node_url,"
        " status = excluded.status, version = excluded.version, since = excluded.since,"
        " key_sha256 = excluded.key_sha256",
        (node_id, url, _text(value["status"]), value.get("version"),
         since if isinstance(since, str) else None, key if isinstance(key, str) else None))
    for touched in {url, *old}:
        _settle_url(cur, touched)


def _settle_url(cur: apsw.Cursor, url: str) -> None:
    winner = list(cur.execute(
        "SELECT node_id, status, version, since FROM node_claims WHERE node_url = ?"
        " ORDER BY COALESCE(since, '') DESC, node_id DESC LIMIT 1", (url,)))
    if not winner:
        cur.execute("DELETE FROM storage_nodes WHERE node_url = ?", (url,))
        return
    node_id, status, version, since = winner[0]
    cur.execute("DELETE FROM storage_nodes WHERE node_id = ? AND node_url != ?", (node_id, url))
    cur.execute(
        "INSERT INTO storage_nodes (node_url, node_id, status, version, last_heartbeat)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(node_url) DO UPDATE SET"
        " node_id = excluded.node_id, status = excluded.status, version = excluded.version",
        (url, node_id, status, version, since))
