"""``consistency="eventual"``: writes gather into batches, a process reads its own writes
from its view, and answers that need every write send the batch first. The store is
replaced by a recording backend; the real one is exercised on Local nodes."""

from __future__ import annotations

from typing import Any

from skyward_trio import _collections as ops
from skyward_trio._collections import Counter, Dict, Set
from skyward_trio._eventual import EventualBackend


class Recorder:
    """A strong backend that answers from fixed values and records every request."""

    def __init__(self, counter: int = 0) -> None:
        self.calls: list[tuple[int, str, tuple[Any, ...]]] = []
        self.counter = counter

    def call(self, op: int, name: str, *args: Any) -> Any:
        self.calls.append((op, name, args))
        if op == ops.C_GET:
            return self.counter
        if op in (ops.D_GET, ops.D_POP):
            return (False, None)
        if op == ops.S_HAS:
            return False
        return None

    async def call_async(self, op: int, name: str, *args: Any) -> Any:
        return self.call(op, name, *args)

    def ops(self) -> list[int]:
        return [op for op, _, _ in self.calls]


def test_increments_add_up_into_one_write() -> None:
    store = Recorder(counter=10)
    backend = EventualBackend(store)
    counter = Counter(backend, "c")
    values = [counter.increment() for _ in range(100)]
    assert values == list(range(11, 111))  # from the value it read once, then locally
    assert counter.decrement(5) == 105
    backend.flush()
    assert store.ops() == [ops.C_GET, ops.BATCH]
    assert store.calls[-1][2] == ([(ops.C_ADD, "c", (95,))],)


def test_a_process_reads_its_own_writes_without_asking_the_store() -> None:
    store = Recorder()
    backend = EventualBackend(store)
    d, s = Dict(backend, "d"), Set(backend, "s")
    d["k"] = [1, 2]
    d.update({"j": 3})
    s.add("m")
    assert d["k"] == [1, 2]
    assert d.get("j") == 3
    assert "m" in s
    del d["k"]
    assert "k" not in d
    assert store.calls == []  # nothing sent yet: it all waits in one batch
    backend.flush()
    ((op, _, (batch,)),) = store.calls
    assert op == ops.BATCH
    assert [write[0] for write in batch] == [ops.D_SET, ops.D_UPDATE, ops.S_ADD, ops.D_DEL]


def test_answers_that_need_every_write_send_the_batch_first() -> None:
    store = Recorder()
    backend = EventualBackend(store)
    d = Dict(backend, "d")
    d["k"] = 1
    assert d.pop("other", "default") == "default"
    assert store.ops() == [ops.BATCH, ops.D_POP]


def test_an_unknown_key_is_read_from_the_store_once() -> None:
    store = Recorder()
    backend = EventualBackend(store)
    d = Dict(backend, "d")
    assert d.get("k") is None
    assert "k" not in d  # answered from the view: read a moment ago
    assert store.ops() == [ops.D_GET]
