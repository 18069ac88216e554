"""The uploader service: a video file in, stored and listed chunks out.

``POST /upload`` streams the multipart body to ``TEMP_DIR`` as it arrives
(never the whole file in memory; ``MAX_UPLOAD_BYTES`` caps it with a 413),
probes the content with FFmpeg (the extension is not trusted), registers the
video with the metadata service (so the ``video_id`` in the answer is the one
every service knows) and queues the session. At most
``MAX_CONCURRENT_UPLOADS`` sessions are processed at once; the others wait in
order, their position in their status.

Processing: FFmpeg cuts MPEG-TS chunks at keyframes (see
:mod:`vstack.media`); each chunk gets its SHA-256 and goes to distinct
healthy nodes chosen by :func:`vstack.placement.choose_nodes`, over the
binary protocol, many chunks in flight; a node that fails is replaced by
another; each chunk is committed through the metadata service only once its
nodes acknowledged the fsynced write; the video becomes ``active`` when all
its chunks are committed. On any failure the video record and every chunk
already stored are removed: nothing is left behind.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from nodes.net.http_server import Body, Handler, HttpLimits, serve_http
from nodes.net.metadata_client import MetadataClient
from nodes.net.storage_client import StoragePool, open_storage_pool
from protocol.errors import ProtocolError
from protocol.http import Request, Response, Router, json_response
from protocol.multipart import Done, MultipartParser, PartData, PartEnd, PartStart, parse_boundary
from protocol.validate import ValidationError
from vstack.media import ChunkingReport, ProbeError, ProbeResult, Segment, SegmentPlan, plan_segments
from vstack.placement import NodeInfo, choose_nodes, required_copies
from vstack.settings import UploaderSettings
from vstack.upload_session import TERMINAL, Session, SessionStore

from .ffmpeg import ChunkingFailed, Oversize, cut_streaming, find_ffmpeg, probe

__all__ = ["Uploader", "serve_uploader"]

log = logging.getLogger("vstack.uploader")

MAX_TITLE = 255
WRITE_BATCH = 1 << 20
BAN_SECONDS = 30.0


class UploadFailed(Exception):
    pass


class Uploader:
    def __init__(self, settings: UploaderSettings, metadata: MetadataClient, pool: StoragePool,
                 nursery: trio.Nursery) -> None:
        self.settings = settings
        self.metadata = metadata
        self.pool = pool
        self.nursery = nursery
        self.ffmpeg = find_ffmpeg(settings.ffmpeg)
        self.incoming = settings.temp_dir / "incoming"
        self.work = settings.temp_dir / "work"
        for d in (self.incoming, self.work):
            d.mkdir(parents=True, exist_ok=True)
        self.store = SessionStore(settings.temp_dir / "sessions")
        self.sessions: dict[str, Session] = {s.session_id: s for s in self.store.all()}
        self.slots = trio.Semaphore(settings.max_concurrent_uploads)
        self.waiting: list[str] = []
        self.active = 0
        self.port = 0
        self._inflight: dict[str, int] = {}  # node url -> chunk writes in flight
        self._ban_until: dict[str, float] = {}

    # -- sessions ------------------------------------------------------------------

    async def save(self, s: Session) -> None:
        await trio.to_thread.run_sync(self.store.save, s)

    async def recover(self) -> None:
        """Sessions cut short by a restart are marked failed (the status stays);
        their video and chunks are removed in the background."""
        for s in self.sessions.values():
            if s.status not in TERMINAL:
                s.fail("interrupted by a restart of the uploader; please upload again")
                await self.save(s)
                log.warning("session %s was interrupted by a restart", s.session_id)
                self.nursery.start_soon(self._clean_interrupted, s)

    async def _clean_interrupted(self, s: Session) -> None:
        """Delete the video record, then every chunk id the session could have
        stored (which copies were placed died with the old process; chunk ids
        follow ``<video_id>-chunk-NNN`` and no chunk is shorter than 1 s)."""
        await self._cleanup(s, committed=set(), stored={})
        try:
            nodes = await self._healthy_nodes()
        except (UploadFailed, ProtocolError):
            return
        top = math.ceil(s.duration_sec or 0) + 2
        ids = [f"{s.video_id}-chunk-{seq:03d}" for seq in range(top)]
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(self.pool.delete_many, node.url, ids)

    # -- receiving -------------------------------------------------------------------

    async def receive(self, req: Request, body: Body) -> Response:
        s = self.settings
        boundary = parse_boundary(req.header("content-type"))
        length = req.content_length
        if length is not None and length > s.max_upload_bytes:
            raise ProtocolError(f"upload larger than the limit of {s.max_upload_bytes} bytes", 413)
        session_id = str(uuid.uuid4())
        path = self.incoming / f"{session_id}.upload"
        try:
            title, filename, size = await self._stream_to_file(body, boundary, path)
            info = await self._probe(path)
            video_id = await self._register(title, info)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.Path(path).unlink(missing_ok=True)
            raise
        sess = Session(session_id=session_id, video_id=video_id, title=title, filename=filename,
                       size_bytes=size, duration_sec=round(info.duration, 3),
                       format=info.format_label)
        self.sessions[session_id] = sess
        self.waiting.append(session_id)
        self._update_positions()
        await self.save(sess)
        self.nursery.start_soon(self._process, sess, path, info)
        log.info("upload %s received: %r, %d bytes, %s, %.1f s -> video %s", session_id, title,
                 size, info.format_label, info.duration, video_id)
        return json_response(200, {
            "video_id": video_id, "upload_session_id": session_id, "title": title,
            "status": "processing", "message": "Video upload received and processing started",
            "status_url": f"/upload/status/{session_id}", "queue_position": sess.queue_position})

    async def _stream_to_file(self, body: Body, boundary: bytes, path: Path) -> tuple[str, str, int]:
        parser = MultipartParser(boundary)
        title: str | None = None
        filename: str | None = None
        current: str | None = None
        text = bytearray()
        size = 0
        pending: list[bytes] = []
        pending_bytes = 0
        limit = self.settings.max_upload_bytes
        async with await trio.open_file(path, "wb") as f:
            async def flush() -> None:
                nonlocal pending, pending_bytes
                if pending:
                    chunk = b"".join(pending)
                    pending, pending_bytes = [], 0
                    await f.write(chunk)

            async for piece in body.chunks(limit + 64 * 1024):
                for ev in parser.feed(piece):
                    if isinstance(ev, PartStart):
                        current = ev.name
                        if ev.name == "video":
                            if filename is not None:
                                raise ProtocolError("more than one video part", 400)
                            if not ev.filename:
                                raise ProtocolError("No filename provided", 400)
                            filename = ev.filename
                        text.clear()
                    elif isinstance(ev, PartData):
                        if current == "video":
                            size += len(ev.data)
                            if size > limit:
                                raise ProtocolError(
                                    f"upload larger than the limit of {limit} bytes", 413)
                            pending.append(ev.data)
                            pending_bytes += len(ev.data)
                            if pending_bytes >= WRITE_BATCH:
                                await flush()
                        elif current == "title":
                            text += ev.data
                            if len(text) > 4 * MAX_TITLE:
                                raise _invalid("title", "title is too long")
                    elif isinstance(ev, PartEnd):
                        if current == "title":
                            title = text.decode("utf-8", "replace").strip()
                        current = None
                    elif isinstance(ev, Done):
                        break
            parser.close()
            await flush()
        if filename is None:
            raise _invalid("video", "Field required: a 'video' file part")
        if not title:
            raise _invalid("title", "Field required: a non-empty 'title' part")
        if len(title) > MAX_TITLE:
            raise _invalid("title", f"title longer than {MAX_TITLE} characters")
        if size == 0:
            raise ProtocolError("the video file is empty", 400)
        return title, filename, size

    async def _probe(self, path: Path) -> ProbeResult:
        try:
            return await probe(self.ffmpeg, path)
        except ProbeError as exc:
            raise ProtocolError(f"Unsupported video format: {exc}", 400) from None

    async def _register(self, title: str, info: ProbeResult) -> str:
        created = await self.metadata.json("POST", "/video", {
            "title": title, "duration_sec": max(1, math.ceil(info.duration))})
        return str(created["video_id"])

    def _update_positions(self) -> None:
        for i, sid in enumerate(self.waiting):
            self.sessions[sid].queue_position = i + 1

    # -- processing ----------------------------------------------------------------------

    async def _process(self, s: Session, path: Path, info: ProbeResult) -> None:
        stored: dict[int, list[str]] = {}  # seq -> node urls holding an uncommitted copy
        committed: set[int] = set()
        work = self.work / s.session_id
        try:
            async with self.slots:
                self.waiting.remove(s.session_id)
                self._update_positions()
                self.active += 1
                try:
                    await self._pipeline(s, path, info, work, stored, committed)
                finally:
                    self.active -= 1
        except (UploadFailed, ChunkingFailed, ProtocolError) as exc:
            msg = exc.msg if isinstance(exc, ProtocolError) else str(exc)
            await self._fail(s, msg, stored, committed)
        except Exception as exc:
            log.exception("upload %s failed", s.session_id)
            await self._fail(s, f"internal error: {exc}", stored, committed)
        finally:
            with trio.CancelScope(shield=True):
                await trio.Path(path).unlink(missing_ok=True)
                await trio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))

    async def _fail(self, s: Session, error: str, stored: dict[int, list[str]],
                    committed: set[int]) -> None:
        log.warning("upload %s (video %s) failed: %s", s.session_id, s.video_id, error)
        s.fail(error)
        with trio.CancelScope(shield=True):
            await self.save(s)
            await self._cleanup(s, committed=committed, stored=stored)

    async def _cleanup(self, s: Session, *, committed: set[int], stored: dict[int, list[str]]
                       ) -> None:
        """Remove the video record (the metadata service deletes committed
        chunks from their nodes) and every uncommitted copy we stored."""
        try:
            with trio.fail_after(30):
                res = await self.metadata.call("DELETE", f"/video/{s.video_id}")
            if res.status not in (200, 404):
                log.warning("could not delete video %s: %d", s.video_id, res.status)
        except (ProtocolError, trio.TooSlowError) as exc:
            log.warning("could not delete video %s: %s", s.video_id, exc)
        for seq, urls in stored.items():
            if seq in committed:
                continue  # the video's deletion removed it from its nodes
            for url in urls:
                await self.pool.delete(url, f"{s.video_id}-chunk-{seq:03d}")

    async def _pipeline(self, s: Session, path: Path, info: ProbeResult, work: Path,
                        stored: dict[int, list[str]], committed: set[int]) -> None:
        cfg = self.settings
        s.advance("processing")
        await self.save(s)
        await trio.Path(work).mkdir(parents=True, exist_ok=True)
        nodes = await self._healthy_nodes()
        size = (await trio.Path(path).stat()).st_size
        t0 = time.monotonic()
        for force in (False, True):
            plan = plan_segments(info, size, chunk_size=cfg.chunk_size,
                                 chunk_duration=cfg.chunk_duration, force_transcode=force)
            s.transcoded = plan.transcode_video
            s.advance("chunking")
            await self.save(s)
            try:
                report = await self._cut_and_store(s, path, info, work, plan, nodes, stored,
                                                   committed)
                break
            except Oversize as exc:
                if plan.transcode_video:
                    raise ChunkingFailed(
                        f"a chunk of {exc.args[0] >> 20} MiB exceeds the "
                        f"{cfg.max_segment_bytes >> 20} MiB limit even after re-encoding") from None
                log.info("upload %s: keyframes too sparse for %d-byte chunks; re-encoding",
                         s.session_id, cfg.chunk_size)
                await self._discard(s, stored)
                committed.clear()
                s.chunks_done = 0
        segments = report.segments
        s.total_chunks = len(segments)
        log.info("upload %s: %d chunks of ~%.1f s (%s), cut and stored in %.2f s", s.session_id,
                 len(segments), report.segment_time,
                 "transcoded" if report.transcoded else "remuxed", time.monotonic() - t0)
        await self.save(s)
        s.advance("finalizing")
        await self.save(s)
        manifest = await self.metadata.json("GET", f"/manifest/{s.video_id}")
        if manifest["total_chunks"] != len(segments) or any(
                not (c["replicas"] or c["fragments"]) for c in manifest["chunks"]):
            raise UploadFailed("the manifest does not list every chunk; upload again")
        await self.metadata.json("PATCH", f"/video/{s.video_id}/status", {"status": "active"})
        s.manifest_url = f"/manifest/{s.video_id}"
        s.advance("completed")
        await self.save(s)
        log.info("upload %s completed: video %s, %d chunks", s.session_id, s.video_id,
                 len(segments))

    async def _cut_and_store(self, s: Session, path: Path, info: ProbeResult, work: Path,
                             plan: SegmentPlan, nodes: list[NodeInfo],
                             stored: dict[int, list[str]], committed: set[int]) -> ChunkingReport:
        """Cut and store at once: each chunk is stored as soon as FFmpeg finishes it."""
        cfg = self.settings
        send, recv = trio.open_memory_channel[Segment](math.inf)
        limiter = trio.Semaphore(cfg.chunks_in_flight)
        expected = max(1, math.ceil(info.duration / plan.segment_time))
        reports: list[ChunkingReport] = []

        async def one(seq: int, seg: Segment, origin: float) -> None:
            try:
                await self._store_chunk(s, seq, seg, origin, nodes, stored, committed)
            finally:
                limiter.release()
            s.chunks_done = len(committed)
            s.progress = max(s.progress, min(89, 50 + int(40 * len(committed) / expected)))

        async def cut() -> None:
            reports.append(await cut_streaming(self.ffmpeg, path, work, info, plan, send,
                                               max_segment_bytes=cfg.max_segment_bytes))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cut)
                origin: float | None = None
                seq = 0
                async with recv:
                    async for seg in recv:
                        if origin is None:
                            origin = seg.start
                            s.advance("uploading_chunks")
                            await self.save(s)
                        await limiter.acquire()
                        nursery.start_soon(one, seq, seg, origin)
                        seq += 1
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        return reports[0]

    async def _discard(self, s: Session, stored: dict[int, list[str]]) -> None:
        """Delete every chunk placed so far from its nodes (before cutting again)."""
        async with trio.open_nursery() as nursery:
            for seq, urls in stored.items():
                for url in urls:
                    nursery.start_soon(self.pool.delete, url, f"{s.video_id}-chunk-{seq:03d}")
        stored.clear()

    async def _healthy_nodes(self) -> list[NodeInfo]:
        rows = await self.metadata.json("GET", "/nodes/healthy")
        nodes = [NodeInfo(url=r["node_url"], node_id=r["node_id"],
                          disk_usage_percent=float(r["disk_usage_percent"])) for r in rows]
        if not nodes:
            raise UploadFailed("no healthy storage nodes are registered")
        return nodes

    async def _store_chunk(self, s: Session, seq: int, seg: Segment, origin: float,
                           nodes: list[NodeInfo], stored: dict[int, list[str]],
                           committed: set[int]) -> None:
        cfg = self.settings
        data = await trio.to_thread.run_sync(seg.path.read_bytes)
        sha = await trio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
        chunk_id = f"{s.video_id}-chunk-{seq:03d}"
        banned = self._banned()
        alive = [n for n in nodes if n.url not in banned]
        need = required_copies(cfg.replicas, len(alive))
        holders: list[str] = stored.setdefault(seq, [])
        tried: set[str] = set(banned)
        errors: list[str] = []
        for _ in range(3):  # place, commit; re-place what a lost node held, commit again
            await self._place(chunk_id, data, sha, seq, nodes, holders, tried, errors)
            if len(holders) < need:
                raise UploadFailed(f"chunk {seq}: only {len(holders)} of {need} copies could be "
                                   f"stored ({'; '.join(errors) or 'no nodes left'})")
            commit = {"node_urls": holders, "checksum": sha, "size_bytes": len(data),
                      "video_id": s.video_id, "sequence_num": seq,
                      "redundancy_mode": "replication", "duration_sec": round(seg.duration, 3),
                      "start_sec": round(seg.start - origin, 3)}
            res = await self.metadata.json("POST", f"/chunk/{chunk_id}/commit", commit)
            if res.get("success") is True:
                committed.add(seq)
                return
            # Some holder no longer has it (died after acknowledging?): find out which.
            for url in list(holders):
                if not await self.pool.holds(url, chunk_id, sha):
                    holders.remove(url)
                    tried.add(url)
                    self._ban(url)
                    errors.append(f"{url}: lost the chunk after storing it")
        raise UploadFailed(f"chunk {seq}: the metadata service could not confirm its copies "
                           f"({'; '.join(errors)})")

    async def _place(self, chunk_id: str, data: bytes, sha: str, seq: int, nodes: list[NodeInfo],
                     holders: list[str], tried: set[str], errors: list[str]) -> None:
        """Store the chunk on nodes until ``replicas`` hold it or none are left to try."""
        cfg = self.settings
        while len(holders) < cfg.replicas:
            picks = choose_nodes(nodes, cfg.replicas - len(holders), load=self._inflight,
                                 exclude=tried | set(holders), turn=seq)
            if not picks:
                break

            async def put(node: NodeInfo) -> None:
                self._inflight[node.url] = self._inflight.get(node.url, 0) + 1
                try:
                    with trio.fail_after(60):
                        await self.pool.put(node.url, chunk_id, data, sha)
                    holders.append(node.url)
                except (ProtocolError, trio.TooSlowError) as exc:
                    tried.add(node.url)
                    self._ban(node.url)
                    errors.append(f"{node.node_id}: {getattr(exc, 'msg', exc)}")
                    log.warning("chunk %s: %s failed (%s); trying another node", chunk_id,
                                node.node_id, getattr(exc, "msg", exc))
                finally:
                    self._inflight[node.url] -= 1

            async with trio.open_nursery() as nursery:
                for node in picks:
                    tried.add(node.url)
                    nursery.start_soon(put, node)

    def _banned(self) -> set[str]:
        """Nodes that failed a write in the last :data:`BAN_SECONDS`: not chosen meanwhile."""
        now = time.monotonic()
        self._ban_until = {u: t for u, t in self._ban_until.items() if t > now}
        return set(self._ban_until)

    @property
    def failed_nodes(self) -> set[str]:
        """Nodes that failed a write recently (shown in /health)."""
        return self._banned()

    def _ban(self, url: str) -> None:
        self._ban_until[url] = time.monotonic() + BAN_SECONDS

    def health(self) -> dict[str, Any]:
        return {"status": "healthy", "service": "uploader-service", "active_uploads": self.active,
                "queued_uploads": len(self.waiting),
                "max_concurrent_uploads": self.settings.max_concurrent_uploads,
                "failed_nodes": sorted(self.failed_nodes),
                "ffmpeg": self.ffmpeg}


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first real failure in a (nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group


def _invalid(field: str, msg: str) -> ValidationError:
    return ValidationError([{"type": "missing", "loc": ["body", field], "msg": msg, "input": None}])


def build_router(up: Uploader) -> Router[Handler]:
    r: Router[Handler] = Router()

    async def health(req: Request, body: Body) -> Response:
        return json_response(200, up.health())

    async def status(req: Request, body: Body) -> Response:
        s = up.sessions.get(req.params["session_id"])
        if s is None:
            raise ProtocolError("Upload session not found", 404)
        return json_response(200, s.public())

    r.add("GET", "/health", health)
    r.add("POST", "/upload", up.receive)
    r.add("GET", "/upload/status/{session_id}", status)
    return r


async def serve_uploader(settings: UploaderSettings, *,
                         task_status: trio.TaskStatus[Uploader] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the uploader until cancelled; reports it once listening."""
    metadata = MetadataClient(settings.metadata_urls)
    try:
        async with open_storage_pool() as pool, trio.open_nursery() as nursery:
            up = Uploader(settings, metadata, pool, nursery)
            await up.recover()
            up.port = await nursery.start(_api_server(up))
            log.info("uploader ready on port %d (ffmpeg %s, temp %s)", up.port, up.ffmpeg,
                     settings.temp_dir)
            task_status.started(up)
    finally:
        with trio.CancelScope(shield=True):
            await metadata.aclose()


def _api_server(up: Uploader) -> Any:
    s = up.settings

    async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_http(build_router(up), host=s.host, port=s.port,
                         limits=HttpLimits(read_timeout=s.read_timeout, idle_timeout=s.idle_timeout),
                         task_status=task_status)

    return run
