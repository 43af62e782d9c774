"""``sky.SSH`` without machines: the records, what ``Compute`` refuses before anything starts,
known_hosts lookups, how a node finds its Python, and where it gets Skyward."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest

import skyward as sky
import skyward_trio
from skyward_trio import _source, _transport
from skyward_trio._bootstrap import Environment, _find_python, worker_bootstrap
from skyward_trio._providers import resolve_key


@pytest.fixture
def key(tmp_path: Path) -> str:
    path = tmp_path / "id_test"
    path.write_bytes(_transport.private_openssh(_transport.generate_key()))
    return str(path)


def test_hosts_parse_from_strings_and_records() -> None:
    ssh = sky.SSH(hosts=["gpu1", "alice@gpu2:2222", "[::1]:23", sky.SSHHost(host="gpu3", port=7)])
    assert ssh.hosts == (
        sky.SSHHost(host="gpu1"),
        sky.SSHHost(host="gpu2", user="alice", port=2222),
        sky.SSHHost(host="::1", port=23),
        sky.SSHHost(host="gpu3", port=7),
    )
    assert (ssh.port, ssh.user, ssh.key) == (22, None, None)
    assert (skyward_trio.SSH, skyward_trio.SSHHost) == (sky.SSH, sky.SSHHost)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"hosts": []}, ValueError, r"SSH\(hosts=\[\]\): give at least one host"),
        (
            {"hosts": "gpu1"},
            TypeError,
            r"hosts is a list, one host per node. Pass hosts=\['gpu1'\]",
        ),
        ({"hosts": ["gpu1:ssh"]}, ValueError, r"'ssh' is not a port number"),
        ({"hosts": ["gpu 1"]}, ValueError, r"SSHHost\(host='gpu 1'\): not a host name"),
        ({"hosts": ["gpu1"], "port": 70000}, ValueError, r"a port is at most 65535"),
        ({"hosts": ["gpu1"], "user": ""}, ValueError, r"SSH\(user=''\): user must not be empty"),
        ({"hosts": [3]}, TypeError, r"every item of hosts must be a SSHHost"),
    ],
)
def test_bad_ssh_arguments_are_refused_with_the_fix(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        sky.SSH(**kwargs)  # type: ignore[arg-type]


def test_compute_refuses_more_nodes_than_hosts_before_anything_starts(key: str) -> None:
    provider = sky.SSH(hosts=["h1", "h2"], key=key)
    with pytest.raises(ValueError, match=r"nodes=3: sky.SSH gives one node per host and has 2"):
        sky.Compute(provider=provider, nodes=3)
    with pytest.raises(ValueError, match=r"nodes=4: .* pass nodes=2"):
        sky.Compute(provider=provider, nodes=sky.Nodes(desired=1, max=4))
    with pytest.raises(ValueError, match=r"Image\(apt=\['git'\]\): apt is not built yet"):
        sky.Compute(provider=provider, nodes=1, image=sky.Image(apt=["git"]))
    with pytest.raises(ValueError, match=r'skyward_source="github"\) is not supported'):
        sky.Compute(provider=provider, nodes=1, image=sky.Image(skyward_source="github"))
    sky.Compute(provider=provider, nodes=2)  # nothing starts before it is entered


def test_the_key_is_the_one_given_or_the_first_default_that_exists(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match=r"SSH\(key='/nope'\): no such file"):
        sky.Compute(provider=sky.SSH(hosts=["h"], key="/nope"), nodes=1)
    looked_for = r"none of ~/.ssh/id_ed25519, ~/.ssh/id_ecdsa, ~/.ssh/id_rsa exists"
    with pytest.raises(FileNotFoundError, match=looked_for):
        sky.Compute(provider=sky.SSH(hosts=["h"]), nodes=1)
    ssh_dir = tmp_path / "home" / ".ssh"
    ssh_dir.mkdir(parents=True)
    (ssh_dir / "id_rsa").write_text("x")
    (ssh_dir / "id_ecdsa").write_text("x")
    assert resolve_key(sky.SSH(hosts=["h"])) == str(ssh_dir / "id_ecdsa")
    assert resolve_key(sky.SSH(hosts=["h"], key=key)) == key
    with pytest.raises(_transport.SSHError, match=r"could not load the SSH private key .*id_rsa"):
        _transport.read_key(str(ssh_dir / "id_rsa"))


def test_known_hosts_lines_match_plain_bracketed_and_hashed_names(tmp_path: Path) -> None:
    one = _transport.public_openssh(_transport.generate_key())
    two = _transport.public_openssh(_transport.generate_key())
    path = tmp_path / "known_hosts"
    path.write_text(f"# comment\ngpu1 {one}\n[gpu1]:2222 {two}\nbroken line\n@revoked gpu1 {two}\n")
    assert _transport.known_host_keys(str(path), "gpu1", 22) == [(2, one)]
    assert _transport.known_host_keys(str(path), "gpu1", 2222) == [(3, two)]
    assert _transport.known_host_keys(str(path), "gpu2", 22) == []
    assert _transport.known_host_keys(str(tmp_path / "missing"), "gpu1", 22) == []
    # A hashed name, as Debian's ssh writes them: |1|salt|HMAC-SHA1(salt, name).
    salt = os.urandom(20)
    digest = hmac.new(salt, b"gpu1", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    path.write_text(f"{hashed} {two}\n")
    assert _transport.known_host_keys(str(path), "gpu1", 22) == [(1, two)]
    assert _transport.known_host_keys(str(path), "gpu2", 22) == []


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def _find(version: str, path: str, home: Path) -> subprocess.CompletedProcess[str]:
    script = f'set -eEu\nphase() {{ :; }}\n{_find_python(version)}\necho "PY=$PY"\n'
    env = {"PATH": path, "HOME": str(home)}
    return subprocess.run(
        ["/bin/bash", "-c", script], env=env, capture_output=True, text=True, check=False
    )


def test_a_python_of_the_version_on_the_machine_is_used(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "python3", 'echo "3.98"')
    _fake(bin_dir, "python3.99", 'echo "3.99"')
    done = _find("3.99", f"{bin_dir}:/usr/bin:/bin", tmp_path)
    assert done.stdout.splitlines()[-1] == f"PY={bin_dir}/python3.99"
    assert "uv" not in done.stdout


def test_uv_installs_a_python_only_when_none_matches(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "python3", 'echo "3.98"')
    log = tmp_path / "uv.log"
    _fake(
        bin_dir,
        "uv",
        f'echo "$*" >> {log}\nif [ "$2" = find ]; then echo /uv/pythons/3.99/bin/python; fi',
    )
    done = _find("3.99", f"{bin_dir}:/usr/bin:/bin", tmp_path)
    assert done.stdout.splitlines()[-1] == "PY=/uv/pythons/3.99/bin/python", done.stderr
    assert log.read_text().splitlines() == ["python install --quiet 3.99", "python find 3.99"]


def test_a_machine_without_python_nor_uv_says_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    for tool in ("bash", "cat"):
        os.symlink(f"/bin/{tool}" if os.path.exists(f"/bin/{tool}") else tool, empty / tool)
    done = _find("3.99", str(empty), tmp_path)
    assert done.returncode != 0
    assert "this machine has neither Python nor uv: install python3.99 (or uv)" in done.stderr


def test_a_remote_environment_finds_python_and_installs_the_shipped_wheel() -> None:
    env = Environment(
        pip=("six==1.16.0", "cloudpickle==3.1.0"),
        key="k1",
        python_version="3.12",
        wheels=(("skyward-0.1.0-py3-none-any.whl", b"PK-not-really"),),
    )
    script = worker_bootstrap(
        workdir="/w", python="python3", secret="s", config={}, start_timeout=1, environment=env
    )
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    phases = [line.split()[1] for line in script.splitlines() if line.startswith("phase ")]
    assert phases == ["python", "uv", "venv"]
    assert '"$UV" venv --quiet --python "$PY"' in script
    wheel = '"$HOME/.skyward/envs/k1"/wheels/skyward-0.1.0-py3-none-any.whl'
    install = next(line for line in script.splitlines() if '"$UV" pip install' in line)
    assert install.endswith(f"six==1.16.0 cloudpickle==3.1.0 {wheel}")


def test_skyward_source_pins_the_exact_version_or_ships_this_checkout() -> None:
    pypi = _source.skyward_package("pypi")
    assert pypi.requirements[0] == f"skyward=={sky.__version__}"  # never unpinned
    assert pypi.requirements[1].startswith("cloudpickle==")
    assert pypi.wheels == ()
    assert _source.project_dir() == Path(__file__).resolve().parents[2]  # an editable install
    with pytest.raises(ValueError, match=r'skyward_source="github"\) is not supported'):
        _source.skyward_package("github")


def test_local_without_a_development_install_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_source, "project_dir", lambda: None)
    with pytest.raises(ValueError, match=r"not a development install .* skyward_source='pypi'"):
        _source.check_source("local")
    assert _source.skyward_package("auto").requirements[0] == f"skyward=={sky.__version__}"
    assert sys.modules["skyward_trio._source"] is _source
