"""``Compute``: open a pool for an ``async with`` block and tear it down after.

Structure (every task lives in a nursery owned by the ``async with`` that made the pool)::

    Compute.__aenter__ -> pool nursery
        ├── one supervisor per node: provision -> SSH -> bootstrap -> worker -> serve
        └── work nursery: tasks started by run_async / streaming gather
    Compute.__aexit__  -> cancel work, stop workers, terminate every instance (shielded,
                          bounded, loud), then close the nursery

Before anything is provisioned, the specs are checked and their offers ranked; the pool
comes up on the first spec that can (``Options.selection``), with its log file and console.
It is the entry point on top of ``_pool`` and ``_supervisor``, kept apart so that neither
of them imports it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import attrs
import trio

from . import _console, _health, _logging, _offers, _reaper, _serial, _transport, config
from . import storage as storage_presets
from ._aws import volume_keys
from ._checks import check_specs
from ._errors import ProvisionError, TeardownError
from ._events import (
    ClusterRequested,
    Error,
    Event,
    InstanceAtRisk,
    InstanceInterrupting,
    InstancePreempted,
    Log,
    Metric,
    TaskCompleted,
    TaskStarted,
)
from ._function import active_pool
from ._model import (
    AWS,
    GCP,
    SCW_SECRET_KEY_ENV,
    SSH,
    VERDA_CLIENT_SECRET_ENV,
    Hyperstack,
    LogConfig,
    OneAPIKey,
    Options,
    ProviderConfig,
    Scaleway,
    Spec,
    Verda,
    resolve_compute_args,
)
from ._plugin import bootstrap_ops, client_hooks, transformed
from ._pluginrun import pack
from ._pool import Pool
from ._providers import offers, open_cluster
from ._supervisor import NodePluginPlan, Supervisor
from ._volumes import Mount
from .storage import (
    HYPERSTACK_STORAGE_REGION,
    IssuedKey,
    KeyIssuer,
    Storage,
    StorageError,
    resolved_keys,
)

__all__ = ["Compute"]


class Compute:
    """Provision a pool for the ``async with`` block and tear it down after.

    ``Compute(provider=..., nodes=..., ...)`` (flat ``Spec`` fields), ``Compute(spec, ...)``
    (one or more ``Spec``), or ``Compute(name="...")`` (a ``[pools.NAME]`` table of
    ``skyward.toml``, read here: see ``skyward_trio.config``). With no provider, ``Local``
    is used. Teardown on exit (normal, error or cancellation) terminates every instance it created.
    """

    def __init__(
        self, *specs: Spec, name: str | None = None, options: Options | None = None, **kwargs: Any
    ) -> None:
        resolved, defaulted = resolve_compute_args(specs, name, kwargs)
        if name is not None:
            resolved, options, defaulted = config.named(name, options)
        if options is None:
            options = Options()
        if not isinstance(options, Options):
            raise TypeError(f"options must be a sky.Options(...), got {type(options).__qualname__}")
        # The image each spec's plugins make is the one checked, and the one nodes get.
        resolved = tuple(transformed(spec, options.worker) for spec in resolved)
        self.specs = resolved
        self.options = options
        self.defaulted_to_local = defaulted
        check_specs(resolved)
        # Packed once, here: hooks that cannot travel to the nodes fail now, not there.
        self._node_hooks = [pack(spec.plugins) for spec in resolved]
        checker = options.health_checker
        self._probe = _health.probe_payload(checker) if checker is not None else None
        self._cm: contextlib.AbstractAsyncContextManager[Pool] | None = None
        self._token: Any = None
        # The plugins' around_client hooks get the pool the user holds: this one, or the
        # sync face's, which enters them itself (and sets this False).
        self.enter_client_hooks = True
        # Called with each pool as it is made, before anything starts (one per spec tried):
        # the pool server follows a pool's events while it comes up.
        self.on_pool: Callable[[Pool], None] | None = None
        self._client_hooks: contextlib.AbstractContextManager[None] | None = None

    async def __aenter__(self) -> Pool:
        if self._cm is not None:
            raise RuntimeError(
                "this Compute is already open; one Compute makes one pool at a time "
                "(create another skyward_trio.Compute(...) for a second pool)"
            )
        self._cm, pool = await _open_first(
            self.specs,
            self.options,
            self.defaulted_to_local,
            self._probe,
            self._node_hooks,
            on_pool=self.on_pool,
        )
        if self.enter_client_hooks:
            hooks = client_hooks(pool.spec, pool, self.options.worker)
            try:
                hooks.__enter__()
            except BaseException as exc:
                cm, self._cm = self._cm, None
                await cm.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            self._client_hooks = hooks
        self._token = active_pool.set(pool)
        return pool

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._cm is not None
        cm, self._cm = self._cm, None
        active_pool.reset(self._token)
        hooks, self._client_hooks = self._client_hooks, None
        if hooks is not None:
            try:
                hooks.__exit__(*exc_info)  # what it returns cannot hide the block's error
            except BaseException as exc:
                await cm.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return await cm.__aexit__(*exc_info)


#: A spec whose pool failed in these phases is given up for the next one: its provider
#: had no machine for it, or the machine never answered. A failure to build the
#: environment (bootstrap) is raised at once: the next spec would most likely fail alike.
_FALLBACK_PHASES = ("provision", "ssh")


async def _open_first(
    specs: Sequence[Spec],
    options: Options,
    defaulted: bool,
    probe: _serial.Payload | None,
    node_hooks: Sequence[str | None],
    *,
    on_pool: Callable[[Pool], None] | None = None,
) -> tuple[contextlib.AbstractAsyncContextManager[Pool], Pool]:
    """Open a pool on the first spec that comes up, in the order ``Options.selection`` says.

    ``node_hooks`` are each spec's plugin hooks, packed (``_pluginrun.pack``).

    Every spec's offers are checked before anything is provisioned: a spec nothing can
    satisfy is skipped (said on the console), and when none can be, nothing starts.

    Raises:
        NoOfferError: No spec can be satisfied.
        ProvisionError: Every spec that could be failed to come up; ``attempts`` holds
            each one's error.
    """
    offered = [
        await offers(
            spec.provider,
            measure=_offers.asks_hardware(spec),
            count=spec.nodes.ceiling,
            accelerators=spec.accelerator.count if spec.accelerator is not None else 1,
            accelerator=spec.accelerator,
            region=spec.region,
        )
        for spec in specs
    ]
    choices, skipped = _offers.plan(specs, offered, options.selection)
    notes = [f"skipped {reason}" for reason in skipped]
    attempts: list[ProvisionError] = []
    for number, choice in enumerate(choices, 1):
        plugins = NodePluginPlan(
            ops=bootstrap_ops(choice.spec, options.worker), hooks=node_hooks[choice.index]
        )
        cm = _open_pool(choice, options, defaulted, probe, plugins, notes=notes, on_pool=on_pool)
        try:
            return cm, await cm.__aenter__()
        except ProvisionError as exc:
            if len(specs) == 1 or exc.phase not in _FALLBACK_PHASES:
                raise
            where = _offers.describe(choice.index, choice.spec, len(specs))
            attempts.append(exc)
            notes = [f"{where} failed ({exc}); trying the next spec"]
            if number == len(choices):
                raise _all_failed(specs, choices, attempts, skipped) from exc
    raise AssertionError("plan() returns at least one choice")


def _all_failed(
    specs: Sequence[Spec],
    choices: Sequence[_offers.Choice],
    attempts: Sequence[ProvisionError],
    skipped: Sequence[str],
) -> ProvisionError:
    lines = [
        f"  - {_offers.describe(c.index, c.spec, len(specs))}: {exc}"
        for c, exc in zip(choices, attempts, strict=True)
    ]
    lines += [f"  - {reason} (not tried)" for reason in skipped]
    last = attempts[-1]
    return ProvisionError(
        "every spec failed to come up, in the order tried:\n" + "\n".join(lines),
        node=last.node,
        phase=last.phase,
        attempts=tuple(attempts),
    )


@contextlib.asynccontextmanager
async def _open_pool(
    choice: _offers.Choice,
    options: Options,
    defaulted: bool,
    probe: _serial.Payload | None,
    plugins: NodePluginPlan,
    *,
    notes: Sequence[str] = (),
    on_pool: Callable[[Pool], None] | None = None,
) -> AsyncIterator[Pool]:
    spec = choice.spec
    job_id = secrets.token_hex(4)
    nodes = spec.nodes
    pool = Pool(spec, options, nodes, job_id=job_id)
    if on_pool is not None:
        on_pool(pool)
    client_key = _transport.generate_key()
    secret = secrets.token_urlsafe(32)
    # Keys made for the volumes (sky.storage.Hyperstack): deleted once the machines that
    # mount them are gone, or at once if the pool fails before it has any.
    issued: list[tuple[KeyIssuer, IssuedKey]] = []
    unrevoked: StorageError | None = None
    try:
        mounts = await _volume_mounts(spec, issued)
        hidden = [k for m in mounts if m.keys for k in m.keys]
        hidden += [s for issuer, _ in issued for s in issuer.secrets()]
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(_pool_log(pool, secret))
            stack.enter_context(_logging.hiding(hidden))
            await stack.enter_async_context(
                _console.shown(options.console, pool._events, defaulted_to_local=defaulted)
            )
            await stack.enter_async_context(_transport.asyncio_loop())
            cluster = await open_cluster(
                spec.provider, job_id=job_id, client_key=client_key, choice=choice
            )
            for note in notes:  # what happened to the specs tried or skipped before this one
                pool._events.emit(Error(job_id=job_id, message=note))
            reaper = await _start_reaper(pool, cluster, choice, issued)
            pool._events.emit(ClusterRequested(job_id=job_id, provider=cluster.name, nodes=nodes))
            supervisor = Supervisor(pool, cluster, client_key, probe, secret, plugins, mounts)
            failure: BaseException | None = None
            teardown_error: TeardownError | None = None
            close_error: Exception | None = None
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await supervisor.start(nursery)
                        yield pool
                    except BaseException as exc:
                        # Re-raised below, outside the nursery, so the caller sees its own
                        # exception and not an ExceptionGroup around it.
                        failure = exc
                    finally:
                        with trio.CancelScope(shield=True):
                            teardown_error = await supervisor.shutdown()
                        nursery.cancel_scope.cancel(reason="pool closed")
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await cluster.aclose()
                    except Exception as exc:  # what the cloud could not confirm ended
                        close_error = exc
                    unrevoked = await _revoke(issued)  # the machines using them are gone
                    ended = (teardown_error, close_error, unrevoked) == (None, None, None)
                    if reaper is not None and ended:
                        reaper.closed()
                    elif reaper is not None:
                        reaper.left()  # it tries again once this process ends
        left = _left_behind(cluster.name, teardown_error, close_error)
        if failure is not None:
            for problem in (left, unrevoked):  # what may still bill, a key left standing
                if problem is not None:
                    failure.add_note(f"Skyward, closing the pool: {problem}")
            raise failure
        if left is not None:
            if unrevoked is not None:
                left.add_note(f"Skyward, closing the pool: {unrevoked}")
            raise left
        if unrevoked is not None:
            raise unrevoked
    except BaseException as exc:
        if issued:  # the pool failed before its machines were let go
            with trio.CancelScope(shield=True):
                unrevoked = await _revoke(issued)
            if unrevoked is not None:
                exc.add_note(f"Skyward, closing the pool: {unrevoked}")
        raise


async def _start_reaper(
    pool: Pool, cluster: Any, choice: _offers.Choice, issued: list[tuple[KeyIssuer, IssuedKey]]
) -> _reaper.Reaper | None:
    """The reaper of a pool whose machines cannot end themselves when its client dies, or
    that made keys for its volumes (``_reaper``); None for the others. One that cannot
    start is said, not hidden. It is started in a thread: its first process takes a
    moment to fork the reaper away."""
    machines = bool(getattr(cluster, "needs_reaper", False))
    if not machines and not issued:
        return None
    try:
        # Shielded (it is brief): a reaper started and then lost to a cancel would never
        # be told that its pool closed.
        with trio.CancelScope(shield=True):
            config = pool.spec.provider if machines else None
            keys = list(issued)
            reaper = await trio.to_thread.run_sync(
                lambda: _reaper.start(config, pool.job_id, choice, pool.spec.ttl, keys=keys)
            )
        return reaper
    except Exception as exc:
        left = []
        if machines:
            left.append(
                f"its {cluster.name} machines keep billing until you end them "
                f"(named skyward-{pool.job_id}-*)"
            )
        if issued:
            made = ", ".join(f"{key.key_id} ({key.access_key})" for _, key in issued)
            left.append(f"the access keys made for its volumes ({made}) stay until you delete them")
        pool._events.emit(
            Error(
                job_id=pool.job_id,
                message=f"no reaper for this pool ({type(exc).__name__}: {exc}): if this "
                f"process dies, {' and '.join(left)}",
            )
        )
        return None


def _left_behind(
    provider: str, teardown: TeardownError | None, close: Exception | None
) -> TeardownError | None:
    """What a pool's close could not confirm ended, as one error: the instances it could not
    confirm terminated (``teardown``), and what the provider's own close could not end or
    remove (``close``: a machine whose launch answer never came, the pool's SSH key)."""
    if close is None:
        return teardown
    said = f"{provider} could not end everything this pool started: {close}"
    if teardown is None:
        return TeardownError(said, provider=provider, instance_ids=())
    return TeardownError(
        f"{teardown}; and {said}", provider=provider, instance_ids=teardown.instance_ids
    )


async def _revoke(issued: list[tuple[KeyIssuer, IssuedKey]]) -> StorageError | None:
    """Delete the keys made for a pool's volumes (each is taken off ``issued``); what could
    not be deleted, as one error."""
    problems = []
    while issued:
        issuer, key = issued.pop()
        try:
            await trio.to_thread.run_sync(issuer.revoke, key)
        except StorageError as exc:
            problems.append(str(exc))
    return StorageError("; ".join(problems)) if problems else None


def _own_store(provider: ProviderConfig) -> Storage | None:
    """The object store of the provider's own that ``Volume(storage=None)`` mounts, when
    it is reached with a key like any store's (sky.Hyperstack's: a key made with its API
    key, in the one region Skyward knows the store's address of); None for the others."""
    if not isinstance(provider, Hyperstack):
        return None
    return storage_presets.Hyperstack(
        region=HYPERSTACK_STORAGE_REGION,
        api_key=provider.resolved_api_key(),
        api_url=provider.api_url,
    )


async def _volume_mounts(
    spec: Spec, issued: list[tuple[KeyIssuer, IssuedKey]]
) -> tuple[Mount, ...]:
    """``spec.volumes`` as the nodes mount them, keys resolved here (a function that
    returns one is called now, on this client: the node gets the key, never the function).
    A storage that makes keys for each use (``key_issuer``) makes one for the pool, added
    to ``issued`` (the pool deletes it when it closes); volumes on it share that key.

    ``storage=None`` on ``sky.AWS``: S3 in the provider's region, signed with the nodes'
    instance profile when they have one, else with this client's boto3 keys. On
    ``sky.Hyperstack``: its object storage, with a key made with the provider's API key.
    """
    mounts = []
    made: dict[int, tuple[str, str]] = {}  # by id() of the storage with a key_issuer
    own = _own_store(spec.provider)
    for volume in spec.volumes:
        storage = own if volume.storage is None and own is not None else volume.storage
        if isinstance(storage, Storage):
            url, path_style, region = storage.endpoint, storage.path_style, storage.region
            keys: tuple[str, str] | None
            issuer = storage.key_issuer
            if issuer is None:
                keys = await resolved_keys(storage)
            elif id(storage) in made:
                keys = made[id(storage)]
            else:
                key = await trio.to_thread.run_sync(issuer.issue)
                issued.append((issuer, key))
                keys = made[id(storage)] = (key.access_key, key.secret_key)
        else:
            provider = spec.provider
            assert isinstance(provider, AWS)  # _checks refuses the rest
            region, path_style = provider.region, False
            url = f"https://s3.{region}.amazonaws.com"
            keys = None
            if provider.instance_profile is None:
                keys = await trio.to_thread.run_sync(volume_keys, provider)
        mounts.append(
            Mount(
                bucket=volume.bucket,
                prefix=volume.prefix,
                mount=volume.mount,
                read_only=volume.read_only,
                url=url.rstrip("/"),
                path_style=path_style,
                region=region,
                keys=keys,
            )
        )
    return tuple(mounts)


def _login_secrets(provider: ProviderConfig) -> list[str]:
    """Credentials read from the environment: the passphrase ``sky.SSH(passphrase_env=...)``
    names, ``RUNPOD_API_KEY``, ``VAST_API_KEY``, ``LAMBDA_API_KEY``, ``HYPERSTACK_API_KEY``,
    ``VULTR_API_KEY``, ``VERDA_CLIENT_SECRET``, ``SCW_SECRET_KEY``, ``NOVITA_API_KEY``,
    ``TENSORDOCK_API_TOKEN``, ``MASSED_COMPUTE_API_KEY``, ``JL_API_KEY``, AWS's secret key
    and session token. Never written to the log."""
    if isinstance(provider, SSH) and provider.passphrase_env is not None:
        return [os.environ.get(provider.passphrase_env, "")]
    if isinstance(provider, OneAPIKey):
        return [os.environ.get(provider.key_env, "")]
    if isinstance(provider, Verda):
        return [os.environ.get(VERDA_CLIENT_SECRET_ENV, "")]
    if isinstance(provider, Scaleway):
        return [os.environ.get(SCW_SECRET_KEY_ENV, "")]
    if isinstance(provider, GCP):  # the service account's private key
        try:
            return [provider.resolved_credentials()[0]["private_key"]]
        except ValueError:
            return []
    if isinstance(provider, AWS):
        return [os.environ.get(name, "") for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    return []


@contextlib.contextmanager
def _pool_log(pool: Pool, secret: str) -> Iterator[None]:
    """The pool's ``Options(logging=...)``: events and diagnostics to the log file."""
    hidden = [
        secret,
        *_logging.secret_looking(pool.spec.image.env),
        *_logging.secret_fields(pool.spec.provider),
        *_login_secrets(pool.spec.provider),
    ]
    setting = pool.options.logging
    with contextlib.ExitStack() as stack:
        stack.enter_context(_logging.hiding(hidden))
        if setting is not False:
            config = setting if isinstance(setting, LogConfig) else LogConfig()
            pool._log = stack.enter_context(_logging.open_log(config, pool.job_id))
            listener = functools.partial(_log_event, pool._log)
            pool._events.listen(listener, tasks=pool._log.wants(logging.DEBUG))
        yield


def _log_event(log: _logging.PoolLog, event: Event) -> None:
    if isinstance(event, Log):
        for line in event.text.splitlines():
            log.log(
                logging.INFO,
                "pool %s: node %d %s: %s",
                event.job_id,
                event.node,
                event.stream,
                line,
                event=True,
            )
        return
    if isinstance(event, Metric):
        level = _logging.TRACE
    elif isinstance(event, TaskStarted | TaskCompleted):
        level = logging.DEBUG
    elif isinstance(event, Error | InstanceAtRisk | InstanceInterrupting | InstancePreempted):
        level = logging.WARNING
    else:
        level = logging.INFO
    fields = attrs.asdict(event, recurse=False)
    detail = " ".join(f"{k}={v!r}" for k, v in fields.items() if k not in ("job_id", "time"))
    log.log(level, "pool %s: %s %s", event.job_id, type(event).__name__, detail, event=True)
