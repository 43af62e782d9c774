"""A fake of Vultr's API v2 for the tests, whose instances are real sshd "machines".

``sky.Vultr`` cannot reach Vultr from the tests, so it is tested against this: a local HTTP
server that answers the subset of Vultr's API v2 the provider uses, the way Vultr documents
it: list plans (``?type=vcg``), a region's availability, create, list, get and delete
instances, and create, list and delete SSH keys. Lists are paginated (``per_page``,
``cursor``; ``meta.links.next``); answers wrap their object (``{"instance": ...}``,
``{"ssh_key": ...}``); errors are ``{"error": "...", "status": N}``.

Each instance is a private ``sshd`` (``sshd.start_sshd``) on port 22 of its own loopback
address 127.6.B.N (no other fake uses 127.6; B is a block per pytest-xdist worker and fake,
N from 10 up, skipping an address whose port 22 is taken), set up as Vultr's cloud-init sets
up its Ubuntu image: the create's SSH keys (by id) are authorized, and so are the
``ssh_authorized_keys`` of its user data (base64 of ``#cloud-config`` then one JSON object),
whose ``ssh_keys.ed25519_private`` becomes sshd's host key. Its sessions are those of the
user running the tests (root, as on Vultr's images). Its home is short and its own
(``$TMPDIR/vultr-*``, moved under ``root`` when the fake is left). Deleting or killing an
instance ends every process of it, by pid: those whose environment holds
``FAKE_VULTR_MACHINE=<its directory under root>``, a marker no other fake (in this process
or another) can share.

The fake is stricter than Vultr: a body with a field it does not know is a 400 naming the
field, so that a misspelt field fails here instead of being ignored there.
"""

from __future__ import annotations

import base64
import binascii
import copy
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from fake_cloud import (
    AddressBlocks,
    Checks,
    Failures,
    MachineCloud,
    Recorded,
    Refused,
    SshAddresses,
    _Answer,
    _is_int,
    _is_list_of_text,
    _is_text,
    check_body,
    cloud_init,
    fake_uuid,
    need_root_machines,
    start_machine,
)
from sshd import Machine

FIRST_ADDRESS = 10  # 127.6.B.10
#: What a create of a plan a region cannot create now is answered (Vultr's words unknown).
NOT_AVAILABLE = "Plan is not available in the selected region."


def plan(
    plan_id: str,
    gpu_type: str,
    vram: int,
    monthly: float,
    vcpus: int,
    locations: Sequence[str],
) -> dict[str, Any]:
    """One Cloud GPU plan as ``GET /plans?type=vcg`` lists it (RAM in MB, disk in GB)."""
    return {
        "id": plan_id,
        "vcpu_count": vcpus,
        "ram": 15360 * vcpus,
        "disk": 100 * vcpus,
        "disk_count": 1,
        "bandwidth": 10240,
        "monthly_cost": monthly,
        "hourly_cost": round(monthly / 730, 3),
        "type": "vcg",
        "locations": list(locations),
        "gpu_vram_gb": vram,
        "gpu_type": gpu_type,
    }


DEFAULT_PLANS: tuple[dict[str, Any], ...] = (
    plan("vcg-a16-6c-64g-16vram", "NVIDIA_A16", 16, 313.0, 6, ["ewr", "ord"]),
    plan("vcg-a100-1c-6g-4vram", "NVIDIA_A100", 4, 90.0, 1, ["ewr"]),  # a vGPU slice
    plan("vcg-a100-12c-120g-80vram", "NVIDIA_A100", 80, 1460.0, 12, ["ewr", "ams", "ord"]),
    plan("vcg-a100-24c-240g-160vram", "NVIDIA_A100", 160, 2920.0, 24, ["ewr"]),
    plan("vcg-a40-24c-180g-48vram", "NVIDIA_A40", 48, 1251.0, 24, ["ams"]),
    plan("vcg-l40s-16c-180g-48vram", "NVIDIA_L40S", 48, 1215.0, 16, ["lax", "ams"]),
    plan("vcg-l40s-24c-240g-48vram", "NVIDIA_L40S", 48, 1400.0, 24, ["ord"]),
    plan("vcg-h100-1c-10g-8vram", "NVIDIA_H100", 8, 200.0, 1, ["sea"]),  # a vGPU slice
    plan("vcg-x1-1c-8g-8vram", "NVIDIA_X1", 8, 50.0, 1, ["ewr"]),  # a GPU Skyward lacks
)
#: Which plans each region can create now (``GET /regions/{id}/availability``).
DEFAULT_AVAILABILITY: Mapping[str, Sequence[str]] = {
    "ewr": ["vcg-a16-6c-64g-16vram", "vcg-a100-1c-6g-4vram", "vcg-a100-24c-240g-160vram"],
    "ord": ["vcg-a16-6c-64g-16vram", "vcg-a100-12c-120g-80vram", "vcg-l40s-24c-240g-48vram"],
    "ams": ["vcg-a100-12c-120g-80vram", "vcg-a40-24c-180g-48vram", "vcg-l40s-16c-180g-48vram"],
    "lax": ["vcg-l40s-16c-180g-48vram"],
    "sea": [],
}

#: The third octets B of the fake Vultrs' addresses, 127.6.B.x: one each (and
#: ``SshAddresses`` skips one held all the same).
_BLOCKS = AddressBlocks()


def need_fake_vultr() -> None:
    """Skip where the fake's machines cannot listen on port 22 (``need_root_machines``)."""
    need_root_machines(FakeVultr.title, suite="sky.Vultr")


@attrs.define
class FakeInstance:
    """An instance the fake created: its create's JSON, its sshd machine and its state (a
    ``fake_cloud.MachineRecord``: it ends once, deleted or killed)."""

    id: str
    body: dict[str, Any]
    machine: Machine
    directory: Path
    ready_at: float  # time.monotonic() after which it is active, with an address
    status: str = "pending"  # then active
    power_status: str = "running"  # stopped once killed
    deleted: bool = False
    running: bool = True

    @property
    def label(self) -> str:
        return str(self.body.get("label", ""))

    def shown_status(self) -> str:
        if self.status == "pending" and time.monotonic() >= self.ready_at:
            self.status = "active"
        return self.status


class _Refused(Refused):
    """A request the fake answers with an error in Vultr's shape (which has no code)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message, status=status)


class FakeVultr(MachineCloud[str, FakeInstance]):
    """Vultr's API v2 at ``api_url`` on ``127.0.0.1``, with sshd machines for instances
    (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake Vultr"
    marker = "FAKE_VULTR_MACHINE"
    mark_by_directory = True

    def __init__(
        self,
        root: Path,
        *,
        plans: Sequence[Mapping[str, Any]] = DEFAULT_PLANS,
        availability: Mapping[str, Sequence[str]] = DEFAULT_AVAILABILITY,
        start_delay: float = 0.0,
        per_page_max: int = 500,
    ) -> None:
        """``plans`` and ``availability``: what the fake lists (copied; changeable).
        ``start_delay``: seconds after a create during which the instance is pending.
        ``per_page_max``: the most a page holds, whatever ``per_page`` asks."""
        super().__init__(root)
        self.api_key = "VULTRFAKE" + secrets.token_hex(16).upper()
        self.plans: list[dict[str, Any]] = [copy.deepcopy(dict(p)) for p in plans]
        self.availability: dict[str, list[str]] = {r: list(p) for r, p in availability.items()}
        self.start_delay = start_delay
        self.per_page_max = per_page_max
        self.instances: dict[str, FakeInstance] = {}
        self.ssh_keys: dict[str, dict[str, str]] = {}  # by id
        #: (plan, region): the next create of it is refused, and the region's availability
        #: stops listing the plan from then on (someone took the last one meanwhile).
        self.sell_out: set[tuple[str, str]] = set()
        self._failures = Failures()
        self._addresses = SshAddresses(f"127.6.{_BLOCKS.take()}", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-vultr") + "/v2"

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeInstance]:
        """Instances not deleted (stopped ones included: they still bill), in create
        order."""
        with self._lock:
            return [i for i in self.instances.values() if not i.deleted]

    def fail_creates(self, n: int, message: str, *, status: int = 400, after: int = 0) -> None:
        """After ``after`` more creates, the next ``n`` with a valid body are refused with
        ``message``."""
        with self._lock:
            self._failures.plan(n, _Refused(message, status), after=after)

    def kill(self, instance_id: str) -> None:
        """The instance's machine dies at once (every process killed); Vultr then shows it
        stopped until it is deleted, and still bills it."""
        self._kill(instance_id, _stopped)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[str, FakeInstance]:
        return self.instances

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as Vultr's API sends it."""
        return _Answer(refused.status, {"error": refused.message, "status": refused.status})

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        method, path = request.method, request.path
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
            raise _Refused("Invalid API token.", 401)
        if raw and request.body is None:
            raise _Refused("body: not JSON")
        parts = path.strip("/").split("/")
        if parts[:1] != ["v2"]:
            raise _Refused(f"not found: {method} {path}", 404)
        return self._route(method, parts[1:], request.body, request.query)

    def _route(
        self, method: str, rest: list[str], body: Any, query: dict[str, list[str]]
    ) -> _Answer:
        known: set[str] = set()  # the query parameters this request may carry
        if method == "GET" and rest in (["plans"], ["instances"], ["ssh-keys"]):
            known = {"per_page", "cursor"} | ({"type"} if rest == ["plans"] else set())
        elif len(rest) == 3 and rest[0] == "regions" and rest[2] == "availability":
            known = {"type"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise _Refused(f"{unknown[0]}: not a query parameter the fake Vultr knows here")
        if rest == ["plans"] and method == "GET":
            if _one(query, "type") != "vcg":
                raise _Refused("type: the fake Vultr lists only Cloud GPU plans (type=vcg)")
            with self._lock:
                return self._page("plans", copy.deepcopy(self.plans), query)
        if len(rest) == 3 and rest[0] == "regions" and rest[2] == "availability":
            if method != "GET":
                raise _Refused(f"not found: {method} /{'/'.join(rest)}", 404)
            with self._lock:
                if rest[1] not in self.availability:
                    raise _Refused("Invalid region.", 404)
                available = list(self.availability[rest[1]])
            if query and _one(query, "type") != "vcg":
                raise _Refused("type: the fake Vultr knows only type=vcg")
            return _Answer(200, {"available_plans": available})
        if rest == ["instances"] and method == "POST":
            return self._create(body)
        if rest == ["instances"] and method == "GET":
            with self._lock:
                shown = [self._json(i) for i in self.instances.values() if not i.deleted]
            return self._page("instances", shown, query)
        if len(rest) == 2 and rest[0] == "instances" and method in ("GET", "DELETE"):
            return self._instance(method, rest[1])
        if rest == ["ssh-keys"] and method == "GET":
            with self._lock:
                keys = [dict(k) for k in self.ssh_keys.values()]
            return self._page("ssh_keys", keys, query)
        if rest == ["ssh-keys"] and method == "POST":
            return self._add_key(body)
        if len(rest) == 2 and rest[0] == "ssh-keys" and method == "DELETE":
            with self._lock:
                if self.ssh_keys.pop(rest[1], None) is None:
                    raise _Refused("Invalid SSH key.", 404)
            return _Answer(204, None)
        raise _Refused(f"not found: {method} /{'/'.join(rest)}", 404)

    def _page(self, field: str, entries: list[Any], query: dict[str, list[str]]) -> _Answer:
        """One page of a list: ``per_page`` entries (Vultr's default 100) from ``cursor``."""
        per_page = _one(query, "per_page") or "100"
        if not per_page.isdigit() or int(per_page) < 1:
            raise _Refused("per_page: expected a positive integer")
        size = min(int(per_page), self.per_page_max)
        cursor = _one(query, "cursor") or ""
        try:
            start = int(base64.b64decode(cursor.encode(), validate=True)) if cursor else 0
        except (ValueError, binascii.Error):
            raise _Refused("cursor: not a cursor this list gave") from None
        shown = entries[start : start + size]
        following = start + size
        links = {
            "next": base64.b64encode(str(following).encode()).decode()
            if following < len(entries)
            else "",
            "prev": base64.b64encode(str(max(0, start - size)).encode()).decode() if start else "",
        }
        return _Answer(200, {field: shown, "meta": {"total": len(entries), "links": links}})

    # -- SSH keys --------------------------------------------------------------------------------

    def _add_key(self, body: Any) -> _Answer:
        _check(body, _KEY_FIELDS, required=("name", "ssh_key"))
        with self._lock:
            key_id = fake_uuid()
            key = {
                "id": key_id,
                "date_created": _now(),
                "name": body["name"],
                "ssh_key": body["ssh_key"].strip(),
            }
            self.ssh_keys[key_id] = key
            return _Answer(201, {"ssh_key": dict(key)})

    # -- instances -------------------------------------------------------------------------------

    def _create(self, body: Any) -> _Answer:
        _check(body, _CREATE_FIELDS, required=("region", "plan"))
        if sum(k in body for k in ("os_id", "image_id", "snapshot_id", "app_id", "iso_id")) != 1:
            raise _Refused("one of os_id, image_id, snapshot_id, app_id or iso_id is required")
        try:
            user_data = base64.b64decode(body.get("user_data", "").encode(), validate=True)
        except (ValueError, binascii.Error):
            raise _Refused("user_data: not base64") from None
        # One create at a time, under the lock, sshd start included: leaving the fake then
        # waits for a create in flight, and no machine starts after the fake ended them all.
        with self._lock:
            plans = {p["id"]: p for p in self.plans}
            plan_id, region = body["plan"], body["region"]
            if plan_id not in plans:
                raise _Refused("Invalid plan chosen.")
            if region not in self.availability:
                raise _Refused("Invalid region chosen.")
            keys = []
            for key_id in body.get("sshkey_id", []):
                if key_id not in self.ssh_keys:
                    raise _Refused(f"Invalid SSH key: {key_id}")
                keys.append(self.ssh_keys[key_id]["ssh_key"])
            self._failures.check()
            if (plan_id, region) in self.sell_out:
                self.sell_out.discard((plan_id, region))
                listed = self.availability[region]
                if plan_id in listed:
                    listed.remove(plan_id)
                raise _Refused(NOT_AVAILABLE)
            if (
                region not in plans[plan_id]["locations"]
                or plan_id not in self.availability[region]
            ):
                raise _Refused(NOT_AVAILABLE)
            instance = self._start(body, keys, user_data.decode("utf-8", "replace"))
            self.instances[instance.id] = instance
            return _Answer(202, {"instance": self._json(instance)})

    def _start(self, body: dict[str, Any], keys: list[str], user_data: str) -> FakeInstance:
        address = self._addresses.take()
        instance_id = fake_uuid()
        directory = self.root / instance_id
        directory.mkdir(parents=True)
        authorized = cloud_init(directory, user_data, keys)
        machine = start_machine(
            self.root,
            instance_id,
            address,
            authorized,
            port=22,
            env=self._marker_env(instance_id),
            home="vultr-",  # as /root
        )
        return FakeInstance(
            id=instance_id,
            body=body,
            machine=machine,
            directory=directory,
            ready_at=time.monotonic() + self.start_delay,
        )

    def _instance(self, method: str, instance_id: str) -> _Answer:
        with self._lock:
            instance = self.instances.get(instance_id)
            if instance is None or instance.deleted:
                raise _Refused("Invalid instance-id.", 404)
            if method == "GET":
                return _Answer(200, {"instance": self._json(instance)})
            instance.deleted = True
            running, instance.running = instance.running, False
        if running:
            self._end(instance, abrupt=False)
        return _Answer(204, None)

    def _json(self, instance: FakeInstance) -> dict[str, Any]:
        """The instance as GET shows it: an address once it is active."""
        status = instance.shown_status()
        plan = next(p for p in self.plans if p["id"] == instance.body["plan"])
        up = status == "active"
        return {
            "id": instance.id,
            "os": "Ubuntu 22.04 LTS x64",
            "ram": plan["ram"],
            "disk": plan["disk"],
            "main_ip": instance.machine.addr if up else "0.0.0.0",
            "vcpu_count": plan["vcpu_count"],
            "region": instance.body["region"],
            "plan": plan["id"],
            "date_created": _now(),
            "status": status,
            "allowed_bandwidth": plan["bandwidth"],
            "netmask_v4": "255.255.254.0" if up else "",
            "gateway_v4": "0.0.0.0",
            "power_status": instance.power_status,
            "server_status": "ok" if up else "none",
            "v6_network": "",
            "v6_main_ip": "",
            "v6_network_size": 0,
            "label": instance.label,
            "internal_ip": "",
            "kvm": "",
            "hostname": instance.body.get("hostname", ""),
            "os_id": instance.body.get("os_id", 0),
            "app_id": 0,
            "image_id": "",
            "firewall_group_id": "",
            "features": [],
            "tags": list(instance.body.get("tags", [])),
            "user_scheme": "root",
        }


def _stopped(instance: FakeInstance) -> None:
    """``kill``'s mark: Vultr shows a killed instance stopped."""
    if instance.deleted:
        raise ValueError(f"instance {instance.id} is deleted")
    instance.power_status = "stopped"


_KEY_FIELDS: Checks = {
    "name": (_is_text, "a non-empty string"),
    "ssh_key": (_is_text, "an OpenSSH public key line"),
}
_CREATE_FIELDS: Checks = {
    "region": (_is_text, "a region's id"),
    "plan": (_is_text, "a plan's id"),
    "os_id": (lambda v: _is_int(v) and v > 0, "an OS id"),
    "image_id": (_is_text, "an image id"),
    "snapshot_id": (_is_text, "a snapshot id"),
    "app_id": (_is_int, "an application id"),
    "iso_id": (_is_text, "an ISO id"),
    "sshkey_id": (_is_list_of_text, "a list of SSH key ids"),
    "label": (lambda v: isinstance(v, str) and len(v) <= 255, "a string"),
    "hostname": (_is_text, "a hostname"),
    "tags": (_is_list_of_text, "a list of tags"),
    "user_data": (_is_text, "base64 text"),
    "backups": (lambda v: v in ("enabled", "disabled"), '"enabled" or "disabled"'),
    "enable_ipv6": (lambda v: isinstance(v, bool), "a boolean"),
    "activation_email": (lambda v: isinstance(v, bool), "a boolean"),
    "firewall_group_id": (_is_text, "a firewall group id"),
}


def _check(body: Any, fields: Checks, required: Sequence[str]) -> None:
    """Refuse a body naming its first wrong field."""
    check_body(body, fields, required, title=FakeVultr.title, refused=_Refused)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is not None and len(values) != 1:
        raise _Refused(f"{name}: given more than once")
    return values[0] if values else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
