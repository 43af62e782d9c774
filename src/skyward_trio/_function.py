"""Lazy calls: ``@function``, ``PendingFunction``, groups and ``gather``, and the operators.

The operators call whatever pool is on their right: a sync pool (``import skyward``)
returns values, a trio pool returns awaitables. ``>> sky`` / ``>> skyward_trio`` resolve
to the pool that is active in the current context.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, Generic, Protocol, TypeVar

import attrs

from ._errors import NoActivePoolError

__all__ = [
    "Dispatcher",
    "Function",
    "PendingFunction",
    "PendingFunctionGroup",
    "active_pool",
    "function",
    "gather",
    "mappable",
]

T = TypeVar("T")


class Dispatcher(Protocol):
    """What can stand on the right of an operator: a sync or a trio pool."""

    def run(self, pending: PendingFunction[Any], *, target: Any = None) -> Any: ...
    def run_async(self, pending: PendingFunction[Any], *, target: Any = None) -> Any: ...
    def broadcast(self, pending: PendingFunction[Any]) -> Any: ...
    def run_parallel(self, group: PendingFunctionGroup) -> Any: ...


#: The pool a ``with``/``async with`` block made active in this context.
active_pool: ContextVar[Dispatcher | None] = ContextVar("skyward_active_pool", default=None)


def _check_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {value!r}")
    return float(value)


def _resolve(target: Any) -> Dispatcher:
    if isinstance(target, types.ModuleType):
        if target.__name__ not in ("skyward", "skyward_trio"):
            raise TypeError(
                f"cannot dispatch to module {target.__name__!r}; use a pool or the sky module"
            )
        pool = active_pool.get()
        if pool is None:
            raise NoActivePoolError(
                f"`>> {target.__name__}` needs an active pool, and none is active here; "
                "dispatch inside `with sky.Compute(...) as pool:` or use `>> pool`"
            )
        return pool
    if not all(hasattr(target, m) for m in ("run", "run_async", "broadcast", "run_parallel")):
        raise TypeError(
            f"cannot dispatch to {type(target).__qualname__}; the right-hand side of "
            ">>, @ and > must be a pool (from sky.Compute) or the sky module"
        )
    return target  # type: ignore[no-any-return]


@attrs.frozen(eq=False)
class PendingFunction(Generic[T]):
    """A call that has not run yet: ``fn(*args, **kwargs)``, with an optional timeout.

    Nothing runs until an operator dispatches it: ``>>`` (one node), ``@`` (every node),
    ``>`` (non-blocking), or ``&`` to group it with others.
    """

    fn: Callable[..., T]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    timeout: float | None = attrs.field(default=None, converter=_check_timeout)

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    def with_timeout(self, seconds: float) -> PendingFunction[T]:
        """A copy of this call with a wall-clock timeout of ``seconds``."""
        return attrs.evolve(self, timeout=seconds)

    def __rshift__(self, target: Any) -> Any:
        return _resolve(target).run(self)

    def __matmul__(self, target: Any) -> Any:
        return _resolve(target).broadcast(self)

    def __gt__(self, target: Any) -> Any:
        return _resolve(target).run_async(self)

    def __and__(self, other: PendingFunction[Any] | PendingFunctionGroup) -> PendingFunctionGroup:
        return PendingFunctionGroup(items=(self,)) & other

    def __repr__(self) -> str:
        return f"<PendingFunction {self.name}>"


def _pendings(items: Sequence[Any]) -> tuple[PendingFunction[Any], ...]:
    for i, item in enumerate(items):
        if not isinstance(item, PendingFunction):
            raise TypeError(
                f"item {i} of the group is a {type(item).__qualname__}, not a pending call; "
                "call the @sky.function first, e.g. `f(x) & g(y)`"
            )
    return tuple(items)


@attrs.frozen(eq=False)
class PendingFunctionGroup:
    """Pending calls that run in parallel when dispatched with ``>>``.

    Attributes:
        items: The calls, in submission order.
        stream: Whether ``>>`` yields results as they complete instead of a tuple.
        ordered: With ``stream``, keep submission order (ignored otherwise).
    """

    items: tuple[PendingFunction[Any], ...] = attrs.field(converter=_pendings)
    stream: bool = False
    ordered: bool = True

    def __and__(self, other: PendingFunction[Any] | PendingFunctionGroup) -> PendingFunctionGroup:
        if isinstance(other, PendingFunctionGroup):
            return attrs.evolve(self, items=self.items + other.items)
        if isinstance(other, PendingFunction):
            return attrs.evolve(self, items=(*self.items, other))
        return NotImplemented

    def __rshift__(self, target: Any) -> Any:
        return _resolve(target).run_parallel(self)

    def __matmul__(self, target: Any) -> Any:
        raise TypeError("a group can only be dispatched with >>; use `p @ pool` per call")

    def __gt__(self, target: Any) -> Any:
        raise TypeError("a group can only be dispatched with >>; use `p > pool` per call")

    def __len__(self) -> int:
        return len(self.items)


def gather(
    *pendings: PendingFunction[Any], stream: bool = False, ordered: bool = True
) -> PendingFunctionGroup:
    """Group calls to run in parallel; with ``stream=True``, ``>>`` yields as they complete."""
    if not pendings:
        raise TypeError("gather() needs at least one pending call")
    return PendingFunctionGroup(items=pendings, stream=stream, ordered=ordered)


class Function(Generic[T]):
    """A function marked for remote execution; calling it returns a ``PendingFunction``."""

    def __init__(self, fn: Callable[..., T], timeout: float | None) -> None:
        if not callable(fn):
            raise TypeError(f"@sky.function needs a callable, got {type(fn).__qualname__}")
        self.fn = fn
        self.timeout = _check_timeout(timeout)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> PendingFunction[T]:
        return PendingFunction(fn=self.fn, args=args, kwargs=kwargs, timeout=self.timeout)

    def __repr__(self) -> str:
        return f"<sky.function {getattr(self.fn, '__qualname__', self.fn)!r}>"


def function(fn: Callable[..., T] | None = None, *, timeout: float | None = None) -> Any:
    """Mark ``fn`` for remote execution (``@function`` or ``@function(timeout=600)``).

    Calling the result does not run anything: it returns a ``PendingFunction`` that an
    operator dispatches to a pool.
    """
    if fn is None:
        checked = _check_timeout(timeout)
        return lambda f: Function(f, checked)
    return Function(fn, timeout)


def mappable(fn: Callable[..., Any]) -> tuple[Callable[..., Any], float | None]:
    """What ``map(fn, items)`` runs per item, and its timeout (``@sky.function``'s, if
    ``fn`` is one).

    Raises:
        TypeError: ``fn`` is not callable, or is a generator function.
    """
    timeout = None
    if isinstance(fn, Function):
        timeout = fn.timeout
        fn = fn.fn
    if not callable(fn):
        raise TypeError(f"map() needs a callable, got {type(fn).__qualname__}")
    if inspect.isgeneratorfunction(fn):
        raise TypeError(
            f"map() needs a function that returns a value; {fn.__qualname__}() is a "
            "generator function (dispatch it with `>>` to stream its items)"
        )
    return fn, timeout
