"""``sky.SSH`` without machines: the records, what ``Compute`` refuses before anything starts,
how each host resolves (``~/.ssh/config``, keys, passphrases, the agent), known_hosts lookups,
how a node finds its Python and installs apt packages, and where it gets Skyward."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyward as sky
import skyward_trio
from skyward_trio import _source, _transport
from skyward_trio._bootstrap import (
    Environment,
    _apt_steps,
    _find_python,
    env_hash,
    environment_bootstrap,
    worker_bootstrap,
)
from skyward_trio._providers import ssh_targets


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
    # An IPv6 address (a scope included) with no brackets has no port: it is all host.
    v6 = sky.SSH(hosts=["fe80::1:22", "bob@fe80::1%eth0", "[gpu4]"]).hosts
    assert v6 == (
        sky.SSHHost(host="fe80::1:22"),
        sky.SSHHost(host="fe80::1%eth0", user="bob"),
        sky.SSHHost(host="gpu4"),
    )
    assert (ssh.port, ssh.user, ssh.key, ssh.passphrase_env) == (None, None, None, None)
    assert ssh.ssh_config == "~/.ssh/config"
    assert (skyward_trio.SSH, skyward_trio.SSHHost) == (sky.SSH, sky.SSHHost)


def test_a_host_record_with_a_port_in_its_name_says_to_pass_it_apart() -> None:
    with pytest.raises(
        ValueError,
        match=r"^SSHHost\(host='gpu1:2222'\): a host name has no ':' \(only an IPv6 address "
        r'does\)\. Pass the port apart, e\.g\. sky\.SSHHost\(host="gpu1", port=2222\)\.$',
    ):
        sky.SSHHost(host="gpu1:2222")


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
        (
            {"hosts": ["h:22:extra"]},
            ValueError,
            r"^SSH\(hosts=\['h:22:extra'\]\): not a host: it has more than one ':' and is no "
            r"IPv6 address \(an IPv6 address with a port goes in brackets: "
            r"'user@\[v6addr\]:port'\)\. Hosts are 'host', 'user@host', 'host:port', "
            r"'user@host:port' or 'user@\[v6addr\]:port'\. Pass e\.g\. hosts=",
        ),
        ({"hosts": ["[::1:22"]}, ValueError, r"not a host: the '\[' of an IPv6 address has no"),
        ({"hosts": ["[::1]22"]}, ValueError, r"not a host: '22' follows '\]' where ':port' goes"),
        ({"hosts": ["@gpu1"]}, ValueError, r"\['@gpu1'\]\): not a host: the user before '@'"),
        ({"hosts": ["gpu 1"]}, ValueError, r"SSHHost\(host='gpu 1'\): not a host name"),
        ({"hosts": ["gpu1"], "port": 70000}, ValueError, r"a port is at most 65535"),
        ({"hosts": ["gpu1"], "user": ""}, ValueError, r"SSH\(user=''\): user must not be empty"),
        ({"hosts": [3]}, TypeError, r"every item of hosts must be a SSHHost"),
        ({"hosts": ["h"], "ssh_config": ""}, ValueError, r"ssh_config must not be empty"),
        (
            {"hosts": ["h"], "passphrase_env": "hunter2 secret!"},
            ValueError,
            r"^SSH\(passphrase_env=\.\.\.\): not the name of an environment variable .*"
            r"never the passphrase itself\.$",  # and the value given is not repeated
        ),
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
    with pytest.raises(ValueError, match=r"Image\(apt=\['-y'\]\): not a Debian package name"):
        sky.Compute(provider=provider, nodes=1, image=sky.Image(apt=["-y"]))
    with pytest.raises(ValueError, match=r"Image\(apt=\['\$\(reboot\)'\]\): not a Debian"):
        sky.Compute(provider=provider, nodes=1, image=sky.Image(apt=["$(reboot)"]))
    apt = ["git", "libpq-dev:amd64", "python3.12=3.12.3-1", "ffmpeg/bookworm-backports"]
    sky.Compute(provider=provider, nodes=1, image=sky.Image(apt=apt))
    with pytest.raises(ValueError, match=r'skyward_source="github"\) is not supported'):
        sky.Compute(provider=provider, nodes=1, image=sky.Image(skyward_source="github"))
    sky.Compute(provider=provider, nodes=2)  # nothing starts before it is entered


@pytest.fixture
def agent_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A unix socket named by ``SSH_AUTH_SOCK``: what tells an agent is running."""
    path = str(tmp_path / "agent.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        monkeypatch.setenv("SSH_AUTH_SOCK", path)
        yield path


def _keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True
    )
    return path


def _only(provider: sky.SSH) -> _transport.Login:
    (target,) = ssh_targets(provider)
    return target.login


def test_without_key_agent_or_default_key_the_error_names_each_fix(bare_home: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"SSH\(key='/nope'\): no such file"):
        sky.Compute(provider=sky.SSH(hosts=["h"], key="/nope"), nodes=1)
    looked_for = (
        r"no private key given, no SSH agent running \(SSH_AUTH_SOCK is not set\) and none of "
        r"~/.ssh/id_ed25519, ~/.ssh/id_ecdsa, ~/.ssh/id_rsa exists.*ssh-add"
    )
    with pytest.raises(FileNotFoundError, match=looked_for):
        sky.Compute(provider=sky.SSH(hosts=["h"]), nodes=1)
    (bare_home / ".ssh" / "id_rsa").write_text("not a key")
    with pytest.raises(_transport.SSHError, match=r"could not load the SSH private key .*id_rsa"):
        sky.Compute(provider=sky.SSH(hosts=["h"]), nodes=1)


def test_the_default_keys_that_exist_are_offered_and_encrypted_ones_left_to_the_agent(
    bare_home: Path, agent_socket: str
) -> None:
    ecdsa = _keygen(bare_home / ".ssh" / "id_ecdsa")
    rsa = _keygen(bare_home / ".ssh" / "id_rsa", passphrase="correct horse")
    login = _only(sky.SSH(hosts=["h"]))
    assert login.agent == agent_socket
    assert len(login.keys) == 1
    assert login.tried.startswith(f"the SSH agent's keys ({agent_socket}), {ecdsa}, not {rsa}")
    assert "passphrase-protected: ssh-add it" in login.tried
    assert "keys=" not in repr(login)  # key material is never shown
    # A key given is the only one offered: neither the agent nor the defaults.
    given = _keygen(bare_home / "given")
    login = _only(sky.SSH(hosts=["h"], key=str(given)))
    assert (len(login.keys), login.agent, login.tried) == (1, None, f"the key {given}")


def test_the_agent_alone_is_enough(bare_home: Path, agent_socket: str) -> None:
    login = _only(sky.SSH(hosts=["h"]))
    assert (login.keys, login.agent) == ((), agent_socket)
    sky.Compute(provider=sky.SSH(hosts=["h"]), nodes=1)  # accepted before anything starts


def test_a_passphrase_protected_key_needs_its_passphrase_or_the_agent(
    bare_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "correct horse battery"
    key = str(_keygen(bare_home / "locked", passphrase=secret))
    with pytest.raises(
        ValueError,
        match=r"SSH\(key='.*locked'\): .*locked is passphrase-protected and no passphrase was "
        r"given. Pass SSH\(passphrase_env='NAME'\) .* or ssh-add it to your SSH agent",
    ):
        sky.Compute(provider=sky.SSH(hosts=["h"], key=key), nodes=1)
    provider = sky.SSH(hosts=["h"], key=key, passphrase_env="SKYWARD_TEST_PASSPHRASE")
    assert "correct" not in repr(provider)
    with pytest.raises(
        ValueError, match=r"the environment variable SKYWARD_TEST_PASSPHRASE is not set here"
    ):
        sky.Compute(provider=provider, nodes=1)
    monkeypatch.setenv("SKYWARD_TEST_PASSPHRASE", "wrong")
    with pytest.raises(_transport.SSHError, match=r"does not decrypt .*SKYWARD_TEST_PASSPHRASE"):
        sky.Compute(provider=provider, nodes=1)
    monkeypatch.setenv("SKYWARD_TEST_PASSPHRASE", secret)
    assert len(_only(provider).keys) == 1
    # A default key that is locked, with no agent to hold it: the error says both fixes.
    os.rename(key, bare_home / ".ssh" / "id_ed25519")
    with pytest.raises(
        ValueError,
        match=r"id_ed25519 is passphrase-protected, no passphrase was given and no SSH agent "
        r"is running \(SSH_AUTH_SOCK is not set\). ssh-add it .*passphrase_env='NAME'",
    ):
        sky.Compute(provider=sky.SSH(hosts=["h"]), nodes=1)


def test_ssh_config_resolves_aliases_and_explicit_arguments_win(bare_home: Path) -> None:
    work = _keygen(bare_home / ".ssh" / "work_key")
    _keygen(bare_home / ".ssh" / "id_ed25519")
    (bare_home / ".ssh" / "config").write_text(
        "Host gpu-box\n"
        "  HostName 10.1.2.3\n"
        "  Port 2222\n"
        "  User carol\n"
        "  IdentityFile ~/.ssh/work_key\n"
        "Host *\n"
        "  User dave\n"
    )
    alias, plain = ssh_targets(sky.SSH(hosts=["gpu-box", "other"]))
    assert (alias.host, alias.port, alias.user) == ("10.1.2.3", 2222, "carol")
    assert alias.login.tried == str(work)  # the config's IdentityFile, not the defaults
    assert (plain.host, plain.port, plain.user) == ("other", 22, "dave")
    assert plain.login.tried == str(bare_home / ".ssh" / "id_ed25519")
    # Given in the host string, or to SSH: wins over the file, as with ssh -l/-p/-i.
    (given,) = ssh_targets(sky.SSH(hosts=["erin@gpu-box:2200"]))
    assert (given.host, given.port, given.user) == ("10.1.2.3", 2200, "erin")
    (given,) = ssh_targets(sky.SSH(hosts=["gpu-box"], user="frank", port=2201))
    assert (given.host, given.port, given.user) == ("10.1.2.3", 2201, "frank")
    (unread,) = ssh_targets(sky.SSH(hosts=["gpu-box"], ssh_config=None))
    assert (unread.host, unread.port) == ("gpu-box", 22)
    with pytest.raises(FileNotFoundError, match=r"SSH\(ssh_config='/nope'\): no such file"):
        sky.Compute(provider=sky.SSH(hosts=["h"], ssh_config="/nope"), nodes=1)
    broken = bare_home / "broken_config"
    broken.write_text("Host x\n  Port notaport\n")
    with pytest.raises(ValueError, match=rf"{broken} line 2: .* pass ssh_config=None"):
        sky.Compute(provider=sky.SSH(hosts=["x"], ssh_config=str(broken)), nodes=1)


def test_proxy_jump_resolves_each_jump_host_through_the_config(bare_home: Path) -> None:
    gate = _keygen(bare_home / ".ssh" / "gate_key")
    _keygen(bare_home / ".ssh" / "id_ed25519")
    (bare_home / ".ssh" / "config").write_text(
        "Host inner\n"
        "  HostName 10.0.0.7\n"
        "  ProxyJump gate,ops@[fd00::5]:2200\n"
        "Host gate\n"
        "  HostName gw.example.org\n"
        "  Port 2222\n"
        "  User carol\n"
        "  IdentityFile ~/.ssh/gate_key\n"
        "Host deep\n"
        "  HostName 10.0.0.8\n"
        "  ProxyJump ssh://inner\n"
        "Host direct\n"
        "  ProxyJump none\n"
        "Host *\n"
        "  User dave\n"
    )
    inner, deep, direct = ssh_targets(sky.SSH(hosts=["inner", "deep", "direct"]))
    assert (inner.host, inner.port, inner.user) == ("10.0.0.7", 22, "dave")
    first, second = inner.jumps
    assert (first.host, first.port, first.user) == ("gw.example.org", 2222, "carol")
    assert first.login.tried == str(gate)  # the jump host's own IdentityFile
    assert (second.host, second.port, second.user) == ("fd00::5", 2200, "ops")
    assert second.login.tried == str(bare_home / ".ssh" / "id_ed25519")
    # A jump host reached through jump hosts of its own: theirs come first.
    assert [(h.host, h.port) for h in deep.jumps] == [
        ("gw.example.org", 2222),
        ("fd00::5", 2200),
        ("10.0.0.7", 22),
    ]
    assert direct.jumps == ()
    (unread,) = ssh_targets(sky.SSH(hosts=["inner"], ssh_config=None))
    assert unread.jumps == ()
    # SSH(proxy_jump=...) wins over the config's, as ssh -J does; "none" goes straight there.
    (given,) = ssh_targets(sky.SSH(hosts=["inner"], proxy_jump="gate"))
    assert [(h.host, h.port, h.user) for h in given.jumps] == [("gw.example.org", 2222, "carol")]
    (straight,) = ssh_targets(sky.SSH(hosts=["inner"], proxy_jump="none"))
    assert straight.jumps == ()
    # A jump host given there follows its own ProxyJump first.
    (deeper,) = ssh_targets(sky.SSH(hosts=["x"], proxy_jump="deep"))
    assert [h.host for h in deeper.jumps] == ["gw.example.org", "fd00::5", "10.0.0.7", "10.0.0.8"]


@pytest.mark.parametrize("jump", ["gw:notaport", "a,,b", "bad host", 3])
def test_a_proxy_jump_argument_that_is_not_hosts_is_refused_at_once(jump: object) -> None:
    with pytest.raises((TypeError, ValueError), match=r"SSH\(proxy_jump="):
        sky.SSH(hosts=["h"], proxy_jump=jump)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("jump", "message"),
    [
        ("gate:notaport", r"has 'gate:notaport', which is not \[user@\]host\[:port\]"),
        ("gate,", r"has '', which is not"),
        ("me@:22", r"has 'me@:22', which is not"),
        ("loop", r"more than 8 jump hosts \(h -> loop -> loop .*\); a ProxyJump probably"),
    ],
)
def test_a_proxy_jump_that_cannot_be_followed_is_refused_naming_the_host(
    bare_home: Path, jump: str, message: str
) -> None:
    _keygen(bare_home / ".ssh" / "id_ed25519")
    (bare_home / ".ssh" / "config").write_text(
        f"Host h\n  ProxyJump {jump}\nHost loop\n  ProxyJump loop\n"
    )
    with pytest.raises(ValueError, match=message):
        sky.Compute(provider=sky.SSH(hosts=["h"]), nodes=1)


def test_a_key_goes_with_the_certificates_that_certify_it(bare_home: Path) -> None:
    ca = _keygen(bare_home / "ca")
    key = _keygen(bare_home / ".ssh" / "id_ed25519")
    other = _keygen(bare_home / "other")

    def sign(public: Path, to: Path) -> Path:
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(ca), "-I", "t", "-n", "u", str(public)], check=True
        )
        public.with_name(public.name.removesuffix(".pub") + "-cert.pub").rename(to)
        return to

    plain = _only(sky.SSH(hosts=["h"], key=str(key)))
    assert len(plain.keys) == 1
    beside = sign(Path(f"{key}.pub"), Path(f"{key}-cert.pub"))  # where ssh looks for it
    login = _only(sky.SSH(hosts=["h"], key=str(key)))
    assert [getattr(k, "has_cert", False) for k in login.keys] == [True, False]
    assert login.tried == f"the key {key} (with the certificate {beside})"
    # One that certifies another key is not this key's: left out, as ssh does.
    sign(Path(f"{other}.pub"), beside)
    assert len(_only(sky.SSH(hosts=["h"], key=str(key))).keys) == 1
    # The config's CertificateFile, for the host's keys; one that cannot be read says so.
    named = sign(Path(f"{key}.pub"), bare_home / "issued-cert.pub")
    (bare_home / ".ssh" / "config").write_text(
        f"Host h\n  CertificateFile {named}\nHost broken\n  CertificateFile /nope-cert.pub\n"
    )
    login = _only(sky.SSH(hosts=["h"]))
    assert [getattr(k, "has_cert", False) for k in login.keys] == [True, False]
    assert f"with the certificate {named}" in login.tried
    with pytest.raises(_transport.SSHError, match="could not read the SSH certificate /nope"):
        ssh_targets(sky.SSH(hosts=["broken"]))


def test_identity_agent_names_the_agent_and_identities_only_narrows_its_keys(
    bare_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(bare_home / "agent.sock"))  # an agent's socket, as far as a path goes
    try:
        key = _keygen(bare_home / ".ssh" / "work")
        locked = _keygen(bare_home / ".ssh" / "locked", passphrase="p4ss")
        (bare_home / ".ssh" / "config").write_text(
            "Host tilde\n  IdentityAgent ~/agent.sock\n"
            "Host variable\n  IdentityAgent $MY_AGENT\n"
            "Host narrow\n  IdentityAgent ~/agent.sock\n  IdentitiesOnly yes\n"
            f"  IdentityFile {key}\n  IdentityFile {locked}\n"
            "Host gone\n  IdentityAgent ~/no-agent-here.sock\n"
            f"Host *\n  IdentityFile {key}\n"
        )
        monkeypatch.setenv("MY_AGENT", str(bare_home / "agent.sock"))
        tilde, variable, narrow, gone = ssh_targets(
            sky.SSH(hosts=["tilde", "variable", "narrow", "gone"])
        )
        assert tilde.login.agent == variable.login.agent == str(bare_home / "agent.sock")
        assert tilde.login.agent_only is None  # every key the agent holds
        # IdentitiesOnly: the agent's keys that the identity files are (a protected one
        # known by its .pub), and no other.
        public = {_transport.read_public_key(f"{path}.pub") for path in (key, locked)}
        assert narrow.login.agent_only == frozenset(public)
        assert "the SSH agent's keys that the identity files name" in narrow.login.tried
        assert gone.login.agent is None  # nothing runs there: the key files still do
        assert gone.login.tried == str(key)
    finally:
        sock.close()


def test_proxy_command_is_the_way_to_a_host_or_to_its_first_jump_host(bare_home: Path) -> None:
    _keygen(bare_home / ".ssh" / "id_ed25519")
    (bare_home / ".ssh" / "config").write_text(
        "Host tunnelled\n  HostName 10.0.0.9\n  Port 2200\n  User ann\n"
        "  ProxyCommand cloudflared access ssh --hostname %h:%p --user %r\n"
        "Host behind\n  ProxyJump tunnelled\n"
        "Host both\n  ProxyJump tunnelled\n  ProxyCommand nc %h %p\n"
        "Host deeper\n  ProxyJump other,tunnelled\n"
    )
    tunnelled, behind = ssh_targets(sky.SSH(hosts=["tunnelled", "behind"]))
    assert tunnelled.login.proxy_command == (
        "cloudflared access ssh --hostname 10.0.0.9:2200 --user ann"  # tokens expanded
    )
    assert behind.login.proxy_command is None
    assert behind.jumps[0].login.proxy_command == tunnelled.login.proxy_command
    # SSH(proxy_jump=...) is the way there instead, as ssh -J is.
    (given,) = ssh_targets(sky.SSH(hosts=["tunnelled"], proxy_jump="gw"))
    assert given.login.proxy_command is None
    assert [h.host for h in given.jumps] == ["gw"]
    with pytest.raises(ValueError, match=r"both has both a ProxyJump .* and a ProxyCommand"):
        ssh_targets(sky.SSH(hosts=["both"]))
    with pytest.raises(ValueError, match=r"the jump host 10\.0\.0\.9 .* has a ProxyCommand, which"):
        ssh_targets(sky.SSH(hosts=["deeper"]))


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


def test_an_environment_built_ahead_is_the_bootstraps_environment_steps_alone() -> None:
    env = Environment(pip=("six==1.16.0",), key="k1", python_version="3.12")
    ahead = environment_bootstrap(workdir="/w", python="python3", environment=env)
    full = worker_bootstrap(
        workdir="/w", python="python3", secret="s", config={}, start_timeout=1, environment=env
    )
    subprocess.run(["bash", "-n"], input=ahead, text=True, check=True)
    steps = ahead.removesuffix("echo SKYWARD_WORKER_READY\n")
    assert steps in full  # the same steps, so the worker's bootstrap finds them done
    assert "worker.json" not in ahead  # no worker is started
    assert "secret" not in ahead
    assert ahead.endswith("echo SKYWARD_WORKER_READY\n")


def test_skyward_source_pins_the_exact_version_or_ships_this_checkout() -> None:
    pypi = _source.skyward_package("pypi")
    assert pypi.requirements[0] == f"skyward=={sky.__version__}"  # never unpinned
    assert pypi.requirements[1].startswith("cloudpickle==")
    assert pypi.wheels == ()
    assert _source.project_dir() == Path(__file__).resolve().parents[2]  # an editable install
    with pytest.raises(ValueError, match=r'skyward_source="github"\) is not supported'):
        _source.skyward_package("github")


def test_the_wheel_of_this_checkout_is_built_once_for_its_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    built: list[Path] = []
    builder = _source._run_builder

    def counted(project: Path) -> tuple[str, bytes]:
        built.append(project)
        return builder(project)

    monkeypatch.setattr(_source, "_run_builder", counted)
    project = _source.project_dir()
    assert project is not None
    build = _source._build_wheel.__wrapped__  # as a new process would: no in-process cache
    name, data = build(project, ())
    assert name.startswith(f"skyward-{sky.__version__}-")
    assert name.endswith(".whl")
    (kept,) = (tmp_path / ".skyward" / "wheels").glob("*/skyward-*.whl")
    assert kept.read_bytes() == data
    assert build(project, ()) == (name, data)  # the next process reads it
    assert built == [project]
    # A kept wheel being written (a partial file) is not one.
    (kept.parent / kept.name).unlink()
    (kept.parent / ".partial-x").write_bytes(data[:10])
    assert build(project, ()) == (name, data)
    assert built == [project, project]


def test_the_wheel_cache_follows_the_sources_content_and_keeps_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    source = project / "src" / "pkg" / "a.py"
    source.write_text("A = 1\n")
    key = _source._content_key(project)
    os.utime(source, (1, 1))  # touched: the same content
    (project / "src" / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"x")
    assert _source._content_key(project) == key
    source.write_text("A = 2\n")
    assert _source._content_key(project) != key
    (project / "src" / "pkg" / "data.json").write_text("{}")  # data files go in the wheel
    changed = _source._content_key(project)
    (project / "README.md").write_text("hi")
    assert _source._content_key(project) != changed

    # Past _WHEELS_KEPT, the least recently used go.
    cache = tmp_path / "wheels"
    for age in range(6):
        folder = cache / f"old{age}"
        folder.mkdir(parents=True)
        (folder / "skyward-0-py3-none-any.whl").write_bytes(b"w")
        os.utime(folder, (1000 - age, 1000 - age))
    assert _source._cached_wheel(cache / "old5") == ("skyward-0-py3-none-any.whl", b"w")
    _source._keep_wheel(cache / "new", "skyward-1-py3-none-any.whl", b"new")
    assert sorted(p.name for p in cache.iterdir()) == ["new", "old0", "old1", "old5"]
    assert _source._cached_wheel(cache / "new") == ("skyward-1-py3-none-any.whl", b"new")
    assert _source._cached_wheel(cache / "missing") is None


def test_local_without_a_development_install_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_source, "project_dir", lambda: None)
    with pytest.raises(ValueError, match=r"not a development install .* skyward_source='pypi'"):
        _source.check_source("local")
    assert _source.skyward_package("auto").requirements[0] == f"skyward=={sky.__version__}"
    assert sys.modules["skyward_trio._source"] is _source


def _apt(
    tmp_path: Path,
    *,
    uid: int,
    installed: set[str],
    sudo_ok: bool = True,
    apt: bool = True,
    built: bool = False,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the ``apt`` phase with fake ``id``, ``sudo``, ``dpkg-query`` and ``apt-get`` (which
    record their calls): never the machine's own."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("grep", "env", "cat", "true"):
        os.symlink(shutil.which(tool) or tool, bin_dir / tool)
    log = tmp_path / "calls.log"
    _fake(bin_dir, "id", f'if [ "$1" = -u ]; then echo {uid}; else echo alice; fi')
    _fake(
        bin_dir,
        "sudo",
        f'echo "sudo $*" >> {log}\n' + ('shift; exec "$@"' if sudo_ok else "exit 1"),
    )
    status = " ".join(sorted(installed))
    _fake(
        bin_dir,
        "dpkg-query",
        f'echo "dpkg-query $*" >> {log}\n'
        f'case " {status} " in *" ${{@: -1}} "*) echo "install ok installed" ;; '
        '*) echo "deinstall ok config-files" ;; esac',
    )
    if apt:
        _fake(bin_dir, "apt-get", f'echo "apt-get DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> {log}')
    marker = tmp_path / "complete"
    if built:
        marker.touch()
    steps = _apt_steps(["git", "ffmpeg"], 42, built=shlex.quote(str(marker)))
    script = (
        "set -eEu\ncurrent=setup\n"
        'phase() { current=$1; echo "SKYWARD_PHASE $1"; }\n'
        "trap 'echo \"SKYWARD_FAILED $current\" >&2' ERR\n"
        f"{steps}\necho DONE\n"
    )
    done = subprocess.run(
        [shutil.which("bash") or "bash", "-c", script],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def test_apt_does_nothing_when_every_package_is_installed(tmp_path: Path) -> None:
    done, calls = _apt(tmp_path, uid=1000, installed={"git", "ffmpeg"}, sudo_ok=False)
    assert done.returncode == 0, done.stderr
    assert "apt: git ffmpeg already installed: nothing to do" in done.stdout
    assert calls == ["dpkg-query -W -f=${Status} git", "dpkg-query -W -f=${Status} ffmpeg"]


def test_apt_is_skipped_where_the_image_is_built(tmp_path: Path) -> None:
    done, calls = _apt(tmp_path, uid=1000, installed=set(), built=True)
    assert done.returncode == 0, done.stderr
    assert "apt: this image is installed here already, git ffmpeg with it: skipped" in done.stdout
    assert calls == []


def test_apt_installs_what_is_missing_as_root_noninteractively_waiting_for_the_lock(
    tmp_path: Path,
) -> None:
    done, calls = _apt(tmp_path, uid=0, installed={"git"})
    assert done.returncode == 0, done.stderr
    assert "apt: installing ffmpeg" in done.stdout
    apt = "apt-get DEBIAN_FRONTEND=noninteractive -q -o DPkg::Lock::Timeout=42"
    keep = "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
    assert calls[2:] == [f"{apt} update", f"{apt} -y {keep} install ffmpeg"]


def test_apt_goes_through_passwordless_sudo_for_another_user(tmp_path: Path) -> None:
    done, calls = _apt(tmp_path, uid=1000, installed=set())
    assert done.returncode == 0, done.stderr
    apt = "env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=42"
    assert calls[2] == "sudo -n true"
    assert calls[3] == f"sudo -n {apt} update"
    assert calls[5].endswith("install git ffmpeg")


def test_apt_without_root_or_sudo_fails_in_its_phase_naming_the_fix(tmp_path: Path) -> None:
    done, calls = _apt(tmp_path, uid=1000, installed={"git"}, sudo_ok=False)
    assert done.returncode != 0
    assert "SKYWARD_FAILED apt" in done.stderr
    assert (
        "Image(apt=...) installs ffmpeg with apt-get, which needs root: alice is not root and "
        "may not sudo without a password here. Log in as root, give alice passwordless sudo "
        "(sudo -n), or install them yourself and drop them from Image(apt=...)"
    ) in done.stderr
    assert not any(call.startswith("apt-get") for call in calls)


def test_apt_on_a_machine_without_apt_get_says_so(tmp_path: Path) -> None:
    done, _ = _apt(tmp_path, uid=0, installed=set(), apt=False)
    assert done.returncode != 0
    assert "SKYWARD_FAILED apt" in done.stderr
    assert "needs apt-get, and this machine has none (not Debian or Ubuntu)" in done.stderr


def test_apt_comes_first_and_is_part_of_the_environment_key() -> None:
    env = Environment(pip=("six",), key="k2", python_version="3.12", apt=("git",), apt_wait=7)
    script = worker_bootstrap(
        workdir="/w", python="python3", secret="s", config={}, start_timeout=1, environment=env
    )
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    phases = [line.split()[1] for line in script.splitlines() if line.startswith("phase ")]
    assert phases == ["apt", "python", "uv", "venv"]
    assert 'if [ -f "$HOME/.skyward/envs/k2"/.skyward-complete ]; then' in script
    plain = env_hash("3.12", ["six"], [])
    assert plain == env_hash("3.12", ["six"], [], ())  # images without apt keep their key
    assert env_hash("3.12", ["six"], [], ["git"]) not in (
        plain,
        env_hash("3.12", ["six"], [], ["vim"]),
    )
