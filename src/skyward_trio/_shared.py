"""``sky.dict``, ``sky.set``, ``sky.counter``, ``sky.queue``, ``sky.barrier``, ``sky.lock``.

The factories a running function calls. They live in a module of their own because two of
them are named after builtins (``dict``, ``set``): code here never needs those builtins.

Layer 3: imported inside running functions on nodes.
"""

from __future__ import annotations

from ._collections import (
    Backend,
    Barrier,
    Counter,
    Dict,
    Lock,
    Queue,
    Set,
    check_consistency,
    eventual_backend,
    node_backend,
)

__all__ = ["barrier", "counter", "dict", "lock", "queue", "set"]


def _backend(factory: str, name: str, consistency: str | None) -> Backend:
    check_consistency(factory, name, consistency)
    if consistency == "eventual":
        return eventual_backend(factory, name)
    return node_backend(factory, name)


def dict(name: str, *, consistency: str | None = None) -> Dict:
    """The pool's dict called ``name`` (made empty on first use).

    Raises:
        NoActivePoolError: Outside a function running on a pool (use ``pool.dict(name)``
            in the client).
    """
    return Dict(_backend("sky.dict", name, consistency), name)


def set(name: str, *, consistency: str | None = None) -> Set:
    """The pool's set called ``name``. Raises ``NoActivePoolError`` off the pool."""
    return Set(_backend("sky.set", name, consistency), name)


def counter(name: str, *, consistency: str | None = None) -> Counter:
    """The pool's counter called ``name`` (0 on first use). ``NoActivePoolError`` off the pool."""
    return Counter(_backend("sky.counter", name, consistency), name)


def queue(name: str) -> Queue:
    """The pool's FIFO queue called ``name``. Raises ``NoActivePoolError`` off the pool."""
    return Queue(node_backend("sky.queue", name), name)


def barrier(name: str, n: int) -> Barrier:
    """The pool's barrier called ``name`` for ``n`` participants. ``NoActivePoolError`` off
    the pool."""
    return Barrier(node_backend("sky.barrier", name), name, n)


def lock(name: str, timeout: float | None = 30) -> Lock:
    """The pool's lock called ``name``; ``acquire`` waits at most ``timeout`` seconds.
    Raises ``NoActivePoolError`` off the pool."""
    return Lock(node_backend("sky.lock", name), name, timeout)
