"""Whether a process runs, by pid: one answer for the client's pool server and a pool's
reaper.

Layer 1: stdlib only.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["alive"]


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
