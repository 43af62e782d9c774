"""The sync face: ``with sky.Compute(...) as pool`` over the trio core.

Same names and parameters as ``skyward_trio``; calls block and return values. Arguments
are pickled here, in the caller's thread, so an unpicklable argument fails at once and
the trio loop never stalls on a big pickle.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import queue
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sized
from typing import Any

import trio

import skyward_trio
from skyward_trio import PendingFunction, PendingFunctionGroup, Spec, _serial
from skyward_trio._collections import Collections, give_back, in_thread
from skyward_trio._events import Event
from skyward_trio._function import active_pool, map_items
from skyward_trio._model import Nodes, Options
from skyward_trio._plugin import client_hooks
from skyward_trio._pool import _CREDIT_BATCH, Inflight, Outcome, PreparedCall
from skyward_trio._storelink import ClientStore

from ._portal import Job, Portal, get_portal

__all__ = ["Compute", "Pool"]


class EventIterator(Iterator[Event]):
    """``pool.events()`` in the sync face: a subscription made at once, read by blocking.

    Events queue from the moment it is made (a reader thread may start later); ``close()``
    or leaving its ``with`` block stops the queueing, and so does losing the last
    reference to it.
    """

    def __init__(self, portal: Portal, stream: skyward_trio.EventStream) -> None:
        self._portal = portal
        self._stream = stream
        self._closed = False

    def __iter__(self) -> EventIterator:
        return self

    def __next__(self) -> Event:
        if self._closed:
            raise StopIteration
        try:
            return self._portal.call(self._stream.__anext__)  # type: ignore[no-any-return]
        except StopAsyncIteration:
            self._closed = True  # the pool closed: the bus has let the stream go
            raise StopIteration from None

    def close(self) -> None:
        """Stop reading: the pool stops queueing events for this iterator."""
        if not self._closed:
            self._closed = True
            self._portal.call(self._stream.aclose)

    def __enter__(self) -> EventIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Possibly on the trio thread itself (garbage collection runs anywhere): hand the
        # detaching to the loop rather than wait for it; a loop that is gone detached all.
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._portal.run_sync_soon(self._stream.detach)


class Pool(Collections):
    """A running pool (sync face). Get one from ``with sky.Compute(...) as pool``."""

    _collections_of = "pool"
    _store: _PortalStore

    def __init__(self, core: skyward_trio.Pool, portal: Portal) -> None:
        self._core = core
        self._portal = portal
        self._store = _PortalStore(core._store, portal)  # the collections, from this thread

    @property
    def job_id(self) -> str:
        return self._core.job_id

    @property
    def spec(self) -> skyward_trio.Spec:
        """The spec this pool runs on: with several, the one that came up."""
        return self._core.spec

    def run(self, pending: PendingFunction[Any], *, target: int | str | None = None) -> Any:
        """Run ``pending`` on one node (round-robin, or ``target``: ``"head"`` or an index)."""
        prepared = self._core.prepare(pending)
        node = self._core._check_target(target)
        call = _SyncCall(self._core, self._portal, prepared, node)
        if prepared.stream:
            return call.items()
        return call.result()

    def run_async(
        self, pending: PendingFunction[Any], *, target: int | str | None = None
    ) -> concurrent.futures.Future[Any]:
        """Start ``pending`` without waiting; returns a ``concurrent.futures.Future``."""
        prepared = self._core.prepare(pending)
        prepared.refuse_stream("`>` (run_async)")
        node = self._core._check_target(target)
        return _SyncCall(self._core, self._portal, prepared, node).future()

    def broadcast(self, pending: PendingFunction[Any]) -> list[Any]:
        """Run ``pending`` on every ready node; results ordered by node index."""
        prepared = self._core.prepare(pending)
        prepared.refuse_stream("`@` (broadcast)")
        return self._portal.call(lambda: self._core.broadcast_prepared(prepared))  # type: ignore[no-any-return]

    def run_parallel(self, group: PendingFunctionGroup) -> tuple[Any, ...] | Iterator[Any]:
        """Run a group's calls in parallel: a tuple, or a generator if it streams."""
        if not isinstance(group, PendingFunctionGroup):
            raise TypeError(
                f"run_parallel() needs a group such as `f(x) & g(y)` or sky.gather(...), "
                f"got {type(group).__qualname__}"
            )
        prepared = [self._core.prepare(p) for p in group.items]
        for call in prepared:
            call.refuse_stream("a group (run_parallel)")
        if group.stream:
            return self._stream(prepared, group.ordered)
        return self._portal.call(lambda: self._core.parallel_prepared(prepared))  # type: ignore[no-any-return]

    def _stream(self, prepared: list[Any], ordered: bool) -> Iterator[Any]:
        async def start() -> skyward_trio.ResultStream:
            return self._core.stream_prepared(prepared, ordered=ordered)

        return self._iterate(start)

    def _iterate(self, open_stream: Callable[[], Awaitable[Any]]) -> Iterator[Any]:
        """A blocking generator over an async iterator that lives on the trio thread."""
        stream = self._portal.call(open_stream)
        try:
            while True:
                try:
                    yield self._portal.call(stream.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self._portal.call(stream.aclose)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` across the pool, in input order.

        ``fn`` need not be decorated.
        """
        key, payload, timeout = self._core.prepare_map(fn)
        iterator = map_items(items)
        total = len(items) if isinstance(items, Sized) else None
        return self._portal.call(  # type: ignore[no-any-return]
            lambda: self._core.map_prepared(key, payload, timeout, iterator, total)
        )

    def current_nodes(self) -> int:
        """How many nodes are ready right now (nodes being scaled down do not count)."""
        return self._core.current_nodes()

    def events(self) -> EventIterator:
        """The pool's events, in order: its lifecycle so far, then each as it happens.

        Subscribed when called, so nothing that happens after this call is missed however
        late the first ``next()`` comes. An iterator that blocks for the next event and
        ends when the pool closes (after ``ClusterDestroyed``); read it in another thread
        while this one uses the pool. ``close()`` (or a ``with`` block) stops reading.
        """

        async def subscribe() -> skyward_trio.EventStream:
            return self._core.events()

        return EventIterator(self._portal, self._portal.call(subscribe))

    def resize(self, nodes: int | Nodes) -> None:
        """Change the pool's target now; nodes start or leave in the background.

        ``resize(6)`` aims at 6 nodes (an elastic pool keeps its ``max``, which must allow
        it); ``resize(sky.Nodes(desired=2, max=8))`` also changes the autoscaling range.
        Nodes that leave take no new calls and stop once their calls finish.
        """

        async def resize() -> None:
            self._core.resize(nodes)

        self._portal.call(resize)


class _PortalStore:
    """Collections from the user's thread: each operation runs on the portal's trio loop;
    an ``_async`` variant runs that blocking call off the caller's own event loop."""

    def __init__(self, store: ClientStore, portal: Portal) -> None:
        self._store = store
        self._portal = portal

    @property
    def off(self) -> bool:
        """The pool was opened with ``Options(cluster=False)``: it has no collections."""
        return self._store.off

    def call(self, op: int, name: str, *args: Any) -> Any:
        return self._portal.call(lambda: self._store.call_async(op, name, *args))

    async def call_async(self, op: int, name: str, *args: Any) -> Any:
        job = self._portal.submit(lambda: self._store.call_async(op, name, *args))
        try:
            return await in_thread(job.future.result)
        except BaseException:
            # Given up (a timeout, a cancel): cancelled, the store's call withdraws its
            # wait; what it was granted all the same is given back.
            self._portal.cancel(job)
            job.future.add_done_callback(functools.partial(self._give_back, op, name, args))
            raise

    def _give_back(
        self, op: int, name: str, args: tuple[Any, ...], future: concurrent.futures.Future[Any]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        undo = give_back(op, name, args, future.result())
        if undo is not None:
            request, undo_args = undo
            returned = functools.partial(self._store.call_async, request, name, *undo_args)
            # This runs on whichever thread finished the job: the portal's loop, often.
            self._portal.run_sync_soon(lambda: self._portal.spawn(returned))


class _SyncCall:
    """One blocking call, started straight from the portal's callback.

    When a node has a free slot the call is sent from the callback itself and its reply
    completes a ``concurrent.futures.Future`` from the transport's data callback: no trio
    task is spawned or scheduled on either path, and the result is unpickled here, in
    the caller's thread. With every slot busy it waits for one in a task.
    """

    def __init__(
        self,
        core: skyward_trio.Pool,
        portal: Portal,
        prepared: PreparedCall,
        target: int | None,
    ) -> None:
        self._core = core
        self._portal = portal
        self._prepared = prepared
        self._target = target
        self._done: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        self._items: queue.SimpleQueue[tuple[bool, Any]] | None = None
        self._inflight: Inflight | None = None
        self._waiting: Job | None = None
        self._cancelled = False
        # Where the call's outcome goes: result() waits on _done; items() and future()
        # point this at their queue or future.
        self._deliver: Callable[[Outcome], None] = self._complete

    def _complete(self, outcome: Outcome) -> None:
        if not self._done.done():
            self._done.set_result(outcome)

    def _on_done(self, outcome: Outcome) -> None:
        self._deliver(outcome)

    def _on_item(self, payload: Any) -> None:
        assert self._items is not None
        self._items.put((True, payload))

    def _item_sink(self) -> Any:
        return self._on_item if self._items is not None else None

    def _start(self) -> None:  # on the trio thread
        if self._cancelled:
            return
        try:
            self._inflight = self._core.try_start(
                self._prepared, self._target, self._on_done, self._item_sink()
            )
        except Exception as exc:
            self._fail(exc)
            return
        if self._inflight is None:
            self._waiting = self._portal.spawn(self._start_when_free)

    async def _start_when_free(self) -> None:
        try:
            self._inflight = await self._core.start(
                self._prepared, self._target, self._on_done, self._item_sink()
            )
        except Exception as exc:
            self._fail(exc)
        if self._cancelled and self._inflight is not None:
            self._inflight.cancel()

    def _fail(self, error: BaseException) -> None:
        self._deliver((None, -1, error))

    def _cancel(self) -> None:  # on the trio thread
        self._cancelled = True
        if self._inflight is not None:
            self._inflight.cancel()
        elif self._waiting is not None:
            self._portal.cancel(self._waiting)
            self._fail(KeyboardInterrupt())
        else:
            self._fail(KeyboardInterrupt())

    def future(self) -> CallFuture:
        """Start the call and return its future at once (``p > pool``)."""
        future = CallFuture(self)
        self._deliver = future._settle
        self._portal.run_sync_soon(self._start)
        return future

    def items(self) -> ItemIterator:
        """The items of a generator function's call, as the node yields them."""
        items: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._items = items
        self._deliver = lambda outcome: items.put((False, outcome))
        self._portal.run_sync_soon(self._start)
        return ItemIterator(self, items)

    def _credit(self) -> None:  # on the trio thread
        if self._inflight is not None and not self._inflight.finished:
            self._inflight.node.conn.credit(self._inflight.task_id, _CREDIT_BATCH)

    def result(self) -> Any:
        self._portal.run_sync_soon(self._start)
        try:
            message, node, error = self._done.result()
        except BaseException:
            # Ctrl-C (or SIGTERM): tell the worker, free the slot, then let it propagate.
            self._portal.run_sync_soon(self._cancel)
            self._portal.wait_quietly(self._done, timeout=10)
            raise
        if error is not None:
            raise error
        assert message is not None
        return self._core.finish(self._prepared, message, node)


class ItemIterator(Iterator[Any]):
    """The items of a generator function dispatched with ``>>``, as the node yields them.

    Leaving early — ``break``, an exception, Ctrl-C, ``close()``, or dropping the iterator
    unread — stops the generator on the node and frees its slot.
    """

    def __init__(self, call: _SyncCall, items: queue.SimpleQueue[tuple[bool, Any]]) -> None:
        self._call = call
        self._items = items
        self._read = 0
        self._finished = False

    def __iter__(self) -> ItemIterator:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        try:
            is_item, value = self._items.get()
        except BaseException:
            self.close()  # Ctrl-C (or SIGTERM) while waiting: stop it on the node
            raise
        if is_item:
            self._read += 1
            if self._read % _CREDIT_BATCH == 0:
                self._call._portal.run_sync_soon(self._call._credit)
            return _serial.loads(value)
        self._finished = True
        message, node, error = value
        if error is not None:
            raise error
        self._call._core.finish(self._call._prepared, message, node)  # raises a remote error
        raise StopIteration

    def close(self) -> None:
        """Stop reading: the generator on the node is stopped and its slot freed."""
        if not self._finished:
            self._finished = True
            self._call._portal.run_sync_soon(self._call._cancel)

    def __del__(self) -> None:
        with contextlib.suppress(RuntimeError):  # the portal's loop already ended
            self.close()


class CallFuture(concurrent.futures.Future[Any]):
    """The ``concurrent.futures.Future`` of ``p > pool``; ``cancel()`` reaches the node.

    It stays pending until the call ends (``running()`` is False meanwhile), so that
    ``cancel()`` works at any time before the result arrives: the worker drops the task
    and frees its slot — a task already running in a thread finishes unobserved, since
    Python threads cannot be killed — and the result, if it comes, is discarded.
    """

    def __init__(self, call: _SyncCall) -> None:
        super().__init__()
        self._call = call

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._call._portal.run_sync_soon(self._call._cancel)
        return True

    def _settle(self, outcome: Outcome) -> None:  # on the trio thread
        if self.done():
            return  # cancelled: a late result is dropped
        message, node, error = outcome
        if error is not None:
            self.set_exception(error)
            return
        assert message is not None
        try:
            value = self._call._core.finish(self._call._prepared, message, node)
        except BaseException as exc:  # the remote exception, re-raised by result()
            self.set_exception(exc)
            return
        self.set_result(value)


class Compute:
    """Provision a pool for the ``with`` block and tear it down after.

    ``Compute(provider=..., nodes=..., ...)`` (flat ``Spec`` fields), ``Compute(spec, ...)``
    (one or more ``Spec``), or ``Compute(name="...")``; with no provider, ``sky.Local()``.
    Bad arguments raise here, before anything is provisioned. Leaving the block (normally,
    by an exception or by Ctrl-C) terminates every instance the pool created.
    """

    def __init__(
        self, *specs: Spec, name: str | None = None, options: Options | None = None, **kwargs: Any
    ) -> None:
        self._core = skyward_trio.Compute(*specs, name=name, options=options, **kwargs)
        self._core.enter_client_hooks = False  # entered here, with the pool this block gets
        self._client_hooks: contextlib.AbstractContextManager[None] | None = None
        self._portal: Portal | None = None
        self._job: Job | None = None
        self._exit: trio.Event | None = None
        self._token: Any = None
        self._leaving = False
        self.pool: Pool | None = None
        # Whether `>> sky` reaches this pool inside the block (sky.Session's pools: no).
        self.activates = True

    def __enter__(self) -> Pool:
        if self in _open_pools:
            raise RuntimeError(
                "this Compute is already open; one Compute makes one pool at a time "
                "(create another sky.Compute(...) for a second pool)"
            )
        portal = get_portal()
        ready: concurrent.futures.Future[skyward_trio.Pool] = concurrent.futures.Future()

        async def hold() -> None:
            exit_event = trio.Event()
            self._exit = exit_event
            # Entered and exited in this one task, as trio requires.
            async with self._core as core_pool:
                ready.set_result(core_pool)
                await exit_event.wait()

        job = portal.submit(hold)
        self._portal, self._job = portal, job
        try:
            concurrent.futures.wait([ready, job.future], return_when="FIRST_COMPLETED")
        except BaseException:  # Ctrl-C, or SystemExit from SIGTERM: stop starting it
            portal.cancel(job)
            portal._wait_quietly(job)
            raise
        if not ready.done():
            job.future.result()  # raises why the pool could not start
            raise RuntimeError("the pool stopped before it was ready")
        self.pool = Pool(ready.result(), portal)
        if self.activates:
            self._token = active_pool.set(self.pool)
        _opened(self)
        hooks = client_hooks(self.pool.spec, self.pool, self._core.options.worker)
        try:
            hooks.__enter__()
        except BaseException:
            self._close()
            raise
        self._client_hooks = hooks
        return self.pool

    def __exit__(self, *exc_info: Any) -> None:
        hooks, self._client_hooks = self._client_hooks, None
        try:
            if hooks is not None:
                hooks.__exit__(*exc_info)  # what it returns cannot hide the block's error
        finally:
            try:
                self._close()
            except skyward_trio.TeardownError as left:
                if exc_info[1] is None:
                    raise
                # The block's own error goes on, carrying what may still bill.
                exc_info[1].add_note(f"Skyward, closing the pool: {left}")

    def _close(self) -> None:
        assert self._portal is not None
        assert self._job is not None
        assert self._exit is not None
        if self not in _open_pools or self._leaving:
            return  # already closed, or closing (the atexit hook)
        # A SIGTERM from here on waits until the teardown is over (see _sigterm).
        self._leaving = True
        try:
            if self._token is not None:
                with contextlib.suppress(ValueError):  # reset from another context (atexit)
                    active_pool.reset(self._token)
                self._token = None
            self._portal.run_sync_soon(self._exit.set)
            # Teardown is not cut short by Ctrl-C either; it is raised after it.
            interrupted = self._portal._wait_quietly(
                self._job, timeout=self._core.options.shutdown_timeout + 30
            )
        finally:
            _closed(self)
            self._leaving = False
        if not self._job.future.done():
            raise skyward_trio.TeardownError(
                "the pool did not finish tearing down in time; instances may still be running",
                provider="unknown",
                instance_ids=(),
            )
        error = self._job.future.exception()
        if error is not None and not isinstance(error, concurrent.futures.CancelledError):
            raise error
        if interrupted is not None:
            raise interrupted
        if not any(c._leaving for c in _open_pools) and _sigterm_deferred():
            raise SystemExit(128 + signal.SIGTERM)  # the SIGTERM that waited for teardown


# -- pools left open at exit, and SIGTERM ----------------------------------------------------

_open_pools: list[Compute] = []
_hooks_lock = threading.Lock()
_atexit_registered = False
_previous_sigterm: Any = None


def _opened(compute: Compute) -> None:
    global _atexit_registered, _previous_sigterm
    with _hooks_lock:
        _open_pools.append(compute)
        if not _atexit_registered:
            atexit.register(_close_open_pools)
            _atexit_registered = True
        # SIGTERM's default action kills the process with no teardown: the nodes would
        # keep running (and billing). While a pool is open it raises SystemExit instead,
        # which leaves the `with` block like any exception. Only the default is replaced.
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and len(_open_pools) == 1 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            _previous_sigterm = signal.signal(signal.SIGTERM, _sigterm)


def _closed(compute: Compute) -> None:
    global _previous_sigterm
    with _hooks_lock:
        if compute in _open_pools:
            _open_pools.remove(compute)
        restore = not _open_pools and _previous_sigterm is not None
        if restore and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _previous_sigterm)
            _previous_sigterm = None


_deferred: list[int] = []  # a SIGTERM that came while a pool was tearing down


def _sigterm(signum: int, frame: Any) -> None:
    if any(c._leaving for c in _open_pools):
        # Exiting now would abandon the teardown (and leave instances running): finish
        # it first; Compute.__exit__ raises SystemExit once it is done.
        _deferred.append(signum)
        return
    raise SystemExit(128 + signum)


def _sigterm_deferred() -> bool:
    if _deferred:
        _deferred.clear()
        return True
    return False


def _close_open_pools() -> None:
    """At interpreter exit, tear down pools whose `with` block never ended."""
    for compute in list(reversed(_open_pools)):
        try:
            compute.__exit__(None, None, None)
        except skyward_trio.TeardownError as exc:
            print(f"skyward: {exc}", file=sys.stderr)
