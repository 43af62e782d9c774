"""A fake of Hyperstack's Infrahub API for the tests, whose VMs are real sshd "machines".

``sky.Hyperstack`` cannot reach Hyperstack from the tests, so it is tested against this: a
local HTTP server that answers the subset of Hyperstack's API (``/v1``) the provider uses,
the way Hyperstack documents it: list flavors (per region, with stock) and the pricebook;
list and create environments; list, import and delete keypairs; create, list, get and
delete virtual machines; make, list and delete object storage access keys (whose S3
store is a test's moto server). Every request carries the key in the ``api_key`` header; answers
carry the envelope ``{"status": true, "message": ..., <payload>}`` (the pricebook a bare
list), errors ``{"status": false, "message": ..., "error_reason": ...}``.

Each VM is a private ``sshd`` (``sshd.start_sshd``) on port 22 of its own loopback address,
127.4.N.10 upward, N a block of its own to each fake alive on this machine (the other fakes
use 127.0.0.100+, 127.0.0.150+, 127.3.0.x and 127.K.0.x with K from 16), set up as
cloud-init sets up Hyperstack's Ubuntu images: the create's keypair (by name, in the VM's
environment) is authorized, and so are the ``ssh_authorized_keys`` of its user data
(``#cloud-config`` then one JSON object), whose ``ssh_keys.ed25519_private`` becomes sshd's
host key. Its sessions are those of the user running the tests (root, so that port 22
binds): the provider logs in as ``Hyperstack(username="root")`` here, as ``ubuntu`` on
Hyperstack. Its home is short and its own (``$TMPDIR/hyperstack-*``, moved to
``root/<id>/home`` when the fake is left). Deleting or killing a VM ends every process of
it, by pid.

The fake is stricter than Hyperstack: a body with a field the documentation does not list,
or without one it requires, is a 400 naming the field, so that a misspelt field fails here
instead of being ignored there. Where the documentation is silent, the fake decides, and
docs/providers.md lists each such decision as something to verify: a create Hyperstack
cannot fill for stock is a 400 (``error_reason`` ``bad_request``) and the flavor is listed
out of stock from then on; a VM gets an address only with ``assign_floating_ip``; a
deleted VM shows ``DELETING`` for ``delete_delay`` seconds, then is not found; an access
key's create answers its ``id``, ``access_key`` and ``secret_key`` in the envelope itself
(as the Hyperstack client Skyward's API reference follows reads them), and only CANADA-1
has object storage.
"""

from __future__ import annotations

import copy
import ipaddress
import secrets
import time
import zlib
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
    _Answer,
    _is_int,
    _is_text,
    check_body,
    cloud_init,
    need_root_machines,
    start_machine,
)
from sshd import Machine

FIRST_ADDRESS = 10  # 127.4.N.10
FIRST_VM_ID = 4100
REGIONS = ("CANADA-1", "NORWAY-1", "US-1")
STORAGE_REGIONS = ("CANADA-1",)
IMAGE = "Ubuntu Server 22.04 LTS R535 CUDA 12.2"
NO_STOCK = "Not enough stock available for the requested flavor in this region."


def flavor(
    name: str, gpu: str, gpus: int, cpus: int, region: str, *, stock: bool = True
) -> dict[str, Any]:
    """One flavor in one region as ``GET /core/flavors`` lists it (RAM and disk in GB)."""
    return {
        "id": zlib.crc32(f"{name} {region}".encode()) % 100_000,
        "name": name,
        "display_name": None,
        "region_name": region,
        "cpu": cpus,
        "ram": 60 * max(gpus, 1),
        "disk": 100,
        "ephemeral": 750 * gpus,
        "gpu": gpu,
        "gpu_count": gpus,
        "stock_available": stock,
        "created_at": "2026-01-01T00:00:00Z",
        "labels": [],
        "features": {},
    }


DEFAULT_FLAVORS: tuple[dict[str, Any], ...] = (
    flavor("n3-RTX-A6000x1", "RTX-A6000", 1, 28, "CANADA-1"),
    flavor("n3-A100x1", "A100-80G-PCIe", 1, 28, "CANADA-1"),
    flavor("n3-A100x1", "A100-80G-PCIe", 1, 28, "NORWAY-1"),
    flavor("n3-A100x2", "A100-80G-PCIe", 2, 60, "CANADA-1"),
    flavor("n3-A100x1-spot", "A100-80G-PCIe-spot", 1, 28, "CANADA-1"),
    flavor("n3-H100x1", "H100-80G-PCIe", 1, 28, "CANADA-1"),
    flavor("n3-H100x1", "H100-80G-PCIe", 1, 28, "NORWAY-1"),
    flavor("n3-H100-SXM5x1", "H100-80G-SXM5", 1, 24, "US-1"),
    flavor("n3-H100x8-NVLink", "H100-80G-PCIe-NVLink", 8, 252, "CANADA-1", stock=False),
    flavor("n3-RTX-A4000x1", "RTX-A4000", 1, 6, "NORWAY-1"),
    flavor("n1-cpu-small", "", 0, 4, "NORWAY-1"),
)

#: The pricebook: USD per hour per GPU, by the GPU's name (some values as text, as
#: Hyperstack's own answers have them), and what a flavor's other parts cost.
DEFAULT_PRICES: tuple[dict[str, Any], ...] = tuple(
    {
        "id": i,
        "name": name,
        "value": value,
        "original_value": value,
        "discount_applied": False,
        "start_time": None,
        "end_time": None,
    }
    for i, (name, value) in enumerate(
        [
            ("RTX-A6000", 0.5),
            ("A100-80G-PCIe", "1.35"),
            ("A100-80G-PCIe-spot", 0.8),
            ("H100-80G-PCIe", 1.9),
            ("H100-80G-SXM5", 2.4),
            ("H100-80G-PCIe-NVLink", 1.95),
            ("RTX-A4000", 0.15),
            ("Cloud-SSD", 0.00011),
            ("vCPU (cpu-only-flavors)", 0.012),
        ],
        start=1,
    )
)


#: The third octets of the fake Hyperstacks' addresses, 127.4.N.x: one each.
_BLOCKS = AddressBlocks()


def need_fake_hyperstack() -> None:
    """Skip where the fake's machines cannot listen on port 22 (``need_root_machines``)."""
    need_root_machines(FakeHyperstack.title, suite="sky.Hyperstack")


@attrs.define
class FakeVM:
    """A VM the fake created: its create's JSON, its region, its sshd machine and state (a
    ``fake_cloud.MachineRecord``: it ends once, deleted or killed)."""

    id: int
    body: dict[str, Any]
    region: str
    keypair: dict[str, Any]
    machine: Machine
    ready_at: float  # time.monotonic() after which it is ACTIVE
    status: str = "CREATING"  # then ACTIVE; ERROR once killed; DELETING once deleted
    deleted_at: float | None = None  # time.monotonic() of its delete
    running: bool = True

    @property
    def name(self) -> str:
        return str(self.body["name"])

    def shown_status(self) -> str:
        if self.status == "CREATING" and time.monotonic() >= self.ready_at:
            self.status = "ACTIVE"
        return self.status


class _Refused(Refused):
    """A request the fake answers with an error in Hyperstack's shape (its ``code`` the
    ``error_reason``)."""

    def __init__(self, message: str, reason: str = "bad_request", status: int = 400) -> None:
        super().__init__(message, reason, status)


class FakeHyperstack(MachineCloud[int, FakeVM]):
    """Hyperstack's Infrahub API at ``api_url`` on ``127.0.0.1``, with sshd machines for
    VMs (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake Hyperstack"
    marker = "FAKE_HYPERSTACK_VM_ID"
    noun = "VM"
    closing_code = failure_code = "internal_error"

    def __init__(
        self,
        root: Path,
        *,
        flavors: Sequence[Mapping[str, Any]] = DEFAULT_FLAVORS,
        prices: Sequence[Mapping[str, Any]] = DEFAULT_PRICES,
        start_delay: float = 0.0,
        delete_delay: float = 0.0,
    ) -> None:
        """``flavors``: what ``GET /core/flavors`` lists (copied; changeable), one entry
        per flavor and region. ``start_delay``: seconds a created VM shows CREATING.
        ``delete_delay``: seconds a deleted VM shows DELETING."""
        super().__init__(root)
        self.api_key = "hs_fake_" + secrets.token_hex(16)
        self.flavors: list[dict[str, Any]] = [copy.deepcopy(dict(f)) for f in flavors]
        self.prices: list[dict[str, Any]] = [copy.deepcopy(dict(p)) for p in prices]
        self.start_delay = start_delay
        self.delete_delay = delete_delay
        self.environments: dict[str, dict[str, Any]] = {}  # by name
        self.keypairs: dict[int, dict[str, Any]] = {}  # by id
        self.vms: dict[int, FakeVM] = {}
        #: Object storage access keys, by id (their secret included), and how many were
        #: ever made.
        self.access_keys: dict[int, dict[str, Any]] = {}
        self.access_keys_made = 0
        self._key_delete_failures = Failures()
        #: (flavor, region): the next create of it is refused for stock, and the flavor is
        #: listed out of stock there from then on (someone took the last one meanwhile).
        self.sell_out: set[tuple[str, str]] = set()
        self._failures = Failures()
        self._block = _BLOCKS.take()
        self._next_address = FIRST_ADDRESS
        # Ids of its own too: a VM's processes are found (and ended) by their id.
        self._next_id = FIRST_VM_ID + 1000 * self._block
        self._next_key = 4500
        self.api_url = self._listen(self._serve, "fake-hyperstack") + "/v1"

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeVM]:
        """VMs not deleted (ERROR ones included: they still bill), in create order."""
        with self._lock:
            return [vm for vm in self.vms.values() if vm.deleted_at is None]

    def fail_creates(
        self,
        n: int,
        *,
        message: str,
        status: int = 400,
        reason: str = "bad_request",
        after: int = 0,
    ) -> None:
        """After ``after`` more creates, the next ``n`` with a valid body are refused."""
        with self._lock:
            self._failures.plan(n, _Refused(message, reason, status), after=after)

    def fail_key_deletes(self, n: int, *, status: int = 500) -> None:
        """The next ``n`` deletes of an access key are refused with ``status``."""
        with self._lock:
            self._key_delete_failures.plan(
                n, _Refused("Object storage is unavailable", "internal_error", status)
            )

    def kill(self, vm_id: int) -> None:
        """The VM's machine dies at once (every process killed); Hyperstack then shows it
        ``ERROR`` until it is deleted, and still bills it."""
        self._kill(vm_id, _in_error)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[int, FakeVM]:
        return self.vms

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as Hyperstack's API sends it."""
        payload = {"status": False, "message": refused.message, "error_reason": refused.code}
        return _Answer(refused.status, payload)

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        method, path = request.method, request.path
        given = request.headers.get("api_key", "").encode()
        if not secrets.compare_digest(given, self.api_key.encode()):
            raise _Refused("Invalid or expired API key", "unauthorized", 401)
        if raw and request.body is None:
            raise _Refused("body: not JSON")
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            raise _Refused(f"not found: {method} {path}", "not_found", 404)
        allowed = {"region"} if parts[1:] == ["core", "flavors"] else set()
        unknown = sorted(set(request.query) - allowed)
        if unknown:
            raise _Refused(f"{unknown[0]}: not a query parameter it knows")
        return self._route(method, parts[1:], request.query, request.body)

    def _route(
        self, method: str, rest: list[str], query: Mapping[str, list[str]], body: Any
    ) -> _Answer:
        if rest == ["core", "flavors"] and method == "GET":
            return self._list_flavors(query.get("region", [None])[-1])
        if rest == ["pricebook"] and method == "GET":
            with self._lock:
                return _Answer(200, copy.deepcopy(self.prices))
        if rest == ["core", "environments"] and method == "GET":
            with self._lock:
                shown = [dict(e) for e in self.environments.values()]
            return _ok("Success", environments=shown)
        if rest == ["core", "environments"] and method == "POST":
            return self._make_environment(body)
        if rest == ["core", "keypairs"] and method == "GET":
            with self._lock:
                shown = [dict(k) for k in self.keypairs.values()]
            return _ok("Success", keypairs=shown)
        if rest == ["core", "keypairs"] and method == "POST":
            return self._import_keypair(body)
        if len(rest) == 3 and rest[:2] == ["core", "keypair"] and method == "DELETE":
            return self._delete_keypair(rest[2])
        if rest == ["core", "virtual-machines"] and method == "POST":
            return self._create(body)
        if rest == ["core", "virtual-machines"] and method == "GET":
            with self._lock:
                shown = [self._json(vm) for vm in self.vms.values() if self._listed(vm)]
            return _ok("Success", instances=shown)
        if len(rest) == 3 and rest[:2] == ["core", "virtual-machines"] and method == "GET":
            with self._lock:
                vm = self._vm(rest[2])
                return _ok("Success", instance=self._json(vm))
        if len(rest) == 3 and rest[:2] == ["core", "virtual-machines"] and method == "DELETE":
            return self._delete(rest[2])
        if rest == ["object-storage", "access-keys"] and method == "POST":
            return self._make_access_key(body)
        if rest == ["object-storage", "access-keys"] and method == "GET":
            with self._lock:
                shown = [
                    {k: v for k, v in key.items() if k != "secret_key"}
                    for key in self.access_keys.values()
                ]
            return _ok("Success", access_keys=shown)
        if len(rest) == 3 and rest[:2] == ["object-storage", "access-keys"] and method == "DELETE":
            return self._delete_access_key(rest[2])
        raise _Refused(f"not found: {method} /v1/{'/'.join(rest)}", "not_found", 404)

    # -- object storage --------------------------------------------------------------------------

    def _make_access_key(self, body: Any) -> _Answer:
        _check(body, _ACCESS_KEY_FIELDS, required=("region",))
        if body["region"] not in STORAGE_REGIONS:
            raise _Refused(
                f"region: no object storage in {body['region']!r} "
                f"(one of {', '.join(STORAGE_REGIONS)})"
            )
        with self._lock:
            self.access_keys_made += 1
            key_id = 9000 + self.access_keys_made
            key = {
                "id": key_id,
                "user_id": 27,
                "access_key": "HSAK" + secrets.token_hex(8).upper(),
                "secret_key": secrets.token_urlsafe(30),
                "region": body["region"],
                "description": body.get("description"),
                "created_at": _now(),
            }
            self.access_keys[key_id] = key
        return _ok("Access key created successfully", **copy.deepcopy(key))

    def _delete_access_key(self, given: str) -> _Answer:
        with self._lock:
            self._key_delete_failures.check()
            if not given.isdigit() or self.access_keys.pop(int(given), None) is None:
                raise _Refused(f"no access key {given}", "not_found", 404)
        return _ok("Access key deleted successfully")

    # -- flavors ---------------------------------------------------------------------------------

    def _list_flavors(self, region: str | None) -> _Answer:
        if region is not None and region not in REGIONS:
            raise _Refused(f"region: no region {region!r} (one of {', '.join(REGIONS)})")
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        with self._lock:
            for entry in self.flavors:
                if region in (None, entry["region_name"]):
                    key = (entry["gpu"], entry["region_name"])
                    groups.setdefault(key, []).append(copy.deepcopy(entry))
        data = [
            {"gpu": gpu, "region_name": where, "flavors": listed}
            for (gpu, where), listed in groups.items()
        ]
        return _ok("Success", data=data)

    def _flavor(self, name: str, region: str) -> dict[str, Any] | None:
        """Under the lock: the flavor named ``name`` as listed in ``region``."""
        for entry in self.flavors:
            if entry["name"] == name and entry["region_name"] == region:
                return entry
        return None

    # -- environments and keypairs ---------------------------------------------------------------

    def _make_environment(self, body: Any) -> _Answer:
        _check(body, _ENVIRONMENT_FIELDS, required=("name", "region"))
        if body["region"] not in REGIONS:
            raise _Refused(f"region: no region {body['region']!r} (one of {', '.join(REGIONS)})")
        with self._lock:
            if body["name"] in self.environments:
                raise _Refused(
                    f"An environment named {body['name']!r} already exists", "conflict", 409
                )
            made = {
                "id": len(self.environments) + 600,
                "name": body["name"],
                "region": body["region"],
                "created_at": _now(),
                "features": {"network_optimised": False, "green_status": "GREEN"},
            }
            self.environments[body["name"]] = made
        return _ok("Environment has been created successfully", environment=dict(made))

    def _import_keypair(self, body: Any) -> _Answer:
        _check(body, _KEYPAIR_FIELDS, required=("name", "environment_name", "public_key"))
        with self._lock:
            environment = self._environment(body["environment_name"])
            if any(
                k["name"] == body["name"] and k["environment"]["name"] == environment["name"]
                for k in self.keypairs.values()
            ):
                raise _Refused(
                    f"A keypair named {body['name']!r} exists in this environment",
                    "conflict",
                    409,
                )
            key_id = self._next_key
            self._next_key += 1
            key = {
                "id": key_id,
                "name": body["name"],
                "environment": dict(environment),
                "public_key": body["public_key"].strip(),
                "fingerprint": secrets.token_hex(16),
                "created_at": _now(),
            }
            self.keypairs[key_id] = key
        return _ok("Keypair is imported successfully", keypair=copy.deepcopy(key))

    def _environment(self, name: str) -> dict[str, Any]:
        """Under the lock: the environment a body names in ``environment_name``."""
        environment = self.environments.get(name)
        if environment is None:
            raise _Refused(f"environment_name: no environment {name!r}", "not_found", 404)
        return environment

    def _delete_keypair(self, given: str) -> _Answer:
        with self._lock:
            if not given.isdigit() or self.keypairs.pop(int(given), None) is None:
                raise _Refused(f"no keypair {given}", "not_found", 404)
        return _ok("Keypair deleted successfully")

    # -- virtual machines ------------------------------------------------------------------------

    def _create(self, body: Any) -> _Answer:
        _check(
            body,
            _CREATE_FIELDS,
            required=("name", "environment_name", "flavor_name", "key_name", "count"),
        )
        if "image_name" not in body and "volume_name" not in body:
            raise _Refused("image_name: required unless booting from volume_name")
        for rule in body.get("security_rules", []):
            _check(
                rule,
                _RULE_FIELDS,
                required=("direction", "protocol", "ethertype", "remote_ip_prefix"),
            )
        if body["count"] != 1:
            raise _Refused("count: the fake Hyperstack creates one VM at a time")
        # One create at a time, under the lock, sshd start included: leaving the fake then
        # waits for a create in flight, and no machine starts after the fake ended them all.
        with self._lock:
            environment = self._environment(body["environment_name"])
            region = environment["region"]
            listed = self._flavor(body["flavor_name"], region)
            if listed is None:
                raise _Refused(f"flavor_name: no flavor {body['flavor_name']!r} in {region}")
            if body.get("image_name", IMAGE) != IMAGE:
                raise _Refused(f"image_name: no image {body['image_name']!r} in {region}")
            keys = [
                k
                for k in self.keypairs.values()
                if k["name"] == body["key_name"] and k["environment"]["name"] == environment["name"]
            ]
            if not keys:
                raise _Refused(
                    f"key_name: no keypair {body['key_name']!r} in environment "
                    f"{environment['name']!r}",
                    "not_found",
                    404,
                )
            self._failures.check()
            if (body["flavor_name"], region) in self.sell_out:
                self.sell_out.discard((body["flavor_name"], region))
                listed["stock_available"] = False
            if not listed["stock_available"]:
                raise _Refused(NO_STOCK)
            vm = self._start(body, region, keys[0])
            self.vms[vm.id] = vm
            shown = self._json(vm)
        return _ok("Virtual machine(s) created successfully", instances=[shown])

    def _start(self, body: dict[str, Any], region: str, keypair: dict[str, Any]) -> FakeVM:
        if self._next_address > 254:
            raise RuntimeError("the fake Hyperstack has no loopback address left for a VM")
        address = f"127.4.{self._block}.{self._next_address}"
        self._next_address += 1
        vm_id = self._next_id
        self._next_id += 1
        directory = self.root / str(vm_id)
        directory.mkdir(parents=True)
        authorized = cloud_init(directory, body.get("user_data", ""), [keypair["public_key"]])
        machine = start_machine(
            self.root,
            str(vm_id),
            address,
            authorized,
            port=22,
            env=self._marker_env(vm_id),
            home="hyperstack-",  # as /home/ubuntu
        )
        return FakeVM(
            id=vm_id,
            body=body,
            region=region,
            keypair=keypair,
            machine=machine,
            ready_at=time.monotonic() + self.start_delay,
        )

    def _listed(self, vm: FakeVM) -> bool:
        """Under the lock: whether the VM is still listed (a deleted one, for a while)."""
        return vm.deleted_at is None or time.monotonic() < vm.deleted_at + self.delete_delay

    def _vm(self, given: str) -> FakeVM:
        """Under the lock: the VM of that id, listed."""
        vm = self.vms.get(int(given)) if given.isdigit() else None
        if vm is None or not self._listed(vm):
            raise _Refused(f"Virtual machine {given} not found", "not_found", 404)
        return vm

    def _delete(self, given: str) -> _Answer:
        with self._lock:
            vm = self._vm(given)
            if vm.deleted_at is not None:
                raise _Refused(f"Virtual machine {given} is being deleted", "conflict", 409)
            vm.deleted_at = time.monotonic()
            vm.status = "DELETING"
            running, vm.running = vm.running, False
        if running:
            self._end(vm, abrupt=False)
        return _ok("Virtual machine deleted successfully")

    def _json(self, vm: FakeVM) -> dict[str, Any]:
        """Under the lock: the VM as GET shows it: a floating IP once it is up, if asked for."""
        status = vm.shown_status()
        up = status in ("ACTIVE", "ERROR")
        floating = vm.machine.addr if up and vm.body.get("assign_floating_ip") else None
        listed = self._flavor(vm.body["flavor_name"], vm.region) or {}
        return {
            "id": vm.id,
            "name": vm.name,
            "status": status,
            "power_state": "RUNNING" if status == "ACTIVE" else "NOSTATE",
            "vm_state": status.lower(),
            "fixed_ip": vm.machine.addr if up else None,
            "floating_ip": floating,
            "floating_ip_status": "ATTACHED" if floating else "NOT_ATTACHED",
            "environment": {"name": vm.body["environment_name"], "region": vm.region},
            "image": {"name": vm.body.get("image_name")},
            "flavor": {
                k: listed.get(k) for k in ("name", "cpu", "ram", "disk", "gpu", "gpu_count")
            },
            "keypair": {"name": vm.keypair["name"]},
            "security_rules": [
                dict(rule, id=i + 1, status="active")
                for i, rule in enumerate(vm.body.get("security_rules", []))
            ],
            "labels": list(vm.body.get("labels", [])),
            "locked": False,
            "os": "Ubuntu 22.04",
            "created_at": _now(),
        }


def _in_error(vm: FakeVM) -> None:
    """``kill``'s mark: Hyperstack shows a killed VM in ERROR."""
    if vm.deleted_at is not None:
        raise ValueError(f"VM {vm.id} is deleted")
    vm.status = "ERROR"


_ENVIRONMENT_FIELDS: Checks = {
    "name": (lambda v: _is_text(v) and len(v) <= 50, "a name of at most 50 characters"),
    "region": (_is_text, "a region's name"),
}
_KEYPAIR_FIELDS: Checks = {
    "name": (lambda v: _is_text(v) and len(v) <= 50, "a name of at most 50 characters"),
    "environment_name": (_is_text, "an environment's name"),
    "public_key": (_is_text, "an OpenSSH public key line"),
}
_CREATE_FIELDS: Checks = {
    "name": (lambda v: _is_text(v) and len(v) <= 50, "a name of at most 50 characters"),
    "environment_name": (_is_text, "an environment's name"),
    "image_name": (_is_text, "an image's name"),
    "volume_name": (_is_text, "a volume's name"),
    "create_bootable_volume": (lambda v: isinstance(v, bool), "true or false"),
    "flavor_name": (_is_text, "a flavor's name"),
    "flavor": (lambda v: isinstance(v, dict), "a flavor object"),
    "key_name": (_is_text, "a keypair's name"),
    "user_data": (lambda v: isinstance(v, str), "cloud-init user data"),
    "callback_url": (lambda v: _is_text(v) and len(v) <= 250, "a URL of at most 250"),
    "assign_floating_ip": (lambda v: isinstance(v, bool), "true or false"),
    "enable_port_randomization": (lambda v: isinstance(v, bool), "true or false"),
    "enhanced_monitoring_enabled": (lambda v: isinstance(v, bool), "true or false"),
    "security_rules": (lambda v: isinstance(v, list), "a list of firewall rules"),
    "profile": (lambda v: isinstance(v, dict), "a profile object"),
    "labels": (lambda v: isinstance(v, list) and all(_is_text(x) for x in v), "a list of text"),
    "count": (lambda v: _is_int(v) and 1 <= v <= 20, "an integer from 1 to 20"),
}


def _is_port(value: Any) -> bool:
    return _is_int(value) and 1 <= value <= 65535


def _is_network(value: Any) -> bool:
    try:
        ipaddress.ip_network(value)
    except (TypeError, ValueError):
        return False
    return True


_RULE_FIELDS: Checks = {
    "direction": (lambda v: v in ("ingress", "egress"), "ingress or egress"),
    "protocol": (lambda v: v in ("tcp", "udp", "icmp", "any"), "a protocol such as tcp"),
    "ethertype": (lambda v: v in ("IPv4", "IPv6"), "IPv4 or IPv6"),
    "remote_ip_prefix": (_is_network, "a network such as 0.0.0.0/0"),
    "port_range_min": (_is_port, "a port from 1 to 65535"),
    "port_range_max": (_is_port, "a port from 1 to 65535"),
}


_ACCESS_KEY_FIELDS: Checks = {
    "region": (_is_text, "a region name"),
    "description": (_is_text, "text"),
}


def _check(body: Any, fields: Checks, required: Sequence[str]) -> None:
    """Refuse a body naming its first wrong field."""
    check_body(body, fields, required, title=FakeHyperstack.title, refused=_Refused)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ok(message: str, **payload: Any) -> _Answer:
    """A success as Hyperstack's API sends it."""
    return _Answer(200, {"status": True, "message": message, **payload})
