"""Stand-ins for NVIDIA's command-line tools, for the GPU plugins on GPU-less machines.

``nvidia-smi`` here plays one GPU's MIG state (kept as JSON in ``$FAKE_GPU_STATE``) for the
commands ``sky.plugins.mig()`` runs, and ``nvidia-cuda-mps-control`` plays MPS's control
daemon (a real background process, its pid in the pipe directory). Each logs what it was
asked. They are put on a node's PATH through ``Image(env={"PATH": ...})``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

NVIDIA_SMI = r"""#!{python}
import fcntl, json, os, sys, uuid
from pathlib import Path

# Several run at once (each subprocess asks for its slice, the sampler for metrics): one
# at a time, under a lock, and the state is replaced whole, never seen half-written.
folder = Path(os.environ["FAKE_GPU_STATE"])
lock = open(folder / "lock", "w")
fcntl.flock(lock, fcntl.LOCK_EX)
state_file = folder / "mig.json"
state = json.loads(state_file.read_text()) if state_file.exists() else {
    "mode": "Disabled", "slices": [], "calls": []
}
args = sys.argv[1:]
state["calls"].append(" ".join(args))

def save():
    partial = folder / f"mig.json.{os.getpid()}"
    partial.write_text(json.dumps(state))
    os.replace(partial, state_file)

if args[:2] == ["-i", "0"] and args[2:] == [
    "--query-gpu=mig.mode.current", "--format=csv,noheader"
]:
    print(state["mode"])
elif args == ["-i", "0", "-mig", "1"]:
    if os.environ.get("FAKE_MIG_STUCK"):
        print("Warning: MIG mode is in pending enable state for GPU 00000000:00:04.0:"
              "In use by another client")
    else:
        state["mode"] = "Enabled"
        print("Enabled MIG Mode for GPU 00000000:00:04.0")
elif args == ["-L"]:
    print("GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)")
    for i, (profile, mig_uuid) in enumerate(state["slices"]):
        print(f"  MIG {profile:<12} Device {i:>2}: (UUID: {mig_uuid})")
elif args[:3] == ["mig", "-i", "0"] and args[3] in ("-dci", "-dgi"):
    if args[3] == "-dgi":
        state["slices"] = []
    print("Successfully destroyed instances")
elif args[:4] == ["mig", "-i", "0", "-cgi"] and args[5:] == ["-C"]:
    if state["mode"] != "Enabled":
        print("Unable to create a GPU instance: MIG mode is not enabled", file=sys.stderr)
        save()
        sys.exit(6)
    for profile in args[4].split(","):
        state["slices"].append([profile, f"MIG-{uuid.uuid4()}"])
        print(f"Successfully created GPU instance on GPU 0 using profile MIG {profile}")
else:
    print(f"the stand-in nvidia-smi does not play {args}", file=sys.stderr)
    save()
    sys.exit(2)
save()
"""

MPS_CONTROL = r"""#!{python}
import os, signal, subprocess, sys, time
from pathlib import Path

pipe = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
log = Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/tmp/nvidia-mps-log")) / "control.log"
pidfile = pipe / "control.pid"

def running():
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None

def note(line):
    with log.open("a") as f:
        f.write(line + "\n")

if sys.argv[1:] == ["-d"]:
    if running():
        print("An instance of this daemon is already running", file=sys.stderr)
        sys.exit(1)
    daemon = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        start_new_session=True, cwd="/", stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pidfile.write_text(str(daemon.pid))
    limits = os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "none")
    note(f"started {daemon.pid} (client limits in its env: {limits})")
else:
    command = sys.stdin.read().strip()
    pid = running()
    if pid is None:
        print("Cannot find MPS control daemon process", file=sys.stderr)
        sys.exit(1)
    note(command)
    if command == "quit":
        time.sleep(float(os.environ.get("FAKE_MPS_QUIT_SECONDS", "0")))  # a slow goodbye
        os.kill(pid, signal.SIGTERM)
        pidfile.unlink()
"""


def install(folder: Path) -> dict[str, str]:
    """Write both stand-ins into ``folder``; the image env that puts them on a node."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("nvidia-smi", NVIDIA_SMI), ("nvidia-cuda-mps-control", MPS_CONTROL)):
        script = folder / name
        script.write_text(body.replace("{python}", sys.executable, 1))
        script.chmod(0o755)
    state = folder / "state"
    state.mkdir(exist_ok=True)
    return {"PATH": f"{folder}:{os.environ['PATH']}", "FAKE_GPU_STATE": str(state)}


def mig_state(env: dict[str, str]) -> dict[str, Any]:
    """What the stand-in nvidia-smi holds: ``mode``, ``slices`` ([profile, uuid]), ``calls``."""
    result: dict[str, Any] = json.loads((Path(env["FAKE_GPU_STATE"]) / "mig.json").read_text())
    return result
