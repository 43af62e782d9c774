"""The pool's collections store: one trio service holding every named collection.

Where nodes reach each other's private addresses, it runs in the head node's worker
(node 0) and listens on that node's private address only, on a port the kernel picks;
the client learns the port through the worker's unix socket (``role: "store"``, op
``ADDRESS``) and tells the other nodes. Elsewhere (standalone machines) it runs in the
client, which listens on a unix socket on each node through that node's SSH connection.
Every connection starts with the same JSON hello as a worker connection: the pool secret
and both ends' versions, checked before anything is unpickled.

One trio thread applies every operation, in the order it reads them: that total order is
what makes the collections linearizable (``consistency="strong"``). Operations that wait
(``queue.get``, ``lock.acquire``, ``barrier.wait``) park a ``_Wait`` and answer later; a
connection that closes withdraws its waits, leaves its barriers and releases its locks, so
a task whose node died holds nothing.

Layer 3: trio, ``_wire``, ``_serial`` and ``_collections`` only (it runs in the worker).
"""

from __future__ import annotations

import collections
import itertools
import math
import pickle
import secrets
import socket
from collections.abc import Callable
from typing import Any

import trio

from . import _collections as ops
from . import _serial, _wire

__all__ = ["LocalClient", "Replica", "Store", "hello_problem", "receive_hello"]

# A node that vanishes without closing its connection (a reclaimed machine sends no FIN)
# is noticed by TCP keepalive after about IDLE + INTERVAL * COUNT seconds.
_KEEPALIVE_IDLE = 10
_KEEPALIVE_INTERVAL = 5
_KEEPALIVE_COUNT = 3

# The effects that bring a value (a payload, the last argument; D_UPDATE: pairs).
_VALUED = frozenset({ops.D_SET, ops.D_UPDATE, ops.Q_PUT, ops.Q_RETURN})
#: Bytes of values the client's copy of node 0's store holds at most (Replica.most).
REPLICA_MOST = 1 << 30
# Bytes of values added to the copy after which it measures what it holds again.
_MEASURE_AFTER = 64 << 20


def _valued_bytes(op: int, args: tuple[Any, ...]) -> int:
    """Bytes of the values an effect brings (none for most)."""
    if op not in _VALUED:
        return 0
    values = [v for _, v in args[0]] if op == ops.D_UPDATE else [args[-1]]
    return sum(_serial.payload_size(v) for v in values)


def hello_problem(hello: Any, secret: bytes) -> str | None:
    """Why a connection to the store is refused, or None."""
    return _wire.hello_problem(hello, secret, they="the peer", we="the store")


async def receive_hello(stream: trio.abc.Stream) -> tuple[Any, _wire.FrameDecoder] | None:
    """A new connection's hello (its first frame) and the decoder holding what followed
    it, or None if the peer left first."""
    decoder = _wire.FrameDecoder(expect_hello=True)
    messages: list[Any] = []
    while not messages:
        data = await stream.receive_some(65536)
        if not data:
            return None
        messages = decoder.feed(data)
    return messages[0], decoder


class _Conn:
    """One connection: where its replies go, and what it holds or waits for."""

    def __init__(self, where: str, deliver: Callable[[tuple[Any, ...]], None]) -> None:
        self.where = where
        self.closed = False
        self.waits: dict[int, _Wait] = {}
        self.locks: set[str] = set()
        self._deliver = deliver

    def reply(self, request: int, value: Any) -> None:
        if not self.closed:
            self._deliver((request, True, value))

    def fail(self, request: int, kind: str, message: str) -> None:
        if not self.closed:
            self._deliver((request, False, (kind, message)))


def _nobody() -> _Conn:
    conn = _Conn("a batch", lambda message: None)
    conn.closed = True  # its replies go nowhere: a batch is answered once, as a whole
    return conn


class _Wait:
    """An operation that answers later: a queue get, a lock acquire or a barrier wait."""

    __slots__ = ("conn", "done", "request", "token")

    def __init__(self, conn: _Conn, request: int, token: str = "") -> None:
        self.conn = conn
        self.request = request
        self.token = token
        self.done = False


class _Queue:
    def __init__(self) -> None:
        self.items: collections.deque[_serial.Payload] = collections.deque()
        self.getters: collections.deque[_Wait] = collections.deque()


class _Lock:
    def __init__(self) -> None:
        self.owner: tuple[_Conn, str] | None = None
        self.waiters: collections.deque[_Wait] = collections.deque()


class _Barrier:
    def __init__(self, n: int) -> None:
        self.n = n
        self.phase = 0
        self.arrived: list[_Wait] = []


def _rewrap(payload: _serial.Payload) -> _serial.Payload:
    """A received payload's buffers are plain bytes: wrap them again, so a big value read
    back travels out of band instead of inside the reply's header."""
    head, head_z, bufs, flags = payload
    if isinstance(head, bytes | bytearray) and len(head) >= 64 * 1024:
        head = pickle.PickleBuffer(head)
    return (head, head_z, [pickle.PickleBuffer(b) for b in bufs], flags)


class Store:
    """Named dicts, sets, counters, queues, barriers and locks of one pool."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.address: tuple[str, int] | None = None
        # Replication to the client (see Replica): this store's identity, how many effects
        # it has applied, and those since the replica last synced (None until one asks,
        # or once too many piled up: its next sync then takes a snapshot).
        self.epoch = secrets.token_hex(8)
        self._seq = 0
        self._log: list[tuple[int, str, tuple[Any, ...]]] | None = None
        self._log_from = 0
        self._log_bytes = 0  # of the values in _log
        self._changed = trio.Event()
        self._restored = False
        self._dicts: collections.defaultdict[str, dict[Any, _serial.Payload]] = (
            collections.defaultdict(dict)
        )
        self._sets: collections.defaultdict[str, set[Any]] = collections.defaultdict(set)
        self._counters: collections.defaultdict[str, int] = collections.defaultdict(int)
        self._queues: collections.defaultdict[str, _Queue] = collections.defaultdict(_Queue)
        self._locks: collections.defaultdict[str, _Lock] = collections.defaultdict(_Lock)
        self._barriers: dict[str, _Barrier] = {}

    async def listen(
        self, host: str, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the nodes on ``host`` (the head node's private address), on a free port.

        Reports ``(host, port)`` once listening; serves until cancelled.
        """
        listeners = await trio.open_tcp_listeners(0, host=host)
        port = listeners[0].socket.getsockname()[1]
        self.address = (host, port)
        task_status.started(self.address)
        await trio.serve_listeners(self._accept, listeners)

    async def _accept(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (
            ("TCP_KEEPIDLE", _KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", _KEEPALIVE_COUNT),
        ):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        host, port = sock.getpeername()[:2]
        await self.serve_new(stream, f"{host}:{port}")

    async def serve_new(self, stream: trio.abc.Stream, where: str) -> None:
        """Check a new connection's hello, then answer it until it closes; closes it."""
        async with stream:
            received = await receive_hello(stream)
            if received is None:
                return
            hello, decoder = received
            problem = hello_problem(hello, self._secret)
            answer = {"ok": problem is None, "error": problem, "role": ops.ROLE}
            await stream.send_all(_wire.encode_hello(answer))
            if problem is None:
                await self.serve(stream, decoder, where)

    async def serve(self, stream: trio.abc.Stream, decoder: _wire.FrameDecoder, where: str) -> None:
        """Answer one connection whose hello was accepted, until it closes."""
        send, outgoing = trio.open_memory_channel[tuple[Any, ...]](math.inf)
        conn = _Conn(where, send.send_nowait)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_replies, stream, outgoing)
                messages = decoder.release()
                while True:
                    for message in messages:
                        self._apply(conn, message, nursery)
                    try:
                        data = await stream.receive_some(1 << 20)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        break
                    try:
                        messages = decoder.feed(data)
                    except (_wire.ProtocolError, pickle.UnpicklingError):
                        break
                nursery.cancel_scope.cancel(reason=f"{where} closed its connection")
        finally:
            self._forget(conn)

    async def _send_replies(
        self, stream: trio.abc.Stream, outgoing: trio.MemoryReceiveChannel[tuple[Any, ...]]
    ) -> None:
        async for message in outgoing:
            chunks = _wire.encode(message)
            try:
                await stream.send_all(b"".join(chunks))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def _forget(self, conn: _Conn) -> None:
        """The connection closed: its waits end, its barrier places and locks are freed."""
        conn.closed = True
        for wait in conn.waits.values():
            wait.done = True
        for barrier in self._barriers.values():
            barrier.arrived = [w for w in barrier.arrived if w.conn is not conn]
        for name in list(conn.locks):
            self._unlock(name)

    # -- operations -------------------------------------------------------------------

    def _apply(self, conn: _Conn, message: tuple[Any, ...], nursery: trio.Nursery) -> None:
        request, op, name, *args = message
        try:
            self._do(conn, request, op, name, args, nursery)
        except _Refused as refused:
            conn.fail(request, refused.kind, str(refused))

    def _do(
        self,
        conn: _Conn,
        request: int,
        op: int,
        name: str,
        args: list[Any],
        nursery: trio.Nursery,
    ) -> None:
        if op == ops.ADDRESS:
            conn.reply(request, self.address)
        elif op == ops.CANCEL:
            wait = conn.waits.pop(args[0], None)
            if wait is not None:
                wait.done = True
            conn.reply(request, wait is not None)
        elif op == ops.BATCH:
            self._batch(conn, request, args[0], nursery)
        elif op == ops.SYNC:
            nursery.start_soon(self._sync, conn, request, str(args[0]), int(args[1]))
        elif op == ops.RESTORE:
            fresh = self._seq == 0 and not self._restored
            if fresh:
                self._restore(args[0])
            conn.reply(request, fresh)
        elif op in _REPLAYED:
            conn.reply(request, self._write(op, name, args))
            self._effect(op, name, tuple(args))
        elif op == ops.D_GET:
            found = self._dicts[name].get(_key(args[0], name))
            conn.reply(request, (found is not None, found))
        elif op == ops.D_HAS:
            conn.reply(request, _key(args[0], name) in self._dicts[name])
        elif op == ops.S_HAS:
            conn.reply(request, _key(args[0], name) in self._sets[name])
        elif op == ops.S_LEN:
            conn.reply(request, len(self._sets[name]))
        elif op == ops.C_GET:
            conn.reply(request, self._counters[name])
        elif op == ops.Q_PUT:
            self._put(name, _rewrap(args[0]))
            conn.reply(request, None)
        elif op == ops.Q_GET:
            self._get(conn, request, name, args[0], nursery)
        elif op == ops.Q_RETURN:
            self._put(name, _rewrap(args[0]), front=True)
            conn.reply(request, None)
        elif op == ops.Q_LEN:
            conn.reply(request, len(self._queues[name].items))
        elif op == ops.B_WAIT:
            self._arrive(conn, request, name, int(args[0]))
        elif op == ops.L_ACQUIRE:
            self._acquire(conn, request, name, str(args[0]), args[1], nursery)
        elif op == ops.L_RELEASE:
            self._release(conn, request, name, str(args[0]))
        else:
            raise _Refused("ValueError", f"unknown collections operation {op!r}")

    def _write(self, op: int, name: str, args: list[Any] | tuple[Any, ...]) -> Any:
        """Apply a write a replica repeats the same way (one of ``_REPLAYED``); its answer."""
        if op == ops.D_SET:
            self._dicts[name][_key(args[0], name)] = _rewrap(args[1])
            return None
        if op == ops.D_DEL:
            return self._dicts[name].pop(_key(args[0], name), None) is not None
        if op == ops.D_UPDATE:
            target = self._dicts[name]
            target.update((_key(k, name), _rewrap(v)) for k, v in args[0])
            return None
        if op == ops.D_POP:
            found = self._dicts[name].pop(_key(args[0], name), None)
            return (found is not None, found)
        if op == ops.S_ADD:
            self._sets[name].add(_key(args[0], name))
            return None
        if op == ops.S_DISCARD:
            self._sets[name].discard(_key(args[0], name))
            return None
        if op == ops.C_ADD:
            self._counters[name] += int(args[0])
            return self._counters[name]
        if op == ops.C_SET:
            self._counters[name] = int(args[0])
            return None
        raise _Refused("ValueError", f"unknown collections write {op!r}")

    # -- replication to the client ------------------------------------------------------

    def _effect(self, op: int, name: str, args: tuple[Any, ...]) -> None:
        """Note a change of the state for the replica: a replayed write, or a queue's item
        added (``Q_PUT``, ``Q_RETURN``) or taken (``_TAKEN``)."""
        self._seq += 1
        if self._log is not None:
            self._log.append((op, name, args))
            self._log_bytes += _valued_bytes(op, args)
            if len(self._log) > _LOG_MOST or self._log_bytes > _LOG_BYTES_MOST:
                # The replica is far behind (or gone): its next sync, if one comes, takes a
                # snapshot. The log would keep overwritten values alive meanwhile.
                self._log, self._log_bytes = None, 0
        self._changed.set()
        self._changed = trio.Event()

    async def _sync(self, conn: _Conn, request: int, epoch: str, since: int) -> None:
        """Answer a replica that holds this store's state up to effect ``since``: the
        effects after it once there are some (or none after :data:`_SYNC_WAIT` s), or the
        whole state when it follows another store or is too far behind."""
        if epoch == self.epoch and self._log is not None and since == self._log_from:
            with trio.move_on_after(_SYNC_WAIT):
                while self._seq == since:
                    await self._changed.wait()
            if self._log is not None and since == self._log_from:
                conn.reply(request, ("delta", self._seq, self._log))
                self._log, self._log_from, self._log_bytes = [], self._seq, 0
                return
        conn.reply(request, ("snapshot", self.epoch, self._seq, self.snapshot()))
        self._log, self._log_from, self._log_bytes = [], self._seq, 0

    def snapshot(self) -> dict[str, Any]:
        """The collections' contents (not their locks, barriers or waits), keys as payloads."""
        return {
            "dicts": {
                name: [(_serial.dumps(k), v) for k, v in d.items()]
                for name, d in self._dicts.items()
                if d
            },
            "sets": {name: [_serial.dumps(m) for m in s] for name, s in self._sets.items() if s},
            "counters": {name: value for name, value in self._counters.items() if value},
            "queues": {name: list(q.items) for name, q in self._queues.items() if q.items},
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Take up the contents a replica kept of another store (this one is new): all of
        them, or none if a key cannot be unpickled here (``_Refused``)."""
        dicts = {
            name: {_key(k, name): _rewrap(v) for k, v in items}
            for name, items in state["dicts"].items()
        }
        sets = {name: {_key(m, name) for m in members} for name, members in state["sets"].items()}
        self._restored = True
        self._dicts.update(dicts)
        self._sets.update(sets)
        for name, value in state["counters"].items():
            self._counters[name] = int(value)
        for name, items in state["queues"].items():
            self._queues[name].items.extend(_rewrap(v) for v in items)

    def _batch(
        self,
        conn: _Conn,
        request: int,
        batch: list[tuple[int, str, tuple[Any, ...]]],
        nursery: trio.Nursery,
    ) -> None:
        """Apply an eventual collection's writes in order; say which were refused."""
        refused = []
        nobody = _nobody()
        for op, name, args in batch:
            if op not in _BATCHABLE:
                refused.append(f"operation {op!r} cannot be batched")
                continue
            try:
                self._do(nobody, 0, op, name, list(args), nursery)
            except _Refused as exc:
                refused.append(str(exc))
        if refused:
            conn.fail(request, "ValueError", "; ".join(refused))
        else:
            conn.reply(request, None)

    def _park(
        self,
        conn: _Conn,
        request: int,
        timeout: float | None,
        nursery: trio.Nursery,
        why: str,
        token: str = "",
    ) -> _Wait:
        wait = _Wait(conn, request, token)
        conn.waits[request] = wait
        if timeout is not None:
            nursery.start_soon(self._expire, wait, timeout, why)
        return wait

    async def _expire(self, wait: _Wait, seconds: float, why: str) -> None:
        await trio.sleep(seconds)
        if not wait.done:
            wait.done = True
            wait.conn.waits.pop(wait.request, None)
            wait.conn.fail(wait.request, "TimeoutError", why)

    @staticmethod
    def _settle(wait: _Wait) -> bool:
        """Take a parked wait to answer it; False if it already ended (timeout, cancel)."""
        if wait.done:
            return False
        wait.done = True
        wait.conn.waits.pop(wait.request, None)
        return True

    def _put(self, name: str, value: _serial.Payload, *, front: bool = False) -> None:
        queue = self._queues[name]
        while queue.getters:
            wait = queue.getters.popleft()
            if self._settle(wait):
                wait.conn.reply(wait.request, value)
                return
        if front:
            queue.items.appendleft(value)
        else:
            queue.items.append(value)
        self._effect(ops.Q_RETURN if front else ops.Q_PUT, name, (value,))

    def _get(
        self, conn: _Conn, request: int, name: str, timeout: float | None, nursery: trio.Nursery
    ) -> None:
        queue = self._queues[name]
        if queue.items:
            conn.reply(request, queue.items.popleft())
            self._effect(_TAKEN, name, ())
            return
        why = f"sky.queue({name!r}).get(timeout={timeout}) found no item in time"
        queue.getters.append(self._park(conn, request, timeout, nursery, why))

    def _arrive(self, conn: _Conn, request: int, name: str, n: int) -> None:
        barrier = self._barriers.setdefault(name, _Barrier(n))
        if barrier.n != n:
            raise _Refused(
                "ValueError",
                f"sky.barrier({name!r}, n={n}): this barrier was made with n={barrier.n}; "
                "every participant must pass the same n",
            )
        wait = _Wait(conn, request)
        conn.waits[request] = wait
        barrier.arrived = [w for w in barrier.arrived if not w.done]  # drop cancelled waits
        barrier.arrived.append(wait)
        if len(barrier.arrived) < n:
            return
        arrived, barrier.arrived = barrier.arrived, []
        phase, barrier.phase = barrier.phase, barrier.phase + 1
        for wait in arrived:
            if self._settle(wait):
                wait.conn.reply(wait.request, phase)

    def _acquire(
        self,
        conn: _Conn,
        request: int,
        name: str,
        token: str,
        timeout: float | None,
        nursery: trio.Nursery,
    ) -> None:
        lock = self._locks[name]
        if lock.owner is None:
            lock.owner = (conn, token)
            conn.locks.add(name)
            conn.reply(request, None)
            return
        why = f"sky.lock({name!r}) was not free within its timeout ({timeout} s)"
        lock.waiters.append(self._park(conn, request, timeout, nursery, why, token))

    def _release(self, conn: _Conn, request: int, name: str, token: str) -> None:
        lock = self._locks.get(name)
        if lock is None or lock.owner != (conn, token):
            raise _Refused(
                "RuntimeError",
                f"sky.lock({name!r}).release(): this Lock object does not hold the lock",
            )
        conn.reply(request, None)
        self._unlock(name)

    def _unlock(self, name: str) -> None:
        """Free the lock and hand it to the first waiter still waiting."""
        lock = self._locks[name]
        if lock.owner is not None:
            lock.owner[0].locks.discard(name)
        lock.owner = None
        while lock.waiters:
            wait = lock.waiters.popleft()
            if self._settle(wait):
                lock.owner = (wait.conn, wait.token)
                wait.conn.locks.add(name)
                wait.conn.reply(wait.request, None)
                return


class Replica:
    """The client's copy of the contents of the store on node 0, so that node 0's loss
    does not lose them: the client asks the store for what changed (``SYNC``: the
    effects since its last sync, sent as soon as there are some, or the whole state when
    it is new or too far behind) and applies it here, and gives what it holds to the
    store a replacement node 0 starts (``RESTORE``), before any node is told where that
    store listens. Locks, barriers and waits are not kept (their holders' connections end
    with the store). What a task wrote in the moment before node 0 was lost may not have
    reached the client, and is lost with it.

    The copy is held in the client's memory: once the values it holds pass ``most``
    bytes, it is dropped and no longer kept (``stopped`` says why), rather than fill it.
    """

    def __init__(self, most: int = REPLICA_MOST) -> None:
        self.store = Store(b"")
        self.epoch = ""  # the store followed ("": none yet)
        self.seq = 0  # its effects applied here
        self.unkept: dict[str, str] = {}  # dicts and sets whose keys cannot load here: why
        self.most = most
        self.stopped = ""  # why the copy is no longer kept ("": it is)
        self._added = 0  # bytes of values added since the copy was last measured

    def take(self, answer: tuple[Any, ...]) -> None:
        """Apply a ``SYNC`` answer."""
        if self.stopped:
            return
        if answer[0] == "snapshot":
            _, epoch, seq, state = answer
            self.store, self.unkept = Store(b""), {}
            self._load(state)
            self.epoch, self.seq = str(epoch), int(seq)
            self._measure()
            return
        _, seq, effects = answer
        for op, name, args in effects:
            self._added += _valued_bytes(op, args)
            try:
                if op == _TAKEN:
                    items = self.store._queues[name].items
                    if items:
                        items.popleft()
                elif op == ops.Q_PUT:
                    self.store._queues[name].items.append(args[0])
                elif op == ops.Q_RETURN:
                    self.store._queues[name].items.appendleft(args[0])
                else:
                    self.store._write(op, name, args)
            except _Refused as refused:
                self.unkept.setdefault(name, str(refused))
        self.seq = int(seq)
        if self._added > _MEASURE_AFTER:
            self._measure()

    def _measure(self) -> None:
        """Drop the copy if its values pass ``most`` bytes."""
        self._added = 0
        store = self.store
        held = sum(_serial.payload_size(v) for d in store._dicts.values() for v in d.values())
        held += sum(_serial.payload_size(v) for q in store._queues.values() for v in q.items)
        if held > self.most:
            self.store = Store(b"")
            self.stopped = (
                f"the collections' values passed {self.most / 2**30:g} GiB "
                f"({held / 2**30:.1f} GiB), more than the client keeps a copy of"
            )

    def _load(self, state: dict[str, Any]) -> None:
        for kind in ("dicts", "sets"):
            for name, items in state[kind].items():
                try:
                    self.store._restore({**_EMPTY, kind: {name: items}})
                except _Refused as refused:
                    self.unkept.setdefault(name, str(refused))
        self.store._restore({**_EMPTY, "counters": state["counters"], "queues": state["queues"]})

    def state(self) -> dict[str, Any] | None:
        """What a new store takes up, or None when there is nothing to give it."""
        if self.stopped:
            return None
        state = self.store.snapshot()
        for kind in ("dicts", "sets"):
            state[kind] = {n: v for n, v in state[kind].items() if n not in self.unkept}
        return state if any(state.values()) else None


_EMPTY: dict[str, Any] = {"dicts": {}, "sets": {}, "counters": {}, "queues": {}}


class _Refused(Exception):
    """An operation the store answers with an error, raised again in the caller."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# Writes a replica repeats by applying them as the store did (Store._write).
_REPLAYED = frozenset(
    {
        ops.D_SET,
        ops.D_DEL,
        ops.D_UPDATE,
        ops.D_POP,
        ops.S_ADD,
        ops.S_DISCARD,
        ops.C_ADD,
        ops.C_SET,
    }
)
_TAKEN = -1  # an effect: a queue's first item was taken
# Effects kept for a replica between two syncs; past this, its next sync takes a snapshot.
_LOG_MOST = 100_000
# Bytes of values (Store._log_bytes) past which the log is dropped the same way.
_LOG_BYTES_MOST = 256 << 20
# Seconds a sync waits for an effect before answering that there was none.
_SYNC_WAIT = 30.0

# Writes that answer nothing the writer waits for: what an eventual collection batches.
_BATCHABLE = frozenset(
    {ops.D_SET, ops.D_DEL, ops.D_UPDATE, ops.S_ADD, ops.S_DISCARD, ops.C_ADD, ops.C_SET}
)


def _key(payload: _serial.Payload, name: str) -> Any:
    try:
        return _serial.loads(payload)
    except Exception as exc:
        raise _Refused(
            "TypeError",
            f"a key of {name!r} could not be unpickled on the head node ({exc}); keys and "
            "set members must be importable there (plain data, or your own installed code)",
        ) from None


class _Slot:
    __slots__ = ("done", "message")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.message: tuple[Any, ...] | None = None


class LocalClient:
    """The client's own connection to a store it runs itself (the client placement).

    Requests are applied in this trio thread, with no wire in between; the interface is
    the one the client's link to a store on node 0 has (``call``, ``closed``, ``close``).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._conn = _Conn("the client", self._deliver)
        self._pending: dict[int, _Slot] = {}
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self.closed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery the client's timed waits live in, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.close()

    def close(self, reason: str = "closed by the client") -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._store._forget(self._conn)
            pending, self._pending = self._pending, {}
            for slot in pending.values():
                slot.done.set()

    def _deliver(self, message: tuple[Any, ...]) -> None:
        slot = self._pending.pop(message[0], None)
        if slot is not None:
            slot.message = message
            slot.done.set()

    async def call(self, op: int, name: str, *args: Any) -> Any:
        """One operation; its value, or the error it carries raised here.

        Cancelled while it waits, it takes nothing: a wait still parked is withdrawn, and
        an item or lock granted at that very moment is given back.
        """
        assert self._nursery is not None, "LocalClient.run() has not started"
        if self.closed.is_set():
            raise RuntimeError("the pool's collections store is closed")
        request = next(self._ids)
        slot = self._pending[request] = _Slot()
        self._store._apply(self._conn, (request, op, name, *args), self._nursery)
        try:
            await slot.done.wait()
        except BaseException:
            self._pending.pop(request, None)
            if slot.message is None:
                self._store._apply(self._conn, (0, ops.CANCEL, name, request), self._nursery)
            elif slot.message[1]:
                undo = ops.give_back(op, name, args, slot.message[2])
                if undo is not None:
                    self._store._apply(self._conn, (0, undo[0], name, *undo[1]), self._nursery)
            raise
        if slot.message is None:
            raise RuntimeError("the pool's collections store is closed")
        _, ok, value = slot.message
        if not ok:
            ops.raise_failure(value)
        return value
