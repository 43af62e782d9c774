"""A fake of Google Compute Engine's REST API, its OAuth2 token endpoint, the Cloud Billing
Catalog and each VM's metadata server, for the tests; its VMs are real sshd "machines".

``sky.GCP`` cannot reach Google from the tests, so it is tested against this: a local HTTP
server that answers the subset of Google's APIs the provider uses, the way Google documents
them. ``POST /token``: a service account's RS256 JWT (grant
``urn:ietf:params:oauth:grant-type:jwt-bearer``, form-encoded), its signature checked
against the account's public key, its ``aud`` the token URI, its ``iss`` the account, at
most an hour long; it answers a bearer token (``expires_in``), which tests can expire.
Under ``/compute/v1/projects/{project}``: ``aggregated/machineTypes``,
``aggregated/acceleratorTypes`` and ``aggregated/instances`` (``filter=labels.K=V``), paged
by ``pageToken``; ``zones/{zone}/instances`` insert (strict body), get and delete, each
answering a zone Operation; ``zones/{zone}/operations/{name}`` and ``.../wait``. Under
``/billing/v1/services/6F81-5844-456A/skus``: GPU SKUs with their regions and prices.
Errors are ``{"error": {"code", "message", "status", "errors": [{"reason", ...}]}}``.

Each VM is a private ``sshd`` (``fake_cloud.start_machine``) on port 22 of its own loopback
address 127.8.B.N (no other fake uses 127.8; B is a block per pytest-xdist worker and fake,
N from 10 up, skipping an address whose port 22 is taken), set up as an Ubuntu GCE image
sets itself up at boot: the key of its ``ssh-keys`` metadata and the
``ssh_authorized_keys`` of its cloud-init ``user-data`` (``#cloud-config`` then one JSON
object) are authorized, and ``ssh_keys.ed25519_private`` becomes sshd's host key. Each VM
has its own metadata server on its address (a free port), given to its sessions as
``GCE_METADATA_HOST`` (the name Google's client libraries read): ``Metadata-Flavor:
Google`` required; ``instance/name``, ``instance/zone``, ``project/project-id`` and, when
the VM was given a service account with the compute (or cloud-platform) scope,
``instance/service-accounts/default/token``: a token the API accepts for the project;
``instance/preempted``: ``FALSE`` until ``FakeGCP.preempt_notice``, then ``TRUE``, as
Compute Engine answers once it starts preempting a spot VM, with an ETag per value; a read
with ``wait_for_change=true`` (and ``last_etag``, ``timeout_sec``) is held until the value
differs from that ETag's or ``timeout_sec`` runs out, and answers at once when it differs
already. The VM's metadata reads are kept in ``FakeVM.metadata_requests``.
Deleting or killing a VM ends every process of it, by pid: those whose environment holds
``FAKE_GCP_MACHINE=<its directory under root (named by its id)>``, a marker no other fake
can share.

Capacity is the fake's to say: an insert in a (machine type, zone) of ``exhausted`` answers
an Operation that ends in ``ZONE_RESOURCE_POOL_EXHAUSTED`` (no VM made); ``fail_inserts``
makes the next inserts' Operations end in ``QUOTA_EXCEEDED``. The fake is stricter than
Google: a body field it does not know is a 400 naming it.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fake_cloud import (
    AddressBlocks,
    MachineCloud,
    Recorded,
    Refused,
    SshAddresses,
    _Answer,
    cloud_init,
    need_root_machines,
    start_machine,
)
from sshd import Machine

FIRST_ADDRESS = 10  # 127.8.B.10
_HELD_AT_MOST = 300.0  # seconds a wait_for_change read without timeout_sec is held, at most
PROJECT = "skyward-fake-123"
_PROJECT_NUMBER = "123456789012"
_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/compute",
)


def machine_type(
    name: str, cpus: int, memory_gb: float, gpus: tuple[str, int] | None = None
) -> dict[str, Any]:
    """One machine type as ``machineTypes`` lists it (memory in MB; A2/A3/G2 types list
    their GPUs in ``accelerators``)."""
    listed: dict[str, Any] = {
        "kind": "compute#machineType",
        "id": str(abs(hash(name)) % 10**12),
        "name": name,
        "description": f"{cpus} vCPUs, {memory_gb:g} GB RAM",
        "guestCpus": cpus,
        "memoryMb": int(memory_gb * 1024),
        "maximumPersistentDisks": 128,
        "maximumPersistentDisksSizeGb": "263168",
        "isSharedCpu": False,
    }
    if gpus is not None:
        listed["accelerators"] = [
            {"guestAcceleratorType": gpus[0], "guestAcceleratorCount": gpus[1]}
        ]
    return listed


_N1 = [machine_type(f"n1-standard-{n}", n, n * 3.75) for n in (8, 16, 32, 64)]
_A2_1 = machine_type("a2-highgpu-1g", 12, 85, ("nvidia-tesla-a100", 1))
_A2_2 = machine_type("a2-highgpu-2g", 24, 170, ("nvidia-tesla-a100", 2))
_A3_8 = machine_type("a3-highgpu-8g", 208, 1872, ("nvidia-h100-80gb", 8))
_G2_1 = machine_type("g2-standard-4", 4, 16, ("nvidia-l4", 1))
_G2_2 = machine_type("g2-standard-24", 24, 96, ("nvidia-l4", 2))
_E2 = machine_type("e2-standard-2", 2, 8)


def accelerator_type(name: str, most: int) -> dict[str, Any]:
    return {
        "kind": "compute#acceleratorType",
        "name": name,
        "description": name,
        "maximumCardsPerInstance": most,
    }


#: Each zone's machine types and GPU types.
DEFAULT_MACHINE_TYPES: Mapping[str, list[dict[str, Any]]] = {
    "us-central1-a": [*_N1, _A2_1, _A2_2, _G2_1, _G2_2, _E2],
    "us-central1-b": [*_N1, _G2_1, _E2],
    "us-east1-c": [*_N1, _A3_8, _E2],
    "europe-west4-a": [*_N1, _G2_1, _A2_1, _E2],
}
DEFAULT_ACCELERATOR_TYPES: Mapping[str, list[dict[str, Any]]] = {
    "us-central1-a": [
        accelerator_type("nvidia-tesla-t4", 4),
        accelerator_type("nvidia-tesla-v100", 8),
        accelerator_type("nvidia-tesla-a100", 16),
        accelerator_type("nvidia-l4", 8),
        accelerator_type("ct5lp", 8),  # a TPU: not a GPU Skyward names
    ],
    "us-central1-b": [accelerator_type("nvidia-tesla-t4", 4), accelerator_type("nvidia-l4", 8)],
    "us-east1-c": [accelerator_type("nvidia-tesla-t4", 2), accelerator_type("nvidia-h100-80gb", 8)],
    "europe-west4-a": [
        accelerator_type("nvidia-tesla-p100", 4),
        accelerator_type("nvidia-l4", 8),
        accelerator_type("nvidia-tesla-a100", 16),
    ],
}


def gpu_sku(
    description: str, regions: list[str], usd: float, usage: str = "OnDemand"
) -> dict[str, Any]:
    """One GPU SKU as the Billing Catalog lists it."""
    units, nanos = int(usd), round((usd - int(usd)) * 1e9)
    return {
        "name": f"services/6F81-5844-456A/skus/{secrets.token_hex(6).upper()}",
        "skuId": secrets.token_hex(6).upper(),
        "description": description,
        "category": {
            "serviceDisplayName": "Compute Engine",
            "resourceFamily": "Compute",
            "resourceGroup": "GPU",
            "usageType": usage,
        },
        "serviceRegions": regions,
        "pricingInfo": [
            {
                "summary": "",
                "pricingExpression": {
                    "usageUnit": "h",
                    "displayQuantity": 1,
                    "tieredRates": [
                        {
                            "startUsageAmount": 0,
                            "unitPrice": {
                                "currencyCode": "USD",
                                "units": str(units),
                                "nanos": nanos,
                            },
                        }
                    ],
                    "usageUnitDescription": "hour",
                    "baseUnit": "s",
                    "baseUnitDescription": "second",
                    "baseUnitConversionFactor": 3600,
                },
                "currencyConversionRate": 1,
                "effectiveTime": "2026-11-30T00:00:00Z",
            }
        ],
        "serviceProviderName": "Google",
    }


DEFAULT_SKUS: list[dict[str, Any]] = [
    gpu_sku("Nvidia Tesla T4 GPU running in Americas", ["us-central1", "us-east1"], 0.35),
    gpu_sku(
        "Spot Preemptible Nvidia Tesla T4 GPU running in Americas",
        ["us-central1", "us-east1"],
        0.14,
        "Preemptible",
    ),
    gpu_sku("Nvidia Tesla V100 GPU running in Americas", ["us-central1"], 2.48),
    gpu_sku("Nvidia Tesla P100 GPU running in EMEA", ["europe-west4"], 1.46),
    gpu_sku("Nvidia Tesla A100 GPU running in Americas", ["us-central1"], 2.933908),
    gpu_sku("Nvidia Tesla A100 GPU running in EMEA", ["europe-west4"], 3.2),
    gpu_sku("Nvidia H100 80GB GPU running in Americas", ["us-east1"], 11.06),
    gpu_sku("Nvidia L4 GPU running in Americas", ["us-central1"], 0.56),
    gpu_sku("Nvidia L4 GPU running in EMEA", ["europe-west4"], 0.61),
    gpu_sku(
        "Commitment v1: Nvidia L4 GPU in Americas for 1 Year", ["us-central1"], 0.35, "Commit1Yr"
    ),
    {
        **gpu_sku("N1 Predefined Instance Core running in Americas", ["us-central1"], 0.031611),
        "category": {
            "resourceGroup": "N1Standard",
            "usageType": "OnDemand",
            "resourceFamily": "Compute",
            "serviceDisplayName": "Compute Engine",
        },
    },
]

#: The third octets B of the fake GCPs' addresses, 127.8.B.x: one each (and
#: ``SshAddresses`` skips one held all the same).
_BLOCKS = AddressBlocks()


def need_fake_gcp() -> None:
    """Skip where the fake's machines cannot listen on port 22 (``need_root_machines``)."""
    need_root_machines(FakeGCP.title, suite="sky.GCP")


def service_account_key(
    token_uri: str, *, project: str = PROJECT
) -> tuple[dict[str, str], rsa.RSAPublicKey]:
    """A new service account JSON key (as Google's key files hold it) and its public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    email = f"skyward-test@{project}.iam.gserviceaccount.com"
    key = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }
    return key, private.public_key()


@attrs.define
class FakeVM:
    """A VM the fake made: its insert's body, its zone and machine; ``deleted`` once gone
    (a ``fake_cloud.MachineRecord``; its directory under ``root`` is named by its id)."""

    id: str
    name: str
    zone: str
    body: dict[str, Any]
    directory: Path
    machine: Machine | None = None
    metadata: _MetadataServer | None = None
    ready_at: float = 0.0
    status: str = "PROVISIONING"
    deleted: bool = False
    running: bool = False
    self_deleted: bool = False  # deleted with its own metadata token
    preempted: bool = False  # instance/preempted answers TRUE
    held: int = 0  # wait_for_change reads of instance/preempted held now
    # Each metadata read: its key, its query and the status answered.
    metadata_requests: list[tuple[str, dict[str, str], int]] = attrs.Factory(list)

    def shown_status(self) -> str:
        if self.status == "PROVISIONING" and time.monotonic() >= self.ready_at:
            self.status = "RUNNING"
        return self.status

    def metadata_items(self) -> dict[str, str]:
        items = (self.body.get("metadata") or {}).get("items") or []
        return {i["key"]: i["value"] for i in items}


class _Refused(Refused):
    """A request the fake answers with an error in Google's shape (its ``code`` the
    ``status``, such as ``INVALID_ARGUMENT``; ``reason`` the one of its ``errors``)."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        code: str = "INVALID_ARGUMENT",
        reason: str = "invalid",
    ) -> None:
        super().__init__(message, code, status)
        self.reason = reason


class FakeGCP(MachineCloud[tuple[str, str], FakeVM]):
    """Google's APIs on 127.0.0.1, with sshd machines for VMs (``fake_cloud.MachineCloud``:
    leaving it ends every machine, by pid, and its metadata server)."""

    title = "the fake GCP"
    marker = "FAKE_GCP_MACHINE"
    mark_by_directory = True
    noun = "VM"
    closing_code = "UNAVAILABLE"
    failure_code = "INTERNAL"

    def __init__(
        self,
        root: Path,
        *,
        machine_types: Mapping[str, list[dict[str, Any]]] = DEFAULT_MACHINE_TYPES,
        accelerator_types: Mapping[str, list[dict[str, Any]]] = DEFAULT_ACCELERATOR_TYPES,
        skus: list[dict[str, Any]] = DEFAULT_SKUS,
        page_size: int = 2,
        start_delay: float = 0.0,
    ) -> None:
        super().__init__(root, lock=threading.RLock())
        self.url = self._listen(self._serve, "fake-gcp")
        self.api_url = f"{self.url}/compute/v1"
        self.billing_url = f"{self.url}/billing/v1"
        self.token_uri = f"{self.url}/token"
        self.project = PROJECT
        self.key, self._public = service_account_key(self.token_uri)
        self.machine_types = copy.deepcopy(dict(machine_types))
        self.accelerator_types = copy.deepcopy(dict(accelerator_types))
        self.skus = copy.deepcopy(skus)
        self.page_size = page_size
        self.start_delay = start_delay
        self.tokens: dict[str, float] = {}  # the client's tokens, and when each expires
        self.vm_tokens: dict[str, str] = {}  # each VM's metadata token, to its VM's name
        self.vms: dict[tuple[str, str], FakeVM] = {}  # by (zone, name), deleted ones kept
        self.operations: dict[str, dict[str, Any]] = {}
        #: (machine type, zone) with no room: an insert's Operation ends exhausted.
        self.exhausted: set[tuple[str, str]] = set()
        self._quota_failures = 0
        self._addresses = SshAddresses(f"127.8.{_BLOCKS.take()}", FIRST_ADDRESS)
        # Notified when a VM's instance/preempted changes or its metadata server stops.
        self._metadata_changed = threading.Condition(self._lock)
        self._preemptions: list[threading.Thread] = []  # each ends its VM after the notice

    # -- what tests do to it --------------------------------------------------------------------

    def write_key(self, path: Path, key: Mapping[str, str] | None = None) -> Path:
        path.write_text(json.dumps(dict(key or self.key)))
        return path

    def live(self) -> list[FakeVM]:
        with self._lock:
            return [vm for vm in self.vms.values() if not vm.deleted]

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def fail_inserts(self, n: int) -> None:
        """The next ``n`` inserts' Operations end in ``QUOTA_EXCEEDED``."""
        with self._lock:
            self._quota_failures += n

    def kill(self, zone: str, name: str) -> None:
        """The VM's host dies: every process killed, and the VM shown TERMINATED."""
        self._kill((zone, name), _terminated)

    def preempt_notice(self, zone: str, name: str, seconds: float = 30.0) -> None:
        """Preempt the spot VM as Compute Engine does: its metadata server's
        ``instance/preempted`` answers ``TRUE`` from now on (a held ``wait_for_change``
        read answers at once), and ``seconds`` later (Google's 30 s from the ACPI soft-off
        to the hard stop) every process of it is killed and it is deleted, as its
        ``instanceTerminationAction: DELETE`` says (GET answers 404)."""
        with self._lock:
            vm = self.vms[(zone, name)]
            if not vm.running:
                raise ValueError(f"VM {name} in {zone} is not running")
            if (vm.body.get("scheduling") or {}).get("provisioningModel") != "SPOT":
                raise ValueError(f"VM {name} in {zone} is not a spot VM: it is not preempted")
            vm.preempted = True
            self._metadata_changed.notify_all()
            ending = threading.Thread(
                target=self._preempt, args=((zone, name), seconds), name=f"preempt-{name}"
            )
            self._preemptions.append(ending)
        ending.start()

    def _preempt(self, key: tuple[str, str], seconds: float) -> None:
        if self._stopping.wait(seconds):
            return  # the fake is left: it ends every VM itself

        def deleted() -> FakeVM:
            vm = self.vms[key]
            if not vm.deleted:  # the pool may have deleted it first
                vm.status, vm.deleted = "TERMINATED", True
            return vm

        self._end_now(deleted, abrupt=True)

    # -- MachineCloud ---------------------------------------------------------------------------

    def _records(self) -> Mapping[tuple[str, str], FakeVM]:
        return self.vms

    def _end(self, record: FakeVM, *, abrupt: bool) -> None:
        """End the VM's processes (``MachineCloud._end``), then its metadata server."""
        super()._end(record, abrupt=abrupt)
        self._stop_metadata(record)

    def _end_all(self) -> None:
        with self._lock:
            preemptions = list(self._preemptions)
        for thread in preemptions:  # told to stop by now (_stopping)
            thread.join()
        super()._end_all()
        with self._lock:
            vms = list(self.vms.values())
        for vm in vms:  # a VM that never ran may have one
            self._stop_metadata(vm)

    def _stop_metadata(self, vm: FakeVM) -> None:
        with self._lock:
            server, vm.metadata = vm.metadata, None
            self._metadata_changed.notify_all()  # a held read ends
        if server is not None:
            server.shutdown()
            server.server_close()

    def _refusal(self, refused: Refused) -> _Answer:
        """An error as Google's APIs send it."""
        reason = refused.reason if isinstance(refused, _Refused) else "backendError"
        return _Answer(
            refused.status,
            {
                "error": {
                    "code": refused.status,
                    "message": refused.message,
                    "errors": [{"message": refused.message, "domain": "global", "reason": reason}],
                    "status": refused.code,
                }
            },
        )

    # -- serving --------------------------------------------------------------------------------

    def _answer(self, request: Recorded, raw: bytes) -> _Answer:
        if request.path == "/token" and request.method == "POST":
            return self._token(raw)
        caller = self._caller(request)
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["compute", "v1"] and parts[2:3] == ["projects"] and len(parts) > 4:
            if parts[3] != self.project:
                raise _Refused(
                    f"Permission denied on project {parts[3]}",
                    403,
                    "PERMISSION_DENIED",
                    "forbidden",
                )
            return self._compute(request, parts[4:], caller)
        if parts[:4] == ["billing", "v1", "services", "6F81-5844-456A"] and parts[4:] == ["skus"]:
            if caller is not None:
                raise _Refused(
                    "the VM's token has no billing scope", 403, "PERMISSION_DENIED", "forbidden"
                )
            return self._skus(request.query)
        raise _Refused(f"not found: {request.method} {request.path}", 404, "NOT_FOUND", "notFound")

    def _token(self, raw: bytes) -> _Answer:
        """The OAuth2 token endpoint: a service account's signed JWT for a bearer token."""
        form = urllib.parse.parse_qs(raw.decode(), keep_blank_values=True)
        if form.get("grant_type") != [_JWT_BEARER] or len(form.get("assertion", [])) != 1:
            return _Answer(
                400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
            )
        try:
            header_b64, claims_b64, signature_b64 = form["assertion"][0].split(".")
            header, claims = json.loads(_unb64(header_b64)), json.loads(_unb64(claims_b64))
            self._public.verify(
                _unb64(signature_b64),
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return _Answer(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        except ValueError:
            return _Answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT."})
        now = time.time()
        if header.get("alg") != "RS256" or claims.get("iss") != self.key["client_email"]:
            return _Answer(
                400, {"error": "invalid_grant", "error_description": "Invalid issuer or algorithm."}
            )
        if claims.get("aud") != self.token_uri:
            return _Answer(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT: aud."}
            )
        iat, exp = claims.get("iat"), claims.get("exp")
        if not (
            isinstance(iat, int)
            and isinstance(exp, int)
            and 0 < exp - iat <= 3600
            and iat - 300 <= now < exp
        ):
            return _Answer(
                400,
                {
                    "error": "invalid_grant",
                    "error_description": "Invalid JWT: Token must be a short-lived token "
                    "(60 minutes) and in a "
                    "reasonable timeframe.",
                },
            )
        if not set(str(claims.get("scope", "")).split()) & set(_SCOPES):
            return _Answer(
                400, {"error": "invalid_scope", "error_description": "no Compute Engine scope"}
            )
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = now + 3600
        return _Answer(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _caller(self, request: Recorded) -> str | None:
        """None for the client's token, a VM's name for a VM's own token; refuses others."""
        given = request.headers.get("authorization", "")
        token = given.removeprefix("Bearer ") if given.startswith("Bearer ") else ""
        with self._lock:
            if token in self.vm_tokens:
                return self.vm_tokens[token]
            if self.tokens.get(token, 0) > time.time():
                return None
        raise _Refused(
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
            401,
            "UNAUTHENTICATED",
            "authError",
        )

    def _compute(self, request: Recorded, rest: list[str], caller: str | None) -> _Answer:
        method, query = request.method, request.query
        if caller is not None and not (
            method == "DELETE" and len(rest) == 4 and rest[2] == "instances"
        ):
            raise _Refused(
                "the VM's service account may only delete", 403, "PERMISSION_DENIED", "forbidden"
            )
        if rest[:1] == ["aggregated"] and len(rest) == 2 and method == "GET":
            _known(query, {"pageToken", "filter"})
            return self._aggregated(rest[1], query)
        if rest[:1] != ["zones"] or len(rest) < 3:
            raise _Refused(f"not found: {request.path}", 404, "NOT_FOUND", "notFound")
        zone = rest[1]
        if zone not in self.machine_types:
            raise _Refused(f"Invalid value for field 'zone': '{zone}'. Unknown zone.", 400)
        kind, tail = rest[2], rest[3:]
        if kind == "instances" and not tail and method == "POST":
            _known(query, set())
            return self._insert(zone, request.body)
        if kind == "instances" and len(tail) == 1 and method in ("GET", "DELETE"):
            _known(query, set())
            with self._lock:
                vm = self.vms.get((zone, tail[0]))
                if vm is None or vm.deleted:
                    raise _Refused(
                        f"The resource 'projects/{self.project}/zones/{zone}/instances/"
                        f"{tail[0]}' was not found",
                        404,
                        "NOT_FOUND",
                        "notFound",
                    )
                if method == "GET":
                    return _Answer(200, self._json(vm))
                if caller is not None and caller != vm.name:
                    raise _Refused(
                        "a VM may delete itself only", 403, "PERMISSION_DENIED", "forbidden"
                    )
                vm.deleted, vm.self_deleted = True, caller is not None
                vm.status = "STOPPING"
                running, vm.running = vm.running, False
                operation = self._operation(zone, "delete", vm, done=False)
            return _Answer(
                200, operation, then=(lambda: self._end(vm, abrupt=False)) if running else None
            )
        if kind == "operations" and tail and method in ("GET", "POST"):
            with self._lock:
                operation = self.operations.get(tail[0])
                if operation is None or operation["zone"].rsplit("/", 1)[-1] != zone:
                    raise _Refused(f"operation {tail[0]} not found", 404, "NOT_FOUND", "notFound")
                asked = (tail[1:], method)
                if asked in ((["wait"], "POST"), ([], "GET")):
                    operation["status"], operation["progress"] = "DONE", 100
                    return _Answer(200, dict(operation))
        raise _Refused(f"not found: {method} {request.path}", 404, "NOT_FOUND", "notFound")

    def _aggregated(self, kind: str, query: dict[str, list[str]]) -> _Answer:
        with self._lock:
            if kind == "machineTypes":
                listed = {z: list(t) for z, t in self.machine_types.items()}
            elif kind == "acceleratorTypes":
                listed = {z: list(t) for z, t in self.accelerator_types.items()}
            elif kind == "instances":
                wanted = _label_filter(query.get("filter", [""])[0])
                listed = {z: [] for z in self.machine_types}
                for vm in self.vms.values():
                    labels = vm.body.get("labels") or {}
                    if not vm.deleted and (wanted is None or labels.get(wanted[0]) == wanted[1]):
                        listed[vm.zone].append(self._json(vm))
            else:
                raise _Refused(f"not found: aggregated/{kind}", 404, "NOT_FOUND", "notFound")
        # Pages of page_size zones; a zone with none says so, as Google does.
        zones = sorted(listed)
        start = int(query.get("pageToken", ["0"])[0] or 0)
        page = zones[start : start + self.page_size]
        items = {
            f"zones/{z}": {kind: listed[z]}
            if listed[z]
            else {"warning": {"code": "NO_RESULTS_ON_PAGE"}}
            for z in page
        }
        body: dict[str, Any] = {"kind": f"compute#{kind}AggregatedList", "items": items}
        if start + self.page_size < len(zones):
            body["nextPageToken"] = str(start + self.page_size)
        return _Answer(200, body)

    def _insert(self, zone: str, body: Any) -> _Answer:
        _check_insert(body, zone)
        name = body["name"]
        machine = body["machineType"].rsplit("/", 1)[-1]
        with self._lock:
            types = {t["name"] for t in self.machine_types[zone]}
            if machine not in types:
                raise _Refused(
                    f"Invalid value for field 'resource.machineType': '{body['machineType']}'. "
                    f"Machine type does not exist in zone {zone}.",
                    400,
                )
            existing = self.vms.get((zone, name))
            if existing is not None and not existing.deleted:
                raise _Refused(
                    f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' "
                    "already exists",
                    409,
                    "ALREADY_EXISTS",
                    "alreadyExists",
                )
            error: tuple[str, str] | None = None
            if (machine, zone) in self.exhausted:
                error = (
                    "ZONE_RESOURCE_POOL_EXHAUSTED",
                    f"The zone 'projects/{self.project}/zones/{zone}' does not have enough "
                    "resources available to fulfill the request.  Try a different zone, or "
                    "try again later.",
                )
            elif self._quota_failures:
                self._quota_failures -= 1
                error = (
                    "QUOTA_EXCEEDED",
                    f"Quota 'NVIDIA_GPUS' exceeded.  Limit: 0.0 in region "
                    f"{zone.rsplit('-', 1)[0]}.",
                )
            vm_id = str(secrets.randbelow(10**19))
            vm = FakeVM(
                id=vm_id,
                name=name,
                zone=zone,
                body=copy.deepcopy(body),
                directory=self.root / vm_id,
            )
            if error is not None:
                operation = self._operation(zone, "insert", vm, done=False, error=error)
                return _Answer(200, operation)
            self.vms[(zone, name)] = vm
            vm.directory.mkdir(parents=True)
            # Under the lock, sshd start included: no machine starts after the fake ends them.
            self._boot(vm)
            operation = self._operation(zone, "insert", vm, done=False)
        return _Answer(200, operation)

    def _operation(
        self, zone: str, kind: str, vm: FakeVM, *, done: bool, error: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """Under the lock: a new zone Operation (RUNNING; DONE once asked about again)."""
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(8)}"
        operation: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(secrets.randbelow(10**19)),
            "name": name,
            "zone": f"{self.api_url}/projects/{self.project}/zones/{zone}",
            "operationType": kind,
            "targetLink": f"{self.api_url}/projects/{self.project}/zones/{zone}/instances/"
            + vm.name,
            "targetId": vm.id,
            "status": "DONE" if done else "RUNNING",
            "user": self.key["client_email"],
            "progress": 100 if done else 0,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": f"{self.api_url}/projects/{self.project}/zones/{zone}/operations/{name}",
        }
        if error is not None:
            operation["error"] = {"errors": [{"code": error[0], "message": error[1]}]}
            operation["httpErrorStatusCode"] = 503 if "EXHAUSTED" in error[0] else 403
        self.operations[name] = operation
        return dict(operation)

    def _boot(self, vm: FakeVM) -> None:
        """Under the lock: the VM's machine, set up from its metadata as an Ubuntu GCE image
        sets itself up, with its metadata server."""
        address = self._addresses.take()
        items = vm.metadata_items()
        keys = [
            line.split(":", 1)[1] for line in items.get("ssh-keys", "").splitlines() if ":" in line
        ]
        authorized = cloud_init(vm.directory, items.get("user-data", ""), keys)
        vm.metadata = _MetadataServer(address, functools.partial(self._metadata_answer, vm))
        threading.Thread(
            target=vm.metadata.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        host = f"{address}:{vm.metadata.server_address[1]}"
        try:
            vm.machine = start_machine(
                self.root,
                vm.id,
                address,
                authorized,
                port=22,
                env={**self._marker_env(vm.id), "GCE_METADATA_HOST": host},
                home="gcp-",  # as /root
            )
        except RuntimeError:
            self._stop_metadata(vm)
            raise
        vm.running, vm.ready_at = True, time.monotonic() + self.start_delay

    def _metadata_answer(
        self, vm: FakeVM, path: str, query: dict[str, str], headers: Mapping[str, str]
    ) -> tuple[int, str, str | None]:
        """A VM's metadata server (``Metadata-Flavor: Google`` required): the status, the
        text and the ETag of an answer."""
        key = path.removeprefix("/computeMetadata/v1/")
        status, text, etag = self._metadata_value(vm, key, query, headers)
        with self._lock:
            vm.metadata_requests.append((key, dict(query), status))
        return status, text, etag

    def _metadata_value(
        self, vm: FakeVM, key: str, query: dict[str, str], headers: Mapping[str, str]
    ) -> tuple[int, str, str | None]:
        if headers.get("Metadata-Flavor") != "Google":
            return 403, "Missing Metadata-Flavor:Google header.", None
        unknown = sorted(
            set(query) - {"alt", "recursive", "wait_for_change", "last_etag", "timeout_sec"}
        )
        if unknown:
            return 400, f"unknown query parameter {unknown[0]}", None
        wait = query.get("wait_for_change", "false")
        timeout = query.get("timeout_sec", "")
        if wait not in ("true", "false") or not (timeout == "" or timeout.isdigit()):
            return 400, "wait_for_change: true or false; timeout_sec: a whole number", None
        if key == "instance/preempted":
            with self._lock:
                if wait == "true":
                    # Held until the value differs from last_etag's (at once when it does
                    # already; without one, from the value now), or timeout_sec.
                    last = query.get("last_etag") or _etag(vm.preempted)
                    vm.held += 1
                    self._metadata_changed.wait_for(
                        lambda: _etag(vm.preempted) != last or vm.metadata is None,
                        timeout=float(timeout or _HELD_AT_MOST),
                    )
                    vm.held -= 1
                value = vm.preempted
            return 200, "TRUE" if value else "FALSE", _etag(value)
        if key == "instance/name":
            return 200, vm.name, None
        if key == "instance/zone":
            return 200, f"projects/{_PROJECT_NUMBER}/zones/{vm.zone}", None
        if key == "project/project-id":
            return 200, self.project, None
        if key == "instance/service-accounts/default/token":
            accounts = vm.body.get("serviceAccounts") or []
            scopes = {s for a in accounts for s in a.get("scopes", [])}
            if not scopes & set(_SCOPES):
                return 404, "no service account with a compute scope", None
            token = "ya29.vm-" + secrets.token_urlsafe(24)
            with self._lock:
                self.vm_tokens[token] = vm.name
            return (
                200,
                json.dumps({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
                None,
            )
        return 404, "not found", None

    def _json(self, vm: FakeVM) -> dict[str, Any]:
        """Under the lock: the VM as GET shows it (its external address once RUNNING)."""
        status = vm.shown_status()
        access: dict[str, Any] = {
            "kind": "compute#accessConfig",
            "type": "ONE_TO_ONE_NAT",
            "name": "External NAT",
            "networkTier": "PREMIUM",
        }
        if status == "RUNNING" and vm.machine is not None:
            access["natIP"] = vm.machine.addr
        base = f"{self.api_url}/projects/{self.project}/zones/{vm.zone}"
        return {
            "kind": "compute#instance",
            "id": vm.id,
            "name": vm.name,
            "zone": base,
            "machineType": f"{base}/machineTypes/{vm.body['machineType'].rsplit('/', 1)[-1]}",
            "status": status,
            "labels": dict(vm.body.get("labels") or {}),
            "networkInterfaces": [
                {
                    "network": f"{self.api_url}/projects/{self.project}/global/networks/default",
                    "networkIP": "10.128.0.2",
                    "name": "nic0",
                    "accessConfigs": [access],
                }
            ],
            "guestAccelerators": copy.deepcopy(vm.body.get("guestAccelerators", [])),
            "scheduling": copy.deepcopy(vm.body.get("scheduling", {})),
            "selfLink": f"{base}/instances/{vm.name}",
            "creationTimestamp": _now(),
        }

    def _skus(self, query: dict[str, list[str]]) -> _Answer:
        _known(query, {"pageToken", "currencyCode", "pageSize"})
        start = int(query.get("pageToken", ["0"])[0] or 0)
        with self._lock:
            skus = copy.deepcopy(self.skus)
        size = 4
        body: dict[str, Any] = {"skus": skus[start : start + size], "nextPageToken": ""}
        if start + size < len(skus):
            body["nextPageToken"] = str(start + size)
        return _Answer(200, body)


class _MetadataServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, answer: Any) -> None:
        super().__init__((address, 0), _MetadataHandler)
        self.answer = answer


class _MetadataHandler(BaseHTTPRequestHandler):
    server: _MetadataServer

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        status, text, etag = self.server.answer(url.path, query, self.headers)
        data = text.encode()
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        if etag is not None:
            self.send_header("ETag", etag)
        self.send_header(
            "Content-Type", "application/json" if text.startswith("{") else "application/text"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


_INSERT_FIELDS = {
    "name",
    "machineType",
    "disks",
    "networkInterfaces",
    "metadata",
    "labels",
    "scheduling",
    "serviceAccounts",
    "guestAccelerators",
    "description",
    "tags",
}


def _check_insert(body: Any, zone: str) -> None:
    """Refuse an insert body naming its first wrong field (stricter than Google)."""
    if not isinstance(body, dict):
        raise _Refused("Invalid JSON payload received.", 400)
    unknown = sorted(set(body) - _INSERT_FIELDS)
    if unknown:
        raise _Refused(
            f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.', 400
        )
    for field in ("name", "machineType", "disks", "networkInterfaces"):
        if field not in body:
            raise _Refused(f"Invalid value for field 'resource.{field}': required", 400)
    name = body["name"]
    if not isinstance(name, str) or re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name) is None:
        raise _Refused(
            f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
            "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'",
            400,
        )
    if not str(body["machineType"]).startswith(f"zones/{zone}/machineTypes/"):
        raise _Refused(
            f"Invalid value for field 'resource.machineType': '{body['machineType']}'.", 400
        )
    (disk,) = body["disks"]
    if not disk.get("boot") or not disk.get("initializeParams", {}).get("sourceImage"):
        raise _Refused(
            "Invalid value for field 'resource.disks[0]': a boot disk with a sourceImage", 400
        )
    access = body["networkInterfaces"][0].get("accessConfigs") or []
    if not access or access[0].get("type") != "ONE_TO_ONE_NAT":
        raise _Refused("the fake GCP wants an external address (ONE_TO_ONE_NAT)", 400)
    scheduling = body.get("scheduling") or {}
    gpus = body.get("guestAccelerators") or []
    machine = body["machineType"].rsplit("/", 1)[-1]
    if (gpus or machine.startswith(("a2-", "a3-", "g2-"))) and scheduling.get(
        "onHostMaintenance"
    ) != "TERMINATE":
        raise _Refused(
            "Instances with guest accelerators do not support live migration.",
            400,
            reason="badRequest",
        )
    for accel in gpus:
        if not str(accel.get("acceleratorType", "")).startswith(f"zones/{zone}/acceleratorTypes/"):
            raise _Refused(
                "Invalid value for field 'resource.guestAccelerators[0].acceleratorType': "
                f"'{accel.get('acceleratorType')}'",
                400,
            )
    for item in (body.get("metadata") or {}).get("items") or []:
        if set(item) != {"key", "value"} or not isinstance(item["value"], str):
            raise _Refused(
                "Invalid value for field 'resource.metadata.items': each a key and a string value",
                400,
            )
    for key, value in (body.get("labels") or {}).items():
        if (
            re.fullmatch(r"[a-z][-_a-z0-9]{0,62}", key) is None
            or re.fullmatch(r"[-_a-z0-9]{0,63}", value) is None
        ):
            raise _Refused(f"Invalid value for field 'resource.labels': '{key}'", 400)


def _label_filter(text: str) -> tuple[str, str] | None:
    """``labels.KEY=VALUE`` (spaces and quotes allowed) as (key, value); None for no
    filter; any other filter is refused (the fake knows no more)."""
    if not text:
        return None
    left, eq, right = text.partition("=")
    left = left.strip()
    if not eq or not left.startswith("labels."):
        raise _Refused(
            f"Invalid list filter expression '{text}' (the fake knows labels.K=V only)", 400
        )
    return left.removeprefix("labels."), right.strip().strip('"')


def _known(query: dict[str, list[str]], known: set[str]) -> None:
    unknown = sorted(set(query) - known)
    if unknown:
        raise _Refused(f'Invalid JSON payload received. Unknown name "{unknown[0]}"', 400)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())


def _etag(preempted: bool) -> str:
    """The ETag of an ``instance/preempted`` value (a hash of it, as Google's are)."""
    return hashlib.sha256(b"TRUE" if preempted else b"FALSE").hexdigest()[:16]


def _terminated(vm: FakeVM) -> None:
    """``kill``'s mark: Google shows a VM whose host died TERMINATED."""
    vm.status = "TERMINATED"


def vms_named(api: FakeGCP, prefix: str) -> Iterator[FakeVM]:
    return (vm for vm in api.live() if vm.name.startswith(prefix))
