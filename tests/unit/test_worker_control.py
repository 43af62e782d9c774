"""A worker's control channel on a socket pair: the client's side is played by the test."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from skyward_trio import _wire
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
