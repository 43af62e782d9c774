"""A collection operation through the pool server: JSON and blobs both ways (keys and
values pickled by the client, passed on as they are), and errors mapped back."""

from __future__ import annotations

import numpy as np
import pytest

from skyward_trio import PoolClosedError, _serial
from skyward_trio._server import _BadRequest, _parse_store, _store_answer
from skyward_trio._serverwire import store_request, store_value


def _answer(value: object = None, error: Exception | None = None) -> bytes:
    _, _, parts = _store_answer(value, error)
    return b"".join(bytes(memoryview(p).cast("B")) for p in parts)


def test_an_operation_travels_with_its_payloads_untouched() -> None:
    key, value = _serial.dumps("k"), _serial.dumps(np.arange(50_000, dtype=np.float64))
    pairs = [(_serial.dumps(1), _serial.dumps("one"))]
    op, name, args, ticket = _parse_store(
        bytearray(store_request(11, "d", (key, value, pairs, None)))
    )
    assert ticket is None
    assert (op, name) == (11, "d")
    got_key, got_value, got_pairs, nothing = args
    assert _serial.loads(got_key) == "k"
    assert np.array_equal(_serial.loads(got_value), np.arange(50_000, dtype=np.float64))
    assert [(_serial.loads(k), _serial.loads(v)) for k, v in got_pairs] == [(1, "one")]
    assert nothing is None


def test_an_answer_carries_values_and_tuples() -> None:
    found, payload = store_value(_answer((True, _serial.dumps({"a": 1}))))
    assert found is True
    assert _serial.loads(payload) == {"a": 1}
    assert store_value(_answer(3)) == 3


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TimeoutError("no item within 0.5 s"), TimeoutError),
        (ValueError("n differs"), ValueError),
        (PoolClosedError("the pool closed"), PoolClosedError),
    ],
)
def test_an_error_comes_back_as_itself(error: Exception, kind: type[Exception]) -> None:
    with pytest.raises(kind, match=str(error)):
        store_value(_answer(error=error))


@pytest.mark.parametrize("op", [0, 1, 2, 43, 99])  # ADDRESS, CANCEL, BATCH, Q_RETURN, none
def test_only_what_the_proxies_send_is_relayed(op: int) -> None:
    with pytest.raises(_BadRequest, match="not a collection operation"):
        _parse_store(bytearray(store_request(op, "d", ())))


def test_a_value_the_store_does_not_take_is_refused_before_sending() -> None:
    with pytest.raises(TypeError, match="carries no object"):
        store_request(11, "d", (object(),))
