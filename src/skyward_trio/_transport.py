"""SSH, reached from trio. The one module that imports asyncssh and trio-asyncio.

asyncssh is asyncio-based; trio-asyncio runs its loop inside trio. Each trio->asyncio
crossing (``aio_as_trio``) costs about 100 µs here, so the data path crosses none: the
worker link uses asyncssh's callback API, whose callbacks already run on the trio thread
inside trio's run, and hands received bytes straight to a sans-I/O decoder. Only
connect, command runs and channel opening cross over.

Cancelling a trio scope around an asyncssh call stops only the wait, never the remote
command, so commands are run with ``create_process`` and closed in a shielded ``finally``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncssh
import trio
import trio_asyncio
from asyncssh.encryption import get_default_encryption_algs

from ._sshcork import cork_packets

__all__ = [
    "ChannelStream",
    "SSHConnection",
    "SSHError",
    "WorkerLink",
    "asyncio_loop",
    "connect",
    "fetch_host_key",
    "fingerprint",
    "generate_key",
    "known_host_keys",
    "read_key",
]

_PREFERRED_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
# A bigger receive window and packets speed up results coming back (server -> client).
_WINDOW = 16 * 1024 * 1024
_PACKET = 128 * 1024
# A server that sends nothing for (_KEEPALIVE_COUNT + 1) * _KEEPALIVE_INTERVAL seconds
# (20 s) while asked every _KEEPALIVE_INTERVAL is gone: the connection is closed. The
# worker heartbeat (_heartbeat) notices a silent node sooner; this covers the
# connections and channels that have no worker session (bootstrap, commands, the
# collections store's channels).
_KEEPALIVE_INTERVAL = 5
_KEEPALIVE_COUNT = 3


class SSHError(Exception):
    """An SSH operation failed (connect, auth, host key, channel)."""


def generate_key() -> asyncssh.SSHKey:
    """A fresh ed25519 key (client keys per pool, host keys per Local node)."""
    return asyncssh.generate_private_key("ssh-ed25519")


def public_openssh(key: asyncssh.SSHKey) -> str:
    """The key's public half in OpenSSH one-line form."""
    data: bytes = key.export_public_key("openssh")
    return data.decode().strip()


def private_openssh(key: asyncssh.SSHKey) -> bytes:
    data: bytes = key.export_private_key("openssh")
    return data


def fingerprint(public: str) -> str:
    """The SHA256 fingerprint ``ssh-keygen -l`` shows for a public key in OpenSSH form."""
    return str(asyncssh.import_public_key(public).get_fingerprint("sha256"))


def read_key(path: str) -> asyncssh.SSHKey:
    """The private key in the file ``path`` (OpenSSH or PEM form, not passphrase-protected).

    Raises:
        SSHError: The file cannot be read or holds no usable private key, with the path.
    """
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise SSHError(
            f"could not load the SSH private key {path}: {exc}. Pass SSH(key=...) a private "
            "key file without a passphrase (the one your ssh uses for these hosts)"
        ) from exc


def known_host_keys(path: str, host: str, port: int) -> list[tuple[int, str]]:
    """The keys that ``path`` (an OpenSSH known_hosts file) trusts for ``host:port``.

    Returns ``(line number, public key in OpenSSH form)`` pairs, so a mismatch can name
    the line to fix. Hashed host names match too; a missing file trusts nothing.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return []
    try:
        addr = str(ipaddress.ip_address(host))
    except ValueError:
        addr = ""  # a name: matched by name only
    found: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith(("#", "@")):
            continue
        try:
            entry = asyncssh.import_known_hosts(line)
            trusted = entry.match(host, addr, port)[0]
            # asyncssh falls back to a port-less entry; OpenSSH names a port other than
            # 22 as [host]:port only, and so do we.
            if port != 22 and entry.match(host, addr, None)[0]:
                continue
        except (asyncssh.Error, ValueError):
            continue  # a line OpenSSH would skip too
        for key in {public_openssh(k) for k in trusted}:
            found.append((number, key))
    return found


async def fetch_host_key(host: str, port: int, *, like: list[str]) -> str | None:
    """The host key ``host:port`` presents, before any authentication.

    With ``like`` (public keys in OpenSSH form), the server is asked for a key of one of
    their types, so it is compared with a key of the same kind. None: it has none of them.
    The caller owns the deadline.

    Raises:
        SSHError: No SSH server answered there.
    """
    algorithms: list[str] = []
    for text in like:
        for alg in asyncssh.import_public_key(text).sig_algorithms:
            if alg.decode() not in algorithms:
                algorithms.append(alg.decode())
    try:
        key = await trio_asyncio.aio_as_trio(asyncssh.get_server_host_key)(
            host, port, server_host_key_algs=algorithms or (), config=[]
        )
    except asyncssh.KeyExchangeFailed as exc:
        if algorithms:
            return None
        raise SSHError(f"no key exchange with the SSH server at {host}:{port}: {exc}") from exc
    except (asyncssh.Error, OSError) as exc:
        raise SSHError(f"no SSH server answered at {host}:{port}: {exc}") from exc
    if key is None:
        raise SSHError(f"the SSH server at {host}:{port} presented no host key")
    return public_openssh(key)


def _ciphers() -> list[str]:
    rest = [a.decode() for a in get_default_encryption_algs()]
    return _PREFERRED_CIPHERS + [a for a in rest if a not in _PREFERRED_CIPHERS]


@contextlib.asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Make sure a trio-asyncio loop is open for the enclosed code (reuse one if open)."""
    if trio_asyncio.current_loop.get(None) is None:
        async with trio_asyncio.open_loop():
            yield
    else:
        yield


async def _read_lines(proc: Any, on_line: Callable[[bytes], None]) -> tuple[bytes, bytes]:
    """Read a process's stdout a line at a time (and its stderr beside it) until both end."""
    stdout = bytearray()
    stderr: list[bytes] = []

    async def drain_stderr() -> None:
        stderr.append(await trio_asyncio.aio_as_trio(proc.stderr.read)())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_stderr)
        while line := await trio_asyncio.aio_as_trio(proc.stdout.readline)():
            stdout += line
            on_line(line)
    return bytes(stdout), b"".join(stderr)


class SSHConnection:
    """An authenticated SSH connection to one node."""

    def __init__(self, conn: asyncssh.SSHClientConnection, host: str, port: int) -> None:
        self._conn = conn
        cork_packets(conn)
        self.host = host
        self.port = port
        self.cipher = str(conn.get_extra_info("send_cipher"))

    async def run(
        self,
        command: str,
        *,
        input: bytes | None = None,
        on_line: Callable[[bytes], None] | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run ``command``; return ``(exit status, stdout, stderr)``.

        With ``on_line``, each stdout line is also handed to it as it arrives.
        Cancellation closes the channel (bounded, shielded), so the command's stdin closes.
        The caller owns the deadline.
        """
        try:
            proc = await trio_asyncio.aio_as_trio(self._conn.create_process)(command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise SSHError(f"could not run a command on {self.host}:{self.port}: {exc}") from exc
        try:
            if input is not None:
                proc.stdin.write(input)
            proc.stdin.write_eof()
            if on_line is None:
                result = await trio_asyncio.aio_as_trio(proc.wait)()
                stdout, stderr = result.stdout or b"", result.stderr or b""
            else:
                stdout, stderr = await _read_lines(proc, on_line)
                result = await trio_asyncio.aio_as_trio(proc.wait)()
            status = result.exit_status
            return (status if status is not None else -1, stdout, stderr)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                proc.close()
                # OpenSSH keeps a closed channel open until the command exits: bound it.
                await trio_asyncio.aio_as_trio(proc.wait_closed)()

    async def open_unix(
        self, path: str, on_data: Callable[[bytes], None], on_close: Callable[[str], None]
    ) -> WorkerLink:
        """Open a direct-streamlocal channel to the unix socket ``path`` on the node.

        ``on_data`` gets each received chunk and ``on_close`` the reason the channel closed,
        both called on the trio thread.
        """
        link = WorkerLink(on_data, on_close)
        try:
            chan, _ = await trio_asyncio.aio_as_trio(self._conn.create_unix_connection)(
                lambda: link._session, path, window=_WINDOW, max_pktsize=_PACKET
            )
        except (asyncssh.Error, OSError) as exc:
            raise SSHError(f"could not open {path} on {self.host}:{self.port}: {exc}") from exc
        link._chan = chan
        return link

    def break_connection(self) -> None:
        """Shut the TCP socket down both ways at once, as a network fault would.

        Both ends see the connection end; no SSH goodbye is sent. Thread-safe (one system
        call on the socket), so the fault kit may call it from any thread.
        """
        sock = self._conn.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone: the fault happened anyway
                sock.shutdown(socket.SHUT_RDWR)

    async def serve_unix(
        self,
        path: str,
        handler: Callable[[ChannelStream], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> None:
        """Listen on the unix socket ``path`` on the node; each connection made to it
        there reaches the client as a ``ChannelStream``, served by ``handler`` in a task
        of ``nursery``. The listener ends with the SSH connection.
        """

        def session() -> _StreamSession:
            stream = ChannelStream()
            nursery.start_soon(handler, stream)
            return stream._session

        try:
            await trio_asyncio.aio_as_trio(self._conn.create_unix_server)(
                session, path, window=_WINDOW, max_pktsize=_PACKET
            )
        except (asyncssh.Error, OSError) as exc:
            raise SSHError(f"could not listen on {path} on {self.host}:{self.port}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the connection (bounded; safe to call twice)."""
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            self._conn.close()
            await trio_asyncio.aio_as_trio(self._conn.wait_closed)()


async def connect(
    host: str,
    port: int,
    *,
    username: str,
    client_key: asyncssh.SSHKey,
    host_key: str,
) -> SSHConnection:
    """Connect and authenticate with ``client_key``, verifying the node's ``host_key``.

    ``host_key`` is the node's public key in OpenSSH form; any other key is refused.
    The caller owns the deadline.
    """
    trusted = asyncssh.import_public_key(host_key)
    try:
        conn = await trio_asyncio.aio_as_trio(asyncssh.connect)(
            host,
            port,
            username=username,
            client_keys=[client_key],
            known_hosts=([trusted], [], []),
            encryption_algs=_ciphers(),
            agent_path=None,
            config=[],
            keepalive_interval=_KEEPALIVE_INTERVAL,
            keepalive_count_max=_KEEPALIVE_COUNT,
        )
    except (asyncssh.Error, OSError) as exc:
        raise SSHError(f"SSH connect to {host}:{port} failed: {exc}") from exc
    return SSHConnection(conn, host, port)


class _Session(asyncssh.SSHUNIXSession[bytes]):
    def __init__(self, link: WorkerLink) -> None:
        self._link = link

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._link._on_data(data)

    def eof_received(self) -> bool:
        self._link._lost("the worker closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(f"connection lost: {exc}" if exc else "connection closed")

    def pause_writing(self) -> None:
        self._link._writable = trio.Event()

    def resume_writing(self) -> None:
        self._link._writable.set()


class WorkerLink:
    """A byte pipe to a worker, usable from trio without crossing into asyncio.

    ``on_data`` is called with each received chunk, on the trio thread.
    """

    def __init__(self, on_data: Callable[[bytes], None], on_close: Callable[[str], None]) -> None:
        self._on_data = on_data
        self._on_close = on_close
        self._session = _Session(self)
        self._chan: asyncssh.SSHUNIXChannel[bytes] | None = None
        self._writable = trio.Event()
        self._writable.set()
        self.closed = trio.Event()
        self.close_reason: str | None = None

    def _lost(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._writable.set()
        self._on_close(reason)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for sending. Raises ``SSHError`` if the link is closed."""
        if self._chan is None or self.closed.is_set():
            raise SSHError(self.close_reason or "link not open")
        try:
            self._chan.write(data)
        except OSError as exc:
            self._lost(str(exc))
            raise SSHError(str(exc)) from exc

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    async def wait_writable(self) -> None:
        """Wait until the channel's send buffer has drained below its high-water mark."""
        await self._writable.wait()

    def close(self, reason: str = "closed by the client") -> None:
        """Close the channel; ``on_close`` gets ``reason``."""
        if self._chan is not None:
            self._chan.close()
        self._lost(reason)


class _StreamSession(asyncssh.SSHUNIXSession[bytes]):
    def __init__(self, stream: ChannelStream) -> None:
        self._stream = stream

    def connection_made(self, chan: asyncssh.SSHUNIXChannel[bytes]) -> None:
        self._stream._chan = chan

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._stream._received.send_nowait(data)

    def eof_received(self) -> bool:
        self._stream._received.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream._received.close()
        self._stream._writable.set()

    def pause_writing(self) -> None:
        self._stream._writable = trio.Event()

    def resume_writing(self) -> None:
        self._stream._writable.set()


class ChannelStream(trio.abc.Stream):
    """An SSH channel the node opened to the client, as a trio stream.

    What arrives is queued unbounded: it carries small requests to the collections store.
    """

    def __init__(self) -> None:
        self._session = _StreamSession(self)
        self._chan: asyncssh.SSHUNIXChannel[bytes] | None = None
        self._received, self._incoming = trio.open_memory_channel[bytes](math.inf)
        self._writable = trio.Event()
        self._writable.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._chan is None or self._chan.is_closing():
            raise trio.BrokenResourceError("the SSH channel is closed")
        self._chan.write(bytes(data))
        await self._writable.wait()

    async def wait_send_all_might_not_block(self) -> None:
        await self._writable.wait()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self._incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def aclose(self) -> None:
        if self._chan is not None:
            self._chan.close()
        self._received.close()
        await trio.lowlevel.checkpoint()
