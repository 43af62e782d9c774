"""``ProcessExecutor.run_every``: a broadcast's task on every child at once, each child a
worker (rank) of its node. Real subprocesses, no mocks.

The children of one call meet at a barrier of files in a folder: each writes its own and
waits (a bounded while) for all of them. Children that did not run at the same time
would never all be there, so the barrier tells whether they did.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from skyward_trio import _serial, _wire
from skyward_trio._info import InstanceInfo, PeerInfo, to_dict
from skyward_trio._procpool import ProcessExecutor, RankOutcome, TaskKilled

cloudpickle.register_pickle_by_value(sys.modules[__name__])

RANKS = 3


def _info(workers_per_node: int) -> dict[str, Any]:
    return to_dict(
        InstanceInfo(
            node=1,
            total_nodes=2,
            workers_per_node=workers_per_node,
            head_addr="10.0.0.1",
            head_port=29500,
            job_id="job-ranks",
            peers=[
                PeerInfo(node=0, private_ip="10.0.0.1"),
                PeerInfo(node=1, private_ip="10.0.0.2"),
            ],
        )
    )


_ids = itertools.count(1)


def _ignore(stream: str, text: str) -> None:
    del stream, text


@pytest.fixture
def ranks() -> Iterator[ProcessExecutor]:
    ex = ProcessExecutor(size=RANKS, reuse=True, sys_path=[], env={}, info=_info(RANKS))
    yield ex
    ex.close()


def _key(fn: Callable[..., Any]) -> str:
    return hashlib.sha256(cloudpickle.dumps(fn)).hexdigest()


def every(
    ex: ProcessExecutor,
    fn: Callable[..., Any],
    *args: Any,
    task_id: int | None = None,
    outputs: list[Callable[[str, str], None]] | None = None,
) -> tuple[list[RankOutcome], int | None]:
    return ex.run_every(
        next(_ids) if task_id is None else task_id,
        _key(fn),
        _serial.dumps(fn),
        _serial.dumps((args, {})),
        outputs or [_ignore] * RANKS,
    )


def values(outcomes: list[RankOutcome]) -> list[Any]:
    results = []
    for outcome in outcomes:
        assert outcome.result is not None, outcome.died
        ok, payload = outcome.result
        assert ok, payload[3]
        results.append(_serial.loads(payload))
    return results


def meet(folder: str, ranks: int) -> dict[str, Any]:
    """Wait (20 s at most) until ``ranks`` children have come here; who this one is."""
    import os
    import time

    import skyward_trio

    info = skyward_trio.instance_info()
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, str(info.worker)), "w").close()
    deadline = time.monotonic() + 20
    while len(os.listdir(folder)) < ranks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sorted(os.listdir(folder))} came to the barrier")
        time.sleep(0.01)
    return {"worker": info.worker, "global": info.global_worker_index, "pid": os.getpid()}


def test_every_child_runs_the_task_at_once_as_the_worker_of_its_slot(
    ranks: ProcessExecutor, tmp_path: Path
) -> None:
    outcomes, failed = every(ranks, meet, str(tmp_path / "one"), RANKS)
    assert failed is None
    first = values(outcomes)
    assert [o.slot for o in outcomes] == [0, 1, 2]
    assert [(r["worker"], r["global"]) for r in first] == [(0, 3), (1, 4), (2, 5)]
    assert len({r["pid"] for r in first}) == RANKS
    # The children stay: the next broadcast's ranks are the same processes, slot for slot.
    outcomes, failed = every(ranks, meet, str(tmp_path / "two"), RANKS)
    assert failed is None
    assert [r["pid"] for r in values(outcomes)] == [r["pid"] for r in first]


def shout(text: str) -> None:
    import skyward_trio

    print(f"{text} from {skyward_trio.instance_info().worker}", flush=True)


def test_each_child_s_output_goes_to_its_own_callback(ranks: ProcessExecutor) -> None:
    heard: list[list[tuple[str, str]]] = [[] for _ in range(RANKS)]
    outputs = [lambda stream, text, mine=mine: mine.append((stream, text)) for mine in heard]
    _, failed = every(ranks, shout, "hello", outputs=outputs)
    assert failed is None
    assert [{stream for stream, _ in mine} for mine in heard] == [{"stdout"}] * RANKS
    texts = ["".join(text for _, text in mine) for mine in heard]
    assert texts == [f"hello from {slot}\n" for slot in range(RANKS)]


def fail_on_one(folder: str) -> int:
    import os
    import time

    import skyward_trio

    worker = skyward_trio.instance_info().worker
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, str(worker)), "w").close()
    if worker == 0:
        return 0  # returns at once: not stopped, but its process group is broken
    while len(os.listdir(folder)) < 3:
        time.sleep(0.01)
    if worker == 1:
        time.sleep(0.2)
        raise ValueError("rank 1 is out of data")
    time.sleep(60)  # a rank waiting in a collective for the one that failed
    return 2


def test_the_first_failure_stops_the_others_and_the_next_call_gets_fresh_children(
    ranks: ProcessExecutor, tmp_path: Path
) -> None:
    before = [r["pid"] for r in values(every(ranks, meet, str(tmp_path / "a"), RANKS)[0])]
    started = time.monotonic()
    outcomes, failed = every(ranks, fail_on_one, str(tmp_path / "b"))
    assert time.monotonic() - started < 30  # not the 60 s the third rank would wait
    assert failed == 1
    assert outcomes[0].result is not None
    assert _serial.loads(outcomes[0].result[1]) == 0
    assert outcomes[1].result is not None
    ok, dumped = outcomes[1].result
    assert not ok
    assert "ValueError: rank 1 is out of data" in dumped[3]
    stopped = outcomes[2].died
    assert isinstance(stopped, TaskKilled)
    assert stopped.reason == "another worker of the broadcast failed first"
    # A group that lost a rank cannot meet again: every slot gets a new child, also the
    # one whose child returned and stayed.
    after = [r["pid"] for r in values(every(ranks, meet, str(tmp_path / "c"), RANKS)[0])]
    assert not set(after) & set(before)


def sleep_long() -> None:
    import time

    time.sleep(60)


def test_cancel_kills_every_child_of_the_task(ranks: ProcessExecutor) -> None:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            every(ranks, sleep_long, task_id=4242)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while len([c for c in ranks.children() if c.task_id == 4242]) < RANKS:
        assert time.monotonic() < deadline, ranks.children()
        time.sleep(0.01)
    pids = [c.pid for c in ranks.children()]
    assert ranks.cancel(4242)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert len(raised) == 1
    assert isinstance(raised[0], TaskKilled)
    assert raised[0].reason == "the task was cancelled"
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def busy(seconds: float) -> int:
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def test_calls_wait_for_each_other_whole_and_never_deadlock(
    ranks: ProcessExecutor, tmp_path: Path
) -> None:
    """Two broadcasts and tasks at once: each broadcast takes every child together (two
    that took some each would wait at their barriers forever), and tasks do not starve
    them."""
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def broadcast(name: str) -> None:
        try:
            results[name] = every(ranks, meet, str(tmp_path / name), RANKS)
        except BaseException as exc:
            errors.append(exc)

    def task(name: str) -> None:
        try:
            results[name] = ranks.run(
                next(_ids),
                _wire.RUN,
                _key(busy),
                _serial.dumps(busy),
                _serial.dumps(((0.3,), {})),
                _ignore,
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=task, args=("t0",))]
    threads += [threading.Thread(target=broadcast, args=(f"b{k}",)) for k in range(2)]
    threads += [threading.Thread(target=task, args=(f"t{k}",)) for k in range(1, 4)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    for name in ("b0", "b1"):
        outcomes, failed = results[name]
        assert failed is None
        assert [r["worker"] for r in values(outcomes)] == [0, 1, 2]
    for name in ("t0", "t1", "t2", "t3"):
        assert results[name][0], results[name]


def test_run_every_wants_one_output_callback_per_child(ranks: ProcessExecutor) -> None:
    with pytest.raises(ValueError, match="run_every needs 3 output callbacks; got 1"):
        ranks.run_every(1, _key(busy), _serial.dumps(busy), _serial.dumps(((0,), {})), [_ignore])


def linger_at_exit() -> int:
    import atexit
    import os
    import time

    atexit.register(time.sleep, 0.5)  # as a process group or a GPU context winding down
    return os.getpid()


def still_there(pids: list[int]) -> list[int]:
    import os

    return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_one_shot_ranks_start_only_once_the_last_group_has_exited() -> None:
    ex = ProcessExecutor(size=RANKS, reuse=False, sys_path=[], env={}, info=_info(RANKS))
    try:
        first = values(every(ex, linger_at_exit)[0])
        assert len(set(first)) == RANKS
        # The new group's ranks run only when the old ones are gone (not zombies either).
        assert values(every(ex, still_there, first)[0]) == [[]] * RANKS
    finally:
        ex.close()
