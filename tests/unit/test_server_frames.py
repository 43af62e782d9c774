"""The pool server's frames: a JSON header and binary blobs, and payloads through them."""

from __future__ import annotations

import numpy as np
import pytest

from skyward_trio import CancelledCallError, _serial
from skyward_trio._serverwire import frame, join_payload, split_payload, unpack


def test_a_frame_carries_its_header_and_blobs() -> None:
    header, blobs = unpack(frame({"name": "p"}, [b"one", b"", bytearray(b"three")]))
    assert header == {"name": "p", "blobs": [3, 0, 5]}
    assert blobs == [b"one", b"", b"three"]


@pytest.mark.parametrize(
    "value",
    [
        {"small": [1, 2, 3]},
        np.arange(300_000, dtype=np.float64),  # out-of-band buffers
        np.zeros(200_000, dtype=np.int64),  # compressed buffers
        "x" * 20_000,  # a compressed head
    ],
    ids=["small", "buffer", "compressed", "head"],
)
def test_a_payload_travels_through_a_frame_unchanged(value: object) -> None:
    meta, parts = split_payload(_serial.dumps(value))
    header, blobs = unpack(frame({"payload": meta}, parts))
    back = _serial.loads(join_payload(header["payload"], blobs))
    if isinstance(value, np.ndarray):
        assert np.array_equal(back, value)
    else:
        assert back == value


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"\x00\x00", "shorter than its length field"),
        (b"\x00\x00\x00\x04nope", "not JSON"),
        (b"\x00\x00\x00\x02{}", "lists no blobs"),
        (b'\x00\x00\x00\x0d{"blobs":[5]}abc', "shorter than the blobs"),
        (b'\x00\x00\x00\x0d{"blobs":[1]}abc', "longer than the blobs"),
    ],
)
def test_a_broken_frame_is_refused_saying_how(body: bytes, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        unpack(body)


def test_a_payload_whose_header_does_not_match_its_blobs_is_refused() -> None:
    meta, parts = split_payload(_serial.dumps(np.arange(100_000)))
    with pytest.raises(ValueError, match="does not match its blobs"):
        join_payload(meta, [bytes(parts[0])])


def test_a_frame_reader_finds_each_frame_however_the_bytes_are_cut() -> None:
    from skyward_trio._client import FrameReader

    frames = [frame({"item": i}, [b"x" * i, b"yz"]) for i in range(5)] + [frame({"end": 1})]
    stream = b"".join(frames)
    for cut in (1, 3, 7, len(stream)):
        reader = FrameReader()
        found = []
        for at in range(0, len(stream), cut):
            found += reader.feed(stream[at : at + cut])
        assert found == frames
        assert reader.pending == 0
    reader = FrameReader()
    assert reader.feed(stream[:-1]) == frames[:-1]
    assert reader.pending == len(frames[-1]) - 1


@pytest.mark.parametrize("why", ["", "its client closed while it ran"])
def test_a_cancellation_relayed_says_what_cancelled_it_once(why: str) -> None:
    # The server answers a call its client's end cancelled with the error pickled.
    error = _serial.loads(_serial.dumps(CancelledCallError("slow", why)))
    assert isinstance(error, CancelledCallError)
    assert (error.name, error.why) == ("slow", why)
    said = "the call to slow() was cancelled"
    assert str(error) == (f"{said}: {why}" if why else said)
