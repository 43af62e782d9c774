"""Providers: where nodes come from. Today: ``Local``, the embedded default.

A provider's cluster object provisions one instance per node, reports what the client
needs to reach it (address, port, host key, interpreter, working directory) and
terminates it. Terminate is confirmed: an instance that cannot be confirmed gone is an
error the pool reports, never silence.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs
import trio

from . import _transport
from ._model import Local, ProviderConfig

__all__ = ["ARMED_FAULTS", "Cluster", "Instance", "LocalCluster", "LocalFault", "open_cluster"]


@attrs.frozen(kw_only=True)
class Instance:
    """A provisioned machine, as the client sees it."""

    id: str
    node: int
    host: str
    port: int
    username: str
    host_key: str  # public key, OpenSSH one-line form
    private_ip: str
    public_ip: str | None
    python: str  # interpreter the worker runs with
    workdir: str
    # Import path the worker starts with: Local nodes share this machine's files, so they
    # get the client's sys.path and can import the same modules (your own included).
    sys_path: tuple[str, ...] = ()
    hourly_price: float = 0.0  # USD per hour its provider bills (the offer's price); Local: 0


class Cluster(Protocol):
    """One pool's view of a provider.

    ``terminate`` must confirm the instance is gone or raise. ``aclose`` must end anything
    the cluster started that was never handed out as an instance or never terminated
    (a provision cancelled half-way, say): nothing it created may outlive the pool.
    ``alive`` says whether the provider still has the instance running (False once it
    is preempted or terminated): the pool asks before it tries to reconnect to a node.
    """

    name: str
    #: Whether nodes reach each other's private addresses: then the collections store
    #: runs on node 0, else in the client.
    peers_reachable: bool

    async def provision(self, node: int) -> Instance: ...
    async def alive(self, instance: Instance) -> bool: ...
    async def terminate(self, instance: Instance) -> None: ...
    async def aclose(self) -> None: ...


async def open_cluster(config: ProviderConfig, *, job_id: str, client_public_key: str) -> Cluster:
    """Open the cluster object of the provider ``config`` names."""
    if isinstance(config, Local):
        return LocalCluster(config, job_id=job_id, client_public_key=client_public_key)
    raise TypeError(
        f"provider {type(config).__qualname__} is not available in this version; "
        "use provider=sky.Local() (see the README's 'not yet' list)"
    )


@attrs.define(kw_only=True)
class LocalFault:
    """A start-up fault armed for ``sky.Local()`` nodes by the fault kit (``testing``).

    It applies to the pools whose cluster opened while it was armed, and only while it
    stays armed; ``times`` (None: every one) attempts of node ``node`` are hit.
    """

    kind: Literal["provision", "bootstrap", "standalone"]
    node: int
    times: int | None
    #: How many attempts it has hit so far.
    fired: int = 0
    armed: bool = True

    def hits(self, kind: str, node: int) -> bool:
        """Whether this attempt of ``node`` at ``kind`` fails (and count it if so)."""
        if not self.armed or kind != self.kind or node != self.node:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


#: Faults armed now (the fault kit adds and removes them); each cluster copies the list
#: when it opens, so arming one does not touch pools already running.
ARMED_FAULTS: list[LocalFault] = []


class LocalCluster:
    """``sky.Local()``: each node is an SSH server process on its own 127.0.0.x address."""

    name = "local"

    def __init__(self, config: Local, *, job_id: str, client_public_key: str) -> None:
        self.config = config
        self.job_id = job_id
        self._client_public_key = client_public_key
        self.root = Path(tempfile.mkdtemp(prefix=f"skyward-{job_id}-"))
        self._procs: dict[str, trio.Process] = {}
        self._faults = list(ARMED_FAULTS)
        self._stalls: dict[str, threading.Timer] = {}  # by instance id: pending SIGCONTs
        # Local nodes share loopback; the fault kit can make them pass for standalone ones.
        self.peers_reachable = not any(f.kind == "standalone" for f in self._faults)

    def _fault(self, kind: str, node: int) -> bool:
        return any(fault.hits(kind, node) for fault in self._faults)

    async def provision(self, node: int) -> Instance:
        if self._fault("provision", node):
            raise RuntimeError(
                f"the provider has no capacity for node {node} "
                "(a fault injected by sky.testing.fail_provisioning)"
            )
        directory = self.root / f"node-{node}"
        socket_path = directory / "work" / "worker.sock"
        if len(str(socket_path)) > 100:  # AF_UNIX paths are limited to 108 bytes
            raise RuntimeError(
                f"the worker's socket path would be {len(str(socket_path))} bytes long "
                f"({socket_path}), over the 107 a unix socket allows; set TMPDIR to a "
                "shorter directory"
            )
        # A replacement node starts from a clean directory, like a new machine would.
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(mode=0o700)
        host_key = _transport.generate_key()
        (directory / "host_key").write_bytes(_transport.private_openssh(host_key))
        os.chmod(directory / "host_key", 0o600)
        (directory / "authorized_keys").write_text(self._client_public_key + "\n")
        addr = f"127.0.0.{2 + node % 250}"
        command = [sys.executable, "-m", "skyward_trio._localnode", "--addr", addr]
        command += ["--dir", str(directory)]
        if self._fault("bootstrap", node):
            command.append("--hang-commands")
        log = _open_log(directory / "sshd.log")
        try:
            proc = await trio.lowlevel.open_process(
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        instance_id = f"local-{self.job_id}-{node}-{proc.pid}"
        self._procs[instance_id] = proc
        port = await _read_ready(proc, directory)
        return Instance(
            id=instance_id,
            node=node,
            host=addr,
            port=port,
            username=_username(),
            host_key=_transport.public_openssh(host_key),
            private_ip=addr,
            public_ip=None,
            python=sys.executable,
            workdir=str(directory / "work"),
            sys_path=_client_sys_path(),
        )

    async def alive(self, instance: Instance) -> bool:
        """Whether the node's process runs (a frozen one does: it is stalled, not gone)."""
        proc = self._procs.get(instance.id)
        return proc is not None and proc.returncode is None

    def stall(self, instance: Instance, seconds: float) -> None:
        """Freeze the node's SSH server (SIGSTOP) and thaw it ``seconds`` later (SIGCONT).

        Returns at once; thread-safe. The TCP connection stays up but nothing is read or
        sent on it; the worker keeps running behind the frozen server.
        """
        proc = self._procs.get(instance.id)
        if proc is None or proc.returncode is not None:
            raise ValueError(f"instance {instance.id} is not running")
        timer = threading.Timer(seconds, self._thaw, (instance.id, proc.pid))
        timer.daemon = True
        previous = self._stalls.pop(instance.id, None)
        if previous is not None:
            previous.cancel()
        self._stalls[instance.id] = timer
        os.kill(proc.pid, signal.SIGSTOP)
        timer.start()

    def _thaw(self, instance_id: str, pid: int) -> None:
        if self._stalls.pop(instance_id, None) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def terminate(self, instance: Instance) -> None:
        proc = self._procs.get(instance.id)
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            self._thaw(instance.id, proc.pid)  # a frozen process does not act on SIGTERM
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(2):
                    await proc.wait()
        _kill_worker(Path(instance.workdir))
        if proc.returncode is None:
            raise RuntimeError(f"local node process {proc.pid} did not exit")
        self._procs.pop(instance.id, None)  # terminate may run twice at once (retire, teardown)

    async def aclose(self) -> None:
        """Kill what is left (a node still being provisioned when the pool closed), then
        remove the pool's directory."""
        for timer in list(self._stalls.values()):
            timer.cancel()
        self._stalls.clear()
        for proc in list(self._procs.values()):
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(2):
                    await proc.wait()
        for worker_ready in self.root.glob("node-*/work/worker.ready"):
            _kill_worker(worker_ready.parent)
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_worker(workdir: Path) -> None:
    """The node process kills its worker on exit; this covers a node that was SIGKILLed."""
    try:
        pid = int((workdir / "worker.ready").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(workdir).encode() in cmdline:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def _read_ready(proc: trio.Process, directory: Path) -> int:
    assert proc.stdout is not None
    buf = b""
    with trio.move_on_after(30):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(256)
            if not chunk:
                break
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace")
    if not line.startswith("READY "):
        log = (directory / "sshd.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"local node server did not start (said {line!r}); its log:\n{log}")
    return int(line.split()[1])


def _client_sys_path() -> tuple[str, ...]:
    """This process's import path, with "" (the current directory) made absolute."""
    cwd = os.getcwd()
    return tuple(cwd if entry == "" else entry for entry in sys.path)


def _open_log(path: Path) -> Any:
    """A log file handed to the node process as its stderr (closed here once it has it)."""
    return open(path, "wb")


def _username() -> str:
    import getpass

    return getpass.getuser()
