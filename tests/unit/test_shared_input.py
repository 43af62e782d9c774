"""A broadcast's one-shot ``Iterator[T]`` argument, read once for every node
(``skyward_trio._pool._Shared``): each reader gets every item in order, the source is read
once, at most ``lead`` items are held for the slowest reader, a reader that leaves holds
no one back, and what the source raises every reader raises."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import trio

from skyward_trio import _serial
from skyward_trio._pool import PreparedCall, _releasing, _Shared


def values(payloads: list[_serial.Payload]) -> list[object]:
    return [_serial.loads(p) for p in payloads]


def counted(n: int, read: list[int]) -> Iterator[int]:
    for x in range(n):
        read.append(x)
        yield x


def test_every_reader_gets_every_item_and_the_source_is_read_once() -> None:
    read: list[int] = []
    shared = _Shared(counted(10, read), readers=3, lead=100)
    got = [values(shared.take(r, 100)) for r in range(3)]
    assert got == [list(range(10))] * 3
    assert read == list(range(10))
    assert [shared.take(r, 5) for r in range(3)] == [[], [], []]  # the end, for each


def test_a_reader_ahead_by_lead_waits_for_the_slowest() -> None:
    read: list[int] = []
    shared = _Shared(counted(100, read), readers=2, lead=4)
    assert values(shared.take(0, 4)) == [0, 1, 2, 3]
    ahead: list[object] = []
    leader = threading.Thread(target=lambda: ahead.extend(values(shared.take(0, 3))))
    leader.start()
    leader.join(0.3)
    assert leader.is_alive()  # 4 ahead of reader 1, which has taken none
    assert len(read) == 4  # so nothing more was read: at most 4 items are held
    assert values(shared.take(1, 3)) == [0, 1, 2]  # now the leader may take up to 6
    leader.join(5)
    assert not leader.is_alive()
    assert ahead == [4, 5, 6]


def test_a_reader_that_leaves_holds_no_one_back() -> None:
    shared = _Shared(iter(range(50)), readers=2, lead=2)
    assert values(shared.take(1, 1)) == [0]
    shared.leave(1)
    assert values(shared.take(0, 50)) == list(range(50))
    assert shared.take(1, 3) == []  # what left gets no more


def test_what_the_source_raises_every_reader_raises() -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise LookupError("the source broke")

    shared = _Shared(broken(), readers=2, lead=10)
    with pytest.raises(LookupError, match="the source broke"):
        shared.take(0, 5)
    assert values(shared.take(1, 1)) == [1]  # what was read before still arrives
    with pytest.raises(LookupError, match="the source broke"):
        shared.take(1, 5)


def test_readers_in_threads_each_get_everything_in_order() -> None:
    read: list[int] = []
    shared = _Shared(counted(3_000, read), readers=4, lead=16)
    got: dict[int, list[object]] = {r: [] for r in range(4)}

    def reader(r: int) -> None:
        while chunk := shared.take(r, 7 + r):
            got[r].extend(values(chunk))

    threads = [threading.Thread(target=reader, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(got[r] == list(range(3_000)) for r in range(4))
    assert read == list(range(3_000))


async def test_a_node_whose_call_ends_before_it_reads_holds_no_one_back() -> None:
    """A broadcast's node whose call failed (or was cancelled) before its feeder started
    gives up its share of the input all the same: the others read on past the window."""
    shared = _Shared(iter(range(100)), readers=2, lead=4)
    call = PreparedCall("k", b"f", b"a", "f", None, inputs=(shared.reader(1),))

    async def lost(target: int) -> None:
        raise RuntimeError(f"node {target} was lost before the call was sent")

    with pytest.raises(RuntimeError, match="node 1 was lost"):
        await _releasing(call, lost, target=1)
    with trio.fail_after(5):  # it would wait for reader 1 for ever, 4 items in
        got = await trio.to_thread.run_sync(shared.take, 0, 100, abandon_on_cancel=True)
    assert values(got) == list(range(100))
