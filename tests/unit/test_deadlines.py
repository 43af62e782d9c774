"""The pool's deadline watcher, on trio's virtual clock (no sleeps, exact times)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from skyward_trio._pool import _Deadlines


class _Call:
    """What the watcher needs of an in-flight call: a deadline, finished, expire()."""

    def __init__(self, deadline: float, log: list[tuple[str, float]], name: str) -> None:
        self.deadline = deadline
        self.finished = False
        self._log = log
        self._name = name

    def expire(self) -> None:
        self.finished = True
        self._log.append((self._name, trio.current_time()))


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_calls_expire_at_their_deadlines(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, float]] = []
    deadlines = _Deadlines()
    async with trio.open_nursery() as nursery:
        await nursery.start(deadlines.watch)
        start = trio.current_time()
        for name, after in (("b", 10.0), ("a", 5.0), ("c", 20.0)):
            deadlines.add(_Call(start + after, log, name))  # type: ignore[arg-type]
        done = _Call(start + 7.0, log, "finished-early")
        deadlines.add(done)  # type: ignore[arg-type]
        done.finished = True  # its reply came first: it must never expire
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert [(name, at - start) for name, at in log] == [("a", 5.0), ("b", 10.0), ("c", 20.0)]


async def test_an_earlier_deadline_wakes_the_watcher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, float]] = []
    deadlines = _Deadlines()
    async with trio.open_nursery() as nursery:
        await nursery.start(deadlines.watch)
        start = trio.current_time()
        deadlines.add(_Call(start + 300.0, log, "late"))  # type: ignore[arg-type]
        await trio.sleep(1)
        deadlines.add(_Call(start + 2.0, log, "soon"))  # type: ignore[arg-type]
        await trio.sleep(400)
        nursery.cancel_scope.cancel()
    assert [(name, at - start) for name, at in log] == [("soon", 2.0), ("late", 300.0)]


def test_finished_entries_are_dropped_as_they_pile_up() -> None:
    async def main() -> int:
        deadlines = _Deadlines()
        log: list[tuple[str, float]] = []
        for i in range(5000):
            call = _Call(1e9 + i, log, str(i))
            deadlines.add(call)  # type: ignore[arg-type]
            call.finished = True
            deadlines.finished()
        return len(deadlines._heap)

    assert trio.run(main) <= 1024 + 2
