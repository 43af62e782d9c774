"""What a console costs a call: round trips with and without one, measured side by side.

    python bench/consoles.py 2>/dev/null          # about a minute on 2 cores
    python bench/consoles.py --calls 5000 --modes silent,log,minimal 2>/dev/null

(1) One 1-node Local pool per console mode is open at once and no-op ``>>`` calls
alternate between them (each mode taking each place in the round in turn), so the
machine's noise hits every mode alike; prints the median round trip of each. (2) The
console's own work per call, in-process: building the call's ``TaskStarted`` and
``TaskCompleted`` events (only built while a console or a reader watches) and handing
them to the ``log`` console, best of 5.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import timeit

import skyward as sky
from skyward_trio._console import LogConsole
from skyward_trio._eventbus import EventBus
from skyward_trio._events import TaskCompleted, TaskStarted


def noop(x: object) -> object:
    return x


def side_by_side(modes: list[str], calls: int) -> dict[str, float]:
    fn = sky.function(noop)
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    with contextlib.ExitStack() as stack:
        pools = {
            mode: stack.enter_context(
                sky.Compute(provider=sky.Local(), nodes=1, options=sky.Options(console=mode))
            )
            for mode in modes
        }
        for pool in pools.values():
            for i in range(200):
                fn(i) >> pool
        for i in range(calls):
            turn = i % len(modes)  # each mode takes each place in the round in turn
            for mode in modes[turn:] + modes[:turn]:
                t0 = time.perf_counter()
                fn(i) >> pools[mode]
                samples[mode].append(time.perf_counter() - t0)
    return {mode: statistics.median(values) for mode, values in samples.items()}


def per_call_work() -> tuple[float, float]:
    bus = EventBus("bench")
    bus.listen(LogConsole(interval=30, defaulted_to_local=False).on_event)

    def build() -> None:
        TaskStarted(job_id="bench", node=0, task="f", task_id=1)
        TaskCompleted(job_id="bench", node=0, task="f", task_id=1, ok=True, seconds=0.001)

    def build_and_show() -> None:
        bus.emit(TaskStarted(job_id="bench", node=0, task="f", task_id=1))
        bus.emit(TaskCompleted(job_id="bench", node=0, task="f", task_id=1, ok=True, seconds=0))

    n = 100_000
    built, shown = (min(timeit.repeat(f, number=n, repeat=5)) / n for f in (build, build_and_show))
    return built, shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--modes", default="silent,log")
    args = parser.parse_args()
    medians = side_by_side(args.modes.split(","), args.calls)
    build, shown = per_call_work()
    print(f"| console | median round trip, no-op `>>` ({args.calls:,} calls each, interleaved) |")
    print("|---|---|")
    for mode, median in medians.items():
        print(f"| {mode} | {median * 1e3:.3f} ms |")
    print()
    print(f"events of one call: built {build * 1e6:.1f} µs; built and shown {shown * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
