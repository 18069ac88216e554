"""Shared fixtures: real storage nodes on 127.0.0.1, in-process or as processes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nodes.storage.node import StorageNode
from nodes.storage.service import serve_storage_node
from tools.launch import ServiceProcess, free_port
from vstack.settings import StorageSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps ahead whenever every task has been idle 20 ms.

    Real sockets need a small positive threshold: the kernel, not trio,
    decides when bytes arrive.
    """
    return trio.testing.MockClock(autojump_threshold=0.02)


def settings_for(tmp_path: Path, **overrides: Any) -> StorageSettings:
    base = StorageSettings(
        data_dir=tmp_path / "node", port=0, binary_port=0, host="127.0.0.1",
        node_id="test-node", scrub_rate_bytes=0, checkpoint_interval=3600,
        compaction_interval=3600,
    )
    return replace(base, **overrides)


@pytest.fixture
async def start_node(
    nursery: trio.Nursery, tmp_path: Path
) -> Callable[..., Any]:
    """``await start_node(**settings)`` runs a node in this test's nursery.

    Returns ``(node, stop)``; ``await stop()`` shuts that node down cleanly.
    """

    async def start(**overrides: Any) -> tuple[StorageNode, Callable[[], Any]]:
        return await start_stoppable(nursery, serve_storage_node, settings_for(tmp_path, **overrides))

    return start


async def start_stoppable(nursery: trio.Nursery, serve: Callable[..., Any],
                          settings: Any) -> tuple[Any, Callable[[], Any]]:
    """Start ``serve(settings)`` in ``nursery``; returns what it reports and an
    ``async stop()`` that shuts it down and waits until it is gone."""
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await serve(settings, task_status=task_status)
        finally:
            stopped.set()

    async def stop() -> None:
        scope.cancel()
        await stopped.wait()

    return await nursery.start(run), stop


class NodeProcess(ServiceProcess):
    """``vstack-node storage`` in a child process, configured by environment."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.binary_port = free_port()
        super().__init__(
            "storage",
            {"PORT": str(self.port), "BINARY_PORT": str(self.binary_port), "HOST": "127.0.0.1",
             "DATA_DIR": str(data_dir), "NODE_ID": "proc-node", "SCRUB_RATE": "0",
             "LOG_LEVEL": "WARNING", **env},
            ports=(self.binary_port, self.port),
            log=data_dir.parent / "node-process.log",
        )


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    made: list[NodeProcess] = []

    def make(**env: str) -> NodeProcess:
        p = NodeProcess(tmp_path / "proc-node", **env)
        made.append(p)
        return p

    yield make
    for p in made:
        if p.running:
            p.kill()


@pytest.fixture
async def start_metadata(
    nursery: trio.Nursery, tmp_path: Path
) -> Callable[..., Any]:
    """``await start_metadata(**settings)`` runs a metadata replica in this test's nursery."""
    from nodes.metadata.service import serve_metadata
    from nodes.metadata.state import MetadataService
    from vstack.settings import MetadataSettings

    async def start(**overrides: Any) -> MetadataService:
        base = MetadataSettings(database=tmp_path / "meta" / "metadata.db", port=0,
                                host="127.0.0.1", sqlite_synchronous="OFF")
        svc: MetadataService = await nursery.start(serve_metadata, replace(base, **overrides))
        return svc

    return start


@pytest.fixture
async def start_uploader(
    nursery: trio.Nursery, tmp_path: Path
) -> Callable[..., Any]:
    """``await start_uploader(metadata_urls=(...), **settings)`` runs an uploader here."""
    from nodes.uploader.service import Uploader, serve_uploader
    from vstack.settings import UploaderSettings

    async def start(**overrides: Any) -> tuple[Uploader, Callable[[], Any]]:
        settings = UploaderSettings(**{"temp_dir": tmp_path / "uploads", "port": 0,
                                       "host": "127.0.0.1", **overrides})
        return await start_stoppable(nursery, serve_uploader, settings)

    return start


FFMPEG_VIDEOS: dict[str, list[str]] = {
    # name: encoder arguments (after the lavfi inputs)
    "clip.mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac"],
    "clip.mov": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac"],
    "clip.mkv": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-c:a", "libmp3lame"],
    "clip.avi": ["-c:v", "mpeg4", "-q:v", "5", "-g", "25", "-c:a", "libmp3lame"],
    "clip.flv": ["-c:v", "flv1", "-q:v", "5", "-g", "25", "-c:a", "libmp3lame", "-ar", "44100"],
    "clip.webm": ["-c:v", "libvpx-vp9", "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8",
                  "-g", "25", "-c:a", "libopus"],
}


def ffmpeg_exe() -> str:
    from nodes.uploader.ffmpeg import find_ffmpeg

    return find_ffmpeg()


def make_video(path: Path, seconds: float, args: list[str], size: str = "320x240",
               source: str = "testsrc") -> Path:
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
         f"{source}=duration={seconds}:size={size}:rate=25", "-f", "lavfi", "-i",
         f"sine=frequency=440:duration={seconds}", *args, "-shortest", str(path)],
        check=True, timeout=120)
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small generated videos of every accepted format (made once per test run)."""
    root = tmp_path_factory.mktemp("media")
    return {name: make_video(root / name, 5, args) for name, args in FFMPEG_VIDEOS.items()}
