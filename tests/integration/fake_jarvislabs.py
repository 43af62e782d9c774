"""A fake of JarvisLabs.ai's API for the tests, whose container instances are real sshd
"machines".

``sky.JarvisLabs`` cannot reach JarvisLabs from the tests, so it is tested against this: a
local HTTP server that answers the subset of the API JarvisLabs' own ``jarvislabs`` SDK
(v0.2) uses, the way that SDK sends and reads it: the GPU catalogue (``GET
/misc/server_meta``, ``{"server_meta": [...]}``: per GPU type and region its free devices
and price per hour), create (``POST /templates/<template>/create``, answering
``{"machine_id": ...}``), the instances (``GET /users/fetch``, ``{"success": true,
"instances": [...]}``) and one (``GET /users/fetch/<id>``, ``{"success": true, "instance":
{...}}``, a 404 once it is gone), destroy (``POST /misc/destroy?machine_id=``) and the
account's SSH keys (``GET``/``POST /ssh/``, ``DELETE /ssh/<key_id>``). The key is a bearer
token in ``Authorization``; errors are ``{"message": ...}`` (an account short of balance
is a 403 saying so). One server stands for every region's backend (``api_url``).

An instance is a container whose sshd authorizes the account's SSH keys as they were at its
create: a private OpenSSH sshd (``fake_cloud.start_machine``) on its own loopback address
127.11.B.N (no other fake uses 127.11; B a block per pytest-xdist worker and fake, N from 10
up, skipping an address whose port 22 is taken) and a free port there, which its
``ssh_str`` names once it runs (``ssh -p PORT root@HOST``); its host key is its own, made
by the fake and published nowhere. Its sessions are those of the user running the tests
(root, as in JarvisLabs' containers). Destroying or killing an instance ends every process
of it, by pid: those whose environment holds ``FAKE_JARVISLABS_MACHINE=<its directory
under root>``, a marker no other fake (in this process or another) can share.

Assumed, not documented by JarvisLabs (``docs/providers.md`` lists what to verify): a
``price_per_hour`` is per GPU; a create for a GPU type with too few free GPUs in the region
is a 400 whose message says "No free ... GPUs"; an account SSH key is authorized in a
container created after it was added; a new instance may be missing from ``/users/fetch``
for a moment (the SDK retries for that); a destroyed instance is ``Destroying`` a while,
then ``/users/fetch/<id>`` answers 404.

The fake is stricter than JarvisLabs: a body with a field it does not know is a 400 naming
the field, so that a misspelt field fails here instead of being ignored there.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
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
    check_query,
    end_staged,
    need_root_machines,
    start_machine,
)
from sshd import free_port

FIRST_ADDRESS = 10  # 127.11.B.10
REGIONS = ("india-01", "india-noida-01", "europe-01")
TEMPLATES = ("pytorch", "tensorflow", "fastai")
_NAME = re.compile(r"[a-zA-Z0-9 _-]{1,40}")


def gpu(
    gpu_type: str,
    region: str,
    price: float,
    free: int,
    *,
    workload: str | None = "container",
    cpus: int = 7,
    ram: int = 32,
) -> dict[str, Any]:
    """One row of ``GET /misc/server_meta``: a GPU type in a region (``price`` per GPU-hour)."""
    return {
        "gpu_type": gpu_type,
        "region": region,
        "num_free_devices": free,
        "effective_num_free_devices": free,
        "price_per_hour": price,
        "spot_price": None,
        "vram": "24GB",
        "arc": "x86_64",
        "cpus_per_gpu": cpus,
        "ram_per_gpu": ram,
        "workload_type": workload,
    }


DEFAULT_GPUS: tuple[dict[str, Any], ...] = (
    gpu("L4", "india-noida-01", 0.44, 8),
    gpu("L4", "india-01", 0.49, 8),
    gpu("A6000", "india-01", 0.79, 4),
    gpu("A100", "india-01", 1.29, 4, cpus=8, ram=48),
    gpu("H100", "europe-01", 2.69, 8, cpus=16, ram=200),
    gpu("H100", "india-noida-01", 2.99, 8, workload="vm"),
    gpu("RTX5000", "india-01", 0.39, 8),
    gpu("A5000", "india-01", 0.49, 0),
)

#: The third octets B of the fake JarvisLabs' addresses, 127.11.B.x: one each.
_BLOCKS = AddressBlocks()


def need_fake_jarvislabs() -> None:
    """Skip where the fake's machines cannot run (under CI, fail): without sshd, or not as
    root (its containers log in as root)."""
    need_root_machines(FakeJarvisLabs.title, suite="sky.JarvisLabs", why="log in as root")


@attrs.define
class FakeInstance(StagedRecord):
    """An instance the fake created: its create's JSON, its template and when it was
    created, and its state and machine (``StagedRecord``): ``Creating``, ``Running`` once
    ``ready_at`` passed (``Failed`` once killed), ``Destroying`` from its destroy until
    ``destroy_delay`` later, then gone."""

    STARTING = "Creating"
    RUNNING = "Running"
    ENDING = "Destroying"

    id: int
    body: dict[str, Any]
    template: str
    created_at: float = 0.0

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))


class FakeJarvisLabs(MachineCloud[int, FakeInstance]):
    """JarvisLabs' API at ``api_url`` on ``127.0.0.1``, with sshd machines for instances
    (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake JarvisLabs"
    marker = "FAKE_JARVISLABS_MACHINE"
    mark_by_directory = True

    def __init__(
        self,
        root: Path,
        *,
        gpus: Iterable[Mapping[str, Any]] = DEFAULT_GPUS,
        start_delay: float = 0.0,
        destroy_delay: float = 0.5,
        unlisted_for: float = 0.3,
    ) -> None:
        """``gpus``: what ``GET /misc/server_meta`` lists (copied; changeable: a create
        takes its GPUs from the row's free devices, a destroy gives them back).
        ``start_delay``: seconds a new instance is ``Creating`` before it runs.
        ``destroy_delay``: seconds a destroyed instance is ``Destroying`` before it is gone.
        ``unlisted_for``: seconds a new instance is missing from ``/users/fetch``."""
        super().__init__(root, lock=threading.RLock())
        self.api_key = "jl_" + secrets.token_urlsafe(24)
        self.gpus: list[dict[str, Any]] = [copy.deepcopy(dict(g)) for g in gpus]
        self.ssh_keys: dict[str, dict[str, str]] = {}  # by key_id
        self.start_delay = start_delay
        self.destroy_delay = destroy_delay
        self.unlisted_for = unlisted_for
        self.instances: dict[int, FakeInstance] = {}
        self._next_id = 360_000 + secrets.randbelow(1000) * 100
        self._failures = Failures()
        self._addresses = SshAddresses(f"127.11.{_BLOCKS.take()}", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-jarvislabs")

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeInstance]:
        """Instances not destroyed (failed ones included: JarvisLabs keeps them), in create
        order."""
        with self._lock:
            return [i for i in self.instances.values() if i.ended_at is None]

    def fail_creates(self, n: int, message: str, *, status: int = 400, after: int = 0) -> None:
        """After ``after`` more creates, the next ``n`` are refused with ``message``."""
        with self._lock:
            self._failures.plan(n, Refused(message, "", status), after=after)

    def free(self, gpu_type: str, region: str, count: int) -> None:
        """Set how many GPUs of a type a region has free."""
        with self._lock:
            for row in self.gpus:
                if (row["gpu_type"], row["region"]) == (gpu_type, region):
                    row["num_free_devices"] = row["effective_num_free_devices"] = count

    def kill(self, machine_id: int) -> None:
        """The instance's machine dies at once (every process killed); JarvisLabs then
        shows it Failed until it is destroyed."""
        self._kill(machine_id, _failed)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[int, FakeInstance]:
        return self.instances

    def _refusal(self, refused: Refused) -> _Answer:
        return _Answer(refused.status, {"success": False, "message": refused.message})

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise Refused("Invalid or expired token", "", 401)
        method, path, query = request.method, request.path, request.query
        if (method, path) == ("GET", "/misc/server_meta"):
            _known(query, set())
            with self._lock:
                return _Answer(200, {"server_meta": copy.deepcopy(self.gpus), "cpu_meta": {}})
        created = re.fullmatch(r"/templates/([^/]+)/create", path)
        if method == "POST" and created:
            _known(query, set())
            return self._create(created[1], request.body)
        if (method, path) == ("GET", "/users/fetch"):
            _known(query, set())
            with self._lock:
                shown = [self._json(i, listing=True) for i in self.instances.values()]
            return _Answer(200, {"success": True, "instances": [j for j in shown if j]})
        fetched = re.fullmatch(r"/users/fetch/(\d+)", path)
        if method == "GET" and fetched:
            _known(query, set())
            with self._lock:
                found = self.instances.get(int(fetched[1]))
                shown = self._json(found, listing=True) if found is not None else None
            if shown is None:
                raise Refused("Instance not found", "", 404)
            return _Answer(200, {"success": True, "instance": shown})
        if (method, path) == ("POST", "/misc/destroy"):
            _known(query, {"machine_id"})
            ids = query.get("machine_id", [])
            if len(ids) != 1 or not ids[0].isdigit():
                raise Refused("machine_id: required, an integer", "", 422)
            return self._destroy(int(ids[0]))
        if path == "/ssh/" and method in ("GET", "POST"):
            _known(query, set())
            return self._ssh(method, request.body)
        key = re.fullmatch(r"/ssh/([^/]+)", path)
        if method == "DELETE" and key:
            with self._lock:
                if self.ssh_keys.pop(key[1], None) is None:
                    raise Refused("SSH key not found", "", 404)
            return _Answer(200, {"success": True})
        raise Refused(f"Not Found: {method} {path}", "", 404)

    def _ssh(self, method: str, body: Any) -> _Answer:
        with self._lock:
            if method == "GET":
                return _Answer(200, list(copy.deepcopy(list(self.ssh_keys.values()))))
            _check(body, _KEY_FIELDS, ("ssh_key", "key_name"))
            if len(body["ssh_key"].split()) < 2:
                raise Refused("ssh_key: not an OpenSSH public key", "", 422)
            key_id = secrets.token_hex(6)
            self.ssh_keys[key_id] = {
                "ssh_key": body["ssh_key"],
                "key_name": body["key_name"],
                "key_id": key_id,
            }
        return _Answer(200, {"success": True})

    def _create(self, template: str, body: Any) -> _Answer:
        _check(body, _CREATE_FIELDS, _CREATE_REQUIRED)
        if template not in TEMPLATES:
            raise Refused(f"template {template!r} not found", "", 404)
        if not _NAME.fullmatch(body["name"]):
            raise Refused("name: 1 to 40 letters, digits, spaces, - or _", "", 422)
        if body["region"] not in REGIONS:
            raise Refused(f"region: no region {body['region']!r}", "", 422)
        gpus, region = body["num_gpus"], body["region"]
        if region == "europe-01" and (gpus not in (1, 8) or body["hdd"] < 100):
            raise Refused("europe-01 takes 1 or 8 GPUs and 100 GB of storage at least")
        if not 1 <= gpus <= 8 or body["hdd"] < 20:
            raise Refused("num_gpus: 1 to 8; hdd: 20 GB at least", "", 422)
        with self._lock:
            self._failures.check()
            row = next(
                (
                    g
                    for g in self.gpus
                    if (g["gpu_type"], g["region"]) == (body["gpu_type"], region)
                    and g["workload_type"] in (None, "container")
                ),
                None,
            )
            if row is None:
                raise Refused(f"{body['gpu_type']} is not available in {region}")
            if row["num_free_devices"] < gpus:
                raise Refused(f"No free {body['gpu_type']} GPUs in {region} right now")
            row["num_free_devices"] -= gpus
            row["effective_num_free_devices"] = row["num_free_devices"]
            self._next_id += 1
            instance = FakeInstance(
                id=self._next_id,
                body=copy.deepcopy(body),
                template=template,
                ready_at=time.monotonic() + self.start_delay,
            )
            self.instances[instance.id] = instance
            # Under the lock, the machine's start included: leaving the fake then waits
            # for a create in flight, and no machine starts after the fake ended them all.
            self._start(instance)
            # Unlisted for a while from the answer on, however long the machine took.
            instance.created_at = time.monotonic()
        return _Answer(200, {"success": True, "machine_id": instance.id})

    def _start(self, instance: FakeInstance) -> None:
        """Start the container's sshd, which authorizes the account's keys of now."""
        address = self._addresses.take()
        directory = self.root / str(instance.id)
        directory.mkdir(parents=True)
        authorized = directory / "authorized_keys"
        authorized.write_text("".join(f"{k['ssh_key']}\n" for k in self.ssh_keys.values()))
        instance.machine = start_machine(
            self.root,
            str(instance.id),
            address,
            authorized,
            env=self._marker_env(instance.id),
            home="jl-",  # as the container's /root
            port=free_port(address),
        )
        instance.running = True

    def _destroy(self, machine_id: int) -> _Answer:
        def give_back(instance: FakeInstance) -> None:
            for row in self.gpus:
                key = (row["gpu_type"], row["region"])
                if key == (instance.body["gpu_type"], instance.body["region"]):
                    row["num_free_devices"] += instance.body["num_gpus"]
                    row["effective_num_free_devices"] = row["num_free_devices"]
                    break

        gone = Refused("Instance not found", "", 404)
        destroyed = end_staged(self.instances, machine_id, self.destroy_delay, gone, give_back)
        self._end_now(destroyed, abrupt=False)
        return _Answer(200, {"success": True})

    def _json(self, instance: FakeInstance, *, listing: bool) -> dict[str, Any] | None:
        """Under the lock: the instance as the list and a fetch show it; None once it is
        gone, or while it is too new to be listed."""
        status = instance.shown_status(self.destroy_delay)
        if status is None or (
            listing and time.monotonic() < instance.created_at + self.unlisted_for
        ):
            return None
        body = instance.body
        machine = instance.machine
        ssh = None
        if status == "Running" and machine is not None:
            ssh = f"ssh -p {machine.port} -o StrictHostKeyChecking=no root@{machine.addr}"
        return {
            "machine_id": instance.id,
            "name": instance.name,
            "status": status,
            "gpu_type": body["gpu_type"],
            "num_gpus": body["num_gpus"],
            "hdd": body["hdd"],
            "framework": instance.template,
            "region": body["region"],
            "ssh_str": ssh,
            "is_spot": body.get("is_spot", False),
            "cost": 0.0,
        }


_CREATE_FIELDS: Checks = {
    "gpu_type": (_is_text, "a GPU type"),
    "num_gpus": (_is_int, "an integer"),
    "hdd": (_is_int, "an integer (GB)"),
    "region": (_is_text, "a region"),
    "name": (_is_text, "a name"),
    "is_spot": (lambda v: isinstance(v, bool), "a bool"),
    "duration": (lambda v: v == "hour", '"hour"'),
    "disk_type": (lambda v: v == "ssd", '"ssd"'),
    "http_ports": (lambda v: isinstance(v, str), "ports, comma-separated"),
    "script_id": (lambda v: v is None or isinstance(v, str), "a script id or null"),
    "script_args": (lambda v: isinstance(v, str), "text"),
    "fs_id": (lambda v: v is None or _is_int(v), "a filesystem id or null"),
    "arguments": (lambda v: isinstance(v, str), "text"),
}
_CREATE_REQUIRED = ("gpu_type", "num_gpus", "hdd", "region", "name")
_KEY_FIELDS: Checks = {
    "ssh_key": (_is_text, "an OpenSSH public key"),
    "key_name": (_is_text, "a name"),
}


def _failed(instance: FakeInstance) -> None:
    """``kill``'s mark: an instance whose container died shows Failed."""
    instance.status = "Failed"


def _check(body: Any, fields: Checks, required: Sequence[str]) -> None:
    """Refuse a body naming its first wrong field."""
    check_body(body, fields, required, title=FakeJarvisLabs.title, refused=_refused)


def _refused(message: str, status: int = 422) -> Refused:
    return Refused(message, "", status)


def _known(query: dict[str, list[str]], known: set[str]) -> None:
    check_query(query, known, title=FakeJarvisLabs.title, refused=Refused)
