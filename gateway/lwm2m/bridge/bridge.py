"""The bridge: every registered LwM2M endpoint is a ThingsBoard child device.

Registration
    The endpoint's profile is chosen (:meth:`ProfileSet.choose`: name pattern, object list, default)
    and ``hub.connect(endpoint, profile name)`` queued; once that connect record is written, the
    after-registration work is queued: write the profile's notification attributes, observe (SINGLE,
    COMPOSITE_ALL or COMPOSITE_BY_OBJECT; a device without composite support is observed path by path),
    then read as the profile's ``after_registration`` says. The values those answers carry go upstream
    like notifications. De-registration, lifetime expiry and re-registration disconnect the device.

Values
    Notifications and Send become telemetry records under the profile's key names, one record per
    device timestamp (SenML ``bt``/``t``), else stamped with the gateway's receive time; attribute
    paths become client attributes. ``hub.telemetry_nowait`` is called without awaiting (one future per
    outbox group commit, watched once); the LwM2M server has acknowledged a CON notification or Send
    before this runs, so the acknowledgement precedes durability by one group commit (~50 ms).
    Values that arrive before the endpoint's connect record is written (a Send right after Register)
    are held, bounded per endpoint, and sent right after it, so ThingsBoard never creates the device
    with the wrong type.

Downlink
    A shared attribute whose key is a key of the endpoint's profile is written to that resource
    (Write, replace). RPCs are ThingsBoard's LwM2M methods (:mod:`gateway.lwm2m.bridge.rpc`).

Cost
    No task per endpoint: one task writes connects, disconnects and attributes through the hub (in
    order, gathered per batch so they share group commits) and ``workers`` tasks work off the
    after-registration queue, which holds each endpoint at most once (so it is bounded by the number of
    registrations). Per endpoint: one small slotted object; profiles' per-shape plans are shared.

Communication log
    A profile with ``transport_log = "telemetry"`` sends each event of its endpoints (registration,
    update, de-registration, every request the bridge or an RPC makes and its result, observation
    ends) as telemetry key ``transportLog``, as ThingsBoard's LwM2M transport does; ``"log"`` writes them
    to the service's log (logger ``gateway.lwm2m.transport``) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from gateway.core.hub import DeviceHub, RpcError
from gateway.logs import RateLimited
from gateway.lwm2m.bridge.mapping import (
    Plan,
    coerce,
    group_by_object,
    plan_for,
    resource_node,
    uplink_records,
)
from gateway.lwm2m.bridge.profiles import AfterRegistration, ObserveStrategy, Profile, ProfileSet
from gateway.lwm2m.bridge.rpc import LwM2mRpcError, RpcTarget, run_rpc
from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.model.types import Operations
from gateway.lwm2m.node import Node, ObjLink, ResourceInstance, TimestampedValue, iter_leaves, resource_model
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import (
    DeregistrationReason,
    DeviceNotRegistered,
    LwM2mError,
    LwM2mServer,
    Observation,
    ObservationEnd,
    Registration,
    RegistrationListener,
    RegistrationUpdate,
    RequestFailed,
    Response,
)

__all__ = ["BridgeConfig", "BridgeStats", "LwM2mBridge"]

log = logging.getLogger("gateway.lwm2m.bridge")
transport_log = logging.getLogger("gateway.lwm2m.transport")

TRANSPORT_LOG_KEY: Final = "transportLog"
_COMPOSITE_FORMATS: Final = frozenset({ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR})


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    #: tasks working off the after-registration queue (write attributes, observe, read)
    workers: int = 32
    #: deadline of each after-registration request (None: the LwM2M server's request timeout)
    request_timeout: float | None = None
    #: values (and log lines) held per endpoint until its connect record is written
    held_per_endpoint: int = 256
    #: connects, disconnects and attribute sets handed to the hub at once (they share group commits)
    hub_batch: int = 1000
    #: how long the shared-attribute request after registration waits for ThingsBoard
    attribute_timeout: float = 10.0
    #: shared-attribute requests after registration in flight at once
    sync_concurrency: int = 32


@dataclass(slots=True)
class BridgeStats:
    endpoints: int = 0  # registered endpoints the bridge serves now
    connects: int = 0
    disconnects: int = 0
    setups_done: int = 0  # after-registration sequences completed
    setup_queue: int = 0  # endpoints waiting for their after-registration sequence
    setup_errors: int = 0  # after-registration requests that failed or got an error answer
    notifications: int = 0
    sends: int = 0
    records: int = 0  # telemetry records queued
    attribute_sets: int = 0  # client-attribute records queued
    held: int = 0  # values held until the endpoint's connect record was written
    held_dropped: int = 0  # of those, dropped because the per-endpoint bound was reached
    unsendable: int = 0  # values that are not JSON (NaN, infinity)
    queue_failures: int = 0  # outbox commits that failed for records of this bridge
    attribute_writes: int = 0  # shared attribute updates written to a device
    attribute_write_errors: int = 0
    rpcs: int = 0
    rpc_errors: int = 0


class _Endpoint:
    """What the bridge keeps per registered endpoint."""

    __slots__ = ("active", "connected", "held", "held_barrier", "last_log_ms", "name", "plan", "queued", "reg")

    def __init__(self, reg: Registration, plan: Plan) -> None:
        self.name = reg.endpoint
        self.reg = reg
        self.plan = plan
        self.active = True
        self.connected = False  # the connect record is written: values may follow
        self.queued = False  # in the after-registration queue
        self.held: list[tuple[Sequence[TimestampedValue], float] | str] | None = None
        #: done once the held values are durable (a held notification's ACK waits for it)
        self.held_barrier: asyncio.Future[None] | None = None
        self.last_log_ms = 0

    @property
    def profile(self) -> Profile:
        return self.plan.profile


class LwM2mBridge(RegistrationListener):
    """Connects the LwM2M server to the device hub (see the module docstring).

    Create it before the server starts (it listens from construction), ``await start()``, and
    ``await stop()`` after the server stopped (so that the disconnects of every endpoint are written)
    and before the outbox closes.
    """

    name = "lwm2m"

    def __init__(
        self, server: LwM2mServer, hub: DeviceHub, profiles: ProfileSet, *, config: BridgeConfig | None = None
    ) -> None:
        self.server = server
        self.hub = hub
        self.profiles = profiles
        self.config = config or BridgeConfig()
        self._endpoints: dict[str, _Endpoint] = {}
        self._setup: asyncio.Queue[_Endpoint] = asyncio.Queue()
        self._hub_ops: deque[tuple[str, Any, Any]] = deque()
        self._hub_wakeup = asyncio.Event()
        self._hub_idle = asyncio.Event()
        self._hub_idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._hub_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._setup_busy = 0  # endpoints queued for, or in, their after-registration sequence
        self._last_future: asyncio.Future[None] | None = None
        #: what the current on_notification/on_send call accepted becomes durable with this
        self._barrier: asyncio.Future[None] | None = None
        self._stats = BridgeStats()
        self._sync_queue: deque[tuple[_Endpoint, list[str]]] = deque()
        self._sync_wakeup = asyncio.Event()
        self._complain = RateLimited(log, interval=60.0)
        server.add_listener(self)

    # -- life cycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._hub_task = loop.create_task(self._hub_loop(), name="lwm2m-bridge-hub")
        self._tasks = [
            loop.create_task(self._work(), name=f"lwm2m-bridge-setup-{i}") for i in range(max(1, self.config.workers))
        ]
        self._tasks.append(loop.create_task(self._sync_loop(), name="lwm2m-bridge-attribute-sync"))

    async def stop(self) -> None:
        """Stop the after-registration work, write what is queued for the hub, stop listening."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._stopping = True
        self._hub_wakeup.set()
        if self._hub_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._hub_task
            self._hub_task = None
        with contextlib.suppress(ValueError):
            self.server.remove_listener(self)

    async def idle(self) -> None:
        """Wait until every queued connect, disconnect and attribute set has been handed to the hub
        and every queued after-registration sequence has finished (for tests and benchmarks)."""
        while True:
            await self._setup.join()
            await self._hub_idle.wait()
            if not self._hub_ops and self._setup_busy == 0:
                return

    def stats(self) -> BridgeStats:
        stats = BridgeStats(**asdict(self._stats))
        stats.endpoints = len(self._endpoints)
        stats.setup_queue = self._setup.qsize()
        return stats

    def profile_of(self, endpoint: str) -> str | None:
        """The profile (ThingsBoard device type) the endpoint uses now, None if not registered."""
        ep = self._endpoints.get(endpoint)
        return None if ep is None else ep.profile.name

    # -- registration events (called synchronously by the server) ----------------------------------------------

    def on_registered(self, registration: Registration) -> None:
        profile = self.profiles.choose(registration.endpoint, registration.objects)
        ep = _Endpoint(registration, plan_for(profile, registration))
        old = self._endpoints.get(ep.name)
        if old is not None:  # normally ended by on_deregistered(REPLACED) first
            old.active = False
            self._queue_hub("disconnect", old.name)
        self._endpoints[ep.name] = ep
        self._queue_hub("connect", ep)
        self._log(ep, _registration_text("Registration", registration) + f", profile {profile.name!r}")

    def on_updated(self, registration: Registration, update: RegistrationUpdate) -> None:
        ep = self._current(registration)
        if ep is None:
            return
        ep.reg = registration
        if update.links is not None:
            plan = plan_for(ep.profile, registration)
            self._log(ep, _registration_text("Update", registration))
            if plan is not ep.plan:
                ep.plan = plan
                if ep.connected:  # else the connect's completion queues it, with this plan
                    self._queue_setup(ep)
        elif not update.empty:
            self._log(ep, _registration_text("Update", registration))

    def on_deregistered(self, registration: Registration, reason: DeregistrationReason) -> None:
        ep = self._current(registration)
        if ep is None:
            return
        self._log(ep, f"De-registration ({reason.value})")
        ep.active = False
        del self._endpoints[ep.name]
        self._queue_hub("disconnect", ep.name)

    def on_notification(
        self, registration: Registration, observation: Observation, values: list[TimestampedValue], ts: float
    ) -> None:
        self._barrier = None
        ep = self._endpoints.get(registration.endpoint)
        if ep is None or ep.reg.id != registration.id:
            return
        self._stats.notifications += 1
        if not ep.connected:
            self._hold(ep, values, ts)
            return
        if len(values) == 1:  # the usual notification: one value, no device time
            path, value, vts = values[0]
            target = ep.plan.targets.get(path)
            if target is not None and not target.attribute:
                kind = type(value)
                if kind is float:
                    if not math.isfinite(value):  # type: ignore[arg-type]
                        self._stats.unsendable += 1
                        return
                elif kind is bytes:
                    value = value.hex()  # type: ignore[union-attr]
                elif kind is ObjLink:
                    value = str(value)
                ts_ms = int((ts if vts is None else vts) * 1000)
                self._queued(self.hub.telemetry_nowait(ep.name, {target.key: value}, ts_ms))
                return
        self._post(ep, values, ts)

    def on_send(self, registration: Registration, values: list[TimestampedValue], ts: float) -> None:
        self._barrier = None
        ep = self._endpoints.get(registration.endpoint)
        if ep is None or ep.reg.id != registration.id:
            return
        self._stats.sends += 1
        if ep.connected:
            self._post(ep, values, ts)
        else:
            self._hold(ep, values, ts)

    def durable_barrier(self) -> asyncio.Future[None] | None:
        return self._barrier

    def on_observation_ended(self, registration: Registration, observation: Observation, why: ObservationEnd) -> None:
        ep = self._current(registration)
        if ep is not None:
            self._log(ep, f"{observation} ended: {why.value}")

    def _current(self, registration: Registration) -> _Endpoint | None:
        ep = self._endpoints.get(registration.endpoint)
        return ep if ep is not None and ep.reg.id == registration.id else None

    # -- values upstream --------------------------------------------------------------------------------

    def _post(self, ep: _Endpoint, values: Sequence[TimestampedValue], ts: float) -> None:
        records, attributes, dropped = uplink_records(ep.plan.targets, values, int(ts * 1000))
        self._stats.unsendable += dropped
        name = ep.name
        for ts_ms, record in records:
            self._queued(self.hub.telemetry_nowait(name, record, ts_ms))
        if attributes:
            self._stats.attribute_sets += 1
            waiter = asyncio.get_running_loop().create_future()
            self._queue_hub("attributes", name, (attributes, waiter))
            self._barrier = waiter

    def _queued(self, future: asyncio.Future[None]) -> None:
        self._stats.records += 1
        self._barrier = future
        if future is not self._last_future:  # one future per group commit: watch each once
            self._last_future = future
            future.add_done_callback(self._committed)

    def _committed(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._stats.queue_failures += 1
            self._complain.warning(("outbox",), "LwM2M values not queued: %s", exc)

    def _hold(self, ep: _Endpoint, values: Sequence[TimestampedValue] | str, ts: float) -> None:
        held = ep.held
        if held is None:
            held = ep.held = []
        if len(held) >= self.config.held_per_endpoint:
            self._stats.held_dropped += 1
            self._complain.warning(
                ("held", ep.name), "%s: values dropped while its connect record is not written yet", ep.name
            )
            return
        self._stats.held += 1
        held.append(values if isinstance(values, str) else (values, ts))
        if not isinstance(values, str):
            if ep.held_barrier is None:
                ep.held_barrier = asyncio.get_running_loop().create_future()
            self._barrier = ep.held_barrier

    def _connected(self, ep: _Endpoint) -> None:
        waiter, ep.held_barrier = ep.held_barrier, None
        if not ep.active:
            if waiter is not None and not waiter.done():  # it left before its connect was written
                waiter.set_exception(_NotKept(f"{ep.name} de-registered before its values were queued"))
                waiter.exception()  # retrieved: the ACK is withheld, nobody else waits
            return
        ep.connected = True
        held, ep.held = ep.held, None
        self._barrier = None
        for item in held or ():
            if isinstance(item, str):
                self._log(ep, item)
            else:
                self._post(ep, item[0], item[1])
        if waiter is not None:
            _chain(self._barrier, waiter)
        self._queue_setup(ep)

    def _log(self, ep: _Endpoint | None, text: str) -> None:
        if ep is None:
            return
        mode = ep.plan.profile.transport_log
        if mode == "off":
            return
        if mode == "log":
            transport_log.info("%s: %s", ep.name, text)
            return
        if not ep.connected:
            self._hold(ep, text, 0.0)
            return
        ts_ms = max(int(time.time() * 1000), ep.last_log_ms + 1)  # one line per ms: same-ts values collide
        ep.last_log_ms = ts_ms
        self._queued(self.hub.telemetry_nowait(ep.name, {TRANSPORT_LOG_KEY: text}, ts_ms))

    # -- the hub: connects, disconnects, attributes, in order ---------------------------------------------------

    def _queue_hub(self, kind: str, subject: Any, payload: Any = None) -> None:
        self._hub_ops.append((kind, subject, payload))
        self._hub_idle.clear()
        self._hub_wakeup.set()

    async def _hub_loop(self) -> None:
        hub = self.hub
        while True:
            if not self._hub_ops:
                self._hub_idle.set()
                if self._stopping:
                    return
                self._hub_wakeup.clear()
                await self._hub_wakeup.wait()
                continue
            batch = [self._hub_ops.popleft() for _ in range(min(len(self._hub_ops), self.config.hub_batch))]
            calls: list[Awaitable[None]] = []
            for kind, subject, payload in batch:
                if kind == "connect":
                    calls.append(hub.connect(subject.name, subject.profile.name, self))
                elif kind == "disconnect":
                    calls.append(hub.disconnect(subject))
                else:
                    calls.append(hub.attributes(subject, payload[0]))
            # gathered in order: each call's record is appended in this order, and all share commits
            results = await asyncio.gather(*calls, return_exceptions=True)
            for (kind, subject, payload), result in zip(batch, results, strict=True):
                if kind == "attributes":
                    _chain_result(payload[1], result)
                if isinstance(result, BaseException):
                    self._stats.queue_failures += 1
                    who = subject.name if kind == "connect" else subject
                    self._complain.warning(("hub", kind), "LwM2M %s of %s not queued: %s", kind, who, result)
                if kind == "connect":
                    self._stats.connects += 1
                    self._connected(subject)
                elif kind == "disconnect":
                    self._stats.disconnects += 1

    # -- after registration -----------------------------------------------------------------------------

    def _queue_setup(self, ep: _Endpoint) -> None:
        if not ep.queued:
            ep.queued = True
            self._setup_busy += 1
            self._setup.put_nowait(ep)

    async def _work(self) -> None:
        while True:
            ep = await self._setup.get()
            try:
                ep.queued = False
                if ep.active:
                    await self._set_up(ep)
                    self._stats.setups_done += 1
            except _Gone:
                pass
            except Exception:
                log.exception("after-registration work for %s failed", ep.name)
            finally:
                self._setup_busy -= 1
                self._setup.task_done()

    def _composite_ok(self, reg: Registration) -> bool:
        return reg.lwm2m_version != "1.0" and any(f in _COMPOSITE_FORMATS for f in reg.content_formats)

    async def _set_up(self, ep: _Endpoint) -> None:
        """Write notification attributes, observe, read: the profile's after-registration sequence."""
        plan = ep.plan
        profile = plan.profile
        server = self.server
        name = ep.name
        timeout = self.config.request_timeout
        for path, attributes in plan.notify:
            await self._call(ep, f"WriteAttributes {path} {dict(attributes)}",
                             server.write_attributes(name, path, attributes, timeout=timeout))

        composite = profile.observe_strategy is not ObserveStrategy.SINGLE and self._composite_ok(ep.reg)
        if profile.observe_strategy is not ObserveStrategy.SINGLE and not composite and plan.observe:
            self._log(ep, f"{profile.observe_strategy.value}: the device has no composite operations "
                          "(LwM2M 1.0 or no SenML format): observing path by path")
        for group in _groups(plan.observe, profile.observe_strategy if composite else ObserveStrategy.SINGLE):
            if len(group) == 1 and not composite:
                response = await self._call(ep, f"Observe {group[0]}", server.observe(name, group[0], timeout=timeout))
                self._post_node(ep, group[0], response)
            else:
                what = "ObserveComposite " + ",".join(map(str, group))
                values = await self._call(ep, what, server.observe_composite(name, group, timeout=timeout))
                self._post_values(ep, values)

        after = profile.after_registration
        if after is AfterRegistration.READ_AND_OBSERVE_PROFILE and plan.unobserved:
            if profile.initial_read_as_strategy and composite:
                for group in _groups(plan.unobserved, profile.observe_strategy):
                    what = "ReadComposite " + ",".join(map(str, group))
                    values = await self._call(ep, what, server.read_composite(name, group, timeout=timeout))
                    self._post_values(ep, values)
            else:
                for path in plan.unobserved:
                    response = await self._call(ep, f"Read {path}", server.read(name, path, timeout=timeout))
                    self._post_node(ep, path, response)
        elif after is AfterRegistration.READ_AND_OBSERVE_ALL:
            for oid in sorted(ep.reg.objects):
                if oid == 0:
                    continue
                path = LwM2mPath(oid)
                response = await self._call(ep, f"Read {path}", server.read(name, path, timeout=timeout))
                self._post_node(ep, path, response)
        keys = self._writable_keys(ep)
        if keys:
            self._sync_queue.append((ep, keys))
            self._sync_wakeup.set()

    # -- shared attributes on registration ---------------------------------------------------------------

    def _writable_keys(self, ep: _Endpoint) -> list[str]:
        reg = ep.reg
        model_of = reg.models.model_of if reg.models is not None else self.server.models.model_of
        keys = []
        for key, path in ep.plan.keys.items():
            if path.depth < 3:
                continue
            rmodel = resource_model(model_of, path)
            if rmodel is not None and Operations.W in rmodel.operations:
                keys.append(key)
        return keys

    async def _sync_loop(self) -> None:
        """Write the shared attributes ThingsBoard holds for each new registration's writable keys
        (as ThingsBoard's own LwM2M transport does on registration): a device that was away when
        one changed gets it now. One task for all endpoints, in registration order: each waits until
        ThingsBoard has its CONNECT (asked earlier, ThingsBoard would create the device with the
        default type), then up to ``sync_concurrency`` requests run at once."""
        queue = self._sync_queue
        slots = asyncio.Semaphore(self.config.sync_concurrency)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not queue:
                    self._sync_wakeup.clear()
                    await self._sync_wakeup.wait()
                    continue
                ep, keys = queue.popleft()
                if not ep.active:
                    continue
                # per-device mode: the device was provisioned under its profile; its own session is
                # awaited in its task (not here: sessions are capped, the others must not wait)
                routed = self.hub.is_routed(ep.name)
                if not routed and not await self.hub.known_upstream(ep.name):
                    self._log(ep, "shared attributes not synced: ThingsBoard does not know the device yet")
                    continue
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(self._sync_one(ep, keys, routed))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _t: slots.release())
        finally:
            for task in list(running):
                task.cancel()

    async def _sync_one(self, ep: _Endpoint, keys: list[str], routed: bool = False) -> None:
        if routed and not await self.hub.known_upstream(ep.name):
            self._log(ep, "shared attributes not synced: no ThingsBoard session for the device")
            return
        try:
            timeout = self.config.attribute_timeout
            values = await self.hub.request_attributes(ep.name, keys, shared=True, timeout=timeout)
        except (RpcError, TimeoutError, ConnectionError) as exc:
            self._log(ep, f"shared attributes not synced: {exc}")
            return
        if values and ep.active:
            self._log(ep, f"shared attributes to write: {', '.join(sorted(values))}")
            await self.attributes_updated(ep.name, values, ())

    async def _call(self, ep: _Endpoint, what: str, request: Awaitable[Response[Any]]) -> Response[Any] | None:
        """One after-registration request: its answer if it succeeded; logged either way. Raises
        :class:`_Gone` when the registration ended (the rest of the sequence is pointless)."""
        if not (ep.active and self._endpoints.get(ep.name) is ep):
            if asyncio.iscoroutine(request):
                request.close()
            raise _Gone
        try:
            response = await request
        except (DeviceNotRegistered, RequestFailed) as exc:
            if not ep.active or self.server.registrations.get(ep.name) is None:
                raise _Gone from None
            self._stats.setup_errors += 1
            self._log(ep, f"{what}: {exc}")
            return None
        except (LwM2mError, ValueError) as exc:
            self._stats.setup_errors += 1
            self._log(ep, f"{what}: {exc}")
            log.debug("%s: %s: %s", ep.name, what, exc)
            return None
        self._log(ep, f"{what}: {response}")
        if not response.ok:
            self._stats.setup_errors += 1
            return None
        return response

    def _post_node(self, ep: _Endpoint, path: LwM2mPath, response: Response[Any] | None) -> None:
        if response is None or response.value is None or not ep.active:
            return
        node: Node = response.value
        if isinstance(node, ResourceInstance):
            values = [TimestampedValue(path, node.value, None)]
        else:
            values = [TimestampedValue(p, v, None) for p, v, _ in iter_leaves(node, path)]
        self._post(ep, values, time.time())

    def _post_values(self, ep: _Endpoint, response: Response[Any] | None) -> None:
        if response is None or not response.value or not ep.active:
            return
        values: Mapping[LwM2mPath, Any] = response.value
        self._post(ep, [TimestampedValue(p, v, None) for p, v in values.items()], time.time())

    # -- Southbound: ThingsBoard -> device ----------------------------------------------------------------

    async def rpc(self, device: str, method: str, params: Any, timeout: float) -> Any:
        """ThingsBoard's LwM2M RPC ``method`` on ``device`` (see :mod:`gateway.lwm2m.bridge.rpc`)."""
        self._stats.rpcs += 1
        reg = self.server.registrations.get(device)
        ep = self._endpoints.get(device)
        if reg is None or ep is None:
            self._stats.rpc_errors += 1
            raise LwM2mRpcError("device_offline", f"{device} is not registered", "SERVICE_UNAVAILABLE")
        reg_id = reg.id

        def post(values: list[TimestampedValue]) -> None:
            current = self._endpoints.get(device)
            if current is not None and current.reg.id == reg_id and current.connected:
                self._post(current, values, time.time())

        target = RpcTarget(self.server, device, reg, ep.plan, timeout, post)
        self._log(ep, f"RPC {method} {params}")
        try:
            reply = await run_rpc(target, method, params)
        except LwM2mRpcError as exc:
            self._stats.rpc_errors += 1
            self._log(self._endpoints.get(device), f"RPC {method}: {exc.result}: {exc}")
            raise
        self._log(self._endpoints.get(device), f"RPC {method}: {reply.get('result')}")
        return reply

    async def attributes_updated(self, device: str, values: Mapping[str, Any], deleted: Sequence[str]) -> None:
        """Shared attributes whose keys are keys of the device's profile are written to their resources."""
        ep = self._endpoints.get(device)
        if ep is None:
            return
        reg = ep.reg
        model_of = reg.models.model_of if reg.models is not None else self.server.models.model_of
        for key, value in values.items():
            path = ep.plan.keys.get(key)
            if path is None or path.depth < 3:
                continue
            try:
                if path.depth == 3:
                    node: Node = resource_node(path, value, model_of)
                else:
                    rmodel = resource_model(model_of, path)
                    converted, rtype = coerce(value, rmodel.type if rmodel is not None else None, path)
                    node = ResourceInstance(path.ids[3], converted, rtype)
            except ValueError as exc:
                self._stats.attribute_write_errors += 1
                self._log(ep, f"shared attribute {key}: {exc}")
                log.warning("%s: shared attribute %r not written: %s", device, key, exc)
                continue
            what = f"Write {path} (shared attribute {key})"
            try:
                response = await self.server.write(device, path, node, replace=True)
            except (LwM2mError, ValueError) as exc:
                self._stats.attribute_write_errors += 1
                self._log(self._endpoints.get(device), f"{what}: {exc}")
                log.warning("%s: %s failed: %s", device, what, exc)
                continue
            self._log(self._endpoints.get(device), f"{what}: {response}")
            if response.ok:
                self._stats.attribute_writes += 1
            else:
                self._stats.attribute_write_errors += 1
                log.warning("%s: %s: %s", device, what, response)


class _NotKept(Exception):
    """Values a device sent were not queued (their endpoint left before its connect was written)."""


def _chain(source: asyncio.Future[None] | None, target: asyncio.Future[None]) -> None:
    """Complete ``target`` like ``source`` (at once if there is nothing to wait for)."""
    if source is None:
        if not target.done():
            target.set_result(None)
        return

    def done(f: asyncio.Future[None]) -> None:
        _chain_result(target, f.exception() if not f.cancelled() else _NotKept("cancelled"))

    if source.done():
        done(source)
    else:
        source.add_done_callback(done)


def _chain_result(target: asyncio.Future[None], result: object) -> None:
    if target.done():
        return
    if isinstance(result, BaseException):
        target.set_exception(result)
        target.exception()  # retrieved here: the waiter's owner reads it through the done callback
    else:
        target.set_result(None)


class _Gone(Exception):
    """The endpoint's registration ended during its after-registration sequence."""


def _groups(paths: Sequence[LwM2mPath], strategy: ObserveStrategy) -> list[list[LwM2mPath]]:
    if not paths:
        return []
    if strategy is ObserveStrategy.SINGLE:
        return [[p] for p in paths]
    if strategy is ObserveStrategy.COMPOSITE_ALL:
        return [list(paths)]
    return group_by_object(paths)


def _registration_text(what: str, reg: Registration) -> str:
    mode = reg.binding + ("Q" if reg.queue_mode and "Q" not in reg.binding else "")
    objects = ",".join(reg.object_paths())
    return f"{what}: lwm2m={reg.lwm2m_version} b={mode} lt={reg.lifetime} objects={objects} from {reg.address}"
