"""What ``Worker(buffer=...)`` and ``executor="process"`` buy, measured in one run.

    python bench/executors.py            # about a minute on 2 cores

(1) Short tasks dispatched with ``>`` on one node with one task slot: ``buffer=0`` makes
each task wait a full round trip after the previous one ends; ``buffer=4`` keeps tasks
queued on the node, so the next starts at once. (2) CPU-bound pure-Python tasks on one
node with ``concurrency=2``: threads share the GIL, processes do not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import skyward as sky


def short_task(x: int) -> int:
    # About 0.2 ms of work: short enough that a round trip per task matters.
    total = 0
    for i in range(2_000):
        total += i * x
    return total


def cpu_task(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def tasks_per_second(pool: sky.Pool, fn: sky.Function, args: list[int]) -> float:
    t0 = time.perf_counter()
    futures = [fn(a) > pool for a in args]
    for future in futures:
        future.result()
    return len(args) / (time.perf_counter() - t0)


def bench_buffer(buffer: int, count: int) -> float:
    options = sky.Options(console="silent", worker=sky.Worker(concurrency=1, buffer=buffer))
    with sky.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
        fn = sky.function(short_task)
        tasks_per_second(pool, fn, list(range(50)))  # warm up
        return tasks_per_second(pool, fn, list(range(count)))


def bench_executor(executor: str, count: int) -> float:
    worker = sky.Worker(concurrency=2, executor=executor)
    options = sky.Options(console="silent", worker=worker)
    with sky.Compute(provider=sky.Local(), nodes=1, options=options) as pool:
        fn = sky.function(cpu_task)
        tasks_per_second(pool, fn, [1000] * 4)  # warm up (and start the subprocesses)
        return tasks_per_second(pool, fn, [300_000] * count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-process", action="store_true")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {}
    for rep in range(args.reps):
        print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
        runs.setdefault("buffer0", []).append(bench_buffer(0, 2_000))
        runs.setdefault("buffer4", []).append(bench_buffer(4, 2_000))
        if not args.skip_process:
            runs.setdefault("thread", []).append(bench_executor("thread", 16))
            runs.setdefault("process", []).append(bench_executor("process", 16))
    m = {key: statistics.median(values) for key, values in runs.items()}
    print()
    print(f"| measurement (median of {args.reps}) | tasks/s | ratio |")
    print("|---|---|---|")
    print(f"| 2,000 short tasks with `>`, concurrency=1, buffer=0 | {m['buffer0']:,.0f} | 1.00x |")
    print(f"| same, buffer=4 | {m['buffer4']:,.0f} | {m['buffer4'] / m['buffer0']:.2f}x |")
    if not args.skip_process:
        print(
            f"| 16 CPU-bound tasks, concurrency=2, executor=thread | {m['thread']:,.2f} | 1.00x |"
        )
        print(
            f"| same, executor=process | {m['process']:,.2f} | {m['process'] / m['thread']:.2f}x |"
        )


if __name__ == "__main__":
    main()
