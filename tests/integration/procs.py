"""This machine's processes as ``/proc`` shows them, for the tests and the fakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def state(pid: int) -> str | None:
    """The state letter of ``pid`` (``"Z"`` for a zombie), None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces; the state follows the last ")".
    return stat.rsplit(")", 1)[1].split()[0]


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process.

    A zombie counts as gone: it has exited and holds nothing. Worker daemons are detached
    (``setsid``), so once killed they wait for PID 1 to reap them, and some container inits
    (or a parent that never reaps) never do.
    """
    return state(pid) not in (None, "Z")


def in_group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies count as gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def leave_stubborn_processes() -> list[int]:
    """Start two processes that ignore SIGTERM, with ``/`` as their working directory (a
    sweep of a node's directory does not find them): one in the caller's process group,
    one in a session of its own (as a daemon would be). Run as a task, to see that a
    node's end ends what a task left running."""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    return [
        subprocess.Popen(
            [sys.executable, "-c", stubborn],
            cwd="/",
            start_new_session=alone,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).pid
        for alone in (False, True)
    ]
