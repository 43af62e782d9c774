"""``sky.Vultr``: Cloud GPU instances rented from Vultr, through its API v2.

Vultr lists its Cloud GPU plans (``GET /plans?type=vcg``), each with its GPU type, the GPU
memory of the whole plan, vCPUs, RAM, disk, price and the regions it is sold in; a
region's availability (``GET /regions/{id}/availability``) lists the plans it can create
now. Each plan whose GPU Skyward names and whose memory is a whole number of those GPUs
becomes one :class:`Offer` (the fractional vGPU plans, a slice of one GPU, are not
offered). A node is one instance of the cheapest such plan with the spec's GPUs: created in
the first region whose availability lists it, and when Vultr refuses a create and that
region's availability no longer lists the plan, in the next region, then as the next plan
(``Choice.also``).

Vultr takes SSH keys by id: the pool's public key is registered once as ``skyward-<job>``
and deleted when the pool closes. The create also carries cloud-init user data
(``_aws.user_data``, base64 as the API wants it) with a host key made for the instance, so
the client verifies the host key from its first connection, as for ``sky.AWS``.

Nothing is left billing by a pool that closes: every instance is labelled
``skyward-<job>-<node>-<n>``; ``terminate`` deletes an instance and confirms Vultr no longer
has it, and ``aclose`` deletes every instance of the job still listed, one whose create was
cut short before its answer included. An instance whose client vanished is not deleted by
itself: Vultr gives an instance no credential of its own, a stopped instance still bills
(Vultr bills an instance until it is destroyed), and the account's key is not shipped to
the node. The worker exits when its lease runs out; the instance bills until it is deleted.

The API key travels only in the ``Authorization`` header; errors quote Vultr's answer,
which never holds it.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._aws import user_data
from ._model import Vultr
from ._offers import Choice, Offer
from ._providers import KeyedAPI, failure_words, response_json, response_object, said
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_TYPES", "VultrCluster", "VultrError", "catalog"]

#: Vultr's ``gpu_type`` of a plan, the GPU it is and that GPU's memory in GB (a plan's
#: ``gpu_vram_gb`` over it is its count of GPUs). Types not listed are not offered.
GPU_TYPES: Mapping[str, tuple[Accelerator, int]] = {
    "NVIDIA_A16": (accelerators.A16(), 16),
    "NVIDIA_A40": (accelerators.A40(), 48),
    "NVIDIA_A100": (accelerators.A100(memory="80GB"), 80),
    "NVIDIA_L40S": (accelerators.L40S(), 48),
    "NVIDIA_H100": (accelerators.H100(), 80),
    "AMD_MI300X": (accelerators.MI300X(), 192),
}
#: Hours in Vultr's month: a plan listed with a monthly cost only is priced per hour by it.
_HOURS_PER_MONTH = 730
#: What one page of a list holds (Vultr's largest).
_PER_PAGE = 500


class VultrError(RuntimeError):
    """Vultr's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """Vultr's own words for a failed request (its ``error``), else the body."""
    error = response_object(response).get("error")
    return failure_words(response, error if isinstance(error, str) else None)


_said = functools.partial(said, describe=_describe_failure)


class _API(KeyedAPI[Vultr]):
    """Vultr's API v2."""

    cloud = "Vultr"
    error = VultrError
    key_fix = (
        "check VULTR_API_KEY or Vultr(api_key=...), make a new key at "
        "https://my.vultr.com/settings/#settingsapi if it was deleted, and allow this "
        "machine's address in the key's access control there"
    )

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    async def pages(self, path: str, field: str, **query: str) -> list[dict[str, Any]]:
        """Every entry of a paginated list (``per_page`` and ``cursor``)."""
        found: list[dict[str, Any]] = []
        cursor = ""
        while True:
            params = {**query, "per_page": str(_PER_PAGE)} | ({"cursor": cursor} if cursor else {})
            response = await self.request("GET", f"{path}?{urlencode(params)}")
            body = response_json(response)
            entries = body.get(field) if isinstance(body, dict) else None
            if response.status_code != 200 or not isinstance(entries, list):
                raise VultrError(f"Vultr did not list {path.lstrip('/')} {_said(response)}")
            found.extend(e for e in entries if isinstance(e, dict))
            meta = body.get("meta")
            links = meta.get("links") if isinstance(meta, dict) else None
            following = links.get("next") if isinstance(links, dict) else None
            if not isinstance(following, str) or not following or following == cursor:
                return found
            cursor = following

    async def available(self, region: str) -> set[str]:
        """The plans ``region`` can create now."""
        response = await self.request("GET", f"/regions/{region}/availability?type=vcg")
        plans = response_object(response).get("available_plans")
        if response.status_code != 200 or not isinstance(plans, list):
            raise VultrError(f"Vultr did not say what {region} has {_said(response)}")
        return {p for p in plans if isinstance(p, str)}


def _gpus(plan: Mapping[str, Any]) -> tuple[Accelerator, int] | None:
    """The plan's GPU and how many whole ones it has; None for a GPU Skyward cannot name or a
    fraction of one."""
    known = GPU_TYPES.get(str(plan.get("gpu_type", "")))
    vram = plan.get("gpu_vram_gb")
    if known is None or not isinstance(vram, int) or isinstance(vram, bool) or vram <= 0:
        return None
    accelerator, each = known
    if vram % each != 0:
        return None
    return accelerator, vram // each


def _price(plan: Mapping[str, Any]) -> float | None:
    hourly = positive_number(plan.get("hourly_cost"))
    if hourly is not None:
        return hourly
    monthly = positive_number(plan.get("monthly_cost"))
    return round(monthly / _HOURS_PER_MONTH, 4) if monthly is not None else None


def _offer(plan: Mapping[str, Any], regions: Sequence[str]) -> Offer | None:
    """One plan as an offer, or None if its GPUs are not whole ones Skyward names. Its
    regions are those whose availability lists it now; a plan available nowhere has no
    price, so a spec's refusal says Vultr has none."""
    gpus = _gpus(plan)
    if gpus is None or not isinstance(plan.get("id"), str):
        return None
    accelerator, count = gpus
    price = _price(plan)
    ram, disk = positive_number(plan.get("ram")), positive_number(plan.get("disk"))
    return Offer(
        provider="sky.Vultr()",
        name=plan["id"],
        vcpus=positive_number(plan.get("vcpu_count")),
        memory_gb=round(ram / 1024, 1) if ram else None,  # Vultr lists RAM in MB
        disk_gb=disk,
        architecture="x86_64",
        regions=tuple(regions),
        on_demand_price=price if regions else None,
        accelerator=attrs.evolve(accelerator, count=count),
    )


def _locations(plan: Mapping[str, Any]) -> list[str]:
    """The regions a plan is sold in."""
    listed = plan.get("locations")
    return [r for r in listed if isinstance(r, str)] if isinstance(listed, list) else []


async def _offers(api: _API, config: Vultr) -> list[Offer]:
    """Every whole-GPU plan Skyward names, with the regions that can create it now."""
    plans = [p for p in await api.pages("/plans", "plans", type="vcg") if _gpus(p) is not None]
    sold = {str(r) for p in plans for r in _locations(p) if config.region in (None, r)}
    available = {region: await api.available(region) for region in sorted(sold)}
    found: list[Offer] = []
    for plan in plans:
        if config.region is not None and config.region not in _locations(plan):
            continue  # not sold in the one region asked for
        regions = [r for r in _locations(plan) if plan["id"] in available.get(r, ())]
        offer = _offer(plan, regions)
        if offer is not None:
            found.append(offer)
    return found


#: Vultr's Cloud GPU plans with ``gpus`` of ``accelerator``'s model, each an offer; with
#: ``everything`` and no accelerator, every whole-GPU plan Skyward names.
catalog = GPUCatalog(
    "sky.Vultr() rents Cloud GPU instances",
    Vultr.resolved_api_key,
    _API,
    lambda api, config, wanted: _offers(api, config),
    VultrError,
)


@attrs.frozen
class _Instance:
    """What the API says of one instance."""

    id: str
    name: str  # its label
    status: str  # pending, active, suspended, resizing
    power_status: str  # running, stopped
    ip: str | None  # main_ip, once assigned
    private_ip: str | None


def _instance(body: object) -> _Instance | None:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return None
    ip, internal = body.get("main_ip"), body.get("internal_ip")
    return _Instance(
        id=body["id"],
        name=str(body.get("label") or ""),
        status=str(body.get("status", "")),
        power_status=str(body.get("power_status", "")),
        ip=ip if isinstance(ip, str) and ip not in ("", "0.0.0.0") else None,
        private_ip=internal if isinstance(internal, str) and internal else None,
    )


def _refusal_fix(message: str) -> str:
    """What to do about a refused create, from Vultr's words for it."""
    said = message.lower()
    if "limit" in said or "quota" in said:
        return (
            "the account's limit is reached: delete instances you no longer need, or ask "
            "Vultr's support to raise it"
        )
    if "balance" in said or "payment" in said or "credit" in said or "funds" in said:
        return "add funds or a payment method at https://my.vultr.com/billing/"
    return "fix the request or the account as Vultr says"


class VultrCluster(RentedCluster[Vultr, _Instance]):
    """One pool's instances on Vultr (see the module)."""

    name = "vultr"
    cloud = "Vultr"
    error = VultrError
    _api: _API

    def __init__(
        self, config: Vultr, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        self._key_lock = trio.Lock()
        self._key_id: str | None = None  # the registered SSH key's id, once registered

    async def _registered_key(self) -> str:
        """The pool's SSH key's id at Vultr, registered by the first node that needs it."""
        async with self._key_lock:
            if self._key_id is None:
                key = {"name": self._key_name, "ssh_key": self._public_key}
                response = await self._api.request("POST", "/ssh-keys", json=key)
                made = response_object(response).get("ssh_key")
                if response.status_code not in (200, 201) or not isinstance(made, dict):
                    raise VultrError(
                        f"Vultr did not register the pool's SSH key {self._key_name} "
                        f"{_said(response)}"
                    )
                self._key_id = str(made["id"])
        return self._key_id

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Create one instance of the first plan and region that has it: its id and plan."""
        key = await self._registered_key()
        data = user_data(self._public_key, host_key)
        refused: list[str] = []
        for offer in self._offers:
            for region in self._regions(offer):
                body = {
                    "region": region,
                    "plan": offer.name,
                    "os_id": self.config.os_id,
                    "sshkey_id": [key],
                    "label": name,
                    "hostname": name,
                    "tags": [self._key_name],
                    "user_data": base64.b64encode(data.encode()).decode(),
                }
                response = await self._api.request("POST", "/instances", json=body)
                made = _instance(response_object(response).get("instance"))
                if response.status_code in (200, 201, 202) and made is not None:
                    self._live.add(made.id)
                    return made.id, offer
                if offer.name not in await self._api.available(region):
                    refused.append(f"{offer.name} in {region}")
                    continue
                raise VultrError(
                    f"Vultr refused to create {offer.name} in {region} {_said(response)}; "
                    f"{_refusal_fix(_describe_failure(response))}"
                )
        raise VultrError(
            "Vultr has none of this spec's plans available now in any region "
            f"(refused: {', '.join(refused) or 'none listed as available'}); try again later, "
            "or widen the spec (another accelerator, region=None)"
        )

    async def _get(self, machine_id: str) -> _Instance | None:
        """The instance as Vultr sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/instances/{machine_id}")
        if response.status_code == 404:
            return None
        found = _instance(response_object(response).get("instance"))
        if response.status_code != 200 or found is None:
            raise VultrError(f"Vultr did not say how instance {machine_id} is {_said(response)}")
        return found

    def _address(self, machine: _Instance) -> tuple[str, str] | None:
        """Up once active and running with an address."""
        up = machine.status == "active" and machine.power_status == "running"
        if up and machine.ip is not None:
            return machine.ip, machine.private_ip or machine.ip
        return None

    def _failed(self, machine: _Instance) -> str | None:
        if machine.status == "suspended":
            return (
                f"Vultr suspended instance {machine.id} before it came up; see the "
                "account's notices at https://my.vultr.com/"
            )
        return None

    def _running(self, machine: _Instance) -> bool:
        """False once stopped or suspended."""
        return machine.status in ("pending", "active") and machine.power_status != "stopped"

    async def _request_end(self, machine_id: str) -> str | None:
        response = await self._api.request("DELETE", f"/instances/{machine_id}")
        return None if response.status_code in (200, 204, 404) else _said(response)

    async def _listed(self) -> list[_Instance]:
        found = await self._api.pages("/instances", "instances")
        return [i for i in map(_instance, found) if i is not None]

    def _releases(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [(f"the SSH key {self._key_name}", self._delete_key)]

    def _left_behind(self, failed: str) -> str:
        return (
            "sky.Vultr could not confirm every instance of this pool deleted and its SSH "
            f"key deleted; these may still bill: {failed}. Check Vultr's console for "
            f"instances labelled {self._prefix}* and the key {self._key_name}"
        )

    async def _delete_key(self) -> None:
        """Delete the pool's SSH key: the one registered, and any of its name (a register
        whose answer never came)."""
        ids = {self._key_id} if self._key_id is not None else set()
        keys = await self._api.pages("/ssh-keys", "ssh_keys")
        ids |= {str(k["id"]) for k in keys if k.get("name") == self._key_name and "id" in k}
        for key_id in sorted(ids):
            response = await self._api.request("DELETE", f"/ssh-keys/{key_id}")
            if response.status_code not in (200, 204, 404):
                raise VultrError(f"Vultr did not delete it {_said(response)}")
        self._key_id = None
