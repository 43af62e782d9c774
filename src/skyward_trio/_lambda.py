"""``sky.Lambda``: GPU instances rented from Lambda Cloud, through its public API v1.

Lambda lists its instance types (``gpu_<N>x_<model>``), each with its GPUs, vCPUs, RAM,
disk, price per hour and the regions that have capacity for it now; each type with GPUs
Skyward can name becomes one :class:`Offer`. A node is one instance of the cheapest type
with the spec's GPUs: launched in the first region with capacity, and when Lambda
refuses for capacity, in the next region, then as the next type (``Choice.also``).

Lambda takes one SSH key per launch, by name: the pool's public key is registered once as
``skyward-<job>`` and deleted when the pool closes. The launch also carries cloud-init
user data (``_aws.user_data``) with a host key made for the instance, so the client
verifies the host key from its first connection, as for ``sky.AWS``.

Nothing is left billing by a pool that closes: every instance is named
``skyward-<job>-<node>-<n>``; ``terminate`` terminates an instance and confirms it
terminated (or gone), and ``aclose`` terminates every instance of the job still listed,
one whose launch was cut short before its answer included. An instance whose client
vanished is not ended by itself: Lambda gives an instance no credential of its own, an OS
shutdown does not end its billing, and the account's key is not shipped to the node. The
worker exits when its lease runs out; the instance bills until it is terminated (the
docs say so).

The API key travels only in the ``Authorization`` header; errors quote Lambda's answer,
which never holds it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._aws import user_data
from ._model import Lambda
from ._offers import Choice, Offer
from ._providers import KeyedAPI, failure_words, response_json, response_object, said
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_MODELS", "LambdaCluster", "LambdaError", "catalog"]

#: What follows ``gpu_<N>x_`` in Lambda's instance type names, and the GPU it is. Types not
#: listed here are not offered (an accelerator Skyward cannot name could not be asked for).
GPU_MODELS: Mapping[str, Accelerator] = {
    "a10": accelerators.A10(),
    "a100": accelerators.A100(memory="40GB", form_factor="PCIe"),
    "a100_sxm4": accelerators.A100(memory="40GB", form_factor="SXM"),
    "a100_80gb_pcie": accelerators.A100(memory="80GB", form_factor="PCIe"),
    "a100_80gb_sxm4": accelerators.A100(memory="80GB", form_factor="SXM"),
    "a6000": accelerators.RTX_A6000(),
    "h100_pcie": accelerators.H100(form_factor="PCIe"),
    "h100_sxm5": accelerators.H100(form_factor="SXM"),
    "gh200": accelerators.GH200(),
    "b200_sxm6": accelerators.B200(),
    "v100": accelerators.V100(form_factor="SXM"),
    "v100_n": accelerators.V100(form_factor="SXM"),
}
#: Grace Hopper machines are arm64; the others x86_64.
_ARM64 = frozenset({"gh200"})
_TYPE_NAME = re.compile(r"gpu_([0-9]+)x_([a-z0-9_]+)")
_GIB = 2**30 / 1e9  # GB in a GiB

#: Lambda's error codes this module acts on.
NO_CAPACITY = "instance-operations/launch/insufficient-capacity"
QUOTA = "global/quota-exceeded"
INVALID_KEY = "global/invalid-api-key"
#: How often a launch refused for its rate (Lambda allows about one launch per 10 s) is
#: tried again before the refusal stands.
_RATE_RETRIES = 6


class LambdaError(RuntimeError):
    """Lambda's API refused a request or could not be reached; the message quotes it."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def _error_code(response: httpx.Response) -> str | None:
    error = response_object(response).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _describe_failure(response: httpx.Response) -> str:
    """Lambda's own words for a failed request (its error's code, message and suggestion),
    else the body."""
    error = response_object(response).get("error")
    if not isinstance(error, dict):
        return failure_words(response)
    keys = ("code", "message", "suggestion")
    return failure_words(response, ": ".join(str(error[k]) for k in keys if error.get(k)))


_said = functools.partial(said, describe=_describe_failure)


def _data(response: httpx.Response) -> Any:
    """The ``data`` of a successful answer, or None."""
    body = response_json(response)
    return body.get("data") if isinstance(body, dict) else None


class _API(KeyedAPI[Lambda]):
    """Lambda's API v1."""

    cloud = "Lambda"
    error = LambdaError
    key_fix = (
        "check LAMBDA_API_KEY or Lambda(api_key=...), and make a new key at "
        "https://cloud.lambda.ai/api-keys if it was deleted"
    )

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    def key_refused(self, response: httpx.Response) -> bool:
        # A 403 with a code of its own (a used-up quota) is that refusal, not the key's.
        code = _error_code(response)
        status = response.status_code
        return code == INVALID_KEY or status == 401 or (status == 403 and code is None)

    def failure(self, message: str, response: httpx.Response | None = None) -> Exception:
        return LambdaError(message, None if response is None else _error_code(response))

    async def instance_types(self) -> list[dict[str, Any]]:
        response = await self.request("GET", "/instance-types")
        data = _data(response)
        if response.status_code != 200 or not isinstance(data, dict):
            raise LambdaError(f"Lambda did not list its instance types {_said(response)}")
        return [entry for entry in data.values() if isinstance(entry, dict)]


def _offer(config: Lambda, entry: Mapping[str, Any]) -> Offer | None:
    """One instance type as an offer, or None if its GPUs are not ones Skyward names.

    Its regions are those with capacity now (the configured one only, when set); a type
    with capacity nowhere has no price, so a spec's refusal says Lambda has none.
    """
    kind = entry.get("instance_type")
    if not isinstance(kind, dict):
        return None
    name = str(kind.get("name", ""))
    parsed = _TYPE_NAME.fullmatch(name)
    if parsed is None or parsed[2] not in GPU_MODELS:
        return None
    given = kind.get("specs")
    specs: Mapping[str, Any] = given if isinstance(given, dict) else {}
    gpus = specs.get("gpus")
    count = gpus if isinstance(gpus, int) and gpus > 0 else int(parsed[1])
    listed = entry.get("regions_with_capacity_available")
    regions = tuple(
        str(r["name"])
        for r in (listed if isinstance(listed, list) else [])
        if isinstance(r, dict)
        and isinstance(r.get("name"), str)
        and config.region in (None, r["name"])
    )
    cents = positive_number(kind.get("price_cents_per_hour"))
    memory, disk = (
        positive_number(specs.get("memory_gib")),
        positive_number(specs.get("storage_gib")),
    )
    return Offer(
        provider="sky.Lambda()",
        name=name,
        vcpus=positive_number(specs.get("vcpus")),
        memory_gb=round(memory * _GIB, 1) if memory else None,
        disk_gb=round(disk * _GIB, 1) if disk else None,
        architecture="arm64" if parsed[2] in _ARM64 else "x86_64",
        regions=regions,
        on_demand_price=cents / 100 if cents is not None and regions else None,
        accelerator=attrs.evolve(GPU_MODELS[parsed[2]], count=count),
    )


async def _listed(api: _API, config: Lambda, wanted: int) -> list[Offer | None]:
    return [_offer(config, entry) for entry in await api.instance_types()]


#: Lambda's instance types with ``gpus`` of ``accelerator``'s model, each an offer; with
#: ``everything`` and no accelerator, every type with GPUs Skyward names.
catalog = GPUCatalog(
    "sky.Lambda() rents GPU instances", Lambda.resolved_api_key, _API, _listed, LambdaError
)


@attrs.frozen
class _Instance:
    """What the API says of one instance."""

    id: str
    name: str
    status: str  # booting, active, unhealthy, terminating, terminated
    ip: str | None
    private_ip: str | None


def _instance(body: object) -> _Instance | None:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return None
    ip, private_ip = body.get("ip"), body.get("private_ip")
    return _Instance(
        id=body["id"],
        name=str(body.get("name") or ""),
        status=str(body.get("status", "")),
        ip=ip if isinstance(ip, str) and ip else None,
        private_ip=private_ip if isinstance(private_ip, str) and private_ip else None,
    )


class LambdaCluster(RentedCluster[Lambda, _Instance]):
    """One pool's instances on Lambda Cloud (see the module)."""

    name = "lambda"
    cloud = "Lambda"
    error = LambdaError
    ending = ("terminate", "terminating", "terminated")
    _api: _API

    def __init__(
        self, config: Lambda, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        self._key_lock = trio.Lock()
        self._key_id: str | None = None  # the registered SSH key's id, once registered
        self._file_system_lock = trio.Lock()
        self._file_system_checked = False

    async def _registered_key(self) -> str:
        """The pool's SSH key's name at Lambda, registered by the first node that needs it."""
        async with self._key_lock:
            if self._key_id is None:
                key = {"name": self._key_name, "public_key": self._public_key}
                response = await self._api.request("POST", "/ssh-keys", json=key)
                data = _data(response)
                if response.status_code != 200 or not isinstance(data, dict) or "id" not in data:
                    raise LambdaError(
                        f"Lambda did not register the pool's SSH key {self._key_name} "
                        f"{_said(response)}",
                        _error_code(response),
                    )
                self._key_id = str(data["id"])
        return self._key_name

    async def _file_system(self) -> str:
        """The configured file system's name, once Lambda has shown it exists in the
        configured region (asked once per pool)."""
        name, region = self.config.file_system, self.config.region
        assert name is not None  # Lambda() needs region= with file_system=
        assert region is not None
        async with self._file_system_lock:
            if not self._file_system_checked:
                response = await self._api.request("GET", "/file-systems")
                listed = _data(response)
                if response.status_code != 200 or not isinstance(listed, list):
                    raise LambdaError(
                        f"Lambda did not list its file systems {_said(response)}",
                        _error_code(response),
                    )
                found = [f for f in listed if isinstance(f, dict) and f.get("name") == name]
                if not found:
                    have = ", ".join(
                        f"{f.get('name')} ({(f.get('region') or {}).get('name')})"
                        for f in listed
                        if isinstance(f, dict)
                    )
                    raise LambdaError(
                        f"Lambda has no file system {name!r} (it has: {have or 'none'}); "
                        "create it in Lambda's console, or fix Lambda(file_system=...)"
                    )
                where = (found[0].get("region") or {}).get("name")
                if where != region:
                    raise LambdaError(
                        f"Lambda's file system {name!r} is in {where}, and this pool launches "
                        f"in {region}: pass Lambda(region={where!r}) (a file system attaches "
                        "only in its region)"
                    )
                self._file_system_checked = True
        return name

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Launch one instance of the first type and region with capacity: its id and type."""
        key = await self._registered_key()
        data = user_data(self._public_key, host_key)
        refused: list[str] = []
        for offer in self._offers:
            for region in self._regions(offer):
                body = {
                    "region_name": region,
                    "instance_type_name": offer.name,
                    "ssh_key_names": [key],
                    "quantity": 1,
                    "name": name,
                    "user_data": data,
                }
                if self.config.file_system is not None:
                    body["file_system_names"] = [await self._file_system()]
                response = await self._launch_once(body)
                ids = (_data(response) or {}).get("instance_ids") if response.is_success else None
                if isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], str):
                    self._live.add(ids[0])
                    return ids[0], offer
                code = _error_code(response)
                if code == NO_CAPACITY:
                    refused.append(f"{offer.name} in {region}")
                    continue
                raise LambdaError(self._refusal(offer, region, response, code), code)
        raise LambdaError(
            "Lambda has no capacity now for any instance type and region of this spec "
            f"(refused: {', '.join(refused) or 'none listed with capacity'}); try again later, "
            "or widen the spec (another accelerator, region=None)",
            NO_CAPACITY,
        )

    async def _launch_once(self, body: dict[str, Any]) -> httpx.Response:
        """POST the launch; one refused for its rate is sent again after the wait Lambda
        asks (``Retry-After``), else 10 s."""
        for _ in range(_RATE_RETRIES):
            response = await self._api.request("POST", "/instance-operations/launch", json=body)
            if response.status_code != 429:
                return response
            after = response.headers.get("retry-after", "")
            await trio.sleep(float(after) if after.isdigit() else 10.0)
        return response

    @staticmethod
    def _refusal(offer: Offer, region: str, response: httpx.Response, code: str | None) -> str:
        quoted = _said(response)
        if code == QUOTA:
            return (
                f"Lambda refused to launch {offer.name} in {region}: the account's instance "
                f"quota is used up {quoted}. Terminate instances you no longer need, or ask "
                "Lambda's support to raise the quota (it grows as invoices are paid)"
            )
        if response.status_code == 429:
            return f"Lambda kept refusing to launch {offer.name} for its rate limit {quoted}"
        return f"Lambda did not launch {offer.name} in {region} {quoted}"

    async def _get(self, machine_id: str) -> _Instance | None:
        """The instance as Lambda sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/instances/{machine_id}")
        if response.status_code == 404:
            return None
        found = _instance(_data(response)) if response.status_code == 200 else None
        if found is None:
            raise LambdaError(f"Lambda did not say how instance {machine_id} is {_said(response)}")
        return found

    def _address(self, machine: _Instance) -> tuple[str, str] | None:
        if machine.status == "active" and machine.ip is not None:
            return machine.ip, machine.private_ip or machine.ip
        return None

    def _failed(self, machine: _Instance) -> str | None:
        if machine.status in ("unhealthy", "terminating", "terminated"):
            return f"instance {machine.id} ended before it came up ({machine.status})"
        return None

    def _running(self, machine: _Instance) -> bool:
        return machine.status in ("booting", "active")

    def _ended(self, machine: _Instance) -> bool:
        return machine.status == "terminated"

    def _still_ending(self, machine: _Instance) -> bool:
        return machine.status == "terminating"

    async def _request_end(self, machine_id: str) -> str | None:
        response = await self._api.request(
            "POST", "/instance-operations/terminate", json={"instance_ids": [machine_id]}
        )
        if response.status_code in (200, 404):
            return None
        return _said(response)

    async def _listed(self) -> list[_Instance]:
        response = await self._api.request("GET", "/instances")
        found = _data(response)
        if response.status_code != 200 or not isinstance(found, list):
            raise LambdaError(f"Lambda did not list the instances {_said(response)}")
        return [i for i in map(_instance, found) if i is not None]

    def _releases(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [(f"the SSH key {self._key_name}", self._delete_key)]

    def _left_behind(self, failed: str) -> str:
        return (
            "sky.Lambda could not confirm every instance of this pool terminated and its "
            f"SSH key deleted; these may still bill: {failed}. Check Lambda's console for "
            f"instances named {self._prefix}* and the key {self._key_name}"
        )

    async def _delete_key(self) -> None:
        """Delete the pool's SSH key: the one registered, and any of its name (a register
        whose answer never came)."""
        ids = {self._key_id} if self._key_id is not None else set()
        listed = await self._api.request("GET", "/ssh-keys")
        keys = _data(listed)
        if listed.status_code != 200 or not isinstance(keys, list):
            raise LambdaError(f"Lambda did not list the SSH keys {_said(listed)}")
        ids |= {
            str(k["id"]) for k in keys if isinstance(k, dict) and k.get("name") == self._key_name
        }
        for key_id in sorted(ids):
            response = await self._api.request("DELETE", f"/ssh-keys/{key_id}")
            if response.status_code not in (200, 204, 404):
                raise LambdaError(f"Lambda did not delete it {_said(response)}")
        self._key_id = None
