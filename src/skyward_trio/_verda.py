"""``sky.Verda``: GPU instances rented from Verda (formerly DataCrunch), through its API.

Verda's API authenticates an OAuth2 client: ``POST /oauth2/token`` with the client's id
and secret (grant ``client_credentials``) buys a bearer token that expires
(``expires_in`` seconds); :class:`_API` buys one before its first request and again once
it is near its end or refused (one retry: a refused token did nothing). The secret goes to
the token endpoint only; the token travels in the ``Authorization`` header only.

Verda lists its instance types (``GET /instance-types``: GPUs, vCPUs, RAM and disk, with
the hourly price of the whole instance) and, apart, which types each location has
available now (``GET /instance-availability``: ``[{location_code, availabilities}]``).
Each type whose GPU Skyward can name becomes one :class:`Offer`, its regions the locations
that have it. A node is one instance of the cheapest type with the spec's GPUs: created in
the first location that has it, and when Verda answers that it has no capacity (503
``service_unavailable``, as documented for ``POST /instances``), in the next location,
then as the next type (``Choice.also``).

The pool's public key is registered once as the SSH key ``skyward-<job>`` and named by id
in each create. Verda's create takes no user data, only the id of a startup script made
beforehand (``POST /scripts``); each instance gets a script of its own,
``skyward-<job>-<node>-<n>``, that installs the host key made for it and restarts sshd.
The script may run after sshd first answered with the image's own key, so the client
waits until sshd presents the key it made (never logging in to another) before its first
login.

Nothing is left billing by a pool that closes: every instance's hostname is
``skyward-<job>-<node>-<n>``; ``terminate`` deletes an instance with its OS volume
(``PUT /instances`` action ``delete``) and confirms it gone, and ``aclose`` deletes every
instance of the job still listed, one whose create was cut short before its answer
included, then the pool's scripts and SSH key. An instance whose client vanished is not
ended by itself: Verda gives an instance no credential of its own, an OS shutdown leaves
it ``offline`` and still billed (the API's own words on ``shutdown``: it "will keep
charging your account"), and the account's secret is not shipped to the node. The worker
exits when its lease runs out; the instance bills until it is deleted (the docs say so).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._model import Verda
from ._offers import Choice, Offer
from ._providers import (
    TokenAPI,
    failure_words,
    poll_delays,
    response_json,
    response_object,
    said,
)
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_MODELS", "VerdaCluster", "VerdaError", "catalog", "startup_script"]

#: The GPU model in an instance type's name (``1H100.80S.30V``: one H100, 80 GB, SXM,
#: 30 vCPUs), and the GPU it is. Types with other GPUs, and CPU types, are not offered.
GPU_MODELS: Mapping[str, Accelerator] = {
    "H100": accelerators.H100(form_factor="SXM"),
    "H200": accelerators.H200(form_factor="SXM"),
    "B200": accelerators.B200(),
    "GB200": accelerators.GB200(),
    "A100": accelerators.A100(memory="80GB", form_factor="SXM"),
    "L40S": accelerators.L40S(),
    "A6000": accelerators.RTX_A6000(),
    "RTX6000ADA": accelerators.RTX_6000_Ada(),
    "RTXPRO6000": accelerators.RTX_PRO_6000(),
    "V100": accelerators.V100(),
}

# <gpus><model>.<rest>: 8H100.80S.176V, 1A100.40S.22V, 1V100.6V, 1RTX6000ADA.10V
_TYPE_NAME = re.compile(r"(\d+)([A-Z0-9]+?)\.(.+)")

#: The statuses of an instance that runs or is on its way to running.
_UP = frozenset({"new", "ordered", "validating", "provisioning", "running"})
#: How long a deleted instance may still be listed before that is an error.
_DELETE_WAIT = 120.0


class VerdaError(RuntimeError):
    """Verda's API refused a request or could not be reached; the message quotes it."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def _code(response: httpx.Response) -> str | None:
    body = response_json(response)
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _describe(response: httpx.Response) -> str:
    """Verda's own words for a failed request (``{code, message}``), else the body."""
    body = response_object(response)
    return failure_words(
        response, ": ".join(str(body[k]) for k in ("code", "message") if body.get(k))
    )


_said = functools.partial(said, describe=_describe)


def _refused(what: str, response: httpx.Response) -> VerdaError:
    """The error of a request Verda refused: what it did not do, in its words."""
    return VerdaError(f"Verda did not {what} {_said(response)}", _code(response))


def _made_id(response: httpx.Response) -> str | None:
    """The id a create answers: a plain JSON string, or the bare text of one."""
    if not response.is_success:
        return None
    body = response_json(response)
    text = body if isinstance(body, str) else response.text.strip().strip('"')
    return text if text and len(text) <= 128 and not any(c.isspace() for c in text) else None


_CREDENTIALS_FIX = (
    "check VERDA_CLIENT_ID and VERDA_CLIENT_SECRET (or Verda(client_id=..., "
    "client_secret=...)), and make a new API client in Verda's console (Keys) if it was "
    "deleted"
)


class _API(TokenAPI):
    """Verda's API v1, with a bearer token bought from the client's id and secret."""

    cloud = "Verda"
    error = VerdaError
    token_margin = 60.0

    def __init__(self, config: Verda) -> None:
        super().__init__()
        self.config = config
        self._client_id, self._secret = config.resolved_credentials()

    def _url(self, path: str) -> str:
        return self.config.api_url.rstrip("/") + path

    async def buy_token(self) -> tuple[str, float | None]:
        """A token for the API client's id and secret (grant ``client_credentials``)."""
        body = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret,
        }
        response = await self.send("POST", self._url("/oauth2/token"), json=body)
        answer = response_object(response)
        token = answer.get("access_token")
        if response.status_code in (400, 401, 403):
            raise VerdaError(
                f"Verda refused the API client's credentials {_said(response)}; {_CREDENTIALS_FIX}",
                _code(response),
            )
        if not response.is_success or not isinstance(token, str) or not token:
            raise _refused("give an access token", response)
        lifetime = answer.get("expires_in")
        return token, float(lifetime) if isinstance(lifetime, int | float) else None

    async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        """A request to ``path`` under the config's ``api_url``, with a good token; a token
        refused (expired early) is bought again once."""
        response = await self.authorized(method, self._url(path), json=json)
        if response.status_code != 401:
            return response
        raise VerdaError(
            f"Verda refused a fresh access token {_said(response)}; {_CREDENTIALS_FIX}",
            _code(response),
        )

    async def listed(self, path: str, what: str) -> list[dict[str, Any]]:
        """A list Verda answers (its entries that are objects)."""
        response = await self.request("GET", path)
        found = response_json(response)
        if response.status_code != 200 or not isinstance(found, list):
            raise _refused(f"list {what}", response)
        return [entry for entry in found if isinstance(entry, dict)]

    async def availability(self) -> dict[str, tuple[str, ...]]:
        """The locations that have each instance type available now, by type."""
        where: dict[str, list[str]] = {}
        for location in await self.listed("/instance-availability", "its availability"):
            code, types = location.get("location_code"), location.get("availabilities")
            if isinstance(code, str) and isinstance(types, list):
                for kind in types:
                    if isinstance(kind, str):
                        where.setdefault(kind, []).append(code)
        return {kind: tuple(codes) for kind, codes in where.items()}


def _size(entry: Mapping[str, Any], field: str, key: str) -> float | None:
    part = entry.get(field)
    return positive_number(part.get(key)) if isinstance(part, dict) else None


def _gpu_of(name: str, entry: Mapping[str, Any]) -> Accelerator | None:
    """The GPUs of an instance type, from its name (and its listed count), or None."""
    match = _TYPE_NAME.fullmatch(name)
    if match is None or match[2] not in GPU_MODELS:
        return None
    model = GPU_MODELS[match[2]]
    if match[2] == "A100" and match[3].startswith("40"):
        model = accelerators.A100(memory="40GB", form_factor="SXM")
    listed = _size(entry, "gpu", "number_of_gpus")
    count = int(listed) if listed is not None else int(match[1])
    return attrs.evolve(model, count=count) if count > 0 else None


def offers_of(
    config: Verda, types: Sequence[Mapping[str, Any]], available: Mapping[str, Sequence[str]]
) -> tuple[Offer, ...]:
    """Verda's instance types as offers, in the order listed.

    A type's regions are the locations that have it available now (the configured one
    only, when set); one available nowhere has no price, so a spec's refusal says Verda
    has none. Its price is the whole instance's, per hour.
    """
    found: list[Offer] = []
    for entry in types:
        name = entry.get("instance_type")
        if not isinstance(name, str):
            continue
        gpu = _gpu_of(name, entry)
        if gpu is None:
            continue
        regions = tuple(r for r in available.get(name, ()) if config.location in (None, r))
        price = positive_number(entry.get("price_per_hour"))
        found.append(
            Offer(
                provider="sky.Verda()",
                name=name,
                vcpus=_size(entry, "cpu", "number_of_cores"),
                memory_gb=_size(entry, "memory", "size_in_gigabytes"),
                disk_gb=_size(entry, "storage", "size_in_gigabytes"),
                architecture="arm64" if gpu.name == "GB200" else "x86_64",
                regions=regions,
                on_demand_price=round(price, 4) if price is not None and regions else None,
                accelerator=gpu,
            )
        )
    return tuple(found)


async def _listed(api: _API, config: Verda, wanted: int) -> tuple[Offer, ...]:
    types = await api.listed("/instance-types", "its instance types")
    return offers_of(config, types, await api.availability())


#: Verda's instance types with ``gpus`` of ``accelerator``'s model, each an offer; with
#: ``everything`` and no accelerator, every type with GPUs Skyward names.
catalog = GPUCatalog(
    "sky.Verda() rents GPU instances", Verda.resolved_credentials, _API, _listed, VerdaError
)


def startup_script(host_key: _transport.SSHKey) -> str:
    """The startup script of one instance: it installs the host key made for it as sshd's
    only one and restarts sshd (the pool's key is authorized by Verda, by its id)."""
    private = _transport.private_openssh(host_key).decode().strip()
    public = _transport.public_openssh(host_key).strip()
    return (
        "#!/bin/sh\n"
        "# Skyward: the host key made for this instance, so the client knows it before it\n"
        "# logs in.\n"
        "set -eu\n"
        "umask 077\n"
        "rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub\n"
        "cat > /etc/ssh/ssh_host_ed25519_key <<'SKYWARD_HOST_KEY'\n"
        f"{private}\n"
        "SKYWARD_HOST_KEY\n"
        f"echo '{public}' > /etc/ssh/ssh_host_ed25519_key.pub\n"
        "chmod 644 /etc/ssh/ssh_host_ed25519_key.pub\n"
        "systemctl restart ssh 2>/dev/null || systemctl restart sshd 2>/dev/null || "
        "service ssh restart\n"
    )


async def given_host_key(host: str, port: int, expected: str) -> None:
    """Poll until sshd at ``host:port`` presents ``expected`` (the caller's deadline): the
    startup script installs it, maybe after sshd first answered with the image's key; no
    login is tried before."""
    delays = poll_delays()
    while True:
        try:
            presented = await _transport.fetch_host_key(host, port, like=[expected])
        except _transport.SSHError:
            presented = None  # still booting
        if presented is not None and presented.split()[:2] == expected.split()[:2]:
            return
        await trio.sleep(next(delays))


@attrs.frozen
class _Machine:
    """What the API says of one instance."""

    id: str
    name: str  # its hostname
    status: str  # new, ordered, provisioning, running, offline, error, no_capacity, ...
    ip: str | None


def machine_of(body: object) -> _Machine | None:
    """An instance as the API shows it, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
        return None
    ip = body.get("ip")
    return _Machine(
        id=body["id"],
        name=str(body.get("hostname") or ""),
        status=str(body.get("status") or "").lower(),
        ip=ip if isinstance(ip, str) and ip else None,
    )


def _refusal(kind: str, location: str, response: httpx.Response) -> str:
    """Why a create was refused, with the fix where Verda's answer says what it is."""
    quoted = _said(response)
    code = _code(response)
    if response.status_code == 402 or code == "insufficient_funds":
        return (
            f"Verda refused to create {kind} in {location}: the account's balance is too "
            f"low {quoted}. Add funds in Verda's console (Billing)"
        )
    if response.status_code == 403 or code == "forbidden_action":
        return (
            f"Verda refused to create {kind} in {location} {quoted}. If it names a quota or "
            "limit, delete instances you no longer need or ask Verda's support to raise it"
        )
    return f"Verda did not create {kind} in {location} {quoted}"


class VerdaCluster(RentedCluster[Verda, _Machine]):
    """One pool's instances on Verda (see the module)."""

    name = "verda"
    cloud = "Verda"
    error = VerdaError
    end_wait = _DELETE_WAIT
    _api: _API

    def __init__(
        self, config: Verda, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        self._setup_lock = trio.Lock()
        self._key_id: str | None = None

    async def _ssh_key(self) -> str:
        """The id of the pool's SSH key, registered by the first node that needs it."""
        async with self._setup_lock:
            if self._key_id is None:
                body = {"name": self._key_name, "key": self._public_key}
                response = await self._api.request("POST", "/ssh-keys", json=body)
                key_id = _made_id(response)
                if key_id is None:
                    raise _refused(f"register the pool's SSH key as {self._key_name}", response)
                self._key_id = key_id
            return self._key_id

    async def _script(self, name: str, host_key: _transport.SSHKey) -> str:
        """The id of a new startup script ``name`` that installs ``host_key``."""
        body = {"name": name, "script": startup_script(host_key)}
        response = await self._api.request("POST", "/scripts", json=body)
        script_id = _made_id(response)
        if script_id is None:
            raise _refused(f"make the startup script {name}", response)
        return script_id

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Create one instance of the first type and location with capacity: its id and
        type."""
        key_id = await self._ssh_key()
        script_id = await self._script(name, host_key)
        full: list[str] = []
        for offer in self._offers:
            for location in self._regions(offer):
                body = {
                    "instance_type": offer.name,
                    "image": self.config.image,
                    "ssh_key_ids": [key_id],
                    "startup_script_id": script_id,
                    "location_code": location,
                    "hostname": name,
                    "description": f"Skyward job {self.job_id}, node {node}",
                    "is_spot": False,
                }
                response = await self._api.request("POST", "/instances", json=body)
                made = _made_id(response)
                if made is not None:
                    self._live.add(made)
                    return made, offer
                # Documented for this call: 503 service_unavailable is no capacity.
                if response.status_code == 503 and _code(response) == "service_unavailable":
                    full.append(f"{offer.name} in {location}")
                    continue
                raise VerdaError(_refusal(offer.name, location, response), _code(response))
        raise VerdaError(
            "Verda has no capacity now for any instance type and location of this spec "
            f"(full: {', '.join(full) or 'none listed as available'}); try again later, or "
            "widen the spec (another accelerator, region=None)"
        )

    async def _pin_host_key(self, machine_id: str, host: str, port: int, given: str) -> str:
        await given_host_key(host, port, given)
        return given

    async def _get(self, machine_id: str) -> _Machine | None:
        """The instance as Verda sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/instances/{machine_id}")
        if response.status_code == 404:
            return None
        found = machine_of(response_json(response)) if response.status_code == 200 else None
        if found is None:
            raise _refused(f"say how instance {machine_id} is", response)
        return found

    def _address(self, machine: _Machine) -> tuple[str, str] | None:
        """Up once running with its IP (its only address)."""
        if machine.status == "running" and machine.ip is not None:
            return machine.ip, machine.ip
        return None

    def _failed(self, machine: _Machine) -> str | None:
        if machine.status not in _UP:
            return f"instance {machine.id} ended before it came up ({machine.status})"
        return None

    def _running(self, machine: _Machine) -> bool:
        """False once it errs, is offline or gone."""
        return machine.status in _UP

    def _ended(self, machine: _Machine) -> bool:
        return machine.status in ("deleted", "discontinued")

    async def _request_end(self, machine_id: str) -> str | None:
        # Without volume_ids only the OS volume is deleted (others would be detached and
        # keep billing); Skyward attaches none.
        body = {"action": "delete", "id": machine_id}
        response = await self._api.request("PUT", "/instances", json=body)
        if response.is_success or response.status_code == 404:
            return None
        return _said(response)

    async def _listed(self) -> list[_Machine]:
        found = await self._api.listed("/instances", "the instances")
        return [m for m in map(machine_of, found) if m is not None]

    def _releases(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        # The scripts first: a script is named after an instance, the key after the job.
        return [
            (
                f"the {what} {self._key_name}*",
                functools.partial(self._delete_named, path, what),
            )
            for path, what in (("/scripts", "startup scripts"), ("/ssh-keys", "SSH key"))
        ]

    def _left_behind(self, failed: str) -> str:
        return (
            "sky.Verda could not confirm every instance of this pool deleted and its SSH "
            f"key and startup scripts deleted; these may still bill: {failed}. Check Verda's "
            f"console for instances, SSH keys and scripts named {self._key_name}*"
        )

    async def _delete_named(self, path: str, what: str) -> None:
        """Delete what ``path`` lists under the pool's names: ``skyward-<job>`` and
        ``skyward-<job>-*`` (one whose create answer never came included)."""
        for entry in await self._api.listed(path, what):
            name, entry_id = entry.get("name"), entry.get("id")
            if not isinstance(name, str) or not isinstance(entry_id, str):
                continue
            if name != self._key_name and not name.startswith(self._prefix):
                continue
            response = await self._api.request("DELETE", f"{path}/{entry_id}")
            if not response.is_success and response.status_code != 404:
                raise _refused(f"delete {what} {entry_id}", response)
        if path == "/ssh-keys":
            self._key_id = None
