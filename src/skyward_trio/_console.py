"""The consoles: what a pool shows while it runs, built from its events.

``Options(console=...)`` picks one:

- ``"log"``: append-only ``HH:MM:SS  <label>  <message>`` lines on stderr, flushed per
  line, no ANSI codes: lifecycle, failures, scaling, remote output, and a heartbeat every
  ``SKYWARD_LOG_METRICS_INTERVAL`` seconds (default 30), with the nodes' mean CPU, memory
  and GPU use. For pipes, CI and log files.
- ``"rich"``: a live layout (nodes with their states and CPU/memory/GPU use, tasks, a
  progress bar with rate and ETA, recent remote output, cost) on stderr, or in the cell
  under Jupyter.
- ``"minimal"``: two lines updated in place; notices and remote output scroll above.
- ``"silent"`` / ``False``: nothing.
- ``True``: ``"rich"`` when stderr is a terminal or under Jupyter, else ``"log"``.

A console is a listener of the pool's ``EventBus`` (``EventBus.listen``): each event
updates a ``Tally`` and may write a line at once, on the pool's trio thread, so a
function's output is shown before its call returns and no task wakes per event (a call
costs a console a dict insert and a delete). One timer task per console writes the
heartbeat, or redraws the live display at most four times a second and only when
something changed. (A reader task on ``pool.events()`` was the alternative: it adds a
task switch per call, and output would show up after the result it came with.)

Layer 5 (trio, the event records, the bus); rich is imported only by "rich" and "minimal".
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import math
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO

import attrs
import trio

from . import _cost
from ._eventbus import EventBus
from ._events import (
    BootstrapProgress,
    ClusterDestroyed,
    ClusterProvisioned,
    ClusterReady,
    ClusterRequested,
    ClusterScaled,
    Error,
    Event,
    InstanceAtRisk,
    InstanceBootstrapped,
    InstanceDestroyed,
    InstanceInterrupting,
    InstancePreempted,
    InstanceProvisioned,
    InstanceReplaced,
    Log,
    Metric,
    TaskCompleted,
    TaskStarted,
    WorkSubmitted,
)
from ._model import ConsoleMode

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["INTERVAL_ENV", "Tally", "heartbeat_interval", "resolve", "shown"]

INTERVAL_ENV: Final = "SKYWARD_LOG_METRICS_INTERVAL"
_DEFAULT_INTERVAL: Final = 30.0
_REDRAW: Final = 0.25  # seconds between live redraws, at most
_IDLE_REDRAW: Final = 1.0  # redraw this often anyway: clocks, rates and ETA move
_OUTPUT_LINES: Final = 8  # remote output lines the rich layout keeps in view
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
# Node states that take calls: ready, or at risk of interruption (not drained yet).
_SERVING: Final = ("ready", "at risk")
_PHASES: Final = {"ssh": "connecting", "bootstrap": "bootstrapping", "worker": "starting worker"}
# Who reclaims an instance after an InstanceInterrupting, by provider (ClusterRequested's).
_RECLAIMERS: Final = {
    "aws": "AWS reclaims spot instance",
    "gcp": "Compute Engine preempts spot VM",
}


def resolve(console: bool | ConsoleMode) -> ConsoleMode:
    """Which console ``Options(console=...)`` means here: True goes by where stderr goes."""
    if console is True:
        return "rich" if _in_jupyter() or _is_tty(sys.stderr) else "log"
    if console is False:
        return "silent"
    return console


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no such method, or the stream is closed
        return False


def _in_jupyter() -> bool:
    """A Jupyter kernel runs this process (IPython's ZMQ shell, as rich checks)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def heartbeat_interval() -> float:
    """Seconds between the log console's heartbeat lines (``SKYWARD_LOG_METRICS_INTERVAL``)."""
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None:
        return _DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{INTERVAL_ENV}={raw!r}: the log console's heartbeat interval must be a number "
            f"of seconds > 0, e.g. {INTERVAL_ENV}=10; unset it for the default "
            f"({_DEFAULT_INTERVAL:g} s)"
        )
    return value


# -- what the events say --------------------------------------------------------------------


@attrs.define
class NodeView:
    """One node as a console shows it."""

    state: str  # provisioning, provisioned, connecting, bootstrapping, ..., ready, draining, lost
    since: float  # when it entered that state
    instance_id: str = ""
    replaced: int = 0  # how many times a new instance took its place


@attrs.frozen
class Usage:
    """A node's latest CPU, memory and GPU figures (None: not sampled); memory in MiB."""

    cpu: float | None
    memory: float | None  # percent
    memory_used: float | None
    memory_total: float | None
    gpus: int
    gpu: float | None  # mean utilization over its GPUs
    gpu_memory: float | None  # summed over its GPUs
    gpu_memory_total: float | None
    gpu_temp: float | None  # the hottest


class Tally:
    """What a pool's events say so far: node states, task counts, progress and cost.

    The progress window is the work since the pool was last idle: ``map``/``gather``
    submissions add their size to its total (``WorkSubmitted``), completed tasks (a
    ``map`` batch counts its items) to what is done.
    """

    def __init__(self) -> None:
        self.job_id = ""
        self.provider = ""
        self.target = 0
        self.opened = time.time()
        self.nodes: dict[int, NodeView] = {}
        self.running: dict[int, int] = {}  # task_id -> items
        self.done = 0
        self.failed = 0
        self.ledger = _cost.Ledger()
        self.output: collections.deque[tuple[int, str]] = collections.deque(maxlen=_OUTPUT_LINES)
        self.closed: ClusterDestroyed | None = None
        self.window_start = self.opened
        self.window_last = self.opened  # when the window's last task ended
        self.window_done = 0
        self.window_total: int | None = 0  # None: a map over an iterable with no length
        # Each node's latest Metric values, by (name, GPU index); dropped when it goes.
        self.metrics: dict[int, dict[tuple[str, int | None], float]] = {}
        self.changed = True

    @property
    def ready(self) -> int:
        return sum(1 for view in self.nodes.values() if view.state in _SERVING)

    @property
    def in_flight(self) -> int:
        """Items running now (a ``map`` batch counts its items)."""
        return sum(self.running.values())

    def progress(self, now: float) -> tuple[int, int | None, float]:
        """The window's done items, its total (None if unknown) and items per second."""
        done = self.window_done
        total = self.window_total
        if total is not None:
            total = max(total, done + self.in_flight)
        # An idle window's rate is its work's, not one that decays while nothing runs.
        elapsed = (now if self.running else self.window_last) - self.window_start
        return done, total, done / elapsed if elapsed > 0 else 0.0

    def cost(self, now: float) -> float:
        return self.ledger.cost(now)

    def _idle(self) -> bool:
        return not self.running

    def update(self, event: Event) -> None:
        self.changed = True
        if isinstance(event, TaskStarted):
            if (
                self._idle()
                and self.window_total is not None
                and (self.window_done >= self.window_total)
            ):
                self._new_window(event.time, 0)
            self.running[event.task_id] = event.count
        elif isinstance(event, TaskCompleted):
            self.running.pop(event.task_id, None)
            if event.ok:
                self.done += event.count
            else:
                self.failed += event.count
            self.window_done += event.count
            self.window_last = event.time
        elif isinstance(event, Metric):
            self.metrics.setdefault(event.node, {})[(event.name, event.gpu)] = event.value
        elif isinstance(event, Log):
            for line in event.text.splitlines():
                self.output.append((event.node, plain(line)))
        elif isinstance(event, WorkSubmitted):
            if self._idle():
                self._new_window(event.time, event.count)
            elif self.window_total is not None:
                self.window_total = None if event.count is None else self.window_total + event.count
        elif isinstance(event, ClusterRequested):
            self.job_id, self.provider = event.job_id, event.provider
            self.target = event.nodes.desired
            for i in range(event.nodes.desired):
                self.nodes[i] = NodeView("provisioning", event.time)
        elif isinstance(event, InstanceProvisioned):
            self.ledger.start(event.instance_id, event.hourly_price, event.time)
            if not event.ahead:  # one launched ahead shows once it takes the node over
                view = self._node(event.node, event.time)
                view.state, view.since = "provisioned", event.time
                view.instance_id = event.instance_id
        elif isinstance(event, BootstrapProgress):
            self._enter(event.node, _PHASES.get(event.phase, event.phase), event.time)
            self._node(event.node, event.time).instance_id = event.instance_id
        elif isinstance(event, InstanceBootstrapped):
            self._enter(event.node, "ready", event.time)
        elif isinstance(event, InstanceReplaced):
            self._node(event.node, event.time).replaced += 1
        elif isinstance(event, InstanceInterrupting):
            if self._node(event.node, event.time).instance_id == event.instance_id:
                self._enter(event.node, "draining", event.time)
        elif isinstance(event, InstanceAtRisk):
            if self._node(event.node, event.time).instance_id == event.instance_id:
                self._enter(event.node, "at risk", event.time)
        elif isinstance(event, InstancePreempted):
            self._enter(event.node, "lost", event.time)
            self.metrics.pop(event.node, None)
        elif isinstance(event, InstanceDestroyed):
            self.ledger.stop(event.instance_id, event.time)
            view = self._node(event.node, event.time)
            if view.state != "lost" and view.instance_id == event.instance_id:
                self._enter(event.node, "terminated", event.time)
                self.metrics.pop(event.node, None)
        elif isinstance(event, Error):
            if event.node is not None and self._node(event.node, event.time).state not in _SERVING:
                self._enter(event.node, "failed", event.time)
        elif isinstance(event, ClusterScaled):
            self.target = event.target
        elif isinstance(event, ClusterDestroyed):
            self.closed = event

    def _new_window(self, now: float, total: int | None) -> None:
        self.window_start, self.window_done, self.window_total = now, 0, total
        self.window_last = now

    def _node(self, index: int, now: float) -> NodeView:
        view = self.nodes.get(index)
        if view is None:
            view = self.nodes[index] = NodeView("provisioning", now)
        return view

    def _enter(self, index: int, state: str, now: float) -> None:
        view = self._node(index, now)
        view.state, view.since = state, now

    def usage(self, index: int) -> Usage | None:
        """Node ``index``'s latest figures, or None before its first ``Metric``."""
        values = self.metrics.get(index)
        if not values:
            return None

        def per_gpu(name: str) -> list[float]:
            return [v for (n, gpu), v in values.items() if n == name and gpu is not None]

        used, total = values.get(("memory_used", None)), values.get(("memory_total", None))
        memory = values.get(("memory", None))
        if memory is None and used is not None and total:
            memory = 100.0 * used / total
        util, gpu_used = per_gpu("gpu"), per_gpu("gpu_memory")
        gpu_total, temps = per_gpu("gpu_memory_total"), per_gpu("gpu_temp")
        return Usage(
            cpu=values.get(("cpu", None)),
            memory=memory,
            memory_used=used,
            memory_total=total,
            gpus=max(len(util), len(gpu_used), len(gpu_total), len(temps)),
            gpu=sum(util) / len(util) if util else None,
            gpu_memory=sum(gpu_used) if gpu_used else None,
            gpu_memory_total=sum(gpu_total) if gpu_total else None,
            gpu_temp=max(temps) if temps else None,
        )

    def usage_summary(self) -> str:
        """The nodes' mean CPU, memory and GPU use (``"cpu 23%, mem 41%"``), or ``""``."""
        usages = [u for u in map(self.usage, sorted(self.metrics)) if u is not None]
        parts = []
        for label, values in (
            ("cpu", [u.cpu for u in usages]),
            ("mem", [u.memory for u in usages]),
            ("gpu", [u.gpu for u in usages]),
        ):
            known = [v for v in values if v is not None]
            if known:
                parts.append(f"{label} {sum(known) / len(known):.0f}%")
        return ", ".join(parts)

    def heartbeat(self, rate: float, now: float) -> str:
        line = (
            f"{self.ready}/{self.target} nodes ready, {self.in_flight} running, "
            f"{self.done} done, {self.failed} failed, {rate:.1f} tasks/s, "
            f"{_cost.dollars(self.cost(now))} so far"
        )
        usage = self.usage_summary()
        return f"{line}; node mean {usage}" if usage else line


def plain(text: str) -> str:
    """A line of remote output without terminal escape codes (colours, cursor moves)."""
    return _ANSI.sub("", text) if "\x1b" in text else text


def describe(event: Event, tally: Tally) -> list[tuple[str, str]]:
    """The ``(label, message)`` lines an event reads as; call it before ``tally.update``."""
    if isinstance(event, TaskStarted | WorkSubmitted | Metric):
        return []
    if isinstance(event, Log):
        return [(f"node {event.node}", plain(line)) for line in event.text.splitlines()]
    if isinstance(event, TaskCompleted):
        if event.ok:
            return []
        what = f"a map batch of {event.count} item(s)" if event.task == "map" else event.task + "()"
        how = event.failure or "failed"
        return [(f"node {event.node}", f"{what} {how} after {event.seconds:.2f} s")]
    if isinstance(event, ClusterRequested):
        nodes = event.nodes
        upto = f", up to {nodes.max}" if nodes.max is not None and nodes.max > nodes.desired else ""
        return [
            (
                "pool",
                f"requested {nodes.desired} node(s){upto} from {event.provider} "
                f"(job {event.job_id})",
            )
        ]
    if isinstance(event, InstanceProvisioned):
        known = tally.nodes.get(event.node)
        price = f"${event.hourly_price:.2f}/h"
        if event.ahead:
            return [
                (
                    f"node {event.node}",
                    f"replacement instance {event.instance_id} launched ahead ({price}); it "
                    "takes over when this node goes",
                )
            ]
        what = "replacement " if known is not None and known.state == "lost" else ""
        return [(f"node {event.node}", f"{what}instance {event.instance_id} provisioned ({price})")]
    if isinstance(event, ClusterProvisioned):
        return [("pool", f"{event.instances} instance(s) provisioned; starting them")]
    if isinstance(event, BootstrapProgress):
        return [(f"node {event.node}", _PHASES.get(event.phase, event.phase))]
    if isinstance(event, InstanceBootstrapped):
        return [(f"node {event.node}", f"ready ({event.seconds:.1f} s)")]
    if isinstance(event, ClusterReady):
        return [("pool", f"ready: {event.nodes} node(s)")]
    if isinstance(event, InstanceAtRisk):
        then = (
            "replacing it: the node is handed over once its replacement is ready"
            if event.replaced
            else "kept until a notice comes: this node cannot be handed over (a collective "
            "pool's, or node 0 holding the collections)"
        )
        return [
            (
                f"node {event.node}",
                f"EC2 recommends replacing spot instance {event.instance_id} (high risk of "
                f"interruption); {then}",
            )
        ]
    if isinstance(event, InstanceInterrupting):
        who = _RECLAIMERS.get(tally.provider, "the provider reclaims instance")
        when = f"at {_stamp(event.at)} ({event.action})"
        return [(f"node {event.node}", f"{who} {event.instance_id} {when}; draining")]
    if isinstance(event, InstancePreempted):
        return [(f"node {event.node}", f"lost ({event.reason})")]
    if isinstance(event, InstanceReplaced):
        return [(f"node {event.node}", f"replaced: {event.old_instance_id} -> {event.instance_id}")]
    if isinstance(event, InstanceDestroyed):
        return [(f"node {event.node}", f"instance {event.instance_id} terminated")]
    if isinstance(event, ClusterScaled):
        return [
            ("pool", f"scaling from {event.previous} to {event.target} node(s): {event.reason}")
        ]
    if isinstance(event, ClusterDestroyed):
        summary = _cost.summary(event.instances, event.instance_seconds, event.cost)
        return [("pool", f"closed: {summary}")]
    if isinstance(event, Error):
        return [("pool" if event.node is None else f"node {event.node}", event.message)]
    return [("pool", repr(event))]  # an event kind this console does not know yet


def _stamp(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _gib(used: float, total: float) -> str:
    return f"{used / 1024:.1f}/{total / 1024:.1f} GiB"


def _memory_cell(usage: Usage | None) -> str:
    """``"25% 2.0/8.0 GiB"``, or what of it was sampled."""
    if usage is None:
        return "-"
    if usage.memory_used is not None and usage.memory_total:
        return f"{_percent(usage.memory)} {_gib(usage.memory_used, usage.memory_total)}"
    return _percent(usage.memory)


def _gpu_cell(usage: Usage | None) -> str:
    """``"2× 87% 24.0/160.0 GiB 65°C"``: utilization, memory and the hottest GPU's heat."""
    if usage is None or not usage.gpus:
        return "-"
    parts = [f"{usage.gpus}×" if usage.gpus > 1 else "", _percent(usage.gpu)]
    if usage.gpu_memory is not None and usage.gpu_memory_total:
        parts.append(_gib(usage.gpu_memory, usage.gpu_memory_total))
    if usage.gpu_temp is not None:
        parts.append(f"{usage.gpu_temp:.0f}°C")
    return " ".join(part for part in parts if part)


def _default_notice(tally: Tally) -> str:
    return f"no provider given: using sky.Local() ({tally.target} node(s) on this machine)"


# -- the consoles ---------------------------------------------------------------------------


class _View(Protocol):
    def on_event(self, event: Event) -> None: ...

    async def run(self) -> None: ...

    def close(self) -> None: ...


class LogConsole:
    """``HH:MM:SS  <label>  <message>`` lines on stderr, each written and flushed at once."""

    def __init__(
        self, *, interval: float, defaulted_to_local: bool, out: TextIO | None = None
    ) -> None:
        self.tally = Tally()
        self._out = out  # None: sys.stderr, looked up per line (tests swap it)
        self._interval = interval
        self._defaulted = defaulted_to_local
        self._quiet = False
        self._beat_done = 0
        self._beat_at = time.time()

    def on_event(self, event: Event) -> None:
        if isinstance(event, TaskStarted | Metric) or (
            isinstance(event, TaskCompleted) and event.ok
        ):
            self.tally.update(event)  # the common case first: a count, no line
            return
        lines = describe(event, self.tally)
        self.tally.update(event)
        if self._defaulted and isinstance(event, ClusterRequested):
            self._write(event.time, "pool", _default_notice(self.tally))
        for label, message in lines:
            self._write(event.time, label, message)

    def _write(self, when: float, label: str, message: str) -> None:
        if self._quiet:
            return
        out = sys.stderr if self._out is None else self._out
        try:
            out.write(f"{_stamp(when)}  {label}  {message}\n")
            out.flush()
        except (OSError, ValueError):
            # stderr closed, or a pipe whose reader left (`| head`): the console goes
            # quiet and the pool carries on.
            self._quiet = True

    async def run(self) -> None:
        """Write the heartbeat every interval until cancelled (when the pool has closed)."""
        while True:
            await trio.sleep(self._interval)
            self.beat(time.time())

    def beat(self, now: float) -> None:
        """Write the heartbeat line: tasks done and their rate since the last, usage."""
        finished = self.tally.done + self.tally.failed
        rate = (finished - self._beat_done) / max(now - self._beat_at, 1e-9)
        self._beat_done, self._beat_at = finished, now
        self._write(now, "pool", self.tally.heartbeat(rate, now))

    def beat_if_due(self, now: float) -> None:
        """``beat`` if an interval has passed since the last (for a reader without a loop)."""
        if now - self._beat_at >= self._interval:
            self.beat(now)

    def close(self) -> None:
        """Nothing to tidy: every line is already written."""


# Events a live console also prints above its display, as they are worth keeping.
_NOTICES = (
    Error,
    InstanceAtRisk,
    InstanceInterrupting,
    InstancePreempted,
    InstanceReplaced,
    ClusterScaled,
    ClusterDestroyed,
    TaskCompleted,  # only failed ones reach here
)
_STATE_STYLES: Final = {
    "ready": "green",
    "at risk": "yellow",
    "draining": "bold magenta",
    "lost": "bold red",
    "failed": "bold red",
    "terminated": "dim",
}


class LiveConsole:
    """A rich live display: the full layout (``"rich"``) or two lines (``"minimal"``).

    Notices (reclaimed, lost and replaced nodes, errors, scaling, the closing summary) are printed
    above the display, so they stay in the scrollback; ``"minimal"`` prints remote output
    there too, ``"rich"`` keeps its last lines in the layout.
    """

    def __init__(self, mode: ConsoleMode, console: Console, *, defaulted_to_local: bool) -> None:
        from rich.live import Live

        self.tally = Tally()
        self._minimal = mode == "minimal"
        self._console = console
        self._defaulted = defaulted_to_local
        self._live: Live | _CellDisplay
        if console.is_jupyter:
            self._live = _CellDisplay()
        else:
            self._live = Live(
                console=console,
                auto_refresh=False,  # redrawn by run(), on the trio thread, never concurrently
                transient=False,
                # The user's prints go above the display; stdout only when it is the
                # terminal too, so output piped to a file stays there.
                redirect_stdout=_is_tty(sys.stdout),
                redirect_stderr=True,
            )
            self._live.start()

    def on_event(self, event: Event) -> None:
        if isinstance(event, TaskStarted | Metric) or (
            isinstance(event, TaskCompleted) and event.ok
        ):
            self.tally.update(event)  # the common case first: a count, no line
            return
        notices: list[tuple[str, str]] = []
        if isinstance(event, _NOTICES) or (self._minimal and isinstance(event, Log)):
            notices = describe(event, self.tally)
        self.tally.update(event)
        if self._defaulted and isinstance(event, ClusterRequested):
            notices.insert(0, ("pool", _default_notice(self.tally)))
        for label, message in notices:
            self._print(event.time, label, message)

    def _print(self, when: float, label: str, message: str) -> None:
        from rich.text import Text

        line = Text(f"{_stamp(when)}  ", style="dim")
        line.append(label, style="bold")
        line.append(f"  {message}")
        self._console.print(line)

    async def run(self) -> None:
        """Redraw when something changed (at most every 0.25 s), and every second anyway."""
        last = -math.inf
        while True:
            now = trio.current_time()
            if self.tally.changed or now - last >= _IDLE_REDRAW:
                self.tally.changed = False
                last = now
                self._live.update(self.render(), refresh=True)
            await trio.sleep(_REDRAW)

    def close(self) -> None:
        self._live.update(self.render(), refresh=True)
        self._live.stop()

    def render(self) -> RenderableType:
        now = time.time()
        return self._render_minimal(now) if self._minimal else self._render_rich(now)

    def _status(self, now: float) -> str:
        tally = self.tally
        status = (
            f"{tally.ready}/{tally.target} nodes ready · {tally.in_flight:,} running · "
            f"{tally.done:,} done · {tally.failed:,} failed · "
            f"{_cost.dollars(tally.cost(now))}"
        )
        usage = tally.usage_summary() if self._minimal else ""
        return f"{status} · {usage.replace(', ', ' · ')}" if usage else status

    def _progress(self, now: float) -> RenderableType | None:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        done, total, rate = self.tally.progress(now)
        if not done and not self.tally.running:
            return None
        row = Table.grid(padding=(0, 2))
        bar = ProgressBar(total=float(total or 1), completed=float(done), width=32)
        bar.pulse = total is None
        counts = f"{done:,}/{total:,}" if total is not None else f"{done:,}"
        eta = ""
        if total is not None and rate > 0 and done < total:
            eta = f"ETA {_clock((total - done) / rate)}"
        row.add_row(bar, counts, f"{rate:,.1f}/s", eta)
        return row

    def _render_minimal(self, now: float) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        head = Text("skyward ", style="bold")
        head.append(f"{self.tally.job_id}  ", style="dim")
        head.append(self._status(now))
        progress = self._progress(now)
        return head if progress is None else Group(head, progress)

    def _render_rich(self, now: float) -> RenderableType:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        tally = self.tally
        nodes = Table(box=None, pad_edge=False, header_style="bold")
        for name, justify in (("node", "right"), ("instance", "left"), ("state", "left")):
            nodes.add_column(name, justify=justify)  # type: ignore[arg-type]
        nodes.add_column("for", justify="right")
        usages = {index: tally.usage(index) for index in tally.nodes}
        sampled = any(u is not None for u in usages.values())
        gpus = any(u is not None and u.gpus for u in usages.values())
        if sampled:
            nodes.add_column("cpu", justify="right")
            nodes.add_column("mem", justify="right")
        if gpus:
            nodes.add_column("gpu", justify="left")
        for index, view in sorted(tally.nodes.items()):
            state = Text(view.state, style=_STATE_STYLES.get(view.state, "yellow"))
            if view.replaced:
                state.append(f" (replaced ×{view.replaced})", style="dim")
            cells: list[str | Text] = [
                str(index),
                view.instance_id or "-",
                state,
                _clock(now - view.since),
            ]
            usage = usages[index]
            if sampled:
                cells += [_percent(None if usage is None else usage.cpu), _memory_cell(usage)]
            if gpus:
                cells.append(_gpu_cell(usage))
            nodes.add_row(*cells)
        parts: list[RenderableType] = [nodes, Text("")]
        tasks = Text("tasks  ", style="bold")
        tasks.append(f"{tally.in_flight:,} running · {tally.done:,} done · ")
        tasks.append(f"{tally.failed:,} failed", style="red" if tally.failed else "")
        parts.append(tasks)
        progress = self._progress(now)
        if progress is not None:
            parts.append(progress)
        if tally.output:
            parts.append(Text("\noutput", style="bold"))
            for node, line in tally.output:
                text = Text(f"node {node}  ", style="dim")
                text.append(line)
                parts.append(text)
        footer = (
            f"{tally.ready}/{tally.target} nodes ready · up {_clock(now - tally.opened)} · "
            f"{_cost.dollars(tally.cost(now))} so far"
        )
        title = f"skyward · pool {tally.job_id} · {tally.provider}"
        if tally.closed is not None:
            title += " · closed"
        return Panel(Group(*parts), title=title, subtitle=footer, title_align="left")


class _CellDisplay:
    """Under Jupyter: one output of the cell, redrawn in place (IPython's ``display_id``).

    rich's ``Live`` draws there only with ipywidgets installed; a display handle needs
    nothing but IPython, which a kernel has. Notices print below it, as cell output.
    """

    def __init__(self) -> None:
        from rich.text import Text

        self._display = importlib.import_module("IPython.display")
        self._handle = self._display.display(Text("skyward"), display_id=True)

    def update(self, renderable: RenderableType, *, refresh: bool) -> None:
        from rich.padding import Padding

        # Padding is a JupyterMixin: IPython shows it as rich's HTML (a Group is not one).
        self._handle.update(Padding(renderable, 0))

    def stop(self) -> None:
        """The last drawing stays in the cell."""


def _rich_console() -> Console:
    """Where the live consoles draw: stderr (the cell output under Jupyter)."""
    from rich.console import Console

    return Console(stderr=True)


def _make(mode: ConsoleMode, defaulted_to_local: bool) -> _View:
    if mode == "log":
        return LogConsole(interval=heartbeat_interval(), defaulted_to_local=defaulted_to_local)
    return LiveConsole(mode, _rich_console(), defaulted_to_local=defaulted_to_local)


@contextlib.asynccontextmanager
async def shown(
    console: bool | ConsoleMode, bus: EventBus, *, defaulted_to_local: bool
) -> AsyncIterator[None]:
    """Show the pool's life on the chosen console while the block runs.

    The console listens to ``bus`` from the start, so it sees every event through
    ``ClusterDestroyed``; its timer task is cancelled when the block ends.
    """
    mode = resolve(console)
    if mode == "silent":
        yield
        return
    view = _make(mode, defaulted_to_local)
    bus.listen(view.on_event)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(view.run)
            try:
                yield
            except BaseException as exc:
                # Re-raised below, outside the nursery, so the caller sees its own
                # exception and not an ExceptionGroup around it.
                failure = exc
            finally:
                nursery.cancel_scope.cancel(reason="the pool closed")
    finally:
        view.close()
    if failure is not None:
        raise failure
