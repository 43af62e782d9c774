"""The fake Massed Compute itself (``fake_massedcompute.py``), through its HTTP API alone:
its answers' shapes, its refusals, an instance's life (the launch's command run for real,
sshd on port 22 of the instance's loopback address with the host key the command gave it)
and its end, every process of it gone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import procs
import pytest
from fake_cloud import _pod_processes
from fake_massedcompute import NO_CAPACITY, FakeMassedCompute, listeners, need_fake_massedcompute

from skyward_trio import _massedcompute, _transport

pytestmark = pytest.mark.clouds


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeMassedCompute]:
    need_fake_massedcompute()
    with FakeMassedCompute(root=tmp_path_factory.mktemp("fake-mc")) as api:
        yield api


def _call(api: FakeMassedCompute, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api.api_key}"}
    return httpx.request(method, f"{api.api_url}{path}", headers=headers, timeout=30, **kwargs)


def _presented_key(address: str) -> str:
    """The ed25519 host key sshd on ``address``:22 presents (``ssh-keyscan``)."""
    found = subprocess.run(
        ["ssh-keyscan", "-T", "5", "-t", "ed25519", address],
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [x for x in found.stdout.splitlines() if x and not x.startswith("#")]
    return " ".join(line.split()[1:3])


def test_a_wrong_key_unknown_paths_and_fields_are_refused(fake: FakeMassedCompute) -> None:
    wrong = httpx.get(f"{fake.api_url}/gpu-inventory", headers={"Authorization": "Bearer no"})
    assert (wrong.status_code, wrong.json()) == (401, {"message": "Authentication not correct."})
    assert _call(fake, "GET", "/nowhere").status_code == 404
    body = {"imageId": 184, "productName": "gpu_1x_l40s", "regionName": "any", "sshKey": "k"}
    refused = _call(fake, "POST", "/instance/launch", json=body)
    assert refused.status_code == 400
    assert refused.json()["message"].startswith("sshKey: not a field")
    missing = _call(fake, "POST", "/instance/launch", json={"productName": "gpu_1x_l40s"})
    assert missing.json() == {"message": "imageId: required"}
    unknown = {"imageId": 184, "productName": "gpu_9x_nothing", "regionName": "any"}
    assert _call(fake, "POST", "/instance/launch", json=unknown).json() == {
        "message": "Failed to launch instance"
    }
    gone = _call(fake, "POST", "/instance/terminate", json={"instanceUuids": ["nope"]})
    assert (gone.status_code, gone.json()) == (400, {"message": "No valid VMs found"})
    none = _call(fake, "GET", "/instance/nope")
    assert (none.status_code, none.json()) == (200, {"runningInstance": []})
    assert not fake.live()


def test_the_inventory_is_keyed_by_product_with_prices_in_cents(fake: FakeMassedCompute) -> None:
    listed = _call(fake, "GET", "/gpu-inventory").json()["gpu_inventory"]
    l40s = listed["gpu_1x_l40s"]
    assert l40s["instance_type"]["price_cents_per_hour"] == 88
    assert l40s["regions_with_capacity_available"][0]["name"] == "us-central-3"
    assert listed["gpu_1x_l40"]["capacity_available"] == 0
    assert listed["gpu_1x_l40"]["regions_with_capacity_available"] == []


def test_no_capacity_and_a_region_without_it_are_refused(fake: FakeMassedCompute) -> None:
    for product, region in (("gpu_1x_l40", "any"), ("gpu_1x_l40s", "us-east-1")):
        body = {"imageId": 184, "productName": product, "regionName": region}
        refused = _call(fake, "POST", "/instance/launch", json=body)
        assert (refused.status_code, refused.json()) == (400, {"message": NO_CAPACITY})
    assert not fake.live()


def test_an_instance_runs_its_command_and_terminating_ends_every_process(
    fake: FakeMassedCompute, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool_key = _transport.generate_key()
    host_key = _transport.generate_key()
    command = _massedcompute.startup_command(_transport.public_openssh(pool_key), host_key)
    body = {
        "imageId": 184,
        "productName": "gpu_1x_a6000",
        "regionName": "any",
        "instanceName": "skyward-fake-0-1",
        "command": command,
    }
    launched = _call(fake, "POST", "/instance/launch", json=body)
    assert launched.status_code == 200, launched.text
    (listed,) = _call(fake, "GET", "/instance").json()["runningInstances"]
    assert listed["name"] == "skyward-fake-0-1"
    assert listed["command_startup"] == command
    assert (listed["status"], listed["active"], listed["os_booted"]) == ("rented", 1, 1)
    assert listed["ip"].startswith("127.12.")
    one = _call(fake, "GET", f"/instance/{listed['uuid']}").json()["runningInstance"]
    assert one == listed
    assert _presented_key(listed["ip"]) == " ".join(_transport.public_openssh(host_key).split()[:2])
    (instance,) = fake.live()
    # The command stopped the image's sshd (the stand-in systemctl) and wrote the keys.
    assert (instance.directory / "systemctl.log").read_text().split() == [
        "stop",
        "ssh.socket",
        "ssh.service",
        "sshd.service",
    ]
    assert instance.machine is not None
    written = instance.machine.home / ".skyward-ssh"
    assert (written / "authorized_keys").read_text().strip() == _transport.public_openssh(pool_key)
    assert (written / "host_key").stat().st_mode & 0o777 == 0o600  # its half, presented above
    marker = f"FAKE_MASSEDCOMPUTE_MACHINE={instance.directory}".encode()
    (listener,) = listeners(instance.directory / "sshd_config")
    # Shown terminating however long the checks below take on a loaded machine.
    monkeypatch.setattr(fake, "remove_delay", 600.0)
    ended = _call(fake, "POST", "/instance/terminate", json={"instanceUuids": [listed["uuid"]]})
    assert ended.status_code == 200, ended.text
    assert not _pod_processes(0, marker)
    assert not procs.is_running(listener)
    assert not listeners(instance.directory / "sshd_config")
    shown = _call(fake, "GET", f"/instance/{listed['uuid']}").json()["runningInstance"]
    assert (shown["status"], shown["active"]) == ("terminating", 0)
    fake.remove_delay = 0.0  # the termination is done
    assert _call(fake, "GET", "/instance").json() == {"runningInstances": []}
    assert not fake.live()
