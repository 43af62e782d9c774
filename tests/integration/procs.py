"""This machine's processes as ``/proc`` shows them, for the tests and the fakes."""

from __future__ import annotations

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
