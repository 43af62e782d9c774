"""A fake of Novita AI's GPU instance API for the tests, whose instances are real sshd
"machines" started by the instance's own startup command.

``sky.Novita`` cannot reach Novita from the tests, so it is tested against this: a local HTTP
server that answers the subset of Novita's GPU instance API (``/gpu-instance/openapi/v1``)
the provider uses, the way Novita documents it: the GPU products (``GET /products``,
``{"data": [...]}``, optionally of one ``clusterId``), create (``POST /gpu/instance/create``,
answering ``{"id": ...}``), get (``GET /gpu/instance?instanceId=``), list (``GET
/gpu/instances?pageSize=&pageNum=&name=``, the name matched loosely) and delete (``POST
/gpu/instance/delete``) an instance. The key is a bearer token in ``Authorization``; errors
are ``{"code": ..., "reason": ..., "message": ...}``.

An instance is a container of its ``imageUrl`` running its ``command``: the fake runs that
command for real, with ``sh -c``, in the environment the create's ``envs`` give it (and a
``HOME`` of its own, short, as ``/root`` is: ``$TMPDIR/novita-*``, moved under ``root`` when
the fake is left). What the image holds is stood in for by a ``sshd`` first on its PATH that
runs the real ``/usr/sbin/sshd`` with the machine's own settings file: its loopback address
127.9.B.N (no other fake uses 127.9; B is a block per pytest-xdist worker and fake, N from
10 up, skipping an address whose port 22 is taken) and a free port there, which is the
public port Novita maps the container's port 22 to (``portMappings``, ``"endpoint":
"host:port"``), and the sessions' environment (sshd listens on port 22 of that address as
well when the command asks for it, as Skyward's does: that is why the address is one whose
port 22 is free). Whatever host key and authorized keys the
command passes sshd are the machine's: the fake installs none itself, so a command that
does not set them up right leaves a machine nobody can log in to. Its sessions are those of
the user running the tests (root, as in Novita's containers). Deleting or killing an
instance ends every process of it, by pid: those whose environment holds
``FAKE_NOVITA_MACHINE=<its directory under root>``, a marker no other fake (in this process
or another) can share.

Assumed, not documented by Novita (``docs/providers.md`` lists what to verify): a product's
``price`` is in 1/100,000 dollar per GPU-hour; a product's ``regions`` are the cluster ids a
create's ``clusterId`` and the list's ``clusterId`` take; a create Novita has no capacity
for is a 400 whose message says "not enough" resources; the create's ``command`` runs with
``sh -c`` in the image; a deleted instance is ``removing`` a while, then a get answers 404.

The fake is stricter than Novita: a body with a field it does not know is a 400 naming the
field, so that a misspelt field fails here instead of being ignored there.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import sshd
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
    run_startup_command,
)

FIRST_ADDRESS = 10  # 127.9.B.10
BASE = "/gpu-instance/openapi/v1"
NOT_ENOUGH = "not enough resources for this product in the clusters asked for; try later"


def product(
    product_id: str,
    name: str,
    price: float,
    *,
    cpu: int,
    memory: int,
    disk: int,
    regions: Sequence[str],
    deployable: bool = True,
) -> dict[str, Any]:
    """One GPU product as ``GET /products`` lists it (``price`` in dollars per GPU-hour,
    listed in 1/100,000 dollar)."""
    return {
        "id": product_id,
        "name": name,
        "cpuPerGpu": cpu,
        "memoryPerGpu": memory,
        "diskPerGpu": disk,
        "availableDeploy": deployable,
        "minRootFS": 10,
        "maxRootFS": 6144,
        "minLocalStorage": 0,
        "maxLocalStorage": 0,
        "regions": list(regions),
        "price": round(price * 100_000),
        "monthlyPrice": [],
        "billingMethods": ["onDemand"],
        "spotPrice": "0",
    }


DEFAULT_PRODUCTS: tuple[dict[str, Any], ...] = (
    product("p-4090", "RTX 4090 24GB", 0.35, cpu=16, memory=62, disk=250, regions=["US-CA-06"]),
    product(
        "p-4090-b",
        "RTX 4090 24GB",
        0.45,
        cpu=16,
        memory=62,
        disk=250,
        regions=["EU-DE-01", "US-CA-06"],
    ),
    product("p-h100", "H100 SXM 80GB", 2.56, cpu=24, memory=240, disk=1000, regions=["EU-DE-01"]),
    product("p-a100", "A100 SXM 80GB", 1.60, cpu=16, memory=120, disk=500, regions=["US-CA-06"]),
    product("p-l40s", "L40S 48GB", 0.86, cpu=16, memory=62, disk=500, regions=["US-CA-06"]),
    product(
        "p-l40s-gone",
        "L40S 48GB",
        0.7,
        cpu=16,
        memory=62,
        disk=500,
        regions=["US-CA-06"],
        deployable=False,
    ),
    product("p-3090", "RTX 3090 24GB", 0.21, cpu=8, memory=30, disk=100, regions=["US-CA-06"]),
)

#: The third octets B of the fake Novitas' addresses, 127.9.B.x: one each (and
#: ``SshAddresses`` skips one held all the same).
_BLOCKS = AddressBlocks()


def need_fake_novita() -> None:
    """Skip where the fake's machines cannot run (under CI, fail): without sshd."""
    sshd.need_sshd()


@attrs.define
class FakeInstance(StagedRecord):
    """An instance the fake created: its create's JSON and its cluster, and its state and
    machine (``StagedRecord``): ``creating``, ``running`` once ``ready_at`` passed (``exited``
    once killed, or when its command failed), ``removing`` from its delete until
    ``remove_delay`` later, then gone."""

    STARTING = "creating"
    RUNNING = "running"
    ENDING = "removing"

    id: str
    body: dict[str, Any]
    directory: Path
    cluster: str

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))


class _Refused(Refused):
    """A request the fake answers with an error in Novita's shape (its ``code`` the
    ``reason``)."""

    def __init__(self, message: str, status: int = 400, reason: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message, reason, status)


class FakeNovita(MachineCloud[str, FakeInstance]):
    """Novita's GPU instance API at ``api_url`` on ``127.0.0.1``, with sshd machines for
    instances (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake Novita"
    marker = "FAKE_NOVITA_MACHINE"
    mark_by_directory = True
    closing_code = "UNAVAILABLE"
    failure_code = "INTERNAL"

    def __init__(
        self,
        root: Path,
        *,
        products: Iterable[Mapping[str, Any]] = DEFAULT_PRODUCTS,
        start_delay: float = 0.0,
        remove_delay: float = 0.5,
        page_max: int = 100,
    ) -> None:
        """``products``: what ``GET /products`` lists (copied; changeable).
        ``start_delay``: seconds a new instance is ``creating`` before it runs.
        ``remove_delay``: seconds a deleted instance is ``removing`` before it is gone.
        ``page_max``: the most a page of the instance list holds."""
        super().__init__(root)
        self.api_key = "sk_" + secrets.token_urlsafe(24)
        self.products: list[dict[str, Any]] = [copy.deepcopy(dict(p)) for p in products]
        #: Instances each product id may still have; absent: as many as asked for.
        self.capacity: dict[str, int] = {}
        self.start_delay = start_delay
        self.remove_delay = remove_delay
        self.page_max = page_max
        self.instances: dict[str, FakeInstance] = {}
        self._failures = Failures()
        self._addresses = SshAddresses(f"127.9.{_BLOCKS.take()}", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-novita") + BASE

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeInstance]:
        """Instances not deleted (exited ones included: Novita keeps them, and their
        storage bills), in create order."""
        with self._lock:
            return [i for i in self.instances.values() if i.ended_at is None]

    def fail_creates(
        self, n: int, message: str, *, status: int = 400, reason: str = "FAILED", after: int = 0
    ) -> None:
        """After ``after`` more creates, the next ``n`` are refused with ``message``."""
        with self._lock:
            self._failures.plan(n, _Refused(message, status, reason), after=after)

    def kill(self, instance_id: str) -> None:
        """The instance's machine dies at once (every process killed); Novita then shows
        it exited until it is deleted."""
        self._kill(instance_id, _exited)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[str, FakeInstance]:
        return self.instances

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as Novita's API sends it."""
        return _Answer(
            refused.status,
            {"code": refused.status, "reason": refused.code, "message": refused.message},
        )

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _Refused("invalid api key", 401, "INVALID_API_KEY")
        if not request.path.startswith(BASE + "/"):
            raise _Refused(f"not found: {request.path}", 404, "NOT_FOUND")
        return self._route(request.method, request.path[len(BASE) :], request)

    def _route(self, method: str, path: str, request: Recorded) -> _Answer:
        query = request.query
        if (method, path) == ("GET", "/products"):
            _known(query, {"clusterId", "gpuNum", "productName", "billingMethod"})
            cluster = _one(query, "clusterId")
            with self._lock:
                listed = [
                    copy.deepcopy(p)
                    for p in self.products
                    if cluster is None or cluster in p["regions"]
                ]
            return _Answer(200, {"data": listed})
        if (method, path) == ("POST", "/gpu/instance/create"):
            _known(query, set())
            return self._create(request.body)
        if (method, path) == ("GET", "/gpu/instance"):
            _known(query, {"instanceId"})
            instance_id = _one(query, "instanceId")
            with self._lock:
                found = self.instances.get(instance_id or "")
                shown = self._json(found) if found is not None else None
            if shown is None:
                raise _Refused("instance not found", 404, "INSTANCE_NOT_FOUND")
            return _Answer(200, shown)
        if (method, path) == ("GET", "/gpu/instances"):
            _known(query, {"pageSize", "pageNum", "name", "productName", "status"})
            return self._list(query)
        if (method, path) == ("POST", "/gpu/instance/delete"):
            _known(query, set())
            _check(request.body, {"instanceId": (_is_text, "an instance id")}, ("instanceId",))
            return self._delete(request.body["instanceId"])
        raise _Refused(f"not found: {method} {path}", 404, "NOT_FOUND")

    def _create(self, body: Any) -> _Answer:
        _check(body, _CREATE_FIELDS, required=_CREATE_REQUIRED)
        if body["kind"] != "gpu":
            raise _Refused(f"kind: the fake Novita makes GPU instances, not {body['kind']!r}")
        if not 1 <= body["gpuNum"] <= 8:
            raise _Refused("gpuNum: expected 1 to 8")
        if not 10 <= body["rootfsSize"] <= 6144:
            raise _Refused("rootfsSize: expected 10 to 6144")
        if body.get("ports") not in (None, "22/tcp") and "22/tcp" not in body["ports"].split(","):
            raise _Refused("ports: the fake Novita maps 22/tcp only")
        for env in body.get("envs", []):
            if not (isinstance(env, dict) and set(env) == {"key", "value"}):
                raise _Refused("envs: expected a list of {key, value}")
            if not all(isinstance(v, str) for v in env.values()):
                raise _Refused("envs: keys and values are strings")
        with self._lock:
            self._failures.check()
            listed = next((p for p in self.products if p["id"] == body["productId"]), None)
            if listed is None:
                raise _Refused(f"productId: no product {body['productId']!r}", 404, "NOT_FOUND")
            clusters = listed["regions"]
            cluster = body.get("clusterId")
            if cluster is not None and cluster not in clusters:
                raise _Refused(f"clusterId: product {listed['id']} is not in {cluster}")
            left = self.capacity.get(listed["id"])
            if not listed["availableDeploy"] or left == 0:
                raise _Refused(NOT_ENOUGH, 400, "NOT_ENOUGH_RESOURCE")
            if left is not None:
                self.capacity[listed["id"]] = left - 1
            instance_id = secrets.token_hex(8)
            instance = FakeInstance(
                id=instance_id,
                body=copy.deepcopy(body),
                directory=self.root / instance_id,
                cluster=cluster or clusters[0],
            )
            self.instances[instance_id] = instance
            # Under the lock, the machine's start included: leaving the fake then waits
            # for a create in flight, and no machine starts after the fake ended them all.
            self._start(instance)
        return _Answer(200, {"id": instance_id})

    def _start(self, instance: FakeInstance) -> None:
        """Run the instance's command as its container would, with a stand-in ``sshd``
        that listens on the instance's public address and port."""
        address = self._addresses.take()
        instance.machine, proc = run_startup_command(
            self.root,
            instance.directory,
            address,
            instance.body.get("command", ""),
            marker_env=self._marker_env(instance.id),
            home="novita-",
            log="container.log",
            port=sshd.free_port(address),
            env={e["key"]: e["value"] for e in instance.body.get("envs", [])},
        )
        instance.running = True
        log = instance.directory / "container.log"
        deadline = time.monotonic() + 20
        while b"Server listening" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                break  # a container whose command failed: it shows exited
            time.sleep(0.02)
        if proc.poll() is not None or b"Server listening" not in log.read_bytes():
            instance.status = "exited"
            return
        instance.ready_at = time.monotonic() + self.start_delay

    def _list(self, query: dict[str, list[str]]) -> _Answer:
        size, page = _one(query, "pageSize") or "", _one(query, "pageNum") or ""
        if not (size.isdigit() and page.isdigit()):
            raise _Refused("pageSize and pageNum: required, integers")
        name = _one(query, "name") or ""
        with self._lock:
            shown = [
                j
                for j in (self._json(i, listed=True) for i in self.instances.values())
                if j is not None and name in j["name"]
            ]
        count = min(int(size), self.page_max) or self.page_max
        start = max(int(page) - 1, 0) * count
        return _Answer(
            200,
            {
                "instances": shown[start : start + count],
                "pageSize": count,
                "pageNum": int(page),
                "total": len(shown),
            },
        )

    def _delete(self, instance_id: str) -> _Answer:
        gone = _Refused("instance not found", 404, "INSTANCE_NOT_FOUND")
        deleted = end_staged(self.instances, instance_id, self.remove_delay, gone)
        self._end_now(deleted, abrupt=False)
        return _Answer(200, {})

    def _json(self, instance: FakeInstance, *, listed: bool = False) -> dict[str, Any] | None:
        """Under the lock: the instance as a get (or, ``listed``, the list) shows it; None
        once it is gone."""
        status = instance.shown_status(self.remove_delay)
        if status is None:
            return None
        body = instance.body
        listed_product = next(p for p in self.products if p["id"] == body["productId"])
        mappings: list[dict[str, Any]] = []
        if status == "running" and instance.machine is not None:
            endpoint = f"{instance.machine.addr}:{instance.machine.port}"
            mappings = [{"port": 22, "type": "tcp"}]
            if not listed:  # the list shows no endpoint
                mappings[0]["endpoint"] = endpoint
        return {
            "id": instance.id,
            "name": instance.name,
            "clusterId": instance.cluster,
            "clusterName": instance.cluster,
            "status": status,
            "statusError": {
                "state": "",
                "message": "the container's command exited" if status == "exited" else "",
            },
            "imageUrl": body["imageUrl"],
            "command": body.get("command", ""),
            "cpuNum": str(listed_product["cpuPerGpu"] * body["gpuNum"]),
            "memory": str(listed_product["memoryPerGpu"] * body["gpuNum"]),
            "gpuNum": str(body["gpuNum"]),
            "portMappings": mappings,
            "productId": body["productId"],
            "productName": listed_product["name"],
            "rootfsSize": body["rootfsSize"],
            "envs": copy.deepcopy(body.get("envs", [])),
            "kind": "gpu",
            "billingMode": "onDemand",
        }


_CREATE_FIELDS: Checks = {
    "name": (lambda v: isinstance(v, str) and len(v) <= 255, "a name"),
    "productId": (_is_text, "a product id"),
    "gpuNum": (_is_int, "an integer"),
    "rootfsSize": (_is_int, "an integer"),
    "imageUrl": (_is_text, "an image reference"),
    "imageAuth": (_is_text, "user:password"),
    "ports": (_is_text, "ports such as '22/tcp'"),
    "envs": (lambda v: isinstance(v, list) and len(v) <= 100, "a list of {key, value}"),
    "command": (lambda v: isinstance(v, str) and len(v) <= 2047, "a command, 2047 at most"),
    "clusterId": (_is_text, "a cluster id"),
    "kind": (_is_text, '"gpu" or "cpu"'),
}
_CREATE_REQUIRED = ("productId", "gpuNum", "rootfsSize", "imageUrl", "kind")


def _exited(instance: FakeInstance) -> None:
    """``kill``'s mark: Novita shows an instance whose container died exited."""
    instance.status = "exited"


def _check(body: Any, fields: Checks, required: Sequence[str]) -> None:
    """Refuse a body naming its first wrong field."""
    check_body(body, fields, required, title=FakeNovita.title, refused=_Refused)


def _known(query: dict[str, list[str]], known: set[str]) -> None:
    check_query(query, known, title=FakeNovita.title, refused=_Refused)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is not None and len(values) != 1:
        raise _Refused(f"{name}: given more than once")
    return values[0] if values else None
