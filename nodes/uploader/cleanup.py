"""Nothing left behind: removing what a failed or interrupted upload stored.

A failed upload's video record is deleted through the metadata service,
which deletes its *committed* chunks from their nodes; the uploader deletes
the copies it stored but had not committed yet (it knows their nodes).

An upload cut short by a restart of the uploader is harder: which copies it
placed died with the old process. At start-up (:func:`recover`) each
session that did not end is settled by what the metadata service says of its
video, never by its own file alone:

* the video is ``active``: the upload had finished (the video turns active
  just before its session is saved ``completed``, and a crash may fall in
  between), so the session is marked ``completed``; nothing is deleted;
* there is no such video, or it is not active: the session is marked
  ``failed``, its video record deleted, and every healthy node asked to
  delete every chunk id the video could have had (chunk ids follow
  :func:`protocol.api.chunk_id` and no chunk is shorter than one second);
* the metadata service cannot be asked (unreachable, no quorum, timeout):
  nothing is decided and nothing deleted; the session keeps its last stage
  and is settled in the background, with back-off, once the service
  answers.

Cleaning up is best effort and never raises: a node or metadata replica
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
from nodes.net.jobs import Backoff
from nodes.net.storage_client import StoragePool
from protocol.api import Manifest, chunk_id, shard_id
from protocol.errors import VStackError
from vstack.redundancy import TOTAL_SHARDS
from vstack.upload_session import TERMINAL, Session

from .placer import healthy_nodes
from .state import Uploader

__all__ = ["delete_copies", "recover", "remove_files", "remove_upload", "settle_later"]

log = logging.getLogger("vstack.uploader")

#: How long deleting a video record may take.
DELETE_VIDEO_SECONDS = 30.0
#: How long asking for an interrupted upload's video may take, per attempt.
SETTLE_SECONDS = 10.0
INTERRUPTED = "interrupted by a restart of the uploader; please upload again"


async def delete_copies(pool: StoragePool, video_id: str, copies: Mapping[int, list[str]]) -> None:
    """Delete chunk ``seq`` of ``video_id`` (a replica, or any of its shards) from every
    node listed for it, in parallel."""
    async with trio.open_nursery() as nursery:
        for seq, urls in copies.items():
            ids = _stored_ids(chunk_id(video_id, seq))
            for url in set(urls):
                nursery.start_soon(pool.delete_many, url, ids)


def _stored_ids(cid: str) -> list[str]:
    """Every id a chunk may be stored under on a node: itself (a replica), or a shard's."""
    return [cid, *(shard_id(cid, i) for i in range(TOTAL_SHARDS))]


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
    """Settle the sessions a restart cut short by the state of their video (see above).

    Each is asked about once, all at once, before the service starts serving;
    those the metadata service could not answer for are retried in the
    background (in ``up.nursery``).
    """
    async with trio.open_nursery() as nursery:
        for s in list(up.sessions.values()):
            if s.status not in TERMINAL:
                nursery.start_soon(_settle_or_defer, up, s)


async def _settle_or_defer(up: Uploader, s: Session) -> None:
    try:
        await _settle(up, s)
    except VStackError as exc:
        log.warning("session %s was interrupted by a restart, and the state of its video %s "
                    "is unknown (%s): left as it is until the metadata service answers",
                    s.session_id, s.video_id, exc)
    except Exception:
        log.exception("settling interrupted session %s failed; retrying later", s.session_id)
    else:
        return
    up.nursery.start_soon(settle_later, up, s)


async def settle_later(up: Uploader, s: Session, backoff: Backoff | None = None) -> None:
    """Ask again, with back-off, until the metadata service answers for ``s``'s video."""
    backoff = backoff or Backoff(initial=1.0, maximum=60.0)
    while True:
        await trio.sleep(backoff.next_delay())
        try:
            await _settle(up, s)
        except Exception as exc:  # VStackError above all: the service is still unreachable
            log.debug("session %s: still cannot settle it: %r", s.session_id, exc)
            continue
        log.info("session %s settled after %d attempts", s.session_id, backoff.failures + 1)
        return


async def _settle(up: Uploader, s: Session) -> None:
    """End interrupted session ``s`` by the state of its video.

    Raises:
        VStackError: the metadata service could not tell; nothing was changed.
    """
    if s.status in TERMINAL:  # settled by an earlier attempt
        return
    with deadline(SETTLE_SECONDS, f"the state of video {s.video_id}"):
        manifest = await up.metadata.manifest(s.video_id, linearizable=True)
    if manifest is not None and manifest.status == "active":
        await _complete(up, s, manifest)
    else:
        await _fail_interrupted(up, s)


async def _complete(up: Uploader, s: Session, manifest: Manifest) -> None:
    """The video went active before the restart: the upload had finished."""
    s.total_chunks = manifest.total_chunks
    s.chunks_done = manifest.total_chunks
    s.manifest_url = f"/manifest/{s.video_id}"
    s.advance("completed")
    try:
        await up.save(s)
    except OSError as exc:  # served from memory; settled again at the next start
        log.error("could not save session %s: %s", s.session_id, exc)
    log.warning("session %s was interrupted by a restart after its video %s became active: "
                "completed", s.session_id, s.video_id)
    await remove_files(up, s.session_id)


async def _fail_interrupted(up: Uploader, s: Session) -> None:
    """The video never went active: fail the session, remove what it stored (in the background)."""
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
        ids = [sid for seq in range(top) for sid in _stored_ids(chunk_id(s.video_id, seq))]
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(up.pool.delete_many, node.url, ids)
    except Exception:
        log.exception("cleaning up after interrupted session %s failed", s.session_id)
