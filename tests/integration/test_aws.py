"""``sky.AWS`` end to end against a fake AWS (``fake_aws.py``): moto's EC2 and SSM, a fake
Price List API, and a hypervisor that makes each running instance a real OpenSSH ``sshd``
on its private (loopback) address, with the host key and authorized key its user data
gave cloud-init. The pool lists and prices instance types, launches, logs in, bootstraps
and runs workers. Nothing here reaches AWS; no address but loopback is contacted.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from clients import Seen, across_a_preemption, cancel_once, killed_client, lease_client
from fake_aws import FAKE_CREDENTIALS, FakeAWS
from waiting import wait_until

import skyward as sky
from skyward.plugins import Plugin
from skyward_trio import _transport
from skyward_trio._aws import DEFAULT_AMI_PARAMETERS, AWSCluster, catalog
from skyward_trio._model import Spec
from skyward_trio._offers import Choice
from skyward_trio._providers import HostKeyError, given_host_key
from skyward_trio._transport import asyncio_loop, generate_key

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(aws: FakeAWS, **fields: Any) -> sky.AWS:
    """The fake's region and subnet (instances get loopback addresses there, and no public
    IP), logging in as the user the fake's machines take."""
    return sky.AWS(
        region=aws.region,
        endpoint_url=aws.endpoint_url,
        subnet_id=aws.subnet_id,
        username="root",
        **fields,
    )


pytestmark = [pytest.mark.clouds, pytest.mark.usefixtures("aws_credentials")]


@sky.function
def _where() -> dict[str, Any]:
    return {
        "node": sky.instance_info().node,
        "instance": os.environ.get("FAKE_EC2_INSTANCE_ID"),
        "version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


@sky.function
def _square(x: int) -> int:
    return x * x


def _runs(aws: FakeAWS, since: int) -> list[dict[str, Any]]:
    return [params for action, params in aws.requests[since:] if action == "RunInstances"]


def _state(aws: FakeAWS, instance_id: str) -> str:
    answer = aws.ec2().describe_instances(InstanceIds=[instance_id])
    return str(answer["Reservations"][0]["Instances"][0]["State"]["Name"])


def test_a_pool_of_two_instances_runs_and_every_instance_is_terminated(
    aws: FakeAWS, tmp_path: Path
) -> None:
    log = tmp_path / "pool.log"
    options = sky.Options(
        console="silent", logging=sky.LogConfig(file=str(log), level="DEBUG", console=False)
    )
    since = len(aws.requests)
    with sky.Compute(
        provider=provider(aws),
        accelerator=A.A10G(),
        nodes=2,
        allocation="on-demand",
        options=options,
    ) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        events = pool.events()
        provisioned = []
        for event in events:  # the stream replays what happened, then waits for more
            if isinstance(event, sky.InstanceProvisioned):
                provisioned.append(event)
                if len(provisioned) == 2:
                    break
        events.close()
        job = pool.job_id
    assert [r["node"] for r in per_node] == [0, 1]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert {r["version"] for r in per_node} == {version}
    instances = {r["instance"] for r in per_node}
    assert len(instances) == 2
    assert None not in instances
    for instance_id in instances:
        assert _state(aws, instance_id) in ("shutting-down", "terminated")
    # The cheapest type with one A10G, at its on-demand price.
    assert [e.hourly_price for e in provisioned] == [pytest.approx(1.006)] * 2
    runs = _runs(aws, since)
    assert len(runs) == 2
    for params in runs:
        assert params["InstanceType"] == "g5.xlarge"
        assert params["InstanceInitiatedShutdownBehavior"] == "terminate"
        assert params["SubnetId"] == aws.subnet_id
        assert params["ImageId"] == aws.ami_id
        assert "InstanceMarketOptions.MarketType" not in params
        assert params["ClientToken"].startswith(f"skyward-{job}-")
        data = base64.b64decode(params["UserData"]).decode()
        assert data.startswith("#cloud-config\n")
        assert json.loads(data.split("\n", 1)[1])["ssh_authorized_keys"][0].startswith(
            "ssh-ed25519 "
        )
    # The default image came from the Deep Learning AMI's public parameter.
    asked = [p.get("Name") for a, p in aws.requests[since:] if a.endswith("GetParameter")]
    assert asked == [DEFAULT_AMI_PARAMETERS[True, "x86_64"]]
    # Its group: SSH in, and anything between members.
    (group,) = aws.ec2().describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": ["skyward"]},
            {"Name": "vpc-id", "Values": [aws.vpc_id]},
        ]
    )["SecurityGroups"]
    rules = group["IpPermissions"]
    assert any(r.get("FromPort") == 22 and r["IpRanges"][0]["CidrIp"] == "0.0.0.0/0" for r in rules)
    assert any(r["IpProtocol"] == "-1" and r["UserIdGroupPairs"] for r in rules)
    assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in log.read_text()


def test_the_catalog_lists_the_accelerators_types_at_their_prices(aws: FakeAWS) -> None:
    async def main() -> None:
        a100 = await catalog(provider(aws), accelerator=A.A100())
        by_name = {o.name: o for o in a100.offers}
        assert set(by_name) == {"p4d.24xlarge", "p4de.24xlarge"}
        assert by_name["p4d.24xlarge"].accelerator == A.A100(
            count=8, memory="40GB", form_factor="SXM"
        )
        assert by_name["p4de.24xlarge"].on_demand_price == pytest.approx(27.447)
        assert by_name["p4d.24xlarge"].vcpus == 96
        assert by_name["p4d.24xlarge"].regions == ("us-east-1",)
        assert by_name["p4d.24xlarge"].spot_price is not None  # EC2's spot history (moto's)
        cpu = await catalog(provider(aws), accelerator=None)
        names = {o.name for o in cpu.offers}
        # The families Skyward offers CPU nodes from, priced by the Price List only.
        assert {"m7i.large", "c7i.xlarge", "m7g.large"} <= names
        assert all(o.accelerator is None for o in cpu.offers)
        assert {o.architecture for o in cpu.offers if o.name == "m7g.large"} == {"arm64"}
        assert "g5.xlarge" not in names
        # AWS's own chips, from EC2's NeuronInfo (priced when the Price List has them).
        aws.set_price("trn2.48xlarge", 44.7)
        trainium = await catalog(provider(aws), accelerator=A.Trainium2())
        assert [(o.name, o.accelerator) for o in trainium.offers] == [
            ("trn2.48xlarge", A.Trainium2(count=16))
        ]
        # The spec's region, priced there.
        ireland = await catalog(provider(aws), accelerator=A.A10G(), region="eu-west-1")
        g5 = next(o for o in ireland.offers if o.name == "g5.xlarge")
        assert g5.regions == ("eu-west-1",)
        assert g5.on_demand_price == pytest.approx(1.006 * 1.2)

    trio.run(main)


def test_a_spec_the_offers_cannot_meet_fails_before_anything_is_launched(aws: FakeAWS) -> None:
    since = len(aws.requests)
    with (
        pytest.raises(sky.NoOfferError, match=r"max_hourly_cost=10: p4d\.24xlarge costs"),
        sky.Compute(
            provider=provider(aws),
            accelerator=A.A100(memory="40GB"),
            allocation="on-demand",
            max_hourly_cost=10,
            options=QUIET,
        ),
    ):
        pytest.fail("a pool came up over its cap")
    assert not _runs(aws, since)


def test_a_type_out_of_capacity_gives_way_to_the_specs_next_type(aws: FakeAWS) -> None:
    since = len(aws.requests)
    aws.refuse_capacity("g5.xlarge")
    try:
        with sky.Compute(
            provider=provider(aws), accelerator=A.A10G(), allocation="on-demand", options=QUIET
        ) as pool:
            events = pool.events()
            provisioned = next(e for e in events if isinstance(e, sky.InstanceProvisioned))
            events.close()
            assert _square(5) >> pool == 25
    finally:
        aws.restore_capacity("g5.xlarge")
    kinds = [params["InstanceType"] for params in _runs(aws, since)]
    assert kinds[0] == "g5.xlarge", kinds
    assert kinds[-1] == "g5.2xlarge", kinds
    assert provisioned.hourly_price == pytest.approx(1.212)  # the type it got, not the first


def test_a_quota_of_zero_fails_the_node_saying_where_to_raise_it(aws: FakeAWS) -> None:
    """A new account's GPU vCPU quota is 0: the launch is refused, not retried as if the
    type had no capacity, and the error says where the quota is raised."""
    aws.refuse_quota("g4dn.xlarge")
    options = sky.Options(console="silent", max_provision_attempts=1)
    try:
        with (
            pytest.raises(sky.ProvisionError, match="VcpuLimitExceeded") as raised,
            sky.Compute(provider=provider(aws), accelerator=A.T4(), options=options),
        ):
            pytest.fail("a pool came up past a quota of 0")
    finally:
        aws.restore_capacity("g4dn.xlarge")
    assert "Service Quotas console" in str(raised.value)
    assert not aws.live()


def test_a_cpu_pool_on_spot_gets_the_ubuntu_image_and_a_capped_spot_instance(aws: FakeAWS) -> None:
    since = len(aws.requests)
    with sky.Compute(
        provider=provider(aws),
        vcpus=4,
        allocation="spot",
        disk_gb=120,
        max_hourly_cost=0.5,
        options=QUIET,
    ) as pool:
        assert _square(7) >> pool == 49
    (params,) = _runs(aws, since)
    assert params["InstanceMarketOptions.MarketType"] == "spot"
    # EC2 never bills the spot instance above the cap.
    assert params["InstanceMarketOptions.SpotOptions.MaxPrice"] == "0.5000"
    assert params["BlockDeviceMapping.1.DeviceName"] == "/dev/sda1"
    assert params["BlockDeviceMapping.1.Ebs.VolumeSize"] == "120"
    asked = [p.get("Name") for a, p in aws.requests[since:] if a.endswith("GetParameter")]
    assert asked == [DEFAULT_AMI_PARAMETERS[False, "x86_64"]]


def test_a_pool_cancelled_while_instances_start_leaves_none(aws: FakeAWS) -> None:
    aws.start_delay = 3600.0  # the machines never answer
    since = len(aws.requests)

    try:
        cancel_once(
            lambda: len(_runs(aws, since)) == 2,
            "two launches",
            provider(aws),
            accelerator=A.T4(),
            nodes=2,
        )
    finally:
        aws.start_delay = 0.0
    assert not aws.live()


def test_placement_cluster_puts_the_pool_in_a_group_of_its_own_deleted_at_close(
    aws: FakeAWS,
) -> None:
    since = len(aws.requests)
    compute = sky.Compute(
        provider=provider(aws, placement="cluster"), accelerator=A.T4(), nodes=2, options=QUIET
    )
    with compute as pool:
        group = f"skyward-{pool.job_id}"
        assert aws.placement_groups.get(group) == "cluster"
        assert len(_where() @ pool) == 2
        members = list(aws.placement_members[group])
    launches = _runs(aws, since)
    assert [r.get("Placement.GroupName") for r in launches] == [group, group]
    assert len(members) == 2
    assert group not in aws.placement_groups  # deleted once its instances were gone
    assert not aws.live()


def test_a_placement_group_of_yours_is_used_and_kept_and_a_missing_one_refused(
    aws: FakeAWS,
) -> None:
    aws.placement_groups["mine"] = "spread"  # made in the EC2 console, say
    aws.placement_members["mine"] = []
    since = len(aws.requests)
    with sky.Compute(
        provider=provider(aws, placement_group="mine"), accelerator=A.T4(), options=QUIET
    ) as pool:
        assert (_where() >> pool)["node"] == 0
    assert [r.get("Placement.GroupName") for r in _runs(aws, since)] == ["mine"]
    assert aws.placement_groups.get("mine") == "spread"  # yours: kept
    since = len(aws.requests)
    missing = sky.Compute(
        provider=provider(aws, placement_group="nope"), accelerator=A.T4(), options=QUIET
    )
    refused = pytest.raises(sky.ProvisionError, match=r"there is no placement group 'nope' in ")
    with refused, missing:
        pytest.fail("the block must not run")
    assert not _runs(aws, since)  # refused before any launch
    assert not aws.live()


def test_a_cluster_group_in_the_default_vpc_launches_in_one_zone_that_has_the_type(
    aws: FakeAWS,
) -> None:
    """Without a subnet, a cluster group's launches all go to the default subnet of one
    zone that offers the type (EC2 would otherwise pick zones per launch). Planned only:
    a default VPC's instances would get addresses beyond loopback."""

    async def main() -> tuple[str | None, str | None]:
        async with asyncio_loop():
            config = attrs.evolve(provider(aws), subnet_id=None, placement="cluster")
            cluster = await _cluster(aws, "c1a5e000", config)
            try:
                _, network = await cluster._prepared()
            finally:
                await cluster.aclose()
            return network.subnet_id, network.placement_group

    subnet, group = trio.run(main)
    ec2 = aws.ec2()
    offered = ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": ["g4dn.xlarge"]}],
    )["InstanceTypeOfferings"]
    zones = {o["Location"] for o in offered}
    (chosen,) = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"]
    assert chosen["DefaultForAz"]
    assert chosen["AvailabilityZone"] in zones
    assert group == "skyward-c1a5e000"


async def _cluster(aws: FakeAWS, job_id: str, config: sky.AWS | None = None) -> AWSCluster:
    """A cluster planned on the fake's T4 type, as Compute would open it."""
    config = config or provider(aws)
    spec = Spec(provider=config, accelerator=A.T4())
    offers = (await catalog(config, accelerator=A.T4())).offers
    offer = next(o for o in offers if o.name == "g4dn.xlarge")
    choice = Choice(index=0, spec=spec, offer=offer, spot=False, hourly_price=0.526)
    return AWSCluster(config, job_id=job_id, client_key=generate_key(), choice=choice)


JOB_TAG = {"Key": "skyward:job", "Value": "c0ffee00"}


def _launch(aws: FakeAWS, **params: Any) -> dict[str, Any]:
    """An instance launched behind the pool's back (straight on moto), in the fake's subnet."""
    return dict(
        aws.ec2().run_instances(
            ImageId=aws.ami_id,
            InstanceType="g4dn.xlarge",
            MinCount=1,
            MaxCount=1,
            SubnetId=aws.subnet_id,
            **params,
        )["Instances"][0]
    )


def test_an_instance_launched_but_never_answered_is_found_by_its_tag(aws: FakeAWS) -> None:
    """A launch whose answer never came leaves an instance the pool never heard of:
    closing the cluster lists the job's instances by tag and terminates it."""

    async def main() -> str:
        async with asyncio_loop():
            cluster = await _cluster(aws, "c0ffee00")
            instance = await cluster.provision(0)
            assert await cluster.alive(instance)
            stray = _launch(
                aws, TagSpecifications=[{"ResourceType": "instance", "Tags": [JOB_TAG]}]
            )["InstanceId"]
            await cluster.aclose()
            assert _state(aws, instance.id) in ("shutting-down", "terminated")
            return str(stray)

    stray = trio.run(main)
    assert _state(aws, stray) in ("shutting-down", "terminated")


def test_an_interrupted_spot_instance_is_replaced_and_its_calls_sent_again(aws: FakeAWS) -> None:
    with sky.Compute(
        provider=provider(aws), accelerator=A.T4(), allocation="spot", options=QUIET
    ) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: aws.preempt(ran["instance"])
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not aws.live()


@sky.function
def _held(gate: str, runs: str) -> dict[str, Any]:
    """Note where it runs (a line in ``runs``), wait for ``gate`` to exist, say where it ran.

    The fake's machines are processes of this host: they see the test's files."""
    where = os.environ.get("FAKE_EC2_INSTANCE_ID")
    with open(runs, "a") as file:
        file.write(f"{where}\n")
    while not os.path.exists(gate):
        time.sleep(0.02)
    return {"node": sky.instance_info().node, "instance": where}


def _spot_pair(aws: FakeAWS) -> sky.Compute:
    """Two spot nodes with four slots each: a busy node still has room for more calls."""
    return sky.Compute(
        provider=provider(aws),
        accelerator=A.T4(),
        nodes=2,
        allocation="spot",
        options=sky.Options(console="silent", worker=sky.Worker(concurrency=4)),
    )


def _runs_of(runs: Path) -> list[str]:
    return runs.read_text().splitlines() if runs.exists() else []


def _long_call(
    pool: sky.Pool, gate: Path, runs: Path, target: int | None
) -> tuple[dict[int, str], concurrent.futures.Future[Any]]:
    """Each node's instance, and a ``_held`` call started on ``target`` (once it runs)."""
    placed = {r["node"]: r["instance"] for r in _where() @ pool}
    long = pool.run_async(_held(str(gate), str(runs)), target=target)
    wait_until(lambda: _runs_of(runs), "the long call to start", timeout=60, every=0.05)
    return placed, long


def test_a_spot_notice_drains_the_node_and_it_is_replaced_once_idle(
    aws: FakeAWS, tmp_path: Path
) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    with _spot_pair(aws) as pool:
        seen = Seen(pool)
        placed, long = _long_call(pool, gate, runs, target=1)
        aws.warn(placed[1])
        notice = seen.first(sky.InstanceInterrupting, 1)
        assert (notice.instance_id, notice.action) == (placed[1], "terminate")
        assert notice.time < notice.at <= notice.time + 120  # two minutes ahead, at most
        # Node 1 has three free slots, but new calls all go to node 0.
        assert {(_where() >> pool)["instance"] for _ in range(6)} == {placed[0]}
        # Its replacement's machine is launched now, while it still runs the long call,
        # and its environment built there.
        ahead = _launched_ahead(aws, placed)
        assert _node_of(aws, ahead) == 1
        built = _environment_built(aws, ahead)
        when = built.stat().st_mtime_ns
        assert not seen.of(sky.InstancePreempted, 1)
        gate.touch()
        assert long.result() == {"node": 1, "instance": placed[1]}
        # Idle and drained, the node is retired without waiting for its machine to go,
        # and replaced by the machine launched ahead.
        lost = seen.first(sky.InstancePreempted, 1)
        assert lost.instance_id == placed[1]
        assert f"aws reclaims instance {placed[1]} at " in lost.reason
        replaced = seen.first(sky.InstanceReplaced, 1)
        assert (replaced.old_instance_id, replaced.instance_id) == (placed[1], ahead)
        assert built.stat().st_mtime_ns == when  # taking over found it built
        assert not [e for e in seen.events if isinstance(e, sky.Error)]
        again = pool.run(_where(), target=1)
        assert again["instance"] == replaced.instance_id != placed[1]
        seen.close()
    assert _runs_of(runs) == [placed[1]]  # the long call ran once
    assert len(seen.of(sky.InstanceInterrupting, 1)) == 1
    assert not seen.of(sky.InstanceInterrupting, 0)
    assert not aws.live()
    # The worker read IMDS the v2 way: a token first, then reads carrying it (none refused).
    statuses = [(method, status) for method, _, status in aws.metadata_requests[placed[1]]]
    assert statuses[0] == ("PUT", 200)
    assert ("GET", 404) in statuses
    assert ("GET", 200) in statuses
    assert all(status in (200, 404) for _, status in statuses)


def test_a_rebalance_recommendation_hands_the_node_over_once_its_replacement_is_ready(
    aws: FakeAWS, tmp_path: Path
) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    with _spot_pair(aws) as pool:
        seen = Seen(pool)
        placed, long = _long_call(pool, gate, runs, target=1)
        aws.recommend_rebalance(placed[1])
        risk = seen.first(sky.InstanceAtRisk, 1)
        assert (risk.instance_id, risk.replaced) == (placed[1], True)
        assert risk.at <= risk.time  # when EC2 recommended it: just now
        # Its replacement's machine is launched now, and its environment built there...
        ahead = _launched_ahead(aws, placed)
        assert _node_of(aws, ahead) == 1
        built = _environment_built(aws, ahead)
        when = built.stat().st_mtime_ns
        # ...and only then is node 1 drained: new calls all go to node 0, and its long
        # call goes on there.
        wait_until(
            lambda: {(_where() >> pool)["instance"] for _ in range(4)} == {placed[0]},
            "node 1 to take no new calls",
            timeout=60,
            every=0.1,
        )
        assert not seen.of(sky.InstancePreempted, 1)
        gate.touch()
        assert long.result() == {"node": 1, "instance": placed[1]}
        # Idle, it is handed over to the machine launched for it.
        lost = seen.first(sky.InstancePreempted, 1)
        assert lost.instance_id == placed[1]
        assert "a rebalance recommendation" in lost.reason
        replaced = seen.first(sky.InstanceReplaced, 1)
        assert (replaced.old_instance_id, replaced.instance_id) == (placed[1], ahead)
        assert built.stat().st_mtime_ns == when  # taking over found it built
        assert pool.run(_where(), target=1)["instance"] == ahead
        assert not [e for e in seen.events if isinstance(e, sky.Error)]
        assert not seen.of(sky.InstanceInterrupting, 1)  # no interruption came
        wait_until(
            lambda: placed[1] not in aws.live(), "the old machine to end", timeout=60, every=0.1
        )
        seen.close()
    assert _runs_of(runs) == [placed[1]]  # the long call ran once
    assert not aws.live()
    reads = [(path, status) for _, path, status in aws.metadata_requests[placed[1]]]
    assert ("/latest/meta-data/events/recommendations/rebalance", 200) in reads


def test_a_collective_pool_s_node_is_kept_at_a_recommendation_and_drained_at_its_notice(
    aws: FakeAWS,
) -> None:
    """A node of a collective pool cannot be handed over (its group does not take a
    newcomer): the recommendation changes nothing, and the interruption notice that may
    follow it still drains the node."""
    group = Plugin.create("group", collective=True)
    compute = sky.Compute(
        provider=provider(aws),
        accelerator=A.T4(),
        nodes=2,
        allocation="spot",
        plugins=[group],
        options=sky.Options(console="silent", worker=sky.Worker(concurrency=4)),
    )
    with compute as pool:
        seen = Seen(pool)
        placed = {r["node"]: r["instance"] for r in _where() @ pool}
        before = set(aws.live())  # with an earlier test's, maybe still ending
        aws.recommend_rebalance(placed[1])
        risk = seen.first(sky.InstanceAtRisk, 1)
        assert (risk.instance_id, risk.replaced) == (placed[1], False)
        # Node 1 still takes calls, and nothing was launched for it.
        assert {(_where() >> pool)["instance"] for _ in range(8)} == set(placed.values())
        assert set(aws.live()) <= before
        aws.warn(placed[1])
        notice = seen.first(sky.InstanceInterrupting, 1)
        assert (notice.instance_id, notice.action) == (placed[1], "terminate")
        assert {(_where() >> pool)["instance"] for _ in range(6)} == {placed[0]}
        ahead = _launched_ahead(aws, placed)
        replaced = seen.first(sky.InstanceReplaced, 1)
        assert (replaced.old_instance_id, replaced.instance_id) == (placed[1], ahead)
        seen.close()
    assert len(seen.of(sky.InstanceAtRisk, 1)) == 1
    assert not aws.live()


def _launched_ahead(aws: FakeAWS, placed: dict[int, str]) -> str:
    """The one machine launched besides the pool's nodes (waited for)."""
    others: list[str] = []

    def one_more() -> bool:
        others[:] = [i for i in aws.live() if i not in placed.values()]
        return len(others) == 1

    wait_until(one_more, "a replacement launched ahead", timeout=60, every=0.05)
    return others[0]


def _environment_built(aws: FakeAWS, instance_id: str) -> Path:
    """The marker of the environment built on an instance's machine (waited for)."""
    wait_until(lambda: instance_id in aws.machines, "its machine", timeout=60, every=0.05)
    envs = aws.machines[instance_id].home / ".skyward" / "envs"
    wait_until(
        lambda: list(envs.glob("*/.skyward-complete")),
        "the environment built ahead",
        timeout=120,
        every=0.1,
    )
    (marker,) = envs.glob("*/.skyward-complete")
    return marker


def test_a_replacement_launched_ahead_that_no_node_takes_up_is_terminated(
    aws: FakeAWS,
) -> None:
    """Node 0, holding the store, serves on after its notice; the pool closes first: the
    machine launched to replace it (its environment built) is terminated with the others,
    and counted."""
    with _spot_pair(aws) as pool:
        seen = Seen(pool)
        placed = {r["node"]: r["instance"] for r in _where() @ pool}
        aws.warn(placed[0])
        ahead = _launched_ahead(aws, placed)
        assert _node_of(aws, ahead) == 0
        wait_until(
            lambda: (
                [e.instance_id for e in seen.of(sky.InstanceProvisioned, 0) if e.ahead] == [ahead]
            ),
            "the replacement launched ahead to be up",
            timeout=60,
            every=0.05,
        )
        _environment_built(aws, ahead)
        assert not seen.of(sky.InstancePreempted, 0)  # node 0 still serves
    assert not aws.live()
    wait_until(
        lambda: any(isinstance(e, sky.ClusterDestroyed) for e in seen.events),
        "the pool's end",
        timeout=30,
        every=0.05,
    )
    ended = {e.instance_id for e in seen.events if isinstance(e, sky.InstanceDestroyed)}
    assert ahead in ended
    (destroyed,) = [e for e in seen.events if isinstance(e, sky.ClusterDestroyed)]
    assert destroyed.instances == 3  # the machine launched ahead is billed, and counted
    seen.close()


def test_a_call_the_reclaimed_machine_takes_with_it_is_sent_again_once(
    aws: FakeAWS, tmp_path: Path
) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    with _spot_pair(aws) as pool:
        seen = Seen(pool)
        placed, long = _long_call(pool, gate, runs, target=None)
        (first,) = _runs_of(runs)
        node = next(k for k, instance in placed.items() if instance == first)
        aws.warn(first)
        seen.first(sky.InstanceInterrupting, node)
        aws.preempt(first)  # before the call is done
        wait_until(
            lambda: len(_runs_of(runs)) == 2, "the call to run again", timeout=60, every=0.05
        )
        gate.touch()
        result = long.result()
        # Sent again to the node that was not reclaimed (the other one's replacement
        # may not be up yet).
        assert _runs_of(runs) == [first, placed[1 - node]]
        assert result == {"node": 1 - node, "instance": placed[1 - node]}
        replaced = seen.first(sky.InstanceReplaced, node)
        assert pool.run(_where(), target=node)["instance"] == replaced.instance_id
        seen.close()
    assert not aws.live()


def test_node_0_holding_the_store_is_drained_but_serves_until_its_machine_goes(
    aws: FakeAWS,
) -> None:
    """Functions on other nodes may be using the collections store on node 0: it is not
    retired early, only drained, until its machine goes."""
    with _spot_pair(aws) as pool:
        seen = Seen(pool)
        placed = {r["node"]: r["instance"] for r in _where() @ pool}
        aws.warn(placed[0])
        seen.first(sky.InstanceInterrupting, 0)
        assert {(_where() >> pool)["instance"] for _ in range(6)} == {placed[1]}
        # An idle node 1 would have been retired by now (test above); node 0 is not.
        assert not seen.of(sky.InstancePreempted, 0)
        counter = pool.counter("calls")  # the store on node 0 still answers
        counter.increment(2)
        assert counter.value == 2
        aws.preempt(placed[0])
        replaced = seen.first(sky.InstanceReplaced, 0)
        assert pool.run(_where(), target=0)["instance"] == replaced.instance_id
        seen.close()
    assert not aws.live()


def _node_of(aws: FakeAWS, instance_id: str) -> int:
    """The pool node an instance was launched for (its ``skyward:node`` tag)."""
    (reservation,) = aws.ec2().describe_instances(InstanceIds=[instance_id])["Reservations"]
    tags = {t["Key"]: t["Value"] for t in reservation["Instances"][0].get("Tags", [])}
    return int(tags["skyward:node"])


def test_a_notice_that_came_before_the_client_connected_reaches_it(aws: FakeAWS) -> None:
    """The worker tells every client connection of the notice, so one that came while no
    client was connected (here: before the first) is heard all the same."""
    earlier = set(aws.machines) | set(aws.live())  # an earlier test's, maybe still ending
    warned: list[str] = []

    def node_1_is_up() -> bool:
        fresh = [i for i in list(aws.machines) if i not in earlier]
        warned[:] = [i for i in fresh if _node_of(aws, i) == 1]
        return bool(warned)

    def warn_node_1_first_thing() -> None:
        wait_until(node_1_is_up, "node 1's machine", timeout=60, every=0.01)
        aws.warn(warned[0])

    warner = threading.Thread(target=warn_node_1_first_thing, daemon=True)
    warner.start()
    with _spot_pair(aws) as pool:
        warner.join()
        seen = Seen(pool)
        notice = seen.first(sky.InstanceInterrupting, 1)
        assert notice.instance_id == warned[0]
        # Idle from the start: retired and replaced at once.
        replaced = seen.first(sky.InstanceReplaced, 1)
        assert replaced.old_instance_id == warned[0]
        assert warned[0] not in {r["instance"] for r in _where() @ pool}
        seen.close()
    assert len(seen.of(sky.InstanceInterrupting, 1)) == 1
    assert not aws.live()


_CLIENT = lease_client(
    'sky.AWS(region=sys.argv[1], endpoint_url=sys.argv[2], subnet_id=sys.argv[3], username="root")',
    "sky.accelerators.T4()",
)


def test_the_instances_of_a_client_that_died_terminate_themselves(aws: FakeAWS) -> None:
    before = set(aws.live())
    with killed_client(_CLIENT, aws.region, aws.endpoint_url, aws.subnet_id):
        (instance_id,) = set(aws.live()) - before
    # The worker gives its client the reconnect window, then shuts the machine down: EC2
    # terminates an instance launched to end on shutdown.
    wait_until(
        lambda: _state(aws, instance_id) == "terminated",
        "the instance terminated by its own shutdown",
        timeout=120,
        every=0.5,
    )


def test_a_machine_presenting_another_host_key_is_refused(aws: FakeAWS) -> None:
    """An instance booted without the user data (so with a host key of its own) stands in
    for a machine whose cloud-init did not install the key the pool made for it."""
    launched = _launch(aws)
    instance_id, address = launched["InstanceId"], launched["PrivateIpAddress"]
    wait_until(lambda: instance_id in aws.machines, "its machine", timeout=60, every=0.05)
    expected = _transport.public_openssh(generate_key())

    async def main() -> None:
        async with asyncio_loop():
            with pytest.raises(HostKeyError, match=f"instance {instance_id} at {address}"):
                await given_host_key(instance_id, address, 22, expected)

    try:
        trio.run(main)
    finally:
        aws.ec2().terminate_instances(InstanceIds=[instance_id])


def test_with_no_subnet_the_default_vpc_gets_the_group(aws: FakeAWS) -> None:
    """No launch here: the default VPC's instances would have addresses that are not
    loopback, which the tests never contact."""
    (default,) = aws.ec2().describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])[
        "Vpcs"
    ]

    async def main() -> None:
        config = sky.AWS(region=aws.region, endpoint_url=aws.endpoint_url, ami=aws.ami_id)
        spec = Spec(provider=config, accelerator=A.T4())
        offer = next(
            o for o in (await catalog(config, accelerator=A.T4())).offers if o.name == "g4dn.xlarge"
        )
        choice = Choice(index=0, spec=spec, offer=offer, spot=False, hourly_price=0.526)
        cluster = AWSCluster(config, job_id="d0d0d0d0", client_key=generate_key(), choice=choice)
        _, network = await cluster._prepared()
        assert network.subnet_id is None  # EC2 picks one of the default VPC's
        (group,) = aws.ec2().describe_security_groups(GroupIds=[network.security_group_id])[
            "SecurityGroups"
        ]
        assert (group["GroupName"], group["VpcId"]) == ("skyward", default["VpcId"])
        await cluster.aclose()

    trio.run(main)
