"""``sky.Hyperstack``: GPU virtual machines rented from Hyperstack, through its Infrahub API.

Hyperstack lists its flavors (``GET /core/flavors``: GPUs, vCPUs, RAM and disk per region,
with whether each is in stock now) and prices what a VM runs on in its pricebook
(``GET /pricebook``: USD per hour per GPU, by the GPU's name). Each flavor whose GPU
Skyward can name becomes one :class:`Offer`, priced at its GPUs' hourly price. A node is
one VM of the cheapest flavor with the spec's GPUs: created in the first region that has
it in stock, and when Hyperstack refuses it there and its listing no longer shows it in
stock, in the next region, then as the next flavor (``Choice.also``).

A VM lives in an environment, a named home in one region: Skyward keeps one per region,
``skyward-<region>``, found by name or made once, and never deletes it (it holds nothing
once the pool's VMs and keypairs are gone). The pool's public key is imported into the
environment as the keypair ``skyward-<job>-<region>`` and deleted when the pool closes.
Each VM is created with a public (floating) IP, a firewall rule that lets SSH in from
``ssh_cidr`` (Hyperstack lets nothing in by default), and cloud-init user data
(``_aws.user_data``) with a host key made for it, so the client verifies the host key
from its first connection, as for ``sky.AWS``.

Nothing is left billing by a pool that closes: every VM is named
``skyward-<job>-<node>-<n>``; ``terminate`` deletes a VM and confirms it is gone, and
``aclose`` deletes every VM of the job still listed, one whose create was cut short
before its answer included. A VM whose client vanished is not ended by itself: Hyperstack
gives a VM no credential of its own, an OS shutdown leaves it SHUTOFF, not deleted (and,
as far as Hyperstack's docs say, still billed), and the account's key is not shipped to
the node. The worker exits when its lease runs out; the VM bills until it is deleted (the
docs say so).

The API key travels only in the ``api_key`` header; errors quote Hyperstack's answer,
which never holds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._aws import user_data
from ._model import Hyperstack
from ._offers import Choice, Offer
from ._providers import KeyedAPI, failure_words, response_json, response_object, said
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_MODELS", "HyperstackCluster", "HyperstackError", "catalog"]

#: A flavor's ``gpu`` as Hyperstack names it, and the GPU it is. Flavors with other GPUs
#: (and the ``-spot`` ones: Skyward rents on demand here) are not offered.
GPU_MODELS: Mapping[str, Accelerator] = {
    "A100-80G-PCIe": accelerators.A100(memory="80GB", form_factor="PCIe"),
    "A100-80G-PCIe-NVLink": accelerators.A100(memory="80GB", form_factor="PCIe"),
    "A100-80G-SXM4": accelerators.A100(memory="80GB", form_factor="SXM"),
    "H100-80G-PCIe": accelerators.H100(form_factor="PCIe"),
    "H100-80G-PCIe-NVLink": accelerators.H100(form_factor="PCIe"),
    "H100-80G-SXM5": accelerators.H100(form_factor="SXM"),
    "H200-141G-SXM5": accelerators.H200(form_factor="SXM"),
    "B200-SXM": accelerators.B200(),
    "L40": accelerators.L40(),
    "A40": accelerators.A40(),
    "RTX-A6000": accelerators.RTX_A6000(),
}

#: The statuses of a VM that runs or is on its way to running.
_UP = frozenset({"CREATING", "BUILD", "ACTIVE", "STARTING", "REBOOTING"})
#: How long a deleted VM may still be listed before that is an error.
_DELETE_WAIT = 120.0


class HyperstackError(RuntimeError):
    """Hyperstack's API refused a request or could not be reached; the message quotes it."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def _reason(response: httpx.Response) -> str | None:
    reason = response_object(response).get("error_reason")
    return reason if isinstance(reason, str) else None


def _describe_failure(response: httpx.Response) -> str:
    """Hyperstack's own words for a failed request (its message and error reason), else
    the body."""
    body = response_object(response)
    return failure_words(
        response, ": ".join(str(body[k]) for k in ("message", "error_reason") if body.get(k))
    )


def _refused(what: str, response: httpx.Response) -> HyperstackError:
    """The error of a request Hyperstack refused: what it did not do, in its words."""
    return HyperstackError(
        f"Hyperstack did not {what} {said(response, _describe_failure)}",
        _reason(response),
    )


def _ok(response: httpx.Response) -> dict[str, Any] | None:
    """The body of a successful answer (HTTP 2xx with ``"status": true``), or None."""
    body = response_object(response)
    return body if response.is_success and body.get("status") is True else None


class _API(KeyedAPI[Hyperstack]):
    """Hyperstack's Infrahub API v1."""

    cloud = "Hyperstack"
    error = HyperstackError
    key_fix = (
        "check HYPERSTACK_API_KEY or Hyperstack(api_key=...), and make a new key in "
        "Hyperstack's console (API Keys) if it was deleted"
    )

    def key_headers(self, key: str) -> dict[str, str]:
        return {"api_key": key}

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    def key_refused(self, response: httpx.Response) -> bool:
        # A 403 is the key's scope or another environment's resource: said as it is.
        return response.status_code == 401

    def failure(self, message: str, response: httpx.Response | None = None) -> Exception:
        return HyperstackError(message, None if response is None else _reason(response))

    async def flavors(self, region: str | None = None) -> list[dict[str, Any]]:
        """Every flavor, one entry per region it is listed in (``region``'s only, if set)."""
        query = f"?region={region}" if region is not None else ""
        response = await self.request("GET", f"/core/flavors{query}")
        groups = (_ok(response) or {}).get("data")
        if not isinstance(groups, list):
            raise _refused("list its flavors", response)
        return [
            flavor
            for group in groups
            if isinstance(group, dict) and isinstance(group.get("flavors"), list)
            for flavor in group["flavors"]
            if isinstance(flavor, dict)
        ]

    async def prices(self) -> dict[str, float]:
        """The pricebook: USD per hour by resource name (a GPU's, for GPUs)."""
        response = await self.request("GET", "/pricebook")
        listed = response_json(response)  # a bare list: this one has no envelope
        if response.status_code != 200 or not isinstance(listed, list):
            raise _refused("list its pricebook", response)
        prices: dict[str, float] = {}
        for entry in listed:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                value = positive_number(entry.get("value"))
                if value is not None:
                    prices[entry["name"]] = value
        return prices


def offers_of(
    config: Hyperstack, flavors: Sequence[Mapping[str, Any]], prices: Mapping[str, float]
) -> tuple[Offer, ...]:
    """Hyperstack's flavors as offers, one per flavor name, in the order first listed.

    A flavor's regions are those where it is in stock now (the configured one only, when
    set); one in stock nowhere has no price, so a spec's refusal says Hyperstack has none.
    Its price is its GPUs' in the pricebook: vCPUs, RAM and the root disk come with them.
    """
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for flavor in flavors:
        gpu, name = flavor.get("gpu"), flavor.get("name")
        count = flavor.get("gpu_count")
        if (
            isinstance(name, str)
            and isinstance(gpu, str)
            and gpu in GPU_MODELS
            and isinstance(count, int)
            and count > 0
        ):
            by_name.setdefault(name, []).append(flavor)
    found: list[Offer] = []
    for name, listed in by_name.items():
        first = listed[0]
        gpu, count = str(first["gpu"]), int(first["gpu_count"])
        regions = tuple(
            dict.fromkeys(
                str(f["region_name"])
                for f in listed
                if f.get("stock_available") is True
                and isinstance(f.get("region_name"), str)
                and config.region in (None, f["region_name"])
            )
        )
        each = prices.get(gpu)
        found.append(
            Offer(
                provider="sky.Hyperstack()",
                name=name,
                vcpus=positive_number(first.get("cpu")),
                memory_gb=positive_number(first.get("ram")),
                disk_gb=positive_number(first.get("disk")),
                architecture="x86_64",
                regions=regions,
                on_demand_price=round(each * count, 4) if each is not None and regions else None,
                accelerator=attrs.evolve(GPU_MODELS[gpu], count=count),
            )
        )
    return tuple(found)


async def _listed(api: _API, config: Hyperstack, wanted: int) -> tuple[Offer, ...]:
    flavors = await api.flavors(config.region)
    return offers_of(config, flavors, await api.prices())


#: Hyperstack's flavors with ``gpus`` of ``accelerator``'s model, each an offer; with
#: ``everything`` and no accelerator, every flavor with GPUs Skyward names.
catalog = GPUCatalog(
    "sky.Hyperstack() rents GPU virtual machines",
    Hyperstack.resolved_api_key,
    _API,
    _listed,
    HyperstackError,
)


@attrs.frozen
class _VM:
    """What the API says of one virtual machine."""

    id: str
    name: str
    status: str  # CREATING, BUILD, ACTIVE, ERROR, SHUTOFF, DELETING, ...
    floating_ip: str | None
    fixed_ip: str | None


def vm_of(body: object) -> _VM | None:
    """A VM as the API shows it (its id is a number, kept as text), or None."""
    if not isinstance(body, dict):
        return None
    vm_id = body.get("id")
    if not isinstance(vm_id, int) or isinstance(vm_id, bool):
        return None
    floating, fixed = body.get("floating_ip"), body.get("fixed_ip")
    return _VM(
        id=str(vm_id),
        name=str(body.get("name") or ""),
        status=str(body.get("status") or "").upper(),
        floating_ip=floating if isinstance(floating, str) and floating else None,
        fixed_ip=fixed if isinstance(fixed, str) and fixed else None,
    )


def _refusal(flavor: str, region: str, response: httpx.Response) -> str:
    """Why a create was refused, with the fix where Hyperstack's words say what it is."""
    quoted = said(response, _describe_failure)
    words = quoted.lower()
    if "quota" in words:
        return (
            f"Hyperstack refused to create {flavor} in {region}: the account's quota is used "
            f"up {quoted}. Delete VMs you no longer need, or ask Hyperstack's support to raise "
            "the quota"
        )
    if "balance" in words or "credit" in words:
        return (
            f"Hyperstack refused to create {flavor} in {region}: the account lacks credit "
            f"{quoted}. Add credit in Hyperstack's console (Billing)"
        )
    return f"Hyperstack did not create {flavor} in {region} {quoted}"


class HyperstackCluster(RentedCluster[Hyperstack, _VM]):
    """One pool's virtual machines on Hyperstack (see the module)."""

    name = "hyperstack"
    cloud = "Hyperstack"
    error = HyperstackError
    thing = "VM"
    end_wait = _DELETE_WAIT
    _api: _API

    def __init__(
        self, config: Hyperstack, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        self._setup_lock = trio.Lock()
        self._environments: dict[str, str] = {}  # region -> environment name
        self._keypairs: dict[str, str] = {}  # region -> the imported keypair's name

    def _keypair_name(self, region: str) -> str:
        return f"{self._prefix}{region.lower()}"

    @staticmethod
    def _environment_name(region: str) -> str:
        return f"skyward-{region.lower()}"

    async def _environment(self, region: str) -> str:
        """The environment Skyward keeps in ``region``: found by name, else made (the caller
        holds the setup lock)."""
        if region in self._environments:
            return self._environments[region]
        name = self._environment_name(region)
        for attempt in range(2):
            listed = await self._api.request("GET", "/core/environments")
            environments = (_ok(listed) or {}).get("environments")
            if not isinstance(environments, list):
                raise _refused("list the environments", listed)
            for env in environments:
                if isinstance(env, dict) and env.get("name") == name:
                    if env.get("region") != region:
                        raise HyperstackError(
                            f"Hyperstack's environment {name} is in region {env.get('region')}, "
                            f"not {region}; rename or delete it in Hyperstack's console"
                        )
                    self._environments[region] = name
                    return name
            if attempt:
                break
            made = await self._api.request(
                "POST", "/core/environments", json={"name": name, "region": region}
            )
            if _ok(made) is not None:
                self._environments[region] = name
                return name
            if made.status_code != 409:  # 409: made meanwhile by another pool; list again
                raise _refused(f"make the environment {name} in {region}", made)
        raise HyperstackError(f"Hyperstack neither made nor listed the environment {name}")

    async def _keypair(self, region: str) -> tuple[str, str]:
        """The environment in ``region`` and the pool's keypair imported there, made by the
        first node that needs them."""
        async with self._setup_lock:
            environment = await self._environment(region)
            if region not in self._keypairs:
                name = self._keypair_name(region)
                body = {
                    "name": name,
                    "environment_name": environment,
                    "public_key": self._public_key,
                }
                response = await self._api.request("POST", "/core/keypairs", json=body)
                key = (_ok(response) or {}).get("keypair")
                if not isinstance(key, dict) or key.get("name") != name:
                    raise _refused(f"import the pool's SSH key as {name}", response)
                self._keypairs[region] = name
        return environment, self._keypairs[region]

    async def _in_stock(self, flavor: str, region: str) -> bool:
        """Whether Hyperstack still lists ``flavor`` in stock in ``region`` (True when it
        cannot say: the refusal then stands as it was worded)."""
        try:
            listed = await self._api.flavors(region)
        except HyperstackError:
            return True
        return any(
            f.get("name") == flavor and f.get("region_name") == region and f.get("stock_available")
            for f in listed
        )

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Create one VM of the first flavor and region with stock: its id and flavor."""
        data = user_data(self._public_key, host_key)
        sold_out: list[str] = []
        for offer in self._offers:
            for region in self._regions(offer):
                environment, key = await self._keypair(region)
                body = {
                    "name": name,
                    "environment_name": environment,
                    "image_name": self.config.image,
                    "flavor_name": offer.name,
                    "key_name": key,
                    "count": 1,
                    "assign_floating_ip": True,
                    "user_data": data,
                    "security_rules": [
                        {
                            "direction": "ingress",
                            "ethertype": "IPv4",
                            "protocol": "tcp",
                            "remote_ip_prefix": self.config.ssh_cidr,
                            "port_range_min": 22,
                            "port_range_max": 22,
                        }
                    ],
                }
                response = await self._api.request("POST", "/core/virtual-machines", json=body)
                made = (_ok(response) or {}).get("instances")
                vms = [vm_of(v) for v in made] if isinstance(made, list) else []
                if len(vms) == 1 and vms[0] is not None:
                    self._live.add(vms[0].id)
                    return vms[0].id, offer
                # Hyperstack words no refusal for stock apart from the others: a refused
                # create whose flavor its listing no longer shows in stock is one.
                if response.status_code in (400, 409) and not await self._in_stock(
                    offer.name, region
                ):
                    sold_out.append(f"{offer.name} in {region}")
                    continue
                raise HyperstackError(_refusal(offer.name, region, response), _reason(response))
        raise HyperstackError(
            "Hyperstack has no stock now for any flavor and region of this spec "
            f"(sold out: {', '.join(sold_out) or 'none listed in stock'}); try again later, "
            "or widen the spec (another accelerator, region=None)"
        )

    async def _get(self, machine_id: str) -> _VM | None:
        """The VM as Hyperstack sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/core/virtual-machines/{machine_id}")
        if response.status_code == 404:
            return None
        found = vm_of((_ok(response) or {}).get("instance"))
        if found is None:
            raise _refused(f"say how VM {machine_id} is", response)
        return found

    def _address(self, machine: _VM) -> tuple[str, str] | None:
        """Up once active with its public IP."""
        if machine.status == "ACTIVE" and machine.floating_ip is not None:
            return machine.floating_ip, machine.fixed_ip or machine.floating_ip
        return None

    def _failed(self, machine: _VM) -> str | None:
        if machine.status not in _UP:
            return f"VM {machine.id} ended before it came up ({machine.status})"
        return None

    def _running(self, machine: _VM) -> bool:
        """False once it errs, stops or is deleted."""
        return machine.status in _UP

    def _ended(self, machine: _VM) -> bool:
        return machine.status == "DELETED"

    async def _request_end(self, machine_id: str) -> str | None:
        response = await self._api.request("DELETE", f"/core/virtual-machines/{machine_id}")
        if response.status_code == 404 or _ok(response) is not None:
            return None
        return said(response, _describe_failure)

    async def _listed(self) -> list[_VM]:
        response = await self._api.request("GET", "/core/virtual-machines")
        found = (_ok(response) or {}).get("instances")
        if not isinstance(found, list):
            raise _refused("list the VMs", response)
        return [vm for vm in map(vm_of, found) if vm is not None]

    def _releases(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [(f"the keypairs {self._prefix}*", self._delete_keypairs)]

    def _left_behind(self, failed: str) -> str:
        return (
            "sky.Hyperstack could not confirm every VM of this pool deleted and its "
            f"keypairs deleted; these may still bill: {failed}. Check Hyperstack's console "
            f"for VMs and keypairs named {self._prefix}*"
        )

    async def _delete_keypairs(self) -> None:
        """Delete the pool's keypairs: those imported, and any of their names (an import
        whose answer never came)."""
        listed = await self._api.request("GET", "/core/keypairs")
        keys = (_ok(listed) or {}).get("keypairs")
        if not isinstance(keys, list):
            raise _refused("list the keypairs", listed)
        ids = sorted(
            str(k["id"])
            for k in keys
            if isinstance(k, dict)
            and isinstance(k.get("name"), str)
            and k["name"].startswith(self._prefix)
            and isinstance(k.get("id"), int)
        )
        for key_id in ids:
            # The one path in the singular: Hyperstack deletes a keypair at /core/keypair/{id}.
            response = await self._api.request("DELETE", f"/core/keypair/{key_id}")
            if response.status_code != 404 and _ok(response) is None:
                raise _refused(f"delete keypair {key_id}", response)
        self._keypairs.clear()
