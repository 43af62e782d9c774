"""``sky.MassedCompute`` end to end against a fake Massed Compute (``fake_massedcompute.py``):
the provider lists the GPU inventory, launches one instance per node whose startup command
authorizes the pool's key, installs a host key made for it and runs sshd on port 22, and
each instance is a real OpenSSH ``sshd`` on a loopback address that the pool logs in to,
bootstraps and runs workers on. Nothing here reaches Massed Compute; no address but
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
from fake_massedcompute import FakeMassedCompute, need_fake_massedcompute

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


@pytest.fixture(scope="module")
def fake_mc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeMassedCompute]:
    """One fake Massed Compute for the module (its uv cache is shared by the machines)."""
    need_fake_massedcompute()
    with FakeMassedCompute(root=tmp_path_factory.mktemp("massedcompute")) as api:
        yield api


@pytest.fixture
def restocked(fake_mc: FakeMassedCompute) -> Iterator[FakeMassedCompute]:
    """The fake, its inventory as it was once the test is done."""
    saved = json.dumps(fake_mc.products)
    try:
        yield fake_mc
    finally:
        fake_mc.products[:] = json.loads(saved)
        fake_mc.taken.clear()


def provider(api: FakeMassedCompute, **fields: Any) -> sky.MassedCompute:
    return sky.MassedCompute(api_key=api.api_key, api_url=api.api_url, **fields)


@sky.function
def _where() -> dict[str, Any]:
    machine = os.environ["FAKE_MASSEDCOMPUTE_MACHINE"]
    return {"node": sky.instance_info().node, "instance": machine.rsplit("/", 1)[-1]}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeMassedCompute) -> set[str]:
    return {instance.id for instance in api.live()}


def _launches(api: FakeMassedCompute, since: int) -> list[dict[str, Any]]:
    """The body of each launch sent since ``since``."""
    return [r.body for r in posted(api.requests[since:], "/instance/launch")]


def test_a_pool_of_two_instances_runs_and_nothing_is_left(
    fake_mc: FakeMassedCompute, tmp_path: Path
) -> None:
    api = fake_mc
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since = len(api.requests)
    spec = {"accelerator": A.L40S(), "nodes": 2, "options": options}
    with sky.Compute(provider=provider(api), **spec) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(api)
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["instance"] for r in per_node} == live
    assert not _live(api) & live, "an instance outlived its pool"
    launches = _launches(api, since)
    # The cheapest one-L40S product, in any region, on the default image.
    assert [(b["productName"], b["regionName"], b["imageId"]) for b in launches] == [
        ("gpu_1x_l40s", "any", 184)
    ] * 2
    assert all(b["instanceName"].startswith(f"skyward-{job}-") for b in launches)
    assert all("sshKeys" not in b for b in launches)
    # Each instance was given a host key of its own, in its command.
    assert len({b["command"] for b in launches}) == 2
    sent = api.requests[since:]
    assert {r.headers.get("authorization") for r in sent} == {f"Bearer {api.api_key}"}
    terminated = [r.body for r in sent if r.path.endswith("/instance/terminate")]
    assert sorted(u for b in terminated for u in b["instanceUuids"]) == sorted(live)
    assert api.api_key not in log.read_text()
    assert api.api_key not in repr(provider(api))


def test_offers_list_each_product_with_capacity_and_its_price(fake_mc: FakeMassedCompute) -> None:
    by_ref = {o.ref: o for o in sky.offers(provider(fake_mc))}
    # The A30 (which Skyward does not name here) and the L40 without capacity are left out.
    assert set(by_ref) == {
        "gpu_1x_l40s",
        "gpu_1x_l40s_b",
        "gpu_2x_l40s",
        "gpu_1x_a6000",
        "gpu_8x_h100",
    }
    h100 = by_ref["gpu_8x_h100"]
    assert h100.accelerator == A.H100(count=8)
    assert (h100.on_demand_price, h100.spot_price) == (pytest.approx(23.12), None)
    assert (h100.vcpus, h100.memory_gb, h100.disk_gb) == (208.0, 1800.0, 8000.0)
    assert h100.regions == ("us-east-1",)
    assert by_ref["gpu_1x_a6000"].accelerator == A.RTX_A6000()
    two = sky.offers(provider(fake_mc), accelerator=A.L40S(count=2))
    assert [(o.ref, o.on_demand_price) for o in two] == [("gpu_2x_l40s", pytest.approx(1.76))]
    east = provider(fake_mc, region="us-east-1")
    assert [o.ref for o in sky.offers(east, accelerator=A.L40S())] == ["gpu_1x_l40s_b"]


def test_sky_offers_list_reads_the_key_from_its_shell(
    fake_mc: FakeMassedCompute, tmp_path: Path
) -> None:
    """``sky offers list mc``: the table skyward.toml names, the key from the shell."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.mc]\ntype = "massedcompute"\napi_url = "{fake_mc.api_url}"\n'
    )
    env = {**os.environ, "HOME": str(tmp_path / "home"), "MASSED_COMPUTE_API_KEY": fake_mc.api_key}
    done = run_sky(tmp_path, env, "offers", "list", "mc", "--accelerator", "rtx_a6000", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"gpu_1x_a6000"}
    assert rows["gpu_1x_a6000"]["on_demand_price"] == pytest.approx(0.62)
    assert fake_mc.api_key not in done.stdout + done.stderr


def test_no_capacity_falls_back_to_the_next_product(restocked: FakeMassedCompute) -> None:
    restocked.taken.add("gpu_1x_l40s")  # sold out between the listing and the launch
    since = len(restocked.requests)
    with sky.Compute(provider=provider(restocked), accelerator=A.L40S(), options=QUIET) as pool:
        assert _square(5) >> pool == 25
        (instance,) = restocked.live()
    assert [b["productName"] for b in _launches(restocked, since)] == [
        "gpu_1x_l40s",
        "gpu_1x_l40s_b",
    ]
    assert instance.body["productName"] == "gpu_1x_l40s_b"
    assert not restocked.live()


def test_no_capacity_anywhere_says_so(restocked: FakeMassedCompute) -> None:
    restocked.taken |= {"gpu_1x_l40s", "gpu_1x_l40s_b"}
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(sky.ProvisionError, match="no capacity now for any") as raised,
        sky.Compute(provider=provider(restocked), accelerator=A.L40S(), options=options),
    ):
        pytest.fail("a pool came up with no capacity")
    assert "gpu_1x_l40s (400: Failed to launch instance: no capacity" in str(raised.value)
    assert not restocked.live()


def test_a_billing_refusal_says_the_fix_and_launches_nothing(fake_mc: FakeMassedCompute) -> None:
    options = sky.Options(console="silent", max_provision_attempts=1)
    fake_mc.fail_launches(1, "Billing is not configured for this account")
    with (
        pytest.raises(sky.ProvisionError, match="Billing is not configured") as raised,
        sky.Compute(provider=provider(fake_mc), accelerator=A.RTX_A6000(), options=options),
    ):
        pytest.fail("a pool came up without billing")
    assert "set up billing (a recharge amount and threshold)" in str(raised.value)
    assert not fake_mc.live()


def test_bad_settings_and_a_wrong_key_fail_before_anything_is_launched(
    fake_mc: FakeMassedCompute, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fake_mc
    since = len(api.requests)
    monkeypatch.delenv("MASSED_COMPUTE_API_KEY", raising=False)
    refuses_bad_settings(
        provider(api),
        A.L40S,
        cloud="Massed Compute",
        keyless=sky.MassedCompute(api_url=api.api_url),
        key_env="MASSED_COMPUTE_API_KEY",
        wrong=sky.MassedCompute(api_key="mc_WRONGKEY", api_url=api.api_url),
        secret="WRONGKEY",
    )
    assert not _launches(api, since)


def test_an_instance_launched_unseen_is_found_by_name_and_terminated(
    fake_mc: FakeMassedCompute,
) -> None:
    """An instance of the job's name the pool never heard of is terminated at its close."""
    api = fake_mc
    with sky.Compute(provider=provider(api), accelerator=A.RTX_A6000(), options=QUIET) as pool:
        sent = httpx.post(
            f"{api.api_url}/instance/launch",
            json={
                "imageId": 184,
                "productName": "gpu_1x_a6000",
                "regionName": "any",
                "instanceName": f"skyward-{pool.job_id}-0-99",
            },
            headers={"Authorization": f"Bearer {api.api_key}"},
        )
        assert sent.status_code == 200, sent.text
        assert len(api.live()) == 2
    assert not api.live()


def test_a_killed_instance_is_replaced_and_its_call_sent_again(fake_mc: FakeMassedCompute) -> None:
    with sky.Compute(provider=provider(fake_mc), accelerator=A.RTX_A6000(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: fake_mc.kill(ran["instance"])
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not fake_mc.live()  # the dead one was terminated too


_CLIENT = lease_client(
    "sky.MassedCompute(api_key=sys.argv[1], api_url=sys.argv[2])",
    "sky.accelerators.L40S()",
)


def test_the_instance_of_a_client_that_died_is_terminated_by_its_reaper(
    fake_mc: FakeMassedCompute,
) -> None:
    """Nothing on the instance can end it (Massed Compute gives it no credential), so the pool's
    reaper, a process beside the client, ends it once the client is gone."""
    api = fake_mc
    reaped(_CLIENT, (api.api_key, api.api_url), lambda: _live(api))
