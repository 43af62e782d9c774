"""``sky.Session`` and ``skyward_trio.Session``: Local pools opened and closed at any point,
each ending its node processes when it closes, every one closed with the session."""

from __future__ import annotations

import os

import pytest
import trio

import skyward as sky
import skyward_trio
from conftest import Processes

QUIET = sky.Options(console="silent")


@sky.function
def pid() -> int:
    return os.getpid()


def test_pools_open_and_close_at_any_point_within_a_session(processes: Processes) -> None:
    with sky.Session() as session:
        first = session.compute(provider=sky.Local(), nodes=1, options=QUIET)
        second = session.compute(provider=sky.Local(), nodes=2, options=QUIET)
        assert session.pools == (first, second)
        first_nodes = processes.of_job(first.job_id)
        second_nodes = processes.of_job(second.job_id)
        assert first_nodes
        assert second_nodes
        assert (pid() >> first) != (pid() >> second)
        assert len(set(pid() @ second)) == 2

        session.close(first)  # the other goes on
        assert not processes.wait_until_gone(first_nodes, limit=30)
        assert session.pools == (second,)
        assert len(pid() @ second) == 2
        with pytest.raises(ValueError, match="a pool this session opened and has not closed"):
            session.close(first)
    # The session's end closes what is left.
    assert not processes.wait_until_gone(second_nodes, limit=30)
    assert session.pools == ()


def test_session_pools_are_not_the_active_pool() -> None:
    with sky.Session() as session:
        pool = session.compute(provider=sky.Local(), nodes=1, options=QUIET)
        with pytest.raises(sky.NoActivePoolError):
            pid() >> sky
        assert isinstance(pid() >> pool, int)


def test_a_pool_that_cannot_be_made_leaves_the_session_as_it_was(processes: Processes) -> None:
    with sky.Session() as session:
        pool = session.compute(provider=sky.Local(), nodes=1, options=QUIET)
        with pytest.raises(TypeError, match="accelerator"):
            session.compute(provider=sky.Local(), accelerator="A100", options=QUIET)
        with sky.testing.fail_provisioning(node=0), pytest.raises(sky.ProvisionError):
            session.compute(provider=sky.Local(), nodes=1, options=QUIET)
        assert session.pools == (pool,)
        assert isinstance(pid() >> pool, int)
        nodes = processes.of_job(pool.job_id)
    assert not processes.wait_until_gone(nodes, limit=30)


def test_an_error_in_the_block_comes_out_as_itself_and_closes_the_pools(
    processes: Processes,
) -> None:
    nodes: dict[int, str] = {}

    def run() -> None:
        with sky.Session() as session:
            pool = session.compute(provider=sky.Local(), nodes=1, options=QUIET)
            nodes.update(processes.of_job(pool.job_id))
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run()
    assert nodes
    assert not processes.wait_until_gone(nodes, limit=30)


def test_a_session_must_be_open_to_make_pools() -> None:
    session = sky.Session()
    with pytest.raises(RuntimeError, match="open the session first"):
        session.compute(provider=sky.Local(), nodes=1)


def test_the_trio_session_opens_and_closes_pools_and_closes_the_rest_at_its_end(
    processes: Processes,
) -> None:
    async def main() -> tuple[dict[int, str], dict[int, str]]:
        async with skyward_trio.Session() as session:
            first = await session.compute(provider=sky.Local(), nodes=1, options=QUIET)
            second = await session.compute(provider=sky.Local(), nodes=1, options=QUIET)
            assert session.pools == (first, second)
            first_nodes = processes.of_job(first.job_id)
            second_nodes = processes.of_job(second.job_id)
            assert await (pid() >> first) != await (pid() >> second)
            await session.close(first)
            assert not processes.wait_until_gone(first_nodes, limit=30)
            assert isinstance(await (pid() >> second), int)
            with pytest.raises(ValueError, match="has 1 open"):
                await session.close(first)
        assert session.pools == ()
        return first_nodes, second_nodes

    _, second_nodes = trio.run(main)
    assert not processes.wait_until_gone(second_nodes, limit=30)


def test_a_trio_session_block_error_comes_out_as_itself() -> None:
    async def main() -> None:
        async with skyward_trio.Session() as session:
            await session.compute(provider=sky.Local(), nodes=1, options=QUIET)
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        trio.run(main)
