"""A fake of Lambda Cloud's API v1 for the tests, whose instances are real sshd "machines".

``sky.Lambda`` cannot reach Lambda from the tests, so it is tested against this: a local HTTP
server that answers the subset of Lambda Cloud's API (``/api/v1``) the provider uses, the way
Lambda documents it: list instance types (with the regions that have capacity), launch,
list, get and terminate instances, and register, list and delete SSH keys. Answers carry
``{"data": ...}``; errors ``{"error": {"code", "message", "suggestion"}}``.

Each instance is a private ``sshd`` (``sshd.start_sshd``) on port 22 of its own loopback
address, 127.3.0.10 upward (the other fakes use 127.0.0.100+, 127.0.0.150+ and 127.K.0.x
with K from 16), set up as Lambda's cloud-init sets up its Ubuntu image: the launch's one
SSH key (by name) is authorized, and so are the ``ssh_authorized_keys`` of its user data
(``#cloud-config`` then one JSON object), whose ``ssh_keys.ed25519_private`` becomes sshd's
host key. Its sessions are those of the user running the tests (root, so that port 22
binds): the provider logs in as ``Lambda(username="root")`` here, as ``ubuntu`` on Lambda.
Its home is short and its own (``$TMPDIR/lambda-*``, moved to ``root/<id>/home`` when the
fake is left). Terminating or killing an instance ends every process of it, by pid.

The fake is stricter than Lambda: a body with a field it does not know is a 400 naming the
field, so that a misspelt field fails here instead of being ignored there.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from fake_cloud import (
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
    need_root_machines,
    start_machine,
)
from sshd import Machine

NO_CAPACITY = "instance-operations/launch/insufficient-capacity"
FIRST_ADDRESS = 10  # 127.3.0.10


def _type(name: str, gpu: str, gpus: int, cents: int, vcpus: int, regions: Sequence[str]) -> Any:
    """One instance type as ``GET /instance-types`` lists it (GiB of memory and disk)."""
    return {
        "instance_type": {
            "name": name,
            "description": f"{gpus}x {gpu}",
            "gpu_description": gpu,
            "price_cents_per_hour": cents,
            "specs": {
                "vcpus": vcpus,
                "memory_gib": 200 * gpus,
                "storage_gib": 512 * gpus,
                "gpus": gpus,
            },
        },
        "regions_with_capacity_available": [
            {"name": region, "description": region} for region in regions
        ],
    }


DEFAULT_TYPES: tuple[dict[str, Any], ...] = (
    _type("gpu_1x_a10", "A10 (24 GB PCIe)", 1, 75, 30, ["us-east-1"]),
    _type("gpu_1x_a100", "A100 (40 GB PCIe)", 1, 129, 30, ["us-west-1"]),
    _type("gpu_1x_a100_sxm4", "A100 (40 GB SXM4)", 1, 129, 30, ["us-east-1", "us-west-2"]),
    _type("gpu_2x_a100_sxm4", "A100 (40 GB SXM4)", 2, 258, 60, ["us-east-1"]),
    _type("gpu_8x_a100_80gb_sxm4", "A100 (80 GB SXM4)", 8, 1432, 240, []),
    _type("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 1, 249, 26, ["us-west-3", "us-south-1"]),
    _type("gpu_1x_h100_sxm5", "H100 (80 GB SXM5)", 1, 329, 26, ["us-south-1"]),
    _type("gpu_1x_gh200", "GH200 (96 GB)", 1, 149, 64, ["us-east-3"]),
    _type("gpu_1x_rtx6000", "RTX 6000 (24 GB)", 1, 50, 14, ["us-east-1"]),
)


def need_fake_lambda() -> None:
    """Skip where the fake's machines cannot listen on port 22 (``need_root_machines``)."""
    need_root_machines(FakeLambda.title, suite="sky.Lambda")


@attrs.define
class FakeInstance:
    """An instance the fake launched: its launch's JSON, its sshd machine and its state (a
    ``fake_cloud.MachineRecord``: it ends once, terminated or killed)."""

    id: str
    body: dict[str, Any]
    machine: Machine
    ready_at: float  # time.monotonic() after which it is active, with an IP
    status: str = "booting"  # then active; unhealthy once killed; terminated
    running: bool = True

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))

    def shown_status(self) -> str:
        if self.status == "booting" and time.monotonic() >= self.ready_at:
            self.status = "active"
        return self.status


class _Refused(Refused):
    """A request the fake answers with an error in Lambda's shape."""

    def __init__(self, message: str, code: str = "global/invalid-parameters", status: int = 400):
        super().__init__(message, code, status)


class FakeLambda(MachineCloud[str, FakeInstance]):
    """Lambda Cloud's API v1 at ``api_url`` on ``127.0.0.1``, with sshd machines for
    instances (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake Lambda"
    marker = "FAKE_LAMBDA_INSTANCE_ID"
    closing_code = failure_code = "global/unknown"

    def __init__(
        self,
        root: Path,
        *,
        instance_types: Sequence[Mapping[str, Any]] = DEFAULT_TYPES,
        start_delay: float = 0.0,
    ) -> None:
        """``instance_types``: what ``GET /instance-types`` lists (copied; changeable).
        ``start_delay``: seconds after a launch during which the instance is booting."""
        super().__init__(root)
        self.api_key = "secret_fake_" + secrets.token_hex(16)
        self.instance_types: list[dict[str, Any]] = [
            json.loads(json.dumps(t)) for t in instance_types
        ]
        self.start_delay = start_delay
        self.instances: dict[str, FakeInstance] = {}
        self.ssh_keys: dict[str, dict[str, str]] = {}  # by id
        self.full: set[tuple[str, str]] = set()  # (type, region): launches refused there
        self.file_systems: list[dict[str, Any]] = []  # what GET /file-systems lists
        self._failures = Failures()
        self._addresses = SshAddresses("127.3.0", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-lambda") + "/api/v1"

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeInstance]:
        """Instances not terminated (unhealthy ones included: they still bill), in launch
        order."""
        with self._lock:
            return [i for i in self.instances.values() if i.status != "terminated"]

    def add_file_system(self, name: str, region: str) -> dict[str, Any]:
        """A persistent file system named ``name`` in ``region``, as Lambda lists it."""
        system = {
            "id": secrets.token_hex(16),
            "name": name,
            "created": "2026-11-30T10:00:00.000Z",
            "created_by": {"id": "user", "email": "user@example.com", "status": "active"},
            "mount_point": f"/lambda/nfs/{name}",
            "region": {"name": region, "description": region},
            "is_in_use": False,
            "bytes_used": 0,
        }
        with self._lock:
            self.file_systems.append(system)
        return system

    def fail_launches(
        self, n: int, *, code: str = NO_CAPACITY, status: int = 400, after: int = 0
    ) -> None:
        """After ``after`` more launches, the next ``n`` with a valid body are refused with
        ``code``."""
        with self._lock:
            self._failures.plan(n, _Refused(_MESSAGES.get(code, code), code, status), after=after)

    def kill(self, instance_id: str) -> None:
        """The instance's machine dies at once (every process killed); Lambda then shows it
        ``unhealthy`` until it is terminated, and still bills it."""
        self._kill(instance_id, _unhealthy)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[str, FakeInstance]:
        return self.instances

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as Lambda's API sends it."""
        error = {"code": refused.code, "message": refused.message}
        return _Answer(refused.status, {"error": error})

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        method, path = request.method, request.path
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
            raise _Refused("API key was invalid, expired, or deleted.", _INVALID_KEY, 401)
        if raw and request.body is None:
            raise _Refused("body: not JSON")
        if request.query:
            raise _Refused(f"{sorted(request.query)[0]}: not a query parameter it knows")
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "v1"]:
            raise _Refused(f"not found: {method} {path}", "global/object-does-not-exist", 404)
        return self._route(method, parts[2:], request.body)

    def _route(self, method: str, rest: list[str], body: Any) -> _Answer:
        if rest == ["instance-types"] and method == "GET":
            with self._lock:
                types = {t["instance_type"]["name"]: t for t in self.instance_types}
                return _Answer(200, {"data": json.loads(json.dumps(types))})
        if rest == ["instance-operations", "launch"] and method == "POST":
            return self._launch(body)
        if rest == ["instance-operations", "terminate"] and method == "POST":
            return self._terminate(body)
        if rest == ["instances"] and method == "GET":
            with self._lock:
                shown = [self._json(i) for i in self.instances.values() if i.status != "terminated"]
            return _Answer(200, {"data": shown})
        if len(rest) == 2 and rest[0] == "instances" and method == "GET":
            with self._lock:
                instance = self.instances.get(rest[1])
                if instance is None:
                    raise _Refused("Instance not found", "global/object-does-not-exist", 404)
                return _Answer(200, {"data": self._json(instance)})
        if rest == ["file-systems"] and method == "GET":
            with self._lock:
                return _Answer(200, {"data": json.loads(json.dumps(self.file_systems))})
        if rest == ["ssh-keys"] and method == "GET":
            with self._lock:
                return _Answer(200, {"data": [dict(k) for k in self.ssh_keys.values()]})
        if rest == ["ssh-keys"] and method == "POST":
            return self._add_key(body)
        if len(rest) == 2 and rest[0] == "ssh-keys" and method == "DELETE":
            with self._lock:
                if self.ssh_keys.pop(rest[1], None) is None:
                    raise _Refused("SSH key not found", "global/object-does-not-exist", 404)
            return _Answer(200, {"data": {}})
        raise _Refused(
            f"not found: {method} /{'/'.join(rest)}", "global/object-does-not-exist", 404
        )

    # -- SSH keys --------------------------------------------------------------------------------

    def _add_key(self, body: Any) -> _Answer:
        _check(body, _KEY_FIELDS, required=("name",))
        if "public_key" not in body:
            raise _Refused("public_key: the fake Lambda does not generate keys; pass one")
        with self._lock:
            if any(k["name"] == body["name"] for k in self.ssh_keys.values()):
                raise _Refused(
                    f"name: an SSH key named {body['name']!r} exists", "global/duplicate"
                )
            key_id = secrets.token_hex(16)
            key = {"id": key_id, "name": body["name"], "public_key": body["public_key"].strip()}
            self.ssh_keys[key_id] = key
            return _Answer(200, {"data": dict(key)})

    # -- instances -------------------------------------------------------------------------------

    def _launch(self, body: Any) -> _Answer:
        _check(
            body, _LAUNCH_FIELDS, required=("region_name", "instance_type_name", "ssh_key_names")
        )
        if len(body["ssh_key_names"]) != 1:
            raise _Refused("ssh_key_names: exactly one SSH key must be specified")
        if body.get("quantity", 1) != 1:
            raise _Refused("quantity: the fake Lambda launches one instance at a time")
        # One launch at a time, under the lock, sshd start included: leaving the fake then
        # waits for a launch in flight, and no machine starts after the fake ended them all.
        with self._lock:
            kinds = {t["instance_type"]["name"]: t for t in self.instance_types}
            kind, region = body["instance_type_name"], body["region_name"]
            if kind not in kinds:
                raise _Refused(f"instance_type_name: no instance type {kind!r}")
            keys = [k for k in self.ssh_keys.values() if k["name"] == body["ssh_key_names"][0]]
            if not keys:
                raise _Refused(f"ssh_key_names: no SSH key named {body['ssh_key_names'][0]!r}")
            self._failures.check()
            names = body.get("file_system_names", [])
            if len(names) > 1:
                raise _Refused("file_system_names: at most one file system may be specified")
            for name in names:
                found = [f for f in self.file_systems if f["name"] == name]
                if not found:
                    raise _Refused(f"file_system_names: no file system named {name!r}")
                if found[0]["region"]["name"] != region:
                    raise _Refused(
                        f"file_system_names: file system {name!r} is in "
                        f"{found[0]['region']['name']}, not {region}"
                    )
            regions = [r["name"] for r in kinds[kind]["regions_with_capacity_available"]]
            if region not in regions or (kind, region) in self.full:
                raise _Refused(_MESSAGES[NO_CAPACITY], NO_CAPACITY)
            instance = self._start(body, keys[0]["public_key"])
            self.instances[instance.id] = instance
            return _Answer(200, {"data": {"instance_ids": [instance.id]}})

    def _start(self, body: dict[str, Any], public_key: str) -> FakeInstance:
        address = self._addresses.take()
        instance_id = secrets.token_hex(16)
        directory = self.root / instance_id
        directory.mkdir(parents=True)
        authorized = cloud_init(directory, body.get("user_data", ""), [public_key])
        machine = start_machine(
            self.root,
            instance_id,
            address,
            authorized,
            port=22,
            env=self._marker_env(instance_id),
            home="lambda-",  # as /home/ubuntu
        )
        return FakeInstance(
            id=instance_id,
            body=body,
            machine=machine,
            ready_at=time.monotonic() + self.start_delay,
        )

    def _terminate(self, body: Any) -> _Answer:
        _check(
            body, {"instance_ids": (_is_list_of_text, "a list of instance ids")}, ("instance_ids",)
        )
        with self._lock:
            unknown = [i for i in body["instance_ids"] if i not in self.instances]
            if unknown:
                raise _Refused(
                    f"instance_ids: no instance {unknown[0]!r}",
                    status=404,
                    code="global/object-does-not-exist",
                )
            ending = [self.instances[i] for i in body["instance_ids"]]
            for instance in ending:
                instance.status = "terminated"
            running = [i for i in ending if i.running]
            for instance in running:
                instance.running = False
            shown = [self._json(i) for i in ending]
        for instance in running:
            self._end(instance, abrupt=False)
        return _Answer(200, {"data": {"terminated_instances": shown}})

    def _json(self, instance: FakeInstance) -> dict[str, Any]:
        """The instance as GET shows it: an IP once it is active."""
        status = instance.shown_status()
        kinds = {t["instance_type"]["name"]: t for t in self.instance_types}
        kind = kinds[instance.body["instance_type_name"]]["instance_type"]
        up = status in ("active", "unhealthy")
        return {
            "id": instance.id,
            "name": instance.name,
            "ip": instance.machine.addr if up else None,
            "private_ip": instance.machine.addr if up else None,
            "status": status,
            "ssh_key_names": list(instance.body["ssh_key_names"]),
            "file_system_names": list(instance.body.get("file_system_names", [])),
            "region": {"name": instance.body["region_name"], "description": ""},
            "instance_type": dict(kind),
            "hostname": instance.body.get("hostname") or instance.id[:12],
            "is_reserved": False,
        }


def _unhealthy(instance: FakeInstance) -> None:
    """``kill``'s mark: Lambda shows a killed instance unhealthy."""
    if instance.status == "terminated":
        raise ValueError(f"instance {instance.id} is terminated")
    instance.status = "unhealthy"


_INVALID_KEY = "global/invalid-api-key"
_MESSAGES = {
    NO_CAPACITY: "Not enough capacity to fulfill launch request.",
    "global/quota-exceeded": "Quota exceeded: you have reached your instance limit.",
}

_KEY_FIELDS: Checks = {
    "name": (_is_text, "a non-empty string"),
    "public_key": (_is_text, "an OpenSSH public key line"),
}
_LAUNCH_FIELDS: Checks = {
    "region_name": (_is_text, "a region's name"),
    "instance_type_name": (_is_text, "an instance type's name"),
    "ssh_key_names": (_is_list_of_text, "a list of one SSH key's name"),
    "file_system_names": (_is_list_of_text, "a list of file systems' names"),
    "quantity": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "name": (lambda v: isinstance(v, str) and len(v) <= 64, "a string of at most 64"),
    "hostname": (_is_text, "a hostname"),
    "user_data": (lambda v: isinstance(v, str) and len(v) <= 1 << 20, "text of at most 1 MB"),
    "image": (lambda v: isinstance(v, dict), 'an object like {"family": "lambda-stack-22-04"}'),
    "tags": (lambda v: isinstance(v, list), "a list of key/value objects"),
}


def _check(body: Any, fields: Checks, required: Sequence[str]) -> None:
    """Refuse a body naming its first wrong field."""
    check_body(body, fields, required, title=FakeLambda.title, refused=_Refused)
