"""``pool.events()``: a pool's life as events, in order, in both faces (real Local nodes)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio
import trio.lowlevel

import skyward as sky
import skyward_trio
from skyward import testing

QUIET = sky.Options(console="silent")


@sky.function
def _shout(text: str) -> str:
    print(text)
    return text


@sky.function
def _boom() -> None:
    raise ValueError("boom")


@sky.function
def _nap(seconds: float) -> None:
    time.sleep(seconds)


def _double(x: int) -> int:
    return 2 * x


def _kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def _check_start_up(events: list[Any], nodes: int) -> None:
    """A pool's first events: requested, each node's phases in order, then ready."""
    kinds = _kinds(events)
    assert kinds[0] == "ClusterRequested"
    assert events[0].nodes == sky.Nodes(desired=nodes)
    ready = kinds.index("ClusterReady")
    provisioned = kinds.index("ClusterProvisioned")
    for node in range(nodes):
        mine = [
            (type(e).__name__, getattr(e, "phase", None))
            for e in events[:ready]
            if getattr(e, "node", None) == node
        ]
        assert mine == [
            ("InstanceProvisioned", None),
            ("BootstrapProgress", "ssh"),
            ("BootstrapProgress", "bootstrap"),
            ("BootstrapProgress", "worker"),
            ("InstanceBootstrapped", None),
        ]
        first = next(i for i, e in enumerate(events) if getattr(e, "node", None) == node)
        assert first < provisioned < kinds.index("BootstrapProgress")
    assert events[ready].nodes == nodes
    # (A Metric's time is when its node sampled it, which may be before it arrived.)
    times = [e.time for e in events if not isinstance(e, sky.Metric)]
    assert times == sorted(times)
    assert {e.job_id for e in events} == {events[0].job_id}


async def test_trio_face_events_follow_the_pool_from_request_to_destroyed() -> None:
    seen: list[Any] = []
    replayed = trio.Event()
    options = skyward_trio.Options(console="silent")
    async with (
        trio.open_nursery() as nursery,
        skyward_trio.Compute(provider=skyward_trio.Local(), nodes=2, options=options) as pool,
    ):

        async def read() -> None:
            async for event in pool.events():
                seen.append(event)
                if isinstance(event, skyward_trio.ClusterReady):
                    replayed.set()

        nursery.start_soon(read)
        with trio.fail_after(30):
            await replayed.wait()
        _check_start_up(seen, 2)  # the lifecycle so far is replayed to a new reader
        mark = len(seen)
        assert await pool.run(_shout("hello there")) == "hello there"
        with pytest.raises(ValueError, match="boom"):
            await pool.run(_boom())
        with pytest.raises(skyward_trio.TaskTimeoutError):
            await pool.run(_nap(5).with_timeout(0.3))
        with trio.move_on_after(0.3):
            await pool.run(_nap(5))
        assert await pool.map(_double, range(500)) == [2 * x for x in range(500)]
        await trio.sleep(0.1)
        during = seen[mark:]
        # The reader ends by itself once the pool is gone.
    tasks = [e for e in during if isinstance(e, skyward_trio.TaskCompleted)]
    assert [(e.task, e.ok, e.failure) for e in tasks[:4]] == [
        ("_shout", True, ""),
        ("_boom", False, "failed"),
        ("_nap", False, "timed out"),
        ("_nap", False, "cancelled"),
    ]
    assert sum(e.count for e in tasks if e.task == "map") == 500
    assert all(e.ok for e in tasks if e.task == "map")
    submitted = [e for e in during if isinstance(e, skyward_trio.WorkSubmitted)]
    assert [(e.task, e.count) for e in submitted] == [("map", 500)]  # its size, for progress
    first_batch = next(
        e for e in during if isinstance(e, skyward_trio.TaskStarted) and e.task == "map"
    )
    assert during.index(submitted[0]) < during.index(first_batch)
    started = {e.task_id for e in during if isinstance(e, skyward_trio.TaskStarted)}
    assert {e.task_id for e in tasks} == started  # every started task completed, once
    logs = [e for e in during if isinstance(e, skyward_trio.Log)]
    assert [(e.stream, e.text) for e in logs] == [("stdout", "hello there\n")]
    end = _kinds(seen)[-3:]
    assert end == ["InstanceDestroyed", "InstanceDestroyed", "ClusterDestroyed"]
    destroyed = seen[-1]
    assert (destroyed.instances, destroyed.cost) == (2, 0.0)
    assert destroyed.instance_seconds > 0


def test_sync_face_events_show_a_lost_node_preempted_and_replaced() -> None:
    seen: list[Any] = []
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        stream = pool.events()
        reader = threading.Thread(target=lambda: seen.extend(stream), daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while "ClusterReady" not in _kinds(seen) and time.monotonic() < deadline:
            time.sleep(0.02)
        lost = pool._core._ready[1].instance.id
        testing.preempt(pool, 1)
        while "InstanceReplaced" not in _kinds(seen) and time.monotonic() < deadline:
            time.sleep(0.02)
    reader.join(timeout=30)
    assert not reader.is_alive(), "the events generator did not end with the pool"
    _check_start_up(seen, 2)
    after = seen[_kinds(seen).index("ClusterReady") + 1 :]
    # Its lifecycle: the metric samples node 1 sends while it runs may come in between.
    node_1 = [e for e in after if getattr(e, "node", None) == 1 and not isinstance(e, sky.Metric)]
    assert _kinds(node_1)[:3] == ["InstancePreempted", "InstanceDestroyed", "InstanceProvisioned"]
    preempted, destroyed, provisioned = node_1[:3]
    assert preempted.instance_id == destroyed.instance_id == lost
    replaced = next(e for e in node_1 if isinstance(e, sky.InstanceReplaced))
    assert (replaced.old_instance_id, replaced.instance_id) == (lost, provisioned.instance_id)
    assert _kinds(seen)[-1] == "ClusterDestroyed"
    assert seen[-1].instances == 3


def test_a_reader_that_stops_early_detaches() -> None:
    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        stream = pool.events()
        assert type(next(stream)).__name__ == "ClusterRequested"
        stream.close()
        assert not pool._core._events.watched
        assert _shout("x") >> pool == "x"


def test_the_sync_iterator_subscribes_when_made_not_when_first_read() -> None:
    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        with pool.events() as stream:
            assert pool._core._events.watched  # before any next()
            assert _shout("early") >> pool == "early"
            seen: list[Any] = []
            for event in stream:  # read only now, after the call returned
                seen.append(event)
                if isinstance(event, sky.TaskCompleted):
                    break
        assert not pool._core._events.watched
    kinds = _kinds(seen)
    assert kinds.index("ClusterReady") < kinds.index("TaskStarted") < kinds.index("TaskCompleted")
    assert any(isinstance(e, sky.Log) and e.text == "early\n" for e in seen)


def test_a_sync_iterator_dropped_unread_stops_queueing() -> None:
    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        stream = pool.events()
        assert pool._core._events.watched
        del stream  # never read, never closed
        # The loop detaches it soon after (the collector hands it over, never waits).
        deadline = time.monotonic() + 10
        while pool._core._events.watched and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pool._core._events.watched
