"""``sky.plugins.mps`` against a real GPU: run on a machine with an NVIDIA GPU, MPS
(``nvidia-cuda-mps-control``) and PyTorch.

    python scripts/device/mps_plugin.py

The test suite plays ``nvidia-cuda-mps-control`` with a stand-in; this script is the
check on real hardware. A ``sky.Local`` node with ``Worker(executor="process",
concurrency=2)`` and the plugin runs two CUDA tasks at once: each must compute on the GPU
as an MPS client (the daemon lists an MPS server while they run), and the daemon the
worker started must be gone once the pool has ended. It prints what it saw and exits
non-zero on any mismatch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _verdict import verdict

import skyward as sky


@sky.function
def cuda_client() -> dict[str, Any]:
    import torch

    a = torch.randn(2048, 2048, device="cuda")
    product = float((a @ a).abs().sum().item())
    servers = subprocess.run(
        ["nvidia-cuda-mps-control"], input="get_server_list\n", capture_output=True, text=True
    )
    return {
        "pid": os.getpid(),
        "product_positive": product > 0,
        "servers": servers.stdout.split(),
        "pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _daemon_of(pipe: Path) -> int:
    """The MPS control daemon serving ``pipe`` (0: none): the ``nvidia-cuda-mps-control``
    process whose environment names that pipe directory."""
    wanted = f"CUDA_MPS_PIPE_DIRECTORY={pipe}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"nvidia-cuda-mps-control") and wanted in environ:
            return int(proc.name)
    return 0


def main() -> int:
    if shutil.which("nvidia-cuda-mps-control") is None:
        print("no nvidia-cuda-mps-control on PATH: run this where CUDA's MPS is installed")
        return 2
    root = Path(tempfile.mkdtemp(prefix="mps-check-"))
    pipe, logs = root / "pipe", root / "log"
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    worker = sky.Worker(executor="process", concurrency=2)
    options = sky.Options(console="silent", worker=worker)
    problems: list[str] = []
    daemon = 0
    with sky.Compute(
        provider=sky.Local(),
        image=sky.Image(env=env),
        plugins=[sky.plugins.mps()],
        options=options,
    ) as pool:
        results = sky.gather(cuda_client(), cuda_client()) >> pool
        print("pipe directory:", sorted(p.name for p in pipe.iterdir()))
        daemon = _daemon_of(pipe)
        print("daemon", daemon, "alive", bool(daemon) and _alive(daemon))
    if not daemon:
        problems.append("no MPS control daemon with this pipe directory ran in the pool")
    print("tasks:", results)
    if len({r["pid"] for r in results}) != 2:
        problems.append(f"the two tasks should run in two subprocesses: {results}")
    for r in results:
        if not r["product_positive"]:
            problems.append(f"task {r['pid']}: no product computed on the GPU")
        if not r["servers"]:
            problems.append(f"task {r['pid']}: the MPS daemon listed no server while it ran")
        if r["pipe"] != str(pipe):
            problems.append(f"task {r['pid']}: CUDA_MPS_PIPE_DIRECTORY {r['pipe']!r}")
    # The daemon, and the MPS server it ran for the tasks, end with the pool.
    ended = time.monotonic()
    started = {daemon, *(int(pid) for r in results for pid in r["servers"])} - {0}
    while any(_alive(pid) for pid in started) and time.monotonic() < ended + 20:
        time.sleep(0.1)
    print(f"the daemon and server gone {time.monotonic() - ended:.1f} s after the pool ended")
    for pid in sorted(started):
        if _alive(pid):
            problems.append(f"MPS process {pid} (daemon or server) outlived the pool by 20 s")
            os.kill(pid, 9)
    control_log = logs / "control.log"
    if control_log.exists():
        print("control.log:", control_log.read_text()[-600:])
    return verdict(problems)


if __name__ == "__main__":
    sys.exit(main())
