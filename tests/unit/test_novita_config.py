"""``sky.Novita``'s pure parts: its config, Novita's GPU products as offers, what an
instance's answer says, the startup command, what ``Compute`` refuses before anything is
created, ``[providers.X] type = "novita"`` in skyward.toml, and the CLI reading the key from
its own shell.

Creating instances through the API runs against a fake Novita in
``tests/integration/test_novita.py``.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import skyward as sky
from skyward import _cli
from skyward_trio import _checks, _novita, _transport, config

KEY = "sk_0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d"
A = sky.accelerators


def test_the_key_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.Novita(api_key=KEY)
    assert KEY not in repr(provider)
    assert KEY not in repr(sky.Spec(provider=provider, accelerator=A.RTX_4090()))
    monkeypatch.setenv("NOVITA_API_KEY", "from-env")
    assert sky.Novita().resolved_api_key() == "from-env"
    monkeypatch.delenv("NOVITA_API_KEY")
    with pytest.raises(ValueError, match="export NOVITA_API_KEY") as raised:
        sky.Novita().resolved_api_key()
    assert "sky.Novita(api_key=...)" in str(raised.value)
    with pytest.raises(ValueError, match="non-empty string"):
        sky.Novita(api_key="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cluster_id": "US CA"}, ValueError, r"has no spaces"),
        ({"cluster_id": ""}, ValueError, "cluster_id must not be empty"),
        ({"cluster_id": 3}, TypeError, "cluster_id"),
        ({"rootfs_gb": 5}, ValueError, r"rootfs_gb.*10 to 6144"),
        ({"rootfs_gb": 7000}, ValueError, r"at most 6144"),
        ({"docker_image": "Not An Image"}, ValueError, "not an image reference"),
        ({"api_url": "api.novita.ai"}, ValueError, "not an http"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.Novita(**kwargs)


def product(name: str, **fields: Any) -> dict[str, Any]:
    """A product as ``GET /products`` lists it (its price in 1/100,000 dollar)."""
    return {
        "id": "26",
        "name": name,
        "cpuPerGpu": 16,
        "memoryPerGpu": 62,
        "diskPerGpu": 250,
        "availableDeploy": True,
        "regions": ["US-CA-06"],
        "price": 35_000,
        **fields,
    }


def test_a_product_skyward_names_is_an_offer_of_whole_gpus() -> None:
    offer = _novita._offer(product("RTX 4090 24GB"), 2)
    assert offer is not None
    assert offer.accelerator == A.RTX_4090(count=2)
    assert (offer.vcpus, offer.memory_gb, offer.disk_gb) == (32.0, 124.0, 500.0)
    assert (offer.on_demand_price, offer.regions, offer.ref) == (0.7, ("US-CA-06",), "26")
    most = _novita._offer(product("H100 SXM 80GB"), 16)
    assert most is not None
    assert most.accelerator == A.H100(count=8, form_factor="SXM")  # the most one has
    small = _novita._offer(product("A100 SXM 40GB"), 1)
    assert small is not None
    assert small.accelerator == A.A100(form_factor="SXM", memory="40GB")
    assert _novita._offer(product("RTX 3090 24GB"), 1) is None  # not a GPU Skyward names
    assert _novita._offer(product("RTX 4090 24GB", availableDeploy=False), 1) is None
    assert _novita._offer(product("RTX 4090 24GB", price=0), 1) is None
    assert _novita._offer(product("RTX 4090"), 1) is None  # no memory: not a product name


def test_an_instance_answer_says_its_status_and_ssh_endpoint() -> None:
    found = _novita._instance(
        {
            "id": "a1b2",
            "name": "skyward-j-0-1",
            "status": "running",
            "portMappings": [
                {"port": 8888, "endpoint": "192.0.2.10:31000", "type": "http"},
                {"port": 22, "endpoint": "192.0.2.10:31022", "type": "tcp"},
            ],
            "statusError": {"state": "", "message": ""},
        }
    )
    assert found is not None
    assert (found.name, found.status, found.ssh, found.error) == (
        "skyward-j-0-1",
        "running",
        ("192.0.2.10", 31022),
        None,
    )
    pulling = _novita._instance({"id": "a1b2", "status": "pulling", "portMappings": []})
    assert pulling is not None
    assert pulling.ssh is None
    failed = _novita._instance(
        {"id": "x", "status": "exited", "statusError": {"message": "image pull failed"}}
    )
    assert failed is not None
    assert failed.error == "image pull failed"
    assert _novita._instance({"code": 404, "reason": "INSTANCE_NOT_FOUND"}) is None


def test_the_startup_command_sets_up_the_keys_and_runs_sshd(tmp_path: Path) -> None:
    """Run for real with a stand-in ``sshd`` that reports how it was started."""
    client, host = _transport.generate_key(), _transport.generate_key()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "sshd"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SKYWARD_AUTHORIZED_KEY": _transport.public_openssh(client),
        "SKYWARD_HOST_KEY": base64.b64encode(_transport.private_openssh(host)).decode(),
    }
    done = subprocess.run(
        ["sh", "-c", _novita.startup_command()], env=env, capture_output=True, check=True
    )
    args = done.stdout.decode().splitlines()
    assert args[:2] == ["-D", "-e"]
    assert f"HostKey={home}/.ssh/skyward_host_key" in args
    assert f"AuthorizedKeysFile={home}/.ssh/authorized_keys" in args
    assert "PasswordAuthentication=no" in args
    written = (home / ".ssh" / "authorized_keys").read_text()
    assert written == _transport.public_openssh(client) + "\n"
    host_file = home / ".ssh" / "skyward_host_key"
    installed = asyncssh.import_private_key(host_file.read_bytes())
    assert _transport.public_openssh(installed) == _transport.public_openssh(host)
    assert host_file.stat().st_mode & 0o077 == 0  # sshd refuses a host key others can read
    assert "'" not in _novita.STARTUP  # it travels inside single quotes


def test_what_compute_refuses_before_creating() -> None:
    with pytest.raises(ValueError, match=r"rents GPU instances .*accelerators\.RTX_4090\(\)"):
        _checks.check_spec(sky.Spec(provider=sky.Novita()))
    with pytest.raises(ValueError, match=r"Novita rents whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.Novita(), accelerator=A.L40S(count=0.5)))


def test_a_providers_table_of_type_novita(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.nv]\ntype = "novita"\ncluster_id = "US-CA-06"\nrootfs_gb = 100\n'
        '[pools.train]\nprovider = "nv"\naccelerator = "RTX_4090"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.Novita(cluster_id="US-CA-06", rootfs_gb=100)
    project.write_text('[providers.nv]\ntype = "novita"\nrootfs_gb = 1\n')
    with pytest.raises(config.ConfigError, match=r"providers\.nv\.rootfs_gb"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_key_of_its_own_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sky compute create`` reads NOVITA_API_KEY where it runs, for a server started
    elsewhere; a key the file gives, or none anywhere, is left as it is."""
    spec = sky.Spec(provider=sky.Novita(cluster_id="US-CA-06"), accelerator=A.RTX_4090())
    monkeypatch.setenv("NOVITA_API_KEY", "from-this-shell")
    sent = _cli._keyed(spec)
    assert sent.provider == sky.Novita(cluster_id="US-CA-06", api_key="from-this-shell")
    given = sky.Spec(provider=sky.Novita(api_key="from-file"), accelerator=A.RTX_4090())
    assert _cli._keyed(given).provider.api_key == "from-file"
    monkeypatch.delenv("NOVITA_API_KEY")
    assert _cli._keyed(spec).provider.api_key is None
