"""Elastic pools: ``nodes=(low, high)`` autoscaling and ``pool.resize``, on real Local nodes."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from waiting import wait_until

import skyward as sky
import skyward_trio

# Decide fast: a tick every 0.1 s, no cooldown, nodes idle 1 s leave.
FAST = sky.Options(
    console="silent",
    reconcile_tick_interval=0.1,
    autoscale_cooldown=0,
    autoscale_idle_timeout=1.0,
    worker=sky.Worker(concurrency=1),
)


@sky.function
def _nap(seconds: float, tag: int) -> tuple[int, int]:
    time.sleep(seconds)
    return tag, sky.instance_info().node


@sky.function
def _node_index() -> int:
    return sky.instance_info().node


_wait = functools.partial(wait_until, timeout=60, every=0.05)


def _node_processes(processes: Any, job_id: str, node: int) -> dict[int, str]:
    return {
        pid: cmd
        for pid, cmd in processes.of_job(job_id).items()
        if f"/node-{node} " in cmd or cmd.endswith(f"/node-{node}")
    }


def test_an_elastic_pool_grows_under_queued_calls_and_shrinks_when_idle(
    processes: Any,
) -> None:
    with sky.Compute(provider=sky.Local(), nodes=(1, 3), options=FAST) as pool:
        assert pool.current_nodes() == 1
        futures = [pool.run_async(_nap(1.0, k)) for k in range(8)]
        _wait(lambda: pool.current_nodes() == 3, "the pool to grow to its max of 3")
        results = [f.result(timeout=60) for f in futures]
        assert [tag for tag, _ in results] == list(range(8))  # each delivered once
        assert {node for _, node in results} > {0}  # the new nodes took calls
        _wait(lambda: pool.current_nodes() == 1, "the pool to shrink back to 1 when idle")
        _wait(
            lambda: (
                not _node_processes(processes, pool.job_id, 1)
                and not _node_processes(processes, pool.job_id, 2)
            ),
            "the nodes that left to stop",
            timeout=30,
        )
        assert _node_index() @ pool == [0]  # the head stays; broadcast sees who is ready
        assert _nap(0, 99) >> pool == (99, 0)


def test_resize_grows_and_shrinks_a_fixed_pool(processes: Any) -> None:
    options = sky.Options(console="silent")
    with sky.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
        pool.resize(3)
        _wait(lambda: pool.current_nodes() == 3, "three nodes after resize(3)")
        assert _node_index() @ pool == [0, 1, 2]
        assert _nap(0, 7).with_timeout(30) >> pool  # calls still run while it changes
        busy = pool.run_async(_nap(2.0, 2), target=2)
        time.sleep(0.5)  # let it start on node 2
        pool.resize(1)
        assert pool.current_nodes() == 1  # nodes that leave take no new calls at once
        assert busy.result(timeout=60) == (2, 2)  # ...but finish the ones they have
        _wait(lambda: not _node_processes(processes, pool.job_id, 2), "node 2 to stop")
        with pytest.raises(
            ValueError, match=r"target=2 is not a node of this pool; it has nodes 0"
        ):
            pool.run(_node_index(), target=2)
        pool.resize(2)  # the index that left is free again
        _wait(lambda: pool.current_nodes() == 2, "two nodes after resize(2)")
        assert _node_index() @ pool == [0, 1]
    # After the pool closed, pool.events() still replays its lifecycle.
    scaled = [e for e in pool.events() if isinstance(e, sky.ClusterScaled)]
    assert [(e.previous, e.target, e.reason) for e in scaled] == [
        (1, 3, "resize()"),
        (3, 1, "resize()"),
        (1, 2, "resize()"),
    ]


@pytest.mark.parametrize(
    ("nodes", "error", "match"),
    [
        (0, ValueError, r"resize\(0\): a pool needs at least 1 node"),
        ("2", TypeError, r"resize\(\) takes a node count or a sky.Nodes\(...\), got str"),
        (True, TypeError, r"got bool"),
        (5, ValueError, r"resize\(5\) is above this elastic pool's max=3; pass "),
    ],
)
def test_resize_refuses_bad_targets(
    nodes: object, error: type[Exception], match: str, sync_elastic: sky.Pool
) -> None:
    with pytest.raises(error, match=match):
        sync_elastic.resize(nodes)  # type: ignore[arg-type]
    assert sync_elastic.current_nodes() == 1


@pytest.fixture(scope="module")
def sync_elastic() -> Iterator[sky.Pool]:
    with sky.Compute(
        provider=sky.Local(), nodes=(1, 3), options=sky.Options(console="silent")
    ) as pool:
        yield pool


def test_resize_with_nodes_changes_the_autoscaling_range() -> None:
    with sky.Compute(provider=sky.Local(), nodes=(1, 2), options=FAST) as pool:
        pool.resize(sky.Nodes(desired=2, max=2))  # now fixed at 2: idle nodes stay
        _wait(lambda: pool.current_nodes() == 2, "two nodes")
        time.sleep(2.0)  # longer than the idle timeout
        assert pool.current_nodes() == 2


async def test_trio_face_resize_and_calls_pinned_to_a_node_that_leaves() -> None:
    options = skyward_trio.Options(console="silent")
    async with skyward_trio.Compute(
        provider=skyward_trio.Local(), nodes=2, options=options
    ) as pool:
        blocker = await pool.run_async(_nap(2.0, 0), target=1)
        await trio.sleep(0.5)
        waiting = await pool.run_async(_node_index(), target=1)  # queued behind it
        await trio.sleep(0.2)
        pool.resize(1)
        assert await blocker.result() == (0, 1)
        with pytest.raises(skyward_trio.PoolClosedError, match="node 1 left the pool"):
            await waiting.result()
        assert pool.current_nodes() == 1
        assert await pool.broadcast(_node_index()) == [0]
