"""Object storage: a small S3-compatible client, ``with sky.storage.S3(...) as s3:``.

A :class:`Storage` is a frozen record of where a bucket store is and how to sign for it.
``with storage as s3`` opens a blocking client; ``async with storage as s3`` opens one for
trio, whose methods are awaited. Both have ``upload``, ``download``, ``ls``, ``exists`` and
``rm``. Requests are signed with AWS Signature Version 4 (which S3, R2, GCS's XML API,
Wasabi and Backblaze B2 all take); files larger than one part go up as a multipart upload
that is aborted if it fails, and downloads land in a temporary file renamed into place,
so a failed one leaves nothing half-written.

It works the same on your machine and inside a function on a node, where the presets
read their keys from the node's environment (``Image(env=...)``).

Layer 1: stdlib and attrs; httpx is imported when a client opens, so importing Skyward on
a node stays light.
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import hmac
import inspect
import itertools
import os
import tempfile
import types
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

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
    "Progress",
    "Storage",
    "StorageClient",
    "StorageError",
    "Wasabi",
]

#: A key, or a function that returns one (awaitable for ``async with`` only).
Credential: TypeAlias = "str | Callable[[], str | Awaitable[str]]"

#: Called as a transfer goes with ``(bytes done, bytes in all)``: ``(0, total)`` first and
#: ``(total, total)`` once all are there.
Progress: TypeAlias = "Callable[[int, int], object]"

#: Files larger than this go up (and objects larger than this come down) in parts of this
#: size (S3 takes 5 MiB .. 5 GiB per part).
PART_SIZE = 64 * 1024 * 1024
#: Parts of one upload or download in flight at once. An upload holds each in memory.
PARTS_IN_FLIGHT = 4
_PAGE = 1000  # keys per ListObjectsV2 page, S3's own most
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


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
    """

    endpoint: str
    access_key: Credential | None = attrs.field(default=None, repr=False)
    secret_key: Credential | None = attrs.field(default=None, repr=False)
    path_style: bool = False
    region: str = "us-east-1"

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

    def __enter__(self) -> StorageClient:
        client = StorageClient(self, _keys(self, awaitable=False))
        client._open()
        _push(self, client)
        return client

    def __exit__(self, *exc: object) -> None:
        _pop(self).close()

    async def __aenter__(self) -> AsyncStorageClient:
        client = AsyncStorageClient(self, await resolved_keys(self))
        client._open()
        _push(self, client)
        return client

    async def __aexit__(self, *exc: object) -> None:
        await _pop(self).aclose()


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
    (awaited when they return an awaitable), or read from the environment."""
    keys = _keys(storage, awaitable=True)
    access, secret = [await k if inspect.isawaitable(k) else k for k in keys]
    return str(access), str(secret)


def _keys(storage: Storage, *, awaitable: bool) -> tuple[Any, Any]:
    found = []
    for arg, given, env in (
        ("access_key", storage.access_key, "AWS_ACCESS_KEY_ID"),
        ("secret_key", storage.secret_key, "AWS_SECRET_ACCESS_KEY"),
    ):
        value: Any = given() if callable(given) else given
        if value is None:
            value = os.environ.get(env)
        if value is None:
            raise ValueError(
                f"Storage({arg}=None) and {env} is not set: pass {arg}=..., or set {env} "
                "(on a node: Image(env=...))"
            )
        if inspect.isawaitable(value) and not awaitable:
            if inspect.iscoroutine(value):
                value.close()  # never to be awaited: say so to Python, not just to the user
            raise TypeError(
                f"Storage({arg}=...): its function returned an awaitable; use `async with` "
                "(trio), or pass a function that returns the key"
            )
        found.append(value)
    return found[0], found[1]


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


def S3(
    *,
    region: str = "us-east-1",
    access_key: Credential | None = None,
    secret_key: Credential | None = None,
    endpoint: str | None = None,
) -> Storage:
    """Amazon S3 in ``region``; keys from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    unless given. ``endpoint`` points it elsewhere (an S3-compatible store, path style)."""
    if endpoint is not None:
        return _path_style(endpoint, access_key, secret_key, region)
    return Storage(
        endpoint=f"https://s3.{region}.amazonaws.com",
        access_key=access_key,
        secret_key=secret_key,
        region=region,
    )


def R2(*, account_id: str, access_key: Credential, secret_key: Credential) -> Storage:
    """Cloudflare R2 of ``account_id``."""
    return _path_style(f"https://{account_id}.r2.cloudflarestorage.com", access_key, secret_key)


def GCS(*, access_key: Credential, secret_key: Credential) -> Storage:
    """Google Cloud Storage through its XML API, with HMAC keys."""
    return _path_style("https://storage.googleapis.com", access_key, secret_key)


def Wasabi(*, region: str, access_key: Credential, secret_key: Credential) -> Storage:
    """Wasabi in ``region``."""
    return _path_style(f"https://s3.{region}.wasabisys.com", access_key, secret_key, region)


def Backblaze(*, region: str, key_id: Credential, app_key: Credential) -> Storage:
    """Backblaze B2's S3-compatible API in ``region`` (e.g. ``"us-west-004"``)."""
    return _path_style(f"https://s3.{region}.backblazeb2.com", key_id, app_key, region)


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


def _check_names(bucket: object, key: object = "x") -> None:
    if not isinstance(bucket, str) or not bucket or "/" in bucket:
        raise ValueError(f"bucket={bucket!r}: pass a bucket's name, e.g. 'my-data'")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key={key!r}: pass an object's key, e.g. 'checkpoints/model.pt'")


def _failure(response: httpx.Response, what: str) -> StorageError:
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
        f"{what} failed: HTTP {response.status_code} {detail}".rstrip(),
        status=response.status_code,
        code=code,
    )


def _listed(content: bytes) -> tuple[list[tuple[str, int]], str | None]:
    """One page of a listing: ``(key, size)`` of each object, and the next page's token."""
    root = ElementTree.fromstring(content)
    ns = _S3_NS if root.tag.startswith(_S3_NS) else ""
    keys = [
        (item.findtext(f"{ns}Key") or "", int(item.findtext(f"{ns}Size") or 0))
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
    bucket: str, prefix: str, listed: list[tuple[str, int]], folder: Path
) -> list[tuple[str, int, Path]]:
    """What a folder's download brings: ``(key, size, local path)`` of each object under
    ``prefix``. Keys ending in ``/`` (folder markers) are skipped.

    Raises:
        StorageError: Nothing is under ``prefix``, or a key would land outside ``folder``.
    """
    plan = []
    for key, size in listed:
        relative = key[len(prefix) :]
        if not relative or key.endswith("/"):
            continue
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise StorageError(
                f"download of {bucket}/{prefix} failed: the key {key!r} does not name a file "
                f"under {folder} (an empty, '.' or '..' part); download it by itself"
            )
        plan.append((key, size, folder.joinpath(*parts)))
    if not plan:
        raise StorageError(
            f"download of {bucket}/{prefix} failed: no object's key starts with {prefix!r}",
            status=404,
            code="NoSuchKey",
        )
    return plan


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
        result: What the operation wants of each answer.
        what: The operation, for errors.
        ok: The statuses a part's answer may have.
    """

    count: int
    build: Callable[[int], _Request]
    size: Callable[[int], int]
    result: Callable[[_Answer], Any]
    what: str
    ok: tuple[int, ...] = (200,)


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


def _unanswered(what: str, exc: Exception) -> StorageError:
    """The error of a request that got no answer (the connection failed, or timed out)."""
    return StorageError(f"{what} failed: {type(exc).__name__}: {exc}")


def _range_failure(answer: _Answer, what: str) -> StorageError:
    if answer.status_code == 412:
        return StorageError(
            f"{what} failed: the object changed while it came down; download it again",
            status=412,
            code="PreconditionFailed",
        )
    if answer.status_code == 200:
        return StorageError(f"{what} failed: the store sent the whole object for a byte range")
    return _failure(answer, what)


def _short_part(what: str, offset: int, got: int, length: int) -> StorageError:
    return StorageError(
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

_Operation: TypeAlias = "Generator[tuple[_Request, str, tuple[int, ...]] | _Parts, Any, Any]"


def _upload(
    r: _Requests, bucket: str, path: Path, key: str, part_size: int, total: int
) -> _Operation:
    what = f"upload of {path} to {bucket}/{key}"
    if total <= part_size:
        yield r.request("PUT", bucket, key, body=path.read_bytes()), what, (200,)
        return key
    started = yield r.request("POST", bucket, key, query={"uploads": ""}), what, (200,)
    upload = _upload_id(started.content)
    try:

        def part(index: int) -> _Request:
            query = {"partNumber": str(index + 1), "uploadId": upload}
            body = _read_part(path, *_part_bounds(total, part_size, index))
            return r.request("PUT", bucket, key, query=query, body=body)

        etags = yield _Parts(
            count=_part_count(total, part_size),
            build=part,
            size=lambda index: _part_bounds(total, part_size, index)[1],
            result=lambda answer: answer.headers.get("etag", ""),
            what=what,
        )
        body = _complete_body(etags)
        yield r.request("POST", bucket, key, query={"uploadId": upload}, body=body), what, (200,)
    except BaseException:
        # The parts sent so far are billed until the upload is aborted.
        abort = r.request("DELETE", bucket, key, query={"uploadId": upload})
        try:
            yield abort, f"abort of {what}", (200, 204)
        except StorageError:
            pass  # the first error is the one to see
        raise
    return key


def _ls(r: _Requests, bucket: str, prefix: str) -> _Operation:
    """Every ``(key, size)`` under ``prefix``, following the pages."""
    keys: list[tuple[str, int]] = []
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


def _step(operation: _Operation, answer: Any, failure: BaseException | None) -> tuple[bool, Any]:
    """Advance ``operation`` with an answer (or the failure to raise in it): ``(True,
    result)`` once it returns, else ``(False, (request, what, ok))``. The generator's end
    is returned, not raised: a StopIteration cannot cross a thread and a coroutine."""
    try:
        step = operation.throw(failure) if failure is not None else operation.send(answer)
    except StopIteration as done:
        return True, done.value
    return False, step


_CLOSED = "this storage client is closed: use it inside `with storage:` (or `async with`)"


# --- clients --------------------------------------------------------------------------------


class StorageClient:
    """A blocking client of one :class:`Storage`, from ``with storage as s3``."""

    def __init__(
        self,
        storage: Storage,
        keys: tuple[str, str],
        part_size: int = PART_SIZE,
        in_flight: int = PARTS_IN_FLIGHT,
    ) -> None:
        self._requests = _Requests(storage, keys)
        self._part_size = part_size
        self._in_flight = in_flight
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

    def _send(self, request: _Request, what: str, ok: tuple[int, ...]) -> _Answer:
        import httpx

        try:
            answer = self._client().request(
                request.method, request.url, headers=dict(request.headers), content=request.body
            )
        except httpx.HTTPError as exc:
            raise _unanswered(what, exc) from exc
        if answer.status_code not in ok:
            raise _failure(answer, what)
        return answer

    def _run(self, operation: _Operation, meter: _Meter | None = None) -> Any:
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
                    answer = self._send(*step)
            except (StorageError, RuntimeError) as exc:
                failure = exc
            except BaseException as exc:  # Ctrl-C amid the parts: the operation cleans up
                if not isinstance(step, _Parts):
                    raise
                failure = exc

    def _part_sender(self, parts: _Parts) -> Callable[[int], Any]:
        def send(index: int) -> Any:
            return parts.result(self._send(parts.build(index), parts.what, parts.ok))

        return send

    def _in_parallel(
        self,
        count: int,
        work: Callable[[int], Any],
        size: Callable[[int], int],
        meter: _Meter | None,
    ) -> list[Any]:
        """``[work(0), ..., work(count - 1)]``, run in threads, ``in_flight`` at a time; the
        first failure raises once the parts being sent have ended (none more start)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        results: list[Any] = [None] * count
        indexes = iter(range(count))
        with ThreadPoolExecutor(min(self._in_flight, count), "skyward-storage") as threads:
            # Only in_flight at once: an upload's part is read as it starts, and held.
            first = itertools.islice(indexes, self._in_flight)
            running = {threads.submit(work, index): index for index in first}
            try:
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        index = running.pop(future)
                        results[index] = future.result()
                        if meter is not None:
                            meter.add(size(index))
                        for following in itertools.islice(indexes, 1):
                            running[threads.submit(work, following)] = following
            except BaseException:
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
    ) -> str:
        """Upload the file ``local_path`` as ``key`` (default: the file's name); returns the key.

        A folder goes up file by file under the prefix ``key`` (default: the folder's
        name), and the prefix, ending in ``/``, is returned. ``progress``, if given, is
        called with ``(bytes sent, bytes in all)`` as parts go up."""
        _check_progress("upload", progress)
        folder = Path(local_path).expanduser()
        if folder.is_dir():
            prefix = _folder_prefix(folder, key)
            _check_names(bucket, prefix)
            files = _tree(folder)
            meter = _Meter(progress, sum(size for _, _, size in files))
            for path, relative, size in files:
                self._upload_one(bucket, path, prefix + relative, size, meter)
            return prefix
        path, key = _source(local_path, key)
        _check_names(bucket, key)
        total = path.stat().st_size
        return self._upload_one(bucket, path, key, total, _Meter(progress, total))

    def _upload_one(self, bucket: str, path: Path, key: str, size: int, meter: _Meter) -> str:
        before = meter.done
        operation = _upload(self._requests, bucket, path, key, self._part_size, size)
        done = str(self._run(operation, meter))
        meter.settle(before, size)
        return done

    def _head(self, bucket: str, key: str, what: str) -> tuple[int, str] | None:
        """The object's ``(size, etag)``, or None if HEAD does not say (the GET that
        follows then gives the store's reason)."""
        import httpx

        request = self._requests.request("HEAD", bucket, key)
        try:
            answer = self._client().head(request.url, headers=dict(request.headers))
        except httpx.HTTPError as exc:
            raise _unanswered(what, exc) from exc
        return _sized(answer)

    def download(
        self,
        bucket: str,
        key: str,
        local_path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
    ) -> Path:
        """Download ``key`` to ``local_path`` (its folder is made); returns the path.

        A ``key`` ending in ``/`` is a folder: every object under it comes down to the
        same path under the folder ``local_path``. An object larger than a part comes
        down in parts, several at once. ``progress``, if given, is called with ``(bytes
        received, bytes in all)`` as they arrive."""
        _check_names(bucket, key)
        _check_progress("download", progress)
        self._client()
        target = Path(local_path).expanduser()
        if key.endswith("/"):
            plan = _folder_plan(bucket, key, self._run(_ls(self._requests, bucket, key)), target)
            meter = _Meter(progress, sum(size for _, size, _ in plan))
            for object_key, _, path in plan:
                self._fetch(bucket, object_key, path, lambda _: meter)
            return target
        return self._fetch(bucket, key, target, lambda total: _Meter(progress, total))

    def _fetch(
        self, bucket: str, key: str, target: Path, meter_for: Callable[[int], _Meter]
    ) -> Path:
        """Download one object to ``target``; ``meter_for(size)`` counts its bytes."""
        import httpx

        what = f"download of {bucket}/{key}"
        head = self._head(bucket, key, what)
        partial = _partial(target)
        try:
            if head is not None and head[0] > self._part_size:
                self._download_parts(bucket, key, partial, head, what, meter_for(head[0]))
            else:
                self._download_whole(bucket, key, partial, head, what, meter_for)
            os.replace(partial, target)
        except httpx.HTTPError as exc:
            os.unlink(partial)
            raise _unanswered(what, exc) from exc
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
    ) -> None:
        request = self._requests.request("GET", bucket, key)
        with (
            open(partial, "wb") as file,
            self._client().stream("GET", request.url, headers=dict(request.headers)) as answer,
        ):
            if answer.status_code != 200:
                answer.read()
                raise _failure(answer, what)
            meter = meter_for(_total(head, answer))
            for chunk in answer.iter_bytes(1 << 20):
                file.write(chunk)
                meter.add(len(chunk))

    def _download_parts(
        self,
        bucket: str,
        key: str,
        partial: str,
        head: tuple[int, str],
        what: str,
        meter: _Meter,
    ) -> None:
        import httpx

        total, etag = head

        def fetch(index: int) -> None:
            offset, length = _part_bounds(total, self._part_size, index)
            request = _range_request(self._requests, bucket, key, offset, length, etag)
            got = 0
            try:
                with self._client().stream(
                    "GET", request.url, headers=dict(request.headers)
                ) as answer:
                    if answer.status_code != 206:
                        answer.read()
                        raise _range_failure(answer, what)
                    for chunk in answer.iter_bytes(1 << 20):
                        _write_at(fd, chunk, offset + got)
                        got += len(chunk)
            except httpx.HTTPError as exc:
                raise _unanswered(what, exc) from exc
            if got != length:
                raise _short_part(what, offset, got, length)

        fd = os.open(partial, os.O_WRONLY)
        try:
            os.ftruncate(fd, total)
            count = _part_count(total, self._part_size)
            sizes = [_part_bounds(total, self._part_size, i)[1] for i in range(count)]
            self._in_parallel(count, fetch, sizes.__getitem__, meter)
        finally:
            os.close(fd)

    def ls(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` that starts with ``prefix``, in the store's order."""
        _check_names(bucket)
        return [key for key, _ in self._run(_ls(self._requests, bucket, prefix))]

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
        part_size: int = PART_SIZE,
        in_flight: int = PARTS_IN_FLIGHT,
    ) -> None:
        self._requests = _Requests(storage, keys)
        self._part_size = part_size
        self._in_flight = in_flight
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

    async def _send(self, request: _Request, what: str, ok: tuple[int, ...]) -> _Answer:
        import httpx

        try:
            answer = await self._client().request(
                request.method, request.url, headers=dict(request.headers), content=request.body
            )
        except httpx.HTTPError as exc:
            raise _unanswered(what, exc) from exc
        if answer.status_code not in ok:
            raise _failure(answer, what)
        return answer

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
            request = await trio.to_thread.run_sync(parts.build, index)
            return parts.result(await self._send(request, parts.what, parts.ok))

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
    ) -> str:
        """Upload the file ``local_path`` as ``key`` (default: the file's name); returns the key.

        A folder goes up file by file under the prefix ``key`` (default: the folder's
        name), and the prefix, ending in ``/``, is returned. ``progress``, if given, is
        called with ``(bytes sent, bytes in all)`` as parts go up."""
        import trio

        _check_progress("upload", progress)
        folder = Path(await trio.Path(local_path).expanduser())
        if await trio.Path(folder).is_dir():
            prefix = _folder_prefix(folder, key)
            _check_names(bucket, prefix)
            files = await trio.to_thread.run_sync(_tree, folder)
            meter = _Meter(progress, sum(size for _, _, size in files))
            for path, relative, size in files:
                await self._upload_one(bucket, path, prefix + relative, size, meter)
            return prefix
        path, key = _source(local_path, key)
        _check_names(bucket, key)
        total = (await trio.Path(path).stat()).st_size
        return await self._upload_one(bucket, path, key, total, _Meter(progress, total))

    async def _upload_one(self, bucket: str, path: Path, key: str, size: int, meter: _Meter) -> str:
        before = meter.done
        operation = _upload(self._requests, bucket, path, key, self._part_size, size)
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
    ) -> Path:
        """Download ``key`` to ``local_path`` (its folder is made); returns the path.

        A ``key`` ending in ``/`` is a folder: every object under it comes down to the
        same path under the folder ``local_path``. An object larger than a part comes
        down in parts, several at once. ``progress``, if given, is called with ``(bytes
        received, bytes in all)`` as they arrive."""
        import trio

        _check_names(bucket, key)
        _check_progress("download", progress)
        self._client()
        target = Path(await trio.Path(local_path).expanduser())
        if key.endswith("/"):
            listed = await self._run(_ls(self._requests, bucket, key))
            plan = _folder_plan(bucket, key, listed, target)
            meter = _Meter(progress, sum(size for _, size, _ in plan))
            for object_key, _, path in plan:
                await self._fetch(bucket, object_key, path, lambda _: meter)
            return target
        return await self._fetch(bucket, key, target, lambda total: _Meter(progress, total))

    async def _fetch(
        self, bucket: str, key: str, target: Path, meter_for: Callable[[int], _Meter]
    ) -> Path:
        """Download one object to ``target``; ``meter_for(size)`` counts its bytes."""
        import httpx
        import trio

        what = f"download of {bucket}/{key}"
        request = self._requests.request("HEAD", bucket, key)
        try:
            head = _sized(await self._client().head(request.url, headers=dict(request.headers)))
        except httpx.HTTPError as exc:
            raise _unanswered(what, exc) from exc
        partial = await trio.to_thread.run_sync(_partial, target)
        try:
            if head is not None and head[0] > self._part_size:
                await self._download_parts(bucket, key, partial, head, what, meter_for(head[0]))
            else:
                await self._download_whole(bucket, key, partial, head, what, meter_for)
            os.replace(partial, target)
        except httpx.HTTPError as exc:
            os.unlink(partial)
            raise _unanswered(what, exc) from exc
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
        import trio

        request = self._requests.request("GET", bucket, key)
        async with (
            await trio.open_file(partial, "wb") as file,
            self._client().stream("GET", request.url, headers=dict(request.headers)) as answer,
        ):
            if answer.status_code != 200:
                await answer.aread()
                raise _failure(answer, what)
            meter = meter_for(_total(head, answer))
            async for chunk in answer.aiter_bytes(1 << 20):
                await file.write(chunk)
                meter.add(len(chunk))

    async def _download_parts(
        self,
        bucket: str,
        key: str,
        partial: str,
        head: tuple[int, str],
        what: str,
        meter: _Meter,
    ) -> None:
        import httpx
        import trio

        total, etag = head

        async def fetch(index: int) -> None:
            offset, length = _part_bounds(total, self._part_size, index)
            request = _range_request(self._requests, bucket, key, offset, length, etag)
            got = 0
            try:
                async with self._client().stream(
                    "GET", request.url, headers=dict(request.headers)
                ) as answer:
                    if answer.status_code != 206:
                        await answer.aread()
                        raise _range_failure(answer, what)
                    async for chunk in answer.aiter_bytes(1 << 20):
                        await trio.to_thread.run_sync(_write_at, fd, chunk, offset + got)
                        got += len(chunk)
            except httpx.HTTPError as exc:
                raise _unanswered(what, exc) from exc
            if got != length:
                raise _short_part(what, offset, got, length)

        fd = await trio.to_thread.run_sync(os.open, partial, os.O_WRONLY)
        try:
            await trio.to_thread.run_sync(os.ftruncate, fd, total)
            count = _part_count(total, self._part_size)
            sizes = [_part_bounds(total, self._part_size, i)[1] for i in range(count)]
            await self._in_parallel(count, fetch, sizes.__getitem__, meter)
        finally:
            os.close(fd)

    async def ls(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` that starts with ``prefix``, in the store's order."""
        _check_names(bucket)
        return [key for key, _ in await self._run(_ls(self._requests, bucket, prefix))]

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
}
