"""``sky.VastAI``'s pure parts: its config, Vast's machines as offers, what an instance's
answer says of its address, what ``Compute`` refuses before anything is rented, and
``[providers.X] type = "vastai"`` in skyward.toml.

Renting through the API runs against a fake Vast.ai in ``tests/integration/test_vastai.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

import skyward as sky
from skyward_trio import _checks, config
from skyward_trio._vastai import _ask, _instance, _offer

KEY = "vast_unit_test_key_0123456789"
A = sky.accelerators


def test_the_api_key_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.VastAI(api_key=KEY)
    assert KEY not in repr(provider)
    assert KEY not in repr(sky.Spec(provider=provider, accelerator=A.RTX_4090()))
    monkeypatch.setenv("VAST_API_KEY", "from-env")
    assert sky.VastAI().resolved_api_key() == "from-env"
    monkeypatch.delenv("VAST_API_KEY")
    with pytest.raises(ValueError, match="export VAST_API_KEY"):
        sky.VastAI().resolved_api_key()
    with pytest.raises(ValueError, match="non-empty string"):
        sky.VastAI(api_key="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"disk_gb": 0}, ValueError, "disk_gb"),
        ({"min_reliability": 1.5}, ValueError, "a score from 0 to 1"),
        ({"verified_only": "yes"}, TypeError, "True or False"),
        ({"docker_image": 3}, TypeError, "docker_image must be a str or a sky.DockerImage"),
        ({"api_url": "console.vast.ai"}, ValueError, "not an http"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.VastAI(**kwargs)


def machine(**fields: Any) -> dict[str, Any]:
    """A search answer's offer, as Vast.ai lists a machine."""
    return {
        "id": 4242,
        "gpu_name": "A100 SXM4",
        "num_gpus": 2,
        "gpu_ram": 81920,
        "cpu_cores_effective": 32.0,
        "cpu_ram": 258000,
        "disk_space": 500.0,
        "cpu_arch": "amd64",
        "dph_total": 2.2,
        "min_bid": 1.2,
        "geolocation": "US",
    } | fields


def test_a_machine_is_an_offer_with_what_it_has_and_its_prices() -> None:
    offer = _offer(machine())
    assert offer is not None
    assert offer.accelerator == A.A100(count=2, memory="80GB", form_factor="SXM")
    assert (offer.vcpus, offer.memory_gb, offer.disk_gb) == (32.0, 258.0, 500.0)
    assert (offer.on_demand_price, offer.spot_price) == (2.2, 1.2)
    assert offer.architecture == "x86_64"
    assert offer.regions == ("US",)
    assert (offer.ref, _ask(offer)) == ("4242", 4242)
    with pytest.raises(ValueError, match=r"not a Vast\.ai machine listed by its search"):
        _ask(attrs.evolve(offer, ref=None))
    small = _offer(machine(gpu_ram=40960, gpu_name="A100 PCIE"))
    assert small is not None
    assert small.accelerator == A.A100(count=2, memory="40GB", form_factor="PCIe")
    assert _offer(machine(gpu_name="GTX 1080")) is None  # no accelerator names it
    assert _offer(machine(min_bid=None)).spot_price is None  # type: ignore[union-attr]


def test_an_instance_is_reached_at_its_direct_port_else_through_vasts_proxy() -> None:
    direct = {
        "id": 7,
        "actual_status": "running",
        "public_ipaddr": "203.0.113.9 ",
        "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41022"}]},
        "ssh_host": "ssh4.vast.ai",
        "ssh_port": 17007,
        "dph_total": 0.4,
    }
    reached = _instance({"instances": direct})
    assert reached is not None
    assert (reached.host, reached.port, reached.status, reached.billed) == (
        "203.0.113.9",
        41022,
        "running",
        0.4,
    )
    proxied = _instance({"instances": direct | {"ports": {}}})
    assert proxied is not None
    assert (proxied.host, proxied.port) == ("ssh4.vast.ai", 17007)
    loading = _instance({"instances": {"id": 7, "actual_status": None, "ports": {}}})
    assert loading is not None
    assert (loading.status, loading.host, loading.port) == (None, None, None)
    assert _instance({"instances": None}) is None  # destroyed


def test_what_compute_refuses_before_renting() -> None:
    with pytest.raises(ValueError, match="rents GPU machines"):
        _checks.check_spec(sky.Spec(provider=sky.VastAI()))
    with pytest.raises(ValueError, match=r"whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.VastAI(), accelerator=A.L4(count=0.5)))


def test_a_providers_table_of_type_vastai(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.vast]\ntype = "vastai"\ndisk_gb = 80\nmin_reliability = 0.99\n'
        '[pools.train]\nprovider = "vast"\naccelerator = "RTX_4090"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.VastAI(disk_gb=80, min_reliability=0.99)
