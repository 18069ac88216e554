"""Every read of the metadata service's materialized tables, as named methods.

The HTTP handlers never write SQL: they call these. Each method reads
committed (chosen) values only, since the tables are written in the same
transaction that records a learned value (:mod:`vstack.metadata_db`), and
chunks through the view ``visible_chunks`` (:mod:`vstack.metadata_tables`):
those of existing videos, the newest commit at each sequence number.
Rows come back as plain dicts keyed by column name, ready for JSON.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import apsw

__all__ = ["MetadataReads"]

_VIDEO_COLUMNS = ("video_id, title, duration_sec, total_chunks, chunk_size_bytes, created_at,"
                  " status")


class MetadataReads:
    """Read-only queries; mixed into :class:`~vstack.metadata_db.MetadataDB`."""

    conn: apsw.Connection

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts (for the methods below and for tests)."""
        cur = self.conn.cursor()
        cur.execute(sql, tuple(args))
        try:
            names = [d[0] for d in cur.getdescription()]
        except apsw.ExecutionCompleteError:
            return []  # no rows
        return [dict(zip(names, row, strict=True)) for row in cur]

    # -- videos -----------------------------------------------------------------------

    def list_videos(self, limit: int, offset: int) -> list[dict[str, Any]]:
        """Videos not deleted, newest first."""
        return self.query(
            f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE status != 'deleted'"
            " ORDER BY created_ns DESC, video_id LIMIT ? OFFSET ?", (limit, offset))

    def video(self, video_id: str) -> dict[str, Any] | None:
        rows = self.query(f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE video_id = ?", (video_id,))
        return rows[0] if rows else None

    def chunks_of_video(self, video_id: str) -> list[dict[str, Any]]:
        """The manifest's chunk rows, in sequence order (checksums as bare hex)."""
        return self.query(
            "SELECT chunk_id, sequence_num, size_bytes, checksum, redundancy_mode, duration_sec,"
            " start_sec FROM visible_chunks WHERE video_id = ? ORDER BY sequence_num", (video_id,))

    def stored_ids_of_chunk(self, chunk_id: str) -> tuple[str, list[str]] | None:
        """A committed chunk's video and every id its placement stores it under (its own
        id if it has replicas, its shards' ids), or ``None`` if no such chunk."""
        rows = self.query("SELECT video_id FROM chunks WHERE chunk_id = ?", (chunk_id,))
        if not rows:
            return None
        ids = [chunk_id] if self.query("SELECT 1 FROM chunk_replicas WHERE chunk_id = ? LIMIT 1",
                                       (chunk_id,)) else []
        ids += [r["fragment_id"] for r in self.query(
            "SELECT fragment_id FROM chunk_fragments WHERE chunk_id = ?", (chunk_id,))]
        return str(rows[0]["video_id"]), ids

    def replicas_of_video(self, video_id: str) -> dict[str, list[str]]:
        """chunk id -> node URLs holding a replica, in the order they were committed."""
        out: dict[str, list[str]] = {}
        for row in self.query(
                "SELECT r.chunk_id, r.node_url FROM chunk_replicas r JOIN visible_chunks c"
                " ON c.chunk_id = r.chunk_id WHERE c.video_id = ? ORDER BY r.rowid", (video_id,)):
            out.setdefault(row["chunk_id"], []).append(row["node_url"])
        return out

    def fragments_of_video(self, video_id: str) -> dict[str, list[dict[str, Any]]]:
        """chunk id -> its fragment rows, by index."""
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self.query(
                "SELECT f.* FROM chunk_fragments f JOIN visible_chunks c"
                " ON c.chunk_id = f.chunk_id WHERE c.video_id = ? ORDER BY f.fragment_index",
                (video_id,)):
            out.setdefault(row["chunk_id"], []).append(row)
        return out

    def fragments_of_chunk(self, chunk_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM chunk_fragments WHERE chunk_id = ?"
                          " ORDER BY fragment_index", (chunk_id,))

    def stored_copies_of_video(self, video_id: str) -> list[tuple[str, str]]:
        """``(node URL, stored id)`` of every replica and fragment of the video's chunks
        (superseded chunk ids included: deleting a video deletes them all)."""
        rows = self.query(
            "SELECT r.node_url, r.chunk_id AS stored FROM chunk_replicas r JOIN chunks c"
            " ON c.chunk_id = r.chunk_id WHERE c.video_id = ?"
            " UNION ALL SELECT f.node_url, f.fragment_id FROM chunk_fragments f JOIN chunks c"
            " ON c.chunk_id = f.chunk_id WHERE c.video_id = ?", (video_id, video_id))
        return [(r["node_url"], r["stored"]) for r in rows]

    def chunk_ids_of_video(self, video_id: str) -> list[str]:
        """Every chunk id committed for the video (superseded ones too)."""
        return [r["chunk_id"] for r in self.query(
            "SELECT chunk_id FROM chunks WHERE video_id = ?", (video_id,))]

    def override_of(self, video_id: str) -> str | None:
        rows = self.query("SELECT mode FROM redundancy_overrides WHERE video_id = ?", (video_id,))
        return str(rows[0]["mode"]) if rows else None

    # -- storage nodes --------------------------------------------------------------------

    def node_rows(self) -> list[dict[str, Any]]:
        return self.query("SELECT node_url, node_id, last_heartbeat, disk_usage_percent,"
                          " chunk_count, free_bytes, status, version FROM storage_nodes")

    def node(self, node_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT node_url, node_id, status FROM storage_nodes WHERE node_id = ?",
                          (node_id,))
        return rows[0] if rows else None

    def node_key_sha256(self, node_id: str) -> str | None:
        """The digest of the key ``node_id`` is bound to, if any."""
        rows = self.query("SELECT key_sha256 FROM node_claims WHERE node_id = ?", (node_id,))
        return rows[0]["key_sha256"] if rows else None

    # -- statistics ------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        [row] = self.query(
            "SELECT (SELECT COUNT(*) FROM videos) AS total_videos,"
            " (SELECT COUNT(*) FROM visible_chunks) AS total_chunks,"
            " (SELECT COUNT(*) FROM chunk_replicas r JOIN visible_chunks c"
            "   ON c.chunk_id = r.chunk_id WHERE r.status = 'active') AS total_replicas,"
            " (SELECT COUNT(*) FROM chunk_fragments f JOIN visible_chunks c"
            "   ON c.chunk_id = f.chunk_id) AS total_fragments")
        return {k: int(v) for k, v in row.items()}

    def placement_node_names(self) -> list[str]:
        """Every node name a replica or fragment row uses (as its writer gave it)."""
        return [r["node_url"] for r in self.query(
            "SELECT node_url FROM chunk_replicas UNION SELECT node_url FROM chunk_fragments")]

    def storage_overhead(self, *, replication_factor: int,
                         healthy: Collection[str] | None = None) -> dict[str, Any]:
        """Logical bytes (one copy of each chunk) against physical bytes (every copy);
        ``healthy``: as for :meth:`redundancy_health`."""
        [row] = self.query(
            "SELECT"
            " COALESCE(SUM(CASE WHEN redundancy_mode = 'replication' THEN 1 END), 0) AS repl_chunks,"
            " COALESCE(SUM(CASE WHEN redundancy_mode != 'replication' THEN 1 END), 0) AS ec_chunks,"
            " COALESCE(SUM(size_bytes), 0) AS logical,"
            " COALESCE(SUM(CASE WHEN redundancy_mode = 'replication' THEN size_bytes END), 0)"
            "   AS repl_logical,"
            " COALESCE(SUM(CASE WHEN redundancy_mode != 'replication' THEN size_bytes END), 0)"
            "   AS ec_logical"
            " FROM visible_chunks")
        [phys] = self.query(
            "SELECT COALESCE((SELECT SUM(c.size_bytes) FROM chunk_replicas r JOIN visible_chunks c"
            "   ON c.chunk_id = r.chunk_id), 0) AS repl_physical,"
            " COALESCE((SELECT SUM(f.size_bytes) FROM chunk_fragments f JOIN visible_chunks c"
            "   ON c.chunk_id = f.chunk_id), 0) AS ec_physical")
        physical = phys["repl_physical"] + phys["ec_physical"]
        logical = row["logical"]
        savings = 100.0 * (1 - physical / (replication_factor * logical)) if logical else 0.0
        return {"replication_chunks": row["repl_chunks"], "erasure_coded_chunks": row["ec_chunks"],
                "total_logical_bytes": logical, "total_physical_bytes": float(physical),
                "storage_savings_percent": round(savings, 4),
                "replication_overhead_bytes": phys["repl_physical"] - row["repl_logical"],
                "erasure_overhead_bytes": float(phys["ec_physical"] - row["ec_logical"]),
                "modes": {
                    "replication": {"chunks": row["repl_chunks"],
                                    "logical_bytes": row["repl_logical"],
                                    "physical_bytes": phys["repl_physical"]},
                    "erasure_coding": {"chunks": row["ec_chunks"],
                                       "logical_bytes": row["ec_logical"],
                                       "physical_bytes": phys["ec_physical"]}},
                **self.redundancy_health(replicas=replication_factor, healthy=healthy)}

    def redundancy_health(self, *, replicas: int, shards: int = 5, needed: int = 3,
                          healthy: Collection[str] | None = None) -> dict[str, int]:
        """Chunks short of copies on healthy nodes (to repair), and chunks with too few
        to rebuild at all right now (unreadable until a node comes back).

        ``healthy``: every name rows may give a healthy node, mapped to that node's
        id (its URL, an alias, ...: one node counts once); by default, the URLs the
        table lists as healthy, compared as written.
        """
        if healthy is None:
            healthy = {r["node_url"]: r["node_url"] for r in self.query(
                "SELECT node_url FROM storage_nodes WHERE status = 'healthy'")}
        names = json.dumps(dict(healthy) if isinstance(healthy, Mapping)
                           else {n: n for n in healthy})
        [row] = self.query(
            "WITH up AS (SELECT key AS name, value AS node FROM json_each(?)),"
            " live AS (SELECT c.chunk_id, c.redundancy_mode AS mode,"
            "  (SELECT COUNT(DISTINCT up.node) FROM chunk_replicas r JOIN up"
            "    ON up.name = r.node_url WHERE r.chunk_id = c.chunk_id) AS copies,"
            "  (SELECT COUNT(DISTINCT f.fragment_index) FROM chunk_fragments f JOIN up"
            "    ON up.name = f.node_url WHERE f.chunk_id = c.chunk_id) AS pieces"
            "  FROM visible_chunks c)"
            " SELECT"
            "  COALESCE(SUM(CASE WHEN mode = 'replication' THEN copies < ? ELSE pieces < ? END), 0)"
            "   AS short,"
            "  COALESCE(SUM(CASE WHEN mode = 'replication' THEN copies < 1 ELSE pieces < ? END), 0)"
            "   AS unreadable FROM live", (names, replicas, shards, needed))
        return {"under_replicated_chunks": int(row["short"]),
                "unreadable_chunks": int(row["unreadable"])}

    # -- view counters ------------------------------------------------------------------------

    def view_counts_of(self, replica: int) -> list[tuple[str, int, int]]:
        return [(r["video_id"], r["replica"], r["count"]) for r in self.query(
            "SELECT video_id, replica, count FROM view_counts WHERE replica = ?", (replica,))]

    def view_count(self, video_id: str) -> int:
        rows = self.query("SELECT COALESCE(SUM(count), 0) AS n FROM view_counts WHERE video_id = ?",
                          (video_id,))
        return int(rows[0]["n"])
