"""Placement policy: which storage nodes take a chunk, and how many copies must hold it."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import VStackError
from vstack.placement import (
    LOAD_WEIGHT,
    NodeInfo,
    PlacementError,
    choose_nodes,
    choose_shard_nodes,
    required_copies,
    survives,
)


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


# -- shards of an erasure-coded chunk ----------------------------------------------------

CLUSTER = [node(name, usage) for name, usage in zip("abcdefg", [30.0, 10.0, 50.0, 20.0, 40.0,
                                                               60.0, 5.0], strict=True)]


def per_node(layout: dict[int, NodeInfo]) -> list[int]:
    return sorted(Counter(n.url for n in layout.values()).values(), reverse=True)


@pytest.mark.parametrize(("n", "spread", "lost_ok"), [
    (3, [2, 2, 1], 1),
    (4, [2, 1, 1, 1], 1),
    (5, [1, 1, 1, 1, 1], 2),
    (6, [1, 1, 1, 1, 1], 2),
    (7, [1, 1, 1, 1, 1], 2),
])
def test_shards_spread_so_that_losing_one_node_leaves_three(
        n: int, spread: list[int], lost_ok: int) -> None:
    pool = CLUSTER[:n]
    layout = choose_shard_nodes(pool)
    assert list(layout) == [0, 1, 2, 3, 4]
    assert per_node(layout) == spread
    assert survives(layout) == lost_ok
    # The data shards are on three distinct nodes: a reader needs no decoding.
    assert len({layout[i].url for i in range(3)}) == 3
    # The emptiest nodes are used, the emptiest of all takes a second shard first.
    ranked = choose_nodes(pool, n)
    assert {x.url for x in layout.values()} == {x.url for x in ranked[:5]}
    if n < 5:
        assert Counter(x.url for x in layout.values())[ranked[0].url] == 2
    for lost in pool:
        assert sum(x != lost for x in layout.values()) >= 3


@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_nodes_are_refused(n: int) -> None:
    with pytest.raises(PlacementError, match="a new chunk needs 3 nodes") as err:
        choose_shard_nodes(CLUSTER[:n])
    assert isinstance(err.value, VStackError)
    # Excluded nodes do not count.
    with pytest.raises(PlacementError):
        choose_shard_nodes(CLUSTER[:4], exclude=[x.url for x in CLUSTER[:4 - n]])


def test_repair_places_missing_shards_beside_the_ones_held() -> None:
    a, b, c, d, _lost, f = CLUSTER[:6]
    held = {0: a.url, 1: b.url, 2: c.url, 3: d.url}  # shard 4 was on a lost node
    # A node holding none of the chunk's shards is preferred, even a fuller one.
    assert choose_shard_nodes([a, b, c, d, f], [4], held=held) == {4: f}
    # With none free, the best-ranked node holding one takes a second.
    assert choose_shard_nodes([a, b, c, d], [4], held=held) == {4: b}
    # A node at two shards takes no more; the full layout still survives one loss.
    held = {0: a.url, 3: a.url}
    layout = choose_shard_nodes([a, b, c], [1, 2, 4], held=held)
    assert a not in layout.values()
    full = {**{i: next(x for x in CLUSTER if x.url == u) for i, u in held.items()}, **layout}
    assert survives(full) == 1
    with pytest.raises(PlacementError):
        choose_shard_nodes([a, b], [1, 2, 4], held=held)
    # A held entry for a shard being placed is being replaced: it does not count.
    assert choose_shard_nodes([a, b, c], [0, 3], held={0: a.url, 3: a.url}) == {0: b, 3: a}
    assert choose_shard_nodes([a], [0, 3], held={0: a.url, 3: a.url}) == {0: a, 3: a}


def test_shard_placement_follows_load_exclusions_and_turns() -> None:
    pool = [node(name, 25.0) for name in "pqrst"]
    assert per_node(choose_shard_nodes(pool, exclude=[pool[0].url, pool[1].url])) == [2, 2, 1]
    busy = choose_shard_nodes(pool[:3], load={pool[0].url: 3, pool[1].url: 3})
    assert [x for x in busy.values()].count(pool[2]) == 2
    firsts = {choose_shard_nodes(pool, turn=t)[0].url for t in range(5)}
    assert firsts == {x.url for x in pool}
    with pytest.raises(ValueError, match="shard indexes"):
        choose_shard_nodes(pool, [5])


@pytest.mark.parametrize(("layout", "needed", "expected"), [
    (["a"] * 5, 3, 0),
    (["a", "a", "a", "b", "b"], 3, 0),
    (["a", "b", "c", "a", "b"], 3, 1),
    (["a", "b", "c", "d", "a"], 3, 1),
    (["a", "b", "c", "d", "e"], 3, 2),
    (["a", "b", "c", "d", "e", "f"], 3, 3),
    (["a", "b"], 3, -1),
    ([], 3, -1),
    (["a", "b", "c"], 1, 2),  # 3 replicas
    (["a", "a", "b"], 1, 1),
    (["a"], 1, 0),
])
def test_survives_counts_the_worst_case_node_losses(layout: list[str], needed: int,
                                                    expected: int) -> None:
    assert survives(layout, needed=needed) == expected
    assert survives(dict(enumerate(layout)), needed=needed) == expected


def brute_force_survives(layout: Sequence[Hashable], needed: int) -> int:
    nodes = set(layout)
    best = -1
    for f in range(len(nodes) + 1):
        if all(sum(x not in lost for x in layout) >= needed for lost in combinations(nodes, f)):
            best = f
        else:
            break
    return best


@given(layout=st.lists(st.sampled_from("abcdef"), max_size=8), needed=st.integers(1, 4))
def test_survives_matches_its_definition(layout: list[str], needed: int) -> None:
    assert survives(layout, needed=needed) == brute_force_survives(layout, needed)


def test_survives_needs_a_positive_need() -> None:
    with pytest.raises(ValueError, match="needed"):
        survives(["a"], needed=0)


@given(pool=pools(), data=st.data())
def test_shard_layouts_always_survive_a_node_loss(pool: list[NodeInfo], data: st.DataObject) -> None:
    indexes = data.draw(st.sets(st.integers(0, 4), min_size=1))
    others = sorted(set(range(5)) - indexes)
    held_on = data.draw(st.lists(st.sampled_from(urls(pool)) if pool else st.nothing(),
                                 min_size=len(others) if pool else 0,
                                 max_size=len(others) if pool else 0))
    held = dict(zip(others, held_on, strict=False))
    if any(c > 2 for c in Counter(held.values()).values()):
        return  # no placement can mend a layout that is already unsafe
    try:
        layout = choose_shard_nodes(pool, indexes, held=held)
    except PlacementError:
        room = sum(max(0, 2 - Counter(held.values())[u]) for u in urls(pool))
        assert room < len(indexes)
        return
    assert set(layout) == indexes
    full = {**held, **{i: n.url for i, n in layout.items()}}
    assert max(Counter(full.values()).values()) <= 2
    if len(full) == 5:
        assert survives(full) >= 1
    if len(pool) >= 5 and not held:
        assert per_node(layout) == [1] * len(indexes)
