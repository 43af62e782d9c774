"""``skyward_trio.Client``: a pool the server holds, used like a pool from a trio program;
and what both faces' clients share (the state file, a call's request, its answer).

    async with skyward_trio.Client("train") as pool:
        value = await (work(21) >> pool)

Calls are pickled in the client's process (as a pool of one's own pickles them) and the
server relays them to a node: it unpickles neither the call nor its result.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import trio

from . import _serial
from ._collections import GRANTING, Collections
from ._errors import ServerError
from ._events import Event
from ._function import (
    Function,
    PendingFunction,
    PendingFunctionGroup,
    active_pool,
    function,
    map_items,
    mappable,
)
from ._pids import alive
from ._pool import (
    _INPUT_CHUNK,
    CancelledCallError,
    Future,
    PreparedCall,
    _Functions,
    _rebuild_error,
    _take_payloads,
)
from ._serverwire import (
    CLIENT_CLOSED,
    CLIENT_HEADER,
    FRAME,
    STATE_FILE,
    event_from_json,
    frame,
    join_payload,
    split_payload,
    state_path,
    store_request,
    store_value,
    unpack,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "MAP_CONCURRENCY",
    "Client",
    "Feeding",
    "FrameReader",
    "SourceFailed",
    "alive",
    "call_request",
    "call_results",
    "check_target",
    "client_closed",
    "client_functions",
    "client_id",
    "client_state",
    "events_refused",
    "feed_answer",
    "feed_end",
    "feed_failed",
    "feed_items",
    "feed_path",
    "headers",
    "mapped",
    "next_chunk",
    "prepare",
    "read_frame",
    "refused",
    "request_refused",
    "running_state",
    "server_gone",
    "server_silent",
    "server_state",
    "session_path",
    "store_path",
    "stream_cut",
    "take_payloads",
]

CONNECT_TIMEOUT = 10.0  # seconds to reach the server; a call may take as long as it takes


def server_state() -> dict[str, Any] | None:
    """The running server's ``{"url", "pid", "token"}``, or None when none runs."""
    try:
        state = json.loads(state_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not alive(state.get("pid")):
        return None
    return state


def running_state() -> dict[str, Any]:
    """``server_state()`` of the server that must be running.

    Raises:
        ServerError: None runs, saying how to start one.
    """
    state = server_state()
    if state is None:
        raise ServerError(
            f"the Skyward server is not running (no live server in {STATE_FILE}); "
            "start it with `sky server start`"
        )
    return state


def client_state(name: object, url: str | None, face: str) -> dict[str, Any]:
    """The server a client of pool ``name`` reaches (checked before any I/O)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{face}(name=...) names a pool the server holds; got {name!r}")
    state = running_state()
    if url is not None and url.rstrip("/") != state["url"]:
        raise ServerError(
            f"{face}(url={url!r}): the server this user runs listens on {state['url']} "
            f"({STATE_FILE}); only that server's token is known here"
        )
    return state


def client_functions() -> _Functions:
    """A client's function table: keys of its own, never shared with another client's."""
    return _Functions(prefix=f"c{uuid.uuid4().hex[:12]}-")


def prepare(
    functions: _Functions, pending: PendingFunction[Any], *, how: str | None = None
) -> PreparedCall:
    """``pending`` pickled for the server; what it cannot relay is refused, saying so.

    ``how`` names the operation when it is not ``>>``: a generator function streams its
    items with ``>>`` only.
    """
    call = functions.prepare(pending)
    if how is not None:
        call.refuse_stream(how)
    return call


#: ``prepare``'s ``how`` for ``@``.
BROADCAST = "`@` (broadcast)"


# -- Iterator[T] arguments: the client feeds their items while the call runs ---------------------

#: Take the client's items through the pool's own reader and pickler (off the loop: the
#: iterable may block).
take_payloads = _take_payloads


def next_chunk(chunk: int, elapsed: float, room: int) -> tuple[int, int]:
    """The next chunk's size as a pool's feeder picks it (doubling while the source is
    fast, one at a time when it is slow), and how many items to take now: no more than
    the node has room for, but one at least (its request then waits for room)."""
    chunk = min(chunk * 2, _INPUT_CHUNK) if elapsed < 0.005 else 1
    return chunk, max(1, min(chunk, room))


def store_path(pool: str) -> str:
    """Where a client sends its pool's collection operations (one request each)."""
    return f"/pools/{pool}/store"


def abandon_path(pool: str) -> str:
    """Where a client gives up a wait (``{"ticket": ...}``) whose answer may not have
    reached it: what the server had granted it is given back."""
    return f"/pools/{pool}/store/abandon"


def store_ticket(op: int) -> str | None:
    """A new ticket for a wait the server may answer as the client gives it up."""
    return secrets.token_hex(8) if op in GRANTING else None


def session_path(pool: str) -> str:
    """The request a client keeps open while it lives: when it closes (the client closed,
    or its process died), the server cancels the client's calls and frees its locks."""
    return f"/pools/{pool}/session"


def feed_path(pool: str, feed_id: str, slot: int) -> str:
    return f"/pools/{pool}/feed/{feed_id}/{slot}"


def feed_items(payloads: list[Any]) -> bytes:
    """A feed request's body: pickled items, for the server to pass on as they are."""
    metas, blobs = [], []
    for payload in payloads:
        meta, parts = split_payload(payload)
        metas.append(meta)
        blobs += parts
    return frame({"items": metas}, blobs)


def feed_end() -> bytes:
    return frame({"end": True})


def feed_failed(exc: BaseException) -> bytes:
    return frame({"failed": f"{type(exc).__name__}: {exc}"})


def feed_answer(response: Any, path: str) -> int | None:
    """The room a feed request's answer says the node has, or None if the call reads
    no more (it ended, even before the request came: its feed is gone, 404)."""
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise request_refused("POST", path, response)
    answer = response.json()
    return None if answer.get("ended") else int(answer["room"])


class SourceFailed(Exception):
    """An ``Iterator[T]`` argument's iterable raised ``error`` (or its item would not
    pickle): told apart from a feed request that failed."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Feeding:
    """What a call's feeders share: what failed (the call then fails with the first
    error, as in a pool of one's own), and, in the sync face, that they must stop."""

    def __init__(self, name: str, *, streamed: bool = False) -> None:
        self.name = name
        self.failures: list[Exception] = []
        self.stopped = False  # the call ended: feed no more
        # The sync face's close() waits for the answer of a call it cancelled (not for a
        # generator's, which arrives only as its iterator is read).
        self.streamed = streamed
        self.ended = threading.Event()

    def failed(self, exc: Exception, *, source: bool) -> None:
        if source:
            exc.add_note(
                f"[skyward] raised by an iterable passed to {self.name}() for an "
                "Iterator[...] parameter; the call was cancelled"
            )
        self.failures.append(exc)

    def raise_failure(self) -> None:
        """Raise the first error an iterable raised, if one did (the call failed because
        of it: the server's report of that is replaced by the error itself)."""
        if self.failures:
            raise self.failures[0]


#: How many of a ``map``'s calls a client has in flight at once; the server queues the
#: ones the pool has no slot for yet.
MAP_CONCURRENCY = 32


def mapped(fn: Callable[..., Any]) -> Function[Any]:
    """``fn`` as a ``@sky.function`` (as it is, if it is one) for ``map``; one that cannot
    be mapped is refused (``mappable``)."""
    plain, timeout = mappable(fn)
    return fn if isinstance(fn, Function) else function(plain, timeout=timeout)


def check_target(target: object) -> None:
    if isinstance(target, bool) or not (target in (None, "head") or isinstance(target, int)):
        raise ValueError(f'target must be None, "head" or a node index, got {target!r}')


def call_request(functions: _Functions, call: PreparedCall, target: int | str | None) -> bytes:
    """The body of a run or broadcast request for ``call``."""
    fn_meta, fn_blobs = split_payload(call.fn_payload)
    args_meta, args_blobs = split_payload(call.args_payload)
    header = {
        "key": call.fn_key,
        "name": call.name,
        "timeout": call.timeout,
        "target": target,
        "needs": dict(functions.needs(call.fn_key)),
        "inputs": len(call.inputs),
        "fn": fn_meta,
        "args": args_meta,
    }
    return frame(header, [*fn_blobs, *args_blobs])


class FrameReader:
    """Splits a stream of bytes into the frames it carries (each says its own length)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The frames ``data`` completes, in order."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 4:
            size = int.from_bytes(self._buffer[:4], "big")
            if len(self._buffer) < 4 + size:
                break
            header = json.loads(bytes(self._buffer[4 : 4 + size]))
            total = 4 + size + sum(header["blobs"])
            if len(self._buffer) < total:
                break
            frames.append(bytes(self._buffer[:total]))
            del self._buffer[:total]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet whole."""
        return len(self._buffer)


#: What a frame of a call's answer is: the call's output (printed here), one of a
#: generator's items, the end (the call's results), or the feed its ``Iterator[T]``
#: arguments' items go to (the first frame, when it has some).
OUTPUT, ITEM, END, FEED = "output", "item", "end", "feed"


def read_frame(content: bytes, name: str) -> tuple[str, Any]:
    """One frame of a call's answer: ``(OUTPUT, None)`` once its text is written to this
    process's stdout or stderr, as the function wrote it; ``(ITEM, value)``; ``(FEED,
    feed id)``; or ``(END, values)`` (``call_results``: the call's error is raised)."""
    header, blobs = unpack(content)
    if "feed" in header:
        return FEED, str(header["feed"])
    if "output" in header:
        _, stream, text = header["output"]
        out = sys.stderr if stream == "stderr" else sys.stdout
        out.write(text)
        out.flush()
        return OUTPUT, None
    if "item" in header:
        return ITEM, _serial.loads(join_payload(header["item"], blobs))
    return END, call_results(content, name)


def stream_cut(url: str, name: str) -> ServerError:
    return ServerError(
        f"the server at {url} ended {name}()'s stream of items before the call ended "
        "(did it stop? see ~/.skyward/logs/server.log)"
    )


def call_results(content: bytes, name: str) -> list[Any]:
    """The values a run or broadcast answer carries; raises the call's error, rebuilt."""
    answer, blobs = unpack(content)
    if "raised" in answer:
        raise _serial.loads(join_payload(answer["raised"], blobs))
    if "raised_text" in answer:
        raise ServerError(f"the call failed on the server: {answer['raised_text']}")
    values = []
    at = 0
    for result in answer["results"]:
        meta = result["payload"]
        count = 0 if meta is None else 1 + len(meta["flags"])
        payload = None if meta is None else join_payload(meta, blobs[at : at + count])
        at += count
        if result["ok"]:
            values.append(_serial.loads(payload))  # type: ignore[arg-type]
        else:
            type_name, text, tb = result["error"]
            raise _rebuild_error((payload, type_name, text, tb), result["node"], name)
    return values


def headers(
    state: dict[str, Any], *, framed: bool = False, client: str | None = None
) -> dict[str, str]:
    """A request's headers: the server's token, the frame's type when it carries one, and
    the id of the client it comes from when the server ties it to that client's session
    (a call, a collection operation)."""
    out = {"authorization": f"Bearer {state['token']}"}
    if framed:
        out["content-type"] = FRAME
    if client is not None:
        out[CLIENT_HEADER] = client
    return out


def client_id() -> str:
    """A new client's id, which its session and its requests carry."""
    return secrets.token_urlsafe(16)


def client_closed(name: str) -> CancelledCallError:
    """What a call raises when its client closed while it ran."""
    return CancelledCallError(name, CLIENT_CLOSED)


def server_silent(url: str, exc: Exception) -> ServerError:
    return ServerError(
        f"the Skyward server at {url} did not answer ({exc}); is it running? (`sky server status`)"
    )


def request_refused(method: str, path: str, response: Any) -> ServerError:
    return ServerError(f"the Skyward server refused {method} {path}: {refused(response)}")


def events_refused(name: str, response: Any) -> ServerError:
    return ServerError(f"the Skyward server refused the events of {name!r}: {refused(response)}")


def server_gone(url: str, exc: Exception) -> ServerError:
    return ServerError(f"the Skyward server at {url} went away ({exc}); see `sky server status`")


def refused(response: Any) -> str:
    """What an error answer of the server says."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return str(response.text)


class _ServerStore:
    """A trio Client's way to the pool's collections store: each operation a request to
    the server, which passes it on (keys and values pickled here, unpickled by the store
    or the reader). A request cancelled while it waits (``queue.get_async``,
    ``lock.acquire_async``) hangs up, and the server cancels the wait."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def call(self, op: int, name: str, *args: Any) -> Any:
        raise RuntimeError(
            "this collection belongs to a skyward_trio.Client: a blocking method would stall "
            "the trio loop; await its _async variant instead (await d.get_async(k), "
            "await c.increment_async(), async with lock: ...)"
        )

    async def call_async(self, op: int, name: str, *args: Any) -> Any:
        client = self._client
        ticket = store_ticket(op)
        try:
            response = await client._request(
                "POST", store_path(client.name), store_request(op, name, args, ticket), tied=True
            )
        except BaseException:
            if ticket is not None:  # given up (a cancel): what it may have been granted
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(CONNECT_TIMEOUT),
                    contextlib.suppress(Exception),  # the server gone: nothing to return
                ):
                    await client._request(
                        "POST", abandon_path(client.name), json={"ticket": ticket}, tied=True
                    )
            raise
        return store_value(response.content)


class Client(Collections):
    """A pool the server holds (``sky compute create NAME``), reached from trio by its name.

    ``async with skyward_trio.Client(name) as pool:`` then ``await (f(x) >> pool)``,
    ``await (f(x) @ pool)``, ``fut = await (f(x) > pool)``, ``await ((f(x) & g(y)) >>
    pool)`` and ``async for event in pool.events()``, as on a pool of your own; arguments
    annotated ``Iterator[T]`` stream to the node, and ``pool.dict(name)`` and the others
    are the pool's collections (their ``_async`` methods awaited). Leaving the block ends
    this client's connection and its calls; the pool stays up on the server.

    Args:
        name: The pool's name on the server.
        url: The server's address; by default, and to find its token, the state file
            (``~/.skyward/server.json``) of the server this user runs.

    Raises:
        ServerError: No server runs (at construction), or it holds no pool ``name`` (on
            entering the block).
    """

    _collections_of = "client"
    _store: _ServerStore

    def __init__(self, name: str, *, url: str | None = None) -> None:
        self._state = client_state(name, url, "skyward_trio.Client")
        self.name = name
        self._functions = client_functions()
        self._store = _ServerStore(self)
        self._id = client_id()
        self._http: Any = None  # an httpx.AsyncClient while the block is open
        self._session: Any = None  # its session's response, open while the block is
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._token: Any = None

    def __repr__(self) -> str:
        return f"<skyward_trio.Client {self.name!r} at {self._state['url']}>"

    async def __aenter__(self) -> Client:
        import httpx

        self._http = httpx.AsyncClient()
        try:
            await self.info()  # the pool exists, or this raises saying why
            self._session = await self._open_session()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._http.aclose()
            self._http = None
            raise
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._token = active_pool.set(self)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._token is not None:
            active_pool.reset(self._token)
            self._token = None
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()  # calls started with `>` end with the block
        cm, self._nursery_cm, self._nursery = self._nursery_cm, None, None
        try:
            # Not given the block's error: that one propagates as itself, ungrouped.
            await cm.__aexit__(None, None, None)
        finally:
            with trio.CancelScope(shield=True):
                # The session's end frees the locks this client still holds.
                await self._session.aclose()
                await self._http.aclose()
            self._http = self._session = None

    async def _open_session(self) -> Any:
        """Open this client's session: a request held open while the client lives."""
        return await self._post_held(session_path(self.name), headers(self._state, client=self._id))

    async def _post_held(
        self, path: str, sent_headers: dict[str, str], content: bytes | None = None
    ) -> Any:
        """POST to ``path`` and keep the response open to read as it comes (no read
        timeout); raise if the server is silent or refuses."""
        import httpx

        client = self._open()
        request = client.build_request(
            "POST",
            self._state["url"] + path,
            content=content,
            headers=sent_headers,
            timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None),
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise server_silent(self._state["url"], exc) from exc
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            raise request_refused("POST", path, response)
        return response

    def _open(self) -> Any:
        if self._http is None:
            raise RuntimeError(
                f"use the client inside `async with skyward_trio.Client({self.name!r}) as pool:`"
            )
        return self._http

    async def _request(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        *,
        tied: bool = False,
        json: Any = None,
    ) -> Any:
        """One request (``content``: a frame; ``json``: a JSON body); ``tied`` ties it to
        this client's session (its id sent)."""
        import httpx

        try:
            response = await self._open().request(
                method,
                self._state["url"] + path,
                content=content,
                json=json,
                headers=headers(
                    self._state, framed=content is not None, client=self._id if tied else None
                ),
                timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None),
            )
        except httpx.TransportError as exc:
            raise server_silent(self._state["url"], exc) from exc
        if response.status_code != 200:
            raise request_refused(method, path, response)
        return response

    async def info(self) -> dict[str, Any]:
        """What the server says of the pool: state, provider, nodes, cost so far."""
        answer: dict[str, Any] = (await self._request("GET", f"/pools/{self.name}")).json()
        return answer

    async def events(self) -> AsyncIterator[Event]:
        """The pool's events: its life so far, then each as it happens, until it closes."""
        import httpx

        url = f"{self._state['url']}/pools/{self.name}/events"
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=None)
        try:
            async with self._open().stream(
                "GET", url, headers=headers(self._state), timeout=timeout
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise events_refused(self.name, response)
                async for line in response.aiter_lines():
                    if line:
                        yield event_from_json(line)
        except httpx.TransportError as exc:
            raise server_gone(self._state["url"], exc) from exc

    # -- the operators ---------------------------------------------------------------------------

    async def run(self, pending: PendingFunction[Any], *, target: int | str | None = None) -> Any:
        """Run ``pending`` on one node of the pool (``>>``), or on ``target``: its value,
        or for a generator function an async iterator of its items as the node yields them
        (``aclose()`` it, or leave its ``async for`` with ``aclosing``, to stop the
        generator on the node)."""
        check_target(target)
        call = prepare(self._functions, pending)
        if call.stream:
            return await self._items(call, target)
        return (await self._send("run", call, target))[0]

    async def _items(self, call: PreparedCall, target: int | str | None) -> AsyncIterator[Any]:
        """Start a generator function's call; an async iterator of its items as the node
        yields them. ``aclose()`` stops the generator on the node."""
        response = await self._post_held(
            f"/pools/{self.name}/stream",
            headers(self._state, framed=True),
            call_request(self._functions, call, target),
        )
        return self._read_items(response, call)

    async def _read_items(self, response: Any, call: PreparedCall) -> AsyncIterator[Any]:
        import httpx

        feeding = Feeding(call.name)
        with self._feeders() as feeders:
            try:
                reader = FrameReader()
                async for chunk in response.aiter_raw():
                    for content in reader.feed(chunk):
                        try:
                            kind, value = read_frame(content, call.name)
                        except Exception:
                            feeding.raise_failure()
                            raise
                        if kind == FEED:
                            self._feed(value, call, feeding, feeders)
                        elif kind == ITEM:
                            yield value
                        elif kind == END:
                            return
            except httpx.TransportError as exc:
                raise server_gone(self._state["url"], exc) from exc
            finally:
                with trio.CancelScope(shield=True):
                    await response.aclose()
        raise stream_cut(self._state["url"], call.name)

    async def run_async(
        self, pending: PendingFunction[Any], *, target: int | str | None = None
    ) -> Future:
        """Start ``pending`` without waiting (``>``); ``await future.result()``."""
        check_target(target)
        call = prepare(self._functions, pending, how="`>` (run_async)")
        future = Future(call.name)
        self._open()
        assert self._nursery is not None

        async def runner() -> None:
            ended = False
            try:
                with future._scope:
                    try:
                        future._value = (await self._send("run", call, target))[0]
                    except Exception as exc:
                        future._error = exc
                    ended = True
            finally:
                if not ended and future._error is None:
                    # Future.cancel(), or the block's end (which cancels this nursery).
                    future._cancelled = True
                    if not future._scope.cancel_called:
                        future._why = CLIENT_CLOSED
                future._done.set()

        self._nursery.start_soon(runner)
        return future

    async def broadcast(self, pending: PendingFunction[Any]) -> list[Any]:
        """Run ``pending`` on every ready node (``@``); results ordered by node index."""
        call = prepare(self._functions, pending, how=BROADCAST)
        return await self._send("broadcast", call, None)

    async def run_parallel(
        self, group: PendingFunctionGroup
    ) -> tuple[Any, ...] | AsyncIterator[Any]:
        """Run a group's calls at once: a tuple, or with ``stream=True`` an async iterator."""
        if not isinstance(group, PendingFunctionGroup):
            raise TypeError(
                f"run_parallel() needs a group such as `f(x) & g(y)` or gather(...), "
                f"got {type(group).__qualname__}"
            )
        calls = [prepare(self._functions, p, how="a group") for p in group.items]
        if group.stream:
            return self._streamed(calls, group.ordered)
        results: list[Any] = [None] * len(calls)

        async def one(index: int, call: PreparedCall) -> None:
            results[index] = (await self._send("run", call, None))[0]

        try:
            async with trio.open_nursery() as nursery:
                for index, call in enumerate(calls):
                    nursery.start_soon(one, index, call)
        except BaseExceptionGroup as group_error:  # the first failure, as itself
            raise group_error.exceptions[0] from None
        return tuple(results)

    async def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` across the pool, in input order: one call per item,
        up to ``MAP_CONCURRENCY`` at once. ``fn`` need not be decorated. The first call
        that fails raises, and the rest are cancelled."""
        wrapped = mapped(fn)
        results: dict[int, Any] = {}
        source = enumerate(map_items(items))  # shared by the senders: trio switches only at awaits

        async def sender() -> None:
            for index, item in source:
                call = prepare(self._functions, wrapped(item))
                results[index] = (await self._send("run", call, None))[0]

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(MAP_CONCURRENCY):
                    nursery.start_soon(sender)
        except BaseExceptionGroup as group_error:  # the first failure, as itself
            raise group_error.exceptions[0] from None
        return [results[index] for index in range(len(results))]

    def _streamed(self, calls: list[PreparedCall], ordered: bool) -> AsyncIterator[Any]:
        """Start ``calls`` in the client's nursery; their results as they come (or in
        order). Leaving the iteration early cancels the ones still running."""
        self._open()
        assert self._nursery is not None
        send, receive = trio.open_memory_channel[tuple[int, bool, Any]](len(calls))
        scope = trio.CancelScope()

        async def one(index: int, call: PreparedCall) -> None:
            try:
                value = (await self._send("run", call, None))[0]
            except Exception as exc:
                send.send_nowait((index, False, exc))
            else:
                send.send_nowait((index, True, value))

        async def all_of_them() -> None:
            with scope:  # entered once, here: the iteration's end cancels it
                async with trio.open_nursery() as nursery:
                    for index, call in enumerate(calls):
                        nursery.start_soon(one, index, call)

        self._nursery.start_soon(all_of_them)

        async def results() -> AsyncIterator[Any]:
            waiting: dict[int, tuple[bool, Any]] = {}
            next_index = 0
            try:
                for _ in calls:
                    index, ok, value = await receive.receive()
                    waiting[index] = (ok, value)
                    ready = [index] if not ordered else []
                    while ordered and next_index in waiting:
                        ready.append(next_index)
                        next_index += 1
                    for at in ready:
                        ok, value = waiting.pop(at)
                        if not ok:
                            raise value
                        yield value
            finally:
                scope.cancel()

        return results()

    async def _send(self, how: str, call: PreparedCall, target: int | str | None) -> list[Any]:
        """Send a run or broadcast; print its output as it comes, and feed its
        ``Iterator[T]`` arguments while it runs; its values."""
        feeding = Feeding(call.name)
        with self._feeders() as feeders:
            try:
                return await self._answer(how, call, target, feeding, feeders)
            except Exception:
                feeding.raise_failure()
                raise

    async def _answer(
        self,
        how: str,
        call: PreparedCall,
        target: int | str | None,
        feeding: Feeding,
        feeders: trio.CancelScope,
    ) -> list[Any]:
        import httpx

        path = f"/pools/{self.name}/{how}"
        try:
            async with self._open().stream(
                "POST",
                self._state["url"] + path,
                content=call_request(self._functions, call, target),
                headers=headers(self._state, framed=True, client=self._id),
                timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise request_refused("POST", path, response)
                reader = FrameReader()
                ended = False
                async for chunk in response.aiter_raw():  # to its end: the connection is kept
                    for content in reader.feed(chunk):
                        kind, values = read_frame(content, call.name)
                        if kind == FEED:
                            self._feed(values, call, feeding, feeders)
                        ended = kind == END
                if ended:
                    return values  # type: ignore[no-any-return]
        except httpx.TransportError as exc:
            raise server_silent(self._state["url"], exc) from exc
        raise stream_cut(self._state["url"], call.name)

    # -- Iterator[T] arguments -------------------------------------------------------------------

    @contextlib.contextmanager
    def _feeders(self) -> Iterator[trio.CancelScope]:
        """The scope a call's feeders run in (in the client's nursery, as a pool's run in
        the pool's): cancelled when the call ends, however it ends."""
        scope = trio.CancelScope()
        try:
            yield scope
        finally:
            scope.cancel(reason="the call ended")

    def _feed(
        self, feed_id: str, call: PreparedCall, feeding: Feeding, scope: trio.CancelScope
    ) -> None:
        """Start feeding each of ``call``'s ``Iterator[T]`` arguments to ``feed_id``."""
        assert self._nursery is not None

        async def feeders() -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    for slot, iterable in enumerate(call.inputs):
                        # The caller's own: RelayedInput is the server's kind, and the
                        # readers of a broadcast's iterator a pool's own.
                        assert isinstance(iterable, Iterable)
                        nursery.start_soon(self._feed_one, feed_id, slot, iterable, feeding)

        self._nursery.start_soon(feeders)

    async def _feed_one(
        self, feed_id: str, slot: int, iterable: Iterable[Any], feeding: Feeding
    ) -> None:
        """Send ``iterable``'s items, pickled here, while the node has room for them; a
        request waits on the server until it has. Stops when the call reads no more."""
        path = feed_path(self.name, feed_id, slot)
        iterator = iter(iterable)
        chunk, count = 1, 1
        try:
            while True:
                started = trio.current_time()
                try:
                    payloads = await trio.to_thread.run_sync(take_payloads, iterator, count)
                except Exception as exc:
                    raise SourceFailed(exc) from exc
                elapsed = trio.current_time() - started
                room: int | None = 0
                if payloads:
                    room = await self._feed_request(path, feed_items(payloads))
                    if room is None:
                        return  # the call reads no more
                if len(payloads) < count:  # the iterable ended
                    await self._feed_request(path, feed_end())
                    return
                chunk, count = next_chunk(chunk, elapsed, room or 0)
        except SourceFailed as failed:
            feeding.failed(failed.error, source=True)
            await self._tell_failed(path, failed.error)
        except Exception as exc:  # the server refused or lost a request of the feed
            feeding.failed(exc, source=False)
            await self._tell_failed(path, exc)

    async def _tell_failed(self, path: str, exc: Exception) -> None:
        """Have the server cancel the call, which fails with ``exc`` here."""
        with contextlib.suppress(ServerError):  # gone: the call's own request says so
            await self._feed_request(path, feed_failed(exc))

    async def _feed_request(self, path: str, body: bytes) -> int | None:
        """Send a feed request; the room the node has, or None if the call reads no more."""
        import httpx

        try:
            response = await self._open().post(
                self._state["url"] + path,
                content=body,
                headers=headers(self._state, framed=True),
                timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None),
            )
        except httpx.TransportError as exc:
            raise server_silent(self._state["url"], exc) from exc
        return feed_answer(response, path)
