"""Health checks: when a node has failed its probe too many times in a row.

The probe itself runs on the node (``worker.Worker._run_probe``); this module holds the
client's side of the decision, apart from any connection, so its timing is tested with
trio's ``MockClock`` (``tests/unit/test_health_watch.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from . import _serial
from ._errors import SerializationError
from ._model import HealthChecker

__all__ = ["probe_payload", "watch"]


def probe_payload(checker: HealthChecker) -> _serial.Payload:
    """The probe, pickled once for every node; a probe that does not pickle fails here."""
    try:
        return _serial.dumps(checker.probe)
    except Exception as exc:
        name = getattr(checker.probe, "__qualname__", type(checker.probe).__qualname__)
        raise SerializationError(
            f"HealthChecker(probe={name}): the probe cannot be pickled "
            f"({type(exc).__name__}: {exc}); it runs on every node, so it must pickle: "
            "capture only plain data, and create clients, locks or files inside it"
        ) from exc


async def watch(
    checker: HealthChecker,
    probe: Callable[[], Awaitable[str | None]],
    closing: Callable[[], bool],
) -> str | None:
    """Probe every ``checker.interval`` seconds until ``checker.failures`` probes in a row
    fail; return why, to be shown as the reason the node is replaced.

    ``probe`` returns None when the node passed, else why it failed; one that takes longer
    than ``checker.timeout`` fails. Returns None, probing no more, once ``closing()`` is
    true (the pool is being torn down). Cancellation stops the wait and the probe.
    """
    failed = 0
    while True:
        await trio.sleep(checker.interval)
        if closing():
            return None
        with trio.move_on_after(checker.timeout) as scope:
            why = await probe()
        if scope.cancelled_caught:
            why = f"the probe did not answer within {checker.timeout:g} s"
        if closing():
            return None
        if why is None:
            failed = 0
            continue
        failed += 1
        if failed >= checker.failures:
            times = "once" if failed == 1 else f"{failed} times in a row"
            return f"health check failed {times}: {why}"
