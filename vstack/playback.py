"""The smart client's buffer and prefetch policy: pure code, time passed in.

Theory of operation
-------------------
A playback walks the manifest's chunks in order. :class:`PlaybackBuffer`
knows, at any instant, which chunks are buffered (fetched and verified, not
yet played), which are being fetched, which one is playing and until when.
Everything is in *media seconds*, from each chunk's real duration in the
manifest; ``speed`` converts to wall-clock time (a playback at speed 2 plays
a 10 s chunk in 5 s).

**Level.** The buffer level is the media time that can play without
waiting: what remains of the chunk playing, plus the chunks buffered right
after it with no gap (a chunk buffered beyond a missing one cannot play
before it arrives).

**Refill with hysteresis.** The scheduler starts fetching when the level is
below the low-water mark and keeps fetching, in order, until the level plus
what is already on its way reaches the target; then it waits for the level
to fall below the low-water mark again. Fetches never exceed
``max_concurrent``. Before playback starts, only the first chunk is fetched
(alone, so it gets all the bandwidth: startup latency is the time to it);
playback starts as soon as it is buffered.

**Rebuffering.** Once started, the player needs chunk ``n`` when chunk
``n - 1`` ends. If it is not buffered then, that is one rebuffering event
(however long it lasts); the stall's length is counted too. At speed 0 (no
pacing: a download, or a stream read as fast as it comes) there is no time
to be late for, and no rebuffering.

**Hedging.** A download that runs past its expected time (``hedge_factor``
times the node's estimate, at least ``hedge_min_sec``) while the buffer is
low (below the low-water mark, or playback not yet started) is hedged: the
same bytes are asked of another copy, and the first good answer wins. While
the buffer is healthy a slow download is left alone: it costs nothing yet,
and hedging it would cost bytes.

**Timeouts.** A download gives up after ``timeout_factor`` times its
expected time, at least ``min_timeout_sec`` and at most ``max_timeout_sec``,
and is moved to the next copy at once. A later round over the same copies
doubles the allowance, so a link merely slower than estimated is not failed
forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["BufferPolicy", "PlaybackBuffer"]

STATES: Final = ("empty", "initializing", "low", "healthy", "full")


@dataclass(frozen=True, kw_only=True)
class BufferPolicy:
    target_sec: float = 30.0  # TARGET_BUFFER_SEC
    low_water_sec: float = 15.0  # LOW_WATER_MARK_SEC
    max_concurrent: int = 4  # MAX_CONCURRENT_DOWNLOADS
    hedge_factor: float = 2.0
    hedge_min_sec: float = 0.05
    timeout_factor: float = 4.0
    min_timeout_sec: float = 0.75
    max_timeout_sec: float = 10.0  # DOWNLOAD_TIMEOUT
    rounds: int = 3  # passes over a chunk's copies before it is declared unavailable

    def __post_init__(self) -> None:
        if not 0 < self.low_water_sec <= self.target_sec:
            raise ValueError("LOW_WATER_MARK_SEC must be in (0, TARGET_BUFFER_SEC]")
        if not 1 <= self.max_concurrent <= 64:
            raise ValueError("MAX_CONCURRENT_DOWNLOADS must be in [1, 64]")
        if not 0 < self.min_timeout_sec <= self.max_timeout_sec:
            raise ValueError("DOWNLOAD_TIMEOUT must be at least the minimum timeout")
        if self.rounds < 1 or self.hedge_factor <= 0 or self.timeout_factor <= 0:
            raise ValueError("factors and rounds must be positive")

    def hedge_after(self, expected_sec: float) -> float:
        return max(self.hedge_min_sec, self.hedge_factor * expected_sec)

    def timeout(self, expected_sec: float, round_no: int = 0) -> float:
        base = max(self.min_timeout_sec, self.timeout_factor * expected_sec) * (2 ** round_no)
        return min(self.max_timeout_sec, base) if round_no + 1 < self.rounds else \
            self.max_timeout_sec


class PlaybackBuffer:
    """Which chunks are buffered, on their way and played (see the module's docstring)."""

    def __init__(self, durations: Sequence[float], policy: BufferPolicy, *,
                 speed: float = 1.0) -> None:
        if speed < 0:
            raise ValueError("speed must not be negative")
        self.durations = [max(0.0, float(d)) for d in durations]
        self.policy = policy
        self.speed = speed  # 0: as fast as the bytes come (no pacing)
        self.buffered: dict[int, int] = {}  # sequence -> bytes held
        self.fetching: set[int] = set()
        self.next_to_play = 0  # the chunk the player takes next
        self.playing: int | None = None
        self.playing_until = 0.0  # wall clock
        self.started_at: float | None = None  # wall clock, playback start
        self.opened_at: float | None = None
        self.refilling = True
        self.rebuffering_events = 0
        self.stall_since: float | None = None
        self.stalled_sec = 0.0
        self.last_rebuffer_at: float | None = None
        self.chunks_played = 0
        self.chunks_buffered_total = 0

    # -- what happens ---------------------------------------------------------

    def open(self, now: float) -> None:
        self.opened_at = now

    def fetch_started(self, seq: int) -> None:
        self.fetching.add(seq)

    def fetch_ended(self, seq: int, nbytes: int | None) -> None:
        """A fetch finished: ``nbytes`` held, or ``None`` if it failed."""
        self.fetching.discard(seq)
        if nbytes is not None and seq >= self.next_to_play:
            self.buffered[seq] = nbytes
            self.chunks_buffered_total += 1

    def waiting(self, now: float) -> None:
        """The player needs :attr:`next_to_play` and it is not buffered (at speed 0
        nothing plays in time: waiting for bytes is not a stall)."""
        if self.started_at is not None and self.stall_since is None and self.speed > 0:
            self.rebuffering_events += 1
            self.last_rebuffer_at = now
            self.stall_since = now

    def play(self, now: float) -> float:
        """The player takes :attr:`next_to_play` (it must be buffered); returns the
        wall-clock time its playing ends."""
        seq = self.next_to_play
        del self.buffered[seq]
        if self.started_at is None:
            self.started_at = now
        if self.stall_since is not None:
            self.stalled_sec += now - self.stall_since
            self.stall_since = None
        self.playing = seq
        wall = self.durations[seq] / self.speed if self.speed > 0 else 0.0
        self.playing_until = now + wall
        self.next_to_play += 1
        self.chunks_played += 1
        return self.playing_until

    # -- what follows ---------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self.durations)

    @property
    def done(self) -> bool:
        return self.next_to_play >= self.total

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def ready(self) -> bool:
        return self.next_to_play in self.buffered

    def level_sec(self, now: float) -> float:
        """Media seconds that can play from ``now`` without waiting."""
        level = 0.0
        if self.playing is not None and now < self.playing_until:
            level += (self.playing_until - now) * (self.speed or 1.0)
        seq = self.next_to_play
        while seq in self.buffered:
            level += self.durations[seq]
            seq += 1
        return level

    def low(self, now: float) -> bool:
        """Below the low-water mark (or not started): when hedging pays."""
        return not self.started or self.level_sec(now) < self.policy.low_water_sec

    def state(self, now: float) -> str:
        if not self.started:
            return "empty" if not self.buffered else "initializing"
        level = self.level_sec(now)
        if self.done and now >= self.playing_until:
            return "empty"
        if level >= self.policy.target_sec or self._all_covered():
            return "full"
        return "low" if level < self.policy.low_water_sec else "healthy"

    def _all_covered(self) -> bool:
        """Every chunk not yet played is buffered (nothing left to fetch)."""
        return all(s in self.buffered for s in range(self.next_to_play, self.total))

    def wanted(self, now: float) -> list[int]:
        """The chunks to start fetching now, in order (see the refill rule)."""
        if not self.started:
            if 0 in self.buffered or 0 in self.fetching or self.total == 0:
                return []
            return [0]
        level = self.level_sec(now)
        if level < self.policy.low_water_sec:
            self.refilling = True
        projected = level + sum(self.durations[s] for s in self.fetching)
        run_end = self.next_to_play
        while run_end in self.buffered:
            run_end += 1
        out: list[int] = []
        slots = self.policy.max_concurrent - len(self.fetching)
        seq = self.next_to_play
        while self.refilling and slots > 0 and seq < self.total \
                and projected < self.policy.target_sec:
            if seq in self.buffered:
                if seq > run_end:  # beyond a gap: not in the level yet, but held
                    projected += self.durations[seq]
            elif seq not in self.fetching:
                out.append(seq)
                projected += self.durations[seq]
                slots -= 1
            seq += 1
        if projected >= self.policy.target_sec:
            self.refilling = False
        return out

    def health_percent(self, now: float) -> float:
        return min(100.0, 100.0 * self.level_sec(now) / self.policy.target_sec)
