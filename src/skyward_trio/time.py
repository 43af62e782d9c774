"""Readable durations: ``sky.time.minutes(10)`` is ``600.0``.

Every timeout in Skyward is a number of seconds; these helpers only make the call site read
well. They return floats so they can be passed wherever seconds are expected.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["days", "hours", "minutes"]

_MINUTE = 60.0
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


def _seconds(helper: str, n: object, unit: float) -> float:
    # A duration is a number >= 0: "5" (read from an environment variable), True, NaN or
    # -1 would otherwise pass through here and fail, or not, far from the call that made it.
    fix = f"Pass a number, e.g. sky.time.{helper}(5)"
    if isinstance(n, bool) or not isinstance(n, numbers.Real):
        if isinstance(n, str):
            fix += f", or sky.time.{helper}(float(text)) for a number read as text"
        raise TypeError(
            f"sky.time.{helper}(n={n!r}): n must be an int or float, got {type(n).__name__}. {fix}."
        )
    if math.isnan(n) or n < 0:
        raise ValueError(f"sky.time.{helper}(n={n!r}): n must be a number >= 0. {fix}.")
    return float(n) * unit


def minutes(n: float) -> float:
    """Returns ``n`` minutes in seconds, e.g. ``minutes(1.5) == 90.0``.

    Raises:
        TypeError: ``n`` is not an int or float (a bool is not a number of minutes).
        ValueError: ``n`` is negative or NaN.
    """
    return _seconds("minutes", n, _MINUTE)


def hours(n: float) -> float:
    """Returns ``n`` hours in seconds, e.g. ``hours(2) == 7200.0``.

    Raises:
        TypeError: ``n`` is not an int or float (a bool is not a number of hours).
        ValueError: ``n`` is negative or NaN.
    """
    return _seconds("hours", n, _HOUR)


def days(n: float) -> float:
    """Returns ``n`` days in seconds, e.g. ``days(1) == 86400.0``.

    Raises:
        TypeError: ``n`` is not an int or float (a bool is not a number of days).
        ValueError: ``n`` is negative or NaN.
    """
    return _seconds("days", n, _DAY)
