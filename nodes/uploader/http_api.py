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

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import trio

from nodes.net import routing
from nodes.net.errors import single_error
from nodes.net.http_server import Body, Handler, HttpLimits, serve_http
from nodes.net.metrics import Metric, ServiceMetrics, gauge
from nodes.net.routing import RouteTable
from protocol.api import VideoCreate
from protocol.errors import ProtocolError, VStackError
from protocol.http import Request, Response, Router, json_response
from protocol.multipart import parse_boundary
from vstack.auth import Access
from vstack.media import ProbeError, ProbeResult, stream_container, whole_seconds
from vstack.registers import idempotent_video_id
from vstack.upload_session import Session

from .errors import ChunkingFailed
from .ffmpeg import probe
from .job import UploadJob
from .receiver import Arrival, receive_upload
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
    """Receive, probe and register an upload; queue its processing.

    A video in a container that can be read front to back (MPEG-TS,
    Matroska/WebM, FLV, MP4 with its index first), whose form sends the title
    first, is registered and cut while it still arrives (:func:`_start_early`);
    any other once it has arrived whole.
    """
    limit = up.settings.max_upload_bytes
    boundary = parse_boundary(req.header("content-type"))
    length = req.content_length
    if length is not None and length > limit:
        raise ProtocolError(f"upload larger than the limit of {limit} bytes", 413)
    session_id = str(uuid.uuid4())
    path = up.upload_path(session_id)
    started = time.monotonic()
    arrival = Arrival(expected=None if length is None else max(1, length - FORM_SLACK))
    early: list[UploadJob] = []
    try:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_start_early, up, session_id, path, arrival, early, started)
                form = await receive_upload(body, boundary, path, limit=limit, arrival=arrival)
                arrival.ended()
        except BaseException as exc:
            arrival.failed(_why(exc))  # a job cutting it as it arrived fails, and cleans up
            raise single_error(exc) from None
        if early:
            job = early[0]
            job.session.size_bytes = form.size
        else:
            info = await _probe(up, path)
            key = f"upload-{session_id}"
            if arrival.early_key is not None:
                # The early start tried to register the video and gave up: its answer
                # may have been lost after the video was made. That video goes (it is
                # named by its key), and this upload registers one of its own.
                await _forget_early_video(up, arrival.early_key)
                key = f"upload-{session_id}-2"
            created = await up.metadata.create_video(
                VideoCreate(title=form.title, duration_sec=whole_seconds(info.duration)),
                idempotency_key=key)
            job = UploadJob(up, _session(session_id, created.video_id, form.title, form.filename,
                                         form.size, info), info, started=started)
            await job.submit()
    except BaseException:
        if not early:  # a job that started owns the file
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await trio.Path(path).unlink(missing_ok=True)
        raise
    s = job.session
    log.info("upload %s received: %r, %d bytes, %s, %.1f s -> video %s%s", session_id, s.title,
             s.size_bytes, s.format, s.duration_sec or 0.0, s.video_id,
             " (cut while it arrived)" if early else "")
    return json_response(200, {
        "video_id": s.video_id, "upload_session_id": session_id, "title": s.title,
        "status": "processing", "message": "Video upload received and processing started",
        "status_url": f"/upload/status/{session_id}", "queue_position": s.queue_position})


#: What the form around the video may add to the request's length (an estimate:
#: the video's size is known exactly only once it has arrived).
FORM_SLACK: Final = 1024
#: Bytes of an upload read before deciding to cut it as it arrives (FFmpeg needs
#: its headers; a smaller video is received whole, which is as quick).
EARLY_BYTES: Final = 512 * 1024
#: Seconds to register a video and queue its processing, once begun.
SUBMIT_SECONDS: Final = 30.0


async def _start_early(up: Uploader, session_id: str, path: Path, arrival: Arrival,
                       early: list[UploadJob], started: float) -> None:
    """Register the video and start cutting it while it arrives, if it can be.

    Never raises: anything that stops it leaves the upload to the whole-file path.
    """
    await arrival.wait_past(EARLY_BYTES - 1)
    if arrival.settled or arrival.title is None or arrival.filename is None:
        return
    if not up.live.free:
        # Cutting as it arrives holds a slot for as long as the upload takes (its
        # own kind: never one a received upload waits for); none free, none taken.
        log.debug("upload %s: no free slot to cut it as it arrives; received whole first",
                  session_id)
        return
    async with await trio.open_file(path, "rb") as f:
        head = await f.read(64 * 1024)
    kind = stream_container(head)
    if kind is None:
        log.debug("upload %s: not a container that can be cut as it arrives", session_id)
        return
    probed = arrival.written
    try:
        info = await probe(up.ffmpeg, path)
    except VStackError as exc:
        log.debug("upload %s: its first %d bytes could not be read (%s)", session_id, probed, exc)
        return
    if arrival.settled:
        return
    # FFmpeg read the length from a header (MP4, most Matroska and FLV), or guessed
    # it from what had arrived: then it is scaled to the whole (an estimate until cut).
    duration, size = info.duration, arrival.expected or probed
    if info.estimated and arrival.expected:
        duration = info.duration * arrival.expected / probed
    elif info.estimated:
        size = probed
    info = dataclasses.replace(info, duration=duration)
    title, filename = arrival.title, arrival.filename
    arrival.early_key = f"upload-{session_id}"
    with trio.CancelScope(shield=True) as scope:  # a video registered is a job queued
        scope.deadline = trio.current_time() + SUBMIT_SECONDS
        try:
            created = await up.metadata.create_video(
                VideoCreate(title=title, duration_sec=whole_seconds(duration)),
                idempotency_key=arrival.early_key)
            job = UploadJob(up, _session(session_id, created.video_id, title, filename,
                                         size, info), info, arrival=arrival, plan_size=size,
                            started=started)
            job.session.streamed = True
            await job.submit()
        except (VStackError, OSError) as exc:
            log.warning("upload %s: could not start cutting it as it arrives (%s); it will be "
                        "processed once received", session_id, exc)
            return
    if scope.cancelled_caught:
        return
    early.append(job)
    log.info("upload %s: cutting %s as it arrives (%d bytes in, ~%.1f s)", session_id,
             kind, probed, duration)


async def _forget_early_video(up: Uploader, key: str) -> None:
    """Delete the video an abandoned early start may have registered under ``key``.

    Raises:
        ProtocolError: 503 if the metadata service cannot say (nothing registered).
    """
    video_id = idempotent_video_id(key)
    try:
        await up.metadata.delete_video(video_id)
    except VStackError as exc:
        raise ProtocolError(f"could not withdraw video {video_id} registered while the "
                            f"upload arrived ({exc}); upload again", 503) from None


def _why(exc: BaseException) -> str:
    leaf = single_error(exc)
    if isinstance(leaf, ProtocolError):
        return leaf.msg
    if isinstance(leaf, trio.Cancelled):
        return "the upload was cancelled"
    return type(leaf).__name__


def _session(session_id: str, video_id: str, title: str, filename: str, size: int,
             info: ProbeResult) -> Session:
    return Session(session_id=session_id, video_id=video_id, title=title, filename=filename,
                   size_bytes=size, duration_sec=round(info.duration, 3),
                   format=info.format_label)


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
