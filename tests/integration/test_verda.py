"""``sky.Verda`` end to end against a fake Verda (``fake_verda.py``): the provider buys a
token for its client, lists the instance types and their availability, registers the
pool's key, creates one instance per node with a startup script that installs a host key,
and each instance is a real OpenSSH ``sshd`` on loopback that the pool logs in to,
bootstraps and runs workers on. Nothing here reaches Verda; no address but loopback is
contacted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import (
    across_a_preemption,
    cancel_once,
    lease_client,
    reaped,
    run_sky,
)
from cloud_checks import debug_logged, refuses_bad_settings
from fake_verda import IMAGE, FakeVerda

import skyward as sky

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeVerda, **fields: Any) -> sky.Verda:
    return sky.Verda(
        client_id=api.client_id, client_secret=api.client_secret, api_url=api.api_url, **fields
    )


@sky.function
def _where() -> dict[str, Any]:
    return {"node": sky.instance_info().node, "instance": os.environ["FAKE_VERDA_ID"]}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeVerda) -> set[str]:
    return {instance.id for instance in api.live()}


def _creates(api: FakeVerda, since: int) -> list[Any]:
    return [
        r.body for r in api.requests[since:] if r.method == "POST" and r.path == "/v1/instances"
    ]


def _where_made(api: FakeVerda, since: int) -> list[tuple[str, str]]:
    """(type, location) of each create sent since ``since``."""
    return [(b["instance_type"], b["location_code"]) for b in _creates(api, since)]


def _bearer(api: FakeVerda) -> dict[str, str]:
    """The header of a token of the fake's client, as a person's own tool would send."""
    token = httpx.post(
        f"{api.api_url}/oauth2/token",
        json={
            "grant_type": "client_credentials",
            "client_id": api.client_id,
            "client_secret": api.client_secret,
        },
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def verda(fake_verda: FakeVerda) -> Iterator[FakeVerda]:
    """The fake, with no full location and no script delay once the test is done."""
    try:
        yield fake_verda
    finally:
        fake_verda.full.clear()
        fake_verda.script_delay = 0.0


def test_a_pool_of_two_instances_runs_and_everything_is_deleted(
    verda: FakeVerda, tmp_path: Path
) -> None:
    # The startup script installs the host key only a while after sshd first answers
    # with the image's own: the client waits for the key it made before it logs in.
    verda.script_delay = 1.0
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since, tokens = len(verda.requests), verda.tokens_given
    with sky.Compute(provider=provider(verda), accelerator=A.H100(), nodes=2, options=options) as (
        pool
    ):
        per_node = _where() @ pool
        job = pool.job_id
        live = _live(verda)
        (key,) = verda.ssh_keys.values()
        assert len(verda.scripts) == 2
        # A token that expires mid-pool is bought again; teardown needs one too.
        verda.expire_tokens()
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["instance"] for r in per_node} == live
    assert not _live(verda) & live, "an instance outlived its pool"
    assert verda.tokens_given - tokens >= 2
    creates = _creates(verda, since)
    # The cheapest H100 type with one GPU, in its first location with it available.
    assert [(b["instance_type"], b["location_code"]) for b in creates] == [
        ("1H100.80S.30V", "FIN-01")
    ] * 2
    assert all(b["ssh_key_ids"] == [key["id"]] for b in creates)
    assert key["name"] == f"skyward-{job}"
    assert all(b["hostname"].startswith(f"skyward-{job}-") for b in creates)
    assert all(b["image"] == IMAGE and b["is_spot"] is False for b in creates)
    assert len({b["startup_script_id"] for b in creates}) == 2
    assert not verda.ssh_keys, "the pool's SSH key outlived it"
    assert not verda.scripts, "the pool's startup scripts outlived it"
    text = log.read_text()
    assert verda.client_secret not in text


def test_offers_list_each_type_skyward_names_with_its_locations_and_price(
    fake_verda: FakeVerda,
) -> None:
    by_name = {o.name: o for o in sky.offers(provider(fake_verda))}
    # The A10 (no such model in sky.accelerators here) and the CPU type are left out.
    assert set(by_name) == {
        "1H100.80S.30V",
        "1H100.80S.32V",
        "8H100.80S.176V",
        "1A100.40S.22V",
        "2A100.80S.44V",
    }
    h100 = by_name["1H100.80S.30V"]
    assert h100.accelerator == A.H100(form_factor="SXM")
    assert (h100.on_demand_price, h100.spot_price) == (pytest.approx(2.39), None)
    assert (h100.vcpus, h100.memory_gb, h100.disk_gb) == (30.0, 120.0, 100.0)
    assert h100.regions == ("FIN-01", "FIN-02")
    assert by_name["2A100.80S.44V"].accelerator == A.A100(count=2, form_factor="SXM")
    assert by_name["1A100.40S.22V"].accelerator == A.A100(memory="40GB", form_factor="SXM")
    # Available nowhere: no price.
    assert (by_name["8H100.80S.176V"].regions, by_name["8H100.80S.176V"].on_demand_price) == (
        (),
        None,
    )
    iceland = provider(fake_verda, location="ICE-01")
    # One GPU: the type Iceland lacks is listed there with no location, no price.
    assert [(o.name, o.regions) for o in sky.offers(iceland, accelerator=A.H100())] == [
        ("1H100.80S.30V", ()),
        ("1H100.80S.32V", ("ICE-01",)),
    ]


def test_sky_offers_list_reads_the_credentials_from_its_shell(
    fake_verda: FakeVerda, tmp_path: Path
) -> None:
    """``sky offers list v``: the table skyward.toml names, the credentials from the shell."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.v]\ntype = "verda"\napi_url = "{fake_verda.api_url}"\n'
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "VERDA_CLIENT_ID": fake_verda.client_id,
        "VERDA_CLIENT_SECRET": fake_verda.client_secret,
    }
    done = run_sky(tmp_path, env, "offers", "list", "v", "--accelerator", "h100", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"1H100.80S.30V", "1H100.80S.32V"}
    assert rows["1H100.80S.30V"]["on_demand_price"] == pytest.approx(2.39)
    assert rows["1H100.80S.32V"]["on_demand_price"] == pytest.approx(2.49)
    assert fake_verda.client_secret not in done.stdout + done.stderr


def test_no_capacity_falls_back_to_the_next_location_then_the_next_type(
    verda: FakeVerda,
) -> None:
    verda.full |= {("1H100.80S.30V", "FIN-01"), ("1H100.80S.30V", "FIN-02")}
    since = len(verda.requests)
    with sky.Compute(provider=provider(verda), accelerator=A.H100(), options=QUIET) as pool:
        assert _square(5) >> pool == 25
    assert _where_made(verda, since) == [
        ("1H100.80S.30V", "FIN-01"),
        ("1H100.80S.30V", "FIN-02"),
        ("1H100.80S.32V", "ICE-01"),
    ]
    assert not verda.live()
    assert not verda.ssh_keys
    assert not verda.scripts


def test_no_capacity_anywhere_says_so_and_leaves_nothing(verda: FakeVerda) -> None:
    verda.full |= {("1A100.40S.22V", "FIN-01")}
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(sky.ProvisionError, match="Verda has no capacity now") as raised,
        sky.Compute(provider=provider(verda), accelerator=A.A100(memory="40GB"), options=options),
    ):
        pytest.fail("a pool came up with no capacity")
    assert "1A100.40S.22V in FIN-01" in str(raised.value)
    assert not verda.live()
    assert not verda.ssh_keys
    assert not verda.scripts


def test_a_balance_refusal_mid_pool_ends_what_started_and_says_the_fix(
    fake_verda: FakeVerda,
) -> None:
    options = sky.Options(console="silent", max_provision_attempts=1)
    fake_verda.fail_creates(1, message="Insufficient funds to deploy instance", after=1)
    with (
        pytest.raises(sky.ProvisionError, match="balance is too low") as raised,
        sky.Compute(provider=provider(fake_verda), accelerator=A.H100(), nodes=2, options=options),
    ):
        pytest.fail("a pool came up past its balance")
    assert "Add funds in Verda's console" in str(raised.value)
    assert not fake_verda.live()
    assert not fake_verda.ssh_keys
    assert not fake_verda.scripts


def test_bad_settings_fail_before_anything_is_created(
    fake_verda: FakeVerda, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = len(fake_verda.requests)
    refuses_bad_settings(
        provider(fake_verda),
        A.H100,
        cloud="Verda",
        keyless=sky.Verda(client_secret=fake_verda.client_secret, api_url=fake_verda.api_url),
        key_env="VERDA_CLIENT_ID",
        wrong=sky.Verda(
            client_id=fake_verda.client_id,
            client_secret="wrong-secret",
            api_url=fake_verda.api_url,
        ),
        secret="wrong-secret",
        refused="the API client's credentials",
        hint="check VERDA_CLIENT_ID and VERDA_CLIENT_SECRET",
    )
    assert not _creates(fake_verda, since)
    assert not fake_verda.ssh_keys


def test_a_pool_cancelled_while_instances_start_leaves_none(verda: FakeVerda) -> None:
    verda.start_delay = 3600.0  # the instances never run
    verda.delete_delay = 1.0  # and show deleting a while once deleted
    since = len(verda.requests)
    try:
        cancel_once(
            lambda: len(_creates(verda, since)) == 2,
            "two instances created",
            provider(verda),
            accelerator=A.H100(),
            nodes=2,
        )
    finally:
        verda.start_delay = 0.0
        verda.delete_delay = 0.0
    assert not verda.live()
    assert not verda.ssh_keys
    assert not verda.scripts


def test_a_create_whose_answer_never_came_is_found_by_name(fake_verda: FakeVerda) -> None:
    """An instance of the job's hostname the pool never heard of is deleted at its close."""
    with sky.Compute(provider=provider(fake_verda), accelerator=A.H100(), options=QUIET) as pool:
        (key,) = fake_verda.ssh_keys.values()
        sent = httpx.post(
            f"{fake_verda.api_url}/instances",
            json={
                "instance_type": "1H100.80S.30V",
                "image": IMAGE,
                "ssh_key_ids": [key["id"]],
                "location_code": "FIN-02",
                "hostname": f"skyward-{pool.job_id}-0-99",
                "description": "a create whose answer was lost",
            },
            headers=_bearer(fake_verda),
        )
        assert sent.status_code == 202, sent.text
        assert len(fake_verda.live()) == 2
    assert not fake_verda.live()


def test_a_killed_instance_is_replaced_and_its_call_sent_again(fake_verda: FakeVerda) -> None:
    with sky.Compute(provider=provider(fake_verda), accelerator=A.H100(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: fake_verda.kill(ran["instance"])
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not fake_verda.live()  # the offline one was deleted too


_CLIENT = lease_client(
    "sky.Verda(client_id=sys.argv[1], client_secret=sys.argv[2], api_url=sys.argv[3])",
    "sky.accelerators.H100()",
)


def test_the_instance_of_a_client_that_died_is_deleted_by_its_reaper(
    fake_verda: FakeVerda,
) -> None:
    """Nothing on the instance can delete it (Verda gives it no credential), so the pool's
    reaper, a process beside the client, deletes it once the client is gone, and the
    instance's startup script and the pool's SSH key, as the pool's close would."""
    api = fake_verda
    made: list[dict[str, Any]] = []

    def up(instance: str) -> None:
        body = api.instances[instance].body
        assert body["startup_script_id"] in api.scripts
        assert all(key in api.ssh_keys for key in body["ssh_key_ids"])
        made.append(body)

    job, _ = reaped(
        _CLIENT, (api.client_id, api.client_secret, api.api_url), lambda: _live(api), up
    )
    (body,) = made
    assert body["startup_script_id"] not in api.scripts, "the startup script outlived the pool"
    assert not any(s["name"].startswith(f"skyward-{job}") for s in api.scripts.values())
    assert not set(body["ssh_key_ids"]) & set(api.ssh_keys), "the SSH key outlived the pool"
