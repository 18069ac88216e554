"""The HLS gateway: any player (ffplay, VLC, mpv, Safari, hls.js) plays any stored video.

A stored video is already what HLS wants: MPEG-TS chunks cut at keyframes
with continuous timestamps. ``GET /hls/{id}.m3u8`` lists them as a VOD media
playlist with each chunk's real duration (:func:`playlist`); ``GET
/hls/{id}/{seq}.ts`` is one chunk, fetched by the smart client (scored
nodes, hedging, failover, SHA-256 checked; 3 of 5 shards decoded for an
erasure-coded chunk). A player reads segments in order, so each segment
request also prefetches the next :data:`PREFETCH` into a cache bounded in
bytes (LRU), and the player's next request is served from memory.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Final

import trio

from protocol.api import Manifest

from .client import SmartClient, node_urls
from .fetcher import FetchFailed

__all__ = ["HlsGateway", "playlist"]

log = logging.getLogger("vstack.client.hls")

#: Segments fetched ahead of the one a player asked for.
PREFETCH: Final = 2
#: How long a manifest is reused before it is read again (placements move).
MANIFEST_TTL: Final = 10.0


def playlist(manifest: Manifest, default_duration: float = 10.0) -> str:
    """A VOD media playlist (RFC 8216) of the video's chunks, relative segment URLs."""
    durations = [c.duration_sec if c.duration_sec and c.duration_sec > 0 else default_duration
                 for c in manifest.chunks]
    target = max(1, math.ceil(max(durations, default=default_duration)))
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for chunk, duration in zip(manifest.chunks, durations, strict=True):
        lines += [f"#EXTINF:{duration:.3f},", f"{manifest.video_id}/{chunk.sequence_num}.ts"]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(eq=False)
class _Pending:
    """A segment fetch on its way, and its outcome for whoever waits on it."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: str = ""


class HlsGateway:
    def __init__(self, client: SmartClient, nursery: trio.Nursery, *,
                 cache_bytes: int = 256 * 1024 * 1024) -> None:
        self.client = client
        self.nursery = nursery
        self.cache_bytes = cache_bytes
        self._cache: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._cached = 0
        self._inflight: dict[tuple[str, int], _Pending] = {}
        self._manifests: dict[str, tuple[float, Manifest]] = {}
        self.served = 0
        self.cache_hits = 0

    async def manifest(self, video_id: str) -> Manifest:
        now = trio.current_time()
        hit = self._manifests.get(video_id)
        if hit is not None and now - hit[0] < MANIFEST_TTL:
            return hit[1]
        manifest = await self.client.manifest(video_id)
        self._manifests[video_id] = (now, manifest)
        if len(self._manifests) > 256:
            self._manifests.pop(next(iter(self._manifests)))
        self.client.book.add(u for c in manifest.chunks for u in node_urls(c))
        return manifest

    async def segment(self, video_id: str, seq: int) -> bytes:
        """Chunk ``seq`` of the video, verified; the next ones start on their way.

        Raises:
            FetchFailed: no such video or segment (404), or no copy could be had.
        """
        manifest = await self.manifest(video_id)
        if not 0 <= seq < len(manifest.chunks):
            raise FetchFailed(f"video {video_id} has no segment {seq}", 404)
        for ahead in range(seq + 1, min(seq + 1 + PREFETCH, len(manifest.chunks))):
            if (video_id, ahead) not in self._cache and (video_id, ahead) not in self._inflight:
                self.nursery.start_soon(self._prefetch, manifest, ahead)
        self.served += 1
        return await self._get(manifest, seq)

    async def _get(self, manifest: Manifest, seq: int, *, prefetch: bool = False) -> bytes:
        """The segment from the cache, or from the fetch already on its way (its
        result handed to every waiter, cached or not), or fetched here."""
        key = (manifest.video_id, seq)
        data = self._cache.get(key)
        if data is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return data
        pending = self._inflight.get(key)
        if pending is not None:
            await pending.done.wait()
            if pending.data is not None:
                self.cache_hits += 1
                return pending.data
            if prefetch:
                raise FetchFailed(f"segment {seq}: {pending.error}")
            # The fetch waited on failed (a prefetch, say): try once more, here.
            return await self._get(manifest, seq)
        pending = self._inflight[key] = _Pending()
        try:
            # A prefetch is not urgent: a player is not waiting on it yet.
            data = await self.client.fetcher.fetch(manifest.chunks[seq],
                                                   urgent=lambda: not prefetch)
        except FetchFailed as exc:
            pending.error = str(exc)
            self._manifests.pop(manifest.video_id, None)  # maybe placements moved: re-read
            raise
        finally:
            if self._inflight.get(key) is pending:
                del self._inflight[key]
            pending.done.set()
        pending.data = data
        self._store(key, data)
        return data

    async def _prefetch(self, manifest: Manifest, seq: int) -> None:
        try:
            await self._get(manifest, seq, prefetch=True)
        except FetchFailed as exc:
            log.info("prefetch of %s/%d failed: %s", manifest.video_id, seq, exc)
        except Exception:  # a bug here must not end the service
            log.exception("prefetch of %s/%d failed", manifest.video_id, seq)

    def _store(self, key: tuple[str, int], data: bytes) -> None:
        if len(data) > self.cache_bytes or key in self._cache:
            return
        self._cache[key] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)
