"""One ``sky.Local`` node: an SSH server process on its own loopback address.

Run as ``python -m skyward_trio._localnode --addr 127.0.0.N --dir NODE_DIR``. It reads its
host key and the pool's authorized client key from NODE_DIR, listens on a free port of
that address only, prints ``READY <port>`` and then serves real SSH: commands run in
``bash -c`` in NODE_DIR, and direct-streamlocal channels reach unix sockets (that is how
the client talks to the worker). It is a plain asyncio program: it is the "machine", not
part of the client.

It stops when told (SIGTERM), and also when its parent (the client) dies, so a killed
client does not leave local nodes behind. Either way it first kills the worker daemon
and every command it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

import asyncssh

from skyward_trio._sshtrim import trim

_PREFERRED_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]


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

    def kill_everything(self) -> None:
        # Workers are started detached (their own session), so they are not in the
        # process groups below: find each by the pid file it writes in its directory.
        for ready in self.directory.glob("**/worker.ready"):
            try:
                pid = int(ready.read_text().strip())
            except (OSError, ValueError):
                continue
            if _is_worker_of(pid, ready.parent):
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
        node.kill_everything()
        server.close()


def _default_ciphers() -> list[str]:
    from asyncssh.encryption import get_default_encryption_algs

    return [
        a.decode() for a in get_default_encryption_algs() if a.decode() not in _PREFERRED_CIPHERS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m skyward_trio._localnode")
    parser.add_argument("--addr", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument(
        "--hang-commands",
        action="store_true",
        help="never run commands nor answer them (sky.testing.hang_bootstrap)",
    )
    args = parser.parse_args()
    asyncio.run(_serve(args.addr, args.dir, hang_commands=args.hang_commands))


if __name__ == "__main__":
    main()
