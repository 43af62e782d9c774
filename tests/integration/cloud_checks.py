"""What the tests of the one-key clouds (against their fakes, ``fake_cloud``) check alike.

``call``: one request to a fake's API, answered as its tests read it. ``posted``: the
creates a fake received. ``debug_logged``: the options of a pool whose log a test reads.
``refuses_bad_settings``:
what every GPU cloud's provider refuses before it asks its API for anything (a fraction of a
GPU, no accelerator, no key) and how it words a wrong key; each test then checks, in its own
fake's requests, that nothing was rented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_cloud import Recorded

import skyward as sky

QUIET = sky.Options(console="silent")


def bearer(key: str) -> dict[str, str]:
    """The headers of an API whose key is a bearer token."""
    return {"Authorization": f"Bearer {key}"}


def call(
    api_url: str, method: str, path: str, body: Any = None, *, headers: Mapping[str, str]
) -> tuple[int, Any]:
    """``method`` on ``api_url + path`` with a JSON ``body`` (None: no body): the status and
    the JSON answered (None for an empty body)."""
    response = httpx.request(method, api_url + path, json=body, headers=dict(headers))
    return response.status_code, response.json() if response.content else None


def posted(requests: Iterable[Recorded], ending: str) -> list[Recorded]:
    """The POSTs among a fake's ``requests`` whose path ends with ``ending``: its creates
    (or launches), in the order they arrived."""
    return [r for r in requests if r.method == "POST" and r.path.endswith(ending)]


def debug_logged(log: Path) -> sky.Options:
    """Options for a pool that prints nothing and logs everything (DEBUG) to ``log``: for a
    test that reads the log (that it keeps the key out, say)."""
    return sky.Options(
        console="silent", logging=sky.LogConfig(file=str(log), level="DEBUG", console=False)
    )


def refuses_bad_settings(
    provider: sky.ProviderConfig,
    accelerator: Callable[..., Any],
    *,
    cloud: str,
    keyless: sky.ProviderConfig,
    key_env: str,
    wrong: sky.ProviderConfig,
    secret: str,
    whole: str = "",
    refused: str = "the API key",
    hint: str = "",
) -> None:
    """Check the refusals every GPU cloud's provider makes before it rents anything.

    ``provider`` (with the right key) refuses a fraction of an ``accelerator`` (saying
    ``whole``, by default "<cloud> rents whole GPUs") and a pool with no accelerator;
    ``keyless`` (no key given, none in the environment: the caller removes ``key_env``)
    says to export ``key_env``; ``wrong`` (whose key is ``secret``) says "<cloud> refused
    <refused>" and ``hint`` (by default "check <key_env>"), never ``secret`` itself.
    """
    with pytest.raises(ValueError, match=whole or f"{cloud} rents whole GPUs"):
        sky.Compute(provider=provider, accelerator=accelerator(count=0.5), options=QUIET)
    with pytest.raises(ValueError, match="asks for no accelerator"):
        sky.Compute(provider=provider, options=QUIET)
    with (
        pytest.raises(ValueError, match=f"export {key_env}"),
        sky.Compute(provider=keyless, accelerator=accelerator(), options=QUIET),
    ):
        pytest.fail(f"a {cloud} pool came up with no key")
    with (
        pytest.raises(sky.NoOfferError, match=f"{cloud} refused {refused}") as raised,
        sky.Compute(provider=wrong, accelerator=accelerator(), options=QUIET),
    ):
        pytest.fail(f"a {cloud} pool came up with a wrong key")
    assert (hint or f"check {key_env}") in str(raised.value)
    assert secret not in str(raised.value)
