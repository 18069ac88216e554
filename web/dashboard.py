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

import logging
import time
from typing import Any, Final

import trio

from nodes.net.http_client import HttpClient
from nodes.net.metadata_client import MetadataClient
from protocol.errors import VStackError
from vstack.settings import WebSettings

__all__ = ["Snapshot", "keep_snapshot", "service_health"]

log = logging.getLogger("vstack.web")

#: How long one service may take to answer a dashboard probe.
PROBE_SEC: Final = 1.0
#: A probe's answer read at most this large.
MAX_ANSWER: Final = 1024 * 1024


class Snapshot:
    def __init__(self) -> None:
        self.message: dict[str, Any] = {"type": "dashboard", "time": None, "health": None,
                                        "stats": None, "videos": []}
        self.changed = trio.Event()

    def publish(self, message: dict[str, Any]) -> None:
        self.message = message
        self.changed.set()
        self.changed = trio.Event()


async def service_health(http: HttpClient, url: str) -> dict[str, Any]:
    """``GET {url}/health`` as the contract's ``/api/health`` entries say."""
    try:
        with trio.fail_after(PROBE_SEC):
            res = await http.request("GET", url.rstrip("/") + "/health", max_bytes=MAX_ANSWER)
    except trio.TooSlowError:
        return {"status": "error", "error": f"no answer in {PROBE_SEC:.0f} s"}
    except VStackError as exc:
        return {"status": "error", "error": str(exc)}
    if res.status != 200:
        return {"status": "unhealthy", "code": res.status}
    try:
        data = res.json()
    except VStackError:
        return {"status": "error", "error": "not JSON"}
    return data if isinstance(data, dict) else {"status": "error", "error": "not an object"}


async def _json(http: HttpClient, url: str) -> Any:
    try:
        with trio.fail_after(PROBE_SEC * 2):
            res = await http.request("GET", url, max_bytes=MAX_ANSWER * 8)
        return res.json() if res.status == 200 else None
    except (VStackError, trio.TooSlowError):
        return None


async def build(settings: WebSettings, http: HttpClient, metadata: MetadataClient
                ) -> dict[str, Any]:
    meta = metadata.urls[0]
    out: dict[str, Any] = {}
    nodes: list[dict[str, Any]] = []

    async def fetch(name: str, url: str) -> None:
        out[name] = await _json(http, url)

    async def health(name: str, url: str) -> None:
        out[name] = await service_health(http, url)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(health, "metadata", meta)
        nursery.start_soon(health, "uploader", settings.uploader_url)
        nursery.start_soon(health, "client", settings.client_url)
        nursery.start_soon(fetch, "stats", f"{meta}/stats")
        nursery.start_soon(fetch, "overhead", f"{meta}/storage/overhead")
        nursery.start_soon(fetch, "videos", f"{meta}/videos?limit=100")
        nursery.start_soon(fetch, "nodes", f"{meta}/nodes/all")
        nursery.start_soon(fetch, "client_status", f"{settings.client_url}/api/status")
    registered = (out.get("nodes") or {}).get("nodes") or []
    scores = (out.get("client_status") or {}).get("node_scores") or {}

    async def node(record: dict[str, Any]) -> None:
        url = str(record.get("node_url", ""))
        probe = await service_health(http, url)
        up = probe.get("status") in ("healthy", "degraded")
        public = record.get("public_url") or url
        nodes.append({
            "url": public, "node_url": url, "node_id": record.get("node_id"),
            "status": probe.get("status") if up else "down",
            "chunk_count": probe.get("chunk_count", record.get("chunk_count")),
            "disk_usage": probe.get("disk_usage", record.get("disk_usage_percent")),
            "score": scores.get(public, scores.get(url)),
            "registered_status": record.get("status"),
            "error": None if up else probe.get("error") or probe.get("code")})

    async with trio.open_nursery() as nursery:
        for record in registered[:64]:
            if isinstance(record, dict):
                nursery.start_soon(node, record)
    nodes.sort(key=lambda n: str(n["url"]))
    stats = out.get("stats") or {}
    overhead = out.get("overhead") or {}
    videos = out.get("videos")
    return {
        "type": "dashboard", "time": time.time(),
        "health": {"metadata": out["metadata"], "uploader": out["uploader"],
                   "client": out["client"], "storage_nodes": nodes},
        "stats": {"total_videos": stats.get("total_videos"),
                  "total_chunks": stats.get("total_chunks"),
                  "replicas": stats.get("total_replicas", stats.get("replicas")),
                  "shards": stats.get("total_fragments", stats.get("shards")),
                  "replicated_chunks": overhead.get("replication_chunks"),
                  "erasure_coded_chunks": overhead.get("erasure_coded_chunks"),
                  "healthy_nodes": sum(1 for n in nodes if n["status"] != "down"),
                  "repairs": None, "bytes_moved": None,
                  "under_replicated_chunks": overhead.get("under_replicated_chunks"),
                  "unreadable_chunks": overhead.get("unreadable_chunks"),
                  "logical_bytes": overhead.get("total_logical_bytes"),
                  "physical_bytes": overhead.get("total_physical_bytes")},
        "videos": videos.get("videos", videos) if isinstance(videos, dict) else videos or [],
    }


async def keep_snapshot(settings: WebSettings, http: HttpClient, metadata: MetadataClient,
                        snapshot: Snapshot, *, every: float = 1.0) -> None:
    """Rebuild the snapshot every ``every`` seconds, forever (a failed round is logged
    and the old snapshot kept)."""
    while True:
        started = trio.current_time()
        try:
            snapshot.publish(await build(settings, http, metadata))
        except Exception:  # one bad answer must not end the dashboard
            log.exception("dashboard snapshot failed")
        await trio.sleep_until(started + every)
