"""``sky.JarvisLabs`` end to end against a fake JarvisLabs (``fake_jarvislabs.py``): the provider
lists the GPUs free per region, adds the pool's key to the account's SSH keys, creates one
container instance per node, and each instance is a real OpenSSH ``sshd`` on loopback,
reached at its ``ssh_str``, that the pool logs in to, bootstraps and runs workers on.
Nothing here reaches JarvisLabs; no address but loopback is contacted.
"""

from __future__ import annotations

import json
import os
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
from fake_jarvislabs import FakeJarvisLabs
from waiting import wait_until

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeJarvisLabs, **fields: Any) -> sky.JarvisLabs:
    return sky.JarvisLabs(api_key=api.api_key, api_url=api.api_url, **fields)


@sky.function
def _where() -> dict[str, Any]:
    machine = os.environ["FAKE_JARVISLABS_MACHINE"]
    return {"node": sky.instance_info().node, "instance": int(machine.rsplit("/", 1)[-1])}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeJarvisLabs) -> set[int]:
    return {instance.id for instance in api.live()}


def _listed(api: FakeJarvisLabs) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{api.api_url}/users/fetch", headers={"Authorization": f"Bearer {api.api_key}"}
    )
    listed: list[dict[str, Any]] = answer.json()["instances"]
    return listed


def _creates(api: FakeJarvisLabs, since: int) -> list[tuple[str, dict[str, Any]]]:
    """The template and body of each create sent since ``since``."""
    return [(r.path.split("/")[2], r.body) for r in posted(api.requests[since:], "/create")]


def test_a_pool_of_two_instances_runs_and_nothing_is_left(
    fake_jarvislabs: FakeJarvisLabs, tmp_path: Path
) -> None:
    api = fake_jarvislabs
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since = len(api.requests)
    with sky.Compute(provider=provider(api), accelerator=A.L4(), nodes=2, options=options) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(api)
        # The pool's key is the account's for the pool's life, by the job's name.
        assert [k["key_name"] for k in api.ssh_keys.values()] == [f"skyward-{job}"]
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["instance"] for r in per_node} == live
    assert not _live(api) & live, "an instance outlived its pool"
    assert not api.ssh_keys, "the pool's SSH key outlived it"
    creates = _creates(api, since)
    # The cheapest region's L4, one GPU, the pytorch template, on demand.
    assert [
        (t, b["gpu_type"], b["num_gpus"], b["region"], b["hdd"], b["is_spot"]) for t, b in creates
    ] == [("pytorch", "L4", 1, "india-noida-01", 40, False)] * 2
    assert all(b["name"].startswith(f"skyward-{job}-") for _, b in creates)
    sent = api.requests[since:]
    assert {r.headers.get("authorization") for r in sent} == {f"Bearer {api.api_key}"}
    assert api.api_key not in log.read_text()
    assert api.api_key not in repr(provider(api))


def test_offers_list_each_gpu_type_free_per_region_with_its_price(
    fake_jarvislabs: FakeJarvisLabs,
) -> None:
    found = sky.offers(provider(fake_jarvislabs))
    # RTX5000 (Skyward does not name it), the A5000 with none free and the H100 for VMs
    # only are left out.
    assert sorted((o.name, o.regions) for o in found) == [
        ("A100", ("india-01",)),
        ("A6000", ("india-01",)),
        ("H100", ("europe-01",)),
        ("L4", ("india-01",)),
        ("L4", ("india-noida-01",)),
    ]
    (a100,) = [o for o in found if o.name == "A100"]
    assert a100.accelerator == A.A100(memory="40GB")
    assert (a100.on_demand_price, a100.spot_price) == (pytest.approx(1.29), None)
    assert (a100.vcpus, a100.memory_gb) == (8.0, 48.0)
    four = sky.offers(provider(fake_jarvislabs), accelerator=A.L4(count=4))
    assert [(o.regions, o.on_demand_price) for o in four] == [
        (("india-noida-01",), pytest.approx(1.76)),
        (("india-01",), pytest.approx(1.96)),
    ]
    # europe-01 takes 1 or 8 GPUs; a region narrows the offers.
    assert not sky.offers(provider(fake_jarvislabs), accelerator=A.H100(count=2))
    mumbai = sky.offers(provider(fake_jarvislabs, region="india-01"), accelerator=A.L4())
    assert [o.regions for o in mumbai] == [("india-01",)]


def test_sky_offers_list_reads_the_key_from_its_shell(
    fake_jarvislabs: FakeJarvisLabs, tmp_path: Path
) -> None:
    """``sky offers list jl``: the table skyward.toml names, the key from the shell."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.jl]\ntype = "jarvislabs"\napi_url = "{fake_jarvislabs.api_url}"\n'
    )
    env = {**os.environ, "HOME": str(tmp_path / "home"), "JL_API_KEY": fake_jarvislabs.api_key}
    done = run_sky(tmp_path, env, "offers", "list", "jl", "--accelerator", "h100", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["name"], r["on_demand_price"]) for r in rows] == [("H100", pytest.approx(2.69))]
    assert fake_jarvislabs.api_key not in done.stdout + done.stderr


def test_no_free_gpus_falls_back_to_the_next_offer(fake_jarvislabs: FakeJarvisLabs) -> None:
    api = fake_jarvislabs
    # Taken between the listing and the create.
    api.fail_creates(1, "No free L4 GPUs in india-noida-01 right now")
    since = len(api.requests)
    with sky.Compute(provider=provider(api), accelerator=A.L4(), options=QUIET) as pool:
        assert _square(5) >> pool == 25
        (instance,) = api.live()
    assert [b["region"] for _, b in _creates(api, since)] == ["india-noida-01", "india-01"]
    assert instance.body["region"] == "india-01"
    assert not api.live()


def test_refusals_say_the_fix_and_leave_nothing(
    fake_jarvislabs: FakeJarvisLabs, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fake_jarvislabs
    since = len(api.requests)
    monkeypatch.delenv("JL_API_KEY", raising=False)
    refuses_bad_settings(
        provider(api),
        A.L4,
        cloud="JarvisLabs",
        keyless=sky.JarvisLabs(api_url=api.api_url),
        key_env="JL_API_KEY",
        wrong=sky.JarvisLabs(api_key="jl_WRONGKEY", api_url=api.api_url),
        secret="WRONGKEY",
    )
    assert not _creates(api, since)
    # An account short of balance (a 403 that is not about the key): the fix, nothing left.
    api.fail_creates(1, "Insufficient balance. Please recharge", status=403)
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(sky.ProvisionError, match="Insufficient balance") as refused,
        sky.Compute(provider=provider(api), accelerator=A.L4(), options=options),
    ):
        pytest.fail("a pool came up past its balance")
    assert "add balance to the account" in str(refused.value)
    assert not api.live()
    assert not api.ssh_keys


def test_a_create_whose_answer_never_came_is_found_by_name(
    fake_jarvislabs: FakeJarvisLabs,
) -> None:
    """An instance of the job's name the pool never heard of is destroyed at its close."""
    api = fake_jarvislabs
    with sky.Compute(provider=provider(api), accelerator=A.RTX_A6000(), options=QUIET) as pool:
        sent = httpx.post(
            f"{api.api_url}/templates/pytorch/create",
            json={
                "gpu_type": "A6000",
                "num_gpus": 1,
                "hdd": 40,
                "region": "india-01",
                "name": f"skyward-{pool.job_id}-0-99",
            },
            headers={"Authorization": f"Bearer {api.api_key}"},
        )
        assert sent.status_code == 200, sent.text
        assert len(api.live()) == 2
        stray = sent.json()["machine_id"]
        wait_until(  # JarvisLabs lists a new instance a moment after its create
            lambda: stray in {i["machine_id"] for i in _listed(api)},
            "the stray listed",
            timeout=10,
            every=0.05,
        )
    assert not api.live()


def test_a_failed_instance_is_replaced_and_its_call_sent_again(
    fake_jarvislabs: FakeJarvisLabs,
) -> None:
    api = fake_jarvislabs
    with sky.Compute(provider=provider(api), accelerator=A.RTX_A6000(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: api.kill(ran["instance"])
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not api.live()  # the failed one was destroyed too


_CLIENT = lease_client(
    "sky.JarvisLabs(api_key=sys.argv[1], api_url=sys.argv[2])",
    "sky.accelerators.L4()",
)


def test_the_instance_of_a_client_that_died_is_destroyed_by_its_reaper(
    fake_jarvislabs: FakeJarvisLabs,
) -> None:
    """Nothing on the instance can end it (JarvisLabs gives it no credential), so the pool's
    reaper, a process beside the client, ends it once the client is gone."""
    api = fake_jarvislabs
    job, _ = reaped(_CLIENT, (api.api_key, api.api_url), lambda: _live(api))
    # The account's SSH key the pool added is removed too, as the pool's close would.
    assert all(f"skyward-{job}" not in str(key) for key in api.ssh_keys.values())
