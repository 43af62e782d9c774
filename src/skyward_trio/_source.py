"""Where a remote node gets Skyward: ``Image.skyward_source``.

A node must run the client's exact Skyward (the wire and the pickles are versioned with
it), so ``"pypi"`` pins ``skyward==<this version>`` and ``"local"`` ships a wheel built
here from the project this Skyward is installed from (a development install), so code
not yet released runs there too. ``"auto"`` is ``"local"`` for a development install,
else ``"pypi"``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import attrs

from ._model import SkywardSource
from ._version import __version__

__all__ = ["SkywardPackage", "check_source", "project_dir", "skyward_package"]

_DIST = "skyward"


@attrs.frozen(kw_only=True)
class SkywardPackage:
    """What a node's environment installs to get Skyward.

    Attributes:
        requirements: Requirements for the installer (``skyward==X`` from the index).
        wheels: ``(file name, content)`` of wheels to ship and install.
        key: Identifies what is installed, for the environment's hash.
    """

    requirements: tuple[str, ...] = ()
    wheels: tuple[tuple[str, bytes], ...] = ()
    key: str = ""


def project_dir() -> Path | None:
    """The project directory this Skyward is installed from, if it is a development install."""
    try:
        text = metadata.distribution(_DIST).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    url = json.loads(text)
    parsed = urlparse(url.get("url", ""))
    if "dir_info" not in url or parsed.scheme != "file":
        return None
    path = Path(unquote(parsed.path))
    return path if (path / "pyproject.toml").is_file() else None


def check_source(source: SkywardSource) -> None:
    """Refuse a ``skyward_source`` this client cannot honour, before anything starts.

    Raises:
        ValueError: ``"github"``, or ``"local"`` without a development install, with the fix.
    """
    if source == "github":
        raise ValueError(
            'Image(skyward_source="github") is not supported: nodes install this exact '
            f"Skyward ({__version__}), which skyward_source='local' (a wheel built here) or "
            "'pypi' (the released version) give. Pass one of those, or 'auto'."
        )
    if source == "local" and project_dir() is None:
        raise ValueError(
            'Image(skyward_source="local") ships a wheel built from the project Skyward is '
            "installed from, and this Skyward is not a development install (pip install -e "
            "or from a directory). Pass skyward_source='pypi' to install "
            f"skyward=={__version__} on the nodes."
        )


def skyward_package(source: SkywardSource) -> SkywardPackage:
    """What ``source`` means on a node. Blocking (it may build a wheel): run in a thread.

    cloudpickle is pinned to this client's version too: the node unpickles what this
    client pickled.

    Raises:
        ValueError: As :func:`check_source`.
        RuntimeError: The wheel could not be built, with the builder's output.
    """
    check_source(source)
    pins = (f"cloudpickle=={metadata.version('cloudpickle')}",)
    project = project_dir()
    if source == "pypi" or project is None:
        pinned = f"{_DIST}=={__version__}"
        return SkywardPackage(requirements=(pinned, *pins), key=f"pypi:{pinned}")
    name, data = _build_wheel(project, _tree_stamp(project))
    digest = hashlib.sha256(data).hexdigest()[:16]
    return SkywardPackage(requirements=pins, wheels=((name, data),), key=digest)


def _tree_stamp(project: Path) -> tuple[tuple[str, int, int], ...]:
    """The sources' names, sizes and times: a changed file means a new wheel."""
    files = [project / "pyproject.toml", *sorted((project / "src").rglob("*.py"))]
    return tuple((str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in files)


WHEEL_CACHE = "~/.skyward/wheels"
_WHEELS_KEPT = 4


@functools.lru_cache(maxsize=4)
def _build_wheel(project: Path, stamp: tuple[tuple[str, int, int], ...]) -> tuple[str, bytes]:
    """The project's wheel: built with pip once per process while the sources' names, sizes
    and times are unchanged, and once per content of the sources across processes (the
    cache, ``WHEEL_CACHE``, keeps the latest ``_WHEELS_KEPT``): a script run again on a
    development install starts its nodes without the builder's seconds."""
    folder = Path(os.path.expanduser(WHEEL_CACHE)) / _content_key(project)
    cached = _cached_wheel(folder)
    if cached is not None:
        return cached
    name, data = _run_builder(project)
    _keep_wheel(folder, name, data)
    return name, data


def _content_key(project: Path) -> str:
    """A digest of what goes into the wheel: ``pyproject.toml``, the README and every file
    under ``src`` (bytecode caches aside)."""
    digest = hashlib.sha256()
    files = [project / "pyproject.toml", project / "README.md", *(project / "src").rglob("*")]
    for path in sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(project)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _cached_wheel(folder: Path) -> tuple[str, bytes] | None:
    """The wheel kept in ``folder``, if one is there whole (one being written is not)."""
    try:
        path = next(folder.glob(f"{_DIST}-*.whl"), None)
        data = b"" if path is None else path.read_bytes()
    except OSError:  # pruned by another process as it was read: build it again
        return None
    if path is None:
        return None
    with contextlib.suppress(OSError):
        os.utime(folder)  # recently used: the last to be pruned
    return path.name, data


def _keep_wheel(folder: Path, name: str, data: bytes) -> None:
    """Keep the wheel in ``folder`` (written aside, then renamed into place, so a reader
    never sees part of it) and prune the cache to its latest ``_WHEELS_KEPT``. A cache that
    cannot be written (a read-only home) only means the next process builds again."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=".partial-", dir=folder)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, folder / name)
        kept = sorted(
            (p for p in folder.parent.iterdir() if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        return
    for old in kept[_WHEELS_KEPT:]:
        shutil.rmtree(old, ignore_errors=True)


def _run_builder(project: Path) -> tuple[str, bytes]:
    """Build the project's wheel with ``pip wheel``."""
    with tempfile.TemporaryDirectory(prefix="skyward-wheel-") as out:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out]
        done = subprocess.run([*command, str(project)], capture_output=True, text=True, check=False)
        wheels = sorted(Path(out).glob(f"{_DIST}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not build a wheel of Skyward from {project} for "
                f"skyward_source='local' ({' '.join(command)} {project} exited with "
                f"{done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}. Make pip "
                "available in this environment, or pass Image(skyward_source='pypi')."
            )
        return wheels[0].name, wheels[0].read_bytes()
