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
"""

from __future__ import annotations

import math
import os
import signal
from typing import Any

from ._pool import Pool
from ._providers import LocalCluster

__all__ = ["drop_connection", "kill_worker", "preempt", "stall_connection"]


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
    shorter than the SSH keepalive (60 s) only delays calls; a longer one makes the
    pool reconnect, and then declare the node lost.
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
