"""GPU metrics against the real ``nvidia-smi``: run on a machine with an NVIDIA GPU.

    python scripts/device/gpu_metrics.py

The test suite plays ``nvidia-smi`` with a stand-in (there is no GPU where it runs); this
script is the check on real hardware. It opens a 1-node ``sky.Local`` pool with the GPU
collectors, waits for their ``Metric`` events, and compares them with what
``nvidia-smi`` itself reports: the same GPUs, utilization within 0-100 %, memory used at
most the total and the total equal to nvidia-smi's, a plausible temperature. It prints
what it saw and exits non-zero on any mismatch (or when no GPU metric arrives).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from _verdict import verdict

import skyward as sky


def nvidia_smi() -> dict[int, dict[str, float]]:
    fields = ["index", "memory.total"]
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    gpus = {}
    for line in out.splitlines():
        index, total = (cell.strip() for cell in line.split(","))
        gpus[int(index)] = {"memory_total": float(total)}
    return gpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("no nvidia-smi on PATH: run this on a machine with an NVIDIA GPU")
        return 2
    expected = nvidia_smi()
    image = sky.Image(
        metrics=[
            sky.metrics.GPU(interval=1),
            sky.metrics.GPUMemory(interval=1),
            sky.metrics.GPUMemoryTotal(interval=1),
            sky.metrics.GPUTemp(interval=1),
        ]
    )
    seen: dict[tuple[int | None, str], sky.Metric] = {}
    wanted = {
        (gpu, name)
        for gpu in expected
        for name in ("gpu", "gpu_memory", "gpu_memory_total", "gpu_temp")
    }
    with sky.Compute(
        provider=sky.Local(), nodes=1, image=image, options=sky.Options(console="silent")
    ) as pool:
        deadline = time.monotonic() + args.timeout
        for event in pool.events():
            if isinstance(event, sky.Metric) and event.gpu is not None:
                if (event.gpu, event.name) not in seen:
                    print(f"gpu={event.gpu} {event.name}={event.value:g} {event.unit}")
                seen[(event.gpu, event.name)] = event
            if set(seen) >= wanted or time.monotonic() > deadline:
                break
    problems = []
    for gpu, facts in expected.items():
        util = seen.get((gpu, "gpu"))
        used = seen.get((gpu, "gpu_memory"))
        total = seen.get((gpu, "gpu_memory_total"))
        temp = seen.get((gpu, "gpu_temp"))
        if util is None or not 0 <= util.value <= 100:
            problems.append(f"GPU {gpu}: utilization {util}")
        if (
            total is None
            or abs(total.value - facts["memory_total"]) > 1e-6 * facts["memory_total"] + 1
        ):
            problems.append(
                f"GPU {gpu}: memory total {total} vs nvidia-smi {facts['memory_total']}"
            )
        if used is None or total is None or not 0 <= used.value <= total.value:
            problems.append(f"GPU {gpu}: memory used {used} of {total}")
        if temp is not None and not 0 < temp.value < 120:
            problems.append(f"GPU {gpu}: temperature {temp}")
    return verdict(problems)


if __name__ == "__main__":
    sys.exit(main())
