"""``sky.Lambda``'s pure parts: its config, Lambda's instance types as offers, what an
instance's answer says, what ``Compute`` refuses before anything is launched, and
``[providers.X] type = "lambda"`` in skyward.toml.

Launching through the API runs against a fake Lambda in ``tests/integration/test_lambda.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward_trio import _checks, config
from skyward_trio._lambda import _instance, _offer

KEY = "secret_unit_test_key_0123456789"
A = sky.accelerators


def test_the_api_key_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.Lambda(api_key=KEY)
    assert KEY not in repr(provider)
    assert KEY not in repr(sky.Spec(provider=provider, accelerator=A.A10()))
    monkeypatch.setenv("LAMBDA_API_KEY", "from-env")
    assert sky.Lambda().resolved_api_key() == "from-env"
    monkeypatch.delenv("LAMBDA_API_KEY")
    with pytest.raises(ValueError, match="export LAMBDA_API_KEY"):
        sky.Lambda().resolved_api_key()
    with pytest.raises(ValueError, match="non-empty string"):
        sky.Lambda(api_key="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"region": "US East"}, ValueError, r"not a region name. Pass e.g. region='us-east-1'"),
        ({"region": 1}, TypeError, "region"),
        ({"username": "Root User"}, ValueError, "not a login name"),
        ({"api_url": "cloud.lambda.ai"}, ValueError, "not an http"),
        ({"file_system": "datasets"}, ValueError, r"needs region=, the file system's region"),
        (
            {"file_system": "my data", "region": "us-east-1"},
            ValueError,
            r"file_system='my data'\): not a file system's name",
        ),
        ({"file_system": 3, "region": "us-east-1"}, TypeError, "file_system"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.Lambda(**kwargs)


def kind(name: str, regions: list[str], **specs: Any) -> dict[str, Any]:
    """An instance type as ``GET /instance-types`` lists it."""
    return {
        "instance_type": {
            "name": name,
            "price_cents_per_hour": 1432,
            "specs": {"vcpus": 240, "memory_gib": 1800, "storage_gib": 20480, "gpus": 8} | specs,
        },
        "regions_with_capacity_available": [{"name": r, "description": r} for r in regions],
    }


def test_an_instance_type_is_an_offer_with_its_gpus_regions_and_price() -> None:
    offer = _offer(sky.Lambda(), kind("gpu_8x_a100_80gb_sxm4", ["us-east-1", "us-west-2"]))
    assert offer is not None
    assert offer.accelerator == A.A100(count=8, memory="80GB", form_factor="SXM")
    assert (offer.vcpus, offer.memory_gb, offer.disk_gb) == (240.0, 1932.7, 21990.2)
    assert (offer.on_demand_price, offer.spot_price) == (14.32, None)
    assert (offer.architecture, offer.regions) == ("x86_64", ("us-east-1", "us-west-2"))
    pinned = _offer(sky.Lambda(region="us-west-2"), kind("gpu_8x_a100_80gb_sxm4", ["us-east-1"]))
    assert pinned is not None
    assert (pinned.regions, pinned.on_demand_price) == ((), None)  # no capacity: no price
    gh200 = _offer(sky.Lambda(), kind("gpu_1x_gh200", ["us-east-3"], gpus=1))
    assert gh200 is not None
    assert (gh200.accelerator, gh200.architecture) == (A.GH200(), "arm64")
    assert _offer(sky.Lambda(), kind("gpu_1x_rtx6000", ["us-east-1"])) is None  # not named
    assert _offer(sky.Lambda(), kind("cpu_4x_general", ["us-east-1"])) is None


def test_an_instance_answer_says_its_status_and_address() -> None:
    found = _instance({"id": "abc", "name": "skyward-j-0-1", "status": "active", "ip": "1.2.3.4"})
    assert found is not None
    assert (found.status, found.ip, found.private_ip) == ("active", "1.2.3.4", None)
    booting = _instance({"id": "abc", "status": "booting", "ip": None})
    assert booting is not None
    assert booting.ip is None
    assert _instance({"error": {"code": "global/object-does-not-exist"}}) is None


def test_what_compute_refuses_before_launching() -> None:
    with pytest.raises(ValueError, match="rents GPU instances"):
        _checks.check_spec(sky.Spec(provider=sky.Lambda()))
    with pytest.raises(ValueError, match=r"whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.Lambda(), accelerator=A.A10(count=0.5)))


def test_a_providers_table_of_type_lambda(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.lam]\ntype = "lambda"\nregion = "us-east-1"\n'
        '[pools.train]\nprovider = "lam"\naccelerator = "H100"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.Lambda(region="us-east-1")
