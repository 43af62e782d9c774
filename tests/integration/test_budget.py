"""``Options(max_cost=...)``: a pool that has cost its cap stops, and its machines are
terminated at once, not when its block ends. Run on a fake RunPod whose one GPU type is
priced so that seconds cost dollars (its pods are real sshd machines on loopback)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import sshd
from fake_runpod import DEFAULT_GPU_TYPES, FakeRunPod
from needs import unavailable
from waiting import wait_until

import skyward as sky

pytestmark = pytest.mark.clouds

#: USD per hour: a dollar every 10 seconds.
PRICE = 360.0
DEAR = {**DEFAULT_GPU_TYPES[0], "securePrice": PRICE, "secureSpotPrice": PRICE}


@pytest.fixture(scope="module")
def runpod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRunPod]:
    sshd.need_sshd()
    if os.getuid() != 0:  # RunPod pods log in as root; the fake's sshd takes only this user
        unavailable("sky.RunPod logs in to pods as root: run the tests as root", suite="sky.RunPod")
    with FakeRunPod(root=tmp_path_factory.mktemp("runpod"), gpu_types=[DEAR]) as api:
        yield api


def _pool(api: FakeRunPod, max_cost: float) -> sky.Compute:
    return sky.Compute(
        provider=sky.RunPod(
            api_key=api.api_key,
            api_url=api.rest_url,
            graphql_url=api.graphql_url,
            catalog_url=api.catalog_url,
        ),
        accelerator=sky.accelerators.A100(form_factor="PCIe"),
        allocation="on-demand",
        options=sky.Options(console="silent", max_cost=max_cost),
    )


@sky.function
def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_pool_that_reaches_max_cost_stops_and_its_pods_are_deleted(runpod: FakeRunPod) -> None:
    with _pool(runpod, max_cost=3.0) as pool:  # 30 s of one pod
        events = pool.events()
        assert _nap(0) >> pool == 0
        started = time.monotonic()
        with pytest.raises(sky.BudgetExceededError) as cut:
            _nap(600) >> pool  # cut off by the stop, long before it ends
        assert time.monotonic() - started < 600
        # The pod is deleted now, while the block still runs.
        wait_until(lambda: not runpod.live(), "the pod deleted", timeout=60, every=0.2)
        with pytest.raises(sky.BudgetExceededError):
            _nap(0) >> pool  # nothing runs any more
        seen = list(events)  # the stream ends: the pool closed
    stopped = cut.value
    assert isinstance(stopped, sky.PoolClosedError)
    assert (stopped.max_cost, stopped.instances) == (3.0, 1)
    assert stopped.spent >= 3.0
    assert "Options(max_cost=3)" in str(stopped)
    messages = [e.message for e in seen if isinstance(e, sky.Error)]
    assert any("of Options(max_cost=3); it stops" in m for m in messages), messages
    assert str(stopped) in messages
    (closed,) = [e for e in seen if isinstance(e, sky.ClusterDestroyed)]
    # Billed from provisioning to the confirmed deletion: the cap, and the seconds the
    # deletion took.
    assert closed.cost >= 3.0
    assert closed.cost < 3.0 + 60 * PRICE / 3600


def test_a_cap_reached_while_the_pool_starts_raises_and_leaves_nothing(
    runpod: FakeRunPod,
) -> None:
    with pytest.raises(sky.BudgetExceededError) as stopped, _pool(runpod, max_cost=0.01):
        pytest.fail("the block must not run: the cap is reached within a second")
    assert stopped.value.max_cost == 0.01
    assert not runpod.live()


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-5, ValueError), ("50", TypeError), (True, TypeError)]
)
def test_max_cost_must_be_dollars_above_zero(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"Options\(max_cost=.*\): max_cost must be a number of USD"):
        sky.Options(max_cost=value)  # type: ignore[arg-type]
