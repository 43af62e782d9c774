"""A pool's reaper: ends the machines of a pool whose client died, on the clouds whose
machines cannot end themselves, and deletes the keys made for its volumes
(``sky.storage.Hyperstack``) on any provider.

Lambda, Hyperstack, Vultr, Verda, Scaleway, Novita, TensorDock, Massed Compute and
JarvisLabs give a machine no credential of its own, and stopping its OS does not stop its
billing: a machine whose client dies (killed, crashed, out of memory) bills until someone
ends it. So a pool on one of these clouds starts a small process beside the client,
``python -m skyward_trio._reaper JOB``, in a session of its own (a Ctrl-C or a kill of the
client's process group does not reach it). The client holds the write end of its stdin:

- the first line is ``PID TTL LOG``: the client's pid, the pool's ``Spec.ttl`` and the log
  file the reaper writes; then the length-prefixed cloudpickle of ``(provider config,
  job id, choice, keys)``, unpickled only if the reaper has to act (its start stays a bare
  interpreter's); the config is None when only keys are to be deleted, ``keys`` the
  ``(KeyIssuer, IssuedKey)`` pairs made for the pool's volumes;
- when the pool has closed and its cloud confirmed every machine ended, the client writes
  ``closed`` and the reaper exits; when its close could not confirm that, ``left``: the
  reaper tries again, at once, when the client's process ends;
- when stdin reaches its end without that (the client's process is gone: the kernel
  closed its end), the reaper waits for the client's pid to be gone too (a fork may have
  held the pipe), then ``ttl`` seconds, as the workers' lease does, then closes the cluster
  as the pool's close would: every machine the cloud lists under the job's name prefix is
  ended and confirmed gone, what the pool registered (its SSH key) removed, and the keys
  made for its volumes deleted (by then the workers have ended with their lease). What it
  could not end is written to the log, naming it.

It does not help when the client's machine itself is gone (powered off, or cut from the
network): nothing runs there any more.

Layer 5: it opens the provider's cluster (``_providers``) in the reaper process; the
client side only starts the process and writes to it.
"""

from __future__ import annotations

import functools
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from ._pids import alive

__all__ = ["Reaper", "main", "start"]

CLOSED = b"closed\n"
LEFT = b"left\n"
#: Where the reapers write what they did, one file per pool.
LOG_DIR = "~/.skyward/logs"


#: The pipes to the reapers not yet told how their pool closed: held, so that one is never
#: closed (which the reaper reads as its client gone) while its pool is open.
_UNTOLD: set[IO[bytes]] = set()


class Reaper:
    """The client's side of a pool's reaper process: the pipe it reads."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        _UNTOLD.add(pipe)

    def closed(self) -> None:
        """The pool closed with every machine confirmed ended: the reaper exits."""
        self._tell(CLOSED)

    def left(self) -> None:
        """The pool closed, but its cloud did not confirm every machine ended: the reaper
        tries again as soon as this process ends."""
        self._tell(LEFT)

    def _tell(self, message: bytes) -> None:
        """Say how the pool closed, and close the pipe: the reaper needs nothing more."""
        pipe = self._pipe
        _UNTOLD.discard(pipe)
        if pipe.closed:
            return
        try:
            pipe.write(message)
            pipe.close()
        except OSError:
            pass  # it is gone already


def start(config: Any, job_id: str, choice: Any, ttl: float, *, keys: Sequence[Any] = ()) -> Reaper:
    """Start the reaper of the pool ``job_id`` on the provider ``config`` (None: it ends
    no machines), deleting ``keys`` too (``(KeyIssuer, IssuedKey)`` pairs): a process of
    its own session that leaves its parent at once (so no child is left to this one),
    reading the pipe this keeps.

    Raises:
        Exception: What the config or choice raised when pickled (cloudpickle), or the
            process not starting: the caller says the pool has no reaper.
    """
    import cloudpickle

    blob = cloudpickle.dumps((config, job_id, choice, list(keys)))
    log = Path(os.path.expanduser(LOG_DIR)) / f"reaper-{job_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "skyward_trio._reaper", job_id],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    assert process.stdin is not None
    pipe = process.stdin
    try:
        pipe.write(f"{os.getpid()} {ttl!r}\n".encode())
        pipe.write(struct.pack(">Q", len(blob)) + blob)
        pipe.flush()
    finally:
        process.wait()  # the first process forks the reaper and exits (see main)
    return Reaper(pipe)


def _say(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {text}", file=sys.stderr, flush=True)


def _read_exactly(stream: IO[bytes], count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = stream.read(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def main(argv: list[str] | None = None) -> int:
    """The reaper process (see the module)."""
    args = sys.argv[1:] if argv is None else argv
    job = args[0] if args else "?"
    if argv is None and os.fork() > 0:  # the client waits for this one: the reaper goes on
        os._exit(0)
    stdin = sys.stdin.buffer
    first = stdin.readline().split()
    if len(first) != 2:
        _say(f"pool {job}: the client sent no pid and ttl; nothing to watch")
        return 2
    parent, ttl = int(first[0]), float(first[1])
    (size,) = struct.unpack(">Q", _read_exactly(stdin, 8) or bytes(8))
    blob = _read_exactly(stdin, size)
    # What the client says when its pool has closed, or b"" once its end of the pipe is
    # closed (a fork of it may hold that end longer: a line is not held up by that).
    said = stdin.readline()
    if said.startswith(CLOSED):
        return 0
    while alive(parent):  # a fork of the client may have held the pipe (a zombie is gone)
        time.sleep(1)
    if said.startswith(LEFT):
        _say(
            f"pool {job}: its close could not confirm every machine ended (or key "
            f"deleted), and its client (pid {parent}) has ended; ending them now"
        )
    else:
        _say(
            f"pool {job}: its client (pid {parent}) ended without closing it; ending what "
            f"it left in {ttl:g} s (the pool's ttl)"
        )
        time.sleep(ttl)
    return _reap(job, blob)


def _reap(job: str, blob: bytes) -> int:
    import cloudpickle
    import trio

    from . import _transport
    from ._providers import open_cluster

    config, job_id, choice, keys = cloudpickle.loads(blob)

    async def reap() -> None:
        async with _transport.asyncio_loop():
            cluster = await open_cluster(
                config, job_id=job_id, client_key=_transport.generate_key(), choice=choice
            )
            cluster.reaping()  # type: ignore[attr-defined]  # a RentedCluster: needs_reaper
            await cluster.aclose()

    # Each step: what it does, what the log says once it did, and when it could not.
    steps: list[tuple[Callable[[], object], str, str]] = [
        (
            functools.partial(issuer.revoke, key),
            f"access key {key.key_id} ({key.access_key}) deleted",
            f"could not delete access key {key.key_id}",
        )
        for issuer, key in keys
    ]
    if config is not None:
        ended = "every machine the cloud listed for it is ended"
        steps.insert(0, (lambda: trio.run(reap), ended, "could not end everything"))
    failed = 0
    for step, done, failure in steps:
        try:
            step()
        except Exception as exc:
            _say(f"pool {job}: {failure}: {_words(exc)}")
            failed = 1
        else:
            _say(f"pool {job}: {done}")
    return failed


def _words(exc: BaseException) -> str:
    """What went wrong, the errors inside a group each said."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_words(inner) for inner in exc.exceptions)
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
