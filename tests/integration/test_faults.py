"""Lost nodes: calls on them are sent again elsewhere, results arrive exactly once, and
the node is replaced. Faults come from the fault kit (``sky.testing``)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_until

import skyward as sky
from skyward import testing

QUIET = sky.Options(console="silent")


@pytest.fixture
def pool() -> Iterator[sky.Pool]:
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        yield pool


_wait = functools.partial(wait_until, timeout=30, every=0.02)


@sky.function
def _mark_then_sleep(tag: str, directory: str, seconds: float) -> tuple[str, int]:
    Path(directory, f"{tag}.{os.getpid()}.started").touch()
    time.sleep(seconds)
    return tag, sky.instance_info().node


def _started(directory: Path, tag: str) -> bool:
    return any(directory.glob(f"{tag}.*.started"))


def test_calls_on_a_preempted_node_run_again_elsewhere(pool: sky.Pool, tmp_path: Path) -> None:
    on_node_1 = pool.run_async(_mark_then_sleep("b", str(tmp_path), 1.0), target=None)
    on_node_0 = pool.run_async(_mark_then_sleep("a", str(tmp_path), 1.0), target=None)
    _wait(lambda: _started(tmp_path, "a") and _started(tmp_path, "b"), "both calls to start")
    victim = 1
    testing.preempt(pool, victim)
    results = sorted([on_node_0.result(timeout=60), on_node_1.result(timeout=60)])
    assert [tag for tag, _ in results] == ["a", "b"]  # each delivered once
    _wait(lambda: pool.current_nodes() == 2, "the replacement node")
    assert sorted(_node_index() @ pool) == [0, 1]


@sky.function
def _node_index() -> int:
    return sky.instance_info().node


@sky.function
def _record(x: int, directory: str) -> int:
    Path(directory, f"{x}.{os.getpid()}.{time.monotonic_ns()}").touch()
    time.sleep(0.002)
    return x * 3


def test_map_survives_a_lost_node_with_every_result_exactly_once(
    pool: sky.Pool, tmp_path: Path
) -> None:
    items = list(range(1500))
    future = _mapper_future(pool, items, str(tmp_path))
    _wait(lambda: len(os.listdir(tmp_path)) > 100, "the map to get going")
    testing.kill_worker(pool, 1)
    assert future.result(timeout=120) == [x * 3 for x in items]  # type: ignore[attr-defined]
    executed = {int(name.split(".")[0]) for name in os.listdir(tmp_path)}
    assert executed == set(items)  # every item ran; only a lost batch may have run twice


def _run_map(pool: sky.Pool, items: list[int], directory: str) -> list[int]:
    return pool.map(lambda x: _record.fn(x, directory), items)


# pool.map blocks; run it from a thread through a plain future instead of a remote call.
def _mapper_future(pool: sky.Pool, items: list[int], directory: str) -> object:
    import concurrent.futures

    executor = concurrent.futures.ThreadPoolExecutor(1)
    future = executor.submit(_run_map, pool, items, directory)
    executor.shutdown(wait=False)
    return future


def test_a_pinned_call_waits_for_its_node_replacement(pool: sky.Pool, tmp_path: Path) -> None:
    future = pool.run_async(_mark_then_sleep("pinned", str(tmp_path), 1.0), target=1)
    _wait(lambda: _started(tmp_path, "pinned"), "the call to start")
    testing.preempt(pool, 1)
    assert future.result(timeout=60) == ("pinned", 1)  # ran again on the new node 1


def test_too_many_interruptions_fail_with_every_attempt_listed(tmp_path: Path) -> None:
    options = sky.Options(console="silent", retry_on_interruption=0)
    with sky.Compute(provider=sky.Local(), nodes=2, options=options) as pool:
        future = pool.run_async(_mark_then_sleep("once", str(tmp_path), 5.0), target=0)
        _wait(lambda: _started(tmp_path, "once"), "the call to start")
        testing.preempt(pool, 0)
        with pytest.raises(
            sky.ConnectionLostError,
            match=r"interrupted 1 time; that is more than .*retry_on_interruption=0.*node 0",
        ):
            future.result(timeout=60)


def test_the_fault_kit_refuses_what_it_cannot_do(pool: sky.Pool) -> None:
    with pytest.raises(ValueError, match="not ready"):
        testing.preempt(pool, 7)
    with pytest.raises(TypeError, match="pool"):
        testing.kill_worker(object(), 0)


def test_on_exit_the_pool_reports_every_instance_it_paid_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with sky.Compute(provider=sky.Local(), nodes=2) as pool:
        testing.preempt(pool, 1)
        supervisor = pool._core._supervisor
        assert supervisor is not None
        _wait(lambda: supervisor.ledger.instances == 3, "a replacement to be provisioned")
        _wait(lambda: pool.current_nodes() == 2, "the replacement node")
    lines = capsys.readouterr().err.splitlines()
    assert any(line.endswith(f"(job {pool.job_id})") for line in lines), lines
    summary = [line for line in lines if "  pool  closed: " in line]
    # Two nodes and one replacement, each billed from provisioned to terminated; Local is free.
    assert len(summary) == 1, lines
    assert " 3 instance(s) up " in summary[0]
    assert summary[0].endswith("cost about $0.00")
