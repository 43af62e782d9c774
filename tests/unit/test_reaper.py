"""The reaper's side of its protocol (``_reaper.main``): what the client said, or did not
say, decides whether it ends the pool's machines, and when. The end itself runs against
the fake clouds (``tests/integration/test_lambda.py`` and the others, ``-k reaper``)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import pytest

from skyward_trio import _reaper


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _run(
    monkeypatch: pytest.MonkeyPatch, said: bytes, ttl: float, pid: int | None = None
) -> tuple[int, list[str]]:
    """``main`` with a client (already gone) that sent its header, then ``said``: its exit
    status, and what it did (slept, reaped)."""
    blob = b"the pickled config"
    pid = _dead_pid() if pid is None else pid
    data = f"{pid} {ttl!r}\n".encode() + struct.pack(">Q", len(blob)) + blob + said
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    done: list[str] = []
    monkeypatch.setattr(_reaper.time, "sleep", lambda seconds: done.append(f"sleep {seconds:g}"))

    def reap(job: str, got: bytes) -> int:
        assert got == blob
        done.append(f"reap {job}")
        return 0

    monkeypatch.setattr(_reaper, "_reap", reap)
    return _reaper.main(["j0b"]), done


def test_a_pool_that_closed_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(monkeypatch, _reaper.CLOSED, 600) == (0, [])


def test_a_client_that_died_has_its_machines_ended_after_the_ttl(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(monkeypatch, b"", 600) == (0, ["sleep 600", "reap j0b"])
    assert "ended without closing it; ending what it left in 600 s" in capsys.readouterr().err


def test_a_close_that_left_machines_is_tried_again_at_once_when_the_client_ends(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(monkeypatch, _reaper.LEFT, 600) == (0, ["reap j0b"])
    assert "could not confirm every machine ended (or key deleted)" in capsys.readouterr().err


def test_no_header_is_said_and_nothing_is_done(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert _reaper.main(["j0b"]) == 2
    assert "sent no pid and ttl" in capsys.readouterr().err


def test_what_went_wrong_is_said_through_exception_groups() -> None:
    group = ExceptionGroup(
        "outer", [ValueError("no answer"), ExceptionGroup("in", [KeyError("k")])]
    )
    assert _reaper._words(group) == "no answer; 'k'"


def test_a_client_killed_but_not_yet_waited_for_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    # A zombie: its parent (this test) has not reaped it, as a careless supervisor might not.
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie.kill()
    try:
        with open(f"/proc/{zombie.pid}/stat") as stat:
            while stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                stat.seek(0)
        assert _run(monkeypatch, b"", 0, pid=zombie.pid) == (0, ["sleep 0", "reap j0b"])
    finally:
        zombie.wait()
