"""The public model records: what to provision (``Spec``) and how to run it (``Options``).

Every record is a frozen, keyword-only attrs class, checked when it is built: a mistake fails
on the line that made it, with a message that names the argument, the value received and the
fix, instead of minutes later at provision time. Change a record with ``attrs.evolve``, which
runs the same checks.

Sequences given as lists are stored as tuples and mappings as read-only mappings, so records
stay immutable and hashable (a ``Spec`` can key a dict) whatever the caller passed.

This module is imported on remote workers: it may use only the standard library and attrs.
"""

from __future__ import annotations

import inspect
import ipaddress
import math
import os
import posixpath
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ClassVar, Literal, TypeAlias

import attrs

from skyward_trio import accelerators
from skyward_trio import metrics as sky_metrics
from skyward_trio._plugin import Plugin
from skyward_trio.accelerators import Accelerator
from skyward_trio.containers import DockerImage, check_reference

__all__ = [
    "ALLOCATION_STRATEGIES",
    "ARCHITECTURES",
    "AWS",
    "CONSOLE_MODES",
    "DEFAULT_CONTAINER_IMAGE",
    "DEFAULT_IMAGE",
    "DEFAULT_SSH_CONFIG",
    "EXECUTOR_KINDS",
    "GCP",
    "LOG_LEVELS",
    "PROVIDER_TYPES",
    "RESERVED_MOUNTS",
    "SELECTION_STRATEGIES",
    "SKYWARD_SOURCES",
    "SSH",
    "AllocationStrategy",
    "Architecture",
    "ConsoleMode",
    "Container",
    "ExecutorKind",
    "HealthChecker",
    "Hyperstack",
    "Image",
    "JarvisLabs",
    "Lambda",
    "Local",
    "LogConfig",
    "LogLevel",
    "MassedCompute",
    "MetricsSetting",
    "NodeSpec",
    "Nodes",
    "Novita",
    "OneAPIKey",
    "Options",
    "PipIndex",
    "ProviderConfig",
    "SSHHost",
    "Scaleway",
    "SelectionStrategy",
    "SkywardSource",
    "Spec",
    "TensorDock",
    "VastAI",
    "Verda",
    "Volume",
    "Vultr",
    "Worker",
    "resolve_compute_args",
    "to_nodes",
]

AllocationStrategy: TypeAlias = Literal["spot-if-available", "spot", "on-demand", "cheapest"]
ALLOCATION_STRATEGIES: tuple[AllocationStrategy, ...] = (
    "spot-if-available",
    "spot",
    "on-demand",
    "cheapest",
)

SelectionStrategy: TypeAlias = Literal["cheapest", "first"]
SELECTION_STRATEGIES: tuple[SelectionStrategy, ...] = ("cheapest", "first")

ExecutorKind: TypeAlias = Literal["auto", "thread", "process"]
EXECUTOR_KINDS: tuple[ExecutorKind, ...] = ("auto", "thread", "process")

ConsoleMode: TypeAlias = Literal["rich", "minimal", "log", "silent"]
CONSOLE_MODES: tuple[ConsoleMode, ...] = ("rich", "minimal", "log", "silent")

Architecture: TypeAlias = Literal["x86_64", "arm64"]
ARCHITECTURES: tuple[Architecture, ...] = ("x86_64", "arm64")

LogLevel: TypeAlias = Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]
LOG_LEVELS: tuple[LogLevel, ...] = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")

SkywardSource: TypeAlias = Literal["auto", "local", "github", "pypi"]
SKYWARD_SOURCES: tuple[SkywardSource, ...] = ("auto", "local", "github", "pypi")

#: Paths a :class:`Volume` may not be mounted on: the worker's own files live there.
RESERVED_MOUNTS: frozenset[str] = frozenset({"/", "/opt", "/opt/skyward", "/root", "/tmp"})

#: ``Image.metrics``: collectors from ``sky.metrics`` (``Default()`` among them), or None.
MetricsSetting: TypeAlias = tuple[sky_metrics.Collector | sky_metrics.Default, ...] | None


# --- checks shared by the records ---------------------------------------------------------------
#
# Checks run in __attrs_post_init__ rather than as attrs validators: one method per record reads
# top to bottom, and attrs' validator types are invariant in the field type, which would force a
# validator per field type. Converters run first and pass input they cannot convert through
# unchanged, so the check that follows can name the argument (a converter never sees its field).


def _describe(value: object) -> str:
    return type(value).__name__


def _choices(choices: Iterable[object]) -> str:
    return ", ".join(repr(choice) for choice in choices)


def _is_int(value: object) -> bool:
    # True and False are ints to Python, but nodes=True is a bug, never a count.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(record: str, arg: str, value: object, *, low: int, fix: str) -> None:
    if not _is_int(value):
        raise TypeError(
            f"{record}({arg}={value!r}): {arg} must be an int >= {low}, "
            f"got {_describe(value)}. {fix}"
        )
    assert isinstance(value, int)
    if value < low:
        raise ValueError(f"{record}({arg}={value!r}): {arg} must be >= {low}. {fix}")


def _check_optional_int(record: str, arg: str, value: object, *, low: int, fix: str) -> None:
    if value is not None:
        _check_int(record, arg, value, low=low, fix=fix)


def _check_seconds(
    record: str, arg: str, value: object, *, allow_zero: bool = False, optional: bool = False
) -> None:
    if value is None and optional:
        return
    bound = ">= 0" if allow_zero else "> 0"
    fix = f"Pass a number of seconds, e.g. {arg}=sky.time.minutes(5)" + (
        ", or None for the default." if optional else "."
    )
    if not _is_number(value):
        raise TypeError(
            f"{record}({arg}={value!r}): {arg} must be a number of seconds {bound}, "
            f"got {_describe(value)}. {fix}"
        )
    assert isinstance(value, int | float)
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{record}({arg}={value!r}): {arg} must be {bound} seconds. {fix}")


def _check_choice(record: str, arg: str, value: object, choices: Iterable[str]) -> None:
    options = tuple(choices)
    if value in options:
        return
    # "debug" for "DEBUG" is the likely slip; show the spelling that works.
    same = [o for o in options if isinstance(value, str) and o.lower() == value.lower()]
    example = same[0] if same else options[0]
    raise ValueError(
        f"{record}({arg}={value!r}): {arg} must be one of {_choices(options)}. "
        f"Pass e.g. {arg}={example!r}."
    )


def _check_bool(record: str, arg: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"{record}({arg}={value!r}): {arg} must be True or False, got {_describe(value)}."
        )


def _check_str(record: str, arg: str, value: object, *, fix: str, empty_ok: bool = False) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{record}({arg}={value!r}): {arg} must be a str, got {_describe(value)}. {fix}"
        )
    if not empty_ok and not value.strip():
        raise ValueError(f"{record}({arg}={value!r}): {arg} must not be empty. {fix}")


def _check_strings(record: str, arg: str, value: object, *, example: str) -> None:
    """Checks a field converted by :func:`_str_tuple`; ``example`` is a literal list to show."""
    fix = f"Pass a list of strings, e.g. {arg}={example}."
    if not isinstance(value, tuple):
        raise TypeError(
            f"{record}({arg}={value!r}): {arg} must be a list of str, got {_describe(value)}. {fix}"
        )
    for item in value:
        _check_str(record, arg, item, fix=fix)


def _check_items(record: str, arg: str, value: object, kind: type, *, example: str) -> None:
    fix = f"Pass a list of {kind.__name__} objects, e.g. {arg}=[{example}]."
    if not isinstance(value, tuple):
        raise TypeError(
            f"{record}({arg}={value!r}): {arg} must be a list of {kind.__name__}, "
            f"got {_describe(value)}. {fix}"
        )
    for item in value:
        if not isinstance(item, kind):
            raise TypeError(
                f"{record}({arg}=...): every item of {arg} must be a {kind.__name__}, "
                f"got {item!r} ({_describe(item)}). {fix}"
            )


# --- converters ---------------------------------------------------------------------------------
#
# Plain named functions, one per input type: mypy's attrs plugin types __init__ from them and
# supports neither generic converters nor converter factories.


def _as_tuple(value: object) -> object:
    # A lone str is iterable too; tuple("torch") would silently become ("t", "o", ...).
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return value
    return tuple(value)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return _as_tuple(value)  # type: ignore[return-value]  # the check that follows rejects it


def _path_tuple(value: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    converted = _as_tuple(value)
    if not isinstance(converted, tuple):
        return converted  # type: ignore[return-value]  # the check that follows rejects it
    return tuple(os.fspath(item) if isinstance(item, os.PathLike) else item for item in converted)


def _index_tuple(value: Iterable[PipIndex]) -> tuple[PipIndex, ...]:
    return _as_tuple(value)  # type: ignore[return-value]  # the check that follows rejects it


def _volume_tuple(value: Iterable[Volume]) -> tuple[Volume, ...]:
    return _as_tuple(value)  # type: ignore[return-value]  # the check that follows rejects it


def _plugin_tuple(value: Iterable[Plugin]) -> tuple[Plugin, ...]:
    return _as_tuple(value)  # type: ignore[return-value]  # the check that follows rejects it


def _whole_seconds(value: float) -> int:
    # sky.time.minutes(10) is 600.0: a float that is a whole number is taken as that int.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # type: ignore[return-value]  # the check that follows rejects it


def _path(value: str | os.PathLike[str]) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


_Collectors: TypeAlias = sky_metrics.Collector | sky_metrics.Default


def _metrics(value: _Collectors | Iterable[_Collectors] | None) -> MetricsSetting:
    if value is None:
        return None
    if isinstance(value, sky_metrics.Collector | sky_metrics.Default):
        return (value,)
    return _as_tuple(value)  # type: ignore[return-value]  # the check that follows rejects it


def _check_metrics(value: object) -> None:
    fix = (
        "Pass a collector, a list of them, e.g. metrics=[sky.metrics.CPU(), "
        'sky.metrics.Disk("/data")], sky.metrics.Default(), or None to sample nothing.'
    )
    if value is None:
        return
    if not isinstance(value, tuple):
        raise TypeError(
            f"Image(metrics={value!r}): metrics must be collectors from sky.metrics, "
            f"got {_describe(value)}. {fix}"
        )
    for item in value:
        concrete = isinstance(item, sky_metrics.Default) or (
            isinstance(item, sky_metrics.Collector) and bool(item.metric)
        )
        if not concrete:
            raise TypeError(
                f"Image(metrics=...): every item of metrics must be a collector from "
                f"sky.metrics, got {item!r} ({_describe(item)}). {fix}"
            )
    try:
        sky_metrics.expand(value)
    except ValueError as exc:
        raise ValueError(f"Image(metrics=...): {exc}.") from None


class _FrozenMap(Mapping[str, str]):
    """A read-only, hashable ``str -> str`` mapping: what ``Image.env`` holds.

    ``types.MappingProxyType`` would be read-only too, but it is not hashable, and a frozen
    record that cannot be hashed cannot key a cache of offers or resolved specs.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


def _str_map(value: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(value, _FrozenMap) or not isinstance(value, Mapping):
        return value
    return _FrozenMap(value)


def _check_str_map(record: str, arg: str, value: object, *, example: str) -> None:
    fix = f"Pass a dict of str to str, e.g. {arg}={example}."
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{record}({arg}={value!r}): {arg} must be a dict, got {_describe(value)}. {fix}"
        )
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ValueError(
                f"{record}({arg}=...): key {key!r} is not a variable name "
                f"(a non-empty str without '='). {fix}"
            )
        if not isinstance(item, str):
            raise TypeError(
                f"{record}({arg}=...): the value of {key!r} must be a str, got {item!r} "
                f"({_describe(item)}). Quote it, e.g. {{{key!r}: {str(item)!r}}}."
            )


# --- providers ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ProviderConfig:
    """Base class of provider configs (``sky.Local()``, ``sky.AWS()``, ...).

    A provider config only says where machines come from and with what credentials or
    region; it holds no connections. Each provider subclasses it as a frozen attrs class.
    """


@attrs.frozen(kw_only=True)
class Local(ProviderConfig):
    """The embedded local provider: runs N nodes on this machine.

    Each node is a local "machine" with its own address on 127.0.0.x, its own SSH server and
    working directory, so a pool on ``Local`` goes through the same SSH, bootstrap and worker
    path as a cloud pool. It is the provider used when none is given.
    """


#: The OpenSSH client config ``sky.SSH`` reads by default (a missing one is no error).
DEFAULT_SSH_CONFIG = "~/.ssh/config"

_HOST_FIX = 'Pass e.g. hosts=["gpu1", "alice@gpu2:2222"] or hosts=[sky.SSHHost(host="gpu1")].'


def _check_port(record: str, value: object) -> None:
    fix = "Pass the port sshd listens on, e.g. port=22."
    _check_int(record, "port", value, low=1, fix=fix)
    assert isinstance(value, int)
    if value > 65535:
        raise ValueError(f"{record}(port={value!r}): a port is at most 65535. {fix}")


@attrs.frozen(kw_only=True)
class SSHHost:
    """One machine of ``sky.SSH``: its address, and the user and port if not the pool's.

    Attributes:
        host: A host name or address, as ``ssh`` would take it.
        user: The login user; None takes ``SSH.user``.
        port: The sshd port; None takes ``SSH.port``.
    """

    host: str
    user: str | None = None
    port: int | None = None

    def __attrs_post_init__(self) -> None:
        _check_str("SSHHost", "host", self.host, fix=_HOST_FIX)
        if any(c.isspace() for c in self.host) or self.host.startswith("-"):
            raise ValueError(
                f"SSHHost(host={self.host!r}): not a host name or address. {_HOST_FIX}"
            )
        if ":" in self.host and not _is_ipv6(self.host):
            raise ValueError(
                f"SSHHost(host={self.host!r}): a host name has no ':' (only an IPv6 address "
                'does). Pass the port apart, e.g. sky.SSHHost(host="gpu1", port=2222).'
            )
        if self.user is not None:
            _check_str("SSHHost", "user", self.user, fix='Pass e.g. user="alice", or None.')
        if self.port is not None:
            _check_port("SSHHost", self.port)

    @classmethod
    def parse(cls, text: str) -> SSHHost:
        """``host``, ``user@host``, ``host:port`` or ``user@[v6addr]:port`` as a record.

        Raises:
            ValueError: ``text`` is none of those (``"h:22:extra"``, ``"@h"``, ``"[::1"``).
        """
        _check_str("SSH", "hosts", text, fix=_HOST_FIX)
        user, at, rest = text.rpartition("@")
        if at and not user:
            raise _bad_host(text, "the user before '@' is empty")
        port: int | None = None
        if rest.startswith("["):  # an IPv6 address, bracketed to carry a port
            host, bracket, tail = rest[1:].partition("]")
            if not bracket:
                raise _bad_host(text, "the '[' of an IPv6 address has no ']'")
            if tail:
                if not tail.startswith(":"):
                    raise _bad_host(text, f"{tail!r} follows ']' where ':port' goes")
                port = _parse_port(text, tail[1:])
        elif rest.count(":") == 1:
            host, _, tail = rest.partition(":")
            port = _parse_port(text, tail)
        else:
            host = rest
            if ":" in host and not _is_ipv6(host):
                # "h:22:extra" would otherwise be taken whole as a host name, and fail
                # only when the pool opens, as a failed DNS lookup.
                raise _bad_host(
                    text,
                    "it has more than one ':' and is no IPv6 address (an IPv6 address "
                    "with a port goes in brackets: 'user@[v6addr]:port')",
                )
        return cls(host=host, user=user or None, port=port)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)  # a scope, "fe80::1%eth0", included
    except ValueError:
        return False
    return True


def _bad_host(text: str, why: str) -> ValueError:
    return ValueError(
        f"SSH(hosts=[{text!r}]): not a host: {why}. Hosts are 'host', 'user@host', "
        f"'host:port', 'user@host:port' or 'user@[v6addr]:port'. {_HOST_FIX}"
    )


def _parse_port(text: str, port: str) -> int:
    if not port.isdigit():
        raise ValueError(
            f"SSH(hosts=[{text!r}]): {port!r} is not a port number; hosts are "
            f"'user@host:port' with user and port optional. {_HOST_FIX}"
        )
    return int(port)


def jump_hosts(text: str, *, where: str, fix: str) -> tuple[SSHHost, ...]:
    """The jump hosts of a ``ProxyJump`` (or ``ssh -J``) value, in order: each
    ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``, comma-separated; ``none``
    is none.

    Raises:
        ValueError: A part that is none of those, after ``where`` and before ``fix``.
    """
    if text.strip().lower() == "none":
        return ()
    hops = []
    for part in text.split(","):
        spec = part.strip()
        try:
            hops.append(SSHHost.parse(spec.removeprefix("ssh://")))
        except (TypeError, ValueError):
            raise ValueError(
                f"{where} has {spec!r}, which is not [user@]host[:port]. {fix}"
            ) from None
    return tuple(hops)


def _host_tuple(value: Iterable[str | SSHHost]) -> tuple[SSHHost, ...]:
    converted = _as_tuple(value)
    if not isinstance(converted, tuple):
        return converted  # type: ignore[return-value]  # the check that follows rejects it
    return tuple(SSHHost.parse(h) if isinstance(h, str) else h for h in converted)


@attrs.frozen(kw_only=True)
class SSH(ProviderConfig):
    """Machines you already have, reached with your own SSH key: each host is one node.

    What is given here wins over ``ssh_config``, which wins over the defaults, as with
    ``ssh -l user -p port -i key``.

    Attributes:
        hosts: ``"user@host:port"`` strings (user and port optional) or ``SSHHost``
            records, one per node, in node order; a host may be an alias of
            ``ssh_config``.
        user: The login user of hosts that name none; None: the config's ``User``, else
            your user name here.
        port: The sshd port of hosts that name none; None: the config's ``Port``, else 22.
        key: Your private key file, the only one offered; None: the SSH agent's keys
            (``SSH_AUTH_SOCK``), then the config's ``IdentityFile`` for the host, else the
            first of ``~/.ssh/id_ed25519``, ``~/.ssh/id_ecdsa`` and ``~/.ssh/id_rsa``
            that exist.
        ssh_config: The OpenSSH client config read for ``HostName``, ``User``, ``Port``,
            ``IdentityFile``, ``CertificateFile``, ``IdentityAgent``, ``IdentitiesOnly``,
            ``ProxyJump`` and ``ProxyCommand``; None reads none.
        passphrase_env: The name of an environment variable holding the passphrase of
            your passphrase-protected key (the name, never the passphrase: it stays out
            of reprs, configs and logs); None: such a key is left to the SSH agent.
        proxy_jump: The jump hosts every host is reached through, as ``ssh -J`` takes
            them (``"bastion"``, ``"alice@gw:2222,inner-gw"``; each may be an alias of
            ``ssh_config``); wins over the config's ``ProxyJump``, and ``"none"`` goes
            straight there. None: the config's ``ProxyJump``, if any.
    """

    hosts: tuple[SSHHost, ...] = attrs.field(converter=_host_tuple)
    user: str | None = None
    port: int | None = None
    key: str | None = attrs.field(default=None, converter=attrs.converters.optional(_path))
    ssh_config: str | None = attrs.field(
        default=DEFAULT_SSH_CONFIG, converter=attrs.converters.optional(_path)
    )
    passphrase_env: str | None = None
    proxy_jump: str | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.hosts, str):
            raise TypeError(
                f"SSH(hosts={self.hosts!r}): hosts is a list, one host per node. "
                f"Pass hosts=[{self.hosts!r}]."
            )
        _check_items("SSH", "hosts", self.hosts, SSHHost, example='"gpu1", "alice@gpu2:2222"')
        if not self.hosts:
            raise ValueError(f"SSH(hosts=[]): give at least one host. {_HOST_FIX}")
        if self.user is not None:
            _check_str("SSH", "user", self.user, fix='Pass e.g. user="alice", or None.')
        if self.port is not None:
            _check_port("SSH", self.port)
        if self.key is not None:
            _check_str("SSH", "key", self.key, fix='Pass e.g. key="~/.ssh/id_ed25519".')
        if self.ssh_config is not None:
            _check_str(
                "SSH", "ssh_config", self.ssh_config, fix='Pass e.g. ssh_config="~/.ssh/config".'
            )
        name = self.passphrase_env
        if name is not None and (
            not isinstance(name, str) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is None
        ):
            # The value is not echoed: a passphrase passed here by mistake stays unseen.
            raise ValueError(
                "SSH(passphrase_env=...): not the name of an environment variable (letters, "
                "digits and _). Pass the variable's name, e.g. "
                'passphrase_env="SKYWARD_KEY_PASSPHRASE", never the passphrase itself.'
            )
        if self.proxy_jump is not None:
            fix = 'Pass e.g. proxy_jump="alice@bastion:2222", or None.'
            _check_str("SSH", "proxy_jump", self.proxy_jump, fix=fix)
            jump_hosts(self.proxy_jump, where=f"SSH(proxy_jump={self.proxy_jump!r})", fix=fix)


#: ``sky.Container``'s image: the client's Python, on Debian (the engine pulls it).
DEFAULT_CONTAINER_IMAGE = "python:{python_version}-slim"

# A login name as useradd takes it: nothing a shell or sshd_config would read otherwise.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _check_login(record: str, arg: str, value: object, *, fix: str) -> None:
    _check_str(record, arg, value, fix=fix)
    if _USER_NAME.fullmatch(str(value)) is None:
        raise ValueError(
            f"{record}({arg}={value!r}): not a login name (lower-case letters, digits, _ "
            f"and -, at most 32). {fix}"
        )


def _check_image(record: str, arg: str, value: object, *, fix: str) -> None:
    """A container image: a reference ``docker pull`` takes, or a ``sky.DockerImage``."""
    if not isinstance(value, str | DockerImage):
        raise TypeError(
            f"{record}({arg}={value!r}): {arg} must be a str or a sky.DockerImage, got "
            f"{_describe(value)}. {fix}"
        )
    if isinstance(value, str):
        _check_str(record, arg, value, fix=fix)
        problem = check_reference(value)
        if problem is not None:
            raise ValueError(f"{record}({arg}={value!r}): {problem}. {fix}")


def _for_python(image: str | DockerImage, python_version: str) -> str:
    """The image's reference with ``{python_version}`` replaced by the client's ``X.Y``."""
    return str(image).replace("{python_version}", python_version)


@attrs.frozen(kw_only=True)
class Container(ProviderConfig):
    """Nodes in containers on this machine, started with Docker or Podman.

    Each node is a container running sshd on a private network of the pool's own,
    reached over SSH on a port published on 127.0.0.1 only, like any remote machine;
    the containers and the network are removed when the pool closes.

    Attributes:
        image: The image each node runs: a reference (``"python:3.12-slim"``) or a
            ``sky.containers`` image. ``{python_version}`` in it is replaced with this
            client's ``X.Y``. It needs ``/bin/sh``, and sshd or apt-get to install it
            with; and a Python of the client's ``X.Y`` (else python3 and network
            access, for uv to fetch one).
        ssh_user: Who the client logs in as (created in the container when missing).
        binary: The Docker-compatible command line: ``"docker"``, ``"podman"``, or a path.
    """

    image: str | DockerImage = DEFAULT_CONTAINER_IMAGE
    ssh_user: str = "root"
    binary: str = "docker"

    def __attrs_post_init__(self) -> None:
        fix = "Pass e.g. image='python:3.12-slim' or image=sky.containers.cuda('12.9')."
        _check_image("Container", "image", self.image, fix=fix)
        user_fix = "Pass a login name, e.g. ssh_user='root' (the default) or 'ubuntu'."
        _check_login("Container", "ssh_user", self.ssh_user, fix=user_fix)
        binary_fix = "Pass binary='docker', binary='podman', or the path of either."
        _check_str("Container", "binary", self.binary, fix=binary_fix)
        if any(c.isspace() for c in self.binary) or self.binary.startswith("-"):
            raise ValueError(
                f"Container(binary={self.binary!r}): a command name or path, without "
                f"arguments. {binary_fix}"
            )

    def image_reference(self, python_version: str) -> str:
        """The image to run, for a client on Python ``python_version``."""
        return _for_python(self.image, python_version)


#: ``sky.RunPod``'s image: RunPod's PyTorch image, which starts sshd with the pod's
#: ``PUBLIC_KEY`` (the bootstrap fetches the client's Python with uv when it differs).
DEFAULT_RUNPOD_IMAGE = "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"

#: Where ``sky.RunPod`` reads its API key when none is passed.
RUNPOD_API_KEY_ENV = "RUNPOD_API_KEY"
# A RunPod data centre's id: EU-RO-1, US-KS-2, EUR-IS-1, CA-MTL-3, ...
_RUNPOD_DATA_CENTER = re.compile(r"[A-Z]{2,4}-[A-Z]{2,4}-[0-9]+")

_HTTP_URL = re.compile(r"https?://[^\s/]+(/\S*)?")


def _check_url(record: str, name: str, value: object, *, fix: str) -> None:
    _check_str(record, name, value, fix=fix)
    assert isinstance(value, str)
    if _HTTP_URL.fullmatch(value) is None:
        raise ValueError(f"{record}({name}={value!r}): not an http(s) URL. {fix}")


def _check_key(record: str, key: object, env: str) -> None:
    if key is not None and (not isinstance(key, str) or not key):
        # The value is not echoed: it is a credential.
        raise ValueError(
            f"{record}(api_key=...): the API key must be a non-empty string. Pass "
            f"api_key=os.environ['{env}'], or leave it None to read {env}."
        )


def _resolved_key(record: str, key: str | None, env: str, where: str) -> str:
    """The API key given, else the one in ``env``; neither is an error saying how to set one."""
    found = key or os.environ.get(env, "")
    if not found:
        raise ValueError(
            f"sky.{record}(): no API key: {env} is not set and api_key= was not given. "
            f"Create a key at {where} and export {env}=..., or pass sky.{record}(api_key=...)."
        )
    return found


class OneAPIKey:
    """A cloud reached with one API key: ``api_key``, else the one in ``key_env``."""

    api_key: str | None
    #: Where the key is read when none is given, and where a user makes one.
    key_env: ClassVar[str]
    _key_page: ClassVar[str]

    def resolved_api_key(self) -> str:
        """The API key: the one given, else the one in the provider's environment variable
        (``RUNPOD_API_KEY``, ``VAST_API_KEY``, ...).

        Raises:
            ValueError: Neither is set, saying how to set one.
        """
        return _resolved_key(type(self).__name__, self.api_key, self.key_env, self._key_page)


@attrs.frozen(kw_only=True)
class RunPod(OneAPIKey, ProviderConfig):
    """GPU or CPU pods rented from RunPod, through its public REST and GraphQL APIs.

    Each node is one pod running ``container_image``: a GPU pod with the spec's
    accelerators, or, for a spec with no accelerator, a CPU pod of the cheapest CPU flavor
    and vCPU count that meets its ``vcpus`` and ``memory_gb``. The client reaches it over
    SSH on the pod's public IP (RunPod's images start sshd with the ``PUBLIC_KEY`` the pool
    passes). Pods are deleted when the pool closes, and a pod whose client vanished
    deletes itself once ``Spec.ttl`` runs out.

    Attributes:
        api_key: Your RunPod API key; None reads ``RUNPOD_API_KEY``. It is sent only in
            the ``Authorization`` header and never appears in reprs, logs or events.
        container_image: The image each pod runs: a reference or a ``sky.containers``
            image (``{python_version}`` is replaced with this client's ``X.Y``). It must
            start sshd with ``PUBLIC_KEY``, as RunPod's own images do.
        cloud_type: ``"secure"`` (RunPod's data centres) or ``"community"`` (hosts of
            its community cloud; cheaper, less reliable; GPU pods only: RunPod prices its
            CPU pods in the secure cloud alone).
        container_disk_gb: The pod's disk in GB when the spec sets no ``disk_gb``.
        data_center_ids: The data centres pods may run in (``["EU-RO-1", "US-KS-2"]``),
            tried in this order; None: any with capacity.
        network_volume_id: A network volume of yours (its id on RunPod's Storage page)
            mounted on every pod at ``volume_mount_path``; pods then run in its data
            centre, which must be one of ``data_center_ids`` when those are given.
        volume_mount_path: Where the network volume is mounted in each pod.
        api_url: The REST API's base URL (pods).
        graphql_url: The GraphQL API's URL (GPU types and their prices).
        catalog_url: The REST API v2's base URL (CPU flavors and their prices).
    """

    key_env = RUNPOD_API_KEY_ENV
    _key_page = "https://www.runpod.io/console/user/settings"

    api_key: str | None = attrs.field(default=None, repr=False)
    container_image: str | DockerImage = DEFAULT_RUNPOD_IMAGE
    cloud_type: Literal["secure", "community"] = "secure"
    container_disk_gb: int = 50
    data_center_ids: tuple[str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_str_tuple)
    )
    network_volume_id: str | None = None
    volume_mount_path: str = "/workspace"
    api_url: str = "https://rest.runpod.io/v1"
    graphql_url: str = "https://api.runpod.io/graphql"
    catalog_url: str = "https://api.runpod.io/v2"

    def __attrs_post_init__(self) -> None:
        _check_key("RunPod", self.api_key, RUNPOD_API_KEY_ENV)
        fix = (
            "Pass e.g. container_image=sky.containers.runpod_pytorch('2.8') or a reference "
            "such as 'runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04'."
        )
        _check_image("RunPod", "container_image", self.container_image, fix=fix)
        _check_choice("RunPod", "cloud_type", self.cloud_type, ("secure", "community"))
        _check_int(
            "RunPod",
            "container_disk_gb",
            self.container_disk_gb,
            low=1,
            fix="Pass whole GB, e.g. container_disk_gb=50.",
        )
        if self.data_center_ids is not None:
            _check_strings("RunPod", "data_center_ids", self.data_center_ids, example='["EU-RO-1"]')
            for dc in self.data_center_ids:
                if _RUNPOD_DATA_CENTER.fullmatch(dc) is None:
                    raise ValueError(
                        f"RunPod(data_center_ids=...): {dc!r} is not a data centre id; pass "
                        "ids as RunPod's console lists them, e.g. ['EU-RO-1', 'US-KS-2']."
                    )
            if not self.data_center_ids:
                raise ValueError(
                    "RunPod(data_center_ids=[]): no data centre could run a pod. Pass one "
                    "or more, e.g. ['EU-RO-1'], or None for any."
                )
        if self.network_volume_id is not None:
            fix = "Pass the volume's id from RunPod's console (Storage), e.g. 'a1b2c3d4e5'."
            _check_str("RunPod", "network_volume_id", self.network_volume_id, fix=fix)
        fix = "Pass an absolute path in the pod, e.g. volume_mount_path='/workspace'."
        _check_str("RunPod", "volume_mount_path", self.volume_mount_path, fix=fix)
        if not self.volume_mount_path.startswith("/"):
            raise ValueError(
                f"RunPod(volume_mount_path={self.volume_mount_path!r}): not an absolute path. {fix}"
            )
        for name in ("api_url", "graphql_url", "catalog_url"):
            default = attrs.fields_dict(RunPod)[name].default
            fix = f"Pass the API's URL, e.g. {name}={default!r}."
            _check_url("RunPod", name, getattr(self, name), fix=fix)

    def image_reference(self, python_version: str) -> str:
        """The image each pod runs, for a client on Python ``python_version``."""
        return _for_python(self.container_image, python_version)


#: ``sky.VastAI``'s image: PyTorch's own (Vast's SSH launch mode adds sshd to any image;
#: the bootstrap fetches the client's Python with uv when the image's differs).
DEFAULT_VASTAI_IMAGE = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"

#: Where ``sky.VastAI`` reads its API key when none is passed.
VASTAI_API_KEY_ENV = "VAST_API_KEY"


@attrs.frozen(kw_only=True)
class VastAI(OneAPIKey, ProviderConfig):
    """GPU machines rented on Vast.ai's marketplace, through its REST API.

    Each node is one instance of ``docker_image`` on the cheapest machine offered with the
    spec's GPUs (on demand, or as an interruptible instance at the machine's minimum bid
    for spot); the client reaches it over SSH with the pool's own key, attached to the
    instance. Instances are destroyed when the pool closes, and one whose client vanished
    destroys itself once ``Spec.ttl`` runs out (with the key Vast gives each instance).

    Attributes:
        api_key: Your Vast.ai API key; None reads ``VAST_API_KEY``. It is sent only in the
            ``Authorization`` header and never appears in reprs, logs or events.
        docker_image: The image each instance runs: a reference or a ``sky.containers``
            image (``{python_version}`` is replaced with this client's ``X.Y``).
        disk_gb: Each instance's disk, in GB, when the spec sets no ``disk_gb``.
        verified_only: Rent only machines Vast has verified.
        min_reliability: The least reliability score (0 to 1) a machine may have.
        api_url: The REST API's base URL.
    """

    key_env = VASTAI_API_KEY_ENV
    _key_page = "https://cloud.vast.ai/manage-keys/"

    api_key: str | None = attrs.field(default=None, repr=False)
    docker_image: str | DockerImage = DEFAULT_VASTAI_IMAGE
    disk_gb: int = 50
    verified_only: bool = True
    min_reliability: float = 0.95
    api_url: str = "https://console.vast.ai/api/v0"

    def __attrs_post_init__(self) -> None:
        _check_key("VastAI", self.api_key, VASTAI_API_KEY_ENV)
        fix = (
            "Pass e.g. docker_image=sky.containers.pytorch('2.8', cuda='12.8') or a reference "
            "such as 'pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime'."
        )
        _check_image("VastAI", "docker_image", self.docker_image, fix=fix)
        _check_int("VastAI", "disk_gb", self.disk_gb, low=1, fix="Pass whole GB, e.g. disk_gb=50.")
        _check_bool("VastAI", "verified_only", self.verified_only)
        if not _is_number(self.min_reliability) or not 0 <= self.min_reliability <= 1:
            raise ValueError(
                f"VastAI(min_reliability={self.min_reliability!r}): a score from 0 to 1. "
                "Pass e.g. min_reliability=0.95."
            )
        _check_url(
            "VastAI",
            "api_url",
            self.api_url,
            fix="Pass e.g. api_url='https://console.vast.ai/api/v0'.",
        )

    def image_reference(self, python_version: str) -> str:
        """The image each instance runs, for a client on Python ``python_version``."""
        return _for_python(self.docker_image, python_version)


#: Where ``sky.Lambda`` reads its API key when none is passed.
LAMBDA_API_KEY_ENV = "LAMBDA_API_KEY"

# A Lambda Cloud region's name: us-east-1, europe-central-1, asia-northeast-2, ...
_LAMBDA_REGION = re.compile(r"[a-z]+(-[a-z]+)*-\d+")
# A Lambda file system's name, as Lambda takes it.
_LAMBDA_FILE_SYSTEM = re.compile(r"[a-zA-Z][0-9a-zA-Z-]{0,59}")


@attrs.frozen(kw_only=True)
class Lambda(OneAPIKey, ProviderConfig):
    """GPU instances rented from Lambda Cloud (On-Demand Cloud), through its API v1.

    Each node is one instance of the cheapest instance type with the spec's GPUs
    (``gpu_<N>x_<model>``), launched in a region that has capacity (the next region, then
    the next type, when Lambda has none left). The pool's public key is registered as the
    SSH key ``skyward-<job>`` and a host key made for the instance travels in its cloud-init
    user data, so the client knows the host key before it connects. Instances are
    terminated and the key deleted when the pool closes. An instance whose client vanished
    is NOT terminated by itself (Lambda gives an instance no credential of its own, and an
    OS shutdown does not end its billing): see docs/providers.md.

    Attributes:
        api_key: Your Lambda Cloud API key; None reads ``LAMBDA_API_KEY``. It is sent only
            in the ``Authorization`` header and never appears in reprs, logs or events.
        region: The region instances launch in; None: any region with capacity.
        file_system: A persistent file system of yours to attach to every instance, by
            name; it is mounted at ``/lambda/nfs/<name>``. A file system attaches only in
            its own region: ``region`` must name it.
        username: Who the client logs in as: the Lambda Stack image's ``ubuntu``.
        api_url: The API's base URL.
    """

    key_env = LAMBDA_API_KEY_ENV
    _key_page = "https://cloud.lambda.ai/api-keys"

    api_key: str | None = attrs.field(default=None, repr=False)
    region: str | None = None
    file_system: str | None = None
    username: str = "ubuntu"
    api_url: str = "https://cloud.lambda.ai/api/v1"

    def __attrs_post_init__(self) -> None:
        _check_key("Lambda", self.api_key, LAMBDA_API_KEY_ENV)
        if self.region is not None:
            fix = "Pass e.g. region='us-east-1', or None for any region with capacity."
            _check_str("Lambda", "region", self.region, fix=fix)
            if _LAMBDA_REGION.fullmatch(self.region) is None:
                raise ValueError(f"Lambda(region={self.region!r}): not a region name. {fix}")
        if self.file_system is not None:
            fix = "Pass the name of one of your file systems (Lambda's console lists them)."
            _check_str("Lambda", "file_system", self.file_system, fix=fix)
            if _LAMBDA_FILE_SYSTEM.fullmatch(self.file_system) is None:
                raise ValueError(
                    f"Lambda(file_system={self.file_system!r}): not a file system's name "
                    f"(a letter, then letters, digits and hyphens, at most 60). {fix}"
                )
            if self.region is None:
                raise ValueError(
                    f"Lambda(file_system={self.file_system!r}) needs region=, the file "
                    "system's region: a file system attaches only to instances in its region. "
                    "Pass e.g. region='us-east-1'."
                )
        user_fix = "Pass the image's login name, e.g. username='ubuntu' (the default)."
        _check_login("Lambda", "username", self.username, fix=user_fix)
        _check_url(
            "Lambda",
            "api_url",
            self.api_url,
            fix="Pass e.g. api_url='https://cloud.lambda.ai/api/v1'.",
        )


#: Where ``sky.Hyperstack`` reads its API key when none is passed.
HYPERSTACK_API_KEY_ENV = "HYPERSTACK_API_KEY"

#: ``sky.Hyperstack``'s image: Hyperstack's Ubuntu 22.04 with the NVIDIA driver and CUDA.
DEFAULT_HYPERSTACK_IMAGE = "Ubuntu Server 22.04 LTS R535 CUDA 12.2"

# A Hyperstack region's name: CANADA-1, NORWAY-1, US-1, ...
_HYPERSTACK_REGION = re.compile(r"[A-Z]+(-[A-Z]+)*-\d+")


@attrs.frozen(kw_only=True)
class Hyperstack(OneAPIKey, ProviderConfig):
    """GPU virtual machines rented from Hyperstack (NexGen Cloud), through its Infrahub API.

    Each node is one VM of the cheapest flavor with the spec's GPUs (``n3-H100x1``, ...)
    that is in stock, in a region that has it (the next region, then the next flavor, when
    Hyperstack has none left). VMs live in an environment per region named
    ``skyward-<region>`` (made once and kept); the pool's public key is imported there as
    the keypair ``skyward-<job>-<region>``, and a host key made for the VM travels in its
    cloud-init user data, so the client knows the host key before it connects. Each VM gets
    a public (floating) IP and a firewall rule that lets SSH in from ``ssh_cidr``. VMs are
    deleted and the keypairs with them when the pool closes. A VM whose client vanished is
    NOT deleted by itself (Hyperstack gives a VM no credential of its own, and an OS
    shutdown does not delete it): see docs/providers.md.

    Attributes:
        api_key: Your Hyperstack API key; None reads ``HYPERSTACK_API_KEY``. It is sent only
            in the ``api_key`` header and never appears in reprs, logs or events.
        region: The region VMs launch in (``"CANADA-1"``, ``"NORWAY-1"``, ``"US-1"``);
            None: any region with stock.
        image: The OS image VMs boot, by Hyperstack's name for it (``GET /core/images``).
        username: Who the client logs in as: the Ubuntu images' ``ubuntu``.
        ssh_cidr: Where SSH may come from, in the firewall rule each VM is created with.
        api_url: The API's base URL.
    """

    key_env = HYPERSTACK_API_KEY_ENV
    _key_page = "https://console.hyperstack.cloud (API Keys)"

    api_key: str | None = attrs.field(default=None, repr=False)
    region: str | None = None
    image: str = DEFAULT_HYPERSTACK_IMAGE
    username: str = "ubuntu"
    ssh_cidr: str = "0.0.0.0/0"
    api_url: str = "https://infrahub-api.nexgencloud.com/v1"

    def __attrs_post_init__(self) -> None:
        _check_key("Hyperstack", self.api_key, HYPERSTACK_API_KEY_ENV)
        if self.region is not None:
            fix = "Pass e.g. region='CANADA-1', or None for any region with stock."
            _check_str("Hyperstack", "region", self.region, fix=fix)
            if _HYPERSTACK_REGION.fullmatch(self.region) is None:
                raise ValueError(
                    f"Hyperstack(region={self.region!r}): not a region name (upper case, "
                    f"as Hyperstack writes them). {fix}"
                )
        image_fix = (
            f"Pass an image's name as Hyperstack lists it, e.g. image={DEFAULT_HYPERSTACK_IMAGE!r}."
        )
        _check_str("Hyperstack", "image", self.image, fix=image_fix)
        user_fix = "Pass the image's login name, e.g. username='ubuntu' (the default)."
        _check_login("Hyperstack", "username", self.username, fix=user_fix)
        cidr_fix = "Pass an IPv4 network, e.g. ssh_cidr='203.0.113.7/32' (your address)."
        _check_str("Hyperstack", "ssh_cidr", self.ssh_cidr, fix=cidr_fix)
        try:
            ipaddress.IPv4Network(self.ssh_cidr)
        except ValueError as exc:
            raise ValueError(f"Hyperstack(ssh_cidr={self.ssh_cidr!r}): {exc}. {cidr_fix}") from None
        _check_url(
            "Hyperstack",
            "api_url",
            self.api_url,
            fix="Pass e.g. api_url='https://infrahub-api.nexgencloud.com/v1'.",
        )


#: Where ``sky.Vultr`` reads its API key when none is passed.
VULTR_API_KEY_ENV = "VULTR_API_KEY"

#: ``sky.Vultr``'s operating system: Vultr's ``Ubuntu 22.04 LTS x64`` (``GET /os``).
DEFAULT_VULTR_OS_ID = 1743

# A Vultr region's id: ewr, lax, ams, ...
_VULTR_REGION = re.compile(r"[a-z]{3,4}")


@attrs.frozen(kw_only=True)
class Vultr(OneAPIKey, ProviderConfig):
    """GPU virtual machines (Cloud GPU, ``vcg`` plans) rented from Vultr, through its API v2.

    Each node is one instance of the cheapest plan with the spec's whole GPUs, created in a
    region whose availability lists the plan (the next region, then the next plan, when
    Vultr has none left). The pool's public key is registered as the SSH key
    ``skyward-<job>`` and a host key made for the instance travels in its cloud-init user
    data, so the client knows the host key before it connects. Instances are deleted and
    the key with them when the pool closes. An instance whose client vanished is NOT
    deleted by itself (Vultr gives an instance no credential of its own, and a stopped
    instance still bills): see docs/providers.md.

    Attributes:
        api_key: Your Vultr API key; None reads ``VULTR_API_KEY``. It is sent only in the
            ``Authorization`` header and never appears in reprs, logs or events. Vultr
            refuses a key used from an address its access control does not allow.
        region: The region instances are created in (``ewr``, ``ams``...); None: any region
            that has the plan.
        os_id: The operating system instances boot, by Vultr's id for it (``GET /os``).
        username: Who the client logs in as: ``root`` on Vultr's images.
        api_url: The API's base URL.
    """

    key_env = VULTR_API_KEY_ENV
    _key_page = "https://my.vultr.com/settings/#settingsapi"

    api_key: str | None = attrs.field(default=None, repr=False)
    region: str | None = None
    os_id: int = DEFAULT_VULTR_OS_ID
    username: str = "root"
    api_url: str = "https://api.vultr.com/v2"

    def __attrs_post_init__(self) -> None:
        _check_key("Vultr", self.api_key, VULTR_API_KEY_ENV)
        if self.region is not None:
            fix = "Pass e.g. region='ewr', or None for any region that has the plan."
            _check_str("Vultr", "region", self.region, fix=fix)
            if _VULTR_REGION.fullmatch(self.region) is None:
                raise ValueError(
                    f"Vultr(region={self.region!r}): not a region id (three or four lower-case "
                    f"letters, as Vultr writes them). {fix}"
                )
        os_fix = f"Pass the id of an OS as Vultr lists it, e.g. os_id={DEFAULT_VULTR_OS_ID}."
        if not isinstance(self.os_id, int) or isinstance(self.os_id, bool):
            raise TypeError(
                f"Vultr(os_id={self.os_id!r}): os_id must be an int, got "
                f"{_describe(self.os_id)}. {os_fix}"
            )
        if self.os_id <= 0:
            raise ValueError(f"Vultr(os_id={self.os_id!r}): must be above 0. {os_fix}")
        user_fix = "Pass the image's login name, e.g. username='root' (the default)."
        _check_login("Vultr", "username", self.username, fix=user_fix)
        _check_url(
            "Vultr", "api_url", self.api_url, fix="Pass e.g. api_url='https://api.vultr.com/v2'."
        )


#: Where ``sky.Verda`` reads its OAuth client's id and secret when none are passed.
VERDA_CLIENT_ID_ENV = "VERDA_CLIENT_ID"
VERDA_CLIENT_SECRET_ENV = "VERDA_CLIENT_SECRET"

#: ``sky.Verda``'s image: Verda's Ubuntu 24.04 with the NVIDIA driver, CUDA and Docker.
DEFAULT_VERDA_IMAGE = "ubuntu-24.04-cuda-12.8-open-docker"

# A Verda location's code: FIN-01, FIN-02, ICE-01, ...
_VERDA_LOCATION = re.compile(r"[A-Z]{2,5}-\d{2}")


@attrs.frozen(kw_only=True)
class Verda(ProviderConfig):
    """GPU instances rented from Verda (formerly DataCrunch), through its public API.

    Each node is one instance of the cheapest instance type with the spec's GPUs
    (``1H100.80S.30V``, ...) that Verda has available, in a location that has it (the next
    location, then the next type, when Verda has none left). The pool's public key is
    registered as the SSH key ``skyward-<job>``, and a host key made for each instance
    travels in a startup script of its own, so the client knows the host key before it
    logs in. Instances are deleted (their OS volumes with them) and the SSH key and
    scripts with them when the pool closes. An instance whose client vanished is NOT
    deleted by itself (Verda gives an instance no credential of its own, and an OS shutdown
    keeps it billing): see docs/providers.md.

    Attributes:
        client_id: Your API client's id; None reads ``VERDA_CLIENT_ID``.
        client_secret: Your API client's secret; None reads ``VERDA_CLIENT_SECRET``. It is
            sent only to the token endpoint, never appears in reprs, logs or events; the
            bearer token it buys travels in the ``Authorization`` header only.
        location: The location instances launch in (``"FIN-01"``, ``"ICE-01"``); None: any
            location with the type available.
        image: The OS image instances boot, by Verda's name for it (``GET /images``).
        username: Who the client logs in as: Verda's images log ``root`` in.
        api_url: The API's base URL.
    """

    client_id: str | None = attrs.field(default=None, repr=False)
    client_secret: str | None = attrs.field(default=None, repr=False)
    location: str | None = None
    image: str = DEFAULT_VERDA_IMAGE
    username: str = "root"
    api_url: str = "https://api.verda.com/v1"

    def __attrs_post_init__(self) -> None:
        for arg, value, env in (
            ("client_id", self.client_id, VERDA_CLIENT_ID_ENV),
            ("client_secret", self.client_secret, VERDA_CLIENT_SECRET_ENV),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                # The value is not echoed: it is a credential.
                raise ValueError(
                    f"Verda({arg}=...): must be a non-empty string. Pass "
                    f"{arg}=os.environ['{env}'], or leave it None to read {env}."
                )
        if self.location is not None:
            fix = "Pass e.g. location='FIN-01', or None for any location with stock."
            _check_str("Verda", "location", self.location, fix=fix)
            if _VERDA_LOCATION.fullmatch(self.location) is None:
                raise ValueError(
                    f"Verda(location={self.location!r}): not a location code (upper case, "
                    f"as Verda writes them). {fix}"
                )
        image_fix = f"Pass an image's name as Verda lists it, e.g. image={DEFAULT_VERDA_IMAGE!r}."
        _check_str("Verda", "image", self.image, fix=image_fix)
        user_fix = "Pass the image's login name, e.g. username='root' (the default)."
        _check_login("Verda", "username", self.username, fix=user_fix)
        _check_url(
            "Verda", "api_url", self.api_url, fix="Pass e.g. api_url='https://api.verda.com/v1'."
        )

    def resolved_credentials(self) -> tuple[str, str]:
        """The client's id and secret: those given, else ``VERDA_CLIENT_ID`` and
        ``VERDA_CLIENT_SECRET``.

        Raises:
            ValueError: One is missing, saying how to set it.
        """
        found = []
        for arg, value, env in (
            ("client_id", self.client_id, VERDA_CLIENT_ID_ENV),
            ("client_secret", self.client_secret, VERDA_CLIENT_SECRET_ENV),
        ):
            value = value or os.environ.get(env, "")
            if not value:
                raise ValueError(
                    f"sky.Verda(): no {arg}: {env} is not set and {arg}= was not given. "
                    "Create an API client at https://console.verda.com (Keys, Cloud API "
                    f"credentials) and export {VERDA_CLIENT_ID_ENV}=... "
                    f"{VERDA_CLIENT_SECRET_ENV}=..., or pass sky.Verda({arg}=...)."
                )
            found.append(value)
        return found[0], found[1]


#: Where ``sky.Scaleway`` reads its secret key and its Project when none are passed.
SCW_SECRET_KEY_ENV = "SCW_SECRET_KEY"
SCW_DEFAULT_PROJECT_ID_ENV = "SCW_DEFAULT_PROJECT_ID"

#: ``sky.Scaleway``'s image: Scaleway's Ubuntu 24.04 "GPU OS" (NVIDIA driver, CUDA,
#: Docker), by its marketplace label.
DEFAULT_SCALEWAY_IMAGE = "ubuntu_noble_gpu_os_13_nvidia"

# A Scaleway zone: fr-par-1, nl-ams-1, pl-waw-2, ...
_SCALEWAY_ZONE = re.compile(r"[a-z]{2}-[a-z]{3}-\d")
# A Project's id is a UUID.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@attrs.frozen(kw_only=True)
class Scaleway(ProviderConfig):
    """GPU Instances rented from Scaleway, through its Instance API.

    Each node is one GPU Instance of the cheapest commercial type with the spec's GPUs
    (``L4-1-24G``, ``H100-1-80G``...) in a zone whose availability does not say
    ``shortage`` (the next zone, then the next type, when Scaleway has none left). The
    pool's public key is registered as the Project's SSH key ``skyward-<job>`` (Scaleway's
    images install the Project's keys at boot) and a host key made for the Instance
    travels in its cloud-init user data, so the client knows the host key before it
    connects. Instances are terminated, their block volumes deleted and the SSH key with
    them when the pool closes. An Instance whose client vanished is NOT ended by itself
    (Scaleway gives an Instance no credential of its own, and a powered-off Instance still
    bills its volumes and IP): see docs/providers.md.

    Attributes:
        secret_key: Your API key's secret key; None reads ``SCW_SECRET_KEY``. It is sent
            only in the ``X-Auth-Token`` header and never appears in reprs, logs or events.
        project_id: The Project Instances and the SSH key are made in; None reads
            ``SCW_DEFAULT_PROJECT_ID``.
        zone: The zone Instances are created in (``"fr-par-2"``); None: any of Scaleway's
            GPU zones that has the type.
        image: The image Instances boot, by its marketplace label or id.
        username: Who the client logs in as: ``root`` on Scaleway's images.
        api_url: The API's base URL.
    """

    secret_key: str | None = attrs.field(default=None, repr=False)
    project_id: str | None = None
    zone: str | None = None
    image: str = DEFAULT_SCALEWAY_IMAGE
    username: str = "root"
    api_url: str = "https://api.scaleway.com"

    def __attrs_post_init__(self) -> None:
        if self.secret_key is not None and (
            not isinstance(self.secret_key, str) or not self.secret_key
        ):
            # The value is not echoed: it is a credential.
            raise ValueError(
                "Scaleway(secret_key=...): must be a non-empty string. Pass "
                f"secret_key=os.environ['{SCW_SECRET_KEY_ENV}'], or leave it None to read "
                f"{SCW_SECRET_KEY_ENV}."
            )
        if self.project_id is not None:
            _check_project(self.project_id, "the argument")
        if self.zone is not None:
            fix = "Pass e.g. zone='fr-par-2', or None for any GPU zone that has the type."
            _check_str("Scaleway", "zone", self.zone, fix=fix)
            if _SCALEWAY_ZONE.fullmatch(self.zone) is None:
                raise ValueError(
                    f"Scaleway(zone={self.zone!r}): not a zone (region and number, lower "
                    f"case, as Scaleway writes them). {fix}"
                )
        image_fix = f"Pass an image's label or id, e.g. image={DEFAULT_SCALEWAY_IMAGE!r}."
        _check_str("Scaleway", "image", self.image, fix=image_fix)
        user_fix = "Pass the image's login name, e.g. username='root' (the default)."
        _check_login("Scaleway", "username", self.username, fix=user_fix)
        _check_url(
            "Scaleway",
            "api_url",
            self.api_url,
            fix="Pass e.g. api_url='https://api.scaleway.com'.",
        )

    def resolved_credentials(self) -> tuple[str, str]:
        """The secret key and the Project's id: those given, else ``SCW_SECRET_KEY`` and
        ``SCW_DEFAULT_PROJECT_ID``.

        Raises:
            ValueError: One is missing (or the Project's id is not one), saying how to fix it.
        """
        secret = self.secret_key or os.environ.get(SCW_SECRET_KEY_ENV, "")
        if not secret:
            raise ValueError(
                f"sky.Scaleway(): no secret key: {SCW_SECRET_KEY_ENV} is not set and "
                "secret_key= was not given. Create an API key at "
                "https://console.scaleway.com/iam/api-keys and export "
                f"{SCW_SECRET_KEY_ENV}=..., or pass sky.Scaleway(secret_key=...)."
            )
        project = self.project_id or os.environ.get(SCW_DEFAULT_PROJECT_ID_ENV, "")
        if not project:
            raise ValueError(
                f"sky.Scaleway(): no Project: {SCW_DEFAULT_PROJECT_ID_ENV} is not set and "
                "project_id= was not given. Copy your Project's id from "
                "https://console.scaleway.com/project/settings and export "
                f"{SCW_DEFAULT_PROJECT_ID_ENV}=..., or pass sky.Scaleway(project_id=...)."
            )
        _check_project(project, SCW_DEFAULT_PROJECT_ID_ENV)
        return secret, project

    def resolved_api_key(self) -> str:
        """The secret key (see :meth:`resolved_credentials`).

        Raises:
            ValueError: It or the Project is missing, saying how to set it.
        """
        return self.resolved_credentials()[0]


def _check_project(project: object, source: str) -> None:
    fix = (
        "Pass the id of a Project (a UUID, from https://console.scaleway.com/project/settings), "
        f"or leave project_id None to read {SCW_DEFAULT_PROJECT_ID_ENV}."
    )
    _check_str("Scaleway", "project_id", project, fix=fix)
    assert isinstance(project, str)
    if _UUID.fullmatch(project) is None:
        raise ValueError(
            f"Scaleway(project_id={project!r}) (from {source}): not a Project id (a "
            f"lower-case UUID). {fix}"
        )


#: Where ``sky.Novita`` reads its API key when none is passed.
NOVITA_API_KEY_ENV = "NOVITA_API_KEY"

#: ``sky.Novita``'s image: PyTorch's own (the instance's startup command installs sshd
#: when the image has none; the bootstrap fetches the client's Python with uv).
DEFAULT_NOVITA_IMAGE = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"


@attrs.frozen(kw_only=True)
class Novita(OneAPIKey, ProviderConfig):
    """GPU instances rented from Novita AI, through its GPU instance API.

    Each node is one instance of ``docker_image`` on the cheapest GPU product with the
    spec's GPUs (the next product when Novita has no capacity left for one). Novita runs
    the image with a startup command of Skyward's that authorizes the pool's public key,
    installs a host key made for the instance (so the client knows it before it connects)
    and starts sshd (installing it when the image has none); the client reaches it on the
    public port Novita maps to its port 22. Instances are deleted when the pool closes. An
    instance whose client vanished is NOT ended by itself (Novita gives an instance no
    credential of its own): it bills until it is deleted; see docs/providers.md.

    Attributes:
        api_key: Your Novita API key; None reads ``NOVITA_API_KEY``. It is sent only in
            the ``Authorization`` header and never appears in reprs, logs or events.
        docker_image: The image each instance runs: a reference or a ``sky.containers``
            image (``{python_version}`` is replaced with this client's ``X.Y``). It needs
            ``/bin/sh``, and sshd or apt-get to install it with.
        cluster_id: The cluster (data centre) instances are created in, as Novita's
            console lists them; None: any cluster Novita picks.
        rootfs_gb: Each instance's root file system in GB when the spec sets no
            ``disk_gb`` (Novita takes 10 to 6144).
        api_url: The GPU instance API's base URL.
    """

    key_env = NOVITA_API_KEY_ENV
    _key_page = "https://novita.ai/settings/key-management"

    api_key: str | None = attrs.field(default=None, repr=False)
    docker_image: str | DockerImage = DEFAULT_NOVITA_IMAGE
    cluster_id: str | None = None
    rootfs_gb: int = 60
    api_url: str = "https://api.novita.ai/gpu-instance/openapi/v1"

    def __attrs_post_init__(self) -> None:
        _check_key("Novita", self.api_key, NOVITA_API_KEY_ENV)
        fix = (
            "Pass e.g. docker_image=sky.containers.pytorch('2.8', cuda='12.8') or a reference "
            "such as 'pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime'."
        )
        _check_image("Novita", "docker_image", self.docker_image, fix=fix)
        if self.cluster_id is not None:
            fix = "Pass a cluster's id as Novita's console lists it, or None for any cluster."
            _check_str("Novita", "cluster_id", self.cluster_id, fix=fix)
            if any(c.isspace() for c in self.cluster_id):
                raise ValueError(
                    f"Novita(cluster_id={self.cluster_id!r}): a cluster's id has no spaces. {fix}"
                )
        _check_int(
            "Novita",
            "rootfs_gb",
            self.rootfs_gb,
            low=10,
            fix="Pass whole GB from 10 to 6144, e.g. rootfs_gb=60.",
        )
        if self.rootfs_gb > 6144:
            raise ValueError(
                f"Novita(rootfs_gb={self.rootfs_gb}): Novita takes at most 6144 GB. Pass "
                "whole GB from 10 to 6144, e.g. rootfs_gb=60."
            )
        _check_url(
            "Novita",
            "api_url",
            self.api_url,
            fix="Pass e.g. api_url='https://api.novita.ai/gpu-instance/openapi/v1'.",
        )

    @property
    def username(self) -> str:
        """Who the client logs in as: root, the container's user."""
        return "root"

    def image_reference(self, python_version: str) -> str:
        """The image each instance runs, for a client on Python ``python_version``."""
        return _for_python(self.docker_image, python_version)


#: Where ``sky.GCP`` reads its service account key and its project when none are passed.
GOOGLE_APPLICATION_CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
GOOGLE_CLOUD_PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"

#: ``sky.GCP``'s image: Google's Deep Learning VM image family on Ubuntu 22.04 with the
#: NVIDIA driver and CUDA (Ubuntu images run cloud-init on the ``user-data`` metadata).
DEFAULT_GCP_IMAGE = (
    "projects/deeplearning-platform-release/global/images/family/"
    "common-cu128-ubuntu-2204-nvidia-570"
)

# A Compute Engine zone: us-central1-a, europe-west4-b, ...
_GCP_ZONE = re.compile(r"[a-z]+-[a-z]+\d+-[a-z]")
# A project id: 6 to 30 lower-case letters, digits and hyphens, starting with a letter.
_GCP_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_GCP_KEY_FIELDS = ("client_email", "private_key")


@attrs.frozen(kw_only=True)
class GCP(ProviderConfig):
    """GPU VMs rented from Google Compute Engine, through its REST API.

    Each node is one VM of the cheapest machine type with the spec's GPUs (an N1 type
    with attached T4, V100, P100 or P4 GPUs, or an A2, A3 or G2 type, whose GPUs come with
    it) in a zone that lists it: the next zone, then the next type, when Compute Engine
    answers ``ZONE_RESOURCE_POOL_EXHAUSTED`` or a quota refusal. The pool's public key
    goes in the VM's ``ssh-keys`` metadata and a host key made for the VM in its cloud-init
    ``user-data``, so the client knows the host key before it connects. VMs are deleted
    when the pool closes. The VM runs as the project's default service account with the
    compute scope, so a VM whose client vanished deletes itself when its worker's lease
    runs out: see docs/providers.md.

    Attributes:
        project: The project VMs are made in; None reads the key file's ``project_id``,
            else ``GOOGLE_CLOUD_PROJECT``.
        zone: The zone VMs are created in (``"us-central1-a"``); None: any zone that lists
            the type.
        credentials_file: A service account's JSON key file; None reads
            ``GOOGLE_APPLICATION_CREDENTIALS``.
        credentials: The JSON key itself, as text (what the CLI sends a server); it is
            never shown in reprs, logs or events.
        image: The boot disk's image or image family, as a path or URL.
        disk_gb: The boot disk's size, in GB.
        username: Who the client logs in as (the ``ssh-keys`` metadata makes the user).
        api_url: The Compute Engine API's base URL.
        billing_url: The Cloud Billing Catalog API's base URL (GPU prices).
    """

    project: str | None = None
    zone: str | None = None
    credentials_file: str | None = None
    credentials: str | None = attrs.field(default=None, repr=False)
    image: str = DEFAULT_GCP_IMAGE
    disk_gb: int = 100
    username: str = "skyward"
    api_url: str = "https://compute.googleapis.com/compute/v1"
    billing_url: str = "https://cloudbilling.googleapis.com/v1"

    def __attrs_post_init__(self) -> None:
        if self.project is not None:
            _check_gcp_project(self.project, "the argument")
        if self.zone is not None:
            fix = "Pass e.g. zone='us-central1-a', or None for any zone that lists the type."
            _check_str("GCP", "zone", self.zone, fix=fix)
            if _GCP_ZONE.fullmatch(self.zone) is None:
                raise ValueError(
                    f"GCP(zone={self.zone!r}): not a zone (region and letter, lower case, as "
                    f"Compute Engine writes them). {fix}"
                )
        if self.credentials_file is not None:
            fix = (
                "Pass the path of a service account's JSON key file, or leave it None to "
                f"read {GOOGLE_APPLICATION_CREDENTIALS_ENV}."
            )
            _check_str("GCP", "credentials_file", self.credentials_file, fix=fix)
        if self.credentials is not None and (
            not isinstance(self.credentials, str) or not self.credentials
        ):
            # The value is not echoed: it is a credential.
            raise ValueError(
                "GCP(credentials=...): must be a service account's JSON key, as text. Pass "
                "credentials_file=... instead, or leave both None to read "
                f"{GOOGLE_APPLICATION_CREDENTIALS_ENV}."
            )
        image_fix = f"Pass an image or image family, e.g. image={DEFAULT_GCP_IMAGE!r}."
        _check_str("GCP", "image", self.image, fix=image_fix)
        if not _is_int(self.disk_gb) or not 10 <= self.disk_gb <= 65536:
            raise ValueError(
                f"GCP(disk_gb={self.disk_gb!r}): the boot disk's size in GB, a whole number "
                "from 10 to 65536. Pass e.g. disk_gb=100 (the default)."
            )
        user_fix = "Pass a login name, e.g. username='skyward' (the default)."
        _check_login("GCP", "username", self.username, fix=user_fix)
        for name, value, example in (
            ("api_url", self.api_url, "https://compute.googleapis.com/compute/v1"),
            ("billing_url", self.billing_url, "https://cloudbilling.googleapis.com/v1"),
        ):
            _check_url("GCP", name, value, fix=f"Pass e.g. {name}={example!r}.")

    def resolved_credentials(self) -> tuple[dict[str, str], str]:
        """The service account's key (its JSON fields) and the project: those given, else
        ``GOOGLE_APPLICATION_CREDENTIALS``'s file, and the key's ``project_id`` or
        ``GOOGLE_CLOUD_PROJECT``.

        Raises:
            ValueError: The key is missing or not a service account key, or no project is
                known, saying how to fix it.
        """
        text, source = self.credentials, "credentials="
        if text is None:
            path = self.credentials_file or os.environ.get(GOOGLE_APPLICATION_CREDENTIALS_ENV)
            source = (
                f"credentials_file={path!r}"
                if self.credentials_file
                else f"{GOOGLE_APPLICATION_CREDENTIALS_ENV}={path!r}"
            )
            if not path:
                raise ValueError(
                    f"sky.GCP(): no service account key: {GOOGLE_APPLICATION_CREDENTIALS_ENV} "
                    "is not set and credentials_file= was not given. Create a key for a "
                    "service account with the Compute Instance Admin (v1) and Service Account "
                    "User roles (https://console.cloud.google.com/iam-admin/serviceaccounts), "
                    f"and export {GOOGLE_APPLICATION_CREDENTIALS_ENV}=/path/to/key.json, or "
                    "pass sky.GCP(credentials_file=...)."
                )
            try:
                with open(path, encoding="utf-8") as file:
                    text = file.read()
            except OSError as exc:
                raise ValueError(
                    f"sky.GCP(): {source}: cannot read the key file ({exc.strerror}). Point it "
                    "at a service account's JSON key file."
                ) from None
        key = _service_account(text, source)
        project = (
            self.project or key.get("project_id") or os.environ.get(GOOGLE_CLOUD_PROJECT_ENV, "")
        )
        if not project:
            raise ValueError(
                "sky.GCP(): no project: the key names none, GOOGLE_CLOUD_PROJECT is not set and "
                f"project= was not given. Export {GOOGLE_CLOUD_PROJECT_ENV}=my-project, or "
                "pass sky.GCP(project=...)."
            )
        _check_gcp_project(project, "the key file or " + GOOGLE_CLOUD_PROJECT_ENV)
        return key, project


def _service_account(text: str, source: str) -> dict[str, str]:
    """A service account key's fields, checked (never echoing the key)."""
    import json

    fix = (
        "Download a JSON key for a service account (IAM > Service accounts > Keys > Add key "
        "> JSON) and point credentials_file or GOOGLE_APPLICATION_CREDENTIALS at it"
    )
    try:
        key = json.loads(text)
    except ValueError:
        key = None
    if not isinstance(key, dict):
        raise ValueError(f"sky.GCP(): {source}: not a JSON key file. {fix}.")
    if key.get("type") != "service_account":
        raise ValueError(
            f"sky.GCP(): {source}: a key of type {key.get('type')!r}, not 'service_account' "
            f"(user credentials from gcloud are not supported). {fix}."
        )
    missing = [f for f in _GCP_KEY_FIELDS if not isinstance(key.get(f), str) or not key[f]]
    if missing:
        raise ValueError(f"sky.GCP(): {source}: the key has no {missing[0]}. {fix}.")
    return {k: v for k, v in key.items() if isinstance(v, str)}


def _check_gcp_project(project: object, source: str) -> None:
    fix = (
        "Pass a project's id (not its name or number), e.g. project='my-project-123', or "
        f"leave it None to read the key file's or {GOOGLE_CLOUD_PROJECT_ENV}."
    )
    _check_str("GCP", "project", project, fix=fix)
    assert isinstance(project, str)
    if _GCP_PROJECT.fullmatch(project) is None:
        raise ValueError(
            f"GCP(project={project!r}) (from {source}): not a project id (6 to 30 lower-case "
            f"letters, digits and hyphens, starting with a letter). {fix}"
        )


#: Where ``sky.JarvisLabs`` reads its API key when none is passed (as JarvisLabs' own
#: ``jl`` CLI and SDK do).
JL_API_KEY_ENV = "JL_API_KEY"

#: JarvisLabs' regions and the backend each is reached at (its SDK's ``REGION_URLS``):
#: instances are created, polled and destroyed at their region's backend; the account's
#: SSH keys, instance list and GPU catalogue at the first.
JARVISLABS_REGIONS: dict[str, str] = {
    "india-01": "https://backendprod.jarvislabs.net",
    "india-noida-01": "https://backendn.jarvislabs.net",
    "europe-01": "https://backendeu.jarvislabs.net",
}


@attrs.frozen(kw_only=True)
class JarvisLabs(OneAPIKey, ProviderConfig):
    """GPU container instances rented from JarvisLabs.ai, through the HTTP API its
    ``jarvislabs`` SDK and ``jl`` CLI use.

    Each node is one container instance of ``template`` (JarvisLabs' framework images,
    ``"pytorch"`` by default, which run sshd) on the cheapest GPU type and region with the
    spec's GPUs free (the next one when JarvisLabs refuses for want of capacity). The pool's
    public key is added to the account's SSH keys (as ``skyward-<job>``) for the pool's
    life; the client logs in as root at the host and port of the instance's ``ssh_str``,
    trusting the host key the instance first presents for that instance only (JarvisLabs
    publishes none). Instances are destroyed when the pool closes. An instance whose client
    vanished is NOT ended by itself (JarvisLabs gives an instance no credential of its
    own): it bills until it is destroyed; see docs/providers.md.

    Attributes:
        api_key: Your JarvisLabs API key; None reads ``JL_API_KEY``. It is sent only in
            the ``Authorization`` header and never appears in reprs, logs or events.
        region: The region instances are created in (``"india-01"``,
            ``"india-noida-01"``, ``"europe-01"``); None: any with the GPUs free.
        template: The framework template each instance runs (``jl templates`` lists
            them); it must run sshd, as JarvisLabs' framework templates do.
        storage_gb: Each instance's disk in GB when the spec sets no ``disk_gb``
            (JarvisLabs' default is 40; europe-01 takes 100 at least).
        api_url: One backend for every region and the account (a proxy's, or a test
            server's); None: JarvisLabs' own backend of each region.
    """

    key_env = JL_API_KEY_ENV
    _key_page = "https://jarvislabs.ai/settings/api-keys"

    api_key: str | None = attrs.field(default=None, repr=False)
    region: str | None = None
    template: str = "pytorch"
    storage_gb: int = 40
    api_url: str | None = None

    def __attrs_post_init__(self) -> None:
        _check_key("JarvisLabs", self.api_key, JL_API_KEY_ENV)
        if self.region is not None:
            _check_choice("JarvisLabs", "region", self.region, JARVISLABS_REGIONS)
        fix = "Pass a template id as `jl templates` lists it, e.g. template='pytorch'."
        _check_str("JarvisLabs", "template", self.template, fix=fix)
        if self.template == "vm" or not re.fullmatch(r"[A-Za-z0-9._-]+", self.template):
            raise ValueError(
                f"JarvisLabs(template={self.template!r}): not a container template id "
                f"(Skyward rents container instances; VM instances are not supported yet). {fix}"
            )
        _check_int(
            "JarvisLabs",
            "storage_gb",
            self.storage_gb,
            low=20,
            fix="Pass whole GB, e.g. storage_gb=40 (100 or more in europe-01).",
        )
        if self.api_url is not None:
            _check_url(
                "JarvisLabs",
                "api_url",
                self.api_url,
                fix="Pass e.g. api_url='https://backendprod.jarvislabs.net', or None.",
            )

    @property
    def username(self) -> str:
        """Who the client logs in as: root, the container's user."""
        return "root"

    def backend(self, region: str | None = None) -> str:
        """The base URL for ``region``'s instances (None: the account's own requests)."""
        if self.api_url is not None:
            return self.api_url.rstrip("/")
        return JARVISLABS_REGIONS[region or "india-01"]


_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
_AWS_ID = {
    "ami": re.compile(r"ami-[0-9a-f]{8,17}"),
    "subnet_id": re.compile(r"subnet-[0-9a-f]{8,17}"),
    "security_group_id": re.compile(r"sg-[0-9a-f]{8,17}"),
}
_AWS_ID_EXAMPLE = {
    "ami": "ami-0123456789abcdef0",
    "subnet_id": "subnet-0123456789abcdef0",
    "security_group_id": "sg-0123456789abcdef0",
}


@attrs.frozen(kw_only=True)
class AWS(ProviderConfig):
    """EC2 instances rented from Amazon Web Services, through EC2's API (boto3).

    Each node is one instance of the cheapest instance type that meets the spec (its GPUs
    listed by EC2, its price by AWS's Price List API; spot prices from EC2's history). The
    pool's public key and a host key made for the instance travel in its user data
    (cloud-init), so the client knows the host key before it connects. An instance whose
    client vanished shuts itself down once ``Spec.ttl`` runs out, and is launched so that
    a shutdown terminates it. Credentials come from boto3's usual chain (environment,
    ``~/.aws``, an instance role), or the named ``profile``.

    Attributes:
        region: The region instances run in.
        ami: The machine image; None: AWS's Deep Learning Base AMI (Ubuntu 22.04, NVIDIA
            driver and CUDA) for GPU nodes, Canonical's Ubuntu 22.04 for CPU nodes,
            looked up in AWS's public SSM parameters.
        username: Who the client logs in as: the image's default user, to whom cloud-init
            gives the pool's key (``"ubuntu"`` on both default images).
        subnet_id: The subnet instances launch in; None: the region's default VPC. The
            client connects to an instance's public IP, or its private IP when it has none
            (a client inside the VPC, or on a VPN to it).
        security_group_id: The group instances get; None: a group named ``skyward`` in
            the VPC, created once and kept, that lets in SSH from ``ssh_cidr`` and any
            traffic between its own members (so nodes reach each other).
        ssh_cidr: Where SSH may come from, in the group Skyward creates.
        instance_profile: An IAM instance profile (name or ARN) the instances run with,
            for S3 and other AWS access from your functions.
        profile: A named profile of ``~/.aws/config``; None: boto3's default chain.
        endpoint_url: Where AWS's APIs are reached; None: AWS itself (a VPC endpoint or
            an emulator otherwise).
        placement: ``"cluster"``: the pool's instances launch into a cluster placement
            group Skyward makes for it (``skyward-<job>``, deleted when the pool closes):
            close together in one availability zone, for the low latency and high
            bandwidth multi-node training wants. ``"spread"``: on distinct hardware each
            (at most 7 per zone). None: where EC2 puts them.
        placement_group: A placement group of yours to launch into (kept when the pool
            closes); instead of ``placement``.
    """

    region: str = "us-east-1"
    ami: str | None = None
    username: str = "ubuntu"
    subnet_id: str | None = None
    security_group_id: str | None = None
    ssh_cidr: str = "0.0.0.0/0"
    instance_profile: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    placement: Literal["cluster", "spread"] | None = None
    placement_group: str | None = None

    def __attrs_post_init__(self) -> None:
        _check_str("AWS", "region", self.region, fix="Pass e.g. region='us-east-1'.")
        if _AWS_REGION.fullmatch(self.region) is None:
            raise ValueError(
                f"AWS(region={self.region!r}): not an AWS region name. Pass e.g. "
                "region='us-east-1' or region='eu-west-1'."
            )
        for name, pattern in _AWS_ID.items():
            value = getattr(self, name)
            if value is None:
                continue
            fix = f"Pass e.g. {name}={_AWS_ID_EXAMPLE[name]!r}, or None."
            _check_str("AWS", name, value, fix=fix)
            if pattern.fullmatch(value) is None:
                raise ValueError(f"AWS({name}={value!r}): not an EC2 id of that kind. {fix}")
        user_fix = "Pass the image's login name, e.g. username='ubuntu' or 'ec2-user'."
        _check_login("AWS", "username", self.username, fix=user_fix)
        cidr_fix = "Pass an IPv4 network, e.g. ssh_cidr='203.0.113.7/32' (your address)."
        _check_str("AWS", "ssh_cidr", self.ssh_cidr, fix=cidr_fix)
        try:
            ipaddress.IPv4Network(self.ssh_cidr)
        except ValueError as exc:
            raise ValueError(f"AWS(ssh_cidr={self.ssh_cidr!r}): {exc}. {cidr_fix}") from None
        for name, fix in (
            ("instance_profile", "Pass a profile's name or ARN, e.g. instance_profile='ml-s3'."),
            ("profile", "Pass a profile of ~/.aws/config, e.g. profile='work'."),
        ):
            if getattr(self, name) is not None:
                _check_str("AWS", name, getattr(self, name), fix=fix)
        if self.endpoint_url is not None:
            fix = "Pass the API's URL, e.g. endpoint_url='https://ec2.us-east-1.amazonaws.com'."
            _check_url("AWS", "endpoint_url", self.endpoint_url, fix=fix)
        if self.placement not in (None, "cluster", "spread"):
            raise ValueError(
                f"AWS(placement={self.placement!r}): placement must be 'cluster' (close "
                "together, for multi-node training), 'spread' (distinct hardware) or None. "
                "Pass e.g. placement='cluster'."
            )
        if self.placement_group is not None:
            fix = "Pass a placement group's name, e.g. placement_group='training'."
            _check_str("AWS", "placement_group", self.placement_group, fix=fix)
            if self.placement is not None:
                raise ValueError(
                    f"AWS(placement={self.placement!r}, placement_group="
                    f"{self.placement_group!r}): pass one of them: placement to have Skyward "
                    "make a group for the pool, placement_group to use one of yours."
                )


#: Where ``sky.TensorDock`` reads its API token when none is passed.
TENSORDOCK_API_TOKEN_ENV = "TENSORDOCK_API_TOKEN"

# A TensorDock location's id, as ``GET /locations`` lists it (a UUID, or a slug).
_TENSORDOCK_LOCATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


@attrs.frozen(kw_only=True)
class TensorDock(OneAPIKey, ProviderConfig):
    """GPU virtual machines rented from TensorDock's marketplace, through its API v2.

    Each node is one VM with the spec's GPUs, in the cheapest location that lists them
    (the next location, then the next GPU model, when TensorDock refuses for capacity). The
    VM gets a dedicated IP; the pool's public key goes in the create's ``ssh_key`` and a
    host key made for the VM in its cloud-init, so the client knows the host key before it
    connects. VMs are deleted when the pool closes. A VM whose client vanished is NOT
    ended by itself (TensorDock gives a VM no credential of its own): it bills until it is
    deleted; see docs/providers.md.

    Attributes:
        api_key: Your TensorDock API token; None reads ``TENSORDOCK_API_TOKEN``. It is sent
            only in the ``Authorization`` header and never appears in reprs, logs or events.
        location: The location VMs are created in, by its id as ``GET /locations`` lists
            it; None: any location that has the GPU.
        image: The OS image, as TensorDock names it (``ubuntu2404``).
        storage_gb: Each VM's disk in GB when the spec sets no ``disk_gb`` (TensorDock
            takes 100 at least).
        vcpus_per_gpu: vCPUs per GPU asked for (at most what the location deploys).
        ram_gb_per_gpu: GB of RAM per GPU asked for (at most what the location deploys).
        username: Who the client logs in as: TensorDock's images' ``user``.
        api_url: The API v2's base URL.
    """

    key_env = TENSORDOCK_API_TOKEN_ENV
    _key_page = "https://dashboard.tensordock.com/developers"

    api_key: str | None = attrs.field(default=None, repr=False)
    location: str | None = None
    image: str = "ubuntu2404"
    storage_gb: int = 100
    vcpus_per_gpu: int = 8
    ram_gb_per_gpu: int = 32
    username: str = "user"
    api_url: str = "https://dashboard.tensordock.com/api/v2"

    def __attrs_post_init__(self) -> None:
        _check_key("TensorDock", self.api_key, TENSORDOCK_API_TOKEN_ENV)
        if self.location is not None:
            fix = (
                "Pass a location's id as GET /locations lists it, or location=None for any "
                "location."
            )
            _check_str("TensorDock", "location", self.location, fix=fix)
            if _TENSORDOCK_LOCATION.fullmatch(self.location) is None:
                raise ValueError(
                    f"TensorDock(location={self.location!r}): not a location id (letters, "
                    f"digits, - and _). {fix}"
                )
        image_fix = "Pass an image TensorDock names, e.g. image='ubuntu2404' (the default)."
        _check_str("TensorDock", "image", self.image, fix=image_fix)
        if not self.image.strip() or any(c.isspace() for c in self.image):
            raise ValueError(f"TensorDock(image={self.image!r}): not an image name. {image_fix}")
        _check_int(
            "TensorDock",
            "storage_gb",
            self.storage_gb,
            low=100,
            fix="Pass whole GB, 100 at least (TensorDock's least), e.g. storage_gb=100.",
        )
        _check_int(
            "TensorDock",
            "vcpus_per_gpu",
            self.vcpus_per_gpu,
            low=1,
            fix="Pass whole vCPUs per GPU, e.g. vcpus_per_gpu=8.",
        )
        _check_int(
            "TensorDock",
            "ram_gb_per_gpu",
            self.ram_gb_per_gpu,
            low=1,
            fix="Pass whole GB per GPU, e.g. ram_gb_per_gpu=32.",
        )
        user_fix = "Pass the image's login name, e.g. username='user' (the default)."
        _check_login("TensorDock", "username", self.username, fix=user_fix)
        _check_url(
            "TensorDock",
            "api_url",
            self.api_url,
            fix="Pass e.g. api_url='https://dashboard.tensordock.com/api/v2'.",
        )


MASSED_COMPUTE_API_KEY_ENV = "MASSED_COMPUTE_API_KEY"
#: The image a Massed Compute instance boots when none is given: Ubuntu Server 24.04, as
#: Massed Compute's own MCP server's end-to-end run launched it (image 184).
DEFAULT_MASSED_COMPUTE_IMAGE = 184


@attrs.frozen(kw_only=True)
class MassedCompute(OneAPIKey, ProviderConfig):
    """GPU VMs rented from Massed Compute, through its VM API v1.

    Each node is one instance (a VM) of the cheapest GPU product with the spec's GPUs that
    Massed Compute has capacity for (the next product when a launch is refused and the
    inventory then shows the product out of capacity). The launch's startup ``command`` is
    Skyward's: it authorizes the pool's public key for root, installs a host key made for
    the instance (so the client knows it before it connects) and runs sshd on port 22 with
    them. Instances are terminated when the pool closes. An instance whose client vanished
    is NOT ended by itself (Massed Compute gives an instance no credential of its own): it
    bills until it is terminated; see docs/providers.md.

    Attributes:
        api_key: Your Massed Compute API key; None reads ``MASSED_COMPUTE_API_KEY``. It is
            sent only in the ``Authorization`` header and never appears in reprs, logs or
            events.
        image_id: The VM image each instance boots (``GET /images`` lists them); it needs
            ``/bin/sh``, ``base64`` and OpenSSH's sshd, as Massed Compute's Ubuntu images have.
        region: The region instances are launched in (a name the inventory's
            ``regions_with_capacity_available`` gives, such as ``"us-central-3"``); None:
            ``"any"``, Massed Compute's pick.
        api_url: The VM API's base URL.
    """

    key_env = MASSED_COMPUTE_API_KEY_ENV
    _key_page = "https://vm.massedcompute.com (the account's API settings)"

    api_key: str | None = attrs.field(default=None, repr=False)
    image_id: int = DEFAULT_MASSED_COMPUTE_IMAGE
    region: str | None = None
    api_url: str = "https://vm.massedcompute.com/api/v1"

    def __attrs_post_init__(self) -> None:
        _check_key("MassedCompute", self.api_key, MASSED_COMPUTE_API_KEY_ENV)
        _check_int(
            "MassedCompute",
            "image_id",
            self.image_id,
            low=1,
            fix="Pass an image's id as GET /images lists it, e.g. image_id=184.",
        )
        if self.region is not None:
            fix = "Pass a region's name such as 'us-central-3', or None for any region."
            _check_str("MassedCompute", "region", self.region, fix=fix)
            if not self.region.strip() or any(c.isspace() for c in self.region):
                raise ValueError(
                    f"MassedCompute(region={self.region!r}): a region's name has no spaces. {fix}"
                )
        _check_url(
            "MassedCompute",
            "api_url",
            self.api_url,
            fix="Pass e.g. api_url='https://vm.massedcompute.com/api/v1'.",
        )

    @property
    def username(self) -> str:
        """Who the client logs in as: root, whom Skyward's startup command authorizes."""
        return "root"


#: The provider configs a ``[providers.NAME]`` table of skyward.toml names by its ``type``.
PROVIDER_TYPES: dict[str, type[ProviderConfig]] = {
    "local": Local,
    "ssh": SSH,
    "container": Container,
    "runpod": RunPod,
    "aws": AWS,
    "vastai": VastAI,
    "lambda": Lambda,
    "hyperstack": Hyperstack,
    "vultr": Vultr,
    "verda": Verda,
    "scaleway": Scaleway,
    "novita": Novita,
    "gcp": GCP,
    "tensordock": TensorDock,
    "massedcompute": MassedCompute,
    "jarvislabs": JarvisLabs,
}


# --- nodes --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Nodes:
    """How many nodes a pool wants, when it is usable, and how far it may grow.

    Attributes:
        desired: The target node count, >= 1.
        max: The ceiling for autoscaling, >= desired; None keeps the pool at ``desired``.
        min: How many ready nodes make the pool usable, 1..desired; None waits for all
            ``desired`` (partial readiness when set).
    """

    desired: int
    max: int | None = None
    min: int | None = None

    def __attrs_post_init__(self) -> None:
        fix = "Pass e.g. sky.Nodes(desired=4, min=2, max=8)."
        _check_int("Nodes", "desired", self.desired, low=1, fix=fix)
        if self.min is not None:
            _check_int("Nodes", "min", self.min, low=1, fix=fix)
            if self.min > self.desired:
                raise ValueError(
                    f"Nodes(min={self.min!r}): min must be between 1 and desired "
                    f"({self.desired}): it is how many ready nodes make the pool usable. "
                    f"Pass min <= {self.desired}, or raise desired."
                )
        if self.max is not None:
            _check_int("Nodes", "max", self.max, low=1, fix=fix)
            if self.max < self.desired:
                raise ValueError(
                    f"Nodes(max={self.max!r}): max must be >= desired ({self.desired}): it is "
                    f"the autoscaling ceiling. Pass max >= {self.desired}, or lower desired."
                )

    @property
    def ready_at(self) -> int:
        """How many ready nodes make the pool usable: ``min``, or all ``desired``."""
        return self.desired if self.min is None else self.min

    @property
    def ceiling(self) -> int:
        """The most nodes the pool may hold: ``max``, or ``desired``."""
        return self.desired if self.max is None else self.max

    @property
    def is_elastic(self) -> bool:
        """Whether the pool may autoscale above ``desired``."""
        return self.ceiling > self.desired


NodeSpec: TypeAlias = int | tuple[int, int] | Nodes

_NODES_FORMS = (
    "nodes= accepts an int (nodes=4: exactly 4), a (low, high) pair (nodes=(2, 8): start at 2, "
    "autoscale up to 8) or a sky.Nodes (sky.Nodes(desired=8, min=4): usable at 4)"
)


def to_nodes(value: NodeSpec) -> Nodes:
    """Normalises any accepted ``nodes=`` form to a :class:`Nodes`.

    Args:
        value: ``4`` (exactly four nodes), ``(2, 8)`` (start at 2, autoscale up to 8, that is
            ``Nodes(desired=2, max=8)``) or a :class:`Nodes`, returned as is. A two-item list
            is taken as a pair, since TOML has no tuples.

    Returns:
        The equivalent :class:`Nodes`.

    Raises:
        ValueError: ``value`` is none of the three forms, or out of range.
    """
    if isinstance(value, Nodes):
        return value
    if _is_int(value):
        assert isinstance(value, int)
        if value < 1:
            raise ValueError(f"nodes={value!r}: a node count must be >= 1. {_NODES_FORMS}.")
        return Nodes(desired=value)
    if isinstance(value, tuple | list) and len(value) == 2 and all(_is_int(v) for v in value):
        low, high = value
        if not 1 <= low <= high:
            raise ValueError(
                f"nodes={value!r}: a (low, high) pair needs 1 <= low <= high. "
                f"Pass e.g. nodes=({max(low, 1)}, {max(low, high, 1)})."
            )
        return Nodes(desired=low, max=high)
    raise ValueError(f"nodes={value!r} ({_describe(value)}) is not a node spec. {_NODES_FORMS}.")


# --- image --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PipIndex:
    """A package index scoped to some packages, e.g. PyTorch's CUDA wheels.

    Attributes:
        url: The index URL.
        packages: The packages installed from this index (the rest come from PyPI).
    """

    url: str
    packages: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)

    def __attrs_post_init__(self) -> None:
        _check_str(
            "PipIndex",
            "url",
            self.url,
            fix='Pass e.g. url="https://download.pytorch.org/whl/cu121".',
        )
        _check_strings("PipIndex", "packages", self.packages, example='["torch", "torchvision"]')


@attrs.frozen(kw_only=True)
class Image:
    """The environment each worker runs in.

    Attributes:
        python: ``"auto"`` (this interpreter's ``X.Y``) or a version such as ``"3.13"``.
        pip: Packages installed with uv.
        pip_indexes: Package indexes scoped to some packages.
        apt: System packages installed with apt-get.
        env: Environment variables exported on the workers.
        shell_vars: Shell snippets evaluated at bootstrap, whose output becomes the variable.
        includes: Local directories or ``.py`` files synced to the workers.
        excludes: Glob patterns skipped within ``includes``.
        skyward_source: Where workers get Skyward: ``"auto"``, ``"local"``, ``"github"`` or
            ``"pypi"``.
        metrics: What each worker samples and streams back as ``Metric`` events: a
            collector from ``sky.metrics``, a list of them, ``sky.metrics.Default()`` (the
            standard set, the default), or None to sample nothing. Stored as a tuple. It
            is not part of the environment's hash: changing it rebuilds nothing.
        bootstrap_timeout: Seconds a node's bootstrap may take.
    """

    python: str = "auto"
    pip: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    pip_indexes: tuple[PipIndex, ...] = attrs.field(default=(), converter=_index_tuple)
    apt: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_str_map)
    shell_vars: Mapping[str, str] = attrs.field(factory=dict, converter=_str_map)
    includes: tuple[str, ...] = attrs.field(default=(), converter=_path_tuple)
    excludes: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    skyward_source: SkywardSource = "auto"
    metrics: MetricsSetting = attrs.field(default=(sky_metrics.Default(),), converter=_metrics)
    bootstrap_timeout: int = attrs.field(default=300, converter=_whole_seconds)

    def __attrs_post_init__(self) -> None:
        if self.python != "auto" and (
            not isinstance(self.python, str) or re.fullmatch(r"\d+\.\d+", self.python) is None
        ):
            raise ValueError(
                f"Image(python={self.python!r}): python must be 'auto' or a 'X.Y' version. "
                'Pass e.g. python="3.13", or python="auto" to match this interpreter.'
            )
        _check_strings("Image", "pip", self.pip, example='["torch", "numpy>=2"]')
        _check_items(
            "Image", "pip_indexes", self.pip_indexes, PipIndex, example='sky.PipIndex(url="...")'
        )
        _check_strings("Image", "apt", self.apt, example='["git", "ffmpeg"]')
        _check_str_map("Image", "env", self.env, example='{"HF_HOME": "/data/hf"}')
        _check_str_map("Image", "shell_vars", self.shell_vars, example='{"IP": "hostname -I"}')
        _check_strings("Image", "includes", self.includes, example='["./src"]')
        _check_strings("Image", "excludes", self.excludes, example='["*.ckpt"]')
        _check_choice("Image", "skyward_source", self.skyward_source, SKYWARD_SOURCES)
        _check_metrics(self.metrics)
        _check_int(
            "Image",
            "bootstrap_timeout",
            self.bootstrap_timeout,
            low=1,
            fix="Pass a whole number of seconds, e.g. bootstrap_timeout=600.",
        )

    @property
    def resolved_python(self) -> str:
        """The ``X.Y`` Python version workers get: ``python``, or this interpreter's if auto."""
        if self.python == "auto":
            return f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.python


DEFAULT_IMAGE = Image()


# --- volumes ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Volume:
    """A bucket mounted as a directory on every worker (FUSE).

    Attributes:
        bucket: The bucket name.
        mount: Where it appears on the workers: an absolute path, not one of
            :data:`RESERVED_MOUNTS` nor inside ``/opt/skyward``.
        prefix: A folder within the bucket to mount instead of its root.
        read_only: Whether the mount is read-only.
        storage: The object-store backend (a ``sky.Storage``); None picks the provider's own.
    """

    bucket: str
    mount: str
    prefix: str = ""
    read_only: bool = True
    storage: object | None = None

    def __attrs_post_init__(self) -> None:
        _check_str("Volume", "bucket", self.bucket, fix='Pass e.g. bucket="my-data".')
        _, found, rest = self.bucket.partition("://")
        name, slash, folder = (rest if found else self.bucket).partition("/")
        if found or slash:
            # "s3://my-data/train" for bucket="my-data", prefix="train": a bucket name
            # holds neither a scheme nor a "/".
            split = f'bucket="{name}"' + (f', prefix="{folder}"' if folder.strip("/") else "")
            raise ValueError(
                f"Volume(bucket={self.bucket!r}): bucket is the bucket's bare name, without "
                f"{'a scheme' if found else 'a folder'}. Pass {split}"
                + (" (the storage= you pass says which service it is on)." if found else ".")
            )
        fix = 'Pass an absolute path of its own, e.g. mount="/data".'
        _check_str("Volume", "mount", self.mount, fix=fix)
        if not posixpath.isabs(self.mount):
            raise ValueError(
                f"Volume(mount={self.mount!r}): mount must be an absolute path on the worker. {fix}"
            )
        # normpath folds "/opt/" and "//opt" onto "/opt" so they cannot slip past the check.
        normal = posixpath.normpath(self.mount)
        if normal.startswith("//"):
            normal = "/" + normal.lstrip("/")
        if normal in RESERVED_MOUNTS or normal.startswith("/opt/skyward/"):
            raise ValueError(
                f"Volume(mount={self.mount!r}): mount must not be one of "
                f"{', '.join(sorted(RESERVED_MOUNTS))} or inside /opt/skyward: the worker's own "
                f"files live there and the mount would hide them. {fix}"
            )
        _check_str(
            "Volume", "prefix", self.prefix, fix='Pass e.g. prefix="datasets/".', empty_ok=True
        )
        _check_bool("Volume", "read_only", self.read_only)


# --- worker, logging, options -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Worker:
    """How each node runs tasks.

    Attributes:
        concurrency: Tasks run at once per node, >= 1.
        buffer: Extra tasks sent ahead to each node, >= 0, so short tasks do not wait on a
            round trip.
        executor: ``"thread"``, ``"process"`` (for CPU-bound pure Python), or ``"auto"``,
            which means ``"thread"``.
        reuse_processes: With the process executor, keep subprocesses between tasks; False
            starts a fresh one per task (for work that leaks GPU state).
    """

    concurrency: int = 1
    buffer: int = 0
    executor: ExecutorKind = "auto"
    reuse_processes: bool = True

    def __attrs_post_init__(self) -> None:
        _check_int(
            "Worker",
            "concurrency",
            self.concurrency,
            low=1,
            fix="Pass the number of tasks each node runs at once, e.g. concurrency=4.",
        )
        _check_int(
            "Worker",
            "buffer",
            self.buffer,
            low=0,
            fix="Pass the number of extra tasks queued per node, e.g. buffer=2 (0 for none).",
        )
        _check_choice("Worker", "executor", self.executor, EXECUTOR_KINDS)
        _check_bool("Worker", "reuse_processes", self.reuse_processes)

    @property
    def resolved_executor(self) -> Literal["thread", "process"]:
        """The executor the worker really uses: ``"auto"`` means ``"thread"``."""
        return "process" if self.executor == "process" else "thread"


@attrs.frozen(kw_only=True)
class LogConfig:
    """Where Skyward's own log goes.

    Attributes:
        level: The least severe level written: ``"TRACE"``, ``"DEBUG"``, ``"INFO"``,
            ``"WARNING"`` or ``"ERROR"``.
        file: The log file (``~`` is expanded when it is opened).
        console: Whether log records are also shown on the console.
        rotation: When the file rotates: a size (``"50 MB"``) or an age (``"1 day"``).
        retention: How many rotated files are kept, >= 1.
    """

    level: LogLevel = "INFO"
    file: str = attrs.field(default="~/.skyward/logs/skyward.log", converter=_path)
    console: bool = True
    rotation: str = "50 MB"
    retention: int = 10

    def __attrs_post_init__(self) -> None:
        _check_choice("LogConfig", "level", self.level, LOG_LEVELS)
        _check_str("LogConfig", "file", self.file, fix='Pass e.g. file="~/.skyward/logs/run.log".')
        _check_bool("LogConfig", "console", self.console)
        _check_str(
            "LogConfig", "rotation", self.rotation, fix='Pass e.g. rotation="50 MB" or "1 day".'
        )
        parse_rotation(self.rotation)
        _check_int(
            "LogConfig",
            "retention",
            self.retention,
            low=1,
            fix="Pass how many rotated files to keep, e.g. retention=10.",
        )


_SIZES = {"B": 1, "KB": 1_000, "MB": 1_000_000, "GB": 1_000_000_000}
_AGES = {
    "second": 1,
    "minute": 60,
    "hour": 3_600,
    "day": 86_400,
    "week": 604_800,
}


def parse_rotation(text: str) -> tuple[Literal["size", "age"], int]:
    """``"50 MB"`` → ``("size", 50_000_000)``; ``"1 day"`` → ``("age", 86_400)``.

    Raises:
        ValueError: Naming the forms it accepts.
    """
    number, _, unit = text.strip().partition(" ")
    unit = unit.strip()
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if 0 < amount < math.inf:
        if unit.upper() in _SIZES:
            return "size", int(amount * _SIZES[unit.upper()])
        age = unit.lower().removesuffix("s")
        if age in _AGES:
            return "age", max(1, int(amount * _AGES[age]))
    raise ValueError(
        f"LogConfig(rotation={text!r}): rotation must be a size such as '50 MB' "
        f"(units {', '.join(_SIZES)}) or an age such as '1 day' (units "
        f"{', '.join(_AGES)}, singular or plural), with a number > 0."
    )


@attrs.frozen
class HealthChecker:
    """A probe run on every node, beside its tasks; a node that keeps failing it is replaced.

    ``probe`` is a picklable callable with no arguments, run in each node's worker every
    ``interval`` seconds in a thread of its own, so a node whose task slots are all busy
    still answers. A probe passes when it returns a truthy value and fails when it returns
    a falsy one, raises, or does not answer within ``timeout`` seconds. After ``failures``
    failed probes in a row the node is treated as lost: its calls are sent to other nodes
    and it is replaced.

    Attributes:
        probe: ``() -> object``, e.g. a function that checks the GPU still answers.
        interval: Seconds from one probe's answer to the next probe, > 0.
        failures: Failed probes in a row that make a node unhealthy, >= 1.
        timeout: Seconds a probe may take before it counts as failed, > 0.
    """

    probe: Callable[[], object]
    interval: float = attrs.field(default=30.0, kw_only=True)
    failures: int = attrs.field(default=3, kw_only=True)
    timeout: float = attrs.field(default=10.0, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not callable(self.probe):
            raise TypeError(
                f"HealthChecker(probe={self.probe!r}): probe must be a callable taking no "
                f"arguments, got {_describe(self.probe)}. Pass e.g. "
                "probe=lambda: torch.cuda.is_available()."
            )
        try:
            signature = inspect.signature(self.probe)
        except (TypeError, ValueError):  # none to read (some builtins): the node tells
            signature = None
        if signature is not None:
            try:
                signature.bind()
            except TypeError as exc:
                # Each node would fail every probe, and be replaced over and over.
                name = getattr(self.probe, "__qualname__", self.probe)
                raise TypeError(
                    f"HealthChecker(probe={name}{signature}): probe is called "
                    f"with no arguments, and this one cannot be ({exc}). Pass a callable "
                    "taking none, e.g. probe=lambda: torch.cuda.is_available()."
                ) from None
        _check_seconds("HealthChecker", "interval", self.interval)
        _check_int(
            "HealthChecker",
            "failures",
            self.failures,
            low=1,
            fix="Pass how many failed probes in a row make a node unhealthy, e.g. failures=3.",
        )
        _check_seconds("HealthChecker", "timeout", self.timeout)


@attrs.frozen(kw_only=True)
class Options:
    """Operational tuning for a pool; the defaults suit most work.

    Timeouts are seconds (``sky.time.minutes(10)`` reads better than ``600``). Those that
    default to None take the provider's own default.

    Attributes:
        selection: With several specs, which wins: ``"cheapest"`` or ``"first"`` viable.
        worker: Concurrency and executor per node; None means ``Worker()``.
        provision_timeout: Seconds to wait for an instance to come up.
        ssh_timeout: Seconds to wait for a node's SSH server (when under 10, also how
            long a node whose connection dropped gets to come back before it is lost).
        bootstrap_timeout: Seconds a node's bootstrap may take (overrides ``Image``'s).
        provision_retry_delay: Seconds between provisioning attempts, >= 0.
        max_provision_attempts: Provisioning attempts per node before giving up, >= 1.
        ssh_retry_interval: Seconds between SSH connection attempts.
        default_compute_timeout: Seconds a task may run when its function sets no timeout.
        autoscale_cooldown: Seconds between two autoscaling decisions, >= 0.
        autoscale_idle_timeout: Seconds a node stays idle before an elastic pool drops it.
        reconcile_tick_interval: Seconds between checks of the pool against its target.
        shutdown_timeout: Seconds teardown may take before stragglers are reported.
        console: What the pool shows while it runs: ``"rich"`` (a live panel),
            ``"minimal"`` (two live lines), ``"log"`` (plain lines on stderr) or
            ``"silent"``; True picks ``"rich"`` on a terminal or in Jupyter and ``"log"``
            when stderr is a pipe or a file; False is ``"silent"``.
        logging: True (a default :class:`LogConfig`), False (off) or a :class:`LogConfig`.
        cluster: False: nodes run independently, with no collections store (``sky.dict``
            and the others raise ``NoActivePoolError`` on this pool); None (the default)
            or True: the pool runs a store for its distributed collections.
        retry_on_interruption: Retries per task when its node is preempted, >= 0.
        health_checker: A :class:`HealthChecker`: a periodic probe run on each node; nodes
            that keep failing it are replaced. None disables health checks.
        max_cost: The most the pool may cost in all, in USD: every instance's hourly
            price for as long as it is up (until its termination is confirmed). At 80 %
            an ``Error`` event warns; when reached, the pool stops: every instance is
            terminated at once, and calls in flight or made since raise
            :class:`BudgetExceededError`. None: no cap (``Spec.max_hourly_cost`` still
            caps each node's price).
    """

    selection: SelectionStrategy = "cheapest"
    worker: Worker | None = None
    provision_timeout: float | None = None
    ssh_timeout: float | None = None
    bootstrap_timeout: float | None = None
    provision_retry_delay: float | None = None
    max_provision_attempts: int | None = None
    ssh_retry_interval: float | None = None
    default_compute_timeout: float = 300.0
    autoscale_cooldown: float = 30.0
    autoscale_idle_timeout: float = 60.0
    reconcile_tick_interval: float = 15.0
    shutdown_timeout: float = 120.0
    console: bool | ConsoleMode = True
    logging: LogConfig | bool = True
    cluster: bool | None = None
    retry_on_interruption: int = 3
    health_checker: HealthChecker | None = None
    max_cost: float | None = None

    def __attrs_post_init__(self) -> None:
        _check_choice("Options", "selection", self.selection, SELECTION_STRATEGIES)
        if self.max_cost is not None and (not _is_number(self.max_cost) or not self.max_cost > 0):
            message = (
                f"Options(max_cost={self.max_cost!r}): max_cost must be a number of USD > 0 "
                "or None. Pass e.g. max_cost=50 to stop the pool once its instances have "
                "cost $50."
            )
            raise (ValueError if _is_number(self.max_cost) else TypeError)(message)
        if self.worker is not None and not isinstance(self.worker, Worker):
            raise TypeError(
                f"Options(worker={self.worker!r}): worker must be a sky.Worker or None, got "
                f"{_describe(self.worker)}. Pass e.g. worker=sky.Worker(concurrency=4)."
            )
        for arg in ("provision_timeout", "ssh_timeout", "bootstrap_timeout", "ssh_retry_interval"):
            _check_seconds("Options", arg, getattr(self, arg), optional=True)
        _check_seconds(
            "Options",
            "provision_retry_delay",
            self.provision_retry_delay,
            allow_zero=True,
            optional=True,
        )
        _check_optional_int(
            "Options",
            "max_provision_attempts",
            self.max_provision_attempts,
            low=1,
            fix="Pass e.g. max_provision_attempts=3, or None for the default.",
        )
        for arg in (
            "default_compute_timeout",
            "autoscale_idle_timeout",
            "reconcile_tick_interval",
            "shutdown_timeout",
        ):
            _check_seconds("Options", arg, getattr(self, arg))
        _check_seconds("Options", "autoscale_cooldown", self.autoscale_cooldown, allow_zero=True)
        if not isinstance(self.console, bool) and self.console not in CONSOLE_MODES:
            raise ValueError(
                f"Options(console={self.console!r}): console must be True, False or one of "
                f"{_choices(CONSOLE_MODES)}. Pass e.g. console='log' for plain lines."
            )
        if not isinstance(self.logging, bool | LogConfig):
            raise TypeError(
                f"Options(logging={self.logging!r}): logging must be True, False or a "
                f"sky.LogConfig, got {_describe(self.logging)}. "
                "Pass e.g. logging=sky.LogConfig(level='DEBUG')."
            )
        if self.cluster is not None:
            _check_bool("Options", "cluster", self.cluster)
        _check_int(
            "Options",
            "retry_on_interruption",
            self.retry_on_interruption,
            low=0,
            fix="Pass how many times a preempted task is retried, e.g. retry_on_interruption=3.",
        )
        if self.health_checker is not None and not isinstance(self.health_checker, HealthChecker):
            raise TypeError(
                f"Options(health_checker={self.health_checker!r}): health_checker must be a "
                f"sky.HealthChecker or None, got {_describe(self.health_checker)}. Pass e.g. "
                "health_checker=sky.HealthChecker(probe, interval=30, failures=3)."
            )


# --- spec ---------------------------------------------------------------------------------------


def _accelerator_hint(name: str) -> str:
    factory = accelerators.by_name(name)
    if factory is not None:
        return f"accelerator=sky.accelerators.{factory.__name__}()"
    close = accelerators.close_to(name)
    custom = f'accelerator=sky.accelerators.Custom("{name}")'
    if not close:
        return custom
    meant = " or ".join(f"sky.accelerators.{c}()" for c in close)
    return f"accelerator={meant}, or {custom} for a model not in the catalog"


@attrs.frozen(kw_only=True)
class Spec:
    """What to provision: one provider's machines, and what each must carry.

    Attributes:
        provider: Where machines come from (``sky.Local()``, ``sky.AWS()``, ...).
        accelerator: What each node carries (``sky.accelerators.A100()``); None for CPU only.
        nodes: How many nodes; given as ``4``, ``(2, 8)`` or a :class:`Nodes`, stored as
            :class:`Nodes`.
        vcpus: The least vCPUs per node.
        memory_gb: The least RAM per node, in GB.
        disk_gb: The least disk per node, in GB.
        architecture: ``"x86_64"`` or ``"arm64"``; None for either.
        allocation: ``"spot-if-available"``, ``"spot"``, ``"on-demand"`` or ``"cheapest"``.
        image: The worker environment.
        region: The provider region; None lets the provider choose.
        max_hourly_cost: The most to pay per node per hour, in USD.
        ttl: Seconds nodes live on after their client is gone before they shut themselves
            down, >= 0; 0 disables the grace period. A worker whose client's connection
            dropped still waits the reconnect window plus 5 s (15 s) for it.
        volumes: Buckets mounted on every node.
        plugins: Plugins that shape the image, bootstrap and task execution.
    """

    provider: ProviderConfig
    accelerator: Accelerator | None = None
    nodes: Nodes = attrs.field(default=Nodes(desired=1), converter=to_nodes)
    vcpus: float | None = None
    memory_gb: float | None = None
    disk_gb: int | None = None
    architecture: Architecture | None = None
    allocation: AllocationStrategy = "spot-if-available"
    image: Image = DEFAULT_IMAGE
    region: str | None = None
    max_hourly_cost: float | None = None
    ttl: int = attrs.field(default=600, converter=_whole_seconds)
    volumes: tuple[Volume, ...] = attrs.field(default=(), converter=_volume_tuple)
    plugins: tuple[Plugin, ...] = attrs.field(default=(), converter=_plugin_tuple)

    def __attrs_post_init__(self) -> None:
        self._check_provider()
        self._check_accelerator()
        for arg, unit in (("vcpus", "vCPUs"), ("memory_gb", "GB"), ("max_hourly_cost", "USD")):
            value = getattr(self, arg)
            if value is None:
                continue
            message = (
                f"Spec({arg}={value!r}): {arg} must be a number > 0 ({unit}) or None. "
                f"Pass e.g. {arg}=8, or leave it out."
            )
            if not _is_number(value):
                raise TypeError(message)
            if not value > 0:
                raise ValueError(message)
        _check_optional_int(
            "Spec", "disk_gb", self.disk_gb, low=1, fix="Pass e.g. disk_gb=200, or leave it out."
        )
        if self.architecture is not None:
            _check_choice("Spec", "architecture", self.architecture, ARCHITECTURES)
        _check_choice("Spec", "allocation", self.allocation, ALLOCATION_STRATEGIES)
        if not isinstance(self.image, Image):
            raise TypeError(
                f"Spec(image={self.image!r}): image must be a sky.Image, got "
                f"{_describe(self.image)}. Pass e.g. image=sky.Image(pip=['torch'])."
            )
        if self.region is not None:
            _check_str("Spec", "region", self.region, fix='Pass e.g. region="us-east-1".')
        _check_int(
            "Spec",
            "ttl",
            self.ttl,
            low=0,
            fix="Pass whole seconds, e.g. ttl=600 (ttl=0 disables the grace period).",
        )
        _check_items(
            "Spec",
            "volumes",
            self.volumes,
            Volume,
            example='sky.Volume(bucket="my-data", mount="/data")',
        )
        _check_items("Spec", "plugins", self.plugins, Plugin, example="sky.plugins.torch()")

    def _check_provider(self) -> None:
        provider: object = self.provider
        # The bare base class configures nothing: only its subclasses are providers.
        if isinstance(provider, ProviderConfig) and type(provider) is not ProviderConfig:
            return
        if (
            isinstance(provider, type)
            and issubclass(provider, ProviderConfig)
            and provider is not ProviderConfig
        ):
            raise TypeError(
                f"Spec(provider={provider.__name__}): provider must be a provider config "
                f"instance, not the class. Call it: provider=sky.{provider.__name__}()."
            )
        raise TypeError(
            f"Spec(provider={provider!r}): provider must be a provider config such as "
            f"sky.Local() or sky.AWS(), got {_describe(provider)}. "
            "Pass provider=sky.Local() or sky.AWS()."
        )

    def _check_accelerator(self) -> None:
        accelerator: object = self.accelerator
        if accelerator is None or isinstance(accelerator, Accelerator):
            return
        if isinstance(accelerator, str):
            raise TypeError(
                f"Spec(accelerator={accelerator!r}): accelerator must be an Accelerator object; "
                "a string is accepted only in skyward.toml. "
                f"Pass {_accelerator_hint(accelerator)}."
            )
        name = getattr(accelerator, "__name__", None)
        if callable(accelerator) and isinstance(name, str) and accelerators.by_name(name):
            raise TypeError(
                f"Spec(accelerator=sky.accelerators.{name}): that is the factory, not an "
                f"accelerator. Call it: accelerator=sky.accelerators.{name}()."
            )
        raise TypeError(
            f"Spec(accelerator={accelerator!r}): accelerator must be an Accelerator or None, "
            f"got {_describe(accelerator)}. Pass e.g. accelerator=sky.accelerators.A100()."
        )


# --- Compute(...) arguments ---------------------------------------------------------------------

_SPEC_FIELDS = tuple(field.name for field in attrs.fields(Spec))
_OPTIONS_FIELDS = frozenset(field.name for field in attrs.fields(Options))


def resolve_compute_args(
    specs: tuple[object, ...], name: str | None, kwargs: Mapping[str, object]
) -> tuple[tuple[Spec, ...], bool]:
    """Applies the rules of ``Compute(*specs, name=None, options=..., **kwargs)``.

    ``Compute`` takes one of three mutually exclusive forms: flat ``Spec`` fields as keyword
    arguments, one or more positional :class:`Spec` objects (fallback across providers), or
    ``name=`` for a pool defined in ``skyward.toml``. With nothing at all, it is one
    ``Local()`` node.

    Args:
        specs: The positional arguments.
        name: The ``name=`` argument.
        kwargs: The other keyword arguments (not ``options``).

    Returns:
        The specs to provision, in order, and whether the provider was defaulted to
        :class:`Local` because none was given. With ``name=`` there are none: the caller
        loads that pool with ``skyward_trio.config``.

    Raises:
        TypeError: A positional argument is not a ``Spec``; forms are mixed; or a keyword is
            not a ``Spec`` field (``Options`` fields are pointed to ``sky.Options``).
    """
    checked: list[Spec] = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, Spec):
            raise TypeError(_positional_hint(index, spec))
        checked.append(spec)

    unknown = [key for key in kwargs if key not in _SPEC_FIELDS]
    if unknown:
        raise TypeError(_unknown_kwargs_hint(unknown))
    if name is not None and (specs or kwargs):
        clashes = (["positional Spec objects"] if specs else []) + [f"{k}=" for k in kwargs]
        raise TypeError(
            f"Compute(name={name!r}) cannot be combined with {', '.join(clashes)}: a named "
            "pool takes everything from skyward.toml. Pass name= alone, or drop it and pass "
            "the specs or keyword arguments."
        )
    if specs and kwargs:
        raise TypeError(
            f"Compute() got positional Spec objects and Spec fields as keyword arguments "
            f"({', '.join(kwargs)}): use one form. Put those fields inside each "
            "sky.Spec(...), or drop the positional specs."
        )
    if name is not None:
        # The named pool is read from skyward.toml by skyward_trio.config, a layer above.
        return (), False
    if checked:
        return tuple(checked), False

    fields = dict(kwargs)
    defaulted = "provider" not in fields
    if defaulted:
        fields["provider"] = Local()
    # kwargs is untyped user input; Spec's own checks are what validate it.
    build: Callable[..., Spec] = Spec
    return (build(**fields),), defaulted


def _positional_hint(index: int, value: object) -> str:
    message = (
        f"Compute() got {value!r} ({_describe(value)}) as positional argument {index + 1}; "
        "positional arguments must be sky.Spec objects."
    )
    if isinstance(value, ProviderConfig):
        return f"{message} Pass the provider by keyword: provider={value!r}."
    if isinstance(value, Options):
        return f"{message} Pass it by keyword: options={value!r}."
    if isinstance(value, Accelerator):
        return f"{message} Pass it by keyword: accelerator={value!r}."
    if isinstance(value, str):
        return f"{message} For a pool from skyward.toml pass name={value!r}."
    return f"{message} Pass e.g. sky.Compute(sky.Spec(provider=sky.AWS()))."


def _unknown_kwargs_hint(unknown: list[str]) -> str:
    listed = ", ".join(unknown)
    message = f"Compute() got unexpected keyword argument(s): {listed}."
    on_options = [key for key in unknown if key in _OPTIONS_FIELDS]
    if on_options:
        knobs = ", ".join(f"{key}=..." for key in on_options)
        verb = "belongs" if len(on_options) == 1 else "belong"
        message += (
            f" {', '.join(on_options)} {verb} on sky.Options(...), not on Compute: pass "
            f"options=sky.Options({knobs})."
        )
    return f"{message} Valid Spec keywords: {', '.join(_SPEC_FIELDS)}."
