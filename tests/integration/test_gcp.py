"""``sky.GCP`` end to end against a fake GCP (``fake_gcp.py``): the provider buys a token
with a service account's signed JWT, lists the zones' machine and GPU types and the Billing
Catalog's GPU prices, inserts one VM per node with a host key in its cloud-init user data,
and each VM is a real OpenSSH ``sshd`` on loopback that the pool logs in to, bootstraps and
runs workers on. Nothing here reaches Google; no address but loopback is contacted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import Seen, across_a_preemption, cancel_once, killed_client, lease_client, run_sky
from fake_gcp import FakeGCP, FakeVM, service_account_key
from waiting import wait_until

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeGCP, tmp_path: Path, **fields: Any) -> sky.GCP:
    key = api.write_key(tmp_path / "key.json")
    return sky.GCP(
        credentials_file=str(key),
        api_url=api.api_url,
        billing_url=api.billing_url,
        username="root",
        **fields,
    )


@sky.function
def _where() -> dict[str, Any]:
    machine = os.environ["FAKE_GCP_MACHINE"]
    return {"node": sky.instance_info().node, "vm": machine.rsplit("/", 1)[-1]}


@sky.function
def _square(x: int) -> int:
    return x * x


def _inserts(api: FakeGCP, since: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (r.path.split("/")[6], r.body)
        for r in api.requests[since:]
        if r.method == "POST" and r.path.endswith("/instances")
    ]


@pytest.fixture
def restored(fake_gcp: FakeGCP) -> Iterator[FakeGCP]:
    try:
        yield fake_gcp
    finally:
        fake_gcp.exhausted.clear()
        fake_gcp.fail_inserts(-fake_gcp._quota_failures)


def test_a_pool_of_two_vms_runs_and_nothing_is_left(fake_gcp: FakeGCP, tmp_path: Path) -> None:
    api = fake_gcp
    log = tmp_path / "pool.log"
    options = sky.Options(
        console="silent", logging=sky.LogConfig(file=str(log), level="DEBUG", console=False)
    )
    since = len(api.requests)
    gcp = provider(api, tmp_path)
    with sky.Compute(provider=gcp, accelerator=A.T4(), nodes=2, options=options) as pool:
        per_node = _where() @ pool
        api.expire_tokens()  # the next request is refused: a token is bought again
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = {vm.directory.name for vm in api.live()}
        assert len(live) == 2
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["vm"] for r in per_node} == live
    assert not api.live(), "a VM outlived its pool"
    inserts = _inserts(api, since)
    # The cheapest T4 shape (one T4 on n1-standard-8), in its first zone.
    assert [(z, b["machineType"]) for z, b in inserts] == [
        ("us-central1-a", "zones/us-central1-a/machineTypes/n1-standard-8")
    ] * 2
    for zone, body in inserts:
        assert body["guestAccelerators"] == [
            {
                "acceleratorType": f"zones/{zone}/acceleratorTypes/nvidia-tesla-t4",
                "acceleratorCount": 1,
            }
        ]
        # T4s have a spot price, and the default allocation is spot-if-available.
        assert body["scheduling"] == {
            "onHostMaintenance": "TERMINATE",
            "automaticRestart": False,
            "provisioningModel": "SPOT",
            "instanceTerminationAction": "DELETE",
        }
        assert body["serviceAccounts"] == [
            {"email": "default", "scopes": ["https://www.googleapis.com/auth/compute"]}
        ]
        assert body["labels"] == {"skyward-job": job}
        assert body["name"].startswith(f"skyward-{job}-")
        items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
        assert items["ssh-keys"].startswith("root:ssh-ed25519 ")
        assert items["user-data"].startswith("#cloud-config\n")
    sent = api.requests[since:]
    assert all(r.headers["authorization"].startswith("Bearer ") for r in sent if r.path != "/token")
    assert sum(r.path == "/token" for r in sent) >= 2  # bought again once expired
    assert api.key["private_key"].splitlines()[1] not in log.read_text()
    assert "private_key" not in repr(sky.GCP(credentials=json.dumps(api.key)))


def test_offers_list_each_gpu_shape_with_its_zones_and_gpu_price(
    fake_gcp: FakeGCP, tmp_path: Path
) -> None:
    by_name = {o.name: o for o in sky.offers(provider(fake_gcp, tmp_path))}
    t4 = by_name["n1-standard-8+1xnvidia-tesla-t4"]
    assert t4.accelerator == A.T4()
    assert t4.regions == ("us-central1-a", "us-central1-b", "us-east1-c")
    assert (t4.on_demand_price, t4.spot_price) == (pytest.approx(0.35), pytest.approx(0.14))
    assert (t4.vcpus, t4.memory_gb) == (8.0, 30.0)
    # us-east1-c takes at most two T4s: four are in the us-central1 zones only.
    assert by_name["n1-standard-32+4xnvidia-tesla-t4"].regions == ("us-central1-a", "us-central1-b")
    assert by_name["n1-standard-32+4xnvidia-tesla-t4"].on_demand_price == pytest.approx(1.4)
    a2 = by_name["a2-highgpu-2g"]
    assert a2.accelerator == A.A100(count=2, memory="40GB", form_factor="SXM")
    assert a2.on_demand_price == pytest.approx(2 * 2.933908, abs=1e-4)
    assert by_name["a3-highgpu-8g"].accelerator == A.H100(count=8, form_factor="SXM")
    assert by_name["g2-standard-4"].regions == ("europe-west4-a", "us-central1-a", "us-central1-b")
    assert by_name["g2-standard-4"].on_demand_price == pytest.approx(0.61)  # its first zone's
    assert by_name["n1-standard-8+1xnvidia-tesla-p100"].regions == ("europe-west4-a",)
    assert not [n for n in by_name if n.startswith("e2-") or "ct5lp" in n]
    one = sky.offers(provider(fake_gcp, tmp_path, zone="us-central1-b"), accelerator=A.L4())
    assert [(o.name, o.regions) for o in one] == [("g2-standard-4", ("us-central1-b",))]


def test_sky_offers_list_reads_the_key_from_its_shell(fake_gcp: FakeGCP, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.g]\ntype = "gcp"\napi_url = "{fake_gcp.api_url}"\n'
        f'billing_url = "{fake_gcp.billing_url}"\n'
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "GOOGLE_APPLICATION_CREDENTIALS": str(fake_gcp.write_key(tmp_path / "k.json")),
    }
    done = run_sky(tmp_path, env, "offers", "list", "g", "--accelerator", "l4", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"g2-standard-4"}
    assert rows["g2-standard-4"]["on_demand_price"] == pytest.approx(0.61)
    assert "PRIVATE KEY" not in done.stdout + done.stderr


def test_an_exhausted_zone_falls_back_to_the_next_zone_then_the_next_type(
    restored: FakeGCP, tmp_path: Path
) -> None:
    restored.exhausted |= {("g2-standard-4", "europe-west4-a"), ("g2-standard-4", "us-central1-a")}
    since = len(restored.requests)
    with sky.Compute(
        provider=provider(restored, tmp_path), accelerator=A.L4(), options=QUIET
    ) as pool:
        assert _square(5) >> pool == 25
        (vm,) = restored.live()
    assert [(z, b["machineType"].rsplit("/", 1)[-1]) for z, b in _inserts(restored, since)] == [
        ("europe-west4-a", "g2-standard-4"),
        ("us-central1-a", "g2-standard-4"),
        ("us-central1-b", "g2-standard-4"),
    ]
    assert vm.zone == "us-central1-b"
    assert "provisioningModel" not in vm.body["scheduling"]  # the catalog has no L4 spot price
    assert not restored.live()


def test_quota_everywhere_says_the_fix(restored: FakeGCP, tmp_path: Path) -> None:
    restored.fail_inserts(2)  # the P100 shape's one zone, then... none left
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(sky.ProvisionError, match="QUOTA_EXCEEDED") as raised,
        sky.Compute(provider=provider(restored, tmp_path), accelerator=A.P100(), options=options),
    ):
        pytest.fail("a pool came up past its quota")
    assert "ask for more at https://console.cloud.google.com/iam-admin/quotas" in str(raised.value)
    assert not restored.live()


def test_bad_credentials_are_refused_with_the_fix(
    fake_gcp: FakeGCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fake_gcp
    since = len(api.requests)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with (
        pytest.raises(ValueError, match="export GOOGLE_APPLICATION_CREDENTIALS"),
        sky.Compute(provider=sky.GCP(api_url=api.api_url), accelerator=A.T4(), options=QUIET),
    ):
        pytest.fail("a pool came up with no key")
    (tmp_path / "user.json").write_text('{"type": "authorized_user"}')
    with (
        pytest.raises(ValueError, match="not 'service_account'"),
        sky.Compute(
            provider=sky.GCP(credentials_file=str(tmp_path / "user.json")),
            accelerator=A.T4(),
            options=QUIET,
        ),
    ):
        pytest.fail("a pool came up with user credentials")
    other, _ = service_account_key(api.token_uri)  # the right account, another key
    wrong = {**other, "client_email": api.key["client_email"]}
    gcp = sky.GCP(credentials=json.dumps(wrong), api_url=api.api_url, billing_url=api.billing_url)
    with (
        pytest.raises(sky.NoOfferError, match="Invalid JWT Signature") as raised,
        sky.Compute(provider=gcp, accelerator=A.T4(), options=QUIET),
    ):
        pytest.fail("a pool came up with a wrong key")
    assert "make a new JSON key" in str(raised.value)
    assert not _inserts(api, since)


def test_a_vm_whose_insert_answer_never_came_is_found_by_label(
    fake_gcp: FakeGCP, tmp_path: Path
) -> None:
    api = fake_gcp
    with sky.Compute(provider=provider(api, tmp_path), accelerator=A.T4(), options=QUIET) as pool:
        stray = {
            "name": f"skyward-{pool.job_id}-0-99",
            "machineType": "zones/us-east1-c/machineTypes/n1-standard-8",
            "disks": [{"boot": True, "initializeParams": {"sourceImage": "x"}}],
            "networkInterfaces": [{"accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}],
            "labels": {"skyward-job": pool.job_id},
        }
        answer = api._insert("us-east1-c", stray)
        assert answer.status == 200
        assert len(api.live()) == 2
    assert not api.live()


def test_a_pool_cancelled_while_vms_start_leaves_none(fake_gcp: FakeGCP, tmp_path: Path) -> None:
    fake_gcp.start_delay = 5.0
    since = len(fake_gcp.requests)
    try:
        cancel_once(
            lambda: len(_inserts(fake_gcp, since)) == 2,
            "two VMs inserted",
            provider(fake_gcp, tmp_path),
            accelerator=A.T4(),
            nodes=2,
        )
    finally:
        fake_gcp.start_delay = 0.0
    assert not fake_gcp.live()


def test_a_killed_vm_is_replaced_and_its_call_sent_again(fake_gcp: FakeGCP, tmp_path: Path) -> None:
    api = fake_gcp

    def kill(ran: dict[str, Any]) -> None:
        (vm,) = [vm for vm in api.live() if vm.directory.name == ran["vm"]]
        api.kill(vm.zone, vm.name)

    gcp = provider(api, tmp_path)
    with sky.Compute(provider=gcp, accelerator=A.L4(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(pool, _where, kill)
    assert second["vm"] != first["vm"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not api.live()  # the TERMINATED one was deleted too


_CLIENT = lease_client(
    "sky.GCP(credentials_file=sys.argv[1], api_url=sys.argv[2], billing_url=sys.argv[3],"
    " username='root')",
    "sky.accelerators.T4()",
)


def test_the_vm_of_a_client_that_died_deletes_itself(fake_gcp: FakeGCP, tmp_path: Path) -> None:
    """The worker's lease runs out; its command takes the VM's own token from the
    metadata server and deletes the VM through the API."""
    api = fake_gcp
    before = {id(vm) for vm in api.live()}
    key = api.write_key(tmp_path / "key.json")
    with killed_client(_CLIENT, str(key), api.api_url, api.billing_url):
        (vm,) = [vm for vm in api.live() if id(vm) not in before]
    wait_until(lambda: vm.deleted, "the VM deleted itself", timeout=120, every=0.5)
    assert vm.self_deleted
    assert vm not in api.live()


@sky.function
def _held(gate: str, runs: str) -> dict[str, Any]:
    """Note where it runs (a line in ``runs``), wait for ``gate`` to exist, say where it ran.

    The fake's machines are processes of this host: they see the test's files."""
    where = os.environ["FAKE_GCP_MACHINE"].rsplit("/", 1)[-1]
    with open(runs, "a") as file:
        file.write(f"{where}\n")
    while not os.path.exists(gate):
        time.sleep(0.02)
    return {"node": sky.instance_info().node, "vm": where}


def _runs_of(runs: Path) -> list[str]:
    return runs.read_text().splitlines() if runs.exists() else []


def test_a_preemption_notice_drains_the_vm_and_its_call_is_sent_again_once_it_goes(
    fake_gcp: FakeGCP, tmp_path: Path
) -> None:
    """Compute Engine says a spot VM is preempted 30 s ahead (here 8): the node is drained
    at once and its replacement launched; the call pinned to it does not finish in time,
    and is sent again, once, to the replacement when the VM goes."""
    api = fake_gcp
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    with sky.Compute(
        provider=provider(api, tmp_path),
        accelerator=A.T4(),
        nodes=2,
        allocation="spot",
        options=sky.Options(console="silent", worker=sky.Worker(concurrency=4)),
    ) as pool:
        seen = Seen(pool)
        placed = {r["node"]: r["vm"] for r in _where() @ pool}
        vms = {vm.directory.name: vm for vm in api.live()}
        long = pool.run_async(_held(str(gate), str(runs)), target=1)
        wait_until(lambda: _runs_of(runs), "the long call to start", timeout=60, every=0.05)
        doomed: FakeVM = vms[placed[1]]
        api.preempt_notice(doomed.zone, doomed.name, seconds=8)
        notice = seen.first(sky.InstanceInterrupting, 1)
        assert (notice.instance_id, notice.action) == (doomed.name, "terminate")
        assert notice.time < notice.at <= notice.time + 30  # 30 s ahead, at most
        # Node 1 has three free slots, but new calls all go to node 0.
        assert {(_where() >> pool)["vm"] for _ in range(6)} == {placed[0]}
        # The VM goes with the call unfinished: it is sent again, to node 1's replacement
        # (launched at the notice).
        wait_until(
            lambda: len(_runs_of(runs)) == 2, "the call to run again", timeout=90, every=0.05
        )
        assert doomed.deleted
        assert doomed.status == "TERMINATED"
        gate.touch()
        result = long.result()
        lost = seen.first(sky.InstancePreempted, 1)
        assert lost.instance_id == doomed.name
        replaced = seen.first(sky.InstanceReplaced, 1)
        assert replaced.old_instance_id == doomed.name
        assert result["node"] == 1
        assert result["vm"] not in (placed[0], placed[1])
        assert pool.run(_where(), target=1) == result  # the replacement runs calls
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        seen.close()
    assert _runs_of(runs) == [placed[1], result["vm"]]  # once where it died, once to the end
    assert len(seen.of(sky.InstanceInterrupting, 1)) == 1
    assert not seen.of(sky.InstanceInterrupting, 0)
    assert not [e for e in seen.events if isinstance(e, sky.Error)]
    assert not api.live()
    # The worker read instance/preempted once, then held reads from its ETag, which the
    # preemption answered; every read carried Metadata-Flavor (none refused).
    reads = [
        (q, status) for key, q, status in doomed.metadata_requests if key.endswith("preempted")
    ]
    assert reads[0] == ({}, 200)
    held = [q for q, _ in reads[1:]]
    assert held
    assert all(q["wait_for_change"] == "true" and q["last_etag"] and q["timeout_sec"] for q in held)
    assert all(status == 200 for _, status in reads)
