"""Several specs: ``Compute(spec, spec, ..., options=Options(selection=...))`` on real Local
nodes — specs nothing can satisfy are refused or skipped before anything starts, a spec
whose machines do not come up gives way to the next, and when all fail one error lists
every attempt."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import skyward as sky
import skyward_trio
from skyward import testing


@sky.function
def _node_index() -> int:
    return sky.instance_info().node


@pytest.fixture
def node_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where this test's Local nodes live, to check that nothing of them is left running."""
    root = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _machine_vcpus() -> int:
    return len(os.sched_getaffinity(0))


def test_a_spec_whose_provider_has_no_capacity_gives_way_to_the_next(
    node_root: Path, processes, capfd: pytest.CaptureFixture[str]
) -> None:
    one, two = sky.Spec(provider=sky.Local()), sky.Spec(provider=sky.Local(), nodes=2)
    options = sky.Options(console="log", max_provision_attempts=1)
    with (
        testing.fail_provisioning(node=0, times=1) as fault,
        sky.Compute(one, two, options=options) as pool,
    ):
        assert pool.spec == two
        assert sorted(_node_index() @ pool) == [0, 1]
    assert fault.fired == 1
    err = capfd.readouterr().err
    assert (
        "spec 1 of 2 (sky.Local()) failed (node 0 failed during provision: the provider has "
        "no capacity for node 0 (a fault injected by sky.testing.fail_provisioning)); "
        "trying the next spec"
    ) in err
    assert err.index("trying the next spec") < err.index("requested 2 node(s)")
    assert not processes.wait_until_gone(processes.mentioning(str(node_root)))


def test_when_every_spec_fails_one_error_lists_each_attempt(node_root: Path, processes) -> None:
    specs = [
        sky.Spec(provider=sky.Local()),
        sky.Spec(provider=sky.Local(), nodes=2),
        sky.Spec(provider=sky.Local(), vcpus=_machine_vcpus() + 1),
    ]
    options = sky.Options(console="silent", max_provision_attempts=1, selection="first")
    with (
        testing.fail_provisioning(node=0, times=2) as fault,
        pytest.raises(sky.ProvisionError) as caught,
        sky.Compute(*specs, options=options),
    ):
        pytest.fail("a pool came up although node 0 fails on both specs")
    assert fault.fired == 2
    failure = "node 0 failed during provision: the provider has no capacity for node 0"
    message = str(caught.value)
    assert message.startswith("every spec failed to come up, in the order tried:\n")
    assert [line.split(":")[0] for line in message.splitlines()[1:]] == [
        "  - spec 1 of 3 (sky.Local())",
        "  - spec 2 of 3 (sky.Local())",
        "  - spec 3 of 3 (sky.Local())",
    ]
    assert message.count(failure) == 2
    assert message.endswith(
        f"this machine has {_machine_vcpus()} vCPUs. The most vCPUs any offer here has is "
        f"{_machine_vcpus()} vCPUs: ask for vcpus={_machine_vcpus()} or less, or another "
        "provider (not tried)"
    )
    assert [(a.node, a.phase) for a in caught.value.attempts] == [(0, "provision")] * 2
    assert (caught.value.node, caught.value.phase) == (0, "provision")
    assert not processes.wait_until_gone(processes.mentioning(str(node_root)))


def test_a_failed_bootstrap_is_raised_at_once_not_tried_on_the_next_spec(
    node_root: Path, processes
) -> None:
    options = sky.Options(console="silent", bootstrap_timeout=2, max_provision_attempts=1)
    with (
        testing.hang_bootstrap(node=0) as fault,
        pytest.raises(sky.ProvisionError) as caught,
        sky.Compute(
            sky.Spec(provider=sky.Local()), sky.Spec(provider=sky.Local()), options=options
        ),
    ):
        pytest.fail("the pool came up although node 0's bootstrap hangs")
    assert fault.fired == 1  # the second spec's node 0 would have hung too
    assert (caught.value.phase, caught.value.attempts) == ("bootstrap", ())
    assert not processes.wait_until_gone(processes.mentioning(str(node_root)))


def test_a_spec_nothing_can_satisfy_fails_before_anything_starts(node_root: Path) -> None:
    with (
        pytest.raises(sky.NoOfferError) as caught,
        sky.Compute(
            provider=sky.Local(), vcpus=_machine_vcpus() + 1, options=sky.Options(console="silent")
        ),
    ):
        pytest.fail("a pool came up with more vCPUs than this machine has")
    assert str(caught.value) == (
        f"nothing can satisfy the spec (sky.Local()): vcpus={_machine_vcpus() + 1}: this "
        f"machine has {_machine_vcpus()} vCPUs. The most vCPUs any offer here has is "
        f"{_machine_vcpus()} vCPUs: ask for vcpus={_machine_vcpus()} or less, or another provider"
    )
    with (
        pytest.raises(sky.NoOfferError, match=r"allocation='spot': sky.Local\(\) has no spot"),
        sky.Compute(provider=sky.Local(), allocation="spot"),
    ):
        pytest.fail("Local has no spot market")
    assert list(node_root.iterdir()) == []  # no node was ever made


def test_specs_nothing_can_satisfy_are_skipped_and_said(
    node_root: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    unmet = sky.Spec(provider=sky.Local(), region="us-east-1")
    met = sky.Spec(provider=sky.Local(), vcpus=1, memory_gb=0.5)
    with sky.Compute(unmet, met, options=sky.Options(console="log")) as pool:
        assert pool.spec == met
        assert _node_index() >> pool == 0
    assert (
        "skipped spec 1 of 2 (sky.Local()): region='us-east-1': sky.Local() has no regions; "
        "drop region=" in capfd.readouterr().err
    )


async def test_the_trio_face_falls_back_the_same_way(node_root: Path) -> None:
    one = skyward_trio.Spec(provider=skyward_trio.Local())
    two = skyward_trio.Spec(provider=skyward_trio.Local(), nodes=2)
    options = skyward_trio.Options(console="silent", max_provision_attempts=1)
    with testing.fail_provisioning(node=1, times=1) as fault, trio.fail_after(60):
        async with skyward_trio.Compute(two, one, options=options) as pool:
            assert pool.spec == one
            assert await (_node_index() >> pool) == 0
    assert fault.fired == 1


def test_an_ssh_host_that_does_not_answer_gives_way_to_local(
    node_root: Path, unanswered: tuple[sky.SSH, int], capfd: pytest.CaptureFixture[str]
) -> None:
    hosts, port = unanswered
    down = sky.Spec(provider=hosts)
    local = sky.Spec(provider=sky.Local())
    options = sky.Options(console="log", max_provision_attempts=1, selection="first")
    with sky.Compute(down, local, options=options) as pool:
        assert pool.spec == local
        assert _node_index() >> pool == 0
    assert (
        f"spec 1 of 2 (sky.SSH()) failed (node 0 failed during provision: no SSH server "
        f"answered at 127.0.0.1:{port}"
    ) in capfd.readouterr().err


def test_ssh_hosts_that_cannot_be_measured_are_skipped_saying_why(
    node_root: Path, unanswered: tuple[sky.SSH, int], capfd: pytest.CaptureFixture[str]
) -> None:
    hosts, port = unanswered
    with (
        pytest.raises(sky.NoOfferError) as caught,
        sky.Compute(provider=hosts, memory_gb=16, options=sky.Options(console="silent")),
    ):
        pytest.fail("sky.SSH promised memory it never measured")
    assert str(caught.value).startswith(
        "nothing can satisfy the spec (sky.SSH()): its hosts could not be measured: no SSH "
        f"server answered at 127.0.0.1:{port}: "
    )
    local = sky.Spec(provider=sky.Local())
    with sky.Compute(
        sky.Spec(provider=hosts, vcpus=1), local, options=sky.Options(console="log")
    ) as pool:
        assert pool.spec == local
    assert "skipped spec 1 of 2 (sky.SSH()): its hosts could not be measured" in (
        capfd.readouterr().err
    )
