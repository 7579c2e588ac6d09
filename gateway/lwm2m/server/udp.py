"""CoAP over plain UDP for the LwM2M server: an aiocoap ``MessageInterface`` built for many devices.

Why not aiocoap's ``udp6``: it makes two ``recvmsg`` calls per datagram (the error queue first), one
datagram per loop wake-up, and keeps the kernel's default receive buffer (208 KB here), which
overflows during a registration storm or a garbage collection pause. This one

- binds one socket (dual-stack when bound to ``::``, IPv4 when bound to an IPv4 address) with a
  large ``SO_RCVBUF`` (``SO_RCVBUFFORCE`` when the process may, else as much as the kernel allows);
- drains up to :data:`READ_BATCH` datagrams per wake-up into one preallocated buffer;
- gives every datagram a small :class:`UdpRemote` (hash computed once) that compares equal for the
  same peer address, so tokens and message ids of one device match across messages.

Role reversal needs nothing more: a stored ``UdpRemote`` is recognised for as long as the transport
lives. The server never opens sessions, so :meth:`UdpTransport.determine_remote` declines URIs.

**Notification fast path.** At 10,000 notifications/s, aiocoap's ``Message.decode`` (option objects,
enums) is most of the cost. A datagram that looks like a notification -- CON or NON, a 2.xx code, the
server's 6-byte token -- is matched against the server's observations (:class:`NotificationSink`)
straight from the bytes; if it belongs to one, from the same address, and carries only the options a
notification has (Observe, Content-Format, ETag, Max-Age, Size2), it is acknowledged (CON) and handed
over without ever becoming a ``Message``. Anything else (block-wise notifications, other options,
unknown tokens) takes the normal path through aiocoap. The wire side of it is shared with the serial
transport: :mod:`gateway.lwm2m.server.fastpath`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import sys
from typing import Any, Final

from aiocoap import Message, error, interfaces
from aiocoap.message import Direction

from gateway.lwm2m.server.fastpath import (
    CON_TKL6,
    NON_TKL6,
    TOKEN_LENGTH,
    NotificationSink,
    empty_ack,
    parse_notification,
)

READ_BATCH: Final = 256
MAX_DATAGRAM: Final = 65535

Sockaddr = tuple[Any, ...]

def hostinfo(sockaddr: Sockaddr) -> str:
    """``host:port`` for people, IPv4-mapped IPv6 addresses shown as IPv4."""
    host, port = str(sockaddr[0]), sockaddr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UdpRemote(interfaces.EndpointAddress):  # type: ignore[misc]  # aiocoap is untyped
    """A device's UDP address as aiocoap's ``remote``: equal for the same (host, port)."""

    scheme = "coap"
    is_multicast = False
    is_multicast_locally = False
    maximum_payload_size = 1024

    __slots__ = ("_hash", "_key", "maximum_block_size_exp", "sockaddr", "transport")

    def is_address(self, sockaddr: Sockaddr, transport: UdpTransport) -> bool:
        """Whether this remote is ``sockaddr`` on ``transport`` (without building a remote for it)."""
        return transport is self.transport and self._key[1] == sockaddr[1] and self._key[0] == sockaddr[0]

    def __init__(self, sockaddr: Sockaddr, transport: UdpTransport) -> None:
        self.sockaddr = sockaddr
        self.transport = transport
        self._key = (sockaddr[0], sockaddr[1])
        self._hash = hash(self._key)
        self.maximum_block_size_exp = 6

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UdpRemote) and self._key == other._key and self.transport is other.transport

    def __repr__(self) -> str:
        return f"<UdpRemote {self.hostinfo}>"

    @property
    def hostinfo(self) -> str:
        return hostinfo(self.sockaddr)

    @property
    def hostinfo_local(self) -> str:
        return self.transport.hostinfo_local

    @property
    def uri_base(self) -> str:
        return "coap://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        return "coap://" + self.transport.hostinfo_local

    @property
    def blockwise_key(self) -> tuple[Any, ...]:
        return self._key

    def as_response_address(self) -> UdpRemote:
        return self

    @property
    def authenticated_claims(self) -> tuple[object, ...]:
        return ()


class UdpTransport(interfaces.MessageInterface):  # type: ignore[misc]  # aiocoap is untyped
    """One UDP socket serving ``coap://`` for a message manager (see the module docstring)."""

    def __init__(self, mman: Any, log: logging.Logger, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._mman: Any = mman
        self.log = log
        self.loop = loop
        self._sock: socket.socket | None = sock
        self._buffer = bytearray(MAX_DATAGRAM)
        self.local_address: Sockaddr = sock.getsockname()
        self.hostinfo_local = hostinfo(self.local_address)
        #: Datagrams that could not be sent because the socket buffer was full (CoAP retransmits).
        self.send_dropped = 0
        self.received = 0
        self.unparsable = 0
        self.fast_notifications = 0
        self.wakeups = 0
        #: Set by the server: where notifications go on the fast path (None: no fast path).
        self.notification_sink: NotificationSink | None = None

    @classmethod
    async def create(
        cls,
        mman: Any,
        log: logging.Logger,
        loop: asyncio.AbstractEventLoop,
        *,
        bind: tuple[str, int],
        receive_buffer: int = 16 * 1024 * 1024,
    ) -> UdpTransport:
        """Bind ``bind`` (port 0: any free port) and start reading."""
        host, port = bind
        infos = await loop.getaddrinfo(host or "::", port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            set_receive_buffer(sock, receive_buffer)
            sock.setblocking(False)
            sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
        self = cls(mman, log, loop, sock)
        loop.add_reader(sock.fileno(), self._read_ready)
        log.info("CoAP (UDP) listening on %s", self.hostinfo_local)
        return self

    @property
    def port(self) -> int:
        return int(self.local_address[1])

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self.wakeups += 1
        buffer = self._buffer
        view = memoryview(buffer)
        mman = self._mman
        for _ in range(READ_BATCH):
            try:
                n, addr = sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors of earlier sends (unconnected socket): nothing to attribute them to
                self.log.debug("UDP receive error: %s", exc)
                continue
            self.received += 1
            data = bytes(view[:n])
            if n > 9 and data[0] in (NON_TKL6, CON_TKL6) and data[1] >> 5 == 2 and self._fast(data, addr):
                continue
            remote = UdpRemote(addr, self)
            try:
                message = Message.decode(data, remote)
            except error.UnparsableMessage:
                self.unparsable += 1
                self.log.warning("Ignoring an unparsable CoAP message from %s", remote.hostinfo)
                continue
            message.direction = Direction.INCOMING
            if mman is None:
                return
            try:
                mman.dispatch_message(message)
            except Exception:
                self.log.exception("Processing a message from %s failed", remote.hostinfo)

    def _fast(self, data: bytes, addr: Sockaddr) -> bool:
        sink = self.notification_sink
        if sink is None or len(data) < 4 + TOKEN_LENGTH:
            return False
        observation = sink.observation_for(data[4 : 4 + TOKEN_LENGTH])
        if observation is None or not observation.remote.is_address(addr, self):
            return False
        parsed = parse_notification(data)
        if parsed is None:
            return False
        self.fast_notifications += 1
        barrier = sink.notification(observation, data[1], parsed[0], parsed[1], parsed[2])
        if data[0] == CON_TKL6:  # an empty ACK with the notification's message id, once it is kept
            sink.acks.after(barrier, functools.partial(self._send_ack, empty_ack(data), addr))
        return True

    def _send_ack(self, ack: bytes, addr: Sockaddr, kept: bool) -> None:
        sock = self._sock
        if not kept or sock is None:
            return
        try:
            sock.sendto(ack, addr)
        except OSError:
            self.send_dropped += 1

    # -- MessageInterface ---------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(message.encode(), message.remote.sockaddr)
        except (BlockingIOError, InterruptedError):
            self.send_dropped += 1
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                self.log.debug("Sending to %s failed: %s", message.remote.hostinfo, exc)
            else:
                self.log.warning("Sending to %s failed: %s", message.remote.hostinfo, exc)

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, UdpRemote) and remote.transport is self and self._sock is not None

    async def determine_remote(self, message: Message) -> None:
        return None

    async def shutdown(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._mman = None


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Give ``sock`` a receive buffer of ``size`` bytes if the process may (``SO_RCVBUFFORCE``,
    CAP_NET_ADMIN), else as large as ``net.core.rmem_max`` allows. Returns what the kernel granted."""
    # Python's socket module does not name SO_RCVBUFFORCE; on Linux it is 33 (asm-generic/socket.h)
    force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
