"""``sky.GCP``: GPU VMs rented from Google Compute Engine, through its REST API.

Auth: a service account's JSON key signs a JWT (RS256: ``iss`` the account's email,
``scope`` cloud-platform, ``aud`` the key's ``token_uri``, an hour long) that the OAuth2
token endpoint trades (grant ``urn:ietf:params:oauth:grant-type:jwt-bearer``) for a bearer
token; :class:`_API` buys one before its first request and again near its end or when
refused (one retry). The private key signs locally and is never sent; the token travels in
the ``Authorization`` header only.

Offers: ``aggregated/machineTypes`` lists each zone's machine types; an A2 (A100), A3
(H100) or G2 (L4) type lists its GPUs in ``accelerators``. N1 types take GPUs attached as
``guestAccelerators``: each zone's ``aggregated/acceleratorTypes`` says which of T4, V100,
P100 and P4 it has and how many one VM may take, and each count of 1, 2 or 4 (8 for V100)
becomes an offer of an N1 type big enough for it (``n1-standard-8``/``-16``/``-32``/``-64``).
An offer's regions are the zones that list it. Its price is the Cloud Billing Catalog's
hourly price of its GPUs (``services/6F81-5844-456A/skus``, resource group ``GPU``, by
region): the GPU part only, without the machine's vCPUs and RAM (said in docs/offers.md).

A node is one VM (``POST zones/{zone}/instances``): the offer's machine type (and GPUs),
a boot disk from the image, an external address (``ONE_TO_ONE_NAT``), ``onHostMaintenance:
TERMINATE`` (GPU VMs cannot live-migrate), the label ``skyward-job=<job>``, the metadata
``ssh-keys`` (``user:KEY``) and ``user-data`` (``_aws.user_data``: cloud-init with a host
key made for it), and the default service account with the compute scope. The insert is a
long-running Operation, waited for (``operations/{name}/wait``); one that ends in
``ZONE_RESOURCE_POOL_EXHAUSTED`` or a quota error tries the next zone, then the next type.

Teardown deletes each VM, waits for its Operation and confirms it gone (404); the close
also deletes every VM labelled with the job (``aggregated/instances``), one whose insert
answer never came included. Unlike the other rented clouds, a GCE VM can end itself: the
worker's lease-expiry command asks the metadata server for the VM's own service account
token and deletes the VM through the API, so a VM whose client died does not bill on.

A spot VM (``provisioningModel: SPOT``, ``instanceTerminationAction: DELETE``) is watched
for Compute Engine's preemption notice by its worker (``interruption_notices="gcp"``,
``_notices.ComputeMetadata``): about 30 s ahead, the node is drained and its replacement
launched.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._aws import user_data
from ._model import GCP
from ._offers import Choice, Offer
from ._providers import (
    Instance,
    TokenAPI,
    failure_words,
    poll_delays,
    response_object,
    said,
)
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_TYPES", "GCPCluster", "GCPError", "catalog", "self_delete_command"]

#: Compute Engine's GPU types (``acceleratorTypes``) that Skyward names.
GPU_TYPES: Mapping[str, Accelerator] = {
    "nvidia-tesla-t4": accelerators.T4(),
    "nvidia-tesla-v100": accelerators.V100(),
    "nvidia-tesla-p100": accelerators.P100(),
    "nvidia-tesla-p4": Accelerator(name="P4", memory="8GB"),
    "nvidia-tesla-a100": accelerators.A100(memory="40GB", form_factor="SXM"),
    "nvidia-a100-80gb": accelerators.A100(memory="80GB", form_factor="SXM"),
    "nvidia-h100-80gb": accelerators.H100(form_factor="SXM"),
    "nvidia-l4": accelerators.L4(),
}
#: GPUs attached to an N1 type (the others come with their machine type).
_N1_GPUS = ("nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-p4")
#: The N1 type for each GPU count: within every N1 GPU's vCPU limit for that count.
_N1_FOR = {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"}
#: How a GPU SKU's description names each GPU type ("Nvidia Tesla T4 GPU running in ...").
_SKU_GPU = {
    "nvidia-tesla-t4": re.compile(r"\bT4 GPU\b"),
    "nvidia-tesla-v100": re.compile(r"\bV100 GPU\b"),
    "nvidia-tesla-p100": re.compile(r"\bP100 GPU\b"),
    "nvidia-tesla-p4": re.compile(r"\bP4 GPU\b"),
    "nvidia-tesla-a100": re.compile(r"\bA100 GPU\b"),
    "nvidia-a100-80gb": re.compile(r"\bA100 80GB GPU\b"),
    "nvidia-h100-80gb": re.compile(r"\bH100 80GB GPU\b"),
    "nvidia-l4": re.compile(r"\bL4 GPU\b"),
}
#: Compute Engine's service in the Cloud Billing Catalog.
COMPUTE_SERVICE = "6F81-5844-456A"
#: What the client's token may do (Compute Engine and the Billing Catalog).
_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: What the VM's own service account may do: delete itself, nothing beyond Compute Engine.
_VM_SCOPE = "https://www.googleapis.com/auth/compute"
#: The label every VM of a pool carries, its value the job's id.
LABEL = "skyward-job"
#: Operation errors after which the next zone (then type) may still work.
_TRY_ELSEWHERE = ("ZONE_RESOURCE_POOL_EXHAUSTED", "QUOTA_EXCEEDED", "STOCKOUT")

#: The command a VM runs to delete itself when the worker's lease runs out: its own
#: service account's token from the metadata server (``GCE_METADATA_HOST`` where set, as
#: Google's client libraries read it), then a DELETE of the VM through the API.
_SELF_DELETE = """\
import json, os, urllib.request as u
o = u.build_opener(u.ProxyHandler({{}}))
h = os.environ.get('GCE_METADATA_HOST') or 'metadata.google.internal'
def md(p):
    f = {{'Metadata-Flavor': 'Google'}}
    return o.open(u.Request('http://' + h + '/computeMetadata/v1/' + p, headers=f)).read().decode()
t = json.loads(md('instance/service-accounts/default/token'))['access_token']
z = md('instance/zone').rsplit('/', 1)[-1]
url = {api!r} + '/projects/' + md('project/project-id') + '/zones/' + z
url += '/instances/' + md('instance/name')
a = {{'Authorization': 'Bearer ' + t}}
o.open(u.Request(url, method='DELETE', headers=a), timeout=30).read()
"""


def self_delete_command(api_url: str) -> str:
    """The shell command (run by the worker, ``$SKYWARD_PYTHON`` set) that deletes the VM."""
    return '"$SKYWARD_PYTHON" -c ' + shlex.quote(_SELF_DELETE.format(api=api_url.rstrip("/")))


class GCPError(RuntimeError):
    """Google's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """Google's own words for a failed request (``error.message`` and its reason)."""
    body = response_object(response)
    error, words = body.get("error"), None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        reasons = [e.get("reason") for e in error.get("errors") or [] if isinstance(e, dict)]
        reason = next((r for r in reasons if isinstance(r, str)), None)
        message = error["message"].strip()
        words = f"{reason}: {message}" if reason else message
    elif isinstance(error, str):  # the token endpoint: {"error": ..., "error_description": ...}
        words = f"{error}: {body.get('error_description', '')}".strip(": ")
    return failure_words(response, words)


_said = functools.partial(said, describe=_describe_failure)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_jwt(key: Mapping[str, str], audience: str, now: float) -> str:
    """The JWT a service account's key signs to buy a token (RS256, an hour long).

    Raises:
        GCPError: The key's ``private_key`` is not an RSA private key in PEM.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    header = {"alg": "RS256", "typ": "JWT"}
    if key.get("private_key_id"):
        header["kid"] = key["private_key_id"]
    claims = {
        "iss": key["client_email"],
        "scope": _SCOPE,
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + 3600,
    }
    signing = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    try:
        private = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
    except ValueError:
        private = None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise GCPError(
            "the service account key's private_key is not an RSA key in PEM; download a new "
            "JSON key for the service account"
        )
    signature = private.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing + "." + _b64(signature)


class _API(TokenAPI):
    """Compute Engine's and the Billing Catalog's REST APIs, with a bearer token bought
    from the service account's key."""

    cloud = "Google"
    error = GCPError
    token_margin = 300.0

    def __init__(self, config: GCP) -> None:
        super().__init__()
        self.config = config
        self._key, self.project = config.resolved_credentials()
        self._token_url = self._key.get("token_uri") or "https://oauth2.googleapis.com/token"

    @property
    def fix(self) -> str:
        return (
            f"check the service account key ({self._key['client_email']}): make a new JSON "
            "key if it was deleted or disabled, give the account the Compute Instance Admin "
            "(v1) and Service Account User roles on the project, and enable the Compute "
            "Engine API"
        )

    async def buy_token(self) -> tuple[str, float | None]:
        """A token for the service account's signed assertion (RFC 7523)."""
        assertion = signed_jwt(self._key, self._token_url, time.time())
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}
        form["assertion"] = assertion
        response = await self.send("POST", self._token_url, data=form)
        answer = response_object(response)
        token = answer.get("access_token")
        if response.status_code != 200 or not isinstance(token, str) or not token:
            raise GCPError(f"Google refused the service account key {_said(response)}; {self.fix}")
        return token, positive_number(answer.get("expires_in"))

    async def request(self, method: str, url: str, *, json: Any = None) -> httpx.Response:
        """A request with a good token; a refused token is bought again once."""
        response = await self.authorized(method, url, json=json)
        if response.status_code in (401, 403) and _permission(response):
            raise GCPError(f"Google refused the request {_said(response)}; {self.fix}")
        return response

    def compute(self, path: str) -> str:
        return f"{self.config.api_url.rstrip('/')}/projects/{self.project}{path}"

    async def aggregated(self, kind: str, **query: str) -> dict[str, list[dict[str, Any]]]:
        """Every entry of ``aggregated/{kind}`` by zone name (all pages)."""
        found: dict[str, list[dict[str, Any]]] = {}
        token: str | None = None
        while True:
            params = {**query, **({"pageToken": token} if token else {})}
            suffix = f"?{urlencode(params)}" if params else ""
            response = await self.request("GET", self.compute(f"/aggregated/{kind}{suffix}"))
            body = response_object(response)
            items = body.get("items")
            if response.status_code != 200 or not isinstance(items, dict):
                raise GCPError(f"Compute Engine did not list the {kind} {_said(response)}")
            for scope, listed in items.items():
                entries = listed.get(kind) if isinstance(listed, dict) else None
                if isinstance(entries, list) and scope.startswith("zones/"):
                    zone = scope.removeprefix("zones/")
                    found.setdefault(zone, []).extend(e for e in entries if isinstance(e, dict))
            token = body.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return found

    async def gpu_prices(self) -> dict[tuple[str, str, str], float]:
        """The Billing Catalog's hourly price of one GPU, by (GPU type, region, usage type:
        ``OnDemand`` or ``Preemptible``)."""
        prices: dict[tuple[str, str, str], float] = {}
        base = f"{self.config.billing_url.rstrip('/')}/services/{COMPUTE_SERVICE}/skus"
        token: str | None = None
        while True:
            query = {"currencyCode": "USD", **({"pageToken": token} if token else {})}
            response = await self.request("GET", f"{base}?{urlencode(query)}")
            body = response_object(response)
            skus = body.get("skus")
            if response.status_code != 200 or not isinstance(skus, list):
                raise GCPError(f"the Cloud Billing Catalog did not list prices {_said(response)}")
            for sku in skus:
                _add_price(prices, sku)
            token = body.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return prices


def _permission(response: httpx.Response) -> bool:
    """Whether a refusal is the key's (no token, or a permission the account lacks),
    not a quota's."""
    if response.status_code == 401:
        return True
    error = response_object(response).get("error")
    status = error.get("status") if isinstance(error, dict) else None
    reasons = [
        e.get("reason")
        for e in (error.get("errors") or [] if isinstance(error, dict) else [])
        if isinstance(e, dict)
    ]
    return status == "PERMISSION_DENIED" and not any(
        isinstance(r, str) and "quota" in r.lower() for r in reasons
    )


def _add_price(prices: dict[tuple[str, str, str], float], sku: object) -> None:
    """Note a GPU SKU's hourly price for each of its regions."""
    if not isinstance(sku, dict):
        return
    category = sku.get("category") or {}
    description = str(sku.get("description", ""))
    if category.get("resourceGroup") != "GPU" or category.get("usageType") not in (
        "OnDemand",
        "Preemptible",
    ):
        return
    gpu = next((g for g, p in _SKU_GPU.items() if p.search(description)), None)
    if gpu is None or "Commitment" in description:
        return
    price = _unit_price(sku.get("pricingInfo"))
    if price is None:
        return
    for region in sku.get("serviceRegions") or []:
        if isinstance(region, str):
            prices.setdefault((gpu, region, str(category["usageType"])), price)


def _unit_price(info: object) -> float | None:
    """The first tier's price per hour of a SKU's latest pricing, in USD."""
    if not isinstance(info, list) or not info or not isinstance(info[0], dict):
        return None
    expression = info[0].get("pricingExpression") or {}
    if expression.get("usageUnit") != "h":
        return None
    rates = expression.get("tieredRates") or []
    if not rates or not isinstance(rates[-1], dict):
        return None
    unit = rates[-1].get("unitPrice") or {}
    if unit.get("currencyCode", "USD") != "USD":
        return None
    units, nanos = unit.get("units", "0"), unit.get("nanos", 0)
    try:
        return positive_number(int(units) + int(nanos) / 1e9)
    except (TypeError, ValueError):
        return None


def _region(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


@attrs.frozen
class _Shape:
    """A machine type with GPUs: its name, GPU type and count, and whether the GPUs are
    attached (N1) rather than part of the type."""

    machine_type: str
    gpu: str
    count: int
    attached: bool

    @property
    def name(self) -> str:
        return (
            f"{self.machine_type}+{self.count}x{self.gpu}" if self.attached else self.machine_type
        )


def _shapes(
    types: Mapping[str, list[dict[str, Any]]], gpus: Mapping[str, list[dict[str, Any]]]
) -> dict[_Shape, tuple[dict[str, Any], list[str]]]:
    """Every GPU shape Skyward names, with its machine type as listed and its zones."""
    listed: dict[str, dict[str, dict[str, Any]]] = {
        zone: {str(t.get("name")): t for t in entries} for zone, entries in types.items()
    }
    found: dict[_Shape, tuple[dict[str, Any], list[str]]] = {}
    for zone, by_name in sorted(listed.items()):
        for name, machine in by_name.items():
            for accel in machine.get("accelerators") or []:
                gpu = accel.get("guestAcceleratorType") if isinstance(accel, dict) else None
                count = accel.get("guestAcceleratorCount") if isinstance(accel, dict) else None
                if isinstance(gpu, str) and gpu in GPU_TYPES and isinstance(count, int) and count:
                    shape = _Shape(name, gpu, count, attached=False)
                    found.setdefault(shape, (machine, []))[1].append(zone)
    for zone, entries in sorted(gpus.items()):
        for accel in entries:
            gpu, most = accel.get("name"), accel.get("maximumCardsPerInstance")
            if gpu not in _N1_GPUS or not isinstance(most, int):
                continue
            for count, machine_type in _N1_FOR.items():
                n1 = listed.get(zone, {}).get(machine_type)
                if count <= most and n1 is not None:
                    shape = _Shape(machine_type, str(gpu), count, attached=True)
                    found.setdefault(shape, (n1, []))[1].append(zone)
    return found


def _offer(
    shape: _Shape,
    machine: Mapping[str, Any],
    zones: Sequence[str],
    prices: Mapping[tuple[str, str, str], float],
) -> Offer:
    """One shape as an offer, priced by its GPUs in its first zone's region that has a
    price (the GPU part only)."""
    memory = positive_number(machine.get("memoryMb"))

    def price(usage: str) -> float | None:
        for zone in zones:
            each = prices.get((shape.gpu, _region(zone), usage))
            if each is not None:
                return round(each * shape.count, 4)
        return None

    return Offer(
        provider="sky.GCP()",
        name=shape.name,
        vcpus=positive_number(machine.get("guestCpus")),
        memory_gb=round(memory / 1024, 1) if memory else None,
        disk_gb=None,  # the boot disk is sized by GCP(disk_gb=...)
        architecture="x86_64",
        regions=tuple(zones),
        on_demand_price=price("OnDemand"),
        spot_price=price("Preemptible"),
        accelerator=attrs.evolve(GPU_TYPES[shape.gpu], count=shape.count),
        ref=json.dumps([shape.machine_type, shape.gpu, shape.count, shape.attached]),
    )


def _shape_of(offer: Offer) -> _Shape:
    machine_type, gpu, count, attached = json.loads(offer.ref or "[]")
    return _Shape(str(machine_type), str(gpu), int(count), bool(attached))


async def _offers(api: _API, config: GCP) -> list[Offer]:
    """Every GPU shape Skyward names, with the zones that list it, priced by its GPUs."""
    types = await api.aggregated("machineTypes")
    gpus = await api.aggregated("acceleratorTypes")
    if config.zone is not None:
        types = {z: t for z, t in types.items() if z == config.zone}
        gpus = {z: g for z, g in gpus.items() if z == config.zone}
    prices = await api.gpu_prices()
    found = _shapes(types, gpus)
    return [_offer(s, m, zones, prices) for s, (m, zones) in found.items()]


#: Compute Engine's GPU shapes with ``gpus`` of ``accelerator``'s model, each an offer;
#: with ``everything`` and no accelerator, every GPU shape Skyward names.
catalog = GPUCatalog(
    "sky.GCP() rents GPU VMs",
    GCP.resolved_credentials,
    _API,
    lambda api, config, wanted: _offers(api, config),
    GCPError,
)


@attrs.frozen
class _VM:
    """What the API says of one VM."""

    id: str  # its name: Compute Engine addresses a VM by zone and name
    name: str
    status: str  # PROVISIONING, STAGING, RUNNING, STOPPING, TERMINATED, ...
    zone: str
    ip: str | None  # its external address, once it has one
    private_ip: str | None


def _vm(body: object, zone: str) -> _VM | None:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return None
    ip = private = None
    for nic in body.get("networkInterfaces") or []:
        if not isinstance(nic, dict):
            continue
        private = private or (nic["networkIP"] if isinstance(nic.get("networkIP"), str) else None)
        for access in nic.get("accessConfigs") or []:
            if isinstance(access, dict) and isinstance(access.get("natIP"), str):
                ip = ip or access["natIP"]
    zone_url = body.get("zone")
    return _VM(
        id=body["name"],
        name=body["name"],
        status=str(body.get("status", "")),
        zone=zone_url.rsplit("/", 1)[-1] if isinstance(zone_url, str) else zone,
        ip=ip,
        private_ip=private,
    )


def _operation_error(operation: Mapping[str, Any]) -> tuple[str, str] | None:
    """A finished Operation's first error, as (code, message); None if it succeeded."""
    error = operation.get("error")
    errors = error.get("errors") if isinstance(error, dict) else None
    if not isinstance(errors, list) or not errors:
        return None
    first = errors[0] if isinstance(errors[0], dict) else {}
    return str(first.get("code", "")), str(first.get("message", ""))[:500]


def _quota_fix(code: str, message: str) -> str:
    if "QUOTA" in code.upper() or "quota" in message.lower():
        return (
            "the project's GPU quota in that region is used up: delete VMs you no longer "
            "need, or ask for more at https://console.cloud.google.com/iam-admin/quotas "
            "(GPUs (all regions) and the region's GPU model quota)"
        )
    return "fix the request or the project as Google says"


class GCPCluster(RentedCluster[GCP, _VM]):
    """One pool's VMs on Compute Engine (see the module)."""

    needs_reaper = False  # its VMs delete themselves at the end of their lease

    name = "gcp"
    cloud = "Compute Engine"
    error = GCPError
    thing = "VM"
    end_wait = 180.0
    _api: _API

    def __init__(
        self, config: GCP, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        self._zone_of: dict[str, str] = {}  # each VM's zone, by name

    def _body(self, name: str, zone: str, shape: _Shape, data: str) -> dict[str, Any]:
        """The insert's body (Compute Engine's ``Instance`` resource)."""
        scheduling: dict[str, Any] = {"onHostMaintenance": "TERMINATE", "automaticRestart": False}
        if self._choice.spot:
            scheduling = {
                **scheduling,
                "provisioningModel": "SPOT",
                "instanceTerminationAction": "DELETE",
            }
        body: dict[str, Any] = {
            "name": name,
            "machineType": f"zones/{zone}/machineTypes/{shape.machine_type}",
            "disks": [
                {
                    "boot": True,
                    "autoDelete": True,
                    "initializeParams": {
                        "sourceImage": self.config.image,
                        "diskSizeGb": str(self.config.disk_gb),
                    },
                }
            ],
            "networkInterfaces": [
                {
                    "network": "global/networks/default",
                    "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}],
                }
            ],
            "metadata": {
                "items": [
                    {"key": "ssh-keys", "value": f"{self.config.username}:{self._public_key}"},
                    {"key": "user-data", "value": data},
                ]
            },
            "labels": {LABEL: self.job_id},
            "scheduling": scheduling,
            "serviceAccounts": [{"email": "default", "scopes": [_VM_SCOPE]}],
        }
        if shape.attached:
            body["guestAccelerators"] = [
                {
                    "acceleratorType": f"zones/{zone}/acceleratorTypes/{shape.gpu}",
                    "acceleratorCount": shape.count,
                }
            ]
        return body

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Insert one VM of the first shape and zone that has room: its name and offer."""
        data = user_data(self._public_key, host_key)
        refused: list[str] = []
        quota: tuple[str, str] | None = None
        for offer in self._offers:
            shape = _shape_of(offer)
            for zone in self._regions(offer):
                url = self._api.compute(f"/zones/{zone}/instances")
                response = await self._api.request(
                    "POST", url, json=self._body(name, zone, shape, data)
                )
                if response.status_code == 200:
                    self._live.add(name)
                    self._zone_of[name] = zone
                    failed = await self._operation(zone, response_object(response))
                    if failed is None:
                        return name, offer
                    await self._end(name)  # an insert that failed may leave a VM listed
                    code, message = failed
                else:
                    error = response_object(response).get("error") or {}
                    reasons = [e.get("reason", "") for e in error.get("errors") or []]
                    code = str(next(iter(reasons), "") or error.get("status", ""))
                    message = _describe_failure(response)
                said = f"{code} {message}".upper()
                if any(word in said for word in _TRY_ELSEWHERE) or "QUOTA" in code.upper():
                    refused.append(f"{offer.name} in {zone} ({code})")
                    if "QUOTA" in code.upper():
                        quota = (code, message)
                    continue
                raise GCPError(
                    f"Compute Engine refused to create {offer.name} in {zone} ({code}: "
                    f"{message}); {_quota_fix(code, message)}"
                )
        fix = (
            _quota_fix(*quota)
            if quota is not None
            else "try again later, or widen the spec (another accelerator, zone=None)"
        )
        raise GCPError(
            "Compute Engine has no room now for any of this spec's GPU shapes in any zone "
            f"(refused: {', '.join(refused) or 'none listed'}); {fix}"
        )

    async def _operation(self, zone: str, operation: Mapping[str, Any]) -> tuple[str, str] | None:
        """Wait for a zone's Operation to finish (``wait`` answers when it is done, or
        after a while: asked again): its error, or None."""
        delays = poll_delays()
        while operation.get("status") != "DONE":
            name = operation.get("name")
            if not isinstance(name, str):
                raise GCPError(f"Compute Engine answered no Operation to wait for: {operation}")
            url = self._api.compute(f"/zones/{zone}/operations/{name}/wait")
            response = await self._api.request("POST", url)
            if response.status_code != 200:
                raise GCPError(f"Compute Engine did not say how {name} went {_said(response)}")
            operation = response_object(response)
            if operation.get("status") != "DONE":
                await trio.sleep(next(delays))
        return _operation_error(operation)

    async def _get(self, machine_id: str) -> _VM | None:
        """The VM as Compute Engine sees it now; None once it is gone."""
        zone = self._zone_of[machine_id]
        url = self._api.compute(f"/zones/{zone}/instances/{machine_id}")
        response = await self._api.request("GET", url)
        if response.status_code == 404:
            return None
        found = _vm(response_object(response), zone)
        if response.status_code != 200 or found is None:
            raise GCPError(f"Compute Engine did not say how VM {machine_id} is {_said(response)}")
        return found

    def _address(self, machine: _VM) -> tuple[str, str] | None:
        if machine.status == "RUNNING" and machine.ip is not None:
            return machine.ip, machine.private_ip or machine.ip
        return None

    def _failed(self, machine: _VM) -> str | None:
        if machine.status in ("STOPPING", "TERMINATED", "SUSPENDING", "SUSPENDED"):
            return (
                f"Compute Engine stopped VM {machine.id} ({machine.status}) before it came up "
                "(a spot VM reclaimed, or a host error)"
            )
        return None

    def _running(self, machine: _VM) -> bool:
        return machine.status in ("PROVISIONING", "STAGING", "RUNNING")

    async def _request_end(self, machine_id: str) -> str | None:
        """Delete the VM and wait for the Operation."""
        zone = self._zone_of[machine_id]
        url = self._api.compute(f"/zones/{zone}/instances/{machine_id}")
        response = await self._api.request("DELETE", url)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            return _said(response)
        failed = await self._operation(zone, response_object(response))
        if failed is not None and failed[0] != "RESOURCE_NOT_FOUND":
            return f"({failed[0]}: {failed[1]})"
        return None

    async def _listed(self) -> list[_VM]:
        """The job's VMs, by its label, in every zone."""
        listed = await self._api.aggregated("instances", filter=f"labels.{LABEL}={self.job_id}")
        found: list[_VM] = []
        for zone, entries in listed.items():
            for body in entries:
                vm = _vm(body, zone)
                if vm is not None:
                    self._zone_of.setdefault(vm.id, vm.zone)
                    found.append(vm)
        return found

    def _left_behind(self, failed: str) -> str:
        return (
            "sky.GCP could not confirm every VM of this pool deleted; these may still bill: "
            f"{failed}. Check Compute Engine's console for VMs named {self._prefix}* (label "
            f"{LABEL}={self.job_id})"
        )

    async def provision(self, node: int) -> Instance:
        """A VM up and reachable (see :class:`RentedCluster`), which deletes itself when
        its worker's lease runs out."""
        instance = await super().provision(node)
        price = self._choice.hourly_price if self._choice.spot else instance.hourly_price
        return attrs.evolve(
            instance,
            on_lease_expiry=self_delete_command(self.config.api_url),
            hourly_price=price,
            # Compute Engine warns a spot VM about 30 s before it preempts it (worker.py
            # watches the metadata server's instance/preempted).
            interruption_notices="gcp" if self._choice.spot else None,
        )
