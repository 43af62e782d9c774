"""Providers: where nodes come from: ``Local`` (the embedded default) and ``SSH``.

A provider's cluster object provisions one instance per node, reports what the client
needs to reach it (address, port, host key, interpreter, working directory) and
terminates it. Terminate is confirmed: an instance that cannot be confirmed gone is an
error the pool reports, never silence.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import os
import platform
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

import attrs
import trio

from . import _transport
from ._model import (
    AWS,
    DEFAULT_SSH_CONFIG,
    GCP,
    SSH,
    Container,
    Hyperstack,
    JarvisLabs,
    Lambda,
    Local,
    MassedCompute,
    Novita,
    ProviderConfig,
    RunPod,
    Scaleway,
    TensorDock,
    VastAI,
    Verda,
    Vultr,
    jump_hosts,
)
from ._nodeforks import FORKER, ForkedNode
from ._offers import Catalog, Choice, Offer
from ._pids import started_by
from ._volumes import UNMOUNT_SH
from .accelerators import Accelerator

if TYPE_CHECKING:
    import httpx  # the cloud providers' client: imported when a cloud pool opens

__all__ = [
    "API_TIMEOUT",
    "ARMED_FAULTS",
    "Cluster",
    "HostKeyError",
    "Instance",
    "KeyedAPI",
    "LocalCluster",
    "LocalFault",
    "SSHCluster",
    "SSHTarget",
    "TokenAPI",
    "ended_on_failure",
    "failure_words",
    "first_host_key",
    "given_host_key",
    "offers",
    "open_cluster",
    "poll_delays",
    "remote_workdir",
    "response_json",
    "response_object",
    "said",
    "ssh_targets",
]


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
    # Interpreter the worker runs with; None: a remote machine, where the bootstrap finds
    # one of the client's X.Y and builds the environment (Skyward included) with it.
    python: str | None
    workdir: str
    # Import path the worker starts with: Local nodes share this machine's files, so they
    # get the client's sys.path and can import the same modules (your own included).
    sys_path: tuple[str, ...] = ()
    hourly_price: float = 0.0  # USD per hour its provider bills (the offer's price); Local: 0
    # How the client logs in; None: with the pool's own generated key (which the
    # provider installed on the machine, as Local does).
    login: _transport.Login | None = None
    # A shell command the worker runs when its lease (Spec.ttl) runs out with no client,
    # to stop the machine itself (a cloud pod deletes itself); None: the worker only exits.
    on_lease_expiry: str | None = None
    # Whose interruption notices the worker watches for: "aws" (a spot instance: EC2's
    # metadata service warns two minutes ahead), "gcp" (a spot VM: Compute Engine's
    # metadata server says it is preempted, about 30 s ahead); None: the provider gives
    # none.
    interruption_notices: str | None = None


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


#: The clouds that rent a machine per node, by config type: the module that speaks to each
#: (imported when a pool or a listing first needs it; it builds on this module's
#: ``Instance``) and its cluster class. Each module also has the cloud's ``catalog(config,
#: *, accelerator, gpus, everything)`` (AWS's takes the spec's ``region`` instead of ``gpus``).
_RENTED: dict[type[ProviderConfig], tuple[str, str]] = {
    RunPod: ("_runpod", "RunPodCluster"),
    VastAI: ("_vastai", "VastAICluster"),
    AWS: ("_aws", "AWSCluster"),
    Lambda: ("_lambda", "LambdaCluster"),
    Hyperstack: ("_hyperstack", "HyperstackCluster"),
    Vultr: ("_vultr", "VultrCluster"),
    Verda: ("_verda", "VerdaCluster"),
    Scaleway: ("_scaleway", "ScalewayCluster"),
    Novita: ("_novita", "NovitaCluster"),
    GCP: ("_gcp", "GCPCluster"),
    TensorDock: ("_tensordock", "TensorDockCluster"),
    MassedCompute: ("_massedcompute", "MassedComputeCluster"),
    JarvisLabs: ("_jarvislabs", "JarvisLabsCluster"),
}


def _rented_module(config: ProviderConfig) -> tuple[ModuleType, str] | None:
    """The module of the cloud ``config`` rents from, and its cluster class's name; None
    for a provider that rents nothing (``Local``, ``SSH``, ``Container``)."""
    for kind in type(config).__mro__:
        if kind in _RENTED:
            name, cluster = _RENTED[kind]
            return importlib.import_module(f".{name}", __package__), cluster
    return None


async def open_cluster(
    config: ProviderConfig,
    *,
    job_id: str,
    client_key: _transport.SSHKey,
    choice: Choice,
) -> Cluster:
    """Open the cluster object of the provider ``config`` names.

    ``client_key`` is the pool's own key, which the provider installs on its machines;
    ``choice`` is the offer the pool was planned on (a cloud provider rents that one).
    """
    client_public_key = _transport.public_openssh(client_key)
    if isinstance(config, Local):
        return LocalCluster(config, job_id=job_id, client_public_key=client_public_key)
    if isinstance(config, SSH):
        targets = await trio.to_thread.run_sync(ssh_targets, config)
        return SSHCluster(config, job_id=job_id, targets=targets)
    if isinstance(config, Container):
        from ._container import ContainerCluster  # it builds on this module's Instance

        return await ContainerCluster.open(
            config, job_id=job_id, client_public_key=client_public_key
        )
    rented = _rented_module(config)
    if rented is not None:
        module, name = rented
        cluster: Cluster = getattr(module, name)(
            config, job_id=job_id, client_key=client_key, choice=choice
        )
        return cluster
    raise TypeError(
        f"provider {type(config).__qualname__} is not available in this version; "
        "use provider=sky.Local(), sky.SSH(hosts=[...]), sky.Container(), sky.RunPod(), "
        "sky.AWS(), sky.VastAI(), sky.Lambda(), sky.Hyperstack(), sky.Vultr(), sky.Verda(), "
        "sky.Scaleway(), sky.Novita(), sky.GCP(), sky.TensorDock(), sky.MassedCompute() or "
        "sky.JarvisLabs() "
        "(see the README's 'not yet' list)"
    )


async def offers(
    config: ProviderConfig,
    *,
    measure: bool = False,
    count: int | None = None,
    accelerators: float = 1,
    accelerator: Accelerator | None = None,
    region: str | None = None,
    everything: bool = False,
) -> Catalog:
    """What the provider ``config`` names can start, per node, and at what price.

    A cloud provider lists its machine types, priced for nodes of ``accelerators`` GPUs
    (AWS: the instance types that carry ``accelerator``, or CPU types when it is None, in
    the spec's ``region`` when it names one). With ``everything`` and no ``accelerator``,
    a provider whose listing depends on the accelerator lists all it has (``sky offers``);
    a spec with no accelerator gets CPU machines, or none on a GPU-only provider.

    ``Local`` nodes and ``Container`` nodes share this machine, so their one offer is this
    machine as it is now (free disk, not total). ``SSH`` hosts are the user's and cost
    nothing; what they have is not known before connecting, so with ``measure`` the
    first ``count`` hosts (all if None) are logged in to and measured, each its own offer.
    """
    if isinstance(config, Local):
        return Catalog(offers=(this_machine("sky.Local()"),))
    if isinstance(config, Container):
        return Catalog(offers=(this_machine("sky.Container()"),))
    if isinstance(config, AWS):  # listed by region; an instance type fixes its GPUs
        from ._aws import catalog as aws_catalog

        return await aws_catalog(
            config, accelerator=accelerator, region=region, everything=everything
        )
    rented = _rented_module(config)
    if rented is not None:
        listing: Catalog = await rented[0].catalog(
            config, accelerator=accelerator, gpus=accelerators, everything=everything
        )
        return listing
    if isinstance(config, SSH):
        if not measure:
            hosts = len(config.hosts)
            unknown = Offer(provider="sky.SSH()", name=f"{hosts} host(s)", on_demand_price=0.0)
            return Catalog(offers=(unknown,))
        targets = (await trio.to_thread.run_sync(ssh_targets, config))[:count]
        measured: list[Offer | None] = [None] * len(targets)
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                for i, target in enumerate(targets):
                    nursery.start_soon(_measure_into, measured, i, target)
        except* (OSError, RuntimeError, _transport.SSHError, HostKeyError) as group:
            failure = group.exceptions[0]
        if failure is not None:  # the spec is skipped, saying why
            return Catalog(error=f"its hosts could not be measured: {failure}")
        return Catalog(offers=tuple(m for m in measured if m is not None), every=True)
    raise TypeError(f"provider {type(config).__qualname__} is not available in this version")


# One line each: vCPUs, MemTotal in kB, free kB under $HOME, the machine's architecture.
_MEASURE = (
    "nproc; awk '/^MemTotal:/ {print $2}' /proc/meminfo; "
    "df -Pk \"$HOME\" | awk 'NR == 2 {print $4}'; uname -m"
)


async def _measure_into(measured: list[Offer | None], i: int, target: SSHTarget) -> None:
    measured[i] = await _measure(target)


async def _measure(target: SSHTarget) -> Offer:
    """Log in to ``target`` (its host key verified, as for a node) and read what it has.

    Raises:
        RuntimeError: The host did not say (not Linux, say), naming it.
    """
    where = f"{target.user}@{target.host}:{target.port}"
    host_key, login = await target.verified()
    ssh = await _transport.connect(
        target.host, target.port, username=target.user, login=login, host_key=host_key
    )
    try:
        rc, out, err = await ssh.run(_MEASURE)
    finally:
        await ssh.aclose()
    lines = out.decode(errors="replace").split()
    if rc != 0 or len(lines) != 4 or not all(x.isdigit() for x in lines[:3]):
        raise RuntimeError(
            f"could not measure {where} (nproc, /proc/meminfo, df, uname; exit status {rc}): "
            f"{err.decode(errors='replace').strip() or out.decode(errors='replace').strip()}"
        )
    return Offer(
        provider="sky.SSH()",
        name=f"host {target.host}",
        vcpus=int(lines[0]),
        memory_gb=round(int(lines[1]) * 1024 / 1e9, 1),
        disk_gb=round(int(lines[2]) * 1024 / 1e9, 1),
        architecture=_architecture(lines[3]),
        on_demand_price=0.0,
    )


def _architecture(machine: str) -> str:
    """``uname -m`` as ``Spec.architecture`` says it."""
    machine = machine.lower()
    return {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)


def this_machine(provider: str) -> Offer:
    """This machine as an offer: nodes that run on it (``Local``) have what it has."""
    try:
        vcpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        vcpus = os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    disk = shutil.disk_usage(tempfile.gettempdir()).free
    architecture = _architecture(platform.machine())
    return Offer(
        provider=provider,
        name="this machine",
        vcpus=vcpus,
        memory_gb=round(memory / 1e9, 1),
        disk_gb=round(disk / 1e9, 1),
        architecture=architecture,
        on_demand_price=0.0,
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
        self._procs: dict[str, ForkedNode] = {}
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
        # The node is forked by this process's fork server (_nodeforks): it says its pid,
        # then its port once it listens.
        hang = self._fault("bootstrap", node)
        stdout = FORKER.request({"addr": addr, "dir": str(directory), "hang_commands": hang})
        said = _NodeSays(stdout, directory)
        try:
            proc = ForkedNode(int(await said.line("PID")), stdout)
        except BaseException:
            await stdout.aclose()
            raise
        instance_id = f"local-{self.job_id}-{node}-{proc.pid}"
        self._procs[instance_id] = proc
        port = int(await said.line("READY"))
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
        return proc is not None and proc.running

    def stall(self, instance: Instance, seconds: float) -> None:
        """Freeze the node's SSH server (SIGSTOP) and thaw it ``seconds`` later (SIGCONT).

        Returns at once; thread-safe. The TCP connection stays up but nothing is read or
        sent on it; the worker keeps running behind the frozen server.
        """
        proc = self._procs.get(instance.id)
        if proc is None or not proc.running:
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
        # The node gives its worker up to 12 s to end its plugins' teardown (_localnode).
        await self._stop(instance.id, proc, grace=16)
        _kill_worker(Path(instance.workdir))
        if proc.running:
            raise RuntimeError(f"local node process {proc.pid} did not exit")
        # terminate may run twice at once (retire, teardown): the second finds it gone.
        if self._procs.pop(instance.id, None) is not None:
            await proc.aclose()

    async def _stop(self, instance_id: str, proc: ForkedNode, *, grace: float) -> None:
        """SIGTERM first (the node kills the commands it started: a bootstrap still running
        would otherwise go on writing in its directory), ``grace`` s to exit, then SIGKILL."""
        if proc.running:
            proc.send_signal(signal.SIGTERM)
            self._thaw(instance_id, proc.pid)  # a frozen process does not act on SIGTERM
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.running:
            proc.kill()
            with trio.move_on_after(2):
                await proc.wait()

    async def aclose(self) -> None:
        """Kill what is left (a node still being provisioned when the pool closed), then
        remove the pool's directory."""
        for timer in list(self._stalls.values()):
            timer.cancel()
        self._stalls.clear()
        for instance_id, proc in list(self._procs.items()):
            await self._stop(instance_id, proc, grace=2)
        for worker_ready in self.root.glob("node-*/work/worker.ready"):
            _kill_worker(worker_ready.parent)
        procs = list(self._procs.values())
        self._procs.clear()
        for proc in procs:
            await proc.aclose()
        for _ in range(20):  # a process on its way out may still write a file there
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.root.exists():
                break
            await trio.sleep(0.1)


def _kill_worker(workdir: Path) -> None:
    """The node process ends its worker and what the worker left on exit; this covers a
    node that was SIGKILLed (``sky.testing.preempt``, the OOM killer): SIGKILL to both."""
    try:
        pid = int((workdir / "worker.ready").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid = 0
    else:
        if str(workdir).encode() not in cmdline:
            pid = 0
    pids = started_by({str(workdir.resolve())})
    for victim in ([pid] if pid else []) + pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)


class _NodeSays:
    """The lines a Local node writes on its stdout while it starts (``PID n``, ``READY
    port``), or why it did not start: what the fork server said, or the node's log. Both
    lines come within 30 s of the request."""

    def __init__(self, stdout: trio.lowlevel.FdStream, directory: Path) -> None:
        self._stdout = stdout
        self._directory = directory
        self._buffer = b""
        self._deadline = trio.current_time() + 30

    async def line(self, word: str) -> str:
        """The rest of the next line, which must start with ``word``."""
        with trio.move_on_at(self._deadline):
            while b"\n" not in self._buffer:
                chunk = await self._stdout.receive_some(256)
                if not chunk:
                    break
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode(errors="replace")
        if not text.startswith(f"{word} "):
            try:
                log = (self._directory / "sshd.log").read_text(errors="replace")[-2000:]
            except OSError:
                log = "(none)"
            raise RuntimeError(f"local node server did not start (said {text!r}); its log:\n{log}")
        return text.split(" ", 1)[1]


def _client_sys_path() -> tuple[str, ...]:
    """This process's import path, with "" (the current directory) made absolute."""
    cwd = os.getcwd()
    return tuple(cwd if entry == "" else entry for entry in sys.path)


def _username() -> str:
    import getpass

    return getpass.getuser()


# --- sky.SSH ------------------------------------------------------------------------------------

_DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
SSH_KNOWN_HOSTS = "~/.ssh/known_hosts"
SKYWARD_KNOWN_HOSTS = "~/.skyward/known_hosts"


class HostKeyError(Exception):
    """A machine presented a host key other than the one a known_hosts file trusts."""


@attrs.frozen(kw_only=True)
class SSHTarget:
    """One host of ``sky.SSH``, resolved: where to connect, as whom, with what, and
    through which machines first (``ProxyJump``, each resolved the same way)."""

    host: str
    port: int
    user: str
    login: _transport.Login
    jumps: tuple[SSHTarget, ...] = ()

    async def verified(self) -> tuple[str, _transport.Login]:
        """The host's key, verified as :func:`verified_host_key` does, and the login
        that reaches it: through each jump host, whose keys are verified on the way."""
        through: list[_transport.Jump] = []
        for hop in self.jumps:
            command = None if through else hop.login.proxy_command  # the first one's only
            key = await verified_host_key(
                hop.host, hop.port, through=tuple(through), proxy_command=command
            )
            through.append(
                _transport.Jump(
                    host=hop.host, port=hop.port, username=hop.user, login=hop.login, host_key=key
                )
            )
        command = None if through else self.login.proxy_command
        key = await verified_host_key(
            self.host, self.port, through=tuple(through), proxy_command=command
        )
        return key, attrs.evolve(self.login, through=tuple(through))


#: The most machines one host may be reached through (a ProxyJump that names itself loops).
_MOST_JUMPS = 8


def ssh_targets(config: SSH) -> list[SSHTarget]:
    """Each host of ``config`` resolved the way ``ssh`` would: what ``config`` says, then
    ``ssh_config``, then the defaults. Keys are read (and decrypted) once each. Blocking
    (it reads files and may run a key's KDF): run it in a thread from async code.

    Raises:
        FileNotFoundError: A key or config file named that does not exist, or nothing at
            all to log in with, naming what was looked for and the fix.
        ValueError: A passphrase-protected key with no passphrase (and no agent to hold
            it), an unset ``passphrase_env`` variable, or a config file that does not parse.
        _transport.SSHError: A key file that cannot be loaded, or a passphrase that does
            not decrypt it.
    """
    config_file = _config_file(config)
    passphrase = _passphrase(config)
    keys: dict[str, _transport.SSHKey] = {}

    def resolve(name: str, user: str | None, port: int | None, chain: tuple[str, ...]) -> SSHTarget:
        said = _transport.HostConfig(host=name)
        if config_file is not None:
            try:
                said = _transport.host_config(config_file, name, user=user, port=port)
            except ValueError as exc:
                raise ValueError(
                    f"SSH(ssh_config={config.ssh_config!r}): {exc}. Fix the file, or pass "
                    "ssh_config=None to read none"
                ) from exc
        jumps: list[SSHTarget] = []
        # SSH(proxy_jump=...) is for the hosts, as ssh -J: their jump hosts follow their own.
        given = config.proxy_jump if len(chain) == 1 else None
        where = (
            f"SSH(proxy_jump={given!r})"
            if given is not None
            else f"SSH(ssh_config={config.ssh_config!r}): the ProxyJump of {name} "
            f"({said.proxy_jump!r})"
        )
        proxy = given if given is not None else said.proxy_jump
        hops = jump_hosts(proxy, where=where, fix="Fix it") if proxy is not None else ()
        for hop_spec in hops:
            if len(chain) >= _MOST_JUMPS:
                raise ValueError(
                    f"SSH(ssh_config={config.ssh_config!r}): reaching {chain[0]} goes through "
                    f"more than {_MOST_JUMPS} jump hosts ({' -> '.join(chain)} -> ...); a "
                    "ProxyJump probably names a host whose own ProxyJump leads back to it. "
                    "Fix the file"
                )
            hop_host = hop_spec.host
            hop = resolve(hop_host, hop_spec.user, hop_spec.port, (*chain, hop_host))
            jumps += [*hop.jumps, attrs.evolve(hop, jumps=())]
        for later in jumps[1:]:
            if later.login.proxy_command:
                raise ValueError(
                    f"SSH(ssh_config={config.ssh_config!r}): the jump host {later.host} (on the "
                    f"way to {chain[0]}) has a ProxyCommand, which only the first machine of a "
                    "chain can have (the others are reached through the one before). Fix the file"
                )
        # ProxyJump and ProxyCommand are two ways to the host: the config may name one
        # (SSH(proxy_jump=...) wins over both, as ssh -J does).
        command = said.proxy_command if given is None else None
        if command and said.proxy_jump:
            raise ValueError(
                f"SSH(ssh_config={config.ssh_config!r}): {name} has both a ProxyJump "
                f"({said.proxy_jump!r}) and a ProxyCommand ({command!r}); keep one. Fix the file"
            )
        login = _login(config, said, passphrase, keys)
        if command:
            login = attrs.evolve(login, proxy_command=command)
        return SSHTarget(
            host=said.host,
            port=port or said.port or 22,
            user=user or said.user or _username(),
            login=login,
            jumps=tuple(jumps),
        )

    return [
        resolve(entry.host, entry.user or config.user, entry.port or config.port, (entry.host,))
        for entry in config.hosts
    ]


def _passphrase(config: SSH) -> str | None:
    """The passphrase ``config.passphrase_env`` names, or None when it names none.

    Raises:
        ValueError: The variable is not set (or empty), with the fix.
    """
    name = config.passphrase_env
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ValueError(
            f"SSH(passphrase_env={name!r}): the environment variable {name} is not set here. "
            f"Set it to your key's passphrase before starting Python (read -s {name}; "
            f"export {name}), or ssh-add the key to your SSH agent and drop passphrase_env."
        )
    return value


def _config_file(config: SSH) -> str | None:
    """The config file to read: None when there is none (a missing default is fine)."""
    if config.ssh_config is None:
        return None
    path = os.path.expanduser(config.ssh_config)
    if os.path.isfile(path):
        return path
    if config.ssh_config == DEFAULT_SSH_CONFIG:
        return None
    raise FileNotFoundError(
        f"SSH(ssh_config={config.ssh_config!r}): no such file ({path}). Pass the path of "
        "your OpenSSH client config, or ssh_config=None to read none."
    )


def _agent_socket() -> str | None:
    """The running SSH agent's socket (``SSH_AUTH_SOCK``), if there is one."""
    path = os.environ.get("SSH_AUTH_SOCK")
    if not path:
        return None
    try:
        return path if stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None  # a stale variable, as ssh sees it: no agent


_PASSPHRASE_FIX = (
    "ssh-add it to your SSH agent (with SSH_AUTH_SOCK set here), or pass "
    "SSH(passphrase_env='NAME') naming an environment variable that holds its passphrase"
)


def _login(
    config: SSH,
    said: _transport.HostConfig,
    passphrase: str | None,
    keys: dict[str, _transport.SSHKey],
) -> _transport.Login:
    """What to log in with: ``key`` alone, else the agent and the identity files; each
    key file with its certificates (``path-cert.pub``, the config's ``CertificateFile``)."""
    identity_files = said.identity_files

    def offered(paths: list[str]) -> tuple[tuple[Any, ...], list[str]]:
        """The keys of ``paths`` with their certificates, and what they are, in words."""
        entries: list[Any] = []
        words = []
        for path in paths:
            pairs, certificates = _transport.certified(keys[path], path, said.certificate_files)
            entries += pairs
            with_them = f" (with the certificate {', '.join(certificates)})" if certificates else ""
            words.append(f"{path}{with_them}")
        return tuple(entries), words

    def load(path: str) -> _transport.SSHKey:
        if path not in keys:
            try:
                keys[path] = _transport.read_key(path, passphrase)
            except _transport.EncryptedKeyError:
                raise
            except _transport.SSHError as exc:
                fix = (
                    f"check the file, and the passphrase in ${config.passphrase_env}"
                    if passphrase is not None
                    else "check the file, or pass SSH(key=...) the key you log in with"
                )
                raise _transport.SSHError(f"{exc}. sky.SSH logs in with it: {fix}") from exc
        return keys[path]

    if config.key is not None:
        path = os.path.expanduser(config.key)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"SSH(key={config.key!r}): no such file ({path}). Pass the path of the "
                "private key you log in to these hosts with, or leave key unset to use "
                "your SSH agent and ~/.ssh."
            )
        try:
            load(path)
        except _transport.EncryptedKeyError:
            raise ValueError(
                f"SSH(key={config.key!r}): {path} is passphrase-protected and no passphrase "
                f"was given. Pass SSH(passphrase_env='NAME') naming an environment variable "
                "that holds its passphrase, or ssh-add it to your SSH agent and leave key "
                "unset."
            ) from None
        entries, (what,) = offered([path])
        return _transport.Login(keys=entries, tried=f"the key {what}")
    agent = _identity_agent(said.identity_agent)
    named = identity_files or tuple(os.path.expanduser(k) for k in _DEFAULT_KEYS)
    used: list[str] = []
    skipped: list[str] = []
    for path in named:
        if not os.path.isfile(path):
            continue
        try:
            load(path)
        except _transport.EncryptedKeyError:
            skipped.append(path)
        else:
            used.append(path)
    if not used and agent is None:
        if skipped:
            raise ValueError(
                f"sky.SSH(): {skipped[0]} is passphrase-protected, no passphrase was given "
                f"and no SSH agent is running (SSH_AUTH_SOCK is not set). {_PASSPHRASE_FIX}."
            )
        looked = ", ".join(identity_files) if identity_files else ", ".join(_DEFAULT_KEYS)
        raise FileNotFoundError(
            f"sky.SSH(): no private key given, no SSH agent running (SSH_AUTH_SOCK is not "
            f"set) and none of {looked} exists. Pass SSH(key='/path/to/private_key'), start "
            "an agent and ssh-add your key, or create one with ssh-keygen -t ed25519 and add "
            "its .pub to each host's ~/.ssh/authorized_keys."
        )
    entries, words = offered(used)
    only: frozenset[bytes] | None = None
    agent_words = f"the SSH agent's keys ({agent})"
    if said.identities_only and agent is not None:
        only = _identity_public_keys([*used, *skipped], keys)
        agent_words = f"the SSH agent's keys that the identity files name ({agent})"
    tried = ([agent_words] if agent else []) + words
    tried += [f"not {path} (passphrase-protected: {_PASSPHRASE_FIX})" for path in skipped]
    return _transport.Login(keys=entries, agent=agent, agent_only=only, tried=", ".join(tried))


def _identity_agent(said: str | None) -> str | None:
    """The agent's socket that a host's ``IdentityAgent`` names (None: ``SSH_AUTH_SOCK``),
    if an agent runs there; ``none``: no agent."""
    if said is None or said == "SSH_AUTH_SOCK":
        return _agent_socket()
    if said.lower() == "none":
        return None
    path = os.environ.get(said[1:], "") if said.startswith("$") else os.path.expanduser(said)
    try:
        return path if path and stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None  # no agent runs there: the key files may still do


def _identity_public_keys(paths: list[str], keys: dict[str, _transport.SSHKey]) -> frozenset[bytes]:
    """The public keys of the identity files ``paths`` (from the key, or from its ``.pub``
    beside a protected one), as the agent's keys are told apart."""
    found = set()
    for path in paths:
        if path in keys:
            found.add(keys[path].public_data)
            continue
        public = _transport.read_public_key(path + ".pub")
        if public is not None:
            found.add(public)
    return frozenset(found)


def _known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names ``host:port`` in a known_hosts file."""
    return host if port == 22 else f"[{host}]:{port}"


async def verified_host_key(
    host: str,
    port: int,
    *,
    through: tuple[_transport.Jump, ...] = (),
    proxy_command: str | None = None,
) -> str:
    """The host key of ``host:port``, verified, or pinned if the machine is new to us.

    ``~/.ssh/known_hosts`` (what ``ssh`` trusts) is consulted first, then Skyward's own
    ``~/.skyward/known_hosts``; a machine in neither is pinned in the latter on first use.
    A key neither file trusts is never accepted: there is no switch to turn this off.
    ``through``: the jump hosts it is reached through (their keys verified already);
    ``proxy_command``: the command it is reached through.

    Raises:
        HostKeyError: The machine's key is not the trusted one, naming file and line.
    """
    for path in _known_hosts_files():
        known = _transport.known_host_keys(path, host, port)
        if not known:
            continue
        offered = await _transport.fetch_host_key(
            host, port, like=[k for _, k in known], through=through, proxy_command=proxy_command
        )
        if offered is not None and offered in {k for _, k in known}:
            return offered
        lines = ", ".join(str(n) for n, _ in known)
        name = _known_hosts_name(host, port)
        what = (
            offered.split()[0] + " key " + _transport.fingerprint(offered)
            if offered
            else "no key of the types listed there"
        )
        raise HostKeyError(
            f"the host key of {host}:{port} does not match {path} line {lines}: the machine "
            f"offered {what}. Someone may be intercepting the connection; if instead the "
            f"machine was reinstalled and you trust its new key, delete line {lines} of "
            f"{path} (ssh-keygen -R {shlex.quote(name)} -f {path}) and connect again."
        )
    offered = await _transport.fetch_host_key(
        host, port, like=[], through=through, proxy_command=proxy_command
    )
    assert offered is not None
    _pin(host, port, offered)
    return offered


def _known_hosts_files() -> tuple[str, str]:
    return os.path.expanduser(SSH_KNOWN_HOSTS), os.path.expanduser(SKYWARD_KNOWN_HOSTS)


def _pin(host: str, port: int, key: str) -> None:
    """Trust ``key`` for ``host:port`` from now on (Skyward's known_hosts)."""
    path = os.path.expanduser(SKYWARD_KNOWN_HOSTS)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.write(f"{_known_hosts_name(host, port)} {key}\n")


#: How long one request to a cloud's API may take before it counts as failed.
API_TIMEOUT = 30.0


class _KeyedConfig(Protocol):
    """A provider config whose API takes a key: ``sky.RunPod``, ``VastAI``, ``Lambda``,
    ``Hyperstack``."""

    @property
    def api_url(self) -> str: ...

    def resolved_api_key(self) -> str: ...


C = TypeVar("C", bound=_KeyedConfig)


class KeyedAPI(Generic[C]):
    """A cloud's HTTP API, with the key in one header only (``Authorization`` unless the
    subclass names another; never in a URL, a body or a message). A subclass names the
    cloud, its error, how it words a failure and how to fix a refused key."""

    #: The cloud, as messages name it (``"RunPod"``).
    cloud: ClassVar[str]
    #: What a failed request raises.
    error: ClassVar[type[Exception]]
    #: How to fix a refused key, the end of that message.
    key_fix: ClassVar[str]

    def __init__(self, config: C) -> None:
        import httpx

        self.config = config
        self._client = httpx.AsyncClient(
            headers=self.key_headers(config.resolved_api_key()),
            timeout=API_TIMEOUT,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def key_headers(self, key: str) -> dict[str, str]:
        """The headers that carry the key (a bearer token unless the cloud says otherwise)."""
        return {"Authorization": f"Bearer {key}"}

    def describe(self, response: httpx.Response) -> str:
        """The cloud's own words for a failed request (its JSON error, else the body)."""
        return failure_words(response)

    def key_refused(self, response: httpx.Response) -> bool:
        return response.status_code in (401, 403)

    def failure(self, message: str, response: httpx.Response | None = None) -> Exception:
        """The error a failed request raises (``response``: what was answered, if any)."""
        return self.error(message)

    async def send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request; a refused key or no answer is the cloud's error, saying so."""
        import httpx

        try:
            response = await self._client.request(
                method, url, json=json, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise self.failure(f"{self.cloud}'s API at {url} did not answer: {exc}") from exc
        if self.key_refused(response):
            raise self.failure(
                f"{self.cloud} refused the API key {said(response, self.describe)}; {self.key_fix}",
                response,
            )
        return response

    async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        """A request to ``path`` under the config's ``api_url``."""
        return await self.send(method, self.config.api_url.rstrip("/") + path, json=json)


class TokenAPI(abc.ABC):
    """A cloud's HTTP API reached with a bearer token bought from the user's credentials:
    bought before the first request, again ``token_margin`` seconds before it expires, and
    once more when a request is refused with 401 (it expired early). A subclass names the
    cloud and its error, and buys the token (:meth:`buy_token`)."""

    #: The cloud, as messages name it (``"Verda"``).
    cloud: ClassVar[str]
    #: What a failed request raises.
    error: ClassVar[type[Exception]]
    #: A token is bought again this long before it expires.
    token_margin: ClassVar[float]

    def __init__(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(timeout=API_TIMEOUT, follow_redirects=False)
        self._token: str | None = None
        self._expires = 0.0  # trio.current_time() past which the token is bought again
        self._token_lock = trio.Lock()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, as it is; no answer is the cloud's error, saying so."""
        import httpx

        try:
            return await self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self.error(f"{self.cloud}'s API at {url} did not answer: {exc}") from exc

    @abc.abstractmethod
    async def buy_token(self) -> tuple[str, float | None]:
        """A new token and how many seconds it lasts (None: not said); raises the cloud's
        error, saying how to fix the credentials, when they are refused."""

    async def bearer(self, *, renew: bool = False) -> str:
        """A token that is still good (bought now if there is none, it is near its end, or
        ``renew``)."""
        async with self._token_lock:
            if self._token is not None and not renew and trio.current_time() < self._expires:
                return self._token
            token, lasts = await self.buy_token()
            seconds = lasts or 3600.0
            self._token = token
            self._expires = trio.current_time() + max(seconds - self.token_margin, seconds / 2)
            return token

    async def authorized(self, method: str, url: str, *, json: Any = None) -> httpx.Response:
        """A request with a good token; a token refused (401) is bought again once. The
        answer is returned as it is, a second 401 included."""
        for renew in (False, True):
            headers = {"Authorization": f"Bearer {await self.bearer(renew=renew)}"}
            response = await self.send(method, url, json=json, headers=headers)
            if response.status_code != 401:
                break
        return response


def response_json(response: httpx.Response) -> Any:
    """A cloud API's answer as JSON, or None when it is not JSON (a proxy's error page)."""
    try:
        return response.json()
    except ValueError:
        return None


def response_object(response: httpx.Response) -> dict[str, Any]:
    """A cloud API's answer when it is a JSON object, else an empty one."""
    body = response_json(response)
    return body if isinstance(body, dict) else {}


def failure_words(response: httpx.Response, words: str | None = None) -> str:
    """What a failed request said, in at most 500 characters: ``words`` (the cloud's own,
    read from its answer by the caller), else the answer's text, else its status."""
    if words and words.strip():
        return words.strip()[:500]
    return response.text.strip()[:500] or f"HTTP {response.status_code}"


def said(response: httpx.Response, describe: Callable[[httpx.Response], str]) -> str:
    """``(STATUS: WHAT IT SAID)``, to end a sentence about a failed request."""
    return f"({response.status_code}: {describe(response)})"


def poll_delays(most: float = 2.0) -> Iterator[float]:
    """How long to wait between polls of a cloud API or a booting machine: from 0.2 s,
    doubling up to ``most``."""
    delay = 0.2
    while True:
        yield delay
        delay = min(delay * 2, most)


async def first_host_key(host: str, port: int) -> str:
    """The host key sshd presents at ``host:port`` once it answers (the caller's deadline):
    for a machine whose provider publishes none, pinned for that machine only (trust on
    first use, never a known_hosts entry a later machine on the address could reuse)."""
    delays = poll_delays()
    while True:
        try:
            key = await _transport.fetch_host_key(host, port, like=[])
        except _transport.SSHError:
            await trio.sleep(next(delays))  # the machine is still starting sshd
            continue
        assert key is not None  # like=[] accepts any key type
        return key


async def given_host_key(instance_id: str, host: str, port: int, expected: str) -> None:
    """Poll until sshd answers at ``host:port`` (the caller's deadline), and refuse a host
    key other than ``expected``: the one made for the machine and given to it in its
    cloud-init user data, so it is known before the first connection.

    Raises:
        HostKeyError: The machine presented another key, naming both fingerprints.
    """
    delays = poll_delays()
    while True:
        try:
            presented = await _transport.fetch_host_key(host, port, like=[expected])
        except _transport.SSHError:
            await trio.sleep(next(delays))  # still booting
            continue
        if presented is None or presented.split()[:2] != expected.split()[:2]:
            shown = _transport.fingerprint(presented) if presented else "no ed25519 key"
            raise HostKeyError(
                f"instance {instance_id} at {host} presented host key {shown}, not the "
                f"one Skyward gave it ({_transport.fingerprint(expected)}): its image's "
                "cloud-init did not install it, or another machine answers there; the "
                "instance was terminated"
            )
        return


@contextlib.asynccontextmanager
async def ended_on_failure(
    end: Callable[[], Awaitable[None]], errors: type[Exception]
) -> AsyncIterator[None]:
    """Bring a machine up in the block; should it fail (or be cancelled), ``end`` the
    machine before the error goes on: one that never came up must not bill while its
    node is tried again. Shielded, within 30 s; an ``errors`` it raises is dropped (the
    machine is then still listed for the cluster's ``aclose``)."""
    try:
        yield
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(30), contextlib.suppress(errors):
            await end()
        raise


async def remote_workdir(
    host: str, port: int, *, user: str, login: _transport.Login, host_key: str, name: str
) -> str:
    """Log in once to learn the home directory; the node's work directory is
    ``~/.skyward/jobs/<name>`` there.

    Raises:
        RuntimeError: The machine did not say its home, or the worker's socket path there
            would be too long for a unix socket.
    """
    ssh = await _transport.connect(host, port, username=user, login=login, host_key=host_key)
    try:
        rc, out, err = await ssh.run('printf "%s\\n" "$HOME"')
    finally:
        await ssh.aclose()
    home = out.decode(errors="replace").strip()
    if rc != 0 or not home.startswith("/"):
        raise RuntimeError(
            f"{user}@{host}:{port} did not say its home directory (exit status {rc}): "
            f"{err.decode(errors='replace').strip()}"
        )
    workdir = f"{home}/.skyward/jobs/{name}"
    if len(workdir) + len("/worker.sock") > 100:  # AF_UNIX paths are limited to 108 bytes
        raise RuntimeError(
            f"the worker's socket path on {host} would be {workdir}/worker.sock, over "
            "the 107 bytes a unix socket allows; log in as a user with a shorter home"
        )
    return workdir


# Stops the worker (and what it started: it leads its own process group) and removes the
# work directory. Then whatever still runs in that directory goes too: OpenSSH ends a
# command neither when its channel nor when its connection closes, so a bootstrap cut
# short by its timeout would run on.
# It prints a mark only when the directory is gone, so "terminated" is confirmed, never
# assumed. The machine itself is left running: it is the user's.
_CLEANUP = """d={workdir}
if [ -f "$d/worker.ready" ]; then
  pid=$(cat "$d/worker.ready")
  mine() {{ tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q -- "--dir $d"; }}
  if mine; then
    # The worker alone first: it ends its plugins' around_app (whose teardown may run
    # commands in its process group: the MPS daemon's quit) and its executor. That takes
    # it at most about 10 s (stop_app's bound).
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while mine && [ $i -lt 120 ]; do sleep 0.1; i=$((i+1)); done
    if mine; then kill -KILL "$pid" 2>/dev/null || true; fi
    # Then what is left in its process group (a PID in use as a group is not reused). Not
    # kill -0 -- -PID: the worker, exited but not yet reaped, counts there for seconds.
    runs() {{
      for s in /proc/[0-9]*/stat; do
        read -r l < "$s" 2>/dev/null || continue
        set -- ${{l##*) }}  # state ppid pgrp ...
        [ "$3" = "$pid" ] && [ "$1" != Z ] && return 0
      done
      return 1
    }}
    if runs; then
      kill -TERM -- "-$pid" 2>/dev/null
      i=0
      while runs && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  fi
fi
# What a worker started and left, in its process group or not (a task's subprocess, a
# daemon), the worker running or long gone: each carries the worker's directory in its
# environment (SKYWARD_WORKER_DIR, as realpath gives it).
real=$(cd "$d" 2>/dev/null && pwd -P) || real=$d
started() {{
  grep -lzxF "SKYWARD_WORKER_DIR=$real" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3
}}
left=$(started)
if [ -n "$left" ]; then
  kill -TERM $left 2>/dev/null
  i=0
  while [ -n "$(started)" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
  left=$(started)
  if [ -n "$left" ]; then kill -KILL $left 2>/dev/null; fi
fi
# sky.Volume mounts the worker did not get to unmount (it was killed): unmounted now,
# before their directory goes.
{unmount}
# Again until a pass finds none: a process forked after a pass listed /proc (a bootstrap
# cut short starts more) is not in that list, and outlives its parent.
i=0
while [ $i -lt 20 ]; do
  found=0
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/cwd" 2>/dev/null)" in
      "$d"|"$d"/*|"$d (deleted)") kill -KILL "${{p#/proc/}}" 2>/dev/null && found=1 ;;
    esac
  done
  [ $found = 0 ] && break
  i=$((i+1))
done
rm -rf "$d"
[ ! -e "$d" ] && echo {mark}
"""
_GONE = "SKYWARD_CLEANED"


class SSHCluster:
    """``sky.SSH(hosts=...)``: node i is the i-th host; provisioning only selects it.

    Each node gets a work directory ``~/.skyward/jobs/<job>-<node>`` on its host;
    terminating stops the worker and removes that directory, never the machine.
    """

    name = "ssh"
    # Whether your machines reach each other is not known here: the collections store
    # then runs in the client, which every node reaches through its own SSH connection.
    peers_reachable = False

    def __init__(self, config: SSH, *, job_id: str, targets: list[SSHTarget]) -> None:
        self.config = config
        self.job_id = job_id
        self._targets = targets  # one per host, from ssh_targets(config)
        self._live: dict[str, Instance] = {}
        self._serial = 0

    def _target(self, node: int) -> SSHTarget:
        if node >= len(self._targets):
            raise RuntimeError(
                f"sky.SSH has {len(self._targets)} host(s), so there is no node {node}; "
                "add hosts to SSH(hosts=[...]), or ask for fewer nodes"
            )
        return self._targets[node]

    async def alive(self, instance: Instance) -> bool:
        """Your machines have no provider to ask: whether one is still there is for the
        reconnection to find out."""
        return True

    async def _connect(self, instance: Instance) -> _transport.SSHConnection:
        assert instance.login is not None
        return await _transport.connect(
            instance.host,
            instance.port,
            username=instance.username,
            login=instance.login,
            host_key=instance.host_key,
        )

    async def provision(self, node: int) -> Instance:
        """Verify the host's key, log in once to learn its home directory."""
        target = self._target(node)
        host, port, user = target.host, target.port, target.user
        host_key, login = await target.verified()
        workdir = await remote_workdir(
            host,
            port,
            user=user,
            login=login,
            host_key=host_key,
            name=f"{self.job_id}-{node}",
        )
        self._serial += 1
        instance = Instance(
            id=f"ssh-{self.job_id}-{node}-{self._serial}",
            node=node,
            host=host,
            port=port,
            username=user,
            host_key=host_key,
            private_ip=host,
            public_ip=host,
            python=None,
            workdir=workdir,
            login=login,
        )
        self._live[instance.id] = instance
        return instance

    async def terminate(self, instance: Instance) -> None:
        """Stop the worker and remove the work directory; confirm it or raise."""
        # The pool reports a failure here itself; aclose is for what it never knew of.
        self._live.pop(instance.id, None)
        ssh = await self._connect(instance)
        try:
            script = _CLEANUP.format(
                workdir=shlex.quote(instance.workdir), mark=_GONE, unmount=UNMOUNT_SH
            )
            rc, out, err = await ssh.run("bash -s", input=script.encode())
        finally:
            await ssh.aclose()
        if rc != 0 or _GONE.encode() not in out:
            raise RuntimeError(
                f"could not clean up {instance.workdir} on {instance.host}:{instance.port} "
                f"(exit status {rc}): {err.decode(errors='replace').strip()}"
            )

    async def aclose(self) -> None:
        """Clean up after instances handed out and never terminated (a provision that
        finished as the pool was cancelled); raise naming any that could not be."""
        failed: list[str] = []
        for instance in list(self._live.values()):
            with trio.move_on_after(10) as scope:
                try:
                    await self.terminate(instance)
                except (OSError, RuntimeError, _transport.SSHError) as exc:
                    failed.append(f"{instance.id} ({exc})")
            if scope.cancelled_caught:
                failed.append(f"{instance.id} (no answer within 10 s)")
        if failed:
            raise RuntimeError(
                "sky.SSH could not stop Skyward's worker and remove its directory on: "
                + "; ".join(failed)
            )
