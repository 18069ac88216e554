"""The client service's endpoints (port 8086), as the contract lists them, and HLS.

=================================  ===============================================
``GET /``                          the live dashboard of the client's playback
``GET /ws``                        its websocket: the status object every second
``GET /health``                    ``{"status": "healthy"}``
``GET /api/status``                the status object (contract, section 5)
``GET /api/history``               one sample a second, the last hour
``GET /api/stream/{id}``           the video's bytes, streamed as fetched (MPEG-TS)
``POST /api/control``              ``{"command": "play"|"stop", "video_id": ...}``
``GET /hls/{id}.m3u8``             the video as an HLS VOD playlist
``GET /hls/{id}/{seq}.ts``         one segment, fetched by the smart client
=================================  ===============================================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any, Final

import trio
from trio_websocket import WebSocketConnection

from nodes.net import routing
from nodes.net.http_server import Body, Handler
from nodes.net.metrics import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    ServiceMetrics,
    counter,
    gauge,
)
from nodes.net.routing import RouteTable
from nodes.net.websocket import push_forever, websocket_response
from protocol.api import CHUNK_ID_RE
from protocol.errors import ProtocolError
from protocol.http import Request, Response, Router, json_response
from vstack.auth import Access

from .fetcher import FetchFailed
from .hls import playlist
from .state import ClientService

__all__ = ["build_router"]

log = logging.getLogger("vstack.client")

MAX_CONTROL_BODY: Final = 16 * 1024
MAX_SEGMENT: Final = 1_000_000
NO_CACHE: Final = [("Cache-Control", "no-cache")]


def _video_id(req: Request) -> str:
    video_id = req.params["video_id"]
    if not CHUNK_ID_RE.match(video_id):
        raise ProtocolError("invalid video id", 400)
    return video_id


async def dashboard(svc: ClientService, req: Request, body: Body) -> Response:
    page = resources.files("nodes.client").joinpath("static/dashboard.html").read_bytes()
    return Response(status=200, headers=[("Content-Type", "text/html; charset=utf-8"),
                                         *NO_CACHE], body=page)


async def websocket(svc: ClientService, req: Request, body: Body) -> Response:
    async def handler(ws: WebSocketConnection) -> None:
        await push_forever(ws, svc.client.status, interval=1.0)

    return websocket_response(req, handler)


async def health(svc: ClientService, req: Request, body: Body) -> Response:
    return json_response(200, {"status": "healthy"})


async def status(svc: ClientService, req: Request, body: Body) -> Response:
    return json_response(200, svc.client.status(), NO_CACHE)


async def history(svc: ClientService, req: Request, body: Body) -> Response:
    return json_response(200, {"history": list(svc.client.history)}, NO_CACHE)


async def stream(svc: ClientService, req: Request, body: Body) -> Response:
    """A playback at full speed whose sink is the response: bytes leave as the
    chunks are fetched, in order; the buffer policy bounds the memory."""
    video_id = _video_id(req)
    try:
        play = await svc.client.playback(video_id, speed=0, viewer=req.peer)
    except FetchFailed as exc:
        if exc.status == 404:
            return Response(status=404, headers=[("Content-Type", "text/plain")],
                            body=b"Video not found or failed to start")
        raise

    async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            await play.run(write)
        except FetchFailed as exc:  # cut the answer off: the viewer must not take it whole
            log.warning("stream of %s cut off: %s", video_id, exc)
            raise

    return Response(status=200, headers=[("Content-Type", "video/mp2t"), *NO_CACHE],
                    stream=produce)


def _control_body(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("Invalid JSON", 400) from None
    if not isinstance(data, dict):
        raise ProtocolError("the body must be a JSON object", 400)
    return data


async def control(svc: ClientService, req: Request, body: Body) -> Response:
    data = _control_body(await body.read(MAX_CONTROL_BODY))
    command = data.get("command")
    if not isinstance(command, str):
        raise ProtocolError("Missing or invalid command field", 400)
    if command == "stop":
        svc.stop()
        return json_response(200, {"status": "stopped"})
    if command != "play":
        return json_response(400, {"error": f"Unknown command: {command[:64]}",
                                   "valid_commands": ["play", "stop"]})
    video_id = data.get("video_id")
    if not isinstance(video_id, str):
        raise ProtocolError("Missing or invalid video_id", 400)
    if not video_id.strip():
        raise ProtocolError("video_id cannot be empty", 400)
    if not CHUNK_ID_RE.match(video_id):
        raise ProtocolError("invalid video_id", 400)
    speed = data.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 <= speed <= 1000:
        raise ProtocolError("speed must be a number in [0, 1000]", 400)
    await svc.play(video_id, float(speed), viewer=req.peer)
    return json_response(200, {"status": "acknowledged", "video_id": video_id,
                               "note": "playing in the client service: see /api/status"})


async def hls_playlist(svc: ClientService, req: Request, body: Body) -> Response:
    video_id = _video_id(req)
    manifest = await svc.hls.manifest(video_id)
    if req.method == "GET":  # a HEAD plays nothing
        svc.client.view(video_id, viewer=req.peer)
    text = playlist(manifest, float(manifest.chunk_duration_sec or 10))
    return Response(status=200, headers=[("Content-Type", "application/vnd.apple.mpegurl"),
                                         *NO_CACHE], body=text.encode())


async def hls_segment(svc: ClientService, req: Request, body: Body) -> Response:
    video_id = _video_id(req)
    seq_text = req.params["seq"]
    if not seq_text.isdigit() or len(seq_text) > 7 or int(seq_text) >= MAX_SEGMENT:
        raise ProtocolError("no such segment", 404)
    data = await svc.hls.segment(video_id, int(seq_text))
    return Response(status=200, headers=[("Content-Type", "video/mp2t"),
                                         ("Cache-Control", "max-age=3600")], body=data)


R, U = Access.READ, Access.USER
ROUTES: RouteTable = (
    ("GET", "/", Access.PUBLIC, dashboard),
    ("GET", "/dashboard", Access.PUBLIC, dashboard),
    ("GET", "/ws", R, websocket),
    ("GET", "/health", Access.PUBLIC, health),
    ("GET", "/api/status", R, status),
    ("GET", "/api/history", R, history),
    ("GET", "/api/stream/{video_id}", R, stream),
    ("POST", "/api/control", U, control),
    ("GET", "/hls/{video_id}.m3u8", R, hls_playlist),
    ("HEAD", "/hls/{video_id}.m3u8", R, hls_playlist),
    ("GET", "/hls/{video_id}/{seq}.ts", R, hls_segment),
)


def client_metrics(svc: ClientService) -> ServiceMetrics:
    m = ServiceMetrics("client")

    def state() -> Iterable[Metric]:
        client = svc.client
        play = client.current
        now = trio.current_time()
        yield gauge("vstack_client_buffer_seconds", "Media seconds buffered ahead (the "
                    "current playback)", play.buffer.level_sec(now) if play else 0.0)
        yield gauge("vstack_client_playback_rebuffering_events", "Stalls of the current "
                    "playback (starts again at 0 with each playback)",
                    play.buffer.rebuffering_events if play else 0)
        for fetcher in (client.fetcher, client.naive_fetcher):
            st = fetcher.stats
            kind = "naive" if fetcher.naive else "smart"
            for name, doc, value in (
                    ("downloads", "Chunk downloads started", st.total_downloads),
                    ("download_failures", "Downloads that failed", st.failed_downloads),
                    ("failovers", "Downloads moved to the next copy", st.failover_count),
                    ("hedges", "Hedged requests sent", st.hedges),
                    ("fetched_bytes", "Verified bytes downloaded", st.bytes_fetched)):
                family = CounterMetricFamily(f"vstack_client_{name}", doc, labels=["client"])
                family.add_metric([kind], value)
                yield family
        scores = GaugeMetricFamily("vstack_client_node_score", "Expected MiB/s per node",
                                   labels=["node"])
        for url, score in client.book.scores(now).items():
            scores.add_metric([url], score)
        yield scores
        yield counter("vstack_client_hls_segments_served", "HLS segments served",
                      svc.hls.served)

    m.collect_with(state)
    return m


def build_router(svc: ClientService) -> Router[Handler]:
    return routing.build_router(ROUTES, svc, svc.auth, client_metrics(svc))
