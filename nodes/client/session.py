"""One playback: the prefetch scheduler and the player, in a nursery of their own.

The scheduler asks :class:`vstack.playback.PlaybackBuffer` which chunks to
fetch (the refill rule) each time something changes (a chunk arrives, a
fetch fails, a chunk starts playing, the level crosses the low-water mark),
and fetches each with :class:`~.chunks.ChunkFetcher` in its own task. The
player takes the chunks in order, hands each to the sink (a file, a pipe, an
HTTP response) and holds it for its real duration divided by the speed
(speed 0: no pacing), counting a rebuffering event when the next chunk is
not there in time. Chunks are held in memory only between their arrival and
their turn: at most the target buffer plus what is in flight.

The prober (:func:`monitor_nodes`) measures every node of the cluster every
``MONITORING_INTERVAL`` for the scores, in the client's own nursery.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import trio

from nodes.net.jobs import run_forever
from nodes.net.storage_client import StoragePool
from protocol.api import Manifest
from protocol.errors import VStackError
from vstack.playback import BufferPolicy, PlaybackBuffer
from vstack.scoring import NodeBook

from .chunks import ChunkFetcher
from .fetcher import FetchFailed

__all__ = ["Playback", "PlaybackError", "monitor_nodes", "probe_node"]

log = logging.getLogger("vstack.client")

Sink = Callable[[bytes], Awaitable[object]]


class PlaybackError(FetchFailed):
    """A playback could not go on: a chunk no copy of which could be fetched."""


#: A chunk whose fetch failed is asked for again after these delays, then given up.
RETRY_AFTER: Final = (1.0, 2.0, 4.0, 8.0)


@dataclass
class _Failure:
    error: PlaybackError
    count: int = 0
    retry_at: float = 0.0
    final: bool = False


class Playback:
    """One video played from its manifest (see the module's docstring)."""

    def __init__(self, manifest: Manifest, fetcher: ChunkFetcher, policy: BufferPolicy, *,
                 speed: float = 1.0, default_duration: float = 10.0,
                 refresh: Callable[[], Awaitable[Manifest | None]] | None = None,
                 opened_at: float | None = None) -> None:
        """``refresh``: reads the manifest again (placements move: repairs, migrations),
        before a chunk that failed is asked for again; ``opened_at``: when the viewer
        asked (startup latency counts from then)."""
        self.manifest = manifest
        self.fetcher = fetcher
        self.policy = policy
        durations = [c.duration_sec if c.duration_sec is not None and c.duration_sec > 0
                     else float(manifest.chunk_duration_sec or default_duration)
                     for c in manifest.chunks]
        self.buffer = PlaybackBuffer(durations, policy, speed=speed)
        self._data: dict[int, bytes] = {}
        self._wake_scheduler = trio.Event()
        self._wake_player = trio.Event()
        self._failed: dict[int, _Failure] = {}
        self._refresh = refresh
        self._opened_at = opened_at
        self.startup_latency: float | None = None
        self.bytes_out = 0
        self.finished = False
        self.error: str | None = None

    @property
    def video_id(self) -> str:
        return self.manifest.video_id

    def memory_bytes(self) -> int:
        return sum(len(d) for d in self._data.values())

    def _poke(self) -> None:
        self._wake_scheduler.set()
        self._wake_player.set()

    async def run(self, sink: Sink) -> int:
        """Play to the end; returns the bytes handed to ``sink``.

        Raises:
            PlaybackError: a chunk could not be fetched from any copy.
            Exception: whatever ``sink`` raised (a broken pipe: the player quit).
        """
        self.buffer.open(self._opened_at if self._opened_at is not None else trio.current_time())
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._schedule, nursery)
            try:
                await self._play(sink)
            except Exception as exc:  # raised below, outside the nursery: no exception group
                failure = exc
            nursery.cancel_scope.cancel()
        self.finished = True
        if failure is not None:
            self.error = str(failure)
            raise failure
        return self.bytes_out

    async def _schedule(self, nursery: trio.Nursery) -> None:
        while not self.buffer.done:
            now = trio.current_time()
            for seq in self.buffer.wanted(now):
                failure = self._failed.get(seq)
                if failure is not None and (failure.final or now < failure.retry_at):
                    continue
                self.buffer.fetch_started(seq)
                nursery.start_soon(self._fetch, seq)
            self._wake_scheduler = trio.Event()
            # Wake on a change, when the level is due to cross the low-water mark, and
            # when a failed chunk may be asked for again.
            level = self.buffer.level_sec(now)
            speed = self.buffer.speed or 1.0
            wait = max(0.01, (level - self.policy.low_water_sec) / speed) \
                if level >= self.policy.low_water_sec else 1.0
            retries = [f.retry_at for f in self._failed.values() if not f.final]
            if retries:
                wait = max(0.01, min(wait, min(retries) - now))
            with trio.move_on_after(wait):
                await self._wake_scheduler.wait()

    async def _fetch(self, seq: int) -> None:
        chunk = self.manifest.chunks[seq]
        try:
            data = await self.fetcher.fetch(chunk, urgent=self._urgent,
                                            best=not self.buffer.started)
        except FetchFailed as exc:
            self.buffer.fetch_ended(seq, None)
            failure = self._failed.get(seq) or _Failure(PlaybackError(str(exc)))
            failure.error = PlaybackError(str(exc))
            failure.count += 1
            if failure.count > len(RETRY_AFTER):
                failure.final = True
            else:
                failure.retry_at = trio.current_time() + RETRY_AFTER[failure.count - 1]
                log.info("chunk %d of %s failed (%s): asking again in %.0f s", seq,
                         self.video_id, exc, RETRY_AFTER[failure.count - 1])
            self._failed[seq] = failure
            await self._reread_manifest()
            self._poke()
            return
        self._failed.pop(seq, None)
        if seq >= self.buffer.next_to_play:
            self._data[seq] = data
        self.buffer.fetch_ended(seq, len(data))
        self._poke()

    async def _reread_manifest(self) -> None:
        """The manifest again, if it still lists the same chunks (placements may have moved)."""
        if self._refresh is None:
            return
        try:
            with trio.move_on_after(5):
                fresh = await self._refresh()
        except VStackError as exc:
            log.info("manifest of %s not read again: %s", self.video_id, exc)
            return
        if fresh is not None and [c.sequence_num for c in fresh.chunks] == \
                [c.sequence_num for c in self.manifest.chunks]:
            self.manifest = fresh

    def _urgent(self) -> bool:
        return self.buffer.low(trio.current_time())

    async def _play(self, sink: Sink) -> None:
        buf = self.buffer
        while not buf.done:
            if not buf.ready():
                buf.waiting(trio.current_time())
                while not buf.ready():
                    failure = self._failed.get(buf.next_to_play)
                    if failure is not None and failure.final:
                        raise failure.error
                    self._wake_player = trio.Event()
                    await self._wake_player.wait()
            now = trio.current_time()
            if self.startup_latency is None and buf.opened_at is not None:
                self.startup_latency = now - buf.opened_at
            seq = buf.next_to_play
            data = self._data.pop(seq)
            until = buf.play(now)
            self._poke()
            await sink(data)
            self.bytes_out += len(data)
            await trio.sleep_until(until)
        self._poke()

    def stats(self) -> dict[str, Any]:
        """The contract's ``buffer_stats``, with the stall time."""
        now = trio.current_time()
        buf = self.buffer
        out: dict[str, Any] = {
            "total_chunks_buffered": buf.chunks_buffered_total,
            "total_chunks_played": buf.chunks_played,
            "total_chunks": buf.total,
            "rebuffering_events": buf.rebuffering_events,
            "rebuffering_sec": round(buf.stalled_sec, 3),
            "current_buffer_level_sec": round(buf.level_sec(now), 3),
            "playback_started": buf.started,
        }
        if buf.started_at is not None:
            out["playback_duration_sec"] = round(now - buf.started_at, 3)
        if buf.last_rebuffer_at is not None:
            out["time_since_last_rebuffer_sec"] = round(now - buf.last_rebuffer_at, 3)
        return out

    def buffer_json(self) -> dict[str, Any]:
        """The contract's ``buffer`` object."""
        now = trio.current_time()
        buf = self.buffer
        level = buf.level_sec(now)
        return {
            "buffer_level_sec": round(level, 3),
            "buffer_level_chunks": sum(1 for s in buf.buffered if s >= buf.next_to_play),
            "buffer_health_percent": round(buf.health_percent(now), 1),
            "state": buf.state(now),
            "target_buffer_sec": self.policy.target_sec,
            "low_water_mark_sec": self.policy.low_water_sec,
            "current_position": buf.playing if buf.playing is not None else 0,
            "playback_started": buf.started,
            "needs_more_chunks": level < self.policy.target_sec and not buf.done,
            "can_start_playback": buf.started or buf.ready(),
            "is_healthy": (buf.started and level >= self.policy.low_water_sec) or buf.done,
            "memory_usage_bytes": self.memory_bytes(),
        }


async def probe_node(pool: StoragePool, book: NodeBook, url: str, *,
                     within: float = math.inf) -> None:
    """One probe of ``url``: its round trip is a latency sample; a failure (or no answer
    ``within`` seconds) counts against the node and drops its binary connection."""
    start = trio.current_time()
    try:
        with trio.fail_after(within):
            await pool.ping(url)
    except (VStackError, trio.TooSlowError):
        book[url].probe_failed(trio.current_time())
        await pool.discard(url)
        return
    now = trio.current_time()
    book[url].probed(now - start, now)


async def monitor_nodes(pool: StoragePool, book: NodeBook, urls: Callable[[], Iterable[str]],
                        interval: float) -> None:
    """Probe every node in ``urls()`` every ``interval`` seconds, forever."""

    async def step() -> None:
        async with trio.open_nursery() as nursery:
            for url in list(urls()):
                nursery.start_soon(functools.partial(probe_node, pool, book, url,
                                                     within=max(0.5, min(2.0, interval))))

    await run_forever("node monitor", step, log=log, every=interval)
