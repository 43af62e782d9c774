"""A task's stdout/stderr comes back live, line by line, labelled with its node, and the
output-control decorators filter it on the node.

Under pytest stderr is not a terminal, so the default console is the ``log`` one: every
line of remote output is written to stderr as ``HH:MM:SS  node <i>  <line>``.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyward as sky


@pytest.fixture(scope="module")
def loud_pool() -> Iterator[sky.Pool]:
    """Console on (the default), so task output is printed here; two task slots a node."""
    options = sky.Options(worker=sky.Worker(concurrency=2))
    with sky.Compute(provider=sky.Local(), nodes=2, options=options) as pool:
        yield pool


def _labelled(node: int, text: str) -> re.Pattern[str]:
    """A log console line of remote output from ``node``."""
    return re.compile(rf"^\d\d:\d\d:\d\d  node {node}  {re.escape(text)}$", re.MULTILINE)


def _wait_for(capfd: pytest.CaptureFixture[str], text: str, seen: list[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out, err = capfd.readouterr()
        seen.append(out + err)
        if text in "".join(seen):
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared; saw {''.join(seen)!r}")


@sky.function
def _print_then_wait(marker: str) -> str:
    print("waiting for the marker")
    while not os.path.exists(marker):
        time.sleep(0.01)
    print("done")
    return "finished"


def test_output_streams_while_the_task_runs(
    loud_pool: sky.Pool, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    future = _print_then_wait(str(marker)) > loud_pool
    seen: list[str] = []
    # The line arrives while the task is still blocked on a file only we create.
    _wait_for(capfd, "  waiting for the marker", seen)
    assert not future.done()
    marker.touch()
    assert future.result(timeout=30) == "finished"
    _wait_for(capfd, "  done", seen)


@sky.function
def _both_streams() -> int:
    print("on stdout")
    print("on stderr", file=sys.stderr)
    sys.stdout.write("no newline at the end")
    return sky.instance_info().node


def test_lines_are_labelled_with_their_node_before_the_call_returns(
    loud_pool: sky.Pool, capfd: pytest.CaptureFixture[str]
) -> None:
    node = loud_pool.run(_both_streams(), target=1)
    out, err = capfd.readouterr()  # no waiting: the lines are written before the result
    assert node == 1
    assert _labelled(1, "on stdout").search(err), err
    assert _labelled(1, "no newline at the end").search(err), err
    assert _labelled(1, "on stderr").search(err), err
    assert "on stdout" not in out  # the log console writes every line to stderr


@sky.stdout(only="head")
@sky.function
def _stdout_head_only() -> int:
    print(f"stdout of node {sky.instance_info().node}")
    print(f"stderr of node {sky.instance_info().node}", file=sys.stderr)
    return 0


@sky.function
@sky.stderr(only=lambda info: info.node == 1)
def _stderr_node_one() -> int:
    print(f"err-from-{sky.instance_info().node}", file=sys.stderr)
    print(f"out-from-{sky.instance_info().node}")
    return 0


def test_stdout_and_stderr_filters(loud_pool: sky.Pool, capfd: pytest.CaptureFixture[str]) -> None:
    _stdout_head_only() @ loud_pool
    _, err = capfd.readouterr()
    assert _labelled(0, "stdout of node 0").search(err), err
    assert "stdout of node 1" not in err
    assert _labelled(0, "stderr of node 0").search(err), err  # only stdout was filtered
    assert _labelled(1, "stderr of node 1").search(err), err

    _stderr_node_one() @ loud_pool  # the decorator below @sky.function works too
    _, err = capfd.readouterr()
    assert "err-from-1" in err
    assert "err-from-0" not in err
    assert "out-from-0" in err
    assert "out-from-1" in err


@sky.silent
@sky.function
def _silenced() -> str:
    print("you should not see this")
    print("nor this", file=sys.stderr)
    return "quiet"


def test_silent(loud_pool: sky.Pool, capfd: pytest.CaptureFixture[str]) -> None:
    assert _silenced() @ loud_pool == ["quiet", "quiet"]
    out, err = capfd.readouterr()
    assert "should not see" not in out + err
    assert "nor this" not in out + err


def test_silent_is_a_bare_decorator() -> None:
    with pytest.raises(TypeError, match="bare decorator"):
        sky.silent()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="predicate"):
        sky.stdout(only="tail")  # type: ignore[arg-type]


@sky.function
def _redirected() -> list[str]:
    lines: list[str] = []
    with sky.redirect_output(lines.append) as (out, _):
        print("captured")
        print("from stderr", file=sys.stderr)
        out.write("partial")
    print("after the block")
    return lines


def test_redirect_output_on_a_node(loud_pool: sky.Pool, capfd: pytest.CaptureFixture[str]) -> None:
    assert _redirected() >> loud_pool == ["captured", "from stderr", "partial"]
    out, err = capfd.readouterr()
    assert "captured" not in out + err
    assert re.search(r"  node \d  after the block$", err, re.MULTILINE), err


def test_redirect_output_locally() -> None:
    lines: list[str] = []
    with sky.redirect_output(lines.append) as (out, err):
        print("one")
        print("two", file=sys.stderr)
    assert lines == ["one", "two"]
    assert isinstance(out, sky.CallbackWriter)
    assert isinstance(err, sky.CallbackWriter)


@sky.function
def _tagged(tag: str, marker: str) -> str:
    print(f"{tag}-first")
    while not os.path.exists(marker):
        time.sleep(0.01)
    print(f"{tag}-second")
    return tag


def test_concurrent_tasks_on_one_node_keep_their_own_lines(
    loud_pool: sky.Pool, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    a = loud_pool.run_async(_tagged("alpha", str(marker)), target=0)
    b = loud_pool.run_async(_tagged("beta", str(marker)), target=0)
    seen: list[str] = []
    _wait_for(capfd, "alpha-first", seen)
    _wait_for(capfd, "beta-first", seen)
    marker.touch()
    assert (a.result(timeout=30), b.result(timeout=30)) == ("alpha", "beta")
    _wait_for(capfd, "beta-second", seen)
    _wait_for(capfd, "alpha-second", seen)
    text = "".join(seen)
    for tag in ("alpha", "beta"):
        assert _labelled(0, f"{tag}-first").search(text), text
        assert _labelled(0, f"{tag}-second").search(text), text


def test_console_silent_prints_no_task_output(capfd: pytest.CaptureFixture[str]) -> None:
    with sky.Compute(provider=sky.Local(), nodes=1, options=sky.Options(console="silent")) as pool:
        assert _both_streams() >> pool == 0
    out, err = capfd.readouterr()
    assert "on stdout" not in out
    assert "on stderr" not in err
