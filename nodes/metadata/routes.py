"""The metadata service's route table (the contract's section 1).

Replica-to-replica traffic is not here: it has a port of its own
(:mod:`.peer_api`).

Client endpoints keep the original's paths, status codes and fields; errors
are ``{"error": msg, "detail": msg}`` (``detail`` is where FastAPI clients
look) and validation failures are 422 with a list of problems. Every
handler is a module-level function over :class:`~.state.MetadataService`;
this table binds them.
"""

from __future__ import annotations

from functools import partial
from typing import Final

import trio

from nodes.net.http_server import Handler, HttpLimits, serve_http
from protocol.http import Router

from . import api_chunks, api_nodes, api_redundancy, api_videos
from .api_common import Endpoint
from .state import MetadataService

__all__ = ["ROUTES", "build_router", "serve_api"]

ROUTES: Final[list[tuple[str, str, Endpoint]]] = [
    ("GET", "/health", api_videos.health),
    ("GET", "/", api_videos.root),
    ("POST", "/video", api_videos.create_video),
    ("PATCH", "/video/{video_id}/status", api_videos.set_status),
    ("DELETE", "/video/{video_id}", api_videos.delete_video),
    ("GET", "/videos", api_videos.list_videos),
    ("GET", "/manifest/{video_id}", api_videos.manifest),
    ("POST", "/chunk/{chunk_id}/commit", api_chunks.commit),
    ("GET", "/chunk/{chunk_id}/fragments", api_chunks.chunk_fragments),
    ("GET", "/consensus/{chunk_id}", api_chunks.consensus),
    ("GET", "/nodes/healthy", api_nodes.nodes_healthy),
    ("GET", "/nodes/all", api_nodes.nodes_all),
    ("GET", "/nodes/health-summary", api_nodes.nodes_summary),
    ("POST", "/nodes/register", api_nodes.register),
    ("POST", "/nodes/{node_id}/heartbeat", api_nodes.heartbeat),
    ("GET", "/stats", api_nodes.stats),
    ("GET", "/storage/overhead", api_nodes.overhead),
    ("GET", "/video/{video_id}/popularity", api_redundancy.popularity),
    ("POST", "/video/{video_id}/view", api_redundancy.add_view),
    ("GET", "/redundancy/recommend/{video_id}", api_redundancy.recommend),
    ("POST", "/redundancy/override/{video_id}", api_redundancy.override),
    ("DELETE", "/redundancy/override/{video_id}", api_redundancy.clear_override),
    ("GET", "/redundancy/efficiency", api_redundancy.efficiency),
    ("GET", "/redundancy/config", api_redundancy.config),
]


def build_router(svc: MetadataService) -> Router[Handler]:
    router: Router[Handler] = Router()
    for method, path, endpoint in ROUTES:
        router.add(method, path, partial(endpoint, svc))
    return router


async def serve_api(svc: MetadataService, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    s = svc.settings
    await serve_http(build_router(svc), host=s.host, port=s.port,
                     limits=HttpLimits(read_timeout=s.read_timeout, idle_timeout=s.idle_timeout),
                     default_headers=lambda: [("Access-Control-Allow-Origin", "*")],
                     task_status=task_status)
