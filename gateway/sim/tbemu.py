"""A ThingsBoard MQTT-transport emulator for tests and the README demo.

It behaves like ThingsBoard's MQTT transport as described in docs/THINGSBOARD_API.md (server code
wins over the public docs): access-token, MQTT_BASIC and (over an optional TLS listener) X.509
authentication with CONNACK 4/5 on refusal, the device API on ``v1/devices/me/...`` recorded per
device, the gateway API on ``v1/gateway/...`` with auto-created child devices, downlink targeted at
one device (server-side RPC, shared attribute updates, attribute responses, client-side RPC
answers such as ``getSessionLimits``) and device provisioning on ``/provision/request``.

In a test::

    async with ThingsBoardEmulator() as emu:
        emu.add_device("gw", token="GW_TOKEN", gateway=True)
        ...  # connect the code under test to 127.0.0.1:emu.port
        await emu.wait_for(lambda: len(emu.device("sensor-1").telemetry) >= 3)
        reply = await emu.rpc("sensor-1", "Read", {"id": "/3/0/9"})

For the demo: ``python -m gateway.sim.tbemu --port 1883 --token GW_TOKEN:gateway --print-telemetry``.

It is built on the amqtt broker (0.12.1) and three plugins: authentication, topic ACL and a packet
hook. Caveats, each a fact of amqtt 0.12.1 that shaped this module:

- **Recording happens in the packet-received hook.** amqtt acknowledges a QoS 1 PUBLISH (PUBACK)
  from a task of its own, before the session's delivery queue is drained, so recording in the
  "message received" event loses acknowledged messages. The hook's task is created before the
  PUBLISH handling task, and this module records synchronously in the hook's first step, so a
  message is recorded before its PUBACK is written.
- **CONNACK return codes.** amqtt's plugin API can only say yes or no; on "no" it always sends
  CONNACK 5. ThingsBoard sends 4 for an empty username. The smallest fix: the broker subclass
  swaps the freshly built (still unattached) protocol handler for a subclass whose
  ``mqtt_connack_authorize`` sends the code the auth plugin chose. The same subclass reports when a
  connection ends (``stop``), which amqtt's disconnect event misses on broker shutdown.
- **Nothing goes through amqtt's broadcast.** A device's publish on ``v1/devices/me/...`` must not
  reach another device subscribed to the same topic string, so the ACL plugin forbids every
  client publish from being broadcast; the emulator handles uplinks itself and sends each downlink
  directly on the target connection.
- On refused authentication amqtt leaves the refused session in its session table (until a later
  clean-session connect with the same client id replaces it); harmless here.
- A clean-session connect that reuses a connected client id does not close the older connection
  in amqtt; ThingsBoard would not do that either for two different client ids, so it is left as is.

Where this emulator differs from ThingsBoard on purpose: malformed JSON is counted and ignored
(ThingsBoard closes the session on some errors); an oversized PUBLISH is counted and dropped by
default (ThingsBoard drops the session: ``oversize_policy="disconnect"``); a provisioning session
is not closed 60 s after its answer; X.509 client certificates must chain to the CA given to the
TLS listener (ThingsBoard trusts any certificate and checks it against its database; Python's ssl
module cannot request a client certificate without verifying it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import inspect
import json
import logging
import secrets
import signal
import ssl
import string
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, cast

from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig, ListenerConfig, ListenerType
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import Session

__all__ = [
    "DEFAULT_SESSION_LIMITS",
    "BasicCredentials",
    "ClientRpcRequest",
    "ConnackCode",
    "Counters",
    "CredentialsType",
    "Device",
    "OversizePolicy",
    "PayloadError",
    "ProvisionProfile",
    "ProvisionRecord",
    "ProvisionStatus",
    "RpcError",
    "RpcReply",
    "TelemetryRecord",
    "ThingsBoardEmulator",
    "TlsListener",
    "Topic",
    "main",
    "parse_telemetry",
]

log = logging.getLogger(__name__)

JsonValue = Any
TelemetryRecord = tuple[int, dict[str, Any]]
"""One telemetry record: (timestamp in ms, {key: value})."""


# --------------------------------------------------------------------------------------------
# Protocol vocabulary
# --------------------------------------------------------------------------------------------


class Topic:
    """ThingsBoard MQTT topic names (server code, MqttTopics)."""

    DEVICE_TELEMETRY: Final = "v1/devices/me/telemetry"
    DEVICE_ATTRIBUTES: Final = "v1/devices/me/attributes"
    DEVICE_ATTRIBUTES_REQUEST: Final = "v1/devices/me/attributes/request/"
    DEVICE_ATTRIBUTES_RESPONSE: Final = "v1/devices/me/attributes/response/"
    DEVICE_RPC_REQUEST: Final = "v1/devices/me/rpc/request/"
    DEVICE_RPC_RESPONSE: Final = "v1/devices/me/rpc/response/"
    DEVICE_CLAIM: Final = "v1/devices/me/claim"
    GATEWAY_CONNECT: Final = "v1/gateway/connect"
    GATEWAY_DISCONNECT: Final = "v1/gateway/disconnect"
    GATEWAY_TELEMETRY: Final = "v1/gateway/telemetry"
    GATEWAY_ATTRIBUTES: Final = "v1/gateway/attributes"
    GATEWAY_ATTRIBUTES_REQUEST: Final = "v1/gateway/attributes/request"
    GATEWAY_ATTRIBUTES_RESPONSE: Final = "v1/gateway/attributes/response"
    GATEWAY_RPC: Final = "v1/gateway/rpc"
    GATEWAY_CLAIM: Final = "v1/gateway/claim"
    PROVISION_REQUEST: Final = "/provision/request"
    PROVISION_RESPONSE: Final = "/provision/response"


# ThingsBoard accepts these exact subscription filters and answers 0x80 to anything else.
_DEVICE_SUBSCRIPTIONS: Final = frozenset(
    {
        Topic.DEVICE_ATTRIBUTES,
        Topic.DEVICE_ATTRIBUTES_RESPONSE + "+",
        Topic.DEVICE_RPC_REQUEST + "+",
        Topic.DEVICE_RPC_RESPONSE + "+",
        "v2/fw/response/+/chunk/+",
        "v2/fw/error",
        "v2/sw/response/+/chunk/+",
        "v2/sw/error",
        Topic.GATEWAY_ATTRIBUTES,
        Topic.GATEWAY_ATTRIBUTES_RESPONSE,
        Topic.GATEWAY_RPC,
    }
)
_PROVISION_SUBSCRIPTIONS: Final = frozenset({Topic.PROVISION_RESPONSE})
_PROVISION_USERNAME: Final = "provision"
_DEFAULT_DEVICE_TYPE: Final = "default"


class ConnackCode(enum.IntEnum):
    """MQTT 3.1.1 CONNACK return codes the emulator sends."""

    ACCEPTED = 0
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


class CredentialsType(enum.StrEnum):
    ACCESS_TOKEN = "ACCESS_TOKEN"
    MQTT_BASIC = "MQTT_BASIC"
    X509_CERTIFICATE = "X509_CERTIFICATE"


class ProvisionStatus(enum.StrEnum):
    SUCCESS = "SUCCESS"
    NOT_FOUND = "NOT_FOUND"
    FAILURE = "FAILURE"


class OversizePolicy(enum.StrEnum):
    """What happens to a PUBLISH larger than ``max_payload_size``: always counted, then..."""

    DROP = "drop"
    """...ignored; amqtt still acknowledges it."""
    DISCONNECT = "disconnect"
    """...the connection is aborted before the PUBACK (what ThingsBoard does)."""


DEFAULT_SESSION_LIMITS: Final[Mapping[str, Any]] = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
    "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
}
"""The ``getSessionLimits`` answer unless told otherwise ("0:0," means no rate limit)."""

_NOT_FOUND_MSG: Final = "Provision data was not found!"
_FAILURE_MSG: Final = "Failed to provision device!"


# --------------------------------------------------------------------------------------------
# State visible to tests
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class BasicCredentials:
    """MQTT_BASIC credentials: a connection matches when every field that is set matches."""

    client_id: str | None = None
    username: str | None = None
    password: str | None = None

    def matches(self, client_id: str, username: str, password: str) -> bool:
        if not self.client_id and not self.username:
            return False
        if self.client_id and self.client_id != client_id:
            return False
        if self.username and self.username != username:
            return False
        return not self.password or self.password == password

    def as_json(self) -> dict[str, str | None]:
        return {"clientId": self.client_id, "userName": self.username, "password": self.password}


@dataclasses.dataclass(frozen=True, slots=True)
class RpcReply:
    """A device's (or a child device's, through its gateway) answer to a server-side RPC."""

    id: int
    method: str | None
    response: JsonValue


@dataclasses.dataclass(frozen=True, slots=True)
class ClientRpcRequest:
    """A client-side RPC a device sent (``v1/devices/me/rpc/request/{id}``)."""

    id: int
    method: str
    params: JsonValue


@dataclasses.dataclass(frozen=True, slots=True)
class ProvisionProfile:
    """A device profile's provisioning configuration, found by its key.

    ``allow_create=True`` is ThingsBoard's "Allow to create new devices"; ``False`` is "Check for
    pre-provisioned devices" (the device must exist, added with the same ``provision_key``).
    """

    key: str
    secret: str
    allow_create: bool = True
    gateway_default: bool = False
    device_type: str = _DEFAULT_DEVICE_TYPE


@dataclasses.dataclass(frozen=True, slots=True)
class ProvisionRecord:
    """One provisioning request and the emulator's answer."""

    request: JsonValue
    response: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class TlsListener:
    """An optional TLS listener (X.509 device authentication): PEM file paths."""

    certfile: str
    keyfile: str
    cafile: str
    port: int = 0


@dataclasses.dataclass(eq=False, slots=True)
class Device:
    """What the emulator knows about one device: credentials and everything it received."""

    name: str
    type: str = _DEFAULT_DEVICE_TYPE
    gateway: bool = False
    token: str | None = None
    basic: BasicCredentials | None = None
    x509_pem: str | None = None
    parent: str | None = None
    """For a child device: the gateway device it was last seen through."""
    provision_key: str | None = None
    provisioned: bool = False
    connected: bool = False
    telemetry: list[TelemetryRecord] = dataclasses.field(default_factory=list)
    attributes_client: dict[str, Any] = dataclasses.field(default_factory=dict)
    attributes_shared: dict[str, Any] = dataclasses.field(default_factory=dict)
    claims: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rpc_replies: list[RpcReply] = dataclasses.field(default_factory=list)
    client_rpcs: list[ClientRpcRequest] = dataclasses.field(default_factory=list)
    attribute_requests: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    gateway_metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """On a gateway device: the ``metadata`` objects of its telemetry entries."""
    publishes: int = 0
    """PUBLISH packets that carried data for this device (a gateway publish counts for each child)."""
    connects: int = 0
    """Sessions opened (a device) or ``v1/gateway/connect`` messages received (a child device)."""
    malformed: int = 0

    @property
    def credentials_type(self) -> CredentialsType | None:
        if self.x509_pem is not None:
            return CredentialsType.X509_CERTIFICATE
        if self.basic is not None:
            return CredentialsType.MQTT_BASIC
        if self.token is not None:
            return CredentialsType.ACCESS_TOKEN
        return None


@dataclasses.dataclass(slots=True)
class Counters:
    """Emulator-wide counters, compared exactly by tests."""

    connections: int = 0
    refused: int = 0
    publishes: int = 0
    """Every PUBLISH packet received, whatever became of it."""
    records: int = 0
    """Telemetry records stored (after unpacking gateway payloads)."""
    malformed: int = 0
    oversize: int = 0
    unsupported: int = 0
    downlinks: int = 0
    provision_requests: int = 0
    errors: int = 0
    """Bugs in the emulator's own handling (logged with a traceback)."""


class PayloadError(ValueError):
    """An uplink payload ThingsBoard would not parse."""


class RpcError(RuntimeError):
    """A server-side RPC could not be delivered (device offline or not subscribed)."""


ClientRpcHandler = Callable[[Device, str, JsonValue], JsonValue | Awaitable[JsonValue]]
"""Answers a client-side RPC other than getSessionLimits; an exception becomes {"error": ...}."""


# --------------------------------------------------------------------------------------------
# Payload parsing (pure)
# --------------------------------------------------------------------------------------------


def _as_timestamp(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError(f"ts is not a number: {value!r}")
    try:
        return int(value)
    except ValueError as exc:
        raise PayloadError(f"ts is not a number: {value!r}") from exc


def parse_telemetry(payload: object, now_ms: int) -> tuple[list[TelemetryRecord], list[dict[str, Any]]]:
    """Unpack every telemetry form ThingsBoard accepts into records and ``metadata`` objects.

    Forms: ``{"k": v}``, ``{"ts": ms, "values": {...}}`` or a list of these; an object without
    ``ts`` gets ``now_ms``. Raises :class:`PayloadError` for anything else (the whole payload is
    rejected, as ThingsBoard does).
    """
    entries = payload if isinstance(payload, list) else [payload]
    records: list[TelemetryRecord] = []
    metadata: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise PayloadError(f"telemetry entry is not a JSON object: {entry!r}")
        if "ts" in entry and "values" in entry:
            values = entry["values"]
            if not isinstance(values, dict):
                raise PayloadError(f"telemetry values is not a JSON object: {values!r}")
            records.append((_as_timestamp(entry["ts"]), dict(values)))
            meta = entry.get("metadata")
            if isinstance(meta, dict):
                metadata.append(meta)
        else:
            records.append((now_ms, dict(entry)))
    return records, metadata


def _parse_json(data: bytes) -> JsonValue:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from exc


def _json_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} is not a JSON object: {value!r}")
    return value


def _topic_id(topic: str, prefix: str) -> int:
    tail = topic[len(prefix) :]
    if not tail.isdigit():
        raise PayloadError(f"request id in topic {topic!r} is not an integer")
    return int(tail)


def _key_set(request: dict[str, Any], field: str) -> set[str] | None:
    """``"clientKeys": "a,b"`` (ThingsBoard splits on commas and does not trim)."""
    raw = request.get(field)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise PayloadError(f"{field} is not a comma-separated string: {raw!r}")
    return {key for key in raw.split(",") if key}


def _topic_matches(topic_filter: str, topic: str) -> bool:
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _dumps(payload: JsonValue) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _generate_secret(length: int = 20) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _pem_fingerprint(pem: str) -> str:
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.strip())
    except (ValueError, TypeError) as exc:
        raise PayloadError(f"not a PEM certificate: {exc}") from exc
    return _certificate_fingerprint(der)


# --------------------------------------------------------------------------------------------
# amqtt integration
# --------------------------------------------------------------------------------------------

_CONNECTION_KEY: Final = "gateway.sim.tbemu.connection"
_REFUSAL_KEY: Final = "gateway.sim.tbemu.refusal"


@dataclasses.dataclass(eq=False, slots=True)
class _Connection:
    """One authenticated MQTT connection: a device's, or a provisioning client's (device None)."""

    emulator: ThingsBoardEmulator
    session: Session
    device: Device | None
    handler: BrokerProtocolHandler | None = None
    closed: bool = False


class _TbProtocolHandler(BrokerProtocolHandler):  # type: ignore[misc]
    """amqtt's broker protocol handler with ThingsBoard's CONNACK codes and a close report."""

    _tb_connection: _Connection | None = None

    def attach(self, session: Session, reader: Any, writer: Any) -> None:
        super().attach(session, reader, writer)
        connection = session.attributes.get(_CONNECTION_KEY)
        if isinstance(connection, _Connection) and connection.session is session:
            connection.handler = self
            self._tb_connection = connection

    async def mqtt_connack_authorize(self, authorize: bool) -> None:
        if authorize or self.session is None:
            await super().mqtt_connack_authorize(authorize)
            return
        code = self.session.attributes.pop(_REFUSAL_KEY, ConnackCode.NOT_AUTHORIZED)
        await self._send_packet(ConnackPacket.build(0, int(code)))

    async def stop(self) -> None:
        connection = self._tb_connection
        if connection is not None:
            connection.emulator._connection_closed(connection)
        await super().stop()


class _TbBroker(Broker):  # type: ignore[misc]
    """The amqtt broker, building :class:`_TbProtocolHandler` for every client connection."""

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        # amqtt's handler is freshly constructed and not yet attached to anything: replacing it is
        # safe and is the only way to choose the CONNACK return code of a refused connection.
        _stock, session = await super()._initialize_client_session(
            reader, writer, remote_address, remote_port
        )
        return _TbProtocolHandler(self.plugins_manager, loop=self._loop), session

    def bound_port(self, listener: str) -> int:
        server = self._servers[listener].instance
        return int(server.sockets[0].getsockname()[1])


def _emulator_of(plugin: Any) -> ThingsBoardEmulator:
    return cast(ThingsBoardEmulator, plugin.config.emulator)


@dataclasses.dataclass
class _PluginConfig:
    emulator: Any = None


class _AuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Authenticates like ThingsBoard: X.509, provisioning, MQTT_BASIC, access token."""

    Config = _PluginConfig

    async def authenticate(self, *, session: Session) -> bool | None:
        return _emulator_of(self)._authenticate(session)


class _TopicAclPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """Subscriptions as ThingsBoard allows them; no client publish is broadcast by amqtt."""

    Config = _PluginConfig

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        return _emulator_of(self)._topic_allowed(session, topic, action)


class _PacketHookPlugin(BasePlugin):  # type: ignore[misc]
    """Records every PUBLISH as its packet arrives (before amqtt acknowledges it)."""

    Config = _PluginConfig

    async def on_mqtt_packet_received(self, *, packet: Any, session: Session | None = None) -> None:
        if session is None or not isinstance(packet, PublishPacket):
            return
        emulator = _emulator_of(self)
        # No await before this call: it must run in this task's first step (see module docstring).
        emulator._on_publish(session, packet)
        await emulator._notify()


def _plugin_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _transport_of(handler: BrokerProtocolHandler | None) -> asyncio.WriteTransport | None:
    # amqtt's StreamWriterAdapter keeps the asyncio StreamWriter in a private attribute.
    stream_writer = getattr(getattr(handler, "writer", None), "_writer", None)
    transport = getattr(stream_writer, "transport", None)
    return transport if isinstance(transport, asyncio.WriteTransport) else None


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class _ProvisionFailure(Exception):
    def __init__(self, status: ProvisionStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class ThingsBoardEmulator:
    """ThingsBoard's MQTT transport on 127.0.0.1, for tests (``async with``) and the demo.

    Every method runs on the event loop the emulator was started on. State changes (a PUBLISH
    recorded, a connection opened or closed) notify :meth:`wait_for` waiters.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_payload_size: int = 65536,
        oversize_policy: OversizePolicy | str = OversizePolicy.DROP,
        session_limits: Mapping[str, Any] | None = None,
        answer_session_limits: bool = True,
        client_rpc_handler: ClientRpcHandler | None = None,
        tls: TlsListener | None = None,
        on_device_created: Callable[[Device], None] | None = None,
        on_telemetry: Callable[[Device, TelemetryRecord], None] | None = None,
    ) -> None:
        self.host = host
        self.max_payload_size = max_payload_size
        self.oversize_policy = OversizePolicy(oversize_policy)
        self.session_limits: dict[str, Any] = json.loads(
            json.dumps(dict(DEFAULT_SESSION_LIMITS if session_limits is None else session_limits))
        )
        if session_limits is None:
            self.session_limits["maxPayloadSize"] = max_payload_size
        self.answer_session_limits = answer_session_limits
        """False: getSessionLimits requests are recorded and never answered."""
        self.client_rpc_handler = client_rpc_handler
        self.on_device_created = on_device_created
        self.on_telemetry = on_telemetry
        self.counters = Counters()
        self.provision_log: list[ProvisionRecord] = []
        self._port = port
        self._tls = tls
        self._tls_port = tls.port if tls is not None else None
        self._devices: dict[str, Device] = {}
        self._tokens: dict[str, Device] = {}
        self._certificates: dict[str, Device] = {}
        self._profiles: dict[str, ProvisionProfile] = {}
        self._connections: set[_Connection] = set()
        self._pending_rpcs: dict[tuple[str, int], tuple[str, asyncio.Future[JsonValue]]] = {}
        self._rpc_ids: dict[str, int] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._changed = asyncio.Condition()
        self._broker: _TbBroker | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The MQTT port (the bound one once started with port 0; kept across stop/start)."""
        return self._port

    @property
    def tls_port(self) -> int | None:
        return self._tls_port

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def start(self) -> None:
        """Listen again; after :meth:`stop` on the same port(s). Devices and records are kept."""
        if self._broker is not None:
            raise RuntimeError("the ThingsBoard emulator is already running")
        listeners = {"default": ListenerConfig(type=ListenerType.TCP, bind=f"{self.host}:{self._port}")}
        if self._tls is not None:
            listeners["tls"] = ListenerConfig(
                type=ListenerType.TCP,
                bind=f"{self.host}:{self._tls_port or 0}",
                ssl=True,
                certfile=self._tls.certfile,
                keyfile=self._tls.keyfile,
                cafile=self._tls.cafile,
            )
        plugin_config = {"emulator": self}
        config = BrokerConfig(
            listeners=listeners,
            plugins={
                _plugin_path(_AuthPlugin): plugin_config,
                _plugin_path(_TopicAclPlugin): plugin_config,
                _plugin_path(_PacketHookPlugin): plugin_config,
            },
        )
        broker = _TbBroker(config)
        await broker.start()
        self._broker = broker
        self._port = broker.bound_port("default")
        if self._tls is not None:
            self._tls_port = broker.bound_port("tls")
        log.info("ThingsBoard emulator listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Close every connection and stop listening (a server outage). Idempotent."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await broker.shutdown()
        for connection in list(self._connections):
            self._connection_closed(connection)
        await self._notify()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("ThingsBoard emulator on port %d stopped", self._port)

    async def __aenter__(self) -> ThingsBoardEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def disconnect_clients(self, timeout: float = 5.0) -> int:
        """Close every client connection from the server side; returns how many were open."""
        connections = [c for c in self._connections if not c.closed]
        for connection in connections:
            transport = _transport_of(connection.handler)
            if transport is not None:
                transport.close()
        await self.wait_for(lambda: all(c.closed for c in connections), timeout)
        return len(connections)

    # ---- registry ----------------------------------------------------------------------------

    def add_device(
        self,
        name: str,
        *,
        token: str | None = None,
        gateway: bool = False,
        type: str = _DEFAULT_DEVICE_TYPE,
        basic: BasicCredentials | None = None,
        x509_pem: str | None = None,
        provision_key: str | None = None,
    ) -> Device:
        """Create a device, as an administrator would in the UI. Raises ValueError on a clash."""
        if name in self._devices:
            raise ValueError(f"device {name!r} already exists")
        device = Device(name=name, type=type, gateway=gateway, provision_key=provision_key)
        self._set_credentials(device, token=token, basic=basic, x509_pem=x509_pem)
        self._devices[name] = device
        return device

    def add_provision_profile(
        self,
        key: str,
        secret: str,
        *,
        allow_create: bool = True,
        gateway_default: bool = False,
        device_type: str = _DEFAULT_DEVICE_TYPE,
    ) -> ProvisionProfile:
        profile = ProvisionProfile(key, secret, allow_create, gateway_default, device_type)
        self._profiles[key] = profile
        return profile

    def device(self, name: str) -> Device:
        """The device called ``name``; KeyError naming the known devices if there is none."""
        try:
            return self._devices[name]
        except KeyError:
            raise KeyError(f"no device {name!r} (known: {sorted(self._devices)})") from None

    @property
    def devices(self) -> Mapping[str, Device]:
        return self._devices

    def children(self, gateway: str) -> list[Device]:
        return [d for d in self._devices.values() if d.parent == gateway]

    def _set_credentials(
        self,
        device: Device,
        *,
        token: str | None = None,
        basic: BasicCredentials | None = None,
        x509_pem: str | None = None,
    ) -> None:
        fingerprint = None
        if token is not None and token in self._tokens:
            raise ValueError(f"access token {token!r} already belongs to {self._tokens[token].name!r}")
        if basic is not None:
            for other in self._devices.values():
                if other.basic is not None and (other.basic.client_id, other.basic.username) == (
                    basic.client_id,
                    basic.username,
                ):
                    raise ValueError(f"MQTT_BASIC credentials already belong to {other.name!r}")
        if x509_pem is not None:
            fingerprint = _pem_fingerprint(x509_pem)
            if fingerprint in self._certificates:
                raise ValueError(f"certificate already belongs to {self._certificates[fingerprint].name!r}")
        if token is not None:
            device.token = token
            self._tokens[token] = device
        if basic is not None:
            device.basic = basic
        if x509_pem is not None and fingerprint is not None:
            device.x509_pem = x509_pem
            self._certificates[fingerprint] = device

    # ---- waiting -----------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once ``predicate()`` is true; re-checked after every recorded packet.

        Raises TimeoutError after ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            raise TimeoutError(f"condition not met within {timeout} s") from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _notify_soon(self) -> None:
        self._spawn(self._notify())

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("downlink task failed: %r", task.exception())

    # ---- server-side actions -----------------------------------------------------------------

    async def rpc(
        self, device: str, method: str, params: JsonValue = None, timeout: float = 5.0
    ) -> JsonValue:
        """Server-side (two-way) RPC: send it and return the device's reply.

        A plain device gets it on ``v1/devices/me/rpc/request/{id}`` (if subscribed); a child
        device through its gateway on ``v1/gateway/rpc``. Raises RpcError when nobody can take
        it, TimeoutError when no reply comes within ``timeout`` seconds.
        """
        target = self.device(device)
        request_id = self._rpc_ids.get(target.name, 0) + 1
        self._rpc_ids[target.name] = request_id
        params = {} if params is None else params
        future: asyncio.Future[JsonValue] = asyncio.get_running_loop().create_future()
        self._pending_rpcs[(target.name, request_id)] = (method, future)
        try:
            if target.parent is not None:
                if not target.connected:
                    raise RpcError(f"child device {target.name!r} is not connected through its gateway")
                sent = self._send_to_device(
                    self.device(target.parent),
                    Topic.GATEWAY_RPC,
                    {"device": target.name, "data": {"id": request_id, "method": method, "params": params}},
                    require_subscription=False,
                )
            else:
                sent = self._send_to_device(
                    target,
                    f"{Topic.DEVICE_RPC_REQUEST}{request_id}",
                    {"method": method, "params": params},
                    require_subscription=True,
                )
            if not sent:
                raise RpcError(f"device {target.name!r} has no connection subscribed to RPC requests")
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise TimeoutError(
                f"no reply to RPC {method!r} from {target.name!r} within {timeout} s"
            ) from None
        finally:
            self._pending_rpcs.pop((target.name, request_id), None)

    async def set_shared_attributes(
        self, device: str, values: Mapping[str, Any] | None = None, *, deleted: Iterable[str] = ()
    ) -> int:
        """Change shared attributes and notify the device; returns how many connections were told."""
        target = self.device(device)
        values = dict(values or {})
        removed = list(deleted)
        target.attributes_shared.update(values)
        for key in removed:
            target.attributes_shared.pop(key, None)
        data: dict[str, Any] = dict(values)
        if removed:
            data["deleted"] = removed
        if target.parent is not None:
            if not target.connected:
                return 0
            sent = self._send_to_device(
                self.device(target.parent),
                Topic.GATEWAY_ATTRIBUTES,
                {"device": target.name, "data": data},
                require_subscription=False,
            )
        else:
            sent = self._send_to_device(target, Topic.DEVICE_ATTRIBUTES, data, require_subscription=True)
        return sent

    # ---- authentication and ACL (called by the plugins) --------------------------------------

    def _authenticate(self, session: Session) -> bool:
        username = session.username or ""
        password = session.password or ""
        client_id = session.client_id or ""
        device: Device | None = None
        refusal = ConnackCode.BAD_USERNAME_OR_PASSWORD if not username else ConnackCode.NOT_AUTHORIZED
        provisioning = False
        peer_certificate = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
        if peer_certificate:
            device = self._certificates.get(_certificate_fingerprint(peer_certificate))
            refusal = ConnackCode.NOT_AUTHORIZED
        elif _PROVISION_USERNAME in (username, client_id):
            provisioning = True
        else:
            device = next(
                (
                    d
                    for d in self._devices.values()
                    if d.basic and d.basic.matches(client_id, username, password)
                ),
                None,
            ) or self._tokens.get(username)
        if device is None and not provisioning:
            session.attributes[_REFUSAL_KEY] = refusal
            self.counters.refused += 1
            log.info("refused client %r (username %r): CONNACK %d", client_id, username, refusal)
            self._notify_soon()
            return False
        connection = _Connection(self, session, device)
        session.attributes[_CONNECTION_KEY] = connection
        self._connections.add(connection)
        self.counters.connections += 1
        if device is not None:
            device.connects += 1
            device.connected = True
            log.debug("device %r connected (client %r)", device.name, client_id)
        self._notify_soon()
        return True

    def _connection_closed(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self._connections.discard(connection)
        device = connection.device
        if device is not None and not any(c.device is device for c in self._connections):
            device.connected = False
            if device.gateway:
                # ThingsBoard closes the child sessions with their gateway's session.
                for child in self.children(device.name):
                    child.connected = False
        self._notify_soon()

    def _topic_allowed(self, session: Session | None, topic: str | None, action: Action | None) -> bool:
        if action != Action.SUBSCRIBE or session is None or topic is None:
            # Uplinks are handled by the emulator, downlinks sent directly: amqtt broadcasts nothing.
            return False
        connection = session.attributes.get(_CONNECTION_KEY)
        if not isinstance(connection, _Connection):
            return False
        allowed = _DEVICE_SUBSCRIPTIONS if connection.device is not None else _PROVISION_SUBSCRIPTIONS
        if topic not in allowed:
            log.info("refused subscription to %r (not a ThingsBoard topic)", topic)
            return False
        return True

    # ---- downlink ----------------------------------------------------------------------------

    def _subscribed_qos(self, session: Session, topic: str) -> int | None:
        if self._broker is None:
            return None
        granted: int | None = None
        for topic_filter, subscribers in self._broker.subscriptions.items():
            for subscriber, qos in subscribers:
                if subscriber is session and _topic_matches(topic_filter, topic):
                    granted = max(granted or 0, min(int(qos), 1))
        return granted

    def _send(
        self, connection: _Connection, topic: str, payload: JsonValue, *, require_subscription: bool
    ) -> bool:
        handler = connection.handler
        if connection.closed or handler is None:
            return False
        qos = self._subscribed_qos(connection.session, topic)
        if qos is None:
            if require_subscription:
                return False
            qos = 0
        self.counters.downlinks += 1
        self._spawn(handler.mqtt_publish(topic, _dumps(payload), qos, retain=False))
        return True

    def _send_to_device(
        self, device: Device, topic: str, payload: JsonValue, *, require_subscription: bool
    ) -> int:
        return sum(
            self._send(c, topic, payload, require_subscription=require_subscription)
            for c in list(self._connections)
            if c.device is device
        )

    # ---- uplink ------------------------------------------------------------------------------

    def _on_publish(self, session: Session, packet: PublishPacket) -> None:
        """Handle one PUBLISH synchronously (the caller guarantees this precedes its PUBACK)."""
        self.counters.publishes += 1
        connection = session.attributes.get(_CONNECTION_KEY)
        topic = packet.topic_name or ""
        data = packet.data or b""
        if not isinstance(connection, _Connection):
            self.counters.unsupported += 1
            return
        if connection.closed:
            # Already read by amqtt after the connection was aborted: ThingsBoard would never see it.
            return
        if len(data) > self.max_payload_size:
            self.counters.oversize += 1
            log.warning(
                "%d-byte PUBLISH on %r exceeds max_payload_size %d", len(data), topic, self.max_payload_size
            )
            if self.oversize_policy is OversizePolicy.DISCONNECT:
                transport = _transport_of(connection.handler)
                if transport is not None:
                    transport.abort()  # synchronously: the PUBACK amqtt writes next goes nowhere
                self._connection_closed(connection)
            return
        try:
            if connection.device is None:
                self._on_provision_publish(connection, topic, data)
            else:
                self._on_device_publish(connection, connection.device, topic, data)
        except PayloadError as exc:
            self.counters.malformed += 1
            if connection.device is not None:
                connection.device.malformed += 1
            log.warning("ignored malformed PUBLISH on %r: %s", topic, exc)
        except Exception:
            self.counters.errors += 1
            log.exception("emulator failed to handle a PUBLISH on %r", topic)

    def _on_device_publish(self, connection: _Connection, device: Device, topic: str, data: bytes) -> None:
        if topic.startswith("v1/gateway/") and device.gateway:
            self._on_gateway_publish(device, topic, data)
            return
        if topic == Topic.DEVICE_TELEMETRY:
            device.publishes += 1
            records, metadata = parse_telemetry(_parse_json(data), _now_ms())
            self._record(device, records)
            device.gateway_metrics.extend(metadata)
        elif topic == Topic.DEVICE_ATTRIBUTES:
            device.publishes += 1
            device.attributes_client.update(_json_object(_parse_json(data), "attributes"))
        elif topic.startswith(Topic.DEVICE_ATTRIBUTES_REQUEST):
            request_id = _topic_id(topic, Topic.DEVICE_ATTRIBUTES_REQUEST)
            request = _json_object(_parse_json(data), "attribute request") if data.strip() else {}
            device.attribute_requests.append(request)
            self._answer_attribute_request(connection, device, request_id, request)
        elif topic.startswith(Topic.DEVICE_RPC_REQUEST):
            request_id = _topic_id(topic, Topic.DEVICE_RPC_REQUEST)
            request = _json_object(_parse_json(data), "RPC request")
            method = request.get("method")
            if not isinstance(method, str):
                raise PayloadError(f"RPC request without a method: {request!r}")
            call = ClientRpcRequest(request_id, method, request.get("params"))
            device.client_rpcs.append(call)
            self._answer_client_rpc(connection, device, call)
        elif topic.startswith(Topic.DEVICE_RPC_RESPONSE):
            request_id = _topic_id(topic, Topic.DEVICE_RPC_RESPONSE)
            self._rpc_replied(device, request_id, _parse_json(data))
        elif topic == Topic.DEVICE_CLAIM:
            claim = _json_object(_parse_json(data), "claim") if data.strip() else {}
            device.claims.append(claim)
        else:
            self.counters.unsupported += 1
            log.warning("device %r published on unsupported topic %r", device.name, topic)

    def _record(self, device: Device, records: list[TelemetryRecord]) -> None:
        device.telemetry.extend(records)
        self.counters.records += len(records)
        if self.on_telemetry is not None:
            for record in records:
                self.on_telemetry(device, record)

    def _answer_attribute_request(
        self, connection: _Connection, device: Device, request_id: int, request: dict[str, Any]
    ) -> None:
        client_keys = _key_set(request, "clientKeys")
        shared_keys = _key_set(request, "sharedKeys")
        if client_keys is None and shared_keys is None:
            client = dict(device.attributes_client)
            shared = dict(device.attributes_shared)
        else:
            client = {k: v for k, v in device.attributes_client.items() if k in (client_keys or ())}
            shared = {k: v for k, v in device.attributes_shared.items() if k in (shared_keys or ())}
        # ThingsBoard leaves out a scope with no attributes found.
        response: dict[str, Any] = {}
        if client:
            response["client"] = client
        if shared:
            response["shared"] = shared
        self._send(
            connection,
            f"{Topic.DEVICE_ATTRIBUTES_RESPONSE}{request_id}",
            response,
            require_subscription=False,
        )

    def _answer_client_rpc(self, connection: _Connection, device: Device, call: ClientRpcRequest) -> None:
        topic = f"{Topic.DEVICE_RPC_RESPONSE}{call.id}"
        if call.method == "getSessionLimits":
            if self.answer_session_limits:
                self._send(connection, topic, self.session_limits, require_subscription=False)
            return
        handler = self.client_rpc_handler
        if handler is None:
            self._send(
                connection,
                topic,
                {"error": f"Unsupported client-side RPC method: {call.method}"},
                require_subscription=False,
            )
            return

        async def answer() -> None:
            try:
                result = handler(device, call.method, call.params)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                result = {"error": str(exc) or type(exc).__name__}
            self._send(connection, topic, result, require_subscription=False)

        self._spawn(answer())

    def _rpc_replied(self, device: Device, request_id: int, response: JsonValue) -> None:
        pending = self._pending_rpcs.get((device.name, request_id))
        method = pending[0] if pending is not None else None
        device.rpc_replies.append(RpcReply(request_id, method, response))
        if pending is not None and not pending[1].done():
            pending[1].set_result(response)

    # ---- gateway API -------------------------------------------------------------------------

    def _child(self, gateway: Device, name: object, device_type: object = None) -> Device:
        if not isinstance(name, str) or not name:
            raise PayloadError(f"child device name is not a non-empty string: {name!r}")
        child = self._devices.get(name)
        if child is None:
            kind = device_type if isinstance(device_type, str) and device_type else _DEFAULT_DEVICE_TYPE
            child = Device(name=name, type=kind, parent=gateway.name)
            self._devices[name] = child
            log.info("child device %r (type %r) created through gateway %r", name, kind, gateway.name)
            if self.on_device_created is not None:
                self.on_device_created(child)
        elif child is not gateway:
            child.parent = gateway.name
        if child is not gateway and not child.connected:
            child.connected = True
        return child

    def _on_gateway_publish(self, gateway: Device, topic: str, data: bytes) -> None:
        gateway.publishes += 1
        payload = _parse_json(data)
        if topic == Topic.GATEWAY_CONNECT:
            request = _json_object(payload, "connect")
            child = self._child(gateway, request.get("device"), request.get("type"))
            child.connects += 1
        elif topic == Topic.GATEWAY_DISCONNECT:
            request = _json_object(payload, "disconnect")
            name = request.get("device")
            leaving = self._devices.get(name) if isinstance(name, str) else None
            if leaving is None:
                raise PayloadError(f"disconnect of unknown device {name!r}")
            leaving.connected = False
        elif topic == Topic.GATEWAY_TELEMETRY:
            self._on_gateway_telemetry(gateway, _json_object(payload, "gateway telemetry"))
        elif topic == Topic.GATEWAY_ATTRIBUTES:
            for name, values in _json_object(payload, "gateway attributes").items():
                child = self._child(gateway, name)
                child.publishes += 1
                child.attributes_client.update(_json_object(values, f"attributes of {name!r}"))
        elif topic == Topic.GATEWAY_ATTRIBUTES_REQUEST:
            self._on_gateway_attribute_request(gateway, _json_object(payload, "gateway attribute request"))
        elif topic == Topic.GATEWAY_RPC:
            reply = _json_object(payload, "gateway RPC reply")
            request_id = reply.get("id")
            if isinstance(request_id, bool) or not isinstance(request_id, int) or "data" not in reply:
                raise PayloadError(f"gateway RPC reply needs an integer id and data: {reply!r}")
            child = self._child(gateway, reply.get("device"))
            self._rpc_replied(child, request_id, reply["data"])
        elif topic == Topic.GATEWAY_CLAIM:
            for name, claim in _json_object(payload, "gateway claim").items():
                self._child(gateway, name).claims.append(_json_object(claim, f"claim of {name!r}"))
        else:
            self.counters.unsupported += 1
            log.warning("gateway %r published on unsupported topic %r", gateway.name, topic)

    def _on_gateway_telemetry(self, gateway: Device, payload: dict[str, Any]) -> None:
        now = _now_ms()
        failures: list[str] = []
        for name, entries in payload.items():
            # ThingsBoard converts each device's entry on its own: a bad one loses only that device's data.
            try:
                records, metadata = parse_telemetry(entries, now)
                child = self._child(gateway, name)
            except PayloadError as exc:
                failures.append(f"{name!r}: {exc}")
                continue
            child.publishes += 1
            self._record(child, records)
            gateway.gateway_metrics.extend(metadata)
        if failures:
            raise PayloadError("gateway telemetry for " + "; ".join(failures))

    def _on_gateway_attribute_request(self, gateway: Device, request: dict[str, Any]) -> None:
        request_id = request.get("id")
        scope_client = request.get("client")
        if (
            isinstance(request_id, bool)
            or not isinstance(request_id, int)
            or not isinstance(scope_client, bool)
        ):
            raise PayloadError(
                f"gateway attribute request needs an integer id and a boolean client: {request!r}"
            )
        child = self._child(gateway, request.get("device"))
        child.attribute_requests.append(request)
        store = child.attributes_client if scope_client else child.attributes_shared
        response: dict[str, Any] = {"id": request_id, "device": child.name}
        if isinstance(request.get("key"), str):
            key = request["key"]
            if key in store:
                response["value"] = store[key]
        elif isinstance(request.get("keys"), list):
            keys = [k for k in request["keys"] if isinstance(k, str)]
            found = {k: store[k] for k in keys if k in store}
            if found:
                response["values"] = found
        else:
            raise PayloadError(f"gateway attribute request needs key or keys: {request!r}")
        self._send_to_device(gateway, Topic.GATEWAY_ATTRIBUTES_RESPONSE, response, require_subscription=False)

    # ---- provisioning ------------------------------------------------------------------------

    def _on_provision_publish(self, connection: _Connection, topic: str, data: bytes) -> None:
        if topic != Topic.PROVISION_REQUEST:
            self.counters.unsupported += 1
            log.warning("provisioning client published on %r, not %r", topic, Topic.PROVISION_REQUEST)
            return
        self.counters.provision_requests += 1
        request = _parse_json(data)
        try:
            device = self._provision(_json_object(request, "provision request"))
            response = self._provision_success(device)
            log.info("provisioned device %r (%s)", device.name, device.credentials_type)
        except _ProvisionFailure as failure:
            message = _NOT_FOUND_MSG if failure.status is ProvisionStatus.NOT_FOUND else _FAILURE_MSG
            response = {"errorMsg": message, "status": failure.status.value}
            log.info("provisioning refused (%s): %s", failure.status.value, failure)
        self.provision_log.append(ProvisionRecord(request, response))
        self._send(connection, Topic.PROVISION_RESPONSE, response, require_subscription=False)

    def _provision(self, request: dict[str, Any]) -> Device:
        key = request.get("provisionDeviceKey")
        secret = request.get("provisionDeviceSecret")
        profile = self._profiles.get(key) if isinstance(key, str) else None
        if profile is None or secret != profile.secret:
            raise _ProvisionFailure(ProvisionStatus.NOT_FOUND, "unknown provision key or wrong secret")
        name = request.get("deviceName")
        if name is None or name == "":
            name = _generate_secret()
        if not isinstance(name, str) or not name.strip():
            raise _ProvisionFailure(ProvisionStatus.FAILURE, f"bad device name {name!r}")
        name = name.strip()
        existing = self._devices.get(name)
        if not profile.allow_create:
            if existing is None or existing.provision_key != profile.key:
                raise _ProvisionFailure(ProvisionStatus.FAILURE, f"no pre-provisioned device {name!r}")
            if existing.credentials_type is None:
                self._set_credentials(existing, token=_generate_secret())
            existing.provisioned = True
            return existing
        if existing is not None:
            raise _ProvisionFailure(ProvisionStatus.FAILURE, f"device {name!r} already exists")
        gateway = request.get("gateway", profile.gateway_default)
        device = Device(
            name=name,
            type=profile.device_type,
            gateway=gateway is True,
            provision_key=profile.key,
            provisioned=True,
        )
        try:
            self._set_credentials(device, **self._requested_credentials(request))
        except (ValueError, PayloadError) as exc:
            raise _ProvisionFailure(ProvisionStatus.FAILURE, str(exc)) from exc
        self._devices[name] = device
        if self.on_device_created is not None:
            self.on_device_created(device)
        return device

    def _requested_credentials(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("credentialsType", CredentialsType.ACCESS_TOKEN.value)

        def text(field: str) -> str | None:
            value = request.get(field)
            return value if isinstance(value, str) and value else None

        if kind == CredentialsType.ACCESS_TOKEN:
            return {"token": text("token") or _generate_secret()}
        if kind == CredentialsType.MQTT_BASIC:
            basic = BasicCredentials(text("clientId"), text("username"), text("password"))
            if basic.client_id is None and basic.username is None:
                raise PayloadError("MQTT_BASIC needs a clientId or a username")
            return {"basic": basic}
        if kind == CredentialsType.X509_CERTIFICATE:
            pem = text("hash")
            if pem is None:
                raise PayloadError("X509_CERTIFICATE needs the PEM certificate in 'hash'")
            return {"x509_pem": pem}
        raise PayloadError(f"unsupported credentialsType {kind!r}")

    @staticmethod
    def _provision_success(device: Device) -> dict[str, Any]:
        value: JsonValue
        match device.credentials_type:
            case CredentialsType.X509_CERTIFICATE:
                value = device.x509_pem
            case CredentialsType.MQTT_BASIC:
                assert device.basic is not None
                value = device.basic.as_json()
            case _:
                value = device.token
        return {
            "credentialsValue": value,
            "credentialsType": (device.credentials_type or CredentialsType.ACCESS_TOKEN).value,
            "status": ProvisionStatus.SUCCESS.value,
        }

    # ---- summaries (CLI, HTTP) ---------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Per-device record counts and the counters, JSON-ready."""
        return {
            "devices": {
                d.name: {
                    "type": d.type,
                    "gateway": d.gateway,
                    "parent": d.parent,
                    "connected": d.connected,
                    "records": len(d.telemetry),
                }
                for d in self._devices.values()
            },
            "counters": dataclasses.asdict(self.counters),
        }


# --------------------------------------------------------------------------------------------
# A tiny HTTP API for the demo (ThingsBoard-like REST paths, device names instead of ids)
# --------------------------------------------------------------------------------------------


def _device_detail(device: Device) -> dict[str, Any]:
    return {
        "name": device.name,
        "type": device.type,
        "gateway": device.gateway,
        "parent": device.parent,
        "connected": device.connected,
        "records": len(device.telemetry),
        "latest": device.telemetry[-20:],
        "attributesClient": device.attributes_client,
        "attributesShared": device.attributes_shared,
        "claims": device.claims,
    }


class _HttpApi:
    """GET /api/devices, GET /api/devices/{name}, POST /api/plugins/rpc/twoway/{name},
    POST|DELETE /api/plugins/telemetry/DEVICE/{name}/SHARED_SCOPE."""

    def __init__(self, emulator: ThingsBoardEmulator) -> None:
        self._emulator = emulator

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._connection, host, port)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._exchange(reader)
        except (ValueError, asyncio.IncompleteReadError) as exc:
            status, body = 400, {"error": str(exc)}
        payload = _dumps(body)
        writer.write(
            f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _exchange(self, reader: asyncio.StreamReader) -> tuple[int, JsonValue]:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:
            raise ValueError("bad request line")
        method, target, _version = request_line
        length = 0
        while (line := (await reader.readline()).decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        raw = await reader.readexactly(length) if length else b""
        body = json.loads(raw) if raw.strip() else None
        url = urllib.parse.urlsplit(target)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        return await self._route(method, parts, urllib.parse.parse_qs(url.query), body)

    async def _route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: JsonValue
    ) -> tuple[int, JsonValue]:
        emu = self._emulator
        try:
            match method, parts:
                case "GET", ["api", "devices"]:
                    return 200, emu.summary()
                case "GET", ["api", "devices", name]:
                    return 200, _device_detail(emu.device(name))
                case "POST", ["api", "plugins", "rpc", "twoway", name]:
                    request = body if isinstance(body, dict) else {}
                    timeout = float(request.get("timeout", 10_000)) / 1000
                    reply = await emu.rpc(name, str(request.get("method")), request.get("params"), timeout)
                    return 200, reply
                case "POST", ["api", "plugins", "telemetry", "DEVICE", name, "SHARED_SCOPE"]:
                    await emu.set_shared_attributes(name, body if isinstance(body, dict) else {})
                    return 200, {}
                case "DELETE", ["api", "plugins", "telemetry", "DEVICE", name, "SHARED_SCOPE"]:
                    keys = [k for v in query.get("keys", []) for k in v.split(",") if k]
                    await emu.set_shared_attributes(name, deleted=keys)
                    return 200, {}
        except KeyError as exc:
            return 404, {"error": str(exc)}
        except RpcError as exc:
            return 409, {"error": str(exc)}
        except TimeoutError as exc:
            return 504, {"error": str(exc)}
        return 404, {"error": f"no route for {method} /{'/'.join(parts)}"}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _token_spec(spec: str) -> tuple[str, str, bool]:
    """``[NAME=]TOKEN[:gateway]`` -> (name, token, gateway); the name defaults to the token."""
    gateway = spec.endswith(":gateway")
    spec = spec.removesuffix(":gateway")
    name, _, token = spec.rpartition("=")
    if not token:
        raise argparse.ArgumentTypeError(f"--token {spec!r}: expected [NAME=]TOKEN[:gateway]")
    return name or token, token, gateway


def _provision_spec(spec: str) -> tuple[str, str, bool]:
    """``KEY:SECRET[:pre]`` -> (key, secret, allow_create)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]) or (len(parts) == 3 and parts[2] != "pre"):
        raise argparse.ArgumentTypeError(f"--provision {spec!r}: expected KEY:SECRET or KEY:SECRET:pre")
    return parts[0], parts[1], len(parts) == 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.sim.tbemu",
        description="ThingsBoard MQTT-transport emulator: watch a gateway's telemetry arrive.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883, help="MQTT port (0: any free port)")
    parser.add_argument("--http-port", type=int, help="serve a small JSON API (devices, RPC, attributes)")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        type=_token_spec,
        metavar="[NAME=]TOKEN[:gateway]",
        help="a device with this access token (repeatable); ':gateway' marks a gateway device",
    )
    parser.add_argument(
        "--provision",
        action="append",
        default=[],
        type=_provision_spec,
        metavar="KEY:SECRET[:pre]",
        help="a provisioning profile that creates devices (':pre': only pre-provisioned ones)",
    )
    parser.add_argument("--max-payload-size", type=int, default=65536)
    parser.add_argument("--oversize-policy", choices=[p.value for p in OversizePolicy], default="drop")
    parser.add_argument("--no-session-limits", action="store_true", help="never answer getSessionLimits")
    parser.add_argument("--tls-port", type=int, help="also listen with TLS (X.509 devices) on this port")
    parser.add_argument("--tls-cert", help="server certificate (PEM) for --tls-port")
    parser.add_argument("--tls-key", help="server private key (PEM) for --tls-port")
    parser.add_argument("--tls-ca", help="CA (PEM) that client certificates must chain to")
    parser.add_argument("--summary-interval", type=float, default=10.0, help="seconds between summaries")
    parser.add_argument("--print-telemetry", action="store_true", help="print every telemetry record")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _print_record(device: Device, record: TelemetryRecord) -> None:
    ts, values = record
    print(f"{device.name} {ts} {json.dumps(values, separators=(',', ':'))}", flush=True)


async def _run(args: argparse.Namespace) -> int:
    tls = None
    if args.tls_port is not None:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            print("--tls-port needs --tls-cert, --tls-key and --tls-ca", file=sys.stderr)
            return 2
        tls = TlsListener(args.tls_cert, args.tls_key, args.tls_ca, args.tls_port)
    emulator = ThingsBoardEmulator(
        host=args.host,
        port=args.port,
        max_payload_size=args.max_payload_size,
        oversize_policy=args.oversize_policy,
        answer_session_limits=not args.no_session_limits,
        tls=tls,
        on_telemetry=_print_record if args.print_telemetry else None,
    )
    for name, token, gateway in args.token:
        emulator.add_device(name, token=token, gateway=gateway)
    for key, secret, allow_create in args.provision:
        emulator.add_provision_profile(key, secret, allow_create=allow_create)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await emulator.start()
    http_server = None
    if args.http_port is not None:
        http_server = await _HttpApi(emulator).serve(args.host, args.http_port)
        log.info("HTTP API on http://%s:%d/api/devices", args.host, http_server.sockets[0].getsockname()[1])
    devices = ", ".join(f"{d.name}{' (gateway)' if d.gateway else ''}" for d in emulator.devices.values())
    log.info("MQTT on %s:%d; devices: %s", args.host, emulator.port, devices or "none (provisioning only)")
    previous: dict[str, int] = {}
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.summary_interval)
            counts = {d.name: len(d.telemetry) for d in emulator.devices.values()}
            changes = [f"{n}={c} (+{c - previous.get(n, 0)})" for n, c in counts.items() if c]
            previous = counts
            c = emulator.counters
            log.info(
                "summary: %d records, %d publishes, %d malformed, %d oversize; %s",
                c.records,
                c.publishes,
                c.malformed,
                c.oversize,
                ", ".join(changes) or "no telemetry yet",
            )
    finally:
        if http_server is not None:
            http_server.close()
        await emulator.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if not args.verbose:
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: amqtt loads the plugins by module path.
    from gateway.sim.tbemu import main as _main

    raise SystemExit(_main())
