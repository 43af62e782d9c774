"""The process executor: a pool of Python subprocesses per node that run tasks past the GIL.

The worker's task threads call :meth:`ProcessExecutor.run`; each call takes an idle child
(starting one while fewer than ``size`` exist, else waiting), sends it the task and blocks
until the reply. The calling thread is also the child's I/O thread for the duration: it
polls the child's channel, its stdout and stderr pipes and its pidfd together, hands
output to ``on_output`` as it arrives, and notices at once when the child dies. When the
reply arrives it first drains both pipes (the child flushed them before replying), so all
of a task's output is attributed to it and delivered before ``run`` returns.

Rejected alternative: two reader threads per child for the pipes. They cannot tell
whether a chunk they read just before the reply belongs to the task that ended or to the
next one without a second handshake, and they cost two threads per child.

Children are ``python -m skyward_trio._procchild`` started with ``subprocess.Popen``
(not ``multiprocessing``: the worker is multi-threaded, so fork is unsafe). See that
module for the protocol and for how a child ends when the worker dies.

Errors raised by ``run``::

    ChildDied            the child died during the task (exit code or signal attached)
     └── TaskKilled      ... because cancel() or close() was called during this run
    ExecutorClosed       run() was called after close()
    OSError              a child could not be started (e.g. too many open files)

Layer 3: stdlib, ``_execute``, ``_serial``, ``_wire`` and ``_procchild`` only; imported on
nodes.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import select
import signal as _signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from . import _execute, _serial, _wire
from ._errors import SkywardError
from ._procchild import ACK, DONE, INIT, INPUT, INPUT_END, ITEM, NEXT, TASK

__all__ = [
    "ChildDied",
    "ChildStatus",
    "ExecutorClosed",
    "InputPayloads",
    "OutputCallback",
    "ProcessExecutor",
    "RankOutcome",
    "TaskKilled",
]

#: Receives ``(stream, text)`` with stream ``"stdout"`` or ``"stderr"``.
OutputCallback = Callable[[str, str], None]
#: Gives the item payloads of the ``Iterator[T]`` argument in a slot (``_execute.StreamedInput``).
InputPayloads = Callable[[int], Iterator[_serial.Payload]]

# How long a child that closed its channel may take to exit before it is killed.
_EXIT_WAIT = 5.0
# How long idle children get to exit on their own (atexit handlers) at close().
_CLOSE_GRACE = 1.0
# How long close() waits for killed children to be reaped before it reports them.
_KILL_WAIT = 5.0
# A one-shot child still running this long after its reply (a non-daemon thread, a slow
# atexit handler) is killed: it holds memory (and maybe a GPU) that a fresh child needs.
_RETIRE_GRACE = 10.0
# Payload heads at least this large travel out of band (as in _serial).
_OOB_MIN = 64 * 1024
_READ = 1 << 16


class ChildDied(SkywardError):
    """The subprocess running a task died (segfault, ``os._exit``, OOM kill...).

    Raised in the caller (as ``sky.ChildDied``) for a task under ``executor="process"``
    whose subprocess died; the node goes on with a new subprocess.

    Attributes:
        exit_code: The exit status, if the child exited.
        signal: The signal number, if a signal killed it.
        pid: The child's process id.
    """

    def __init__(
        self, exit_code: int | None = None, signal: int | None = None, pid: int | None = None
    ) -> None:
        self.exit_code = exit_code
        self.signal = signal
        self.pid = pid
        super().__init__(self._message())

    @property
    def how(self) -> str:
        """How the child ended, e.g. ``"killed by signal 9 (SIGKILL)"``."""
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = "unknown signal"
            return f"killed by signal {self.signal} ({name})"
        if self.exit_code is not None:
            return f"exited with code {self.exit_code}"
        return "ended before it could report how"

    def _message(self) -> str:
        hint = ""
        if self.signal == _signal.SIGKILL:
            hint = "; nobody cancelled the task, so this is often the out-of-memory killer"
        elif self.signal in (_signal.SIGSEGV, _signal.SIGBUS, _signal.SIGABRT):
            hint = "; a crash in native code (a C extension or the interpreter)"
        return f"the worker subprocess running this task died: {self.how}{hint}"

    def __reduce__(self) -> Any:
        return type(self), (self.exit_code, self.signal, self.pid)


class TaskKilled(ChildDied):
    """The subprocess was killed on purpose: its task was cancelled, or the worker is closing.

    Attributes:
        reason: Why it was killed, e.g. ``"the task was cancelled"``.
    """

    def __init__(
        self,
        exit_code: int | None = None,
        signal: int | None = None,
        pid: int | None = None,
        reason: str = "the task was cancelled",
    ) -> None:
        self.reason = reason
        super().__init__(exit_code, signal, pid)

    def _message(self) -> str:
        if self.exit_code is None and self.signal is None:
            return f"the task was dropped before a worker subprocess ran it: {self.reason}"
        return (
            f"the worker subprocess running this task was killed on purpose "
            f"({self.reason}): {self.how}"
        )

    def __reduce__(self) -> Any:
        return type(self), (self.exit_code, self.signal, self.pid, self.reason)


class ExecutorClosed(Exception):
    """The process executor was closed (the worker is shutting down); no task can start."""


@dataclass(frozen=True, kw_only=True)
class ChildStatus:
    """A snapshot of one live child, for diagnostics and tests.

    Attributes:
        pid: The child's process id.
        task_id: The task it is running, or None when idle.
        functions: Function payloads it has received (each is sent once per child).
        tasks: Tasks it has completed.
    """

    pid: int
    task_id: Hashable | None
    functions: int
    tasks: int


_CANCELLED = "the task was cancelled"
_CLOSING = "the worker is shutting down"
_PEER_FAILED = "another worker of the broadcast failed first"


@dataclass(frozen=True)
class RankOutcome:
    """How one worker's share of :meth:`ProcessExecutor.run_every` ended.

    Attributes:
        slot: The worker's slot (its ``InstanceInfo.worker``).
        result: ``(ok, payload)`` as ``_execute.run_one`` returned it, if the child replied.
        died: Why it has no result: its child died, or was stopped (``TaskKilled``)
            because another worker failed first.
    """

    slot: int
    result: tuple[bool, Any] | None
    died: ChildDied | None = None


class _Run:
    """One call of ``run`` (or ``run_every``), registered from entry so that ``cancel``
    reaches it anywhere."""

    __slots__ = ("child", "gang", "kill_reason")

    def __init__(self) -> None:
        self.child: _Child | None = None
        self.gang: list[_Child] = []  # run_every's children, one per slot
        self.kill_reason: str | None = None

    def children(self) -> list[_Child]:
        return [self.child] if self.child is not None else list(self.gang)


class ProcessExecutor:
    """A pool of up to ``size`` Python subprocesses that run tasks, for one node.

    Thread-safe: ``run`` is called from many task threads at once, ``cancel`` and ``close``
    from any thread.

    Args:
        size: The most children alive at once (the worker's concurrency).
        reuse: Keep children between tasks. False gives each task a fresh child, which
            exits after its reply; a replacement is started right away, so the next task
            does not wait for an interpreter to start.
        sys_path: Entries put at the front of each child's ``sys.path``.
        env: Variables added to each child's environment (set before the interpreter
            starts, so they also reach the task's own subprocesses).
        info: The node's ``InstanceInfo`` in ``_info.to_dict`` form, installed in each
            child so ``sky.instance_info()`` works there. With ``workers_per_node`` above
            1 each child is a worker of its own (its slot is its ``worker``), and
            :meth:`run_every` runs a task on all of them at once.
        plugins: The plugins' node hooks (``_pluginrun.pack``), or None.
    """

    def __init__(
        self,
        *,
        size: int,
        reuse: bool,
        sys_path: list[str],
        env: dict[str, str],
        info: dict[str, Any],
        plugins: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"ProcessExecutor size must be at least 1; got {size}")
        self._size = size
        self._reuse = reuse
        self._env = dict(env)
        self._init = (
            INIT,
            {"sys_path": list(sys_path), "info": info, "one_shot": not reuse, "plugins": plugins},
        )
        # notify_all, never notify: a woken waiter may leave (cancelled) without taking
        # the child or slot it was woken for, and a single wake-up would then be lost.
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[_Child] = []
        self._runs: dict[Hashable, _Run] = {}
        self._retiring: list[_Child] = []
        # Children started (or being started) and not yet discarded or retired.
        self._count = 0
        # Each child holds a slot, 0 .. size - 1, from its start until it leaves the count:
        # its index among the children alive at once (``process_slot()`` in it).
        self._free_slots = set(range(size))
        self._closed = False
        # run_every calls waiting for every child, first come first served; run() waits
        # behind them, so that tasks coming and going cannot starve them.
        self._gangs: collections.deque[_Run] = collections.deque()
        # Raised when a child dies or is killed mid-task. When the children are ranks of
        # one process group (a broadcast's workers), a group that lost a member is broken:
        # run_every starts fresh children in place of those from an older generation.
        self._generation = 0

    # --- public ------------------------------------------------------------------------

    def run(
        self,
        task_id: Hashable,
        kind: int,
        fn_key: str,
        fn_payload: _serial.Payload,
        args_payload: _serial.Payload,
        on_output: OutputCallback,
        on_item: _execute.ItemSink | None = None,
        inputs: InputPayloads | None = None,
    ) -> Any:
        """Run one task in a child and return what ``_execute`` returned there.

        Blocks until the task ends. ``fn_payload`` must always be given: it is sent only
        to children that have not seen ``fn_key``.

        Args:
            task_id: Names the task for ``cancel``; unique among the runs in progress.
            kind: ``_wire.RUN`` or ``_wire.BATCH``.
            fn_key: The function's cache key.
            fn_payload: The pickled function.
            args_payload: ``(args, kwargs)`` for RUN, the list of items for BATCH.
            on_output: Called from this thread with ``(stream, text)`` as the task writes
                to stdout or stderr (fd 1 and 2, so C code and subprocesses too). If it
                raises, the child is killed and the exception propagates.
            on_item: For a RUN of a generator function, called from this thread with
                each item's payload as the generator yields it (as ``_execute.run_one``'s
                ``on_item``); the generator waits for its answer, and stops on False.
                If it raises, the child is killed and the exception propagates.
            inputs: For a RUN with ``Iterator[T]`` arguments (``_execute.StreamedInput``),
                gives the item *payloads* of a slot; called from this thread when the task
                first reads that argument, and advanced one item per read. If it raises
                (e.g. the call was cancelled), the child is killed and it propagates.

        Returns:
            For RUN, ``(ok, payload)`` as ``_execute.run_one``; for BATCH, the payload of
            ``_execute.run_batch``. Buffers are ``pickle.PickleBuffer`` again, so
            ``_wire.encode`` sends them out of band.

        Raises:
            ChildDied: The child died during the task; it is discarded.
            TaskKilled: ``cancel(task_id)`` or ``close()`` was called during this run.
            ExecutorClosed: ``close()`` was called before this run.
            OSError: A child could not be started.
            ValueError: ``kind`` is unknown, or ``task_id`` is already running.
        """
        if kind not in (_wire.RUN, _wire.BATCH):
            raise ValueError(f"task kind must be _wire.RUN or _wire.BATCH; got {kind!r}")
        entry = self._enter(task_id)
        try:
            child = self._acquire(entry, fn_key)
        except BaseException:
            with self._cond:
                del self._runs[task_id]
            raise
        try:
            replied, result = child.execute(
                kind, fn_key, fn_payload, args_payload, on_output, on_item, inputs
            )
        except BaseException:
            # A callback raised, or a protocol error: the child is mid-task, so it goes.
            with self._cond:
                del self._runs[task_id]
                self._leave(child)
                self._generation += 1
                self._cond.notify_all()
            child.kill()
            child.reap()
            child.close_fds()
            raise
        return self._finish(task_id, entry, child, replied, result)

    def run_every(
        self,
        task_id: Hashable,
        fn_key: str,
        fn_payload: _serial.Payload,
        args_payload: _serial.Payload,
        outputs: list[OutputCallback],
    ) -> tuple[list[RankOutcome], int | None]:
        """Run one RUN task in every child at once, each a worker (rank) of the node.

        Waits until no child is busy (calls of ``run_every`` in the order they came,
        ahead of ``run``'s), then takes one child per slot, starting those missing and
        fresh ones in place of any from before a child was lost (a process group that
        lost a rank cannot meet again). Each child runs in a thread of its own, slot 0
        in the calling one. The first child to fail (its function raised, or it died)
        stops those still running: their ranks would otherwise wait for it in their
        next collective, forever.

        Args:
            task_id: As for ``run``; ``cancel(task_id)`` kills every child of the task.
            fn_key: The function's cache key.
            fn_payload: The pickled function.
            args_payload: ``(args, kwargs)``, the same for every child.
            outputs: One output callback per slot (``size`` of them), each called from
                its child's thread.

        Returns:
            Each slot's :class:`RankOutcome`, by slot; and the slot that failed first,
            or None if every one returned.

        Raises:
            TaskKilled: ``cancel(task_id)`` or ``close()`` was called during this run.
            ExecutorClosed: ``close()`` was called before this run.
            OSError: A child could not be started.
            ValueError: ``task_id`` is already running, or ``outputs`` is not one per slot.
        """
        if len(outputs) != self._size:
            raise ValueError(f"run_every needs {self._size} output callbacks; got {len(outputs)}")
        entry = self._enter(task_id)
        try:
            gang = self._acquire_gang(entry)
        except BaseException:
            with self._cond:
                del self._runs[task_id]
                self._cond.notify_all()
            raise
        replies: list[tuple[bool, Any]] = [(False, None)] * len(gang)
        lock = threading.Lock()
        finished: set[int] = set()
        stopped: set[int] = set()
        failed: list[int] = []

        def one(slot: int) -> None:
            child = gang[slot]
            try:
                reply = child.execute(
                    _wire.RUN, fn_key, fn_payload, args_payload, outputs[slot], None, None
                )
            except BaseException:
                # A callback raised, or a protocol error: the child is mid-task, so it goes.
                child.kill()
                reply = (False, None)
            replies[slot] = reply
            with lock:
                finished.add(slot)
                if reply[0] and reply[1][0]:
                    return
                failed.append(slot)
                if len(failed) > 1:
                    return
                running = [other for other in gang if other.slot not in finished]
                stopped.update(other.slot for other in running)
            for other in running:
                other.kill()

        threads = [
            threading.Thread(target=one, args=(slot,), name=f"skyward-rank-{slot}", daemon=True)
            for slot in range(1, len(gang))
        ]
        for thread in threads:
            thread.start()
        try:
            one(0)
        finally:
            for thread in threads:
                thread.join()
        with self._cond:
            del self._runs[task_id]
            reason = entry.kill_reason
        kept = [replied and reason is None for replied, _ in replies]
        self._settle(gang, kept)
        if reason is not None:
            child = next((c for c, keep in zip(gang, kept, strict=True) if not keep), gang[0])
            raise TaskKilled(*_how(child), child.pid, reason)
        outcomes = []
        for child, (replied, result) in zip(gang, replies, strict=True):
            died: ChildDied | None = None
            if not replied:
                code, signum = _how(child)
                died = (
                    TaskKilled(code, signum, child.pid, _PEER_FAILED)
                    if child.slot in stopped
                    else ChildDied(code, signum, child.pid)
                )
            outcomes.append(RankOutcome(child.slot, result if replied else None, died))
        return outcomes, (failed[0] if failed else None)

    def cancel(self, task_id: Hashable) -> bool:
        """Kill (SIGKILL) the child running ``task_id``; its ``run`` raises TaskKilled.

        Returns:
            True if a ``run`` for ``task_id`` was in progress; it then raises TaskKilled
            even if its child had already replied. False otherwise.
        """
        with self._cond:
            entry = self._runs.get(task_id)
            if entry is None or entry.kill_reason is not None:
                return False
            entry.kill_reason = _CANCELLED
            children = entry.children()
            for child in children:
                child.kill()
            if not children:
                self._cond.notify_all()  # it may be waiting for a child
            return True

    def close(self) -> None:
        """Kill every child and wait for them to be gone. Idempotent.

        Idle children that have run tasks get their channel closed and a short grace to
        exit by themselves (their atexit handlers run); unused spares and children busy
        with a task are killed at once, and a busy child's ``run`` raises TaskKilled.
        Bounded: about ``_CLOSE_GRACE + _KILL_WAIT`` s.

        Raises:
            RuntimeError: Some child was still alive after SIGKILL and the wait (listed
                by pid); it is not waited for again.
        """
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            retiring, self._retiring = self._retiring, []
            for child in idle:
                self._leave(child)
            busy: list[_Child] = []
            for entry in self._runs.values():
                if entry.kill_reason is None:
                    entry.kill_reason = _CLOSING
                for child in entry.children():
                    child.kill()
                    busy.append(child)
            self._cond.notify_all()
        gentle = idle + retiring
        for child in idle:
            if child.tasks:
                child.close_channel()
            else:
                child.kill()  # a spare that never ran user code has nothing to clean up
        deadline = time.monotonic() + _CLOSE_GRACE
        for child in gentle:
            if not child.wait_until(deadline):
                child.kill()
        deadline = time.monotonic() + _KILL_WAIT
        alive = [c.pid for c in gentle + busy if not c.wait_until(deadline)]
        for child in gentle:
            child.drain(_to_node_log)
            child.close_fds()
        if alive:
            raise RuntimeError(
                f"process executor: children {alive} were still alive {_KILL_WAIT:g} s after "
                "SIGKILL (stuck in the kernel, e.g. on a hung device or file system); "
                "check them with ps and kill them by hand"
            )

    def children(self) -> list[ChildStatus]:
        """A snapshot of the live children, busy first."""
        with self._cond:
            busy = [(c, task_id) for task_id, e in self._runs.items() for c in e.children()]
            idle = [(c, None) for c in self._idle]
        return [
            ChildStatus(pid=c.pid, task_id=task_id, functions=c.functions, tasks=c.tasks)
            for c, task_id in busy + idle
        ]

    # --- internals -----------------------------------------------------------------------

    def _enter(self, task_id: Hashable) -> _Run:
        with self._cond:
            if self._closed:
                raise ExecutorClosed("the process executor is closed: the worker is shutting down")
            if task_id in self._runs:
                raise ValueError(f"task {task_id!r} is already running in the process executor")
            entry = _Run()
            self._runs[task_id] = entry
            finished = self._collect_retired()
        for child in finished:
            child.drain(_to_node_log)
            child.close_fds()
        return entry

    def _check_wanted(self, entry: _Run) -> None:
        """While ``entry`` waits for children (under the lock): raise if it was cancelled,
        or the executor closed."""
        if entry.kill_reason is not None:
            raise TaskKilled(reason=entry.kill_reason)
        if self._closed:
            raise ExecutorClosed("the process executor is closed: the worker is shutting down")

    def _acquire(self, entry: _Run, fn_key: str) -> _Child:
        """Give ``entry`` a child: an idle one, a new one, or the first to come free."""
        dead: list[_Child] = []
        try:
            with self._cond:
                while True:
                    self._check_wanted(entry)
                    if self._gangs:
                        self._cond.wait()  # a run_every call waits for every child
                        continue
                    child = self._take_idle(fn_key, dead)
                    if child is not None:
                        entry.child = child
                        return child
                    if self._count < self._size:
                        self._count += 1
                        break
                    self._cond.wait()
        finally:
            for child in dead:
                child.reap()
                child.drain(_to_node_log)
                child.close_fds()
        try:
            child = self._start()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            reason = entry.kill_reason or (_CLOSING if self._closed else None)
            if reason is None:
                entry.child = child
                return child
            self._leave(child)
        child.kill()
        child.reap()
        child.close_fds()
        raise TaskKilled(reason=reason)

    def _take_idle(self, fn_key: str, dead: list[_Child]) -> _Child | None:
        """Pop an idle child, preferring one that has ``fn_key`` (call under the lock)."""
        while self._idle:
            pick = len(self._idle) - 1  # the most recently used: warmest caches
            for i in range(len(self._idle) - 1, -1, -1):
                if fn_key in self._idle[i].fn_keys:
                    pick = i
                    break
            child = self._idle.pop(pick)
            if child.proc.poll() is None:
                return child
            # Died while idle (e.g. a start-up failure of a spare): replace it silently;
            # a child that cannot start at all fails the run that gets a fresh one.
            self._leave(child)
            dead.append(child)
        return None

    def _finish(
        self, task_id: Hashable, entry: _Run, child: _Child, replied: bool, result: Any
    ) -> Any:
        with self._cond:
            del self._runs[task_id]
            reason = entry.kill_reason
        if self._settle([child], [replied and reason is None]):
            return result
        if reason is not None:
            raise TaskKilled(*_how(child), child.pid, reason)
        raise ChildDied(*_how(child), child.pid)

    def _settle(self, children: list[_Child], kept: list[bool]) -> bool:
        """Children whose task ended: those ``kept`` (they replied, and nobody killed
        their task) go back to the idle ones (or retire, one-shot, a spare taking their
        place); the others are reaped and leave. True if every one was kept."""
        spares = 0
        with self._cond:
            for child, keep in zip(children, kept, strict=True):
                if not keep:
                    self._leave(child)
                    self._generation += 1
                elif self._reuse:
                    self._idle.append(child)
                else:
                    child.close_channel()  # it exits by itself after its one reply
                    child.retired_at = time.monotonic()
                    self._retiring.append(child)
                    # A one-shot child leaves the count when it replies, and a spare takes
                    # its place at once so the next task finds an interpreter ready.
                    self._leave(child)
                    if not self._closed and self._count < self._size:
                        self._count += 1
                        spares += 1
            self._cond.notify_all()
        for _ in range(spares):
            self._start_spare()
        for child, keep in zip(children, kept, strict=True):
            if not keep:
                child.reap()
                child.close_fds()
        return all(kept)

    def _acquire_gang(self, entry: _Run) -> list[_Child]:
        """One child per slot for ``entry`` (a ``run_every``), by slot: see there."""
        exited: list[_Child] = []
        try:
            return self._take_gang(entry, exited)
        finally:
            for child in exited:
                child.drain(_to_node_log)
                child.close_fds()

    def _take_gang(self, entry: _Run, exited: list[_Child]) -> list[_Child]:
        with self._cond:
            self._gangs.append(entry)
            try:
                while True:
                    self._check_wanted(entry)
                    # No child busy or being started: every counted one is idle.
                    if self._gangs[0] is entry and self._count == len(self._idle):
                        exited.extend(self._collect_retired())
                        if not self._retiring:
                            break
                        # One-shot children of the last group are still exiting: the new
                        # group's would meet their port and memory (a GPU's) still held.
                        self._cond.wait(0.05)
                        continue
                    self._cond.wait()
            finally:
                self._gangs.remove(entry)
                self._cond.notify_all()
            idle, self._idle = self._idle, []
            stale = [
                c for c in idle if c.generation != self._generation or c.proc.poll() is not None
            ]
            for child in stale:
                self._leave(child)
            gang = [c for c in idle if c not in stale]
            missing = self._size - len(gang)
            self._count += missing
            entry.gang = gang
        for child in stale:
            child.kill()
            child.reap()
            child.close_fds()
        try:
            for _ in range(missing):
                child = self._start()
                with self._cond:
                    gang.append(child)  # entry.gang: cancel() reaches it from now on
                missing -= 1
        except BaseException:
            with self._cond:
                self._count -= missing
            self._drop_gang(entry)
            raise
        with self._cond:
            reason = entry.kill_reason or (_CLOSING if self._closed else None)
            if reason is None:
                gang.sort(key=lambda c: c.slot)
                return gang
        self._drop_gang(entry)
        raise TaskKilled(reason=reason)

    def _drop_gang(self, entry: _Run) -> None:
        """The children taken for ``entry`` leave (killed): it will not run."""
        with self._cond:
            gang, entry.gang = entry.gang, []
            for child in gang:
                self._leave(child)
            self._cond.notify_all()
        for child in gang:
            child.kill()
            child.reap()
            child.close_fds()

    def _start_spare(self) -> None:
        try:
            child = self._start()
        except OSError as exc:
            # Not this task's failure (it succeeded): the next run() starts a child itself
            # and reports the error there if it persists.
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
            print(f"skyward: could not start a spare worker subprocess: {exc!r}", file=sys.stderr)
            return
        with self._cond:
            if not self._closed:
                self._idle.append(child)
                self._cond.notify_all()
                return
            self._leave(child)
        child.kill()
        child.reap()
        child.close_fds()

    def _collect_retired(self) -> list[_Child]:
        """Retired one-shot children that have exited; kill overdue ones (under the lock)."""
        finished: list[_Child] = []
        keep: list[_Child] = []
        now = time.monotonic()
        for child in self._retiring:
            if child.proc.poll() is not None:
                finished.append(child)
                continue
            if child.retired_at is not None and now - child.retired_at > _RETIRE_GRACE:
                child.kill()
            keep.append(child)
        self._retiring = keep
        return finished

    def _leave(self, child: _Child) -> None:
        """``child`` no longer counts: its slot is free (call under the lock)."""
        self._count -= 1
        self._free_slots.add(child.slot)

    def _start(self) -> _Child:
        with self._cond:
            slot = min(self._free_slots)  # _count was raised for this child: one is free
            self._free_slots.discard(slot)
        try:
            return self._spawn(slot)
        except BaseException:
            with self._cond:
                self._free_slots.add(slot)
            raise

    def _spawn(self, slot: int) -> _Child:
        parent_end, child_end = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "skyward_trio._procchild",
                    "--fd",
                    str(child_end.fileno()),
                    "--parent",
                    str(os.getpid()),
                ],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **self._env},
                start_new_session=False,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        child = _Child(proc, parent_end, slot)
        child.generation = self._generation
        kind, config = self._init
        try:
            # Sent now, read by the child once its imports are done: starting is not waited for.
            child.send((kind, {**config, "slot": slot, "slots": self._size}))
        except OSError:
            pass  # it died at once: the run that takes it sees the death and its exit code
        return child


class _Child:
    """One subprocess, its channel and its output pipes.

    Owned by one thread at a time: the run() thread while busy, the executor's lock
    holder while idle. ``kill`` alone may come from another thread (cancel, close), and
    is safe until ``close_fds`` (which happens only after the child left ``_runs``).
    """

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, slot: int) -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.slot = slot
        self.proc = proc
        self.pid = proc.pid
        self.sock = sock
        self.fn_keys: set[str] = set()
        self.functions = 0
        self.tasks = 0
        self.retired_at: float | None = None
        self.generation = 0  # the executor's generation when it started
        self._decoder = _wire.FrameDecoder(expect_hello=False)
        self._pending: list[tuple[Any, ...]] = []
        self._names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        self._text = {
            fd: codecs.getincrementaldecoder("utf-8")(errors="replace") for fd in self._names
        }
        self._open_pipes = set(self._names)
        self._pidfd = _pidfd_open(proc.pid)
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        for fd in self._names:
            os.set_blocking(fd, False)
            self._poller.register(fd, select.POLLIN)
        if self._pidfd is not None:
            self._poller.register(self._pidfd, select.POLLIN)
        self._closed = False

    def send(self, message: tuple[Any, ...]) -> None:
        frame = _wire.encode(message)
        if len(frame) > 1 and sum(len(c) for c in frame) < 65536:
            frame = [b"".join(frame)]
        for chunk in frame:
            self.sock.sendall(chunk)

    def execute(
        self,
        kind: int,
        fn_key: str,
        fn_payload: _serial.Payload,
        args_payload: _serial.Payload,
        on_output: OutputCallback,
        on_item: _execute.ItemSink | None,
        inputs: InputPayloads | None,
    ) -> tuple[bool, Any]:
        """Run a task; ``(True, result)`` on a reply, ``(False, None)`` if the child died."""
        # Whatever the child wrote while idle (a thread a task left behind) is no task's.
        self.drain(_to_node_log)
        send_fn = fn_key not in self.fn_keys
        message = (
            TASK,
            kind,
            fn_key,
            _out_of_band(fn_payload) if send_fn else None,
            _out_of_band(args_payload),
            kind == _wire.RUN and on_item is not None,
            kind == _wire.RUN and inputs is not None,
        )
        try:
            self.send(message)
        except OSError:
            self.reap()  # it died before or while taking the task
            self.drain(on_output)
            return False, None
        if send_fn:
            self.fn_keys.add(fn_key)
        iterators: dict[int, Iterator[_serial.Payload]] = {}
        try:
            while True:
                reply = self._wait_reply(on_output)
                if reply is None:
                    break
                if reply[0] == ITEM and on_item is not None:
                    answer: tuple[Any, ...] = (ACK, bool(on_item(_out_of_band(reply[1]))))
                elif reply[0] == NEXT and inputs is not None:
                    answer = _next_input(reply[1], inputs, iterators)
                else:
                    break
                try:
                    self.send(answer)
                except OSError:
                    reply = None  # it died (or was killed) while we answered
                    break
        finally:
            for iterator in iterators.values():
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        if reply is None:
            self.reap()
            self.drain(on_output)
            return False, None
        if reply[0] != DONE:
            raise _wire.ProtocolError(f"worker subprocess sent message kind {reply[0]!r}")
        _, result, self.functions = reply
        self.tasks += 1
        if kind == _wire.RUN:
            ok, payload = result
            return True, (ok, _out_of_band(payload) if ok else _exception_out_of_band(payload))
        return True, _out_of_band(result)

    def _wait_reply(self, on_output: OutputCallback) -> tuple[Any, ...] | None:
        """Relay output until a message arrives (returned) or the child dies (None)."""
        if self._pending:
            return self._pending.pop(0)
        sock_fd = self.sock.fileno()
        while True:
            events = self._poller.poll()
            # The channel before the pidfd: a reply sent just before exiting still counts.
            events.sort(key=lambda e: e[0] == self._pidfd)
            for fd, _ in events:
                if fd == sock_fd:
                    try:
                        data = self.sock.recv(1 << 20)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        return None
                    reply = self._reply(data, on_output)
                    if reply is not None:
                        return reply
                elif fd == self._pidfd:
                    return self._last_reply(on_output)
                else:
                    self._read(fd, on_output)

    def _last_reply(self, on_output: OutputCallback) -> tuple[Any, ...] | None:
        """The child has exited: a reply may still sit, unread, in the channel."""
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, ConnectionResetError):
                return None
            if not data:
                return None
            reply = self._reply(data, on_output)
            if reply is not None:
                return reply

    def _reply(self, data: bytes, on_output: OutputCallback) -> tuple[Any, ...] | None:
        """Feed channel bytes; the first complete reply, if they finish one."""
        messages = self._decoder.feed(data)
        if not messages:
            return None
        # The child flushed its output before replying: take all of it now.
        self.drain(on_output)
        self._pending.extend(messages[1:])
        return tuple(messages[0])

    def _read(self, fd: int, sink: OutputCallback) -> bool:
        """Read one chunk from a pipe into ``sink``; False when nothing is left for now."""
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return False
        if not data:
            self._open_pipes.discard(fd)
            self._poller.unregister(fd)
            text = self._text[fd].decode(b"", final=True)
        else:
            text = self._text[fd].decode(data)
        if text:
            sink(self._names[fd], text)
        return bool(data)

    def drain(self, sink: OutputCallback) -> None:
        """Hand everything now in the pipes to ``sink``, without blocking."""
        for fd in list(self._open_pipes):
            while self._read(fd, sink):
                pass

    def kill(self) -> None:
        """SIGKILL the child; harmless if it has exited (a pidfd cannot hit a reused pid)."""
        if self._pidfd is not None:
            try:
                _signal.pidfd_send_signal(self._pidfd, _signal.SIGKILL)
            except ProcessLookupError:
                pass  # already exited
        else:
            self.proc.kill()

    def reap(self) -> None:
        """Wait for the child to exit, killing it if it lingers."""
        try:
            self.proc.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()

    def wait_until(self, deadline: float) -> bool:
        """Wait for exit until ``deadline`` (monotonic); True if it has exited."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def close_channel(self) -> None:
        """Close the channel: an idle child sees EOF and exits."""
        self.sock.close()

    def close_fds(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sock.close()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        if self._pidfd is not None:
            os.close(self._pidfd)


def _how(child: _Child) -> tuple[int | None, int | None]:
    """How a reaped child ended: ``(exit code, None)`` or ``(None, signal)``."""
    code = child.proc.returncode
    if code is None:
        return None, None
    return (code, None) if code >= 0 else (None, -code)


def _pidfd_open(pid: int) -> int | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None  # kernel older than 5.3: the channel's EOF tells of a death instead
    return fd


def _to_node_log(stream: str, text: str) -> None:
    """Output no task owns goes where the worker's own output goes (the node's log)."""
    target = sys.__stdout__ if stream == "stdout" else sys.__stderr__
    if target is not None:
        target.write(text)
        target.flush()


def _out_of_band(payload: _serial.Payload) -> _serial.Payload:
    """Make a payload's buffers PickleBuffers again so ``_wire.encode`` sends them raw.

    A payload that came off the wire holds bytes/bytearray/memoryview; pickled as such they
    would be copied into the frame header (and past 64 MB the header is refused).
    """
    head, head_z, bufs, flags = payload
    if not isinstance(head, pickle.PickleBuffer) and memoryview(head).nbytes >= _OOB_MIN:
        head = pickle.PickleBuffer(head)
    bufs = [b if isinstance(b, pickle.PickleBuffer) else pickle.PickleBuffer(b) for b in bufs]
    return head, head_z, bufs, flags


def _next_input(
    slot: int, inputs: InputPayloads, iterators: dict[int, Iterator[_serial.Payload]]
) -> tuple[Any, ...]:
    iterator = iterators.get(slot)
    if iterator is None:
        iterator = iterators[slot] = iter(inputs(slot))
    try:
        payload = next(iterator)
    except StopIteration:
        return (INPUT_END,)
    return (INPUT, _out_of_band(payload))


def _exception_out_of_band(dumped: Any) -> Any:
    payload, name, text, tb = dumped
    return (None if payload is None else _out_of_band(payload)), name, text, tb
