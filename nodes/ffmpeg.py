"""Running FFmpeg from trio: which binary, and probe/segment calls."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import trio

from vstack.media import (
    ChunkingReport,
    ProbeError,
    ProbeResult,
    Segment,
    parse_probe,
    parse_segment_list,
    plan_segments,
    probe_command,
    segment_command,
)

__all__ = ["ChunkingFailed", "chunk_video", "find_ffmpeg", "probe"]


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


async def chunk_video(ffmpeg: str, src: Path, out_dir: Path, info: ProbeResult, *,
                      chunk_size: int, chunk_duration: float, max_segment_bytes: int,
                      ) -> ChunkingReport:
    """Cut ``src`` into MPEG-TS segments in ``out_dir``.

    Raises:
        ChunkingFailed: FFmpeg failed, the file is truncated, or no segment
            plan keeps chunks under ``max_segment_bytes``.
    """
    size = (await trio.Path(src).stat()).st_size
    for force in (False, True):
        plan = plan_segments(info, size, chunk_size=chunk_size, chunk_duration=chunk_duration,
                             force_transcode=force)
        if force and not (plan.transcode_video or plan.transcode_audio):
            break
        await trio.to_thread.run_sync(_clear, out_dir)
        cmd = segment_command(ffmpeg, src, out_dir, plan, info)
        result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                        stdin=subprocess.DEVNULL)
        err = result.stderr.decode("utf-8", "replace").strip()
        if result.returncode != 0:
            last = err.splitlines()[-1] if err else f"exit code {result.returncode}"
            raise ChunkingFailed(f"FFmpeg could not read the video: {last}")
        segments, sizes = await trio.to_thread.run_sync(_collect, out_dir)
        if not segments:
            raise ChunkingFailed("the video has no frames FFmpeg could read")
        covered = segments[-1].end - segments[0].start
        if covered < info.duration * 0.9 - 0.5:
            raise ChunkingFailed(
                f"the file is truncated or damaged: only {covered:.1f} s of its "
                f"{info.duration:.1f} s could be read")
        biggest = max(sizes)
        if biggest <= max_segment_bytes:
            return ChunkingReport(segments=segments, transcoded=plan.transcode_video,
                                  segment_time=plan.segment_time)
        if force or plan.transcode_video:
            break
    raise ChunkingFailed(
        f"a segment of {math.ceil(biggest / 2**20)} MiB exceeds the {max_segment_bytes >> 20} MiB "
        "chunk limit even after re-encoding")


def _clear(out_dir: Path) -> None:
    for old in out_dir.glob("seg*.ts"):
        old.unlink()


def _collect(out_dir: Path) -> tuple[list[Segment], list[int]]:
    """The segments FFmpeg listed that exist and are not empty, with their sizes."""
    listed = parse_segment_list((out_dir / "segments.csv").read_text(), out_dir)
    found = [(s, s.path.stat().st_size) for s in listed if s.path.exists()]
    found = [(s, n) for s, n in found if n > 0]
    return [s for s, _ in found], [n for _, n in found]


__all__ += ["ProbeError"]
