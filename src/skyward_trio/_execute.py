"""Running a task: the function cache and the calls themselves, shared by the worker's
threads and its process-executor children.

Layer 3: stdlib, cloudpickle and lz4 (through ``_serial``) only; imported on nodes.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

from . import _serial

__all__ = ["FunctionCache", "InputSource", "ItemSink", "StreamedInput", "run_batch", "run_one"]


class FunctionCache:
    """Unpickled functions by key; each is unpickled once, in a worker thread.

    ``wrap`` (the plugins' wrappers, see ``_pluginrun``) is applied to each function as it
    is unpickled.
    """

    def __init__(self, wrap: Callable[[Any], Any] | None = None) -> None:
        self._wrap = wrap
        self._payloads: dict[str, _serial.Payload] = {}
        self._functions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, key: str, payload: _serial.Payload | None) -> None:
        if payload is not None and key not in self._functions:
            self._payloads[key] = payload

    def get(self, key: str) -> Any:
        """Return the function for ``key`` (call from a worker thread).

        A function that fails to unpickle keeps its payload, so every call fails with
        the same error (the client sends the function only once per connection).
        """
        with self._lock:
            fn = self._functions.get(key)
            if fn is None:
                payload = self._payloads.get(key)
                if payload is None:
                    raise LookupError(f"the worker never received function {key!r}")
                fn = _serial.loads(payload)
                if self._wrap is not None:
                    fn = self._wrap(fn)
                self._functions[key] = fn
                del self._payloads[key]
            return fn


#: Sends one streamed item's payload; returns False when the client no longer wants more.
ItemSink = Callable[[_serial.Payload], bool]


class StreamedInput:
    """Stands, in a call's pickled arguments, for an ``Iterator[T]`` argument whose items
    follow separately; the node replaces it with an iterator that fills as they arrive."""

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def __reduce__(self) -> tuple[Any, ...]:
        return (StreamedInput, (self.slot,))


#: Gives the iterator of a streamed argument by its slot.
InputSource = Callable[[int], Iterator[Any]]


def _with_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], inputs: InputSource | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if inputs is None:
        return args, kwargs

    def resolve(value: Any) -> Any:
        return inputs(value.slot) if isinstance(value, StreamedInput) else value

    return tuple(resolve(a) for a in args), {k: resolve(v) for k, v in kwargs.items()}


def run_one(
    cache: FunctionCache,
    fn_key: str,
    args_payload: _serial.Payload,
    on_item: ItemSink | None = None,
    inputs: InputSource | None = None,
) -> tuple[bool, Any]:
    """Run one call; return ``(True, result payload)`` or ``(False, exception info)``.

    With ``on_item``, a generator's items are sent one by one as they are produced, and
    the result is the generator's return value.
    """
    try:
        fn = cache.get(fn_key)
        raw_args, raw_kwargs = _serial.loads(args_payload)
        args, kwargs = _with_inputs(raw_args, raw_kwargs, inputs)
        value = fn(*args, **kwargs)
        if on_item is not None and inspect.isgenerator(value):
            value = _stream(value, on_item)
    except BaseException as exc:  # user code: report everything, including SystemExit
        return False, _serial.dump_exception(exc)
    try:
        return True, _serial.dumps(value)
    except Exception as exc:
        return False, _result_pickle_error(value, exc)


def _stream(generator: Generator[Any, Any, Any], on_item: ItemSink) -> Any:
    try:
        while True:
            try:
                item = next(generator)
            except StopIteration as stop:
                return stop.value
            try:
                payload = _serial.dumps(item)
            except Exception as exc:
                raise TypeError(
                    f"the generator yielded a {type(item).__qualname__} that cannot be "
                    f"pickled ({exc}); yield plain data (numbers, strings, arrays, dicts)"
                ) from None
            if not on_item(payload):
                return None  # the client stopped reading (or cancelled): stop producing
    finally:
        generator.close()


def _result_pickle_error(value: Any, exc: Exception) -> Any:
    err = TypeError(
        f"the function returned a {type(value).__qualname__} that cannot be pickled "
        f"({exc}); return plain data (numbers, strings, arrays, dicts) instead"
    )
    return _serial.dump_exception(err)


def run_batch(cache: FunctionCache, fn_key: str, items_payload: _serial.Payload) -> Any:
    try:
        fn = cache.get(fn_key)
        items = _serial.loads(items_payload)
    except BaseException as exc:
        failure = (False, _serial.dump_exception(exc))
        return _serial.dumps([failure])
    results: list[tuple[bool, Any]] = []
    for item in items:
        try:
            results.append((True, fn(item)))
        except BaseException as exc:  # user code
            results.append((False, _serial.dump_exception(exc)))
    try:
        return _serial.dumps(results)
    except Exception:
        # One bad result must not sink the batch: find it, report it, keep the rest.
        fixed: list[tuple[bool, Any]] = []
        for ok, value in results:
            if ok:
                try:
                    _serial.dumps(value)
                except Exception as exc:
                    fixed.append((False, _result_pickle_error(value, exc)))
                    continue
            fixed.append((ok, value))
        return _serial.dumps(fixed)
