"""A fake of Verda's (formerly DataCrunch's) API v1 for the tests, whose instances are real
sshd "machines".

``sky.Verda`` cannot reach Verda from the tests, so it is tested against this: a local HTTP
server that answers the subset of Verda's API (``/v1``) the provider uses, the way Verda's
API reference and its Python SDK show it: an OAuth2 token for a client's id and secret
(``POST /oauth2/token``, grant ``client_credentials``); list instance types, their
availability per location and the locations; register, list and delete SSH keys and
startup scripts (a create answers the new id as a plain JSON string); create, list, get
and delete (``PUT /instances``, action ``delete``) instances. Every request but the
token's carries ``Authorization: Bearer <token>``; errors are ``{"code", "message"}``.

Each instance is a private ``sshd`` (``sshd.start_sshd``) on port 22 of its own loopback
address, 127.5.N.10 upward, N a block of its own to each fake alive on this machine (no
other fake uses 127.5.x.x; an address whose port 22 is taken is skipped), set up as
Verda sets up its Ubuntu images: the create's SSH keys (by id) are authorized for root, and
its startup script runs. Of the script only what installs sshd's host key is understood
here: a here-document written to ``/etc/ssh/ssh_host_ed25519_key`` becomes sshd's host key,
``script_delay`` seconds after the instance first answers with a key of the image's own
(0: from the start), so that a client must wait for the key it made. Its sessions are those
of the user running the tests (root, so that port 22 binds), as on Verda. Its home is short
and its own (``$TMPDIR/verda-*``, moved to ``root/<id>/home`` when the fake is left).
Deleting or killing an instance ends every process of it, by pid, found by a marker that
is a path under the fake's root (``FAKE_VERDA_MACHINE``): unique to this fake, where two
test processes' fakes could share an instance id.

The fake is stricter than Verda: a body with a field it does not know, or without one it
requires, is a 400 naming the field, so that a misspelt field fails here instead of being
ignored there. Where the documentation is silent, the fake decides, and docs/providers.md
lists each such decision as something to verify: a create in a location that does not
have the type available is a 503 ``service_unavailable`` ("No capacity available"); a
killed instance shows ``offline``; a deleted one shows ``deleting`` for ``delete_delay``
seconds, then is not found; a token is refused once ``expire_tokens`` is called.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from fake_cloud import (
    AddressBlocks,
    Checks,
    Failures,
    MachineCloud,
    Recorded,
    Refused,
    SshAddresses,
    _Answer,
    _is_list_of_text,
    _is_text,
    _write_secret,
    check_body,
    need_root_machines,
    start_machine,
)
from sshd import Machine

FIRST_ADDRESS = 10  # 127.5.N.10
LOCATIONS = ("FIN-01", "FIN-02", "ICE-01")
IMAGE = "ubuntu-24.04-cuda-12.8-open-docker"
NO_CAPACITY = "No capacity available"


def _type(name: str, gpu: str, gpus: int, price: str, vcpus: int, ram: int) -> dict[str, Any]:
    """One instance type as ``GET /instance-types`` lists it (prices as text, GB)."""
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
        "instance_type": name,
        "price_per_hour": price,
        "spot_price": f"{float(price) / 3:.3f}",
        "description": f"{gpus}x {gpu}" if gpus else f"{vcpus} vCPUs",
        "cpu": {"description": f"{vcpus} CPU", "number_of_cores": vcpus},
        "gpu": {"description": f"{gpus}x {gpu}" if gpus else "", "number_of_gpus": gpus},
        "memory": {"description": f"{ram}GB RAM", "size_in_gigabytes": ram},
        "gpu_memory": {"description": "", "size_in_gigabytes": 80 * gpus},
        "storage": {"description": "", "size_in_gigabytes": 100},
    }


DEFAULT_TYPES: tuple[dict[str, Any], ...] = (
    _type("1H100.80S.30V", "H100 SXM5 80GB", 1, "2.39", 30, 120),
    _type("1H100.80S.32V", "H100 SXM5 80GB", 1, "2.49", 32, 185),
    _type("8H100.80S.176V", "H100 SXM5 80GB", 8, "19.12", 176, 1480),
    _type("1A100.40S.22V", "A100 SXM4 40GB", 1, "1.29", 22, 120),
    _type("2A100.80S.44V", "A100 SXM4 80GB", 2, "3.78", 44, 240),
    _type("1A10.8V", "A10 24GB", 1, "0.45", 8, 40),  # no such model in sky.accelerators here
    _type("CPU.4V.16G", "", 0, "0.08", 4, 16),
)

#: Which types each location has available (``GET /instance-availability``).
DEFAULT_AVAILABILITY: Mapping[str, Sequence[str]] = {
    "FIN-01": ("1H100.80S.30V", "1A100.40S.22V", "CPU.4V.16G"),
    "FIN-02": ("1H100.80S.30V", "2A100.80S.44V"),
    "ICE-01": ("1H100.80S.32V", "1A10.8V"),
}

#: The third octets N of the fake Verdas' addresses, 127.5.N.x: one each.
_BLOCKS = AddressBlocks()


def need_fake_verda() -> None:
    """Skip where the fake's machines cannot listen on port 22 (``need_root_machines``)."""
    need_root_machines(FakeVerda.title, suite="sky.Verda")


@attrs.define
class FakeInstance:
    """An instance the fake created: its create's JSON, its sshd machine (the one running
    now: a startup script restarts sshd) and its state (a ``fake_cloud.MachineRecord``: it
    ends once, deleted or killed)."""

    id: str
    body: dict[str, Any]
    authorized: Path
    machine: Machine
    ready_at: float  # time.monotonic() after which it is running, with an IP
    host_key: str | None  # what the startup script installs, still to install
    keyed_at: float  # time.monotonic() after which the script has installed it
    status: str = "provisioning"  # then running; offline once killed; deleting once deleted
    deleted_at: float | None = None
    running: bool = True

    @property
    def hostname(self) -> str:
        return str(self.body["hostname"])


class _Refused(Refused):
    """A request the fake answers with an error in Verda's shape."""

    def __init__(self, message: str, code: str = "invalid_request", status: int = 400) -> None:
        super().__init__(message, code, status)


class FakeVerda(MachineCloud[str, FakeInstance]):
    """Verda's API v1 at ``api_url`` on ``127.0.0.1``, with sshd machines for instances
    (``fake_cloud.MachineCloud``: leaving it ends every machine, by pid)."""

    title = "the fake Verda"
    marker = "FAKE_VERDA_MACHINE"
    mark_by_directory = True
    closing_code = "service_unavailable"
    failure_code = "server_error"

    def __init__(
        self,
        root: Path,
        *,
        instance_types: Sequence[Mapping[str, Any]] = DEFAULT_TYPES,
        availability: Mapping[str, Sequence[str]] = DEFAULT_AVAILABILITY,
        start_delay: float = 0.0,
        delete_delay: float = 0.0,
        script_delay: float = 0.0,
    ) -> None:
        """``instance_types``: what ``GET /instance-types`` lists (copied; changeable).
        ``availability``: the types each location has (copied; changeable).
        ``start_delay``: seconds a created instance shows ``provisioning``.
        ``delete_delay``: seconds a deleted instance shows ``deleting``.
        ``script_delay``: seconds its sshd presents the image's own host key before the
        startup script installs the one it carries."""
        super().__init__(root, lock=threading.RLock())
        self.client_id = "verda_fake_id_" + secrets.token_hex(6)
        self.client_secret = "verda_fake_secret_" + secrets.token_hex(16)
        self.instance_types: list[dict[str, Any]] = [copy.deepcopy(dict(t)) for t in instance_types]
        self.availability: dict[str, list[str]] = {k: list(v) for k, v in availability.items()}
        self.start_delay = start_delay
        self.delete_delay = delete_delay
        self.script_delay = script_delay
        self.tokens: set[str] = set()  # those still accepted
        self.tokens_given = 0
        self.ssh_keys: dict[str, dict[str, str]] = {}  # by id
        self.scripts: dict[str, dict[str, str]] = {}  # by id
        self.instances: dict[str, FakeInstance] = {}
        #: (type, location): creates of it there are refused for capacity, though listed.
        self.full: set[tuple[str, str]] = set()
        self._failures = Failures()
        self._addresses = SshAddresses(f"127.5.{_BLOCKS.take()}", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-verda") + "/v1"
        self._threads.append(
            threading.Thread(target=self._run_scripts, name="fake-verda-scripts", daemon=True)
        )

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeInstance]:
        """Instances not deleted (offline ones included: they still bill), in create order."""
        with self._lock:
            return [i for i in self.instances.values() if i.deleted_at is None]

    def fail_creates(
        self,
        n: int,
        *,
        message: str,
        status: int = 402,
        code: str = "insufficient_funds",
        after: int = 0,
    ) -> None:
        """After ``after`` more creates, the next ``n`` with a valid body are refused."""
        with self._lock:
            self._failures.plan(n, _Refused(message, code, status), after=after)

    def expire_tokens(self) -> None:
        """Every token given so far is refused from now on (401), as once it expires."""
        with self._lock:
            self.tokens.clear()

    def kill(self, instance_id: str) -> None:
        """The instance's machine dies at once (every process killed); Verda then shows it
        ``offline`` until it is deleted, and still bills it."""
        self._kill(instance_id, _offline)

    # -- MachineCloud ----------------------------------------------------------------------------

    def _records(self) -> Mapping[str, FakeInstance]:
        return self.instances

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as Verda's API sends it."""
        return _Answer(refused.status, {"code": refused.code, "message": refused.message})

    # -- serving ---------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        method, path = request.method, request.path
        if raw and request.body is None:
            raise _Refused("body: not JSON")
        if request.query:
            raise _Refused(f"{sorted(request.query)[0]}: not a query parameter it knows")
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            raise _Refused(f"not found: {method} {path}", "not_found", 404)
        rest = parts[1:]
        if rest == ["oauth2", "token"] and method == "POST":
            return self._token(request.body)
        given = request.headers.get("authorization", "")
        with self._lock:
            known = given.startswith("Bearer ") and given[7:] in self.tokens
        if not known:
            raise _Refused("Invalid or expired access token", "unauthorized_request", 401)
        return self._route(method, rest, request.body)

    def _token(self, body: Any) -> _Answer:
        _check(body, _TOKEN_FIELDS, required=tuple(_TOKEN_FIELDS))
        if body["grant_type"] != "client_credentials":
            raise _Refused("grant_type: the fake Verda gives client_credentials tokens only")
        good = secrets.compare_digest(
            body["client_id"].encode(), self.client_id.encode()
        ) and secrets.compare_digest(body["client_secret"].encode(), self.client_secret.encode())
        if not good:
            raise _Refused("Invalid client credentials", "unauthorized_request", 401)
        token = secrets.token_hex(24)
        with self._lock:
            self.tokens.add(token)
            self.tokens_given += 1
        return _Answer(
            200,
            {
                "access_token": token,
                "refresh_token": secrets.token_hex(24),
                "scope": "cloud-api-v1",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )

    def _route(self, method: str, rest: list[str], body: Any) -> _Answer:
        if method == "GET" and rest == ["instance-types"]:
            with self._lock:
                return _Answer(200, copy.deepcopy(self.instance_types))
        if method == "GET" and rest == ["instance-availability"]:
            with self._lock:
                shown = [
                    {"location_code": code, "availabilities": list(types)}
                    for code, types in self.availability.items()
                ]
            return _Answer(200, shown)
        if method == "GET" and rest == ["locations"]:
            return _Answer(200, [{"code": c, "name": c, "country_code": c[:2]} for c in LOCATIONS])
        if rest and rest[0] in ("ssh-keys", "scripts"):
            return self._named(method, rest, body)
        if rest == ["instances"] and method == "POST":
            return self._create(body)
        if rest == ["instances"] and method == "PUT":
            return self._action(body)
        if rest == ["instances"] and method == "GET":
            with self._lock:
                shown = [self._json(i) for i in self.instances.values() if self._listed(i)]
            return _Answer(200, shown)
        if len(rest) == 2 and rest[0] == "instances" and method == "GET":
            with self._lock:
                return _Answer(200, self._json(self._instance(rest[1])))
        raise _Refused(f"not found: {method} /v1/{'/'.join(rest)}", "not_found", 404)

    # -- SSH keys and startup scripts ---------------------------------------------------------

    def _named(self, method: str, rest: list[str], body: Any) -> _Answer:
        """``/ssh-keys`` (``{name, key}``) and ``/scripts`` (``{name, script}``)."""
        kind = rest[0]
        store = self.ssh_keys if kind == "ssh-keys" else self.scripts
        field = "key" if kind == "ssh-keys" else "script"
        if len(rest) == 1 and method == "GET":
            with self._lock:
                return _Answer(200, [dict(v) for v in store.values()])
        if len(rest) == 1 and method == "POST":
            _check(body, {"name": _TEXT, field: _TEXT}, required=("name", field))
            made = str(uuid.uuid4())
            with self._lock:
                store[made] = {"id": made, "name": body["name"], field: body[field]}
            return _Answer(201, made)
        if len(rest) == 2 and method == "DELETE":
            with self._lock:
                if rest[1] not in store:
                    raise _Refused(f"{kind[:-1]} {rest[1]} not found", "not_found", 404)
                del store[rest[1]]
            return _Answer(200, {})
        raise _Refused(f"not found: {method} /v1/{'/'.join(rest)}", "not_found", 404)

    # -- instances -------------------------------------------------------------------------------

    def _create(self, body: Any) -> _Answer:
        _check(body, _CREATE_FIELDS, required=_CREATE_REQUIRED)
        # One create at a time, under the lock, sshd start included: leaving the fake then
        # waits for a create in flight, and no machine starts after the fake ended them all.
        with self._lock:
            kind, location = body["instance_type"], body["location_code"]
            if kind not in {t["instance_type"] for t in self.instance_types}:
                raise _Refused(f"instance_type: no instance type {kind!r}")
            if location not in LOCATIONS:
                raise _Refused(f"location_code: no location {location!r}")
            if body["image"] != IMAGE:
                raise _Refused(f"image: no image {body['image']!r}")
            if body.get("is_spot"):
                raise _Refused("is_spot: the fake Verda rents on demand only")
            keys = [self.ssh_keys.get(k) for k in body["ssh_key_ids"]]
            if not keys or None in keys:
                raise _Refused("ssh_key_ids: every id must name one of your SSH keys")
            script = None
            if body.get("startup_script_id") is not None:
                script = self.scripts.get(body["startup_script_id"])
                if script is None:
                    raise _Refused("startup_script_id: no such startup script")
            self._failures.check()
            if kind not in self.availability.get(location, ()) or (kind, location) in self.full:
                raise _Refused(NO_CAPACITY, "service_unavailable", 503)
            instance = self._start(
                body, [k["key"] for k in keys if k], script["script"] if script else ""
            )
            self.instances[instance.id] = instance
            return _Answer(202, instance.id)

    def _start(self, body: dict[str, Any], keys: Sequence[str], script: str) -> FakeInstance:
        address = self._addresses.take()
        instance_id = str(uuid.uuid4())
        directory = self.root / instance_id
        directory.mkdir(parents=True)
        host_key = _script_host_key(script)
        if host_key is not None and self.script_delay <= 0:
            _write_secret(directory / "host_ed25519", host_key)  # start_sshd keeps it
            host_key = None
        authorized = directory / "authorized_keys"
        authorized.write_text("".join(f"{line.strip()}\n" for line in keys))
        now = time.monotonic()
        machine = self._machine(instance_id, address, authorized)
        return FakeInstance(
            id=instance_id,
            body=body,
            authorized=authorized,
            machine=machine,
            ready_at=now + self.start_delay,
            host_key=host_key,
            keyed_at=now + self.start_delay + self.script_delay,
        )

    def _machine(self, instance_id: str, address: str, authorized: Path) -> Machine:
        return start_machine(
            self.root,
            instance_id,
            address,
            authorized,
            port=22,
            env={**self._marker_env(instance_id), "FAKE_VERDA_ID": instance_id},
            home="verda-",  # as /root
        )

    def _run_scripts(self) -> None:
        """Run each startup script once its time has come, until the fake is left."""
        while not self._stopping.wait(0.05):
            with self._lock:
                if self._closed:
                    return
                for instance in list(self.instances.values()):
                    if instance.status == "running" or time.monotonic() >= instance.ready_at:
                        self._run_script(instance)

    def _run_script(self, instance: FakeInstance) -> None:
        """Under the lock: once its time has come, the startup script installs the host key
        it carries and restarts sshd (every process of the old one ended, by pid)."""
        if instance.host_key is None or not instance.running or instance.deleted_at is not None:
            return
        if time.monotonic() < instance.keyed_at:
            return
        key, instance.host_key = instance.host_key, None
        self._end(instance, abrupt=False)
        _write_secret(self.root / instance.id / "host_ed25519", key)
        instance.machine = self._machine(instance.id, instance.machine.addr, instance.authorized)

    def _listed(self, instance: FakeInstance) -> bool:
        """Under the lock: whether the instance is still there (a deleted one, for a while)."""
        return (
            instance.deleted_at is None
            or time.monotonic() < instance.deleted_at + self.delete_delay
        )

    def _instance(self, given: str) -> FakeInstance:
        """Under the lock: the instance of that id, still there."""
        instance = self.instances.get(given)
        if instance is None or not self._listed(instance):
            raise _Refused(f"Instance {given} not found", "not_found", 404)
        return instance

    def _action(self, body: Any) -> _Answer:
        _check(body, _ACTION_FIELDS, required=("action", "id"))
        if body["action"] != "delete":
            raise _Refused(f"action: the fake Verda does only 'delete', not {body['action']!r}")
        ids = [body["id"]] if isinstance(body["id"], str) else list(body["id"])
        ending: list[FakeInstance] = []
        with self._lock:
            for given in ids:
                instance = self._instance(given)
                if instance.deleted_at is not None:
                    raise _Refused(f"Instance {given} is being deleted", "forbidden_action", 403)
                if set(body.get("volume_ids") or ()) - {f"os-{given}"}:
                    raise _Refused("volume_ids: a volume not attached to the instance")
            for given in ids:
                instance = self.instances[given]
                instance.deleted_at = time.monotonic()
                instance.status = "deleting"
                if instance.running:
                    instance.running = False
                    ending.append(instance)
        for instance in ending:
            self._end(instance, abrupt=False)
        return _Answer(
            202, [{"instanceId": i, "action": "delete", "status": "success"} for i in ids]
        )

    def _json(self, instance: FakeInstance) -> dict[str, Any]:
        """Under the lock: the instance as GET shows it (an IP once it runs)."""
        if instance.status == "provisioning" and time.monotonic() >= instance.ready_at:
            instance.status = "running"
        if instance.status == "running":
            self._run_script(instance)
        kind = next(
            t for t in self.instance_types if t["instance_type"] == instance.body["instance_type"]
        )
        up = instance.status in ("running", "offline")
        return {
            "id": instance.id,
            "instance_type": kind["instance_type"],
            "image": instance.body["image"],
            "price_per_hour": float(kind["price_per_hour"]),
            "hostname": instance.hostname,
            "description": instance.body["description"],
            "ip": instance.machine.addr if up else None,
            "status": instance.status,
            "created_at": "2026-11-30T10:00:00.000Z",
            "ssh_key_ids": list(instance.body["ssh_key_ids"]),
            "startup_script_id": instance.body.get("startup_script_id"),
            "location": instance.body["location_code"],
            "cpu": dict(kind["cpu"]),
            "gpu": dict(kind["gpu"]),
            "memory": dict(kind["memory"]),
            "storage": dict(kind["storage"]),
            "gpu_memory": dict(kind["gpu_memory"]),
            "os_volume_id": f"os-{instance.id}",
            "is_spot": False,
        }


def _offline(instance: FakeInstance) -> None:
    """``kill``'s mark: Verda shows a killed instance offline."""
    if instance.deleted_at is not None:
        raise ValueError(f"instance {instance.id} is deleted")
    instance.status = "offline"


# The part of a startup script the fake understands: the host key written from a
# here-document.
_HOST_KEY = re.compile(
    r"cat > /etc/ssh/ssh_host_ed25519_key <<'(?P<end>\w+)'\n(?P<key>.*?)\n(?P=end)\n", re.S
)


def _script_host_key(script: str) -> str | None:
    found = _HOST_KEY.search(script)
    return found["key"] + "\n" if found else None


_TEXT = (_is_text, "a non-empty string")
_TOKEN_FIELDS: Checks = {"grant_type": _TEXT, "client_id": _TEXT, "client_secret": _TEXT}
_CREATE_FIELDS: Checks = {
    "instance_type": _TEXT,
    "image": _TEXT,
    "ssh_key_ids": (lambda v: _is_list_of_text(v) and len(v) > 0, "a list of SSH key ids"),
    "location_code": _TEXT,
    "hostname": (
        lambda v: isinstance(v, str) and re.fullmatch(r"[a-z0-9][a-z0-9-]{0,59}", v) is not None,
        "a hostname (lower case letters, digits and hyphens, at most 60)",
    ),
    "description": (lambda v: isinstance(v, str), "text"),
    "startup_script_id": (lambda v: v is None or _is_text(v), "a startup script's id"),
    "is_spot": (lambda v: isinstance(v, bool), "true or false"),
    "contract": (_is_text, "PAY_AS_YOU_GO, SPOT or LONG_TERM"),
    "pricing": (_is_text, "FIXED_PRICE or DYNAMIC_PRICE"),
}
_CREATE_REQUIRED = (
    "instance_type",
    "image",
    "hostname",
    "description",
    "location_code",
    "ssh_key_ids",
)
_ACTION_FIELDS: Checks = {
    "action": _TEXT,
    "id": (lambda v: _is_text(v) or (_is_list_of_text(v) and len(v) > 0), "an id or a list of ids"),
    "volume_ids": (lambda v: v is None or _is_list_of_text(v), "a list of volume ids"),
    "delete_permanently": (lambda v: isinstance(v, bool), "true or false"),
}


def _check(body: Any, fields: Checks, required: Sequence[str]) -> None:
    """Refuse a body naming its first wrong field."""
    check_body(body, fields, required, title=FakeVerda.title, refused=_Refused)
