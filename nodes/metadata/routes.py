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

from typing import Final

import trio

from nodes.net import routing
from nodes.net.http_server import Handler, HttpLimits, serve_http
from nodes.net.routing import RouteTable
from protocol.http import Router
from vstack.auth import Access

from . import api_chunks, api_nodes, api_redundancy, api_videos
from .metrics import replica_metrics
from .state import MetadataService

__all__ = ["ROUTES", "build_router", "serve_api"]

P, R, U, C = Access.PUBLIC, Access.READ, Access.USER, Access.CLUSTER

#: (method, path, who may call it, endpoint); see :mod:`vstack.auth`.
ROUTES: Final[RouteTable] = [
    ("GET", "/health", P, api_videos.health),
    ("GET", "/", P, api_videos.root),
    ("POST", "/video", U, api_videos.create_video),
    ("PATCH", "/video/{video_id}/status", U, api_videos.set_status),
    ("DELETE", "/video/{video_id}", U, api_videos.delete_video),
    ("GET", "/videos", R, api_videos.list_videos),
    ("GET", "/manifest/{video_id}", R, api_videos.manifest),
    ("POST", "/chunk/{chunk_id}/commit", C, api_chunks.commit),
    ("GET", "/chunk/{chunk_id}/fragments", R, api_chunks.chunk_fragments),
    ("GET", "/chunk/{chunk_id}/placement", R, api_chunks.placement),
    ("POST", "/chunk/{chunk_id}/collect", C, api_chunks.collect),
    ("GET", "/consensus/{chunk_id}", R, api_chunks.consensus),
    ("GET", "/nodes/healthy", R, api_nodes.nodes_healthy),
    ("GET", "/nodes/all", R, api_nodes.nodes_all),
    ("GET", "/nodes/health-summary", R, api_nodes.nodes_summary),
    ("POST", "/nodes/register", C, api_nodes.register),
    ("POST", "/nodes/{node_id}/heartbeat", C, api_nodes.heartbeat),
    ("GET", "/stats", R, api_nodes.stats),
    ("GET", "/storage/overhead", R, api_nodes.overhead),
    ("GET", "/video/{video_id}/popularity", R, api_redundancy.popularity),
    ("POST", "/video/{video_id}/view", U, api_redundancy.add_view),
    ("GET", "/redundancy/recommend/{video_id}", R, api_redundancy.recommend),
    ("POST", "/redundancy/override/{video_id}", U, api_redundancy.override),
    ("DELETE", "/redundancy/override/{video_id}", U, api_redundancy.clear_override),
    ("GET", "/redundancy/efficiency", R, api_redundancy.efficiency),
    ("GET", "/redundancy/config", R, api_redundancy.config),
]


def build_router(svc: MetadataService) -> Router[Handler]:
    return routing.build_router(ROUTES, svc, svc.settings.auth, replica_metrics(svc))


async def serve_api(svc: MetadataService, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    s = svc.settings
    await serve_http(build_router(svc), host=s.host, port=s.port,
                     limits=HttpLimits(read_timeout=s.read_timeout, idle_timeout=s.idle_timeout),
                     default_headers=lambda: [("Access-Control-Allow-Origin", "*")],
                     task_status=task_status)
