"""The NVIDIA plugins (``mps``, ``mig``) on ``sky.Local()`` nodes, against stand-ins for
``nvidia-smi`` and ``nvidia-cuda-mps-control`` (``fake_gpu``): these machines have no
GPU. What runs for real is everything of Skyward's: the bootstrap steps, the daemon's
life, the slots of the process executor, and what each subprocess is given."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fake_gpu import install, mig_state

import skyward as sky

if TYPE_CHECKING:
    from conftest import Machines


def _options(concurrency: int) -> sky.Options:
    worker = sky.Worker(executor="process", concurrency=concurrency)
    return sky.Options(console="silent", worker=worker)


# --- mps ------------------------------------------------------------------------------------


@sky.function
def _as_an_mps_client() -> dict[str, Any]:
    answer = subprocess.run(
        ["nvidia-cuda-mps-control"], input="get_server_list\n", capture_output=True, text=True
    )
    keys = (
        "CUDA_MPS_PIPE_DIRECTORY",
        "CUDA_MPS_LOG_DIRECTORY",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    )
    time.sleep(0.3)  # both tasks at once: two subprocesses
    return {"daemon": answer.returncode, "pid": os.getpid(), **{k: os.environ.get(k) for k in keys}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_mps_runs_the_daemon_while_the_pool_is_open_and_its_tasks_are_clients(
    tmp_path: Path,
) -> None:
    env = install(tmp_path / "bin")
    pipe, logs = tmp_path / "pipe", tmp_path / "log"
    env |= {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    plugin = sky.plugins.mps(active_thread_percentage=50, pinned_memory_limit="0=2G")
    daemon = 0
    try:
        with sky.Compute(
            provider=sky.Local(), image=sky.Image(env=env), plugins=[plugin], options=_options(2)
        ) as pool:
            results = sky.gather(_as_an_mps_client(), _as_an_mps_client()) >> pool
            daemon = int((pipe / "control.pid").read_text())
            assert _alive(daemon)
        assert len({r["pid"] for r in results}) == 2
        for seen in results:
            assert seen == {
                "daemon": 0,  # it answered them
                "pid": seen["pid"],
                "CUDA_MPS_PIPE_DIRECTORY": str(pipe),
                "CUDA_MPS_LOG_DIRECTORY": str(logs),
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=2G",
            }
        log = (logs / "control.log").read_text().splitlines()
        assert log[0] == f"started {daemon} (client limits in its env: none)"
    finally:
        if daemon and _alive(daemon):
            os.kill(daemon, 9)


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_mps_stops_the_daemon_it_started_when_the_pool_ends(
    where: str, machines: Machines, tmp_path: Path
) -> None:
    """On a machine of your own (sky.SSH, or this one with sky.Local) the daemon must not
    outlive the pool. Its quit takes a while here: the node's end must let the worker's
    teardown finish, not kill the command it runs."""
    provider = machines.provider(machines.a) if where == "ssh" else sky.Local()
    env = install(tmp_path / "bin")
    env |= {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path), "CUDA_MPS_LOG_DIRECTORY": str(tmp_path)}
    env["FAKE_MPS_QUIT_SECONDS"] = "2"
    daemon = 0
    try:
        with sky.Compute(
            provider=provider, image=sky.Image(env=env),
            plugins=[sky.plugins.mps()], options=sky.Options(console="silent"),
        ) as pool:  # fmt: skip
            assert (_as_an_mps_client() >> pool)["daemon"] == 0
            daemon = int((tmp_path / "control.pid").read_text())
        assert not (tmp_path / "control.pid").exists()
        assert (tmp_path / "control.log").read_text().splitlines()[-1] == "quit"
        deadline = time.monotonic() + 10
        while _alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(daemon)
    finally:
        if daemon and _alive(daemon):
            os.kill(daemon, 9)


def test_mps_uses_a_daemon_already_running_and_leaves_it(tmp_path: Path) -> None:
    env = install(tmp_path / "bin")
    env |= {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path), "CUDA_MPS_LOG_DIRECTORY": str(tmp_path)}
    started = subprocess.run(
        ["nvidia-cuda-mps-control", "-d"], env={**os.environ, **env}, capture_output=True
    )
    assert started.returncode == 0, started.stderr
    daemon = int((tmp_path / "control.pid").read_text())
    try:
        with sky.Compute(
            provider=sky.Local(), image=sky.Image(env=env), plugins=[sky.plugins.mps()],
            options=sky.Options(console="silent"),
        ) as pool:  # fmt: skip
            assert _as_an_mps_client() >> pool == {
                "daemon": 0,
                "pid": (_as_an_mps_client() >> pool)["pid"],  # the worker's own: threads
                "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path),
                "CUDA_MPS_LOG_DIRECTORY": str(tmp_path),
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": None,
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": None,
            }
        assert _alive(daemon)  # not the pool's to stop
        assert "quit" not in (tmp_path / "control.log").read_text()
    finally:
        os.kill(daemon, 9)


def test_mps_on_a_node_without_it_fails_in_the_plugins_phase() -> None:
    compute = sky.Compute(
        provider=sky.Local(), plugins=[sky.plugins.mps()], options=sky.Options(console="silent")
    )
    with pytest.raises(sky.ProvisionError) as caught, compute:
        pytest.fail("the block must not run")
    message = str(caught.value)
    assert "its 'plugins' phase" in message
    assert "nvidia-cuda-mps-control is not on this node's PATH" in message


# --- mig ------------------------------------------------------------------------------------


@sky.function
def _on_a_slice() -> dict[str, Any]:
    info = sky.instance_info()
    time.sleep(0.3)  # both tasks at once: two subprocesses
    return {
        "worker": info.worker,
        "workers_per_node": info.workers_per_node,
        "global": info.global_worker_index,
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def test_mig_cuts_the_gpu_and_gives_each_subprocess_its_slice(tmp_path: Path) -> None:
    env = install(tmp_path)
    compute = sky.Compute(
        provider=sky.Local(),
        image=sky.Image(env=env),
        plugins=[sky.plugins.mig("3g.40gb")],
        options=_options(2),
    )
    with compute as pool:
        results = sky.gather(_on_a_slice(), _on_a_slice()) >> pool
        # A broadcast runs on every slice at once; the node's result is slice 0's.
        everywhere = _on_a_slice() @ pool
    state = mig_state(env)
    assert state["mode"] == "Enabled"
    assert [profile for profile, _ in state["slices"]] == ["3g.40gb", "3g.40gb"]
    assert "-i 0 -mig 1" in state["calls"]
    assert "mig -i 0 -cgi 3g.40gb,3g.40gb -C" in state["calls"]
    uuids = [uuid for _, uuid in state["slices"]]
    assert sorted(results, key=lambda r: r["worker"]) == [
        {"worker": 0, "workers_per_node": 2, "global": 0, "device": uuids[0]},
        {"worker": 1, "workers_per_node": 2, "global": 1, "device": uuids[1]},
    ]
    assert everywhere == [{"worker": 0, "workers_per_node": 2, "global": 0, "device": uuids[0]}]
    # A second pool (or a restarted worker) finds the slices made and keeps them.
    calls = len(state["calls"])
    with compute as pool:
        again = sky.gather(_on_a_slice(), _on_a_slice()) >> pool
    state = mig_state(env)
    assert [uuid for _, uuid in state["slices"]] == uuids
    assert not [c for c in state["calls"][calls:] if "-cgi" in c or "-mig 1" in c]
    assert sorted(r["device"] for r in again) == sorted(uuids)


def test_mig_that_cannot_be_turned_on_fails_the_node_saying_what_it_takes(
    tmp_path: Path,
) -> None:
    env = install(tmp_path) | {"FAKE_MIG_STUCK": "1"}
    compute = sky.Compute(
        provider=sky.Local(),
        image=sky.Image(env=env),
        plugins=[sky.plugins.mig("1g.10gb")],
        options=_options(1),
    )
    with pytest.raises(sky.ProvisionError) as caught, compute:
        pytest.fail("the block must not run")
    message = str(caught.value)
    assert "its 'plugins' phase" in message
    assert "MIG mode is in pending enable state" in message  # nvidia-smi's words
    assert "GPU 0's MIG mode is 'Disabled' after nvidia-smi -i 0 -mig 1" in message
    assert "root on the machine itself" in message
    assert not mig_state(env)["slices"]
