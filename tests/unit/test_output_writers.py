"""``sky.redirect_output`` and ``sky.CallbackWriter``: what they refuse, before any print."""

from __future__ import annotations

import io

import pytest

import skyward as sky


@pytest.mark.parametrize(
    ("callback", "message"),
    [
        (
            5,
            r"^sky\.redirect_output\(callback=5\): callback must be a function called with each "
            r"line \(a str, without its newline\), got int\. Pass e\.g\. "
            r"sky\.redirect_output\(lines\.append\)\.$",
        ),
        (
            io.StringIO(),
            r"got StringIO\. For a file or stream, pass a function that writes each line, "
            r'e\.g\. sky\.redirect_output\(lambda line: f\.write\(line \+ "\\n"\)\)\.$',
        ),
    ],
)
def test_redirect_output_refuses_a_callback_that_cannot_be_called(
    callback: object, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        sky.redirect_output(callback)  # type: ignore[arg-type]  # refused at the call


def test_a_callback_writer_refuses_one_too() -> None:
    with pytest.raises(TypeError, match=r"^sky\.CallbackWriter\(callback=None\): callback must"):
        sky.CallbackWriter(None)  # type: ignore[arg-type]
