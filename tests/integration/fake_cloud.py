"""What every fake cloud of the tests does alike, as one base class: ``FakeCloud``.

A fake cloud is a context manager: entering it starts its HTTP server (and any thread of
its own) on 127.0.0.1; leaving it refuses what still arrives, stops the server, waits for
the requests being answered, ends every machine still running (by pid), keeps each
machine's home under ``root`` for a look after the test, and raises if anything failed
inside the fake (a failure is answered 500 and kept in ``errors``), so that it cannot pass
unseen. The fakes (``fake_runpod``, ``fake_vastai``, ``fake_aws``, ``fake_lambda``,
``fake_hyperstack``, ``fake_verda``) say only what is theirs: how they answer, which machines
are running, how one ends.

Below the class, what their servers share (reading a request, replying, checking JSON
values) and how a machine ends: every process of it, by pid, never by name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import attrs
import procs
import sshd
from sshd import Machine


class FakeCloud:
    """The scaffolding of a fake cloud (see the module); subclasses fill in the hooks."""

    #: How the fake is named in its errors ("the fake RunPod").
    title: ClassVar[str]

    def __init__(self, root: Path, *, lock: threading.Lock | threading.RLock | None = None) -> None:
        self.root = root
        self.errors: list[str] = []
        self._lock = lock if lock is not None else threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0  # requests being answered, their after-steps included
        self._closed = False  # what still arrives is refused
        self._stopping = threading.Event()  # set when the fake is left: threads end
        self._server: FakeServer | None = None
        self._threads: list[threading.Thread] = []

    def _listen(self, serve: Callable[[FakeHandler], None], name: str) -> str:
        """Make the HTTP server (on a free port; it serves once the fake is entered):
        its URL, ``http://127.0.0.1:<port>``."""
        self._server = FakeServer(serve)
        self._threads.append(
            threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},  # how soon leaving the fake stops the server
                name=name,
                daemon=True,
            )
        )
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
            for thread in self._threads:
                thread.start()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()
        if self.errors and exc is None:
            raise AssertionError(f"{self.title} failed:\n" + "\n".join(self.errors))

    def _close(self) -> None:
        """Stop serving, wait for what is being answered, end every machine, keep their
        homes, release the rest; each step runs only if its part was started, so a failed
        ``__enter__`` cleans up too."""
        with self._lock:
            self._closed = True
        self._stopping.set()
        started = [thread for thread in self._threads if thread.ident is not None]
        if self._server is not None:
            if started:  # shutdown() waits for serve_forever, which only a started one runs
                self._server.shutdown()
            self._server.server_close()
        for thread in started:
            thread.join()
        with self._idle:
            if not self._idle.wait_for(lambda: self._busy() is None, timeout=60):
                self.errors.append(self._busy() or "the fake was still busy")
        self._end_all()
        for name, home in self._machine_homes():
            _keep_home(home, self.root / name / "home")
        self._release()

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Count a request in flight while it is answered: leaving the fake waits for it."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _end_processes(self, machine: Machine, marker: bytes, what: str, *, abrupt: bool) -> None:
        """End every process of ``what``'s machine by pid (``_end_machine``); any that
        survived is an error of the fake."""
        survivors = _end_machine(machine, marker, abrupt=abrupt)
        if survivors:
            with self._lock:
                self.errors.append(f"{what}: processes {sorted(survivors)} survived")

    # -- hooks ----------------------------------------------------------------------------------

    def _open(self) -> None:
        """Start what the fake needs besides its server's thread (called on entering)."""

    def _busy(self) -> str | None:
        """Under the lock: what leaving must still wait for, or None once nothing."""
        return f"{self._in_flight} requests were still being answered" if self._in_flight else None

    def _end_all(self) -> None:
        """End every machine still running (the server is stopped by now)."""

    def _machine_homes(self) -> Iterable[tuple[str, Path]]:
        """Each machine's name and home (outside ``root``, to keep it short)."""
        return ()

    def _release(self) -> None:
        """Release what the fake holds besides its machines (called last on leaving)."""


# -- serving --------------------------------------------------------------------------------------


@attrs.frozen
class Recorded:
    """One request the fake received, as it arrived (header names in lower case)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any  # the parsed JSON, or None without a body (or with one that is not JSON)


@attrs.frozen
class _Answer:
    status: int
    payload: object  # JSON, or None for an empty body
    then: Callable[[], None] | None = None  # run once the answer is sent


class FakeServer(ThreadingHTTPServer):
    """A fake API's HTTP server on 127.0.0.1 (a free port): every request goes to ``serve``."""

    daemon_threads = True

    def __init__(self, serve: Callable[[FakeHandler], None]) -> None:
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.serve = serve


class FakeHandler(BaseHTTPRequestHandler):
    server: FakeServer

    def _handle(self) -> None:
        self.server.serve(self)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """The fakes keep their requests themselves; stderr stays quiet."""


def _send(handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
    data = b"" if payload is None else json.dumps(payload).encode()
    handler.send_response(status)
    if payload is not None:
        handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


def _read(handler: BaseHTTPRequestHandler) -> tuple[Recorded, bytes]:
    """A request as the fakes record it, and its body's bytes: a body that is not JSON is
    recorded as None, and the bytes tell it from no body at all."""
    url = urllib.parse.urlsplit(handler.path)
    query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    body: Any = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
    headers = {name.lower(): value for name, value in handler.headers.items()}
    return Recorded(handler.command, url.path, query, headers, body), raw


def _reply(handler: BaseHTTPRequestHandler, answer: _Answer) -> None:
    """Send ``answer``, then run its after-step even if the asker hung up: what it ends
    (a machine that asked to end itself) must end."""
    try:
        _send(handler, answer.status, answer.payload)
    finally:
        if answer.then is not None:
            answer.then()


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list_of_text(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_text_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


# -- processes ------------------------------------------------------------------------------------


def _proc_entries() -> Iterator[tuple[int, int, list[bytes]]]:
    """(pid, parent pid, environment) of every live process this user can read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
        if fields[0] != "Z":
            yield int(entry.name), int(fields[1]), environ.split(b"\0")


def _pod_processes(listener: int, marker: bytes) -> set[int]:
    """The pod's processes: ``listener`` (its sshd; 0 for none) and its descendants, and
    every process whose environment holds ``marker``, with their descendants."""
    children: dict[int, list[int]] = {}
    found = {listener} if listener else set()
    for pid, parent, environ in _proc_entries():
        children.setdefault(parent, []).append(pid)
        if marker in environ:
            found.add(pid)
    pending = list(found)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    found.discard(os.getpid())
    return {pid for pid in found if pid == listener or procs.is_running(pid)}


def _end_machine(machine: Machine, marker: bytes, *, abrupt: bool) -> set[int]:
    """End every process of a machine by pid (its sshd, their descendants, and whatever holds
    ``marker`` in its environment): SIGKILL if ``abrupt``, else SIGTERM and SIGKILL for what is
    left after a grace period (as ``docker stop`` does). The pids that survived even SIGKILL."""
    pids = _pod_processes(machine.pid, marker)  # before the listener's children orphan
    _signal(pids - {machine.pid}, signal.SIGKILL if abrupt else signal.SIGTERM)
    if abrupt:
        _signal({machine.pid}, signal.SIGKILL)
    sshd.stop(machine)  # and reaped
    deadline = time.monotonic() + 10
    killed = abrupt
    while True:
        survivors = {pid for pid in pids if procs.is_running(pid)} | _pod_processes(0, marker)
        if not survivors:
            return set()
        if time.monotonic() > deadline:
            if killed:
                return survivors
            killed, deadline = True, time.monotonic() + 10
            _signal(survivors, signal.SIGKILL)
        time.sleep(0.05)


def _keep_home(home: Path, kept: Path) -> None:
    """Move a machine's home (outside ``root``, to keep it short) into ``root`` for a look after
    the test; where that is another file system, remove it."""
    try:
        home.rename(kept)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.rmtree(home)


def _signal(pids: set[int], signum: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # ended on its own meanwhile


def free_ssh_address(prefix: str, first: int) -> int:
    """The first ``prefix.N`` (N from ``first`` to 254) whose port 22 is free now: another
    fake in another test process (or checkout) may hold the same range at the same time.

    Raises:
        RuntimeError: None is free.
    """
    import socket

    for number in range(first, 255):
        with socket.socket() as probe:
            try:
                probe.bind((f"{prefix}.{number}", 22))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            return number
    raise RuntimeError(f"no loopback address {prefix}.{first}-254 has port 22 free")
