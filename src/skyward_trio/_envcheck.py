"""The environment handshake's pure half: which modules a function needs, their versions
here and on a node, and what a difference means.

A pickled function names the modules it refers to; a node without one of them cannot
even unpickle it, and a node with another major version may unpickle objects it cannot
use. :func:`compare` turns two sets of versions into errors (refuse the call) and
warnings (say so, run anyway), each with the fix.

Runs on both sides (:func:`module_versions` is called on workers): stdlib only.
Layer 1.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["Verdict", "compare", "module_versions", "referenced_modules"]

_OURS = frozenset({"skyward", "skyward_trio", "__main__", "builtins"})


def referenced_modules(fn: Any, by_value: Iterable[str] = ()) -> set[str]:
    """The top-level modules (not stdlib, not ours) that ``fn`` refers to.

    Follows the names its code uses in its globals, its closure and defaults, and the
    functions those refer to in turn (as cloudpickle would ship them). Modules in
    ``by_value`` (cloudpickle ships their code itself) are not needed on the node.
    """
    found: set[str] = set()
    seen: set[int] = set()
    pending = [fn]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        function = getattr(item, "__wrapped__", None) or getattr(item, "fn", None) or item
        if isinstance(function, types.MethodType):
            function = function.__func__
        if not isinstance(function, types.FunctionType):
            _note(found, item)
            continue
        _note(found, function)
        values = [function.__globals__.get(name) for name in _code_names(function.__code__)]
        values += [cell.cell_contents for cell in function.__closure__ or () if _filled(cell)]
        values += list(function.__defaults__ or ())
        for value in values:
            if isinstance(value, types.FunctionType):
                pending.append(value)
            else:
                _note(found, value)
    shipped = {name.partition(".")[0] for name in by_value}
    return {name for name in found if _third_party(name) and name not in shipped}


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _note(found: set[str], value: Any) -> None:
    if isinstance(value, types.ModuleType):
        found.add(value.__name__.partition(".")[0])
        return
    module = getattr(value, "__module__", None)
    if isinstance(module, str) and module:
        found.add(module.partition(".")[0])


def _third_party(name: str) -> bool:
    return name not in _OURS and name not in sys.stdlib_module_names and not name.startswith("_")


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def module_versions(names: Iterable[str], *, fresh: bool = True) -> dict[str, str | None]:
    """The installed version of each top-level module here, or None when it is absent.

    Read from package metadata; a module without metadata (a local package) is imported
    for its ``__version__``, or reported as ``""``. ``fresh`` re-reads the
    installed distributions (a worker's environment may have changed since).
    """
    if fresh:
        _distributions.cache_clear()
    result: dict[str, str | None] = {}
    for name in names:
        result[name] = _version(name)
    return result


def _version(name: str) -> str | None:
    for dist in _distributions().get(name, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            return None
        # No package metadata (a local package): its __version__, importing it if need be
        # (the function's unpickling would import it anyway).
        module = importlib.import_module(name)
    except Exception:
        return ""  # it is there, but says nothing of its version
    return str(getattr(module, "__version__", ""))


class Verdict:
    """What :func:`compare` found: ``errors`` refuse the call, ``warnings`` do not."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.errors or self.warnings)


def compare(here: dict[str, str | None], there: dict[str, str | None], node: int) -> Verdict:
    """Compare the client's module versions with node ``node``'s."""
    verdict = Verdict()
    for name in sorted(here):
        mine, theirs = here[name], there.get(name)
        if mine is None:
            continue  # not installed here either: the function cannot need it as an import
        pin = f"{name}=={mine}" if mine else name
        if theirs is None:
            verdict.errors.append(
                f"{name} {mine or '(local)'} here, not installed on node {node}: add "
                f'Image(pip=["{pin}"])' + ("" if mine else " or Image(includes=[...])")
            )
        elif mine and theirs and mine != theirs:
            if _major(mine) != _major(theirs):
                verdict.errors.append(
                    f"{name} {mine} here, {theirs} on node {node} (another major version: "
                    f'objects may not load there): pin it with Image(pip=["{pin}"])'
                )
            else:
                verdict.warnings.append(f"{name} {mine} here, {theirs} on node {node}")
    return verdict


def _major(version: str) -> str:
    """The part of a version that may break compatibility: ``2`` of ``2.1.0``, but ``0.16``
    of ``0.16.3`` (0.x releases break at the minor version)."""
    parts = version.split(".")
    return ".".join(parts[:2]) if parts[0] == "0" else parts[0]
