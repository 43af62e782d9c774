"""The cost ledger: price times billed seconds, per instance."""

from __future__ import annotations

import pytest

from skyward_trio._cost import Ledger, summary


def test_cost_is_price_times_seconds_up_per_instance() -> None:
    ledger = Ledger()
    ledger.start("a", 3.60, now=0.0)  # $3.60 / h = $0.001 / s
    ledger.start("b", 1.80, now=100.0)
    ledger.stop("a", now=1000.0)
    ledger.stop("a", now=5000.0)  # confirmed twice: counted once
    assert ledger.seconds(now=1000.0) == pytest.approx(1000 + 900)
    assert ledger.cost(now=1000.0) == pytest.approx(1.0 + 0.45)
    assert ledger.cost(now=2000.0) == pytest.approx(1.0 + 0.95)  # b still bills
    assert (
        summary(ledger.instances, ledger.seconds(2000.0), ledger.cost(2000.0))
        == "2 instance(s) up 48.3 min in all, cost about $1.95"
    )


def test_free_instances_and_small_amounts() -> None:
    ledger = Ledger()
    ledger.start("local-0", 0.0, now=0.0)
    assert (
        summary(ledger.instances, ledger.seconds(2.5), ledger.cost(2.5))
        == "1 instance(s) up 2.5 s in all, cost about $0.00"
    )
    ledger.start("cheap", 0.36, now=0.0)
    assert summary(ledger.instances, ledger.seconds(10.0), ledger.cost(10.0)).endswith(
        "cost about $0.0010"
    )
