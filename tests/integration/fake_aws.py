"""A fake AWS for the tests of ``sky.AWS``, whose EC2 instances are real sshd "machines".

``sky.AWS`` cannot reach AWS from the tests, so it is tested against this. moto, in this
process, holds the state of EC2 and SSM. In front of it, a server on 127.0.0.1 (where every
boto3 client of a test points its ``endpoint_url``) answers what moto lacks or cannot do: the
Pricing API's ``GetProducts``, SSM's public parameters under ``/aws/service`` (the AMI ids),
and a ``RunInstances`` refused for capacity or quota. It forwards the rest to moto byte for
byte, and records every request.

At start the fake makes a VPC ``127.K.0.0/16`` and a subnet ``127.K.0.0/24`` (K random):
moto gives the instances launched there private addresses on loopback, and no public one.
A hypervisor thread gives each running instance of that VPC a machine: a private ``sshd``
(``sshd.start_sshd``) on the instance's private address, port 22, set up as cloud-init sets
up an Ubuntu AMI from the instance's user data (``#cloud-config`` and one JSON object): its
host key is ``ssh_keys.ed25519_private`` and its authorized keys are
``ssh_authorized_keys``. Without them nobody logs in, as on AWS. Its sessions are those of
the user running the tests (root in CI): no other user (``ubuntu``) is made, so a client logs
in as that one (``sky.AWS(username="root")``).

A machine's ``shutdown`` (and ``poweroff``, and a ``sudo`` that keeps the session's PATH so
that ``sudo shutdown`` is this one, never the host's) asks the fake to shut the instance
down: EC2 then stops or terminates it, as its ``InstanceInitiatedShutdownBehavior`` says.
When an instance stops running (terminated, stopped, preempted), every process of its
machine ends, by pid: its sshd, their descendants and any process whose environment holds
its ``FAKE_EC2_INSTANCE_ID``. A stopped instance that starts again gets its machine back,
home included, as an EBS root volume survives a stop.

Each machine has its own instance metadata service (IMDS), as an EC2 instance does: an HTTP
server on the machine's private address (a free port), which its sessions find at
``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (sshd's ``SetEnv``; botocore's name for it). It is
IMDSv2 with tokens required: ``PUT /latest/api/token`` (with
``X-aws-ec2-metadata-token-ttl-seconds``) gives a token, and every ``GET`` without a valid
``X-aws-ec2-metadata-token`` is answered 401. It answers ``meta-data/instance-id`` and
``meta-data/spot/instance-action``: 404 until ``FakeAWS.warn`` schedules the instance's
interruption, then ``{"action": ..., "time": ...}``, as EC2 does two minutes before it
reclaims a spot instance; and ``meta-data/events/recommendations/rebalance``: 404 until
``FakeAWS.recommend_rebalance``, then ``{"noticeTime": ...}``. Nothing here ever contacts
EC2's real IMDS (169.254.169.254).

moto's state is one per process: the first fake entered resets it; a fake entered while
another runs shares it (each hypervisor watches only its own VPC).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import boto3
import pytest
import sshd
from botocore.exceptions import ClientError
from fake_cloud import FakeCloud, FakeHandler, _write_secret
from moto.server import ThreadedMotoServer
from needs import unavailable
from sshd import Machine

DEFAULT_PRICES: Mapping[str, float] = {  # USD per hour, us-east-1, Linux, on demand
    "g4dn.xlarge": 0.526,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.12xlarge": 5.672,
    "g6.xlarge": 0.8048,
    "g6e.xlarge": 1.861,
    "p4d.24xlarge": 21.9576,
    "p4de.24xlarge": 27.447,
    "p5.48xlarge": 55.04,
    "m7i.large": 0.1008,
    "m7i.xlarge": 0.2016,
    "m7i.2xlarge": 0.4032,
    "c7i.large": 0.0893,
    "c7i.xlarge": 0.1785,
    "m7g.large": 0.0816,
}

PUBLIC_AMI_PARAMETERS = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
    "/aws/service/deeplearning/ami/arm64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/arm64/hvm/ebs-gp2/ami-id",
)

REGION = "us-east-1"
TICK = 0.05  # how often the hypervisor looks at the instances, in seconds
ON_DEMAND = "JRTCKXETXF"  # AWS's offer term code of on-demand prices
PER_HOUR = "6YS6EN2CT7"  # AWS's rate code of an on-demand hourly price
PUBLISHED = 1793491200.0  # 2026-11-01T00:00:00Z: when the public parameters "changed"
SPOT_ACTIONS = ("terminate", "stop", "hibernate")  # what a spot interruption does

# The Linux on-demand product of a type, and the decoys beside it that a request missing one
# filter would wrongly match: (attributes changed, price factor). Decoy prices differ, so a
# missing filter shows in the price too (a capacity reservation costs what AWS charges).
_LINUX = {
    "regionCode": REGION,
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
}
_VARIANTS: tuple[tuple[dict[str, str], float], ...] = (
    ({}, 1.0),
    ({"operatingSystem": "Windows"}, 2.0),
    ({"tenancy": "Dedicated"}, 1.1),
    ({"capacitystatus": "UnusedCapacityReservation"}, 1.0),
    ({"preInstalledSw": "SQL Std"}, 1.5),
    ({"regionCode": "eu-west-1"}, 1.2),
)
_LOCATIONS = {"us-east-1": "US East (N. Virginia)", "eu-west-1": "EU (Ireland)"}
_FILTER_TYPES = ("TERM_MATCH", "EQUALS", "ANY_OF", "NONE_OF", "CONTAINS")

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}

# The machine's shutdown and poweroff (one script; its name says which).
SHUTDOWN = '''#!{python}
"""shutdown of a fake EC2 machine: the OS shuts down, so EC2 stops or terminates the
instance. As systemd's: `shutdown [-h|-P|--poweroff] [--no-wall] [now|+MINUTES] [WALL...]`
(no time means +1), `shutdown -c` cancels a scheduled one; `poweroff` is `shutdown now`."""
import os
import signal
import sys
import time
import urllib.request

URL = {url!r}
PENDING = {pending!r}  # the pid of the process that waits for a scheduled shutdown
OPTIONS = {{"-h", "-P", "--poweroff", "--no-wall", "-c"}}


def shut_down():
    request = urllib.request.Request(URL, data=b"", method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))  # loopback only
    try:
        with opener.open(request, timeout=30) as response:
            response.read()
    except OSError as error:
        print(f"shutdown: {{error}}", file=sys.stderr)
        return 1
    return 0


def cancel():
    try:
        with open(PENDING) as file:
            pid = int(file.read())
        os.remove(PENDING)
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass  # nothing scheduled, or it has shut down already


def main(name, argv):
    if name == "poweroff":
        return shut_down()
    unknown = [arg for arg in argv if arg.startswith("-") and arg not in OPTIONS]
    if unknown:
        print(f"shutdown: this machine's shutdown does not support {{unknown[0]}}", file=sys.stderr)
        return 1
    if "-c" in argv:
        cancel()
        return 0
    words = [arg for arg in argv if not arg.startswith("-")]
    when = words[0] if words else "+1"
    if when == "now":
        minutes = 0
    elif when.startswith("+") and when[1:].isdigit():
        minutes = int(when[1:])
    else:
        print(f"shutdown: expected now or +MINUTES, got {{when!r}}", file=sys.stderr)
        return 1
    cancel()  # a new shutdown replaces the scheduled one
    if minutes == 0:
        return shut_down()
    child = os.fork()
    if child:
        with open(PENDING, "w") as file:
            file.write(str(child))
        print(f"Shutdown scheduled in {{minutes}} min, use 'shutdown -c' to cancel.")
        return 0
    os.setsid()  # the session that asked may end; the wait goes on, as systemd's would
    quiet = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(quiet, fd)
    time.sleep(minutes * 60)
    os._exit(shut_down())


sys.exit(main(os.path.basename(sys.argv[0]), sys.argv[1:]))
'''

# The machine's sudo: its user is root already. The host's sudo would reset PATH and run the
# host's shutdown; this one keeps the session's PATH, where the machine's shutdown comes first.
SUDO = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    -n|-E|-H) shift ;;
    --) shift; break ;;
    -*) echo "sudo: this machine's sudo does not support $1" >&2; exit 1 ;;
    *) break ;;
  esac
done
exec "$@"
"""

_octets_lock = threading.Lock()
_octets_in_use: set[int] = set()  # the K of each fake entered: their subnets never overlap


#: What boto3 signs with against the fake (moto takes any credentials; boto3 wants some).
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-0123456789",
    # boto3 must never ask the instance metadata service (not loopback) for anything.
    "AWS_EC2_METADATA_DISABLED": "true",
}


def need_fake_aws() -> None:
    """Skip where the fake's machines cannot run (under CI, fail): without sshd, or not as
    root (they listen on port 22 and take the test user only)."""
    sshd.need_sshd()
    if os.getuid() != 0:
        unavailable(
            "the fake AWS's machines listen on port 22 and log in as root: run the tests as root",
            suite="sky.AWS",
        )


@attrs.frozen
class _Reply:
    """An answer of the front server; ``forwarded`` ones carry moto's headers as they came."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    forwarded: bool = False
    then: Callable[[], None] | None = None  # run once the answer is sent


class FakeAWS(FakeCloud):
    """EC2, SSM and the Pricing API at ``endpoint_url``, with sshd machines for instances.

    Use it as a context manager; leaving it ends every machine (by pid) and stops both
    servers. A failure inside the fake (a request it could not answer, a machine that did not
    start, processes that survived) is kept in ``errors``; leaving then raises, so it cannot
    pass unseen (``fake_cloud.FakeCloud``).
    """

    title = "the fake AWS"
    region = REGION

    def __init__(self, root: Path, *, prices: Mapping[str, float] | None = None) -> None:
        """``prices``: USD per hour of each instance type (us-east-1, Linux, on demand),
        instead of ``DEFAULT_PRICES``."""
        # Reentrant: a request and the hypervisor each take it again inside their steps.
        super().__init__(root, lock=threading.RLock())
        self.prices: dict[str, float] = dict(DEFAULT_PRICES if prices is None else prices)
        self.start_delay = 0.0  # seconds from "running" in moto to the machine's start
        self.public_parameters: dict[str, str] = {}  # SSM names under /aws/ -> value
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.machines: dict[str, Machine] = {}  # live machines by instance id
        self.endpoint_url = ""
        self.vpc_id = ""
        self.subnet_id = ""
        self.ami_id = ""
        # Instance types whose RunInstances is refused, and AWS's error code for it.
        self.refused: dict[str, str] = {}
        self._ending: Counter[str] = Counter()  # instances whose machine is being ended
        self._changes = 0  # claims so far: a hypervisor round that saw fewer starts nothing
        self._since: dict[str, float] = {}  # when the hypervisor first saw each one running
        self._failed: set[str] = set()  # instances whose machine could not start
        self._homes: dict[str, Path] = {}  # kept across a stop and start, as a root volume
        self._specs: dict[str, dict[str, str]] = {}  # vcpu, memory, gpu of each type
        self._octet = 0
        self._zone = ""
        self._moto_server: ThreadedMotoServer | None = None
        self._moto_address = ("", 0)
        self._moto: Any = None  # a boto3 EC2 client on moto itself
        self._metadata: dict[str, _MetadataServer] = {}  # each machine's IMDS
        # spot/instance-action of the instances FakeAWS.warn was told of
        self._notices: dict[str, dict[str, str]] = {}
        # events/recommendations/rebalance of those FakeAWS.recommend_rebalance was told of
        self._rebalances: dict[str, dict[str, str]] = {}
        #: Placement groups (moto has none): name -> strategy, and the instances launched
        #: into each. EC2 refuses a launch into an unknown group, and deleting a group
        #: while an instance in it is not terminated.
        self.placement_groups: dict[str, str] = {}
        self.placement_members: dict[str, list[str]] = {}
        #: IMDS requests answered, per instance: (method, path, status).
        self.metadata_requests: dict[str, list[tuple[str, str, int]]] = {}

    def _open(self) -> None:
        with _octets_lock:
            first = not _octets_in_use
            self._octet = secrets.choice(sorted(set(range(16, 251)) - _octets_in_use))
            _octets_in_use.add(self._octet)
        self._start(reset=first)

    def _start(self, *, reset: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # werkzeug (moto's server) writes a line per request to stderr otherwise.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        self._moto_server = moto  # stopped by _close once started, not before
        self._moto_address = moto.get_host_and_port()
        if reset:  # what an earlier fake of this process left in moto is not this one's
            _post(f"{self._moto_url}/moto-api/reset")
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self._moto = session.client("ec2", endpoint_url=self._moto_url)
        k = self._octet
        self.vpc_id = self._moto.create_vpc(CidrBlock=f"127.{k}.0.0/16")["Vpc"]["VpcId"]
        subnet = self._moto.create_subnet(VpcId=self.vpc_id, CidrBlock=f"127.{k}.0.0/24")
        self.subnet_id = subnet["Subnet"]["SubnetId"]
        self._zone = subnet["Subnet"]["AvailabilityZone"]
        self.ami_id = self._moto.register_image(
            Name="fake-dlami",
            RootDeviceName="/dev/sda1",
            Architecture="x86_64",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 75}}],
        )["ImageId"]
        for name in PUBLIC_AMI_PARAMETERS:
            self.public_parameters.setdefault(name, self.ami_id)
        self.endpoint_url = self._listen(self._serve, "fake-aws")
        self._threads.append(
            threading.Thread(target=self._watch, name="fake-aws-hypervisor", daemon=True)
        )

    def _busy(self) -> str | None:
        # A machine that asked to shut down may still be ending.
        return f"machines {sorted(self._ending)} were still ending" if self._ending else None

    def _end_all(self) -> None:
        for instance_id in list(self.machines):
            with self._claimed(instance_id) as machine:
                pass
            self._end(instance_id, machine, abrupt=False)

    def _machine_homes(self) -> Iterable[tuple[str, Path]]:
        return list(self._homes.items())

    def _release(self) -> None:
        """Stop moto (once started), any IMDS left, and free the fake's loopback block."""
        for instance_id in list(self._metadata):
            self._stop_metadata(instance_id)
        if self._moto_server is not None:
            if self._moto is not None:
                self._moto.close()
            self._moto_server.stop()
            # stop() leaves the listening socket open; closed here, or it leaks a warning.
            if self._moto_server._server is not None:
                self._moto_server._server.server_close()
        self._homes.clear()
        with _octets_lock:
            _octets_in_use.discard(self._octet)

    @property
    def _moto_url(self) -> str:
        host, port = self._moto_address
        return f"http://{host}:{port}"

    # -- what tests do to it ------------------------------------------------------------------

    def ec2(self) -> Any:
        """A boto3 EC2 client on moto itself, for a test's assertions: its requests are not
        in ``requests`` and nothing refuses them."""
        return self._moto

    def live(self) -> list[str]:
        """The ids of the instances moto has not terminated, in launch order."""
        return [
            instance["InstanceId"]
            for instance in self._instances()
            if instance["State"]["Name"] != "terminated"
        ]

    def set_price(self, instance_type: str, usd_per_hour: float) -> None:
        """Change (or add) the on-demand price of ``instance_type``; its decoys follow."""
        with self._lock:
            self.prices[instance_type] = usd_per_hour

    def refuse_capacity(self, instance_type: str) -> None:
        """Make every ``RunInstances`` of ``instance_type`` fail as AWS's do when a zone has
        none left (``InsufficientInstanceCapacity``), until ``restore_capacity``."""
        with self._lock:
            self.refused[instance_type] = "InsufficientInstanceCapacity"

    def refuse_quota(self, instance_type: str) -> None:
        """Make every ``RunInstances`` of ``instance_type`` fail as AWS's do when the account's
        vCPU quota for its family is used up (``VcpuLimitExceeded``; 0 on a new account),
        until ``restore_capacity``."""
        with self._lock:
            self.refused[instance_type] = "VcpuLimitExceeded"

    def restore_capacity(self, instance_type: str) -> None:
        with self._lock:
            self.refused.pop(instance_type, None)

    def warn(self, instance_id: str, seconds: float = 120, action: str = "terminate") -> None:
        """Schedule the instance's interruption as EC2 announces a spot instance's: from now
        on its machine's IMDS answers ``spot/instance-action`` with ``action`` at ``seconds``
        from now. Nothing else happens: the interruption itself is ``preempt``'s."""
        if action not in SPOT_ACTIONS:
            raise ValueError(f"action: expected one of {SPOT_ACTIONS}, got {action!r}")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
        with self._lock:
            if instance_id not in self.machines:
                raise ValueError(f"instance {instance_id} has no machine: it is not running")
            self._notices[instance_id] = {"action": action, "time": when}

    def recommend_rebalance(self, instance_id: str) -> None:
        """Recommend rebalancing the instance, as EC2 does for a spot instance at elevated
        risk of interruption: from now on its machine's IMDS answers
        ``events/recommendations/rebalance`` with the time of the recommendation."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            if instance_id not in self.machines:
                raise ValueError(f"instance {instance_id} has no machine: it is not running")
            self._rebalances[instance_id] = {"noticeTime": when}

    def preempt(self, instance_id: str) -> None:
        """Interrupt the instance as AWS interrupts a spot instance, with no notice: it is
        terminated, and every process of its machine is killed at once."""
        with self._claimed(instance_id) as machine:
            self._moto.terminate_instances(InstanceIds=[instance_id])
        self._end(instance_id, machine, abrupt=True)

    # -- the front server ----------------------------------------------------------------------

    def _serve(self, handler: FakeHandler) -> None:
        url = urllib.parse.urlsplit(handler.path)
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            _send(handler, _json_reply(411, {"message": "the fake AWS needs a Content-Length"}))
            return
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        target = handler.headers.get("X-Amz-Target", "")
        action, params = _what(handler, url, target, raw)
        with self._lock:
            self.requests.append((action, params))
        try:
            reply = self._answer(handler, url, target, action, params, raw)
        except Exception as error:  # answered 500, and raised when the fake is left
            message = f"{action}: {type(error).__name__}: {error}"
            self._error(message)
            reply = _aws_error(500, "InternalFailure", f"the fake AWS failed: {message}")
        try:
            _send(handler, reply)
        finally:  # a machine that asked to shut down ends, even if it hung up
            if reply.then is not None:
                reply.then()

    def _answer(
        self,
        handler: FakeHandler,
        url: urllib.parse.SplitResult,
        target: str,
        action: str,
        params: dict[str, Any],
        raw: bytes,
    ) -> _Reply:
        if url.path == "/_fake/shutdown" and handler.command == "POST":
            return self._shutdown(params.get("instance", ""))
        if target == "AWSPriceListService.GetProducts":
            return self._get_products(params)
        if target.startswith("AWSPriceListService."):
            message = f"the fake AWS answers only GetProducts of the Pricing API, not {target}"
            return _aws_error(400, "UnknownOperationException", message)
        if target == "AmazonSSM.GetParameter" and params.get("Name") in self.public_parameters:
            return _json_reply(200, {"Parameter": self._parameter(params["Name"])})
        if target == "AmazonSSM.GetParameters" and _is_names(params.get("Names")):
            return self._get_parameters(handler, params)
        if action == "RunInstances" and params.get("InstanceType") in self.refused:
            return self._refusal(params, self.refused[params["InstanceType"]])
        if action in _PLACEMENT_ACTIONS:
            return self._placement(action, params)
        group = params.get("Placement.GroupName") if action == "RunInstances" else None
        if group is not None:
            with self._lock:
                known = group in self.placement_groups
            if not known:
                return _unknown_group(group)
            reply = self._forward(handler, raw)
            launched = re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", reply.body.decode())
            with self._lock:
                self.placement_members[group].extend(launched)
            return reply
        return self._forward(handler, raw)

    def _placement(self, action: str, params: dict[str, Any]) -> _Reply:
        """CreatePlacementGroup, DescribePlacementGroups and DeletePlacementGroup, as EC2
        answers them (moto has no placement groups)."""
        name = params.get("GroupName") or params.get("GroupName.1", "")
        with self._lock:
            if action == "CreatePlacementGroup":
                strategy = params.get("Strategy", "")
                if strategy not in ("cluster", "spread", "partition"):
                    return _ec2_error(400, "InvalidParameterValue", f"bad Strategy {strategy!r}")
                if name in self.placement_groups:
                    message = f"The Placement Group '{name}' already exists."
                    return _ec2_error(400, "InvalidPlacementGroup.Duplicate", message)
                self.placement_groups[name] = strategy
                self.placement_members[name] = []
                return _ec2_reply("CreatePlacementGroupResponse", "<return>true</return>")
            if name and name not in self.placement_groups:
                return _unknown_group(name)
            if action == "DescribePlacementGroups":
                names = [name] if name else sorted(self.placement_groups)
                items = "".join(
                    f"<item><groupName>{n}</groupName><strategy>{self.placement_groups[n]}"
                    "</strategy><state>available</state></item>"
                    for n in names
                )
                inner = f"<placementGroupSet>{items}</placementGroupSet>"
                return _ec2_reply("DescribePlacementGroupsResponse", inner)
            members = list(self.placement_members[name])
        states = {i: self._state_of(i) for i in members}
        if any(state != "terminated" for state in states.values()):
            return _ec2_error(
                400, "InvalidPlacementGroup.InUse", f"The placement group '{name}' is in use."
            )
        with self._lock:
            self.placement_groups.pop(name, None)
            self.placement_members.pop(name, None)
        return _ec2_reply("DeletePlacementGroupResponse", "<return>true</return>")

    def _state_of(self, instance_id: str) -> str:
        answer = self._moto.describe_instances(InstanceIds=[instance_id])
        return str(answer["Reservations"][0]["Instances"][0]["State"]["Name"])

    def _forward(self, handler: FakeHandler, raw: bytes) -> _Reply:
        """The request, sent to moto as it came (``raw`` may be a rewritten body)."""
        connection = http.client.HTTPConnection(*self._moto_address, timeout=60)
        try:
            connection.putrequest(
                handler.command, handler.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in handler.headers.items():
                if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                    connection.putheader(name, value)
            if raw or "Content-Length" in handler.headers:
                connection.putheader("Content-Length", str(len(raw)))
            connection.endheaders(raw)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        headers = tuple(
            (name, value)
            for name, value in response.getheaders()
            if name.lower() not in _HOP_BY_HOP | {"content-length"}
        )
        return _Reply(response.status, body, headers, forwarded=True)

    # -- Pricing ------------------------------------------------------------------------------

    def _get_products(self, request: dict[str, Any]) -> _Reply:
        """GetProducts as AWS answers it: the products whose attributes match every filter,
        one JSON string each, ``MaxResults`` at a time."""
        service = request.get("ServiceCode")
        if service != "AmazonEC2":
            message = f"ServiceCode: the fake AWS prices only AmazonEC2, got {service!r}"
            return _aws_error(400, "InvalidParameterException", message)
        version = request.get("FormatVersion", "aws_v1")
        if version != "aws_v1":
            message = f"FormatVersion: expected aws_v1, got {version!r}"
            return _aws_error(400, "InvalidParameterException", message)
        filters = request.get("Filters", [])
        problem = _filters_problem(filters)
        if problem is not None:
            return _aws_error(400, "InvalidParameterException", problem)
        size = request.get("MaxResults", 100)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 100:
            message = f"MaxResults: expected 1 to 100, got {size!r}"
            return _aws_error(400, "InvalidParameterException", message)
        start = _offset(request.get("NextToken"))
        if start is None:
            message = f"NextToken: not a token this fake gave: {request.get('NextToken')!r}"
            return _aws_error(400, "InvalidNextTokenException", message)
        found = [p for p in self._products() if _matches(p["product"]["attributes"], filters)]
        answer: dict[str, Any] = {
            "FormatVersion": "aws_v1",
            "PriceList": [json.dumps(product) for product in found[start : start + size]],
        }
        if start + size < len(found):
            answer["NextToken"] = _token(start + size)
        return _json_reply(200, answer)

    def _products(self) -> list[dict[str, Any]]:
        with self._lock:
            prices = list(self.prices.items())
        return [
            _product(instance_type, price, self._spec(instance_type), changes, factor)
            for instance_type, price in prices
            for changes, factor in _VARIANTS
        ]

    def _spec(self, instance_type: str) -> dict[str, str]:
        """vcpu, memory and gpu attributes of a type, from moto's (AWS's) instance types;
        none for a type moto does not know."""
        with self._lock:
            known = self._specs.get(instance_type)
        if known is not None:
            return known
        try:
            found = self._moto.describe_instance_types(InstanceTypes=[instance_type])
        except ClientError:
            found = {"InstanceTypes": []}
        spec: dict[str, str] = {}
        for info in found["InstanceTypes"]:
            spec["vcpu"] = str(info["VCpuInfo"]["DefaultVCpus"])
            gib = info["MemoryInfo"]["SizeInMiB"] / 1024
            spec["memory"] = f"{int(gib):,} GiB" if gib.is_integer() else f"{gib:g} GiB"
            gpus = sum(gpu["Count"] for gpu in info.get("GpuInfo", {}).get("Gpus", []))
            if gpus:
                spec["gpu"] = str(gpus)
        with self._lock:
            self._specs[instance_type] = spec
        return spec

    # -- SSM ----------------------------------------------------------------------------------

    def _parameter(self, name: str) -> dict[str, Any]:
        return {
            "Name": name,
            "Type": "String",
            "Value": self.public_parameters[name],
            "Version": 1,
            "LastModifiedDate": PUBLISHED,
            "ARN": f"arn:aws:ssm:{REGION}::parameter{name}",
            "DataType": "text",
        }

    def _get_parameters(self, handler: FakeHandler, request: dict[str, Any]) -> _Reply:
        """The public names answered here, the others by moto (asked for those only)."""
        names: list[str] = request["Names"]
        public = [name for name in names if name in self.public_parameters]
        if not public:
            return self._forward(handler, json.dumps(request).encode())
        answer: dict[str, Any] = {
            "Parameters": [self._parameter(name) for name in public],
            "InvalidParameters": [],
        }
        rest = [name for name in names if name not in self.public_parameters]
        if rest:
            moto = self._forward(handler, json.dumps(request | {"Names": rest}).encode())
            if moto.status != 200:
                return moto
            theirs = json.loads(moto.body)
            answer["Parameters"] += theirs.get("Parameters", [])
            answer["InvalidParameters"] += theirs.get("InvalidParameters", [])
        return _json_reply(200, answer)

    # -- EC2 ----------------------------------------------------------------------------------

    def _refusal(self, params: dict[str, Any], code: str) -> _Reply:
        """AWS's answer to a launch refused with ``code``: a server error (500) for no
        capacity, a client error (400) for a quota."""
        zone = params.get("Placement.AvailabilityZone") or self._zone
        status = 500 if code == "InsufficientInstanceCapacity" else 400
        message = (
            f"We currently do not have sufficient {params['InstanceType']} capacity in the "
            f"Availability Zone you requested ({zone}). Our system will be working on "
            "provisioning additional capacity."
            if status == 500
            else "You have requested more vCPU capacity than your current vCPU limit of 0 "
            "allows for the instance bucket that the specified instance type belongs to. "
            "Please visit http://aws.amazon.com/contact-us/ec2-request to request an "
            "adjustment to this limit."
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
            f"<Code>{code}</Code><Message>{message}</Message>"
            f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
        )
        return _Reply(status, body.encode(), (("Content-Type", "text/xml;charset=UTF-8"),))

    def _shutdown(self, instance_id: str) -> _Reply:
        """A machine's OS shut down: EC2 stops or terminates its instance. The machine ends
        once this is answered, or the answer would die with the process that asked."""
        with self._lock:
            if instance_id not in self.machines:
                return _json_reply(404, {"message": f"no machine for {instance_id!r}"})
            with self._claimed(instance_id) as machine:
                behaviour = self._moto.describe_instance_attribute(
                    InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
                )["InstanceInitiatedShutdownBehavior"]["Value"]
                if behaviour == "terminate":
                    self._moto.terminate_instances(InstanceIds=[instance_id])
                else:
                    self._moto.stop_instances(InstanceIds=[instance_id])
        return _json_reply(
            200,
            {"instance": instance_id, "behaviour": behaviour},
            then=lambda: self._end(instance_id, machine, abrupt=False),
        )

    # -- the hypervisor -------------------------------------------------------------------------

    def _instances(self, filters: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        pages = self._moto.get_paginator("describe_instances").paginate(Filters=filters or [])
        return [
            instance
            for page in pages
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
        ]

    def _watch(self) -> None:
        while not self._stopping.wait(TICK):
            try:
                self._round()
            except Exception as error:  # kept, and raised when the fake is left
                self._error(f"hypervisor: {type(error).__name__}: {error}")

    def _round(self) -> None:
        """End the machines of instances no longer running; start those of instances
        running (for ``start_delay``) on a loopback address."""
        with self._lock:
            seen = self._changes
        instances = self._instances([{"Name": "vpc-id", "Values": [self.vpc_id]}])
        states = {instance["InstanceId"]: instance["State"]["Name"] for instance in instances}
        for instance_id in list(self.machines):
            if states.get(instance_id) != "running":
                with self._claimed(instance_id) as machine:
                    pass
                self._end(instance_id, machine, abrupt=False)
        now = time.monotonic()
        for instance in instances:
            instance_id = instance["InstanceId"]
            if states[instance_id] != "running":
                self._since.pop(instance_id, None)
                continue
            address = instance.get("PrivateIpAddress")
            if not address or not ipaddress.ip_address(address).is_loopback:
                continue  # never a machine, and never contacted: it is not on this host
            if now - self._since.setdefault(instance_id, now) >= self.start_delay:
                self._boot(instance_id, address, seen)

    def _boot(self, instance_id: str, address: str, seen: int) -> None:
        # Under the lock, sshd start included: nothing claims the instance meanwhile, and a
        # claim since this round's look at moto (``seen``) means that look is stale.
        with self._lock:
            if (
                seen != self._changes
                or self._stopping.is_set()
                or instance_id in self.machines
                or instance_id in self._ending
                or instance_id in self._failed
            ):
                return
            try:
                self.machines[instance_id] = self._start_machine(instance_id, address)
            except (Exception, pytest.fail.Exception) as error:  # start_sshd fails a test
                self._failed.add(instance_id)
                where = f"instance {instance_id}: its machine at {address}:22"
                self._error(f"{where} did not start: {error}")

    def _start_machine(self, instance_id: str, address: str) -> Machine:
        directory = self.root / instance_id
        bin_dir = directory / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        url = f"{self.endpoint_url}/_fake/shutdown?instance={instance_id}"
        shutdown = SHUTDOWN.format(
            python=sys.executable, url=url, pending=str(directory / "shutdown.pending")
        )
        for name, text in (("shutdown", shutdown), ("poweroff", shutdown), ("sudo", SUDO)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        config, note = self._cloud_config(instance_id)
        keys = config.get("ssh_keys")
        private = keys.get("ed25519_private") if isinstance(keys, dict) else None
        if isinstance(private, str) and private.strip():
            _write_secret(directory / "host_ed25519", private)  # start_sshd keeps it
            note += "; host key: ssh_keys.ed25519_private"
        authorized = config.get("ssh_authorized_keys")
        lines = [key for key in authorized if isinstance(key, str)] if authorized else []
        (directory / "authorized_keys").write_text("".join(f"{line}\n" for line in lines))
        (directory / "cloud-init.log").write_text(f"{note}; {len(lines)} authorized keys\n")
        with socket.socket() as probe:  # sshd would say only that it did not start
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, 22))
            except OSError as error:
                raise RuntimeError(
                    f"port 22 on {address} cannot be bound ({error}): does something listen "
                    "on 0.0.0.0:22 (the host's sshd)? Run the tests where port 22 is free."
                ) from None
        # A short home, as /home/ubuntu: a worker's socket lives under it, and a unix
        # socket's path holds 107 bytes, which a home under a test's directory would exceed.
        home = self._homes.get(instance_id) or Path(tempfile.mkdtemp(prefix="ec2-"))
        self._homes[instance_id] = home
        metadata = self._start_metadata(instance_id, address)
        try:
            return sshd.start_sshd(
                self.root,
                instance_id,
                address,
                directory / "authorized_keys",
                port=22,
                extra_env={
                    "FAKE_EC2_INSTANCE_ID": instance_id,
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata,
                },
                path_prefix=[str(bin_dir), sshd.image_tools(self.root)],
                home=home,
            )
        except BaseException:
            self._stop_metadata(instance_id)
            raise

    # -- each machine's instance metadata service ------------------------------------------------

    def _start_metadata(self, instance_id: str, address: str) -> str:
        """Start the machine's IMDS on its address (a free port); its URL."""
        server = _MetadataServer(address, functools.partial(self._metadata_answer, instance_id))
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-imds-{instance_id}",
            daemon=True,
        )
        server.thread = thread
        with self._lock:
            self._metadata[instance_id] = server
        thread.start()
        return f"http://{address}:{server.server_address[1]}"

    def _stop_metadata(self, instance_id: str) -> None:
        """Stop the machine's IMDS (its notice goes with it: a machine started again has
        none), and wait for its thread."""
        with self._lock:
            server = self._metadata.pop(instance_id, None)
            self._notices.pop(instance_id, None)
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if server.thread is not None:
            server.thread.join()

    def _metadata_answer(self, instance_id: str, method: str, path: str, headers: Any) -> _Reply:
        """The answer of the instance's IMDS, recorded in ``metadata_requests``."""
        reply = self._metadata_reply(instance_id, method, path, headers)
        with self._lock:
            self.metadata_requests.setdefault(instance_id, []).append((method, path, reply.status))
        return reply

    def _metadata_reply(self, instance_id: str, method: str, path: str, headers: Any) -> _Reply:
        """IMDSv2, tokens required: a token for a PUT of ``/latest/api/token``; for a GET
        with one of its tokens, the instance id or the spot interruption notice."""
        with self._lock:
            server = self._metadata.get(instance_id)
            notice = self._notices.get(instance_id)
            rebalance = self._rebalances.get(instance_id)
        if server is None:  # stopping
            return _Reply(503, b"")
        if path == "/latest/api/token":
            if method != "PUT":
                return _Reply(405, b"")
            ttl = headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return _Reply(400, b"")
            token = secrets.token_urlsafe(32)
            server.tokens.add(token)
            return _Reply(200, token.encode(), (("Content-Type", "text/plain"),))
        if method != "GET":
            return _Reply(405, b"")
        if headers.get("X-aws-ec2-metadata-token", "") not in server.tokens:
            return _Reply(401, b"")
        if path == "/latest/meta-data/instance-id":
            return _Reply(200, instance_id.encode(), (("Content-Type", "text/plain"),))
        if path == "/latest/meta-data/spot/instance-action" and notice is not None:
            return _Reply(200, json.dumps(notice).encode(), (("Content-Type", "text/plain"),))
        if path == "/latest/meta-data/events/recommendations/rebalance" and rebalance is not None:
            return _Reply(200, json.dumps(rebalance).encode(), (("Content-Type", "text/plain"),))
        return _Reply(404, b"")

    def _cloud_config(self, instance_id: str) -> tuple[dict[str, Any], str]:
        """The instance's user data as cloud-init reads it (``#cloud-config``, then one JSON
        object, which is YAML), and a note of what was found, for ``cloud-init.log``."""
        answer = self._moto.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
        encoded = answer.get("UserData", {}).get("Value")
        if not encoded:
            return {}, "user data: none"
        text = base64.b64decode(encoded).decode(errors="replace")
        first, _, rest = text.partition("\n")
        try:
            config = json.loads(rest) if first.strip() == "#cloud-config" else None
        except ValueError:
            config = None
        if not isinstance(config, dict):
            return {}, "user data: not #cloud-config and one JSON object, so no keys"
        return config, "user data: #cloud-config"

    # -- ending machines ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _claimed(self, instance_id: str) -> Iterator[Machine | None]:
        """Take the instance's machine (None if it has none) from the hypervisor, which
        starts none for it until ``_end``; on an error inside, give it back."""
        with self._lock:
            machine = self.machines.pop(instance_id, None)
            self._ending[instance_id] += 1
            self._changes += 1
        try:
            yield machine
        except BaseException:
            with self._idle:
                if machine is not None:
                    self.machines[instance_id] = machine
                self._finish(instance_id)
            raise

    def _end(self, instance_id: str, machine: Machine | None, *, abrupt: bool) -> None:
        """End every process of a claimed machine by pid (``_end_machine``), then its IMDS."""
        try:
            if machine is not None:
                marker = f"FAKE_EC2_INSTANCE_ID={instance_id}".encode()
                self._end_processes(machine, marker, f"instance {instance_id}", abrupt=abrupt)
            self._stop_metadata(instance_id)
        finally:
            with self._idle:
                self._finish(instance_id)

    def _finish(self, instance_id: str) -> None:
        self._ending[instance_id] -= 1
        if self._ending[instance_id] <= 0:
            del self._ending[instance_id]
        self._idle.notify_all()

    def _error(self, message: str) -> None:
        with self._lock:
            if message not in self.errors:  # a fault the hypervisor meets every round, once
                self.errors.append(message)


class _MetadataServer(ThreadingHTTPServer):
    """One machine's IMDS: every request goes to ``answer(method, path, headers)``."""

    daemon_threads = True

    def __init__(self, address: str, answer: Callable[[str, str, Any], _Reply]) -> None:
        super().__init__((address, 0), _MetadataHandler)
        self.answer = answer
        self.tokens: set[str] = set()  # the tokens it gave (they never expire here)
        self.thread: threading.Thread | None = None


class _MetadataHandler(BaseHTTPRequestHandler):
    server: _MetadataServer

    def _handle(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urllib.parse.urlsplit(self.path).path
        reply = self.server.answer(self.command, path, self.headers)
        _send(self, reply)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake's answers are its own business."""


def _send(handler: BaseHTTPRequestHandler, reply: _Reply) -> None:
    if reply.forwarded:  # moto's Server and Date headers come with the rest
        handler.send_response_only(reply.status)
    else:
        handler.send_response(reply.status)
    for name, value in reply.headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(reply.body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(reply.body)
    handler.wfile.flush()


def _json_reply(status: int, payload: object, *, then: Callable[[], None] | None = None) -> _Reply:
    content_type = (("Content-Type", "application/x-amz-json-1.1"),)
    return _Reply(status, json.dumps(payload).encode(), content_type, then=then)


_PLACEMENT_ACTIONS = frozenset(
    {"CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup"}
)


def _ec2_reply(root: str, inner: str) -> _Reply:
    """An EC2 query API answer: ``<root>`` holding ``inner``."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><{root} '
        'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>{uuid.uuid4()}</requestId>{inner}</{root}>"
    )
    return _Reply(200, body.encode(), (("Content-Type", "text/xml;charset=UTF-8"),))


def _unknown_group(name: str) -> _Reply:
    return _ec2_error(
        400, "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown."
    )


def _ec2_error(status: int, code: str, message: str) -> _Reply:
    """An error as EC2's query API sends it (boto3 raises ClientError with ``code``)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message>"
        f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return _Reply(status, body.encode(), (("Content-Type", "text/xml;charset=UTF-8"),))


def _aws_error(status: int, code: str, message: str) -> _Reply:
    """An error as AWS's JSON 1.1 services send it (boto3 raises ClientError with ``code``)."""
    return _json_reply(status, {"__type": code, "message": message})


def _what(
    handler: BaseHTTPRequestHandler, url: urllib.parse.SplitResult, target: str, raw: bytes
) -> tuple[str, dict[str, Any]]:
    """(action, params) of a request, for ``FakeAWS.requests``: a JSON target and its body,
    an EC2 query action and its form, else the method and path and the query string."""
    if target:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        return target, body if isinstance(body, dict) else {}
    form = _single(raw.decode(errors="replace"))
    if "Action" in form:
        return form["Action"], form
    query = _single(url.query)
    if "Action" in query:
        return query["Action"], query
    return f"{handler.command} {url.path}", query


def _single(text: str) -> dict[str, str]:
    """A form or query string, each name with its first value (EC2's have one each)."""
    return {
        name: values[0]
        for name, values in urllib.parse.parse_qs(text, keep_blank_values=True).items()
    }


def _product(
    instance_type: str,
    price: float,
    spec: Mapping[str, str],
    changes: Mapping[str, str],
    factor: float,
) -> dict[str, Any]:
    """One product of AWS's price list (format aws_v1) with its on-demand hourly price."""
    fields = _LINUX | changes
    region, system = fields["regionCode"], fields["operatingSystem"]
    usage = "DedicatedUsage" if fields["tenancy"] == "Dedicated" else "BoxUsage"
    if fields["capacitystatus"] == "UnusedCapacityReservation":
        usage = "UnusedDed" if fields["tenancy"] == "Dedicated" else "UnusedBox"
    operation = {"Windows": "RunInstances:0002"}.get(system, "RunInstances")
    if fields["preInstalledSw"] == "SQL Std":
        operation = "RunInstances:0004"
    attributes = {
        "servicecode": "AmazonEC2",
        "servicename": "Amazon Elastic Compute Cloud",
        "instanceType": instance_type,
        "regionCode": region,
        "location": _LOCATIONS[region],
        "locationType": "AWS Region",
        "operatingSystem": system,
        "tenancy": fields["tenancy"],
        "preInstalledSw": fields["preInstalledSw"],
        "capacitystatus": fields["capacitystatus"],
        "licenseModel": "No License required",
        "marketoption": "OnDemand",
        "operation": operation,
        "usagetype": f"{'EU-' if region == 'eu-west-1' else ''}{usage}:{instance_type}",
        "processorArchitecture": "64-bit",
        **spec,
    }
    digest = hashlib.sha256(json.dumps(attributes, sort_keys=True).encode()).digest()
    sku = base64.b32encode(digest).decode()[:16]
    usd = f"{round(price * factor, 10):.10f}"
    shown = usd.rstrip("0").rstrip(".")
    return {
        "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": attributes},
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                f"{sku}.{ON_DEMAND}": {
                    "sku": sku,
                    "offerTermCode": ON_DEMAND,
                    "effectiveDate": "2026-11-01T00:00:00Z",
                    "termAttributes": {},
                    "priceDimensions": {
                        f"{sku}.{ON_DEMAND}.{PER_HOUR}": {
                            "unit": "Hrs",
                            "beginRange": "0",
                            "endRange": "Inf",
                            "rateCode": f"{sku}.{ON_DEMAND}.{PER_HOUR}",
                            "appliesTo": [],
                            "description": (
                                f"${shown} per On Demand {system} {instance_type} Instance Hour"
                            ),
                            "pricePerUnit": {"USD": usd},
                        }
                    },
                }
            }
        },
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z",
    }


def _filters_problem(filters: Any) -> str | None:
    """What is wrong with GetProducts' ``Filters``; None if nothing."""
    if not isinstance(filters, list):
        return f"Filters: expected a list, got {filters!r}"
    for number, given in enumerate(filters):
        if not isinstance(given, dict) or set(given) != {"Type", "Field", "Value"}:
            return f"Filters[{number}]: expected Type, Field and Value, got {given!r}"
        if given["Type"] not in _FILTER_TYPES:
            return f"Filters[{number}].Type: expected one of {_FILTER_TYPES}, got {given['Type']!r}"
        if not isinstance(given["Field"], str) or not isinstance(given["Value"], str):
            return f"Filters[{number}]: Field and Value must be strings, got {given!r}"
    return None


def _matches(attributes: Mapping[str, str], filters: list[dict[str, str]]) -> bool:
    """Whether a product's attributes match every filter (a field it lacks matches none)."""
    for given in filters:
        value = attributes.get(given["Field"])
        if value is None:
            return False
        kind, wanted = given["Type"], given["Value"]
        listed = [item.strip() for item in wanted.split(",")]
        if not {
            "TERM_MATCH": value == wanted,
            "EQUALS": value == wanted,
            "ANY_OF": value in listed,
            "NONE_OF": value not in listed,
            "CONTAINS": wanted in value,
        }[kind]:
            return False
    return True


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"fake-aws:{offset}".encode()).decode()


def _offset(token: Any) -> int | None:
    """Where a NextToken of ``_token`` resumes (0 for none); None for any other token."""
    if token is None:
        return 0
    try:
        prefix, _, number = base64.urlsafe_b64decode(str(token)).decode().partition(":")
        return int(number) if prefix == "fake-aws" and number.isdigit() else None
    except ValueError:
        return None


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _post(url: str) -> None:
    """POST to moto's own API, straight (loopback: no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, data=b"", method="POST"), timeout=30) as answer:
        answer.read()
