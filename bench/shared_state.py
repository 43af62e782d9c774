"""Distributed collections: operations per second on 2 Local nodes, strong vs eventual.

    python bench/shared_state.py            # about half a minute on 2 cores

One task per node (``@ pool``) runs a loop of collection operations at the same time as
the other. A rate counts every operation of both nodes over the wall time from the
dispatch until the store holds all of their effects (for eventual collections that
includes the last batch reaching the store, which the client waits for).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Run as a script, this file's folder comes first on the import path, where this
    # file would stand in for the standard library's ``collections``.
    del sys.path[0]

import argparse
import statistics
import time

import skyward as sky


@sky.function
def increments(name: str, count: int, consistency: str) -> None:
    counter = sky.counter(name, consistency=consistency)
    for _ in range(count):
        counter.increment()


@sky.function
def dict_ops(name: str, count: int, consistency: str) -> None:
    d = sky.dict(name, consistency=consistency)
    node = sky.instance_info().node
    for i in range(count):
        d[(node, i % 64)] = i
        d.get((node, i % 64))
    d[("done", node)] = True


def _wait_for(check: object) -> None:
    deadline = time.monotonic() + 120
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError("the writes never all reached the store")
        time.sleep(0.005)


def counter_rate(pool: sky.Pool, consistency: str, count: int, rep: int) -> float:
    name = f"counter-{consistency}-{rep}"
    t0 = time.perf_counter()
    increments(name, count, consistency) @ pool
    counter = pool.counter(name)
    _wait_for(lambda: counter.value == 2 * count)
    return 2 * count / (time.perf_counter() - t0)


def dict_rate(pool: sky.Pool, consistency: str, count: int, rep: int) -> float:
    name = f"dict-{consistency}-{rep}"
    t0 = time.perf_counter()
    dict_ops(name, count, consistency) @ pool
    d = pool.dict(name)
    _wait_for(lambda: d.get(("done", 0)) and d.get(("done", 1)))
    return 2 * 2 * count / (time.perf_counter() - t0)  # a set and a get per round


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--strong-ops", type=int, default=2_000)
    parser.add_argument("--eventual-ops", type=int, default=50_000)
    args = parser.parse_args()
    with sky.Compute(provider=sky.Local(), nodes=2, options=sky.Options(console="silent")) as pool:
        increments("warm-up", 10, "strong") @ pool
        increments("warm-up", 10, "eventual") @ pool
        rows = []
        for consistency, count in (("strong", args.strong_ops), ("eventual", args.eventual_ops)):
            counters = [counter_rate(pool, consistency, count, r) for r in range(args.reps)]
            dicts = [dict_rate(pool, consistency, count, r) for r in range(args.reps)]
            rows.append((consistency, statistics.median(counters), statistics.median(dicts)))
    print(f"2 Local nodes, one task per node, median of {args.reps}")
    print(f"{'consistency':<12} {'counter.increment ops/s':>24} {'dict set+get ops/s':>20}")
    for consistency, counters_s, dicts_s in rows:
        print(f"{consistency:<12} {counters_s:>24,.0f} {dicts_s:>20,.0f}")


if __name__ == "__main__":
    main()
