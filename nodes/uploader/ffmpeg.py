"""Running FFmpeg from trio: which binary, and probe/segment calls."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import trio

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

__all__ = ["ChunkingFailed", "Oversize", "cut_streaming", "find_ffmpeg", "probe"]


class ChunkingFailed(Exception):
    """FFmpeg could not cut the video; the message says why, for a person."""


def find_ffmpeg(configured: str | None = None) -> str:
    """``configured``, else a system ``ffmpeg``, else the one imageio-ffmpeg ships."""
    if configured:
        return configured
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def probe(ffmpeg: str, path: Path) -> ProbeResult:
    with trio.fail_after(60):
        result = await trio.run_process(probe_command(ffmpeg, path), capture_stdout=True,
                                        capture_stderr=True, check=False,
                                        stdin=subprocess.DEVNULL)
    return parse_probe(result.stderr.decode("utf-8", "replace"))


class Oversize(Exception):
    """A copied segment came out larger than a chunk may be (keyframes too sparse)."""


async def cut_streaming(ffmpeg: str, src: Path, out_dir: Path, info: ProbeResult,
                        plan: SegmentPlan, send: trio.MemorySendChannel[Segment], *,
                        max_segment_bytes: int) -> ChunkingReport:
    """Cut ``src`` into MPEG-TS segments, sending each one as soon as FFmpeg closes it.

    FFmpeg lists a segment in its CSV only once the segment file is complete,
    so the caller can store chunk N while FFmpeg still cuts N+1.

    Raises:
        Oversize: a segment exceeds ``max_segment_bytes`` (FFmpeg is stopped).
        ChunkingFailed: FFmpeg failed, found no frames, or the file is truncated.
    """
    async with send:
        await trio.to_thread.run_sync(_clear, out_dir)
        cmd = segment_command(ffmpeg, src, out_dir, plan, info)
        done = trio.Event()
        outcome: list[subprocess.CompletedProcess[bytes]] = []
        sent: list[Segment] = []

        async def run() -> None:
            outcome.append(await trio.run_process(cmd, capture_stdout=True, capture_stderr=True,
                                                  check=False, stdin=subprocess.DEVNULL))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while True:
                finished = done.is_set()
                for seg, size in await trio.to_thread.run_sync(_new_segments, out_dir, len(sent)):
                    if size > max_segment_bytes:
                        raise Oversize(size)
                    sent.append(seg)
                    await send.send(seg)
                if finished:
                    break
                # FFmpeg's progress is only visible in its files: look again shortly.
                with trio.move_on_after(0.05):
                    await done.wait()
        result = outcome[0]
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


__all__ += ["ProbeError"]
