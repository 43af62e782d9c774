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
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from skyward_trio import Event, PendingFunction, PendingFunctionGroup, ServerError, _serial
from skyward_trio._function import active_pool
from skyward_trio._pool import PreparedCall, _Functions, _rebuild_error
from skyward_trio._server import (
    FRAME,
    LOG_FILE,
    STATE_FILE,
    event_from_json,
    join_payload,
    pack,
    split_payload,
    state_path,
    unpack,
)

__all__ = [
    "LOG_FILE",
    "Client",
    "ServerError",
    "request",
    "request_create",
    "server_state",
    "start_server",
    "stop_server",
]

_CONNECT = 10.0  # seconds to reach the server; a call itself may take as long as it takes


def server_state() -> dict[str, Any] | None:
    """The running server's ``{"url", "pid", "token"}``, or None when none runs."""
    path = state_path()
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not _alive(state.get("pid")):
        return None
    return state


def _alive(pid: object) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here: kill(0) is all there is
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _not_running() -> ServerError:
    return ServerError(
        f"the Skyward server is not running (no live server in {STATE_FILE}); "
        "start it with `sky server start`"
    )


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
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skyward_trio._server", "--port", str(port)],
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


def stop_server(*, timeout: float = 600.0) -> list[str]:
    """Stop the server: it closes every pool (terminating its machines) and exits.

    Returns the names of the pools it closed.

    Raises:
        ServerError: None runs, or it did not exit within ``timeout`` seconds.
    """
    state = server_state()
    if state is None:
        raise _not_running()
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
    return pools


def _request(
    state: dict[str, Any],
    method: str,
    path: str,
    *,
    content: Any = None,
    read_timeout: float | None = 60.0,
    client: httpx.Client | None = None,
) -> httpx.Response:
    headers = {"authorization": f"Bearer {state['token']}"}
    if content is not None:
        headers["content-type"] = FRAME
    timeout = httpx.Timeout(_CONNECT, read=read_timeout)
    try:
        if client is None:
            with httpx.Client(timeout=timeout) as one:
                response = one.request(
                    method, state["url"] + path, content=content, headers=headers
                )
        else:
            response = client.request(
                method, state["url"] + path, content=content, headers=headers, timeout=timeout
            )
    except httpx.TransportError as exc:
        raise ServerError(
            f"the Skyward server at {state['url']} did not answer ({exc}); is it running? "
            "(`sky server status`)"
        ) from exc
    if response.status_code != 200:
        raise ServerError(f"the Skyward server refused {method} {path}: {_said(response)}")
    return response


def _said(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text


def _frame_bytes(parts: list[Any]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def request_create(
    name: str, specs: tuple[Any, ...], options: Any, *, idle_timeout: float | None = None
) -> dict[str, Any]:
    """Ask the server to create and hold pool ``name``; its summary once ready.

    ``idle_timeout``: seconds without a call after which the server closes it.
    """
    import cloudpickle

    state = server_state()
    if state is None:
        raise _not_running()
    blob = cloudpickle.dumps((specs, options))
    content = _frame_bytes(pack({"name": name, "idle_timeout": idle_timeout}, [blob]))
    answer: dict[str, Any] = _request(
        state, "POST", "/pools", content=content, read_timeout=None
    ).json()
    return answer


def request(method: str, path: str) -> Any:
    """A control request to the running server (``sky compute list``, ...): its JSON."""
    state = server_state()
    if state is None:
        raise _not_running()
    return _request(state, method, path, read_timeout=None).json()


class Client:
    """A pool the server holds (``sky compute create NAME``), reached by its name.

    Use it as a pool: ``f(x) >> client``, ``f(x) @ client``, ``f(x) > client``,
    ``(f(x) & g(y)) >> client`` and ``sky.gather(...) >> client``; inside ``with client:``
    ``>> sky`` reaches it too. Leaving the ``with`` block, or ``close()``, ends this
    client's connection; the pool stays up until ``sky compute delete NAME``.

    Args:
        name: The pool's name on the server.
        url: The server's address (``http://127.0.0.1:PORT``). By default, and to find its
            token, the state file (``~/.skyward/server.json``) of the server this user runs.

    Raises:
        ServerError: No server runs, or it holds no pool ``name``.
    """

    def __init__(self, name: str, *, url: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"Client(name=...) names a pool the server holds; got {name!r}")
        state = server_state()
        if state is None:
            raise _not_running()
        if url is not None and url.rstrip("/") != state["url"]:
            raise ServerError(
                f"Client(url={url!r}): the server this user runs listens on {state['url']} "
                f"({STATE_FILE}); only that server's token is known here"
            )
        self.name = name
        self._state = state
        self._http = httpx.Client()
        self._functions = _Functions(prefix=f"c{uuid.uuid4().hex[:12]}-")
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._token: Any = None
        try:
            self.info()  # the pool exists, or this raises saying why
        except BaseException:
            self._http.close()
            raise

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
        headers = {"authorization": f"Bearer {self._state['token']}"}
        url = f"{self._state['url']}/pools/{self.name}/events"
        try:
            with self._http.stream(
                "GET", url, headers=headers, timeout=httpx.Timeout(_CONNECT, read=None)
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise ServerError(
                        f"the Skyward server refused the events of {self.name!r}: {_said(response)}"
                    )
                for line in response.iter_lines():
                    if line:
                        yield event_from_json(line)
        except httpx.TransportError as exc:
            raise ServerError(
                f"the Skyward server at {self._state['url']} went away ({exc}); "
                "see `sky server status`"
            ) from exc

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
        """End this client's connection (the pool stays up on the server)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        self._http.close()

    # -- the operators ---------------------------------------------------------------------------

    def run(self, pending: PendingFunction[Any], *, target: int | str | None = None) -> Any:
        """Run ``pending`` on one node of the pool (``>>``), or on ``target``."""
        call = self._prepare(pending, "`>>` through sky.Client")
        if isinstance(target, bool) or not (target in (None, "head") or isinstance(target, int)):
            raise ValueError(f'target must be None, "head" or a node index, got {target!r}')
        return self._send("run", call, target)[0]

    def run_async(
        self, pending: PendingFunction[Any], *, target: int | str | None = None
    ) -> concurrent.futures.Future[Any]:
        """Start ``pending`` without waiting (``>``); a ``concurrent.futures.Future``."""
        call = self._prepare(pending, "`>` (run_async)")
        return self._pool().submit(self._send_one, call, target)

    def broadcast(self, pending: PendingFunction[Any]) -> list[Any]:
        """Run ``pending`` on every ready node (``@``); results ordered by node index."""
        call = self._prepare(pending, "`@` (broadcast)")
        return self._send("broadcast", call, None)

    def run_parallel(self, group: PendingFunctionGroup) -> tuple[Any, ...] | Iterator[Any]:
        """Run a group's calls in parallel: a tuple, or an iterator with ``stream=True``."""
        if not isinstance(group, PendingFunctionGroup):
            raise TypeError(
                f"run_parallel() needs a group such as `f(x) & g(y)` or sky.gather(...), "
                f"got {type(group).__qualname__}"
            )
        calls = [self._prepare(p, "a group (run_parallel)") for p in group.items]
        futures = [self._pool().submit(self._send_one, call, None) for call in calls]
        if group.stream:
            return _streamed(futures, group.ordered)
        try:
            return tuple(f.result() for f in futures)
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    # -- the wire --------------------------------------------------------------------------------

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=32, thread_name_prefix="sky-client"
            )
        return self._threads

    def _prepare(self, pending: PendingFunction[Any], how: str) -> PreparedCall:
        call = self._functions.prepare(pending)
        if call.stream:
            raise TypeError(
                f"{call.name}() is a generator function: sky.Client does not stream items "
                "yet; return a list, or use the pool itself (sky.Compute)"
            )
        if call.inputs:
            raise TypeError(
                f"{call.name}() takes Iterator[...] arguments: sky.Client does not stream "
                "them yet; pass a list, or use the pool itself (sky.Compute)"
            )
        return call

    def _send_one(self, call: PreparedCall, target: int | str | None) -> Any:
        return self._send("run", call, target)[0]

    def _send(self, how: str, call: PreparedCall, target: int | str | None) -> list[Any]:
        fn_meta, fn_blobs = split_payload(call.fn_payload)
        args_meta, args_blobs = split_payload(call.args_payload)
        header = {
            "key": call.fn_key,
            "name": call.name,
            "timeout": call.timeout,
            "target": target,
            "needs": dict(self._functions.needs(call.fn_key)),
            "fn": fn_meta,
            "args": args_meta,
        }
        content = _frame_bytes(pack(header, [*fn_blobs, *args_blobs]))
        response = _request(
            self._state,
            "POST",
            f"/pools/{self.name}/{how}",
            content=content,
            read_timeout=None,
            client=self._http,
        )
        answer, blobs = unpack(response.content)
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
                raise _rebuild_error((payload, type_name, text, tb), result["node"], call.name)
        return values


def _streamed(futures: list[concurrent.futures.Future[Any]], ordered: bool) -> Iterator[Any]:
    try:
        done = futures if ordered else concurrent.futures.as_completed(futures)
        for future in done:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()
