"""The worker's handshake, on a real connection to a real worker.

A connection opens with a JSON hello carrying the pool secret and both versions. The worker
refuses a wrong secret or a different Python minor / Skyward version, and it must do so
before it unpickles anything the client sent (cloudpickled code does not survive a change
of Python version, and an unauthenticated peer must not get to run a pickle).

Each test opens a second connection, through the shared pool's own SSH link, to the worker
of node 0; the pool's connection is not touched and stays usable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import skyward as sky
import skyward_trio
from skyward_trio import _connection, _wire
from skyward_trio._connection import WorkerConnection
from skyward_trio._version import PYTHON_VERSION

FAKE_SKYWARD = "0.0.0+mismatch"
FAKE_PYTHON = "2.7"


@sky.function
def node_index() -> int:
    return sky.instance_info().node


def _node(pool: sky.Pool, index: int = 0) -> Any:
    return pool._core._ready[index]


def _socket_path(pool: sky.Pool) -> str:
    return f"{_node(pool).instance.workdir}/worker.sock"


def _secret(pool: sky.Pool) -> str:
    # A Local node's working directory is on this machine; the bootstrap wrote the secret there.
    return (Path(_node(pool).instance.workdir) / "secret").read_text().strip()


def _open(pool: sky.Pool, secret: str) -> None:
    """Open a fresh WorkerConnection to node 0's worker, on the pool's loop, and close it."""

    async def attempt() -> None:
        conn = WorkerConnection(0, _node(pool).ssh, _socket_path(pool))
        try:
            with trio.fail_after(10):
                await conn.open(secret)
        finally:
            conn.close()

    pool._portal.call(attempt)


def test_the_right_secret_and_versions_are_accepted(sync_pool: sky.Pool) -> None:
    _open(sync_pool, _secret(sync_pool))  # the control: the same path, nothing refused


def test_a_different_skyward_version_is_refused(
    sync_pool: sky.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_connection, "__version__", FAKE_SKYWARD)
    with pytest.raises(sky.VersionMismatchError, match="version mismatch") as caught:
        _open(sync_pool, _secret(sync_pool))
    message = str(caught.value)
    assert FAKE_SKYWARD in message
    assert f"Skyward {skyward_trio.__version__}" in message
    assert "node 0" in message
    assert isinstance(caught.value, sky.SkywardError)
    monkeypatch.undo()
    assert sync_pool.run(node_index(), target=0) == 0


def test_a_different_python_version_is_refused(
    sync_pool: sky.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_connection, "PYTHON_VERSION", FAKE_PYTHON)
    with pytest.raises(sky.VersionMismatchError, match="version mismatch") as caught:
        _open(sync_pool, _secret(sync_pool))
    message = str(caught.value)
    assert f"Python {FAKE_PYTHON}" in message
    assert f"Python {PYTHON_VERSION}" in message
    monkeypatch.undo()
    assert sync_pool.run(node_index(), target=0) == 0


def test_a_wrong_secret_is_refused(sync_pool: sky.Pool) -> None:
    with pytest.raises(sky.ProvisionError, match="authentication failed") as caught:
        _open(sync_pool, "not-the-pool-secret")
    assert caught.value.node == 0
    assert caught.value.phase == "worker"
    assert sync_pool.run(node_index(), target=0) == 0


# -- nothing is unpickled before the handshake succeeds --------------------------------------


class _Trap:
    """Unpickling this creates ``path``: proof that the worker unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return os.mkdir, (self.path,)


def _hello_then_frame(pool: sky.Pool, hello: dict[str, Any], frame: tuple[Any, ...]) -> Any:
    """Send a hello and a frame in one write on a raw link; return the worker's hello reply."""
    received: list[bytes] = []
    data = _wire.encode_hello(hello) + b"".join(bytes(c) for c in _wire.encode(frame))

    async def attempt() -> None:
        link = await _node(pool).ssh.open_unix(
            _socket_path(pool), received.append, lambda reason: None
        )
        try:
            link.write(data)
            with trio.fail_after(10):
                await link.closed.wait()  # the worker answers, then hangs up
        finally:
            link.close()

    pool._portal.call(attempt)
    replies = _wire.FrameDecoder(expect_hello=True).feed(b"".join(received))
    assert replies, "the worker sent no reply"
    return replies[0]


@pytest.mark.parametrize(
    ("make_hello", "problem"),
    [
        (
            lambda secret: {"secret": secret, "python": PYTHON_VERSION, "skyward": FAKE_SKYWARD},
            "version mismatch",
        ),
        (
            lambda secret: {"secret": "wrong", "python": PYTHON_VERSION, "skyward": "0.1.0"},
            "authentication failed",
        ),
    ],
    ids=["version", "secret"],
)
def test_a_refused_client_gets_nothing_unpickled(
    sync_pool: sky.Pool,
    tmp_path: Path,
    make_hello: Callable[[str], dict[str, Any]],
    problem: str,
) -> None:
    trap = tmp_path / "unpickled"
    frame = (_wire.RUN, 1, "trap", None, _Trap(str(trap)))
    reply = _hello_then_frame(sync_pool, make_hello(_secret(sync_pool)), frame)
    assert reply["ok"] is False
    assert problem in reply["error"]
    assert not trap.exists(), "the worker unpickled a frame from a client it refused"
    assert sync_pool.run(node_index(), target=0) == 0
