"""Shared fixtures of the integration suite: real ``sky.Local`` nodes, real SSH, real workers.

Starting a pool costs about a second, so the sync-face tests share one two-node pool for
the whole session. Tests that need their own pool (teardown, options, the trio face) make
one.

Test modules are importable here but not on the workers (a worker's ``sys.path`` does not
hold ``tests/``), so cloudpickle is told to ship each test module's functions and classes
by value, as it does for a script's ``__main__``.
"""

from __future__ import annotations

import contextlib
import contextvars
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import boto3
import cloudpickle
import procs
import pytest
import sshd
from fake_aws import FAKE_CREDENTIALS, FakeAWS, need_fake_aws
from fake_gcp import FakeGCP, need_fake_gcp
from fake_hyperstack import FakeHyperstack, need_fake_hyperstack
from fake_jarvislabs import FakeJarvisLabs, need_fake_jarvislabs
from fake_lambda import FakeLambda, need_fake_lambda
from fake_novita import FakeNovita, need_fake_novita
from fake_runpod import FakeRunPod
from fake_scaleway import FakeScaleway, need_fake_scaleway
from fake_tensordock import FakeTensorDock, need_fake_tensordock
from fake_vastai import FakeVastAI, need_fake_vastai
from fake_verda import FakeVerda, need_fake_verda
from fake_vultr import FakeVultr, need_fake_vultr
from moto import server as moto_server
from sshd import Machine, keygen, need_sshd, start_sshd, stop

import skyward as sky

SILENT = sky.Options(console="silent")


@attrs.frozen
class Machines:
    a: Machine
    b: Machine
    key: Path
    root: Path

    def provider(self, *machines: Machine) -> sky.SSH:
        chosen = machines or (self.a, self.b)
        return sky.SSH(hosts=[f"{m.addr}:{m.port}" for m in chosen], key=str(self.key))


@contextlib.contextmanager
def two_machines(root: Path, *, own_mounts: bool = False) -> Iterator[Machines]:
    """Two OpenSSH machines, on 127.0.0.2 and 127.0.0.3, stopped on leaving."""
    need_sshd()
    key = root / "client_ed25519"
    keygen(key)
    authorized = root / "authorized_keys"
    shutil.copy(key.with_suffix(".pub"), authorized)
    started: list[Machine] = []
    try:
        for name, addr in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
            started.append(start_sshd(root, name, addr, authorized, own_mounts=own_mounts))
        yield Machines(a=started[0], b=started[1], key=key, root=root)
    finally:
        for machine in started:
            stop(machine)


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    with two_machines(tmp_path_factory.mktemp("ssh")) as pair:
        yield pair


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, one per module."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint: str, request: pytest.FixtureRequest) -> str:
    """A new bucket named after the test."""
    name = f"b-{request.node.name[:40].lower().replace('_', '-')}"
    boto_s3(endpoint).create_bucket(Bucket=name)
    return name


def boto_s3(endpoint: str) -> Any:
    """boto3's S3 client of moto's server at ``endpoint`` (a second opinion on the store)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


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

    @staticmethod
    def in_group(pgid: int) -> list[int]:
        """The live processes of process group ``pgid``."""
        return procs.in_group(pgid)

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
def fake_lambda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeLambda]:
    """One fake Lambda Cloud for a module (its uv cache is shared by the machines)."""
    need_fake_lambda()
    with FakeLambda(root=tmp_path_factory.mktemp("lambda")) as api:
        yield api


@pytest.fixture(scope="module")
def fake_hyperstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHyperstack]:
    """One fake Hyperstack for a module (its uv cache is shared by the machines)."""
    need_fake_hyperstack()
    with FakeHyperstack(root=tmp_path_factory.mktemp("hyperstack")) as api:
        yield api


@pytest.fixture(scope="module")
def fake_vultr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeVultr]:
    """One fake Vultr for a module (its uv cache is shared by the machines)."""
    need_fake_vultr()
    with FakeVultr(root=tmp_path_factory.mktemp("vultr")) as api:
        yield api


@pytest.fixture(scope="module")
def fake_verda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeVerda]:
    """One fake Verda for a module (its uv cache is shared by the machines)."""
    need_fake_verda()
    with FakeVerda(root=tmp_path_factory.mktemp("verda")) as api:
        yield api


@pytest.fixture(scope="module")
def fake_scaleway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeScaleway]:
    """One fake Scaleway for a module (its uv cache is shared by the machines)."""
    need_fake_scaleway()
    with FakeScaleway(root=tmp_path_factory.mktemp("scaleway")) as api:
        yield api


@pytest.fixture(scope="module")
def fake_novita(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeNovita]:
    """One fake Novita for a module (its uv cache is shared by the machines)."""
    need_fake_novita()
    with FakeNovita(root=tmp_path_factory.mktemp("novita")) as api:
        yield api


@pytest.fixture(scope="module")
def fake_jarvislabs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeJarvisLabs]:
    """One fake JarvisLabs for a module (its uv cache is shared by the machines)."""
    need_fake_jarvislabs()
    with FakeJarvisLabs(root=tmp_path_factory.mktemp("jarvislabs")) as api:
        yield api


@pytest.fixture(scope="module")
def fake_gcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCP]:
    """One fake GCP for a module (its uv cache is shared by the machines)."""
    need_fake_gcp()
    with FakeGCP(root=tmp_path_factory.mktemp("gcp")) as api:
        yield api


@pytest.fixture(scope="module")
def fake_tensordock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeTensorDock]:
    """One fake TensorDock for a module (its uv cache is shared by the machines)."""
    need_fake_tensordock()
    with FakeTensorDock(root=tmp_path_factory.mktemp("tensordock")) as api:
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
