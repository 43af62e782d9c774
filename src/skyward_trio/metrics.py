"""Telemetry collectors for ``Image(metrics=...)``: what each worker samples, and how often.

    sky.Image(metrics=[sky.metrics.CPU(interval=1), sky.metrics.Disk("/data")])
    sky.Image(metrics=sky.metrics.Default())     # the standard set (the default)
    sky.Image(metrics=None)                      # sample nothing

Each worker samples its collectors on its own timer (not per task) and streams the values
back; they arrive as ``Metric`` events on ``pool.events()`` and feed the consoles. CPU,
memory, disk and network are read from ``/proc`` and ``statvfs``, so they need Linux
nodes; GPU metrics come from ``nvidia-smi`` and are absent where it is missing or fails,
never made up. ``Custom`` runs a shell command and reports the number it prints.

Layer 1: stdlib and attrs only (imported on the workers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import ClassVar

import attrs

__all__ = [
    "CPU",
    "GPU",
    "Collector",
    "Custom",
    "Default",
    "Disk",
    "GPUMemory",
    "GPUMemoryTotal",
    "GPUTemp",
    "Memory",
    "MemoryTotal",
    "MemoryUsed",
    "NetworkRx",
    "NetworkTx",
    "expand",
]

#: Below this, sampling costs the node more than the numbers tell.
MIN_INTERVAL = 0.5
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _check_interval(record: str, value: object, *, optional: bool = False) -> None:
    fix = "Pass a number of seconds, e.g. interval=5" + (
        ", or None for each collector's own." if optional else "."
    )
    if value is None and optional:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(
            f"{record}(interval={value!r}): interval must be a number of seconds, "
            f"got {type(value).__name__}. {fix}"
        )
    if not math.isfinite(value) or value < MIN_INTERVAL:
        raise ValueError(
            f"{record}(interval={value!r}): interval must be at least {MIN_INTERVAL:g} "
            f"seconds. {fix}"
        )


@attrs.frozen(kw_only=True)
class Collector:
    """Base of the collectors: one metric, sampled every ``interval`` seconds."""

    interval: float = 3.0

    #: The name its ``Metric`` events carry, and their unit.
    _METRIC: ClassVar[str] = ""
    _UNIT: ClassVar[str] = ""

    def __attrs_post_init__(self) -> None:
        _check_interval(type(self).__name__, self.interval)

    @property
    def metric(self) -> str:
        """The ``name`` of the ``Metric`` events this collector produces."""
        return self._METRIC

    @property
    def unit(self) -> str:
        """The ``unit`` of those events."""
        return self._UNIT


@attrs.frozen(kw_only=True)
class CPU(Collector):
    """The machine's CPU use, 0-100 % over all cores (``/proc/stat``; every process counts,
    not only the worker's)."""

    _METRIC = "cpu"
    _UNIT = "%"


@attrs.frozen(kw_only=True)
class Memory(Collector):
    """The machine's memory in use, 0-100 % (``MemTotal - MemAvailable`` of ``/proc/meminfo``)."""

    _METRIC = "memory"
    _UNIT = "%"


@attrs.frozen(kw_only=True)
class MemoryUsed(Collector):
    """The machine's memory in use, in MiB."""

    _METRIC = "memory_used"
    _UNIT = "MiB"


@attrs.frozen(kw_only=True)
class MemoryTotal(Collector):
    """The machine's memory, in MiB (it does not change: sampled once a minute)."""

    interval: float = 60.0
    _METRIC = "memory_total"
    _UNIT = "MiB"


@attrs.frozen(kw_only=True)
class GPU(Collector):
    """Each GPU's utilization, 0-100 % (``nvidia-smi``; one event per GPU, ``Metric.gpu``
    its index)."""

    _METRIC = "gpu"
    _UNIT = "%"


@attrs.frozen(kw_only=True)
class GPUMemory(Collector):
    """Each GPU's memory in use, in MiB (``nvidia-smi``)."""

    _METRIC = "gpu_memory"
    _UNIT = "MiB"


@attrs.frozen(kw_only=True)
class GPUMemoryTotal(Collector):
    """Each GPU's memory, in MiB (``nvidia-smi``; sampled once a minute)."""

    interval: float = 60.0
    _METRIC = "gpu_memory_total"
    _UNIT = "MiB"


@attrs.frozen(kw_only=True)
class GPUTemp(Collector):
    """Each GPU's temperature, in °C (``nvidia-smi``)."""

    _METRIC = "gpu_temp"
    _UNIT = "°C"


@attrs.frozen
class Disk(Collector):
    """How full the file system holding ``path`` is, 0-100 % (as ``df`` counts it).

    Its events are named ``disk:<path>``, e.g. ``disk:/`` and ``disk:/data``.
    """

    path: str = "/"
    interval: float = attrs.field(default=10.0, kw_only=True)
    _UNIT = "%"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise TypeError(
                f"Disk(path={self.path!r}): path must be a str, got {type(self.path).__name__}. "
                'Pass e.g. Disk("/data").'
            )
        if not self.path.startswith("/"):
            raise ValueError(
                f"Disk(path={self.path!r}): path must be an absolute path on the node. "
                'Pass e.g. Disk("/data").'
            )
        super().__attrs_post_init__()

    @property
    def metric(self) -> str:
        return f"disk:{self.path}"


@attrs.frozen(kw_only=True)
class _Network(Collector):
    """Bytes per second through ``interface``, or through all but loopback when None."""

    interface: str | None = None
    _UNIT = "B/s"

    def __attrs_post_init__(self) -> None:
        if self.interface is not None and (
            not isinstance(self.interface, str) or not _NAME.fullmatch(self.interface)
        ):
            record = type(self).__name__
            raise ValueError(
                f"{record}(interface={self.interface!r}): interface must be a network "
                f'interface name, e.g. {record}(interface="eth0"), or None for all of them '
                "but loopback."
            )
        super().__attrs_post_init__()


@attrs.frozen(kw_only=True)
class NetworkRx(_Network):
    """Bytes received per second (``/proc/net/dev``), over all interfaces but loopback
    unless ``interface`` names one."""

    _METRIC = "network_rx"


@attrs.frozen(kw_only=True)
class NetworkTx(_Network):
    """Bytes sent per second (``/proc/net/dev``), over all interfaces but loopback unless
    ``interface`` names one."""

    _METRIC = "network_tx"


#: The collectors whose metric has a fixed name.
_FIXED: tuple[type[Collector], ...] = (
    CPU,
    Memory,
    MemoryUsed,
    MemoryTotal,
    GPU,
    GPUMemory,
    GPUMemoryTotal,
    GPUTemp,
    NetworkRx,
    NetworkTx,
)
#: Names the built-in collectors report; a ``Custom`` metric may not take one.
BUILT_IN = frozenset(kind._METRIC for kind in _FIXED)


@attrs.frozen
class Custom(Collector):
    """A number of your own: ``command`` runs in ``/bin/sh`` on the node every ``interval``
    seconds, and what it prints to stdout (one number) is the value.

    A command that fails or prints something else is reported once as an ``Error`` event
    (and again if it recovers and fails later); the worker carries on.
    """

    name: str
    command: str
    interval: float = attrs.field(default=3.0, kw_only=True)
    unit: str = attrs.field(default="", kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"Custom(name={self.name!r}): name must be letters, digits, '_', '.' or '-', "
                'starting with a letter or \'_\'. Pass e.g. Custom("queue_depth", "...").'
            )
        if self.name in BUILT_IN:
            raise ValueError(
                f"Custom(name={self.name!r}): {self.name!r} is a built-in metric's name. "
                'Pick another, e.g. Custom("my_' + self.name + '", ...).'
            )
        if not isinstance(self.command, str) or not self.command.strip():
            raise ValueError(
                f"Custom(command={self.command!r}): command must be a shell command that "
                'prints one number. Pass e.g. command="ls /data | wc -l".'
            )
        if not isinstance(self.unit, str):
            raise TypeError(
                f'Custom(unit={self.unit!r}): unit must be a str, e.g. unit="items" '
                '(or "" for none).'
            )
        super().__attrs_post_init__()

    @property
    def metric(self) -> str:
        return self.name


#: Every kind of collector (what a worker's config names).
KINDS: tuple[type[Collector], ...] = (*_FIXED, Disk, Custom)


@attrs.frozen(kw_only=True)
class Default:
    """The standard set: CPU, memory (%, used, total), each GPU (utilization, memory used
    and total, temperature), how full ``/`` is, and network traffic in and out.

    ``interval`` (seconds) overrides the sampling interval of the ones that change (the
    totals stay at once a minute); None keeps each collector's own (3 s; 10 s for the
    disk).
    """

    interval: float | None = None

    def __attrs_post_init__(self) -> None:
        _check_interval("Default", self.interval, optional=True)

    @property
    def collectors(self) -> tuple[Collector, ...]:
        """The collectors this set stands for."""
        changing: tuple[Collector, ...] = (
            CPU(),
            Memory(),
            MemoryUsed(),
            GPU(),
            GPUMemory(),
            GPUTemp(),
            Disk("/"),
            NetworkRx(),
            NetworkTx(),
        )
        if self.interval is not None:
            changing = tuple(attrs.evolve(c, interval=self.interval) for c in changing)
        return (*changing, MemoryTotal(), GPUMemoryTotal())


def expand(setting: Iterable[Collector | Default] | None) -> tuple[Collector, ...]:
    """The collectors an ``Image.metrics`` setting stands for, each metric once.

    A collector you list replaces a ``Default()`` one of the same metric (so
    ``[Default(), CPU(interval=1)]`` is the standard set with CPU every second); two you
    list for the same metric are refused (ValueError), as one would be ignored.
    """
    if setting is None:
        return ()
    chosen: dict[str, Collector] = {}
    listed: dict[str, Collector] = {}
    for item in setting:
        if isinstance(item, Default):
            for collector in item.collectors:
                if collector.metric not in listed:
                    chosen[collector.metric] = collector
            continue
        earlier = listed.get(item.metric)
        if earlier is not None:
            raise ValueError(
                f"{earlier!r} and {item!r} both report {item.metric!r}; keep one of them"
            )
        listed[item.metric] = chosen[item.metric] = item
    return tuple(chosen.values())
