"""``sky.JarvisLabs``'s pure parts: its config, JarvisLabs' GPU catalogue rows as offers, an
instance's ``ssh_str`` and answer, what ``Compute`` refuses before anything is created,
``[providers.X] type = "jarvislabs"`` in skyward.toml, and the CLI reading the key from its
own shell.

Creating instances through the API runs against a fake JarvisLabs in
``tests/integration/test_jarvislabs.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

import skyward as sky
from skyward import _cli
from skyward_trio import _checks, _jarvislabs, config

KEY = "jl_0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d"
A = sky.accelerators


def test_the_key_is_never_shown_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sky.JarvisLabs(api_key=KEY)
    assert KEY not in repr(provider)
    assert KEY not in repr(sky.Spec(provider=provider, accelerator=A.L4()))
    monkeypatch.setenv("JL_API_KEY", "from-env")
    assert sky.JarvisLabs().resolved_api_key() == "from-env"
    monkeypatch.delenv("JL_API_KEY")
    with pytest.raises(ValueError, match="export JL_API_KEY") as raised:
        sky.JarvisLabs().resolved_api_key()
    assert "sky.JarvisLabs(api_key=...)" in str(raised.value)
    with pytest.raises(ValueError, match="non-empty string"):
        sky.JarvisLabs(api_key="")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"region": "IN1"}, ValueError, r"region must be one of"),
        ({"region": "mumbai"}, ValueError, r"india-01"),
        ({"template": "vm"}, ValueError, r"VM instances are not supported yet"),
        ({"template": "py torch"}, ValueError, r"not a container template id"),
        ({"template": ""}, ValueError, "template must not be empty"),
        ({"storage_gb": 10}, ValueError, r"storage_gb must be >= 20"),
        ({"storage_gb": 40.5}, TypeError, r"storage_gb must be an int"),
        ({"api_url": "backendprod.jarvislabs.net"}, ValueError, "not an http"),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.JarvisLabs(**kwargs)


def test_each_region_has_its_backend_unless_one_url_is_given() -> None:
    assert sky.JarvisLabs().backend() == "https://backendprod.jarvislabs.net"
    assert sky.JarvisLabs().backend("europe-01") == "https://backendeu.jarvislabs.net"
    assert sky.JarvisLabs().backend("india-noida-01") == "https://backendn.jarvislabs.net"
    one = sky.JarvisLabs(api_url="http://127.0.0.1:9/")
    assert one.backend("europe-01") == one.backend() == "http://127.0.0.1:9"


def row(gpu_type: str, **fields: Any) -> dict[str, Any]:
    """A row of ``GET /misc/server_meta``."""
    return {
        "gpu_type": gpu_type,
        "region": "india-01",
        "num_free_devices": 4,
        "effective_num_free_devices": 4,
        "price_per_hour": 1.29,
        "cpus_per_gpu": 8,
        "ram_per_gpu": 48,
        "workload_type": "container",
        **fields,
    }


def test_a_gpu_type_skyward_names_with_gpus_free_is_an_offer_of_whole_gpus() -> None:
    offer = _jarvislabs._offer(row("A100-80GB"), 2, None)
    assert offer is not None
    assert offer.accelerator == A.A100(memory="80GB", count=2)
    assert (offer.on_demand_price, offer.vcpus, offer.memory_gb) == (2.58, 16.0, 96.0)
    assert (offer.regions, offer.ref, offer.provider) == (
        ("india-01",),
        "A100-80GB",
        "sky.JarvisLabs()",
    )
    assert _jarvislabs._offer(row("RTX6000Ada"), 1, None) is not None
    # Not named, too few free, for VMs, another region, a count europe-01 does not take.
    assert _jarvislabs._offer(row("RTX5000"), 1, None) is None
    assert _jarvislabs._offer(row("L4", effective_num_free_devices=1), 2, None) is None
    assert _jarvislabs._offer(row("L4", workload_type="vm"), 1, None) is None
    assert _jarvislabs._offer(row("L4"), 1, "europe-01") is None
    assert _jarvislabs._offer(row("H100", region="europe-01"), 2, None) is None
    assert _jarvislabs._offer(row("H100", region="europe-01"), 1, None) is not None
    assert _jarvislabs._offer(row("L4", price_per_hour=None), 1, None) is None


def test_an_ssh_str_gives_the_host_and_port() -> None:
    endpoint = _jarvislabs.ssh_endpoint
    assert endpoint("ssh -p 11114 root@sshi.jarvislabs.ai") == ("sshi.jarvislabs.ai", 11114)
    assert endpoint("ssh -o StrictHostKeyChecking=no -p 2222 root@1.2.3.4") == ("1.2.3.4", 2222)
    assert endpoint("ssh root@host") == ("host", 22)
    assert endpoint("ssh -p x root@host") is None
    assert endpoint("ssh -p 99999 root@host") is None
    assert endpoint("scp root@host") is None
    assert endpoint(None) is None
    assert endpoint("ssh -p 22") is None


def test_an_instance_answer_says_its_status_and_ssh_endpoint() -> None:
    instance = _jarvislabs._instance(
        {
            "machine_id": 360123,
            "name": "skyward-ab-0-1",
            "status": "Running",
            "ssh_str": "ssh -p 11114 root@sshi.jarvislabs.ai",
            "region": "india-01",
        }
    )
    assert instance == _jarvislabs._Instance(
        id="360123",
        name="skyward-ab-0-1",
        status="Running",
        ssh=("sshi.jarvislabs.ai", 11114),
        region="india-01",
    )
    assert _jarvislabs._instance({"machine_id": True}) is None
    assert _jarvislabs._instance({"status": "Running"}) is None


def test_only_a_404_or_a_declared_failure_says_an_instance_is_gone() -> None:
    def answer(status: int, body: object) -> httpx.Response:
        return httpx.Response(status, json=body)

    assert _jarvislabs._not_found(answer(404, {"message": "Instance not found"}))
    assert _jarvislabs._not_found(answer(200, {"success": False}))
    assert _jarvislabs._not_found(answer(200, {"success": "false"}))
    assert not _jarvislabs._not_found(answer(200, {"success": True, "instance": {}}))
    # A server error (even one saying success: false) is no answer about the instance.
    assert not _jarvislabs._not_found(answer(500, {"success": False, "message": "oops"}))
    assert not _jarvislabs._not_found(answer(503, {}))


def test_what_compute_refuses_before_creating() -> None:
    with pytest.raises(ValueError, match=r"rents GPU instances .*accelerators\.L4\(\)"):
        _checks.check_spec(sky.Spec(provider=sky.JarvisLabs()))
    with pytest.raises(ValueError, match=r"JarvisLabs rents whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.JarvisLabs(), accelerator=A.L4(count=0.5)))


def test_a_providers_table_of_type_jarvislabs(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.jl]\ntype = "jarvislabs"\nregion = "europe-01"\nstorage_gb = 100\n'
        '[pools.train]\nprovider = "jl"\naccelerator = "H100"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.JarvisLabs(region="europe-01", storage_gb=100)
    project.write_text('[providers.jl]\ntype = "jarvislabs"\nstorage_gb = 1\n')
    with pytest.raises(config.ConfigError, match=r"providers\.jl\.storage_gb"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_key_of_its_own_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sky compute create`` reads JL_API_KEY where it runs, for a server started
    elsewhere; a key the file gives, or none anywhere, is left as it is."""
    spec = sky.Spec(provider=sky.JarvisLabs(region="india-01"), accelerator=A.L4())
    monkeypatch.setenv("JL_API_KEY", "from-this-shell")
    sent = _cli._keyed(spec)
    assert sent.provider == sky.JarvisLabs(region="india-01", api_key="from-this-shell")
    given = sky.Spec(provider=sky.JarvisLabs(api_key="from-file"), accelerator=A.L4())
    assert _cli._keyed(given).provider.api_key == "from-file"
    monkeypatch.delenv("JL_API_KEY")
    assert _cli._keyed(spec).provider.api_key is None
