"""``sky.Offers``: the chainable query over what providers offer (no provider is called)."""

from __future__ import annotations

import pytest

import skyward as sky

A = sky.accelerators


def _offer(name: str, **fields: object) -> sky.Offer:
    fields.setdefault("provider", "sky.AWS()")
    return sky.Offer(name=name, **fields)  # type: ignore[arg-type]


H100_SPOT = _offer(
    "p5.48xlarge",
    accelerator=A.H100(count=8, form_factor="SXM"),
    vcpus=192,
    memory_gb=2048,
    architecture="x86_64",
    regions=("us-east-1",),
    spot_price=30.0,
    on_demand_price=55.0,
)
H100_ONE = _offer(
    "NVIDIA H100 80GB HBM3",
    provider="sky.RunPod()",
    accelerator=A.H100(count=1, form_factor="SXM"),
    on_demand_price=2.5,
)
A100 = _offer(
    "A100 SXM4 x1 (ask 7)",
    provider="sky.VastAI()",
    accelerator=A.A100(count=1, memory="80GB", form_factor="SXM"),
    vcpus=16,
    memory_gb=64,
    architecture="x86_64",
    regions=("DE",),
    spot_price=0.6,
    on_demand_price=1.1,
)
CPU = _offer(
    "m7g.large", vcpus=2, memory_gb=8, architecture="arm64", regions=("us-east-1",),
    on_demand_price=0.08,
)  # fmt: skip
OFFERS = sky.Offers(offers=(H100_SPOT, H100_ONE, A100, CPU), fetched_at=1.0)


def test_it_is_a_sequence_of_offers() -> None:
    assert len(OFFERS) == 4
    assert list(OFFERS) == [H100_SPOT, H100_ONE, A100, CPU]
    assert OFFERS[0] is H100_SPOT
    assert isinstance(OFFERS[1:], sky.Offers)
    assert list(OFFERS[1:3]) == [H100_ONE, A100]
    assert repr(OFFERS) == (
        "<Offers: 4 from sky.AWS(), sky.RunPod(), sky.VastAI(), priced cheapest>"
    )


def test_the_accelerator_filter_judges_model_memory_form_and_count() -> None:
    assert list(OFFERS.accelerator(A.H100())) == [H100_SPOT, H100_ONE]
    assert list(OFFERS.accelerator(A.H100(count=8))) == [H100_SPOT]
    assert list(OFFERS.accelerator(A.A100(memory="80GB"))) == [A100]
    assert list(OFFERS.accelerator(A.A100(memory="40GB"))) == []
    assert list(OFFERS.accelerator(A.H100(form_factor="PCIe"))) == []
    with pytest.raises(TypeError, match=r"sky\.accelerators\.H100\(\)"):
        OFFERS.accelerator("H100")  # type: ignore[arg-type]


def test_pricing_follows_spot_and_on_demand() -> None:
    assert OFFERS.price(H100_SPOT) == 30.0  # the cheaper of the two
    spot = OFFERS.spot()
    assert list(spot) == [H100_SPOT, A100]
    assert spot.pricing == "spot"
    on_demand = OFFERS.on_demand()
    assert on_demand.price(H100_SPOT) == 55.0
    assert list(on_demand.max_price(2.5)) == [H100_ONE, A100, CPU]
    assert list(OFFERS.max_price(1)) == [A100, CPU]


def test_cheapest_sorts_by_the_querys_price_and_keeps_the_first_n() -> None:
    assert list(OFFERS.cheapest()) == [CPU, A100, H100_ONE, H100_SPOT]
    assert list(OFFERS.on_demand().cheapest(2)) == [CPU, A100]
    assert list(OFFERS.accelerator(A.H100()).on_demand().cheapest(1)) == [H100_ONE]
    unpriced = _offer("host gpu1", provider="sky.SSH()")
    assert list(sky.Offers(offers=(unpriced, CPU)).cheapest()) == [CPU, unpriced]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"cheapest\("):
            OFFERS.cheapest(bad)  # type: ignore[arg-type]


def test_hardware_place_and_provider_filters() -> None:
    assert list(OFFERS.provider("aws")) == [H100_SPOT, CPU]
    assert list(OFFERS.provider("RunPod", "vastai")) == [H100_ONE, A100]
    assert list(OFFERS.region("DE")) == [A100]
    assert list(OFFERS.architecture("arm64")) == [CPU]
    # Unknown hardware (RunPod lists none) does not pass a minimum.
    assert list(OFFERS.min_vcpus(16)) == [H100_SPOT, A100]
    assert list(OFFERS.min_memory(100)) == [H100_SPOT]
    assert list(OFFERS.where(lambda o: o.name.startswith("m7"))) == [CPU]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda o: o.provider("azure"), r"provider\('azure'\): not a provider type"),
        (lambda o: o.provider(), r"name at least one provider type"),
        (lambda o: o.max_price(-1), r"max_price\(-1\): pass a number >= 0"),
        (lambda o: o.max_price("3"), r"max_price\('3'\)"),
        (lambda o: o.region(""), r"region\(''\): pass a region name"),
        (lambda o: o.architecture("x86"), r"architecture\('x86'\): pass \"x86_64\" or"),
        (lambda o: o.min_vcpus(None), r"min_vcpus\(None\)"),
        (lambda o: o.where("fast"), r"where\('fast'\): pass a function"),
    ],
)
def test_bad_arguments_are_refused_naming_the_method(call: object, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        call(OFFERS)  # type: ignore[operator]


def test_errors_are_kept_through_the_chain() -> None:
    failed = sky.Offers(offers=(CPU,), errors=(("sky.RunPod()", "no answer"),))
    narrowed = failed.on_demand().cheapest(1)
    assert narrowed.errors == (("sky.RunPod()", "no answer"),)
    assert "1 provider(s) failed" in repr(narrowed)
