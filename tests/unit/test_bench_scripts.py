"""The benchmark scripts start: each is run as ``python bench/NAME.py --help``.

Python puts a script's own folder first on ``sys.path``, so a file in ``bench/`` named
like a standard-library module (``collections.py`` once did) shadows it and breaks every
script there before argparse is even imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_script_shadows_the_standard_library(script: Path) -> None:
    assert script.stem not in sys.stdlib_module_names, (
        f"bench/{script.name} shadows the standard library's {script.stem!r}: rename it"
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_starts(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
