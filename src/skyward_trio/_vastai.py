"""``sky.VastAI``: GPU machines rented on Vast.ai's marketplace, through its REST API.

Vast's offers are machines, each with its GPUs, vCPUs, RAM, disk and prices (on demand,
and the least bid for an interruptible instance); each becomes one :class:`Offer` here,
so a spec's constraints judge real machines. A node is one instance on the cheapest that
meets them; a machine rented meanwhile by someone else gives way to the next. The pool's
public key is attached to the instance, which Vast's SSH launch mode installs for root;
the client waits until the instance runs and sshd answers on its direct port, pins the
host key presented then (Vast publishes none: trust on first use, for that instance
only) and logs in once to learn the home directory.

Nothing is left billing: every instance is labelled ``skyward-<job>-<node>-<n>``;
``terminate`` destroys an instance and confirms it gone, and ``aclose`` destroys every
instance of the job still listed, one whose create was cut short before its answer
included. An instance whose client vanished destroys itself when the worker's lease runs
out, with the key Vast gives each instance (``CONTAINER_API_KEY``).

The API key travels only in the ``Authorization`` header; errors quote Vast's answer,
which never holds it.
"""

from __future__ import annotations

import functools
import math
import shlex
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._model import VastAI
from ._offers import Catalog, Choice, Offer
from ._providers import (
    Instance,
    KeyedAPI,
    ended_on_failure,
    failure_words,
    first_host_key,
    poll_delays,
    remote_workdir,
    response_json,
    response_object,
    said,
)
from ._rented import whole_gpus
from ._version import PYTHON_VERSION
from .accelerators import Accelerator

__all__ = ["GPU_NAMES", "VastAICluster", "VastAIError", "catalog"]


def _a100(gpu_ram_mb: float, form: Literal["SXM", "PCIe"]) -> Accelerator:
    if gpu_ram_mb > 60_000:
        return accelerators.A100(memory="80GB", form_factor=form)
    return accelerators.A100(memory="40GB", form_factor=form)


#: Vast's GPU names and what each is, given the machine's ``gpu_ram`` in MB (it tells the
#: A100's sizes apart). GPUs not listed here are not offered (an accelerator Skyward
#: cannot name could not be asked for).
GPU_NAMES: Mapping[str, Callable[[float], Accelerator]] = {
    "RTX 4090": lambda mb: accelerators.RTX_4090(),
    "RTX 5090": lambda mb: accelerators.RTX_5090(),
    "RTX A6000": lambda mb: accelerators.RTX_A6000(),
    "RTX 6000Ada": lambda mb: accelerators.RTX_6000_Ada(),
    "A100 SXM4": lambda mb: _a100(mb, "SXM"),
    "A100 PCIE": lambda mb: _a100(mb, "PCIe"),
    "H100 SXM": lambda mb: accelerators.H100(form_factor="SXM"),
    "H100 PCIE": lambda mb: accelerators.H100(form_factor="PCIe"),
    "H100 NVL": lambda mb: accelerators.H100(form_factor="NVL"),
    "H200": lambda mb: accelerators.H200(),
    "B200": lambda mb: accelerators.B200(),
    "A40": lambda mb: accelerators.A40(),
    "A10": lambda mb: accelerators.A10(),
    "L4": lambda mb: accelerators.L4(),
    "L40": lambda mb: accelerators.L40(),
    "L40S": lambda mb: accelerators.L40S(),
    "Tesla T4": lambda mb: accelerators.T4(),
    "Tesla V100": lambda mb: accelerators.V100(),
}

#: The most machines one search lists (cheapest first).
_SEARCH_LIMIT = 200
#: What an instance runs to destroy itself when the worker's lease runs out: the
#: worker's interpreter, with the key Vast gives each instance for itself.
_SELF_DESTROY = (
    "import os, urllib.request as u\n"
    "r = u.Request({url!r} + '/instances/' + os.environ['CONTAINER_ID'] + '/', "
    "method='DELETE', headers={{'Authorization': 'Bearer ' + os.environ['CONTAINER_API_KEY']}})\n"
    "u.urlopen(r, timeout=30).read()\n"
)


class VastAIError(RuntimeError):
    """Vast.ai's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """Vast's own words for a failed request (its ``msg`` and ``error``, else the body)."""
    body = response_object(response)
    words = f"{body.get('error') or ''}: {body.get('msg') or ''}".strip(": ")
    return failure_words(response, words)


_said = functools.partial(said, describe=_describe_failure)


class _API(KeyedAPI[VastAI]):
    """Vast's REST API."""

    cloud = "Vast.ai"
    error = VastAIError
    key_fix = "check VAST_API_KEY or VastAI(api_key=...)"

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    async def search(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        response = await self.request("POST", "/bundles/", json=query)
        offers = response_object(response).get("offers")
        if response.status_code != 200 or not isinstance(offers, list):
            raise VastAIError(f"Vast.ai did not list its offers {_said(response)}")
        return [o for o in offers if isinstance(o, dict)]


def _query(config: VastAI, accelerator: Accelerator | None, gpus: int) -> dict[str, Any]:
    """Vast's search for free machines with ``gpus`` of the accelerator's model (None: of
    any model Skyward knows), cheapest first (each offer carries its on-demand price and
    its least interruptible bid)."""
    names = [
        name
        for name, make in GPU_NAMES.items()
        if accelerator is None or make(80_000).name == accelerator.name
    ]
    query: dict[str, Any] = {
        "gpu_name": {"in": names},
        "num_gpus": {"eq": gpus},
        "reliability2": {"gte": config.min_reliability},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "type": "on-demand",
        "order": [["dph_total", "asc"]],
        "limit": _SEARCH_LIMIT,
    }
    if config.verified_only:
        query["verified"] = {"eq": True}
    return query


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _offer(entry: Mapping[str, Any]) -> Offer | None:
    """One machine as an offer (its ``ref``: the ask id), or None if not offered."""
    make = GPU_NAMES.get(str(entry.get("gpu_name")))
    ask, gpus = entry.get("id"), entry.get("num_gpus")
    if make is None or not isinstance(ask, int) or not isinstance(gpus, int) or gpus < 1:
        return None
    ram, cpu_ram = _number(entry.get("gpu_ram")) or 0.0, _number(entry.get("cpu_ram"))
    where = entry.get("geolocation")
    return Offer(
        provider="sky.VastAI()",
        name=f"{entry['gpu_name']} x{gpus} (ask {ask})",
        vcpus=_number(entry.get("cpu_cores_effective")),
        memory_gb=round(cpu_ram / 1000, 1) if cpu_ram else None,
        disk_gb=_number(entry.get("disk_space")),
        architecture={"amd64": "x86_64", "arm64": "arm64"}.get(str(entry.get("cpu_arch"))),
        regions=(str(where),) if isinstance(where, str) and where else (),
        spot_price=_number(entry.get("min_bid")),
        on_demand_price=_number(entry.get("dph_total")),
        accelerator=attrs.evolve(make(ram), count=gpus),
        ref=str(ask),
    )


def _ask(offer: Offer) -> int:
    """The ask id of an offer :func:`_offer` made."""
    if offer.ref is None or not offer.ref.isdigit():
        raise ValueError(f"{offer.name}: not a Vast.ai machine listed by its search")
    return int(offer.ref)


async def catalog(
    config: VastAI, *, accelerator: Accelerator | None, gpus: float, everything: bool = False
) -> Catalog:
    """The machines offered now with ``accelerator`` (``gpus`` of them), each an offer;
    with ``everything`` and no accelerator, those of any GPU model Skyward knows.

    Raises:
        ValueError: No API key is set (a setting to fix, not a spec to skip).
    """
    config.resolved_api_key()
    if accelerator is None and not everything:
        return Catalog(error="sky.VastAI() rents GPU machines: pass an accelerator")
    api = _API(config)
    try:
        listed = await api.search(_query(config, accelerator, whole_gpus(gpus)))
    except VastAIError as exc:
        return Catalog(error=str(exc))
    finally:
        await api.aclose()
    offers = (_offer(entry) for entry in listed)
    return Catalog(offers=tuple(o for o in offers if o is not None))


@attrs.frozen
class _Instance:
    """What the API says of one instance."""

    id: int
    status: str | None  # actual_status: None, loading, running, exited, stopped, ...
    host: str | None
    port: int | None
    billed: float | None  # dph_total, what Vast bills for it


def _instance(body: object) -> _Instance | None:
    """The ``instances`` of a show-instance answer; None once the instance is gone."""
    found = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("id"), int):
        return None
    host, port = found.get("public_ipaddr"), None
    mapped = (
        (found.get("ports") or {}).get("22/tcp") if isinstance(found.get("ports"), dict) else None
    )
    if isinstance(mapped, list) and mapped and isinstance(mapped[0], dict):
        with_port = str(mapped[0].get("HostPort", ""))
        port = int(with_port) if with_port.isdigit() else None
    if not (isinstance(host, str) and host and port):  # no direct port: Vast's SSH proxy
        host, port = found.get("ssh_host"), found.get("ssh_port")
    status = found.get("actual_status")
    return _Instance(
        id=found["id"],
        status=status if isinstance(status, str) else None,
        host=host.strip() if isinstance(host, str) and host.strip() else None,
        port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        billed=_number(found.get("dph_total")),
    )


class VastAICluster:
    """One pool's instances on Vast.ai (see the module)."""

    name = "vastai"
    # Machines of a marketplace do not reach each other's private addresses: the
    # collections store runs in the client.
    peers_reachable = False

    def __init__(
        self,
        config: VastAI,
        *,
        job_id: str,
        client_key: _transport.SSHKey,
        choice: Choice,
        python_version: str = PYTHON_VERSION,
    ) -> None:
        self.config = config
        self.job_id = job_id
        self._choice = choice
        self._offers = [choice.offer, *choice.also]  # cheapest first after the chosen
        self._image = config.image_reference(python_version)
        self._disk = math.ceil(choice.spec.disk_gb or config.disk_gb)
        self._public_key = _transport.public_openssh(client_key)
        self._login = _transport.Login(keys=(client_key,), tried="the pool's own key")
        self._api = _API(config)
        self._serial = 0
        self._taken: set[int] = set()  # asks this pool rented, or found rented by others
        self._live: set[int] = set()  # instance ids created and not yet confirmed gone

    @property
    def _prefix(self) -> str:
        return f"skyward-{self.job_id}-"

    def _body(self, label: str, offer: Offer) -> dict[str, Any]:
        body: dict[str, Any] = {
            "client_id": "me",
            "image": self._image,
            "disk": self._disk,
            # SSH on a direct port of the machine (Vast's proxy stays as a fallback).
            "runtype": "ssh_direct",
            "label": label,
        }
        if self._choice.spot:
            body["price"] = offer.spot_price
        return body

    async def _create(self, node: int) -> tuple[int, Offer]:
        """Rent the cheapest machine of the spec still free: its instance id."""
        self._serial += 1
        label = f"{self._prefix}{node}-{self._serial}"
        gone: list[str] = []
        for offer in self._offers:
            ask = _ask(offer)
            if ask in self._taken:
                continue
            self._taken.add(ask)
            response = await self._api.request(
                "PUT", f"/asks/{ask}/", json=self._body(label, offer)
            )
            body = response_json(response)
            if response.status_code == 200 and isinstance(body, dict) and body.get("success"):
                instance_id = int(body["new_contract"])
                self._live.add(instance_id)
                return instance_id, offer
            if isinstance(body, dict) and body.get("error") == "no_such_ask":
                gone.append(offer.name)  # rented by someone else since it was listed
                continue
            raise VastAIError(f"Vast.ai did not rent {offer.name} {_said(response)}")
        raise VastAIError(
            "no machine of this spec is left to rent on Vast.ai"
            + (f" ({', '.join(gone)} were rented meanwhile)" if gone else "")
            + "; try again, or widen the spec (another accelerator, a higher max_hourly_cost)"
        )

    async def provision(self, node: int) -> Instance:
        """Rent a machine, attach the pool's key, wait for sshd, pin its host key and learn
        its home."""
        instance_id, offer = await self._create(node)
        async with ended_on_failure(lambda: self._destroy(instance_id), VastAIError):
            response = await self._api.request(
                "POST", f"/instances/{instance_id}/ssh/", json={"ssh_key": self._public_key}
            )
            if response.status_code != 200:
                raise VastAIError(
                    f"Vast.ai did not attach the pool's key to instance {instance_id} "
                    f"{_said(response)}"
                )
            running = await self._running(instance_id)
            self._check_price(running)
            assert running.host is not None
            assert running.port is not None
            host_key = await first_host_key(running.host, running.port)
            workdir = await remote_workdir(
                running.host,
                running.port,
                user="root",
                login=self._login,
                host_key=host_key,
                name=f"{self.job_id}-{node}",
            )
        price = offer.spot_price if self._choice.spot else offer.on_demand_price
        return Instance(
            id=str(instance_id),
            node=node,
            host=running.host,
            port=running.port,
            username="root",
            host_key=host_key,
            private_ip=running.host,
            public_ip=running.host,
            python=None,
            workdir=workdir,
            hourly_price=running.billed or price or self._choice.hourly_price,
            on_lease_expiry='"$SKYWARD_PYTHON" -c '
            + shlex.quote(_SELF_DESTROY.format(url=self.config.api_url.rstrip("/"))),
        )

    def _check_price(self, instance: _Instance) -> None:
        """Refuse an instance Vast bills above ``Spec.max_hourly_cost``: it is destroyed
        before it runs anything."""
        cap = self._choice.spec.max_hourly_cost
        if cap is not None and instance.billed is not None and instance.billed > cap:
            raise VastAIError(
                f"Vast.ai bills instance {instance.id} ${instance.billed:g}/h, over "
                f"max_hourly_cost={cap:g}; the instance was destroyed. Raise "
                "max_hourly_cost or try again later"
            )

    async def _get(self, instance_id: int) -> _Instance | None:
        """The instance as Vast sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/instances/{instance_id}/")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise VastAIError(
                f"Vast.ai did not say how instance {instance_id} is {_said(response)}"
            )
        return _instance(response_json(response))

    async def _running(self, instance_id: int) -> _Instance:
        """Poll until the instance runs with an SSH address (the caller's deadline)."""
        delays = poll_delays()
        while True:
            now = await self._get(instance_id)
            if now is None:
                raise VastAIError(f"instance {instance_id} was destroyed before it came up")
            if now.status in ("exited", "stopped", "offline"):
                raise VastAIError(
                    f"instance {instance_id} stopped before it came up ({now.status})"
                )
            if now.status == "running" and now.host is not None and now.port is not None:
                return now
            await trio.sleep(next(delays))

    async def alive(self, instance: Instance) -> bool:
        """Whether Vast still runs the instance (False once outbid or destroyed)."""
        try:
            now = await self._get(int(instance.id))
        except VastAIError:
            return True  # the API did not answer: the reconnection finds out
        return now is not None and now.status in ("running", "loading", None)

    async def terminate(self, instance: Instance) -> None:
        """Destroy the instance and confirm Vast no longer lists it; raise otherwise."""
        await self._destroy(int(instance.id))

    async def _destroy(self, instance_id: int) -> None:
        response = await self._api.request("DELETE", f"/instances/{instance_id}/")
        if response.status_code not in (200, 204, 404):
            raise VastAIError(
                f"Vast.ai did not destroy instance {instance_id} {_said(response)}; "
                f"destroy it in Vast's console"
            )
        if await self._get(instance_id) is not None:
            raise VastAIError(
                f"Vast.ai still lists instance {instance_id} after destroying it; destroy it "
                "in Vast's console"
            )
        self._live.discard(instance_id)

    async def aclose(self) -> None:
        """Destroy every instance of this job still there, those never handed out included
        (a create cut short before Vast answered); raise naming any left."""
        failed: list[str] = []
        try:
            with trio.move_on_after(60) as scope:
                unlisted = await self._find_strays()
                if unlisted is not None:
                    failed.append(unlisted)
                for instance_id in sorted(self._live):
                    try:
                        await self._destroy(instance_id)
                    except VastAIError as exc:
                        failed.append(f"{instance_id} ({exc})")
            if scope.cancelled_caught:
                failed.append("no answer from Vast.ai within 60 s")
        finally:
            await self._api.aclose()
        if failed:
            raise VastAIError(
                "sky.VastAI could not confirm every instance of this pool destroyed; these "
                f"may still bill: {'; '.join(failed)}. Check Vast's console for instances "
                f"labelled {self._prefix}*"
            )

    async def _find_strays(self) -> str | None:
        """Add the job's instances Vast lists to those to destroy; or say why it could not
        list them."""
        try:
            listed = await self._api.request("GET", "/instances/")
        except VastAIError as exc:
            return f"the job's instances could not be listed: {exc}"
        found = response_object(listed).get("instances")
        if listed.status_code != 200 or not isinstance(found, list):
            return f"the job's instances could not be listed {_said(listed)}"
        for entry in found:
            if isinstance(entry, dict) and str(entry.get("label", "")).startswith(self._prefix):
                self._live.add(int(entry["id"]))
        return None
