"""Skyward's per-call overhead against ProcessPoolExecutor(2), measured in the same run.

    python bench/overhead.py            # about 1-2 minutes on 2 cores
    python bench/overhead.py --reps 5
    python bench/overhead.py --console log 2>/dev/null   # with a console (default: silent)

Prints one table: (1) round trip of one no-op ``>>`` on a 1-node Local pool, (2)
``pool.map`` of 10,000 no-op items on 2 Local nodes, (3) a 100 MB numpy array sent and
returned, (4) time from ``Compute`` enter to ready for 2 and 8 nodes. Each number is the
median of ``--reps`` repetitions; the machine is noisy, so read ratios, not absolutes.
Every Local node is a real SSH server process with a real worker behind it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time
from collections.abc import Callable

import numpy as np
import trio

import skyward as sky
import skyward_trio


def noop(x: object) -> object:
    return x


def median_rtt(call: Callable[[int], object], n: int = 300, warmup: int = 50) -> float:
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bench_ppe(big: np.ndarray) -> dict[str, float]:
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        rtt = median_rtt(lambda i: ex.submit(noop, i).result())
        t0 = time.perf_counter()
        list(ex.map(noop, range(10_000), chunksize=1))
        rate = 10_000 / (time.perf_counter() - t0)
        ex.submit(noop, big[:10]).result()
        t0 = time.perf_counter()
        out = ex.submit(noop, big).result()
        big_rt = time.perf_counter() - t0
        assert out.shape == big.shape
    return {"rtt": rtt, "map": rate, "big": big_rt}


def bench_skyward(big: np.ndarray, options: sky.Options) -> dict[str, float]:
    fn = sky.function(noop)
    with sky.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
        rtt = median_rtt(lambda i: fn(i) >> pool)
        (fn(big[:10]) >> pool)
        t0 = time.perf_counter()
        out = fn(big) >> pool
        big_rt = time.perf_counter() - t0
        assert np.array_equal(out, big)
    with sky.Compute(provider=sky.Local(), nodes=2, options=options) as pool:
        pool.map(noop, range(200))
        t0 = time.perf_counter()
        result = pool.map(noop, range(10_000))
        rate = 10_000 / (time.perf_counter() - t0)
        assert result == list(range(10_000))
    return {"rtt": rtt, "map": rate, "big": big_rt}


def bench_trio_rtt(options: sky.Options) -> float:
    fn = skyward_trio.function(noop)

    async def main() -> float:
        async with skyward_trio.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
            for i in range(50):
                await (fn(i) >> pool)
            samples = []
            for i in range(300):
                t0 = time.perf_counter()
                await (fn(i) >> pool)
                samples.append(time.perf_counter() - t0)
            return statistics.median(samples)

    return trio.run(main)


def bench_ready(nodes: int, options: sky.Options) -> float:
    t0 = time.perf_counter()
    with sky.Compute(provider=sky.Local(), nodes=nodes, options=options) as pool:
        ready = time.perf_counter() - t0
        assert pool.current_nodes() == nodes
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--console",
        default="silent",
        choices=["silent", "log", "rich", "minimal"],
        help="Options(console=...) of Skyward's pools (default: silent)",
    )
    args = parser.parse_args()
    options = sky.Options(console=args.console)
    big = np.random.default_rng(0).random(100 * 1024 * 1024 // 8)  # 100 MB of float64
    runs: dict[str, list[float]] = {}

    def add(prefix: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            runs.setdefault(f"{prefix}.{key}", []).append(value)

    for rep in range(args.reps):  # interleaved, so drift in machine load hits both sides
        print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
        add("ppe", bench_ppe(big))
        add("sky", bench_skyward(big, options))
        add("sky", {"trio_rtt": bench_trio_rtt(options)})
        add("sky", {"ready2": bench_ready(2, options), "ready8": bench_ready(8, options)})
    m = {key: statistics.median(values) for key, values in runs.items()}
    rows = [
        (
            "round trip, no-op `>>`, 1 node (sync face)",
            f"{m['sky.rtt'] * 1e3:.2f} ms",
            f"{m['ppe.rtt'] * 1e3:.2f} ms",
            m["sky.rtt"] / m["ppe.rtt"],
            "<= 2.5x",
        ),
        (
            "round trip, no-op `await (f >> pool)` (trio face)",
            f"{m['sky.trio_rtt'] * 1e3:.2f} ms",
            f"{m['ppe.rtt'] * 1e3:.2f} ms",
            m["sky.trio_rtt"] / m["ppe.rtt"],
            "-",
        ),
        (
            "map of 10,000 no-op items, 2 nodes",
            f"{m['sky.map']:,.0f} tasks/s",
            f"{m['ppe.map']:,.0f} tasks/s",
            m["sky.map"] / m["ppe.map"],
            ">= 1.0x",
        ),
        (
            "100 MB numpy array sent and returned",
            f"{m['sky.big']:.2f} s",
            f"{m['ppe.big']:.2f} s",
            m["sky.big"] / m["ppe.big"],
            "<= 2x",
        ),
        ("Compute enter -> ready, 2 nodes", f"{m['sky.ready2']:.2f} s", "-", None, "<= 3 s"),
        ("Compute enter -> ready, 8 nodes", f"{m['sky.ready8']:.2f} s", "-", None, "-"),
    ]
    print()
    print(
        f"| measurement (median of {args.reps}, console={args.console}) | Skyward "
        "| ProcessPoolExecutor(2) "
        "| ratio | target |"
    )
    print("|---|---|---|---|---|")
    for name, ours, theirs, ratio, target in rows:
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"| {name} | {ours} | {theirs} | {shown} | {target} |")
    # map ratio: > 1 means Skyward is faster; the others: < 1 means Skyward is faster.


if __name__ == "__main__":
    main()
