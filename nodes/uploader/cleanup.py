"""Nothing left behind: removing what a failed or interrupted upload stored.

A failed upload's video record is deleted through the metadata service,
which deletes its *committed* chunks from their nodes; the uploader deletes
the copies it stored but had not committed yet (it knows their nodes).

An upload cut short by a restart of the uploader is harder: which copies it
placed died with the old process. Its session is marked ``failed`` at
start-up, its video record deleted, and every healthy node asked to delete
every chunk id the video could have had (chunk ids follow
:func:`protocol.api.chunk_id` and no chunk is shorter than one second).

Everything here is best effort and never raises: a node or metadata replica
that cannot be reached is logged, and the rest goes on.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from functools import partial

import trio

from nodes.net.errors import deadline
from nodes.net.storage_client import StoragePool
from protocol.api import chunk_id
from protocol.errors import VStackError
from vstack.upload_session import TERMINAL, Session

from .placer import healthy_nodes
from .state import Uploader

__all__ = ["delete_copies", "recover", "remove_files", "remove_upload"]

log = logging.getLogger("vstack.uploader")

#: How long deleting a video record may take.
DELETE_VIDEO_SECONDS = 30.0
INTERRUPTED = "interrupted by a restart of the uploader; please upload again"


async def delete_copies(pool: StoragePool, video_id: str, copies: Mapping[int, list[str]]) -> None:
    """Delete chunk ``seq`` of ``video_id`` from every node listed for it, in parallel."""
    async with trio.open_nursery() as nursery:
        for seq, urls in copies.items():
            for url in urls:
                nursery.start_soon(pool.delete, url, chunk_id(video_id, seq))


async def remove_upload(up: Uploader, video_id: str, uncommitted: Mapping[int, list[str]]) -> None:
    """Delete the video record (and so its committed chunks), then the ``uncommitted`` copies."""
    try:
        with deadline(DELETE_VIDEO_SECONDS, f"deleting video {video_id}"):
            await up.metadata.delete_video(video_id)
    except VStackError as exc:
        log.warning("could not delete video %s: %s", video_id, exc)
    await delete_copies(up.pool, video_id, uncommitted)


async def remove_files(up: Uploader, session_id: str) -> None:
    """Delete the session's received file and FFmpeg's work directory."""
    try:
        await trio.Path(up.upload_path(session_id)).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the upload of session %s: %s", session_id, exc)
    await trio.to_thread.run_sync(partial(shutil.rmtree, up.work_dir(session_id),
                                          ignore_errors=True))


async def recover(up: Uploader) -> None:
    """Mark the sessions a restart cut short failed; clean up after them in the background."""
    for s in up.sessions.values():
        if s.status in TERMINAL:
            continue
        s.fail(INTERRUPTED)
        try:
            await up.save(s)
        except OSError as exc:
            log.error("could not save session %s: %s", s.session_id, exc)
        log.warning("session %s was interrupted by a restart", s.session_id)
        up.nursery.start_soon(_remove_interrupted, up, s)


async def _remove_interrupted(up: Uploader, s: Session) -> None:
    """Remove the video, every chunk id it could have had, and the session's files."""
    try:
        await remove_files(up, s.session_id)
        await remove_upload(up, s.video_id, {})
        try:
            nodes = await healthy_nodes(up.metadata)
        except VStackError as exc:
            log.warning("session %s: chunks left on the nodes (%s)", s.session_id, exc)
            return
        top = math.ceil(s.duration_sec or 0) + 2
        ids = [chunk_id(s.video_id, seq) for seq in range(top)]
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(up.pool.delete_many, node.url, ids)
    except Exception:
        log.exception("cleaning up after interrupted session %s failed", s.session_id)
