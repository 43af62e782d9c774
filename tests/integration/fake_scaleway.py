"""A fake of Scaleway's Instance, IAM and Block Storage APIs for the tests, whose Instances
are real sshd "machines".

``sky.Scaleway`` cannot reach Scaleway from the tests, so it is tested against this: a local
HTTP server that answers the subset of Scaleway's APIs the provider uses, the way Scaleway
documents them. Per zone (``/instance/v1/zones/{zone}/...``): the commercial types
(``products/servers``, ``{"servers": {name: {...}}}``, RAM in bytes) and their availability
(``products/servers/availability``: ``available``, ``scarce``, ``shortage``), both paged by
``page`` and ``per_page``; create (``POST servers``: stopped, with a Block Storage root
volume), list (``?project=&tags=``), get and delete (a stopped one) an Instance, set its
``cloud-init`` user data (``PATCH .../user_data/cloud-init``, ``text/plain``) and act on it
(``POST .../action``: ``poweron``, ``terminate``). IAM: create, list (``?name=&project_id=``,
``page``, ``page_size``) and delete the Project's SSH keys. Block Storage: get and delete a
volume. The key is the ``X-Auth-Token`` header; errors are ``{"type": ..., "message": ...}``.

Each powered-on Instance is a private ``sshd`` (``sshd.start_sshd``) on port 22 of its own
loopback address 127.7.B.N (no other fake uses 127.7; B is a block per pytest-xdist worker
and fake, N from 10 up, skipping an address whose port 22 is taken), set up as Scaleway's
images set themselves up at boot: the Project's SSH keys at power-on are authorized, and so
are the ``ssh_authorized_keys`` of its cloud-init user data (``#cloud-config`` then one JSON
object), whose ``ssh_keys.ed25519_private`` becomes sshd's host key. Its sessions are those
of the user running the tests (root, as on Scaleway's images). Its home is short and its own
(``$TMPDIR/scaleway-*``, moved under ``root`` when the fake is left). Terminating or killing
an Instance ends every process of it, by pid: those whose environment holds
``FAKE_SCALEWAY_MACHINE=<its directory under root>``, a marker no other fake (in this process
or another) can share.

What Scaleway does and the fake does too: capacity is taken at power-on, where a zone that
has none left answers ``out_of_stock``; ``terminate`` (a running Instance only) deletes the
Instance and its dynamic IP but leaves its Block Storage volumes, detached and billing,
until they are deleted; ``DELETE`` takes a stopped Instance only, and leaves its volumes too.

The fake is stricter than Scaleway: a body with a field it does not know is a 400 naming the
field, so that a misspelt field fails here instead of being ignored there.
"""

from __future__ import annotations

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
    _is_list_of_text,
    _is_text,
    check_body,
    cloud_init,
    fake_uuid,
    need_root_machines,
    start_machine,
)
from sshd import Machine

FIRST_ADDRESS = 10  # 127.7.B.10
_GB = 1024**3


def server_type(
    ncpus: int, ram_gb: int, gpus: int, gpu_name: str, gpu_gb: int, hourly: float
) -> dict[str, Any]:
    """One commercial type as ``GET products/servers`` lists it (RAM and GPU memory in
    bytes; ``gpu`` null for a type without one)."""
    return {
        "alt_names": [],
        "arch": "x86_64",
        "ncpus": ncpus,
        "ram": ram_gb * _GB,
        "gpu": gpus or None,
        "gpu_info": {
            "gpu_manufacturer": "NVIDIA",
            "gpu_name": gpu_name,
            "gpu_memory": gpu_gb * _GB,
        }
        if gpus
        else None,
        "hourly_price": hourly,
        "monthly_price": round(hourly * 730, 2),
        "baremetal": False,
        "volumes_constraint": {"min_size": 0, "max_size": 0},
        "per_volume_constraint": {"l_ssd": {"min_size": 0, "max_size": 0}},
        "scratch_storage_max_size": None,
        "capabilities": {"block_storage": True, "boot_types": ["local", "rescue"]},
    }


_L4_1 = server_type(8, 48, 1, "L4", 24, 0.75)
_L4_2 = server_type(16, 96, 2, "L4", 24, 1.5)
_L40S_1 = server_type(8, 96, 1, "L40S", 48, 1.4)
_H100_1 = server_type(24, 240, 1, "H100", 80, 2.73)
_H100_SXM_2 = server_type(32, 240, 2, "H100", 80, 6.018)
_RENDER = server_type(10, 42, 1, "P100", 16, 1.24)
_RTX3070 = server_type(8, 16, 1, "RTX 3070", 8, 0.98)
_DEV1 = server_type(2, 2, 0, "", 0, 0.0088)

#: What each zone sells (``GET products/servers``).
DEFAULT_TYPES: Mapping[str, Mapping[str, Mapping[str, Any]]] = {
    "fr-par-1": {"RENDER-S": _RENDER, "DEV1-S": _DEV1},
    "fr-par-2": {
        "L4-1-24G": _L4_1,
        "L4-2-24G": _L4_2,
        "L40S-1-48G": _L40S_1,
        "H100-1-80G": _H100_1,
        "H100-SXM-2-80G": _H100_SXM_2,
        "GPU-3070-S": _RTX3070,
        "DEV1-S": _DEV1,
    },
    "nl-ams-1": {"L4-1-24G": _L4_1, "L40S-1-48G": _L40S_1, "DEV1-S": _DEV1},
    "pl-waw-2": {"L4-1-24G": _L4_1, "H100-1-80G": _H100_1, "DEV1-S": _DEV1},
}
#: How much of each type each zone has (``GET products/servers/availability``).
DEFAULT_STOCK: Mapping[str, Mapping[str, str]] = {
    "fr-par-1": {"RENDER-S": "available", "DEV1-S": "available"},
    "fr-par-2": {
        "L4-1-24G": "available",
        "L4-2-24G": "scarce",
        "L40S-1-48G": "shortage",
        "H100-1-80G": "available",
        "H100-SXM-2-80G": "available",
        "GPU-3070-S": "available",
        "DEV1-S": "available",
    },
    "nl-ams-1": {"L4-1-24G": "available", "L40S-1-48G": "available", "DEV1-S": "available"},
    "pl-waw-2": {"L4-1-24G": "scarce", "H100-1-80G": "shortage", "DEV1-S": "available"},
}

#: The third octets B of the fake Scaleways' addresses, 127.7.B.x: one each (and
#: ``SshAddresses`` skips one held all the same).
_BLOCKS = AddressBlocks()


def need_fake_scaleway() -> None:
    """Skip where the fake's machines cannot listen on port 22 (``need_root_machines``)."""
    need_root_machines(FakeScaleway.title, suite="sky.Scaleway")


@attrs.define
class FakeServer:
    """An Instance the fake created: its create's JSON, its state and, once powered on,
    its sshd machine (a ``fake_cloud.MachineRecord``: it is deleted once, terminated or
    deleted).
    """

    id: str
    zone: str
    body: dict[str, Any]
    directory: Path
    volume_id: str  # its Block Storage root volume
    state: str = "stopped"  # starting, running; stopped again once killed
    user_data: dict[str, str] = attrs.Factory(dict)
    machine: Machine | None = None
    ready_at: float = 0.0  # time.monotonic() after which a starting one runs
    deleted: bool = False
    running: bool = False

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))

    def shown_state(self) -> str:
        if self.state == "starting" and time.monotonic() >= self.ready_at:
            self.state = "running"
        return self.state


class _Refused(Refused):
    """A request the fake answers with an error in Scaleway's shape (its ``code`` the
    ``type``; ``more``: the fields that name what it is about, as ``resource``)."""

    def __init__(
        self, message: str, status: int = 400, kind: str = "invalid_arguments", **more: Any
    ) -> None:
        super().__init__(message, kind, status)
        self.more = more


class FakeScaleway(MachineCloud[str, FakeServer]):
    """Scaleway's APIs at ``api_url`` on ``127.0.0.1``, with sshd machines for Instances
    (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake Scaleway"
    marker = "FAKE_SCALEWAY_MACHINE"
    mark_by_directory = True
    noun = "Instance"
    closing_code = "service_unavailable"
    failure_code = "internal"

    def __init__(
        self,
        root: Path,
        *,
        types: Mapping[str, Mapping[str, Mapping[str, Any]]] = DEFAULT_TYPES,
        stock: Mapping[str, Mapping[str, str]] = DEFAULT_STOCK,
        start_delay: float = 0.0,
        per_page_max: int = 100,
    ) -> None:
        """``types`` and ``stock``: what each zone lists (copied; changeable).
        ``start_delay``: seconds after a power-on during which the Instance is starting.
        ``per_page_max``: the most a page holds, whatever ``per_page`` asks."""
        super().__init__(root)
        self.secret_key = fake_uuid()
        self.project_id = fake_uuid()
        self.organization_id = fake_uuid()
        self.types: dict[str, dict[str, dict[str, Any]]] = {
            z: {n: copy.deepcopy(dict(t)) for n, t in listed.items()} for z, listed in types.items()
        }
        self.stock: dict[str, dict[str, str]] = {z: dict(s) for z, s in stock.items()}
        self.start_delay = start_delay
        self.per_page_max = per_page_max
        self.servers: dict[str, FakeServer] = {}
        self.volumes: dict[str, dict[str, Any]] = {}  # Block Storage volumes, by id
        self.ssh_keys: dict[str, dict[str, Any]] = {}  # by id
        #: (type, zone): the next power-on of it is out of stock, and the zone's
        #: availability says ``shortage`` from then on (someone took the last one).
        self.sell_out: set[tuple[str, str]] = set()
        self._failures = Failures()  # for power-ons
        self._addresses = SshAddresses(f"127.7.{_BLOCKS.take()}", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-scaleway")

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeServer]:
        """Instances not deleted (stopped ones included: their volumes and IP still bill),
        in create order."""
        with self._lock:
            return [s for s in self.servers.values() if not s.deleted]

    def fail_starts(
        self,
        n: int,
        message: str,
        *,
        status: int = 403,
        kind: str = "quotas_exceeded",
        after: int = 0,
    ) -> None:
        """After ``after`` more power-ons, the next ``n`` are refused with ``message``."""
        with self._lock:
            self._failures.plan(n, _Refused(message, status, kind), after=after)

    def kill(self, server_id: str) -> None:
        """The Instance's machine dies at once (every process killed); Scaleway then shows
        it stopped until it is deleted."""
        self._kill(server_id, _stopped)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[str, FakeServer]:
        return self.servers

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as Scaleway's APIs send it."""
        more = refused.more if isinstance(refused, _Refused) else {}
        return _Answer(refused.status, {"type": refused.code, "message": refused.message, **more})

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        method, path = request.method, request.path
        given = request.headers.get("x-auth-token", "").encode()
        if not secrets.compare_digest(given, self.secret_key.encode()):
            raise _Refused(
                "authentication is denied", 401, "denied_authentication", method="api_key"
            )
        parts = path.strip("/").split("/")
        if parts[:4] == ["instance", "v1", "zones", parts[3] if len(parts) > 3 else ""]:
            zone = parts[3]
            if zone not in self.types:
                raise _Refused(f"zone: {zone!r} is not a zone", 400)
            return self._instance_api(method, zone, parts[4:], request, raw)
        if parts[:3] == ["iam", "v1alpha1", "ssh-keys"]:
            return self._iam(method, parts[3:], request)
        if parts[:4] == ["block", "v1alpha1", "zones", parts[3] if len(parts) > 3 else ""]:
            return self._block_api(method, parts[4:], request.query)
        raise _Refused(f"not found: {method} {path}", 404, "not_found")

    def _instance_api(
        self, method: str, zone: str, rest: list[str], request: Recorded, raw: bytes
    ) -> _Answer:
        query = request.query
        if rest == ["products", "servers"] and method == "GET":
            _known(query, {"page", "per_page"})
            with self._lock:
                listed = copy.deepcopy(self.types[zone])
            return _Answer(200, {"servers": self._page_map(listed, query)})
        if rest == ["products", "servers", "availability"] and method == "GET":
            _known(query, {"page", "per_page"})
            with self._lock:
                stock = {n: {"availability": a} for n, a in self.stock[zone].items()}
            return _Answer(200, {"servers": self._page_map(stock, query)})
        if rest == ["servers"] and method == "POST":
            _known(query, set())
            return self._create(zone, request.body, raw)
        if rest == ["servers"] and method == "GET":
            _known(query, {"page", "per_page", "project", "tags", "name"})
            return self._list(zone, query)
        if len(rest) >= 2 and rest[0] == "servers":
            _known(query, set())
            with self._lock:
                server = self.servers.get(rest[1])
                if server is None or server.deleted or server.zone != zone:
                    raise _Refused(
                        "resource is not found",
                        404,
                        "not_found",
                        resource="instance_server",
                        resource_id=rest[1],
                    )
            if len(rest) == 2 and method == "GET":
                with self._lock:
                    return _Answer(200, {"server": self._json(server)})
            if len(rest) == 2 and method == "DELETE":
                return self._delete(server)
            if rest[2:] == ["user_data", "cloud-init"] and method == "PATCH":
                if request.headers.get("content-type", "").split(";")[0] != "text/plain":
                    raise _Refused("user data: expected Content-Type text/plain")
                with self._lock:
                    server.user_data["cloud-init"] = raw.decode("utf-8", "replace")
                return _Answer(204, None)
            if rest[2:] == ["action"] and method == "POST":
                return self._action(server, request.body)
        raise _Refused(f"not found: {method} /{'/'.join(rest)}", 404, "not_found")

    def _page_map(self, entries: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        names = sorted(entries)
        start, size = _paging(query, "per_page", self.per_page_max)
        return {n: entries[n] for n in names[start : start + size]}

    # -- Instances -------------------------------------------------------------------------------

    def _create(self, zone: str, body: Any, raw: bytes) -> _Answer:
        if raw and body is None:
            raise _Refused("body: not JSON")
        _check(body, _CREATE_FIELDS, required=("name", "commercial_type", "image", "project"))
        with self._lock:
            if body["project"] != self.project_id:
                raise _Refused("action not allowed on this project", 403, "permissions_denied")
            if body["commercial_type"] not in self.types[zone]:
                raise _Refused(
                    f"commercial_type: {body['commercial_type']!r} is not sold in {zone}"
                )
            server_id = fake_uuid()
            volume_id = fake_uuid()
            directory = self.root / server_id
            directory.mkdir(parents=True)
            self.volumes[volume_id] = {
                "id": volume_id,
                "name": f"{body['name']} root",
                "type": "sbs_5k",
                "size": 20_000_000_000,
                "project_id": self.project_id,
                "zone": zone,
                "status": "in_use",
                "references": [
                    {"product_resource_type": "instance_server", "product_resource_id": server_id}
                ],
                "tags": [],
            }
            server = FakeServer(
                id=server_id, zone=zone, body=body, directory=directory, volume_id=volume_id
            )
            self.servers[server_id] = server
            return _Answer(201, {"server": self._json(server)})

    def _list(self, zone: str, query: dict[str, list[str]]) -> _Answer:
        project, tags = _one(query, "project"), _one(query, "tags")
        wanted = set(tags.split(",")) if tags else set()
        with self._lock:
            shown = [
                self._json(s)
                for s in self.servers.values()
                if not s.deleted
                and s.zone == zone
                and (project is None or s.body["project"] == project)
                and wanted <= set(s.body.get("tags", []))
            ]
        start, size = _paging(query, "per_page", self.per_page_max)
        return _Answer(200, {"servers": shown[start : start + size]})

    def _delete(self, server: FakeServer) -> _Answer:
        with self._lock:
            if server.shown_state() != "stopped":
                raise _Refused(
                    "instance must be stopped to be deleted (terminate a running one)",
                    400,
                    "invalid_request_error",
                )
            self._gone(server)
        return _Answer(204, None)

    def _gone(self, server: FakeServer) -> None:
        """Under the lock: the Instance is deleted; its volume stays, detached."""
        server.deleted = True
        volume = self.volumes.get(server.volume_id)
        if volume is not None:
            volume["status"], volume["references"] = "available", []

    def _action(self, server: FakeServer, body: Any) -> _Answer:
        _check(body, _ACTION_FIELDS, required=("action",))
        action = body["action"]
        if action == "poweron":
            # Under the lock, sshd start included: leaving the fake then waits for a
            # power-on in flight, and no machine starts after the fake ended them all.
            with self._lock:
                self._power_on(server)
            return _Answer(202, {"task": _task("server_poweron", server)})
        if action != "terminate":
            raise _Refused(f"action: the fake Scaleway does not do {action!r}")

        def terminated() -> FakeServer:
            state = server.shown_state()
            if state != "running":
                raise _Refused(
                    f"Instance is {state}: terminate needs it running",
                    400,
                    "invalid_request_error",
                )
            self._gone(server)
            return server

        self._end_now(terminated, abrupt=False)
        return _Answer(202, {"task": _task("server_terminate", server)})

    def _power_on(self, server: FakeServer) -> None:
        """Under the lock: the stopped Instance becomes a machine, if its zone has its type
        in stock."""
        state = server.shown_state()
        if state != "stopped":
            raise _Refused(
                f"Instance is {state}: poweron needs it stopped", 400, "invalid_request_error"
            )
        self._failures.check()
        kind, zone = server.body["commercial_type"], server.zone
        if (kind, zone) in self.sell_out:  # the last one went since the listing
            self.sell_out.discard((kind, zone))
            self.stock[zone][kind] = "shortage"
        if self.stock[zone].get(kind) not in ("available", "scarce"):
            raise _Refused(
                f"{kind} is out of stock in {zone}", 412, "out_of_stock", resource="instance_server"
            )
        address = self._addresses.take()
        keys = [
            k["public_key"] for k in self.ssh_keys.values() if k["project_id"] == self.project_id
        ]
        authorized = cloud_init(server.directory, server.user_data.get("cloud-init", ""), keys)
        server.machine = start_machine(
            self.root,
            server.id,
            address,
            authorized,
            port=22,
            env=self._marker_env(server.id),
            home="scaleway-",  # as /root
        )
        server.state, server.running = "starting", True
        server.ready_at = time.monotonic() + self.start_delay

    def _json(self, server: FakeServer) -> dict[str, Any]:
        """Under the lock: the Instance as GET shows it; a dynamic public IP while it
        runs (given at power-on, released when it stops)."""
        state = server.shown_state()
        ip = None
        if (
            state == "running"
            and server.machine is not None
            and server.body.get("dynamic_ip_required")
        ):
            ip = {
                "id": _uuid_of(server.id),
                "address": server.machine.addr,
                "dynamic": True,
                "family": "inet",
                "gateway": "62.210.0.1",
                "netmask": "32",
                "provisioning_mode": "dhcp",
                "state": "attached",
                "tags": [],
            }
        volume = self.volumes.get(server.volume_id)
        return {
            "id": server.id,
            "name": server.name,
            "arch": "x86_64",
            "commercial_type": server.body["commercial_type"],
            "boot_type": "local",
            "organization": self.organization_id,
            "project": server.body["project"],
            "hostname": server.name,
            "image": {"id": _uuid_of(server.body["image"]), "name": server.body["image"]},
            "volumes": {
                "0": {
                    "boot": False,
                    "id": server.volume_id,
                    "volume_type": "sbs_volume",
                    "state": volume["status"] if volume else "available",
                    "zone": server.zone,
                }
            },
            "tags": list(server.body.get("tags", [])),
            "state": state,
            "protected": False,
            "state_detail": "booted" if state == "running" else "",
            "public_ip": ip,
            "public_ips": [ip] if ip else [],
            "mac_address": "de:00:00:00:00:01",
            "routed_ip_enabled": True,
            "ipv6": None,
            "dynamic_ip_required": bool(server.body.get("dynamic_ip_required", True)),
            "enable_ipv6": False,
            "private_ip": None,
            "creation_date": _now(),
            "modification_date": _now(),
            "security_group": {"id": _uuid_of("sg"), "name": "Default security group"},
            "location": None,
            "maintenances": [],
            "allowed_actions": ["terminate"] if state == "running" else ["poweron", "backup"],
            "placement_group": None,
            "private_nics": [],
            "zone": server.zone,
            "filesystems": [],
            "end_of_service": False,
        }

    # -- IAM SSH keys ----------------------------------------------------------------------------

    def _iam(self, method: str, rest: list[str], request: Recorded) -> _Answer:
        query = request.query
        if not rest and method == "POST":
            _known(query, set())
            body = request.body
            _check(body, _KEY_FIELDS, required=("name", "public_key", "project_id"))
            with self._lock:
                if body["project_id"] != self.project_id:
                    raise _Refused("action not allowed on this project", 403, "permissions_denied")
                key_id = fake_uuid()
                key = {
                    "id": key_id,
                    "name": body["name"],
                    "public_key": body["public_key"].strip(),
                    "fingerprint": f"256 MD5:{secrets.token_hex(16)} (ssh-ed25519)",
                    "created_at": _now(),
                    "updated_at": _now(),
                    "organization_id": self.organization_id,
                    "project_id": body["project_id"],
                    "disabled": False,
                }
                self.ssh_keys[key_id] = key
                return _Answer(200, dict(key))
        if not rest and method == "GET":
            _known(query, {"page", "page_size", "name", "project_id", "organization_id"})
            name, project = _one(query, "name"), _one(query, "project_id")
            with self._lock:
                keys = [
                    dict(k)
                    for k in self.ssh_keys.values()
                    if (name is None or name in k["name"])
                    and (project is None or k["project_id"] == project)
                ]
            start, size = _paging(query, "page_size", self.per_page_max)
            return _Answer(200, {"ssh_keys": keys[start : start + size], "total_count": len(keys)})
        if len(rest) == 1 and method == "DELETE":
            with self._lock:
                if self.ssh_keys.pop(rest[0], None) is None:
                    raise _Refused(
                        "resource is not found", 404, "not_found", resource="iam_ssh_key"
                    )
            return _Answer(204, None)
        raise _Refused(
            f"not found: {method} /iam/v1alpha1/ssh-keys/{'/'.join(rest)}", 404, "not_found"
        )

    # -- Block Storage ---------------------------------------------------------------------------

    def _block_api(self, method: str, rest: list[str], query: dict[str, list[str]]) -> _Answer:
        _known(query, set())
        if len(rest) == 2 and rest[0] == "volumes" and method in ("GET", "DELETE"):
            with self._lock:
                volume = self.volumes.get(rest[1])
                if volume is None:
                    raise _Refused("resource is not found", 404, "not_found", resource="volume")
                if method == "GET":
                    return _Answer(200, dict(volume))
                if volume["status"] == "in_use":
                    raise _Refused("volume is in use by an Instance", 412, "precondition_failed")
                del self.volumes[rest[1]]
            return _Answer(204, None)
        raise _Refused(f"not found: {method} /block/.../{'/'.join(rest)}", 404, "not_found")


def _stopped(server: FakeServer) -> None:
    """``kill``'s mark: Scaleway shows a killed Instance stopped."""
    if server.deleted:
        raise ValueError(f"Instance {server.id} is deleted")
    server.state = "stopped"


_KEY_FIELDS: Checks = {
    "name": (_is_text, "a non-empty string"),
    "public_key": (_is_text, "an OpenSSH public key line"),
    "project_id": (_is_text, "a Project's id"),
}
_CREATE_FIELDS: Checks = {
    "name": (_is_text, "a name"),
    "commercial_type": (_is_text, "a commercial type"),
    "image": (_is_text, "an image label or id"),
    "project": (_is_text, "a Project's id"),
    "tags": (_is_list_of_text, "a list of tags"),
    "dynamic_ip_required": (lambda v: isinstance(v, bool), "a boolean"),
    "enable_ipv6": (lambda v: isinstance(v, bool), "a boolean"),
    "routed_ip_enabled": (lambda v: isinstance(v, bool), "a boolean"),
    "boot_type": (lambda v: v in ("local", "rescue"), '"local" or "rescue"'),
    "security_group": (_is_text, "a security group's id"),
    "placement_group": (_is_text, "a placement group's id"),
    "public_ip": (_is_text, "a flexible IP's id"),
    "public_ips": (_is_list_of_text, "a list of flexible IP ids"),
    "protected": (lambda v: isinstance(v, bool), "a boolean"),
}
_ACTION_FIELDS: Checks = {
    "action": (_is_text, "an action"),
}


def _check(body: Any, fields: Checks, required: Sequence[str]) -> None:
    """Refuse a body naming its first wrong field."""
    check_body(body, fields, required, title=FakeScaleway.title, refused=_Refused)


def _known(query: dict[str, list[str]], known: set[str]) -> None:
    unknown = sorted(set(query) - known)
    if unknown:
        raise _Refused(f"{unknown[0]}: not a query parameter the fake Scaleway knows here")


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is not None and len(values) != 1:
        raise _Refused(f"{name}: given more than once")
    return values[0] if values else None


def _paging(query: dict[str, list[str]], size_name: str, most: int) -> tuple[int, int]:
    """The first entry and size of the page asked for (``page`` from 1; the size asked,
    50 by default, at most ``most``)."""
    page, size = _one(query, "page") or "1", _one(query, size_name) or "50"
    if not page.isdigit() or int(page) < 1:
        raise _Refused("page: expected a positive integer")
    if not size.isdigit() or not 1 <= int(size) <= 100:
        raise _Refused(f"{size_name}: expected an integer from 1 to 100")
    size_now = min(int(size), most)
    return (int(page) - 1) * size_now, size_now


def _task(kind: str, server: FakeServer) -> dict[str, Any]:
    return {
        "id": fake_uuid(),
        "description": kind,
        "status": "pending",
        "href_from": f"/servers/{server.id}/action",
        "href_result": f"/servers/{server.id}",
        "started_at": _now(),
        "terminated_at": None,
        "progress": 0,
        "zone": server.zone,
    }


def _uuid_of(text: str) -> str:
    import hashlib

    raw = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())
