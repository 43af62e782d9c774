"""The pool's collections through the pool server: ``client.dict(name)`` and the others
in a script of its own are the collections a function running on the pool sees by that
name (a ``sky.Client`` and a ``skyward_trio.Client``), relayed by a server started as
users start it, holding a Local pool (``sky compute create``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from served import Server

from skyward_trio._serverwire import frame

_FUNCTIONS = """
import json
import sys

import skyward as sky


@sky.function
def record(i: int) -> int:
    sky.counter(PREFIX + "done").increment()
    sky.dict(PREFIX + "squares")[i] = i * i
    sky.set(PREFIX + "seen").add(i % 3)
    sky.queue(PREFIX + "out").put(i)
    return i


@sky.function
def read_key(key):
    return sky.dict(PREFIX + "squares")[key]


@sky.function
def take_job():
    return sky.queue(PREFIX + "jobs").get(timeout=60)


@sky.function
def locked() -> str:
    with sky.lock(PREFIX + "lock", timeout=0.5):
        return "got it"


@sky.function
def meet() -> int:
    return sky.barrier(PREFIX + "meet", 2).wait()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server.running(tmp_path_factory.mktemp("client-collections")) as made:
        yield made


_SYNC = """
PREFIX = "sync-"
out = {}
with sky.Client("p") as pool:
    assert pool.map(record, range(10)) == list(range(10))
    out["counter"] = pool.counter(PREFIX + "done").value
    squares = pool.dict(PREFIX + "squares")
    out["dict"] = [squares[3], squares.get(11, "none"), 4 in squares, squares.pop(9)]
    out["popped"] = 9 in squares
    try:
        squares["missing"]
    except KeyError as exc:
        out["missing"] = repr(exc)
    squares["from the client"] = [1, 2]
    out["a node reads"] = read_key("from the client") >> pool
    seen = pool.set(PREFIX + "seen")
    out["set"] = [len(seen), 2 in seen, 5 in seen]
    results = pool.queue(PREFIX + "out")
    out["queue"] = sorted(results.get(timeout=10) for _ in range(10))
    out["empty"] = [results.empty(), len(results)]
    try:
        results.get(timeout=0.2)
    except TimeoutError:
        out["get timed out"] = True
    pool.queue(PREFIX + "jobs").put({"id": 1})
    out["a node takes"] = take_job() >> pool
    with pool.lock(PREFIX + "lock"):
        try:
            locked() >> pool
        except TimeoutError:
            out["held here"] = True
    out["released"] = locked() >> pool
    meeting = meet() > pool
    out["barrier"] = [pool.barrier(PREFIX + "meet", 2).wait(), meeting.result(timeout=60)]
    counter = pool.counter(PREFIX + "done")
    out["counter ops"] = [counter.increment(5), counter.decrement(), int(counter)]
with sky.Client("p") as again:  # another client, the same collections
    out["again"] = again.counter(PREFIX + "done").value
print(json.dumps(out))
"""


def test_a_client_reaches_the_collections_functions_on_the_pool_see(server: Server) -> None:
    out = server.script(_FUNCTIONS + _SYNC)
    assert out == {
        "counter": 10,
        "dict": [9, "none", True, 81],
        "popped": False,
        "missing": "KeyError('missing')",
        "a node reads": [1, 2],
        "set": [3, True, False],
        "queue": list(range(10)),
        "empty": [True, 0],
        "get timed out": True,
        "a node takes": {"id": 1},
        "held here": True,
        "released": "got it",
        "barrier": [0, 0],
        "counter ops": [15, 14, 14],
        "again": 14,
    }


_TRIO = """
import trio
import skyward_trio as st

PREFIX = "trio-"


async def main():
    out = {}
    async with st.Client("p") as pool:
        assert await pool.map(record, range(10)) == list(range(10))
        counter = pool.counter(PREFIX + "done")
        out["counter"] = await counter.value_async()
        try:
            counter.value
        except RuntimeError as exc:
            out["blocking"] = str(exc)
        squares = pool.dict(PREFIX + "squares")
        out["dict"] = [await squares.getitem_async(3), await squares.get_async(11, "none")]
        await squares.setitem_async("from the client", "hello")
        out["a node reads"] = await (read_key("from the client") >> pool)
        out["set"] = await pool.set(PREFIX + "seen").len_async()
        jobs = pool.queue(PREFIX + "jobs")
        with trio.move_on_after(0.5) as abandoned:
            await jobs.get_async()  # nothing comes: given up, its wait is cancelled
        out["abandoned"] = abandoned.cancelled_caught
        # The server has seen the hang-up long before this (a guard, not a measurement).
        await trio.sleep(1)
        await jobs.put_async({"id": 2})
        out["a node takes"] = await (take_job() >> pool)
        async with pool.lock(PREFIX + "lock"):
            try:
                await (locked() >> pool)
            except TimeoutError:
                out["held here"] = True
        out["released"] = await (locked() >> pool)
    print(json.dumps(out))


trio.run(main)
"""


def test_a_trio_client_reaches_them_too(server: Server) -> None:
    out = server.script(_FUNCTIONS + _TRIO)
    assert "await its _async variant" in out.pop("blocking")
    assert out == {
        "counter": 10,
        "dict": [9, "none"],
        "a node reads": "hello",
        "set": 3,
        "abandoned": True,
        "a node takes": {"id": 2},
        "held here": True,
        "released": "got it",
    }


def test_a_collection_operation_the_server_does_not_relay_is_refused(server: Server) -> None:
    state = server.state()
    for body, said in [
        (frame({"op": 0, "name": "x", "args": {"t": []}}), "op 0 on 'x'"),  # ADDRESS
        (b"nonsense", "not a collection operation"),
    ]:
        answer = httpx.post(
            f"{state['url']}/pools/p/store",
            content=body,
            headers={"authorization": f"Bearer {state['token']}"},
        )
        assert answer.status_code == 400
        assert said in answer.json()["error"]


# A client that dies, or closes, holding the pool's state: its session (the request it
# keeps open) ends, and the server frees what it held. SIGKILL runs no teardown at all.
_HOLDER = {
    "sync": """
import sys, threading, time
import skyward as sky

FACE = sys.argv[2]
with sky.Client("p") as pool:
    pool.lock(FACE + "-dead-held").acquire()
    # Waits it leaves behind: a barrier place and a queue get, still waiting.
    threading.Thread(target=pool.barrier(FACE + "-dead-meet", 2).wait, daemon=True).start()
    threading.Thread(target=pool.queue(FACE + "-dead-jobs").get, daemon=True).start()
    time.sleep(1)  # a guard: those requests have reached the server
    print("holding", flush=True)
    time.sleep(600)
""",
    "trio": """
import sys
import trio
import skyward_trio as st

FACE = sys.argv[2]


async def main():
    async with st.Client("p") as pool, trio.open_nursery() as nursery:
        await pool.lock(FACE + "-dead-held").acquire_async()
        nursery.start_soon(pool.barrier(FACE + "-dead-meet", 2).wait_async)
        nursery.start_soon(pool.queue(FACE + "-dead-jobs").get_async)
        await trio.sleep(1)  # a guard: those requests have reached the server
        print("holding", flush=True)
        await trio.sleep(600)


trio.run(main)
""",
}

_TAKER = """
import concurrent.futures
import sys
import time

FACE = sys.argv[2]
out = {}
with sky.Client("p") as pool:
    started = time.monotonic()
    lock = pool.lock(FACE + "-dead-held", timeout=20)
    lock.acquire()
    out["lock free after"] = time.monotonic() - started
    lock.release()
    # Had the dead client's place counted, one of these would pass alone and the other
    # would wait for ever.
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        meeting = [threads.submit(pool.barrier(FACE + "-dead-meet", 2).wait) for _ in range(2)]
        out["barrier"] = [m.result(timeout=30) for m in meeting]
    jobs = pool.queue(FACE + "-dead-jobs")
    jobs.put("job")  # not handed to the dead client's get
    out["queue"] = jobs.get(timeout=10)

    # A client that closes holding a lock (leaving its block, or close()) frees it.
    other = sky.Client("p")
    other.lock(FACE + "-closed").acquire()
    other.close()
    started = time.monotonic()
    pool.lock(FACE + "-closed", timeout=20).acquire()
    out["closed: free after"] = time.monotonic() - started
print(json.dumps(out))
"""


@pytest.mark.parametrize("face", ["sync", "trio"])
def test_a_client_killed_holding_a_lock_frees_it(server: Server, face: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER[face], "", face],
        cwd=server.project,
        env=server.env,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "holding"
        finally:
            os.kill(holder.pid, signal.SIGKILL)  # no teardown runs: its sockets just close
    out = server.script(_FUNCTIONS + _TAKER, args=[face])
    assert out["lock free after"] < 5
    assert out["barrier"] == [0, 0]
    assert out["queue"] == "job"
    assert out["closed: free after"] < 5


_GIVES_UP = """
import asyncio
import time

import trio

PREFIX = "given-up-"
out = {"gave up": []}
with sky.Client("p") as pool:
    holder = pool.lock(PREFIX + "lock")
    holder.acquire()
    jobs = pool.queue(PREFIX + "jobs")

    async def under_asyncio():
        for wait in (jobs.get_async(), pool.lock(PREFIX + "lock").acquire_async()):
            try:
                await asyncio.wait_for(wait, 0.3)
            except TimeoutError:
                out["gave up"].append("asyncio")

    async def under_trio():
        with trio.move_on_after(0.3) as scope:
            await jobs.get_async()
        with trio.move_on_after(0.3) as other:
            await pool.lock(PREFIX + "lock").acquire_async()
        out["gave up"].extend("trio" for s in (scope, other) if s.cancelled_caught)

    asyncio.run(under_asyncio())
    trio.run(under_trio)
    time.sleep(1)  # a guard: the server has seen the hang-ups
    jobs.put("kept")
    holder.release()
    out["got"] = jobs.get(timeout=10)  # not handed to a get given up
    taker = pool.lock(PREFIX + "lock", timeout=10)
    taker.acquire()  # not granted to an acquire given up
    taker.release()
print(json.dumps(out))
"""


def test_a_clients_async_waits_given_up_take_nothing(server: Server) -> None:
    # Made in a thread, a request given up went on waiting: asyncio.run() waited for it
    # for ever, and it would have taken the item or the lock for nobody.
    out = server.script(_FUNCTIONS + _GIVES_UP)
    assert out == {"gave up": ["asyncio", "asyncio", "trio", "trio"], "got": "kept"}


_ANSWERED_AS_GIVEN_UP = """
import select
import socket
import time
import urllib.parse
import uuid

import httpx

from skyward_trio import _collections as ops
from skyward_trio._client import abandon_path, headers, running_state, session_path, store_path
from skyward_trio._serverwire import store_request

state = running_state()
where = urllib.parse.urlsplit(state["url"])
me = uuid.uuid4().hex  # a client of its own, speaking the protocol by hand
out = {}


def unread(op, name, args, ticket):
    # A store request whose answer is never read: a client that gave the wait up just as
    # the server answered it.
    body = store_request(op, name, args, ticket)
    lines = [f"POST {store_path('p')} HTTP/1.1", f"host: {where.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers(state, framed=True, client=me).items()]
    lines += [f"content-length: {len(body)}", "", ""]
    sock = socket.create_connection((where.hostname, where.port))
    sock.sendall("\\r\\n".join(lines).encode() + body)
    return sock


with httpx.Client() as http, sky.Client("p") as pool:
    session = http.send(
        http.build_request(
            "POST",
            state["url"] + session_path("p"),
            headers=headers(state, client=me),
            timeout=httpx.Timeout(10, read=None),
        ),
        stream=True,
    )
    holder = pool.lock("answered-lock")
    holder.acquire()
    waits = [
        unread(ops.Q_GET, "answered-jobs", (None,), "ticket-get"),
        unread(ops.L_ACQUIRE, "answered-lock", ("token-1", None), "ticket-lock"),
    ]
    time.sleep(1)  # a guard: both wait on the server
    pool.queue("answered-jobs").put("job")
    holder.release()
    for sock in waits:
        out.setdefault("answered", []).append(bool(select.select([sock], [], [], 30)[0]))
        sock.close()  # unread
    for ticket in ("ticket-get", "ticket-lock", "ticket-never"):
        given_up = http.post(
            state["url"] + abandon_path("p"),
            json={"ticket": ticket},
            headers=headers(state, client=me),
        )
        out[ticket] = given_up.json()
    out["got"] = pool.queue("answered-jobs").get(timeout=10)
    taker = pool.lock("answered-lock", timeout=10)
    taker.acquire()
    taker.release()
    session.close()
print(json.dumps(out))
"""


def test_a_wait_answered_as_it_is_given_up_gives_back_what_it_got(server: Server) -> None:
    # The answers were sent and never read: once the client gives the waits up by their
    # tickets, the item is back at the queue's head and the lock is free.
    out = server.script(_FUNCTIONS + _ANSWERED_AS_GIVEN_UP)
    assert out == {
        "answered": [True, True],
        "ticket-get": {"given_back": True},
        "ticket-lock": {"given_back": True},
        "ticket-never": {"given_back": False},
        "got": "job",
    }


_TRIO_CLOSES = """
import trio
import skyward_trio as st


async def main():
    out = {}
    async with st.Client("p") as pool:
        await pool.lock("trio-closing").acquire_async()  # not released: the block ends
    async with st.Client("p") as pool:
        with trio.fail_after(20):
            started = trio.current_time()
            await pool.lock("trio-closing", timeout=20).acquire_async()
            out["free after"] = trio.current_time() - started
    print(json.dumps(out))


trio.run(main)
"""


def test_a_trio_client_that_closes_holding_a_lock_frees_it(server: Server) -> None:
    out = server.script(_FUNCTIONS + _TRIO_CLOSES)
    assert out["free after"] < 5
