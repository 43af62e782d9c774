"""The fake RunPod (``fake_runpod.py``) that ``sky.RunPod`` is tested against: its API answers
as RunPod documents it, and its pods are sshd machines that a key logs in to and that end
(every process of them) when deleted, stopped or preempted.

Requests go through httpx, logins through the ``ssh`` CLI, as the user running the tests
(root in CI, as on RunPod).
"""

from __future__ import annotations

import getpass
import json
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import sshd
from fake_runpod import NO_INSTANCES, FakeRunPod
from waiting import wait_until

pytestmark = pytest.mark.clouds

if TYPE_CHECKING:
    from conftest import Processes

A100 = "NVIDIA A100 80GB PCIe"
A100_SXM = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"
L4 = "NVIDIA L4"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's key: its public half goes in each create's ``env.PUBLIC_KEY``."""
    path = tmp_path_factory.mktemp("client") / "id_ed25519"
    sshd.keygen(path)
    return path


def _body(key: Path | None, **fields: Any) -> dict[str, Any]:
    """A create's body as ``sky.RunPod`` sends it, with ``fields`` changed."""
    env = {"PUBLIC_KEY": key.with_suffix(".pub").read_text().strip()} if key else {}
    return {
        "name": "skyward-test",
        "imageName": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        "gpuTypeIds": [A100],
        "gpuCount": 1,
        "cloudType": "SECURE",
        "interruptible": False,
        "ports": ["22/tcp"],
        "env": env | {"SECRET": "only-in-the-container"},
        "containerDiskInGb": 20,
        "supportPublicIp": True,
    } | fields


def _cpu_body(key: Path | None, **fields: Any) -> dict[str, Any]:
    """A CPU pod's create as ``sky.RunPod`` sends it, with ``fields`` changed."""
    env = {"PUBLIC_KEY": key.with_suffix(".pub").read_text().strip()} if key else {}
    return {
        "name": "skyward-cpu-test",
        "imageName": "runpod/base:0.7.0-ubuntu2204",
        "computeType": "CPU",
        "cpuFlavorIds": ["cpu3c"],
        "cpuFlavorPriority": "custom",
        "vcpuCount": 8,
        "cloudType": "SECURE",
        "ports": ["22/tcp"],
        "env": env,
        "containerDiskInGb": 20,
        "supportPublicIp": True,
    } | fields


def _call(
    api: FakeRunPod, method: str, url: str, *, key: str | None = "account", body: Any = None
) -> httpx.Response:
    """One request; ``key`` "account" sends the API key, None none."""
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {api.api_key if key == 'account' else key}"
    return httpx.request(
        method, url, headers=headers, json=body, trust_env=False, timeout=60
    )  # no proxy between the tests and loopback


def _create(api: FakeRunPod, body: dict[str, Any]) -> dict[str, Any]:
    response = _call(api, "POST", f"{api.rest_url}/pods", body=body)
    assert response.status_code == 201, response.text
    pod: dict[str, Any] = response.json()
    return pod


def _get(api: FakeRunPod, pod_id: str) -> httpx.Response:
    return _call(api, "GET", f"{api.rest_url}/pods/{pod_id}")


def _ssh(key: Path, pod: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    """``command`` on the pod, logged in with ``key`` the way a user logs in to a RunPod pod
    (no config, agent or known hosts of this machine involved)."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(key),
            "-p",
            str(pod["portMappings"]["22"]),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{getpass.getuser()}@{pod['publicIp']}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,  # a hang guard only
    )


def _daemon(key: Path, pod: dict[str, Any]) -> int:
    """Start, over SSH, a process that leaves its session (as the worker daemon does); its pid."""
    started = _ssh(key, pod, "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!")
    assert started.returncode == 0, started.stderr
    return int(started.stdout)


def test_a_pod_is_a_machine_its_key_logs_in_to_and_delete_ends(
    fake_runpod: FakeRunPod, key: Path, processes: Processes
) -> None:
    api = fake_runpod
    created = _create(api, _body(key, gpuCount=2))
    pod_id = created["id"]
    assert re.fullmatch(r"[a-z0-9]{13}", pod_id)
    assert created["desiredStatus"] == "RUNNING"
    assert re.fullmatch(r"127\.0\.0\.\d+", created["publicIp"])
    assert created["machine"] == {"gpuTypeId": A100}
    assert created["costPerHr"] == pytest.approx(1.64 * 2)
    assert (created["gpuCount"], created["interruptible"]) == (2, False)
    assert created["image"] == _body(key)["imageName"]
    assert _get(api, pod_id).json() == created

    pod = api.pods[pod_id]
    answer = _ssh(key, created, 'echo "$HOME $RUNPOD_POD_ID $(command -v runpodctl) [$SECRET]"')
    assert answer.returncode == 0, answer.stderr
    runpodctl = api.root / pod_id / "bin" / "runpodctl"
    # Its own home and id; the create's other env is not in SSH sessions (as on RunPod).
    assert answer.stdout.split() == [str(pod.machine.home), pod_id, str(runpodctl), "[]"]
    daemon = _daemon(key, created)
    assert processes.is_running(daemon)

    named = _call(api, "GET", f"{api.rest_url}/pods", body=None)
    assert [p["id"] for p in named.json()] == [pod_id]
    by_name = _call(api, "GET", f"{api.rest_url}/pods?name=skyward-test").json()
    assert [p["id"] for p in by_name] == [pod_id]
    assert _call(api, "GET", f"{api.rest_url}/pods?name=other").json() == []

    deleted = _call(api, "DELETE", f"{api.rest_url}/pods/{pod_id}")
    assert (deleted.status_code, deleted.content) == (200, b"")
    # Ended when the answer comes: its sshd, and the process that left its session.
    assert not processes.is_running(pod.machine.pid)
    assert not processes.is_running(daemon)
    assert (pod.deleted, pod.status, api.live()) == (True, "TERMINATED", [])
    for gone in (_get(api, pod_id), _call(api, "DELETE", f"{api.rest_url}/pods/{pod_id}")):
        assert (gone.status_code, gone.json()) == (404, {"error": "pod not found"})
    assert _call(api, "GET", f"{api.rest_url}/pods").json() == []

    # What a test of the provider checks: the key travelled in the Authorization header only.
    assert [r.method for r in api.requests][:2] == ["POST", "GET"]
    assert api.requests[0].body == _body(key, gpuCount=2)
    for request in api.requests:
        assert request.headers["authorization"] == f"Bearer {api.api_key}"
        elsewhere = {name: v for name, v in request.headers.items() if name != "authorization"}
        assert api.api_key not in json.dumps([request.path, request.query, elsewhere, request.body])


def test_only_the_api_key_in_the_authorization_header_opens_the_api(
    fake_runpod: FakeRunPod, key: Path
) -> None:
    api = fake_runpod
    pods = f"{api.rest_url}/pods"
    unauthorized = {"error": "unauthorized"}
    for response in (
        _call(api, "GET", pods, key=None),
        _call(api, "GET", pods, key="rpa_" + "0" * 32),
        _call(api, "GET", f"{pods}?api_key={api.api_key}", key=None),  # GraphQL's old way
        _call(api, "POST", api.graphql_url, key=None, body={"query": "{ gpuTypes { id } }"}),
        httpx.get(pods, headers={"Authorization": api.api_key}, trust_env=False),  # no Bearer
    ):
        assert (response.status_code, response.json()) == (401, unauthorized)
    assert _call(api, "POST", pods, key=None, body=_body(key)).status_code == 401
    assert api.pods == {}

    missing = _call(api, "GET", f"{api.rest_url}/endpoints")
    assert (missing.status_code, missing.json()) == (404, {"error": "not found: GET /v1/endpoints"})

    # A pod's own key (its RUNPOD_API_KEY) deletes or stops that pod, and opens nothing else.
    pod_id = _create(api, _body(key))["id"]
    other = _create(api, _body(key))["id"]
    own = api.pods[pod_id].key
    for method, url in (
        ("GET", f"{pods}/{pod_id}"),
        ("GET", pods),
        ("DELETE", f"{pods}/{other}"),
        ("POST", f"{pods}/{other}/stop"),
    ):
        assert _call(api, method, url, key=own).status_code == 401, (method, url)
    assert _call(api, "POST", pods, key=own, body=_body(key)).status_code == 401
    assert len(api.live()) == 2


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"name": None}, "name: expected a non-empty string, got null"),
        ({"imageName": ""}, 'imageName: expected a non-empty string, got ""'),
        ({"gpuTypeIds": A100}, "gpuTypeIds: expected a non-empty list of ids"),
        ({"gpuTypeIds": []}, "gpuTypeIds: expected a non-empty list of ids, got []"),
        ({"gpuTypeIds": ["NVIDIA A100"]}, "gpuTypeIds: unknown GPU type 'NVIDIA A100'"),
        ({"gpuCount": 0}, "gpuCount: expected an integer >= 1, got 0"),
        ({"gpuCount": True}, "gpuCount: expected an integer >= 1, got true"),
        ({"cloudType": "ALL"}, 'cloudType: expected "SECURE" or "COMMUNITY", got "ALL"'),
        ({"interruptible": "yes"}, "interruptible: expected true or false"),
        ({"env": {"PORT": 22}}, "env: expected an object of string values"),
        ({"ports": "22/tcp"}, "ports: expected a list of strings"),
        ({"gpuTypeId": A100}, "gpuTypeId: not a field the fake RunPod knows"),
    ],
)
def test_a_bad_create_is_a_400_naming_the_field(
    fake_runpod: FakeRunPod, fields: dict[str, Any], error: str
) -> None:
    response = _call(
        fake_runpod, "POST", f"{fake_runpod.rest_url}/pods", body=_body(None, **fields)
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith(error)
    assert fake_runpod.pods == {}


def test_a_create_without_a_required_field_or_json_is_a_400(fake_runpod: FakeRunPod) -> None:
    api = fake_runpod
    for field in ("name", "imageName", "gpuTypeIds", "gpuCount"):
        body = _body(None)
        del body[field]
        response = _call(api, "POST", f"{api.rest_url}/pods", body=body)
        assert (response.status_code, response.json()) == (400, {"error": f"{field}: required"})
    not_json = httpx.post(
        f"{api.rest_url}/pods",
        content=b"{name: 1}",
        headers={"Authorization": f"Bearer {api.api_key}"},
        trust_env=False,
    )
    assert (not_json.status_code, not_json.json()) == (400, {"error": "body: not JSON"})
    assert api.pods == {}


def test_gpu_types_are_tried_in_order_while_capacity_lasts(
    fake_runpod: FakeRunPod, key: Path
) -> None:
    api = fake_runpod
    api.capacity[H100] = 0
    api.capacity[A100_SXM] = 1
    spot = _body(key, gpuTypeIds=[H100, A100_SXM], cloudType="COMMUNITY", interruptible=True)
    created = _create(api, spot)
    assert created["machine"] == {"gpuTypeId": A100_SXM}
    assert created["costPerHr"] == pytest.approx(0.7)  # A100 SXM's community spot price
    assert created["interruptible"] is True
    assert api.capacity[A100_SXM] == 0

    for body in (
        spot,  # neither has capacity left
        _body(key, gpuTypeIds=[L4], cloudType="COMMUNITY"),  # L4 is secure cloud only
        _body(key, gpuTypeIds=[L4], gpuCount=5),  # L4 pods have at most 4
    ):
        response = _call(api, "POST", f"{api.rest_url}/pods", body=body)
        assert (response.status_code, response.json()) == (500, {"error": NO_INSTANCES})
    assert len(api.live()) == 1

    api.fail_creates(2, status=429, message="create pod: rate limited")
    for _ in range(2):
        response = _call(api, "POST", f"{api.rest_url}/pods", body=_body(key))
        assert (response.status_code, response.json()) == (
            429,
            {"error": "create pod: rate limited"},
        )
    assert _create(api, _body(key, gpuTypeIds=[L4], gpuCount=4))["costPerHr"] == pytest.approx(
        0.43 * 4
    )
    assert len(api.live()) == 2


def test_a_pod_without_a_public_key_lets_nobody_in(fake_runpod: FakeRunPod, key: Path) -> None:
    created = _create(fake_runpod, _body(None))
    refused = _ssh(key, created, "true")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr


def test_a_preempted_pod_exits_with_every_process_of_it(
    fake_runpod: FakeRunPod, key: Path, processes: Processes
) -> None:
    api = fake_runpod
    created = _create(api, _body(key, interruptible=True))
    daemon = _daemon(key, created)
    pod = api.pods[created["id"]]
    api.preempt(pod.id)
    assert not processes.is_running(pod.machine.pid)
    assert not processes.is_running(daemon)
    shown = _get(api, pod.id).json()
    assert (shown["desiredStatus"], shown["publicIp"], shown["portMappings"]) == (
        "EXITED",
        None,
        None,
    )
    assert _ssh(key, created, "true").returncode == 255  # nothing listens there now
    assert api.live() == [pod]  # an exited pod stays until deleted
    with pytest.raises(ValueError, match=r"no live pod 'nosuchpod' \(live pods: "):
        api.preempt("nosuchpod")
    assert _call(api, "DELETE", f"{api.rest_url}/pods/{pod.id}").status_code == 200
    assert _get(api, pod.id).status_code == 404


def test_a_starting_pod_has_no_address_until_its_start_delay_passed(
    tmp_path: Path, key: Path
) -> None:
    sshd.need_sshd()
    with FakeRunPod(root=tmp_path, start_delay=600) as api:
        created = _create(api, _body(key))
        shown = [created, _get(api, created["id"]).json()]
        shown += _call(api, "GET", f"{api.rest_url}/pods").json()
        for pod in shown:
            assert (pod["desiredStatus"], pod["publicIp"], pod["portMappings"]) == (
                "RUNNING",
                None,
                None,
            )
        api.start_delay = 0.5
        later = _create(api, _body(key))["id"]
        wait_until(
            lambda: _get(api, later).json()["publicIp"] is not None,
            "the pod's address",
            timeout=30,
            every=0.1,
        )
        answer = _ssh(key, _get(api, later).json(), "echo $RUNPOD_POD_ID")
        assert answer.stdout.strip() == later


def test_runpodctl_in_a_pod_stops_or_removes_that_pod_only(
    fake_runpod: FakeRunPod, key: Path, processes: Processes
) -> None:
    api = fake_runpod
    first = _create(api, _body(key))
    second = _create(api, _body(key))

    usage = _ssh(key, first, "runpodctl get pod")
    assert (usage.returncode, usage.stderr.strip()) == (
        2,
        "usage: runpodctl remove pod <id> | runpodctl stop pod <id>",
    )
    refused = _ssh(key, first, f"runpodctl remove pod {second['id']}")
    assert refused.returncode == 1
    assert f"remove pod {second['id']}: 401" in refused.stderr
    assert [pod.id for pod in api.live()] == [first["id"], second["id"]]

    # A pod that ends itself may end the session that asked before it prints: only the
    # pod's state and processes are checked.
    _ssh(key, first, "runpodctl stop pod $RUNPOD_POD_ID")
    wait_until(
        lambda: _get(api, first["id"]).json()["desiredStatus"] == "EXITED",
        "the first pod to stop",
        timeout=30,
        every=0.1,
    )
    _ssh(key, second, "runpodctl remove pod $RUNPOD_POD_ID")
    wait_until(
        lambda: _get(api, second["id"]).status_code == 404,
        "the second pod's removal",
        timeout=30,
        every=0.1,
    )
    ended = [api.pods[first["id"]], api.pods[second["id"]]]
    wait_until(
        lambda: not any(pod.running for pod in ended), "both pods to end", timeout=30, every=0.1
    )
    assert not [pod.id for pod in ended if processes.is_running(pod.machine.pid)]
    first_key, second_key = api.pods[first["id"]].key, api.pods[second["id"]].key
    changes = [
        (r.method, r.path, r.headers["authorization"].removeprefix("Bearer "))
        for r in api.requests
        if r.method != "GET"
    ]
    assert changes == [
        ("POST", "/v1/pods", api.api_key),
        ("POST", "/v1/pods", api.api_key),
        ("DELETE", f"/v1/pods/{second['id']}", first_key),  # refused
        ("POST", f"/v1/pods/{first['id']}/stop", first_key),
        ("DELETE", f"/v1/pods/{second['id']}", second_key),
    ]
    assert [pod.id for pod in api.live()] == [first["id"]]


def test_graphql_answers_gpu_types_with_every_field(fake_runpod: FakeRunPod) -> None:
    api = fake_runpod
    query = "query GpuTypes { gpuTypes { id displayName memoryInGb securePrice } }"
    response = _call(api, "POST", api.graphql_url, body={"query": query})
    assert response.status_code == 200
    types = response.json()["data"]["gpuTypes"]
    assert types == api.gpu_types
    assert {A100, A100_SXM, H100, L4} <= {gpu["id"] for gpu in types}
    fields = {
        "id",
        "displayName",
        "memoryInGb",
        "secureCloud",
        "communityCloud",
        "securePrice",
        "communityPrice",
        "secureSpotPrice",
        "communitySpotPrice",
        "maxGpuCount",
    }
    assert all(set(gpu) == fields for gpu in types)
    assert all(gpu["secureSpotPrice"] < gpu["securePrice"] for gpu in types)

    wrong: list[dict[str, Any]] = [{"query": "query { myself { pods { id } } }"}, {"variables": {}}]
    for body in wrong:
        refused = _call(api, "POST", api.graphql_url, body=body)
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["message"]


def test_leaving_the_fake_ends_every_pod(tmp_path: Path, key: Path, processes: Processes) -> None:
    sshd.need_sshd()
    with FakeRunPod(root=tmp_path) as api:
        pods = [_create(api, _body(key)) for _ in range(2)]
        daemon = _daemon(key, pods[0])
        pids = [pod.machine.pid for pod in api.pods.values()]
        url = api.rest_url
    assert not [pid for pid in [*pids, daemon] if processes.is_running(pid)]
    assert not processes.mentioning(str(tmp_path))  # no sshd of it, nothing else either
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/pods", trust_env=False)


def test_a_failure_inside_the_fake_is_a_500_and_fails_the_test_on_leaving(
    tmp_path: Path, key: Path
) -> None:
    broken = [{"id": A100}]  # no prices or clouds: choosing a type fails
    api = FakeRunPod(root=tmp_path, gpu_types=broken).__enter__()
    response = _call(api, "POST", f"{api.rest_url}/pods", body=_body(key))
    assert response.status_code == 500
    assert response.json()["error"].startswith("the fake RunPod failed: POST /v1/pods: KeyError")
    with pytest.raises(AssertionError, match=r"the fake RunPod failed:\nPOST /v1/pods: KeyError"):
        api.__exit__(None, None, None)
    assert api.pods == {}


def test_a_cpu_pod_is_its_flavor_at_its_vcpu_count_priced_per_vcpu(
    fake_runpod: FakeRunPod, key: Path, processes: Processes
) -> None:
    api = fake_runpod
    created = _create(api, _cpu_body(key))
    pod_id = created["id"]
    # RAM: the flavor's ramGbPerVcpu (2) times the vCPUs; price: securePerVcpu (0.03) times.
    assert (created["cpuFlavorId"], created["vcpuCount"], created["memoryInGb"]) == ("cpu3c", 8, 16)
    assert created["costPerHr"] == pytest.approx(0.24)
    assert "gpuCount" not in created
    assert "machine" not in created
    assert _get(api, pod_id).json() == created
    answer = _ssh(key, created, "echo $RUNPOD_POD_ID $(command -v runpodctl)")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == [pod_id, str(api.root / pod_id / "bin" / "runpodctl")]
    pod = api.pods[pod_id]
    assert (pod.cpu_flavor_id, pod.gpu_type_id) == ("cpu3c", None)
    assert _call(api, "DELETE", f"{api.rest_url}/pods/{pod_id}").status_code == 200
    assert not processes.is_running(pod.machine.pid)
    assert _get(api, pod_id).status_code == 404


def test_cpu_flavors_are_tried_in_order_if_they_give_the_vcpus_and_have_capacity(
    fake_runpod: FakeRunPod,
) -> None:
    api = fake_runpod
    # cpu3m gives 2 to 16 vCPUs: 32 of them come from the next flavor, cpu3g.
    created = _create(api, _cpu_body(None, cpuFlavorIds=["cpu3m", "cpu3g"], vcpuCount=32))
    assert (created["cpuFlavorId"], created["memoryInGb"]) == ("cpu3g", 128)
    assert created["costPerHr"] == pytest.approx(0.04 * 32)
    api.capacity["cpu3g"] = 0
    for body in (
        _cpu_body(None, cpuFlavorIds=["cpu3m", "cpu3g"], vcpuCount=32),  # none gives it now
        _cpu_body(None, vcpuCount=64),  # more than cpu3c gives
    ):
        response = _call(api, "POST", f"{api.rest_url}/pods", body=body)
        assert (response.status_code, response.json()) == (500, {"error": NO_INSTANCES})
    # availability or custom: the fake tries the flavors in the order given either way.
    either = _create(
        api,
        _cpu_body(
            None, cpuFlavorIds=["cpu5c", "cpu3c"], vcpuCount=2, cpuFlavorPriority="availability"
        ),
    )
    assert (either["cpuFlavorId"], either["costPerHr"]) == ("cpu5c", pytest.approx(0.07))
    assert len(api.live()) == 2


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"gpuTypeIds": [A100]}, "gpuTypeIds: not a field the fake RunPod knows for a CPU pod"),
        ({"gpuCount": 1}, "gpuCount: not a field the fake RunPod knows for a CPU pod"),
        ({"interruptible": True}, "interruptible: not a field the fake RunPod knows for a CPU"),
        ({"vcpuCount": None}, "vcpuCount: expected a power of two, got null"),
        ({"vcpuCount": 6}, "vcpuCount: expected a power of two, got 6"),
        ({"vcpuCount": True}, "vcpuCount: expected a power of two, got true"),
        ({"cpuFlavorIds": []}, "cpuFlavorIds: expected a non-empty list of cpu3c, cpu3g"),
        ({"cpuFlavorIds": ["cpu9x"]}, "cpuFlavorIds: expected a non-empty list of cpu3c"),
        ({"cpuFlavorIds": ["cpu5m"]}, "cpuFlavorIds: RunPod lists no CPU flavor 'cpu5m' now"),
        ({"cpuFlavorPriority": "price"}, 'cpuFlavorPriority: expected "availability" or "custom"'),
        ({"cloudType": "COMMUNITY"}, 'cloudType: expected "SECURE" (CPU pods run in the secure'),
        ({"computeType": "TPU"}, 'computeType: expected "GPU" or "CPU", got "TPU"'),
    ],
)
def test_a_bad_cpu_create_is_a_400_naming_the_field(
    fake_runpod: FakeRunPod, fields: dict[str, Any], error: str
) -> None:
    body = _cpu_body(None, **fields)
    if fields.get("computeType") == "TPU":
        body = _body(None, computeType="TPU")  # not CPU: read as a GPU create
    response = _call(fake_runpod, "POST", f"{fake_runpod.rest_url}/pods", body=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(error)
    assert fake_runpod.pods == {}


def test_a_cpu_create_without_a_required_field_is_a_400(fake_runpod: FakeRunPod) -> None:
    for field in ("name", "imageName", "cpuFlavorIds", "vcpuCount"):
        body = _cpu_body(None)
        del body[field]
        response = _call(fake_runpod, "POST", f"{fake_runpod.rest_url}/pods", body=body)
        assert (response.status_code, response.json()) == (
            400,
            {"error": f"{field}: required for a CPU pod"},
        )
    # A GPU create may say what it is.
    gpu = _call(
        fake_runpod, "POST", f"{fake_runpod.rest_url}/pods", body=_body(None, computeType="GPU")
    )
    assert gpu.status_code == 201, gpu.text
    assert len(fake_runpod.pods) == 1


def test_the_v2_catalog_lists_cpu_flavors_to_the_api_key_only(fake_runpod: FakeRunPod) -> None:
    api = fake_runpod
    listed = _call(api, "GET", f"{api.catalog_url}/catalog/cpus")
    assert listed.status_code == 200
    cpus = listed.json()["cpus"]
    assert cpus == api.cpu_types
    assert {"cpu3c", "cpu3g", "cpu3m", "cpu5c"} == {cpu["id"] for cpu in cpus}
    fields = {"id", "name", "group", "vcpu", "ramGbPerVcpu", "price"}
    assert all(set(cpu) == fields for cpu in cpus)
    assert all(set(cpu["vcpu"]) == {"min", "max"} for cpu in cpus)
    assert all(cpu["price"]["securePerVcpu"] > 0 for cpu in cpus)
    refused = _call(api, "GET", f"{api.catalog_url}/catalog/cpus", key=None)
    assert (refused.status_code, refused.json()) == (401, {"error": "unauthorized"})
    other = _call(api, "GET", f"{api.catalog_url}/catalog/gpus")
    assert other.status_code == 404


def test_data_centres_and_network_volumes_place_a_pod(fake_runpod: FakeRunPod, key: Path) -> None:
    api = fake_runpod
    volume = api.add_network_volume("datasets", "US-KS-2")
    found = _call(api, "GET", f"{api.rest_url}/networkvolumes/{volume}")
    assert found.json() == {
        "id": volume,
        "name": "datasets",
        "size": 100,
        "dataCenterId": "US-KS-2",
    }
    missing = _call(api, "GET", f"{api.rest_url}/networkvolumes/nosuchvolume")
    assert missing.status_code == 404
    assert _call(api, "GET", f"{api.rest_url}/networkvolumes/{volume}", key=None).status_code == 401
    refused = [
        ({"dataCenterIds": ["XX-YY-9"]}, "dataCenterIds: unknown data center 'XX-YY-9'"),
        ({"networkVolumeId": "nosuchvolume"}, "networkVolumeId: no network volume"),
        (
            {"networkVolumeId": volume, "dataCenterIds": ["EU-RO-1"]},
            f"networkVolumeId: network volume {volume!r} is in US-KS-2",
        ),
        ({"volumeMountPath": "/data"}, "volumeMountPath: given without networkVolumeId"),
        ({"networkVolumeId": volume, "volumeMountPath": "data"}, "volumeMountPath: expected"),
        ({"dataCenterPriority": "cheapest"}, "dataCenterPriority: expected"),
    ]
    for fields, error in refused:
        response = _call(api, "POST", f"{api.rest_url}/pods", body=_body(None, **fields))
        assert response.status_code == 400, fields
        assert response.json()["error"].startswith(error)
    api.full_data_centers.add("EU-RO-1")
    try:
        ordered = _body(key, dataCenterIds=["EU-RO-1", "US-GA-1"], dataCenterPriority="custom")
        _create(api, ordered)
        (first,) = api.live()
        assert first.data_center == "US-GA-1"  # the first given with capacity
        _create(api, _body(key, networkVolumeId=volume, volumeMountPath="/data"))
        assert api.live()[1].data_center == "US-KS-2"  # the volume's
        none_left = _body(key, dataCenterIds=["EU-RO-1"])
        response = _call(api, "POST", f"{api.rest_url}/pods", body=none_left)
        assert (response.status_code, response.json()) == (500, {"error": NO_INSTANCES})
    finally:
        api.full_data_centers.clear()
    assert len(api.live()) == 2
