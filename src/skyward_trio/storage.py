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
import os
import tempfile
import types
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
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
    "Storage",
    "StorageClient",
    "StorageError",
    "Wasabi",
]

#: A key, or a function that returns one (awaitable for ``async with`` only).
Credential: TypeAlias = "str | Callable[[], str | Awaitable[str]]"

#: Files larger than this go up in parts of this size (S3 takes 5 MiB .. 5 GiB per part).
PART_SIZE = 64 * 1024 * 1024
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


def _listed(content: bytes) -> tuple[list[str], str | None]:
    root = ElementTree.fromstring(content)
    ns = _S3_NS if root.tag.startswith(_S3_NS) else ""
    keys = [item.findtext(f"{ns}Key") or "" for item in root.findall(f"{ns}Contents")]
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


def _chunks(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(size):
            yield chunk


def _source(local_path: str | os.PathLike[str], key: str | None) -> tuple[Path, str]:
    path = Path(local_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"upload(local_path={str(local_path)!r}): no such file here")
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"key={key!r}: pass an object's key, or leave it out for the file's name")
    return path, key if key is not None else path.name


# --- operations (sans I/O) ------------------------------------------------------------------
#
# Each operation is a generator: it yields the requests to send, each with the statuses it
# accepts, is sent back the answer, and returns the result. The blocking and the trio
# client only drive them (downloads, which stream into a file, excepted).

_Answer: TypeAlias = "httpx.Response"
_Operation: TypeAlias = "Generator[tuple[_Request, str, tuple[int, ...]], _Answer, Any]"


def _upload(r: _Requests, bucket: str, path: Path, key: str, part_size: int) -> _Operation:
    what = f"upload of {path} to {bucket}/{key}"
    if path.stat().st_size <= part_size:
        yield r.request("PUT", bucket, key, body=path.read_bytes()), what, (200,)
        return key
    started = yield r.request("POST", bucket, key, query={"uploads": ""}), what, (200,)
    upload = _upload_id(started.content)
    try:
        etags = []
        for number, chunk in enumerate(_chunks(path, part_size), 1):
            query = {"partNumber": str(number), "uploadId": upload}
            part = yield r.request("PUT", bucket, key, query=query, body=chunk), what, (200,)
            etags.append(part.headers.get("etag", ""))
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
    keys: list[str] = []
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

    def __init__(self, storage: Storage, keys: tuple[str, str], part_size: int = PART_SIZE) -> None:
        self._requests = _Requests(storage, keys)
        self._part_size = part_size
        self._http: httpx.Client | None = None

    def _open(self) -> None:
        import httpx

        self._http = httpx.Client(timeout=httpx.Timeout(60, connect=10))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _run(self, operation: _Operation) -> Any:
        import httpx

        answer: Any = None
        failure: BaseException | None = None
        while True:
            finished, step = _step(operation, answer, failure)
            if finished:
                return step
            request, what, ok = step
            answer, failure = None, None
            if self._http is None:
                failure = RuntimeError(_CLOSED)
                continue
            try:
                answer = self._http.request(
                    request.method, request.url, headers=dict(request.headers), content=request.body
                )
            except httpx.HTTPError as exc:
                failure = StorageError(f"{what} failed: {type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                continue
            if answer.status_code not in ok:
                failure = _failure(answer, what)

    def upload(
        self, bucket: str, local_path: str | os.PathLike[str], *, key: str | None = None
    ) -> str:
        """Upload the file ``local_path`` as ``key`` (default: the file's name); returns the key."""
        path, key = _source(local_path, key)
        _check_names(bucket, key)
        return str(self._run(_upload(self._requests, bucket, path, key, self._part_size)))

    def download(self, bucket: str, key: str, local_path: str | os.PathLike[str]) -> Path:
        """Download ``key`` to ``local_path`` (its folder is made); returns the path."""
        import httpx

        _check_names(bucket, key)
        if self._http is None:
            raise RuntimeError(_CLOSED)
        target = Path(local_path).expanduser()
        request = self._requests.request("GET", bucket, key)
        what = f"download of {bucket}/{key}"
        partial = _partial(target)
        try:
            with (
                open(partial, "wb") as file,
                self._http.stream("GET", request.url, headers=dict(request.headers)) as answer,
            ):
                if answer.status_code != 200:
                    answer.read()
                    raise _failure(answer, what)
                for chunk in answer.iter_bytes(1 << 20):
                    file.write(chunk)
            os.replace(partial, target)
        except httpx.HTTPError as exc:
            os.unlink(partial)
            raise StorageError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            os.unlink(partial)
            raise
        return target

    def ls(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` that starts with ``prefix``, in the store's order."""
        _check_names(bucket)
        return list(self._run(_ls(self._requests, bucket, prefix)))

    def exists(self, bucket: str, key: str) -> bool:
        """Whether ``key`` is in ``bucket`` (a missing bucket is a StorageError)."""
        _check_names(bucket, key)
        return bool(self._run(_exists(self._requests, bucket, key)))

    def rm(self, bucket: str, key: str) -> None:
        """Delete ``key`` from ``bucket`` (nothing happens if it is not there)."""
        _check_names(bucket, key)
        self._run(_rm(self._requests, bucket, key))


class AsyncStorageClient:
    """A trio client of one :class:`Storage`, from ``async with storage as s3``: the
    methods of :class:`StorageClient`, awaited. Files are read and written in trio's
    worker threads."""

    def __init__(self, storage: Storage, keys: tuple[str, str], part_size: int = PART_SIZE) -> None:
        self._requests = _Requests(storage, keys)
        self._part_size = part_size
        self._http: httpx.AsyncClient | None = None

    def _open(self) -> None:
        import httpx

        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _run(self, operation: _Operation) -> Any:
        import httpx
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
            request, what, ok = step
            answer, failure = None, None
            if self._http is None:
                failure = RuntimeError(_CLOSED)
                continue
            try:
                with trio.CancelScope(shield=shielded):
                    answer = await self._http.request(
                        request.method,
                        request.url,
                        headers=dict(request.headers),
                        content=request.body,
                    )
            except httpx.HTTPError as exc:
                failure = StorageError(f"{what} failed: {type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                continue
            except BaseException as exc:  # cancelled: raised in the operation, which cleans up
                failure, shielded = exc, True
                continue
            if answer.status_code not in ok:
                failure = _failure(answer, what)

    async def upload(
        self, bucket: str, local_path: str | os.PathLike[str], *, key: str | None = None
    ) -> str:
        """Upload the file ``local_path`` as ``key`` (default: the file's name); returns the key."""
        path, key = _source(local_path, key)
        _check_names(bucket, key)
        return str(await self._run(_upload(self._requests, bucket, path, key, self._part_size)))

    async def download(self, bucket: str, key: str, local_path: str | os.PathLike[str]) -> Path:
        """Download ``key`` to ``local_path`` (its folder is made); returns the path."""
        import httpx
        import trio

        _check_names(bucket, key)
        if self._http is None:
            raise RuntimeError(_CLOSED)
        target = Path(await trio.Path(local_path).expanduser())
        request = self._requests.request("GET", bucket, key)
        what = f"download of {bucket}/{key}"
        partial = await trio.to_thread.run_sync(_partial, target)
        try:
            async with (
                await trio.open_file(partial, "wb") as file,
                self._http.stream("GET", request.url, headers=dict(request.headers)) as answer,
            ):
                if answer.status_code != 200:
                    await answer.aread()
                    raise _failure(answer, what)
                async for chunk in answer.aiter_bytes(1 << 20):
                    await file.write(chunk)
            os.replace(partial, target)
        except httpx.HTTPError as exc:
            os.unlink(partial)
            raise StorageError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            os.unlink(partial)
            raise
        return target

    async def ls(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` that starts with ``prefix``, in the store's order."""
        _check_names(bucket)
        return list(await self._run(_ls(self._requests, bucket, prefix)))

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
