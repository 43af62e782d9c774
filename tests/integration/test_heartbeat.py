"""Silent partitions: the heartbeat notices a node (or a client) that sends nothing at all.

A stalled connection (``sky.testing.stall_connection``: the node's SSH server frozen, its
TCP connection up, no bytes either way) sends no RST or FIN. The client notices the
worker's silence within seconds (``_heartbeat.SILENCE_LIMIT``, then a check of the node's
SSH server), treats the link as dropped, and loses the node when it cannot reconnect; the
worker notices the client's silence and detaches the session, so the reconnect window
and the lease run. A short stall, or a worker silent because a task holds its GIL,
changes nothing.

Executions are counted through files the functions write; every timeout here is a hang
guard, not a measurement.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import procs
import pytest
import trio
from waiting import wait_until

import skyward as sky
from skyward import testing
from skyward_trio import _serial
from skyward_trio._connection import WorkerConnection

if TYPE_CHECKING:
    from conftest import Processes

QUIET = sky.Options(console="silent")

_wait = functools.partial(wait_until, timeout=60, every=0.02)


@pytest.fixture
def pool() -> Iterator[sky.Pool]:
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        yield pool


@sky.function
def _worker_pid() -> int:
    return os.getpid()


def _record(x: int, directory: str) -> tuple[int, int, int]:
    """Map ``x`` and say which execution made the result (worker pid, start time)."""
    pid, started = os.getpid(), time.monotonic_ns()
    Path(directory, f"{x}.{pid}.{started}").touch()
    time.sleep(0.002)
    return x * 3, pid, started


class _Events:
    """A pool's events as they arrive, each with the time this process saw it."""

    def __init__(self, pool: sky.Pool) -> None:
        self.seen: list[tuple[float, Any]] = []
        stream = pool.events()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: Iterator[Any]) -> None:
        for event in stream:
            self.seen.append((time.monotonic(), event))

    def first(self, kind: str, node: int) -> tuple[float, Any] | None:
        for at, event in self.seen:
            if type(event).__name__ == kind and getattr(event, "node", None) == node:
                return at, event
        return None


def _start_map(
    pool: sky.Pool, items: list[int], directory: Path
) -> tuple[threading.Thread, list[Any]]:
    """``pool.map`` over ``items`` in a thread, each execution recorded in ``directory``;
    returns once 300 have run. The results land in the list when the map ends."""
    result: list[Any] = []
    mapper = threading.Thread(
        target=lambda: result.extend(pool.map(lambda x: _record(x, str(directory)), items)),
        daemon=True,
    )
    mapper.start()
    _wait(lambda: len(os.listdir(directory)) > 300, "the map to get going")
    return mapper, result


def test_a_long_stall_mid_map_loses_the_node_within_the_stall_and_delivers_each_item_once(
    tmp_path: Path,
) -> None:
    stall = 60.0  # far longer than the heartbeat's limit plus the reconnect window
    options = sky.Options(console="silent", ssh_timeout=2)  # a 2 s reconnect window
    items = list(range(3000))
    with sky.Compute(provider=sky.Local(), nodes=2, options=options) as pool:
        events = _Events(pool)
        stalled_worker = (_worker_pid() @ pool)[1]
        mapper, result = _start_map(pool, items, tmp_path)
        stall_ends = time.monotonic() + stall
        testing.stall_connection(pool, 1, stall)
        mapper.join(timeout=stall)
        assert not mapper.is_alive(), "the map did not finish within the stall"
        _wait(lambda: events.first("InstanceReplaced", 1) is not None, "node 1's replacement")
        replaced_at, _ = events.first("InstanceReplaced", 1)  # type: ignore[misc]
        _, lost = events.first("InstancePreempted", 1)  # type: ignore[misc]
        assert (_worker_pid() @ pool)[1] != stalled_worker
    # Lost and replaced while the stall still went on, and by the heartbeat: neither the
    # stall's end nor the SSH keepalive had anything to do with it.
    assert replaced_at < stall_ends
    assert "nothing heard from the worker for 5 s (heartbeat)" in lost.reason
    assert "SSH server did not answer" in lost.reason
    # The output is exactly the input mapped, in order.
    assert [value for value, _, _ in result] == [x * 3 for x in items]
    # Each item was delivered from one execution that really ran. The only executions not
    # delivered are on the node given up (what it finished during the stall was never
    # received, so its batches ran again elsewhere); on the other nodes each item ran once.
    ran = {tuple(int(part) for part in name.split(".")) for name in os.listdir(tmp_path)}
    delivered = {(x, pid, started) for x, (_, pid, started) in zip(items, result, strict=True)}
    assert delivered <= ran
    assert {pid for _, pid, _ in ran - delivered} <= {stalled_worker}
    elsewhere = collections.Counter(x for x, pid, _ in ran if pid != stalled_worker)
    assert max(elsewhere.values()) == 1


@sky.function
def _mark_then_wait_for_gate(tag: str, directory: str) -> tuple[str, int]:
    Path(directory, f"{tag}.started").touch()
    while not Path(directory, "gate").exists():
        time.sleep(0.01)
    Path(directory, f"{tag}.done").touch()
    return tag, sky.instance_info().node


def test_a_stall_past_the_limit_but_within_the_window_resumes_with_each_item_run_once(
    pool: sky.Pool, tmp_path: Path
) -> None:
    # 9 s: past the heartbeat's 5 s (the worker detaches the session, the client lets the
    # link go), but over before the reconnect window ends: the pool reconnects to the same
    # worker, which replays what it made meanwhile. Nothing is lost or run twice.
    core = pool._core  # type: ignore[attr-defined]
    ssh = core._ready[1].ssh
    workers = _worker_pid() @ pool
    items = list(range(3000))
    mapper, result = _start_map(pool, items, tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    # A call on node 1 for sure, whose result is made during the stall.
    pinned = pool.run_async(_mark_then_wait_for_gate("pinned", str(marks)), target=1)
    _wait((marks / "pinned.started").exists, "the pinned call to start")
    testing.stall_connection(pool, 1, 9)
    (marks / "gate").touch()
    assert pinned.result(timeout=60) == ("pinned", 1)
    mapper.join(timeout=60)
    assert not mapper.is_alive(), "the map did not finish"
    assert [value for value, _, _ in result] == [x * 3 for x in items]
    ran = collections.Counter(
        int(name.split(".")[0]) for name in os.listdir(tmp_path) if name != "marks"
    )
    assert sorted(ran) == items
    assert max(ran.values()) == 1  # replayed, not run again
    assert sorted(p.name for p in marks.iterdir()) == ["gate", "pinned.done", "pinned.started"]
    assert _worker_pid() @ pool == workers  # the same workers: nothing replaced ...
    assert core._ready[1].ssh is not ssh  # ... but the link was let go and taken up again


@sky.function
def _hold_the_gil(seconds: int) -> tuple[int, int]:
    """Sleep in C with the GIL held (ctypes.PyDLL keeps it), as a long C extension call
    does: no other thread of the worker runs meanwhile. Returns how far another Python
    thread counts in 0.2 s when free, and how far it got during the whole sleep (only
    around its ends, if the GIL was held)."""
    import ctypes

    counted = [0]
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            counted[0] += 1

    counter = threading.Thread(target=count)
    counter.start()
    start = counted[0]
    time.sleep(0.2)  # the GIL is free: it counts
    before = counted[0]
    ctypes.PyDLL(None).sleep(seconds)
    during = counted[0] - before
    done.set()
    counter.join()
    return before - start, during


def test_a_worker_silent_because_a_task_holds_its_gil_is_not_lost(pool: sky.Pool) -> None:
    core = pool._core  # type: ignore[attr-defined]
    node = core._ready[1]
    ssh, conn, generation = node.ssh, node.conn, node.conn._generation
    workers = _worker_pid() @ pool
    # Longer than the heartbeat's limit: the client hears nothing, asks the node's SSH
    # server, which answers, so the node is busy, not cut off.
    free, held = pool.run(_hold_the_gil(8), target=1)
    assert held < free  # 8 s with the GIL held counted less than 0.2 s without
    assert core._ready[1].ssh is ssh  # no reconnection ...
    assert core._ready[1].conn is conn
    assert conn._generation == generation  # ... not even a dropped link
    assert conn.usable
    assert _worker_pid() @ pool == workers  # nor a new worker or node


def test_a_worker_detaches_a_silent_client_which_resumes_with_its_result(
    pool: sky.Pool, tmp_path: Path
) -> None:
    # One level down: a second session with node 0's worker. The client beats for a while,
    # then falls silent with its link up (nothing closed, nothing sent). The worker
    # notices, detaches the session (so its window and lease run) and drops the link; the
    # call goes on and its result, made while nobody listens, is replayed on resume.
    core = pool._core  # type: ignore[attr-defined]
    node = core._ready[0]
    secret = (Path(node.instance.workdir) / "secret").read_text().strip()
    replies: list[tuple[object, ...] | BaseException | None] = []
    arrived = trio.Event()

    def callback(message: tuple[object, ...] | None, error: BaseException | None) -> None:
        replies.append(error or message)
        arrived.set()

    async def scenario() -> None:
        conn = WorkerConnection(0, node.ssh, f"{node.instance.workdir}/worker.sock")
        try:
            with trio.fail_after(60):
                await conn.open(secret)
                call = core.prepare(_mark_then_wait_for_gate("gated", str(tmp_path)))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.serve)  # beats: the worker starts listening
                    conn.call_nowait(call.fn_key, call.fn_payload, call.args_payload, callback)
                    await trio.to_thread.run_sync(
                        _wait, (tmp_path / "gated.started").exists, "the call to start"
                    )
                    nursery.cancel_scope.cancel()  # silent from now on, its link still up
                await conn._link_down.wait()  # the worker dropped the link
                assert not conn.usable
                assert not replies
                (tmp_path / "gate").touch()
                await trio.to_thread.run_sync(
                    _wait, (tmp_path / "gated.done").exists, "the call to finish"
                )
                await trio.sleep(0.5)  # its result is kept for the client
                await conn.resume(node.ssh)
                await arrived.wait()
        finally:
            conn.close()

    pool._portal.call(scenario)  # type: ignore[attr-defined]
    assert len(replies) == 1
    reply = replies[0]
    assert isinstance(reply, tuple), reply
    assert _serial.loads(reply[3]) == ("gated", 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate", "gated.done", "gated.started"]


FROZEN_CLIENT = textwrap.dedent(
    """
    import os
    import sys
    import time
    import attrs
    import procs
    import skyward as sky
    from skyward.plugins import Plugin

    EXECUTOR = sys.argv[1]

    @sky.function
    def where():
        left = procs.leave_stubborn_processes()
        worker = os.getpid() if EXECUTOR == "thread" else os.getppid()
        return int(os.environ["SKYWARD_NODE_PID"]), worker, *left

    # The worker's process executor fails to close, as when one of its children outlives
    # SIGKILL: the rest of the worker's way out must still be taken. The worker's Python
    # imports this sitecustomize, which makes it so.
    patch = os.path.join(os.path.dirname(os.path.abspath(__file__)), "patch")
    os.makedirs(patch, exist_ok=True)
    with open(os.path.join(patch, "sitecustomize.py"), "w") as file:
        file.write(
            "from skyward_trio import _procpool\\n"
            "closes = _procpool.ProcessExecutor.close\\n"
            "def close(self):\\n"
            "    closes(self)\\n"
            "    raise RuntimeError('a child outlived SIGKILL (the test says so)')\\n"
            "_procpool.ProcessExecutor.close = close\\n"
        )

    def close_fails(command, context):
        path = os.pathsep.join([patch, os.environ["PYTHONPATH"]])
        return attrs.evolve(command, env={**command.env, "PYTHONPATH": path})

    plugins = []
    if EXECUTOR == "process":
        plugins = [Plugin.create("close-fails").with_launcher(close_fails)]
    # ttl=0 and a 0.5 s reconnect window: a detached worker waits 5.5 s for its client.
    options = sky.Options(
        console="silent", ssh_timeout=0.5, worker=sky.Worker(executor=EXECUTOR)
    )
    spec = dict(nodes=1, ttl=0, plugins=plugins, options=options)
    with sky.Compute(provider=sky.Local(), **spec) as pool:
        print(pool.job_id, *(where() >> pool), flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_worker_whose_client_went_silent_ends_with_its_lease(
    tmp_path: Path, processes: Processes, executor: str
) -> None:
    """... and so does what its task left running (the frozen node cannot end it), even
    when its process executor fails to close on the way out."""
    script = tmp_path / "client.py"
    script.write_text(FROZEN_CLIENT)
    here = str(Path(procs.__file__).parent)  # the client imports procs from there
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), executor], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    job, *pids = proc.stdout.readline().split()
    ssh_server, worker_pid, *left = map(int, pids)
    try:
        # The client and the node's SSH server freeze: the worker's socket to the server
        # stays open and nothing says the client is gone. Only its silence does.
        os.kill(ssh_server, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGSTOP)
        assert not processes.wait_until_gone([worker_pid], limit=60)
        assert not processes.wait_until_gone(left)
        # It went by itself: both are still frozen.
        assert processes.state(ssh_server) == "T"
        assert processes.state(proc.pid) == "T"
    finally:
        for pid in (proc.pid, ssh_server):  # what this test froze
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        for leftover in Path(tempfile.gettempdir()).glob(f"skyward-{job}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    assert not processes.wait_until_gone(processes.of_job(job), limit=10)
