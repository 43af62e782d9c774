"""The pool server: ``python -m skyward_trio._server``, which ``sky server start`` runs.

A long-lived process on this machine that holds pools by name (``sky compute create
NAME``), so that scripts, notebooks and the ``sky`` command use machines that are already
up instead of provisioning their own each time. ``sky.Client(NAME)`` sends it calls.

It speaks HTTP/1.1 on 127.0.0.1 only (h11, on trio; a connection is kept for the next
request). Every request carries the token of the state file (``~/.skyward/server.json``,
mode 0600, which also holds the address and the process id): calls carry pickles that run
code on the nodes, so nothing unauthenticated is read. The server relays calls: the function and its
arguments are pickled by the client and the result by the node, and the server unpickles
neither (so a client's modules need not import here). It does unpickle the specs of
``sky compute create``: Skyward's own records, and plugins pickled by value.

A call's ``Iterator[T]`` arguments are fed by the client while it runs, a batch of
pickled items per request to the call's feed; a request is answered once the node has
room for its items, so the client reads its iterable a window ahead of the node, as a
pool of one's own does. A broadcast's feed is given to every node (``_pool._fan_batches``):
a request is answered once each node still reading has room.

A client that hangs up cancels its call (the node is told). Each ``Client`` also keeps
one request open for as long as it lives (its session, ``POST /pools/NAME/session``,
named by the id its other requests carry in ``x-skyward-client``): when that connection
closes (the client closed, or its process died), the server cancels the client's calls
still running and releases the locks it holds, as the store does for a node whose
connection closed. ``sky server stop``, SIGTERM
and SIGINT close every pool and terminate its machines before the process exits. A server
that dies without closing them leaves nodes that end themselves when their lease runs out
(``Spec.ttl``).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import math
import os
import secrets
import signal
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cloudpickle
import h11
import trio

from . import _collections as ops
from . import _serial, _transport
from ._compute import Compute
from ._errors import ConnectionLostError, PoolClosedError
from ._events import Event
from ._model import Options, Spec
from ._pool import CancelledCallError, Inflight, Pool, PreparedCall, RelayedInput
from ._serverwire import (
    CLIENT_CLOSED,
    CLIENT_HEADER,
    FRAME,
    STATE_FILE,
    event_json,
    join_payload,
    left_path,
    pack,
    split_payload,
    to_tree,
    tree_value,
    unpack,
)
from ._version import __version__

__all__ = ["main"]

T = TypeVar("T")

_MAX_HEAD = 64 * 1024  # a request line and headers, at most

# How long releasing a gone client's locks may take (the store answers at once, unless
# its node is being replaced).
_RELEASE_GRACE = 10.0


#: What a client may ask of the store: what the collections' proxies send.
_STORE_OPS = frozenset(
    {
        ops.D_GET, ops.D_SET, ops.D_DEL, ops.D_HAS, ops.D_UPDATE, ops.D_POP,
        ops.S_ADD, ops.S_DISCARD, ops.S_HAS, ops.S_LEN,
        ops.C_GET, ops.C_ADD, ops.C_SET,
        ops.Q_PUT, ops.Q_GET, ops.Q_LEN,
        ops.B_WAIT,
        ops.L_ACQUIRE, ops.L_RELEASE,
    }
)  # fmt: skip


def _parse_store(body: bytearray) -> tuple[int, str, tuple[Any, ...], str | None]:
    try:
        header, blobs = unpack(body)
        op, name, args = header["op"], header["name"], tree_value(header, "args", blobs)
    except (ValueError, KeyError, TypeError) as exc:
        raise _BadRequest(400, f"not a collection operation: {exc}") from None
    if op not in _STORE_OPS or not isinstance(name, str) or not isinstance(args, tuple):
        raise _BadRequest(400, f"not a collection operation: op {op!r} on {name!r}")
    ticket = header.get("ticket")
    if ticket is not None and not (isinstance(ticket, str) and 0 < len(ticket) <= 64):
        raise _BadRequest(400, f"a ticket is a short string, got {ticket!r}")
    return op, name, args, ticket


def _parse_ticket(body: bytearray) -> str:
    try:
        ticket = json.loads(body)["ticket"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _BadRequest(400, f"not a wait given up ({{'ticket': ...}}): {exc}") from None
    if not (isinstance(ticket, str) and 0 < len(ticket) <= 64):
        raise _BadRequest(400, f"a ticket is a short string, got {ticket!r}")
    return ticket


def _store_answer(value: Any = None, error: Exception | None = None) -> tuple[int, str, list[Any]]:
    if error is not None:
        message = error.args[0] if len(error.args) == 1 else str(error)
        return 200, FRAME, pack({"ok": False, "error": [type(error).__name__, str(message)]})
    blobs: list[Any] = []
    return 200, FRAME, pack({"ok": True, "value": to_tree(value, blobs)}, blobs)


# -- the state file ------------------------------------------------------------------------------


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(state, out)
    os.replace(fresh, path)


def _forget_state(path: Path) -> None:
    """Remove the state file, if it is still this process's."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


# -- HTTP ----------------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytearray


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> _Request | None:
    body = bytearray()
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(1 << 20)
            conn.receive_data(data)  # b"" is the end of the stream
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            return _Request(request.method.decode(), request.target.decode(), headers, body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _respond(
    conn: h11.Connection, stream: trio.SocketStream, status: int, kind: str, parts: list[Any]
) -> None:
    length = sum(memoryview(p).nbytes for p in parts)
    headers = [
        ("content-type", kind),
        ("content-length", str(length)),
        ("server", f"skyward/{__version__}"),
    ]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    for part in parts:
        # Through h11 (it counts against content-length), but not joined: not copied.
        for piece in conn.send_with_data_passthrough(h11.Data(data=part)) or ():
            await stream.send_all(piece)
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


@attrs.frozen
class _Events:
    """A response that streams a pool's events, a JSON line each, until it closes."""

    pool: Pool


@attrs.frozen
class _Creating:
    """A create request that follows the pool's events while it comes up (``?follow=1``)."""

    held: _Held


#: The head of a response of frames, as long as a generator function yields items.
_STREAMED_FRAMES = [
    ("content-type", FRAME),
    ("transfer-encoding", "chunked"),
    ("connection", "close"),
    ("server", f"skyward/{__version__}"),
]

#: Items sent to a client before the node may run that many more ahead.
_CREDIT_BATCH = 32


#: The head of a run's or broadcast's answer: frames (its output, then its results), on
#: a connection kept for the next request.
_FRAMES_KEPT = [
    ("content-type", FRAME),
    ("transfer-encoding", "chunked"),
    ("server", f"skyward/{__version__}"),
]


@attrs.frozen
class _Calling:
    """A run or broadcast, whose answer the response streams (its output first)."""

    held: _Held
    how: str
    call: PreparedCall
    target: Any
    session: _Session | None


@attrs.frozen
class _Present:
    """A client's session: held open while the client lives."""

    held: _Held
    session: _Session


@attrs.frozen
class _Streaming:
    """A generator function's call, whose items the response streams."""

    held: _Held
    call: PreparedCall
    target: Any


#: The head of a response of JSON lines, as long as it lasts.
_STREAMED = [
    ("content-type", "application/x-ndjson"),
    ("transfer-encoding", "chunked"),
    ("connection", "close"),
    ("server", f"skyward/{__version__}"),
]


async def _stream_events(conn: h11.Connection, stream: trio.SocketStream, pool: Pool) -> None:
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=_STREAMED)) or b"")
    events = pool.events()

    async def relay() -> None:
        async for event in events:
            await stream.send_all(conn.send(h11.Data(data=event_json(event))) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    try:
        await _while_connected(stream, relay)
    finally:
        await events.aclose()


def _json(status: int, body: Any) -> tuple[int, str, list[Any]]:
    return status, "application/json", [json.dumps(body).encode()]


def _error(status: int, message: str, kind: str = "") -> tuple[int, str, list[Any]]:
    return _json(status, {"error": message, **({"type": kind} if kind else {})})


def _raised(exc: BaseException) -> tuple[int, str, list[Any]]:
    """A call's failure in the pool (not in the function): the exception, pickled."""
    try:
        meta, blobs = split_payload(_serial.dumps(exc))
        header: dict[str, Any] = {"raised": meta}
    except Exception:
        header, blobs = {"raised_text": f"{type(exc).__name__}: {exc}"}, []
    return 200, FRAME, pack(header, blobs)


# -- the pools -----------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Held:
    name: str
    compute: Compute
    created: float
    idle_timeout: float | None = None  # seconds without calls after which it is closed
    pool: Pool | None = None
    closing: trio.Event = attrs.Factory(trio.Event)
    closed: trio.Event = attrs.Factory(trio.Event)
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    began: bool = False  # its holding task ran (so it unregisters itself when done)
    calls: int = 0  # in flight
    used: float = attrs.Factory(trio.current_time)  # when the last call ended (trio's clock)
    left: str | None = None  # what its close could not confirm ended (a TeardownError's words)

    def idle(self) -> float:
        """Seconds since the last call ended; 0 while one runs."""
        return 0.0 if self.calls else trio.current_time() - self.used

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1
            self.used = trio.current_time()

    def summary(self) -> dict[str, Any]:
        spec = self.compute.specs[0] if self.pool is None else self.pool.spec
        out: dict[str, Any] = {
            "name": self.name,
            "state": "closing"
            if self.closing.is_set()
            else ("ready" if self.pool is not None else "starting"),
            "provider": type(spec.provider).__name__,
            "accelerator": None if spec.accelerator is None else str(spec.accelerator),
            "created": self.created,
            "idle_timeout": self.idle_timeout,
            "idle_seconds": round(self.idle(), 1),
            "calls_in_flight": self.calls,
        }
        pool = self.pool
        if pool is not None:
            out.update(
                job_id=pool.job_id,
                nodes={"ready": pool.current_nodes(), "desired": len(pool._wanted)},
            )
            supervisor = pool._supervisor
            if supervisor is not None:
                out["cost_usd"] = round(supervisor.ledger.cost(trio.current_time()), 4)
        return out


@attrs.define(eq=False)
class _Session:
    """A client of a pool, while its session request is open: the locks it holds (each
    by its Lock object's token) and its calls running, which end with it."""

    id: str
    pool: str
    locks: set[tuple[str, str]] = attrs.Factory(set)
    calls: set[trio.CancelScope] = attrs.Factory(set)
    ended: bool = False
    # Ticketed waits answered lately: ticket -> (when, what returns what it was given), in
    # case the answer did not reach the client; and tickets given up before any answer.
    answered: dict[str, tuple[float, tuple[int, str, tuple[Any, ...]]]] = attrs.Factory(dict)
    abandoned: dict[str, float] = attrs.Factory(dict)

    def forget_old(self) -> None:
        """Tickets are kept ``_TICKET_KEPT`` seconds: a client gives a wait up at once."""
        old = time.monotonic() - _TICKET_KEPT
        self.answered = {t: kept for t, kept in self.answered.items() if kept[0] >= old}
        self.abandoned = {t: when for t, when in self.abandoned.items() if when >= old}

    @contextlib.contextmanager
    def call(self) -> Iterator[trio.CancelScope]:
        """The scope one of its calls runs in, cancelled if the client goes first."""
        scope = trio.CancelScope()
        self.calls.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self.calls.discard(scope)


#: How long a session keeps a ticketed wait's answer (or a ticket given up unanswered).
_TICKET_KEPT = 60.0

#: The most ``Iterator[T]`` arguments one call may stream (a function has that few).
_MAX_INPUTS = 64


@attrs.frozen
class _Feed:
    """A relayed call's ``Iterator[T]`` arguments, which the client feeds by their id
    (``POST /pools/NAME/feed/ID/SLOT``) while the call runs."""

    pool: str
    slots: tuple[RelayedInput, ...]


class Server:
    """The pools this process holds, and the HTTP routes that reach them."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.pools: dict[str, _Held] = {}
        self.feeds: dict[str, _Feed] = {}
        self.sessions: dict[str, _Session] = {}
        # Pool name -> what each of its closes could not confirm ended.
        self.left_behind: dict[str, list[str]] = {}
        self.started = time.time()
        self.stopping = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            await self.stopping.wait()
            await self.close_all()
            nursery.cancel_scope.cancel()

    async def close_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for held in list(self.pools.values()):
                nursery.start_soon(self._close, held)

    async def _close(self, held: _Held) -> None:
        if held.pool is None:
            held.scope.cancel()  # still coming up: stop, and tear down what started
        held.closing.set()
        await held.closed.wait()

    # -- one connection, one request -------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        try:
            while True:  # requests one after another, while the client keeps it open
                request = await _read_request(conn, stream)
                if request is None:
                    return
                answer = await self._route(request, stream)
                if isinstance(answer, _Events):
                    await _stream_events(conn, stream, answer.pool)
                    return
                if isinstance(answer, _Creating):
                    await self._stream_create(conn, stream, answer.held)
                    return
                if isinstance(answer, _Streaming):
                    await self._stream_call(conn, stream, answer)
                    return
                if isinstance(answer, _Present):
                    await self._hold_session(conn, stream, answer)
                    return
                if isinstance(answer, _Calling):
                    await self._relay_call(conn, stream, answer)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                    continue
                await _respond(conn, stream, *answer)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # the client asked to close
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client sent nonsense or went away: nobody to answer
        except Exception:
            # A fault here must not end the server and the pools it holds: log it, and
            # answer if the response has not begun.
            traceback.print_exc(file=sys.stderr)
            if conn.our_state is h11.SEND_RESPONSE:
                status, kind, parts = _error(
                    500, "the server failed; see ~/.skyward/logs/server.log"
                )
                with contextlib.suppress(Exception):
                    await _respond(conn, stream, status, kind, parts)
        finally:
            await stream.aclose()

    async def _route(
        self, request: _Request, stream: trio.SocketStream
    ) -> tuple[int, str, list[Any]] | _Events | _Creating | _Streaming | _Calling | _Present:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return _error(
                401,
                "no valid token: the server's token is in ~/.skyward/server.json "
                "(sky.Client reads it there)",
            )
        parts = [p for p in request.path.split("?")[0].split("/") if p]
        try:
            return await self._dispatch(request.method, parts, request, stream)
        except _BadRequest as exc:
            return _error(exc.status, str(exc))

    async def _dispatch(
        self, method: str, parts: list[str], request: _Request, stream: trio.SocketStream
    ) -> tuple[int, str, list[Any]] | _Events | _Creating | _Streaming | _Calling | _Present:
        if parts == ["status"] and method == "GET":
            return _json(200, self.status())
        if parts == ["shutdown"] and method == "POST":
            self.stopping.set()
            return _json(200, {"stopping": True, "pools": sorted(self.pools)})
        if parts == ["pools"] and method == "GET":
            return _json(200, [h.summary() for h in self.pools.values()])
        if parts == ["pools"] and method == "POST":
            held = self._to_create(request.body)
            if "follow=1" in request.path.partition("?")[2].split("&"):
                return _Creating(held)
            try:
                return await _while_connected(stream, lambda: self._create(held))
            finally:
                self._forget(held)  # if it never began
        if len(parts) == 2 and parts[0] == "pools":
            held = self._held(parts[1])
            if method == "GET":
                return _json(200, held.summary())
            if method == "DELETE":
                await self._close(held)
                if held.left is not None:  # said in the answer instead
                    self.left_behind[held.name].remove(held.left)
                    if not self.left_behind[held.name]:
                        del self.left_behind[held.name]
                closed = {"deleted": held.name}
                return _json(200, closed if held.left is None else {**closed, "left": held.left})
        if len(parts) == 3 and parts[0] == "pools" and parts[2] == "events" and method == "GET":
            return _Events(self._pool(parts[1]))
        if len(parts) == 3 and parts[0] == "pools" and parts[2] == "stream" and method == "POST":
            held = self._ready(parts[1])
            call, target = self._parse_call(held, request.body, stream=True)
            return _Streaming(held, call, target)
        calling = len(parts) == 3 and parts[0] == "pools" and parts[2] in ("run", "broadcast")
        if calling and method == "POST":
            held = self._ready(parts[1])
            call, target = self._parse_call(held, request.body)
            return _Calling(held, parts[2], call, target, self._session(request, held.name))
        if len(parts) == 3 and parts[0] == "pools" and parts[2] == "session" and method == "POST":
            return _Present(self._ready(parts[1]), self._open_session(request, parts[1]))
        if len(parts) == 3 and parts[0] == "pools" and parts[2] == "store" and method == "POST":
            store = self._pool(parts[1])._store
            op, name, args, ticket = _parse_store(request.body)
            session = self._session(request, parts[1])
            try:
                value = await _while_connected(stream, lambda: store.call_async(op, name, *args))
            except trio.BrokenResourceError:
                raise  # the client hung up: its wait was cancelled, and nobody to answer
            except Exception as exc:  # the store's refusal, or the pool's: the client's now
                return _store_answer(error=exc)
            if session is not None and op == ops.L_ACQUIRE:
                session.locks.add((name, str(args[0])))
                if session.ended:  # it went while the lock was granted: nobody holds it
                    await self._release_locks(parts[1], session)
            elif session is not None and op == ops.L_RELEASE:
                session.locks.discard((name, str(args[0])))
            undo = ops.give_back(op, name, args, value) if ticket is not None else None
            if session is not None and ticket is not None and undo is not None:
                returned = (undo[0], name, undo[1])
                session.forget_old()
                if session.abandoned.pop(ticket, None) is not None:
                    await self._give_back(parts[1], session, returned)
                else:
                    session.answered[ticket] = (time.monotonic(), returned)
            return _store_answer(value)
        abandon = parts[2:] == ["store", "abandon"]
        if len(parts) == 4 and parts[0] == "pools" and abandon and method == "POST":
            self._pool(parts[1])  # one the server holds (else 404)
            session = self._session(request, parts[1])
            ticket = _parse_ticket(request.body)
            if session is None:
                raise _BadRequest(400, f"giving a wait up needs a client id ({CLIENT_HEADER})")
            session.forget_old()
            kept = session.answered.pop(ticket, None)
            if kept is None:  # not answered (yet): an answer that comes is given back
                session.abandoned[ticket] = time.monotonic()
                return _json(200, {"given_back": False})
            await self._give_back(parts[1], session, kept[1])
            return _json(200, {"given_back": True})
        if len(parts) == 5 and parts[0] == "pools" and parts[2] == "feed" and method == "POST":
            source = self._feed_slot(parts[1], parts[3], parts[4])
            payloads, failed = _parse_batch(request.body)
            room = await _while_connected(stream, lambda: source.put(payloads, failed=failed))
            return _json(200, {"ended": True} if room is None else {"room": room})
        raise _BadRequest(404, f"no route {method} {request.path}")

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started,
            "pools": [h.summary() for h in self.pools.values()],
            # Pools it closed by itself (idle timeout) whose close could not confirm
            # everything ended, with what each close said.
            "left": {name: list(said) for name, said in self.left_behind.items()},
        }

    def _held(self, name: str) -> _Held:
        held = self.pools.get(name)
        if held is None:
            held_names = ", ".join(sorted(self.pools)) or "none"
            raise _BadRequest(
                404,
                f"the server holds no pool {name!r} (it holds: {held_names}); "
                f"create it with `sky compute create {name}`",
            )
        return held

    def _ready(self, name: str) -> _Held:
        held = self._held(name)
        if held.pool is None or held.closing.is_set():
            state = "closing" if held.closing.is_set() else "still starting"
            raise _BadRequest(409, f"pool {name!r} is {state}")
        return held

    # -- clients' sessions -----------------------------------------------------------------------

    def _open_session(self, request: _Request, pool: str) -> _Session:
        client = request.headers.get(CLIENT_HEADER, "")
        if not (8 <= len(client) <= 64 and client.replace("-", "").replace("_", "").isalnum()):
            raise _BadRequest(400, f"a session needs a client id ({CLIENT_HEADER}); got {client!r}")
        if client in self.sessions:
            raise _BadRequest(409, f"client {client!r} already has a session")
        session = self.sessions[client] = _Session(client, pool)
        return session

    def _session(self, request: _Request, pool: str) -> _Session | None:
        """The session of the client a request names (none named: a request of its own,
        which nothing ties to a client)."""
        client = request.headers.get(CLIENT_HEADER)
        if client is None:
            return None
        session = self.sessions.get(client)
        if session is None or session.pool != pool:
            raise _BadRequest(
                409,
                f"client {client!r} has no session with pool {pool!r} (it closed); "
                "open a new Client",
            )
        return session

    async def _hold_session(
        self, conn: h11.Connection, stream: trio.SocketStream, present: _Present
    ) -> None:
        """Hold a client's session open until it hangs up (or the pool closes); then
        cancel its calls still running and release the locks it holds."""
        held, session = present.held, present.session

        async def hold() -> None:
            head = h11.Response(status_code=200, headers=_STREAMED)
            await stream.send_all(conn.send(head) or b"")
            await held.closing.wait()
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

        try:
            await _while_connected(stream, hold)
        finally:
            session.ended = True
            del self.sessions[session.id]
            if not held.closing.is_set():  # else its calls fail saying the pool closed
                for scope in session.calls:
                    scope.cancel(reason=f"client {session.id} went away")
                await self._release_locks(held.name, session)

    async def _give_back(
        self, pool: str, session: _Session, undo: tuple[int, str, tuple[Any, ...]]
    ) -> None:
        """Return what a wait given up was granted: the item to its queue's head, the lock
        released (shielded and bounded, as a gone client's locks are released)."""
        op, name, args = undo
        if op == ops.L_RELEASE:
            session.locks.discard((name, str(args[0])))
        why = f"the store did not answer within {_RELEASE_GRACE:g} s"
        with trio.move_on_after(_RELEASE_GRACE, shield=True):
            try:
                await self._pool(pool)._store.call_async(op, name, *args)
                return
            except (PoolClosedError, ConnectionLostError, RuntimeError) as exc:
                why = str(exc)
        print(
            f"pool {pool}: what client {session.id} gave up on {name!r} was not given back: {why}",
            file=sys.stderr,
            flush=True,
        )

    async def _release_locks(self, pool: str, session: _Session) -> None:
        """Release the locks a gone client held (shielded, bounded: it is teardown)."""
        held = self.pools.get(pool)
        if held is None or held.pool is None or held.closing.is_set() or not session.locks:
            return  # the pool closes: its locks go with its store
        store = held.pool._store
        with trio.move_on_after(_RELEASE_GRACE, shield=True) as late:
            while session.locks:
                name, token = session.locks.pop()
                try:
                    await store.call_async(ops.L_RELEASE, name, token)
                except (PoolClosedError, ConnectionLostError, RuntimeError) as exc:
                    # The pool closed, or node 0's store was lost (and its locks with it).
                    print(
                        f"pool {pool}: lock {name!r} of client {session.id}, which closed or "
                        f"went away, was not released: {exc}",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                print(
                    f"pool {pool}: client {session.id} closed or went away holding lock "
                    f"{name!r}: released",
                    file=sys.stderr,
                    flush=True,
                )
        if late.cancelled_caught:
            print(
                f"pool {pool}: the store did not release the locks of client {session.id} "
                f"within {_RELEASE_GRACE:g} s: {sorted(session.locks)} stay held",
                file=sys.stderr,
                flush=True,
            )

    def _feed_slot(self, name: str, feed_id: str, slot: str) -> RelayedInput:
        feed = self.feeds.get(feed_id)
        if feed is None or feed.pool != name:
            raise _BadRequest(404, f"no call of pool {name!r} takes the items of feed {feed_id!r}")
        if not slot.isdigit() or int(slot) >= len(feed.slots):
            raise _BadRequest(404, f"the call of feed {feed_id!r} has no Iterator slot {slot!r}")
        return feed.slots[int(slot)]

    @contextlib.contextmanager
    def _feeding(self, held: _Held, call: PreparedCall) -> Iterator[list[Any]]:
        """While a call runs, its ``Iterator[T]`` arguments' feed: the frame that tells
        the client its id (none if it takes no such argument). Then the feed's puts
        that still wait hear that the call reads no more."""
        slots = tuple(s for s in call.inputs if isinstance(s, RelayedInput))
        if not slots:
            yield []
            return
        feed_id = secrets.token_urlsafe(16)
        self.feeds[feed_id] = _Feed(held.name, slots)
        try:
            yield pack({"feed": feed_id, "slots": len(slots)})
        finally:
            del self.feeds[feed_id]
            for slot in slots:
                slot.end()

    def _pool(self, name: str) -> Pool:
        pool = self._ready(name).pool
        assert pool is not None
        return pool

    # -- creating and holding a pool -------------------------------------------------------------

    def _to_create(self, body: bytearray) -> _Held:
        """The pool a create request asks for, checked and registered (as starting)."""
        try:
            header, blobs = unpack(body)
            name = header.get("name")
            specs, options = cloudpickle.loads(blobs[0])
        except Exception as exc:
            raise _BadRequest(400, f"not a pool to create: {exc}") from None
        if not isinstance(name, str) or not name or "/" in name or name.strip() != name:
            raise _BadRequest(400, f"a pool's name is a word such as 'train'; got {name!r}")
        if name in self.pools:
            raise _BadRequest(409, f"the server already holds a pool {name!r}")
        if not isinstance(specs, tuple) or not all(isinstance(s, Spec) for s in specs):
            raise _BadRequest(400, "a pool to create needs a tuple of Spec")
        if not isinstance(options, Options):
            raise _BadRequest(400, "a pool to create needs its Options")
        idle_timeout = header.get("idle_timeout")
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, int | float)
            or idle_timeout <= 0
        ):
            raise _BadRequest(400, f"idle_timeout must be seconds > 0; got {idle_timeout!r}")
        try:
            compute = Compute(*specs, options=options)
        except (TypeError, ValueError) as exc:
            raise _BadRequest(400, f"{type(exc).__name__}: {exc}") from None
        held = _Held(name, compute, time.time(), idle_timeout)
        self.pools[name] = held
        return held

    async def _start(self, held: _Held) -> dict[str, Any]:
        """Bring ``held`` up; its summary once ready, or why not (``error`` and ``type``)."""
        assert self._nursery is not None
        try:
            await self._nursery.start(self._hold, held)
        except BaseException as exc:
            self._forget(held)
            if not isinstance(exc, Exception):
                raise
            return {"error": str(exc), "type": type(exc).__name__}
        if held.pool is None:
            return {"error": f"pool {held.name!r} was closed while it came up"}
        return held.summary()

    def _forget(self, held: _Held) -> None:
        """Unregister ``held`` if its holding task never ran (cancelled before it began)."""
        if not held.began and self.pools.get(held.name) is held:
            del self.pools[held.name]
            held.closed.set()

    async def _create(self, held: _Held) -> tuple[int, str, list[Any]]:
        made = await self._start(held)
        return _json(422 if "error" in made else 200, made)

    async def _stream_create(
        self, conn: h11.Connection, stream: trio.SocketStream, held: _Held
    ) -> None:
        """Bring ``held`` up, streaming its events as JSON lines while it does; the last
        line is ``{"type": "Created", ...summary}`` or ``{"type": "Failed", "error": ...,
        "kind": exception type}``."""
        lines: list[bytes] = []
        wake = trio.Event()
        buses: list[Any] = []

        def listener(event: Event) -> None:
            lines.append(event_json(event))
            wake.set()

        def on_pool(pool: Pool) -> None:  # each spec tried makes a pool of its own
            buses.append(pool._events)
            pool._events.listen(listener, tasks=False)

        held.compute.on_pool = on_pool
        made: dict[str, Any] = {}

        async def start() -> None:
            made.update(await self._start(held))
            wake.set()

        async def relay() -> None:
            nonlocal wake
            async with trio.open_nursery() as nursery:
                nursery.start_soon(start)
                while True:
                    await wake.wait()
                    wake = trio.Event()
                    finished = bool(made)  # before sending: more may come meanwhile
                    batch, lines[:] = b"".join(lines), []
                    if batch:
                        await stream.send_all(conn.send(h11.Data(data=batch)) or b"")
                    if finished and not lines:
                        break
            if "error" in made:
                final = {"type": "Failed", "error": made["error"], "kind": made.get("type")}
            else:
                final = {**made, "type": "Created"}
            last = json.dumps(final).encode() + b"\n"
            await stream.send_all(conn.send(h11.Data(data=last)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

        try:
            head = h11.Response(status_code=200, headers=_STREAMED)
            await stream.send_all(conn.send(head) or b"")
            await _while_connected(stream, relay)
        finally:
            for bus in buses:
                bus.unlisten(listener)
            self._forget(held)

    async def _hold(self, held: _Held, *, task_status: trio.TaskStatus[None]) -> None:
        held.began = True
        started = False
        try:
            with held.scope:
                async with held.compute as pool, trio.open_nursery() as watching:
                    held.pool = pool
                    held.used = trio.current_time()
                    started = True
                    task_status.started()
                    if held.idle_timeout is not None:
                        watching.start_soon(_close_when_idle, held, held.idle_timeout)
                    await held.closing.wait()
                    watching.cancel_scope.cancel()
        except Exception as exc:
            if not started:
                raise
            held.left = str(exc)  # `sky compute delete` says it, and exits with 1
            # `sky server status` says it (every close of that name, oldest first).
            self.left_behind.setdefault(held.name, []).append(held.left)
            print(f"pool {held.name}: closed with an error: {exc!r}", file=sys.stderr, flush=True)
        finally:
            if self.pools.get(held.name) is held:
                del self.pools[held.name]
            held.closed.set()
            if not started and held.scope.cancelled_caught:
                # Closed (by `sky compute delete` or the server stopping) while it came up.
                task_status.started()

    # -- relaying a call -------------------------------------------------------------------------

    def _parse_call(
        self, held: _Held, body: bytearray, *, stream: bool = False
    ) -> tuple[PreparedCall, Any]:
        """The call a request carries (its function adopted by the pool), and its target."""
        assert held.pool is not None
        pool = held.pool
        try:
            header, blobs = unpack(body)
            n_fn = 1 + len(header["fn"]["flags"])
            fn = join_payload(header["fn"], blobs[:n_fn])
            args = join_payload(header["args"], blobs[n_fn:])
            key, name, needs = str(header["key"]), str(header["name"]), header["needs"]
            timeout, target = header.get("timeout"), header.get("target")
            inputs = header.get("inputs", 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise _BadRequest(400, f"not a call: {exc}") from None
        if not isinstance(needs, dict):
            raise _BadRequest(400, "not a call: needs is not a mapping")
        if (
            isinstance(inputs, bool)
            or not isinstance(inputs, int)
            or not 0 <= inputs <= _MAX_INPUTS
        ):
            raise _BadRequest(400, f"not a call: inputs must be 0 to {_MAX_INPUTS}, not {inputs!r}")
        pool._functions.adopt(key, fn, needs)
        relayed = tuple(RelayedInput() for _ in range(inputs))
        return PreparedCall(key, fn, args, name, timeout, stream=stream, inputs=relayed), target

    async def _relay_call(
        self, conn: h11.Connection, stream: trio.SocketStream, calling: _Calling
    ) -> None:
        """Answer a run or broadcast: for a call with ``Iterator[T]`` arguments first
        the frame naming their feed (``{"feed": id}``: the client posts their items to
        it), then the call's output as it comes, a frame each (``{"output": [node,
        stream, text]}``), then the frame with its results. The connection stays open for
        the client's next request."""
        held, call = calling.held, calling.call
        assert held.pool is not None
        pool = held.pool
        send, receive = trio.open_memory_channel[list[Any]](math.inf)
        head: list[bytes] = [conn.send(h11.Response(status_code=200, headers=_FRAMES_KEPT)) or b""]

        def on_output(node: int, name: str, text: str) -> None:
            send.send_nowait(pack({"output": [node, name, text]}))

        async def write_output(gone: trio.CancelScope) -> None:
            """Each output frame as it comes (the response's head with the first)."""
            try:
                async for parts in receive:
                    await _send_pieces(stream, [*head, *_data(conn, parts)])
                    head.clear()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone.cancel(reason="the client hung up")

        async def work() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_output, nursery.cancel_scope)
                with held.calling(), self._feeding(held, call) as feed:
                    if feed:
                        send.send_nowait(feed)  # first: the client feeds it while it runs
                    last = _raised(CancelledCallError(call.name, CLIENT_CLOSED))[2]
                    try:
                        with _client_call(calling.session):
                            if calling.how == "run":
                                target = pool._check_target(calling.target)
                                raw = await pool.run_raw(call, target=target, on_output=on_output)
                                results = [raw]
                            else:
                                results = await pool.broadcast_raw(call, on_output=on_output)
                            last = _results(results)
                    except Exception as exc:
                        last = _raised(_closed_under(held, call.name, exc))[2]
                send.close()  # the writer sends what is queued, then ends
            pieces = [*head, *_data(conn, last)]
            pieces.append(conn.send(h11.EndOfMessage()) or b"")
            await _send_pieces(stream, pieces)  # one send, unless the results are large

        await _while_connected(stream, work)

    async def _stream_call(
        self, conn: h11.Connection, stream: trio.SocketStream, streaming: _Streaming
    ) -> None:
        """Relay a generator function's items as they come, a frame each (``{"item": ...}``
        and its blobs), then the frame a run answers with. The node runs a window ahead of
        what has been sent; a client that hangs up stops the generator."""
        held, call, target = streaming.held, streaming.call, streaming.target
        assert held.pool is not None
        pool = held.pool
        send, receive = trio.open_memory_channel[tuple[bool, Any]](math.inf)
        inflight: Inflight | None = None

        async def write(parts: list[Any]) -> None:
            await _write(conn, stream, parts)

        def on_output(node: int, name: str, text: str) -> None:
            send.send_nowait((True, pack({"output": [node, name, text]})))

        async def relay() -> None:
            nonlocal inflight
            await stream.send_all(
                conn.send(h11.Response(status_code=200, headers=_STREAMED_FRAMES)) or b""
            )
            with held.calling(), self._feeding(held, call) as feed:
                if feed:
                    await write(feed)  # first: the client feeds it while it runs
                try:
                    inflight = await pool.start(
                        call,
                        pool._check_target(target),
                        lambda outcome: send.send_nowait((False, outcome)),
                        lambda payload: send.send_nowait((True, payload)),
                        on_output,
                    )
                    sent = 0
                    while True:
                        is_item, value = await receive.receive()
                        if not is_item:
                            break
                        if isinstance(value, list):  # output, packed already
                            await write(value)
                            continue
                        meta, blobs = split_payload(value)
                        await write(pack({"item": meta}, blobs))
                        sent += 1
                        if sent % _CREDIT_BATCH == 0:
                            inflight.node.conn.credit(inflight.task_id, _CREDIT_BATCH)
                    message, node, error = value
                    if error is not None:
                        raise error
                    last = _results([(message, node)])
                except Exception as exc:
                    last = _raised(_closed_under(held, call.name, exc))[2]
            await write(last)
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

        try:
            await _while_connected(stream, relay)
        finally:
            if inflight is not None and not inflight.finished:
                inflight.cancel()  # the client went away: the generator on the node stops


@contextlib.contextmanager
def _client_call(session: _Session | None) -> Iterator[None]:
    """Where a client's call runs: cancelled when the client goes (its session ends)."""
    if session is None:
        yield
        return
    with session.call():
        yield


def _parse_batch(body: bytearray) -> tuple[list[_serial.Payload] | None, str | None]:
    """A feed request's items (pickled: passed on as they are), or None when it ends
    them; and what the client's iterable raised, if that is what it says."""
    try:
        header, blobs = unpack(body)
        if "failed" in header:
            return None, str(header["failed"])
        if header.get("end"):
            return None, None
        payloads, at = [], 0
        for meta in header["items"]:
            count = 1 + len(meta["flags"])
            payloads.append(join_payload(meta, blobs[at : at + count]))
            at += count
    except (ValueError, KeyError, TypeError) as exc:
        raise _BadRequest(400, f"not a feed's items: {exc}") from None
    if at != len(blobs) or not payloads:
        raise _BadRequest(400, "not a feed's items: the blobs do not match the items")
    return payloads, None


async def _write(conn: h11.Connection, stream: trio.SocketStream, parts: list[Any]) -> None:
    """A frame's parts as data of a chunked response."""
    await _send_pieces(stream, _data(conn, parts))


def _data(conn: h11.Connection, parts: list[Any]) -> list[Any]:
    """A frame's parts as the pieces of chunked data h11 frames them in (not copied)."""
    return [
        piece
        for part in parts
        for piece in conn.send_with_data_passthrough(h11.Data(data=part)) or ()
    ]


#: Pieces smaller than this are joined into one send; larger ones go as they are.
_COALESCE = 64 * 1024


async def _send_pieces(stream: trio.SocketStream, pieces: list[Any]) -> None:
    """Send ``pieces`` in order, joining runs of small ones: a response that fits one
    packet goes in one send, and a large payload is not copied."""
    small: list[Any] = []
    for piece in pieces:
        if memoryview(piece).nbytes < _COALESCE:
            small.append(piece)
            continue
        if small:
            await stream.send_all(b"".join(small))
            small = []
        await stream.send_all(piece)
    if small:
        await stream.send_all(b"".join(small))


def _closed_under(held: _Held, name: str, exc: Exception) -> Exception:
    """``exc``, or, when ``held`` was deleted (or the server stopped) under the call, the
    PoolClosedError that says so rather than how the call broke."""
    if held.closing.is_set() and not isinstance(exc, PoolClosedError):
        return PoolClosedError(
            f"pool {held.name!r} was closed (sky compute delete, or the server "
            f"stopping) while {name}() ran: {exc}"
        )
    return exc


def _results(results: list[tuple[tuple[Any, ...], int]]) -> list[Any]:
    """The frame that answers a run or broadcast: each node's RESULT, its payload's blobs."""
    out_header: dict[str, Any] = {"results": []}
    out_blobs: list[memoryview] = []
    for message, node in results:
        _, _, ok, payload, _ = message
        if ok:
            meta, parts = split_payload(payload)
            out_header["results"].append({"ok": True, "node": node, "payload": meta})
        else:
            error, type_name, text, tb = payload
            failed: dict[str, Any] | None = None
            parts = []
            if error is not None:
                failed, parts = split_payload(error)
            out_header["results"].append(
                {"ok": False, "node": node, "payload": failed, "error": [type_name, text, tb]}
            )
        out_blobs += parts
    return pack(out_header, out_blobs)


async def _close_when_idle(held: _Held, after: float) -> None:
    """Close ``held`` once no call has run on it for ``after`` seconds."""
    while True:
        await trio.sleep(max(0.05, held.used + after - trio.current_time()))
        if not held.calls and trio.current_time() - held.used >= after:
            print(
                f"pool {held.name}: no call for {after:g} s (its idle timeout): closing it",
                file=sys.stderr,
                flush=True,
            )
            held.closing.set()
            return


async def _while_connected(stream: trio.SocketStream, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; cancel it if the client hangs up first.

    The watch only peeks: a client sends nothing while it waits for an answer, so bytes
    that arrive are its next request (once the answer is out), left for the next read,
    and only the end of the stream means it went away.
    """
    outcome: list[T] = []
    failed: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                if await stream.socket.recv(1, socket.MSG_PEEK):
                    return  # its next request: not gone
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            outcome.append(await work())
        except Exception as exc:  # raised as itself, not in a group
            failed.append(exc)
        nursery.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if not outcome:
        raise trio.BrokenResourceError("the client hung up")
    return outcome[0]


# -- python -m skyward_trio._server --------------------------------------------------------------


#: The server's log (its stdout and stderr) is rotated past this size, keeping this many.
LOG_MAX_BYTES = 50_000_000
LOG_KEEP = 5
_LOG_CHECK = 2.0  # seconds between size checks


def rotate_log(path: Path, max_bytes: int, keep: int) -> bool:
    """If this process's stdout (``path``) has reached ``max_bytes``, move it to ``path.1``
    (shifting older ones up to ``path.<keep>``) and carry on in a new ``path``."""
    if os.fstat(1).st_size < max_bytes:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    for k in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{k}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{k + 1}"))
    if path.exists():
        path.replace(path.with_name(f"{path.name}.1"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    return True


async def _keep_log(path: Path, max_bytes: int, keep: int) -> None:
    while True:
        await trio.sleep(_LOG_CHECK)
        if rotate_log(path, max_bytes, keep):
            print(f"skyward server: {path} rotated (at {max_bytes} bytes)", flush=True)


async def _serve(port: int, state: Path, log: tuple[Path, int, int] | None = None) -> None:
    token = secrets.token_urlsafe(32)
    server = Server(token)
    async with _transport.asyncio_loop():
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        bound = listeners[0].socket.getsockname()[1]
        _write_state(
            state,
            {"url": f"http://127.0.0.1:{bound}", "pid": os.getpid(), "token": token},
        )
        print(f"skyward server {__version__}: listening on 127.0.0.1:{bound}", flush=True)
        try:
            async with trio.open_nursery() as nursery:

                async def on_signals() -> None:
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for signum in signals:
                            print(f"skyward server: {signal.Signals(signum).name}: stopping")
                            server.stopping.set()

                nursery.start_soon(on_signals)
                if log is not None:
                    nursery.start_soon(_keep_log, *log)
                await server.serve(listeners)
                nursery.cancel_scope.cancel()
        finally:
            _forget_state(state)
            if server.left_behind:  # for `sky server stop` to say, once this process is gone
                _write_state(left_path(state), {"pid": os.getpid(), "left": server.left_behind})
    if server.left_behind:
        print(
            "skyward server: stopped; these pools' closes could not confirm everything "
            f"ended: {', '.join(sorted(server.left_behind))}",
            flush=True,
        )
    else:
        print("skyward server: stopped; every pool closed", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyward_trio._server")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--state", default=STATE_FILE, help=f"the state file ({STATE_FILE})")
    parser.add_argument(
        "--log", help="the file this process's stdout and stderr go to, to rotate it"
    )
    parser.add_argument("--log-max-bytes", type=int, default=LOG_MAX_BYTES)
    parser.add_argument("--log-keep", type=int, default=LOG_KEEP)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal that started it may close
    log = None
    if args.log is not None:
        log = (Path(os.path.expanduser(args.log)), args.log_max_bytes, max(1, args.log_keep))
    trio.run(_serve, args.port, Path(os.path.expanduser(args.state)), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
