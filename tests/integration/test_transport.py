"""The SSH transport's trims, on real asyncssh connections over loopback.

- ``_sshtrim``: no SSH_MSG_IGNORE under an AEAD cipher, one ``send()`` per packet under
  any other, and a lazy keepalive that still notices a silent peer.
- ``_transport``'s socket (read and written by trio, not trio-asyncio): a large echo
  through flow control, the peer going away, and a connection that fails before SSH
  starts closing its socket.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncssh
import pytest
import trio
import trio_asyncio

from skyward_trio import _transport
from skyward_trio._sshtrim import trim

MSG_IGNORE = 2
MSG_CHANNEL_DATA = 94


async def _echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
    while data := await process.stdin.read(65536):
        process.stdout.write(data)
    process.exit(0)


class _Keys:
    def __init__(self) -> None:
        self.host = asyncssh.generate_private_key("ssh-ed25519")
        self.client = asyncssh.generate_private_key("ssh-ed25519")


async def _listen(
    keys: _Keys, accepted: list[asyncssh.SSHServerConnection] | None = None
) -> asyncssh.SSHAcceptor:
    return await asyncssh.listen(
        "127.0.0.1",
        0,
        acceptor=None if accepted is None else accepted.append,
        server_host_keys=[keys.host],
        authorized_client_keys=asyncssh.import_authorized_keys(
            keys.client.export_public_key().decode()
        ),
        process_factory=_echo,
        encoding=None,
    )


async def _connect(keys: _Keys, port: int, **options: Any) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        port,
        username="test",
        client_keys=[keys.client],
        known_hosts=([keys.host.convert_to_public()], [], []),
        agent_path=None,
        config=[],
        **options,
    )


def _record(conn: Any) -> tuple[list[int], list[bytes]]:
    """Trim ``conn``, recording the packet types asyncssh really sends and each send()."""
    types: list[int] = []
    sends: list[bytes] = []
    send_packet, send = conn.send_packet, conn._send

    def recording_send_packet(pkttype: int, *args: Any, **kwargs: Any) -> None:
        types.append(pkttype)
        send_packet(pkttype, *args, **kwargs)

    def recording_send(data: bytes) -> None:
        sends.append(data)
        send(data)

    conn.send_packet, conn._send = recording_send_packet, recording_send
    trim(conn)
    return types, sends


async def _echo_through(conn: asyncssh.SSHClientConnection, payloads: list[bytes]) -> bytes:
    process = await conn.create_process("echo", encoding=None)
    for payload in payloads:
        process.stdin.write(payload)
        await process.stdout.readexactly(len(payload))
    process.stdin.write_eof()
    await process.wait()
    return b"ok"


async def _trimmed_echo(encryption: str) -> tuple[list[int], list[bytes], str]:
    """Echo 20 small writes over a trimmed connection using ``encryption``; return the
    packet types asyncssh sent, each send(), and the cipher it negotiated."""
    keys = _Keys()
    server = await _listen(keys)
    port = server.sockets[0].getsockname()[1]
    async with await _connect(keys, port, encryption_algs=[encryption]) as conn:
        types, sends = _record(conn)
        await _echo_through(conn, [b"x" * 100] * 20)
        cipher = conn.get_extra_info("send_cipher")
    server.close()
    return types, sends, cipher


async def test_no_ignore_packets_under_an_aead_cipher() -> None:
    async with trio_asyncio.open_loop():
        types, _, cipher = await trio_asyncio.aio_as_trio(_trimmed_echo)("aes128-gcm@openssh.com")
    assert cipher == "aes128-gcm@openssh.com"
    assert types.count(MSG_CHANNEL_DATA) >= 20
    assert MSG_IGNORE not in types


async def test_ignore_packets_kept_and_sent_with_their_packet_under_other_ciphers() -> None:
    async with trio_asyncio.open_loop():
        types, sends, cipher = await trio_asyncio.aio_as_trio(_trimmed_echo)("aes128-ctr")
    assert cipher == "aes128-ctr"
    data = types.count(MSG_CHANNEL_DATA)
    assert data >= 20
    # Every packet after the handshake has its IGNORE, and each pair went in one send().
    assert types.count(MSG_IGNORE) >= data
    assert len(sends) <= len(types) - types.count(MSG_IGNORE)


@contextlib.asynccontextmanager
async def _proxy(upstream: int) -> AsyncIterator[tuple[int, Callable[[], None]]]:
    """A loopback TCP relay that can go silent (a partition: nothing moves, nothing closes)."""
    silent = trio.Event()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                if silent.is_set():
                    await trio.sleep_forever()
                await sink.send_all(data)

    async def relay(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", upstream)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, relay, listeners)
        yield listeners[0].socket.getsockname()[1], silent.set
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("stall", [False, True], ids=["answering", "silent"])
async def test_lazy_keepalive_notices_a_silent_peer_only(stall: bool) -> None:
    keys = _Keys()
    async with trio_asyncio.open_loop():
        server = await trio_asyncio.aio_as_trio(_listen)(keys)
        port = server.sockets[0].getsockname()[1]
        async with _proxy(port) as (proxied, go_silent):
            # Two seconds of silence before giving up: a loaded machine answers sooner.
            conn = await trio_asyncio.aio_as_trio(_connect)(
                keys, proxied, keepalive_interval=0.5, keepalive_count_max=4
            )
            trim(conn)
            await trio_asyncio.aio_as_trio(_echo_through)(conn, [b"x"])
            if stall:
                go_silent()
            with trio.move_on_after(6 if not stall else 30) as waited:  # hang guard
                await trio_asyncio.aio_as_trio(conn.wait_closed)()
            closed = not waited.cancelled_caught
            conn.abort()
        server.close()
    # Idle but answering for 12 intervals: kept. Silent: closed by the keepalive.
    assert closed is stall


async def test_socket_transport_echoes_a_large_payload_and_sees_the_peer_go() -> None:
    keys = _Keys()
    async with trio_asyncio.open_loop():
        accepted: list[asyncssh.SSHServerConnection] = []
        server = await trio_asyncio.aio_as_trio(_listen)(keys, accepted)
        port = server.sockets[0].getsockname()[1]
        ssh = await _transport.connect(
            "127.0.0.1",
            port,
            username="test",
            login=_transport.Login(keys=(keys.client,)),
            host_key=_transport.public_openssh(keys.host),
        )
        conn = ssh._conn
        blob = os.urandom(8 * 1024 * 1024)  # well past the socket's high-water mark
        proc = await trio_asyncio.aio_as_trio(conn.create_process)("echo", encoding=None)
        proc.stdin.write(blob)
        echoed = await trio_asyncio.aio_as_trio(proc.stdout.readexactly)(len(blob))
        assert echoed == blob
        accepted[0].abort()  # the server's end goes away without a goodbye
        with trio.fail_after(30):  # hang guard
            await trio_asyncio.aio_as_trio(conn.wait_closed)()
        server.close()


async def test_a_connection_that_fails_before_ssh_starts_closes_its_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A peer that resets at once makes building the transport fail (ENOTCONN): the socket
    # it opened must be closed then, not left to the garbage collector (an fd per attempt).
    def refuse() -> Any:
        raise ConnectionResetError("the peer reset the connection")

    opened: list[Any] = []
    real_open = _transport._open

    async def spy(host: str, port: int) -> Any:
        opened.append(await real_open(host, port))
        return opened[-1]

    monkeypatch.setattr(_transport, "_open", spy)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio_asyncio.open_loop():
        with pytest.raises(ConnectionResetError):
            await trio_asyncio.aio_as_trio(_transport._TrioTCP().create_connection)(
                refuse, "127.0.0.1", port
            )
    [sock] = opened
    assert sock.fileno() == -1  # closed
    for listener in listeners:
        await listener.aclose()


@pytest.mark.parametrize("how", ["refused", "closed"])
async def test_a_unix_listener_not_made_is_an_ssh_error(how: str) -> None:
    # asyncssh's ChannelListenError is not an asyncssh.Error: the transport names it as
    # its own, so the pool treats it as any other failure of the link.
    keys = _Keys()
    async with trio_asyncio.open_loop():
        server = await trio_asyncio.aio_as_trio(_listen)(keys)  # no unix_server_requested
        port = server.sockets[0].getsockname()[1]
        ssh = await _transport.connect(
            "127.0.0.1",
            port,
            username="test",
            login=_transport.Login(keys=(keys.client,)),
            host_key=_transport.public_openssh(keys.host),
        )
        if how == "closed":
            await ssh.aclose()

        async def handler(stream: Any) -> None:
            raise AssertionError("nothing connects")

        async with trio.open_nursery() as nursery:
            with pytest.raises(_transport.SSHError, match="could not listen on /tmp/x"):
                await ssh.serve_unix("/tmp/x.sock", handler, nursery)
        await ssh.aclose()
        server.close()
