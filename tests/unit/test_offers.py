"""Offers against specs: allocation prices, hardware and place constraints, the cost cap,
and the order ``selection`` tries several specs in (``skyward_trio._offers``)."""

from __future__ import annotations

import pickle

import pytest

import skyward_trio as st
from skyward_trio._offers import Catalog, Offer, asks_hardware, choose, plan

LOCAL = st.Local()


def offer(name: str = "m5", **fields: object) -> Offer:
    values: dict[str, object] = {
        "provider": "sky.Cloud()",
        "name": name,
        "vcpus": 8,
        "memory_gb": 32.0,
        "disk_gb": 100.0,
        "architecture": "x86_64",
        "regions": ("us-east-1", "eu-west-1"),
        "spot_price": 0.5,
        "on_demand_price": 1.5,
    }
    return Offer(**(values | fields))  # type: ignore[arg-type]


def spec(**fields: object) -> st.Spec:
    return st.Spec(provider=LOCAL, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("allocation", "spot_price", "on_demand_price", "expected"),
    [
        ("spot-if-available", 0.5, 1.5, (0.5, True)),
        ("spot-if-available", None, 1.5, (1.5, False)),
        ("spot", 0.5, 1.5, (0.5, True)),
        ("on-demand", 0.5, 1.5, (1.5, False)),
        ("cheapest", 0.5, 1.5, (0.5, True)),
        ("cheapest", 2.0, 1.5, (1.5, False)),
        ("cheapest", 0.5, None, (0.5, True)),
        ("cheapest", None, 1.5, (1.5, False)),
    ],
)
def test_the_allocation_decides_which_price_is_taken(
    allocation: str, spot_price: float | None, on_demand_price: float | None, expected: tuple
) -> None:
    chosen = choose(
        0,
        spec(allocation=allocation),
        [offer(spot_price=spot_price, on_demand_price=on_demand_price)],
    )
    assert not isinstance(chosen, str), chosen
    assert (chosen.hourly_price, chosen.spot) == expected


@pytest.mark.parametrize(
    ("allocation", "spot_price", "on_demand_price", "reason"),
    [
        ("spot", None, 1.5, "allocation='spot': sky.Cloud() has no spot capacity"),
        ("on-demand", 0.5, None, "allocation='on-demand': sky.Cloud() has no on-demand capacity"),
        (
            "spot-if-available",
            None,
            None,
            "allocation='spot-if-available': sky.Cloud() offers no capacity",
        ),
    ],
)
def test_an_allocation_the_offer_cannot_give_is_the_reason(
    allocation: str, spot_price: float | None, on_demand_price: float | None, reason: str
) -> None:
    chosen = choose(
        0,
        spec(allocation=allocation),
        [offer(spot_price=spot_price, on_demand_price=on_demand_price)],
    )
    assert chosen == f"the spec (sky.Local()): {reason}"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"vcpus": 16}, "vcpus=16: m5 has 8 vCPUs"),
        ({"memory_gb": 64}, "memory_gb=64: m5 has 32 GB"),
        ({"disk_gb": 500}, "disk_gb=500: m5 has 100 GB"),
        ({"architecture": "arm64"}, "architecture='arm64': m5 is x86_64"),
        (
            {"region": "ap-south-1"},
            "region='ap-south-1': m5 is offered in 'us-east-1', 'eu-west-1'",
        ),
        ({"max_hourly_cost": 0.25}, "max_hourly_cost=0.25: m5 costs $0.5/h on spot"),
    ],
)
def test_each_constraint_a_spec_sets_filters_offers_and_names_itself(
    fields: dict[str, object], reason: str
) -> None:
    said = choose(0, spec(**fields), [offer()])
    assert isinstance(said, str)
    assert said.startswith(f"the spec (sky.Local()): {reason}")
    # The same constraint, met: the offer is taken.
    met = {"vcpus": 8, "memory_gb": 32, "disk_gb": 100, "architecture": "x86_64"}
    fitting = spec(**{k: met.get(k, v) for k, v in fields.items()})
    within = offer(regions=("ap-south-1",), spot_price=0.2)
    assert not isinstance(choose(0, fitting, [within]), str)


def test_unknown_hardware_cannot_be_promised_and_says_to_drop_the_constraint() -> None:
    unknown = offer(vcpus=None, architecture=None, regions=())
    assert choose(0, spec(vcpus=4), [unknown]) == (
        "the spec (sky.Local()): vcpus=4: sky.Cloud() cannot tell its machines' vCPUs before "
        "they are up; drop vcpus= for this provider"
    )
    assert "cannot tell its machines' architecture" in str(
        choose(0, spec(architecture="x86_64"), [unknown])
    )
    assert choose(0, spec(region="us-east-1"), [unknown]) == (
        "the spec (sky.Local()): region='us-east-1': sky.Cloud() has no regions; drop region="
    )
    # What is not asked for need not be known.
    assert not isinstance(choose(0, spec(), [unknown]), str)


def test_a_spec_gets_its_cheapest_offer_that_meets_every_constraint() -> None:
    small = offer("small", vcpus=2, spot_price=0.1)
    big = offer("big", vcpus=32, spot_price=0.9)
    medium = offer("medium", vcpus=16, spot_price=0.4)
    chosen = choose(0, spec(vcpus=8), [small, big, medium])
    assert not isinstance(chosen, str)
    assert (chosen.offer.name, chosen.hourly_price) == ("medium", 0.4)


def test_the_reasons_of_several_offers_are_listed_once_each() -> None:
    offers = [offer("a", vcpus=2), offer("b", vcpus=4), offer("c", vcpus=64, spot_price=9.0)]
    assert choose(2, spec(vcpus=8, max_hourly_cost=1), offers, total=3) == (
        "spec 3 of 3 (sky.Local()): vcpus=8: a has 2 vCPUs; vcpus=8: b has 4 vCPUs; "
        "max_hourly_cost=1: c costs $9/h on spot"
    )


def test_a_minimum_no_offer_reaches_says_the_most_there_is() -> None:
    offers = [offer("a", vcpus=2), offer("b", vcpus=32)]
    assert choose(0, spec(vcpus=64), offers) == (
        "the spec (sky.Local()): vcpus=64: a has 2 vCPUs; vcpus=64: b has 32 vCPUs. The most "
        "vCPUs any offer here has is 32 vCPUs: ask for vcpus=32 or less, or another provider"
    )
    why = choose(0, spec(memory_gb=512), [offer("a", memory_gb=64.0)])
    assert isinstance(why, str)
    assert why.endswith("ask for memory_gb=64 or less, or another provider")
    # Offers failing on different constraints have no one fix to give.
    mixed = choose(
        0,
        spec(vcpus=64, max_hourly_cost=1),
        [offer("a", vcpus=2), offer("c", vcpus=64, spot_price=9.0)],
    )
    assert isinstance(mixed, str)
    assert "The most" not in mixed


def test_a_marketplace_of_machines_each_failing_alike_lists_the_first_few() -> None:
    offers = [offer(f"machine {n}", on_demand_price=2.0 + n) for n in range(200)]
    why = choose(0, spec(max_hourly_cost=1, allocation="on-demand"), offers)
    assert isinstance(why, str)
    assert why.count("max_hourly_cost=1:") == 5
    assert why.startswith("the spec (sky.Local()): max_hourly_cost=1: machine 0 costs $2/h")
    assert why.endswith("; and 195 more offer(s) like these")


def test_cheapest_ranks_specs_by_what_their_initial_nodes_cost_per_hour() -> None:
    specs = [spec(nodes=4), spec(nodes=1), spec(nodes=2)]
    offers = [[offer(spot_price=1.0)], [offer(spot_price=3.5)], [offer(spot_price=1.0)]]
    choices, skipped = plan(specs, offers, "cheapest")
    # 4 x 1.0, 1 x 3.5, 2 x 1.0
    assert [c.index for c in choices] == [2, 1, 0]
    assert [c.pool_price for c in choices] == [2.0, 3.5, 4.0]
    assert skipped == []


def test_ties_and_first_keep_the_given_order() -> None:
    specs = [spec(), spec(), spec()]
    offers = [[offer(spot_price=2.0)], [offer(spot_price=1.0)], [offer(spot_price=1.0)]]
    assert [c.index for c in plan(specs, offers, "first")[0]] == [0, 1, 2]
    assert [c.index for c in plan(specs, offers, "cheapest")[0]] == [1, 2, 0]


def test_specs_nothing_can_satisfy_are_skipped_with_their_reason() -> None:
    specs = [spec(vcpus=64), spec()]
    choices, skipped = plan(specs, [[offer()], [offer()]], "cheapest")
    assert [c.index for c in choices] == [1]
    assert skipped == [
        "spec 1 of 2 (sky.Local()): vcpus=64: m5 has 8 vCPUs. The most vCPUs any offer here "
        "has is 8 vCPUs: ask for vcpus=8 or less, or another provider"
    ]


def test_when_no_spec_can_be_satisfied_one_error_lists_each() -> None:
    specs = [spec(vcpus=64), spec(allocation="spot")]
    with pytest.raises(st.NoOfferError) as caught:
        plan(specs, [[offer()], [offer(spot_price=None)]], "first")
    assert str(caught.value) == (
        "none of the 2 specs can be satisfied:\n"
        "  - spec 1 of 2 (sky.Local()): vcpus=64: m5 has 8 vCPUs. The most vCPUs any offer "
        "here has is 8 vCPUs: ask for vcpus=8 or less, or another provider\n"
        "  - spec 2 of 2 (sky.Local()): allocation='spot': sky.Cloud() has no spot capacity"
    )
    assert isinstance(caught.value, ValueError)
    assert len(caught.value.reasons) == 2
    again = pickle.loads(pickle.dumps(caught.value))
    assert (str(again), again.reasons) == (str(caught.value), caught.value.reasons)


def test_a_provider_with_no_offers_is_a_reason_too() -> None:
    with pytest.raises(st.NoOfferError, match=r"nothing can satisfy the spec \(sky.Local\(\)\): "):
        plan([spec()], [[]], "cheapest")


def test_with_every_each_machine_must_meet_the_spec_and_the_dearest_is_the_price() -> None:
    hosts = [
        offer("host a", vcpus=16, spot_price=None, on_demand_price=0.0),
        offer("host b", vcpus=4, spot_price=None, on_demand_price=0.5),
    ]
    met = choose(0, spec(vcpus=4), hosts, every=True)
    assert not isinstance(met, str)
    assert (met.offer.name, met.hourly_price) == ("host b", 0.5)
    assert choose(0, spec(vcpus=8), hosts, every=True) == (
        "the spec (sky.Local()): vcpus=8: host b has 4 vCPUs"
    )
    # Without every, one machine that fits is enough.
    assert not isinstance(choose(0, spec(vcpus=8), hosts), str)


def test_a_catalog_that_could_not_be_listed_skips_its_spec_with_the_error() -> None:
    catalogs = [Catalog(error="its hosts could not be measured: no answer"), [offer()]]
    choices, skipped = plan([spec(), spec()], catalogs, "first")
    assert [c.index for c in choices] == [1]
    assert skipped == ["spec 1 of 2 (sky.Local()): its hosts could not be measured: no answer"]
    every = Catalog(offers=(offer("x", vcpus=2), offer("y", vcpus=64)), every=True)
    with pytest.raises(st.NoOfferError, match="vcpus=8: x has 2 vCPUs"):
        plan([spec(vcpus=8)], [every], "first")


@pytest.mark.parametrize(
    "fields",
    [{"vcpus": 2}, {"memory_gb": 4}, {"disk_gb": 10}, {"architecture": "arm64"}],
)
def test_a_hardware_minimum_is_what_asks_for_machines_to_be_measured(
    fields: dict[str, object],
) -> None:
    assert asks_hardware(spec(**fields))
    assert not asks_hardware(spec(region="us-east-1", max_hourly_cost=1, allocation="spot"))


def test_the_other_offers_that_meet_a_spec_follow_the_chosen_one_taken_alike() -> None:
    offers = [
        offer("dear", spot_price=None, on_demand_price=3.0),
        offer("cheap", spot_price=None, on_demand_price=1.0),
        offer("small", vcpus=2, on_demand_price=0.5),
        offer("mid", spot_price=None, on_demand_price=2.0),
        offer("spot", spot_price=0.1, on_demand_price=9.0),
    ]
    chosen = choose(0, spec(allocation="on-demand", vcpus=4), offers)
    assert not isinstance(chosen, str), chosen
    assert chosen.offer.name == "cheap"
    assert [o.name for o in chosen.also] == ["mid", "dear", "spot"]  # by price; small fails
    cheapest = choose(0, spec(allocation="cheapest", vcpus=4), offers)
    assert not isinstance(cheapest, str), cheapest
    assert (cheapest.offer.name, cheapest.spot) == ("spot", True)
    assert cheapest.also == ()  # the others are on demand: not taken alike
