"""Output control for remote functions: ``stdout``, ``stderr``, ``silent``, ``redirect_output``.

    @sky.stdout(only="head")          # only the head node's prints reach you
    @sky.function
    def train(data): ...

The filters run on the node, inside the task (so they work under both executors), and
decide from ``sky.instance_info()``. Off a pool (called locally) nothing is filtered.

Layer 1: stdlib plus the runtime context.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Literal, TypeVar

from . import _capture, _runtime
from ._function import Function
from ._info import InstanceInfo

__all__ = ["CallbackWriter", "redirect_output", "silent", "stderr", "stdout"]

F = TypeVar("F")
Only = Literal["head"] | Callable[[InstanceInfo], bool]


def _allowed(only: Only | None, info: InstanceInfo | None) -> bool:
    if only is None or info is None:
        return True
    if only == "head":
        return info.is_head
    return bool(only(info))


def _check_only(decorator: str, only: object) -> None:
    if only != "head" and not callable(only):
        raise ValueError(
            f'sky.{decorator}(only=...) takes "head" or a predicate '
            f"Callable[[InstanceInfo], bool], got {only!r}"
        )


def _current_info() -> InstanceInfo | None:
    try:
        return _runtime.instance_info()
    except RuntimeError:
        return None


def _filtered(fn: Callable[..., Any], out: Only | None, err: Only | None, *, mute: bool) -> Any:
    def decide() -> tuple[bool, bool]:
        if mute:
            return True, True
        info = _current_info()
        return not _allowed(out, info), not _allowed(err, info)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            hide_out, hide_err = decide()
            with _capture.suppress(stdout=hide_out, stderr=hide_err):
                return (yield from fn(*args, **kwargs))

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hide_out, hide_err = decide()
        with _capture.suppress(stdout=hide_out, stderr=hide_err):
            return fn(*args, **kwargs)

    return wrapper


def _apply(target: Any, out: Only | None, err: Only | None, *, mute: bool, name: str) -> Any:
    if isinstance(target, Function):
        return Function(_filtered(target.fn, out, err, mute=mute), target.timeout)
    if callable(target):
        return _filtered(target, out, err, mute=mute)
    raise TypeError(f"sky.{name} decorates a function, got {type(target).__qualname__}")


def stdout(*, only: Only) -> Callable[[F], F]:
    """Keep a remote function's stdout only where ``only`` holds (``"head"`` or a predicate).

    A decorator factory: ``@sky.stdout(only="head")`` above or below ``@sky.function``.
    """
    _check_only("stdout", only)
    return lambda target: _apply(target, only, None, mute=False, name="stdout")


def stderr(*, only: Only) -> Callable[[F], F]:
    """Keep a remote function's stderr only where ``only`` holds (``"head"`` or a predicate)."""
    _check_only("stderr", only)
    return lambda target: _apply(target, None, only, mute=False, name="stderr")


def silent(target: F | None = None) -> F:
    """Silence a remote function's stdout and stderr (a bare decorator: ``@sky.silent``)."""
    if target is None:
        raise TypeError("@sky.silent is a bare decorator: write @sky.silent, not @sky.silent()")
    return _apply(target, None, None, mute=True, name="silent")  # type: ignore[no-any-return]


class CallbackWriter(io.TextIOBase):
    """A text stream that hands each complete line (without its newline) to a callback.

    A trailing partial line is handed over by ``flush()`` and when the
    ``redirect_output`` block ends.
    """

    def __init__(self, callback: Callable[[str], Any]) -> None:
        # Set before the check: a refused writer is still closed (flushed) when collected.
        self._partial = ""
        self._callback = callback
        _check_callback("sky.CallbackWriter", callback)

    def write(self, text: str) -> int:
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            self._callback(line)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            partial, self._partial = self._partial, ""
            self._callback(partial)

    def writable(self) -> bool:
        return True


def _check_callback(where: str, callback: object) -> None:
    # Unchecked, a callback that cannot be called fails at the first print in the block,
    # as Python's bare "'int' object is not callable" from inside print().
    if callable(callback):
        return
    if hasattr(callback, "write"):  # a file or stream: it takes text, not lines
        fix = (
            f"For a file or stream, pass a function that writes each line, e.g. "
            f'{where}(lambda line: f.write(line + "\\n"))'
        )
    else:
        fix = f"Pass e.g. {where}(lines.append)"
    raise TypeError(
        f"{where}(callback={callback!r}): callback must be a function called with each line "
        f"(a str, without its newline), got {type(callback).__qualname__}. {fix}."
    )


def redirect_output(
    callback: Callable[[str], Any],
) -> AbstractContextManager[tuple[CallbackWriter, CallbackWriter]]:
    """Route this thread's stdout and stderr to ``callback``, a line at a time.

    Yields the ``(stdout, stderr)`` writers. On a worker it routes only the calling task's
    output (other tasks running at the same time are not affected).

    Raises:
        TypeError: ``callback`` is not callable (refused here, not at the first print).
    """
    _check_callback("sky.redirect_output", callback)
    return _redirected(callback)


@contextlib.contextmanager
def _redirected(
    callback: Callable[[str], Any],
) -> Iterator[tuple[CallbackWriter, CallbackWriter]]:
    out, err = CallbackWriter(callback), CallbackWriter(callback)
    if _capture.installed():

        def send(stream: str, text: str) -> None:
            (out if stream == "stdout" else err).write(text)

        with _capture.route(send):
            try:
                yield out, err
            finally:
                out.flush()
                err.flush()
        return
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            yield out, err
        finally:
            out.flush()
            err.flush()
    sys.stdout.flush()
