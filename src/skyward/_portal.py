"""The bridge from the caller's thread to the trio loop that runs the core.

One daemon thread runs ``trio.run`` with a trio-asyncio loop open (asyncssh needs it) and
a nursery that jobs are started in, inside the portal task's context, so they inherit the
trio-asyncio loop; ``trio.from_thread.run`` would run them in a system context that has
no asyncio loop, and asyncssh would fail.

The caller's thread only blocks on ``concurrent.futures.Future``s, so this works where
the main thread already runs an asyncio loop (Jupyter): that loop is never touched.
Ctrl-C in the caller's thread cancels the job's trio scope (the remote task is told to
stop), waits for the cancellation to land, then lets ``KeyboardInterrupt`` propagate.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from skyward_trio._aio import trio_asyncio

__all__ = ["Job", "Portal", "get_portal"]

# How long Ctrl-C waits for a cancelled job to unwind before giving up on it.
_CANCEL_GRACE = 30.0


class Job:
    """One coroutine running on the portal's loop, with a future for its outcome."""

    def __init__(self, fn: Callable[[], Awaitable[Any]]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        with self.scope:
            try:
                value = await self.fn()
            except Exception as exc:
                self.future.set_exception(exc)
                return
            except BaseException as exc:
                if isinstance(exc, trio.Cancelled):
                    self.future.set_exception(concurrent.futures.CancelledError())
                else:
                    self.future.set_exception(exc)
                raise
            self.future.set_result(value)
        if self.scope.cancelled_caught and not self.future.done():
            self.future.set_exception(concurrent.futures.CancelledError())


class Portal:
    """A trio loop on a daemon thread, and the way in from other threads."""

    def __init__(self) -> None:
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._context: contextvars.Context | None = None
        self._thread = threading.Thread(target=self._main, name="skyward-trio", daemon=True)
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        trio.run(self._serve)

    async def _serve(self) -> None:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            self._nursery = nursery
            # Jobs are started from run_sync_soon callbacks, which run in trio's system
            # context; running the spawn inside this task's context makes the jobs
            # inherit the trio-asyncio loop (one task hop less than a relay task).
            self._context = contextvars.copy_context()
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await trio.sleep_forever()

    def _spawn(self, job: Job) -> None:
        assert self._nursery is not None
        assert self._context is not None
        self._context.run(self._nursery.start_soon, job.run)

    def spawn(self, fn: Callable[[], Awaitable[Any]]) -> Job:
        """Start ``fn()`` as a job; call this on the loop's own thread."""
        job = Job(fn)
        self._spawn(job)
        return job

    def submit(self, fn: Callable[[], Awaitable[Any]]) -> Job:
        """Start ``fn()`` on the loop; returns at once."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "the sync skyward API was called from inside its own trio loop; "
                "use skyward_trio from async code"
            )
        job = Job(fn)
        assert self._token is not None
        self._token.run_sync_soon(self._spawn, job)
        return job

    def cancel(self, job: Job) -> None:
        assert self._token is not None
        self._token.run_sync_soon(job.scope.cancel)

    def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn()`` on the loop and wait for it; Ctrl-C cancels it, then re-raises."""
        return self.wait(self.submit(fn))

    def wait(self, job: Job) -> Any:
        try:
            return job.future.result()
        except BaseException:  # Ctrl-C, or SystemExit from SIGTERM: stop the job first
            if not job.future.done():
                self.cancel(job)
                self._wait_quietly(job)
            raise

    def run_sync_soon(self, fn: Callable[[], Any]) -> None:
        assert self._token is not None
        self._token.run_sync_soon(fn)

    @staticmethod
    def _wait_quietly(
        job: Job, timeout: float = _CANCEL_GRACE
    ) -> KeyboardInterrupt | SystemExit | None:
        """Wait for a cancelled job to unwind; further Ctrl-Cs do not cut it short."""
        return Portal.wait_quietly(job.future, timeout)

    @staticmethod
    def wait_quietly(
        future: concurrent.futures.Future[Any], timeout: float
    ) -> KeyboardInterrupt | SystemExit | None:
        """Wait for ``future`` up to ``timeout`` s; Ctrl-C and SIGTERM do not cut it short.

        Returns the first such interruption, for the caller to raise once done.
        """
        interrupted: KeyboardInterrupt | SystemExit | None = None
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            try:
                concurrent.futures.wait([future], timeout=0.5)
            except (KeyboardInterrupt, SystemExit) as exc:
                interrupted = interrupted or exc
        return interrupted


_lock = threading.Lock()
_portal: Portal | None = None


def get_portal() -> Portal:
    """The process's portal, started on first use."""
    global _portal
    with _lock:
        if _portal is None or not _portal._thread.is_alive():
            _portal = Portal()
        return _portal
