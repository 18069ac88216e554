"""Garbage collection: copies no committed placement references, and uploads that stalled.

Every pass lists what each healthy node holds and compares it with every
committed placement (of every video that is not deleted, uploads in
progress included). A copy (a node and a stored id) that no placement names
*on that node* is an orphan: a failed or abandoned upload, a half-finished
migration, a client that stored and never committed, or the stale copy of a
node that came back after its copies were rebuilt elsewhere. Nodes are
compared by identity (:meth:`.state.Snapshot.identity`: the id of the node a
URL, an alias or an id names), never by URL strings. A stored id that some
placement names on a node no registered node answers to is kept everywhere:
which node that is cannot be told.

An orphan is deleted only once it has been one for ``ORPHAN_GRACE_SEC``,
and then through the chunk's register (:mod:`vstack.registers`, "the
garbage collector's marks"): the collector first decides a *mark* on the
copy (refused if the placement names it there and its video is not
deleted), deletes it while the mark is open, then finishes the mark. A
commit that names the copy and whose check of the nodes may have overlapped
the delete is refused (409), so its writer stores the copy again and
retries: a committed copy is never deleted, however slow either side is. The
delete is sent within ``DELETE_WINDOW`` of the mark; if its outcome is not
known (a timeout) the mark is left open until it expires (``MARK_TTL_NS``,
five minutes), never finished early. A copy whose id is not a chunk id is
never deleted.

A video left ``uploading`` with no new chunk for ``UPLOAD_EXPIRY_SEC`` is
deleted (its chunks go with it, and any strays become orphans).
"""

from __future__ import annotations

import logging
import re

import trio

from protocol.api import CHUNK_ID_RE, Manifest
from protocol.errors import VStackError
from vstack.reconcile import copies_of

from .state import Manager, Snapshot

__all__ = ["DELETE_WINDOW", "collect_orphans", "expire_uploads", "referenced"]

log = logging.getLogger("vstack.redundancy")

#: A shard's stored id: its chunk's id and ``-s<index>`` (protocol.api.shard_id).
_SHARD = re.compile(r"^(.+)-s(\d+)$")

#: Seconds after its mark within which a delete is sent and answered (far below the
#: mark's lifetime, vstack.registers.MARK_TTL_NS).
DELETE_WINDOW = 30.0


def referenced(manifests: list[Manifest]) -> set[str]:
    """Every stored id a committed placement names (on whichever node)."""
    return {c.stored_id for m in manifests for chunk in m.chunks for c in copies_of(chunk)}


async def collect_orphans(mgr: Manager, snap: Snapshot) -> None:
    placed: dict[str, set[str]] = {}  # node id -> the stored ids placements name there
    anywhere: set[str] = set()  # named on a node that cannot be identified: kept
    for m in snap.manifests:
        for chunk in m.chunks:
            for c in copies_of(chunk):
                placed.setdefault(snap.identity(c.node_url), set()).add(c.stored_id)
                if not snap.known(c.node_url):
                    anywhere.add(c.stored_id)
    now_orphans: list[tuple[str, str]] = []
    listed: list[tuple[str, str]] = []
    missing: set[tuple[str, str]] = set()
    urls = {n.node_id: n.node_url for n in snap.nodes}
    for node in snap.nodes:
        if node.status != "healthy":
            continue
        try:
            held = await _inventory(mgr, node.node_url)
        except VStackError as exc:
            log.info("could not list %s: %s", node.node_url, exc)
            continue
        here = placed.get(node.node_id, set())
        listed += [(node.node_id, sid) for sid in held]
        now_orphans += [(node.node_id, sid) for sid in held
                        if sid not in here and sid not in anywhere]
        missing |= {(node.node_id, sid) for sid in here if sid not in held}
    mgr.missing = missing & mgr.missing_before  # gone at two listings in a row
    mgr.missing_before = missing
    for node_id, stored_id in mgr.orphans.observe(now_orphans, trio.current_time(),
                                                  scope=listed):
        await _collect(mgr, node_id, urls[node_id], stored_id)
        mgr.orphans.forget((node_id, stored_id))


async def _collect(mgr: Manager, node_id: str, url: str, stored_id: str) -> None:
    """Mark the copy in its chunk's register(s), delete it, finish the marks (see the
    module docstring). Any refusal or doubt keeps the copy."""
    if not CHUNK_ID_RE.match(stored_id):
        return
    shard = _SHARD.match(stored_id)
    marks: list[tuple[str, int]] = []
    finish = True
    try:
        for chunk in dict.fromkeys([stored_id, shard.group(1) if shard else stored_id]):
            number = await mgr.metadata.mark_collecting(chunk, stored_id, node_id)
            if number is None:
                log.info("not deleting %s from %s: it is referenced there", stored_id, url)
                return
            marks.append((chunk, number))
        finish = False  # from here on, the delete may take effect: only a clear answer ends it
        with trio.move_on_after(DELETE_WINDOW):
            deleted = await mgr.pool.delete(url, stored_id)
            finish = True
            if deleted:
                mgr.stats.orphans_deleted += 1
                log.info("deleted orphan %s from %s", stored_id, url)
    except VStackError as exc:
        log.info("orphan %s on %s kept for now: %s", stored_id, url, exc)
    finally:
        if finish:
            await _finish(mgr, node_id, stored_id, marks)


async def _finish(mgr: Manager, node_id: str, stored_id: str,
                  marks: list[tuple[str, int]]) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(DELETE_WINDOW):
        for chunk, number in marks:
            try:
                await mgr.metadata.finish_collecting(chunk, stored_id, node_id, number)
            except VStackError as exc:  # it expires by itself
                log.info("mark of %s on %s left to expire: %s", stored_id, node_id, exc)


async def _inventory(mgr: Manager, url: str) -> dict[str, str]:
    """Every id the node at ``url`` holds, and its SHA-256."""
    held: dict[str, str] = {}
    cursor: int | None = 0
    while cursor is not None:
        page, cursor = await mgr.pool.list_page(url, cursor)
        held |= dict(page)
    return held


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
