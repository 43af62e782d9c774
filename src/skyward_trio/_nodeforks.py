"""The client's side of ``sky.Local``'s fork server (see ``_localnode``).

One fork server per client process, started with the first Local node and shared by
every pool and thread after it. A node is asked for with a JSON request and the write end
of a pipe; the node writes ``PID <pid>`` and then ``READY <port>`` on it. The node is the
fork server's child, not the client's: the client watches and signals it through a pidfd,
which names that process and no other, even once its pid is reused.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading

import trio

__all__ = ["FORKER", "ForkedNode", "Forker"]


class ForkedNode:
    """A Local node's SSH server process: its pid, a pidfd on it and the read end of its stdout."""

    def __init__(self, pid: int, stdout: trio.lowlevel.FdStream) -> None:
        self.pid = pid
        self.stdout = stdout
        self._pidfd: int | None = os.pidfd_open(pid)

    @property
    def running(self) -> bool:
        """Whether the process has not exited yet (a stopped one runs)."""
        if self._pidfd is None:
            return False
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return not readable

    def send_signal(self, sig: int) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> None:
        """Until the process has exited (polled: more than one task may wait at once)."""
        while self.running:  # noqa: ASYNC110 - a trio.Event would need a task to set it
            await trio.sleep(0.01)

    async def aclose(self) -> None:
        """Let go of the pidfd and the stdout pipe (the process is not touched)."""
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)
        await self.stdout.aclose()


class Forker:
    """Starts the fork server when first needed (again if it died, or after a fork of
    this process), and sends it requests; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._owner = os.getpid()

    def request(self, spec: dict[str, object]) -> trio.lowlevel.FdStream:
        """Ask for a node (``spec``: addr, dir, hang_commands); returns the read end of
        its stdout. The client's environment as it is now goes with it (the node's
        commands, the worker among them, inherit it)."""
        message = json.dumps({**spec, "env": dict(os.environ)}).encode()
        read_end, write_end = os.pipe()
        try:
            with self._lock:
                self._send(message, write_end)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        return trio.lowlevel.FdStream(read_end)

    def _send(self, message: bytes, fd: int) -> None:
        for attempt in range(2):
            sock = self._server()
            try:
                socket.send_fds(sock, [message], [fd])
                return
            except OSError as exc:
                self._forget()
                if attempt:
                    raise RuntimeError(
                        f"sky.Local's fork server ({sys.executable} -m "
                        f"skyward_trio._localnode --forker) took no request: {exc}"
                    ) from exc

    def _server(self) -> socket.socket:
        if self._owner != os.getpid():
            self._drop_parents()  # forked without os.fork's hooks
        if self._proc is not None and self._proc.poll() is not None:
            self._forget()
        if self._sock is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with theirs:
                command = [sys.executable, "-m", "skyward_trio._localnode", "--forker"]
                self._proc = subprocess.Popen(
                    [*command, "--socket", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    pass_fds=[theirs.fileno()],
                )
            self._sock = ours
        return self._sock

    def after_fork(self) -> None:
        """In a forked copy of this process (``os.register_at_fork``)."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._drop_parents()

    def _drop_parents(self) -> None:
        """The server is the parent's. The copy of its socket is closed (it would keep the
        server, and so the nodes, running once the parent has gone); a request starts a
        server of this process's own."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._proc = None
        self._owner = os.getpid()

    def close(self) -> None:
        """End the fork server (its nodes see it go and stop); at exit, or to start afresh."""
        with self._lock:
            if self._owner == os.getpid():
                self._forget()

    def _forget(self) -> None:
        """Drop the server: closing the socket ends it (if it still runs)."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
        self._proc = None


#: This process's fork server.
FORKER = Forker()
atexit.register(FORKER.close)
os.register_at_fork(after_in_child=FORKER.after_fork)
