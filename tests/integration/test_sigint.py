"""Ctrl-C in the middle of a long task: the call is cancelled, the pool torn down, and
every Local node process (SSH server and worker) is gone before the script exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import skyward as sky

    @sky.function
    def slow(pid_file):
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
        return "finished"

    worker = sky.Worker(executor=sys.argv[1])
    options = sky.Options(console="silent", worker=worker)
    with sky.Compute(provider=sky.Local(), nodes=2, options=options) as pool:
        print(pool.job_id, flush=True)
        print(slow(sys.argv[2]) >> pool, flush=True)
    """
)


def _pool_dirs(job_id: str) -> list[Path]:
    """The pool's Local directories; the client's teardown removes them."""
    return list(Path(tempfile.gettempdir()).glob(f"skyward-{job_id}-*"))


def _node_roles(processes: Any, job_id: str) -> tuple[int, int]:
    """(SSH servers, workers) of this pool that are running."""
    servers = sum("skyward_trio._localnode" in line for line in processes.of_job(job_id).values())
    workers = 0
    for directory in _pool_dirs(job_id):
        for ready in directory.glob("node-*/work/worker.ready"):
            try:
                workers += processes.is_running(int(ready.read_text()))
            except (OSError, ValueError):
                continue
    return servers, workers


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_ctrl_c_cancels_and_tears_down(tmp_path: Path, executor: str, processes: Any) -> None:
    script = tmp_path / "long_job.py"
    script.write_text(SCRIPT)
    pid_file = tmp_path / "task.pid"
    with subprocess.Popen(
        [sys.executable, str(script), executor, str(pid_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            _interrupt_and_check(proc, pid_file, processes)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _interrupt_and_check(proc: subprocess.Popen[str], pid_file: Path, processes: Any) -> None:
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    assert job_id, proc.stderr.read() if proc.stderr else ""
    # Two SSH servers and two workers are up, and the task has been sent. (Counted by
    # role: a worker forking a process-executor child briefly shows a third copy of its
    # own command line.)
    deadline = time.monotonic() + 30
    while _node_roles(processes, job_id) != (2, 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _node_roles(processes, job_id) == (2, 2)
    while not pid_file.exists() or not pid_file.read_text():  # the task is running
        assert time.monotonic() < deadline
        time.sleep(0.02)
    task_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert rc != 0
    assert "KeyboardInterrupt" in stderr
    assert "finished" not in proc.stdout.read()
    # Teardown finished before the script exited: nothing of this pool is left.
    assert processes.of_job(job_id) == {}
    # The process that ran the task (the worker, or its subprocess) is gone too.
    assert not processes.is_running(task_pid)


def test_sigterm_tears_the_pool_down(tmp_path: Path, processes: Any) -> None:
    script = tmp_path / "long_job.py"
    script.write_text(SCRIPT)
    pid_file = tmp_path / "task.pid"
    with subprocess.Popen(
        [sys.executable, str(script), "thread", str(pid_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert processes.of_job(job_id) == {}
    assert _pool_dirs(job_id) == []  # the client's teardown ran (not just the nodes' own exit)


LEFT_OPEN = textwrap.dedent(
    """
    import skyward as sky

    pool = sky.Compute(provider=sky.Local(), nodes=2, options=sky.Options(console="silent"))
    print(pool.__enter__().job_id, flush=True)
    # ...and the script ends without leaving the pool: the atexit hook tears it down.
    """
)


def test_a_pool_left_open_is_torn_down_at_exit(tmp_path: Path, processes: Any) -> None:
    script = tmp_path / "left_open.py"
    script.write_text(LEFT_OPEN)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    job_id = done.stdout.strip()
    assert job_id
    assert processes.of_job(job_id) == {}
    assert _pool_dirs(job_id) == []  # the atexit hook's teardown ran
