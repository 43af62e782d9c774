"""``Image(metrics=...)`` on real Local nodes: each worker samples its collectors and the
values come back as ``Metric`` events on ``pool.events()``.

GPU metrics come from ``nvidia-smi``, which this machine does not have: a stand-in script
put on the workers' PATH plays it (the boundary to hardware that cannot run here), and an
empty PATH, or one whose ``nvidia-smi`` fails, shows that none are made up.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import skyward_trio as st
from skyward_trio import metrics

QUIET = st.Options(console="silent")
# Every 0.5 s (the least allowed), so a test waits for a few samples, not for minutes.
FAST = metrics.Default(interval=0.5)

FAKE_NVIDIA_SMI = """\
#!{python}
# Plays nvidia-smi for two GPUs: answers only the query the sampler makes, as the real
# one formats it; anything else is an error, as it would be there.
import sys

args = sys.argv[1:]
query = [a for a in args if a.startswith("--query-gpu=")]
if len(args) != 2 or "--format=csv,noheader,nounits" not in args or len(query) != 1:
    print(f"unexpected arguments {{args}}", file=sys.stderr)
    sys.exit(2)
values = {{
    "utilization.gpu": ["37", "91"],
    "memory.used": ["1024", "[N/A]"],
    "memory.total": ["81559", "81559"],
    "temperature.gpu": ["55", "63"],
}}
fields = query[0].split("=", 1)[1].split(",")
assert fields[0] == "index", fields
for gpu in (0, 1):
    print(", ".join([str(gpu)] + [values[f][gpu] for f in fields[1:]]))
"""


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    script = folder / "nvidia-smi"
    script.write_text(body)
    script.chmod(0o755)


async def _watch(
    image: st.Image, until: Callable[[list[Any]], bool], nodes: int = 1
) -> tuple[list[Any], Any]:
    """Run a pool of ``image`` and read its ``Metric``/``Error`` events until ``until``
    says so; return them, and what ``_node_dir`` said on node 0."""
    seen: list[Any] = []
    async with st.Compute(provider=st.Local(), nodes=nodes, image=image, options=QUIET) as pool:
        with trio.fail_after(90):  # a hang guard, not a timing check
            async with pool.events() as stream:
                async for event in stream:
                    if isinstance(event, st.Metric | st.Error):
                        seen.append(event)
                        if until(seen):
                            break
        config = await pool.run(_worker_config())
    return seen, config


@st.function
def _worker_config() -> dict[str, Any]:
    """The worker's own config, which the pool wrote (a task runs in the worker's folder)."""
    return json.loads(Path("worker.json").read_text())


def _names(seen: list[Any], node: int | None = None) -> set[str]:
    return {e.name for e in seen if isinstance(e, st.Metric) and node in (None, e.node)}


def _latest(seen: list[Any], node: int, name: str, gpu: int | None = None) -> Any:
    found = [
        e for e in seen if isinstance(e, st.Metric) and (e.node, e.name, e.gpu) == (node, name, gpu)
    ]
    return found[-1]


async def test_default_metrics_arrive_from_every_node_with_plausible_values() -> None:
    wanted = {"cpu", "memory", "memory_used", "memory_total", "disk:/", "network_rx"}

    def enough(seen: list[Any]) -> bool:
        return all(wanted <= _names(seen, node) for node in (0, 1))

    seen, config = await _watch(st.Image(metrics=FAST), enough, nodes=2)
    assert not [e for e in seen if isinstance(e, st.Error)]
    assert {e.job_id for e in seen} == {seen[0].job_id}
    for node in (0, 1):
        cpu = _latest(seen, node, "cpu")
        assert (cpu.unit, cpu.gpu) == ("%", None)
        assert 0 <= cpu.value <= 100
        assert 0 < _latest(seen, node, "memory").value <= 100
        used, total = _latest(seen, node, "memory_used"), _latest(seen, node, "memory_total")
        assert used.unit == total.unit == "MiB"
        assert 0 < used.value <= total.value
        assert abs(total.value * 1024 * 1024 - _this_machines_memory()) < 1024 * 1024
        disk = _latest(seen, node, "disk:/")
        assert disk.unit == "%"
        assert abs(disk.value - _root_disk_percent()) < 5  # the same file system as here
        assert _latest(seen, node, "network_rx").value >= 0
    assert not _names(seen) & {"gpu", "gpu_memory", "gpu_temp"}  # no nvidia-smi here
    assert [c["kind"] for c in config["metrics"]][:3] == ["CPU", "Memory", "MemoryUsed"]


async def test_a_reader_that_comes_later_gets_each_metrics_latest_sample_at_once() -> None:
    # The memory total is sampled once a minute: a reader that subscribes after a sample
    # gets it replayed, not a minute later.
    image = st.Image(metrics=[metrics.MemoryTotal(), metrics.CPU(interval=0.5)])
    async with st.Compute(provider=st.Local(), nodes=2, image=image, options=QUIET) as pool:
        with trio.fail_after(30):  # a hang guard: a missing replay would wait out the minute
            first = await _read_until(
                pool,
                lambda seen: all(_names(seen, node) == {"memory_total", "cpu"} for node in (0, 1)),
            )
            totals = {e.node: e for e in first if e.name == "memory_total"}
            assert set(totals) == {0, 1}
            later = await _read_until(
                pool, lambda seen: {e.node for e in seen if e.name == "memory_total"} == {0, 1}
            )
    replayed = {e.node: e for e in later if e.name == "memory_total"}
    assert replayed == totals  # the very samples the first reader saw, not new ones


async def _read_until(pool: st.Pool, enough: Callable[[list[Any]], bool]) -> list[Any]:
    """Read a new ``pool.events()`` until the ``Metric`` events seen are ``enough``."""
    seen: list[Any] = []
    async with pool.events() as stream:
        async for event in stream:
            if isinstance(event, st.Metric):
                seen.append(event)
                if enough(seen):
                    return seen
    raise AssertionError(f"the pool closed first; metrics seen: {seen}")


def _this_machines_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _root_disk_percent() -> float:
    stat = os.statvfs("/")
    used = stat.f_blocks - stat.f_bfree
    return 100 * used / (used + stat.f_bavail)


async def test_a_custom_metric_arrives_and_a_failing_one_is_reported_once() -> None:
    image = st.Image(
        metrics=[
            metrics.Custom("answer", "echo $((6 * 7))", interval=0.5, unit="things"),
            metrics.Custom("broken", "echo oops >&2; exit 3", interval=0.5),
        ]
    )

    def enough(seen: list[Any]) -> bool:
        return sum(1 for e in seen if isinstance(e, st.Metric)) >= 4  # the command ran on

    seen, config = await _watch(image, enough)
    values = [(e.name, e.value, e.unit) for e in seen if isinstance(e, st.Metric)]
    assert set(values) == {("answer", 42.0, "things")}
    errors = [e for e in seen if isinstance(e, st.Error)]
    assert [(e.node, e.message) for e in errors] == [
        (
            0,
            "metric 'broken' could not be sampled: its command 'echo oops >&2; exit 3' failed "
            "(exit status 3): oops",
        )
    ]
    assert [c["name"] for c in config["metrics"]] == ["answer", "broken"]


async def test_metrics_none_samples_nothing_and_sends_nothing() -> None:
    seen: list[Any] = []
    image = st.Image(metrics=None)
    async with (
        st.Compute(provider=st.Local(), nodes=1, image=image, options=QUIET) as pool,
        trio.open_nursery() as nursery,
    ):

        async def read() -> None:
            async for event in pool.events():
                seen.append(event)

        nursery.start_soon(read)
        config = await pool.run(_worker_config())
        # Samples would have come by now: the first are taken as the worker starts.
        for _ in range(5):
            await trio.sleep(0.5)
            assert await pool.run(_worker_config()) == config
        nursery.cancel_scope.cancel()
    assert config["metrics"] == []  # the worker got no collectors: no sampler runs
    assert not [e for e in seen if isinstance(e, st.Metric | st.Error)]


async def test_gpu_metrics_come_from_nvidia_smi_on_the_nodes_path(tmp_path: Path) -> None:
    _fake_nvidia_smi(tmp_path, FAKE_NVIDIA_SMI.format(python=sys.executable))
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    gpu = [
        metrics.GPU(interval=0.5),
        metrics.GPUMemory(interval=0.5),
        metrics.GPUMemoryTotal(),
        metrics.GPUTemp(interval=0.5),
    ]

    def enough(seen: list[Any]) -> bool:
        return sum(1 for e in seen if isinstance(e, st.Metric) and e.name == "gpu") >= 4

    seen, _ = await _watch(st.Image(env=env, metrics=gpu), enough)
    assert not [e for e in seen if isinstance(e, st.Error)]
    got = {(e.name, e.gpu, e.value, e.unit) for e in seen if isinstance(e, st.Metric)}
    assert got == {
        ("gpu", 0, 37.0, "%"),
        ("gpu", 1, 91.0, "%"),
        ("gpu_memory", 0, 1024.0, "MiB"),  # GPU 1 said [N/A]: left out, not made up
        ("gpu_memory_total", 0, 81559.0, "MiB"),
        ("gpu_memory_total", 1, 81559.0, "MiB"),
        ("gpu_temp", 0, 55.0, "°C"),
        ("gpu_temp", 1, 63.0, "°C"),
    }


FAILING_NVIDIA_SMI = """\
#!/bin/sh
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
exit 9
"""


async def test_without_a_working_nvidia_smi_there_are_no_gpu_metrics(tmp_path: Path) -> None:
    missing, failing = tmp_path / "missing", tmp_path / "failing"
    missing.mkdir()
    failing.mkdir()
    _fake_nvidia_smi(failing, textwrap.dedent(FAILING_NVIDIA_SMI))
    for path in (str(missing), f"{failing}:{os.environ['PATH']}"):

        def enough(seen: list[Any]) -> bool:
            # Two CPU samples: the GPU collectors, due at the start and every 0.5 s, ran.
            return sum(1 for e in seen if isinstance(e, st.Metric) and e.name == "cpu") >= 2

        seen, _ = await _watch(st.Image(env={"PATH": path}, metrics=FAST), enough)
        assert not [e for e in seen if isinstance(e, st.Error)], path  # no GPU is no fault
        assert "memory" in _names(seen)
        assert not [name for name in _names(seen) if name.startswith("gpu")], path
