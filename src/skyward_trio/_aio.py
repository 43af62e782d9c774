"""trio-asyncio, imported so that it leaves the rest of the process's asyncio alone.

asyncssh runs on trio through trio-asyncio's ``open_loop()``. Importing trio-asyncio
also makes every event loop created outside trio (``asyncio.run()``,
``asyncio.new_event_loop()``) one of its own, a ``SyncTrioEventLoop``, in the whole
process: once a pool had opened, the user's own asyncio code ran on it, with other
semantics (a ``run_in_executor`` that is cancelled waits for its thread, so an
``asyncio.wait_for`` around one did not time out). Here, outside trio and with no
policy of the user's, loops are made by asyncio's own policy again, as without Skyward;
inside trio, trio-asyncio works as it did.

This reaches into trio-asyncio's module (``_loop``): ``tests/unit/test_aio.py`` fails if
a release of it changes what is reached.
"""

from __future__ import annotations

import asyncio
from typing import Any

import trio_asyncio
from trio_asyncio import _loop

__all__ = ["trio_asyncio"]


def _plain_loops_outside_trio() -> None:
    policy: Any = getattr(_loop, "_trio_policy", None)
    original: Any = getattr(_loop, "_original_policy", None)
    in_trio: Any = getattr(_loop, "_in_trio_context_other_than_sync_loop", None)
    faked: Any = getattr(_loop, "_faked_policy", None)
    if policy is None or original is None or in_trio is None or faked is None:
        return  # another trio-asyncio: tests/unit/test_aio.py says so
    if getattr(policy.new_event_loop, "skyward", False):
        return  # done already
    made_by_trio_asyncio = policy.new_event_loop

    def new_event_loop() -> asyncio.AbstractEventLoop:
        # In trio: trio-asyncio's refusal; with a policy of the user's: that policy's loop.
        made = made_by_trio_asyncio if in_trio() or faked.policy is not None else None
        loop: asyncio.AbstractEventLoop = (made or original.new_event_loop)()
        return loop

    new_event_loop.skyward = True  # type: ignore[attr-defined]
    policy.new_event_loop = new_event_loop


_plain_loops_outside_trio()
