"""The fake Scaleway (``fake_scaleway.py``) that ``sky.Scaleway`` is tested against: its
APIs answer as Scaleway documents them, strictly (``X-Auth-Token``, pages, objects wrapped
as Scaleway wraps them, ``{"type", "message"}`` errors), its Instances are made stopped and
become sshd machines at power-on that take the Project's SSH keys and the host key of their
cloud-init user data, and ending one leaves its Block Storage volume to delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sshd
from clients import printed_over_ssh
from cloud_checks import call
from fake_scaleway import FakeScaleway, need_fake_scaleway

from skyward_trio import _transport
from skyward_trio._aws import user_data

pytestmark = pytest.mark.clouds

ZONE = "/instance/v1/zones/fr-par-2"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeScaleway]:
    need_fake_scaleway()
    with FakeScaleway(root=tmp_path_factory.mktemp("scaleway"), per_page_max=2) as api:
        yield api


def _call(
    fake: FakeScaleway, method: str, path: str, body: Any = None, key: str = ""
) -> tuple[int, Any]:
    return call(fake.api_url, method, path, body, headers={"X-Auth-Token": key or fake.secret_key})


def _create(fake: FakeScaleway, **fields: Any) -> dict[str, Any]:
    return {
        "name": "skyward-test-0-1",
        "commercial_type": "L4-1-24G",
        "image": "ubuntu_noble_gpu_os_13_nvidia",
        "project": fake.project_id,
        **fields,
    }


def test_a_bad_key_or_body_is_refused_in_scaleways_shape(fake: FakeScaleway) -> None:
    status, answer = _call(fake, "GET", f"{ZONE}/servers", key="WRONG")
    assert (status, answer["type"]) == (401, "denied_authentication")
    status, answer = _call(fake, "POST", f"{ZONE}/servers", _create(fake, region="x"))
    assert status == 400
    assert answer["message"].startswith("region: not a field")
    status, answer = _call(fake, "POST", f"{ZONE}/servers", _create(fake, project="other"))
    assert (status, answer["type"]) == (403, "permissions_denied")
    status, answer = _call(fake, "POST", f"{ZONE}/servers", _create(fake, commercial_type="X"))
    assert status == 400
    status, answer = _call(fake, "GET", "/instance/v1/zones/xx-yyy-9/servers")
    assert status == 400
    assert not fake.live()


def test_types_and_availability_come_in_pages_of_a_zone(fake: FakeScaleway) -> None:
    for path, field in (("products/servers", "ncpus"), ("products/servers/availability", "")):
        seen: dict[str, Any] = {}
        page = 1
        while True:
            status, answer = _call(fake, "GET", f"{ZONE}/{path}?per_page=100&page={page}")
            assert status == 200, answer
            assert len(answer["servers"]) <= 2  # the fake's per_page_max
            seen |= answer["servers"]
            if len(answer["servers"]) < 2:
                break
            page += 1
        assert set(seen) == set(fake.types["fr-par-2"])
        if field:
            assert seen["L4-1-24G"]["gpu"] == 1
            assert seen["DEV1-S"]["gpu"] is None
        else:
            assert seen["L40S-1-48G"] == {"availability": "shortage"}
    assert _call(fake, "GET", f"{ZONE}/products/servers?per_page=101")[0] == 400
    assert _call(fake, "GET", f"{ZONE}/products/servers?zone=x")[0] == 400


def test_an_instance_is_made_stopped_and_a_machine_at_power_on(fake: FakeScaleway) -> None:
    client = _transport.generate_key()
    status, key = _call(
        fake,
        "POST",
        "/iam/v1alpha1/ssh-keys",
        {
            "name": "skyward-test",
            "public_key": _transport.public_openssh(client),
            "project_id": fake.project_id,
        },
    )
    assert status == 200, key
    host_key = _transport.generate_key()
    data = user_data("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly other", host_key)
    status, answer = _call(
        fake,
        "POST",
        f"{ZONE}/servers",
        _create(fake, tags=["skyward-test"], dynamic_ip_required=True),
    )
    assert status == 201, answer
    server = answer["server"]
    server_id, path = server["id"], f"{ZONE}/servers/{server['id']}"
    assert (server["state"], server["public_ips"]) == ("stopped", [])
    (volume,) = server["volumes"].values()
    assert volume["volume_type"] == "sbs_volume"
    # User data is text, and only text.
    json_data = httpx.patch(
        fake.api_url + f"{path}/user_data/cloud-init",
        json={"x": 1},
        headers={"X-Auth-Token": fake.secret_key},
    )
    assert json_data.status_code == 400
    sent = httpx.patch(
        fake.api_url + f"{path}/user_data/cloud-init",
        content=data.encode(),
        headers={"X-Auth-Token": fake.secret_key, "Content-Type": "text/plain"},
    )
    assert sent.status_code == 204
    # A running Instance is terminated, not deleted; a stopped one is deleted.
    assert _call(fake, "POST", f"{path}/action", {"action": "terminate"})[0] == 400
    assert _call(fake, "POST", f"{path}/action", {"action": "poweron"})[0] == 202
    shown = _call(fake, "GET", path)[1]["server"]
    assert shown["state"] == "running"
    ip = shown["public_ips"][0]["address"]
    assert ip.startswith("127.7.")
    assert shown["public_ips"][0]["dynamic"] is True
    listed = _call(fake, "GET", f"{ZONE}/servers?tags=skyward-test&project={fake.project_id}")
    assert [s["id"] for s in listed[1]["servers"]] == [server_id]
    assert _call(fake, "GET", f"{ZONE}/servers?tags=other")[1]["servers"] == []

    # The Project's key logs in; the host key is pinned; the marker is the Instance's own.
    printed = printed_over_ssh(ip, client, host_key, 'printf %s "$FAKE_SCALEWAY_MACHINE"')
    assert printed == str(fake.servers[server_id].directory)
    assert _call(fake, "DELETE", path)[0] == 400  # running
    block = f"/block/v1alpha1/zones/fr-par-2/volumes/{volume['id']}"
    assert _call(fake, "DELETE", block)[0] == 412  # in use
    assert _call(fake, "POST", f"{path}/action", {"action": "terminate"})[0] == 202
    assert not fake.live()
    assert _call(fake, "GET", path)[0] == 404
    # Terminate leaves the Block Storage volume, detached, until it is deleted.
    assert _call(fake, "GET", block)[1]["status"] == "available"
    assert _call(fake, "DELETE", block)[0] == 204
    assert _call(fake, "GET", block)[0] == 404
    assert fake.servers[server_id].machine is not None
    assert fake.servers[server_id].machine.pid not in sshd.RUNNING  # its sshd ended
    # A stopped Instance (never powered on) is deleted, and leaves its volume too.
    status, answer = _call(fake, "POST", f"{ZONE}/servers", _create(fake))
    stopped = answer["server"]
    assert _call(fake, "DELETE", f"{ZONE}/servers/{stopped['id']}")[0] == 204
    (left,) = stopped["volumes"].values()
    assert _call(fake, "DELETE", f"/block/v1alpha1/zones/fr-par-2/volumes/{left['id']}")[0] == 204
    # SSH keys: listed by name within the Project, in pages, and deleted.
    keys = _call(fake, "GET", "/iam/v1alpha1/ssh-keys?name=skyward-test&page_size=10")[1]
    assert [k["id"] for k in keys["ssh_keys"]] == [key["id"]]
    assert _call(fake, "DELETE", f"/iam/v1alpha1/ssh-keys/{key['id']}")[0] == 204
    assert _call(fake, "GET", "/iam/v1alpha1/ssh-keys")[1]["ssh_keys"] == []


def test_no_stock_is_answered_at_power_on(fake: FakeScaleway) -> None:
    def made(zone: str, kind: str) -> str:
        status, answer = _call(
            fake, "POST", f"/instance/v1/zones/{zone}/servers", _create(fake, commercial_type=kind)
        )
        assert status == 201, answer
        return str(answer["server"]["id"])

    def power_on(zone: str, server_id: str) -> tuple[int, Any]:
        path = f"/instance/v1/zones/{zone}/servers/{server_id}/action"
        return _call(fake, "POST", path, {"action": "poweron"})

    # fr-par-2 has no L40S: the create is taken, the power-on is not.
    short = made("fr-par-2", "L40S-1-48G")
    status, answer = power_on("fr-par-2", short)
    assert (status, answer["type"]) == (412, "out_of_stock")
    # Selling out: the power-on is refused, and the zone's availability says so from then.
    fake.sell_out.add(("L40S-1-48G", "nl-ams-1"))
    try:
        sold = made("nl-ams-1", "L40S-1-48G")
        assert power_on("nl-ams-1", sold)[1]["type"] == "out_of_stock"
        path = "/instance/v1/zones/nl-ams-1/products/servers/availability?page=2"
        stock = _call(fake, "GET", path)[1]["servers"]  # DEV1-S and L4-1-24G come first
        assert stock == {"L40S-1-48G": {"availability": "shortage"}}
    finally:
        fake.sell_out.clear()
        fake.stock["nl-ams-1"]["L40S-1-48G"] = "available"
    fake.fail_starts(1, "Quota exceeded for this resource")
    quota = made("fr-par-2", "L4-1-24G")
    status, answer = power_on("fr-par-2", quota)
    assert (status, answer["type"], answer["message"]) == (
        403,
        "quotas_exceeded",
        "Quota exceeded for this resource",
    )
    for zone, server_id in (("fr-par-2", short), ("nl-ams-1", sold), ("fr-par-2", quota)):
        assert _call(fake, "DELETE", f"/instance/v1/zones/{zone}/servers/{server_id}")[0] == 204
    assert not fake.live()
    assert all(v["status"] == "available" for v in fake.volumes.values())
