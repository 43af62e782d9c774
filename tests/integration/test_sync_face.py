"""The sync face (``import skyward as sky``) against real Local nodes.

Most tests share the session's two-node pool (``sync_pool``); the teardown tests make their
own, since tearing down is what they check. Where the order in which results arrive is the
point, the test holds a remote call on a file it creates itself, so nothing depends on how
fast this machine is.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
import socket
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

import skyward as sky

if TYPE_CHECKING:
    from conftest import Processes

SILENT = sky.Options(console="silent")

# -- remote functions ------------------------------------------------------------------------


@sky.function
def double(x: int) -> int:
    return x * 2


@sky.function
def node_index() -> int:
    return sky.instance_info().node


@sky.function
def tagged(tag: str) -> tuple[str, int]:
    return tag, sky.instance_info().node


@sky.function
def wait_then_return(path: str, value: str) -> str:
    """Return ``value`` once ``path`` exists (the caller decides when this call ends)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


@sky.function
def touch_then_return(path: str, value: str) -> str:
    Path(path).touch()
    return value


@sky.function
def describe_instance() -> dict[str, object]:
    info = sky.instance_info()
    return {
        "info": info,
        "is_head": sky.is_head(),
        "is_head_of_info": sky.is_head(info),
        "hostname": info.hostname,
        "global_worker_index": info.global_worker_index,
        "total_workers": info.total_workers,
    }


@sky.function
def my_shard(data: list[int], shuffle: bool) -> list[int]:
    return sky.shard(data, shuffle=shuffle, seed=7)


@sky.function
def echo(value: object) -> object:
    return value


def triple(x: int) -> int:
    return x * 3


# -- dispatch operators ----------------------------------------------------------------------


def test_rshift_returns_the_value(sync_pool: sky.Pool) -> None:
    assert double(21) >> sync_pool == 42


def test_rshift_round_robins_over_both_nodes(sync_pool: sky.Pool) -> None:
    first = node_index() >> sync_pool
    second = node_index() >> sync_pool
    assert {first, second} == {0, 1}


def test_matmul_broadcasts_in_node_order(sync_pool: sky.Pool) -> None:
    assert node_index() @ sync_pool == [0, 1]


def test_and_group_returns_a_tuple_in_order(sync_pool: sky.Pool) -> None:
    result = (double(1) & double(2) & tagged("c")) >> sync_pool
    assert isinstance(result, tuple)
    assert result[:2] == (2, 4)
    assert result[2][0] == "c"


def test_gt_returns_a_concurrent_future(sync_pool: sky.Pool) -> None:
    future = double(5) > sync_pool
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=30) == 10


def test_gather_returns_a_tuple(sync_pool: sky.Pool) -> None:
    result = sky.gather(double(1), double(2), double(3)) >> sync_pool
    assert result == (2, 4, 6)


def test_streaming_gather_keeps_submission_order(sync_pool: sky.Pool, tmp_path: Path) -> None:
    # The first call cannot finish before the second one has run.
    flag = str(tmp_path / "second-ran")
    stream = (
        sky.gather(wait_then_return(flag, "slow"), touch_then_return(flag, "fast"), stream=True)
        >> sync_pool
    )
    assert isinstance(stream, types.GeneratorType)
    assert list(stream) == ["slow", "fast"]


def test_unordered_streaming_gather_yields_the_first_finished(
    sync_pool: sky.Pool, tmp_path: Path
) -> None:
    # The slow call is held until the fast result has reached us.
    release = tmp_path / "release"
    stream = (
        sky.gather(wait_then_return(str(release), "slow"), double(4), stream=True, ordered=False)
        >> sync_pool
    )
    try:
        first = next(stream)
    finally:
        release.touch()
    assert first == 8
    assert list(stream) == ["slow"]


# -- pool methods ----------------------------------------------------------------------------


def test_run_with_target(sync_pool: sky.Pool) -> None:
    assert sync_pool.run(node_index(), target="head") == 0
    assert sync_pool.run(node_index(), target=1) == 1
    assert sync_pool.run(node_index(), target=0) == 0
    assert sync_pool.run(double(3)) == 6


def test_run_async(sync_pool: sky.Pool) -> None:
    futures = [sync_pool.run_async(node_index(), target=i) for i in (1, 0)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert [f.result(timeout=30) for f in futures] == [1, 0]
    assert sync_pool.run_async(double(7)).result(timeout=30) == 14


def test_broadcast(sync_pool: sky.Pool) -> None:
    assert sync_pool.broadcast(tagged("b")) == [("b", 0), ("b", 1)]


def test_run_parallel(sync_pool: sky.Pool, tmp_path: Path) -> None:
    assert sync_pool.run_parallel(double(1) & double(2)) == (2, 4)
    flag = str(tmp_path / "second-ran")
    streamed = sync_pool.run_parallel(
        sky.gather(wait_then_return(flag, "a"), touch_then_return(flag, "b"), stream=True)
    )
    assert isinstance(streamed, Iterator)
    assert list(streamed) == ["a", "b"]


def test_map_with_an_undecorated_lambda(sync_pool: sky.Pool) -> None:
    assert sync_pool.map(lambda x: x + 1, [3, 1, 2]) == [4, 2, 3]


def test_map_with_a_decorated_function(sync_pool: sky.Pool) -> None:
    assert sync_pool.map(double, range(10)) == [x * 2 for x in range(10)]


def test_map_with_a_plain_module_function(sync_pool: sky.Pool) -> None:
    assert sync_pool.map(triple, [1, 2, 3]) == [3, 6, 9]


def test_map_keeps_input_order_over_many_items(sync_pool: sky.Pool) -> None:
    items = list(range(20_000))
    assert sync_pool.map(triple, items) == [x * 3 for x in items]


def test_map_of_an_empty_input(sync_pool: sky.Pool) -> None:
    assert sync_pool.map(triple, []) == []


def test_map_consumes_a_generator_lazily(sync_pool: sky.Pool, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    ran.mkdir()
    some_ran_before_last: list[bool] = []

    def mark(x: int) -> int:
        (ran / str(x)).touch()
        return -x

    def items() -> Iterator[int]:
        for i in range(200):
            if i == 199:
                # Not materialised up front: by the time the last item is pulled, some
                # earlier item has already run on a node.
                some_ran_before_last.append(any(ran.iterdir()))
            yield i

    assert sync_pool.map(mark, items()) == [-i for i in range(200)]
    assert some_ran_before_last == [True]


def test_current_nodes(sync_pool: sky.Pool) -> None:
    assert sync_pool.current_nodes() == 2


def test_job_id(sync_pool: sky.Pool) -> None:
    assert isinstance(sync_pool.job_id, str)
    assert sync_pool.job_id


def test_dispatch_to_sky_outside_any_pool_raises() -> None:
    with pytest.raises(sky.NoActivePoolError, match=r"needs an active pool.*sky\.Compute"):
        double(1) >> sky
    with pytest.raises(sky.NoActivePoolError, match="active pool"):
        double(1) @ sky
    with pytest.raises(sky.NoActivePoolError, match="active pool"):
        _ = double(1) > sky
    with pytest.raises(sky.NoActivePoolError, match="active pool"):
        (double(1) & double(2)) >> sky
    assert issubclass(sky.NoActivePoolError, RuntimeError)


# -- runtime API on real nodes ---------------------------------------------------------------


def test_instance_info_on_two_nodes(sync_pool: sky.Pool) -> None:
    reports = describe_instance() @ sync_pool
    infos = [r["info"] for r in reports]
    assert [i.node for i in infos] == [0, 1]
    for report, info in zip(reports, infos, strict=True):
        assert isinstance(info, sky.InstanceInfo)
        assert info.worker == 0
        assert info.total_nodes == 2
        assert info.workers_per_node == 1
        assert info.job_id == sync_pool.job_id
        assert len(info.peers) == 2
        assert all(isinstance(p, sky.PeerInfo) for p in info.peers)
        assert [p.node for p in info.peers] == [0, 1]
        assert info.head_addr == info.peers[0].private_ip
        assert report["global_worker_index"] == info.node
        assert report["total_workers"] == 2
        assert report["is_head"] is (info.node == 0)
        assert report["is_head_of_info"] is (info.node == 0)
        assert report["hostname"] == socket.gethostname()
    assert infos[0].job_id
    assert infos[0].peers == infos[1].peers
    addresses = [p.private_ip for p in infos[0].peers]
    assert len(set(addresses)) == 2
    assert all(a.startswith("127.0.0.") and a != "127.0.0.1" for a in addresses)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_slices_are_disjoint_and_complete(sync_pool: sky.Pool, shuffle: bool) -> None:
    slices = my_shard(list(range(10)), shuffle) @ sync_pool
    assert len(slices) == 2
    assert all(isinstance(s, list) and s for s in slices)
    assert not set(slices[0]) & set(slices[1])
    assert sorted(slices[0] + slices[1]) == list(range(10))


# -- large data ------------------------------------------------------------------------------


def test_large_array_and_bytes_round_trip(sync_pool: sky.Pool) -> None:
    array = np.random.default_rng(0).random(100 * 1024 * 1024 // 8)
    back = echo(array) >> sync_pool
    assert isinstance(back, np.ndarray)
    assert np.array_equal(back, array)
    del back, array

    blob = os.urandom(20 * 1024 * 1024)
    assert echo(blob) >> sync_pool == blob


# -- teardown --------------------------------------------------------------------------------


def _pool_processes(pool: sky.Pool, processes: Processes) -> set[int]:
    """The pids of this pool's node servers and worker daemons, checked against the pool."""
    found = processes.of_job(pool.job_id)
    workers = {node.conn.worker_pid for node in pool._core._ready.values()}
    servers = {pid for pid, cmd in found.items() if "skyward_trio._localnode" in cmd}
    assert None not in workers
    assert len(workers) == 2
    assert workers <= set(found), (workers, found)
    assert len(servers) == 2, found
    return set(found)


def test_teardown_ends_every_node_and_worker(processes: Processes) -> None:
    def body() -> tuple[set[int], list[Path]]:
        with sky.Compute(nodes=2, options=SILENT) as pool:
            assert double(2) >> sky == 4  # the with block makes it the active pool
            assert node_index() @ sky == [0, 1]
            pids = _pool_processes(pool, processes)
            roots = [Path(n.instance.workdir).parent.parent for n in pool._core._ready.values()]
        with pytest.raises(sky.NoActivePoolError):
            double(2) >> sky
        return pids, roots

    # A fresh context, so that "no active pool after the block" does not depend on others.
    pids, roots = contextvars.Context().run(body)
    assert processes.wait_until_gone(pids) == set()
    assert not any(root.exists() for root in roots)


class _BodyFailed(Exception):
    pass


def test_an_exception_in_the_body_propagates_and_teardown_still_happens(
    processes: Processes,
) -> None:
    error = _BodyFailed("from the with body")
    pids: set[int] = set()

    def body() -> None:
        with sky.Compute(nodes=2, options=SILENT) as pool:
            assert double(1) >> pool == 2
            pids.update(_pool_processes(pool, processes))
            raise error

    with pytest.raises(_BodyFailed) as caught:
        body()
    assert caught.value is error
    assert pids
    assert processes.wait_until_gone(pids) == set()
