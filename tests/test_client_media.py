"""Real videos through the smart client: FFmpeg reads them back whole.

A real upload (FFmpeg cuts the clip), then the two ways users watch: any
player through the client service's HLS gateway (FFmpeg stands in for it),
and ``vstack-play`` as a command (its output decoded by FFmpeg). Real time:
FFmpeg and the command are child processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from nodes.client.client import open_smart_client
from nodes.client.service import serve_client_http
from nodes.net.http_client import request
from vstack.playback import BufferPolicy
from vstack.settings import ClientSettings

from .conftest import ROOT, ffmpeg_exe
from .test_uploader import cluster, decodes_cleanly, probe_file, upload, wait_done


async def stored_clip(start_node: Callable[..., Any], start_metadata: Callable[..., Any],
                      start_uploader: Callable[..., Any], tmp_path: Path,
                      clip: Path) -> tuple[str, str, list[Any]]:
    """The clip uploaded in 1 s chunks; (metadata URL, video id, manifest chunks)."""
    c = await cluster(start_node, start_metadata, start_uploader, tmp_path, chunk_duration=1.0)
    res = await upload(c, clip)
    assert res.status == 200, res.body
    state = await wait_done(c, res.json()["upload_session_id"])
    assert state["status"] == "completed", state
    vid = res.json()["video_id"]
    manifest = (await request("GET", f"{c.meta_url}/manifest/{vid}")).json()
    assert len(manifest["chunks"]) >= 4
    return c.meta_url, vid, manifest["chunks"]


async def test_ffmpeg_reads_the_whole_video_through_the_hls_gateway(
        media: dict[str, Path], start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    meta, vid, chunks = await stored_clip(start_node, start_metadata, start_uploader, tmp_path,
                                          media["clip.mp4"])
    settings = ClientSettings(metadata_urls=(meta,), port=0)
    out = tmp_path / "via-hls.ts"
    async with open_smart_client((meta,), BufferPolicy()) as client, \
            trio.open_nursery() as nursery:
        svc = await nursery.start(lambda task_status: serve_client_http(
            client, nursery, settings, port=0, task_status=task_status))
        url = f"http://127.0.0.1:{svc.port}/hls/{vid}.m3u8"
        run = await trio.to_thread.run_sync(lambda: subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-i", url, "-c", "copy", "-f", "mpegts", str(out)],
            capture_output=True, text=True, timeout=120))
        served = svc.hls.served
        nursery.cancel_scope.cancel()
    assert run.returncode == 0, run.stderr
    assert not run.stderr.strip()
    assert served == len(chunks)  # every segment asked for, once
    assert abs(probe_file(out).duration - 5.0) < 0.2
    assert decodes_cleanly(out)


def play_command(meta: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tools.play_cli", *args, "--metadata", meta]


async def test_vstack_play_writes_the_video_and_reports_as_json(
        media: dict[str, Path], start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    meta, vid, chunks = await stored_clip(start_node, start_metadata, start_uploader, tmp_path,
                                          media["clip.mkv"])
    out = tmp_path / "played.ts"

    def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(play_command(meta, *args), capture_output=True, text=True,
                              timeout=120, cwd=ROOT, **kwargs)

    done = await trio.to_thread.run_sync(lambda: run(vid, "-o", str(out), "--speed", "0",
                                                     "--json"))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["video_id"] == vid
    assert status["buffer_stats"]["total_chunks_played"] == len(chunks)
    assert status["buffer_stats"]["rebuffering_events"] == 0
    assert out.stat().st_size == sum(c["size_bytes"] for c in chunks)
    assert decodes_cleanly(out)
    assert abs(probe_file(out).duration - 5.0) < 0.2

    missing = await trio.to_thread.run_sync(lambda: run("no-such-video", "-o", str(out)))
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: no video no-such-video"

    # A player that quits after the first bytes: quiet, status 0.
    def piped() -> tuple[int, str]:
        with subprocess.Popen(play_command(meta, vid, "--speed", "0"), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as play:
            assert play.stdout is not None
            assert play.stderr is not None
            play.stdout.read(1000)
            play.stdout.close()
            err = play.stderr.read().decode()
            return play.wait(timeout=60), err

    code, err = await trio.to_thread.run_sync(piped)
    assert code == 0, err
    assert "Traceback" not in err
