"""What every fake cloud of the tests does alike, as one base class: ``FakeCloud``.

A fake cloud is a context manager: entering it starts its HTTP server (and any thread of
its own) on 127.0.0.1; leaving it refuses what still arrives, stops the server, waits for
the requests being answered, ends every machine still running (by pid), keeps each
machine's home under ``root`` for a look after the test, and raises if anything failed
inside the fake (a failure is answered 500 and kept in ``errors``), so that it cannot pass
unseen. The fakes (``fake_runpod``, ``fake_vastai``, ``fake_aws``, ``fake_lambda``,
``fake_hyperstack``, ``fake_vultr``, ``fake_verda``, ``fake_scaleway``, ``fake_novita``,
``fake_tensordock``, ``fake_massedcompute``, ``fake_jarvislabs``...) say only what is theirs:
how they answer, which machines are running, how one ends.

``MachineCloud`` is the part that all but ``fake_aws`` share on top: a record per machine in
a dict, each machine's processes marked by a variable of its environment, requests recorded
and answered with refusals (``Refused``) in the fake's own shape, the refusals a test plans
for the next creates (``Failures``). ``StagedRecord`` is the record of a machine whose API
shows it a while after its delete (Novita, TensorDock, JarvisLabs; ``end_staged`` deletes it).

Below the classes, what their servers share (reading a request, replying, checking JSON
values, bodies and queries), how a machine starts (its loopback address, what cloud-init does
with its user data, its sshd; or its own startup command, ``run_startup_command``) and how it
ends: every process of it, by pid, never by name.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import attrs
import procs
import pytest
import sshd
from needs import unavailable
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


class Refused(Exception):
    """A request a fake answers with an error, raised where it is found: its message, the
    error code of the fake's API (where it has codes) and the HTTP status. The fake's
    ``_refusal`` gives it the shape of its API's errors."""

    def __init__(self, message: str, code: str = "", status: int = 400) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


class Failures:
    """The refusals a test plans for a fake's next creates (its ``fail_creates``, or
    ``fail_launches``...): each create, under the fake's lock, takes the next plan and
    raises it; a plan of None lets that create through."""

    def __init__(self) -> None:
        self._planned: list[Refused | None] = []

    def plan(self, n: int, refused: Refused, *, after: int = 0) -> None:
        """Under the fake's lock: after ``after`` more creates, the next ``n`` raise
        ``refused``."""
        self._planned.extend([None] * after + [refused] * n)

    def check(self) -> None:
        """Under the fake's lock, for a create: raise its planned refusal, if any."""
        planned = self._planned.pop(0) if self._planned else None
        if planned is not None:
            raise planned


class MachineRecord(Protocol):
    """What ``MachineCloud`` needs of a fake's record of one machine.

    ``running`` says whether its processes still run; a machine ends once (each fake says
    how: deleted, killed, preempted...), and its ``machine`` stays as a record of where it was.
    ``machine`` is None until it first runs, for a fake that makes machines stopped.
    """

    @property
    def id(self) -> object: ...

    @property
    def machine(self) -> Machine | None: ...

    running: bool


K = TypeVar("K")
R = TypeVar("R", bound=MachineRecord)


@attrs.define
class StagedRecord:
    """The part of a machine record whose status its fake's API shows in stages:
    ``STARTING`` until ``ready_at``, then ``RUNNING`` (unless something set another
    ``status`` first, as a kill does), and once it is deleted (``ended_at``) ``ENDING`` for
    a while, then gone; with ``machine`` and ``running``, a ``MachineRecord``. For the fakes
    whose API keeps showing a deleted machine a moment (Novita, TensorDock, JarvisLabs):
    each names the stages as its API does, and its record's own fields come first (these
    are keyword-only)."""

    STARTING: ClassVar[str]
    RUNNING: ClassVar[str]
    ENDING: ClassVar[str]

    machine: Machine | None = attrs.field(default=None, kw_only=True)
    status: str = attrs.field(
        default=attrs.Factory(lambda self: self.STARTING, takes_self=True), kw_only=True
    )
    ready_at: float = attrs.field(default=0.0, kw_only=True)  # when a starting one runs
    ended_at: float | None = attrs.field(default=None, kw_only=True)  # when it was deleted
    running: bool = attrs.field(default=False, kw_only=True)

    def shown_status(self, ending_for: float) -> str | None:
        """Under the fake's lock: its status now; None once it is gone, ``ending_for``
        seconds after its delete."""
        if self.ended_at is not None:
            return self.ENDING if time.monotonic() < self.ended_at + ending_for else None
        if self.status == self.STARTING and time.monotonic() >= self.ready_at:
            self.status = self.RUNNING
        return self.status


S = TypeVar("S", bound=StagedRecord)


def end_staged(
    records: Mapping[K, S],
    machine_id: K,
    ending_for: float,
    gone: Refused,
    first: Callable[[S], None] | None = None,
) -> Callable[[], S]:
    """A delete's ``find`` for ``MachineCloud._end_now``: the record of ``machine_id``,
    marked deleted now (a delete again while it shows ``ENDING`` finds it as it is), or
    ``gone`` (the fake's 404) for one never made or gone. ``first`` runs on its first
    delete only (to give back what it held)."""

    def find() -> S:
        record = records.get(machine_id)
        if record is None or record.shown_status(ending_for) is None:
            raise gone
        if record.ended_at is None:
            record.ended_at = time.monotonic()
            if first is not None:
                first(record)
        return record

    return find


class MachineCloud(FakeCloud, Generic[K, R], abc.ABC):
    """A fake cloud whose machines (sshd on loopback addresses) each have a record (``R``)
    by id (``K``); subclasses fill in the hooks below.

    Every request is recorded in ``requests`` and answered by ``_answer``, which raises
    ``Refused`` for an error; what arrives while the fake is left is refused (503), and a
    failure inside it answered 500 and kept in ``errors``, both in the fake's shape.
    Every process of a machine holds ``marker=<_mark(its id)>`` in its environment
    (``_marker_env`` gives it to ``start_machine``): ending it finds them all by that, by pid.
    """

    #: The variable of a machine's environment that marks its processes.
    marker: ClassVar[str]
    #: Whether the marker holds the machine's directory under ``root`` instead of its id:
    #: for a fake whose ids another fake (in another test process) may use too.
    mark_by_directory: ClassVar[bool] = False
    #: What a machine is called in the fake's errors: "instance {id} ...".
    noun: ClassVar[str] = "instance"
    #: The error codes of the answers to what arrives while the fake is left (503) and of
    #: a failure inside it (500), for an API whose errors carry one.
    closing_code: ClassVar[str] = ""
    failure_code: ClassVar[str] = ""

    def __init__(self, root: Path, *, lock: threading.Lock | threading.RLock | None = None) -> None:
        super().__init__(root, lock=lock)
        self.requests: list[Recorded] = []

    # -- hooks ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def _records(self) -> Mapping[K, R]:
        """Every machine the fake made (ended ones too), by id, in the order they were made."""

    @abc.abstractmethod
    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        """The answer to a request (the fake is not being left); raise ``Refused`` for an
        error."""

    @abc.abstractmethod
    def _refusal(self, refused: Refused) -> _Answer:
        """``refused`` as the fake's API sends an error."""

    # -- machines -------------------------------------------------------------------------------

    def _end_now(self, find: Callable[[], R], *, abrupt: bool) -> None:
        """Under the lock, ``find`` a machine's record and mark it as its end shows it (or
        raise); then end its processes, by pid, outside the lock, if they still ran."""
        with self._lock:
            record = find()
            running, record.running = record.running, False
        if running:
            self._end(record, abrupt=abrupt)

    def _kill(self, machine_id: K, mark: Callable[[R], None]) -> None:
        """The machine dies at once (every process killed); ``mark`` shows its record as the
        API shows a machine killed (it raises ``ValueError`` for one that has ended)."""

        def die() -> R:
            record = self._records()[machine_id]
            mark(record)
            return record

        self._end_now(die, abrupt=True)

    def _marker_env(self, machine_id: object) -> dict[str, str]:
        """The variable that marks a machine's processes, for its environment."""
        return {self.marker: self._mark(machine_id)}

    def _mark(self, machine_id: object) -> str:
        return str(self.root / str(machine_id)) if self.mark_by_directory else str(machine_id)

    def _end(self, record: R, *, abrupt: bool) -> None:
        """End every process of the machine by pid (``_end_machine``)."""
        machine = record.machine
        assert machine is not None, f"{self.noun} {record.id} ran without a machine"
        marker = f"{self.marker}={self._mark(record.id)}".encode()
        self._end_processes(machine, marker, f"{self.noun} {record.id}", abrupt=abrupt)

    def _end_all(self) -> None:
        with self._lock:
            ending = [record for record in self._records().values() if record.running]
            for record in ending:
                record.running = False
        for record in ending:
            self._end(record, abrupt=False)

    def _machine_homes(self) -> Iterable[tuple[str, Path]]:
        records = self._records().values()
        return [(str(r.id), r.machine.home) for r in records if r.machine is not None]

    # -- serving --------------------------------------------------------------------------------

    def _serve(self, handler: FakeHandler) -> None:
        request, raw = _read(handler)
        with self._lock:
            self.requests.append(request)
        with self._answering():
            # A machine marked ended is ended (the after-step), even if the asker hung up.
            _reply(handler, self._answer_or_refuse(request, raw))

    def _answer_or_refuse(self, request: Recorded, raw: bytes) -> _Answer:
        """``_answer``'s answer, or its refusal in the fake's shape."""
        try:
            with self._lock:
                closed = self._closed
            if closed:
                raise Refused(f"{self.title} is shutting down", self.closing_code, 503)
            return self._answer(request, raw)
        except Refused as refused:
            return self._refusal(refused)
        except Exception as error:  # answered 500, and raised when the fake is left
            message = f"{request.method} {request.path}: {type(error).__name__}: {error}"
            with self._lock:
                self.errors.append(message)
            return self._refusal(Refused(f"{self.title} failed: {message}", self.failure_code, 500))


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


#: A body's fields: each one's check, and what the check expects (said when it fails).
Checks = Mapping[str, tuple[Callable[[Any], bool], str]]


def check_body(
    body: Any,
    fields: Checks,
    required: Sequence[str],
    *,
    title: str,
    refused: Callable[[str], Refused],
) -> None:
    """Refuse a body (``refused``: the fake's 400) naming its first wrong field: a field
    ``title`` (the fake) does not know, one required and missing, or one its check fails."""
    if not isinstance(body, dict):
        raise refused("body: expected a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise refused(f"{unknown[0]}: not a field {title} knows ({', '.join(fields)})")
    for field in required:
        if field not in body:
            raise refused(f"{field}: required")
    for field, value in body.items():
        check, expected = fields[field]
        if not check(value):
            raise refused(f"{field}: expected {expected}, got {json.dumps(value)[:80]}")


def check_query(
    query: Mapping[str, Sequence[str]],
    known: set[str],
    *,
    title: str,
    refused: Callable[[str], Refused],
) -> None:
    """Refuse a query (``refused``: the fake's 400) naming its first parameter ``title``
    (the fake) does not know on this path (``known``)."""
    unknown = sorted(set(query) - known)
    if unknown:
        raise refused(f"{unknown[0]}: not a query parameter {title} knows here")


def fake_uuid() -> str:
    """A random id in the 8-4-4-4-12 hex form the APIs that use UUIDs give."""
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


# -- starting a machine ---------------------------------------------------------------------------


def need_root_machines(title: str, suite: str, why: str = "listen on port 22") -> None:
    """Skip where a fake's machines cannot run (under CI, fail): without sshd, or not as
    root (``why``: they listen on port 22, or log in as root)."""
    sshd.need_sshd()
    if os.getuid() != 0:
        unavailable(f"{title}'s machines {why}: run the tests as root", suite=suite)


class AddressBlocks:
    """Third octets for one kind of fake, so that two pytest-xdist workers' fakes never bind
    the same address's port 22: 16 per worker (its number from ``PYTEST_XDIST_WORKER``),
    one after the other within it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made = 0

    def take(self) -> int:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        with self._lock:
            made, self._made = self._made, self._made + 1
        return (int(worker) if worker.isdigit() else 0) % 16 * 16 + made % 16


class SshAddresses:
    """The loopback addresses a fake gives its machines: ``prefix.N``, N from ``first`` up,
    each after the last one given, skipping any whose port 22 is taken now
    (``free_ssh_address``)."""

    def __init__(self, prefix: str, first: int) -> None:
        self.prefix = prefix
        self._next = first

    def take(self) -> str:
        """Under the fake's lock: the next address.

        Raises:
            RuntimeError: None is free.
        """
        number = free_ssh_address(self.prefix, self._next)
        self._next = number + 1
        return f"{self.prefix}.{number}"


def cloud_config(text: str) -> dict[str, Any]:
    """User data as cloud-init reads it here: ``#cloud-config`` then one JSON object (which
    is YAML); anything else configures nothing."""
    first, _, rest = text.partition("\n")
    try:
        config = json.loads(rest) if first.strip() == "#cloud-config" else None
    except ValueError:
        config = None
    return config if isinstance(config, dict) else {}


def cloud_init(directory: Path, user_data: str, keys: Sequence[str]) -> Path:
    """Set up a machine's ``directory`` as cloud-init sets up an image from ``user_data``
    (``cloud_config``): its ``ssh_keys.ed25519_private`` becomes sshd's host key
    (``start_sshd`` keeps ``host_ed25519``), and ``keys`` (the API's) and its
    ``ssh_authorized_keys`` are authorized. The authorized keys' file."""
    config = cloud_config(user_data)
    private = (config.get("ssh_keys") or {}).get("ed25519_private")
    if isinstance(private, str) and private.strip():
        _write_secret(directory / "host_ed25519", private)  # start_sshd keeps it
    extra = [k for k in config.get("ssh_authorized_keys") or [] if isinstance(k, str)]
    authorized = directory / "authorized_keys"
    authorized.write_text("".join(f"{line}\n" for line in [*keys, *extra]))
    return authorized


def start_machine(
    root: Path,
    name: str,
    address: str,
    authorized: Path,
    *,
    env: Mapping[str, str],
    home: str,
    port: int = 0,
    path_prefix: Sequence[str] = (),
) -> Machine:
    """A fake's machine: a private sshd (``sshd.start_sshd``) whose sessions have ``env``,
    with a short home of its own, ``$TMPDIR/<home>*`` (as ``/root`` or ``/home/ubuntu``: a
    worker's socket lives under it, and a unix socket's path holds 107 bytes, which a home
    under a test's directory would exceed). Its image has uv on ``PATH``
    (``sshd.image_tools``), after ``path_prefix``.

    Raises:
        RuntimeError: sshd did not start (``pytest.fail``'s BaseException, made an
            Exception: the fake answers it 500 and raises it when it is left).
    """
    made = Path(tempfile.mkdtemp(prefix=home))
    try:
        return sshd.start_sshd(
            root,
            name,
            address,
            authorized,
            port=port,
            extra_env=env,
            path_prefix=[*path_prefix, sshd.image_tools(root)],
            home=made,
        )
    except pytest.fail.Exception as error:
        raise RuntimeError(str(error)) from None


def run_startup_command(
    root: Path,
    directory: Path,
    address: str,
    command: str,
    *,
    marker_env: Mapping[str, str],
    home: str,
    log: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    stand_ins: Mapping[str, str] | None = None,
) -> tuple[Machine, subprocess.Popen[bytes]]:
    """A machine that its own startup command sets up, as the image's first boot runs it
    (Novita's container command, Massed Compute's launch command): ``command`` runs for
    real, with ``sh -c``, its output in ``directory / log``, with ``env`` and a short
    ``HOME`` of its own (``$TMPDIR/<home>*``, as ``/root`` is), and a PATH with uv
    (``sshd.image_tools``) and an ``sshd`` that stands in for the image's: the real sshd
    with ``directory / "sshd_config"``, which listens on ``address`` (and ``port``, where
    given) and gives sessions the environment every fake machine has. The fake installs no
    host key and no authorized keys: a command that does not set them up right leaves a
    machine nobody can log in to. ``stand_ins``: more scripts of the image, by name. The
    machine (its pid the command's, ended through ``sshd.stop``) and the command's process,
    for the caller to wait on sshd."""
    directory.mkdir(parents=True)
    made = Path(tempfile.mkdtemp(prefix=home))
    python_dir = os.path.dirname(sys._base_executable)  # this Python is "installed"
    tools = sshd.image_tools(root)
    settings = sshd.set_env(
        made,
        python_dir,
        root / "uv-cache",
        sshd.offline_apt(root),
        extra_env=marker_env,
        path_prefix=[tools],
    )
    config = directory / "sshd_config"
    # No HostKey or AuthorizedKeysFile (nor Port, without ``port``): the command's to give.
    config.write_text(
        ("" if port is None else f"Port {port}\n")
        + f"ListenAddress {address}\nPidFile none\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nAllowTcpForwarding yes\nAllowStreamLocalForwarding yes\n"
        f"PermitUserEnvironment no\nSetEnv {settings}\n"
    )
    image_bin = directory / "bin"
    image_bin.mkdir()
    scripts = {"sshd": f'#!/bin/sh\nexec {sshd.SSHD} -f {config} "$@"\n', **(stand_ins or {})}
    for name, text in scripts.items():
        (image_bin / name).write_text(text)
        (image_bin / name).chmod(0o755)
    environment = {
        **(env or {}),
        "HOME": str(made),
        "PATH": f"{image_bin}:{tools}:/usr/local/bin:/usr/bin:/bin",
        **marker_env,
    }
    with open(directory / log, "wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=environment,
            cwd=made,
        )
    sshd.RUNNING[proc.pid] = proc  # ended through sshd.stop, as every fake machine
    machine = Machine(
        addr=address,
        port=22 if port is None else port,
        home=made,
        host_key=directory / "none",
        pid=proc.pid,
    )
    return machine, proc


def _write_secret(path: Path, text: str) -> None:
    """Write a private key as sshd wants it: readable by its owner only, from the start."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text if text.endswith("\n") else f"{text}\n")
    path.chmod(0o600)  # an older file keeps its mode through O_CREAT


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
