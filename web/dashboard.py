"""What the page's dashboard shows: one snapshot of the cluster, made once a second.

Every second :func:`keep_snapshot` asks, all at once and each within
:data:`PROBE_SEC`: the metadata service (``/health``, ``/stats``,
``/storage/overhead``, ``/videos``), the uploader and the client service
(``/health``; the client's node scores from ``/api/status``), and every
storage node directly (``/health``: a node that does not answer within
:data:`PROBE_SEC` is *down* at once, without waiting for the metadata
service's heartbeat timeout). The node list comes from the metadata
service's ``/nodes/all``. Every websocket and ``/api/health`` read the same
snapshot: a hundred open pages cost the cluster no more than one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Final

import trio

from nodes.net.http_client import HttpClient
from nodes.net.metadata_client import MetadataClient
from protocol.errors import VStackError
from protocol.http import json_bytes
from vstack.settings import WebSettings

__all__ = ["Snapshot", "keep_snapshot", "service_health"]

log = logging.getLogger("vstack.web")

#: How long one service may take to answer a dashboard probe.
PROBE_SEC: Final = 1.0
#: A probe's answer read at most this large.
MAX_ANSWER: Final = 1024 * 1024
#: One whole round (every probe at once) gives up after this.
ROUND_SEC: Final = 3.0
#: Storage nodes probed and shown (the snapshot says how many are registered).
MAX_NODES: Final = 64


class Snapshot:
    def __init__(self) -> None:
        self.message: dict[str, Any] = {"type": "dashboard", "time": None, "health": None,
                                        "stats": None, "videos": []}
        self.text = json_bytes(self.message).decode()
        self.changed = trio.Event()
        self.nodes: list[dict[str, Any]] = []  # the registered nodes, as last listed

    def publish(self, message: dict[str, Any]) -> None:
        """The new snapshot, serialized once for every page (non-finite numbers as null)."""
        self.message = message
        self.text = json_bytes(message).decode()
        self.changed.set()
        self.changed = trio.Event()


def _text(value: Any, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _status(data: Any) -> dict[str, Any]:
    """A service's ``/health`` answer, reduced to typed, bounded fields."""
    if not isinstance(data, dict):
        return {"status": "error", "error": "not a JSON object"}
    out: dict[str, Any] = {"status": _text(data.get("status"), 32) or "unknown"}
    for key in ("error", "service", "version", "node_id"):
        if (text := _text(data.get(key))) is not None:
            out[key] = text
    for key in ("code", "chunk_count", "disk_usage", "active_uploads", "queued_uploads"):
        if (number := _number(data.get(key))) is not None:
            out[key] = number
    return out


async def service_health(http: HttpClient, url: str) -> dict[str, Any]:
    """``GET {url}/health`` as the contract's ``/api/health`` entries say (typed fields only)."""
    try:
        with trio.fail_after(PROBE_SEC):
            res = await http.request("GET", url.rstrip("/") + "/health", max_bytes=MAX_ANSWER)
    except trio.TooSlowError:
        return {"status": "error", "error": f"no answer in {PROBE_SEC:.0f} s"}
    except VStackError as exc:
        return {"status": "error", "error": str(exc)[:200]}
    if res.status != 200:
        return {"status": "unhealthy", "code": res.status}
    return _status(_parse(res.body))


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


async def _json(http: HttpClient, url: str) -> Any:
    try:
        with trio.fail_after(PROBE_SEC * 2):
            res = await http.request("GET", url, max_bytes=MAX_ANSWER * 8)
        return _parse(res.body) if res.status == 200 else None
    except (VStackError, trio.TooSlowError):
        return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _video(v: Any) -> dict[str, Any] | None:
    if not isinstance(v, dict) or not isinstance(v.get("video_id"), str):
        return None
    return {"video_id": v["video_id"][:128], "title": _text(v.get("title"), 300) or "",
            "status": _text(v.get("status"), 32), "duration_sec": _number(v.get("duration_sec")),
            "total_chunks": _number(v.get("total_chunks")),
            "created_at": _text(v.get("created_at"), 40)}


async def build(settings: WebSettings, http: HttpClient, metadata: MetadataClient,
                snapshot: Snapshot) -> dict[str, Any]:
    """One look at the cluster: the services, the metadata's figures and every node of
    the last listing probed all at once (a slow answer delays nothing else)."""
    meta = metadata.urls[0]
    out: dict[str, Any] = {}
    nodes: list[dict[str, Any]] = []
    scores: dict[str, Any] = {}

    async def fetch(name: str, url: str) -> None:
        out[name] = await _json(http, url)

    async def health(name: str, url: str) -> None:
        out[name] = await service_health(http, url)

    async def node(record: dict[str, Any]) -> None:
        url = record["node_url"]
        probe = await service_health(http, url)
        up = probe.get("status") in ("healthy", "degraded")
        public = _text(record.get("public_url"), 300) or url
        score = scores.get(public, scores.get(url))
        nodes.append({
            "url": public, "node_url": url, "node_id": _text(record.get("node_id"), 128),
            "status": probe["status"] if up else "down",
            "chunk_count": probe.get("chunk_count", _number(record.get("chunk_count"))),
            "disk_usage": probe.get("disk_usage", _number(record.get("disk_usage_percent"))),
            "score": _number(score), "registered_status": _text(record.get("status"), 32),
            "error": None if up else probe.get("error") or probe.get("code")})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(health, "metadata", meta)
        nursery.start_soon(health, "uploader", settings.uploader_url)
        nursery.start_soon(health, "client", settings.client_url)
        nursery.start_soon(fetch, "stats", f"{meta}/stats")
        nursery.start_soon(fetch, "overhead", f"{meta}/storage/overhead")
        nursery.start_soon(fetch, "videos", f"{meta}/videos?limit=100")
        nursery.start_soon(fetch, "nodes", f"{meta}/nodes/all")
        nursery.start_soon(fetch, "client_status", f"{settings.client_url}/api/status")
        nursery.start_soon(fetch, "manager", f"{settings.redundancy_url}/health")
        for record in snapshot.nodes[:MAX_NODES]:  # the last listing: probed meanwhile
            nursery.start_soon(node, record)
    listed = _object(out.get("nodes")).get("nodes")
    if isinstance(listed, list):
        snapshot.nodes = [r for r in listed if isinstance(r, dict)
                          and isinstance(r.get("node_url"), str)
                          and r["node_url"].startswith(("http://", "https://"))
                          and len(r["node_url"]) <= 300]
    scores.update(_object(_object(out.get("client_status")).get("node_scores")))
    for n in nodes:  # the scores came with this round
        n["score"] = _number(scores.get(n["url"], scores.get(n["node_url"])))
    nodes.sort(key=lambda n: str(n["url"]))
    stats, overhead = _object(out.get("stats")), _object(out.get("overhead"))
    videos = out.get("videos")
    videos = _object(videos).get("videos") if isinstance(videos, dict) else videos
    figures = {"total_videos": stats.get("total_videos"), "total_chunks": stats.get("total_chunks"),
               "replicas": stats.get("total_replicas"), "shards": stats.get("total_fragments"),
               "replicated_chunks": overhead.get("replication_chunks"),
               "erasure_coded_chunks": overhead.get("erasure_coded_chunks"),
               "under_replicated_chunks": overhead.get("under_replicated_chunks"),
               "unreadable_chunks": overhead.get("unreadable_chunks"),
               "logical_bytes": overhead.get("total_logical_bytes"),
               "physical_bytes": overhead.get("total_physical_bytes")}
    return {
        "type": "dashboard", "time": time.time(),
        "health": {"metadata": out["metadata"], "uploader": out["uploader"],
                   "client": out["client"], "storage_nodes": nodes},
        "stats": {**{k: _number(v) for k, v in figures.items()},
                  "healthy_nodes": sum(1 for n in nodes if n["status"] == "healthy"),
                  "nodes_shown": len(nodes), "nodes_registered": len(snapshot.nodes),
                  "repairs": _number(_object(out.get("manager")).get("repairs")),
                  "bytes_moved": _number(_object(out.get("manager")).get("bytes_moved"))},
        "videos": [v for v in map(_video, videos if isinstance(videos, list) else [])
                   if v is not None][:100],
    }


async def keep_snapshot(settings: WebSettings, http: HttpClient, metadata: MetadataClient,
                        snapshot: Snapshot, *, every: float = 1.0) -> None:
    """Rebuild the snapshot every ``every`` seconds, forever (a failed round is logged
    and the old snapshot kept)."""
    while True:
        started = trio.current_time()
        try:
            with trio.fail_after(ROUND_SEC):
                snapshot.publish(await build(settings, http, metadata, snapshot))
        except Exception as exc:  # one bad round must not end the dashboard, nor hide it
            log.exception("dashboard snapshot failed")
            snapshot.publish({**snapshot.message, "stale": True, "error": str(exc)[:200]})
        await trio.sleep_until(started + every)
