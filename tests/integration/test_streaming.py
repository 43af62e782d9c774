"""Generator functions stream their items back as they are produced, with backpressure."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyward as sky
import skyward_trio

QUIET = sky.Options(console="silent")


@pytest.fixture(scope="module")
def pool() -> Iterator[sky.Pool]:
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        yield pool


@sky.function
def _first_then_wait(marker: str) -> Iterator[str]:
    yield "first"
    while not os.path.exists(marker):
        time.sleep(0.01)
    yield "second"


def test_items_arrive_before_the_generator_finishes(pool: sky.Pool, tmp_path: Path) -> None:
    marker = tmp_path / "go"
    items = _first_then_wait(str(marker)) >> pool
    assert next(items) == "first"  # the generator is still blocked on a file only we create
    marker.touch()
    assert list(items) == ["second"]


@sky.function
def _squares(n: int) -> Iterator[int]:
    for i in range(n):
        yield i * i


def test_many_items(pool: sky.Pool) -> None:
    assert sum(_squares(20_000) >> pool) == sum(i * i for i in range(20_000))
    assert list(pool.run(_squares(3), target=1)) == [0, 1, 4]


@sky.function
def _fails_after_two() -> Iterator[int]:
    yield 1
    yield 2
    raise ValueError("broke mid-stream")


def test_an_error_mid_stream_raises_after_the_items(pool: sky.Pool) -> None:
    got: list[int] = []
    with pytest.raises(ValueError, match="broke mid-stream") as info:
        got.extend(_fails_after_two() >> pool)
    assert got == [1, 2]
    assert any("node" in note for note in info.value.__notes__)


@sky.function
def _counted_forever(counter: str) -> Iterator[int]:
    i = 0
    while True:
        i += 1
        # Written whole and then renamed, so a reader never sees the file empty.
        Path(f"{counter}.new").write_text(str(i))
        os.replace(f"{counter}.new", counter)
        yield i


def _settled(path: Path) -> int:
    """The counter's value once it stops changing."""
    last = -1
    while True:
        time.sleep(0.3)
        value = int(path.read_text())
        if value == last:
            return value
        last = value


def test_backpressure_keeps_the_node_a_window_ahead(pool: sky.Pool, tmp_path: Path) -> None:
    counter = tmp_path / "produced"
    items = _counted_forever(str(counter)) >> pool
    assert next(items) == 1
    produced = _settled(counter)
    assert produced <= 66  # a window of 64 sent, one more being produced, not thousands
    items.close()  # type: ignore[attr-defined]


def test_leaving_early_stops_the_generator_on_the_node(pool: sky.Pool, tmp_path: Path) -> None:
    counter = tmp_path / "produced"
    for item in pool.run(_counted_forever(str(counter)), target=0):
        if item == 200:
            break
    stopped_at = _settled(counter)
    time.sleep(0.5)
    assert int(counter.read_text()) == stopped_at
    assert list(pool.run(_squares(2), target=0)) == [0, 1]  # the slot is free again


def test_generators_stream_only_with_rshift(pool: sky.Pool) -> None:
    with pytest.raises(TypeError, match="generator function"):
        _squares(3) @ pool
    with pytest.raises(TypeError, match="generator function"):
        pool.run_async(_squares(3))
    with pytest.raises(TypeError, match="generator function"):
        (_squares(3) & _squares(2)) >> pool
    with pytest.raises(TypeError, match="generator function"):
        pool.map(_squares, [1, 2])


async def test_trio_face_streams_an_async_iterator(tmp_path: Path) -> None:
    marker = tmp_path / "go"
    async with skyward_trio.Compute(provider=skyward_trio.Local(), options=QUIET) as pool:
        stream = await (_first_then_wait(str(marker)) >> pool)
        assert isinstance(stream, skyward_trio.ItemStream)
        assert await stream.__anext__() == "first"
        marker.touch()
        assert [item async for item in stream] == ["second"]
        async with await (_squares(1000) >> pool) as squares:
            async for item in squares:
                if item > 100:
                    break
        assert [x async for x in await (_squares(3) >> pool)] == [0, 1, 4]
