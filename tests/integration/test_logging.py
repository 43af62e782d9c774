"""``Options(logging=...)``: a pool's life, its nodes' output and logs reach the log file,
and no credential reaches a log line or an event (real Local nodes)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import skyward as sky
from skyward_trio import _logging

FAKE_TOKEN = "hf_fake_0123456789abcdef"


@sky.function
def _chatty() -> int:
    print("hello from the node")
    os.write(2, b"a note in the worker's own log\n")  # fd 2 of the worker is worker.log
    print(f"my token is {os.environ['HF_TOKEN']}")
    return len(os.environ["HF_TOKEN"])


def test_the_log_file_has_the_pool_its_output_and_no_secret(tmp_path: Path) -> None:
    file = tmp_path / "pool.log"
    options = sky.Options(
        console="silent", logging=sky.LogConfig(file=str(file), level="DEBUG", console=False)
    )
    image = sky.Image(env={"HF_TOKEN": FAKE_TOKEN})
    seen: list[Any] = []
    with sky.Compute(provider=sky.Local(), nodes=2, image=image, options=options) as pool:
        stream = pool.events()  # subscribed here: the task's output comes after
        reader = threading.Thread(target=lambda: seen.extend(stream), daemon=True)
        reader.start()
        assert _chatty() >> pool == len(FAKE_TOKEN)  # the node does get the real value
        secret = pool._core._supervisor.secret
    reader.join(timeout=30)
    text = file.read_text()
    for expected in (
        f"pool {pool.job_id}: ClusterRequested provider='local'",
        "ClusterReady nodes=2",
        "TaskCompleted node=",
        "ClusterDestroyed instances=2",
        "stdout: hello from the node",
        "stdout: my token is ***",
        "node 0 bootstrap: ",  # the bootstrap script's output, at DEBUG
        "worker.log (",  # each worker's own log, fetched before its node went
        "a note in the worker's own log",
    ):
        assert expected in text, f"{expected!r} not in the log:\n{text}"
    assert FAKE_TOKEN not in text
    assert secret not in text
    logs = [e.text for e in seen if isinstance(e, sky.Log)]
    assert "my token is ***\n" in logs
    assert not any(FAKE_TOKEN in repr(e) for e in seen)


def test_info_level_keeps_task_events_out(tmp_path: Path) -> None:
    file = tmp_path / "info.log"
    options = sky.Options(console="silent", logging=sky.LogConfig(file=str(file)))
    with sky.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
        assert not pool._core._events.watched  # no task events are even built
        assert _chatty.fn is not None
    text = file.read_text()
    assert "ClusterReady" in text
    assert "TaskStarted" not in text
    assert " DEBUG " not in text


def test_logging_true_writes_under_home_and_false_writes_nothing() -> None:
    default_file = Path.home() / ".skyward" / "logs" / "skyward.log"
    with sky.Compute(provider=sky.Local(), nodes=1, options=sky.Options(console="silent")) as pool:
        pass
    assert f"pool {pool.job_id}: ClusterDestroyed" in default_file.read_text()
    quiet = sky.Options(console="silent", logging=False)
    with sky.Compute(provider=sky.Local(), nodes=1, options=quiet) as pool:
        assert all(pool.job_id not in jobs.jobs for _, jobs in _logging._files.values())
    assert pool.job_id not in default_file.read_text()
