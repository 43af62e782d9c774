"""The client's link to the pool's collections store, through the head node's SSH connection.

The store listens on the head node's private address, which the client may not reach; the
head node's worker socket is reachable (a direct-streamlocal channel, as for tasks), and a
hello with ``role: "store"`` there is served by the store itself. Requests are pipelined
and matched to replies by id; the link's first request asks where the store listens for
the nodes (``ADDRESS``), which the client then writes on every node.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Protocol

import trio

from . import _collections as ops
from . import _transport, _wire
from ._errors import ConnectionLostError, NoActivePoolError, PoolClosedError
from ._store import Replica
from ._version import PYTHON_VERSION, __version__

__all__ = ["ClientStore", "StoreLink"]


class _Slot:
    __slots__ = ("done", "message")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.message: tuple[Any, ...] | None = None


class StoreLink:
    """Requests to the store from the client's trio thread."""

    def __init__(self) -> None:
        self._decoder = _wire.FrameDecoder(expect_hello=True)
        self._link: _transport.WorkerLink | None = None
        self._hello: dict[str, Any] | None = None
        self._answered = trio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Slot] = {}
        # Waiting operations cancelled here whose answer may already be on its way: an
        # item or a lock granted to them is given back when that answer comes.
        self._abandoned: dict[int, tuple[int, str, tuple[Any, ...]]] = {}
        self._cancels: dict[int, int] = {}  # CANCEL request -> the request it cancels
        self.closed = trio.Event()
        self.close_reason = ""

    async def open(
        self, ssh: _transport.SSHConnection, socket_path: str, secret: str
    ) -> tuple[str, int]:
        """Connect, authenticate, and return where the store listens for the nodes.

        The caller owns the deadline.
        """
        self._link = await ssh.open_unix(socket_path, self._on_data, self._on_close)
        hello = {"secret": secret, "python": PYTHON_VERSION, "skyward": __version__}
        self._link.write(_wire.encode_hello({**hello, "role": ops.ROLE}))
        await self._answered.wait()  # also set when the link closes
        if self._hello is None or not self._hello.get("ok"):
            why = self._hello.get("error") if self._hello else self.close_reason
            raise ConnectionLostError(f"the collections store refused the client: {why}", node=0)
        self._on_messages(self._decoder.release())
        host, port = await self.call(ops.ADDRESS, "")
        return str(host), int(port)

    def _on_data(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except _wire.ProtocolError as exc:
            self.close(f"protocol error: {exc}")
            return
        self._on_messages(messages)

    def _on_messages(self, messages: list[Any]) -> None:
        for message in messages:
            if isinstance(message, dict):
                self._hello = message
                self._answered.set()
                continue
            slot = self._pending.pop(message[0], None)
            if slot is not None:
                slot.message = message
                slot.done.set()
            elif message[0] in self._abandoned:
                self._give_back(message, *self._abandoned.pop(message[0]))
            elif message[0] in self._cancels:
                cancelled = self._cancels.pop(message[0])
                if message[2]:  # it was still waiting: no answer will come for it
                    self._abandoned.pop(cancelled, None)

    def _give_back(
        self, message: tuple[Any, ...], op: int, name: str, args: tuple[Any, ...]
    ) -> None:
        """A cancelled wait was answered anyway: return what it was given."""
        _, ok, value = message
        if not ok or self.closed.is_set():
            return
        # If the link breaks meanwhile, the store frees the lock itself (the item is lost
        # with the link, as with any reader that vanished holding it).
        undo = ops.give_back(op, name, args, value)
        if undo is not None:
            with contextlib.suppress(ConnectionLostError):
                self._write((next(self._ids), undo[0], name, *undo[1]))

    def _on_close(self, reason: str) -> None:
        self.close_reason = reason
        self.closed.set()
        self._answered.set()
        pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.done.set()

    async def call(self, op: int, name: str, *args: Any) -> Any:
        """One request; its reply's value, or the error it carries raised here.

        Cancelled while it waits (a ``queue.get``, a ``lock.acquire``), it tells the store
        to stop waiting, so no item or lock is handed to a caller that has gone.
        """
        if self._link is None or self.closed.is_set():
            raise self._lost()
        request = next(self._ids)
        slot = self._pending[request] = _Slot()
        self._write((request, op, name, *args))
        try:
            await slot.done.wait()
        except BaseException:
            if self._pending.pop(request, None) is not None and not self.closed.is_set():
                if op in ops.GRANTING:
                    self._abandoned[request] = (op, name, args)
                cancel = next(self._ids)
                self._cancels[cancel] = request
                with contextlib.suppress(ConnectionLostError):  # closed: nothing to cancel
                    self._write((cancel, ops.CANCEL, name, request))
            raise
        if slot.message is None:
            raise self._lost()
        _, ok, value = slot.message
        if not ok:
            ops.raise_failure(value)
        return value

    def _write(self, message: tuple[Any, ...]) -> None:
        assert self._link is not None
        try:
            self._link.write(b"".join(_wire.encode(message)))
        except _transport.SSHError as exc:
            raise self._lost() from exc

    def _lost(self) -> ConnectionLostError:
        return ConnectionLostError(
            "the client's link to the pool's collections store (on node 0) was lost "
            f"({self.close_reason or 'not open'}); the operation may or may not have been "
            "applied",
            node=0,
        )

    def close(self, reason: str = "closed by the client") -> None:
        if self._link is not None:
            self._link.close(reason)
        else:
            self._on_close(reason)


# How long a client-side operation waits for the head node (and its store) to be up.
_WAIT_FOR_STORE = 300.0


class _Link(Protocol):
    closed: trio.Event

    async def call(self, op: int, name: str, *args: Any) -> Any: ...
    def close(self, reason: str = ...) -> None: ...


class ClientStore:
    """The pool's store as the client sees it: the link while the head node is up.

    It is the backend of the proxies ``pool.dict(name)`` etc. return in the trio face:
    their ``_async`` methods are awaited; the blocking ones would stall the trio loop, so
    they refuse with the fix.
    """

    def __init__(self) -> None:
        self.link: _Link | None = None
        # Where node 0's store listens (None when the store runs in the client).
        self.endpoint: tuple[str, int] | None = None
        # The contents of node 0's store, kept here for its replacement (see Replica).
        self.replica = Replica()
        self._changed = trio.Event()
        self._closed = False
        # Options(cluster=False): the pool has no store; its collections are refused.
        self.off = False

    def attach(self, link: _Link, endpoint: tuple[str, int] | None) -> None:
        """The store is up: node 0's (again, after a replacement: a new, empty one), or
        the client's own (``endpoint`` None)."""
        old, self.link, self.endpoint = self.link, link, endpoint
        if old is not None and old is not link:
            old.close("the client reached the store again")  # through a connection now gone
        self._changed.set()
        self._changed = trio.Event()

    def detach(self, reason: str) -> None:
        """The head node is gone; operations wait for its replacement."""
        link, self.link, self.endpoint = self.link, None, None
        if link is not None:
            link.close(reason)

    def close(self) -> None:
        """The pool is closing: operations fail with ``PoolClosedError`` from now on."""
        self._closed = True
        self.detach("the pool closed")
        self._changed.set()

    def call(self, op: int, name: str, *args: Any) -> Any:
        raise RuntimeError(
            "this collection belongs to a skyward_trio pool: a blocking method would stall "
            "the trio loop; await its _async variant instead (await d.get_async(k), "
            "await c.increment_async(), async with lock: ...)"
        )

    async def call_async(self, op: int, name: str, *args: Any) -> Any:
        if self.off:
            raise NoActivePoolError(ops.no_cluster_message(f"the collection {name!r}"))
        with trio.move_on_after(_WAIT_FOR_STORE):
            while self.link is None or self.link.closed.is_set():
                if self._closed:
                    raise PoolClosedError("the pool closed; its collections are gone with it")
                await self._changed.wait()
            return await self.link.call(op, name, *args)
        raise PoolClosedError(
            f"the pool's collections store (on node 0) was not up within {_WAIT_FOR_STORE:g} s"
        )
