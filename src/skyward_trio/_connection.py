"""The client's end of one worker connection: handshake, pipelined calls, results.

Many calls are in flight on one connection. Frames are written straight from the calling
task (asyncssh buffers them; a caller waits only when the channel is over its high-water
mark). Incoming bytes are decoded in the transport's data callback, on the trio thread,
and complete the waiting call directly: no task switch on either path.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import secrets
import sys
from collections.abc import Callable
from typing import Any

import trio

from . import _heartbeat, _serial, _transport, _wire
from ._errors import ConnectionLostError, ProvisionError, VersionMismatchError
from ._version import PYTHON_VERSION, __version__

__all__ = ["WorkerConnection", "print_output"]

_ids = itertools.count(1)


#: Called once with the worker's reply message, or with the error that ended the wait.
Callback = Callable[[tuple[Any, ...] | None, BaseException | None], None]
#: Receives ``(node, samples, problems)`` for each batch of metrics (``_wire.METRICS``).
MetricsCallback = Callable[[int, list[tuple[Any, ...]], list[str]], None]


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

    @property
    def available(self) -> int:
        """Room free now (items that may be sent without waiting)."""
        return max(0, self._available)

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


#: Acknowledge received frames after this many, or this many bytes (the worker keeps
#: each frame until then), or at the next heartbeat.
_ACK_FRAMES = 256
_ACK_BYTES = 8 * 1024 * 1024
_BEAT = b"".join(_wire.encode((_wire.BEAT,)))


class WorkerConnection:
    """Calls into one node's worker over an SSH channel: one session of the worker.

    The session survives a dropped connection (``resume`` on a new SSH connection): the
    worker keeps running its tasks and keeps every frame it sent until this side
    acknowledges it, so results are replayed, not lost and not computed again. Frames are
    numbered by their order in the session, on both sides, without a number on the wire;
    the acknowledgement is cumulative and lazy (every ``_ACK_FRAMES`` frames or
    ``_ACK_BYTES`` bytes, and at each heartbeat), so it costs no round trip. While the
    link is down, ``usable`` is False and calls wait here; ``lose`` ends the session for
    good and fails them.
    """

    def __init__(self, node: int, ssh: _transport.SSHConnection, socket_path: str) -> None:
        self.node = node
        self._ssh = ssh
        self._socket_path = socket_path
        self._secret = ""
        self._decoder = _wire.FrameDecoder(expect_hello=True)
        self._link: _transport.WorkerLink | None = None
        self._control: _transport.WorkerLink | None = None
        self._generation = 0  # which links' callbacks count: older links are gone
        self._session_id = secrets.token_hex(8)
        self._hello: dict[str, Any] | None = None
        self._hello_event = trio.Event()
        self._pending: dict[int, Callback] = {}
        self._items: dict[int, Callable[[_serial.Payload], None]] = {}
        # Calls whose output also goes to a sink of their own (a pool server's client).
        self._outputs: dict[int, Callable[[str, str], None]] = {}
        self._input_credits: dict[tuple[int, int], Credits] = {}
        self._sent_functions: set[str] = set()
        self._probes: dict[int, _Slot] = {}
        self._heard = 0  # chunks received on either channel: what the heartbeat listens to
        # The session's frame counts, and what each call's frame needs for a resend.
        self._received = 0
        self._acked = 0
        self._unacked_bytes = 0
        self._sent = 0
        self._frames: dict[int, _Frame] = {}  # task id -> its RUN/BATCH, until its reply
        # A cancelled call's frame that carried its function: a later call's frame may
        # rely on it, so it goes again if it had not arrived (one per function).
        self._orphans: dict[str, _Frame] = {}
        self._credited: dict[int, int] = {}  # streamed items read, per task (a total)
        self._cancels: collections.deque[int] = collections.deque(maxlen=1024)
        self._up = False
        self._shutting_down = False
        self._link_down = trio.Event()
        self.down_reason: str | None = None
        self.closed = trio.Event()  # the session is over for good
        self.worker_pid: int | None = None
        #: Receives ``(node, "stdout" | "stderr", text)`` for each chunk of task output.
        self.on_output: Callable[[int, str, str], None] = print_output
        self._on_metrics: MetricsCallback | None = None
        #: The provider's interruption notice the worker passed on (``_wire.NOTICE``):
        #: ``(action, at)``, the first one; the worker sends it on every control channel.
        #: Action ``"rebalance"`` is EC2's rebalance recommendation, which the interruption
        #: notice itself may follow (and then replace).
        self.notice: tuple[str, float] | None = None
        #: Called when ``notice`` is set: once, or twice (a recommendation, then a notice).
        self.on_notice: Callable[[], None] | None = None

    @property
    def usable(self) -> bool:
        """Whether calls can go out now (the link is up and the session not over)."""
        return self._up

    async def open(self, secret: str) -> None:
        """Open the data and control channels and complete both handshakes.

        The secret and versions are checked here, before anything is unpickled. The
        control channel carries cancellations: the worker reads it even while every one
        of its task threads is busy. The caller owns the deadline.
        """
        self._secret = secret
        await self._open_links(resume=False)
        self._up = True

    async def resume(self, ssh: _transport.SSHConnection) -> None:
        """Take the session up again over ``ssh`` (a new SSH connection to the same node).

        The worker replays what it sent that was not received here; calls whose frames
        did not reach it are sent again (they never ran there). Raises
        ``ConnectionLostError`` when the worker does not answer or no longer has the
        session, ``ProvisionError`` when the new link dropped while it opened (try
        again). The caller owns the deadline.
        """
        self._ssh = ssh
        try:
            reply = await self._open_links(resume=True)
        except _transport.SSHError as exc:
            # The SSH server answered but nothing listens on the worker's socket.
            raise ConnectionLostError(
                f"node {self.node}'s worker does not answer ({exc})", node=self.node
            ) from exc
        if not reply.get("resumed"):
            self._close_links()
            raise ConnectionLostError(
                f"node {self.node}'s worker no longer has this session (it was restarted, "
                "or the session expired)",
                node=self.node,
            )
        arrived = int(reply["received"])
        # Frames past what arrived go again, in their order, renumbered from there.
        again = sorted(
            [(f.seq, task_id, f) for task_id, f in self._frames.items() if f.seq > arrived]
            + [(f.seq, -1, f) for f in self._orphans.values() if f.seq > arrived]
        )
        self._orphans = {k: f for k, f in self._orphans.items() if f.seq > arrived}
        self._sent = arrived
        self._up = True
        for _, _, frame in again:
            self._sent += 1
            frame.seq = self._sent
            self._write_data(frame.chunks)
        for task_id in self._cancels:
            self._write_control(_wire.encode((_wire.CANCEL, task_id)))
        for task_id, total in self._credited.items():
            self._write_control(_wire.encode((_wire.CREDIT, task_id, total)))

    async def _open_links(self, *, resume: bool) -> dict[str, Any]:
        """Open both channels for this session; return the worker's data hello."""
        self._generation += 1
        generation = self._generation
        self._decoder = _wire.FrameDecoder(expect_hello=True)
        self._hello = None
        self._hello_event = trio.Event()
        self._link_down = trio.Event()
        hello: dict[str, Any] = {
            "secret": self._secret,
            "python": PYTHON_VERSION,
            "skyward": __version__,
            "session": self._session_id,
        }

        def on_data(data: bytes) -> None:
            if generation == self._generation:
                self._on_data(data)

        def on_close(reason: str) -> None:
            if generation == self._generation:
                self._on_close(reason)

        try:
            self._link = await self._ssh.open_unix(self._socket_path, on_data, on_close)
            data_hello = {**hello, "role": "data"}
            if resume:
                data_hello.update(resume=True, received=self._received)
            self._link.write(_wire.encode_hello(data_hello))
            await self._hello_event.wait()  # also set when the link closes
            reply = self._check_hello(self._hello, self._link)
            if resume and not reply.get("resumed"):
                return reply  # the worker has no such session, and closes this link
            self._dispatch(self._decoder.release())

            control_hello: list[dict[str, Any]] = []
            control_decoder = _wire.FrameDecoder(expect_hello=True)
            answered = trio.Event()

            def on_control_data(data: bytes) -> None:
                if generation != self._generation:
                    return
                self._heard += 1
                try:
                    messages = control_decoder.feed(data)
                except _wire.ProtocolError as exc:
                    self.lose(f"protocol error on the control channel: {exc}")
                    return
                for msg in messages:
                    if isinstance(msg, dict):
                        control_hello.append(msg)
                        answered.set()
                    else:
                        self._on_control_message(msg)

            def on_control_close(reason: str) -> None:
                answered.set()
                if generation == self._generation:
                    self._on_close(f"control channel: {reason}")

            self._control = await self._ssh.open_unix(
                self._socket_path, on_control_data, on_control_close
            )
            self._control.write(_wire.encode_hello({**hello, "role": "control"}))
            await answered.wait()
            self._check_hello(control_hello[0] if control_hello else None, self._control)
            for msg in control_decoder.release():
                self._on_control_message(msg)
            for link in (self._link, self._control):
                if link.closed.is_set():
                    raise ProvisionError(
                        f"node {self.node}: the worker link closed while it opened "
                        f"({link.close_reason})",
                        node=self.node,
                        phase="worker",
                    )
        except BaseException:
            self._close_links()
            raise
        return reply

    def _on_control_message(self, msg: tuple[Any, ...]) -> None:
        if msg[0] == _wire.PROBE_RESULT:
            slot = self._probes.pop(msg[1], None)
            if slot is not None:
                slot(msg, None)
        elif msg[0] == _wire.METRICS and self._on_metrics is not None:
            self._on_metrics(self.node, msg[1], msg[2])
        elif msg[0] == _wire.NOTICE and _supersedes(str(msg[1]), self.notice):
            self.notice = (str(msg[1]), float(msg[2]))
            if self.on_notice is not None:
                self.on_notice()

    def _check_hello(
        self, hello: dict[str, Any] | None, link: _transport.WorkerLink
    ) -> dict[str, Any]:
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
        return hello

    async def serve(self) -> None:
        """Return when the link goes down (``down_reason`` says why).

        Meanwhile, beat on the control channel every ``_heartbeat.BEAT_INTERVAL`` (and
        acknowledge what arrived, so the worker frees it), and listen for the worker's
        beats: a worker not heard from for ``_heartbeat.SILENCE_LIMIT`` whose node's SSH
        server does not answer either is cut off, and the link is treated as dropped.
        The worker watches for the client's silence from its first beat, so the beats
        start here, when the session is in use, not while it is being set up.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_worker)
            while not self._link_down.is_set():
                self._write_control([_BEAT])
                with trio.move_on_after(_heartbeat.BEAT_INTERVAL):
                    await self._link_down.wait()
                if self._received > self._acked:
                    self._ack()
            nursery.cancel_scope.cancel(reason="the link went down")

    async def _watch_worker(self) -> None:
        why: list[str] = []

        async def node_answers() -> bool:
            # An answer means the node is there and its worker silent because it is busy
            # (a task holding the GIL in C code stops every thread of it), not cut off:
            # a worker that stays that way is for the health check to judge.
            with trio.move_on_after(_heartbeat.CHECK_TIMEOUT):
                try:
                    link = await self._ssh.open_unix(self._socket_path, _ignore, _ignore)
                except _transport.SSHError as exc:
                    why.append(f"its socket does not answer ({exc})")
                    return False
                link.close()
                return True
            why.append(
                f"the node's SSH server did not answer within {_heartbeat.CHECK_TIMEOUT:g} s"
            )
            return False

        await _heartbeat.wait_for_silence(lambda: self._heard, still_there=node_answers)
        self._on_close(
            f"nothing heard from the worker for {_heartbeat.SILENCE_LIMIT:g} s "
            f"(heartbeat), and {why[-1]}"
        )

    def _on_close(self, reason: str) -> None:
        self._hello_event.set()
        if self._shutting_down:
            self._fail_all(reason)  # we asked the worker to exit
        if not self._up:
            return
        self._up = False
        self.down_reason = reason
        self._close_links()
        # Calls fed from Iterator[T] arguments cannot resume: items sent on the way may be
        # lost. They fail (and are not re-sent); the worker is told to drop them.
        error = ConnectionLostError(
            f"the connection to node {self.node}'s worker was lost ({reason})", node=self.node
        )
        for task_id in {task_id for task_id, _ in self._input_credits}:
            callback = self._pending.pop(task_id, None)
            self._drop(task_id)
            self._cancels.append(task_id)
            if callback is not None:
                callback(None, error)
        self._fail_probes(error)  # asked on the old control channel: no answer will come
        self._link_down.set()

    def lose(self, reason: str) -> None:
        """End the session for good: every call waiting here fails with the reason."""
        if not self.closed.is_set():
            self.down_reason = reason
        self._fail_all(reason)
        self._close_links()

    def _fail_all(self, reason: str) -> None:
        self._up = False
        self.closed.set()
        self._link_down.set()
        error = ConnectionLostError(
            f"the connection to node {self.node}'s worker was lost ({reason})", node=self.node
        )
        self._items.clear()
        self._outputs.clear()
        self._frames.clear()
        self._orphans.clear()
        self._credited.clear()
        pending, self._pending = self._pending, {}
        for callback in pending.values():
            callback(None, error)
        self._fail_probes(error)

    def _fail_probes(self, error: ConnectionLostError) -> None:
        probes, self._probes = self._probes, {}
        for slot in probes.values():
            slot(None, error)

    def _close_links(self) -> None:
        self._generation += 1  # their callbacks no longer count
        for link in (self._link, self._control):
            if link is not None:
                link.close()

    def _on_data(self, data: bytes) -> None:
        self._heard += 1
        try:
            messages = self._decoder.feed(data)
        except _wire.ProtocolError as exc:
            self.lose(f"protocol error: {exc}")
            return
        self._dispatch(messages)
        self._unacked_bytes += len(data)
        if self._received - self._acked >= _ACK_FRAMES or self._unacked_bytes >= _ACK_BYTES:
            self._ack()

    def _ack(self) -> None:
        if self._up and self._control is not None:
            with contextlib.suppress(_transport.SSHError):
                self._control.write(b"".join(_wire.encode((_wire.ACK, self._received))))
            self._acked = self._received
            self._unacked_bytes = 0

    def _dispatch(self, messages: list[Any]) -> None:
        for msg in messages:
            if isinstance(msg, dict):
                self._hello = msg
                self._hello_event.set()
                continue
            self._received += 1
            if msg[0] == _wire.OUTPUT:
                if msg[1] in self._pending:  # a cancelled task's output is dropped too
                    self.on_output(self.node, msg[2], msg[3])
                    sink = self._outputs.get(msg[1])
                    if sink is not None:
                        sink(msg[2], msg[3])
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
            self._drop(msg[1])
            callback = self._pending.pop(msg[1], None)
            if callback is not None:
                callback(msg, None)

    def _drop(self, task_id: int) -> None:
        """Forget what a finished or abandoned call kept here."""
        self._items.pop(task_id, None)
        self._outputs.pop(task_id, None)
        self._frames.pop(task_id, None)
        if self._credited:
            self._credited.pop(task_id, None)

    def _send(self, task_id: int, chunks: list[Any], fn_key: str | None) -> None:
        """Send a call's frame now, or when the link is back; keep it until its reply."""
        if self.closed.is_set():
            raise ConnectionLostError(
                f"the connection to node {self.node}'s worker is closed", node=self.node
            )
        self._sent += 1
        self._frames[task_id] = _Frame(self._sent, chunks, fn_key)
        if self._up:
            self._write_data(chunks)

    def _write_data(self, chunks: list[Any]) -> None:
        # asyncssh's write is synchronous (it buffers), so there is no writer task to
        # hand frames to: one task switch less per call. A frame is one chunk unless it
        # carries out-of-band buffers, which are written as they are, uncopied. A write
        # that fails means the link went down: the frame goes again on resume.
        assert self._link is not None
        with contextlib.suppress(_transport.SSHError):
            for chunk in chunks:
                self._link.write(chunk)

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
        on_output: Callable[[str, str], None] | None = None,
        *,
        every: bool = False,
    ) -> int:
        """Send one task; ``callback`` gets its RESULT message. Returns the task id.

        ``on_output`` gets the task's output, ``(stream, text)``, as it comes (besides
        ``self.on_output``, which gets every task's).

        Synchronous (no task is spawned and nothing awaits), so the sync face can start a
        call straight from the portal's callback. Use ``forget`` to give up on it. With
        ``on_item`` the call streams: each item a generator yields is passed to it (grant
        more with ``credit``), and the RESULT ends the stream. With ``every`` (a broadcast)
        the task runs on each of the node's workers at once (``_plugin.workers_per_node``);
        its RESULT is the node's.
        """
        task_id = next(_ids)
        part = self._function_part(fn_key, fn_payload)
        message = (_wire.RUN, task_id, fn_key, part, args_payload, on_item is not None, every)
        self._pending[task_id] = callback
        if on_item is not None:
            self._items[task_id] = on_item
        if on_output is not None:
            self._outputs[task_id] = on_output
        try:
            self._send(task_id, _wire.encode(message), None if part is None else fn_key)
        except BaseException:
            del self._pending[task_id]
            self._items.pop(task_id, None)
            self._outputs.pop(task_id, None)
            raise
        return task_id

    def forget(self, task_id: int) -> None:
        """Stop waiting for a task and tell the worker to drop it (and free its slot)."""
        frame = self._frames.get(task_id)
        if frame is not None and frame.fn_key is not None:
            self._orphans[frame.fn_key] = frame
        self._drop(task_id)
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
        self._write_control(_wire.encode((_wire.INPUT, task_id, slot, payloads)), strict=True)

    def end_input(self, task_id: int, slot: int) -> None:
        self._write_control(_wire.encode((_wire.INPUT_END, task_id, slot)), strict=True)

    def _write_control(self, chunks: list[Any], *, strict: bool = False) -> None:
        """Write on the control channel; ``strict``: raise if the link is down."""
        if not self._up or self._control is None:
            if strict:
                raise ConnectionLostError(
                    f"the connection to node {self.node}'s worker is down", node=self.node
                )
            return
        try:
            for chunk in chunks:
                self._control.write(chunk)
        except _transport.SSHError as exc:
            if strict:
                raise ConnectionLostError(
                    f"the connection to node {self.node}'s worker was lost ({exc})",
                    node=self.node,
                ) from exc

    def credit(self, task_id: int, count: int) -> None:
        """Let a streaming task send ``count`` more items (we consumed that many)."""
        total = self._credited.get(task_id, 0) + count
        self._credited[task_id] = total
        self._write_control(_wire.encode((_wire.CREDIT, task_id, total)))

    async def call_batch(
        self, fn_key: str, fn_payload: _serial.Payload, items_payload: _serial.Payload
    ) -> tuple[Any, ...]:
        """Run ``fn`` over a batch of items; return its BATCH_RESULT message."""
        batch_id = next(_ids)
        part = self._function_part(fn_key, fn_payload)
        message = (_wire.BATCH, batch_id, fn_key, part, items_payload)
        return await self._roundtrip(batch_id, _wire.encode(message), part is not None, fn_key)

    async def _roundtrip(
        self, task_id: int, chunks: list[Any], carries_fn: bool, fn_key: str
    ) -> tuple[Any, ...]:
        slot = _Slot()
        self._pending[task_id] = slot
        try:
            self._send(task_id, chunks, fn_key if carries_fn else None)
            if self._link is not None and not self._link.writable:
                await self._link.wait_writable()
            await slot.event.wait()
        except BaseException:
            if self._pending.get(task_id) is not None:
                self.forget(task_id)
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.message is not None
        return slot.message

    def cancel(self, task_id: int) -> None:
        """Tell the worker to drop a task (and free its slot if it is running).

        Told again after a reconnect: the first word may have been lost with the link.
        """
        self._cancels.append(task_id)
        self._write_control(_wire.encode((_wire.CANCEL, task_id)))

    def stream_metrics(self, callback: MetricsCallback) -> None:
        """Have the worker send its metric samples on this link's control channel, to
        ``callback``. Asked again after each reconnection (a new control channel); a
        worker that samples nothing (``Image(metrics=None)``) ignores it."""
        self._on_metrics = callback
        self._write_control(_wire.encode((_wire.METRICS_ON,)))

    def shutdown(self) -> None:
        """Ask the worker to exit (best effort; the provider terminates the node anyway)."""
        self._shutting_down = True
        if self._up:
            self._sent += 1
            self._write_data(_wire.encode((_wire.SHUTDOWN,)))

    async def probe(self, payload: _serial.Payload) -> str | None:
        """Run the pool's health probe on the worker: None if it passed, else why it failed.

        The probe travels on the control channel and runs in a thread of its own on the
        worker, so a node whose task slots are all busy answers too. The caller owns the
        deadline; cancelling stops the wait (a late answer is dropped). Raises
        ``ConnectionLostError`` if the link is down or goes down meanwhile.
        """
        probe_id = next(_ids)
        slot = _Slot()
        self._probes[probe_id] = slot
        try:
            # Sent every time (a probe is small, and seconds apart): a worker that was
            # restarted or reconnected needs no state to answer.
            self._write_control(_wire.encode((_wire.PROBE, probe_id, payload)), strict=True)
            await slot.event.wait()
        finally:
            self._probes.pop(probe_id, None)
        if slot.error is not None:
            raise slot.error
        assert slot.message is not None
        _, _, ok, why = slot.message
        return None if ok else str(why)

    def close(self, reason: str = "the connection was closed by the client") -> None:
        """Close both channels and end the session here for good; pending calls fail with
        ``ConnectionLostError(reason)``."""
        self.lose(reason)


def _ignore(_: object) -> None:
    """Takes the data and the close of the link that only checks a silent node answers."""


class _Frame:
    """A call's frame as sent, its number in the session, and the function it carries."""

    __slots__ = ("chunks", "fn_key", "seq")

    def __init__(self, seq: int, chunks: list[Any], fn_key: str | None) -> None:
        self.seq = seq
        self.chunks = chunks
        self.fn_key = fn_key


def _supersedes(action: str, notice: tuple[str, float] | None) -> bool:
    """Whether a NOTICE of ``action`` replaces the one held: the first of each kind, and an
    interruption notice after a rebalance recommendation (never the other way round)."""
    if notice is None:
        return True
    return notice[0] == _wire.REBALANCE and action != _wire.REBALANCE
