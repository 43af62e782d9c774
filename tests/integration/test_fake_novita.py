"""The fake Novita (``fake_novita.py``) that ``sky.Novita`` is tested against: its API answers
as Novita documents it, strictly (a bearer key, ``{"data": [...]}`` products, ``{"id"}`` for
a create, ``{"code", "reason", "message"}`` errors), its instances run their create's
``command`` for real, so that a machine is reachable only as that command set it up, at the
``host:port`` its port 22 is mapped to, and a deleted instance is ``removing``, then gone."""

from __future__ import annotations

import base64
import getpass
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest
from clients import asyncio_run
from cloud_checks import bearer, call
from fake_novita import FakeNovita, need_fake_novita

from skyward_trio import _novita, _transport

pytestmark = pytest.mark.clouds


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeNovita]:
    need_fake_novita()
    with FakeNovita(root=tmp_path_factory.mktemp("novita"), page_max=2) as api:
        yield api


def _call(fake: FakeNovita, method: str, path: str, body: Any = None, key: str = "") -> Any:
    return call(fake.api_url, method, path, body, headers=bearer(key or fake.api_key))


def _create(name: str, client: _transport.SSHKey, host: _transport.SSHKey, **more: Any) -> Any:
    return {
        "name": name,
        "productId": "p-4090",
        "gpuNum": 1,
        "rootfsSize": 20,
        "imageUrl": "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime",
        "ports": "22/tcp",
        "envs": [
            {"key": "SKYWARD_AUTHORIZED_KEY", "value": _transport.public_openssh(client)},
            {
                "key": "SKYWARD_HOST_KEY",
                "value": base64.b64encode(_transport.private_openssh(host)).decode(),
            },
        ],
        "command": _novita.startup_command(),
        "kind": "gpu",
        **more,
    }


def test_a_wrong_key_and_a_strict_body_are_refused(fake: FakeNovita) -> None:
    status, answer = _call(fake, "GET", "/products", key="sk_wrong")
    assert (status, answer["reason"]) == (401, "INVALID_API_KEY")
    key = _transport.generate_key()
    status, answer = _call(fake, "POST", "/gpu/instance/create", _create("x", key, key, gpus=1))
    assert status == 400
    assert answer["message"].startswith("gpus: not a field")
    status, answer = _call(fake, "POST", "/gpu/instance/create", _create("x", key, key, gpuNum=9))
    assert (status, answer["message"]) == (400, "gpuNum: expected 1 to 8")
    assert _call(fake, "GET", "/products?zone=x")[0] == 400
    assert not fake.live()


def test_products_list_prices_in_hundred_thousandths_and_by_cluster(fake: FakeNovita) -> None:
    status, answer = _call(fake, "GET", "/products")
    assert status == 200
    by_id = {p["id"]: p for p in answer["data"]}
    assert by_id["p-h100"]["price"] == 256_000  # $2.56 per GPU-hour
    assert by_id["p-l40s-gone"]["availableDeploy"] is False
    status, answer = _call(fake, "GET", "/products?clusterId=EU-DE-01")
    assert {p["id"] for p in answer["data"]} == {"p-4090-b", "p-h100"}


def test_an_instance_runs_its_command_and_is_reached_at_its_mapped_port(
    fake: FakeNovita, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, host = _transport.generate_key(), _transport.generate_key()
    status, answer = _call(fake, "POST", "/gpu/instance/create", _create("fake-a", client, host))
    assert status == 200, answer
    instance_id = answer["id"]
    status, shown = _call(fake, "GET", f"/gpu/instance?instanceId={instance_id}")
    assert (status, shown["status"], shown["name"]) == (200, "running", "fake-a")
    ((mapping),) = shown["portMappings"]
    address, _, port = mapping["endpoint"].rpartition(":")
    assert (mapping["port"], mapping["type"]) == (22, "tcp")
    assert address.startswith("127.9.")
    assert int(port) != 22  # a mapped port, as Novita's are

    async def login() -> str:
        async with asyncssh.connect(
            address,
            int(port),
            username=getpass.getuser(),
            client_keys=[client],
            known_hosts=([asyncssh.import_public_key(_transport.public_openssh(host))], [], []),
        ) as conn:
            done = await conn.run("echo $FAKE_NOVITA_MACHINE", check=True)
            return str(done.stdout).strip()

    # Logged in with the key the command authorized, at the host key it installed.
    assert asyncio_run(login) == str(fake.instances[instance_id].directory)
    # The list is paged (the fake's page_max is 2) and shows no endpoint.
    listed = _call(fake, "GET", "/gpu/instances?pageSize=100&pageNum=1&name=fake-")[1]
    assert [i["id"] for i in listed["instances"]] == [instance_id]
    assert "endpoint" not in listed["instances"][0]["portMappings"][0]
    assert _call(fake, "GET", "/gpu/instances?pageNum=1")[0] == 400
    # Deleted: removing a while (however long the delete takes on a loaded machine),
    # then gone.
    monkeypatch.setattr(fake, "remove_delay", 600.0)
    status, _ = _call(fake, "POST", "/gpu/instance/delete", {"instanceId": instance_id})
    assert status == 200
    shown = _call(fake, "GET", f"/gpu/instance?instanceId={instance_id}")[1]
    assert (shown["status"], shown["portMappings"]) == ("removing", [])
    fake.remove_delay = 0.0  # the removal is done
    assert _call(fake, "GET", f"/gpu/instance?instanceId={instance_id}")[0] == 404
    assert not fake.live()
    assert _call(fake, "POST", "/gpu/instance/delete", {"instanceId": instance_id})[0] == 404


def test_a_command_that_sets_nothing_up_leaves_an_exited_instance(fake: FakeNovita) -> None:
    key = _transport.generate_key()
    body = _create("fake-b", key, key, command="sh -c 'exit 3'")
    status, answer = _call(fake, "POST", "/gpu/instance/create", body)
    assert status == 200
    shown = _call(fake, "GET", f"/gpu/instance?instanceId={answer['id']}")[1]
    assert (shown["status"], shown["portMappings"]) == ("exited", [])
    assert _call(fake, "POST", "/gpu/instance/delete", {"instanceId": answer["id"]})[0] == 200


def test_no_capacity_and_refusals_are_400s_with_novitas_words(fake: FakeNovita) -> None:
    key = _transport.generate_key()
    fake.capacity["p-4090"] = 0
    try:
        status, answer = _call(fake, "POST", "/gpu/instance/create", _create("c", key, key))
        assert (status, answer["reason"]) == (400, "NOT_ENOUGH_RESOURCE")
        assert "not enough" in answer["message"]
    finally:
        del fake.capacity["p-4090"]
    body = _create("c", key, key, productId="p-l40s-gone")
    assert _call(fake, "POST", "/gpu/instance/create", body)[1]["reason"] == "NOT_ENOUGH_RESOURCE"
    fake.fail_creates(1, "insufficient balance", reason="BALANCE_NOT_ENOUGH")
    status, answer = _call(fake, "POST", "/gpu/instance/create", _create("c", key, key))
    assert (status, answer["message"]) == (400, "insufficient balance")
    assert not fake.live()
