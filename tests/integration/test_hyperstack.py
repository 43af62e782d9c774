"""``sky.Hyperstack`` end to end against a fake Hyperstack (``fake_hyperstack.py``): the
provider lists the flavors and the pricebook, keeps an environment per region, imports the
pool's key, creates one VM per node with a host key in its user data, and each VM is a real
OpenSSH ``sshd`` on loopback that the pool logs in to, bootstraps and runs workers on.
Nothing here reaches Hyperstack; no address but loopback is contacted.
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
from fake_hyperstack import IMAGE, FakeHyperstack

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeHyperstack, **fields: Any) -> sky.Hyperstack:
    return sky.Hyperstack(api_key=api.api_key, api_url=api.api_url, username="root", **fields)


@sky.function
def _where() -> dict[str, Any]:
    return {"node": sky.instance_info().node, "vm": int(os.environ["FAKE_HYPERSTACK_VM_ID"])}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeHyperstack) -> set[int]:
    return {vm.id for vm in api.live()}


def _creates(api: FakeHyperstack, since: int) -> list[Any]:
    return [r.body for r in posted(api.requests[since:], "/core/virtual-machines")]


def _keys(api: FakeHyperstack) -> set[str]:
    """The names of the keypairs the fake holds (a killed client's stays: compare)."""
    return {k["name"] for k in api.keypairs.values()}


def _where_made(api: FakeHyperstack, since: int) -> list[tuple[str, str]]:
    """(flavor, environment) of each create sent since ``since``."""
    return [(b["flavor_name"], b["environment_name"]) for b in _creates(api, since)]


@pytest.fixture
def restocked(fake_hyperstack: FakeHyperstack) -> Iterator[FakeHyperstack]:
    """The fake, its flavors' stock as it was once the test is done (selling out lasts)."""
    stock = [entry["stock_available"] for entry in fake_hyperstack.flavors]
    try:
        yield fake_hyperstack
    finally:
        fake_hyperstack.sell_out.clear()
        for entry, was in zip(fake_hyperstack.flavors, stock, strict=True):
            entry["stock_available"] = was


def test_a_pool_of_two_vms_runs_and_everything_is_deleted(
    fake_hyperstack: FakeHyperstack, tmp_path: Path
) -> None:
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since = len(fake_hyperstack.requests)
    with sky.Compute(
        provider=provider(fake_hyperstack), accelerator=A.H100(), nodes=2, options=options
    ) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(fake_hyperstack)
        (key,) = [k for k in fake_hyperstack.keypairs.values() if job in k["name"]]
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["vm"] for r in per_node} == live
    assert not _live(fake_hyperstack) & live, "a VM outlived its pool"
    creates = _creates(fake_hyperstack, since)
    # The cheapest H100 flavor with one GPU, in its first region with stock.
    assert _where_made(fake_hyperstack, since) == [("n3-H100x1", "skyward-canada-1")] * 2
    assert fake_hyperstack.environments["skyward-canada-1"]["region"] == "CANADA-1"
    assert key["name"] == f"skyward-{job}-canada-1"
    assert key["environment"]["name"] == "skyward-canada-1"
    for body in creates:
        assert body["key_name"] == key["name"]
        assert body["name"].startswith(f"skyward-{job}-")
        assert (body["image_name"], body["count"], body["assign_floating_ip"]) == (IMAGE, 1, True)
        assert body["user_data"].startswith("#cloud-config\n")
        (rule,) = body["security_rules"]
        assert rule["direction"] == "ingress"
        assert (rule["protocol"], rule["port_range_min"], rule["port_range_max"]) == ("tcp", 22, 22)
        assert rule["remote_ip_prefix"] == "0.0.0.0/0"
    assert not [k for k in fake_hyperstack.keypairs.values() if job in k["name"]], (
        "the pool's keypair outlived it"
    )
    assert "skyward-canada-1" in fake_hyperstack.environments  # kept for the next pool
    sent = fake_hyperstack.requests[since:]
    assert {r.headers.get("api_key") for r in sent} == {fake_hyperstack.api_key}
    assert not any("authorization" in r.headers for r in sent)
    assert fake_hyperstack.api_key not in log.read_text()
    assert fake_hyperstack.api_key not in repr(provider(fake_hyperstack))


def test_offers_list_each_flavor_skyward_names_with_its_stock_and_price(
    fake_hyperstack: FakeHyperstack,
) -> None:
    config = sky.Hyperstack(api_key=fake_hyperstack.api_key, api_url=fake_hyperstack.api_url)
    by_name = {o.name: o for o in sky.offers(config)}
    # Every count; the RTX A4000 (no such model in sky.accelerators), the spot flavor and
    # the CPU flavor are left out.
    assert set(by_name) == {
        "n3-RTX-A6000x1",
        "n3-A100x1",
        "n3-A100x2",
        "n3-H100x1",
        "n3-H100-SXM5x1",
        "n3-H100x8-NVLink",
    }
    a100 = by_name["n3-A100x2"]
    assert a100.accelerator == A.A100(count=2, memory="80GB", form_factor="PCIe")
    assert (a100.on_demand_price, a100.spot_price) == (pytest.approx(2.7), None)
    assert (a100.vcpus, a100.memory_gb, a100.disk_gb) == (60.0, 120.0, 100.0)
    assert by_name["n3-H100x1"].regions == ("CANADA-1", "NORWAY-1")
    assert (by_name["n3-H100x8-NVLink"].regions, by_name["n3-H100x8-NVLink"].on_demand_price) == (
        (),
        None,
    )  # in stock nowhere: no price
    norway = sky.Hyperstack(
        api_key=fake_hyperstack.api_key, api_url=fake_hyperstack.api_url, region="NORWAY-1"
    )
    two = sky.offers(norway, accelerator=A.H100())
    assert [(o.name, o.regions) for o in two] == [("n3-H100x1", ("NORWAY-1",))]


def test_sky_offers_list_reads_the_key_from_its_shell(
    fake_hyperstack: FakeHyperstack, tmp_path: Path
) -> None:
    """``sky offers list hyper``: the table skyward.toml names, the key from the shell."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.hyper]\ntype = "hyperstack"\napi_url = "{fake_hyperstack.api_url}"\n'
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "HYPERSTACK_API_KEY": fake_hyperstack.api_key,
    }
    done = run_sky(tmp_path, env, "offers", "list", "hyper", "--accelerator", "a100", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"n3-A100x1"}
    assert rows["n3-A100x1"]["on_demand_price"] == pytest.approx(1.35)
    assert fake_hyperstack.api_key not in done.stdout + done.stderr


def test_no_stock_falls_back_to_the_next_region_then_the_next_flavor(
    restocked: FakeHyperstack,
) -> None:
    restocked.sell_out |= {("n3-H100x1", "CANADA-1"), ("n3-H100x1", "NORWAY-1")}
    since, keys = len(restocked.requests), _keys(restocked)
    with sky.Compute(provider=provider(restocked), accelerator=A.H100(), options=QUIET) as pool:
        assert _square(5) >> pool == 25
    assert _where_made(restocked, since) == [
        ("n3-H100x1", "skyward-canada-1"),
        ("n3-H100x1", "skyward-norway-1"),
        ("n3-H100-SXM5x1", "skyward-us-1"),
    ]
    assert not restocked.live()
    assert _keys(restocked) == keys


def test_a_quota_refusal_mid_pool_ends_what_started_and_says_the_fix(
    fake_hyperstack: FakeHyperstack,
) -> None:
    options = sky.Options(console="silent", max_provision_attempts=1)
    keys = _keys(fake_hyperstack)
    fake_hyperstack.fail_creates(
        1, message="Quota exceeded: your organization may run 1 GPU VM", after=1
    )
    with (
        pytest.raises(sky.ProvisionError, match="quota") as raised,
        sky.Compute(
            provider=provider(fake_hyperstack), accelerator=A.A100(), nodes=2, options=options
        ),
    ):
        pytest.fail("a pool came up past its quota")
    assert "ask Hyperstack's support" in str(raised.value)
    assert not fake_hyperstack.live()
    assert _keys(fake_hyperstack) == keys


def test_bad_settings_fail_before_anything_is_created(
    fake_hyperstack: FakeHyperstack, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = len(fake_hyperstack.requests)
    monkeypatch.delenv("HYPERSTACK_API_KEY", raising=False)
    refuses_bad_settings(
        provider(fake_hyperstack),
        A.A100,
        cloud="Hyperstack",
        keyless=sky.Hyperstack(api_url=fake_hyperstack.api_url),
        key_env="HYPERSTACK_API_KEY",
        wrong=sky.Hyperstack(api_key="hs_wrong_key", api_url=fake_hyperstack.api_url),
        secret="hs_wrong_key",
    )
    assert not _creates(fake_hyperstack, since)


def test_a_pool_cancelled_while_vms_start_leaves_none(fake_hyperstack: FakeHyperstack) -> None:
    fake_hyperstack.start_delay = 3600.0  # the VMs never become active
    fake_hyperstack.delete_delay = 1.0  # and are listed DELETING a while once deleted
    since, keys = len(fake_hyperstack.requests), _keys(fake_hyperstack)
    try:
        cancel_once(
            lambda: len(_creates(fake_hyperstack, since)) == 2,
            "two VMs created",
            provider(fake_hyperstack),
            accelerator=A.A100(),
            nodes=2,
        )
    finally:
        fake_hyperstack.start_delay = 0.0
        fake_hyperstack.delete_delay = 0.0
    assert not fake_hyperstack.live()
    assert _keys(fake_hyperstack) == keys


def test_a_create_whose_answer_never_came_is_found_by_name(
    fake_hyperstack: FakeHyperstack,
) -> None:
    """A VM of the job's name the pool never heard of is deleted at its close."""
    with sky.Compute(
        provider=provider(fake_hyperstack), accelerator=A.A100(), options=QUIET
    ) as pool:
        (key,) = [k for k in fake_hyperstack.keypairs.values() if pool.job_id in k["name"]]
        sent = httpx.post(
            f"{fake_hyperstack.api_url}/core/virtual-machines",
            json={
                "name": f"skyward-{pool.job_id}-0-99",
                "environment_name": key["environment"]["name"],
                "image_name": IMAGE,
                "flavor_name": "n3-A100x1",
                "key_name": key["name"],
                "count": 1,
            },
            headers={"api_key": fake_hyperstack.api_key},
        )
        assert sent.status_code == 200, sent.text
        assert len(fake_hyperstack.live()) == 2
    assert not fake_hyperstack.live()


def test_a_killed_vm_is_replaced_and_its_call_sent_again(fake_hyperstack: FakeHyperstack) -> None:
    with sky.Compute(
        provider=provider(fake_hyperstack), accelerator=A.A100(), options=QUIET
    ) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: fake_hyperstack.kill(ran["vm"])
        )
    assert second["vm"] != first["vm"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not fake_hyperstack.live()  # the ERROR one was deleted too


_CLIENT = lease_client(
    "sky.Hyperstack(api_key=sys.argv[1], api_url=sys.argv[2], username='root')",
    "sky.accelerators.A100()",
)


def test_the_vm_of_a_client_that_died_is_deleted_by_its_reaper(
    fake_hyperstack: FakeHyperstack,
) -> None:
    """Nothing on the VM can delete it (Hyperstack gives it no credential), so the pool's
    reaper, a process beside the client, deletes it once the client is gone, and the pool's
    keypair, as the pool's close would."""
    api = fake_hyperstack
    keypairs: list[int] = []

    def up(vm: int) -> None:
        key = api.vms[vm].keypair
        assert key["id"] in api.keypairs
        keypairs.append(key["id"])

    job, _ = reaped(_CLIENT, (api.api_key, api.api_url), lambda: _live(api), up)
    (key_id,) = keypairs
    assert key_id not in api.keypairs, "the pool's keypair outlived it"
    assert not any(name.startswith(f"skyward-{job}") for name in _keys(api))
