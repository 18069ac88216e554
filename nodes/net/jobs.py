"""Background jobs that outlive any single failure.

A service's background loops (heartbeats, catch-up, scrubbing, compaction,
liveness checks, and later migration and repair) each run one *step* again
and again. :func:`run_forever` is the loop they share, with the rule trio's
``serve_listeners`` states for a server: an error of one step never ends the
service. It is logged once (with its traceback if it is not a
:class:`~protocol.errors.VStackError`, which are expected: a peer down, a
timeout), the job backs off (doubling up to ``max_backoff``, with jitter so
replicas do not retry in step), and the next success is logged as a
recovery. Only cancellation ends the loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import trio

from protocol.errors import VStackError

__all__ = ["Backoff", "run_forever"]


class Backoff:
    """Exponential back-off with jitter: ``initial`` doubling to ``maximum``."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0,
                 rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2 ** min(self.failures, 30))
        self.failures += 1
        return float(delay * self.rng.uniform(0.75, 1.25))

    def reset(self) -> None:
        self.failures = 0


async def run_forever(
    name: str,
    step: Callable[[], Awaitable[float | None]],
    *,
    log: logging.Logger,
    every: float,
    initial_delay: float = 0.0,
    backoff: Backoff | None = None,
) -> None:
    """Run ``step`` forever: wait ``every`` seconds after a success (or the
    number of seconds ``step`` returns), back off after a failure.

    Args:
        name: the job's name in log lines.
        step: one iteration; may return the delay before the next one.
        log: where failures are reported.
        every: the normal period.
        initial_delay: wait this long before the first step.
        backoff: the back-off after failures (default 1 s doubling to 60 s,
            capped at ``every`` when that is longer).
    """
    backoff = backoff or Backoff(initial=min(1.0, every), maximum=max(60.0, every))
    await trio.sleep(initial_delay)
    while True:
        try:
            delay = await step()
        except VStackError as exc:
            if backoff.failures == 0:
                log.warning("%s failed: %s; retrying with back-off", name, exc)
            else:
                log.debug("%s failed again: %s", name, exc)
            await trio.sleep(backoff.next_delay())
            continue
        except Exception:
            if backoff.failures == 0:
                log.exception("%s failed unexpectedly; retrying with back-off", name)
            else:
                log.debug("%s failed again", name, exc_info=True)
            await trio.sleep(backoff.next_delay())
            continue
        if backoff.failures:
            log.info("%s recovered after %d failed attempts", name, backoff.failures)
            backoff.reset()
        await trio.sleep(every if delay is None else delay)
