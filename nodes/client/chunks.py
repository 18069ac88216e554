"""One chunk from the best copies: scored choice, hedging, failover, verification.

A replicated chunk needs one good copy of its replicas; an erasure-coded
chunk needs 3 good shards of its 5 (then decoded). Both are the same race,
:meth:`ChunkFetcher._race`: start as many downloads as good answers are
needed, from the best-ranked nodes (:meth:`vstack.scoring.NodeBook.rank`);
a download that fails (error, timeout, wrong SHA-256) is replaced at once
by one from the next node and counted against its node; one that runs past
its hedge time while the buffer is low (``urgent()``) gets a hedge beside it,
and the first good answer wins (the others are cancelled). When every copy
was tried, a new round over them starts with a doubled allowance, up to
the policy's rounds.

Every downloaded byte is checked against the SHA-256 in the manifest
before it is returned: a damaged copy is never passed on.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from nodes.net.storage_client import StoragePool
from protocol.api import ManifestChunk
from protocol.errors import ProtocolError, VStackError
from vstack import erasure
from vstack.playback import BufferPolicy
from vstack.redundancy import DATA_SHARDS
from vstack.scoring import NodeBook

from .fetcher import FetchFailed

__all__ = ["ChunkFetcher", "FetchStats"]

log = logging.getLogger("vstack.client")

#: Recent failover times and damaged copies kept for the status.
KEEP = 100


@dataclass
class FetchStats:
    """Counters of a client's downloads (the contract's ``scheduler_stats``, and more)."""

    total_downloads: int = 0  # attempts started
    succeeded: int = 0
    failed_downloads: int = 0
    failover_count: int = 0  # attempts started because another failed
    hedges: int = 0
    hedges_won: int = 0
    hedge_bytes: int = 0  # bytes asked for by hedges (an upper bound of the extra bytes)
    bytes_fetched: int = 0  # bytes of good answers
    corrupt_copies: collections.deque[dict[str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP))
    #: From the start of a request that failed, or was hedged, to the good answer
    #: that replaced it.
    failover_times: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP))
    downloads_per_node: dict[str, int] = field(default_factory=dict)

    def to_json(self, book: NodeBook) -> dict[str, object]:
        total = self.succeeded + self.failed_downloads
        return {
            "total_downloads": self.total_downloads,
            "failed_downloads": self.failed_downloads,
            "failover_count": self.failover_count,
            "success_rate": round(self.succeeded / total, 4) if total else 1.0,
            "active_downloads": sum(s.in_flight for s in book.nodes.values()),
            "node_load": {u: s.in_flight for u, s in sorted(book.nodes.items())},
            "downloads_per_node": dict(sorted(self.downloads_per_node.items())),
            "hedged_requests": self.hedges,
            "hedges_won": self.hedges_won,
            "hedge_bytes": self.hedge_bytes,
            "bytes_fetched": self.bytes_fetched,
            "corrupt_copies": list(self.corrupt_copies)[-20:],
            "failover_ms": [round(t * 1000, 1) for t in list(self.failover_times)[-20:]],
        }


@dataclass(frozen=True)
class _Copy:
    key: int  # replica position, or shard index
    url: str
    stored_id: str
    checksum: str
    size: int


@dataclass
class _Attempt:
    copy: _Copy
    started: float
    hedge_at: float
    hedged: bool = False
    is_hedge: bool = False
    origin: float = 0.0  # a hedge: when the request it doubles started


class ChunkFetcher:
    def __init__(self, pool: StoragePool, book: NodeBook, policy: BufferPolicy, *,
                 naive: bool = False) -> None:
        self.pool = pool
        self.book = book
        self.policy = policy
        self.naive = naive  # round robin, no hedging, fixed timeouts (for comparisons)
        self.stats = FetchStats()
        self._rr = itertools.count()

    async def fetch(self, chunk: ManifestChunk, urgent: Callable[[], bool] = lambda: True, *,
                    best: bool = False) -> bytes:
        """The chunk's verified bytes. ``urgent()``: whether a slow download should be
        hedged now (the buffer is low); ``best``: ask the best-scored copy first (at
        startup) rather than the better of two random ones.

        Raises:
            FetchFailed: no copy (or not 3 shards) could be had in the policy's rounds.
        """
        if chunk.fragments:
            copies = [_Copy(f.fragment_index, f.node_url, f.fragment_id, f.checksum, f.size_bytes)
                      for f in chunk.fragments]
            shards = await self._race(chunk, copies, DATA_SHARDS, urgent, best)
            try:
                data = await trio.to_thread.run_sync(erasure.decode, shards)
            except erasure.ErasureError as exc:
                raise FetchFailed(f"chunk {chunk.sequence_num}: {exc}") from None
            if await trio.to_thread.run_sync(_sha256, data) != chunk.checksum:
                raise FetchFailed(f"chunk {chunk.sequence_num}: shards decoded to the wrong bytes")
            return data
        copies = [_Copy(i, url, chunk.chunk_id, chunk.checksum, chunk.size_bytes)
                  for i, url in enumerate(dict.fromkeys(chunk.replicas))]
        if not copies:
            raise FetchFailed(f"chunk {chunk.sequence_num} has no replica")
        good = await self._race(chunk, copies, 1, urgent, best)
        return next(iter(good.values()))

    def _order(self, copies: list[_Copy], size: int, best: bool = False) -> list[_Copy]:
        now = trio.current_time()
        if self.naive:
            turn = next(self._rr) % len(copies)
            return copies[turn:] + copies[:turn]
        by_url: dict[str, list[_Copy]] = {}
        for c in copies:
            by_url.setdefault(c.url, []).append(c)
        urls = [c.url for c in copies]
        ranked = self.book.best(urls, size, now) if best else self.book.rank(urls, size, now)
        return [c for url in ranked for c in by_url.pop(url, [])]

    async def _race(self, chunk: ManifestChunk, copies: list[_Copy], want: int,
                    urgent: Callable[[], bool], best: bool = False) -> dict[int, bytes]:
        good: dict[int, bytes] = {}
        errors: list[str] = []
        for round_no in range(self.policy.rounds):
            pending = [c for c in self._order(copies, copies[0].size, best) if c.key not in good]
            await self._one_round(pending, want, good, errors, urgent, round_no)
            if len(good) >= want:
                return good
        raise FetchFailed(f"chunk {chunk.sequence_num}: {len(good)} good copies of {want} "
                          f"needed ({'; '.join(errors[-6:])})")

    async def _one_round(self, pending: list[_Copy], want: int, good: dict[int, bytes],
                         errors: list[str], urgent: Callable[[], bool], round_no: int) -> None:
        running: dict[int, _Attempt] = {}
        failed_at: list[float] = []
        wake = trio.Event()

        def on_done() -> None:
            nonlocal wake
            wake.set()

        async def attempt(a: _Attempt) -> None:
            data = await self._download(a, round_no, errors)
            running.pop(id(a), None)
            if data is None:
                failed_at.append(a.started)  # failover time: from the failed request's start
            elif a.copy.key not in good and len(good) < want:
                good[a.copy.key] = data
                if a.is_hedge:
                    self.stats.hedges_won += 1
                    self.stats.failover_times.append(trio.current_time() - a.origin)
                if failed_at:
                    self.stats.failover_times.append(trio.current_time() - failed_at[0])
                    failed_at.clear()
            on_done()

        async with trio.open_nursery() as nursery:

            def launch(*, hedge: bool = False, failover: bool = False,
                       origin: float = 0.0) -> bool:
                while pending:
                    copy = pending.pop(0)
                    if copy.key in good or any(r.copy.key == copy.key for r in running.values()):
                        continue
                    now = trio.current_time()
                    expected = self.book[copy.url].expected_seconds(copy.size)
                    a = _Attempt(copy, now, now + self.policy.hedge_after(expected),
                                 is_hedge=hedge, origin=origin)
                    running[id(a)] = a
                    if hedge:
                        self.stats.hedges += 1
                        self.stats.hedge_bytes += copy.size
                    if failover:
                        self.stats.failover_count += 1
                    nursery.start_soon(attempt, a)
                    return True
                return False

            for _ in range(want):
                launch()
            while len(good) < want and (running or pending):
                if len(good) + len(running) < want:  # a download failed: replace it at once
                    if launch(failover=True):
                        continue
                    if not running:
                        break
                next_hedge = min((a.hedge_at for a in running.values() if not a.hedged),
                                 default=None)
                wake = trio.Event()
                if next_hedge is None or self.naive or not pending:
                    await wake.wait()
                    continue
                with trio.move_on_at(next_hedge):
                    await wake.wait()
                    continue
                late = [a for a in running.values()
                        if not a.hedged and a.hedge_at <= trio.current_time()]
                if late and urgent():
                    for a in late:
                        a.hedged = True
                        self.book[a.copy.url].slow(trio.current_time() - a.started,
                                                   trio.current_time())
                    launch(hedge=True, origin=min(a.started for a in late))
                elif late:
                    # Not urgent now: look again soon (the buffer may fall low).
                    for a in late:
                        a.hedge_at = trio.current_time() + self.policy.hedge_min_sec
            nursery.cancel_scope.cancel()  # the losers

    async def _download(self, a: _Attempt, round_no: int, errors: list[str]) -> bytes | None:
        copy = a.copy
        node = self.book[copy.url]
        expected = node.expected_seconds(copy.size)
        timeout = self.policy.max_timeout_sec if self.naive else \
            self.policy.timeout(expected, round_no)
        node.started()
        self.stats.total_downloads += 1
        self.stats.downloads_per_node[copy.url] = self.stats.downloads_per_node.get(copy.url, 0) + 1
        try:
            with trio.fail_after(timeout):
                data = await self.pool.get(copy.url, copy.stored_id, copy.checksum)
        except trio.TooSlowError:
            self._failed(copy, f"{copy.url}: no answer in {timeout:.2f} s", errors)
            await self.pool.discard(copy.url)  # a wedged connection is not asked again
            return None
        except ProtocolError as exc:
            if exc.status == 502 and "SHA-256" in str(exc):
                self.stats.corrupt_copies.append({"node_url": copy.url,
                                                  "chunk_id": copy.stored_id})
                log.warning("damaged copy of %s on %s: skipped", copy.stored_id, copy.url)
            self._failed(copy, str(exc), errors)
            return None
        except VStackError as exc:
            self._failed(copy, str(exc), errors)
            return None
        finally:
            node.finished()
        now = trio.current_time()
        node.downloaded(len(data), now - a.started, now)
        self.stats.succeeded += 1
        self.stats.bytes_fetched += len(data)
        return data

    def _failed(self, copy: _Copy, why: str, errors: list[str]) -> None:
        self.book[copy.url].failed(trio.current_time())
        self.stats.failed_downloads += 1
        errors.append(why)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
