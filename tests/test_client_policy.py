"""The smart client's pure decisions: node scoring, ejection, choice, buffer refill, hedging.

Time is passed in: these run on numbers, not clocks.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from vstack.playback import BufferPolicy, PlaybackBuffer
from vstack.scoring import EJECT_AFTER, MAX_BACKOFF_SEC, NodeBook, NodeStats, PeakEwma

MIB = 1024 * 1024


# -- Peak-EWMA -----------------------------------------------------------------------------


def test_peak_ewma_jumps_to_a_peak_at_once_and_decays_with_time() -> None:
    e = PeakEwma(0.010, decay_sec=10.0)
    e.observe(0.010, now=0.0)
    e.observe(0.500, now=1.0)
    assert e.value == 0.500  # one slow answer is believed at once
    e.observe(0.010, now=1.1)  # a fast answer soon after barely lowers it
    assert e.value > 0.45
    e.observe(0.010, now=31.1)  # after three time constants, mostly forgotten
    assert e.value < 0.04


def test_in_flight_requests_raise_a_nodes_expected_time() -> None:
    a, b = NodeStats("a"), NodeStats("b")
    for s in (a, b):
        s.probed(0.010, now=0.0)
    b.started()
    b.started()
    assert b.expected_seconds(MIB) > a.expected_seconds(MIB)
    b.finished()
    b.finished()
    assert b.expected_seconds(MIB) == a.expected_seconds(MIB)


def test_throughput_and_errors_move_the_score() -> None:
    fast, slow, flaky = NodeStats("f"), NodeStats("s"), NodeStats("x")
    for _ in range(5):
        fast.downloaded(2 * MIB, 0.01, now=1.0)
        slow.downloaded(2 * MIB, 1.0, now=1.0)
        flaky.downloaded(2 * MIB, 0.01, now=1.0)
    flaky.failed(now=1.0)
    assert fast.score(1.0) > flaky.score(1.0) > slow.score(1.0) > 0
    assert flaky.success_rate == pytest.approx(5 / 6)


# -- ejection ------------------------------------------------------------------------------


def test_failures_in_a_row_eject_a_node_and_a_probe_brings_it_back() -> None:
    n = NodeStats("n")
    for i in range(EJECT_AFTER - 1):
        n.failed(now=float(i))
    assert not n.ejected(2.0)
    n.failed(now=2.0)
    assert n.ejected(2.5)
    assert n.score(2.5) == 0.0
    n.probed(0.01, now=2.5)  # too early: the back-off is not over
    assert n.ejected(2.6)
    n.probed(0.01, now=3.1)
    assert not n.ejected(3.1)
    assert n.failures_in_a_row == 0


def test_a_node_failing_again_after_its_back_off_waits_twice_as_long_up_to_a_cap() -> None:
    n = NodeStats("n")
    now = 0.0
    for _ in range(EJECT_AFTER):
        n.failed(now=now)
    periods = []
    for _ in range(8):
        assert n.ejected_until is not None
        now = n.ejected_until
        n.probe_failed(now=now)
        assert n.ejected_until is not None
        periods.append(n.ejected_until - now)
    assert periods[:3] == [2.0, 4.0, 8.0]
    assert max(periods) == MAX_BACKOFF_SEC


def test_a_success_between_failures_resets_the_count() -> None:
    n = NodeStats("n")
    for i in range(10):
        n.failed(now=float(i))
        n.downloaded(100, 0.01, now=float(i))
    assert not n.ejected(10.0)


# -- choosing ------------------------------------------------------------------------------


def test_power_of_two_choices_prefers_the_better_node_but_spreads_load() -> None:
    book = NodeBook(random.Random(1))
    urls = ["a", "b", "c"]
    for url, latency in zip(urls, (0.001, 0.002, 0.050), strict=True):
        book[url].probed(latency, now=0.0)
    first = Counter(book.rank(urls, MIB, now=0.0)[0] for _ in range(3000))
    assert first["c"] == 0  # the worst of three never wins a pair
    assert first["a"] > first["b"] > 0  # the best wins most, the second still gets some


def test_ejected_nodes_come_last_and_are_still_tried_when_nothing_else_is_left() -> None:
    book = NodeBook(random.Random(2))
    for _ in range(EJECT_AFTER):
        book["bad"].failed(now=0.0)
    assert book.rank(["bad", "ok"], MIB, now=0.1) == ["ok", "bad"]
    assert book.rank(["bad"], MIB, now=0.1) == ["bad"]
    assert book.best(["bad", "ok"], MIB, now=0.1)[0] == "ok"


def test_status_entries_have_the_contracts_fields() -> None:
    n = NodeStats("http://n:8081")
    n.probed(0.004, now=1.0)
    n.downloaded(MIB, 0.01, now=1.5)
    entry = n.to_json(now=2.0)
    assert {"node_url", "latency_ms", "bandwidth_mbps", "success_rate", "score", "last_update",
            "measurements_count"} <= set(entry)
    assert {"current", "average", "min", "max"} <= set(entry["latency_ms"])  # type: ignore[call-overload]


# -- the buffer ----------------------------------------------------------------------------


def test_startup_fetches_the_first_chunk_alone() -> None:
    b = PlaybackBuffer([10.0] * 6, BufferPolicy())
    assert b.wanted(0.0) == [0]
    b.fetch_started(0)
    assert b.wanted(0.0) == []
    b.fetch_ended(0, 100)
    assert b.ready()
    assert b.state(0.1) == "initializing"


def test_the_buffer_fills_to_the_target_then_waits_for_the_low_water_mark() -> None:
    policy = BufferPolicy(target_sec=30, low_water_sec=15, max_concurrent=4)
    b = PlaybackBuffer([5.0] * 20, policy)
    b.fetch_ended(0, 1)
    until = b.play(0.0)  # chunk 0 plays until t=5
    assert until == 5.0
    want = b.wanted(0.0)
    assert want == [1, 2, 3, 4]  # 5 s playing + 4 x 5 s on the way; capped at 4 at once
    for s in want:
        b.fetch_started(s)
    assert b.wanted(0.0) == []  # no slot free
    for s in want:
        b.fetch_ended(s, 1)
    assert b.level_sec(0.0) == 25.0
    assert b.wanted(0.0) == [5]  # 25 + 5 reaches the target
    b.fetch_started(5)
    b.fetch_ended(5, 1)
    assert b.state(0.0) == "full"
    # Playing on: no fetch until the level falls below 15 s.
    now = 0.0
    while b.level_sec(now) >= 15.0:
        assert b.wanted(now) == [], now
        now = b.play(b.playing_until) if b.ready() else now + 1
    assert b.state(now) == "low"
    assert b.wanted(now)  # refilling again


def test_a_chunk_beyond_a_gap_does_not_count_in_the_level() -> None:
    b = PlaybackBuffer([10.0] * 5, BufferPolicy())
    b.fetch_ended(0, 1)
    b.play(0.0)
    b.fetch_ended(2, 1)
    assert b.level_sec(0.0) == 10.0  # chunk 1 missing: chunk 2 cannot play yet
    b.fetch_ended(1, 1)
    assert b.level_sec(0.0) == 30.0


def test_a_stall_after_start_is_one_rebuffering_event_however_long() -> None:
    b = PlaybackBuffer([10.0] * 3, BufferPolicy())
    b.waiting(0.0)  # before start: startup, not rebuffering
    b.fetch_ended(0, 1)
    b.play(0.5)
    b.waiting(10.5)
    b.waiting(11.0)
    b.waiting(12.0)
    assert b.rebuffering_events == 1
    b.fetch_ended(1, 1)
    b.play(13.0)
    assert b.stalled_sec == pytest.approx(2.5)
    b.waiting(23.0)
    assert b.rebuffering_events == 2


def test_speed_scales_wall_time_and_zero_means_no_pacing() -> None:
    fast = PlaybackBuffer([10.0], BufferPolicy(), speed=4)
    fast.fetch_ended(0, 1)
    assert fast.play(1.0) == 3.5
    unpaced = PlaybackBuffer([10.0], BufferPolicy(), speed=0)
    unpaced.fetch_ended(0, 1)
    assert unpaced.play(1.0) == 1.0


def test_hedge_and_timeout_allowances() -> None:
    p = BufferPolicy(hedge_factor=2, hedge_min_sec=0.05, timeout_factor=4, min_timeout_sec=0.75,
                     max_timeout_sec=10, rounds=3)
    assert p.hedge_after(0.001) == 0.05
    assert p.hedge_after(0.2) == 0.4
    assert p.timeout(0.01) == 0.75  # a hang is given up on within a second
    assert p.timeout(1.0) == 4.0
    assert p.timeout(1.0, round_no=1) == 8.0  # a second pass allows twice as long
    assert p.timeout(0.01, round_no=2) == 10  # the last pass allows the most


@pytest.mark.parametrize("kwargs", [{"low_water_sec": 40}, {"low_water_sec": 0},
                                    {"max_concurrent": 0}, {"min_timeout_sec": 20},
                                    {"rounds": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        BufferPolicy(**kwargs)  # type: ignore[arg-type]


def test_a_node_that_recovers_wins_traffic_back() -> None:
    # A node fails a dozen requests (an outage), then answers every probe fast for an hour.
    book = NodeBook()
    for u in ("a", "b", "c"):
        book[u].probed(0.001, now=0.0)
    for i in range(12):
        book["a"].failed(now=float(i))
    now = 12.0
    while now < 3600:
        for u in ("a", "b", "c"):
            book[u].probed(0.001, now=now)
        now += 3.0
    scores = book.scores(now)
    # Its score stays ~20x lower forever: probes never lower the error rate, so power
    # of two choices over three replicas never puts it first again.
    assert scores["a"] > scores["b"] / 2, scores


def test_a_node_not_yet_tried_gets_its_chance() -> None:
    book = NodeBook(random.Random(3))
    for url in ("a", "b", "c"):
        book[url].probed(0.001, now=0.0)
    book["a"].downloaded(2 * MIB, 0.01, now=0.1)  # 200 MiB/s, measured
    book["b"].downloaded(2 * MIB, 0.01, now=0.1)
    # c was never downloaded from: it is assumed as fast as the best, not the default.
    first = Counter(book.rank(["a", "b", "c"], MIB, now=0.2)[0] for _ in range(300))
    assert first["c"] > 50
