"""A worker's control channel on a socket pair: the client's side is played by the test."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import trio

from skyward_trio import _wire
from skyward_trio import worker as worker_module
from skyward_trio.worker import Worker


async def test_a_client_that_leaves_with_beats_unread_ends_only_its_channel(
    tmp_path: Path,
) -> None:
    # The worker beats on the control channel; a peer that closes its end with a beat
    # still unread makes the worker's next read fail with ECONNRESET, not end cleanly.
    # That ends this channel, not the worker.
    worker = Worker(tmp_path, {"info": {"node": 0}}, b"secret")
    ours, theirs = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker._control, stream, _wire.FrameDecoder(expect_hello=False), "")
            await trio.lowlevel.wait_readable(ours)  # a beat arrived, and stays unread
            ours.close()
    await stream.aclose()


async def test_a_sigterm_that_came_before_the_worker_listened_shuts_it_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() notes a SIGTERM or SIGINT that comes before serve() listens for them (and
    # after it returns, while the executor and volumes close) instead of dying of it;
    # serve() then shuts down at once.
    asked = threading.Event()
    asked.set()
    monkeypatch.setattr(worker_module, "_STOP_ASKED", asked)
    with trio.fail_after(10):
        await Worker(tmp_path, {"info": {"node": 0}}, b"secret").serve()
    assert (tmp_path / "worker.ready").exists()
    assert not (tmp_path / "worker.sock").exists()
