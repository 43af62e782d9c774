"""A fake of Massed Compute's VM API v1 for the tests, whose instances are real sshd
"machines" set up by the instance's own startup command.

``sky.MassedCompute`` cannot reach Massed Compute from the tests, so it is tested against
this: a local HTTP server that answers the subset of Massed Compute's VM API (``/api/v1``)
the provider uses, in the shapes Massed Compute documents (vm-docs.massedcompute.com/api/v1,
and the tool catalog of its MCP server, ``Massed-Compute/massed-compute-mcp``): the GPU
inventory (``GET /gpu-inventory``, ``{"gpu_inventory": {...}}``), launch (``POST
/instance/launch``: ``imageId``, ``productName``, ``regionName``, ``instanceName``,
``command``...), the running instances (``GET /instance``, ``{"runningInstances": [...]}``)
and one of them (``GET /instance/{uuid}``, ``{"runningInstance": {...}}``, or an empty list
for one it does not have, as Massed Compute's own end-to-end run found), and terminate
(``POST /instance/terminate``, ``{"instanceUuids": [...]}``; "No valid VMs found" for none).
The key is a bearer token in ``Authorization``.

An instance is a VM booting its image and running the launch's ``command`` as root: the
fake runs that command for real, with ``sh -c``, with a ``HOME`` of its own (short, as
``/root`` is: ``$TMPDIR/massed-*``, moved under ``root`` when the fake is left). What the
image holds is stood in for by an ``sshd`` first on its PATH that runs the real
``/usr/sbin/sshd`` with the machine's own settings file (its loopback address 127.12.B.N:
no other fake uses 127.12; B is a block per pytest-xdist worker and fake, N from 10 up,
skipping an address whose port 22 is taken; and the sessions' environment), and a
``systemctl`` that only records what it was asked (the image's own sshd is not there to
stop). Whatever host key, port and authorized keys the command passes sshd are the
machine's: the fake installs none itself, so a command that does not set them up right
leaves a machine nobody can log in to. Terminating or killing an instance ends every
process of it, by pid: those whose environment holds ``FAKE_MASSEDCOMPUTE_MACHINE=<its
directory under root>``, a marker no other fake (in this process or another) can share.

Assumed, not documented by Massed Compute (``docs/providers.md`` lists what to verify): the
inventory's keys are the products' names; ``price_cents_per_hour`` is per instance; a
launch's ``command`` runs as root once the VM boots, through a shell; a launch Massed
Compute has no capacity for is refused (the fake: 400 ``{"message": "..."}``) and the
inventory then shows the product without capacity; an instance is listed as soon as the
launch is answered, with ``os_booted`` 0 until its OS is up; errors are JSON with a
``message``; a terminated instance leaves the lists (the fake: after ``remove_delay``,
shown ``terminating`` and inactive until then).

The fake is stricter than Massed Compute: a body with a field it does not know is a 400
naming the field, so that a misspelt field fails here instead of being ignored there.
"""

from __future__ import annotations

import copy
import secrets
import signal
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import procs
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
    _pod_processes,
    _signal,
    check_body,
    need_root_machines,
    run_startup_command,
)
from sshd import Machine

FIRST_ADDRESS = 10  # 127.12.B.10
BASE = "/api/v1"
NO_CAPACITY = "Failed to launch instance: no capacity available for this product"


def product(
    name: str,
    price: float,
    *,
    vcpus: int,
    memory: int,
    storage: int,
    regions: Iterable[str],
    capacity: int = 5,
) -> dict[str, Any]:
    """One inventory entry as ``GET /gpu-inventory`` lists it (``price`` in dollars per
    hour, listed in cents)."""
    return {
        "instance_type": {
            "name": name,
            "description": f"{name} (fake)",
            "price_cents_per_hour": round(price * 100),
            "specs": {"vcpu_count": vcpus, "memory_gib": memory, "storage_gb": storage},
        },
        "regions_with_capacity_available": [
            {"name": r, "description": f"{r} (fake)"} for r in regions if capacity > 0
        ],
        "capacity_available": capacity,
    }


DEFAULT_PRODUCTS: tuple[dict[str, Any], ...] = (
    product("gpu_1x_l40s", 0.88, vcpus=12, memory=64, storage=256, regions=["us-central-3"]),
    product("gpu_1x_l40s_b", 0.99, vcpus=16, memory=96, storage=512, regions=["us-east-1"]),
    product("gpu_2x_l40s", 1.76, vcpus=24, memory=128, storage=512, regions=["us-central-3"]),
    product("gpu_1x_a6000", 0.62, vcpus=8, memory=48, storage=256, regions=["us-central-3"]),
    product("gpu_8x_h100", 23.12, vcpus=208, memory=1800, storage=8000, regions=["us-east-1"]),
    product("gpu_1x_a30", 0.4, vcpus=8, memory=32, storage=128, regions=["us-central-3"]),
    product(
        "gpu_1x_l40", 0.7, vcpus=8, memory=48, storage=256, regions=["us-central-3"], capacity=0
    ),
)

#: The third octets B of the fake Massed Computes' addresses, 127.12.B.x: one each (and
#: ``SshAddresses`` skips one held all the same).
_BLOCKS = AddressBlocks()


def need_fake_massedcompute() -> None:
    """Skip where the fake's machines cannot run (under CI, fail): without sshd, or not as
    root (they listen on port 22)."""
    need_root_machines("the fake Massed Compute", "sky.MassedCompute")


@attrs.define
class FakeInstance:
    """An instance the fake launched: its launch's JSON, its state and its machine (a
    ``fake_cloud.MachineRecord``); ``terminated_at`` is when it was terminated (it is
    ``terminating`` until ``remove_delay`` later, then gone)."""

    id: str
    body: dict[str, Any]
    directory: Path
    region: str
    machine: Machine | None = None
    booted_at: float | None = None  # None: the command did not leave sshd listening
    terminated_at: float | None = None
    running: bool = False

    @property
    def name(self) -> str:
        return str(self.body.get("instanceName", ""))


class FakeMassedCompute(MachineCloud[str, FakeInstance]):
    """Massed Compute's VM API at ``api_url`` on ``127.0.0.1``, with sshd machines for
    instances (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake Massed Compute"
    marker = "FAKE_MASSEDCOMPUTE_MACHINE"
    mark_by_directory = True

    def __init__(
        self,
        root: Path,
        *,
        products: Iterable[Mapping[str, Any]] = DEFAULT_PRODUCTS,
        start_delay: float = 0.0,
        remove_delay: float = 0.5,
    ) -> None:
        """``products``: what ``GET /gpu-inventory`` lists (copied; changeable).
        ``start_delay``: seconds a new instance shows ``os_booted`` 0 after its sshd is up.
        ``remove_delay``: seconds a terminated instance is still listed."""
        super().__init__(root)
        self.api_key = "mc_" + secrets.token_urlsafe(24)
        self.products: list[dict[str, Any]] = [copy.deepcopy(dict(p)) for p in products]
        self.start_delay = start_delay
        self.remove_delay = remove_delay
        self.instances: dict[str, FakeInstance] = {}
        self._failures = Failures()
        #: Products whose last capacity someone else takes just before the next launch.
        self.taken: set[str] = set()
        self._addresses = SshAddresses(f"127.12.{_BLOCKS.take()}", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-massedcompute") + BASE

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeInstance]:
        """Instances not terminated, in launch order."""
        with self._lock:
            return [i for i in self.instances.values() if i.terminated_at is None]

    def set_capacity(self, name: str, capacity: int) -> None:
        """The product's capacity from now on (0: none, and no region listed with any)."""
        with self._lock:
            entry = self._product(name)
            assert entry is not None, name
            entry["capacity_available"] = capacity
            if capacity == 0:
                entry["regions_with_capacity_available"] = []

    def fail_launches(self, n: int, message: str, *, status: int = 400, after: int = 0) -> None:
        """After ``after`` more launches, the next ``n`` are refused with ``message``."""
        with self._lock:
            self._failures.plan(n, Refused(message, "", status), after=after)

    def kill(self, instance_id: str) -> None:
        """The instance's machine dies at once (every process killed); Massed Compute then
        no longer shows it active."""
        self._kill(instance_id, _killed)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[str, FakeInstance]:
        return self.instances

    def _refusal(self, refused: Refused) -> _Answer:
        return _Answer(refused.status, {"message": refused.message})

    def _end(self, record: FakeInstance, *, abrupt: bool) -> None:
        """End the instance's sshd, which the command left running on its own (sshd
        rewrites its environment as its title, so the marker does not find it: its command
        line, ``-f <the instance's directory>/sshd_config``, does), with its sessions; then
        every process of the marker, by pid, as every fake does."""
        marker = f"{self.marker}={self._mark(record.id)}".encode()
        found = listeners(record.directory / "sshd_config")
        pids: set[int] = set()
        for listener in found:
            pids |= _pod_processes(listener, marker)
        _signal(pids, signal.SIGKILL if abrupt else signal.SIGTERM)
        super()._end(record, abrupt=abrupt)
        deadline = time.monotonic() + 10
        while any(procs.is_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal({pid for pid in pids if procs.is_running(pid)}, signal.SIGKILL)
        time.sleep(0.05)
        survivors = sorted(pid for pid in pids if procs.is_running(pid))
        if survivors:
            with self._lock:
                self.errors.append(f"instance {record.id}: sshd processes {survivors} survived")

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise Refused("Authentication not correct.", "", 401)
        if not request.path.startswith(BASE + "/"):
            raise Refused(f"not found: {request.path}", "", 404)
        if request.query:
            raise Refused(f"{sorted(request.query)[0]}: not a query parameter here")
        method, path = request.method, request.path[len(BASE) :]
        if (method, path) == ("GET", "/gpu-inventory"):
            with self._lock:
                listed = {p["instance_type"]["name"]: copy.deepcopy(p) for p in self.products}
            return _Answer(200, {"gpu_inventory": listed})
        if (method, path) == ("POST", "/instance/launch"):
            return self._launch(request.body)
        if (method, path) == ("GET", "/instance"):
            with self._lock:
                shown = [self._json(i) for i in self.instances.values()]
            return _Answer(200, {"runningInstances": [j for j in shown if j is not None]})
        if method == "GET" and path.startswith("/instance/"):
            with self._lock:
                found = self.instances.get(path.removeprefix("/instance/"))
                one = self._json(found) if found is not None else None
            return _Answer(200, {"runningInstance": one if one is not None else []})
        if (method, path) == ("POST", "/instance/terminate"):
            fields: Checks = {"instanceUuids": (_is_list_of_text, "a list of uuids")}
            check_body(request.body, fields, ("instanceUuids",), title=self.title, refused=Refused)
            return self._terminate(request.body["instanceUuids"])
        raise Refused(f"not found: {method} {path}", "", 404)

    def _product(self, name: object) -> dict[str, Any] | None:
        return next((p for p in self.products if p["instance_type"]["name"] == name), None)

    def _launch(self, body: Any) -> _Answer:
        check_body(body, _LAUNCH_FIELDS, _LAUNCH_REQUIRED, title=self.title, refused=Refused)
        with self._lock:
            self._failures.check()
            entry = self._product(body["productName"])
            if entry is None:
                raise Refused("Failed to launch instance")  # as Massed Compute words it
            if entry["instance_type"]["name"] in self.taken:
                self.taken.discard(entry["instance_type"]["name"])
                entry["capacity_available"] = 0
                entry["regions_with_capacity_available"] = []
            regions = [r["name"] for r in entry["regions_with_capacity_available"]]
            region = body["regionName"]
            if entry["capacity_available"] <= 0 or (region != "any" and region not in regions):
                raise Refused(NO_CAPACITY)
            entry["capacity_available"] -= 1
            if entry["capacity_available"] == 0:
                entry["regions_with_capacity_available"] = []
            instance_id = str(uuid.uuid4())
            instance = FakeInstance(
                id=instance_id,
                body=copy.deepcopy(body),
                directory=self.root / instance_id,
                region=regions[0] if region == "any" else region,
            )
            self.instances[instance_id] = instance
            # Under the lock, the machine's start included: leaving the fake then waits
            # for a launch in flight, and no machine starts after the fake ended them all.
            self._start(instance)
        return _Answer(200, {"message": "Instance launched"})

    def _start(self, instance: FakeInstance) -> None:
        """Run the instance's command as its VM would at boot, with stand-ins for the
        image's ``sshd`` (on the instance's address) and ``systemctl`` (which only records
        what it was asked)."""
        address = self._addresses.take()
        systemctl_log = instance.directory / "systemctl.log"
        instance.machine, proc = run_startup_command(
            self.root,
            instance.directory,
            address,
            instance.body.get("command", ""),
            marker_env=self._marker_env(instance.id),
            home="massed-",
            log="boot.log",
            stand_ins={"systemctl": f'#!/bin/sh\necho "$@" >> {systemctl_log}\n'},
        )
        instance.running = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _listening(address):
            if proc.poll() is not None:  # the command is done: sshd listens by now, or never
                deadline = min(deadline, time.monotonic() + 1)
            time.sleep(0.02)
        if _listening(address):
            instance.booted_at = time.monotonic() + self.start_delay

    def _terminate(self, uuids: list[str]) -> _Answer:
        with self._lock:
            known = [
                u
                for u in uuids
                if u in self.instances and self._json(self.instances[u]) is not None
            ]
        if not known:
            raise Refused("No valid VMs found")
        for instance_id in known:

            def terminated(instance_id: str = instance_id) -> FakeInstance:
                instance = self.instances[instance_id]
                if instance.terminated_at is None:
                    instance.terminated_at = time.monotonic()
                return instance

            self._end_now(terminated, abrupt=False)
        return _Answer(200, {"message": "Instances terminated"})

    def _json(self, instance: FakeInstance) -> dict[str, Any] | None:
        """Under the lock: the instance as the lists show it; None once it is gone."""
        now = time.monotonic()
        if instance.terminated_at is not None and now >= instance.terminated_at + self.remove_delay:
            return None
        ending = instance.terminated_at is not None
        booted = instance.booted_at is not None and now >= instance.booted_at
        machine = instance.machine
        return {
            "uuid": instance.id,
            "name": instance.name,
            "ip": machine.addr if machine is not None else "",
            "username": "Ubuntu",
            "password": "fake-password",
            "status": "terminating" if ending else "rented",
            "os_booted": 1 if booted and instance.running else 0,
            "command_startup": instance.body.get("command", ""),
            "created": "2026-11-30T00:00:00.000Z",
            "active": 0 if ending or not instance.running else 1,
            "image": {"id": instance.body["imageId"], "name": "Ubuntu Server 24.04"},
        }


_LAUNCH_FIELDS: Checks = {
    "imageId": (_is_int, "an image id"),
    "productName": (_is_text, "a product name such as 'gpu_1x_l40'"),
    "regionName": (_is_text, "a region's name, or 'any'"),
    "instanceName": (_is_text, "a name"),
    "coupon": (_is_text, "a coupon code"),
    "command": (_is_text, "a command"),
    "sshKeys": (_is_list_of_text, "SSH key names"),
}
_LAUNCH_REQUIRED = ("imageId", "productName", "regionName")


def _killed(instance: FakeInstance) -> None:
    """``kill``'s mark: the instance's machine is gone (it shows inactive)."""
    if instance.terminated_at is not None:
        raise ValueError(f"instance {instance.id} was terminated")


def listeners(config: Path) -> set[int]:
    """The sshd processes started with ``-f config`` (their command line, or the title sshd
    makes of it)."""
    wanted = (f"-f\0{config}\0".encode(), f"-f {config} ".encode())
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(w in command for w in wanted):
                found.add(int(entry.name))
    return found


def _listening(address: str) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((address, 22)) == 0
