"""A fake of TensorDock's API v2 for the tests, whose VMs are real sshd "machines".

``sky.TensorDock`` cannot reach TensorDock from the tests, so it is tested against this: a
local HTTP server that answers the subset of TensorDock's API v2 the provider uses, in the
shapes TensorDock's documentation and OpenAPI description give: the locations (``GET
/locations``, ``{"data": {"locations": [...]}}``, each with its ``gpus``: ``v0Name``,
``max_count``, ``price_per_hr``, ``resources`` and ``pricing``), create (``POST
/instances``, a JSON:API-style ``{"data": {"type": "virtualmachine", "attributes": ...}}``,
answering 201 with ``data.id``), get (``GET /instances/{id}``, ``data.attributes`` with
``status``, ``ipAddress``, ``portForwards``), list (``GET /instances``,
``data.instances``) and delete (``DELETE /instances/{id}``) a VM. The token is a bearer
token in ``Authorization``; errors are ``{"errors": [{"status", "title", "detail"}]}``.

A VM is a private sshd (``fake_cloud.start_machine``) on port 22 of its dedicated IP, a
loopback address 127.10.B.N (no other fake uses 127.10; B a block per pytest-xdist worker
and fake, N from 10 up, skipping an address whose port 22 is taken), set up from its
create as cloud-init sets up an image (``fake_cloud.cloud_init``): the create's
``ssh_key`` and the cloud-config's ``ssh_authorized_keys`` are authorized, its
``ssh_keys.ed25519_private`` is the host key. Its sessions are those of the user running
the tests (root: tests log in as ``root``). Deleting or killing a VM ends every process of
it, by pid: those whose environment holds ``FAKE_TENSORDOCK_MACHINE=<its directory under
root>``, a marker no other fake can share.

Assumed, not documented by TensorDock (``docs/providers.md`` lists what to verify): the
create's ``resources.gpus`` is ``{v0Name: {"count": n}}``; ``cloud_init`` is the
cloud-config's text; with ``useDedicatedIp`` sshd answers on port 22 of ``ipAddress``; a
create TensorDock has no capacity for is a 400 whose detail says "no available" GPUs; a
deleted VM is ``deleting`` a while, then a get answers 404 and the list leaves it out; a
price is the GPUs' ``price_per_hr`` times their count plus the vCPUs', RAM's and
storage's ``pricing``.

The fake is stricter than TensorDock: a body with a field it does not know is a 400 naming
the field, so that a misspelt field fails here instead of being ignored there.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
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
    StagedRecord,
    _Answer,
    _is_int,
    _is_text,
    check_body,
    cloud_init,
    end_staged,
    fake_uuid,
    need_root_machines,
    start_machine,
)

FIRST_ADDRESS = 10  # 127.10.B.10
BASE = "/api/v2"
NO_CAPACITY = "no available GPUs of this model at this location; try another location"


def gpu(
    v0_name: str,
    price: float,
    *,
    max_count: int = 8,
    max_vcpus: int = 64,
    max_ram_gb: int = 256,
    per_vcpu: float = 0.003,
    per_gb_ram: float = 0.002,
    per_gb_storage: float = 0.0001,
) -> dict[str, Any]:
    """One GPU model of a location as ``GET /locations`` lists it."""
    return {
        "v0Name": v0_name,
        "displayName": v0_name.upper(),
        "max_count": max_count,
        "price_per_hr": price,
        "resources": {"max_vcpus": max_vcpus, "max_ram_gb": max_ram_gb, "max_storage_gb": 2000},
        "pricing": {
            "per_vcpu_hr": per_vcpu,
            "per_gb_ram_hr": per_gb_ram,
            "per_gb_storage_hr": per_gb_storage,
        },
        "network_features": {
            "dedicated_ip_available": True,
            "port_forwarding_available": True,
            "network_storage_available": False,
        },
    }


def location(location_id: str, city: str, gpus: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "id": location_id,
        "city": city,
        "stateprovince": "",
        "country": "United States",
        "tier": 3,
        "gpus": [copy.deepcopy(dict(g)) for g in gpus],
    }


DEFAULT_LOCATIONS: tuple[dict[str, Any], ...] = (
    location(
        "loc-austin",
        "Austin",
        [
            gpu("geforcertx4090-pcie-24gb", 0.35, max_count=4),
            gpu("h100-sxm5-80gb", 2.2),
            gpu("geforcertx3090-pcie-24gb", 0.2),  # a GPU Skyward does not name
        ],
    ),
    location(
        "loc-chicago",
        "Chicago",
        [
            gpu("geforcertx4090-pcie-24gb", 0.45, max_count=2),
            gpu("l40-pcie-48gb", 0.9, max_count=1),
        ],
    ),
)

_BLOCKS = AddressBlocks()


def need_fake_tensordock() -> None:
    """Skip where the fake's machines cannot listen on port 22 (``need_root_machines``)."""
    need_root_machines(FakeTensorDock.title, suite="sky.TensorDock")


@attrs.define
class FakeVM(StagedRecord):
    """A VM the fake created: its create's attributes and its price, and its state and
    machine (``StagedRecord``): ``starting``, ``running`` once ``ready_at`` passed
    (``stopped`` once killed), ``deleting`` from its delete until ``delete_delay`` later,
    then gone."""

    STARTING = "starting"
    RUNNING = "running"
    ENDING = "deleting"

    id: str
    attributes: dict[str, Any]
    directory: Path
    price: float

    @property
    def name(self) -> str:
        return str(self.attributes.get("name", ""))


class _Refused(Refused):
    """A request the fake answers with an error in TensorDock's shape."""

    def __init__(self, message: str, status: int = 400, title: str = "Bad Request") -> None:
        super().__init__(message, title, status)


class FakeTensorDock(MachineCloud[str, FakeVM]):
    """TensorDock's API v2 at ``api_url`` on ``127.0.0.1``, with sshd machines for VMs
    (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake TensorDock"
    marker = "FAKE_TENSORDOCK_MACHINE"
    mark_by_directory = True
    noun = "VM"
    closing_code = "Service Unavailable"
    failure_code = "Internal Server Error"

    def __init__(
        self,
        root: Path,
        *,
        locations: Iterable[Mapping[str, Any]] = DEFAULT_LOCATIONS,
        start_delay: float = 0.0,
        delete_delay: float = 0.5,
    ) -> None:
        """``locations``: what ``GET /locations`` lists (copied; changeable).
        ``start_delay``: seconds a new VM is ``starting`` before it runs.
        ``delete_delay``: seconds a deleted VM is ``deleting`` before it is gone."""
        super().__init__(root)
        self.api_token = "td_" + secrets.token_urlsafe(24)
        self.locations: list[dict[str, Any]] = [copy.deepcopy(dict(loc)) for loc in locations]
        #: VMs each (location id, v0Name) may still have; absent: as many as asked for.
        self.capacity: dict[tuple[str, str], int] = {}
        self.start_delay = start_delay
        self.delete_delay = delete_delay
        self.vms: dict[str, FakeVM] = {}
        self._failures = Failures()
        self._addresses = SshAddresses(f"127.10.{_BLOCKS.take()}", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-tensordock") + BASE

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeVM]:
        """VMs not deleted (stopped ones included: TensorDock bills their storage), in
        create order."""
        with self._lock:
            return [v for v in self.vms.values() if v.ended_at is None]

    def fail_creates(
        self, n: int, message: str, *, status: int = 400, title: str = "Bad Request", after: int = 0
    ) -> None:
        """After ``after`` more creates, the next ``n`` are refused with ``message``."""
        with self._lock:
            self._failures.plan(n, _Refused(message, status, title), after=after)

    def kill(self, vm_id: str) -> None:
        """The VM's machine dies at once (every process killed); TensorDock then shows it
        stopped until it is deleted."""
        self._kill(vm_id, _stopped)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[str, FakeVM]:
        return self.vms

    def _refusal(self, refused: Refused) -> _Answer:
        return _Answer(
            refused.status,
            {
                "errors": [
                    {
                        "status": str(refused.status),
                        "title": refused.code,
                        "detail": refused.message,
                    }
                ]
            },
        )

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        if request.headers.get("authorization") != f"Bearer {self.api_token}":
            raise _Refused("invalid or missing API token", 401, "Unauthorized")
        if not request.path.startswith(BASE + "/"):
            raise _Refused(f"not found: {request.path}", 404, "Not Found")
        if request.query:
            raise _Refused(f"{sorted(request.query)[0]}: not a query parameter the fake knows")
        method, path = request.method, request.path[len(BASE) :]
        if (method, path) == ("GET", "/locations"):
            with self._lock:
                return _Answer(200, {"data": {"locations": copy.deepcopy(self.locations)}})
        if (method, path) == ("POST", "/instances"):
            return self._create(request.body)
        if (method, path) == ("GET", "/instances"):
            with self._lock:
                shown = [self._json(v) for v in self.vms.values()]
            return _Answer(200, {"data": {"instances": [s for s in shown if s is not None]}})
        parts = path.split("/")
        if len(parts) == 3 and parts[1] == "instances" and method in ("GET", "DELETE"):
            if method == "GET":
                with self._lock:
                    found = self.vms.get(parts[2])
                    shown = self._json(found) if found is not None else None
                if shown is None:
                    raise _Refused("instance not found", 404, "Not Found")
                return _Answer(200, {"data": shown})
            return self._delete(parts[2])
        raise _Refused(f"not found: {method} {path}", 404, "Not Found")

    def _create(self, body: Any) -> _Answer:
        check_body(
            body, {"data": (lambda v: isinstance(v, dict), "an object")}, ("data",), **_CHECK
        )
        data = body["data"]
        check_body(data, _DATA_FIELDS, ("type", "attributes"), **_CHECK)
        attributes = data["attributes"]
        check_body(attributes, _CREATE_FIELDS, _CREATE_REQUIRED, **_CHECK)
        resources = attributes["resources"]
        check_body(resources, _RESOURCE_FIELDS, tuple(_RESOURCE_FIELDS), **_CHECK)
        if data["type"] != "virtualmachine" or attributes.get("type") != "virtualmachine":
            raise _Refused("type: the fake TensorDock makes virtualmachine instances")
        if resources["storage_gb"] < 100:
            raise _Refused("storage_gb: the minimum storage is 100 GB")
        if attributes.get("useDedicatedIp") is not True:
            raise _Refused("useDedicatedIp: the fake TensorDock gives dedicated IPs only")
        gpus = resources["gpus"]
        if len(gpus) != 1:
            raise _Refused("gpus: one GPU model per instance")
        ((model, asked),) = gpus.items()
        if not (isinstance(asked, dict) and set(asked) == {"count"} and _is_int(asked["count"])):
            raise _Refused('gpus: expected {"<v0Name>": {"count": n}}')
        location_id = attributes["location_id"]
        with self._lock:
            self._failures.check()
            where = next((loc for loc in self.locations if loc["id"] == location_id), None)
            if where is None:
                raise _Refused(f"location_id: no location {location_id!r}", 404, "Not Found")
            listed = next((g for g in where["gpus"] if g["v0Name"] == model), None)
            if listed is None:
                raise _Refused(f"gpus: {location_id} has no {model}")
            left = self.capacity.get((location_id, model))
            if asked["count"] > listed["max_count"] or left == 0:
                raise _Refused(NO_CAPACITY)
            if resources["vcpu_count"] > listed["resources"]["max_vcpus"]:
                raise _Refused("vcpu_count: more than this location deploys")
            if resources["ram_gb"] > listed["resources"]["max_ram_gb"]:
                raise _Refused("ram_gb: more than this location deploys")
            if left is not None:
                self.capacity[(location_id, model)] = left - 1
            pricing = listed["pricing"]
            price = (
                listed["price_per_hr"] * asked["count"]
                + resources["vcpu_count"] * pricing["per_vcpu_hr"]
                + resources["ram_gb"] * pricing["per_gb_ram_hr"]
                + resources["storage_gb"] * pricing["per_gb_storage_hr"]
            )
            vm_id = fake_uuid()
            vm = FakeVM(
                id=vm_id,
                attributes=copy.deepcopy(attributes),
                directory=self.root / vm_id,
                price=round(price, 5),
            )
            self.vms[vm_id] = vm
            # Under the lock, the machine's start included: leaving the fake then waits for
            # a create in flight, and no machine starts after the fake ended them all.
            self._start(vm)
        return _Answer(
            201,
            {
                "data": {
                    "type": "virtualmachine",
                    "id": vm_id,
                    "attributes": {"name": vm.name, "status": "starting"},
                }
            },
        )

    def _start(self, vm: FakeVM) -> None:
        """The VM boots: cloud-init sets up its keys, sshd listens on its port 22."""
        address = self._addresses.take()
        vm.directory.mkdir(parents=True)
        authorized = cloud_init(
            vm.directory, vm.attributes.get("cloud_init", ""), [vm.attributes["ssh_key"]]
        )
        vm.machine = start_machine(
            self.root,
            vm.id,
            address,
            authorized,
            port=22,
            env=self._marker_env(vm.id),
            home="tensordock-",
        )
        vm.running = True
        vm.ready_at = time.monotonic() + self.start_delay

    def _delete(self, vm_id: str) -> _Answer:
        gone = _Refused("instance not found", 404, "Not Found")
        self._end_now(end_staged(self.vms, vm_id, self.delete_delay, gone), abrupt=False)
        return _Answer(200, {"data": {"type": "success", "message": "Instance deleted"}})

    def _json(self, vm: FakeVM) -> dict[str, Any] | None:
        """Under the lock: the VM as a get or the list shows it; None once it is gone."""
        status = vm.shown_status(self.delete_delay)
        if status is None:
            return None
        attributes = vm.attributes
        resources = attributes["resources"]
        ((model, asked),) = resources["gpus"].items()
        ip = vm.machine.addr if status == "running" and vm.machine is not None else None
        shown: dict[str, Any] = {
            "name": vm.name,
            "status": status,
            "portForwards": {},
            "resources": {
                "vcpu_count": resources["vcpu_count"],
                "ram_gb": resources["ram_gb"],
                "storage_gb": resources["storage_gb"],
                "gpus": [{"gpuV0Name": model, "count": asked["count"]}],
            },
            "rateHourly": vm.price,
            "location_id": attributes["location_id"],
            "image": attributes["image"],
        }
        if ip is not None:
            shown["ipAddress"] = ip
        return {"type": "virtualmachine", "id": vm.id, "attributes": shown}


_CHECK: dict[str, Any] = {"title": FakeTensorDock.title, "refused": _Refused}
_DATA_FIELDS: Checks = {
    "type": (_is_text, '"virtualmachine"'),
    "attributes": (lambda v: isinstance(v, dict), "an object"),
}
_CREATE_FIELDS: Checks = {
    "name": (lambda v: isinstance(v, str) and 0 < len(v) <= 255, "a name"),
    "type": (_is_text, '"virtualmachine"'),
    "image": (_is_text, "an image name"),
    "location_id": (_is_text, "a location id"),
    "hostnode_id": (_is_text, "a hostnode id"),
    "useDedicatedIp": (lambda v: isinstance(v, bool), "a boolean"),
    "ssh_key": (_is_text, "an OpenSSH public key"),
    "cloud_init": (lambda v: isinstance(v, str), "cloud-config text"),
    "resources": (lambda v: isinstance(v, dict), "an object"),
}
_CREATE_REQUIRED = ("name", "image", "resources", "location_id", "ssh_key")
_RESOURCE_FIELDS: Checks = {
    "vcpu_count": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "ram_gb": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "storage_gb": (_is_int, "an integer"),
    "gpus": (lambda v: isinstance(v, dict) and bool(v), '{"<v0Name>": {"count": n}}'),
}


def _stopped(vm: FakeVM) -> None:
    """``kill``'s mark: TensorDock shows a VM whose machine died stopped."""
    if vm.ended_at is not None:
        raise ValueError(f"VM {vm.id} was deleted")
    vm.status = "stopped"
