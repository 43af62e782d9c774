"""sky.shard: disjoint, complete, aligned slices that keep their input's type."""

from __future__ import annotations

import importlib.util
import itertools
import random
from collections import UserList, deque
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import pytest

from skyward_trio._info import InstanceInfo, PeerInfo
from skyward_trio._runtime import set_instance_info
from skyward_trio._shard import shard


@pytest.fixture(autouse=True)
def _clear_runtime() -> Iterator[None]:
    set_instance_info(None)
    yield
    set_instance_info(None)


def all_shards(data: Sequence[Any], total: int, **kwargs: Any) -> list[list[Any]]:
    return [list(shard(data, node=n, total_nodes=total, **kwargs)) for n in range(total)]


COMBOS = list(
    itertools.product(
        [0, 1, 2, 3, 7, 10, 11, 64, 101],  # length
        [1, 2, 3, 4, 8, 13],  # total_nodes
        [False, True],  # drop_last
        [False, True],  # shuffle
    )
)


@pytest.mark.parametrize(("length", "total", "drop_last", "shuffle"), COMBOS)
def test_disjoint_and_complete(length: int, total: int, drop_last: bool, shuffle: bool) -> None:
    data = list(range(length))
    shards = all_shards(data, total, drop_last=drop_last, shuffle=shuffle, seed=7)
    flat = [x for s in shards for x in s]
    assert len(flat) == len(set(flat)), "shards overlap"
    sizes = [len(s) for s in shards]
    if drop_last:
        assert sizes == [length // total] * total
        assert len(flat) == length - length % total
    else:
        assert sorted(flat) == data
        extra = length % total
        assert sizes == [length // total + (1 if n < extra else 0) for n in range(total)]


@pytest.mark.parametrize(("length", "total"), [(10, 3), (11, 4), (5, 8)])
def test_unshuffled_shards_are_contiguous_blocks_in_order(length: int, total: int) -> None:
    data = list(range(length))
    shards = all_shards(data, total)
    assert [x for s in shards for x in s] == data
    assert shards[0] == data[: len(shards[0])]


def test_shuffle_follows_random_random_seed_permutation() -> None:
    data = list(range(20))
    order = list(range(20))
    random.Random(42).shuffle(order)
    shards = all_shards(data, 3, shuffle=True, seed=42)
    assert [x for s in shards for x in s] == order  # permuted order kept within each shard
    assert shards != all_shards(data, 3)


def test_shuffle_is_deterministic_and_seed_dependent() -> None:
    data = list(range(50))
    assert all_shards(data, 4, shuffle=True, seed=1) == all_shards(data, 4, shuffle=True, seed=1)
    assert all_shards(data, 4, shuffle=True, seed=1) != all_shards(data, 4, shuffle=True, seed=2)


def test_drop_last_drops_the_tail() -> None:
    assert all_shards(list(range(7)), 3, drop_last=True) == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_several_arrays_stay_aligned(shuffle: bool, drop_last: bool) -> None:
    xs = [f"x{i}" for i in range(23)]
    ys = tuple(range(23))
    zs = np.arange(23) * 10
    for n in range(5):
        result = shard(
            xs, ys, zs, node=n, total_nodes=5, shuffle=shuffle, seed=3, drop_last=drop_last
        )
        assert isinstance(result, tuple)
        assert len(result) == 3
        x, y, z = result
        assert isinstance(x, list)
        assert isinstance(y, tuple)
        assert isinstance(z, np.ndarray)
        assert [f"x{i}" for i in y] == x
        assert list(z) == [i * 10 for i in y]


def test_single_argument_returns_the_shard_not_a_tuple() -> None:
    assert shard((1, 2, 3, 4), node=1, total_nodes=2) == (3, 4)


@pytest.mark.parametrize(
    ("data", "expected_type"),
    [
        ([1, 2, 3, 4, 5], list),
        ((1, 2, 3, 4, 5), tuple),
        ("abcde", str),
        (b"abcde", bytes),
        (bytearray(b"abcde"), bytearray),
        (UserList([1, 2, 3, 4, 5]), UserList),
        (deque([1, 2, 3, 4, 5]), deque),
    ],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_type_is_preserved(data: Sequence[Any], expected_type: type, shuffle: bool) -> None:
    parts = [shard(data, node=n, total_nodes=2, shuffle=shuffle, seed=5) for n in range(2)]
    for part in parts:
        assert type(part) is expected_type
    assert sorted(itertools.chain.from_iterable(parts)) == sorted(data)


def test_str_values() -> None:
    assert shard("abcdefg", node=0, total_nodes=2) == "abcd"
    shuffled = [shard("abcdefg", node=n, total_nodes=2, shuffle=True, seed=1) for n in range(2)]
    assert sorted("".join(shuffled)) == list("abcdefg")


def test_str_subclass_is_rebuilt_from_characters() -> None:
    class Name(str):
        __slots__ = ()

    part = shard(Name("abcd"), node=1, total_nodes=2)
    assert part == "cd"
    assert type(part) is Name


def test_range_contiguous_stays_range_shuffled_becomes_list() -> None:
    part = shard(range(10, 20), node=1, total_nodes=3)
    assert part == range(14, 17)
    assert isinstance(part, range)
    shuffled = shard(range(10, 20), node=1, total_nodes=3, shuffle=True)
    assert isinstance(shuffled, list)
    assert all(10 <= x < 20 for x in shuffled)


class Frames(Sequence[int]):
    """A Sequence whose constructor does not take a list of items."""

    def __init__(self, n: int, *, step: int) -> None:
        self._items = list(range(0, n * step, step))

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[int]: ...
    def __getitem__(self, i: int | slice) -> int | Sequence[int]:
        if isinstance(i, slice):
            raise TypeError("Frames does not support slicing")
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)


@pytest.mark.parametrize("shuffle", [False, True])
def test_sequence_whose_constructor_refuses_items_becomes_list(shuffle: bool) -> None:
    parts = [shard(Frames(6, step=2), node=n, total_nodes=2, shuffle=shuffle) for n in range(2)]
    assert all(type(p) is list for p in parts)
    assert sorted(parts[0] + parts[1]) == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize("shuffle", [False, True])
def test_numpy_arrays(shuffle: bool) -> None:
    arr = np.arange(30).reshape(10, 3)
    parts = [shard(arr, node=n, total_nodes=3, shuffle=shuffle, seed=9) for n in range(3)]
    for part in parts:
        assert isinstance(part, np.ndarray)
        assert part.shape[1:] == (3,)
        assert part.dtype == arr.dtype
    rows = np.concatenate(parts)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, arr.tolist()))


def test_numpy_contiguous_shard_is_a_view() -> None:
    arr = np.arange(10)
    part = shard(arr, node=0, total_nodes=2)
    assert np.shares_memory(part, arr)


def test_numpy_node_arguments_are_accepted() -> None:
    node: Any = np.int64(1)
    total: Any = np.int64(2)
    assert shard([1, 2, 3, 4], node=node, total_nodes=total) == [3, 4]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
@pytest.mark.parametrize("shuffle", [False, True])
def test_torch_tensors(shuffle: bool) -> None:
    import torch

    t = torch.arange(20).reshape(10, 2)
    labels = torch.arange(10)
    parts = [shard(t, labels, node=n, total_nodes=3, shuffle=shuffle, seed=2) for n in range(3)]
    for x, y in parts:
        assert isinstance(x, torch.Tensor)
        assert isinstance(y, torch.Tensor)
        assert torch.equal(x[:, 0] // 2, y)
    assert sorted(torch.cat([y for _, y in parts]).tolist()) == list(range(10))


def test_defaults_come_from_instance_info() -> None:
    set_instance_info(
        InstanceInfo(
            node=2,
            total_nodes=3,
            head_addr="h",
            head_port=1,
            job_id="j",
            peers=[PeerInfo(node=i, private_ip=f"10.0.0.{i}") for i in range(3)],
        )
    )
    assert shard(list(range(9))) == [6, 7, 8]


def test_without_instance_info_or_explicit_position_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="outside any Skyward task"):
        shard([1, 2, 3])


@pytest.mark.parametrize("kwargs", [{"node": 0}, {"total_nodes": 2}])
def test_node_and_total_nodes_go_together(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="pass both"):
        shard([1, 2, 3], **kwargs)


@pytest.mark.parametrize(
    ("node", "total", "error", "match"),
    [
        (2, 2, ValueError, r"node in range\(total_nodes=2\), i\.e\. 0\.\.1; got 2"),
        (-1, 2, ValueError, r"got -1"),
        (0, 0, ValueError, r"total_nodes >= 1; got 0"),
        (1.0, 2, TypeError, r"node= to be an integer; got 1\.0 \(float\)"),
        (True, 2, TypeError, r"node= to be an integer; got True"),
    ],
)
def test_bad_position(node: Any, total: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        shard([1, 2, 3], node=node, total_nodes=total)


def test_no_arguments() -> None:
    with pytest.raises(TypeError, match="at least one sequence"):
        shard(node=0, total_nodes=1)


def test_unequal_lengths() -> None:
    with pytest.raises(ValueError, match=r"argument 1: 3, argument 2: 2"):
        shard([1, 2, 3], (1, 2), node=0, total_nodes=1)


@pytest.mark.parametrize(
    ("bad", "name"),
    [
        ((i for i in range(3)), "generator"),
        ({1, 2, 3}, "set"),
        ({"a": 1}, "dict"),
        (iter([1, 2]), "list_iterator"),
        (5, "int"),
        (np.float64(1.0), "float64"),
        (np.array(3), "0-d numpy array"),
    ],
)
def test_non_sequences_are_refused(bad: object, name: str) -> None:
    with pytest.raises(TypeError, match=rf"argument 2 (has type|is a) .*{name}"):
        shard([1, 2, 3], bad, node=0, total_nodes=1)
