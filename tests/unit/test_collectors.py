"""``sky.metrics``: the collector records, their checks, and what ``Default()`` stands for."""

from __future__ import annotations

import pickle
from typing import Any

import attrs
import pytest

import skyward as sky
import skyward_trio
from skyward_trio import metrics
from skyward_trio._sampler import from_config, to_config

ALL = [
    metrics.CPU(),
    metrics.Memory(),
    metrics.MemoryUsed(),
    metrics.MemoryTotal(),
    metrics.GPU(),
    metrics.GPUMemory(),
    metrics.GPUMemoryTotal(),
    metrics.GPUTemp(),
    metrics.Disk("/data"),
    metrics.NetworkRx(),
    metrics.NetworkTx(interface="eth0"),
    metrics.Custom("queue_depth", "ls /tmp | wc -l", interval=5, unit="files"),
]


def test_both_faces_export_the_module_and_the_event() -> None:
    assert sky.metrics is skyward_trio.metrics is metrics
    assert sky.Metric is skyward_trio.Metric
    assert "metrics" in sky.__all__
    assert "Metric" in skyward_trio.__all__
    for name in metrics.__all__:
        assert hasattr(metrics, name)


def test_each_collector_names_its_metric_and_unit() -> None:
    assert [(c.metric, c.unit) for c in ALL] == [
        ("cpu", "%"),
        ("memory", "%"),
        ("memory_used", "MiB"),
        ("memory_total", "MiB"),
        ("gpu", "%"),
        ("gpu_memory", "MiB"),
        ("gpu_memory_total", "MiB"),
        ("gpu_temp", "°C"),
        ("disk:/data", "%"),
        ("network_rx", "B/s"),
        ("network_tx", "B/s"),
        ("queue_depth", "files"),
    ]


def test_intervals_have_sensible_defaults_and_take_a_keyword() -> None:
    assert metrics.CPU().interval == 3.0
    assert metrics.MemoryTotal().interval == 60.0  # totals do not change
    assert metrics.GPUMemoryTotal().interval == 60.0
    assert metrics.Disk().interval == 10.0
    assert metrics.Disk().path == "/"
    assert metrics.Custom("n", "echo 1").interval == 3.0
    assert metrics.CPU(interval=1).interval == 1
    with pytest.raises(TypeError):
        metrics.CPU(1)  # type: ignore[misc]  # keyword only: CPU(1) reads as anything


def test_collectors_are_frozen_hashable_and_picklable() -> None:
    for collector in ALL:
        assert pickle.loads(pickle.dumps(collector)) == collector
        assert hash(collector) == hash(attrs.evolve(collector))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        metrics.CPU().interval = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda: metrics.CPU(interval=0.1),
            ValueError,
            r"CPU\(interval=0.1\): interval must be at least 0.5 seconds\. .*interval=5",
        ),
        (lambda: metrics.GPU(interval=float("nan")), ValueError, r"at least 0.5 seconds"),
        (
            lambda: metrics.Memory(interval="1s"),
            TypeError,
            r"Memory\(interval='1s'\): interval must be a number of seconds, got str",
        ),
        (lambda: metrics.GPUTemp(interval=True), TypeError, r"got bool"),
        (
            lambda: metrics.Disk("data"),
            ValueError,
            r"Disk\(path='data'\): path must be an absolute path on the node\. .*Disk\(\"/data\"\)",
        ),
        (lambda: metrics.Disk(3), TypeError, r"Disk\(path=3\): path must be a str, got int"),
        (
            lambda: metrics.NetworkRx(interface="eth 0"),
            ValueError,
            r"NetworkRx\(interface='eth 0'\): interface must be a network interface name",
        ),
        (
            lambda: metrics.Custom("my metric", "echo 1"),
            ValueError,
            r"Custom\(name='my metric'\): name must be letters, digits",
        ),
        (
            lambda: metrics.Custom("cpu", "echo 1"),
            ValueError,
            r"'cpu' is a built-in metric's name\. Pick another, e\.g\. Custom\(\"my_cpu\"",
        ),
        (
            lambda: metrics.Custom("n", "  "),
            ValueError,
            r"Custom\(command='  '\): command must be a shell command that prints one number",
        ),
        (lambda: metrics.Custom("n", "echo 1", unit=3), TypeError, r"unit must be a str"),
        (
            lambda: metrics.Custom("n", "echo 1", interval=0),
            ValueError,
            r"Custom\(interval=0\): interval must be at least",
        ),
        (lambda: metrics.Default(interval=0.2), ValueError, r"Default\(interval=0.2\)"),
        (lambda: metrics.Default(interval="x"), TypeError, r"or None for each collector's own"),
    ],
)
def test_bad_collectors_fail_where_they_are_made(make: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_default_is_cpu_memory_gpus_root_disk_and_network() -> None:
    chosen = metrics.expand([metrics.Default()])
    assert {c.metric for c in chosen} == {
        "cpu",
        "memory",
        "memory_used",
        "memory_total",
        "gpu",
        "gpu_memory",
        "gpu_memory_total",
        "gpu_temp",
        "disk:/",
        "network_rx",
        "network_tx",
    }
    faster = {c.metric: c.interval for c in metrics.expand([metrics.Default(interval=1)])}
    assert faster["cpu"] == faster["disk:/"] == faster["gpu_temp"] == 1
    assert faster["memory_total"] == faster["gpu_memory_total"] == 60.0


def test_a_listed_collector_replaces_the_default_one_and_disk_paths_add_up() -> None:
    chosen = metrics.expand(
        [metrics.CPU(interval=1), metrics.Default(), metrics.Disk("/data"), metrics.Disk("/")]
    )
    by_metric = {c.metric: c for c in chosen}
    assert len(by_metric) == len(chosen)  # each metric once
    assert by_metric["cpu"] == metrics.CPU(interval=1)  # listed before Default() still wins
    assert by_metric["disk:/"] == metrics.Disk("/")
    assert by_metric["disk:/data"] == metrics.Disk("/data")
    assert metrics.expand(None) == ()


def test_the_same_metric_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"both report 'disk:/data'; keep one of them"):
        metrics.expand([metrics.Disk("/data"), metrics.Disk("/data", interval=60)])
    with pytest.raises(ValueError, match=r"both report 'q'"):
        metrics.expand([metrics.Custom("q", "echo 1"), metrics.Custom("q", "echo 2")])


def test_collectors_travel_to_the_worker_and_back_unchanged() -> None:
    config = to_config(ALL)
    assert config[8] == {"kind": "Disk", "path": "/data", "interval": 10.0}
    assert from_config(config) == tuple(ALL)
    with pytest.raises(ValueError, match="unknown metric collector"):
        from_config([{"kind": "Collector", "interval": 3.0}])
