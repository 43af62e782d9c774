"""Nodes that do not come up: the fault kit's start-up faults (``sky.testing``), armed
around ``Compute``, on real Local nodes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import skyward as sky
import skyward_trio
from skyward import testing

QUIET = sky.Options(console="silent")


@sky.function
def _node_index() -> int:
    return sky.instance_info().node


@pytest.fixture
def node_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where this test's Local nodes live, to check that nothing of them is left running.

    Short, under /tmp: a worker's socket path must fit a unix socket address.
    """
    root = Path(tempfile.mkdtemp(prefix="sf-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_failed_provisioning_is_tried_again_up_to_max_provision_attempts(
    node_root: Path, processes
) -> None:
    options = sky.Options(console="silent", max_provision_attempts=2)
    with testing.fail_provisioning(node=1, times=1) as fault:
        with sky.Compute(provider=sky.Local(), nodes=2, options=options) as pool:
            assert sorted(_node_index() @ pool) == [0, 1]
        assert fault.fired == 1
    with (
        testing.fail_provisioning(node=1, times=2) as fault,
        pytest.raises(sky.ProvisionError, match="node 1 failed during provision") as caught,
        sky.Compute(provider=sky.Local(), nodes=2, options=options),
    ):
        pytest.fail("the pool came up without node 1")
    assert fault.fired == 2
    assert (caught.value.node, caught.value.phase) == (1, "provision")
    assert "sky.testing.fail_provisioning" in str(caught.value)
    assert not processes.wait_until_gone(processes.mentioning(str(node_root)))


def test_a_hanging_bootstrap_fails_the_node_when_bootstrap_timeout_fires(
    node_root: Path, processes
) -> None:
    # One node: a second one, healthy, could itself outlast 2 s on a loaded machine.
    options = sky.Options(console="silent", bootstrap_timeout=2)
    with (
        testing.hang_bootstrap(node=0) as fault,
        pytest.raises(sky.ProvisionError) as caught,
        sky.Compute(provider=sky.Local(), nodes=1, options=options),
    ):
        pytest.fail("the pool came up although node 0's bootstrap hangs")
    assert fault.fired == 1
    assert (caught.value.node, caught.value.phase) == (0, "bootstrap")
    assert str(caught.value) == (
        "node 0 failed during bootstrap: did not finish within "
        "Options(bootstrap_timeout=2) seconds; raise it if the node needs longer"
    )
    assert not processes.wait_until_gone(processes.mentioning(str(node_root)))


async def test_a_node_whose_bootstrap_hung_comes_up_on_its_next_attempt() -> None:
    # Long enough for the healthy node's bootstrap on a loaded machine (a hang waits it out).
    options = skyward_trio.Options(console="silent", bootstrap_timeout=4, max_provision_attempts=2)
    with testing.hang_bootstrap(node=1, times=1) as fault:
        with trio.fail_after(60):
            async with skyward_trio.Compute(nodes=2, options=options) as pool:
                assert sorted(await (_node_index() @ pool)) == [0, 1]
    assert fault.fired == 1


def test_a_pool_with_nodes_min_starts_without_a_node_that_cannot_be_provisioned(
    capsys: pytest.CaptureFixture[str],
) -> None:
    nodes = sky.Nodes(desired=2, min=1)
    failing = testing.fail_provisioning(node=1)
    with failing, sky.Compute(provider=sky.Local(), nodes=nodes) as pool:
        assert pool.current_nodes() == 1
        assert _node_index() @ pool == [0]
        assert _node_index() >> pool == 0
        with pytest.raises(sky.PoolClosedError, match="node 1 is gone for good"):
            pool.run(_node_index(), target=1)
    assert "carrying on without node 1" in capsys.readouterr().err


def test_faults_apply_only_inside_their_block_and_refuse_bad_arguments() -> None:
    with testing.fail_provisioning(node=0) as fault:
        assert fault.armed
    assert not fault.armed
    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        assert _node_index() >> pool == 0  # the fault is disarmed: node 0 comes up
    assert fault.fired == 0
    with pytest.raises(ValueError, match=r"fail_provisioning\(node=-1\): node must be"):
        testing.fail_provisioning(node=-1)
    with pytest.raises(ValueError, match=r"hang_bootstrap\(times=0\): times must be an int >= 1"):
        testing.hang_bootstrap(node=0, times=0)
