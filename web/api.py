"""The web page's endpoints (port 8085), as the contract's demo section lists them.

=====================================  =============================================
``GET /``, ``/index.html``             upload, watch, the health dashboard
``GET /consensus``, ``.html``          Paxos state of recent chunks, per replica
``GET /storage-efficiency``, ``_.html`` logical against physical bytes, per mode
``GET /static/...``                    the pages' scripts, styles, vendored libraries
``GET /ws``                            the dashboard snapshot, every second
``GET /api/health``                    metadata, uploader, client, every node
``GET /api/videos`` ``/api/stats``     the metadata service's answers, forwarded
``GET /api/storage/overhead``          ... and ``/api/redundancy/efficiency``
``GET /api/config``                    where the services are, and the HLS base URL
``POST /api/upload``                   streamed through to the uploader, never held
``GET /api/upload/status/{id}``        the uploader's progress of that upload
``GET /api/consensus``                 ``/consensus/{id}`` of the newest chunks
=====================================  =============================================
"""

from __future__ import annotations

import logging
import mimetypes
import re
from importlib import resources
from typing import Any, Final

import trio
from trio_websocket import WebSocketConnection

from nodes.net import routing
from nodes.net.http_client import StreamBody
from nodes.net.http_server import Body, Handler
from nodes.net.metrics import ServiceMetrics
from nodes.net.routing import RouteTable
from nodes.net.websocket import push_forever, websocket_response
from protocol.api import CHUNK_ID_RE
from protocol.errors import ProtocolError, VStackError
from protocol.http import Request, Response, Router, json_response
from vstack.auth import Access

from .dashboard import MAX_ANSWER, service_health
from .state import WebService

__all__ = ["build_router"]

log = logging.getLogger("vstack.web")

STATIC_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}\Z")
#: What a multipart form adds around the file (the uploader allows as much).
FORM_OVERHEAD: Final = 64 * 1024
#: Chunks shown on the consensus page.
CONSENSUS_CHUNKS: Final = 12
PAGE_HEADERS: Final = [("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
                       ("Content-Security-Policy", "default-src 'self'; media-src 'self' blob: "
                        "http: https:; connect-src 'self' ws: wss: http: https:; "
                        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"),
                       ("X-Frame-Options", "DENY")]


def _static(*parts: str) -> bytes:
    """A file of ``web/static``; 404 if there is none of that name."""
    for part in parts:
        if not STATIC_NAME.match(part) or ".." in part:
            raise ProtocolError("Not Found", 404)
    path = resources.files("web").joinpath("static", *parts)
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ProtocolError("Not Found", 404) from None


def _file(name: str, *parts: str) -> Response:
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
        ctype += "; charset=utf-8"
    return Response(status=200, headers=[("Content-Type", ctype), *PAGE_HEADERS],
                    body=_static(*parts, name))


async def index(svc: WebService, req: Request, body: Body) -> Response:
    return _file("index.html")


async def consensus_page(svc: WebService, req: Request, body: Body) -> Response:
    return _file("consensus.html")


async def efficiency_page(svc: WebService, req: Request, body: Body) -> Response:
    return _file("storage_efficiency.html")


async def static(svc: WebService, req: Request, body: Body) -> Response:
    return _file(req.params["name"])


async def vendor(svc: WebService, req: Request, body: Body) -> Response:
    return _file(req.params["name"], "vendor")


async def health(svc: WebService, req: Request, body: Body) -> Response:
    return json_response(200, {"status": "healthy"})


async def websocket(svc: WebService, req: Request, body: Body) -> Response:
    async def handler(ws: WebSocketConnection) -> None:
        if svc.snapshot.message["time"] is None:  # just started: wait for the first look
            with trio.move_on_after(3):
                await svc.snapshot.changed.wait()
        await push_forever(ws, lambda: svc.snapshot.text, interval=1.0)

    return websocket_response(req, handler)


async def api_health(svc: WebService, req: Request, body: Body) -> Response:
    """Always 200; each service's entry says how it is (the contract's shape)."""
    http, cfg = svc.http, svc.settings
    out: dict[str, Any] = {}

    async def one(name: str, url: str) -> None:
        out[name] = await service_health(http, url)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "metadata", svc.metadata.urls[0])
        nursery.start_soon(one, "uploader", cfg.uploader_url)
        nursery.start_soon(one, "client", cfg.client_url)
    nodes = [{**n, "url": n["url"]} for n in
             ((svc.snapshot.message.get("health") or {}).get("storage_nodes") or [])]
    return json_response(200, {**out, "storage_nodes": nodes})


async def _forward(svc: WebService, url: str, thing: str) -> Response:
    try:
        res = await svc.http.request("GET", url, max_bytes=MAX_ANSWER * 8)
    except VStackError as exc:
        return json_response(502, {"error": f"Failed to fetch {thing}: {exc}"})
    if res.status != 200:
        return json_response(res.status, {"error": f"Failed to fetch {thing}: {res.status}"})
    return Response(status=200, headers=[("Content-Type", "application/json"),
                                         ("Cache-Control", "no-cache")], body=res.body)


async def videos(svc: WebService, req: Request, body: Body) -> Response:
    return await _forward(svc, f"{svc.metadata.urls[0]}/videos", "videos")


async def stats(svc: WebService, req: Request, body: Body) -> Response:
    return await _forward(svc, f"{svc.metadata.urls[0]}/stats", "stats")


async def overhead(svc: WebService, req: Request, body: Body) -> Response:
    return await _forward(svc, f"{svc.metadata.urls[0]}/storage/overhead", "storage overhead")


async def efficiency(svc: WebService, req: Request, body: Body) -> Response:
    return await _forward(svc, f"{svc.metadata.urls[0]}/redundancy/efficiency",
                          "redundancy efficiency")


async def config(svc: WebService, req: Request, body: Body) -> Response:
    cfg = svc.settings
    nodes = [n["url"] for n in
             ((svc.snapshot.message.get("health") or {}).get("storage_nodes") or [])]
    return json_response(200, {"metadata_url": svc.metadata.urls[0],
                               "uploader_url": cfg.uploader_url, "client_url": cfg.client_url,
                               "hls_base": cfg.hls_base, "storage_nodes": nodes,
                               "max_upload_bytes": cfg.max_upload_bytes,
                               "uploads_need_token": not cfg.auth.allows(
                                   Access.USER, None, req.peer, origin=req.header("origin"),
                                   host=req.header("host"))})


async def upload(svc: WebService, req: Request, body: Body) -> Response:
    """The multipart body, streamed through to the uploader as it arrives (never held
    whole); the uploader's answer returned as it is."""
    ctype = req.header("content-type") or ""
    if not ctype.lower().startswith("multipart/form-data") or "boundary=" not in ctype.lower():
        raise ProtocolError("No video file found (send multipart/form-data with a video part)",
                            400)
    length = req.content_length
    if length is None:
        raise ProtocolError("Content-Length is required", 411)
    limit = svc.settings.max_upload_bytes
    if length > limit + FORM_OVERHEAD:
        raise ProtocolError(f"file larger than the limit of {limit} bytes", 413)
    res = await svc.http.request(
        "POST", f"{svc.settings.uploader_url.rstrip('/')}/upload",
        body=StreamBody(chunks=body.chunks(limit + FORM_OVERHEAD), length=length),
        headers=[("Content-Type", ctype)], retry=False)
    try:
        answer = res.json()
    except VStackError:
        answer = {"error": f"Unexpected response: {res.body[:200].decode(errors='replace')}"}
    return json_response(res.status, answer)


async def upload_status(svc: WebService, req: Request, body: Body) -> Response:
    session = req.params["session_id"]
    if not CHUNK_ID_RE.match(session):
        raise ProtocolError("Upload session not found", 404)
    return await _forward(svc, f"{svc.settings.uploader_url.rstrip('/')}/upload/status/"
                          f"{session}", "upload status")


async def consensus(svc: WebService, req: Request, body: Body) -> Response:
    """The Paxos state, on every replica, of the first chunks of the newest videos."""
    meta = svc.metadata.urls[0]
    listed = (svc.snapshot.message.get("videos") or [])[:CONSENSUS_CHUNKS]
    ids: list[str] = []
    for video in sorted(listed, key=lambda v: str(v.get("created_at", "")), reverse=True):
        try:
            m = await svc.http.request("GET", f"{meta}/manifest/{video['video_id']}",
                                       max_bytes=MAX_ANSWER * 8)
            chunks = m.json().get("chunks", []) if m.status == 200 else []
        except (VStackError, KeyError, AttributeError):
            continue
        ids += [str(c["chunk_id"]) for c in chunks[:3]]
        if len(ids) >= CONSENSUS_CHUNKS:
            break
    states: dict[str, Any] = {}

    async def one(cid: str) -> None:
        try:
            res = await svc.http.request("GET", f"{meta}/consensus/{cid}", max_bytes=MAX_ANSWER)
            if res.status == 200:
                states[cid] = res.json()
        except VStackError:
            pass

    with trio.move_on_after(3):
        async with trio.open_nursery() as nursery:
            for cid in ids[:CONSENSUS_CHUNKS]:
                nursery.start_soon(one, cid)
    chunks = [states[c] for c in ids if c in states]
    replicas = max((len(c.get("acceptors") or []) for c in chunks), default=0)
    return json_response(200, {"replicas": replicas, "chunks": chunks}, [("Cache-Control",
                                                                         "no-cache")])


P, R, U = Access.PUBLIC, Access.READ, Access.USER
ROUTES: RouteTable = (
    ("GET", "/", P, index),
    ("GET", "/index.html", P, index),
    ("GET", "/consensus", P, consensus_page),
    ("GET", "/consensus.html", P, consensus_page),
    ("GET", "/storage-efficiency", P, efficiency_page),
    ("GET", "/storage_efficiency.html", P, efficiency_page),
    ("GET", "/static/{name}", P, static),
    ("GET", "/static/vendor/{name}", P, vendor),
    ("GET", "/health", P, health),
    ("GET", "/ws", R, websocket),
    ("GET", "/api/health", R, api_health),
    ("GET", "/api/videos", R, videos),
    ("GET", "/api/stats", R, stats),
    ("GET", "/api/storage/overhead", R, overhead),
    ("GET", "/api/redundancy/efficiency", R, efficiency),
    ("GET", "/api/config", R, config),
    ("POST", "/api/upload", U, upload),
    ("GET", "/api/upload/status/{session_id}", R, upload_status),
    ("GET", "/api/consensus", R, consensus),
)


def build_router(svc: WebService) -> Router[Handler]:
    return routing.build_router(ROUTES, svc, svc.settings.auth, ServiceMetrics("web"))
