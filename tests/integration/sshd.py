"""Private OpenSSH ``sshd`` "machines" for the tests: each listens on its own loopback address,
has its own host key, its own home directory (``SetEnv HOME``) and shares nothing with the
client but the package index. Their ``PATH`` holds this interpreter's Python version, so a
bootstrap finds one there; their uv cache is shared under the root they are started in, so a
session downloads each package once.

Their apt reads an empty source list (``APT_CONFIG``, lists and cache under the root): the
real apt-get and dpkg of this machine run there, with no package source to reach.

No system configuration is touched, and every sshd is stopped by its pid (``stop``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import pytest
from needs import unavailable

SSHD = "/usr/sbin/sshd"


@attrs.frozen
class Machine:
    """One sshd "machine": where it listens, its home directory and its host key."""

    addr: str
    port: int
    home: Path
    host_key: Path
    pid: int

    @property
    def jobs(self) -> Path:
        return self.home / ".skyward" / "jobs"


def need_sshd() -> None:
    """Skip without sshd, except under CI, which must run the tests that need it."""
    if os.path.exists(SSHD):
        return
    unavailable(f"{SSHD} is missing (apt-get install -y openssh-server)", suite="sky.SSH")


def free_port(addr: str) -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        port: int = sock.getsockname()[1]
        return port


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(
    root: Path,
    name: str,
    addr: str,
    authorized: Path,
    *,
    port: int = 0,
    extra_env: Mapping[str, str] = {},
    path_prefix: Sequence[str] = (),
    home: Path | None = None,
    own_mounts: bool = False,
    extra_config: str = "",
) -> Machine:
    """A private sshd (no system config touched) that runs until stopped by its pid.

    ``extra_env`` joins the sessions' environment (``SetEnv``); ``path_prefix`` comes first
    on their ``PATH``. ``home`` defaults to ``root/name/home``; a worker's socket lives under
    it, so it must stay short (a unix socket's path holds at most 107 bytes).
    ``own_mounts`` runs it in a mount namespace of its own (``unshare``): what it mounts
    (``sky.Volume``) only it sees, as on a machine of its own, and nothing outlives it.
    ``extra_config`` goes first in its config, so it wins (sshd keeps a keyword's first value).
    """
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    home = home or directory / "home"
    home.mkdir(parents=True, exist_ok=True)
    host_key = directory / "host_ed25519"
    if not host_key.exists():
        keygen(host_key)
    port = port or free_port(addr)
    python_dir = os.path.dirname(sys._base_executable)  # this Python's version is "installed"
    environment = set_env(
        home,
        python_dir,
        root / "uv-cache",
        offline_apt(root),
        extra_env=extra_env,
        path_prefix=path_prefix,
    )
    config = directory / "sshd_config"
    config.write_text(
        extra_config + f"Port {port}\nListenAddress {addr}\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile none\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        "AllowStreamLocalForwarding yes\nPermitUserEnvironment no\n"
        f"SetEnv {environment}\n"
    )
    if os.getuid() == 0:  # as root, sshd wants its privilege-separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
    log = directory / "sshd.log"
    with open(log, "wb") as out:
        wrap = ["unshare", "--mount", "--propagation", "private"] if own_mounts else []
        command = [*wrap, SSHD, "-D", "-e", "-f", str(config)]
        proc = subprocess.Popen(command, stdout=out, stderr=out)
    deadline = time.monotonic() + 10
    while b"Server listening" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"sshd did not start: {log.read_text()}")
        time.sleep(0.02)
    RUNNING[proc.pid] = proc
    return Machine(addr=addr, port=port, home=home, host_key=host_key, pid=proc.pid)


RUNNING: dict[int, subprocess.Popen[bytes]] = {}


def image_tools(root: Path) -> str:
    """A folder for a fake cloud's machines' ``PATH``: what their image comes with beyond
    Python, which is ``uv`` (this environment's, from the ``test`` extra), as an image
    made for the purpose may carry it. Their bootstrap then finds uv rather than
    installing it with pip, some 3 CPU-seconds a machine, most of a machine's start here;
    the ``sky.SSH`` tests' hosts have no uv, and test_ssh.py checks that it is installed."""
    tools = root / "image-tools"
    uv = Path(sys.executable).parent / "uv"
    if not uv.is_file():
        raise RuntimeError(f"no uv beside {sys.executable}: pip install -e '.[test]'")
    if not (tools / "uv").exists():
        tools.mkdir(parents=True, exist_ok=True)
        (tools / "uv").symlink_to(uv)
    return str(tools)


# How this client reaches the package index (a proxy's CA, a mirror): the machines reach it
# the same way, as a lab's machines would be set up for their network.
INDEX_SETTINGS = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PIP_CERT",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_NATIVE_TLS",
)


def set_env(
    home: Path,
    python_dir: str,
    uv_cache: Path,
    apt_config: Path,
    *,
    extra_env: Mapping[str, str] = {},
    path_prefix: Sequence[str] = (),
) -> str:
    """sshd's ``SetEnv`` line: the machine's home, PATH, uv cache, apt and index settings,
    then ``extra_env``; ``path_prefix`` comes first on PATH."""
    values = {
        "HOME": str(home),
        "PATH": ":".join([*path_prefix, python_dir, "/usr/local/bin", "/usr/bin", "/bin"]),
        "UV_CACHE_DIR": str(uv_cache),  # shared by the machines: one download per session
        "APT_CONFIG": str(apt_config),
    }
    values |= {name: os.environ[name] for name in INDEX_SETTINGS if name in os.environ}
    values |= extra_env
    return " ".join(f'"{name}={value}"' for name, value in values.items())


def offline_apt(root: Path) -> Path:
    """An apt configuration with no package source, whose lists, cache and logs live under
    ``root``: ``apt-get update`` needs no network, and nothing of the host's apt changes."""
    apt = root / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "log", "sources.list.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").touch()
    config = apt / "apt.conf"
    config.write_text(
        f'Dir::Etc::SourceList "{apt}/sources.list";\n'
        f'Dir::Etc::SourceParts "{apt}/sources.list.d";\n'
        f'Dir::State::Lists "{apt}/lists";\n'
        f'Dir::Cache "{apt}/cache";\n'
        f'Dir::Log "{apt}/log";\n'
    )
    return config


def stop(machine: Machine) -> None:
    """Stop ``machine``'s sshd by its pid: terminate, wait, kill if it lingers."""
    proc = RUNNING.pop(machine.pid)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
