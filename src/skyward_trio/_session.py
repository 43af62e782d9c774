"""``Session``: pools opened and closed at any point, every one closed when it ends.

    async with skyward_trio.Session() as session:
        cpus = await session.compute(provider=skyward_trio.Local(), nodes=4)
        gpus = await session.compute(name="train")
        ...
        await session.close(cpus)        # its machines terminated now
        ...                              # gpus is closed when the block ends

``Compute`` ties a pool to one ``async with`` block; a session ties pools to its own, so a
program opens the next pool when it knows it needs it and closes one as soon as it is
done with it, without nesting blocks. Each pool is held by a task of the session's
nursery, which enters and leaves its ``Compute`` (trio asks that both happen in one task).
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from ._compute import Compute
from ._model import Options, Spec
from ._pool import Pool

__all__ = ["Session", "not_held"]


def not_held(open_now: int) -> ValueError:
    return ValueError(
        f"close() takes a pool this session opened and has not closed yet; it has {open_now} open"
    )


@attrs.define(eq=False)
class _Holding:
    compute: Compute
    closing: trio.Event = attrs.Factory(trio.Event)
    closed: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None  # raised by its teardown

    async def hold(self, *, task_status: trio.TaskStatus[Pool]) -> None:
        started = False
        try:
            async with self.compute as pool:
                started = True
                task_status.started(pool)
                await self.closing.wait()
        except Exception as exc:
            if not started:
                raise  # to session.compute(), which opened it
            self.error = exc  # to session.close(), or the session's end
        finally:
            self.closed.set()


class Session:
    """Pools opened with ``await session.compute(...)`` and closed with ``await
    session.close(pool)``, or when the ``async with`` block ends, whichever comes first.

    Leaving the block closes every pool still open, at once, and raises what a teardown
    raised (several: in an ``ExceptionGroup``); when the block itself raised, that error
    goes on with what the teardowns raised as its notes. A pool's
    failure to come up raises from ``compute()`` and leaves the session and its other
    pools as they were.
    """

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._held: dict[Pool, _Holding] = {}

    @property
    def pools(self) -> tuple[Pool, ...]:
        """The pools open now, in the order they were opened."""
        return tuple(self._held)

    async def __aenter__(self) -> Session:
        if self._nursery_cm is not None:
            raise RuntimeError("this Session is already open; create another for a second one")
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        held, self._held = list(self._held.values()), {}
        for holding in held:
            holding.closing.set()  # their teardowns run at once, each in its own task
        cm, self._nursery_cm, self._nursery = self._nursery_cm, None, None
        # Not given the block's error: that one propagates as itself, ungrouped.
        await cm.__aexit__(None, None, None)
        errors = [h.error for h in held if h.error is not None]
        if exc_info[1] is not None:  # the block's own error goes on, carrying the teardowns'
            for error in errors:
                exc_info[1].add_note(f"Skyward, closing a pool of the session: {error}")
        elif errors:
            if len(errors) == 1:
                raise errors[0]
            raise BaseExceptionGroup("pools of the session failed to close", errors)

    async def compute(
        self, *specs: Spec, name: str | None = None, options: Options | None = None, **kwargs: Any
    ) -> Pool:
        """Open a pool, as ``Compute(...)`` takes its arguments; it stays open until
        ``close(pool)`` or the end of the session.

        Raises:
            RuntimeError: The session is not open.
            What ``Compute`` raises: bad arguments (before anything is provisioned), or
                the pool failing to come up (what started is terminated first).
        """
        if self._nursery is None:
            raise RuntimeError(
                "open the session first: `async with skyward_trio.Session() as session:`"
            )
        holding = _Holding(Compute(*specs, name=name, options=options, **kwargs))
        pool: Pool = await self._nursery.start(holding.hold)
        self._held[pool] = holding
        return pool

    async def close(self, pool: Pool) -> None:
        """Close ``pool`` now: its calls are cancelled and its machines terminated.

        Raises:
            ValueError: ``pool`` is not open in this session.
            TeardownError: Some of its instances could not be confirmed terminated.
        """
        holding = self._held.pop(pool, None)
        if holding is None:
            raise not_held(len(self._held))
        holding.closing.set()
        with trio.CancelScope(shield=True):  # a teardown is not cut short
            await holding.closed.wait()
        if holding.error is not None:
            raise holding.error
