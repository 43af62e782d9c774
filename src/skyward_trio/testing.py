"""A fault kit for ``sky.Local()`` pools: break nodes on purpose, deterministically.

Use it to test your own retry and checkpoint logic the way a spot market will::

    from skyward import testing

    with sky.Compute(provider=sky.Local(), nodes=2) as pool:
        future = long_job() > pool
        testing.preempt(pool, 1)          # node 1 vanishes, as a reclaimed spot instance
        future.result()                   # re-queued on a node that is still there

Each function acts at once and returns; detection, re-queueing and replacement then run
as they would for a real fault. They work on both faces' pools, for ``Local`` only.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from ._pool import Pool
from ._providers import LocalCluster

__all__ = ["kill_worker", "preempt"]


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

    The machine itself stays up; the pool treats the node as lost and replaces it.
    """
    core = _core(pool)
    ready = _ready_node(core, node)
    if not ready.conn.worker_pid:
        raise RuntimeError(f"node {node}'s worker pid is not known")
    _kill(ready.conn.worker_pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone: the fault happened anyway
