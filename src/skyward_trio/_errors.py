"""Skyward's exception hierarchy.

Every error Skyward raises on purpose is one of these (or a plain ``TypeError`` /
``ValueError`` for bad arguments, raised before anything is provisioned)::

    SkywardError
    ├── ConfigError             skyward.toml is wrong or lacks the pool (lists every problem)
    ├── ProvisionError          a node could not be brought up (names node and phase)
    ├── NoOfferError            no spec can be met by its provider's offers (also a ValueError)
    ├── VersionMismatchError    worker and client run different Python / Skyward versions
    ├── ConnectionLostError     the link to a node's worker broke while a task was on it
    ├── SerializationError      an argument or result could not be pickled (also a TypeError)
    ├── RemoteError             the remote function raised an exception that does not unpickle here
    ├── TaskTimeoutError        a task ran past its timeout (also a TimeoutError)
    ├── ChildDied               (in ``_procpool``) a process-executor subprocess died
    ├── NoActivePoolError       ``>> sky`` with no pool active (also a RuntimeError)
    ├── PoolClosedError         the pool closed, or lost every node, before a call finished
    └── TeardownError           instances that could not be confirmed terminated (lists them)

Exceptions raised by *your* function re-raise in the caller with their original type when
they unpickle here, with the remote traceback and the node index attached as notes.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "ConnectionLostError",
    "NoActivePoolError",
    "NoOfferError",
    "PoolClosedError",
    "ProvisionError",
    "RemoteError",
    "SerializationError",
    "ServerError",
    "SkywardError",
    "TaskTimeoutError",
    "TeardownError",
    "VersionMismatchError",
    "VersionMismatchWarning",
]


class SkywardError(Exception):
    """Base class of the errors Skyward raises on purpose."""


class ConfigError(SkywardError):
    """A configuration file is wrong, or names no such pool.

    Every problem found is listed at once, so that one edit can fix them all.

    Attributes:
        problems: One line per problem: ``<file>: <key path>: <what is wrong>``.
    """

    def __init__(self, problems: tuple[str, ...]) -> None:
        if len(problems) == 1:
            message = problems[0]
        else:
            listed = "\n".join(f"  {problem}" for problem in problems)
            message = f"{len(problems)} problems in the Skyward configuration:\n{listed}"
        super().__init__(message)
        self.problems = problems

    def __reduce__(self) -> tuple[object, ...]:
        return (ConfigError, (self.problems,))


class ProvisionError(SkywardError):
    """A node could not be brought up.

    Attributes:
        node: The node index.
        phase: What was being done: ``"provision"``, ``"ssh"``, ``"bootstrap"`` or ``"worker"``.
        attempts: With several specs that all failed, each one's error in the order tried
            (``node`` and ``phase`` are the last one's); else empty.
    """

    def __init__(
        self,
        message: str,
        *,
        node: int,
        phase: str,
        attempts: tuple[ProvisionError, ...] = (),
    ) -> None:
        super().__init__(message)
        self.node = node
        self.phase = phase
        self.attempts = attempts


class NoOfferError(SkywardError, ValueError):
    """No spec can be met by its provider's offers; nothing was provisioned.

    Attributes:
        reasons: Per spec, in order, the constraint it could not meet.
    """

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        if len(self.reasons) == 1:
            message = f"nothing can satisfy {self.reasons[0]}"
        else:
            lines = "\n".join(f"  - {reason}" for reason in self.reasons)
            message = f"none of the {len(self.reasons)} specs can be satisfied:\n{lines}"
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reasons,))


class VersionMismatchError(SkywardError):
    """A node cannot run what the client sends: another Python minor version or Skyward
    version, or a module a function refers to is missing there or has another major
    version."""


class VersionMismatchWarning(UserWarning):
    """A module a function refers to has another minor version on a node: it runs anyway."""


class ConnectionLostError(SkywardError):
    """The connection to a node's worker broke while a task was in flight."""

    def __init__(self, message: str, *, node: int) -> None:
        super().__init__(message)
        self.node = node

    def __reduce__(self) -> tuple[object, ...]:
        # Raised on a node too (a collection whose store went away): it must unpickle in
        # the client with its own type, and ``node`` is keyword-only.
        return (_connection_lost, (str(self), self.node))


def _connection_lost(message: str, node: int) -> ConnectionLostError:
    return ConnectionLostError(message, node=node)


class SerializationError(SkywardError, TypeError):
    """An argument, a function or a result could not be pickled."""


class RemoteError(SkywardError):
    """The remote function raised an exception that could not be re-created here.

    Attributes:
        type_name: Qualified name of the remote exception's type.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: The formatted remote traceback.
        node: Index of the node it ran on.
    """

    def __init__(
        self, *, type_name: str, remote_message: str, remote_traceback: str, node: int
    ) -> None:
        super().__init__(f"{type_name}: {remote_message} (raised on node {node})")
        self.type_name = type_name
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.node = node


class TaskTimeoutError(SkywardError, TimeoutError):
    """A task ran past its timeout; the remote execution was told to stop.

    Attributes:
        task: Name of the task's function.
        node: Index of the node it ran on.
        timeout: The timeout in seconds.
    """

    def __init__(self, *, task: str, node: int, timeout: float) -> None:
        super().__init__(
            f"task {task!r} on node {node} did not finish within {timeout:g} s; "
            "raise it with @sky.function(timeout=...) or .with_timeout(...), "
            "or Options(default_compute_timeout=...)"
        )
        self.task = task
        self.node = node
        self.timeout = timeout


class NoActivePoolError(SkywardError, RuntimeError):
    """An operation needed an active pool and there was none."""


class PoolClosedError(SkywardError):
    """The pool closed (or lost every node) before a call could finish."""


class BudgetExceededError(PoolClosedError):
    """The pool's instances cost ``Options(max_cost=...)``: it stopped, and every instance
    was terminated. Calls in flight and calls made since fail with it.

    Attributes:
        max_cost: The cap, in USD.
        spent: What the pool's instances had cost when it stopped, in USD.
    """

    def __init__(self, max_cost: float, spent: float, instances: int) -> None:
        self.max_cost = max_cost
        self.spent = spent
        self.instances = instances
        super().__init__(
            f"the pool reached Options(max_cost={max_cost:g}): its instances had cost "
            f"${spent:.2f}, so it stopped and its {instances} instance(s) were terminated; "
            "raise max_cost to let a pool run longer"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.max_cost, self.spent, self.instances))


class ServerError(SkywardError):
    """The pool server (``sky server start``) is not running, refused a request, or does
    not hold the pool asked for. The message says which, and what to do."""


class TeardownError(SkywardError):
    """Some instances could not be confirmed terminated. They may still be billing.

    Attributes:
        provider: The provider's name.
        instance_ids: The instances not confirmed terminated.
    """

    def __init__(self, message: str, *, provider: str, instance_ids: tuple[str, ...]) -> None:
        super().__init__(message)
        self.provider = provider
        self.instance_ids = instance_ids
