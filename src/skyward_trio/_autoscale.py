"""When an elastic pool grows or shrinks: pure decisions, no I/O.

The pool's supervisor samples its load every ``Options.reconcile_tick_interval`` and asks
:class:`Autoscaler` for a target; choosing which nodes to add or drop is the supervisor's.
Keeping the policy free of trio and of the pool lets the tests drive it with a fake clock.

Layer 1: stdlib and attrs only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs


@attrs.frozen
class Load:
    """The pool at one instant, as the autoscaler sees it.

    Attributes:
        target: How many nodes the pool aims at now.
        ready: How many of them are ready.
        queued: Calls waiting for a free slot on any node (pinned calls do not count:
            a new node cannot take them).
        capacity: Slots per node (``Worker.concurrency + buffer``).
        last_used: For each ready node, when it last finished its work, or None while
            it has calls in flight.
    """

    target: int
    ready: int
    queued: int
    capacity: int
    last_used: Sequence[float | None] = ()


class Autoscaler:
    """Moves a pool's target between ``floor`` and ``ceiling``.

    Up: when calls queue and every node of the current target is ready (nodes still
    starting will take them), by enough nodes to give each queued call a slot. Down: when
    nothing queues, by the nodes idle for at least ``idle_timeout``. At most one change
    per ``cooldown`` seconds, so a burst does not make it thrash.
    """

    def __init__(self, floor: int, ceiling: int, *, cooldown: float, idle_timeout: float) -> None:
        self.floor = floor
        self.ceiling = ceiling
        self.cooldown = cooldown
        self.idle_timeout = idle_timeout
        self.last_change = -math.inf

    def bounds(self, floor: int, ceiling: int, now: float) -> None:
        """New limits (``pool.resize``); a resize counts as a change for the cooldown."""
        self.floor = floor
        self.ceiling = ceiling
        self.last_change = now

    def decide(self, now: float, load: Load) -> int:
        """The target the pool should have now."""
        target = load.target
        want = min(max(target, self.floor), self.ceiling)
        if want == target and now - self.last_change >= self.cooldown:
            if load.queued and load.ready >= target:
                want = min(self.ceiling, target + math.ceil(load.queued / load.capacity))
            elif not load.queued:
                idle = sum(
                    1 for t in load.last_used if t is not None and now - t >= self.idle_timeout
                )
                want = max(self.floor, target - idle)
        if want != target:
            self.last_change = now
        return want
