"""When the other end of a session counts as silent, on trio's virtual clock (exact times)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from skyward_trio._heartbeat import wait_for_silence


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Peer:
    """The other end: what it sent, as the receiving side counts it."""

    def __init__(self) -> None:
        self.chunks = 0

    def heard(self) -> int:
        return self.chunks

    async def talk(self, every: float, until: float) -> None:
        """Send something every ``every`` s, half a beat off the watcher's looks, until
        virtual time ``until``."""
        await trio.sleep(every / 2)
        while trio.current_time() < until:
            self.chunks += 1
            await trio.sleep(every)


async def test_a_peer_that_keeps_talking_is_never_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.talk, 1.0, 1000.0)
        with trio.move_on_after(600) as waited:
            await wait_for_silence(peer.heard)
        assert waited.cancelled_caught
        nursery.cancel_scope.cancel()


async def test_a_peer_slower_than_a_beat_but_within_the_limit_is_not_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.talk, 4.0, 1000.0)  # a word every 4 s, under the 5 s limit
        with trio.move_on_after(600) as waited:
            await wait_for_silence(peer.heard)
        assert waited.cancelled_caught
        nursery.cancel_scope.cancel()


async def test_a_peer_that_stops_is_silent_after_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.talk, 1.0, start + 10.0)  # last word at 9.5 s
        await wait_for_silence(peer.heard)
        # Looks at 10 (it spoke), then 11, 12, 13, 14, 15: five silent beats.
        assert trio.current_time() - start == 15.0


async def test_a_peer_that_never_speaks_is_silent_after_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    await wait_for_silence(lambda: 0, interval=0.5, limit=2.0)
    assert trio.current_time() - start == 2.0


async def test_a_stall_of_the_watching_side_is_not_the_peers_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # This side's loop freezes for 30 s (a task holds its GIL): what the peer sent meanwhile
    # is read only after it. A clock-based rule would declare the peer silent at once; the
    # stall counts as one beat here, and what arrives next resets it.
    peer = Peer()
    start = trio.current_time()

    async def freeze_then_catch_up() -> None:
        await trio.sleep(3.25)
        autojump_clock.jump(30)  # virtual time leaps; every sleeper wakes late
        await trio.sleep(0.5)
        peer.chunks += 1  # the buffered bytes are read

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.talk, 1.0, start + 3.0)
        nursery.start_soon(freeze_then_catch_up)
        with trio.move_on_after(30 + 3.25 + 4.0) as waited:
            await wait_for_silence(peer.heard)
        assert waited.cancelled_caught


def _answers(
    replies: list[tuple[float, bool]],
) -> tuple[Callable[[], Awaitable[bool]], list[float]]:
    """A ``still_there`` that answers from ``replies`` in turn (after that many seconds);
    returns it and the virtual times it was asked at."""
    asked: list[float] = []

    async def still_there() -> bool:
        asked.append(trio.current_time())
        delay, answer = replies.pop(0)
        await trio.sleep(delay)
        return answer

    return still_there, asked


async def test_a_silent_peer_whose_machine_answers_is_not_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A worker whose task holds the GIL says nothing, but its node's SSH server answers:
    # asked again every limit, and given up only once that stops too.
    still_there, asked = _answers([(0.25, True), (0.25, True), (2.0, False)])
    start = trio.current_time()
    await wait_for_silence(lambda: 0, still_there=still_there)
    assert [t - start for t in asked] == [5.0, 10.25, 15.5]
    assert trio.current_time() - start == 17.5


async def test_a_peer_heard_while_its_machine_is_asked_is_not_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()

    async def still_there() -> bool:
        await trio.sleep(1.5)
        peer.chunks += 1  # the worker spoke again meanwhile
        await trio.sleep(0.5)
        return False

    with trio.move_on_after(5.0 + 2.0 + 4.5) as waited:
        await wait_for_silence(peer.heard, still_there=still_there)
    assert waited.cancelled_caught
