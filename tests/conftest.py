"""Fixtures for every test: no test may see cloud credentials; `bare_home` for SSH logins.

A test that reached a real provider by accident would spend money and leak machines, and
Local nodes inherit this process's environment, so credentials are removed for the whole
session (session-scoped fixtures such as a shared pool start with a clean environment too).
"""

from __future__ import annotations

import compileall
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Environment variable prefixes (and whole names) of the cloud providers and the services
# Skyward talks to, or may talk to.
CREDENTIAL_PREFIXES = (
    "AWS_",
    "AZURE_",
    "CLOUDSDK_",
    "DATACRUNCH_",
    "DIGITALOCEAN_",
    "FLUIDSTACK_",
    "GCLOUD_",
    "GCP_",
    "GOOGLE_",
    "HF_",
    "HUGGING_FACE_",
    "HYPERSTACK_",
    "JARVIS_",
    "LAMBDA_",
    "LINODE_",
    "OCI_",
    "PAPERSPACE_",
    "RUNPOD_",
    "TENSORDOCK_",
    "VAST_",
    "VASTAI_",
    "VERDA_",
)
CREDENTIAL_NAMES = ("KUBECONFIG", "HUGGINGFACE_TOKEN")


def _is_credential(name: str) -> bool:
    upper = name.upper()
    return upper in CREDENTIAL_NAMES or upper.startswith(CREDENTIAL_PREFIXES)


def pytest_configure(config: pytest.Config) -> None:
    """Compile ``src`` and ``tests`` to bytecode once, before any test (the xdist controller
    only). Every Local node's SSH server, worker, ``sky`` run and client script imports the
    package afresh, and with ``PYTHONDONTWRITEBYTECODE`` set (as on these machines) each
    compiled it from source again: about a fifth of a two-node pool's CPU time."""
    if hasattr(config, "workerinput"):
        return
    root = Path(__file__).resolve().parent.parent
    for folder in ("src", "tests"):
        compileall.compile_dir(root / folder, quiet=1)
    if config.getoption("numprocesses", None):
        _rewrite_test_modules_once(config)


def _rewrite_test_modules_once(config: pytest.Config) -> None:
    """Rewrite the asserts of the test modules this run collects, once, into pytest's cache.

    Each xdist worker collects every test module, and pytest rewrites a module's asserts
    as it imports it: about 7 s of CPU for this suite. It keeps what it rewrote in
    ``__pycache__``, but not where ``PYTHONDONTWRITEBYTECODE`` is set (as on these
    machines), so four workers rewrote the suite four times over. The controller writes the
    cache here (pytest's own functions, which it also uses to read it); the workers find
    it. On a pytest whose internals differ, nothing is written and the workers rewrite as
    before."""
    try:
        from _pytest.assertion import rewrite

        state = config.stash[rewrite.assertstate_key]
        tail, cache_dir_of = rewrite.PYC_TAIL, rewrite.get_cache_dir
        read, rewritten, write = rewrite._read_pyc, rewrite._rewrite_test, rewrite._write_pyc
    except (ImportError, AttributeError, KeyError):  # another pytest, or --assert=plain
        return
    modules: set[Path] = set()
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::", 1)[0])
        if path.is_dir():
            modules.update(path.rglob("test_*.py"))
        elif path.name.startswith("test_") and path.suffix == ".py":
            modules.add(path)
    for module in sorted(modules):
        cache_dir = cache_dir_of(module)
        pyc = cache_dir / (module.name[:-3] + tail)
        if read(module, pyc) is not None or not rewrite.try_makedirs(cache_dir):
            continue
        try:
            source, code = rewritten(module, config)
        except SyntaxError:  # the workers' collection reports it
            continue
        write(state, code, source, pyc)


@pytest.fixture(scope="session", autouse=True)
def _strip_cloud_credentials() -> Iterator[None]:
    """Remove cloud credentials from ``os.environ`` for the whole test session."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if _is_credential(name):
                mp.delenv(name)
        yield


@pytest.fixture(autouse=True)
def _no_cloud_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per test as well: a credential set by an earlier test or fixture does not carry over."""
    for name in list(os.environ):
        if _is_credential(name):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session", autouse=True)
def _home_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A throwaway home: pools log to ``~/.skyward/logs`` by default, never the real one."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        yield


@pytest.fixture
def bare_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with an empty ~/.ssh and no SSH agent: only what a test adds logs in."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def pytest_report_header(config: pytest.Config) -> str | None:
    """Name the ports netavark (podman's network helper) still forwards from 127.0.0.1 to
    a pool's network: a forward left behind (a ``podman run`` killed half-way) makes its
    port reach nothing, so a test server that lands on it is refused (docs/providers.md,
    ``sky.Container``). Before the tests start, no pool should have any."""
    try:
        rules = subprocess.run(
            ["iptables", "-t", "nat", "-S", "NETAVARK-HOSTPORT-DNAT"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None  # no iptables (or not root): nothing to say
    left = sorted(set(re.findall(r"--dport (\d+) .*dnat name: skyward-", rules)), key=int)
    if not left:
        return None
    return (
        f"WARNING: podman forwards 127.0.0.1 ports {', '.join(left)} to sky.Container networks "
        "left behind: a test server on one of them is refused (iptables -t nat -S "
        "NETAVARK-HOSTPORT-DNAT lists them)"
    )
