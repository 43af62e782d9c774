"""``sky.Client``: a pool the server holds, used like a pool; and starting the server.

    $ sky server start
    $ sky compute create train          # [pools.train] of ./skyward.toml, held by the server

    with sky.Client("train") as pool:   # no provisioning: the machines are up
        print(work(21) >> pool)

The client pickles each call here (as ``sky.Compute``'s pool does) and the server relays
it to a node; the result comes back pickled and is rebuilt here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from skyward_trio import (
    CancelledCallError,
    Event,
    PendingFunction,
    PendingFunctionGroup,
    ServerError,
)
from skyward_trio._client import (
    BROADCAST,
    CONNECT_TIMEOUT,
    END,
    FEED,
    ITEM,
    MAP_CONCURRENCY,
    Feeding,
    FrameReader,
    SourceFailed,
    abandon_path,
    call_request,
    check_target,
    client_closed,
    client_functions,
    client_id,
    client_state,
    events_refused,
    feed_answer,
    feed_end,
    feed_failed,
    feed_items,
    feed_path,
    headers,
    mapped,
    next_chunk,
    prepare,
    read_frame,
    request_refused,
    running_state,
    server_gone,
    server_silent,
    server_state,
    session_path,
    store_path,
    store_ticket,
    stream_cut,
    take_payloads,
)
from skyward_trio._client import alive as _alive
from skyward_trio._collections import Collections
from skyward_trio._function import active_pool, map_items
from skyward_trio._pool import PreparedCall, RelayedInput
from skyward_trio._serverwire import (
    LOG_FILE,
    event_from_fields,
    event_from_json,
    frame,
    left_path,
    state_path,
    store_request,
    store_value,
)

__all__ = [
    "LOG_FILE",
    "Client",
    "ServerError",
    "left_by_stopped",
    "request",
    "request_create",
    "running_state",
    "server_state",
    "start_server",
    "stop_server",
]


def _log_tail(lines: int = 20) -> str:
    path = Path(os.path.expanduser(LOG_FILE))
    try:
        return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
    except OSError:
        return ""


def start_server(*, port: int = 0, timeout: float = 30.0) -> dict[str, Any]:
    """Start the server in the background; its state once it listens.

    Raises:
        ServerError: One already runs, or it did not start (its log's end is included).
    """
    running = server_state()
    if running is not None:
        raise ServerError(
            f"a Skyward server already runs (pid {running['pid']}, {running['url']}); "
            "stop it first with `sky server stop`"
        )
    path = state_path()
    path.unlink(missing_ok=True)  # a dead server's
    log = Path(os.path.expanduser(LOG_FILE))
    log.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skyward_trio._server", "--port", str(port), "--log", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal is not the server's
            cwd="/",
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = server_state()
        if state is not None and state.get("pid") == proc.pid:
            return state
        if proc.poll() is not None:
            raise ServerError(
                f"the Skyward server exited during start-up ({proc.returncode}); the end of "
                f"{LOG_FILE}:\n{_log_tail()}"
            )
        time.sleep(0.05)
    proc.terminate()
    raise ServerError(
        f"the Skyward server did not start within {timeout:g} s; the end of {LOG_FILE}:\n"
        f"{_log_tail()}"
    )


def stop_server(*, timeout: float = 600.0) -> tuple[list[str], dict[str, list[str]]]:
    """Stop the server: it closes every pool (terminating its machines) and exits.

    Returns the names of the pools it closed, and the pools whose close could not
    confirm everything ended (this stop's, or an idle timeout's earlier), each with what
    its closes said.

    Raises:
        ServerError: None runs, or it did not exit within ``timeout`` seconds.
    """
    state = running_state()
    answer = _request(state, "POST", "/shutdown")
    pools: list[str] = answer.json()["pools"]
    deadline = time.monotonic() + timeout
    while _alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(state["pid"]):
        raise ServerError(
            f"the Skyward server (pid {state['pid']}) is still closing its pools after "
            f"{timeout:g} s; see {LOG_FILE}"
        )
    return pools, left_by_stopped(state["pid"])


def left_by_stopped(pid: int | None = None) -> dict[str, list[str]]:
    """What a server that stopped (``pid``; None: whichever stopped last) wrote of its
    pools' closes that could not confirm everything ended (``left_path``), by pool; the
    file is removed once read."""
    path = left_path(state_path())
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if pid is not None and written.get("pid") != pid:
        return {}  # another server's
    path.unlink(missing_ok=True)
    left = written.get("left")
    if not isinstance(left, dict):
        return {}
    return {str(name): [str(s) for s in said] for name, said in left.items()}


def _request(
    state: dict[str, Any],
    method: str,
    path: str,
    *,
    content: Any = None,
    read_timeout: float | None = 60.0,
    client: httpx.Client | None = None,
) -> httpx.Response:
    sent = headers(state, framed=content is not None)
    timeout = httpx.Timeout(CONNECT_TIMEOUT, read=read_timeout)
    try:
        if client is None:
            with httpx.Client(timeout=timeout) as one:
                response = one.request(method, state["url"] + path, content=content, headers=sent)
        else:
            response = client.request(
                method, state["url"] + path, content=content, headers=sent, timeout=timeout
            )
    except httpx.TransportError as exc:
        raise server_silent(state["url"], exc) from exc
    if response.status_code != 200:
        raise request_refused(method, path, response)
    return response


def request_create(
    name: str,
    specs: tuple[Any, ...],
    options: Any,
    *,
    idle_timeout: float | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> dict[str, Any]:
    """Ask the server to create and hold pool ``name``; its summary once ready.

    ``idle_timeout``: seconds without a call after which the server closes it.
    ``on_event``: called with each of the pool's events while it comes up.

    Raises:
        ServerError: No server runs, it refused the pool, or the pool did not come up.
    """
    import cloudpickle

    state = running_state()
    blob = cloudpickle.dumps((specs, options))
    content = frame({"name": name, "idle_timeout": idle_timeout}, [blob])
    if on_event is None:
        answer: dict[str, Any] = _request(
            state, "POST", "/pools", content=content, read_timeout=None
        ).json()
        return answer
    timeout = httpx.Timeout(CONNECT_TIMEOUT, read=None)
    try:
        with (
            httpx.Client(timeout=timeout) as http,
            http.stream(
                "POST",
                f"{state['url']}/pools?follow=1",
                content=content,
                headers=headers(state, framed=True),
            ) as response,
        ):
            if response.status_code != 200:
                response.read()
                raise request_refused("POST", "/pools", response)
            for line in response.iter_lines():
                if not line:
                    continue
                data: dict[str, Any] = json.loads(line)
                kind = data.get("type")
                if kind == "Failed":
                    raise ServerError(
                        f"pool {name!r} did not come up: {data.get('kind') or 'Error'}: "
                        f"{data['error']}"
                    )
                if kind == "Created":
                    del data["type"]
                    return data
                on_event(event_from_fields(data))
    except httpx.TransportError as exc:
        raise server_gone(state["url"], exc) from exc
    raise server_gone(state["url"], ConnectionError("the answer ended early"))


def request(method: str, path: str) -> Any:
    """A control request to the running server (``sky compute list``, ...): its JSON."""
    state = running_state()
    return _request(state, method, path, read_timeout=None).json()


class Client(Collections):
    """A pool the server holds (``sky compute create NAME``), reached by its name.

    Use it as a pool: ``f(x) >> client``, ``f(x) @ client``, ``f(x) > client``,
    ``(f(x) & g(y)) >> client`` and ``sky.gather(...) >> client``; inside ``with client:``
    ``>> sky`` reaches it too. Arguments annotated ``Iterator[T]`` stream to the node, and
    ``client.dict(name)`` and the others are the pool's collections, as functions running
    on it see them. Leaving the ``with`` block, or ``close()``, ends this client's
    connection; the pool stays up until ``sky compute delete NAME``.

    Args:
        name: The pool's name on the server.
        url: The server's address (``http://127.0.0.1:PORT``). By default, and to find its
            token, the state file (``~/.skyward/server.json``) of the server this user runs.

    Raises:
        ServerError: No server runs, or it holds no pool ``name``.
    """

    _collections_of = "client"
    _store: _ServerStore

    def __init__(self, name: str, *, url: str | None = None) -> None:
        self._state = client_state(name, url, "sky.Client")
        self.name = name
        self._http = httpx.Client()
        self._functions = client_functions()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        # Iterator[T] arguments being fed: the thread, its feed's path and its call's
        # Feeding; close() cancels their calls and joins them.
        self._feeders: list[tuple[threading.Thread, str, Feeding]] = []
        self._store = _ServerStore(self)
        self._token: Any = None
        self._id = client_id()
        # Set by close(): a call still running, or one not yet sent, is cancelled.
        self._closing = False
        self._running: list[concurrent.futures.Future[Any]] = []  # started with `>` and co
        try:
            self.info()  # the pool exists, or this raises saying why
            self._session = self._open_session()
        except BaseException:
            self._http.close()
            raise

    def _open_session(self) -> httpx.Response:
        """Open this client's session: a request held open while the client lives (no
        thread reads it). Its end, however this process ends, tells the server to cancel
        this client's calls and free its locks."""
        return self._post_held(session_path(self.name), headers(self._state, client=self._id))

    def _post_held(
        self, path: str, sent_headers: dict[str, str], content: bytes | None = None
    ) -> httpx.Response:
        """POST to ``path`` and keep the response open to read as it comes (no read
        timeout); raise if the server is silent or refuses."""
        request = self._http.build_request(
            "POST",
            self._state["url"] + path,
            content=content,
            headers=sent_headers,
            timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None),
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise server_silent(self._state["url"], exc) from exc
        if response.status_code != 200:
            response.read()
            response.close()
            raise request_refused("POST", path, response)
        return response

    def info(self) -> dict[str, Any]:
        """What the server says of the pool: state, provider, nodes, cost so far."""
        answer: dict[str, Any] = _request(
            self._state, "GET", f"/pools/{self.name}", client=self._http
        ).json()
        return answer

    def events(self) -> Iterator[Event]:
        """The pool's events, as ``pool.events()`` gives them: its life so far, then each
        as it happens, until the pool closes. Closing the iterator (or leaving a ``for``
        early) ends the subscription."""
        url = f"{self._state['url']}/pools/{self.name}/events"
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=None)
        try:
            with self._http.stream(
                "GET", url, headers=headers(self._state), timeout=timeout
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise events_refused(self.name, response)
                for line in response.iter_lines():
                    if line:
                        yield event_from_json(line)
        except httpx.TransportError as exc:
            raise server_gone(self._state["url"], exc) from exc

    def __repr__(self) -> str:
        return f"<sky.Client {self.name!r} at {self._state['url']}>"

    def __enter__(self) -> Client:
        self._token = active_pool.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            active_pool.reset(self._token)
            self._token = None
        self.close()

    def close(self) -> None:
        """End this client's connection (the pool stays up on the server).

        Calls started with ``>`` (or in a group, or by ``map``) that still run are
        cancelled on the node (their futures raise ``CancelledCallError`` saying the
        client closed), and the locks this client holds are released. Waits at most
        ``CONNECT_TIMEOUT`` seconds for the server to answer those calls.
        """
        if self._closing:
            return
        self._closing = True
        if self._threads is not None:
            self._threads.shutdown(wait=False)  # those not started raise when they start
            self._threads = None
        live = [feeder for feeder in self._feeders if feeder[0].is_alive()]
        for _, _, feeding in live:
            feeding.stopped = True  # their threads send no more items
        # The session's end cancels the calls still running (each is answered with a
        # CancelledCallError, at once), those whose items this client feeds among them, and
        # releases the locks this client holds.
        self._session.close()
        for _, _, feeding in live:
            if not feeding.streamed:
                feeding.ended.wait(CONNECT_TIMEOUT)  # its answer, which comes at once
        concurrent.futures.wait(self._running, timeout=CONNECT_TIMEOUT)
        self._running.clear()
        self._http.close()  # a generator's call ends with its connection
        for thread, _, _ in live:
            thread.join()  # each is back once its request is answered or its iterable yields
        self._feeders.clear()

    # -- the operators ---------------------------------------------------------------------------

    def run(self, pending: PendingFunction[Any], *, target: int | str | None = None) -> Any:
        """Run ``pending`` on one node of the pool (``>>``), or on ``target``: its value,
        or for a generator function an iterator of its items as the node yields them."""
        check_target(target)
        call = prepare(self._functions, pending)
        if call.stream:
            return self._items(call, target)
        return self._send("run", call, target)[0]

    def run_async(
        self, pending: PendingFunction[Any], *, target: int | str | None = None
    ) -> concurrent.futures.Future[Any]:
        """Start ``pending`` without waiting (``>``); a ``concurrent.futures.Future``."""
        check_target(target)
        call = prepare(self._functions, pending, how="`>` (run_async)")
        return self._submit(self._send_one, call, target)

    def broadcast(self, pending: PendingFunction[Any]) -> list[Any]:
        """Run ``pending`` on every ready node (``@``); results ordered by node index."""
        call = prepare(self._functions, pending, how=BROADCAST)
        return self._send("broadcast", call, None)

    def run_parallel(self, group: PendingFunctionGroup) -> tuple[Any, ...] | Iterator[Any]:
        """Run a group's calls in parallel: a tuple, or an iterator with ``stream=True``."""
        if not isinstance(group, PendingFunctionGroup):
            raise TypeError(
                f"run_parallel() needs a group such as `f(x) & g(y)` or sky.gather(...), "
                f"got {type(group).__qualname__}"
            )
        calls = [prepare(self._functions, p, how="a group") for p in group.items]
        futures = [self._submit(self._send_one, call, None) for call in calls]
        if group.stream:
            return _streamed(futures, group.ordered)
        try:
            return tuple(f.result() for f in futures)
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` across the pool, in input order: one call per item,
        up to ``MAP_CONCURRENCY`` at once. ``fn`` need not be decorated. The first call
        that fails raises, and those not yet sent are not sent."""
        wrapped = mapped(fn)
        source = enumerate(map_items(items))
        lock = threading.Lock()  # the senders take items in turn
        results: dict[int, Any] = {}
        failed = threading.Event()

        def sender() -> None:
            while not failed.is_set():
                with lock:
                    taken = next(source, None)
                if taken is None:
                    return
                index, item = taken
                try:
                    call = prepare(self._functions, wrapped(item))
                    results[index] = self._send_one(call, None)
                except BaseException:
                    failed.set()
                    raise

        futures = [self._submit(sender) for _ in range(MAP_CONCURRENCY)]
        for future in concurrent.futures.as_completed(futures):
            error = future.exception()
            if error is not None:
                failed.set()
                raise error
        return [results[index] for index in range(len(results))]

    # -- the wire --------------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` in the client's threads; close() waits for it (bounded)."""
        future = self._pool().submit(fn, *args)
        self._running = [f for f in self._running if not f.done()]
        self._running.append(future)
        return future

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._closing:
            raise RuntimeError(f"sky.Client({self.name!r}) is closed; open a new one")
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=32, thread_name_prefix="sky-client"
            )
        return self._threads

    def _items(self, call: PreparedCall, target: int | str | None) -> Iterator[Any]:
        """Start a generator function's call; an iterator of its items as the node yields
        them. Closing it (or leaving its ``for``) stops the generator on the node."""
        response = self._post_held(
            f"/pools/{self.name}/stream",
            headers(self._state, framed=True),
            call_request(self._functions, call, target),
        )
        return self._read_items(response, call)

    def _read_items(self, response: httpx.Response, call: PreparedCall) -> Iterator[Any]:
        feeding = Feeding(call.name, streamed=True)
        try:
            reader = FrameReader()
            for chunk in response.iter_raw():
                for content in reader.feed(chunk):
                    try:
                        kind, value = read_frame(content, call.name)
                    except Exception:
                        feeding.raise_failure()
                        raise
                    if kind == FEED:
                        self._feed(value, call, feeding)
                    elif kind == ITEM:
                        yield value
                    elif kind == END:
                        return
        except httpx.TransportError as exc:
            raise server_gone(self._state["url"], exc) from exc
        finally:
            feeding.stopped = True
            response.close()
            feeding.ended.set()
        raise stream_cut(self._state["url"], call.name)

    def _send_one(self, call: PreparedCall, target: int | str | None) -> Any:
        return self._send("run", call, target)[0]

    def _send(self, how: str, call: PreparedCall, target: int | str | None) -> list[Any]:
        """Send a run or broadcast; print its output as it comes, and feed its
        ``Iterator[T]`` arguments while it runs; its values."""
        feeding = Feeding(call.name)
        try:
            if self._closing:
                raise client_closed(call.name)  # queued when close() came: not sent
            return self._answer(how, call, target, feeding)
        except Exception as exc:
            feeding.raise_failure()
            if self._closing and isinstance(exc, ServerError | CancelledCallError):
                # What a call cut by close() meets (the server's cancellation, or the
                # connection closed under it) says so.
                raise client_closed(call.name) from None
            raise
        finally:
            feeding.stopped = True
            feeding.ended.set()

    def _answer(
        self, how: str, call: PreparedCall, target: int | str | None, feeding: Feeding
    ) -> list[Any]:
        path = f"/pools/{self.name}/{how}"
        try:
            with self._http.stream(
                "POST",
                self._state["url"] + path,
                content=call_request(self._functions, call, target),
                headers=headers(self._state, framed=True, client=self._id),
                timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None),
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise request_refused("POST", path, response)
                reader = FrameReader()
                ended = False
                for chunk in response.iter_raw():  # to its end: the connection is kept
                    for content in reader.feed(chunk):
                        kind, values = read_frame(content, call.name)
                        if kind == FEED:
                            self._feed(values, call, feeding)
                        ended = kind == END
                if ended:
                    return values  # type: ignore[no-any-return]
        except httpx.TransportError as exc:
            raise server_silent(self._state["url"], exc) from exc
        raise stream_cut(self._state["url"], call.name)

    # -- Iterator[T] arguments -------------------------------------------------------------------

    def _feed(self, feed_id: str, call: PreparedCall, feeding: Feeding) -> None:
        """Start a thread per ``Iterator[T]`` argument of ``call``, feeding its items to
        ``feed_id`` until the call ends (``feeding.stopped``)."""
        self._feeders = [feeder for feeder in self._feeders if feeder[0].is_alive()]
        for slot, iterable in enumerate(call.inputs):
            assert not isinstance(iterable, RelayedInput)  # the server's kind
            thread = threading.Thread(
                target=self._feed_one,
                args=(feed_id, slot, iterable, feeding),
                name=f"sky-feed-{call.name}-{slot}",
                daemon=True,  # a blocked iterable must not keep the interpreter alive
            )
            thread.start()
            self._feeders.append((thread, feed_path(self.name, feed_id, slot), feeding))

    def _feed_one(self, feed_id: str, slot: int, iterable: Iterable[Any], feeding: Feeding) -> None:
        """Send ``iterable``'s items, pickled here, while the node has room for them; a
        request waits on the server until it has. Stops when the call reads no more."""
        path = feed_path(self.name, feed_id, slot)
        iterator = iter(iterable)
        chunk, count = 1, 1
        try:
            while not feeding.stopped:
                started = time.monotonic()
                try:
                    payloads = take_payloads(iterator, count)
                except Exception as exc:
                    raise SourceFailed(exc) from exc
                elapsed = time.monotonic() - started
                room: int | None = 0
                if payloads:
                    if feeding.stopped:
                        return
                    room = self._feed_request(path, feed_items(payloads))
                    if room is None:
                        return  # the call reads no more
                if len(payloads) < count:  # the iterable ended
                    self._feed_request(path, feed_end())
                    return
                chunk, count = next_chunk(chunk, elapsed, room or 0)
        except SourceFailed as failed:
            feeding.failed(failed.error, source=True)
            self._tell_failed(path, failed.error)
        except Exception as exc:  # the server refused or lost a request of the feed
            feeding.failed(exc, source=False)
            self._tell_failed(path, exc)

    def _tell_failed(self, path: str, exc: Exception) -> None:
        """Have the server cancel the call, which fails with ``exc`` here."""
        with contextlib.suppress(ServerError):  # gone: the call's own request says so
            self._feed_request(path, feed_failed(exc))

    def _feed_request(self, path: str, body: bytes) -> int | None:
        """Send a feed request; the room the node has, or None if the call reads no more
        (also once this client is closed: close() cancelled the call)."""
        if self._http.is_closed:
            return None
        try:
            response = self._http.post(
                self._state["url"] + path,
                content=body,
                headers=headers(self._state, framed=True),
                timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None),
            )
        except httpx.TransportError as exc:
            raise server_silent(self._state["url"], exc) from exc
        except RuntimeError:
            if self._http.is_closed:  # closed meanwhile: close() cancelled the call
                return None
            raise
        return feed_answer(response, path)


class _ServerStore:
    """A Client's way to the pool's collections store: each operation a request to the
    server, which passes it on (keys and values pickled here, unpickled by the store or
    the reader). A request given up while it waits (Ctrl-C in ``queue.get()``, a timeout
    around ``await queue.get_async()``) hangs up, and the server cancels the wait; the
    ``_async`` variants make their request on the caller's own event loop (asyncio or
    trio) for that, where a thread would go on waiting and take the item or the lock for
    nobody."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _request(
        self, op: int, name: str, args: tuple[Any, ...], ticket: str | None
    ) -> dict[str, Any]:
        client = self._client
        return {
            "url": client._state["url"] + store_path(client.name),
            "content": store_request(op, name, args, ticket),
            "headers": headers(client._state, framed=True, client=client._id),
            "timeout": httpx.Timeout(CONNECT_TIMEOUT, read=None),
        }

    def _abandon(self, ticket: str) -> dict[str, Any]:
        """A wait given up: what the server may have granted it as it was given up is
        given back (see ``abandon_path``)."""
        client = self._client
        return {
            "url": client._state["url"] + abandon_path(client.name),
            "json": {"ticket": ticket},
            "headers": headers(client._state, client=client._id),
            "timeout": CONNECT_TIMEOUT,
        }

    def _value(self, response: httpx.Response) -> Any:
        if response.status_code != 200:
            raise request_refused("POST", store_path(self._client.name), response)
        return store_value(response.content)

    def call(self, op: int, name: str, *args: Any) -> Any:
        ticket = store_ticket(op)
        try:
            response = self._client._http.post(**self._request(op, name, args, ticket))
        except httpx.TransportError as exc:
            raise server_silent(self._client._state["url"], exc) from exc
        except BaseException:  # Ctrl-C
            if ticket is not None:
                with contextlib.suppress(Exception):
                    self._client._http.post(**self._abandon(ticket))
            raise
        return self._value(response)

    async def call_async(self, op: int, name: str, *args: Any) -> Any:
        ticket = store_ticket(op)
        async with httpx.AsyncClient() as http:
            try:
                response = await http.post(**self._request(op, name, args, ticket))
            except httpx.TransportError as exc:
                raise server_silent(self._client._state["url"], exc) from exc
            except BaseException:  # given up: a timeout, a cancel
                if ticket is not None:
                    with contextlib.suppress(Exception):
                        await _shielded(http.post(**self._abandon(ticket)))
                raise
        return self._value(response)


async def _shielded(request: Awaitable[Any]) -> None:
    """Await ``request`` even while the caller's task is being cancelled (asyncio or trio)."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        with trio.CancelScope(shield=True):
            await request
    else:
        import asyncio

        await asyncio.shield(request)


def _streamed(futures: list[concurrent.futures.Future[Any]], ordered: bool) -> Iterator[Any]:
    try:
        done = futures if ordered else concurrent.futures.as_completed(futures)
        for future in done:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()
