"""Per-thread routing of ``sys.stdout`` / ``sys.stderr``.

A worker runs several tasks at once in threads of one process, so output cannot be
captured by swapping ``sys.stdout`` per task. Instead ``install()`` puts a routing stream
in place once; each write goes to the route of the thread that makes it (the task's
output channel), through its filters (``sky.stdout(only=...)``, ``sky.silent``), or to
the original stream when the thread has no route.

Threads that a task starts itself do not inherit its route (their writes go to the
original stream, the node's log); output written straight to file descriptors 1 and 2
by C code is not seen here either — ``executor="process"`` captures both.

Layer 1: stdlib only.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["Route", "install", "route", "suppress"]

#: Receives ``(stream name, text)``; stream name is "stdout" or "stderr".
Route = Callable[[str, str], None]

_local = threading.local()


class _RoutingStream(io.TextIOBase):
    def __init__(self, original: TextIO, name: str) -> None:
        self._original = original
        self._name = name

    def write(self, text: str) -> int:
        if getattr(_local, "suppress_" + self._name, False):
            return len(text)
        target: Route | None = getattr(_local, "route", None)
        if target is None:
            return self._original.write(text)
        target(self._name, text)
        return len(text)

    def flush(self) -> None:
        if getattr(_local, "route", None) is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8") or "utf-8"

    def fileno(self) -> int:
        return self._original.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def install() -> None:
    """Put routing streams in place of ``sys.stdout`` and ``sys.stderr`` (idempotent)."""
    if not isinstance(sys.stdout, _RoutingStream):
        sys.stdout = _RoutingStream(sys.stdout, "stdout")
    if not isinstance(sys.stderr, _RoutingStream):
        sys.stderr = _RoutingStream(sys.stderr, "stderr")


def installed() -> bool:
    return isinstance(sys.stdout, _RoutingStream)


@contextlib.contextmanager
def route(target: Route | None) -> Iterator[None]:
    """Send this thread's stdout/stderr writes to ``target`` for the block."""
    previous = getattr(_local, "route", None)
    _local.route = target
    try:
        yield
    finally:
        _local.route = previous


@contextlib.contextmanager
def suppress(*, stdout: bool = False, stderr: bool = False) -> Iterator[None]:
    """Drop this thread's stdout and/or stderr writes for the block."""
    previous = (
        getattr(_local, "suppress_stdout", False),
        getattr(_local, "suppress_stderr", False),
    )
    _local.suppress_stdout = previous[0] or stdout
    _local.suppress_stderr = previous[1] or stderr
    try:
        yield
    finally:
        _local.suppress_stdout, _local.suppress_stderr = previous
