"""Health checks on real Local nodes: a node failing its probe is replaced like a lost one
(its calls are sent again, every result arrives once); a merely busy node is not.

Probes look at files in the node's working directory (their current directory on the
node): a test marks one node sick by writing there, and its replacement starts from a
clean directory, healthy.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import time
from pathlib import Path

import pytest
from waiting import wait_until

import skyward as sky

SICK = {
    "sick": "the probe returned False",
    "broken": "the probe raised OSError: the disk is read-only",
    # The first probe times out; the next fails at once, as that one still hangs.
    "hang": "the previous probe has not returned after",
}


def _probe() -> bool:
    if os.path.exists("hang"):
        time.sleep(3600)
    if os.path.exists("broken"):
        raise OSError("the disk is read-only")
    return not os.path.exists("sick")


def _record(x: int, directory: str) -> int:
    Path(directory, f"{x}.{os.getpid()}.{time.monotonic_ns()}").touch()
    if any(os.path.exists(marker) for marker in SICK):
        time.sleep(120)  # a sick node's tasks hang too: only a replacement rescues them
    time.sleep(0.005)
    return x * 3


@sky.function
def _node_index() -> int:
    return sky.instance_info().node


_wait = functools.partial(wait_until, timeout=60, every=0.02)


@pytest.mark.parametrize("marker", sorted(SICK))
def test_a_node_failing_its_probe_is_replaced_and_its_calls_run_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], marker: str
) -> None:
    checker = sky.HealthChecker(_probe, interval=0.2, failures=2, timeout=1.0)
    options = sky.Options(health_checker=checker)
    records = tmp_path / "records"
    records.mkdir()
    with sky.Compute(provider=sky.Local(), nodes=2, options=options) as pool:
        core = pool._core
        sick = core._ready[1].instance
        items = list(range(600))
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            mapped = executor.submit(pool.map, lambda x: _record(x, str(records)), items)
            _wait(lambda: len(os.listdir(records)) > 20, "the map to get going")
            Path(sick.workdir, marker).touch()
            assert mapped.result(timeout=120) == [x * 3 for x in items]
        _wait(lambda: 1 in core._ready, "node 1's replacement")
        replacement = core._ready[1].instance
        assert replacement.id != sick.id
        assert replacement.node == 1
        assert sorted(_node_index() @ pool) == [0, 1]
        assert {int(name.split(".")[0]) for name in os.listdir(records)} == set(items)
    reason = f"health check failed 2 times in a row: {SICK[marker]}"
    assert f"  node 1  lost ({reason}" in capsys.readouterr().err  # the log console says why


def _count_probe() -> bool:
    with open("probes.log", "a") as log:
        log.write("probed\n")
    return True


def _probes_so_far() -> int:
    try:
        with open("probes.log") as log:
            return len(log.readlines())
    except FileNotFoundError:
        return 0


@sky.function
def _busy(seconds: float) -> tuple[int, int]:
    before = _probes_so_far()
    time.sleep(seconds)
    return before, _probes_so_far()


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_busy_node_still_answers_its_probe_and_is_kept(executor: str) -> None:
    # Every task slot is taken for far longer than interval * failures (and than the
    # probe's timeout): a probe queued behind the task would fail and the node be replaced.
    checker = sky.HealthChecker(_count_probe, interval=0.1, failures=2, timeout=0.5)
    options = sky.Options(
        console="silent",
        health_checker=checker,
        worker=sky.Worker(concurrency=1, executor=executor),  # type: ignore[arg-type]
    )
    with sky.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
        core = pool._core
        instance = core._ready[0].instance
        before, after = _busy(4.0) >> pool
        assert after - before >= 3  # probes ran, and passed, while the only slot was busy
        assert core._ready[0].instance.id == instance.id


def test_leaving_a_pool_whose_probe_hangs_ends_everything(processes) -> None:
    def hangs() -> bool:
        threading.Event().wait()
        return True

    checker = sky.HealthChecker(hangs, interval=0.05, failures=1000, timeout=600)
    options = sky.Options(console="silent", health_checker=checker)
    with sky.Compute(provider=sky.Local(), nodes=2, options=options) as pool:
        job = pool.job_id
        _wait(lambda: any(pool._core._ready[i].conn._probes for i in (0, 1)), "a probe")
        assert sorted(_node_index() @ pool) == [0, 1]
    assert not processes.wait_until_gone(processes.of_job(job), limit=15)


def test_a_probe_that_does_not_pickle_fails_when_the_pool_is_made() -> None:
    lock = threading.Lock()

    def holds_a_lock() -> bool:
        return lock.locked()

    options = sky.Options(health_checker=sky.HealthChecker(holds_a_lock))
    with pytest.raises(sky.SerializationError, match=r"HealthChecker\(probe=.*cannot be pickled"):
        sky.Compute(provider=sky.Local(), nodes=1, options=options)
