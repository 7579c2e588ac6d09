"""The notification fast path shared by the server's CoAP transports (UDP, slipmux): what a notification
looks like on the wire, and what the server offers to take one straight from its bytes.

At 10,000 notifications/s, aiocoap's ``Message.decode`` (option objects, enums) is most of the cost. A
message that looks like a notification -- CON or NON, a 2.xx code, the server's 6-byte token -- is
matched against the server's observations (:class:`NotificationSink`) by its token; if it belongs to
one, from that observation's peer, and carries only the options a notification has (Observe,
Content-Format, ETag, Max-Age, Size2: :func:`parse_notification`), the transport acknowledges it (CON,
:func:`empty_ack`, once the sink's barrier says the values are kept) and hands it over without it ever
becoming a ``Message``. Anything else (block-wise notifications, other options, unknown tokens) takes
the normal path through aiocoap.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

from gateway.lwm2m.server.durable import DurableAcks

#: The server's tokens are this long: a message with another token length is no notification of its own.
TOKEN_LENGTH: Final = 6
CON_TKL6: Final = 0x46  # version 1, CON, token length 6
NON_TKL6: Final = 0x56  # version 1, NON, token length 6
#: Options a notification may carry on the fast path: ETag 4, Observe 6, Content-Format 12,
#: Max-Age 14, Size2 28. Anything else (Block2 23 above all) goes the normal way.
FAST_OPTIONS: Final = frozenset({4, 6, 12, 14, 28})


class NotificationSink(Protocol):
    """What the fast path needs from the server (its token table)."""

    def observation_for(self, token: bytes) -> Any:
        """The observation with this token (an object with ``.remote``), or None."""

    acks: DurableAcks

    def notification(
        self, observation: Any, code: int, seq: int | None, content_format: int | None, payload: bytes
    ) -> asyncio.Future[None] | None:
        """A notification for ``observation``; returns the barrier its ACK waits for (or None)."""


def empty_ack(data: bytes) -> bytes:
    """The empty ACK of the CON message ``data`` (its message id echoed).

    >>> empty_ack(bytes.fromhex("4645 04d2")).hex()
    '600004d2'
    """
    return bytes((0x60, 0, data[2], data[3]))


def parse_notification(data: bytes) -> tuple[int | None, int | None, bytes] | None:
    """(Observe, Content-Format, payload) of a notification with a 6-byte token, from its bytes; None
    if it carries any other option (or is malformed): then it is left to aiocoap.

    >>> parse_notification(bytes.fromhex("5645 04d2 616263646566 61 0c 60 ff 32322e35"))
    (12, 0, b'22.5')
    """
    n = len(data)
    pos = 4 + TOKEN_LENGTH
    number = 0
    observe: int | None = None
    content_format: int | None = None
    while pos < n:
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            return (observe, content_format, data[pos:]) if pos < n else None
        delta = byte >> 4
        length = byte & 0x0F
        if delta == 13:
            if pos >= n:
                return None
            delta = data[pos] + 13
            pos += 1
        elif delta == 14:
            if pos + 1 >= n:
                return None
            delta = (data[pos] << 8 | data[pos + 1]) + 269
            pos += 2
        elif delta == 15:
            return None
        if length == 13:
            if pos >= n:
                return None
            length = data[pos] + 13
            pos += 1
        elif length >= 14:
            return None  # no option of a notification is that long
        number += delta
        end = pos + length
        if end > n or number not in FAST_OPTIONS:
            return None
        if number == 6:
            observe = int.from_bytes(data[pos:end], "big")
        elif number == 12:
            content_format = int.from_bytes(data[pos:end], "big")
        pos = end
    return observe, content_format, b""


__all__ = [
    "CON_TKL6",
    "FAST_OPTIONS",
    "NON_TKL6",
    "TOKEN_LENGTH",
    "NotificationSink",
    "empty_ack",
    "parse_notification",
]
