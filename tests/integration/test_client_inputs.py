"""``Iterator[T]`` arguments through the pool server: a ``sky.Client`` (and a
``skyward_trio.Client``) in a script of its own streams its iterable's items to the node,
relayed by a server started as users start it, holding a Local pool (``sky compute
create``). The scripts mirror test_input_streaming.py, which runs the same calls on a
pool of one's own."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from served import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server.running(tmp_path_factory.mktemp("client-inputs")) as made:
        yield made


# What both faces' scripts share: the functions (``__main__``'s: pickled by value) and
# sources that count what has been taken from them.
_HELPERS = '''
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import skyward as sky

SCRATCH = Path(sys.argv[1])


@sky.function
def total(xs: Iterator[int], scale: int = 1) -> int:
    return sum(xs) * scale


@sky.function
def pair(numbers: Iterator[int], letters: Iterator[str]) -> list:
    return [sum(numbers), "".join(letters)]


@sky.function
def signal_on_first(xs: Iterator[str], marker: str) -> list:
    seen = []
    for x in xs:
        seen.append(x)
        if x == "first":
            Path(marker).touch()
    return seen


@sky.function
def read_one_then_wait(xs: Iterator[int], read_one: str, release: str) -> int:
    first = next(xs)
    Path(read_one).touch()
    while not Path(release).exists():
        time.sleep(0.01)
    return first + sum(xs)


@sky.function
def tenfold(xs: Iterator[int]) -> Iterator[int]:
    for x in xs:
        yield x * 10


@sky.function
def first(xs: Iterator[int]) -> int:
    return next(xs)


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)


class Counted:
    """An endless source (or one of ``n`` items) that counts the items taken from it."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.n is not None and self.taken >= self.n:
            raise StopIteration
        self.taken += 1
        return self.taken - 1


def settled(source: Counted) -> int:
    """How many items were taken from ``source`` once no more are being taken."""
    last = -1
    while source.taken != last:
        last = source.taken
        time.sleep(0.5)
    return last


def broken():
    yield 1
    raise LookupError("the source broke")


def unpicklable():
    yield 1
    yield threading.Lock()
'''


_SYNC = """
def until(condition, what):
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def feeders():
    return [t.name for t in threading.enumerate() if t.name.startswith("sky-feed")]


out = {}
with sky.Client("p") as pool:
    out["sums"] = [
        total(range(10_000)) >> pool,
        total([1, 2, 3], scale=2) >> pool,
        total(xs=(i for i in range(5)), scale=3) >> pool,
        total([]) >> pool,
    ]
    out["two inputs"] = pair(range(100), iter("abc")) >> pool
    out["group"] = list((total([1, 2]) & total(range(4))) >> pool)
    out["future"] = (total(range(10)) > pool).result(timeout=60)
    out["on a node"] = pool.run(total(range(3)), target=1)

    marker = SCRATCH / "got-first"

    def source():
        yield "first"
        wait_for(marker)  # only the node can make it, after it read "first"
        yield "second"

    out["lazy"] = signal_on_first(source(), str(marker)) >> pool

    counted = Counted(20_000)
    read_one, release = SCRATCH / "read-one", SCRATCH / "release"
    future = read_one_then_wait(counted, str(read_one), str(release)) > pool
    wait_for(read_one)
    out["window"] = settled(counted)
    release.touch()
    out["window result"] = future.result(timeout=60)

    out["in and out"] = list(tenfold(iter(range(200))) >> pool)

    try:
        total(broken()) >> pool
    except LookupError as exc:
        out["broken"] = [str(exc), exc.__notes__]
    try:
        total(unpicklable()) >> pool
    except Exception as exc:
        out["unpicklable"] = [type(exc).__name__, exc.__notes__]
    out["after broken"] = total([1]) >> pool

    try:
        total(5) >> pool
    except TypeError as exc:
        out["not iterable"] = str(exc)
    # `@`: the client's items are sent once; every node of the pool (two) gets them all.
    out["broadcast"] = total(i for i in range(10_000)) @ pool
    stopping = Counted()
    out["broadcast first"] = first(stopping) @ pool  # both nodes read one item, then return
    until(lambda: not feeders(), "the feeders of a broadcast that ended to stop")
    out["taken by broadcast first"] = settled(stopping)

    endless = Counted()
    out["first"] = first(endless) >> pool
    until(lambda: not feeders(), "the feeder of a call that ended to stop")
    out["taken by first"] = settled(endless)

    endless = Counted()
    stream = tenfold(endless) >> pool
    out["abandoned"] = next(stream)
    stream.close()  # the generator stops on its node, and the feed with it
    until(lambda: not feeders(), "the feeder of an abandoned call to stop")
    until(lambda: pool.info()["calls_in_flight"] == 0, "the server to end the call")
    out["taken by abandoned"] = settled(endless)
    out["after abandoned"] = total(range(4)) >> pool

endless = Counted()
with sky.Client("p") as closing:
    running = total(endless) > closing  # sums for ever: its source never ends
    until(lambda: endless.taken > 1000, "the endless call to be fed")
try:
    running.result(timeout=60)
except Exception as exc:  # leaving the block cancelled it
    out["left with a call fed"] = type(exc).__name__
out["feeders after the block"] = feeders()
with sky.Client("p") as again:
    out["after the block"] = total([2]) >> again
print(json.dumps(out))
"""


def test_a_client_streams_iterator_arguments_to_the_node(server: Server) -> None:
    out = server.script(_HELPERS + _SYNC)
    assert out["sums"] == [sum(range(10_000)), 12, 30, 0]
    assert out["two inputs"] == [sum(range(100)), "abc"]
    assert out["group"] == [3, 6]
    assert out["future"] == 45
    assert out["on a node"] == 3
    # The node read the first item while the client's source was still producing.
    assert out["lazy"] == ["first", "second"]
    # The client takes only a window ahead of what the node has read.
    assert out["window"] <= 256 + 128 + 1
    assert out["window result"] == sum(range(20_000))
    assert out["in and out"] == [x * 10 for x in range(200)]
    # A failing source fails the call with its own exception, as in a pool of one's own.
    message, notes = out["broken"]
    assert message == "the source broke"
    assert any("Iterator[...] parameter" in note for note in notes)
    kind, notes = out["unpicklable"]
    assert any("Iterator[...] parameter" in note for note in notes), kind
    assert out["after broken"] == 1
    assert "argument 'xs' of total() is annotated Iterator" in out["not iterable"]
    assert out["broadcast"] == [sum(range(10_000))] * 2
    assert out["broadcast first"] == [0, 0]
    assert out["taken by broadcast first"] <= 256 + 128 + 1
    # A call that returned before reading all, or was abandoned, stops its feed.
    assert out["first"] == 0
    assert out["taken by first"] <= 256 + 128 + 1
    assert out["abandoned"] == 0
    assert out["taken by abandoned"] <= 256 + 128 + 1
    assert out["after abandoned"] == 6
    # Leaving the block cancels a `>` call it still feeds (else it would wait for ever).
    assert out["left with a call fed"] == "CancelledCallError"
    assert out["feeders after the block"] == []
    assert out["after the block"] == 2


_TRIO = """
import trio
import skyward_trio as st


async def in_flight(pool) -> int:
    return (await pool.info())["calls_in_flight"]


async def main():
    out = {}
    async with st.Client("p") as pool:
        out["sums"] = [
            await (total(range(10_000)) >> pool),
            await (total(xs=(i for i in range(5)), scale=3) >> pool),
        ]
        out["two inputs"] = await (pair(range(100), iter("abc")) >> pool)
        out["group"] = list(await ((total([1, 2]) & total(range(4))) >> pool))
        future = await (total(range(10)) > pool)
        out["future"] = await future.result()

        marker = SCRATCH / "trio-got-first"

        def source():
            yield "first"
            wait_for(marker)
            yield "second"

        out["lazy"] = await (signal_on_first(source(), str(marker)) >> pool)
        items = await (tenfold(iter(range(200))) >> pool)
        out["in and out"] = [item async for item in items]
        try:
            await (total(broken()) >> pool)
        except LookupError as exc:
            out["broken"] = [str(exc), exc.__notes__]
        out["after broken"] = await (total([1]) >> pool)
        out["broadcast"] = await (pair(range(100), iter("abc")) @ pool)

        endless = Counted()
        with trio.move_on_after(2) as abandoned:
            await (total(endless) >> pool)  # sums forever, until the caller gives up
        out["abandoned"] = abandoned.cancelled_caught
        while await in_flight(pool):
            await trio.sleep(0.05)
        out["taken by abandoned"] = await trio.to_thread.run_sync(settled, endless)
        out["after abandoned"] = await (total(range(4)) >> pool)
    print(json.dumps(out))


trio.run(main)
"""


def test_a_trio_client_streams_iterator_arguments_too(server: Server) -> None:
    out = server.script(_HELPERS + _TRIO)
    taken = out.pop("taken by abandoned")
    message, notes = out.pop("broken")
    assert message == "the source broke"
    assert any("Iterator[...] parameter" in note for note in notes)
    assert out == {
        "sums": [sum(range(10_000)), 30],
        "two inputs": [sum(range(100)), "abc"],
        "group": [3, 6],
        "future": 45,
        "lazy": ["first", "second"],
        "in and out": [x * 10 for x in range(200)],
        "after broken": 1,
        "broadcast": [[sum(range(100)), "abc"]] * 2,
        "abandoned": True,
        "after abandoned": 6,
    }
    # Abandoned, the call stopped feeding: what was taken stopped growing (settled), and
    # the pool's node is free for the next call.
    assert taken > 0


def test_a_feed_no_call_reads_is_refused(server: Server) -> None:
    state = server.state()
    answer = httpx.post(
        f"{state['url']}/pools/p/feed/nope/0",
        content=b"",
        headers={"authorization": f"Bearer {state['token']}"},
    )
    assert answer.status_code == 404
    assert "no call of pool 'p' takes the items of feed 'nope'" in answer.json()["error"]


# Leaving the block while a `>` call with no Iterator[T] argument still runs cancels it
# too, in both faces: its future raises CancelledCallError saying the client closed (not
# a transport error), the node is told, and the block's end does not wait for the call.
_CLOSING = """
import json
import sys
import time
from pathlib import Path

import trio
import skyward as sky
import skyward_trio as st

SCRATCH = Path(sys.argv[1])


@sky.function
def waits(marker: str) -> str:
    while not Path(marker).exists():
        time.sleep(0.05)
    return "finished"


def until(check, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


out = {}
marker = SCRATCH / "released-at-last"
with sky.Client("p") as closing:
    running = waits(str(marker)) > closing
    until(lambda: closing.info()["calls_in_flight"] == 1, "the call to run")
try:
    running.result(timeout=10)
except Exception as exc:
    out["sync"] = [type(exc).__name__, str(exc)]


async def trio_face():
    async with st.Client("p") as pool:
        future = await (waits(str(marker)) > pool)
        while (await pool.info())["calls_in_flight"] != 1:
            await trio.sleep(0.05)
    with trio.fail_after(10):
        try:
            await future.result()
        except Exception as exc:
            out["trio"] = [type(exc).__name__, str(exc)]


trio.run(trio_face)
with sky.Client("p") as again:
    until(lambda: again.info()["calls_in_flight"] == 0, "the server to end the calls")
    out["in flight"] = again.info()["calls_in_flight"]
marker.touch()
print(json.dumps(out))
"""


def test_leaving_the_block_cancels_a_call_still_running(server: Server) -> None:
    out = server.script(_CLOSING)
    said = [
        "CancelledCallError",
        "the call to waits() was cancelled: its client closed while it ran",
    ]
    assert out == {"sync": said, "trio": said, "in flight": 0}
