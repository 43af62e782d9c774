"""Sans-I/O framing between the client and a worker.

A frame carries one message: a small header pickled with protocol 5 (builtins only) and
zero or more out-of-band buffers that travel raw, so a 100 MB array is never copied into
the header. Layout (little endian)::

    u32 header_len | u32 nbufs | u64 buf_len * nbufs | header | buf_0 | ... | buf_n-1

The first frame on a connection is different: a JSON hello (``encode_hello``), so that
the secret and versions can be checked before either side unpickles anything from the
other. The decoder stops after the hello and holds whatever follows until ``release()``.

``FrameDecoder`` is fed whatever bytes arrive and returns complete messages. Large
buffers are received straight into a buffer of their final size, not accumulated and
sliced (which would copy them twice).
"""

from __future__ import annotations

import hmac
import json
import pickle
import struct
from typing import Any

from ._version import PYTHON_VERSION, __version__

__all__ = [
    "ACK",
    "BATCH",
    "BATCH_RESULT",
    "BEAT",
    "CANCEL",
    "CREDIT",
    "INPUT",
    "INPUT_CREDIT",
    "INPUT_END",
    "ITEM",
    "METRICS",
    "METRICS_ON",
    "NOTICE",
    "OUTPUT",
    "PROBE",
    "PROBE_RESULT",
    "REBALANCE",
    "RESULT",
    "RUN",
    "SHUTDOWN",
    "FrameDecoder",
    "encode",
    "encode_hello",
]

# Client -> worker.
# every: a broadcast's, run on each of the node's workers (ranks) at once, one RESULT.
RUN = 1  # (RUN, task_id, fn_key, fn_payload | None, args_payload, stream: bool, every: bool)
BATCH = 2  # (BATCH, batch_id, fn_key, fn_payload | None, items_payload)
CANCEL = 3  # (CANCEL, task_id)
SHUTDOWN = 4  # (SHUTDOWN,)
CREDIT = 5  # (CREDIT, task_id, total): the client consumed `total` streamed items so far
INPUT = 6  # (INPUT, task_id, slot, [payload, ...]): items of an Iterator[T] argument (control)
INPUT_END = 7  # (INPUT_END, task_id, slot): that argument has no more items (control)
ACK = 8  # (ACK, n): the client received the session's first n worker frames (control)
# Both ways, on the control channel: "still here", every _heartbeat.BEAT_INTERVAL.
BEAT = 9  # (BEAT,)
# Worker -> client.
RESULT = 10  # (RESULT, task_id, ok, payload, elapsed_s)
BATCH_RESULT = 11  # (BATCH_RESULT, batch_id, payload, elapsed_s)
OUTPUT = 12  # (OUTPUT, task_id, "stdout" | "stderr", text): a task's output, as written
ITEM = 13  # (ITEM, task_id, payload): one item a streaming task yielded
INPUT_CREDIT = 14  # (INPUT_CREDIT, task_id, slot, n): the task read n input items; send more
# Health probes, both ways on the control channel, so they never wait behind tasks.
PROBE = 20  # (PROBE, probe_id, probe_payload): run the pool's health probe
PROBE_RESULT = 21  # (PROBE_RESULT, probe_id, ok: bool, why it failed: str)
# Metrics, on the control channel: the client asks for them once the node is ready, and
# the worker's sampler sends what it collected in batches (samples are not replayed).
METRICS_ON = 30  # (METRICS_ON,): send metric samples on this channel from now on
METRICS = 31  # (METRICS, [(name, value, unit, gpu index | None, time), ...], [problem, ...])
# The provider will reclaim the machine (an AWS spot interruption notice), on the control
# channel: sent on every control channel opened once the worker has seen it, so a client
# that was away when it came hears it on its return (the client keeps the first).
# action "rebalance" (REBALANCE): EC2's rebalance recommendation, which the interruption
# notice itself may follow on the same channel.
NOTICE = 40  # (NOTICE, action: "terminate" | "stop" | "hibernate" | "rebalance", at: epoch s)
REBALANCE = "rebalance"

_PREFIX = struct.Struct("<II")
_LEN = struct.Struct("<Q")
_HELLO = struct.Struct("<I")
# Buffers this large are received into their own preallocated bytearray.
_BIG = 256 * 1024
MAX_HEADER = 64 * 1024 * 1024


def encode(message: tuple[Any, ...]) -> list[bytes | memoryview]:
    """Encode ``message`` into the chunks of one frame, ready to be written in order.

    ``pickle.PickleBuffer`` objects anywhere in the message travel out of band.
    """
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    prefix = _PREFIX.pack(len(header), len(views)) + b"".join(_LEN.pack(v.nbytes) for v in views)
    return [prefix + header, *views]


def encode_hello(payload: dict[str, Any]) -> bytes:
    """Encode the JSON hello that opens a connection."""
    data = json.dumps(payload).encode()
    return _HELLO.pack(len(data)) + data


def hello_problem(hello: Any, secret: bytes, *, they: str, we: str, why: str = "") -> str | None:
    """Why a connection's hello is refused (wrong secret, other versions), or None.

    Checked before anything the peer sends is unpickled. ``they``/``we`` name the two
    ends in the message; ``why`` says what a version mismatch would break.
    """
    if not isinstance(hello, dict) or not hmac.compare_digest(
        str(hello.get("secret", "")).encode(), secret
    ):
        return "authentication failed: wrong pool secret"
    if hello.get("python") != PYTHON_VERSION or hello.get("skyward") != __version__:
        return (
            f"version mismatch: {they} runs Python {hello.get('python')} with Skyward "
            f"{hello.get('skyward')}, {we} runs Python {PYTHON_VERSION} with Skyward "
            f"{__version__}; both must match{why}"
        )
    return None


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


class FrameDecoder:
    """Turns received bytes into messages. Not thread-safe; one per connection."""

    def __init__(self, *, expect_hello: bool = True) -> None:
        self._buf = bytearray()
        self._expect_hello = expect_hello
        self._held = False
        # State of the frame being read: header length, buffer lengths, filled buffers.
        self._header_len: int | None = None
        self._buf_lens: list[int] = []
        self._header: bytes | None = None
        self._bufs: list[bytearray | bytes] = []
        self._big: bytearray | None = None
        self._big_filled = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Feed received bytes; return the messages they complete (the hello as a dict)."""
        view = memoryview(data).cast("B")
        out: list[Any] = []
        if self._big is not None:
            take = min(view.nbytes, len(self._big) - self._big_filled)
            self._big[self._big_filled : self._big_filled + take] = view[:take]
            self._big_filled += take
            view = view[take:]
            if self._big_filled < len(self._big):
                return out
            self._bufs.append(self._big)
            self._big = None
        if view.nbytes:
            self._buf += view
        while True:
            msg, more = self._step()
            if msg is not None:
                out.append(msg)
            if not more:
                return out

    def release(self) -> list[Any]:
        """The hello was accepted: decode the frames held after it and go on decoding."""
        self._held = False
        return self.feed(b"")

    def _step(self) -> tuple[Any, bool]:
        """Consume from ``_buf``. Returns (message or None, whether to call again)."""
        if self._held:
            return None, False
        if self._expect_hello:
            if len(self._buf) < _HELLO.size:
                return None, False
            (n,) = _HELLO.unpack_from(self._buf)
            if n > 1 << 20:
                raise ProtocolError(f"hello of {n} bytes is not a Skyward hello")
            if len(self._buf) < _HELLO.size + n:
                return None, False
            raw = bytes(self._buf[_HELLO.size : _HELLO.size + n])
            del self._buf[: _HELLO.size + n]
            self._expect_hello = False
            self._held = True  # nothing after the hello is unpickled before it is accepted
            try:
                hello = json.loads(raw)
            except ValueError as exc:
                raise ProtocolError(f"invalid hello: {exc}") from None
            return hello, False
        if self._header_len is None:
            if len(self._buf) < _PREFIX.size:
                return None, False
            header_len, nbufs = _PREFIX.unpack_from(self._buf)
            need = _PREFIX.size + nbufs * _LEN.size
            if header_len > MAX_HEADER:
                raise ProtocolError(f"frame header of {header_len} bytes is too large")
            if len(self._buf) < need:
                return None, False
            self._buf_lens = [
                _LEN.unpack_from(self._buf, _PREFIX.size + i * _LEN.size)[0] for i in range(nbufs)
            ]
            self._header_len = header_len
            del self._buf[:need]
        if self._header is None:
            if len(self._buf) < self._header_len:
                return None, False
            self._header = bytes(self._buf[: self._header_len])
            del self._buf[: self._header_len]
        while len(self._bufs) < len(self._buf_lens):
            n = self._buf_lens[len(self._bufs)]
            if n >= _BIG:
                self._big = bytearray(n)
                self._big_filled = 0
                take = min(n, len(self._buf))
                self._big[:take] = self._buf[:take]
                del self._buf[:take]
                self._big_filled = take
                if take < n:
                    return None, False
                self._bufs.append(self._big)
                self._big = None
                continue
            if len(self._buf) < n:
                return None, False
            self._bufs.append(bytes(self._buf[:n]))
            del self._buf[:n]
        return self._finish(), True

    def _finish(self) -> Any:
        assert self._header is not None
        message = pickle.loads(self._header, buffers=self._bufs)
        self._header_len = None
        self._header = None
        self._buf_lens = []
        self._bufs = []
        return message
