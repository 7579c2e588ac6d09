"""Per-device mode: endpoints of some profiles go upstream each over its own device-API session.

What it does
    A profile with ``[upstream] mode = "device"`` takes its endpoints off the gateway API: each becomes
    a plain ThingsBoard device with its own MQTT session on ``v1/devices/me/...`` (telemetry,
    attributes, claim up; server-side RPC and shared attributes down). The first time an endpoint is
    seen it is provisioned through the Device Provisioning API with the profile's key and secret and
    the endpoint name as device name (:func:`gateway.upstream.provisioning.request_credentials`, no
    ``"gateway"`` flag); the credentials go to :mod:`gateway.store.device_credentials` (0600, atomic,
    one small store per device) and are reused after every restart. Class :class:`DeviceSessions`
    is the :class:`gateway.core.hub.DeviceRoute` the hub sends those endpoints' records to.

Durability: a second outbox, not a column in the first
    Their records go to their own outbox file (same :class:`~gateway.store.outbox.Outbox`, opened
    with ``by_device=True``: an index on (device, id) so that each device's records are read alone,
    in id order). Why not a route column in the gateway's outbox: the gateway-API uplink reads
    ``id > cursor`` with no filter, and every insert there stays as cheap as it is measured (an
    extra index costs every insert; a filter would make it skip device-mode rows). The second file
    costs its own database thread and its own fsync per group commit, only while device-mode
    records flow. Delivery is as in the gateway uplink: at least once, ordered per device (one
    cursor per device, only ever one read per device at a time, packing keeps order), a record is
    deleted only on the PUBACK of the publish that carried it; a dropped connection rewinds the
    device's cursor to before its lowest unacknowledged record. Records are stored under the device
    API's kinds (``SELF_TELEMETRY``...), so :func:`gateway.upstream.thingsboard.pack` builds the
    ``v1/devices/me/...`` payloads unchanged.

Sessions: lazy, capped, least recently used closed first
    A device wants a session while it is registered (ThingsBoard delivers server-side RPC only to a
    connected device, so a registered device-mode endpoint keeps its session) or while it has
    records to send. At most ``max_sessions`` sessions exist. Beyond the cap, a device with records
    to send closes the least recently idle session (no records pending, nothing in flight, no RPC
    running); if there is none, it waits in line. A device that only wants to stay reachable for RPC
    never evicts anyone: it waits for a free slot (with more registered device-mode endpoints than
    the cap, the ones beyond it get their RPCs only once a slot frees; their data still flows). An
    unregistered device's session is closed as soon as its records are delivered.

Cost (20,000 endpoints)
    An idle endpoint is one small slotted object and a dict entry: no task, no timer. Nothing scans
    all devices: the ready line, the two waiting lines and the idle LRU are deques and an ordered
    dict; a commit marks only the devices it carried. One pump task reads for up to ``read_devices``
    ready devices per trip to the database thread. Tasks exist per provisioning worker (at most
    ``provision_concurrency``, only while some device waits for one), per running RPC, and inside
    each open session (paho's keepalive timer): bounded by the cap. ``benchmarks/device_sessions_bench.py``
    measures the cost per session.

Problems are reported plainly: a provisioning refusal (NOT_FOUND, FAILURE) is logged once per
device with the reason, counted, listed in :meth:`DeviceSessions.status`, and asked again after
``provision_retry_s``; rejected credentials (CONNACK 4/5) likewise. Secrets never reach a log line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.core.clock import Clock
from gateway.core.records import Record, RecordKind
from gateway.logs import RateLimited
from gateway.store import device_credentials
from gateway.store.credentials import GatewayCredentials
from gateway.store.outbox import Outbox, OutboxError, OutboxLimits
from gateway.upstream import thingsboard as tb
from gateway.upstream.downlink import DeviceDirectory, run_rpc_handler
from gateway.upstream.provisioning import (
    ProvisioningError,
    ProvisioningRefused,
    ProvisioningTimeout,
    ProvisionSettings,
    request_credentials,
)
from gateway.upstream.session import (
    ConnectionLost,
    Credentials,
    MqttSession,
    SessionConfig,
    SessionLimits,
    SessionState,
    TlsSettings,
)

log = logging.getLogger("gateway.upstream.device_sessions")
#: The device sessions' own MQTT logs: errors only (a lost uplink would otherwise log one line per
#: session); what they have in common is logged here, rate-limited, with counts.
_SESSION_LOG = logging.getLogger("gateway.upstream.device_sessions.mqtt")
_SESSION_LOG.setLevel(logging.ERROR)

#: The device API's downlink: what every per-device session subscribes to.
DEVICE_SUBSCRIPTIONS: tuple[str, ...] = (
    tb.DEVICE_ATTRIBUTES,
    tb.DEVICE_ATTRIBUTES_RESPONSE + "+",
    tb.DEVICE_RPC_REQUEST + "+",
    tb.DEVICE_RPC_RESPONSE + "+",
)

# A child device's record kinds -> the device API's (what the packer turns into v1/devices/me/...).
_DEVICE_KIND: Mapping[RecordKind, RecordKind] = {
    RecordKind.TELEMETRY: RecordKind.SELF_TELEMETRY,
    RecordKind.ATTRIBUTES: RecordKind.SELF_ATTRIBUTES,
    RecordKind.CLAIM: RecordKind.SELF_CLAIM,
}

_HELD_RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class ProvisionKey:
    """A profile's provisioning settings (``[upstream]``); the secret never appears in ``repr``."""

    key: str = field(repr=False)
    secret: str = field(repr=False)
    credentials_type: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceModeSettings:
    host: str
    port: int = 1883
    tls: TlsSettings | None = None
    keepalive: int = 60
    connect_timeout: float = 30.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    rejected_retry: float = 600.0
    limits_timeout: float = 10.0
    ask_session_limits: bool = True  # False: ThingsBoard's defaults at once (a plain broker, benchmarks)
    credentials_dir: Path
    max_sessions: int = 1000
    provision_concurrency: int = 4
    provision_timeout_s: float = 30.0
    provision_retry_s: float = 300.0
    rpc_timeout: float = 30.0
    read_records: int = 1000  # per device and read
    read_bytes: int = 512 * 1024
    read_devices: int = 64  # devices read in one trip to the database thread

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if self.provision_concurrency < 1:
            raise ValueError("provision_concurrency must be >= 1")


class CredentialsState(enum.Enum):
    UNKNOWN = "unknown"  # not looked up since the start
    LOADING = "loading"
    ABSENT = "absent"  # none stored: provisioned once its profile is known (it registers)
    PROVISIONING = "provisioning"
    READY = "ready"
    REFUSED = "refused"  # NOT_FOUND / FAILURE: asked again after provision_retry_s
    FAILED = "failed"  # no answer, a bad answer, the disk: asked again with backoff
    REJECTED = "rejected"  # CONNACK 4/5 with the stored credentials: tried again after rejected_retry


@dataclass(slots=True)
class DeviceSessionStats:
    devices: int = 0  # device-mode endpoints seen since the start
    registered: int = 0
    sessions_open: int = 0
    sessions_connected: int = 0
    waiting_for_session: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0
    evictions: int = 0  # idle sessions closed to make room (the cap)
    provisioned: int = 0
    provision_refused: int = 0
    provision_failures: int = 0
    credentials_rejected: int = 0
    disconnections: int = 0  # sessions that lost (or could not make) their connection
    records_sent: int = 0  # acknowledged by PUBACK, resends included
    publishes: int = 0
    publishes_acked: int = 0
    publishes_failed: int = 0
    resends: int = 0
    dropped_oversize: int = 0
    rpc_requests: int = 0
    rpc_errors: int = 0
    replies_dropped: int = 0
    attribute_updates: int = 0
    malformed: int = 0


@dataclass(slots=True)
class _InFlight:
    ids: list[int]
    fut: asyncio.Future[None]
    generation: int


@dataclass(slots=True, eq=False)
class _Device:
    """One device-mode endpoint. Idle ones are just this: no task, no timer, no session."""

    name: str
    profile: str | None = None
    creds: Credentials | None = None
    cred: CredentialsState = CredentialsState.UNKNOWN
    registered: bool = False
    more: bool = False  # records may be waiting after the cursor
    epoch: int = 0  # commits that carried records of this device
    session: MqttSession | None = None
    cursor: int = 0  # every record up to here was published (or dropped) on this connection
    high_water: int = 0
    generation: int = 0  # changes at every rewind: publishes of an older one are void
    in_flight: dict[int, _InFlight] = field(default_factory=dict)
    queued: bool = False  # in the ready line
    reading: bool = False
    waiting_data: bool = False
    waiting_rpc: bool = False
    rpcs: int = 0  # server-side RPCs running
    failures: int = 0  # provisioning failures in a row (backoff)
    problem: str = ""  # the last refusal/rejection, for status
    retry: asyncio.TimerHandle | None = None


class DeviceSessions:
    """The per-device-mode route of the hub: records in, one MQTT device session per device out."""

    def __init__(
        self,
        outbox: Outbox,
        settings: DeviceModeSettings,
        profiles: Mapping[str, ProvisionKey],
        directory: DeviceDirectory,
        *,
        session_factory: Callable[..., MqttSession] = MqttSession,
    ) -> None:
        self._outbox = outbox
        self.settings = settings
        self._profiles = dict(profiles)
        self._directory = directory
        self._session_factory = session_factory
        self._devices: dict[str, _Device] = {}
        self._open: dict[str, _Device] = {}  # sessions open (connecting or connected): <= max_sessions
        self._idle: collections.OrderedDict[str, _Device] = collections.OrderedDict()  # LRU first
        self._waiting_data: collections.deque[_Device] = collections.deque()
        self._waiting_rpc: collections.deque[_Device] = collections.deque()
        self._ready: collections.deque[_Device] = collections.deque()
        self._wake = asyncio.Event()
        self._load_queue: list[_Device] = []
        self._provision_queue: collections.deque[_Device] = collections.deque()
        self._held: set[_Device] = set()
        self._held_timer: asyncio.TimerHandle | None = None
        self._batch_fut: asyncio.Future[None] | None = None
        self._batch_devices: set[str] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._provisioners = 0
        self._loader_running = False
        self._tasks: set[asyncio.Task[Any]] = set()  # RPCs, attribute updates, session stops
        self._pump: asyncio.Task[None] | None = None
        self._stats = DeviceSessionStats()
        self._registered = 0
        self._stopping = False
        self._complain = RateLimited(log, interval=60.0)
        self._listeners: list[Callable[[], None]] = []
        # attribute requests over device sessions: (device, request id) -> the answer's future
        self._attribute_calls: dict[tuple[str, int], asyncio.Future[tb.AttributeResponse]] = {}
        # devices whose session someone waits for (device -> futures), released when it is usable
        self._session_waiters: dict[str, list[asyncio.Future[None]]] = {}

    def add_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` after a device is provisioned or refused, or its credentials are rejected
        (status, LED, tests)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("device sessions listener failed")

    @classmethod
    async def open(
        cls,
        path: Path,
        settings: DeviceModeSettings,
        profiles: Mapping[str, ProvisionKey],
        directory: DeviceDirectory,
        *,
        limits: OutboxLimits | None = None,
        clock: Clock | None = None,
        commit_interval: float = 0.05,
        commit_records: int = 20000,
    ) -> DeviceSessions:
        """Open the device-mode outbox at ``path`` (OutboxError with a one-line reason) and build the route."""
        outbox = await Outbox.open(
            path,
            limits=limits or OutboxLimits(),
            clock=clock,
            commit_interval=commit_interval,
            commit_records=commit_records,
            log=logging.getLogger("gateway.store.device_outbox"),
            by_device=True,
        )
        return cls(outbox, settings, profiles, directory)

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    async def start(self) -> None:
        """Start the pump; devices with records queued from before get sessions to deliver them."""
        self._pump = asyncio.get_running_loop().create_task(self._run_pump(), name="device-sessions")
        for name in await self._outbox.pending_devices():
            dev = self._device(name)
            dev.more = True
            self._want(dev)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Make every record durable, give in-flight publishes ``drain_timeout`` s for their PUBACK,
        close every session and the outbox. What is not acknowledged is sent after the restart."""
        if self._stopping:
            return
        with contextlib.suppress(OutboxError):
            await self._outbox.flush()
        self._stopping = True
        pending = [e.fut for dev in self._open.values() for e in dev.in_flight.values() if not e.fut.done()]
        if pending:
            await asyncio.wait(pending, timeout=drain_timeout)
        tasks = [t for t in (self._pump, *self._workers, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for dev in self._devices.values():
            if dev.retry is not None:
                dev.retry.cancel()
        if self._held_timer is not None:
            self._held_timer.cancel()
        sessions = [dev.session for dev in self._open.values() if dev.session is not None]
        for dev in list(self._open.values()):
            dev.session = None
        self._open.clear()
        self._idle.clear()
        await asyncio.gather(*(s.stop() for s in sessions), *tasks, return_exceptions=True)
        await self._outbox.close()

    # -- the hub's route ------------------------------------------------------------------------------

    def owns(self, profile: str) -> bool:
        return profile in self._profiles

    def connected(self, device: str, profile: str) -> None:
        dev = self._device(device)
        dev.profile = profile
        if not dev.registered:
            dev.registered = True
            self._registered += 1
        self._want(dev)

    def disconnected(self, device: str) -> None:
        dev = self._devices.get(device)
        if dev is None or not dev.registered:
            return
        dev.registered = False
        self._registered -= 1
        self._check_idle(dev)

    def append(self, kind: RecordKind, device: str, body: str, ts_ms: int | None = None) -> asyncio.Future[None]:
        """Queue a record of ``device`` (durable when the returned future resolves, as the outbox's)."""
        fut = self._outbox.append(_DEVICE_KIND.get(kind, kind), device, body, ts_ms)
        if fut is not self._batch_fut:
            # One callback per group commit: it tells the devices it carried that they have records.
            self._batch_fut = fut
            self._batch_devices = set()
            fut.add_done_callback(functools.partial(self._committed, self._batch_devices))
        self._batch_devices.add(device)
        return fut

    # -- reporting ---------------------------------------------------------------------------------------

    def stats(self) -> DeviceSessionStats:
        s = self._stats
        s.devices = len(self._devices)
        s.registered = self._registered
        s.sessions_open = len(self._open)
        s.sessions_connected = sum(
            1 for d in self._open.values() if d.session is not None and d.session.state is SessionState.CONNECTED
        )  # at most max_sessions: for status, not a hot path
        s.waiting_for_session = len(self._waiting_data) + len(self._waiting_rpc)
        return replace(s)

    def device_state(self, device: str) -> dict[str, Any] | None:
        """One device's state for status and tests (None if never seen)."""
        dev = self._devices.get(device)
        if dev is None:
            return None
        session = dev.session
        return {
            "credentials": dev.cred.value,
            "registered": dev.registered,
            "session": session.state.value if session is not None else "none",
            "in_flight": len(dev.in_flight),
            "problem": dev.problem,
        }

    def status(self, max_problems: int = 20) -> dict[str, Any]:
        """Counters, and the devices whose provisioning or credentials were refused (the first few)."""
        problems: dict[str, str] = {}
        if self._stats.provision_refused or self._stats.credentials_rejected:
            for dev in self._devices.values():  # only when something was refused: rare, for people
                if dev.problem:
                    problems[dev.name] = dev.problem
                    if len(problems) >= max_problems:
                        break
        return {**self._stats_dict(), "problems": problems}

    def _stats_dict(self) -> dict[str, Any]:
        return asdict(self.stats())

    # -- wanting a session --------------------------------------------------------------------------------

    def _device(self, name: str) -> _Device:
        dev = self._devices.get(name)
        if dev is None:
            dev = self._devices[name] = _Device(name)
        return dev

    def _committed(self, names: set[str], fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # rejected by the outbox (its producers were told): nothing to send
        for name in names:
            dev = self._device(name)
            dev.epoch += 1
            dev.more = True
            self._want(dev)

    def _want(self, dev: _Device) -> None:
        """``dev`` may need its session (registered, or records to send): move it one step on."""
        if self._stopping:
            return
        if dev.session is not None:
            if dev.more:
                self._idle.pop(dev.name, None)
                self._schedule(dev)
            return
        if not (dev.registered or dev.more):
            return
        state = dev.cred
        if state is CredentialsState.READY:
            self._request_slot(dev)
        elif state is CredentialsState.UNKNOWN:
            dev.cred = CredentialsState.LOADING
            self._load_queue.append(dev)
            if not self._loader_running:
                self._loader_running = True
                self._spawn_worker(self._load_credentials())
        elif state is CredentialsState.ABSENT and dev.profile is not None:
            dev.cred = CredentialsState.PROVISIONING
            self._provision_queue.append(dev)
            if self._provisioners < self.settings.provision_concurrency:
                self._provisioners += 1
                self._spawn_worker(self._provision_worker())

    def _request_slot(self, dev: _Device) -> None:
        if dev.session is not None:
            return
        if len(self._open) < self.settings.max_sessions:
            self._open_session(dev)
            return
        if dev.more and self._idle:
            # Records wait: make room by closing the least recently idle session.
            self._evict_one()
            self._open_session(dev)
            return
        if dev.more:
            if not dev.waiting_data:
                dev.waiting_data = True
                self._waiting_data.append(dev)
        elif not dev.waiting_rpc:
            dev.waiting_rpc = True
            self._waiting_rpc.append(dev)

    def _evict_one(self) -> None:
        _, victim = self._idle.popitem(last=False)
        self._stats.evictions += 1
        self._close_session(victim)
        if victim.registered and not victim.waiting_rpc:
            victim.waiting_rpc = True  # it wants its session back, for RPC
            self._waiting_rpc.append(victim)

    def _admit(self) -> None:
        """Give free slots to the devices in line: those with records first."""
        cap = self.settings.max_sessions
        for line, flag in ((self._waiting_data, "waiting_data"), (self._waiting_rpc, "waiting_rpc")):
            while line and len(self._open) < cap:
                dev = line.popleft()
                setattr(dev, flag, False)
                if dev.session is None and (dev.registered or dev.more) and dev.cred is CredentialsState.READY:
                    self._open_session(dev)
        # Records still wait and idle sessions exist: swap them (least recently idle first).
        while self._waiting_data and self._idle:
            dev = self._waiting_data.popleft()
            dev.waiting_data = False
            if dev.session is None and dev.more and dev.cred is CredentialsState.READY:
                self._evict_one()
                self._open_session(dev)

    # -- sessions -------------------------------------------------------------------------------------------

    def _open_session(self, dev: _Device) -> None:
        assert dev.creds is not None
        st = self.settings
        session = self._session_factory(
            SessionConfig(
                host=st.host,
                port=st.port,
                credentials=dev.creds,
                tls=st.tls,
                keepalive=st.keepalive,
                connect_timeout=st.connect_timeout,
                reconnect_min=st.reconnect_min,
                reconnect_max=st.reconnect_max,
                rejected_retry=st.rejected_retry,
                limits_timeout=st.limits_timeout,
                ask_session_limits=st.ask_session_limits,
                subscriptions=DEVICE_SUBSCRIPTIONS,
            ),
            logger=_SESSION_LOG,
        )
        dev.session = session
        self._open[dev.name] = dev
        self._stats.sessions_opened += 1
        session.add_state_listener(functools.partial(self._on_state, dev, session))
        session.add_limits_listener(functools.partial(self._on_limits, dev, session))
        session.set_message_handler(functools.partial(self._on_message, dev, session))
        session.start()

    def _close_session(self, dev: _Device) -> None:
        session = dev.session
        if session is None:
            return
        dev.session = None
        self._open.pop(dev.name, None)
        self._idle.pop(dev.name, None)
        self._rewind(dev)
        self._stats.sessions_closed += 1
        self._spawn(session.stop(), f"closing the session of {dev.name!r}")

    def _on_state(self, dev: _Device, session: MqttSession, state: SessionState) -> None:
        if dev.session is not session:
            return
        if state is SessionState.CONNECTED:
            return  # data waits for final limits (the limits listener), like the gateway uplink
        if state is SessionState.DISCONNECTED:
            self._stats.disconnections += 1
            self._complain.warning(
                ("disconnected",), "device sessions: %d disconnections from ThingsBoard so far (%d sessions "
                "open); their data stays queued and is sent once they reconnect", self._stats.disconnections,
                len(self._open),
            )
        self._rewind(dev)
        if state is SessionState.CREDENTIALS_REJECTED:
            self._rejected(dev)

    def _on_limits(self, dev: _Device, session: MqttSession, limits: SessionLimits) -> None:
        if dev.session is not session or session.state is not SessionState.CONNECTED or not limits.final:
            return
        waiters = self._session_waiters.pop(dev.name, None)
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)
        if dev.more:
            self._schedule(dev)
        else:
            self._check_idle(dev)

    def _rejected(self, dev: _Device) -> None:
        self._stats.credentials_rejected += 1
        if dev.cred is not CredentialsState.REJECTED:
            dev.problem = "credentials rejected by ThingsBoard (CONNACK 4/5)"
            log.error(
                "device %r (per-device mode): ThingsBoard rejected its stored credentials; its data stays "
                "queued; trying again about every %.0f s (if the device was deleted in ThingsBoard, remove its "
                "directory under %s to provision it again)",
                dev.name,
                self.settings.rejected_retry,
                self.settings.credentials_dir,
            )
        dev.cred = CredentialsState.REJECTED
        self._changed()
        self._close_session(dev)
        self._admit()
        self._retry_later(dev, self.settings.rejected_retry * random.uniform(0.5, 1.5), CredentialsState.READY)

    def _retry_later(self, dev: _Device, delay: float, state: CredentialsState) -> None:
        def again() -> None:
            dev.retry = None
            dev.cred = state
            self._want(dev)

        if dev.retry is not None:
            dev.retry.cancel()
        dev.retry = asyncio.get_running_loop().call_later(delay, again)

    def _check_idle(self, dev: _Device) -> None:
        """Nothing to send and nothing running: close (unregistered) or remember as idle (LRU)."""
        if dev.session is None or dev.in_flight or dev.more or dev.queued or dev.reading or dev.rpcs:
            return
        if not dev.registered:
            self._close_session(dev)
            self._admit()
            return
        self._idle[dev.name] = dev
        self._idle.move_to_end(dev.name)
        if self._waiting_data:
            self._admit()

    # -- moving records -------------------------------------------------------------------------------------

    def _window(self, session: MqttSession) -> int:
        # one slot left free for RPC replies, as the gateway uplink does
        return max(1, session.limits.max_inflight_messages - 1)

    def _schedule(self, dev: _Device) -> None:
        if dev.queued or dev.reading or not dev.more:
            return
        session = dev.session
        if session is None or session.state is not SessionState.CONNECTED or not session.limits.final:
            return
        if len(dev.in_flight) >= self._window(session):
            return  # a PUBACK schedules it again
        self._idle.pop(dev.name, None)
        dev.queued = True
        self._ready.append(dev)
        self._wake.set()

    async def _run_pump(self) -> None:
        st = self.settings
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[tuple[_Device, int, int, int]] = []
            while self._ready and len(batch) < st.read_devices:
                dev = self._ready.popleft()
                dev.queued = False
                if dev.session is None or not dev.more:
                    self._check_idle(dev)
                    continue
                dev.reading = True
                batch.append((dev, dev.generation, dev.epoch, dev.cursor))
            if not batch:
                continue
            try:
                results = await self._outbox.read_devices(
                    [(dev.name, cursor) for dev, _, _, cursor in batch], st.read_records, st.read_bytes
                )
            except OutboxError as exc:
                self._complain.warning(("read",), "device-mode outbox: %s", exc)
                for dev, *_ in batch:
                    dev.reading = False
                    self._ready.append(dev)
                    dev.queued = True
                await asyncio.sleep(1.0)  # a failing disk: do not spin
                continue
            for (dev, generation, epoch, cursor), (records, held) in zip(batch, results, strict=True):
                dev.reading = False
                if dev.generation != generation or dev.cursor != cursor or dev.session is None:
                    self._schedule(dev)  # rewound or closed meanwhile: read again from the new cursor
                    continue
                complete = self._send(dev, records) if records else True
                if held:
                    self._hold(dev)  # looked at again in a second, not at once
                    continue
                if complete and len(records) < st.read_records and dev.epoch == epoch:
                    dev.more = False  # everything committed for it so far is published
                if dev.more:
                    self._schedule(dev)
                else:
                    self._check_idle(dev)

    def _send(self, dev: _Device, records: list[Record]) -> bool:
        """Publish ``records`` in order while the window allows; True if all were published."""
        session = dev.session
        assert session is not None
        limits = session.limits
        cap = self._window(session)
        stats = self._stats
        n = len(records)
        i = 0
        while i < n:
            if len(dev.in_flight) >= cap:
                return False
            packed = tb.pack(records, limits.max_payload_size, i)
            if packed is None:
                self._drop_oversize(dev, records[i], limits)
                i += 1
                continue
            fut = session.publish(packed.topic, packed.payload)
            if fut.done() and fut.exception() is not None:
                fut.exception()
                return False  # not connected any more: the state listener rewinds
            end = i + packed.count
            ids = [r.id for r in records[i:end]]
            entry = _InFlight(ids, fut, dev.generation)
            dev.in_flight[ids[0]] = entry
            fut.add_done_callback(functools.partial(self._on_done, dev, entry))
            if ids[0] <= dev.high_water:
                stats.resends += sum(1 for x in ids if x <= dev.high_water)
            dev.cursor = ids[-1]
            if dev.cursor > dev.high_water:
                dev.high_water = dev.cursor
            stats.publishes += 1
            i = end
        return True

    def _drop_oversize(self, dev: _Device, record: Record, limits: SessionLimits) -> None:
        self._stats.dropped_oversize += 1
        self._outbox.ack((record.id,))
        dev.cursor = record.id
        if record.id > dev.high_water:
            dev.high_water = record.id
        self._complain.warning(
            ("oversize", dev.name),
            "device %r: dropped record %d (%s, %d bytes): larger than its session's maxPayloadSize %d",
            dev.name,
            record.id,
            record.kind.name,
            len(record.body),
            limits.max_payload_size,
        )

    def _on_done(self, dev: _Device, entry: _InFlight, fut: asyncio.Future[None]) -> None:
        if entry.generation == dev.generation and dev.in_flight.get(entry.ids[0]) is entry:
            del dev.in_flight[entry.ids[0]]
        exc = fut.exception() if not fut.cancelled() else ConnectionLost("cancelled")
        if exc is None:
            # Acknowledged by the broker: final, whatever happened to the connection since.
            self._stats.records_sent += len(entry.ids)
            self._stats.publishes_acked += 1
            self._outbox.ack(entry.ids)
        else:
            self._stats.publishes_failed += 1
            if not isinstance(exc, ConnectionLost) and entry.generation == dev.generation:
                log.warning(
                    "device %r: publish refused (%s): sending again from record %d", dev.name, exc, entry.ids[0]
                )
                dev.in_flight[entry.ids[0]] = entry  # counted in the rewind
                self._rewind(dev)
        if self._stopping or dev.session is None:
            return
        if dev.more:
            self._schedule(dev)
        else:
            self._check_idle(dev)

    def _rewind(self, dev: _Device) -> None:
        """Back to before the lowest record not acknowledged; void what is in flight."""
        lowest = None
        for entry in dev.in_flight.values():
            fut = entry.fut
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                continue  # acknowledged; its done-callback has not run yet
            first = entry.ids[0]
            if lowest is None or first < lowest:
                lowest = first
        if lowest is not None:
            if lowest - 1 < dev.cursor:
                dev.cursor = lowest - 1
            dev.more = True
        dev.in_flight.clear()
        dev.generation += 1

    def _hold(self, dev: _Device) -> None:
        """Its next record waits for the clock (outbox "hold"): look again in a second."""
        self._held.add(dev)
        if self._held_timer is None:
            self._held_timer = asyncio.get_running_loop().call_later(_HELD_RECHECK_S, self._recheck_held)

    def _recheck_held(self) -> None:
        self._held_timer = None
        held, self._held = self._held, set()
        for dev in held:
            dev.more = True
            self._schedule(dev)

    # -- downlink ---------------------------------------------------------------------------------------------

    def _on_message(self, dev: _Device, session: MqttSession, topic: str, payload: bytes) -> None:
        if dev.session is not session:
            return
        try:
            message = tb.parse_downlink(topic, payload)
        except tb.ProtocolError as exc:
            self._stats.malformed += 1
            self._complain.warning(("malformed", dev.name), "device %r: ignored a malformed message: %s", dev.name, exc)
            if exc.request_id is not None and topic.startswith(tb.DEVICE_RPC_REQUEST):
                error = {"error": f"malformed request: {exc}", "code": "bad_request"}
                self._reply(dev, session, exc.request_id, error)
            return
        if isinstance(message, tb.RpcRequest):
            self._stats.rpc_requests += 1
            dev.rpcs += 1
            self._idle.pop(dev.name, None)
            self._spawn(self._run_rpc(dev, session, message), f"RPC {message.method!r} for {dev.name!r}")
        elif isinstance(message, tb.AttributeUpdate):
            self._stats.attribute_updates += 1
            handler = self._directory.handler_for(dev.name)
            if handler is None:
                self._complain.warning(
                    ("attr-offline", dev.name), "shared attribute update for %r, which is not registered", dev.name
                )
                return
            self._spawn(
                handler.attributes_updated(dev.name, message.values, message.deleted),
                f"attribute update for {dev.name!r}",
            )
        elif isinstance(message, tb.AttributeResponse) and (
            call := self._attribute_calls.get((dev.name, message.request_id))
        ) is not None:
            if not call.done():
                call.set_result(message)
        else:
            log.debug("device %r: answer to request %s, which nobody awaits", dev.name, message)

    # -- attribute requests -------------------------------------------------------------------------------

    def _usable(self, dev: _Device | None) -> MqttSession | None:
        session = dev.session if dev is not None else None
        if session is None or session.state is not SessionState.CONNECTED or not session.limits.final:
            return None
        return session

    async def wait_session(self, device: str, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until ``device`` has a connected session: True if it has."""
        if self._usable(self._devices.get(device)) is not None:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._session_waiters.setdefault(device, [])
        waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            rest = self._session_waiters.get(device)
            if rest is not None and fut in rest:
                rest.remove(fut)
                if not rest:
                    del self._session_waiters[device]
        return self._usable(self._devices.get(device)) is not None

    async def request_attributes(
        self, device: str, keys: Sequence[str], *, shared: bool = True, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The device's shared (or client) attributes, asked over its own session
        (``v1/devices/me/attributes/request/{id}``). ConnectionError without a connected session."""
        session = self._usable(self._devices.get(device))
        if session is None:
            raise ConnectionError(f"device {device!r} has no connected ThingsBoard session")
        request_id = session.next_request_id()
        payload = tb.attribute_request(shared_keys=keys) if shared else tb.attribute_request(client_keys=keys)
        call: asyncio.Future[tb.AttributeResponse] = asyncio.get_running_loop().create_future()
        key = (device, request_id)
        self._attribute_calls[key] = call
        try:
            sent = session.publish(tb.attribute_request_topic(request_id), payload)
            sent.add_done_callback(_retrieve_result)
            try:
                answer = await asyncio.wait_for(call, timeout)
            except TimeoutError:
                raise TimeoutError(f"ThingsBoard did not answer the attribute request of {device!r} "
                                   f"within {timeout:g} s") from None
        finally:
            self._attribute_calls.pop(key, None)
        return dict(answer.shared if shared else answer.client)

    async def _run_rpc(self, dev: _Device, session: MqttSession, req: tb.RpcRequest) -> None:
        try:
            handler = self._directory.handler_for(dev.name)
            if handler is None:
                data: Any = {"error": f"device {dev.name!r} is not registered", "code": "device_offline"}
                failed = True
            else:
                found = handler

                def start() -> Awaitable[Any]:
                    return found.rpc(dev.name, req.method, req.params, self.settings.rpc_timeout)

                who = f"device {dev.name!r}"
                data, failed = await run_rpc_handler(start, who, req.method, self.settings.rpc_timeout)
            if failed:
                self._stats.rpc_errors += 1
            self._reply(dev, session, req.request_id, data)
        finally:
            dev.rpcs -= 1
            if not self._stopping and dev.session is session and not dev.more:
                self._check_idle(dev)

    def _reply(self, dev: _Device, session: MqttSession, request_id: int, data: Any) -> None:
        # RPC replies go on the session that got the request, not through the outbox (ThingsBoard
        # binds an RPC to its session).
        sent = session.publish(tb.device_rpc_reply_topic(request_id), tb.dumps(data).encode())
        if sent.done() and sent.exception() is not None:
            self._stats.replies_dropped += 1
            self._complain.warning(("reply", dev.name), "RPC reply for %r dropped: %s", dev.name, sent.exception())
            return
        sent.add_done_callback(_retrieve)

    # -- credentials ------------------------------------------------------------------------------------------

    async def _load_credentials(self) -> None:
        """Look up stored credentials, many devices per trip to a thread."""
        root = self.settings.credentials_dir
        try:
            while self._load_queue:
                batch, self._load_queue = self._load_queue[:256], self._load_queue[256:]
                found = await asyncio.to_thread(_load_many, root, [dev.name for dev in batch])
                for dev, creds in zip(batch, found, strict=True):
                    if creds is None:
                        dev.cred = CredentialsState.ABSENT
                    else:
                        dev.creds = creds.credentials
                        dev.cred = CredentialsState.READY
                    self._want(dev)
        finally:
            self._loader_running = False

    async def _provision_worker(self) -> None:
        try:
            while self._provision_queue and not self._stopping:
                dev = self._provision_queue.popleft()
                await self._provision(dev)
        finally:
            self._provisioners -= 1

    async def _provision(self, dev: _Device) -> None:
        st = self.settings
        key = self._profiles.get(dev.profile or "")
        if key is None:  # its profile left per-device mode: nothing to ask with
            dev.cred = CredentialsState.ABSENT
            return
        settings = ProvisionSettings(
            host=st.host,
            port=st.port,
            tls=st.tls,
            key=key.key,
            secret=key.secret,
            credentials_type=key.credentials_type,
            state_dir=st.credentials_dir,
            timeout_s=st.provision_timeout_s,
            retry_s=st.provision_retry_s,
            connect_timeout=st.connect_timeout,
            reconnect_min=st.reconnect_min,
            reconnect_max=st.reconnect_max,
            keepalive=st.keepalive,
        )
        try:
            creds = await request_credentials(settings, dev.name, gateway=False)
            saved = await asyncio.to_thread(
                device_credentials.save, st.credentials_dir, dev.name, creds, server=f"{st.host}:{st.port}"
            )
        except ProvisioningRefused as exc:
            self._stats.provision_refused += 1
            first = dev.problem != f"provisioning refused: {exc}"
            dev.problem = f"provisioning refused: {exc}"
            dev.cred = CredentialsState.REFUSED
            if first:
                log.error(
                    "device %r (profile %r, per-device mode): provisioning refused by ThingsBoard: %s; its data "
                    "stays queued; asking again every %.0f s",
                    dev.name,
                    dev.profile,
                    exc,
                    st.provision_retry_s,
                )
            self._retry_later(dev, st.provision_retry_s * random.uniform(0.9, 1.1), CredentialsState.ABSENT)
            self._changed()
            return
        except (ProvisioningError, OSError) as exc:
            self._stats.provision_failures += 1
            dev.failures += 1
            dev.cred = CredentialsState.FAILED
            what = "no answer" if isinstance(exc, ProvisioningTimeout) else str(exc)
            delay = min(st.provision_retry_s, 2.0 ** min(dev.failures, 16)) * random.uniform(0.5, 1.0)
            self._complain.warning(
                ("provision-failed", dev.name),
                "device %r: provisioning failed (%s); trying again in %.0f s",
                dev.name,
                what,
                delay,
            )
            self._retry_later(dev, delay, CredentialsState.ABSENT)
            self._changed()
            return
        self._stats.provisioned += 1
        dev.failures = 0
        dev.problem = ""
        dev.creds = saved.credentials
        dev.cred = CredentialsState.READY
        log.info("device %r provisioned (%s), per-device mode", dev.name, saved.credentials_type)
        self._want(dev)
        self._changed()

    # -- tasks ---------------------------------------------------------------------------------------------------

    def _spawn_worker(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._workers.add(task)
        task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("device sessions: worker failed: %r", task.exception())

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, what))

    def _task_done(self, what: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", what, task.exception())


class _HasUpstream(Protocol):
    @property
    def per_device(self) -> bool: ...

    @property
    def provision_key(self) -> str: ...

    @property
    def provision_secret(self) -> str: ...

    @property
    def credentials_type(self) -> str: ...


def provision_keys(profiles: Mapping[str, _HasUpstream]) -> dict[str, ProvisionKey]:
    """Profile name -> its provisioning settings, for the profiles in per-device mode."""
    return {
        name: ProvisionKey(up.provision_key, up.provision_secret, up.credentials_type)
        for name, up in profiles.items()
        if up.per_device
    }


def _load_many(root: Path, names: list[str]) -> list[GatewayCredentials | None]:
    return [device_credentials.load(root, name) for name in names]


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


__all__ = [
    "DEVICE_SUBSCRIPTIONS",
    "CredentialsState",
    "DeviceModeSettings",
    "DeviceSessionStats",
    "DeviceSessions",
    "ProvisionKey",
    "provision_keys",
]


def _retrieve_result(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # a failed publish shows as the request's timeout
