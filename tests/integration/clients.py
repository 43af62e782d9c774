"""What the providers' tests do alike: a client process that dies outright (for what the
lease cleans up), and a call sent across a preemption."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import skyward as sky


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
