"""sky.time helpers: durations in seconds, as floats."""

from __future__ import annotations

import fractions

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


@pytest.mark.parametrize(
    ("n", "error", "message"),
    [
        (
            "5",
            TypeError,
            r"^sky\.time\.minutes\(n='5'\): n must be an int or float, got str\. Pass a number, "
            r"e\.g\. sky\.time\.minutes\(5\), or sky\.time\.minutes\(float\(text\)\) for a "
            r"number read as text\.$",
        ),
        (None, TypeError, r"minutes\(n=None\): n must be an int or float, got NoneType"),
        (True, TypeError, r"minutes\(n=True\): n must be an int or float, got bool"),
        (-1, ValueError, r"^sky\.time\.minutes\(n=-1\): n must be a number >= 0\. Pass a number"),
        (float("nan"), ValueError, r"minutes\(n=nan\): n must be a number >= 0"),
    ],
)
def test_minutes_refuses_what_is_not_a_duration(
    n: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        time.minutes(n)  # type: ignore[arg-type]


def test_hours_and_days_name_themselves_when_they_refuse() -> None:
    with pytest.raises(TypeError, match=r"^sky\.time\.hours\(n=\[2\]\): n must be an int or"):
        time.hours([2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^sky\.time\.days\(n=-0\.5\): n must be a number >= 0"):
        time.days(-0.5)


def test_helpers_take_any_real_number() -> None:
    assert time.minutes(fractions.Fraction(1, 2)) == 30.0
    assert time.hours(float("inf")) == float("inf")  # "no limit" stays expressible
