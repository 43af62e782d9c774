"""A fake of RunPod's API for the tests, whose pods are real sshd "machines".

``sky.RunPod`` cannot reach RunPod from the tests, so it is tested against this: a local HTTP
server that answers the subset of RunPod's REST API (``/v1/pods``), REST API v2 catalog
(``/v2/catalog/cpus``) and GraphQL API (``gpuTypes``) that the provider uses, the way RunPod
documents them. A pod is a GPU pod, or a CPU pod (``computeType: "CPU"``, with
``cpuFlavorIds`` and ``vcpuCount``; its RAM is the flavor's ``ramGbPerVcpu`` times its vCPUs,
its price the flavor's ``securePerVcpu`` times them). Each pod it creates is a
private ``sshd`` (``sshd.start_sshd``) on its own loopback address, 127.0.0.100 upward, so a
pool provisions through the API, logs in over SSH, bootstraps and runs workers end to end.

A pod is like a RunPod container: the ``PUBLIC_KEY`` of its create is the only key that logs
in (no key, no way in), as the user running the tests (root in CI, as on RunPod). Its home is
its own and short, as ``/root`` is (``$TMPDIR/runpod-*``, moved to ``root/<pod id>/home`` when
the fake is left, for a look after the test). ``RUNPOD_POD_ID`` and a pod-scoped
``RUNPOD_API_KEY`` are in its sessions' environment, and ``runpodctl`` is first on its PATH.
The rest of the create's ``env`` is not: RunPod's images export only ``RUNPOD_*`` variables
to SSH sessions. Ending a pod (delete, stop, preemption) ends every process it started, not
only its sshd: the sshd's descendants, and any process whose environment holds the pod's
``RUNPOD_POD_ID`` (a daemon that detached with ``setsid`` keeps its environment), as a
container's processes end with it. Processes are ended by pid, never by name.

The fake is stricter than RunPod in one way: a create with a field it does not know is a 400
naming the field, so that a misspelt field fails here instead of being ignored there. A CPU
create with a GPU field (``gpuTypeIds``, ``gpuCount``, ``interruptible``) is one, too: RunPod
documents that it ignores them for a CPU pod, which would hide a body meant for a GPU pod.

Assumed, not documented by RunPod (``docs/providers.md`` lists what to verify): a CPU pod's
``vcpuCount`` is a power of two inside its flavor's ``vcpu`` range (the catalog documents
that for its availability filter); CPU pods are secure cloud only and never interruptible
(RunPod prices them nowhere else; a COMMUNITY or interruptible CPU create is a 400 here);
``cpuFlavorPriority`` either way tries the flavors in the order given. Data centres
(``DATA_CENTERS``; ``full_data_centers`` have no capacity) are tried in the order of a
create's ``dataCenterIds``; a create with ``networkVolumeId`` lands in the volume's data
centre (``add_network_volume``), and one whose ``dataCenterIds`` leave it out is a 400. The
fake records where a pod runs and which volume it mounts; it mounts nothing.
"""

from __future__ import annotations

import json
import secrets
import string
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from fake_cloud import (
    MachineCloud,
    Recorded,
    Refused,
    SshAddresses,
    _Answer,
    _is_int,
    _is_list_of_text,
    _is_text,
    _is_text_map,
    start_machine,
)
from sshd import Machine

NO_INSTANCES = (
    "create pod: There are no longer any instances available with the requested "
    "specifications. Please refresh and try again."
)
SOMETHING_WENT_WRONG = "create pod: Something went wrong. Please try again later."
FIRST_POD_ADDRESS = 100  # 127.0.0.100; sky.Local nodes use 127.0.0.2 upward
#: The data centres of the fake, each with capacity unless named in ``full_data_centers``.
DATA_CENTERS = ("EU-RO-1", "US-KS-2", "US-GA-1")

DEFAULT_GPU_TYPES: tuple[dict[str, Any], ...] = (
    {
        "id": "NVIDIA A100 80GB PCIe",
        "displayName": "A100 PCIe",
        "memoryInGb": 80,
        "secureCloud": True,
        "communityCloud": True,
        "securePrice": 1.64,
        "communityPrice": 1.19,
        "secureSpotPrice": 0.82,
        "communitySpotPrice": 0.6,
        "maxGpuCount": 8,
    },
    {
        "id": "NVIDIA A100-SXM4-80GB",
        "displayName": "A100 SXM",
        "memoryInGb": 80,
        "secureCloud": True,
        "communityCloud": True,
        "securePrice": 1.89,
        "communityPrice": 1.39,
        "secureSpotPrice": 0.95,
        "communitySpotPrice": 0.7,
        "maxGpuCount": 8,
    },
    {
        "id": "NVIDIA H100 80GB HBM3",
        "displayName": "H100 SXM",
        "memoryInGb": 80,
        "secureCloud": True,
        "communityCloud": True,
        "securePrice": 2.99,
        "communityPrice": 2.69,
        "secureSpotPrice": 1.75,
        "communitySpotPrice": 1.5,
        "maxGpuCount": 8,
    },
    {
        "id": "NVIDIA GeForce RTX 4090",
        "displayName": "RTX 4090",
        "memoryInGb": 24,
        "secureCloud": True,
        "communityCloud": True,
        "securePrice": 0.69,
        "communityPrice": 0.34,
        "secureSpotPrice": 0.35,
        "communitySpotPrice": 0.2,
        "maxGpuCount": 8,
    },
    {
        "id": "NVIDIA L4",
        "displayName": "L4",
        "memoryInGb": 24,
        "secureCloud": True,
        "communityCloud": False,  # secure cloud only: a COMMUNITY create skips it
        "securePrice": 0.43,
        "communityPrice": None,
        "secureSpotPrice": 0.22,
        "communitySpotPrice": None,
        "maxGpuCount": 4,
    },
)
#: RunPod's CPU flavors as its REST API v2 catalog lists them (``GET /v2/catalog/cpus``).
DEFAULT_CPU_TYPES: tuple[dict[str, Any], ...] = (
    {
        "id": "cpu3c",
        "name": "Compute-Optimized",
        "group": "Gen 3",
        "vcpu": {"min": 2, "max": 32},
        "ramGbPerVcpu": 2,
        "price": {"securePerVcpu": 0.03, "serverlessPerVcpu": 0.05},
    },
    {
        "id": "cpu3g",
        "name": "General Purpose",
        "group": "Gen 3",
        "vcpu": {"min": 2, "max": 32},
        "ramGbPerVcpu": 4,
        "price": {"securePerVcpu": 0.04, "serverlessPerVcpu": 0.06},
    },
    {
        "id": "cpu3m",
        "name": "Memory-Optimized",
        "group": "Gen 3",
        "vcpu": {"min": 2, "max": 16},
        "ramGbPerVcpu": 8,
        "price": {"securePerVcpu": 0.06, "serverlessPerVcpu": 0.08},
    },
    {
        "id": "cpu5c",
        "name": "Compute-Optimized",
        "group": "Gen 5",
        "vcpu": {"min": 2, "max": 32},
        "ramGbPerVcpu": 2,
        "price": {"securePerVcpu": 0.035, "serverlessPerVcpu": 0.055},
    },
)
#: The CPU flavor ids RunPod's REST API v1 takes in ``cpuFlavorIds`` (its documented enum).
CPU_FLAVOR_IDS = ("cpu3c", "cpu3g", "cpu3m", "cpu5c", "cpu5g", "cpu5m")
DEFAULT_CAPACITY = 1000  # pods of each type that can start unless the test says otherwise

# The pod's runpodctl: `remove pod <id>` and `stop pod <id>` only, with the pod-scoped key.
RUNPODCTL = '''#!{python}
"""runpodctl of a fake RunPod pod: `runpodctl remove pod <id>`, `runpodctl stop pod <id>`."""
import os
import sys
import tempfile
import urllib.error
import urllib.request

REST_URL = {rest_url!r}


def main(argv):
    if len(argv) != 3 or argv[0] not in ("remove", "stop") or argv[1] != "pod":
        print("usage: runpodctl remove pod <id> | runpodctl stop pod <id>", file=sys.stderr)
        return 2
    verb, pod = argv[0], argv[2]
    key = os.environ.get("RUNPOD_API_KEY")
    if not key:
        print("runpodctl: RUNPOD_API_KEY is not set", file=sys.stderr)
        return 1
    if verb == "remove":
        request = urllib.request.Request(f"{{REST_URL}}/pods/{{pod}}", method="DELETE")
    else:
        request = urllib.request.Request(f"{{REST_URL}}/pods/{{pod}}/stop", method="POST")
    request.add_header("Authorization", f"Bearer {{key}}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))  # loopback only
    try:
        with opener.open(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        print(f"runpodctl: {{verb}} pod {{pod}}: {{error.code}} {{detail}}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"runpodctl: {{verb}} pod {{pod}}: {{error}}", file=sys.stderr)
        return 1
    print(f'pod "{{pod}}" {{"removed" if verb == "remove" else "stopped"}}', flush=True)
    return 0


sys.exit(main(sys.argv[1:]))
'''


@attrs.define
class FakePod:
    """A pod the fake created: its create's JSON, its sshd machine and its state (a
    ``fake_cloud.MachineRecord``: it ends once, by delete, stop or preemption)."""

    id: str
    name: str
    body: dict[str, Any]
    machine: Machine
    gpu_type_id: str | None  # None for a CPU pod
    cpu_flavor_id: str | None  # None for a GPU pod
    cost_per_hr: float
    key: str  # the pod-scoped API key in its RUNPOD_API_KEY
    ready_at: float  # time.monotonic() after which GET shows its address
    data_center: str  # where it runs
    status: str = "RUNNING"  # desiredStatus: RUNNING, EXITED, or TERMINATED once deleted
    deleted: bool = False
    running: bool = True


class FakeRunPod(MachineCloud[str, FakePod]):
    """RunPod's REST and GraphQL APIs on ``127.0.0.1``, with sshd machines for pods
    (``fake_cloud.MachineCloud``: a context manager; leaving it ends every pod, by pid, and
    raises what failed inside the fake)."""

    title = "the fake RunPod"
    # Every process a pod started holds it, as a container's environment (see the module).
    marker = "RUNPOD_POD_ID"
    noun = "pod"

    def __init__(
        self,
        *,
        root: Path,
        gpu_types: Sequence[Mapping[str, Any]] = DEFAULT_GPU_TYPES,
        cpu_types: Sequence[Mapping[str, Any]] = DEFAULT_CPU_TYPES,
        capacity: Mapping[str, int] = {},
        start_delay: float = 0.0,
    ) -> None:
        """``capacity``: how many more pods of a GPU type or CPU flavor can start (one not
        named: ``DEFAULT_CAPACITY``). ``start_delay``: seconds after a create during which
        GET shows the pod RUNNING with no ``publicIp`` and no ``portMappings`` yet."""
        super().__init__(root)
        self.api_key = "rpa_" + secrets.token_hex(16)
        self.gpu_types: list[dict[str, Any]] = [dict(gpu) for gpu in gpu_types]
        self.cpu_types: list[dict[str, Any]] = [dict(cpu) for cpu in cpu_types]
        kinds = [*self.gpu_types, *self.cpu_types]
        self.capacity: dict[str, int] = {kind["id"]: DEFAULT_CAPACITY for kind in kinds}
        self.capacity |= capacity
        self.start_delay = start_delay
        self.pods: dict[str, FakePod] = {}
        self.full_data_centers: set[str] = set()  # no pod starts there
        self.network_volumes: dict[str, dict[str, Any]] = {}
        self._failures: list[tuple[int, str]] = []
        self._addresses = SshAddresses("127.0.0", FIRST_POD_ADDRESS)
        url = self._listen(self._serve, "fake-runpod")
        self.rest_url = f"{url}/v1"
        self.graphql_url = f"{url}/graphql"
        self.catalog_url = f"{url}/v2"

    def _records(self) -> Mapping[str, FakePod]:
        return self.pods

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as RunPod's REST API sends it."""
        return _Answer(refused.status, {"error": refused.message})

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakePod]:
        """Pods not deleted, in the order they were created."""
        with self._lock:
            return [pod for pod in self.pods.values() if not pod.deleted]

    def preempt(self, pod_id: str) -> None:
        """Interrupt the pod as RunPod interrupts a spot pod: every process of it is killed
        at once, and it stays, EXITED."""

        def interrupt() -> FakePod:
            pod = self._live_pod(pod_id)
            pod.status = "EXITED"
            return pod

        self._end_now(interrupt, abrupt=True)

    def add_network_volume(self, name: str, data_center: str, size: int = 100) -> str:
        """A network volume of the account, in ``data_center``: its id."""
        volume_id = "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(10)
        )
        with self._lock:
            self.network_volumes[volume_id] = {
                "id": volume_id,
                "name": name,
                "size": size,
                "dataCenterId": data_center,
            }
        return volume_id

    def fail_creates(self, n: int, status: int = 500, message: str = SOMETHING_WENT_WRONG) -> None:
        """The next ``n`` creates with a valid body fail with ``status`` and ``message``."""
        with self._lock:
            self._failures.extend([(status, message)] * n)

    def _live_pod(self, pod_id: str) -> FakePod:
        pod = self.pods.get(pod_id)
        if pod is None or pod.deleted:
            known = ", ".join(p.id for p in self.pods.values() if not p.deleted) or "none"
            raise ValueError(f"no live pod {pod_id!r} (live pods: {known})")
        return pod

    # -- serving ------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        method, path, body = request.method, request.path, request.body
        caller = self._caller(request.headers.get("authorization", ""))
        if caller is None:
            return _Answer(401, {"error": "unauthorized"})
        route = _route(method, path)
        if route is None:
            return _Answer(404, {"error": f"not found: {method} {path}"})
        action, pod_id = route
        if caller != "account" and (action not in ("delete", "stop") or caller != pod_id):
            return _Answer(401, {"error": "unauthorized"})  # a pod's key ends only its pod
        if raw and body is None:
            return _Answer(400, {"error": "body: not JSON"})
        if action == "create":
            return self._create(body)
        if action == "cpus":
            with self._lock:
                return _Answer(200, {"cpus": [dict(cpu) for cpu in self.cpu_types]})
        if action == "volume":
            with self._lock:
                volume = self.network_volumes.get(pod_id)
                if volume is None:
                    return _Answer(404, {"error": "network volume not found"})
                return _Answer(200, dict(volume))
        if action == "list":
            return self._list(request.query)
        if action == "get":
            return self._get(pod_id)
        if action == "delete":
            return self._delete(pod_id, from_pod=caller == pod_id)
        if action == "stop":
            return self._stop(pod_id, from_pod=caller == pod_id)
        return self._graphql(body)

    def _caller(self, authorization: str) -> str | None:
        """Who asks: "account" for the API key, a pod's id for its pod-scoped key, else None."""
        scheme, _, key = authorization.partition(" ")
        if scheme != "Bearer" or not key:
            return None
        given = key.encode()  # bytes: compare_digest refuses str that is not ASCII
        if secrets.compare_digest(given, self.api_key.encode()):
            return "account"
        with self._lock:
            for pod in self.pods.values():
                if secrets.compare_digest(given, pod.key.encode()):
                    return pod.id
        return None

    # -- REST -----------------------------------------------------------------------------------

    def _create(self, body: Any) -> _Answer:
        # One create at a time, under the lock, sshd start included: leaving the fake then
        # waits for a create in flight, and no pod starts after the fake has ended them all.
        with self._lock:
            cpu = isinstance(body, dict) and body.get("computeType") == "CPU"
            if cpu:
                problem = _cpu_body_problem(body, {flavor["id"] for flavor in self.cpu_types})
            else:
                problem = _body_problem(body, {gpu["id"] for gpu in self.gpu_types})
            if problem is None:
                problem = self._placement_problem(body)
            if problem is not None:
                return _Answer(400, {"error": problem})
            if self._failures:
                status, message = self._failures.pop(0)
                return _Answer(status, {"error": message})
            chosen = self._choose_cpu(body) if cpu else self._choose(body)
            data_center = self._data_center(body)
            if chosen is None or data_center is None:
                return _Answer(500, {"error": NO_INSTANCES})
            kind, cost = chosen
            pod = self._start_pod(body, kind, cost, cpu=cpu, data_center=data_center)
            self.capacity[kind] -= 1
            self.pods[pod.id] = pod
            return _Answer(201, self._pod_json(pod))

    def _placement_problem(self, body: dict[str, Any]) -> str | None:
        """What is wrong with a create's data centres and network volume; None if nothing."""
        for dc in body.get("dataCenterIds", []):
            if dc not in DATA_CENTERS:
                return f"dataCenterIds: unknown data center {dc!r}"
        volume_id = body.get("networkVolumeId")
        if volume_id is None:
            if "volumeMountPath" in body:
                return "volumeMountPath: given without networkVolumeId"
            return None
        volume = self.network_volumes.get(volume_id)
        if volume is None:
            return f"networkVolumeId: no network volume {volume_id!r}"
        listed = body.get("dataCenterIds")
        if listed is not None and volume["dataCenterId"] not in listed:
            return (
                f"networkVolumeId: network volume {volume_id!r} is in "
                f"{volume['dataCenterId']}, not in dataCenterIds"
            )
        return None

    def _data_center(self, body: dict[str, Any]) -> str | None:
        """Where a pod of the create starts: its network volume's data centre, else the
        first of its ``dataCenterIds`` (any, without them) with capacity; None: none has."""
        volume = self.network_volumes.get(body.get("networkVolumeId", ""))
        if volume is not None:
            candidates = [volume["dataCenterId"]]
        else:
            candidates = list(body.get("dataCenterIds", DATA_CENTERS))
        return next((dc for dc in candidates if dc not in self.full_data_centers), None)

    def _choose(self, body: dict[str, Any]) -> tuple[str, float] | None:
        """The first of the create's GPU types that can start a pod, and its cost per hour."""
        cloud = body.get("cloudType", "SECURE")
        spot = body.get("interruptible", False)
        price_field = {
            ("SECURE", False): "securePrice",
            ("SECURE", True): "secureSpotPrice",
            ("COMMUNITY", False): "communityPrice",
            ("COMMUNITY", True): "communitySpotPrice",
        }[(cloud, spot)]
        types = {gpu["id"]: gpu for gpu in self.gpu_types}
        for gpu_type_id in body["gpuTypeIds"]:
            gpu = types[gpu_type_id]
            offered = gpu["secureCloud"] if cloud == "SECURE" else gpu["communityCloud"]
            price = gpu[price_field]
            if (
                offered
                and price is not None
                and body["gpuCount"] <= gpu["maxGpuCount"]
                and self.capacity.get(gpu_type_id, 0) > 0
            ):
                return gpu_type_id, round(price * body["gpuCount"], 4)
        return None

    def _choose_cpu(self, body: dict[str, Any]) -> tuple[str, float] | None:
        """The first of the create's CPU flavors that gives its vCPU count and can start a
        pod, and what the pod costs per hour (the flavor's price per vCPU-hour times them)."""
        flavors = {flavor["id"]: flavor for flavor in self.cpu_types}
        vcpus = body["vcpuCount"]
        for flavor_id in body["cpuFlavorIds"]:
            flavor = flavors[flavor_id]
            if (
                flavor["vcpu"]["min"] <= vcpus <= flavor["vcpu"]["max"]
                and self.capacity.get(flavor_id, 0) > 0
            ):
                return flavor_id, round(flavor["price"]["securePerVcpu"] * vcpus, 4)
        return None

    def _start_pod(
        self, body: dict[str, Any], kind: str, cost: float, *, cpu: bool, data_center: str
    ) -> FakePod:
        address = self._addresses.take()
        pod_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(13))
        key = "rpa_" + secrets.token_hex(16)
        directory = self.root / pod_id
        bin_dir = directory / "bin"
        bin_dir.mkdir(parents=True)
        runpodctl = bin_dir / "runpodctl"
        runpodctl.write_text(RUNPODCTL.format(python=sys.executable, rest_url=self.rest_url))
        runpodctl.chmod(0o755)
        authorized = directory / "authorized_keys"  # what RunPod's images do with PUBLIC_KEY
        public_key = body.get("env", {}).get("PUBLIC_KEY", "")
        authorized.write_text(f"{public_key}\n" if public_key else "")
        machine = start_machine(
            self.root,
            pod_id,
            address,
            authorized,
            env={**self._marker_env(pod_id), "RUNPOD_API_KEY": key},
            path_prefix=[str(bin_dir)],
            home="runpod-",  # as RunPod's /root
        )
        return FakePod(
            id=pod_id,
            name=body["name"],
            body=body,
            machine=machine,
            gpu_type_id=None if cpu else kind,
            cpu_flavor_id=kind if cpu else None,
            cost_per_hr=cost,
            key=key,
            ready_at=time.monotonic() + self.start_delay,
            data_center=data_center,
        )

    def _list(self, query: dict[str, list[str]]) -> _Answer:
        names = query.get("name")
        with self._lock:
            pods = [
                self._pod_json(pod)
                for pod in self.pods.values()
                if not pod.deleted and (names is None or pod.name in names)
            ]
        return _Answer(200, pods)

    def _get(self, pod_id: str) -> _Answer:
        with self._lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod.deleted:
                return _Answer(404, {"error": "pod not found"})
            return _Answer(200, self._pod_json(pod))

    def _delete(self, pod_id: str, *, from_pod: bool) -> _Answer:
        with self._lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod.deleted:
                return _Answer(404, {"error": "pod not found"})
            pod.deleted, pod.status = True, "TERMINATED"
            running, pod.running = pod.running, False
        return self._ending(pod, running=running, from_pod=from_pod, payload=None)

    def _stop(self, pod_id: str, *, from_pod: bool) -> _Answer:
        with self._lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod.deleted:
                return _Answer(404, {"error": "pod not found"})
            pod.status = "EXITED"
            running, pod.running = pod.running, False
            payload = self._pod_json(pod)
        return self._ending(pod, running=running, from_pod=from_pod, payload=payload)

    def _ending(self, pod: FakePod, *, running: bool, from_pod: bool, payload: object) -> _Answer:
        """Answer a delete or stop. From outside, the pod has ended when the answer comes;
        from inside (its runpodctl), the pod ends after answering, or the answer would die
        with the process that asked."""
        if not running:
            return _Answer(200, payload)
        if from_pod:
            return _Answer(200, payload, then=lambda: self._end(pod, abrupt=False))
        self._end(pod, abrupt=False)
        return _Answer(200, payload)

    def _pod_json(self, pod: FakePod) -> dict[str, Any]:
        ready = pod.status == "RUNNING" and time.monotonic() >= pod.ready_at
        shown = {
            "id": pod.id,
            "name": pod.name,
            "image": pod.body["imageName"],
            "desiredStatus": pod.status,
            "publicIp": pod.machine.addr if ready else None,
            "portMappings": {"22": pod.machine.port} if ready else None,
            "costPerHr": pod.cost_per_hr,
            "interruptible": pod.body.get("interruptible", False),
            "env": dict(pod.body.get("env", {})),
        }
        if pod.cpu_flavor_id is not None:
            flavor = next(f for f in self.cpu_types if f["id"] == pod.cpu_flavor_id)
            vcpus = pod.body["vcpuCount"]
            return shown | {
                "cpuFlavorId": pod.cpu_flavor_id,
                "vcpuCount": vcpus,
                "memoryInGb": flavor["ramGbPerVcpu"] * vcpus,
            }
        return shown | {
            "gpuCount": pod.body["gpuCount"],
            "machine": {"gpuTypeId": pod.gpu_type_id},
        }

    # -- GraphQL --------------------------------------------------------------------------------

    def _graphql(self, body: Any) -> _Answer:
        query = body.get("query") if isinstance(body, dict) else None
        if not isinstance(query, str):
            return _Answer(400, {"errors": [{"message": 'expected a JSON body {"query": "..."}'}]})
        if "gpuTypes" not in query:
            message = "the fake RunPod answers only gpuTypes queries"
            return _Answer(400, {"errors": [{"message": message}]})
        with self._lock:
            return _Answer(200, {"data": {"gpuTypes": [dict(gpu) for gpu in self.gpu_types]}})


def _route(method: str, path: str) -> tuple[str, str] | None:
    """(action, pod id) for a request the fake answers, None for any other."""
    parts = path.strip("/").split("/")
    if parts == ["graphql"] and method == "POST":
        return "graphql", ""
    if parts == ["v2", "catalog", "cpus"] and method == "GET":
        return "cpus", ""
    if len(parts) == 3 and parts[:2] == ["v1", "networkvolumes"] and method == "GET":
        return "volume", parts[2]
    if parts[:2] != ["v1", "pods"]:
        return None
    routes = {
        (2, "POST"): "create",
        (2, "GET"): "list",
        (3, "GET"): "get",
        (3, "DELETE"): "delete",
    }
    if len(parts) == 4 and parts[3] == "stop" and method == "POST":
        return "stop", parts[2]
    action = routes.get((len(parts), method))
    if action is None:
        return None
    return action, parts[2] if len(parts) == 3 else ""


_CREATE_FIELDS = {
    "name",
    "imageName",
    "gpuTypeIds",
    "gpuCount",
    "cloudType",
    "interruptible",
    "ports",
    "env",
    "containerDiskInGb",
    "supportPublicIp",
    "dataCenterIds",
    "dataCenterPriority",
    "networkVolumeId",
    "volumeMountPath",
    "computeType",
}


def _body_problem(body: Any, gpu_type_ids: set[str]) -> str | None:
    """What is wrong with a create's body, as ``"<field>: <why>"``; None if nothing."""
    if not isinstance(body, dict):
        return "body: expected a JSON object"
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown:
        known = ", ".join(sorted(_CREATE_FIELDS))
        return f"{unknown[0]}: not a field the fake RunPod knows ({known})"
    for field in ("name", "imageName", "gpuTypeIds", "gpuCount"):
        if field not in body:
            return f"{field}: required"
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("computeType", lambda v: v == "GPU", '"GPU" or "CPU"'),
        ("name", _is_text, "a non-empty string"),
        ("imageName", _is_text, "a non-empty string"),
        ("gpuTypeIds", lambda v: _is_list_of_text(v) and len(v) > 0, "a non-empty list of ids"),
        ("gpuCount", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("cloudType", lambda v: v in ("SECURE", "COMMUNITY"), '"SECURE" or "COMMUNITY"'),
        ("interruptible", lambda v: isinstance(v, bool), "true or false"),
        ("supportPublicIp", lambda v: isinstance(v, bool), "true or false"),
        ("ports", _is_list_of_text, 'a list of strings like "22/tcp"'),
        ("env", _is_text_map, "an object of string values"),
        ("containerDiskInGb", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("dataCenterIds", _is_list_of_text, "a list of strings"),
        ("dataCenterPriority", lambda v: v in _PRIORITIES, '"availability" or "custom"'),
        ("networkVolumeId", _is_text, "a non-empty string"),
        ("volumeMountPath", lambda v: _is_text(v) and v.startswith("/"), "an absolute path"),
    ]
    for field, check, expected in checks:
        if field in body and not check(body[field]):
            return f"{field}: expected {expected}, got {json.dumps(body[field])}"
    for gpu_type_id in body["gpuTypeIds"]:
        if gpu_type_id not in gpu_type_ids:
            return f"gpuTypeIds: unknown GPU type {gpu_type_id!r}"
    return None


_CPU_CREATE_FIELDS = {
    "name",
    "imageName",
    "computeType",
    "cpuFlavorIds",
    "cpuFlavorPriority",
    "vcpuCount",
    "cloudType",
    "ports",
    "env",
    "containerDiskInGb",
    "supportPublicIp",
    "dataCenterIds",
    "dataCenterPriority",
    "networkVolumeId",
    "volumeMountPath",
}


_PRIORITIES = ("availability", "custom")


def _is_power_of_two(value: Any) -> bool:
    return _is_int(value) and value >= 1 and value & (value - 1) == 0


def _cpu_body_problem(body: dict[str, Any], flavor_ids: set[str]) -> str | None:
    """What is wrong with a CPU pod's create (``computeType: "CPU"``), as ``"<field>:
    <why>"``; None if nothing. A GPU field in it is refused, not ignored (the module)."""
    unknown = sorted(set(body) - _CPU_CREATE_FIELDS)
    if unknown:
        known = ", ".join(sorted(_CPU_CREATE_FIELDS))
        return f"{unknown[0]}: not a field the fake RunPod knows for a CPU pod ({known})"
    for field in ("name", "imageName", "cpuFlavorIds", "vcpuCount"):
        if field not in body:
            return f"{field}: required for a CPU pod"
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("name", _is_text, "a non-empty string"),
        ("imageName", _is_text, "a non-empty string"),
        (
            "cpuFlavorIds",
            lambda v: _is_list_of_text(v) and len(v) > 0 and set(v) <= set(CPU_FLAVOR_IDS),
            f"a non-empty list of {', '.join(CPU_FLAVOR_IDS)}",
        ),
        (
            "cpuFlavorPriority",
            lambda v: v in ("availability", "custom"),
            '"availability" or "custom"',
        ),
        ("vcpuCount", _is_power_of_two, "a power of two"),
        ("cloudType", lambda v: v == "SECURE", '"SECURE" (CPU pods run in the secure cloud only)'),
        ("supportPublicIp", lambda v: isinstance(v, bool), "true or false"),
        ("ports", _is_list_of_text, 'a list of strings like "22/tcp"'),
        ("env", _is_text_map, "an object of string values"),
        ("containerDiskInGb", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("dataCenterIds", _is_list_of_text, "a list of strings"),
        ("dataCenterPriority", lambda v: v in _PRIORITIES, '"availability" or "custom"'),
        ("networkVolumeId", _is_text, "a non-empty string"),
        ("volumeMountPath", lambda v: _is_text(v) and v.startswith("/"), "an absolute path"),
    ]
    for field, check, expected in checks:
        if field in body and not check(body[field]):
            return f"{field}: expected {expected}, got {json.dumps(body[field])}"
    for flavor_id in body["cpuFlavorIds"]:
        if flavor_id not in flavor_ids:
            return f"cpuFlavorIds: RunPod lists no CPU flavor {flavor_id!r} now"
    return None
