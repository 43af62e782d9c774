"""The fake JarvisLabs (``fake_jarvislabs.py``) that ``sky.JarvisLabs`` is tested against: its
API answers as the ``jarvislabs`` SDK reads it, strictly (a bearer key, ``server_meta`` rows,
``{"machine_id"}`` for a create, ``{"message"}`` errors), its instances are sshd machines
that authorize the account's SSH keys of their create, reached at their ``ssh_str``, and a
destroyed instance is ``Destroying``, then gone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest
from clients import asyncio_run
from cloud_checks import bearer, call
from fake_jarvislabs import FakeJarvisLabs, need_fake_jarvislabs
from waiting import wait_until

from skyward_trio import _jarvislabs, _transport

pytestmark = pytest.mark.clouds


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeJarvisLabs]:
    need_fake_jarvislabs()
    with FakeJarvisLabs(root=tmp_path_factory.mktemp("jarvislabs")) as api:
        yield api


def _call(fake: FakeJarvisLabs, method: str, path: str, body: Any = None, key: str = "") -> Any:
    return call(fake.api_url, method, path, body, headers=bearer(key or fake.api_key))


def _create(name: str, **more: Any) -> dict[str, Any]:
    return {
        "gpu_type": "L4",
        "num_gpus": 1,
        "hdd": 40,
        "region": "india-01",
        "name": name,
        "is_spot": False,
        "duration": "hour",
        **more,
    }


def test_a_wrong_key_and_a_strict_body_are_refused(fake: FakeJarvisLabs) -> None:
    status, body = _call(fake, "GET", "/users/fetch", key="jl_wrong")
    assert (status, body["message"]) == (401, "Invalid or expired token")
    status, body = _call(fake, "POST", "/templates/pytorch/create", _create("x", gpus=1))
    assert status == 422
    assert body["message"].startswith("gpus: not a field")
    status, body = _call(fake, "POST", "/templates/nope/create", _create("x"))
    assert status == 404
    status, body = _call(fake, "POST", "/templates/pytorch/create", _create("bad/name"))
    assert status == 422
    assert "name" in body["message"]
    assert not fake.live()


def test_an_instance_authorizes_the_account_keys_and_is_reached_at_its_ssh_str(
    fake: FakeJarvisLabs,
) -> None:
    client = _transport.generate_key()
    public = _transport.public_openssh(client)
    assert _call(fake, "POST", "/ssh/", {"ssh_key": public, "key_name": "t"}) == (
        200,
        {"success": True},
    )
    # A window that a loaded machine's next request cannot miss.
    unlisted_for, fake.unlisted_for = fake.unlisted_for, 3.0
    try:
        status, made = _call(fake, "POST", "/templates/pytorch/create", _create("skyward-t-0-1"))
        assert status == 200, made
        machine_id = made["machine_id"]
        # Not listed for a moment, as the SDK allows for; then Running with its ssh_str.
        assert _call(fake, "GET", f"/users/fetch/{machine_id}")[0] == 404
    finally:
        fake.unlisted_for = unlisted_for
    wait_until(
        lambda: _call(fake, "GET", f"/users/fetch/{machine_id}")[0] == 200,
        "the instance listed",
        timeout=10,
        every=0.05,
    )
    _, fetched = _call(fake, "GET", f"/users/fetch/{machine_id}")
    instance = fetched["instance"]
    assert instance["status"] == "Running"
    endpoint = _jarvislabs.ssh_endpoint(instance["ssh_str"])
    assert endpoint is not None
    assert endpoint[0].startswith("127.11.")
    host, port = endpoint

    async def whoami() -> str:
        async with asyncssh.connect(
            host, port, username="root", client_keys=[client], known_hosts=None
        ) as conn:
            done = await conn.run("whoami", check=True)
            return str(done.stdout).strip()

    assert asyncio_run(whoami) == "root"
    # Its free GPUs were taken; a destroy gives them back, shows Destroying, then 404.
    (l4,) = [g for g in fake.gpus if (g["gpu_type"], g["region"]) == ("L4", "india-01")]
    assert l4["num_free_devices"] == 7
    # Longer than ending the machine's processes takes.
    destroy_delay, fake.destroy_delay = fake.destroy_delay, 3.0
    try:
        assert _call(fake, "POST", f"/misc/destroy?machine_id={machine_id}") == (
            200,
            {"success": True},
        )
        assert _call(fake, "GET", f"/users/fetch/{machine_id}")[1]["instance"]["status"] == (
            "Destroying"
        )
    finally:
        fake.destroy_delay = destroy_delay
    wait_until(
        lambda: _call(fake, "GET", f"/users/fetch/{machine_id}")[0] == 404,
        "gone",
        timeout=10,
        every=0.05,
    )
    assert l4["num_free_devices"] == 8
    assert not fake.live()
    (key,) = _call(fake, "GET", "/ssh/")[1]
    assert _call(fake, "DELETE", f"/ssh/{key['key_id']}")[0] == 200
    assert _call(fake, "GET", "/ssh/")[1] == []


def test_no_free_gpus_and_refusals_say_so(fake: FakeJarvisLabs) -> None:
    status, body = _call(fake, "POST", "/templates/pytorch/create", _create("n", gpu_type="A5000"))
    assert (status, body["message"]) == (400, "No free A5000 GPUs in india-01 right now")
    europe = _create("n", gpu_type="H100", region="europe-01", num_gpus=2, hdd=100)
    status, body = _call(fake, "POST", "/templates/pytorch/create", europe)
    assert status == 400
    assert "1 or 8 GPUs" in body["message"]
    fake.fail_creates(1, "Insufficient balance", status=403)
    status, body = _call(fake, "POST", "/templates/pytorch/create", _create("n"))
    assert (status, body["message"]) == (403, "Insufficient balance")
    assert not fake.live()
