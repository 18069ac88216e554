"""Placement policy: which storage nodes take a chunk, and how many copies must hold it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vstack.placement import LOAD_WEIGHT, NodeInfo, choose_nodes, required_copies


def node(name: str, usage: float = 0.0) -> NodeInfo:
    return NodeInfo(url=f"http://{name}:8081", node_id=name, disk_usage_percent=usage)


def urls(nodes: list[NodeInfo]) -> list[str]:
    return [n.url for n in nodes]


POOL = [node("a", 30.0), node("b", 10.0), node("c", 50.0), node("d", 20.0), node("e", 40.0)]


def test_distinct_nodes_emptiest_disk_first() -> None:
    picked = choose_nodes(POOL, 3)
    assert urls(picked) == [node("b").url, node("d").url, node("a").url]
    assert len(set(urls(picked))) == 3


def test_excluded_urls_are_never_chosen() -> None:
    banned = {node("b").url, node("d").url}
    picked = choose_nodes(POOL, 5, exclude=banned)
    assert urls(picked) == [node("a").url, node("e").url, node("c").url]
    assert choose_nodes(POOL, 3, exclude=urls(POOL)) == []


def test_count_larger_than_the_pool_gives_every_node_once() -> None:
    picked = choose_nodes(POOL, 50)
    assert sorted(urls(picked)) == sorted(urls(POOL))
    assert choose_nodes(POOL, 0) == []
    assert choose_nodes([], 3) == []


def test_in_flight_writes_weigh_against_a_node() -> None:
    quiet, busy = node("quiet"), node("busy")
    assert urls(choose_nodes([busy, quiet], 2, load={busy.url: 2})) == [quiet.url, busy.url]
    # One write in flight counts as LOAD_WEIGHT percent of disk: a slightly fuller
    # idle node is preferred, a much fuller one is not.
    fuller = node("fuller", LOAD_WEIGHT - 1)
    fullest = node("fullest", LOAD_WEIGHT + 1)
    load = {busy.url: 1}
    assert urls(choose_nodes([busy, fuller, fullest], 3, load=load)) == [
        fuller.url, busy.url, fullest.url]


def test_equal_nodes_take_turns() -> None:
    equal = [node(name, 25.0) for name in "pqrs"]
    firsts = [choose_nodes(equal, 1, turn=t)[0].url for t in range(len(equal))]
    assert sorted(firsts) == sorted(urls(equal))  # each node leads once per round
    assert choose_nodes(equal, 1, turn=len(equal)) == choose_nodes(equal, 1, turn=0)
    # Turns only break ties: a strictly emptier node always comes first.
    best = node("best", 5.0)
    for t in range(10):
        assert choose_nodes([*equal, best], 2, turn=t)[0] == best


def test_input_order_does_not_matter() -> None:
    shuffled = POOL[:]
    random.Random(7).shuffle(shuffled)
    for t in range(6):
        assert choose_nodes(shuffled, 3, turn=t) == choose_nodes(POOL, 3, turn=t)


@st.composite
def pools(draw: st.DrawFn) -> list[NodeInfo]:
    names = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=3), unique=True, max_size=8))
    # Few distinct usages, so ties (and the rotation) are common.
    return [node(n, draw(st.sampled_from([0.0, 10.0, 12.5, 50.0, 99.0]))) for n in names]


@given(pool=pools(), count=st.integers(0, 10), turn=st.integers(0, 50), data=st.data())
def test_choice_properties(pool: list[NodeInfo], count: int, turn: int, data: st.DataObject) -> None:
    all_urls = urls(pool)
    load = data.draw(st.dictionaries(st.sampled_from(all_urls), st.integers(0, 4))
                     if pool else st.just({}))
    exclude = data.draw(st.sets(st.sampled_from(all_urls)) if pool else st.just(set()))
    picked = choose_nodes(pool, count, load=load, exclude=exclude, turn=turn)

    def score(n: NodeInfo) -> float:
        return n.disk_usage_percent + LOAD_WEIGHT * load.get(n.url, 0)

    allowed = [n for n in pool if n.url not in exclude]
    assert len(picked) == min(count, len(allowed))
    assert len(set(urls(picked))) == len(picked)
    assert all(n in allowed for n in picked)
    assert [score(n) for n in picked] == sorted(score(n) for n in picked)
    left_out = [n for n in allowed if n not in picked]
    if picked and left_out:
        assert max(map(score, picked)) <= min(map(score, left_out))
    reordered = data.draw(st.permutations(pool))
    assert choose_nodes(reordered, count, load=load, exclude=exclude, turn=turn) == picked


@pytest.mark.parametrize(("replicas", "expected"), [
    # available nodes:  0  1  2  3  4  5
    (3,                [1, 1, 2, 3, 3, 3]),
    (2,                [1, 1, 2, 2, 2, 2]),
    (5,                [1, 1, 2, 3, 4, 5]),
    (1,                [1, 1, 1, 1, 1, 1]),
])
def test_required_copies_for_0_to_5_nodes(replicas: int, expected: list[int]) -> None:
    assert [required_copies(replicas, available) for available in range(6)] == expected


@given(replicas=st.integers(1, 7), available=st.integers(0, 20))
def test_required_copies_is_reachable_and_safe(replicas: int, available: int) -> None:
    need = required_copies(replicas, available)
    # The uploader places at most `replicas` copies, on distinct live nodes.
    assert 1 <= need <= replicas
    assert need <= max(available, 1)
    if available >= replicas:
        assert need == replicas
    if available >= 2 and replicas >= 2:
        assert need >= 2  # one lost node must not lose the chunk
