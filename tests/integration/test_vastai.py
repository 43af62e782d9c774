"""``sky.VastAI`` end to end against a fake Vast.ai (``fake_vastai.py``): the provider
searches the marketplace's machines, rents one per node, attaches the pool's key, and each
instance is a real OpenSSH ``sshd`` on loopback that the pool logs in to, bootstraps and
runs workers on. Nothing here reaches Vast.ai; no address but loopback is contacted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from clients import across_a_preemption, cancel_once, killed_client, lease_client
from fake_vastai import FakeVastAI
from waiting import wait_until

import skyward as sky
from skyward_trio._model import Spec
from skyward_trio._offers import Choice
from skyward_trio._transport import asyncio_loop, generate_key
from skyward_trio._vastai import VastAICluster, catalog

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeVastAI, **fields: Any) -> sky.VastAI:
    return sky.VastAI(api_key=api.api_key, api_url=api.api_url, **fields)


@sky.function
def _where() -> dict[str, Any]:
    return {
        "node": sky.instance_info().node,
        "instance": os.environ.get("CONTAINER_ID"),
        "version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeVastAI) -> set[int]:
    """The ids of the instances running now."""
    return {instance.id for instance in api.live()}


def _requests(api: FakeVastAI, since: int, method: str, start: str) -> list[Any]:
    return [r for r in api.requests[since:] if r.method == method and r.path.startswith(start)]


def test_a_pool_of_two_machines_runs_and_every_instance_is_destroyed(
    vast: FakeVastAI, tmp_path: Path
) -> None:
    log = tmp_path / "pool.log"
    options = sky.Options(
        console="silent", logging=sky.LogConfig(file=str(log), level="DEBUG", console=False)
    )
    since = len(vast.requests)
    with sky.Compute(
        provider=provider(vast),
        accelerator=A.RTX_4090(),
        nodes=2,
        allocation="on-demand",
        options=options,
    ) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(vast)
    assert [r["node"] for r in per_node] == [0, 1]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert {r["version"] for r in per_node} == {version}
    assert {int(r["instance"]) for r in per_node} == live
    assert not _live(vast) & live, "an instance outlived its pool"
    creates = _requests(vast, since, "PUT", "/api/v0/asks/")
    # The two cheapest verified, reliable RTX 4090 machines with one GPU.
    assert len(creates) == 2
    for create in creates:
        assert create.body["image"] == sky.VastAI().image_reference(version)
        assert create.body["label"].startswith(f"skyward-{job}-")
        assert "price" not in create.body  # on demand: no bid
    keys = _requests(vast, since, "POST", "/api/v0/instances/")
    assert [k.body["ssh_key"].split()[0] for k in keys] == ["ssh-ed25519"] * 2
    sent = vast.requests[since:]
    assert {r.headers.get("authorization") for r in sent} == {f"Bearer {vast.api_key}"}
    assert vast.api_key not in log.read_text()


def test_spot_bids_the_machines_least_bid_and_bills_it(vast: FakeVastAI) -> None:
    since = len(vast.requests)
    with sky.Compute(
        provider=provider(vast), accelerator=A.A100(), allocation="spot", options=QUIET
    ) as pool:
        events = pool.events()
        provisioned = next(e for e in events if isinstance(e, sky.InstanceProvisioned))
        events.close()
        assert _square(3) >> pool == 9
    (create,) = _requests(vast, since, "PUT", "/api/v0/asks/")
    assert create.body["price"] == pytest.approx(0.6)
    assert provisioned.hourly_price == pytest.approx(0.6)


def test_a_machine_rented_meanwhile_gives_way_to_the_next(vast: FakeVastAI) -> None:
    since = len(vast.requests)
    vast.fail_creates(1)  # someone else rents the cheapest first
    with sky.Compute(
        provider=provider(vast), accelerator=A.RTX_4090(), allocation="on-demand", options=QUIET
    ) as pool:
        assert _square(4) >> pool == 16
    asks = [r.path for r in _requests(vast, since, "PUT", "/api/v0/asks/")]
    assert len(asks) == 2
    assert asks[0] != asks[1]


def test_the_cap_and_a_missing_key_refuse_before_anything_is_rented(
    vast: FakeVastAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = len(vast.requests)
    with (
        pytest.raises(sky.NoOfferError, match=r"max_hourly_cost=0\.1"),
        sky.Compute(
            provider=provider(vast),
            accelerator=A.RTX_4090(),
            allocation="on-demand",
            max_hourly_cost=0.1,
            options=QUIET,
        ),
    ):
        pytest.fail("a pool came up over its cap")
    assert not _requests(vast, since, "PUT", "/api/v0/asks/")
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    keyless = sky.VastAI(api_url=vast.api_url)
    with (
        pytest.raises(ValueError, match="export VAST_API_KEY"),
        sky.Compute(provider=keyless, accelerator=A.RTX_4090(), options=QUIET),
    ):
        pytest.fail("a pool came up with no key")
    wrong = sky.VastAI(api_key="vast_wrong", api_url=vast.api_url)
    with (
        pytest.raises(sky.NoOfferError, match=r"Vast\.ai refused the API key"),
        sky.Compute(provider=wrong, accelerator=A.RTX_4090(), options=QUIET),
    ):
        pytest.fail("a pool came up with a wrong key")


def test_a_pool_cancelled_while_instances_start_leaves_none(vast: FakeVastAI) -> None:
    vast.start_delay = 3600.0  # the instances never run
    since = len(vast.requests)

    try:
        cancel_once(
            lambda: len(_requests(vast, since, "PUT", "/api/v0/asks/")) == 2,
            "two instances created",
            provider(vast),
            accelerator=A.RTX_4090(),
            nodes=2,
        )
    finally:
        vast.start_delay = 0.0
    assert not _live(vast)


def test_an_instance_created_but_never_answered_is_found_by_its_label(vast: FakeVastAI) -> None:
    async def main() -> None:
        async with asyncio_loop():
            config = provider(vast)
            spec = Spec(provider=config, accelerator=A.RTX_4090())
            offers = (await catalog(config, accelerator=A.RTX_4090(), gpus=1)).offers
            offer = min(offers, key=lambda o: o.on_demand_price or 0)
            choice = Choice(index=0, spec=spec, offer=offer, spot=False, hourly_price=0.35)
            cluster = VastAICluster(
                config, job_id="c0ffee00", client_key=generate_key(), choice=choice
            )
            async with httpx.AsyncClient() as client:  # a create the pool never heard of
                ask = offer.name.rsplit("(ask ", 1)[1].rstrip(")")
                sent = await client.put(
                    f"{vast.api_url}/asks/{ask}/",
                    json={"client_id": "me", "image": "x", "label": "skyward-c0ffee00-0-1"},
                    headers={"Authorization": f"Bearer {vast.api_key}"},
                )
                assert sent.status_code == 200, sent.text
            await cluster.aclose()

    before = _live(vast)
    trio.run(main)
    assert _live(vast) == before


def test_an_outbid_instance_is_replaced_and_its_calls_sent_again(vast: FakeVastAI) -> None:
    with sky.Compute(
        provider=provider(vast), accelerator=A.RTX_4090(), allocation="spot", options=QUIET
    ) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: vast.preempt(int(ran["instance"]))
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not _live(vast)


_CLIENT = lease_client(
    "sky.VastAI(api_key=sys.argv[1], api_url=sys.argv[2])", "sky.accelerators.RTX_4090()"
)


def test_the_instances_of_a_client_that_died_destroy_themselves(vast: FakeVastAI) -> None:
    before = _live(vast)
    with killed_client(_CLIENT, vast.api_key, vast.api_url):
        (instance_id,) = _live(vast) - before
    # The worker gives its client the reconnect window, then destroys its own instance
    # with the key Vast gave it.
    wait_until(
        lambda: instance_id not in _live(vast),
        "the instance destroyed by itself",
        timeout=120,
        every=0.5,
    )
    deletes = [r for r in vast.requests if r.method == "DELETE" and str(instance_id) in r.path]
    assert deletes
    assert deletes[0].headers["authorization"] != f"Bearer {vast.api_key}"
