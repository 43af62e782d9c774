"""Object storage: a small S3-compatible client, ``with sky.storage.S3(...) as s3:``.

A :class:`Storage` is a frozen record of where a bucket store is and how to sign for it.
``with storage as s3`` opens a blocking client; ``async with storage as s3`` opens one for
trio, whose methods are awaited. Both have ``upload``, ``download``, ``ls``, ``exists``
and ``rm``. Requests are signed with AWS Signature Version 4 (which S3, R2, GCS's XML API,
Wasabi and Backblaze B2 all take); files larger than one part go up as a multipart upload
that is aborted if it fails (``resume=True`` keeps it, to be continued), and downloads
land in a temporary file renamed into place, so a failed one leaves nothing half-written.
A request that fails the way stores expect clients to retry (HTTP 429, 500, 502, 503, 504,
or a dropped connection) is sent again, after a pause that grows, up to
``Storage.attempts`` times in all (:data:`RETRY_ATTEMPTS` unless ``tuned``).

It works the same on your machine and inside a function on a node, where the presets
read their keys from the node's environment (``Image(env=...)``).

Layer 1: stdlib and attrs; httpx is imported when a client opens, so importing Skyward on
a node stays light.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import hashlib
import hmac
import inspect
import itertools
import json
import os
import random
import re
import tempfile
import threading
import time
import types
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable, Container, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeAlias, TypeVar, runtime_checkable

import attrs

if TYPE_CHECKING:
    import httpx

__all__ = [
    "GCS",
    "R2",
    "S3",
    "AsyncStorageClient",
    "Backblaze",
    "Credential",
    "EnvKey",
    "Hyperstack",
    "HyperstackKeys",
    "IssuedKey",
    "KeyIssuer",
    "Progress",
    "Storage",
    "StorageClient",
    "StorageError",
    "Wasabi",
]

_T = TypeVar("_T")

#: A key, or a function that returns one (awaitable for ``async with`` only).
Credential: TypeAlias = "str | Callable[[], str | Awaitable[str]]"

#: Called as a transfer goes with ``(bytes done, bytes in all)``: ``(0, total)`` first and
#: ``(total, total)`` once all are there.
Progress: TypeAlias = "Callable[[int, int], object]"

#: The default ``Storage.part_size``: files larger than this go up (and objects larger
#: than this come down) in parts of this size (S3 takes 5 MiB .. 5 GiB per part).
PART_SIZE = 64 * 1024 * 1024
#: Parts of one upload or download in flight at once. An upload holds each in memory.
PARTS_IN_FLIGHT = 4
#: How many times a request is sent before its failure is final, the first time included.
RETRY_ATTEMPTS = 5
#: Seconds: the pause before the second attempt is a random one up to this, and each
#: later pause may be twice as long as the one before ("full jitter"), up to
#: :data:`RETRY_MAX_DELAY`.
RETRY_BASE_DELAY = 0.5
#: Seconds: the longest pause between two attempts, one a ``Retry-After`` header asks included.
RETRY_MAX_DELAY = 20.0
# The answers a store gives when trying again later may work: throttled (429, S3's
# SlowDown is a 503), or failed on its side (InternalError is a 500, 502, 504).
_TRANSIENT = frozenset({429, 500, 502, 503, 504})
# Every other answer: what a request accepts when any answer but a transient one will do.
_FINAL = frozenset(range(100, 600)) - _TRANSIENT
_PAGE = 1000  # keys per ListObjectsV2 page (and parts per ListParts page), S3's own most
#: Where ``upload(..., resume=True)`` records the multipart uploads it keeps: one file
#: for each store, bucket and key (see :class:`_KeptUpload`).
UPLOAD_RECORDS = "~/.skyward/uploads"
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


_MIB = 1024 * 1024
# The transfer settings a Storage takes: (field, least, most, an example).
_TUNINGS = (
    ("part_size", 5 * _MIB, 5 * 1024 * _MIB, "256 * 1024 * 1024"),
    ("parts_in_flight", 1, 64, "16"),
    ("attempts", 1, 20, "10"),
)


class StorageError(RuntimeError):
    """A request the object store refused or could not answer.

    Attributes:
        status: The HTTP status, or None when no answer came.
        code: The store's error code (``"NoSuchBucket"``, ``"AccessDenied"``), or "".
    """

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _check_credential(record: str, arg: str, value: object) -> None:
    if value is not None and not isinstance(value, str) and not callable(value):
        raise TypeError(
            f"{record}({arg}=...): a key is a str or a function returning one, got "
            f"{type(value).__qualname__}"
        )


@attrs.frozen(kw_only=True)
class Storage:
    """An S3-compatible object store.

    Attributes:
        endpoint: The store's URL, e.g. ``"https://s3.us-east-1.amazonaws.com"``.
        access_key: The access key id, or a function returning it; None reads
            ``AWS_ACCESS_KEY_ID`` when a client opens.
        secret_key: The secret key, or a function returning it; None reads
            ``AWS_SECRET_ACCESS_KEY``. Never shown in reprs or logs.
        path_style: Address buckets as ``endpoint/bucket/key`` rather than
            ``bucket.endpoint/key`` (needed by most stores that are not AWS itself).
        region: The region requests are signed for (``"auto"`` for R2 and GCS).
        key_issuer: Where a key pair is made for each use and deleted after it (a
            :class:`KeyIssuer`, e.g. ``sky.storage.Hyperstack``'s), in place of
            ``access_key`` and ``secret_key``.
        part_size: Bytes: files larger than this go up, and objects larger than this come
            down, in parts of this size (5 MiB to 5 GiB, as S3 takes).
        parts_in_flight: Parts of one transfer moving at once (1 to 64); an upload holds
            each in memory.
        attempts: How many times a request is sent before its failure is final, the
            first time included (1 to 20).
    """

    endpoint: str
    access_key: Credential | None = attrs.field(default=None, repr=False)
    secret_key: Credential | None = attrs.field(default=None, repr=False)
    path_style: bool = False
    region: str = "us-east-1"
    key_issuer: KeyIssuer | None = None
    part_size: int = PART_SIZE
    parts_in_flight: int = PARTS_IN_FLIGHT
    attempts: int = RETRY_ATTEMPTS

    def __attrs_post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.endpoint) if isinstance(self.endpoint, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"Storage(endpoint={self.endpoint!r}): endpoint must be an http(s) URL. "
                'Pass e.g. endpoint="https://s3.us-east-1.amazonaws.com".'
            )
        _check_credential("Storage", "access_key", self.access_key)
        _check_credential("Storage", "secret_key", self.secret_key)
        if not isinstance(self.path_style, bool):
            raise TypeError(f"Storage(path_style={self.path_style!r}): path_style is True or False")
        if not isinstance(self.region, str) or not self.region:
            raise ValueError(
                f'Storage(region={self.region!r}): pass the signing region, e.g. "us-east-1"'
            )
        for name, low, high, example in _TUNINGS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"Storage({name}={value!r}): {name} is a whole number from {low} to "
                    f"{high}, e.g. {example}"
                )
        if self.key_issuer is not None and not isinstance(self.key_issuer, KeyIssuer):
            raise TypeError(
                f"Storage(key_issuer={self.key_issuer!r}): a key issuer has issue(), "
                "revoke(key) and secrets() (see sky.storage.KeyIssuer)"
            )
        if self.key_issuer is not None and (
            self.access_key is not None or self.secret_key is not None
        ):
            raise ValueError(
                "Storage(key_issuer=...) makes the keys: pass no access_key or secret_key"
            )

    if not TYPE_CHECKING:  # kept from mypy, which would otherwise allow any attribute

        def __getattr__(self, name: str) -> NoReturn:
            # Only for names no attribute has: `storage.upload(...)` without `with`.
            if name in _CLIENT_METHODS:
                raise AttributeError(
                    f"Storage has no {name}(): a Storage says where a store is; its client "
                    f"has {name}(). Open the client with `with`: "
                    f'`with sky.storage.S3(region="us-east-1") as s3: s3.{name}(...)` '
                    f"(in trio, `async with ... as s3: await s3.{name}(...)`).",
                    name=name,
                    obj=self,
                )
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self
            )

    def tuned(
        self,
        *,
        part_size: int | None = None,
        parts_in_flight: int | None = None,
        attempts: int | None = None,
    ) -> Storage:
        """This store with other transfer settings (those not given stay as they are):
        ``sky.storage.S3(region="us-east-1").tuned(parts_in_flight=16)``."""
        return attrs.evolve(
            self,
            part_size=self.part_size if part_size is None else part_size,
            parts_in_flight=self.parts_in_flight if parts_in_flight is None else parts_in_flight,
            attempts=self.attempts if attempts is None else attempts,
        )

    def __enter__(self) -> StorageClient:
        issued = None
        if self.key_issuer is not None:
            issued = self.key_issuer.issue()
            keys = (issued.access_key, issued.secret_key)
        else:
            keys = _keys(self, awaitable=False)
        client = StorageClient(self, keys)
        client._open()
        _push(self, (client, issued))
        return client

    def __exit__(self, *exc: object) -> None:
        client, issued = _pop(self)
        try:
            client.close()
        finally:
            if issued is not None:
                assert self.key_issuer is not None
                self.key_issuer.revoke(issued)

    async def __aenter__(self) -> AsyncStorageClient:
        import trio

        issued = None
        if self.key_issuer is not None:
            issued = await trio.to_thread.run_sync(self.key_issuer.issue)
            keys = (issued.access_key, issued.secret_key)
        else:
            keys = await resolved_keys(self)
        client = AsyncStorageClient(self, keys)
        client._open()
        _push(self, (client, issued))
        return client

    async def __aexit__(self, *exc: object) -> None:
        import trio

        client, issued = _pop(self)
        try:
            await client.aclose()
        finally:
            if issued is not None:
                assert self.key_issuer is not None
                with trio.CancelScope(shield=True):  # a key left behind is a credential
                    await trio.to_thread.run_sync(self.key_issuer.revoke, issued)


# A frozen record holds no state: the clients `with storage` opened are kept by record, per
# thread or trio task (a context variable), so the same record may be entered in several
# at once, and nested, and each exit closes the client its own enter opened.
_OPEN: contextvars.ContextVar[Mapping[int, tuple[Any, ...]]] = contextvars.ContextVar(
    "skyward_storage_clients", default=types.MappingProxyType({})
)


def _push(storage: Storage, client: Any) -> None:
    opened = dict(_OPEN.get())
    opened[id(storage)] = (*opened.get(id(storage), ()), client)
    _OPEN.set(opened)


def _pop(storage: Storage) -> Any:
    opened = dict(_OPEN.get())
    *rest, client = opened.pop(id(storage))
    if rest:
        opened[id(storage)] = tuple(rest)
    _OPEN.set(opened)
    return client


async def resolved_keys(storage: Storage) -> tuple[str, str]:
    """``(access key, secret key)`` of ``storage``: given, returned by its functions
    (awaited when they return an awaitable), or read from the environment. Not for a
    storage with a ``key_issuer`` (its keys are made for each use)."""
    assert storage.key_issuer is None
    keys = _keys(storage, awaitable=True)
    access, secret = [await k if inspect.isawaitable(k) else k for k in keys]
    return str(access), str(secret)


def _keys(storage: Storage, *, awaitable: bool) -> tuple[Any, Any]:
    found = []
    for arg, given, env in (
        ("access_key", storage.access_key, "AWS_ACCESS_KEY_ID"),
        ("secret_key", storage.secret_key, "AWS_SECRET_ACCESS_KEY"),
    ):
        value = _credential(given, env)
        if value is None:
            raise ValueError(
                f"Storage({arg}=None) and {env} is not set: pass {arg}=..., or set {env} "
                "(on a node: Image(env=...))"
            )
        if not awaitable:
            _no_awaitable(
                value,
                f"Storage({arg}=...): its function returned an awaitable; use `async with` "
                "(trio), or pass a function that returns the key",
            )
        found.append(value)
    return found[0], found[1]


def _credential(given: Credential | None, env: str) -> Any:
    """A key as given, or as its function returns it (maybe an awaitable), or, for None,
    the variable ``env``; None when there is none."""
    value: Any = given() if callable(given) else given
    return os.environ.get(env) if value is None else value


def _no_awaitable(value: Any, refusal: str) -> None:
    """Raise TypeError(``refusal``) if ``value`` is an awaitable (a coroutine is closed)."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # never to be awaited: say so to Python, not just to the user
        raise TypeError(refusal)


@attrs.frozen
class EnvKey:
    """A key read from the environment variable ``name`` when it is needed (a
    ``Credential``): how ``skyward.toml`` names a storage's keys without holding them."""

    name: str

    def __call__(self) -> str:
        value = os.environ.get(self.name)
        if value is None:
            raise ValueError(
                f"Storage key: the variable {self.name} (named in skyward.toml) is not set; "
                f"export {self.name}=... in the shell that opens the pool"
            )
        return value


# --- presets --------------------------------------------------------------------------------

# An AWS region: "us-east-1", "eu-west-2", "ap-southeast-1", "us-gov-west-1", "cn-north-1".
_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
# One label of a host name: a preset puts the region (or R2's account id) in its URL.
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


def _check_label(preset: str, arg: str, value: object, *, example: str, what: str) -> None:
    """Refuse a ``value`` the preset could not put in its endpoint's host name: one that
    is not a str, or not one label (``"us east"``, ``"https://..."``, ``""``)."""
    _check_type(preset, arg, value, example=example)
    assert isinstance(value, str)
    if not _LABEL.fullmatch(value):
        raise ValueError(
            f"{preset}({arg}={value!r}): {arg} must be {what}: letters, digits and '-', as "
            f'it goes in the store\'s host name. Pass e.g. {arg}="{example}".'
        )


def _check_type(preset: str, arg: str, value: object, *, example: str) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{preset}({arg}={value!r}): {arg} must be a str, got {type(value).__qualname__}. "
            f'Pass e.g. {arg}="{example}".'
        )


def _check_aws_region(region: str) -> None:
    if _AWS_REGION.fullmatch(region):
        return
    fix = 'Pass e.g. region="us-east-1"'
    if _AWS_REGION.fullmatch(region.lower()):
        fix = f'Pass region="{region.lower()}"'
    raise ValueError(
        f'S3(region={region!r}): not an AWS region; they read like "us-east-1", '
        f'"eu-west-2" or "ap-southeast-1". {fix}, or for another S3-compatible store its '
        "URL as endpoint= (the region is then any name the store signs for)."
    )


def S3(
    *,
    region: str = "us-east-1",
    access_key: Credential | None = None,
    secret_key: Credential | None = None,
    endpoint: str | None = None,
) -> Storage:
    """Amazon S3 in ``region``; keys from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    unless given. ``endpoint`` points it elsewhere (an S3-compatible store, path style)."""
    _check_type("S3", "region", region, example="us-east-1")
    if endpoint is not None:
        # Another store's regions are its own ("garage", "fr-par"): only a str is asked.
        return _path_style(endpoint, access_key, secret_key, region)
    _check_aws_region(region)
    return Storage(
        endpoint=f"https://s3.{region}.amazonaws.com",
        access_key=access_key,
        secret_key=secret_key,
        region=region,
    )


def R2(*, account_id: str, access_key: Credential, secret_key: Credential) -> Storage:
    """Cloudflare R2 of ``account_id`` (the 32-character hex id on Cloudflare's dashboard)."""
    _check_label(
        "R2",
        "account_id",
        account_id,
        example="0123456789abcdef0123456789abcdef",
        what="the account id on Cloudflare's dashboard, not a URL",
    )
    return _path_style(f"https://{account_id}.r2.cloudflarestorage.com", access_key, secret_key)


def GCS(*, access_key: Credential, secret_key: Credential) -> Storage:
    """Google Cloud Storage through its XML API, with HMAC keys."""
    return _path_style("https://storage.googleapis.com", access_key, secret_key)


def Wasabi(*, region: str, access_key: Credential, secret_key: Credential) -> Storage:
    """Wasabi in ``region``."""
    _check_label("Wasabi", "region", region, example="eu-central-1", what="a Wasabi region")
    return _path_style(f"https://s3.{region}.wasabisys.com", access_key, secret_key, region)


def Backblaze(*, region: str, key_id: Credential, app_key: Credential) -> Storage:
    """Backblaze B2's S3-compatible API in ``region`` (e.g. ``"us-west-004"``)."""
    _check_label("Backblaze", "region", region, example="us-west-004", what="a B2 region")
    return _path_style(f"https://s3.{region}.backblazeb2.com", key_id, app_key, region)


#: The S3 endpoints of Hyperstack's object storage, by region, that Skyward knows.
HYPERSTACK_ENDPOINTS: Mapping[str, str] = types.MappingProxyType(
    {"CANADA-1": "https://ca1.obj.nexgencloud.io"}
)
#: The region ``Volume(storage=None)`` on ``sky.Hyperstack`` mounts a bucket of.
HYPERSTACK_STORAGE_REGION = "CANADA-1"
HYPERSTACK_API_URL = "https://infrahub-api.nexgencloud.com/v1"
_HYPERSTACK_KEY_ENV = "HYPERSTACK_API_KEY"  # as sky.Hyperstack reads it


def Hyperstack(
    *,
    region: str,
    api_key: Credential | None = None,
    endpoint: str | None = None,
    api_url: str = HYPERSTACK_API_URL,
) -> Storage:
    """Hyperstack's object storage in ``region`` (``"CANADA-1"``), through your Hyperstack
    API key (None reads ``HYPERSTACK_API_KEY``): each use gets an access key of its own,
    made through Hyperstack's API and deleted after it (a ``with`` block; a pool's
    volumes, until the pool closes). ``endpoint`` is the store's S3 URL, for a region
    Skyward does not know; ``api_url`` is Hyperstack's API."""
    _check_credential("Hyperstack", "api_key", api_key)
    if not isinstance(region, str) or not region:
        raise ValueError(f'Hyperstack(region={region!r}): pass a region, e.g. "CANADA-1"')
    if endpoint is None:
        endpoint = HYPERSTACK_ENDPOINTS.get(region)
        if endpoint is None:
            known = ", ".join(repr(r) for r in HYPERSTACK_ENDPOINTS)
            raise ValueError(
                f"Hyperstack(region={region!r}): Skyward knows the S3 endpoint of {known} "
                "only; pass endpoint=... (the region's URL in Hyperstack's console, Object "
                "Storage) for another"
            )
    issuer = HyperstackKeys(api_key=api_key, region=region, api_url=api_url.rstrip("/"))
    # Requests are signed for us-east-1, as S3 clients do by default (and as clients
    # known to work with Hyperstack's store do); the key itself is scoped to ``region``.
    return Storage(endpoint=endpoint, path_style=True, key_issuer=issuer)


def _path_style(
    endpoint: str,
    access_key: Credential | None,
    secret_key: Credential | None,
    region: str = "auto",
) -> Storage:
    return Storage(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        path_style=True,
        region=region,
    )


# --- keys made for each use -----------------------------------------------------------------


@attrs.frozen
class IssuedKey:
    """A key pair a :class:`KeyIssuer` made; ``key_id`` is how it deletes it."""

    key_id: str
    access_key: str
    secret_key: str = attrs.field(repr=False)


@runtime_checkable
class KeyIssuer(Protocol):
    """Makes a store's key pair for one use, and deletes it after (blocking calls)."""

    def issue(self) -> IssuedKey:
        """A new key pair (raises StorageError when the store's API refuses)."""
        ...

    def revoke(self, key: IssuedKey) -> None:
        """Delete ``key`` (raises StorageError when that cannot be confirmed)."""
        ...

    def secrets(self) -> list[str]:
        """The secrets it holds (an API key), for logs to hide."""
        ...


@attrs.frozen(kw_only=True)
class HyperstackKeys:
    """Access keys to Hyperstack's object storage in ``region``, made and deleted through
    Hyperstack's API (``POST`` and ``DELETE /object-storage/access-keys``)."""

    api_key: Credential | None = attrs.field(repr=False)
    region: str
    api_url: str = HYPERSTACK_API_URL

    def _key(self) -> str:
        given = _credential(self.api_key, _HYPERSTACK_KEY_ENV)
        _no_awaitable(
            given,
            "sky.storage.Hyperstack(api_key=...): its function returned an awaitable; "
            "pass a function that returns the key",
        )
        if not given:
            raise ValueError(
                f"sky.storage.Hyperstack(api_key=None) and {_HYPERSTACK_KEY_ENV} is not set: "
                f"pass api_key=..., or set {_HYPERSTACK_KEY_ENV} (on a node: Image(env=...))"
            )
        return str(given)

    def secrets(self) -> list[str]:
        try:
            return [self._key()]
        except (ValueError, TypeError):
            return []

    def _call(self, method: str, path: str, what: str, body: Any = None) -> dict[str, Any]:
        """One request to Hyperstack's API; its JSON body when it succeeds. A DELETE is
        sent again (up to :data:`RETRY_ATTEMPTS` times in all) when it fails the way that
        may pass; a POST only when it surely made nothing (throttled, or never sent), so
        no key is made twice."""
        import httpx

        again = _TRANSIENT if method == "DELETE" else frozenset({429})
        headers = {"api_key": self._key(), "Accept": "application/json"}
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            last = attempt == RETRY_ATTEMPTS
            try:
                with httpx.Client(timeout=httpx.Timeout(30, connect=10)) as http:
                    answer = http.request(method, self.api_url + path, headers=headers, json=body)
            except httpx.HTTPError as exc:
                if last or not (method == "DELETE" or _nothing_sent(exc)):
                    tries = f" ({attempt} attempts)" if attempt > 1 else ""
                    raise StorageError(
                        f"Hyperstack's API did not answer when asked to {what}{tries}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            else:
                if answer.status_code not in again or last:
                    return _hyperstack_answer(answer, what)
            time.sleep(_backoff(attempt))
        raise AssertionError("the last attempt returns or raises")

    def issue(self) -> IssuedKey:
        made = self._call(
            "POST", "/object-storage/access-keys", "make an access key", {"region": self.region}
        )
        # The key's fields, at the top of the answer or as its "access_key" object.
        record = made["access_key"] if isinstance(made.get("access_key"), dict) else made
        key_id, access, secret = (record.get(k) for k in ("id", "access_key", "secret_key"))
        if (
            key_id is None
            or not (isinstance(access, str) and isinstance(secret, str))
            or not (access and secret)
        ):
            shown = sorted(k for k in record if k != "secret_key")
            raise StorageError(
                "Hyperstack made an access key but its answer lacks id, access_key or "
                f"secret_key (it has {', '.join(shown) or 'nothing'}); delete the key in "
                "Hyperstack's console (Object Storage, Access Keys)"
            )
        return IssuedKey(key_id=str(key_id), access_key=access, secret_key=secret)

    def revoke(self, key: IssuedKey) -> None:
        path = f"/object-storage/access-keys/{urllib.parse.quote(key.key_id, safe='')}"
        try:
            self._call("DELETE", path, f"delete access key {key.key_id} ({key.access_key})")
        except StorageError as exc:
            if exc.status == 404:  # gone already
                return
            raise StorageError(
                f"{exc}; it is a standing credential to your buckets: delete it in "
                "Hyperstack's console (Object Storage, Access Keys)",
                status=exc.status,
                code=exc.code,
            ) from exc


def _hyperstack_answer(answer: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        body = None
    said = body.get("message") if isinstance(body, dict) else None
    if answer.is_success and isinstance(body, dict) and body.get("status") is not False:
        return body
    words = said if isinstance(said, str) and said else answer.text[:200] or "no reason given"
    fix = " (check HYPERSTACK_API_KEY or api_key=...)" if answer.status_code in (401, 403) else ""
    raise StorageError(
        f"Hyperstack did not {what}: HTTP {answer.status_code}: {words}{fix}",
        status=answer.status_code,
        code=str(body.get("error_reason") or "") if isinstance(body, dict) else "",
    )


# --- requests (sans I/O) --------------------------------------------------------------------


@attrs.frozen
class _Request:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""


_Answer: TypeAlias = "httpx.Response"


def _quote(text: str, *, keep_slash: bool) -> str:
    return urllib.parse.quote(text, safe="/~" if keep_slash else "~")


def sign(
    method: str,
    url: str,
    *,
    body: bytes,
    access_key: str,
    secret_key: str,
    region: str,
    now: datetime.datetime,
) -> dict[str, str]:
    """The headers that sign ``method url`` with AWS Signature Version 4 for S3."""
    parts = urllib.parse.urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest()
    host = parts.netloc
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical_query = "&".join(
        f"{_quote(k, keep_slash=False)}={_quote(v, keep_slash=False)}" for k, v in query
    )
    names = sorted(headers)
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            canonical_query,
            "".join(f"{name}:{headers[name]}\n" for name in names),
            ";".join(names),
            payload,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


class _Requests:
    """Builds the signed requests and reads the answers; the clients only send them."""

    def __init__(self, storage: Storage, keys: tuple[str, str]) -> None:
        self.storage = storage
        self._access, self._secret = keys

    def retry(
        self,
        request: _Request,
        what: str,
        describe: Callable[[_Answer, str, int], StorageError] | None = None,
    ) -> _Retry:
        """The retries of ``request`` (see :class:`_Retry`): up to the store's ``attempts``."""
        attempts = self.storage.attempts
        return _Retry(request, what, describe or _failure, attempts=attempts)

    def url(self, bucket: str, key: str = "", query: Mapping[str, str] | None = None) -> str:
        base = urllib.parse.urlsplit(self.storage.endpoint)
        prefix = base.path.rstrip("/")
        path = _quote(key, keep_slash=True)
        if self.storage.path_style:
            netloc, full = base.netloc, f"{prefix}/{_quote(bucket, keep_slash=False)}/{path}"
        else:
            netloc, full = f"{bucket}.{base.netloc}", f"{prefix}/{path}"
        if not key:
            full = full.rstrip("/") or "/"
        encoded = "&".join(
            f"{_quote(k, keep_slash=False)}={_quote(v, keep_slash=False)}"
            for k, v in sorted((query or {}).items())
        )
        return urllib.parse.urlunsplit((base.scheme, netloc, full, encoded, ""))

    def request(
        self,
        method: str,
        bucket: str,
        key: str = "",
        *,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> _Request:
        url = self.url(bucket, key, query)
        headers = sign(
            method,
            url,
            body=body,
            access_key=self._access,
            secret_key=self._secret,
            region=self.storage.region,
            now=datetime.datetime.now(datetime.UTC),
        )
        headers.pop("host")  # httpx sends it, from the URL
        return _Request(method, url, headers, body)

    def resigned(self, request: _Request) -> _Request:
        """``request`` signed again now, its other headers kept: a retry's signature is as
        fresh as a first attempt's (a store refuses one older than 15 minutes)."""
        headers = sign(
            request.method,
            request.url,
            body=request.body,
            access_key=self._access,
            secret_key=self._secret,
            region=self.storage.region,
            now=datetime.datetime.now(datetime.UTC),
        )
        headers.pop("host")
        return attrs.evolve(request, headers={**request.headers, **headers})


def _check_names(bucket: object, key: object = "x") -> None:
    if not isinstance(bucket, str) or not bucket or "/" in bucket:
        raise ValueError(f"bucket={bucket!r}: pass a bucket's name, e.g. 'my-data'")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key={key!r}: pass an object's key, e.g. 'checkpoints/model.pt'")


def _failed(what: str, attempts: int) -> str:
    """``"<what> failed"``, and how many times it was tried when that was more than once."""
    return f"{what} failed after {attempts} attempts" if attempts > 1 else f"{what} failed"


def _failure(response: httpx.Response, what: str, attempts: int = 1) -> StorageError:
    code, message = "", ""
    if response.content:
        try:
            root = ElementTree.fromstring(response.content)
            code = root.findtext("Code") or ""
            message = root.findtext("Message") or ""
        except ElementTree.ParseError:
            message = response.text[:200]
    detail = f"{code}: {message}" if code else message or response.reason_phrase
    return StorageError(
        f"{_failed(what, attempts)}: HTTP {response.status_code} {detail}".rstrip(),
        status=response.status_code,
        code=code,
    )


@attrs.frozen
class _Object:
    """An object as a listing names it."""

    key: str
    size: int
    etag: str

    @property
    def head(self) -> tuple[int, str] | None:
        """What a HEAD of it would say, ``(size, etag)``; None without an ETag."""
        return (self.size, self.etag) if self.etag else None


def _listed(content: bytes) -> tuple[list[_Object], str | None]:
    """One page of a listing: each object, and the next page's token."""
    root = ElementTree.fromstring(content)
    ns = _S3_NS if root.tag.startswith(_S3_NS) else ""
    keys = [
        _Object(
            item.findtext(f"{ns}Key") or "",
            int(item.findtext(f"{ns}Size") or 0),
            item.findtext(f"{ns}ETag") or "",
        )
        for item in root.findall(f"{ns}Contents")
    ]
    truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
    token = root.findtext(f"{ns}NextContinuationToken") if truncated else None
    return keys, token


def _upload_id(content: bytes) -> str:
    root = ElementTree.fromstring(content)
    ns = _S3_NS if root.tag.startswith(_S3_NS) else ""
    found = root.findtext(f"{ns}UploadId")
    if not found:
        raise StorageError("the store started a multipart upload but sent no UploadId")
    return found


def _complete_body(etags: list[str]) -> bytes:
    parts = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{tag}</ETag></Part>"
        for n, tag in enumerate(etags, 1)
    )
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


def _parts_listed(content: bytes) -> tuple[dict[int, tuple[str, int]], str | None]:
    """One page of a ListParts answer: ``{part number: (etag, size)}``, and the marker of
    the next page."""
    root = ElementTree.fromstring(content)
    ns = _S3_NS if root.tag.startswith(_S3_NS) else ""
    parts: dict[int, tuple[str, int]] = {}
    for item in root.findall(f"{ns}Part"):
        try:
            number, size = (
                int(item.findtext(f"{ns}PartNumber") or ""),
                int(item.findtext(f"{ns}Size") or ""),
            )
        except ValueError:
            continue
        parts[number] = (item.findtext(f"{ns}ETag") or "", size)
    truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
    marker = root.findtext(f"{ns}NextPartNumberMarker") if truncated else None
    return parts, marker or None


def _read_part(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read(size)


def _source(local_path: str | os.PathLike[str], key: str | None) -> tuple[Path, str]:
    path = Path(local_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"upload(local_path={str(local_path)!r}): no such file here")
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"key={key!r}: pass an object's key, or leave it out for the file's name")
    return path, key if key is not None else path.name


def _folder_prefix(folder: Path, key: str | None) -> str:
    """The key prefix a folder's files go up under: ``key`` (default: the folder's name),
    ending in ``/``."""
    prefix = folder.resolve().name if key is None else key
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise ValueError(
            f"upload(key={key!r}): a folder goes up under a prefix; pass e.g. "
            "key='checkpoints/step-1000/', or leave it out for the folder's name"
        )
    return prefix.rstrip("/") + "/"


def _tree(folder: Path) -> list[tuple[Path, str, int]]:
    """Every file under ``folder`` (a symlinked file as its target's bytes; symlinked
    folders are not entered), as ``(path, relative key, size)``, in key order."""
    found = []
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in files:
            path = Path(root, name)
            if path.is_file():
                found.append((path, path.relative_to(folder).as_posix(), path.stat().st_size))
    return sorted(found, key=lambda item: item[1])


def _folder_plan(
    bucket: str, prefix: str, listed: list[_Object], folder: Path
) -> list[tuple[_Object, Path]]:
    """What a folder's download brings: each object under ``prefix``, and its local path.
    Keys ending in ``/`` (folder markers) are skipped.

    Raises:
        StorageError: Nothing is under ``prefix``, or a key would land outside ``folder``.
    """
    plan = []
    for listing in listed:
        key = listing.key
        relative = key[len(prefix) :]
        if not relative or key.endswith("/"):
            continue
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise StorageError(
                f"download of {bucket}/{prefix} failed: the key {key!r} does not name a file "
                f"under {folder} (an empty, '.' or '..' part); download it by itself"
            )
        plan.append((listing, folder.joinpath(*parts)))
    if not plan:
        raise StorageError(
            f"download of {bucket}/{prefix} failed: no object's key starts with {prefix!r}",
            status=404,
            code="NoSuchKey",
        )
    return plan


def _one_part(
    items: list[_T], size: Callable[[_T], int], part_size: int
) -> tuple[list[_T], list[_T]]:
    """A folder's files (or objects) split in two: those of one part, which move several at
    once (each in one request), and the larger ones, which move one at a time (each in
    parts, several at once)."""
    small = [item for item in items if size(item) <= part_size]
    return small, [item for item in items if size(item) > part_size]


def _md5(file: Any, length: int) -> Any:
    """The MD5 of the next ``length`` bytes of ``file`` (fewer at its end), read in MiBs."""
    digest = hashlib.md5(usedforsecurity=False)
    while length > 0:
        chunk = file.read(min(length, 1 << 20))
        if not chunk:
            break
        digest.update(chunk)
        length -= len(chunk)
    return digest


def _local_etag(path: Path, size: int, part_size: int) -> str:
    """The ETag a store gives ``path`` as this client uploads it: the MD5 of its bytes
    (one request), or the MD5 of its parts' MD5s and their count (a multipart upload in
    ``part_size`` parts)."""
    with path.open("rb") as file:
        if size <= part_size:
            return str(_md5(file, size).hexdigest())
        count = _part_count(size, part_size)
        parts = b"".join(
            _md5(file, _part_bounds(size, part_size, index)[1]).digest() for index in range(count)
        )
    return f"{hashlib.md5(parts, usedforsecurity=False).hexdigest()}-{count}"


def _not_up(
    files: list[tuple[Path, str, int]], there: list[_Object], prefix: str, part_size: int
) -> tuple[list[tuple[Path, str, int]], int]:
    """A resumed folder upload's files that are not up yet, and the bytes of those that
    are: an object under the file's key of its size whose ETag is the one this client's
    upload of it gives (another ETag, a store's own kind or another part size, sends it
    again). Reads each file that may be up, so the trio client calls it in a thread."""
    listed = {item.key: item for item in there}
    left, up = [], 0
    for path, relative, size in files:
        item = listed.get(prefix + relative)
        if (
            item is not None
            and item.size == size
            and item.etag.strip('"') == _local_etag(path, size, part_size)
        ):
            up += size
        else:
            left.append((path, relative, size))
    return left, up


def _check_progress(method: str, progress: object) -> None:
    if progress is not None and not callable(progress):
        raise TypeError(
            f"{method}(progress={progress!r}): progress is a function called with (bytes done, "
            "bytes in all) as the transfer goes, or None"
        )


class _Meter:
    """Tells a :data:`Progress` function how far a transfer is: ``(0, total)`` at once,
    then after each part or chunk."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self._progress = progress
        self.total = total
        self.done = 0
        if progress is not None:
            progress(0, total)

    def add(self, count: int) -> None:
        self.done += count
        if self._progress is not None and count:
            self._progress(self.done, self.total)

    def settle(self, before: int, size: int) -> None:
        """Count what is left of a ``size``-byte file whose parts, if any, were counted
        since ``done`` was ``before`` (a file sent in one request counts once it is up)."""
        self.add(size - (self.done - before))


def _uncounted(total: int) -> _Meter:
    """The meter of an object whose bytes its folder's meter counts once it is whole."""
    return _Meter(None, total)


def _part_bounds(total: int, part_size: int, index: int) -> tuple[int, int]:
    """``(offset, length)`` of part ``index`` (from 0) of ``total`` bytes."""
    offset = index * part_size
    return offset, min(part_size, total - offset)


def _part_count(total: int, part_size: int) -> int:
    return -(-total // part_size)


@attrs.frozen
class _Parts:
    """A step of an operation that is many requests: the client sends ``count`` of them,
    :data:`PARTS_IN_FLIGHT` at a time, and answers with ``result`` of each, in order.

    Attributes:
        count: How many parts.
        build: The signed request of part ``index`` (from 0); reads the part's bytes, so
            the client calls it off the trio thread.
        size: The bytes of part ``index``, for progress.
        result: What the operation wants of part ``index``'s answer.
        what: The operation, for errors.
        ok: The statuses a part's answer may have.
        kept: The results of parts an earlier attempt sent (a resumed upload's): not
            sent again, counted as done.
    """

    count: int
    build: Callable[[int], _Request]
    size: Callable[[int], int]
    result: Callable[[int, _Answer], Any]
    what: str
    ok: tuple[int, ...] = (200,)
    kept: Mapping[int, Any] = attrs.field(factory=dict)


def _range_request(
    r: _Requests, bucket: str, key: str, offset: int, length: int, etag: str
) -> _Request:
    """A GET of ``length`` bytes from ``offset``, refused (412) if the object is no longer
    the one whose ETag is ``etag``: the parts of a download all come from one version."""
    request = r.request("GET", bucket, key)
    headers = {**request.headers, "range": f"bytes={offset}-{offset + length - 1}"}
    if etag:
        headers["if-match"] = etag
    return attrs.evolve(request, headers=headers)


def _unanswered(what: str, exc: Exception, attempts: int = 1) -> StorageError:
    """The error of a request that got no answer (the connection failed, or timed out)."""
    return StorageError(f"{_failed(what, attempts)}: {type(exc).__name__}: {exc}")


def _download_failure(answer: _Answer, what: str, attempts: int = 1) -> StorageError:
    """The error of a GET that did not bring the object's bytes (a whole object, or a range)."""
    if answer.status_code == 412:
        return StorageError(
            f"{what} failed: the object changed while it came down; download it again",
            status=412,
            code="PreconditionFailed",
        )
    if answer.status_code == 200:
        return StorageError(f"{what} failed: the store sent the whole object for a byte range")
    return _failure(answer, what, attempts)


# --- retries (sans I/O) ---------------------------------------------------------------------


def _nothing_sent(exc: Exception) -> bool:
    """Whether ``exc`` failed a request before any of it reached the store."""
    import httpx

    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def _transport_failure(exc: Exception) -> bool:
    """Whether ``exc`` is the network's failure (a connection refused, reset or dropped, a
    timeout, a garbled answer), which the next attempt may not meet: not a request this
    client could not build, nor a proxy that refused it."""
    import httpx

    return isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))


def _error_in_body(method: str, answer: _Answer) -> bool:
    """Whether ``answer``, a 2xx to a POST, is an ``<Error>`` all the same: S3 may answer
    a CompleteMultipartUpload that failed after it began with 200 and an InternalError
    (its headers go out before the work is done), and the upload is then not complete."""
    if method != "POST" or not 200 <= answer.status_code < 300 or not answer.content:
        return False
    try:
        root = ElementTree.fromstring(answer.content)
    except ElementTree.ParseError:
        return False
    return root.tag.rsplit("}", 1)[-1] == "Error"


def _retry_after(answer: _Answer) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait, if it gives seconds."""
    value = answer.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def _backoff(attempt: int) -> float:
    """The pause after failed attempt ``attempt`` (from 1): a random one ("full jitter",
    so clients that failed together do not come back together) up to
    :data:`RETRY_BASE_DELAY` doubled at each attempt, at most :data:`RETRY_MAX_DELAY`."""
    return random.uniform(0, min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (attempt - 1)))


class _Retry:
    """Whether, and after how long, one request is sent again: the decisions both clients
    share; they only send, wait and sign the request again.

    A request is sent again, up to :data:`RETRY_ATTEMPTS` times in all, when its answer is
    HTTP 429, 500, 502, 503 or 504 (S3's SlowDown, InternalError, ...), or a POST's 200
    that holds an error (:func:`_error_in_body`), or when it got no answer for the
    network's reason (:func:`_transport_failure`). GET, HEAD, PUT and DELETE do the same
    however many times they are sent, so any such failure is retried. A POST (starting or
    completing a multipart upload) is not: it is sent again only when nothing of it went
    out (:func:`_nothing_sent`). Once it did, the store may have done it and its answer
    been lost: a second CreateMultipartUpload would start a second upload and leave the
    first one's parts billed, never aborted; a second CompleteMultipartUpload of an upload
    that did complete answers NoSuchUpload, failing an upload that worked. Any other
    answer is final (NoSuchKey, AccessDenied, a 412 from If-Match).

    Each method that gives a pause raises, instead, the StorageError to report when the
    failure is final; it names the attempts made and the last one's reason.

    Args:
        request: The request's first attempt.
        what: The operation, for errors.
        describe: Builds the error of an answer, from ``(answer, what, attempts)``.
        attempts: How many times it may be sent in all (``Storage.attempts``).
    """

    def __init__(
        self,
        request: _Request,
        what: str,
        describe: Callable[[_Answer, str, int], StorageError] = _failure,
        *,
        attempts: int = RETRY_ATTEMPTS,
    ) -> None:
        self._attempts = attempts
        self._method = request.method
        self._what = what
        self._describe = describe
        self._attempt = 1
        self._last: StorageError | None = None

    def answered(self, answer: _Answer, ok: Container[int]) -> float | None:
        """None when ``answer`` (read) is one the request accepts, else the seconds to
        wait before the next attempt."""
        if answer.status_code in ok and not _error_in_body(self._method, answer):
            return None
        return self.refused(answer)

    def refused(self, answer: _Answer) -> float:
        """The seconds to wait before the next attempt, after ``answer`` (read), which is
        not one the request accepts."""
        self._last = self._describe(answer, self._what, self._attempt)
        transient = answer.status_code in _TRANSIENT or _error_in_body(self._method, answer)
        if not transient or self._attempt >= self._attempts:
            raise self._last
        return self._next(_retry_after(answer))

    def failed(self, exc: Exception) -> float:
        """The seconds to wait before the next attempt, after ``exc`` (an httpx error)
        ended this one."""
        self._last = _unanswered(self._what, exc, self._attempt)
        if self._method != "POST":
            again = _transport_failure(exc)
        elif _nothing_sent(exc):
            again = True
        else:
            again = False
            if _transport_failure(exc):
                self._last = StorageError(
                    f"{self._last} (a POST is not sent again once it went out: the store "
                    "may have done it; see whether the object is there before uploading "
                    "it again)"
                )
        if not again or self._attempt >= self._attempts:
            raise self._last from exc
        return self._next(None)

    def give_up(self) -> NoReturn:
        """Raise the last attempt's error: no other attempt is to be made (another part of
        the same transfer failed, and it is ending)."""
        assert self._last is not None, "give_up() follows a failed attempt"
        raise self._last

    def _next(self, asked: float | None) -> float:
        pause = _backoff(self._attempt) if asked is None else min(asked, RETRY_MAX_DELAY)
        self._attempt += 1
        return pause


class _WholeDownload:
    """A download in one GET, across its attempts; both clients stream it.

    An attempt that fails starts again from the first byte (the file is emptied), and
    asks (If-Match) for the version the first answer brought, so the bytes are all of one
    version; a 412 then says the object changed. ``reached`` counts the bytes on the meter
    once: an attempt's bytes count only past the furthest an earlier attempt got.
    """

    def __init__(
        self,
        r: _Requests,
        bucket: str,
        key: str,
        head: tuple[int, str] | None,
        what: str,
        meter_for: Callable[[int], _Meter],
    ) -> None:
        self._requests = r
        self.request = r.request("GET", bucket, key)
        self.retry = r.retry(self.request, what, _download_failure)
        self._head = head
        self._etag = head[1] if head is not None else ""
        self._meter_for = meter_for
        self._meter: _Meter | None = None
        self._counted = 0

    def started(self, answer: _Answer) -> None:
        """An attempt's answer is a 200: its bytes follow."""
        if self._meter is None:
            self._meter = self._meter_for(_total(self._head, answer))
        self._etag = answer.headers.get("etag", self._etag)

    def reached(self, got: int) -> None:
        """The attempt has brought ``got`` bytes so far."""
        if self._meter is not None and got > self._counted:
            self._meter.add(got - self._counted)
            self._counted = got

    def again(self) -> None:
        """Make ``request`` the next attempt's: signed now, pinned to the version."""
        request = self._requests.resigned(self.request)
        if self._etag:
            request = attrs.evolve(request, headers={**request.headers, "if-match": self._etag})
        self.request = request


def _check_part(what: str, offset: int, got: int, length: int) -> None:
    """Raise if a byte range's answer, ended without an error, did not bring its bytes."""
    if got != length:
        raise StorageError(
            f"{what} failed: the part at byte {offset} ended after {got} of its {length} bytes"
        )


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# --- operations (sans I/O) ------------------------------------------------------------------
#
# Each operation is a generator: it yields the requests to send, each with the statuses it
# accepts, is sent back the answer, and returns the result. The blocking and the trio
# client only drive them (downloads, which stream into a file, excepted).

_Operation: TypeAlias = "Generator[tuple[_Request, str, Container[int]] | _Parts, Any, Any]"


class _KeptUpload:
    """The record of a multipart upload that ``upload(..., resume=True)`` keeps if it is
    cut short, so that a later one of the same file continues it:
    ``~/.skyward/uploads/<hash>.json`` (:data:`UPLOAD_RECORDS`) for the store's endpoint,
    the bucket and the key, naming the upload's id, the file it sends (its path, size and
    modification time) and the part size. Written before the first part goes up (so a
    killed process leaves it too), removed once the upload is complete or aborted.
    Blocking: the trio client runs operations in threads."""

    def __init__(self, endpoint: str, bucket: str, key: str) -> None:
        name = hashlib.sha256(f"{endpoint}\n{bucket}\n{key}".encode()).hexdigest()[:40]
        self.path = Path(UPLOAD_RECORDS).expanduser() / f"{name}.json"
        self._where = {"endpoint": endpoint, "bucket": bucket, "key": key}

    def read(self) -> dict[str, Any] | None:
        """The record, or None if there is none (or none that can be read)."""
        try:
            kept = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(kept, dict) or not isinstance(kept.get("upload_id"), str):
            return None
        if any(kept.get(name) != value for name, value in self._where.items()):
            return None
        return kept

    def write(self, upload: str, sent: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = self.path.with_name(self.path.name + ".new")
        fresh.write_text(json.dumps({**self._where, "upload_id": upload, **sent}))
        os.replace(fresh, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _sent_file(path: Path, total: int, part_size: int) -> dict[str, Any]:
    """What a kept upload must have been sending for a later one to continue it: the same
    file, unchanged since (its size and modification time), in parts of the same size."""
    return {
        "source": str(path.resolve()),
        "size": total,
        "mtime_ns": path.stat().st_mtime_ns,
        "part_size": part_size,
    }


def _parts_up(r: _Requests, bucket: str, key: str, upload: str, what: str) -> _Operation:
    """``{part number: (etag, size)}`` of the parts of multipart upload ``upload`` that
    the store holds, following the pages; None if it holds no such upload (it was
    completed or aborted since, or the store let it expire)."""
    parts: dict[int, tuple[str, int]] = {}
    marker: str | None = None
    while True:
        query = {"uploadId": upload, "max-parts": str(_PAGE)}
        if marker is not None:
            query["part-number-marker"] = marker
        answer = yield (
            r.request("GET", bucket, key, query=query),
            f"listing of the parts kept by an earlier {what}",
            (200, 404),
        )
        if answer.status_code == 404:
            return None
        page, marker = _parts_listed(answer.content)
        parts.update(page)
        if marker is None:
            return parts


def _upload(
    r: _Requests,
    bucket: str,
    path: Path,
    key: str,
    part_size: int,
    total: int,
    resume: bool = False,
    checked: bool = False,
) -> _Operation:
    """Upload ``path`` as ``key``. With ``resume``, a kept upload of the same file is
    continued, and none is sent if ``key`` holds it already (a HEAD, then the file's ETag
    when the sizes match), unless ``checked``: the caller found from a listing that it
    does not (a resumed folder upload, :func:`_not_up`)."""
    what = f"upload of {path} to {bucket}/{key}"
    count = _part_count(total, part_size)
    record = _KeptUpload(r.storage.endpoint, bucket, key)
    sending = _sent_file(path, total, part_size)
    upload: str | None = None
    kept: dict[int, str] = {}
    earlier = record.read()
    if earlier is not None:
        same = {name: earlier.get(name) for name in sending} == sending
        if resume and total > part_size and same:
            listed = yield from _parts_up(r, bucket, key, earlier["upload_id"], what)
            if listed is not None:
                upload = earlier["upload_id"]
                kept = {
                    number - 1: etag
                    for number, (etag, size) in listed.items()
                    if 0 < number <= count and size == _part_bounds(total, part_size, number - 1)[1]
                }
        if upload is None:
            # An upload of this key kept by an earlier one, of another file (or without
            # resume): its parts are billed until it is aborted, and this one replaces it.
            abandoned = r.request("DELETE", bucket, key, query={"uploadId": earlier["upload_id"]})
            yield (
                abandoned,
                f"abort of the upload to {bucket}/{key} kept by an earlier "
                f"upload(..., resume=True) (upload id {earlier['upload_id']})",
                (200, 204, 404),
            )
            record.remove()
    if resume and upload is None and not checked:
        # Up whole already (an upload that completed): nothing to send. The file is read
        # for its ETag only when an object of its size is there.
        answer = yield r.request("HEAD", bucket, key), f"check of {bucket}/{key}", _FINAL
        head = _sized(answer)
        if (
            head is not None
            and head[0] == total
            and head[1].strip('"') == _local_etag(path, total, part_size)
        ):
            return key
    if total <= part_size:
        yield r.request("PUT", bucket, key, body=path.read_bytes()), what, (200,)
        return key
    if upload is None:
        started = yield r.request("POST", bucket, key, query={"uploads": ""}), what, (200,)
        upload = _upload_id(started.content)
        if resume:
            record.write(upload, sending)
    sent: dict[int, str] = {}
    try:

        def part(index: int) -> _Request:
            query = {"partNumber": str(index + 1), "uploadId": upload}
            body = _read_part(path, *_part_bounds(total, part_size, index))
            return r.request("PUT", bucket, key, query=query, body=body)

        def etag(index: int, answer: _Answer) -> str:
            sent[index] = answer.headers.get("etag", "")
            return sent[index]

        etags = yield _Parts(
            count=count,
            build=part,
            size=lambda index: _part_bounds(total, part_size, index)[1],
            result=etag,
            what=what,
            kept=kept,
        )
        body = _complete_body(etags)
        yield r.request("POST", bucket, key, query={"uploadId": upload}, body=body), what, (200,)
    except BaseException as exc:
        if resume:
            exc.add_note(
                f"{len(kept) + len(sent)} of its {count} parts are kept in multipart upload "
                f"{upload} of {bucket}/{key} (recorded in {record.path}): "
                "upload(..., resume=True) of the same file again sends only the others. "
                f"The store bills the parts until then; another upload to {bucket}/{key} "
                "aborts them"
            )
            raise
        # The parts sent so far are billed until the upload is aborted.
        abort = r.request("DELETE", bucket, key, query={"uploadId": upload})
        try:
            yield abort, f"abort of {what}", (200, 204)
        except StorageError:
            pass  # the first error is the one to see
        raise
    record.remove()
    return key


def _ls(r: _Requests, bucket: str, prefix: str) -> _Operation:
    """Every object under ``prefix``, following the pages."""
    keys: list[_Object] = []
    token: str | None = None
    while True:
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(_PAGE)}
        if token:
            query["continuation-token"] = token
        answer = yield (
            r.request("GET", bucket, query=query),
            f"listing of {bucket}/{prefix}",
            (200,),
        )
        page, token = _listed(answer.content)
        keys.extend(page)
        if token is None:
            return keys


def _exists(r: _Requests, bucket: str, key: str) -> _Operation:
    what = f"check of {bucket}/{key}"
    answer = yield r.request("HEAD", bucket, key), what, (200, 404)
    if answer.status_code == 404:
        # No such key, or no such bucket: HEAD has no body to tell them apart.
        there = yield r.request("HEAD", bucket), f"check of {bucket}", (200, 404)
        if there.status_code == 404:
            raise StorageError(f"{what} failed: no bucket {bucket!r}", status=404)
    return answer.status_code == 200


def _rm(r: _Requests, bucket: str, key: str) -> _Operation:
    yield r.request("DELETE", bucket, key), f"removal of {bucket}/{key}", (200, 204)


def _partial(target: Path) -> str:
    """A temporary file beside ``target`` that a download fills before it is renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    return partial


class _Resumable:
    """A download in parts that ``resume=True`` lets a later download continue: its
    partial file beside the target, ``.NAME.skyward-partial``, and a record of the parts
    in it, ``.NAME.skyward-partial.json`` (the object's ETag and size, the part size and
    the parts done), written as each part lands (its bytes synced first), so a download
    cut short in any way (an error, Ctrl-C, a killed process) keeps what it got. A record
    of another version of the object, or another part size, is not used: it starts again.
    Blocking: the trio client calls it in threads."""

    def __init__(self, target: Path, head: tuple[int, str], part_size: int) -> None:
        self.partial = target.parent / f".{target.name}.skyward-partial"
        self._record = target.parent / f".{target.name}.skyward-partial.json"
        self._target = target
        self._want = {"etag": head[1], "size": head[0], "part_size": part_size}
        self.done: set[int] = set()
        self._lock = threading.Lock()

    def open(self) -> None:
        """Take up the parts a download of this version left, or start afresh."""
        self._target.parent.mkdir(parents=True, exist_ok=True)
        try:
            kept = json.loads(self._record.read_text())
            same = {k: kept.get(k) for k in self._want} == self._want
            if same and self.partial.stat().st_size == self._want["size"]:
                self.done = {int(i) for i in kept.get("done", [])}
                return
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        self._record.unlink(missing_ok=True)
        self.partial.write_bytes(b"")

    def landed(self, index: int, fd: int) -> None:
        """Part ``index`` is written through ``fd``: sync it, and record it."""
        os.fdatasync(fd)
        with self._lock:
            self.done.add(index)
            record = {**self._want, "done": sorted(self.done)}
            fresh = self._record.with_name(self._record.name + ".new")
            fresh.write_text(json.dumps(record))
            os.replace(fresh, self._record)

    def complete(self) -> None:
        os.replace(self.partial, self._target)
        self._record.unlink(missing_ok=True)

    def kept(self, count: int) -> str:
        return (
            f"{len(self.done)} of its {count} parts are kept in {self.partial}: "
            "download(..., resume=True) again continues from them"
        )


def _resumable(
    resume: bool, target: Path, head: tuple[int, str] | None, part_size: int
) -> _Resumable | None:
    """The resumable state of a download (``resume=True``) of an object in parts whose
    version HEAD named; None for the others (they come down afresh each time)."""
    if not resume or head is None or not head[1] or head[0] <= part_size:
        return None
    return _Resumable(target, head, part_size)


def _check_resume(method: str, resume: object) -> None:
    if not isinstance(resume, bool):
        raise TypeError(f"{method}(resume={resume!r}): resume is True or False")


def _step(operation: _Operation, answer: Any, failure: BaseException | None) -> tuple[bool, Any]:
    """Advance ``operation`` with an answer (or the failure to raise in it): ``(True,
    result)`` once it returns, else ``(False, (request, what, ok))``. The generator's end
    is returned, not raised: a StopIteration cannot cross a thread and a coroutine."""
    try:
        step = operation.throw(failure) if failure is not None else operation.send(answer)
    except StopIteration as done:
        return True, done.value
    return False, step


# What `with storage as s3` gives that the Storage itself has not.
_CLIENT_METHODS = frozenset({"upload", "download", "ls", "exists", "rm", "close", "aclose"})
_CLOSED = "this storage client is closed: use it inside `with storage:` (or `async with`)"


# --- clients --------------------------------------------------------------------------------


def _part_what(what: str, index: int, count: int) -> str:
    """The operation ``what``, naming its part ``index`` (from 0) of ``count``, for errors."""
    return f"{what} (part {index + 1} of {count})"


def _pause(retry: _Retry, seconds: float, stop: threading.Event | None) -> None:
    """The blocking client's wait before an attempt: ``time.sleep`` on your thread (Ctrl-C
    ends it), or, on a part's thread, until ``stop`` is set, and then ``retry`` gives up."""
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        retry.give_up()


class StorageClient:
    """A blocking client of one :class:`Storage`, from ``with storage as s3``."""

    def __init__(
        self,
        storage: Storage,
        keys: tuple[str, str],
        part_size: int | None = None,
        in_flight: int | None = None,
    ) -> None:
        self._requests = _Requests(storage, keys)
        self._part_size = storage.part_size if part_size is None else part_size
        self._in_flight = storage.parts_in_flight if in_flight is None else in_flight
        self._http: httpx.Client | None = None

    def _open(self) -> None:
        import httpx

        self._http = httpx.Client(timeout=httpx.Timeout(60, connect=10))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise RuntimeError(_CLOSED)
        return self._http

    def _send(
        self,
        request: _Request,
        what: str,
        ok: Container[int],
        stop: threading.Event | None = None,
    ) -> _Answer:
        """Send ``request`` until its answer's status is in ``ok``, retrying as
        :class:`_Retry` says. Sent from a part's thread, it gives up as soon as ``stop``
        is set; from yours, its pauses are ``time.sleep`` (Ctrl-C ends them)."""
        import httpx

        retry = self._requests.retry(request, what)
        while True:
            try:
                answer = self._client().request(
                    request.method,
                    request.url,
                    headers=dict(request.headers),
                    content=request.body,
                )
            except httpx.HTTPError as exc:
                pause = retry.failed(exc)
            else:
                ready = retry.answered(answer, ok)
                if ready is None:
                    return answer
                pause = ready
            _pause(retry, pause, stop)
            request = self._requests.resigned(request)

    def _run(
        self,
        operation: _Operation,
        meter: _Meter | None = None,
        stop: threading.Event | None = None,
    ) -> Any:
        """Run ``operation`` to its end. On a folder's thread (``stop`` given), a retry's
        pause gives up once ``stop`` is set."""
        answer: Any = None
        failure: BaseException | None = None
        while True:
            finished, step = _step(operation, answer, failure)
            if finished:
                return step
            answer, failure = None, None
            try:
                if isinstance(step, _Parts):
                    answer = self._in_parallel(
                        step.count, self._part_sender(step), step.size, meter
                    )
                else:
                    request, what, ok = step
                    answer = self._send(request, what, ok, stop)
            except BaseException as exc:
                # A refusal, or Ctrl-C (amid the parts, or in a pause before a retry): raised
                # in the operation, which cleans up (an upload is aborted).
                failure = exc

    def _part_sender(self, parts: _Parts) -> Callable[[int, threading.Event], Any]:
        def send(index: int, stop: threading.Event) -> Any:
            if index in parts.kept:
                return parts.kept[index]
            what = _part_what(parts.what, index, parts.count)
            return parts.result(index, self._send(parts.build(index), what, parts.ok, stop))

        return send

    def _in_parallel(
        self,
        count: int,
        work: Callable[[int, threading.Event], Any],
        size: Callable[[int], int],
        meter: _Meter | None,
    ) -> list[Any]:
        """``[work(0, stop), ..., work(count - 1, stop)]``, run in threads, ``in_flight``
        at a time; the first failure sets ``stop`` (a part waiting to be retried gives up)
        and raises once the parts being sent have ended (none more start)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        results: list[Any] = [None] * count
        indexes = iter(range(count))
        stop = threading.Event()
        with ThreadPoolExecutor(min(self._in_flight, count), "skyward-storage") as threads:
            # Only in_flight at once: an upload's part is read as it starts, and held.
            first = itertools.islice(indexes, self._in_flight)
            running = {threads.submit(work, index, stop): index for index in first}
            try:
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        index = running.pop(future)
                        results[index] = future.result()
                        if meter is not None:
                            meter.add(size(index))
                        for following in itertools.islice(indexes, 1):
                            running[threads.submit(work, following, stop)] = following
            except BaseException:
                stop.set()
                for future in running:
                    future.cancel()
                raise
        return results

    def upload(
        self,
        bucket: str,
        local_path: str | os.PathLike[str],
        *,
        key: str | None = None,
        progress: Progress | None = None,
        resume: bool = False,
    ) -> str:
        """Upload the file ``local_path`` as ``key`` (default: the file's name); returns the key.

        A folder goes up file by file under the prefix ``key`` (default: the folder's
        name), and the prefix, ending in ``/``, is returned. ``progress``, if given, is
        called with ``(bytes sent, bytes in all)`` as parts go up. ``resume=True`` keeps
        the parts of a multipart upload cut short (rather than aborting it), continues one
        that an upload of the same file kept (see :class:`_KeptUpload`), and sends no file
        already up (its key holds an object of its size with the ETag this client's upload
        of it gives: see :func:`_not_up`)."""
        _check_progress("upload", progress)
        _check_resume("upload", resume)
        folder = Path(local_path).expanduser()
        if folder.is_dir():
            prefix = _folder_prefix(folder, key)
            _check_names(bucket, prefix)
            files = _tree(folder)
            meter = _Meter(progress, sum(size for _, _, size in files))
            if resume:
                there = self._run(_ls(self._requests, bucket, prefix))
                files, up = _not_up(files, there, prefix, self._part_size)
                meter.add(up)
            small, large = _one_part(files, lambda file: file[2], self._part_size)

            def one(index: int, stop: threading.Event) -> None:
                path, relative, size = small[index]
                part_size = self._part_size
                upload = _upload(self._requests, bucket, path, prefix + relative, part_size, size)
                self._run(upload, stop=stop)

            if small:
                self._in_parallel(len(small), one, lambda index: small[index][2], meter)
            for path, relative, size in large:
                self._upload_one(
                    bucket, path, prefix + relative, size, meter, resume, checked=resume
                )
            return prefix
        path, key = _source(local_path, key)
        _check_names(bucket, key)
        total = path.stat().st_size
        return self._upload_one(bucket, path, key, total, _Meter(progress, total), resume)

    def _upload_one(
        self,
        bucket: str,
        path: Path,
        key: str,
        size: int,
        meter: _Meter,
        resume: bool,
        checked: bool = False,
    ) -> str:
        before = meter.done
        r, part_size = self._requests, self._part_size
        operation = _upload(r, bucket, path, key, part_size, size, resume, checked)
        done = str(self._run(operation, meter))
        meter.settle(before, size)
        return done

    def _head(
        self, bucket: str, key: str, what: str, stop: threading.Event | None = None
    ) -> tuple[int, str] | None:
        """The object's ``(size, etag)``, or None if HEAD does not say (the GET that
        follows then gives the store's reason)."""
        head = self._requests.request("HEAD", bucket, key)
        return _sized(self._send(head, what, _FINAL, stop))

    def download(
        self,
        bucket: str,
        key: str,
        local_path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        resume: bool = False,
    ) -> Path:
        """Download ``key`` to ``local_path`` (its folder is made); returns the path.

        A ``key`` ending in ``/`` is a folder: every object under it comes down to the
        same path under the folder ``local_path``. An object larger than a part comes
        down in parts, several at once. ``progress``, if given, is called with ``(bytes
        received, bytes in all)`` as they arrive. ``resume=True`` keeps the parts of a
        download cut short, and continues from those a download of the same version of
        the object kept (see :class:`_Resumable`)."""
        _check_names(bucket, key)
        _check_progress("download", progress)
        _check_resume("download", resume)
        self._client()
        target = Path(local_path).expanduser()
        if key.endswith("/"):
            plan = _folder_plan(bucket, key, self._run(_ls(self._requests, bucket, key)), target)
            meter = _Meter(progress, sum(listed.size for listed, _ in plan))
            small, large = _one_part(plan, lambda item: item[0].size, self._part_size)

            def one(index: int, stop: threading.Event) -> None:
                listed, path = small[index]
                # Counted once whole, on your thread (by _in_parallel), not as it comes.
                self._fetch(bucket, listed.key, path, _uncounted, False, stop, listed.head)

            if small:
                self._in_parallel(len(small), one, lambda index: small[index][0].size, meter)
            for listed, path in large:
                # A HEAD first, as for one object: its parts ask for the version it names.
                self._fetch(bucket, listed.key, path, lambda _: meter, resume)
            return target
        return self._fetch(bucket, key, target, lambda total: _Meter(progress, total), resume)

    def _fetch(
        self,
        bucket: str,
        key: str,
        target: Path,
        meter_for: Callable[[int], _Meter],
        resume: bool = False,
        stop: threading.Event | None = None,
        listed: tuple[int, str] | None = None,
    ) -> Path:
        """Download one object to ``target``; ``meter_for(size)`` counts its bytes. On a
        folder's thread (``stop`` given), a retry's pause gives up once ``stop`` is set.
        ``listed``: its ``(size, etag)`` as a listing gave them (no HEAD is sent then)."""
        what = f"download of {bucket}/{key}"
        head = listed if listed is not None else self._head(bucket, key, what, stop)
        kept = _resumable(resume, target, head, self._part_size)
        if kept is not None and head is not None:
            kept.open()
            try:
                meter = meter_for(head[0])
                self._download_parts(bucket, key, str(kept.partial), head, what, meter, kept)
            except BaseException as exc:
                exc.add_note(kept.kept(_part_count(head[0], self._part_size)))
                raise
            kept.complete()
            return target
        partial = _partial(target)
        try:
            if head is not None and head[0] > self._part_size:
                self._download_parts(bucket, key, partial, head, what, meter_for(head[0]))
            else:
                self._download_whole(bucket, key, partial, head, what, meter_for, stop)
            os.replace(partial, target)
        except BaseException:
            os.unlink(partial)
            raise
        return target

    def _download_whole(
        self,
        bucket: str,
        key: str,
        partial: str,
        head: tuple[int, str] | None,
        what: str,
        meter_for: Callable[[int], _Meter],
        stop: threading.Event | None = None,
    ) -> None:
        import httpx

        whole = _WholeDownload(self._requests, bucket, key, head, what, meter_for)
        with open(partial, "wb") as file:
            while True:
                file.seek(0)
                file.truncate()
                try:
                    request = whole.request
                    with self._client().stream(
                        "GET", request.url, headers=dict(request.headers)
                    ) as answer:
                        if answer.status_code == 200:
                            whole.started(answer)
                            got = 0
                            for chunk in answer.iter_bytes(1 << 20):
                                file.write(chunk)
                                got += len(chunk)
                                whole.reached(got)
                            return
                        answer.read()
                        pause = whole.retry.refused(answer)
                except httpx.HTTPError as exc:
                    pause = whole.retry.failed(exc)
                _pause(whole.retry, pause, stop)
                whole.again()

    def _download_parts(
        self,
        bucket: str,
        key: str,
        partial: str,
        head: tuple[int, str],
        what: str,
        meter: _Meter,
        kept: _Resumable | None = None,
    ) -> None:
        import httpx

        total, etag = head

        count = _part_count(total, self._part_size)

        def fetch(index: int, stop: threading.Event) -> None:
            if kept is not None and index in kept.done:
                return  # a download before this one got it
            offset, length = _part_bounds(total, self._part_size, index)
            request = _range_request(self._requests, bucket, key, offset, length, etag)
            part = _part_what(what, index, count)
            retry = self._requests.retry(request, part, _download_failure)
            while True:  # an attempt that fails writes its bytes again, where they go
                got = 0
                try:
                    with self._client().stream(
                        "GET", request.url, headers=dict(request.headers)
                    ) as answer:
                        if answer.status_code == 206:
                            for chunk in answer.iter_bytes(1 << 20):
                                _write_at(fd, chunk, offset + got)
                                got += len(chunk)
                            _check_part(part, offset, got, length)
                            if kept is not None:
                                kept.landed(index, fd)
                            return
                        answer.read()
                        pause = retry.refused(answer)
                except httpx.HTTPError as exc:
                    pause = retry.failed(exc)
                _pause(retry, pause, stop)
                request = self._requests.resigned(request)

        fd = os.open(partial, os.O_WRONLY)
        try:
            os.ftruncate(fd, total)
            sizes = [_part_bounds(total, self._part_size, i)[1] for i in range(count)]
            self._in_parallel(count, fetch, sizes.__getitem__, meter)
        finally:
            os.close(fd)

    def ls(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` that starts with ``prefix``, in the store's order."""
        _check_names(bucket)
        return [listed.key for listed in self._run(_ls(self._requests, bucket, prefix))]

    def exists(self, bucket: str, key: str) -> bool:
        """Whether ``key`` is in ``bucket`` (a missing bucket is a StorageError)."""
        _check_names(bucket, key)
        return bool(self._run(_exists(self._requests, bucket, key)))

    def rm(self, bucket: str, key: str) -> None:
        """Delete ``key`` from ``bucket`` (nothing happens if it is not there)."""
        _check_names(bucket, key)
        self._run(_rm(self._requests, bucket, key))


def _sized(answer: _Answer) -> tuple[int, str] | None:
    if answer.status_code != 200:
        return None
    try:
        size = int(answer.headers["content-length"])
    except (KeyError, ValueError):
        return None
    return size, answer.headers.get("etag", "")


def _total(head: tuple[int, str] | None, answer: _Answer) -> int:
    """The size a whole GET brings: as HEAD said, else as its own answer says."""
    if head is not None:
        return head[0]
    try:
        return int(answer.headers.get("content-length", "0"))
    except ValueError:
        return 0


class AsyncStorageClient:
    """A trio client of one :class:`Storage`, from ``async with storage as s3``: the
    methods of :class:`StorageClient`, awaited. Files are read and written in trio's
    worker threads; ``progress`` functions are called on the trio thread."""

    def __init__(
        self,
        storage: Storage,
        keys: tuple[str, str],
        part_size: int | None = None,
        in_flight: int | None = None,
    ) -> None:
        self._requests = _Requests(storage, keys)
        self._part_size = storage.part_size if part_size is None else part_size
        self._in_flight = storage.parts_in_flight if in_flight is None else in_flight
        self._http: httpx.AsyncClient | None = None

    def _open(self) -> None:
        import httpx

        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError(_CLOSED)
        return self._http

    async def _send(self, request: _Request, what: str, ok: Container[int]) -> _Answer:
        """Send ``request`` until its answer's status is in ``ok``, retrying as
        :class:`_Retry` says; the pauses are ``trio.sleep`` (a cancel ends them)."""
        import httpx
        import trio

        retry = self._requests.retry(request, what)
        while True:
            try:
                answer = await self._client().request(
                    request.method,
                    request.url,
                    headers=dict(request.headers),
                    content=request.body,
                )
            except httpx.HTTPError as exc:
                pause = retry.failed(exc)
            else:
                ready = retry.answered(answer, ok)
                if ready is None:
                    return answer
                pause = ready
            await trio.sleep(pause)
            # Signing hashes the body (a part's 64 MiB): off the trio thread.
            request = await trio.to_thread.run_sync(self._requests.resigned, request)

    async def _run(self, operation: _Operation, meter: _Meter | None = None) -> Any:
        import trio

        answer: Any = None
        failure: BaseException | None = None
        # Once cancelled, the operation's last steps (an upload's abort) run shielded: the
        # parts already sent would be billed until the upload is aborted.
        shielded = False
        while True:
            with trio.CancelScope(shield=shielded):
                # The operation reads the file it uploads: off the trio thread.
                finished, step = await trio.to_thread.run_sync(_step, operation, answer, failure)
            if finished:
                return step
            answer, failure = None, None
            try:
                with trio.CancelScope(shield=shielded):
                    if isinstance(step, _Parts):
                        answer = await self._in_parallel(
                            step.count, self._part_sender(step), step.size, meter
                        )
                    else:
                        answer = await self._send(*step)
            except (StorageError, RuntimeError) as exc:
                failure = exc
            except BaseException as exc:  # cancelled: raised in the operation, which cleans up
                failure, shielded = exc, True

    def _part_sender(self, parts: _Parts) -> Callable[[int], Awaitable[Any]]:
        import trio

        async def send(index: int) -> Any:
            if index in parts.kept:
                return parts.kept[index]
            request = await trio.to_thread.run_sync(parts.build, index)
            what = _part_what(parts.what, index, parts.count)
            return parts.result(index, await self._send(request, what, parts.ok))

        return send

    async def _in_parallel(
        self,
        count: int,
        work: Callable[[int], Awaitable[Any]],
        size: Callable[[int], int],
        meter: _Meter | None,
    ) -> list[Any]:
        """``[await work(0), ..., await work(count - 1)]``, ``in_flight`` at a time; the
        first failure cancels the others and raises."""
        import trio

        results: list[Any] = [None] * count
        indexes = iter(range(count))
        failed: list[Exception] = []

        async def sender(nursery: trio.Nursery) -> None:
            for index in indexes:  # shared: each part is taken by one sender
                try:
                    results[index] = await work(index)
                    if meter is not None:
                        meter.add(size(index))
                except Exception as exc:
                    failed.append(exc)
                    nursery.cancel_scope.cancel()
                    return

        async with trio.open_nursery() as nursery:
            for _ in range(min(self._in_flight, count)):
                nursery.start_soon(sender, nursery)
        if failed:
            raise failed[0]
        return results

    async def upload(
        self,
        bucket: str,
        local_path: str | os.PathLike[str],
        *,
        key: str | None = None,
        progress: Progress | None = None,
        resume: bool = False,
    ) -> str:
        """Upload the file ``local_path`` as ``key`` (default: the file's name); returns the key.

        A folder goes up file by file under the prefix ``key`` (default: the folder's
        name), and the prefix, ending in ``/``, is returned. ``progress``, if given, is
        called with ``(bytes sent, bytes in all)`` as parts go up. ``resume=True`` keeps
        the parts of a multipart upload cut short (rather than aborting it), continues one
        that an upload of the same file kept (see :class:`_KeptUpload`), and sends no file
        already up (its key holds an object of its size with the ETag this client's upload
        of it gives: see :func:`_not_up`)."""
        import trio

        _check_progress("upload", progress)
        _check_resume("upload", resume)
        folder = Path(await trio.Path(local_path).expanduser())
        if await trio.Path(folder).is_dir():
            prefix = _folder_prefix(folder, key)
            _check_names(bucket, prefix)
            files = await trio.to_thread.run_sync(_tree, folder)
            meter = _Meter(progress, sum(size for _, _, size in files))
            if resume:
                there = await self._run(_ls(self._requests, bucket, prefix))
                part_size = self._part_size
                files, up = await trio.to_thread.run_sync(_not_up, files, there, prefix, part_size)
                meter.add(up)
            small, large = _one_part(files, lambda file: file[2], self._part_size)

            async def one(index: int) -> None:
                path, relative, size = small[index]
                part_size = self._part_size
                await self._run(
                    _upload(self._requests, bucket, path, prefix + relative, part_size, size)
                )

            if small:
                await self._in_parallel(len(small), one, lambda index: small[index][2], meter)
            for path, relative, size in large:
                await self._upload_one(
                    bucket, path, prefix + relative, size, meter, resume, checked=resume
                )
            return prefix
        path, key = _source(local_path, key)
        _check_names(bucket, key)
        total = (await trio.Path(path).stat()).st_size
        return await self._upload_one(bucket, path, key, total, _Meter(progress, total), resume)

    async def _upload_one(
        self,
        bucket: str,
        path: Path,
        key: str,
        size: int,
        meter: _Meter,
        resume: bool,
        checked: bool = False,
    ) -> str:
        before = meter.done
        r, part_size = self._requests, self._part_size
        operation = _upload(r, bucket, path, key, part_size, size, resume, checked)
        done = str(await self._run(operation, meter))
        meter.settle(before, size)
        return done

    async def download(
        self,
        bucket: str,
        key: str,
        local_path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        resume: bool = False,
    ) -> Path:
        """Download ``key`` to ``local_path`` (its folder is made); returns the path.

        A ``key`` ending in ``/`` is a folder: every object under it comes down to the
        same path under the folder ``local_path``. An object larger than a part comes
        down in parts, several at once. ``progress``, if given, is called with ``(bytes
        received, bytes in all)`` as they arrive. ``resume=True`` keeps the parts of a
        download cut short, and continues from those a download of the same version of
        the object kept."""
        import trio

        _check_names(bucket, key)
        _check_progress("download", progress)
        _check_resume("download", resume)
        self._client()
        target = Path(await trio.Path(local_path).expanduser())
        if key.endswith("/"):
            listed = await self._run(_ls(self._requests, bucket, key))
            plan = _folder_plan(bucket, key, listed, target)
            meter = _Meter(progress, sum(listed.size for listed, _ in plan))
            small, large = _one_part(plan, lambda item: item[0].size, self._part_size)

            async def one(index: int) -> None:
                listed, path = small[index]
                # Counted once whole (by _in_parallel), not as it comes.
                await self._fetch(bucket, listed.key, path, _uncounted, False, listed.head)

            if small:
                await self._in_parallel(len(small), one, lambda index: small[index][0].size, meter)
            for listed, path in large:
                # A HEAD first, as for one object: its parts ask for the version it names.
                await self._fetch(bucket, listed.key, path, lambda _: meter, resume)
            return target
        meter_for = functools.partial(_Meter, progress)
        return await self._fetch(bucket, key, target, meter_for, resume)

    async def _fetch(
        self,
        bucket: str,
        key: str,
        target: Path,
        meter_for: Callable[[int], _Meter],
        resume: bool = False,
        listed: tuple[int, str] | None = None,
    ) -> Path:
        """Download one object to ``target``; ``meter_for(size)`` counts its bytes.
        ``listed``: its ``(size, etag)`` as a listing gave them (no HEAD is sent then)."""
        import trio

        what = f"download of {bucket}/{key}"
        head = listed
        if head is None:
            request = self._requests.request("HEAD", bucket, key)
            head = _sized(await self._send(request, what, _FINAL))
        kept = _resumable(resume, target, head, self._part_size)
        if kept is not None and head is not None:
            await trio.to_thread.run_sync(kept.open)
            try:
                meter = meter_for(head[0])
                partial_path = str(kept.partial)
                await self._download_parts(bucket, key, partial_path, head, what, meter, kept)
            except BaseException as exc:
                exc.add_note(kept.kept(_part_count(head[0], self._part_size)))
                raise
            await trio.to_thread.run_sync(kept.complete)
            return target
        partial = await trio.to_thread.run_sync(_partial, target)
        try:
            if head is not None and head[0] > self._part_size:
                await self._download_parts(bucket, key, partial, head, what, meter_for(head[0]))
            else:
                await self._download_whole(bucket, key, partial, head, what, meter_for)
            os.replace(partial, target)
        except BaseException:
            os.unlink(partial)
            raise
        return target

    async def _download_whole(
        self,
        bucket: str,
        key: str,
        partial: str,
        head: tuple[int, str] | None,
        what: str,
        meter_for: Callable[[int], _Meter],
    ) -> None:
        import httpx
        import trio

        whole = _WholeDownload(self._requests, bucket, key, head, what, meter_for)
        async with await trio.open_file(partial, "wb") as file:
            while True:
                await file.seek(0)
                await file.truncate()
                try:
                    request = whole.request
                    async with self._client().stream(
                        "GET", request.url, headers=dict(request.headers)
                    ) as answer:
                        if answer.status_code == 200:
                            whole.started(answer)
                            got = 0
                            async for chunk in answer.aiter_bytes(1 << 20):
                                await file.write(chunk)
                                got += len(chunk)
                                whole.reached(got)
                            return
                        await answer.aread()
                        pause = whole.retry.refused(answer)
                except httpx.HTTPError as exc:
                    pause = whole.retry.failed(exc)
                await trio.sleep(pause)
                whole.again()

    async def _download_parts(
        self,
        bucket: str,
        key: str,
        partial: str,
        head: tuple[int, str],
        what: str,
        meter: _Meter,
        kept: _Resumable | None = None,
    ) -> None:
        import httpx
        import trio

        total, etag = head
        count = _part_count(total, self._part_size)

        async def fetch(index: int) -> None:
            if kept is not None and index in kept.done:
                return  # a download before this one got it
            offset, length = _part_bounds(total, self._part_size, index)
            request = _range_request(self._requests, bucket, key, offset, length, etag)
            part = _part_what(what, index, count)
            retry = self._requests.retry(request, part, _download_failure)
            while True:  # an attempt that fails writes its bytes again, where they go
                got = 0
                try:
                    async with self._client().stream(
                        "GET", request.url, headers=dict(request.headers)
                    ) as answer:
                        if answer.status_code == 206:
                            async for chunk in answer.aiter_bytes(1 << 20):
                                await trio.to_thread.run_sync(_write_at, fd, chunk, offset + got)
                                got += len(chunk)
                            _check_part(part, offset, got, length)
                            if kept is not None:
                                await trio.to_thread.run_sync(kept.landed, index, fd)
                            return
                        await answer.aread()
                        pause = retry.refused(answer)
                except httpx.HTTPError as exc:
                    pause = retry.failed(exc)
                await trio.sleep(pause)
                request = self._requests.resigned(request)

        fd = await trio.to_thread.run_sync(os.open, partial, os.O_WRONLY)
        try:
            await trio.to_thread.run_sync(os.ftruncate, fd, total)
            sizes = [_part_bounds(total, self._part_size, i)[1] for i in range(count)]
            await self._in_parallel(count, fetch, sizes.__getitem__, meter)
        finally:
            os.close(fd)

    async def ls(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` that starts with ``prefix``, in the store's order."""
        _check_names(bucket)
        return [listed.key for listed in await self._run(_ls(self._requests, bucket, prefix))]

    async def exists(self, bucket: str, key: str) -> bool:
        """Whether ``key`` is in ``bucket`` (a missing bucket is a StorageError)."""
        _check_names(bucket, key)
        return bool(await self._run(_exists(self._requests, bucket, key)))

    async def rm(self, bucket: str, key: str) -> None:
        """Delete ``key`` from ``bucket`` (nothing happens if it is not there)."""
        _check_names(bucket, key)
        await self._run(_rm(self._requests, bucket, key))


#: The presets by the names ``skyward.toml`` uses (``storage = { kind = "r2", ... }``).
PRESETS: dict[str, Callable[..., Storage]] = {
    "s3": S3,
    "r2": R2,
    "gcs": GCS,
    "wasabi": Wasabi,
    "backblaze": Backblaze,
    "hyperstack": Hyperstack,
}
