"""``sky.offers``: ``skyward_trio.offers`` for code that is not async."""

from __future__ import annotations

from collections.abc import Sequence

from skyward_trio import Offers, ProviderConfig
from skyward_trio.accelerators import Accelerator

__all__ = ["offers"]


def offers(
    providers: ProviderConfig | Sequence[ProviderConfig],
    *,
    accelerator: Accelerator | None = None,
    region: str | None = None,
    max_age: float = 900.0,
) -> Offers:
    """What ``providers`` offer now, per node, and at what price: a chainable query.

        h100 = sky.offers([sky.AWS(), sky.RunPod()], accelerator=sky.accelerators.H100())
        print(h100.spot().cheapest(3))

    The same as ``skyward_trio.offers`` (see there), run on the portal's trio loop.
    """
    from skyward_trio._market import offers as fetch

    from ._portal import get_portal

    return get_portal().call(  # type: ignore[no-any-return]
        lambda: fetch(providers, accelerator=accelerator, region=region, max_age=max_age)
    )
