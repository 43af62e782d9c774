"""The fake AWS (``fake_aws.py``) that ``sky.AWS`` is tested against: its Pricing API and
SSM public parameters answer as AWS's do, the rest reaches moto, and its instances are sshd
machines that the user data's keys log in to and that end (every process of them) when
terminated, stopped, shut down from inside or preempted.

Requests go through boto3 at the fake's endpoint, as the provider's do; logins through
asyncssh, as root (the tests run as root in CI).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import shlex
import socket
import time
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import procs
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from clients import asyncio_run
from fake_aws import PUBLIC_AMI_PARAMETERS, FakeAWS
from sshd import Machine
from waiting import wait_until

LINUX = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "regionCode": "us-east-1",
}


pytestmark = [pytest.mark.clouds, pytest.mark.usefixtures("aws_credentials")]


@pytest.fixture(scope="module")
def keys() -> tuple[asyncssh.SSHKey, asyncssh.SSHKey]:
    """(host key, client key): the provider puts the first in the user data's ``ssh_keys``
    and the public half of the second in its ``ssh_authorized_keys``."""
    return asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key(
        "ssh-ed25519"
    )


def _client(aws: FakeAWS, service: str) -> Any:
    """A boto3 client at the fake's endpoint, trying each request once."""
    return boto3.session.Session().client(
        service,
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=Config(retries={"max_attempts": 1}),
    )


def _user_data(keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]) -> str:
    host, client = keys
    config = {
        "ssh_deletekeys": True,
        "ssh_keys": {
            "ed25519_private": host.export_private_key().decode(),
            "ed25519_public": host.export_public_key().decode().strip(),
        },
        "ssh_authorized_keys": [client.export_public_key().decode().strip() + " skyward"],
        "package_update": False,  # another key: ignored
    }
    return "#cloud-config\n" + json.dumps(config)


def _launch(aws: FakeAWS, user_data: str | None = None, **fields: Any) -> dict[str, Any]:
    """One g5.xlarge in the fake's subnet, run through the fake's endpoint."""
    extra = {"UserData": user_data} if user_data is not None else {}
    answer = _client(aws, "ec2").run_instances(
        ImageId=aws.ami_id,
        InstanceType="g5.xlarge",
        MinCount=1,
        MaxCount=1,
        SubnetId=aws.subnet_id,
        **extra | fields,
    )
    instance: dict[str, Any] = answer["Instances"][0]
    return instance


def _machine(aws: FakeAWS, instance_id: str) -> Machine:
    wait_until(
        lambda: instance_id in aws.machines, f"{instance_id}'s machine", timeout=30, every=0.05
    )
    return aws.machines[instance_id]


def _state(aws: FakeAWS, instance_id: str) -> str:
    answer = aws.ec2().describe_instances(InstanceIds=[instance_id])
    state: str = answer["Reservations"][0]["Instances"][0]["State"]["Name"]
    return state


def _ended(aws: FakeAWS, instance_id: str, machine: Machine) -> None:
    wait_until(
        lambda: instance_id not in aws.machines and not procs.is_running(machine.pid),
        f"{instance_id}'s machine to end",
        timeout=30,
        every=0.05,
    )


def _ssh(
    machine: Machine,
    keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey],
    command: str,
    *,
    verify_host: bool = True,
) -> asyncssh.SSHCompletedProcess:
    """``command`` on the machine as root, trusting only the user data's host key (or any,
    without ``verify_host``), with no config or agent of this machine involved."""
    host, client = keys

    async def run() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            machine.addr,
            machine.port,
            username="root",
            client_keys=[client],
            known_hosts=([host.convert_to_public()], [], []) if verify_host else None,
            agent_path=None,
            config=[],
            connect_timeout=30,
        ) as connection:
            return await connection.run(command, check=False, timeout=60)

    return asyncio_run(run)


def _daemon(machine: Machine, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]) -> int:
    """Start, over SSH, a process that leaves its session (as the worker daemon does)."""
    started = _ssh(machine, keys, "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!")
    assert started.exit_status == 0, started.stderr
    return int(str(started.stdout))


# -- Pricing --------------------------------------------------------------------------------------


def _filters(instance_type: str, **fields: str) -> list[dict[str, str]]:
    return [
        {"Type": "TERM_MATCH", "Field": field, "Value": value}
        for field, value in ({"instanceType": instance_type} | LINUX | fields).items()
    ]


def _products(aws: FakeAWS, filters: list[dict[str, str]], **fields: Any) -> list[dict[str, Any]]:
    answer = _client(aws, "pricing").get_products(
        ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1", **fields
    )
    return [json.loads(product) for product in answer["PriceList"]]


def _price(product: dict[str, Any]) -> str:
    [term] = product["terms"]["OnDemand"].values()
    [dimension] = term["priceDimensions"].values()
    usd: str = dimension["pricePerUnit"]["USD"]
    return usd


def test_every_filter_finds_the_one_linux_on_demand_product(aws: FakeAWS) -> None:
    filters = _filters("g5.xlarge")
    [product] = _products(aws, filters)
    assert aws.requests[-1] == (
        "AWSPriceListService.GetProducts",
        {"ServiceCode": "AmazonEC2", "Filters": filters, "FormatVersion": "aws_v1"},
    )
    sku = product["product"]["sku"]
    attributes = product["product"]["attributes"]
    assert attributes | LINUX == attributes
    assert (attributes["vcpu"], attributes["memory"], attributes["gpu"]) == ("4", "16 GiB", "1")
    assert attributes["location"] == "US East (N. Virginia)"
    assert (product["product"]["productFamily"], product["serviceCode"]) == (
        "Compute Instance",
        "AmazonEC2",
    )
    term = product["terms"]["OnDemand"][f"{sku}.JRTCKXETXF"]
    dimension = term["priceDimensions"][f"{sku}.JRTCKXETXF.6YS6EN2CT7"]
    assert (term["sku"], term["offerTermCode"], dimension["unit"]) == (sku, "JRTCKXETXF", "Hrs")
    assert dimension["pricePerUnit"] == {"USD": "1.0060000000"}
    assert dimension["description"] == "$1.006 per On Demand Linux g5.xlarge Instance Hour"

    big = _products(aws, _filters("p4d.24xlarge"))[0]["product"]["attributes"]
    assert (big["vcpu"], big["memory"], big["gpu"]) == ("96", "1,152 GiB", "8")
    small = _products(aws, _filters("m7i.large"))[0]["product"]["attributes"]
    assert (small["vcpu"], small["memory"], "gpu" in small) == ("2", "8 GiB", False)


@pytest.mark.parametrize(
    ("dropped", "decoy", "usd"),
    [
        ("operatingSystem", "Windows", "2.0120000000"),
        ("tenancy", "Dedicated", "1.1066000000"),
        ("capacitystatus", "UnusedCapacityReservation", "1.0060000000"),
        ("preInstalledSw", "SQL Std", "1.5090000000"),
        ("regionCode", "eu-west-1", "1.2072000000"),
    ],
)
def test_a_missing_filter_also_finds_its_decoy(
    aws: FakeAWS, dropped: str, decoy: str, usd: str
) -> None:
    filters = [f for f in _filters("g5.xlarge") if f["Field"] != dropped]
    found = {p["product"]["attributes"][dropped]: _price(p) for p in _products(aws, filters)}
    assert found == {LINUX[dropped]: "1.0060000000", decoy: usd}


def test_filters_are_strict_and_any_of_spans_types(aws: FakeAWS) -> None:
    any_of = {"Type": "ANY_OF", "Field": "instanceType", "Value": "g5.xlarge, m7i.large,nope"}
    filters = [any_of, *_filters("")[1:]]
    found = {p["product"]["attributes"]["instanceType"]: _price(p) for p in _products(aws, filters)}
    assert found == {"g5.xlarge": "1.0060000000", "m7i.large": "0.1008000000"}
    unknown = {"Type": "TERM_MATCH", "Field": "instancetype", "Value": "g5.xlarge"}
    assert _products(aws, [unknown]) == []
    assert _products(aws, _filters("g5.xlarge", location="US East (Ohio)")) == []
    pricing = _client(aws, "pricing")
    with pytest.raises(ClientError) as raised:
        pricing.get_products(ServiceCode="AmazonS3", Filters=[])
    assert raised.value.response["Error"]["Code"] == "InvalidParameterException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as raised:
        pricing.describe_services(ServiceCode="AmazonEC2")
    assert raised.value.response["Error"]["Code"] == "UnknownOperationException"


def test_pages_of_max_results_follow_next_token(aws: FakeAWS) -> None:
    types = "g5.xlarge,g6.xlarge,p5.48xlarge"
    filters = [{"Type": "ANY_OF", "Field": "instanceType", "Value": types}]
    everything = _products(aws, filters)
    assert len(everything) == 3 * 6  # each type's product and its five decoys
    pricing = _client(aws, "pricing")
    pages: list[list[str]] = []
    token: dict[str, str] = {}
    while True:
        answer = pricing.get_products(
            ServiceCode="AmazonEC2", Filters=filters, MaxResults=1, **token
        )
        pages.append(answer["PriceList"])
        if "NextToken" not in answer:
            break
        token = {"NextToken": answer["NextToken"]}
    assert [len(page) for page in pages] == [1] * 18
    assert [json.loads(page[0]) for page in pages] == everything
    paginator = pricing.get_paginator("get_products")
    paged = paginator.paginate(
        ServiceCode="AmazonEC2", Filters=filters, PaginationConfig={"PageSize": 7}
    )
    assert [len(page["PriceList"]) for page in paged] == [7, 7, 4]
    with pytest.raises(ClientError) as raised:
        pricing.get_products(ServiceCode="AmazonEC2", Filters=filters, NextToken="forged")
    assert raised.value.response["Error"]["Code"] == "InvalidNextTokenException"


def test_prices_can_be_replaced_or_changed(aws: FakeAWS, tmp_path: Path) -> None:
    aws.set_price("g5.xlarge", 1.5)
    try:
        assert [_price(p) for p in _products(aws, _filters("g5.xlarge"))] == ["1.5000000000"]
    finally:
        aws.set_price("g5.xlarge", 1.006)
    with FakeAWS(root=tmp_path / "aws", prices={"g6.xlarge": 0.5}) as other:
        every = _products(other, [])
        assert {p["product"]["attributes"]["instanceType"] for p in every} == {"g6.xlarge"}
        assert [_price(p) for p in _products(other, _filters("g6.xlarge"))] == ["0.5000000000"]


# -- SSM ------------------------------------------------------------------------------------------


def test_public_parameters_are_answered_and_the_rest_is_moto(aws: FakeAWS) -> None:
    ssm = _client(aws, "ssm")
    name = PUBLIC_AMI_PARAMETERS[0]
    parameter = ssm.get_parameter(Name=name)["Parameter"]
    assert aws.requests[-1] == ("AmazonSSM.GetParameter", {"Name": name})
    assert {key: parameter[key] for key in ("Name", "Type", "Value", "Version", "DataType")} == {
        "Name": name,
        "Type": "String",
        "Value": aws.ami_id,
        "Version": 1,
        "DataType": "text",
    }
    assert parameter["ARN"] == f"arn:aws:ssm:us-east-1::parameter{name}"
    assert set(aws.public_parameters) == set(PUBLIC_AMI_PARAMETERS)

    ssm.put_parameter(Name="/skyward/test", Value="stored", Type="String", Overwrite=True)
    assert ssm.get_parameter(Name="/skyward/test")["Parameter"]["Value"] == "stored"
    both = ssm.get_parameters(Names=[PUBLIC_AMI_PARAMETERS[2], "/skyward/test", "/skyward/none"])
    assert {p["Name"]: p["Value"] for p in both["Parameters"]} == {
        PUBLIC_AMI_PARAMETERS[2]: aws.ami_id,
        "/skyward/test": "stored",
    }
    assert both["InvalidParameters"] == ["/skyward/none"]
    with pytest.raises(ClientError) as raised:
        ssm.get_parameter(Name="/aws/service/not/published")
    assert raised.value.response["Error"]["Code"] == "ParameterNotFound"
    assert [action for action, _ in aws.requests[-5:]] == [
        "AmazonSSM.GetParameter",
        "AmazonSSM.PutParameter",
        "AmazonSSM.GetParameter",
        "AmazonSSM.GetParameters",
        "AmazonSSM.GetParameter",
    ]


# -- EC2 and machines -----------------------------------------------------------------------------


def test_an_instance_is_a_machine_its_user_data_keys_open_and_terminate_ends(
    aws: FakeAWS, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]
) -> None:
    first = len(aws.requests)
    launched = _launch(aws, _user_data(keys))
    instance_id = launched["InstanceId"]
    octets = aws.ec2().describe_subnets(SubnetIds=[aws.subnet_id])["Subnets"][0]["CidrBlock"]
    assert launched["PrivateIpAddress"].startswith(octets.removesuffix("0/24"))
    assert "PublicIpAddress" not in launched
    action, params = aws.requests[first]
    assert action == "RunInstances"
    assert (params["InstanceType"], params["SubnetId"]) == ("g5.xlarge", aws.subnet_id)

    machine = _machine(aws, instance_id)
    assert (machine.addr, machine.port) == (launched["PrivateIpAddress"], 22)
    answer = _ssh(machine, keys, 'echo "$FAKE_EC2_INSTANCE_ID $HOME $(command -v shutdown)"')
    assert answer.exit_status == 0, answer.stderr
    shutdown = aws.root / instance_id / "bin" / "shutdown"
    assert str(answer.stdout).split() == [instance_id, str(machine.home), str(shutdown)]
    daemon = _daemon(machine, keys)
    assert instance_id in aws.live()

    _client(aws, "ec2").terminate_instances(InstanceIds=[instance_id])
    _ended(aws, instance_id, machine)
    # Killed with its machine; a loaded host may take a moment to deliver the SIGKILL.
    wait_until(lambda: not procs.is_running(daemon), "the daemon to end", timeout=30, every=0.05)
    assert instance_id not in aws.live()


def test_an_instance_without_keys_lets_nobody_in(
    aws: FakeAWS, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]
) -> None:
    for user_data in (None, "#!/bin/bash\necho not cloud-config"):
        instance_id = _launch(aws, user_data)["InstanceId"]
        machine = _machine(aws, instance_id)
        with pytest.raises(asyncssh.PermissionDenied):
            _ssh(machine, keys, "true", verify_host=False)
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            _ssh(machine, keys, "true")  # its host key is one of its own
        aws.ec2().terminate_instances(InstanceIds=[instance_id])
        _ended(aws, instance_id, machine)


def test_an_instance_off_loopback_gets_no_machine(aws: FakeAWS) -> None:
    launched = _client(aws, "ec2").run_instances(
        ImageId=aws.ami_id, InstanceType="m7i.large", MinCount=1, MaxCount=1
    )["Instances"][0]
    assert not launched["PrivateIpAddress"].startswith("127.")  # moto's default VPC
    time.sleep(0.3)  # several rounds of the hypervisor
    assert launched["InstanceId"] not in aws.machines
    assert launched["InstanceId"] in aws.live()
    aws.ec2().terminate_instances(InstanceIds=[launched["InstanceId"]])


def test_refused_capacity_is_aws_error_until_restored(aws: FakeAWS) -> None:
    before = aws.live()
    aws.refuse_capacity("g5.xlarge")
    try:
        with pytest.raises(ClientError) as raised:
            _launch(aws)
    finally:
        aws.restore_capacity("g5.xlarge")
    error = raised.value.response["Error"]
    assert error["Code"] == "InsufficientInstanceCapacity"
    assert error["Message"].startswith(
        "We currently do not have sufficient g5.xlarge capacity in the Availability Zone you "
        "requested (us-east-1"
    )
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert aws.requests[-1][0] == "RunInstances"
    assert aws.live() == before
    instance_id = _launch(aws, InstanceInitiatedShutdownBehavior="terminate")["InstanceId"]
    assert aws.live() == [*before, instance_id]
    aws.ec2().terminate_instances(InstanceIds=[instance_id])


def test_shutdown_inside_terminates_or_stops_as_the_instance_says(
    aws: FakeAWS, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]
) -> None:
    launched = {
        behaviour: _launch(aws, _user_data(keys), InstanceInitiatedShutdownBehavior=behaviour)[
            "InstanceId"
        ]
        for behaviour in ("terminate", "stop")
    }
    machines = {behaviour: _machine(aws, i) for behaviour, i in launched.items()}
    daemons = {behaviour: _daemon(machine, keys) for behaviour, machine in machines.items()}
    (machines["stop"].home / "kept").write_text("on the root volume")
    for behaviour, machine in machines.items():
        # The session may end with the machine before it reports: only the effect is checked.
        with contextlib.suppress(asyncssh.ConnectionLost):
            _ssh(machine, keys, "sudo shutdown -h now" if behaviour == "stop" else "poweroff")
    for behaviour, instance_id in launched.items():
        _ended(aws, instance_id, machines[behaviour])
        # The machine's sshd goes first; its other processes are being ended meanwhile.
        wait_until(
            lambda b=behaviour: not procs.is_running(daemons[b]),
            f"the {behaviour} machine's daemon to end",
            timeout=30,
            every=0.05,
        )
        assert ("POST /_fake/shutdown", {"instance": instance_id}) in aws.requests
    assert _state(aws, launched["terminate"]) == "terminated"
    assert _state(aws, launched["stop"]) == "stopped"
    assert launched["stop"] in aws.live()

    # Started again, it is the same machine: its host key, its keys, its home.
    aws.ec2().start_instances(InstanceIds=[launched["stop"]])
    again = _machine(aws, launched["stop"])
    assert again.home == machines["stop"].home
    answer = _ssh(again, keys, "cat ~/kept")
    assert (answer.exit_status, answer.stdout) == (0, "on the root volume")
    aws.ec2().terminate_instances(InstanceIds=[launched["stop"]])
    _ended(aws, launched["stop"], again)


def test_a_scheduled_shutdown_waits_and_can_be_cancelled(
    aws: FakeAWS, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]
) -> None:
    instance_id = _launch(aws, _user_data(keys))["InstanceId"]
    machine = _machine(aws, instance_id)
    scheduled = _ssh(machine, keys, "shutdown -h +5")
    assert scheduled.exit_status == 0, scheduled.stderr
    assert "Shutdown scheduled in 5 min" in str(scheduled.stdout)
    pending = aws.root / instance_id / "shutdown.pending"
    waiting = int(pending.read_text())
    assert procs.is_running(waiting)
    assert (instance_id in aws.machines, _state(aws, instance_id)) == (True, "running")
    assert _ssh(machine, keys, "sudo -n shutdown -c").exit_status == 0
    wait_until(
        lambda: not procs.is_running(waiting), "the cancelled shutdown", timeout=30, every=0.05
    )
    refused = _ssh(machine, keys, "shutdown -r now")
    assert (refused.exit_status, instance_id in aws.machines) == (1, True)
    assert "does not support -r" in str(refused.stderr)
    aws.ec2().terminate_instances(InstanceIds=[instance_id])
    _ended(aws, instance_id, machine)


def test_preempt_kills_the_machine_at_once(
    aws: FakeAWS, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]
) -> None:
    instance_id = _launch(aws, _user_data(keys), InstanceMarketOptions={"MarketType": "spot"})[
        "InstanceId"
    ]
    machine = _machine(aws, instance_id)
    daemon = _daemon(machine, keys)
    aws.preempt(instance_id)
    # Ended when preempt returns.
    assert not procs.is_running(machine.pid)
    assert not procs.is_running(daemon)
    assert instance_id not in aws.machines
    assert _state(aws, instance_id) == "terminated"
    with pytest.raises(ClientError):
        aws.preempt("i-00000000000000000")


def test_a_machine_starts_start_delay_after_running(
    aws: FakeAWS, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]
) -> None:
    aws.start_delay = 2.0
    try:
        instance_id = _launch(aws, _user_data(keys))["InstanceId"]
        assert _state(aws, instance_id) == "running"
        time.sleep(0.5)
        assert instance_id not in aws.machines
        machine = _machine(aws, instance_id)
    finally:
        aws.start_delay = 0.0
    assert _ssh(machine, keys, "true").exit_status == 0
    aws.ec2().terminate_instances(InstanceIds=[instance_id])
    _ended(aws, instance_id, machine)


def test_leaving_a_fake_with_errors_raises(tmp_path: Path) -> None:
    fake = FakeAWS(root=tmp_path / "aws")
    with pytest.raises(AssertionError, match="the fake AWS failed:\nsomething broke"), fake:
        fake.errors.append("something broke")


@pytest.mark.usefixtures("aws")  # root, as the machines' port 22 needs
def test_a_machine_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    with FakeAWS(root=tmp_path / "aws") as fake:
        fake.start_delay = 600
        launched = _launch(fake)
        address = launched["PrivateIpAddress"]
        with socket.socket() as squatter:  # as a host's sshd on 0.0.0.0:22 would
            squatter.bind((address, 22))
            squatter.listen()
            fake.start_delay = 0
            wait_until(lambda: fake.errors, "the fake's error", timeout=30, every=0.05)
        assert launched["InstanceId"] not in fake.machines
        errors, fake.errors[:] = list(fake.errors), []  # seen here: leaving would raise them
    [error] = errors
    assert error.startswith(
        f"instance {launched['InstanceId']}: its machine at {address}:22 did not start: "
        f"port 22 on {address} cannot be bound ("
    )


# -- each machine's instance metadata service ----------------------------------------------------

# Run on a machine: read IMDS (at AWS_EC2_METADATA_SERVICE_ENDPOINT) as its argument says,
# print the endpoint, then one line per read: "status body".
_IMDS_READ = """
import os, sys, urllib.error, urllib.request
base = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def read(method, path, headers):
    request = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
print(base)
action = "/latest/meta-data/spot/instance-action"
print(*read("GET", action, {}))
status, token = read("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
print(status, "token" if token else "")
print(*read("PUT", "/latest/api/token", {}))
for path in ("/latest/meta-data/instance-id", action):
    print(*read("GET", path, {"X-aws-ec2-metadata-token": token}))
"""


def _imds(machine: Machine, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]) -> list[str]:
    done = _ssh(machine, keys, f"python3 -c {shlex.quote(_IMDS_READ)}")
    assert done.exit_status == 0, done.stderr
    return str(done.stdout).splitlines()


def test_each_machine_has_its_own_imds_with_tokens_and_warn_schedules_its_notice(
    aws: FakeAWS, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]
) -> None:
    spot = {"InstanceMarketOptions": {"MarketType": "spot"}}
    first = _launch(aws, _user_data(keys), **spot)["InstanceId"]
    second = _launch(aws, _user_data(keys), **spot)["InstanceId"]
    machines = {i: _machine(aws, i) for i in (first, second)}
    before = {i: _imds(m, keys) for i, m in machines.items()}
    for instance_id, lines in before.items():
        endpoint, no_token, token, no_ttl, my_id, action = lines
        # On the machine's own address, a free port: loopback only.
        assert endpoint.startswith(f"http://{machines[instance_id].addr}:")
        assert (no_token, token, no_ttl) == ("401 ", "200 token", "400 ")
        assert my_id == f"200 {instance_id}"
        assert action == "404 "  # no interruption scheduled
    assert before[first][0] != before[second][0]

    now = time.time()
    aws.warn(first, seconds=90, action="hibernate")
    status, body = _imds(machines[first], keys)[-1].split(" ", 1)
    assert status == "200"
    notice = json.loads(body)
    assert notice["action"] == "hibernate"
    at = calendar.timegm(time.strptime(notice["time"], "%Y-%m-%dT%H:%M:%SZ"))
    assert now + 88 <= at <= time.time() + 91
    assert _imds(machines[second], keys)[-1] == "404 "  # the other one is not warned

    with pytest.raises(ValueError, match=r"action: expected one of .*got 'reboot'"):
        aws.warn(second, action="reboot")
    aws.preempt(first)
    assert ("GET", "/latest/meta-data/spot/instance-action", 200) in aws.metadata_requests[first]
    with pytest.raises(ValueError, match=f"instance {first} has no machine"):
        aws.warn(first)
    # Its IMDS ended with it.
    host, port = before[first][0].removeprefix("http://").rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), 5):
        pass
