"""``skyward.toml``: named pools and provider configs, checked before anything is provisioned.

    # skyward.toml
    [providers.lab]
    type = "ssh"
    hosts = ["gpu1", "alice@gpu2:2222"]

    [pools.train]
    provider = "lab"
    nodes = 2
    accelerator = "A100"
    console = "log"
    image = { pip = ["torch"], env = { HF_HOME = "/data/hf" } }

    with sky.Compute(name="train") as pool: ...

Two files are read: ``./skyward.toml`` (the project: the working directory when it is
loaded) over ``~/.skyward/defaults.toml`` (global). The project wins key by key: tables
merge recursively, arrays and scalars are replaced whole. Either file may be missing.

A pool may list specs to fall back on, ``[[pools.NAME.specs]]`` tables of the Spec
fields that differ; the pool's own Spec fields are what they share.

:func:`validate` reads both and returns every pool with its :class:`~skyward_trio.Spec` list
and :class:`~skyward_trio.Options`, or raises :class:`~skyward_trio.ConfigError` listing
every problem as ``<file>: <key path>: <what is wrong>``. ``python -m skyward_trio.config
validate`` prints the same.

Layer 5: it builds the records of layer 1 and is used by ``Compute(name=...)``.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import attrs

from . import accelerators
from . import metrics as sky_metrics
from ._checks import check_spec
from ._errors import ConfigError
from ._model import (
    PROVIDER_TYPES,
    SSH,
    Image,
    Local,
    LogConfig,
    Nodes,
    Options,
    PipIndex,
    ProviderConfig,
    Spec,
    SSHHost,
    Volume,
    Worker,
)
from ._transport import SSHError
from .plugins import BUILT_IN

__all__ = ["DEFAULTS_FILE", "PROJECT_FILE", "Config", "NamedPool", "main", "validate"]

#: The project file, looked for in the working directory.
PROJECT_FILE = "skyward.toml"
#: The global file, under the user's home.
DEFAULTS_FILE = "~/.skyward/defaults.toml"

# Why not cattrs, which DESIGN names for TOML: its default hooks coerce ("4" becomes 4, 2.7
# becomes 2, {A = 1} becomes {"A": "1"}), its extra-key error suggests nothing, and a record's
# own check raises outside its key path. Here raw TOML values go to the records unchanged, so
# their own checks judge them, and each error is placed at its key path and file.

_Key: TypeAlias = tuple[str | int, ...]
_Table: TypeAlias = dict[str, Any]

_SPEC_FIELDS = tuple(field.name for field in attrs.fields(Spec))
_OPTIONS_FIELDS = tuple(field.name for field in attrs.fields(Options))
_ACCELERATORS = tuple(name for name in accelerators.__all__ if accelerators.by_name(name))
_COLLECTORS: dict[str, type[sky_metrics.Collector] | type[sky_metrics.Default]] = {
    "default": sky_metrics.Default,
    "disk": sky_metrics.Disk,
    "custom": sky_metrics.Custom,
    **{
        kind().metric: kind
        for kind in sky_metrics.KINDS
        if kind not in (sky_metrics.Disk, sky_metrics.Custom)
    },
}
_NODES_FORMS = (
    "expected a node count (nodes = 4), an array [low, high] (nodes = [2, 8]: start at 2, "
    "autoscale up to 8) or a table (nodes = { desired = 4, min = 2, max = 8 })"
)


@attrs.frozen(kw_only=True)
class NamedPool:
    """One ``[pools.NAME]`` table, as ``Compute`` takes it.

    Attributes:
        name: The pool's name.
        specs: What to provision: one spec, or one per ``[[pools.NAME.specs]]`` table (each
            over the pool's own Spec fields), tried as ``Options.selection`` says.
        options: The pool's ``Options``, or None when the table sets no ``Options`` field
            (``Compute(name=..., options=...)`` is allowed only then).
        provider_defaulted: Whether the table names no provider, so ``Local`` is used.
        files: The files the table came from, as errors name them.
    """

    name: str
    specs: tuple[Spec, ...]
    options: Options | None
    provider_defaulted: bool
    files: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Config:
    """What :func:`validate` read.

    Attributes:
        files: The files read, global first, as errors name them.
        providers: The ``[providers.NAME]`` tables, built.
        pools: The ``[pools.NAME]`` tables, built.
    """

    files: tuple[str, ...]
    providers: Mapping[str, ProviderConfig]
    pools: Mapping[str, NamedPool]

    def pool(self, name: str) -> NamedPool:
        """The pool ``name``.

        Raises:
            ConfigError: There is no such pool; the message lists the defined ones and the
                files read.
        """
        found = self.pools.get(name)
        if found is not None:
            return found
        read = " and ".join(self.files) if self.files else "no file"
        if self.pools:
            defined = f"the pools defined are {', '.join(sorted(self.pools))}"
            close = difflib.get_close_matches(name, self.pools, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
        else:
            defined, hint = "no pool is defined", "."
        raise ConfigError(
            (
                f"no pool {name!r}: read {read} (./{PROJECT_FILE} over {DEFAULTS_FILE}), "
                f"{defined}{hint} Define it in ./{PROJECT_FILE} as a [pools.{_bare(name)}] "
                "table.",
            )
        )

    def summary(self) -> str:
        """One line: what was read and what it defines."""
        read = ", ".join(self.files) if self.files else "no configuration file"
        return f"OK: {read}: {_count(self.pools, 'pool')}, {_count(self.providers, 'provider')}"


def _count(names: Mapping[str, object], what: str) -> str:
    plural = "" if len(names) == 1 else "s"
    listed = f" ({', '.join(names)})" if names else ""
    return f"{len(names)} {what}{plural}{listed}"


def validate(
    project: str | os.PathLike[str] | None = None,
    defaults: str | os.PathLike[str] | None = None,
) -> Config:
    """Reads and checks the project file over the global one, and every pool in them as
    ``Compute`` checks its specs before provisioning (on this machine: the files an image
    includes, the SSH keys a host logs in with, the container engine's command).

    Args:
        project: The project file; None is ``./skyward.toml``, which may be missing.
        defaults: The global file; None is ``~/.skyward/defaults.toml``, which may be missing.
            A file given here must exist.

    Returns:
        Every provider and pool, built.

    Raises:
        ConfigError: Listing every problem found, each with its file and key path.
    """
    config = _load(project, defaults)
    problems = []
    for pool in config.pools.values():
        for index, spec in enumerate(pool.specs):
            try:
                check_spec(spec)
            except (ValueError, OSError, SSHError) as exc:
                where = f"pools.{_bare(pool.name)}"
                if len(pool.specs) > 1:
                    where += f".specs[{index}]"
                problems.append(f"{' and '.join(pool.files)}: {where}: {exc}")
    if problems:
        raise ConfigError(tuple(problems))
    return config


def _load(
    project: str | os.PathLike[str] | None, defaults: str | os.PathLike[str] | None
) -> Config:
    """``validate`` without the pools' ``Compute`` checks, which ``Compute`` runs on the
    pool it opens only: a pool that cannot work on this machine must not refuse the
    others of a file shared by several people."""
    sources = (
        _source(defaults, DEFAULTS_FILE, lambda: Path(os.path.expanduser(DEFAULTS_FILE))),
        _source(project, PROJECT_FILE, lambda: Path.cwd() / PROJECT_FILE),
    )
    problems: list[str] = []
    read: list[tuple[_Source, _Table]] = []
    for source in sources:
        table = _read(source, problems)
        if table is not None:
            read.append((source, table))
    if problems:
        raise ConfigError(tuple(problems))
    merged: _Table = {}
    origins: dict[_Key, str] = {}
    for source, table in read:
        merged = _merge(merged, table, source.label, origins, ())
    reader = _Reader(origins, {source.label: source.path.parent for source, _ in read})
    config = reader.config(merged, tuple(source.label for source, _ in read))
    if reader.problems:
        raise ConfigError(tuple(reader.problems))
    return config


def named(
    name: object,
    options: Options | None,
    *,
    project: str | os.PathLike[str] | None = None,
    defaults: str | os.PathLike[str] | None = None,
) -> tuple[tuple[Spec, ...], Options, bool]:
    """What ``Compute(name=name, options=options)`` provisions, from the configuration
    (``project`` and ``defaults`` as ``validate`` takes them).

    Returns:
        The specs (several with ``[[pools.NAME.specs]]``), the options (the pool's, else
        ``options``, else the defaults) and whether the provider was defaulted to ``Local``.

    Raises:
        TypeError: ``name`` is not a str, or ``options`` is given for a pool that sets
            ``Options`` fields in its file.
        ConfigError: The files are wrong or define no such pool.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"Compute(name={name!r}): name must be a str naming a [pools.NAME] table of "
            f'skyward.toml, got {type(name).__name__}. Pass e.g. name="train".'
        )
    pool = _load(project, defaults).pool(name)
    if pool.options is not None and options is not None:
        fields = [
            field.name
            for field in attrs.fields(Options)
            if getattr(pool.options, field.name) != field.default
        ]
        listed = f" ({', '.join(fields)})" if fields else ""
        raise TypeError(
            f"Compute(name={name!r}, options=...): [pools.{_bare(name)}] in "
            f"{' and '.join(pool.files)} already sets Options fields{listed}, and one of the "
            "two would silently win. Set every option in the file, or none there and all "
            "in options=."
        )
    return pool.specs, pool.options or options or Options(), pool.provider_defaulted


# --- reading and merging ------------------------------------------------------------------------


@attrs.frozen
class _Source:
    path: Path
    label: str  # how problems name the file
    required: bool  # given explicitly, so it must exist


def _source(
    given: str | os.PathLike[str] | None, label: str, default: Callable[[], Path]
) -> _Source:
    if given is None:
        return _Source(default(), label, required=False)
    return _Source(Path(os.path.expanduser(os.fspath(given))), os.fspath(given), required=True)


def _read(source: _Source, problems: list[str]) -> _Table | None:
    try:
        with open(source.path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        if source.required:
            problems.append(f"{source.label}: no such file")
        return None
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{source.label}: {_syntax(source.path, exc)}")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{source.label}: cannot be read: {exc}")
    return None


def _syntax(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    message = f"not valid TOML: {exc}"
    found = re.search(r"at line (\d+)", str(exc))
    if found is None:
        return message
    number = int(found.group(1))
    lines = path.read_text(errors="replace").splitlines()
    if 1 <= number <= len(lines):
        return f"line {number}: {message}: {lines[number - 1].strip()}"
    return f"line {number}: {message}"


def _merge(base: _Table, over: _Table, label: str, origins: dict[_Key, str], at: _Key) -> _Table:
    """``over`` on ``base``: tables merge key by key; anything else in ``over`` replaces."""
    merged = dict(base)
    for key, value in over.items():
        here = (*at, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            origins[here] = label
            merged[key] = _merge(merged[key], value, label, origins, here)
            continue
        for stale in [k for k in origins if k[: len(here)] == here]:
            del origins[stale]
        merged[key] = value
        _mark(value, label, origins, here)
    return merged


def _mark(value: object, label: str, origins: dict[_Key, str], at: _Key) -> None:
    origins[at] = label
    if isinstance(value, dict):
        for key, item in value.items():
            _mark(item, label, origins, (*at, key))


# --- checking and building ----------------------------------------------------------------------


def _bare(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _dotted(at: _Key) -> str:
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{_bare(part)}"
    return text


def _toml_type(value: object) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    kinds |= {list: "an array", dict: "a table"}
    kind = kinds.get(type(value), "a date or time")
    return f"{kind} ({value!r})" if not isinstance(value, dict | list) else kind


#: What a converter returns for a value it reported a problem with (None is a real value:
#: ``metrics = false`` is ``Image(metrics=None)``).
_FAILED: Any = object()

_Convert: TypeAlias = Callable[[_Key, Any], Any]


class _Reader:
    """Walks the merged tables, building records and collecting every problem on the way."""

    def __init__(self, origins: dict[_Key, str], folders: dict[str, Path]) -> None:
        self.origins = origins
        self.folders = folders  # relative paths in a file are relative to its folder
        self.problems: list[str] = []

    def file(self, at: _Key) -> str:
        """The file the value at ``at`` came from (the nearest key with a known origin)."""
        for end in range(len(at), 0, -1):
            label = self.origins.get(at[:end])
            if label is not None:
                return label
        return PROJECT_FILE

    def files(self, at: _Key) -> tuple[str, ...]:
        """Every file that set something within the table at ``at``, global first."""
        found = {label for key, label in self.origins.items() if key[: len(at)] == at}
        ordered = [label for label in self.folders if label in found]
        return tuple(ordered) or (self.file(at),)

    def problem(self, at: _Key, message: str, *, whole_table: bool = False) -> None:
        file = " and ".join(self.files(at)) if whole_table else self.file(at)
        self.problems.append(f"{file}: {_dotted(at)}: {message}")

    # -- generic checks --

    def table(self, at: _Key, value: object, what: str) -> _Table | None:
        if isinstance(value, dict):
            return value
        self.problem(at, f"expected a table of {what}, got {_toml_type(value)}")
        return None

    def keys(
        self,
        at: _Key,
        table: _Table,
        allowed: Sequence[str],
        *,
        required: Iterable[str] = (),
        elsewhere: Mapping[str, str] | None = None,
    ) -> bool:
        """Reports unknown and missing keys; True when there are none."""
        ok = True
        for key in table:
            if key in allowed:
                continue
            ok = False
            if elsewhere and key in elsewhere:
                self.problem(
                    (*at, key), f"unknown key {key!r} here: it belongs in {elsewhere[key]}"
                )
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(allowed)}"
            self.problem((*at, key), f"unknown key {key!r}; {hint}")
        for key in required:
            if key not in table:
                ok = False
                self.problem(at, f"missing key {key!r}", whole_table=True)
        return ok

    def build(self, at: _Key, make: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
        """``make(**kwargs)``, placing each error the record raises at the key it names.

        A record stops at its first bad field: that key is reported and dropped and the
        record built again, so every bad field of a table is reported at once.

        Returns:
            The record, or :data:`_FAILED` when anything was reported.
        """
        kwargs = dict(kwargs)
        failed = False
        while True:
            try:
                built = make(**kwargs)
            except (TypeError, ValueError) as exc:
                named = re.match(r"\w+\((\w+)=", str(exc))
                key = named.group(1) if named else None
                if key is None or key not in kwargs:
                    self.problem(at, str(exc), whole_table=True)
                    return _FAILED
                self.problem((*at, key), str(exc))
                if _required(make, key):
                    return _FAILED  # the record cannot be built without it to check the rest
                del kwargs[key]
                failed = True
                continue
            return _FAILED if failed else built

    def fields(
        self, at: _Key, table: _Table, keys: Sequence[str], convert: Mapping[str, _Convert]
    ) -> tuple[dict[str, Any], bool]:
        """The values of ``table`` under ``keys``, each through its converter in
        ``convert`` (as written when it has none), and whether none of them failed."""
        converted: dict[str, Any] = {}
        ok = True
        for key, value in table.items():
            if key not in keys:
                continue
            hook = convert.get(key)
            built = value if hook is None else hook((*at, key), value)
            if built is _FAILED:
                ok = False
            else:
                converted[key] = built
        return converted, ok

    def record(
        self,
        at: _Key,
        cls: type,
        table: _Table,
        *,
        convert: Mapping[str, _Convert] | None = None,
        elsewhere: Mapping[str, str] | None = None,
    ) -> Any:
        """The attrs record ``cls`` from a table of its fields, values through ``convert``.

        Returns:
            The record, or :data:`_FAILED` when anything was reported.
        """
        allowed = [field.name for field in attrs.fields(cls)]
        required = _required_fields(cls)
        ok = self.keys(at, table, allowed, required=required, elsewhere=elsewhere)
        kwargs, all_converted = self.fields(at, table, allowed, convert or {})
        ok = ok and all_converted
        if any(key not in kwargs for key in required):
            return _FAILED
        built = self.build(at, cls, kwargs)
        return built if ok else _FAILED

    def sub(self, cls: type, what: str) -> _Convert:
        """A converter for a nested table of ``cls`` fields."""

        def convert(at: _Key, value: object) -> Any:
            table = self.table(at, value, what)
            return _FAILED if table is None else self.record(at, cls, table)

        return convert

    def array(self, convert: _Convert, example: str) -> _Convert:
        """A converter for an array whose items go through ``convert``; all are checked."""

        def convert_all(at: _Key, value: object) -> Any:
            if not isinstance(value, list):
                self.problem(at, f"expected an array, e.g. {example}, got {_toml_type(value)}")
                return _FAILED
            items = [convert((*at, index), item) for index, item in enumerate(value)]
            return _FAILED if any(item is _FAILED for item in items) else items

        return convert_all

    # -- the file --

    def config(self, data: _Table, files: tuple[str, ...]) -> Config:
        self.keys((), data, ("providers", "pools"))
        providers: dict[str, ProviderConfig | None] = {}
        raw_providers = self.table(("providers",), data.get("providers", {}), "providers")
        for name, value in (raw_providers or {}).items():
            built = self.provider(("providers", name), value)
            providers[name] = None if built is _FAILED else built
        pools: dict[str, NamedPool] = {}
        raw_pools = self.table(("pools",), data.get("pools", {}), "pools")
        for name, value in (raw_pools or {}).items():
            pool = self.pool(name, value, providers)
            if pool is not None:
                pools[name] = pool
        ready = {name: p for name, p in providers.items() if p is not None}
        return Config(files=files, providers=ready, pools=pools)

    # -- providers --

    def provider(self, at: _Key, value: object) -> Any:
        table = self.table(at, value, f"a provider: type = one of {_types()}, and its fields")
        if table is None:
            return _FAILED
        if "type" not in table:
            self.problem(at, f"missing key 'type': one of {_types()}", whole_table=True)
            return _FAILED
        cls = self.provider_type((*at, "type"), table["type"])
        if cls is None:
            return _FAILED
        fields = {key: item for key, item in table.items() if key != "type"}
        convert: dict[str, _Convert] = {}
        if cls is SSH:
            convert["hosts"] = self.array(self.host, 'hosts = ["gpu1", "alice@gpu2:2222"]')
            # TOML has no null: ssh_config = false reads no config file (None in Python).
            convert["ssh_config"] = lambda at, v: None if v is False else v
        return self.record(at, cls, fields, convert=convert)

    def provider_type(self, at: _Key, kind: object) -> type[ProviderConfig] | None:
        if not isinstance(kind, str):
            self.problem(at, f"expected a string, one of {_types()}; got {_toml_type(kind)}")
            return None
        cls = PROVIDER_TYPES.get(kind)
        if cls is not None:
            return cls
        close = difflib.get_close_matches(kind, list(PROVIDER_TYPES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        self.problem(at, f"unknown provider type {kind!r}; {hint}the types are {_types()}")
        return None

    def host(self, at: _Key, value: object) -> Any:
        if isinstance(value, str):
            return self.build(at, lambda: SSHHost.parse(value), {})
        if isinstance(value, dict):
            return self.record(at, SSHHost, value)
        self.problem(
            at,
            'expected "user@host:port" (user and port optional) or a table '
            f"{{ host = ..., user = ..., port = ... }}, got {_toml_type(value)}",
        )
        return _FAILED

    # -- pools --

    def pool(
        self, name: str, value: object, providers: Mapping[str, ProviderConfig | None]
    ) -> NamedPool | None:
        at: _Key = ("pools", name)
        table = self.table(at, value, "Spec and Options fields")
        if table is None:
            return None
        elsewhere = {field.name: f"[{_dotted((*at, 'image'))}]" for field in attrs.fields(Image)}
        elsewhere |= {field.name: f"[{_dotted((*at, 'worker'))}]" for field in attrs.fields(Worker)}
        allowed = (*_SPEC_FIELDS, *_OPTIONS_FIELDS, "specs")
        ok = self.keys(at, table, allowed, elsewhere=elsewhere)
        convert = self._pool_converters(providers)
        # In the table's order, so that its problems are reported in that order.
        values, all_converted = self.fields(at, table, (*_SPEC_FIELDS, *_OPTIONS_FIELDS), convert)
        ok = ok and all_converted
        spec_kwargs = {key: value for key, value in values.items() if key in _SPEC_FIELDS}
        options_kwargs = {key: value for key, value in values.items() if key in _OPTIONS_FIELDS}
        options: Options | None = None
        if options_kwargs:
            options = self.build(at, Options, options_kwargs)
            ok = ok and options is not _FAILED
        # Each [[pools.NAME.specs]] table over the pool's own Spec fields, key by key.
        alternatives: list[dict[str, Any]] = [{}]
        if "specs" in table:
            found = self.alternatives(at, table["specs"], convert)
            if found is None:
                return None
            alternatives, specs_ok = found
            ok = ok and specs_ok
        specs: list[Spec] = []
        for index, own in enumerate(alternatives):
            kwargs = spec_kwargs | own
            # Local stands in for a provider that failed (ok is False then), so that the
            # other Spec fields are still checked and reported in the same pass.
            kwargs.setdefault("provider", Local())
            where = at if "specs" not in table else (*at, "specs", index)
            spec = self.build(where, Spec, kwargs)
            if spec is _FAILED:
                ok = False
            specs.append(spec)
        if not ok:
            return None
        defaulted = "provider" not in table and not any("provider" in a for a in alternatives)
        return NamedPool(
            name=name,
            specs=tuple(specs),
            options=options,
            provider_defaulted=defaulted,
            files=self.files(at),
        )

    def alternatives(
        self, at: _Key, value: object, convert: Mapping[str, _Convert]
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """The converted Spec fields of each ``[[pools.NAME.specs]]`` table, in order, and
        whether all of them converted; None when ``specs`` is not an array of tables."""
        here = (*at, "specs")
        example = (
            f"[[{_dotted(here)}]] tables, each with the Spec fields that differ "
            '(provider = "aws", accelerator = "A100", ...)'
        )
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.problem(here, f"expected {example}, got {_toml_type(value)}")
            return None
        if not value:
            self.problem(here, f"expected at least one spec: {example}; or drop the key")
            return None
        pool_level = f"[{_dotted(at)}]: Options are the pool's, not a spec's"
        elsewhere = dict.fromkeys(_OPTIONS_FIELDS, pool_level)
        ok = True
        found: list[dict[str, Any]] = []
        for index, item in enumerate(value):
            where = (*here, index)
            image_fields = {f.name: f"[{_dotted((*where, 'image'))}]" for f in attrs.fields(Image)}
            ok = self.keys(where, item, _SPEC_FIELDS, elsewhere=elsewhere | image_fields) and ok
            own, all_converted = self.fields(where, item, _SPEC_FIELDS, convert)
            ok = ok and all_converted
            found.append(own)
        return found, ok

    def _pool_converters(
        self, providers: Mapping[str, ProviderConfig | None]
    ) -> dict[str, _Convert]:
        return {
            "provider": lambda at, v: self.provider_ref(at, v, providers),
            "accelerator": self.accelerator,
            "nodes": self.nodes,
            "image": self.image,
            "volumes": self.array(self.volume, 'volumes = [{ bucket = "data", mount = "/data" }]'),
            "plugins": self.array(
                self.plugin, 'plugins = ["joblib", { kind = "torch", backend = "nccl" }]'
            ),
            "worker": self.sub(Worker, "Worker fields (concurrency, executor, ...)"),
            "logging": self.logging,
            "health_checker": self.health_checker,
        }

    def provider_ref(
        self, at: _Key, value: object, providers: Mapping[str, ProviderConfig | None]
    ) -> Any:
        if not isinstance(value, str):
            self.problem(
                at, f"expected the name of a [providers.NAME] table, got {_toml_type(value)}"
            )
            return _FAILED
        if value in providers:
            found = providers[value]
            return _FAILED if found is None else found  # its problems are reported there
        cls = PROVIDER_TYPES.get(value)
        needs = _required_fields(cls) if cls is not None else ()
        if cls is not None and not needs:
            return cls()
        if cls is not None:
            self.problem(
                at,
                f"type {value!r} needs fields ({', '.join(needs)}): define them in a "
                f'[providers.NAME] table with type = "{value}", and name that table here',
            )
        else:
            bare = [
                kind for kind, kind_cls in PROVIDER_TYPES.items() if not _required_fields(kind_cls)
            ]
            defined = ", ".join(repr(name) for name in providers) or "none"
            close = difflib.get_close_matches(value, [*providers, *bare], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.problem(
                at,
                f"no provider {value!r}; {hint}the [providers.NAME] tables defined are "
                f"{defined}, and a type that needs no fields may be named without one: "
                f"{', '.join(repr(kind) for kind in bare)}",
            )
        return _FAILED

    def accelerator(self, at: _Key, value: object) -> Any:
        if isinstance(value, str):
            factory = accelerators.by_name(value)
            if factory is None:
                self.problem(at, _unknown_accelerator(value))
                return _FAILED
            return self.build(at, factory, {})
        table = self.table(
            at, value, 'an accelerator, e.g. { name = "H100", count = 8 }, or a string "A100"'
        )
        if table is None:
            return _FAILED
        if "custom" in table:
            kwargs = {key: item for key, item in table.items() if key != "custom"}
            ok = self.keys(at, kwargs, ("memory", "count"))
            name = table["custom"]
            built = self.build(at, lambda **kw: accelerators.Custom(name, **kw), kwargs)
            return built if ok else _FAILED
        name = table.get("name")
        if not isinstance(name, str):
            self.problem(
                at,
                'expected name = "<model>" (a model of sky.accelerators), or custom = '
                '"<model>" for one outside the catalog',
                whole_table=True,
            )
            return _FAILED
        factory = accelerators.by_name(name)
        if factory is None:
            self.problem((*at, "name"), _unknown_accelerator(name))
            return _FAILED
        kwargs = {key: item for key, item in table.items() if key != "name"}
        ok = self.keys(at, kwargs, list(inspect.signature(factory).parameters))
        takes = inspect.signature(factory).parameters
        built = self.build(at, factory, {k: v for k, v in kwargs.items() if k in takes})
        return built if ok else _FAILED

    def nodes(self, at: _Key, value: object) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value >= 1:
                return Nodes(desired=value)
            self.problem(at, f"a node count must be >= 1, got {value}; {_NODES_FORMS}")
            return _FAILED
        if isinstance(value, list):
            pair = len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            )
            if pair and 1 <= value[0] <= value[1]:
                return Nodes(desired=value[0], max=value[1])
            self.problem(
                at, f"expected [low, high] with 1 <= low <= high, got {value!r}; {_NODES_FORMS}"
            )
            return _FAILED
        if isinstance(value, dict):
            return self.record(at, Nodes, value)
        self.problem(at, f"{_NODES_FORMS}; got {_toml_type(value)}")
        return _FAILED

    def image(self, at: _Key, value: object) -> Any:
        table = self.table(at, value, "Image fields (pip, env, ...)")
        if table is None:
            return _FAILED
        convert: dict[str, _Convert] = {
            "pip_indexes": self.array(
                self.sub(PipIndex, "PipIndex fields (url, packages)"),
                'pip_indexes = [{ url = "https://...", packages = ["torch"] }]',
            ),
            "metrics": self.metrics,
            "includes": self.includes,
        }
        return self.record(at, Image, table, convert=convert)

    def includes(self, at: _Key, value: object) -> Any:
        """Relative ``includes`` are relative to the folder of the file that names them."""
        if not isinstance(value, list):
            return value  # Image's own check reports it
        folder = self.folders.get(self.file(at), Path.cwd())
        return [str(folder / item) if isinstance(item, str) and item else item for item in value]

    def metrics(self, at: _Key, value: object) -> Any:
        if value is False:
            return None  # sample nothing
        example = 'metrics = ["default", { kind = "disk", path = "/data" }], or false'
        return self.array(self.collector, example)(at, value)

    def collector(self, at: _Key, value: object) -> Any:
        found = self.kinded(
            at,
            value,
            _COLLECTORS,
            expected="expected a collector kind ({kinds}), or a table with kind = and its fields",
            unknown="unknown collector kind {kind!r}; {hint}the kinds are {kinds}",
        )
        if found is None:
            return _FAILED
        cls, fields = found
        return self.record(at, cls, fields)

    def plugin(self, at: _Key, value: object) -> Any:
        """A built-in plugin: its name, or a table of ``kind =`` and its arguments."""
        yours = "(a plugin of your own is passed to Compute in Python)"
        found = self.kinded(
            at,
            value,
            BUILT_IN,
            expected="expected a built-in plugin ({kinds}), or a table with kind = and its "
            f"arguments {yours}",
            unknown=f"unknown plugin {{kind!r}}; {{hint}}the built-in ones are {{kinds}} {yours}",
        )
        if found is None:
            return _FAILED
        make, arguments = found
        parameters = inspect.signature(make).parameters
        if not self.keys(at, arguments, list(parameters)):
            return _FAILED
        needed = [
            name
            for name, parameter in parameters.items()
            if parameter.default is inspect.Parameter.empty and name not in arguments
        ]
        if needed:
            kind = make.__name__
            self.problem(
                at,
                f"plugin {kind!r} needs {', '.join(needed)}: write it as a table, e.g. "
                f'{{ kind = "{kind}", {needed[0]} = ... }}',
            )
            return _FAILED
        return self.build(at, make, arguments)

    def kinded(
        self, at: _Key, value: object, kinds: Mapping[str, Any], *, expected: str, unknown: str
    ) -> tuple[Any, dict[str, Any]] | None:
        """What ``value`` names in ``kinds`` (``"cpu"``, or ``{ kind = "disk", path = ... }``)
        and the rest of its table; None once reported. ``expected`` and ``unknown`` are the
        messages, formatted with ``kinds``, ``kind`` and ``hint``."""
        listed = ", ".join(repr(kind) for kind in kinds)
        if isinstance(value, str):
            kind, fields = value, {}
        elif isinstance(value, dict) and "kind" in value:
            kind = value["kind"]
            fields = {key: item for key, item in value.items() if key != "kind"}
        else:
            self.problem(at, expected.format(kinds=listed))
            return None
        chosen = kinds.get(kind) if isinstance(kind, str) else None
        if chosen is None:
            close = difflib.get_close_matches(str(kind), kinds, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.problem(at, unknown.format(kind=kind, hint=hint, kinds=listed))
            return None
        return chosen, fields

    def volume(self, at: _Key, value: object) -> Any:
        table = self.table(at, value, "Volume fields (bucket, mount, prefix, read_only)")
        if table is None:
            return _FAILED
        return self.record(at, Volume, table, convert={"storage": self.volume_storage})

    def volume_storage(self, at: _Key, value: object) -> Any:
        """A storage preset by ``kind``, its keys named by environment variables
        (``access_key_env``, ``secret_key_env``): a file names keys, never holds them."""
        from .storage import PRESETS, EnvKey

        found = self.kinded(
            at,
            value,
            PRESETS,
            expected="expected a table: a storage preset ({kinds}) as kind =, its arguments, "
            "and the variables holding its keys (access_key_env, secret_key_env)",
            unknown="unknown storage {kind!r}; {hint}the presets are {kinds}",
        )
        if found is None:
            return _FAILED
        make, fields = found
        kind, name = make.__name__, next(k for k, v in PRESETS.items() if v is make)
        parameters = inspect.signature(make).parameters
        if "api_key" in parameters:  # it makes its keys, with an API key (Hyperstack)
            return self.api_key_storage(at, make, fields)
        # The preset's two key arguments (Backblaze calls them key_id and app_key).
        key_args = [arg for arg in parameters if arg in _KEY_ARGS]
        held = [arg for arg in key_args if arg in fields]
        if held:
            self.problem(
                (*at, held[0]),
                "a file should not hold keys: name the variables that hold them, "
                f'access_key_env = "..." and secret_key_env = "..." (or pass '
                f"storage=sky.storage.{kind}(...) to Compute in Python)",
            )
            return _FAILED
        args = [arg for arg in parameters if arg not in key_args]
        env_keys = ("access_key_env", "secret_key_env")
        if not self.keys(at, fields, [*args, *env_keys]):
            return _FAILED
        named = {key: fields.pop(key) for key in env_keys if key in fields}
        for key, variable in named.items():
            if not self.variable_name((*at, key), variable):
                return _FAILED
        keyless = all(parameters[arg].default is None for arg in key_args)  # S3: AWS_* vars
        if len(named) == 1 or (not named and not keyless):
            self.problem(
                at,
                f"storage {name!r} needs both its keys named: access_key_env and "
                "secret_key_env, the variables that hold them",
            )
            return _FAILED
        for i, env_key in enumerate(env_keys):
            if env_key in named:
                fields[key_args[i]] = EnvKey(named[env_key])
        return self.build(at, make, fields)

    def api_key_storage(self, at: _Key, make: Callable[..., Any], fields: dict[str, Any]) -> Any:
        """A preset that makes its keys through its cloud's API: the API key by the
        variable ``api_key_env`` names (else the preset's own default variable)."""
        from .storage import EnvKey

        if "api_key" in fields:
            self.problem(
                (*at, "api_key"),
                "a file should not hold keys: name the variable that holds it, "
                f'api_key_env = "..." (or pass storage=sky.storage.{make.__name__}(...) '
                "to Compute in Python)",
            )
            return _FAILED
        args = [arg for arg in inspect.signature(make).parameters if arg != "api_key"]
        if not self.keys(at, fields, [*args, "api_key_env"]):
            return _FAILED
        if "api_key_env" in fields:
            variable = fields.pop("api_key_env")
            if not self.variable_name((*at, "api_key_env"), variable):
                return _FAILED
            fields["api_key"] = EnvKey(variable)
        return self.build(at, make, fields)

    def variable_name(self, at: _Key, value: object) -> bool:
        """Whether ``value`` names an environment variable; reported at ``at`` if not."""
        if isinstance(value, str) and _ENV_NAME.fullmatch(value):
            return True
        self.problem(at, f"expected the name of an environment variable, got {value!r}")
        return False

    def logging(self, at: _Key, value: object) -> Any:
        if isinstance(value, bool):
            return value
        return self.sub(LogConfig, 'LogConfig fields (level = "DEBUG", ...), or true / false')(
            at, value
        )

    def health_checker(self, at: _Key, value: object) -> Any:
        self.problem(
            at,
            "a health checker runs a Python callable, which a TOML file cannot hold: set no "
            "Options field in this table and pass options=sky.Options(health_checker="
            "sky.HealthChecker(...), ...) to Compute(name=...)",
        )
        return _FAILED


def _types() -> str:
    return ", ".join(repr(kind) for kind in PROVIDER_TYPES)


def _required_fields(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in attrs.fields(cls) if field.default is attrs.NOTHING)


#: The arguments of a storage preset that hold keys.
_KEY_ARGS = ("access_key", "secret_key", "key_id", "app_key")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _required(make: Callable[..., Any], key: str) -> bool:
    if isinstance(make, type) and attrs.has(make):
        return key in _required_fields(make)
    return False


def _unknown_accelerator(name: str) -> str:
    close = accelerators.close_to(name)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (
        f"{name!r} is not in the accelerator catalog; {hint}the names are "
        f"{', '.join(_ACCELERATORS)}. For another model write "
        f'accelerator = {{ custom = "{name}", memory = "48GB" }}'
    )


# --- python -m skyward_trio.config validate -----------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``validate``: prints every problem (exit status 1) or a one-line summary (0)."""
    parser = argparse.ArgumentParser(
        prog="python -m skyward_trio.config",
        description=f"Check ./{PROJECT_FILE} over {DEFAULTS_FILE}.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check the configuration files")
    check.add_argument("--project", help=f"the project file (default ./{PROJECT_FILE})")
    check.add_argument("--defaults", help=f"the global file (default {DEFAULTS_FILE})")
    args = parser.parse_args(argv)
    try:
        config = validate(args.project, args.defaults)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(config.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
