"""Background jobs outlive their failures: back-off, one log line per streak, recovery."""

from __future__ import annotations

import itertools
import logging
import random

import pytest
import trio
import trio.testing

from nodes.net.jobs import Backoff, run_forever
from protocol.errors import ConnectionLost

log = logging.getLogger("test.jobs")


async def run_script(outcomes: list[BaseException | None], *, every: float,
                     seconds: float) -> list[float]:
    """Run a job whose steps fail or succeed as ``outcomes`` say (then succeed) for
    ``seconds`` of virtual time; returns the times of the gaps between steps."""
    calls: list[float] = []

    async def step() -> None:
        calls.append(trio.current_time())
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is not None:
            raise outcome

    with trio.move_on_after(seconds):
        await run_forever("job", step, log=log, every=every,
                          backoff=Backoff(initial=1.0, maximum=60.0, rng=random.Random(0)))
    return [b - a for a, b in itertools.pairwise(calls)]


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    b = Backoff(initial=1.0, maximum=8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    for got, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.75 * base <= got <= 1.25 * base
    b.reset()
    assert b.next_delay() <= 1.25


async def test_a_failing_step_backs_off_then_recovers(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.jobs")
    gaps = await run_script([ConnectionLost("peer down"), ValueError("a bug"),
                             ConnectionLost("still down"), None, None], every=30.0, seconds=100)
    assert 0.75 <= gaps[0] <= 1.25
    assert 1.5 <= gaps[1] <= 2.5
    assert 3.0 <= gaps[2] <= 5.0
    assert gaps[3] == pytest.approx(30.0)  # back to the normal period after a success
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "peer down" in warnings[0].getMessage()
    assert any("recovered after 3 failed attempts" in r.getMessage() for r in caplog.records)


async def test_an_unexpected_error_is_logged_with_its_traceback(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async def step() -> None:
        raise KeyError("boom")

    with trio.move_on_after(10):
        await run_forever("job", step, log=log, every=1.0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


async def test_the_step_chooses_its_next_delay(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []

    async def step() -> float:
        calls.append(trio.current_time())
        return 0.0 if len(calls) == 1 else 5.0

    with trio.move_on_after(11):
        await run_forever("job", step, log=log, every=100.0, initial_delay=1.0)
    assert calls == [1.0, 1.0, 6.0, 11.0][: len(calls)]
    assert len(calls) >= 3


async def test_a_second_failure_streak_starts_over(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    # After a recovery the back-off starts again from its initial delay, and the
    # new streak is warned about once more (it is news, not a repeat).
    caplog.set_level(logging.DEBUG, logger="test.jobs")
    gaps = await run_script([ConnectionLost("down"), ConnectionLost("down"), ConnectionLost("down"),
                             None, ConnectionLost("down again"), None], every=10.0, seconds=50)
    assert gaps[3] == pytest.approx(10.0)  # recovered: the normal period
    assert 0.75 <= gaps[4] <= 1.25  # the new streak backs off from the start
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    assert "down again" in warnings[1]


def test_backoff_jitter_spreads_the_delays() -> None:
    b = Backoff(initial=1.0, maximum=1.0, rng=random.Random(3))
    assert len({b.next_delay() for _ in range(5)}) == 5
