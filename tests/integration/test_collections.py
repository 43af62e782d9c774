"""Distributed collections on real Local nodes (2 nodes, both executors): the concurrency
invariants (every increment counted, a queue's items once each in FIFO order, mutual
exclusion, a barrier that waits for all), the client's view, and a lock freed by a
node's death."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

import skyward as sky
import skyward_trio
from skyward import testing
from skyward_trio._collections import Lock

SILENT = sky.Options(console="silent")
# Hang guards only: nothing here is expected to take more than a few seconds.
GUARD = 120


def _placed(placement: str) -> contextlib.AbstractContextManager[object]:
    """Where the store runs: on node 0, or in the client (as for standalone machines)."""
    return testing.standalone_nodes() if placement == "client" else contextlib.nullcontext()


@pytest.fixture(
    scope="module",
    params=[("thread", "head"), ("process", "head"), ("thread", "client"), ("process", "client")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def pool(request: pytest.FixtureRequest) -> Iterator[sky.Pool]:
    executor, placement = request.param
    worker = sky.Worker(concurrency=3, executor=executor)
    with contextlib.ExitStack() as stack:
        # Armed only while the pool opens: the other tests' pools must not see it.
        with _placed(placement):
            options = sky.Options(console="silent", worker=worker)
            pool = stack.enter_context(sky.Compute(nodes=2, options=options))
        assert (pool._core._supervisor.store is not None) == (placement == "client")
        yield pool


def _name() -> str:
    return uuid.uuid4().hex[:8]


@sky.function
def bump(name: str, times: int) -> tuple[int, list[int]]:
    counter = sky.counter(name)
    return sky.instance_info().node, [counter.increment() for _ in range(times)]


def test_a_counter_counts_every_increment(pool: sky.Pool) -> None:
    name, tasks, times = _name(), 8, 25
    results = sky.gather(*[bump(name, times) for _ in range(tasks)]) >> pool
    assert {node for node, _ in results} == {0, 1}
    assert pool.counter(name).value == tasks * times
    # Each increment saw a value no other did: they were applied one at a time.
    seen = sorted(value for _, values in results for value in values)
    assert seen == list(range(1, tasks * times + 1))


@sky.function
def fill(name: str, count: int) -> int:
    queue = sky.queue(name)
    for item in range(count):
        queue.put({"item": item})
    return sky.instance_info().node


@sky.function
def drain(name: str, count: int) -> tuple[int, list[int]]:
    queue = sky.queue(name)
    return sky.instance_info().node, [queue.get(timeout=GUARD)["item"] for _ in range(count)]


def test_a_queue_filled_on_one_node_and_drained_on_another(pool: sky.Pool) -> None:
    name, count = _name(), 300
    drained = pool.run_async(drain(name, count), target=1)  # waits for items that come later
    assert pool.run(fill(name, count), target=0) == 0
    node, items = drained.result(timeout=GUARD)
    assert node == 1
    assert items == list(range(count))  # each item once, in FIFO order
    assert pool.queue(name).empty()


@sky.function
def critical(name: str, rounds: int) -> list[tuple[int, float, float]]:
    inside = sky.counter(f"{name}-inside")
    spans = []
    for _ in range(rounds):
        with sky.lock(name, timeout=GUARD):
            start = time.monotonic()
            occupants = inside.increment()
            time.sleep(0.002)
            inside.decrement()
            spans.append((occupants, start, time.monotonic()))
    return spans


def test_a_lock_gives_mutual_exclusion(pool: sky.Pool) -> None:
    name = _name()
    results = sky.gather(*[critical(name, 10) for _ in range(6)]) >> pool
    spans = sorted(span for spans in results for span in spans)
    assert len(spans) == 60
    assert all(occupants == 1 for occupants, _, _ in spans)
    # Local nodes share this machine's monotonic clock: no two critical sections overlap.
    ordered = sorted((start, end) for _, start, end in spans)
    for (_, end), (next_start, _) in itertools.pairwise(ordered):
        assert end <= next_start


@sky.function
def meet(name: str, me: str, other: str) -> tuple[int, list[tuple[int, bool]]]:
    seen = sky.dict(f"{name}-arrived")
    barrier = sky.barrier(name, n=2)
    phases = []
    for phase in range(2):
        seen[(me, phase)] = True
        released = barrier.wait()
        phases.append((released, seen.get((other, phase), False)))
    return sky.instance_info().node, phases


def test_a_barrier_releases_both_nodes_and_not_before(pool: sky.Pool) -> None:
    name = _name()
    first = pool.run_async(meet(name, "a", "b"), target=0)
    arrived = pool.dict(f"{name}-arrived")
    deadline = time.monotonic() + GUARD
    while ("a", 0) not in arrived:
        assert time.monotonic() < deadline, "the first task never reached the barrier"
        time.sleep(0.02)
    assert not first.done()  # alone at the barrier: it waits
    second = pool.run(meet(name, "b", "a"), target=1)
    # Each was released only after the other had arrived, in both phases of the barrier.
    assert first.result(timeout=GUARD) == (0, [(0, True), (1, True)])
    assert second == (1, [(0, True), (1, True)])


@sky.function
def read_back(name: str) -> dict[str, Any]:
    d, s, q = sky.dict(name), sky.set(name), sky.queue(name)
    return {"x": d["x"], "member": "m" in s, "size": len(s), "item": q.get(timeout=GUARD)}


def test_the_client_and_the_nodes_see_the_same_collections(pool: sky.Pool) -> None:
    name = _name()
    d, s, q, c = pool.dict(name), pool.set(name), pool.queue(name), pool.counter(name)
    d["x"] = [1, 2, 3]
    d.update({"y": 2, "z": 3})
    d.update([("w", 4)])
    s.add("m")
    s.add("m")
    q.put("hello")
    assert pool.run(read_back(name)) == {"x": [1, 2, 3], "member": True, "size": 1, "item": "hello"}
    assert "y" in d
    assert d.get("nope", 7) == 7
    assert d.pop("z") == 3
    assert d.pop("z", None) is None
    del d["y"]
    with pytest.raises(KeyError):
        d["y"]
    with pytest.raises(KeyError):
        del d["y"]
    s.discard("m")
    s.discard("absent")
    assert len(s) == 0
    assert "m" not in s
    assert c.increment(5) == 5
    assert c.decrement() == 4
    assert int(c) == 4
    c.reset(10)
    assert c.value == 10
    assert q.empty()
    assert len(q) == 0
    with pytest.raises(TimeoutError, match="found no item"):
        q.get(timeout=0.05)


def test_client_errors_name_the_problem(pool: sky.Pool) -> None:
    name = _name()
    with pytest.raises(sky.SerializationError, match="value of type lock cannot be pickled"):
        pool.dict(name)["k"] = threading.Lock()
    with pytest.raises(TypeError, match="key \\[1\\] is unhashable"):
        pool.dict(name)[[1]] = 1
    with pytest.raises(RuntimeError, match="is not held by this Lock object"):
        pool.lock(name).release()
    with pytest.raises(ValueError, match='consistency must be None, "strong" or "eventual"'):
        pool.dict(name, consistency="weak")
    holder, other = pool.lock(name), pool.lock(name, timeout=0.05)
    with holder, pytest.raises(TimeoutError, match="was not free within its timeout"):
        other.acquire()


@sky.function
def bump_eventually(name: str, times: int) -> tuple[int, bool]:
    counter = sky.counter(name, consistency="eventual")
    seen = sky.dict(name, consistency="eventual")
    for _ in range(times):
        counter.increment()
    node = sky.instance_info().node
    seen[node] = True
    return node, seen[node] is True  # a process reads its own writes at once


def test_eventual_collections_lose_no_write(pool: sky.Pool) -> None:
    name, tasks, times = _name(), 8, 200
    results = sky.gather(*[bump_eventually(name, times) for _ in range(tasks)]) >> pool
    assert {node for node, _ in results} == {0, 1}
    assert all(own_write for _, own_write in results)
    # Writes reach the store a batch at a time, a little after the tasks return.
    counter, seen = pool.counter(name), pool.dict(name)
    deadline = time.monotonic() + GUARD
    while counter.value != tasks * times or seen.get(0) is None or seen.get(1) is None:
        assert counter.value <= tasks * times, "an increment was applied twice"
        assert time.monotonic() < deadline, f"only {counter.value} increments arrived"
        time.sleep(0.02)


@sky.function
def bump_and_exit(name: str, times: int) -> None:
    counter = sky.counter(name, consistency="eventual")
    for _ in range(times):
        counter.increment()


def test_a_subprocess_that_ends_sends_its_last_batch_first() -> None:
    name = _name()
    worker = sky.Worker(executor="process", reuse_processes=False)
    with sky.Compute(nodes=1, options=sky.Options(console="silent", worker=worker)) as pool:
        for _ in range(3):
            pool.run(bump_and_exit(name, 100))  # each in a fresh subprocess that then exits
        counter = pool.counter(name)
        deadline = time.monotonic() + GUARD
        while counter.value != 300:
            assert time.monotonic() < deadline, f"only {counter.value} increments arrived"
            time.sleep(0.02)


@sky.function
def lock_and_die(name: str) -> None:
    sky.lock(name).acquire()
    os._exit(3)


def test_a_lock_held_by_a_subprocess_that_died_is_released(pool: sky.Pool) -> None:
    if pool._core.worker_config.resolved_executor != "process":
        pytest.skip("a task thread cannot die alone: see the node-loss test")
    name = _name()
    with pytest.raises(sky.ChildDied):
        pool.run(lock_and_die(name))
    assert pool.run(take_lock(name)) in (0, 1)


@sky.function
def with_event_loops(name: str) -> tuple[int, int]:
    async def under_trio() -> int:
        d = sky.dict(name)
        await d.setitem_async("k", 1)
        async with sky.lock(name):
            return int(await d.getitem_async("k")) + await sky.counter(name).increment_async()

    async def under_asyncio() -> int:
        q = sky.queue(name)
        await q.put_async(41)
        return int(await q.get_async(timeout=GUARD)) + await sky.counter(name).value_async()

    return trio.run(under_trio), asyncio.run(under_asyncio())


def test_async_variants_inside_a_running_function(pool: sky.Pool) -> None:
    assert pool.run(with_event_loops(_name())) == (2, 42)


def _give_up(queue: Any, lock: Callable[[], Lock]) -> list[str]:
    """``queue.get_async()`` and ``lock().acquire_async()``, awaited under asyncio and under
    trio, each given up while it waits (the queue is empty, and the lock held)."""
    gave_up: list[str] = []

    async def under_asyncio() -> None:
        for wait in (queue.get_async(), lock().acquire_async()):
            try:
                await asyncio.wait_for(wait, 0.3)
            except TimeoutError:
                gave_up.append("asyncio")

    async def under_trio() -> None:
        with trio.move_on_after(0.3) as scope:
            await queue.get_async()
        with trio.move_on_after(0.3) as other:
            await lock().acquire_async()
        gave_up.extend("trio" for s in (scope, other) if s.cancelled_caught)

    asyncio.run(under_asyncio())
    trio.run(under_trio)
    return gave_up


@sky.function
def give_up_waits(name: str) -> list[str]:
    return _give_up(sky.queue(name), lambda: sky.lock(name, timeout=None))


def _nothing_was_taken(pool: sky.Pool, name: str, holder: Lock) -> None:
    """Once the waits above were given up, the item put next and the lock released next
    go to whoever asks next, not to a wait given up."""
    pool.queue(name).put("kept")
    holder.release()
    assert pool.queue(name).get(timeout=10) == "kept"
    taker = pool.lock(name, timeout=10)
    taker.acquire()
    taker.release()


def test_a_wait_given_up_on_a_node_takes_nothing(pool: sky.Pool) -> None:
    name = _name()
    holder = pool.lock(name)
    holder.acquire()
    future = give_up_waits(name) > pool
    try:
        # A wait given up used to leave its thread waiting, and asyncio.run() waits for
        # that thread as it ends: the call never came back.
        assert future.result(timeout=GUARD) == ["asyncio", "asyncio", "trio", "trio"]
    except BaseException:
        holder.release()
        raise
    _nothing_was_taken(pool, name, holder)


def test_a_wait_given_up_in_the_client_takes_nothing(pool: sky.Pool) -> None:
    name = _name()
    holder = pool.lock(name)
    holder.acquire()
    gave_up: list[str] = []

    def give_up() -> None:
        gave_up.extend(_give_up(pool.queue(name), lambda: pool.lock(name)))

    # In a thread of its own: asyncio.run() used to wait for ever for the thread a wait
    # given up left behind.
    thread = threading.Thread(target=give_up, daemon=True)
    thread.start()
    thread.join(GUARD)
    if thread.is_alive():
        holder.release()
    assert not thread.is_alive()
    assert gave_up == ["asyncio", "asyncio", "trio", "trio"]
    _nothing_was_taken(pool, name, holder)


def test_collections_outside_a_running_function_need_a_pool() -> None:
    with pytest.raises(sky.NoActivePoolError, match=r"sky.counter\('c'\) needs an active pool"):
        sky.counter("c")
    with pytest.raises(sky.NoActivePoolError, match=r"use pool.lock\('l'\)"):
        sky.lock("l")


@sky.function
def hold_lock(name: str) -> str:
    if sky.counter(f"{name}-runs").increment() > 1:
        return "sent again"  # the re-sent call, on the replacement node: let it finish
    lock = sky.lock(name)
    lock.acquire()
    sky.dict(name)["holder"] = sky.instance_info().node
    time.sleep(GUARD)
    return "held to the end"


@sky.function
def take_lock(name: str) -> int:
    with sky.lock(name, timeout=GUARD):
        return sky.instance_info().node


@pytest.mark.parametrize("placement", ["head", "client"])
def test_a_lock_held_on_a_node_that_died_is_released_and_node_0_loss(placement: str) -> None:
    name = _name()
    with _placed(placement), sky.Compute(nodes=2, options=SILENT) as pool:
        held = pool.run_async(hold_lock(name), target=1)
        holder = pool.dict(name)
        deadline = time.monotonic() + GUARD
        while holder.get("holder") is None:
            assert time.monotonic() < deadline, "the lock was never taken"
            time.sleep(0.02)
        testing.preempt(pool, 1)
        assert pool.run(take_lock(name), target=0) == 0
        assert held.result(timeout=GUARD) == "sent again"
        # On node 0, the store is lost with it; a new one runs on its replacement, which
        # takes up what the client kept of the last, and which the client and the other
        # nodes find. In the client, it stays. (What was written in the moment before the
        # loss may not have reached the client yet: wait until it has.)
        if placement == "head":
            _caught_up(pool, f"{name}-runs", 2, 0)
        testing.preempt(pool, 0)
        assert pool.run(bump(name, 2), target=0) == (0, [1, 2])  # waits for the new node 0
        assert pool.run(bump(name, 3), target=1) == (1, [3, 4, 5])
        assert pool.counter(name).value == 5
        assert pool.dict(name).get("holder") == 1
        assert pool.counter(f"{name}-runs").value == 2


@sky.function
def fill_every_kind(name: str) -> None:
    d, members, queue = sky.dict(name), sky.set(name), sky.queue(name)
    d[("step", 1)] = {"loss": 0.5}
    d["gone"] = 0
    d.pop("gone")
    members.add("x")
    members.add(3)
    sky.counter(name).increment(7)
    sky.counter(name, consistency="eventual").increment(2)
    for item in range(5):
        queue.put(item)
    assert queue.get() == 0


@sky.function
def read_every_kind(name: str) -> tuple[Any, ...]:
    d, members, queue = sky.dict(name), sky.set(name), sky.queue(name)
    items = [queue.get(timeout=5) for _ in range(len(queue))]
    return (
        d.get(("step", 1)),
        "gone" in d,
        len(members),
        3 in members,
        sky.counter(name).value,
        items,
    )


def _caught_up(pool: sky.Pool, name: str, count: int, items: int) -> None:
    """Wait until the client's copy of node 0's store holds the counter ``name`` at
    ``count`` and ``items`` items in the queue ``name``."""
    kept = pool._core._store.replica.store
    deadline = time.monotonic() + GUARD
    while kept._counters.get(name) != count or len(kept._queues[name].items) != items:
        assert time.monotonic() < deadline, "the client's copy never caught up"
        time.sleep(0.02)


@pytest.mark.parametrize("fault", ["preempt", "kill_worker"])
def test_node_0_loss_keeps_the_collections_contents(fault: str) -> None:
    """The store on node 0 is lost with it (its machine, or its worker, which is
    restarted in place); the client's copy of its contents (kept as they change) is taken
    up by the store the new worker starts, before any node is told where that store is."""
    name = _name()
    with sky.Compute(nodes=2, options=SILENT) as pool:
        pool.run(fill_every_kind(name), target=1)
        _caught_up(pool, name, 9, 4)
        before = pool._core._ready[0].conn
        getattr(testing, fault)(pool, 0)
        assert pool.run(read_every_kind(name), target=0) == (
            {"loss": 0.5},
            False,
            2,
            True,
            9,
            [1, 2, 3, 4],
        )
        assert pool._core._ready[0].conn is not before  # a new worker, with a new store
        assert pool.counter(name).value == 9


@pytest.mark.parametrize("placement", ["head", "client"])
def test_collections_keep_their_state_across_a_dropped_connection(placement: str) -> None:
    name = _name()
    with _placed(placement), sky.Compute(nodes=2, options=SILENT) as pool:
        assert pool.run(bump(name, 2), target=1) == (1, [1, 2])
        for node in (0, 1):  # the client's way to the store went through node 0 or both
            conn = pool._core._ready[node].conn
            testing.drop_connection(pool, node)
            deadline = time.monotonic() + GUARD
            while conn.down_reason is None or not pool._core._ready[node].conn.usable:
                assert time.monotonic() < deadline, f"node {node} did not reconnect"
                time.sleep(0.02)
        assert pool.counter(name).value == 2  # reached again, and nothing was lost
        assert pool.run(bump(name, 1), target=0) == (0, [3])
        assert pool.counter(name).value == 3


def _store_set_up_again(monkeypatch: pytest.MonkeyPatch, before: Any) -> threading.Event:
    """Run ``before(supervisor, instance, ssh)`` in the trio thread each time the client
    sets the store up on node 1 after its connection came back; the event is set on the
    first."""
    from skyward_trio._supervisor import Supervisor

    original = Supervisor._serve_store
    calls = itertools.count()
    entered = threading.Event()

    async def serve_store(self: Supervisor, i: int, instance: Any, ssh: Any) -> None:
        if i == 1 and next(calls) >= 1:  # the first one is the node coming up
            entered.set()
            await before(self, instance, ssh)
        await original(self, i, instance, ssh)

    monkeypatch.setattr(Supervisor, "_serve_store", serve_store)
    return entered


def test_a_link_dropped_again_before_the_store_listens_is_reconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _name()
    dropped_again = itertools.count()

    async def drop_once(supervisor: Any, instance: Any, ssh: Any) -> None:
        if next(dropped_again) == 0:
            ssh.break_connection()

    entered = _store_set_up_again(monkeypatch, drop_once)
    with testing.standalone_nodes(), sky.Compute(nodes=2, options=SILENT) as pool:
        assert pool.run(bump(name, 1), target=1) == (1, [1])
        testing.drop_connection(pool, 1)
        assert entered.wait(GUARD)
        # The second reconnection sets the store up; the node serves, the count kept.
        assert pool.run(bump(name, 2), target=1) == (1, [2, 3])
        assert next(dropped_again) >= 2
        assert pool.counter(name).value == 3


def test_a_node_that_cannot_reach_the_store_after_reconnecting_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _name()
    first: list[str] = []

    async def always_drop(supervisor: Any, instance: Any, ssh: Any) -> None:
        if instance.id == first[0]:  # not its replacement
            ssh.break_connection()

    entered = _store_set_up_again(monkeypatch, always_drop)
    with testing.standalone_nodes(), sky.Compute(nodes=2, options=SILENT) as pool:
        assert pool.run(bump(name, 1), target=1) == (1, [1])
        first.append(pool._core._ready[1].instance.id)
        testing.drop_connection(pool, 1)
        assert entered.wait(GUARD)
        # Three reconnections could not reach the store: a new node 1 takes over.
        assert pool.run(bump(name, 1), target=1) == (1, [2])
        assert pool._core._ready[1].instance.id != first[0]


def test_a_pool_closed_while_the_store_is_set_up_again_closes_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def wait_for_close(supervisor: Any, instance: Any, ssh: Any) -> None:
        with trio.fail_after(GUARD):
            while not supervisor.pool._closing:  # noqa: ASYNC110 (a flag, no event)
                await trio.sleep(0.01)
        await ssh.aclose()  # as the close does, before the store could listen

    entered = _store_set_up_again(monkeypatch, wait_for_close)
    with testing.standalone_nodes(), sky.Compute(nodes=2, options=SILENT) as pool:
        assert pool.run(bump(_name(), 1), target=1) == (1, [1])
        testing.drop_connection(pool, 1)
        assert entered.wait(GUARD)
    # Leaving the block raised nothing: the interrupted set-up ended with the pool.


async def test_trio_face_collections_are_awaited() -> None:
    @skyward_trio.function
    def add(name: str) -> int:
        return skyward_trio.counter(name).increment(2)

    name = _name()
    options = skyward_trio.Options(console="silent")
    async with skyward_trio.Compute(nodes=1, options=options) as pool:
        counter = pool.counter(name)
        assert await counter.increment_async() == 1
        assert await (add(name) >> pool) == 3
        assert await counter.value_async() == 3
        async with pool.lock(name):
            await pool.dict(name).setitem_async("k", "v")
        assert await pool.dict(name).get_async("k") == "v"
        queue = pool.queue(name)
        with trio.move_on_after(0.2):
            await queue.get_async()  # cancelled while it waits: it takes nothing
        await queue.put_async("kept")
        assert await queue.len_async() == 1
        with pytest.raises(RuntimeError, match="await its _async variant"):
            counter.value  # noqa: B018 - the blocking read refuses on the trio loop


@sky.function
def independent() -> int:
    return sky.instance_info().node


@sky.function
def uses_a_dict(name: str) -> None:
    sky.dict(name)["k"] = 1


@pytest.mark.parametrize("placement", ["head", "client"])
def test_a_pool_without_a_cluster_has_no_collections(placement: str) -> None:
    options = sky.Options(console="silent", cluster=False)
    with _placed(placement), sky.Compute(nodes=2, options=options) as pool:
        supervisor = pool._core._supervisor
        assert supervisor is not None
        assert supervisor.store is None  # no store anywhere: not in the client either
        assert not supervisor.store_on_node_0
        assert sorted(independent() @ pool) == [0, 1]
        fix = r"was opened with Options\(cluster=False\), so its nodes run independently.*None"
        for node in (0, 1):
            with pytest.raises(sky.NoActivePoolError, match=r"^sky.dict\('d'\): this pool " + fix):
                pool.run(uses_a_dict("d"), target=node)
        with pytest.raises(sky.NoActivePoolError, match=r"^pool.counter\('c'\): this pool"):
            pool.counter("c")
        with pytest.raises(sky.NoActivePoolError, match=r"^pool.lock\('l'\): this pool"):
            pool.lock("l")


async def test_a_pool_without_a_cluster_has_no_collections_on_the_trio_face() -> None:
    options = skyward_trio.Options(console="silent", cluster=False)
    async with skyward_trio.Compute(nodes=1, options=options) as pool:
        with pytest.raises(skyward_trio.NoActivePoolError, match=r"^pool.dict\('d'\): this"):
            pool.dict("d")
        with pytest.raises(skyward_trio.NoActivePoolError, match=r"^sky.dict\('d'\): this"):
            await (uses_a_dict("d") >> pool)
