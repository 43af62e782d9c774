"""Where a remote node gets Skyward: ``Image.skyward_source``.

A node must run the client's exact Skyward (the wire and the pickles are versioned with
it), so ``"pypi"`` pins ``skyward==<this version>`` and ``"local"`` ships a wheel built
here from the project this Skyward is installed from (a development install), so code
not yet released runs there too. ``"auto"`` is ``"local"`` for a development install,
else ``"pypi"``.
"""

from __future__ import annotations

import functools
import hashlib
import json
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


@functools.lru_cache(maxsize=4)
def _build_wheel(project: Path, stamp: tuple[tuple[str, int, int], ...]) -> tuple[str, bytes]:
    """Build the project's wheel with pip (once per process while the sources are unchanged)."""
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
