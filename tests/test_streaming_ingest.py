"""Ingest while the upload arrives: FFmpeg cuts the bytes as they land.

Each upload here is sent slowly over a real socket and *held* at 70 % of
its bytes: for a container that can be read front to back (MPEG-TS,
Matroska, WebM, FLV, MP4 with its index first, fragmented MP4) the video is
registered and its first chunk committed and playable while the upload is
held; for one that cannot (MP4 with its index at the end, AVI) nothing is
registered until the upload ends. An upload cut off midway leaves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nodes.net.http_client import request
from nodes.uploader.ffmpeg import _feed
from nodes.uploader.receiver import Arrival
from protocol.errors import ConnectionLost
from vstack.media import stream_container, whole_seconds

from .conftest import ffmpeg_exe
from .test_uploader import (
    Cluster,
    cluster,
    decodes_cleanly,
    download,
    probe_file,
    upload,
    wait_done,
)

SECONDS = 12
LAVFI = ["-f", "lavfi", "-i",  # noise: the bit rate asked for is the bit rate made
         f"testsrc=size=320x240:rate=25:duration={SECONDS},noise=alls=30:allf=t",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={SECONDS}"]
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-b:v", "1500k", "-g", "25",
        "-pix_fmt", "yuv420p", "-c:a", "aac"]
SOURCES: dict[str, list[str]] = {
    # name: encoder and muxer arguments; every one is over EARLY_BYTES
    "clip.ts": [*X264, "-f", "mpegts"],
    "clip.mkv": [*X264, "-f", "matroska"],
    "clip.webm": ["-c:v", "libvpx-vp9", "-b:v", "1500k", "-deadline", "realtime",
                  "-cpu-used", "8", "-g", "25", "-c:a", "libopus", "-f", "webm"],
    "clip.flv": [*X264, "-f", "flv"],
    "faststart.mp4": [*X264, "-movflags", "+faststart", "-f", "mp4"],
    "fragmented.mp4": [*X264, "-movflags", "+frag_keyframe+empty_moov", "-f", "mp4"],
    # cannot be read as they arrive: received whole first
    "moov-last.mp4": [*X264, "-f", "mp4"],
    "clip.avi": ["-c:v", "mpeg4", "-b:v", "1500k", "-g", "25", "-c:a", "libmp3lame", "-f", "avi"],
}
STREAMED = ("clip.ts", "clip.mkv", "clip.webm", "clip.flv", "faststart.mp4", "fragmented.mp4")


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("streaming-sources")
    out = {}
    for name, args in SOURCES.items():
        path = root / name
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *LAVFI, *args, str(path)],
                       check=True, timeout=120)
        out[name] = path
    return out


BOUNDARY = "streamingboundary42"


def _form(name: str, data: bytes) -> tuple[bytes, bytes, bytes]:
    """The form's head (title first, then the video part's head), the video, its tail."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n"
            f"slow {name}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"video\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    return head, data, f"\r\n--{BOUNDARY}--\r\n".encode()


async def _send_head(c: Cluster, total: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", c.uploader.port)
    await stream.send_all(
        (f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {total}\r\n"
         f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode())
    return stream


async def _send_slowly(stream: trio.SocketStream, data: bytes) -> None:
    for i in range(0, len(data), 64 * 1024):
        await stream.send_all(data[i:i + 64 * 1024])
        await trio.sleep(0.01)


async def _video_titled(c: Cluster, title: str) -> dict[str, Any] | None:
    videos = (await request("GET", f"{c.meta_url}/videos")).json()
    return next((v for v in videos if v["title"] == title), None)


async def _first_chunk_plays(c: Cluster, video_id: str, tmp_path: Path) -> bool:
    """Chunk 0 is committed and, read from the node that holds it, decodes cleanly."""
    manifest = (await request("GET", f"{c.meta_url}/manifest/{video_id}")).json()
    first = next((ch for ch in manifest["chunks"] if ch["sequence_num"] == 0), None)
    if first is None:
        return False
    assert manifest["status"] != "active"  # the upload is still arriving
    assert first["replicas"]  # stored as replicas (UPLOAD_REDUNDANCY=replication here)
    got = await request("GET", f"{first['replicas'][0]}/chunk/{first['chunk_id']}")
    assert got.status == 200
    out = tmp_path / "chunk0.ts"
    out.write_bytes(got.body)
    return decodes_cleanly(out)


async def _upload_held(c: Cluster, name: str, path: Path, tmp_path: Path
                       ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Send ``path`` slowly, hold at 70 %, look, send the rest; (what was seen, final state)."""
    head, data, tail = _form(name, path.read_bytes())
    stream = await _send_head(c, len(head) + len(data) + len(tail))
    cut = int(len(data) * 0.7)
    await stream.send_all(head)
    await _send_slowly(stream, data[:cut])
    seen = None
    with trio.move_on_after(20 if name in STREAMED else 3):  # held: nothing more arrives
        while True:
            video = await _video_titled(c, f"slow {name}")
            if video is not None and await _first_chunk_plays(c, video["video_id"], tmp_path):
                seen = video
                break
            await trio.sleep(0.2)
    await _send_slowly(stream, data[cut:] + tail)
    return seen, await wait_done(c, await _session_of(stream))


async def _session_of(stream: trio.SocketStream) -> str:
    """The upload's answer (200, JSON): its session id; the connection is closed."""
    answer = b""
    with trio.fail_after(60):
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            piece = await stream.receive_some(65536)
            assert piece, answer
            answer += piece
    await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    return str(json.loads(answer.split(b"\r\n\r\n", 1)[1])["upload_session_id"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SOURCES))
async def test_a_video_is_cut_and_playable_while_it_arrives(
    name: str, sources: dict[str, Path], start_node: Callable[..., Any],
    start_metadata: Callable[..., Any], start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, chunk_duration=2.0,
                      redundancy="replication")
    path = sources[name]
    assert (stream_container(path.read_bytes()[:65536]) is not None) is (name in STREAMED)
    seen, state = await _upload_held(c, name, path, tmp_path)
    assert state["status"] == "completed", state
    if name in STREAMED:
        assert seen is not None, "no playable chunk while the upload was held at 70 %"
        assert state["streamed"] is True
    else:
        assert seen is None  # received whole, then cut
        assert not state.get("streamed")
    assert state["ready_chunks"] == state["total_chunks"]
    assert state["ready_sec"] == pytest.approx(SECONDS, abs=0.6)
    assert state["first_chunk_after_sec"] is not None
    video = (await request("GET", f"{c.meta_url}/manifest/{state['video_id']}")).json()
    assert video["status"] == "active"
    assert video["duration_sec"] == SECONDS  # the length cut, not the first bytes' guess
    out = await download(c, state["video_id"], tmp_path / "out.ts")
    assert probe_file(out).duration == pytest.approx(SECONDS, abs=0.6)
    assert decodes_cleanly(out)


@pytest.mark.slow
async def test_an_upload_cut_off_midway_leaves_nothing(
    sources: dict[str, Path], start_node: Callable[..., Any],
    start_metadata: Callable[..., Any], start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, chunk_duration=2.0,
                      redundancy="replication")
    name = "clip.ts"
    head, data, tail = _form(name, sources[name].read_bytes())
    stream = await _send_head(c, len(head) + len(data) + len(tail))
    await stream.send_all(head)
    await _send_slowly(stream, data[: int(len(data) * 0.7)])
    with trio.fail_after(20):  # being cut as it arrives: registered, chunks stored
        while (video := await _video_titled(c, f"slow {name}")) is None or not (
                await request("GET", f"{c.meta_url}/manifest/{video['video_id']}")
        ).json()["chunks"]:
            await trio.sleep(0.2)
    assert sum(n.chunk_count() for n in c.nodes) > 0
    await stream.aclose()  # the client goes away mid-upload
    with trio.fail_after(30):
        while await _video_titled(c, f"slow {name}") is not None:
            await trio.sleep(0.2)
    sessions = list(c.uploader.sessions.values())
    assert [s.status for s in sessions] == ["failed"]
    assert "cut off" in (sessions[0].error or "")
    with trio.fail_after(30):  # its copies are deleted from the nodes, its files removed
        while sum(n.chunk_count() for n in c.nodes):
            await trio.sleep(0.2)
    left = [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()
            and not p.name.endswith(".json")]
    assert left == []


def test_whole_seconds_rounds_to_the_nearest_second() -> None:
    assert [whole_seconds(d) for d in (25.02, 25.5, 25.49, 0.2, 600.0)] == [25, 26, 25, 1, 600]


@pytest.mark.parametrize(("head", "kind"), [
    (bytes([0x47]) + bytes(187) + bytes([0x47]) + bytes(187) + bytes([0x47]) + bytes(10),
     "mpegts"),
    (b"\x1a\x45\xdf\xa3" + bytes(60), "matroska"),
    (b"FLV\x01\x05" + bytes(60), "flv"),
    ((24).to_bytes(4, "big") + b"ftypisom" + bytes(12) + (8).to_bytes(4, "big") + b"moov", "mp4"),
    ((24).to_bytes(4, "big") + b"ftypisom" + bytes(12) + (8).to_bytes(4, "big") + b"mdat", None),
    ((8).to_bytes(4, "big") + b"moov", None),  # no ftyp first: not an MP4 we know
    ((24).to_bytes(4, "big") + b"ftypisom" + bytes(12) + (0).to_bytes(4, "big") + b"free", None),
    (b"RIFF" + bytes(60), None),
    (b"", None),
])
def test_stream_container_reads_only_the_head(head: bytes, kind: str | None) -> None:
    assert stream_container(head) == kind


async def _send_all_slowly(c: Cluster, name: str, data: bytes) -> dict[str, Any]:
    """The whole form, sent slowly (cut as it arrives if it can be); the final status."""
    head, _, tail = _form(name, data)
    stream = await _send_head(c, len(head) + len(data) + len(tail))
    await stream.send_all(head)
    await _send_slowly(stream, data + tail)
    return await wait_done(c, await _session_of(stream))


@pytest.mark.slow
async def test_a_truncated_video_fails_however_fast_it_arrives(
    sources: dict[str, Path], start_node: Callable[..., Any],
    start_metadata: Callable[..., Any], start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    """A Matroska file cut to two thirds (its header says 12 s) is refused when cut
    as it arrives, as it is when received whole: never a shorter video, completed."""
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, chunk_duration=2.0,
                      redundancy="replication")
    data = sources["clip.mkv"].read_bytes()
    state = await _send_all_slowly(c, "clip.mkv", data[: len(data) * 2 // 3])
    assert state.get("streamed") is True
    assert state["status"] == "failed", state
    assert "truncated" in state["error"]
    with trio.fail_after(10):  # and its video is withdrawn
        while await _video_titled(c, "slow clip.mkv") is not None:
            await trio.sleep(0.1)


@pytest.mark.slow
async def test_a_lost_answer_to_the_early_registration_leaves_one_video(
    sources: dict[str, Path], start_node: Callable[..., Any],
    start_metadata: Callable[..., Any], start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    """The video is registered early, but the answer is lost: the upload goes on
    received whole, and the early video is withdrawn, not left beside the real one."""
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, chunk_duration=2.0,
                      redundancy="replication")
    real = c.uploader.metadata.create_video
    calls = 0

    async def first_answer_lost(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        created = await real(*args, **kwargs)
        if calls == 1:
            raise ConnectionLost("metadata service closed the connection")
        return created

    c.uploader.metadata.create_video = first_answer_lost
    state = await _send_all_slowly(c, "clip.ts", sources["clip.ts"].read_bytes())
    assert calls == 2
    assert state["status"] == "completed", state
    assert not state.get("streamed")
    videos = (await request("GET", f"{c.meta_url}/videos")).json()
    assert [(v["video_id"], v["status"]) for v in videos if v["title"] == "slow clip.ts"] == [
        (state["video_id"], "active")]


@pytest.mark.slow
async def test_a_slow_upload_cut_as_it_arrives_never_holds_up_the_others(
    sources: dict[str, Path], start_node: Callable[..., Any],
    start_metadata: Callable[..., Any], start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    """One processing slot: an upload cut as it arrives and held mid-way keeps its own
    slot, and an upload received meanwhile is processed at once, not queued behind it."""
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, chunk_duration=2.0,
                      redundancy="replication", max_concurrent_uploads=1)
    head, data, tail = _form("clip.ts", sources["clip.ts"].read_bytes())
    stream = await _send_head(c, len(head) + len(data) + len(tail))
    await stream.send_all(head)
    await _send_slowly(stream, data[: len(data) // 2])
    with trio.fail_after(20):  # being cut as it arrives
        while await _video_titled(c, "slow clip.ts") is None:
            await trio.sleep(0.2)
    other = (await upload(c, sources["clip.avi"], title="received meanwhile")).json()
    state = await wait_done(c, other["upload_session_id"], seconds=60)
    assert state["status"] == "completed", state
    await stream.aclose()


# -- feeding FFmpeg from the growing file (a real pipe, a real file) ---------------


def _pipe() -> tuple[trio.lowlevel.FdStream, trio.lowlevel.FdStream]:
    r, w = os.pipe()
    return trio.lowlevel.FdStream(r), trio.lowlevel.FdStream(w)


async def test_the_feed_sends_the_file_as_it_grows_and_stops_at_its_end(tmp_path: Path) -> None:
    src = tmp_path / "upload"
    src.write_bytes(b"")
    blob = os.urandom(3 * 1024 * 1024 + 5)
    arrival = Arrival(len(blob))
    reader, writer = _pipe()
    got = bytearray()
    result: list[str | None] = []

    async def feed() -> None:
        async with writer:
            result.append(await _feed(writer, src, arrival))

    async def drain() -> None:
        async with reader:
            while piece := await reader.receive_some(1 << 20):
                got.extend(piece)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        nursery.start_soon(drain)
        with src.open("ab") as f:
            for i in range(0, len(blob), 700_000):  # arrives in pieces, the feed waiting
                f.write(blob[i:i + 700_000])
                f.flush()
                arrival.wrote(len(blob[i:i + 700_000]))
                await trio.testing.wait_all_tasks_blocked()  # all of it fed, the feed waiting
        arrival.ended()
    assert result == [None]
    assert bytes(got) == blob


async def test_the_feed_says_when_the_file_is_shorter_than_what_arrived(tmp_path: Path) -> None:
    src = tmp_path / "upload"
    src.write_bytes(b"x" * 1000)
    arrival = Arrival()
    arrival.wrote(5000)  # said to be written, not on disk
    arrival.ended()
    reader, writer = _pipe()
    async with reader, writer, trio.open_nursery() as nursery:
        async def drain() -> None:
            while await reader.receive_some(65536):
                pass

        nursery.start_soon(drain)
        why = await _feed(writer, src, arrival)
        await writer.aclose()
    assert why == "the upload's file is shorter than what was received"


async def test_the_feed_ends_when_ffmpeg_stops_reading(tmp_path: Path) -> None:
    src = tmp_path / "upload"
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    arrival = Arrival()
    arrival.wrote(4 * 1024 * 1024)
    arrival.ended()
    reader, writer = _pipe()
    await reader.aclose()  # FFmpeg exited
    async with writer:
        with pytest.raises(trio.BrokenResourceError):
            await _feed(writer, src, arrival)
