"""What a pool's instances cost: each one's hourly price times the seconds it was up.

Layer 1: stdlib only.
"""

from __future__ import annotations


class Ledger:
    """Billed time and cost per instance, from provisioned until confirmed terminated.

    An instance whose termination was never confirmed keeps accruing: it may still bill.
    """

    def __init__(self) -> None:
        self._open: dict[str, tuple[float, float]] = {}  # id -> (hourly price, since)
        self._closed_seconds = 0.0
        self._closed_cost = 0.0
        self.instances = 0

    def start(self, instance_id: str, hourly_price: float, now: float) -> None:
        self._open[instance_id] = (hourly_price, now)
        self.instances += 1

    def stop(self, instance_id: str, now: float) -> None:
        entry = self._open.pop(instance_id, None)
        if entry is not None:  # terminate may be confirmed twice (retire, then teardown)
            price, since = entry
            self._closed_seconds += now - since
            self._closed_cost += price * (now - since) / 3600

    def seconds(self, now: float) -> float:
        """Instance-seconds so far, all instances together."""
        return self._closed_seconds + sum(now - since for _, since in self._open.values())

    def hourly(self) -> float:
        """Dollars per hour the instances up now cost, together."""
        return sum(price for price, _ in self._open.values())

    def cost(self, now: float) -> float:
        """Dollars so far, all instances together."""
        running = sum(price * (now - since) / 3600 for price, since in self._open.values())
        return self._closed_cost + running


def summary(instances: int, seconds: float, cost: float) -> str:
    """What a closed pool ran and cost, in words (``ClusterDestroyed``'s fields)."""
    return f"{instances} instance(s) up {duration(seconds)} in all, cost about {dollars(cost)}"


def dollars(cost: float) -> str:
    """``$1.95``; small amounts keep four decimals, so a cheap pool does not read as free."""
    return f"${cost:.2f}" if cost == 0 or cost >= 0.01 else f"${cost:.4f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
