"""The LwM2M server: registrations, device management, observation, queue mode, Send.

Usage (the bridge, DTLS and bootstrap code never see CoAP)::

    server = LwM2mServer(listener=my_listener, config=ServerConfig(admit_nosec=True))
    await server.start(("::", 5683))
    response = await server.read("sensor-7", "/3303/0/5700")
    if response.ok:
        print(response.value)               # a SingleResource
    obs = (await server.observe("sensor-7", "/3303/0/5700")).observation
    ...
    await server.cancel_observation(obs)
    await server.stop()

Operations raise :class:`~gateway.lwm2m.server.errors.DeviceNotRegistered`,
:class:`~gateway.lwm2m.server.errors.RequestTimeout`, :class:`~gateway.lwm2m.server.errors.QueueFull`,
:class:`~gateway.lwm2m.server.errors.RequestFailed` or
:class:`~gateway.lwm2m.server.errors.InvalidResponse` when there is no usable answer; an answer with an
error code is a :class:`~gateway.lwm2m.server.response.Response` whose ``ok`` is False.

Queue mode: a request for a sleeping device (``b=UQ`` / ``Q``, silent for longer than
``queue_awake_time``) is held until the device next talks (Update, notification, Send), then sent;
requests to one queue-mode device go one at a time. Held requests are bounded per device and in total
(:class:`QueueFull`) and fail with :class:`RequestTimeout` at their deadline.

Performance notes (measured by benchmarks/lwm2m_bench.py): no task or timer per device or per
observation; registration, Update and notifications are handled synchronously on the packet path;
identical registration payloads are parsed once and share their object list and model view.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

import aiocoap
from aiocoap import Message
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from gateway.lwm2m.codec import CodecError, ContentFormat, decode, decode_timestamped, encode, encode_paths
from gateway.lwm2m.linkformat import DiscoveredLink, LinkFormatError, RegistrationLinks, parse_discover
from gateway.lwm2m.model.registry import ClientModels, ModelRegistry
from gateway.lwm2m.node import Node, ObjectInstanceNode, ObjectNode, TimestampedValue, Value
from gateway.lwm2m.path import ROOT, LwM2mPath
from gateway.lwm2m.server import operations as ops
from gateway.lwm2m.server.admission import RegistrationCheck, nosec_policy
from gateway.lwm2m.server.coap import (
    MMAN_ATTRIBUTE,
    LwM2mMessageManager,
    LwM2mSite,
    PreparedRequest,
    Reply,
    TransportFactory,
    attach_transport,
)
from gateway.lwm2m.server.config import ServerConfig
from gateway.lwm2m.server.dedup import RecentRequests
from gateway.lwm2m.server.devices import Device, DeviceStatus, Held, Registrations
from gateway.lwm2m.server.durable import combine
from gateway.lwm2m.server.errors import (
    DeviceNotRegistered,
    InvalidResponse,
    QueueFull,
    RequestFailed,
    RequestTimeout,
)
from gateway.lwm2m.server.exchanges import Exchanges, ObservationState, rst_for
from gateway.lwm2m.server.listener import DeregistrationReason, ObservationEnd, RegistrationListener
from gateway.lwm2m.server.registration import (
    RD_SEGMENT,
    Registration,
    RegistrationError,
    parse_register,
    parse_update,
)
from gateway.lwm2m.server.response import Observation, Response
from gateway.lwm2m.server.timers import TimerQueue
from gateway.lwm2m.server.udp import UdpTransport

log = logging.getLogger("gateway.lwm2m.server")

T = TypeVar("T")

SEND_SEGMENT: Final = "dp"
_TEMPLATES_SIZE: Final = 1024
_ONE_VALUE_FORMATS: Final = frozenset({ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.CBOR})
_MAX_BLOCK_EXP: Final = 6
_DIAGNOSTIC_LIMIT: Final = 200
_MODELS_CACHE_SIZE: Final = 1024

Path = LwM2mPath | str


def _claims(request: Message) -> tuple[object, ...]:
    return tuple(request.remote.authenticated_claims)


class LwM2mServer:
    """An LwM2M server on one or more CoAP transports (see the module docstring)."""

    def __init__(
        self,
        *,
        models: ModelRegistry | None = None,
        config: ServerConfig | None = None,
        registration_check: RegistrationCheck | None = None,
        listener: RegistrationListener | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.models = models or ModelRegistry()
        self._check = registration_check or nosec_policy(self.config.admit_nosec)
        self._listeners: list[RegistrationListener] = [] if listener is None else [listener]
        self.registrations = Registrations()
        self._recent = RecentRequests(self.config.dedup_lifetime, self.config.dedup_max_entries)
        self._models_cache: dict[tuple[int, str], tuple[RegistrationLinks, ClientModels]] = {}
        self._held_total = 0
        self._context: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: TimerQueue | None = None
        self._exchanges: Exchanges | None = None
        self._transports: list[tuple[LwM2mMessageManager, Any]] = []
        self._udp: UdpTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._templates: dict[tuple[Any, ...], PreparedRequest] = {}
        # counters (see stats())
        self.notifications = 0
        self.bad_notifications = 0
        self.sends = 0
        self.refused_registrations = 0

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self, bind: tuple[str, int] = ("::", 5683)) -> None:
        """Serve CoAP over UDP on ``bind`` (port 0: any free port; see :attr:`address`)."""
        self._ensure_started()
        loop = self.loop
        receive_buffer = self.config.udp_receive_buffer

        async def udp(mman: Any) -> UdpTransport:
            return await UdpTransport.create(mman, log, loop, bind=bind, receive_buffer=receive_buffer)

        _, transport = await self.add_transport(udp)
        transport.notification_sink = self.exchanges
        self._udp = transport

    async def add_transport(self, factory: TransportFactory) -> tuple[LwM2mMessageManager, Any]:
        """Serve on another transport (DTLS, serial): ``factory(message_manager)`` builds an aiocoap
        ``MessageInterface`` delivering to that manager. Returns (message manager, transport)."""
        self._ensure_started()
        pair = await attach_transport(self._context, self, self._recent, factory, self.exchanges.acks)
        self._transports.append(pair)
        return pair

    def _ensure_started(self) -> None:
        if self._context is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timers = TimerQueue(loop)
        self._exchanges = Exchanges(loop, self._timers, self._on_notification, self.config.max_in_flight)
        self._context = aiocoap.Context(loop=loop, serversite=LwM2mSite(self), loggername="gateway.lwm2m.coap")

    async def stop(self) -> None:
        """End every registration (listeners hear SERVER_STOPPED), fail pending requests, close transports."""
        if self._context is None:
            return
        for device in self.registrations.devices():
            self._end(device, DeregistrationReason.SERVER_STOPPED)
        self.exchanges.close(RequestFailed("the LwM2M server stopped"))
        for task in list(self._tasks):
            task.cancel()
        self.timers.close()
        context, self._context = self._context, None
        await context.shutdown()
        self._transports.clear()
        self._udp = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the UDP transport is bound to."""
        if self._udp is None:
            raise RuntimeError("the LwM2M server has no UDP transport (call start())")
        return str(self._udp.local_address[0]), self._udp.port

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the LwM2M server is not started")
        return self._loop

    @property
    def timers(self) -> TimerQueue:
        if self._timers is None:
            raise RuntimeError("the LwM2M server is not started")
        return self._timers

    @property
    def exchanges(self) -> Exchanges:
        if self._exchanges is None:
            raise RuntimeError("the LwM2M server is not started")
        return self._exchanges

    def add_listener(self, listener: RegistrationListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: RegistrationListener) -> None:
        self._listeners.remove(listener)

    # -- operator view ------------------------------------------------------------------------------

    def devices(self) -> list[DeviceStatus]:
        """The registered devices for people (``edge-gateway devices``), by endpoint name."""
        now = self.loop.time() if self._loop is not None else 0.0
        wall = time.time()
        result = []
        for device in sorted(self.registrations.devices(), key=lambda d: d.reg.endpoint):
            reg = device.reg
            result.append(
                DeviceStatus(
                    endpoint=reg.endpoint,
                    address=reg.address,
                    binding=reg.binding + ("Q" if reg.queue_mode and "Q" not in reg.binding else ""),
                    lwm2m_version=reg.lwm2m_version,
                    lifetime=reg.lifetime,
                    lifetime_left=max(0.0, device.expires_at - now - self.config.lifetime_grace),
                    last_seen=wall - (now - device.last_seen),
                    objects=tuple(reg.object_paths()),
                    observations=len(device.observations or ()),
                    held_requests=len(device.held or ()),
                )
            )
        return result

    def stats(self) -> dict[str, int]:
        """Counters for monitoring and the benchmark."""
        mmans = [mman for mman, _ in self._transports]
        udp = self._udp
        return {
            "registrations": len(self.registrations),
            "observations": sum(len(d.observations or ()) for d in self.registrations.devices()),
            "pending_requests": self._exchanges.pending if self._exchanges is not None else 0,
            "requests_in_flight": self._exchanges.in_flight if self._exchanges is not None else 0,
            "held_requests": self._held_total,
            "notifications": self.notifications,
            "bad_notifications": self.bad_notifications,
            "stale_notifications": self._exchanges.stale_notifications if self._exchanges is not None else 0,
            "acks_after_commit": self._exchanges.acks.deferred if self._exchanges is not None else 0,
            "acks_withheld": self._exchanges.acks.withheld if self._exchanges is not None else 0,
            "sends": self.sends,
            "refused_registrations": self.refused_registrations,
            "fast_requests": sum(m.fast_requests for m in mmans),
            "slow_requests": sum(m.slow_requests for m in mmans),
            "duplicate_requests": sum(m.duplicates for m in mmans),
            "dedup_entries": len(self._recent),
            "dedup_dropped": self._recent.dropped,
            "timers": len(self._timers) if self._timers is not None else 0,
            "udp_received": udp.received if udp is not None else 0,
            "udp_unparsable": udp.unparsable if udp is not None else 0,
            "udp_send_dropped": udp.send_dropped if udp is not None else 0,
            "fast_notifications": udp.fast_notifications if udp is not None else 0,
            "udp_wakeups": udp.wakeups if udp is not None else 0,
        }

    def observations(self, endpoint: str) -> list[Observation]:
        """The active observations of ``endpoint``."""
        device = self._device(endpoint)
        result = []
        for token in device.observations or ():
            state = self.exchanges.observation(token)
            if state is not None:
                result.append(state.public)
        return result

    # -- incoming requests (RequestHandler) ---------------------------------------------------------

    def handle_request(self, mman: Any, request: Message) -> Reply:
        """Answer a request from a device (synchronously; called by the message layer)."""
        try:
            path = request.opt.uri_path
            code = request.code
            if path and path[0] == RD_SEGMENT:
                if len(path) == 1:
                    if code == Code.POST:
                        return self._register(mman, request)
                    return Reply(Code.METHOD_NOT_ALLOWED, b"/rd takes POST (Register)")
                if len(path) == 2:
                    if code == Code.POST:
                        return self._update(mman, request, path[1])
                    if code == Code.DELETE:
                        return self._deregister(request, path[1])
                    return Reply(Code.METHOD_NOT_ALLOWED, b"a registration takes POST (Update) or DELETE")
            elif path == (SEND_SEGMENT,):
                if code == Code.POST:
                    return self._send(request)
                return Reply(Code.METHOD_NOT_ALLOWED, b"/dp takes POST (Send)")
            return Reply(Code.NOT_FOUND, b"no such resource on this LwM2M server")
        except Exception:
            log.exception("Handling %r failed", request)
            return Reply(Code.INTERNAL_SERVER_ERROR)

    def take_response(self, mman: Any, response: Message) -> bool:
        if self.exchanges.take_response(mman, response):
            return True
        if (
            response.mtype is Type.NON
            and response.opt.observe is not None
            and (response.token, response.remote) not in mman.token_manager.outgoing_requests
        ):
            # a notification of an observation nobody wants (any more): tell the device (RFC 7641 3.6)
            mman._send_initially(rst_for(response))
            return True
        return False

    def remote_failed(self, remote: Any, exc: Exception) -> None:
        if isinstance(exc, coap_error.ConRetransmitsExceeded):
            failure: Exception = RequestTimeout(f"{remote.hostinfo} acknowledged nothing (retransmissions exhausted)")
        else:
            failure = RequestFailed(f"{remote.hostinfo}: {exc}")
        device = self.registrations.device_from(remote)
        if device is not None and device.reg.queue_mode:
            device.awake_until = 0.0  # it went to sleep: hold what comes next
        self.exchanges.fail_remote(remote, failure)

    # -- registration interface ---------------------------------------------------------------------

    def _register(self, mman: Any, request: Message) -> Reply:
        opt = request.opt
        try:
            req = parse_register(opt.uri_query, request.payload, opt.content_format)
        except RegistrationError as e:
            self.refused_registrations += 1
            log.info("Register from %s refused: %s", request.remote, e)
            return Reply(e.code, e.reason.encode())
        remote = request.remote
        claims = tuple(remote.authenticated_claims)
        refusal = self._check(req.endpoint, claims)
        if refusal is not None:
            self.refused_registrations += 1
            log.info("Register of %r from %s refused: %s", req.endpoint, remote, refusal.reason)
            return Reply(refusal.code, refusal.reason.encode())
        mman = getattr(request, MMAN_ATTRIBUTE, None) or mman
        old = self.registrations.device(req.endpoint)
        if old is not None:
            self._end(old, DeregistrationReason.REPLACED)
        now = self.loop.time()
        reg_id = self._new_registration_id()
        reg = Registration(
            endpoint=req.endpoint,
            id=reg_id,
            lwm2m_version=req.lwm2m_version,
            binding=req.binding,
            queue_mode=req.queue_mode,
            lifetime=req.lifetime,
            sms=req.sms,
            links=req.links,
            address=remote.hostinfo,
            registered_at=time.time(),
            claims=claims,
            models=self._client_models(req.links, req.lwm2m_version),
        )
        expires_at = now + req.lifetime + self.config.lifetime_grace
        device = Device(reg, remote, mman, now, expires_at)
        device.awake_until = now + self.config.queue_awake_time
        device.expiry_timer = self.timers.call_at(expires_at, self._check_expiry, device)
        self.registrations.add(device)
        log.debug("Registered %s at %s from %s", reg.endpoint, reg.location, reg.address)
        self._emit_registered(reg)
        return Reply(Code.CREATED, location=(RD_SEGMENT, reg_id))

    def _update(self, mman: Any, request: Message, reg_id: str) -> Reply:
        device = self.registrations.device_at(reg_id)
        if device is None:
            return Reply(Code.NOT_FOUND, b"unknown registration: register again")
        if device.remote != request.remote and not self._follow(device, request, mman):
            return Reply(Code.NOT_FOUND, b"update from another security context: register again")
        opt = request.opt
        try:
            update = parse_update(opt.uri_query, request.payload, opt.content_format)
        except RegistrationError as e:
            log.info("Update of %s refused: %s", device.endpoint, e)
            return Reply(e.code, e.reason.encode())
        models = None
        old = device.reg
        if update.links is not None:
            models = self._client_models(update.links, old.lwm2m_version)
        reg = old.updated(update, models)
        device.reg = reg
        now = self.loop.time()
        device.last_seen = now
        expires_at = now + reg.lifetime + self.config.lifetime_grace
        device.expires_at = expires_at
        timer = device.expiry_timer
        if timer is None or expires_at < timer[0]:
            self.timers.cancel(timer)
            device.expiry_timer = self.timers.call_at(expires_at, self._check_expiry, device)
        if reg.queue_mode:
            self._wake(device, now)
        elif old.queue_mode:
            self._release_all_held(device)
        for listener in self._listeners:
            try:
                listener.on_updated(reg, update)
            except Exception:
                log.exception("Listener %r failed in on_updated", listener)
        return Reply(Code.CHANGED)

    def _deregister(self, request: Message, reg_id: str) -> Reply:
        device = self.registrations.device_at(reg_id)
        if device is None or (device.remote != request.remote and (device.reg.claims or _claims(request))):
            return Reply(Code.NOT_FOUND, b"unknown registration")
        self._end(device, DeregistrationReason.DEREGISTERED)
        return Reply(Code.DELETED)

    def _follow(self, device: Device, request: Message, mman: Any) -> bool:
        """A NoSec client that talks from a new address (NAT rebinding, or a client such as
        lwm2m-node-lib that opens a new socket per request) moves its registration there; a client
        with a security context must register again (LwM2M: a new DTLS session means a new Register)."""
        if device.reg.claims or _claims(request):
            return False
        remote = request.remote
        self.registrations.move(device, remote)
        device.mman = getattr(request, MMAN_ATTRIBUTE, None) or mman
        device.reg = dataclasses.replace(device.reg, address=remote.hostinfo)
        log.info("%s moved to %s", device.endpoint, device.reg.address)
        return True

    def _check_expiry(self, device: Device) -> None:
        device.expiry_timer = None
        if not device.active:
            return
        if device.expires_at > self.loop.time():
            device.expiry_timer = self.timers.call_at(device.expires_at, self._check_expiry, device)
            return
        log.info("Registration of %s expired", device.endpoint)
        self._end(device, DeregistrationReason.EXPIRED)

    def _end(self, device: Device, reason: DeregistrationReason) -> None:
        if not device.active:
            return
        device.active = False
        self.registrations.remove(device)
        self.timers.cancel(device.expiry_timer)
        device.expiry_timer = None
        exchanges = self.exchanges
        for token in device.observations or ():
            exchanges.forget(token)
        device.observations = None
        held = device.held
        if held:
            failure = RequestFailed(f"the registration of {device.endpoint} ended ({reason.value})")
            while held:
                item = held.popleft()
                self._held_total -= 1
                self.timers.cancel(item.timer)
                if not item.future.done():
                    item.future.set_exception(failure)
        if reason in (DeregistrationReason.DEREGISTERED, DeregistrationReason.EXPIRED):
            exchanges.fail_remote(
                device.remote, RequestFailed(f"the registration of {device.endpoint} ended ({reason.value})")
            )
        for listener in self._listeners:
            try:
                listener.on_deregistered(device.reg, reason)
            except Exception:
                log.exception("Listener %r failed in on_deregistered", listener)

    def _emit_registered(self, reg: Registration) -> None:
        for listener in self._listeners:
            try:
                listener.on_registered(reg)
            except Exception:
                log.exception("Listener %r failed in on_registered", listener)

    def _new_registration_id(self) -> str:
        while True:
            reg_id = secrets.token_urlsafe(6)
            if self.registrations.device_at(reg_id) is None:
                return reg_id

    def _client_models(self, links: RegistrationLinks, version: str) -> ClientModels:
        key = (id(links), version)
        cached = self._models_cache.get(key)
        if cached is not None and cached[0] is links:
            return cached[1]
        models = self.models.for_client({oid: obj.version for oid, obj in links.objects.items()}, version)
        if len(self._models_cache) >= _MODELS_CACHE_SIZE:
            self._models_cache.clear()
        # the links object is kept in the entry, so its id cannot be reused while the entry lives
        self._models_cache[key] = (links, models)
        return models

    # -- Send and notifications ---------------------------------------------------------------------

    def _send(self, request: Message) -> Reply:
        device = self.registrations.device_from(request.remote)
        if device is None:
            return Reply(Code.NOT_FOUND, b"Send from a client that is not registered: register first")
        cf = request.opt.content_format
        if cf is None:
            return Reply(Code.BAD_REQUEST, b"Send without a Content-Format")
        if ContentFormat.known(cf) is None:
            return Reply(Code.UNSUPPORTED_CONTENT_FORMAT, f"content format {cf} is not an LwM2M format".encode())
        now = self.loop.time()
        device.last_seen = now
        if device.reg.queue_mode:
            self._wake(device, now)
        reg = device.reg
        try:
            values = decode_timestamped(cf, request.payload, None, self._model_of(reg), now=time.time())
        except CodecError as e:
            log.warning("Send from %s could not be decoded: %s", reg.endpoint, e)
            return Reply(Code.BAD_REQUEST, str(e).encode()[:_DIAGNOSTIC_LIMIT])
        self.sends += 1
        ts = time.time()
        barriers: list[asyncio.Future[None]] = []
        for listener in self._listeners:
            try:
                listener.on_send(reg, values, ts)
                barrier = listener.durable_barrier()
                if barrier is not None:
                    barriers.append(barrier)
            except Exception:
                log.exception("Listener %r failed in on_send", listener)
        return Reply(Code.CHANGED, after=combine(barriers) if barriers else None)

    def _on_notification(
        self,
        state: ObservationState,
        code: int,
        seq: int | None,
        cf: int | None,
        payload: bytes,
        message: Message | None,
    ) -> asyncio.Future[None] | None:
        device: Device = state.owner
        if not device.active:
            self.exchanges.forget(state.token)
            return None
        now = self.loop.time()
        device.last_seen = now
        reg = device.reg
        if reg.queue_mode:
            self._wake(device, now)
        if code >> 5 != 2:
            self._observation_ended(device, state, ObservationEnd.ERROR_NOTIFICATION)
            return None
        if message is not None:
            block2 = message.opt.block2
            if block2 is not None and block2.more:
                # acknowledged at once: the values come with the rest of the blocks, fetched by GET
                self._spawn(self._complete_notification(device, state, message))
                return None
        barrier = self._deliver_notification(device, state, cf, payload)
        if seq is None:
            self._observation_ended(device, state, ObservationEnd.FINAL_NOTIFICATION)
        return barrier

    def _deliver_notification(
        self, device: Device, state: ObservationState, cf: int | None, payload: bytes
    ) -> asyncio.Future[None] | None:
        """Decode and hand on a notification; returns the durability barrier of what listeners kept."""
        reg = device.reg
        if cf is None:
            cf = state.public.content_format
        path = state.path
        try:
            if cf in _ONE_VALUE_FORMATS and path is not None and path.depth >= 3:
                # the usual notification: one value (skips the node -> leaves round trip)
                node = decode(cf, payload, path, self._model_of(reg))
                values = [TimestampedValue(path, node.value, None)]  # type: ignore[union-attr]
            else:
                values = decode_timestamped(cf, payload, path, self._model_of(reg))
        except CodecError as e:
            self.bad_notifications += 1
            log.warning("Notification from %s for %s dropped: %s", reg.endpoint, state.public, e)
            return None
        self.notifications += 1
        ts = time.time()
        listeners = self._listeners
        if len(listeners) == 1:  # the usual case: the bridge alone
            listener = listeners[0]
            try:
                listener.on_notification(reg, state.public, values, ts)
                return listener.durable_barrier()
            except Exception:
                log.exception("Listener %r failed in on_notification", listener)
                return None
        barriers: list[asyncio.Future[None]] = []
        for listener in listeners:
            try:
                listener.on_notification(reg, state.public, values, ts)
                barrier = listener.durable_barrier()
                if barrier is not None:
                    barriers.append(barrier)
            except Exception:
                log.exception("Listener %r failed in on_notification", listener)
        return combine(barriers) if barriers else None

    async def _complete_notification(self, device: Device, state: ObservationState, first: Message) -> None:
        # a notification too large for one datagram: the rest comes by GET (or FETCH) with Block2
        template = Message(code=Code.GET if not state.public.composite else Code.FETCH)
        template.opt.uri_path = ops.uri_path(device.reg.root_path, state.path or ROOT)
        if state.public.composite:
            fmt = ContentFormat(state.public.content_format)
            template.opt.content_format = ops.composite_request_format(fmt)
            template.payload = encode_paths(ops.composite_request_format(fmt), state.public.paths)
        template.opt.accept = state.public.content_format
        deadline = self.loop.time() + self.config.request_timeout
        try:
            message = await self._fetch_rest(device, template, first, deadline)
        except Exception as e:
            self.bad_notifications += 1
            log.warning("Notification from %s for %s could not be completed: %s", device.endpoint, state.public, e)
            return
        if device.active:
            self._deliver_notification(device, state, message.opt.content_format, message.payload)

    def _observation_ended(self, device: Device, state: ObservationState, why: ObservationEnd) -> None:
        self.exchanges.forget(state.token)
        if device.observations is not None:
            device.observations.discard(state.token)
        for listener in self._listeners:
            try:
                listener.on_observation_ended(device.reg, state.public, why)
            except Exception:
                log.exception("Listener %r failed in on_observation_ended", listener)

    def _model_of(self, reg: Registration) -> Any:
        models = reg.models
        return models.model_of if models is not None else self.models.model_of

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- queue mode ---------------------------------------------------------------------------------

    def _wake(self, device: Device, now: float) -> None:
        # the device just talked: it listens now (and for queue_awake_time)
        device.awake_until = now + self.config.queue_awake_time
        if device.held:
            self._pump(device, talked=True)

    def _pump(self, device: Device, *, talked: bool = False) -> None:
        held = device.held
        if device.busy or not held or (not talked and device.awake_until <= self.loop.time()):
            return
        while held:
            item = held.popleft()
            self._held_total -= 1
            self.timers.cancel(item.timer)
            if not item.future.done():
                device.busy = True
                item.future.set_result(None)
                return

    def _release_all_held(self, device: Device) -> None:
        # the device left queue mode: everything held may go now (still one at a time via NSTART)
        held = device.held
        while held:
            item = held.popleft()
            self._held_total -= 1
            self.timers.cancel(item.timer)
            if not item.future.done():
                item.future.set_result(None)
        device.busy = False

    async def _wait_turn(self, device: Device, deadline: float) -> None:
        now = self.loop.time()
        if not device.busy and not device.held and device.awake_until > now:
            device.busy = True
            return
        if len(device.held or ()) >= self.config.max_held_per_device:
            raise QueueFull(f"{device.endpoint} is asleep and already has {len(device.held or ())} requests held")
        if self._held_total >= self.config.max_held_total:
            raise QueueFull(f"{self._held_total} requests are held for sleeping devices (the limit)")
        future: asyncio.Future[None] = self.loop.create_future()
        item = Held(future)
        item.timer = self.timers.call_at(deadline, self._held_expired, (device, item))
        if device.held is None:
            device.held = deque()
        device.held.append(item)
        self._held_total += 1
        await future

    def _held_expired(self, arg: tuple[Device, Held]) -> None:
        device, item = arg
        item.timer = None
        held = device.held
        if held is not None and item in held:
            held.remove(item)
            self._held_total -= 1
        if not item.future.done():
            item.future.set_exception(
                RequestTimeout(f"{device.endpoint} (queue mode) did not wake up before the deadline")
            )

    def _release(self, device: Device, *, answered: bool) -> None:
        device.busy = False
        if device.active:
            self._pump(device, talked=answered)

    # -- sending requests ---------------------------------------------------------------------------

    def _device(self, endpoint: str) -> Device:
        device = self.registrations.device(endpoint)
        if device is None:
            raise DeviceNotRegistered(endpoint)
        return device

    async def _call(
        self,
        device: Device,
        message: Message,
        timeout: float | None,
        *,
        observation: ObservationState | None = None,
        token: bytes | None = None,
    ) -> Message:
        deadline = self.loop.time() + (self.config.request_timeout if timeout is None else timeout)
        exchanges = self.exchanges
        if exchanges.pending_for(device.remote) >= self.config.max_pending_per_device:
            raise QueueFull(f"{device.endpoint} already has {self.config.max_pending_per_device} requests pending")
        if exchanges.pending_count >= self.config.max_pending_total:
            raise QueueFull(f"{exchanges.pending_count} requests are pending in this server (the limit)")
        if not device.reg.queue_mode:
            return await self._transfer(device, message, deadline, observation, token)
        await self._wait_turn(device, deadline)
        try:
            response = await self._transfer(device, message, deadline, observation, token)
        except BaseException:
            self._release(device, answered=False)
            raise
        self._release(device, answered=True)
        return response

    async def _transfer(
        self,
        device: Device,
        message: Message,
        deadline: float,
        observation: ObservationState | None = None,
        token: bytes | None = None,
    ) -> Message:
        if len(message.payload) > (16 << min(_MAX_BLOCK_EXP, device.remote.maximum_block_size_exp)):
            response = await self._send_blocks(device, message, deadline)
        else:
            response = await self._once(device, message, deadline, observation, token)
        block2 = response.opt.block2
        if block2 is not None and block2.more and response.code.is_successful():
            response = await self._fetch_rest(device, message, response, deadline)
        return response

    async def _once(
        self,
        device: Device,
        message: Message,
        deadline: float,
        observation: ObservationState | None = None,
        token: bytes | None = None,
    ) -> Message:
        loop = self.loop
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise RequestTimeout(f"no time left for a request to {device.endpoint}")
        response: Message = await self.exchanges.request(
            device.mman, device.remote, message, remaining, observation=observation, token=token
        )
        now = loop.time()
        device.last_seen = now
        if device.reg.queue_mode and device.active:
            device.awake_until = now + self.config.queue_awake_time
        return response

    async def _send_blocks(self, device: Device, message: Message, deadline: float) -> Message:
        """A request body larger than one block, sent with Block1 (RFC 7959 2.5)."""
        payload = message.payload
        szx = min(_MAX_BLOCK_EXP, device.remote.maximum_block_size_exp)
        offset = 0
        number = 0
        while True:
            size = 16 << szx
            chunk = payload[offset : offset + size]
            more = offset + size < len(payload)
            part = message.copy(payload=chunk, mid=None, token=b"", block1=(number, more, szx), block2=None)
            if number == 0:
                part.opt.size1 = len(payload)
            response = await self._once(device, part, deadline)
            if not more:
                return response
            block1 = response.opt.block1
            if response.code != Code.CONTINUE:
                return response  # an error (or a device that took it all without saying so)
            if block1 is None:
                raise InvalidResponse(f"{device.endpoint} answered a block with 2.31 but no Block1", response.code)
            offset += len(chunk)
            szx = min(szx, block1.size_exponent)
            if offset % (16 << szx):
                raise InvalidResponse(f"{device.endpoint} asked for an unusable block size", response.code)
            number = offset >> (szx + 4)

    async def _fetch_rest(self, device: Device, request: Message, first: Message, deadline: float) -> Message:
        """The remaining blocks of a Block2 answer (RFC 7959 2.4), assembled into ``first``."""
        payload = bytearray(first.payload)
        block2 = first.opt.block2
        etag = first.opt.etag
        while block2.more:
            size = 16 << block2.size_exponent
            if len(payload) % size:
                raise InvalidResponse(f"{device.endpoint} sent a block of the wrong size", first.code)
            part = request.copy(
                payload=request.payload if request.code == Code.FETCH else b"",
                mid=None,
                token=b"",
                observe=None,
                block1=None,
                block2=(len(payload) // size, False, block2.size_exponent),
            )
            response = await self._once(device, part, deadline)
            if not response.code.is_successful():
                return response
            next_block = response.opt.block2
            if next_block is None or next_block.start != len(payload):
                raise InvalidResponse(f"{device.endpoint} sent an unexpected block", response.code)
            if response.opt.etag != etag:
                changed = f"{device.endpoint}: the resource changed during a block-wise read"
                raise InvalidResponse(changed, response.code)
            payload += response.payload
            block2 = next_block
        first.payload = bytes(payload)
        first.opt.block2 = None
        return first

    def _request(
        self, device: Device, code: Code, path: LwM2mPath, payload: bytes = b"", **options: Any
    ) -> Message:
        """A request for ``path`` on ``device``; its options must not be changed afterwards (they are
        shared with every request like it, and encoded once: a fleet asks the same few things)."""
        key = (code, device.reg.root_path, path, *sorted(options.items()))
        template = self._templates.get(key)
        if template is None:
            template = PreparedRequest(code=code, **options)
            template.opt.uri_path = ops.uri_path(device.reg.root_path, path)
            template.prepare()
            if len(self._templates) >= _TEMPLATES_SIZE:
                self._templates.clear()
            self._templates[key] = template
        message = copy.copy(template)
        message.payload = payload
        return message

    # -- device management --------------------------------------------------------------------------

    async def read(
        self, endpoint: str, path: Path, *, format: int | None = None, timeout: float | None = None
    ) -> Response[Node]:
        """Read ``path``: the node (resource, instance, object) in ``value``."""
        path = ops.as_path(path)
        device = self._device(endpoint)
        model_of = self._model_of(device.reg)
        fmt = ops.read_format(device.reg, model_of, path) if format is None else format
        response = await self._call(device, self._request(device, Code.GET, path, accept=fmt), timeout)
        return self._node_response(device, path, response, fmt)

    async def discover(
        self, endpoint: str, path: Path, *, timeout: float | None = None
    ) -> Response[list[DiscoveredLink]]:
        """Discover ``path``: its links with their attributes."""
        path = ops.as_path(path)
        device = self._device(endpoint)
        message = self._request(device, Code.GET, path, accept=ContentFormat.LINK)
        response = await self._call(device, message, timeout)
        if not response.code.is_successful():
            return self._error(response)
        try:
            links = parse_discover(response.payload, device.reg.root_path)
        except LinkFormatError as e:
            raise InvalidResponse(f"{endpoint}: Discover {path}: {e}", response.code) from None
        return Response(response.code, links, content_format=ContentFormat.LINK)

    async def write(
        self,
        endpoint: str,
        path: Path,
        node: Node,
        *,
        replace: bool = True,
        format: int | None = None,
        timeout: float | None = None,
    ) -> Response[None]:
        """Write ``node`` at ``path``: replace (PUT) or partial update (POST, ``replace=False``)."""
        path = ops.as_path(path)
        device = self._device(endpoint)
        fmt = ops.write_format(device.reg, node) if format is None else format
        payload = encode(fmt, node, path, self._model_of(device.reg))
        code = Code.PUT if replace else Code.POST
        message = self._request(device, code, path, payload, content_format=fmt)
        return self._plain(await self._call(device, message, timeout))

    async def write_attributes(
        self, endpoint: str, path: Path, attributes: Mapping[str, float | int | None], *, timeout: float | None = None
    ) -> Response[None]:
        """Write-Attributes (pmin, pmax, gt, lt, st, epmin, epmax...); ``None`` removes one."""
        path = ops.as_path(path)
        query = ops.attributes_query(attributes)
        device = self._device(endpoint)
        message = self._request(device, Code.PUT, path, uri_query=query)
        return self._plain(await self._call(device, message, timeout))

    async def execute(
        self,
        endpoint: str,
        path: Path,
        arguments: str | Mapping[int, str | None] | None = None,
        *,
        timeout: float | None = None,
    ) -> Response[None]:
        """Execute the resource ``path`` with optional arguments (``"0='on'"`` or ``{0: "on"}``)."""
        path = ops.as_path(path)
        payload = ops.execute_arguments(arguments)
        device = self._device(endpoint)
        if payload:
            message = self._request(device, Code.POST, path, payload, content_format=ContentFormat.TEXT)
        else:
            message = self._request(device, Code.POST, path)
        return self._plain(await self._call(device, message, timeout))

    async def create(
        self,
        endpoint: str,
        path: Path,
        instance: ObjectInstanceNode,
        *,
        format: int | None = None,
        timeout: float | None = None,
    ) -> Response[LwM2mPath]:
        """Create ``instance`` in the object ``path``; ``value`` is the new instance's path."""
        path = ops.as_path(path)
        if not path.is_object:
            raise ValueError(f"Create targets an object (/oid), not {path}")
        device = self._device(endpoint)
        node = ObjectNode(path.ids[0], {instance.id: instance})
        fmt = ops.write_format(device.reg, node) if format is None else format
        payload = encode(fmt, node, path, self._model_of(device.reg))
        message = self._request(device, Code.POST, path, payload, content_format=fmt)
        response = await self._call(device, message, timeout)
        if not response.code.is_successful():
            return self._error(response)
        created = ops.location_to_path(tuple(response.opt.location_path), device.reg.root_path)
        return Response(response.code, created or path.child(instance.id))

    async def delete(self, endpoint: str, path: Path, *, timeout: float | None = None) -> Response[None]:
        """Delete the object instance ``path``."""
        path = ops.as_path(path)
        device = self._device(endpoint)
        return self._plain(await self._call(device, self._request(device, Code.DELETE, path), timeout))

    async def read_composite(
        self, endpoint: str, paths: Iterable[Path], *, format: int | None = None, timeout: float | None = None
    ) -> Response[dict[LwM2mPath, Value]]:
        """Read-Composite (FETCH): the values under every path, flat."""
        wanted = [ops.as_path(p) for p in paths]
        device = self._device(endpoint)
        fmt = ops.composite_format(device.reg) if format is None else ContentFormat.of(format)
        message = self._composite_request(device, Code.FETCH, wanted, fmt)
        response = await self._call(device, message, timeout)
        return self._values_response(device, response, fmt)

    async def write_composite(
        self,
        endpoint: str,
        values: Mapping[LwM2mPath, Value],
        *,
        format: int | None = None,
        timeout: float | None = None,
    ) -> Response[None]:
        """Write-Composite (iPATCH): resource (instance) path -> value."""
        device = self._device(endpoint)
        fmt = ops.composite_format(device.reg) if format is None else ContentFormat.of(format)
        payload = encode(fmt, values, None, self._model_of(device.reg))
        message = self._request(device, Code.iPATCH, ROOT, payload, content_format=fmt)
        return self._plain(await self._call(device, message, timeout))

    # -- observation --------------------------------------------------------------------------------

    async def observe(
        self, endpoint: str, path: Path, *, format: int | None = None, timeout: float | None = None
    ) -> Response[Node]:
        """Observe ``path``: the current value in ``value``, the handle in ``observation`` (None if
        the device answered without accepting the observation). An older observation of the same
        path is cancelled (passively) once the new one is accepted."""
        path = ops.as_path(path)
        device = self._device(endpoint)
        model_of = self._model_of(device.reg)
        fmt = ops.read_format(device.reg, model_of, path) if format is None else format
        message = self._request(device, Code.GET, path, accept=fmt, observe=0)
        state = self._new_observation(device, (path,), False, fmt, path)
        response = await self._call(device, message, timeout, observation=state, token=state.token)
        result = self._node_response(device, path, response, fmt)
        return self._activated(device, state, response, result)

    async def observe_composite(
        self, endpoint: str, paths: Iterable[Path], *, format: int | None = None, timeout: float | None = None
    ) -> Response[dict[LwM2mPath, Value]]:
        """Observe-Composite (FETCH with Observe): current values in ``value``, handle in ``observation``."""
        wanted = tuple(ops.as_path(p) for p in paths)
        device = self._device(endpoint)
        fmt = ops.composite_format(device.reg) if format is None else ContentFormat.of(format)
        message = self._composite_request(device, Code.FETCH, list(wanted), fmt, observe=0)
        state = self._new_observation(device, wanted, True, fmt, None)
        response = await self._call(device, message, timeout, observation=state, token=state.token)
        result = self._values_response(device, response, fmt)
        return self._activated(device, state, response, result)

    async def cancel_observation(
        self, observation: Observation, *, active: bool = True, timeout: float | None = None
    ) -> None:
        """Stop an observation. ``active``: tell the device now (GET/FETCH with Observe=1 on the same
        token); otherwise forget it and reset its next notification. Never raises for a device that
        is gone; an active cancel raises like any request if the device does not answer."""
        self.exchanges.forget(observation.token)
        device = self.registrations.device(observation.endpoint)
        if device is None or device.reg.id != observation.registration_id:
            return
        if device.observations is not None:
            device.observations.discard(observation.token)
        if not active:
            return
        if observation.composite:
            fmt = ContentFormat.of(observation.content_format)
            message = self._composite_request(device, Code.FETCH, list(observation.paths), fmt, observe=1)
        else:
            message = self._request(device, Code.GET, observation.path, accept=observation.content_format, observe=1)
        await self._call(device, message, timeout, token=observation.token)

    def _new_observation(
        self, device: Device, paths: tuple[LwM2mPath, ...], composite: bool, fmt: int, path: LwM2mPath | None
    ) -> ObservationState:
        token = self.exchanges.new_token()
        public = Observation(device.endpoint, device.reg.id, paths, composite, int(fmt), token)
        return ObservationState(public, path, device)

    def _activated(self, device: Device, state: ObservationState, message: Message, result: Response[T]) -> Response[T]:
        if self.exchanges.observation(state.token) is not state:
            return result  # not accepted (no Observe in the answer, or an error)
        if not device.active:
            self.exchanges.forget(state.token)
            return result
        observations = device.observations
        if observations is None:
            observations = device.observations = set()
        for token in list(observations):
            old = self.exchanges.observation(token)
            if old is None:
                observations.discard(token)
            elif old.public.paths == state.public.paths and old.public.composite == state.public.composite:
                self.exchanges.forget(token)
                observations.discard(token)
        observations.add(state.token)
        return Response(result.code, result.value, result.error, result.content_format, state.public)

    # -- answers ------------------------------------------------------------------------------------

    def _composite_request(
        self, device: Device, code: Code, paths: Sequence[LwM2mPath], fmt: ContentFormat, **options: Any
    ) -> Message:
        request_fmt = ops.composite_request_format(fmt)
        payload = encode_paths(request_fmt, paths)
        return self._request(device, code, ROOT, payload, content_format=request_fmt, accept=fmt, **options)

    def _node_response(self, device: Device, path: LwM2mPath, response: Message, requested: int) -> Response[Node]:
        if not response.code.is_successful():
            return self._error(response)
        cf = response.opt.content_format
        if cf is None:
            cf = requested
        try:
            node = decode(cf, response.payload, path, self._model_of(device.reg))
        except CodecError as e:
            raise InvalidResponse(f"{device.endpoint}: {path}: {e}", response.code) from None
        return Response(response.code, node, content_format=int(cf))

    def _values_response(
        self, device: Device, response: Message, requested: int
    ) -> Response[dict[LwM2mPath, Value]]:
        if not response.code.is_successful():
            return self._error(response)
        cf = response.opt.content_format
        if cf is None:
            cf = requested
        try:
            values = decode(cf, response.payload, None, self._model_of(device.reg))
        except CodecError as e:
            raise InvalidResponse(f"{device.endpoint}: composite answer: {e}", response.code) from None
        return Response(response.code, values, content_format=int(cf))

    @staticmethod
    def _plain(response: Message) -> Response[None]:
        if not response.code.is_successful():
            return LwM2mServer._error(response)
        return Response(response.code)

    @staticmethod
    def _error(response: Message) -> Response[Any]:
        text = response.payload[:_DIAGNOSTIC_LIMIT].decode("utf-8", "replace") if response.payload else None
        return Response(response.code, error=text)

