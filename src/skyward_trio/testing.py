"""A fault kit for ``sky.Local()`` pools: break nodes on purpose, deterministically.

Use it to test your own retry and checkpoint logic the way a spot market will::

    from skyward import testing

    with sky.Compute(provider=sky.Local(), nodes=2) as pool:
        future = long_job() > pool
        testing.preempt(pool, 1)          # node 1 vanishes, as a reclaimed spot instance
        testing.drop_connection(pool, 0)  # node 0's connection breaks; the node stays
        future.result()                   # re-queued, or replayed after a reconnect

Each function acts at once and returns; detection, reconnection, re-queueing and
replacement then run as they would for a real fault. They work on both faces' pools,
for ``Local`` only.

Start-up faults happen while ``Compute`` is being entered, before there is a pool to act
on, so they are context managers armed around it::

    with testing.fail_provisioning(node=1, times=1):
        with sky.Compute(provider=sky.Local(), nodes=2,
                         options=sky.Options(max_provision_attempts=2)) as pool:
            ...                           # node 1 came up on its second attempt
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Iterator
from typing import Any, Literal

from ._pool import Pool
from ._providers import ARMED_FAULTS, LocalCluster, LocalFault

__all__ = [
    "LocalFault",
    "drop_connection",
    "fail_provisioning",
    "hang_bootstrap",
    "kill_worker",
    "preempt",
    "stall_connection",
    "standalone_nodes",
]


def _core(pool: Any) -> Pool:
    core = getattr(pool, "_core", pool)  # the sync face wraps the trio pool
    if not isinstance(core, Pool):
        raise TypeError(f"expected a pool from sky.Compute, got {type(pool).__qualname__}")
    return core


def _cluster(pool: Pool) -> LocalCluster:
    supervisor = pool._supervisor
    if supervisor is None or not isinstance(supervisor.cluster, LocalCluster):
        raise TypeError("the fault kit works on sky.Local() pools only")
    return supervisor.cluster


def _ready_node(pool: Pool, node: int) -> Any:
    found = pool._ready.get(node)
    if found is None:
        raise ValueError(f"node {node} is not ready; ready nodes: {sorted(pool._ready)}")
    return found


def preempt(pool: Any, node: int) -> None:
    """Make node ``node`` vanish at once, as a reclaimed spot instance does.

    Its SSH server and worker are killed (SIGKILL): no goodbye, no results sent. The
    pool notices, sends the calls that were on it to other nodes, and replaces it.
    """
    core = _core(pool)
    ready = _ready_node(core, node)
    cluster = _cluster(core)
    process = cluster._procs.get(ready.instance.id)
    if ready.conn.worker_pid:
        _kill(ready.conn.worker_pid)
    if process is not None:
        _kill(process.pid)


def kill_worker(pool: Any, node: int) -> None:
    """Kill node ``node``'s worker process (SIGKILL), as a crash or the OOM killer would.

    The machine itself stays up: the pool starts a new worker on it (same node index,
    same instance) and sends the calls the dead worker had to it or to other nodes.
    """
    core = _core(pool)
    ready = _ready_node(core, node)
    if not ready.conn.worker_pid:
        raise RuntimeError(f"node {node}'s worker pid is not known")
    _kill(ready.conn.worker_pid)


def drop_connection(pool: Any, node: int) -> None:
    """Break the client's connection to node ``node``, as a network fault does.

    The TCP connection to the node's SSH server is shut down both ways at once: both
    ends see it end, and nothing else dies (the worker keeps running its calls). The
    pool reconnects, the worker replays the results the client missed, and calls that
    never reached it are sent again, so nothing runs twice.
    """
    core = _core(pool)
    ready = _ready_node(core, node)
    _cluster(core)
    ready.ssh.break_connection()


def stall_connection(pool: Any, node: int, seconds: float) -> None:
    """Freeze node ``node``'s connection for ``seconds``, then let traffic flow again.

    The node's SSH server is stopped (SIGSTOP) and resumed (SIGCONT) ``seconds`` later:
    the TCP connection stays up, but no bytes flow either way meanwhile, as on a
    congested or flapping link. The worker keeps running. Returns at once. A stall
    shorter than the heartbeat's limit (5 s) only delays calls; after a longer one the
    pool treats the link as dropped (about 7 s) and reconnects, or, when the stall
    outlasts the reconnect window too, declares the node lost and replaces it.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(
            f"stall_connection(seconds={seconds!r}): seconds must be a number, "
            f"got {type(seconds).__qualname__}"
        )
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(
            f"stall_connection(seconds={seconds!r}): seconds must be > 0 and finite, e.g. seconds=2"
        )
    core = _core(pool)
    ready = _ready_node(core, node)
    _cluster(core).stall(ready.instance, float(seconds))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone: the fault happened anyway


def fail_provisioning(
    *, node: int, times: int | None = None
) -> contextlib.AbstractContextManager[LocalFault]:
    """Make provisioning node ``node`` fail, as a provider out of capacity does.

    Applies to the ``sky.Local()`` pools started inside the block: the first ``times``
    attempts to provision node ``node`` (every attempt if None) fail before any machine
    is made. ``Options(max_provision_attempts=...)`` then tries again, and with
    ``Nodes(min=...)`` the pool may start without the node. ``with ... as fault``:
    ``fault.fired`` says how many attempts it failed.
    """
    return _armed(_fault("provision", "fail_provisioning", node, times))


def hang_bootstrap(
    *, node: int, times: int | None = None
) -> contextlib.AbstractContextManager[LocalFault]:
    """Make node ``node``'s bootstrap never finish, as a stuck set-up script does.

    Applies to the ``sky.Local()`` pools started inside the block: for the first ``times``
    instances of node ``node`` (every one if None) the machine comes up and accepts SSH,
    but the bootstrap it is sent never runs nor answers, so
    ``Options(bootstrap_timeout=...)`` (else ``Image(bootstrap_timeout=...)``) fires and
    the node fails with a ``ProvisionError`` in phase ``"bootstrap"``. ``with ... as
    fault``: ``fault.fired`` says how many instances it hung.
    """
    return _armed(_fault("bootstrap", "hang_bootstrap", node, times))


def standalone_nodes() -> contextlib.AbstractContextManager[LocalFault]:
    """Make ``sky.Local()`` nodes pass for machines that cannot reach each other.

    Applies to the ``sky.Local()`` pools started inside the block: their provider reports
    that nodes do not share a private network, as with standalone machines, so the pool
    runs its collections store in the client (reached through each node's SSH
    connection) instead of on node 0. The nodes are still on loopback; only where the
    store runs changes. ``fault.fired`` stays 0.
    """
    return _armed(LocalFault(kind="standalone", node=0, times=None, armed=False))


def _fault(
    kind: Literal["provision", "bootstrap"], name: str, node: int, times: int | None
) -> LocalFault:
    if isinstance(node, bool) or not isinstance(node, int) or node < 0:
        raise ValueError(f"{name}(node={node!r}): node must be a node index (an int >= 0)")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ValueError(
            f"{name}(times={times!r}): times must be an int >= 1 (how many attempts fail), "
            "or None for every attempt"
        )
    return LocalFault(kind=kind, node=node, times=times, armed=False)


@contextlib.contextmanager
def _armed(fault: LocalFault) -> Iterator[LocalFault]:
    fault.armed = True
    ARMED_FAULTS.append(fault)
    try:
        yield fault
    finally:
        fault.armed = False
        ARMED_FAULTS.remove(fault)
