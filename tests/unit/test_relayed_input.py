"""A ``sky.Client``'s ``Iterator[T]`` items, relayed: the feed requests' bodies, the
client's chunking, and the pool's side (``RelayedInput``), which holds a request back
until the node has room for its items."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from skyward_trio import _serial
from skyward_trio._client import feed_end, feed_failed, feed_items, next_chunk
from skyward_trio._connection import Credits
from skyward_trio._pool import RelayedInput, RelayedInputError, _fan_batches, _relay_one
from skyward_trio._server import _BadRequest, _parse_batch


def test_items_travel_to_the_server_as_pickled_here() -> None:
    array = np.arange(100_000, dtype=np.float64)  # out-of-band buffers
    values = [1, "two", array]
    payloads, failed = _parse_batch(bytearray(feed_items([_serial.dumps(v) for v in values])))
    assert failed is None
    assert payloads is not None
    back = [_serial.loads(p) for p in payloads]
    assert back[:2] == [1, "two"]
    assert np.array_equal(back[2], array)


def test_the_end_and_a_failure_are_batches_of_their_own() -> None:
    assert _parse_batch(bytearray(feed_end())) == (None, None)
    assert _parse_batch(bytearray(feed_failed(LookupError("broke")))) == (
        None,
        "LookupError: broke",
    )


@pytest.mark.parametrize("body", [b"\x00\x00\x00\x02{}", b'\x00\x00\x00\x0b{"blobs":[]}'])
def test_a_feed_request_that_is_not_items_is_refused(body: bytes) -> None:
    with pytest.raises(_BadRequest, match="not a feed's items"):
        _parse_batch(bytearray(body))


def test_the_client_takes_what_the_node_has_room_for_and_one_at_least() -> None:
    assert next_chunk(1, 0.0, 255) == (2, 2)  # a fast source: chunks double
    assert next_chunk(64, 0.0, 255) == (128, 128)
    assert next_chunk(128, 0.0, 255) == (128, 128)  # up to the pool's chunk
    assert next_chunk(128, 0.0, 5) == (128, 5)  # no more than the room
    assert next_chunk(128, 0.0, 0) == (128, 1)  # one, whose request waits for room
    assert next_chunk(128, 0.1, 255) == (1, 1)  # a slow source: one at a time


class _Conn:
    """The connection's input side: what was sent, and the window."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.ended: list[tuple[int, int]] = []
        self.credits = Credits(0)

    def input_credits(self, task_id: int, slot: int, window: int) -> Credits:
        self.credits = Credits(window)
        return self.credits

    def drop_input_credits(self, task_id: int, slot: int) -> None:
        pass

    def send_input(self, task_id: int, slot: int, payloads: list[Any]) -> None:
        self.sent += payloads

    def end_input(self, task_id: int, slot: int) -> None:
        self.ended.append((task_id, slot))


class _Inflight:
    def __init__(self, conn: _Conn) -> None:
        self.node = self
        self.conn = conn
        self.task_id = 7
        self.cancelled = False
        self.feeders = trio.CancelScope()  # as the pool's: cancelled when the call ends

    def cancel(self) -> None:
        self.cancelled = True
        self.feeders.cancel()


async def _feed(inflight: _Inflight, source: RelayedInput) -> None:
    with inflight.feeders:
        await _relay_one(inflight, 0, source)  # type: ignore[arg-type]


async def test_a_relayed_batch_waits_for_room_on_the_node() -> None:
    conn = _Conn()
    source = RelayedInput()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_relay_one, _Inflight(conn), 0, source)
        assert await source.put(list(range(10))) == 246  # the window is 256
        answered: list[int | None] = []

        async def big() -> None:
            answered.append(await source.put(list(range(300))))

        nursery.start_soon(big)
        await trio.testing.wait_all_tasks_blocked()
        assert len(conn.sent) == 256  # the rest held back: the node has no room
        assert not answered
        conn.credits.grant(100)  # the node read 100
        await trio.testing.wait_all_tasks_blocked()
        assert answered == [46]
        assert len(conn.sent) == 310
        assert await source.put(None) == 0
    assert conn.ended == [(7, 0)]
    assert source.ended
    assert await source.put([1]) is None  # the call reads no more


async def test_a_put_the_call_never_takes_hears_that_it_ended() -> None:
    source = RelayedInput()
    answered: list[int | None] = []
    async with trio.open_nursery() as nursery:

        async def put() -> None:
            answered.append(await source.put([1]))

        nursery.start_soon(put)
        await trio.testing.wait_all_tasks_blocked()
        source.end()  # the server: the call ended before its feeder ran
    assert answered == [None]


async def test_a_failed_source_fails_the_feeder_with_what_it_raised() -> None:
    conn = _Conn()
    source = RelayedInput()
    answered: list[int | None] = []
    async with trio.open_nursery() as nursery:

        async def fail() -> None:
            answered.append(await source.put(None, failed="LookupError: broke"))

        nursery.start_soon(fail)
        with pytest.raises(RelayedInputError, match=r"^LookupError: broke$"):
            await _relay_one(_Inflight(conn), 0, source)
    assert answered == [None]
    assert conn.ended == []


async def test_a_source_ended_before_its_relay_reads_ends_the_relay_quietly() -> None:
    # The call ended (end() closes the channel) before the relay asked for a batch: the
    # channel's ClosedResourceError used to escape into the pool.
    conn = _Conn()
    source = RelayedInput()
    source.end()
    await _relay_one(_Inflight(conn), 0, source)
    assert conn.sent == []
    assert conn.ended == []  # not the items' end: the call is over


async def test_a_broadcast_source_ended_before_its_fan_out_reads_ends_every_copy() -> None:
    # A broadcast through the server whose calls ended (as `first(xs) @ pool` does) just
    # before the fan-out asked for the client's next batch: the channel's
    # ClosedResourceError used to escape into the pool, which then closed (a CI flake of
    # test_client_inputs.py).
    source = RelayedInput()
    copies = [RelayedInput(), RelayedInput()]
    source.end()
    await _fan_batches(source, copies)
    assert all(copy.ended for copy in copies)
