"""Byte budgets: first come first served, nested, and nothing leaks on cancellation."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nodes.net.bounds import ByteBudget, default_max_connections


async def test_reservations_are_granted_in_arrival_order(autojump_clock: trio.testing.MockClock) -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    granted: list[str] = []

    async def take(name: str, n: int) -> None:
        await budget.acquire(n)
        granted.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "big", 80)
        await trio.sleep(1)
        nursery.start_soon(take, "small", 10)  # would fit now, but waits behind "big"
        await trio.sleep(1)
        assert granted == []
        assert budget.statistics().waiting == 2
        budget.release(60)
    assert sorted(granted) == ["big", "small"]
    assert budget.statistics().in_use == 90
    assert budget.statistics().peak == 90


async def test_a_child_reservation_must_fit_its_parent_too(autojump_clock: trio.testing.MockClock) -> None:
    node = ByteBudget(100)
    a, b = ByteBudget(60, parent=node), ByteBudget(60, parent=node)
    await a.acquire(60)
    with trio.move_on_after(5):
        await b.acquire(60)  # fits b, not the node
        raise AssertionError("over the parent's budget")
    assert (b.statistics().in_use, node.statistics().in_use) == (0, 60)  # nothing leaked
    a.release(60)
    await b.acquire(60)
    assert node.statistics().in_use == 60
    with pytest.raises(ValueError, match="never fit"):
        await b.acquire(61)
    with pytest.raises(ValueError, match="larger than its parent"):
        ByteBudget(101, parent=node)


async def test_cancelled_waiters_leave_nothing_behind(autojump_clock: trio.testing.MockClock) -> None:
    budget = ByteBudget(10)
    await budget.acquire(10)
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(budget.acquire, 5)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    budget.release(10)
    assert budget.statistics().in_use == 0
    assert budget.statistics().waiting == 0
    await budget.acquire(10)


def test_the_default_connection_cap_follows_the_descriptor_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = 1024 if soft == resource.RLIM_INFINITY else max(16, min(1024, soft // 4))
    assert default_max_connections() == expected
