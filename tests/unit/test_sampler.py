"""The worker's sampler: reading ``/proc``, ``statvfs`` and ``nvidia-smi`` output, and the
sampler itself on this machine (real ``/proc``, real commands)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from skyward_trio import _wire, metrics
from skyward_trio._sampler import (
    Sampler,
    cpu_percent,
    cpu_times,
    custom_value,
    disk_percent,
    memory,
    network_bytes,
    nvidia_smi_rows,
)

STAT = """cpu  1000 50 300 8000 200 10 20 30 0 0
cpu0 500 25 150 4000 100 5 10 15 0 0
intr 12345
"""
MEMINFO = """MemTotal:       16384000 kB
MemFree:         1024000 kB
MemAvailable:    4096000 kB
Buffers:          100000 kB
Cached:          2000000 kB
HugePages_Total:       0
"""
NET_DEV = (
    "Inter-|   Receive                            |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets ...\n"
    "    lo: 900000 100 0 0 0 0 0 0 900000 100 0 0 0 0 0 0\n"
    "  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n"
    "  eth1:  500 5 0 0 0 0 0 0 700 7 0 0 0 0 0 0\n"
)


def test_cpu_use_is_busy_ticks_over_all_ticks_between_two_readings() -> None:
    before = cpu_times(STAT)
    # user..steal add up; idle and iowait are not busy (guest time is already in user).
    assert before == (1000 + 50 + 300 + 10 + 20 + 30, 9610)
    after = (before[0] + 300, before[1] + 400)
    assert cpu_percent(before, after) == 75.0
    assert cpu_percent(before, before) is None  # no time passed: no value, not 0
    assert cpu_percent(before, (before[0] + 10, before[1] + 5)) == 100.0  # clamped
    with pytest.raises(ValueError, match="does not start with the 'cpu' line"):
        cpu_times("intr 1 2 3\n")


def test_memory_used_is_total_less_available() -> None:
    assert memory(MEMINFO) == (16384000 * 1024, (16384000 - 4096000) * 1024)
    # Old kernels have no MemAvailable: free + buffers + cache stands in for it.
    old = "\n".join(line for line in MEMINFO.splitlines() if "Available" not in line)
    assert memory(old) == (16384000 * 1024, (16384000 - 1024000 - 100000 - 2000000) * 1024)
    with pytest.raises(ValueError, match="no MemTotal"):
        memory("MemFree: 1 kB\n")


def test_network_counts_every_interface_but_loopback_or_the_one_named() -> None:
    assert network_bytes(NET_DEV, None) == (1500, 2700)
    assert network_bytes(NET_DEV, "eth1") == (500, 700)
    assert network_bytes(NET_DEV, "lo") == (900000, 900000)
    with pytest.raises(ValueError, match="no network interface 'wlan0'"):
        network_bytes(NET_DEV, "wlan0")


def test_disk_counts_reserved_blocks_as_not_free_like_df() -> None:
    stat: Any = os.statvfs_result((4096, 4096, 1000, 300, 200, 0, 0, 0, 0, 255))
    # 700 used; 200 available to users (100 more are reserved for root): 700 / 900.
    assert disk_percent(stat) == pytest.approx(100 * 700 / 900)
    assert 0 <= disk_percent(os.statvfs("/")) <= 100


def test_nvidia_smi_rows_per_gpu_and_leaves_out_what_it_cannot_say() -> None:
    fields = ["utilization.gpu", "memory.used", "temperature.gpu"]
    output = "0, 87, 1024, 65\n1, [N/A], 2048, [Not Supported]\n\n"
    assert nvidia_smi_rows(output, fields) == [
        (0, {"utilization.gpu": 87.0, "memory.used": 1024.0, "temperature.gpu": 65.0}),
        (1, {"memory.used": 2048.0}),
    ]
    assert nvidia_smi_rows("", fields) == []
    with pytest.raises(ValueError, match="nvidia-smi printed 'No devices were found'"):
        nvidia_smi_rows("No devices were found\n", fields)


def test_a_custom_value_is_the_one_number_printed() -> None:
    assert custom_value(b" 42\n") == 42.0
    assert custom_value(b"-1.5e3") == -1500.0
    with pytest.raises(ValueError, match=r"printed 'ok', not a number"):
        custom_value(b"ok\n")
    with pytest.raises(ValueError, match=r"printed '1\\n2', not a number"):
        custom_value(b"1\n2\n")
    with pytest.raises(ValueError, match="not a finite number"):
        custom_value(b"nan")


async def _batches(sampler: Sampler, until: Any) -> list[tuple[Any, ...]]:
    """Run ``sampler`` with a channel attached until ``until(batches)``; return them."""
    batches: list[tuple[Any, ...]] = []
    done = trio.Event()

    async def send(message: tuple[Any, ...]) -> None:
        batches.append(message)
        if until(batches):
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run)
        sampler.attach(send)
        with trio.fail_after(30):  # a hang guard, not a timing check
            await done.wait()
        nursery.cancel_scope.cancel()
    return batches


def _samples(batches: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [sample for batch in batches for sample in batch[1]]


async def test_the_sampler_reads_this_machine_and_sends_batches() -> None:
    collectors = [
        metrics.CPU(interval=0.5),
        metrics.Memory(interval=0.5),
        metrics.MemoryUsed(),
        metrics.MemoryTotal(),
        metrics.Disk("/"),
        metrics.NetworkRx(interval=0.5),
    ]
    sampler = Sampler(collectors)

    def enough(batches: list[tuple[Any, ...]]) -> bool:
        names = {sample[0] for sample in _samples(batches)}
        return {"cpu", "network_rx"} <= names  # the two that need two readings

    batches = await _batches(sampler, enough)
    assert all(batch[0] == _wire.METRICS and batch[2] == [] for batch in batches)
    latest = {name: (value, unit, gpu) for name, value, unit, gpu, _ in _samples(batches)}
    assert 0 <= latest["cpu"][0] <= 100
    assert latest["cpu"][1:] == ("%", None)
    assert 0 < latest["memory"][0] <= 100
    assert 0 < latest["memory_used"][0] <= latest["memory_total"][0]
    assert latest["memory_total"][1] == "MiB"
    assert 0 <= latest["disk:/"][0] <= 100
    assert latest["network_rx"][0] >= 0
    assert latest["network_rx"][1] == "B/s"


async def test_a_failing_command_is_reported_once_and_again_after_it_recovered(
    tmp_path: Path,
) -> None:
    value = tmp_path / "value"
    custom = metrics.Custom("level", f"cat {value}", interval=0.5, unit="m")
    sampler = Sampler([custom])
    seen: list[str] = []

    def script(batches: list[tuple[Any, ...]]) -> bool:
        # Fails (no file), then works, then prints words, then works again.
        problems = [p for batch in batches for p in batch[2]]
        values = [s[1] for s in _samples(batches)]
        seen[:] = problems
        if len(problems) == 1 and not value.exists():
            value.write_text("7\n")
        elif len(problems) == 1 and values:
            value.write_text("seven\n")
        elif len(problems) == 2 and value.read_text() == "seven\n":
            value.write_text("8")
        return len(problems) == 2 and 8.0 in values

    batches = await _batches(sampler, script)
    assert seen[0].startswith(f"metric 'level' could not be sampled: its command 'cat {value}'")
    assert "failed (exit status 1): cat: " in seen[0]
    assert seen[1] == (
        f"metric 'level' could not be sampled: its command 'cat {value}' printed 'seven', "
        "not a number"
    )
    # Each failure was said once, though the command failed at every interval meanwhile.
    samples = _samples(batches)
    assert {(name, unit) for name, _, unit, _, _ in samples} == {("level", "m")}
    assert samples[0][1] == 7.0


async def test_samples_wait_for_a_channel_and_nvidia_smi_missing_means_no_gpu_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing here: no nvidia-smi
    sampler = Sampler([metrics.GPU(interval=0.5), metrics.MemoryTotal(interval=0.5)])
    got: list[tuple[Any, ...]] = []
    arrived = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run)
        await trio.sleep(0.6)  # sampled meanwhile, with nobody to send to

        async def send(message: tuple[Any, ...]) -> None:
            got.append(message)
            arrived.set()

        attached = time.time()
        sampler.attach(send)
        with trio.fail_after(30):
            await arrived.wait()
        sampler.detach(send)
        nursery.cancel_scope.cancel()
    (batch,) = got
    assert {sample[0] for sample in batch[1]} == {"memory_total"}
    assert min(sample[4] for sample in batch[1]) < attached  # kept while nobody listened
    assert batch[2] == []  # a machine without GPUs is not a problem
