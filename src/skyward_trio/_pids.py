"""Processes by pid: whether one runs (one answer for the client's pool server and a
pool's reaper), whether a process group has live members, and which processes a worker
started (for ending a node on a machine of the user's: ``_localnode``, ``LocalCluster``).

Layer 1: stdlib only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["alive", "each_process", "group_alive", "started_by"]


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


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Not ``killpg(pgid, 0)``: a leader
    that exited counts there until it is reaped, and a worker's, left to init with
    threads still being torn down, can take seconds."""
    for _pid, stat in each_process("stat"):
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        state, _ppid, pgrp = stat[stat.rindex(b")") + 2 :].split(b" ", 3)[:3]
        if int(pgrp) == pgid and state != b"Z":
            return True
    return False


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
