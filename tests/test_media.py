"""Probing and chunking plans, against FFmpeg output recorded from real clips.

The fixtures in ``tests/fixtures/ffmpeg/`` are FFmpeg's own words about small
generated clips (see its README.md and ``record.py``); these tests read them
with :mod:`vstack.media` as the uploader does, without running FFmpeg.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vstack.media import (
    ProbeError,
    ProbeResult,
    Segment,
    SegmentPlan,
    parse_probe,
    parse_segment_list,
    plan_segments,
    probe_command,
    segment_command,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ffmpeg"
MiB = 1024 * 1024


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


def probe(name: str) -> ProbeResult:
    return parse_probe(recorded(f"probe-{name}.txt"))


# name: (label, duration, bitrate, video codec, audio codec, video stream index)
CLIPS = {
    "clip.mp4": ("MP4/MOV", 5.00, 135, "h264", "aac", 0),
    "clip.mov": ("MP4/MOV", 5.00, 135, "h264", "aac", 0),
    "clip.mkv": ("MKV/WebM", 5.03, 125, "h264", "mp3", 0),
    "clip.avi": ("AVI", 5.04, 217, "mpeg4", "mp3", 0),
    "clip.flv": ("FLV", 5.03, 209, "flv1", "mp3", 1),
    "clip.webm": ("MKV/WebM", 5.01, 366, "vp9", "opus", 0),
    "noaudio.mp4": ("MP4/MOV", 5.00, 60, "h264", None, 0),
    "cut.mkv": ("MKV/WebM", 5.03, 41, "h264", "mp3", 0),  # its header survived the cut
}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_parse_probe_reads_recorded_clips(name: str) -> None:
    label, duration, bitrate, vcodec, acodec, vindex = CLIPS[name]
    info = probe(name)
    assert info.format_label == label
    assert info.duration == pytest.approx(duration)
    assert info.bitrate_kbps == bitrate
    assert (info.video.codec, info.video.index) == (vcodec, vindex)
    assert (info.video.width, info.video.height, info.video.fps) == (320, 240, 25.0)
    assert (info.audio.codec if info.audio else None) == acodec
    if info.audio:
        assert (info.audio.width, info.audio.height, info.audio.fps) == (None, None, None)
    assert info.streams[0] == info.video  # video first, whatever order the file has


def test_parse_probe_keeps_every_demuxer_name() -> None:
    assert probe("clip.mp4").formats == ("mov", "mp4", "m4a", "3gp", "3g2", "mj2")
    assert probe("clip.webm").formats == ("matroska", "webm")


@pytest.mark.parametrize(("name", "reason"), [
    ("notes.txt", "unsupported format 'tty'"),
    ("picture.png", "unsupported format 'png_pipe'"),
    ("cut.mp4", "not a video: Error opening input files: Invalid data found when processing input"),
])
def test_parse_probe_refuses_recorded_non_videos(name: str, reason: str) -> None:
    with pytest.raises(ProbeError) as err:
        probe(name)
    assert reason in str(err.value)
    assert "output file" not in str(err.value)  # FFmpeg's complaint about our probe, not theirs


def test_parse_probe_refuses_no_video_and_no_duration() -> None:
    mp4 = recorded("probe-clip.mp4.txt")
    without_video = "\n".join(ln for ln in mp4.splitlines() if "Video:" not in ln)
    with pytest.raises(ProbeError, match="no video stream"):
        parse_probe(without_video)
    cover_art = mp4.replace("Video: h264 (High)", "Video: mjpeg (Baseline)")
    with pytest.raises(ProbeError, match="no video stream"):
        parse_probe(cover_art)
    unknown = mp4.replace("Duration: 00:00:05.00", "Duration: N/A")
    with pytest.raises(ProbeError, match="duration is unknown"):
        parse_probe(unknown)
    with pytest.raises(ProbeError, match="does not recognise"):
        parse_probe("")


def test_parse_probe_reads_hours_and_minutes() -> None:
    text = recorded("probe-clip.mkv.txt").replace("Duration: 00:00:05.03", "Duration: 01:02:03.50")
    assert parse_probe(text).duration == pytest.approx(3723.5)


# Tags are chosen by whoever uploads the file, and FFmpeg prints them among the
# lines parse_probe reads. See record.py for the tags in these recordings.


def test_tags_that_look_like_a_duration_or_a_stream_are_ignored() -> None:
    # title "Duration: 10:00:00.00, start: 0.000000, bitrate: 1 kb/s" and a
    # two-line comment whose second line is "Stream #0:4: Video: h264, 1.2.3 fps".
    tagged, plain = probe("tagged.mp4"), probe("clip.mp4")
    assert tagged.duration == plain.duration == 5.0
    assert tagged.bitrate_kbps == plain.bitrate_kbps
    assert tagged.streams == plain.streams


def test_a_tag_cannot_make_audio_a_video() -> None:
    # An audio-only file whose comment reads "Stream #0:1: Video: h264 (High), ...".
    with pytest.raises(ProbeError, match="no video stream"):
        probe("tagged.m4a")


TAG_PIECES = ["Duration: 10:00:00.00", "Stream #0:3: Video: h264", "Stream #0:3: Audio: opus",
              ", 1.2.3 fps", ", 640x480,", "bitrate: 9 kb/s", "\n", ", ", " "]


@given(st.lists(st.sampled_from(TAG_PIECES) | st.text(max_size=8), max_size=8))
def test_no_tag_value_changes_the_probe(pieces: list[str]) -> None:
    value = "".join(pieces)
    # FFmpeg prints a tag as "    key : value", and each further line of the
    # value as "<20 spaces>: line" (as probe-tagged.mp4.txt shows).
    first, *rest = value.split("\n")
    tag = f"    comment         : {first}\n" + "".join(f"{' ' * 20}: {ln}\n" for ln in rest)
    text = recorded("probe-clip.mp4.txt")
    head, sep, tail = text.partition("  Metadata:\n")
    assert parse_probe(head + sep + tag + tail) == parse_probe(text)


RECORDINGS = sorted(p.name for p in FIXTURES.glob("probe-*.txt"))


@given(name=st.sampled_from(RECORDINGS), data=st.data())
def test_mangled_output_fails_only_with_probe_error(name: str, data: st.DataObject) -> None:
    lines = recorded(name).splitlines()
    kept = data.draw(st.lists(st.sampled_from(lines), max_size=len(lines) + 2))
    text = "\n".join(kept)
    text = text[: data.draw(st.integers(0, len(text)))]
    try:
        info = parse_probe(text)
    except ProbeError:
        return
    assert info.duration > 0
    assert info.video.kind == "video"


# -- plans ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "video", "audio"), [
    ("clip.mp4", False, False),
    ("clip.mov", False, False),
    ("clip.mkv", False, False),   # H.264 + MP3: both travel in MPEG-TS
    ("clip.avi", True, False),    # MPEG-4 part 2 video is re-encoded, its MP3 copied
    ("clip.flv", True, False),    # Sorenson Spark likewise
    ("clip.webm", True, True),    # VP9 + Opus: both re-encoded
    ("noaudio.mp4", False, False),
])
def test_plan_transcodes_only_what_mpeg_ts_cannot_carry(name: str, video: bool, audio: bool) -> None:
    info = probe(name)
    plan = plan_segments(info, 100_000, chunk_size=2 * MiB, chunk_duration=10.0)
    assert (plan.transcode_video, plan.transcode_audio) == (video, audio)
    assert info.copy_video is not video
    assert plan.reason == (f"{info.video.codec} is not carried in MPEG-TS" if video else "")
    assert plan.segment_time == 10.0  # a small file: chunks as long as asked


def test_forced_transcode_when_keyframes_are_too_sparse() -> None:
    plan = plan_segments(probe("clip.mp4"), 100_000, chunk_size=2 * MiB, chunk_duration=10.0,
                         force_transcode=True)
    assert (plan.transcode_video, plan.transcode_audio) == (True, True)
    assert plan.reason == "keyframes too sparse for the chunk size"
    silent = plan_segments(probe("noaudio.mp4"), 100_000, chunk_size=2 * MiB, chunk_duration=10.0,
                           force_transcode=True)
    assert (silent.transcode_video, silent.transcode_audio) == (True, False)


def test_high_bitrate_sources_get_shorter_segments() -> None:
    info = probe("clip.mp4")  # 5.00 s
    # 5 MiB in 5 s is 1 MiB/s: 10 s would make 10 MiB chunks; 90% of 2 MiB is 1.8 s.
    plan = plan_segments(info, 5 * MiB, chunk_size=2 * MiB, chunk_duration=10.0)
    assert plan.segment_time == pytest.approx(1.8)
    # Never under a second, however dense the source.
    assert plan_segments(info, 500 * MiB, chunk_size=2 * MiB, chunk_duration=10.0).segment_time == 1.0
    # Never longer than asked.
    assert plan_segments(info, 1000, chunk_size=2 * MiB, chunk_duration=4.0).segment_time == 4.0


@given(size=st.integers(1, 10**10), chunk_size=st.integers(64 * 1024, 64 * MiB),
       duration=st.floats(0.5, 60.0))
def test_planned_chunks_fit_the_chunk_size(size: int, chunk_size: int, duration: float) -> None:
    info = probe("clip.mkv")
    plan = plan_segments(info, size, chunk_size=chunk_size, chunk_duration=duration)
    assert 0 < plan.segment_time <= duration
    assert plan.segment_time >= min(1.0, duration)
    if plan.segment_time > 1.0:
        assert size / info.duration * plan.segment_time <= chunk_size


# -- commands -------------------------------------------------------------------------------


def option(cmd: list[str], flag: str) -> str:
    assert cmd.count(flag) == 1, (flag, cmd)
    return cmd[cmd.index(flag) + 1]


def test_probe_command_only_reads_the_file() -> None:
    cmd = probe_command("/opt/ffmpeg", Path("/tmp/up load/clip.mp4"))
    assert cmd[0] == "/opt/ffmpeg"
    assert option(cmd, "-i") == "/tmp/up load/clip.mp4"  # one argument, spaces and all
    assert "-nostdin" in cmd  # never waits on (or eats) the service's stdin
    assert cmd[-1] == "/tmp/up load/clip.mp4"  # no output file: FFmpeg only describes the input


def test_segment_command_copies_h264() -> None:
    info = probe("clip.mp4")
    out = Path("/work/seg")
    plan = plan_segments(info, 100_000, chunk_size=2 * MiB, chunk_duration=2.0)
    cmd = segment_command("ffmpeg", Path("/in/clip.mp4"), out, plan, info)
    assert option(cmd, "-i") == "/in/clip.mp4"
    assert option(cmd, "-c:v") == "copy"
    assert option(cmd, "-c:a") == "copy"
    assert "-force_key_frames" not in cmd
    assert option(cmd, "-segment_time") == "2.0"
    assert option(cmd, "-segment_format") == "mpegts"
    assert option(cmd, "-segment_list_type") == "csv"
    assert option(cmd, "-segment_list") == str(out / "segments.csv")
    assert cmd[-1] == str(out / "seg%05d.ts")
    maps = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-map"]
    assert maps == ["0:v:0", "0:a:0?"]  # one video, the first audio if there is one
    assert "-nostdin" in cmd


def test_segment_command_transcodes_with_keyframes_at_every_boundary() -> None:
    info = probe("clip.webm")
    plan = plan_segments(info, 100_000, chunk_size=2 * MiB, chunk_duration=2.5)
    cmd = segment_command("ffmpeg", Path("clip.webm"), Path("out"), plan, info)
    assert option(cmd, "-c:v") == "libx264"
    assert option(cmd, "-pix_fmt") == "yuv420p"
    assert option(cmd, "-force_key_frames") == "expr:gte(t,n_forced*2.5)"
    assert option(cmd, "-c:a") == "aac"
    avi = probe("clip.avi")
    cmd = segment_command("ffmpeg", Path("clip.avi"), Path("out"),
                          plan_segments(avi, 100_000, chunk_size=2 * MiB, chunk_duration=2.0), avi)
    assert (option(cmd, "-c:v"), option(cmd, "-c:a")) == ("libx264", "copy")


# -- segment lists --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.avi"])
def test_recorded_segment_lists(name: str) -> None:
    out = Path("/work/out")
    info = probe(name)
    segs = parse_segment_list(recorded(f"segments-{name}.txt"), out)
    # Recorded with segment_command for 2 s chunks (record.py): segments are
    # named by its pattern, follow on without gaps and cover the whole clip.
    plan = SegmentPlan(segment_time=2.0, transcode_video=False, transcode_audio=False)
    pattern = segment_command("ffmpeg", Path(name), out, plan, info)[-1]
    assert [s.path for s in segs] == [Path(pattern % i) for i in range(3)]
    assert segs[0].start == 0.0
    assert [s.start for s in segs[1:]] == [s.end for s in segs[:-1]]
    assert [s.start for s in segs] == [0.0, 2.08, 4.08]
    assert all(s.duration <= 2.0 + 0.1 for s in segs)
    assert segs[-1].end == pytest.approx(info.duration, abs=0.15)


def test_segment_list_skips_incomplete_rows_and_unquotes_names() -> None:
    text = 'seg00000.ts,0.000000,2.000000\n\n"odd, name.ts",2.0,4.5\nseg00002.ts,4.5\n'
    segs = parse_segment_list(text, Path("d"))
    assert segs == [Segment(Path("d/seg00000.ts"), 0.0, 2.0), Segment(Path("d/odd, name.ts"), 2.0, 4.5)]
    assert segs[1].duration == 2.5
    assert Segment(Path("x"), 3.0, 2.0).duration == 0.0


@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9_, ]{1,12}\.ts", fullmatch=True),
                          st.floats(0, 1e6), st.floats(0, 1e6)), max_size=20))
def test_segment_list_round_trip(rows: list[tuple[str, float, float]]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    segs = parse_segment_list(buf.getvalue(), Path("out"))
    assert [(s.path.name, s.start, s.end) for s in segs] == rows
