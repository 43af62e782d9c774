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

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._model import Verda
from ._offers import Catalog, Choice, Offer
from ._providers import (
    API_TIMEOUT,
    Instance,
    ended_on_failure,
    poll_delays,
    remote_workdir,
    response_json,
)
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
#: A token is bought again this long before Verda says it expires.
_TOKEN_MARGIN = 60.0


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
    body = response_json(response)
    if isinstance(body, dict):
        words = [str(body[k]) for k in ("code", "message") if body.get(k)]
        if words:
            return ": ".join(words)[:500]
    return response.text.strip()[:500] or f"HTTP {response.status_code}"


def _refused(what: str, response: httpx.Response) -> VerdaError:
    """The error of a request Verda refused: what it did not do, in its words."""
    return VerdaError(
        f"Verda did not {what} ({response.status_code}: {_describe(response)})", _code(response)
    )


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


class _API:
    """Verda's API v1, with a bearer token bought from the client's id and secret."""

    def __init__(self, config: Verda) -> None:
        self.config = config
        self._client_id, self._secret = config.resolved_credentials()
        self._client = httpx.AsyncClient(timeout=API_TIMEOUT, follow_redirects=False)
        self._token: str | None = None
        self._expires = 0.0  # trio.current_time() past which the token is bought again
        self._token_lock = trio.Lock()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _url(self, path: str) -> str:
        return self.config.api_url.rstrip("/") + path

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise VerdaError(f"Verda's API at {url} did not answer: {exc}") from exc

    async def _bearer(self, *, renew: bool = False) -> str:
        """A token that is still good (bought now if there is none, it is near its end, or
        ``renew``)."""
        async with self._token_lock:
            if self._token is not None and not renew and trio.current_time() < self._expires:
                return self._token
            body = {
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._secret,
            }
            response = await self._send("POST", self._url("/oauth2/token"), json=body)
            answer = response_json(response)
            token = answer.get("access_token") if isinstance(answer, dict) else None
            if response.status_code in (400, 401, 403):
                raise VerdaError(
                    f"Verda refused the API client's credentials ({response.status_code}: "
                    f"{_describe(response)}); {_CREDENTIALS_FIX}",
                    _code(response),
                )
            if not response.is_success or not isinstance(token, str) or not token:
                raise _refused("give an access token", response)
            lifetime = answer.get("expires_in") if isinstance(answer, dict) else None
            seconds = float(lifetime) if isinstance(lifetime, int | float) else 3600.0
            self._token = token
            self._expires = trio.current_time() + max(seconds - _TOKEN_MARGIN, seconds / 2)
            return token

    async def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        """A request to ``path`` under the config's ``api_url``, with a good token; a token
        refused (expired early) is bought again once."""
        url = self._url(path)
        for renew in (False, True):
            token = await self._bearer(renew=renew)
            response = await self._send(
                method, url, json=json, headers={"Authorization": f"Bearer {token}"}
            )
            if response.status_code != 401:
                return response
        raise VerdaError(
            f"Verda refused a fresh access token ({response.status_code}: "
            f"{_describe(response)}); {_CREDENTIALS_FIX}",
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


def _number(value: object) -> float | None:
    """A positive number, given as one or as its text (Verda writes prices as text)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _size(entry: Mapping[str, Any], field: str, key: str) -> float | None:
    part = entry.get(field)
    return _number(part.get(key)) if isinstance(part, dict) else None


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
        price = _number(entry.get("price_per_hour"))
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


async def catalog(
    config: Verda, *, accelerator: Accelerator | None, gpus: float, everything: bool = False
) -> Catalog:
    """Verda's instance types with ``gpus`` of ``accelerator``'s model, each an offer; with
    ``everything`` and no accelerator, every type with GPUs Skyward names.

    Raises:
        ValueError: No client id or secret is set (a setting to fix, not a spec to skip).
    """
    config.resolved_credentials()  # before any request: the fix is the user's
    if accelerator is None and not everything:
        return Catalog(error="sky.Verda() rents GPU instances: pass an accelerator")
    api = _API(config)
    try:
        types = await api.listed("/instance-types", "its instance types")
        available = await api.availability()
    except VerdaError as exc:
        return Catalog(error=str(exc))
    finally:
        await api.aclose()
    wanted = max(1, math.ceil(gpus))
    return Catalog(
        offers=tuple(
            o
            for o in offers_of(config, types, available)
            if o.accelerator is not None and (accelerator is None or o.accelerator.count == wanted)
        )
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
    hostname: str
    status: str  # new, ordered, provisioning, running, offline, error, no_capacity, ...
    ip: str | None


def machine_of(body: object) -> _Machine | None:
    """An instance as the API shows it, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
        return None
    ip = body.get("ip")
    return _Machine(
        id=body["id"],
        hostname=str(body.get("hostname") or ""),
        status=str(body.get("status") or "").lower(),
        ip=ip if isinstance(ip, str) and ip else None,
    )


def _refusal(kind: str, location: str, response: httpx.Response) -> str:
    """Why a create was refused, with the fix where Verda's answer says what it is."""
    said = f"({response.status_code}: {_describe(response)})"
    code = _code(response)
    if response.status_code == 402 or code == "insufficient_funds":
        return (
            f"Verda refused to create {kind} in {location}: the account's balance is too "
            f"low {said}. Add funds in Verda's console (Billing)"
        )
    if response.status_code == 403 or code == "forbidden_action":
        return (
            f"Verda refused to create {kind} in {location} {said}. If it names a quota or "
            "limit, delete instances you no longer need or ask Verda's support to raise it"
        )
    return f"Verda did not create {kind} in {location} {said}"


class VerdaCluster:
    """One pool's instances on Verda (see the module)."""

    name = "verda"
    # Instances reach each other only through their public addresses, and nothing says
    # which ports are open between them: the collections store runs in the client.
    peers_reachable = False

    def __init__(
        self, config: Verda, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        self.config = config
        self.job_id = job_id
        self._choice = choice
        self._offers = [choice.offer, *choice.also]  # cheapest first after the chosen
        self._public_key = _transport.public_openssh(client_key)
        self._login = _transport.Login(keys=(client_key,), tried="the pool's own key")
        self._api = _API(config)
        self._setup_lock = trio.Lock()
        self._key_id: str | None = None
        self._serial = 0
        self._live: set[str] = set()  # instance ids created and not confirmed gone

    @property
    def _prefix(self) -> str:
        return f"skyward-{self.job_id}-"

    @property
    def _key_name(self) -> str:
        return f"skyward-{self.job_id}"

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

    def _locations(self, offer: Offer) -> Sequence[str]:
        region = self._choice.spec.region
        return [r for r in offer.regions if region in (None, r)]

    async def _launch(self, node: int, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Create one instance of the first type and location with capacity: its id and
        type."""
        self._serial += 1
        name = f"{self._prefix}{node}-{self._serial}"
        key_id = await self._ssh_key()
        script_id = await self._script(name, host_key)
        full: list[str] = []
        for offer in self._offers:
            for location in self._locations(offer):
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

    async def provision(self, node: int) -> Instance:
        """Create an instance, wait until it runs with its IP and sshd answers with the host
        key it was given, and learn its home."""
        host_key = _transport.generate_key()
        host_public = _transport.public_openssh(host_key)
        instance_id, offer = await self._launch(node, host_key)
        async with ended_on_failure(lambda: self._delete(instance_id), VerdaError):
            running = await self._running(instance_id)
            assert running.ip is not None
            await given_host_key(running.ip, 22, host_public)
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
            private_ip=running.ip,
            public_ip=running.ip,
            python=None,
            workdir=workdir,
            hourly_price=offer.on_demand_price or self._choice.hourly_price,
            # No on_lease_expiry: nothing on the instance can delete it (see the module).
        )

    async def _get(self, instance_id: str) -> _Machine | None:
        """The instance as Verda sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/instances/{instance_id}")
        if response.status_code == 404:
            return None
        found = machine_of(response_json(response)) if response.status_code == 200 else None
        if found is None:
            raise _refused(f"say how instance {instance_id} is", response)
        return found

    async def _running(self, instance_id: str) -> _Machine:
        """Poll until the instance runs with an IP (the caller's deadline)."""
        delays = poll_delays()
        while True:
            now = await self._get(instance_id)
            if now is None:
                raise VerdaError(f"instance {instance_id} was deleted before it came up")
            if now.status not in _UP:
                raise VerdaError(f"instance {instance_id} ended before it came up ({now.status})")
            if now.status == "running" and now.ip is not None:
                return now
            await trio.sleep(next(delays))

    async def alive(self, instance: Instance) -> bool:
        """Whether Verda still runs the instance (False once it errs, is offline or gone)."""
        try:
            now = await self._get(instance.id)
        except VerdaError:
            return True  # the API did not answer: the reconnection finds out
        return now is not None and now.status in _UP

    async def terminate(self, instance: Instance) -> None:
        """Delete the instance and confirm Verda has it gone; raise otherwise."""
        await self._delete(instance.id)

    async def _delete(self, instance_id: str) -> None:
        # Without volume_ids only the OS volume is deleted (others would be detached and
        # keep billing); Skyward attaches none.
        body = {"action": "delete", "id": instance_id}
        response = await self._api.request("PUT", "/instances", json=body)
        if not response.is_success and response.status_code != 404:
            raise VerdaError(
                f"Verda did not delete instance {instance_id} ({response.status_code}: "
                f"{_describe(response)}); delete it in Verda's console"
            )
        await self._gone(instance_id)
        self._live.discard(instance_id)

    async def _gone(self, instance_id: str) -> None:
        """Wait until the instance is no longer there (or listed discontinued); raise past
        ``_DELETE_WAIT``."""
        delays = poll_delays()
        now: _Machine | None = None
        with trio.move_on_after(_DELETE_WAIT):
            while True:
                now = await self._get(instance_id)
                if now is None or now.status in ("deleted", "discontinued"):
                    return
                await trio.sleep(next(delays))
        raise VerdaError(
            f"Verda still lists instance {instance_id} as "
            f"{now.status if now is not None else 'unknown'} {_DELETE_WAIT:g} s after deleting "
            "it; delete it in Verda's console"
        )

    async def aclose(self) -> None:
        """Delete every instance of this job still there, those never handed out included
        (a create whose answer never came), then the pool's startup scripts and SSH key;
        raise naming anything left."""
        failed: list[str] = []
        try:
            with trio.move_on_after(2 * _DELETE_WAIT) as scope:
                unlisted = await self._find_strays()
                if unlisted is not None:
                    failed.append(unlisted)
                for instance_id in sorted(self._live):
                    try:
                        await self._delete(instance_id)
                    except VerdaError as exc:
                        failed.append(f"instance {instance_id} ({exc})")
                for path, what in (("/scripts", "startup scripts"), ("/ssh-keys", "SSH key")):
                    try:
                        await self._delete_named(path, what)
                    except VerdaError as exc:
                        failed.append(f"the {what} {self._key_name}* ({exc})")
            if scope.cancelled_caught:
                failed.append(f"no answer from Verda within {2 * _DELETE_WAIT:g} s")
        finally:
            await self._api.aclose()
        if failed:
            raise VerdaError(
                "sky.Verda could not confirm every instance of this pool deleted and its SSH "
                f"key and startup scripts deleted; these may still bill: {'; '.join(failed)}. "
                f"Check Verda's console for instances, SSH keys and scripts named "
                f"{self._key_name}*"
            )

    async def _find_strays(self) -> str | None:
        """Add the job's instances Verda lists to those to delete; or say why it could not
        list them (an instance created but never answered for may then be left)."""
        try:
            listed = await self._api.listed("/instances", "the instances")
        except VerdaError as exc:
            return f"the job's instances could not be listed: {exc}"
        for entry in listed:
            found = machine_of(entry)
            if (
                found is not None
                and found.hostname.startswith(self._prefix)
                and found.status not in ("deleted", "discontinued")
            ):
                self._live.add(found.id)
        return None

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
