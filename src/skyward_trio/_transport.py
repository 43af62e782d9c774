"""SSH, reached from trio. The one module that imports asyncssh and trio-asyncio.

asyncssh is asyncio-based; trio-asyncio runs its loop inside trio. Each trio->asyncio
crossing (``aio_as_trio``) costs about 100 µs here, so the data path crosses none: the
worker link uses asyncssh's callback API, whose callbacks already run on the trio thread
inside trio's run, and hands received bytes straight to a sans-I/O decoder; the TCP
socket under each client connection is read and written by trio itself, not through
trio-asyncio's loop (see ``_SocketTransport``). Only connect, command runs and channel
opening cross over.

Cancelling a trio scope around an asyncssh call stops only the wait, never the remote
command, so commands are run with ``create_process`` and closed in a shielded ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import getpass
import ipaddress
import itertools
import math
import os
import socket
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeAlias, cast

import asyncssh
import attrs
import trio
from asyncssh.config import SSHClientConfig
from asyncssh.encryption import get_default_encryption_algs

from ._aio import trio_asyncio
from ._sshtrim import trim

__all__ = [
    "ChannelStream",
    "EncryptedKeyError",
    "HostConfig",
    "Jump",
    "Login",
    "SSHConnection",
    "SSHError",
    "SSHKey",
    "WorkerLink",
    "asyncio_loop",
    "certified",
    "connect",
    "fetch_host_key",
    "fingerprint",
    "generate_key",
    "host_config",
    "known_host_keys",
    "read_key",
    "read_public_key",
]

_PREFERRED_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
# A bigger receive window and packets speed up results coming back (server -> client).
_WINDOW = 16 * 1024 * 1024
_PACKET = 128 * 1024
# A server that sends nothing for (_KEEPALIVE_COUNT + 1) * _KEEPALIVE_INTERVAL seconds
# while asked every _KEEPALIVE_INTERVAL is gone: the connection is closed, 20-25 s after
# it fell silent (the timer is re-armed lazily: _sshtrim). The
# worker heartbeat (_heartbeat) notices a silent node sooner; this covers the
# connections and channels that have no worker session (bootstrap, commands, the
# collections store's channels).
_KEEPALIVE_INTERVAL = 5
_KEEPALIVE_COUNT = 3


#: A private key, as the other modules name it without importing asyncssh.
SSHKey: TypeAlias = asyncssh.SSHKey


class SSHError(Exception):
    """An SSH operation failed (connect, auth, host key, channel)."""


class EncryptedKeyError(SSHError):
    """A private key file is passphrase-protected and no passphrase was given."""


@attrs.frozen(kw_only=True)
class Login:
    """How the client proves who it is to a machine.

    Attributes:
        keys: Private keys, already decrypted, each paired with its certificate where it
            has one (offered with it first, then alone); never shown (``repr`` leaves
            them out).
        agent: The SSH agent's socket, whose keys are offered before ``keys``; None: no
            agent. Pool-internal logins (a pool's own key) never have one.
        agent_only: The public keys (their wire form) of the agent's keys that may be
            offered (OpenSSH's ``IdentitiesOnly``); None: all it holds.
        tried: What this login offers, in words, for the error a refusing machine gets.
        through: The machines the connection goes through first, in order (OpenSSH's
            ``ProxyJump``); empty: it goes straight to the machine.
        proxy_command: A shell command whose stdin and stdout are the connection to
            the machine (OpenSSH's ``ProxyCommand``, tokens expanded); None: TCP.
    """

    keys: tuple[asyncssh.SSHKey | asyncssh.SSHKeyPair, ...] = attrs.field(default=(), repr=False)
    agent: str | None = None
    agent_only: frozenset[bytes] | None = None
    tried: str = ""
    through: tuple[Jump, ...] = ()
    proxy_command: str | None = None


@attrs.frozen(kw_only=True)
class Jump:
    """A machine that a connection goes through to reach its own (OpenSSH's ``ProxyJump``):
    the client logs in to it, and it opens the TCP connection onward.

    Attributes:
        host, port, username: Where, and as whom, the client logs in to it.
        login: With what (its ``through`` is empty: a chain is the target's ``through``).
        host_key: Its public key in OpenSSH form, the only one accepted.
    """

    host: str
    port: int
    username: str
    login: Login
    host_key: str


@attrs.frozen(kw_only=True)
class HostConfig:
    """What an OpenSSH client config file says about one host (None: it says nothing).

    Attributes:
        host: The address to connect to (``HostName``, else the name given).
        port: ``Port``.
        user: ``User``.
        identity_files: ``IdentityFile`` entries, ``~`` expanded, in order.
        certificate_files: ``CertificateFile`` entries, ``~`` expanded, in order.
        identity_agent: ``IdentityAgent``, as written (a socket's path, ``SSH_AUTH_SOCK``,
            ``$VARIABLE`` or ``none``); None when it names none.
        identities_only: ``IdentitiesOnly yes``.
        proxy_command: ``ProxyCommand``, its ``%h``, ``%p`` and ``%r`` expanded; None
            when it names none (or says ``none``).
        proxy_jump: ``ProxyJump``, as written (``"bastion"``, ``"me@gw:2222,inner"``);
            None when it names none (or says ``none``).
    """

    host: str
    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    certificate_files: tuple[str, ...] = ()
    identity_agent: str | None = None
    identities_only: bool = False
    proxy_jump: str | None = None
    proxy_command: str | None = None


def host_config(path: str, host: str, *, user: str | None, port: int | None) -> HostConfig:
    """Read the OpenSSH client config ``path`` for ``host`` (a name or an alias).

    ``user`` and ``port``, when given, win over the file (and ``Match user`` sees them),
    as ``ssh -l user -p port`` would. Only ``HostName``, ``Port``, ``User``,
    ``IdentityFile``, ``CertificateFile``, ``IdentityAgent``, ``IdentitiesOnly``,
    ``ProxyJump`` and ``ProxyCommand`` are taken from it.

    Raises:
        ValueError: The file does not parse, naming file and line.
    """
    config = SSHClientConfig.load(
        None,
        [path],
        False,  # reload
        False,  # canonical
        False,  # final
        getpass.getuser(),
        user if user is not None else (),
        host,
        port if port is not None else (),
    )
    said_port = config.get("Port")
    said_user = config.get("User")
    files = cast("list[str]", config.get("IdentityFile", []))
    certificates = cast("list[str]", config.get("CertificateFile", []))
    jump = config.get("ProxyJump")
    absent = object()
    agent = config.get("IdentityAgent", absent)  # present and None: "IdentityAgent none"
    return HostConfig(
        host=str(config.get("Hostname", host)),
        port=int(cast(int, said_port)) if said_port is not None else None,
        user=str(said_user) if said_user is not None else None,
        identity_files=tuple(str(Path(f).expanduser()) for f in files),
        certificate_files=tuple(str(Path(f).expanduser()) for f in certificates),
        identity_agent=None if agent is absent else "none" if agent is None else str(agent),
        identities_only=bool(config.get("IdentitiesOnly", False)),
        proxy_jump=str(jump) if jump and str(jump).lower() != "none" else None,
        proxy_command=str(command) if (command := config.get("ProxyCommand")) else None,
    )


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


def read_key(path: str, passphrase: str | None = None) -> asyncssh.SSHKey:
    """The private key in the file ``path`` (OpenSSH or PEM form), decrypted with
    ``passphrase`` if it is passphrase-protected.

    Raises:
        EncryptedKeyError: The key is passphrase-protected and ``passphrase`` is None.
        SSHError: The file cannot be read, holds no usable private key, or ``passphrase``
            does not decrypt it, with the path (never the passphrase).
    """
    try:
        return asyncssh.read_private_key(path, passphrase)
    except asyncssh.KeyEncryptionError as exc:
        raise SSHError(f"the passphrase given does not decrypt the SSH key {path} ({exc})") from exc
    except asyncssh.KeyImportError as exc:
        # asyncssh says so in words only; its own key loader matches the same prefix.
        if passphrase is None and str(exc).startswith("Passphrase"):
            raise EncryptedKeyError(f"the SSH key {path} is passphrase-protected") from exc
        raise SSHError(f"could not load the SSH private key {path}: {exc}") from exc
    except OSError as exc:
        raise SSHError(f"could not load the SSH private key {path}: {exc}") from exc


def read_public_key(path: str) -> bytes | None:
    """The public key in the file ``path`` (its wire form), or None if there is none."""
    try:
        return bytes(asyncssh.read_public_key(path).public_data)
    except (asyncssh.KeyImportError, OSError):
        return None


def certified(
    key: asyncssh.SSHKey, path: str, certificate_files: tuple[str, ...] = ()
) -> tuple[tuple[asyncssh.SSHKey | asyncssh.SSHKeyPair, ...], tuple[str, ...]]:
    """``key`` (read from ``path``) as a login offers it, and the certificates it goes
    with: each of ``certificate_files`` and ``path-cert.pub`` (as ``ssh`` looks for it)
    that certifies this key, offered with the key first, then the key alone.

    Raises:
        SSHError: A file of ``certificate_files`` that cannot be read as a certificate.
    """
    found: list[tuple[str, asyncssh.SSHCertificate]] = []
    implicit = path + "-cert.pub"
    for candidate in (*certificate_files, implicit):
        if candidate == implicit and not os.path.isfile(candidate):
            continue
        try:
            certificate = asyncssh.read_certificate(candidate)
        except (asyncssh.KeyImportError, OSError) as exc:
            if candidate == implicit:
                continue  # not one: ssh ignores it too
            raise SSHError(f"could not read the SSH certificate {candidate}: {exc}") from exc
        if certificate.key.public_data == key.public_data and candidate not in dict(found):
            found.append((candidate, certificate))
    if not found:
        return (key,), ()
    pairs = asyncssh.load_keypairs([(key, certificate) for _, certificate in found])
    with_certificates = [pair for pair in pairs if pair.has_cert]
    return (*with_certificates, key), tuple(name for name, _ in found)


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


async def fetch_host_key(
    host: str,
    port: int,
    *,
    like: list[str],
    through: tuple[Jump, ...] = (),
    proxy_command: str | None = None,
) -> str | None:
    """The host key ``host:port`` presents, before any authentication.

    With ``like`` (public keys in OpenSSH form), the server is asked for a key of one of
    their types, so it is compared with a key of the same kind. None: it has none of them.
    ``through``: the machines to reach it through (logged in to, and closed after);
    ``proxy_command``: the command the first connection goes through (ProxyCommand). The
    caller owns the deadline.

    Raises:
        SSHError: No SSH server answered there (or a machine on the way refused).
    """
    algorithms: list[str] = []
    for text in like:
        for alg in asyncssh.import_public_key(text).sig_algorithms:
            if alg.decode() not in algorithms:
                algorithms.append(alg.decode())
    first = _first_tunnel(proxy_command)
    try:
        jumps = await _open_jumps(through, host, port, first)
    except BaseException:
        await _end(first)
        raise
    try:
        key = await trio_asyncio.aio_as_trio(asyncssh.get_server_host_key)(
            host,
            port,
            server_host_key_algs=algorithms or (),
            config=[],
            tunnel=jumps[-1] if jumps else first if proxy_command else (),
        )
    except asyncssh.KeyExchangeFailed as exc:
        if algorithms:
            return None
        raise SSHError(f"no key exchange with the SSH server at {host}:{port}: {exc}") from exc
    except asyncssh.ChannelOpenError as exc:
        if not through:
            raise SSHError(f"no SSH server answered at {host}:{port}: {exc}") from exc
        raise _not_onward(exc, host, port, through) from exc
    except (asyncssh.Error, OSError) as exc:
        said = _command_said(first)
        raise SSHError(
            f"no SSH server answered at {host}:{port}{_via(through)}: {exc}{said}"
        ) from exc
    finally:
        await _close_jumps(jumps)
        await _end(first)
    if key is None:
        raise SSHError(f"the SSH server at {host}:{port} presented no host key")
    return public_openssh(key)


def _via(through: tuple[Jump, ...]) -> str:
    """`` (through a:22, b:22)``: the ``ProxyJump`` chain, for errors; "" without one."""
    if not through:
        return ""
    return " (through " + ", ".join(f"{hop.host}:{hop.port}" for hop in through) + ")"


def _not_onward(
    exc: asyncssh.ChannelOpenError, host: str, port: int, through: tuple[Jump, ...]
) -> SSHError:
    """The error of a jump host that would not open the connection onward."""
    last = through[-1]
    return SSHError(
        f"the jump host {last.host}:{last.port} would not open a connection to {host}:{port}"
        f"{_via(through)}: {exc.reason or 'refused'}. Its sshd must allow forwarding "
        "(AllowTcpForwarding), and reach that address"
    )


async def _open_jumps(
    through: tuple[Jump, ...], host: str, port: int, first: Any
) -> list[asyncssh.SSHClientConnection]:
    """Log in to each machine of ``through`` in turn, the first over ``first`` (a TCP
    connection, or a ProxyCommand), each other through the one before: the last one is
    the tunnel to ``host:port``. All are closed again if one fails."""
    opened: list[asyncssh.SSHClientConnection] = []
    try:
        for number, hop in enumerate(through, 1):
            try:
                opened.append(
                    await _log_in(
                        hop.host,
                        hop.port,
                        username=hop.username,
                        login=hop.login,
                        host_key=hop.host_key,
                        tunnel=opened[-1] if opened else first,
                    )
                )
            except SSHError as exc:
                raise SSHError(
                    f"{exc} (jump host {number} of {len(through)} on the way to {host}:{port}, "
                    f"from ProxyJump){_command_said(first) if number == 1 else ''}"
                ) from exc
    except BaseException:
        await _close_jumps(opened)
        raise
    return opened


async def _close_jumps(jumps: list[asyncssh.SSHClientConnection]) -> None:
    """Close the machines a connection went through, the nearest to it first."""
    for conn in reversed(jumps):
        with trio.CancelScope(shield=True):
            with trio.move_on_after(2):
                conn.close()
                await trio_asyncio.aio_as_trio(conn.wait_closed)()
            conn.abort()


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

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        host: str,
        port: int,
        jumps: list[asyncssh.SSHClientConnection] | None = None,
        command: _CommandTunnel | None = None,
    ) -> None:
        self._conn = conn
        self._jumps = jumps or []  # what it goes through (ProxyJump): closed with it
        self._command = command  # the ProxyCommand it goes through: ended with it
        trim(conn)
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
        except (asyncssh.Error, OSError) as exc:
            # The channel closed under the command: its connection is going (a node leaving).
            raise SSHError(f"a command on {self.host}:{self.port} lost its channel: {exc}") from exc
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
        # Through a jump host, the socket is the first jump's: breaking it cuts them all.
        sock = (self._jumps[0] if self._jumps else self._conn).get_extra_info("socket")
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
        except (asyncssh.Error, asyncssh.ChannelListenError, OSError) as exc:
            # ChannelListenError is not an asyncssh.Error: the server refused, or this
            # connection closed before it could ask.
            raise SSHError(f"could not listen on {path} on {self.host}:{self.port}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the connection (bounded; safe to call twice). One the peer does not let
        close in time (it stopped reading) is dropped, its socket closed all the same."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(2):
                self._conn.close()
                await trio_asyncio.aio_as_trio(self._conn.wait_closed)()
            self._conn.abort()  # nothing left to do once closed; else, close the socket now
        await _close_jumps(self._jumps)
        await _end(self._command)


async def connect(
    host: str,
    port: int,
    *,
    username: str,
    login: Login,
    host_key: str,
) -> SSHConnection:
    """Connect and authenticate with ``login``, verifying the node's ``host_key``.

    ``host_key`` is the node's public key in OpenSSH form; any other key is refused.
    asyncssh reads no config file and no agent of its own here (``config=[]``,
    ``agent_path=None``): the agent's keys are fetched only for a login that names an
    agent, and offered with the login's own keys. A login ``through`` jump hosts logs in
    to each first; they close with the connection. The caller owns the deadline.
    """
    # The first connection goes over TCP, or through the first machine's ProxyCommand.
    first = _first_tunnel(
        login.through[0].login.proxy_command if login.through else login.proxy_command
    )
    try:
        jumps = await _open_jumps(login.through, host, port, first)
    except BaseException:
        await _end(first)
        raise
    try:
        conn = await _log_in(
            host,
            port,
            username=username,
            login=login,
            host_key=host_key,
            tunnel=jumps[-1] if jumps else first,
        )
    except asyncssh.ChannelOpenError as exc:
        await _close_jumps(jumps)
        await _end(first)
        if not jumps:
            raise SSHError(f"SSH connect to {host}:{port} failed: {exc}") from exc
        raise _not_onward(exc, host, port, login.through) from exc
    except SSHError as exc:
        await _close_jumps(jumps)
        await _end(first)
        if jumps:
            raise SSHError(f"{exc}{_via(login.through)}") from exc
        said = _command_said(first)
        if said:
            raise SSHError(f"{exc}{said}") from exc
        raise
    except BaseException:
        await _close_jumps(jumps)
        await _end(first)
        raise
    command = first if isinstance(first, _CommandTunnel) else None
    return SSHConnection(conn, host, port, jumps, command)


async def _log_in(
    host: str,
    port: int,
    *,
    username: str,
    login: Login,
    host_key: str,
    tunnel: Any,
) -> asyncssh.SSHClientConnection:
    """One SSH connection, authenticated, over ``tunnel`` (a TCP connection of trio's,
    or a jump host's connection)."""
    trusted = asyncssh.import_public_key(host_key)
    agent: asyncssh.SSHAgentClient | None = None
    keys: list[asyncssh.SSHKey | asyncssh.SSHKeyPair] = list(login.keys)
    try:
        if login.agent is not None:
            agent, held = await _agent_keys(login.agent)
            if login.agent_only is not None:  # IdentitiesOnly: the identity files' keys only
                held = [k for k in held if k.key_public_data in login.agent_only]
            keys[:0] = held
        if not keys:
            said = "holds no key" if agent is not None else "did not answer"
            raise SSHError(
                f"nothing to log in to {host}:{port} with: the SSH agent at {login.agent} "
                f"{said} and no key file could be used (offered: {login.tried}). ssh-add "
                "your key, or pass SSH(key=...)"
            )
        conn: asyncssh.SSHClientConnection = await trio_asyncio.aio_as_trio(asyncssh.connect)(
            host,
            port,
            username=username,
            client_keys=keys,
            known_hosts=([trusted], [], []),
            encryption_algs=_ciphers(),
            agent_path=None,
            config=[],
            keepalive_interval=_KEEPALIVE_INTERVAL,
            keepalive_count_max=_KEEPALIVE_COUNT,
            tunnel=tunnel,
        )
    except asyncssh.ChannelOpenError:
        raise  # a jump host would not open the way here: connect() says so
    except asyncssh.PermissionDenied as exc:
        tried = f" (offered: {login.tried})" if login.tried else ""
        raise SSHError(
            f"SSH connect to {host}:{port} failed: {username} was refused{tried}: {exc}"
        ) from exc
    except (asyncssh.Error, OSError) as exc:
        hint = ""
        if "too many authentication failures" in str(exc).lower() and agent is not None:
            hint = (
                f" (the SSH agent offered its {len(keys) - len(login.keys)} key(s) first, and "
                "sshd stops at MaxAuthTries: add IdentitiesOnly yes for this host to "
                "~/.ssh/config, or pass SSH(key=...))"
            )
        raise SSHError(f"SSH connect to {host}:{port} failed: {exc}{hint}") from exc
    finally:
        if agent is not None:  # its keys sign during authentication only
            agent.close()
    return conn


async def _agent_keys(
    path: str,
) -> tuple[asyncssh.SSHAgentClient | None, list[asyncssh.SSHKeyPair]]:
    """The keys the SSH agent at ``path`` holds, and the open agent client that signs
    with them; an agent that does not answer holds none (the other keys may still do)."""
    try:
        agent = await trio_asyncio.aio_as_trio(asyncssh.connect_agent)(path)
    except (asyncssh.Error, OSError):
        return None, []
    try:
        held = await trio_asyncio.aio_as_trio(agent.get_keys)()
    except (asyncssh.Error, OSError, ValueError):
        agent.close()
        return None, []
    return agent, list(held)


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


# --- the TCP socket under asyncssh's client connections ----------------------------------
#
# trio-asyncio hands each read to asyncio through its own loop: the socket's readiness
# becomes a handle queued on a channel and run by a task, about 100 µs per round trip on
# these machines. Instead a trio task waits for the socket and gives what it reads straight
# to asyncssh's protocol; a write goes to the socket at once, and only what the kernel does
# not take is queued for a writer task. asyncssh keeps its timers and futures on the
# trio-asyncio loop: the protocol runs on the trio thread either way. asyncssh is handed
# this through its ``tunnel`` option: an object whose ``create_connection(factory, host,
# port)`` makes the connection.

_RECV = 256 * 1024
# Queued bytes at which asyncssh is asked to pause writing, and resumed again.
_HIGH = 1024 * 1024
_LOW = 256 * 1024
_IOV = 64  # buffers per sendmsg


class _SocketTransport(asyncio.Transport):
    def __init__(self, sock: socket.socket, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._sock = sock
        self._protocol = protocol
        self._loop = trio_asyncio.current_loop.get()
        self._queued: deque[memoryview] = deque()
        self._size = 0
        self._queue_filled = trio.Event()
        self._paused = False
        self._closing = False
        self._closed = False
        self._extra = {
            "socket": sock,
            "sockname": sock.getsockname(),
            "peername": sock.getpeername(),
        }

    def start(self) -> None:
        self._protocol.connection_made(self)
        context = contextvars.copy_context()  # keeps trio-asyncio's loop for asyncssh
        trio.lowlevel.spawn_system_task(self._read, name="ssh-read", context=context)
        trio.lowlevel.spawn_system_task(self._flush, name="ssh-write", context=context)

    # --- asyncio.Transport ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_write_buffer_size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        view = memoryview(data)
        if not self._queued:
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._finish(exc)
                return
            if sent == len(view):
                return
            view = view[sent:]
            self._queue_filled.set()
        self._queued.append(view if isinstance(data, bytes) else memoryview(bytes(view)))
        self._size += len(view)
        if self._size > _HIGH and not self._paused:
            self._paused = True
            self._protocol.pause_writing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._queued:
            self._finish(None)

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    # --- trio side ----------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._sock)
                try:
                    data = self._sock.recv(_RECV)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    self._protocol.eof_received()
                    self._finish(None)
                    return
                self._protocol.data_received(data)
        except trio.ClosedResourceError:
            self._finish(None)
        except trio.Cancelled:
            self._finish(None)
            raise
        except Exception as exc:  # a system task must not raise: the connection ends
            self._finish(exc)

    async def _flush(self) -> None:
        try:
            while True:
                await self._queue_filled.wait()
                if self._closed:
                    return
                await trio.lowlevel.wait_writable(self._sock)
                try:
                    sent = self._sock.sendmsg(itertools.islice(self._queued, _IOV))
                except (BlockingIOError, InterruptedError):
                    continue
                self._size -= sent
                while sent:
                    head = self._queued[0]
                    if sent >= len(head):
                        self._queued.popleft()
                        sent -= len(head)
                    else:
                        self._queued[0] = head[sent:]
                        sent = 0
                if self._paused and self._size <= _LOW:
                    self._paused = False
                    self._protocol.resume_writing()
                if not self._queued:
                    self._queue_filled = trio.Event()
                    if self._closing:
                        self._finish(None)
                        return
        except trio.ClosedResourceError:
            self._finish(None)
        except trio.Cancelled:
            self._finish(None)
            raise
        except OSError as exc:
            self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        """Close the socket once; the protocol hears of it on the loop, as from asyncio."""
        if self._closed:
            return
        self._closed = self._closing = True
        self._queued.clear()
        self._size = 0
        self._queue_filled.set()
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        if not self._loop.is_closed():
            self._loop.call_soon(self._protocol.connection_lost, exc)


class _TrioTCP:
    """asyncssh's ``tunnel``: a direct TCP connection served by trio (see the module)."""

    async def create_connection(
        self, factory: Any, host: str, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        sock = await trio_asyncio.trio_as_aio(_open)(host, port)
        try:
            protocol = factory()
            # Raises (ENOTCONN from getpeername) when the peer reset the connection at
            # once, as a container's published port does before its sshd listens.
            transport = _SocketTransport(sock, protocol)
        except BaseException:
            sock.close()  # not the transport's yet: a failed attempt must not leak its fd
            raise
        transport.start()
        return transport, protocol


class _CommandTunnel:
    """asyncssh's ``tunnel`` for a ``ProxyCommand``: the command runs in a shell (in a
    session of its own, ``exec``'d, as ``ssh`` runs it), its stdin and stdout one end of a
    socket pair whose other end the SSH connection reads and writes like a TCP socket.
    Its stderr is kept, for the error of a connection that fails."""

    def __init__(self, command: str) -> None:
        self.command = command
        self._process: trio.Process | None = None
        self._stderr: IO[bytes] | None = None

    async def create_connection(
        self, factory: Any, host: str, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        ours = await trio_asyncio.trio_as_aio(self._start)()
        try:
            protocol = factory()
            transport = _SocketTransport(ours, protocol)
        except BaseException:
            ours.close()
            raise
        transport.start()
        return transport, protocol

    async def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        try:
            # Closed by end(), however the connection ends.
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
            self._process = await trio.lowlevel.open_process(
                ["/bin/sh", "-c", f"exec {self.command}"],
                stdin=theirs,
                stdout=theirs,
                stderr=self._stderr,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the command's now
        ours.setblocking(False)
        return ours

    def said(self) -> str:
        """The last of what the command wrote to stderr."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-500:]

    async def end(self) -> None:
        """Stop the command (it ends by itself once its connection closes: wait a little
        for that first), and forget its stderr. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(2):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _first_tunnel(proxy_command: str | None) -> _TrioTCP | _CommandTunnel:
    return _CommandTunnel(proxy_command) if proxy_command else _TrioTCP()


async def _end(tunnel: Any) -> None:
    if isinstance(tunnel, _CommandTunnel):
        await tunnel.end()


def _command_said(tunnel: Any) -> str:
    """`` (ProxyCommand 'cmd' said: ...)``, for the error of a connection through it."""
    if not isinstance(tunnel, _CommandTunnel):
        return ""
    said = tunnel.said()
    return f" (through ProxyCommand {tunnel.command!r}{': ' + said if said else ''})"


async def _open(host: str, port: int) -> socket.socket:
    stream = await trio.open_tcp_stream(host, port)
    # Take the plain socket out of trio's stream: from here on it is read and written
    # without trio's stream API (it is closed by _SocketTransport, never by the stream).
    raw = socket.socket(fileno=stream.socket.detach())
    raw.setblocking(False)
    return raw
