"""``sky.Scaleway`` end to end against a fake Scaleway (``fake_scaleway.py``): the provider
lists each zone's commercial types and availability, registers the pool's key with the
Project, creates one Instance per node, gives it cloud-init user data with a host key and
powers it on, and each Instance is a real OpenSSH ``sshd`` on loopback that the pool logs in
to, bootstraps and runs workers on. Nothing here reaches Scaleway; no address but loopback is
contacted.
"""

from __future__ import annotations

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
from fake_scaleway import FakeScaleway

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeScaleway, **fields: Any) -> sky.Scaleway:
    return sky.Scaleway(
        secret_key=api.secret_key, project_id=api.project_id, api_url=api.api_url, **fields
    )


@sky.function
def _where() -> dict[str, Any]:
    machine = os.environ["FAKE_SCALEWAY_MACHINE"]
    return {"node": sky.instance_info().node, "instance": machine.rsplit("/", 1)[-1]}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeScaleway) -> set[str]:
    return {server.id for server in api.live()}


def _creates(api: FakeScaleway, since: int) -> list[tuple[str, dict[str, Any]]]:
    """(zone, body) of each create sent since ``since``."""
    return [(r.path.split("/")[4], r.body) for r in posted(api.requests[since:], "/servers")]


def _headers(api: FakeScaleway) -> dict[str, str]:
    return {"X-Auth-Token": api.secret_key}


@pytest.fixture
def restocked(fake_scaleway: FakeScaleway) -> Iterator[FakeScaleway]:
    """The fake, its zones' types and stock as they were once the test is done (selling out
    lasts)."""
    stock = {zone: dict(listed) for zone, listed in fake_scaleway.stock.items()}
    types = {zone: dict(listed) for zone, listed in fake_scaleway.types.items()}
    try:
        yield fake_scaleway
    finally:
        fake_scaleway.sell_out.clear()
        fake_scaleway.stock, fake_scaleway.types = stock, types


def test_a_pool_of_two_instances_runs_and_nothing_is_left(
    fake_scaleway: FakeScaleway, tmp_path: Path
) -> None:
    api = fake_scaleway
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since = len(api.requests)
    with sky.Compute(provider=provider(api), accelerator=A.L4(), nodes=2, options=options) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(api)
        (key,) = api.ssh_keys.values()
        volumes = {api.servers[s].volume_id for s in live}
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["instance"] for r in per_node} == live
    assert not _live(api) & live, "an Instance outlived its pool"
    assert not volumes & set(api.volumes), "a Block Storage volume outlived its Instance"
    assert not api.ssh_keys, "the pool's SSH key outlived it"
    creates = _creates(api, since)
    # The cheapest L4 type, in its first zone that has it.
    assert [(zone, b["commercial_type"], b["image"]) for zone, b in creates] == [
        ("fr-par-2", "L4-1-24G", "ubuntu_noble_gpu_os_13_nvidia")
    ] * 2
    assert all(b["project"] == api.project_id and b["dynamic_ip_required"] for _, b in creates)
    assert all(b["name"].startswith(f"skyward-{job}-") for _, b in creates)
    assert all(b["tags"] == [f"skyward-{job}"] for _, b in creates)
    assert (key["name"], key["project_id"]) == (f"skyward-{job}", api.project_id)
    for server_id in live:
        assert api.servers[server_id].user_data["cloud-init"].startswith("#cloud-config\n")
    sent = api.requests[since:]
    assert {r.headers.get("x-auth-token") for r in sent} == {api.secret_key}
    assert api.secret_key not in log.read_text()
    assert api.secret_key not in repr(provider(api))


def test_offers_list_each_gpu_type_with_its_zones_and_price(fake_scaleway: FakeScaleway) -> None:
    by_name = {o.name: o for o in sky.offers(provider(fake_scaleway))}
    # GPU-3070-S (an RTX 3070, which Skyward does not name) and CPU types are left out.
    assert set(by_name) == {
        "RENDER-S",
        "L4-1-24G",
        "L4-2-24G",
        "L40S-1-48G",
        "H100-1-80G",
        "H100-SXM-2-80G",
    }
    sxm = by_name["H100-SXM-2-80G"]
    assert sxm.accelerator == A.H100(count=2, form_factor="SXM")
    assert (sxm.on_demand_price, sxm.spot_price) == (pytest.approx(6.018), None)
    assert (sxm.vcpus, sxm.memory_gb, sxm.disk_gb) == (32.0, 240.0, None)
    assert by_name["RENDER-S"].accelerator == A.P100()
    # Sold in fr-par-2, nl-ams-1 and pl-waw-2; each has it (scarce is still some).
    assert by_name["L4-1-24G"].regions == ("fr-par-2", "nl-ams-1", "pl-waw-2")
    # fr-par-2 has no L40S left; pl-waw-2 no H100.
    assert by_name["L40S-1-48G"].regions == ("nl-ams-1",)
    assert by_name["H100-1-80G"].regions == ("fr-par-2",)
    warsaw = provider(fake_scaleway, zone="pl-waw-2")
    found = sky.offers(warsaw, accelerator=A.L4())
    assert [(o.name, o.regions) for o in found] == [("L4-1-24G", ("pl-waw-2",))]


def test_a_type_no_zone_has_has_no_price(restocked: FakeScaleway) -> None:
    restocked.stock["nl-ams-1"]["L40S-1-48G"] = "shortage"
    listed = sky.offers(provider(restocked), max_age=0)  # not the listing cached before
    (offer,) = [o for o in listed if o.name == "L40S-1-48G"]
    assert (offer.regions, offer.on_demand_price) == ((), None)


def test_sky_offers_list_reads_the_credentials_from_its_shell(
    fake_scaleway: FakeScaleway, tmp_path: Path
) -> None:
    """``sky offers list scw``: the table skyward.toml names, the key from the shell."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.scw]\ntype = "scaleway"\napi_url = "{fake_scaleway.api_url}"\n'
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "SCW_SECRET_KEY": fake_scaleway.secret_key,
        "SCW_DEFAULT_PROJECT_ID": fake_scaleway.project_id,
    }
    done = run_sky(tmp_path, env, "offers", "list", "scw", "--accelerator", "h100", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"H100-1-80G"}
    assert rows["H100-1-80G"]["on_demand_price"] == pytest.approx(2.73)
    assert fake_scaleway.secret_key not in done.stdout + done.stderr


def test_no_stock_falls_back_to_the_next_zone_then_the_next_type(restocked: FakeScaleway) -> None:
    # A second one-GPU H100 type, dearer (made up for the test), sold in nl-ams-1 only.
    sxm = {**restocked.types["fr-par-2"]["H100-SXM-2-80G"], "gpu": 1, "hourly_price": 3.5}
    restocked.types["nl-ams-1"]["H100-SXM-1-80G"] = sxm
    restocked.stock["nl-ams-1"]["H100-SXM-1-80G"] = "scarce"
    restocked.stock["pl-waw-2"]["H100-1-80G"] = "available"
    # Both zones of the cheaper type run out between the listing and the power-on.
    restocked.sell_out |= {("H100-1-80G", "fr-par-2"), ("H100-1-80G", "pl-waw-2")}
    since = len(restocked.requests)
    with sky.Compute(provider=provider(restocked), accelerator=A.H100(), options=QUIET) as pool:
        assert _square(5) >> pool == 25
        (server,) = restocked.live()
    assert [(zone, b["commercial_type"]) for zone, b in _creates(restocked, since)] == [
        ("fr-par-2", "H100-1-80G"),
        ("pl-waw-2", "H100-1-80G"),
        ("nl-ams-1", "H100-SXM-1-80G"),
    ]
    assert (server.zone, server.body["commercial_type"]) == ("nl-ams-1", "H100-SXM-1-80G")
    assert not restocked.live()
    assert not restocked.volumes, "an Instance that never started left its volume"
    assert not restocked.ssh_keys


def test_none_in_stock_anywhere_says_so(restocked: FakeScaleway) -> None:
    restocked.sell_out |= {("L40S-1-48G", "nl-ams-1")}
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(sky.ProvisionError, match="none of this spec's GPU types in stock"),
        sky.Compute(provider=provider(restocked), accelerator=A.L40S(), options=options),
    ):
        pytest.fail("a pool came up with no stock")
    assert not restocked.live()
    assert not restocked.volumes
    assert not restocked.ssh_keys


def test_a_quota_refusal_mid_pool_ends_what_started_and_says_the_fix(
    fake_scaleway: FakeScaleway,
) -> None:
    options = sky.Options(console="silent", max_provision_attempts=1)
    fake_scaleway.fail_starts(1, "Quota exceeded for this resource", after=1)
    with (
        pytest.raises(sky.ProvisionError, match="Quota exceeded") as raised,
        sky.Compute(provider=provider(fake_scaleway), accelerator=A.L4(), nodes=2, options=options),
    ):
        pytest.fail("a pool came up past its quota")
    assert "ask for a higher quota" in str(raised.value)
    assert not fake_scaleway.live()
    assert not fake_scaleway.volumes
    assert not fake_scaleway.ssh_keys


def test_bad_settings_fail_before_anything_is_created(
    fake_scaleway: FakeScaleway, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fake_scaleway
    since = len(api.requests)
    monkeypatch.delenv("SCW_SECRET_KEY", raising=False)
    monkeypatch.delenv("SCW_DEFAULT_PROJECT_ID", raising=False)
    refuses_bad_settings(
        provider(api),
        A.L4,
        cloud="Scaleway",
        keyless=sky.Scaleway(project_id=api.project_id, api_url=api.api_url),
        key_env="SCW_SECRET_KEY",
        wrong=sky.Scaleway(secret_key="WRONGKEY", project_id=api.project_id, api_url=api.api_url),
        secret="WRONGKEY",
    )
    projectless = sky.Scaleway(secret_key=api.secret_key, api_url=api.api_url)
    with (
        pytest.raises(ValueError, match="export SCW_DEFAULT_PROJECT_ID"),
        sky.Compute(provider=projectless, accelerator=A.L4(), options=QUIET),
    ):
        pytest.fail("a pool came up with no Project")
    assert not _creates(api, since)


def test_a_pool_cancelled_while_instances_start_leaves_none(fake_scaleway: FakeScaleway) -> None:
    # Cancelled while both Instances start: Scaleway terminates a running Instance only, so
    # the teardown waits for them to run, then terminates them.
    fake_scaleway.start_delay = 5.0
    since = len(fake_scaleway.requests)
    try:
        cancel_once(
            lambda: len(_creates(fake_scaleway, since)) == 2,
            "two Instances created",
            provider(fake_scaleway),
            accelerator=A.L4(),
            nodes=2,
        )
    finally:
        fake_scaleway.start_delay = 0.0
    assert not fake_scaleway.live()
    assert not fake_scaleway.volumes
    assert not fake_scaleway.ssh_keys


def test_a_create_whose_answer_never_came_is_found_by_tag(fake_scaleway: FakeScaleway) -> None:
    """An Instance of the job's tag the pool never heard of is ended at its close, and the
    volume it leaves deleted."""
    api = fake_scaleway
    with sky.Compute(provider=provider(api), accelerator=A.L4(), options=QUIET) as pool:
        sent = httpx.post(
            f"{api.api_url}/instance/v1/zones/nl-ams-1/servers",
            json={
                "name": f"skyward-{pool.job_id}-0-99",
                "commercial_type": "L4-1-24G",
                "image": "ubuntu_noble_gpu_os_13_nvidia",
                "project": api.project_id,
                "tags": [f"skyward-{pool.job_id}"],
            },
            headers=_headers(api),
        )
        assert sent.status_code == 201, sent.text
        assert len(api.live()) == 2
    assert not api.live()
    assert not api.volumes


def test_a_killed_instance_is_replaced_and_its_call_sent_again(
    fake_scaleway: FakeScaleway,
) -> None:
    with sky.Compute(provider=provider(fake_scaleway), accelerator=A.L4(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: fake_scaleway.kill(ran["instance"])
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not fake_scaleway.live()  # the stopped one was deleted too
    assert not fake_scaleway.volumes


_CLIENT = lease_client(
    "sky.Scaleway(secret_key=sys.argv[1], project_id=sys.argv[2], api_url=sys.argv[3])",
    "sky.accelerators.L4()",
)


def test_the_instance_of_a_client_that_died_is_terminated_by_its_reaper(
    fake_scaleway: FakeScaleway,
) -> None:
    """Nothing on the Instance can end it (Scaleway gives it no credential), so the pool's
    reaper, a process beside the client, terminates it once the client is gone, and
    deletes the Block Storage volume it leaves, as the pool's close would."""
    api = fake_scaleway
    volumes: list[str] = []
    reaped(
        _CLIENT,
        (api.secret_key, api.project_id, api.api_url),
        lambda: _live(api),
        lambda server: volumes.append(api.servers[server].volume_id),
    )
    assert volumes[0] not in api.volumes
