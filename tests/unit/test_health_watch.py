"""When a node counts as unhealthy, on trio's virtual clock (no sleeps, exact times)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from skyward_trio import HealthChecker, SerializationError
from skyward_trio._health import probe_payload, watch


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def _probe(
    answers: list[str | float | None],
) -> tuple[Callable[[], Awaitable[str | None]], list[float]]:
    """A probe that answers from ``answers`` in turn (a float: hang that long first, then
    pass); returns it and the virtual times it was called at."""
    calls: list[float] = []

    async def probe() -> str | None:
        calls.append(trio.current_time())
        answer = answers.pop(0)
        if isinstance(answer, float):
            await trio.sleep(answer)
            return None
        return answer

    return probe, calls


async def test_a_node_failing_every_probe_is_unhealthy_after_failures_probes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    checker = HealthChecker(lambda: True, interval=10.0, failures=3, timeout=2.0)
    probe, calls = _probe(["disk full", "disk full", "GPU gone"])
    start = trio.current_time()
    reason = await watch(checker, probe, lambda: False)
    assert reason == "health check failed 3 times in a row: GPU gone"
    assert [t - start for t in calls] == [10.0, 20.0, 30.0]
    assert trio.current_time() - start == 30.0


async def test_a_passing_probe_resets_the_count(autojump_clock: trio.testing.MockClock) -> None:
    checker = HealthChecker(lambda: True, interval=1.0, failures=2, timeout=5.0)
    probe, calls = _probe(["bad", None, "bad", None, "bad", "worse"])
    reason = await watch(checker, probe, lambda: False)
    assert reason == "health check failed 2 times in a row: worse"
    assert len(calls) == 6


async def test_a_probe_that_does_not_answer_in_time_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    checker = HealthChecker(lambda: True, interval=10.0, failures=2, timeout=3.0)
    # The first answers just in time (passes); the next two hang past the timeout.
    probe, calls = _probe([2.5, 3600.0, 3600.0])
    start = trio.current_time()
    reason = await watch(checker, probe, lambda: False)
    assert reason == "health check failed 2 times in a row: the probe did not answer within 3 s"
    # Each interval runs from the previous answer (or give-up) to the next probe.
    assert [t - start for t in calls] == [10.0, 22.5, 35.5]
    assert trio.current_time() - start == 38.5


async def test_one_failure_is_enough_when_failures_is_1(
    autojump_clock: trio.testing.MockClock,
) -> None:
    checker = HealthChecker(lambda: True, interval=5.0, failures=1)
    probe, _ = _probe([None, "out of memory"])
    assert await watch(checker, probe, lambda: False) == "health check failed once: out of memory"


async def test_no_probe_runs_and_no_verdict_is_given_once_the_pool_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    checker = HealthChecker(lambda: True, interval=1.0, failures=1, timeout=10.0)
    closing = threading.Event()

    async def probe() -> str | None:
        calls.append(trio.current_time())
        closing.set()  # the pool starts closing while this probe is out
        return "it failed, but the pool is closing"

    calls: list[float] = []
    assert await watch(checker, probe, closing.is_set) is None
    assert len(calls) == 1
    calls.clear()
    assert await watch(checker, probe, closing.is_set) is None
    assert calls == []  # closing before the first probe: none is sent


def test_a_probe_that_does_not_pickle_is_refused_naming_it() -> None:
    lock = threading.Lock()

    def holds_a_lock() -> bool:
        return lock.acquire(blocking=False)

    with pytest.raises(SerializationError, match=r"HealthChecker\(probe=.*holds_a_lock.*pickle"):
        probe_payload(HealthChecker(holds_a_lock))
