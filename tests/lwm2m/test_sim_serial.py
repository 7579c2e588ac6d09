"""The fleet simulator over a serial line: a simulated LwM2M client speaks CoAP in slipmux frames on a
pseudo-terminal (the Non-IP binding, ``b=N``) to the project's LwM2M server behind the slipmux
transport, as the gateway runs it for a ``[[serial.ports]]`` port with ``protocol = "slipmux"``.

The gateway's side opens the pty's slave with pyserial (a :class:`SerialLink`, as for a real port);
the simulator writes to the master (an :class:`FdLink`). The command-line test swaps the sides: the
simulator process opens the port by its path, as ``edge-gateway simulate --serial PORT`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tty
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import SingleResource
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import LwM2mServer, ServerConfig
from gateway.serial.port import ByteLink, FdLink, LinkSettings, SerialLink
from gateway.sim.lwm2m_client import Fleet
from gateway.sim.serial_link import SlipmuxDatagrams
from gateway.transport.slipmux import SlipmuxTransport

log = logging.getLogger("test.sim.serial")
PORT = "ttyUSB7"
TEMPERATURE = LwM2mPath(3303, 0, 5700)


def pty_pair() -> tuple[int, str]:
    """A pseudo-terminal standing in for a UART: (master descriptor, slave path)."""
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    os.close(slave)
    return master, path


async def serve_slipmux(server: LwM2mServer, link: ByteLink) -> SlipmuxTransport:
    """The slipmux transport on ``link`` under ``server``, as the gateway adds one per port."""
    loop = asyncio.get_running_loop()

    async def factory(mman: Any) -> SlipmuxTransport:
        return await SlipmuxTransport.create(mman, log, loop, link=link)

    transport: SlipmuxTransport = (await server.add_transport(factory))[1]
    transport.notification_sink = server.exchanges
    return transport


@dataclass
class Site:
    server: LwM2mServer
    recorder: Any  # conftest.Recorder
    transport: SlipmuxTransport
    fleet: Fleet


@pytest.fixture
async def site(recorder: Any) -> AsyncIterator[Site]:
    server = LwM2mServer(config=ServerConfig(admit_nosec=True, request_timeout=10.0), listener=recorder)
    master, path = pty_pair()
    transport = await serve_slipmux(server, SerialLink(PORT, LinkSettings(path, baudrate=115200)))
    fleet = Fleet(("serial", 0), 1, prefix="meter-", binding="N", links=[FdLink("gateway", master)])
    await fleet.start()
    try:
        yield Site(server, recorder, transport, fleet)
    finally:
        await fleet.close()
        await server.stop()


async def test_registers_with_binding_n_and_is_read_written_observed(site: Site) -> None:
    server, recorder, fleet = site.server, site.recorder, site.fleet
    client = fleet.clients[0]
    await fleet.register_and_wait(timeout=10)
    (registration,) = recorder.registered
    assert (registration.endpoint, registration.binding, registration.address) == ("meter-000000", "N", PORT)
    assert registration.lwm2m_version == "1.1"

    # Read, in the server's choice of format and in plain text
    client.temperature = 21.5
    read = await server.read("meter-000000", "/3303/0/5700", timeout=10)
    assert read.ok and read.value is not None and read.value.value == 21.5  # type: ignore[union-attr]
    text = await server.read("meter-000000", "/3/0/1", format=ContentFormat.TEXT, timeout=10)
    assert text.ok and text.value is not None and text.value.value == "fleet-sim"  # type: ignore[union-attr]

    # Write, then read back
    written = await server.write_attributes("meter-000000", "/3303/0/5700", {"pmin": 1}, timeout=10)
    assert written.ok
    wrote = await server.write("meter-000000", "/3/0/14", SingleResource(14, "+02:00", ResourceType.STRING), timeout=10)
    assert wrote.ok, wrote
    assert client.writes[-1] == LwM2mPath(3, 0, 14)
    back = await server.read("meter-000000", "/3/0/14", timeout=10)
    assert back.value is not None and back.value.value == "+02:00"  # type: ignore[union-attr]

    # Observe: the notifications come over the line (and take the transport's fast path)
    observed = await server.observe("meter-000000", "/3303/0/5700", timeout=10)
    assert observed.ok and observed.observation is not None
    for n, value in enumerate((22.0, 22.5), 1):
        client.temperature = value
        client.notify()
        await recorder.until(lambda n=n: len(recorder.notifications) == n)
    assert [v.value for _, _, vs in recorder.notifications for v in vs] == [22.0, 22.5]
    assert site.transport.fast_notifications == 2
    assert [v.path for _, _, vs in recorder.notifications for v in vs] == [TEMPERATURE, TEMPERATURE]

    # Send (POST /dp), then de-register
    client.send_values([TEMPERATURE], ContentFormat.SENML_JSON)
    await fleet.until(lambda: fleet.stats["send_ok"] == 1)
    assert [[v.value for v in vs] for _, vs in recorder.sends] == [[22.5]]
    fleet.deregister_all()
    await fleet.until(lambda: fleet.stats["deregistered"] == 1)
    assert [r.endpoint for r, _ in recorder.deregistered] == ["meter-000000"]
    assert fleet.stats["send_errors"] == 0 and fleet.stats["timeouts"] == 0


async def test_line_noise_and_diagnostics_between_frames_do_not_disturb(site: Site) -> None:
    fleet = site.fleet
    datagrams = fleet.clients[0].sock
    assert isinstance(datagrams, SlipmuxDatagrams)
    datagrams.send_raw(b"\x00garbage\xc0\xa9\x01\x02\xc0")  # noise, then a frame with a bad FCS
    datagrams.send_diagnostic("booting, firmware 1.0")
    await fleet.register_and_wait(timeout=10)
    client = fleet.clients[0]
    client.temperature = 19.25
    read = await site.server.read("meter-000000", "/3303/0/5700", timeout=10)
    assert read.value is not None and read.value.value == 19.25  # type: ignore[union-attr]
    assert site.transport.diagnostics == 1
    counters = site.transport.decoder.counters()
    assert sum(counters.values()) > 0  # the broken frame was counted, not delivered


async def test_a_closed_port_is_a_send_error_not_a_crash(site: Site) -> None:
    fleet = site.fleet
    await fleet.register_and_wait(timeout=10)
    client = fleet.clients[0]
    datagrams = client.sock
    assert isinstance(datagrams, SlipmuxDatagrams)
    datagrams.link.close()
    client.update()
    assert fleet.stats["send_errors"] == 1
    with pytest.raises(BlockingIOError):
        datagrams.recv(100)


async def test_simulate_command_line_on_a_serial_port(recorder: Any) -> None:
    """``python -m gateway.sim.lwm2m_client --serial PORT --binding N`` (what ``edge-gateway simulate``
    runs) opens the port by its path and registers over it."""
    server = LwM2mServer(config=ServerConfig(admit_nosec=True, request_timeout=10.0), listener=recorder)
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)  # the slave stays open here: a pty whose slave nobody holds reads EIO
    await serve_slipmux(server, FdLink("sim-port", master))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.sim.lwm2m_client", "--serial", path, "--binding", "N",
        "--prefix", "cli-", "--stats-interval", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert ready == {"event": "ready", "clients": 1}
        await recorder.until(lambda: bool(recorder.registered), 30)
        (registration,) = recorder.registered
        assert (registration.endpoint, registration.binding, registration.address) == ("cli-000000", "N", "sim-port")
        read = await server.read("cli-000000", "/3/0/2", timeout=10)
        assert read.value is not None and read.value.value == "cli-000000"  # type: ignore[union-attr]
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await server.stop()
        os.close(slave)
