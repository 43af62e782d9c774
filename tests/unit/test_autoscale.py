"""The autoscaling policy, driven through simulated load on trio's autojump clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from skyward_trio._autoscale import Autoscaler, Load


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Simulated:
    """A pool whose nodes take ``boot`` seconds to come up, sampled every ``tick``."""

    def __init__(self, scaler: Autoscaler, target: int, *, boot: float = 0.0) -> None:
        self.scaler = scaler
        self.target = target
        self.boot = boot
        self.ready_at: list[float] = [0.0] * target  # when each node is ready
        self.changes: list[tuple[float, int]] = []

    async def run(
        self,
        until: float,
        queued: Callable[[float], int],
        idle_since: Callable[[float], float | None],
        tick: float = 1.0,
    ) -> None:
        while (now := trio.current_time()) < until:
            ready = sum(1 for t in self.ready_at if t <= now)
            load = Load(
                target=self.target,
                ready=ready,
                queued=queued(now),
                capacity=4,
                last_used=[idle_since(now)] * ready,
            )
            target = self.scaler.decide(now, load)
            if target > self.target:
                self.ready_at += [now + self.boot] * (target - self.target)
            elif target < self.target:
                del self.ready_at[target:]
            if target != self.target:
                self.changes.append((now, target))
                self.target = target
            await trio.sleep(tick)


async def test_grows_one_cooldown_at_a_time_up_to_the_ceiling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Simulated(Autoscaler(2, 5, cooldown=30, idle_timeout=60), 2)
    # Three calls keep waiting: one more node (4 slots) absorbs them, each cooldown.
    await pool.run(200, queued=lambda now: 3, idle_since=lambda now: None)
    assert pool.changes == [(0, 3), (30, 4), (60, 5)]


async def test_a_deep_queue_asks_for_enough_nodes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Simulated(Autoscaler(1, 16, cooldown=30, idle_timeout=60), 1)
    await pool.run(10, queued=lambda now: 17, idle_since=lambda now: None)
    assert pool.changes == [(0, 6)]  # ceil(17 / 4) = 5 more nodes


async def test_does_not_grow_while_nodes_are_still_starting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Simulated(Autoscaler(1, 8, cooldown=5, idle_timeout=60), 1, boot=50)
    await pool.run(100, queued=lambda now: 1, idle_since=lambda now: None)
    # Up at 0; the new node is ready at 50, and only then comes the next step.
    assert pool.changes == [(0, 2), (50, 3)]


async def test_shrinks_to_the_floor_after_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Simulated(Autoscaler(2, 8, cooldown=30, idle_timeout=60), 6)
    # Busy (nothing queued, every node working) until 100, then idle from 100 on.
    await pool.run(
        400,
        queued=lambda now: 0,
        idle_since=lambda now: None if now < 100 else 100.0,
    )
    assert pool.changes == [(160, 2)]  # all four extra nodes idle 60 s: back to the floor


async def test_never_shrinks_while_calls_queue(autojump_clock: trio.testing.MockClock) -> None:
    pool = Simulated(Autoscaler(2, 4, cooldown=0, idle_timeout=10), 4)
    await pool.run(100, queued=lambda now: 1, idle_since=lambda now: 0.0)
    assert pool.changes == []


async def test_a_resize_moves_the_bounds_and_restarts_the_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scaler = Autoscaler(2, 8, cooldown=30, idle_timeout=60)
    scaler.bounds(5, 8, now=0.0)
    busy = Load(target=2, ready=2, queued=0, capacity=4, last_used=[None, None])
    assert scaler.decide(1.0, busy) == 5  # the new floor applies at once, cooldown or not
    assert scaler.decide(2.0, Load(target=5, ready=5, queued=9, capacity=4)) == 5  # cooling
    assert scaler.decide(40.0, Load(target=5, ready=5, queued=9, capacity=4)) == 8
    scaler.bounds(1, 3, now=41.0)
    assert scaler.decide(42.0, Load(target=8, ready=8, queued=0, capacity=4)) == 3


def test_a_fixed_pool_never_moves() -> None:
    scaler = Autoscaler(3, 3, cooldown=0, idle_timeout=1)
    assert scaler.decide(100.0, Load(target=3, ready=3, queued=50, capacity=1)) == 3
    idle = Load(target=3, ready=3, queued=0, capacity=1, last_used=[0.0, 0.0, 0.0])
    assert scaler.decide(100.0, idle) == 3
