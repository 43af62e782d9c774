"""``sky.MassedCompute``'s pure parts: its config, the GPU inventory as offers, what an
instance's answer says, the startup command, what ``Compute`` refuses before anything is
launched, ``[providers.X] type = "massedcompute"`` in skyward.toml, and the CLI reading the
key from its own shell.

Launching instances through the API runs against a fake Massed Compute in
``tests/integration/test_massedcompute.py``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward import _cli
from skyward_trio import _checks, _massedcompute, _transport, config

KEY = "mc_0123456789abcdef"
A = sky.accelerators


def test_the_key_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.MassedCompute(api_key=KEY)
    assert KEY not in repr(provider)
    assert KEY not in repr(sky.Spec(provider=provider, accelerator=A.L40S()))
    monkeypatch.setenv("MASSED_COMPUTE_API_KEY", "from-env")
    assert sky.MassedCompute().resolved_api_key() == "from-env"
    monkeypatch.delenv("MASSED_COMPUTE_API_KEY")
    with pytest.raises(ValueError, match="export MASSED_COMPUTE_API_KEY") as raised:
        sky.MassedCompute().resolved_api_key()
    assert "MassedCompute(api_key=...)" in str(raised.value)


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"api_key": ""}, ValueError, "api_key"),
        ({"image_id": 0}, ValueError, "image_id=184"),
        ({"image_id": "184"}, TypeError, "image_id"),
        ({"region": "us central"}, ValueError, "a region's name has no spaces"),
        ({"region": 3}, TypeError, "region"),
        ({"api_url": "vm.massedcompute.com"}, ValueError, "api_url="),
    ],
)
def test_bad_settings_are_refused_naming_the_argument_and_the_fix(
    fields: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match="MassedCompute") as raised:
        sky.MassedCompute(**fields)
    assert words in str(raised.value)


def test_products_are_named_gpus_times_a_model() -> None:
    assert _massedcompute.gpu_model("gpu_1x_l40s") == (A.L40S(), 1)
    assert _massedcompute.gpu_model("gpu_8x_h100") == (A.H100(), 8)
    assert _massedcompute.gpu_model("gpu_2x_a6000") == (A.RTX_A6000(), 2)
    assert _massedcompute.gpu_model("gpu_1x_l40s_b") == (A.L40S(), 1)
    assert _massedcompute.gpu_model("gpu_1x_a30") is None  # not one named here
    assert _massedcompute.gpu_model("cpu_16x") is None


def _entry(name: str, *, capacity: int = 3, regions: tuple[str, ...] = ("us-central-3",)) -> Any:
    return {
        "instance_type": {
            "name": name,
            "description": "",
            "price_cents_per_hour": 176,
            "specs": {"vcpu_count": 24, "memory_gib": 128, "storage_gb": 512},
        },
        "regions_with_capacity_available": [{"name": r, "description": ""} for r in regions],
        "capacity_available": capacity,
    }


def test_an_inventory_entry_with_capacity_is_an_offer() -> None:
    offer = _massedcompute._offer(_entry("gpu_2x_l40s"), None)
    assert offer is not None
    assert (offer.name, offer.ref, offer.on_demand_price) == ("gpu_2x_l40s", "gpu_2x_l40s", 1.76)
    assert offer.accelerator == A.L40S(count=2)
    assert (offer.vcpus, offer.memory_gb, offer.disk_gb) == (24.0, 128.0, 512.0)
    assert offer.regions == ("us-central-3",)
    assert _massedcompute._offer(_entry("gpu_2x_l40s", capacity=0), None) is None
    assert _massedcompute._offer(_entry("gpu_2x_l40s", regions=()), None) is None
    assert _massedcompute._offer(_entry("gpu_2x_l40s"), "us-east-1") is None
    assert _massedcompute._offer(_entry("gpu_1x_a30"), None) is None


def test_an_instance_is_up_once_active_booted_and_with_an_ip() -> None:
    body = {"uuid": "u-1", "name": "skyward-j-0-1", "ip": "", "status": "rented"}
    booting = _massedcompute._instance({**body, "os_booted": 0, "active": 1})
    assert booting is not None
    assert (booting.booted, booting.active, booting.ip) == (False, True, "")
    up = _massedcompute._instance({**body, "ip": "1.1.1.1", "os_booted": 1, "active": 1})
    assert up is not None
    assert (up.booted, up.active, up.ip) == (True, True, "1.1.1.1")
    assert _massedcompute._instance([]) is None  # what a get answers for no such instance
    assert _massedcompute._instance({"name": "no uuid"}) is None


def test_the_startup_command_carries_the_pool_key_and_the_host_key() -> None:
    pool = _transport.public_openssh(_transport.generate_key())
    host = _transport.generate_key()
    command = _massedcompute.startup_command(pool, host)
    assert command.startswith("sh -c '")
    assert command.endswith("'")
    assert command.count("'") == 2  # one argument for sh
    assert pool in command
    encoded = command.split('printf "%s" "', 1)[1].split('"', 1)[0]
    assert base64.b64decode(encoded).startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "-o Port=22" in command
    with pytest.raises(ValueError, match="a shell would read"):
        _massedcompute.startup_command("ssh-ed25519 AAAA' ; rm -rf /", host)


def test_what_compute_refuses_before_launching() -> None:
    provider = sky.MassedCompute(api_key=KEY)
    with pytest.raises(ValueError, match=r"rents GPU instances .*accelerators\.L40S\(\)"):
        _checks.check_spec(sky.Spec(provider=provider))
    with pytest.raises(ValueError, match=r"Massed Compute rents whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=provider, accelerator=A.L40S(count=0.5)))


def test_a_providers_table_of_type_massedcompute(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.mc]\ntype = "massedcompute"\nregion = "us-central-3"\nimage_id = 7\n'
        '[pools.train]\nprovider = "mc"\naccelerator = "L40S"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.MassedCompute(region="us-central-3", image_id=7)
    project.write_text('[providers.mc]\ntype = "massedcompute"\nregion = "us central"\n')
    with pytest.raises(config.ConfigError, match=r"providers\.mc\.region"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_key_of_its_own_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sky compute create`` reads MASSED_COMPUTE_API_KEY where it runs, for a server
    started elsewhere; a key the file gives, or none anywhere, is left as it is."""
    spec = sky.Spec(provider=sky.MassedCompute(region="us-central-3"), accelerator=A.L40S())
    monkeypatch.setenv("MASSED_COMPUTE_API_KEY", "from-this-shell")
    assert _cli._keyed(spec).provider == sky.MassedCompute(
        region="us-central-3", api_key="from-this-shell"
    )
    given = sky.Spec(provider=sky.MassedCompute(api_key="from-file"), accelerator=A.L40S())
    assert _cli._keyed(given).provider.api_key == "from-file"
    monkeypatch.delenv("MASSED_COMPUTE_API_KEY")
    assert _cli._keyed(spec).provider.api_key is None
