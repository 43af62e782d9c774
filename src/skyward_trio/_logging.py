"""Skyward's log file (``Options(logging=...)``): rotating, gzipped, never showing a secret.

Records go to the ``"skyward"`` logger. Each open pool attaches the file handler its
``LogConfig`` names (pools logging to the same file share one handler) and, with
``LogConfig.console``, an echo of Skyward's own diagnostics on stderr. Events are written
to the file only: the console (``Options.console``) already shows them.

Every registered secret (the pool's worker secret, secret-looking ``Image.env`` values,
provider credentials) is replaced by ``***`` in every line, tracebacks included.

Layer 1: stdlib and attrs only (and the records).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import logging.handlers
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

import attrs

from ._model import LogConfig, parse_rotation

__all__ = [
    "TRACE",
    "PoolLog",
    "hiding",
    "log",
    "open_log",
    "redact",
    "secret_fields",
    "secret_looking",
]

TRACE: Final = 5
logging.addLevelName(TRACE, "TRACE")

log = logging.getLogger("skyward")
log.propagate = False  # the user's root handlers do not get our records twice
log.addHandler(logging.NullHandler())  # no pool logging: nothing, not logging's last resort
log.setLevel(logging.CRITICAL + 1)

_FORMAT = "%(asctime)s.%(msecs)03d  %(levelname)-7s  %(message)s"
_DATE = "%Y-%m-%d %H:%M:%S"
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)

_secrets: dict[str, int] = {}  # secret -> how many open pools registered it
_files: dict[Path, tuple[logging.Handler, _Jobs]] = {}  # shared by the pools logging there
_levels: list[int] = []  # the level of each open pool's log; the logger takes the lowest


def secret_looking(env: Mapping[str, str]) -> list[str]:
    """The values of variables whose names say they are secrets (``HF_TOKEN``, ...)."""
    return [value for name, value in env.items() if value and _SECRET_NAME.search(name)]


def secret_fields(record: object) -> list[str]:
    """A provider config's credentials: its string fields named like ``api_key``."""
    kind = type(record)
    if not attrs.has(kind):
        return []
    names = [f.name for f in attrs.fields(kind) if _SECRET_NAME.search(f.name)]
    values = [getattr(record, name) for name in names]
    return [v for v in values if isinstance(v, str) and v]


def redact(text: str) -> str:
    """``text`` with every secret of the open pools replaced by ``***``."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def hiding(secrets: Iterable[str]) -> Iterator[None]:
    """Register ``secrets`` for :func:`redact` (and every log line) while a pool is open."""
    registered = [s for s in secrets if s]
    for secret in registered:
        _secrets[secret] = _secrets.get(secret, 0) + 1
    try:
        yield
    finally:
        for secret in registered:
            _secrets[secret] -= 1
            if not _secrets[secret]:
                del _secrets[secret]


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _Jobs(logging.Filter):
    """Only the records of the pools a handler serves (and records of no pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        job = getattr(record, "job", None)
        return job is None or job in self.jobs


class _Echo(logging.Filter):
    """A pool's diagnostics, not its events (the console shows those)."""

    def __init__(self, job: str) -> None:
        super().__init__()
        self.job = job

    def filter(self, record: logging.LogRecord) -> bool:
        job = getattr(record, "job", None)
        return not getattr(record, "event", False) and job in (None, self.job)


class PoolLog:
    """One pool's records: tagged with its job id, so they reach its own log file only."""

    def __init__(self, job_id: str, enabled: bool) -> None:
        self.job_id = job_id
        self.enabled = enabled

    def wants(self, level: int) -> bool:
        return self.enabled and log.isEnabledFor(level)

    def log(self, level: int, message: str, *args: object, event: bool = False) -> None:
        if self.wants(level):
            log.log(level, message, *args, extra={"job": self.job_id, "event": event})

    def debug(self, message: str, *args: object) -> None:
        self.log(logging.DEBUG, message, *args)

    def info(self, message: str, *args: object) -> None:
        self.log(logging.INFO, message, *args)


def _gzip_rotator(source: str, dest: str) -> None:
    with open(source, "rb") as raw, gzip.open(dest, "wb") as packed:
        shutil.copyfileobj(raw, packed)
    os.remove(source)


def _file_handler(path: Path, config: LogConfig) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    kind, amount = parse_rotation(config.rotation)
    handler: logging.handlers.BaseRotatingHandler
    if kind == "size":
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=amount, backupCount=config.retention, encoding="utf-8"
        )
    else:
        handler = logging.handlers.TimedRotatingFileHandler(
            path, when="S", interval=amount, backupCount=config.retention, encoding="utf-8"
        )
    handler.namer = lambda name: f"{name}.gz"
    handler.rotator = _gzip_rotator
    handler.setFormatter(_Redacting(_FORMAT, _DATE))
    return handler


def _level(config: LogConfig) -> int:
    return TRACE if config.level == "TRACE" else logging.getLevelNamesMapping()[config.level]


@contextlib.contextmanager
def open_log(config: LogConfig, job_id: str = "") -> Iterator[PoolLog]:
    """Attach ``config``'s handlers to the ``skyward`` logger while pool ``job_id`` is open."""
    path = Path(os.path.expanduser(config.file)).absolute()
    if path in _files:
        handler, jobs = _files[path]
    else:
        try:
            handler = _file_handler(path, config)
        except OSError as exc:
            raise ValueError(
                f"LogConfig(file={config.file!r}): cannot write the log file there "
                f"({exc.strerror or exc}: {exc.filename or path}). Pass a file path in a "
                "directory you can write to, or logging=False for no file log."
            ) from exc
        jobs = _Jobs()
        handler.addFilter(jobs)
        _files[path] = (handler, jobs)
        log.addHandler(handler)
    jobs.jobs.add(job_id)
    level = _level(config)
    handler.setLevel(min(handler.level or level, level))
    echo: logging.Handler | None = None
    if config.console:
        echo = logging.StreamHandler(sys.stderr)
        echo.setLevel(level)
        echo.addFilter(_Echo(job_id))
        echo.setFormatter(_Redacting("skyward %(levelname)s: %(message)s"))
        log.addHandler(echo)
    _levels.append(level)
    log.setLevel(min(_levels))
    try:
        yield PoolLog(job_id, enabled=True)
    finally:
        _levels.remove(level)
        log.setLevel(min(_levels, default=logging.CRITICAL + 1))
        if echo is not None:
            log.removeHandler(echo)
        jobs.jobs.discard(job_id)
        if not jobs.jobs:
            del _files[path]
            log.removeHandler(handler)
            handler.close()
