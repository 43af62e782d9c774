"""The fake Lambda Cloud (``fake_lambda.py``) that ``sky.Lambda`` is tested against: its API
answers as Lambda documents it, strictly, and its instances are sshd machines that take the
launch's SSH key and the host key of their user data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest
import sshd
from clients import printed_over_ssh
from cloud_checks import bearer, call
from fake_lambda import NO_CAPACITY, FakeLambda, need_fake_lambda

from skyward_trio import _transport
from skyward_trio._aws import user_data

pytestmark = pytest.mark.clouds


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeLambda]:
    need_fake_lambda()
    with FakeLambda(root=tmp_path_factory.mktemp("lambda")) as api:
        yield api


def _call(fake: FakeLambda, method: str, path: str, body: Any = None, key: str = "") -> Any:
    return call(fake.api_url, method, path, body, headers=bearer(key or fake.api_key))


def _key(fake: FakeLambda, name: str) -> tuple[asyncssh.SSHKey, str]:
    client = _transport.generate_key()
    status, answer = _call(
        fake, "POST", "/ssh-keys", {"name": name, "public_key": _transport.public_openssh(client)}
    )
    assert status == 200, answer
    return client, answer["data"]["id"]


def test_a_bad_key_or_body_is_refused_in_lambdas_shape(fake: FakeLambda) -> None:
    status, answer = _call(fake, "GET", "/instances", key="secret_wrong")
    assert (status, answer["error"]["code"]) == (401, "global/invalid-api-key")
    _key(fake, "strict")
    launch = {"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10"}
    status, answer = _call(fake, "POST", "/instance-operations/launch", {**launch, "zone": "a"})
    assert status == 400
    assert answer["error"]["message"].startswith("zone: not a field")
    two = {**launch, "ssh_key_names": ["strict", "strict"]}
    status, answer = _call(fake, "POST", "/instance-operations/launch", two)
    assert status == 400
    assert "exactly one SSH key" in answer["error"]["message"]
    status, answer = _call(fake, "GET", "/instance-types")
    assert answer["data"]["gpu_1x_a10"]["instance_type"]["specs"]["gpus"] == 1
    assert not fake.live()


def test_capacity_refusals_by_region_and_by_count(fake: FakeLambda) -> None:
    _key(fake, "capacity")
    launch = {"instance_type_name": "gpu_1x_a100_sxm4", "ssh_key_names": ["capacity"]}
    status, answer = _call(
        fake, "POST", "/instance-operations/launch", {**launch, "region_name": "us-south-1"}
    )
    assert (status, answer["error"]["code"]) == (400, NO_CAPACITY)  # not a region with capacity
    fake.full.add(("gpu_1x_a100_sxm4", "us-east-1"))
    fake.fail_launches(1, code="global/quota-exceeded", status=403)
    try:
        status, answer = _call(
            fake, "POST", "/instance-operations/launch", {**launch, "region_name": "us-west-2"}
        )
        assert (status, answer["error"]["code"]) == (403, "global/quota-exceeded")
        status, answer = _call(
            fake, "POST", "/instance-operations/launch", {**launch, "region_name": "us-east-1"}
        )
        assert (status, answer["error"]["code"]) == (400, NO_CAPACITY)
    finally:
        fake.full.clear()
    assert not fake.live()


def test_an_instance_is_a_machine_with_its_keys_and_terminate_ends_it(fake: FakeLambda) -> None:
    client, key_id = _key(fake, "machine")
    host_key = _transport.generate_key()
    launch = {
        "region_name": "us-east-1",
        "instance_type_name": "gpu_1x_a10",
        "ssh_key_names": ["machine"],
        "quantity": 1,
        "name": "skyward-test-0-1",
        "user_data": user_data("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly other", host_key),
    }
    status, answer = _call(fake, "POST", "/instance-operations/launch", launch)
    assert status == 200, answer
    (instance_id,) = answer["data"]["instance_ids"]
    status, shown = _call(fake, "GET", f"/instances/{instance_id}")
    assert shown["data"]["status"] == "active"
    assert shown["data"]["name"] == "skyward-test-0-1"
    ip = shown["data"]["ip"]
    assert ip.startswith("127.3.0.")

    # The registered key logs in; the host key is pinned.
    printed = printed_over_ssh(ip, client, host_key, 'printf %s "$FAKE_LAMBDA_INSTANCE_ID"')
    assert printed == instance_id
    fake.kill(instance_id)
    assert _call(fake, "GET", f"/instances/{instance_id}")[1]["data"]["status"] == "unhealthy"
    assert [i.id for i in fake.live()] == [instance_id]  # unhealthy still bills
    status, ended = _call(
        fake, "POST", "/instance-operations/terminate", {"instance_ids": [instance_id]}
    )
    assert status == 200
    assert ended["data"]["terminated_instances"][0]["status"] == "terminated"
    assert not fake.live()
    assert _call(fake, "GET", "/instances")[1]["data"] == []
    assert _call(fake, "DELETE", f"/ssh-keys/{key_id}")[0] == 200
    assert "machine" not in json.dumps(_call(fake, "GET", "/ssh-keys")[1])
    assert fake.instances[instance_id].machine.pid not in sshd.RUNNING  # its sshd ended


def test_file_systems_are_listed_and_a_launch_names_one_in_its_region(fake: FakeLambda) -> None:
    fake.add_file_system("shared", "us-east-1")
    try:
        status, answer = _call(fake, "GET", "/file-systems")
        assert status == 200
        (listed,) = answer["data"]
        assert (listed["name"], listed["region"]["name"], listed["mount_point"]) == (
            "shared",
            "us-east-1",
            "/lambda/nfs/shared",
        )
        _key(fake, "fs")
        launch = {
            "region_name": "us-east-1",
            "instance_type_name": "gpu_1x_a10",
            "ssh_key_names": ["fs"],
        }
        for names, said in [
            (["shared", "shared"], "at most one file system"),
            (["other"], "no file system named 'other'"),
        ]:
            status, answer = _call(
                fake, "POST", "/instance-operations/launch", {**launch, "file_system_names": names}
            )
            assert (status, said in answer["error"]["message"]) == (400, True), answer
        elsewhere = {**launch, "region_name": "us-west-1", "file_system_names": ["shared"]}
        status, answer = _call(fake, "POST", "/instance-operations/launch", elsewhere)
        assert status == 400
        assert "is in us-east-1, not us-west-1" in answer["error"]["message"]
        assert not fake.live()
    finally:
        fake.file_systems.clear()
