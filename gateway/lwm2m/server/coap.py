"""The server's CoAP message layer: aiocoap's message manager with LwM2M fast paths.

aiocoap's server side costs per request a deep copy (``Site``), two pipes, a task, a piggy-back timer and
a duplicate-detection record with its own timer kept 247 s (about 4 KB); its client side a task and
~10 KB per observation. For 20,000 devices that is the limit (see the issue's measurements), so:

- **incoming requests** without block-wise options (Register, Update, De-register, Send: all of the
  registration storm) are answered synchronously from :meth:`LwM2mMessageManager.dispatch_message`,
  piggy-backed on the ACK, with duplicate detection in a bounded :class:`RecentRequests`;
- requests with Block1/Block2 go aiocoap's normal way to :class:`LwM2mSite`, whose block-wise
  assembly aiocoap does, and then to the same handler;
- **responses** whose token belongs to the server's :class:`~gateway.lwm2m.server.exchanges.Exchanges`
  (every request the server sends, and every notification) are taken before aiocoap's token
  manager sees them.

Everything else (message ids, CON retransmission, NSTART=1 back-logs, pings, RSTs) stays aiocoap's.
This subclasses private parts of aiocoap 0.4.17 (``_remove_exchange``, ``_send_empty_ack``,
``_active_exchanges``, ``_backlogs``), which the project pins; tests/lwm2m/test_server_coap.py
exercises each of them so that an aiocoap upgrade that changes them fails loudly.

Transports plug in as for any aiocoap context: :func:`attach_transport` gives a transport constructor
the message manager to deliver to (the DTLS and serial transports use the same path).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from aiocoap import Message, interfaces
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.pipe import Pipe
from aiocoap.tokenmanager import TokenManager

from gateway.lwm2m.server.dedup import RecentRequests
from gateway.lwm2m.server.durable import DurableAcks

CON = Type.CON
NON = Type.NON
ACK = Type.ACK
RST = Type.RST

log = logging.getLogger("gateway.lwm2m.server")

#: Attribute set on incoming requests that take aiocoap's path, so that the handler learns which
#: message manager (transport) the device talks through.
MMAN_ATTRIBUTE = "lwm2m_mman"


class Reply(NamedTuple):
    """An answer to an incoming request, before it becomes a message (and what duplicate detection keeps)."""

    code: Code
    payload: bytes = b""
    location: tuple[str, ...] = ()
    content_format: int | None = None
    #: Answer only once this is done (a Send: once its values are durable); failed: 5.00 instead.
    after: asyncio.Future[None] | None = None


class RequestHandler(Protocol):
    """What the message layer needs from the LwM2M server."""

    def handle_request(self, mman: Any, request: Message) -> Reply:
        """Answer an incoming request (synchronously; must not raise)."""

    def take_response(self, mman: Any, response: Message) -> bool:
        """Handle a response if it answers one of the server's requests; False to leave it to aiocoap."""

    def remote_failed(self, remote: Any, exc: Exception) -> None:
        """Retransmissions to ``remote`` ran out, or its transport reported an error."""


def encode_reply(reply: Reply, mtype: int, mid: int, token: bytes) -> bytes:
    """The wire form of a reply (RFC 7252 3): what ``reply_message(reply).encode()`` gives, quicker.

    >>> encode_reply(Reply(Code.CREATED, location=("rd", "abc")), 2, 0x1234, b"\\x07").hex()
    '614112340782726403616263'
    """
    out = bytearray((0x40 | (mtype & 3) << 4 | len(token), int(reply.code), mid >> 8 & 0xFF, mid & 0xFF))
    out += token
    last = 0
    options: list[tuple[int, bytes]] = [(8, segment.encode()) for segment in reply.location]
    if reply.content_format is not None:
        cf = int(reply.content_format)
        options.append((12, cf.to_bytes((cf.bit_length() + 7) // 8, "big")))
    for number, value in options:
        delta = number - last
        last = number
        length = len(value)
        d, d_ext = (delta, b"") if delta < 13 else (13, bytes((delta - 13,)))
        if length < 13:
            n, n_ext = length, b""
        elif length < 269:
            n, n_ext = 13, bytes((length - 13,))
        else:
            n, n_ext = 14, (length - 269).to_bytes(2, "big")
        out.append(d << 4 | n)
        out += d_ext
        out += n_ext
        out += value
    if reply.payload:
        out.append(0xFF)
        out += reply.payload
    return bytes(out)


class EncodedMessage:
    """An already encoded message for a transport's ``send`` (which only asks ``remote`` and ``encode()``)."""

    __slots__ = ("_data", "remote")

    def __init__(self, data: bytes, remote: Any) -> None:
        self._data = data
        self.remote = remote

    def encode(self) -> bytes:
        return self._data

    def __repr__(self) -> str:
        return f"<EncodedMessage of {len(self._data)} bytes to {self.remote}>"


def reply_message(reply: Reply) -> Message:
    message = Message(code=reply.code, payload=reply.payload)
    if reply.location:
        message.opt.location_path = reply.location
    if reply.content_format is not None:
        message.opt.content_format = reply.content_format
    return message


class PreparedRequest(Message):  # type: ignore[misc]  # aiocoap is untyped
    """A request whose options are encoded once (:meth:`prepare`) and shared by shallow copies.

    aiocoap builds option objects for every message and encodes them on every (re)transmission; a
    fleet's requests are alike (observe /3303/0/5700 with Accept 0, 20,000 times), so the server keeps
    one prepared template per distinct request and sends ``copy.copy(template)`` with its own token,
    message id and payload. The options of a copy must not be changed (``Message.copy`` -- used for
    block-wise -- makes an unprepared message with its own options, which encodes normally)."""

    def prepare(self) -> None:
        self._encoded_options = self.opt.encode()

    def encode(self) -> bytes:
        options = self.__dict__.get("_encoded_options")
        if options is None or self.mid is None or self.mtype is None:
            return bytes(super().encode())
        token = self.token
        mid = self.mid
        head = bytes((0x40 | (int(self.mtype) & 3) << 4 | len(token), int(self.code), mid >> 8 & 0xFF, mid & 0xFF))
        payload = self.payload
        if payload:
            return b"".join((head, token, options, b"\xff", payload))
        return b"".join((head, token, options))


class LwM2mTokenManager(TokenManager):  # type: ignore[misc]  # aiocoap is untyped
    """aiocoap's token manager, also telling the LwM2M server when a remote failed."""

    def __init__(self, context: Any, handler: RequestHandler) -> None:
        super().__init__(context)
        self._handler = handler

    def dispatch_error(self, exception: Exception, remote: Any) -> None:
        super().dispatch_error(exception, remote)
        self._handler.remote_failed(remote, exception)


class LwM2mMessageManager(MessageManager):  # type: ignore[misc]  # aiocoap is untyped
    """aiocoap's message manager with the fast paths described in the module docstring."""

    def __init__(
        self,
        token_manager: LwM2mTokenManager,
        handler: RequestHandler,
        recent: RecentRequests,
        acks: DurableAcks | None = None,
    ) -> None:
        super().__init__(token_manager)
        self._handler = handler
        self._recent = recent
        self.acks = acks or DurableAcks()
        #: Requests answered on the fast path, and on aiocoap's path.
        self.fast_requests = 0
        self.slow_requests = 0
        self.duplicates = 0

    # -- incoming -----------------------------------------------------------------------------------

    def dispatch_message(self, message: Message) -> None:
        code = message.code
        if code.is_request():
            mtype = message.mtype
            if mtype is not CON and mtype is not NON:
                log.warning("Ignoring a %s request of type %s from %s", code, mtype, message.remote)
                return
            if self._deduplicate_message(message):
                return
            opt = message.opt
            if opt.block1 is None and opt.block2 is None:
                self.fast_requests += 1
                self._send_reply(message, self._handler.handle_request(self, message))
            else:
                self.slow_requests += 1
                setattr(message, MMAN_ATTRIBUTE, self)
                self._process_request(message)
            return
        if code.is_response() and message.mtype is not RST and self._handler.take_response(self, message):
            return
        super().dispatch_message(message)

    def _send_reply(self, request: Message, reply: Reply) -> None:
        after = reply.after
        if after is not None:
            # the device hears "received" only once what it sent is kept (gateway.lwm2m.server.durable)
            self.acks.after(after, functools.partial(self._send_reply_now, request, reply))
            return
        self._send_reply_now(request, reply, True)

    def _send_reply_now(self, request: Message, reply: Reply, kept: bool) -> None:
        if not kept:
            reply = Reply(Code.INTERNAL_SERVER_ERROR, b"not stored: the gateway's queue refused it")
        elif reply.after is not None:
            reply = reply._replace(after=None)
        if request.mtype is CON:
            data = encode_reply(reply, ACK, request.mid, request.token)
            self._recent.set_response((request.remote, request.mid), reply)
        else:
            data = encode_reply(reply, NON, self._next_message_id(), request.token)
        self.message_interface.send(EncodedMessage(data, request.remote.as_response_address()))

    def _deduplicate_message(self, message: Message) -> bool:
        key = (message.remote, message.mid)
        entry = self._recent.lookup(key)
        if entry is None:
            self._recent.add(key, self.loop.time())
            return False
        self.duplicates += 1
        if message.mtype is CON:
            stored = entry[1]
            if stored is None:
                log.info("Duplicate CON from %s, no response to send yet", message.remote)
            elif isinstance(stored, Reply):
                self._send_reply(message, stored)
            else:
                self._send_initially(stored)
        return True

    def _store_response_for_duplicates(self, message: Message) -> None:
        if message.code is not None and message.code.is_response():
            self._recent.set_response((message.remote, message.mid), message)

    # -- outgoing -----------------------------------------------------------------------------------

    def _continue_backlog(self, remote: Any) -> None:
        # aiocoap's version asks "is any exchange with this remote active?" by scanning every active
        # exchange, on every ACK: quadratic with thousands of devices. With NSTART=1 the exchange that
        # just ended was the remote's only one, so only the message sent here can start another.
        backlog = self._backlogs.get(remote)
        if backlog is None:
            return
        exchanges = self._active_exchanges
        while backlog:
            message, monitor = backlog.pop(0)
            self._send_initially(message, monitor)
            if (remote, message.mid) in exchanges:  # a CON: the rest waits for it
                return
        del self._backlogs[remote]

    def abandon(self, message: Message) -> None:
        """Stop retransmitting ``message`` (its request timed out), or drop it from the back-log."""
        remote = message.remote
        exchanges = self._active_exchanges
        if exchanges is None:
            return
        entry = exchanges.pop((remote, message.mid), None)
        if entry is not None:
            entry[1].cancel()
            self._continue_backlog(remote)
            return
        backlog = self._backlogs.get(remote)
        if backlog:
            self._backlogs[remote] = [item for item in backlog if item[0] is not message]


class LwM2mSite(interfaces.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """The single resource behind aiocoap's request path (block-wise requests only): aiocoap
    assembles Block1 bodies, then the LwM2M handler answers. No ``Site``, no per-request deep copy."""

    def __init__(self, handler: RequestHandler) -> None:
        super().__init__()
        self._handler = handler

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return True

    async def render(self, request: Message) -> Message:
        reply = self._handler.handle_request(getattr(request, MMAN_ATTRIBUTE, None), request)
        if reply.after is not None:
            try:
                await asyncio.shield(reply.after)
            except Exception:
                return reply_message(Reply(Code.INTERNAL_SERVER_ERROR, b"not stored: the gateway's queue refused it"))
        return reply_message(reply)

    async def render_to_pipe(self, pipe: Pipe) -> None:
        await self._render_to_pipe(pipe)


TransportFactory = Callable[[Any], Awaitable[Any]]
"""``async (message_manager) -> MessageInterface``: builds a transport delivering to that manager."""


async def attach_transport(
    context: Any,
    handler: RequestHandler,
    recent: RecentRequests,
    factory: TransportFactory,
    acks: DurableAcks | None = None,
) -> tuple[LwM2mMessageManager, Any]:
    """Create the token and message managers for one transport, build it with ``factory`` and put it
    first in ``context``'s request interfaces. Returns (message manager, transport)."""
    tman = LwM2mTokenManager(context, handler)
    mman = LwM2mMessageManager(tman, handler, recent, acks)
    transport = await factory(mman)
    mman.message_interface = transport
    tman.token_interface = mman
    context.request_interfaces.insert(0, tman)
    return mman, transport
