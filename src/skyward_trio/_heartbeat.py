"""Heartbeats: when the other end of a worker session has gone quiet for too long.

The client and the worker beat on the session's control channel every ``BEAT_INTERVAL``
seconds, and each treats anything it receives from the other as a sign of life. A
partition that sends nothing (no RST, no FIN: a frozen SSH server, a cable pulled
somewhere in between) is then noticed after ``SILENCE_LIMIT`` seconds instead of at the
SSH keepalive. The client asks the node's SSH server before it gives up (it waits at most
``CHECK_TIMEOUT``), so a worker silent because a task holds its GIL in C code is not taken
for a lost one.

The decision is kept apart from any connection, so its timing is tested with trio's
``MockClock`` (``tests/unit/test_silence.py``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

__all__ = ["BEAT_INTERVAL", "CHECK_TIMEOUT", "SILENCE_LIMIT", "wait_for_silence"]

#: Each end sends a beat this often (seconds).
BEAT_INTERVAL = 1.0
#: Seconds without a word from the other end after which it counts as cut off: the client
#: treats the link as dropped (reconnect, else the node is lost), the worker detaches the
#: session (the reconnect window and the lease start counting). Five beats, so a beat or
#: two delayed by a busy machine is no alarm.
SILENCE_LIMIT = 5.0
#: How long the client waits for the node's SSH server to answer once the worker has been
#: silent for ``SILENCE_LIMIT``: a server that answers means the node is there, its worker
#: busy, not cut off.
CHECK_TIMEOUT = 2.0


async def wait_for_silence(
    heard: Callable[[], int],
    *,
    interval: float = BEAT_INTERVAL,
    limit: float = SILENCE_LIMIT,
    still_there: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Return once nothing has been heard from the other end for ``limit`` seconds.

    ``heard()`` is a count that the receiving side bumps for every chunk it receives: a
    counter rather than a clock read, so the data path pays one increment per chunk. It
    is looked at every ``interval`` seconds, and silence is counted in looks this side
    actually took, not in clock time: when this side's own loop stalls (a task holding
    the GIL, a machine swapping), the stall counts as one interval, and the other end is
    not blamed for it.

    ``still_there``, when given, is asked once the limit is reached; True (the other
    side's machine answers some other way) starts the count again. Something heard while
    it was asked counts too. Cancellation stops the wait.
    """
    needed = max(1, math.ceil(limit / interval))
    seen = heard()
    quiet = 0
    while True:
        await trio.sleep(interval)
        count = heard()
        if count != seen:
            seen, quiet = count, 0
            continue
        quiet += 1
        if quiet < needed:
            continue
        if still_there is not None and await still_there():
            quiet = 0
            continue
        if heard() == seen:
            return
        seen, quiet = heard(), 0
