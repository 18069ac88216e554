"""The playback engine and the HLS gateway on stub fetchers: retries and shared fetches.

The fetcher is a stub (no network), time is trio's MockClock: what is tested
is what the engine does with failures and concurrent viewers.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from nodes.client.fetcher import FetchFailed
from nodes.client.hls import HlsGateway
from nodes.client.session import RETRY_AFTER, Playback, PlaybackError
from protocol.api import Manifest, ManifestChunk
from vstack.playback import BufferPolicy
from vstack.scoring import NodeBook


def _manifest(n: int, duration: float = 10.0) -> Manifest:
    chunks = tuple(ManifestChunk(chunk_id=f"v-{i}", sequence_num=i, size_bytes=10,
                                 checksum="0" * 64, redundancy_mode="replication",
                                 duration_sec=duration, start_sec=i * duration,
                                 replicas=("http://a",), fragments=None) for i in range(n))
    return Manifest(video_id="v", title="t", duration_sec=int(n * duration), total_chunks=n,
                    chunk_size_bytes=10, created_at="", status="active",
                    chunk_duration_sec=int(duration), chunks=chunks)


class StubFetcher:
    naive = False

    def __init__(self, fail: set[int] | None = None, delay: float = 0.5) -> None:
        self.fail_once = set(fail or ())
        self.delay = delay
        self.calls: list[int] = []

    async def fetch(self, chunk: ManifestChunk, urgent: Any = None, *, best: bool = False
                    ) -> bytes:
        self.calls.append(chunk.sequence_num)
        await trio.sleep(self.delay)
        if chunk.sequence_num in self.fail_once:
            self.fail_once.discard(chunk.sequence_num)
            raise FetchFailed(f"chunk {chunk.sequence_num}: every copy refused (transient)")
        return b"x" * 10


class StubClient:
    def __init__(self, m: Manifest, fetcher: StubFetcher) -> None:
        self.m = m
        self.fetcher = fetcher
        self.book = NodeBook()

    async def manifest(self, video_id: str) -> Manifest:
        return self.m


async def test_hls_two_viewers_waiting_on_one_segment_do_not_crash_the_gateway(
        clock: trio.testing.MockClock) -> None:
    # HLS_CACHE_BYTES=0 (allowed: IntRange(0)): nothing is ever cached, so every waiter
    # on an in-flight fetch refetches; two waiters overwrite each other's _inflight entry.
    fetcher = StubFetcher()
    errors: list[BaseException] = []
    async with trio.open_nursery() as svc_nursery:
        hls = HlsGateway(StubClient(_manifest(5), fetcher), svc_nursery, cache_bytes=0)  # type: ignore[arg-type]

        async def viewer(seq: int) -> None:
            try:
                await hls.segment("v", seq)
            except Exception as exc:
                errors.append(exc)

        async with trio.open_nursery() as n:
            n.start_soon(viewer, 0)  # prefetches 1 and 2
            await trio.sleep(0.1)
            n.start_soon(viewer, 1)  # waits on the prefetch of 1
            n.start_soon(viewer, 1)  # a second viewer, same segment
        svc_nursery.cancel_scope.cancel()
    assert not errors, errors
    # and with no cache, each segment is fetched more than once
    assert fetcher.calls.count(1) == 1, fetcher.calls


async def test_a_chunk_that_failed_once_far_ahead_is_fetched_again(
        clock: trio.testing.MockClock) -> None:
    # Chunk 3 fails once (every copy briefly unreachable) while 20+ s are buffered:
    # there is all the time in the world to ask again, yet the playback dies at chunk 3.
    fetcher = StubFetcher(fail={3}, delay=0.2)
    p = Playback(_manifest(8), fetcher, BufferPolicy())  # type: ignore[arg-type]

    async def sink(data: bytes) -> None:
        return None

    await p.run(sink)
    assert p.buffer.chunks_played == 8
    assert fetcher.calls.count(3) == 2


async def test_a_chunk_that_keeps_failing_ends_playback_after_its_retries(
        clock: trio.testing.MockClock) -> None:
    class AlwaysFails(StubFetcher):
        async def fetch(self, chunk: ManifestChunk, urgent: Any = None, *, best: bool = False
                        ) -> bytes:
            if chunk.sequence_num == 2:
                self.calls.append(2)
                raise FetchFailed("chunk 2: gone for good")
            return await super().fetch(chunk, urgent, best=best)

    failing = AlwaysFails(delay=0.2)
    p = Playback(_manifest(5), failing, BufferPolicy())  # type: ignore[arg-type]

    async def sink(data: bytes) -> None:
        return None

    with pytest.raises(PlaybackError, match="chunk 2"):
        await p.run(sink)
    assert failing.calls.count(2) == len(RETRY_AFTER) + 1
    assert p.buffer.chunks_played == 2
