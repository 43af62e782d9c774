"""The fake TensorDock (``fake_tensordock.py``) that ``sky.TensorDock`` is tested against:
its API v2 answers as TensorDock documents it, strictly (a bearer token, JSON:API-style
bodies, ``{"errors": [...]}``), its VMs are sshd machines on port 22 of a dedicated
loopback IP that take the create's ``ssh_key`` and the host key of its cloud-init, and a
deleted VM is ``deleting`` a while, then gone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sshd
from clients import printed_over_ssh
from cloud_checks import bearer, call
from fake_tensordock import NO_CAPACITY, FakeTensorDock, need_fake_tensordock

from skyward_trio import _transport
from skyward_trio._aws import user_data

pytestmark = pytest.mark.clouds


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeTensorDock]:
    need_fake_tensordock()
    with FakeTensorDock(root=tmp_path_factory.mktemp("tensordock"), delete_delay=60) as api:
        yield api


def _call(
    fake: FakeTensorDock, method: str, path: str, body: Any = None, token: str = ""
) -> tuple[int, Any]:
    return call(fake.api_url, method, path, body, headers=bearer(token or fake.api_token))


def _create(key: str, **fields: Any) -> dict[str, Any]:
    attributes = {
        "name": "skyward-test-0-1",
        "type": "virtualmachine",
        "image": "ubuntu2404",
        "location_id": "loc-austin",
        "useDedicatedIp": True,
        "ssh_key": key,
        "resources": {
            "vcpu_count": 8,
            "ram_gb": 32,
            "storage_gb": 100,
            "gpus": {"geforcertx4090-pcie-24gb": {"count": 1}},
        },
        **fields,
    }
    return {"data": {"type": "virtualmachine", "attributes": attributes}}


def test_a_bad_token_or_body_is_refused_in_tensordocks_shape(fake: FakeTensorDock) -> None:
    status, answer = _call(fake, "GET", "/locations", token="wrong")
    assert status == 401
    assert answer["errors"][0]["title"] == "Unauthorized"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly other"
    status, answer = _call(fake, "POST", "/instances", _create(key, gpu_model="x"))
    assert status == 400
    assert answer["errors"][0]["detail"].startswith("gpu_model: not a field")
    small = _create(key)
    small["data"]["attributes"]["resources"]["storage_gb"] = 50
    assert _call(fake, "POST", "/instances", small)[0] == 400
    listed = _create(key)
    listed["data"]["attributes"]["resources"]["gpus"] = [
        {"gpuV0Name": "geforcertx4090-pcie-24gb", "count": 1}
    ]
    assert _call(fake, "POST", "/instances", listed)[0] == 400
    assert not fake.live()


def test_a_vm_is_a_machine_with_the_keys_it_was_given(
    fake: FakeTensorDock, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, answer = _call(fake, "GET", "/locations")
    assert status == 200
    assert [loc["id"] for loc in answer["data"]["locations"]] == ["loc-austin", "loc-chicago"]
    client = _transport.generate_key()
    host_key = _transport.generate_key()
    body = _create(
        _transport.public_openssh(client),
        cloud_init=user_data("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly other", host_key),
    )
    status, answer = _call(fake, "POST", "/instances", body)
    assert status == 201, answer
    vm_id = answer["data"]["id"]
    status, shown = _call(fake, "GET", f"/instances/{vm_id}")
    assert status == 200
    attributes = shown["data"]["attributes"]
    assert attributes["status"] == "running"
    assert attributes["ipAddress"].startswith("127.10.")
    assert attributes["resources"]["gpus"] == [
        {"gpuV0Name": "geforcertx4090-pcie-24gb", "count": 1}
    ]
    assert attributes["rateHourly"] == pytest.approx(0.35 + 8 * 0.003 + 32 * 0.002 + 0.01)
    listed = _call(fake, "GET", "/instances")[1]["data"]["instances"]
    assert [i["id"] for i in listed] == [vm_id]
    # The create's key logs in; the host key is pinned; the marker is the VM's own.
    printed = printed_over_ssh(
        attributes["ipAddress"], client, host_key, 'printf %s "$FAKE_TENSORDOCK_MACHINE"'
    )
    assert printed == str(fake.vms[vm_id].directory)
    # Shown deleting however long the delete takes on a loaded machine.
    monkeypatch.setattr(fake, "delete_delay", 600.0)
    assert _call(fake, "DELETE", f"/instances/{vm_id}")[0] == 200
    assert not fake.live()
    assert _call(fake, "GET", f"/instances/{vm_id}")[1]["data"]["attributes"]["status"] == (
        "deleting"
    )
    machine = fake.vms[vm_id].machine
    assert machine is not None
    assert machine.pid not in sshd.RUNNING  # its sshd ended
    fake.delete_delay = 0  # the deletion is done
    assert _call(fake, "GET", f"/instances/{vm_id}")[0] == 404
    assert _call(fake, "GET", "/instances")[1]["data"]["instances"] == []
    assert _call(fake, "DELETE", f"/instances/{vm_id}")[0] == 404


def test_no_capacity_is_answered_at_create(fake: FakeTensorDock) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly other"
    fake.capacity[("loc-austin", "geforcertx4090-pcie-24gb")] = 0
    try:
        status, answer = _call(fake, "POST", "/instances", _create(key))
        assert (status, answer["errors"][0]["detail"]) == (400, NO_CAPACITY)
        # Chicago deploys two at most.
        three = _create(key, location_id="loc-chicago")
        three["data"]["attributes"]["resources"]["gpus"] = {
            "geforcertx4090-pcie-24gb": {"count": 3}
        }
        assert _call(fake, "POST", "/instances", three)[1]["errors"][0]["detail"] == NO_CAPACITY
    finally:
        fake.capacity.clear()
    assert not fake.live()
