"""The client's store link gives back what a cancelled wait was granted anyway."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from skyward_trio import _collections as ops
from skyward_trio import _serial, _wire
from skyward_trio._storelink import StoreLink


class FakeLink:
    """Stands for the SSH channel: keeps what the link writes."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self._decoder = _wire.FrameDecoder(expect_hello=False)

    def write(self, data: bytes) -> None:
        self.sent.extend(self._decoder.feed(data))


def _link() -> tuple[StoreLink, FakeLink]:
    link = StoreLink()
    fake = FakeLink()
    link._link = fake  # type: ignore[assignment]
    link._decoder = _wire.FrameDecoder(expect_hello=False)
    return link, fake


def _answer(link: StoreLink, message: tuple[Any, ...]) -> None:
    link._on_data(b"".join(_wire.encode(message)))


async def _cancelled(link: StoreLink, op: int, *args: Any) -> None:
    with trio.move_on_after(0):
        await link.call(op, "name", *args)


async def test_an_item_answered_to_a_cancelled_get_goes_back_to_the_queue() -> None:
    link, fake = _link()
    await _cancelled(link, ops.Q_GET, None)
    (get, *_), (cancel, op, _, cancelled) = fake.sent
    assert (op, cancelled) == (ops.CANCEL, get)
    item = _serial.dumps("x")
    _answer(link, (get, True, item))  # the store had answered before the cancel arrived
    _answer(link, (cancel, True, False))
    assert fake.sent[-1][1:3] == (ops.Q_RETURN, "name")
    assert _serial.loads(fake.sent[-1][3]) == "x"


async def test_a_lock_granted_to_a_cancelled_acquire_is_released() -> None:
    link, fake = _link()
    await _cancelled(link, ops.L_ACQUIRE, "token", None)
    acquire = fake.sent[0][0]
    _answer(link, (acquire, True, None))
    assert fake.sent[-1][1:] == (ops.L_RELEASE, "name", "token")


async def test_a_wait_the_store_cancelled_in_time_gives_nothing_back() -> None:
    link, fake = _link()
    await _cancelled(link, ops.Q_GET, None)
    cancel = fake.sent[1][0]
    _answer(link, (cancel, True, True))  # it was still waiting: no answer will come
    assert link._abandoned == {}
    assert len(fake.sent) == 2
