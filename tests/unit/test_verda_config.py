"""``sky.Verda``'s pure parts: its config, Verda's instance types and availability as offers,
what an instance's answer says, the startup script that installs a host key, what
``Compute`` refuses before anything is created, ``[providers.X] type = "verda"`` in
skyward.toml, and the CLI reading the client's credentials from its own shell.

Creating instances through the API runs against a fake Verda in
``tests/integration/test_verda.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward import _cli
from skyward_trio import _checks, _transport, config
from skyward_trio._verda import machine_of, offers_of, startup_script

CLIENT_ID = "verda_unit_client_id_0123"
SECRET = "verda_unit_secret_0123456789"
A = sky.accelerators


def test_the_credentials_are_never_shown_and_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.Verda(client_id=CLIENT_ID, client_secret=SECRET)
    for shown in (repr(provider), repr(sky.Spec(provider=provider, accelerator=A.H100()))):
        assert SECRET not in shown
        assert CLIENT_ID not in shown
    monkeypatch.setenv("VERDA_CLIENT_ID", "id-from-env")
    monkeypatch.setenv("VERDA_CLIENT_SECRET", "secret-from-env")
    assert sky.Verda().resolved_credentials() == ("id-from-env", "secret-from-env")
    assert sky.Verda(client_secret=SECRET).resolved_credentials() == ("id-from-env", SECRET)
    monkeypatch.delenv("VERDA_CLIENT_SECRET")
    with pytest.raises(ValueError, match="no client_secret: VERDA_CLIENT_SECRET is not set"):
        sky.Verda().resolved_credentials()
    monkeypatch.delenv("VERDA_CLIENT_ID")
    with pytest.raises(ValueError, match="no client_id") as raised:
        sky.Verda(client_secret=SECRET).resolved_credentials()
    assert "export VERDA_CLIENT_ID=... VERDA_CLIENT_SECRET=..." in str(raised.value)
    assert "sky.Verda(client_id=...)" in str(raised.value)
    with pytest.raises(ValueError, match=r"Verda\(client_secret=\.\.\.\): must be a non-empty"):
        sky.Verda(client_secret="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"location": "fin-01"}, ValueError, r"not a location code .* location='FIN-01'"),
        ({"location": 1}, TypeError, "location"),
        ({"image": ""}, ValueError, "image must not be empty"),
        ({"username": "Root User"}, ValueError, "not a login name"),
        ({"api_url": "api.verda.com"}, ValueError, "not an http"),
        ({"client_id": 7}, ValueError, r"Verda\(client_id=\.\.\.\)"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.Verda(**kwargs)


def kind(name: str, gpus: int, price: str, description: str = "") -> dict[str, Any]:
    """An instance type as ``GET /instance-types`` lists it (prices as text)."""
    return {
        "id": f"id-{name}",
        "instance_type": name,
        "price_per_hour": price,
        "spot_price": "0.5",
        "description": description or name,
        "cpu": {"description": "", "number_of_cores": 30 * max(gpus, 1)},
        "gpu": {"description": description, "number_of_gpus": gpus},
        "memory": {"description": "", "size_in_gigabytes": 120 * max(gpus, 1)},
        "gpu_memory": {"description": "", "size_in_gigabytes": 80 * gpus},
        "storage": {"description": "", "size_in_gigabytes": 100},
    }


TYPES = [
    kind("8H100.80S.176V", 8, "19.12"),
    kind("1H100.80S.30V", 1, "2.39"),
    kind("1A100.40S.22V", 1, "1.29"),
    kind("1RTX6000ADA.10V", 1, "0.99"),
    kind("1A10.8V", 1, "0.5"),  # a GPU Skyward does not name here
    kind("CPU.4V.16G", 0, "0.08"),
]
AVAILABLE = {"8H100.80S.176V": ("FIN-01", "ICE-01"), "1A100.40S.22V": ("FIN-02",)}


def test_an_instance_type_is_an_offer_with_its_gpus_locations_and_price() -> None:
    offers = {o.name: o for o in offers_of(sky.Verda(), TYPES, AVAILABLE)}
    assert list(offers) == ["8H100.80S.176V", "1H100.80S.30V", "1A100.40S.22V", "1RTX6000ADA.10V"]
    h100 = offers["8H100.80S.176V"]
    assert h100.accelerator == A.H100(count=8, form_factor="SXM")
    assert (h100.vcpus, h100.memory_gb, h100.disk_gb) == (240.0, 960.0, 100.0)
    assert (h100.on_demand_price, h100.spot_price) == (19.12, None)
    assert (h100.architecture, h100.regions) == ("x86_64", ("FIN-01", "ICE-01"))
    a100 = offers["1A100.40S.22V"]
    assert a100.accelerator == A.A100(memory="40GB", form_factor="SXM")
    # Available nowhere: listed, never chosen.
    assert (offers["1H100.80S.30V"].regions, offers["1H100.80S.30V"].on_demand_price) == ((), None)
    assert offers["1RTX6000ADA.10V"].accelerator == A.RTX_6000_Ada()
    pinned = {o.name: o for o in offers_of(sky.Verda(location="ICE-01"), TYPES, AVAILABLE)}
    assert pinned["8H100.80S.176V"].regions == ("ICE-01",)
    assert pinned["1A100.40S.22V"].regions == ()


def test_an_instance_answer_says_its_status_and_address() -> None:
    found = machine_of(
        {"id": "a1b2", "hostname": "skyward-j-0-1", "status": "running", "ip": "1.2.3.4"}
    )
    assert found is not None
    assert (found.id, found.name, found.status, found.ip) == (
        "a1b2",
        "skyward-j-0-1",
        "running",
        "1.2.3.4",
    )
    booting = machine_of({"id": "c3", "status": "provisioning", "ip": None})
    assert booting is not None
    assert (booting.status, booting.ip) == ("provisioning", None)
    assert machine_of({"id": 7, "status": "running"}) is None  # ids are UUIDs, as text
    assert machine_of({"code": "not_found", "message": "Instance not found"}) is None


def test_the_startup_script_installs_the_host_key_made_for_the_instance(tmp_path: Path) -> None:
    key = _transport.generate_key()
    script = startup_script(key)
    assert script.startswith("#!/bin/sh\n")
    between = script.split("<<'SKYWARD_HOST_KEY'\n", 1)[1].split("\nSKYWARD_HOST_KEY\n", 1)[0]
    (tmp_path / "key").write_text(between + "\n")
    written = _transport.read_key(str(tmp_path / "key"))
    assert _transport.public_openssh(written) == _transport.public_openssh(key)
    assert f"echo '{_transport.public_openssh(key).strip()}'" in script
    assert "restart ssh" in script


def test_what_compute_refuses_before_creating() -> None:
    with pytest.raises(ValueError, match="rents GPU instances"):
        _checks.check_spec(sky.Spec(provider=sky.Verda()))
    with pytest.raises(ValueError, match=r"whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.Verda(), accelerator=A.H100(count=0.5)))


def test_a_providers_table_of_type_verda(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.v]\ntype = "verda"\nlocation = "FIN-01"\n'
        '[pools.train]\nprovider = "v"\naccelerator = "H100"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.Verda(location="FIN-01")
    project.write_text('[providers.v]\ntype = "verda"\nlocation = "helsinki"\n')
    with pytest.raises(config.ConfigError, match=r"providers\.v\.location"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_credentials_of_its_own_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sky compute create`` reads VERDA_CLIENT_ID and VERDA_CLIENT_SECRET where it runs,
    for a server started elsewhere; credentials the file gives, or none anywhere, are left
    as they are."""
    spec = sky.Spec(provider=sky.Verda(location="FIN-01"), accelerator=A.H100())
    monkeypatch.setenv("VERDA_CLIENT_ID", "id-from-this-shell")
    monkeypatch.setenv("VERDA_CLIENT_SECRET", "secret-from-this-shell")
    sent = _cli._keyed(spec)
    assert sent.provider == sky.Verda(
        location="FIN-01", client_id="id-from-this-shell", client_secret="secret-from-this-shell"
    )
    given = sky.Spec(
        provider=sky.Verda(client_id="file-id", client_secret="from-file"), accelerator=A.H100()
    )
    assert _cli._keyed(given).provider.client_secret == "from-file"
    monkeypatch.delenv("VERDA_CLIENT_SECRET")
    assert _cli._keyed(spec).provider.client_secret is None
