"""Video probing and chunking plans: what FFmpeg is asked to do, and what it said.

Pure logic: command lines are built and FFmpeg's output parsed here; running
it is the uploader's job. Only the ``ffmpeg`` binary is assumed (the one the
``imageio-ffmpeg`` wheel ships has no ``ffprobe``), so probing reads the
stream summary ``ffmpeg -i`` prints.

Chunks are MPEG-TS segments cut at keyframes. Streams MPEG-TS carries well
(H.264/HEVC video, AAC/MP3/AC-3 audio) are copied; others (VP8/VP9, AV1,
Opus, Vorbis, ...) are transcoded to H.264/AAC, with keyframes forced at
every segment boundary. The segment length is the chunk duration, shortened
for high-bitrate sources so chunks stay near the chunk size; if copying
still yields a segment over the hard limit (keyframes too sparse), the
uploader segments again with transcoding.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from protocol.errors import VStackError

__all__ = [
    "ACCEPTED_FORMATS",
    "ProbeError",
    "ProbeResult",
    "Segment",
    "SegmentPlan",
    "Stream",
    "parse_probe",
    "parse_segment_list",
    "plan_segments",
    "probe_command",
    "segment_command",
    "stream_container",
    "whole_seconds",
]

#: FFmpeg demuxer names we accept, and what a person would call them.
ACCEPTED_FORMATS: Final = {
    "mov": "MP4/MOV", "mp4": "MP4/MOV", "avi": "AVI", "matroska": "MKV/WebM", "webm": "MKV/WebM",
    "flv": "FLV", "mpegts": "MPEG-TS",
}
#: Put before every ``-i``: FFmpeg opens only local files (no network, no
#: ``concat:``/``subfile:`` tricks) and only through the demuxers of the
#: containers we take, so an upload that is really a playlist or a DASH
#: manifest naming other files (``/etc/passwd``, an internal URL) opens nothing.
INPUT_GUARD: Final = ("-protocol_whitelist", "file",
                      "-format_whitelist", "mov,matroska,avi,flv,mpegts")
#: The same guard for an upload FFmpeg reads on its standard input as it arrives.
PIPE_GUARD: Final = ("-protocol_whitelist", "pipe",
                     "-format_whitelist", "mov,matroska,flv,mpegts")
TS_VIDEO: Final = frozenset({"h264", "hevc", "mpeg2video"})
TS_AUDIO: Final = frozenset({"aac", "mp3", "ac3", "eac3", "mp2"})

_INPUT = re.compile(r"^Input #0, (.+?), from '", re.M)
# Anchored to FFmpeg's own two-space indent: tag values (a title the uploader
# chose, say) are indented deeper and must never be read as a duration or a stream.
_DURATION = re.compile(r"^  Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.M)
_BITRATE = re.compile(r"^  Duration: .*?bitrate: (\d+) kb/s", re.M)
_STREAM = re.compile(
    r"^  Stream #0:(\d+)\S*: (Video|Audio|Subtitle|Data|Attachment): ([A-Za-z0-9_]+)")
_DIMS = re.compile(r", (\d{2,5})x(\d{2,5})[ ,]")
_FPS = re.compile(r", (\d+(?:\.\d+)?) fps")


class ProbeError(VStackError, ValueError):
    """The file is not a video we can store; the message says why."""


@dataclass(frozen=True, slots=True)
class Stream:
    index: int
    kind: str  # "video" | "audio" | ...
    codec: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    formats: tuple[str, ...]
    duration: float
    bitrate_kbps: int | None
    streams: tuple[Stream, ...]
    #: The duration is FFmpeg's guess from the bytes it read (no header gave it):
    #: read on a file still arriving, it is the length of what has arrived.
    estimated: bool = False

    @property
    def video(self) -> Stream:
        return next(s for s in self.streams if s.kind == "video")

    @property
    def audio(self) -> Stream | None:
        return next((s for s in self.streams if s.kind == "audio"), None)

    @property
    def format_label(self) -> str:
        return next((ACCEPTED_FORMATS[f] for f in self.formats if f in ACCEPTED_FORMATS), "?")

    @property
    def copy_video(self) -> bool:
        return self.video.codec in TS_VIDEO

    @property
    def copy_audio(self) -> bool:
        return self.audio is None or self.audio.codec in TS_AUDIO


def probe_command(ffmpeg: str, path: Path) -> list[str]:
    return [ffmpeg, "-hide_banner", "-nostdin", *INPUT_GUARD, "-i", str(path)]


def parse_probe(stderr: str) -> ProbeResult:
    """Read ``ffmpeg -i`` output.

    Raises:
        ProbeError: not a media file, not a container we take, no video
            stream, or no usable duration.
    """
    m = _INPUT.search(stderr)
    if m is None:
        reason = _last_error(stderr) or "FFmpeg does not recognise it as a media file"
        raise ProbeError(f"not a video: {reason}")
    formats = tuple(f.strip() for f in m.group(1).split(","))
    if not any(f in ACCEPTED_FORMATS for f in formats):
        raise ProbeError(f"unsupported format {m.group(1)!r}: send MP4, AVI, MOV, MKV, WebM or FLV")
    streams = []
    for line in stderr.splitlines():
        sm = _STREAM.search(line)
        if sm is None:
            continue
        dims, fps = _DIMS.search(line), _FPS.search(line)
        streams.append(Stream(
            index=int(sm.group(1)), kind=sm.group(2).lower(), codec=sm.group(3).lower(),
            width=int(dims.group(1)) if dims and sm.group(2) == "Video" else None,
            height=int(dims.group(2)) if dims and sm.group(2) == "Video" else None,
            fps=float(fps.group(1)) if fps and sm.group(2) == "Video" else None))
    video = [s for s in streams if s.kind == "video" and s.codec not in ("png", "mjpeg", "bmp")]
    if not video:
        raise ProbeError("not a video: the file has no video stream")
    dm = _DURATION.search(stderr)
    duration = int(dm.group(1)) * 3600 + int(dm.group(2)) * 60 + float(dm.group(3)) if dm else 0.0
    if duration <= 0:
        raise ProbeError("not a video: its duration is unknown or zero")
    bm = _BITRATE.search(stderr)
    ordered = tuple(video[:1]) + tuple(s for s in streams if s.kind == "audio")
    return ProbeResult(formats=formats, duration=duration,
                       bitrate_kbps=int(bm.group(1)) if bm else None, streams=ordered,
                       estimated="mpegts" in formats or "Estimating duration from" in stderr)


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "output file" in line.lower():  # "At least one output file must be specified"
            continue
        return line.split(": ", 1)[-1] if line.startswith("[") else line
    return ""


@dataclass(frozen=True, kw_only=True)
class SegmentPlan:
    segment_time: float
    transcode_video: bool
    transcode_audio: bool
    reason: str = ""


def plan_segments(probe: ProbeResult, file_size: int, *, chunk_size: int, chunk_duration: float,
                  force_transcode: bool = False) -> SegmentPlan:
    """Pick the segment length and whether to transcode.

    The length is ``chunk_duration``, or shorter if the source's byte rate
    would make ~``chunk_size`` chunks last less (never under 1 s).
    """
    byte_rate = file_size / probe.duration
    seconds = chunk_duration
    if byte_rate * chunk_duration > chunk_size:
        seconds = max(1.0, round(chunk_size * 0.9 / byte_rate, 2))
    tv = force_transcode or not probe.copy_video
    ta = probe.audio is not None and (force_transcode or not probe.copy_audio)
    reason = "keyframes too sparse for the chunk size" if force_transcode else (
        f"{probe.video.codec} is not carried in MPEG-TS" if tv else "")
    return SegmentPlan(segment_time=min(seconds, chunk_duration), transcode_video=tv,
                       transcode_audio=ta, reason=reason)


def segment_command(ffmpeg: str, src: Path | None, out_dir: Path, plan: SegmentPlan,
                    probe: ProbeResult) -> list[str]:
    """FFmpeg arguments that write ``seg%05d.ts`` and ``segments.csv`` into ``out_dir``.

    ``src`` ``None``: the video arrives on FFmpeg's standard input.
    """
    source = ["-nostdin", *INPUT_GUARD, "-i", str(src)] if src is not None else [
        *PIPE_GUARD, "-i", "pipe:0"]
    cmd = [ffmpeg, "-hide_banner", "-v", "error", "-y", *source,
           "-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn"]
    if plan.transcode_video:
        t = plan.segment_time
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                "-force_key_frames", f"expr:gte(t,n_forced*{t})"]
    else:
        cmd += ["-c:v", "copy"]
    cmd += ["-c:a", "aac", "-b:a", "128k"] if plan.transcode_audio else ["-c:a", "copy"]
    cmd += ["-f", "segment", "-segment_time", f"{plan.segment_time}", "-segment_format", "mpegts",
            "-segment_list", str(out_dir / "segments.csv"), "-segment_list_type", "csv",
            "-reset_timestamps", "0", str(out_dir / "seg%05d.ts")]
    return cmd


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    start: float
    end: float

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


def parse_segment_list(text: str, out_dir: Path) -> list[Segment]:
    """Read FFmpeg's CSV segment list (``name,start,end`` per line)."""
    out = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 3:
            continue
        out.append(Segment(out_dir / row[0], float(row[1]), float(row[2])))
    return out


@dataclass
class ChunkingReport:
    """What chunking produced, for logs and status."""

    segments: list[Segment] = field(default_factory=list)
    transcoded: bool = False
    segment_time: float = 0.0


__all__ += ["ChunkingReport"]


def whole_seconds(duration: float) -> int:
    """A video's length in whole seconds, as records keep it: rounded, at least 1
    (25.02 s is 25, not 26)."""
    return max(1, int(duration + 0.5))


#: Containers FFmpeg can cut while their bytes arrive, by :func:`stream_container`'s name.
STREAMABLE: Final = ("mpegts", "matroska", "flv", "mp4")


def stream_container(head: bytes) -> str | None:
    """Whether a file that begins with ``head`` can be cut as it arrives, and as what.

    MPEG-TS, Matroska/WebM and FLV are written to be read front to back. An
    MP4/MOV can be if its index (``moov``) comes before its media (``mdat``):
    "fast start" files and fragmented MP4. Anything else (an MP4 with its
    index at the end, AVI, an unknown head) is ``None``: received whole first.
    """
    if len(head) >= 377 and head[0] == head[188] == head[376] == 0x47:
        return "mpegts"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:3] == b"FLV":
        return "flv"
    pos = 0
    seen_ftyp = False
    while pos + 8 <= len(head):
        size = int.from_bytes(head[pos:pos + 4], "big")
        kind = head[pos + 4:pos + 8]
        if pos == 0 and kind != b"ftyp":
            return None
        if kind == b"ftyp":
            seen_ftyp = True
        elif kind in (b"moov", b"moof"):
            return "mp4" if seen_ftyp else None
        elif kind == b"mdat":
            return None  # media before the index: FFmpeg would have to seek to the end
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > len(head):
                return None
            size = int.from_bytes(head[pos + 8:pos + 16], "big")
        if size < 8:  # 0 (to the end of the file) or malformed
            return None
        pos += size
    return None
