"""``sky.Novita`` end to end against a fake Novita (``fake_novita.py``): the provider lists the
GPU products, creates one instance per node whose startup command authorizes the pool's key,
installs a host key made for it and starts sshd, and each instance is a real OpenSSH
``sshd`` on loopback, reached at the port its port 22 is mapped to, that the pool logs in
to, bootstraps and runs workers on. Nothing here reaches Novita; no address but loopback is
contacted.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from clients import (
    across_a_preemption,
    cancel_once,
    lease_client,
    reaped,
    run_sky,
)
from cloud_checks import debug_logged, posted, refuses_bad_settings
from fake_cloud import _pod_processes
from fake_novita import FakeNovita
from procs import is_running
from waiting import wait_until

import skyward as sky
import skyward_trio
from skyward_trio import _novita

pytestmark = pytest.mark.clouds

QUIET = sky.Options(console="silent")
A = sky.accelerators


def provider(api: FakeNovita, **fields: Any) -> sky.Novita:
    return sky.Novita(api_key=api.api_key, api_url=api.api_url, **fields)


@sky.function
def _where() -> dict[str, Any]:
    machine = os.environ["FAKE_NOVITA_MACHINE"]
    return {"node": sky.instance_info().node, "instance": machine.rsplit("/", 1)[-1]}


@sky.function
def _square(x: int) -> int:
    return x * x


def _live(api: FakeNovita) -> set[str]:
    return {instance.id for instance in api.live()}


def _creates(api: FakeNovita, since: int) -> list[dict[str, Any]]:
    """The body of each create sent since ``since``."""
    return [r.body for r in posted(api.requests[since:], "/gpu/instance/create")]


@pytest.fixture
def restocked(fake_novita: FakeNovita) -> Iterator[FakeNovita]:
    """The fake, its capacity as it was once the test is done."""
    try:
        yield fake_novita
    finally:
        fake_novita.capacity.clear()


def test_a_pool_of_two_instances_runs_and_nothing_is_left(
    fake_novita: FakeNovita, tmp_path: Path
) -> None:
    api = fake_novita
    log = tmp_path / "pool.log"
    options = debug_logged(log)
    since = len(api.requests)
    spec = {"accelerator": A.RTX_4090(), "nodes": 2, "options": options}
    with sky.Compute(provider=provider(api), **spec) as pool:
        per_node = _where() @ pool
        assert sorted(_square(x) >> pool for x in range(4)) == [0, 1, 4, 9]
        job = pool.job_id
        live = _live(api)
    assert [r["node"] for r in per_node] == [0, 1]
    assert {r["instance"] for r in per_node} == live
    assert not _live(api) & live, "an instance outlived its pool"
    creates = _creates(api, since)
    # The cheapest RTX 4090 product, one GPU, Skyward's startup command in the image.
    assert [(b["productId"], b["gpuNum"], b["kind"], b["ports"]) for b in creates] == [
        ("p-4090", 1, "gpu", "22/tcp")
    ] * 2
    assert all(b["imageUrl"] == "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime" for b in creates)
    assert all(b["command"] == _novita.startup_command() for b in creates)
    assert all(b["name"].startswith(f"skyward-{job}-") for b in creates)
    assert all("clusterId" not in b for b in creates)
    # Each instance was given a host key of its own.
    host_keys = [{e["key"]: e["value"] for e in b["envs"]}["SKYWARD_HOST_KEY"] for b in creates]
    assert len(set(host_keys)) == 2
    sent = api.requests[since:]
    assert {r.headers.get("authorization") for r in sent} == {f"Bearer {api.api_key}"}
    assert api.api_key not in log.read_text()
    assert api.api_key not in repr(provider(api))


def test_offers_list_each_deployable_product_with_its_price(fake_novita: FakeNovita) -> None:
    by_ref = {o.ref: o for o in sky.offers(provider(fake_novita))}
    # The RTX 3090 (which Skyward does not name) and the L40S Novita cannot deploy now are
    # left out.
    assert set(by_ref) == {"p-4090", "p-4090-b", "p-h100", "p-a100", "p-l40s"}
    h100 = by_ref["p-h100"]
    assert h100.name == "H100 SXM 80GB"
    assert h100.accelerator == A.H100(form_factor="SXM")
    assert (h100.on_demand_price, h100.spot_price) == (pytest.approx(2.56), None)
    assert (h100.vcpus, h100.memory_gb, h100.disk_gb) == (24.0, 240.0, 1000.0)
    assert h100.regions == ("EU-DE-01",)
    assert by_ref["p-a100"].accelerator == A.A100(form_factor="SXM", memory="80GB")
    two = sky.offers(provider(fake_novita), accelerator=A.RTX_4090(count=2))
    assert [(o.ref, o.on_demand_price, o.vcpus) for o in two] == [
        ("p-4090", pytest.approx(0.7), 32.0),
        ("p-4090-b", pytest.approx(0.9), 32.0),
    ]
    german = provider(fake_novita, cluster_id="EU-DE-01")
    found = sky.offers(german, accelerator=A.RTX_4090())
    assert [o.ref for o in found] == ["p-4090-b"]


def test_sky_offers_list_reads_the_key_from_its_shell(
    fake_novita: FakeNovita, tmp_path: Path
) -> None:
    """``sky offers list nv``: the table skyward.toml names, the key from the shell."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.nv]\ntype = "novita"\napi_url = "{fake_novita.api_url}"\n'
    )
    env = {**os.environ, "HOME": str(tmp_path / "home"), "NOVITA_API_KEY": fake_novita.api_key}
    done = run_sky(tmp_path, env, "offers", "list", "nv", "--accelerator", "h100", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"H100 SXM 80GB"}
    assert rows["H100 SXM 80GB"]["on_demand_price"] == pytest.approx(2.56)
    assert fake_novita.api_key not in done.stdout + done.stderr


def test_no_capacity_falls_back_to_the_next_product(restocked: FakeNovita) -> None:
    restocked.capacity["p-4090"] = 0  # sold out between the listing and the create
    since = len(restocked.requests)
    with sky.Compute(provider=provider(restocked), accelerator=A.RTX_4090(), options=QUIET) as pool:
        assert _square(5) >> pool == 25
        (instance,) = restocked.live()
    assert [b["productId"] for b in _creates(restocked, since)] == ["p-4090", "p-4090-b"]
    assert instance.body["productId"] == "p-4090-b"
    assert not restocked.live()


def test_no_capacity_anywhere_says_so(restocked: FakeNovita) -> None:
    restocked.capacity |= {"p-4090": 0, "p-4090-b": 0}
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(sky.ProvisionError, match="no capacity now for any") as raised,
        sky.Compute(provider=provider(restocked), accelerator=A.RTX_4090(), options=options),
    ):
        pytest.fail("a pool came up with no capacity")
    assert "RTX 4090 24GB (400: NOT_ENOUGH_RESOURCE" in str(raised.value)
    assert not restocked.live()


def test_a_balance_refusal_mid_pool_ends_what_started_and_says_the_fix(
    fake_novita: FakeNovita,
) -> None:
    options = sky.Options(console="silent", max_provision_attempts=1)
    fake_novita.fail_creates(
        1, "insufficient balance, please recharge", reason="BALANCE_NOT_ENOUGH", after=1
    )
    with (
        pytest.raises(sky.ProvisionError, match="insufficient balance") as raised,
        sky.Compute(
            provider=provider(fake_novita), accelerator=A.RTX_4090(), nodes=2, options=options
        ),
    ):
        pytest.fail("a pool came up past its balance")
    assert "add credit to the account" in str(raised.value)
    assert not fake_novita.live()


def test_bad_settings_and_a_wrong_key_fail_before_anything_is_created(
    fake_novita: FakeNovita, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fake_novita
    since = len(api.requests)
    monkeypatch.delenv("NOVITA_API_KEY", raising=False)
    refuses_bad_settings(
        provider(api),
        A.L40S,
        cloud="Novita",
        keyless=sky.Novita(api_url=api.api_url),
        key_env="NOVITA_API_KEY",
        wrong=sky.Novita(api_key="sk_WRONGKEY", api_url=api.api_url),
        secret="WRONGKEY",
    )
    with (
        pytest.raises(sky.NoOfferError, match="instances carry at most 8 GPUs, and 16 were"),
        sky.Compute(provider=provider(api), accelerator=A.L40S(count=16), options=QUIET),
    ):
        pytest.fail("a pool came up with 16 GPUs a node")
    assert not _creates(api, since)


def test_a_create_whose_answer_never_came_is_found_by_name(fake_novita: FakeNovita) -> None:
    """An instance of the job's name the pool never heard of is deleted at its close."""
    api = fake_novita
    with sky.Compute(provider=provider(api), accelerator=A.L40S(), options=QUIET) as pool:
        sent = httpx.post(
            f"{api.api_url}/gpu/instance/create",
            json={
                "name": f"skyward-{pool.job_id}-0-99",
                "productId": "p-l40s",
                "gpuNum": 1,
                "rootfsSize": 20,
                "imageUrl": "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime",
                "kind": "gpu",
            },
            headers={"Authorization": f"Bearer {api.api_key}"},
        )
        assert sent.status_code == 200, sent.text
        assert len(api.live()) == 2
    assert not api.live()


def test_a_pool_cancelled_while_instances_start_leaves_none(fake_novita: FakeNovita) -> None:
    fake_novita.start_delay = 5.0  # both instances are still creating when it is cancelled
    since = len(fake_novita.requests)
    try:
        cancel_once(
            lambda: len(_creates(fake_novita, since)) == 2,
            "two instances created",
            provider(fake_novita),
            accelerator=A.L40S(),
            nodes=2,
        )
    finally:
        fake_novita.start_delay = 0.0
    assert len(_creates(fake_novita, since)) == 2
    assert not fake_novita.live()


def test_a_killed_instance_is_replaced_and_its_call_sent_again(fake_novita: FakeNovita) -> None:
    with sky.Compute(provider=provider(fake_novita), accelerator=A.L40S(), options=QUIET) as pool:
        first, second, kinds = across_a_preemption(
            pool, _where, lambda ran: fake_novita.kill(ran["instance"])
        )
    assert second["instance"] != first["instance"]
    assert "InstancePreempted" in kinds or "InstanceDestroyed" in kinds, kinds
    assert not fake_novita.live()  # the exited one was deleted too


_CLIENT = lease_client(
    "sky.Novita(api_key=sys.argv[1], api_url=sys.argv[2])", "sky.accelerators.L40S()"
)


def test_the_instance_of_a_client_that_died_is_deleted_by_its_reaper(
    fake_novita: FakeNovita,
) -> None:
    """Nothing on the instance can end it (Novita gives it no credential), so the pool's
    reaper, a process beside the client, deletes it once the client is gone."""
    api = fake_novita
    reaped(_CLIENT, (api.api_key, api.api_url), lambda: _live(api))
    assert not api.live()


# The command's shells, and the listening sshd (as it titles itself, or before it does).
_CONTAINER = (b"sh\0-c\0", b"/usr/sbin/sshd\0-f\0", b"sshd: /usr/sbin/sshd -f ")


def _container(instance: Any) -> set[int]:
    """The instance's container's own processes: its command's shells and the listening
    sshd they exec, which run as long as the container (not the worker)."""
    found: set[int] = set()
    for pid in _pod_processes(0, f"FAKE_NOVITA_MACHINE={instance.directory}".encode()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid == instance.machine.pid or command.startswith(_CONTAINER):
            found.add(pid)
    return found


class _Mine(Exception):
    """An error of the caller's own, raised in the pool's block."""


def _delete_left(api: FakeNovita, key: str, instance: str) -> None:
    """Delete, with the key that works, the instance a pool's close could not."""
    httpx.post(
        f"{api.api_url}/gpu/instance/delete",
        json={"instanceId": instance},
        headers={"Authorization": f"Bearer {key}"},
    ).raise_for_status()
    wait_until(lambda: instance not in _live(api), "the instance deleted", timeout=30, every=0.2)


def _revoke_key(api: FakeNovita, before: set[str], made: list[str], raising: bool) -> None:
    """In the pool's block: note its instance, revoke the key, and raise if asked to."""
    (instance,) = _live(api) - before
    made.append(instance)
    api.api_key = "sk_revoked"
    if raising:
        raise _Mine("the caller's own")


@pytest.mark.parametrize("raising", [False, True], ids=["closing", "raising"])
def test_a_close_that_cannot_delete_its_instance_says_it_may_still_bill(
    fake_novita: FakeNovita, raising: bool
) -> None:
    """The key stops working mid-pool (revoked in the console): the close cannot delete the
    instance, and raises ``TeardownError`` saying which, that it may still bill, and where
    to look; or, when the block raised, the caller's exception comes out with that as its
    note."""
    api = fake_novita
    key, before, made = api.api_key, _live(api), []
    try:
        with (
            pytest.raises(_Mine if raising else sky.TeardownError) as raised,
            sky.Compute(provider=provider(api), accelerator=A.RTX_4090(), options=QUIET),
        ):
            _revoke_key(api, before, made, raising)
    finally:
        api.api_key = key
    (instance,) = made
    said = "\n".join(raised.value.__notes__) if raising else str(raised.value)
    try:
        if not raising:
            assert isinstance(raised.value, sky.TeardownError)
            assert raised.value.instance_ids == (instance,)
        assert instance in said
        assert "may still bill" in said
        assert "Check Novita's console for instances named skyward-" in said
        assert "Novita refused the API key" in said
    finally:
        _delete_left(api, key, instance)


@pytest.mark.parametrize("face", ["session", "trio"])
def test_a_blocks_own_error_carries_what_its_pools_close_left(
    fake_novita: FakeNovita, face: str
) -> None:
    """``sky.Session`` and the trio face keep the block's own error, as ``sky.Compute``
    does, and never drop what may still bill: it is the error's note."""
    api = fake_novita
    key, before, made = api.api_key, _live(api), []
    spec = {"provider": provider(api), "accelerator": A.RTX_4090(), "options": QUIET}
    try:
        with pytest.raises(_Mine) as raised:
            _IN[face](api, spec, before, made)
    finally:
        api.api_key = key
    (instance,) = made
    said = "\n".join(raised.value.__notes__)
    try:
        assert instance in said
        assert "may still bill" in said
        assert "Check Novita's console for instances named skyward-" in said
    finally:
        _delete_left(api, key, instance)


def _in_a_session(api: FakeNovita, spec: dict[str, Any], before: set[str], made: list[str]) -> None:
    with sky.Session() as session:
        session.compute(**spec)
        _revoke_key(api, before, made, raising=True)


def _in_trio(api: FakeNovita, spec: dict[str, Any], before: set[str], made: list[str]) -> None:
    async def main() -> None:
        async with skyward_trio.Compute(**spec):
            _revoke_key(api, before, made, raising=True)

    trio.run(main)


_IN = {"session": _in_a_session, "trio": _in_trio}


def test_sky_compute_delete_says_what_may_still_bill(
    fake_novita: FakeNovita, tmp_path: Path
) -> None:
    """A pool the server holds, its key revoked: `sky compute delete` says the instance
    may still bill and exits with 1, rather than that its machines are terminated; one the
    server closes by its idle timeout is named by `sky compute list` and `server status`;
    `sky server stop` says what its closes left, once the server is gone, and exits with 1;
    after a server stopped by a signal, the next `sky server start` says it."""
    api = fake_novita
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.nv]\ntype = "novita"\napi_url = "{api.api_url}"\n\n'
        '[pools.g]\nprovider = "nv"\naccelerator = "RTX 4090"\n'
    )
    env = {**os.environ, "HOME": str(tmp_path / "home"), "NOVITA_API_KEY": api.api_key}
    key, before = api.api_key, _live(api)
    first = before
    started = run_sky(tmp_path, env, "server", "start")
    assert started.returncode == 0, started.stderr
    try:
        made = run_sky(tmp_path, env, "compute", "create", "g", timeout=180)
        assert made.returncode == 0, made.stderr
        (instance,) = _live(api) - before
        api.api_key = "sk_revoked"
        try:
            deleted = run_sky(tmp_path, env, "compute", "delete", "g", timeout=180)
        finally:
            api.api_key = key
        assert deleted.returncode == 1, (deleted.stdout, deleted.stderr)
        assert "its machines are terminated" not in deleted.stdout
        assert "could be confirmed ended" in deleted.stderr
        assert instance in deleted.stderr
        assert "may still bill" in deleted.stderr
        assert key not in deleted.stdout + deleted.stderr

        # Closed by the server itself (its idle timeout): `sky compute list` and `sky
        # server status` say what may still bill.
        before = _live(api)
        made = run_sky(tmp_path, env, "compute", "create", "g", "--idle-timeout", "3s")
        assert made.returncode == 0, made.stderr
        (idle,) = _live(api) - before
        api.api_key = "sk_revoked"
        try:
            wait_until(
                lambda: (
                    "pool g was closed by the server"
                    in run_sky(tmp_path, env, "compute", "list").stderr
                ),
                "the idle pool's close to fail",
                timeout=120,
                every=1,
            )
        finally:
            api.api_key = key
        status = run_sky(tmp_path, env, "server", "status")
        assert status.returncode == 0, status.stderr
        assert "not everything it started could be confirmed ended" in status.stderr
        assert idle in status.stderr

        # Closed by `sky server stop`: it says so once the server is gone, and exits with 1.
        before = _live(api)
        made = run_sky(tmp_path, env, "compute", "create", "g")
        assert made.returncode == 0, made.stderr
        (held,) = _live(api) - before
        api.api_key = "sk_revoked"
        try:
            stopped = run_sky(tmp_path, env, "server", "stop", timeout=180)
        finally:
            api.api_key = key
        assert stopped.returncode == 1, (stopped.stdout, stopped.stderr)
        assert "skyward server stopped; closed g" in stopped.stdout
        assert held in stopped.stderr
        assert idle in stopped.stderr  # the idle timeout's, said again

        # Stopped by a signal: the next `sky server start` says what its closes left.
        assert run_sky(tmp_path, env, "server", "start").returncode == 0
        before = _live(api)
        assert run_sky(tmp_path, env, "compute", "create", "g").returncode == 0
        (signalled,) = _live(api) - before
        pid = json.loads((tmp_path / "home" / ".skyward" / "server.json").read_text())["pid"]
        api.api_key = "sk_revoked"
        try:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not is_running(pid), "the server to stop", timeout=120, every=0.2)
        finally:
            api.api_key = key
        again = run_sky(tmp_path, env, "server", "start")
        assert again.returncode == 0, again.stderr
        assert signalled in again.stderr
    finally:
        if run_sky(tmp_path, env, "server", "status").returncode == 0:  # still running
            run_sky(tmp_path, env, "server", "stop", timeout=180)
        for left in _live(api) - first:
            _delete_left(api, key, left)
