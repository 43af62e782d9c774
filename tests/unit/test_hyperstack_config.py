"""``sky.Hyperstack``'s pure parts: its config, Hyperstack's flavors and pricebook as
offers, what a VM's answer says, what ``Compute`` refuses before anything is created,
``[providers.X] type = "hyperstack"`` in skyward.toml, and the CLI reading the key from its
own shell.

Creating VMs through the API runs against a fake Hyperstack in
``tests/integration/test_hyperstack.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward import _cli
from skyward_trio import _checks, config
from skyward_trio._hyperstack import offers_of, vm_of

KEY = "hs_unit_test_key_0123456789"
A = sky.accelerators


def test_the_api_key_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.Hyperstack(api_key=KEY)
    assert KEY not in repr(provider)
    assert KEY not in repr(sky.Spec(provider=provider, accelerator=A.H100()))
    monkeypatch.setenv("HYPERSTACK_API_KEY", "from-env")
    assert sky.Hyperstack().resolved_api_key() == "from-env"
    monkeypatch.delenv("HYPERSTACK_API_KEY")
    with pytest.raises(ValueError, match="export HYPERSTACK_API_KEY") as raised:
        sky.Hyperstack().resolved_api_key()
    assert "sky.Hyperstack(api_key=...)" in str(raised.value)
    with pytest.raises(ValueError, match="non-empty string"):
        sky.Hyperstack(api_key="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"region": "canada-1"}, ValueError, r"not a region name .* region='CANADA-1'"),
        ({"region": 1}, TypeError, "region"),
        ({"image": ""}, ValueError, "image must not be empty"),
        ({"username": "Root User"}, ValueError, "not a login name"),
        ({"ssh_cidr": "everywhere"}, ValueError, "ssh_cidr='203.0.113.7/32'"),
        ({"api_url": "infrahub-api.nexgencloud.com"}, ValueError, "not an http"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.Hyperstack(**kwargs)


def flavor(name: str, gpu: str, count: int, region: str, stock: bool = True) -> dict[str, Any]:
    """A flavor in one region as ``GET /core/flavors`` lists it (GB of RAM and disk)."""
    return {
        "name": name,
        "region_name": region,
        "cpu": 31 * count,
        "ram": 180 * count,
        "disk": 100,
        "ephemeral": 750,
        "gpu": gpu,
        "gpu_count": count,
        "stock_available": stock,
    }


PRICES = {"H100-80G-SXM5": 2.4, "A100-80G-PCIe": 1.35}


def test_a_flavor_is_an_offer_with_its_gpus_regions_in_stock_and_price() -> None:
    flavors = [
        flavor("n3-H100-SXM5x8", "H100-80G-SXM5", 8, "CANADA-1"),
        flavor("n3-H100-SXM5x8", "H100-80G-SXM5", 8, "NORWAY-1", stock=False),
        flavor("n3-H100-SXM5x8", "H100-80G-SXM5", 8, "US-1"),
        flavor("n3-A100x1", "A100-80G-PCIe", 1, "NORWAY-1", stock=False),
        flavor("n3-L40x1", "L40", 1, "CANADA-1"),  # no price in the pricebook
        flavor("n3-A100x1-spot", "A100-80G-PCIe-spot", 1, "CANADA-1"),
        flavor("n3-RTX-A4000x1", "RTX-A4000", 1, "CANADA-1"),
        flavor("n1-cpu-large", "", 0, "CANADA-1"),
    ]
    offers = {o.name: o for o in offers_of(sky.Hyperstack(), flavors, PRICES)}
    assert list(offers) == ["n3-H100-SXM5x8", "n3-A100x1", "n3-L40x1"]
    h100 = offers["n3-H100-SXM5x8"]
    assert h100.accelerator == A.H100(count=8, form_factor="SXM")
    assert (h100.vcpus, h100.memory_gb, h100.disk_gb) == (248.0, 1440.0, 100.0)
    assert (h100.on_demand_price, h100.spot_price) == (19.2, None)
    assert (h100.architecture, h100.regions) == ("x86_64", ("CANADA-1", "US-1"))
    assert (offers["n3-A100x1"].regions, offers["n3-A100x1"].on_demand_price) == ((), None)
    assert offers["n3-L40x1"].on_demand_price is None  # unpriced: never chosen
    pinned = {o.name: o for o in offers_of(sky.Hyperstack(region="US-1"), flavors, PRICES)}
    assert pinned["n3-H100-SXM5x8"].regions == ("US-1",)
    assert pinned["n3-A100x1"].regions == ()


def test_a_vm_answer_says_its_status_and_addresses() -> None:
    found = vm_of(
        {"id": 4101, "name": "skyward-j-0-1", "status": "ACTIVE", "floating_ip": "1.2.3.4"}
    )
    assert found is not None
    assert (found.id, found.status, found.floating_ip, found.fixed_ip) == (
        "4101",
        "ACTIVE",
        "1.2.3.4",
        None,
    )
    building = vm_of({"id": 7, "status": "BUILD", "floating_ip": "", "fixed_ip": "10.0.0.5"})
    assert building is not None
    assert (building.floating_ip, building.fixed_ip) == (None, "10.0.0.5")
    assert vm_of({"id": "7", "status": "ACTIVE"}) is None  # ids are numbers
    assert vm_of({"status": False, "message": "not found"}) is None


def test_what_compute_refuses_before_creating() -> None:
    with pytest.raises(ValueError, match="rents GPU virtual machines"):
        _checks.check_spec(sky.Spec(provider=sky.Hyperstack()))
    with pytest.raises(ValueError, match=r"whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.Hyperstack(), accelerator=A.H100(count=0.5)))


def test_a_providers_table_of_type_hyperstack(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.hyper]\ntype = "hyperstack"\nregion = "CANADA-1"\nssh_cidr = "10.0.0.0/8"\n'
        '[pools.train]\nprovider = "hyper"\naccelerator = "H100"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.Hyperstack(region="CANADA-1", ssh_cidr="10.0.0.0/8")
    project.write_text('[providers.hyper]\ntype = "hyperstack"\nregion = "mars"\n')
    with pytest.raises(config.ConfigError, match=r"providers\.hyper\.region"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_key_of_its_own_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sky compute create`` reads HYPERSTACK_API_KEY where it runs, for a server started
    elsewhere; a key the file gives, or none anywhere, is left as it is."""
    spec = sky.Spec(provider=sky.Hyperstack(region="US-1"), accelerator=A.H100())
    monkeypatch.setenv("HYPERSTACK_API_KEY", "from-this-shell")
    sent = _cli._keyed(spec)
    assert sent.provider == sky.Hyperstack(region="US-1", api_key="from-this-shell")
    given = sky.Spec(provider=sky.Hyperstack(api_key="from-file"), accelerator=A.H100())
    assert _cli._keyed(given).provider.api_key == "from-file"
    monkeypatch.delenv("HYPERSTACK_API_KEY")
    assert _cli._keyed(spec).provider.api_key is None
