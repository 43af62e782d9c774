"""A process-executor child: ``python -m skyward_trio._procchild --fd N --parent PID``.

The worker's :class:`~skyward_trio._procpool.ProcessExecutor` starts these. Each one talks
to the worker over one end of a ``socket.socketpair()`` (fd ``N``) with ``_wire`` frames,
never over its stdout: file descriptors 1 and 2 are pipes the worker reads, so whatever a
task writes there (``print``, C code, subprocesses) reaches the task's output live.

Protocol, one frame each way per task, plus one exchange per streamed item::

    worker -> child   (INIT, {"sys_path": [...], "info": {...}, "one_shot": bool,
                             "plugins": str | None, "slot": int, "slots": int})   once, first
    worker -> child   (TASK, kind, fn_key, fn_payload | None, args_payload, stream, inputs)
    child  -> worker  (ITEM, payload)      if stream: one per item a generator yields,
    worker -> child   (ACK, more)          answered before the generator goes on
    child  -> worker  (NEXT, slot)         if inputs: the task wants the next item of the
    worker -> child   (INPUT, payload)     ``Iterator[T]`` argument in ``slot``,
                    | (INPUT_END,)         or there are no more
    child  -> worker  (DONE, result, functions_received)

``kind`` is ``_wire.RUN`` or ``_wire.BATCH``; ``result`` is what ``_execute.run_one`` or
``run_batch`` returned. ``fn_payload`` is sent only the first time this child sees
``fn_key``. ``more`` is what the worker's item sink returned: False stops the generator.
The child exits when the socket reaches EOF, after one task when ``one_shot``, and when
the worker dies (see ``_watch_parent``).

Layer 3: stdlib, ``_wire``, ``_serial``, ``_execute``, ``_runtime``, ``_info``, ``_capture``,
``_pluginrun`` (and attrs); never trio.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from . import _capture, _execute, _runtime, _serial, _wire
from ._info import from_dict
from ._pluginrun import NodePlugins

__all__ = ["ACK", "DONE", "INIT", "INPUT", "INPUT_END", "ITEM", "NEXT", "TASK", "main"]

# Message kinds of the worker <-> child channel (not the client wire; small ints like _wire's).
INIT = 100
TASK = 101
DONE = 102
ITEM = 103
ACK = 104
NEXT = 105
INPUT = 106
INPUT_END = 107

# Exit status when the worker that started this child has gone away.
ORPHANED = 70


def main(argv: list[str] | None = None) -> None:
    """Serve tasks on the socket given by ``--fd`` until it closes (or one, if one-shot)."""
    parser = argparse.ArgumentParser(prog="python -m skyward_trio._procchild")
    parser.add_argument("--fd", required=True, type=int, help="this child's end of the channel")
    parser.add_argument("--parent", required=True, type=int, help="the worker's pid")
    args = parser.parse_args(argv)
    _watch_parent(args.parent)
    # The worker, not the terminal, decides when a child ends: a Ctrl-C sent to the process
    # group must not interrupt a task here and leave the worker waiting on a half-dead child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_inheritable(args.fd, False)  # not into the task's own subprocesses
    sock = socket.socket(fileno=args.fd)
    _setup_streams()
    channel = _Channel(sock)
    init = channel.receive()
    if init is None:
        return
    kind, config = init
    if kind != INIT:
        raise _wire.ProtocolError(f"expected the INIT message first, got kind {kind!r}")
    for entry in reversed(config["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    info = from_dict(config["info"])
    slot = config.get("slot")
    if info.workers_per_node > 1 and slot is not None:
        # Each subprocess is a worker of its own, a rank (_plugin.workers_per_node).
        info = attrs.evolve(info, worker=slot)
    _runtime.set_instance_info(info)
    _runtime.set_process_slot(slot, config.get("slots"))
    plugins = NodePlugins.unpack(config.get("plugins"))
    with contextlib.ExitStack() as stack:
        wrap = None
        if plugins is not None:
            plugins.enter_process(stack, info)
            wrap = functools.partial(plugins.wrap, gate=plugins.wait_process)
        try:
            _serve(channel, one_shot=bool(config["one_shot"]), wrap=wrap)
        except (BrokenPipeError, ConnectionResetError):
            return  # the worker closed the channel while a reply was on its way: it is going


def _serve(channel: _Channel, *, one_shot: bool, wrap: Callable[[Any], Any] | None) -> None:
    cache = _execute.FunctionCache(wrap)
    received = 0
    while True:
        message = channel.receive()
        if message is None:
            return  # the worker closed the channel: done
        if message[0] != TASK:
            raise _wire.ProtocolError(f"expected a TASK message, got kind {message[0]!r}")
        _, task_kind, fn_key, fn_payload, args_payload, stream, inputs = message
        if fn_payload is not None:
            cache.add(fn_key, fn_payload)
            received += 1
        result: Any
        if task_kind == _wire.RUN:
            sink = channel.send_item if stream else None
            source = channel.input if inputs else None
            result = _execute.run_one(cache, fn_key, args_payload, sink, source)
        else:
            result = _execute.run_batch(cache, fn_key, args_payload)
        # Everything the task wrote must be in the pipes before the reply is: the worker
        # drains them when the reply arrives and attributes what it reads to this task.
        _flush_output()
        channel.send((DONE, result, received))
        if one_shot:
            return


class _Channel:
    """Blocking frames over the socket (the main thread is the only user)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = _wire.FrameDecoder(expect_hello=False)
        self._pending: list[Any] = []

    def receive(self) -> Any:
        """The next message, or None at EOF."""
        while not self._pending:
            try:
                data = self._sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    def send_item(self, payload: Any) -> bool:
        """Hand one yielded item to the worker; False when no more are wanted."""
        self.send((ITEM, payload))
        reply = self.receive()
        if reply is None:
            return False  # the worker is gone: stop the generator
        if reply[0] != ACK:
            raise _wire.ProtocolError(f"expected an ACK message, got kind {reply[0]!r}")
        return bool(reply[1])

    def input(self, slot: int) -> Iterator[Any]:
        """The items of the ``Iterator[T]`` argument in ``slot``, asked for one at a time."""
        while True:
            self.send((NEXT, slot))
            reply = self.receive()
            if reply is None:
                raise EOFError("the worker closed the channel while the task read its input")
            if reply[0] == INPUT_END:
                return
            if reply[0] != INPUT:
                raise _wire.ProtocolError(f"expected an INPUT message, got kind {reply[0]!r}")
            yield _serial.loads(reply[1])

    def send(self, message: tuple[Any, ...]) -> None:
        frame = _wire.encode(message)
        if len(frame) > 1 and sum(len(c) for c in frame) < 65536:
            frame = [b"".join(frame)]
        for chunk in frame:
            self._sock.sendall(chunk)


def _setup_streams() -> None:
    # fd 1 and 2 are pipes, so Python would buffer stdout in blocks: make it flush every
    # line (live output), and write UTF-8 whatever the node's locale, since the worker
    # decodes the pipes as UTF-8.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(encoding="utf-8", line_buffering=True)
    _libc_line_buffering()
    # Routing streams make sky.silent / sky.stdout(only=...) / sky.redirect_output work
    # here as under the thread executor; with no route set they write to the pipes.
    _capture.install()


# libc's own stdout is block-buffered on a pipe too: without this, printf() from C
# extensions would arrive only at exit. Linux (glibc/musl) only; elsewhere C output still
# arrives, flushed after each task.
_libc: Any = None


def _libc_line_buffering() -> None:
    global _libc
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        c_stdout = ctypes.c_void_p.in_dll(libc, "stdout")
    except (OSError, ValueError):
        return  # no libc symbols to reach: C output is flushed per task only
    io_lbf = 1  # _IOLBF on Linux
    libc.setvbuf(c_stdout, None, io_lbf, 0)
    _libc = libc


def _flush_output() -> None:
    streams = {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    for stream in streams.values():
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            # The task closed or broke this stream, so there is nowhere to report it on;
            # the reply matters more than the output.
            continue
    if _libc is not None:
        _libc.fflush(None)


def _watch_parent(parent: int) -> None:
    """Exit at once if the worker dies, even in the middle of a task.

    EOF on the channel ends an idle child, but a child busy in a task never reads it. A
    pidfd of the parent becomes readable when the parent exits, so a daemon thread just
    blocks on it (Linux >= 5.3). Elsewhere the thread polls ``os.getppid()`` once a second.

    ``prctl(PR_SET_PDEATHSIG)`` was rejected: it fires when the *thread* that started the
    child exits, and the worker starts children from task threads that come and go.
    """
    pidfd: int | None = None
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            pidfd = pidfd_open(parent)
        except OSError:
            pidfd = None
    if os.getppid() != parent:  # already orphaned (or the pidfd names a recycled pid)
        os._exit(ORPHANED)

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while os.getppid() == parent:
                time.sleep(1.0)
        os._exit(ORPHANED)

    threading.Thread(target=watch, name="skyward-parent-watch", daemon=True).start()


if __name__ == "__main__":
    main()
