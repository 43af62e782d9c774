"""``sky.TensorDock`` end to end against a fake TensorDock (``fake_tensordock.py``): the
provider lists the locations' GPUs, creates one VM per node with the pool's key and a
cloud-init host key, and each VM is a real OpenSSH ``sshd`` on loopback that the pool logs
in to, bootstraps and runs workers on. Nothing here reaches TensorDock; no address but
loopback is contacted.
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
    lease_client,
    reaped,
    run_sky,
)
from cloud_checks import debug_logged, posted, refuses_bad_settings
from fake_tensordock import FakeTensorDock

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeTensorDock, **fields: Any) -> sky.TensorDock:
    return sky.TensorDock(api_key=api.api_token, api_url=api.api_url, username="root", **fields)


@sky.function
def _where() -> dict[str, Any]:
    machine = os.environ["FAKE_TENSORDOCK_MACHINE"]
    return {"node": sky.instance_info().node, "vm": machine.rsplit("/", 1)[-1]}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeTensorDock) -> set[str]:
    return {vm.id for vm in api.live()}


def _creates(api: FakeTensorDock, since: int) -> list[dict[str, Any]]:
    """The attributes of each create sent since ``since``."""
    return [r.body["data"]["attributes"] for r in posted(api.requests[since:], "/instances")]


@pytest.fixture
def restocked(fake_tensordock: FakeTensorDock) -> Iterator[FakeTensorDock]:
    """The fake, its capacity as it was once the test is done."""
    capacity = dict(fake_tensordock.capacity)
    try:
        yield fake_tensordock
    finally:
        fake_tensordock.capacity = capacity


def test_a_pool_of_two_vms_runs_and_nothing_is_left(
    fake_tensordock: FakeTensorDock, tmp_path: Path
) -> None:
    api = fake_tensordock
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since = len(api.requests)
    with sky.Compute(
        provider=provider(api), accelerator=A.RTX_4090(), nodes=2, options=options
    ) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(api)
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["vm"] for r in per_node} == live
    assert not _live(api) & live, "a VM outlived its pool"
    creates = _creates(api, since)
    # The cheapest RTX 4090, in Austin, with the vCPUs and RAM per GPU asked for.
    assert [(c["location_id"], c["resources"]["gpus"]) for c in creates] == [
        ("loc-austin", {"geforcertx4090-pcie-24gb": {"count": 1}})
    ] * 2
    assert all(c["name"].startswith(f"skyward-{job}-") for c in creates)
    assert all(c["useDedicatedIp"] is True and c["image"] == "ubuntu2404" for c in creates)
    assert all(
        (c["resources"]["vcpu_count"], c["resources"]["ram_gb"], c["resources"]["storage_gb"])
        == (8, 32, 100)
        for c in creates
    )
    assert all(c["cloud_init"].startswith("#cloud-config\n") for c in creates)
    sent = api.requests[since:]
    assert {r.headers.get("authorization") for r in sent} == {f"Bearer {api.api_token}"}
    assert api.api_token not in log.read_text()
    assert api.api_token not in repr(provider(api))


def test_offers_list_each_locations_gpus_with_their_price(
    fake_tensordock: FakeTensorDock,
) -> None:
    found = sky.offers(provider(fake_tensordock), accelerator=A.RTX_4090(count=2))
    # Austin's and Chicago's RTX 4090s (each deploys 2), cheapest first; the price is the
    # GPUs' plus 16 vCPUs, 64 GB of RAM and 100 GB of storage.
    assert [(o.regions, o.on_demand_price) for o in found] == [
        (("loc-austin",), pytest.approx(0.7 + 16 * 0.003 + 64 * 0.002 + 100 * 0.0001)),
        (("loc-chicago",), pytest.approx(0.9 + 16 * 0.003 + 64 * 0.002 + 100 * 0.0001)),
    ]
    assert all(o.accelerator == A.RTX_4090(count=2) for o in found)
    assert [(o.vcpus, o.memory_gb, o.disk_gb) for o in found] == [(16.0, 64.0, 100.0)] * 2
    # Chicago deploys at most 2, Austin 4: four are offered in Austin only.
    four = sky.offers(provider(fake_tensordock), accelerator=A.RTX_4090(count=4))
    assert [o.regions for o in four] == [("loc-austin",)]
    # location= keeps one location's; an RTX 3090 (which Skyward does not name) is left out.
    chicago = provider(fake_tensordock, location="loc-chicago")
    assert {o.accelerator.name for o in sky.offers(chicago) if o.accelerator} == {
        "RTX_4090",
        "L40",
    }
    assert all(o.regions == ("loc-chicago",) for o in sky.offers(chicago))


def test_sky_offers_list_reads_the_token_from_its_shell(
    fake_tensordock: FakeTensorDock, tmp_path: Path
) -> None:
    """``sky offers list td``: the table skyward.toml names, the token from the shell."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.td]\ntype = "tensordock"\napi_url = "{fake_tensordock.api_url}"\n'
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "TENSORDOCK_API_TOKEN": fake_tensordock.api_token,
    }
    done = run_sky(tmp_path, env, "offers", "list", "td", "--accelerator", "l40", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["on_demand_price"] == pytest.approx(0.9 + 8 * 0.003 + 32 * 0.002 + 0.01)
    assert fake_tensordock.api_token not in done.stdout + done.stderr


def test_no_capacity_falls_back_to_the_next_location(restocked: FakeTensorDock) -> None:
    restocked.capacity[("loc-austin", "geforcertx4090-pcie-24gb")] = 0
    since = len(restocked.requests)
    with sky.Compute(provider=provider(restocked), accelerator=A.RTX_4090(), options=QUIET) as pool:
        assert _square(5) >> pool == 25
        (vm,) = restocked.live()
    assert [c["location_id"] for c in _creates(restocked, since)] == [
        "loc-austin",
        "loc-chicago",
    ]
    assert vm.attributes["location_id"] == "loc-chicago"
    assert not restocked.live()


def test_no_capacity_anywhere_says_so(restocked: FakeTensorDock) -> None:
    restocked.capacity[("loc-chicago", "l40-pcie-48gb")] = 0
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(sky.ProvisionError, match="TensorDock has no capacity now") as raised,
        sky.Compute(provider=provider(restocked), accelerator=A.L40(), options=options),
    ):
        pytest.fail("a pool came up with no capacity")
    assert "location=None" in str(raised.value)
    assert not restocked.live()


def test_a_balance_refusal_mid_pool_ends_what_started_and_says_the_fix(
    fake_tensordock: FakeTensorDock,
) -> None:
    options = sky.Options(console="silent", max_provision_attempts=1)
    fake_tensordock.fail_creates(1, "Insufficient balance: at least $1 is required", after=1)
    with (
        pytest.raises(sky.ProvisionError, match="Insufficient balance") as raised,
        sky.Compute(
            provider=provider(fake_tensordock), accelerator=A.H100(), nodes=2, options=options
        ),
    ):
        pytest.fail("a pool came up past its balance")
    assert "add funds" in str(raised.value)
    assert not fake_tensordock.live()


def test_bad_settings_fail_before_anything_is_created(
    fake_tensordock: FakeTensorDock, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fake_tensordock
    since = len(api.requests)
    monkeypatch.delenv("TENSORDOCK_API_TOKEN", raising=False)
    refuses_bad_settings(
        provider(api),
        A.RTX_4090,
        cloud="TensorDock",
        keyless=sky.TensorDock(api_url=api.api_url),
        key_env="TENSORDOCK_API_TOKEN",
        wrong=sky.TensorDock(api_key="WRONGTOKEN", api_url=api.api_url),
        secret="WRONGTOKEN",
    )
    assert not _creates(api, since)


def test_a_vm_whose_create_answer_never_came_is_found_by_name(
    fake_tensordock: FakeTensorDock,
) -> None:
    """A VM of the job's name the pool never heard of is deleted at its close."""
    api = fake_tensordock
    with sky.Compute(provider=provider(api), accelerator=A.L40(), options=QUIET) as pool:
        attributes = {
            "name": f"skyward-{pool.job_id}-0-99",
            "type": "virtualmachine",
            "image": "ubuntu2404",
            "location_id": "loc-chicago",
            "useDedicatedIp": True,
            "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnlyForTheFakeTensorDockXXXXXXXXXXX",
            "resources": {
                "vcpu_count": 8,
                "ram_gb": 32,
                "storage_gb": 100,
                "gpus": {"l40-pcie-48gb": {"count": 1}},
            },
        }
        sent = httpx.post(
            f"{api.api_url}/instances",
            json={"data": {"type": "virtualmachine", "attributes": attributes}},
            headers={"Authorization": f"Bearer {api.api_token}"},
        )
        assert sent.status_code == 201, sent.text
        assert len(api.live()) == 2
    assert not api.live()


def test_a_killed_vm_is_replaced_and_its_call_sent_again(
    fake_tensordock: FakeTensorDock,
) -> None:
    api = fake_tensordock
    with sky.Compute(provider=provider(api), accelerator=A.H100(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(pool, _where, lambda ran: api.kill(ran["vm"]))
    assert second["vm"] != first["vm"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not api.live()  # the stopped one was deleted too


_CLIENT = lease_client(
    "sky.TensorDock(api_key=sys.argv[1], api_url=sys.argv[2], username='root')",
    "sky.accelerators.RTX_4090()",
)


def test_the_vm_of_a_client_that_died_is_deleted_by_its_reaper(
    fake_tensordock: FakeTensorDock,
) -> None:
    """Nothing on the VM can end it (TensorDock gives it no credential), so the pool's
    reaper, a process beside the client, ends it once the client is gone."""
    api = fake_tensordock
    reaped(_CLIENT, (api.api_token, api.api_url), lambda: _live(api))
