"""Framing: any split of the byte stream decodes to the same messages; big buffers travel
out of band; nothing after a hello is unpickled before ``release()``."""

from __future__ import annotations

import pickle
import random

import pytest

from skyward_trio import _wire


def _stream(*messages: tuple[object, ...], hello: dict[str, object] | None = None) -> bytes:
    parts: list[bytes] = []
    if hello is not None:
        parts.append(_wire.encode_hello(hello))
    for message in messages:
        parts.extend(bytes(chunk) for chunk in _wire.encode(message))
    return b"".join(parts)


def _feed_in_pieces(decoder: _wire.FrameDecoder, data: bytes, sizes: list[int]) -> list[object]:
    out: list[object] = []
    pos = 0
    for size in sizes:
        out.extend(decoder.feed(data[pos : pos + size]))
        pos += size
    out.extend(decoder.feed(data[pos:]))
    return out


MESSAGES = [
    (_wire.RUN, 1, "0:f", None, (b"head", False, [], [])),
    (_wire.RESULT, 1, True, (b"x" * 300, False, [], []), 0.25),
    (_wire.CANCEL, 7),
    (_wire.SHUTDOWN,),
]


def test_every_split_point_decodes_the_same() -> None:
    data = _stream(*MESSAGES)
    for cut in range(1, len(data)):
        decoder = _wire.FrameDecoder(expect_hello=False)
        assert _feed_in_pieces(decoder, data, [cut]) == MESSAGES


def test_byte_by_byte_and_random_chunks() -> None:
    data = _stream(*MESSAGES)
    decoder = _wire.FrameDecoder(expect_hello=False)
    assert _feed_in_pieces(decoder, data, [1] * len(data)) == MESSAGES
    rng = random.Random(3)
    for _ in range(50):
        decoder = _wire.FrameDecoder(expect_hello=False)
        sizes = [rng.randint(1, 40) for _ in range(len(data) // 10)]
        assert _feed_in_pieces(decoder, data, sizes) == MESSAGES


def test_large_buffers_travel_out_of_band_and_arrive_whole() -> None:
    big = bytes(random.Random(1).randbytes(3 * 1024 * 1024))
    small = b"s" * 1000
    message = (_wire.RESULT, 9, True, pickle.PickleBuffer(big), pickle.PickleBuffer(small))
    chunks = _wire.encode(message)
    assert len(chunks) == 3  # header, then the two buffers uncopied
    assert len(chunks[0]) < 200
    data = b"".join(bytes(c) for c in chunks)
    for sizes in ([65536] * 60, [7, 1 << 20, 13], [len(data)]):
        decoder = _wire.FrameDecoder(expect_hello=False)
        (got,) = _feed_in_pieces(decoder, data, sizes)
        assert got[:3] == (_wire.RESULT, 9, True)
        assert bytes(got[3]) == big
        assert bytes(got[4]) == small


def test_hello_holds_what_follows_until_released() -> None:
    boom = (_wire.RUN, 1, "k", None, _Explodes())
    data = _stream(boom, hello={"secret": "s"})
    decoder = _wire.FrameDecoder(expect_hello=True)
    assert decoder.feed(data) == [{"secret": "s"}]  # the frame is held, not unpickled
    with pytest.raises(RuntimeError, match="unpickled"):
        decoder.release()


def test_release_returns_held_frames() -> None:
    data = _stream(*MESSAGES, hello={"role": "data"})
    decoder = _wire.FrameDecoder(expect_hello=True)
    assert decoder.feed(data[:-3]) == [{"role": "data"}]
    held = decoder.release()
    assert held + decoder.feed(data[-3:]) == MESSAGES


def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(_wire.ProtocolError):
        _wire.FrameDecoder(expect_hello=True).feed(b"\xff\xff\xff\x7f" + b"x" * 10)
    with pytest.raises(_wire.ProtocolError, match="invalid hello"):
        _wire.FrameDecoder(expect_hello=True).feed(_wire.encode_hello({})[:4] + b"{x}")


def _explode() -> None:
    raise RuntimeError("unpickled")


class _Explodes:
    def __reduce__(self) -> tuple[object, ...]:
        return (_explode, ())
