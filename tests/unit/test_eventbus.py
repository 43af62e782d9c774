"""The event bus: what a reader that comes late gets first, and what it never gets."""

from __future__ import annotations

from skyward_trio._eventbus import EventBus
from skyward_trio._events import (
    ClusterReady,
    Event,
    InstanceDestroyed,
    InstancePreempted,
    Log,
    Metric,
    TaskStarted,
)

JOB = "job1"


def _metric(node: int, name: str, value: float, gpu: int | None = None) -> Metric:
    return Metric(job_id=JOB, node=node, name=name, value=value, gpu=gpu)


def _queued(bus: EventBus) -> list[Event]:
    stream = bus.subscribe()
    return list(stream._queue)


def test_a_late_reader_gets_the_lifecycle_then_the_latest_sample_of_each_metric() -> None:
    bus = EventBus(JOB)
    ready = ClusterReady(job_id=JOB, nodes=2)
    bus.emit(ready)
    old_cpu = _metric(0, "cpu", 10.0)
    total = _metric(0, "memory_total", 8192.0)
    bus.emit(old_cpu)
    bus.emit(total)
    bus.emit(TaskStarted(job_id=JOB, task_id=1, task="f", node=0))
    bus.emit(Log(job_id=JOB, node=0, stream="stdout", text="hi\n"))
    new_cpu = _metric(0, "cpu", 90.0)
    gpu0, gpu1 = _metric(1, "gpu", 5.0, gpu=0), _metric(1, "gpu", 7.0, gpu=1)
    for event in (new_cpu, gpu0, gpu1):
        bus.emit(event)

    assert _queued(bus) == [ready, new_cpu, total, gpu0, gpu1]


def test_a_lost_or_destroyed_nodes_metrics_are_not_replayed() -> None:
    bus = EventBus(JOB)
    kept = _metric(1, "cpu", 50.0)
    bus.emit(_metric(0, "cpu", 20.0))
    bus.emit(kept)
    lost = InstancePreempted(job_id=JOB, node=0, instance_id="i-0", reason="gone")
    bus.emit(lost)
    assert _queued(bus) == [lost, kept]

    fresh = _metric(0, "cpu", 30.0)  # node 0's replacement samples its own
    bus.emit(fresh)
    destroyed = InstanceDestroyed(job_id=JOB, node=1, instance_id="i-1")
    bus.emit(destroyed)
    assert _queued(bus) == [lost, destroyed, fresh]


def test_listeners_get_the_latest_metrics_only_when_they_take_task_events() -> None:
    bus = EventBus(JOB)
    ready = ClusterReady(job_id=JOB, nodes=1)
    sample = _metric(0, "memory", 12.5)
    bus.emit(ready)
    bus.emit(sample)
    everything: list[Event] = []
    lifecycle: list[Event] = []
    bus.listen(everything.append, tasks=True)
    bus.listen(lifecycle.append, tasks=False)
    assert everything == [ready, sample]
    assert lifecycle == [ready]


def test_after_close_a_reader_gets_what_there_was_and_ends() -> None:
    bus = EventBus(JOB)
    sample = _metric(0, "memory", 12.5)
    bus.emit(sample)
    bus.close()
    stream = bus.subscribe()
    assert list(stream._queue) == [sample]
    assert stream._ended
