"""The environment handshake's decisions: referenced modules, versions, verdicts."""

from __future__ import annotations

import json
import math

import attrs
import cloudpickle
import lz4.frame

from skyward_trio._envcheck import compare, module_versions, referenced_modules


def _helper(x: object) -> object:
    return attrs.asdict(x)  # type: ignore[arg-type]


def test_referenced_modules_follow_globals_closures_defaults_and_helpers() -> None:
    codec = lz4.frame

    def work(data: bytes, dumps: object = cloudpickle.dumps) -> object:
        def inner() -> object:
            return json.dumps(math.pi)  # stdlib: never reported

        return codec.compress(data), _helper(data), inner()

    this_module = __name__.partition(".")[0]
    assert referenced_modules(work) == {"lz4", "cloudpickle", "attrs", this_module}
    # A module cloudpickle ships by value is not needed on the node.
    assert referenced_modules(work, by_value=[__name__]) == {"lz4", "cloudpickle", "attrs"}


def test_module_versions_read_metadata_and_report_absence() -> None:
    versions = module_versions(["attrs", "no_such_module_7f3a"])
    assert versions["attrs"] == attrs.__version__
    assert versions["no_such_module_7f3a"] is None


def test_compare_refuses_missing_and_major_differences_and_warns_on_minor() -> None:
    here = {"numpy": "2.1.0", "torch": "2.5.1", "pandas": "2.2.3", "mylib": "", "gone": None}
    there = {"numpy": "1.26.4", "torch": "2.5.0", "pandas": "2.2.3", "mylib": None, "gone": None}
    verdict = compare(here, there, node=1)
    assert verdict.errors == [
        'mylib (local) here, not installed on node 1: add Image(pip=["mylib"]) or '
        "Image(includes=[...])",
        "numpy 2.1.0 here, 1.26.4 on node 1 (another major version: objects may not load "
        'there): pin it with Image(pip=["numpy==2.1.0"])',
    ]
    assert verdict.warnings == ["torch 2.5.1 here, 2.5.0 on node 1"]


def test_zero_versions_break_at_the_minor() -> None:
    assert compare({"trio": "0.27.0"}, {"trio": "0.26.2"}, 0).errors
    assert not compare({"trio": "0.27.0"}, {"trio": "0.27.1"}, 0).errors
    assert not compare({"x": "1.0"}, {"x": "1.0"}, 0)
