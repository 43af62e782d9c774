"""``sky.Vultr`` end to end against a fake Vultr (``fake_vultr.py``): the provider lists the
Cloud GPU plans and the regions' availability, registers the pool's key, creates one instance
per node with a host key in its (base64) user data, and each instance is a real OpenSSH
``sshd`` on loopback that the pool logs in to, bootstraps and runs workers on. Nothing here
reaches Vultr; no address but loopback is contacted.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import (
    across_a_preemption,
    cancel_once,
    lease_client,
    reaped,
    run_sky,
)
from cloud_checks import debug_logged, posted, refuses_bad_settings
from fake_vultr import FakeVultr

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeVultr, **fields: Any) -> sky.Vultr:
    return sky.Vultr(api_key=api.api_key, api_url=api.api_url, **fields)


@sky.function
def _where() -> dict[str, Any]:
    machine = os.environ["FAKE_VULTR_MACHINE"]
    return {"node": sky.instance_info().node, "instance": machine.rsplit("/", 1)[-1]}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeVultr) -> set[str]:
    return {instance.id for instance in api.live()}


def _creates(api: FakeVultr, since: int) -> list[Any]:
    return [r.body for r in posted(api.requests[since:], "/instances")]


@pytest.fixture
def restocked(fake_vultr: FakeVultr) -> Iterator[FakeVultr]:
    """The fake, its regions' availability as it was once the test is done (selling out
    lasts)."""
    was = {region: list(plans) for region, plans in fake_vultr.availability.items()}
    try:
        yield fake_vultr
    finally:
        fake_vultr.sell_out.clear()
        fake_vultr.availability = was


def test_a_pool_of_two_instances_runs_and_everything_is_deleted(
    fake_vultr: FakeVultr, tmp_path: Path
) -> None:
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since = len(fake_vultr.requests)
    with sky.Compute(
        provider=provider(fake_vultr), accelerator=A.A16(), nodes=2, options=options
    ) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(fake_vultr)
        (key,) = fake_vultr.ssh_keys.values()
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["instance"] for r in per_node} == live
    assert not _live(fake_vultr) & live, "an instance outlived its pool"
    creates = _creates(fake_vultr, since)
    # The one A16 plan, in its first region that has it.
    assert [(b["plan"], b["region"], b["os_id"]) for b in creates] == [
        ("vcg-a16-6c-64g-16vram", "ewr", 1743)
    ] * 2
    assert {b["sshkey_id"][0] for b in creates} == {key["id"]}
    assert key["name"] == f"skyward-{job}"
    assert all(b["label"].startswith(f"skyward-{job}-") for b in creates)
    assert all(base64.b64decode(b["user_data"]).startswith(b"#cloud-config\n") for b in creates)
    assert not fake_vultr.ssh_keys, "the pool's SSH key outlived it"
    sent = fake_vultr.requests[since:]
    assert {r.headers.get("authorization") for r in sent} == {f"Bearer {fake_vultr.api_key}"}
    assert fake_vultr.api_key not in log.read_text()
    assert fake_vultr.api_key not in repr(provider(fake_vultr))


def test_offers_list_each_whole_gpu_plan_with_its_regions_and_price(
    fake_vultr: FakeVultr,
) -> None:
    by_name = {o.name: o for o in sky.offers(provider(fake_vultr))}
    # The vGPU slices (a fraction of one A100 or H100) and a GPU Skyward cannot name are
    # left out.
    assert set(by_name) == {
        "vcg-a16-6c-64g-16vram",
        "vcg-a100-12c-120g-80vram",
        "vcg-a100-24c-240g-160vram",
        "vcg-a40-24c-180g-48vram",
        "vcg-l40s-16c-180g-48vram",
        "vcg-l40s-24c-240g-48vram",
    }
    two = by_name["vcg-a100-24c-240g-160vram"]
    assert two.accelerator == A.A100(count=2, memory="80GB")
    assert (two.on_demand_price, two.spot_price) == (pytest.approx(4.0), None)
    assert (two.vcpus, two.memory_gb, two.disk_gb) == (24.0, 360.0, 2400.0)
    # Sold in ewr, ams and ord; ewr cannot create it now.
    assert by_name["vcg-a100-12c-120g-80vram"].regions == ("ams", "ord")
    amsterdam = provider(fake_vultr, region="ams")
    found = sky.offers(amsterdam, accelerator=A.L40S())
    assert [(o.name, o.regions) for o in found] == [("vcg-l40s-16c-180g-48vram", ("ams",))]


def test_a_plan_available_nowhere_has_no_price(restocked: FakeVultr) -> None:
    restocked.availability["ams"].remove("vcg-a40-24c-180g-48vram")
    listed = sky.offers(provider(restocked), max_age=0)  # not the listing cached before
    (offer,) = [o for o in listed if o.name.startswith("vcg-a40")]
    assert (offer.regions, offer.on_demand_price) == ((), None)


def test_sky_offers_list_reads_the_key_from_its_shell(
    fake_vultr: FakeVultr, tmp_path: Path
) -> None:
    """``sky offers list vu``: the table skyward.toml names, the key from the shell."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.vu]\ntype = "vultr"\napi_url = "{fake_vultr.api_url}"\n'
    )
    env = {**os.environ, "HOME": str(tmp_path / "home"), "VULTR_API_KEY": fake_vultr.api_key}
    done = run_sky(tmp_path, env, "offers", "list", "vu", "--accelerator", "a40", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"vcg-a40-24c-180g-48vram"}
    assert rows["vcg-a40-24c-180g-48vram"]["on_demand_price"] == pytest.approx(1.714)
    assert fake_vultr.api_key not in done.stdout + done.stderr


def test_a_plan_no_longer_available_falls_back_to_the_next_region_then_the_next_plan(
    restocked: FakeVultr,
) -> None:
    restocked.sell_out |= {
        ("vcg-l40s-16c-180g-48vram", "lax"),
        ("vcg-l40s-16c-180g-48vram", "ams"),
    }
    since = len(restocked.requests)
    with sky.Compute(provider=provider(restocked), accelerator=A.L40S(), options=QUIET) as pool:
        assert _square(5) >> pool == 25
    assert [(b["plan"], b["region"]) for b in _creates(restocked, since)] == [
        ("vcg-l40s-16c-180g-48vram", "lax"),
        ("vcg-l40s-16c-180g-48vram", "ams"),
        ("vcg-l40s-24c-240g-48vram", "ord"),
    ]
    assert not restocked.live()
    assert not restocked.ssh_keys


def test_a_limit_refusal_mid_pool_ends_what_started_and_says_the_fix(
    fake_vultr: FakeVultr,
) -> None:
    options = sky.Options(console="silent", max_provision_attempts=1)
    fake_vultr.fail_creates(
        1, "You have reached the maximum monthly fee limit for this account.", after=1
    )
    with (
        pytest.raises(sky.ProvisionError, match="monthly fee limit") as raised,
        sky.Compute(provider=provider(fake_vultr), accelerator=A.A16(), nodes=2, options=options),
    ):
        pytest.fail("a pool came up past its limit")
    assert "ask Vultr's support to raise it" in str(raised.value)
    assert not fake_vultr.live()
    assert not fake_vultr.ssh_keys


def test_bad_settings_fail_before_anything_is_created(
    fake_vultr: FakeVultr, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = len(fake_vultr.requests)
    monkeypatch.delenv("VULTR_API_KEY", raising=False)
    refuses_bad_settings(
        provider(fake_vultr),
        A.A16,
        cloud="Vultr",
        whole=r"sky\.Vultr\(\) rents whole GPUs",
        keyless=sky.Vultr(api_url=fake_vultr.api_url),
        key_env="VULTR_API_KEY",
        wrong=sky.Vultr(api_key="WRONGKEY", api_url=fake_vultr.api_url),
        secret="WRONGKEY",
    )
    assert not _creates(fake_vultr, since)


def test_a_pool_cancelled_while_instances_start_leaves_none(fake_vultr: FakeVultr) -> None:
    fake_vultr.start_delay = 3600.0  # the instances never become active
    since = len(fake_vultr.requests)
    try:
        cancel_once(
            lambda: len(_creates(fake_vultr, since)) == 2,
            "two instances created",
            provider(fake_vultr),
            accelerator=A.A16(),
            nodes=2,
        )
    finally:
        fake_vultr.start_delay = 0.0
    assert not fake_vultr.live()
    assert not fake_vultr.ssh_keys


def test_a_create_whose_answer_never_came_is_found_by_label(fake_vultr: FakeVultr) -> None:
    """An instance of the job's label the pool never heard of is deleted at its close."""
    with sky.Compute(provider=provider(fake_vultr), accelerator=A.A16(), options=QUIET) as pool:
        (key,) = fake_vultr.ssh_keys.values()
        sent = httpx.post(
            f"{fake_vultr.api_url}/instances",
            json={
                "region": "ord",
                "plan": "vcg-a16-6c-64g-16vram",
                "os_id": 1743,
                "sshkey_id": [key["id"]],
                "label": f"skyward-{pool.job_id}-0-99",
            },
            headers={"Authorization": f"Bearer {fake_vultr.api_key}"},
        )
        assert sent.status_code == 202, sent.text
        assert len(fake_vultr.live()) == 2
    assert not fake_vultr.live()


def test_a_killed_instance_is_replaced_and_its_call_sent_again(fake_vultr: FakeVultr) -> None:
    with sky.Compute(provider=provider(fake_vultr), accelerator=A.A16(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: fake_vultr.kill(ran["instance"])
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not fake_vultr.live()  # the stopped one was deleted too


_CLIENT = lease_client(
    "sky.Vultr(api_key=sys.argv[1], api_url=sys.argv[2])", "sky.accelerators.A16()"
)


def test_the_instance_of_a_client_that_died_is_deleted_by_its_reaper(
    fake_vultr: FakeVultr,
) -> None:
    """Nothing on the instance can delete it (Vultr gives it no credential), so the pool's
    reaper, a process beside the client, deletes it once the client is gone."""
    api = fake_vultr
    reaped(_CLIENT, (api.api_key, api.api_url), lambda: _live(api))
