"""The fake Vultr (``fake_vultr.py``) that ``sky.Vultr`` is tested against: its API answers
as Vultr documents it, strictly (paginated lists, wrapped objects, ``{"error", "status"}``),
and its instances are sshd machines that take the create's SSH keys and the host key of
their (base64) user data."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest
import sshd
from clients import printed_over_ssh
from cloud_checks import bearer, call
from fake_vultr import NOT_AVAILABLE, FakeVultr, need_fake_vultr

from skyward_trio import _transport
from skyward_trio._aws import user_data

pytestmark = pytest.mark.clouds


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeVultr]:
    need_fake_vultr()
    with FakeVultr(root=tmp_path_factory.mktemp("vultr"), per_page_max=2) as api:
        yield api


def _call(fake: FakeVultr, method: str, path: str, body: Any = None, key: str = "") -> Any:
    return call(fake.api_url, method, path, body, headers=bearer(key or fake.api_key))


def _key(fake: FakeVultr, name: str) -> tuple[asyncssh.SSHKey, str]:
    client = _transport.generate_key()
    status, answer = _call(
        fake, "POST", "/ssh-keys", {"name": name, "ssh_key": _transport.public_openssh(client)}
    )
    assert status == 201, answer
    return client, answer["ssh_key"]["id"]


def _create(**fields: Any) -> dict[str, Any]:
    return {"region": "ewr", "plan": "vcg-a16-6c-64g-16vram", "os_id": 1743, **fields}


def test_a_bad_key_or_body_is_refused_in_vultrs_shape(fake: FakeVultr) -> None:
    status, answer = _call(fake, "GET", "/instances", key="WRONG")
    assert (status, answer) == (401, {"error": "Invalid API token.", "status": 401})
    status, answer = _call(fake, "POST", "/instances", _create(zone="a"))
    assert status == 400
    assert answer["error"].startswith("zone: not a field")
    status, answer = _call(fake, "POST", "/instances", _create(image_id="x"))
    assert (status, "one of os_id" in answer["error"]) == (400, True)
    status, answer = _call(fake, "POST", "/instances", _create(user_data="#cloud-config"))
    assert (status, answer["error"]) == (400, "user_data: not base64")
    status, answer = _call(fake, "GET", "/plans?type=vc2")
    assert status == 400
    assert not fake.live()


def test_lists_are_paginated_with_a_cursor(fake: FakeVultr) -> None:
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        status, answer = _call(fake, "GET", f"/plans?type=vcg&per_page=100&cursor={cursor}")
        assert status == 200, answer
        assert len(answer["plans"]) <= 2  # the fake's per_page_max
        assert answer["meta"]["total"] == len(fake.plans)
        seen += [p["id"] for p in answer["plans"]]
        pages += 1
        cursor = answer["meta"]["links"]["next"]
        if not cursor:
            break
    assert seen == [p["id"] for p in fake.plans]
    assert pages == (len(fake.plans) + 1) // 2
    status, answer = _call(fake, "GET", "/plans?type=vcg&cursor=nonsense")
    assert status == 400


def test_availability_says_what_a_region_can_create_and_a_create_keeps_to_it(
    fake: FakeVultr,
) -> None:
    status, answer = _call(fake, "GET", "/regions/lax/availability?type=vcg")
    assert (status, answer) == (200, {"available_plans": ["vcg-l40s-16c-180g-48vram"]})
    assert _call(fake, "GET", "/regions/xyz/availability")[0] == 404
    # Sold in ewr, but ewr cannot create it now.
    status, answer = _call(fake, "POST", "/instances", _create(plan="vcg-a100-12c-120g-80vram"))
    assert (status, answer["error"]) == (400, NOT_AVAILABLE)
    # Selling out: the create is refused, and the region stops listing the plan.
    fake.sell_out.add(("vcg-l40s-16c-180g-48vram", "lax"))
    try:
        status, answer = _call(
            fake, "POST", "/instances", _create(region="lax", plan="vcg-l40s-16c-180g-48vram")
        )
        assert (status, answer["error"]) == (400, NOT_AVAILABLE)
        assert _call(fake, "GET", "/regions/lax/availability")[1]["available_plans"] == []
    finally:
        fake.sell_out.clear()
        fake.availability["lax"] = ["vcg-l40s-16c-180g-48vram"]
    fake.fail_creates(1, "You have reached the maximum monthly fee limit.", status=400)
    status, answer = _call(fake, "POST", "/instances", _create())
    assert (status, answer["error"]) == (400, "You have reached the maximum monthly fee limit.")
    assert not fake.live()


def test_an_instance_is_a_machine_with_its_keys_and_delete_ends_it(fake: FakeVultr) -> None:
    client, key_id = _key(fake, "machine")
    host_key = _transport.generate_key()
    data = user_data("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly other", host_key)
    create = _create(
        sshkey_id=[key_id],
        label="skyward-test-0-1",
        hostname="skyward-test-0-1",
        tags=["skyward-test"],
        user_data=base64.b64encode(data.encode()).decode(),
    )
    status, answer = _call(fake, "POST", "/instances", create)
    assert status == 202, answer
    instance_id = answer["instance"]["id"]
    status, shown = _call(fake, "GET", f"/instances/{instance_id}")
    instance = shown["instance"]
    assert (instance["status"], instance["power_status"], instance["label"]) == (
        "active",
        "running",
        "skyward-test-0-1",
    )
    ip = instance["main_ip"]
    assert ip.startswith("127.6.")

    # The registered key logs in; the host key is pinned; the marker is the instance's own.
    printed = printed_over_ssh(ip, client, host_key, 'printf %s "$FAKE_VULTR_MACHINE"')
    assert printed == str(fake.instances[instance_id].directory)
    fake.kill(instance_id)
    assert _call(fake, "GET", f"/instances/{instance_id}")[1]["instance"]["power_status"] == (
        "stopped"
    )
    assert [i.id for i in fake.live()] == [instance_id]  # stopped still bills
    assert _call(fake, "DELETE", f"/instances/{instance_id}")[0] == 204
    assert not fake.live()
    assert _call(fake, "GET", f"/instances/{instance_id}")[0] == 404
    assert _call(fake, "GET", "/instances")[1]["instances"] == []
    assert _call(fake, "DELETE", f"/ssh-keys/{key_id}")[0] == 204
    assert _call(fake, "GET", "/ssh-keys")[1]["ssh_keys"] == []
    assert fake.instances[instance_id].machine.pid not in sshd.RUNNING  # its sshd ended
