"""User-data payloads: out-of-band buffers, lz4 only where a sample compresses."""

from __future__ import annotations

import pickle

import numpy as np

from skyward_trio import ConnectionLostError, _serial, _wire
from skyward_trio._pool import with_sources


def _roundtrip_through_wire(payload: _serial.Payload) -> _serial.Payload:
    data = b"".join(bytes(c) for c in _wire.encode((_wire.RESULT, 1, True, payload, 0.0)))
    (message,) = _wire.FrameDecoder(expect_hello=False).feed(data)
    return message[3]  # type: ignore[no-any-return]


def test_random_floats_are_not_compressed_and_travel_out_of_band() -> None:
    arr = np.random.default_rng(0).random(1_000_000)
    head, _, bufs, flags = payload = _serial.dumps(arr)
    assert flags == [False]
    assert isinstance(bufs[0], pickle.PickleBuffer)
    assert bufs[0].raw().nbytes == arr.nbytes
    assert len(head) < 1000  # the array is not in the header
    assert np.array_equal(_serial.loads(_roundtrip_through_wire(payload)), arr)


def test_compressible_buffers_are_compressed() -> None:
    arr = np.zeros(1_000_000)
    payload = _serial.dumps(arr)
    assert payload[3] == [True]
    assert _serial.payload_size(payload) < arr.nbytes / 10
    got = _serial.loads(_roundtrip_through_wire(payload))
    assert np.array_equal(got, arr)
    got[0] = 1.0  # a writable array comes back


def test_large_compressible_head_is_compressed() -> None:
    value = {"words": ["skyward"] * 20_000}
    payload = _serial.dumps(value)
    assert payload[1] is True
    assert _serial.loads(_roundtrip_through_wire(payload)) == value


def test_small_values_stay_small() -> None:
    payload = _serial.dumps(((1, "a"), {"k": 2.5}))
    assert payload[1] is False
    assert payload[2] == []
    assert _serial.loads(payload) == ((1, "a"), {"k": 2.5})


def test_closures_travel_by_value() -> None:
    factor = 3
    payload = _serial.dumps(lambda x: x * factor)
    assert _serial.loads(_roundtrip_through_wire(payload))(5) == 15


class _NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)  # pickles args=(a,), so it cannot be rebuilt


def test_dump_exception_keeps_what_survives() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        payload, name, message, tb = _serial.dump_exception(exc)
    assert payload is not None
    assert isinstance(_serial.loads(payload), ValueError)
    assert name == "builtins.ValueError"
    assert message == "bad value"
    assert "raise ValueError" in tb

    payload, name, message, tb = _serial.dump_exception(_NeedsTwoArgs(1, 2))
    assert payload is None
    assert name.endswith("_NeedsTwoArgs")


def test_connection_lost_error_keeps_its_type_and_node_through_pickling() -> None:
    # A node raises it when its collections store goes away; the client re-raises it.
    error = _serial.loads(_serial.dumps(ConnectionLostError("store gone", node=0)))
    assert type(error) is ConnectionLostError
    assert (str(error), error.node) == ("store gone", 0)


def _fails(key: str) -> object:
    lookup = lambda k: {}[k]  # noqa: E731
    return lookup(key)


def test_functions_keep_the_file_they_were_defined_in() -> None:
    # cloudpickle writes "<dynamic-code>" there; a remote traceback would name no file.
    rebuilt = _serial.loads(_serial.dumps(_fails))
    assert rebuilt.__code__.co_filename == __file__
    (inner,) = [c for c in rebuilt.__code__.co_consts if hasattr(c, "co_filename")]
    assert inner.co_filename == __file__


def test_a_remote_traceback_gets_the_source_lines_the_node_could_not_show() -> None:
    line = _fails.__code__.co_firstlineno + 2
    remote = (
        "Traceback (most recent call last):\n"
        '  File "/opt/skyward/worker.py", line 9, in run\n'
        f'  File "{__file__}", line {line}, in _fails\n'
        f'  File "{__file__}", line {line - 1}, in <lambda>\n'
        "    lookup = lambda k: {}[k]  # shown by the node\n"
        "KeyError: 'x'"
    )
    assert with_sources(remote).splitlines() == [
        "Traceback (most recent call last):",
        '  File "/opt/skyward/worker.py", line 9, in run',  # no such file here either
        f'  File "{__file__}", line {line}, in _fails',
        "    return lookup(key)",
        f'  File "{__file__}", line {line - 1}, in <lambda>',
        "    lookup = lambda k: {}[k]  # shown by the node",
        "KeyError: 'x'",
    ]
