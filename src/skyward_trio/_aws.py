"""``sky.AWS``: EC2 instances, through AWS's APIs (boto3, whose calls run in threads).

**Offers.** For a spec with an accelerator: every instance type EC2 lists with that GPU
(EC2 says each type's GPUs, their memory, vCPUs, RAM and architecture). For a CPU spec:
the general-purpose families in :data:`CPU_FAMILIES`. Each is priced on demand by AWS's
Price List API (Linux, shared tenancy, no preinstalled software, in the region) and on
the spot market by EC2's current spot price in the region's cheapest zone. A type AWS
gives no on-demand price for in the region is not offered there.

**Nodes.** One instance each, of the chosen type (or the spec's next cheapest when AWS
has no capacity left for it), from the image ``AWS.ami`` names or AWS's own (the Deep
Learning Base AMI for NVIDIA nodes, Ubuntu for CPU nodes). Its user data has cloud-init
give the pool's public key to the image's user and install an ed25519 host key made for
that instance, so the client knows the key before it connects: a machine that presents
another is refused. The instance is reached at its public IP, else its private one.

**Nothing left billing.** Every instance is tagged ``skyward:job=<job>`` and launched with
a client token (a request boto3 retries never starts a second instance) and with
``InstanceInitiatedShutdownBehavior=terminate``, so the shutdown a node runs when its
lease (``Spec.ttl``) runs out ends the instance and its bill. ``terminate`` confirms the
instance shutting down or terminated (EC2 bills neither); ``aclose`` terminates every
instance of the job EC2 still lists, one whose launch answer never came included.

**Spot notices.** A spot instance's worker watches EC2's metadata service for the
two-minute interruption notice (``_notices``) and passes it to the client, which drains
the node (``InstanceInterrupting``). Launches leave ``MetadataOptions`` at the image's
defaults: the watch asks IMDSv2-style, which works whether tokens are required or not,
from the instance itself (one hop).

Credentials are boto3's; nothing here logs or quotes them.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from . import _logging, _transport, accelerators
from ._model import AWS
from ._offers import Catalog, Choice, Offer
from ._providers import Instance, ended_on_failure, given_host_key, poll_delays, remote_workdir
from .accelerators import Accelerator

__all__ = [
    "CPU_FAMILIES",
    "NEURON",
    "AWSCluster",
    "AWSError",
    "catalog",
    "gpu_accelerator",
    "neuron_accelerator",
    "volume_keys",
]

#: Instance families offered to a spec with no accelerator: current general-purpose,
#: compute- and memory-optimised ones, on Intel and on Graviton.
CPU_FAMILIES = ("m7i", "c7i", "r7i", "m7g", "c7g", "r7g")

#: The images used when ``AWS.ami`` is None: AWS's public SSM parameters, by whether the
#: node carries NVIDIA GPUs, and by architecture.
DEFAULT_AMI_PARAMETERS: Mapping[tuple[bool, str], str] = {
    (True, "x86_64"): (
        "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    ),
    (True, "arm64"): (
        "/aws/service/deeplearning/ami/arm64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    ),
    (False, "x86_64"): (
        "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
    ),
    (False, "arm64"): (
        "/aws/service/canonical/ubuntu/server/22.04/stable/current/arm64/hvm/ebs-gp2/ami-id"
    ),
}

#: The group Skyward creates in a VPC when ``AWS.security_group_id`` is None.
SECURITY_GROUP = "skyward"

#: EC2's answers that mean "not this type now": the next type of the spec is tried.
_NO_CAPACITY = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacityOnHost",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "Unsupported",
    }
)

#: What to do about AWS's refusals that are the account's to fix.
_HINTS: Mapping[str, str] = {
    "VcpuLimitExceeded": (
        "; ask for a higher vCPU quota for this instance family in the Service Quotas console "
        "(new accounts start at 0 for GPU families), or pick a smaller accelerator count"
    ),
    "MaxSpotInstanceCountExceeded": "; raise the spot vCPU quota in the Service Quotas console",
    "UnauthorizedOperation": (
        "; the credentials' IAM policy must allow it (docs/providers.md lists what sky.AWS calls)"
    ),
    "AccessDeniedException": (
        "; the credentials' IAM policy must allow it (docs/providers.md lists what sky.AWS calls)"
    ),
    "AuthFailure": "; check the AWS credentials (aws sts get-caller-identity)",
    "OptInRequired": "; the account has not enabled this region or service",
}

#: The largest root volume EBS makes, in GB: what an offer's disk can be.
_EBS_MAX_GB = 16_384
#: Instance types priced per Price List request (its ANY_OF filter takes a list).
_PRICE_BATCH = 20
_SSH_PORT = 22


class AWSError(RuntimeError):
    """AWS refused a request or could not be reached; the message quotes its answer.

    Attributes:
        code: AWS's error code (``InsufficientInstanceCapacity``), or None when AWS did
            not answer.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def _boto3() -> Any:
    try:
        import boto3  # the client only, and only for sky.AWS: not on the worker's path
    except ImportError:
        raise ImportError(
            "sky.AWS() needs boto3, which is not installed: pip install 'skyward[aws]'"
        ) from None
    return boto3


def volume_keys(config: AWS) -> tuple[str, str]:
    """The keys a node's ``sky.Volume`` mounts sign with when ``config`` gives the nodes no
    instance profile: this client's own (boto3's), copied to the node. Blocking (boto3
    reads ``~/.aws``): call it in a thread.

    Raises:
        ValueError: No credentials, or temporary ones (s3fs's password file holds no
            session token), with the fix.
    """
    boto3 = _boto3()
    session = boto3.session.Session(profile_name=config.profile, region_name=config.region)
    found = session.get_credentials()
    if found is None:
        raise ValueError(
            "sky.Volume(storage=None) on sky.AWS() mounts S3 with this client's AWS keys, "
            "and none were found: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, pass "
            "sky.AWS(instance_profile=...) (the nodes sign with their own role), or pass "
            "Volume(storage=sky.storage.S3(...))"
        )
    keys = found.get_frozen_credentials()
    if keys.token:
        raise ValueError(
            "sky.Volume(storage=None) on sky.AWS(): this client's AWS credentials are "
            "temporary (they carry a session token), which s3fs's password file cannot "
            "hold; pass sky.AWS(instance_profile=...) (the nodes sign with their own role), "
            "or Volume(storage=sky.storage.S3(access_key=..., secret_key=...))"
        )
    return str(keys.access_key), str(keys.secret_key)


class _API:
    """boto3's EC2, SSM and Price List clients of one config, called from trio."""

    def __init__(self, config: AWS, region: str) -> None:
        """Blocking (boto3 reads ``~/.aws``): build it in a thread (:meth:`open`).

        Raises:
            ValueError: No credentials, or an unknown ``profile``: a setting to fix.
        """
        boto3 = _boto3()
        from botocore.config import Config
        from botocore.exceptions import ProfileNotFound

        try:
            session = boto3.session.Session(profile_name=config.profile, region_name=region)
        except ProfileNotFound:
            raise ValueError(
                f"sky.AWS(profile={config.profile!r}): no such profile in ~/.aws/config or "
                "~/.aws/credentials; pass one that is there, or profile=None"
            ) from None
        if session.get_credentials() is None:
            raise ValueError(
                "sky.AWS(): no AWS credentials found. Export AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, run `aws configure` (or `aws sso login`), or pass "
                "sky.AWS(profile=...)."
            )
        settings = Config(
            connect_timeout=10, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}
        )
        url = config.endpoint_url
        self.ec2 = session.client("ec2", endpoint_url=url, config=settings)
        self.ssm = session.client("ssm", endpoint_url=url, config=settings)
        # The Price List API answers from us-east-1 for every region.
        self.pricing = session.client(
            "pricing", region_name="us-east-1", endpoint_url=url, config=settings
        )

    @classmethod
    async def open(cls, config: AWS, region: str) -> _API:
        return await trio.to_thread.run_sync(cls, config, region)

    async def call(self, client: Any, operation: str, **params: Any) -> Any:
        """One API call, in a thread; AWS's refusal is an AWSError with its code."""
        from botocore.exceptions import BotoCoreError, ClientError

        method: Callable[..., Any] = getattr(client, operation)
        try:
            return await trio.to_thread.run_sync(functools.partial(method, **params))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "")) or None
            hint = _HINTS.get(code or "", "")
            raise AWSError(
                f"AWS refused {operation} ({code}: {error.get('Message', '')}){hint}", code
            ) from None
        except BotoCoreError as exc:
            raise AWSError(f"AWS did not answer {operation}: {exc}") from None

    async def pages(self, client: Any, operation: str, key: str, **params: Any) -> list[Any]:
        """Every item under ``key`` of every page of a paged call."""
        items: list[Any] = []
        token: str | None = None
        while True:
            page = await self.call(
                client, operation, **params, **({"NextToken": token} if token else {})
            )
            items.extend(page.get(key, []))
            token = page.get("NextToken")
            if not token:
                return items

    def close(self) -> None:
        for client in (self.ec2, self.ssm, self.pricing):
            client.close()


def gpu_accelerator(gpu_info: Mapping[str, Any]) -> Accelerator | None:
    """What an instance type's ``GpuInfo`` (from EC2) carries, as an accelerator with its
    count; None for a GPU Skyward has no accelerator for, or a shared fraction of one."""
    gpus = gpu_info.get("Gpus") or []
    if len(gpus) != 1:
        return None
    gpu = gpus[0]
    count = gpu.get("Count")
    if not isinstance(count, int) or count < 1 or gpu.get("GpuPartitionSize", 1.0) < 1:
        return None
    memory_gib = gpu.get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024
    make = _GPUS.get(str(gpu.get("Name")))
    return make(count, memory_gib) if make is not None else None


# EC2's GPU names, and what each is (the memory EC2 gives tells the A100 and V100 sizes
# apart; every multi-GPU data-centre board AWS rents is an SXM one).
_GPUS: Mapping[str, Callable[[int, float], Accelerator]] = {
    "A100": lambda n, gib: accelerators.A100(
        count=n, memory="80GB" if gib > 60 else "40GB", form_factor="SXM"
    ),
    "H100": lambda n, gib: accelerators.H100(count=n, form_factor="SXM"),
    "H200": lambda n, gib: accelerators.H200(count=n, form_factor="SXM"),
    "B200": lambda n, gib: accelerators.B200(count=n),
    "V100": lambda n, gib: accelerators.V100(
        count=n, memory="32GB" if gib > 20 else "16GB", form_factor="SXM"
    ),
    "A10G": lambda n, gib: accelerators.A10G(count=n),
    "L4": lambda n, gib: accelerators.L4(count=n),
    "L40S": lambda n, gib: accelerators.L40S(count=n),
    "T4": lambda n, gib: accelerators.T4(count=n),
    "T4g": lambda n, gib: accelerators.T4(count=n),
}


#: AWS's own chips, by the name EC2's ``NeuronInfo`` gives them. They need an image with
#: the Neuron driver, which ``AWS.ami`` must name (Skyward picks none for them).
NEURON: Mapping[str, Callable[..., Accelerator]] = {
    "Trainium2": accelerators.Trainium2,
    "Inferentia2": accelerators.Inferentia2,
}


def neuron_accelerator(neuron_info: Mapping[str, Any]) -> Accelerator | None:
    """What an instance type's ``NeuronInfo`` (from EC2) carries, with its count; None for
    a chip Skyward has no accelerator for (the first Trainium)."""
    devices = neuron_info.get("NeuronDevices") or []
    if len(devices) != 1:
        return None
    count = devices[0].get("Count")
    make = NEURON.get(str(devices[0].get("Name")))
    if make is None or not isinstance(count, int) or count < 1:
        return None
    return make(count=count)


@attrs.frozen
class _Type:
    """What EC2 says of one instance type."""

    name: str
    vcpus: float
    memory_gb: float
    architecture: str
    accelerator: Accelerator | None


def _instance_type(entry: Mapping[str, Any]) -> _Type | None:
    """One ``describe_instance_types`` entry, or None for a type Skyward cannot use (one
    neither x86_64 nor arm64, or a bare-metal one)."""
    name = str(entry.get("InstanceType", ""))
    arches = entry.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    arch = next((a for a in ("x86_64", "arm64") if a in arches), None)
    if arch is None or name.endswith(".metal") or entry.get("BareMetal"):
        return None
    gpu_info, neuron_info = entry.get("GpuInfo"), entry.get("NeuronInfo")
    return _Type(
        name=name,
        vcpus=float(entry.get("VCpuInfo", {}).get("DefaultVCpus", 0)),
        memory_gb=round(entry.get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024, 2),
        architecture=arch,
        accelerator=(
            gpu_accelerator(gpu_info)
            if gpu_info
            else neuron_accelerator(neuron_info)
            if neuron_info
            else None
        ),
    )


async def _types(api: _API, wanted: Accelerator | None, *, everything: bool = False) -> list[_Type]:
    """The instance types a spec asking for ``wanted`` may get; with ``everything``, every
    type Skyward knows (GPU, Neuron and CPU) when ``wanted`` is None."""
    if wanted is None and everything:
        patterns = ["p*", "g*", "trn*", "inf*", *(f"{f}.*" for f in CPU_FAMILIES)]
    elif wanted is None:
        patterns = [f"{f}.*" for f in CPU_FAMILIES]
    elif wanted.name in NEURON:
        patterns = ["trn*", "inf*"]
    else:
        patterns = ["p*", "g*"]
    listed = await api.pages(
        api.ec2,
        "describe_instance_types",
        "InstanceTypes",
        Filters=[{"Name": "instance-type", "Values": patterns}],
    )
    types = [t for t in map(_instance_type, listed) if t is not None]
    if wanted is None and everything:
        # A GPU family name also matches the odd CPU type (g-something): those whose
        # family is not a CPU family carry an accelerator or are left out.
        cpu = tuple(f"{f}." for f in CPU_FAMILIES)
        return [t for t in types if t.accelerator is not None or t.name.startswith(cpu)]
    if wanted is None:
        return [t for t in types if t.accelerator is None]
    return [t for t in types if t.accelerator is not None and t.accelerator.name == wanted.name]


def _price_filters(region: str, names: Sequence[str]) -> list[dict[str, str]]:
    """Linux on shared hardware with nothing preinstalled, billed when used: the price
    a pool pays for ``names`` in ``region``."""
    exact = {
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    filters = [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in exact.items()]
    return [*filters, {"Type": "ANY_OF", "Field": "instanceType", "Value": ",".join(names)}]


def _hourly_usd(product: Mapping[str, Any]) -> float | None:
    """The on-demand USD per hour of one Price List product, or None if it has none."""
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            if dimension.get("unit") != "Hrs":
                continue
            try:
                price = float(dimension.get("pricePerUnit", {}).get("USD", ""))
            except ValueError:
                continue
            if price > 0:
                return price
    return None


async def _on_demand(api: _API, region: str, names: Sequence[str]) -> dict[str, float]:
    """Each type's on-demand price per hour in ``region`` (types with none are left out)."""
    prices: dict[str, float] = {}
    for start in range(0, len(names), _PRICE_BATCH):
        listed = await api.pages(
            api.pricing,
            "get_products",
            "PriceList",
            ServiceCode="AmazonEC2",
            FormatVersion="aws_v1",
            Filters=_price_filters(region, names[start : start + _PRICE_BATCH]),
        )
        for text in listed:
            product = json.loads(text) if isinstance(text, str) else text
            name = product.get("product", {}).get("attributes", {}).get("instanceType")
            price = _hourly_usd(product)
            if isinstance(name, str) and price is not None:
                prices[name] = min(price, prices.get(name, price))
    return prices


async def _spot(api: _API, names: Sequence[str]) -> dict[str, float]:
    """Each type's current spot price per hour in the region's cheapest zone."""
    history = await api.pages(
        api.ec2,
        "describe_spot_price_history",
        "SpotPriceHistory",
        InstanceTypes=list(names),
        ProductDescriptions=["Linux/UNIX"],
        StartTime=datetime.datetime.now(datetime.UTC),
    )
    prices: dict[str, float] = {}
    for entry in history:
        name, price = entry.get("InstanceType"), float(entry.get("SpotPrice", 0))
        if isinstance(name, str) and price > 0:
            prices[name] = min(price, prices.get(name, price))
    return prices


async def catalog(
    config: AWS,
    *,
    accelerator: Accelerator | None,
    region: str | None = None,
    everything: bool = False,
) -> Catalog:
    """The instance types a spec asking for ``accelerator`` may get in ``region`` (the
    spec's; None: the provider's), priced per node; with ``everything`` and no
    accelerator, every type Skyward knows.

    Raises:
        ValueError: No credentials, or an unknown profile (a setting to fix, not a spec
            to skip).
        ImportError: boto3 is not installed.
    """
    region = region or config.region
    api = await _API.open(config, region)
    try:
        types = await _types(api, accelerator, everything=everything)
        names = [t.name for t in types]
        on_demand = await _on_demand(api, region, names) if names else {}
        priced = [t for t in types if t.name in on_demand]
        spot = await _spot(api, [t.name for t in priced]) if priced else {}
    except AWSError as exc:
        return Catalog(error=str(exc))
    finally:
        api.close()
    return Catalog(
        offers=tuple(
            Offer(
                provider="sky.AWS()",
                name=t.name,
                vcpus=t.vcpus,
                memory_gb=t.memory_gb,
                disk_gb=_EBS_MAX_GB,
                architecture=t.architecture,
                regions=(region,),
                spot_price=spot.get(t.name),
                on_demand_price=on_demand[t.name],
                accelerator=t.accelerator,
            )
            for t in priced
        )
    )


def user_data(client_public_key: str, host_key: _transport.SSHKey) -> str:
    """cloud-init's ``#cloud-config``: the pool's key for the image's user, and the host
    key sshd is to present (JSON, which cloud-init reads as the YAML it is)."""
    config = {
        "ssh_authorized_keys": [client_public_key],
        "ssh_deletekeys": True,
        "ssh_keys": {
            "ed25519_private": _transport.private_openssh(host_key).decode(),
            "ed25519_public": _transport.public_openssh(host_key),
        },
    }
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


@attrs.frozen
class _Network:
    """Where the pool's instances launch, decided once per pool."""

    subnet_id: str | None  # None: EC2 picks one of the default VPC's
    security_group_id: str
    ami: str
    root_device: str | None  # the image's root device, to size its volume
    placement_group: str | None = None  # the group every instance launches into


class AWSCluster:
    """One pool's instances on EC2 (see the module)."""

    name = "aws"

    def __init__(
        self, config: AWS, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        self.config = config
        self.job_id = job_id
        # The region the offer was priced in: the spec's, else the provider's.
        self.region = choice.offer.regions[0] if choice.offer.regions else config.region
        # Nodes reach each other in the group Skyward makes; of a group of yours nothing
        # is known, so the collections store then runs in the client.
        self.peers_reachable = config.security_group_id is None
        self._choice = choice
        spot = choice.spot
        # The chosen type, then the spec's others, cheapest first: those of its
        # architecture only, as the image is made for one.
        self._offers = [
            o for o in (choice.offer, *choice.also) if o.architecture == choice.offer.architecture
        ]
        self._prices = {
            o.name: (o.spot_price if spot else o.on_demand_price) or choice.hourly_price
            for o in self._offers
        }
        self._public_key = _transport.public_openssh(client_key)
        self._login = _transport.Login(keys=(client_key,), tried="the pool's own key")
        self._api: _API | None = None
        self._network: _Network | None = None
        self._ready = trio.Lock()
        self._serial = 0
        self._live: set[str] = set()  # instance ids launched and not confirmed ending
        self._made_group: str | None = None  # the placement group made for this pool

    async def _prepared(self) -> tuple[_API, _Network]:
        """The API clients, the subnet, group and image: looked up once, by the first
        node that needs them."""
        async with self._ready:
            if self._api is None:
                self._api = await _API.open(self.config, self.region)
            if self._network is None:
                self._network = await self._find_network(self._api)
            return self._api, self._network

    async def _find_network(self, api: _API) -> _Network:
        config = self.config
        if config.subnet_id is not None:
            subnets = await api.call(api.ec2, "describe_subnets", SubnetIds=[config.subnet_id])
            vpc_id = subnets["Subnets"][0]["VpcId"]
        else:
            vpcs = await api.call(
                api.ec2, "describe_vpcs", Filters=[{"Name": "is-default", "Values": ["true"]}]
            )
            if not vpcs.get("Vpcs"):
                raise AWSError(
                    f"region {self.region} has no default VPC to launch in; pass "
                    "sky.AWS(subnet_id='subnet-...') with a subnet of yours"
                )
            vpc_id = vpcs["Vpcs"][0]["VpcId"]
        group = config.security_group_id or await self._skyward_group(api, vpc_id)
        ami = config.ami or await self._default_ami(api)
        images = await api.call(api.ec2, "describe_images", ImageIds=[ami])
        if not images.get("Images"):
            raise AWSError(f"no image {ami} in {self.region}; pass sky.AWS(ami=...) one there")
        root = images["Images"][0].get("RootDeviceName")
        subnet, placement = config.subnet_id, config.placement_group
        if placement is not None:
            await self._check_group(api, placement)
        elif config.placement is not None:
            if config.placement == "cluster" and subnet is None:
                # A cluster group lives in one zone: every launch must go to the same one,
                # also those made at once, before EC2 has placed any.
                subnet = await self._zone_subnet(api, vpc_id)
            placement = await self._make_group(api, config.placement)
        return _Network(subnet, group, ami, root if isinstance(root, str) else None, placement)

    async def _check_group(self, api: _API, name: str) -> None:
        """Refuse, before any launch, a placement group of yours that is not there."""
        try:
            await api.call(api.ec2, "describe_placement_groups", GroupNames=[name])
        except AWSError as exc:
            if exc.code != "InvalidPlacementGroup.Unknown":
                raise
            raise AWSError(
                f"there is no placement group {name!r} in {self.region}: create it (EC2 "
                "console, or aws ec2 create-placement-group), or pass sky.AWS(placement="
                "'cluster') to have Skyward make one for the pool",
                exc.code,
            ) from None

    async def _make_group(self, api: _API, strategy: str) -> str:
        """The pool's own placement group, of ``strategy``: made now, deleted by aclose."""
        name = f"skyward-{self.job_id}"
        await api.call(
            api.ec2,
            "create_placement_group",
            GroupName=name,
            Strategy=strategy,
            TagSpecifications=[
                {
                    "ResourceType": "placement-group",
                    "Tags": [{"Key": "skyward:job", "Value": self.job_id}],
                }
            ],
        )
        self._made_group = name
        return name

    async def _zone_subnet(self, api: _API, vpc_id: str) -> str:
        """The default VPC's subnet in the first zone (by name) that offers the chosen
        instance type, for a cluster placement group's launches."""
        kind = self._choice.offer.name
        offered = await api.call(
            api.ec2,
            "describe_instance_type_offerings",
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [kind]}],
        )
        zones = {str(o["Location"]) for o in offered.get("InstanceTypeOfferings", [])}
        subnets = await api.call(
            api.ec2,
            "describe_subnets",
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "default-for-az", "Values": ["true"]},
            ],
        )
        by_zone = {str(n["AvailabilityZone"]): str(n["SubnetId"]) for n in subnets["Subnets"]}
        for zone in sorted(by_zone):
            if zone in zones:
                return by_zone[zone]
        raise AWSError(
            f"no zone of {self.region}'s default VPC offers {kind} (zones with a default "
            f"subnet: {', '.join(sorted(by_zone)) or 'none'}); a cluster placement group "
            "keeps the pool in one zone: pass sky.AWS(subnet_id=...) with a subnet in a zone "
            "that has it, or another region"
        )

    async def _default_ami(self, api: _API) -> str:
        offer = self._choice.offer
        nvidia = offer.accelerator is not None
        name = DEFAULT_AMI_PARAMETERS[nvidia, offer.architecture or "x86_64"]
        answer = await api.call(api.ssm, "get_parameter", Name=name)
        return str(answer["Parameter"]["Value"])

    async def _skyward_group(self, api: _API, vpc_id: str) -> str:
        """The VPC's ``skyward`` group, made when missing: SSH from ``ssh_cidr``, and any
        traffic between its members; with ``ssh_cidr``'s rule added when it lacks it."""
        filters = [
            {"Name": "group-name", "Values": [SECURITY_GROUP]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]
        found = await api.call(api.ec2, "describe_security_groups", Filters=filters)
        if found.get("SecurityGroups"):
            group_id = str(found["SecurityGroups"][0]["GroupId"])
        else:
            try:
                made = await api.call(
                    api.ec2,
                    "create_security_group",
                    GroupName=SECURITY_GROUP,
                    Description="Skyward nodes: SSH in, and any traffic between them",
                    VpcId=vpc_id,
                )
                group_id = str(made["GroupId"])
            except AWSError as exc:
                if exc.code != "InvalidGroup.Duplicate":
                    raise
                # Another pool made it meanwhile.
                found = await api.call(api.ec2, "describe_security_groups", Filters=filters)
                group_id = str(found["SecurityGroups"][0]["GroupId"])
        rules = [
            {
                "IpProtocol": "tcp",
                "FromPort": _SSH_PORT,
                "ToPort": _SSH_PORT,
                "IpRanges": [{"CidrIp": self.config.ssh_cidr, "Description": "SSH (Skyward)"}],
            },
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]},
        ]
        for rule in rules:
            try:
                await api.call(
                    api.ec2,
                    "authorize_security_group_ingress",
                    GroupId=group_id,
                    IpPermissions=[rule],
                )
            except AWSError as exc:
                if exc.code != "InvalidPermission.Duplicate":
                    raise
        return group_id

    def _launch_params(self, network: _Network, name: str, node: int, data: str) -> dict[str, Any]:
        tags = [
            {"Key": "Name", "Value": name},
            {"Key": "skyward:job", "Value": self.job_id},
            {"Key": "skyward:node", "Value": str(node)},
        ]
        params: dict[str, Any] = {
            "ImageId": network.ami,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": data,
            "SecurityGroupIds": [network.security_group_id],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if network.subnet_id is not None:
            params["SubnetId"] = network.subnet_id
        if network.placement_group is not None:
            params["Placement"] = {"GroupName": network.placement_group}
        if self._choice.spot:
            spot: dict[str, str] = {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            }
            cap = self._choice.spec.max_hourly_cost
            if cap is not None:  # EC2 then never bills above it, nor starts when it cannot
                spot["MaxPrice"] = f"{cap:.4f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        disk = self._choice.spec.disk_gb
        if disk is not None and network.root_device is not None:
            params["BlockDeviceMappings"] = [
                {
                    "DeviceName": network.root_device,
                    "Ebs": {
                        "VolumeSize": int(-(-disk // 1)),
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                    },
                }
            ]
        profile = self.config.instance_profile
        if profile is not None:
            key = "Arn" if profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {key: profile}
        return params

    async def _launch(self, api: _API, network: _Network, node: int, data: str) -> tuple[str, str]:
        """Launch one instance of the first type with capacity: its id and type."""
        self._serial += 1
        name = f"skyward-{self.job_id}-{node}-{self._serial}"
        params = self._launch_params(network, name, node, data)
        refused: list[str] = []
        for offer in self._offers:
            try:
                answer = await api.call(
                    api.ec2,
                    "run_instances",
                    **params,
                    InstanceType=offer.name,
                    ClientToken=f"{name}-{offer.name}"[:64],
                )
            except AWSError as exc:
                if exc.code not in _NO_CAPACITY:
                    raise
                refused.append(f"{offer.name}: {exc}")
                continue
            instance_id = str(answer["Instances"][0]["InstanceId"])
            self._live.add(instance_id)
            return instance_id, offer.name
        raise AWSError(
            "AWS has no capacity now for any instance type of this spec "
            f"({'; '.join(refused)}); try another region, allocation or accelerator, or later",
            "InsufficientInstanceCapacity",
        )

    async def provision(self, node: int) -> Instance:
        """Launch an instance, wait until it runs and sshd answers with the host key it
        was given, and learn its home."""
        api, network = await self._prepared()
        host_key = _transport.generate_key()
        host_public = _transport.public_openssh(host_key)
        instance_id, kind = await self._launch(
            api, network, node, user_data(self._public_key, host_key)
        )
        async with ended_on_failure(lambda: self._terminate_all(api, [instance_id]), AWSError):
            described = await self._running(api, instance_id)
            private_ip = str(described.get("PrivateIpAddress") or "")
            public_ip = described.get("PublicIpAddress") or None
            host = public_ip or private_ip
            if not host:
                raise AWSError(f"instance {instance_id} runs with no IP address to reach it at")
            await given_host_key(instance_id, host, _SSH_PORT, host_public)
            user = self.config.username
            workdir = await remote_workdir(
                host,
                _SSH_PORT,
                user=user,
                login=self._login,
                host_key=host_public,
                name=f"{self.job_id}-{node}",
            )
        shutdown = "shutdown -h now" if user == "root" else "sudo -n shutdown -h now"
        return Instance(
            id=instance_id,
            node=node,
            host=host,
            port=_SSH_PORT,
            username=user,
            host_key=host_public,
            private_ip=private_ip or host,
            public_ip=public_ip,
            python=None,
            workdir=workdir,
            hourly_price=self._prices[kind],
            on_lease_expiry=shutdown,
            # EC2 warns a spot instance two minutes before it reclaims it (worker.py
            # watches IMDS for it; EC2's MetadataOptions are left at their defaults, which
            # the watch works with).
            interruption_notices="aws" if self._choice.spot else None,
        )

    async def _describe(self, api: _API, instance_id: str) -> dict[str, Any] | None:
        """The instance as EC2 sees it now; None when it does not list it."""
        try:
            answer = await api.call(api.ec2, "describe_instances", InstanceIds=[instance_id])
        except AWSError as exc:
            if exc.code == "InvalidInstanceID.NotFound":
                return None
            raise
        for reservation in answer.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                if instance.get("InstanceId") == instance_id:
                    return dict(instance)
        return None

    async def _running(self, api: _API, instance_id: str) -> dict[str, Any]:
        """Poll until the instance runs (the caller's deadline)."""
        delays = poll_delays()
        while True:
            # Just launched, EC2 may not list it yet (its API is eventually consistent).
            described = await self._describe(api, instance_id)
            state = (described or {}).get("State", {}).get("Name", "pending")
            if state == "running":
                assert described is not None
                return described
            if state != "pending":
                reason = (described or {}).get("StateReason", {}).get("Message", "")
                raise AWSError(
                    f"instance {instance_id} ended before it came up ({state}"
                    f"{': ' + reason if reason else ''})"
                )
            await trio.sleep(next(delays))

    async def alive(self, instance: Instance) -> bool:
        """Whether EC2 still runs the instance (False once it is interrupted or ended)."""
        api, _ = await self._prepared()
        try:
            described = await self._describe(api, instance.id)
        except AWSError:
            return True  # the API did not answer: the reconnection finds out
        state = (described or {}).get("State", {}).get("Name")
        return state in ("pending", "running")

    async def terminate(self, instance: Instance) -> None:
        """Terminate the instance and confirm EC2 has it ending; raise otherwise."""
        api, _ = await self._prepared()
        await self._terminate_all(api, [instance.id])

    async def _terminate_all(self, api: _API, ids: Sequence[str]) -> None:
        try:
            await api.call(api.ec2, "terminate_instances", InstanceIds=list(ids))
        except AWSError as exc:
            if exc.code != "InvalidInstanceID.NotFound" or len(ids) > 1:
                raise AWSError(
                    f"AWS did not terminate {', '.join(ids)} ({exc}); terminate them in the "
                    "EC2 console",
                    exc.code,
                ) from None
        for instance_id in ids:
            described = await self._describe(api, instance_id)
            state = (described or {}).get("State", {}).get("Name", "terminated")
            if state not in ("shutting-down", "terminated"):
                raise AWSError(
                    f"EC2 still lists instance {instance_id} as {state} after terminating "
                    "it; terminate it in the EC2 console"
                )
            self._live.discard(instance_id)

    async def aclose(self) -> None:
        """Terminate every instance of this job EC2 still lists, those never handed out
        included (a launch whose answer never came); raise naming any left."""
        if self._api is None:
            return  # nothing was ever launched
        api = self._api
        failed: list[str] = []
        try:
            with trio.move_on_after(120) as scope:
                listed = await self._find_strays(api)
                if listed is not None:
                    failed.append(listed)
                if self._live:
                    try:
                        await self._terminate_all(api, sorted(self._live))
                    except AWSError as exc:
                        failed.append(str(exc))
                if self._made_group is not None and not failed:
                    await self._delete_group(api, self._made_group)
            if scope.cancelled_caught:
                failed.append("no answer from AWS within 120 s")
        finally:
            api.close()
        if failed:
            raise AWSError(
                "sky.AWS could not confirm every instance of this pool terminated; these "
                f"may still bill: {'; '.join(failed)}. Check the EC2 console in "
                f"{self.region} for instances tagged skyward:job={self.job_id}"
            )

    async def _delete_group(self, api: _API, name: str) -> None:
        """Delete the pool's placement group once its instances are gone (EC2 refuses
        while one is still shutting down). A group costs nothing: one left (no answer in
        time) is said in the log, not raised."""
        delays = poll_delays()
        with trio.move_on_after(90):
            while True:
                try:
                    await api.call(api.ec2, "delete_placement_group", GroupName=name)
                except AWSError as exc:
                    if exc.code == "InvalidPlacementGroup.Unknown":  # gone already
                        self._made_group = None
                        return
                    if exc.code != "InvalidPlacementGroup.InUse":
                        _logging.log.warning("placement group %s was not deleted: %s", name, exc)
                        return
                    await trio.sleep(next(delays))
                    continue
                self._made_group = None
                return
        if self._made_group is not None:
            _logging.log.warning(
                "placement group %s was not deleted within 90 s (its instances still shutting "
                "down); it costs nothing: delete it in the EC2 console",
                name,
            )

    async def _find_strays(self, api: _API) -> str | None:
        """Add the job's instances EC2 lists to those to terminate; or say why it could
        not list them (an instance launched but never answered for may then be left)."""
        try:
            reservations = await api.pages(
                api.ec2,
                "describe_instances",
                "Reservations",
                Filters=[
                    {"Name": "tag:skyward:job", "Values": [self.job_id]},
                    {
                        "Name": "instance-state-name",
                        "Values": ["pending", "running", "stopping", "stopped"],
                    },
                ],
            )
        except AWSError as exc:
            return f"the job's instances could not be listed: {exc}"
        for reservation in reservations:
            for instance in reservation.get("Instances", []):
                self._live.add(str(instance["InstanceId"]))
        return None
