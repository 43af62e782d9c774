"""The fake Hyperstack (``fake_hyperstack.py``) that ``sky.Hyperstack`` is tested against:
its API answers as Hyperstack documents it, strictly, and its VMs are sshd machines that
take the create's keypair and the host key of their user data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest
import sshd
from clients import printed_over_ssh
from cloud_checks import call
from fake_hyperstack import IMAGE, NO_STOCK, FakeHyperstack, need_fake_hyperstack

from skyward_trio import _transport
from skyward_trio._aws import user_data

pytestmark = pytest.mark.clouds


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHyperstack]:
    need_fake_hyperstack()
    with FakeHyperstack(root=tmp_path_factory.mktemp("hyperstack")) as api:
        yield api


def _call(
    fake: FakeHyperstack, method: str, path: str, body: Any = None, key: str = ""
) -> tuple[int, Any]:
    return call(fake.api_url, method, path, body, headers={"api_key": key or fake.api_key})


def _home(fake: FakeHyperstack, name: str, region: str = "CANADA-1") -> asyncssh.SSHKey:
    """An environment ``name`` in ``region`` with a keypair ``name`` in it: the key."""
    status, answer = _call(fake, "POST", "/core/environments", {"name": name, "region": region})
    assert status == 200, answer
    client = _transport.generate_key()
    key = {"name": name, "environment_name": name, "public_key": _transport.public_openssh(client)}
    status, answer = _call(fake, "POST", "/core/keypairs", key)
    assert status == 200, answer
    assert answer["keypair"]["environment"]["name"] == name
    return client


def _create(name: str, flavor: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "environment_name": name,
        "image_name": IMAGE,
        "flavor_name": flavor,
        "key_name": name,
        "count": 1,
        **more,
    }


def test_a_bad_key_or_body_is_refused_in_hyperstacks_shape(fake: FakeHyperstack) -> None:
    status, answer = _call(fake, "GET", "/core/virtual-machines", key="hs_wrong")
    assert (status, answer["status"], answer["error_reason"]) == (401, False, "unauthorized")
    _home(fake, "strict")
    status, answer = _call(
        fake, "POST", "/core/virtual-machines", _create("strict", "n3-A100x1", zone="a")
    )
    assert status == 400
    assert answer["message"].startswith("zone: not a field")
    missing = {k: v for k, v in _create("strict", "n3-A100x1").items() if k != "key_name"}
    status, answer = _call(fake, "POST", "/core/virtual-machines", missing)
    assert (status, answer["message"]) == (400, "key_name: required")
    bad_rule = _create("strict", "n3-A100x1", security_rules=[{"direction": "in"}])
    status, answer = _call(fake, "POST", "/core/virtual-machines", bad_rule)
    assert status == 400, answer
    assert "required" in answer["message"] or "direction" in answer["message"]
    status, answer = _call(fake, "GET", "/core/flavors?region=MARS-1")
    assert status == 400
    status, answer = _call(fake, "GET", "/core/flavors?zone=a")
    assert status == 400
    status, answer = _call(fake, "POST", "/core/environments", {"name": "strict", "region": "US-1"})
    assert (status, answer["error_reason"]) == (409, "conflict")
    assert not fake.live()


def test_flavors_come_grouped_by_gpu_and_region_and_prices_bare(fake: FakeHyperstack) -> None:
    status, answer = _call(fake, "GET", "/core/flavors?region=NORWAY-1")
    assert status == 200
    assert answer["status"] is True
    assert {g["region_name"] for g in answer["data"]} == {"NORWAY-1"}
    h100 = next(g for g in answer["data"] if g["gpu"] == "H100-80G-PCIe")
    assert [f["name"] for f in h100["flavors"]] == ["n3-H100x1"]
    assert h100["flavors"][0]["stock_available"] is True
    status, prices = _call(fake, "GET", "/pricebook")
    assert status == 200
    assert isinstance(prices, list)  # no envelope
    assert {p["name"]: p["value"] for p in prices}["A100-80G-PCIe"] == "1.35"


def test_no_stock_refuses_a_create_and_the_listing_says_so(fake: FakeHyperstack) -> None:
    _home(fake, "stock", region="CANADA-1")
    status, answer = _call(
        fake, "POST", "/core/virtual-machines", _create("stock", "n3-H100x8-NVLink")
    )
    assert (status, answer["message"]) == (400, NO_STOCK)  # listed out of stock
    status, answer = _call(
        fake, "POST", "/core/virtual-machines", _create("stock", "n3-H100-SXM5x1")
    )
    assert status == 400  # a flavor of another region
    assert "no flavor" in answer["message"]
    fake.sell_out.add(("n3-RTX-A6000x1", "CANADA-1"))
    fake.fail_creates(1, message="Quota exceeded for GPUs", status=403, reason="forbidden")
    try:
        status, answer = _call(
            fake, "POST", "/core/virtual-machines", _create("stock", "n3-A100x1")
        )
        assert (status, answer["error_reason"]) == (403, "forbidden")
        status, answer = _call(
            fake, "POST", "/core/virtual-machines", _create("stock", "n3-RTX-A6000x1")
        )
        assert (status, answer["message"]) == (400, NO_STOCK)
        _, listed = _call(fake, "GET", "/core/flavors?region=CANADA-1")
        (a6000,) = [
            f for g in listed["data"] for f in g["flavors"] if f["name"] == "n3-RTX-A6000x1"
        ]
        assert a6000["stock_available"] is False
    finally:
        for entry in fake.flavors:
            if entry["name"] == "n3-RTX-A6000x1":
                entry["stock_available"] = True
    assert not fake.live()


def test_a_vm_is_a_machine_with_its_keys_and_delete_ends_it(fake: FakeHyperstack) -> None:
    client = _home(fake, "machine", region="NORWAY-1")
    host_key = _transport.generate_key()
    rule = {
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": "tcp",
        "remote_ip_prefix": "0.0.0.0/0",
        "port_range_min": 22,
        "port_range_max": 22,
    }
    body = _create(
        "machine",
        "n3-A100x1",
        assign_floating_ip=True,
        security_rules=[rule],
        user_data=user_data("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly other", host_key),
    )
    status, answer = _call(fake, "POST", "/core/virtual-machines", body)
    assert status == 200, answer
    (made,) = answer["instances"]
    vm_id = made["id"]
    assert isinstance(vm_id, int)
    status, shown = _call(fake, "GET", f"/core/virtual-machines/{vm_id}")
    assert shown["instance"]["status"] == "ACTIVE"
    assert shown["instance"]["name"] == "machine"
    assert shown["instance"]["security_rules"][0]["port_range_min"] == 22
    ip = shown["instance"]["floating_ip"]
    assert ip.startswith("127.4.")

    # The keypair logs in; the host key is pinned.
    printed = printed_over_ssh(ip, client, host_key, 'printf %s "$FAKE_HYPERSTACK_VM_ID"')
    assert printed == str(vm_id)
    fake.kill(vm_id)
    assert _call(fake, "GET", f"/core/virtual-machines/{vm_id}")[1]["instance"]["status"] == "ERROR"
    assert [vm.id for vm in fake.live()] == [vm_id]  # an ERROR VM still bills
    status, ended = _call(fake, "DELETE", f"/core/virtual-machines/{vm_id}")
    assert (status, ended["status"]) == (200, True)
    assert not fake.live()
    assert _call(fake, "GET", f"/core/virtual-machines/{vm_id}")[0] == 404
    assert _call(fake, "GET", "/core/virtual-machines")[1]["instances"] == []
    (key,) = [k for k in fake.keypairs.values() if k["name"] == "machine"]
    assert _call(fake, "DELETE", f"/core/keypair/{key['id']}")[0] == 200
    assert _call(fake, "DELETE", f"/core/keypairs/{key['id']}")[0] == 404  # the path is singular
    assert fake.vms[vm_id].machine.pid not in sshd.RUNNING  # its sshd ended


def test_a_vm_without_a_floating_ip_has_no_public_address(fake: FakeHyperstack) -> None:
    _home(fake, "private", region="CANADA-1")
    status, answer = _call(fake, "POST", "/core/virtual-machines", _create("private", "n3-A100x2"))
    assert status == 200, answer
    vm_id = answer["instances"][0]["id"]
    shown = _call(fake, "GET", f"/core/virtual-machines/{vm_id}")[1]["instance"]
    assert (shown["status"], shown["floating_ip"]) == ("ACTIVE", None)
    assert _call(fake, "DELETE", f"/core/virtual-machines/{vm_id}")[0] == 200
    assert not fake.live()
