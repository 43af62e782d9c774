"""What happens in a pool, as frozen records: ``pool.events()`` yields them in order.

Every event carries the pool's ``job_id`` and ``time`` (seconds since the epoch, when it
happened). Lifecycle events follow a pool from ``ClusterRequested`` to
``ClusterDestroyed``; a node goes ``InstanceProvisioned`` → ``BootstrapProgress`` (each
phase) → ``InstanceBootstrapped``, and when lost ``InstancePreempted`` →
``InstanceReplaced`` (or only ``InstanceDestroyed`` when it is not replaced). A node whose
provider warned that it will reclaim the machine (AWS or Compute Engine spot) is
``InstanceInterrupting`` before it is lost; one EC2 recommends replacing (a rebalance
recommendation) is ``InstanceAtRisk`` first.

Layer 1: stdlib and attrs only.
"""

from __future__ import annotations

import time

import attrs

from ._model import Nodes

__all__ = [
    "BootstrapProgress",
    "ClusterDestroyed",
    "ClusterProvisioned",
    "ClusterReady",
    "ClusterRequested",
    "ClusterScaled",
    "Error",
    "Event",
    "InstanceAtRisk",
    "InstanceBootstrapped",
    "InstanceDestroyed",
    "InstanceInterrupting",
    "InstancePreempted",
    "InstanceProvisioned",
    "InstanceReplaced",
    "Log",
    "Metric",
    "TaskCompleted",
    "TaskStarted",
    "WorkSubmitted",
]


@attrs.frozen(kw_only=True)
class Event:
    """Base of every event: which pool, and when."""

    job_id: str
    time: float = attrs.field(factory=time.time)


@attrs.frozen(kw_only=True)
class ClusterRequested(Event):
    """The pool was asked for: ``provider`` (its name) and the node target."""

    provider: str
    nodes: Nodes


@attrs.frozen(kw_only=True)
class InstanceProvisioned(Event):
    """The provider handed out an instance for node ``node``.

    ``ahead``: launched at the node's interruption notice, while the node still serves;
    it takes the node over once the node is lost (no second event then).
    """

    node: int
    instance_id: str
    hourly_price: float
    ahead: bool = False


@attrs.frozen(kw_only=True)
class ClusterProvisioned(Event):
    """Every first node has an instance (or failed for good): bootstraps may begin."""

    instances: int


@attrs.frozen(kw_only=True)
class BootstrapProgress(Event):
    """Node ``node`` entered a start-up phase: ``"ssh"``, ``"bootstrap"`` or ``"worker"``."""

    node: int
    instance_id: str
    phase: str


@attrs.frozen(kw_only=True)
class InstanceBootstrapped(Event):
    """Node ``node``'s worker is up and takes calls; ``seconds`` since provisioning began."""

    node: int
    instance_id: str
    seconds: float


@attrs.frozen(kw_only=True)
class ClusterReady(Event):
    """Enough nodes are ready for the pool to be used (``Nodes.min``, or all)."""

    nodes: int


@attrs.frozen(kw_only=True)
class ClusterScaled(Event):
    """The pool's target went from ``previous`` to ``target`` nodes, for ``reason``."""

    previous: int
    target: int
    reason: str


@attrs.frozen(kw_only=True)
class InstanceInterrupting(Event):
    """Node ``node``'s provider will reclaim its instance at ``at`` (seconds since the
    epoch) by ``action`` (``"terminate"``, ``"stop"`` or ``"hibernate"``): an AWS spot
    interruption notice, about two minutes ahead, or a Compute Engine spot VM's
    preemption notice (``"terminate"``: the VM is deleted), about 30 seconds ahead.

    The node is drained: it takes no new calls (they go to other nodes, or wait for its
    replacement); its calls in flight keep running, and one the machine takes with it is
    sent again (``Options.retry_on_interruption``; with Compute Engine's 30 seconds, most
    calls in flight are). Once idle it is retired, and replaced, without waiting for the
    machine to go (except node 0 while it holds the pool's collections store).
    ``InstancePreempted`` follows either way.
    """

    node: int
    instance_id: str
    action: str
    at: float


@attrs.frozen(kw_only=True)
class InstanceAtRisk(Event):
    """EC2 recommended at ``at`` (seconds since the epoch) that node ``node``'s spot
    instance be replaced: a rebalance recommendation, sent when its risk of interruption
    is high, often minutes before the two-minute interruption notice (which may never
    come).

    With ``replaced`` the node is handed over: its replacement's machine is launched and
    its environment built now, and only then is the node drained (no new calls; those in
    flight finish), retired once idle, and replaced, so the pool never runs short of it.
    Without (a collective pool, whose group a new node cannot join; or node 0 holding the
    pool's collections store) nothing changes until an interruption notice comes, if it
    does.
    """

    node: int
    instance_id: str
    at: float
    replaced: bool


@attrs.frozen(kw_only=True)
class InstancePreempted(Event):
    """Node ``node`` was lost (machine reclaimed, worker gone, link dead): ``reason``."""

    node: int
    instance_id: str
    reason: str


@attrs.frozen(kw_only=True)
class InstanceReplaced(Event):
    """A new instance took lost node ``node``'s place and is ready."""

    node: int
    old_instance_id: str
    instance_id: str


@attrs.frozen(kw_only=True)
class InstanceDestroyed(Event):
    """Node ``node``'s instance was terminated (confirmed by its provider)."""

    node: int
    instance_id: str


@attrs.frozen(kw_only=True)
class ClusterDestroyed(Event):
    """The pool closed: how many instances it ran, for how long in all, at what cost."""

    instances: int
    instance_seconds: float
    cost: float


@attrs.frozen(kw_only=True)
class TaskStarted(Event):
    """A call (or a ``map`` batch of ``count`` items) was sent to node ``node``."""

    node: int
    task: str
    task_id: int
    count: int = 1


@attrs.frozen(kw_only=True)
class TaskCompleted(Event):
    """That call ended: ``ok`` unless it raised, timed out or was cancelled; ``failure``
    says which (``"failed"``, ``"timed out"``, ``"cancelled"``, or ``"cut off"``: the
    pool closed before it finished; ``""`` when ``ok``)."""

    node: int
    task: str
    task_id: int
    ok: bool
    seconds: float
    count: int = 1
    failure: str = ""


@attrs.frozen(kw_only=True)
class WorkSubmitted(Event):
    """A ``map`` of ``count`` items, or a group of ``count`` calls, was submitted.

    ``task`` is ``"map"``, ``"gather"`` (a group: ``gather``, ``&``) or ``"broadcast"``
    (``@``); ``count`` is None for a ``map`` over an iterable with no length. The consoles
    use it for a progress bar's total and its ETA.
    """

    task: str
    count: int | None


@attrs.frozen(kw_only=True)
class Log(Event):
    """Text a function printed on node ``node`` (``stream``: ``"stdout"``/``"stderr"``)."""

    node: int
    stream: str
    text: str


@attrs.frozen(kw_only=True)
class Metric(Event):
    """A value node ``node`` sampled at ``time`` (its clock): ``name`` (e.g. ``"cpu"``,
    ``"disk:/"``, a ``Custom`` name) in ``unit``; for GPU metrics ``gpu`` is the GPU's
    index. See ``sky.metrics``."""

    node: int
    name: str
    value: float
    unit: str = ""
    gpu: int | None = None


@attrs.frozen(kw_only=True)
class Error(Event):
    """Something failed that the pool survives or reports: ``message`` (and the node)."""

    message: str
    node: int | None = None
