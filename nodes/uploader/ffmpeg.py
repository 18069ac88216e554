"""Running FFmpeg from trio: which binary, and the probe and segment calls.

The commands and the parsing of FFmpeg's output are sans-IO, in
:mod:`vstack.media`; this module only runs the process. Cutting is
*streaming*: FFmpeg writes one MPEG-TS file per segment and lists each one in
a CSV once it is complete, so :func:`cut_streaming` hands chunk N to the
caller while FFmpeg still cuts N+1 (FFmpeg's progress is only visible in its
files, so they are looked at every 50 ms).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import trio

from nodes.net.errors import deadline
from vstack.media import (
    ChunkingReport,
    ProbeError,
    ProbeResult,
    Segment,
    SegmentPlan,
    parse_probe,
    parse_segment_list,
    probe_command,
    segment_command,
)

from .errors import ChunkingFailed, Oversize

__all__ = ["ChunkingFailed", "Oversize", "ProbeError", "cut_streaming", "find_ffmpeg", "probe"]

PROBE_SECONDS = 60.0
POLL_SECONDS = 0.05


def find_ffmpeg(configured: str | None = None) -> str:
    """``configured``, else a system ``ffmpeg``, else the one imageio-ffmpeg ships."""
    if configured:
        return configured
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def _run(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run FFmpeg to the end, capturing its output.

    Raises:
        ChunkingFailed: the binary could not be started at all.
    """
    try:
        return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                      stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise ChunkingFailed(f"FFmpeg ({cmd[0]}) could not be started: {exc}") from None


async def probe(ffmpeg: str, path: Path) -> ProbeResult:
    """What the file holds, read by FFmpeg (the extension is not trusted).

    Raises:
        ProbeError: FFmpeg finds no video in it.
        PeerTimeout: FFmpeg took longer than :data:`PROBE_SECONDS`.
        ChunkingFailed: FFmpeg could not be started.
    """
    with deadline(PROBE_SECONDS, "FFmpeg reading the upload"):
        result = await _run(probe_command(ffmpeg, path))
    return parse_probe(result.stderr.decode("utf-8", "replace"))


async def cut_streaming(ffmpeg: str, src: Path, out_dir: Path, info: ProbeResult,
                        plan: SegmentPlan, send: trio.MemorySendChannel[Segment], *,
                        max_segment_bytes: int) -> ChunkingReport:
    """Cut ``src`` into MPEG-TS segments, sending each one as soon as FFmpeg closes it.

    ``send`` is closed on return. Errors are raised bare, never inside an
    exception group.

    Raises:
        Oversize: a segment exceeds ``max_segment_bytes`` (FFmpeg is stopped).
        ChunkingFailed: FFmpeg failed, found no frames, or the file is truncated.
    """
    async with send:
        await trio.to_thread.run_sync(_clear, out_dir)
        cmd = segment_command(ffmpeg, src, out_dir, plan, info)
        done = trio.Event()
        outcome: list[subprocess.CompletedProcess[bytes] | ChunkingFailed] = []
        sent: list[Segment] = []

        async def run() -> None:
            try:
                outcome.append(await _run(cmd))
            except ChunkingFailed as exc:
                outcome.append(exc)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            too_big = await _forward(out_dir, done, send, sent, max_segment_bytes)
            nursery.cancel_scope.cancel()  # stops FFmpeg if it is still cutting
        if too_big is not None:
            raise Oversize(too_big, max_segment_bytes)
        if isinstance(outcome[0], ChunkingFailed):
            raise outcome[0]
        return _report(outcome[0], sent, info, plan)


async def _forward(out_dir: Path, done: trio.Event, send: trio.MemorySendChannel[Segment],
                   sent: list[Segment], max_segment_bytes: int) -> int | None:
    """Send each segment FFmpeg finishes until it exits; the size of a
    segment over the limit stops it early."""
    while True:
        finished = done.is_set()
        for seg, size in await trio.to_thread.run_sync(_new_segments, out_dir, len(sent)):
            if size > max_segment_bytes:
                return size
            sent.append(seg)
            await send.send(seg)
        if finished:
            return None
        with trio.move_on_after(POLL_SECONDS):
            await done.wait()


def _report(result: subprocess.CompletedProcess[bytes], sent: list[Segment], info: ProbeResult,
            plan: SegmentPlan) -> ChunkingReport:
    """Check FFmpeg's outcome once it exited.

    Raises:
        ChunkingFailed: it failed, cut nothing, or covered too little of the video.
    """
    err = result.stderr.decode("utf-8", "replace").strip()
    if result.returncode != 0:
        last = err.splitlines()[-1] if err else f"exit code {result.returncode}"
        raise ChunkingFailed(f"FFmpeg could not read the video: {last}")
    if not sent:
        raise ChunkingFailed("the video has no frames FFmpeg could read")
    covered = sent[-1].end - sent[0].start
    if covered < info.duration * 0.9 - 0.5:
        raise ChunkingFailed(
            f"the file is truncated or damaged: only {covered:.1f} s of its "
            f"{info.duration:.1f} s could be read")
    return ChunkingReport(segments=sent, transcoded=plan.transcode_video,
                          segment_time=plan.segment_time)


def _clear(out_dir: Path) -> None:
    for old in [*out_dir.glob("seg*.ts"), out_dir / "segments.csv"]:
        old.unlink(missing_ok=True)


def _new_segments(out_dir: Path, seen: int) -> list[tuple[Segment, int]]:
    """Segments FFmpeg has finished since the first ``seen``, with their sizes."""
    try:
        text = (out_dir / "segments.csv").read_text()
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]  # a line being written is not listed yet
    listed = parse_segment_list(complete, out_dir)[seen:]
    return [(s, s.path.stat().st_size) for s in listed]
