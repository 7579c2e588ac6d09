"""CoAP over a serial line for aiocoap: a ``MessageInterface`` speaking slipmux on one port.

One transport serves one byte stream (a :class:`~gateway.serial.port.SerialLink`, or anything
with the same ``on_data``/``on_state``/``write`` surface, e.g. an :class:`~gateway.serial.port.FdLink`
on a pty master). A port has exactly one peer and no addresses, so the port *is* the peer: every
message on it carries the transport's one :class:`SlipmuxRemote`, ``coap+uart://<port name>``.
The transport is symmetric: the gateway (an LwM2M server that sends requests to the device
through the stored remote of its Register) and a device or simulator (a client that sends to
``coap+uart://<port>/rd``) use the same class.

- Inbound: the port's bytes go through :class:`~gateway.transport.slipmux_frames.SlipmuxDecoder`;
  configuration frames become messages (``Message.decode``) for the message manager; diagnostic
  frames are logged at INFO, rate-limited; IP frames are counted and ignored. Noise, bad FCS and
  broken frames are counted by the decoder and dropped: the link keeps working.
- Outbound: ``send`` frames the message and queues it on the link, whose single FIFO queue keeps
  frames whole and in order (requests themselves are one at a time per peer: aiocoap's NSTART=1).
- Slow links: the remote's ``maximum_block_size_exp`` keeps a block's frame within about
  :data:`BLOCK_FRAME_TIME_S` of line time (256-byte blocks at 9600 baud, 1024 at 38400 and up),
  and a CON message's ACK_TIMEOUT is the RFC's 2 s plus the line time of what is queued before
  it, the frame itself and the largest answer (:class:`SerialTuning`). A message that arrives
  with aiocoap's default tuning gets it when it is sent (its first retransmission timer is
  re-armed); a caller may set ``message.transport_tuning = remote.transport_tuning`` up front.
- The port closing (unplug) fails pending requests to its peer with a NetworkError; requests
  sent while it is closed fail the same way, at once.
- Notification fast path: with ``notification_sink`` set to the LwM2M server's exchanges (as the
  server sets it on its UDP transport), a notification of one of its observations is handed over
  from its bytes (``parse_notification``) and, if CON, acknowledged, without aiocoap decoding it.

Attach to a context (client or server) with :func:`attach_slipmux`, or build it as the factory
of the LwM2M server's ``add_transport``::

    link = SerialLink("meter", LinkSettings("/dev/serial/by-id/usb-...", baudrate=9600))
    transport = await attach_slipmux(ctx, link)          # starts the link, owns it from now on
    response = await ctx.request(Message(code=GET, uri="coap+uart://meter/3/0")).response

Caveats: aiocoap 0.4.17 knows only IP URI schemes; importing this module registers ``coap+uart``
with it (else such URIs turn into Proxy-Uri options). The remote stays the same across an unplug
and replug: a device that reboots meanwhile and reuses message ids within EXCHANGE_LIFETIME may
see a duplicate's cached answer. Re-arming the first retransmission timer uses aiocoap 0.4.17's
``MessageManager._active_exchanges``/``_schedule_retransmit`` (pinned by the project); without
them the caller's tuning is used as it is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import urllib.parse
from typing import Any, Final

import aiocoap.message
from aiocoap import Message, error, interfaces
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.types import Type
from aiocoap.tokenmanager import TokenManager

from gateway.logs import RateLimited
from gateway.lwm2m.server.fastpath import (
    CON_TKL6,
    NON_TKL6,
    TOKEN_LENGTH,
    NotificationSink,
    empty_ack,
    parse_notification,
)
from gateway.serial.port import ByteLink, LinkError, LinkState, SerialLink, WriteQueueFull
from gateway.transport.slipmux_frames import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FRAME_OVERHEAD,
    ConfigurationFrame,
    DiagnosticFrame,
    IpFrame,
    SlipmuxDecoder,
    encode_configuration,
)

log = logging.getLogger("gateway.transport.slipmux")

SCHEME: Final = "coap+uart"

#: Header, token and options a message adds to its payload, for sizing blocks (a block-wise
#: response with ETag, Content-Format, Block2 and Size2 and an 8-byte token stays below it).
COAP_OVERHEAD: Final = 64
#: Line time a frame carrying one block may take: a lost frame costs no more than that, and a
#: notification queued behind a transfer waits no longer.
BLOCK_FRAME_TIME_S: Final = 0.35
#: RFC 7252's ACK_TIMEOUT: the peer's processing and scheduling. The line time comes on top.
BASE_ACK_TIMEOUT: Final = 2.0
#: Diagnostic lines logged in a burst, and per second after it, per port.
DIAGNOSTIC_BURST: Final = 20
DIAGNOSTIC_RATE: Final = 1.0

_MAX_BLOCK_EXP: Final = 6
_CON: Final = Type.CON


def register_scheme() -> None:
    """Make aiocoap parse ``coap+uart://`` URIs into a path and an undecided remote (idempotent)."""
    schemes = aiocoap.message.coap_schemes
    if SCHEME not in schemes:
        schemes.append(SCHEME)
    for registry in (urllib.parse.uses_relative, urllib.parse.uses_netloc):
        if SCHEME not in registry:
            registry.append(SCHEME)


register_scheme()


def block_size_exp_for(bytes_per_second: float) -> int:
    """The largest block size exponent whose frame fits :data:`BLOCK_FRAME_TIME_S` of line time.

    >>> [block_size_exp_for(baud / 10) for baud in (2400, 9600, 19200, 38400, 115200)]
    [0, 4, 5, 6, 6]
    """
    budget = bytes_per_second * BLOCK_FRAME_TIME_S
    for exp in range(_MAX_BLOCK_EXP, 0, -1):
        if (16 << exp) + COAP_OVERHEAD + FRAME_OVERHEAD <= budget:
            return exp
    return 0


def ack_timeout_for(bytes_per_second: float, line_bytes: int) -> float:
    """ACK_TIMEOUT for a CON message when ``line_bytes`` must cross the line before its answer can.

    >>> round(ack_timeout_for(960, 1024), 2)  # a 1 KiB frame at 9600 baud takes about a second
    3.07
    """
    return BASE_ACK_TIMEOUT + line_bytes / bytes_per_second


class SerialTuning(TransportTuning):  # type: ignore[misc]  # aiocoap is untyped
    """aiocoap's transport parameters with an ACK_TIMEOUT for this message on this link.

    Everything derived from ACK_TIMEOUT (MAX_TRANSMIT_SPAN, EXCHANGE_LIFETIME, ...) follows it.
    """

    def __init__(self, ack_timeout: float, reliability: bool | None = None) -> None:
        self.ACK_TIMEOUT = ack_timeout
        self.reliability = reliability

    def __repr__(self) -> str:
        return f"<SerialTuning ACK_TIMEOUT={self.ACK_TIMEOUT:.2f}>"


class SlipmuxRemote(interfaces.EndpointAddress):  # type: ignore[misc]  # aiocoap is untyped
    """The peer at the other end of one port: ``coap+uart://<port name>``; one per transport."""

    scheme = SCHEME
    is_multicast = False
    is_multicast_locally = False

    def __init__(self, transport: SlipmuxTransport) -> None:
        self.transport = transport
        self.port = transport.port_name
        self._hash = hash((SCHEME, self.port.lower()))
        self._block_exp_limit = _MAX_BLOCK_EXP

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlipmuxRemote) and other.transport is self.transport

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"<SlipmuxRemote {self.uri_base}>"

    @property
    def hostinfo(self) -> str:
        return self.port

    @property
    def hostinfo_local(self) -> str:
        # The port has no local address either; Site routing in 0.4.17 reads this, so no raise.
        return self.port

    @property
    def uri_base(self) -> str:
        return f"{SCHEME}://{self.port}"

    @property
    def uri_base_local(self) -> str:
        return f"{SCHEME}://{self.port}"

    @property
    def blockwise_key(self) -> tuple[str, str]:
        return (SCHEME, self.port.lower())

    @property
    def authenticated_claims(self) -> tuple[object, ...]:
        return ()

    def as_response_address(self) -> SlipmuxRemote:
        return self

    @property
    def maximum_block_size_exp(self) -> int:
        return min(block_size_exp_for(self.transport.bytes_per_second), self._block_exp_limit)

    @maximum_block_size_exp.setter
    def maximum_block_size_exp(self, value: int) -> None:
        # aiocoap lowers it on a remote to carry a requested block size along
        self._block_exp_limit = value

    @property
    def maximum_payload_size(self) -> int:
        """Payloads above one block go block-wise."""
        return 16 << self.maximum_block_size_exp

    @property
    def transport_tuning(self) -> SerialTuning:
        """Tuning for a request to this peer: the longest frame each way, nothing queued."""
        largest = self.maximum_payload_size + COAP_OVERHEAD + FRAME_OVERHEAD
        return SerialTuning(ack_timeout_for(self.transport.bytes_per_second, 2 * largest))


class SlipmuxTransport(interfaces.MessageInterface):  # type: ignore[misc]  # aiocoap is untyped
    """aiocoap message interface for CoAP in slipmux frames on one port (see the module docstring)."""

    def __init__(
        self,
        mman: Any,
        log: logging.Logger,
        loop: asyncio.AbstractEventLoop,
        link: ByteLink,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._mman: Any = mman
        self.log = log
        self.loop = loop
        self.link = link
        self.port_name = link.name
        self.decoder = SlipmuxDecoder(max_message_size=max_message_size)
        self.remote = SlipmuxRemote(self)
        self._complaints = RateLimited(log)
        self._next_state = link.on_state
        link.on_data = self._received
        link.on_state = self._state_changed
        self._tokens = float(DIAGNOSTIC_BURST)
        self._tokens_at = time.monotonic()
        self._suppressed = 0
        self.messages_in = 0
        self.messages_out = 0
        self.unparsable = 0
        self.diagnostics = 0
        self.last_diagnostic = ""
        self.send_failures = 0
        self.send_dropped = 0
        self.retuned = 0
        self.fast_notifications = 0
        #: Set by the LwM2M server (as for its UDP transport): notifications of its observations
        #: are handed over from their bytes, without aiocoap decoding them (None: no fast path).
        self.notification_sink: NotificationSink | None = None

    @classmethod
    async def create(
        cls,
        mman: Any,
        log: logging.Logger,
        loop: asyncio.AbstractEventLoop,
        *,
        link: ByteLink,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> SlipmuxTransport:
        """Take over ``link`` (its ``on_data``/``on_state``) and start it; :meth:`shutdown` closes it."""
        self = cls(mman, log, loop, link, max_message_size=max_message_size)
        link.start()
        return self

    @property
    def bytes_per_second(self) -> float:
        return self.link.bytes_per_second

    def tuning(self, line_bytes: int, reliability: bool | None = None) -> SerialTuning:
        """Tuning for a CON whose frame, with what is queued before it, is ``line_bytes`` long."""
        answer = self.remote.maximum_payload_size + COAP_OVERHEAD + FRAME_OVERHEAD
        return SerialTuning(ack_timeout_for(self.bytes_per_second, line_bytes + answer), reliability)

    def stats(self) -> dict[str, Any]:
        """Counters for status and telemetry: the framer's, the messages', the link's."""
        link = self.link.stats().as_dict() if isinstance(self.link, SerialLink) else {}
        return {
            **link,
            "protocol": "slipmux",
            "port": self.port_name,
            "state": str(self.link.state),
            "fastNotifications": self.fast_notifications,
            "messagesIn": self.messages_in,
            "messagesOut": self.messages_out,
            "unparsable": self.unparsable,
            "diagnostics": self.diagnostics,
            "lastDiagnostic": self.last_diagnostic,
            "sendFailures": self.send_failures,
            "sendDropped": self.send_dropped,
            "framer": self.decoder.counters(),
        }

    # -- the link ---------------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if isinstance(frame, ConfigurationFrame):
                self._message(frame.coap)
            elif isinstance(frame, DiagnosticFrame):
                self._diagnostic(frame.text)
            elif isinstance(frame, IpFrame):
                pass  # counted by the decoder (ip_frames); the gateway routes no IP over serial

    def _message(self, data: bytes) -> None:
        mman = self._mman
        if mman is None:
            return
        if (
            len(data) > 4 + TOKEN_LENGTH
            and data[0] in (NON_TKL6, CON_TKL6)
            and data[1] >> 5 == 2
            and self._fast_notification(data)
        ):
            return
        try:
            message = Message.decode(data, self.remote)
        except error.UnparsableMessage:
            self.unparsable += 1
            self._complaints.warning(
                ("unparsable", self.port_name),
                "serial %s: ignoring an unparsable CoAP message", self.port_name, extra={"port": self.port_name},
            )  # fmt: skip
            return
        self.messages_in += 1
        try:
            mman.dispatch_message(message)
        except Exception:
            self.log.exception("serial %s: processing a CoAP message failed", self.port_name)

    def _fast_notification(self, data: bytes) -> bool:
        """Hand a notification of a known observation to the sink straight from its bytes (about a
        third of the cost of a notification is aiocoap's decoding); False leaves it to aiocoap."""
        sink = self.notification_sink
        if sink is None:
            return False
        observation = sink.observation_for(data[4 : 4 + TOKEN_LENGTH])
        if observation is None or (observation.remote is not self.remote and observation.remote != self.remote):
            return False
        parsed = parse_notification(data)
        if parsed is None:
            return False
        self.messages_in += 1
        self.fast_notifications += 1
        barrier = sink.notification(observation, data[1], parsed[0], parsed[1], parsed[2])
        if data[0] == CON_TKL6:  # an empty ACK with the notification's message id, once it is kept
            sink.acks.after(barrier, functools.partial(self._send_ack, empty_ack(data)))
        return True

    def _send_ack(self, ack: bytes, kept: bool) -> None:
        if not kept:
            return
        try:
            self.link.write(encode_configuration(ack))
        except LinkError:
            self.send_dropped += 1

    def _diagnostic(self, text: str) -> None:
        # A stream of device log lines, not a repeated complaint: a token bucket lets bursts
        # through and says how many lines it held back.
        self.diagnostics += 1
        self.last_diagnostic = text[:200]
        now = time.monotonic()
        self._tokens = min(float(DIAGNOSTIC_BURST), self._tokens + (now - self._tokens_at) * DIAGNOSTIC_RATE)
        self._tokens_at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return
        self._tokens -= 1.0
        skipped, self._suppressed = self._suppressed, 0
        more = f" ({skipped} diagnostic lines suppressed)" if skipped else ""
        text = text.rstrip()[:500]
        log.info("serial %s: device says: %s%s", self.port_name, text, more, extra={"port": self.port_name})

    def _state_changed(self, state: LinkState) -> None:
        # A new open starts mid-stream: wait for the next END before trusting bytes.
        self.decoder.reset()
        if state is not LinkState.OPEN and self._mman is not None:
            reason = getattr(self.link, "last_error", "") or str(state)
            self._mman.dispatch_error(error.NetworkError(f"serial port {self.port_name} closed: {reason}"), self.remote)
        if self._next_state is not None:
            self._next_state(state)

    # -- MessageInterface -------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        remote = message.remote
        if not isinstance(remote, SlipmuxRemote) or remote.transport is not self:
            raise ValueError(f"{remote!r} is not the remote of serial port {self.port_name}")
        if self._mman is None:
            return
        frame = encode_configuration(message.encode())
        # (the LwM2M server also hands over pre-encoded replies that have only remote and encode())
        if getattr(message, "mtype", None) is _CON and not isinstance(message.transport_tuning, SerialTuning):
            tuning = message.transport_tuning
            message.transport_tuning = self.tuning(self.link.queued_out + len(frame), tuning.reliability)
            self._rearm(message)
        try:
            self.link.write(frame)
        except WriteQueueFull:
            self.send_dropped += 1  # as a full network would: CoAP retransmits
            return
        except LinkError as exc:
            self.send_failures += 1
            self._fail_later(error.NetworkError(str(exc)))
            return
        self.messages_out += 1

    def _rearm(self, message: Message) -> None:
        """Restart the first retransmission timer of ``message`` with its (new) tuning."""
        mman = self._mman
        exchanges = getattr(mman, "_active_exchanges", None)
        schedule = getattr(mman, "_schedule_retransmit", None)
        key = (message.remote, message.mid)
        if exchanges is None or schedule is None or key not in exchanges:
            return
        monitor, timer = exchanges[key]
        timer.cancel()
        tuning = message.transport_tuning
        timeout = random.uniform(tuning.ACK_TIMEOUT, tuning.ACK_TIMEOUT * tuning.ACK_RANDOM_FACTOR)
        exchanges[key] = (monitor, schedule(message, timeout, 0))
        self.retuned += 1

    def _fail_later(self, exc: Exception) -> None:
        # not from inside send(): the message layer is in the middle of its bookkeeping
        def fail() -> None:
            if self._mman is not None:
                self._mman.dispatch_error(exc, self.remote)

        self.loop.call_soon(fail)

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, SlipmuxRemote) and remote.transport is self and self._mman is not None

    async def determine_remote(self, message: Message) -> SlipmuxRemote | None:
        """``coap+uart://<this port's name>/...`` (the name compared without regard to case)."""
        undecided = message.remote
        if self._mman is None or getattr(undecided, "scheme", None) != SCHEME:
            return None
        host = str(getattr(undecided, "hostinfo", "") or "")
        if host.lower() != self.port_name.lower():
            return None
        if message.opt.uri_host is not None and message.opt.uri_host.lower() == host.lower():
            message.opt.uri_host = None  # the port says it all; do not spend line time on it
        if type(message.transport_tuning) in (TransportTuning, *_PLAIN_TUNINGS):
            reliability = message.transport_tuning.reliability
            message.transport_tuning = self.remote.transport_tuning
            message.transport_tuning.reliability = reliability
        return self.remote

    async def shutdown(self) -> None:
        self._mman = None
        self.link.close()
        self.link.on_data = None
        self.link.on_state = self._next_state


_PLAIN_TUNINGS: Final = (aiocoap.Reliable, aiocoap.Unreliable)


async def attach_slipmux(
    ctx: Any, link: ByteLink, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> SlipmuxTransport:
    """Serve ``coap+uart://<link.name>`` for an ``aiocoap.Context`` (client or server), asked first.

    Starts ``link``; ``ctx.shutdown()`` closes it.
    """
    tman = TokenManager(ctx)
    mman = MessageManager(tman)
    transport = await SlipmuxTransport.create(mman, ctx.log, ctx.loop, link=link, max_message_size=max_message_size)
    mman.message_interface = transport
    tman.token_interface = mman
    ctx.request_interfaces.insert(0, tman)
    return transport


__all__ = [
    "SCHEME",
    "SerialTuning",
    "SlipmuxRemote",
    "SlipmuxTransport",
    "ack_timeout_for",
    "attach_slipmux",
    "block_size_exp_for",
    "register_scheme",
]
