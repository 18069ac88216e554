"""Migration between modes: a video's chunks re-stored as replicas or as shards.

When a video's target mode (:func:`vstack.reconcile.target_mode`: views in
the recent window against the threshold, with hysteresis; an override wins)
differs from how its chunks are stored, each chunk is converted in turn:
read (verified), written in the new form, and the new placement committed
through the metadata service. The old copies are not deleted at once: a
player that read the manifest a moment ago still fetches them, so they are
left to the garbage collector, which removes them once they have been
referenced by nothing for ``ORPHAN_GRACE_SEC``. A crash at any step leaves
the chunk readable (the committed placement is complete before and after)
and any leftovers referenced by nothing, collected the same way.
"""

from __future__ import annotations

import logging

from protocol.api import Manifest, ManifestChunk
from protocol.errors import VStackError
from vstack.reconcile import copies_of
from vstack.redundancy import ERASURE_CODING, REPLICAS, REPLICATION, TOTAL_SHARDS

from .copies import placement, read_chunk, write_replicas, write_shards
from .state import Manager, Snapshot

__all__ = ["convert_chunk", "migrate_video"]

log = logging.getLogger("vstack.redundancy")


async def migrate_video(mgr: Manager, snap: Snapshot, manifest: Manifest, target: str) -> int:
    """Convert every chunk of ``manifest`` not yet in ``target`` mode; returns how many were."""
    converted = 0
    for chunk in manifest.chunks:
        if (ERASURE_CODING if chunk.fragments else REPLICATION) == target:
            continue
        await convert_chunk(mgr, snap, manifest.video_id, chunk, target)
        converted += 1
    if converted:
        mgr.stats.migrations += 1
        log.info("video %s now stored as %s (%d chunks converted)", manifest.video_id, target,
                 converted)
    return converted


async def convert_chunk(mgr: Manager, snap: Snapshot, video_id: str, chunk: ManifestChunk,
                        target: str) -> None:
    """Re-store one chunk in ``target`` mode: write, then commit (the old copies are
    left for the garbage collector).

    Raises:
        VStackError: it could not be read, written in full, or committed (nothing
            old is deleted then).
    """
    old = copies_of(chunk)
    data = await read_chunk(mgr, chunk, [c for c in old if snap.identity(c.node_url) not in snap.lost])
    if target == ERASURE_CODING:
        frags = await write_shards(mgr, chunk, data, range(TOTAL_SHARDS), snap.writable)
        if len(frags) < TOTAL_SHARDS:
            raise VStackError(f"only {len(frags)} shards of {chunk.chunk_id} could be stored")
        commit = placement(video_id, chunk, mode=ERASURE_CODING, fragments=frags)
    else:
        urls = await write_replicas(mgr, chunk, data, REPLICAS, snap.writable)
        if len(urls) < min(REPLICAS, len(snap.writable)):
            raise VStackError(f"only {len(urls)} copies of {chunk.chunk_id} could be stored")
        commit = placement(video_id, chunk, mode=REPLICATION, node_urls=urls)
    result = await mgr.metadata.commit_chunk(chunk.chunk_id, commit)
    if not result.success:
        raise VStackError(f"the new placement of {chunk.chunk_id} was refused: {result.message}")
