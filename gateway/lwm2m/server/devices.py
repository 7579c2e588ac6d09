"""Registered devices: the per-device record and the index (by endpoint, by location, by address).

Every lookup is a dict access. A :class:`Device` holds no references back to the server and none
between its own parts that form cycles, so that when a registration ends, reference counting frees
it even after ``gc.freeze()`` moved it out of the collector's reach.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.lwm2m.server.registration import Registration
from gateway.lwm2m.server.timers import Timer


class Held:
    """A request waiting for a sleeping queue-mode device to wake: released by setting ``future``."""

    __slots__ = ("future", "timer")

    def __init__(self, future: Any) -> None:
        self.future = future
        self.timer: Timer | None = None


class Device:
    """What the server keeps per registration (mutable; :class:`Registration` is the immutable view)."""

    __slots__ = (
        "active",
        "awake_until",
        "busy",
        "expires_at",
        "expiry_timer",
        "held",
        "last_seen",
        "mman",
        "observations",
        "reg",
        "remote",
    )

    def __init__(self, reg: Registration, remote: Any, mman: Any, now: float, expires_at: float) -> None:
        self.reg = reg
        self.remote = remote
        self.mman = mman
        self.last_seen = now  # loop time
        self.expires_at = expires_at  # loop time
        self.expiry_timer: Timer | None = None
        self.awake_until = now
        self.active = True
        #: Observation tokens of this device (None: none yet).
        self.observations: set[bytes] | None = None
        #: Queue mode: requests held until the device talks, and whether one is in flight.
        self.held: deque[Held] | None = None
        self.busy = False

    @property
    def endpoint(self) -> str:
        return self.reg.endpoint


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One line of the operator's device list (``edge-gateway devices``)."""

    endpoint: str
    address: str
    binding: str
    lwm2m_version: str
    lifetime: int
    lifetime_left: float
    last_seen: float  # Unix seconds
    objects: tuple[str, ...]
    observations: int
    held_requests: int


class Registrations:
    """The registered devices, read-only for callers: ``get(endpoint)``, ``by_location(id)``, ``len``, iteration."""

    def __init__(self) -> None:
        self._by_endpoint: dict[str, Device] = {}
        self._by_id: dict[str, Device] = {}
        self._by_remote: dict[Any, Device] = {}

    def get(self, endpoint: str) -> Registration | None:
        device = self._by_endpoint.get(endpoint)
        return None if device is None else device.reg

    def by_location(self, registration_id: str) -> Registration | None:
        """The registration at ``/rd/{registration_id}``."""
        device = self._by_id.get(registration_id)
        return None if device is None else device.reg

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._by_endpoint

    def __iter__(self) -> Iterator[Registration]:
        return (device.reg for device in list(self._by_endpoint.values()))

    # -- for the server -----------------------------------------------------------------------------

    def device(self, endpoint: str) -> Device | None:
        return self._by_endpoint.get(endpoint)

    def device_at(self, registration_id: str) -> Device | None:
        return self._by_id.get(registration_id)

    def device_from(self, remote: Any) -> Device | None:
        return self._by_remote.get(remote)

    def devices(self) -> list[Device]:
        return list(self._by_endpoint.values())

    def add(self, device: Device) -> None:
        self._by_endpoint[device.reg.endpoint] = device
        self._by_id[device.reg.id] = device
        self._by_remote[device.remote] = device

    def move(self, device: Device, remote: Any) -> None:
        """``device`` now talks from ``remote``."""
        if self._by_remote.get(device.remote) is device:
            del self._by_remote[device.remote]
        device.remote = remote
        self._by_remote[remote] = device

    def remove(self, device: Device) -> None:
        reg = device.reg
        if self._by_endpoint.get(reg.endpoint) is device:
            del self._by_endpoint[reg.endpoint]
        if self._by_id.get(reg.id) is device:
            del self._by_id[reg.id]
        if self._by_remote.get(device.remote) is device:
            del self._by_remote[device.remote]
