"""The runtime context of a worker process: which instance it is.

The worker calls :func:`set_instance_info` once at start-up, from the JSON the
client wrote at bootstrap; user code running inside a ``@sky.function`` reads it
back with :func:`instance_info`. The context is per process (every thread of
the worker sees the same record), because one worker process is one place in
the cluster.

Imported on remote workers: stdlib and ``attrs`` only.
"""

from __future__ import annotations

from skyward_trio._info import InstanceInfo

__all__ = ["instance_info", "is_head", "process_slot", "set_instance_info", "set_process_slot"]

# A plain module global rather than a ContextVar: the worker may run tasks on
# threads or in a thread pool, which would not inherit a ContextVar set by the
# start-up code, and the value is the same for every task in the process.
_current: InstanceInfo | None = None


def set_instance_info(info: InstanceInfo | None) -> None:
    """Install (or, with ``None``, clear) this process's instance info.

    Called by the worker at start-up; user code has no reason to call it.

    Args:
        info: The record describing this worker, or ``None`` to clear it.
    """
    global _current
    _current = info


_slot: tuple[int, int] | None = None


def set_process_slot(slot: int | None, slots: int | None) -> None:
    """Install this process-executor subprocess's slot (None, None: not one)."""
    global _slot
    _slot = None if slot is None or slots is None else (slot, slots)


def process_slot() -> tuple[int, int] | None:
    """In a subprocess of ``Worker(executor="process")``: its slot, ``0 .. size - 1``
    (unique among the subprocesses alive at once on the node; a replacement takes the
    slot of the one it replaces), and ``size``, the worker's concurrency. None elsewhere.
    """
    return _slot


def instance_info() -> InstanceInfo:
    """Return this worker's place in the cluster.

    Returns:
        The :class:`InstanceInfo` the worker was started with.

    Raises:
        RuntimeError: If called outside a task running on a pool (for example
            in the client script, or in a test without a worker).
    """
    info = _current
    if info is None:
        raise RuntimeError(
            "sky.instance_info() works only inside a @sky.function running on a pool; "
            "it was called outside any Skyward task. Dispatch the function to a pool "
            "(e.g. `fn() >> pool`), or pass node=/total_nodes= explicitly where the "
            "API allows it (as sky.shard does)."
        )
    return info


def is_head(info: InstanceInfo | None = None) -> bool:
    """Tell whether a worker is the single head worker of the pool.

    Equivalent to ``info.is_head``; useful for head-only work such as logging
    or saving a checkpoint.

    Args:
        info: The record to test; defaults to this worker's :func:`instance_info`.

    Returns:
        ``True`` when the worker's global worker index is 0.

    Raises:
        RuntimeError: If ``info`` is ``None`` and no instance info is set (see
            :func:`instance_info`).
    """
    if info is None:
        info = instance_info()
    return info.is_head
