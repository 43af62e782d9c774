"""One ``sky.Local`` node: an SSH server process on its own loopback address.

A node reads its host key and the pool's authorized client key from its directory
(NODE_DIR), prints ``PID <pid>``, listens on a free port of its address only, prints
``READY <port>`` and then serves real SSH: commands run in ``bash -c`` in NODE_DIR, and
direct-streamlocal channels reach unix sockets (that is how the client talks to the
worker). It is a plain asyncio program: it is the "machine", not part of the client.

Nodes are forked, not started afresh: importing asyncssh and this package takes half a
second of CPU, more than the rest of a node's short life. A client runs one fork server,
``python -m skyward_trio._localnode --forker --socket FD`` (``_nodeforks`` starts it),
which imports everything once and then forks a node for each request that arrives on
its socket: a JSON object (address, directory, the client's environment) with the
write end of a pipe, which becomes the node's stdout (its stderr is
``sshd.log`` in its directory). A node names itself
``skyward_trio._localnode node --addr 127.0.0.N --dir NODE_DIR`` in ``ps`` (setproctitle).

A node stops when told (SIGTERM), and also when its parent, the fork server, dies; the
fork server ends when the client closes its socket or dies. So a killed client does not
leave local nodes behind. Either way a node first ends the worker daemon (SIGTERM, and up
to 12 s for its plugins' teardown, as on sky.SSH) and then kills every command it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

import asyncssh
import setproctitle

from skyward_trio._pids import end, in_groups, started_by
from skyward_trio._sshtrim import trim

_PREFERRED_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
# How long a stopping node waits for its worker's own teardown: stop_app's bound (10 s)
# and a little more, as sky.SSH's cleanup does.
_WORKER_GRACE = 12.0


class _Server(asyncssh.SSHServer):
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        trim(conn)

    def unix_connection_requested(self, dest_path: str) -> bool:
        return True

    def unix_server_requested(self, listen_path: str) -> bool:
        # The client serves the collections store here when it runs it (see _store).
        return True


class _Node:
    def __init__(self, directory: Path, *, hang_commands: bool = False) -> None:
        self.directory = directory
        self.hang_commands = hang_commands
        self.groups: set[int] = set()
        self.stopping = asyncio.Event()

    async def handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        if self.hang_commands:
            # sky.testing.hang_bootstrap: a command is taken and never run nor answered,
            # as on a machine whose set-up is stuck, until the client gives up on it.
            await process.wait_closed()
            return
        command = process.command or "exec bash -l"
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.directory,
            start_new_session=True,
            env={
                **os.environ,
                "SKYWARD_NODE_DIR": str(self.directory),
                # The worker watches this "machine" and exits with it.
                "SKYWARD_NODE_PID": str(os.getpid()),
            },
        )
        self.groups.add(proc.pid)
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None

        async def pump_in() -> None:
            assert proc.stdin
            try:
                while data := await process.stdin.read(65536):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                pass
            except (BrokenPipeError, ConnectionResetError):
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()

        async def pump_out(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        feeder = asyncio.ensure_future(pump_in())
        try:
            await asyncio.gather(
                pump_out(proc.stdout, process.stdout), pump_out(proc.stderr, process.stderr)
            )
            rc = await proc.wait()
        except (asyncssh.Error, ConnectionError, asyncio.CancelledError):
            # The channel went away before the command finished: like a hung-up
            # terminal, the command goes with it.
            _kill_group(proc.pid)
            raise
        finally:
            feeder.cancel()
            self.groups.discard(proc.pid)
        process.exit(rc if rc >= 0 else 128 - rc)

    def _ready_files(self) -> list[Path]:
        return list(self.directory.glob("**/worker.ready"))

    def workers(self) -> list[int]:
        """The node's running workers. They are started detached (their own session), so
        they are not in ``groups``: each is found by the pid file it writes in its
        directory."""
        found = []
        for ready in self._ready_files():
            try:
                pid = int(ready.read_text().strip())
            except (OSError, ValueError):
                continue
            if _is_worker_of(pid, ready.parent):
                found.append(pid)
        return found

    async def end_workers(self, grace: float = _WORKER_GRACE) -> None:
        """Ask each worker to stop (SIGTERM) and give it up to ``grace`` s: it ends its
        plugins' around_app, whose teardown may run commands (the MPS daemon's quit), and
        this is the user's own machine. Then what the workers started and left, running
        or long gone, gets SIGTERM, up to 2 s, and SIGKILL: what is left of a running
        worker's process group, and every process that carries a worker's directory in
        its environment (a task's subprocess, a daemon). As sky.SSH's cleanup does."""
        directories = {str(ready.parent.resolve()) for ready in self._ready_files()}
        workers = self.workers()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.workers() and loop.time() < deadline:  # noqa: ASYNC110 (processes)
            await asyncio.sleep(0.05)
        for pid in self.workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        def left() -> list[int]:
            return sorted({*in_groups(workers), *started_by(directories)})

        await loop.run_in_executor(None, end, left)

    def kill_everything(self) -> None:
        """SIGKILL to the workers' process groups (a PID in use as a group is not reused)
        and to the commands the node started."""
        for pid in self.workers():
            _kill_group(pid, signal.SIGKILL)
        for pgid in list(self.groups):
            _kill_group(pgid, signal.SIGKILL)


def _is_worker_of(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is this node's worker (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(directory).encode() in cmdline


def _kill_group(pgid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _serve(addr: str, directory: Path, *, hang_commands: bool) -> None:
    print(f"PID {os.getpid()}", flush=True)
    node = _Node(directory, hang_commands=hang_commands)
    parent = os.getppid()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, node.stopping.set)
    server = await asyncssh.create_server(
        _Server,
        addr,
        0,
        server_host_keys=[str(directory / "host_key")],
        authorized_client_keys=str(directory / "authorized_keys"),
        process_factory=node.handle,
        encoding=None,
        encryption_algs=_PREFERRED_CIPHERS + _default_ciphers(),
        allow_scp=False,
        keepalive_interval=5,
        keepalive_count_max=3,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    try:
        while not node.stopping.is_set():
            if os.getppid() != parent:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.stopping.wait(), timeout=0.5)
    finally:
        server.close()
        try:
            await node.end_workers()
        finally:
            node.kill_everything()


def _default_ciphers() -> list[str]:
    from asyncssh.encryption import get_default_encryption_algs

    return [
        a.decode() for a in get_default_encryption_algs() if a.decode() not in _PREFERRED_CIPHERS
    ]


def node_title(addr: str, directory: str, *, hang_commands: bool) -> str:
    """What a node shows in ``ps`` (and ``/proc/PID/cmdline``): its address and directory."""
    title = f"skyward_trio._localnode node --addr {addr} --dir {directory}"
    return title + (" --hang-commands" if hang_commands else "")


def _serve_forks(sock: socket.socket) -> None:
    """The fork server's loop: a node for each request, until the client goes away."""
    parent = os.getppid()
    # The kernel reaps the nodes (the client watches them through pidfds); Ctrl-C in
    # the client's terminal is the client's to act on, and its nodes get it as before.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _default_ciphers()  # asyncssh's lazy imports, done once here rather than in each node
    sock.settimeout(0.5)
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 1)
        except TimeoutError:
            if os.getppid() != parent:
                return  # the client died, and something else holds its end of the socket
            continue
        if not message:
            return  # the client closed its end, or died
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        (stdout,) = fds
        try:
            pid = os.fork()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.write(stdout, f"ERROR the fork server could not fork: {exc}\n".encode())
            os.close(stdout)
            continue
        if pid == 0:
            sock.close()
            _forked_node(json.loads(message), stdout)
        os.close(stdout)


def _forked_node(request: dict[str, Any], stdout: int) -> None:
    """A node, in a child of the fork server: its stdout (the client's pipe), stderr
    (``sshd.log``), environment (the client's) and title set, then served; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        directory = Path(request["dir"])
        try:
            log = os.open(directory / "sshd.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:
            if not directory.exists():
                # The client gave this node up (a cancelled start) and removed its
                # directory before it started: nobody to serve, nothing to report.
                return
            raise
        os.dup2(stdout, 1)
        os.dup2(log, 2)
        os.close(stdout)
        os.close(log)
        hang = bool(request["hang_commands"])
        setproctitle.setproctitle(node_title(request["addr"], str(directory), hang_commands=hang))
        asyncio.run(_serve(request["addr"], directory, hang_commands=hang))
        code = 0
    except BaseException:  # a child of the fork server never returns into its loop
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m skyward_trio._localnode")
    parser.add_argument(
        "--forker", action="store_true", required=True, help="serve fork requests for nodes"
    )
    parser.add_argument("--socket", type=int, required=True, help="its socket's file descriptor")
    args = parser.parse_args()
    setproctitle.setproctitle(f"{sys.executable} -m skyward_trio._localnode --forker")
    _serve_forks(socket.socket(fileno=args.socket))


if __name__ == "__main__":
    main()
