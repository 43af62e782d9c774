"""A folder of many small files up to a bucket and back: ``sky.storage`` against boto3,
measured in the same run, through the same store.

    python bench/storage.py                  # about a minute on 2 cores
    python bench/storage.py --files 400 --latency 30 --reps 5

The store is moto's S3 server on loopback behind a proxy that holds each request
``--latency`` milliseconds before passing it on, as a store across the internet answers
no sooner than a round trip (S3 from a cloud VM in another region: tens of ms). Prints
one table: the seconds to upload the folder and to download it again, by
``s3.upload(bucket, folder)`` / ``s3.download(bucket, prefix, folder)``, by boto3's
``upload_file`` / ``download_file`` in a loop (what a script writes), and by the same in
``parts_in_flight`` (4) threads. Each number is the median of ``--reps`` repetitions; the
machine is noisy, so read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import http.server
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Not passed on: they are about the one connection they came on.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class LatencyProxy:
    """A threading HTTP/1.1 proxy on 127.0.0.1 that holds each request ``latency``
    seconds, then passes it on to ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str, latency: float) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        target, delay = (parsed.hostname or "127.0.0.1", parsed.port or 80), latency

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                time.sleep(delay)
                upstream = http.client.HTTPConnection(*target, timeout=60)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def make_folder(root: Path, count: int, size: int) -> None:
    for n in range(count):
        path = root / f"shard-{n // 100:02}" / f"{n:05}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def timed(call: Callable[..., object], *args: object, **kwargs: object) -> float:
    t0 = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100, help="files in the folder (100)")
    parser.add_argument("--size", type=int, default=16_384, help="bytes per file (16384)")
    parser.add_argument("--latency", type=float, default=20.0, help="ms per request (20)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per number (3)")
    args = parser.parse_args()
    os.environ["HOME"] = tempfile.mkdtemp(prefix="skyward-bench-home-")

    import boto3
    import botocore.config
    from moto.server import ThreadedMotoServer

    import skyward as sky

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs each request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    proxy = LatencyProxy(f"http://{host}:{port}", args.latency / 1000)
    work = Path(tempfile.mkdtemp(prefix="skyward-bench-storage-"))
    try:
        folder = work / "data"
        make_folder(folder, args.files, args.size)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        store = sky.storage.S3(endpoint=proxy.endpoint, access_key="bench", secret_key="bench")
        boto: Any = boto3.client(
            "s3",
            endpoint_url=proxy.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=botocore.config.Config(
                max_pool_connections=16, request_checksum_calculation="when_required"
            ),
        )
        boto.create_bucket(Bucket="bench")
        in_flight = store.parts_in_flight

        def boto_up(key_prefix: str, threads: int) -> None:
            def one(path: Path) -> None:
                key = f"{key_prefix}/{path.relative_to(folder).as_posix()}"
                boto.upload_file(str(path), "bench", key)

            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, files))

        def boto_down(key_prefix: str, threads: int, into: Path) -> None:
            keys = [
                item["Key"]
                for page in boto.get_paginator("list_objects_v2").paginate(
                    Bucket="bench", Prefix=key_prefix + "/"
                )
                for item in page.get("Contents", [])
            ]

            def one(key: str) -> None:
                target = into / key[len(key_prefix) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                boto.download_file("bench", key, str(target))

            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, keys))

        rows: dict[str, list[tuple[float, float]]] = {"skyward": [], "loop": [], "threads": []}
        with store as s3:
            for rep in range(args.reps):
                back = work / f"back-{rep}"
                up = timed(s3.upload, "bench", folder, key=f"sky-{rep}")
                down = timed(s3.download, "bench", f"sky-{rep}/", back / "sky")
                rows["skyward"].append((up, down))
                up = timed(boto_up, f"loop-{rep}", 1)
                down = timed(boto_down, f"loop-{rep}", 1, back / "loop")
                rows["loop"].append((up, down))
                up = timed(boto_up, f"threads-{rep}", in_flight)
                down = timed(boto_down, f"threads-{rep}", in_flight, back / "threads")
                rows["threads"].append((up, down))
                for name in ("sky", "loop", "threads"):
                    got = sorted(p.read_bytes() for p in (back / name).rglob("*") if p.is_file())
                    assert got == sorted(p.read_bytes() for p in files), name
                shutil.rmtree(back)
    finally:
        proxy.close()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str, index: int) -> float:
        return statistics.median(row[index] for row in rows[name])

    print(
        f"{args.files} files of {args.size} bytes, {args.latency:g} ms per request, "
        f"median of {args.reps}"
    )
    print(f"{'':34} {'upload (s)':>10} {'vs':>6} {'download (s)':>12} {'vs':>6}")
    labels = {
        "skyward": f"sky.storage ({in_flight} at once)",
        "loop": "boto3, one file at a time",
        "threads": f"boto3 in {in_flight} threads",
    }
    for name, label in labels.items():
        up, down = med(name, 0), med(name, 1)
        print(
            f"{label:34} {up:10.2f} {med('loop', 0) / up:5.1f}x "
            f"{down:12.2f} {med('loop', 1) / down:5.1f}x"
        )
    print("(vs: boto3's loop over the row's time; higher is faster)")


if __name__ == "__main__":
    main()
