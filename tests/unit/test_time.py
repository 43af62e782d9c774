"""sky.time helpers: durations in seconds, as floats."""

from __future__ import annotations

import pytest

from skyward_trio import time


@pytest.mark.parametrize(
    ("helper", "n", "seconds"),
    [
        (time.minutes, 1, 60.0),
        (time.minutes, 10, 600.0),
        (time.minutes, 1.5, 90.0),
        (time.minutes, 0, 0.0),
        (time.hours, 1, 3600.0),
        (time.hours, 2, 7200.0),
        (time.hours, 0.5, 1800.0),
        (time.days, 1, 86400.0),
        (time.days, 7, 604800.0),
    ],
)
def test_helpers_return_seconds(helper: object, n: float, seconds: float) -> None:
    assert callable(helper)
    result = helper(n)
    assert result == seconds
    assert type(result) is float


def test_helpers_compose() -> None:
    assert time.hours(1) == time.minutes(60)
    assert time.days(1) == time.hours(24)


def test_all_is_sorted() -> None:
    assert time.__all__ == sorted(time.__all__) == ["days", "hours", "minutes"]
