"""What every playback of one process shares: connections, node scores, the prober.

:func:`open_smart_client` opens the connection pools, starts the prober
(:func:`.session.monitor_nodes`) and the 1 s history sampler in the client's
nursery, and yields a :class:`SmartClient`; :meth:`SmartClient.playback`
reads a manifest, checks the video can be played, and returns a
:class:`~.session.Playback` ready to run.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from nodes.net.http_client import HttpClient
from nodes.net.metadata_client import MetadataClient
from nodes.net.storage_client import StoragePool, open_storage_pool
from protocol.api import Manifest, ManifestChunk
from protocol.errors import VStackError
from vstack.playback import BufferPolicy
from vstack.scoring import NodeBook

from .chunks import ChunkFetcher
from .fetcher import FetchFailed
from .session import Playback, monitor_nodes, probe_node

__all__ = ["SmartClient", "node_urls", "open_smart_client"]

log = logging.getLogger("vstack.client")

#: History samples kept (one a second: an hour), as the contract says.
HISTORY: int = 3600
#: One viewer (address) counts one view of a video per this many seconds.
VIEW_EVERY_SEC = 600.0
#: Viewers remembered for that.
MAX_VIEWERS = 10_000
#: How long startup waits for a first probe of the first chunk's nodes.
STARTUP_PROBE_SEC = 0.2


class SmartClient:
    def __init__(self, metadata: MetadataClient, pool: StoragePool, policy: BufferPolicy, *,
                 nursery: trio.Nursery, monitoring_interval: float = 3.0) -> None:
        self.metadata = metadata
        self.pool = pool
        self.policy = policy
        self.monitoring_interval = monitoring_interval
        self.book = NodeBook()
        self.fetcher = ChunkFetcher(pool, self.book, policy)
        self.naive_fetcher = ChunkFetcher(pool, self.book, policy, naive=True)
        self.current: Playback | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._nursery = nursery
        self._views: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    async def manifest(self, video_id: str, *, allow_incomplete: bool = False) -> Manifest:
        """The video's manifest, if it can be played.

        Raises:
            FetchFailed: no such video (404); not finished uploading, or with
                chunks missing from its manifest (409).
        """
        manifest = await self.metadata.manifest(video_id)
        if manifest is None:
            raise FetchFailed(f"no video {video_id}", 404)
        if not allow_incomplete:
            if manifest.status != "active":
                raise FetchFailed(f"video {video_id} is {manifest.status}, not playable yet "
                                  "(--allow-incomplete plays what is stored)", 409)
            seqs = [c.sequence_num for c in manifest.chunks]
            if seqs != list(range(manifest.total_chunks)):
                raise FetchFailed(f"video {video_id} is incomplete: {len(seqs)} of "
                                  f"{manifest.total_chunks} chunks stored", 409)
        if not manifest.chunks:
            raise FetchFailed(f"video {video_id} has no chunks", 409)
        return manifest

    async def playback(self, video_id: str, *, speed: float = 1.0, naive: bool = False,
                       allow_incomplete: bool = False, count_view: bool = True,
                       viewer: str | None = None) -> Playback:
        """A playback of ``video_id`` ready to run (startup latency counts from now).

        ``viewer``: who watches (an address), so that one viewer counts one view per
        :data:`VIEW_EVERY_SEC`; ``None``: this process's own user, always counted.
        """
        opened = trio.current_time()
        manifest = await self.manifest(video_id, allow_incomplete=allow_incomplete)
        for chunk in manifest.chunks:
            self.book.add(node_urls(chunk))
        if not naive:
            await self.probe_now(node_urls(manifest.chunks[0]))
        play = Playback(manifest, self.naive_fetcher if naive else self.fetcher, self.policy,
                        speed=speed, opened_at=opened,
                        refresh=lambda: self.metadata.manifest(video_id))
        self.current = play
        if count_view:
            self.view(video_id, viewer)
        return play

    def view(self, video_id: str, viewer: str | None = None) -> None:
        """Count one view (in the background: playback does not wait on it), at most
        one per viewer and video every :data:`VIEW_EVERY_SEC`."""
        now = trio.current_time()
        if viewer is not None:
            key = (viewer, video_id)
            last = self._views.get(key)
            if last is not None and now - last < VIEW_EVERY_SEC:
                return
            self._views[key] = now
            self._views.move_to_end(key)
            while len(self._views) > MAX_VIEWERS:
                self._views.popitem(last=False)
        self._nursery.start_soon(self.count_view, video_id)

    async def probe_now(self, urls: list[str]) -> None:
        """Ping ``urls`` at once (at most :data:`STARTUP_PROBE_SEC`), for a first choice."""
        with trio.move_on_after(STARTUP_PROBE_SEC):
            async with trio.open_nursery() as nursery:
                for url in urls:
                    nursery.start_soon(probe_node, self.pool, self.book, url)

    async def count_view(self, video_id: str) -> None:
        """A playback counts one view (best effort: playback does not wait on it)."""
        try:
            with trio.move_on_after(2):
                await self.metadata.call("POST", f"/video/{video_id}/view")
        except VStackError as exc:
            log.info("view of %s not counted: %s", video_id, exc)

    def sample(self) -> dict[str, Any]:
        """One history sample (the contract's ``/api/history`` entries)."""
        play = self.current
        now = trio.current_time()
        return {
            "timestamp": time.time(),
            "buffer_level": round(play.buffer.level_sec(now), 3) if play else 0.0,
            "buffer_health": round(play.buffer.health_percent(now), 1) if play else 0.0,
            "download_rate": round(sum(s.throughput_last or 0.0 for s in self.book.nodes.values()
                                       if s.in_flight) * 8 / 1e6, 3),
            "active_downloads": sum(s.in_flight for s in self.book.nodes.values()),
            "node_scores": self.book.scores(now),
        }

    def status(self) -> dict[str, Any]:
        """The contract's status object."""
        play = self.current
        now = trio.current_time()
        fetcher = self.naive_fetcher if play is not None and play.fetcher.naive else self.fetcher
        out: dict[str, Any] = {
            "is_initialized": True,
            "video_id": play.video_id if play else None,
            "playing": bool(play and play.buffer.started and not play.finished),
            "finished": bool(play and play.finished),
            "error": play.error if play else None,
            "startup_latency": None if play is None or play.startup_latency is None
            else round(play.startup_latency, 4),
            "buffer": play.buffer_json() if play else None,
            "buffer_stats": play.stats() if play else None,
            "scheduler_stats": fetcher.stats.to_json(self.book),
            "network_stats": [s.to_json(now) for _, s in sorted(self.book.nodes.items())],
            "node_scores": self.book.scores(now),
        }
        if play is not None and play.buffer.started_at is not None:
            out["playback_duration"] = round(now - play.buffer.started_at, 3)
        return out

    async def _sample_forever(self) -> None:
        while True:
            self.history.append(self.sample())
            await trio.sleep(1)


def node_urls(chunk: ManifestChunk) -> list[str]:
    """The nodes holding a copy or a shard of ``chunk``."""
    if chunk.fragments:
        return [f.node_url for f in chunk.fragments]
    return list(chunk.replicas)


@asynccontextmanager
async def open_smart_client(metadata_urls: tuple[str, ...], policy: BufferPolicy, *,
                            headers: list[tuple[str, str]] | None = None,
                            token: bytes | None = None, binary: bool = True,
                            monitoring_interval: float = 3.0) -> AsyncIterator[SmartClient]:
    """A :class:`SmartClient`, its prober and sampler running until the block ends.

    ``headers``: sent on every HTTP call (a bearer token where reads are
    closed); ``token``: presented on binary connections.
    """
    async with HttpClient(headers=headers or [], max_idle_per_host=8) as http, \
            open_storage_pool(http, secret=token, binary=binary) as pool, \
            trio.open_nursery() as nursery:
        metadata = MetadataClient(metadata_urls, http=http)
        client = SmartClient(metadata, pool, policy, nursery=nursery,
                             monitoring_interval=monitoring_interval)
        nursery.start_soon(monitor_nodes, pool, client.book, lambda: list(client.book.nodes),
                           monitoring_interval)
        nursery.start_soon(client._sample_forever)
        failure: Exception | None = None
        try:
            yield client
        except Exception as exc:  # raised below, outside the nurseries: no exception group
            failure = exc
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
