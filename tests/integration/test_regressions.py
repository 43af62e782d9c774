"""Regression tests for bugs found in review (real Local nodes, no mocks); each comment
says what used to go wrong.

Start-up failures the fault kit cannot time (a node failing exactly before or after
another is ready) are injected the way they happen for real: a ``sitecustomize`` on the
nodes' PYTHONPATH makes one node's worker fail as it starts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
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

import pytest
import trio

import skyward as sky
import skyward_trio

QUIET = sky.Options(console="silent")

# -- remote functions ------------------------------------------------------------------------


@sky.function
def double(x: int) -> int:
    return x * 2


@sky.function
def endless() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


# -- helpers -------------------------------------------------------------------------------


def _wait_until(predicate, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


# -- 1. Nodes(min=1, desired=2): one node failing does not sink a pool that is usable at 1 --
# (A node that cannot be provisioned at all: test_startup_faults.py, with the fault kit.)

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, time
    _argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
    _MARK = {mark!r}
    _dir = _argv[_argv.index(b"--dir") + 1].decode() if b"--dir" in _argv else ""
    if b"skyward_trio.worker" in _argv and _dir.endswith("/node-1/work"):
        open(_MARK, "w").close()
        os._exit(3)  # node 1's worker fails to start
    if b"skyward_trio.worker" in _argv and _dir.endswith("/node-0/work"):
        _end = time.monotonic() + 20
        while not os.path.exists(_MARK) and time.monotonic() < _end:
            time.sleep(0.01)  # node 0 comes up only after node 1 failed
    """
)


async def test_min_nodes_pool_starts_when_another_nodes_bootstrap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Nodes(desired=4, min=2) ... usable at 2" (guide). Supervisor.start raised the first
    # node failure while fewer than `min` nodes were ready, even though enough nodes were
    # still coming.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(mark=str(tmp_path / "node1-failed"))
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    nodes = skyward_trio.Nodes(desired=2, min=1)
    with trio.fail_after(30):
        async with skyward_trio.Compute(nodes=nodes, options=QUIET) as pool:
            assert (tmp_path / "node1-failed").exists()
            assert await (double(21) >> pool) == 42


# -- 2. pool.map reads (and pickles) its items on the trio thread ---------------------------


def test_a_slow_map_input_does_not_stall_other_calls(sync_pool: sky.Pool) -> None:
    # Pool.map (sync face) hands the caller's iterator to map_prepared, which runs on the
    # portal's trio thread: itertools.islice(items) and _serial.dumps(chunk) block the loop
    # that every call of every pool in the process needs. (Iterator[T] inputs are read in
    # a thread for exactly this reason; the sync face promises pickling in the caller's
    # thread.)
    blocked = threading.Event()
    go = threading.Event()

    def items() -> Iterator[int]:
        yield 1
        blocked.set()
        if not go.wait(15):
            raise RuntimeError("nobody released the map input")
        yield 2

    mapped: list[object] = []
    thread = threading.Thread(target=lambda: mapped.append(sync_pool.map(double.fn, items())))
    thread.start()
    try:
        assert blocked.wait(30)
        future = double(5) > sync_pool
        try:
            value = future.result(timeout=10)
        except concurrent.futures.TimeoutError:
            future.cancel()
            pytest.fail("a call from another thread waited while pool.map read its input")
        assert value == 10
    finally:
        go.set()
        thread.join(30)
    assert mapped == [[2, 4]]


# -- 3. closing a pool right after a node was lost: a spurious TeardownError ---------------


def test_closing_right_after_a_node_loss_terminates_cleanly(processes) -> None:
    # Node 0's lost instance is being retired (terminated) when the block ends; teardown
    # terminates it too, and LocalCluster.terminate's `del self._procs[id]` raises KeyError.
    # (A preempted node is lost; a killed worker is now restarted on its node instead.)
    with sky.Compute(nodes=1, options=QUIET) as pool:
        job = pool.job_id
        core = pool._core
        sky.testing.preempt(pool, 0)
        _wait_until(lambda: 0 not in core._ready)
    assert not processes.wait_until_gone(processes.of_job(job))


# -- 4. a lost stream's error claims the retry limit was exceeded -------------------------


def test_a_stream_on_a_lost_node_does_not_blame_the_retry_limit() -> None:
    with sky.Compute(nodes=1, options=QUIET) as pool:
        core = pool._core
        items = endless() >> pool
        assert next(items) == 0
        first = core._ready[0]
        sky.testing.kill_worker(pool, 0)
        with pytest.raises(sky.ConnectionLostError) as caught:
            for _ in items:
                pass
        _wait_until(lambda: 0 in core._ready and core._ready[0] is not first)
    # Streams are never re-sent (docs/reliability.md); "interrupted 1 time, more than
    # Options(retry_on_interruption=3) allows" is not what happened.
    assert "more than Options(retry_on_interruption" not in str(caught.value)


# -- 5. killing the client with its node processes (a process-group SIGKILL) --------------

CLIENT_THAT_WAITS = textwrap.dedent(
    """
    import time
    import skyward as sky

    with sky.Compute(nodes=1, options=sky.Options(console="silent")) as pool:
        print(pool.job_id, flush=True)
        time.sleep(600)
    """
)


def test_workers_go_when_the_client_and_its_nodes_are_killed_together(
    tmp_path: Path, processes
) -> None:
    # The worker is started detached (setsid) and only the node process (_localnode) kills
    # it; nothing on the worker side notices that its node and client are gone, so it runs
    # forever (several such orphans from killed test runs were alive on this machine).
    script = tmp_path / "client.py"
    script.write_text(CLIENT_THAT_WAITS)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    job = proc.stdout.readline().strip()
    proc.stdout.close()
    try:
        assert len(processes.of_job(job)) == 2  # the node's SSH server and its worker
        os.killpg(proc.pid, signal.SIGKILL)  # e.g. a CI timeout killing the process group
        proc.wait()
        survivors = processes.wait_until_gone(processes.of_job(job), limit=10)
        assert not survivors, [processes.of_job(job)]
    finally:
        for pid in processes.of_job(job):  # what this test started and the bug left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for leftover in Path(tempfile.gettempdir()).glob(f"skyward-{job}-*"):
            shutil.rmtree(leftover, ignore_errors=True)


# -- 6. SIGTERM while a pool is being entered, or torn down, leaves it behind -------------

SIGTERM_WHILE_ENTERING = textwrap.dedent(
    """
    import glob, os, signal, threading, time
    import skyward as sky

    options = sky.Options(console="silent")
    pattern = os.path.join(os.environ["TMPDIR"], "skyward-*", "node-0")

    def terminate_while_b_starts():
        while len(glob.glob(pattern)) < 2:  # pool b is being provisioned
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    with sky.Compute(nodes=1, options=options) as a:  # a pool is open: SIGTERM -> SystemExit
        print("open", flush=True)
        threading.Thread(target=terminate_while_b_starts, daemon=True).start()
        with sky.Compute(nodes=1, options=options) as b:
            time.sleep(60)
    """
)

SIGTERM_WHILE_LEAVING = textwrap.dedent(
    """
    import os, signal, threading, time
    import skyward as sky
    from skyward import _sync

    entered = threading.Event()

    def terminate_while_tearing_down():
        entered.wait()
        while not any(c._leaving for c in _sync._open_pools):  # wait for __exit__ to begin
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_while_tearing_down, daemon=True).start()
    with sky.Compute(nodes=1, options=sky.Options(console="silent")) as pool:
        print("open", flush=True)
        entered.set()
    """
)


@pytest.mark.parametrize(
    "script", [SIGTERM_WHILE_ENTERING, SIGTERM_WHILE_LEAVING], ids=["entering", "leaving"]
)
def test_sigterm_never_leaves_a_pool_behind(tmp_path: Path, processes, script: str) -> None:
    # docs/reliability.md: leaving by SIGTERM terminates every instance the pool created.
    # entering: Compute.__enter__ catches only KeyboardInterrupt around its wait, so the
    # SystemExit from the SIGTERM handler leaves pool b's start-up job running unsupervised.
    # leaving: Compute.__exit__ calls _closed() first, which restores SIGTERM's default
    # action once no pool is "open", so a SIGTERM during the teardown kills the process.
    # (Local nodes' processes die with the client anyway; the pool's directory shows whether
    # its teardown ran. On a cloud provider it would be the instances.)
    # A short TMPDIR: worker.sock paths must fit a unix socket address.
    tmpdir = Path(tempfile.mkdtemp(prefix="rv-", dir="/tmp"))
    try:
        (tmp_path / "client.py").write_text(script)
        proc = subprocess.run(
            [sys.executable, str(tmp_path / "client.py")],
            env={**os.environ, "TMPDIR": str(tmpdir)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.stdout.splitlines()[:1] == ["open"], proc.stderr[-2000:]
        assert proc.returncode != 0  # it was terminated
        processes.wait_until_gone(processes.mentioning(str(tmpdir)), limit=10)
        left = sorted(p.name for p in tmpdir.glob("skyward-*"))
        assert left == [], proc.stderr[-2000:]
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# -- 7. Nodes(min=1): a node that fails after the pool is in use strands calls pinned to it --

FAIL_NODE_1_ON_SIGNAL = textwrap.dedent(
    """
    import os, time
    _argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
    _dir = _argv[_argv.index(b"--dir") + 1].decode() if b"--dir" in _argv else ""
    if b"skyward_trio.worker" in _argv and _dir.endswith("/node-1/work"):
        _end = time.monotonic() + 25
        while not os.path.exists({go!r}) and time.monotonic() < _end:
            time.sleep(0.01)
        os._exit(3)  # node 1 never starts: it fails once the test says so
    """
)


def test_a_call_pinned_to_a_node_that_failed_to_start_does_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node whose start fails after the pool is ready (Supervisor._node's except branch)
    # lowers _live but is not put in Pool._gone, so waiters pinned to it are never woken and
    # new calls pinned to it queue forever.
    site = tmp_path / "site"
    site.mkdir()
    go = tmp_path / "fail-node-1"
    (site / "sitecustomize.py").write_text(FAIL_NODE_1_ON_SIGNAL.format(go=str(go)))
    monkeypatch.setenv("PYTHONPATH", str(site))
    with sky.Compute(nodes=sky.Nodes(desired=2, min=1), options=QUIET) as pool:
        core = pool._core
        assert pool.current_nodes() == 1
        pinned = pool.run_async(double(1), target=1)  # waits for node 1 to come up
        go.touch()
        _wait_until(lambda: core._live == 1)  # node 1 failed for good
        try:
            error = pinned.exception(timeout=10)
        except concurrent.futures.TimeoutError:
            pinned.cancel()
            pytest.fail("a call pinned to node 1, which failed to start, waited forever")
        assert isinstance(error, sky.SkywardError)


# -- 8. a pinned call whose node is gone for good blames the retry limit ---------------------


FAIL_NODE_1_ONCE_TOLD = textwrap.dedent(
    """
    import os
    _argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
    _dir = _argv[_argv.index(b"--dir") + 1].decode() if b"--dir" in _argv else ""
    if b"skyward_trio.worker" in _argv and _dir.endswith("/node-1/work"):
        if os.path.exists({go!r}):
            os._exit(3)  # node 1's replacement never starts
    """
)


@sky.function
def nap(started: str) -> None:
    Path(started).touch()
    time.sleep(60)


def test_a_call_pinned_to_a_node_gone_for_good_does_not_blame_the_retry_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A call interrupted once on node 1, which could not be replaced, said "interrupted
    # 2 times; that is more than Options(retry_on_interruption=3) allows".
    site = tmp_path / "site"
    site.mkdir()
    go, started = tmp_path / "fail-node-1", tmp_path / "started"
    (site / "sitecustomize.py").write_text(FAIL_NODE_1_ONCE_TOLD.format(go=str(go)))
    monkeypatch.setenv("PYTHONPATH", str(site))
    options = sky.Options(console="silent", max_provision_attempts=1)
    with sky.Compute(nodes=sky.Nodes(desired=2, min=1), options=options) as pool:
        pinned = pool.run_async(nap(str(started)), target=1)
        _wait_until(started.exists)
        go.touch()
        sky.testing.preempt(pool, 1)
        error = pinned.exception(timeout=60)
    assert isinstance(error, sky.ConnectionLostError)
    message = str(error)
    assert "more than Options(retry_on_interruption" not in message
    assert message.startswith("nap() was interrupted 1 time and could not be sent again: ")
    assert "node 1 is gone for good" in message


@sky.function
def _which_node() -> int:
    return sky.instance_info().node


def test_closing_a_pool_while_a_lost_node_is_being_replaced_tears_down_cleanly() -> None:
    """Teardown closed the pool's SSH connections while iterating over them, and a
    replacement still starting drops its own: "dictionary changed size during iteration"
    out of ``Compute.__exit__``."""
    from skyward import testing

    for _ in range(3):
        with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
            testing.preempt(pool, 0)
            testing.preempt(pool, 1)
            assert _which_node() >> pool in (0, 1)  # on the first replacement up
        # leaving the block while the other replacement may still be coming up
