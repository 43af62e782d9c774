"""``sky.Vultr``'s pure parts: its config, Vultr's Cloud GPU plans as offers, what an
instance's answer says, what ``Compute`` refuses before anything is created,
``[providers.X] type = "vultr"`` in skyward.toml, and the CLI reading the key from its own
shell.

Creating instances through the API runs against a fake Vultr in
``tests/integration/test_vultr.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward import _cli
from skyward_trio import _checks, _vultr, config

KEY = "VULTRUNITTESTKEY0123456789"
A = sky.accelerators


def test_the_api_key_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.Vultr(api_key=KEY)
    assert KEY not in repr(provider)
    assert KEY not in repr(sky.Spec(provider=provider, accelerator=A.A100()))
    monkeypatch.setenv("VULTR_API_KEY", "from-env")
    assert sky.Vultr().resolved_api_key() == "from-env"
    monkeypatch.delenv("VULTR_API_KEY")
    with pytest.raises(ValueError, match="export VULTR_API_KEY") as raised:
        sky.Vultr().resolved_api_key()
    assert "sky.Vultr(api_key=...)" in str(raised.value)
    with pytest.raises(ValueError, match="non-empty string"):
        sky.Vultr(api_key="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"region": "EWR"}, ValueError, r"not a region id .* region='ewr'"),
        ({"region": 1}, TypeError, "region"),
        ({"os_id": "ubuntu"}, TypeError, r"os_id must be an int.*os_id=1743"),
        ({"os_id": True}, TypeError, "os_id must be an int"),
        ({"os_id": 0}, ValueError, "must be above 0"),
        ({"username": "Root User"}, ValueError, "not a login name"),
        ({"api_url": "api.vultr.com"}, ValueError, "not an http"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.Vultr(**kwargs)


def plan(plan_id: str, gpu: str, vram: int, **fields: Any) -> dict[str, Any]:
    """A plan as ``GET /plans?type=vcg`` lists it (RAM in MB, disk in GB)."""
    return {
        "id": plan_id,
        "vcpu_count": 12,
        "ram": 122880,
        "disk": 1400,
        "monthly_cost": 1460,
        "type": "vcg",
        "locations": ["ewr", "ams"],
        "gpu_vram_gb": vram,
        "gpu_type": gpu,
        **fields,
    }


def test_a_whole_gpu_plan_is_an_offer_and_a_slice_is_not() -> None:
    offer = _vultr._offer(plan("vcg-a100-12c-120g-160vram", "NVIDIA_A100", 160), ["ams"])
    assert offer is not None
    assert offer.accelerator == A.A100(count=2, memory="80GB")
    assert (offer.vcpus, offer.memory_gb, offer.disk_gb) == (12.0, 120.0, 1400.0)
    assert (offer.on_demand_price, offer.regions) == (2.0, ("ams",))  # monthly / 730
    hourly = _vultr._offer(plan("p", "NVIDIA_L40S", 48, hourly_cost=1.67), ["ewr"])
    assert hourly is not None
    assert hourly.on_demand_price == 1.67  # the hourly cost, when listed
    nowhere = _vultr._offer(plan("p", "NVIDIA_A40", 48), [])
    assert nowhere is not None
    assert (nowhere.regions, nowhere.on_demand_price) == ((), None)
    assert _vultr._offer(plan("slice", "NVIDIA_A100", 10), ["ewr"]) is None
    assert _vultr._offer(plan("odd", "NVIDIA_RTX_X", 24), ["ewr"]) is None
    assert _vultr._offer(plan("none", "NVIDIA_A16", 0), ["ewr"]) is None


def test_an_instance_answer_says_its_state_and_address() -> None:
    found = _vultr._instance(
        {
            "id": "cb676a46-66fd-4dfb-b839-443f2e6c0b60",
            "label": "skyward-j-0-1",
            "status": "active",
            "power_status": "running",
            "main_ip": "192.0.2.10",
            "internal_ip": "",
        }
    )
    assert found is not None
    assert (found.name, found.status, found.power_status, found.ip, found.private_ip) == (
        "skyward-j-0-1",
        "active",
        "running",
        "192.0.2.10",
        None,
    )
    pending = _vultr._instance({"id": "x", "status": "pending", "main_ip": "0.0.0.0"})
    assert pending is not None
    assert pending.ip is None  # no address yet
    assert _vultr._instance({"error": "Invalid instance-id.", "status": 404}) is None


def test_what_compute_refuses_before_creating() -> None:
    with pytest.raises(ValueError, match="rents Cloud GPU instances"):
        _checks.check_spec(sky.Spec(provider=sky.Vultr()))
    with pytest.raises(ValueError, match=r"whole GPUs .*; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.Vultr(), accelerator=A.A100(count=0.5)))


def test_a_providers_table_of_type_vultr(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.vu]\ntype = "vultr"\nregion = "ams"\nos_id = 2284\n'
        '[pools.train]\nprovider = "vu"\naccelerator = "A100"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.Vultr(region="ams", os_id=2284)
    project.write_text('[providers.vu]\ntype = "vultr"\nregion = "Amsterdam"\n')
    with pytest.raises(config.ConfigError, match=r"providers\.vu\.region"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_key_of_its_own_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sky compute create`` reads VULTR_API_KEY where it runs, for a server started
    elsewhere; a key the file gives, or none anywhere, is left as it is."""
    spec = sky.Spec(provider=sky.Vultr(region="ewr"), accelerator=A.A100())
    monkeypatch.setenv("VULTR_API_KEY", "from-this-shell")
    sent = _cli._keyed(spec)
    assert sent.provider == sky.Vultr(region="ewr", api_key="from-this-shell")
    given = sky.Spec(provider=sky.Vultr(api_key="from-file"), accelerator=A.A100())
    assert _cli._keyed(given).provider.api_key == "from-file"
    monkeypatch.delenv("VULTR_API_KEY")
    assert _cli._keyed(spec).provider.api_key is None
