"""Lazy calls: ``@function``, ``PendingFunction``, groups and ``gather``, and the operators.

The operators call whatever pool is on their right: a sync pool (``import skyward``)
returns values, a trio pool returns awaitables. ``>> sky`` / ``>> skyward_trio`` resolve
to the pool that is active in the current context.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Iterator, Sequence
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
    "map_items",
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
    # `not value > 0` also refuses NaN, which compares false with everything.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"timeout={value!r}: a timeout must be a positive number of seconds or None, "
            "e.g. timeout=sky.time.minutes(10)"
        )
    return float(value)


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s own signature, to check calls against before they travel; None when it
    has none to read (some builtins). A wrapper's own, not what it wraps: a decorator may
    take other arguments than the function it wraps."""
    try:
        return inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return None


def _check_arguments(
    fn: Callable[..., Any], signature: inspect.Signature | None, args: Any, kwargs: Any
) -> None:
    """Refuse here, before anything is sent, a call ``fn`` could not take."""
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(f"{name}{signature}: {exc}") from None


#: Where the two faces' ``Compute`` live (not imported here: this module is below them).
_COMPUTES = ("skyward._sync", "skyward_trio._compute")


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
    if type(target).__module__ in _COMPUTES and type(target).__name__ == "Compute":
        raise TypeError(
            "cannot dispatch to a Compute: it is what opens a pool, not the pool. Open it "
            "with `with sky.Compute(...) as pool:` (`async with` in trio) and dispatch to "
            "`pool` inside that block"
        )
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
        if not isinstance(other, PendingFunction | PendingFunctionGroup):
            raise _not_pending(self.name, other)
        return PendingFunctionGroup(items=(self,)) & other

    def __repr__(self) -> str:
        return f"<PendingFunction {self.name}>"


def _not_pending(left: str, other: object) -> TypeError:
    """The error for ``left & other`` where ``other`` is no pending call: most often
    ``a() & b() >> pool``, which Python reads as ``a() & (b() >> pool)``, so ``b`` has
    run on its own already and its result is on the right."""
    return TypeError(
        f"cannot group {left} with a value of type {type(other).__qualname__}: `&` joins "
        "pending calls. "
        "`>>` binds tighter than `&`, so `a() & b() >> pool` runs b() on its own first and "
        "then tries `a() & <its result>`; write `(a() & b()) >> pool` or "
        "`sky.gather(a(), b()) >> pool`"
    )


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

    def __attrs_post_init__(self) -> None:
        _check_flags("PendingFunctionGroup(...", self.stream, self.ordered)

    def __and__(self, other: PendingFunction[Any] | PendingFunctionGroup) -> PendingFunctionGroup:
        if isinstance(other, PendingFunctionGroup):
            return attrs.evolve(self, items=self.items + other.items)
        if isinstance(other, PendingFunction):
            return attrs.evolve(self, items=(*self.items, other))
        raise _not_pending("a group", other)

    def __rshift__(self, target: Any) -> Any:
        return _resolve(target).run_parallel(self)

    def __matmul__(self, target: Any) -> Any:
        raise TypeError("a group can only be dispatched with >>; use `p @ pool` per call")

    def __gt__(self, target: Any) -> Any:
        raise TypeError("a group can only be dispatched with >>; use `p > pool` per call")

    def __len__(self) -> int:
        return len(self.items)


def _check_flags(call: str, stream: object, ordered: object) -> None:
    # stream="no" is truthy: unchecked, it would stream, and ordered="no" would keep order.
    fixes = {
        "stream": "Pass stream=True for the results as they complete, or stream=False "
        "(the default) for a tuple of them all",
        "ordered": "Pass ordered=True (the default) for streamed results in submission "
        "order, or ordered=False for them as they complete",
    }
    for arg, value in (("stream", stream), ("ordered", ordered)):
        if not isinstance(value, bool):
            raise TypeError(
                f"{call}, {arg}={value!r}): {arg} must be True or False, got "
                f"{type(value).__qualname__}. {fixes[arg]}."
            )


def gather(
    *pendings: PendingFunction[Any], stream: bool = False, ordered: bool = True
) -> PendingFunctionGroup:
    """Group calls to run in parallel; with ``stream=True``, ``>>`` yields as they complete.

    Raises:
        TypeError: No calls, an item that is not a pending call, or a ``stream`` or
            ``ordered`` that is not a bool.
    """
    if not pendings:
        raise TypeError("gather() needs at least one pending call")
    _check_flags("sky.gather(...", stream, ordered)
    return PendingFunctionGroup(items=pendings, stream=stream, ordered=ordered)


class Function(Generic[T]):
    """A function marked for remote execution; calling it returns a ``PendingFunction``."""

    def __init__(self, fn: Callable[..., T], timeout: float | None) -> None:
        if not callable(fn):
            raise TypeError(f"@sky.function needs a callable, got {type(fn).__qualname__}")
        self.fn = fn
        self.timeout = _check_timeout(timeout)
        self._signature = _signature(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> PendingFunction[T]:
        """The pending call ``fn(*args, **kwargs)``.

        Raises:
            TypeError: ``fn`` cannot take these arguments (checked here, as Python would,
                not on a node once the call has travelled).
        """
        _check_arguments(self.fn, self._signature, args, kwargs)
        return PendingFunction(fn=self.fn, args=args, kwargs=kwargs, timeout=self.timeout)

    # `f >> pool` for `f(x) >> pool`: the function itself, not a call of it.
    def __rshift__(self, target: Any) -> Any:
        raise self._uncalled(">>")

    def __matmul__(self, target: Any) -> Any:
        raise self._uncalled("@")

    def __gt__(self, target: Any) -> Any:
        raise self._uncalled(">")

    def __and__(self, other: Any) -> Any:
        raise self._uncalled("&")

    def _uncalled(self, operator: str) -> TypeError:
        name = getattr(self.fn, "__name__", "f")
        return TypeError(
            f"`{name} {operator} ...` dispatches the function itself; call it first to make "
            f"the pending call: `{name}(...) {operator} ...`"
        )

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


def map_items(items: Any) -> Iterator[Any]:
    """``iter(items)`` for ``map(fn, items)``.

    Raises:
        TypeError: ``items`` is not iterable (said with the fix, not Python's bare
            "'int' object is not iterable").
    """
    try:
        return iter(items)
    except TypeError:
        if hasattr(type(items), "__iter__") or hasattr(type(items), "__getitem__"):
            raise  # raised by the iterable's own __iter__: its error, as it is
    hint = ""
    if isinstance(items, int) and not isinstance(items, bool) and items > 0:
        hint = f", or pool.map(fn, range({items})) for fn(0) .. fn({items - 1})"
    raise TypeError(
        f"map(fn, items={items!r}): items must be an iterable (a list, a range, a "
        f"generator...), got {type(items).__qualname__}. Pass e.g. pool.map(fn, [1, 2, 3])"
        f"{hint}."
    ) from None


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
    signature = _signature(fn)
    if signature is not None:
        try:
            signature.bind(None)
        except TypeError as exc:
            name = getattr(fn, "__qualname__", None) or repr(fn)
            raise TypeError(
                f"map() calls {name}(item) once per item, with the item as its one "
                f"argument; {name}{signature} cannot be called so: {exc}"
            ) from None
    return fn, timeout
