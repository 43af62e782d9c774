"""The examples that need nothing but Skyward run as users run them (``python
examples/NAME.py``), each on two ``sky.Local()`` nodes, and print what they say they do.
The torch ones are in test_plugins.py (they need torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str) -> list[str]:
    """The example's standard output, line by line, once it exited 0."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_hello() -> None:
    lines = run("hello.py")
    assert lines[0].startswith("hello from node ")
    assert sorted(line.split(" from node ")[1][:3] for line in lines[1:3]) == ["0/2", "1/2"]
    assert any(line.startswith("sum of squares 0..999 = 332833500 ") for line in lines)
    assert lines[-1] == "map: [0, 10, 20, 30, 40, 50, 60, 70]"


def test_streaming() -> None:
    lines = run("streaming.py")
    assert lines[:3] == [
        "batch 0: [3.5, 5.25, 7.0, 2.75]",
        "batch 1: [4.5, 6.25, 2.0, 3.75]",
        "batch 2: [5.5, 1.25, 3.0, 4.75]",
    ]
    shards = [line for line in lines if line.startswith("a shard scored ")]
    assert len(shards) == 8
    assert {line.rsplit(" ", 1)[1] for line in shards} <= {"0", "1"}
    assert "all 8 shards: -969,016.0" in lines  # 500 * (0 + ... + 7) - 8 * 122,877
    assert "words: 90000" in lines
    assert lines[-1] == "map: [6.0, 2.0]"


def test_work_queue() -> None:
    lines = run("work_queue.py")
    per_node = [int(n) for n in lines[0].split("[")[1].rstrip("]").split(", ")]
    assert len(per_node) == 2
    assert sum(per_node) == 40  # every job taken once, by one node or the other
    assert lines[1] == "counter: 40"
    assert lines[2].startswith("job 7 -> (")
    assert lines[2].endswith(", 49) (node, result)")
    assert lines[3] == f"most by one node: {max(per_node)}"


def test_trio_app() -> None:
    assert run("trio_app.py") == [
        "one call: 9",
        "on every node: [4, 4]",
        "in a nursery: [0, 1, 4, 9, 16, 25]",
        "cancelled after 0.5 s: True",
        "map: [0, 1, 4, 9, 16, 25, 36, 49]",
    ]
