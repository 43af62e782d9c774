"""The environment handshake: before a function first runs on a node, the versions of the
modules it refers to are compared there; a missing module or another major version is
refused with the fix, a minor difference is a warning (real Local nodes)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
import skyward_trio

QUIET = sky.Options(console="silent")
NAME = "fakemod_7f3a"


def _package(root: Path, version: str) -> Path:
    (root / NAME).mkdir(parents=True)
    (root / NAME / "__init__.py").write_text(f"__version__ = {version!r}\nVALUE = 7\n")
    return root / NAME


@pytest.fixture
def fake_module(tmp_path: Path) -> Iterator[Any]:
    """``fakemod_7f3a`` 1.2.0, importable here only (added after the nodes started)."""

    def install() -> Any:
        sys.path.insert(0, str(tmp_path / "client"))
        importlib.invalidate_caches()
        module = importlib.import_module(NAME)
        globals()[NAME] = module  # what _uses_it refers to, as a module-level import would
        return module

    _package(tmp_path / "client", "1.2.0")
    yield install
    sys.path.remove(str(tmp_path / "client"))
    sys.modules.pop(NAME, None)
    globals().pop(NAME, None)


@sky.function
def _uses_it() -> int:
    return fakemod_7f3a.VALUE  # type: ignore[name-defined]  # noqa: F821


def _add_value(x: int) -> int:
    return fakemod_7f3a.VALUE + x  # type: ignore[name-defined]  # noqa: F821


@sky.function
def _plain(x: int) -> int:
    return x + 1


def test_a_module_missing_on_the_nodes_is_refused_with_the_fix(fake_module: Any) -> None:
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        fake_module()
        expected = (
            r"node \d cannot run _uses_it\(\): modules it refers to differ there in a way that "
            r"breaks loading it:\n  - fakemod_7f3a 1\.2\.0 here, not installed on node \d: "
            r'add Image\(pip=\["fakemod_7f3a==1\.2\.0"\]\)'
        )
        with pytest.raises(sky.VersionMismatchError, match=expected):
            _uses_it() >> pool
        with pytest.raises(sky.VersionMismatchError, match=expected):
            (_uses_it() > pool).result(timeout=30)
        assert pool.map(_add_value, []) == []  # nothing to map: nothing sent or refused
        with pytest.raises(sky.VersionMismatchError, match=r"fakemod_7f3a 1\.2\.0 here, not"):
            pool.map(_add_value, range(10))
        assert pool.map(_plain.fn, range(5)) == [1, 2, 3, 4, 5]  # other functions still run


def test_another_major_version_is_refused(fake_module: Any, tmp_path: Path) -> None:
    node_copy = _package(tmp_path / "node", "2.0.0")
    image = sky.Image(includes=[str(node_copy)])
    with sky.Compute(provider=sky.Local(), nodes=1, image=image, options=QUIET) as pool:
        fake_module()
        with pytest.raises(
            sky.VersionMismatchError,
            match=r"fakemod_7f3a 1\.2\.0 here, 2\.0\.0 on node 0 \(another major version",
        ):
            _uses_it() >> pool


async def test_a_minor_difference_is_a_warning_and_the_call_runs(
    fake_module: Any, tmp_path: Path
) -> None:
    node_copy = _package(tmp_path / "node", "1.3.0")
    image = skyward_trio.Image(includes=[str(node_copy)])
    options = skyward_trio.Options(console="silent")
    async with skyward_trio.Compute(
        provider=skyward_trio.Local(), nodes=1, image=image, options=options
    ) as pool:
        fake_module()
        with pytest.warns(
            skyward_trio.VersionMismatchWarning,
            match=r"_uses_it\(\) runs on node 0 with other versions of modules it refers to: "
            r"fakemod_7f3a 1\.2\.0 here, 1\.3\.0 on node 0",
        ):
            assert await pool.run(_uses_it()) == 7
        assert await pool.run(_uses_it()) == 7  # checked once per node and function
