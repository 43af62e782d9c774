"""The pool: the scheduler, dispatch, and what calls give back.

``Pool`` is what ``async with skyward_trio.Compute(...)`` yields. It holds the ready nodes
(``_Node``), sends calls to them and gets their results (``Inflight`` sends a call again
when its node is lost), and hands out ``Future``, ``ItemStream`` and ``ResultStream``.
Bringing nodes up, keeping them and replacing lost ones is ``_supervisor``'s; opening and
closing a pool is ``_compute``'s. Both build on this module, which imports neither: the
scheduler reads on its own, without the node lifecycle around it.

Calls made with ``await pool.run(...)`` run in the caller's own task; the scheduler gives
each node ``Worker.concurrency + Worker.buffer`` slots and ``run`` picks ready nodes
round-robin.
"""

from __future__ import annotations

import collections.abc
import functools
import heapq
import inspect
import itertools
import linecache
import math
import re
import threading
import types
import typing
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import cloudpickle
import trio

from . import _logging, _serial
from ._autoscale import Load
from ._collections import Collections
from ._envcheck import compare, module_versions, referenced_modules
from ._errors import (
    BudgetExceededError,
    ConnectionLostError,
    PoolClosedError,
    RemoteError,
    SerializationError,
    SkywardError,
    TaskTimeoutError,
    VersionMismatchError,
    VersionMismatchWarning,
)
from ._eventbus import EventBus, EventStream
from ._events import TaskCompleted, TaskStarted, WorkSubmitted
from ._execute import StreamedInput
from ._function import PendingFunction, PendingFunctionGroup, map_items, mappable
from ._model import Nodes, Options, Spec, Worker
from ._plugin import collective, workers_per_node

if TYPE_CHECKING:
    from . import _transport
    from ._connection import WorkerConnection
    from ._providers import Instance
    from ._storelink import ClientStore
    from ._supervisor import Supervisor

__all__ = [
    "Future",
    "ItemStream",
    "Pool",
    "PreparedCall",
    "RelayedInput",
    "RelayedInputError",
    "ResultStream",
]

E = TypeVar("E", bound=BaseException | None)
_T = TypeVar("_T")

_BIG_RESULT = 4 * 1024 * 1024


@attrs.frozen
class PreparedCall:
    """A pending call, serialized and ready to send."""

    fn_key: str
    fn_payload: _serial.Payload
    args_payload: _serial.Payload
    name: str
    timeout: float | None
    stream: bool = False  # a generator function: its items stream back as they come
    # Iterables of the Iterator[T] arguments, by slot: their items follow the call (or,
    # relayed by the server, batches of a client's items pickled already; or, for one node
    # of a broadcast, its reader of an iterator every node reads whole).
    inputs: tuple[Iterable[Any] | RelayedInput | _SharedReader, ...] = ()
    # One node's share of a broadcast: it runs on each of the node's workers at once.
    every_worker: bool = False

    def refuse_stream(self, how: str) -> None:
        if self.stream:
            raise TypeError(
                f"{self.name}() is a generator function: its items stream back with `>>` "
                f"(pool.run), which returns an iterator; {how} does not stream"
            )


class _Functions:
    """Each function is pickled once per pool (with its closure and globals at that time)."""

    def __init__(self, prefix: str = "") -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _FunctionEntry] = {}
        self._by_key: dict[str, _FunctionEntry] = {}
        self._counter = itertools.count()
        # Keys are "<prefix><n>:<qualname>": a client of the server (sky.Client) picks a
        # prefix of its own, so functions relayed from several clients never share a key.
        self._prefix = prefix

    def get(self, fn: Callable[..., Any]) -> _FunctionEntry:
        """The function's key, its payload and its ``Iterator[T]`` parameters."""
        with self._lock:
            entry = self._entries.get(id(fn))
            if entry is not None and entry.fn is fn:
                return entry
        name = getattr(fn, "__qualname__", type(fn).__qualname__)
        try:
            payload = _serial.dumps(fn)
        except Exception as exc:
            culprit = _find_unpicklable_capture(fn)
            raise SerializationError(
                f"function {name!r} cannot be pickled: {culprit or 'it'} does not pickle "
                f"({type(exc).__name__}: {exc}); pass such things as arguments that pickle, "
                "or create them inside the function (locks, sockets, open files, clients)"
            ) from exc
        _warn_if_big(payload, f"function {name!r} (with what it captures)")
        streamed = _iterator_params(fn)
        needs = module_versions(
            referenced_modules(fn, cloudpickle.list_registry_pickle_by_value()), fresh=False
        )
        with self._lock:
            key = f"{self._prefix}{next(self._counter)}:{name}"
            entry = _FunctionEntry(fn, key, payload, streamed, needs)
            self._entries[id(fn)] = entry
            self._by_key[key] = entry
        return entry

    def needs(self, key: str) -> Mapping[str, str | None]:
        """The versions here of the modules function ``key`` refers to."""
        return self._by_key[key].needs

    def adopt(self, key: str, payload: _serial.Payload, needs: Mapping[str, str | None]) -> None:
        """Take a function another process pickled (the server relays ``sky.Client``'s)."""
        with self._lock:
            if key not in self._by_key:
                self._by_key[key] = _FunctionEntry(None, key, payload, (), dict(needs))

    def prepare(self, pending: PendingFunction[Any]) -> PreparedCall:
        """Serialize a call (thread-safe)."""
        if not isinstance(pending, PendingFunction):
            raise TypeError(
                f"expected a pending call such as f(x) from a @sky.function, "
                f"got {type(pending).__qualname__}"
            )
        entry = self.get(pending.fn)
        inputs: tuple[Iterable[Any], ...] = ()
        if entry.streamed:
            pending, inputs = _split_inputs(pending, entry.streamed)
        return PreparedCall(
            entry.key,
            entry.payload,
            _dump_args(pending),
            pending.name,
            pending.timeout,
            stream=inspect.isgeneratorfunction(pending.fn),
            inputs=inputs,
        )


@attrs.frozen
class _FunctionEntry:
    fn: Any  # kept so its id() is not reused while the pool lives
    key: str
    payload: _serial.Payload
    streamed: tuple[str, ...]  # parameters annotated Iterator[T]: their items are streamed
    needs: Mapping[str, str | None]  # modules it refers to -> their version here


def _iterator_params(fn: Callable[..., Any]) -> tuple[str, ...]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable string annotations: read them as text
        hints = dict(getattr(fn, "__annotations__", {}))
    names = []
    for name, annotation in hints.items():
        if name == "return":
            continue
        if isinstance(annotation, str):
            text = annotation.replace(" ", "")
            if text.split("[")[0] in ("Iterator", "typing.Iterator", "collections.abc.Iterator"):
                names.append(name)
        elif (typing.get_origin(annotation) or annotation) is collections.abc.Iterator:
            names.append(name)
    return tuple(names)


def _split_inputs(
    pending: PendingFunction[Any], streamed: tuple[str, ...]
) -> tuple[PendingFunction[Any], tuple[Iterable[Any], ...]]:
    """Put a placeholder where each ``Iterator[T]`` argument was; return the iterables."""
    try:
        bound = inspect.signature(pending.fn).bind(*pending.args, **pending.kwargs)
    except TypeError as exc:
        raise TypeError(f"{pending.name}(): {exc}") from None
    inputs: list[Iterable[Any]] = []
    for name in streamed:
        if name not in bound.arguments:
            continue
        value = bound.arguments[name]
        if not isinstance(value, collections.abc.Iterable):
            raise TypeError(
                f"argument {name!r} of {pending.name}() is annotated Iterator[...], so its "
                "items are streamed to the node; pass an iterable, "
                f"not a {type(value).__qualname__}"
            )
        bound.arguments[name] = StreamedInput(len(inputs))
        inputs.append(value)
    return attrs.evolve(pending, args=bound.args, kwargs=bound.kwargs), tuple(inputs)


def _find_unpicklable_capture(fn: Any) -> str | None:
    """Which variable a function captures (closure cell or global) fails to pickle."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    captured: list[tuple[str, str, Any]] = []
    for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False):
        try:
            captured.append(("captured variable", var, cell.cell_contents))
        except ValueError:  # an empty cell
            continue
    module_globals = getattr(fn, "__globals__", {})
    for var in code.co_names:
        if var in module_globals:
            captured.append(("global", var, module_globals[var]))
    for kind, var, value in captured:
        if isinstance(value, types.ModuleType):
            continue  # modules travel by reference
        try:
            _serial.dumps(value)
        except Exception:
            return f"the {kind} {var!r} (a {type(value).__qualname__})"
    return None


# Bigger argument or function payloads than this get a warning: SSH moves about
# 100-300 MB/s, and the data is sent again with every call.
BIG_PAYLOAD = 256 * 1024 * 1024


class LargePayloadWarning(UserWarning):
    """A call ships a lot of data with every dispatch."""


def _warn_if_big(payload: _serial.Payload, what: str) -> None:
    size = _serial.payload_size(payload)
    if size > BIG_PAYLOAD:
        warnings.warn(
            f"{what} is {size / 2**20:,.0f} MB, sent over SSH with every call; put large "
            "data in object storage (sky.storage) and pass its key instead",
            LargePayloadWarning,
            stacklevel=4,
        )


def _dump_args(pending: PendingFunction[Any]) -> _serial.Payload:
    try:
        payload = _serial.dumps((pending.args, pending.kwargs))
    except Exception as exc:
        culprit = _find_unpicklable(pending)
        raise SerializationError(
            f"{culprit} of {pending.name}() cannot be pickled ({type(exc).__name__}: {exc}); "
            "pass plain data (numbers, strings, arrays, dicts) or objects that pickle"
        ) from exc
    _warn_if_big(payload, f"the arguments of {pending.name}()")
    return payload


def _find_unpicklable(pending: PendingFunction[Any]) -> str:
    try:
        names = list(inspect.signature(pending.fn).parameters)
    except (TypeError, ValueError):
        names = []
    for i, arg in enumerate(pending.args):
        try:
            _serial.dumps(arg)
        except Exception:
            label = f" {names[i]!r}" if i < len(names) else ""
            return f"argument{label} (position {i}, a {type(arg).__qualname__})"
    for key, value in pending.kwargs.items():
        try:
            _serial.dumps(value)
        except Exception:
            return f"keyword argument {key!r} (a {type(value).__qualname__})"
    return "an argument"


#: A frame's line in a formatted traceback.
_FRAME = re.compile(r'  File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def with_sources(traceback_text: str) -> str:
    """A remote traceback with the source line under each frame the node could not show,
    from the file here: the user's own files are on this machine, seldom on the node."""
    lines = traceback_text.splitlines()
    shown: list[str] = []
    for i, line in enumerate(lines):
        shown.append(line)
        frame = _FRAME.match(line)
        if frame is None or (i + 1 < len(lines) and lines[i + 1].startswith("    ")):
            continue  # not a frame, or one the node showed the source of
        source = linecache.getline(frame["file"], int(frame["line"])).strip()
        if source:
            shown.append(f"    {source}")
    return "\n".join(shown)


def _rebuild_error(info: Any, node: int, task: str) -> BaseException:
    payload, type_name, message, tb = info
    tb = with_sources(tb)
    exc: BaseException | None = None
    if payload is not None:
        try:
            exc = _serial.loads(payload)
        except Exception:
            exc = None
    # These would end your program or an iteration here, not report a failed call.
    if not isinstance(exc, Exception) or isinstance(exc, StopIteration | StopAsyncIteration):
        return RemoteError(
            type_name=type_name, remote_message=message, remote_traceback=tb, node=node
        )
    exc.add_note(f"[skyward] raised by {task}() on node {node}; remote traceback:\n{tb.rstrip()}")
    return exc


_task_ids = itertools.count(1)  # TaskStarted/TaskCompleted pair up by these


def _failure_of(error: BaseException | None) -> str:
    """``TaskCompleted.failure`` of a call that did not succeed with ``error`` (None: its
    function raised on the node)."""
    if isinstance(error, CancelledCallError):
        return "cancelled"
    if isinstance(error, TaskTimeoutError):
        return "timed out"
    if isinstance(error, PoolClosedError):
        return "cut off"  # by the pool's close (its block ended, or Options.max_cost)
    return "failed"


@attrs.frozen
class _BatchEvents:
    started: TaskStarted
    at: float

    def completed(self, ok: bool, now: float) -> TaskCompleted:
        s = self.started
        return TaskCompleted(
            job_id=s.job_id,
            node=s.node,
            task=s.task,
            task_id=s.task_id,
            ok=ok,
            seconds=now - self.at,
            count=s.count,
        )


class _Waiter:
    __slots__ = ("event", "node")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.node: _Node | None = None


class _Node:
    __slots__ = (
        "capacity",
        "checking",
        "conn",
        "drained",
        "index",
        "inflight",
        "instance",
        "last_used",
        "reclaimed",
        "refused",
        "ssh",
        "verified",
    )

    def __init__(
        self,
        index: int,
        instance: Instance,
        ssh: _transport.SSHConnection,
        conn: WorkerConnection,
        capacity: int,
    ) -> None:
        self.index = index
        self.instance = instance
        self.ssh = ssh
        self.conn = conn
        self.capacity = capacity
        self.inflight = 0
        self.last_used = trio.current_time()  # when its last call ended (autoscaling)
        self.drained: trio.Event | None = None  # set once idle, while someone waits (until_idle)
        # Set when its provider said it reclaims the machine soon (InstanceInterrupting):
        # the node is drained, so no call is started on it any more.
        self.reclaimed = trio.Event()
        # The environment handshake, per function key: checked fine, being checked, refused.
        self.verified: set[str] = set()
        self.checking: dict[str, trio.Event] = {}
        self.refused: dict[str, VersionMismatchError] = {}

    async def until_idle(self) -> None:
        """Return once no call is in flight here (a scale-down, a reclaimed machine).
        Waiters share one event, which ``Pool._release`` sets as the last call ends."""
        while self.inflight:
            if self.drained is None or self.drained.is_set():
                self.drained = trio.Event()
            await self.drained.wait()


class _UnpicklableBatch(Exception):
    def __init__(self, count: int, cause: Exception) -> None:
        super().__init__(str(cause))
        self.count = count
        self.cause = cause


def _take_batch(items: Iterator[Any], size: int) -> tuple[list[Any], _serial.Payload | None]:
    chunk = list(itertools.islice(items, size))
    if not chunk:
        return chunk, None
    try:
        return chunk, _serial.dumps(chunk)
    except Exception as exc:
        raise _UnpicklableBatch(len(chunk), exc) from exc


def _batch_size(per_item_s: float | None, bytes_per_item: float | None) -> int:
    """How many map items to send in the next batch.

    Aim for batches of about 20 ms of work and at most ~2 MB, so tiny tasks travel
    thousands per message while long ones still spread one per slot. (A fixed chunk size,
    as in ProcessPoolExecutor.map, is either slow for tiny tasks or unbalanced for long ones.)
    """
    if per_item_s is None:
        return 1
    n = 0.02 / max(per_item_s, 1e-7)
    if bytes_per_item:
        n = min(n, 2e6 / bytes_per_item)
    return int(max(1, min(n, 8192)))


#: How a call ended: ``(RESULT message, node, None)`` or ``(None, node, error)``.
Outcome = tuple[tuple[Any, ...] | None, int, BaseException | None]
#: Gets a call's output as it comes: ``(node, stream, text)``.
OutputSink = Callable[[int, str, str], None]


_INPUT_WINDOW = 256  # Iterator[T] items sent ahead of what the node has read
_INPUT_CHUNK = 128  # most items taken from the caller's iterable per trip to a thread


async def _feed_one(inflight: Inflight, slot: int, iterable: Iterable[Any] | _SharedReader) -> None:
    conn = inflight.node.conn
    task_id = inflight.task_id
    credits = conn.input_credits(task_id, slot, _INPUT_WINDOW)
    # A broadcast's reader takes items pickled once for every node; a reader waiting for
    # the slowest node may be left to its thread when its call ends (it stops once the
    # call's end gives up its share: _releasing).
    shared = isinstance(iterable, _SharedReader)
    take: Callable[[int], list[_serial.Payload]] = (
        iterable.take
        if isinstance(iterable, _SharedReader)
        else functools.partial(_take_payloads, iter(iterable))
    )
    chunk = 1
    try:
        while True:
            room = await credits.take(chunk)
            # The caller's iterable may block (files, queues): read and pickle it off the
            # loop. A slow source goes one item per trip, so each is sent as soon as it
            # exists; a fast one in growing chunks, so the trips do not dominate.
            started = trio.current_time()
            payloads = await trio.to_thread.run_sync(take, room, abandon_on_cancel=shared)
            elapsed = trio.current_time() - started
            if payloads:
                conn.send_input(task_id, slot, payloads)
            if len(payloads) < room:
                conn.end_input(task_id, slot)
                return
            chunk = min(chunk * 2, _INPUT_CHUNK) if elapsed < 0.005 else 1
    finally:
        conn.drop_input_credits(task_id, slot)


def _take_payloads(iterator: Iterator[Any], count: int) -> list[_serial.Payload]:
    return [_serial.dumps(item) for item in itertools.islice(iterator, count)]


class _Shared:
    """An ``Iterator[T]`` argument of a broadcast that can be read only once (a generator,
    an open file): every node gets all of its items, read from it once.

    Each node's feeder reads through its own :class:`_SharedReader`. An item is pickled once
    and kept until every reader still reading has taken it; a reader more than ``lead``
    items ahead of the slowest waits for it, so at most ``lead`` items are held. What the
    source raises, every reader raises. Blocking: readers run in threads.
    """

    def __init__(self, source: Iterator[Any], readers: int, lead: int = _INPUT_WINDOW) -> None:
        self._source = source
        self._lead = lead
        self._changed = threading.Condition()
        self._held: collections.deque[_serial.Payload] = collections.deque()
        self._first = 0  # the index of the first item held
        self._next = dict.fromkeys(range(readers), 0)  # each reader's next item's index
        self._reading = False  # a reader is reading the source (outside the lock)
        self._ended = False
        self._error: BaseException | None = None

    def reader(self, index: int) -> _SharedReader:
        return _SharedReader(self, index)

    def take(self, index: int, count: int) -> list[_serial.Payload]:
        """Up to ``count`` items for reader ``index``: fewer only at the end."""
        taken: list[_serial.Payload] = []
        while len(taken) < count:
            payload = self._take_one(index)
            if payload is None:
                break
            taken.append(payload)
        return taken

    def leave(self, index: int) -> None:
        """Reader ``index`` reads no more: the others do not wait for it."""
        with self._changed:
            self._next.pop(index, None)
            self._trim()
            self._changed.notify_all()

    def _take_one(self, index: int) -> _serial.Payload | None:
        with self._changed:
            while True:
                at = self._next.get(index)
                if at is None:  # left (its call ended): no more
                    return None
                if at < self._first + len(self._held):
                    self._next[index] = at + 1
                    payload = self._held[at - self._first]
                    self._trim()
                    self._changed.notify_all()
                    return payload
                if self._error is not None:
                    raise self._error
                if self._ended:
                    return None
                if not self._reading and at - min(self._next.values()) < self._lead:
                    self._reading = True
                    break
                self._changed.wait()
        try:  # outside the lock: the source may block
            payload = _serial.dumps(next(self._source))
        except StopIteration:
            with self._changed:
                self._ended, self._reading = True, False
                self._changed.notify_all()
            return None
        except BaseException as exc:
            with self._changed:
                self._error, self._reading = exc, False
                self._changed.notify_all()
            raise
        with self._changed:
            self._held.append(payload)
            self._reading = False
            if index in self._next:
                self._next[index] += 1
            self._trim()
            self._changed.notify_all()
        return payload

    def _trim(self) -> None:
        """Drop the items every reader still reading has taken (called locked)."""
        lowest = min(self._next.values(), default=self._first + len(self._held))
        while self._first < lowest and self._held:
            self._held.popleft()
            self._first += 1


@attrs.frozen(eq=False)
class _SharedReader:
    """One node's way into a :class:`_Shared` iterable (a broadcast's ``Iterator[T]``)."""

    shared: _Shared
    index: int

    def take(self, count: int) -> list[_serial.Payload]:
        return self.shared.take(self.index, count)

    def leave(self) -> None:
        self.shared.leave(self.index)


def _every_node_reads_all(
    call: PreparedCall, nodes: int, nursery: trio.Nursery
) -> list[PreparedCall]:
    """``call`` for each of a broadcast's ``nodes``, each reading every item of its
    ``Iterator[T]`` arguments: one that can be iterated again (a list, a range) as it is,
    one that can be read only once (an iterator: a generator, a file) through a
    :class:`_Shared` of its own, and a client's, relayed, through a copy of its own that
    ``nursery`` fills (``_fan_batches``)."""
    per_node: list[Sequence[Iterable[Any] | RelayedInput | _SharedReader] | None] = []
    for given in call.inputs:
        if isinstance(given, RelayedInput):  # a sky.Client's, relayed by the server
            copies = [RelayedInput() for _ in range(nodes)]
            nursery.start_soon(_fan_batches, given, copies)
            per_node.append(copies)
        elif isinstance(given, Iterator):
            shared = _Shared(given, nodes)
            per_node.append([shared.reader(node) for node in range(nodes)])
        else:
            per_node.append(None)
    if not any(per_node):
        return [call] * nodes
    return [
        attrs.evolve(
            call,
            inputs=tuple(
                given if each is None else each[node]
                for given, each in zip(call.inputs, per_node, strict=True)
            ),
        )
        for node in range(nodes)
    ]


class RelayedInputError(SkywardError):
    """The source of a relayed ``Iterator[T]`` argument (a ``sky.Client``'s iterable)
    raised: the call is cancelled with this error, which carries what it raised."""


@attrs.define(eq=False)
class _Batch:
    payloads: list[_serial.Payload] | None  # None: the end of the items
    failed: str | None = None  # the source raised: what it raised, as text
    done: trio.Event = attrs.Factory(trio.Event)
    room: int | None = None  # set once sent: how many more the node takes now


class RelayedInput:
    """An ``Iterator[T]`` argument whose items arrive already pickled, from elsewhere
    (the server relays a ``sky.Client``'s): a ``PreparedCall.inputs`` entry.

    ``put`` hands a batch over and returns once the node has room for all of it (so the
    one who puts is held back by the node, as a local iterable is); the pool's feeder for
    the call takes the batches while the call runs.
    """

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[_Batch](0)
        self._ended = trio.Event()

    @property
    def ended(self) -> bool:
        """Whether the call reads no more (it ended, was cancelled, or the items did)."""
        return self._ended.is_set()

    def end(self) -> None:
        """No more batches will be taken: a ``put`` waiting now, or later, returns None."""
        self._ended.set()
        self._send.close()
        self._receive.close()

    async def next_batch(self) -> _Batch | None:
        """The next batch put; None once the call reads no more (``end``, which also wakes
        a reader waiting here) or the channel ended."""
        try:
            return await self._receive.receive()
        except (trio.ClosedResourceError, trio.EndOfChannel):
            return None

    async def cancel_when_ended(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` once the call reads no more (a task to start beside the work
        that ``scope`` holds)."""
        await self._ended.wait()
        scope.cancel()

    async def put(
        self, payloads: list[_serial.Payload] | None, *, failed: str | None = None
    ) -> int | None:
        """Send ``payloads`` to the node (None: the items ended; ``failed``: the source
        raised that, and the call fails with it). How many more items the node takes
        now, or None if the call reads no more. Cancellable; a batch the feeder has
        taken is sent whole all the same, while the call runs."""
        batch = _Batch(payloads, failed)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.cancel_when_ended, nursery.cancel_scope)
            try:
                await self._send.send(batch)
                await batch.done.wait()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the call ended before taking it
            nursery.cancel_scope.cancel()
        return batch.room


async def _fan_batches(source: RelayedInput, copies: list[RelayedInput]) -> None:
    """Give each batch put to ``source`` (a client's ``Iterator[T]`` argument of a
    broadcast, relayed) to every node's copy still reading: the client's items are sent
    once, and the room it hears is the least any node has (the slowest holds it back).
    Ends when the items do, when no node reads more, or when ``source`` is ended (the
    call is over): then every copy is ended too."""
    batch: _Batch | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.cancel_when_ended, nursery.cancel_scope)
            # Not ``async for`` over the channel: ended (the call over) while this waits
            # for the client's next batch, it raised ClosedResourceError into the pool.
            while (batch := await source.next_batch()) is not None:
                rooms: list[int | None] = [None] * len(copies)
                async with trio.open_nursery() as putting:
                    for i, copy in enumerate(copies):
                        if not copy.ended:
                            putting.start_soon(_put_copy, rooms, i, copy, batch)
                reading = [room for room in rooms if room is not None]
                batch.room = min(reading) if reading else None
                batch.done.set()
                if not reading or batch.payloads is None or batch.failed is not None:
                    break
            nursery.cancel_scope.cancel()
    finally:
        source.end()
        for copy in copies:
            copy.end()
        if batch is not None:
            batch.done.set()  # its sender hears the room, or None: no node reads more


async def _releasing(
    call: PreparedCall, run: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any
) -> _T:
    """``run(*args, **kwargs)`` for one node of a broadcast; then, however it ended (also
    before its feeder started: the node lost, the broadcast cancelled), its share of the
    inputs every node reads is given up, so the other nodes do not wait for it."""
    try:
        return await run(*args, **kwargs)
    finally:
        for given in call.inputs:
            if isinstance(given, _SharedReader):
                given.leave()
            elif isinstance(given, RelayedInput):
                given.end()


async def _put_copy(rooms: list[int | None], i: int, copy: RelayedInput, batch: _Batch) -> None:
    rooms[i] = await copy.put(batch.payloads, failed=batch.failed)


async def _relay_one(inflight: Inflight, slot: int, source: RelayedInput) -> None:
    """Send the batches ``source`` is given to the node, within the node's window."""
    conn = inflight.node.conn
    task_id = inflight.task_id
    credits = conn.input_credits(task_id, slot, _INPUT_WINDOW)
    batch: _Batch | None = None
    try:
        while (batch := await source.next_batch()) is not None:
            if batch.failed is not None:
                raise RelayedInputError(batch.failed)
            if batch.payloads is None:
                conn.end_input(task_id, slot)
                batch.room = 0
                return
            pending = batch.payloads
            while pending:
                room = await credits.take(len(pending))
                conn.send_input(task_id, slot, pending[:room])
                pending = pending[room:]
            batch.room = credits.available
            batch.done.set()
    finally:
        conn.drop_input_credits(task_id, slot)
        source.end()
        if batch is not None:
            batch.done.set()  # its sender hears the room, or None: the call reads no more


class Inflight:
    """A call on its way: sent to a node, waiting for its reply, its deadline or cancel()."""

    __slots__ = (
        "attempts",
        "call",
        "deadline",
        "event_id",
        "feeders",
        "finished",
        "holding",
        "node",
        "on_done",
        "on_output",
        "pool",
        "started",
        "target",
        "task_id",
        "timeout",
    )

    def __init__(
        self,
        pool: Pool,
        node: _Node,
        call: PreparedCall,
        timeout: float,
        on_done: Callable[[Outcome], None],
        target: int | None = None,
        on_output: OutputSink | None = None,
    ) -> None:
        self.pool = pool
        self.node = node
        self.on_output = on_output
        self.call = call
        self.timeout = timeout
        self.deadline = trio.current_time() + timeout
        self.on_done = on_done
        self.target = target
        self.task_id = 0
        self.finished = False
        self.holding = True  # holds a slot on self.node
        self.attempts: list[str] = []  # why earlier attempts were interrupted
        self.feeders: trio.CancelScope | None = None
        self.started = 0.0  # when it was sent, if someone watches the pool's events
        self.event_id = 0

    def _sent(self) -> None:
        events = self.pool._events
        if events.watched:
            self.started = trio.current_time()
            self.event_id = self.event_id or next(_task_ids)
            events.emit(
                TaskStarted(
                    job_id=self.pool.job_id,
                    node=self.node.index,
                    task=self.call.name,
                    task_id=self.event_id,
                )
            )

    def _end(self, outcome: Outcome) -> None:
        self.finished = True
        message, node, error = outcome
        outcome = (message, node, self.pool._stopped_instead(error))
        events = self.pool._events
        if events.watched and self.started:
            ok = error is None and message is not None and bool(message[2])
            events.emit(
                TaskCompleted(
                    job_id=self.pool.job_id,
                    node=node,
                    task=self.call.name,
                    task_id=self.event_id,
                    ok=ok,
                    seconds=trio.current_time() - self.started,
                    failure="" if ok else _failure_of(error),
                )
            )
        if self.feeders is not None:
            self.feeders.cancel(reason="the call ended")
        if self.holding:
            self.holding = False
            self.pool._release(self.node)
        self.pool._deadlines.finished()
        self.on_done(outcome)

    def _reply(self, message: tuple[Any, ...] | None, error: BaseException | None) -> None:
        if self.finished:
            return
        if isinstance(error, ConnectionLostError) and self._retryable():
            self._requeue(error)
            return
        if isinstance(error, ConnectionLostError) and self.pool._closing:
            # The pool's own stop cut the link: that, not a lost node, is why.
            closed = PoolClosedError(f"the pool closed before {self.call.name}() finished")
            closed.__cause__ = error
            error = closed
        elif isinstance(error, ConnectionLostError):
            error = self._interrupted(error)
        self._end((message, self.node.index, error))

    def _why_not_resent(self) -> str:
        if self.call.stream:
            return "a generator's items already sent cannot be replayed, so it is not sent again"
        if self.call.inputs:
            return "its Iterator[...] inputs were consumed, so it is not sent again"
        if self.pool._closing:
            return "the pool is closing"
        return (
            f"that is more than Options(retry_on_interruption="
            f"{self.pool.options.retry_on_interruption}) allows"
        )

    def _retryable(self) -> bool:
        # A stream that delivered items, or inputs already consumed, cannot be replayed.
        return (
            not self.call.stream
            and not self.call.inputs
            and not self.pool._closing
            and len(self.attempts) < self.pool.options.retry_on_interruption
        )

    def _interrupted(self, last: BaseException) -> ConnectionLostError:
        history = "; ".join([*self.attempts, f"node {self.node.index}: {last}"])
        count = len(self.attempts) + 1
        return ConnectionLostError(
            f"{self.call.name}() was interrupted {count} time{'s' if count > 1 else ''}; "
            f"{self._why_not_resent()}: {history}",
            node=self.node.index,
        )

    def _not_resent(self, why: PoolClosedError) -> ConnectionLostError:
        """The call was interrupted (each in ``attempts``) and could not be sent again."""
        count = len(self.attempts)
        history = "; ".join([*self.attempts, str(why)])
        return ConnectionLostError(
            f"{self.call.name}() was interrupted {count} time{'s' if count > 1 else ''} "
            f"and could not be sent again: {history}",
            node=self.node.index,
        )

    def _requeue(self, error: BaseException) -> None:
        """The node was lost with the call on it: send it again, to another node."""
        self.attempts.append(f"node {self.node.index}: {error}")
        self.holding = False
        self.pool._release(self.node)
        self.pool._work_nursery().start_soon(self._resend)

    async def _resend(self) -> None:
        try:
            node = await self.pool._acquire_checked(self.target, self.call.fn_key)
        except VersionMismatchError as exc:
            if not self.finished:
                self._end((None, self.node.index, exc))
            return
        except PoolClosedError as exc:
            if not self.finished:
                self._end((None, self.node.index, self._not_resent(exc)))
            return
        except BaseException:  # cancelled: the pool is closing; the caller must hear of it
            if not self.finished:
                closed = PoolClosedError(
                    f"the pool closed while {self.call.name}() waited for a node to be "
                    f"sent again to ({'; '.join(self.attempts)})"
                )
                self._end((None, self.node.index, closed))
            raise
        if self.finished:  # cancelled or expired while it waited
            self.pool._release(node)
            return
        self.node = node
        self.holding = True
        try:
            self.task_id = node.conn.call_nowait(
                self.call.fn_key,
                self.call.fn_payload,
                self.call.args_payload,
                self._reply,
                on_output=self._output_sink(),
                every=self.call.every_worker,
            )
        except ConnectionLostError as exc:
            self._reply(None, exc)
        else:
            self._sent()

    def _output_sink(self) -> Callable[[str, str], None] | None:
        """Where this attempt's output goes besides the pool's events: ``on_output`` with
        the node it runs on."""
        if self.on_output is None:
            return None
        return functools.partial(self.on_output, self.node.index)

    def cancel(self, error: BaseException | None = None) -> None:
        """Give up on the call: the worker drops it and frees its slot. Idempotent."""
        if self.finished:
            return
        self.node.conn.forget(self.task_id)
        self._end((None, self.node.index, error or CancelledCallError(self.call.name)))

    def expire(self) -> None:
        self.cancel(
            TaskTimeoutError(task=self.call.name, node=self.node.index, timeout=self.timeout)
        )


class _Deadlines:
    """Every in-flight call's deadline, watched by one task per pool.

    One watcher and a heap instead of a cancel scope per call: a scope with a deadline
    costs about 11 µs to enter and exit here, and the sync face starts calls from a
    callback, where there is no scope to enter.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Inflight]] = []
        self._order = itertools.count()
        self._live = 0
        self._wakeup = trio.Event()

    def add(self, inflight: Inflight) -> None:
        self._live += 1
        earliest = not self._heap or inflight.deadline < self._heap[0][0]
        heapq.heappush(self._heap, (inflight.deadline, next(self._order), inflight))
        if len(self._heap) > 2 * self._live + 1024:
            # Finished calls leave their entries behind; drop them now and then.
            self._heap = [entry for entry in self._heap if not entry[2].finished]
            heapq.heapify(self._heap)
        if earliest:
            self._wakeup.set()

    def finished(self) -> None:
        self._live -= 1

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = trio.current_time()
            while self._heap and (self._heap[0][0] <= now or self._heap[0][2].finished):
                _, _, inflight = heapq.heappop(self._heap)
                if not inflight.finished:
                    inflight.expire()
            next_deadline = self._heap[0][0] if self._heap else math.inf
            with trio.move_on_at(next_deadline):
                await self._wakeup.wait()
            self._wakeup = trio.Event()


#: Streamed items the client reads before it lets the node send that many more.
_CREDIT_BATCH = 32


class ItemStream:
    """The items of a generator function dispatched with ``>>``, as the node yields them.

    An async iterator (``async for item in await (gen() >> pool)``). The node runs at most
    a window of items ahead of what you have read; ``aclose()`` (or leaving an
    ``async with``) stops the generator on the node. The call's timeout covers the whole
    stream.
    """

    def __init__(self, pool: Pool, call: PreparedCall) -> None:
        self._pool = pool
        self._call = call
        self._send, self._receive = trio.open_memory_channel[tuple[bool, Any]](math.inf)
        self._inflight: Inflight | None = None
        self._read = 0
        self._finished = False

    def _on_item(self, payload: _serial.Payload) -> None:
        self._send.send_nowait((True, payload))

    def _on_done(self, outcome: Outcome) -> None:
        self._send.send_nowait((False, outcome))

    def __aiter__(self) -> ItemStream:
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        is_item, value = await self._receive.receive()
        if is_item:
            self._read += 1
            if self._read % _CREDIT_BATCH == 0 and self._inflight is not None:
                self._inflight.node.conn.credit(self._inflight.task_id, _CREDIT_BATCH)
            return _serial.loads(value)
        self._finished = True
        message, node, error = value
        if error is not None:
            raise error
        _, _, ok, payload, _ = message
        if not ok:
            raise _rebuild_error(payload, node, self._call.name)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop reading: the generator on the node is stopped and its slot freed."""
        if not self._finished and self._inflight is not None:
            self._finished = True
            self._inflight.cancel()

    async def __aenter__(self) -> ItemStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Future:
    """The handle of a call started with ``run_async`` (``p > pool``) on a trio pool."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._done = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._scope = trio.CancelScope()
        self._cancelled = False
        self._why = ""  # what cancelled it, when not cancel()

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> bool:
        """Cancel the call (the worker is told to stop it). False if already done."""
        if self.done():
            return False
        self._cancelled = True
        self._scope.cancel(reason="Future.cancel()")
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    async def result(self) -> Any:
        """Wait for the call and return its value (or raise its error)."""
        await self._done.wait()
        if self._cancelled:
            raise CancelledCallError(self.name, self._why)
        if self._error is not None:
            raise self._error
        return self._value


class CancelledCallError(SkywardError):
    """``result()`` of a ``Future`` that was cancelled; ``why`` says by what, when it was
    not ``Future.cancel()`` (a client that closed while the call ran)."""

    def __init__(self, name: str, why: str = "") -> None:
        super().__init__(f"the call to {name}() was cancelled" + (f": {why}" if why else ""))
        self.name = name
        self.why = why

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its name (the server relays it pickled), not from its message.
        return type(self), (self.name, self.why), self.__dict__


class ResultStream:
    """Results of a streaming ``gather`` as they complete (an async iterator).

    ``ordered=True`` yields in submission order. Leaving early (``aclose()``, or
    ``async with``) cancels the calls still running.
    """

    def __init__(self, count: int, ordered: bool) -> None:
        self._count = count
        self._ordered = ordered
        self._send, self._receive = trio.open_memory_channel[tuple[int, bool, Any]](count)
        self._scope = trio.CancelScope()
        self._buffer: dict[int, tuple[bool, Any]] = {}
        self._next = 0
        self._yielded = 0

    def __aiter__(self) -> ResultStream:
        return self

    async def __anext__(self) -> Any:
        if self._yielded >= self._count:
            raise StopAsyncIteration
        try:
            if self._ordered:
                while self._next not in self._buffer:
                    index, ok, value = await self._receive.receive()
                    self._buffer[index] = (ok, value)
                ok, value = self._buffer.pop(self._next)
                self._next += 1
            else:
                _, ok, value = await self._receive.receive()
        except trio.EndOfChannel:
            raise PoolClosedError(
                f"the stream ended after {self._yielded} of {self._count} results "
                "(it was closed, or the pool closed)"
            ) from None
        self._yielded += 1
        if not ok:
            self._scope.cancel(reason="a streamed call failed")
            raise value
        return value

    async def aclose(self) -> None:
        self._scope.cancel(reason="stream closed")

    async def __aenter__(self) -> ResultStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Pool(Collections):
    """A running pool. Get one from ``async with skyward_trio.Compute(...) as pool``."""

    _collections_of = "pool"
    _store: ClientStore  # the collections store, on node 0 (see _collections)

    def __init__(self, spec: Spec, options: Options, nodes: Nodes, *, job_id: str) -> None:
        self.spec = spec
        self.options = options
        self.nodes = nodes
        self.job_id = job_id
        self.worker_config = options.worker or Worker()
        self._functions = _Functions()
        self._ready: dict[int, _Node] = {}
        self._changed = trio.Event()
        self._rr = 0
        self._work: trio.Nursery | None = None
        self._closing = False
        self._closed = False  # its teardown is over: the block that opened it has ended
        # Why the pool stopped before its block ended (Options.max_cost reached), if it did.
        self._stopped: BudgetExceededError | None = None
        self._deadlines = _Deadlines()
        self._supervisor: Supervisor | None = None
        self._wanted: set[int] = set(range(nodes.desired))  # the indices of the target
        self._gone: set[int] = set()  # wanted indices lost for good (not replaced)
        self._waiting_any: collections.deque[_Waiter] = collections.deque()
        self._waiting_for: dict[int, collections.deque[_Waiter]] = {}
        self._events = EventBus(job_id)
        self._log = _logging.PoolLog(job_id, enabled=False)  # Options(logging=...) opens it
        # Imported here: it brings asyncssh, which a server's clients (they import this
        # module for the calls they prepare) never need.
        from ._storelink import ClientStore

        self._store = ClientStore()

    @property
    def _live(self) -> int:
        """Nodes that are ready or may still become so (not gone for good)."""
        return len(self._wanted) - len(self._gone)

    # -- public API (the sync face mirrors these names and parameters) --------------------

    async def run(self, pending: PendingFunction[Any], *, target: int | str | None = None) -> Any:
        """Run ``pending`` on one node (round-robin, or ``target``: ``"head"`` or an index).

        For a generator function, returns an ``ItemStream`` (an async iterator) of its items
        as the node yields them.
        """
        prepared = self.prepare(pending)
        node = self._check_target(target)
        if prepared.stream:
            return await self.stream_items(prepared, target=node)
        return await self.run_prepared(prepared, target=node)

    async def run_async(
        self, pending: PendingFunction[Any], *, target: int | str | None = None
    ) -> Future:
        """Start ``pending`` without waiting; returns a ``Future`` (``await fut.result()``)."""
        prepared = self.prepare(pending)
        prepared.refuse_stream("`>` (run_async)")
        return self.start_prepared(prepared, target=self._check_target(target))

    async def broadcast(self, pending: PendingFunction[Any]) -> list[Any]:
        """Run ``pending`` on every ready node; results ordered by node index."""
        prepared = self.prepare(pending)
        prepared.refuse_stream("`@` (broadcast)")
        return await self.broadcast_prepared(prepared)

    async def run_parallel(self, group: PendingFunctionGroup) -> tuple[Any, ...] | ResultStream:
        """Run a group's calls in parallel: a tuple, or a ``ResultStream`` if it streams."""
        if not isinstance(group, PendingFunctionGroup):
            raise TypeError(
                f"run_parallel() needs a group such as `f(x) & g(y)` or sky.gather(...), "
                f"got {type(group).__qualname__}"
            )
        prepared = [self.prepare(p) for p in group.items]
        for call in prepared:
            call.refuse_stream("a group (run_parallel)")
        if group.stream:
            return self.stream_prepared(prepared, ordered=group.ordered)
        return await self.parallel_prepared(prepared)

    async def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` across the pool, in input order.

        ``fn`` need not be decorated. Items are pickled a batch at a time as they are
        sent, not all up front; tiny tasks travel thousands per message.
        """
        key, fn_payload, task_timeout = self.prepare_map(fn)
        iterator = map_items(items)
        total = len(items) if isinstance(items, collections.abc.Sized) else None
        return await self.map_prepared(key, fn_payload, task_timeout, iterator, total)

    def current_nodes(self) -> int:
        """How many nodes are ready right now (nodes being scaled down do not count)."""
        return len(self._ready)

    def events(self) -> EventStream:
        """The pool's events, in order: its lifecycle so far, then each as it happens.

        ``async for event in pool.events(): ...`` ends when the pool closes (after
        ``ClusterDestroyed``); ``await stream.aclose()`` stops reading earlier.
        """
        return self._events.subscribe()

    def resize(self, nodes: int | Nodes) -> None:
        """Change the pool's target now; nodes start or leave in the background.

        ``resize(6)`` aims at 6 nodes (an elastic pool keeps its ``max``, which must
        allow it); ``resize(sky.Nodes(desired=2, max=8))`` also changes the autoscaling
        range. Nodes that leave take no new calls and stop once their calls finish.
        """
        if self._supervisor is None or self._closing:
            raise PoolClosedError("the pool is not running; resize() needs an open pool")
        fixed = collective(self.spec)
        if fixed is not None:
            raise ValueError(
                f"resize({nodes!r}): this pool runs plugin {fixed.name!r}, whose nodes joined "
                "one group of a fixed size; open a new pool with the size you want"
            )
        self._supervisor.resize(_resize_target(self.nodes, nodes))

    # -- building blocks (also used by the sync face) -------------------------------------

    def prepare(self, pending: PendingFunction[Any]) -> PreparedCall:
        """Serialize a call (thread-safe; the sync face calls it in the user's thread).

        Raises:
            PoolClosedError: The pool is closed or closing (every dispatch comes here first).
        """
        if self._closing:
            self._check_open()
        return self._functions.prepare(pending)

    def prepare_map(self, fn: Callable[..., Any]) -> tuple[str, _serial.Payload, float | None]:
        if self._closing:
            self._check_open()
        fn, timeout = mappable(fn)
        entry = self._functions.get(fn)
        return entry.key, entry.payload, timeout

    def _check_target(self, target: int | str | None) -> int | None:
        if target is None:
            return None
        if target == "head":
            return 0
        if isinstance(target, bool) or not isinstance(target, int):
            raise ValueError(f'target must be None, "head" or a node index, got {target!r}')
        if target not in self._wanted:
            raise ValueError(
                f"target={target} is not a node of this pool; it has nodes {_spans(self._wanted)}"
            )
        return target

    async def run_prepared(self, call: PreparedCall, *, target: int | None = None) -> Any:
        message, index = await self.run_raw(call, target=target)
        _, _, ok, payload, _ = message
        if ok and _serial.payload_size(payload) > _BIG_RESULT:
            return await trio.to_thread.run_sync(self.finish, call, message, index)
        return self.finish(call, message, index)

    async def run_raw(
        self,
        call: PreparedCall,
        *,
        target: int | None = None,
        on_output: OutputSink | None = None,
    ) -> tuple[tuple[Any, ...], int]:
        """Run ``call``; its RESULT message undecoded, and the node that ran it.
        ``on_output`` gets its output, ``(node, stream, text)``, as it comes.

        Raises what the pool raises for the call (a timeout, a closed pool, a lost node
        past its retries), not the function's own exception: that is in the message.
        """
        node = await self._acquire_checked(target, call.fn_key)
        done = trio.Event()
        outcome: list[Outcome] = []

        def finished(result: Outcome) -> None:
            outcome.append(result)
            done.set()

        inflight = self._start_on(node, call, finished, target=target, on_output=on_output)
        try:
            await done.wait()
        except BaseException:
            inflight.cancel()  # the worker is told, and the slot is freed
            raise
        message, index, error = outcome[0]
        if error is not None:
            raise error
        assert message is not None
        return message, index

    def finish(self, call: PreparedCall, message: tuple[Any, ...], node: int) -> Any:
        """Decode a RESULT message: the value, or the remote exception raised here.

        Thread-safe: the sync face decodes in the caller's thread.
        """
        _, _, ok, payload, _ = message
        if not ok:
            raise _rebuild_error(payload, node, call.name)
        return _serial.loads(payload)

    async def stream_items(self, call: PreparedCall, *, target: int | None = None) -> ItemStream:
        """Start a generator function's call; its items arrive on the returned stream."""
        stream = ItemStream(self, call)
        stream._inflight = await self.start(call, target, stream._on_done, stream._on_item)
        return stream

    def try_start(
        self,
        call: PreparedCall,
        target: int | None,
        on_done: Callable[[Outcome], None],
        on_item: Callable[[_serial.Payload], None] | None = None,
    ) -> Inflight | None:
        """Start ``call`` now if a node has a free slot, else return None. Synchronous.

        ``on_done`` gets ``(RESULT message, node, None)`` or ``(None, node, error)``
        exactly once: on the reply, the timeout, a lost connection or ``cancel()``.
        """
        self._check_open(target)
        node = self._pick(target)
        if node is None or (
            call.fn_key not in node.verified and self._functions.needs(call.fn_key)
        ):
            return None  # no free slot, or the node's environment is not checked yet
        node.inflight += 1
        return self._start_on(node, call, on_done, on_item, target)

    async def start(
        self,
        call: PreparedCall,
        target: int | None,
        on_done: Callable[[Outcome], None],
        on_item: Callable[[_serial.Payload], None] | None = None,
        on_output: OutputSink | None = None,
    ) -> Inflight:
        """``try_start``, waiting for a free slot if there is none."""
        node = await self._acquire_checked(target, call.fn_key)
        return self._start_on(node, call, on_done, on_item, target, on_output)

    def _start_on(
        self,
        node: _Node,
        call: PreparedCall,
        on_done: Callable[[Outcome], None],
        on_item: Callable[[_serial.Payload], None] | None = None,
        target: int | None = None,
        on_output: OutputSink | None = None,
    ) -> Inflight:
        timeout = call.timeout or self.options.default_compute_timeout
        inflight = Inflight(self, node, call, timeout, on_done, target, on_output)
        try:
            inflight.task_id = node.conn.call_nowait(
                call.fn_key,
                call.fn_payload,
                call.args_payload,
                inflight._reply,
                on_item,
                on_output=inflight._output_sink(),
                every=call.every_worker,
            )
        except BaseException:
            self._release(node)
            raise
        inflight._sent()
        self._deadlines.add(inflight)
        if call.inputs:
            self._work_nursery().start_soon(self._feed_inputs, inflight)
        return inflight

    async def _feed_inputs(self, inflight: Inflight) -> None:
        """Send the items of a call's ``Iterator[T]`` arguments while it runs."""
        with trio.CancelScope() as scope:
            inflight.feeders = scope
            if inflight.finished:
                return
            try:
                async with trio.open_nursery() as nursery:
                    for slot, iterable in enumerate(inflight.call.inputs):
                        if isinstance(iterable, RelayedInput):
                            nursery.start_soon(_relay_one, inflight, slot, iterable)
                        else:
                            nursery.start_soon(_feed_one, inflight, slot, iterable)
            except Exception as exc:
                # The caller's own iterable failed: the call fails with that exception.
                while isinstance(exc, BaseExceptionGroup) and isinstance(
                    exc.exceptions[0], Exception
                ):
                    exc = exc.exceptions[0]
                note = (
                    f"[skyward] raised by an iterable passed to {inflight.call.name}() "
                    "for an Iterator[...] parameter; the call was cancelled"
                )
                if note not in getattr(exc, "__notes__", ()):  # a broadcast's, once
                    exc.add_note(note)
                inflight.cancel(exc)

    def start_prepared(self, call: PreparedCall, *, target: int | None = None) -> Future:
        future = Future(call.name)

        async def runner() -> None:
            try:
                with future._scope:
                    try:
                        future._value = await self.run_prepared(call, target=target)
                    except Exception as exc:
                        future._error = exc
            finally:
                # Also when the pool closes under it: waiters must not hang.
                if (
                    not future._done.is_set()
                    and future._error is None
                    and future._scope.cancel_called
                ):
                    future._cancelled = True
                elif not future._done.is_set() and self._closing and future._error is None:
                    future._error = self._stopped_instead(
                        PoolClosedError(f"the pool closed before {call.name}() finished")
                    )
                future._done.set()

        self._work_nursery().start_soon(runner)
        return future

    @property
    def workers_per_node(self) -> int:
        """How many workers (ranks) each node runs: a broadcast runs on all of them."""
        return workers_per_node(self.spec.plugins, self.worker_config)

    def _for_every_worker(self, call: PreparedCall) -> PreparedCall:
        """``call`` as a broadcast sends it: to each of a node's workers when it has
        several (``_plugin.workers_per_node``)."""
        ranks = self.workers_per_node
        if ranks == 1:
            return call
        if call.inputs:
            raise TypeError(
                f"{call.name}() has an Iterator[...] parameter, whose items stream to the "
                f"node as the call runs; a broadcast to this pool runs on each node's "
                f"{ranks} workers at once, which cannot share those items. Annotate the "
                "parameter as a list (every worker gets all of it), or broadcast without it"
            )
        return attrs.evolve(call, every_worker=True)

    async def broadcast_prepared(self, call: PreparedCall) -> list[Any]:
        call = self._for_every_worker(call)
        indices = await self._broadcast_to()
        calls = _every_node_reads_all(call, len(indices), self._work_nursery())
        return await _run_all(
            [
                functools.partial(_releasing, each, self.run_prepared, each, target=i)
                for each, i in zip(calls, indices, strict=True)
            ]
        )

    async def broadcast_raw(
        self, call: PreparedCall, *, on_output: OutputSink | None = None
    ) -> list[tuple[tuple[Any, ...], int]]:
        """``broadcast_prepared``, each node's RESULT message undecoded (``run_raw``)."""
        call = self._for_every_worker(call)
        indices = await self._broadcast_to()
        calls = _every_node_reads_all(call, len(indices), self._work_nursery())
        return await _run_all(
            [
                functools.partial(
                    _releasing, each, self.run_raw, each, target=i, on_output=on_output
                )
                for each, i in zip(calls, indices, strict=True)
            ]
        )

    async def _broadcast_to(self) -> list[int]:
        """The nodes a broadcast goes to: those ready now (waiting for one if none is)."""
        indices = sorted(self._ready)
        if not indices:
            await self._acquire_any_ready()
            indices = sorted(self._ready)
        self._submitted("broadcast", len(indices))
        return indices

    async def parallel_prepared(self, calls: list[PreparedCall]) -> tuple[Any, ...]:
        self._submitted("gather", len(calls))
        return tuple(await _run_all([functools.partial(self.run_prepared, c) for c in calls]))

    def stream_prepared(self, calls: list[PreparedCall], *, ordered: bool) -> ResultStream:
        stream = ResultStream(len(calls), ordered)
        self._submitted("gather", len(calls))

        async def one(index: int, call: PreparedCall) -> None:
            try:
                value = await self.run_prepared(call)
            except Exception as exc:
                stream._send.send_nowait((index, False, exc))
            else:
                stream._send.send_nowait((index, True, value))

        async def all_of_them() -> None:
            # Closing the channel ends the consumer's wait even if the pool closes first.
            async with stream._send:
                with stream._scope:
                    async with trio.open_nursery() as nursery:
                        for i, call in enumerate(calls):
                            nursery.start_soon(one, i, call)

        self._work_nursery().start_soon(all_of_them)
        return stream

    async def map_prepared(
        self,
        key: str,
        fn_payload: _serial.Payload,
        task_timeout: float | None,
        items: Any,
        total: int | None = None,
    ) -> list[Any]:
        self._submitted("map", total)
        results: list[Any] = []
        per_item: float | None = None
        bytes_per_item: float | None = None
        failure: list[BaseException] = []
        item_timeout = task_timeout or self.options.default_compute_timeout

        def fail(error: BaseException) -> None:
            if not failure:
                failure.append(self._stopped_instead(error))
                nursery.cancel_scope.cancel(reason="a mapped item failed")

        async def run_batch(node: _Node, start: int, count: int, payload: _serial.Payload) -> None:
            nonlocal per_item
            limit = item_timeout * count
            attempts: list[str] = []
            sent: _BatchEvents | None = None
            while True:
                try:
                    await self._verify(node, key)
                except BaseException as exc:
                    self._release(node)
                    if isinstance(exc, VersionMismatchError | ConnectionLostError):
                        fail(exc)
                        return
                    raise
                sent = self._batch_sent(node, count, sent)
                try:
                    with trio.fail_after(limit):
                        msg = await node.conn.call_batch(key, fn_payload, payload)
                except trio.TooSlowError:
                    self._release(node)
                    fail(TaskTimeoutError(task="map", node=node.index, timeout=limit))
                    return
                except ConnectionLostError as exc:
                    # The node was lost with the batch on it: send it to another node.
                    self._release(node)
                    attempts.append(f"node {node.index}: {exc}")
                    retries = self.options.retry_on_interruption
                    if self._closing:
                        closed = PoolClosedError(
                            f"the pool closed before map items {start}..{start + count - 1} "
                            "finished"
                        )
                        closed.__cause__ = exc
                        fail(closed)
                        return
                    if len(attempts) > retries:
                        fail(
                            ConnectionLostError(
                                f"map items {start}..{start + count - 1} were interrupted "
                                f"{len(attempts)} times, more than Options(retry_on_"
                                f"interruption={retries}) allows: {'; '.join(attempts)}",
                                node=node.index,
                            )
                        )
                        return
                    try:
                        node = await self._acquire(None)
                    except PoolClosedError as closed:
                        fail(closed)
                        return
                    continue
                except BaseException:
                    self._release(node)
                    raise
                self._release(node)
                break
            _, _, out_payload, elapsed = msg
            per_item = elapsed / count
            outcomes = _serial.loads(out_payload)
            if len(outcomes) != count:  # the function or the batch failed to load
                outcomes = outcomes * count
            if sent is not None:
                ok = all(good for good, _ in outcomes)
                self._events.emit(sent.completed(ok, trio.current_time()))
            for offset, (ok, value) in enumerate(outcomes):
                if ok:
                    results[start + offset] = value
                elif not failure:
                    err = _rebuild_error(value, node.index, "map")
                    err.add_note(f"[skyward] while mapping item {start + offset}")
                    fail(err)
                    return

        start = 0
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    node = await self._acquire(None)
                except PoolClosedError as closed:
                    fail(closed)  # raised below as itself, not in the nursery's group
                    break
                size = _batch_size(per_item, bytes_per_item)
                try:
                    # The caller's iterable may block (files, queues, generators doing
                    # I/O): read and pickle it in a thread, never on the loop.
                    chunk, payload = await trio.to_thread.run_sync(_take_batch, items, size)
                except BaseException as exc:
                    self._release(node)
                    if not isinstance(exc, Exception):
                        raise
                    if isinstance(exc, _UnpicklableBatch):
                        error: BaseException = SerializationError(
                            f"an item among map items {start}..{start + exc.count - 1} "
                            f"cannot be pickled ({type(exc.cause).__name__}: {exc.cause})"
                        )
                        error.__cause__ = exc.cause
                    else:
                        error = exc  # the items iterable itself raised
                    fail(error)  # raised below, as itself, once the batches in flight stop
                    break
                if not chunk:
                    self._release(node)
                    break
                assert payload is not None
                bytes_per_item = _serial.payload_size(payload) / len(chunk)
                results.extend([None] * len(chunk))
                nursery.start_soon(run_batch, node, start, len(chunk), payload)
                start += len(chunk)
        if failure:
            raise failure[0]
        return results

    def _batch_sent(
        self, node: _Node, count: int, previous: _BatchEvents | None
    ) -> _BatchEvents | None:
        if not self._events.watched:
            return None
        # A batch sent again keeps its task_id: one TaskCompleted ends all its attempts.
        task_id = previous.started.task_id if previous is not None else next(_task_ids)
        started = TaskStarted(
            job_id=self.job_id, node=node.index, task="map", task_id=task_id, count=count
        )
        self._events.emit(started)
        return _BatchEvents(started, trio.current_time())

    def _submitted(self, task: str, count: int | None) -> None:
        if self._events.watched:
            self._events.emit(WorkSubmitted(job_id=self.job_id, task=task, count=count))

    # -- scheduling ------------------------------------------------------------------------

    def _notify(self) -> None:
        """Nodes joined, left or freed a slot: wake whoever waits for that."""
        self._changed.set()
        self._changed = trio.Event()
        self._serve_waiters()

    def _serve_waiters(self) -> None:
        # Waiters queue in order and are handed a slot directly. (Waking every waiter on
        # every freed slot, and letting them race, costs O(waiters) per release: 2,000
        # queued `>` calls made that quadratic.)
        if self._closing or (not self._ready and self._live == 0):
            for waiter in [*self._waiting_any, *(w for q in self._waiting_for.values() for w in q)]:
                waiter.event.set()  # it re-checks and raises PoolClosedError
            self._waiting_any.clear()
            self._waiting_for.clear()
            return
        for index, queue in list(self._waiting_for.items()):
            if index in self._gone or index not in self._wanted:
                for waiter in queue:
                    waiter.event.set()  # it re-checks and raises PoolClosedError
                del self._waiting_for[index]
                continue
            while queue:
                node = self._pick(index)
                if node is None:
                    break
                self._hand(queue.popleft(), node)
            if not queue:
                del self._waiting_for[index]
        while self._waiting_any:
            node = self._pick(None)
            if node is None:
                break
            self._hand(self._waiting_any.popleft(), node)

    @staticmethod
    def _hand(waiter: _Waiter, node: _Node) -> None:
        node.inflight += 1
        waiter.node = node
        waiter.event.set()

    def _pick(self, target: int | None) -> _Node | None:
        # A node whose link is down stays in _ready while its supervisor reconnects; it
        # is not picked meanwhile (its calls wait for the link, or for another node). Nor
        # is one being reclaimed: calls pinned to it wait for its replacement.
        if target is not None:
            node = self._ready.get(target)
            if (
                node is None
                or node.inflight >= node.capacity
                or not node.conn.usable
                or node.reclaimed.is_set()
            ):
                return None
            return node
        order = sorted(self._ready)
        for k in range(len(order)):
            node = self._ready[order[(self._rr + k) % len(order)]]
            if node.inflight < node.capacity and node.conn.usable and not node.reclaimed.is_set():
                self._rr = (self._rr + k + 1) % len(order)
                return node
        return None

    def _stopped_instead(self, error: E) -> E | BudgetExceededError:
        """Why the pool stopped (``Options.max_cost``), in place of an error its stop
        caused: a call it cut off, or one made since, says so."""
        stopped = self._stopped
        if stopped is None or not isinstance(error, ConnectionLostError | PoolClosedError):
            return error
        fresh = BudgetExceededError(stopped.max_cost, stopped.spent, stopped.instances)
        fresh.__cause__ = error if isinstance(error, ConnectionLostError) else None
        return fresh

    def _check_open(self, target: int | None = None) -> None:
        if target is not None and target in self._gone:
            raise PoolClosedError(
                f"node {target} is gone for good (it was lost and could not be replaced); "
                "pin calls to another node or leave target=None"
            )
        if target is not None and target not in self._wanted:
            raise PoolClosedError(
                f"node {target} left the pool (it was scaled down); pin calls to one of "
                f"nodes {_spans(self._wanted)} or leave target=None"
            )
        if self._closed:
            raise self._stopped_instead(
                PoolClosedError(
                    "this pool is closed: the `with sky.Compute(...) as pool:` block that "
                    "opened it has ended and its machines are gone. Make calls inside the "
                    "block, or open a new pool"
                )
            )
        if self._closing:
            raise self._stopped_instead(
                PoolClosedError(
                    "the pool is shutting down (the block that opened it is ending): calls "
                    "not yet on a node are not run, and new ones are refused"
                )
            )
        if not self._ready and self._live == 0:
            raise PoolClosedError(
                "no nodes are left in the pool (every node failed or was lost); "
                "see the messages above for why"
            )

    async def _acquire(self, target: int | None) -> _Node:
        """A slot on a ready node (``target``, or the next round-robin), in arrival order."""
        self._check_open(target)
        queue = self._waiting_any if target is None else self._waiting_for.get(target)
        if not queue:  # nobody is ahead of us
            node = self._pick(target)
            if node is not None:
                node.inflight += 1
                return node
        waiter = _Waiter()
        if target is None:
            self._waiting_any.append(waiter)
        else:
            self._waiting_for.setdefault(target, collections.deque()).append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.node is not None:
                self._release(waiter.node)  # handed a slot just as we were cancelled
            else:
                waiting = self._waiting_any if target is None else self._waiting_for.get(target)
                if waiting is not None and waiter in waiting:
                    waiting.remove(waiter)
            raise
        if waiter.node is None:
            self._check_open(target)  # woken because the pool is closing, empty, or its node gone
            raise PoolClosedError("the pool could not give this call a node")
        return waiter.node

    async def _acquire_any_ready(self) -> None:
        while not self._ready:
            if self._closing or self._live == 0:
                raise self._stopped_instead(
                    PoolClosedError("no nodes are ready, and none are coming up")
                )
            await self._changed.wait()

    async def _acquire_checked(self, target: int | None, key: str) -> _Node:
        """A slot on a ready node whose environment can run function ``key``."""
        node = await self._acquire(target)
        try:
            await self._verify(node, key)
        except BaseException:
            self._release(node)
            raise
        return node

    async def _verify(self, node: _Node, key: str) -> None:
        """The environment handshake for function ``key`` on ``node``, once per pair.

        Raises:
            VersionMismatchError: A module it refers to is missing on the node, or has
                another major version there (a minor difference is a warning).
        """
        needs = self._functions.needs(key)
        if not needs or key in node.verified:
            return
        checking = node.checking.get(key)
        if checking is not None:
            await checking.wait()
        elif key not in node.refused:
            node.checking[key] = checking = trio.Event()
            try:
                there = await self._module_versions(node, list(needs))
                verdict = compare(dict(needs), there, node.index)
                name = key.partition(":")[2]
                if verdict.errors:
                    node.refused[key] = VersionMismatchError(
                        f"node {node.index} cannot run {name}(): modules it refers to differ "
                        "there in a way that breaks loading it:\n  - "
                        + "\n  - ".join(verdict.errors)
                    )
                else:
                    node.verified.add(key)
                    if verdict.warnings:
                        warnings.warn(
                            f"{name}() runs on node {node.index} with other versions of "
                            f"modules it refers to: {'; '.join(verdict.warnings)}",
                            VersionMismatchWarning,
                            stacklevel=1,
                        )
            finally:
                del node.checking[key]
                checking.set()
        if key in node.refused:
            raise node.refused[key]

    async def _module_versions(self, node: _Node, names: list[str]) -> dict[str, str | None]:
        """Ask the node's worker which versions of ``names`` it has (a call of its own)."""
        entry = self._functions.get(module_versions)
        done = trio.Event()
        outcome: list[tuple[tuple[Any, ...] | None, BaseException | None]] = []

        def reply(message: tuple[Any, ...] | None, error: BaseException | None) -> None:
            outcome.append((message, error))
            done.set()

        args = _serial.dumps(((names,), {}))
        task_id = node.conn.call_nowait(entry.key, entry.payload, args, reply)
        try:
            with trio.fail_after(60):
                await done.wait()
        except BaseException:
            node.conn.forget(task_id)
            raise
        message, error = outcome[0]
        if error is not None:
            raise error
        assert message is not None
        _, _, ok, payload, _ = message
        if not ok:
            raise _rebuild_error(payload, node.index, "module_versions")
        return dict(_serial.loads(payload))

    def _release(self, node: _Node) -> None:
        node.inflight -= 1
        if not node.inflight:
            node.last_used = trio.current_time()
            if node.drained is not None:
                node.drained.set()
        if self._waiting_any or self._waiting_for:
            self._serve_waiters()

    def _load(self) -> Load:
        return Load(
            target=len(self._wanted),
            ready=len(self._ready),
            queued=len(self._waiting_any),
            capacity=self.worker_config.concurrency + self.worker_config.buffer,
            last_used=[None if n.inflight else n.last_used for n in self._ready.values()],
        )

    def _work_nursery(self) -> trio.Nursery:
        if self._work is None:
            raise RuntimeError("the pool is not running")
        return self._work


def _resize_target(current: Nodes, nodes: int | Nodes) -> Nodes:
    """What ``pool.resize(nodes)`` aims at, or a ValueError saying how to ask for it."""
    if isinstance(nodes, Nodes):
        return nodes
    if isinstance(nodes, bool) or not isinstance(nodes, int):
        raise TypeError(
            f"resize() takes a node count or a sky.Nodes(...), got {type(nodes).__qualname__}"
        )
    if nodes < 1:
        raise ValueError(f"resize({nodes}): a pool needs at least 1 node; pass resize(1) or more")
    if current.max is not None and nodes > current.max:
        raise ValueError(
            f"resize({nodes}) is above this elastic pool's max={current.max}; pass "
            f"resize(sky.Nodes(desired={nodes}, max={nodes})) to raise the ceiling too"
        )
    return Nodes(desired=nodes, max=current.max)


def _spans(indices: Iterable[int]) -> str:
    """``0..3`` for a contiguous set of node indices, else ``0, 2, 5``."""
    ordered = sorted(indices)
    if ordered and ordered[-1] - ordered[0] == len(ordered) - 1 and len(ordered) > 1:
        return f"{ordered[0]}..{ordered[-1]}"
    return ", ".join(map(str, ordered))


async def _run_all(thunks: list[Callable[[], Any]]) -> list[Any]:
    """Run all concurrently; the first failure cancels the rest and is raised as itself."""
    results: list[Any] = [None] * len(thunks)
    failure: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            results[i] = await thunks[i]()
        except Exception as exc:
            if not failure:
                failure.append(exc)
            nursery.cancel_scope.cancel(reason="a call in the group failed")

    async with trio.open_nursery() as nursery:
        for i in range(len(thunks)):
            nursery.start_soon(one, i)
    if failure:
        raise failure[0]
    return results
