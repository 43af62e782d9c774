"""The worker daemon that runs on every node: ``python -m skyward_trio.worker --dir DIR``.

It listens on a unix socket in its directory (reached by the client through the SSH
connection, so no port is opened), authenticates each connection with the pool's secret,
checks that both ends run the same Python minor version and Skyward version before it
unpickles anything, then runs tasks in threads and sends results back.

This module is imported on remote machines: it may import only trio, cloudpickle, lz4,
attrs, the stdlib and Skyward's layers 1-2. A test checks ``sys.modules``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from . import _capture, _collections, _heartbeat, _notices, _runtime, _serial, _wire
from ._execute import FunctionCache, run_batch, run_one
from ._info import from_dict
from ._pids import end, started_by
from ._pluginrun import NodePlugins
from ._procpool import ProcessExecutor, TaskKilled
from ._sampler import Sampler, from_config
from ._store import Store, receive_hello
from ._version import PYTHON_VERSION, __version__
from ._volumes import unmount_command

__all__ = ["main"]

_WATCH_INTERVAL = 0.5
_FIRST_CONNECT = 60.0
_RECONNECT = 15.0  # how long a dropped session is kept, unless the client says otherwise


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: orphans may never be reaped here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


_STREAM_WINDOW = 64


async def _run_expiry(command: str) -> None:
    """Run the machine's stop command (``Instance.on_lease_expiry``); say how it went."""
    print(f"skyward worker: stopping the machine: {command}", file=sys.stderr)
    try:
        with trio.move_on_after(120):
            done = await trio.run_process(
                ["/bin/sh", "-c", command],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                # The worker's own interpreter, for a command that needs one (the image's
                # may lack curl, or even python3 on PATH).
                env={**os.environ, "SKYWARD_PYTHON": sys.executable},
            )
            said = (done.stderr or done.stdout).decode(errors="replace").strip()
            if done.returncode != 0:
                print(
                    f"skyward worker: the stop command failed ({done.returncode}): {said}",
                    file=sys.stderr,
                )
            return
        print("skyward worker: the stop command did not finish in 120 s", file=sys.stderr)
    except OSError as exc:
        print(f"skyward worker: could not run the stop command: {exc}", file=sys.stderr)


def _short(text: str) -> str:
    """Cut a probe's failure text to a size that reads well in one line of the console."""
    return text if len(text) <= 300 else text[:297] + "..."


class Worker:
    """One node's worker: accepts client connections and runs their tasks."""

    def __init__(self, directory: Path, config: dict[str, Any], secret: bytes) -> None:
        self.directory = directory
        self.config = config
        self._secret = secret
        self.node: int = config["info"]["node"]
        # The plugins' hooks: around_app entered as the worker starts, their wrappers
        # around each function (tasks wait for around_app; see _pluginrun).
        self._plugins = NodePlugins.unpack(config.get("plugins"))
        wrap = None
        if self._plugins is not None:
            wrap = functools.partial(self._plugins.wrap, gate=self._plugins.wait_app)
        self._cache = FunctionCache(wrap)
        self._executor: ProcessExecutor | None = None
        # Under the process executor every new child needs the pickled function.
        self._fn_payloads: dict[str, _serial.Payload] = {}
        if config.get("executor") == "process":
            self._executor = ProcessExecutor(
                size=int(config.get("concurrency", 1)),
                reuse=bool(config.get("reuse_processes", True)),
                sys_path=list(config.get("sys_path", [])),
                env=dict(config.get("env", {})),
                info=config["info"],
                plugins=config.get("plugins"),
            )
        # Workers (ranks) on this node: each subprocess is one when there are several
        # (_plugin.workers_per_node), and a broadcast's task runs on all of them.
        ranks = int(config["info"].get("workers_per_node", 1))
        self.workers_per_node = ranks if self._executor is not None else 1
        self._sessions: dict[str, _Session] = {}
        self._last_client: float | None = None
        self._shutdown = trio.Event()
        self._probe_started: float | None = None  # while a health probe runs (maybe hung)
        # The pool's collections store, on the head node: on its private address only.
        store_host = config.get("store_host")
        self._store = Store(secret) if store_host else None
        # Image(metrics=None) writes no collectors: nothing is sampled at all.
        collectors = config.get("metrics")
        self._sampler = Sampler(from_config(collectors)) if collectors else None
        # The provider's interruption notice (AWS or Compute Engine spot), once seen, or
        # EC2's rebalance recommendation before it: every control channel tells its client
        # the latest (_tell_notice); _noticed is set, and replaced, when it changes.
        self._notice: _notices.Notice | None = None
        self._noticed = trio.Event()

    def close_executor(self) -> None:
        """End the process executor's children, if it has any (see ProcessExecutor.close)."""
        if self._executor is not None:
            self._executor.close()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock_path = self.directory / "worker.sock"
        sock_path.unlink(missing_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(sock_path))
        os.chmod(sock_path, 0o600)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        # SIGTERM or SIGINT start the shutdown, and once it has started they no longer end
        # the worker: the plugins' teardown runs to its end (stop_app is bounded; the
        # provider kills a worker that overstays). Held until serve returns; main() keeps
        # them harmless after that.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            if _STOP_ASKED.is_set():  # one came before the worker could listen for it
                self._shutdown.set()
            async with listener:
                await self._serve(listener, signals, task_status)
        sock_path.unlink(missing_ok=True)

    async def _serve(
        self,
        listener: trio.SocketListener,
        signals: AsyncIterator[int],
        task_status: trio.TaskStatus[None],
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals, signals)
            nursery.start_soon(self._watchdog)
            nursery.start_soon(self._accept_loop, listener, nursery)
            if self._store is not None:
                await nursery.start(self._store.listen, self.config["store_host"])
            if self._sampler is not None:
                nursery.start_soon(self._sampler.run)
            notices = self.config.get("interruption_notices")
            if notices in ("aws", "gcp"):
                nursery.start_soon(self._watch_notices, str(notices))
            if self._plugins is not None:
                self._plugins.start_app(from_dict(self.config["info"]))
            (self.directory / "worker.ready").write_text(str(os.getpid()))
            task_status.started()
            await self._shutdown.wait()
            nursery.cancel_scope.cancel(reason="worker shutdown")
        for session in self._sessions.values():
            session.close()
        if self._plugins is not None:
            await trio.to_thread.run_sync(self._plugins.stop_app)

    async def _watchdog(self) -> None:
        """End the worker when its machine is gone or its client stopped coming back.

        The lease: after ``lease_seconds`` (``Spec.ttl``) with no client connected, the
        worker stops — and on ``Local`` takes its node down with it — so a client that
        died without tearing down does not leave nodes running. A client whose connection
        dropped gets at least ``reconnect_seconds`` to come back for its session; after
        that the session and its tasks are dropped. Before the first client connects,
        start-up gets ``_FIRST_CONNECT`` seconds instead.
        """
        node_pid = int(os.environ.get("SKYWARD_NODE_PID", "0") or 0)
        lease = float(self.config.get("lease_seconds", 600))
        reconnect = float(self.config.get("reconnect_seconds", _RECONNECT))
        started = time.monotonic()
        while True:
            await trio.sleep(_WATCH_INTERVAL)
            if node_pid and not _alive(node_pid):
                print("skyward worker: its node is gone; exiting", file=sys.stderr)
                self._shutdown.set()
                return
            for session_id, session in list(self._sessions.items()):
                if session.detached_for() > reconnect:
                    # Its client did not come back in time (it gave the node up): drop it.
                    session.close()
                    del self._sessions[session_id]
            if any(session.attached for session in self._sessions.values()):
                self._last_client = time.monotonic()
                continue
            grace = max(lease, reconnect) if self._sessions else lease
            if self._last_client is None:
                expired = time.monotonic() - started > max(lease, _FIRST_CONNECT)
            else:
                expired = time.monotonic() - self._last_client > grace
            if expired:
                print(
                    f"skyward worker: no client for {grace:g} s (the lease); exiting",
                    file=sys.stderr,
                )
                if node_pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(node_pid, signal.SIGTERM)
                command = self.config.get("on_lease_expiry")
                if command:  # the machine stops itself: nothing left to bill
                    await _run_expiry(str(command))
                self._shutdown.set()
                return

    async def _watch_notices(self, kind: str) -> None:
        """Watch the cloud's metadata service (``kind``: ``"aws"``, ``"gcp"``) for the
        machine's interruption notice (``_notices``); once it comes, every client's control
        channel is told (``_tell_notice``)."""
        service = _notices.source(kind)
        answered = False
        while True:
            notice = await _notices.watch(service, answered=answered)
            if notice is None:
                return
            answered = True
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(notice.at))
            what = (
                f"{service.cloud} reclaims this machine at {when} ({notice.action})"
                if notice.final
                else f"{service.cloud} recommended at {when} that this spot instance be "
                "replaced (a rebalance recommendation: its risk of interruption is high)"
            )
            print(f"skyward worker: {what}; telling the client", file=sys.stderr, flush=True)
            self._notice = notice
            noticed, self._noticed = self._noticed, trio.Event()
            noticed.set()
            if notice.final:
                return

    async def _tell_notice(self, reply: Callable[[tuple[Any, ...]], Awaitable[None]]) -> None:
        """Send the interruption notice on one control channel, once it is known (and a
        rebalance recommendation before it, if one came first). Each new channel sends
        the latest again: a client that was away when it came hears it when it comes back
        (it keeps the first of each kind)."""
        told: _notices.Notice | None = None
        while told is None or not told.final:
            noticed = self._noticed
            notice = self._notice
            if notice is not None and notice is not told:
                await reply((_wire.NOTICE, notice.action, notice.at))
                told = notice
                continue
            await noticed.wait()

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            self._shutdown.set()
            return

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            opened = await receive_hello(stream)
            if opened is None:
                return
            hello, decoder = opened
            problem = _wire.hello_problem(
                hello,
                self._secret,
                they="the client",
                we="this worker",
                why=" (cloudpickled code does not survive a change of Python minor version)",
            )
            session_id = str(hello.get("session", "")) if problem is None else ""
            data_role = hello.get("role") not in ("control", _collections.ROLE)
            resuming = problem is None and data_role and bool(hello.get("resume"))
            session = self._sessions.get(session_id) if resuming else None
            reply: dict[str, Any] = {}
            if resuming:
                # A client back after a dropped connection: its old connection may not
                # have ended here yet; end it, so the count of frames received is final.
                if session is not None:
                    received = await trio.to_thread.run_sync(session.detach)
                    if session.closed:
                        session = None
                    else:
                        reply["received"] = received
                reply["resumed"] = session is not None
            await self._reply_hello(stream, problem, reply)
            if problem is not None:
                return
            if hello.get("role") == _collections.ROLE:
                if self._store is not None:
                    await self._store.serve(stream, decoder, "the client")
                return
            if not data_role:
                await self._control(stream, decoder, session_id)
                return
            if resuming and session is None:
                return  # the client learned that its session is gone
            fresh = session is None
            if session is None:
                session = _Session(self, trio.lowlevel.current_trio_token())
                self._sessions[session_id] = session
            ended = trio.Event()
            replay_after = int(hello.get("received", 0))
            fd = stream.socket.fileno()
            await trio.to_thread.run_sync(session.attach, fd, decoder, replay_after, ended)
            if fresh:
                session.start()
            self._last_client = time.monotonic()
            await ended.wait()
            self._last_client = time.monotonic()

    async def _control(
        self, stream: trio.SocketStream, decoder: _wire.FrameDecoder, session_id: str
    ) -> None:
        """A session's control channel, read by the trio thread even when every task
        thread is busy: cancellations take effect at once, health probes are answered,
        heartbeats go both ways, metric samples go out once the client asks for them, and
        the machine's interruption notice goes out once it is seen.
        From the client's first beat on, a client not heard from for
        ``_heartbeat.SILENCE_LIMIT`` seconds is cut off: its session is detached as if the
        link had dropped (the reconnect window and the lease start counting), and this
        channel ends."""
        send_lock = trio.Lock()

        async def reply(message: tuple[Any, ...]) -> None:
            async with send_lock:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(b"".join(_wire.encode(message)))

        chunks = 0  # read here; with the data channel's, what the heartbeat hears
        beating = trio.Event()

        def heard() -> int:
            session = self._sessions.get(session_id)
            return chunks + (session.heard if session is not None else 0)

        async def watch_client() -> None:
            await beating.wait()
            session = self._sessions.get(session_id)
            # Only the session's newest beating control channel may detach it: an older
            # one may linger (its SSH server has not closed it yet) after the client came
            # back on a new connection.
            pairing = session.pair_control() if session is not None else 0
            await _heartbeat.wait_for_silence(heard)
            current = self._sessions.get(session_id)
            if current is not None and current.paired(pairing):
                print(
                    f"skyward worker: nothing heard from the client for "
                    f"{_heartbeat.SILENCE_LIMIT:g} s; its session is detached until it "
                    "comes back",
                    file=sys.stderr,
                )
                current.drop_link()
            tasks.cancel_scope.cancel(reason="the client went silent")

        messages = decoder.release()
        try:
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._beat, reply)
                tasks.start_soon(watch_client)
                tasks.start_soon(self._tell_notice, reply)
                while True:
                    for msg in messages:
                        session = self._sessions.get(session_id)
                        if msg[0] == _wire.ACK and session is not None:
                            session.ack(msg[1])
                        elif msg[0] == _wire.CANCEL and session is not None:
                            session.cancel(msg[1])
                        elif msg[0] == _wire.CREDIT and session is not None:
                            session.credit(msg[1], msg[2])
                        elif msg[0] == _wire.INPUT and session is not None:
                            session.input_queue(msg[1], msg[2]).put_many(msg[3])
                        elif msg[0] == _wire.INPUT_END and session is not None:
                            session.input_queue(msg[1], msg[2]).end()
                        elif msg[0] == _wire.BEAT:
                            beating.set()
                        elif msg[0] == _wire.PROBE:
                            tasks.start_soon(self._answer_probe, reply, msg[1], msg[2])
                        elif msg[0] == _wire.METRICS_ON and self._sampler is not None:
                            self._sampler.attach(reply)
                        elif msg[0] == _wire.SHUTDOWN:
                            self._shutdown.set()
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        # Reset: the far end closed with beats of ours unread. Gone all the same.
                        data = b""
                    if not data:
                        tasks.cancel_scope.cancel(reason="the client left")
                        return
                    chunks += 1
                    messages = decoder.feed(data)
        finally:
            if self._sampler is not None:
                self._sampler.detach(reply)

    @staticmethod
    async def _beat(reply: Callable[[tuple[Any, ...]], Awaitable[None]]) -> None:
        """Tell the client this worker is there, from the trio thread, which runs while
        every task thread is busy."""
        while True:
            await reply((_wire.BEAT,))
            await trio.sleep(_heartbeat.BEAT_INTERVAL)

    async def _answer_probe(
        self,
        reply: Callable[[tuple[Any, ...]], Awaitable[None]],
        probe_id: int,
        payload: _serial.Payload,
    ) -> None:
        ok, why = await self._run_probe(payload)
        await reply((_wire.PROBE_RESULT, probe_id, ok, why))

    async def _run_probe(self, payload: _serial.Payload) -> tuple[bool, str]:
        """Run the health probe in a thread of its own (never one of the task threads, so a
        busy node still answers; nor the trio thread, which reads the control channel).
        One probe runs at a time: while a hung one still runs, the next fails at once
        instead of piling up threads."""
        if self._probe_started is not None:
            running = time.monotonic() - self._probe_started
            return False, f"the previous probe has not returned after {running:.1f} s"
        self._probe_started = time.monotonic()
        return await trio.to_thread.run_sync(self._call_probe, payload, abandon_on_cancel=True)

    def _call_probe(self, payload: _serial.Payload) -> tuple[bool, str]:
        try:
            try:
                probe = _serial.loads(payload)
            except Exception as exc:
                why = _short(f"{type(exc).__name__}: {exc}")
                return False, f"the probe could not be loaded on the node: {why}"
            value = probe()
            if value:
                return True, ""
            return False, f"the probe returned {_short(repr(value))}"
        except Exception as exc:
            return False, f"the probe raised {_short(f'{type(exc).__name__}: {exc}')}"
        finally:
            self._probe_started = None

    async def _reply_hello(
        self, stream: trio.SocketStream, problem: str | None, extra: dict[str, Any]
    ) -> None:
        reply = {
            "ok": problem is None,
            "error": problem,
            "python": PYTHON_VERSION,
            "skyward": __version__,
            "node": self.node,
            "pid": os.getpid(),
            **extra,
        }
        await stream.send_all(_wire.encode_hello(reply))


class _Task:
    __slots__ = (
        "args",
        "cancelled",
        "credits",
        "every",
        "fn_key",
        "granted",
        "kind",
        "running",
        "stream",
        "task_id",
    )

    def __init__(self, kind: int, task_id: int, fn_key: str, args: _serial.Payload) -> None:
        self.kind = kind
        self.task_id = task_id
        self.fn_key = fn_key
        self.args = args
        self.cancelled = False
        self.running = False
        self.stream = False
        self.every = False  # a broadcast's: run on each of the node's workers at once
        # Streamed items the client still has room for; it grants more as it reads them.
        self.credits = threading.Semaphore(_STREAM_WINDOW)
        self.granted = 0  # items the client said it has read (its CREDITs are totals)


class _Session:
    """One client session, served by ``concurrency`` threads in leader/follower style.

    One thread at a time (the leader) reads the socket. When it has a task it hands the
    reading over to the next thread and runs the task itself, then writes the result to
    the socket directly. So a task costs no thread wake-up on its way in or out (each
    one costs about 100 µs here); with the trio thread in the path (read in trio, run in
    a pool thread, send from trio) it cost three. The trio thread only accepts
    connections, checks hellos and watches signals.

    A running task cannot be interrupted (Python threads cannot be killed): a CANCEL for
    it marks it so its result is dropped; one still queued is skipped.

    The session outlives its connection, so a dropped SSH connection costs no work. Frames
    each way are numbered by their order in the session (no number travels: the streams
    are ordered). Every frame sent is kept until the client acknowledges it (a cumulative
    ACK on the control channel, sent lazily); every frame received is counted. When the
    connection drops, tasks keep running and their results are kept. A client that comes
    back with the session's id learns how many of its frames arrived (it sends the rest
    again) and says how many it received; the rest are replayed (``attach``).
    """

    def __init__(self, worker: Worker, token: trio.lowlevel.TrioToken) -> None:
        self._worker = worker
        self._token = token
        self._sock: socket.socket | None = None
        self._decoder = _wire.FrameDecoder(expect_hello=False)
        self._ended: trio.Event | None = None  # set when the current connection ends
        self.attached = False
        self.heard = 0  # chunks read on the data channel (the heartbeat counts them)
        self._controls = 0  # control channels that beat for this session, so far
        self._detached_at: float | None = None  # when the last connection ended
        # Lock order: send, then read, then cond; the unacked lock is taken alone.
        self._cond = threading.Condition()  # attached/closed changes; the leader waits on it
        self._read_lock = threading.Lock()  # held while the leader reads and dispatches
        self._leader = threading.Lock()
        self._send_lock = threading.Lock()
        self._unacked_lock = threading.Lock()
        self._sent = 0  # frames sent in this session
        self._received = 0  # frames received in this session
        self._unacked: collections.deque[tuple[int, list[bytes | memoryview]]] = collections.deque()
        self._queue: collections.deque[_Task] = collections.deque()
        self._live: dict[int, _Task] = {}
        self._closed = False
        self._target = int(worker.config.get("concurrency", 1))
        self._alive = 0
        self._count_lock = threading.Lock()
        # Cancellations that overtook their task (they travel on another channel).
        self._precancelled: set[int] = set()
        self._precancelled_order: collections.deque[int] = collections.deque()
        # Items of Iterator[T] arguments, by (task id, argument slot); they come on the
        # control channel and may arrive before their task.
        self._inputs: dict[tuple[int, int], _Input] = {}
        self._inputs_lock = threading.Lock()

    def start(self) -> None:
        for _ in range(self._target):
            self._spawn()

    def _spawn(self) -> None:
        with self._count_lock:
            self._alive += 1
            number = self._alive
        name = f"skyward-node{self._worker.node}-thread{number}"
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def attach(
        self, fd: int, decoder: _wire.FrameDecoder, replay_after: int, ended: trio.Event
    ) -> None:
        """Serve the session on a new connection (a thread; blocking).

        Frames after the first ``replay_after`` (what the client received) are replayed
        first; nothing new is sent before them.
        """
        sock = socket.socket(fileno=os.dup(fd))
        sock.setblocking(True)
        with self._send_lock, self._read_lock:
            old = self._sock
            with self._cond:
                self._sock = sock
                self._decoder = decoder
                self._ended = ended
            if old is not None:
                old.close()
            self.ack(replay_after)
            with self._unacked_lock:
                replay = [frame for _, frame in self._unacked]
            try:
                for frame in replay:
                    for chunk in frame:
                        sock.sendall(chunk)
            except OSError:
                self._token.run_sync_soon(ended.set)
                return
            with self._cond:
                self.attached = True
                self._detached_at = None
                self._cond.notify_all()
            for msg in decoder.release():
                self._dispatch(msg)

    def detach(self) -> int:
        """End the current connection; return how many frames the session received.

        Blocking (a thread). After it returns nothing more is read until ``attach``.
        """
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a leader blocked reading it
        with self._read_lock:
            if sock is not None:
                self._lost(sock)
            with self._cond:
                self._detached_at = time.monotonic()  # claimed: not expired before attach
            return self._received

    def pair_control(self) -> int:
        """A control channel of this session started beating: its number, for ``paired``."""
        self._controls += 1
        return self._controls

    def paired(self, number: int) -> bool:
        """Whether control channel ``number`` is the last that started beating."""
        return number == self._controls

    def drop_link(self) -> None:
        """Treat the current connection as dropped (its client went silent): tasks go on,
        results wait for the client, and the session counts as detached from now on.

        Non-blocking (the trio thread calls it); a leader blocked reading the connection
        wakes up to find it gone.
        """
        sock = self._sock
        if sock is not None:
            self._lost(sock)

    def _lost(self, sock: socket.socket) -> None:
        """The connection ``sock`` ended: tasks go on, and results wait for the client."""
        with self._cond:
            if sock is not self._sock or not self.attached:
                return
            self.attached = False
            self._detached_at = time.monotonic()
            ended = self._ended
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        if ended is not None:
            self._token.run_sync_soon(ended.set)

    @property
    def closed(self) -> bool:
        return self._closed

    def detached_for(self) -> float:
        """Seconds since the connection ended (0 while attached)."""
        detached_at = self._detached_at
        return 0.0 if detached_at is None else time.monotonic() - detached_at

    def ack(self, count: int) -> None:
        """The client received the session's first ``count`` frames: forget them."""
        with self._unacked_lock:
            while self._unacked and self._unacked[0][0] <= count:
                self._unacked.popleft()

    def cancel(self, task_id: int) -> None:
        """Drop a task (from the trio thread, via the control channel).

        A queued task is skipped. A running one cannot be stopped (threads cannot be
        killed): its result is dropped, and a new thread takes its place so the slot is
        free again; the old thread ends when the task returns.
        """
        task = self._live.pop(task_id, None)
        if task is None:
            self._precancelled.add(task_id)  # its RUN may still be on its way
            self._precancelled_order.append(task_id)
            if len(self._precancelled_order) > 4096:
                self._precancelled.discard(self._precancelled_order.popleft())
            return
        task.cancelled = True
        executor = self._worker._executor
        if executor is not None:
            executor.cancel(task)  # kills its subprocess (hard cancellation); run() returns
        elif task.running and not self._closed:
            self._spawn()

    def close(self) -> None:
        """End the session for good (the worker stops): queued and running tasks are dropped."""
        self._closed = True
        executor = self._worker._executor
        for task in list(self._live.values()):
            task.cancelled = True
            if executor is not None:
                executor.cancel(task)  # nobody will read its result: free the child
        with self._cond:
            self._cond.notify_all()
        if self._sock is not None:
            self._lost(self._sock)

    def _loop(self) -> None:
        try:
            while True:
                with self._leader:
                    task = self._next()
                if task is None:
                    return
                self._execute(task)
                if task.cancelled:
                    with self._count_lock:
                        if self._alive > self._target:
                            return  # a replacement took this thread's place
        finally:
            with self._count_lock:
                self._alive -= 1
                last = self._alive == 0
            if last and self._sock is not None:
                self._sock.close()

    def _next(self) -> _Task | None:
        """Called by the leader: the next task to run, reading the socket if needed.

        While the connection is down it waits for the client to come back.
        """
        while True:
            while self._queue:
                task = self._queue.popleft()
                if not task.cancelled:
                    return task
            with self._cond:
                while not self.attached and not self._closed:
                    self._cond.wait()
            if self._closed:
                return None
            with self._read_lock:
                sock, decoder = self._sock, self._decoder
                if sock is None or not self.attached:
                    continue
                try:
                    data = sock.recv(1 << 20)
                except OSError:
                    data = b""
                if not data:
                    self._lost(sock)
                    continue
                self.heard += 1
                try:
                    for msg in decoder.feed(data):
                        self._dispatch(msg)
                except (_wire.ProtocolError, ValueError, pickle.UnpicklingError) as exc:
                    print(f"skyward worker: bad frame from the client: {exc!r}", file=sys.stderr)
                    self.close()
                    return None

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        self._received += 1
        kind = msg[0]
        if kind in (_wire.RUN, _wire.BATCH):
            task_id, fn_key, fn_payload, args_payload = msg[1:5]
            if self._worker._executor is not None:
                if fn_payload is not None:
                    self._worker._fn_payloads.setdefault(fn_key, fn_payload)
            else:
                self._worker._cache.add(fn_key, fn_payload)
            if task_id in self._precancelled:
                self._precancelled.discard(task_id)
                return
            task = _Task(kind, task_id, fn_key, args_payload)
            task.stream = kind == _wire.RUN and bool(msg[5])
            task.every = kind == _wire.RUN and bool(msg[6])
            self._live[task_id] = task
            self._queue.append(task)
        elif kind == _wire.CANCEL:
            self.cancel(msg[1])
        elif kind == _wire.SHUTDOWN:
            self._token.run_sync_soon(self._worker._shutdown.set)
        else:
            raise _wire.ProtocolError(f"unknown message kind {kind!r}")

    def _execute(self, task: _Task) -> None:
        task.running = True
        t0 = time.perf_counter()
        cache = self._worker._cache
        output = _TaskOutput(self, task)
        sink = functools.partial(self._send_item, task) if task.stream else None
        if self._worker._executor is not None:
            message = self._execute_in_process(task, output, sink, t0)
        else:
            with _capture.route(output.write):
                if task.kind == _wire.RUN:
                    inputs = functools.partial(self._input_iterator, task)
                    ok, payload = run_one(cache, task.fn_key, task.args, sink, inputs)
                    message = (_wire.RESULT, task.task_id, ok, payload, time.perf_counter() - t0)
                else:
                    payload = run_batch(cache, task.fn_key, task.args)
                    message = (
                        _wire.BATCH_RESULT,
                        task.task_id,
                        payload,
                        time.perf_counter() - t0,
                    )
        output.flush()
        if self._inputs:
            self._drop_inputs(task.task_id)
        self._live.pop(task.task_id, None)
        if task.cancelled or self._closed:
            return  # the client gave up on it: a late result is dropped
        self.send(message)

    def _execute_in_process(
        self, task: _Task, output: _TaskOutput, sink: Any, t0: float
    ) -> tuple[Any, ...]:
        executor = self._worker._executor
        assert executor is not None
        fn_payload = self._worker._fn_payloads[task.fn_key]
        try:
            if self._worker._plugins is not None:
                self._worker._plugins.wait_app()
            if task.every and self._worker.workers_per_node > 1:
                return self._execute_everywhere(task, output, fn_payload, t0)
            if task.kind == _wire.RUN:
                inputs = functools.partial(self._input_payloads, task)
                ok, payload = executor.run(
                    task,
                    _wire.RUN,
                    task.fn_key,
                    fn_payload,
                    task.args,
                    output.write,
                    on_item=sink,
                    inputs=inputs,
                )
                return (_wire.RESULT, task.task_id, ok, payload, time.perf_counter() - t0)
            payload = executor.run(
                task, _wire.BATCH, task.fn_key, fn_payload, task.args, output.write
            )
            return (_wire.BATCH_RESULT, task.task_id, payload, time.perf_counter() - t0)
        except Exception as exc:
            # The subprocess died (or was killed because the task was cancelled), or none
            # could be started: this task fails with why; the node keeps serving.
            info = _serial.dump_exception(exc)
            if task.kind == _wire.RUN:
                return (_wire.RESULT, task.task_id, False, info, time.perf_counter() - t0)
            failed = _serial.dumps([(False, info)])
            return (_wire.BATCH_RESULT, task.task_id, failed, time.perf_counter() - t0)

    def _execute_everywhere(
        self, task: _Task, output: _TaskOutput, fn_payload: _serial.Payload, t0: float
    ) -> tuple[Any, ...]:
        """A broadcast's task on every worker (rank) of the node at once: the node's
        RESULT is local rank 0's, or the failure of the first rank that failed (raises
        what ``executor.run_every`` raises)."""
        executor = self._worker._executor
        assert executor is not None
        ranks = self._worker.workers_per_node
        # Each rank's output is cut into lines of its own (theirs would interleave).
        outputs = [output] + [_TaskOutput(self, task) for _ in range(ranks - 1)]
        try:
            outcomes, first = executor.run_every(
                task, task.fn_key, fn_payload, task.args, [each.write for each in outputs]
            )
        finally:
            for each in outputs[1:]:
                each.flush()
        if first is None:
            result = outcomes[0].result
            assert result is not None
            return (_wire.RESULT, task.task_id, *result, time.perf_counter() - t0)
        failed = outcomes[first]
        if failed.result is not None:
            dumped = failed.result[1]
        else:
            assert failed.died is not None
            dumped = _serial.dump_exception(failed.died)
        payload, name, text, tb = dumped
        rank = attrs.evolve(from_dict(self._worker.config["info"]), worker=first)
        stopped = [o.slot for o in outcomes if isinstance(o.died, TaskKilled)]
        where = (
            f"[skyward] on worker {first} of node {rank.node} (rank "
            f"{rank.global_worker_index} of {rank.total_workers})"
        )
        if stopped:
            named = f"worker{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))}"
            where += f"; stopped with it on that node: {named}"
        dumped = (payload, name, text, f"{tb.rstrip()}\n{where}\n")
        return (_wire.RESULT, task.task_id, False, dumped, time.perf_counter() - t0)

    def _input_payloads(self, task: _Task, slot: int) -> Iterator[Any]:
        return self.input_queue(task.task_id, slot).iterate(task, raw=True)

    def _input_iterator(self, task: _Task, slot: int) -> Iterator[Any]:
        return self.input_queue(task.task_id, slot).iterate(task)

    def _send_item(self, task: _Task, payload: _serial.Payload) -> bool:
        """Send one streamed item once the client has room for it; False if it left."""
        while not task.credits.acquire(timeout=0.5):
            if task.cancelled or self._closed:
                return False
        if task.cancelled or self._closed:
            return False
        self.send((_wire.ITEM, task.task_id, payload))
        return True

    def input_queue(self, task_id: int, slot: int) -> _Input:
        with self._inputs_lock:
            found = self._inputs.get((task_id, slot))
            if found is None:
                found = self._inputs[(task_id, slot)] = _Input(self, task_id, slot)
            return found

    def _drop_inputs(self, task_id: int) -> None:
        with self._inputs_lock:
            for key in [k for k in self._inputs if k[0] == task_id]:
                self._inputs.pop(key).close()

    def credit(self, task_id: int, total: int) -> None:
        """The client has read ``total`` streamed items of ``task_id`` (a total, so a
        CREDIT sent again after a reconnect grants nothing twice)."""
        task = self._live.get(task_id)
        if task is not None and total > task.granted:
            task.credits.release(total - task.granted)
            task.granted = total

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one frame (from any thread; frames never interleave).

        It is kept until the client acknowledges it; while the connection is down it is
        only kept, for the replay.
        """
        frame = _wire.encode(message)
        if len(frame) > 1 and sum(len(c) for c in frame) < 65536:
            frame = [b"".join(frame)]
        with self._send_lock:
            self._sent += 1
            with self._unacked_lock:
                self._unacked.append((self._sent, frame))
            sock = self._sock
            if not self.attached or sock is None:
                return
            try:
                for chunk in frame:
                    sock.sendall(chunk)
            except OSError:
                self._lost(sock)


class InputCancelled(Exception):
    """The task reading a streamed argument was cancelled."""


class _Input:
    """The items of one ``Iterator[T]`` argument, filled from the control channel."""

    _END = object()
    _WINDOW_BATCH = 64  # the client sends at most 256 ahead; grant more every 64 read

    def __init__(self, session: _Session, task_id: int, slot: int) -> None:
        self._session = session
        self._task_id = task_id
        self._slot = slot
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put_many(self, payloads: list[_serial.Payload]) -> None:
        for payload in payloads:
            self._queue.put(payload)

    def end(self) -> None:
        self._queue.put(self._END)

    def close(self) -> None:
        self._queue.put(self._END)

    def iterate(self, task: _Task, *, raw: bool = False) -> Iterator[Any]:
        """The items as they arrive (``raw``: their payloads, for a subprocess to load)."""
        read = 0
        while True:
            try:
                payload = self._queue.get(timeout=0.5)
            except queue.Empty:
                if task.cancelled:
                    raise InputCancelled("the call was cancelled") from None
                continue
            if payload is self._END:
                return
            read += 1
            if read % self._WINDOW_BATCH == 0:
                message = (_wire.INPUT_CREDIT, self._task_id, self._slot, self._WINDOW_BATCH)
                self._session.send(message)
            yield payload if raw else _serial.loads(payload)


class _TaskOutput:
    """A task's stdout/stderr, sent to the client a line at a time as it is written."""

    _LIMIT = 8192
    _PIECE = 1 << 20

    def __init__(self, session: _Session, task: _Task) -> None:
        self._session = session
        self._task = task
        self._pending = {"stdout": "", "stderr": ""}

    def write(self, stream: str, text: str) -> None:
        data = self._pending[stream] + text
        # Whole lines go now (streamed, not at the end); a partial line waits for the rest.
        cut = data.rfind("\n") + 1
        if len(data) > self._LIMIT:
            cut = len(data)
        self._pending[stream] = data[cut:]
        if cut:
            self._emit(stream, data[:cut])

    def flush(self) -> None:
        for stream, text in self._pending.items():
            if text:
                self._pending[stream] = ""
                self._emit(stream, text)

    def _emit(self, stream: str, text: str) -> None:
        # Output travels in frame headers, which have a size limit: send it in pieces.
        for start in range(0, len(text), self._PIECE):
            if self._task.cancelled:
                return
            piece = text[start : start + self._PIECE]
            self._session.send((_wire.OUTPUT, self._task.task_id, stream, piece))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the worker daemon."""
    parser = argparse.ArgumentParser(prog="python -m skyward_trio.worker")
    parser.add_argument("--dir", required=True, type=Path, help="the node's working directory")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    config = json.loads((directory / "worker.json").read_text())
    secret = (directory / "secret").read_bytes().strip()
    for entry in reversed(config.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    _runtime.set_instance_info(from_dict(config["info"]))
    os.environ.update(config.get("env", {}))
    # Collections find the store's address and the secret here (children inherit it).
    os.environ[_collections.WORKER_DIR_ENV] = str(directory.resolve())
    _capture.install()
    os.chdir(directory)
    # Outside serve() (before it listens, after it returns) a SIGTERM or SIGINT is noted,
    # not fatal: serve() shuts down at once for one that came early, and one that comes
    # while the executor and the volumes are closed waits for them.
    for asked in (signal.SIGTERM, signal.SIGINT):
        signal.signal(asked, _note_stop)
    # Each step of the way out runs even if one after it (they run last to first)
    # raised: a child of the executor outliving SIGKILL must not leave volumes mounted.
    with contextlib.ExitStack() as way_out:
        way_out.callback(_unmount_volumes, directory)
        way_out.callback(_end_what_tasks_left, directory)
        worker = Worker(directory, config, secret)
        way_out.callback(worker.close_executor)
        trio.run(worker.serve)


_STOP_ASKED = threading.Event()


def _note_stop(signum: int, frame: Any) -> None:
    _STOP_ASKED.set()


def _end_what_tasks_left(directory: Path) -> None:
    """End what this worker's tasks started and left running (a subprocess, a daemon):
    each carries the worker's directory in its environment. SIGTERM, up to 2 s, SIGKILL.
    Whatever ends the worker (its pool's end, its lease, a SIGTERM), nothing of its keeps
    running on the machine; a node's end does it again for a worker that was killed."""
    mine, me = {str(directory.resolve())}, os.getpid()
    left = end(lambda: [pid for pid in started_by(mine) if pid != me])
    if left:
        print(f"skyward worker: processes {left} outlived SIGKILL", file=sys.stderr)


def _unmount_volumes(directory: Path) -> None:
    """Unmount the node's ``sky.Volume`` mounts (the bootstrap mounted them for this
    worker): nothing stays mounted, nor any s3fs running, once the worker is gone."""
    if not (directory / "volumes").is_dir():
        return
    done = subprocess.run(
        unmount_command(str(directory.resolve())), capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or done.stderr.strip():
        print(f"skyward worker: unmounting volumes: {done.stderr.strip()}", file=sys.stderr)


if __name__ == "__main__":
    main()
