"""Pending calls, groups and ``map``'s arguments: what is refused before anything runs."""

from __future__ import annotations

import pytest

import skyward as sky
from skyward_trio._function import PendingFunctionGroup, map_items


@sky.function
def double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"stream": "yes"},
            r"^sky\.gather\(\.\.\., stream='yes'\): stream must be True or False, got str\. "
            r"Pass stream=True for the results as they complete, or stream=False",
        ),
        (
            {"stream": True, "ordered": "no"},
            r"^sky\.gather\(\.\.\., ordered='no'\): ordered must be True or False, got str\. "
            r"Pass ordered=True \(the default\) for streamed results in submission order",
        ),
        ({"stream": 1}, r"stream=1\): stream must be True or False, got int"),
    ],
)
def test_gather_refuses_flags_that_are_not_bools(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        sky.gather(double(1), **kwargs)  # type: ignore[arg-type]


def test_a_group_record_checks_its_flags_too() -> None:
    with pytest.raises(TypeError, match=r"^PendingFunctionGroup\(\.\.\., ordered=None\)"):
        PendingFunctionGroup(items=(double(1),), ordered=None)  # type: ignore[arg-type]
    group = sky.gather(double(1), stream=True, ordered=False) & double(2)
    assert (len(group), group.stream, group.ordered) == (2, True, False)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            5,
            r"^map\(fn, items=5\): items must be an iterable \(a list, a range, a "
            r"generator\.\.\.\), got int\. Pass e\.g\. pool\.map\(fn, \[1, 2, 3\]\), or "
            r"pool\.map\(fn, range\(5\)\) for fn\(0\) \.\. fn\(4\)\.$",
        ),
        (None, r"^map\(fn, items=None\): items must be an iterable .* got NoneType\. Pass e\.g\."),
        (2.5, r"got float\. Pass e\.g\. pool\.map\(fn, \[1, 2, 3\]\)\.$"),
    ],
)
def test_map_items_that_are_not_iterable_are_refused_with_the_fix(
    items: object, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        map_items(items)


def test_map_items_iterates_anything_iterable_and_keeps_its_own_errors() -> None:
    assert list(map_items(range(3))) == [0, 1, 2]
    assert list(map_items(x for x in "ab")) == ["a", "b"]

    class Broken:
        def __iter__(self) -> object:
            raise TypeError("the iterable's own error")

    with pytest.raises(TypeError, match=r"^the iterable's own error$"):
        map_items(Broken())


def test_the_sync_pool_map_refuses_items_before_anything_is_sent() -> None:
    from skyward._sync import Pool

    class Core:  # what map() touches of a trio pool before it sends
        _store = None

        def prepare_map(self, fn: object) -> tuple[str, bytes, None]:
            return "key", b"", None

    pool = Pool(Core(), None)  # type: ignore[arg-type]  # no portal: nothing may be sent
    with pytest.raises(TypeError, match=r"^map\(fn, items=3\): items must be an iterable"):
        pool.map(double, 3)  # type: ignore[arg-type]
