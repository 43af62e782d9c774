"""The per-process runtime context: set_instance_info, instance_info, is_head."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from skyward_trio._info import InstanceInfo, PeerInfo
from skyward_trio._runtime import instance_info, is_head, set_instance_info


def make_info(node: int = 0, worker: int = 0) -> InstanceInfo:
    return InstanceInfo(
        node=node,
        worker=worker,
        total_nodes=2,
        workers_per_node=2,
        head_addr="10.0.0.1",
        head_port=29500,
        job_id="job",
        peers=(PeerInfo(node=0, private_ip="10.0.0.1"), PeerInfo(node=1, private_ip="10.0.0.2")),
    )


@pytest.fixture(autouse=True)
def _clear_runtime() -> Iterator[None]:
    set_instance_info(None)
    yield
    set_instance_info(None)


def test_instance_info_outside_a_task_raises_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"only inside a @sky\.function running on a pool"):
        instance_info()
    with pytest.raises(RuntimeError, match="outside any Skyward task"):
        is_head()


def test_set_then_get() -> None:
    info = make_info(node=1)
    set_instance_info(info)
    assert instance_info() is info


def test_set_none_clears() -> None:
    set_instance_info(make_info())
    set_instance_info(None)
    with pytest.raises(RuntimeError):
        instance_info()


def test_instance_info_is_shared_across_threads() -> None:
    info = make_info(node=1, worker=1)
    set_instance_info(info)
    seen: list[InstanceInfo] = []
    thread = threading.Thread(target=lambda: seen.append(instance_info()))
    thread.start()
    thread.join()
    assert seen == [info]


@pytest.mark.parametrize(
    ("node", "worker", "expected"), [(0, 0, True), (0, 1, False), (1, 0, False), (1, 1, False)]
)
def test_is_head(node: int, worker: int, expected: bool) -> None:
    info = make_info(node=node, worker=worker)
    assert is_head(info) is expected
    set_instance_info(info)
    assert is_head() is expected


def test_is_head_with_explicit_info_needs_no_context() -> None:
    assert is_head(make_info()) is True
