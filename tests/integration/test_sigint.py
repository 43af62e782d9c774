"""Ctrl-C in the middle of a long task: the call is cancelled, the pool torn down, and
every Local node process (SSH server and worker) is gone before the script exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import skyward as sky

    @sky.function
    def slow():
        time.sleep(60)
        return "finished"

    with sky.Compute(provider=sky.Local(), nodes=2, options=sky.Options(console="silent")) as pool:
        print(pool.job_id, flush=True)
        print(slow() >> pool, flush=True)
    """
)


def _processes_of(job_id: str) -> list[int]:
    """Pids whose command line mentions this pool's Local directories."""
    marker = f"skyward-{job_id}-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ctrl_c_cancels_and_tears_down(tmp_path: Path) -> None:
    script = tmp_path / "long_job.py"
    script.write_text(SCRIPT)
    with subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            _interrupt_and_check(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _interrupt_and_check(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    assert job_id, proc.stderr.read() if proc.stderr else ""
    # Two SSH servers and two workers are up, and the task has been sent.
    deadline = time.monotonic() + 30
    while len(_processes_of(job_id)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_processes_of(job_id)) == 4
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert rc != 0
    assert "KeyboardInterrupt" in stderr
    assert "finished" not in proc.stdout.read()
    # Teardown finished before the script exited: nothing of this pool is left.
    assert _processes_of(job_id) == []
