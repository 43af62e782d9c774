"""Cancelling a call reaches the node: the task is dropped, its slot freed, and a late
result is never delivered."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import skyward as sky
import skyward_trio

QUIET = sky.Options(console="silent")


@pytest.fixture(scope="module")
def one_slot() -> Iterator[sky.Pool]:
    """One node with one task slot: a call that kept its slot would block the next."""
    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        yield pool


@sky.function
def _sleep_then_touch(seconds: float, path: str) -> str:
    time.sleep(seconds)
    Path(path).touch()
    return "late"


@sky.function
def _quick() -> str:
    return "quick"


def test_future_cancel_frees_the_slot(one_slot: sky.Pool, tmp_path: Path) -> None:
    future = _sleep_then_touch(2.0, str(tmp_path / "ran")) > one_slot
    assert isinstance(future, concurrent.futures.Future)
    time.sleep(0.3)  # let it start on the node
    assert future.cancel()
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()
    # The only slot is free again although the cancelled thread is still sleeping.
    assert _quick() >> one_slot == "quick"


def test_a_finished_future_cannot_be_cancelled(one_slot: sky.Pool) -> None:
    future = _quick() > one_slot
    assert future.result(timeout=30) == "quick"
    assert not future.cancel()


def test_cancel_before_it_starts(one_slot: sky.Pool, tmp_path: Path) -> None:
    blocker = _sleep_then_touch(1.0, str(tmp_path / "blocker")) > one_slot
    queued = _sleep_then_touch(0.0, str(tmp_path / "queued")) > one_slot  # waits for a slot
    assert queued.cancel()
    assert blocker.result(timeout=30) == "late"
    time.sleep(0.5)
    assert not (tmp_path / "queued").exists()  # never ran
    assert _quick() >> one_slot == "quick"


async def test_leaving_a_cancel_scope_cancels_the_remote_task(tmp_path: Path) -> None:
    async with skyward_trio.Compute(provider=skyward_trio.Local(), options=QUIET) as pool:
        with trio.move_on_after(0.5) as scope:
            await pool.run(_sleep_then_touch(2.0, str(tmp_path / "ran")))
        assert scope.cancelled_caught
        assert await (_quick() >> pool) == "quick"  # the slot was freed at once
        future = await (_sleep_then_touch(2.0, str(tmp_path / "ran2")) > pool)
        assert future.cancel()
        with pytest.raises(skyward_trio.CancelledCallError):
            await future.result()
        assert await (_quick() >> pool) == "quick"
