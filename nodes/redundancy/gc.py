"""Garbage collection: copies no committed placement references, and uploads that stalled.

Every pass lists what each healthy node holds and compares it with every
committed placement (of every video that is not deleted, uploads in
progress included). A stored id that no placement names, on any node, is an
orphan: a failed or abandoned upload, a half-finished migration, a client
that stored and never committed. An orphan is deleted only once it has been
one for ``ORPHAN_GRACE_SEC`` and a fresh read through a quorum of the
metadata replicas, of the chunk itself (``GET /chunk/{id}/placement``, the
id with any shard suffix taken off), still finds no placement naming it;
so a copy an upload has just stored, and is about to commit, is never taken.

Ids are compared, not (node, id) pairs: the same node has other names
(aliases, a re-registered URL), and a collector that matched names could
delete every copy of a chunk it failed to recognise. The price: a stale
copy of a still-referenced id (on a node that came back after its copies
were rebuilt elsewhere) is kept, not collected.

A video left ``uploading`` with no new chunk for ``UPLOAD_EXPIRY_SEC`` is
deleted (its chunks go with it, and any strays become orphans).
"""

from __future__ import annotations

import logging
import re

import trio

from protocol.api import CHUNK_ID_RE, Manifest
from protocol.errors import VStackError
from vstack.node_urls import normalize_url
from vstack.reconcile import copies_of

from .state import Manager, Snapshot

__all__ = ["collect_orphans", "expire_uploads", "referenced"]

log = logging.getLogger("vstack.redundancy")

#: A shard's stored id: its chunk's id and ``-s<index>`` (protocol.api.shard_id).
_SHARD = re.compile(r"^(.+)-s(\d+)$")


def referenced(manifests: list[Manifest]) -> set[str]:
    """Every stored id a committed placement names (on whichever node)."""
    return {c.stored_id for m in manifests for chunk in m.chunks for c in copies_of(chunk)}


async def collect_orphans(mgr: Manager, snap: Snapshot) -> None:
    refs = referenced(snap.manifests)
    placed = {(normalize_url(c.node_url), c.stored_id)
              for m in snap.manifests for chunk in m.chunks for c in copies_of(chunk)}
    now_orphans: list[tuple[str, str]] = []
    listed: list[tuple[str, str]] = []
    missing: set[tuple[str, str]] = set()
    sums: dict[tuple[str, str], str] = {}
    for node in snap.nodes:
        if node.status != "healthy":
            continue
        url = normalize_url(node.node_url)
        try:
            held = await _inventory(mgr, url)
        except VStackError as exc:
            log.info("could not list %s: %s", url, exc)
            continue
        sums |= {(url, sid): sha for sid, sha in held.items()}
        listed += [(url, sid) for sid in held]
        now_orphans += [(url, sid) for sid in held if sid not in refs]
        have = set(held)
        missing |= {(u, sid) for u, sid in placed if u == url and sid not in have}
    mgr.missing = missing & mgr.missing_before  # gone at two listings in a row
    mgr.missing_before = missing
    for url, stored_id in mgr.orphans.observe(now_orphans, trio.current_time(), scope=listed):
        if await _still_orphan(mgr, stored_id):
            await _delete(mgr, url, stored_id, sums[(url, stored_id)])
        mgr.orphans.forget((url, stored_id))


async def _delete(mgr: Manager, url: str, stored_id: str, sha: str) -> None:
    """Delete an orphan, keeping its bytes until a last check after the delete: a commit
    that named it between the check and the delete (a writer that stored the same
    bytes again, which a node answers "already there") gets it back at once."""
    try:
        data = await mgr.pool.get(url, stored_id, sha)
    except VStackError as exc:  # gone already, or corrupt: nothing worth keeping
        log.info("orphan %s on %s unreadable (%s): deleting it", stored_id, url, exc)
        data = None
    if not await mgr.pool.delete(url, stored_id):
        return
    if data is not None and not await _still_orphan(mgr, stored_id):
        log.warning("%s on %s was committed while it was deleted: stored again", stored_id, url)
        await mgr.pool.put(url, stored_id, data, sha)
        return
    mgr.stats.orphans_deleted += 1
    log.info("deleted orphan %s from %s", stored_id, url)


async def _inventory(mgr: Manager, url: str) -> dict[str, str]:
    """Every id the node at ``url`` holds, and its SHA-256."""
    held: dict[str, str] = {}
    cursor: int | None = 0
    while cursor is not None:
        page, cursor = await mgr.pool.list_page(url, cursor)
        held |= dict(page)
    return held


async def _still_orphan(mgr: Manager, stored_id: str) -> bool:
    """A fresh quorum read of the chunk ``stored_id`` belongs to: does its placement
    (if its video is not deleted) name it? Any doubt keeps the copy."""
    if not CHUNK_ID_RE.match(stored_id):
        return False
    shard = _SHARD.match(stored_id)
    for chunk in dict.fromkeys([stored_id, shard.group(1) if shard else stored_id]):
        try:
            found = await mgr.metadata.stored_ids(chunk)
        except VStackError as exc:
            log.info("not deleting %s: its chunk's state is unknown (%s)", stored_id, exc)
            return False
        if found is not None and found[1] != "deleted" and stored_id in found[2]:
            return False
    return True


async def expire_uploads(mgr: Manager, snap: Snapshot) -> None:
    """Delete videos left ``uploading`` with no progress for ``UPLOAD_EXPIRY_SEC``."""
    uploading = [(m.video_id, len(m.chunks)) for m in snap.manifests if m.status == "uploading"]
    for video_id, chunks in mgr.stalled.observe(uploading, trio.current_time()):
        try:
            now = await mgr.metadata.manifest(video_id, linearizable=True)
            if now is None or now.status != "uploading" or len(now.chunks) != chunks:
                mgr.stalled.forget((video_id, chunks))  # it moved on meanwhile
                continue
            await mgr.metadata.delete_video(video_id)
        except VStackError as exc:
            log.warning("could not expire stalled upload %s: %s", video_id, exc)
            continue
        mgr.stats.uploads_expired += 1
        log.warning("upload of video %s made no progress for %.0f s: deleted", video_id,
                    mgr.settings.upload_expiry)
