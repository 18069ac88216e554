"""Reading a chunk from whatever copies it has, and writing it in either mode.

Every byte read is checked against the SHA-256 its placement records (a
replica's, or each shard's); a copy that fails is skipped, never passed on.
Every write is rate-limited (:class:`~.state.RateLimiter`) and acknowledged
by the node only once it is fsynced; the caller commits the new placement
through the metadata service before anything old is deleted.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence

import trio

from nodes.net.errors import deadline
from protocol.api import ChunkCommit, Fragment, ManifestChunk, shard_id
from protocol.errors import VStackError
from vstack import erasure
from vstack.placement import NodeInfo, choose_nodes, choose_shard_nodes
from vstack.reconcile import Copy
from vstack.redundancy import DATA_SHARDS, TOTAL_SHARDS

from .state import Manager

__all__ = ["CopyFailed", "placement", "read_chunk", "write_replicas", "write_shards"]

log = logging.getLogger("vstack.redundancy")

#: Seconds one node has to send or store one copy.
COPY_SECONDS = 60.0


class CopyFailed(VStackError):
    """Too few copies could be read or written."""


def placement(video_id: str, chunk: ManifestChunk, *, mode: str,
              node_urls: Sequence[str] = (), fragments: Sequence[Fragment] = ()) -> ChunkCommit:
    """The commit of a new placement of ``chunk``: its replicas, or its shards.

    A *replacement*: refused unless the chunk is still committed with these
    bytes, and it keeps its place among the video's chunks (so a pass working
    from an old snapshot never brings back a chunk a newer commit replaced).
    """
    urls = tuple(dict.fromkeys(node_urls or [f.node_url for f in fragments]))
    return ChunkCommit(node_urls=urls, checksum=chunk.checksum, size_bytes=chunk.size_bytes,
                       video_id=video_id, sequence_num=chunk.sequence_num, redundancy_mode=mode,
                       duration_sec=chunk.duration_sec, start_sec=chunk.start_sec,
                       fragments=tuple(sorted(fragments, key=lambda f: f.fragment_index))
                       if fragments else None, replacement=True)


async def read_chunk(mgr: Manager, chunk: ManifestChunk, copies: Sequence[Copy]) -> bytes:
    """The chunk's bytes from ``copies``: one good replica, or any 3 good shards, decoded.

    Raises:
        CopyFailed: no good replica, or fewer than 3 good shards.
    """
    if chunk.fragments:
        return await _read_shards(mgr, chunk, copies)
    for c in copies:
        data = await _get(mgr, c)
        if data is not None:
            await mgr.limiter.take(len(data))
            return data
    raise CopyFailed(f"no good copy of {chunk.chunk_id} could be read")


async def _get(mgr: Manager, c: Copy) -> bytes | None:
    """Copy ``c``'s bytes, checked against its SHA-256; ``None`` (logged) if unusable."""
    try:
        with deadline(COPY_SECONDS, f"reading {c.stored_id} from {c.node_url}"):
            return await mgr.pool.get(c.node_url, c.stored_id, c.checksum)
    except VStackError as exc:
        log.info("copy %s on %s unusable: %s", c.stored_id, c.node_url, exc)
        return None


async def _read_shards(mgr: Manager, chunk: ManifestChunk, copies: Sequence[Copy]) -> bytes:
    """Every surviving shard asked for at once; the first 3 good ones decoded."""
    got: dict[int, bytes] = {}

    async def one(c: Copy, cancel: trio.CancelScope) -> None:
        data = await _get(mgr, c)
        if data is not None and c.index is not None and len(got) < DATA_SHARDS:
            got[c.index] = data
            if len(got) == DATA_SHARDS:
                cancel.cancel()

    async with trio.open_nursery() as nursery:
        seen: set[int] = set()
        for c in copies:
            if c.index is not None and 0 <= c.index < TOTAL_SHARDS and c.index not in seen:
                seen.add(c.index)
                nursery.start_soon(one, c, nursery.cancel_scope)
    if len(got) < DATA_SHARDS:
        raise CopyFailed(f"only {len(got)} good shards of {chunk.chunk_id} could be read")
    await mgr.limiter.take(sum(len(d) for d in got.values()))
    data = await trio.to_thread.run_sync(erasure.decode, got)
    if hashlib.sha256(data).hexdigest() != chunk.checksum:
        raise CopyFailed(f"{chunk.chunk_id} decoded to the wrong bytes")
    return data


async def _put(mgr: Manager, node: NodeInfo, stored_id: str, data: bytes, sha: str,
               done: list[str]) -> None:
    try:
        with deadline(COPY_SECONDS, f"storing {stored_id} on {node.node_id}"):
            await mgr.limiter.take(len(data))
            await mgr.pool.put(node.url, stored_id, data, sha)
    except VStackError as exc:
        log.warning("could not store %s on %s: %s", stored_id, node.node_id, exc)
        return
    mgr.stats.bytes_moved += len(data)
    done.append(node.url)


async def write_replicas(mgr: Manager, chunk: ManifestChunk, data: bytes, count: int,
                         nodes: Sequence[NodeInfo], *, holding: Sequence[str] = ()) -> list[str]:
    """Store ``count`` more full copies on nodes other than ``holding``; returns their URLs."""
    done: list[str] = []
    tried = set(holding)
    while len(done) < count:
        picks = choose_nodes(nodes, count - len(done), exclude=tried | set(done),
                             turn=chunk.sequence_num)
        if not picks:
            break
        async with trio.open_nursery() as nursery:
            for node in picks:
                tried.add(node.url)
                nursery.start_soon(_put, mgr, node, chunk.chunk_id, data, chunk.checksum, done)
    return done


async def write_shards(mgr: Manager, chunk: ManifestChunk, data: bytes, indexes: Sequence[int],
                       nodes: Sequence[NodeInfo], *, holding: Sequence[Copy] = ()
                       ) -> list[Fragment]:
    """Encode ``data`` and store shards ``indexes`` (spread so that losing any one node
    leaves enough, counting the shards ``holding`` already); returns the new fragments."""
    shards = {s.index: s for s in await trio.to_thread.run_sync(
        functools.partial(erasure.encode, data, indices=indexes))}
    layout = choose_shard_nodes(nodes, list(indexes),
                                held={c.index: c.node_url for c in holding if c.index is not None},
                                turn=chunk.sequence_num)
    made: list[Fragment] = []

    async def one(index: int, node: NodeInfo) -> None:
        shard = shards[index]
        done: list[str] = []
        await _put(mgr, node, shard_id(chunk.chunk_id, index), bytes(shard.data), shard.sha256,
                   done)
        if done:
            made.append(Fragment(fragment_id=shard_id(chunk.chunk_id, index),
                                 fragment_index=index, node_url=node.url,
                                 size_bytes=len(shard.data), checksum=shard.sha256))

    async with trio.open_nursery() as nursery:
        for index, node in layout.items():
            nursery.start_soon(one, index, node)
    return sorted(made, key=lambda f: f.fragment_index)
