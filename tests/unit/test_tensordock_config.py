"""``sky.TensorDock``'s pure parts: its config, a location's GPUs as offers, what a VM's
answer says, what ``Compute`` refuses before anything is created, ``[providers.X] type =
"tensordock"`` in skyward.toml, and the CLI reading the token from its own shell.

Creating VMs through the API runs against a fake TensorDock in
``tests/integration/test_tensordock.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward import _cli
from skyward_trio import _checks, _tensordock, config

TOKEN = "td-token-never-shown"
A = sky.accelerators


def test_the_token_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.TensorDock(api_key=TOKEN)
    assert TOKEN not in repr(provider)
    assert TOKEN not in repr(sky.Spec(provider=provider, accelerator=A.RTX_4090()))
    monkeypatch.setenv("TENSORDOCK_API_TOKEN", "from-env")
    assert sky.TensorDock().resolved_api_key() == "from-env"
    assert provider.resolved_api_key() == TOKEN
    monkeypatch.delenv("TENSORDOCK_API_TOKEN")
    with pytest.raises(ValueError, match="export TENSORDOCK_API_TOKEN") as raised:
        sky.TensorDock().resolved_api_key()
    assert "sky.TensorDock(api_key=...)" in str(raised.value)
    with pytest.raises(ValueError, match="non-empty string"):
        sky.TensorDock(api_key="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"location": "Austin, Texas"}, ValueError, r"not a location id .*location=None"),
        ({"location": 3}, TypeError, "location must be a str"),
        ({"image": "ubuntu 24.04"}, ValueError, r"not an image name\. .*ubuntu2404"),
        ({"storage_gb": 50}, ValueError, r"storage_gb must be >= 100"),
        ({"vcpus_per_gpu": 0}, ValueError, "vcpus_per_gpu must be >= 1"),
        ({"ram_gb_per_gpu": 1.5}, TypeError, "ram_gb_per_gpu must be an int"),
        ({"username": "Some User"}, ValueError, "not a login name"),
        ({"api_url": "dashboard.tensordock.com"}, ValueError, "not an http"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.TensorDock(**kwargs)


def _gpu(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "v0Name": name,
        "max_count": 4,
        "price_per_hr": 2.0,
        "resources": {"max_vcpus": 12, "max_ram_gb": 256},
        "pricing": {"per_vcpu_hr": 0.01, "per_gb_ram_hr": 0.001, "per_gb_storage_hr": 0.0002},
        **fields,
    }


def test_a_locations_gpu_skyward_names_is_an_offer() -> None:
    where = {"id": "loc-1", "city": "Austin"}
    provider = sky.TensorDock(api_key=TOKEN)
    offer = _tensordock._offer(provider, where, _gpu("h100-sxm5-80gb"), 2)
    assert offer is not None
    assert offer.accelerator == A.H100(count=2, form_factor="SXM")
    assert (offer.ref, offer.regions) == ("h100-sxm5-80gb", ("loc-1",))
    # 16 vCPUs asked, 12 the most the location deploys; 64 GB of RAM; 100 GB of storage.
    assert (offer.vcpus, offer.memory_gb, offer.disk_gb) == (12.0, 64.0, 100.0)
    assert offer.on_demand_price == pytest.approx(4.0 + 12 * 0.01 + 64 * 0.001 + 100 * 0.0002)
    # Not a GPU Skyward names; fewer than asked deployable; no price; no location id.
    assert _tensordock._offer(provider, where, _gpu("geforcertx3090-pcie-24gb"), 1) is None
    assert _tensordock._offer(provider, where, _gpu("h100-sxm5-80gb", max_count=1), 2) is None
    assert _tensordock._offer(provider, where, _gpu("h100-sxm5-80gb", price_per_hr=0), 1) is None
    assert _tensordock._offer(provider, {"city": "X"}, _gpu("h100-sxm5-80gb"), 1) is None
    a100 = _tensordock._offer(provider, where, _gpu("a100-pcie-40gb"), 1)
    assert a100 is not None
    assert a100.accelerator == A.A100(form_factor="PCIe", memory="40GB")


def test_a_vm_answer_says_its_status_and_address() -> None:
    running = _tensordock._instance(
        {
            "type": "virtualmachine",
            "id": "vm-1",
            "attributes": {"name": "skyward-j-0-1", "status": "running", "ipAddress": "1.2.3.4"},
        }
    )
    assert running == _tensordock._Instance("vm-1", "skyward-j-0-1", "running", "1.2.3.4")
    flat = _tensordock._instance({"id": "vm-2", "name": "n", "status": "starting"})
    assert flat == _tensordock._Instance("vm-2", "n", "starting", None)
    assert _tensordock._instance({"errors": []}) is None
    assert _tensordock._instance(None) is None


def test_what_compute_refuses_before_creating() -> None:
    with pytest.raises(ValueError, match=r"rents GPU VMs .*accelerators\.RTX_4090\(\)"):
        _checks.check_spec(sky.Spec(provider=sky.TensorDock()))
    with pytest.raises(ValueError, match=r"TensorDock rents whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.TensorDock(), accelerator=A.L40(count=0.5)))
    own_store = sky.Volume(bucket="data", mount="/data")
    with pytest.raises(ValueError, match="TensorDock has none; pass storage="):
        _checks.check_spec(
            sky.Spec(provider=sky.TensorDock(), accelerator=A.L40(), volumes=[own_store])
        )


def test_a_providers_table_of_type_tensordock(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.td]\ntype = "tensordock"\nlocation = "loc-austin"\nstorage_gb = 200\n'
        '[pools.train]\nprovider = "td"\naccelerator = "RTX_4090"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.TensorDock(location="loc-austin", storage_gb=200)
    project.write_text('[providers.td]\ntype = "tensordock"\nstorage_gb = 20\n')
    with pytest.raises(config.ConfigError, match=r"providers\.td\.storage_gb"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_token_of_its_own_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sky compute create`` reads TENSORDOCK_API_TOKEN where it runs, for a server
    started elsewhere; what the file gives, or none anywhere, is left as it is."""
    spec = sky.Spec(provider=sky.TensorDock(location="loc-austin"), accelerator=A.L40())
    monkeypatch.setenv("TENSORDOCK_API_TOKEN", "from-this-shell")
    assert _cli._keyed(spec).provider == sky.TensorDock(
        location="loc-austin", api_key="from-this-shell"
    )
    given = sky.Spec(provider=sky.TensorDock(api_key="from-file"), accelerator=A.L40())
    assert _cli._keyed(given).provider.api_key == "from-file"
    monkeypatch.delenv("TENSORDOCK_API_TOKEN")
    assert _cli._keyed(spec).provider.api_key is None
