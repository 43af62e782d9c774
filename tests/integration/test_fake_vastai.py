"""The fake Vast.ai (``fake_vastai.py``) that ``sky.VastAI`` is tested against: its API answers
as docs.vast.ai documents it, and its instances are sshd machines that an attached key logs in
to and that end (every process of them) when destroyed or outbid.

Requests go through httpx, logins through asyncssh as root (as on Vast.ai; the tests run as
root in CI).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import httpx
import pytest
from clients import asyncio_run
from fake_vastai import DEFAULT_MARKET, NO_SUCH_ASK, FakeVastAI, need_fake_vastai
from waiting import wait_until

pytestmark = pytest.mark.clouds

if TYPE_CHECKING:
    from conftest import Processes

IMAGE = "vastai/base-image:cuda-12.4.1-auto"
NO_SUCH = {"success": False, "error": "no_such_ask", "msg": NO_SUCH_ASK}

# Run inside a machine: one request to the fake with the instance's own key; prints the
# status and the body.
INSIDE = """
import os, sys, urllib.error, urllib.request
method, url = sys.argv[1:]
request = urllib.request.Request(url, method=method)
request.add_header("Authorization", "Bearer " + os.environ["CONTAINER_API_KEY"])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
try:
    with opener.open(request, timeout=30) as answer:
        print(answer.status, answer.read().decode(), flush=True)
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode(), flush=True)
"""


@pytest.fixture
def fake_vastai(tmp_path: Path) -> Iterator[FakeVastAI]:
    """A fake Vast.ai whose instances are sshd machines under this test's directory; every
    machine ends with the test."""
    need_fake_vastai()
    with FakeVastAI(tmp_path / "vastai") as api:
        yield api


@pytest.fixture(scope="module")
def client_key() -> asyncssh.SSHKey:
    """The key a client attaches to its instances (``POST /instances/{id}/ssh/``)."""
    return asyncssh.generate_private_key("ssh-ed25519")


def _public(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


def _call(
    api: FakeVastAI, method: str, path: str, *, key: str | None = "account", body: Any = None
) -> httpx.Response:
    """``method`` on ``api_url`` + ``path``, with the API key (``key`` "account"), another
    key, or none; straight to loopback, no proxy."""
    headers = {"Authorization": f"Bearer {api.api_key if key == 'account' else key}"}
    return httpx.request(
        method,
        api.api_url + path,
        headers=headers if key is not None else {},
        json=body,
        trust_env=False,
        timeout=60,
    )


def _ids(api: FakeVastAI, **body: Any) -> list[int]:
    """The ids of the offers a search with ``body`` finds, in the order found."""
    answer = _call(api, "POST", "/bundles/", body=body)
    assert answer.status_code == 200, answer.text
    return [offer["id"] for offer in answer.json()["offers"]]


def _create(api: FakeVastAI, ask: int, **fields: Any) -> int:
    body = {"client_id": "me", "image": IMAGE, "disk": 20, "runtype": "ssh_direct"} | fields
    answer = _call(api, "PUT", f"/asks/{ask}/", body=body)
    assert answer.status_code == 200, answer.text
    instance_id: int = answer.json()["new_contract"]
    return instance_id


def _shown(api: FakeVastAI, instance_id: int) -> dict[str, Any] | None:
    answer = _call(api, "GET", f"/instances/{instance_id}/")
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] | None = answer.json()["instances"]
    return shown


def _attach(api: FakeVastAI, instance_id: int, key: asyncssh.SSHKey) -> None:
    answer = _call(api, "POST", f"/instances/{instance_id}/ssh/", body={"ssh_key": _public(key)})
    assert (answer.status_code, answer.json()) == (200, {"success": True})


def _login(
    shown: dict[str, Any], key: asyncssh.SSHKey, command: str
) -> asyncssh.SSHCompletedProcess:
    """``command`` on the instance GET showed, as root at its ``ssh_host``:``ssh_port`` (any
    host key: the fake's own test; no config or agent of this machine involved)."""

    async def session() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            shown["ssh_host"],
            shown["ssh_port"],
            username="root",
            client_keys=[key],
            known_hosts=None,
            agent_path=None,
            config=[],
            connect_timeout=30,
        ) as connection:
            return await connection.run(command, check=False, timeout=60)

    return asyncio_run(session)


def _detached(shown: dict[str, Any], key: asyncssh.SSHKey) -> int:
    """The pid of a process started over SSH that leaves its session, as a worker does."""
    started = _login(shown, key, "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!")
    assert started.exit_status == 0, started.stderr
    return int(str(started.stdout))


# -- the market ---------------------------------------------------------------------------------


def test_a_search_filters_orders_and_limits_the_rentable_offers(fake_vastai: FakeVastAI) -> None:
    api = fake_vastai
    market = [offer["id"] for offer in DEFAULT_MARKET]
    answer = _call(api, "POST", "/bundles/", body={})
    assert answer.json()["offers"] == list(DEFAULT_MARKET)
    assert _ids(api, verified={"eq": True}) == [i for i in market if i != 5009]  # unverified
    cheapest = [["dph_total", "asc"]]
    assert _ids(api, gpu_name={"eq": "RTX 4090"}, order=cheapest) == [5009, 5001, 5002, 5003, 5004]
    assert _ids(api, gpu_name={"eq": "RTX 4090"}, verified={"eq": True}, order=cheapest) == [
        5001,
        5002,
        5003,
        5004,
    ]
    # A second key orders within the first; the limit cuts after ordering.
    order = [["gpu_name", "desc"], ["dph_total", "desc"]]
    assert _ids(api, num_gpus={"eq": 1}, order=order, limit=3) == [5003, 5002, 5001]
    assert _ids(api, num_gpus={"gte": 2}, order=[["num_gpus", "desc"]]) == [5006, 5004]
    assert _ids(api, dph_total={"gt": 0.35, "lte": 0.8}) == [5002, 5003, 5004, 5010]
    assert _ids(api, dph_total={"lt": 0.35}) == [5008, 5009]
    assert _ids(api, dph_total={"gte": 2.2}) == [5006, 5007]
    assert _ids(api, gpu_name={"in": ["H100 SXM", "L40S"]}) == [5007, 5010]
    assert _ids(api, geolocation={"notin": ["US"]}) == [5002, 5003, 5008, 5010]
    assert _ids(api, gpu_name={"neq": "RTX 4090"}, cpu_arch={"eq": "amd64"}) == [
        5005,
        5006,
        5007,
        5008,
        5010,
    ]
    assert _ids(api, gpu_name={"eq": "RTX 4090"}, reliability2={"gte": 0.95}) == [
        5001,
        5003,
        5004,
        5009,
    ]
    # A field the offers lack matches nothing, whatever the operator.
    assert _ids(api, gpu_nam={"eq": "RTX 4090"}) == []
    assert _ids(api, gpu_nam={"neq": "RTX 4090"}) == []
    assert _ids(api, type="bid", disable_bundling=True, allocated_storage=20, limit=2) == [
        5001,
        5002,
    ]
    # Only what can be rented, whatever the filters say; the market is the test's to change.
    assert _ids(api, rented={"eq": True}) == []
    assert _ids(api, rentable={"eq": False}) == []
    api.market[0]["rentable"] = False
    api.market.append(DEFAULT_MARKET[0] | {"id": 6001, "ask_contract_id": 6001})
    assert _ids(api, gpu_name={"eq": "RTX 4090"}, num_gpus={"eq": 1})[-1] == 6001
    assert 5001 not in _ids(api)


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        ({"gpu_name": {"like": "RTX"}}, "gpu_name: unknown operator 'like' (known: eq, neq, "),
        ({"gpu_name": "RTX 4090"}, 'gpu_name: expected an operator object like {"eq": value}'),
        ({"num_gpus": {}}, "num_gpus: expected an operator object"),
        ({"gpu_name": {"in": "RTX 4090"}}, 'gpu_name.in: expected a list, got "RTX 4090"'),
        ({"gpu_name": {"gt": 5}}, 'gpu_name: "'),
        ({"order": [["dph_total", "up"]]}, 'order: expected [[field, "asc" or "desc"], ...]'),
        ({"order": "dph_total"}, "order: expected"),
        ({"limit": 0}, "limit: expected an integer >= 1, got 0"),
        ({"limit": True}, "limit: expected an integer >= 1, got true"),
        ({"type": "reserved"}, 'type: expected "on-demand" or "bid", got "reserved"'),
    ],
)
def test_a_bad_search_is_a_400_naming_what_is_wrong(
    fake_vastai: FakeVastAI, body: dict[str, Any], msg: str
) -> None:
    answer = _call(fake_vastai, "POST", "/bundles/", body=body)
    assert answer.status_code == 400
    refusal = answer.json()
    assert (refusal["success"], refusal["error"]) == (False, "invalid_args")
    assert refusal["msg"].startswith(msg)


def test_only_the_api_key_in_the_authorization_header_opens_the_api(
    fake_vastai: FakeVastAI,
) -> None:
    api = fake_vastai
    invalid = {"success": False, "error": "invalid_user_key", "msg": "Invalid user key"}
    for answer in (
        _call(api, "GET", "/instances/", key=None),
        _call(api, "GET", "/instances/", key="vast_" + "0" * 32),
        _call(api, "GET", f"/instances/?api_key={api.api_key}", key=None),  # the CLI's old way
        httpx.get(
            f"{api.api_url}/instances/", headers={"Authorization": api.api_key}, trust_env=False
        ),
        _call(api, "PUT", "/asks/5001/", key=None, body={"image": IMAGE}),
    ):
        assert (answer.status_code, answer.json()) == (401, invalid)
    assert api.instances == {}

    assert _call(api, "GET", "/instances/?owner=me").json() == {"instances": []}
    extra = _call(api, "GET", f"/instances/?owner=me&api_key={api.api_key}")
    assert extra.status_code == 400
    assert extra.json()["msg"] == "api_key: not a query parameter the fake Vast.ai knows"
    missing = _call(api, "GET", "/users/current/")
    assert (missing.status_code, missing.json()) == (
        404,
        {"success": False, "error": "not_found", "msg": "not found: GET /api/v0/users/current/"},
    )
    not_json = httpx.post(
        f"{api.api_url}/bundles/",
        content=b"{gpu_name: 1}",
        headers={"Authorization": f"Bearer {api.api_key}"},
        trust_env=False,
    )
    assert (not_json.status_code, not_json.json()["msg"]) == (400, "body: not JSON")


# -- instances ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "msg"),
    [
        ({"imag": IMAGE}, "imag: not a field the fake Vast.ai knows (client_id, disk, env, "),
        ({"args": ["-c", "true"]}, "args: not a field the fake Vast.ai knows"),
        ({"image": None}, "image: required"),
        ({"image": ""}, 'image: expected a non-empty string, got ""'),
        ({"client_id": "you"}, 'client_id: expected "me", got "you"'),
        ({"disk": 4}, "disk: expected a number of GB >= 8, got 4"),
        ({"disk": True}, "disk: expected a number of GB >= 8, got true"),
        ({"disk": 500}, "disk: 500 GB asked, the offer has 100.0 GB"),
        ({"runtype": "ssh_direc"}, "runtype: expected one of ssh, ssh_direct, ssh_proxy, jupyter"),
        ({"env": {"PORT": 22}}, 'env: expected an object of string values, got {"PORT": 22}'),
        ({"env": {"A": 'say "hi"'}}, "env.A: the fake Vast.ai exports no quote, backslash"),
        ({"label": 7}, "label: expected a string, got 7"),
        ({"price": "0.3"}, 'price: expected USD per hour, 0.001 to 128, got "0.3"'),
    ],
)
def test_a_bad_create_is_a_400_naming_the_field(
    fake_vastai: FakeVastAI, fields: dict[str, Any], msg: str
) -> None:
    body = {"client_id": "me", "image": IMAGE} | fields
    body = {name: value for name, value in body.items() if value is not None}
    answer = _call(fake_vastai, "PUT", "/asks/5001/", body=body)
    assert answer.status_code == 400
    refusal = answer.json()
    assert (refusal["success"], refusal["error"]) == (False, "invalid_args")
    assert refusal["msg"].startswith(msg), refusal["msg"]
    assert fake_vastai.instances == {}
    assert 5001 in _ids(fake_vastai)


def test_an_instance_is_a_machine_an_attached_key_logs_in_to_and_destroy_ends(
    fake_vastai: FakeVastAI, client_key: asyncssh.SSHKey, processes: Processes
) -> None:
    api = fake_vastai
    env = {"SECRET": "in the container", "-p 8080:8080": "1"}  # a docker option, not a variable
    instance_id = _create(api, 5001, label="skyward-test", env=env)
    assert instance_id == 1000
    instance = api.instances[instance_id]
    machine = instance.machine
    shown = _shown(api, instance_id)
    assert shown == {
        "id": instance_id,
        "machine_id": DEFAULT_MARKET[0]["machine_id"],
        "label": "skyward-test",
        "actual_status": "running",
        "intended_status": "running",
        "cur_state": "running",
        "image_uuid": IMAGE,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "gpu_ram": 24564,
        "cpu_cores_effective": 8.0,
        "cpu_ram": 32768,
        "geolocation": "US",
        "dph_total": 0.35,
        "is_bid": False,
        "public_ipaddr": "127.0.0.150",
        "ssh_host": "127.0.0.150",
        "ssh_port": machine.port,
        "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(machine.port)}]},
        "disk_space": 20,
    }
    assert _call(api, "GET", "/instances/?owner=me").json() == {"instances": [shown]}

    # Rented: hidden from a search, and not rented twice.
    assert 5001 not in _ids(api)
    for ask in (5001, 4242):
        again = _call(api, "PUT", f"/asks/{ask}/", body={"image": IMAGE})
        assert (again.status_code, again.json()) == (400, NO_SUCH)

    # Nobody logs in before a key is attached; then the key does, and sees the container's
    # variables (the create's too, not its docker options) in its own home.
    with pytest.raises(asyncssh.PermissionDenied):
        _login(shown, client_key, "true")
    bad = _call(api, "POST", f"/instances/{instance_id}/ssh/", body={"ssh_key": "not a key"})
    assert bad.status_code == 400
    assert bad.json()["msg"].startswith('ssh_key: expected one line like "ssh-ed25519 AAAA..."')
    nowhere = _call(api, "POST", "/instances/4242/ssh/", body={"ssh_key": _public(client_key)})
    assert (nowhere.status_code, nowhere.json()["error"]) == (404, "no_such_instance")
    _attach(api, instance_id, client_key)
    answer = _login(shown, client_key, 'echo "$CONTAINER_ID $VAST_CONTAINERLABEL $HOME $SECRET"')
    assert answer.exit_status == 0, answer.stderr
    assert str(answer.stdout).split() == [
        "1000",
        "C.1000",
        str(machine.home),
        "in",
        "the",
        "container",
    ]
    assert str(_login(shown, client_key, "echo $CONTAINER_API_KEY").stdout).strip() == instance.key
    daemon = _detached(shown, client_key)

    gone = _call(api, "DELETE", f"/instances/{instance_id}/")
    assert (gone.status_code, gone.json()) == (200, {"success": True})
    assert _shown(api, instance_id) is None  # Vast.ai's answer for an instance it has not
    wait_until(
        lambda: not processes.is_running(machine.pid) and not processes.is_running(daemon),
        "the machine's processes to end",
        timeout=30,
        every=0.05,
    )
    assert (instance.destroyed, instance.running, api.live()) == (True, False, [])
    assert _call(api, "GET", "/instances/").json() == {"instances": []}
    assert 5001 in _ids(api)  # rentable again
    again = _call(api, "DELETE", f"/instances/{instance_id}/")
    assert (again.status_code, again.json()) == (200, {"success": True})
    never = _call(api, "DELETE", "/instances/4242/")
    assert (never.status_code, never.json()["error"]) == (404, "no_such_instance")

    # What a test of the provider checks: the key travelled in the Authorization header only.
    assert api.requests[0].body == {
        "client_id": "me",
        "image": IMAGE,
        "disk": 20,
        "runtype": "ssh_direct",
        "label": "skyward-test",
        "env": env,
    }
    for request in api.requests:
        assert request.headers["authorization"] == f"Bearer {api.api_key}"
        assert api.api_key not in str([request.path, request.query, request.body])


def test_a_starting_instance_shows_no_address_until_it_runs(
    tmp_path: Path, client_key: asyncssh.SSHKey
) -> None:
    need_fake_vastai()
    with FakeVastAI(tmp_path, start_delay=3.0) as api:
        instance_id = _create(api, 5007)
        _attach(api, instance_id, client_key)  # a key may come before it runs

        def status() -> str | None:
            shown = _shown(api, instance_id)
            assert shown is not None
            if shown["actual_status"] != "running":
                address = [shown[f] for f in ("public_ipaddr", "ssh_host", "ssh_port", "ports")]
                assert address == [None, None, None, {}]
                assert shown["intended_status"] == "running"
            state: str | None = shown["actual_status"]
            return state

        assert status() is None
        wait_until(lambda: status() == "loading", "loading", timeout=30, every=0.05)
        wait_until(lambda: status() == "running", "running", timeout=30, every=0.05)
        shown = _shown(api, instance_id)
        assert shown is not None
        assert str(_login(shown, client_key, "echo $CONTAINER_ID").stdout).strip() == "1000"


def test_a_bid_under_min_bid_is_refused_and_an_outbid_instance_exits(
    fake_vastai: FakeVastAI, client_key: asyncssh.SSHKey, processes: Processes
) -> None:
    api = fake_vastai
    low = _call(api, "PUT", "/asks/5004/", body={"image": IMAGE, "price": 0.39})
    assert (low.status_code, low.json()) == (
        400,
        {
            "success": False,
            "error": "bid_too_low",
            "msg": "price: the bid 0.39 is below min_bid 0.4",
        },
    )
    bid = _create(api, 5004, price=0.4)
    on_demand = _create(api, 5001)
    shown = _shown(api, bid)
    assert shown is not None
    assert (shown["is_bid"], shown["dph_total"], shown["num_gpus"]) == (True, 0.4, 2)
    assert (_shown(api, on_demand) or {})["is_bid"] is False
    _attach(api, bid, client_key)
    daemon = _detached(shown, client_key)

    machine = api.instances[bid].machine
    api.preempt(bid)
    assert not processes.is_running(machine.pid)  # killed when preempt returns
    assert not processes.is_running(daemon)
    exited = _shown(api, bid)
    assert exited is not None
    assert (exited["actual_status"], exited["intended_status"], exited["cur_state"]) == (
        "exited",
        "stopped",
        "stopped",
    )
    assert (exited["public_ipaddr"], exited["ssh_port"], exited["ports"]) == (None, None, {})
    with pytest.raises(ConnectionRefusedError):
        _login(shown, client_key, "true")  # nothing listens there now
    assert [instance.id for instance in api.live()] == [on_demand]
    listed = _call(api, "GET", "/instances/").json()["instances"]
    assert [instance["id"] for instance in listed] == [bid, on_demand]  # until destroyed
    with pytest.raises(ValueError, match=r"no live instance 1000 \(live instances: \[1001\]\)"):
        api.preempt(bid)
    with pytest.raises(ValueError, match="instance 1001 is on demand"):
        api.preempt(on_demand)
    assert _call(api, "DELETE", f"/instances/{bid}/").json() == {"success": True}
    assert _shown(api, bid) is None


def test_fail_creates_refuses_the_next_creates(fake_vastai: FakeVastAI) -> None:
    api = fake_vastai
    api.fail_creates(2)
    for _ in range(2):
        answer = _call(api, "PUT", "/asks/5003/", body={"image": IMAGE})
        assert (answer.status_code, answer.json()) == (400, NO_SUCH)
    bad = _call(api, "PUT", "/asks/5003/", body={"image": IMAGE, "imag": IMAGE})
    assert bad.json()["error"] == "invalid_args"  # a bad body is refused first, and uses none
    api.fail_creates(1, error="insufficient_credit", msg="Your account lacks credit")
    answer = _call(api, "PUT", "/asks/5003/", body={"image": IMAGE})
    assert (answer.status_code, answer.json()) == (
        400,
        {"success": False, "error": "insufficient_credit", "msg": "Your account lacks credit"},
    )
    assert api.instances == {}
    assert _create(api, 5003) == 1000


def test_the_instance_key_shows_and_destroys_its_own_instance_only(
    fake_vastai: FakeVastAI, client_key: asyncssh.SSHKey, processes: Processes
) -> None:
    api = fake_vastai
    first, second = _create(api, 5001), _create(api, 5002)
    _attach(api, first, client_key)
    shown = _shown(api, first)
    assert shown is not None

    def inside(method: str, path: str) -> str:
        """One request from inside the first machine, with its CONTAINER_API_KEY."""
        command = f"python3 -c {shlex.quote(INSIDE)} {method} {api.api_url}{path}"
        answer = _login(shown, client_key, command)
        assert answer.exit_status == 0, answer.stderr
        return str(answer.stdout).strip()

    assert inside("GET", f"/instances/{first}/").startswith('200 {"instances": {"id": 1000,')
    for method, path in (("GET", f"/instances/{second}/"), ("DELETE", f"/instances/{second}/")):
        assert inside(method, path).startswith('403 {"success": false, "error": "forbidden"')
    assert inside("GET", "/instances/").startswith("403 ")
    own, other = api.instances[first].key, api.instances[second].key
    assert _call(api, "DELETE", f"/instances/{first}/", key=other).json() == {
        "success": False,
        "error": "forbidden",
        "msg": "this key opens only GET and DELETE of instance 1001",
    }
    assert _call(api, "PUT", "/asks/5003/", key=own, body={"image": IMAGE}).status_code == 403
    assert [instance.id for instance in api.live()] == [first, second]

    # The machine ends after answering: the session that asked may end before it prints.
    machine = api.instances[first].machine
    command = f"python3 -c {shlex.quote(INSIDE)} DELETE {api.api_url}/instances/{first}/"
    try:
        _login(shown, client_key, command)
    except asyncssh.Error:
        pass  # the connection ended with the machine
    wait_until(
        lambda: not processes.is_running(machine.pid), "the machine to end", timeout=30, every=0.05
    )
    assert _shown(api, first) is None
    assert [instance.id for instance in api.live()] == [second]
    assert _call(api, "GET", f"/instances/{first}/", key=own).status_code == 401  # gone with it
    destroys = [
        (r.path, r.headers["authorization"].removeprefix("Bearer "))
        for r in api.requests
        if r.method == "DELETE"
    ]
    assert destroys == [
        (f"/api/v0/instances/{second}/", own),
        (f"/api/v0/instances/{first}/", other),
        (f"/api/v0/instances/{first}/", own),
    ]


def test_leaving_the_fake_ends_every_machine_and_keeps_their_homes(
    tmp_path: Path, client_key: asyncssh.SSHKey, processes: Processes
) -> None:
    need_fake_vastai()
    with FakeVastAI(tmp_path) as api:
        instances = [_create(api, 5001), _create(api, 5005, price=0.6)]
        _attach(api, instances[0], client_key)
        shown = _shown(api, instances[0])
        assert shown is not None
        daemon = _detached(shown, client_key)
        pids = [api.instances[i].machine.pid for i in instances]
        url = api.api_url
    assert not [pid for pid in [*pids, daemon] if processes.is_running(pid)]
    assert not processes.mentioning(str(tmp_path))  # no sshd of it, nothing else either
    assert all((tmp_path / str(i) / "home").is_dir() for i in instances)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/instances/", trust_env=False)


def test_a_failure_inside_the_fake_is_a_500_and_fails_the_test_on_leaving(tmp_path: Path) -> None:
    need_fake_vastai()
    broken = [{"id": 7, "rentable": True, "rented": False}]  # no disk or price: renting fails
    api = FakeVastAI(tmp_path, market=broken).__enter__()
    answer = _call(api, "PUT", "/asks/7/", body={"image": IMAGE})
    assert answer.status_code == 500
    assert answer.json()["msg"].startswith("the fake Vast.ai failed: PUT /api/v0/asks/7/: KeyError")
    with pytest.raises(AssertionError, match=r"the fake Vast.ai failed:\nPUT /api/v0/asks/7/"):
        api.__exit__(None, None, None)
    assert api.instances == {}
