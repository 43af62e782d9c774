"""``sky.JarvisLabs``: GPU container instances rented from JarvisLabs.ai.

JarvisLabs has no published REST reference; its ``jarvislabs`` package (the ``jl`` CLI and
SDK, v0.2) is the client this follows, request for request. The key is a bearer token.
Each region has a backend of its own (:data:`~._model.JARVISLABS_REGIONS`): an instance is
created (``POST /templates/<template>/create``, answering its ``machine_id``) and destroyed
(``POST /misc/destroy?machine_id=``) at its region's; the GPU catalogue (``GET
/misc/server_meta``: per GPU type and region its free devices and price per hour), the
instances (``GET /users/fetch``, and one by ``GET /users/fetch/<machine_id>``) and the
account's SSH keys (``/ssh/``) at the first region's.

Each GPU type Skyward names (:data:`GPU_TYPES`) with the spec's GPUs free in a region for
container instances is one :class:`Offer`, at its hourly price times the GPUs. A node is
one instance of the cheapest; when JarvisLabs refuses it for want of free GPUs, the next
offer (``Choice.also``) is tried.

An instance is a container of a JarvisLabs template (``pytorch`` by default) whose sshd
authorizes the account's SSH keys: the pool's public key is added as ``skyward-<job>``
before the first create and removed when the pool closes. The client logs in as root at
the host and port of the instance's ``ssh_str`` (``ssh -p PORT root@HOST``). JarvisLabs
neither publishes an instance's host key nor takes one, so the first key the instance
presents is trusted for that instance only (never a known_hosts entry).

Nothing is left billing by a pool that closes: every instance is named
``skyward-<job>-<node>-<n>``; ending one destroys it and polls until JarvisLabs no longer
lists it, and ``aclose`` destroys every instance of the job JarvisLabs lists (by name), one
whose create answer never came included. An instance whose client vanished is not ended
by itself: JarvisLabs gives an instance no credential of its own and the account's key is
not shipped to it, so it bills until it is destroyed (a paused one bills its storage);
the worker exits when its lease runs out.

The API key travels only in the ``Authorization`` header; errors quote JarvisLabs'
answer, which never holds it.
"""

from __future__ import annotations

import functools
import math
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._model import JARVISLABS_REGIONS, JarvisLabs
from ._offers import Choice, Offer
from ._providers import (
    KeyedAPI,
    failure_words,
    first_host_key,
    response_json,
    response_object,
    said,
)
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_TYPES", "JarvisLabsCluster", "JarvisLabsError", "catalog", "ssh_endpoint"]

#: JarvisLabs' GPU types (its ``gpu_type``) that Skyward names, and what each is. RTX5000,
#: A5000 and A5000Pro are not offered: Skyward does not name them.
GPU_TYPES: Mapping[str, Accelerator] = {
    "H200": accelerators.H200(),
    "H100": accelerators.H100(),
    "A100": accelerators.A100(memory="40GB"),
    "A100-80GB": accelerators.A100(memory="80GB"),
    "L4": accelerators.L4(),
    "A6000": accelerators.RTX_A6000(),
    "RTX6000Ada": accelerators.RTX_6000_Ada(),
}
#: The most GPUs one instance has.
MOST_GPUS = 8
#: europe-01 takes 1 or 8 GPUs per instance and 100 GB of storage at least.
_EUROPE = "europe-01"
_EUROPE_GPUS = (1, 8)
_EUROPE_STORAGE = 100


class JarvisLabsError(RuntimeError):
    """JarvisLabs' API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """JarvisLabs' own words for a failed request: its ``message``, ``error`` or ``detail``
    (FastAPI's list of ``{loc, msg}`` included), else the body."""
    body = response_object(response)
    for field in ("message", "error", "detail"):
        value = body.get(field)
        if isinstance(value, list):
            value = "; ".join(
                str(item.get("msg", item)) if isinstance(item, dict) else str(item)
                for item in value
            )
        if isinstance(value, str) and value.strip():
            return failure_words(response, value)
    return failure_words(response)


_said = functools.partial(said, describe=_describe_failure)


@attrs.frozen
class _Access:
    """The config's key, as :class:`KeyedAPI` reads it (requests give whole URLs)."""

    api_url: str
    key: str = attrs.field(repr=False)

    def resolved_api_key(self) -> str:
        return self.key


def _succeeded(body: object) -> bool:
    """Whether an answer says ``success`` (JarvisLabs writes it as a bool or as text, and
    some answers spell it ``sucess``)."""
    if not isinstance(body, dict):
        return False
    value = body.get("success", body.get("sucess"))
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _not_found(response: httpx.Response) -> bool:
    """Whether ``GET /users/fetch/<id>`` says the account has no such instance: a 404, or
    a 200 whose ``success`` is false (the SDK reads both so); any other failure is no
    answer about it."""
    if response.status_code == 404:
        return True
    body = response_object(response)
    return response.status_code == 200 and "success" in body and not _succeeded(body)


class _API(KeyedAPI[_Access]):
    """JarvisLabs' API: the account's backend, and each region's."""

    cloud = "JarvisLabs"
    error = JarvisLabsError
    key_fix = (
        "check JL_API_KEY or JarvisLabs(api_key=...), and make a new key at "
        "https://jarvislabs.ai/settings/api-keys if it was deleted"
    )

    def __init__(self, config: JarvisLabs) -> None:
        super().__init__(_Access(api_url=config.backend(), key=config.resolved_api_key()))
        self.jl = config

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    def key_refused(self, response: httpx.Response) -> bool:
        # A 403 is also JarvisLabs' answer to an account short of balance.
        if response.status_code == 403:
            return "balance" not in _describe_failure(response).lower()
        return response.status_code == 401

    async def at(
        self, region: str | None, method: str, path: str, *, json: Any = None
    ) -> httpx.Response:
        """A request to ``path`` at ``region``'s backend (None: the account's)."""
        return await self.send(method, self.jl.backend(region) + path, json=json)

    async def server_meta(self) -> list[dict[str, Any]]:
        response = await self.at(None, "GET", "/misc/server_meta")
        listed = response_object(response).get("server_meta")
        if response.status_code != 200 or not isinstance(listed, list):
            raise JarvisLabsError(f"JarvisLabs did not list its GPUs {_said(response)}")
        return [row for row in listed if isinstance(row, dict)]

    async def instances(self) -> list[dict[str, Any]]:
        response = await self.at(None, "GET", "/users/fetch")
        body = response_object(response)
        listed = body.get("instances")
        if response.status_code != 200 or not _succeeded(body) or not isinstance(listed, list):
            raise JarvisLabsError(f"JarvisLabs did not list its instances {_said(response)}")
        return [i for i in listed if isinstance(i, dict)]

    async def ssh_keys(self) -> list[dict[str, Any]]:
        response = await self.at(None, "GET", "/ssh/")
        listed = response_json(response)
        if response.status_code != 200 or not isinstance(listed, list):
            raise JarvisLabsError(
                f"JarvisLabs did not list the account's SSH keys {_said(response)}"
            )
        return [k for k in listed if isinstance(k, dict)]


def _offer(row: Mapping[str, Any], gpus: int, region: str | None) -> Offer | None:
    """One GPU type in one region as an offer of nodes with ``gpus`` of it; None if Skyward
    does not name it, it is not for containers, it lacks that many free GPUs, it is not in
    ``region`` (when given) or europe-01 does not take that count."""
    accelerator = GPU_TYPES.get(str(row.get("gpu_type", "")))
    per_gpu = positive_number(row.get("price_per_hour"))
    where = row.get("region")
    free = row.get("effective_num_free_devices")
    if free is None:
        free = row.get("num_free_devices")
    count = min(gpus, MOST_GPUS)
    if (
        accelerator is None
        or per_gpu is None
        or not isinstance(where, str)
        or where not in JARVISLABS_REGIONS
        or region not in (None, where)
        or row.get("workload_type") not in (None, "container")
        or not isinstance(free, int | str)
        or not str(free).isdigit()
        or int(free) < count
        or (where == _EUROPE and count not in _EUROPE_GPUS)
    ):
        return None

    def times(field: str) -> float | None:
        value = positive_number(row.get(field))
        return value * count if value is not None else None

    return Offer(
        provider="sky.JarvisLabs()",
        name=str(row["gpu_type"]),
        vcpus=times("cpus_per_gpu"),
        memory_gb=times("ram_per_gpu"),
        architecture="x86_64",
        regions=(where,),
        on_demand_price=round(per_gpu * count, 5),
        accelerator=attrs.evolve(accelerator, count=count),
        ref=str(row["gpu_type"]),
    )


async def _listed(api: _API, config: JarvisLabs, wanted: int) -> list[Offer | None]:
    return [_offer(row, wanted, config.region) for row in await api.server_meta()]


#: JarvisLabs' GPU types with ``gpus`` of ``accelerator``'s model free, each region an
#: offer; with ``everything`` and no accelerator, every one Skyward names.
catalog = GPUCatalog(
    "sky.JarvisLabs() rents GPU instances",
    JarvisLabs.resolved_api_key,
    _API,
    _listed,
    JarvisLabsError,
)


def ssh_endpoint(command: object) -> tuple[str, int] | None:
    """The host and port of an instance's ``ssh_str`` (``ssh -p 2222 root@host``; port
    22 when it names none), or None when it is not such a command."""
    if not isinstance(command, str):
        return None
    try:
        parts = shlex.split(command)
    except ValueError:
        return None
    if not parts or parts[0] != "ssh":
        return None
    host: str | None = None
    port = 22
    words = iter(parts[1:])
    for word in words:
        if word in ("-p", "-o", "-i", "-l", "-F", "-J"):
            value = next(words, None)
            if word == "-p":
                if value is None or not value.isdigit() or not 0 < int(value) < 65536:
                    return None
                port = int(value)
        elif not word.startswith("-"):
            host = word.rpartition("@")[2]
    return (host, port) if host else None


@attrs.frozen
class _Instance:
    """What the API says of one instance."""

    id: str
    name: str
    status: str  # Creating, Running, Paused, Failed, Destroying...
    ssh: tuple[str, int] | None  # where its sshd answers, once it runs
    region: str | None


def _instance(body: object) -> _Instance | None:
    if not isinstance(body, dict):
        return None
    machine_id = body.get("machine_id")
    if isinstance(machine_id, bool) or not isinstance(machine_id, int | str) or not machine_id:
        return None
    region = body.get("region")
    return _Instance(
        id=str(machine_id),
        name=str(body.get("name") or body.get("instance_name") or ""),
        status=str(body.get("status", "")),
        ssh=ssh_endpoint(body.get("ssh_str", body.get("ssh_command"))),
        region=region if isinstance(region, str) else None,
    )


#: Words of a refused create that mean the GPU type has no free GPUs there now.
_NO_CAPACITY = ("no free", "not available", "out of stock", "capacity", "sold out", "try again")


def _refusal_fix(response: httpx.Response) -> str:
    words = _describe_failure(response).lower()
    if "balance" in words or "credit" in words:
        return "add balance to the account at https://jarvislabs.ai"
    if "limit" in words or "quota" in words:
        return "destroy instances you no longer need, or ask JarvisLabs for a higher limit"
    return "fix the request or the account as JarvisLabs says"


def _no_capacity(response: httpx.Response) -> bool:
    words = _describe_failure(response).lower()
    return "balance" not in words and any(w in words for w in _NO_CAPACITY)


class JarvisLabsCluster(RentedCluster[JarvisLabs, _Instance]):
    """One pool's instances on JarvisLabs (see the module)."""

    name = "jarvislabs"
    cloud = "JarvisLabs"
    error = JarvisLabsError
    ending = ("destroy", "destroying", "destroyed")
    _api: _API

    def __init__(
        self, config: JarvisLabs, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        disk = choice.spec.disk_gb
        self._storage = max(20, math.ceil(disk)) if disk is not None else config.storage_gb
        self._ssh: dict[str, tuple[str, int]] = {}  # each instance's SSH endpoint
        self._region: dict[str, str] = {}  # each instance's region
        self._unseen: set[str] = set()  # created, not yet listed by users/fetch
        self._key_lock = trio.Lock()
        self._key_added = False

    async def _reach(self, machine_id: str) -> tuple[str, int, str]:
        """Wait until the instance runs with its SSH endpoint (its ``ssh_str``)."""
        await self._until_up(machine_id)
        host, port = self._ssh[machine_id]
        return host, port, host

    async def _pin_host_key(self, machine_id: str, host: str, port: int, given: str) -> str:
        """JarvisLabs takes no host key: the first one the instance presents is trusted,
        for it alone."""
        return await first_host_key(host, port)

    async def _add_key(self) -> None:
        """Add the pool's public key to the account's SSH keys, once."""
        async with self._key_lock:
            if self._key_added:
                return
            body = {"ssh_key": self._public_key, "key_name": self._key_name}
            response = await self._api.at(None, "POST", "/ssh/", json=body)
            if response.status_code != 200 or not _succeeded(response_json(response)):
                raise JarvisLabsError(
                    f"JarvisLabs did not add the pool's SSH key {self._key_name} "
                    f"{_said(response)}; {_refusal_fix(response)}"
                )
            self._key_added = True

    def _create_body(self, name: str, offer: Offer, region: str) -> dict[str, Any]:
        assert offer.accelerator is not None
        assert offer.ref is not None
        storage = max(self._storage, _EUROPE_STORAGE) if region == _EUROPE else self._storage
        return {
            "gpu_type": offer.ref,
            "num_gpus": int(offer.accelerator.count),
            "hdd": storage,
            "region": region,
            "name": name,
            "is_spot": False,
            "duration": "hour",
            "disk_type": "ssd",
            "http_ports": "",
            "script_id": None,
            "script_args": "",
            "fs_id": None,
            "arguments": "",
        }

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Create one instance of the first offer and region JarvisLabs has GPUs free for:
        its id and that offer. (``host_key`` is unused: JarvisLabs takes none.) The pool's
        key is added to the account's SSH keys first."""
        await self._add_key()
        refused: list[str] = []
        path = f"/templates/{self.config.template}/create"
        for offer in self._offers:
            for region in self._regions(offer):
                body = self._create_body(name, offer, region)
                response = await self._api.at(region, "POST", path, json=body)
                made = response_object(response).get("machine_id")
                if response.status_code == 200 and isinstance(made, int | str) and made:
                    machine_id = str(made)
                    self._live.add(machine_id)
                    self._unseen.add(machine_id)
                    self._region[machine_id] = region
                    return machine_id, offer
                if _no_capacity(response):
                    refused.append(f"{offer.name} in {region} {_said(response)}")
                    continue
                raise JarvisLabsError(
                    f"JarvisLabs refused to create a {offer.name} instance in {region} "
                    f"{_said(response)}; {_refusal_fix(response)}"
                )
        raise JarvisLabsError(
            "JarvisLabs has no GPUs free now for any of this spec's offers (refused: "
            f"{'; '.join(refused)}); try again later, or widen the spec (another "
            "accelerator, region=None)"
        )

    async def _get(self, machine_id: str) -> _Instance | None:
        """The instance as JarvisLabs sees it now; None once it is gone (one just created
        that is not listed yet is still coming: JarvisLabs lists it a moment later)."""
        response = await self._api.at(None, "GET", f"/users/fetch/{machine_id}")
        body = response_object(response)
        found = _instance(body.get("instance")) if _succeeded(body) else None
        if _not_found(response):
            if machine_id in self._unseen:
                return _Instance(machine_id, "", "Creating", None, self._region.get(machine_id))
            return None
        if response.status_code != 200 or found is None:
            raise JarvisLabsError(
                f"JarvisLabs did not say how instance {machine_id} is {_said(response)}"
            )
        self._unseen.discard(machine_id)
        if found.region is not None:
            self._region.setdefault(machine_id, found.region)
        return found

    def _address(self, machine: _Instance) -> tuple[str, str] | None:
        """Up once running with its SSH endpoint (kept for ``_reach``)."""
        if machine.status == "Running" and machine.ssh is not None:
            self._ssh[machine.id] = machine.ssh
            return machine.ssh[0], machine.ssh[0]
        return None

    def _failed(self, machine: _Instance) -> str | None:
        if machine.status in ("Failed", "Paused", "Destroying", "Destroyed"):
            return (
                f"JarvisLabs' instance {machine.id} is {machine.status} and never came up; "
                "it was destroyed"
            )
        return None

    def _running(self, machine: _Instance) -> bool:
        return machine.status == "Running"

    def _ended(self, machine: _Instance) -> bool:
        return machine.status == "Destroyed"

    async def _request_end(self, machine_id: str) -> str | None:
        """Destroy the instance (whatever its state), at its region's backend."""
        self._unseen.discard(machine_id)  # from now on, not listed means gone
        query = urlencode({"machine_id": machine_id})
        region = self._region.get(machine_id)
        response = await self._api.at(region, "POST", f"/misc/destroy?{query}")
        if response.status_code == 404:
            return None
        if response.status_code == 200 and _succeeded(response_json(response)):
            return None
        return _said(response)

    async def _listed(self) -> list[_Instance]:
        """The account's instances named for this job (their regions kept)."""
        found = [i for i in map(_instance, await self._api.instances()) if i is not None]
        for machine in found:
            if machine.region is not None:
                self._region.setdefault(machine.id, machine.region)
        return [i for i in found if i.name.startswith(self._prefix)]

    def reaping(self) -> None:
        self._key_added = True  # the dead client's pool may have added it: look for it

    def _releases(self) -> Sequence[tuple[str, Callable[[], Awaitable[None]]]]:
        if not self._key_added:
            return ()
        return ((f"the account's SSH key {self._key_name}", self._remove_key),)

    async def _remove_key(self) -> None:
        for key in await self._api.ssh_keys():
            if key.get("key_name") != self._key_name or not key.get("key_id"):
                continue
            response = await self._api.at(None, "DELETE", f"/ssh/{key['key_id']}")
            if response.status_code not in (200, 404):
                raise JarvisLabsError(f"JarvisLabs did not remove it {_said(response)}")
        self._key_added = False

    def _left_behind(self, failed: str) -> str:
        return (
            "sky.JarvisLabs could not confirm every instance of this pool destroyed; these "
            f"may still bill: {failed}. Check JarvisLabs' console (or `jl list`) for "
            f"instances named {self._prefix}* and the SSH key {self._key_name}"
        )
