"""Errors against real nodes (remote exceptions, timeouts, unpicklable arguments) and bad
input that must fail before anything is provisioned.

Calls that must time out wait on a file instead of sleeping: the test creates the file once
it has seen the timeout, so the abandoned remote thread ends at once and does not hold its
node's slot for the tests that follow.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
import skyward_trio

SILENT = sky.Options(console="silent")

# -- remote functions ------------------------------------------------------------------------


class CustomError(Exception):
    """Defined only here; cloudpickle ships it to the worker and back."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: ``__init__`` needs two arguments, ``args`` holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.b = b


class LockHoldingError(Exception):
    """Cannot be pickled at all: it holds a lock."""

    def __init__(self) -> None:
        super().__init__("holding a lock")
        self.lock = threading.Lock()


@sky.function
def raise_value_error() -> None:
    raise ValueError("x")


@sky.function
def raise_custom_error() -> None:
    raise CustomError("custom failure", 42)


@sky.function
def raise_two_arg_error() -> None:
    raise TwoArgError("first", "second")


@sky.function
def raise_lock_holding_error() -> None:
    raise LockHoldingError()


def _wait_for(path: str) -> str:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.01)
    return "released"


@sky.function(timeout=0.5)
def held_with_timeout(path: str) -> str:
    return _wait_for(path)


@sky.function
def held(path: str) -> str:
    return _wait_for(path)


@sky.function
def started_then_held(started: str, path: str) -> str:
    Path(started).touch()
    return _wait_for(path)


def map_held(path: str) -> str:
    return _wait_for(path)


@sky.function
def node_index() -> int:
    return sky.instance_info().node


@sky.function
def takes_lock(lock: Any) -> None:
    return None


@sky.function
def takes_two(value: int, lock: Any = None) -> None:
    return None


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """A file whose creation ends held calls; created at the end of the test in any case."""
    path = tmp_path / "release"
    yield path
    path.touch()


# -- remote exceptions -----------------------------------------------------------------------


def test_remote_value_error_reraises_with_its_traceback(sync_pool: sky.Pool) -> None:
    with pytest.raises(ValueError, match="x") as caught:
        raise_value_error() >> sync_pool
    assert type(caught.value) is ValueError
    assert str(caught.value) == "x"
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "node" in notes
    assert "raise_value_error" in notes
    assert "Traceback" in notes
    assert "ValueError: x" in notes
    # The remote frame names this file and shows its line, as a local traceback would.
    assert f'File "{__file__}"' in notes
    assert 'raise ValueError("x")' in notes


def test_remote_custom_exception_reraises_with_its_type(sync_pool: sky.Pool) -> None:
    with pytest.raises(CustomError, match="custom failure") as caught:
        raise_custom_error() >> sync_pool
    assert type(caught.value) is CustomError
    assert caught.value.code == 42
    assert "raise_custom_error" in "\n".join(caught.value.__notes__)


@pytest.mark.parametrize(
    ("pending", "type_name"),
    [(raise_two_arg_error, "TwoArgError"), (raise_lock_holding_error, "LockHoldingError")],
)
def test_an_exception_that_cannot_be_rebuilt_is_a_remote_error(
    sync_pool: sky.Pool, pending: Callable[[], sky.PendingFunction[None]], type_name: str
) -> None:
    with pytest.raises(sky.RemoteError, match=type_name) as caught:
        sync_pool.run(pending(), target=1)
    error = caught.value
    assert isinstance(error, sky.SkywardError)
    assert error.type_name.endswith(type_name)
    assert type_name in error.remote_traceback
    assert pending.__name__ in error.remote_traceback
    assert error.node == 1
    assert "node 1" in str(error)


def test_remote_error_in_map_names_the_item(sync_pool: sky.Pool) -> None:
    with pytest.raises(ValueError, match="bad item 3") as caught:
        sync_pool.map(fail_on_three, range(6))
    assert "item 3" in "\n".join(caught.value.__notes__)


def test_the_pool_is_usable_after_remote_errors(sync_pool: sky.Pool) -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="x"):
            raise_value_error() >> sync_pool
    assert node_index() @ sync_pool == [0, 1]


# -- timeouts --------------------------------------------------------------------------------


def _check_timeout_error(error: sky.TaskTimeoutError, name: str) -> None:
    assert isinstance(error, TimeoutError)
    assert isinstance(error, sky.SkywardError)
    assert error.task == name
    assert error.node in (0, 1)
    assert error.timeout == 0.5
    assert f"node {error.node}" in str(error)


def test_function_timeout(sync_pool: sky.Pool, release: Path) -> None:
    with pytest.raises(sky.TaskTimeoutError, match="held_with_timeout") as caught:
        held_with_timeout(str(release)) >> sync_pool
    _check_timeout_error(caught.value, "held_with_timeout")
    release.touch()
    # Still usable, also on the node that timed out.
    assert sync_pool.run(node_index(), target=caught.value.node) == caught.value.node


def test_with_timeout(sync_pool: sky.Pool, release: Path) -> None:
    with pytest.raises(sky.TaskTimeoutError, match="'held'") as caught:
        held(str(release)).with_timeout(0.5) >> sync_pool
    _check_timeout_error(caught.value, "held")
    release.touch()
    assert node_index() @ sync_pool == [0, 1]


def test_with_timeout_through_run_async(sync_pool: sky.Pool, release: Path) -> None:
    future = held(str(release)).with_timeout(0.5) > sync_pool
    with pytest.raises(sky.TaskTimeoutError, match="'held'"):
        future.result(timeout=30)
    release.touch()
    assert node_index() @ sync_pool == [0, 1]


def test_a_hung_call_that_timed_out_does_not_block_its_node(
    sync_pool: sky.Pool, release: Path
) -> None:
    # What timeouts are for: a call that never returns (released only when the test ends).
    with pytest.raises(sky.TaskTimeoutError) as caught:
        held_with_timeout(str(release)) >> sync_pool
    node = caught.value.node
    # The node is free again as far as the pool is concerned, so a trivial call must run
    # there, not queue behind the hung one. The limit only keeps a failure short.
    assert sync_pool.run(node_index().with_timeout(3), target=node) == node


def test_default_compute_timeout(release: Path) -> None:
    options = sky.Options(console="silent", default_compute_timeout=0.5)
    with sky.Compute(nodes=1, options=options) as pool:
        with pytest.raises(sky.TaskTimeoutError, match="'held'") as caught:
            held(str(release)) >> pool
        _check_timeout_error(caught.value, "held")
        assert caught.value.node == 0
        release.touch()
        # The function's own timeout wins over the pool's default.
        assert held(str(release)).with_timeout(30) >> pool == "released"
        assert node_index().with_timeout(30) >> pool == 0


# -- serialization ---------------------------------------------------------------------------


def test_unpicklable_argument_fails_before_sending(sync_pool: sky.Pool) -> None:
    with pytest.raises(
        sky.SerializationError, match=r"argument 'lock' \(position 0, a lock\)"
    ) as caught:
        takes_lock(threading.Lock()) >> sync_pool
    assert isinstance(caught.value, TypeError)
    assert "takes_lock" in str(caught.value)

    # Raised in the caller before any call is started: even `>` fails at once.
    with pytest.raises(sky.SerializationError, match="'lock'"):
        _ = takes_lock(threading.Lock()) > sync_pool
    with pytest.raises(sky.SerializationError, match="keyword argument 'lock'"):
        takes_two(1, lock=threading.Lock()) >> sync_pool
    with pytest.raises(sky.SerializationError, match="'lock'"):
        takes_lock(threading.Lock()) @ sync_pool
    with pytest.raises(sky.SerializationError, match="'lock'"):
        (takes_two(1) & takes_lock(threading.Lock())) >> sync_pool

    assert all(node.inflight == 0 for node in sync_pool._core._ready.values())
    assert node_index() @ sync_pool == [0, 1]


# -- bad input, refused before anything is provisioned ---------------------------------------


def _children() -> set[int]:
    """This process's child processes (a Local pool starts one per node)."""
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[2] == me:
                found.add(int(entry.name))
    return found


COMPUTES = pytest.mark.parametrize(
    "compute", [sky.Compute, skyward_trio.Compute], ids=["sync", "trio"]
)


@COMPUTES
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"accelerator": "A100"}, TypeError, r"sky\.accelerators\.A100\(\)"),
        ({"name": "x", "nodes": 2}, TypeError, r"name='x'.*cannot be combined with nodes="),
        ({"nodes": 0}, ValueError, "nodes=0"),
        ({"nodes": (3, 2)}, ValueError, r"1 <= low <= high"),
        ({"nodes": "4"}, ValueError, "is not a node spec"),
        (
            {"allocation": "bogus"},
            ValueError,
            "allocation must be one of 'spot-if-available', 'spot', 'on-demand', 'cheapest'",
        ),
        (
            {"provider": sky.Local(), "accelerator": sky.accelerators.A100()},
            ValueError,
            "no accelerators",
        ),
    ],
)
def test_bad_compute_arguments(
    compute: Callable[..., object], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    before = _children()
    with pytest.raises(error, match=match):
        compute(**kwargs)
    assert _children() == before


@COMPUTES
def test_spec_and_flat_fields_clash(compute: Callable[..., object]) -> None:
    with pytest.raises(TypeError, match=r"positional Spec objects and Spec fields.*\(nodes\)"):
        compute(sky.Spec(provider=sky.Local()), nodes=2)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: sky.Options(selection="bogus"), "selection must be one of 'cheapest', 'first'"),
        (
            lambda: sky.Worker(executor="bogus"),
            "executor must be one of 'auto', 'thread', 'process'",
        ),
        (
            lambda: sky.Options(console="bogus"),
            "console must be True, False or one of 'rich', 'minimal', 'log', 'silent'",
        ),
    ],
    ids=["selection", "executor", "console"],
)
def test_bad_option_values_list_the_choices(build: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_targets(sync_pool: sky.Pool) -> None:
    with pytest.raises(ValueError, match=r"target=5 is not a node of this pool.*0\.\.1"):
        sync_pool.run(node_index(), target=5)
    with pytest.raises(ValueError, match=r"target=5"):
        sync_pool.run_async(node_index(), target=5)
    with pytest.raises(ValueError, match=r"target must be None, \"head\" or a node index.*tail"):
        sync_pool.run(node_index(), target="tail")
    with pytest.raises(ValueError, match="target"):
        sync_pool.run(node_index(), target=True)


def test_a_group_only_dispatches_with_rshift(sync_pool: sky.Pool) -> None:
    group = node_index() & node_index()
    with pytest.raises(TypeError, match="only be dispatched with >>"):
        group @ sync_pool
    with pytest.raises(TypeError, match="only be dispatched with >>"):
        _ = group > sync_pool


def test_run_needs_a_pending_call(sync_pool: sky.Pool) -> None:
    with pytest.raises(TypeError, match=r"expected a pending call.*got int"):
        sync_pool.run(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a pending call"):
        sync_pool.broadcast(node_index)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a group"):
        sync_pool.run_parallel(node_index())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot dispatch to int"):
        node_index() >> 42
    assert node_index() @ sync_pool == [0, 1]


def test_a_call_with_the_wrong_arguments_fails_locally(sync_pool: sky.Pool) -> None:
    with pytest.raises(TypeError, match=r"takes_two\(value: .*: too many positional arguments"):
        takes_two(1, 2, 3)
    with pytest.raises(TypeError, match=r"takes_two\(.*: missing a required argument: 'value'"):
        takes_two()


def test_map_over_something_not_iterable_says_what_to_pass(sync_pool: sky.Pool) -> None:
    with pytest.raises(TypeError, match=r"items must be an iterable .* range\(4\)\) for fn\(0\)"):
        sync_pool.map(fail_on_three, 4)  # type: ignore[arg-type]
    assert sync_pool.map(fail_on_three, range(2)) == [0, 1]  # nothing was sent


async def test_map_over_something_not_iterable_says_what_to_pass_on_the_trio_face() -> None:
    options = skyward_trio.Options(console="silent")
    async with skyward_trio.Compute(
        provider=skyward_trio.Local(), nodes=1, options=options
    ) as pool:
        with pytest.raises(TypeError, match=r"items must be an iterable .* got NoneType"):
            await pool.map(fail_on_three, None)  # type: ignore[arg-type]


def test_dispatching_the_function_itself_says_to_call_it(sync_pool: sky.Pool) -> None:
    with pytest.raises(TypeError, match=r"dispatches the function itself; call it first"):
        node_index >> sync_pool  # type: ignore[operator]
    with pytest.raises(TypeError, match=r"call it first"):
        node_index @ sync_pool  # type: ignore[operator]


def test_dispatching_to_an_unentered_compute_says_to_enter_it() -> None:
    with pytest.raises(TypeError, match=r"cannot dispatch to a Compute: it is what opens a pool"):
        node_index() >> sky.Compute(nodes=1, options=SILENT)


def test_a_group_with_a_dispatched_call_explains_precedence(sync_pool: sky.Pool) -> None:
    with pytest.raises(TypeError, match=r"`>>` binds tighter than `&`"):
        node_index() & 5  # type: ignore[operator]
    with pytest.raises(TypeError, match=r"`>>` binds tighter than `&`"):
        node_index() & node_index() & 5  # type: ignore[operator]


def test_a_nan_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match=r"timeout=nan: a timeout must be a positive number"):
        sky.function(timeout=float("nan"))(lambda: None)
    with pytest.raises(ValueError, match=r"timeout=nan"):
        node_index().with_timeout(float("nan"))


def test_a_pool_used_after_its_block_ended_says_it_is_closed() -> None:
    with sky.Compute(nodes=1, options=SILENT) as pool:
        assert node_index() >> pool == 0
    closed = pytest.raises(sky.PoolClosedError, match=r"this pool is closed")
    with closed:
        node_index() >> pool
    with closed:
        node_index() @ pool
    with closed:
        _ = node_index() > pool
    with closed:
        pool.map(takes_two, [1])
    with closed:
        list(sky.gather(node_index(), stream=True) >> pool)
    with closed:
        pool.run_async(node_index())


def test_calls_cut_off_by_the_end_of_the_block_raise_pool_closed(
    tmp_path: Path, release: Path
) -> None:
    started = tmp_path / "started"
    outcome: dict[str, BaseException | object] = {}

    def map_in_a_thread(pool: sky.Pool) -> None:
        try:
            outcome["map"] = pool.map(map_held, [str(release)] * 4)
        except BaseException as exc:  # the test looks at what it was
            outcome["map"] = exc

    with sky.Compute(nodes=1, options=SILENT) as pool:
        events = pool.events()
        future = started_then_held(str(started), str(release)) > pool
        thread = threading.Thread(target=map_in_a_thread, args=(pool,))
        thread.start()
        _wait_for(str(started))
    thread.join(timeout=30)
    ended = {e.task: e.failure for e in events if isinstance(e, sky.TaskCompleted)}
    assert ended["started_then_held"] == "cut off"  # not "failed": it did not raise
    # The call on the node when the pool closed, and the map (on the node or waiting for
    # one), say the pool closed: not a lost connection, and not wrapped in a group.
    with pytest.raises(sky.PoolClosedError, match=r"closed before started_then_held\(\)"):
        future.result(timeout=30)
    assert type(outcome["map"]) is sky.PoolClosedError, outcome["map"]
