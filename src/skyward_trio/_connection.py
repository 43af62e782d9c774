"""The client's end of one worker connection: handshake, pipelined calls, results.

Many calls are in flight on one connection. Frames are written straight from the calling
task (asyncssh buffers them; a caller waits only when the channel is over its high-water
mark). Incoming bytes are decoded in the transport's data callback, on the trio thread,
and complete the waiting call directly: no task switch on either path.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import sys
from collections.abc import Callable
from typing import Any

import trio

from . import _serial, _transport, _wire
from ._errors import ConnectionLostError, ProvisionError, VersionMismatchError
from ._version import PYTHON_VERSION, __version__

__all__ = ["WorkerConnection", "print_output"]

_ids = itertools.count(1)


#: Called once with the worker's reply message, or with the error that ended the wait.
Callback = Callable[[tuple[Any, ...] | None, BaseException | None], None]


class _Slot:
    __slots__ = ("error", "event", "message")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: tuple[Any, ...] | None = None
        self.error: BaseException | None = None

    def __call__(self, message: tuple[Any, ...] | None, error: BaseException | None) -> None:
        self.message = message
        self.error = error
        self.event.set()


class Credits:
    """How many more items may be sent; ``take`` waits for some."""

    def __init__(self, initial: int) -> None:
        self._available = initial
        self._changed = trio.Event()

    def grant(self, count: int) -> None:
        self._available += count
        self._changed.set()

    async def take(self, most: int) -> int:
        """Wait until some room is free; take up to ``most`` of it."""
        while self._available <= 0:
            self._changed = trio.Event()
            await self._changed.wait()
        taken = min(most, self._available)
        self._available -= taken
        return taken


def print_output(node: int, stream: str, text: str) -> None:
    """Print a task's output here, each line prefixed with its node."""
    target = sys.stdout if stream == "stdout" else sys.stderr
    lines = text.splitlines()
    target.write("".join(f"[node {node}] {line}\n" for line in lines))
    target.flush()


class WorkerConnection:
    """Calls into one node's worker over an SSH channel."""

    def __init__(self, node: int, ssh: _transport.SSHConnection, socket_path: str) -> None:
        self.node = node
        self._ssh = ssh
        self._socket_path = socket_path
        self._decoder = _wire.FrameDecoder(expect_hello=True)
        self._link: _transport.WorkerLink | None = None
        self._control: _transport.WorkerLink | None = None
        self._session_id = secrets.token_hex(8)
        self._hello: dict[str, Any] | None = None
        self._hello_event = trio.Event()
        self._pending: dict[int, Callback] = {}
        self._items: dict[int, Callable[[_serial.Payload], None]] = {}
        self._input_credits: dict[tuple[int, int], Credits] = {}
        self._sent_functions: set[str] = set()
        self._probes: dict[int, _Slot] = {}
        self.closed = trio.Event()
        self.worker_pid: int | None = None
        #: Receives ``(node, "stdout" | "stderr", text)`` for each chunk of task output.
        self.on_output: Callable[[int, str, str], None] = print_output

    async def open(self, secret: str) -> None:
        """Open the data and control channels and complete both handshakes.

        The secret and versions are checked here, before anything is unpickled. The
        control channel carries cancellations: the worker reads it even while every one
        of its task threads is busy. The caller owns the deadline.
        """
        hello = {
            "secret": secret,
            "python": PYTHON_VERSION,
            "skyward": __version__,
            "session": self._session_id,
        }
        self._link = await self._ssh.open_unix(self._socket_path, self._on_data, self._on_close)
        self._link.write(_wire.encode_hello({**hello, "role": "data"}))
        await self._hello_event.wait()  # also set when the link closes
        self._check_hello(self._hello, self._link)
        self._dispatch(self._decoder.release())

        control_hello: list[dict[str, Any]] = []
        control_decoder = _wire.FrameDecoder(expect_hello=True)
        answered = trio.Event()

        def on_control_data(data: bytes) -> None:
            try:
                messages = control_decoder.feed(data)
            except _wire.ProtocolError as exc:
                self.close(f"protocol error on the control channel: {exc}")
                return
            for msg in messages:
                if isinstance(msg, dict):
                    control_hello.append(msg)
                    answered.set()
                else:
                    self._on_control_message(msg)

        def on_control_close(reason: str) -> None:
            answered.set()
            self._on_close(f"control channel: {reason}")

        self._control = await self._ssh.open_unix(
            self._socket_path, on_control_data, on_control_close
        )
        self._control.write(_wire.encode_hello({**hello, "role": "control"}))
        await answered.wait()
        self._check_hello(control_hello[0] if control_hello else None, self._control)
        for msg in control_decoder.release():
            self._on_control_message(msg)

    def _on_control_message(self, msg: tuple[Any, ...]) -> None:
        if msg[0] == _wire.PROBE_RESULT:
            slot = self._probes.pop(msg[1], None)
            if slot is not None:
                slot(msg, None)

    def _check_hello(self, hello: dict[str, Any] | None, link: _transport.WorkerLink) -> None:
        if hello is None:
            reason = link.close_reason or "no answer"
            raise ProvisionError(
                f"node {self.node}: the worker did not complete the handshake ({reason})",
                node=self.node,
                phase="worker",
            )
        if not hello.get("ok"):
            error = str(hello.get("error"))
            if "version mismatch" in error:
                raise VersionMismatchError(f"node {self.node}: {error}")
            raise ProvisionError(f"node {self.node}: {error}", node=self.node, phase="worker")
        self.worker_pid = hello.get("pid")

    async def serve(self) -> None:
        """Return when the link closes (pending calls have failed by then)."""
        assert self._link is not None
        await self._link.closed.wait()

    def _on_close(self, reason: str) -> None:
        self._hello_event.set()
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        self.closed.set()
        error = ConnectionLostError(
            f"the connection to node {self.node}'s worker was lost ({reason})", node=self.node
        )
        self._items.clear()
        pending, self._pending = self._pending, {}
        probes, self._probes = self._probes, {}
        callbacks: list[Callback] = [*pending.values(), *probes.values()]
        for callback in callbacks:
            callback(None, error)

    def _on_data(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except _wire.ProtocolError as exc:
            self._fail_all(f"protocol error: {exc}")
            if self._link is not None:
                self._link.close()
            return
        self._dispatch(messages)

    def _dispatch(self, messages: list[Any]) -> None:
        for msg in messages:
            if isinstance(msg, dict):
                self._hello = msg
                self._hello_event.set()
                continue
            if msg[0] == _wire.OUTPUT:
                if msg[1] in self._pending:  # a cancelled task's output is dropped too
                    self.on_output(self.node, msg[2], msg[3])
                continue
            if msg[0] == _wire.INPUT_CREDIT:
                credits = self._input_credits.get((msg[1], msg[2]))
                if credits is not None:
                    credits.grant(msg[3])
                continue
            if msg[0] == _wire.ITEM:
                on_item = self._items.get(msg[1])
                if on_item is not None:
                    on_item(msg[2])
                continue
            self._items.pop(msg[1], None)
            callback = self._pending.pop(msg[1], None)
            if callback is not None:
                callback(msg, None)

    def _send(self, chunks: list[Any]) -> None:
        # asyncssh's write is synchronous (it buffers), so there is no writer task to
        # hand frames to: one task switch less per call. A frame is one chunk unless it
        # carries out-of-band buffers, which are written as they are, uncopied.
        self._write(self._link, chunks)

    def _write(self, link: _transport.WorkerLink | None, chunks: list[Any]) -> None:
        if link is None or self.closed.is_set():
            raise ConnectionLostError(
                f"the connection to node {self.node}'s worker is closed", node=self.node
            )
        try:
            for chunk in chunks:
                link.write(chunk)
        except _transport.SSHError as exc:
            raise ConnectionLostError(
                f"the connection to node {self.node}'s worker was lost ({exc})", node=self.node
            ) from exc

    def _function_part(self, fn_key: str, fn_payload: _serial.Payload) -> _serial.Payload | None:
        if fn_key in self._sent_functions:
            return None
        self._sent_functions.add(fn_key)
        return fn_payload

    def call_nowait(
        self,
        fn_key: str,
        fn_payload: _serial.Payload,
        args_payload: _serial.Payload,
        callback: Callback,
        on_item: Callable[[_serial.Payload], None] | None = None,
    ) -> int:
        """Send one task; ``callback`` gets its RESULT message. Returns the task id.

        Synchronous (no task is spawned and nothing awaits), so the sync face can start a
        call straight from the portal's callback. Use ``forget`` to give up on it. With
        ``on_item`` the call streams: each item a generator yields is passed to it (grant
        more with ``credit``), and the RESULT ends the stream.
        """
        task_id = next(_ids)
        message = (
            _wire.RUN,
            task_id,
            fn_key,
            self._function_part(fn_key, fn_payload),
            args_payload,
            on_item is not None,
        )
        self._pending[task_id] = callback
        if on_item is not None:
            self._items[task_id] = on_item
        try:
            self._send(_wire.encode(message))
        except BaseException:
            del self._pending[task_id]
            self._items.pop(task_id, None)
            raise
        return task_id

    def forget(self, task_id: int) -> None:
        """Stop waiting for a task and tell the worker to drop it (and free its slot)."""
        self._items.pop(task_id, None)
        if self._pending.pop(task_id, None) is not None:
            self.cancel(task_id)

    def input_credits(self, task_id: int, slot: int, window: int) -> Credits:
        """Room to send items of a streamed argument; the node grants more as it reads."""
        credits = Credits(window)
        self._input_credits[(task_id, slot)] = credits
        return credits

    def drop_input_credits(self, task_id: int, slot: int) -> None:
        self._input_credits.pop((task_id, slot), None)

    def send_input(self, task_id: int, slot: int, payloads: list[_serial.Payload]) -> None:
        self._write_control(_wire.encode((_wire.INPUT, task_id, slot, payloads)))

    def end_input(self, task_id: int, slot: int) -> None:
        self._write_control(_wire.encode((_wire.INPUT_END, task_id, slot)))

    def _write_control(self, chunks: list[Any]) -> None:
        self._write(self._control, chunks)

    def credit(self, task_id: int, count: int) -> None:
        """Let a streaming task send ``count`` more items (we consumed that many)."""
        if self._control is not None and not self.closed.is_set():
            with contextlib.suppress(_transport.SSHError):
                self._control.write(b"".join(_wire.encode((_wire.CREDIT, task_id, count))))

    async def call_batch(
        self, fn_key: str, fn_payload: _serial.Payload, items_payload: _serial.Payload
    ) -> tuple[Any, ...]:
        """Run ``fn`` over a batch of items; return its BATCH_RESULT message."""
        batch_id = next(_ids)
        part = self._function_part(fn_key, fn_payload)
        message = (_wire.BATCH, batch_id, fn_key, part, items_payload)
        return await self._roundtrip(batch_id, _wire.encode(message))

    async def _roundtrip(self, task_id: int, chunks: list[Any]) -> tuple[Any, ...]:
        slot = _Slot()
        self._pending[task_id] = slot
        try:
            self._send(chunks)
            if self._link is not None and not self._link.writable:
                await self._link.wait_writable()
            await slot.event.wait()
        except BaseException:
            if self._pending.pop(task_id, None) is not None:
                self.cancel(task_id)
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.message is not None
        return slot.message

    def cancel(self, task_id: int) -> None:
        """Tell the worker to drop a task (and free its slot if it is running)."""
        if self._control is not None and not self.closed.is_set():
            with contextlib.suppress(_transport.SSHError):
                self._control.write(b"".join(_wire.encode((_wire.CANCEL, task_id))))

    def shutdown(self) -> None:
        """Ask the worker to exit (best effort; the provider terminates the node anyway)."""
        if not self.closed.is_set():
            self._send(_wire.encode((_wire.SHUTDOWN,)))

    async def probe(self, payload: _serial.Payload) -> str | None:
        """Run the pool's health probe on the worker: None if it passed, else why it failed.

        The probe travels on the control channel and runs in a thread of its own on the
        worker, so a node whose task slots are all busy answers too. The caller owns the
        deadline; cancelling stops the wait (a late answer is dropped). Raises
        ``ConnectionLostError`` if the link is closed or closes meanwhile.
        """
        probe_id = next(_ids)
        slot = _Slot()
        self._probes[probe_id] = slot
        try:
            # Sent every time (a probe is small, and seconds apart): a worker that was
            # restarted or reconnected needs no state to answer.
            self._write_control(_wire.encode((_wire.PROBE, probe_id, payload)))
            await slot.event.wait()
        finally:
            self._probes.pop(probe_id, None)
        if slot.error is not None:
            raise slot.error
        assert slot.message is not None
        _, _, ok, why = slot.message
        return None if ok else str(why)

    def close(self, reason: str = "closed by the client") -> None:
        """Close both channels; pending calls fail with ``ConnectionLostError(reason)``."""
        for link in (self._link, self._control):
            if link is not None:
                link.close(reason)
