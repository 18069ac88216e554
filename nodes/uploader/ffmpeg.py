"""Running FFmpeg from trio: which binary, and the probe and segment calls.

The commands and the parsing of FFmpeg's output are sans-IO, in
:mod:`vstack.media`; this module only runs the process. Cutting is
*streaming*: FFmpeg writes one MPEG-TS file per segment and lists each one in
a CSV once it is complete, so :func:`cut_streaming` hands chunk N to the
caller while FFmpeg still cuts N+1 (FFmpeg's progress is only visible in its
files, so they are looked at every 50 ms).

An upload can also be cut *while it arrives*: FFmpeg reads it on its
standard input, fed from the file the receiver is writing as it grows
(:class:`~nodes.uploader.receiver.Arrival`), and the feeding ends when the
upload does. An upload cut off midway stops FFmpeg and fails the cut.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import trio

from nodes.net.errors import deadline
from nodes.net.zerocopy import TruncatedFile, send_file_range
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
from .receiver import Arrival

__all__ = ["ChunkingFailed", "Oversize", "ProbeError", "cut_streaming", "find_ffmpeg", "probe"]

PROBE_SECONDS = 60.0
POLL_SECONDS = 0.05
#: Bytes of the arriving file read for FFmpeg at a time.
FEED_BYTES = 1 << 20
#: FFmpeg's error output kept (its last bytes), whatever it writes.
STDERR_BYTES = 64 * 1024


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


async def _run_fed(cmd: list[str], src: Path, arrival: Arrival) -> subprocess.CompletedProcess[bytes]:
    """Run FFmpeg on ``src`` as it arrives: its bytes are fed to FFmpeg's standard input.

    Raises:
        ChunkingFailed: the upload was cut off (FFmpeg is stopped), or FFmpeg
            could not be started.
    """
    try:
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE,
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    except OSError as exc:
        raise ChunkingFailed(f"FFmpeg ({cmd[0]}) could not be started: {exc}") from None
    assert proc.stdin is not None
    assert proc.stderr is not None
    if isinstance(proc.stdin, trio.lowlevel.FdStream):
        _widen_pipe(proc.stdin.fileno())
    err = bytearray()
    stopped: str | None = None
    try:
        async with trio.open_nursery() as nursery:
            async def drain() -> None:
                assert proc.stderr is not None
                async for piece in proc.stderr:
                    err.extend(piece)
                    del err[:-STDERR_BYTES]

            nursery.start_soon(drain)
            try:
                stopped = await _feed(proc.stdin, src, arrival)
            except trio.BrokenResourceError:
                pass  # FFmpeg stopped reading (it failed): its exit code says why
            finally:
                with trio.CancelScope(shield=True):
                    await proc.stdin.aclose()
            if stopped is not None:
                proc.kill()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    if stopped is not None:
        raise ChunkingFailed(stopped)
    code = proc.returncode if proc.returncode is not None else -9
    return subprocess.CompletedProcess(cmd, code, b"", bytes(err))


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe to FFmpeg (Linux), not 64 KiB: a sixteenth of the wake-ups."""
    with contextlib.suppress(OSError):  # over pipe-max-size, or not Linux: the default works
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), FEED_BYTES)


async def _feed(stdin: trio.abc.SendStream, src: Path, arrival: Arrival) -> str | None:
    """Send ``src`` to ``stdin`` as it grows, to the end of the upload; why it
    stopped short, if it did. Into a pipe (FFmpeg's stdin on Linux) the bytes
    go by ``sendfile``, from the page cache, never through Python."""
    offset = 0
    pipe = stdin.fileno() if isinstance(stdin, trio.lowlevel.FdStream) else None
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            await arrival.wait_past(offset)
            if arrival.error is not None:
                return f"the upload was cut off before its end ({arrival.error})"
            if offset >= arrival.written:
                return None  # ended, and all of it sent
            count = arrival.written - offset
            try:
                if pipe is not None:
                    await send_file_range(pipe, fd, offset, count)
                else:
                    data = await trio.to_thread.run_sync(os.pread, fd, min(FEED_BYTES, count),
                                                         offset)
                    if not data:
                        raise TruncatedFile("ended early")
                    await stdin.send_all(data)
                    count = len(data)
            except TruncatedFile:
                return "the upload's file is shorter than what was received"
            except OSError as exc:  # the file's (FFmpeg gone is BrokenResourceError)
                return f"the upload's file could not be read: {exc}"
            offset += count
            await trio.lowlevel.checkpoint()
    finally:
        os.close(fd)


async def cut_streaming(ffmpeg: str, src: Path, out_dir: Path, info: ProbeResult,
                        plan: SegmentPlan, send: trio.MemorySendChannel[Segment], *,
                        max_segment_bytes: int, arrival: Arrival | None = None) -> ChunkingReport:
    """Cut ``src`` into MPEG-TS segments, sending each one as soon as FFmpeg closes it.

    With ``arrival``, ``src`` is still arriving: FFmpeg reads it as it grows.
    ``send`` is closed on return. Errors are raised bare, never inside an
    exception group.

    Raises:
        Oversize: a segment exceeds ``max_segment_bytes`` (FFmpeg is stopped).
        ChunkingFailed: FFmpeg failed, found no frames, the file is truncated,
            or the upload was cut off.
    """
    async with send:
        await trio.to_thread.run_sync(_clear, out_dir)
        cmd = segment_command(ffmpeg, src if arrival is None else None, out_dir, plan, info)
        done = trio.Event()
        outcome: list[subprocess.CompletedProcess[bytes] | ChunkingFailed] = []
        sent: list[Segment] = []

        async def run() -> None:
            try:
                outcome.append(await _run(cmd) if arrival is None
                               else await _run_fed(cmd, src, arrival))
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
        # A video cut as it arrived whose length FFmpeg guessed from its first bytes
        # has nothing to compare the cut with; one whose header gave it does.
        return _report(outcome[0], sent, info, plan,
                       whole=arrival is None or not info.estimated)


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
            plan: SegmentPlan, *, whole: bool = True) -> ChunkingReport:
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
    if whole and covered < info.duration * 0.9 - 0.5:
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
