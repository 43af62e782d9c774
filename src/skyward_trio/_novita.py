"""``sky.Novita``: GPU instances rented from Novita AI, through its GPU instance API.

Novita's GPU instance API (``/gpu-instance/openapi/v1``, the key as a bearer token) lists
its GPU products (``GET /products``: each a GPU model with its vCPUs, RAM and disk per GPU,
its price per GPU-hour, the regions that have it and ``availableDeploy``, whether it can be
deployed now). Each product whose GPU Skyward names and that can be deployed becomes one
:class:`Offer` of the spec's whole GPUs (Novita takes 1 to 8 per instance). A node is one
instance of the cheapest such product (``POST /gpu/instance/create``); when Novita answers
that it has no capacity left for it, the next product (``Choice.also``) is tried.

An instance is a container of ``Novita(docker_image=...)``. The image need not run sshd:
the create's ``command`` is Skyward's startup script (:data:`STARTUP`), which authorizes
the pool's public key (``SKYWARD_AUTHORIZED_KEY`` in the create's ``envs``), installs the
host key made for the instance (``SKYWARD_HOST_KEY``, base64), installs openssh-server
with apt-get when the image has no sshd, and runs sshd on the container's port 22. Novita
maps that port (``ports: "22/tcp"``) to a public ``host:port`` (the instance's
``portMappings``), which the client waits for, then waits until sshd there presents the
host key it was given: no trust on first use. The host key's private half is in the
instance's ``envs``, which Novita shows to the account's API key and console, and to
no one else.

Nothing is left billing by a pool that closes: every instance is named
``skyward-<job>-<node>-<n>``; ending one deletes it (``POST /gpu/instance/delete``) and
polls until Novita no longer has it, and ``aclose`` deletes every instance of the job
Novita lists (``GET /gpu/instances``, by name), one whose create answer never came
included. An instance whose client vanished is not ended by itself: Novita gives an
instance no credential of its own and the account's API key is not shipped to it, so it
bills until it is deleted; the worker exits when its lease runs out.

The API key travels only in the ``Authorization`` header; errors quote Novita's answer,
which never holds it.
"""

from __future__ import annotations

import base64
import functools
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx

from . import _transport, accelerators
from ._model import Novita
from ._offers import Choice, Offer
from ._providers import (
    KeyedAPI,
    failure_words,
    response_object,
    said,
)
from ._rented import GPUCatalog, RentedCluster, positive_number
from ._version import PYTHON_VERSION
from .accelerators import Accelerator

__all__ = ["GPU_MODELS", "STARTUP", "NovitaCluster", "NovitaError", "catalog"]

#: A product's GPU model (its name without the memory, as Novita writes it) and what it is.
#: Products not listed (an RTX 3090, which Skyward does not name) are not offered.
GPU_MODELS: Mapping[str, Accelerator] = {
    "H200 SXM": accelerators.H200(form_factor="SXM"),
    "H100 SXM": accelerators.H100(form_factor="SXM"),
    "H100 PCIe": accelerators.H100(form_factor="PCIe"),
    "H100 NVL": accelerators.H100(form_factor="NVL"),
    "A100 SXM": accelerators.A100(form_factor="SXM"),
    "A100 PCIe": accelerators.A100(form_factor="PCIe"),
    "B200": accelerators.B200(),
    "L40S": accelerators.L40S(),
    "L40": accelerators.L40(),
    "L4": accelerators.L4(),
    "RTX 6000 Ada": accelerators.RTX_6000_Ada(),
    "RTX A6000": accelerators.RTX_A6000(),
    "RTX PRO 6000": accelerators.RTX_PRO_6000(),
    "RTX 5090": accelerators.RTX_5090(),
    "RTX 4090": accelerators.RTX_4090(),
}
# "RTX 4090 24GB", "H100 SXM 80GB", "A100 SXM 40GB": the model, then one GPU's memory.
_PRODUCT = re.compile(r"(?P<model>.+?)\s+(?P<memory>\d+)\s*GB")
#: The most GPUs one instance has (Novita's ``gpuNum`` is 1 to 8).
MOST_GPUS = 8
#: Novita writes prices in units of 1/100,000 dollar per hour.
_PRICE_UNIT = 100_000
#: What one page of the instance list holds.
_PER_PAGE = 100

#: The instance's startup command: authorize the pool's key, install the host key made for
#: the instance, install sshd if the image lacks it, and run it in the foreground (the
#: container lives as long as sshd). POSIX sh; no single quote, so it travels as one
#: ``sh -c '...'`` argument.
STARTUP = (
    "set -e; "
    'umask 077; mkdir -p "$HOME/.ssh"; '
    'printf "%s\\n" "$SKYWARD_AUTHORIZED_KEY" > "$HOME/.ssh/authorized_keys"; '
    'printf "%s" "$SKYWARD_HOST_KEY" | base64 -d > "$HOME/.ssh/skyward_host_key"; '
    "umask 022; "
    "if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then "
    "export DEBIAN_FRONTEND=noninteractive; "
    "apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null; fi; "
    "mkdir -p /run/sshd 2>/dev/null || true; "
    "SSHD=$(command -v sshd || echo /usr/sbin/sshd); "
    'exec "$SSHD" -D -e -o Port=22 -o "HostKey=$HOME/.ssh/skyward_host_key" '
    '-o "AuthorizedKeysFile=$HOME/.ssh/authorized_keys" -o PasswordAuthentication=no '
    "-o PermitRootLogin=prohibit-password"
)


def startup_command() -> str:
    """The create's ``command``: :data:`STARTUP` as one ``sh -c`` argument."""
    return f"sh -c '{STARTUP}'"


class NovitaError(RuntimeError):
    """Novita's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """Novita's own words for a failed request (its ``reason`` and ``message``), else the
    body."""
    body = response_object(response)
    message, reason = body.get("message"), body.get("reason")
    if not isinstance(message, str) or not message.strip():
        return failure_words(response)
    text = message.strip()
    return failure_words(
        response, f"{reason}: {text}" if isinstance(reason, str) and reason else text
    )


_said = functools.partial(said, describe=_describe_failure)


class _API(KeyedAPI[Novita]):
    """Novita's GPU instance API."""

    cloud = "Novita"
    error = NovitaError
    key_fix = (
        "check NOVITA_API_KEY or Novita(api_key=...), and make a new key at "
        "https://novita.ai/settings/key-management if it was deleted"
    )

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    async def products(self, cluster_id: str | None) -> list[dict[str, Any]]:
        """The GPU products (of ``cluster_id`` when given)."""
        query = f"?{urlencode({'clusterId': cluster_id})}" if cluster_id is not None else ""
        response = await self.request("GET", f"/products{query}")
        listed = response_object(response).get("data")
        if response.status_code != 200 or not isinstance(listed, list):
            raise NovitaError(f"Novita did not list its GPU products {_said(response)}")
        return [p for p in listed if isinstance(p, dict)]

    async def instances(self, name: str) -> list[dict[str, Any]]:
        """Every instance whose name holds ``name`` (Novita matches names loosely): pages
        until one comes back short."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            query = urlencode({"pageSize": _PER_PAGE, "pageNum": page, "name": name})
            response = await self.request("GET", f"/gpu/instances?{query}")
            listed = response_object(response).get("instances")
            if response.status_code != 200 or not isinstance(listed, list):
                raise NovitaError(f"Novita did not list its instances {_said(response)}")
            found.extend(i for i in listed if isinstance(i, dict))
            if len(listed) < _PER_PAGE:
                return found
            page += 1


def gpu_model(name: str) -> Accelerator | None:
    """The GPU a product of this name has, one of it; None for one Skyward does not name."""
    match = _PRODUCT.fullmatch(name.strip())
    if match is None:
        return None
    accelerator = GPU_MODELS.get(match["model"])
    if accelerator is None:
        return None
    memory = f"{match['memory']}GB"
    if accelerator.name == "A100":
        if memory not in ("40GB", "80GB"):
            return None
        return attrs.evolve(accelerator, memory=memory)
    return accelerator


def _offer(product: Mapping[str, Any], gpus: int) -> Offer | None:
    """One product as an offer of nodes with ``gpus`` of its GPU, or None if its GPU is not
    one Skyward names or Novita cannot deploy it now."""
    accelerator = gpu_model(str(product.get("name", "")))
    per_gpu = positive_number(product.get("price"))
    if (
        accelerator is None
        or not isinstance(product.get("id"), str | int)
        or product.get("availableDeploy") is not True
        or per_gpu is None
    ):
        return None
    count = min(gpus, MOST_GPUS)  # catalog() refuses a spec asking for more

    def times(field: str) -> float | None:
        value = positive_number(product.get(field))
        return value * count if value is not None else None

    regions = product.get("regions")
    return Offer(
        provider="sky.Novita()",
        name=str(product["name"]),
        vcpus=times("cpuPerGpu"),
        memory_gb=times("memoryPerGpu"),
        disk_gb=times("diskPerGpu"),
        architecture="x86_64",
        regions=tuple(str(r) for r in regions) if isinstance(regions, list) else (),
        on_demand_price=round(per_gpu / _PRICE_UNIT * count, 5),
        accelerator=attrs.evolve(accelerator, count=count),
        ref=str(product["id"]),
    )


async def _listed(api: _API, config: Novita, wanted: int) -> list[Offer | None]:
    if wanted > MOST_GPUS:  # before any request: no product has more
        raise NovitaError(
            f"sky.Novita() instances carry at most {MOST_GPUS} GPUs, and {wanted} were "
            f"asked for each node; ask for {MOST_GPUS} or fewer, and more nodes"
        )
    return [_offer(p, wanted) for p in await api.products(config.cluster_id)]


#: Novita's GPU products with ``gpus`` of ``accelerator``'s model, each an offer; with
#: ``everything`` and no accelerator, every product Skyward names.
catalog = GPUCatalog(
    "sky.Novita() rents GPU instances", Novita.resolved_api_key, _API, _listed, NovitaError
)


@attrs.frozen
class _Instance:
    """What the API says of one instance."""

    id: str
    name: str
    status: str  # toCreate, creating, pulling, running, exited, removing, removed...
    ssh: tuple[str, int] | None  # the public host and port mapped to its port 22
    error: str | None  # its statusError's message, when it has one


def _instance(body: object) -> _Instance | None:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
        return None
    error = body.get("statusError")
    message = error.get("message") if isinstance(error, dict) else None
    return _Instance(
        id=body["id"],
        name=str(body.get("name") or ""),
        status=str(body.get("status", "")),
        ssh=_ssh_endpoint(body.get("portMappings")),
        error=message if isinstance(message, str) and message.strip() else None,
    )


def _ssh_endpoint(mappings: object) -> tuple[str, int] | None:
    """The public ``host:port`` Novita maps the container's port 22 to, if it has one."""
    for mapping in mappings if isinstance(mappings, list) else ():
        if not isinstance(mapping, dict) or mapping.get("port") not in (22, "22"):
            continue
        endpoint = mapping.get("endpoint")
        if not isinstance(endpoint, str):
            continue
        host, _, port = endpoint.rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
    return None


#: Words of a refused create that mean the product has no capacity left.
_NO_CAPACITY = ("not enough", "insufficient resource", "no available", "sold out", "out of stock")
#: Words of a refused create that mean the account cannot pay.
_NO_MONEY = ("balance", "credit", "recharge", "payment", "arrears")


def _refusal_fix(response: httpx.Response) -> str:
    words = _describe_failure(response).lower()
    if any(word in words for word in _NO_MONEY):
        return "add credit to the account at https://novita.ai/billing"
    if "quota" in words or "limit" in words:
        return "end instances you no longer need, or ask Novita for a higher limit"
    return "fix the request or the account as Novita says"


def _no_capacity(response: httpx.Response) -> bool:
    words = _describe_failure(response).lower()
    return not any(w in words for w in _NO_MONEY) and any(w in words for w in _NO_CAPACITY)


class NovitaCluster(RentedCluster[Novita, _Instance]):
    """One pool's instances on Novita (see the module)."""

    name = "novita"
    cloud = "Novita"
    error = NovitaError
    _api: _API

    def __init__(
        self,
        config: Novita,
        *,
        job_id: str,
        client_key: _transport.SSHKey,
        choice: Choice,
        python_version: str = PYTHON_VERSION,
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        self._image = config.image_reference(python_version)
        disk = choice.spec.disk_gb
        self._rootfs = max(10, math.ceil(disk)) if disk is not None else config.rootfs_gb
        self._ssh: dict[str, tuple[str, int]] = {}  # each instance's public SSH endpoint

    async def _reach(self, machine_id: str) -> tuple[str, int, str]:
        """Wait until the instance runs with its port 22 mapped: the public endpoint."""
        await self._until_up(machine_id)
        host, port = self._ssh[machine_id]
        return host, port, host

    def _create_body(self, name: str, offer: Offer, host_key: _transport.SSHKey) -> dict[str, Any]:
        assert offer.accelerator is not None
        assert offer.ref is not None
        private = base64.b64encode(_transport.private_openssh(host_key)).decode()
        body: dict[str, Any] = {
            "name": name,
            "productId": offer.ref,
            "gpuNum": int(offer.accelerator.count),
            "rootfsSize": self._rootfs,
            "imageUrl": self._image,
            "ports": "22/tcp",
            "envs": [
                {"key": "SKYWARD_AUTHORIZED_KEY", "value": self._public_key},
                {"key": "SKYWARD_HOST_KEY", "value": private},
            ],
            "command": startup_command(),
            "kind": "gpu",
        }
        if self.config.cluster_id is not None:
            body["clusterId"] = self.config.cluster_id
        return body

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Create one instance of the first product Novita has capacity for: its id and
        that product's offer."""
        refused: list[str] = []
        for offer in self._offers:
            body = self._create_body(name, offer, host_key)
            response = await self._api.request("POST", "/gpu/instance/create", json=body)
            made = response_object(response).get("id")
            if response.status_code == 200 and isinstance(made, str) and made:
                self._live.add(made)
                return made, offer
            if _no_capacity(response):
                refused.append(f"{offer.name} {_said(response)}")
                continue
            raise NovitaError(
                f"Novita refused to create an instance of {offer.name} {_said(response)}; "
                f"{_refusal_fix(response)}"
            )
        raise NovitaError(
            "Novita has no capacity now for any of this spec's GPU products (refused: "
            f"{'; '.join(refused)}); try again later, or widen the spec (another "
            "accelerator, cluster_id=None)"
        )

    async def _get(self, machine_id: str) -> _Instance | None:
        """The instance as Novita sees it now; None once it is gone."""
        query = urlencode({"instanceId": machine_id})
        response = await self._api.request("GET", f"/gpu/instance?{query}")
        if response.status_code == 404:
            return None
        found = _instance(response_object(response))
        if response.status_code != 200 or found is None:
            raise NovitaError(f"Novita did not say how instance {machine_id} is {_said(response)}")
        return found

    def _address(self, machine: _Instance) -> tuple[str, str] | None:
        """Up once running with its port 22 mapped (its endpoint kept for ``_reach``)."""
        if machine.status == "running" and machine.ssh is not None:
            self._ssh[machine.id] = machine.ssh
            return machine.ssh[0], machine.ssh[0]
        return None

    def _failed(self, machine: _Instance) -> str | None:
        if machine.status in ("exited", "removing", "removed", "toRemove"):
            why = f": {machine.error}" if machine.error else ""
            return f"Novita's instance {machine.id} was {machine.status} before it came up{why}"
        return None

    def _running(self, machine: _Instance) -> bool:
        return machine.status == "running"

    def _ended(self, machine: _Instance) -> bool:
        return machine.status == "removed"

    async def _request_end(self, machine_id: str) -> str | None:
        """Delete the instance (whatever its state)."""
        body = {"instanceId": machine_id}
        response = await self._api.request("POST", "/gpu/instance/delete", json=body)
        return None if response.status_code in (200, 404) else _said(response)

    async def _listed(self) -> list[_Instance]:
        """The instances whose name holds the job's prefix."""
        found = (_instance(i) for i in await self._api.instances(self._prefix))
        return [i for i in found if i is not None]
