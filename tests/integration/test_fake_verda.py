"""The fake Verda keeps Verda's documented contract (``fake_verda.py``): tokens for a
client's id and secret only, every other call only with a token still good; lists in
Verda's shapes; creates answered with a bare id; strict bodies; no capacity a 503
``service_unavailable``; a deleted instance gone, its machine ended; a startup script's
host key installed once its delay is past. Raw HTTP to the fake on 127.0.0.1 only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_verda import IMAGE, FakeVerda, need_fake_verda

from skyward_trio import _transport
from skyward_trio._verda import startup_script

pytestmark = pytest.mark.clouds


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeVerda]:
    need_fake_verda()
    with FakeVerda(root=tmp_path / "verda", script_delay=60.0) as fake:
        yield fake


def _client(api: FakeVerda) -> httpx.Client:
    token = httpx.post(
        f"{api.api_url}/oauth2/token",
        json={
            "grant_type": "client_credentials",
            "client_id": api.client_id,
            "client_secret": api.client_secret,
        },
    )
    assert token.status_code == 200, token.text
    answer = token.json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] > 0
    return httpx.Client(
        base_url=api.api_url, headers={"Authorization": f"Bearer {answer['access_token']}"}
    )


def _create(client: httpx.Client, key_id: str, **fields: Any) -> httpx.Response:
    body = {
        "instance_type": "1H100.80S.30V",
        "image": IMAGE,
        "ssh_key_ids": [key_id],
        "location_code": "FIN-01",
        "hostname": "contract-1",
        "description": "a contract test",
        **fields,
    }
    return client.post("/instances", json=body)


def test_tokens_need_the_client_and_calls_need_a_good_token(api: FakeVerda) -> None:
    wrong = httpx.post(
        f"{api.api_url}/oauth2/token",
        json={
            "grant_type": "client_credentials",
            "client_id": api.client_id,
            "client_secret": "not-it",
        },
    )
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthorized_request")
    assert httpx.get(f"{api.api_url}/instance-types").status_code == 401
    with _client(api) as client:
        assert client.get("/instance-types").status_code == 200
        api.expire_tokens()
        refused = client.get("/instance-types")
        assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized_request")


def test_types_availability_and_locations_are_listed_in_verdas_shapes(api: FakeVerda) -> None:
    with _client(api) as client:
        types = client.get("/instance-types").json()
        h100 = next(t for t in types if t["instance_type"] == "1H100.80S.30V")
        assert h100["price_per_hour"] == "2.39"
        assert h100["gpu"]["number_of_gpus"] == 1
        assert h100["memory"]["size_in_gigabytes"] == 120
        available = client.get("/instance-availability").json()
        assert {"location_code": "FIN-01", "availabilities": list(api.availability["FIN-01"])} in (
            available
        )
        assert {loc["code"] for loc in client.get("/locations").json()} == {
            "FIN-01",
            "FIN-02",
            "ICE-01",
        }
        assert client.get("/instance-types", params={"currency": "usd"}).status_code == 400


def test_keys_and_scripts_are_made_listed_and_deleted_by_a_bare_id(api: FakeVerda) -> None:
    with _client(api) as client:
        made = client.post("/ssh-keys", json={"name": "k", "key": "ssh-ed25519 AAAA k"})
        assert made.status_code == 201
        assert isinstance(made.json(), str)
        assert client.get("/ssh-keys").json() == [
            {"id": made.json(), "name": "k", "key": "ssh-ed25519 AAAA k"}
        ]
        script = client.post("/scripts", json={"name": "s", "script": "#!/bin/sh\ntrue\n"})
        assert script.status_code == 201
        assert client.post("/ssh-keys", json={"name": "k", "public_key": "x"}).status_code == 400
        assert client.delete(f"/ssh-keys/{made.json()}").status_code == 200
        assert client.delete(f"/ssh-keys/{made.json()}").status_code == 404
        assert client.delete(f"/scripts/{script.json()}").status_code == 200
        assert not api.ssh_keys
        assert not api.scripts


def test_a_create_is_strict_and_no_capacity_is_a_503(api: FakeVerda) -> None:
    with _client(api) as client:
        key = client.post("/ssh-keys", json={"name": "k", "key": "ssh-ed25519 AAAA k"}).json()
        typo = _create(client, key, location="FIN-01")
        assert typo.status_code == 400
        assert "location:" in typo.json()["message"]
        missing = client.post("/instances", json={"instance_type": "1H100.80S.30V", "image": IMAGE})
        assert (missing.status_code, missing.json()["message"]) == (400, "hostname: required")
        full = _create(client, key, instance_type="1H100.80S.30V", location_code="ICE-01")
        assert (full.status_code, full.json()) == (
            503,
            {"code": "service_unavailable", "message": "No capacity available"},
        )
        assert _create(client, "no-such-key").status_code == 400
        assert _create(client, key, image="windows").status_code == 400
        assert _create(client, key, hostname="Not A Hostname").status_code == 400
        api.fail_creates(1, message="Insufficient funds")
        broke = _create(client, key)
        assert (broke.status_code, broke.json()["code"]) == (402, "insufficient_funds")
    assert len(api.live()) == 0


def test_an_instance_runs_its_script_and_ends_when_deleted(api: FakeVerda) -> None:
    host_key = _transport.generate_key()
    wanted = _transport.public_openssh(host_key)
    with _client(api) as client:
        key = client.post("/ssh-keys", json={"name": "k", "key": "ssh-ed25519 AAAA k"}).json()
        script = client.post(
            "/scripts", json={"name": "s", "script": startup_script(host_key)}
        ).json()
        made = _create(client, key, startup_script_id=script)
        assert made.status_code == 202, made.text
        instance_id = made.json()
        shown = client.get(f"/instances/{instance_id}").json()
        assert (shown["status"], shown["location"], shown["hostname"]) == (
            "running",
            "FIN-01",
            "contract-1",
        )
        assert shown["ip"].startswith("127.5.")
        assert [i["id"] for i in client.get("/instances").json()] == [instance_id]
        first = _fetch(shown["ip"], wanted)
        assert first is not None
        assert first.split()[:2] != wanted.split()[:2]
        (instance,) = api.live()
        instance.keyed_at = 0.0  # the script's delay is past
        client.get(f"/instances/{instance_id}")
        later = _fetch(shown["ip"], wanted)
        assert later is not None
        assert later.split()[:2] == wanted.split()[:2]
        sshd_pid = instance.machine.pid
        assert _alive(sshd_pid)
        bad = client.put("/instances", json={"action": "shutdown", "id": instance_id})
        assert bad.status_code == 400
        gone = client.put("/instances", json={"action": "delete", "id": instance_id})
        assert gone.status_code == 202
        assert gone.json() == [{"instanceId": instance_id, "action": "delete", "status": "success"}]
        assert client.get(f"/instances/{instance_id}").status_code == 404
        assert client.get("/instances").json() == []
    assert not api.live()
    assert not _alive(sshd_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def _fetch(host: str, like: str) -> str | None:
    import trio

    async def fetch() -> str | None:
        async with _transport.asyncio_loop():
            with trio.fail_after(20):
                while True:
                    try:
                        return await _transport.fetch_host_key(host, 22, like=[like])
                    except _transport.SSHError:
                        await trio.sleep(0.2)

    return trio.run(fetch)
