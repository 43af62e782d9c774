"""What a plugin is: a name and seven optional hooks, and what its hooks are shown.

A plugin composes what a framework needs from a pool: packages in the image, shell steps
at bootstrap, the command that starts each node's worker, a wrapper around each task,
set-up once per worker or per executor subprocess, and something held on the client while
the pool is open. Its hooks run in three places: on the client (``transform``,
``bootstrap``, ``launcher``, ``around_client``), in each node's worker (``decorate``,
``around_app``) and in each process-executor subprocess (``around_process``). The node's
hooks travel pickled (cloudpickle), so they may be closures, but whatever they refer to
must be importable on the node.

Layer 1: stdlib and attrs only; imported on nodes (the built-in plugins' hooks are).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._info import InstanceInfo
    from ._model import Image, Nodes, ProviderConfig, Spec, Worker
    from .accelerators import Accelerator

__all__ = [
    "HOOKS",
    "Cluster",
    "LaunchCommand",
    "LaunchContext",
    "Plugin",
    "bootstrap_ops",
    "client_hooks",
    "collective",
    "launch_command",
    "transformed",
    "workers_per_node",
]


def _default_worker() -> Worker:
    from ._model import Worker

    return Worker()


@attrs.frozen(kw_only=True)
class Cluster:
    """The pool a plugin's hooks are shaping, as its spec describes it.

    Attributes:
        spec: The pool's spec. Image transforms see it as it was given; the other hooks
            see it with the image the transforms made.
        worker: How each node's worker runs tasks (``Options(worker=...)``: its
            concurrency and executor).
    """

    spec: Spec
    worker: Worker = attrs.field(factory=_default_worker)

    @property
    def nodes(self) -> Nodes:
        """How many nodes the pool asks for."""
        return self.spec.nodes

    @property
    def accelerator(self) -> Accelerator | None:
        """The accelerator each node has, or None."""
        return self.spec.accelerator

    @property
    def workers_per_node(self) -> int:
        """How many workers (ranks) each node runs: see :func:`workers_per_node`."""
        return workers_per_node(self.spec.plugins, self.worker)

    @property
    def provider(self) -> ProviderConfig:
        """Where the nodes come from."""
        return self.spec.provider


#: Each hook field, and the builder that sets it.
HOOKS = {
    "transform": "with_image_transform",
    "bootstrap": "with_bootstrap",
    "decorate": "with_decorator",
    "around_app": "with_around_app",
    "around_process": "with_around_process",
    "around_client": "with_around_client",
    "launcher": "with_launcher",
}


def _hook(instance: Plugin, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(
            f"Plugin {instance.name!r}: {HOOKS[attribute.name]}(...) takes a function, got "
            f"{type(value).__qualname__}"
        )


@attrs.frozen
class Plugin:
    """A plugin: a name and the hooks it sets (each optional).

    Build one with ``Plugin.create(name)`` and the ``with_*`` builders; each builder
    returns a new plugin, and setting a hook twice keeps the last.

    Attributes:
        name: What the plugin is called in errors and logs.
        transform: ``(Image, Cluster) -> Image``, on the client before anything starts:
            the image the pool's nodes get. Plugins transform in the order given.
        bootstrap: ``Cluster -> Sequence[str]``, on the client: shell commands each node
            runs after its environment is built and before its worker starts (phase
            ``plugins``), in the worker's directory.
        decorate: ``fn -> fn``, on each node: wraps every function the pool runs there.
            The first plugin's wrapper is the outermost.
        around_app: ``InstanceInfo -> context manager``, on each node: entered once per
            worker, before its first task runs, and exited when the worker stops.
        around_process: ``InstanceInfo -> context manager``, on each node: entered once
            in each subprocess of ``Worker(executor="process")``, before its first task.
        around_client: ``(pool, Cluster) -> context manager``, on the client: entered
            once the pool is ready, exited before it is torn down. ``pool`` is the pool
            the ``with`` (or ``async with``) block gets.
        launcher: ``(LaunchCommand, LaunchContext) -> LaunchCommand``, on the client as
            each node's worker is started: the command that starts it, wrapped (a
            profiler, ``numactl``, ``nice``) or with variables added. The command it is
            given must stay in the one it returns, unbroken. The first plugin's wrapper is
            the outermost.
        collective: The nodes join one group whose size is fixed when they join (a
            ``torch.distributed`` or ``jax.distributed`` world): such a pool cannot grow
            or shrink, so elastic ``nodes=`` and ``pool.resize`` are refused.
        per_process: Under ``Worker(executor="process", concurrency=N)`` each of a node's
            N subprocesses is a worker of its own (a rank), not a slot tasks share:
            ``InstanceInfo.worker`` is its slot and ``workers_per_node`` is N, and a
            broadcast (``@``) runs on all N of every node at once. See
            :func:`workers_per_node`.
    """

    name: str = attrs.field()
    transform: Callable[[Image, Cluster], Image] | None = attrs.field(
        default=None, validator=_hook, kw_only=True
    )
    bootstrap: Callable[[Cluster], Sequence[str]] | None = attrs.field(
        default=None, validator=_hook, kw_only=True
    )
    decorate: Callable[[Callable[..., Any]], Callable[..., Any]] | None = attrs.field(
        default=None, validator=_hook, kw_only=True
    )
    around_app: Callable[[InstanceInfo], AbstractContextManager[Any]] | None = attrs.field(
        default=None, validator=_hook, kw_only=True
    )
    around_process: Callable[[InstanceInfo], AbstractContextManager[Any]] | None = attrs.field(
        default=None, validator=_hook, kw_only=True
    )
    around_client: Callable[[Any, Cluster], AbstractContextManager[Any]] | None = attrs.field(
        default=None, validator=_hook, kw_only=True
    )
    launcher: Callable[[LaunchCommand, LaunchContext], LaunchCommand] | None = attrs.field(
        default=None, validator=_hook, kw_only=True
    )
    collective: bool = attrs.field(default=False, kw_only=True)
    per_process: bool = attrs.field(default=False, kw_only=True)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"Plugin.create({value!r}): a plugin needs a name, a non-empty string. "
                'Pass e.g. Plugin.create("my-plugin").'
            )

    @classmethod
    def create(cls, name: str, *, collective: bool = False, per_process: bool = False) -> Plugin:
        """A plugin called ``name`` with no hooks yet (see ``collective`` and
        ``per_process`` above)."""
        if not isinstance(collective, bool):
            raise TypeError(f"Plugin.create({name!r}, collective={collective!r}): True or False")
        if not isinstance(per_process, bool):
            raise TypeError(f"Plugin.create({name!r}, per_process={per_process!r}): True or False")
        return cls(name, collective=collective, per_process=per_process)

    def with_image_transform(self, fn: Callable[[Image, Cluster], Image]) -> Plugin:
        """Set ``transform``: ``(Image, Cluster) -> Image``."""
        return attrs.evolve(self, transform=fn)

    def with_bootstrap(self, fn: Callable[[Cluster], Sequence[str]]) -> Plugin:
        """Set ``bootstrap``: ``Cluster -> Sequence[str]`` of shell commands."""
        return attrs.evolve(self, bootstrap=fn)

    def with_decorator(self, fn: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Plugin:
        """Set ``decorate``: ``fn -> fn``, around every function run on a node."""
        return attrs.evolve(self, decorate=fn)

    def with_around_app(self, fn: Callable[[InstanceInfo], AbstractContextManager[Any]]) -> Plugin:
        """Set ``around_app``: ``InstanceInfo -> context manager``, once per worker."""
        return attrs.evolve(self, around_app=fn)

    def with_around_process(
        self, fn: Callable[[InstanceInfo], AbstractContextManager[Any]]
    ) -> Plugin:
        """Set ``around_process``: ``InstanceInfo -> context manager``, once per subprocess."""
        return attrs.evolve(self, around_process=fn)

    def with_around_client(
        self, fn: Callable[[Any, Cluster], AbstractContextManager[Any]]
    ) -> Plugin:
        """Set ``around_client``: ``(pool, Cluster) -> context manager``, on the client."""
        return attrs.evolve(self, around_client=fn)

    def with_launcher(self, fn: Callable[[LaunchCommand, LaunchContext], LaunchCommand]) -> Plugin:
        """Set ``launcher``: ``(LaunchCommand, LaunchContext) -> LaunchCommand``."""
        return attrs.evolve(self, launcher=fn)


# --- the worker's launch command ------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _argv(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(
            f"LaunchCommand(argv={value!r}): argv must be a list or tuple of strings, the "
            'command word by word, e.g. ("nice", "-n", "10", *command.argv)'
        )
    argv = tuple(value)
    bad = [word for word in argv if not isinstance(word, str) or not word or "\0" in word]
    if not argv or bad:
        raise ValueError(
            f"LaunchCommand(argv={value!r}): argv must be a non-empty list of non-empty "
            f"strings{f'; not {bad[0]!r}' if bad else ''}"
        )
    return argv


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"LaunchCommand(env={value!r}): env must be a mapping of variable names to "
            'strings, e.g. {"NCCL_DEBUG": "INFO"}'
        )
    env = dict(value)
    for key, item in env.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise ValueError(
                f"LaunchCommand(env=...): {key!r} is not a variable name (letters, digits "
                "and _, not starting with a digit)"
            )
        if not isinstance(item, str) or "\0" in item:
            raise TypeError(
                f"LaunchCommand(env=...): {key}={item!r}: values must be strings; pass "
                f"{key}={str(item)!r}"
            )
    return env


@attrs.frozen
class LaunchCommand:
    """The command that starts a node's worker, and variables it is started with.

    A launcher returns a new one, e.g. ``attrs.evolve(command, argv=("nice", "-n", "10",
    *command.argv))``. ``argv[0]`` of the command Skyward gives is ``python``: the
    bootstrap puts the worker's own interpreter (the image's environment) in its place.

    Attributes:
        argv: The command, word by word (no shell: each word is passed as it is).
        env: Variables the worker's process gets, on top of the node's environment and
            the image's ``env``.
    """

    argv: tuple[str, ...] = attrs.field(converter=_argv)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_env)


@attrs.frozen(kw_only=True)
class LaunchContext:
    """Where a launcher's command will run.

    Attributes:
        info: The node's place in the pool, as ``sky.instance_info()`` will say on it
            (its index, the head's address, the peers).
        cluster: The pool (its spec, with the image the transforms made, and its worker).
        workdir: The worker's directory on the node (the command runs in it).
    """

    info: InstanceInfo
    cluster: Cluster
    workdir: str


# --- on the client --------------------------------------------------------------------------


def collective(spec: Spec) -> Plugin | None:
    """The first of ``spec``'s plugins that fixes the pool's size, or None."""
    return next((plugin for plugin in spec.plugins if plugin.collective), None)


def workers_per_node(plugins: Sequence[Plugin], worker: Worker | None) -> int:
    """How many workers each node has: the process executor's concurrency when a plugin
    makes each of its subprocesses a worker (``per_process``: torch, accelerate, mig),
    else 1 (the node is one worker, whatever runs its tasks)."""
    if worker is None or worker.resolved_executor != "process":
        return 1
    if not any(plugin.per_process for plugin in plugins):
        return 1
    return worker.concurrency


def transformed(spec: Spec, worker: Worker | None = None) -> Spec:
    """``spec`` with the image its plugins' ``transform`` hooks make, in their order.

    Raises:
        TypeError: A transform that returned something other than an Image.
    """
    from ._model import Image

    image = spec.image
    cluster = _cluster(spec, worker)
    for plugin in spec.plugins:
        if plugin.transform is None:
            continue
        image = plugin.transform(image, cluster)
        if not isinstance(image, Image):
            raise TypeError(
                f"plugin {plugin.name!r}: its image transform returned "
                f"{type(image).__qualname__}, not a sky.Image; return the image it was given, "
                "changed with attrs.evolve(image, ...)"
            )
    if image is spec.image:
        return spec
    return attrs.evolve(spec, image=image)


def _cluster(spec: Spec, worker: Worker | None) -> Cluster:
    return Cluster(spec=spec) if worker is None else Cluster(spec=spec, worker=worker)


def bootstrap_ops(spec: Spec, worker: Worker | None = None) -> tuple[str, ...]:
    """The shell commands the ``bootstrap`` hooks of ``spec``'s plugins give, in order.

    Raises:
        TypeError: A hook that gave something other than a list of strings.
    """
    cluster = _cluster(spec, worker)
    ops: list[str] = []
    for plugin in spec.plugins:
        if plugin.bootstrap is None:
            continue
        given = plugin.bootstrap(cluster)
        if isinstance(given, str) or not all(isinstance(op, str) for op in given):
            raise TypeError(
                f"plugin {plugin.name!r}: its bootstrap hook returned {given!r}; return a "
                'list (or tuple) of shell commands, e.g. ("nvidia-smi -L",)'
            )
        ops.extend(given)
    return tuple(ops)


def launch_command(spec: Spec, base: LaunchCommand, context: LaunchContext) -> LaunchCommand:
    """``base`` through each plugin's ``launcher``, the last plugin's first (so the first
    plugin's wrapper is the outermost).

    Raises:
        TypeError: A launcher that returned something other than a LaunchCommand.
        ValueError: A launcher whose command no longer holds the one it was given,
            unbroken (it must wrap the worker's command, not replace it).
    """
    command = base
    for plugin in reversed(spec.plugins):
        if plugin.launcher is None:
            continue
        given = plugin.launcher(command, context)
        if not isinstance(given, LaunchCommand):
            raise TypeError(
                f"plugin {plugin.name!r}: its launcher returned {type(given).__qualname__}, "
                "not a LaunchCommand; return the command it was given, changed with "
                "attrs.evolve(command, argv=(...), env={...})"
            )
        if not _holds(given.argv, command.argv):
            raise ValueError(
                f"plugin {plugin.name!r}: its launcher returned {list(given.argv)}, which "
                f"does not run the command it was given ({list(command.argv)}); a launcher "
                "wraps the worker's command: keep it whole, e.g. "
                'argv=("nice", "-n", "10", *command.argv)'
            )
        command = given
    return command


def _holds(argv: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """Whether ``inner`` appears in ``argv`` as one unbroken run."""
    n = len(inner)
    return any(argv[i : i + n] == inner for i in range(len(argv) - n + 1))


def client_hooks(
    spec: Spec, pool: Any, worker: Worker | None = None
) -> AbstractContextManager[None]:
    """Every plugin's ``around_client`` for ``pool``, entered in order, exited in reverse."""
    import contextlib

    @contextlib.contextmanager
    def entered() -> Iterator[None]:
        cluster = _cluster(spec, worker)
        with contextlib.ExitStack() as stack:
            for plugin in spec.plugins:
                if plugin.around_client is not None:
                    stack.enter_context(plugin.around_client(pool, cluster))
            yield

    return entered()
