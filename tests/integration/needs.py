"""What a test needs from this machine, and what it does when that is missing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(message: str, *, suite: str) -> NoReturn:
    """Skip a test that needs what this machine lacks; under ``CI=true`` fail instead:
    CI installs everything the tests need, so something missing there is a fault."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must run the {suite} tests")
    pytest.skip(message)
