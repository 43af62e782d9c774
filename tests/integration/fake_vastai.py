"""A fake of Vast.ai's API for the tests, whose instances are real sshd "machines".

``sky.VastAI`` cannot reach Vast.ai from the tests, so it is tested against this: a local HTTP
server that answers the subset of Vast.ai's REST API v0 (``/api/v0``) that the provider uses,
the way docs.vast.ai documents it: search the market's offers (``POST /bundles/``), rent one
(``PUT /asks/{id}/``), attach an SSH key, show, list and destroy instances. The market is a
list of offer dicts that a test may change. Each instance is a private ``sshd``
(``sshd.start_sshd``) on its own loopback address, 127.0.0.150 upward, so a pool rents through
the API, logs in over SSH, bootstraps and runs workers end to end.

An instance is like a Vast.ai container: nobody logs in until a key is attached to it (its
authorized keys start empty), then as the user running the tests (root, as on Vast.ai). Its
home is its own and short, as ``/root`` is (``$TMPDIR/vast-*``, moved to ``root/<id>/home``
when the fake is left, for a look after the test). ``CONTAINER_ID``, ``VAST_CONTAINERLABEL``,
an instance-scoped ``CONTAINER_API_KEY`` (it shows and destroys that instance only) and the
create's ``env`` variables are in its sessions' environment. Its ``onstart`` is kept in the
create's body and not run: a test of a provider that needs it run must see that fail here.
Destroying or preempting an instance ends every process of it (``_end_machine``), by pid.

The fake is stricter than Vast.ai in two ways: a create with a field it does not know is a
400 naming the field, and so is a search with an operator or top-level key it does not know,
so that a misspelt field fails here instead of being ignored there.
"""

from __future__ import annotations

import json
import operator
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from fake_cloud import (
    MachineCloud,
    Recorded,
    Refused,
    SshAddresses,
    _Answer,
    _is_int,
    _is_text,
    _is_text_map,
    need_root_machines,
    start_machine,
)
from sshd import Machine

FIRST_ADDRESS = 150  # 127.0.0.150; the fake RunPod's pods use 127.0.0.100 upward
FIRST_INSTANCE_ID = 1000
NO_SUCH_ASK = "Instance type no longer available."
DEFAULT_DISK = 10.0  # GB: Vast.ai's when a create names none
RUNTYPES = ("ssh", "ssh_direct", "ssh_proxy", "jupyter", "jupyter_direct", "jupyter_proxy", "args")
_GPU_RAM = {
    "RTX 3090": 24576,
    "RTX 4090": 24564,
    "L40S": 46068,
    "A100 SXM4": 81920,
    "H100 SXM": 81559,
}


def _offer(
    ask_id: int,
    gpu_name: str,
    num_gpus: int,
    dph_total: float,
    min_bid: float,
    *,
    reliability2: float = 0.99,
    verified: bool = True,
    geolocation: str = "US",
) -> dict[str, Any]:
    """One offer of the market as the search answers it (MB of memory, GB of disk)."""
    return {
        "id": ask_id,
        "ask_contract_id": ask_id,
        "machine_id": ask_id - 5000 + 300,
        "gpu_name": gpu_name,
        "num_gpus": num_gpus,
        "gpu_ram": _GPU_RAM[gpu_name],
        "cpu_cores_effective": 8.0 * num_gpus,
        "cpu_ram": 32768 * num_gpus,
        "disk_space": 100.0 * num_gpus,
        "cpu_arch": "amd64",
        "dph_total": dph_total,
        "min_bid": min_bid,
        "reliability2": reliability2,
        "verified": verified,
        "rentable": True,
        "rented": False,
        "geolocation": geolocation,
        "cuda_max_good": 12.8,
    }


DEFAULT_MARKET: tuple[dict[str, Any], ...] = (
    _offer(5001, "RTX 4090", 1, 0.35, 0.20),
    _offer(5002, "RTX 4090", 1, 0.40, 0.22, reliability2=0.90, geolocation="SE"),
    _offer(5003, "RTX 4090", 1, 0.45, 0.25, geolocation="DE"),
    _offer(5004, "RTX 4090", 2, 0.70, 0.40),
    _offer(5005, "A100 SXM4", 1, 1.10, 0.60),
    _offer(5006, "A100 SXM4", 8, 8.80, 4.80),
    _offer(5007, "H100 SXM", 1, 2.20, 1.30),
    _offer(5008, "RTX 3090", 1, 0.20, 0.10, geolocation="CA"),
    _offer(5009, "RTX 4090", 1, 0.25, 0.15, verified=False),
    _offer(5010, "L40S", 1, 0.80, 0.45, geolocation="DE"),
)

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda value, listed: value in listed,
    "notin": lambda value, listed: value not in listed,
}
# Top-level keys of a search that are not filters; disable_bundling and allocated_storage
# change nothing here (every offer is its own, and disk costs nothing extra).
_SEARCH_KEYS = {"type", "order", "limit", "disable_bundling", "allocated_storage"}


def need_fake_vastai() -> None:
    """Skip where the fake's machines cannot run as Vast.ai's do (under CI, fail): without
    sshd, or not as root (Vast.ai's images log in as root, and so does the provider)."""
    need_root_machines(FakeVastAI.title, suite="sky.VastAI", why="log in as root")


@attrs.define
class FakeInstance:
    """An instance the fake created: its create's JSON, its offer as rented, its sshd
    machine and its state (a ``fake_cloud.MachineRecord``: it ends once, destroyed or
    preempted)."""

    id: int
    offer: dict[str, Any]
    body: dict[str, Any]
    machine: Machine
    key: str  # the instance-scoped API key in its CONTAINER_API_KEY
    authorized: Path  # its authorized keys, which attaching a key appends to
    dph_total: float  # what it bills: the offer's price, or the bid
    created_at: float  # time.monotonic()
    ready_at: float  # time.monotonic() after which it is running, with an address
    ended_as: str | None = None  # "exited" once preempted
    intended: str = "running"
    destroyed: bool = False
    running: bool = True

    @property
    def is_bid(self) -> bool:
        return "price" in self.body

    def actual_status(self) -> str | None:
        """None for the first half of its start, "loading" for the second, then "running"
        (or how it ended): Vast.ai shows both before an instance runs."""
        if self.ended_as is not None:
            return self.ended_as
        now = time.monotonic()
        if now >= self.ready_at:
            return "running"
        return "loading" if now >= (self.created_at + self.ready_at) / 2 else None


class _Refused(Refused):
    """A request the fake answers with a 400 (``error``: the code, ``msg``), raised where it
    is found."""

    def __init__(self, msg: str, error: str = "invalid_args") -> None:
        super().__init__(msg, error)


class FakeVastAI(MachineCloud[int, FakeInstance]):
    """Vast.ai's REST API v0 at ``api_url`` on ``127.0.0.1``, with sshd machines for
    instances (``fake_cloud.MachineCloud``: a context manager; leaving it ends every machine,
    by pid, and raises what failed inside the fake)."""

    title = "the fake Vast.ai"
    # How its processes are found to end them: unique to this fake, unlike the id.
    marker = "FAKE_VAST_MACHINE"
    mark_by_directory = True
    closing_code = "unavailable"
    failure_code = "internal"

    def __init__(
        self,
        root: Path,
        *,
        market: Sequence[Mapping[str, Any]] = DEFAULT_MARKET,
        start_delay: float = 0.0,
    ) -> None:
        """``market``: the offers (copied; ``self.market`` may be changed). ``start_delay``:
        seconds after a create during which GET shows the instance not yet running."""
        super().__init__(root)
        self.api_key = "vast_" + secrets.token_hex(16)
        self.market: list[dict[str, Any]] = [dict(offer) for offer in market]
        self.start_delay = start_delay
        self.instances: dict[int, FakeInstance] = {}
        self._failures: list[tuple[str, str]] = []
        self._next_id = FIRST_INSTANCE_ID
        # Not derived from the id: another fake (another test process) may use the same ids,
        # and hold addresses from the same first one now.
        self._addresses = SshAddresses("127.0.0", FIRST_ADDRESS)
        self.api_url = self._listen(self._serve, "fake-vastai") + "/api/v0"

    def _records(self) -> Mapping[int, FakeInstance]:
        return self.instances

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as Vast.ai's API sends it."""
        return _failure(refused.status, refused.code, refused.message)

    # -- what tests do to it ------------------------------------------------------------------

    def live(self) -> list[FakeInstance]:
        """Instances neither destroyed nor exited, in the order they were created."""
        with self._lock:
            return [i for i in self.instances.values() if not i.destroyed and i.ended_as is None]

    def preempt(self, instance_id: int) -> None:
        """Outbid the interruptible instance as Vast.ai's market does: every process of it is
        killed at once, and it stays, exited, until destroyed."""

        def outbid() -> FakeInstance:
            instance = self._live(instance_id)
            if not instance.is_bid:
                raise ValueError(f"instance {instance_id} is on demand: only a bid is outbid")
            instance.ended_as, instance.intended = "exited", "stopped"
            return instance

        self._end_now(outbid, abrupt=True)

    def fail_creates(self, n: int, error: str = "no_such_ask", msg: str | None = None) -> None:
        """The next ``n`` creates with a valid body fail with a 400 of ``error`` (and ``msg``,
        by default the one Vast.ai sends with ``no_such_ask``)."""
        with self._lock:
            self._failures.extend([(error, msg or NO_SUCH_ASK)] * n)

    def _live(self, instance_id: int) -> FakeInstance:
        instance = self.instances.get(instance_id)
        if instance is None or instance.destroyed or instance.ended_as is not None:
            live = [i.id for i in self.instances.values() if not i.destroyed and not i.ended_as]
            raise ValueError(f"no live instance {instance_id!r} (live instances: {live})")
        return instance

    # -- serving ------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        method, path = request.method, request.path
        caller = self._caller(request.headers.get("authorization", ""))
        if caller is None:
            return _failure(401, "invalid_user_key", "Invalid user key")
        route = _route(method, path)
        if route is None:
            return _failure(404, "not_found", f"not found: {method} {path}")
        action, number = route
        if caller != "account" and (action not in ("get", "destroy") or caller != number):
            message = f"this key opens only GET and DELETE of instance {caller}"
            return _failure(403, "forbidden", message)
        unknown = sorted(set(request.query) - ({"owner"} if action == "list" else set()))
        if unknown:
            raise _Refused(f"{unknown[0]}: not a query parameter the fake Vast.ai knows")
        if raw and request.body is None:
            raise _Refused("body: not JSON")
        if action == "search":
            return _Answer(200, {"offers": self._search(request.body)})
        if action == "create":
            return self._create(number, request.body)
        if action == "attach":
            return self._attach(number, request.body)
        if action == "list":
            with self._lock:
                shown = [_json(i) for i in self.instances.values() if not i.destroyed]
            return _Answer(200, {"instances": shown})
        if action == "get":
            with self._lock:
                instance = self.instances.get(number)
                shown_one = None if instance is None or instance.destroyed else _json(instance)
            return _Answer(200, {"instances": shown_one})  # Vast.ai's "no such instance"
        return self._destroy(number)

    def _caller(self, authorization: str) -> Literal["account"] | int | None:
        """Who asks: "account" for the API key, an instance's id for its live key, else None."""
        scheme, _, key = authorization.partition(" ")
        if scheme != "Bearer" or not key:
            return None
        given = key.encode()  # bytes: compare_digest refuses str that is not ASCII
        if secrets.compare_digest(given, self.api_key.encode()):
            return "account"
        with self._lock:
            for instance in self.instances.values():
                if not instance.destroyed and secrets.compare_digest(given, instance.key.encode()):
                    return instance.id
        return None

    # -- the market -------------------------------------------------------------------------------

    def _search(self, body: Any) -> list[dict[str, Any]]:
        """The rentable offers that match every filter, ordered, at most ``limit``."""
        filters = _search_filters(body)
        with self._lock:
            found = [
                dict(offer)
                for offer in self.market
                if offer.get("rentable") is True
                and offer.get("rented") is False
                and all(_matches(offer, field, ops) for field, ops in filters.items())
            ]
        for field, direction in reversed(body.get("order", [])):  # the first key sorts last
            present = [offer for offer in found if offer.get(field) is not None]
            try:
                present.sort(key=lambda offer: offer[field], reverse=direction == "desc")
            except TypeError:
                raise _Refused(f"order: {field} holds values that do not compare") from None
            found = present + [offer for offer in found if offer.get(field) is None]
        limit = body.get("limit")
        return found if limit is None else found[:limit]

    def _offer(self, ask_id: int) -> dict[str, Any] | None:
        return next((offer for offer in self.market if offer.get("id") == ask_id), None)

    # -- instances ------------------------------------------------------------------------------

    def _create(self, ask_id: int, body: Any) -> _Answer:
        # One create at a time, under the lock, sshd start included: leaving the fake then
        # waits for a create in flight, and no machine starts after the fake ended them all.
        with self._lock:
            _check_create(body)
            if self._failures:
                error, msg = self._failures.pop(0)
                return _failure(400, error, msg)
            offer = self._offer(ask_id)
            if offer is None or offer.get("rented") is not False or not offer.get("rentable"):
                return _failure(400, "no_such_ask", NO_SUCH_ASK)
            if "price" in body and body["price"] < offer["min_bid"]:
                message = f"price: the bid {body['price']} is below min_bid {offer['min_bid']}"
                return _failure(400, "bid_too_low", message)
            if body.get("disk", DEFAULT_DISK) > offer["disk_space"]:
                message = f"disk: {body.get('disk', DEFAULT_DISK)} GB asked, the offer has "
                raise _Refused(message + f"{offer['disk_space']} GB")
            dph_total = float(body["price"] if "price" in body else offer["dph_total"])
            instance = self._start_instance(dict(offer), body, dph_total)
            offer["rented"] = True
            self.instances[instance.id] = instance
            return _Answer(200, {"success": True, "new_contract": instance.id})

    def _start_instance(
        self, offer: dict[str, Any], body: dict[str, Any], dph_total: float
    ) -> FakeInstance:
        instance_id = self._next_id
        address = self._addresses.take()
        self._next_id += 1
        key = "vasti_" + secrets.token_hex(16)
        directory = self.root / str(instance_id)
        directory.mkdir(parents=True)
        authorized = directory / "authorized_keys"
        authorized.write_text("")  # keys come with POST /instances/{id}/ssh/
        # Vast.ai exports the create's variables to SSH sessions; keys that are not names
        # ("-p 8080:8080") are docker options, not variables.
        env = {name: value for name, value in body.get("env", {}).items() if _is_name(name)}
        env |= self._marker_env(instance_id) | {
            "CONTAINER_ID": str(instance_id),
            "CONTAINER_API_KEY": key,
            "VAST_CONTAINERLABEL": f"C.{instance_id}",
        }
        machine = start_machine(
            self.root,
            str(instance_id),
            address,
            authorized,
            env=env,
            home="vast-",  # as Vast.ai's /root
        )
        now = time.monotonic()
        return FakeInstance(
            id=instance_id,
            offer=offer,
            body=body,
            machine=machine,
            key=key,
            authorized=authorized,
            dph_total=dph_total,
            created_at=now,
            ready_at=now + self.start_delay,
        )

    def _attach(self, instance_id: int, body: Any) -> _Answer:
        if not isinstance(body, dict) or set(body) != {"ssh_key"}:
            raise _Refused('body: expected {"ssh_key": "<one public key line>"}')
        key = body["ssh_key"]
        if not isinstance(key, str) or not _PUBLIC_KEY.fullmatch(key.strip()):
            raise _Refused(f'ssh_key: expected one line like "ssh-ed25519 AAAA...", got {key!r}')
        with self._lock:
            instance = self.instances.get(instance_id)
            if instance is None or instance.destroyed:
                return _failure(404, "no_such_instance", f"no instance {instance_id}")
            with instance.authorized.open("a") as keys:  # sshd reads it at each login
                keys.write(key.strip() + "\n")
        return _Answer(200, {"success": True})

    def _destroy(self, instance_id: int) -> _Answer:
        """Destroy the instance; its machine ends once this is answered, as the one that
        asked may be inside it (its answer would die with it)."""
        with self._lock:
            instance = self.instances.get(instance_id)
            if instance is None:
                return _failure(404, "no_such_instance", f"no instance {instance_id}")
            if instance.destroyed:
                return _Answer(200, {"success": True})
            instance.destroyed = True
            running, instance.running = instance.running, False
            offer = self._offer(instance.offer["id"])
            if offer is not None:
                offer["rented"] = False
        then = (lambda: self._end(instance, abrupt=False)) if running else None
        return _Answer(200, {"success": True}, then=then)


def _json(instance: FakeInstance) -> dict[str, Any]:
    """The instance as GET shows it: an address and ports only while it runs."""
    status = instance.actual_status()
    machine, offer = instance.machine, instance.offer
    up = status == "running"
    return {
        "id": instance.id,
        "machine_id": offer.get("machine_id"),
        "label": instance.body.get("label"),
        "actual_status": status,
        "intended_status": instance.intended,
        "cur_state": instance.intended,
        "image_uuid": instance.body["image"],
        "gpu_name": offer.get("gpu_name"),
        "num_gpus": offer.get("num_gpus"),
        "gpu_ram": offer.get("gpu_ram"),
        "cpu_cores_effective": offer.get("cpu_cores_effective"),
        "cpu_ram": offer.get("cpu_ram"),
        "geolocation": offer.get("geolocation"),
        "dph_total": instance.dph_total,
        "is_bid": instance.is_bid,
        "public_ipaddr": machine.addr if up else None,
        "ssh_host": machine.addr if up else None,
        "ssh_port": machine.port if up else None,
        "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(machine.port)}]} if up else {},
        "disk_space": instance.body.get("disk", DEFAULT_DISK),
    }


def _failure(status: int, error: str, msg: str) -> _Answer:
    """An error as Vast.ai's API sends it."""
    return _Answer(status, {"success": False, "error": error, "msg": msg})


def _route(method: str, path: str) -> tuple[str, int] | None:
    """(action, ask or instance id; 0 for none) for a request the fake answers, else None.
    Vast.ai's paths end with a slash; one without is taken as well."""
    parts = path.strip("/").split("/")
    if parts[:2] != ["api", "v0"]:
        return None
    rest = parts[2:]
    if rest == ["bundles"]:
        return ("search", 0) if method == "POST" else None
    if rest == ["instances"]:
        return ("list", 0) if method == "GET" else None
    if len(rest) < 2 or not re.fullmatch(r"[0-9]{1,12}", rest[1]):
        return None
    actions = {
        ("asks", "", "PUT"): "create",
        ("instances", "", "GET"): "get",
        ("instances", "", "DELETE"): "destroy",
        ("instances", "ssh", "POST"): "attach",
    }
    if len(rest) > 3:
        return None
    action = actions.get((rest[0], rest[2] if len(rest) == 3 else "", method))
    return None if action is None else (action, int(rest[1]))


# -- the bodies it takes ------------------------------------------------------------------------


def _search_filters(body: Any) -> dict[str, dict[str, Any]]:
    """A search's filters (field -> {operator: value}), once its body is checked."""
    if not isinstance(body, dict):
        raise _Refused("body: expected a JSON object of filters")
    kind = body.get("type", "on-demand")
    if kind not in ("on-demand", "bid"):
        raise _Refused(f'type: expected "on-demand" or "bid", got {json.dumps(kind)}')
    order = body.get("order", [])
    if not isinstance(order, list) or not all(
        isinstance(pair, list)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and pair[1] in ("asc", "desc")
        for pair in order
    ):
        raise _Refused(f'order: expected [[field, "asc" or "desc"], ...], got {json.dumps(order)}')
    limit = body.get("limit")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise _Refused(f"limit: expected an integer >= 1, got {json.dumps(limit)}")
    filters = {field: ops for field, ops in body.items() if field not in _SEARCH_KEYS}
    for field, ops in filters.items():
        if not isinstance(ops, dict) or not ops:
            raise _Refused(f'{field}: expected an operator object like {{"eq": value}}, got {ops}')
        for name, value in ops.items():
            if name not in _OPERATORS:
                known = ", ".join(_OPERATORS)
                raise _Refused(f"{field}: unknown operator {name!r} (known: {known})")
            if name in ("in", "notin") and not isinstance(value, list):
                raise _Refused(f"{field}.{name}: expected a list, got {json.dumps(value)}")
    return filters


def _matches(offer: Mapping[str, Any], field: str, ops: Mapping[str, Any]) -> bool:
    """Whether the offer's ``field`` meets every operator; a field it lacks, or holds null
    in, meets none (as a database's NULL)."""
    value = offer.get(field)
    if value is None:
        return False
    try:
        return all(_OPERATORS[name](value, wanted) for name, wanted in ops.items())
    except TypeError:
        raise _Refused(f"{field}: {json.dumps(value)} does not compare with {ops}") from None


# What a create may hold: each field, its check, and what the check expects.
_CREATE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "client_id": (lambda v: v == "me", '"me"'),
    "image": (_is_text, "a non-empty string"),
    "disk": (lambda v: _is_number(v) and v >= 8, "a number of GB >= 8"),
    "runtype": (lambda v: v in RUNTYPES, "one of " + ", ".join(RUNTYPES)),
    "label": (lambda v: isinstance(v, str), "a string"),
    "env": (_is_text_map, "an object of string values"),
    "onstart": (lambda v: isinstance(v, str), "a string"),
    "price": (lambda v: _is_number(v) and 0.001 <= v <= 128, "USD per hour, 0.001 to 128"),
}
_PUBLIC_KEY = re.compile(r"(ssh|ecdsa|sk)-[a-z0-9@.-]+ [A-Za-z0-9+/]+=*( [^\r\n]*)?")


def _check_create(body: Any) -> None:
    """Refuse a create's body naming its first wrong field."""
    if not isinstance(body, dict):
        raise _Refused("body: expected a JSON object")
    unknown = sorted(set(body) - set(_CREATE_FIELDS))
    if unknown:
        known = ", ".join(sorted(_CREATE_FIELDS))
        raise _Refused(f"{unknown[0]}: not a field the fake Vast.ai knows ({known})")
    if "image" not in body:
        raise _Refused("image: required")
    for field, value in body.items():
        check, expected = _CREATE_FIELDS[field]
        if not check(value):
            raise _Refused(f"{field}: expected {expected}, got {json.dumps(value)}")
    for name, value in body.get("env", {}).items():
        if _is_name(name) and re.search(r'["\\\n\r]', value):  # sshd's SetEnv cannot hold it
            raise _Refused(f"env.{name}: the fake Vast.ai exports no quote, backslash or newline")


def _is_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) is not None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
