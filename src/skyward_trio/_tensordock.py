"""``sky.TensorDock``: GPU virtual machines rented from TensorDock's marketplace, through its
API v2.

TensorDock's API v2 (``https://dashboard.tensordock.com/api/v2``, the API token as a bearer
token) lists its locations (``GET /locations``: each with the GPUs it deploys, each GPU
model by its ``v0Name`` with ``max_count``, ``price_per_hr`` and the price of each vCPU,
GB of RAM and GB of storage beside it). Each location's GPU model that Skyward names and
that deploys the spec's GPU count is one :class:`Offer` (its ``ref`` the ``v0Name``, its
one region the location's id), at the GPUs' price plus the vCPUs, RAM and storage asked
for. A node is one VM of the cheapest offer (``POST /instances``); when TensorDock refuses
it for capacity, the next offer (``Choice.also``: another location, then another model)
is tried.

A VM is created with a dedicated IP (``useDedicatedIp``: its port 22 is sshd's, no port
forward), the pool's public key (``ssh_key``) and cloud-init (``cloud_init``:
``_aws.user_data``, with the host key made for the VM), so the client knows the host key
before it connects: no trust on first use. The host key's private half is in the VM's
cloud-init, which TensorDock keeps for the account's API token and console.

Nothing is left billing by a pool that closes: every VM is named
``skyward-<job>-<node>-<n>``; ending one deletes it (``DELETE /instances/{id}``) and polls
until TensorDock no longer has it, and ``aclose`` deletes every VM of the job TensorDock
lists (``GET /instances``, by name), one whose create answer never came included. A VM
whose client vanished is not ended by itself: TensorDock gives a VM no credential of its
own and the account's token is not shipped to it, so it bills until it is deleted; the
worker exits when its lease runs out.

The token travels only in the ``Authorization`` header; errors quote TensorDock's answer,
which never holds it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from . import _transport, accelerators
from ._aws import user_data
from ._model import TensorDock
from ._offers import Choice, Offer
from ._providers import KeyedAPI, failure_words, response_object, said
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_MODELS", "TensorDockCluster", "TensorDockError", "catalog"]

#: A GPU's ``v0Name`` as TensorDock writes it, and what it is. Models not listed are not
#: offered.
GPU_MODELS: Mapping[str, Accelerator] = {
    "h100-sxm5-80gb": accelerators.H100(form_factor="SXM"),
    "h100-pcie-80gb": accelerators.H100(form_factor="PCIe"),
    "a100-sxm4-80gb": accelerators.A100(form_factor="SXM", memory="80GB"),
    "a100-pcie-80gb": accelerators.A100(form_factor="PCIe", memory="80GB"),
    "a100-pcie-40gb": accelerators.A100(form_factor="PCIe", memory="40GB"),
    "l40s-pcie-48gb": accelerators.L40S(),
    "l40-pcie-48gb": accelerators.L40(),
    "l4-pcie-24gb": accelerators.L4(),
    "a40-pcie-48gb": accelerators.A40(),
    "rtxa6000-pcie-48gb": accelerators.RTX_A6000(),
    "rtx6000ada-pcie-48gb": accelerators.RTX_6000_Ada(),
    "geforcertx5090-pcie-32gb": accelerators.RTX_5090(),
    "geforcertx4090-pcie-24gb": accelerators.RTX_4090(),
    "rtx4090-24gb": accelerators.RTX_4090(),
}


class TensorDockError(RuntimeError):
    """TensorDock's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """TensorDock's own words for a failed request (its ``errors``' titles and details, or
    an ``error``/``message``), else the body."""
    body = response_object(response)
    words: list[str] = []
    errors = body.get("errors")
    for error in errors if isinstance(errors, list) else ():
        if isinstance(error, dict):
            parts = [error.get(k) for k in ("title", "detail")]
            text = ": ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
            if text:
                words.append(text)
    for field in ("error", "message"):
        value = body.get(field)
        if not words and isinstance(value, str) and value.strip():
            words.append(value.strip())
    return failure_words(response, "; ".join(words)) if words else failure_words(response)


_said = functools.partial(said, describe=_describe_failure)


class _API(KeyedAPI[TensorDock]):
    """TensorDock's API v2."""

    cloud = "TensorDock"
    error = TensorDockError
    key_fix = (
        "check TENSORDOCK_API_TOKEN or TensorDock(api_key=...), and make a new token at "
        "https://dashboard.tensordock.com/developers if it was deleted"
    )

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    async def locations(self) -> list[dict[str, Any]]:
        """Every location, with the GPUs it deploys."""
        response = await self.request("GET", "/locations")
        data = response_object(response).get("data")
        listed = data.get("locations") if isinstance(data, dict) else None
        if response.status_code != 200 or not isinstance(listed, list):
            raise TensorDockError(f"TensorDock did not list its locations {_said(response)}")
        return [loc for loc in listed if isinstance(loc, dict)]

    async def instances(self) -> list[dict[str, Any]]:
        """Every instance of the account."""
        response = await self.request("GET", "/instances")
        data = response_object(response).get("data")
        listed = data.get("instances") if isinstance(data, dict) else data
        if response.status_code != 200 or not isinstance(listed, list):
            raise TensorDockError(f"TensorDock did not list its instances {_said(response)}")
        return [i for i in listed if isinstance(i, dict)]


def _offer(
    config: TensorDock, location: Mapping[str, Any], gpu: object, wanted: int
) -> Offer | None:
    """One location's GPU model as an offer of VMs with ``wanted`` of it, or None if the
    model is not one Skyward names, or the location cannot deploy that many."""
    if not isinstance(gpu, dict):
        return None
    name = gpu.get("v0Name")
    accelerator = GPU_MODELS.get(name) if isinstance(name, str) else None
    per_gpu = positive_number(gpu.get("price_per_hr"))
    most = gpu.get("max_count")
    location_id = location.get("id")
    if (
        accelerator is None
        or per_gpu is None
        or not isinstance(most, int)
        or most < wanted
        or not isinstance(location_id, str)
        or not location_id
    ):
        return None
    resources = gpu.get("resources") if isinstance(gpu.get("resources"), dict) else {}
    pricing = gpu.get("pricing") if isinstance(gpu.get("pricing"), dict) else {}
    assert isinstance(resources, dict)
    assert isinstance(pricing, dict)

    def capped(asked: int, field: str) -> int:
        limit = positive_number(resources.get(field))
        return min(asked, int(limit)) if limit is not None else asked

    vcpus = capped(config.vcpus_per_gpu * wanted, "max_vcpus")
    ram = capped(config.ram_gb_per_gpu * wanted, "max_ram_gb")
    storage = config.storage_gb

    def rate(field: str) -> float:
        return positive_number(pricing.get(field)) or 0.0

    price = (
        per_gpu * wanted
        + vcpus * rate("per_vcpu_hr")
        + ram * rate("per_gb_ram_hr")
        + storage * rate("per_gb_storage_hr")
    )
    city = location.get("city")
    where = city if isinstance(city, str) and city else location_id
    return Offer(
        provider="sky.TensorDock()",
        name=f"{wanted}x {name} ({where})",
        vcpus=float(vcpus),
        memory_gb=float(ram),
        disk_gb=float(storage),
        architecture="x86_64",
        regions=(location_id,),
        on_demand_price=round(price, 5),
        accelerator=attrs.evolve(accelerator, count=wanted),
        ref=name,
    )


async def _listed(api: _API, config: TensorDock, wanted: int) -> list[Offer | None]:
    found: list[Offer | None] = []
    for location in await api.locations():
        if config.location not in (None, location.get("id")):
            continue
        gpus_there = location.get("gpus")
        for gpu in gpus_there if isinstance(gpus_there, list) else ():
            found.append(_offer(config, location, gpu, wanted))
    return found


#: TensorDock's locations' GPUs with ``gpus`` of ``accelerator``'s model (in
#: ``config.location`` when it is set), each an offer; with ``everything`` and no
#: accelerator, every one Skyward names.
catalog = GPUCatalog(
    "sky.TensorDock() rents GPU VMs", TensorDock.resolved_api_key, _API, _listed, TensorDockError
)


@attrs.frozen
class _Instance:
    """What the API says of one VM."""

    id: str
    name: str
    status: str  # starting, running, stopping, stopped, deleting, deleted, error
    ip: str | None


def _instance(body: object) -> _Instance | None:
    """A VM from a get's ``data`` or one entry of the list (``{type, id, attributes}``; a
    flat object read alike)."""
    if not isinstance(body, dict):
        return None
    fields = body.get("attributes") if isinstance(body.get("attributes"), dict) else body
    assert isinstance(fields, dict)
    instance_id = body.get("id")
    if not isinstance(instance_id, str) or not instance_id:
        return None
    ip = fields.get("ipAddress")
    return _Instance(
        id=instance_id,
        name=str(fields.get("name") or ""),
        status=str(fields.get("status", "")),
        ip=ip if isinstance(ip, str) and ip else None,
    )


#: Words of a refused create that mean the location has no capacity left for it.
_NO_CAPACITY = (
    "no available",
    "not available",
    "insufficient",
    "not enough",
    "out of stock",
    "no capacity",
)
#: Words of a refused create that mean the account cannot pay.
_NO_MONEY = ("balance", "credit", "funds", "payment", "deposit")


def _refusal_fix(response: httpx.Response) -> str:
    words = _describe_failure(response).lower()
    if any(word in words for word in _NO_MONEY):
        return (
            "add funds to the account at https://dashboard.tensordock.com/billing "
            "(TensorDock creates a VM only with a balance of at least $1)"
        )
    if "limit" in words or "quota" in words:
        return "delete VMs you no longer need, or ask TensorDock for a higher limit"
    return "fix the request or the account as TensorDock says"


def _no_capacity(response: httpx.Response) -> bool:
    words = _describe_failure(response).lower()
    return not any(w in words for w in _NO_MONEY) and any(w in words for w in _NO_CAPACITY)


class TensorDockCluster(RentedCluster[TensorDock, _Instance]):
    """One pool's VMs on TensorDock (see the module)."""

    name = "tensordock"
    cloud = "TensorDock"
    error = TensorDockError
    thing = "VM"
    _api: _API

    def __init__(
        self, config: TensorDock, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        disk = choice.spec.disk_gb
        self._storage = max(100, math.ceil(disk)) if disk is not None else config.storage_gb

    def _create_body(
        self, name: str, offer: Offer, location: str, host_key: _transport.SSHKey
    ) -> dict[str, Any]:
        assert offer.accelerator is not None
        assert offer.ref is not None
        count = int(offer.accelerator.count)
        vcpus = int(offer.vcpus or self.config.vcpus_per_gpu * count)
        ram = int(offer.memory_gb or self.config.ram_gb_per_gpu * count)
        return {
            "data": {
                "type": "virtualmachine",
                "attributes": {
                    "name": name,
                    "type": "virtualmachine",
                    "image": self.config.image,
                    "location_id": location,
                    "useDedicatedIp": True,
                    "ssh_key": self._public_key,
                    "cloud_init": user_data(self._public_key, host_key),
                    "resources": {
                        "vcpu_count": vcpus,
                        "ram_gb": ram,
                        "storage_gb": self._storage,
                        "gpus": {offer.ref: {"count": count}},
                    },
                },
            }
        }

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Create one VM of the first offer and location TensorDock has capacity for: its id
        and that offer."""
        refused: list[str] = []
        for offer in self._offers:
            for location in self._regions(offer):
                body = self._create_body(name, offer, location, host_key)
                response = await self._api.request("POST", "/instances", json=body)
                data = response_object(response).get("data")
                made = data.get("id") if isinstance(data, dict) else None
                if response.status_code in (200, 201) and isinstance(made, str) and made:
                    self._live.add(made)
                    return made, offer
                if _no_capacity(response):
                    refused.append(f"{offer.name} {_said(response)}")
                    continue
                raise TensorDockError(
                    f"TensorDock refused to create a VM of {offer.name} {_said(response)}; "
                    f"{_refusal_fix(response)}"
                )
        raise TensorDockError(
            "TensorDock has no capacity now for any of this spec's GPU offers (refused: "
            f"{'; '.join(refused) or 'none was in the region asked for'}); try again later, "
            "or widen the spec (another accelerator, location=None)"
        )

    async def _get(self, machine_id: str) -> _Instance | None:
        """The VM as TensorDock sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/instances/{machine_id}")
        if response.status_code == 404:
            return None
        found = _instance(response_object(response).get("data"))
        if response.status_code != 200 or found is None:
            raise TensorDockError(
                f"TensorDock did not say how VM {machine_id} is {_said(response)}"
            )
        return found

    def _address(self, machine: _Instance) -> tuple[str, str] | None:
        """Up once running with its dedicated IP (also its only address Skyward knows)."""
        if machine.status == "running" and machine.ip is not None:
            return machine.ip, machine.ip
        return None

    def _failed(self, machine: _Instance) -> str | None:
        if machine.status in ("error", "stopping", "stopped", "deleting", "deleted"):
            return f"TensorDock's VM {machine.id} was {machine.status} before it came up"
        return None

    def _running(self, machine: _Instance) -> bool:
        return machine.status == "running"

    def _ended(self, machine: _Instance) -> bool:
        return machine.status == "deleted"

    async def _request_end(self, machine_id: str) -> str | None:
        """Delete the VM (whatever its state)."""
        response = await self._api.request("DELETE", f"/instances/{machine_id}")
        return None if response.status_code in (200, 204, 404) else _said(response)

    async def _listed(self) -> list[_Instance]:
        found = (_instance(i) for i in await self._api.instances())
        return [i for i in found if i is not None]
