"""Skyward's trio-asyncio leaves the rest of the process's asyncio alone (``_aio``): loops
made outside trio are asyncio's own, and trio-asyncio still works inside trio."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from skyward_trio._aio import trio_asyncio


def test_a_loop_made_outside_trio_is_asyncios_own() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio."), type(loop)
    finally:
        loop.close()

    async def running() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert asyncio.run(running()).startswith("asyncio.")


def test_a_cancelled_run_in_executor_does_not_wait_for_its_thread() -> None:
    # On trio-asyncio's own loop, wait_for() of run_in_executor() waited for the thread.
    release = threading.Event()
    threading.Timer(60, release.set).start()  # a hang guard: the thread ends in any case
    still_blocked: list[bool] = []

    async def give_up() -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, release.wait), 0.1)
        except TimeoutError:
            still_blocked.append(not release.is_set())
        release.set()

    asyncio.run(give_up())
    assert still_blocked == [True]


def test_a_policy_of_the_users_still_makes_the_loops() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    class Counting(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            made.append(super().new_event_loop())
            return made[-1]

    asyncio.set_event_loop_policy(Counting())
    try:
        loop = asyncio.new_event_loop()
        loop.close()
    finally:
        asyncio.set_event_loop_policy(None)
    assert made == [loop]


def test_inside_trio_trio_asyncio_runs_asyncio_code_and_refuses_new_loops() -> None:
    async def main() -> int:
        async with trio_asyncio.open_loop():
            await trio_asyncio.aio_as_trio(asyncio.sleep)(0)
            with pytest.raises(RuntimeError, match="open_loop"):
                asyncio.new_event_loop()
            return 42

    assert trio.run(main) == 42
