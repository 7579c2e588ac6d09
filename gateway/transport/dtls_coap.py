"""CoAP over DTLS for aiocoap: a ``MessageInterface`` serving ``coaps://`` with :class:`DtlsServer`.

One UDP socket (dual-stack when bound to ``::``), one :class:`~gateway.transport.dtls.DtlsServer`,
one :class:`DtlsRemote` per DTLS session. A remote compares equal only to itself: a new session
with the same peer address is a new remote (RFC 7252 9.1.2), so aiocoap never mixes message IDs,
tokens or block-wise state across sessions. The authenticated principal travels as the remote's
``authenticated_claims``.

Role reversal (the LwM2M server sending requests to a device) works through a stored remote:
``recognize_remote`` is true while its session lives. The server never opens sessions itself, so
``determine_remote`` declines every URI.

Attach to a context with :func:`attach_dtls_transport`::

    ctx = aiocoap.Context(loop=loop, serversite=site, loggername="gw")
    transport = await attach_dtls_transport(ctx, DtlsServer(credentials), bind=("::", 5684))
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from aiocoap import Message, error, interfaces
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.constants import COAPS_PORT
from aiocoap.tokenmanager import TokenManager

from gateway.transport.dtls import Addr, DtlsServer, DtlsSession, Principal

log = logging.getLogger(__name__)

READ_BATCH = 64
"""Datagrams read per socket wakeup at most (fairness with the rest of the loop)."""

RECEIVE_SIZE = 65535

COAP_OVERHEAD = 128
"""Bytes of a datagram reserved for the CoAP header, token and options when sizing payloads."""

_MIN_BLOCK_EXP = 0  # 16 bytes
_MAX_BLOCK_EXP = 6  # 1024 bytes


def _hostinfo(addr: Addr) -> str:
    host, port = str(addr[0]), addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]  # an IPv4 peer on a dual-stack socket
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def block_size_exp_for(data_mtu: int) -> int:
    """The largest CoAP block size exponent whose blocks fit a DTLS record of ``data_mtu``."""
    for exp in range(_MAX_BLOCK_EXP, _MIN_BLOCK_EXP - 1, -1):
        if (1 << (exp + 4)) + COAP_OVERHEAD <= data_mtu:
            return exp
    return _MIN_BLOCK_EXP


class DtlsRemote(interfaces.EndpointAddress):  # type: ignore[misc]  # aiocoap is untyped
    """The remote of a message over one DTLS session: equal only for the same session."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False

    def __init__(self, transport: DtlsTransport, session: DtlsSession) -> None:
        self._transport = transport
        self.session = session
        self._block_exp_limit = _MAX_BLOCK_EXP

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DtlsRemote) and other.session is self.session

    def __hash__(self) -> int:
        return hash(("coaps", self.session.id))

    def __repr__(self) -> str:
        return f"<DtlsRemote {self.hostinfo} session {self.session.id} {self.principal}>"

    @property
    def principal(self) -> Principal | None:
        """What the peer authenticated with."""
        return self.session.principal

    @property
    def is_live(self) -> bool:
        """Whether the session still carries messages."""
        return self.session.established

    @property
    def hostinfo(self) -> str:
        return _hostinfo(self.session.addr)

    @property
    def hostinfo_local(self) -> str:
        return self._transport.hostinfo_local

    @property
    def uri_base(self) -> str:
        return "coaps://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        return "coaps://" + self.hostinfo_local

    @property
    def blockwise_key(self) -> tuple[int, Principal | None]:
        return (self.session.id, self.session.principal)

    @property
    def authenticated_claims(self) -> tuple[Principal, ...]:
        p = self.session.principal
        return (p,) if p is not None else ()

    @property
    def maximum_block_size_exp(self) -> int:
        mtu = self.session.data_mtu
        exp = block_size_exp_for(mtu) if mtu else _MAX_BLOCK_EXP
        return min(exp, self._block_exp_limit)

    @maximum_block_size_exp.setter
    def maximum_block_size_exp(self, value: int) -> None:
        # aiocoap lowers it on a remote to carry a requested block size along
        self._block_exp_limit = value

    @property
    def maximum_payload_size(self) -> int:
        mtu = self.session.data_mtu
        return max(16, mtu - COAP_OVERHEAD) if mtu else 1024


class _UdpSocket:
    """The server's UDP socket on the event loop, read in batches.

    One wakeup drains up to :data:`READ_BATCH` datagrams (asyncio's datagram transport reads one
    per loop iteration: during a handshake storm, the poll and the loop iteration per datagram
    cost more than the handshake). Sends go straight to the socket; when its buffer is full the
    datagram is dropped, as the network might, and DTLS retransmits.
    """

    def __init__(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop, receive: Callable[[bytes, Addr], None]
    ) -> None:
        self.sock = sock
        self.loop = loop
        self.receive = receive
        self.dropped_sends = 0
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        receive = self.receive
        for _ in range(READ_BATCH):
            try:
                data, addr = recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors do not say which peer; sessions time out instead
                log.debug("DTLS socket error: %s", exc)
                continue
            receive(data, addr)

    def sendto(self, data: bytes, addr: Addr) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.dropped_sends += 1
        except OSError as exc:
            self.dropped_sends += 1
            log.debug("DTLS send to %s failed: %s", addr, exc)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class DtlsTransport(interfaces.MessageInterface):  # type: ignore[misc]  # aiocoap is untyped
    """aiocoap message interface for CoAP over DTLS, server side (see the module docstring)."""

    def __init__(
        self,
        mman: MessageManager,
        log: logging.Logger,
        loop: asyncio.AbstractEventLoop,
        server: DtlsServer,
    ) -> None:
        self._mman: MessageManager | None = mman
        self.log = log
        self.loop = loop
        self.server = server
        self._udp: _UdpSocket | None = None
        self.local_address: Addr = ("::", 0)
        self.hostinfo_local = "[::]"
        # chain the callbacks someone set before (the layer above may want to know too)
        self._next_established = server.on_established
        self._next_closed = server.on_closed
        server.send = self._sendto
        server.on_established = self._established
        server.on_data = self._data
        server.on_closed = self._closed

    @classmethod
    async def create_server_transport(
        cls,
        mman: MessageManager,
        log: logging.Logger,
        loop: asyncio.AbstractEventLoop,
        *,
        bind: tuple[str | None, int] = ("::", COAPS_PORT),
        server: DtlsServer,
        receive_buffer: int = 2 << 20,
    ) -> DtlsTransport:
        """Bind the UDP socket (port 0: any free port) and start serving with ``server``."""
        self = cls(mman, log, loop, server)
        server.use_loop(loop)
        host, port = bind
        infos = await loop.getaddrinfo(host or "::", port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            # room for a registration storm's hellos (the kernel caps it at net.core.rmem_max)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            sock.bind(sockaddr)
            self._udp = _UdpSocket(sock, loop, server.datagram_received)
        except BaseException:
            sock.close()
            raise
        self.local_address = sock.getsockname()
        self.hostinfo_local = _hostinfo(self.local_address)
        log.info("CoAP over DTLS listening on %s", self.hostinfo_local)
        return self

    @property
    def port(self) -> int:
        """The bound UDP port."""
        return int(self.local_address[1])

    # DtlsServer callbacks

    def _sendto(self, addr: Addr, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data, addr)

    def _remote(self, session: DtlsSession) -> DtlsRemote:
        remote = session.user
        if not isinstance(remote, DtlsRemote):
            remote = session.user = DtlsRemote(self, session)
        return remote

    def _established(self, session: DtlsSession) -> None:
        self._remote(session)
        if self._next_established is not None:
            self._next_established(session)

    def _data(self, session: DtlsSession, plaintext: bytes) -> None:
        remote = self._remote(session)
        try:
            message = Message.decode(plaintext, remote=remote)
        except error.UnparsableMessage:
            self.log.warning("Ignoring unparsable CoAP message from %r", remote)
            return
        if self._mman is not None:
            self._mman.dispatch_message(message)

    def _closed(self, session: DtlsSession, reason: str) -> None:
        remote = session.user
        if isinstance(remote, DtlsRemote) and self._mman is not None:
            self._mman.dispatch_error(error.NetworkError(f"DTLS session ended: {reason}"), remote)
        if self._next_closed is not None:
            self._next_closed(session, reason)

    # MessageInterface

    def send(self, message: Message) -> None:
        remote = message.remote
        if not isinstance(remote, DtlsRemote) or remote._transport is not self:
            raise ValueError(f"{remote!r} is not a remote of this DTLS transport")
        if self._mman is None:
            self.log.info("Not sending %r: the DTLS transport is shutting down", message)
            return
        data = message.encode()
        try:
            remote.session.send(data)
        except ConnectionError as exc:
            self._fail_later(remote, error.NetworkError(f"DTLS session ended: {exc}"))
        except ValueError as exc:
            self.log.warning("Not sending %r: %s", message, exc)
            self._fail_later(remote, error.NetworkError(str(exc)))

    def _fail_later(self, remote: DtlsRemote, exc: Exception) -> None:
        # not from inside send(): the message layer is in the middle of its bookkeeping
        def fail() -> None:
            if self._mman is not None:
                self._mman.dispatch_error(exc, remote)

        self.loop.call_soon(fail)

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, DtlsRemote) and remote._transport is self and remote.is_live

    async def determine_remote(self, message: Message) -> DtlsRemote | None:
        return None  # a server cannot open a session to a URI

    async def shutdown(self) -> None:
        self.server.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        self._mman = None


async def attach_dtls_transport(
    ctx: Any,
    server: DtlsServer,
    *,
    bind: tuple[str | None, int] = ("::", COAPS_PORT),
) -> DtlsTransport:
    """Serve ``coaps://`` on ``bind`` for an ``aiocoap.Context`` (asked first for its remotes)."""
    tman = TokenManager(ctx)
    mman = MessageManager(tman)
    transport = await DtlsTransport.create_server_transport(mman, ctx.log, ctx.loop, bind=bind, server=server)
    mman.message_interface = transport
    tman.token_interface = mman
    ctx.request_interfaces.insert(0, tman)
    return transport
