"""``sky.MassedCompute``: GPU VMs rented from Massed Compute, through its VM API v1.

Massed Compute's VM API (``https://vm.massedcompute.com/api/v1``, the key as a bearer token)
lists its GPU inventory (``GET /gpu-inventory``: ``{"gpu_inventory": {...}}``, each entry an
``instance_type`` with its ``name`` such as ``gpu_1x_l40s``, its ``price_cents_per_hour``
and ``specs``, the ``regions_with_capacity_available`` and ``capacity_available``). Each
product whose GPU Skyward names (:data:`GPU_MODELS`, by the ``gpu_<N>x_<model>`` name) and
that has capacity becomes one :class:`Offer` of its N GPUs. A node is one instance of the
cheapest such product (``POST /instance/launch``); when Massed Compute refuses a launch and
its inventory then shows the product out of capacity (in the region asked for), the next
product (``Choice.also``) is tried.

Massed Compute's launch takes a startup ``command`` (and names of SSH keys registered with
the account, which Skyward does not use): Skyward's (:data:`STARTUP`, as one ``sh -c``
argument) writes the pool's public key and a host key made for the instance, then runs
sshd on port 22 with exactly those (the image's own sshd is stopped first). The client
waits until sshd on the instance's ``ip`` presents that host key: no trust on first use.
The host key's private half is in the instance's ``command_startup``, which Massed Compute
shows to the account's API key and console, and to no one else.

The launch's answer is not read (Massed Compute does not document it): the instance is
found by its name (``instanceName``, ``skyward-<job>-<node>-<n>``) in the list of running
instances (``GET /instance``), polled by its ``uuid`` (``GET /instance/{uuid}``; an
instance no longer there reads as an empty answer) until it has an ``ip`` and its OS has
booted, and ended with ``POST /instance/terminate`` (``{"instanceUuids": [...]}``), polled
again until it is gone. ``aclose`` terminates every instance of the job Massed Compute
lists, one whose launch answer never came included. An instance whose client vanished is
not ended by itself: Massed Compute gives an instance no credential of its own and the
account's API key is not shipped to it, so it bills until it is terminated; the worker
exits when its lease runs out.

The API key travels only in the ``Authorization`` header; errors quote Massed Compute's
answer, which never holds it.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._model import MassedCompute
from ._offers import Offer
from ._providers import KeyedAPI, failure_words, poll_delays, response_object, said
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_MODELS", "STARTUP", "MassedComputeCluster", "MassedComputeError", "catalog"]

#: A product's GPU (the ``<model>`` of its ``gpu_<N>x_<model>`` name) and what it is.
#: Products of other GPUs are not offered.
GPU_MODELS: Mapping[str, Accelerator] = {
    "h100": accelerators.H100(),
    "a100": accelerators.A100(),
    "l40s": accelerators.L40S(),
    "l40": accelerators.L40(),
    "a6000": accelerators.RTX_A6000(),
    "rtx6000ada": accelerators.RTX_6000_Ada(),
}
# "gpu_1x_l40s", "gpu_8x_h100": the GPUs per instance, then the model, then maybe a variant
# ("gpu_1x_l40s_b").
_PRODUCT = re.compile(r"gpu_(?P<count>[1-9]\d?)x_(?P<model>[a-z0-9]+)(?:_[a-z0-9]+)*")
#: How long a launched instance may take to be listed before that is an error.
_LIST_WAIT = 60.0

#: The instance's startup command: authorize the pool's key for root, install the host key
#: made for the instance, stop the image's sshd and run one with exactly those on port 22.
#: POSIX sh; no single quote, so it travels as one ``sh -c '...'`` argument. ``@KEY@`` and
#: ``@HOST_KEY@`` are the pool's public key and the host key (base64).
STARTUP = (
    "set -e; umask 077; "
    'D="${HOME:-/root}/.skyward-ssh"; mkdir -p "$D"; '
    'printf "%s\\n" "@KEY@" > "$D/authorized_keys"; '
    'printf "%s" "@HOST_KEY@" | base64 -d > "$D/host_key"; '
    "umask 022; "
    "if command -v systemctl >/dev/null 2>&1; then "
    "systemctl stop ssh.socket ssh.service sshd.service >/dev/null 2>&1 || true; fi; "
    "mkdir -p /run/sshd 2>/dev/null || true; "
    "SSHD=$(command -v sshd || echo /usr/sbin/sshd); "
    '"$SSHD" -o Port=22 -o "HostKey=$D/host_key" -o "AuthorizedKeysFile=$D/authorized_keys" '
    "-o PasswordAuthentication=no -o PermitRootLogin=prohibit-password"
)


def startup_command(public_key: str, host_key: _transport.SSHKey) -> str:
    """The launch's ``command``: :data:`STARTUP` with the pool's ``public_key`` and the
    instance's ``host_key``, as one ``sh -c`` argument."""
    if any(c in public_key for c in "'\"\\$`\n"):
        raise ValueError("the pool's public key holds a character a shell would read")
    private = base64.b64encode(_transport.private_openssh(host_key)).decode()
    script = STARTUP.replace("@KEY@", public_key).replace("@HOST_KEY@", private)
    return f"sh -c '{script}'"


class MassedComputeError(RuntimeError):
    """Massed Compute's API refused a request or could not be reached; the message quotes
    it."""


def _describe_failure(response: httpx.Response) -> str:
    """Massed Compute's own words for a failed request (its ``message`` or ``error``), else
    the body."""
    body = response_object(response)
    for field in ("message", "error"):
        words = body.get(field)
        if isinstance(words, str) and words.strip():
            return failure_words(response, words)
    return failure_words(response)


_said = functools.partial(said, describe=_describe_failure)


class _API(KeyedAPI[MassedCompute]):
    """Massed Compute's VM API."""

    cloud = "Massed Compute"
    error = MassedComputeError
    key_fix = (
        "check MASSED_COMPUTE_API_KEY or MassedCompute(api_key=...), and make a new key in "
        "Massed Compute's API settings if it was deleted"
    )

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    async def inventory(self) -> dict[str, dict[str, Any]]:
        """The GPU inventory, by its keys."""
        response = await self.request("GET", "/gpu-inventory")
        listed = response_object(response).get("gpu_inventory")
        if response.status_code != 200 or not isinstance(listed, dict):
            raise MassedComputeError(
                f"Massed Compute did not list its GPU inventory {_said(response)}"
            )
        return {str(k): v for k, v in listed.items() if isinstance(v, dict)}

    async def instances(self) -> list[dict[str, Any]]:
        """Every running instance of the account."""
        response = await self.request("GET", "/instance")
        listed = response_object(response).get("runningInstances")
        if response.status_code != 200 or not isinstance(listed, list):
            raise MassedComputeError(f"Massed Compute did not list its instances {_said(response)}")
        return [i for i in listed if isinstance(i, dict)]


def gpu_model(name: str) -> tuple[Accelerator, int] | None:
    """The GPU a product of this name has and how many; None for one Skyward does not name."""
    match = _PRODUCT.fullmatch(name.strip().lower())
    if match is None:
        return None
    accelerator = GPU_MODELS.get(match["model"])
    if accelerator is None:
        return None
    return accelerator, int(match["count"])


def _regions(entry: Mapping[str, Any]) -> tuple[str, ...]:
    listed = entry.get("regions_with_capacity_available")
    if not isinstance(listed, list):
        return ()
    names = (r.get("name") for r in listed if isinstance(r, dict))
    return tuple(n for n in names if isinstance(n, str) and n)


def _has_capacity(entry: Mapping[str, Any], region: str | None) -> bool:
    capacity = entry.get("capacity_available")
    regions = _regions(entry)
    return (
        isinstance(capacity, int)
        and capacity > 0
        and bool(regions)
        and (region is None or region in regions)
    )


def _offer(entry: Mapping[str, Any], region: str | None) -> Offer | None:
    """One inventory entry as an offer, or None if its GPU is not one Skyward names or it
    has no capacity (in ``region``)."""
    kind = entry.get("instance_type")
    if not isinstance(kind, dict) or not isinstance(kind.get("name"), str):
        return None
    found = gpu_model(kind["name"])
    cents = positive_number(kind.get("price_cents_per_hour"))
    if found is None or cents is None or not _has_capacity(entry, region):
        return None
    accelerator, count = found
    specs = kind.get("specs") if isinstance(kind.get("specs"), dict) else {}
    assert isinstance(specs, dict)
    regions = _regions(entry)
    return Offer(
        provider="sky.MassedCompute()",
        name=kind["name"],
        vcpus=positive_number(specs.get("vcpu_count")),
        memory_gb=positive_number(specs.get("memory_gib")),
        disk_gb=positive_number(specs.get("storage_gb")),
        architecture="x86_64",
        regions=regions if region is None else (region,),
        on_demand_price=round(cents / 100, 4),
        accelerator=attrs.evolve(accelerator, count=count),
        ref=kind["name"],
    )


async def _listed(api: _API, config: MassedCompute, wanted: int) -> list[Offer | None]:
    return [_offer(e, config.region) for e in (await api.inventory()).values()]


#: Massed Compute's GPU products with ``gpus`` of ``accelerator``'s model and capacity,
#: each an offer; with ``everything`` and no accelerator, every such product Skyward names.
catalog = GPUCatalog(
    "sky.MassedCompute() rents GPU instances",
    MassedCompute.resolved_api_key,
    _API,
    _listed,
    MassedComputeError,
)


@attrs.frozen
class _Instance:
    """What the API says of one running instance."""

    id: str
    name: str
    status: str  # "rented" once it is the account's
    ip: str
    booted: bool
    active: bool


def _flag(value: object) -> bool:
    return value is True or (isinstance(value, int | str) and str(value) == "1")


def _instance(body: object) -> _Instance | None:
    if not isinstance(body, dict) or not isinstance(body.get("uuid"), str) or not body["uuid"]:
        return None
    ip = body.get("ip")
    return _Instance(
        id=body["uuid"],
        name=str(body.get("name") or ""),
        status=str(body.get("status", "")),
        ip=ip if isinstance(ip, str) else "",
        booted=_flag(body.get("os_booted")),
        active=_flag(body.get("active")),
    )


#: Words of a refused launch that mean the account cannot pay.
_NO_MONEY = ("billing", "balance", "credit", "recharge", "payment", "funds")


def _refusal_fix(response: httpx.Response) -> str:
    words = _describe_failure(response).lower()
    if any(word in words for word in _NO_MONEY):
        return (
            "set up billing (a recharge amount and threshold) in Massed Compute's account "
            "settings, as its launch requires"
        )
    if "quota" in words or "limit" in words:
        return "terminate instances you no longer need, or ask Massed Compute for a higher limit"
    if "image" in words:
        return "pass MassedCompute(image_id=...) an id GET /images lists"
    return "fix the request or the account as Massed Compute says"


class MassedComputeCluster(RentedCluster[MassedCompute, _Instance]):
    """One pool's instances on Massed Compute (see the module)."""

    name = "massedcompute"
    cloud = "Massed Compute"
    error = MassedComputeError
    ending = ("terminate", "terminating", "terminated")
    _api: _API

    def __init__(self, config: MassedCompute, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._api = _API(config)

    def _region(self) -> str:
        return self.config.region or self._choice.spec.region or "any"

    def _launch_body(self, name: str, offer: Offer, host_key: _transport.SSHKey) -> dict[str, Any]:
        assert offer.ref is not None
        return {
            "imageId": self.config.image_id,
            "productName": offer.ref,
            "regionName": self._region(),
            "instanceName": name,
            "command": startup_command(self._public_key, host_key),
        }

    async def _out_of_capacity(self, product: str) -> bool:
        """Whether the inventory now shows ``product`` without capacity in the region."""
        region = self._region()
        for entry in (await self._api.inventory()).values():
            kind = entry.get("instance_type")
            if isinstance(kind, dict) and kind.get("name") == product:
                return not _has_capacity(entry, None if region == "any" else region)
        return True  # no longer listed at all

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Launch one instance of the first product Massed Compute has capacity for, find
        it by name: its uuid and that product's offer."""
        refused: list[str] = []
        for offer in self._offers:
            body = self._launch_body(name, offer, host_key)
            response = await self._api.request("POST", "/instance/launch", json=body)
            if response.is_success:
                return await self._found(name), offer
            assert offer.ref is not None
            if await self._out_of_capacity(offer.ref):
                refused.append(f"{offer.name} {_said(response)}")
                continue
            raise MassedComputeError(
                f"Massed Compute refused to launch an instance of {offer.name} "
                f"{_said(response)}; {_refusal_fix(response)}"
            )
        raise MassedComputeError(
            "Massed Compute has no capacity now for any of this spec's GPU products (refused: "
            f"{'; '.join(refused)}); try again later, or widen the spec (another "
            "accelerator, region=None)"
        )

    async def _found(self, name: str) -> str:
        """The uuid of the instance just launched as ``name``, once it is listed (added to
        ``_live`` at once)."""
        delays = poll_delays()
        with trio.move_on_after(_LIST_WAIT):
            while True:
                for listed in await self._api.instances():
                    found = _instance(listed)
                    if found is not None and found.name == name:
                        self._live.add(found.id)
                        return found.id
                await trio.sleep(next(delays))
        raise MassedComputeError(
            f"Massed Compute accepted the launch of {name} but did not list it within "
            f"{_LIST_WAIT:g} s; the pool's close terminates it if it shows up, else check "
            "Massed Compute's console"
        )

    async def _get(self, machine_id: str) -> _Instance | None:
        """The instance as Massed Compute sees it now; None once it is gone (its answer for
        an instance it does not have is empty)."""
        response = await self._api.request("GET", f"/instance/{machine_id}")
        if response.status_code == 404:
            return None
        body = response_object(response)
        if response.status_code != 200 or "runningInstance" not in body:
            raise MassedComputeError(
                f"Massed Compute did not say how instance {machine_id} is {_said(response)}"
            )
        found = _instance(body["runningInstance"])
        return found if found is not None and found.id == machine_id else None

    def _address(self, machine: _Instance) -> tuple[str, str] | None:
        """Up once active, booted and with an IP."""
        if machine.active and machine.booted and machine.ip:
            return machine.ip, machine.ip
        return None

    def _failed(self, machine: _Instance) -> str | None:
        if machine.status.lower() in ("failed", "error", "terminated"):
            return f"Massed Compute's instance {machine.id} is {machine.status} before it came up"
        return None

    def _running(self, machine: _Instance) -> bool:
        return machine.active

    async def _request_end(self, machine_id: str) -> str | None:
        """Terminate the instance; one Massed Compute no longer has ("No valid VMs found")
        is ended already."""
        body = {"instanceUuids": [machine_id]}
        response = await self._api.request("POST", "/instance/terminate", json=body)
        if response.is_success or response.status_code == 404:
            return None
        if "no valid vms found" in _describe_failure(response).lower():
            return None
        return _said(response)

    async def _listed(self) -> list[_Instance]:
        found = (_instance(i) for i in await self._api.instances())
        return [i for i in found if i is not None]
