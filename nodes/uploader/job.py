"""One upload's processing, from its received file to an ``active`` video or to nothing.

Theory of operation. An :class:`UploadJob` holds everything about one
upload: its session (what ``/upload/status`` shows), its files, what FFmpeg
found in it, the segment plan, and which chunks are stored where and which
are committed. :meth:`UploadJob.run` is the task the service starts for it:

1. wait in :class:`~nodes.uploader.state.UploadQueue` for a processing slot;
2. cut the video with FFmpeg and store each chunk as soon as FFmpeg closes
   it (:mod:`nodes.uploader.placer`; ``chunks_in_flight`` at once), so
   cutting and distribution overlap. If copying the video would make a
   chunk larger than a node accepts (keyframes too sparse), the chunks
   stored so far are deleted and the video is cut again, re-encoded;
3. check that the manifest lists every chunk, and mark the video ``active``.

Any failure ends the session ``failed`` with a message for a person, and
removes the video record and every copy stored (:mod:`nodes.uploader.cleanup`),
but only before the video is ``active``: from then on nothing fails the upload
(a session that cannot be saved ``completed`` is shown so from memory, and a
restart completes it). A session's stage, ``failed`` too, is saved before it
is shown.
:meth:`run` never raises (except for cancellation): one upload going wrong
in an unexpected way is logged and failed, and the service goes on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Final

import trio

from protocol.errors import VStackError
from vstack.media import (
    ChunkingReport,
    ProbeResult,
    Segment,
    SegmentPlan,
    plan_segments,
    whole_seconds,
)
from vstack.redundancy import ERASURE_CODING, REPLICATION
from vstack.settings import UploaderSettings
from vstack.upload_session import Session

from .cleanup import delete_copies, remove_files, remove_upload, settle_later
from .errors import ChunkingFailed, OutcomeUnknown, Oversize, UploadFailed
from .ffmpeg import cut_streaming
from .placer import Chunk, Placer, ShardPlacer, healthy_nodes
from .receiver import Arrival
from .state import Uploader, UploadQueue

__all__ = ["UploadJob"]

log = logging.getLogger("vstack.uploader")

#: How long cleaning up after a failure may delay a shutdown.
CLEANUP_SECONDS: Final = 120.0
#: Fewest healthy nodes that can hold 5 shards so that losing one leaves 3 (2+2+1).
MIN_EC_NODES: Final = 3
#: Seconds to learn whether a video became active when making it so got no answer.
ACTIVATE_CHECK_SECONDS: Final = 15.0


class UploadJob:
    """One upload: its session, files, plan and chunk bookkeeping, and its pipeline."""

    def __init__(self, up: Uploader, session: Session, info: ProbeResult, *,
                 arrival: Arrival | None = None, plan_size: int | None = None,
                 started: float | None = None) -> None:
        """``arrival``: the upload is still arriving (cut it as it does), planned as
        ``plan_size`` bytes; ``started``: when it began (``time.monotonic()``)."""
        self.up = up
        self.session = session
        self.info = info
        self.arrival = arrival
        self.plan_size = plan_size
        self.started = time.monotonic() if started is None else started
        self.durations: dict[int, float] = {}  # seq -> seconds, of committed chunks
        self.source: Path = up.upload_path(session.session_id)
        self.work: Path = up.work_dir(session.session_id)
        self.plan: SegmentPlan | None = None
        self.report: ChunkingReport | None = None
        self.stored: dict[int, list[str]] = {}  # seq -> nodes holding a copy
        self.committed: set[int] = set()

    @property
    def settings(self) -> UploaderSettings:
        return self.up.settings

    @property
    def queue(self) -> UploadQueue:
        """Where it waits for a processing slot: cut as it arrives, it has its own."""
        return self.up.live if self.arrival is not None else self.up.queue

    @property
    def video_id(self) -> str:
        return self.session.video_id

    async def submit(self) -> None:
        """Queue the upload, save its session and start :meth:`run` in the service's nursery.

        If the session cannot be saved, the upload is withdrawn (its video
        record deleted) and the error raised.
        """
        up, s = self.up, self.session
        up.sessions[s.session_id] = s
        self.queue.enter(s)
        try:
            await up.save(s)
        except BaseException:
            del up.sessions[s.session_id]
            self.queue.leave(s)
            with trio.move_on_after(CLEANUP_SECONDS) as scope:
                scope.shield = True
                await remove_upload(up, s.video_id, {})
            raise
        up.nursery.start_soon(self.run)

    async def run(self) -> None:
        """Process the upload; a failure fails the session, never the service."""
        try:
            async with self.queue.slot(self.session):
                await self._pipeline()
        except OutcomeUnknown as exc:
            # Neither failed nor completed: settled by the video's state once the
            # metadata service answers, as after a restart (never deleted meanwhile).
            log.warning("upload %s: whether video %s became active is unknown (%s); asking "
                        "again until the metadata service answers", self.session.session_id,
                        self.video_id, exc)
            self.up.nursery.start_soon(settle_later, self.up, self.session)
        except Exception as exc:
            await self._fail(_reason(exc, self.session.session_id))
        finally:
            with trio.move_on_after(CLEANUP_SECONDS) as scope:
                scope.shield = True
                await remove_files(self.up, self.session.session_id)

    # -- the pipeline -----------------------------------------------------------------

    async def _pipeline(self) -> None:
        await self._advance("processing")
        await trio.Path(self.work).mkdir(parents=True, exist_ok=True)
        nodes = await healthy_nodes(self.up.metadata)
        mode = await self._mode(len(nodes))
        self.session.redundancy_mode = mode
        kind = ShardPlacer if mode == ERASURE_CODING else Placer
        placer = kind(pool=self.up.pool, metadata=self.up.metadata, nodes=nodes,
                      replicas=self.settings.replicas, tracker=self.up.nodes)
        t0 = time.monotonic()
        report = await self._chunk(placer)
        count = len(report.segments)
        self.session.total_chunks = count
        log.info("upload %s: %d chunks of ~%.1f s (%s), cut and stored in %.2f s",
                 self.session.session_id, count, report.segment_time,
                 "transcoded" if report.transcoded else "remuxed", time.monotonic() - t0)
        await self._advance("finalizing")
        await self._activate(count)
        log.info("upload %s completed: video %s, %d chunks", self.session.session_id,
                 self.video_id, count)

    async def _chunk(self, placer: Placer) -> ChunkingReport:
        """Cut and store, copying the video if it can be, re-encoding it otherwise."""
        cfg = self.settings
        size = self.plan_size or (await trio.Path(self.source).stat()).st_size
        for force in (False, True):
            self.plan = plan = plan_segments(self.info, size, chunk_size=cfg.chunk_size,
                                             chunk_duration=cfg.chunk_duration,
                                             force_transcode=force)
            self.session.transcoded = plan.transcode_video
            await self._advance("chunking")
            try:
                return await self._cut_and_store(placer)
            except Oversize as exc:
                if plan.transcode_video:
                    raise ChunkingFailed(f"{exc} even after re-encoding") from None
                log.info("upload %s: keyframes too sparse for %d-byte chunks; re-encoding",
                         self.session.session_id, cfg.chunk_size)
                await self._discard()
        raise AssertionError("unreachable: the second plan re-encodes")

    async def _cut_and_store(self, placer: Placer) -> ChunkingReport:
        """Store each chunk as soon as FFmpeg finishes it."""
        send, recv = trio.open_memory_channel[Segment](math.inf)
        self.report = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cut, send)
                await self._store_all(nursery, recv, placer)
        except BaseExceptionGroup as group:
            first = _first_error(group)
            if first is None:
                raise
            raise first from None
        assert self.report is not None
        return self.report

    async def _cut(self, send: trio.MemorySendChannel[Segment]) -> None:
        assert self.plan is not None
        self.report = await cut_streaming(self.up.ffmpeg, self.source, self.work, self.info,
                                          self.plan, send,
                                          max_segment_bytes=self.settings.max_segment_bytes,
                                          arrival=self.arrival)

    async def _store_all(self, nursery: trio.Nursery, recv: trio.MemoryReceiveChannel[Segment],
                         placer: Placer) -> None:
        """Start storing each segment FFmpeg sends, ``chunks_in_flight`` at a time."""
        in_flight = trio.Semaphore(self.settings.chunks_in_flight)
        origin: float | None = None
        seq = 0
        async with recv:
            async for seg in recv:
                if origin is None:
                    origin = seg.start
                    await self._advance("uploading_chunks")
                await in_flight.acquire()
                nursery.start_soon(self._store_segment, placer, seq, seg, origin, in_flight)
                seq += 1

    async def _store_segment(self, placer: Placer, seq: int, seg: Segment, origin: float,
                             in_flight: trio.Semaphore) -> None:
        try:
            data, sha = await trio.to_thread.run_sync(_read_hashed, seg.path)
            chunk = Chunk(video_id=self.video_id, seq=seq, data=data, sha256=sha,
                          duration=seg.duration, start=seg.start - origin)
            await placer.place(chunk, self.stored.setdefault(seq, []))
        finally:
            in_flight.release()
        self.committed.add(seq)
        self.durations[seq] = chunk.duration
        self._progress()

    def _progress(self) -> None:
        assert self.plan is not None
        s = self.session
        while s.ready_chunks in self.committed:  # playable: every chunk from the first on
            s.ready_sec = round(s.ready_sec + self.durations[s.ready_chunks], 3)
            s.ready_chunks += 1
        if s.ready_chunks and s.first_chunk_after_sec is None:
            s.first_chunk_after_sec = round(time.monotonic() - self.started, 3)
        expected = max(1, math.ceil(self.info.duration / self.plan.segment_time))
        s.chunks_done = len(self.committed)
        s.progress = max(s.progress, min(89, 50 + int(40 * len(self.committed) / expected)))

    async def _discard(self) -> None:
        """Delete every chunk placed so far from its nodes (before cutting again)."""
        await delete_copies(self.up.pool, self.video_id, self.stored)
        self.stored.clear()
        self.committed.clear()
        self.durations.clear()
        self.session.chunks_done = self.session.ready_chunks = 0
        self.session.ready_sec = 0.0

    async def _activate(self, count: int) -> None:
        """Check the manifest lists every chunk with a copy; make the video ``active``."""
        manifest = await self.up.metadata.manifest(self.video_id, linearizable=True)
        if manifest is None:
            raise UploadFailed("the video record disappeared while it was stored; upload again")
        if manifest.total_chunks != count or any(
                not (c.replicas or c.fragments) for c in manifest.chunks):
            raise UploadFailed("the manifest does not list every chunk; upload again")
        assert self.report is not None
        segs = self.report.segments
        length = whole_seconds(segs[-1].end - segs[0].start) if segs else None
        try:
            # The length FFmpeg cut: a video cut as it arrived was created with an estimate.
            await self.up.metadata.set_status(self.video_id, "active", duration_sec=length)
        except VStackError:
            # The change may have been made and only its answer lost: ask before
            # failing, since failing deletes the video.
            if not await self._became_active():
                raise
        # A crash here leaves an active video and a session not yet completed:
        # recovery asks the metadata service and completes it (cleanup.recover).
        self.session.manifest_url = f"/manifest/{self.video_id}"
        try:
            await self._advance("completed")
        except OSError as exc:
            # The video is active: nothing may fail the upload now (failing deletes
            # it). Shown from memory; a restart completes it, as after a crash here.
            self.session.advance("completed")
            log.error("upload %s: video %s is active, but its session could not be saved "
                      "completed (%s); a restart will complete it", self.session.session_id,
                      self.video_id, exc)

    async def _mode(self, nodes: int) -> str:
        """How to store this video: ``UPLOAD_REDUNDANCY``, by default what
        ``/redundancy/recommend`` says (erasure coding below the popularity
        threshold, or an override), if the nodes allow it."""
        mode = self.settings.redundancy
        if mode == "auto":
            try:
                mode = (await self.up.metadata.recommend(self.video_id)).recommended_mode
            except VStackError as exc:
                log.warning("upload %s: no redundancy recommendation (%s); replicating",
                            self.session.session_id, exc)
                return REPLICATION
        if mode == ERASURE_CODING and nodes < MIN_EC_NODES:
            log.info("upload %s: %d healthy nodes, too few for erasure coding; replicating",
                     self.session.session_id, nodes)
            return REPLICATION
        return mode

    async def _became_active(self) -> bool:
        """Whether the video is ``active`` after all (a quorum read).

        Raises:
            OutcomeUnknown: the metadata service cannot tell either.
        """
        try:
            with trio.fail_after(ACTIVATE_CHECK_SECONDS):
                manifest = await self.up.metadata.manifest(self.video_id, linearizable=True)
        except (VStackError, trio.TooSlowError) as exc:
            raise OutcomeUnknown(str(exc)) from None
        return manifest is not None and manifest.status == "active"

    async def _advance(self, stage: str) -> None:
        """Move the session to ``stage``: saved first, then shown."""
        await self.up.save_then_show(self.session, lambda s: s.advance(stage))

    # -- failure ------------------------------------------------------------------------

    async def _fail(self, error: str) -> None:
        """Fail the session and remove what was stored; never raises."""
        s = self.session
        log.warning("upload %s (video %s) failed: %s", s.session_id, s.video_id, error)
        uncommitted = {seq: urls for seq, urls in self.stored.items()
                       if seq not in self.committed}  # the video's deletion removes the rest
        with trio.move_on_after(CLEANUP_SECONDS) as scope:
            scope.shield = True
            try:
                await self.up.save_then_show(s, lambda ahead: ahead.fail(error))
            except OSError as exc:
                log.error("upload %s: could not save its session: %s", s.session_id, exc)
            finally:
                s.fail(error)  # shown (from memory if the save failed); a restart settles it
            try:
                await remove_upload(self.up, s.video_id, uncommitted)
            except Exception:
                log.exception("upload %s: cleaning up after the failure failed", s.session_id)


def _read_hashed(path: Path) -> tuple[bytes, str]:
    """A segment's bytes and their SHA-256 (hex), in one trip to a worker thread."""
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first failure in a (nested) exception group that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_error(exc)
            if inner is not None:
                return inner
        elif not isinstance(exc, trio.Cancelled):
            return exc
    return None


def _reason(exc: Exception, session_id: str) -> str:
    """The message a failed session shows for ``exc``."""
    if isinstance(exc, BaseExceptionGroup):
        first = _first_error(exc)
        if isinstance(first, Exception):
            exc = first
    if isinstance(exc, VStackError):
        return str(exc)
    log.error("upload %s failed unexpectedly", session_id, exc_info=exc)
    return f"internal error: {exc}"
