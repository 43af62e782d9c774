"""``sky.Scaleway``: GPU Instances rented from Scaleway, through its Instance API.

Scaleway's Instance API works per zone (``/instance/v1/zones/{zone}/...``): ``GET
products/servers`` lists the commercial types a zone sells (vCPUs, RAM in bytes, GPUs,
``hourly_price``), and ``GET products/servers/availability`` says how much of each it has
(``available``, ``scarce`` or ``shortage``, the last being none). Each GPU type whose GPU
Skyward names (``L4-1-24G``, ``L40S-2-48G``, ``H100-1-80G``, ``H100-SXM-2-80G``, and
``RENDER-S``, a P100) becomes one :class:`Offer` whose regions are the zones that list it
and are not short of it. A node is one Instance of the cheapest such type with the
spec's GPUs: created in the first of those zones, and when Scaleway answers
``out_of_stock`` (or refuses, and the zone's availability now says ``shortage``), in the
next zone, then as the next type (``Choice.also``).

An Instance is made stopped (``POST servers``), given its cloud-init user data
(``PATCH servers/{id}/user_data/cloud-init``, text; ``_aws.user_data`` with a host key
made for it), then powered on (``POST servers/{id}/action`` ``poweron``): capacity is taken
at power-on, so that is where a zone that ran out says so. Scaleway's images install the
Project's SSH keys at boot: the pool's public key is registered once as the IAM SSH key
``skyward-<job>`` of the Project and deleted when the pool closes. The Instance asks for a
dynamic public IP, released with it, so no flexible IP is left to bill.

Nothing is left billing by a pool that closes: every Instance is named
``skyward-<job>-<node>-<n>`` and tagged ``skyward-<job>``. Ending one terminates it when it
runs (``terminate`` deletes the Instance and its local volumes) or deletes it when it is
stopped, confirms Scaleway no longer has it (404), then deletes the volumes it had that
outlive it: Block Storage (``sbs_volume``) volumes, the kind GPU images boot from, survive
``terminate`` and bill until deleted through the Block Storage API. ``aclose`` ends every
Instance of the job still listed in the zones the pool used, one whose create was cut short
before its answer included. An Instance whose client vanished is not ended by itself:
Scaleway gives an Instance no credential of its own, the account's secret key is not
shipped to the node, and a powered-off Instance still bills its volumes and IP. The worker
exits when its lease runs out; the Instance bills until it is terminated.

The secret key travels only in the ``X-Auth-Token`` header; errors quote Scaleway's answer,
which never holds it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._aws import user_data
from ._model import Scaleway
from ._offers import Choice, Offer
from ._providers import KeyedAPI, failure_words, poll_delays, response_object, said
from ._rented import GPUCatalog, RentedCluster, positive_number
from .accelerators import Accelerator

__all__ = ["GPU_FAMILIES", "GPU_ZONES", "ScalewayCluster", "ScalewayError", "catalog"]

#: The zones Scaleway sells GPU Instances in; ``Scaleway(zone=...)`` picks one.
GPU_ZONES: tuple[str, ...] = ("fr-par-1", "fr-par-2", "nl-ams-1", "pl-waw-2")
#: A GPU commercial type's family (its name before the count) and the GPU it carries.
#: Types not listed (``GPU-3070-S``: an RTX 3070, which Skyward does not name) are not
#: offered.
GPU_FAMILIES: Mapping[str, Accelerator] = {
    "H100-SXM": accelerators.H100(form_factor="SXM"),
    "H100": accelerators.H100(form_factor="PCIe"),
    "L40S": accelerators.L40S(),
    "L4": accelerators.L4(),
    "RENDER": accelerators.P100(),
}
# L4-1-24G, H100-SXM-2-80G, ...: family, GPUs, memory of one; RENDER-S: one P100.
_TYPE = re.compile(r"(?P<family>[A-Z0-9]+(?:-SXM)?)-(?P<count>\d+)-\d+G|(?P<render>RENDER)-S")
#: What one page of a list holds (the most Scaleway's Instance API gives).
_PER_PAGE = 100
#: Availability that still creates an Instance (``shortage``: none left).
_IN_STOCK = ("available", "scarce")


class ScalewayError(RuntimeError):
    """Scaleway's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """Scaleway's own words for a failed request (its ``message``, and ``type``), else the
    body."""
    body = response_object(response)
    message, kind = body.get("message"), body.get("type")
    if not isinstance(message, str) or not message.strip():
        return failure_words(response)
    text = message.strip()
    return failure_words(response, f"{kind}: {text}" if isinstance(kind, str) and kind else text)


_said = functools.partial(said, describe=_describe_failure)


def _out_of_stock(response: httpx.Response) -> bool:
    return response_object(response).get("type") == "out_of_stock"


class _API(KeyedAPI[Scaleway]):
    """Scaleway's Instance, IAM and Block Storage APIs."""

    cloud = "Scaleway"
    error = ScalewayError
    key_fix = (
        "check SCW_SECRET_KEY or Scaleway(secret_key=...) (the secret key, not the access "
        "key), make a new API key at https://console.scaleway.com/iam/api-keys if it was "
        "deleted or expired, and give its principal InstancesFullAccess, "
        "BlockStorageFullAccess and SSHKeysFullAccess on the Project"
    )

    def __init__(self, config: Scaleway) -> None:
        super().__init__(config)
        self.project = config.resolved_credentials()[1]

    def key_headers(self, key: str) -> dict[str, str]:
        return {"X-Auth-Token": key}

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    def key_refused(self, response: httpx.Response) -> bool:
        """401, or 403 for want of a permission (a 403 for a quota is not the key's)."""
        if response.status_code == 401:
            return True
        kind = response_object(response).get("type")
        return response.status_code == 403 and kind == "permissions_denied"

    async def zone(self, method: str, zone: str, path: str, *, json: Any = None) -> httpx.Response:
        """A request to the Instance API of ``zone``."""
        return await self.request(method, f"/instance/v1/zones/{zone}{path}", json=json)

    async def text(self, zone: str, path: str, text: str) -> httpx.Response:
        """PATCH ``text`` (``text/plain``) to the Instance API of ``zone``."""
        url = f"{self.config.api_url.rstrip('/')}/instance/v1/zones/{zone}{path}"
        headers = {"Content-Type": "text/plain"}
        return await self.send("PATCH", url, content=text.encode(), headers=headers)

    async def types(self, zone: str) -> dict[str, dict[str, Any]]:
        """The commercial types ``zone`` sells, by name (every page)."""
        return await self._pages(zone, "/products/servers", "the commercial types")

    async def stock(self, zone: str) -> dict[str, str]:
        """How much ``zone`` has of each type (``available``, ``scarce``, ``shortage``)."""
        found = await self._pages(zone, "/products/servers/availability", "the availability")
        return {name: str(entry.get("availability", "")) for name, entry in found.items()}

    async def _pages(self, zone: str, path: str, what: str) -> dict[str, dict[str, Any]]:
        """Every entry of a zone's ``{"servers": {name: ...}}`` list (``page``,
        ``per_page``): pages until one comes back short."""
        found: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            query = urlencode({"per_page": _PER_PAGE, "page": page})
            response = await self.zone("GET", zone, f"{path}?{query}")
            entries = response_object(response).get("servers")
            if response.status_code != 200 or not isinstance(entries, dict):
                raise ScalewayError(f"Scaleway did not list {what} of {zone} {_said(response)}")
            found.update((k, v) for k, v in entries.items() if isinstance(v, dict))
            if len(entries) < _PER_PAGE:
                return found
            page += 1

    async def listed(self, path: str, field: str, **query: str) -> list[dict[str, Any]]:
        """Every entry of a list answered as ``{field: [...]}`` (``page``, and
        ``per_page`` or IAM's ``page_size``): pages until one comes back short."""
        size = "page_size" if path.startswith("/iam/") else "per_page"
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params = urlencode({**query, size: _PER_PAGE, "page": page})
            response = await self.request("GET", f"{path}?{params}")
            entries = response_object(response).get(field)
            if response.status_code != 200 or not isinstance(entries, list):
                raise ScalewayError(f"Scaleway did not list {field} {_said(response)}")
            found.extend(e for e in entries if isinstance(e, dict))
            if len(entries) < _PER_PAGE:
                return found
            page += 1


def _gpus(name: str, listed: Mapping[str, Any]) -> tuple[Accelerator, int] | None:
    """The type's GPU and how many it has; None for a type without a GPU Skyward names."""
    match = _TYPE.fullmatch(name)
    if match is None:
        return None
    family = match["render"] or match["family"]
    accelerator = GPU_FAMILIES.get(family)
    count = 1 if match["render"] else int(match["count"])
    gpu = listed.get("gpu")
    if accelerator is None or (isinstance(gpu, int) and gpu != count):
        return None  # an unknown GPU, or a name that does not say what the type has
    return accelerator, count


def _offer(name: str, listed: Mapping[str, Any], zones: Sequence[str]) -> Offer | None:
    """One type as an offer, or None if its GPUs are not ones Skyward names. Its regions
    are the zones that have it now; a type no zone has has no price, so a spec's refusal
    says Scaleway has none."""
    gpus = _gpus(name, listed)
    if gpus is None or listed.get("arch", "x86_64") != "x86_64":
        return None
    accelerator, count = gpus
    price = positive_number(listed.get("hourly_price"))
    ram = positive_number(listed.get("ram"))
    return Offer(
        provider="sky.Scaleway()",
        name=name,
        vcpus=positive_number(listed.get("ncpus")),
        memory_gb=round(ram / 1024**3, 1) if ram else None,  # Scaleway lists RAM in bytes
        disk_gb=None,  # the boot volume is sized from the image, not by the type
        architecture="x86_64",
        regions=tuple(zones),
        on_demand_price=price if zones else None,
        accelerator=attrs.evolve(accelerator, count=count),
    )


def _zones(config: Scaleway) -> tuple[str, ...]:
    return (config.zone,) if config.zone is not None else GPU_ZONES


async def _offers(api: _API, config: Scaleway) -> list[Offer]:
    """Every GPU type Skyward names, with the zones that have it now."""
    sold: dict[str, dict[str, Any]] = {}  # each type as the first zone that sells it lists it
    stocked: dict[str, list[str]] = {}
    for zone in _zones(config):
        types = {n: t for n, t in (await api.types(zone)).items() if _gpus(n, t) is not None}
        if not types:
            continue
        stock = await api.stock(zone)
        for name, listed in types.items():
            sold.setdefault(name, listed)
            if stock.get(name) in _IN_STOCK:
                stocked.setdefault(name, []).append(zone)
    found = (_offer(name, listed, stocked.get(name, [])) for name, listed in sold.items())
    return [o for o in found if o is not None]


#: Scaleway's GPU types with ``gpus`` of ``accelerator``'s model, each an offer; with
#: ``everything`` and no accelerator, every GPU type Skyward names.
catalog = GPUCatalog(
    "sky.Scaleway() rents GPU Instances",
    Scaleway.resolved_credentials,
    _API,
    lambda api, config, wanted: _offers(api, config),
    ScalewayError,
)


@attrs.frozen
class _Server:
    """What the API says of one Instance."""

    id: str
    name: str
    status: str  # its state: stopped, starting, running, stopping, locked...
    zone: str
    ip: str | None  # its public IPv4, once it has one
    private_ip: str | None
    volumes: tuple[tuple[str, str], ...]  # (id, volume_type) of each volume attached


def _server(body: object, zone: str) -> _Server | None:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return None
    volumes = body.get("volumes")
    attached = [
        (str(v["id"]), str(v.get("volume_type", "")))
        for v in (volumes.values() if isinstance(volumes, dict) else ())
        if isinstance(v, dict) and isinstance(v.get("id"), str)
    ]
    return _Server(
        id=body["id"],
        name=str(body.get("name") or ""),
        status=str(body.get("state", "")),
        zone=str(body.get("zone") or zone),
        ip=_public_ip(body),
        private_ip=body["private_ip"] if isinstance(body.get("private_ip"), str) else None,
        volumes=tuple(attached),
    )


def _public_ip(body: Mapping[str, Any]) -> str | None:
    """The Instance's public IPv4: from ``public_ips`` (routed IPs), else ``public_ip``."""
    listed = body.get("public_ips")
    candidates: Iterable[Any] = listed if isinstance(listed, list) else ()
    for ip in [*candidates, body.get("public_ip")]:
        if isinstance(ip, dict) and ip.get("family", "inet") == "inet":
            address = ip.get("address")
            if isinstance(address, str) and address:
                return address
    return None


def _refusal_fix(response: httpx.Response) -> str:
    """What to do about a refused create or power-on, from Scaleway's words for it."""
    words = _describe_failure(response).lower()
    if "quota" in words:
        return (
            "the Organization's quota is reached: end Instances you no longer need, or ask "
            "for a higher quota at https://console.scaleway.com/organization/quotas (new "
            "accounts may have no GPU quota until validated)"
        )
    if any(word in words for word in ("payment", "billing", "balance", "credit", "funds")):
        return "add a payment method at https://console.scaleway.com/billing/payment"
    return "fix the request or the account as Scaleway says"


class ScalewayCluster(RentedCluster[Scaleway, _Server]):
    """One pool's Instances on Scaleway (see the module)."""

    name = "scaleway"
    cloud = "Scaleway"
    error = ScalewayError
    thing = "Instance"
    ending = ("terminate", "terminating", "terminated")
    #: Scaleway terminates a running Instance only: one still starting (a GPU Instance
    #: takes minutes) is waited for before it can be ended.
    end_wait = 180.0
    _api: _API

    def __init__(
        self, config: Scaleway, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        super().__init__(config, job_id=job_id, client_key=client_key, choice=choice)
        self._api = _API(config)
        self._key_lock = trio.Lock()
        self._key_id: str | None = None  # the registered SSH key's id, once registered
        self._zone_of: dict[str, str] = {}  # each Instance's zone, by id
        #: The volumes of each Instance being ended that may outlive it: (zone, id, type).
        self._volumes: dict[str, list[tuple[str, str, str]]] = {}

    async def _registered_key(self) -> None:
        """Register the pool's SSH key with the Project, once (the first node does)."""
        async with self._key_lock:
            if self._key_id is None:
                key = {
                    "name": self._key_name,
                    "public_key": self._public_key,
                    "project_id": self._api.project,
                }
                response = await self._api.request("POST", "/iam/v1alpha1/ssh-keys", json=key)
                made = response_object(response).get("id")
                if response.status_code not in (200, 201) or not isinstance(made, str):
                    raise ScalewayError(
                        f"Scaleway did not register the pool's SSH key {self._key_name} "
                        f"{_said(response)}; {_refusal_fix(response)}"
                    )
                self._key_id = made

    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Create, configure and power on one Instance of the first type and zone that has
        it: its id and type."""
        await self._registered_key()
        data = user_data(self._public_key, host_key)
        refused: list[str] = []
        for offer in self._offers:
            for zone in self._regions(offer):
                body = {
                    "name": name,
                    "commercial_type": offer.name,
                    "image": self.config.image,
                    "project": self._api.project,
                    "tags": [self._key_name],
                    "dynamic_ip_required": True,
                }
                response = await self._api.zone("POST", zone, "/servers", json=body)
                made = _server(response_object(response).get("server"), zone)
                if response.status_code in (200, 201) and made is not None:
                    self._live.add(made.id)
                    self._zone_of[made.id] = zone
                    refusal = await self._started(made.id, zone, data)
                    if refusal is None:
                        return made.id, offer
                    await self._end(made.id)  # made, but it cannot start here
                    response = refusal
                if await self._short(response, zone, offer.name):
                    refused.append(f"{offer.name} in {zone}")
                    continue
                raise ScalewayError(
                    f"Scaleway refused to start {offer.name} in {zone} {_said(response)}; "
                    f"{_refusal_fix(response)}"
                )
        raise ScalewayError(
            "Scaleway has none of this spec's GPU types in stock now in any zone "
            f"(refused: {', '.join(refused) or 'none listed in stock'}); try again later, or "
            "widen the spec (another accelerator, zone=None)"
        )

    async def _started(self, server_id: str, zone: str, data: str) -> httpx.Response | None:
        """Give a new Instance its user data and power it on: None once Scaleway took the
        power-on, else its refusal."""
        path = f"/servers/{server_id}"
        response = await self._api.text(zone, f"{path}/user_data/cloud-init", data)
        if response.status_code not in (200, 204):
            return response
        response = await self._api.zone("POST", zone, f"{path}/action", json={"action": "poweron"})
        return None if response.status_code in (200, 202) else response

    async def _short(self, response: httpx.Response, zone: str, type_name: str) -> bool:
        """Whether a refusal means the zone has none of the type left: Scaleway said
        ``out_of_stock``, or its availability now says ``shortage``."""
        if _out_of_stock(response):
            return True
        return (await self._api.stock(zone)).get(type_name) not in _IN_STOCK

    async def _get(self, machine_id: str) -> _Server | None:
        """The Instance as Scaleway sees it now; None once it is gone."""
        zone = self._zone_of[machine_id]
        response = await self._api.zone("GET", zone, f"/servers/{machine_id}")
        if response.status_code == 404:
            return None
        found = _server(response_object(response).get("server"), zone)
        if response.status_code != 200 or found is None:
            raise ScalewayError(
                f"Scaleway did not say how Instance {machine_id} is {_said(response)}"
            )
        return found

    def _address(self, machine: _Server) -> tuple[str, str] | None:
        """Up once running with a public address."""
        if machine.status == "running" and machine.ip is not None:
            return machine.ip, machine.private_ip or machine.ip
        return None

    def _failed(self, machine: _Server) -> str | None:
        if machine.status == "locked":
            return (
                f"Scaleway locked Instance {machine.id} before it came up; see the "
                "Organization's notices at https://console.scaleway.com/"
            )
        return None

    def _running(self, machine: _Server) -> bool:
        """False once stopped (powered off, or its machine died) or locked."""
        return machine.status in ("starting", "running")

    async def _request_end(self, machine_id: str) -> str | None:
        """Terminate the Instance if it runs, delete it if it is stopped (Scaleway takes
        neither while it starts or stops: wait that out, bounded), noting the volumes that
        outlive it."""
        delays = poll_delays()
        now: _Server | None = None
        with trio.move_on_after(self.end_wait):
            while True:
                now = await self._get(machine_id)
                if now is None:
                    return None
                if now.status not in ("starting", "stopping"):
                    break
                await trio.sleep(next(delays))
        if now is None:
            return f"(no answer within {self.end_wait:g} s)"
        zone = now.zone
        self._volumes[machine_id] = [(zone, v, kind) for v, kind in now.volumes]
        path = f"/servers/{machine_id}"
        if now.status == "running":
            action = {"action": "terminate"}
            response = await self._api.zone("POST", zone, f"{path}/action", json=action)
        else:
            response = await self._api.zone("DELETE", zone, path)
        return None if response.status_code in (200, 202, 204, 404) else _said(response)

    async def _end(self, machine_id: str) -> None:
        """End the Instance and confirm it gone, then delete the volumes it left."""
        await super()._end(machine_id)
        failed: list[str] = []
        for zone, volume_id, kind in self._volumes.pop(machine_id, []):
            why = await self._delete_volume(zone, volume_id, kind)
            if why is not None:
                failed.append(f"{kind} volume {volume_id} in {zone} {why}")
        if failed:
            raise ScalewayError(
                f"Scaleway did not delete what Instance {machine_id} left: "
                f"{'; '.join(failed)}; delete it in Scaleway's console"
            )

    async def _delete_volume(self, zone: str, volume_id: str, kind: str) -> str | None:
        """Delete a volume the ended Instance left (a Block Storage volume stays attached
        a moment after its Instance is gone: retried, bounded); None once gone."""
        if kind == "sbs_volume":
            path = f"/block/v1alpha1/zones/{zone}/volumes/{volume_id}"
        else:  # a local volume of an Instance deleted while stopped
            path = f"/instance/v1/zones/{zone}/volumes/{volume_id}"
        delays = poll_delays()
        response: httpx.Response | None = None
        with trio.move_on_after(self.end_wait):
            while True:
                response = await self._api.request("DELETE", path)
                if response.status_code in (200, 204, 404):
                    return None
                if response.status_code not in (409, 412):  # still in use
                    break
                await trio.sleep(next(delays))
        return _said(response) if response is not None else "(no answer)"

    async def _listed(self) -> list[_Server]:
        """The job's Instances (by its tag) in every zone the pool may have used."""
        used = {z for o in self._offers for z in self._regions(o)}
        zones = sorted(used | set(self._zone_of.values()))
        found: list[_Server] = []
        for zone in zones:
            listed = await self._api.listed(
                f"/instance/v1/zones/{zone}/servers",
                "servers",
                project=self._api.project,
                tags=self._key_name,
            )
            for body in listed:
                server = _server(body, zone)
                if server is not None:
                    self._zone_of.setdefault(server.id, server.zone)
                    found.append(server)
        return found

    def _releases(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [(f"the SSH key {self._key_name}", self._delete_key)]

    def _left_behind(self, failed: str) -> str:
        return (
            "sky.Scaleway could not confirm every Instance of this pool terminated, its "
            f"volumes deleted and its SSH key deleted; these may still bill: {failed}. Check "
            f"Scaleway's console for Instances named {self._prefix}* (tag {self._key_name}), "
            f"Block Storage volumes left by them, and the SSH key {self._key_name}"
        )

    async def _delete_key(self) -> None:
        """Delete the pool's SSH key: the one registered, and any of its name in the
        Project (a register whose answer never came)."""
        ids = {self._key_id} if self._key_id is not None else set()
        keys = await self._api.listed(
            "/iam/v1alpha1/ssh-keys", "ssh_keys", name=self._key_name, project_id=self._api.project
        )
        ids |= {str(k["id"]) for k in keys if k.get("name") == self._key_name and "id" in k}
        for key_id in sorted(ids):
            response = await self._api.request("DELETE", f"/iam/v1alpha1/ssh-keys/{key_id}")
            if response.status_code not in (200, 204, 404):
                raise ScalewayError(f"Scaleway did not delete it {_said(response)}")
        self._key_id = None
