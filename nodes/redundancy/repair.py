"""Self-repair: bring chunks that lost copies back to full redundancy.

A node down longer than ``REPAIR_GRACE_SEC`` is lost; every chunk with a
copy there (or committed short of copies) is rebuilt on other nodes, the
riskiest first (:func:`vstack.reconcile.plan_repairs`): a replicated chunk
is copied from a surviving replica, an erasure-coded one is decoded from 3
surviving shards and its missing shards re-encoded. The new placement is
committed through the metadata service (which checks every copy) before it
counts; the lost node's copies, if it ever comes back, are then referenced
by nothing and the garbage collector deletes them.
"""

from __future__ import annotations

import dataclasses
import logging

import trio

from protocol.errors import VStackError
from vstack.reconcile import Repair
from vstack.redundancy import ERASURE_CODING, REPLICATION, TOTAL_SHARDS

from .copies import placement, read_chunk, write_replicas, write_shards
from .state import Manager, Snapshot

__all__ = ["repair_chunk", "run_repairs"]

log = logging.getLogger("vstack.redundancy")

#: Chunks repaired at once.
PARALLEL = 4


async def run_repairs(mgr: Manager, snap: Snapshot, plan: list[Repair], *, limit: int,
                      parallel: int = PARALLEL) -> None:
    """Repair up to ``limit`` chunks of ``plan``, ``parallel`` at a time, started in its order
    (riskiest first); the rate limiter bounds the bytes they move together."""
    slots = trio.Semaphore(parallel)

    async def one(repair: Repair) -> None:
        key = f"repair:{repair.chunk.chunk_id}"
        try:
            await repair_chunk(mgr, snap, repair)
        except VStackError as exc:
            mgr.failed(key)
            mgr.stats.repair_failures += 1
            log.warning("repair of %s failed: %s (retried later)", repair.chunk.chunk_id, exc)
        else:
            mgr.succeeded(key)
        finally:
            slots.release()

    todo = [r for r in plan if not mgr.deferred(f"repair:{r.chunk.chunk_id}")][:limit]
    async with trio.open_nursery() as nursery:
        for repair in todo:
            await slots.acquire()
            nursery.start_soon(one, repair)


async def repair_chunk(mgr: Manager, snap: Snapshot, repair: Repair) -> None:
    chunk = repair.chunk
    data = await read_chunk(mgr, chunk, repair.surviving)
    if chunk.fragments:
        have = {c.index for c in repair.surviving}
        missing = [i for i in range(TOTAL_SHARDS) if i not in have]
        held = [dataclasses.replace(c, node_url=snap.writable_url(c.node_url))
                for c in repair.surviving]
        new = await write_shards(mgr, chunk, data, missing, snap.writable, holding=held)
        alive = {(c.node_url, c.stored_id) for c in repair.surviving}
        kept = [f for f in chunk.fragments if (f.node_url, f.fragment_id) in alive]
        commit = placement(repair.video_id, chunk, mode=ERASURE_CODING, fragments=[*kept, *new])
        made = len(new)
    else:
        holders = [c.node_url for c in repair.surviving]
        new_urls = await write_replicas(mgr, chunk, data, repair.missing, snap.writable,
                                        holding=[snap.writable_url(u) for u in holders])
        commit = placement(repair.video_id, chunk, mode=REPLICATION,
                           node_urls=[*holders, *new_urls])
        made = len(new_urls)
    if not made:
        raise VStackError(f"no node could take a new copy of {chunk.chunk_id}")
    result = await mgr.metadata.commit_chunk(chunk.chunk_id, commit)
    if not result.success:
        raise VStackError(f"the metadata service refused the repaired placement of "
                          f"{chunk.chunk_id}: {result.message}")
    mgr.stats.repairs += 1
    log.info("repaired %s: %d new %s (%d survived)", chunk.chunk_id, made,
             "shards" if chunk.fragments else "copies", len(repair.surviving))
