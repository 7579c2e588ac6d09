"""Requests from the server to devices, and the observations they open: one token table, no tasks.

aiocoap's client side costs a task, two pipes and a ``ClientObservation`` per request (about 10 KB per
observation, measured, and about 1,450 observation set-ups per second). Here a request is an
:class:`Exchange` (a slotted object, a future and a heap deadline) in one dict keyed by token; its
message goes through aiocoap's message manager, which still does message ids, CON retransmission and
NSTART=1 per device. Responses are matched here by token before aiocoap's token manager sees them
(:meth:`Exchanges.take_response`, called by the message manager); an Observe that succeeds turns its
entry into an :class:`ObservationState`, and later notifications are matched the same way.

Tokens are 6 random bytes: unguessable by a NoSec neighbour who would like to inject values, and
never equal to aiocoap's own (1-3 byte) tokens.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server.durable import DurableAcks
from gateway.lwm2m.server.errors import RequestFailed, RequestTimeout
from gateway.lwm2m.server.response import Observation
from gateway.lwm2m.server.timers import Timer, TimerQueue

CON: Final = Type.CON
NON: Final = Type.NON
ACK: Final = Type.ACK
RST: Final = Type.RST

TOKEN_LENGTH: Final = 6
#: RFC 7641 3.4: a notification older than this may carry any sequence number.
_REORDER_WINDOW: Final = 128.0

log = logging.getLogger("gateway.lwm2m.server")


WAITING: Final = 0  # behind another request to the same device
READY: Final = 1  # next for its device, waiting for room in the server-wide window
SENT: Final = 2  # in flight
DONE: Final = 3


class Exchange:
    """One request: its message, the future its caller awaits and its deadline. ``state`` says where
    it is: at most one request per device is in flight (NSTART=1, RFC 7252 4.7) and at most
    ``max_in_flight`` in the whole server."""

    __slots__ = ("future", "message", "mman", "observation", "remote", "state", "timer", "token")

    def __init__(self, token: bytes, remote: Any, mman: Any, message: Message, future: asyncio.Future[Message]) -> None:
        self.token = token
        self.remote = remote
        self.mman = mman
        self.message = message
        self.future = future
        self.timer: Timer | None = None
        self.observation: ObservationState | None = None
        self.state = WAITING

    @property
    def sent(self) -> bool:
        return self.state == SENT


class ObservationState:
    """An active observation: where notifications come from and what was seen last.

    ``owner`` is whatever the server keeps per device (the notification hook receives it back).
    """

    __slots__ = ("last_seq", "last_time", "mman", "owner", "path", "public", "remote")

    def __init__(self, public: Observation, path: LwM2mPath | None, owner: Any) -> None:
        self.public = public
        self.path = path  # None for a composite observation
        self.owner = owner
        self.remote: Any = None
        self.mman: Any = None
        self.last_seq = -1
        self.last_time = 0.0

    @property
    def token(self) -> bytes:
        return self.public.token


NotificationHook = Callable[
    [ObservationState, int, "int | None", "int | None", bytes, "Message | None"], "asyncio.Future[None] | None"
]
"""``(observation, code, observe sequence, content format, payload, message or None)`` -> the durability
barrier of what it delivered (see :mod:`gateway.lwm2m.server.durable`)."""


class Exchanges:
    """The token table of one server (every transport shares it: tokens are unique)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timers: TimerQueue,
        on_notification: NotificationHook,
        max_in_flight: int = 1000,
    ) -> None:
        self._loop = loop
        self._timers = timers
        self._on_notification = on_notification
        self._by_token: dict[bytes, Exchange | ObservationState] = {}
        # per device, its requests in order: the first is in flight, the others wait for it. aiocoap's
        # message manager would queue them too, but it scans every active exchange per message
        # (quadratic with thousands of devices in flight).
        self._by_remote: dict[Any, dict[bytes, Exchange]] = {}
        #: Requests waiting or in flight, all devices together.
        self.pending_count = 0
        # A server-wide window: 20,000 devices asked at once would get 20,000 CON requests at once,
        # and slow devices (or a loaded link) then see retransmissions on top: congestion collapse.
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._ready: deque[Exchange] = deque()
        #: Notifications dropped as stale or duplicate (RFC 7641 ordering).
        self.stale_notifications = 0
        #: CON notifications are acknowledged once what they carried is durable.
        self.acks = DurableAcks()
        self._last_barrier: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._by_token)

    @property
    def pending(self) -> int:
        """Requests waiting for an answer (in flight or queued)."""
        return self.pending_count

    def pending_for(self, remote: Any) -> int:
        """Requests waiting or in flight for ``remote``."""
        queue = self._by_remote.get(remote)
        return 0 if queue is None else len(queue)

    @property
    def queued(self) -> int:
        """Requests waiting for room in the server-wide window."""
        return sum(1 for e in self._ready if e.state == READY)

    def new_token(self) -> bytes:
        while True:
            token = os.urandom(TOKEN_LENGTH)
            if token not in self._by_token:
                return token

    # -- sending ------------------------------------------------------------------------------------

    def request(
        self,
        mman: Any,
        remote: Any,
        message: Message,
        timeout: float,
        *,
        observation: ObservationState | None = None,
        token: bytes | None = None,
    ) -> asyncio.Future[Message]:
        """Send ``message`` (a request) as CON to ``remote`` through ``mman``; the future gets the
        response, or :class:`RequestTimeout` / :class:`RequestFailed`. With ``observation``, a successful
        answer carrying Observe activates it (synchronously, so no notification can slip past).
        ``token``: reuse one (cancelling an observation with Observe=1 must use its token)."""
        if token is None:
            token = self.new_token()
        future: asyncio.Future[Message] = self._loop.create_future()
        message.token = token
        message.remote = remote
        message.mtype = CON
        exchange = Exchange(token, remote, mman, message, future)
        exchange.observation = observation
        old = self._by_token.get(token)
        if isinstance(old, Exchange):
            self._finish(old)
            if not old.future.done():
                old.future.set_exception(RequestFailed("superseded by a new request with the same token"))
        self._by_token[token] = exchange
        queue = self._by_remote.get(remote)
        if queue is None:
            queue = self._by_remote[remote] = {}
        queue[token] = exchange
        self.pending_count += 1
        exchange.timer = self._timers.call_at(self._loop.time() + timeout, self._timed_out, exchange)
        future.add_done_callback(functools.partial(self._future_done, exchange))
        if len(queue) == 1:
            self._next_for_device(exchange)
        return future

    def _future_done(self, exchange: Exchange, future: asyncio.Future[Message]) -> None:
        # the caller gave up (its task was cancelled): free the device's turn and the window now
        if future.cancelled() and exchange.state != DONE:
            abandon = getattr(exchange.mman, "abandon", None)
            if exchange.state == SENT and abandon is not None:
                abandon(exchange.message)
            self._finish(exchange)

    def _next_for_device(self, exchange: Exchange) -> None:
        exchange.state = READY
        self._ready.append(exchange)
        self._fill()

    def _fill(self) -> None:
        # invariant: while there is room in the window, nothing is READY
        ready = self._ready
        while ready and self.in_flight < self.max_in_flight:
            candidate = ready.popleft()
            if candidate.state == READY:
                self._transmit(candidate)

    def _transmit(self, exchange: Exchange) -> None:
        exchange.state = SENT
        self.in_flight += 1
        try:
            exchange.mman.send_message(exchange.message, functools.partial(self._reset, exchange))
        except Exception as exc:
            self._fail(exchange, RequestFailed(f"cannot send to {exchange.remote}: {exc}"))

    # -- receiving ----------------------------------------------------------------------------------

    def take_response(self, mman: Any, message: Message) -> bool:
        """Handle ``message`` (a CON, NON or ACK response) if its token is ours; False to let aiocoap
        have it. Acknowledges CON responses and stops retransmission on piggy-backed answers."""
        item = self._by_token.get(message.token)
        if item is None or item.remote != message.remote:
            return False
        mtype = message.mtype
        if mtype is ACK:
            mman._remove_exchange(message)
        elif mtype is CON and isinstance(item, Exchange):
            mman._send_empty_ack(message.remote, message.mid, "acknowledging a response")
        if isinstance(item, Exchange):
            self._answered(item, message)
        else:
            opt = message.opt
            barrier = self.notification(
                item, int(message.code), opt.observe, opt.content_format, message.payload, message
            )
            if mtype is CON:
                remote, mid = message.remote, message.mid

                def ack(_kept: bool) -> None:
                    if _kept:
                        mman._send_empty_ack(remote, mid, "acknowledging a notification")

                self.acks.after(barrier, ack)
        return True

    def _answered(self, exchange: Exchange, message: Message) -> None:
        self._finish(exchange)
        future = exchange.future
        observation = exchange.observation
        if (
            observation is not None
            and not future.done()
            and message.code.is_successful()
            and message.opt.observe is not None
        ):
            observation.remote = exchange.remote
            observation.mman = exchange.mman
            observation.last_seq = message.opt.observe
            observation.last_time = self._loop.time()
            self._by_token[exchange.token] = observation
        if not future.done():
            future.set_result(message)

    def observation_for(self, token: bytes) -> ObservationState | None:
        """The active observation with this token (the UDP transport's notification fast path asks)."""
        item = self._by_token.get(token)
        return item if type(item) is ObservationState else None

    def notification(
        self,
        observation: ObservationState,
        code: int,
        seq: int | None,
        content_format: int | None,
        payload: bytes,
        message: Message | None = None,
    ) -> asyncio.Future[None] | None:
        """A notification for ``observation``: drop it if stale (RFC 7641 3.4), end the observation
        on an error code or a missing Observe option, else hand it on. ``message`` is the decoded
        message when there is one (not on the fast path). Returns the barrier a CON notification's
        ACK must wait for (None: acknowledge now)."""
        if seq is not None and code >> 5 == 2:
            now = self._loop.time()
            last = observation.last_seq
            if not (
                (last < seq and seq - last < 2**23)
                or (last > seq and last - seq > 2**23)
                or now > observation.last_time + _REORDER_WINDOW
            ):
                # most often a retransmission whose ACK waits for the commit of the first copy:
                # acknowledge it after the latest commit, which covers that one
                self.stale_notifications += 1
                pending = self._last_barrier
                return pending if pending is not None and not pending.done() else None
            observation.last_seq = seq
            observation.last_time = now
        else:
            # an error code or a notification without Observe ends the observation (RFC 7641 3.2)
            self.forget(observation.token)
        barrier = self._on_notification(observation, code, seq, content_format, payload, message)
        if barrier is not None:
            self._last_barrier = barrier
        return barrier

    # -- ending -------------------------------------------------------------------------------------

    def forget(self, token: bytes) -> None:
        """Drop an observation (passive cancel: its next notification is reset) or an exchange."""
        if isinstance(self._by_token.get(token), ObservationState):
            del self._by_token[token]

    def observation(self, token: bytes) -> ObservationState | None:
        item = self._by_token.get(token)
        return item if isinstance(item, ObservationState) else None

    def fail_remote(self, remote: Any, exc: Exception) -> None:
        """Every request in flight to ``remote`` fails with ``exc`` (network error, retransmissions
        exhausted, the device went away)."""
        exchanges = self._by_remote.get(remote)
        if not exchanges:
            return
        for exchange in list(exchanges.values()):
            self._fail(exchange, exc)

    def _reset(self, exchange: Exchange) -> None:
        # aiocoap calls this when the device answered the CON with RST
        self._fail(exchange, RequestFailed("the device reset the request"))

    def _timed_out(self, exchange: Exchange) -> None:
        exchange.timer = None
        abandon = getattr(exchange.mman, "abandon", None)
        if exchange.state == SENT and abandon is not None:
            abandon(exchange.message)
        self._fail(exchange, RequestTimeout(f"no answer from {exchange.remote.hostinfo}"))

    def _fail(self, exchange: Exchange, exc: Exception) -> None:
        self._finish(exchange)
        if not exchange.future.done():
            exchange.future.set_exception(exc)

    def _finish(self, exchange: Exchange) -> None:
        token = exchange.token
        if self._by_token.get(token) is exchange:
            del self._by_token[token]
        self._timers.cancel(exchange.timer)
        exchange.timer = None
        state = exchange.state
        exchange.state = DONE
        if state == SENT:
            self.in_flight -= 1
        queue = self._by_remote.get(exchange.remote)
        if queue is not None and queue.get(token) is exchange:
            del queue[token]
            self.pending_count -= 1
            if not queue:
                del self._by_remote[exchange.remote]
            elif state != WAITING:
                self._next_for_device(next(iter(queue.values())))  # the next request to this device
                return
        self._fill()

    def close(self, exc: Exception) -> None:
        for exchanges in list(self._by_remote.values()):
            for exchange in list(exchanges.values()):
                self._fail(exchange, exc)
        self._by_token.clear()


def rst_for(message: Message) -> Message:
    """An empty RST answering ``message`` (a notification for an observation we no longer want)."""
    rst = Message(code=Code.EMPTY)
    rst.mtype = RST
    rst.mid = message.mid
    rst.remote = message.remote
    return rst
