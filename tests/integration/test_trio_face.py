"""The trio face (``skyward_trio``) against real Local nodes.

pytest-trio runs each test in its own ``trio.run``, so a trio pool cannot outlive a test.
Starting one costs about a second: each test below is a group of checks that share one
``async with skyward_trio.Compute(...)``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

import skyward as sky
import skyward_trio

if TYPE_CHECKING:
    from conftest import Processes

SILENT = skyward_trio.Options(console="silent")

# -- remote functions ------------------------------------------------------------------------


@skyward_trio.function
def double(x: int) -> int:
    return x * 2


@skyward_trio.function
def node_index() -> int:
    return skyward_trio.instance_info().node


@skyward_trio.function
def tagged(tag: str) -> tuple[str, int]:
    return tag, skyward_trio.instance_info().node


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.01)


@skyward_trio.function
def wait_then_return(path: str, value: str) -> str:
    _wait_for(path)
    return value


@skyward_trio.function
def touch_then_return(path: str, value: str) -> str:
    Path(path).touch()
    return value


@skyward_trio.function(timeout=0.5)
def held_with_timeout(path: str) -> str:
    _wait_for(path)
    return "released"


@skyward_trio.function
def raise_value_error() -> None:
    raise ValueError("x")


class CustomError(Exception):
    pass


@skyward_trio.function
def raise_custom_error() -> None:
    raise CustomError("custom failure")


class TwoArgError(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)


@skyward_trio.function
def raise_two_arg_error() -> None:
    raise TwoArgError("first", "second")


@skyward_trio.function
def takes_lock(lock: Any) -> None:
    return None


@skyward_trio.function
def instance_info() -> skyward_trio.InstanceInfo:
    return skyward_trio.instance_info()


def triple(x: int) -> int:
    return x * 3


# -- dispatch --------------------------------------------------------------------------------


async def test_trio_dispatch(tmp_path: Path) -> None:
    async with skyward_trio.Compute(nodes=2, options=SILENT) as pool:
        assert isinstance(pool, skyward_trio.Pool)
        assert pool.current_nodes() == 2

        # >> : one node, round-robin.
        assert await (double(21) >> pool) == 42
        assert {await (node_index() >> pool), await (node_index() >> pool)} == {0, 1}
        # >> skyward_trio / >> sky: the active pool of this context.
        assert await (double(3) >> skyward_trio) == 6
        assert await (double(4) >> sky) == 8

        # @ : every node, by node index.
        assert await (node_index() @ pool) == [0, 1]
        assert await (tagged("b") @ skyward_trio) == [("b", 0), ("b", 1)]

        # & and gather: a tuple, in order.
        result = await ((double(1) & double(2) & double(3)) >> pool)
        assert result == (2, 4, 6)
        assert await (skyward_trio.gather(double(5), double(6)) >> pool) == (10, 12)

        # > : a Future.
        future = await (double(10) > pool)
        assert isinstance(future, skyward_trio.Future)
        assert await future.result() == 20
        assert future.done()
        assert not future.cancelled()

        # Streaming gather, ordered: submission order even though the first finishes last.
        flag = str(tmp_path / "second-ran")
        stream = await (
            skyward_trio.gather(
                wait_then_return(flag, "slow"), touch_then_return(flag, "fast"), stream=True
            )
            >> pool
        )
        assert isinstance(stream, skyward_trio.ResultStream)
        assert [r async for r in stream] == ["slow", "fast"]

        # Streaming gather, unordered: the slow call is held until the fast result is here.
        release = tmp_path / "release"
        stream = await (
            skyward_trio.gather(
                wait_then_return(str(release), "slow"), double(4), stream=True, ordered=False
            )
            >> pool
        )
        received = []
        async for value in stream:
            received.append(value)
            release.touch()
        assert received == [8, "slow"]

        # Pool methods.
        assert await pool.run(node_index(), target="head") == 0
        assert await pool.run(node_index(), target=1) == 1
        futures = [await pool.run_async(node_index(), target=i) for i in (1, 0)]
        assert [await f.result() for f in futures] == [1, 0]
        assert await pool.broadcast(tagged("c")) == [("c", 0), ("c", 1)]
        assert await pool.run_parallel(double(1) & double(2)) == (2, 4)
        streamed = await pool.run_parallel(skyward_trio.gather(double(7), stream=True))
        assert [r async for r in streamed] == [14]

        # map: undecorated (lambda, plain function) or decorated; input order.
        assert await pool.map(lambda x: x + 1, [3, 1, 2]) == [4, 2, 3]
        assert await pool.map(double, range(10)) == [x * 2 for x in range(10)]
        items = list(range(20_000))
        assert await pool.map(triple, items) == [x * 3 for x in items]
        assert await pool.map(triple, []) == []

        ran = tmp_path / "ran"
        ran.mkdir()
        some_ran_before_last: list[bool] = []

        def mark(x: int) -> int:
            (ran / str(x)).touch()
            return -x

        def generated() -> Iterator[int]:
            for i in range(200):
                if i == 199:
                    some_ran_before_last.append(any(ran.iterdir()))
                yield i

        assert await pool.map(mark, generated()) == [-i for i in range(200)]
        assert some_ran_before_last == [True]

        # A cancelled Future: result() says so, and the pool goes on.
        hold = tmp_path / "hold"
        future = await (wait_then_return(str(hold), "never") > pool)
        assert future.cancel()
        with pytest.raises(skyward_trio.CancelledCallError, match="wait_then_return"):
            await future.result()
        assert future.cancelled()
        hold.touch()
        assert await (node_index() @ pool) == [0, 1]


# -- errors, runtime API and teardown ---------------------------------------------------------


class _BodyFailed(Exception):
    pass


async def _check_errors_and_runtime(pool: skyward_trio.Pool, tmp_path: Path) -> None:
    # Remote exceptions.
    with pytest.raises(ValueError, match="x") as caught:
        await (raise_value_error() >> pool)
    notes = "\n".join(caught.value.__notes__)
    assert "raise_value_error" in notes
    assert "node" in notes
    assert "Traceback" in notes

    with pytest.raises(CustomError, match="custom failure") as caught_custom:
        await (raise_custom_error() >> pool)
    assert type(caught_custom.value) is CustomError

    with pytest.raises(skyward_trio.RemoteError, match="TwoArgError") as caught_remote:
        await pool.run(raise_two_arg_error(), target=0)
    assert caught_remote.value.type_name.endswith("TwoArgError")
    assert "TwoArgError" in caught_remote.value.remote_traceback
    assert caught_remote.value.node == 0

    # Timeouts; the pool stays usable.
    release = tmp_path / "release"
    try:
        with pytest.raises(skyward_trio.TaskTimeoutError) as caught_timeout:
            await (held_with_timeout(str(release)) >> pool)
    finally:
        release.touch()
    timeout_error = caught_timeout.value
    assert isinstance(timeout_error, TimeoutError)
    assert timeout_error.task == "held_with_timeout"
    assert "held_with_timeout" in str(timeout_error)
    assert f"node {timeout_error.node}" in str(timeout_error)
    assert await pool.run(node_index(), target=timeout_error.node) == timeout_error.node

    # Unpicklable argument: refused before anything is sent.
    with pytest.raises(skyward_trio.SerializationError, match="'lock'"):
        await (takes_lock(threading.Lock()) >> pool)
    with pytest.raises(skyward_trio.SerializationError, match="'lock'"):
        await (takes_lock(threading.Lock()) > pool)

    # Bad dispatch.
    with pytest.raises(ValueError, match="target=5 is not a node of this pool"):
        await pool.run(node_index(), target=5)
    with pytest.raises(ValueError, match="target must be None"):
        await pool.run(node_index(), target="tail")
    with pytest.raises(TypeError, match="only be dispatched with >>"):
        _ = (double(1) & double(2)) @ pool
    with pytest.raises(TypeError, match="only be dispatched with >>"):
        _ = (double(1) & double(2)) > pool
    with pytest.raises(TypeError, match="expected a pending call"):
        await pool.run(42)  # type: ignore[arg-type]

    # The runtime API.
    infos = await (instance_info() @ pool)
    assert [i.node for i in infos] == [0, 1]
    assert {i.job_id for i in infos} == {pool.job_id}
    assert infos[0].head_addr == infos[0].peers[0].private_ip
    assert len({p.private_ip for p in infos[0].peers}) == 2
    assert await (node_index() @ pool) == [0, 1]


async def test_trio_errors_and_teardown(tmp_path: Path, processes: Processes) -> None:
    with pytest.raises(skyward_trio.NoActivePoolError, match="needs an active pool"):
        double(1) >> skyward_trio

    error = _BodyFailed("from the async with body")
    pids: set[int] = set()

    async def body() -> None:
        async with skyward_trio.Compute(nodes=2, options=SILENT) as pool:
            await _check_errors_and_runtime(pool, tmp_path)
            pids.update(processes.of_job(pool.job_id))
            workers = {node.conn.worker_pid for node in pool._ready.values()}
            assert len(workers) == 2
            assert workers <= pids
            assert len(pids) >= 4  # two node servers, two workers
            raise error

    # The body's own exception comes out, not a group around it, and teardown happened.
    with pytest.raises(_BodyFailed) as caught:
        await body()
    assert caught.value is error
    with pytest.raises(skyward_trio.NoActivePoolError):
        double(1) >> skyward_trio
    assert await trio.to_thread.run_sync(processes.wait_until_gone, pids) == set()


async def test_trio_run_parallel_refuses_a_single_call() -> None:
    # The sync face raises TypeError("run_parallel() needs a group ..."); the trio face must
    # refuse the same input the same way.
    async with skyward_trio.Compute(nodes=1, options=SILENT) as pool:
        with pytest.raises(TypeError, match="needs a group"):
            await pool.run_parallel(double(1))  # type: ignore[arg-type]
        assert await (double(1) >> pool) == 2


async def test_trio_pool_used_after_its_block_ended_says_it_is_closed() -> None:
    async with skyward_trio.Compute(nodes=1, options=SILENT) as pool:
        assert await (double(1) >> pool) == 2
    with pytest.raises(skyward_trio.PoolClosedError, match="this pool is closed"):
        await (double(1) >> pool)
    with pytest.raises(skyward_trio.PoolClosedError, match="this pool is closed"):
        await (double(1) @ pool)
    with pytest.raises(skyward_trio.PoolClosedError, match="this pool is closed"):
        await pool.map(triple, [1])
