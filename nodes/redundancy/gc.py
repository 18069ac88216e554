"""Garbage collection: copies no committed placement references, and uploads that stalled.

Every pass lists what each healthy node holds and compares it with every
committed placement (of every video that is not deleted, uploads in
progress included). A copy referenced by none is an orphan: a failed or
abandoned upload, a half-finished migration or repair, a client that
stored and never committed, a node that came back after its copies were
rebuilt elsewhere. An orphan is deleted only once it has been one for
``ORPHAN_GRACE_SEC`` and a fresh read through a quorum of the metadata
replicas still finds no placement of its video that names it; so a copy an
upload has just stored, and is about to commit, is never taken.

A video left ``uploading`` with no new chunk for ``UPLOAD_EXPIRY_SEC`` is
deleted (its chunks go with it, and any strays become orphans).
"""

from __future__ import annotations

import logging

import trio

from protocol.api import CHUNK_ID_RE, Manifest
from protocol.errors import VStackError
from vstack.node_urls import normalize_url
from vstack.reconcile import copies_of

from .state import Manager, Snapshot

__all__ = ["collect_orphans", "expire_uploads", "referenced"]

log = logging.getLogger("vstack.redundancy")

#: Video ids are UUIDs: a stored id starts with its video's id.
VIDEO_ID_LENGTH = 36


def referenced(manifests: list[Manifest]) -> set[tuple[str, str]]:
    """Every ``(node URL, stored id)`` a committed placement names."""
    return {(normalize_url(c.node_url), c.stored_id)
            for m in manifests for chunk in m.chunks for c in copies_of(chunk)}


async def collect_orphans(mgr: Manager, snap: Snapshot) -> None:
    refs = referenced(snap.manifests)
    now_orphans: list[tuple[str, str]] = []
    listed: list[tuple[str, str]] = []
    for node in snap.nodes:
        if node.status != "healthy":
            continue
        url = normalize_url(node.node_url)
        try:
            held = await _inventory(mgr, url)
        except VStackError as exc:
            log.info("could not list %s: %s", url, exc)
            continue
        listed += [(url, sid) for sid in held]
        now_orphans += [(url, sid) for sid in held if (url, sid) not in refs]
    for url, stored_id in mgr.orphans.observe(now_orphans, trio.current_time(), scope=listed):
        if await _still_orphan(mgr, url, stored_id) and await mgr.pool.delete(url, stored_id):
            mgr.stats.orphans_deleted += 1
            log.info("deleted orphan %s from %s", stored_id, url)
        mgr.orphans.forget((url, stored_id))


async def _inventory(mgr: Manager, url: str) -> list[str]:
    held: list[str] = []
    cursor: int | None = 0
    while cursor is not None:
        page, cursor = await mgr.pool.list_page(url, cursor)
        held += [sid for sid, _ in page]
    return held


async def _still_orphan(mgr: Manager, url: str, stored_id: str) -> bool:
    """A fresh quorum read of the stored id's video: does any placement name it now?"""
    video_id = stored_id[:VIDEO_ID_LENGTH]
    if not CHUNK_ID_RE.match(stored_id):
        return False
    try:
        manifest = await mgr.metadata.manifest(video_id, linearizable=True)
    except VStackError as exc:
        log.info("not deleting %s: its video's state is unknown (%s)", stored_id, exc)
        return False
    if manifest is None or manifest.status == "deleted":
        return True
    return (url, stored_id) not in referenced([manifest])


async def expire_uploads(mgr: Manager, snap: Snapshot) -> None:
    """Delete videos left ``uploading`` with no progress for ``UPLOAD_EXPIRY_SEC``."""
    uploading = [(m.video_id, len(m.chunks)) for m in snap.manifests if m.status == "uploading"]
    for video_id, _ in mgr.stalled.observe(uploading, trio.current_time()):
        try:
            await mgr.metadata.delete_video(video_id)
        except VStackError as exc:
            log.warning("could not expire stalled upload %s: %s", video_id, exc)
            continue
        mgr.stats.uploads_expired += 1
        log.warning("upload of video %s made no progress for %.0f s: deleted", video_id,
                    mgr.settings.upload_expiry)
