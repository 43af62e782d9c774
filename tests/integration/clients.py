"""What the providers' tests do alike: a client process that dies outright (for what the
lease, or the pool's reaper, cleans up), a pool cancelled while its machines start, a call
sent across a preemption, a pool's events read as they come (``Seen``), an asyncio
coroutine (an asyncssh session) run from a test, and a command run on a fake cloud's
machine with its host key pinned; and the ``sky`` command run as users run it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest
import trio
import trio_asyncio
from waiting import wait_until

import skyward as sky
import skyward_trio
from skyward_trio import _transport


def run_sky(
    project: Path, env: Mapping[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``sky ARGS`` (``python -m skyward``, the ``sky`` script's code) in ``project``."""
    return subprocess.run(
        [sys.executable, "-m", "skyward", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def killed_client(script: str, *args: str) -> Iterator[str]:
    """Run ``script`` (a client that opens a pool, prints its job id and sleeps) in a
    process of its own; yield the job id, then kill the process with SIGKILL: no
    teardown runs, only the lease is left to clean up."""
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE, text=True
    ) as client:
        try:
            assert client.stdout is not None
            job = client.stdout.readline().strip()
            assert job, "the client did not start its pool"
            yield job
        finally:
            client.send_signal(signal.SIGKILL)


def reaper_running(job: str) -> bool:
    """Whether the reaper of the pool ``job`` (``python -m skyward_trio._reaper JOB``) runs."""
    listed = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return f"skyward_trio._reaper {job}" in listed


def ended_by_its_reaper(job: str, gone: Callable[[], bool]) -> str:
    """Wait for the reaper of the dead client's pool ``job`` to end its machines
    (``gone()``) and exit; its log, which says so."""
    wait_until(gone, "the pool's reaper ended its machines", timeout=120, every=0.5)
    wait_until(lambda: not reaper_running(job), "the reaper to exit", timeout=60, every=0.2)
    log = (Path.home() / ".skyward" / "logs" / f"reaper-{job}.log").read_text()
    assert "ended without closing it" in log
    assert "every machine the cloud listed for it is ended" in log
    return log


def reaped(
    script: str,
    args: Sequence[str],
    live: Callable[[], set[Any]],
    up: Callable[[Any], None] = lambda machine: None,
) -> tuple[str, Any]:
    """Run ``script`` (``lease_client``'s) with ``args`` in a client process, kill it, and
    wait for its pool's reaper to end the one machine it started (``live()``: the cloud's
    machine ids; ``up(machine)`` runs while the client is alive). The job and machine."""
    before = live()
    with killed_client(script, *args) as job:
        (machine,) = live() - before
        assert reaper_running(job)
        up(machine)
    ended_by_its_reaper(job, lambda: machine not in live())
    return job, machine


def across_a_preemption(
    pool: sky.Pool, where: Callable[[], Any], preempt: Callable[[Any], None]
) -> tuple[Any, Any, list[str]]:
    """Run ``where()`` on the pool, ``preempt`` the node it ran on (given that result), and
    run it again: it is sent to the replacement once that is up. Both results, and the
    kinds of the pool's events up to the replacement."""
    events = pool.events()
    first = where() >> pool
    preempt(first)
    second = where() >> pool
    kinds = []
    for event in events:
        kinds.append(type(event).__name__)
        if isinstance(event, sky.InstanceReplaced):
            break
    events.close()
    return first, second, kinds


def lease_client(provider: str, accelerator: str) -> str:
    """A client script that opens a one-node pool on ``provider`` (Python source, the
    script's ``sys.argv`` at hand) with ``ttl=0`` and a short reconnect window, prints its
    job id and sleeps: for ``killed_client``."""
    return f"""
import sys, time
import skyward as sky
provider = {provider}
options = sky.Options(console="silent", ssh_timeout=2)  # a short reconnect window
with sky.Compute(provider=provider, accelerator={accelerator}, ttl=0,
                 options=options) as pool:
    print(pool.job_id, flush=True)
    time.sleep(600)
"""


def cancel_once(
    started: Callable[[], bool], what: str, provider: sky.ProviderConfig, **spec: Any
) -> None:
    """Open a pool of ``spec`` on ``provider`` (in trio) and cancel it once ``started()``
    holds (its machines asked for, not up): what is left is the test's to check."""

    def wait() -> None:
        wait_until(started, what, timeout=60, every=0.05)

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def cancel_once_started() -> None:
                await trio.to_thread.run_sync(wait)
                await trio.sleep(0.5)  # the answers to what was asked come back
                nursery.cancel_scope.cancel()

            nursery.start_soon(cancel_once_started)
            options = sky.Options(console="silent")
            async with skyward_trio.Compute(provider=provider, options=options, **spec):
                pytest.fail("the pool came up with machines that never did")

    trio.run(main)


T = TypeVar("T")


def asyncio_run(make: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run(make())`` for a test process that also runs trio-asyncio: on Python
    3.12 its event loop policy leaves a plain ``asyncio.run`` with no loop to create tasks
    on (asyncssh's key exchange fails), so the coroutine runs in a trio-asyncio loop."""

    async def main() -> T:
        async with trio_asyncio.open_loop():
            result: T = await trio_asyncio.aio_as_trio(make)()
            return result

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:  # trio-asyncio's nurseries wrap the coroutine's error
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if isinstance(error, BaseExceptionGroup):
            raise
        raise error from None


def printed_over_ssh(
    address: str, client: asyncssh.SSHKey, host_key: asyncssh.SSHKey, command: str
) -> str:
    """What ``command`` prints on the machine at ``address`` (port 22), logged in as root
    with ``client``, trusting only ``host_key``: a login fails unless the machine's sshd
    presents it."""

    async def login() -> str:
        async with asyncssh.connect(
            address,
            22,
            username="root",
            client_keys=[client],
            known_hosts=([asyncssh.import_public_key(_transport.public_openssh(host_key))], [], []),
        ) as conn:
            done = await conn.run(command, check=True)
            return str(done.stdout)

    return asyncio_run(login)


class Seen:
    """A pool's events, read as they come by a thread of their own."""

    def __init__(self, pool: sky.Pool) -> None:
        self.events: list[sky.Event] = []
        self._stream = pool.events()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for event in self._stream:
            self.events.append(event)

    def of(self, kind: type[Any], node: int) -> list[Any]:
        return [e for e in list(self.events) if isinstance(e, kind) and e.node == node]

    def first(self, kind: type[Any], node: int) -> Any:
        wait_until(
            lambda: self.of(kind, node), f"{kind.__name__} of node {node}", timeout=60, every=0.05
        )
        return self.of(kind, node)[0]

    def close(self) -> None:
        self._stream.close()
