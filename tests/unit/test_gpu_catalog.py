"""The listing every GPU-only cloud shares (``skyward_trio._rented.GPUCatalog``): what it
checks before any request, what it keeps of a cloud's offers, and that the cloud's client
is closed whatever happens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from skyward_trio import accelerators as A
from skyward_trio._offers import Catalog, Offer
from skyward_trio._rented import GPUCatalog


class CloudError(Exception):
    pass


class Client:
    """A stand-in for a cloud's API client: records what was asked of it."""

    def __init__(self, offers: list[Offer | None], *, fails: bool = False) -> None:
        self.offers = offers
        self.fails = fails
        self.asked: list[int] = []
        self.closed = False

    async def listed(self, config: str, wanted: int) -> list[Offer | None]:
        self.asked.append(wanted)
        if self.fails:
            raise CloudError("the cloud answered 503: try again later")
        return self.offers

    async def aclose(self) -> None:
        self.closed = True


def gpu_offer(name: str, accelerator: A.Accelerator | None) -> Offer:
    return Offer(provider="sky.Cloud()", name=name, on_demand_price=1.0, accelerator=accelerator)


OFFERS: list[Offer | None] = [
    gpu_offer("one-l4", A.L4()),
    gpu_offer("two-l4", A.L4(count=2)),
    gpu_offer("two-a100", A.A100(count=2)),
    gpu_offer("cpu", None),
    None,  # a type the cloud lists that Skyward does not name
]


TWO_L4 = A.L4(count=2)


def cloud(
    client: Client,
    credentials: Callable[[str], object] = str.upper,
    listed: Callable[[Client, str, int], Awaitable[list[Offer | None]]] = Client.listed,
) -> GPUCatalog[str, Client]:
    return GPUCatalog(
        "sky.Cloud() rents GPU machines", credentials, lambda _: client, listed, CloudError
    )


async def listing(
    client: Client,
    *,
    accelerator: A.Accelerator | None = TWO_L4,
    gpus: float = 2,
    everything: bool = False,
) -> Catalog:
    return await cloud(client)("config", accelerator=accelerator, gpus=gpus, everything=everything)


async def test_keeps_the_offers_of_that_many_gpus_and_leaves_the_model_to_the_spec() -> None:
    client = Client(OFFERS)
    catalog = await listing(client, accelerator=TWO_L4, gpus=2)
    # The A100s stay: the spec judges the model, and says what the cloud has instead.
    assert [o.name for o in catalog.offers] == ["two-l4", "two-a100"]
    assert client.asked == [2]
    assert client.closed


async def test_everything_keeps_every_offer_with_gpus() -> None:
    client = Client(OFFERS)
    catalog = await listing(client, accelerator=None, everything=True)
    assert [o.name for o in catalog.offers] == ["one-l4", "two-l4", "two-a100"]


async def test_a_fraction_of_a_gpu_is_asked_for_as_a_whole_one() -> None:
    client = Client(OFFERS)
    catalog = await listing(client, accelerator=A.L4(count=0.5), gpus=0.5)
    assert [o.name for o in catalog.offers] == ["one-l4"]
    assert client.asked == [1]


async def test_a_spec_without_a_gpu_is_told_what_the_cloud_rents_and_nothing_is_asked() -> None:
    client = Client(OFFERS)
    catalog = await listing(client, accelerator=None)
    assert catalog.error == "sky.Cloud() rents GPU machines: pass an accelerator"
    assert not catalog.offers
    assert client.asked == []


async def test_missing_credentials_raise_before_anything_is_asked() -> None:
    client = Client(OFFERS)

    def no_key(config: str) -> str:
        raise ValueError("sky.Cloud(): no API key: export CLOUD_API_KEY")

    with pytest.raises(ValueError, match="export CLOUD_API_KEY"):
        await cloud(client, credentials=no_key)("config", accelerator=TWO_L4, gpus=2)
    assert client.asked == []


async def test_the_clouds_error_becomes_the_catalogs_and_the_client_is_closed() -> None:
    client = Client(OFFERS, fails=True)
    catalog = await listing(client)
    assert catalog.error == "the cloud answered 503: try again later"
    assert client.closed


async def test_another_error_goes_through_and_the_client_is_still_closed() -> None:
    client = Client(OFFERS)

    async def broken(api: Client, config: str, wanted: int) -> list[Offer | None]:
        raise KeyError("price")

    with pytest.raises(KeyError):
        await cloud(client, listed=broken)("config", accelerator=TWO_L4, gpus=2)
    assert client.closed
