"""The supervisor: brings a pool's nodes up, keeps them, and tears everything down.

One task per node index runs its whole life: provision -> SSH -> bootstrap -> worker ->
serve; then it reconnects a dropped link, starts a new worker when one died, or replaces a
lost node. The supervisor also scales elastic pools and, when the pool closes, stops the
workers and terminates every instance (shielded, bounded, loud). It is apart from
``_pool`` because node lifecycles (providers, SSH, bootstrap) are a different concern
from scheduling calls onto the nodes that are up; the pool reaches it only through
``Pool._supervisor``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import shlex
import time
from typing import Any

import attrs
import trio

from . import _collections as collections_ops
from . import _health, _logging, _serial, _transport, _wire, metrics
from ._autoscale import Autoscaler
from ._bootstrap import (
    FAILED_MARK,
    PHASE_MARK,
    READY_MARK,
    Environment,
    env_hash,
    environment_bootstrap,
    pack_includes,
    requirement_name,
    worker_bootstrap,
    worker_command,
)
from ._connection import WorkerConnection
from ._cost import Ledger, dollars
from ._errors import BudgetExceededError, ConnectionLostError, ProvisionError, TeardownError
from ._events import (
    BootstrapProgress,
    ClusterDestroyed,
    ClusterProvisioned,
    ClusterReady,
    ClusterScaled,
    Error,
    Event,
    InstanceAtRisk,
    InstanceBootstrapped,
    InstanceDestroyed,
    InstanceInterrupting,
    InstancePreempted,
    InstanceProvisioned,
    InstanceReplaced,
    Log,
    Metric,
)
from ._info import AcceleratorInfo, InstanceInfo, PeerInfo, to_dict
from ._model import Nodes, Options
from ._plugin import Cluster as PluginCluster
from ._plugin import LaunchCommand, LaunchContext, collective, launch_command, workers_per_node
from ._pool import Pool, _Node
from ._providers import Cluster, Instance
from ._sampler import to_config
from ._source import SkywardPackage, skyward_package
from ._store import LocalClient, Store
from ._storelink import StoreLink
from ._version import PYTHON_VERSION
from ._volumes import Mount, mount_steps

__all__ = ["Supervisor"]

HEAD_PORT = 29500
# A node index is replaced at most this often (Options.max_provision_attempts overrides).
_REPLACEMENTS = 5
# How long a node whose connection dropped gets to come back before it counts as lost
# (Options.ssh_timeout, when smaller, caps it). Long enough for a network blip or a
# restarted router; short enough that calls on a dead node go elsewhere within seconds
# (and a node its provider reports gone is lost at once, without waiting).
RECONNECT_WINDOW = 10.0
# A worker keeps a dropped session this much longer than the client tries to resume it.
_RESUME_MARGIN = 5.0
# Reconnections in a row that may fail to reach the collections store before the node
# counts as lost (each drops the link and tries again).
_STORE_TRIES = 3
# Seconds between two syncs of the client's copy of node 0's store: what changes meanwhile
# comes in one answer.
_REPLICATE_PAUSE = 0.2


def reconnect_window(options: Options) -> float:
    """Seconds the pool tries to reconnect a dropped node before it is lost."""
    return min(RECONNECT_WINDOW, options.ssh_timeout or RECONNECT_WINDOW)


def _timed_out(phase: str, pool: Pool) -> str:
    """Why a start-up phase ran out of time, and which knob gives it more."""
    options = pool.options
    if phase == "provision":
        return (
            f"did not finish within {options.provision_timeout or 300:g} s; "
            "give it longer with Options(provision_timeout=...)"
        )
    if phase == "bootstrap":
        if options.bootstrap_timeout is not None:
            return (
                f"did not finish within Options(bootstrap_timeout="
                f"{options.bootstrap_timeout:g}) seconds; raise it if the node needs longer"
            )
        return (
            f"did not finish within Image(bootstrap_timeout={pool.spec.image.bootstrap_timeout})"
            " seconds; raise it (or Options(bootstrap_timeout=...)) if the node needs longer"
        )
    return "timed out"


def _bootstrap_failure(status: int, stderr: bytes) -> str:
    """Which phase of the bootstrap failed, and the last lines it wrote."""
    lines = stderr.decode(errors="replace").splitlines()
    failed = [line[len(FAILED_MARK) :] for line in lines if line.startswith(FAILED_MARK)]
    tail = [line for line in lines if not line.startswith(FAILED_MARK)][-15:]
    where = f" in its {failed[-1]!r} phase" if failed else ""
    output = "\n".join(tail).strip() or "(no output)"
    return f"the bootstrap script failed{where} (exit status {status}); its last lines:\n{output}"


def _log_output(log: _logging.PoolLog, node: int, what: str, output: bytes) -> None:
    if log.wants(logging.DEBUG):
        for line in output.decode(errors="replace").splitlines():
            log.debug("node %d %s: %s", node, what, line)


_WORKER_LOG_TAIL = 256 * 1024


async def _fetch_worker_log(
    log: _logging.PoolLog, instance: Instance, ssh: _transport.SSHConnection
) -> None:
    """Copy the end of a node's worker log into the log file, before its node goes."""
    if not log.wants(logging.INFO):
        return
    command = f"tail -c {_WORKER_LOG_TAIL} {shlex.quote(instance.workdir)}/worker.log"
    with trio.move_on_after(2):
        try:
            rc, out, _ = await ssh.run(command)
        except Exception as exc:  # the node may be gone already: its log with it
            log.debug("node %d: could not read worker.log (%s)", instance.node, exc)
            return
        if rc == 0 and out:
            log.info(
                "node %d worker.log (%s):\n%s",
                instance.node,
                instance.id,
                out.decode(errors="replace").rstrip(),
            )


@attrs.frozen
class NodePluginPlan:
    """What the pool's plugins ask of each node.

    Attributes:
        ops: Shell commands the bootstrap runs after the environment (phase ``plugins``).
        hooks: The node hooks, packed for the worker's config (``_pluginrun.pack``).
    """

    ops: tuple[str, ...] = ()
    hooks: str | None = None


@attrs.define
class _Ahead:
    """A node's replacement, launched at the node's interruption notice (or its rebalance
    recommendation)."""

    done: trio.Event = attrs.Factory(trio.Event)  # set once launched, or failed
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    instance: Instance | None = None  # once up, until taken up or retired


class Supervisor:
    """Brings nodes up, keeps them, and tears everything down."""

    def __init__(
        self,
        pool: Pool,
        cluster: Cluster,
        client_key: _transport.SSHKey,
        probe: _serial.Payload | None,
        secret: str,
        plugins: NodePluginPlan = NodePluginPlan(),
        mounts: tuple[Mount, ...] = (),
    ) -> None:
        self.pool = pool
        self.plugins = plugins
        self.mounts = mounts  # spec.volumes, keys resolved: mounted by each bootstrap
        self.cluster = cluster
        # The pool's own key (installed on the nodes by their provider): no agent, ever.
        self._pool_login = _transport.Login(keys=(client_key,))
        self.probe = probe  # Options.health_checker's probe, pickled
        self.secret = secret  # proves to each worker that the client is ours
        self.instances: dict[int, Instance] = {}
        self.failures: dict[int, BaseException] = {}
        self.connections: dict[int, _transport.SSHConnection] = {}
        self.replacements: dict[int, int] = {}
        self.restarts: dict[int, int] = {}  # workers started again in place, per index
        self.attempts: dict[int, int] = {}  # failed start attempts per node index
        self.unconfirmed: list[str] = []  # lost instances not confirmed terminated
        self._nursery: trio.Nursery | None = None
        self._provisioned = trio.Event()
        self.ledger = Ledger()  # what the instances cost; shown when the pool closes
        self._shut: trio.Event | None = None  # set once shutdown() has run to its end
        self._teardown_error: TeardownError | None = None
        self._lost: dict[int, str] = {}  # index -> the lost instance a new one replaces
        self._includes: bytes | None = None  # Image.includes, packed
        # The collections store runs on node 0 when nodes reach each other, else here;
        # a pool opened with Options(cluster=False) has none (its nodes run independently).
        self.no_cluster = pool.options.cluster is False
        self.store = None if cluster.peers_reachable or self.no_cluster else Store(secret.encode())
        pool._store.off = self.no_cluster
        self.store_on_node_0 = self.store is None and not self.no_cluster
        self._skyward: SkywardPackage | None = None  # what remote nodes install Skyward from
        self._initial = range(pool.nodes.desired)
        self._running: set[int] = set()  # indices with a live _keep task
        self._draining: dict[int, _Node] = {}  # scaled down, finishing their calls
        self._warned: set[str] = set()  # instances whose interruption notice was emitted
        self._at_risk_seen: set[str] = set()  # ... and whose rebalance recommendation was
        # Replacements launched at their node's interruption notice, by index: taken up
        # when the node is lost (_provision), retired if it never is.
        self._ahead: dict[int, _Ahead] = {}
        options = pool.options
        self.autoscaler = Autoscaler(
            pool.nodes.desired,
            pool.nodes.ceiling,
            cooldown=options.autoscale_cooldown,
            idle_timeout=options.autoscale_idle_timeout,
        )

    async def start(self, nursery: trio.Nursery) -> None:
        pool = self.pool
        self._nursery = nursery
        pool._supervisor = self
        pool._work = await nursery.start(_work_nursery)
        await nursery.start(pool._deadlines.watch)
        if self.store is not None:
            local = LocalClient(self.store)
            await nursery.start(local.run)
            pool._store.attach(local, None)
        desired = pool.nodes.desired
        needed = pool.nodes.ready_at
        for i in self._initial:
            self._spawn(i)
        nursery.start_soon(self._autoscale)
        if pool.options.max_cost is not None:
            nursery.start_soon(self._watch_cost, pool.options.max_cost)
        while len(pool._ready) < needed:
            if pool._stopped is not None:  # Options.max_cost reached while it started
                raise pool._stopped
            if len(self.failures) > desired - needed:  # `needed` nodes can no longer come up
                raise self.failures[min(self.failures)]
            await pool._changed.wait()
        pool._events.emit(ClusterReady(job_id=pool.job_id, nodes=len(pool._ready)))

    def _check_provisioned(self) -> None:
        # Every worker learns all peers' addresses at bootstrap, so the first bootstraps
        # wait until each first node has an instance, has failed for good, or left.
        wanted = self.pool._wanted
        if self._provisioned.is_set():
            return
        if all(k in self.instances or k in self.failures or k not in wanted for k in self._initial):
            self._provisioned.set()
            self._emit(ClusterProvisioned, instances=len(self.instances))

    def _spawn(self, i: int) -> None:
        assert self._nursery is not None
        self._running.add(i)
        self._nursery.start_soon(self._keep, i)

    async def _keep(self, i: int) -> None:
        """Node ``i``'s whole life: up, serving, replaced when lost, until it is not wanted."""
        try:
            while await self._node(i):
                pass
        finally:
            self._running.discard(i)
            # The node left for good: its replacement launched ahead is not needed. While
            # the pool closes, shutdown takes it over instead (ends it, says so and counts
            # a failure to): ended here, it could end after the pool's last event.
            ahead = None if self.pool._closing else self._ahead.pop(i, None)
            if ahead is not None:
                with trio.CancelScope(shield=True):
                    await self._drop_ahead(ahead)

    async def _node(self, i: int) -> bool:
        """Bring node ``i`` up and serve it until it is lost or leaves; True: run it again."""
        pool = self.pool
        options = pool.options
        phase = "provision"
        instance: Instance | None = None
        ssh: _transport.SSHConnection | None = None
        began = trio.current_time()
        try:
            with trio.fail_after(options.provision_timeout or 300):
                instance, ahead = await self._provision(i)
            if pool._closing:  # the pool stopped (Options.max_cost) while it started
                with trio.CancelScope(shield=True):  # bounded by shutdown_timeout
                    await self._retire(instance, None)
                return False
            self.instances[i] = instance
            if not ahead:  # one launched ahead was announced then
                self._emit(
                    InstanceProvisioned,
                    node=i,
                    instance_id=instance.id,
                    hourly_price=instance.hourly_price,
                )
            self._check_provisioned()
            await self._provisioned.wait()
            phase = "ssh"
            self._emit(BootstrapProgress, node=i, instance_id=instance.id, phase=phase)
            ssh = await self._connect(instance)
            self.connections[i] = ssh
            conn = await self._start_worker(instance, ssh)
        except Exception as exc:
            if not isinstance(exc, ProvisionError):
                too_slow = isinstance(exc, trio.TooSlowError)
                detail = _timed_out(phase, pool) if too_slow else str(exc)
                exc = ProvisionError(
                    f"node {i} failed during {phase}: {detail}", node=i, phase=phase
                )
            return await self._failed(i, exc, instance, ssh)
        if i not in pool._wanted:  # scaled down while it was coming up
            with contextlib.suppress(ConnectionLostError):
                conn.shutdown()
            await self._leave(i, instance, ssh)
            return False
        capacity = pool.worker_config.concurrency + pool.worker_config.buffer
        node = _Node(i, instance, ssh, conn, capacity)
        pool._ready[i] = node
        self._emit(
            InstanceBootstrapped,
            node=i,
            instance_id=instance.id,
            seconds=trio.current_time() - began,
        )
        lost = self._lost.pop(i, None)
        if lost is not None:
            self._emit(InstanceReplaced, node=i, old_instance_id=lost, instance_id=instance.id)
        if conn.notice is not None:  # it came while the worker's session opened
            self._noticed(node, *conn.notice)
        pool._notify()
        node = await self._serve(node)
        if i == 0 and self.store_on_node_0:
            pool._store.detach("node 0 was lost")  # its replacement runs a new store
        # The node is lost, closed by the pool, or drained after a scale-down. Only a lost
        # node is replaced (its calls were sent again elsewhere: Inflight._requeue).
        pool._ready.pop(i, None)
        self._draining.pop(i, None)
        if pool._closing:
            return False
        if i not in pool._wanted:
            await self._leave(i, instance, node.ssh)
            return False
        reason = node.conn.down_reason or "the link closed"
        return await self._replace(i, instance, node.ssh, reason)

    async def _provision(self, i: int) -> tuple[Instance, bool]:
        """An instance for node ``i``, and whether it was launched ahead: the one launched
        at its predecessor's interruption notice when that came up, else a new one. Its
        cost counts from now (or from when it was launched ahead)."""
        ahead = self._ahead.get(i)
        if ahead is not None:
            await ahead.done.wait()
            if self._ahead.pop(i, None) is not ahead:
                # The pool is closing: its shutdown took the replacement over and ends it;
                # this task is cancelled next.
                await trio.sleep_forever()
            if ahead.instance is not None:
                return ahead.instance, True
        instance = await self.cluster.provision(i)
        self.ledger.start(instance.id, instance.hourly_price, trio.current_time())
        return instance, False

    async def _launch_ahead(self, i: int, ahead: _Ahead) -> None:
        """Launch node ``i``'s replacement now, while the node's reclaimed machine still
        serves: the replacement is up when the node is lost, instead of only starting then.
        It joins the pool (bootstrap, worker) once the node is lost (``_provision``); if
        launching it fails, the replacement is launched then as usual."""
        try:
            with ahead.scope:
                with trio.fail_after(self.pool.options.provision_timeout or 300):
                    instance = await self.cluster.provision(i)
                self.ledger.start(instance.id, instance.hourly_price, trio.current_time())
                ahead.instance = instance
                self._emit(
                    InstanceProvisioned,
                    node=i,
                    instance_id=instance.id,
                    hourly_price=instance.hourly_price,
                    ahead=True,
                )
                if self.pool._closing or self._ahead.get(i) is not ahead:  # not wanted now
                    ahead.instance = None
                    with trio.CancelScope(shield=True):
                        await self._retire(instance, None)
                else:
                    await self._prepare_ahead(instance)
        except Exception as exc:
            self._emit(
                Error,
                message=f"node {i}'s replacement could not be launched ahead of its "
                f"machine's reclaim ({exc}); it is launched when the node is lost",
                node=i,
            )
        finally:
            ahead.done.set()

    async def _prepare_ahead(self, instance: Instance) -> None:
        """Build the image's environment on a machine launched ahead, so that taking the
        node over only starts its worker (its bootstrap finds the environment built). A
        failure here is not the node's: the bootstrap at take-over builds the environment
        again, and fails the node if it must."""
        pool, i = self.pool, instance.node
        try:
            environment = await self._environment(instance)
            if environment is None:
                return
            script = environment_bootstrap(
                workdir=instance.workdir,
                python=instance.python or "python3",
                environment=environment,
            )
            ssh = await self._connect_once(instance)
            try:
                with trio.fail_after(
                    pool.options.bootstrap_timeout or pool.spec.image.bootstrap_timeout
                ):
                    rc, out, err = await ssh.run("bash -s", input=script.encode())
            finally:
                with trio.CancelScope(shield=True):
                    await ssh.aclose()
            _log_output(pool._log, i, "environment, built ahead", out + err)
            if rc != 0 or READY_MARK.encode() not in out:
                raise RuntimeError(_bootstrap_failure(rc, err))
        except Exception as exc:
            if pool._closing:  # its machine is being terminated: nothing to say
                return
            self._emit(
                Error,
                message=f"node {i}'s replacement {instance.id} did not build its environment "
                f"ahead ({exc}); it builds it when it takes the node over",
                node=i,
            )

    async def _connect_once(self, instance: Instance) -> _transport.SSHConnection:
        """One connection attempt to a machine that is up, made whole even if the pool
        closes meanwhile: an attempt cancelled half-way would leave its socket open. It
        cannot hold the close up long: it is bounded, and a machine being terminated
        refuses it at once."""
        with trio.CancelScope(shield=True), trio.fail_after(30):
            ssh = await _transport.connect(
                instance.host,
                instance.port,
                username=instance.username,
                login=self._login_for(instance),
                host_key=instance.host_key,
            )
        return ssh

    async def _drop_ahead(self, ahead: _Ahead) -> None:
        """Stop a replacement launched ahead that no node takes up, and end its machine."""
        ahead.scope.cancel()
        await ahead.done.wait()
        instance, ahead.instance = ahead.instance, None
        if instance is not None:
            await self._retire(instance, None)

    async def _serve(self, node: _Node) -> _Node:
        """Serve a ready node through dropped links, until its session is over for good.

        When the link goes down the node may still be there: reconnect and resume (its
        calls wait, their results are replayed). If the SSH server answers but the worker
        is gone, a new worker starts on the same instance. Returns the node as it ended
        (a restart makes a new one), its connection lost.
        """
        pool = self.pool
        store_failures = 0
        while True:
            conn = node.conn
            async with trio.open_nursery() as watchers:  # what watches the link ends with it
                if self.probe is not None:
                    watchers.start_soon(self._watch_health, node, self.probe)
                watchers.start_soon(self._retire_reclaimed, node)
                if pool.spec.image.metrics is not None:
                    conn.stream_metrics(self._on_metrics)  # a ready node: no earlier
                await conn.serve()
                watchers.cancel_scope.cancel(reason=f"node {node.index}'s link went down")
            if pool._closing or conn.closed.is_set() or node.index not in pool._wanted:
                if not conn.closed.is_set():
                    conn.lose("the pool closed" if pool._closing else "the node left the pool")
                return node
            if node.index == 0 and self.store_on_node_0:
                # The client's link to the store went with the connection: new operations
                # wait for the link the reconnection (or a new node 0) brings.
                pool._store.detach(f"node 0's connection dropped ({conn.down_reason})")
            why_lost, ssh_up = await self._reconnect(node)
            if why_lost is None:
                try:
                    # The store's links through the old SSH connection went with it.
                    await self._reach_store(node.index, node.instance, node.ssh, new=False)
                except (_transport.SSHError, ConnectionLostError, trio.TooSlowError) as exc:
                    # Dropped again, or the pool closing: round again, where either is
                    # seen. A link that stays up but cannot reach the store is dropped, to
                    # try anew, a few times before the node is given up.
                    store_failures += 1
                    why = f"the collections store not reached after reconnecting: {exc}"
                    if store_failures >= _STORE_TRIES and not pool._closing:
                        conn.lose(why)
                        return node
                    pool._log.debug("node %d: %s", node.index, why)
                    node.ssh.break_connection()
                    continue
                store_failures = 0
                pool._notify()  # its free slots count again
                continue
            if ssh_up is not None:
                restarted = await self._restart_worker(node, ssh_up, why_lost)
                if restarted is not None:
                    node = restarted
                    continue
            conn.lose(why_lost)
            return node

    async def _start_worker(
        self, instance: Instance, ssh: _transport.SSHConnection
    ) -> WorkerConnection:
        """Bootstrap the worker over ``ssh`` (one already there is stopped first) and
        open a session with it."""
        pool = self.pool
        options = pool.options
        i = instance.node
        phase = "bootstrap"
        self._emit(BootstrapProgress, node=i, instance_id=instance.id, phase=phase)
        try:
            info = self._instance_info(instance)
            config = self._worker_config(instance, info)
            launch = self._launch_command(instance, info)
            environment = await self._environment(instance)
            if environment is not None and environment.includes:
                config["sys_path"].insert(0, f"{instance.workdir}/includes")
            script = worker_bootstrap(
                workdir=instance.workdir,
                python=instance.python or "python3",  # None: the environment finds one
                secret=self.secret,
                config=config,
                start_timeout=30,
                environment=environment,
                plugin_ops=self.plugins.ops,
                volumes=mount_steps(self.mounts),
                launch=launch,
            )

            def on_line(line: bytes) -> None:
                if line.startswith(PHASE_MARK.encode()):
                    name = line[len(PHASE_MARK) :].decode().strip()
                    self._emit(BootstrapProgress, node=i, instance_id=instance.id, phase=name)

            with trio.fail_after(options.bootstrap_timeout or pool.spec.image.bootstrap_timeout):
                rc, out, err = await ssh.run("bash -s", input=script.encode(), on_line=on_line)
            _log_output(pool._log, i, "bootstrap", out + err)
            if rc != 0 or READY_MARK.encode() not in out:
                raise RuntimeError(_bootstrap_failure(rc, err))
            phase = "worker"
            self._emit(BootstrapProgress, node=i, instance_id=instance.id, phase=phase)
            conn = WorkerConnection(i, ssh, f"{instance.workdir}/worker.sock")
            conn.on_output = self._on_output
            conn.on_notice = functools.partial(self._on_notice, i, conn)
            with trio.fail_after(30):
                await conn.open(self.secret)
            await self._reach_store(i, instance, ssh, new=True)
        except Exception as exc:
            if isinstance(exc, ProvisionError):
                raise
            too_slow = isinstance(exc, trio.TooSlowError)
            detail = _timed_out(phase, pool) if too_slow else str(exc)
            raise ProvisionError(
                f"node {i} failed during {phase}: {detail}", node=i, phase=phase
            ) from exc
        return conn

    async def _restart_worker(
        self, node: _Node, ssh: _transport.SSHConnection, why: str
    ) -> _Node | None:
        """Start a new worker on a node whose SSH server answers but whose worker is gone.

        The calls it had are sent again (Inflight._requeue: they may have run, the worker
        died with them); the node keeps its index and instance. Returns the node with
        its new worker, or None (``ssh`` closed) when that fails or happened too often.
        """
        pool = self.pool
        i = node.index
        self.restarts[i] = self.restarts.get(i, 0) + 1
        limit = pool.options.max_provision_attempts or _REPLACEMENTS
        node.conn.lose(why)
        if self.restarts[i] > limit:
            message = f"node {i}'s worker is gone ({why}); restarted {limit} times already"
            self._emit(Error, message=message, node=i)
            await ssh.aclose()
            return None
        self._emit(Error, message=f"node {i}'s worker is gone ({why}); starting a new one", node=i)
        try:
            conn = await self._start_worker(node.instance, ssh)
        except BaseException as exc:
            await ssh.aclose()
            if not isinstance(exc, ProvisionError):
                raise
            self._emit(Error, message=str(exc), node=i)
            return None
        await node.ssh.aclose()
        self.connections[i] = ssh
        restarted = _Node(i, node.instance, ssh, conn, node.capacity)
        if node.reclaimed.is_set():  # its machine still goes: the new worker is drained too
            restarted.reclaimed.set()
        pool._ready[i] = restarted
        if conn.notice is not None:
            self._noticed(restarted, *conn.notice)
        pool._notify()
        return restarted

    async def _watch_health(self, node: _Node, probe: _serial.Payload) -> None:
        """Probe the node; when it fails too often, end its session with why, so it is lost
        like any other (its calls are sent again elsewhere and it is replaced)."""
        pool = self.pool
        checker = pool.options.health_checker
        assert checker is not None
        try:
            reason = await _health.watch(
                checker, functools.partial(node.conn.probe, probe), lambda: pool._closing
            )
        except ConnectionLostError:
            return  # the link went down: _serve reconnects (and watches again) or loses it
        if reason is not None:
            node.conn.close(reason)

    def _on_notice(self, i: int, conn: WorkerConnection) -> None:
        """Node ``i``'s worker passed on its provider's interruption notice (``conn.notice``).

        A node that is not serving on ``conn`` yet is drained when it is (``_node``).
        """
        node = self.pool._ready.get(i)
        if node is not None and node.conn is conn and conn.notice is not None:
            self._noticed(node, *conn.notice)

    def _noticed(self, node: _Node, action: str, at: float) -> None:
        """``node``'s worker passed on a notice: an interruption's, or a recommendation."""
        if action == _wire.REBALANCE:
            self._at_risk(node, at)
        else:
            self._reclaim(node, action, at)

    def _reclaim(self, node: _Node, action: str, at: float) -> None:
        """The provider reclaims ``node``'s machine at ``at``: drain it (no call starts
        there any more; those in flight go on), and say so once per instance.

        Its replacement's machine is launched now (``_launch_ahead``), but joins the pool
        only once the node is lost: a node index has one worker at a time (its address,
        its worker's config, the peers' list). The node is retired once idle
        (``_retire_reclaimed``), without waiting for the machine to go.
        """
        if node.instance.id not in self._warned:
            self._warned.add(node.instance.id)
            self._emit(
                InstanceInterrupting,
                node=node.index,
                instance_id=node.instance.id,
                action=action,
                at=at,
            )
        self._withdraw(node)

    def _withdraw(self, node: _Node) -> None:
        """No call starts on ``node`` any more (those in flight go on); it is retired once
        idle (``_retire_reclaimed``) and replaced by a machine launched now."""
        if node.reclaimed.is_set():
            return
        node.reclaimed.set()
        self.pool._notify()  # nothing new goes there; waiters look again
        if node.index not in self._ahead and not self.pool._closing:
            assert self._nursery is not None
            ahead = self._ahead[node.index] = _Ahead()
            self._nursery.start_soon(self._launch_ahead, node.index, ahead)

    def _at_risk(self, node: _Node, at: float) -> None:
        """EC2 recommends replacing ``node``'s spot instance (at elevated risk of
        interruption): launch its replacement and build its environment now, and drain the
        node once that is done, so it is handed over with no time short of a node. A
        collective pool's node (its group cannot take a newcomer) and node 0 holding the
        collections store (its store would be lost) are left as they are."""
        instance = node.instance
        if instance.id in self._at_risk_seen or node.reclaimed.is_set():
            return
        self._at_risk_seen.add(instance.id)
        pool = self.pool
        replaced = (
            collective(pool.spec) is None
            and not (node.index == 0 and self.store_on_node_0)
            and not pool._closing
        )
        self._emit(
            InstanceAtRisk, node=node.index, instance_id=instance.id, at=at, replaced=replaced
        )
        if not replaced:
            return
        assert self._nursery is not None
        ahead = self._ahead.get(node.index)
        if ahead is None:
            ahead = self._ahead[node.index] = _Ahead()
            self._nursery.start_soon(self._launch_ahead, node.index, ahead)
        self._nursery.start_soon(self._hand_over, node, ahead)

    async def _hand_over(self, node: _Node, ahead: _Ahead) -> None:
        """Drain ``node`` once its replacement launched ahead is ready (machine up,
        environment built); if it could not be launched, the node serves on (and a later
        interruption notice launches one again)."""
        await ahead.done.wait()
        if ahead.instance is None:
            if self._ahead.get(node.index) is ahead:
                del self._ahead[node.index]
            return
        current = self.pool._ready.get(node.index)  # a worker restart makes a new _Node
        if current is not None and current.instance.id == node.instance.id:
            self._withdraw(current)

    async def _retire_reclaimed(self, node: _Node) -> None:
        """Once a reclaimed node is idle, end its session: it is lost now rather than when
        its machine goes, so its replacement starts sooner (and its calls can go nowhere
        else meanwhile). Node 0 holding the pool's collections store serves on until its
        machine goes: functions on other nodes may still be using the store."""
        await node.reclaimed.wait()
        if node.index == 0 and self.store_on_node_0:
            return
        await node.until_idle()
        if self.pool._closing or node.conn.closed.is_set():
            return
        notice = node.conn.notice
        if notice is not None and notice[0] == _wire.REBALANCE:
            node.conn.close(
                f"{self.cluster.name} recommended replacing spot instance {node.instance.id} "
                "(a rebalance recommendation); handed over to its replacement once its calls "
                "were done"
            )
            return
        when = ""
        if notice is not None:
            at = time.strftime("%H:%M:%S UTC", time.gmtime(notice[1]))
            when = f" at {at} ({notice[0]})"
        node.conn.close(
            f"{self.cluster.name} reclaims instance {node.instance.id}{when}; retired once "
            "its calls were done"
        )

    async def _failed(
        self,
        i: int,
        error: ProvisionError,
        instance: Instance | None,
        ssh: _transport.SSHConnection | None,
    ) -> bool:
        """Node ``i`` could not be brought up: True to try again, or give it up for good."""
        pool = self.pool
        self.connections.pop(i, None)
        if instance is not None:
            self.instances.pop(i, None)
            await self._retire(instance, ssh)  # a half-made node must not keep billing
        if i not in pool._wanted:  # scaled down meanwhile: nothing to retry
            self._check_provisioned()
            return False
        self.attempts[i] = self.attempts.get(i, 0) + 1
        limit = pool.options.max_provision_attempts or 1
        if self.attempts[i] < limit and not pool._closing:
            self._emit(Error, message=f"{error}; trying again ({self.attempts[i]}/{limit})", node=i)
            await trio.sleep(pool.options.provision_retry_delay or 0)
            return i in pool._wanted and not pool._closing
        self.failures[i] = error
        needed = pool.nodes.ready_at
        if pool._ready or len(self.failures) <= pool.nodes.desired - needed:
            # The pool is in use, or can come up without this node: say so, not raise.
            self._emit(Error, message=f"{error}; carrying on without node {i}", node=i)
        else:
            self._emit(Error, message=str(error), node=i)
        pool._gone.add(i)
        self._check_provisioned()
        pool._notify()
        return False

    async def _replace(
        self, i: int, lost: Instance, ssh: _transport.SSHConnection, reason: str
    ) -> bool:
        """Node ``i`` was lost: True to bring up a replacement with the same index."""
        pool = self.pool
        self._emit(InstancePreempted, node=i, instance_id=lost.id, reason=reason)
        self.replacements[i] = self.replacements.get(i, 0) + 1
        limit = pool.options.max_provision_attempts or _REPLACEMENTS
        if self.replacements[i] > limit:
            pool._gone.add(i)
            pool._notify()
            self._emit(Error, message=f"not replacing node {i}: lost {limit} times", node=i)
            await self._retire(lost, ssh)
            return False
        pool._notify()  # calls pinned elsewhere may proceed; waiters re-check
        await self._retire(lost, ssh)
        self._lost[i] = lost.id
        return True

    async def _leave(
        self, i: int, instance: Instance, ssh: _transport.SSHConnection | None
    ) -> None:
        """Node ``i`` left by a scale-down: stop billing for it."""
        self.instances.pop(i, None)
        self.connections.pop(i, None)
        await self._retire(instance, ssh)

    # -- elastic pools ---------------------------------------------------------------------

    def resize(self, nodes: Nodes) -> None:
        pool = self.pool
        pool.nodes = nodes
        self.autoscaler.bounds(nodes.desired, nodes.ceiling, trio.current_time())
        self._scale_to(nodes.desired, "resize()")

    async def _autoscale(self) -> None:
        pool = self.pool
        while not pool._closing:
            await trio.sleep(pool.options.reconcile_tick_interval)
            if self.autoscaler.floor == self.autoscaler.ceiling:
                continue  # a fixed pool
            load = pool._load()
            target = self.autoscaler.decide(trio.current_time(), load)
            if target > load.target:
                self._scale_to(target, f"{load.queued} call(s) waiting for a slot")
            elif target < load.target:
                idle = pool.options.autoscale_idle_timeout
                self._scale_to(target, f"node(s) idle for {idle:g} s")

    def _scale_to(self, count: int, why: str) -> None:
        pool = self.pool
        wanted = pool._wanted
        if count == len(wanted):
            return
        self._emit(ClusterScaled, previous=len(wanted), target=count, reason=why)
        if count > len(wanted):
            free = (k for k in itertools.count() if k not in wanted and k not in self._running)
            for i in itertools.islice(free, count - len(wanted)):
                wanted.add(i)
                self._spawn(i)
            return
        assert self._nursery is not None
        for i in self._victims(len(wanted) - count):
            wanted.discard(i)
            pool._gone.discard(i)
            node = pool._ready.pop(i, None)
            if node is not None:
                self._draining[i] = node
                self._nursery.start_soon(self._drain, node)
        self._check_provisioned()
        pool._notify()  # calls pinned to a node that left fail with PoolClosedError

    def _victims(self, count: int) -> list[int]:
        """Which nodes leave first: lost ones, then starting ones, then the longest idle."""
        pool = self.pool

        def rank(i: int) -> tuple[Any, ...]:
            node = pool._ready.get(i)
            state = 0 if i in pool._gone else 1 if node is None else 2 if not node.inflight else 3
            busy = (node.inflight, node.last_used) if node is not None else (0, 0.0)
            return (i == 0, state, *busy, -i)  # the head (node 0) stays while it can

        return sorted(pool._wanted, key=rank)[:count]

    async def _drain(self, node: _Node) -> None:
        """Let a node that left finish its calls, then stop its worker."""
        await node.until_idle()
        with contextlib.suppress(ConnectionLostError):
            node.conn.shutdown()

    async def _retire(self, instance: Instance, ssh: _transport.SSHConnection | None) -> None:
        """Close and terminate a lost node's instance, so it does not keep billing."""
        if ssh is not None:
            await _fetch_worker_log(self.pool._log, instance, ssh)
            await ssh.aclose()
        with trio.move_on_after(self.pool.options.shutdown_timeout) as scope:
            try:
                await self.cluster.terminate(instance)
            except Exception as exc:  # reported at teardown, as TeardownError
                self.unconfirmed.append(f"{instance.id} ({exc})")
            else:
                self._destroyed(instance)
        if scope.cancelled_caught:
            self.unconfirmed.append(f"{instance.id} (terminate timed out)")

    async def _reconnect(self, node: _Node) -> tuple[str | None, _transport.SSHConnection | None]:
        """Bring a node's dropped worker link back.

        Returns ``(None, None)`` once it is back; ``(why, ssh)`` when the SSH server
        answers (on ``ssh``, left open) but the worker no longer has the session; and
        ``(why, None)`` when the node is lost. Tries with backoff for the reconnect
        window. The provider is asked first each time: an instance it reports gone
        (preempted, terminated) is lost at once.
        """
        conn = node.conn
        instance = node.instance
        window = reconnect_window(self.pool.options)
        why = conn.down_reason or "the link closed"
        delay = 0.05
        with trio.move_on_after(window):
            while True:
                if not await self.cluster.alive(instance):
                    return f"{why}; {self.cluster.name} reports instance {instance.id} gone", None
                try:
                    ssh = await _transport.connect(
                        instance.host,
                        instance.port,
                        username=instance.username,
                        login=self._login_for(instance),
                        host_key=instance.host_key,
                    )
                except _transport.SSHError as exc:
                    why = f"{conn.down_reason}; reconnecting: {exc}"
                else:
                    try:
                        await conn.resume(ssh)
                    except ConnectionLostError as exc:
                        return f"{conn.down_reason}; {exc}", ssh
                    except ProvisionError as exc:
                        await ssh.aclose()  # dropped again while resuming: try again
                        why = f"{conn.down_reason}; resuming: {exc}"
                    except BaseException:
                        await ssh.aclose()
                        raise
                    else:
                        old, node.ssh = node.ssh, ssh
                        self.connections[node.index] = ssh
                        await old.aclose()
                        return None, None
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
        return f"{why}; not reconnected within {window:g} s", None

    def _login_for(self, instance: Instance) -> _transport.Login:
        """How the client logs in: with the pool's own key, or as the user (``sky.SSH``)."""
        return instance.login or self._pool_login

    async def _connect(self, instance: Instance) -> _transport.SSHConnection:
        options = self.pool.options
        limit = options.ssh_timeout or 60
        delay = options.ssh_retry_interval or 0.2
        last: Exception | None = None
        login = self._login_for(instance)
        with trio.move_on_after(limit):
            while True:
                try:
                    return await _transport.connect(
                        instance.host,
                        instance.port,
                        username=instance.username,
                        login=login,
                        host_key=instance.host_key,
                    )
                except _transport.SSHError as exc:
                    last = exc
                    self.pool._log.debug(
                        "node %d: no SSH connection to %s:%d yet (%s); retrying in %.1f s",
                        instance.node,
                        instance.host,
                        instance.port,
                        exc,
                        delay,
                    )
                await trio.sleep(delay)
                delay = min(delay * 2, 5)
        raise _transport.SSHError(
            f"no SSH connection to {instance.host}:{instance.port} within {limit:g} s"
            + (f"; last error: {last}" if last else "")
        )

    async def _environment(self, instance: Instance) -> Environment | None:
        """What the image asks of this node beyond a worker, or None for nothing.

        A remote machine (``instance.python`` None) always gets one: it needs a Python of
        this client's version and Skyward itself, per ``Image.skyward_source``.
        """
        image = self.pool.spec.image
        remote = instance.python is None
        if not (remote or image.pip or image.includes or image.shell_vars):
            return None
        if self._includes is None:  # packed once per pool, in a thread: it reads files
            self._includes = await trio.to_thread.run_sync(
                pack_includes, image.includes, image.excludes
            )
        package = SkywardPackage()
        if remote:
            if self._skyward is None:  # may build a wheel: once per pool, in a thread
                self._skyward = await trio.to_thread.run_sync(skyward_package, image.skyward_source)
            package = self._skyward
        indexes = tuple((index.url, index.packages) for index in image.pip_indexes)
        base = instance.sys_path
        pip = (*image.pip, *package.requirements)
        python = PYTHON_VERSION if instance.python is None else instance.python
        apt = image.apt
        if self.mounts and "s3fs" not in apt:
            apt = (*apt, "s3fs")  # the volumes phase mounts with it
        identity = [*pip, *base, *([package.key] if remote else [])]
        return Environment(
            pip=pip,
            indexes=tuple((url, tuple(requirement_name(p) for p in pkgs)) for url, pkgs in indexes),
            base_paths=base,
            includes=self._includes if image.includes else b"",
            shell_vars=dict(image.shell_vars),
            key=env_hash(python, identity, indexes, apt),
            python_version=PYTHON_VERSION if remote else None,
            wheels=package.wheels,
            apt=apt,
            # apt-get may wait for the dpkg lock as long as the whole bootstrap may take.
            apt_wait=math.ceil(self.pool.options.bootstrap_timeout or image.bootstrap_timeout),
        )

    async def _reach_store(
        self, i: int, instance: Instance, ssh: _transport.SSHConnection, *, new: bool
    ) -> None:
        """Before node ``i`` takes calls, tell it where the collections store listens.

        Node 0 runs the store: the client opens its link to it there, gives a ``new``
        worker's store (a replaced node 0's, at a new port, or a restarted worker's) the
        copy it kept of the last one, starts keeping a copy of this one, and tells every
        node already up. Other nodes are told when they come up, or by node 0 when it
        does. A worker reached again after a reconnection (``new`` False) kept its store.
        With ``Options(cluster=False)`` there is none: each node is told so, and its
        collections refuse with the fix.
        """
        if self.no_cluster:
            await self._tell_store(instance, ssh, {"off": "Options(cluster=False)"})
            return
        if self.store is not None:
            await self._serve_store(i, instance, ssh)
            return
        store = self.pool._store
        if i == 0:
            link = StoreLink()
            with trio.fail_after(30):
                endpoint = await link.open(ssh, f"{instance.workdir}/worker.sock", self.secret)
            if new:
                await self._restore_store(link)
            store.attach(link, endpoint)
            assert self._nursery is not None
            self._nursery.start_soon(self._replicate, link)
            for node in list(self.pool._ready.values()):
                await self._tell_store(node.instance, node.ssh, endpoint)
        if store.endpoint is not None:
            await self._tell_store(instance, ssh, store.endpoint)

    async def _restore_store(self, link: StoreLink) -> None:
        """Give node 0's new store what the client kept of the last one (a store that was
        written to already refuses it). Not bounded by a deadline: the contents may be
        large, and a link that breaks ends the call."""
        kept = self.pool._store.replica.state()
        if kept is None:
            return
        try:
            taken = await link.call(collections_ops.RESTORE, "", kept)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            # Node 0 comes up regardless, with an empty store, as it did before the copy.
            self.pool._log.log(
                logging.WARNING,
                "node 0's new collections store could not take up the last one's contents "
                "(%s): it starts empty",
                exc,
            )
            return
        if taken:
            self.pool._log.info("node 0's new collections store took up the last one's contents")

    async def _replicate(self, link: StoreLink) -> None:
        """Keep the client's copy of node 0's store (``ClientStore.replica``) up to date
        while ``link`` is up: each sync answers once something changed; a short pause
        between two gathers what changes meanwhile into one answer."""
        replica = self.pool._store.replica
        warned: set[str] = set()
        with contextlib.suppress(ConnectionLostError):
            while not link.closed.is_set() and not replica.stopped:
                replica.take(await link.call(collections_ops.SYNC, "", replica.epoch, replica.seq))
                if replica.stopped:
                    self.pool._log.log(
                        logging.WARNING,
                        "%s: node 0's loss would lose them (its store is no longer copied)",
                        replica.stopped,
                    )
                for name in replica.unkept.keys() - warned:
                    warned.add(name)
                    self.pool._log.log(
                        logging.WARNING,
                        "the collection %r is not kept in the client for node 0's loss: %s",
                        name,
                        replica.unkept[name],
                    )
                await trio.sleep(_REPLICATE_PAUSE)

    async def _serve_store(self, i: int, instance: Instance, ssh: _transport.SSHConnection) -> None:
        """The store runs here: listen on a unix socket on node ``i`` through its SSH
        connection (the node's connections to it come back as SSH channels)."""
        assert self.store is not None
        assert self._nursery is not None
        path = f"{instance.workdir}/store.sock"
        with trio.fail_after(30):
            # A node that replaced one in the same directory may find its socket file.
            await ssh.run(f"rm -f {shlex.quote(path)}")
            serve = functools.partial(self.store.serve_new, where=f"node {i}")
            await ssh.serve_unix(path, serve, self._nursery)
        await self._tell_store(instance, ssh, {"path": path})

    async def _tell_store(
        self,
        instance: Instance,
        ssh: _transport.SSHConnection,
        endpoint: tuple[str, int] | dict[str, str],
    ) -> None:
        d = shlex.quote(instance.workdir)
        where = (
            endpoint if isinstance(endpoint, dict) else {"host": endpoint[0], "port": endpoint[1]}
        )
        data = json.dumps(where).encode()
        # Written whole, then renamed: a task never reads half an address.
        command = f"cat > {d}/store.json.tmp && mv {d}/store.json.tmp {d}/store.json"
        try:
            with trio.fail_after(30):
                rc, _, err = await ssh.run(command, input=data)
        except (_transport.SSHError, trio.TooSlowError) as exc:
            rc, err = -1, str(exc).encode()
        if rc != 0:
            # That node is going away (its calls are sent elsewhere); nothing else to do.
            self.pool._log.debug(
                "node %d: could not write the store's address: %s", instance.node, err
            )

    def _launch_command(self, instance: Instance, info: InstanceInfo) -> LaunchCommand | None:
        """The command that starts ``instance``'s worker, through the plugins' launchers;
        None when no plugin has one."""
        spec = self.pool.spec
        if not any(plugin.launcher for plugin in spec.plugins):
            return None
        context = LaunchContext(
            info=info,
            cluster=PluginCluster(spec=spec, worker=self.pool.worker_config),
            workdir=instance.workdir,
        )
        return launch_command(spec, worker_command(instance.workdir), context)

    def _instance_info(self, instance: Instance) -> InstanceInfo:
        pool = self.pool
        head = self.instances[0]
        accel = pool.spec.accelerator
        return InstanceInfo(
            node=instance.node,
            worker=0,
            total_nodes=len(pool._wanted),
            workers_per_node=workers_per_node(pool.spec.plugins, pool.worker_config),
            accelerators=float(accel.count) if accel else 0.0,
            total_accelerators=float(accel.count) * len(pool._wanted) if accel else 0.0,
            head_addr=head.private_ip,
            head_port=HEAD_PORT,
            job_id=pool.job_id,
            peers=tuple(
                PeerInfo(node=k, private_ip=inst.private_ip, public_ip=inst.public_ip)
                for k, inst in sorted(self.instances.items())
            ),
            accelerator=(
                AcceleratorInfo(type=accel.name, count=accel.count) if accel is not None else None
            ),
        )

    def _worker_config(self, instance: Instance, info: InstanceInfo) -> dict[str, Any]:
        pool = self.pool
        return {
            "info": to_dict(info),
            # The collections store runs on the head node, on its private address.
            "store_host": (
                instance.private_ip if instance.node == 0 and self.store_on_node_0 else None
            ),
            "concurrency": pool.worker_config.concurrency,
            "executor": pool.worker_config.resolved_executor,
            "reuse_processes": pool.worker_config.reuse_processes,
            "lease_seconds": pool.spec.ttl,
            "on_lease_expiry": instance.on_lease_expiry,
            "interruption_notices": instance.interruption_notices,
            "reconnect_seconds": reconnect_window(pool.options) + _RESUME_MARGIN,
            "env": dict(pool.spec.image.env),
            "sys_path": list(instance.sys_path),
            "metrics": to_config(metrics.expand(pool.spec.image.metrics)),
            "plugins": self.plugins.hooks,
        }

    async def _watch_cost(self, most: float) -> None:
        """``Options.max_cost``: a warning at 80 %; at 100 % the pool stops, its instances
        terminated at once rather than when its block ends."""
        warned = False
        while True:
            now = trio.current_time()
            spent = self.ledger.cost(now)
            if spent >= most:
                break
            if not warned and spent >= 0.8 * most:
                warned = True
                self._emit(
                    Error,
                    message=f"the pool has cost {dollars(spent)} of Options(max_cost="
                    f"{most:g}); it stops, terminating its instances, when it reaches it",
                )
            rate = self.ledger.hourly() / 3600  # dollars per second now
            # Until the cap would be reached at this rate; at most a second, so that an
            # instance started meanwhile counts soon.
            await trio.sleep(1.0 if rate == 0 else min(1.0, max(0.01, (most - spent) / rate)))
        stopped = BudgetExceededError(most, spent, len(self.instances))
        self.pool._stopped = stopped
        self._emit(Error, message=str(stopped))
        with trio.CancelScope(shield=True):  # half a teardown would leave machines billing
            await self.shutdown()

    async def shutdown(self) -> TeardownError | None:
        """Cancel work, stop workers, terminate every instance (once: a later call waits
        for the first and gives its outcome). Shielded by the caller."""
        if self._shut is not None:
            await self._shut.wait()
            return self._teardown_error
        self._shut = trio.Event()
        try:
            self._teardown_error = await self._shutdown()
        finally:
            self.pool._closed = True
            self._shut.set()
        return self._teardown_error

    async def _shutdown(self) -> TeardownError | None:
        pool = self.pool
        pool._closing = True
        pool._store.close()
        if pool._work is not None:
            pool._work.cancel_scope.cancel(reason="pool closing")
        pool._notify()  # calls waiting for a slot now fail with PoolClosedError
        nodes = [*pool._ready.values(), *self._draining.values()]
        for node in nodes:
            with contextlib.suppress(ConnectionLostError):  # already gone: nothing to stop
                node.conn.shutdown()
        with trio.move_on_after(1):
            for node in nodes:
                if node.conn.usable:  # one reconnecting has nobody to say goodbye to
                    await node.conn.closed.wait()
        for node in nodes:
            node.conn.lose("the pool closed")  # calls waiting for a reconnection end too
        async with trio.open_nursery() as nursery:
            for i, ssh in self.connections.items():
                if i in self.instances:
                    nursery.start_soon(_fetch_worker_log, pool._log, self.instances[i], ssh)
        # A copy: a node's task may still drop its connection while these close.
        for ssh in list(self.connections.values()):
            await ssh.aclose()
        failed: list[str] = []

        async def terminate(instance: Instance) -> None:
            try:
                await self.cluster.terminate(instance)
            except Exception as exc:
                failed.append(f"{instance.id} ({exc})")
            else:
                self._destroyed(instance)

        ahead = [a for a in self._ahead.values()]
        self._ahead.clear()
        for launching in ahead:
            launching.scope.cancel()  # its provision ends the machine it started
        with trio.move_on_after(pool.options.shutdown_timeout) as scope:
            async with trio.open_nursery() as nursery:
                for instance in self.instances.values():
                    nursery.start_soon(terminate, instance)
                for launching in ahead:
                    if launching.instance is not None:
                        nursery.start_soon(terminate, launching.instance)
        if scope.cancelled_caught:
            failed.append(f"timed out after {pool.options.shutdown_timeout:g} s")
        failed.extend(self.unconfirmed)
        now = trio.current_time()
        error = None
        if failed:
            error = TeardownError(
                f"could not confirm that these {self.cluster.name} instances are terminated "
                f"(they may still be running): {', '.join(failed)}",
                provider=self.cluster.name,
                instance_ids=tuple(self.instances[i].id for i in self.instances),
            )
            self._emit(Error, message=str(error))
        self._emit(
            ClusterDestroyed,
            instances=self.ledger.instances,
            instance_seconds=self.ledger.seconds(now),
            cost=self.ledger.cost(now),
        )
        pool._events.close()
        return error

    def _emit(self, kind: type[Event], **fields: Any) -> None:
        if kind is Error:
            fields["message"] = _logging.redact(fields["message"])
        self.pool._events.emit(kind(job_id=self.pool.job_id, **fields))

    def _destroyed(self, instance: Instance) -> None:
        self.ledger.stop(instance.id, trio.current_time())
        self._emit(InstanceDestroyed, node=instance.node, instance_id=instance.id)

    def _on_output(self, node: int, stream: str, text: str) -> None:
        """A function's output: a ``Log`` event, which the console (unless silent) shows."""
        pool = self.pool
        text = _logging.redact(text)  # a credential printed by a function is not shown
        if pool._events.heard:
            pool._events.emit(Log(job_id=pool.job_id, node=node, stream=stream, text=text))

    def _on_metrics(self, node: int, samples: list[tuple[Any, ...]], problems: list[str]) -> None:
        """A batch of node ``node``'s metrics: ``Metric`` events, and an ``Error`` for each
        collector that stopped working."""
        for problem in problems:
            self._emit(Error, message=problem, node=node)
        events = self.pool._events  # built unheard too: a later reader gets the latest
        job_id = self.pool.job_id
        for name, value, unit, gpu, when in samples:
            events.emit(
                Metric(
                    job_id=job_id, time=when, node=node, name=name, value=value, unit=unit, gpu=gpu
                )
            )


async def _work_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()
