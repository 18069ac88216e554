"""How the smart client rates storage nodes: pure code, time passed in.

Theory of operation
-------------------
Every node the client reads from has a :class:`NodeStats`:

* **latency**: a peak-sensitive moving average (Finagle's *Peak-EWMA*): a
  sample above the average replaces it at once, a lower one pulls it down
  with a time constant (:data:`LATENCY_DECAY_SEC`). A node that turns slow is
  avoided after one slow answer; one that recovers wins its traffic back
  gradually. Fed by probes (binary ``PING`` or ``HEAD /ping``) and by the
  time to a download's answer.
* **throughput**: a moving average of the bytes per second real downloads saw.
* **error rate**: a moving average of failures (an error, a timeout, a bad
  checksum count 1; a success 0).
* **in flight**: requests now running on the node.

From these, :meth:`NodeStats.expected_seconds` estimates how long a request
of ``n`` bytes would take if sent now: ``latency * (in_flight + 1) +
n / throughput`` (the in-flight factor is Peak-EWMA's load term: queued work
delays this one), inflated by the error rate (a request that fails is
retried elsewhere). The *score* shown to users is its inverse for a 1 MiB
request: the MiB/s the node is expected to deliver, so higher is better;
0 for an ejected node.

A successful probe forgives a fifth of a node's error rate, and moves a
throughput below the default a fifth of the way back to it: a node that
recovered gets traffic again within seconds, and a real download tells again
what it is worth.

**Ejection.** :data:`EJECT_AFTER` failures in a row eject a node for a
back-off period (1 s, doubling up to :data:`MAX_BACKOFF_SEC`); while
ejected it is chosen only when no other node can serve. When the period is
over, the next probe that succeeds brings it back (a probe that fails doubles
the period again); a successful download does too.

**Exploring.** A node not yet downloaded from is assumed as fast as the best
node measured so far (not the pessimistic default): otherwise a node never
tried would never win a choice, and never show what it is worth.

**Choosing** (:meth:`NodeBook.rank`): among the nodes holding a copy, the
*power of two choices*: two nodes drawn at random, the one with the lower
expected time first, then the rest by expected time. Picking the best of two
random ones rather than the best overall spreads load: many clients with the
same view of the scores do not all pile onto the same node.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["EJECT_AFTER", "NodeBook", "NodeStats", "PeakEwma"]

#: Time constant of the latency average's decay after a peak.
LATENCY_DECAY_SEC: Final = 10.0
#: A node's latency before anything was measured (a pessimistic LAN figure).
DEFAULT_LATENCY_SEC: Final = 0.050
#: Throughput assumed before a download was measured: 20 MB/s.
DEFAULT_THROUGHPUT: Final = 20e6
#: Weight of the newest download in the throughput and error averages.
ALPHA: Final = 0.3
#: How much of its error rate (and of its throughput deficit) a node is forgiven
#: per successful probe: about half in 3 probes (10 s at the default interval).
PROBE_FORGIVENESS: Final = 0.2
#: Failures in a row that eject a node.
EJECT_AFTER: Final = 3
MIN_BACKOFF_SEC: Final = 1.0
MAX_BACKOFF_SEC: Final = 30.0
MIB: Final = 1024 * 1024
#: Answers smaller than this measure latency, larger ones throughput.
SMALL_BYTES: Final = 64 * 1024


class PeakEwma:
    """Finagle's peak-EWMA of a latency, in seconds."""

    def __init__(self, initial: float, decay_sec: float = LATENCY_DECAY_SEC) -> None:
        self.value = initial
        self.decay_sec = decay_sec
        self.stamp: float | None = None

    def observe(self, sample: float, now: float) -> None:
        if self.stamp is None or sample >= self.value:
            self.value = sample
        else:
            weight = math.exp(-max(0.0, now - self.stamp) / self.decay_sec)
            self.value = self.value * weight + sample * (1.0 - weight)
        self.stamp = now


@dataclass
class NodeStats:
    """What the client knows of one node (see the module's docstring)."""

    url: str
    latency: PeakEwma = field(default_factory=lambda: PeakEwma(DEFAULT_LATENCY_SEC))
    throughput: float = DEFAULT_THROUGHPUT  # bytes per second
    throughput_measured: bool = False  # a real download set it (else the default)
    error_rate: float = 0.0
    in_flight: int = 0
    failures_in_a_row: int = 0
    ejected_until: float | None = None
    backoff: float = MIN_BACKOFF_SEC
    # Shown in the status (the contract's network_stats).
    latency_ms_last: float | None = None
    latency_ms_min: float | None = None
    latency_ms_max: float | None = None
    latency_ms_sum: float = 0.0
    measurements: int = 0
    throughput_last: float | None = None
    successes: int = 0
    failures: int = 0
    last_update: float | None = None

    # -- what was seen ------------------------------------------------------

    def probed(self, seconds: float, now: float) -> None:
        """A probe answered after ``seconds``: a latency sample; readmits once
        the ejection period is over."""
        self._latency_sample(seconds, now)
        # A node that answers is given its chance back little by little: its error
        # rate fades, and a throughput learned in bad times drifts back toward the
        # default (else, never chosen, it could never show it recovered).
        self.error_rate *= 1.0 - PROBE_FORGIVENESS
        if self.throughput < DEFAULT_THROUGHPUT:
            self.throughput += PROBE_FORGIVENESS * (DEFAULT_THROUGHPUT - self.throughput)
        if self.ejected_until is not None and now >= self.ejected_until:
            self._readmit()

    def probe_failed(self, now: float) -> None:
        self.failed(now, count_error=False)

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def downloaded(self, nbytes: int, seconds: float, now: float) -> None:
        """A download of ``nbytes`` succeeded in ``seconds``: a success, and a
        throughput sample (a latency sample for a small one, whose time is
        mostly the round trip)."""
        if nbytes >= SMALL_BYTES and seconds > 0:
            rate = nbytes / seconds
            self.throughput_last = rate
            if self.throughput_measured:
                self.throughput += ALPHA * (rate - self.throughput)
            else:  # the first real figure replaces the default outright
                self.throughput, self.throughput_measured = rate, True
            self.last_update = now
        else:
            self._latency_sample(seconds, now)
        self.error_rate *= 1.0 - ALPHA
        self.successes += 1
        self.failures_in_a_row = 0
        if self.ejected_until is not None:
            self._readmit()

    def failed(self, now: float, *, count_error: bool = True) -> None:
        """A request failed (error, timeout, damaged bytes) or a probe did."""
        if count_error:
            self.error_rate += ALPHA * (1.0 - self.error_rate)
            self.failures += 1
        self.failures_in_a_row += 1
        self.last_update = now
        if self.ejected_until is not None:
            if now >= self.ejected_until:  # failed again once back: wait longer
                self.backoff = min(MAX_BACKOFF_SEC, self.backoff * 2)
                self.ejected_until = now + self.backoff
        elif self.failures_in_a_row >= EJECT_AFTER:
            self.ejected_until = now + self.backoff

    def slow(self, elapsed: float, now: float) -> None:
        """A request has run ``elapsed`` seconds without an answer (a hedge went
        out): the latency is at least that, so the next choice knows."""
        self._latency_sample(elapsed, now)

    def _latency_sample(self, seconds: float, now: float) -> None:
        seconds = max(0.0, seconds)
        self.latency.observe(seconds, now)
        ms = seconds * 1000.0
        self.latency_ms_last = ms
        self.latency_ms_min = ms if self.latency_ms_min is None else min(self.latency_ms_min, ms)
        self.latency_ms_max = ms if self.latency_ms_max is None else max(self.latency_ms_max, ms)
        self.latency_ms_sum += ms
        self.measurements += 1
        self.last_update = now

    def _readmit(self) -> None:
        self.ejected_until = None
        self.failures_in_a_row = 0
        self.backoff = MIN_BACKOFF_SEC

    # -- what is concluded ----------------------------------------------------

    def ejected(self, now: float) -> bool:
        return self.ejected_until is not None and now < self.ejected_until

    def expected_seconds(self, nbytes: int, optimistic: float | None = None) -> float:
        """``optimistic``: the throughput to assume for a node not yet downloaded from
        (choosing, the best any node showed: an untried node gets its chance)."""
        throughput = self.throughput
        if optimistic is not None and not self.throughput_measured:
            throughput = max(throughput, optimistic)
        base = self.latency.value * (self.in_flight + 1) + nbytes / max(throughput, 1.0)
        return base / max(0.05, 1.0 - self.error_rate)

    def score(self, now: float) -> float:
        """The MiB/s this node is expected to deliver one more 1 MiB request at (0: ejected)."""
        if self.ejected(now):
            return 0.0
        return 1.0 / self.expected_seconds(MIB)

    @property
    def success_rate(self) -> float:
        total = self.successes + self.failures
        return 1.0 if total == 0 else self.successes / total

    def to_json(self, now: float) -> dict[str, object]:
        """One entry of the contract's ``network_stats`` array."""
        avg = self.latency_ms_sum / self.measurements if self.measurements else None
        mbps = None if self.throughput_last is None else self.throughput_last * 8 / 1e6
        return {
            "node_url": self.url,
            "latency_ms": {"current": _r(self.latency_ms_last), "average": _r(avg),
                           "min": _r(self.latency_ms_min), "max": _r(self.latency_ms_max),
                           "peak_ewma": _r(self.latency.value * 1000.0)},
            "bandwidth_mbps": {"current": _r(mbps), "average": _r(self.throughput * 8 / 1e6)},
            "success_rate": round(self.success_rate, 4),
            "error_rate": round(self.error_rate, 4),
            "in_flight": self.in_flight,
            "ejected": self.ejected(now),
            "score": round(self.score(now), 3),
            "last_update": self.last_update,
            "measurements_count": self.measurements,
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class NodeBook:
    """Every node's :class:`NodeStats`, and the choice among them."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.nodes: dict[str, NodeStats] = {}
        self._rng = rng or random.Random()

    def __getitem__(self, url: str) -> NodeStats:
        stats = self.nodes.get(url)
        if stats is None:
            stats = self.nodes[url] = NodeStats(url)
        return stats

    def add(self, urls: Iterable[str]) -> None:
        for url in urls:
            self[url]

    def rank(self, urls: Sequence[str], nbytes: int, now: float) -> list[str]:
        """``urls`` in the order to try them: power of two choices first, then by
        expected time; ejected nodes last (tried only when nothing else is left)."""
        opt = self.optimistic()
        live = [u for u in dict.fromkeys(urls) if not self[u].ejected(now)]
        out = [u for u in dict.fromkeys(urls) if self[u].ejected(now)]
        out.sort(key=lambda u: self[u].ejected_until or 0.0)
        if not live:
            return out
        if len(live) >= 2:
            a, b = self._rng.sample(live, 2)
            first = min((a, b), key=lambda u: self[u].expected_seconds(nbytes, opt))
        else:
            first = live[0]
        rest = sorted((u for u in live if u != first),
                      key=lambda u: self[u].expected_seconds(nbytes, opt))
        return [first, *rest, *out]

    def best(self, urls: Sequence[str], nbytes: int, now: float) -> list[str]:
        """``urls`` strictly by expected time (ejected last): for startup, where the
        single best node matters more than spreading load."""
        opt = self.optimistic()
        return sorted(dict.fromkeys(urls),
                      key=lambda u: (self[u].ejected(now), self[u].expected_seconds(nbytes, opt)))

    def optimistic(self) -> float | None:
        """The best throughput any node showed (assumed of nodes not yet tried)."""
        return max((s.throughput for s in self.nodes.values() if s.throughput_measured),
                   default=None)

    def scores(self, now: float) -> dict[str, float]:
        return {url: round(s.score(now), 3) for url, s in sorted(self.nodes.items())}
