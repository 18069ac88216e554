"""The uploader end to end: real FFmpeg, real nodes, a real metadata service."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nodes.client.fetcher import stream_video
from nodes.net.http_client import HttpResult, request
from nodes.net.metadata_client import MetadataClient
from protocol.errors import ConnectionLost
from tools.launch import free_port
from tools.put_cli import PutError, send_multipart
from vstack.media import parse_probe, probe_command
from vstack.upload_session import Session, SessionStore

from .conftest import ROOT, ffmpeg_exe, make_video


class Cluster:
    def __init__(self, meta: Any, nodes: list[Any], uploader: Any, stop: Callable[[], Any],
                 node_stops: list[Callable[[], Any]]) -> None:
        self.meta, self.nodes, self.uploader, self.stop_uploader = meta, nodes, uploader, stop
        self.node_stops = node_stops
        self.meta_url = f"http://127.0.0.1:{meta.port}"
        self.url = f"http://127.0.0.1:{uploader.port}"


async def cluster(start_node: Callable[..., Any], start_metadata: Callable[..., Any],
                  start_uploader: Callable[..., Any], tmp_path: Path, *, nodes: int = 3,
                  **uploader_settings: Any) -> Cluster:
    meta = await start_metadata(node_timeout=30)
    meta_url = f"http://127.0.0.1:{meta.port}"
    started, stops = [], []
    for i in range(nodes):
        node, stop = await start_node(data_dir=tmp_path / f"sn{i}", node_id=f"node-{i}",
                                      metadata_urls=(meta_url,))
        started.append(node)
        stops.append(stop)
    for i, node in enumerate(started):  # register now rather than after the nodes' 2 s delay
        res = await request("POST", f"{meta_url}/nodes/register", json_body={
            "node_url": f"http://127.0.0.1:{node.ports.http}", "node_id": f"node-{i}"})
        assert res.status == 200
    up, stop = await start_uploader(metadata_urls=(meta_url,), **uploader_settings)
    return Cluster(meta, started, up, stop, stops)


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None) -> tuple[bytes, str]:
    boundary = "testboundary12345"
    out = b""
    for k, v in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                ).encode()
    if file is not None:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; "
                f"filename=\"{file[0]}\"\r\nContent-Type: video/mp4\r\n\r\n").encode()
        out += file[1] + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


async def upload(c: Cluster, path: Path | None, title: str = "clip", *,
                 data: bytes | None = None) -> HttpResult:
    payload = data if data is not None else path.read_bytes() if path else b""
    body, ctype = multipart({"title": title}, (path.name if path else "x.mp4", payload))
    with trio.fail_after(60):
        return await request("POST", c.url + "/upload", body=body,
                             headers=[("Content-Type", ctype)])


async def wait_done(c: Cluster, session: str, seconds: float = 120) -> dict[str, Any]:
    with trio.fail_after(seconds):
        while True:
            state = (await request("GET", f"{c.url}/upload/status/{session}")).json()
            if state["status"] in ("completed", "failed"):
                return dict(state)
            await trio.sleep(0.1)


async def download(c: Cluster, video_id: str, out: Path) -> Path:
    client = MetadataClient((c.meta_url,))
    parts: list[bytes] = []

    async def sink(data: bytes) -> None:
        parts.append(data)

    await stream_video(client, video_id, sink)
    await client.aclose()
    out.write_bytes(b"".join(parts))
    return out


def probe_file(path: Path) -> Any:
    r = subprocess.run(probe_command(ffmpeg_exe(), path), capture_output=True, text=True)
    return parse_probe(r.stderr)


def decodes_cleanly(path: Path) -> bool:
    r = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "null", "-"],
                       capture_output=True, text=True, timeout=120)
    return r.returncode == 0 and not r.stderr.strip()


async def node_chunk_count(c: Cluster) -> int:
    return sum(n.chunk_count() for n in c.nodes)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mov", "clip.mkv", "clip.avi", "clip.flv",
                                  "clip.webm"])
async def test_every_format_is_stored_and_plays(
    name: str, media: dict[str, Path], start_node: Callable[..., Any],
    start_metadata: Callable[..., Any], start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, chunk_duration=2.0)
    res = await upload(c, media[name], title=f"my {name}")
    assert res.status == 200, res.body
    answer = res.json()
    state = await wait_done(c, answer["upload_session_id"])
    assert state["status"] == "completed", state
    assert state["progress"] == 100
    assert state["video_id"] == answer["video_id"]
    manifest = (await request("GET", f"{c.meta_url}/manifest/{answer['video_id']}")).json()
    assert manifest["status"] == "active"
    assert manifest["title"] == f"my {name}"
    assert manifest["total_chunks"] == state["total_chunks"] >= 2
    # A new video has no views: stored erasure-coded, 5 shards spread 2+2+1 on 3 nodes.
    assert state["redundancy_mode"] == "erasure_coding"
    for chunk in manifest["chunks"]:
        assert chunk["redundancy_mode"] == "erasure_coding"
        assert chunk["replicas"] == []
        assert sorted(f["fragment_index"] for f in chunk["fragments"]) == [0, 1, 2, 3, 4]
        per_node = Counter(f["node_url"] for f in chunk["fragments"])
        assert sorted(per_node.values()) == [1, 2, 2]
        assert 0 < chunk["duration_sec"] <= 4
    assert sum(ch["duration_sec"] for ch in manifest["chunks"]) == pytest.approx(5, abs=0.6)
    out = await download(c, answer["video_id"], tmp_path / "out.ts")
    info = probe_file(out)
    assert info.duration == pytest.approx(5, abs=0.6)
    assert info.video.codec in ("h264", "hevc")
    assert info.audio is not None
    assert decodes_cleanly(out)
    assert state["transcoded"] is (name in ("clip.avi", "clip.flv", "clip.webm"))


async def test_high_bitrate_source_gets_chunks_under_the_limit(
    start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    # One keyframe only and ~8 Mbit/s: copying could only cut one huge segment.
    src = make_video(tmp_path / "hot.mp4", 6, ["-c:v", "libx264", "-preset", "ultrafast",
                                               "-b:v", "8M", "-g", "1000", "-pix_fmt", "yuv420p",
                                               "-c:a", "aac"], size="1280x720", source="testsrc2")
    limit = 1536 * 1024
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path,
                      chunk_size=512 * 1024, max_segment_bytes=limit)
    answer = (await upload(c, src)).json()
    state = await wait_done(c, answer["upload_session_id"])
    assert state["status"] == "completed", state
    manifest = (await request("GET", f"{c.meta_url}/manifest/{answer['video_id']}")).json()
    assert len(manifest["chunks"]) >= 3
    assert all(ch["size_bytes"] <= limit for ch in manifest["chunks"])
    assert decodes_cleanly(await download(c, answer["video_id"], tmp_path / "hot.ts"))


async def test_things_that_are_not_videos_leave_nothing_behind(
    media: dict[str, Path], start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path)
    png = tmp_path / "picture.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x64", "-frames:v", "1", "-f", "image2", "-c:v", "png",
                    str(png)], check=True)
    mp4 = media["clip.mp4"].read_bytes()
    cases = {
        "notes.mp4": b"just some text, not a video\n" * 100,
        "picture.mp4": png.read_bytes(),
        "cut.mp4": mp4[: len(mp4) // 2],
    }
    for name, data in cases.items():
        res = await upload(c, Path(name), data=data)
        assert res.status == 400, (name, res.body)
        assert "Unsupported video format" in res.json()["error"]
    # A truncated MKV still probes (its header gives a duration), then fails.
    mkv = media["clip.mkv"].read_bytes()
    res = await upload(c, Path("cut.mkv"), data=mkv[: len(mkv) // 3])
    assert res.status == 200
    state = await wait_done(c, res.json()["upload_session_id"])
    assert state["status"] == "failed"
    assert "truncated" in state["error"]
    assert (await request("GET", f"{c.meta_url}/videos")).json() == []
    assert await node_chunk_count(c) == 0
    leftovers = [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()
                 and "sessions" not in p.parts]
    assert leftovers == []


@pytest.mark.parametrize("mode", ["replication", "erasure_coding"])
async def test_a_node_dying_during_distribution_is_replaced(
    start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path, mode: str,
) -> None:
    src = make_video(tmp_path / "long.mp4", 20, ["-c:v", "libx264", "-pix_fmt", "yuv420p",
                                                 "-g", "25", "-c:a", "aac"])
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, nodes=4,
                      chunk_duration=1.0, chunks_in_flight=1, redundancy=mode)
    answer = (await upload(c, src)).json()
    # The node dies as processing starts; the metadata service still lists it
    # as healthy (it has not been silent for NODE_TIMEOUT yet), so the
    # uploader tries it, fails, and must place those chunks elsewhere.
    await c.node_stops[0]()
    at_kill = (await request("GET", f"{c.url}/upload/status/{answer['upload_session_id']}")
               ).json()["chunks_done"]
    state = await wait_done(c, answer["upload_session_id"])
    assert state["status"] == "completed", state
    manifest = (await request("GET", f"{c.meta_url}/manifest/{answer['video_id']}")).json()
    assert manifest["total_chunks"] >= 15
    dead = f"http://127.0.0.1:{c.nodes[0].ports.http}"
    assert at_kill < manifest["total_chunks"] - 2, "the node died before most chunks were stored"
    # Chunks committed after the failure (beyond the one in flight) avoid the dead node.
    def nodes_of(ch: dict[str, Any]) -> set[str]:
        return set(ch["replicas"]) | {f["node_url"] for f in ch["fragments"] or ()}

    late = [ch for ch in manifest["chunks"][at_kill + 2 :] if dead in nodes_of(ch)]
    assert dead in (await request("GET", f"{c.url}/health")).json()["failed_nodes"]
    assert late == [], "chunks placed after the failure avoid the dead node"
    for ch in manifest["chunks"]:
        assert ch["redundancy_mode"] == mode
        if mode == "replication":
            assert len(ch["replicas"]) == 3
        else:
            assert len({f["fragment_index"] for f in ch["fragments"]}) == 5
    out = await download(c, answer["video_id"], tmp_path / "long.ts")
    assert probe_file(out).duration == pytest.approx(20, abs=1)


async def test_uploads_beyond_the_limit_wait_in_order(
    media: dict[str, Path], start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path,
                      max_concurrent_uploads=1)
    sessions: list[dict[str, Any]] = []
    for i in range(3):
        sessions.append((await upload(c, media["clip.webm"], title=f"v{i}")).json())
    now = [(await request("GET", f"{c.url}/upload/status/{s['upload_session_id']}")).json()
           for s in sessions]
    queued = [s for s in now if s["status"] == "queued"]
    assert queued, "with one slot, later uploads wait"
    assert all(s["queue_position"] >= 1 for s in queued)
    health = (await request("GET", f"{c.url}/health")).json()
    assert health["active_uploads"] <= 1
    assert health["queued_uploads"] == len(queued)
    states = [await wait_done(c, s["upload_session_id"]) for s in sessions]
    assert [s["status"] for s in states] == ["completed"] * 3
    finished = [s["completed_at"] for s in states]
    assert finished == sorted(finished), "processed in the order they arrived"
    listed = (await request("GET", f"{c.meta_url}/videos")).json()
    assert [v["title"] for v in listed] == ["v2", "v1", "v0"]


async def test_bad_requests(
    media: dict[str, Path], start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path,
                      max_upload_bytes=100_000)
    plain = await request("POST", c.url + "/upload", body=b"{}",
                          headers=[("Content-Type", "application/json")])
    assert plain.status == 400
    body, ctype = multipart({"title": "t"}, None)
    no_video = await request("POST", c.url + "/upload", body=body, headers=[("Content-Type", ctype)])
    assert no_video.status == 422
    body, ctype = multipart({}, ("a.mp4", media["clip.mp4"].read_bytes()[:50_000]))
    no_title = await request("POST", c.url + "/upload", body=body, headers=[("Content-Type", ctype)])
    assert no_title.status == 422
    big = await upload(c, media["clip.webm"], data=os.urandom(200_000))
    assert big.status == 413
    huge = tmp_path / "huge.mp4"  # streamed: the uploader answers 413 and stops reading
    huge.write_bytes(os.urandom(16 << 20))
    with pytest.raises(PutError, match=r"413.*larger than the limit"):
        await send_multipart(c.url, huge, "too big")
    assert (await request("GET", f"{c.url}/upload/status/nope")).status == 404
    assert (await request("GET", f"{c.meta_url}/videos")).json() == []


async def test_status_survives_a_restart(
    media: dict[str, Path], start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path)
    answer = (await upload(c, media["clip.mp4"])).json()
    done = await wait_done(c, answer["upload_session_id"])
    await c.stop_uploader()
    up2, _ = await start_uploader(metadata_urls=(c.meta_url,))
    again = (await request("GET", f"http://127.0.0.1:{up2.port}/upload/status/"
                                  f"{answer['upload_session_id']}")).json()
    assert again == done


async def test_a_lost_answer_to_activation_completes_the_upload_and_keeps_the_video(
    media: dict[str, Path], start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    """The video went active but the answer was lost: the uploader asks before it
    fails (failing would delete the video)."""
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path)
    real = c.uploader.metadata.set_status

    async def answer_lost(video_id: str, status: str, **kwargs: Any) -> None:
        await real(video_id, status, **kwargs)
        raise ConnectionLost("metadata service closed the connection")

    c.uploader.metadata.set_status = answer_lost
    answer = (await upload(c, media["clip.mp4"])).json()
    done = await wait_done(c, answer["upload_session_id"])
    assert done["status"] == "completed", done
    manifest = (await request("GET", f"{c.meta_url}/manifest/{answer['video_id']}")).json()
    assert manifest["status"] == "active"
    assert manifest["total_chunks"] == done["total_chunks"]


async def test_vstack_put_cli(
    media: dict[str, Path], start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path)
    env = {**os.environ, "UPLOADER_SERVICE_URL": c.url, "METADATA_SERVICE_URL": c.meta_url}
    ok = await trio.run_process([sys.executable, "-m", "tools.put_cli", str(media["clip.mkv"]),
                                 "--title", "From CLI", "--json"], capture_stdout=True,
                                capture_stderr=True, cwd=ROOT, env=env, check=False)
    assert ok.returncode == 0, ok.stderr
    state = json.loads(ok.stdout)
    assert state["status"] == "completed"
    assert state["title"] == "From CLI"
    human = await trio.run_process([sys.executable, "-m", "tools.put_cli", str(media["clip.mp4"])],
                                   capture_stdout=True, capture_stderr=True, cwd=ROOT, env=env,
                                   check=False)
    assert human.returncode == 0
    assert b"vstack-play" in human.stdout
    assert b"/manifest/" in human.stdout
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    bad = await trio.run_process([sys.executable, "-m", "tools.put_cli", str(text)],
                                 capture_stdout=True, capture_stderr=True, cwd=ROOT, env=env,
                                 check=False)
    assert bad.returncode != 0
    assert b"Unsupported video format" in bad.stderr


async def test_an_upload_cut_short_by_a_restart_fails_and_leaves_nothing(
    start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    src = make_video(tmp_path / "long.mp4", 40, ["-c:v", "libx264", "-pix_fmt", "yuv420p",
                                                 "-g", "25", "-c:a", "aac"])
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, chunk_duration=1.0,
                      chunks_in_flight=1)
    answer = (await upload(c, src)).json()
    session = answer["upload_session_id"]
    with trio.fail_after(30):
        while (await request("GET", f"{c.url}/upload/status/{session}")).json().get(
                "chunks_done", 0) < 2:
            await trio.sleep(0.005)
    await c.stop_uploader()  # the process goes away mid-upload
    assert await node_chunk_count(c) > 0
    up2, _ = await start_uploader(metadata_urls=(c.meta_url,))
    state = (await request("GET", f"http://127.0.0.1:{up2.port}/upload/status/{session}")).json()
    assert state["status"] == "failed"
    assert "restart" in state["error"]
    with trio.fail_after(30):
        while await node_chunk_count(c) or (await request("GET", f"{c.meta_url}/videos")).json():
            await trio.sleep(0.05)


# -- restarts between a video turning active and its session saved completed ------------


def interrupted_session(tmp_path: Path, video_id: str, stage: str) -> Session:
    """The session file an uploader stopped at ``stage`` leaves behind."""
    s = Session(session_id=f"interrupted-{video_id}", video_id=video_id, title="t",
                filename="t.mp4", size_bytes=1, duration_sec=5.0)
    for st in ("processing", "chunking", "uploading_chunks", "finalizing"):
        s.advance(st)
        if st == stage:
            break
    SessionStore(tmp_path / "uploads" / "sessions").save(s)
    return s


async def active_video(meta_url: str) -> str:
    created = await request("POST", f"{meta_url}/video", json_body={"title": "t", "duration_sec": 5})
    video_id = str(created.json()["video_id"])
    res = await request("PATCH", f"{meta_url}/video/{video_id}/status", json_body={"status": "active"})
    assert res.status == 200
    return video_id


async def status_of(up: Any, session_id: str) -> dict[str, Any]:
    res = await request("GET", f"http://127.0.0.1:{up.port}/upload/status/{session_id}")
    return dict(res.json())


async def test_a_restart_after_activation_completes_the_session_and_keeps_the_video(
    start_metadata: Callable[..., Any], start_uploader: Callable[..., Any], tmp_path: Path,
) -> None:
    meta = await start_metadata()
    meta_url = f"http://127.0.0.1:{meta.port}"
    video_id = await active_video(meta_url)
    s = interrupted_session(tmp_path, video_id, "finalizing")  # active, completed not yet saved
    up, stop = await start_uploader(metadata_urls=(meta_url,))
    state = await status_of(up, s.session_id)
    assert state["status"] == "completed", state
    assert state["manifest_url"] == f"/manifest/{video_id}"
    manifest = await request("GET", f"{meta_url}/manifest/{video_id}")
    assert manifest.status == 200
    assert manifest.json()["status"] == "active"
    await stop()
    saved = SessionStore(tmp_path / "uploads" / "sessions").load(s.session_id)
    assert saved is not None
    assert saved.status == "completed"  # saved, not only shown


async def test_an_interrupted_session_waits_for_the_metadata_service(
    clock: trio.testing.MockClock, nursery: trio.Nursery, start_uploader: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Unreachable metadata service: nothing is decided or deleted; once it answers,
    the session is settled by the state of its video."""
    from nodes.metadata.service import serve_metadata
    from vstack.settings import MetadataSettings

    from .conftest import start_stoppable

    db = MetadataSettings(database=tmp_path / "meta" / "metadata.db", port=free_port(),
                          host="127.0.0.1", sqlite_synchronous="OFF")
    _, stop_meta = await start_stoppable(nursery, serve_metadata, db)
    video_id = await active_video(f"http://127.0.0.1:{db.port}")
    await stop_meta()
    s = interrupted_session(tmp_path, video_id, "uploading_chunks")
    later = replace(db, port=free_port())  # nothing listens there yet
    up, _ = await start_uploader(metadata_urls=(f"http://127.0.0.1:{later.port}",))
    state = await status_of(up, s.session_id)
    assert state["status"] == "uploading_chunks", "left as it was, not failed"
    saved = SessionStore(tmp_path / "uploads" / "sessions").load(s.session_id)
    assert saved is not None
    assert saved.status == "uploading_chunks"
    await trio.sleep(30)  # virtual time: several attempts, all refused
    assert (await status_of(up, s.session_id))["status"] == "uploading_chunks"
    await start_stoppable(nursery, serve_metadata, later)  # the same database, reachable now
    with trio.fail_after(600):
        while (state := await status_of(up, s.session_id))["status"] == "uploading_chunks":
            await trio.sleep(1)
    assert state["status"] == "completed", state
    manifest = await request("GET", f"http://127.0.0.1:{later.port}/manifest/{video_id}")
    assert manifest.json()["status"] == "active"


# -- the session's own file failing ---------------------------------------------------------


async def test_a_session_that_cannot_be_saved_completed_keeps_its_active_video(
    media: dict[str, Path], start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of space when ``completed`` is saved: the video is active already, so the
    upload must not fail (failing deletes the video); a restart saves it completed."""
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path)
    real = c.uploader.store.save

    def disk_full_at_completed(s: Session) -> None:
        if s.status == "completed":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(s)

    monkeypatch.setattr(c.uploader.store, "save", disk_full_at_completed)
    answer = (await upload(c, media["clip.mp4"])).json()
    done = await wait_done(c, answer["upload_session_id"])
    assert done["status"] == "completed", done
    manifest = await request("GET", f"{c.meta_url}/manifest/{answer['video_id']}")
    assert manifest.status == 200, "the active video was deleted"
    assert manifest.json()["status"] == "active"
    assert manifest.json()["total_chunks"] == done["total_chunks"]
    sessions = SessionStore(tmp_path / "uploads" / "sessions")
    saved = sessions.load(done["upload_session_id"])
    assert saved is not None
    assert saved.status == "finalizing"  # left for a restart to complete
    await c.stop_uploader()
    monkeypatch.undo()  # space again
    up2, _ = await start_uploader(metadata_urls=(c.meta_url,))
    assert (await status_of(up2, done["upload_session_id"]))["status"] == "completed"
    saved = sessions.load(done["upload_session_id"])
    assert saved is not None
    assert saved.status == "completed"


async def test_a_failed_session_is_saved_before_it_is_shown(
    media: dict[str, Path], start_node: Callable[..., Any], start_metadata: Callable[..., Any],
    start_uploader: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poller never sees ``failed`` before it is on disk (a restart would settle the
    session again); if it cannot be saved at all, it is shown failed all the same."""
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path)

    async def refused(video_id: str, status: str) -> None:
        raise ConnectionLost("metadata service closed the connection")

    real = c.uploader.store.save
    shown_while_saving: list[str] = []

    def disk_full_at_failed(s: Session) -> None:
        if s.status == "failed":
            shown_while_saving.append(c.uploader.sessions[s.session_id].status)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(s)

    monkeypatch.setattr(c.uploader.metadata, "set_status", refused)
    monkeypatch.setattr(c.uploader.store, "save", disk_full_at_failed)
    answer = (await upload(c, media["clip.mp4"])).json()
    done = await wait_done(c, answer["upload_session_id"])
    assert done["status"] == "failed", done
    assert shown_while_saving == ["finalizing"], "shown failed before it was saved"
    saved = SessionStore(tmp_path / "uploads" / "sessions").load(done["upload_session_id"])
    assert saved is not None
    assert saved.status == "finalizing"
    with trio.fail_after(30):  # cleaned up all the same
        while (await request("GET", f"{c.meta_url}/manifest/{answer['video_id']}")).status != 404:
            await trio.sleep(0.05)
