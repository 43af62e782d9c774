"""The worker's metric sampler: reads its collectors on their timers, sends batches.

It starts with the worker (never per task) and runs in the worker's trio thread: one
small task per collector, one for all GPU collectors (a single ``nvidia-smi`` run
answers them all), and one that sends what was sampled. ``/proc`` reads take
microseconds and are done in place; ``statvfs`` (a hung network mount would block) and
commands run off the trio thread. Samples wait here, a bounded number, until a client's
control channel asks for them (``attach``); then they travel in batches of what was
sampled together.

A collector that cannot be read (no ``/proc`` off Linux, a ``Custom`` command that
fails) is reported once as a problem, which the client shows as an ``Error`` event; it
is reported again only after it worked in between. GPU metrics are never reported as a
problem: a machine without ``nvidia-smi`` has none, and one where it fails has none
either (noted once in the worker's log, which reaches the client's log file).

Layer 3 (trio, the wire and the metric records): imported on the workers.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import attrs
import trio

from . import _wire, metrics

__all__ = [
    "GPU_FIELDS",
    "Sampler",
    "cpu_percent",
    "cpu_times",
    "custom_value",
    "disk_percent",
    "from_config",
    "memory",
    "network_bytes",
    "nvidia_smi_rows",
    "to_config",
]

#: Which ``nvidia-smi --query-gpu`` field each GPU collector reads.
GPU_FIELDS: Final[dict[type[metrics.Collector], str]] = {
    metrics.GPU: "utilization.gpu",
    metrics.GPUMemory: "memory.used",
    metrics.GPUMemoryTotal: "memory.total",
    metrics.GPUTemp: "temperature.gpu",
}
_KINDS: Final = {kind.__name__: kind for kind in metrics.KINDS}
_KEPT: Final = 4096  # samples kept while no client reads them; the oldest go first
_PROBLEMS_KEPT: Final = 64
_GATHER: Final = 0.2  # seconds a batch waits for the samples taken with its first
_COMMAND_TIMEOUT: Final = 30.0  # at least; a command may take up to its interval
_SLACK: Final = 0.05  # GPU collectors due this close together share one nvidia-smi run

#: ``(name, value, unit, gpu index or None, time)``: one sample as it travels.
Sample = tuple[str, float, str, int | None, float]
#: Sends one message on a client's control channel.
Send = Callable[[tuple[Any, ...]], Awaitable[None]]


# -- the collectors in worker.json ----------------------------------------------------------


def to_config(collectors: Iterable[metrics.Collector]) -> list[dict[str, Any]]:
    """The collectors as JSON-ready dicts, for ``worker.json``."""
    return [{"kind": type(c).__name__, **attrs.asdict(c)} for c in collectors]


def from_config(items: Sequence[dict[str, Any]]) -> tuple[metrics.Collector, ...]:
    """The collectors ``to_config`` wrote (checked again as they are built)."""
    found = []
    for item in items:
        fields = dict(item)
        kind = _KINDS.get(fields.pop("kind"))
        if kind is None:
            raise ValueError(f"unknown metric collector {item!r}")
        found.append(kind(**fields))
    return tuple(found)


# -- what the machine says -------------------------------------------------------------------


def cpu_times(stat: str) -> tuple[int, int]:
    """``(busy, total)`` clock ticks of all CPUs so far, from ``/proc/stat``."""
    fields = stat.split("\n", 1)[0].split()
    if len(fields) < 5 or fields[0] != "cpu":
        raise ValueError(f"/proc/stat does not start with the 'cpu' line: {stat[:80]!r}")
    # user nice system idle iowait irq softirq steal; guest time is already in user.
    ticks = [int(value) for value in fields[1:9]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    total = sum(ticks)
    return total - idle, total


def cpu_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """CPU use between two ``cpu_times`` readings, 0-100; None when no time passed."""
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * busy / total))


def memory(meminfo: str) -> tuple[int, int]:
    """``(total, used)`` bytes, from ``/proc/meminfo`` (used: total less available)."""
    kib: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kib[key] = int(parts[0])
    if "MemTotal" not in kib:
        raise ValueError("/proc/meminfo has no MemTotal line")
    available = kib.get("MemAvailable")
    if available is None:  # kernels before 3.14 do not estimate it
        available = kib.get("MemFree", 0) + kib.get("Buffers", 0) + kib.get("Cached", 0)
    total = kib["MemTotal"]
    return total * 1024, max(0, total - available) * 1024


def network_bytes(net_dev: str, interface: str | None) -> tuple[int, int]:
    """``(received, sent)`` bytes so far through ``interface``, or all but loopback."""
    received = sent = 0
    found = False
    for line in net_dev.splitlines()[2:]:  # two header lines
        name, colon, rest = line.partition(":")
        name = name.strip()
        wanted = name != "lo" if interface is None else name == interface
        if not colon or not wanted:
            continue
        fields = rest.split()
        received += int(fields[0])
        sent += int(fields[8])
        found = True
    if interface is not None and not found:
        raise ValueError(f"this node has no network interface {interface!r}")
    return received, sent


def disk_percent(stat: os.statvfs_result) -> float:
    """How full a file system is, 0-100, as ``df`` counts it (reserved blocks not free)."""
    used = stat.f_blocks - stat.f_bfree
    usable = used + stat.f_bavail
    return 100.0 * used / usable if usable > 0 else 0.0


def nvidia_smi_rows(output: str, fields: Sequence[str]) -> list[tuple[int, dict[str, float]]]:
    """Each GPU's index and values, from ``nvidia-smi --query-gpu=index,<fields>
    --format=csv,noheader,nounits``. A value it cannot give (``[N/A]``, ``[Not
    Supported]``) is left out, not guessed."""
    rows = []
    for line in output.splitlines():
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(fields) + 1 or not cells[0].isdigit():
            raise ValueError(f"nvidia-smi printed {line!r}, not index,{','.join(fields)}")
        values = {}
        for field, cell in zip(fields, cells[1:], strict=True):
            try:
                value = float(cell)
            except ValueError:
                continue
            if math.isfinite(value):
                values[field] = value
        rows.append((int(cells[0]), values))
    return rows


def custom_value(stdout: bytes) -> float:
    """The number a ``Custom`` command printed; ValueError saying what it printed instead."""
    text = stdout.decode(errors="replace").strip()
    try:
        value = float(text)
    except ValueError:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ValueError(f"printed {shown!r}, not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"printed {text!r}, not a finite number")
    return value


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


_MiB: Final = 1024 * 1024


# -- the sampler -----------------------------------------------------------------------------


class Sampler:
    """Samples ``collectors`` while ``run`` runs; sends batches to attached channels."""

    def __init__(self, collectors: Sequence[metrics.Collector]) -> None:
        self._collectors = tuple(collectors)
        self._samples: collections.deque[Sample] = collections.deque(maxlen=_KEPT)
        self._problems: collections.deque[str] = collections.deque(maxlen=_PROBLEMS_KEPT)
        self._failing: set[str] = set()
        self._sinks: list[Send] = []
        self._wake = trio.Event()
        self._noted: set[str] = set()  # what was written to the worker's log once

    def attach(self, send: Send) -> None:
        """A client's control channel wants the samples: send them there from now on."""
        if send not in self._sinks:
            self._sinks.append(send)
        self._wake.set()  # what waited for a reader goes now

    def detach(self, send: Send) -> None:
        if send in self._sinks:
            self._sinks.remove(send)

    async def run(self) -> None:
        """Sample until cancelled (when the worker stops)."""
        gpus = [c for c in self._collectors if type(c) in GPU_FIELDS]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_loop)
            if gpus:
                nursery.start_soon(self._sample_gpus, gpus)
            for collector in self._collectors:
                if isinstance(collector, metrics.Custom):
                    nursery.start_soon(self._sample_command, collector)
                elif type(collector) not in GPU_FIELDS:
                    nursery.start_soon(self._sample_machine, collector)

    # -- bookkeeping

    def _record(self, collector: metrics.Collector, value: float, gpu: int | None = None) -> None:
        self._samples.append((collector.metric, value, collector.unit, gpu, time.time()))
        self._wake.set()

    def _worked(self, collector: metrics.Collector) -> None:
        self._failing.discard(collector.metric)

    def _problem(self, collector: metrics.Collector, why: str) -> None:
        if collector.metric in self._failing:
            return
        self._failing.add(collector.metric)
        self._problems.append(f"metric {collector.metric!r} could not be sampled: {why}")
        self._wake.set()

    def _note(self, key: str, text: str) -> None:
        """Write ``text`` to the worker's log, once."""
        if key not in self._noted:
            self._noted.add(key)
            print(f"skyward worker: {text}", file=sys.stderr, flush=True)

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(_GATHER)
            if not self._sinks or not (self._samples or self._problems):
                continue  # kept until a client asks (attach wakes this loop again)
            message = (_wire.METRICS, list(self._samples), list(self._problems))
            self._samples.clear()
            self._problems.clear()
            for send in list(self._sinks):
                await send(message)

    # -- the collectors

    async def _sample_machine(self, collector: metrics.Collector) -> None:
        """A ``/proc`` or ``statvfs`` collector, every ``interval`` seconds."""
        read = _reader(collector)
        deadline = trio.current_time()
        while True:
            try:
                if isinstance(collector, metrics.Disk):
                    value = await trio.to_thread.run_sync(read, abandon_on_cancel=True)
                else:
                    value = read()
            except (OSError, ValueError, IndexError) as exc:
                self._problem(collector, _why(exc))
            else:
                self._worked(collector)
                if value is not None:
                    self._record(collector, value)
            deadline = max(deadline + collector.interval, trio.current_time())
            await trio.sleep_until(deadline)

    async def _sample_command(self, collector: metrics.Custom) -> None:
        timeout = max(collector.interval, _COMMAND_TIMEOUT)
        deadline = trio.current_time()
        while True:
            with trio.move_on_after(timeout) as scope:
                try:
                    value = await self._run_custom(collector)
                except (OSError, ValueError) as exc:
                    self._problem(collector, f"its command {collector.command!r} {_why(exc)}")
                else:
                    self._worked(collector)
                    self._record(collector, value)
            if scope.cancelled_caught:
                why = f"did not finish within {timeout:g} s (it was stopped)"
                self._problem(collector, f"its command {collector.command!r} {why}")
            deadline = max(deadline + collector.interval, trio.current_time())
            await trio.sleep_until(deadline)

    async def _run_custom(self, collector: metrics.Custom) -> float:
        done = await trio.run_process(
            ["/bin/sh", "-c", collector.command],
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            tail = f": {said[-1][:200]}" if said else ""
            raise ValueError(f"failed (exit status {done.returncode}){tail}")
        return custom_value(done.stdout)

    async def _sample_gpus(self, collectors: list[metrics.Collector]) -> None:
        """Every GPU collector from one ``nvidia-smi`` run per tick (the ones due then)."""
        now = trio.current_time()
        due = dict.fromkeys(collectors, now)
        while True:
            now = trio.current_time()
            wanted = [c for c in collectors if due[c] <= now + _SLACK]
            for collector in wanted:
                due[collector] = max(due[collector] + collector.interval, now)
            fields = [GPU_FIELDS[type(c)] for c in wanted]
            rows = await self._nvidia_smi(fields)
            if rows is None:
                return  # no nvidia-smi here: no GPU metrics, ever
            for index, values in rows:
                for collector, field in zip(wanted, fields, strict=True):
                    if field in values:
                        self._record(collector, values[field], index)
            await trio.sleep_until(min(due.values()))

    async def _nvidia_smi(self, fields: list[str]) -> list[tuple[int, dict[str, float]]] | None:
        """The GPUs' values; ``[]`` when nvidia-smi failed this time; None when it is not
        here at all."""
        command = [
            "nvidia-smi",
            f"--query-gpu=index,{','.join(fields)}",
            "--format=csv,noheader,nounits",
        ]
        try:
            with trio.move_on_after(_COMMAND_TIMEOUT):
                done = await trio.run_process(
                    command, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
                )
                if done.returncode != 0:
                    said = done.stderr.decode(errors="replace").strip()
                    self._note("gpu failed", f"nvidia-smi failed ({said[:200]}): no GPU metrics")
                    return []
                return nvidia_smi_rows(done.stdout.decode(errors="replace"), fields)
            self._note("gpu slow", f"nvidia-smi took over {_COMMAND_TIMEOUT:g} s: stopped")
            return []
        except FileNotFoundError:
            return None  # a machine without GPUs, the usual case: nothing to say
        except (OSError, ValueError) as exc:
            self._note("gpu failed", f"nvidia-smi: {exc}; no GPU metrics")
            return []


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def _reader(collector: metrics.Collector) -> Callable[[], float | None]:
    """A function that reads ``collector`` now: None while it has no value yet (rates
    and CPU use need two readings)."""
    if isinstance(collector, metrics.CPU):
        before: tuple[int, int] | None = None

        def cpu() -> float | None:
            nonlocal before
            after = cpu_times(_read("/proc/stat"))
            percent = None if before is None else cpu_percent(before, after)
            before = after
            return percent

        return cpu
    if isinstance(collector, metrics.Memory | metrics.MemoryUsed | metrics.MemoryTotal):
        kind = type(collector)

        def mem() -> float:
            total, used = memory(_read("/proc/meminfo"))
            if kind is metrics.Memory:
                return 100.0 * used / total if total else 0.0
            return (used if kind is metrics.MemoryUsed else total) / _MiB

        return mem
    if isinstance(collector, metrics.Disk):
        path = collector.path
        return lambda: disk_percent(os.statvfs(path))
    if isinstance(collector, metrics.NetworkRx | metrics.NetworkTx):
        side = 0 if isinstance(collector, metrics.NetworkRx) else 1
        interface = collector.interface
        last: tuple[int, float] | None = None

        def network() -> float | None:
            nonlocal last
            count = network_bytes(_read("/proc/net/dev"), interface)[side]
            now = time.monotonic()
            rate = None
            if last is not None and now > last[1]:
                rate = max(0.0, (count - last[0]) / (now - last[1]))
            last = (count, now)
            return rate

        return network
    raise ValueError(f"no reader for {collector!r}")
