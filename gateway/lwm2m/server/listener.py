"""The boundary to the application: what the LwM2M server tells the bridge (and anyone else) about devices.

Callbacks are plain (not ``async``) and run on the event loop in the middle of packet handling: they
must return quickly. To do I/O, queue it (``hub.telemetry_nowait``) or start a task. An exception
raised by a listener is logged and otherwise ignored; it never reaches the device.

Subclass :class:`RegistrationListener` and override what you need; every method has a no-op default.
"""

from __future__ import annotations

import asyncio
import enum

from gateway.lwm2m.node import TimestampedValue
from gateway.lwm2m.server.registration import Registration, RegistrationUpdate
from gateway.lwm2m.server.response import Observation


class DeregistrationReason(enum.Enum):
    """Why a registration ended."""

    DEREGISTERED = "deregistered"  # the client sent De-register
    EXPIRED = "expired"  # its lifetime passed without an Update
    REPLACED = "replaced"  # the same endpoint registered again (from the same or another address)
    SERVER_STOPPED = "server stopped"


class ObservationEnd(enum.Enum):
    """Why an observation stopped delivering notifications (other than an explicit cancel)."""

    ERROR_NOTIFICATION = "the device sent an error code"
    FINAL_NOTIFICATION = "the device sent a notification without Observe (the last one)"
    RESET = "the device reset a request on it"


class RegistrationListener:
    """Receives registration events, notifications and Send reports. All methods are optional."""

    def on_registered(self, registration: Registration) -> None:
        """A client registered (``registration.id`` is new)."""

    def on_updated(self, registration: Registration, update: RegistrationUpdate) -> None:
        """A client sent an Update; ``update`` holds what it carried (``update.empty``: only a refresh)."""

    def on_deregistered(self, registration: Registration, reason: DeregistrationReason) -> None:
        """A registration ended; its observations ended with it."""

    def on_notification(
        self, registration: Registration, observation: Observation, values: list[TimestampedValue], ts: float
    ) -> None:
        """A notification: every value it carried (with the device's time, or None), received at ``ts``
        (Unix seconds, this gateway's clock)."""

    def on_observation_ended(self, registration: Registration, observation: Observation, why: ObservationEnd) -> None:
        """The device ended an observation (error code or final notification)."""

    def on_send(self, registration: Registration, values: list[TimestampedValue], ts: float) -> None:
        """A LwM2M 1.1+ Send (``POST /dp``) with these values, received at ``ts``."""

    def durable_barrier(self) -> asyncio.Future[None] | None:
        """Asked right after :meth:`on_notification` or :meth:`on_send`: a future that is done once
        what that call accepted is durable (an exception: it was not kept), or None when nothing is
        pending. The server acknowledges a CON notification, and answers a Send, only then: what a
        device was told we have, we have."""
        return None
