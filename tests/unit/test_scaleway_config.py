"""``sky.Scaleway``'s pure parts: its config, Scaleway's commercial types as offers, what an
Instance's answer says, what ``Compute`` refuses before anything is created,
``[providers.X] type = "scaleway"`` in skyward.toml, and the CLI reading the credentials
from its own shell.

Creating Instances through the API runs against a fake Scaleway in
``tests/integration/test_scaleway.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward import _cli
from skyward_trio import _checks, _scaleway, config

SECRET = "0b2f3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d"
PROJECT = "6a1b2c3d-4e5f-4a6b-9c8d-7e6f5a4b3c2d"
A = sky.accelerators


def test_the_secret_key_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.Scaleway(secret_key=SECRET, project_id=PROJECT)
    assert SECRET not in repr(provider)
    assert SECRET not in repr(sky.Spec(provider=provider, accelerator=A.L4()))
    monkeypatch.setenv("SCW_SECRET_KEY", "from-env")
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    assert sky.Scaleway().resolved_credentials() == ("from-env", PROJECT)
    monkeypatch.delenv("SCW_SECRET_KEY")
    with pytest.raises(ValueError, match="export SCW_SECRET_KEY") as raised:
        sky.Scaleway().resolved_credentials()
    assert "sky.Scaleway(secret_key=...)" in str(raised.value)
    monkeypatch.setenv("SCW_SECRET_KEY", "from-env")
    monkeypatch.delenv("SCW_DEFAULT_PROJECT_ID")
    with pytest.raises(ValueError, match="export SCW_DEFAULT_PROJECT_ID") as raised:
        sky.Scaleway().resolved_credentials()
    assert "sky.Scaleway(project_id=...)" in str(raised.value)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", "my-project")
    with pytest.raises(ValueError, match=r"from SCW_DEFAULT_PROJECT_ID\): not a Project id"):
        sky.Scaleway().resolved_credentials()
    with pytest.raises(ValueError, match="non-empty string"):
        sky.Scaleway(secret_key="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"zone": "fr-par"}, ValueError, r"not a zone .* zone='fr-par-2'"),
        ({"zone": "FR-PAR-2"}, ValueError, "not a zone"),
        ({"zone": 1}, TypeError, "zone"),
        ({"project_id": "Default"}, ValueError, r"not a Project id .*UUID"),
        ({"project_id": 7}, TypeError, "project_id must be a str"),
        ({"image": ""}, ValueError, "image must not be empty"),
        ({"username": "Root User"}, ValueError, "not a login name"),
        ({"api_url": "api.scaleway.com"}, ValueError, "not an http"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.Scaleway(**kwargs)


def listed(gpus: int | None, **fields: Any) -> dict[str, Any]:
    """A type as ``GET products/servers`` lists it (RAM in bytes)."""
    return {"ncpus": 8, "ram": 48 * 1024**3, "gpu": gpus, "hourly_price": 0.75, **fields}


def test_a_gpu_type_skyward_names_is_an_offer() -> None:
    offer = _scaleway._offer("L40S-4-48G", listed(4), ["fr-par-2"])
    assert offer is not None
    assert offer.accelerator == A.L40S(count=4)
    assert (offer.vcpus, offer.memory_gb, offer.disk_gb) == (8.0, 48.0, None)
    assert (offer.on_demand_price, offer.regions) == (0.75, ("fr-par-2",))
    sxm = _scaleway._offer("H100-SXM-8-80G", listed(8), ["fr-par-2"])
    assert sxm is not None
    assert sxm.accelerator == A.H100(count=8, form_factor="SXM")
    render = _scaleway._offer("RENDER-S", listed(1), ["fr-par-1"])
    assert render is not None
    assert render.accelerator == A.P100()
    nowhere = _scaleway._offer("L4-1-24G", listed(1), [])
    assert nowhere is not None
    assert (nowhere.regions, nowhere.on_demand_price) == ((), None)
    assert _scaleway._offer("GPU-3070-S", listed(1), ["fr-par-2"]) is None  # no RTX 3070
    assert _scaleway._offer("DEV1-S", listed(None), ["fr-par-2"]) is None
    assert _scaleway._offer("L4-2-24G", listed(1), ["fr-par-2"]) is None  # name and gpu differ
    arm = _scaleway._offer("L4-1-24G", listed(1, arch="arm64"), ["fr-par-2"])
    assert arm is None


def test_an_instance_answer_says_its_state_address_and_volumes() -> None:
    found = _scaleway._server(
        {
            "id": "cb676a46-66fd-4dfb-b839-443f2e6c0b60",
            "name": "skyward-j-0-1",
            "state": "running",
            "zone": "nl-ams-1",
            "public_ip": None,
            "public_ips": [
                {"address": "2001:db8::1", "family": "inet6"},
                {"address": "192.0.2.10", "family": "inet", "dynamic": True},
            ],
            "private_ip": None,
            "volumes": {"0": {"id": "v0", "volume_type": "sbs_volume"}},
        },
        "fr-par-2",
    )
    assert found is not None
    assert (found.name, found.status, found.zone, found.ip, found.private_ip) == (
        "skyward-j-0-1",
        "running",
        "nl-ams-1",
        "192.0.2.10",
        None,
    )
    assert found.volumes == (("v0", "sbs_volume"),)
    old = _scaleway._server(
        {"id": "x", "state": "running", "public_ip": {"address": "192.0.2.11"}}, "fr-par-2"
    )
    assert old is not None
    assert (old.ip, old.zone) == ("192.0.2.11", "fr-par-2")
    stopped = _scaleway._server({"id": "x", "state": "stopped", "public_ips": []}, "fr-par-2")
    assert stopped is not None
    assert stopped.ip is None  # no address yet
    assert _scaleway._server({"type": "not_found", "message": "..."}, "fr-par-2") is None


def test_what_compute_refuses_before_creating() -> None:
    with pytest.raises(ValueError, match=r"rents GPU Instances .*accelerators\.L4\(\)"):
        _checks.check_spec(sky.Spec(provider=sky.Scaleway()))
    with pytest.raises(ValueError, match=r"Scaleway rents whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.Scaleway(), accelerator=A.L4(count=0.5)))


def test_a_providers_table_of_type_scaleway(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        f'[providers.scw]\ntype = "scaleway"\nzone = "nl-ams-1"\nproject_id = "{PROJECT}"\n'
        '[pools.train]\nprovider = "scw"\naccelerator = "L40S"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.Scaleway(zone="nl-ams-1", project_id=PROJECT)
    project.write_text('[providers.scw]\ntype = "scaleway"\nzone = "Amsterdam"\n')
    with pytest.raises(config.ConfigError, match=r"providers\.scw\.zone"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_credentials_of_its_own_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sky compute create`` reads SCW_SECRET_KEY and SCW_DEFAULT_PROJECT_ID where it
    runs, for a server started elsewhere; what the file gives, or none anywhere, is left as
    it is."""
    spec = sky.Spec(provider=sky.Scaleway(zone="fr-par-2"), accelerator=A.L4())
    monkeypatch.setenv("SCW_SECRET_KEY", "from-this-shell")
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    sent = _cli._keyed(spec)
    assert sent.provider == sky.Scaleway(
        zone="fr-par-2", secret_key="from-this-shell", project_id=PROJECT
    )
    given = sky.Spec(
        provider=sky.Scaleway(secret_key="from-file", project_id=PROJECT), accelerator=A.L4()
    )
    assert _cli._keyed(given).provider.secret_key == "from-file"
    monkeypatch.delenv("SCW_SECRET_KEY")
    assert _cli._keyed(spec).provider.secret_key is None
