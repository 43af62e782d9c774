"""The process executor, with real subprocesses (no mocks).

Functions are pickled by value (``register_pickle_by_value``): the children cannot import
this test module.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import skyward_trio
from skyward_trio import _serial, _wire
from skyward_trio._execute import FunctionCache, StreamedInput, run_batch, run_one
from skyward_trio._info import InstanceInfo, PeerInfo, from_dict, to_dict
from skyward_trio._procpool import (
    ChildDied,
    ExecutorClosed,
    ProcessExecutor,
    TaskKilled,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

INFO = to_dict(
    InstanceInfo(
        node=1,
        total_nodes=2,
        head_addr="10.0.0.1",
        head_port=29500,
        job_id="job-procpool",
        peers=[PeerInfo(node=0, private_ip="10.0.0.1"), PeerInfo(node=1, private_ip="10.0.0.2")],
    )
)

_ids = itertools.count(1)
Output = list[tuple[str, str]]


def _ignore(stream: str, text: str) -> None:
    del stream, text


class Harness:
    """Makes executors and closes them at the end of the test."""

    def __init__(self) -> None:
        self.executors: list[ProcessExecutor] = []

    def __call__(
        self,
        *,
        size: int = 1,
        reuse: bool = True,
        sys_path: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> ProcessExecutor:
        ex = ProcessExecutor(
            size=size, reuse=reuse, sys_path=sys_path or [], env=env or {}, info=INFO
        )
        self.executors.append(ex)
        return ex


@pytest.fixture
def make() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    for ex in harness.executors:
        ex.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[ProcessExecutor]:
    """One reused child for the tests that only look at results (start-ups cost ~0.2 s)."""
    ex = ProcessExecutor(size=1, reuse=True, sys_path=[], env={}, info=INFO)
    yield ex
    ex.close()


def _key(fn: Callable[..., Any]) -> str:
    # By content, as the client keys functions (an id() is reused once a lambda is freed).
    return hashlib.sha256(cloudpickle.dumps(fn)).hexdigest()


def run_raw(
    ex: ProcessExecutor,
    fn: Callable[..., Any],
    *args: Any,
    task_id: int | None = None,
    on_output: Callable[[str, str], None] = _ignore,
) -> tuple[bool, Any]:
    result: tuple[bool, Any] = ex.run(
        next(_ids) if task_id is None else task_id,
        _wire.RUN,
        _key(fn),
        _serial.dumps(fn),
        _serial.dumps((args, {})),
        on_output,
    )
    return result


def call(ex: ProcessExecutor, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    ok, payload = run_raw(ex, fn, *args, **kw)
    assert ok, payload[3]
    return _serial.loads(payload)


def in_process(fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    cache = FunctionCache()
    cache.add("k", _serial.dumps(fn))
    return run_one(cache, "k", _serial.dumps((args, {})))


# --- results ---------------------------------------------------------------------------


def test_run_result_equals_run_one_in_process(shared: ProcessExecutor) -> None:
    ex = shared

    def fn(x: int, y: int) -> dict[str, int]:
        return {"sum": x + y, "product": x * y}

    ok, payload = run_raw(ex, fn, 6, 7)
    ok_here, payload_here = in_process(fn, 6, 7)
    assert (ok, _serial.loads(payload)) == (ok_here, _serial.loads(payload_here))
    assert _serial.loads(payload) == {"sum": 13, "product": 42}


def test_exception_comes_back_in_dump_exception_form(shared: ProcessExecutor) -> None:
    ex = shared

    def fn() -> None:
        raise ValueError("boom")

    ok, (exc_payload, name, text, tb) = run_raw(ex, fn)
    ok_here, (_, name_here, text_here, _) = in_process(fn)
    assert (
        (ok, name, text)
        == (ok_here, name_here, text_here)
        == (False, "builtins.ValueError", "boom")
    )
    assert "in fn" in tb
    assert tb.endswith("ValueError: boom\n")
    exc = _serial.loads(exc_payload)
    assert isinstance(exc, ValueError)
    assert exc.args == ("boom",)


def test_batch_result_equals_run_batch_in_process(shared: ProcessExecutor) -> None:
    ex = shared
    inverse = lambda x: 1 / x  # noqa: E731
    items = [1, 2, 0, 4]
    payload = ex.run(
        next(_ids),
        _wire.BATCH,
        _key(inverse),
        _serial.dumps(inverse),
        _serial.dumps(items),
        _ignore,
    )
    cache = FunctionCache()
    cache.add("k", _serial.dumps(inverse))
    here = _serial.loads(run_batch(cache, "k", _serial.dumps(items)))
    there = _serial.loads(payload)
    assert [ok for ok, _ in there] == [ok for ok, _ in here] == [True, True, False, True]
    assert [v for ok, v in there if ok] == [v for ok, v in here if ok] == [1.0, 0.5, 0.25]
    assert there[2][1][1:3] == here[2][1][1:3] == ("builtins.ZeroDivisionError", "division by zero")


def test_large_payloads_travel_out_of_band(shared: ProcessExecutor) -> None:
    """Args as they come off the wire (bytearrays, not PickleBuffers) go to the child out of
    band, and the result comes back ready for the worker to send out of band as well."""
    ex = shared
    blob = os.urandom(1 << 20)
    (message,) = _wire.FrameDecoder(expect_hello=False).feed(
        b"".join(_wire.encode((_wire.RUN, 1, "k", None, _serial.dumps(((blob,), {})))))
    )
    wire_args = message[4]

    def echo(data: bytes) -> bytes:
        return data[::-1]

    ok, payload = ex.run(next(_ids), _wire.RUN, "echo", _serial.dumps(echo), wire_args, _ignore)
    assert ok
    frame = _wire.encode((_wire.RESULT, 1, ok, payload, 0.0))
    assert len(frame) > 1
    assert len(frame[0]) < 4096  # the megabyte is not in the header
    (result,) = _wire.FrameDecoder(expect_hello=False).feed(b"".join(frame))
    assert _serial.loads(result[3]) == blob[::-1]


def test_generator_items_stream_through_on_item(shared: ProcessExecutor) -> None:
    ex = shared

    def gen(n: int) -> Iterator[int]:
        for i in range(n):
            yield i * i
        return "done"  # type: ignore[return-value]

    items: list[Any] = []

    def on_item(payload: _serial.Payload) -> bool:
        items.append(_serial.loads(payload))
        return True

    ok, payload = ex.run(
        next(_ids),
        _wire.RUN,
        _key(gen),
        _serial.dumps(gen),
        _serial.dumps(((4,), {})),
        _ignore,
        on_item,
    )
    assert (ok, _serial.loads(payload), items) == (True, "done", [0, 1, 4, 9])


def test_on_item_false_stops_the_generator(shared: ProcessExecutor, tmp_path: Path) -> None:
    ex = shared
    closed = tmp_path / "closed"

    def endless(marker: str) -> Iterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
        finally:
            Path(marker).touch()

    items: list[Any] = []

    def on_item(payload: _serial.Payload) -> bool:
        items.append(_serial.loads(payload))
        return len(items) < 3

    ok, payload = ex.run(
        next(_ids),
        _wire.RUN,
        _key(endless),
        _serial.dumps(endless),
        _serial.dumps(((str(closed),), {})),
        _ignore,
        on_item,
    )
    assert (ok, _serial.loads(payload), items) == (True, None, [0, 1, 2])
    assert closed.exists()  # the generator was closed in the child
    assert call(ex, lambda: "still serving") == "still serving"


def test_iterator_arguments_are_fed_item_by_item(shared: ProcessExecutor) -> None:
    ex = shared
    asked: list[int] = []
    closed: list[int] = []

    def source(slot: int) -> Iterator[_serial.Payload]:
        asked.append(slot)
        try:
            for i in range(1, 1000):
                yield _serial.dumps(i * (10 if slot else 1))
        finally:
            closed.append(slot)

    def take(a: Iterator[int], *, b: Iterator[int]) -> tuple[list[int], list[int]]:
        return [next(a) for _ in range(3)], [next(b) for _ in range(2)]

    args = _serial.dumps(((StreamedInput(0),), {"b": StreamedInput(1)}))
    ok, payload = ex.run(
        next(_ids), _wire.RUN, _key(take), _serial.dumps(take), args, _ignore, None, source
    )
    assert ok, payload
    assert _serial.loads(payload) == ([1, 2, 3], [10, 20])
    assert sorted(asked) == sorted(closed) == [0, 1]  # unfinished sources are closed


# --- children --------------------------------------------------------------------------


def test_cpu_bound_tasks_run_at_once_in_two_children(make: Harness, tmp_path: Path) -> None:
    """Each task spins in pure Python until both have started: if they were serialized, the
    first would time out alone (and the pids would be equal)."""
    ex = make(size=2)

    def spin(directory: str) -> tuple[int, float, float]:
        me = os.getpid()
        start = time.monotonic()
        Path(directory, str(me)).touch()
        total = 0
        while len(os.listdir(directory)) < 2 and time.monotonic() < start + 20:
            for i in range(10_000):
                total += i * i
        return me, start, time.monotonic()

    results: list[tuple[int, float, float]] = []
    threads = [
        threading.Thread(target=lambda: results.append(call(ex, spin, str(tmp_path))))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (pid_a, start_a, end_a), (pid_b, start_b, end_b) = results
    assert pid_a != pid_b
    assert max(start_a, start_b) < min(end_a, end_b)  # the two intervals overlap
    assert max(end_a, end_b) - min(start_a, start_b) < 15  # neither waited for the deadline


def test_function_payload_is_sent_once_per_child(make: Harness) -> None:
    ex = make()
    first = lambda: 1  # noqa: E731
    second = lambda: 2  # noqa: E731
    assert [call(ex, first) for _ in range(3)] == [1, 1, 1]
    (status,) = ex.children()
    assert (status.functions, status.tasks) == (1, 3)
    assert call(ex, second) == 2
    assert call(ex, first) == 1
    (status,) = ex.children()
    assert (status.functions, status.tasks) == (2, 5)


def test_reuse_keeps_the_same_child(make: Harness) -> None:
    ex = make(reuse=True)
    pids = {call(ex, os.getpid) for _ in range(3)}
    assert len(pids) == 1


def test_without_reuse_every_task_gets_a_fresh_child(make: Harness) -> None:
    ex = make(reuse=False)
    pids = [call(ex, os.getpid) for _ in range(3)]
    assert len(set(pids)) == 3
    assert len(ex.children()) == 1  # the spare, ready for the next task


def _slot(directory: str) -> tuple[int, tuple[int, int] | None]:
    """This child's pid and slot, once two children have started (so both are in use)."""
    from skyward_trio import _runtime

    Path(directory, str(os.getpid())).touch()
    deadline = time.monotonic() + 20
    while len(os.listdir(directory)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid(), _runtime.process_slot()


def _all_gone(status: str) -> bool:
    """Whether a /proc status is a zombie's whose every thread has exited."""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields["State"].split()[0] == "Z" and fields["Threads"].strip() == "1"


def _two_at_once(ex: ProcessExecutor, directory: Path) -> dict[int, tuple[int, int] | None]:
    directory.mkdir()
    results: list[tuple[int, tuple[int, int] | None]] = []
    threads = [
        threading.Thread(target=lambda: results.append(call(ex, _slot, str(directory))))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(results)


def test_each_child_holds_a_slot_and_a_replacement_takes_the_one_freed(
    make: Harness, tmp_path: Path
) -> None:
    from skyward_trio import _runtime

    ex = make(size=2)
    first = _two_at_once(ex, tmp_path / "first")
    assert sorted(first.values()) == [(0, 2), (1, 2)]  # type: ignore[type-var]
    assert _runtime.process_slot() is None  # not in a subprocess
    # The child in slot 0 dies while idle; the one started in its place takes slot 0.
    (dead,) = [pid for pid, slot in first.items() if slot == (0, 2)]
    (alive,) = [pid for pid, slot in first.items() if slot == (1, 2)]
    os.kill(dead, signal.SIGKILL)
    status = Path(f"/proc/{dead}/status")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _all_gone(status.read_text()):
        time.sleep(0.01)  # until it is a zombie: dead, and not yet reaped by its Popen
    second = _two_at_once(ex, tmp_path / "second")
    assert second[alive] == (1, 2)
    (new,) = set(second) - {alive}
    assert new != dead
    assert second[new] == (0, 2)


def test_one_shot_children_reuse_the_slots(make: Harness) -> None:
    from skyward_trio import _runtime

    ex = make(reuse=False)
    assert [call(ex, _runtime.process_slot) for _ in range(3)] == [(0, 1)] * 3


# --- deaths and cancellation -----------------------------------------------------------


def test_exit_in_a_task_is_child_died_with_the_code(make: Harness) -> None:
    ex = make()
    before = call(ex, os.getpid)
    with pytest.raises(ChildDied) as info:
        run_raw(ex, lambda: os._exit(3))
    assert type(info.value) is ChildDied
    assert (info.value.exit_code, info.value.signal) == (3, None)
    assert str(info.value) == "the worker subprocess running this task died: exited with code 3"
    after = call(ex, os.getpid)
    assert after != before
    assert [c.pid for c in ex.children()] == [after]


def test_segfault_is_child_died_with_the_signal(make: Harness) -> None:
    ex = make()

    def crash() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.kill(os.getpid(), signal.SIGSEGV)

    with pytest.raises(ChildDied) as info:
        run_raw(ex, crash)
    assert (info.value.exit_code, info.value.signal) == (None, signal.SIGSEGV)
    assert "killed by signal 11 (SIGSEGV)" in str(info.value)
    assert call(ex, lambda: "alive") == "alive"


def test_cancel_kills_the_running_task(make: Harness) -> None:
    ex = make()
    started = threading.Event()

    def on_output(stream: str, text: str) -> None:
        if "started" in text:
            started.set()

    def sleeper() -> None:
        print("started")
        time.sleep(60)

    caught: list[BaseException] = []

    def target() -> None:
        try:
            run_raw(ex, sleeper, task_id=-7, on_output=on_output)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(10)
    assert ex.cancel(-8) is False
    t0 = time.monotonic()
    assert ex.cancel(-7) is True
    thread.join(10)
    assert time.monotonic() - t0 < 5
    (exc,) = caught
    assert isinstance(exc, TaskKilled)
    assert exc.signal == signal.SIGKILL
    assert "cancelled" in str(exc)
    assert ex.cancel(-7) is False
    assert call(ex, lambda: "next") == "next"


def test_cancel_reaches_a_run_waiting_for_a_child(make: Harness) -> None:
    ex = make(size=1)
    caught: dict[int, BaseException] = {}

    def target(task_id: int) -> None:
        try:
            run_raw(ex, lambda: time.sleep(60), task_id=task_id)
        except BaseException as exc:
            caught[task_id] = exc

    busy = threading.Thread(target=target, args=(-1,))
    busy.start()
    deadline = time.monotonic() + 10
    while not ex.children() and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = threading.Thread(target=target, args=(-2,))
    waiting.start()
    time.sleep(0.05)  # let it reach the wait (a cancel before it works too)
    assert ex.cancel(-2) is True
    waiting.join(5)
    assert isinstance(caught[-2], TaskKilled)
    assert "dropped before a worker subprocess ran it" in str(caught[-2])
    assert caught[-2].signal is None
    assert [c.task_id for c in ex.children()] == [-1]
    assert ex.cancel(-1) is True
    busy.join(5)
    assert isinstance(caught[-1], TaskKilled)


# --- output ----------------------------------------------------------------------------


def test_output_reaches_on_output_live(shared: ProcessExecutor, tmp_path: Path) -> None:
    """The task waits for a file that on_output creates once it has seen the task's output:
    the task returns True only if its output arrived while it was still running."""
    ex = shared
    flag = tmp_path / "seen"
    seen: Output = []

    def on_output(stream: str, text: str) -> None:
        seen.append((stream, text))
        out = "".join(t for s, t in seen if s == "stdout")
        err = "".join(t for s, t in seen if s == "stderr")
        if all(w in out for w in ("hello", "raw", "sub-out")) and all(
            w in err for w in ("oops", "sub-err")
        ):
            flag.touch()

    def chatty(flag: str) -> bool:
        print("hello")
        print("oops", file=sys.stderr)
        os.write(1, b"raw\n")
        subprocess.run(["sh", "-c", "echo sub-out; echo sub-err >&2"], check=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.005)
        print("tail", end="")  # a partial line: flushed when the task ends
        return os.path.exists(flag)

    assert call(ex, chatty, str(flag), on_output=on_output) is True
    out = "".join(t for s, t in seen if s == "stdout")
    err = "".join(t for s, t in seen if s == "stderr")
    assert out == "hello\nraw\nsub-out\ntail"
    assert err == "oops\nsub-err\n"


def test_output_is_utf8_and_per_task(shared: ProcessExecutor) -> None:
    ex = shared
    first: Output = []
    second: Output = []
    call(ex, lambda: print("héllo ✓"), on_output=lambda s, t: first.append((s, t)))
    call(ex, lambda: print("second"), on_output=lambda s, t: second.append((s, t)))
    # Chunks are as the pipe delivers them, not lines: the worker joins them into lines.
    assert {s for s, _ in first + second} == {"stdout"}
    assert "".join(t for _, t in first) == "héllo ✓\n"
    assert "".join(t for _, t in second) == "second\n"


def test_on_output_raising_kills_the_child_and_propagates(make: Harness) -> None:
    ex = make()
    before = call(ex, os.getpid)

    def on_output(stream: str, text: str) -> None:
        raise RuntimeError("sink broke")

    with pytest.raises(RuntimeError, match="sink broke"):
        run_raw(ex, lambda: print("x"), on_output=on_output)
    assert _gone(before)
    assert call(ex, os.getpid) != before


# --- the child's environment -----------------------------------------------------------


def test_child_sees_instance_info_sys_path_and_env(make: Harness, tmp_path: Path) -> None:
    (tmp_path / "procpool_probe_mod.py").write_text("VALUE = 'from sys_path'\n")
    ex = make(sys_path=[str(tmp_path)], env={"SKYWARD_PROCPOOL_PROBE": "from env"})

    def probe() -> tuple[Any, str, str | None]:
        import procpool_probe_mod  # type: ignore[import-not-found]

        return (
            skyward_trio.instance_info(),
            procpool_probe_mod.VALUE,
            os.environ.get("SKYWARD_PROCPOOL_PROBE"),
        )

    info, value, env = call(ex, probe)
    assert info == from_dict(INFO)
    assert (value, env) == ("from sys_path", "from env")


def test_child_imports_nothing_heavy() -> None:
    code = (
        "import skyward_trio._procchild, sys\n"
        "heavy = {'trio', 'asyncssh', 'httpx', 'rich', 'numpy', 'cattrs'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --- shutdown --------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Reparented to an init that has not reaped it yet: a zombie is gone too.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" in status.read_text()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_leaves_no_child_alive(make: Harness) -> None:
    fds = _open_fds()
    ex = make(size=2, reuse=False)
    retired = [call(ex, os.getpid)]  # exits by itself; a spare takes its place
    caught: list[BaseException] = []

    def target() -> None:
        try:
            run_raw(ex, lambda: time.sleep(60), task_id=-1, on_output=lambda s, t: None)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=target)
    thread.start()  # takes the spare
    deadline = time.monotonic() + 10
    while not any(c.task_id == -1 for c in ex.children()) and time.monotonic() < deadline:
        time.sleep(0.01)
    retired.append(call(ex, os.getpid))  # a second child, and a spare after it
    children = ex.children()
    assert [c.task_id for c in children] == [-1, None]
    ex.close()
    thread.join(10)
    (exc,) = caught
    assert isinstance(exc, TaskKilled)
    assert "shutting down" in str(exc)
    for pid in [*retired, *(c.pid for c in children)]:
        assert _gone(pid), pid
    assert _open_fds() == fds  # sockets, pipes and pidfds all closed
    ex.close()  # idempotent
    with pytest.raises(ExecutorClosed):
        call(ex, os.getpid)


def test_children_exit_when_the_worker_dies(tmp_path: Path) -> None:
    """A worker killed without closing its executor must not leave children running."""
    script = f"""
import os, sys, threading, time
import cloudpickle
from skyward_trio import _serial, _wire
from skyward_trio._procpool import ProcessExecutor
ex = ProcessExecutor(size=1, reuse=True, sys_path=[], env={{}}, info={INFO!r})
pids = []
def task():
    print(os.getpid(), flush=True)
    time.sleep(60)
def on_output(stream, text):
    pids.append(int(text))
fn = _serial.dumps(task)
threading.Thread(
    target=ex.run, args=(1, _wire.RUN, "k", fn, _serial.dumps(((), {{}})), on_output), daemon=True
).start()
while not pids:
    time.sleep(0.01)
print(pids[0], flush=True)
os._exit(0)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    pid = int(out.split()[0])
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(pid)
