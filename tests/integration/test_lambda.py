"""``sky.Lambda`` end to end against a fake Lambda Cloud (``fake_lambda.py``): the provider
lists the instance types, registers the pool's key, launches one instance per node with a
host key in its user data, and each instance is a real OpenSSH ``sshd`` on loopback that the
pool logs in to, bootstraps and runs workers on. Nothing here reaches Lambda; no address but
loopback is contacted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import (
    across_a_preemption,
    cancel_once,
    lease_client,
    reaped,
    reaper_running,
)
from cloud_checks import debug_logged, posted, refuses_bad_settings
from fake_lambda import FakeLambda
from waiting import wait_until

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeLambda, **fields: Any) -> sky.Lambda:
    return sky.Lambda(api_key=api.api_key, api_url=api.api_url, username="root", **fields)


@sky.function
def _where() -> dict[str, Any]:
    return {"node": sky.instance_info().node, "instance": os.environ["FAKE_LAMBDA_INSTANCE_ID"]}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeLambda) -> set[str]:
    return {instance.id for instance in api.live()}


def _launches(api: FakeLambda, since: int) -> list[Any]:
    return [r.body for r in posted(api.requests[since:], "/instance-operations/launch")]


def test_a_pool_of_two_instances_runs_and_everything_is_terminated(
    fake_lambda: FakeLambda, tmp_path: Path
) -> None:
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since = len(fake_lambda.requests)
    with sky.Compute(
        provider=provider(fake_lambda), accelerator=A.H100(), nodes=2, options=options
    ) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(fake_lambda)
        (key,) = fake_lambda.ssh_keys.values()
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["instance"] for r in per_node} == live
    assert not _live(fake_lambda) & live, "an instance outlived its pool"
    launches = _launches(fake_lambda, since)
    # The cheapest H100 type with one GPU, in its first region with capacity.
    assert [(b["instance_type_name"], b["region_name"]) for b in launches] == [
        ("gpu_1x_h100_pcie", "us-west-3")
    ] * 2
    assert {b["ssh_key_names"][0] for b in launches} == {f"skyward-{job}"} == {key["name"]}
    assert all(b["name"].startswith(f"skyward-{job}-") for b in launches)
    assert all(b["user_data"].startswith("#cloud-config\n") for b in launches)
    assert not fake_lambda.ssh_keys, "the pool's SSH key outlived it"
    sent = fake_lambda.requests[since:]
    assert {r.headers.get("authorization") for r in sent} == {f"Bearer {fake_lambda.api_key}"}
    assert fake_lambda.api_key not in log.read_text()
    assert fake_lambda.api_key not in repr(provider(fake_lambda))


def test_no_capacity_falls_back_to_the_next_region_then_the_next_type(
    fake_lambda: FakeLambda,
) -> None:
    fake_lambda.full |= {("gpu_1x_h100_pcie", "us-west-3"), ("gpu_1x_h100_pcie", "us-south-1")}
    since = len(fake_lambda.requests)
    try:
        with sky.Compute(
            provider=provider(fake_lambda), accelerator=A.H100(), options=QUIET
        ) as pool:
            assert _square(5) >> pool == 25
    finally:
        fake_lambda.full.clear()
    assert [(b["instance_type_name"], b["region_name"]) for b in _launches(fake_lambda, since)] == [
        ("gpu_1x_h100_pcie", "us-west-3"),
        ("gpu_1x_h100_pcie", "us-south-1"),
        ("gpu_1x_h100_sxm5", "us-south-1"),
    ]
    assert not fake_lambda.live()


def test_a_quota_refusal_mid_pool_ends_what_started_and_says_the_fix(
    fake_lambda: FakeLambda,
) -> None:
    options = sky.Options(console="silent", max_provision_attempts=1)
    fake_lambda.fail_launches(1, code="global/quota-exceeded", status=403, after=1)
    with (
        pytest.raises(sky.ProvisionError, match="quota") as raised,
        sky.Compute(
            provider=provider(fake_lambda),
            accelerator=A.A10(),
            nodes=2,
            options=options,
        ),
    ):
        pytest.fail("a pool came up past its quota")
    assert "ask Lambda's support" in str(raised.value)
    assert not fake_lambda.live()
    assert not fake_lambda.ssh_keys


def test_bad_settings_fail_before_anything_is_launched(
    fake_lambda: FakeLambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = len(fake_lambda.requests)
    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    refuses_bad_settings(
        provider(fake_lambda),
        A.A10,
        cloud="Lambda",
        keyless=sky.Lambda(api_url=fake_lambda.api_url),
        key_env="LAMBDA_API_KEY",
        wrong=sky.Lambda(api_key="secret_wrong", api_url=fake_lambda.api_url),
        secret="secret_wrong",
    )
    assert not _launches(fake_lambda, since)


def test_a_pool_cancelled_while_instances_start_leaves_none(fake_lambda: FakeLambda) -> None:
    fake_lambda.start_delay = 3600.0  # the instances never become active
    since = len(fake_lambda.requests)
    try:
        cancel_once(
            lambda: len(_launches(fake_lambda, since)) == 2,
            "two instances launched",
            provider(fake_lambda),
            accelerator=A.A10(),
            nodes=2,
        )
    finally:
        fake_lambda.start_delay = 0.0
    assert not fake_lambda.live()
    assert not fake_lambda.ssh_keys


def test_a_launch_whose_answer_never_came_is_found_by_name(fake_lambda: FakeLambda) -> None:
    """An instance of the job's name the pool never heard of is terminated at its close."""
    with sky.Compute(provider=provider(fake_lambda), accelerator=A.A10(), options=QUIET) as pool:
        (key,) = fake_lambda.ssh_keys.values()
        sent = httpx.post(
            f"{fake_lambda.api_url}/instance-operations/launch",
            json={
                "region_name": "us-east-1",
                "instance_type_name": "gpu_1x_a10",
                "ssh_key_names": [key["name"]],
                "name": f"skyward-{pool.job_id}-0-99",
            },
            headers={"Authorization": f"Bearer {fake_lambda.api_key}"},
        )
        assert sent.status_code == 200, sent.text
        assert len(fake_lambda.live()) == 2
    assert not fake_lambda.live()


def test_a_killed_instance_is_replaced_and_its_call_sent_again(fake_lambda: FakeLambda) -> None:
    with sky.Compute(provider=provider(fake_lambda), accelerator=A.A10(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: fake_lambda.kill(ran["instance"])
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not fake_lambda.live()  # the unhealthy one was terminated too


_CLIENT = lease_client(
    "sky.Lambda(api_key=sys.argv[1], api_url=sys.argv[2], username='root')",
    "sky.accelerators.A10()",
)


def test_the_instance_of_a_client_that_died_is_terminated_by_its_reaper(
    fake_lambda: FakeLambda,
) -> None:
    """Nothing on the instance can terminate it (Lambda gives it no credential), so the
    pool's reaper, a process beside the client, terminates it once the client is gone."""
    api = fake_lambda
    job, _ = reaped(_CLIENT, (api.api_key, api.api_url), lambda: _live(api))
    # The pool's SSH key is deleted too, as the pool's own close would.
    assert all(key["name"] != f"skyward-{job}" for key in fake_lambda.ssh_keys.values())


def test_a_pool_that_closes_stops_its_reaper(fake_lambda: FakeLambda) -> None:
    with sky.Compute(provider=provider(fake_lambda), accelerator=A.A10(), options=QUIET) as pool:
        assert reaper_running(pool.job_id)
    wait_until(lambda: not reaper_running(pool.job_id), "the reaper to exit", timeout=30, every=0.1)
    assert not fake_lambda.live()


def test_a_file_system_is_attached_to_every_instance_in_its_region(
    fake_lambda: FakeLambda,
) -> None:
    fake_lambda.add_file_system("datasets", "us-south-1")
    fake_lambda.add_file_system("scratch", "us-west-3")
    since = len(fake_lambda.requests)
    with sky.Compute(
        provider=provider(fake_lambda, region="us-south-1", file_system="datasets"),
        accelerator=A.H100(),
        nodes=2,
        options=QUIET,
    ) as pool:
        assert _square(3) >> pool == 9
    launches = _launches(fake_lambda, since)
    assert [(b["region_name"], b["file_system_names"]) for b in launches] == [
        ("us-south-1", ["datasets"])
    ] * 2
    listed = [r for r in fake_lambda.requests[since:] if r.path.endswith("/file-systems")]
    assert len(listed) == 1  # asked once per pool
    assert not fake_lambda.live()
    # One that is not there, or not in the pool's region, is said before any launch.
    since = len(fake_lambda.requests)
    options = sky.Options(console="silent", max_provision_attempts=1)
    for fields, said in [
        (
            {"region": "us-south-1", "file_system": "models"},
            r"Lambda has no file system 'models' \(it has: datasets \(us-south-1\), "
            r"scratch \(us-west-3\)\)",
        ),
        (
            {"region": "us-south-1", "file_system": "scratch"},
            r"file system 'scratch' is in us-west-3, and this pool launches in us-south-1: "
            r"pass Lambda\(region='us-west-3'\)",
        ),
    ]:
        with (
            pytest.raises(sky.ProvisionError, match=said),
            sky.Compute(
                provider=provider(fake_lambda, **fields), accelerator=A.H100(), options=options
            ),
        ):
            pytest.fail("a pool came up without its file system")
    assert not _launches(fake_lambda, since)
    assert not fake_lambda.live()
    fake_lambda.file_systems.clear()
