"""``sky.Session``: pools opened and closed at any point, every one closed when it ends.

    with sky.Session() as session:
        cpus = session.compute(provider=sky.Local(), nodes=4)
        gpus = session.compute(name="train")
        ...
        session.close(cpus)           # its machines terminated now
        ...                           # gpus is closed when the block ends

Each pool is a ``sky.Compute`` the session entered and leaves: the same checks, the same
teardown on Ctrl-C, SIGTERM and interpreter exit.
"""

from __future__ import annotations

from typing import Any

from skyward_trio import Options, Spec
from skyward_trio._session import not_held

from ._sync import Compute, Pool

__all__ = ["Session"]


class Session:
    """Pools opened with ``session.compute(...)`` and closed with ``session.close(pool)``,
    or when the ``with`` block ends, whichever comes first.

    Leaving the block closes every pool still open, the last opened first, and raises what
    a teardown raised (several: in an ``ExceptionGroup``); when the block itself raised,
    that error goes on with what the teardowns raised as its notes. A pool's failure to
    come up raises from ``compute()`` and leaves the session and its other pools as they
    were.
    """

    def __init__(self) -> None:
        self._open = False
        self._held: dict[Pool, Compute] = {}

    @property
    def pools(self) -> tuple[Pool, ...]:
        """The pools open now, in the order they were opened."""
        return tuple(self._held)

    def __enter__(self) -> Session:
        if self._open:
            raise RuntimeError("this Session is already open; create another for a second one")
        self._open = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._open = False
        held, self._held = list(self._held.values()), {}
        errors: list[Exception] = []
        for compute in reversed(held):
            try:
                compute.__exit__(None, None, None)
            except Exception as exc:
                errors.append(exc)
        if exc_info[1] is not None:  # the block's own error goes on, carrying the teardowns'
            for error in errors:
                exc_info[1].add_note(f"Skyward, closing a pool of the session: {error}")
        elif errors:
            if len(errors) == 1:
                raise errors[0]
            raise ExceptionGroup("pools of the session failed to close", errors)

    def compute(
        self, *specs: Spec, name: str | None = None, options: Options | None = None, **kwargs: Any
    ) -> Pool:
        """Open a pool, as ``sky.Compute(...)`` takes its arguments; it stays open until
        ``close(pool)`` or the end of the session.

        Raises:
            RuntimeError: The session is not open.
            What ``sky.Compute`` raises: bad arguments (before anything is provisioned),
                or the pool failing to come up (what started is terminated first).
        """
        if not self._open:
            raise RuntimeError("open the session first: `with sky.Session() as session:`")
        compute = Compute(*specs, name=name, options=options, **kwargs)
        compute.activates = False  # pools close in any order: `>> pool`, not `>> sky`
        pool = compute.__enter__()
        self._held[pool] = compute
        return pool

    def close(self, pool: Pool) -> None:
        """Close ``pool`` now: its calls are cancelled and its machines terminated.

        Raises:
            ValueError: ``pool`` is not open in this session.
            TeardownError: Some of its instances could not be confirmed terminated.
        """
        compute = self._held.pop(pool, None)
        if compute is None:
            raise not_held(len(self._held))
        compute.__exit__(None, None, None)
