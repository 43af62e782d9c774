"""``sky.RunPod`` end to end against a fake RunPod (``fake_runpod.py``): the provider lists
GPU types and prices over GraphQL and CPU flavors and prices from the REST API v2 catalog,
creates (GPU and CPU pods), reads and deletes pods over REST, and each pod
is a real OpenSSH ``sshd`` on loopback that the pool logs in to, bootstraps and runs
workers on. Nothing here reaches RunPod; no address but loopback is contacted.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sshd
import trio
from clients import across_a_preemption, cancel_once, killed_client, lease_client
from fake_runpod import NO_INSTANCES, FakePod, FakeRunPod
from needs import unavailable
from waiting import wait_until

import skyward as sky
from skyward_trio._model import Spec
from skyward_trio._offers import Choice
from skyward_trio._runpod import RunPodCluster, catalog
from skyward_trio._transport import asyncio_loop, generate_key

pytestmark = pytest.mark.clouds

A = sky.accelerators
QUIET = sky.Options(console="silent")


def provider(api: FakeRunPod, **fields: Any) -> sky.RunPod:
    return sky.RunPod(
        api_key=api.api_key,
        api_url=api.rest_url,
        graphql_url=api.graphql_url,
        catalog_url=api.catalog_url,
        **fields,
    )


@pytest.fixture(scope="module")
def runpod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRunPod]:
    """One fake for the module (its uv cache is shared by the pods: one download each)."""
    sshd.need_sshd()
    if os.getuid() != 0:  # RunPod pods log in as root; the fake's sshd takes only this user
        unavailable("sky.RunPod logs in to pods as root: run the tests as root", suite="sky.RunPod")
    with FakeRunPod(root=tmp_path_factory.mktemp("runpod")) as api:
        yield api


@sky.function
def _where() -> dict[str, Any]:
    return {
        "node": sky.instance_info().node,
        "home": os.environ["HOME"],
        "pod": os.environ.get("RUNPOD_POD_ID"),
        "version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


@sky.function
def _square(x: int) -> int:
    return x * x


def test_a_pool_of_pods_runs_and_every_pod_is_deleted(runpod: FakeRunPod, tmp_path: Path) -> None:
    log = tmp_path / "pool.log"
    options = sky.Options(
        console="silent", logging=sky.LogConfig(file=str(log), level="DEBUG", console=False)
    )
    first = len(runpod.requests)
    with sky.Compute(
        provider=provider(runpod),
        accelerator=sky.accelerators.RTX_4090(count=2),
        nodes=2,
        allocation="on-demand",
        options=options,
    ) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        pods = {pod.id: pod for pod in runpod.live()}
    assert [r["node"] for r in per_node] == [0, 1]
    for result in per_node:
        pod = pods[result["pod"]]  # it ran in that pod, in its own home
        assert result["home"] == str(pod.machine.home)
        assert result["version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
        assert pod.body["gpuTypeIds"] == ["NVIDIA GeForce RTX 4090"]
        assert pod.body["gpuCount"] == 2
        assert pod.body["interruptible"] is False
        assert pod.body["cloudType"] == "SECURE"
        assert pod.body["ports"] == ["22/tcp"]
        assert pod.body["env"]["PUBLIC_KEY"].startswith("ssh-ed25519 ")
        assert pod.name.startswith(f"skyward-{pool.job_id}-")
    assert len(pods) == 2
    assert not runpod.live(), "a pod outlived its pool"
    # The key: in the Authorization header of every request, nowhere else, never logged.
    sent = runpod.requests[first:]
    assert {r.headers.get("authorization") for r in sent} == {f"Bearer {runpod.api_key}"}
    for request in sent:
        assert runpod.api_key not in f"{request.path} {request.query} {request.body}"
    text = log.read_text()
    assert "InstanceProvisioned" in text
    assert runpod.api_key not in text


def _one_pod(
    api: FakeRunPod, accelerator: sky.accelerators.Accelerator, allocation: str
) -> tuple[sky.InstanceProvisioned, FakePod]:
    """Open a one-node pool, run a call on it; its provisioning event and its pod."""
    with sky.Compute(
        provider=provider(api),
        accelerator=accelerator,
        allocation=allocation,  # type: ignore[arg-type]
        options=QUIET,
    ) as pool:
        events = pool.events()
        provisioned = next(e for e in events if isinstance(e, sky.InstanceProvisioned))
        events.close()
        (pod,) = api.live()
        assert _square(3) >> pool == 9
    return provisioned, pod


def test_the_pools_price_is_runpods_for_its_gpus(runpod: FakeRunPod) -> None:
    provisioned, pod = _one_pod(runpod, sky.accelerators.A100(form_factor="SXM"), "spot")
    assert provisioned.hourly_price == pytest.approx(0.95)  # the SXM board's spot price
    assert pod.body["interruptible"] is True
    assert pod.body["gpuTypeIds"] == ["NVIDIA A100-SXM4-80GB"]


def test_a_type_out_of_capacity_gives_way_to_the_specs_next_type(runpod: FakeRunPod) -> None:
    """A100() takes either board: the cheaper (PCIe) is asked for first, the SXM one next,
    and the pool is billed what RunPod says the pod costs."""
    pcie, sxm = "NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"
    runpod.capacity[pcie], had = 0, runpod.capacity[pcie]
    try:
        provisioned, pod = _one_pod(runpod, sky.accelerators.A100(), "on-demand")
    finally:
        runpod.capacity[pcie] = had
    assert pod.body["gpuTypeIds"] == [pcie, sxm]
    assert pod.gpu_type_id == sxm
    assert provisioned.hourly_price == pytest.approx(1.89)  # the SXM board's, not the PCIe's


def test_no_capacity_gives_way_to_the_next_spec(runpod: FakeRunPod) -> None:
    created = len(runpod.pods)
    runpod.capacity["NVIDIA L4"], had = 0, runpod.capacity["NVIDIA L4"]
    try:
        with sky.Compute(
            sky.Spec(provider=provider(runpod), accelerator=sky.accelerators.L4()),
            sky.Spec(provider=sky.Local()),
            options=sky.Options(console="silent", selection="first"),
        ) as pool:
            events = pool.events()
            notes = []
            for event in events:
                if isinstance(event, sky.Error):
                    notes.append(event.message)
                if isinstance(event, sky.ClusterReady):
                    break
            events.close()
            assert pool.spec.provider == sky.Local()
    finally:
        runpod.capacity["NVIDIA L4"] = had
    assert any(NO_INSTANCES in note for note in notes), notes
    assert len(runpod.pods) == created  # no pod was made, so none is left


def test_a_wrong_key_is_refused_before_any_pod(runpod: FakeRunPod) -> None:
    wrong = sky.RunPod(api_key="rpa_wrong", api_url=runpod.rest_url, graphql_url=runpod.graphql_url)
    creates = [r for r in runpod.requests if r.method == "POST" and r.path.endswith("/pods")]
    with (
        pytest.raises(sky.NoOfferError, match="RunPod refused the API key"),
        sky.Compute(provider=wrong, accelerator=sky.accelerators.L4(), options=QUIET),
    ):
        pytest.fail("a pool came up with a wrong key")
    after = [r for r in runpod.requests if r.method == "POST" and r.path.endswith("/pods")]
    assert after == creates


def test_no_key_at_all_says_how_to_set_one(
    runpod: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    keyless = sky.RunPod(api_url=runpod.rest_url, graphql_url=runpod.graphql_url)
    seen = len(runpod.requests)
    with (
        pytest.raises(ValueError, match="export RUNPOD_API_KEY"),
        sky.Compute(provider=keyless, accelerator=sky.accelerators.L4(), options=QUIET),
    ):
        pytest.fail("a pool came up with no key")
    assert len(runpod.requests) == seen


def test_a_pool_cancelled_while_pods_start_leaves_none(runpod: FakeRunPod) -> None:
    runpod.start_delay = 3600.0  # the pods never get an address
    created = set(runpod.pods)

    try:
        cancel_once(
            lambda: len(set(runpod.pods) - created) == 2,
            "two pods created",
            provider(runpod),
            accelerator=sky.accelerators.L4(),
            nodes=2,
        )
    finally:
        runpod.start_delay = 0.0
    assert len(set(runpod.pods) - created) == 2
    assert not runpod.live()


def test_a_pod_that_never_comes_up_is_deleted_before_the_next_try(runpod: FakeRunPod) -> None:
    runpod.start_delay = 3600.0  # the pods never get an address
    first, before = len(runpod.requests), set(runpod.pods)
    options = sky.Options(console="silent", provision_timeout=1, max_provision_attempts=2)
    try:
        with (
            pytest.raises(sky.ProvisionError, match="provision"),
            sky.Compute(
                provider=provider(runpod), accelerator=sky.accelerators.L4(), options=options
            ),
        ):
            pytest.fail("the pool came up with pods that have no address")
    finally:
        runpod.start_delay = 0.0
    made = [pod_id for pod_id in runpod.pods if pod_id not in before]
    assert len(made) == 2, made
    calls = [
        (r.method, r.path)
        for r in runpod.requests[first:]
        if r.method != "GET" and r.path.startswith("/v1/pods")
    ]
    second = [i for i, (method, _) in enumerate(calls) if method == "POST"][1]
    assert ("DELETE", f"/v1/pods/{made[0]}") in calls[:second], (
        f"the first pod still billed while the second was made: {calls}"
    )
    assert not runpod.live()


async def _l4_cluster(api: FakeRunPod, job_id: str, **spec_fields: Any) -> RunPodCluster:
    """A cluster planned on the fake's L4, as Compute would open it (in an asyncio loop)."""
    config = provider(api)
    spec = Spec(provider=config, accelerator=sky.accelerators.L4(), **spec_fields)
    offers = (await catalog(config, gpus=1, accelerator=spec.accelerator)).offers
    offer = next(o for o in offers if o.name == "NVIDIA L4")
    choice = Choice(index=0, spec=spec, offer=offer, spot=False, hourly_price=0.43)
    return RunPodCluster(config, job_id=job_id, client_key=generate_key(), choice=choice)


def test_a_pod_created_but_never_answered_is_found_by_name_and_deleted(
    runpod: FakeRunPod,
) -> None:
    """A create cut short before RunPod answered leaves a pod the pool never heard of:
    closing the cluster lists the job's pods by name and deletes it."""

    async def main() -> None:
        async with asyncio_loop():
            cluster = await _l4_cluster(runpod, "c0ffee00")
            async with httpx.AsyncClient() as client:
                body = {
                    "name": "skyward-c0ffee00-0-1",
                    "imageName": cluster.config.image_reference("3.11"),
                    "gpuTypeIds": ["NVIDIA L4"],
                    "gpuCount": 1,
                }
                sent = await client.post(
                    f"{runpod.rest_url}/pods",
                    json=body,
                    headers={"Authorization": f"Bearer {runpod.api_key}"},
                )
                assert sent.status_code == 201, sent.text
            await cluster.aclose()

    before = {pod.id for pod in runpod.live()}
    trio.run(main)
    assert {pod.id for pod in runpod.live()} == before


def test_a_pod_billed_over_the_cap_is_deleted_before_it_runs(runpod: FakeRunPod) -> None:
    """RunPod's price rose between listing and create (the fake bills the L4 $0.43/h,
    the cap is $0.40): the pod is refused and deleted."""
    made = set(runpod.pods)

    async def main() -> None:
        async with asyncio_loop():
            cluster = await _l4_cluster(runpod, "5a1e0000", max_hourly_cost=0.4)
            try:
                with pytest.raises(RuntimeError, match=r"\$0\.43/h, over max_hourly_cost=0\.4"):
                    await cluster.provision(0)
            finally:
                await cluster.aclose()

    trio.run(main)
    (pod_id,) = set(runpod.pods) - made
    assert runpod.pods[pod_id].deleted


def test_an_interrupted_spot_pod_is_replaced_and_its_calls_sent_again(
    runpod: FakeRunPod,
) -> None:
    with sky.Compute(
        provider=provider(runpod),
        accelerator=sky.accelerators.RTX_4090(),
        allocation="spot",
        options=QUIET,
    ) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: runpod.preempt(ran["pod"])
        )
    assert second["pod"] != first["pod"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert runpod.pods[first["pod"]].status == "EXITED" or runpod.pods[first["pod"]].deleted
    assert not runpod.live()


_PROVIDER = (
    "sky.RunPod(api_key=sys.argv[1], api_url=sys.argv[2], graphql_url=sys.argv[3], "
    "catalog_url=sys.argv[4])"
)


@pytest.mark.parametrize("accelerator", ["sky.accelerators.L4()", "None"], ids=["gpu", "cpu"])
def test_the_pods_of_a_client_that_died_delete_themselves(
    runpod: FakeRunPod, accelerator: str
) -> None:
    before = {pod.id for pod in runpod.live()}
    args = (runpod.api_key, runpod.rest_url, runpod.graphql_url, runpod.catalog_url)
    client = lease_client(_PROVIDER, accelerator)
    with killed_client(client, *args) as job:  # no teardown: only the lease is left
        (pod,) = [p for p in runpod.live() if p.id not in before]
        assert pod.name.startswith(f"skyward-{job}-")
        assert (pod.cpu_flavor_id is None) == (accelerator != "None")
    # The worker gives its client the reconnect window, then runs runpodctl in the pod.
    wait_until(lambda: pod.deleted, "the pod deleted by itself", timeout=120, every=0.5)
    deletes = [r for r in runpod.requests if r.method == "DELETE" and pod.id in r.path]
    assert deletes
    assert deletes[0].headers["authorization"] == f"Bearer {pod.key}"


# -- CPU pods --------------------------------------------------------------------------------


def test_a_pool_of_cpu_pods_gets_the_cheapest_flavor_meeting_the_spec(
    runpod: FakeRunPod,
) -> None:
    """8 vCPUs and 32 GB: cpu3g's 8 vCPUs (4 GB each, $0.32/h) beat cpu3m's 8 ($0.48/h) and
    cpu3c's 16 ($0.48/h); cpu3m is the create's fallback, as it gives 8 vCPUs too."""
    first = len(runpod.requests)
    with sky.Compute(
        provider=provider(runpod), vcpus=8, memory_gb=32, nodes=2, options=QUIET
    ) as pool:
        events = pool.events()
        provisioned = list(
            itertools.islice((e for e in events if isinstance(e, sky.InstanceProvisioned)), 2)
        )
        events.close()
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        pods = {pod.id: pod for pod in runpod.live()}
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["pod"] for r in per_node} == set(pods)
    for pod in pods.values():
        assert pod.body == {
            "name": pod.name,
            "imageName": pod.body["imageName"],
            "computeType": "CPU",
            "cpuFlavorIds": ["cpu3g", "cpu3m"],
            "cpuFlavorPriority": "custom",
            "vcpuCount": 8,
            "cloudType": "SECURE",
            "ports": ["22/tcp"],
            "env": {"PUBLIC_KEY": pod.body["env"]["PUBLIC_KEY"]},
            "containerDiskInGb": 50,
            "supportPublicIp": True,
        }
        assert pod.cpu_flavor_id == "cpu3g"
        assert pod.cost_per_hr == pytest.approx(0.32)
        assert pod.deleted
    assert [e.hourly_price for e in provisioned] == [pytest.approx(0.32)] * 2
    # Listing asked the catalog for CPU flavors only: no GPU types for a CPU spec.
    asked = [(r.method, r.path) for r in runpod.requests[first:]]
    assert ("GET", "/v2/catalog/cpus") in asked
    assert ("POST", "/graphql") not in asked


def test_a_cpu_flavor_out_of_capacity_gives_way_to_the_next_at_its_price(
    runpod: FakeRunPod,
) -> None:
    runpod.capacity["cpu3g"], had = 0, runpod.capacity["cpu3g"]
    try:
        with sky.Compute(provider=provider(runpod), vcpus=8, memory_gb=32, options=QUIET) as pool:
            events = pool.events()
            provisioned = next(e for e in events if isinstance(e, sky.InstanceProvisioned))
            events.close()
            (pod,) = runpod.live()
            assert _square(5) >> pool == 25
    finally:
        runpod.capacity["cpu3g"] = had
    assert (pod.body["cpuFlavorIds"], pod.cpu_flavor_id) == (["cpu3g", "cpu3m"], "cpu3m")
    assert provisioned.hourly_price == pytest.approx(0.48)  # what RunPod bills cpu3m-8
    assert not runpod.live()


def test_offers_list_cpu_flavors_with_their_prices_beside_gpu_types(
    runpod: FakeRunPod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # its own offers cache
    listed = sky.offers([provider(runpod)], max_age=0)
    assert listed.errors == ()
    cpu = {o.name: o for o in listed if o.accelerator is None}
    assert {"cpu3c-2-4", "cpu3c-32-64", "cpu3g-8-32", "cpu3m-16-128", "cpu5c-8-16"} <= set(cpu)
    assert "cpu3m-32-256" not in cpu  # cpu3m gives at most 16 vCPUs
    eight = cpu["cpu3g-8-32"]
    assert (eight.vcpus, eight.memory_gb, eight.architecture) == (8, 32, "x86_64")
    assert (eight.on_demand_price, eight.spot_price, eight.ref) == (0.32, None, "cpu3g")
    assert {o.provider for o in cpu.values()} == {"sky.RunPod()"}
    assert [o.name for o in listed.where(lambda o: o.accelerator is None).cheapest(2)] == [
        "cpu3c-2-4",
        "cpu5c-2-4",
    ]
    assert [o.name for o in listed.min_vcpus(8).min_memory(64).cheapest(1)] == ["cpu3m-8-64"]
    # The GPU types are still there, and an accelerator narrows to them.
    assert "NVIDIA L4" in {o.name for o in listed}
    assert [o.name for o in sky.offers(provider(runpod), accelerator=A.L4(), max_age=0)] == [
        "NVIDIA L4"
    ]
    # In the community cloud, RunPod rents no CPU pods: none are listed.
    community = sky.offers(provider(runpod, cloud_type="community"), max_age=0)
    assert community.errors == ()
    assert all(o.accelerator is not None for o in community)


def test_a_cpu_spec_runpod_cannot_meet_is_refused_before_any_pod(runpod: FakeRunPod) -> None:
    creates = [r for r in runpod.requests if r.method == "POST" and r.path.endswith("/pods")]
    for fields, error, said in (
        ({"vcpus": 64}, sky.NoOfferError, "vcpus=64: cpu3c-32-64 has 32 vCPUs"),
        ({"memory_gb": 512}, sky.NoOfferError, "memory_gb=512: cpu3g-32-128 has 128 GB"),
        ({"architecture": "arm64"}, sky.NoOfferError, "architecture='arm64': cpu3c-32-64 is"),
        ({"allocation": "spot"}, ValueError, "allocation='spot': sky.RunPod() rents CPU pods"),
        (
            {"provider": provider(runpod, cloud_type="community")},
            ValueError,
            "RunPod rents CPU pods (this spec asks for no accelerator) in its secure cloud",
        ),
    ):
        spec: dict[str, Any] = {"provider": provider(runpod), **fields}
        with pytest.raises(error) as raised, sky.Compute(**spec, options=QUIET):
            pytest.fail(f"a pool came up for {fields}")
        assert said in str(raised.value)
    after = [r for r in runpod.requests if r.method == "POST" and r.path.endswith("/pods")]
    assert after == creates


def test_pods_run_in_the_first_data_centre_given_with_capacity(runpod: FakeRunPod) -> None:
    runpod.full_data_centers.add("EU-RO-1")
    try:
        with sky.Compute(
            provider=provider(runpod, data_center_ids=["EU-RO-1", "US-GA-1"]),
            accelerator=A.RTX_4090(),
            options=QUIET,
        ) as pool:
            assert _square(4) >> pool == 16
            (pod,) = runpod.live()
    finally:
        runpod.full_data_centers.clear()
    assert pod.body["dataCenterIds"] == ["EU-RO-1", "US-GA-1"]
    assert pod.body["dataCenterPriority"] == "custom"  # in the order given
    assert pod.data_center == "US-GA-1"
    assert not runpod.live()


def test_a_network_volume_puts_every_pod_in_its_data_centre_mounted_where_asked(
    runpod: FakeRunPod,
) -> None:
    volume = runpod.add_network_volume("datasets", "US-KS-2")
    asked = len(runpod.requests)
    with sky.Compute(
        provider=provider(runpod, network_volume_id=volume, volume_mount_path="/data"),
        accelerator=A.RTX_4090(),
        nodes=2,
        options=QUIET,
    ) as pool:
        assert [r["node"] for r in _where() @ pool] == [0, 1]
        pods = runpod.live()
    looked_up = [r for r in runpod.requests[asked:] if "/networkvolumes/" in r.path]
    assert len(looked_up) == 1  # once for the pool, not once per pod
    assert len(pods) == 2
    for pod in pods:
        assert (pod.body["networkVolumeId"], pod.body["volumeMountPath"]) == (volume, "/data")
        assert pod.data_center == "US-KS-2"
    assert not runpod.live()


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        (
            {"network_volume_id": "nosuchvolume"},
            "RunPod has no network volume 'nosuchvolume' in this account",
        ),
        (
            {"network_volume_id": "VOLUME", "data_center_ids": ["EU-RO-1"]},
            r"is in data centre US-KS-2, not one of data_center_ids=\['EU-RO-1'\].*Add "
            "'US-KS-2' to data_center_ids",
        ),
    ],
)
def test_a_network_volume_no_pod_could_mount_is_refused_before_any_pod(
    runpod: FakeRunPod, fields: dict[str, Any], said: str
) -> None:
    if fields["network_volume_id"] == "VOLUME":
        fields = fields | {"network_volume_id": runpod.add_network_volume("ckpt", "US-KS-2")}
    created = len(runpod.pods)
    with (
        pytest.raises(sky.ProvisionError, match=said),
        sky.Compute(
            provider=provider(runpod, **fields),
            accelerator=A.RTX_4090(),
            options=sky.Options(console="silent", max_provision_attempts=1),
        ),
    ):
        pytest.fail("a pool came up with a volume no pod could mount")
    assert len(runpod.pods) == created
