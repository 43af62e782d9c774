"""Polling with a hang guard, for tests that wait on something a pool does in the background."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], what: str, *, timeout: float, every: float) -> None:
    """Poll ``condition`` every ``every`` seconds; fail naming ``what`` after ``timeout``.

    ``timeout`` is a hang guard, never a measurement: the machine is noisy.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
