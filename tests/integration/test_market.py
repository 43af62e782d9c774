"""``sky.offers``: what providers offer, fetched from the fake clouds' APIs and cached in
``~/.skyward/offers.sqlite``. Nothing here reaches a real cloud; only loopback is contacted.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import stat
from pathlib import Path

import pytest
from fake_aws import FakeAWS
from fake_lambda import FakeLambda
from fake_runpod import FakeRunPod
from fake_vastai import FakeVastAI

import skyward as sky
import skyward_trio

pytestmark = pytest.mark.clouds

A = sky.accelerators


@pytest.fixture(autouse=True)
def _own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A home per test (its tmp_path): each starts with no cached listing."""
    monkeypatch.setenv("HOME", str(tmp_path))


def _runpod(api: FakeRunPod) -> sky.RunPod:
    return sky.RunPod(
        api_key=api.api_key,
        api_url=api.rest_url,
        graphql_url=api.graphql_url,
        catalog_url=api.catalog_url,
    )


def _vast(api: FakeVastAI) -> sky.VastAI:
    return sky.VastAI(api_key=api.api_key, api_url=api.api_url)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_runpod_lists_every_gpu_type_priced_per_node(fake_runpod: FakeRunPod) -> None:
    everything = sky.offers(_runpod(fake_runpod))
    listed = everything.where(lambda o: o.accelerator is not None)
    names = {offer.name for offer in listed}
    assert {"NVIDIA H100 80GB HBM3", "NVIDIA L4", "NVIDIA GeForce RTX 4090"} <= names
    assert all(o.accelerator is not None and o.accelerator.count == 1 for o in listed)
    # Beside them, its CPU pods (sizes of its CPU flavors; test_runpod.py has the rest).
    assert "cpu3c-8-16" in {o.name for o in everything if o.accelerator is None}
    assert listed.errors == ()
    # Nodes of four H100s: only that type, priced for four of them.
    four = sky.offers(_runpod(fake_runpod), accelerator=A.H100(count=4), max_age=0)
    (h100,) = four
    assert h100.accelerator == A.H100(count=4, form_factor="SXM")
    one_gpu = listed.accelerator(A.H100())[0]
    assert h100.on_demand_price == pytest.approx(4 * (one_gpu.on_demand_price or 0))


def test_a_listing_is_cached_until_it_is_older_than_max_age(
    fake_runpod: FakeRunPod, tmp_path: Path
) -> None:
    first = sky.offers(_runpod(fake_runpod))
    asked = len(fake_runpod.requests)
    again = sky.offers(_runpod(fake_runpod))
    assert len(fake_runpod.requests) == asked  # from ~/.skyward/offers.sqlite
    assert list(again) == list(first)
    assert again.fetched_at == first.fetched_at
    fresh = sky.offers(_runpod(fake_runpod), max_age=0)
    assert len(fake_runpod.requests) > asked
    assert fresh.fetched_at is not None
    assert first.fetched_at is not None
    assert fresh.fetched_at > first.fetched_at
    # Another question (an accelerator) is another listing.
    asked = len(fake_runpod.requests)
    sky.offers(_runpod(fake_runpod), accelerator=A.L4())
    assert len(fake_runpod.requests) > asked
    cache = tmp_path / ".skyward" / "offers.sqlite"  # the test's home
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    with contextlib.closing(sqlite3.connect(cache)) as db:
        stored = " ".join(str(row) for row in db.execute("SELECT * FROM listings"))
    assert fake_runpod.api_key not in stored
    assert "NVIDIA L4" in stored


def test_vastai_lists_each_free_machine_it_would_rent(vast: FakeVastAI) -> None:
    listed = sky.offers(_vast(vast))
    asks = sorted(offer.name for offer in listed)
    # One-GPU machines, verified and reliable enough (the provider's defaults), of the
    # models Skyward knows (no RTX 3090 in sky.accelerators).
    assert asks == [
        "A100 SXM4 x1 (ask 5005)",
        "H100 SXM x1 (ask 5007)",
        "L40S x1 (ask 5010)",
        "RTX 4090 x1 (ask 5001)",
        "RTX 4090 x1 (ask 5003)",
    ]
    eight = sky.offers(_vast(vast), accelerator=A.A100(count=8))
    assert [(o.name, o.on_demand_price, o.spot_price) for o in eight] == [
        ("A100 SXM4 x8 (ask 5006)", 8.8, 4.8)
    ]
    assert [o.name for o in listed.region("DE").spot().cheapest()] == [
        "RTX 4090 x1 (ask 5003)",
        "L40S x1 (ask 5010)",
    ]


@pytest.mark.usefixtures("aws_credentials")
def test_aws_lists_gpu_neuron_and_cpu_types_with_their_prices(aws: FakeAWS) -> None:
    config = sky.AWS(region=aws.region, endpoint_url=aws.endpoint_url)
    listed = sky.offers(config)
    by_name = {offer.name: offer for offer in listed}
    assert {"p5.48xlarge", "g5.xlarge", "m7i.large", "m7g.large"} <= set(by_name)
    assert by_name["p5.48xlarge"].accelerator == A.H100(count=8, form_factor="SXM")
    assert by_name["m7g.large"].accelerator is None
    assert by_name["m7g.large"].architecture == "arm64"
    assert by_name["g5.xlarge"].on_demand_price == pytest.approx(1.006)
    assert all(offer.regions == (aws.region,) for offer in listed)
    cheapest_gpu = listed.where(lambda o: o.accelerator is not None).on_demand().cheapest(1)
    assert [o.name for o in cheapest_gpu] == ["g4dn.xlarge"]
    # A spec-like question asks AWS for those types only.
    assert {o.name for o in sky.offers(config, accelerator=A.H100(count=8))} == {"p5.48xlarge"}


def test_several_providers_are_listed_together_and_a_failing_one_is_reported(
    fake_runpod: FakeRunPod, vast: FakeVastAI
) -> None:
    down = sky.RunPod(
        api_key="rp-test",
        api_url=f"http://127.0.0.1:{_closed_port()}/v1",
        graphql_url=f"http://127.0.0.1:{_closed_port()}/graphql",
        catalog_url=f"http://127.0.0.1:{_closed_port()}/v2",
    )
    listed = sky.offers([sky.Local(), _vast(vast), down])
    assert {offer.provider for offer in listed} == {"sky.Local()", "sky.VastAI()"}
    ((provider, why),) = listed.errors
    assert provider == "sky.RunPod()"
    assert "did not answer" in why
    assert "1 provider(s) failed" in repr(listed)
    # A failed listing is not cached: the next call asks again (and is told the same).
    assert sky.offers(down).errors
    h100 = sky.offers([_runpod(fake_runpod), _vast(vast)], accelerator=A.H100())
    assert {o.provider for o in h100} == {"sky.RunPod()", "sky.VastAI()"}
    assert h100.cheapest()[0].name == "H100 SXM x1 (ask 5007)"


def test_lambda_lists_every_type_it_names_with_its_regions(fake_lambda: FakeLambda) -> None:
    config = sky.Lambda(api_key=fake_lambda.api_key, api_url=fake_lambda.api_url)
    listed = sky.offers(config)
    by_name = {offer.name: offer for offer in listed}
    # Every count; the RTX 6000 (no such model in sky.accelerators) is left out.
    assert set(by_name) == {
        "gpu_1x_a10",
        "gpu_1x_a100",
        "gpu_1x_a100_sxm4",
        "gpu_2x_a100_sxm4",
        "gpu_8x_a100_80gb_sxm4",
        "gpu_1x_h100_pcie",
        "gpu_1x_h100_sxm5",
        "gpu_1x_gh200",
    }
    assert by_name["gpu_1x_gh200"].architecture == "arm64"
    assert by_name["gpu_1x_h100_pcie"].regions == ("us-west-3", "us-south-1")
    assert by_name["gpu_1x_a10"].on_demand_price == pytest.approx(0.75)
    assert by_name["gpu_1x_a10"].spot_price is None
    # Asked for two A100 40GB per node: the type with exactly two.
    two = sky.offers(config, accelerator=A.A100(count=2, memory="40GB"))
    assert [o.name for o in two] == ["gpu_2x_a100_sxm4"]


async def test_the_trio_face_gives_the_same_listing(vast: FakeVastAI) -> None:
    listed = await skyward_trio.offers([_vast(vast)], accelerator=A.RTX_4090())
    assert isinstance(listed, skyward_trio.Offers)
    assert [o.name for o in listed.cheapest()] == [
        "RTX 4090 x1 (ask 5001)",
        "RTX 4090 x1 (ask 5003)",
    ]


def test_a_provider_that_is_not_set_up_is_refused_before_anything_is_fetched(
    vast: FakeVastAI,
) -> None:
    asked = len(vast.requests)
    with pytest.raises(ValueError, match="VAST_API_KEY"):
        sky.offers(sky.VastAI(api_url=vast.api_url))
    assert len(vast.requests) == asked


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sky.offers("aws"), TypeError, r"pass a provider or a list of them"),  # type: ignore[arg-type]
        (lambda: sky.offers([]), TypeError, r"pass a provider or a list of them"),
        (lambda: sky.offers([sky.Local(), "aws"]), TypeError, r"'aws' is not a provider"),  # type: ignore[list-item]
        (lambda: sky.offers(sky.Local(), accelerator="H100"), TypeError, r"H100\(count=8\)"),  # type: ignore[arg-type]
        (
            lambda: sky.offers(sky.Local(), accelerator=A.H100(count=0.5)),
            ValueError,
            r"rent whole accelerators",
        ),
        (lambda: sky.offers(sky.Local(), max_age=-1), ValueError, r"max_age=-1"),
        (lambda: sky.offers(sky.Local(), region=""), ValueError, r"region=''"),
    ],
)
def test_bad_arguments_are_refused(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_local_lists_this_machine() -> None:
    (machine,) = sky.offers(sky.Local())
    assert machine.name == "this machine"
    assert machine.on_demand_price == 0.0
    assert machine.vcpus is not None
    assert machine.vcpus >= 1
