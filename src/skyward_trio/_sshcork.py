"""Send each SSH packet asyncssh makes together with the SSH_MSG_IGNORE it puts before it.

asyncssh sends an SSH_MSG_IGNORE before every packet of a connection once it is
encrypted, each with its own ``send()``; on loopback every send also wakes the peer.
Joining the pair halves the system calls and wake-ups per message (about 0.1-0.2 ms per
round trip here). Used by the client (``_transport``) and by Local nodes' SSH servers
(``_localnode``), which share no event loop: this module imports nothing but typing.

It hooks two private methods of one connection object, ``send_packet`` and ``_send``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cork_packets"]


class _PacketCork:
    def __init__(self, conn: Any) -> None:
        self._send = conn._send
        self._send_packet = conn.send_packet
        self._buffer: list[bytes] | None = None
        conn._send = self.send
        conn.send_packet = self.send_packet

    def send(self, data: bytes) -> None:
        if self._buffer is None:
            self._send(data)
        else:
            self._buffer.append(data)

    def send_packet(self, *args: Any, **kwargs: Any) -> None:
        if self._buffer is not None:  # the nested IGNORE packet
            self._send_packet(*args, **kwargs)
            return
        self._buffer = []
        try:
            self._send_packet(*args, **kwargs)
        finally:
            buffer, self._buffer = self._buffer, None
            if buffer:
                self._send(b"".join(buffer))


def cork_packets(conn: Any) -> None:
    """From now on, send each of ``conn``'s packets with its IGNORE in one ``send()``."""
    _PacketCork(conn)
