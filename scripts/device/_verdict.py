"""The end of every device check here: each mismatch on a line of its own, then ``ok`` or
how many, and the exit status (1 on any mismatch). Imported by the scripts beside it
(``python scripts/device/NAME.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations


def verdict(problems: list[str]) -> int:
    for problem in problems:
        print("MISMATCH", problem)
    print("ok" if not problems else f"{len(problems)} mismatches")
    return 1 if problems else 0
