"""Background jobs of a storage node, each a task in the node's nursery.

* checkpointer: writes the index checkpoint every ``checkpoint_interval``
  seconds when anything changed, so a restart scans only a short tail;
* compactor: every ``compaction_interval`` seconds (``COMPACTION_INTERVAL_SEC``),
  rewrites sealed superblocks whose garbage share passes
  ``compaction_garbage_ratio`` (see :func:`compact`), online;
* scrubber: re-reads every chunk at ``scrub_rate_bytes`` per second and
  checks its CRC32C, quarantining any that fail, so corruption of data that
  is only ever served zero-copy is still found.

Each runs under :func:`nodes.net.jobs.run_forever`: a failed pass is logged
once and retried with back-off; it never stops the node. (Registration and
heartbeats are in :mod:`.registrar`.)
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import trio

from nodes.net.jobs import run_forever
from protocol.errors import ProtocolError
from vstack.store import Busy, Location, PendingWrite

from .node import StorageNode

__all__ = ["compact", "compact_once", "scrub_pass", "start_all"]

log = logging.getLogger("vstack.storage.jobs")

#: How long the checkpoint and unlink that end a compaction may hold off a shutdown.
RETIRE_SECONDS: Final = 60.0


def start_all(nursery: trio.Nursery, node: StorageNode) -> None:
    """Start the checkpointer, the compactor and (if enabled) the scrubber."""
    s = node.settings

    async def checkpoint_step() -> None:
        if node.changes:
            await node.checkpoint()

    async def compact_step() -> None:
        await compact_once(node)

    async def scrub_step() -> None:
        await scrub_pass(node, rate=s.scrub_rate_bytes)

    nursery.start_soon(partial(run_forever, "index checkpoint", checkpoint_step, log=log,
                               every=s.checkpoint_interval, initial_delay=s.checkpoint_interval))
    nursery.start_soon(partial(run_forever, "compaction", compact_step, log=log,
                               every=s.compaction_interval, initial_delay=s.compaction_interval))
    if s.scrub_rate_bytes > 0:
        nursery.start_soon(partial(run_forever, "scrub pass", scrub_step, log=log,
                                   every=s.scrub_pause))


# -- compaction -------------------------------------------------------------------


async def compact_once(node: StorageNode) -> list[int]:
    """Compact every superblock past the garbage threshold; returns their ids."""
    done = []
    for sb_id in node.store.compaction_candidates(node.settings.compaction_garbage_ratio):
        await compact(node, sb_id)
        done.append(sb_id)
    return done


async def compact(node: StorageNode, sb_id: int) -> None:
    """Move the live records of superblock ``sb_id`` forward, then delete it.

    Reads keep working throughout: a chunk is served from the old place until
    its copy is durable and published, and the old file stays open until the
    last reader of it is done. A crash at any point leaves either the old
    record, the copy, or both (same sequence number: either is right). Once
    the superblock is retired, the checkpoint that records it and the unlink
    run shielded from cancellation (for at most ``RETIRE_SECONDS``); a file
    left behind anyway is removed by recovery before it scans anything
    (:mod:`vstack.recovery`), so its deleted chunks never come back.
    """
    store = node.store
    copied = dropped = 0
    for loc in store.live_records(sb_id):
        if loc.quarantined:
            store.drop(loc)
            dropped += 1
            continue
        if await _copy_forward(node, loc):
            copied += 1
    fd, size = store.superblock_fd(sb_id)
    tombstones = await trio.to_thread.run_sync(store.tombstones_to_carry, fd, sb_id, size)
    for rec in tombstones:
        pw = store.reserve_tombstone_copy(rec)
        await node.commit(pw)
        _raise_if_failed(pw)
    path = store.retire(sb_id)
    # Retired: the index no longer points into sb_id. The checkpoint records that
    # (recovery then removes the file, whatever happens to the unlink), and the
    # unlink reclaims the space; a cancellation (SIGTERM) must not split the two.
    with trio.move_on_after(RETIRE_SECONDS, shield=True) as scope:
        await node.checkpoint()
        await trio.to_thread.run_sync(store.unlink, path)
    if scope.cancelled_caught:
        log.warning("superblock %d: retiring took over %.0f s; its file is removed at the "
                    "next start", sb_id, RETIRE_SECONDS)
        return
    log.info("compacted superblock %d: %d chunks moved, %d tombstones kept, %d corrupt dropped",
             sb_id, copied, len(tombstones), dropped)


async def _copy_forward(node: StorageNode, loc: Location) -> bool:
    store = node.store
    while True:
        current = store.lookup(loc.key)
        if current is None or current.sb != loc.sb:
            return False  # deleted or already moved meanwhile
        rec = store.header(current)
        if rec is None:
            return False
        with store.reading(current) as fd:
            data = await trio.to_thread.run_sync(store.read_verified, fd, current)
        if data is None:
            store.quarantine(current, "CRC32C mismatch found by compaction")
            store.drop(current)
            return False
        latest = store.lookup(loc.key)
        if latest is None or (latest.sb, latest.offset, latest.seq) != (
                current.sb, current.offset, current.seq):
            continue  # deleted or rewritten while we read it: a copy now would outlive that
        try:
            pw = store.reserve_copy(rec, data)
        except Busy as busy:
            await busy.pending.waiter.wait()
            continue
        await node.commit(pw)
        _raise_if_failed(pw)
        return True


def _raise_if_failed(pw: PendingWrite) -> None:
    if pw.error is not None:
        raise ProtocolError(f"compaction write failed: {pw.error}", 500)


# -- scrubbing --------------------------------------------------------------------


async def scrub_pass(node: StorageNode, *, rate: int) -> tuple[int, int]:
    """Check every chunk once, at most ``rate`` bytes per second.

    Returns:
        ``(chunks checked, chunks quarantined)``.
    """
    store = node.store
    checked = bad = 0
    row = 0
    while row < store.rows():
        loc = store.location_of_row(row)
        row += 1
        if loc is None or loc.quarantined:
            continue
        try:
            fd = store.acquire(loc)
        except ProtocolError:
            continue  # moved by compaction, which checks what it copies
        try:
            data = await trio.to_thread.run_sync(store.read_verified, fd, loc)
        finally:
            store.release(loc)
        checked += 1
        if data is None:
            store.quarantine(loc, "CRC32C mismatch found by scrubber")
            bad += 1
        else:
            store.mark_verified(loc)
        if rate:
            await trio.sleep(loc.size / rate)
    if checked:
        log.info("scrub pass: %d chunks checked, %d quarantined", checked, bad)
    return checked, bad
