"""Readable durations: ``sky.time.minutes(10)`` is ``600.0``.

Every timeout in Skyward is a number of seconds; these helpers only make the call site read
well. They return floats so they can be passed wherever seconds are expected.
"""

from __future__ import annotations

__all__ = ["days", "hours", "minutes"]

_MINUTE = 60.0
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


def minutes(n: float) -> float:
    """Returns ``n`` minutes in seconds, e.g. ``minutes(1.5) == 90.0``."""
    return n * _MINUTE


def hours(n: float) -> float:
    """Returns ``n`` hours in seconds, e.g. ``hours(2) == 7200.0``."""
    return n * _HOUR


def days(n: float) -> float:
    """Returns ``n`` days in seconds, e.g. ``days(1) == 86400.0``."""
    return n * _DAY
