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
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._aws import user_data
from ._model import Vultr
from ._offers import Catalog, Choice, Offer
from ._providers import (
    Instance,
    KeyedAPI,
    ended_on_failure,
    given_host_key,
    poll_delays,
    remote_workdir,
    response_json,
)
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
#: How long a deleted instance may stay listed before that is an error.
_DELETE_WAIT = 60.0


class VultrError(RuntimeError):
    """Vultr's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """Vultr's own words for a failed request (its ``error``), else the body."""
    body = response_json(response)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and error.strip():
        return error.strip()[:500]
    return response.text.strip()[:500] or f"HTTP {response.status_code}"


def _said(response: httpx.Response) -> str:
    return f"({response.status_code}: {_describe_failure(response)})"


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
        body = response_json(response)
        plans = body.get("available_plans") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(plans, list):
            raise VultrError(f"Vultr did not say what {region} has {_said(response)}")
        return {p for p in plans if isinstance(p, str)}


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


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
    hourly = _number(plan.get("hourly_cost"))
    if hourly is not None:
        return hourly
    monthly = _number(plan.get("monthly_cost"))
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
    ram, disk = _number(plan.get("ram")), _number(plan.get("disk"))
    return Offer(
        provider="sky.Vultr()",
        name=plan["id"],
        vcpus=_number(plan.get("vcpu_count")),
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


def _whole_gpus(count: float) -> int:
    """GPUs per instance: whole ones (a fractional count is refused before)."""
    return max(1, math.ceil(count))


async def catalog(
    config: Vultr, *, accelerator: Accelerator | None, gpus: float, everything: bool = False
) -> Catalog:
    """Vultr's Cloud GPU plans with ``gpus`` of ``accelerator``'s model, each an offer; with
    ``everything`` and no accelerator, every whole-GPU plan Skyward names.

    Raises:
        ValueError: No API key is set (a setting to fix, not a spec to skip).
    """
    config.resolved_api_key()  # before any request: the fix is the user's
    if accelerator is None and not everything:
        return Catalog(error="sky.Vultr() rents Cloud GPU instances: pass an accelerator")
    api = _API(config)
    try:
        offers = await _offers(api, config)
    except VultrError as exc:
        return Catalog(error=str(exc))
    finally:
        await api.aclose()
    wanted = _whole_gpus(gpus)
    return Catalog(
        offers=tuple(
            o
            for o in offers
            if o.accelerator is not None and (accelerator is None or o.accelerator.count == wanted)
        )
    )


@attrs.frozen
class _Instance:
    """What the API says of one instance."""

    id: str
    label: str
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
        label=str(body.get("label") or ""),
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


class VultrCluster:
    """One pool's instances on Vultr (see the module)."""

    name = "vultr"
    # Instances reach each other only through their public addresses, and sshd is the one
    # port the pool relies on: the collections store runs in the client.
    peers_reachable = False

    def __init__(
        self, config: Vultr, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        self.config = config
        self.job_id = job_id
        self._choice = choice
        self._offers = [choice.offer, *choice.also]  # cheapest first after the chosen
        self._public_key = _transport.public_openssh(client_key)
        self._login = _transport.Login(keys=(client_key,), tried="the pool's own key")
        self._api = _API(config)
        self._key_lock = trio.Lock()
        self._key_id: str | None = None  # the registered SSH key's id, once registered
        self._serial = 0
        self._live: set[str] = set()  # instance ids created and not confirmed deleted

    @property
    def _prefix(self) -> str:
        return f"skyward-{self.job_id}-"

    @property
    def _key_name(self) -> str:
        return f"skyward-{self.job_id}"

    async def _registered_key(self) -> str:
        """The pool's SSH key's id at Vultr, registered by the first node that needs it."""
        async with self._key_lock:
            if self._key_id is None:
                key = {"name": self._key_name, "ssh_key": self._public_key}
                response = await self._api.request("POST", "/ssh-keys", json=key)
                body = response_json(response)
                made = body.get("ssh_key") if isinstance(body, dict) else None
                if response.status_code not in (200, 201) or not isinstance(made, dict):
                    raise VultrError(
                        f"Vultr did not register the pool's SSH key {self._key_name} "
                        f"{_said(response)}"
                    )
                self._key_id = str(made["id"])
        return self._key_id

    def _regions(self, offer: Offer) -> Sequence[str]:
        region = self._choice.spec.region
        return [r for r in offer.regions if region in (None, r)]

    async def _create(self, node: int, data: str) -> tuple[str, Offer]:
        """Create one instance of the first plan and region that has it: its id and plan."""
        key = await self._registered_key()
        self._serial += 1
        label = f"{self._prefix}{node}-{self._serial}"
        refused: list[str] = []
        for offer in self._offers:
            for region in self._regions(offer):
                body = {
                    "region": region,
                    "plan": offer.name,
                    "os_id": self.config.os_id,
                    "sshkey_id": [key],
                    "label": label,
                    "hostname": label,
                    "tags": [self._key_name],
                    "user_data": base64.b64encode(data.encode()).decode(),
                }
                response = await self._api.request("POST", "/instances", json=body)
                answer = response_json(response)
                made = _instance(answer.get("instance") if isinstance(answer, dict) else None)
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

    async def provision(self, node: int) -> Instance:
        """Create an instance, wait until it runs with an address and sshd answers with the
        host key it was given, and learn its home."""
        host_key = _transport.generate_key()
        host_public = _transport.public_openssh(host_key)
        instance_id, offer = await self._create(node, user_data(self._public_key, host_key))
        async with ended_on_failure(lambda: self._delete(instance_id), VultrError):
            running = await self._running(instance_id)
            assert running.ip is not None
            await given_host_key(instance_id, running.ip, 22, host_public)
            user = self.config.username
            workdir = await remote_workdir(
                running.ip,
                22,
                user=user,
                login=self._login,
                host_key=host_public,
                name=f"{self.job_id}-{node}",
            )
        return Instance(
            id=instance_id,
            node=node,
            host=running.ip,
            port=22,
            username=user,
            host_key=host_public,
            private_ip=running.private_ip or running.ip,
            public_ip=running.ip,
            python=None,
            workdir=workdir,
            hourly_price=offer.on_demand_price or self._choice.hourly_price,
            # No on_lease_expiry: nothing on the instance can delete it (see the module).
        )

    async def _get(self, instance_id: str) -> _Instance | None:
        """The instance as Vultr sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/instances/{instance_id}")
        if response.status_code == 404:
            return None
        body = response_json(response)
        found = _instance(body.get("instance") if isinstance(body, dict) else None)
        if response.status_code != 200 or found is None:
            raise VultrError(f"Vultr did not say how instance {instance_id} is {_said(response)}")
        return found

    async def _running(self, instance_id: str) -> _Instance:
        """Poll until the instance is active, running, with an address (the caller's
        deadline)."""
        delays = poll_delays()
        while True:
            now = await self._get(instance_id)
            if now is None:
                raise VultrError(f"instance {instance_id} was deleted before it came up")
            if now.status == "suspended":
                raise VultrError(
                    f"Vultr suspended instance {instance_id} before it came up; see the "
                    "account's notices at https://my.vultr.com/"
                )
            if now.status == "active" and now.power_status == "running" and now.ip is not None:
                return now
            await trio.sleep(next(delays))

    async def alive(self, instance: Instance) -> bool:
        """Whether Vultr still runs the instance (False once stopped, suspended or gone)."""
        try:
            now = await self._get(instance.id)
        except VultrError:
            return True  # the API did not answer: the reconnection finds out
        return (
            now is not None
            and now.status in ("pending", "active")
            and now.power_status != "stopped"
        )

    async def terminate(self, instance: Instance) -> None:
        """Delete the instance and confirm Vultr no longer has it; raise otherwise."""
        await self._delete(instance.id)

    async def _delete(self, instance_id: str) -> None:
        response = await self._api.request("DELETE", f"/instances/{instance_id}")
        if response.status_code not in (200, 204, 404):
            raise VultrError(
                f"Vultr did not delete instance {instance_id} {_said(response)}; delete it "
                "in Vultr's console"
            )
        now: _Instance | None = None
        delays = poll_delays()
        with trio.move_on_after(_DELETE_WAIT):
            while True:
                now = await self._get(instance_id)
                if now is None:
                    self._live.discard(instance_id)
                    return
                await trio.sleep(next(delays))
        raise VultrError(
            f"Vultr still lists instance {instance_id} ({now.status if now else 'unknown'}) "
            f"{_DELETE_WAIT:g} s after deleting it; delete it in Vultr's console"
        )

    async def aclose(self) -> None:
        """Delete every instance of this job still there, those never handed out included
        (a create whose answer never came), and the pool's SSH key; raise naming anything
        left."""
        failed: list[str] = []
        try:
            with trio.move_on_after(120) as scope:
                unlisted = await self._find_strays()
                if unlisted is not None:
                    failed.append(unlisted)
                for instance_id in sorted(self._live):
                    try:
                        await self._delete(instance_id)
                    except VultrError as exc:
                        failed.append(f"{instance_id} ({exc})")
                try:
                    await self._delete_key()
                except VultrError as exc:
                    failed.append(f"the SSH key {self._key_name} ({exc})")
            if scope.cancelled_caught:
                failed.append("no answer from Vultr within 120 s")
        finally:
            await self._api.aclose()
        if failed:
            raise VultrError(
                "sky.Vultr could not confirm every instance of this pool deleted and its SSH "
                f"key deleted; these may still bill: {'; '.join(failed)}. Check Vultr's "
                f"console for instances labelled {self._prefix}* and the key {self._key_name}"
            )

    async def _find_strays(self) -> str | None:
        """Add the job's instances Vultr lists to those to delete; or say why it could not
        list them (an instance created but never answered for may then be left)."""
        try:
            listed = await self._api.pages("/instances", "instances")
        except VultrError as exc:
            return f"the job's instances could not be listed: {exc}"
        for entry in listed:
            instance = _instance(entry)
            if instance is not None and instance.label.startswith(self._prefix):
                self._live.add(instance.id)
        return None

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
