"""The one interface between southbound adapters (LwM2M, serial) and the ThingsBoard side.

Adapters report what their devices do through a :class:`DeviceHub`; every report becomes an outbox
record, durable before the awaited call returns, so an adapter may acknowledge its device only
after ``await hub.telemetry(...)`` came back. What comes down from ThingsBoard (RPC, shared
attribute updates) reaches the adapter that connected the device, through the :class:`Southbound`
protocol it implements. Adapters never see MQTT; the upstream never sees CoAP.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.core.records import RecordKind

log = logging.getLogger("gateway.hub")


class RpcError(Exception):
    """An RPC could not be carried out; ``code`` is short and stable, ``str()`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def as_reply(self) -> dict[str, Any]:
        return {"error": str(self), "code": self.code}


class Southbound(Protocol):
    """What an adapter offers its devices' ThingsBoard side."""

    name: str

    async def rpc(self, device: str, method: str, params: Any, timeout: float) -> Any:
        """Run ``method`` on ``device``; return a JSON-able result or raise :class:`RpcError`."""

    async def attributes_updated(self, device: str, values: Mapping[str, Any], deleted: Sequence[str]) -> None:
        """Shared attributes of ``device`` changed in ThingsBoard."""


class AttributeSource(Protocol):
    async def request_device_attributes(
        self, device: str, keys: Sequence[str], *, client: bool, timeout: float = 10.0
    ) -> dict[str, Any]: ...


class Outbox(Protocol):
    def append(self, kind: RecordKind, device: str, body: str, ts_ms: int | None = None) -> asyncio.Future[None]:
        ...


class DeviceRoute(Protocol):
    """Devices that go upstream over their own sessions (per-device mode) instead of the gateway API.

    ``append`` takes their records (same kinds as the gateway outbox); ``connected``/``disconnected``
    replace the CONNECT/DISCONNECT records the gateway API would get.
    """

    def owns(self, profile: str) -> bool: ...

    def connected(self, device: str, profile: str) -> None: ...

    def disconnected(self, device: str) -> None: ...

    def append(self, kind: RecordKind, device: str, body: str, ts_ms: int | None = None) -> asyncio.Future[None]:
        ...

    async def wait_session(self, device: str, timeout: float) -> bool: ...

    async def request_attributes(
        self, device: str, keys: Sequence[str], *, shared: bool = True, timeout: float = 10.0
    ) -> dict[str, Any]: ...


class Delivery(Protocol):
    """The uplink, as far as the hub needs it: when has a record reached ThingsBoard?"""

    async def wait_delivered(self, record_id: int) -> None:
        """Return once every record up to ``record_id`` is acknowledged by ThingsBoard; raises
        ConnectionError if this uplink stops first."""


@dataclass(slots=True)
class DeviceEntry:
    name: str
    profile: str
    adapter: Southbound
    #: the outbox id of its CONNECT record (0: none, e.g. per-device mode)
    connect_id: int = 0


# One encoder for every record: json.dumps with these options builds a new JSONEncoder per call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _dumps(values: Mapping[str, Any]) -> str:
    return _ENCODE(values)


class DeviceHub:
    """Devices known to this gateway right now, and the door to the outbox.

    ``connected`` is a dict lookup (O(1)); nothing here scans all devices.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._devices: dict[str, DeviceEntry] = {}
        self.attribute_source: AttributeSource | None = None  # set while an upstream session exists
        self.device_route: DeviceRoute | None = None  # set when some profile uses per-device mode
        self.delivery: Delivery | None = None  # set while an uplink runs
        # Devices of per-device-mode profiles (kept after a disconnect: late records go the same way).
        self._routed: dict[str, DeviceRoute] = {}

    def _sink(self, device: str) -> Outbox:
        # Empty unless per-device mode is in use: the gateway-API path pays one truth test.
        return self._routed.get(device, self._outbox) if self._routed else self._outbox

    # -- southbound -> ThingsBoard ------------------------------------------------------------

    async def connect(self, device: str, profile: str, adapter: Southbound) -> None:
        """``device`` is online and handled by ``adapter``; ThingsBoard creates it if it is new."""
        entry = self._devices[device] = DeviceEntry(device, profile, adapter)
        route = self.device_route
        if route is not None and route.owns(profile):
            self._routed[device] = route
            route.connected(device, profile)
            return
        if self._routed:
            self._routed.pop(device, None)
        durable = self._outbox.append(RecordKind.CONNECT, device, _dumps({"type": profile}))
        entry.connect_id = getattr(self._outbox, "last_id", 0)
        await durable

    async def known_upstream(self, device: str) -> bool:
        """Wait until ThingsBoard has received ``device``'s CONNECT record, so that a request about
        it does not make ThingsBoard create it with the default type first. False if the device
        disconnected meanwhile, is not on the gateway API, or the uplink stopped."""
        entry = self._devices.get(device)
        route = self._routed.get(device) if self._routed else None
        if entry is not None and route is not None:  # provisioned under its profile: known once online
            return await route.wait_session(device, timeout=60.0) and self._devices.get(device) is entry
        delivery = self.delivery
        if entry is None or not entry.connect_id or delivery is None:
            return False
        try:
            await delivery.wait_delivered(entry.connect_id)
        except ConnectionError:
            return False
        return self._devices.get(device) is entry

    async def disconnect(self, device: str) -> None:
        if self._devices.pop(device, None) is not None:
            route = self._routed.get(device) if self._routed else None
            if route is not None:
                route.disconnected(device)
                return
            await self._outbox.append(RecordKind.DISCONNECT, device, "{}")

    def telemetry_nowait(
        self, device: str, values: Mapping[str, Any], ts_ms: int | None = None
    ) -> asyncio.Future[None]:
        """Queue a telemetry record; the returned future resolves once it is durable.

        Many records share one future (group commit): awaiting each is cheap.
        Raises ValueError for values that are not JSON (NaN, infinities, objects).
        """
        return self._sink(device).append(RecordKind.TELEMETRY, device, _dumps(values), ts_ms)

    async def telemetry(self, device: str, values: Mapping[str, Any], ts_ms: int | None = None) -> None:
        await self.telemetry_nowait(device, values, ts_ms)

    async def attributes(self, device: str, values: Mapping[str, Any]) -> None:
        await self._sink(device).append(RecordKind.ATTRIBUTES, device, _dumps(values))

    async def claim(self, device: str, secret_key: str | None = None, duration_ms: int | None = None) -> None:
        body: dict[str, Any] = {}
        if secret_key is not None:
            body["secretKey"] = secret_key
        if duration_ms is not None:
            body["durationMs"] = duration_ms
        await self._sink(device).append(RecordKind.CLAIM, device, _dumps(body))

    async def request_attributes(
        self, device: str, keys: Sequence[str], *, shared: bool = True, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Ask ThingsBoard for ``device``'s shared (or client) attributes; keys it lacks are absent.

        Raises RpcError("offline") when there is no upstream session to ask (not provisioned yet),
        TimeoutError or ConnectionError when ThingsBoard does not answer.
        """
        route = self._routed.get(device) if self._routed else None
        if route is not None:
            # Over its own session, never through the gateway API (that would make it a child).
            return await route.request_attributes(device, keys, shared=shared, timeout=timeout)
        if self.attribute_source is None:
            raise RpcError("offline", "ThingsBoard is not reachable: the gateway is not provisioned")
        return await self.attribute_source.request_device_attributes(device, keys, client=not shared, timeout=timeout)

    # -- the gateway itself -------------------------------------------------------------------

    def self_telemetry_nowait(self, values: Mapping[str, Any], ts_ms: int | None = None) -> asyncio.Future[None]:
        return self._outbox.append(RecordKind.SELF_TELEMETRY, "", _dumps(values), ts_ms)

    async def self_attributes(self, values: Mapping[str, Any]) -> None:
        await self._outbox.append(RecordKind.SELF_ATTRIBUTES, "", _dumps(values))

    # -- ThingsBoard -> southbound ------------------------------------------------------------

    def handler_for(self, device: str) -> Southbound | None:
        entry = self._devices.get(device)
        return entry.adapter if entry is not None else None

    def entry(self, device: str) -> DeviceEntry | None:
        return self._devices.get(device)

    def is_connected(self, device: str) -> bool:
        return device in self._devices

    def is_routed(self, device: str) -> bool:
        """True if ``device`` goes upstream over its own session (per-device mode)."""
        return bool(self._routed) and device in self._routed

    @property
    def online(self) -> int:
        return len(self._devices)

    def devices(self) -> list[DeviceEntry]:
        return list(self._devices.values())
