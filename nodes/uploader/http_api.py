"""The uploader's HTTP endpoints: ``POST /upload``, ``GET /upload/status/{id}``, ``GET /health``.

``POST /upload`` accepts an upload or refuses it before answering: the body
is streamed to disk (:mod:`nodes.uploader.receiver`), probed with FFmpeg
(the extension is not trusted: no video is a 400), and the video is
registered with the metadata service, so the ``video_id`` in the answer is
the one every service knows. Processing is then queued
(:class:`~nodes.uploader.job.UploadJob`) and the answer says where to poll.
A refused upload leaves nothing behind: its file is removed.

Handlers are module-level functions over the shared
:class:`~nodes.uploader.state.Uploader`, bound in :func:`build_router`.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import trio

from nodes.net import routing
from nodes.net.http_server import Body, Handler, HttpLimits, serve_http
from nodes.net.metrics import Metric, ServiceMetrics, gauge
from nodes.net.routing import RouteTable
from protocol.api import VideoCreate
from protocol.errors import ProtocolError
from protocol.http import Request, Response, Router, json_response
from protocol.multipart import parse_boundary
from vstack.auth import Access
from vstack.media import ProbeError, ProbeResult
from vstack.upload_session import Session

from .errors import ChunkingFailed
from .ffmpeg import probe
from .job import UploadJob
from .receiver import Received, receive_upload
from .state import Uploader

__all__ = ["build_router", "health", "serve", "upload", "upload_status"]

log = logging.getLogger("vstack.uploader")


async def health(up: Uploader, req: Request, body: Body) -> Response:
    return json_response(200, up.health())


async def upload_status(up: Uploader, req: Request, body: Body) -> Response:
    session = up.sessions.get(req.params["session_id"])
    if session is None:
        raise ProtocolError("Upload session not found", 404)
    return json_response(200, session.public())


async def upload(up: Uploader, req: Request, body: Body) -> Response:
    """Receive, probe and register an upload; queue its processing."""
    limit = up.settings.max_upload_bytes
    boundary = parse_boundary(req.header("content-type"))
    length = req.content_length
    if length is not None and length > limit:
        raise ProtocolError(f"upload larger than the limit of {limit} bytes", 413)
    session_id = str(uuid.uuid4())
    path = up.upload_path(session_id)
    try:
        form = await receive_upload(body, boundary, path, limit=limit)
        info = await _probe(up, path)
        created = await up.metadata.create_video(
            VideoCreate(title=form.title, duration_sec=max(1, math.ceil(info.duration))),
            idempotency_key=f"upload-{session_id}")
        job = UploadJob(up, _session(session_id, created.video_id, form, info), info)
        await job.submit()
    except BaseException:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            await trio.Path(path).unlink(missing_ok=True)
        raise
    s = job.session
    log.info("upload %s received: %r, %d bytes, %s, %.1f s -> video %s", session_id, s.title,
             s.size_bytes, info.format_label, info.duration, s.video_id)
    return json_response(200, {
        "video_id": s.video_id, "upload_session_id": session_id, "title": s.title,
        "status": "processing", "message": "Video upload received and processing started",
        "status_url": f"/upload/status/{session_id}", "queue_position": s.queue_position})


def _session(session_id: str, video_id: str, form: Received, info: ProbeResult) -> Session:
    return Session(session_id=session_id, video_id=video_id, title=form.title,
                   filename=form.filename, size_bytes=form.size,
                   duration_sec=round(info.duration, 3), format=info.format_label)


async def _probe(up: Uploader, path: Path) -> ProbeResult:
    try:
        return await probe(up.ffmpeg, path)
    except ProbeError as exc:
        raise ProtocolError(f"Unsupported video format: {exc}", 400) from None
    except ChunkingFailed as exc:  # FFmpeg could not be started: our fault, not the client's
        raise ProtocolError(str(exc), 500) from None


#: (method, path, who may call it, endpoint); see :mod:`vstack.auth`.
ROUTES: Final[RouteTable] = [
    ("GET", "/health", Access.PUBLIC, health),
    ("POST", "/upload", Access.USER, upload),
    ("GET", "/upload/status/{session_id}", Access.READ, upload_status),
]


def build_router(up: Uploader) -> Router[Handler]:
    m = ServiceMetrics("uploader")

    def state() -> Iterable[Metric]:
        yield gauge("vstack_uploads_active", "Uploads being processed", up.queue.active)
        yield gauge("vstack_uploads_queued", "Uploads waiting for a slot", up.queue.waiting)

    m.collect_with(state)
    return routing.build_router(ROUTES, up, up.settings.auth, m)


async def serve(up: Uploader, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Serve the API until cancelled; reports the bound port."""
    cfg = up.settings
    await serve_http(build_router(up), host=cfg.host, port=cfg.port,
                     limits=HttpLimits(read_timeout=cfg.read_timeout,
                                       idle_timeout=cfg.idle_timeout),
                     task_status=task_status)
