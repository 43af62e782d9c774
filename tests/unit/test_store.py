"""The collections store's semantics, over in-memory streams (no nodes): waits, timeouts
(virtual time), and what a closing connection gives back."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing

from skyward_trio import _collections as ops
from skyward_trio import _serial, _wire
from skyward_trio._store import LocalClient, Store, hello_problem
from skyward_trio._version import PYTHON_VERSION, __version__


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Peer:
    """One connection to the store, as a node's process has."""

    def __init__(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        self._stream = stream
        self.scope = scope  # cancelling it closes the connection, as a dying node does
        self._decoder = _wire.FrameDecoder(expect_hello=False)
        self._ids = itertools.count(1)
        self._replies: dict[int, tuple[bool, Any]] = {}

    async def send(self, op: int, name: str, *args: Any) -> int:
        request = next(self._ids)
        await self._stream.send_all(b"".join(_wire.encode((request, op, name, *args))))
        return request

    async def reply(self, request: int) -> tuple[bool, Any]:
        while request not in self._replies:
            for message in self._decoder.feed(await self._stream.receive_some()):
                self._replies[message[0]] = (message[1], message[2])
        return self._replies.pop(request)

    async def call(self, op: int, name: str, *args: Any) -> Any:
        ok, value = await self.reply(await self.send(op, name, *args))
        if not ok:
            ops.raise_failure(value)
        return value

    def answered(self, request: int) -> bool:
        return request in self._replies


def _serving(store: Store, nursery: trio.Nursery) -> Peer:
    """A connection to ``store``, served in ``nursery``."""
    client, server = trio.testing.memory_stream_pair()
    scope = trio.CancelScope()

    async def serve() -> None:
        with scope:
            await store.serve(server, _wire.FrameDecoder(expect_hello=False), "peer")

    nursery.start_soon(serve)
    return Peer(client, scope)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[], Peer]]:
    store = Store(b"secret")
    async with trio.open_nursery() as nursery:
        yield lambda: _serving(store, nursery)
        nursery.cancel_scope.cancel()


def key(value: Any) -> _serial.Payload:
    return _serial.dumps(value)


async def test_dict_set_and_counter_operations(connect: Callable[[], Peer]) -> None:
    peer = connect()
    await peer.call(ops.D_SET, "d", key((1, "a")), _serial.dumps([1, 2]))
    found, value = await peer.call(ops.D_GET, "d", key((1, "a")))
    assert found
    assert _serial.loads(value) == [1, 2]
    assert await peer.call(ops.D_HAS, "d", key(1.0)) is False
    assert await peer.call(ops.D_DEL, "d", key((1, "a"))) is True
    assert await peer.call(ops.D_DEL, "d", key((1, "a"))) is False
    await peer.call(ops.S_ADD, "s", key(1))
    await peer.call(ops.S_ADD, "s", key(1.0))  # equal members are one member, as in a set
    assert await peer.call(ops.S_LEN, "s") == 1
    assert await peer.call(ops.C_ADD, "c", 5) == 5
    assert await peer.call(ops.C_ADD, "c", -2) == 3
    # Different kinds of collection with one name are different collections.
    assert await peer.call(ops.C_GET, "d") == 0


async def test_a_queue_get_waits_for_a_put_and_items_go_out_in_order(
    connect: Callable[[], Peer],
) -> None:
    reader, writer = connect(), connect()
    waiting = await reader.send(ops.Q_GET, "q", None)
    await trio.testing.wait_all_tasks_blocked()
    assert not reader.answered(waiting)
    for item in range(3):
        await writer.call(ops.Q_PUT, "q", _serial.dumps(item))
    ok, value = await reader.reply(waiting)
    assert ok
    assert _serial.loads(value) == 0
    assert [_serial.loads(await reader.call(ops.Q_GET, "q", None)) for _ in range(2)] == [1, 2]


async def test_a_queue_get_times_out_and_later_items_are_kept(
    connect: Callable[[], Peer], autojump_clock: trio.testing.MockClock
) -> None:
    peer = connect()
    start = trio.current_time()
    with pytest.raises(TimeoutError, match=r"sky.queue\('q'\).get\(timeout=5.0\)"):
        await peer.call(ops.Q_GET, "q", 5.0)
    assert trio.current_time() - start == 5.0
    await peer.call(ops.Q_PUT, "q", _serial.dumps("kept"))
    assert await peer.call(ops.Q_LEN, "q") == 1


async def test_an_item_is_not_handed_to_a_closed_or_cancelled_reader(
    connect: Callable[[], Peer],
) -> None:
    gone, cancelled, writer = connect(), connect(), connect()
    await gone.send(ops.Q_GET, "q", None)
    waiting = await cancelled.send(ops.Q_GET, "q", None)
    await trio.testing.wait_all_tasks_blocked()
    gone.scope.cancel()
    await cancelled.call(ops.CANCEL, "q", waiting)
    await writer.call(ops.Q_PUT, "q", _serial.dumps("x"))
    assert await writer.call(ops.Q_LEN, "q") == 1


async def test_a_lock_is_exclusive_and_passes_to_the_next_waiter(
    connect: Callable[[], Peer],
) -> None:
    first, second = connect(), connect()
    await first.call(ops.L_ACQUIRE, "l", "t1", None)
    waiting = await second.send(ops.L_ACQUIRE, "l", "t2", None)
    await trio.testing.wait_all_tasks_blocked()
    assert not second.answered(waiting)
    with pytest.raises(RuntimeError, match="does not hold the lock"):
        await second.call(ops.L_RELEASE, "l", "t2")
    await first.call(ops.L_RELEASE, "l", "t1")
    assert await second.reply(waiting) == (True, None)


async def test_a_lock_acquire_times_out(
    connect: Callable[[], Peer], autojump_clock: trio.testing.MockClock
) -> None:
    holder, other = connect(), connect()
    await holder.call(ops.L_ACQUIRE, "l", "t1", None)
    start = trio.current_time()
    with pytest.raises(TimeoutError, match=r"sky.lock\('l'\) was not free"):
        await other.call(ops.L_ACQUIRE, "l", "t2", 30.0)
    assert trio.current_time() - start == 30.0
    # The timed-out waiter is not handed the lock later.
    await holder.call(ops.L_RELEASE, "l", "t1")
    await holder.call(ops.L_ACQUIRE, "l", "t3", 0.0)


async def test_a_closed_connection_releases_its_locks(connect: Callable[[], Peer]) -> None:
    holder, waiter = connect(), connect()
    await holder.call(ops.L_ACQUIRE, "l", "t1", None)
    waiting = await waiter.send(ops.L_ACQUIRE, "l", "t2", None)
    await trio.testing.wait_all_tasks_blocked()
    holder.scope.cancel()  # the holder's node died
    assert await waiter.reply(waiting) == (True, None)


async def test_a_barrier_releases_all_at_n_and_is_reusable(connect: Callable[[], Peer]) -> None:
    a, b = connect(), connect()
    first = await a.send(ops.B_WAIT, "b", 2)
    await trio.testing.wait_all_tasks_blocked()
    assert not a.answered(first)
    assert await b.call(ops.B_WAIT, "b", 2) == 0
    assert await a.reply(first) == (True, 0)
    second = await a.send(ops.B_WAIT, "b", 2)
    assert await b.call(ops.B_WAIT, "b", 2) == 1
    assert await a.reply(second) == (True, 1)
    with pytest.raises(ValueError, match="made with n=2"):
        await a.call(ops.B_WAIT, "b", 3)


async def test_a_participant_that_left_does_not_count(connect: Callable[[], Peer]) -> None:
    gone, a, b = connect(), connect(), connect()
    await gone.send(ops.B_WAIT, "b", 2)
    await trio.testing.wait_all_tasks_blocked()
    gone.scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    first = await a.send(ops.B_WAIT, "b", 2)
    await trio.testing.wait_all_tasks_blocked()
    assert not a.answered(first)
    assert await b.call(ops.B_WAIT, "b", 2) == 0


def test_hello_needs_the_secret_and_matching_versions() -> None:
    good = {"secret": "s3", "python": PYTHON_VERSION, "skyward": __version__}
    assert hello_problem(good, b"s3") is None
    assert "wrong pool secret" in str(hello_problem({**good, "secret": "nope"}, b"s3"))
    assert "version mismatch" in str(hello_problem({**good, "skyward": "0.0"}, b"s3"))


async def test_the_store_listens_on_the_given_address_only_and_checks_the_secret() -> None:
    store = Store(b"s3")
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(store.listen, "127.0.0.1")
        assert host == "127.0.0.1"
        async with await trio.open_tcp_stream(host, port) as stream:
            hello = {"secret": "wrong", "python": PYTHON_VERSION, "skyward": __version__}
            await stream.send_all(_wire.encode_hello(hello))
            decoder = _wire.FrameDecoder(expect_hello=True)
            answer: list[Any] = []
            while not answer:
                answer = decoder.feed(await stream.receive_some())
            assert answer[0]["ok"] is False
            assert "wrong pool secret" in answer[0]["error"]
            assert await stream.receive_some() == b""  # and it hangs up
        nursery.cancel_scope.cancel()


async def test_a_returned_item_goes_back_to_the_head_of_the_queue(
    connect: Callable[[], Peer],
) -> None:
    peer = connect()
    await peer.call(ops.Q_PUT, "q", _serial.dumps("second"))
    await peer.call(ops.Q_RETURN, "q", _serial.dumps("first"))
    assert _serial.loads(await peer.call(ops.Q_GET, "q", None)) == "first"
    assert await peer.call(ops.CANCEL, "q", 12345) is False  # nothing waits under that id


async def test_the_clients_own_connection_when_it_runs_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Store(b"secret")
    local = LocalClient(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(local.run)
        assert await local.call(ops.C_ADD, "c", 2) == 2
        await local.call(ops.L_ACQUIRE, "l", "mine", None)
        with trio.move_on_after(1):
            await local.call(ops.Q_GET, "q", None)  # cancelled while it waits: takes nothing
        await local.call(ops.Q_PUT, "q", _serial.dumps("kept"))
        assert await local.call(ops.Q_LEN, "q") == 1
        with pytest.raises(TimeoutError):
            await local.call(ops.L_ACQUIRE, "l", "other", 5.0)
        local.close()  # the pool closes: the client's lock is released
        nursery.cancel_scope.cancel()
    assert store._locks["l"].owner is None


async def test_a_replica_follows_the_store_and_a_new_store_takes_up_its_contents(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from skyward_trio._store import _SYNC_WAIT, Replica

    first, replica = Store(b"secret"), Replica()
    async with trio.open_nursery() as nursery:
        peer = _serving(first, nursery)
        await peer.call(ops.D_SET, "d", key((1, "a")), _serial.dumps([1, 2]))
        await peer.call(ops.D_SET, "d", key("gone"), _serial.dumps(0))
        await peer.call(ops.S_ADD, "s", key("x"))
        await peer.call(ops.C_ADD, "c", 5)
        for item in range(3):
            await peer.call(ops.Q_PUT, "q", _serial.dumps(item))
        await peer.call(ops.Q_GET, "q", None)  # takes 0
        # The first sync brings the whole state; the next ones what changed since.
        answer = await peer.call(ops.SYNC, "", replica.epoch, replica.seq)
        assert answer[0] == "snapshot"
        replica.take(answer)
        await peer.call(ops.D_POP, "d", key("gone"))
        await peer.call(ops.BATCH, "", [(ops.S_ADD, "s", (key(7),)), (ops.C_ADD, "c", (2,))])
        await peer.call(ops.Q_PUT, "q", _serial.dumps(3))
        await peer.call(ops.Q_GET, "q", None)  # takes 1
        await peer.call(ops.Q_RETURN, "q", _serial.dumps("back"))  # a cancelled get's item
        answer = await peer.call(ops.SYNC, "", replica.epoch, replica.seq)
        assert answer[0] == "delta"
        assert len(answer[2]) == 6
        replica.take(answer)
        # A sync waits for a change: with none, it answers an empty delta after a while.
        before = trio.current_time()
        answer = await peer.call(ops.SYNC, "", replica.epoch, replica.seq)
        assert (answer[0], answer[2]) == ("delta", [])
        assert trio.current_time() - before == _SYNC_WAIT
        state = replica.state()
        assert state is not None

        # A new store takes the contents up once, before anything is written to it.
        second = Store(b"secret")
        fresh = _serving(second, nursery)
        assert await fresh.call(ops.RESTORE, "", state) is True
        assert await fresh.call(ops.RESTORE, "", state) is False
        found, value = await fresh.call(ops.D_GET, "d", key((1, "a")))
        assert found
        assert _serial.loads(value) == [1, 2]
        assert await fresh.call(ops.D_HAS, "d", key("gone")) is False
        assert await fresh.call(ops.S_HAS, "s", key(7)) is True
        assert await fresh.call(ops.S_LEN, "s") == 2
        assert await fresh.call(ops.C_GET, "c") == 7
        items = [_serial.loads(await fresh.call(ops.Q_GET, "q", None)) for _ in range(3)]
        assert items == ["back", 2, 3]
        assert await fresh.call(ops.Q_LEN, "q") == 0
        # A store written to refuses: it is not new (a reconnection reached it again).
        assert await peer.call(ops.RESTORE, "", state) is False
        nursery.cancel_scope.cancel()


async def test_a_replica_too_far_behind_is_sent_the_whole_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from skyward_trio import _store
    from skyward_trio._store import Replica

    monkeypatch.setattr(_store, "_LOG_MOST", 3)
    store, replica = Store(b"secret"), Replica()
    async with trio.open_nursery() as nursery:
        peer = _serving(store, nursery)
        replica.take(await peer.call(ops.SYNC, "", replica.epoch, replica.seq))
        for n in range(5):
            await peer.call(ops.C_ADD, "c", 1)
            await peer.call(ops.Q_PUT, "q", _serial.dumps(n))
        answer = await peer.call(ops.SYNC, "", replica.epoch, replica.seq)
        assert answer[0] == "snapshot"
        replica.take(answer)
        assert replica.store._counters["c"] == 5
        assert len(replica.store._queues["q"].items) == 5
        # A replica of another store (its epoch) is sent the whole state too.
        answer = await peer.call(ops.SYNC, "", "another", replica.seq)
        assert answer[0] == "snapshot"
        replica.take(answer)
        # So is one whose log's values passed their bound: the log, which would keep
        # overwritten values alive, is dropped at once.
        monkeypatch.setattr(_store, "_LOG_BYTES_MOST", 4096)
        await peer.call(ops.D_SET, "d", key("k"), _serial.dumps(os.urandom(8192)))
        assert store._log is None
        answer = await peer.call(ops.SYNC, "", replica.epoch, replica.seq)
        assert answer[0] == "snapshot"
        nursery.cancel_scope.cancel()
    assert Replica().state() is None  # nothing to give a new store


async def test_a_state_with_a_key_that_cannot_load_is_taken_up_not_at_all() -> None:
    store = Store(b"secret")
    junk: _serial.Payload = (b"not a pickle", False, [], [])
    state = {
        "dicts": {"d": [(junk, _serial.dumps(1))]},
        "sets": {},
        "counters": {"c": 3},
        "queues": {},
    }
    async with trio.open_nursery() as nursery:
        peer = _serving(store, nursery)
        with pytest.raises(TypeError, match="could not be unpickled on the head node"):
            await peer.call(ops.RESTORE, "", state)
        assert await peer.call(ops.C_GET, "c") == 0  # nothing of it was taken
        nursery.cancel_scope.cancel()


async def test_a_replica_past_its_size_is_dropped_and_no_longer_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from skyward_trio import _store
    from skyward_trio._store import Replica

    monkeypatch.setattr(_store, "_MEASURE_AFTER", 0)  # measured after every sync here
    store, replica = Store(b"secret"), Replica(most=4096)
    async with trio.open_nursery() as nursery:
        peer = _serving(store, nursery)
        await peer.call(ops.D_SET, "d", key("small"), _serial.dumps(b"x" * 100))
        replica.take(await peer.call(ops.SYNC, "", replica.epoch, replica.seq))
        assert (replica.stopped, replica.state() is not None) == ("", True)
        await peer.call(ops.Q_PUT, "q", _serial.dumps(os.urandom(8192)))  # incompressible
        replica.take(await peer.call(ops.SYNC, "", replica.epoch, replica.seq))
        assert "more than the client keeps a copy of" in replica.stopped
        assert replica.state() is None  # a new store would start empty, as before copies
        replica.take(await peer.call(ops.SYNC, "", "", 0))  # ignored from now on
        assert replica.state() is None
        nursery.cancel_scope.cancel()
