"""The sync face (``skyward``) and the trio face (``skyward_trio``) have the same surface.

Same names and parameters on ``Pool`` and ``Compute``; the sync methods return values and
the trio ones are awaited; both packages export the same names except the trio-only handles.
"""

from __future__ import annotations

import inspect

import pytest

import skyward
import skyward_trio

POOL_METHODS = ("run", "run_async", "broadcast", "run_parallel", "map", "current_nodes")
TRIO_ONLY = {"Future", "ItemStream", "ResultStream", "CancelledCallError", "EventStream"}


def _parameters(fn: object) -> list[tuple[str, inspect._ParameterKind, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", POOL_METHODS)
def test_pool_methods_have_the_same_parameters(name: str) -> None:
    sync_method = getattr(skyward.Pool, name)
    trio_method = getattr(skyward_trio.Pool, name)
    assert _parameters(sync_method) == _parameters(trio_method)


@pytest.mark.parametrize("name", POOL_METHODS)
def test_sync_methods_block_and_trio_methods_are_awaited(name: str) -> None:
    assert not inspect.iscoroutinefunction(getattr(skyward.Pool, name))
    # current_nodes() reads a count; everything else talks to the nodes.
    expected = name != "current_nodes"
    assert inspect.iscoroutinefunction(getattr(skyward_trio.Pool, name)) is expected


def test_sync_pool_has_no_public_method_the_trio_pool_lacks() -> None:
    sync_public = {n for n in dir(skyward.Pool) if not n.startswith("_")}
    trio_public = {n for n in dir(skyward_trio.Pool) if not n.startswith("_")}  # inherited too
    # job_id and spec are properties on the sync pool and attributes set in the trio
    # pool's __init__.
    assert sync_public - trio_public == {"job_id", "spec"}
    assert {"job_id", "spec"} <= set(inspect.signature(skyward_trio.Pool).parameters)


def test_compute_has_the_same_signature() -> None:
    assert _parameters(skyward.Compute) == _parameters(skyward_trio.Compute)
    names = [name for name, _, _ in _parameters(skyward.Compute)]
    assert names == ["specs", "name", "options", "kwargs"]


def test_all_lists_agree_except_trio_only_names() -> None:
    sync_names = set(skyward.__all__)
    trio_names = set(skyward_trio.__all__)
    assert trio_names - sync_names == TRIO_ONLY
    assert sync_names - trio_names == set()
    assert len(skyward.__all__) == len(sync_names)
    assert len(skyward_trio.__all__) == len(trio_names)


@pytest.mark.parametrize("module", [skyward, skyward_trio], ids=["sync", "trio"])
def test_every_exported_name_resolves(module: object) -> None:
    for name in module.__all__:  # type: ignore[attr-defined]
        assert getattr(module, name) is not None, name


def test_shared_names_are_the_same_objects_except_the_faces() -> None:
    faces = {"Compute", "Pool", "Client", "Session", "offers"}
    # skyward.plugins and skyward.storage are modules of their own, for `from skyward.X import`
    modules = {"plugins", "storage"}
    for name in set(skyward.__all__) - faces - modules:
        assert getattr(skyward, name) is getattr(skyward_trio, name), name
    for name in faces:
        assert getattr(skyward, name) is not getattr(skyward_trio, name), name
    for module in modules:
        sync_module, trio_module = getattr(skyward, module), getattr(skyward_trio, module)
        assert sync_module.__all__ == trio_module.__all__
        for name in sync_module.__all__:
            assert getattr(sync_module, name) is getattr(trio_module, name), f"{module}.{name}"


@pytest.mark.parametrize("name", ["dict", "set", "counter", "queue", "barrier", "lock"])
def test_collection_accessors_match_and_match_the_factories(name: str) -> None:
    sync_method = getattr(skyward.Pool, name)
    trio_method = getattr(skyward_trio.Pool, name)
    assert _parameters(sync_method) == _parameters(trio_method)
    # pool.dict(name) takes what sky.dict(name) takes (after self).
    assert _parameters(sync_method)[1:] == _parameters(getattr(skyward, name))
    # Both return proxies at once; their methods (or _async variants) do the talking.
    assert not inspect.iscoroutinefunction(sync_method)
    assert not inspect.iscoroutinefunction(trio_method)


@pytest.mark.parametrize("name", ["dict", "set", "counter", "queue", "barrier", "lock"])
def test_a_clients_collection_accessors_are_the_pools(name: str) -> None:
    sync_method = getattr(skyward.Client, name)
    trio_method = getattr(skyward_trio.Client, name)
    assert _parameters(sync_method) == _parameters(trio_method)
    assert _parameters(sync_method) == _parameters(getattr(skyward.Pool, name))
    assert not inspect.iscoroutinefunction(sync_method)
    assert not inspect.iscoroutinefunction(trio_method)


def test_offers_takes_the_same_arguments_in_both_faces() -> None:
    assert _parameters(skyward.offers) == _parameters(skyward_trio.offers)  # defaults too
    assert not inspect.iscoroutinefunction(skyward.offers)
    assert inspect.iscoroutinefunction(skyward_trio.offers)
