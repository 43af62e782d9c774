"""Errors at the serialization boundary name the culprit and its type, before anything is
sent; big payloads warn."""

from __future__ import annotations

import os
import threading

import pytest

import skyward as sky
from skyward_trio import _pool

UNPICKLABLE_GLOBAL = threading.RLock()


def test_a_captured_variable_that_does_not_pickle_is_named(sync_pool: sky.Pool) -> None:
    lock = threading.Lock()

    @sky.function
    def uses_lock() -> int:
        with lock:
            return 1

    with pytest.raises(sky.SerializationError, match=r"captured variable 'lock' \(a lock\)"):
        uses_lock() >> sync_pool
    assert sync_pool.current_nodes() == 2  # nothing was sent; the pool is fine


@sky.function
def _uses_global_lock() -> int:
    with UNPICKLABLE_GLOBAL:
        return 1


def test_a_global_that_does_not_pickle_is_named(sync_pool: sky.Pool) -> None:
    with pytest.raises(sky.SerializationError, match=r"global 'UNPICKLABLE_GLOBAL' \(a RLock\)"):
        _uses_global_lock() >> sync_pool


@sky.function
def _takes(data: object, *, option: object = None) -> int:
    return 1


def test_an_argument_that_does_not_pickle_is_named_with_its_type(sync_pool: sky.Pool) -> None:
    with pytest.raises(sky.SerializationError, match=r"argument 'data' \(position 0, a lock\)"):
        _takes(threading.Lock()) >> sync_pool
    with pytest.raises(sky.SerializationError, match=r"keyword argument 'option' \(a generator\)"):
        _takes(1, option=(i for i in range(3))) >> sync_pool


@sky.function
def _returns_a_lock() -> object:
    return threading.Lock()


def test_a_result_that_does_not_pickle_comes_back_as_an_error_naming_its_type(
    sync_pool: sky.Pool,
) -> None:
    with pytest.raises(TypeError, match=r"returned a lock that cannot be pickled"):
        _returns_a_lock() >> sync_pool


def test_big_payloads_warn(sync_pool: sky.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pool, "BIG_PAYLOAD", 100_000)
    with pytest.warns(_pool.LargePayloadWarning, match="sky.storage"):
        assert _takes(os.urandom(200_000)) >> sync_pool == 1
