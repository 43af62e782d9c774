"""What a provider can offer, and which of several specs to try first.

A provider lists :class:`Offer` s (a kind of machine, what it has, and what it costs spot
and on demand); a :class:`~skyward_trio.Spec` narrows them down with its ``allocation``,
``max_hourly_cost``, ``region``, ``vcpus``, ``memory_gb``, ``disk_gb`` and
``architecture``. :func:`plan` turns ``Compute``'s specs into the order they are tried in,
or fails, before anything is provisioned, with the constraint each spec could not meet.

Layer 1: pure decisions, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, TypeAlias, overload

import attrs

from ._errors import NoOfferError
from ._model import PROVIDER_TYPES, Architecture, SelectionStrategy, Spec
from .accelerators import Accelerator

__all__ = [
    "Catalog",
    "Choice",
    "Offer",
    "Offers",
    "Pricing",
    "asks_hardware",
    "choose",
    "describe",
    "plan",
]


@attrs.frozen(kw_only=True)
class Offer:
    """A kind of machine a provider can start, per node.

    A hardware field that is None is not known before a machine is up (a ``sky.SSH`` host):
    a spec that asks for a minimum of it cannot be promised. A price that is None means the
    provider has no such capacity (no spot market, say).

    Attributes:
        provider: The provider's name, as users write it (``"sky.Local()"``).
        name: What the machine is (an instance type, ``"this machine"``).
        vcpus: vCPUs per node.
        memory_gb: RAM per node, in GB.
        disk_gb: Disk per node, in GB.
        architecture: ``"x86_64"`` or ``"arm64"``.
        regions: The regions it is offered in; empty: the provider has no regions.
        spot_price: USD per node-hour on the spot market.
        on_demand_price: USD per node-hour on demand.
        accelerator: The accelerator it carries (its ``count``: how many per node), or
            None when that is not known before a machine is up (a ``sky.SSH`` host) or it
            has none: a spec's ``accelerator`` is then not judged here.
        ref: The provider's own id for it, when renting it needs one (a Vast.ai ask).
    """

    provider: str
    name: str
    vcpus: float | None = None
    memory_gb: float | None = None
    disk_gb: float | None = None
    architecture: str | None = None
    regions: tuple[str, ...] = ()
    spot_price: float | None = None
    on_demand_price: float | None = None
    accelerator: Accelerator | None = None
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Choice:
    """A spec that can be met, with the offer it gets and at what price.

    Attributes:
        index: The spec's place among ``Compute``'s specs (0-based).
        spec: The spec.
        offer: Its cheapest offer that meets every constraint.
        spot: Whether that offer is taken on the spot market.
        hourly_price: USD per node-hour.
        also: The spec's other offers, taken the same way (spot or not), cheapest first:
            a provider that takes a list at create (RunPod's GPU types) falls back to
            them when the chosen one has no capacity left.
    """

    index: int
    spec: Spec
    offer: Offer
    spot: bool
    hourly_price: float
    also: tuple[Offer, ...] = ()

    @property
    def pool_price(self) -> float:
        """USD per hour for the pool's initial nodes: what ``selection="cheapest"`` ranks."""
        return self.hourly_price * self.spec.nodes.desired


def describe(index: int, spec: Spec, total: int) -> str:
    """``spec 2 of 3 (sky.SSH())``, or ``the spec (sky.Local())`` when there is one."""
    provider = f"sky.{type(spec.provider).__name__}()"
    return f"spec {index + 1} of {total} ({provider})" if total > 1 else f"the spec ({provider})"


def _price(offer: Offer, spec: Spec) -> tuple[float, bool] | str:
    """The offer's price per node-hour under the spec's ``allocation``, and whether it is
    spot; or why the allocation cannot be had."""
    spot, on_demand = offer.spot_price, offer.on_demand_price
    allocation = spec.allocation
    if allocation == "spot":
        if spot is None:
            return f"allocation='spot': {offer.provider} has no spot capacity"
        return spot, True
    if allocation == "on-demand":
        if on_demand is None:
            return f"allocation='on-demand': {offer.provider} has no on-demand capacity"
        return on_demand, False
    if allocation == "spot-if-available" and spot is not None:
        return spot, True
    if allocation == "cheapest" and spot is not None and (on_demand is None or spot <= on_demand):
        return spot, True
    if on_demand is None:
        return f"allocation={allocation!r}: {offer.provider} offers no capacity"
    return on_demand, False


_MINIMUMS = (
    ("vcpus", "vCPUs", " vCPUs"),
    ("memory_gb", "memory", " GB"),
    ("disk_gb", "disk", " GB"),
)


def asks_hardware(spec: Spec) -> bool:
    """Whether ``spec`` sets a hardware constraint (one an offer must know its value for)."""
    minimums = (getattr(spec, field) for field, _, _ in _MINIMUMS)
    return spec.architecture is not None or any(value is not None for value in minimums)


def _unmet_accelerator(offer: Offer, wanted: Accelerator | None) -> str | None:
    """Why ``offer`` does not carry the ``wanted`` accelerator, in words shared by every
    such offer (a catalog of many GPU types then gives one reason, not one per type)."""
    has = offer.accelerator
    if wanted is None or has is None:
        return None
    if has.name != wanted.name:
        return f"accelerator={wanted.name}: {offer.provider} offers no {wanted.name}"
    if wanted.memory_gb is not None and wanted.memory_gb != has.memory_gb:
        return f"accelerator={wanted.name}: {offer.provider} offers no {wanted.memory} one"
    if wanted.form_factor is not None and wanted.form_factor != has.form_factor:
        return f"accelerator={wanted.name}: {offer.provider} offers no {wanted.form_factor} one"
    if wanted.count > has.count:
        return f"accelerator={wanted.name}: {offer.name} comes at most {has.count:g} per node"
    return None


def _unmet(offer: Offer, spec: Spec) -> str | None:
    """The first hardware or place constraint of ``spec`` that ``offer`` does not meet."""
    unmet = _unmet_accelerator(offer, spec.accelerator)
    if unmet is not None:
        return unmet
    for field, what, unit in _MINIMUMS:
        wanted = getattr(spec, field)
        if wanted is None:
            continue
        has = getattr(offer, field)
        if has is None:
            return (
                f"{field}={wanted:g}: {offer.provider} cannot tell its machines' {what} before "
                f"they are up; drop {field}= for this provider"
            )
        if has < wanted:
            return f"{field}={wanted:g}: {offer.name} has {has:g}{unit}"
    if spec.architecture is not None:
        if offer.architecture is None:
            return (
                f"architecture={spec.architecture!r}: {offer.provider} cannot tell its "
                "machines' architecture before they are up; drop architecture= for this provider"
            )
        if offer.architecture != spec.architecture:
            return f"architecture={spec.architecture!r}: {offer.name} is {offer.architecture}"
    if spec.region is not None and spec.region not in offer.regions:
        if not offer.regions:
            return f"region={spec.region!r}: {offer.provider} has no regions; drop region="
        listed = ", ".join(map(repr, offer.regions))
        return f"region={spec.region!r}: {offer.name} is offered in {listed}"
    return None


@attrs.frozen(kw_only=True)
class Catalog:
    """What one spec's provider offers.

    Attributes:
        offers: The kinds of machine it can start.
        every: The offers are the very machines the nodes get, one each in order (your
            ``sky.SSH`` hosts, measured): each must meet the spec, not just one.
        error: Why the offers could not be listed (a host that did not answer); the spec
            is then skipped with it.
    """

    offers: tuple[Offer, ...] = ()
    every: bool = False
    error: str | None = None


def _judge(offer: Offer, spec: Spec) -> tuple[float, bool] | str:
    """The offer's price per node-hour and whether it is spot, or the constraint it fails."""
    unmet = _unmet(offer, spec)
    priced = _price(offer, spec) if unmet is None else unmet
    if isinstance(priced, str):
        return priced
    price, spot = priced
    if spec.max_hourly_cost is not None and price > spec.max_hourly_cost:
        return (
            f"max_hourly_cost={spec.max_hourly_cost:g}: {offer.name} costs "
            f"${price:g}/h{' on spot' if spot else ''}"
        )
    return priced


#: The most reasons one spec's refusal lists.
_MOST_REASONS = 5


def choose(
    index: int, spec: Spec, offers: Sequence[Offer], total: int = 1, *, every: bool = False
) -> Choice | str:
    """The cheapest of ``offers`` that meets ``spec`` (with ``every``, the dearest, once
    each meets it), or why none does (naming the spec and the constraint)."""
    why: list[str] = []
    met: list[tuple[float, bool, Offer]] = []  # price, spot, offer: those that meet it
    for offer in offers:
        judged = _judge(offer, spec)
        if isinstance(judged, str):
            why.append(judged)
        else:
            met.append((*judged, offer))
    if met and not (every and why):
        # The first of the cheapest (with every, of the dearest): ties keep the given order.
        price, spot, offer = (max if every else min)(met, key=lambda m: m[0])
        by_price = sorted(met, key=lambda m: m[0])
        also = () if every else tuple(o for _, s, o in by_price if o is not offer and s == spot)
        return Choice(index=index, spec=spec, offer=offer, spot=spot, hourly_price=price, also=also)
    if not offers:
        why.append(f"{spec.provider!r} has no offers")
    fix = _largest(spec, offers, why)
    # One reason per distinct constraint: a catalog of similar machines fails alike. A
    # marketplace lists hundreds of machines, each failing in words of its own: the
    # first few (the cheapest, as listed) say enough.
    reasons = list(dict.fromkeys(why))
    if len(reasons) > _MOST_REASONS:
        more = len(reasons) - _MOST_REASONS
        reasons = [*reasons[:_MOST_REASONS], f"and {more} more offer(s) like these"]
    return f"{describe(index, spec, total)}: {'; '.join(reasons)}{fix}"


def _largest(spec: Spec, offers: Sequence[Offer], why: Sequence[str]) -> str:
    """When every offer falls short of the same minimum (``vcpus=``, ``memory_gb=``,
    ``disk_gb=``), the fix: the most any of them has."""
    for field, what, unit in _MINIMUMS:
        wanted = getattr(spec, field)
        if wanted is None or not why or not all(w.startswith(f"{field}=") for w in why):
            continue
        known = [value for o in offers if (value := getattr(o, field)) is not None]
        if known and max(known) < wanted:
            return (
                f". The most {what} any offer here has is {max(known):g}{unit}: ask for "
                f"{field}={max(known):g} or less, or another provider"
            )
    return ""


def plan(
    specs: Sequence[Spec],
    catalogs: Sequence[Catalog | Sequence[Offer]],
    selection: SelectionStrategy,
) -> tuple[list[Choice], list[str]]:
    """The specs that can be met, in the order to try them, and why the others cannot.

    ``catalogs`` holds each spec's :class:`Catalog` (or just its offers).
    ``selection="first"`` keeps the given order; ``"cheapest"`` sorts by what the pool's
    initial nodes cost per hour (ties keep the given order).

    Raises:
        NoOfferError: No spec can be met.
    """
    choices: list[Choice] = []
    skipped: list[str] = []
    for index, (spec, given) in enumerate(zip(specs, catalogs, strict=True)):
        catalog = given if isinstance(given, Catalog) else Catalog(offers=tuple(given))
        if catalog.error is not None:
            skipped.append(f"{describe(index, spec, len(specs))}: {catalog.error}")
            continue
        choice = choose(index, spec, catalog.offers, len(specs), every=catalog.every)
        if isinstance(choice, str):
            skipped.append(choice)
        else:
            choices.append(choice)
    if not choices:
        raise NoOfferError(skipped)
    if selection == "cheapest":
        choices.sort(key=lambda c: c.pool_price)
    return choices, skipped


#: How ``Offers`` prices an offer: the cheaper of its spot and on-demand prices, or one.
Pricing: TypeAlias = Literal["cheapest", "spot", "on-demand"]


def _provider_label(kind: str) -> str:
    """``"aws"`` as offers name their provider: ``"sky.AWS()"``."""
    cls = PROVIDER_TYPES.get(kind.lower()) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(
            f"provider({kind!r}): not a provider type; the types are "
            f"{', '.join(map(repr, PROVIDER_TYPES))}"
        )
    return f"sky.{cls.__name__}()"


def _number(method: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{method}({value!r}): pass a number >= 0")
    return float(value)


@attrs.frozen(kw_only=True)
class Offers(Sequence[Offer]):
    """What providers offer, as listed by ``offers()``, and a query over it.

    Each method returns a new ``Offers`` narrowed down, so they chain::

        h100 = await skyward_trio.offers([sky.AWS(), sky.RunPod()],
                                         accelerator=sky.accelerators.H100(count=8))
        for offer in h100.spot().max_price(30).cheapest(3):
            print(offer.provider, offer.name, h100.price(offer))

    Prices are USD per node-hour; a node has what an offer lists.

    Attributes:
        offers: The offers, in the order listed (``cheapest`` sorts them).
        errors: ``(provider, why)`` for each provider whose offers could not be listed:
            they are missing from ``offers``, not empty.
        fetched_at: When the oldest of these listings was fetched (``time.time()``);
            listings are cached for ``max_age`` seconds.
        pricing: ``"cheapest"`` (an offer's cheaper price, spot or on demand), ``"spot"``
            or ``"on-demand"``: set by :meth:`spot` and :meth:`on_demand`, used by
            :meth:`price`, :meth:`max_price` and :meth:`cheapest`.
    """

    offers: tuple[Offer, ...] = ()
    errors: tuple[tuple[str, str], ...] = ()
    fetched_at: float | None = None
    pricing: Pricing = "cheapest"

    def __len__(self) -> int:
        return len(self.offers)

    @overload
    def __getitem__(self, index: int) -> Offer: ...

    @overload
    def __getitem__(self, index: slice) -> Offers: ...

    def __getitem__(self, index: int | slice) -> Offer | Offers:
        if isinstance(index, slice):
            return self._keep(self.offers[index])
        return self.offers[index]

    def __iter__(self) -> Iterator[Offer]:
        return iter(self.offers)

    def __repr__(self) -> str:
        providers = ", ".join(dict.fromkeys(o.provider for o in self.offers)) or "no provider"
        failed = f"; {len(self.errors)} provider(s) failed" if self.errors else ""
        return f"<Offers: {len(self.offers)} from {providers}, priced {self.pricing}{failed}>"

    def _keep(self, offers: Iterable[Offer], pricing: Pricing | None = None) -> Offers:
        return attrs.evolve(self, offers=tuple(offers), pricing=pricing or self.pricing)

    def price(self, offer: Offer) -> float | None:
        """USD per node-hour of ``offer`` as this query prices it; None if it has none."""
        if self.pricing == "spot":
            return offer.spot_price
        if self.pricing == "on-demand":
            return offer.on_demand_price
        prices = [p for p in (offer.spot_price, offer.on_demand_price) if p is not None]
        return min(prices) if prices else None

    def where(self, keep: Callable[[Offer], bool]) -> Offers:
        """The offers for which ``keep(offer)`` is true."""
        if not callable(keep):
            raise TypeError(f"where({keep!r}): pass a function of an Offer, such as lambda o: ...")
        return self._keep(o for o in self.offers if keep(o))

    def accelerator(self, wanted: Accelerator) -> Offers:
        """The offers whose nodes carry ``wanted``: its model, and its memory, form factor
        and count where it sets them (``sky.accelerators.H100(count=8)``)."""
        if not isinstance(wanted, Accelerator):
            raise TypeError(
                f"accelerator({wanted!r}): pass an accelerator record, such as "
                "sky.accelerators.H100() (strings are taken by the `sky offers` command)"
            )
        return self.where(lambda o: o.accelerator is not None and not _unmet_accelerator(o, wanted))

    def provider(self, *kinds: str) -> Offers:
        """The offers of these providers, named by type as in skyward.toml (``"aws"``)."""
        if not kinds:
            raise ValueError('provider(): name at least one provider type, such as "aws"')
        labels = {_provider_label(kind) for kind in kinds}
        return self.where(lambda o: o.provider in labels)

    def spot(self) -> Offers:
        """The offers with spot capacity, priced on the spot market."""
        return self._keep((o for o in self.offers if o.spot_price is not None), "spot")

    def on_demand(self) -> Offers:
        """The offers with on-demand capacity, priced on demand."""
        return self._keep((o for o in self.offers if o.on_demand_price is not None), "on-demand")

    def max_price(self, usd: float) -> Offers:
        """The offers that cost at most ``usd`` per node-hour (as :meth:`price` says)."""
        most = _number("max_price", usd)
        return self.where(lambda o: (p := self.price(o)) is not None and p <= most)

    def region(self, name: str) -> Offers:
        """The offers available in region ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f'region({name!r}): pass a region name, such as "us-east-1"')
        return self.where(lambda o: name in o.regions)

    def architecture(self, name: Architecture) -> Offers:
        """The offers whose nodes are ``"x86_64"`` or ``"arm64"``."""
        if name not in ("x86_64", "arm64"):
            raise ValueError(f'architecture({name!r}): pass "x86_64" or "arm64"')
        return self.where(lambda o: o.architecture == name)

    def min_vcpus(self, n: float) -> Offers:
        """The offers whose nodes have at least ``n`` vCPUs (known before they are up)."""
        least = _number("min_vcpus", n)
        return self.where(lambda o: o.vcpus is not None and o.vcpus >= least)

    def min_memory(self, gb: float) -> Offers:
        """The offers whose nodes have at least ``gb`` GB of RAM."""
        least = _number("min_memory", gb)
        return self.where(lambda o: o.memory_gb is not None and o.memory_gb >= least)

    def cheapest(self, n: int | None = None) -> Offers:
        """The offers cheapest first (ties keep their order; unpriced ones last), the
        first ``n`` of them when given."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"cheapest({n!r}): pass a whole number >= 1, or nothing for all")

        def key(offer: Offer) -> tuple[bool, float]:
            price = self.price(offer)
            return (price is None, price or 0.0)

        return self._keep(sorted(self.offers, key=key)[:n])
