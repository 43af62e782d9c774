"""``offers()``: what providers offer now, and at what price, cached on this machine.

Each provider's listing is fetched concurrently (the same calls ``Compute`` makes to plan
a pool) and kept in a SQLite file, ``~/.skyward/offers.sqlite``, for ``max_age`` seconds:
a cloud's price list takes seconds to read, and a script that asks twice should not pay
twice. A listing is cached per provider configuration (as its repr shows it: never a
secret), accelerator and region. Listings that failed are not cached.

Layer 4: it drives the providers' catalogs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cattrs
import trio

from ._model import ProviderConfig
from ._offers import Catalog, Offer, Offers
from ._providers import offers as provider_offers
from .accelerators import Accelerator

__all__ = ["CACHE_FILE", "DEFAULT_MAX_AGE", "offers"]

#: Where listings are cached (``~`` is the user's home).
CACHE_FILE = "~/.skyward/offers.sqlite"

#: How long a cached listing is used, in seconds: 15 minutes. Marketplaces (Vast.ai)
#: rent machines out within minutes; a clouds' price lists change far more slowly.
DEFAULT_MAX_AGE = 900.0

_converter = cattrs.Converter()


def _check(
    providers: object, accelerator: object, region: object, max_age: object
) -> tuple[ProviderConfig, ...]:
    """The arguments, checked before anything is fetched."""
    listed = (providers,) if isinstance(providers, ProviderConfig) else providers
    if not isinstance(listed, Sequence) or isinstance(listed, str) or not listed:
        raise TypeError(
            f"offers(providers={providers!r}): pass a provider or a list of them, such as "
            "[sky.AWS(), sky.RunPod()]"
        )
    for provider in listed:
        if not isinstance(provider, ProviderConfig):
            raise TypeError(
                f"offers(providers=...): {provider!r} is not a provider; pass records such "
                "as sky.AWS() or sky.VastAI()"
            )
    if accelerator is not None:
        if not isinstance(accelerator, Accelerator):
            raise TypeError(
                f"offers(accelerator={accelerator!r}): pass an accelerator record, such as "
                "sky.accelerators.H100(count=8)"
            )
        if accelerator.count != math.floor(accelerator.count):
            raise ValueError(
                f"offers(accelerator={accelerator!r}): providers rent whole accelerators; "
                "pass count=1 or more"
            )
    if region is not None and (not isinstance(region, str) or not region):
        raise ValueError(f'offers(region={region!r}): pass a region name, such as "us-east-1"')
    if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age < 0:
        raise ValueError(f"offers(max_age={max_age!r}): pass seconds >= 0 (0: fetch now)")
    return tuple(listed)


def _key(provider: ProviderConfig, accelerator: Accelerator | None, region: str | None) -> str:
    """The cache key of one listing: what was asked of whom."""
    asked = [repr(provider), repr(accelerator), region]
    return hashlib.sha256(json.dumps(asked).encode()).hexdigest()


class _Cache:
    """The listings file; each call opens it briefly (several processes may share it)."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()  # a string operation: the disk is not touched

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The file, open for one transaction (committed when it ends well), then closed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS listings "
                "(key TEXT PRIMARY KEY, fetched_at REAL NOT NULL, offers TEXT NOT NULL)"
            )
            yield db

    def get(self, key: str, max_age: float) -> tuple[float, tuple[Offer, ...]] | None:
        """A listing fetched less than ``max_age`` seconds ago, or None."""
        if max_age <= 0:
            return None
        with self._connect() as db:
            row = db.execute(
                "SELECT fetched_at, offers FROM listings WHERE key = ?", (key,)
            ).fetchone()
        if row is None or time.time() - row[0] >= max_age:
            return None
        try:
            listed = _converter.structure(json.loads(row[1]), list[Offer])
        except (ValueError, TypeError, cattrs.BaseValidationError):
            return None  # written by another version: fetched again
        return row[0], tuple(listed)

    def put(self, key: str, fetched_at: float, offers: Sequence[Offer]) -> None:
        text = json.dumps(_converter.unstructure(list(offers), list[Offer]))
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO listings (key, fetched_at, offers) VALUES (?, ?, ?)",
                (key, fetched_at, text),
            )
        os.chmod(self.path, 0o600)


async def _listing(
    cache: _Cache,
    provider: ProviderConfig,
    accelerator: Accelerator | None,
    region: str | None,
    max_age: float,
) -> tuple[float, Catalog]:
    """One provider's listing and when it was fetched: from the cache when fresh."""
    key = _key(provider, accelerator, region)
    cached = await trio.to_thread.run_sync(cache.get, key, max_age)
    if cached is not None:
        return cached[0], Catalog(offers=cached[1])
    fetched_at = time.time()
    catalog = await provider_offers(
        provider,
        accelerator=accelerator,
        accelerators=accelerator.count if accelerator is not None else 1,
        region=region,
        everything=True,
    )
    if catalog.error is None:
        await trio.to_thread.run_sync(cache.put, key, fetched_at, catalog.offers)
    return fetched_at, catalog


async def offers(
    providers: ProviderConfig | Sequence[ProviderConfig],
    *,
    accelerator: Accelerator | None = None,
    region: str | None = None,
    max_age: float = DEFAULT_MAX_AGE,
) -> Offers:
    """What ``providers`` offer now, per node, and at what price.

    ``accelerator`` narrows the listing to nodes that carry it (its count: per node;
    the offers are priced for nodes of that many); without one, each provider lists
    everything it has (a GPU marketplace: machines with one GPU). ``region`` is the AWS
    region to price (the others list every region they have: narrow with
    ``.region()``). A listing younger than ``max_age`` seconds comes from the cache
    (0: fetch it now).

    Returns:
        An :class:`~skyward_trio.Offers` query; a provider whose API failed is in its
        ``errors``, not silently empty.

    Raises:
        TypeError, ValueError: A bad argument, or a provider that is not set up (no API
            key, no credentials), naming the fix; nothing was fetched.
    """
    listed = _check(providers, accelerator, region, max_age)
    cache = _Cache(Path(CACHE_FILE))
    results: list[tuple[float, Catalog] | None] = [None] * len(listed)
    setting: list[Exception] = []

    async def fetch(i: int, provider: ProviderConfig) -> None:
        try:
            results[i] = await _listing(cache, provider, accelerator, region, float(max_age))
        except (ValueError, ImportError) as exc:  # a setting to fix: raised below
            setting.append(exc)

    async with trio.open_nursery() as nursery:
        for i, provider in enumerate(listed):
            nursery.start_soon(fetch, i, provider)
    if setting:
        raise setting[0]
    found: list[Offer] = []
    errors: list[tuple[str, str]] = []
    oldest: float | None = None
    for provider, result in zip(listed, results, strict=True):
        assert result is not None
        fetched_at, catalog = result
        if catalog.error is not None:
            errors.append((f"sky.{type(provider).__name__}()", catalog.error))
            continue
        found.extend(catalog.offers)
        oldest = fetched_at if oldest is None else min(oldest, fetched_at)
    query = Offers(offers=tuple(found), errors=tuple(errors), fetched_at=oldest)
    return query.accelerator(accelerator) if accelerator is not None else query
