"""What a call through the pool server costs: ``sky.Client`` against the pool itself and
against ProcessPoolExecutor(2), measured in the same run.

    python bench/server.py             # about half a minute on 2 cores
    python bench/server.py --reps 5

Prints one table: (1) the round trip of one no-op call (``>>``), (2) a 100 MB numpy array
sent and returned. Each through a ``sky.Client`` of a one-node Local pool that a server
holds, through a ``sky.Compute`` pool of one Local node, and through the peer. The server
runs with a home of its own (a temporary directory), so a server you run is not touched.
Each number is the median of ``--reps`` repetitions; the machine is noisy, so read ratios,
not absolutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import cloudpickle
import numpy as np
import overhead
from overhead import median_rtt, noop  # this folder is on sys.path: the script's own

# The nodes (started by the server, from another folder) cannot import this folder's
# modules: noop travels by value.
cloudpickle.register_pickle_by_value(overhead)


def timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per number (3)")
    args = parser.parse_args()
    os.environ["HOME"] = tempfile.mkdtemp(prefix="skyward-bench-home-")

    import skyward as sky
    from skyward._client import request_create, start_server, stop_server

    remote = sky.function(noop)
    big = np.random.default_rng(0).random(100_000_000 // 8)
    rows: dict[str, list[tuple[float, float]]] = {"client": [], "pool": [], "peer": []}

    start_server()
    try:
        request_create(
            "bench", (sky.Spec(provider=sky.Local(), nodes=1),), sky.Options(console="silent")
        )
        for _ in range(args.reps):
            with sky.Client("bench") as client:
                rtt = median_rtt(lambda i: remote(i) >> client, warmup=30)
                array = timed(lambda: remote(big) >> client)
            rows["client"].append((rtt, array))
            options = sky.Options(console="silent")
            with sky.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
                rtt = median_rtt(lambda i: remote(i) >> pool, warmup=30)
                array = timed(lambda: remote(big) >> pool)
            rows["pool"].append((rtt, array))
            with concurrent.futures.ProcessPoolExecutor(2) as ex:
                rtt = median_rtt(lambda i: ex.submit(noop, i).result(), warmup=30)
                array = timed(lambda: ex.submit(noop, big).result())
            rows["peer"].append((rtt, array))
    finally:
        stop_server()

    med = {k: tuple(statistics.median(x[i] for x in v) for i in range(2)) for k, v in rows.items()}
    peer_rtt, peer_array = med["peer"]
    print(f"{'':<34}{'no-op >> (ms)':>15}{'vs peer':>9}{'100 MB (s)':>12}{'vs peer':>9}")
    labels = {
        "client": "sky.Client (through the server)",
        "pool": "sky.Compute pool",
        "peer": "ProcessPoolExecutor(2)",
    }
    for key, label in labels.items():
        rtt, array = med[key]
        print(
            f"{label:<34}{rtt * 1000:>15.2f}{rtt / peer_rtt:>8.1f}x"
            f"{array:>12.2f}{array / peer_array:>8.1f}x"
        )
    client_rtt, pool_rtt = med["client"][0], med["pool"][0]
    print(f"\nthe server adds {(client_rtt - pool_rtt) * 1000:.2f} ms per call to the pool's own")


if __name__ == "__main__":
    main()
