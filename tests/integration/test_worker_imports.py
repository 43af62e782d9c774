"""The worker stays light: running a function that uses ``sky`` loads no client machinery.

A worker runs on a rented machine, where every import is start-up time and a chance of a
version clash; asyncssh, httpx, rich, trio-asyncio and cattrs belong to the client. The pool
here is fresh, so no earlier test's function has imported anything on its worker.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

import skyward as sky

CLIENT_ONLY = ("asyncssh", "httpx", "rich", "trio_asyncio", "cattrs")


@sky.function
def loaded_modules() -> tuple[int, list[str]]:
    info = sky.instance_info()  # imports skyward on the worker, as user code would
    return info.node, sorted(sys.modules)


@pytest.fixture(scope="module")
def fresh_pool() -> Iterator[sky.Pool]:
    with sky.Compute(nodes=1, options=sky.Options(console="silent")) as pool:
        yield pool


def test_worker_does_not_import_client_packages(fresh_pool: sky.Pool) -> None:
    node, modules = loaded_modules() >> fresh_pool
    assert node == 0
    # Sanity: this is the worker's module table, with skyward loaded by the call.
    # (the worker itself runs as __main__, with ``python -m skyward_trio.worker``).
    assert {"skyward", "skyward_trio", "skyward_trio._wire", "trio"} <= set(modules)
    loaded = sorted(m for m in modules if m.split(".")[0] in CLIENT_ONLY)
    assert loaded == []


def test_the_client_does_load_them(fresh_pool: sky.Pool) -> None:
    # The check above would pass vacuously if the names were misspelt.
    for name in ("asyncssh", "trio_asyncio"):
        assert name in sys.modules
