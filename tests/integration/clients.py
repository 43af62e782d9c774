"""A client process that dies outright, for the tests of what the lease cleans up."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator


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
