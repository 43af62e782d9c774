"""Processes by pid: whether one runs (one answer for the client's pool server and a
pool's reaper), the live members of process groups, which processes a worker started, and
ending processes (for ending a node on a machine of the user's: ``_localnode``,
``LocalCluster``, the worker).

Layer 1: stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

__all__ = ["alive", "each_process", "end", "in_groups", "started_by"]


def alive(pid: object) -> bool:
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


def started_by(directories: set[str]) -> list[int]:
    """The live processes that carry one of these worker directories in their environment
    (``SKYWARD_WORKER_DIR``, ``_collections.WORKER_DIR_ENV``: the worker sets it, so
    whatever it starts inherits it). A zombie's environment reads empty."""
    wanted = {f"SKYWARD_WORKER_DIR={directory}".encode() for directory in directories}
    if not wanted:
        return []
    return [pid for pid, env in each_process("environ") if wanted.intersection(env.split(b"\0"))]


def in_groups(pgids: Collection[int]) -> list[int]:
    """The live processes of these process groups. Not ``killpg(pgid, 0)``: a leader that
    exited counts there until it is reaped, and a worker's, left to init with threads
    still being torn down, can take seconds."""
    found = []
    for pid, stat in each_process("stat"):
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        state, _ppid, pgrp = stat[stat.rindex(b")") + 2 :].split(b" ", 3)[:3]
        if int(pgrp) in pgids and state != b"Z":
            found.append(pid)
    return found


def end(find: Callable[[], list[int]], *, grace: float = 2.0) -> list[int]:
    """SIGTERM to the processes ``find`` gives, up to ``grace`` s for them to go, then
    SIGKILL to those still there and up to 1 s more. Returns those left even so."""
    left: list[int] = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        left = find()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = find()
    return left


def each_process(name: str) -> Iterator[tuple[int, bytes]]:
    """``/proc/PID/<name>`` of each process that can be read."""
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/{name}", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            yield int(entry.name), data
