"""Placing one chunk: store its copies, replace nodes that fail, commit, re-place lost copies.

Theory of operation. A :class:`Placer` serves one upload: it holds the
healthy nodes as the metadata service listed them when processing began,
and the :class:`NodeTracker` every upload shares. :meth:`Placer.place`
takes one :class:`Chunk` through three steps, at most three times:

1. *store*: write the chunk to the best nodes :func:`vstack.placement.choose_nodes`
   offers (fewest writes in flight, emptiest disk), in parallel, until
   ``replicas`` nodes hold it. A node that fails or times out is banned for
   :data:`BAN_SECONDS` (no upload picks it meanwhile) and another one is
   tried; a node is tried at most once per chunk.
2. *commit*: once at least :func:`vstack.placement.required_copies` nodes
   acknowledged the fsynced write, the chunk is committed through the
   metadata service, which checks every copy.
3. *re-place*: if the metadata service finds a copy missing (a node died
   after acknowledging), the placer asks each holder which copies it lost,
   drops those nodes and goes back to step 1.

The URLs of the nodes holding a copy are kept in the caller's ``holders``
list as they are acknowledged, so whoever cleans up after a failure knows
every copy to delete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Final

import trio

from nodes.net.errors import deadline
from nodes.net.metadata_client import MetadataClient
from nodes.net.storage_client import StoragePool
from protocol.api import ChunkCommit, Fragment, chunk_id, shard_id
from protocol.errors import VStackError
from vstack import erasure
from vstack.placement import (
    NodeInfo,
    PlacementError,
    choose_nodes,
    choose_shard_nodes,
    required_copies,
)

from .errors import UploadFailed

__all__ = ["BAN_SECONDS", "Chunk", "NodeTracker", "Placer", "ShardPlacer", "healthy_nodes",
           "put_seconds"]

log = logging.getLogger("vstack.uploader")

#: How long a node that failed a write is not chosen again.
BAN_SECONDS: Final = 30.0
#: How long one node may take to store one small chunk (connect, send, fsync, answer).
PUT_SECONDS: Final = 10.0
#: The slowest a node may take the bytes of large ones (bytes per second, for
#: all the writes in flight to it): past that it is treated as failed and another
#: node takes the copy, so a node that went silent (a cut link drops packets: no
#: reset ever comes) costs an upload seconds, not a minute per copy.
PUT_MIN_RATE: Final = 256 * 1024


def put_seconds(size: int, in_flight: int = 1) -> float:
    """The deadline for storing ``size`` bytes on one node that is taking
    ``in_flight`` writes of about that size at once (this one included)."""
    return PUT_SECONDS + size * max(1, in_flight) / PUT_MIN_RATE
#: Store-and-commit rounds per chunk before the upload gives up.
ROUNDS: Final = 3


class NodeTracker:
    """What every upload knows about the nodes: recent failures and writes in flight."""

    def __init__(self, ban_seconds: float = BAN_SECONDS) -> None:
        self.ban_seconds = ban_seconds
        self._ban_until: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}

    def ban(self, url: str) -> None:
        self._ban_until[url] = time.monotonic() + self.ban_seconds

    def banned(self) -> set[str]:
        """Nodes that failed a write in the last ``ban_seconds``."""
        now = time.monotonic()
        self._ban_until = {u: t for u, t in self._ban_until.items() if t > now}
        return set(self._ban_until)

    @property
    def load(self) -> Mapping[str, int]:
        """Chunk writes in flight, per node URL."""
        return self._in_flight

    @contextmanager
    def writing(self, url: str) -> Iterator[None]:
        """Count a write to ``url`` as in flight while the block runs."""
        self._in_flight[url] = self._in_flight.get(url, 0) + 1
        try:
            yield
        finally:
            self._in_flight[url] -= 1


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """One chunk of a video, ready to be stored."""

    video_id: str
    seq: int
    data: bytes
    sha256: str  # lowercase hex
    duration: float
    start: float  # seconds from the start of the video

    @property
    def id(self) -> str:
        return chunk_id(self.video_id, self.seq)

    def commit(self, holders: list[str]) -> ChunkCommit:
        return ChunkCommit(node_urls=tuple(holders), checksum=self.sha256,
                           size_bytes=len(self.data), video_id=self.video_id,
                           sequence_num=self.seq, redundancy_mode="replication",
                           duration_sec=round(self.duration, 3), start_sec=round(self.start, 3))


@dataclass
class _Round:
    """The bookkeeping of placing one chunk."""

    chunk: Chunk
    holders: list[str]  # nodes that acknowledged a copy (the caller's list)
    tried: set[str]  # nodes not to try again for this chunk
    banned: set[str] = field(default_factory=set)  # failed lately: tried only as a last resort
    errors: list[str] = field(default_factory=list)

    def failed(self, url: str, why: str, *, name: str | None = None) -> None:
        self.tried.add(url)
        self.errors.append(f"{name or url}: {why}")

    def reasons(self) -> str:
        return "; ".join(self.errors) or "no nodes left"


async def healthy_nodes(metadata: MetadataClient) -> list[NodeInfo]:
    """The nodes the metadata service lists as healthy.

    Raises:
        UploadFailed: there are none.
        ProtocolError: the metadata service could not tell.
    """
    nodes = [NodeInfo(url=r.node_url, node_id=r.node_id, disk_usage_percent=r.disk_usage_percent)
             for r in await metadata.healthy_nodes()]
    if not nodes:
        raise UploadFailed("no healthy storage nodes are registered")
    return nodes


class Placer:
    """Places the chunks of one upload on ``nodes``, ``replicas`` copies each."""

    def __init__(self, *, pool: StoragePool, metadata: MetadataClient, nodes: list[NodeInfo],
                 replicas: int, tracker: NodeTracker) -> None:
        self.pool = pool
        self.metadata = metadata
        self.nodes = nodes
        self.replicas = replicas
        self.tracker = tracker

    async def place(self, chunk: Chunk, holders: list[str]) -> None:
        """Store and commit ``chunk``; ``holders`` gets every node that holds a copy.

        Raises:
            UploadFailed: too few nodes could store it, or its copies kept
                getting lost.
            ProtocolError: the metadata service refused or could not be reached.
        """
        banned = self.tracker.banned()
        alive = [n for n in self.nodes if n.url not in banned]
        # Banned nodes failed a write lately, maybe for a moment: the copies they
        # would hold are still asked for, and they are tried when no other node is left.
        need = required_copies(self.replicas, max(len(alive), min(2, len(self.nodes))))
        state = _Round(chunk=chunk, holders=holders, tried=set(), banned=banned)
        for _ in range(ROUNDS):
            await self._store_copies(state)
            if len(holders) < need:
                raise UploadFailed(f"chunk {chunk.seq}: only {len(holders)} of {need} copies "
                                   f"could be stored ({state.reasons()})")
            result = await self.metadata.commit_chunk(chunk.id, chunk.commit(holders))
            if result.success:
                return
            await self._drop_lost(state)
        raise UploadFailed(f"chunk {chunk.seq}: the metadata service could not confirm its "
                           f"copies ({state.reasons()})")

    async def _store_copies(self, state: _Round) -> None:
        """Store copies until ``replicas`` nodes hold one or none is left to try."""
        while len(state.holders) < self.replicas:
            exclude = state.tried | set(state.holders)
            picks = choose_nodes(self.nodes, self.replicas - len(state.holders),
                                 load=self.tracker.load, exclude=exclude | state.banned,
                                 turn=state.chunk.seq)
            if not picks:  # the last resort: nodes that failed lately, not for this chunk
                picks = choose_nodes(self.nodes, self.replicas - len(state.holders),
                                     load=self.tracker.load, exclude=exclude,
                                     turn=state.chunk.seq)
            if not picks:
                return
            async with trio.open_nursery() as nursery:
                for node in picks:
                    state.tried.add(node.url)
                    nursery.start_soon(self._put, state, node)

    async def _put(self, state: _Round, node: NodeInfo) -> None:
        """One copy on one node; a failure bans the node and is noted, not raised."""
        chunk = state.chunk
        with self.tracker.writing(node.url):
            try:
                with deadline(put_seconds(len(chunk.data), self.tracker.load.get(node.url, 1)),
                              f"storing {chunk.id} on {node.node_id}"):
                    await self.pool.put(node.url, chunk.id, chunk.data, chunk.sha256)
            except VStackError as exc:
                self.tracker.ban(node.url)
                state.failed(node.url, str(exc), name=node.node_id)
                log.warning("chunk %s: %s failed (%s); trying another node", chunk.id,
                            node.node_id, exc)
                return
        state.holders.append(node.url)

    async def _drop_lost(self, state: _Round) -> None:
        """Ask each holder whether it still has the chunk; forget (and ban) those that lost it."""
        chunk = state.chunk
        for url in list(state.holders):
            if not await self.pool.holds(url, chunk.id, chunk.sha256):
                state.holders.remove(url)
                self.tracker.ban(url)
                state.failed(url, "lost the chunk after storing it")


class ShardPlacer(Placer):
    """Places the chunks of a cold upload as erasure-coded shards (3 data + 2 parity).

    Each chunk is encoded in a thread (zfec releases the GIL), its 5 shards
    spread by :func:`vstack.placement.choose_shard_nodes` (distinct nodes when
    there are 5, else so that losing any one node leaves 3), stored in
    parallel, a failed shard moved to another node, and the shards committed
    together with each one's SHA-256 (the metadata service checks them). When the
    nodes that can take writes are too few to spread the shards so that losing
    any one leaves 3, the chunk is stored as replicas instead (the upload does
    not fail for a node that is down for a moment).
    """

    async def place(self, chunk: Chunk, holders: list[str]) -> None:
        shards = {s.index: s for s in await trio.to_thread.run_sync(erasure.encode, chunk.data)}
        stored: dict[int, Fragment] = {}
        state = _Round(chunk=chunk, holders=holders, tried=set(), banned=self.tracker.banned())
        for _ in range(ROUNDS):
            alive = [n for n in self.nodes if n.url not in state.tried | state.banned]
            if len(alive) < 3:  # too few: nodes that failed lately may take a shard again
                alive = [n for n in self.nodes if n.url not in state.tried]
            missing = [i for i in shards if i not in stored]
            if not missing:
                break
            try:
                layout = choose_shard_nodes(
                    alive, missing, held={i: f.node_url for i, f in stored.items()},
                    turn=chunk.seq)
            except PlacementError as exc:
                # Too few nodes to spread 5 shards safely right now (some down, some
                # banned after a failure): store this chunk as replicas instead; the
                # redundancy manager codes it later. Shards already stored are
                # orphans its collector removes.
                log.warning("chunk %s: %s; storing it as replicas instead (%s)", chunk.id, exc,
                            state.reasons())
                await super().place(chunk, holders)
                return
            async with trio.open_nursery() as nursery:
                for index, node in layout.items():
                    nursery.start_soon(self._put_shard, state, node, shards[index], stored)
        if len(stored) < len(shards):
            raise UploadFailed(f"chunk {chunk.seq}: only {len(stored)} of {len(shards)} shards "
                               f"could be stored ({state.reasons()})")
        commit = replace(chunk.commit([]), redundancy_mode="erasure_coding",
                         node_urls=tuple(dict.fromkeys(f.node_url for f in stored.values())),
                         fragments=tuple(stored[i] for i in sorted(stored)))
        result = await self.metadata.commit_chunk(chunk.id, commit)
        if not result.success:
            raise UploadFailed(f"chunk {chunk.seq}: the metadata service could not confirm its "
                               f"shards ({result.message})")

    async def _put_shard(self, state: _Round, node: NodeInfo, shard: erasure.Shard,
                         stored: dict[int, Fragment]) -> None:
        sid = shard_id(state.chunk.id, shard.index)
        with self.tracker.writing(node.url):
            try:
                with deadline(put_seconds(len(shard.data), self.tracker.load.get(node.url, 1)),
                              f"storing {sid} on {node.node_id}"):
                    await self.pool.put(node.url, sid, shard.data, shard.sha256)
            except VStackError as exc:
                self.tracker.ban(node.url)
                state.failed(node.url, str(exc), name=node.node_id)
                log.warning("shard %s: %s failed (%s); trying another node", sid, node.node_id,
                            exc)
                return
        state.holders.append(node.url)
        stored[shard.index] = Fragment(fragment_id=sid, fragment_index=shard.index,
                                       node_url=node.url, size_bytes=len(shard.data),
                                       checksum=shard.sha256)
