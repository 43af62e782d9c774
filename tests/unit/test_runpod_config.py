"""``sky.RunPod``'s pure parts: its config, its GPU types as offers, what ``Compute`` refuses
before anything is rented, and ``[providers.X] type = "runpod"`` in skyward.toml.

Provisioning through the API runs against a fake RunPod in
``tests/integration/test_runpod.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import skyward as sky
from skyward_trio import _checks, config
from skyward_trio._offers import choose, plan
from skyward_trio._runpod import GPU_TYPES, _cpu_offers, _gpu_types_in, _offer, cpu_vcpu_counts

KEY = "rpa_unit_test_key_0123456789"


def entry(gpu_id: str, **fields: object) -> dict[str, object]:
    """A GraphQL ``gpuTypes`` entry as RunPod returns it."""
    values: dict[str, object] = {
        "id": gpu_id,
        "displayName": gpu_id.removeprefix("NVIDIA "),
        "memoryInGb": 80,
        "secureCloud": True,
        "communityCloud": True,
        "securePrice": 2.0,
        "communityPrice": 1.5,
        "secureSpotPrice": 1.0,
        "communitySpotPrice": 0.75,
        "maxGpuCount": 8,
    }
    return values | fields


def flavor(flavor_id: str, ram: float, per_vcpu: float, least: int = 2, most: int = 32) -> dict:
    """A v2 catalog ``cpus`` entry as RunPod returns it."""
    return {
        "id": flavor_id,
        "name": "Compute-Optimized",
        "group": "Gen 3",
        "vcpu": {"min": least, "max": most},
        "ramGbPerVcpu": ram,
        "price": {"securePerVcpu": per_vcpu, "serverlessPerVcpu": per_vcpu * 2},
    }


def test_the_api_key_is_never_shown() -> None:
    provider = sky.RunPod(api_key=KEY)
    assert KEY not in repr(provider)
    assert KEY not in repr(sky.Spec(provider=provider, accelerator=sky.accelerators.L4()))
    with pytest.raises(ValueError, match="non-empty string") as raised:
        sky.RunPod(api_key="")
    assert "api_key=os.environ" in str(raised.value)


def test_the_key_comes_from_the_environment_or_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    assert sky.RunPod().resolved_api_key() == KEY
    assert sky.RunPod(api_key="given").resolved_api_key() == "given"
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(ValueError, match="export RUNPOD_API_KEY"):
        sky.RunPod().resolved_api_key()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cloud_type": "cheap"}, ValueError, "must be one of 'secure', 'community'"),
        ({"container_disk_gb": 0}, ValueError, "container_disk_gb=50"),
        ({"container_image": 3}, TypeError, "must be a str or a sky.DockerImage"),
        ({"container_image": "Bad Image"}, ValueError, "container_image="),
        ({"api_url": "rest.runpod.io"}, ValueError, "not an http"),
        ({"graphql_url": ""}, ValueError, "graphql_url"),
        ({"catalog_url": "api.runpod.io/v2"}, ValueError, "catalog_url='https://api.runpod.io/v2'"),
        ({"data_center_ids": "EU-RO-1"}, TypeError, r"data_center_ids=\["),
        ({"data_center_ids": ["eu-ro-1"]}, ValueError, "not a data centre id.*'EU-RO-1'"),
        ({"data_center_ids": []}, ValueError, "or None for any"),
        ({"network_volume_id": ""}, ValueError, "Storage"),
        ({"volume_mount_path": "data"}, ValueError, "volume_mount_path='/workspace'"),
    ],
)
def test_bad_settings_name_the_argument_and_the_fix(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.RunPod(**kwargs)  # type: ignore[arg-type]


def test_data_centres_and_a_network_volume_are_taken_as_given() -> None:
    provider = sky.RunPod(data_center_ids=["EUR-IS-1", "US-KS-2"], network_volume_id="a1b2c3")
    assert provider.data_center_ids == ("EUR-IS-1", "US-KS-2")
    assert (provider.network_volume_id, provider.volume_mount_path) == ("a1b2c3", "/workspace")


def test_the_image_takes_the_clients_python_version() -> None:
    provider = sky.RunPod(container_image="me/img:py{python_version}")
    assert provider.image_reference("3.12") == "me/img:py3.12"
    assert sky.RunPod().image_reference("3.12").startswith("runpod/pytorch:")


def test_gpu_types_become_offers_priced_per_node() -> None:
    provider = sky.RunPod(api_key=KEY)
    offer = _offer(provider, entry("NVIDIA H100 80GB HBM3"), gpus=4)
    assert offer is not None
    assert offer.name == "NVIDIA H100 80GB HBM3"
    assert (offer.on_demand_price, offer.spot_price) == (8.0, 4.0)  # secure, 4 GPUs
    assert offer.accelerator == sky.accelerators.H100(form_factor="SXM", count=4)
    # More than a pod carries: the most it can (a spec asking for more is refused).
    most = _offer(provider, entry("NVIDIA H100 80GB HBM3"), gpus=9)
    assert most is not None
    assert most.accelerator is not None
    assert most.accelerator.count == 8
    community = _offer(sky.RunPod(cloud_type="community"), entry("NVIDIA L4"), gpus=1)
    assert community is not None
    assert (community.on_demand_price, community.spot_price) == (1.5, 0.75)
    # Unknown to Skyward, not in this cloud, or without a price: not offered as such.
    assert _offer(provider, entry("NVIDIA Quantum 9000"), gpus=1) is None
    assert _offer(provider, entry("NVIDIA L4", secureCloud=False), gpus=1) is None
    no_spot = _offer(provider, entry("NVIDIA L4", secureSpotPrice=None), gpus=1)
    assert no_spot is not None
    assert no_spot.spot_price is None


def test_every_gpu_type_is_an_accelerator_skyward_names() -> None:
    for gpu_id, accelerator in GPU_TYPES.items():
        assert sky.accelerators.by_name(accelerator.name) is not None, gpu_id


def test_the_spec_picks_its_accelerator_among_the_types() -> None:
    provider = sky.RunPod(api_key=KEY)
    offers = [
        o
        for o in (
            _offer(provider, entry("NVIDIA A100 80GB PCIe", securePrice=1.6), gpus=2),
            _offer(provider, entry("NVIDIA A100-SXM4-80GB", securePrice=1.9), gpus=2),
            _offer(provider, entry("NVIDIA GeForce RTX 4090", securePrice=0.7), gpus=2),
        )
        if o is not None
    ]
    any_a100 = sky.Spec(
        provider=provider, accelerator=sky.accelerators.A100(count=2), allocation="on-demand"
    )
    chosen = choose(0, any_a100, offers)
    assert not isinstance(chosen, str), chosen
    assert (chosen.offer.name, chosen.hourly_price) == ("NVIDIA A100 80GB PCIe", 3.2)
    # The other A100 follows, for a create to fall back to; the RTX 4090 is no A100.
    assert [o.name for o in chosen.also] == ["NVIDIA A100-SXM4-80GB"]
    sxm = sky.Spec(
        provider=provider,
        accelerator=sky.accelerators.A100(count=2, form_factor="SXM"),
        allocation="on-demand",
    )
    chosen = choose(0, sxm, offers)
    assert not isinstance(chosen, str)
    assert chosen.offer.name == "NVIDIA A100-SXM4-80GB"


def test_an_accelerator_no_type_has_fails_with_one_reason() -> None:
    provider = sky.RunPod(api_key=KEY)
    offers = [
        o
        for o in (_offer(provider, entry(gpu_id), gpus=1) for gpu_id in GPU_TYPES)
        if o is not None and o.accelerator is not None and o.accelerator.name != "T4"
    ]
    wanted = sky.Spec(provider=provider, accelerator=sky.accelerators.T4())
    with pytest.raises(sky.NoOfferError) as raised:
        plan([wanted], [offers], "cheapest")
    message = str(raised.value)
    assert message.count("offers no T4") == 1, message
    nine = sky.Spec(provider=provider, accelerator=sky.accelerators.L4(count=9))
    # The catalog a spec gets is priced for its count.
    for_nine = [o for o in (_offer(provider, entry(gpu_id), gpus=9) for gpu_id in GPU_TYPES) if o]
    said = choose(0, nine, for_nine)
    assert isinstance(said, str)
    assert "at most 8 per node" in said


def test_cpu_flavors_become_offers_one_per_vcpu_count() -> None:
    provider = sky.RunPod(api_key=KEY)
    assert cpu_vcpu_counts(2, 32) == [2, 4, 8, 16, 32]
    assert cpu_vcpu_counts(3, 24) == [4, 8, 16]  # powers of two only, inside the range
    assert cpu_vcpu_counts(64, 32) == []
    offers = _cpu_offers(provider, flavor("cpu3g", ram=4, per_vcpu=0.04, least=2, most=8))
    assert [(o.name, o.vcpus, o.memory_gb, o.on_demand_price) for o in offers] == [
        ("cpu3g-2-8", 2, 8, 0.08),
        ("cpu3g-4-16", 4, 16, 0.16),
        ("cpu3g-8-32", 8, 32, 0.32),
    ]
    assert {(o.ref, o.spot_price, o.accelerator, o.architecture) for o in offers} == {
        ("cpu3g", None, None, "x86_64")
    }
    # Not in the secure cloud, without a price, RAM or vCPU range: not offered.
    community = sky.RunPod(api_key=KEY, cloud_type="community")
    assert _cpu_offers(community, flavor("cpu3c", ram=2, per_vcpu=0.03)) == []
    assert _cpu_offers(provider, flavor("cpu3c", ram=2, per_vcpu=0)) == []
    assert _cpu_offers(provider, {**flavor("cpu3c", 2, 0.03), "ramGbPerVcpu": None}) == []
    assert _cpu_offers(provider, {**flavor("cpu3c", 2, 0.03), "vcpu": None}) == []
    assert _cpu_offers(provider, {**flavor("cpu3c", 2, 0.03), "price": {}}) == []


def _cpu_catalog(provider: sky.RunPod) -> list[object]:
    return [
        *_cpu_offers(provider, flavor("cpu3c", ram=2, per_vcpu=0.03)),
        *_cpu_offers(provider, flavor("cpu3g", ram=4, per_vcpu=0.04)),
        *_cpu_offers(provider, flavor("cpu3m", ram=8, per_vcpu=0.06, most=16)),
        *_cpu_offers(provider, flavor("cpu5g", ram=4, per_vcpu=0.05)),
    ]


@pytest.mark.parametrize(
    ("vcpus", "memory_gb", "chosen", "price", "also"),
    [
        # Then the others meeting it, cheapest first, ties as listed (a create falls back
        # on those of the same vCPU count).
        (8, None, "cpu3c-8-16", 0.24, ["cpu3g-8-32", "cpu5g-8-32", "cpu3c-16-32"]),
        (8, 32, "cpu3g-8-32", 0.32, ["cpu5g-8-32", "cpu3c-16-32", "cpu3m-8-64"]),
        # 6 vCPUs are no count RunPod rents: 8 are the fewest that meet it.
        (6, None, "cpu3c-8-16", 0.24, ["cpu3g-8-32", "cpu5g-8-32", "cpu3c-16-32"]),
        # 64 GB: cpu3m's 8 vCPUs (0.48) beat cpu3g's 16 (0.64) and cpu3c's 32 (0.96).
        (None, 64, "cpu3m-8-64", 0.48, ["cpu3g-16-64", "cpu5g-16-64", "cpu3c-32-64"]),
    ],
)
def test_the_cheapest_flavor_and_vcpu_count_meeting_the_spec_is_chosen(
    vcpus: float | None,
    memory_gb: float | None,
    chosen: str,
    price: float,
    also: list[str],
) -> None:
    provider = sky.RunPod(api_key=KEY)
    spec = sky.Spec(provider=provider, vcpus=vcpus, memory_gb=memory_gb)
    _checks.check_spec(spec)  # a CPU spec is one RunPod can rent
    choice = choose(0, spec, _cpu_catalog(provider))  # type: ignore[arg-type]
    assert not isinstance(choice, str), choice
    assert (choice.offer.name, choice.hourly_price, choice.spot) == (chosen, price, False)
    assert [o.name for o in choice.also[:3]] == also


def test_more_than_any_flavor_gives_is_refused_before_anything_starts() -> None:
    provider = sky.RunPod(api_key=KEY)
    listed = sorted(_cpu_catalog(provider), key=lambda o: -o.vcpus)  # type: ignore[attr-defined]
    for fields, said in (
        ({"vcpus": 64}, "vcpus=64: cpu3c-32-64 has 32 vCPUs"),
        ({"memory_gb": 512}, "memory_gb=512: cpu3c-32-64 has 64 GB"),
        ({"vcpus": 8, "max_hourly_cost": 0.1}, "max_hourly_cost=0.1: cpu3c-32-64 costs $0.96/h"),
    ):
        spec = sky.Spec(provider=provider, **fields)  # type: ignore[arg-type]
        with pytest.raises(sky.NoOfferError) as raised:
            plan([spec], [listed], "cheapest")  # type: ignore[list-item]
        assert said in str(raised.value)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (
            {"allocation": "spot"},
            r"allocation='spot': sky.RunPod\(\) rents CPU pods .* on demand only; .* "
            r"Pass allocation='on-demand', or an accelerator= for a spot GPU pod",
        ),
        (
            {"provider": sky.RunPod(api_key=KEY, cloud_type="community")},
            r"RunPod\(cloud_type='community'\): RunPod rents CPU pods .* secure cloud only; "
            r"pass RunPod\(cloud_type='secure'\)",
        ),
        ({"accelerator": sky.accelerators.L4(count=0.5)}, "rents whole GPUs; pass count=1"),
        (
            {"accelerator": sky.accelerators.L4(), "disk_gb": 120},
            r"RunPod\(container_disk_gb=120\)",
        ),
    ],
)
def test_compute_refuses_what_runpod_cannot_rent(fields: dict[str, object], match: str) -> None:
    spec = sky.Spec(**{"provider": sky.RunPod(api_key=KEY), **fields})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        _checks.check_spec(spec)


def test_skyward_toml_names_a_runpod_provider(tmp_path: Path) -> None:
    project = tmp_path / "proj" / "skyward.toml"
    project.parent.mkdir()
    project.write_text(
        '[providers.rp]\ntype = "runpod"\ncloud_type = "community"\n'
        '[pools.train]\nprovider = "rp"\naccelerator = "RTX_4090"\nnodes = 2\n'
    )
    home = tmp_path / "home" / "defaults.toml"
    home.parent.mkdir()
    home.write_text("")
    loaded = config._load(project, home)
    assert loaded.providers["rp"] == sky.RunPod(cloud_type="community")
    (spec,) = loaded.pools["train"].specs
    assert spec.accelerator == sky.accelerators.RTX_4090()
    assert spec.provider == sky.RunPod(cloud_type="community")


def test_a_graphql_error_answer_has_no_gpu_types() -> None:
    l4 = entry("NVIDIA L4")
    assert _gpu_types_in({"data": {"gpuTypes": [l4, "junk"]}}) == [l4]
    # GraphQL answers an error with status 200, "data": null and its errors.
    assert _gpu_types_in({"data": None, "errors": [{"message": "unauthorized"}]}) is None
    assert _gpu_types_in({"data": {"gpuTypes": None}}) is None
    assert _gpu_types_in(None) is None
