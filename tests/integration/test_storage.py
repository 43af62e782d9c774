"""``sky.storage`` against moto's S3 server on loopback: both clients, multipart uploads,
paging, errors, retries (through a flaky proxy), and a function on a node writing a
checkpoint."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from flaky_proxy import FlakyProxy
from waiting import wait_until

import skyward as sky
from conftest import boto_s3
from skyward_trio import storage
from skyward_trio.storage import AsyncStorageClient, StorageClient

KEYS = {"access_key": "testing", "secret_key": "testing"}


def _store(endpoint: str) -> sky.storage.Storage:
    return sky.storage.S3(endpoint=endpoint, **KEYS)


def test_upload_ls_exists_download_rm(endpoint: str, bucket: str, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(os.urandom(300_000))
    (tmp_path / "notes v2+.txt").write_text("ü")
    with _store(endpoint) as s3:
        assert s3.upload(bucket, model, key="checkpoints/model.pt") == "checkpoints/model.pt"
        assert s3.upload(bucket, tmp_path / "notes v2+.txt") == "notes v2+.txt"
        assert s3.ls(bucket) == ["checkpoints/model.pt", "notes v2+.txt"]
        assert s3.ls(bucket, prefix="checkpoints/") == ["checkpoints/model.pt"]
        assert s3.exists(bucket, "checkpoints/model.pt")
        assert not s3.exists(bucket, "checkpoints/other.pt")
        got = s3.download(bucket, "checkpoints/model.pt", tmp_path / "out" / "model.pt")
        assert got.read_bytes() == model.read_bytes()
        assert s3.download(bucket, "notes v2+.txt", tmp_path / "n.txt").read_text() == "ü"
        s3.rm(bucket, "checkpoints/model.pt")
        s3.rm(bucket, "checkpoints/model.pt")  # already gone: nothing happens
        assert s3.ls(bucket) == ["notes v2+.txt"]
    # What boto3 reads is what went up.
    body = boto_s3(endpoint).get_object(Bucket=bucket, Key="notes v2+.txt")["Body"].read()
    assert body == "ü".encode()


def test_a_large_file_goes_up_in_parts_of_the_size_asked(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    storage = _store(endpoint).tuned(part_size=5 * 1024 * 1024, parts_in_flight=2)
    with storage as s3:
        s3.upload(bucket, big)
    head = boto_s3(endpoint).head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == big.stat().st_size
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    with _store(endpoint) as s3:  # 64 MiB parts: it comes down whole
        assert s3.download(bucket, "big.bin", tmp_path / "back.bin").read_bytes() == (
            big.read_bytes()
        )


def test_listing_follows_every_page(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    boto = boto_s3(endpoint)
    for n in range(7):
        boto.put_object(Bucket=bucket, Key=f"runs/{n}", Body=b"x")
    monkeypatch.setattr("skyward_trio.storage._PAGE", 3)  # three pages
    with _store(endpoint) as s3:
        assert s3.ls(bucket, prefix="runs/") == [f"runs/{n}" for n in range(7)]


def test_errors_name_the_object_and_the_stores_reason(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    with _store(endpoint) as s3:
        with pytest.raises(sky.storage.StorageError, match="NoSuchKey") as missing:
            s3.download(bucket, "nope.pt", tmp_path / "nope.pt")
        assert missing.value.status == 404
        assert "download of" in str(missing.value)
        assert not (tmp_path / "nope.pt").exists()
        assert list(tmp_path.iterdir()) == []  # nor the partial file
        with pytest.raises(sky.storage.StorageError, match="NoSuchBucket"):
            s3.ls("no-such-bucket-7f3a")
        with pytest.raises(sky.storage.StorageError, match="no bucket 'no-such-bucket-7f3a'"):
            s3.exists("no-such-bucket-7f3a", "k")
        with pytest.raises(FileNotFoundError, match="no such file here"):
            s3.upload(bucket, tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="closed"):
        s3.ls(bucket)


def test_a_store_that_does_not_answer_is_a_storage_error(
    tmp_path: Path, quick_retries: None
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once it closes
    with (
        sky.storage.S3(endpoint=f"http://127.0.0.1:{port}", **KEYS) as s3,
        pytest.raises(
            sky.storage.StorageError,
            match=r"listing of data/ failed after 5 attempts: ConnectError",
        ) as info,
    ):
        s3.ls("data")
    assert info.value.status is None
    store = sky.storage.S3(endpoint=f"http://127.0.0.1:{port}", **KEYS).tuned(attempts=2)
    with (
        store as s3,
        pytest.raises(sky.storage.StorageError, match=r"failed after 2 attempts: ConnectError"),
    ):
        s3.ls("data")


async def test_the_trio_client_does_the_same(endpoint: str, bucket: str, tmp_path: Path) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(12 * 1024 * 1024))

    async def key() -> str:  # an awaitable credential, as a secrets manager would give
        return "testing"

    storage = sky.storage.S3(endpoint=endpoint, access_key=key, secret_key="testing")
    async with storage as s3:
        assert isinstance(s3, AsyncStorageClient)
        assert await s3.upload(bucket, data, key="one/d.bin") == "one/d.bin"
        assert await s3.ls(bucket, prefix="one/") == ["one/d.bin"]
        assert await s3.exists(bucket, "one/d.bin")
        back = await s3.download(bucket, "one/d.bin", tmp_path / "back.bin")
        assert back.read_bytes() == data.read_bytes()
        await s3.rm(bucket, "one/d.bin")
        assert not await s3.exists(bucket, "one/d.bin")
    client = AsyncStorageClient(storage, ("testing", "testing"), part_size=5 * 1024 * 1024)
    client._open()
    try:
        await client.upload(bucket, data, key="parts.bin")
    finally:
        await client.aclose()
    head = boto_s3(endpoint).head_object(Bucket=bucket, Key="parts.bin")
    assert head["ETag"].strip('"').endswith("-3")
    with pytest.raises(TypeError, match="use `async with`"), storage:
        pass


@sky.function
def _checkpoint(endpoint: str, bucket: str) -> list[str]:
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), f"node-{sky.instance_info().node}.pt")
    with open(path, "wb") as file:
        file.write(b"weights")
    # The keys come from the node's environment (Image(env=...)).
    with sky.storage.S3(endpoint=endpoint) as s3:
        s3.upload(bucket, path, key=f"ckpt/{os.path.basename(path)}")
        return s3.ls(bucket, prefix="ckpt/")


def test_a_function_on_a_node_writes_a_checkpoint(endpoint: str, bucket: str) -> None:
    image = sky.Image(env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    options = sky.Options(console="silent")
    with sky.Compute(provider=sky.Local(), nodes=2, image=image, options=options) as pool:
        _checkpoint(endpoint, bucket) @ pool
    listed = boto_s3(endpoint).list_objects_v2(Bucket=bucket, Prefix="ckpt/")
    assert sorted(item["Key"] for item in listed["Contents"]) == [
        "ckpt/node-0.pt",
        "ckpt/node-1.pt",
    ]


def test_a_failed_multipart_upload_is_aborted(endpoint: str, bucket: str, tmp_path: Path) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(3 * 1024 * 1024))
    # Parts under 5 MiB (but the last) are refused when the upload is completed.
    client = StorageClient(_store(endpoint), ("testing", "testing"), part_size=1024 * 1024)
    client._open()
    try:
        with pytest.raises(sky.storage.StorageError, match="EntityTooSmall"):
            client.upload(bucket, data)
    finally:
        client.close()
    boto = boto_s3(endpoint)
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert boto.list_objects_v2(Bucket=bucket).get("Contents", []) == []


async def test_a_failed_trio_multipart_upload_is_aborted(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(3 * 1024 * 1024))
    client = AsyncStorageClient(_store(endpoint), ("testing", "testing"), part_size=1024 * 1024)
    client._open()
    try:
        with pytest.raises(sky.storage.StorageError, match="EntityTooSmall"):
            await client.upload(bucket, data)
    finally:
        await client.aclose()
    assert boto_s3(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


MIB = 1024 * 1024


class _Overlap:
    """Counts the part requests in flight at once (each held a little, so they overlap)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def leave(self) -> None:
        self.now -= 1


def _climbs(calls: list[tuple[int, int]], total: int) -> bool:
    done = [d for d, _ in calls]
    return (
        calls[0] == (0, total)
        and calls[-1] == (total, total)
        and all(t == total for _, t in calls)
        and done == sorted(done)
    )


def test_parts_go_up_and_come_down_several_at_once_with_progress(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    import threading
    import time

    data = tmp_path / "ckpt.bin"
    data.write_bytes(os.urandom(17 * MIB))  # four parts of 5 MiB, the last 2 MiB
    client = StorageClient(_store(endpoint), ("testing", "testing"), part_size=5 * MIB)
    client._open()
    http = client._http
    assert http is not None
    overlap, lock, ranges = _Overlap(), threading.Lock(), []
    send, stream = http.request, http.stream

    def request(method: str, url: str, **kwargs: object) -> object:
        part = "partNumber=" in url
        if part:
            with lock:
                overlap.enter()
            time.sleep(0.3)
        try:
            return send(method, url, **kwargs)  # type: ignore[arg-type]
        finally:
            if part:
                with lock:
                    overlap.leave()

    def streamed(method: str, url: str, *, headers: dict[str, str]) -> object:
        ranges.append(headers.get("range"))
        return stream(method, url, headers=headers)

    http.request = request  # type: ignore[method-assign]
    http.stream = streamed  # type: ignore[method-assign,assignment]
    up: list[tuple[int, int]] = []
    down: list[tuple[int, int]] = []
    try:
        client.upload(bucket, data, progress=lambda done, total: up.append((done, total)))
        assert overlap.most >= 2
        back = client.download(
            bucket, "ckpt.bin", tmp_path / "back.bin", progress=lambda d, t: down.append((d, t))
        )
    finally:
        client.close()
    assert back.read_bytes() == data.read_bytes()
    assert boto_s3(endpoint).head_object(Bucket=bucket, Key="ckpt.bin")["ETag"].endswith('-4"')
    assert sorted(ranges) == sorted(
        f"bytes={n * 5 * MIB}-{min((n + 1) * 5 * MIB, 17 * MIB) - 1}" for n in range(4)
    )
    total = 17 * MIB
    assert _climbs(up, total)
    assert len(up) == 5
    assert _climbs(down, total)
    assert len(down) == 5


async def test_the_trio_client_moves_parts_several_at_once_with_progress(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    import trio

    data = tmp_path / "ckpt.bin"
    data.write_bytes(os.urandom(12 * MIB))
    client = AsyncStorageClient(_store(endpoint), ("testing", "testing"), part_size=5 * MIB)
    client._open()
    http = client._http
    assert http is not None
    overlap, ranges = _Overlap(), []
    send, stream = http.request, http.stream

    async def request(method: str, url: str, **kwargs: object) -> object:
        part = "partNumber=" in url
        if part:
            overlap.enter()
            await trio.sleep(0.3)
        try:
            return await send(method, url, **kwargs)  # type: ignore[arg-type]
        finally:
            if part:
                overlap.leave()

    def streamed(method: str, url: str, *, headers: dict[str, str]) -> object:
        ranges.append(headers.get("range"))
        return stream(method, url, headers=headers)

    http.request = request  # type: ignore[method-assign,assignment]
    http.stream = streamed  # type: ignore[method-assign,assignment]
    up: list[tuple[int, int]] = []
    down: list[tuple[int, int]] = []
    try:
        await client.upload(bucket, data, progress=lambda d, t: up.append((d, t)))
        assert overlap.most >= 2
        back = await client.download(
            bucket, "ckpt.bin", tmp_path / "back.bin", progress=lambda d, t: down.append((d, t))
        )
        # A small object comes down in one request, reported as its chunks arrive.
        small = tmp_path / "small.bin"
        small.write_bytes(b"x" * 1000)
        await client.upload(bucket, small, progress=lambda d, t: up.append((d, t)))
        assert up[-2:] == [(0, 1000), (1000, 1000)]
        ranges.clear()
        one: list[tuple[int, int]] = []
        await client.download(
            bucket, "small.bin", tmp_path / "s.bin", progress=lambda d, t: one.append((d, t))
        )
        assert ranges == [None]
        assert one == [(0, 1000), (1000, 1000)]
    finally:
        await client.aclose()
    assert back.read_bytes() == data.read_bytes()
    assert _climbs(up[:4], 12 * MIB)
    assert len(up) == 6
    assert _climbs(down, 12 * MIB)
    assert len(down) == 4


def test_an_object_that_changes_while_it_comes_down_is_refused(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    boto = boto_s3(endpoint)
    boto.put_object(Bucket=bucket, Key="data.bin", Body=os.urandom(11 * MIB))
    client = StorageClient(_store(endpoint), ("testing", "testing"), part_size=5 * MIB)
    client._open()
    http = client._http
    assert http is not None
    stream = http.stream
    replaced = []
    streams = []
    once = threading.Lock()  # the parts come down in threads: the first replaces it, once

    def streamed(method: str, url: str, *, headers: dict[str, str]) -> object:
        with once:
            if not replaced:  # a new version lands after HEAD, before the parts
                put = boto.put_object(Bucket=bucket, Key="data.bin", Body=b"v2" * MIB)
                replaced.append(put)
        streams.append(headers.get("range"))
        return stream(method, url, headers=headers)

    http.stream = streamed  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(sky.storage.StorageError, match="changed while it came down") as info:
            client.download(bucket, "data.bin", tmp_path / "data.bin")
    finally:
        client.close()
    assert info.value.status == 412
    assert len(streams) == len(set(streams)) <= 3  # no range asked twice: a 412 is final
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial


def test_a_progress_function_that_raises_aborts_the_upload(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(11 * MIB))
    client = StorageClient(_store(endpoint), ("testing", "testing"), part_size=5 * MIB)
    client._open()

    def progress(done: int, total: int) -> None:
        if done:
            raise KeyError("stop here")

    try:
        with pytest.raises(KeyError, match="stop here"):
            client.upload(bucket, data, progress=progress)
        with pytest.raises(TypeError, match=r"upload\(progress=3\): progress is a function"):
            client.upload(bucket, data, progress=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"download\(progress='x'\)"):
            client.download(bucket, "d.bin", tmp_path / "x", progress="x")  # type: ignore[arg-type]
    finally:
        client.close()
    boto = boto_s3(endpoint)
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert boto.list_objects_v2(Bucket=bucket).get("Contents", []) == []


async def test_a_trio_upload_cancelled_amid_its_parts_is_aborted(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    import trio

    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(16 * MIB))
    client = AsyncStorageClient(_store(endpoint), ("testing", "testing"), part_size=5 * MIB)
    client._open()
    http = client._http
    assert http is not None
    send, started = http.request, trio.Event()

    async def request(method: str, url: str, **kwargs: object) -> object:
        if "partNumber=" in url:
            started.set()
            await trio.sleep(30)  # parts that would take long
        return await send(method, url, **kwargs)  # type: ignore[arg-type]

    http.request = request  # type: ignore[method-assign,assignment]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.upload, bucket, data)
            await started.wait()
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    boto = boto_s3(endpoint)
    assert boto.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert boto.list_objects_v2(Bucket=bucket).get("Contents", []) == []


def _checkpoint_folder(root: Path) -> dict[str, bytes]:
    """A folder as save_pretrained writes one: a config, weights in shards, a nested file."""
    files = {
        "config.json": b'{"hidden": 8}',
        "model-00001-of-00002.safetensors": os.urandom(6 * MIB),
        "model-00002-of-00002.safetensors": os.urandom(1000),
        "tokenizer/vocab.txt": "ü\n".encode(),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }


def test_a_folder_goes_up_and_comes_down_by_its_prefix(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    ckpt = tmp_path / "step-100"
    files = _checkpoint_folder(ckpt)
    total = sum(map(len, files.values()))
    client = StorageClient(_store(endpoint), ("testing", "testing"), part_size=5 * MIB)
    client._open()
    up: list[tuple[int, int]] = []
    down: list[tuple[int, int]] = []
    try:
        # By default under the folder's name; a key names the prefix.
        assert client.upload(bucket, ckpt) == "step-100/"
        prefix = client.upload(bucket, ckpt, key="runs/7/", progress=lambda d, t: up.append((d, t)))
        assert prefix == "runs/7/"
        assert client.ls(bucket, prefix="runs/7/") == [f"runs/7/{name}" for name in sorted(files)]
        # The big shard went up in parts.
        head = boto_s3(endpoint).head_object(Bucket=bucket, Key="runs/7/" + sorted(files)[1])
        assert head["ETag"].endswith('-2"')
        back = client.download(
            bucket, "runs/7/", tmp_path / "back", progress=lambda d, t: down.append((d, t))
        )
        assert back == tmp_path / "back"
        assert _read_tree(back) == files
        with pytest.raises(sky.storage.StorageError, match="no object's key starts with 'nope/'"):
            client.download(bucket, "nope/", tmp_path / "nope")
        assert not (tmp_path / "nope").exists()
        # A key that would land outside the folder is refused before anything comes down.
        boto_s3(endpoint).put_object(Bucket=bucket, Key="evil/../../escape", Body=b"x")
        with pytest.raises(sky.storage.StorageError, match="does not name a file under"):
            client.download(bucket, "evil/", tmp_path / "evil")
        with pytest.raises(ValueError, match="a folder goes up under a prefix"):
            client.upload(bucket, ckpt, key="/")
    finally:
        client.close()
    assert _climbs(up, total)
    assert _climbs(down, total)


async def test_the_trio_client_moves_folders_too(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    files = _checkpoint_folder(ckpt)
    async with _store(endpoint) as s3:
        assert await s3.upload(bucket, ckpt, key="a") == "a/"
        back = await s3.download(bucket, "a/", tmp_path / "back")
    assert _read_tree(back) == files


async def test_a_trio_download_cancelled_amid_its_parts_leaves_no_file(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    import trio

    boto_s3(endpoint).put_object(Bucket=bucket, Key="big.bin", Body=os.urandom(11 * MIB))
    client = AsyncStorageClient(_store(endpoint), ("testing", "testing"), part_size=5 * MIB)
    client._open()
    http = client._http
    assert http is not None
    stream, started = http.stream, trio.Event()

    def streamed(method: str, url: str, *, headers: dict[str, str]) -> object:
        started.set()
        return _Stalled(stream(method, url, headers=headers))

    class _Stalled:  # a part whose bytes never come
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __aenter__(self) -> Any:
            await trio.sleep_forever()

        async def __aexit__(self, *exc: object) -> None:
            pass

    http.stream = streamed  # type: ignore[method-assign,assignment]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.download, bucket, "big.bin", tmp_path / "out" / "big.bin")
            await started.wait()
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor its partial


# --- retries ----------------------------------------------------------------------------------
#
# Between the client and moto, a FlakyProxy fails the requests a test scripts. The pauses
# between attempts are made tiny: no test waits for a real backoff, nor times one.


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "RETRY_BASE_DELAY", 0.001)


@pytest.fixture
def proxy(endpoint: str, quick_retries: None) -> Iterator[FlakyProxy]:
    with FlakyProxy(endpoint) as flaky:
        yield flaky


FACES = ["blocking", "trio"]


def _call(
    face: str, endpoint: str, method: str, *args: Any, in_flight: int = 4, **kwargs: Any
) -> Any:
    """``client.method(*args, **kwargs)`` with a client of ``face`` (blocking, or trio's,
    run in a trio of its own) of the store at ``endpoint``, in 5 MiB parts, ``in_flight``
    at a time."""
    keys = ("testing", "testing")
    if face == "blocking":
        client = StorageClient(_store(endpoint), keys, 5 * MIB, in_flight)
        client._open()
        try:
            return getattr(client, method)(*args, **kwargs)
        finally:
            client.close()

    async def main() -> Any:
        client = AsyncStorageClient(_store(endpoint), keys, 5 * MIB, in_flight)
        client._open()
        try:
            return await getattr(client, method)(*args, **kwargs)
        finally:
            await client.aclose()

    return trio.run(main)


def _exact(calls: list[tuple[int, int]], total: int) -> bool:
    """Progress that climbs to ``total`` and reports it once: no byte counted twice."""
    return _climbs(calls, total) and [done for done, _ in calls].count(total) == 1


def _uploads_left(endpoint: str, bucket: str) -> list[Any]:
    return list(boto_s3(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@pytest.mark.parametrize("face", FACES)
def test_a_part_answered_slow_down_is_sent_again(
    face: str, endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "ckpt.bin"
    data.write_bytes(os.urandom(11 * MIB))  # three parts
    proxy.fail("PUT", "partNumber=2", "slow_down")
    up: list[tuple[int, int]] = []
    _call(face, proxy.endpoint, "upload", bucket, data, progress=lambda d, t: up.append((d, t)))
    assert proxy.count("PUT", "partNumber=2") == 2
    assert proxy.count("PUT", "partNumber=1") == proxy.count("PUT", "partNumber=3") == 1
    got = boto_s3(endpoint).get_object(Bucket=bucket, Key="ckpt.bin")
    assert got["ETag"].endswith('-3"')
    assert got["Body"].read() == data.read_bytes()
    assert _exact(up, 11 * MIB)
    assert len(up) == 4  # (0, total), then each part once
    assert _uploads_left(endpoint, bucket) == []


@pytest.mark.parametrize("face", FACES)
def test_a_ranged_get_cut_mid_body_is_fetched_again(
    face: str, endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(11 * MIB)
    boto_s3(endpoint).put_object(Bucket=bucket, Key="big.bin", Body=data)
    proxy.fail("GET", "/big.bin", "cut", skip=1)  # the second of the ranged GETs
    down: list[tuple[int, int]] = []
    back = _call(
        face,
        proxy.endpoint,
        "download",
        bucket,
        "big.bin",
        tmp_path / "back.bin",
        progress=lambda d, t: down.append((d, t)),
    )
    assert proxy.count("HEAD", "/big.bin") == 1
    assert proxy.count("GET", "/big.bin") == 4  # three ranges, one twice
    assert back.read_bytes() == data
    assert _exact(down, 11 * MIB)
    assert len(down) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin"]  # no partial left


async def test_a_whole_get_cut_mid_body_starts_again_and_counts_once(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB + 1234)  # under a part: one GET, reported as MiBs arrive
    boto_s3(endpoint).put_object(Bucket=bucket, Key="small.bin", Body=data)
    proxy.fail("GET", "/small.bin", "cut")
    proxy.fail("GET", "/small.bin", "slow_down")  # and the second attempt is turned away
    down: list[tuple[int, int]] = []
    async with _store(proxy.endpoint) as s3:
        back = await s3.download(
            bucket, "small.bin", tmp_path / "s.bin", progress=lambda d, t: down.append((d, t))
        )
    assert proxy.count("GET", "/small.bin") == 3
    assert back.read_bytes() == data
    assert _exact(down, len(data))


async def test_a_create_multipart_upload_answered_500_is_sent_again(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(6 * MIB))
    proxy.fail("POST", "uploads=", "internal_error")
    client = AsyncStorageClient(_store(proxy.endpoint), ("testing", "testing"), 5 * MIB)
    client._open()
    try:
        assert await client.upload(bucket, data) == "d.bin"
    finally:
        await client.aclose()
    assert proxy.count("POST", "uploads=") == 2
    got = boto_s3(endpoint).get_object(Bucket=bucket, Key="d.bin")
    assert got["Body"].read() == data.read_bytes()
    assert _uploads_left(endpoint, bucket) == []


def test_a_complete_answered_200_with_an_error_is_sent_again(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(6 * MIB))
    # S3 may answer a CompleteMultipartUpload 200 and then fail it: not an upload done.
    proxy.fail("POST", "uploadId=", "internal_error_200")
    assert _call("blocking", proxy.endpoint, "upload", bucket, data) == "d.bin"
    assert proxy.count("POST", "uploadId=") == 2
    got = boto_s3(endpoint).get_object(Bucket=bucket, Key="d.bin")
    assert got["Body"].read() == data.read_bytes()


@pytest.mark.parametrize("face", FACES)
def test_a_part_that_always_fails_fails_the_upload_which_is_aborted(
    face: str, endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(11 * MIB))
    proxy.fail("PUT", "partNumber=2", "slow_down", times=None)
    with pytest.raises(sky.storage.StorageError) as info:
        # One part at a time: no part is cut off on its way when part 2 fails the upload
        # (httpx leaves a request cancelled amid its body to the garbage collector).
        _call(face, proxy.endpoint, "upload", bucket, data, in_flight=1)
    assert str(info.value) == (
        f"upload of {data} to {bucket}/d.bin (part 2 of 3) failed after 5 attempts: "
        "HTTP 503 SlowDown: Please reduce your request rate."
    )
    assert (info.value.status, info.value.code) == (503, "SlowDown")
    assert proxy.count("PUT", "partNumber=2") == 5
    assert proxy.count("PUT", "partNumber=3") == 0  # none started once the upload failed
    assert proxy.count("DELETE", "uploadId=") == 1
    assert _uploads_left(endpoint, bucket) == []
    assert boto_s3(endpoint).list_objects_v2(Bucket=bucket).get("Contents", []) == []


def test_a_part_waiting_to_retry_gives_up_when_another_fails(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(11 * MIB))
    # Part 2 is told to wait 30 s; part 1 is refused for good meanwhile. Part 2 does not
    # wait (nor retry) for an upload that has failed: it gives up, and the upload is
    # aborted at once. (Were it to wait, this test would take 2 minutes, then fail.)
    monkeypatch.setattr(storage, "RETRY_MAX_DELAY", 30.0)
    proxy.fail("PUT", "partNumber=2", "slow_down", times=None, retry_after=30)
    proxy.fail("PUT", "partNumber=1", "access_denied")
    with pytest.raises(sky.storage.StorageError, match=r"\(part 1 of 3\) failed: HTTP 403"):
        _call("blocking", proxy.endpoint, "upload", bucket, data)
    assert proxy.count("PUT", "partNumber=2") == 1
    assert proxy.count("DELETE", "uploadId=") == 1
    assert _uploads_left(endpoint, bucket) == []


def test_answers_that_retrying_cannot_change_are_not_retried(
    proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    with _store(proxy.endpoint) as s3:
        with pytest.raises(sky.storage.StorageError, match="HTTP 404 NoSuchKey") as missing:
            s3.download(bucket, "nope.pt", tmp_path / "nope.pt")
        assert "attempts" not in str(missing.value)
        assert not s3.exists(bucket, "nope.pt")
        proxy.fail("GET", "list-type=2", "access_denied")
        with pytest.raises(sky.storage.StorageError, match="HTTP 403 AccessDenied") as denied:
            s3.ls(bucket)
        assert denied.value.code == "AccessDenied"
    assert proxy.count("HEAD", "/nope.pt") == 2  # the download's, then exists'
    assert proxy.count("GET", "/nope.pt") == 1
    assert proxy.count("GET", "list-type=2") == 1


def test_a_post_whose_answer_is_lost_is_not_sent_again(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(6 * MIB))
    # The store completes the upload; its answer never comes back.
    proxy.fail("POST", "uploadId=", "drop_after")
    with pytest.raises(sky.storage.StorageError, match="a POST is not sent again") as info:
        _call("blocking", proxy.endpoint, "upload", bucket, data)
    assert "RemoteProtocolError" in str(info.value)
    assert "attempts" not in str(info.value)
    assert proxy.count("POST", "uploadId=") == 1
    # Sent again, it would have failed an upload that worked (NoSuchUpload): it is there.
    got = boto_s3(endpoint).get_object(Bucket=bucket, Key="d.bin")
    assert got["Body"].read() == data.read_bytes()


def test_a_get_whose_connection_drops_every_time_says_so(
    proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.fail("GET", "list-type=2", "drop", times=None)
    with (
        _store(proxy.endpoint) as s3,
        pytest.raises(
            sky.storage.StorageError,
            match=f"listing of {bucket}/ failed after 5 attempts: RemoteProtocolError",
        ),
    ):
        s3.ls(bucket)
    assert proxy.count("GET", "list-type=2") == 5


def test_ctrl_c_while_waiting_to_retry_aborts_the_upload(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(6 * MIB))
    proxy.fail("POST", "uploadId=", "slow_down", times=None, retry_after=3600)
    monkeypatch.setattr(storage, "RETRY_MAX_DELAY", 3600.0)
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # Ctrl-C, while the client waits as it was asked
        waits.append(seconds)
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "time", types.SimpleNamespace(sleep=sleep))
    with pytest.raises(KeyboardInterrupt):
        _call("blocking", proxy.endpoint, "upload", bucket, data)
    assert waits == [3600.0]  # the Retry-After
    assert proxy.count("DELETE", "uploadId=") == 1
    assert _uploads_left(endpoint, bucket) == []


async def test_a_trio_upload_cancelled_while_waiting_to_retry_is_aborted(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(11 * MIB))
    proxy.fail("PUT", "partNumber=2", "slow_down", times=None, retry_after=3600)
    monkeypatch.setattr(storage, "RETRY_MAX_DELAY", 3600.0)
    sleep, waiting = trio.sleep, trio.Event()

    async def watched(seconds: float) -> None:
        if seconds == 3600:
            waiting.set()
        await sleep(seconds)

    monkeypatch.setattr(trio, "sleep", watched)
    # One part at a time: when part 2 waits, no other is on its way, and the cancel lands
    # in the wait itself.
    client = AsyncStorageClient(
        _store(proxy.endpoint), ("testing", "testing"), 5 * MIB, in_flight=1
    )
    client._open()
    try:
        with trio.fail_after(60):  # the abort does not wait out the hour
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.upload, bucket, data)
                await waiting.wait()
                nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    assert proxy.count("PUT", "partNumber=2") == 1
    assert proxy.count("PUT", "partNumber=3") == 0
    assert proxy.count("DELETE", "uploadId=") == 1
    assert _uploads_left(endpoint, bucket) == []


def test_the_retry_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Which failures are retried, for which methods, and the pauses (no store needed)."""
    requests = storage._Requests(_store("http://127.0.0.1:9"), ("a", "b"))

    def retry(method: str) -> storage._Retry:
        return storage._Retry(requests.request(method, "b", "k"), "test")

    def answer(status: int, **headers: str) -> httpx.Response:
        return httpx.Response(status, headers=headers, content=b"<Error><Code>X</Code></Error>")

    url = httpx.Request("GET", "http://127.0.0.1:9/")
    # Failures once the request went out, and failures before any of it did.
    sent: list[Exception] = [
        httpx.ReadError("reset", request=url),
        httpx.ReadTimeout("slow", request=url),
        httpx.WriteError("broken pipe", request=url),
        httpx.WriteTimeout("slow", request=url),
        httpx.RemoteProtocolError("gone", request=url),
    ]
    unsent: list[Exception] = [
        httpx.ConnectError("refused", request=url),
        httpx.ConnectTimeout("slow", request=url),
        httpx.PoolTimeout("busy", request=url),
    ]
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        for exc in sent + unsent:
            assert 0 <= retry(method).failed(exc) <= storage.RETRY_BASE_DELAY
    for exc in unsent:
        assert 0 <= retry("POST").failed(exc) <= storage.RETRY_BASE_DELAY
    for exc in sent:
        with pytest.raises(sky.storage.StorageError, match="a POST is not sent again"):
            retry("POST").failed(exc)
    with pytest.raises(sky.storage.StorageError, match="UnsupportedProtocol"):
        retry("GET").failed(httpx.UnsupportedProtocol("ftp?", request=url))
    for method in ("GET", "HEAD", "PUT", "DELETE", "POST"):
        for status in (429, 500, 502, 503, 504):
            assert 0 <= retry(method).refused(answer(status)) <= storage.RETRY_BASE_DELAY
        for status in (400, 403, 404, 409, 412, 501):
            with pytest.raises(sky.storage.StorageError, match=f"HTTP {status} X"):
                retry(method).refused(answer(status))
    # Retry-After, in seconds, is honoured, up to RETRY_MAX_DELAY.
    assert retry("GET").refused(answer(503, **{"retry-after": "7"})) == 7.0
    assert retry("GET").refused(answer(503, **{"retry-after": "86400"})) == storage.RETRY_MAX_DELAY
    # Full jitter, doubling: attempt n's pause is up to base * 2**(n-1), capped.
    monkeypatch.setattr(storage.random, "uniform", lambda low, high: high)
    attempts = retry("GET")
    pauses = [attempts.refused(answer(500)) for _ in range(storage.RETRY_ATTEMPTS - 1)]
    assert pauses == [0.5, 1.0, 2.0, 4.0]
    with pytest.raises(sky.storage.StorageError, match="test failed after 5 attempts: HTTP 500"):
        attempts.refused(answer(500))
    monkeypatch.setattr(storage, "RETRY_MAX_DELAY", 3.0)
    assert [storage._backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("face", FACES)
def test_a_download_cut_short_keeps_its_parts_and_resume_continues_from_them(
    face: str, endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(11 * MIB)  # three parts of 5 MiB
    boto_s3(endpoint).put_object(Bucket=bucket, Key="ckpt.bin", Body=data)
    target = tmp_path / "ckpt.bin"
    # The first part comes down; the second fails every attempt: the download fails.
    proxy.fail("GET", "/ckpt.bin", "slow_down", skip=1, times=storage.RETRY_ATTEMPTS)
    with pytest.raises(sky.storage.StorageError, match="part 2 of 3") as failed:
        _call(
            face, proxy.endpoint, "download", bucket, "ckpt.bin", target, in_flight=1, resume=True
        )
    partial = tmp_path / ".ckpt.bin.skyward-partial"
    assert f"1 of its 3 parts are kept in {partial}" in "\n".join(failed.value.__notes__)
    record = json.loads((tmp_path / ".ckpt.bin.skyward-partial.json").read_text())
    assert (record["done"], record["size"], record["part_size"]) == ([0], 11 * MIB, 5 * MIB)
    assert not target.exists()
    # Again: only the two parts it lacks come down, and the file is whole.
    before = proxy.count("GET", "/ckpt.bin")
    down: list[tuple[int, int]] = []
    back = _call(
        face,
        proxy.endpoint,
        "download",
        bucket,
        "ckpt.bin",
        target,
        resume=True,
        progress=lambda d, t: down.append((d, t)),
    )
    assert proxy.count("GET", "/ckpt.bin") - before == 2
    assert back.read_bytes() == data
    assert _exact(down, 11 * MIB)  # the part it had counts as done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]


def test_resume_starts_again_when_the_object_changed_and_without_it_nothing_is_kept(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    boto = boto_s3(endpoint)
    boto.put_object(Bucket=bucket, Key="ckpt.bin", Body=os.urandom(11 * MIB))
    target = tmp_path / "ckpt.bin"
    proxy.fail("GET", "/ckpt.bin", "slow_down", skip=1, times=storage.RETRY_ATTEMPTS)
    with pytest.raises(sky.storage.StorageError):
        _call(
            "blocking",
            proxy.endpoint,
            "download",
            bucket,
            "ckpt.bin",
            target,
            in_flight=1,
            resume=True,
        )
    newer = os.urandom(11 * MIB)
    boto.put_object(Bucket=bucket, Key="ckpt.bin", Body=newer)  # another version
    before = proxy.count("GET", "/ckpt.bin")
    back = _call("blocking", proxy.endpoint, "download", bucket, "ckpt.bin", target, resume=True)
    assert proxy.count("GET", "/ckpt.bin") - before == 3  # every part, of the new version
    assert back.read_bytes() == newer
    # Without resume a failed download leaves nothing behind, as before.
    proxy.fail("GET", "/ckpt.bin", "slow_down", skip=1, times=storage.RETRY_ATTEMPTS)
    with pytest.raises(sky.storage.StorageError) as failed:
        _call(
            "blocking",
            proxy.endpoint,
            "download",
            bucket,
            "ckpt.bin",
            tmp_path / "b.bin",
            in_flight=1,
        )
    assert not getattr(failed.value, "__notes__", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]
    with pytest.raises(TypeError, match=r"download\(resume='yes'\): resume is True or False"):
        _call("blocking", endpoint, "download", bucket, "ckpt.bin", target, resume="yes")


def _kept_record(endpoint: str, bucket: str, key: str) -> Path:
    return storage._KeptUpload(endpoint, bucket, key).path


@pytest.mark.parametrize("face", FACES)
def test_an_upload_cut_short_keeps_its_parts_and_resume_sends_only_the_others(
    face: str, endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "ckpt.bin"
    content = os.urandom(11 * MIB)  # three parts of 5 MiB
    data.write_bytes(content)
    # The first part goes up; the second fails every attempt: the upload fails.
    proxy.fail("PUT", "partNumber=2", "slow_down", times=storage.RETRY_ATTEMPTS)
    with pytest.raises(sky.storage.StorageError, match="part 2 of 3") as failed:
        _call(face, proxy.endpoint, "upload", bucket, data, in_flight=1, resume=True)
    (kept,) = _uploads_left(endpoint, bucket)  # not aborted
    assert proxy.count("DELETE", "uploadId=") == 0
    record = _kept_record(proxy.endpoint, bucket, "ckpt.bin")
    assert json.loads(record.read_text())["upload_id"] == kept["UploadId"]
    assert (
        f"1 of its 3 parts are kept in multipart upload {kept['UploadId']} of "
        f"{bucket}/ckpt.bin (recorded in {record})"
    ) in "\n".join(failed.value.__notes__)
    # Again: parts 2 and 3 go up, into the same upload, which completes.
    up: list[tuple[int, int]] = []
    key = _call(
        face,
        proxy.endpoint,
        "upload",
        bucket,
        data,
        resume=True,
        progress=lambda d, t: up.append((d, t)),
    )
    assert key == "ckpt.bin"
    assert proxy.count("PUT", "partNumber=1") == 1
    assert proxy.count("PUT", "partNumber=3") == 1
    assert proxy.count("POST", "uploads") == 1  # no second upload was started
    assert _exact(up, 11 * MIB)  # the part it had counts as done
    got = boto_s3(endpoint).get_object(Bucket=bucket, Key="ckpt.bin")["Body"].read()
    assert got == content
    assert _uploads_left(endpoint, bucket) == []
    assert not record.exists()


_KILLED_UPLOAD = """
import sys
import skyward as sky

store = sky.storage.S3(endpoint=sys.argv[1], access_key="testing", secret_key="testing")
with store.tuned(part_size=5 * 1024 * 1024, parts_in_flight=1) as s3:
    s3.upload(sys.argv[2], sys.argv[3], resume=True)
"""


def test_an_upload_whose_process_is_killed_is_continued_by_the_next(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "ckpt.bin"
    content = os.urandom(11 * MIB)
    data.write_bytes(content)
    # Part 2 is asked to wait (an hour: 20 s, the most it waits): the process is killed
    # meanwhile, by its PID.
    proxy.fail("PUT", "partNumber=2", "slow_down", retry_after=3600)
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_UPLOAD, proxy.endpoint, bucket, str(data)]
    )
    try:
        wait_until(
            lambda: proxy.count("PUT", "partNumber=2") or child.poll() is not None,
            "the upload to reach its second part",
            timeout=60,
            every=0.05,
        )
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
    assert len(_uploads_left(endpoint, bucket)) == 1
    before = proxy.count("PUT", "partNumber=")
    _call("blocking", proxy.endpoint, "upload", bucket, data, resume=True)
    assert proxy.count("PUT", "partNumber=") - before == 2  # parts 2 and 3
    assert proxy.count("PUT", "partNumber=1") == 1
    assert boto_s3(endpoint).get_object(Bucket=bucket, Key="ckpt.bin")["Body"].read() == content
    assert _uploads_left(endpoint, bucket) == []
    # Up whole now: again, nothing is sent (a HEAD finds its size and ETag the same).
    requests = len(proxy.seen)
    assert _call("blocking", proxy.endpoint, "upload", bucket, data, resume=True) == "ckpt.bin"
    assert [method for method, _ in proxy.seen[requests:]] == ["HEAD"]
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    _call("blocking", proxy.endpoint, "upload", bucket, small, resume=True)
    requests = len(proxy.seen)
    _call("blocking", proxy.endpoint, "upload", bucket, small, resume=True)
    assert [method for method, _ in proxy.seen[requests:]] == ["HEAD"]


def test_a_kept_upload_of_another_file_or_gone_from_the_store_is_not_continued(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "ckpt.bin"

    def cut_short(content: bytes) -> str:
        """An upload of ``content`` that keeps its first part; its upload id."""
        data.write_bytes(content)
        proxy.fail("PUT", "partNumber=2", "slow_down", times=storage.RETRY_ATTEMPTS)
        with pytest.raises(sky.storage.StorageError):
            _call("blocking", proxy.endpoint, "upload", bucket, data, in_flight=1, resume=True)
        (kept,) = _uploads_left(endpoint, bucket)
        return str(kept["UploadId"])

    # The file changed since (same size, another modification time): the kept upload is
    # aborted and every part goes up again, into a new one.
    first = cut_short(os.urandom(11 * MIB))
    newer = os.urandom(11 * MIB)
    data.write_bytes(newer)
    os.utime(data, ns=(0, 10**9))
    parts_before = proxy.count("PUT", "partNumber=")
    _call("blocking", proxy.endpoint, "upload", bucket, data, resume=True)
    assert proxy.count("DELETE", f"uploadId={first}") == 1
    assert proxy.count("PUT", "partNumber=") - parts_before == 3
    assert boto_s3(endpoint).get_object(Bucket=bucket, Key="ckpt.bin")["Body"].read() == newer
    assert _uploads_left(endpoint, bucket) == []

    # An upload without resume replaces what one kept: it aborts it too.
    second = cut_short(os.urandom(11 * MIB))
    _call("blocking", proxy.endpoint, "upload", bucket, data)
    assert proxy.count("DELETE", f"uploadId={second}") == 1
    assert _uploads_left(endpoint, bucket) == []
    assert not _kept_record(proxy.endpoint, bucket, "ckpt.bin").exists()

    # A kept upload the store no longer has (aborted elsewhere, or expired): a new one.
    third = cut_short(os.urandom(11 * MIB))
    boto_s3(endpoint).abort_multipart_upload(Bucket=bucket, Key="ckpt.bin", UploadId=third)
    parts_before = proxy.count("PUT", "partNumber=")
    _call("blocking", proxy.endpoint, "upload", bucket, data, resume=True)
    assert proxy.count("PUT", "partNumber=") - parts_before == 3
    assert proxy.count("GET", f"uploadId={third}") == 1  # its parts were asked for
    assert boto_s3(endpoint).get_object(Bucket=bucket, Key="ckpt.bin")["Body"].read() == (
        data.read_bytes()
    )
    assert _uploads_left(endpoint, bucket) == []
    with pytest.raises(TypeError, match=r"upload\(resume=1\): resume is True or False"):
        _call("blocking", endpoint, "upload", bucket, data, resume=1)


async def test_a_trio_upload_cancelled_with_resume_keeps_its_parts(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "d.bin"
    content = os.urandom(16 * MIB)  # four parts
    data.write_bytes(content)
    client = AsyncStorageClient(_store(endpoint), ("testing", "testing"), 5 * MIB, in_flight=1)
    client._open()
    http = client._http
    assert http is not None
    send, waiting, sent = http.request, trio.Event(), []

    async def request(method: str, url: str, **kwargs: object) -> object:
        sent.append(f"{method} {url}")
        if "partNumber=3" in url and not waiting.is_set():
            waiting.set()
            await trio.sleep(30)  # a part that would take long
        return await send(method, url, **kwargs)  # type: ignore[arg-type]

    http.request = request  # type: ignore[method-assign,assignment]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(client.upload, bucket, data, resume=True))
            await waiting.wait()
            nursery.cancel_scope.cancel()
        assert len(_uploads_left(endpoint, bucket)) == 1  # not aborted
        del sent[:]
        assert await client.upload(bucket, data, resume=True) == "d.bin"
    finally:
        await client.aclose()
    assert [line.split("&")[0].split("?")[1] for line in sent if "partNumber=" in line] == [
        "partNumber=3",
        "partNumber=4",
    ]
    assert boto_s3(endpoint).get_object(Bucket=bucket, Key="d.bin")["Body"].read() == content
    assert _uploads_left(endpoint, bucket) == []


def _small_files(root: Path, count: int) -> dict[str, bytes]:
    """A folder of ``count`` small files (a dataset of images, say) and one of two parts."""
    files = {f"shard/{n:03}.jpg": os.urandom(2000 + n) for n in range(count)}
    files["weights.bin"] = os.urandom(6 * MIB)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


@pytest.mark.parametrize("face", FACES)
def test_a_folders_small_files_move_several_at_once(
    face: str, endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """Files of one part go up, and come down, ``parts_in_flight`` at a time (each held
    0.2 s here, so they overlap); progress counts each once it is whole, on the caller's
    thread (the blocking client's) and climbs to the total exactly."""
    files = _small_files(tmp_path / "data", 12)
    total = sum(map(len, files.values()))
    overlap, lock, threads = _Overlap(), threading.Lock(), set()
    up: list[tuple[int, int]] = []
    down: list[tuple[int, int]] = []

    def up_progress(done: int, all_: int) -> None:
        threads.add(threading.get_ident())
        up.append((done, all_))

    def down_progress(done: int, all_: int) -> None:
        threads.add(threading.get_ident())
        down.append((done, all_))

    def small(request: httpx.Request) -> bool:
        return "/shard/" in request.url.path and request.method in ("PUT", "GET")

    if face == "blocking":
        client = StorageClient(_store(endpoint), ("testing", "testing"), 5 * MIB, 4)
        client._open()
        http = client._http
        assert http is not None
        send = http.send

        def held(request: httpx.Request, **kwargs: Any) -> httpx.Response:
            if not small(request):
                return send(request, **kwargs)
            with lock:
                overlap.enter()
            time.sleep(0.2)
            try:
                return send(request, **kwargs)
            finally:
                with lock:
                    overlap.leave()

        http.send = held  # type: ignore[method-assign]
        try:
            assert client.upload(bucket, tmp_path / "data", progress=up_progress) == "data/"
            most_up, overlap.most = overlap.most, 0
            client.download(bucket, "data/", tmp_path / "back", progress=down_progress)
        finally:
            client.close()
        assert threads == {threading.get_ident()}
    else:

        async def main() -> int:
            client = AsyncStorageClient(_store(endpoint), ("testing", "testing"), 5 * MIB, 4)
            client._open()
            http = client._http
            assert http is not None
            send = http.send

            async def held(request: httpx.Request, **kwargs: Any) -> httpx.Response:
                if not small(request):
                    return await send(request, **kwargs)
                overlap.enter()
                await trio.sleep(0.2)
                try:
                    return await send(request, **kwargs)
                finally:
                    overlap.leave()

            http.send = held  # type: ignore[method-assign]
            try:
                assert await client.upload(bucket, tmp_path / "data", progress=up_progress) == (
                    "data/"
                )
                most = overlap.most
                overlap.most = 0
                await client.download(bucket, "data/", tmp_path / "back", progress=down_progress)
            finally:
                await client.aclose()
            return most

        most_up = trio.run(main)
    assert most_up == 4
    assert overlap.most == 4
    assert _read_tree(tmp_path / "back") == files
    assert _exact(up, total)
    assert _exact(down, total)
    head = boto_s3(endpoint).head_object(Bucket=bucket, Key="data/weights.bin")
    assert head["ETag"].endswith('-2"')  # the large file went up in parts


def test_a_folder_file_waiting_to_retry_gives_up_when_another_fails(
    endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two small files in flight at once: b.txt is told to wait 30 s, a.txt is refused for
    good meanwhile (after a wait of 1 s of its own, so that b.txt's request is surely
    sent). b.txt gives up at once rather than wait (and retry) for a transfer that has
    failed, on the way up and on the way down. (Were it to wait, this test would take 2
    minutes, then fail.)"""
    monkeypatch.setattr(storage, "RETRY_MAX_DELAY", 30.0)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"a")
    (folder / "b.txt").write_bytes(b"b")
    proxy.fail("PUT", "/f/b.txt", "slow_down", times=None, retry_after=30)
    proxy.fail("PUT", "/f/a.txt", "slow_down", retry_after=1)
    proxy.fail("PUT", "/f/a.txt", "access_denied")
    with pytest.raises(sky.storage.StorageError, match=r"a\.txt failed after 2 attempts: HTTP 403"):
        _call("blocking", proxy.endpoint, "upload", bucket, folder)
    assert proxy.count("PUT", "/f/b.txt") == 1
    for name in ("a.txt", "b.txt"):
        boto_s3(endpoint).put_object(Bucket=bucket, Key=f"g/{name}", Body=b"x")
    proxy.fail("GET", "/g/b.txt", "slow_down", times=None, retry_after=30)
    proxy.fail("GET", "/g/a.txt", "slow_down", retry_after=1)
    proxy.fail("GET", "/g/a.txt", "access_denied")
    with pytest.raises(
        sky.storage.StorageError, match=r"g/a\.txt failed after 2 attempts: HTTP 403"
    ):
        _call("blocking", proxy.endpoint, "download", bucket, "g/", tmp_path / "g")
    assert proxy.count("GET", "/g/b.txt") == 1
    assert proxy.count("HEAD", "/g/") == 0  # the listing gave each one's size and ETag


@pytest.mark.parametrize("face", FACES)
def test_a_resumed_folder_upload_skips_the_files_already_up(
    face: str, endpoint: str, proxy: FlakyProxy, bucket: str, tmp_path: Path
) -> None:
    """A folder upload that failed at one file: ``resume=True`` sends that file and those
    after it, not those already up (their key holds an object of their size and the ETag
    this client's upload of them gives: an MD5, or for a multipart one the MD5 of its
    parts' MD5s); a file changed since is sent again."""
    folder = tmp_path / "data"
    files = _small_files(folder, 6)  # six small files and one of two parts
    total = sum(map(len, files.values()))
    proxy.fail("PUT", "/data/shard/003.jpg", "access_denied")
    with pytest.raises(sky.storage.StorageError, match=r"003\.jpg"):
        _call(face, proxy.endpoint, "upload", bucket, folder, in_flight=1, resume=True)
    sent = proxy.count("PUT", "/data/")
    up: list[tuple[int, int]] = []
    _call(
        face,
        proxy.endpoint,
        "upload",
        bucket,
        folder,
        resume=True,
        progress=lambda d, t: up.append((d, t)),
    )
    assert proxy.count("PUT", "/data/shard/003.jpg") == 2
    assert proxy.count("PUT", "/data/shard/000.jpg") == 1  # up before: not sent again
    assert proxy.count("PUT", "/data/weights.bin?partNumber=") == 2  # its two parts, once
    assert proxy.count("PUT", "/data/") - sent == 3 + 2  # 003, 004, 005 and two parts
    assert _exact(up, total)
    # Everything up: nothing is sent; a file changed since (same size) is sent again.
    (folder / "shard" / "001.jpg").write_bytes(os.urandom(len(files["shard/001.jpg"])))
    before = proxy.count("PUT", "/data/")
    _call(face, proxy.endpoint, "upload", bucket, folder, resume=True)
    assert proxy.count("PUT", "/data/") - before == 1
    assert proxy.count("PUT", "/data/shard/001.jpg") == 2
    # A large file changed since, at the same size (a checkpoint written again): sent
    # again, with no HEAD of its own (the listing said it is not up: its file is read for
    # an ETag once, not twice).
    (folder / "weights.bin").write_bytes(os.urandom(len(files["weights.bin"])))
    heads = proxy.count("HEAD", "/data/weights.bin")
    parts = proxy.count("PUT", "/data/weights.bin?partNumber=")
    _call(face, proxy.endpoint, "upload", bucket, folder, resume=True)
    assert proxy.count("HEAD", "/data/weights.bin") == heads
    assert proxy.count("PUT", "/data/weights.bin?partNumber=") - parts == 2
    back = _call(face, endpoint, "download", bucket, "data/", tmp_path / "back")
    assert _read_tree(back) == _read_tree(folder)
