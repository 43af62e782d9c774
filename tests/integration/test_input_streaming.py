"""Arguments annotated ``Iterator[T]`` stream their items to the node while it runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyward as sky
import skyward_trio

QUIET = sky.Options(console="silent")


@pytest.fixture(scope="module")
def pool() -> Iterator[sky.Pool]:
    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        yield pool


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)


@sky.function
def _total(xs: Iterator[int], scale: int = 1) -> int:
    return sum(xs) * scale


def test_any_iterable_streams_into_an_iterator_parameter(pool: sky.Pool) -> None:
    assert _total(range(10_000)) >> pool == sum(range(10_000))
    assert _total([1, 2, 3], scale=2) >> pool == 12
    assert _total(xs=(i for i in range(5)), scale=3) >> pool == 30


@sky.function
def _signal_on_first(xs: Iterator[str], marker: str) -> list[str]:
    seen = []
    for x in xs:
        seen.append(x)
        if x == "first":
            Path(marker).touch()
    return seen


def test_the_node_sees_items_while_the_source_is_still_producing(
    pool: sky.Pool, tmp_path: Path
) -> None:
    marker = tmp_path / "node-got-first"

    def source() -> Iterator[str]:
        yield "first"
        _wait_for(marker)  # only the node can create it, after it read "first"
        yield "second"

    assert _signal_on_first(source(), str(marker)) >> pool == ["first", "second"]


@sky.function
def _read_one_then_wait(xs: Iterator[int], read_one: str, release: str) -> int:
    first = next(xs)
    Path(read_one).touch()
    while not Path(release).exists():
        time.sleep(0.01)
    return first + sum(xs)


def test_the_client_sends_only_a_window_ahead(pool: sky.Pool, tmp_path: Path) -> None:
    pulled = 0

    def counting() -> Iterator[int]:
        nonlocal pulled
        for i in range(20_000):
            pulled += 1
            yield i

    read_one, release = tmp_path / "read-one", tmp_path / "release"
    future = _read_one_then_wait(counting(), str(read_one), str(release)) > pool
    _wait_for(read_one)
    last = -1
    while pulled != last:  # let the sender run until the window stops it
        last = pulled
        time.sleep(0.3)
    assert pulled <= 256 + 128 + 1  # the window, one chunk being read, one item in hand
    release.touch()
    assert future.result(timeout=60) == sum(range(20_000))


@sky.function
def _tenfold(xs: Iterator[int]) -> Iterator[int]:
    for x in xs:
        yield x * 10


def test_streaming_in_and_out_together(pool: sky.Pool) -> None:
    assert list(_tenfold(iter(range(200))) >> pool) == [x * 10 for x in range(200)]


def test_a_failing_source_fails_the_call_with_its_own_exception(pool: sky.Pool) -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise LookupError("the source broke")

    with pytest.raises(LookupError, match="the source broke") as info:
        _total(broken()) >> pool
    assert any("Iterator[...] parameter" in note for note in info.value.__notes__)
    assert _total([1]) >> pool == 1  # the pool is fine


def test_a_non_iterable_is_refused_before_sending(pool: sky.Pool) -> None:
    with pytest.raises(TypeError, match=r"argument 'xs' of _total\(\) is annotated Iterator"):
        _total(5) >> pool  # type: ignore[arg-type]


async def test_trio_face_streams_inputs_too() -> None:
    async with skyward_trio.Compute(provider=skyward_trio.Local(), options=QUIET) as pool:
        assert await (_total(range(1000), scale=2) >> pool) == 2 * sum(range(1000))


# -- `@`: every node reads the whole input -------------------------------------------------------


@pytest.fixture(scope="module")
def two() -> Iterator[sky.Pool]:
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        yield pool


@sky.function
def _count_and_sum(xs: Iterator[int]) -> tuple[int, int]:
    n = total = 0
    for x in xs:
        n, total = n + 1, total + x
    return n, total


def test_broadcast_gives_every_node_the_whole_of_a_one_shot_iterable(
    two: sky.Pool, tmp_path: Path
) -> None:
    """A generator or an open file can be read once: read here once, every node gets
    all of it (not a share of it), as a list is read by each node anew."""
    read: list[int] = []

    def source() -> Iterator[int]:
        for x in range(5_000):
            read.append(x)
            yield x

    whole = (5_000, sum(range(5_000)))
    assert _count_and_sum(source()) @ two == [whole, whole]
    assert read == list(range(5_000))  # read once, not once per node
    assert _count_and_sum(list(range(5_000))) @ two == [whole, whole]

    numbers = tmp_path / "numbers.txt"
    numbers.write_text("".join(f"{x}\n" for x in range(300)))
    with numbers.open() as lines:
        assert _count_lines(lines) @ two == [300, 300]


@sky.function
def _count_lines(lines: Iterator[str]) -> int:
    return sum(1 for _ in lines)


def test_a_node_that_stops_reading_does_not_hold_the_others_back(two: sky.Pool) -> None:
    """One node reads one item and returns; the other reads far past the window the
    shared input holds for the slowest reader."""
    assert sorted(_first_or_all(iter(range(20_000))) @ two) == [0, sum(range(20_000))]


@sky.function
def _first_or_all(xs: Iterator[int]) -> int:
    if sky.instance_info().node == 0:
        return next(xs)
    return sum(xs)


def test_a_failing_one_shot_source_fails_the_broadcast_with_its_own_exception(
    two: sky.Pool,
) -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise LookupError("the source broke")

    with pytest.raises(LookupError, match="the source broke") as info:
        _count_and_sum(broken()) @ two
    notes = [n for n in info.value.__notes__ if "Iterator[...] parameter" in n]
    assert len(notes) == 1  # said once, though every node's call failed with it
    assert _count_and_sum([2]) @ two == [(1, 2), (1, 2)]  # the pool is fine


async def test_trio_face_broadcasts_a_one_shot_iterable_whole() -> None:
    async with skyward_trio.Compute(provider=skyward_trio.Local(), nodes=2, options=QUIET) as pool:
        got = await (_count_and_sum(iter(range(1000))) @ pool)
    assert got == [(1000, sum(range(1000)))] * 2
