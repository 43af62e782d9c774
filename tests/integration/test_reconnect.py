"""Dropped and stalled connections: the pool reconnects, the worker replays what the
client missed, and nothing runs twice. Faults come from the fault kit (``sky.testing``).

Executions are counted through files the functions write, so "ran exactly once" is
checked on the node's side, not inferred from the results.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from waiting import wait_until

import skyward as sky
import skyward_trio
from skyward import testing
from skyward_trio import _connection, _serial
from skyward_trio._connection import WorkerConnection

if TYPE_CHECKING:
    from conftest import Processes

QUIET = sky.Options(console="silent")


@pytest.fixture
def pool() -> Iterator[sky.Pool]:
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        yield pool


_wait = functools.partial(wait_until, timeout=30, every=0.01)


def _runs(directory: Path, tag: str) -> int:
    return len(list(directory.glob(f"{tag}.*")))


@sky.function
def _worker_pid() -> int:
    return os.getpid()


@sky.function
def _mark_then_sleep(tag: str, directory: str, seconds: float) -> tuple[str, int]:
    Path(directory, f"{tag}.{time.monotonic_ns()}").touch()
    time.sleep(seconds)
    return tag, sky.instance_info().node


def _record(x: int, directory: str) -> int:
    Path(directory, f"{x}.{time.monotonic_ns()}").touch()
    time.sleep(0.001)
    return x * 3


def _in_thread(fn: object, *args: object) -> concurrent.futures.Future[object]:
    executor = concurrent.futures.ThreadPoolExecutor(1)
    future = executor.submit(fn, *args)  # type: ignore[arg-type]
    executor.shutdown(wait=False)
    return future


def test_map_across_dropped_connections_runs_every_item_exactly_once(
    pool: sky.Pool, tmp_path: Path
) -> None:
    workers = _worker_pid() @ pool
    items = list(range(2000))
    future = _in_thread(pool.map, lambda x: _record(x, str(tmp_path)), items)
    _wait(lambda: len(os.listdir(tmp_path)) > 300, "the map to get going")
    testing.drop_connection(pool, 1)
    _wait(lambda: len(os.listdir(tmp_path)) > 900, "the map to go on")
    testing.drop_connection(pool, 0)
    assert future.result(timeout=120) == [x * 3 for x in items]
    executed = [int(name.split(".")[0]) for name in os.listdir(tmp_path)]
    assert sorted(executed) == items  # replayed, not recomputed: each item ran once
    assert _worker_pid() @ pool == workers  # the same nodes: none was replaced


def test_a_long_call_whose_connection_drops_delivers_its_result_and_runs_once(
    pool: sky.Pool, tmp_path: Path
) -> None:
    workers = _worker_pid() @ pool
    future = pool.run_async(_mark_then_sleep("long", str(tmp_path), 1.5), target=0)
    _wait(lambda: _runs(tmp_path, "long") == 1, "the call to start")
    testing.drop_connection(pool, 0)
    assert future.result(timeout=60) == ("long", 0)
    assert _runs(tmp_path, "long") == 1
    assert _worker_pid() @ pool == workers


def test_a_call_pinned_to_a_reconnecting_node_waits_for_it(pool: sky.Pool, tmp_path: Path) -> None:
    testing.drop_connection(pool, 1)
    # Sent while node 1 is down or coming back: it runs there once, when the link is up.
    call = _mark_then_sleep("pinned", str(tmp_path), 0)
    assert pool.run(call, target=1) == ("pinned", 1)
    assert _runs(tmp_path, "pinned") == 1


def test_a_stall_shorter_than_the_heartbeat_limit_only_delays_calls(
    pool: sky.Pool, tmp_path: Path
) -> None:
    before = _machine_and_worker() @ pool
    node = pool._core._ready[1]  # type: ignore[attr-defined]
    ssh, generation = node.ssh, node.conn._generation
    ssh_server = Path(f"/proc/{before[1][0]}/stat")
    future = pool.run_async(_mark_then_sleep("stalled", str(tmp_path), 0.5), target=1)
    _wait(lambda: _runs(tmp_path, "stalled") == 1, "the call to start")
    testing.stall_connection(pool, 1, 2)  # under the heartbeat's 5 s
    _wait(lambda: _state(ssh_server) == "T", "node 1's SSH server to be stopped")
    assert future.result(timeout=60) == ("stalled", 1)
    assert _state(ssh_server) != "T"  # resumed by itself
    assert _runs(tmp_path, "stalled") == 1
    assert _machine_and_worker() @ pool == before
    # Not even a dropped link: the same connection, neither end let go of it.
    assert pool._core._ready[1] is node  # type: ignore[attr-defined]
    assert node.ssh is ssh
    assert node.conn._generation == generation
    assert node.conn.usable


def _state(stat: Path) -> str:
    return stat.read_text().rsplit(")", 1)[1].split()[0]


@sky.function
def _count_up(n: int, directory: str) -> Iterator[int]:
    for i in range(n):
        Path(directory, f"item{i}.{time.monotonic_ns()}").touch()
        time.sleep(0.005)
        yield i


def test_a_generator_stream_resumes_with_every_item_once_and_in_order(
    pool: sky.Pool, tmp_path: Path
) -> None:
    stream = iter(_count_up(300, str(tmp_path)) >> pool)
    seen = [next(stream) for _ in range(50)]
    testing.drop_connection(pool, 0)
    testing.drop_connection(pool, 1)
    seen.extend(stream)
    assert seen == list(range(300))
    assert len(os.listdir(tmp_path)) == 300  # the generator ran once, not restarted


@sky.function
def _print_lines(n: int) -> int:
    for i in range(n):
        print(f"line {i}")
        time.sleep(0.002)
    return n


def test_output_printed_across_a_drop_arrives_once_and_in_order(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with sky.Compute(provider=sky.Local(), nodes=1, options=sky.Options(console="log")) as pool:
        future = pool.run_async(_print_lines(400))
        time.sleep(0.3)
        testing.drop_connection(pool, 0)
        assert future.result(timeout=60) == 400
    _, err = capfd.readouterr()
    # The log console: "HH:MM:SS  node 0  line 17" for each line the function printed.
    lines = [line[8:] for line in err.splitlines() if line[8:].startswith("  node 0  line ")]
    assert lines == [f"  node 0  line {i}" for i in range(400)]


@sky.function
def _total(values: Iterator[int]) -> int:
    return sum(values)


def test_a_call_fed_from_an_iterator_fails_clearly_when_its_connection_drops(
    pool: sky.Pool,
) -> None:
    def slow_items() -> Iterator[int]:
        for i in range(100_000):
            time.sleep(0.001)
            yield i

    pids = _worker_pid() @ pool
    future = pool.run_async(_total(slow_items()), target=0)
    time.sleep(0.5)
    testing.drop_connection(pool, 0)
    with pytest.raises(sky.ConnectionLostError, match=r"Iterator.*inputs were consumed"):
        future.result(timeout=60)
    assert pool.run(_worker_pid(), target=0) == pids[0]  # the node itself came back


def test_a_preempted_node_is_still_replaced_not_reconnected(pool: sky.Pool) -> None:
    before = _worker_pid() @ pool
    testing.preempt(pool, 1)
    _wait(lambda: pool.current_nodes() == 1, "node 1 to be lost")  # at once: the
    # provider reports it gone, so no reconnection is tried
    _wait(lambda: pool.current_nodes() == 2, "its replacement")
    after = _worker_pid() @ pool
    assert after[0] == before[0]
    assert after[1] != before[1]


def test_the_fault_kit_checks_its_arguments(pool: sky.Pool) -> None:
    with pytest.raises(ValueError, match="not ready"):
        testing.drop_connection(pool, 5)
    with pytest.raises(ValueError, match=r"seconds=-1\): seconds must be > 0"):
        testing.stall_connection(pool, 0, -1)
    with pytest.raises(TypeError, match="seconds must be a number"):
        testing.stall_connection(pool, 0, "2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pool"):
        testing.drop_connection(object(), 0)


@skyward_trio.function
def _trio_mark(tag: str, directory: str, seconds: float) -> str:
    Path(directory, f"{tag}.{time.monotonic_ns()}").touch()
    time.sleep(seconds)
    return tag


async def test_the_trio_face_reconnects_too(tmp_path: Path) -> None:
    options = skyward_trio.Options(console="silent")
    async with skyward_trio.Compute(
        provider=skyward_trio.Local(), nodes=1, options=options
    ) as pool:
        future = await (_trio_mark("t", str(tmp_path), 1.0) > pool)
        await trio.to_thread.run_sync(_wait, lambda: _runs(tmp_path, "t") == 1, "the call")
        testing.drop_connection(pool, 0)
        assert await future.result() == "t"
        items = list(range(1000))
        async with trio.open_nursery() as nursery:

            async def mapper() -> None:
                out = await pool.map(lambda x: _record(x, str(tmp_path)), items)
                assert out == [x * 3 for x in items]

            nursery.start_soon(mapper)
            started = lambda: len(os.listdir(tmp_path)) > 300  # noqa: E731
            await trio.to_thread.run_sync(_wait, started, "the map to get going")
            testing.drop_connection(pool, 0)
    assert _runs(tmp_path, "t") == 1
    executed = sorted(int(n.split(".")[0]) for n in os.listdir(tmp_path) if n[0] != "t")
    assert executed == items


@sky.function
def _machine_and_worker() -> tuple[int, int]:
    return int(os.environ["SKYWARD_NODE_PID"]), os.getpid()


def test_a_crashed_worker_is_restarted_on_the_same_node(pool: sky.Pool, tmp_path: Path) -> None:
    before = _machine_and_worker() @ pool
    future = pool.run_async(_mark_then_sleep("crash", str(tmp_path), 1.0), target=1)
    _wait(lambda: _runs(tmp_path, "crash") == 1, "the call to start")
    testing.kill_worker(pool, 1)
    assert future.result(timeout=60) == ("crash", 1)  # sent again, to the new worker
    after = _machine_and_worker() @ pool
    assert after[0] == before[0]
    assert after[1][0] == before[1][0]  # the same machine: not replaced
    assert after[1][1] != before[1][1]  # a new worker


FAULTS = {
    "drop": lambda pool: testing.drop_connection(pool, 1),
    "kill_worker": lambda pool: testing.kill_worker(pool, 1),
    "stall": lambda pool: testing.stall_connection(pool, 1, 60),  # thawed by teardown
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_closing_while_a_node_recovers_leaves_nothing_running(
    processes: Processes, tmp_path: Path, fault: str
) -> None:
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        job = pool.job_id
        pending = pool.run_async(_mark_then_sleep("left", str(tmp_path), 30), target=1)
        _wait(lambda: _runs(tmp_path, "left") == 1, "the call to start")
        FAULTS[fault](pool)
    assert isinstance(pending.exception(timeout=0), sky.SkywardError)  # ended, not hung
    assert not processes.wait_until_gone(processes.of_job(job))


def test_a_session_resumes_on_a_new_link_replaying_and_resending(
    pool: sky.Pool, tmp_path: Path
) -> None:
    # One level down, deterministically: a second session with node 0's worker whose link
    # is closed while a call runs. The call finishes while nobody listens; a call is made
    # while the link is down. On resume the first result is replayed, the second call is
    # sent (it never reached the worker), and each ran once.
    core = pool._core  # type: ignore[attr-defined]
    node = core._ready[0]
    secret = (Path(node.instance.workdir) / "secret").read_text().strip()
    replies: dict[str, tuple[object, ...] | BaseException | None] = {}
    arrived = {"replayed": trio.Event(), "late": trio.Event()}

    def reply_to(tag: str) -> _connection.Callback:
        def callback(message: tuple[object, ...] | None, error: BaseException | None) -> None:
            replies[tag] = error or message  # checked below, not in the transport's callback
            arrived[tag].set()

        return callback

    def send(conn: WorkerConnection, tag: str, seconds: float) -> None:
        call = core.prepare(_mark_then_sleep(tag, str(tmp_path), seconds))
        conn.call_nowait(call.fn_key, call.fn_payload, call.args_payload, reply_to(tag))

    async def scenario() -> None:
        conn = WorkerConnection(0, node.ssh, f"{node.instance.workdir}/worker.sock")
        try:
            with trio.fail_after(30):
                await conn.open(secret)
                send(conn, "replayed", 0.3)
                await trio.to_thread.run_sync(
                    _wait, lambda: _runs(tmp_path, "replayed") == 1, "the call to start"
                )
                assert conn._link is not None
                conn._link.close()  # the link drops with the call running
                assert not conn.usable
                send(conn, "late", 0)  # kept for the resume: nothing is sent while down
                await trio.sleep(0.6)  # the first result is made while nobody listens
                assert not replies
                await conn.resume(node.ssh)
                await arrived["replayed"].wait()
                await arrived["late"].wait()
        finally:
            conn.close()

    pool._portal.call(scenario)  # type: ignore[attr-defined]
    for tag in ("replayed", "late"):
        reply = replies[tag]
        assert isinstance(reply, tuple), reply
        assert _serial.loads(reply[3]) == (tag, 0)
    assert _runs(tmp_path, "replayed") == 1
    assert _runs(tmp_path, "late") == 1


def test_a_session_not_resumed_in_time_is_dropped_by_the_worker(tmp_path: Path) -> None:
    # Options(ssh_timeout=0.5): the pool tries to reconnect for 0.5 s, so the worker keeps
    # a dropped session 5.5 s; a client back later is told the session is gone (and the
    # pool would start a new worker).
    options = sky.Options(console="silent", ssh_timeout=0.5)
    with sky.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
        node = pool._core._ready[0]  # type: ignore[attr-defined]
        secret = (Path(node.instance.workdir) / "secret").read_text().strip()

        async def scenario() -> None:
            conn = WorkerConnection(0, node.ssh, f"{node.instance.workdir}/worker.sock")
            try:
                with trio.fail_after(30):
                    await conn.open(secret)
                    assert conn._link is not None
                    conn._link.close()
                    await trio.sleep(7)
                    with pytest.raises(sky.ConnectionLostError, match="no longer has this"):
                        await conn.resume(node.ssh)
            finally:
                conn.close()

        pool._portal.call(scenario)  # type: ignore[attr-defined]
