"""The metadata service's HTTP endpoints (the contract's section 1), over h11.

Client endpoints keep the original's paths, status codes and fields; errors
are ``{"error": msg, "detail": msg}`` (``detail`` is where FastAPI clients
look) and validation failures are 422 with a list of problems. Every change
is a Paxos decision (:meth:`MetadataService.decide`); reads come from the
replica's materialized tables.

Replica-to-replica endpoints live under ``/paxos``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import trio

from nodes.net.http_client import request
from nodes.net.http_server import Body, Handler, HttpLimits, serve_http
from protocol.errors import ProtocolError, VStackError
from protocol.http import Request, Response, Router, json_response
from protocol.validate import ValidationError, Validator, parse_json_object
from vstack.paxos import Ballot, ChangeRejected, Value

from .state import VERSION, MetadataService

__all__ = ["build_router", "serve"]

log = logging.getLogger("vstack.metadata.api")

MAX_BODY = 1024 * 1024
VIDEO_STATUSES = ("uploading", "active", "deleted")
MODES = ("replication", "erasure_coding")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
EC_CONFIG = {"mode": "erasure_coding", "data_shards": 3, "parity_shards": 2, "total_shards": 5,
             "min_shards_for_recovery": 3, "description": "Store 5 fragments, any 3 can recover"}
REPLICATION_CONFIG = {"mode": "replication", "copies": 3, "description": "Store 3 full copies"}


def ok(obj: Any, status: int = 200) -> Response:
    return json_response(status, obj)


async def read_json(body: Body) -> dict[str, Any]:
    return parse_json_object(await body.read(MAX_BODY))


def normalize_checksum(value: Any, v: Validator, name: str = "checksum") -> str | None:
    if not isinstance(value, str):
        return None
    hexpart = value[7:] if value.lower().startswith("sha256:") else value
    hexpart = hexpart.lower()
    if not _HEX64.match(hexpart):
        v.problems.append({"type": "string_pattern_mismatch", "loc": ["body", name],
                           "msg": "checksum must be a SHA-256: 64 hex digits, optionally 'sha256:'",
                           "input": value})
        return None
    return hexpart


def query_int(req: Request, name: str, default: int) -> int:
    raw = req.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValidationError([{"type": "int_parsing", "loc": ["query", name],
                                "msg": "Input should be a valid integer", "input": raw}]) from None


def build_router(svc: MetadataService) -> Router[Handler]:
    r: Router[Handler] = Router()
    s = svc.settings

    # -- service ---------------------------------------------------------------------

    async def health(req: Request, body: Body) -> Response:
        rows = svc.node_rows()
        healthy = sum(1 for row in rows if svc.effective_status(row) == "healthy")
        return ok({"status": "healthy", "service": "metadata-service", "healthy_nodes": healthy,
                   "total_nodes": len(rows), "database_status": "healthy",
                   "replica_id": s.replica_id, "replicas": s.replicas,
                   "consensus": dict(svc.replica.stats)})

    async def root(req: Request, body: Body) -> Response:
        return ok({"message": "V-Stack Metadata Service", "version": VERSION})

    # -- videos --------------------------------------------------------------------------

    async def create_video(req: Request, body: Body) -> Response:
        data = await read_json(body)
        v = Validator(data)
        title = v.string("title", min_len=1, max_len=255)
        duration = v.integer("duration_sec", gt=0)
        v.done()
        video_id = await svc.create_video(title, duration)
        return ok({"video_id": video_id, "upload_url": f"/upload/{video_id}"})

    async def set_status(req: Request, body: Body) -> Response:
        video_id = req.params["video_id"]
        data = await read_json(body)
        status = data.get("status")
        if status not in VIDEO_STATUSES:
            raise ProtocolError(f"Invalid status. Must be one of: {', '.join(VIDEO_STATUSES)}", 400)

        def change(cur: Value | None) -> Value:
            if cur is None or cur.get("removed"):
                raise _not_found("Video not found")
            return {**cur, "status": status}

        await svc.decide(f"video/{video_id}", change)
        log.info("video %s is now %s", video_id, status)
        return ok({"status": "success", "message": f"Video status updated to {status}",
                   "video_id": video_id})

    async def list_videos(req: Request, body: Body) -> Response:
        limit, offset = query_int(req, "limit", 100), query_int(req, "offset", 0)
        if not 1 <= limit <= 1000:
            raise ProtocolError("Limit must be between 1 and 1000", 400)
        if offset < 0:
            raise ProtocolError("Offset must be non-negative", 400)
        rows = svc.query(
            "SELECT video_id, title, duration_sec, total_chunks, chunk_size_bytes, created_at,"
            " status FROM videos WHERE status != 'deleted' ORDER BY created_ns DESC, video_id"
            " LIMIT ? OFFSET ?", (limit, offset))
        return ok(rows)

    async def manifest(req: Request, body: Body) -> Response:
        video_id = req.params["video_id"]
        videos = svc.query("SELECT video_id, title, duration_sec, total_chunks, chunk_size_bytes,"
                           " created_at, status FROM videos WHERE video_id = ?", (video_id,))
        if not videos:
            raise ProtocolError("Video not found", 404)
        chunks = svc.query(
            "SELECT chunk_id, sequence_num, size_bytes, checksum, redundancy_mode, duration_sec,"
            " start_sec FROM chunks WHERE video_id = ? ORDER BY sequence_num", (video_id,))
        replicas: dict[str, list[str]] = {}
        for row in svc.query("SELECT r.chunk_id, r.node_url FROM chunk_replicas r JOIN chunks c"
                             " ON c.chunk_id = r.chunk_id WHERE c.video_id = ? ORDER BY r.rowid",
                             (video_id,)):
            replicas.setdefault(row["chunk_id"], []).append(svc.aliases.public(row["node_url"]))
        fragments: dict[str, list[dict[str, Any]]] = {}
        for row in svc.query(
                "SELECT f.* FROM chunk_fragments f JOIN chunks c ON c.chunk_id = f.chunk_id"
                " WHERE c.video_id = ? ORDER BY f.fragment_index", (video_id,)):
            row["node_url"] = svc.aliases.public(row["node_url"])
            fragments.setdefault(row["chunk_id"], []).append(row)
        entries = []
        for c in chunks:
            frags = fragments.get(c["chunk_id"])
            entries.append({**c, "checksum": f"sha256:{c['checksum']}",
                            "replicas": replicas.get(c["chunk_id"], []),
                            "fragments": frags if frags else None})
        return ok({**videos[0], "chunk_duration_sec": 10, "chunks": entries})

    async def delete_video(req: Request, body: Body) -> Response:
        video_id = req.params["video_id"]
        targets = [(row["node_url"], row["chunk_id"]) for row in svc.query(
            "SELECT r.node_url, r.chunk_id FROM chunk_replicas r JOIN chunks c"
            " ON c.chunk_id = r.chunk_id WHERE c.video_id = ?", (video_id,))]
        targets += [(row["node_url"], row["fragment_id"]) for row in svc.query(
            "SELECT f.node_url, f.fragment_id FROM chunk_fragments f JOIN chunks c"
            " ON c.chunk_id = f.chunk_id WHERE c.video_id = ?", (video_id,))]

        def remove(cur: Value | None) -> Value:
            if cur is None or cur.get("removed"):
                raise _not_found("Video not found")
            return {**cur, "removed": True, "status": "deleted"}

        await svc.decide(f"video/{video_id}", remove)
        deleted = await _delete_chunks(svc, targets)
        log.info("video %s deleted (%d of %d stored chunks removed from nodes)", video_id,
                 deleted, len(targets))
        return ok({"status": "deleted", "video_id": video_id, "chunks_deleted": deleted,
                   "chunks_listed": len(targets)})

    # -- chunks ----------------------------------------------------------------------------

    async def commit_chunk(req: Request, body: Body) -> Response:
        chunk_id = req.params["chunk_id"]
        data = await read_json(body)
        v = Validator(data)
        urls = v.array("node_urls", min_len=1)
        checksum = normalize_checksum(data.get("checksum"), v) if "checksum" in data else None
        if "checksum" not in data:
            v.string("checksum")
        size = v.integer("size_bytes", gt=0)
        video_id = v.string("video_id", min_len=1)
        seq = v.integer("sequence_num", ge=0)
        mode = v.choice("redundancy_mode", MODES, required=False, default="replication")
        duration = v.number("duration_sec", required=False, ge=0)
        start = v.number("start_sec", required=False, ge=0)
        frags = data.get("fragments_metadata")
        if urls is not None and not all(isinstance(u, str) and u for u in urls):
            v.problems.append({"type": "string_type", "loc": ["body", "node_urls"],
                               "msg": "node_urls must be non-empty strings", "input": urls})
        if frags is not None and not (isinstance(frags, list) and all(
                isinstance(f, dict) and {"fragment_id", "fragment_index", "node_url", "size_bytes",
                                         "checksum"} <= f.keys() for f in frags)):
            v.problems.append({"type": "list_type", "loc": ["body", "fragments_metadata"],
                               "msg": "fragments_metadata must be a list of fragment objects",
                               "input": frags})
        v.done()
        assert checksum is not None
        assert urls is not None
        verified = await _verify_placement(svc, chunk_id, urls, checksum, frags)
        if verified is None:
            return ok({"success": False, "committed_nodes": [],
                       "message": f"Failed to reach consensus for chunk {chunk_id}"})
        nodes, good_frags = verified
        value = {"chunk_id": chunk_id, "video_id": video_id, "sequence_num": seq,
                 "size_bytes": size, "checksum": checksum, "redundancy_mode": mode,
                 "duration_sec": duration, "start_sec": start,
                 "replicas": [] if good_frags else nodes, "fragments": good_frags or None,
                 "created_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        await svc.decide(f"chunk/{chunk_id}", lambda cur: value)
        return ok({"success": True, "committed_nodes": nodes,
                   "message": f"Chunk {chunk_id} committed to {len(nodes)} nodes"})

    async def chunk_fragments(req: Request, body: Body) -> Response:
        chunk_id = req.params["chunk_id"]
        rows = svc.query("SELECT * FROM chunk_fragments WHERE chunk_id = ? ORDER BY fragment_index",
                         (chunk_id,))
        for row in rows:
            row["node_url"] = svc.aliases.public(row["node_url"])
        return ok({"chunk_id": chunk_id, "fragments": rows})

    async def consensus(req: Request, body: Body) -> Response:
        chunk_id = req.params["chunk_id"]
        key = f"chunk/{chunk_id}"
        slot = svc.replica.acceptor.slots.get(key)
        if slot is None:
            raise ProtocolError("Consensus state not found", 404)
        value = slot.value or {}
        accepted = (json.dumps(value.get("replicas") or [f["node_url"] for f in
                                                          value.get("fragments") or []])
                    if slot.value is not None else None)
        acceptors = [_slot_json(svc.settings.replica_id, key, svc)]
        acceptors += await _peer_states(svc, key)
        return ok({"chunk_id": chunk_id, "promised_ballot": slot.promised.to_int(),
                   "accepted_ballot": slot.accepted.to_int(), "accepted_value": accepted,
                   "phase": slot.phase.value, "version": value.get("v"),
                   "acceptors": acceptors})

    # -- storage nodes ---------------------------------------------------------------------

    def node_record(row: dict[str, Any]) -> dict[str, Any]:
        return {"node_url": row["node_url"], "node_id": row["node_id"],
                "last_heartbeat": row["last_heartbeat"],
                "disk_usage_percent": float(row["disk_usage_percent"] or 0.0),
                "chunk_count": int(row["chunk_count"] or 0), "free_bytes": row["free_bytes"],
                "status": svc.effective_status(row), "version": row["version"]}

    async def nodes_healthy(req: Request, body: Body) -> Response:
        rows = [node_record(r) for r in svc.node_rows()]
        healthy = sorted((r for r in rows if r["status"] == "healthy"),
                         key=lambda r: (r["disk_usage_percent"], r["node_id"]))
        return ok(healthy)

    async def nodes_all(req: Request, body: Body) -> Response:
        rows = [node_record(r) for r in svc.node_rows()]
        rows.sort(key=lambda r: (r["status"], r["last_heartbeat"] or ""), reverse=False)
        return ok({"nodes": rows})

    async def nodes_summary(req: Request, body: Body) -> Response:
        summary = {"healthy": 0, "degraded": 0, "down": 0}
        for row in svc.node_rows():
            status = svc.effective_status(row)
            summary[status] = summary.get(status, 0) + 1
        return ok(summary)

    async def register_node(req: Request, body: Body) -> Response:
        data = await read_json(body)
        v = Validator(data)
        node_url = v.string("node_url", min_len=1)
        node_id = v.string("node_id", min_len=1, max_len=128)
        version = v.string("version", required=False, default=VERSION)
        v.done()
        if not node_url.startswith(("http://", "https://")):
            raise ProtocolError("Invalid node_url: must start with http:// or https://", 400)
        await svc.register_node(node_url, node_id, version)
        return ok({"status": "registered", "node_id": node_id, "node_url": node_url})

    async def node_heartbeat(req: Request, body: Body) -> Response:
        node_id = req.params["node_id"]
        data = await read_json(body)
        v = Validator(data)
        usage = v.number("disk_usage_percent", ge=0, le=100)
        count = v.integer("chunk_count", ge=0)
        free = v.integer("free_bytes", required=False, ge=0)
        version = v.string("version", required=False)
        v.done()
        await svc.heartbeat(node_id, disk_usage_percent=usage, chunk_count=count,
                            free_bytes=free, version=version)
        return ok({"status": "ok", "message": f"Heartbeat updated for node {node_id}"})

    # -- statistics ----------------------------------------------------------------------------

    async def stats(req: Request, body: Body) -> Response:
        healthy = sum(1 for row in svc.node_rows() if svc.effective_status(row) == "healthy")
        [counts] = svc.query(
            "SELECT (SELECT COUNT(*) FROM videos) AS total_videos,"
            " (SELECT COUNT(*) FROM chunks) AS total_chunks,"
            " (SELECT COUNT(*) FROM chunk_replicas WHERE status = 'active') AS total_replicas")
        return ok({**counts, "healthy_nodes": healthy, "service_version": VERSION})

    async def overhead(req: Request, body: Body) -> Response:
        [row] = svc.query(
            "SELECT"
            " COALESCE(SUM(CASE WHEN redundancy_mode = 'replication' THEN 1 END), 0) AS repl_chunks,"
            " COALESCE(SUM(CASE WHEN redundancy_mode != 'replication' THEN 1 END), 0) AS ec_chunks,"
            " COALESCE(SUM(size_bytes), 0) AS logical,"
            " COALESCE(SUM(CASE WHEN redundancy_mode = 'replication' THEN size_bytes END), 0)"
            "   AS repl_logical,"
            " COALESCE(SUM(CASE WHEN redundancy_mode != 'replication' THEN size_bytes END), 0)"
            "   AS ec_logical"
            " FROM chunks")
        [phys] = svc.query(
            "SELECT COALESCE((SELECT SUM(c.size_bytes) FROM chunk_replicas r JOIN chunks c"
            "   ON c.chunk_id = r.chunk_id), 0) AS repl_physical,"
            " COALESCE((SELECT SUM(size_bytes) FROM chunk_fragments), 0) AS ec_physical")
        physical = phys["repl_physical"] + phys["ec_physical"]
        logical = row["logical"]
        savings = 100.0 * (1 - physical / (3 * logical)) if logical else 0.0
        return ok({"replication_chunks": row["repl_chunks"],
                   "erasure_coded_chunks": row["ec_chunks"],
                   "total_logical_bytes": logical, "total_physical_bytes": float(physical),
                   "storage_savings_percent": round(savings, 4),
                   "replication_overhead_bytes": phys["repl_physical"] - row["repl_logical"],
                   "erasure_overhead_bytes": float(phys["ec_physical"] - row["ec_logical"])})

    # -- popularity and redundancy ------------------------------------------------------------

    async def popularity(req: Request, body: Body) -> Response:
        video_id = req.params["video_id"]
        return ok({"video_id": video_id, "view_count": svc.reader.view_count(video_id)})

    async def add_view(req: Request, body: Body) -> Response:
        video_id = req.params["video_id"]
        await svc.run_db(lambda: svc.db.add_view(video_id, s.replica_id))
        return ok({"status": "ok", "message": f"View count incremented for {video_id}"})

    def override_of(video_id: str) -> str | None:
        rows = svc.query("SELECT mode FROM redundancy_overrides WHERE video_id = ?", (video_id,))
        return rows[0]["mode"] if rows else None

    async def recommend(req: Request, body: Body) -> Response:
        video_id = req.params["video_id"]
        views = svc.reader.view_count(video_id)
        mode = override_of(video_id) or (
            "replication" if views > s.popularity_threshold else "erasure_coding")
        return ok({"video_id": video_id, "view_count": views, "recommended_mode": mode,
                   "override": override_of(video_id),
                   "config": REPLICATION_CONFIG if mode == "replication" else EC_CONFIG})

    async def set_override(req: Request, body: Body) -> Response:
        video_id = req.params["video_id"]
        mode = req.query.get("mode")
        if mode is None:
            raise ValidationError([{"type": "missing", "loc": ["query", "mode"],
                                    "msg": "Field required", "input": None}])
        if mode not in MODES:
            raise ProtocolError(f"Invalid mode: {mode}. Use 'replication' or 'erasure_coding'", 400)
        await svc.decide(f"override/{video_id}", lambda cur: {"mode": mode})
        return ok({"status": "ok", "video_id": video_id, "override_mode": mode,
                   "message": f"Manual override set to {mode}"})

    async def clear_override(req: Request, body: Body) -> Response:
        video_id = req.params["video_id"]
        await svc.decide(f"override/{video_id}", lambda cur: {"mode": None})
        return ok({"status": "ok", "video_id": video_id, "message": "Manual override cleared"})

    async def efficiency(req: Request, body: Body) -> Response:
        return ok({
            "efficiency": {"replication_overhead_factor": 3,
                           "erasure_coding_overhead_factor": 5 / 3,
                           "storage_savings_percent": (1 - (5 / 3) / 3) * 100,
                           "description": "Erasure coding saves 44.4% storage vs replication"},
            "mode_comparison": {
                "replication": {"mode": "replication", "storage_per_chunk_mb": 6.0,
                                "nodes_required": 3, "failures_tolerated": 2,
                                "read_performance": "fast",
                                "use_case": "Popular videos with many concurrent viewers"},
                "erasure_coding": {"mode": "erasure_coding", "storage_per_chunk_mb": 2 * 5 / 3,
                                   "nodes_required": 5, "failures_tolerated": 2,
                                   "read_performance": "moderate (requires reconstruction)",
                                   "use_case": "Long-tail videos watched rarely"},
                "savings": {"storage_saved_mb": 6.0 - 2 * 5 / 3,
                            "savings_percent": (1 - (5 / 3) / 3) * 100}}})

    async def redundancy_config(req: Request, body: Body) -> Response:
        return ok({"popularity_threshold": s.popularity_threshold, "replication_factor": 3,
                   "erasure_data_shards": 3, "erasure_parity_shards": 2, "erasure_total_shards": 5})

    # -- between replicas -------------------------------------------------------------------------

    async def paxos_batch(req: Request, body: Body) -> Response:
        data = await read_json(body)
        msgs = data.get("msgs")
        if not isinstance(msgs, list):
            raise ProtocolError("msgs must be a list", 400)
        return ok({"replies": await svc.replica.handle_batch(msgs)})

    async def paxos_state(req: Request, body: Body) -> Response:
        key = req.query.get("key", "")
        return ok(_slot_json(s.replica_id, key, svc))

    async def paxos_committed(req: Request, body: Body) -> Response:
        after = req.query.get("after", "")
        limit = min(max(query_int(req, "limit", 500), 1), 5000)
        return ok({"entries": svc.replica.committed_since(after, limit)})

    async def paxos_views(req: Request, body: Body) -> Response:
        return ok({"counts": svc.reader.view_counts_of(s.replica_id)})

    for method, path, handler in [
        ("GET", "/health", health), ("GET", "/", root),
        ("POST", "/video", create_video), ("PATCH", "/video/{video_id}/status", set_status),
        ("DELETE", "/video/{video_id}", delete_video), ("GET", "/videos", list_videos),
        ("GET", "/manifest/{video_id}", manifest),
        ("POST", "/chunk/{chunk_id}/commit", commit_chunk),
        ("GET", "/chunk/{chunk_id}/fragments", chunk_fragments),
        ("GET", "/consensus/{chunk_id}", consensus),
        ("GET", "/nodes/healthy", nodes_healthy), ("GET", "/nodes/all", nodes_all),
        ("GET", "/nodes/health-summary", nodes_summary),
        ("POST", "/nodes/register", register_node),
        ("POST", "/nodes/{node_id}/heartbeat", node_heartbeat),
        ("GET", "/stats", stats), ("GET", "/storage/overhead", overhead),
        ("GET", "/video/{video_id}/popularity", popularity),
        ("POST", "/video/{video_id}/view", add_view),
        ("GET", "/redundancy/recommend/{video_id}", recommend),
        ("POST", "/redundancy/override/{video_id}", set_override),
        ("DELETE", "/redundancy/override/{video_id}", clear_override),
        ("GET", "/redundancy/efficiency", efficiency),
        ("GET", "/redundancy/config", redundancy_config),
        ("POST", "/paxos", paxos_batch), ("GET", "/paxos/state", paxos_state),
        ("GET", "/paxos/committed", paxos_committed), ("GET", "/paxos/views", paxos_views),
    ]:
        r.add(method, path, handler)
    return r


def _not_found(msg: str) -> ChangeRejected:
    """For change functions: refuse, and the caller answers 404."""
    return ChangeRejected(msg, 404)


def _slot_json(replica_id: int, key: str, svc: MetadataService) -> dict[str, Any]:
    slot = svc.replica.acceptor.slots.get(key)
    if slot is None:
        return {"replica": replica_id, "promised_ballot": 0, "accepted_ballot": 0, "phase": "none",
                "version": None}
    return {"replica": replica_id, "promised_ballot": slot.promised.to_int(),
            "accepted_ballot": slot.accepted.to_int(), "phase": slot.phase.value,
            "version": (slot.value or {}).get("v"),
            "ballot": str(slot.accepted) if slot.accepted != Ballot(0, 0) else None}


async def _peer_states(svc: MetadataService, key: str) -> list[dict[str, Any]]:
    out = []
    for i, base in svc.transport.peers.items():
        try:
            with trio.fail_after(1):
                res = await svc.transport.http.request("GET", f"{base}/paxos/state?key={key}")
            out.append(res.json())
        except (VStackError, trio.TooSlowError, ValueError, KeyError, TypeError):
            out.append({"replica": i, "reachable": False})
    return out


async def _verify_placement(
    svc: MetadataService, chunk_id: str, urls: list[str], checksum: str,
    frags: list[dict[str, Any]] | None,
) -> tuple[list[str], list[dict[str, Any]]] | None:
    """Check that the nodes hold the chunk (or its fragments) with that SHA-256.

    A majority of ``urls`` must answer ``HEAD /chunk/{id}`` with 200 and an
    ``ETag`` equal to the checksum; for erasure-coded chunks, at least the
    3 data shards' worth of fragments must check out. Up to three tries, a
    short pause between them. Returns the verified nodes (request order) and
    fragments, or ``None``.
    """
    quorum = len(urls) // 2 + 1
    for attempt in range(3):
        results: dict[str, bool] = {}

        async def check(url: str, cid: str, want: str, into: dict[str, bool], tag: str) -> None:
            into[tag] = await _head_matches(svc, url, cid, want)

        frag_ok: dict[str, bool] = {}
        async with trio.open_nursery() as nursery:
            for url in dict.fromkeys(urls):
                nursery.start_soon(check, url, chunk_id, checksum, results, url)
            for f in frags or []:
                fsum = str(f["checksum"]).lower().removeprefix("sha256:")
                nursery.start_soon(check, str(f["node_url"]), str(f["fragment_id"]), fsum, frag_ok,
                                   str(f["fragment_id"]))
        nodes = [u for u in urls if results.get(u)]
        good = [dict(f, checksum=str(f["checksum"]).lower().removeprefix("sha256:"),
                     status="active") for f in frags or [] if frag_ok.get(str(f["fragment_id"]))]
        if frags:
            if len(good) >= min(3, len(frags)):
                return nodes, good
        elif len(nodes) >= quorum:
            return nodes, []
        if attempt < 2:
            await trio.sleep(0.25 * (attempt + 1))
    return None


async def _head_matches(svc: MetadataService, url: str, chunk_id: str, checksum: str) -> bool:
    try:
        with trio.fail_after(svc.settings.probe_timeout):
            return await svc.storage.holds(svc.aliases.resolve(url), chunk_id, checksum)
    except (trio.TooSlowError, ValueError):
        return False


async def _delete_chunks(svc: MetadataService, targets: list[tuple[str, str]]) -> int:
    deleted = 0

    async def one(url: str, chunk_id: str) -> None:
        nonlocal deleted
        try:
            with trio.fail_after(svc.settings.probe_timeout):
                res = await request("DELETE", svc.aliases.resolve(url) + f"/chunk/{chunk_id}")
            if res.status in (204, 404):
                deleted += 1
        except (VStackError, trio.TooSlowError, ValueError, KeyError, TypeError):
            pass

    async with trio.open_nursery() as nursery:
        for url, chunk_id in targets:
            nursery.start_soon(one, url, chunk_id)
    return deleted


async def serve(
    svc: MetadataService, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    s = svc.settings

    def headers() -> list[tuple[str, str]]:
        return [("Access-Control-Allow-Origin", "*")]

    await serve_http(build_router(svc), host=s.host, port=s.port,
                     limits=HttpLimits(read_timeout=s.read_timeout, idle_timeout=s.idle_timeout),
                     default_headers=headers, task_status=task_status)
