"""``consistency="eventual"`` on a node: a local view, and writes sent in batches.

Writes (``d[k] = v``, ``del d[k]``, ``update``, ``s.add``, ``s.discard``, counter
``increment`` / ``decrement`` / ``reset``) change this process's view at once and join an
outbox; a daemon thread sends the outbox as one ``BATCH`` request every ``FLUSH_EVERY``
seconds (and when the process exits), adding up consecutive increments of one counter.
Reads (``d[k]``, ``get``, ``k in d``, ``v in s``, ``counter.value``) answer from the view
when it learned the answer less than ``STALE_AFTER`` seconds ago (from a write here or a
read from the store), else ask the store. Operations whose answer depends on every write
(``pop``, ``len(s)``) send the outbox first and then go to the store.

So a process reads its own writes, other processes see them within about
``FLUSH_EVERY`` plus a round trip, and no write is lost unless its process dies before
the next batch. The rejected alternative, a write-back cache invalidated by the store,
needs the store to track every reader: more state on the head node for a mode whose
point is to talk to it less.

Layer 3: stdlib, ``_serial`` and ``_collections``; imported inside running functions.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from typing import Any

from . import _collections as ops
from . import _serial

__all__ = ["FLUSH_EVERY", "STALE_AFTER", "EventualBackend"]

FLUSH_EVERY = 0.01
STALE_AFTER = 0.1
_BATCH_MAX = 4096


def _view_key(payload: _serial.Payload) -> bytes:
    """A hashable stand-in for a pickled key (equal keys that pickle differently only
    cost a read from the store)."""
    head, _, bufs, _ = payload
    parts = [head.raw() if hasattr(head, "raw") else head]
    parts.extend(b.raw() if hasattr(b, "raw") else b for b in bufs)
    return b"".join(bytes(p) for p in parts)


class _Entry:
    __slots__ = ("at", "value")

    def __init__(self, value: Any, at: float) -> None:
        self.value = value
        self.at = at


class EventualBackend:
    """Wraps this process's strong backend with the view and the outbox."""

    def __init__(self, inner: ops.Backend) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one batch in flight at a time, in order
        self._outbox: list[tuple[int, str, tuple[Any, ...]]] = []
        self._view: dict[tuple[int, str, bytes], _Entry] = {}  # (kind, name, key) -> answer
        self._counters: dict[str, _Entry] = {}  # name -> value read from the store
        self._deltas: dict[str, int] = {}  # name -> increments not sent yet
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- the Backend protocol ---------------------------------------------------------

    def call(self, op: int, name: str, *args: Any) -> Any:
        if op in (ops.D_GET, ops.D_HAS):
            return self._dict_read(op, name, args[0])
        if op == ops.S_HAS:
            return self._set_read(name, args[0])
        if op == ops.C_GET:
            return self._counter_read(name)
        if op == ops.C_ADD and name not in self._counters:
            self._counter_read(name)  # learn its value once, to answer with the new one
        if op in (ops.D_SET, ops.D_UPDATE, ops.S_ADD, ops.S_DISCARD, ops.C_ADD, ops.C_SET):
            return self._write(op, name, args)
        if op == ops.D_DEL:
            found = self._dict_read(ops.D_HAS, name, args[0])
            if found:
                self._write(op, name, args)
            return found
        # pop, len: their answer depends on every write, here and elsewhere.
        self.flush()
        with self._lock:
            self._forget(name)
        return self._inner.call(op, name, *args)

    async def call_async(self, op: int, name: str, *args: Any) -> Any:
        return await ops.in_thread(lambda: self.call(op, name, *args))

    # -- reads --------------------------------------------------------------------------

    def _fresh(self, entry: _Entry | None) -> bool:
        return entry is not None and time.monotonic() - entry.at < STALE_AFTER

    def _dict_read(self, op: int, name: str, key: _serial.Payload) -> Any:
        slot = (ops.D_GET, name, _view_key(key))
        with self._lock:
            entry = self._view.get(slot)
            if self._fresh(entry):
                assert entry is not None
                found, value = entry.value
                return (found, value) if op == ops.D_GET else found
        found, value = self._inner.call(ops.D_GET, name, key)
        with self._lock:
            self._view[slot] = _Entry((found, value), time.monotonic())
        return (found, value) if op == ops.D_GET else found

    def _set_read(self, name: str, member: _serial.Payload) -> bool:
        slot = (ops.S_HAS, name, _view_key(member))
        with self._lock:
            entry = self._view.get(slot)
            if self._fresh(entry):
                assert entry is not None
                return bool(entry.value)
        present = bool(self._inner.call(ops.S_HAS, name, member))
        with self._lock:
            self._view[slot] = _Entry(present, time.monotonic())
        return present

    def _counter_read(self, name: str) -> int:
        with self._lock:
            entry = self._counters.get(name)
            if self._fresh(entry):
                assert entry is not None
                return int(entry.value) + self._deltas.get(name, 0)
        self.flush()  # then the store's value includes every increment made here
        value = int(self._inner.call(ops.C_GET, name))
        with self._lock:
            self._counters[name] = _Entry(value, time.monotonic())
            return value + self._deltas.get(name, 0)

    # -- writes -------------------------------------------------------------------------

    def _write(self, op: int, name: str, args: tuple[Any, ...]) -> Any:
        now = time.monotonic()
        result: Any = None
        with self._lock:
            if op == ops.D_SET:
                self._view[(ops.D_GET, name, _view_key(args[0]))] = _Entry((True, args[1]), now)
            elif op == ops.D_DEL:
                self._view[(ops.D_GET, name, _view_key(args[0]))] = _Entry((False, None), now)
            elif op == ops.D_UPDATE:
                for key, value in args[0]:
                    self._view[(ops.D_GET, name, _view_key(key))] = _Entry((True, value), now)
            elif op in (ops.S_ADD, ops.S_DISCARD):
                self._view[(ops.S_HAS, name, _view_key(args[0]))] = _Entry(op == ops.S_ADD, now)
            elif op == ops.C_ADD:
                self._deltas[name] = self._deltas.get(name, 0) + int(args[0])
                base = self._counters.get(name)
                # The value as this process knows it; other processes' increments show up
                # once the view is refreshed.
                result = (int(base.value) if base else 0) + self._deltas[name]
            elif op == ops.C_SET:
                self._deltas.pop(name, None)
                self._counters[name] = _Entry(int(args[0]), now)
            last = self._outbox[-1] if self._outbox else None
            if op == ops.C_ADD and last is not None and last[:2] == (ops.C_ADD, name):
                self._outbox[-1] = (op, name, (int(last[2][0]) + int(args[0]),))
            else:
                self._outbox.append((op, name, args))
            full = len(self._outbox) >= _BATCH_MAX
            self._start_flusher()
        if full:
            self.flush()
        else:
            self._wake.set()
        return result

    def _forget(self, name: str) -> None:
        """Drop what the view knows of ``name`` (called with the lock held)."""
        for slot in [s for s in self._view if s[1] == name]:
            del self._view[slot]

    # -- sending ------------------------------------------------------------------------

    def flush(self) -> None:
        """Send the outbox now (blocking) as one batch, applied by the store in order."""
        with self._flush_lock:
            with self._lock:
                batch, self._outbox = self._outbox, []
                sent = {name: delta for name, delta in self._deltas.items() if delta}
            if not batch:
                return
            self._inner.call(ops.BATCH, "", batch)
            with self._lock:
                for name, delta in sent.items():
                    left = self._deltas.get(name, 0) - delta
                    if left:
                        self._deltas[name] = left
                    else:
                        self._deltas.pop(name, None)
                    base = self._counters.get(name)
                    if base is not None:
                        base.value = int(base.value) + delta

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_forever, name="skyward-eventual-flusher", daemon=True
            )
            self._flusher.start()
            atexit.register(self._flush_at_exit)

    def _flush_forever(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(FLUSH_EVERY)  # let writes gather into one batch
            self._wake.clear()
            self._flush_reporting()

    def _flush_at_exit(self) -> None:
        self._flush_reporting()

    def _flush_reporting(self) -> None:
        # Nobody waits for a background batch: a failure is said in the worker's log.
        try:
            self.flush()
        except Exception as exc:
            print(
                f"skyward: eventual collections: a batch of writes was not applied: {exc}",
                file=sys.stderr,
            )
