"""Plugins on a node: their hooks shipped to the worker, and run there.

The client packs the hooks that run on nodes (``decorate``, ``around_app``,
``around_process``) with cloudpickle into the worker's config; the worker and its
process-executor subprocesses unpack them with :meth:`NodePlugins.unpack`.

- ``around_app`` is entered in a thread of the worker's own as the worker starts, so a
  hook that waits (a rendezvous with the other nodes) does not hold the worker's start-up
  back; tasks wait until it has been entered, and fail with its error if it raised. The
  same thread exits it when the worker stops.
- ``around_process`` is entered in each subprocess before its first task.
- ``decorate`` wraps each function once, when it is unpickled on the node; the first
  plugin's wrapper is the outermost. Skyward's own environment check is left unwrapped.

Layer 3: stdlib, cloudpickle and ``_envcheck`` only; imported on nodes.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from ._envcheck import module_versions

__all__ = ["NodePlugins", "pack"]

#: (name, decorate, around_app, around_process) of one plugin.
_Hooks = tuple[str, Any, Any, Any]


def pack(plugins: Sequence[Any]) -> str | None:
    """The node hooks of ``plugins`` as text for the worker's config, or None for none.

    Raises:
        TypeError: A hook that cannot be pickled, naming its plugin.
    """
    hooks: list[_Hooks] = [
        (p.name, p.decorate, p.around_app, p.around_process)
        for p in plugins
        if p.decorate or p.around_app or p.around_process
    ]
    if not hooks:
        return None
    for hook in hooks:
        try:
            cloudpickle.dumps(hook)
        except Exception as exc:
            raise TypeError(
                f"plugin {hook[0]!r}: its node hooks (decorate, around_app, around_process) "
                f"cannot be pickled to send to the nodes ({type(exc).__name__}: {exc}); "
                "refer only to picklable values in them (no open files, locks or clients)"
            ) from exc
    return base64.b64encode(cloudpickle.dumps(hooks)).decode()


class NodePlugins:
    """The plugins' hooks on one node (in the worker, or in one of its subprocesses)."""

    def __init__(self, hooks: Sequence[_Hooks]) -> None:
        self._hooks = list(hooks)
        self._entered = threading.Event()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._failed = ""  # which plugin, and where it was being set up
        self._thread: threading.Thread | None = None

    @classmethod
    def unpack(cls, text: str | None) -> NodePlugins | None:
        """The hooks :func:`pack` wrote, or None where there were none."""
        if not text:
            return None
        return cls(cloudpickle.loads(base64.b64decode(text)))

    # --- around_app -------------------------------------------------------------------------

    def start_app(self, info: Any) -> None:
        """Enter each ``around_app`` in a thread of its own (see the module)."""
        apps = [(name, app) for name, _, app, _ in self._hooks if app is not None]
        if not apps:
            self._entered.set()
            return
        self._thread = threading.Thread(
            target=self._hold_app, args=(apps, info), name="skyward-plugins", daemon=True
        )
        self._thread.start()

    def _hold_app(self, apps: list[tuple[str, Any]], info: Any) -> None:
        with contextlib.ExitStack() as stack:
            self._enter(stack, apps, info, "this worker (around_app)")
            self._stop.wait()
            try:
                stack.close()
            except BaseException:
                print("a plugin's around_app failed as the worker stopped:", file=sys.stderr)
                traceback.print_exc()

    def wait_app(self) -> None:
        """Block until every ``around_app`` is entered.

        Raises:
            RuntimeError: One of them raised (chained): the plugin and the hook, named.
        """
        self._entered.wait()
        self._raise_failure()

    def stop_app(self, timeout: float = 10) -> None:
        """Exit the ``around_app`` hooks (in their thread); wait up to ``timeout`` s."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- around_process ---------------------------------------------------------------------

    def enter_process(self, stack: contextlib.ExitStack, info: Any) -> None:
        """Enter each ``around_process`` on ``stack``; one that raises makes every task of
        this subprocess fail with its error (see :meth:`wait_process`)."""
        arounds = [(name, around) for name, _, _, around in self._hooks if around is not None]
        self._enter(stack, arounds, info, "this subprocess (around_process)")

    def wait_process(self) -> None:
        """Raise what an ``around_process`` raised, if one did."""
        self._raise_failure()

    # --- entering, for both -----------------------------------------------------------------

    def _enter(
        self, stack: contextlib.ExitStack, hooks: list[tuple[str, Any]], info: Any, where: str
    ) -> None:
        """Enter each hook on ``stack`` until one raises; then tasks raise its error."""
        for name, hook in hooks:
            try:
                stack.enter_context(hook(info))
            except BaseException as exc:
                self._failure, self._failed = exc, f"plugin {name!r} failed to set up {where}"
                break
        self._entered.set()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError(
                f"{self._failed}: {type(self._failure).__name__}: {self._failure}"
            ) from self._failure

    # --- decorate ---------------------------------------------------------------------------

    def wrap(self, fn: Any, *, gate: Callable[[], None]) -> Any:
        """``fn`` inside every plugin's ``decorate`` (the first outermost), called only
        once ``gate`` returns (it raises what set-up raised)."""
        if fn is module_versions:
            return fn
        wrapped = fn
        for _, decorate, _, _ in reversed(self._hooks):
            if decorate is not None:
                wrapped = decorate(wrapped)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            gate()
            return wrapped(*args, **kwargs)

        return call
