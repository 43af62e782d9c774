"""Shared fixtures of the integration suite: real ``sky.Local`` nodes, real SSH, real workers.

Starting a pool costs about a second, so the sync-face tests share one two-node pool for
the whole session. Tests that need their own pool (teardown, options, the trio face) make
one.

Test modules are importable here but not on the workers (a worker's ``sys.path`` does not
hold ``tests/``), so cloudpickle is told to ship each test module's functions and classes
by value, as it does for a script's ``__main__``.
"""

from __future__ import annotations

import contextvars
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cloudpickle
import procs
import pytest
import sshd
from fake_aws import FAKE_CREDENTIALS, FakeAWS, need_fake_aws
from fake_runpod import FakeRunPod
from fake_vastai import FakeVastAI, need_fake_vastai

import skyward as sky

SILENT = sky.Options(console="silent")


@pytest.fixture(scope="module", autouse=True)
def _ship_test_module_by_value(request: pytest.FixtureRequest) -> Iterator[None]:
    cloudpickle.register_pickle_by_value(request.module)
    yield
    cloudpickle.unregister_pickle_by_value(request.module)


@pytest.fixture(scope="session")
def sync_pool(_strip_cloud_credentials: None) -> Iterator[sky.Pool]:
    """A two-node sync pool shared by the session.

    It is entered in a context of its own, so it is not the *active* pool of the tests:
    ``>> sky`` in a test body still means "no pool", and tests dispatch with ``>> pool``.
    """
    context = contextvars.copy_context()
    compute = sky.Compute(nodes=2, options=SILENT)
    pool = context.run(compute.__enter__)
    try:
        yield pool
    finally:
        context.run(compute.__exit__, None, None, None)


@pytest.fixture
def unanswered(tmp_path: Path) -> tuple[sky.SSH, int]:
    """A ``sky.SSH`` host with a key to log in with, on a loopback port nothing listens on
    (bound, then released), and that port: a spec whose machine never answers."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    return sky.SSH(hosts=[f"127.0.0.1:{port}"], key=str(key), ssh_config=None), port


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Looks at this machine's processes (``/proc``): what a pool started, and whether it ended."""

    @staticmethod
    def state(pid: int) -> str | None:
        """The state letter of ``pid`` (``"Z"`` for a zombie), None if there is no such pid."""
        return procs.state(pid)

    @staticmethod
    def is_running(pid: int) -> bool:
        """Whether ``pid`` is a live process (a zombie counts as gone)."""
        return procs.is_running(pid)

    def wait_until_gone(self, pids: Iterable[int], *, limit: float = 5.0) -> set[int]:
        """Poll until none of ``pids`` runs (teardown reaps asynchronously); return survivors."""
        deadline = time.monotonic() + limit
        survivors = {pid for pid in pids if self.is_running(pid)}
        while survivors and time.monotonic() < deadline:
            time.sleep(0.05)
            survivors = {pid for pid in survivors if self.is_running(pid)}
        return survivors

    def of_job(self, job_id: str) -> dict[int, str]:
        """Live processes whose command line names this job's node directories: pid -> cmdline.

        ``sky.Local`` keeps every node under ``$TMPDIR/skyward-<job_id>-*/node-<i>``; the
        node's SSH server and its worker daemon both carry that path in their arguments.
        """
        return self.mentioning(f"skyward-{job_id}-")

    def mentioning(self, text: str) -> dict[int, str]:
        """Live processes whose command line contains ``text``: pid -> cmdline."""
        marker = text.encode()
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and self.is_running(int(entry.name)):
                found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
        return found


@pytest.fixture
def processes() -> Processes:
    return Processes()


# -- a fake RunPod -----------------------------------------------------------------------------


@pytest.fixture
def fake_runpod(tmp_path: Path) -> Iterator[FakeRunPod]:
    """A fake RunPod API (``fake_runpod.py``) whose pods are sshd machines under this test's
    directory; every pod ends with the test."""
    sshd.need_sshd()
    with FakeRunPod(root=tmp_path / "runpod") as api:
        yield api


@pytest.fixture(scope="module")
def vast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeVastAI]:
    """One fake Vast.ai for a module (its uv cache is shared by the machines)."""
    need_fake_vastai()
    with FakeVastAI(root=tmp_path_factory.mktemp("vast")) as api:
        yield api


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAWS]:
    """One fake AWS for a module (its machines share a uv cache: one download each)."""
    need_fake_aws()
    with FakeAWS(root=tmp_path_factory.mktemp("aws")) as fake:
        yield fake


@pytest.fixture
def aws_credentials(_no_cloud_credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake AWS's credentials, set once every real one is removed (a client process
    the test starts inherits them)."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
