"""Fixtures for the LwM2M server tests: a server on an ephemeral loopback port, a recording listener,
and fleets of simulated clients.

Waiting is event-driven: :meth:`Recorder.until` and :meth:`gateway.sim.lwm2m_client.Fleet.until`
resolve when a condition becomes true after an event, with a timeout as the failure bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.lwm2m.node import TimestampedValue
from gateway.lwm2m.server import (
    DeregistrationReason,
    LwM2mServer,
    Observation,
    ObservationEnd,
    Registration,
    RegistrationListener,
    RegistrationUpdate,
    ServerConfig,
)
from gateway.sim.lwm2m_client import Fleet


class Recorder(RegistrationListener):
    """Records every listener event; ``await recorder.until(lambda: ...)`` waits for a condition."""

    def __init__(self) -> None:
        self.registered: list[Registration] = []
        self.updated: list[tuple[Registration, RegistrationUpdate]] = []
        self.deregistered: list[tuple[Registration, DeregistrationReason]] = []
        self.notifications: list[tuple[Registration, Observation, list[TimestampedValue]]] = []
        self.ended: list[tuple[Observation, ObservationEnd]] = []
        self.sends: list[tuple[Registration, list[TimestampedValue]]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def _changed(self) -> None:
        still = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                still.append((predicate, future))
        self._waiters = still

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await asyncio.wait_for(future, timeout)

    def on_registered(self, registration: Registration) -> None:
        self.registered.append(registration)
        self._changed()

    def on_updated(self, registration: Registration, update: RegistrationUpdate) -> None:
        self.updated.append((registration, update))
        self._changed()

    def on_deregistered(self, registration: Registration, reason: DeregistrationReason) -> None:
        self.deregistered.append((registration, reason))
        self._changed()

    def on_notification(
        self, registration: Registration, observation: Observation, values: list[TimestampedValue], ts: float
    ) -> None:
        self.notifications.append((registration, observation, values))
        self._changed()

    def on_observation_ended(self, registration: Registration, observation: Observation, why: ObservationEnd) -> None:
        self.ended.append((observation, why))
        self._changed()

    def on_send(self, registration: Registration, values: list[TimestampedValue], ts: float) -> None:
        self.sends.append((registration, values))
        self._changed()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


ServerFactory = Callable[..., Awaitable[LwM2mServer]]


@pytest.fixture
async def server_factory(recorder: Recorder) -> AsyncIterator[ServerFactory]:
    """``await server_factory(**config)``: a started server (NoSec admitted unless said otherwise)."""
    servers: list[LwM2mServer] = []

    async def make(**config: Any) -> LwM2mServer:
        check = config.pop("registration_check", None)
        config.setdefault("admit_nosec", True)
        server = LwM2mServer(config=ServerConfig(**config), listener=recorder, registration_check=check)
        await server.start(("127.0.0.1", 0))
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(server_factory: ServerFactory) -> LwM2mServer:
    return await server_factory()


FleetFactory = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def fleet_factory(server: LwM2mServer) -> AsyncIterator[FleetFactory]:
    """``await fleet_factory(count, **options)``: started (not yet registered) simulated clients."""
    fleets: list[Fleet] = []

    async def make(count: int = 1, target: LwM2mServer | None = None, **options: Any) -> Fleet:
        fleet = Fleet((target or server).address, count, **options)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.close()
