"""``Worker(executor="process")``: tasks run in subprocesses of the worker, in parallel past
the GIL; a dying subprocess fails only its task; cancellation kills the subprocess."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyward as sky


def _options(**worker: object) -> sky.Options:
    return sky.Options(console=True, worker=sky.Worker(concurrency=2, executor="process", **worker))


@pytest.fixture(scope="module")
def pool() -> Iterator[sky.Pool]:
    with sky.Compute(provider=sky.Local(), nodes=1, options=_options()) as pool:
        yield pool


@sky.function
def _pid() -> int:
    return os.getpid()


@sky.function
def _meet(me: str, other: str, directory: str) -> tuple[int, bool]:
    """Hold the GIL in a busy loop until the other task has started too (or 30 s pass)."""
    Path(directory, me).touch()
    deadline = time.time() + 30
    while not Path(directory, other).exists():  # pure-Python busy work: holds the GIL
        if time.time() > deadline:
            return os.getpid(), False
    return os.getpid(), True


def test_cpu_bound_tasks_run_in_parallel_subprocesses(pool: sky.Pool, tmp_path: Path) -> None:
    where = str(tmp_path)
    (pid_a, met_a), (pid_b, met_b) = (_meet("a", "b", where) & _meet("b", "a", where)) >> pool
    assert pid_a != pid_b
    assert os.getpid() not in (pid_a, pid_b)
    # Two GIL-holding loops in one process would run one after the other: the first would
    # never see the second start.
    assert met_a
    assert met_b


def test_subprocesses_are_reused(pool: sky.Pool) -> None:
    pids = {_pid() >> pool for _ in range(6)}
    assert len(pids) <= 2


def test_a_fresh_subprocess_per_task_without_reuse() -> None:
    with sky.Compute(
        provider=sky.Local(), nodes=1, options=_options(reuse_processes=False)
    ) as pool:
        pids = [_pid() >> pool for _ in range(3)]
    assert len(set(pids)) == 3


@sky.function
def _exit_with(code: int) -> None:
    os._exit(code)


@sky.function
def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_dying_subprocess_fails_only_its_task(pool: sky.Pool) -> None:
    with pytest.raises(sky.ChildDied, match="exited with code 3") as exited:
        _exit_with(3) >> pool
    assert exited.value.exit_code == 3
    with pytest.raises(sky.ChildDied, match="SIGSEGV") as crashed:
        _segfault() >> pool
    assert crashed.value.signal == signal.SIGSEGV
    assert isinstance(_pid() >> pool, int)  # the node keeps serving


@sky.function
def _record_pid_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_timeout_kills_the_subprocess(pool: sky.Pool, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(sky.TaskTimeoutError):
        _record_pid_and_sleep(str(pid_file)).with_timeout(1.0) >> pool
    assert _gone(int(pid_file.read_text()))  # hard cancellation
    assert isinstance(_pid() >> pool, int)


def test_future_cancel_kills_the_subprocess(pool: sky.Pool, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    future = _record_pid_and_sleep(str(pid_file)) > pool
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert future.cancel()
    assert _gone(int(pid_file.read_text()))


@sky.function
def _noisy() -> int:
    print("python print")
    print("python stderr", file=sys.stderr)
    os.write(1, b"raw fd write\n")
    return sky.instance_info().node


@sky.stdout(only=lambda info: False)
@sky.function
def _muted_stdout() -> int:
    print("hidden")
    print("shown on stderr", file=sys.stderr)
    return 0


def test_output_is_captured_from_subprocesses(
    pool: sky.Pool, capfd: pytest.CaptureFixture[str]
) -> None:
    assert _noisy() >> pool == 0  # instance_info works in subprocesses
    _, err = capfd.readouterr()  # the log console (stderr is not a TTY): all on stderr
    assert "  node 0  python print\n" in err
    assert "  node 0  raw fd write\n" in err  # even output written straight to fd 1
    assert "  node 0  python stderr\n" in err
    _muted_stdout() >> pool
    out, err = capfd.readouterr()
    assert "hidden" not in out + err
    assert "  node 0  shown on stderr\n" in err


@sky.function
def _doubled(xs: Iterator[int]) -> Iterator[int]:
    for x in xs:
        yield 2 * x


def test_streaming_and_map_under_processes(pool: sky.Pool) -> None:
    assert list(_doubled(range(500)) >> pool) == [2 * x for x in range(500)]
    assert pool.map(lambda x: x + 1, range(1000)) == list(range(1, 1001))
