"""The slipmux transport under the project's LwM2M server: a device on a pseudo-terminal registers
with binding N, is read and observed through the stored remote, and its notifications take the
fast path (no aiocoap decoding); a CON notification on the fast path is acknowledged."""

from __future__ import annotations

import asyncio
import logging
import os
import tty
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import aiocoap.resource as resource
import pytest

from gateway.lwm2m.node import TimestampedValue
from gateway.lwm2m.server import LwM2mServer, Observation, Registration, RegistrationListener, ServerConfig
from gateway.lwm2m.server.durable import DurableAcks
from gateway.serial.port import FdLink, LinkSettings, SerialLink
from gateway.transport.slipmux import SlipmuxTransport, attach_slipmux
from gateway.transport.slipmux_frames import ConfigurationFrame, SlipmuxDecoder, encode_configuration

log = logging.getLogger("test.slipmux.lwm2m")


class Temperature(resource.ObservableResource):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self) -> None:
        super().__init__()
        self.value = 21.5

    def set(self, value: float) -> None:
        self.value = value
        self.updated_state()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"%g" % self.value, content_format=0)


class Listener(RegistrationListener):
    def __init__(self) -> None:
        self.registered: asyncio.Queue[Registration] = asyncio.Queue()
        self.values: asyncio.Queue[list[TimestampedValue]] = asyncio.Queue()

    def on_registered(self, registration: Registration) -> None:
        self.registered.put_nowait(registration)

    def on_notification(
        self, registration: Registration, observation: Observation, values: list[TimestampedValue], ts: float
    ) -> None:
        self.values.put_nowait(values)


class Setup:
    def __init__(self) -> None:
        self.listener = Listener()
        self.server = LwM2mServer(config=ServerConfig(admit_nosec=True), listener=self.listener)
        self.transport: SlipmuxTransport
        self.device: aiocoap.Context
        self.temperature = Temperature()


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    s = Setup()
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    os.close(slave)
    loop = asyncio.get_running_loop()
    link = SerialLink("ttyACM0", LinkSettings(path, baudrate=57600))

    async def factory(mman: Any) -> SlipmuxTransport:
        return await SlipmuxTransport.create(mman, log, loop, link=link)

    _, s.transport = await s.server.add_transport(factory)
    s.transport.notification_sink = s.server.exchanges  # as the server does for its UDP transport
    site = resource.Site()
    site.add_resource(["3303", "0", "5700"], s.temperature)
    s.device = aiocoap.Context(loop=loop, serversite=site, loggername="test.slipmux.device")
    await attach_slipmux(s.device, FdLink("gateway", master, bytes_per_second=5760))
    try:
        yield s
    finally:
        await s.device.shutdown()
        await s.server.stop()


async def test_register_read_and_observe_over_serial(setup: Setup) -> None:
    register = aiocoap.Message(
        code=aiocoap.POST,
        uri="coap+uart://gateway/rd?ep=meter-7&b=N&lt=600&lwm2m=1.1",
        payload=b"</3303/0>",
        content_format=40,
    )
    created = await asyncio.wait_for(setup.device.request(register).response, 10)
    assert created.code == aiocoap.CREATED
    registration = await asyncio.wait_for(setup.listener.registered.get(), 10)
    assert (registration.endpoint, registration.binding, registration.address) == ("meter-7", "N", "ttyACM0")

    read = await setup.server.read("meter-7", "/3303/0/5700", timeout=10)
    assert read.ok and read.value is not None

    observed = await setup.server.observe("meter-7", "/3303/0/5700", timeout=10)
    assert observed.observation is not None
    for value in (22.0, 22.5):
        setup.temperature.set(value)
        (got,) = await asyncio.wait_for(setup.listener.values.get(), 10)
        assert got.value == value
    assert setup.transport.fast_notifications == 2


async def test_con_notification_on_the_fast_path_is_acknowledged() -> None:
    """A device's CON notification that the sink takes is ACKed by the transport itself."""

    class Sink:
        def __init__(self, transport: SlipmuxTransport) -> None:
            self.observation = type("Obs", (), {"remote": transport.remote})()
            self.got: list[tuple[int, int | None, int | None, bytes]] = []
            self.acks = DurableAcks()

        def observation_for(self, token: bytes) -> Any:
            return self.observation if token == b"tok123" else None

        def notification(self, observation: Any, code: int, seq: int | None, cf: int | None, payload: bytes) -> None:
            self.got.append((code, seq, cf, payload))
            return None  # nothing to wait for: acknowledged at once

    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    os.close(slave)
    ctx = aiocoap.Context(loop=asyncio.get_running_loop(), loggername="test.slipmux.sink")
    transport = await attach_slipmux(ctx, SerialLink("ttyS9", LinkSettings(path)))
    sink = Sink(transport)
    transport.notification_sink = sink
    try:
        # CON 2.05, MID 0x1234, token "tok123", Observe 7, Content-Format 0 (no bytes), payload "5"
        notification = bytes.fromhex("4645 1234") + b"tok123" + bytes.fromhex("6107 60 ff") + b"5"
        os.write(master, encode_configuration(notification))
        received = SlipmuxDecoder()
        frames: list[Any] = []
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(master, readable.set)
        try:
            async with asyncio.timeout(10):
                while not frames:
                    await readable.wait()
                    readable.clear()
                    frames += received.feed(os.read(master, 100))
        finally:
            loop.remove_reader(master)
        assert frames == [ConfigurationFrame(bytes.fromhex("6000 1234"))]  # the empty ACK
        assert sink.got == [(0x45, 7, 0, b"5")] and transport.fast_notifications == 1
    finally:
        await ctx.shutdown()
        os.close(master)
