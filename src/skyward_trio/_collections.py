"""Distributed collections: the proxies, their messages, and how a node reaches the store.

A proxy (``Dict``, ``Set``, ``Counter``, ``Queue``, ``Barrier``, ``Lock``) turns each
method into one request to the pool's store (``_store.Store``, on the head node's worker)
and decodes the reply. Where the request travels is the proxy's backend:

- on a node (task threads and process-executor children alike), ``NodeBackend``: one
  connection per process, authenticated with the pool secret, shared by the task threads
  (replies are matched to requests by id): over TCP to node 0's private address, or, when
  the client runs the store, to a unix socket the client listens on through the node's
  SSH connection;
- in the client, the pool's link through node 0's SSH connection (``_storelink``), or
  the store itself when it runs there (``_store.LocalClient``).

Messages are ``_wire`` frames: ``(request_id, op, name, *args)`` one way and
``(request_id, ok, value)`` back, where a failed ``value`` is ``(error kind, message)``.
Keys and set members travel as ``_serial`` payloads and are unpickled by the store (it
hashes them); values stay payloads there and are unpickled only by the reader.

Layer 3: imported inside running functions on nodes, so stdlib, ``_wire``, ``_serial`` and
``_errors`` only (trio is imported only by an ``_async`` method called under trio).
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

from . import _serial, _wire
from ._errors import ConnectionLostError, NoActivePoolError, SerializationError
from ._version import PYTHON_VERSION, __version__

__all__ = [
    "GRANTING",
    "ROLE",
    "Backend",
    "Barrier",
    "Collections",
    "Counter",
    "Dict",
    "Lock",
    "NodeBackend",
    "Queue",
    "Set",
    "check_consistency",
    "eventual_backend",
    "give_back",
    "in_thread",
    "no_cluster_message",
    "node_backend",
    "raise_failure",
]

#: The hello ``role`` of a connection to the store.
ROLE = "store"

# Operations: (request_id, op, name, *args) -> (request_id, ok, value).
ADDRESS = 0  # () -> (host, port) the store listens on for the nodes
CANCEL = 1  # (request_id of a waiting op) -> whether it was still waiting (it gets nothing)
BATCH = 2  # ([(op, name, args), ...]) -> None: writes of eventual collections, in order
SYNC = 3  # (epoch, seq) -> ("delta", seq, effects) | ("snapshot", epoch, seq, state); waits
RESTORE = 4  # (state) -> whether it was taken (only by a store nothing was written to yet)
D_GET = 10  # (key) -> (found, value)
D_SET = 11  # (key, value) -> None
D_DEL = 12  # (key) -> found
D_HAS = 13  # (key) -> bool
D_UPDATE = 14  # ([(key, value), ...]) -> None
D_POP = 15  # (key) -> (found, value)
S_ADD = 20  # (member) -> None
S_DISCARD = 21  # (member) -> None
S_HAS = 22  # (member) -> bool
S_LEN = 23  # () -> int
C_GET = 30  # () -> int
C_ADD = 31  # (n) -> the new value
C_SET = 32  # (value) -> None
Q_PUT = 40  # (value) -> None
Q_GET = 41  # (timeout | None) -> value; waits
Q_LEN = 42  # () -> int
Q_RETURN = 43  # (value) -> None: put back at the head (a get was cancelled as it was answered)
B_WAIT = 50  # (n) -> the phase released; waits
L_ACQUIRE = 60  # (token, timeout | None) -> None; waits
L_RELEASE = 61  # (token) -> None

_ERRORS: dict[str, type[Exception]] = {
    "KeyError": KeyError,
    "TimeoutError": TimeoutError,
    "ValueError": ValueError,
    "TypeError": TypeError,
    "RuntimeError": RuntimeError,
}

_CONSISTENCY = ("strong", "eventual")


def check_consistency(factory: str, name: str, consistency: str | None) -> None:
    """Refuse a consistency that is neither None, ``"strong"`` nor ``"eventual"``."""
    if consistency not in (None, *_CONSISTENCY):
        raise ValueError(
            f"{factory}({name!r}, consistency={consistency!r}): consistency must be None, "
            '"strong" or "eventual"'
        )


def raise_failure(value: tuple[str, str]) -> None:
    """Raise the error a store reply carries, with its own type where it is a builtin."""
    kind, message = value
    raise _ERRORS.get(kind, RuntimeError)(message)


class Backend(Protocol):
    """Where a proxy's requests go: ``call`` blocks, ``call_async`` is awaited."""

    def call(self, op: int, name: str, *args: Any) -> Any: ...

    async def call_async(self, op: int, name: str, *args: Any) -> Any: ...


def _dump(value: Any, what: str) -> _serial.Payload:
    try:
        return _serial.dumps(value)
    except Exception as exc:
        raise SerializationError(
            f"{what} of type {type(value).__qualname__} cannot be pickled ({exc}); "
            "collections hold picklable values only"
        ) from exc


def _dump_key(key: Any, what: str) -> _serial.Payload:
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"{what} {key!r} is unhashable; use an immutable {what} (str, int, tuple, ...)"
        ) from None
    return _dump(key, what)


def _found(reply: tuple[bool, Any], key: Any) -> Any:
    found, value = reply
    if not found:
        raise KeyError(key)
    return _serial.loads(value)


def _or_default(reply: tuple[bool, Any], default: Any) -> Any:
    found, value = reply
    return _serial.loads(value) if found else default


def _deleted(found: bool, key: Any) -> None:
    if not found:
        raise KeyError(key)


class _Proxy:
    _factory: ClassVar[str]

    def __init__(self, backend: Backend, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"{self._factory}() needs a non-empty string name, got {name!r}; "
                f'every task that uses {self._factory}("...") with the same name shares it'
            )
        self._backend = backend
        self.name = name

    def __repr__(self) -> str:
        return f"{self._factory}({self.name!r})"

    def _call(self, op: int, *args: Any) -> Any:
        return self._backend.call(op, self.name, *args)

    async def _acall(self, op: int, *args: Any) -> Any:
        return await self._backend.call_async(op, self.name, *args)


class Dict(_Proxy):
    """A dict shared by the pool: ``d[k]``, ``d[k] = v``, ``del d[k]``, ``k in d``, ``get``,
    ``update``, ``pop``. No ``items()``, ``keys()`` or ``len()``: reading the whole dict
    would be a snapshot that is stale at once."""

    _factory = "sky.dict"

    def __getitem__(self, key: Any) -> Any:
        return _found(self._call(D_GET, _dump_key(key, "key")), key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._call(D_SET, _dump_key(key, "key"), _dump(value, "value"))

    def __delitem__(self, key: Any) -> None:
        _deleted(self._call(D_DEL, _dump_key(key, "key")), key)

    def __contains__(self, key: Any) -> bool:
        return bool(self._call(D_HAS, _dump_key(key, "key")))

    def get(self, key: Any, default: Any = None) -> Any:
        return _or_default(self._call(D_GET, _dump_key(key, "key")), default)

    def update(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> None:
        self._call(D_UPDATE, _pairs(items))

    def pop(self, key: Any, default: Any = None) -> Any:
        return _or_default(self._call(D_POP, _dump_key(key, "key")), default)

    async def getitem_async(self, key: Any) -> Any:
        return _found(await self._acall(D_GET, _dump_key(key, "key")), key)

    async def setitem_async(self, key: Any, value: Any) -> None:
        await self._acall(D_SET, _dump_key(key, "key"), _dump(value, "value"))

    async def delitem_async(self, key: Any) -> None:
        _deleted(await self._acall(D_DEL, _dump_key(key, "key")), key)

    async def contains_async(self, key: Any) -> bool:
        return bool(await self._acall(D_HAS, _dump_key(key, "key")))

    async def get_async(self, key: Any, default: Any = None) -> Any:
        return _or_default(await self._acall(D_GET, _dump_key(key, "key")), default)

    async def update_async(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> None:
        await self._acall(D_UPDATE, _pairs(items))

    async def pop_async(self, key: Any, default: Any = None) -> Any:
        return _or_default(await self._acall(D_POP, _dump_key(key, "key")), default)


def _pairs(items: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    pairs = items.items() if isinstance(items, Mapping) else items
    return [(_dump_key(k, "key"), _dump(v, "value")) for k, v in pairs]


class Set(_Proxy):
    """A set shared by the pool: ``add``, ``discard``, ``v in s``, ``len(s)``."""

    _factory = "sky.set"

    def add(self, value: Any) -> None:
        self._call(S_ADD, _dump_key(value, "member"))

    def discard(self, value: Any) -> None:
        self._call(S_DISCARD, _dump_key(value, "member"))

    def __contains__(self, value: Any) -> bool:
        return bool(self._call(S_HAS, _dump_key(value, "member")))

    def __len__(self) -> int:
        return int(self._call(S_LEN))

    async def add_async(self, value: Any) -> None:
        await self._acall(S_ADD, _dump_key(value, "member"))

    async def discard_async(self, value: Any) -> None:
        await self._acall(S_DISCARD, _dump_key(value, "member"))

    async def contains_async(self, value: Any) -> bool:
        return bool(await self._acall(S_HAS, _dump_key(value, "member")))

    async def len_async(self) -> int:
        return int(await self._acall(S_LEN))


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    return value


class Counter(_Proxy):
    """An integer shared by the pool; ``increment`` and ``decrement`` are atomic and return
    the new value."""

    _factory = "sky.counter"

    @property
    def value(self) -> int:
        return int(self._call(C_GET))

    def __int__(self) -> int:
        return self.value

    def increment(self, n: int = 1) -> int:
        return int(self._call(C_ADD, _int(n, "n")))

    def decrement(self, n: int = 1) -> int:
        return int(self._call(C_ADD, -_int(n, "n")))

    def reset(self, value: int = 0) -> None:
        self._call(C_SET, _int(value, "value"))

    async def value_async(self) -> int:
        return int(await self._acall(C_GET))

    async def increment_async(self, n: int = 1) -> int:
        return int(await self._acall(C_ADD, _int(n, "n")))

    async def decrement_async(self, n: int = 1) -> int:
        return int(await self._acall(C_ADD, -_int(n, "n")))

    async def reset_async(self, value: int = 0) -> None:
        await self._acall(C_SET, _int(value, "value"))


def _timeout(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{what} must be None or a number of seconds >= 0, got {value!r}")
    return float(value)


class Queue(_Proxy):
    """A FIFO queue shared by the pool: ``put``, ``get(timeout=None)``, ``empty()``,
    ``len(q)``. ``get`` waits for an item; past ``timeout`` it raises ``TimeoutError``."""

    _factory = "sky.queue"

    def put(self, value: Any) -> None:
        self._call(Q_PUT, _dump(value, "value"))

    def get(self, timeout: float | None = None) -> Any:
        return _serial.loads(self._call(Q_GET, _timeout(timeout, "timeout")))

    def empty(self) -> bool:
        return len(self) == 0

    def __len__(self) -> int:
        return int(self._call(Q_LEN))

    async def put_async(self, value: Any) -> None:
        await self._acall(Q_PUT, _dump(value, "value"))

    # The reference's signature; the store, not a cancel scope here, owns this deadline.
    async def get_async(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return _serial.loads(await self._acall(Q_GET, _timeout(timeout, "timeout")))

    async def empty_async(self) -> bool:
        return await self.len_async() == 0

    async def len_async(self) -> int:
        return int(await self._acall(Q_LEN))


class Barrier(_Proxy):
    """``wait()`` returns once ``n`` participants have called it; then the next phase
    starts (the barrier is reusable). Returns the phase number, from 0."""

    _factory = "sky.barrier"

    def __init__(self, backend: Backend, name: str, n: int) -> None:
        super().__init__(backend, name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sky.barrier({name!r}, n={n!r}): n must be an int >= 1")
        self.n = n

    def wait(self) -> int:
        return int(self._call(B_WAIT, self.n))

    async def wait_async(self) -> int:
        return int(await self._acall(B_WAIT, self.n))


class Lock(_Proxy):
    """A mutex shared by the pool: ``acquire()``, ``release()``, ``with lock:``.

    ``acquire`` waits at most ``timeout`` seconds (None: for ever), then raises
    ``TimeoutError``. A lock held by a task whose node (or process-executor child) died
    is released. One ``Lock`` object is one holder: acquire and release it in one task.
    """

    _factory = "sky.lock"

    def __init__(self, backend: Backend, name: str, timeout: float | None = 30) -> None:
        super().__init__(backend, name)
        self.timeout = _timeout(timeout, f"sky.lock({name!r}, timeout=...)")
        self._token: str | None = None

    def _take(self) -> str:
        if self._token is not None:
            raise RuntimeError(
                f"{self!r} is already held by this Lock object; release() it first "
                "(the lock is not reentrant)"
            )
        return secrets.token_hex(8)

    def _held(self) -> str:
        if self._token is None:
            raise RuntimeError(f"{self!r} is not held by this Lock object; acquire() it first")
        return self._token

    def acquire(self) -> None:
        token = self._take()
        self._call(L_ACQUIRE, token, self.timeout)
        self._token = token

    def release(self) -> None:
        self._call(L_RELEASE, self._held())
        self._token = None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def acquire_async(self) -> None:
        token = self._take()
        await self._acall(L_ACQUIRE, token, self.timeout)
        self._token = token

    async def release_async(self) -> None:
        await self._acall(L_RELEASE, self._held())
        self._token = None

    async def __aenter__(self) -> Lock:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release_async()


# --- on a node -----------------------------------------------------------------------

#: Set by the worker; its task threads and process-executor children inherit it.
WORKER_DIR_ENV = "SKYWARD_WORKER_DIR"
#: Written by the client into the worker's directory: where the store listens.
ENDPOINT_FILE = "store.json"
# How long a node waits for the client to tell it where the store is (the head node may
# still be starting), and for a connection to it.
_FIND_STORE = 60.0
_CONNECT = 10.0


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run a blocking call off the caller's event loop (trio or asyncio)."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn)


class Collections:
    """The pool's collections, reached from the client: ``pool.counter(name)`` (and
    ``queue``, ``barrier``, ``lock``, ``dict``, ``set``) is the proxy ``sky.counter(name)``
    gives a function running on the pool. In the sync face its methods are called as
    they are; in trio, their ``_async`` variants are awaited.

    For a class that sets ``_store`` (where the proxies' requests go) and
    ``_collections_of`` (``"pool"``, ``"client"``: how messages name it).
    """

    _store: Backend
    _collections_of: ClassVar[str]

    def _check_cluster(self, kind: str, name: str) -> None:
        """Refuse a collection of a pool opened with ``Options(cluster=False)``."""
        if getattr(self._store, "off", False):
            what = f"{self._collections_of}.{kind}({name!r})"
            raise NoActivePoolError(no_cluster_message(what))

    def counter(self, name: str, *, consistency: str | None = None) -> Counter:
        """The pool's counter ``name`` (``c.increment()``, ``c.value()``)."""
        check_consistency(f"{self._collections_of}.counter", name, consistency)
        self._check_cluster("counter", name)
        return Counter(self._store, name)

    def queue(self, name: str) -> Queue:
        """The pool's FIFO queue ``name`` (``q.put(v)``, ``q.get()``)."""
        self._check_cluster("queue", name)
        return Queue(self._store, name)

    def barrier(self, name: str, n: int) -> Barrier:
        """The pool's barrier ``name`` for ``n`` participants (``b.wait()``)."""
        self._check_cluster("barrier", name)
        return Barrier(self._store, name, n)

    def lock(self, name: str, timeout: float | None = 30) -> Lock:
        """The pool's lock ``name`` (``with pool.lock(name): ...``; in trio, ``async
        with``)."""
        self._check_cluster("lock", name)
        return Lock(self._store, name, timeout)

    # ``dict`` and ``set`` close the class: named after builtins, they would shadow them in
    # the annotations that follow.

    def dict(self, name: str, *, consistency: str | None = None) -> Dict:
        """The pool's dict ``name`` (``d[k]``, ``d[k] = v``, ``d.get(k)``, ...)."""
        check_consistency(f"{self._collections_of}.dict", name, consistency)
        self._check_cluster("dict", name)
        return Dict(self._store, name)

    def set(self, name: str, *, consistency: str | None = None) -> Set:
        """The pool's set ``name`` (``s.add(v)``, ``v in s``, ``len(s)``)."""
        check_consistency(f"{self._collections_of}.set", name, consistency)
        self._check_cluster("set", name)
        return Set(self._store, name)


#: The waits whose answer grants something (an item, the lock): given up as they are
#: answered, what they were granted must be given back (``give_back``).
GRANTING = frozenset({Q_GET, L_ACQUIRE})


def give_back(
    op: int, name: str, args: tuple[Any, ...], value: Any
) -> tuple[int, tuple[Any, ...]] | None:
    """What returns what a wait given up was granted as it gave up (``op`` asked with
    ``args``, answered ``value``): the item put back at the queue's head, the lock
    released; None for what has nothing to return (an op not in ``GRANTING``)."""
    if op == Q_GET:
        return Q_RETURN, (value,)
    if op == L_ACQUIRE:
        return L_RELEASE, (args[0],)
    return None


class _Reply:
    __slots__ = ("done", "message")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.message: tuple[Any, ...] | None = None


class _Connection:
    """One process's connection to the store, shared by its threads.

    A daemon thread reads replies and wakes the thread that waits for each; a thread
    blocked in ``queue.get`` or ``lock.acquire`` so never holds up the others. An awaited
    wait (``get_async``, ``acquire_async``) that is given up (a timeout, a cancel) tells
    the store to stop waiting, and an item or a lock granted to it at that instant is
    given back: a thread left waiting would take them for nobody.
    """

    def __init__(self, sock: socket.socket, decoder: _wire.FrameDecoder, where: str) -> None:
        self._sock = sock
        self._decoder = decoder
        self._where = where
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        # Waits given up whose answer may still come: what they asked (to undo it then),
        # and each CANCEL sent -> the wait it withdraws.
        self._abandoned: dict[int, tuple[int, str, tuple[Any, ...]]] = {}
        self._cancels: dict[int, int] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.broken: str | None = None
        threading.Thread(target=self._read, name="skyward-store-reader", daemon=True).start()

    def call(self, op: int, name: str, args: tuple[Any, ...]) -> Any:
        reply = self._start(op, name, args)[1]
        reply.done.wait()
        return self._value(reply)

    async def call_async(self, op: int, name: str, args: tuple[Any, ...]) -> Any:
        request, reply = self._start(op, name, args)
        try:
            await in_thread(reply.done.wait)
        except BaseException:
            self._give_up(request, reply, op, name, args)
            raise
        return self._value(reply)

    def _start(self, op: int, name: str, args: tuple[Any, ...]) -> tuple[int, _Reply]:
        reply = _Reply()
        with self._lock:
            if self.broken is not None:
                raise self._lost()
            request = next(self._ids)
            self._pending[request] = reply
        self._send((request, op, name, *args))
        return request, reply

    def _value(self, reply: _Reply) -> Any:
        if reply.message is None:
            raise self._lost()
        _, ok, value = reply.message
        if not ok:
            raise_failure(value)
        return value

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                for chunk in _wire.encode(message):
                    self._sock.sendall(chunk)
        except OSError as exc:
            self._break(f"sending failed: {exc}")

    def _give_up(
        self, request: int, reply: _Reply, op: int, name: str, args: tuple[Any, ...]
    ) -> None:
        """The caller of ``request`` is gone: withdraw its wait, or undo its answer."""
        with self._lock:
            waiting = self._pending.pop(request, None) is not None and self.broken is None
            if waiting:
                if op in GRANTING:
                    self._abandoned[request] = (op, name, args)
                cancel = next(self._ids)
                self._cancels[cancel] = request
        if waiting:
            self._send((cancel, CANCEL, name, request))
        elif reply.message is not None:  # answered as it was given up
            self._give_back(reply.message, op, name, args)
        reply.done.set()  # the thread that waited for it ends

    def _give_back(
        self, message: tuple[Any, ...], op: int, name: str, args: tuple[Any, ...]
    ) -> None:
        """A wait given up was answered anyway: return what it was given. (If the
        connection breaks first, the store frees the lock itself; the item is lost with
        it, as with any reader that vanished holding one.)"""
        _, ok, value = message
        undo = give_back(op, name, args, value) if ok else None
        if undo is not None:
            self._send((next(self._ids), undo[0], name, *undo[1]))

    def _lost(self) -> ConnectionLostError:
        return ConnectionLostError(
            f"the connection to the pool's collections store ({self._where}) was lost "
            f"({self.broken}); the operation may or may not have been applied (a store "
            "that runs on node 0 loses its state with that node)",
            node=0,
        )

    def _read(self) -> None:
        messages = self._decoder.release()
        while True:
            for message in messages:
                with self._lock:
                    reply = self._pending.pop(message[0], None)
                    if reply is not None:
                        reply.message = message  # under the lock: see _give_up
                    abandoned = self._abandoned.pop(message[0], None)
                    cancelled = self._cancels.pop(message[0], None)
                    if cancelled is not None and message[1] and message[2]:
                        self._abandoned.pop(cancelled, None)  # withdrawn: no answer comes
                if reply is not None:
                    reply.done.set()
                elif abandoned is not None:
                    self._give_back(message, *abandoned)
            try:
                data = self._sock.recv(1 << 20)
            except OSError as exc:
                self._break(str(exc))
                return
            if not data:
                self._break("the store closed the connection")
                return
            try:
                messages = self._decoder.feed(data)
            except (_wire.ProtocolError, pickle.UnpicklingError) as exc:
                self._break(f"bad frame from the store: {exc}")
                return

    def _break(self, reason: str) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = reason
            pending, self._pending = self._pending, {}
        for reply in pending.values():
            reply.done.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return  # already closed: the reader has seen it too


class NodeBackend:
    """Requests from a node: blocking over this process's connection to the store."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._conn: _Connection | None = None
        self._lock = threading.Lock()

    def call(self, op: int, name: str, *args: Any) -> Any:
        return self._connection().call(op, name, args)

    async def call_async(self, op: int, name: str, *args: Any) -> Any:
        connection = await in_thread(self._connection)
        return await connection.call_async(op, name, args)

    def _connection(self) -> _Connection:
        with self._lock:
            if self._conn is None or self._conn.broken is not None:
                self._conn = self._connect()
            return self._conn

    def _connect(self) -> _Connection:
        """Find the store (the client writes its address here once the head node is up)
        and open an authenticated connection to it."""
        deadline = time.monotonic() + _FIND_STORE
        last = "the client has not said where the store is yet (the head node may be starting)"
        while time.monotonic() < deadline:
            try:
                endpoint = json.loads((self._directory / ENDPOINT_FILE).read_text())
                address: str | tuple[str, int] = (
                    str(endpoint["path"])
                    if "path" in endpoint
                    else (str(endpoint["host"]), int(endpoint["port"]))
                )
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
                continue
            try:
                return self._open(address)
            except OSError as exc:
                # A replaced head node has a new store: wait for the client to write it.
                last = f"connecting to {address} failed: {exc}"
                time.sleep(0.2)
        raise ConnectionLostError(
            f"could not reach the pool's collections store within {_FIND_STORE:g} s: {last}",
            node=0,
        )

    def _open(self, address: str | tuple[str, int]) -> _Connection:
        """Connect to the store: over TCP on node 0, or, when the client runs it, to the
        unix socket the client listens on here through its SSH connection."""
        secret = (self._directory / "secret").read_text().strip()
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_CONNECT)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address, timeout=_CONNECT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            hello = {
                "secret": secret,
                "python": PYTHON_VERSION,
                "skyward": __version__,
                "role": ROLE,
            }
            sock.sendall(_wire.encode_hello(hello))
            decoder = _wire.FrameDecoder(expect_hello=True)
            answer: list[Any] = []
            while not answer:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("the store closed the connection in the hello")
                answer = decoder.feed(data)
            if not answer[0].get("ok"):
                raise ConnectionRefusedError(f"the store refused us: {answer[0].get('error')}")
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        return _Connection(sock, decoder, where)


_backend: NodeBackend | None = None
_backend_lock = threading.Lock()


def node_backend(factory: str, name: str) -> NodeBackend:
    """This process's backend, or a ``NoActivePoolError`` outside a running function."""
    global _backend
    directory = os.environ.get(WORKER_DIR_ENV)
    if not directory:
        raise NoActivePoolError(
            f"{factory}({name!r}) needs an active pool: collections work inside a "
            "@sky.function running on a pool (in the client, use pool."
            f"{factory.removeprefix('sky.')}({name!r}) on the pool from sky.Compute)"
        )
    with _backend_lock:
        if _backend is None:
            _refuse_if_no_cluster(Path(directory), factory, name)
            _backend = NodeBackend(Path(directory))
        return _backend


def _refuse_if_no_cluster(directory: Path, factory: str, name: str) -> None:
    """Raise ``NoActivePoolError`` if the client told this node its pool has no
    collections (``Options(cluster=False)``: it writes ``{"off": ...}`` for the address)."""
    try:
        endpoint = json.loads((directory / ENDPOINT_FILE).read_text())
    except (OSError, ValueError):
        return  # not told yet: NodeBackend waits for the address
    if isinstance(endpoint, dict) and "off" in endpoint:
        raise NoActivePoolError(no_cluster_message(f"{factory}({name!r})"))


def no_cluster_message(what: str) -> str:
    """What ``what`` (a collection) says on a pool opened with ``Options(cluster=False)``."""
    return (
        f"{what}: this pool was opened with Options(cluster=False), so its "
        "nodes run independently and it has no collections. Open it with cluster=None "
        "(the default) or cluster=True to use sky.dict, sky.counter and the others"
    )


_eventual: Backend | None = None


def eventual_backend(factory: str, name: str) -> Backend:
    """This process's backend for ``consistency="eventual"`` (see ``_eventual``)."""
    global _eventual
    strong = node_backend(factory, name)
    from ._eventual import EventualBackend

    with _backend_lock:
        if _eventual is None:
            _eventual = EventualBackend(strong)
        return _eventual
