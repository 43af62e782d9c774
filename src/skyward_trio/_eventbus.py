"""One pool's event stream: the supervisor emits, each ``pool.events()`` reader receives.

Emitting never blocks and never waits for a reader. A reader first gets the pool's
lifecycle so far (task and log events are not kept), then the latest ``Metric`` of each
node's metrics (a memory total is sampled once a minute: a reader that came after it must
not wait that long), then every event as it happens. A reader that falls more than
``_BACKLOG`` events behind loses the oldest and is told so by an ``Error`` event, never
silently.

The consoles are listeners instead (``listen``): called as each event is emitted, so a
function's output is shown before its call returns and no task wakes per event.

Layer 5 (trio only, with the event records).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Final

import trio

from ._events import (
    Error,
    Event,
    InstanceDestroyed,
    InstancePreempted,
    Log,
    Metric,
    TaskCompleted,
    TaskStarted,
    WorkSubmitted,
)

__all__ = ["EventBus", "EventStream", "Listener"]

_BACKLOG: Final = 100_000
# Many, and of no use to a late reader.
_NOT_KEPT = (TaskStarted, TaskCompleted, Log, WorkSubmitted, Metric)

#: Called with each event as it is emitted, on the pool's trio thread; must not block.
Listener = Callable[[Event], None]


class EventBus:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._lifecycle: list[Event] = []
        # The latest sample of each metric of each node: (node, name, gpu) -> Metric.
        self._metrics: dict[tuple[int, str, int | None], Metric] = {}
        self._readers: set[EventStream] = set()
        self._listeners: dict[Listener, bool] = {}  # -> whether it wants task events
        self._closed = False

    @property
    def watched(self) -> bool:
        """Whether anyone wants task events: they are only built then."""
        return bool(self._readers) or any(self._listeners.values())

    @property
    def heard(self) -> bool:
        """Whether anyone at all listens: ``Log`` events are only built then."""
        return bool(self._readers) or bool(self._listeners)

    def emit(self, event: Event) -> None:
        kept = not isinstance(event, _NOT_KEPT)
        if kept:
            self._lifecycle.append(event)
            if isinstance(event, InstancePreempted | InstanceDestroyed):
                # What the node's machine measured is no longer the node's: a replacement
                # under the same index samples its own.
                self._metrics = {k: m for k, m in self._metrics.items() if k[0] != event.node}
        elif isinstance(event, Metric):
            self._metrics[(event.node, event.name, event.gpu)] = event
        for reader in self._readers:
            reader._push(event)
        for listener, tasks in self._listeners.items():
            if kept or tasks or isinstance(event, Log):
                listener(event)

    def listen(self, listener: Listener, *, tasks: bool = True) -> None:
        """Call ``listener`` with the lifecycle so far (and, with ``tasks``, the latest
        metrics), then with each event as it is emitted (``TaskStarted``/``TaskCompleted``
        and ``Metric`` only with ``tasks``).

        It runs inside ``emit`` (from the transport's callbacks too), so it must be quick
        and must not block; it is dropped when the bus closes.
        """
        for event in self._so_far() if tasks else self._lifecycle:
            listener(event)
        if not self._closed:
            self._listeners[listener] = tasks

    def unlisten(self, listener: Listener) -> None:
        """Stop calling ``listener`` (one that is not listening is ignored)."""
        self._listeners.pop(listener, None)

    def subscribe(self) -> EventStream:
        stream = EventStream(self, self._so_far())
        if self._closed:
            stream._end()
        else:
            self._readers.add(stream)
        return stream

    def _so_far(self) -> list[Event]:
        """What a new reader gets first: the lifecycle, then each metric's latest sample."""
        return [*self._lifecycle, *self._metrics.values()]

    def close(self) -> None:
        """The pool is gone: readers get what is queued, then the end of the stream."""
        self._closed = True
        for reader in self._readers:
            reader._end()
        self._readers.clear()
        self._listeners.clear()


class EventStream:
    """``async for event in pool.events()``: the pool's events, in order, until it closes."""

    def __init__(self, bus: EventBus, backlog: list[Event]) -> None:
        self._bus = bus
        self._queue: collections.deque[Event] = collections.deque(backlog)
        self._wake = trio.Event()
        self._ended = False
        self._dropped = 0

    def _push(self, event: Event) -> None:
        if len(self._queue) >= _BACKLOG:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(event)
        self._wake.set()

    def _end(self) -> None:
        self._ended = True
        self._wake.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        await trio.lowlevel.checkpoint()  # a busy pool must not starve the reader's peers
        while not self._queue:
            if self._ended:
                raise StopAsyncIteration
            await self._wake.wait()
            self._wake = trio.Event()
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return Error(
                job_id=self._bus.job_id,
                message=f"{count} events were dropped: this pool.events() reader fell more "
                f"than {_BACKLOG:,} events behind",
            )
        return self._queue.popleft()

    async def aclose(self) -> None:
        """Stop reading; the pool stops queueing events for this reader."""
        self.detach()

    def detach(self) -> None:
        """``aclose`` without awaiting: for the pool's own trio thread only."""
        self._bus._readers.discard(self)
        self._end()
        self._queue.clear()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
