"""Running a task: the function cache and the calls themselves, shared by the worker's
threads and its process-executor children.

Layer 3: stdlib, cloudpickle and lz4 (through ``_serial``) only; imported on nodes.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _serial

__all__ = ["FunctionCache", "run_batch", "run_one"]


class FunctionCache:
    """Unpickled functions by key; each is unpickled once, in a worker thread."""

    def __init__(self) -> None:
        self._payloads: dict[str, _serial.Payload] = {}
        self._functions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, key: str, payload: _serial.Payload | None) -> None:
        if payload is not None and key not in self._functions:
            self._payloads[key] = payload

    def get(self, key: str) -> Any:
        """Return the function for ``key`` (call from a worker thread)."""
        with self._lock:
            fn = self._functions.get(key)
            if fn is None:
                fn = _serial.loads(self._payloads.pop(key))
                self._functions[key] = fn
            return fn


def run_one(cache: FunctionCache, fn_key: str, args_payload: _serial.Payload) -> tuple[bool, Any]:
    try:
        fn = cache.get(fn_key)
        args, kwargs = _serial.loads(args_payload)
        value = fn(*args, **kwargs)
    except BaseException as exc:  # user code: report everything, including SystemExit
        return False, _serial.dump_exception(exc)
    try:
        return True, _serial.dumps(value)
    except Exception as exc:
        return False, _result_pickle_error(value, exc)


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
