"""``sky.dict``, ``sky.set``, ``sky.counter``, ``sky.queue``, ``sky.barrier``, ``sky.lock``.

The factories a running function calls. They live in a module of their own because two of
them are named after builtins (``dict``, ``set``): code here never needs those builtins.
``import skyward`` loads this module, so the proxies (and the pickling they need) are
imported on first use only.

Layer 3: imported inside running functions on nodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._collections import Backend, Barrier, Counter, Dict, Lock, Queue, Set

__all__ = ["barrier", "counter", "dict", "lock", "queue", "set"]


def _backend(factory: str, name: str, consistency: str | None) -> Backend:
    from ._collections import check_consistency, eventual_backend, node_backend

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
    from ._collections import Dict

    return Dict(_backend("sky.dict", name, consistency), name)


def set(name: str, *, consistency: str | None = None) -> Set:
    """The pool's set called ``name``. Raises ``NoActivePoolError`` off the pool."""
    from ._collections import Set

    return Set(_backend("sky.set", name, consistency), name)


def counter(name: str, *, consistency: str | None = None) -> Counter:
    """The pool's counter called ``name`` (0 on first use). ``NoActivePoolError`` off the pool."""
    from ._collections import Counter

    return Counter(_backend("sky.counter", name, consistency), name)


def queue(name: str) -> Queue:
    """The pool's FIFO queue called ``name``. Raises ``NoActivePoolError`` off the pool."""
    from ._collections import Queue

    return Queue(_backend("sky.queue", name, None), name)


def barrier(name: str, n: int) -> Barrier:
    """The pool's barrier called ``name`` for ``n`` participants. ``NoActivePoolError`` off
    the pool."""
    from ._collections import Barrier

    return Barrier(_backend("sky.barrier", name, None), name, n)


def lock(name: str, timeout: float | None = 30) -> Lock:
    """The pool's lock called ``name``; ``acquire`` waits at most ``timeout`` seconds.
    Raises ``NoActivePoolError`` off the pool."""
    from ._collections import Lock

    return Lock(_backend("sky.lock", name, None), name, timeout)
