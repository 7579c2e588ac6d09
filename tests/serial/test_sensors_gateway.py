"""A serial sensor through the whole gateway in this process, against the ThingsBoard emulator:
lines up as telemetry and attributes, RPC and shared attributes down as lines, unplug and replug."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_port_helpers import StablePath

from gateway import config
from gateway.app import Gateway
from gateway.serial.port import LinkState
from gateway.serial.sensors import SerialSensorAdapter
from gateway.sim.tbemu import ThingsBoardEmulator
from gateway.upstream.session import SessionState

GW = "serial-gateway"
SENSOR = "Boiler 1"


class Running:
    def __init__(self, gw: Gateway, emu: ThingsBoardEmulator, adapter: SerialSensorAdapter, port: StablePath) -> None:
        self.gw = gw
        self.emu = emu
        self.adapter = adapter
        self.port = port


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with ThingsBoardEmulator() as emu:
        emu.add_device(GW, token="tok", gateway=True)
        stable = StablePath(tmp_path / "by-id")
        stable.plug()
        f = tmp_path / "g.toml"
        # The port comes from the configuration file, as an operator writes it: this also tests
        # the [[serial.ports]] wiring of config.py and app.py.
        f.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
[thingsboard]
port = {emu.port}
credentials = "access_token"
token = "tok"
[clock]
trust = "always"
[lwm2m]
enabled = false

[[serial.ports]]
name = "boiler"
path = "{stable.path}"
baudrate = 9600
device = "{SENSOR}"
profile = "boiler"
terminator = "\\r\\n"
reopen_min_s = 0.01
reopen_max_s = 0.05
attribute_template = "CFG {{name}} {{value}}"
[serial.ports.converter]
type = "regex"
pattern = 'T=(?P<t>-?[0-9]+) P=(?P<p>[0-9.]+) FW=(?P<fw>\\S+)'
[serial.ports.converter.fields.t]
type = "int"
key = "temperature"
unit = "C"
scale = 0.1
[serial.ports.converter.fields.p]
type = "float"
key = "pressure"
unit = "bar"
[serial.ports.converter.fields.fw]
type = "str"
key = "firmware"
target = "attribute"
[serial.ports.rpc]
reset = "RESET"
[serial.ports.rpc.setSetpoint]
template = "SP {{value}}"
reply = '^SP=(?P<setpoint>[-0-9.]+)$'
""")
        gw = Gateway(config.load(f, env={}))
        await gw.start()
        assert gw.hub is not None and gw.session is not None and gw.serial is not None
        adapter = gw.serial
        try:
            await asyncio.wait_for(gw.session.wait_for_state(SessionState.CONNECTED), 10)
            await emu.wait_for(lambda: SENSOR in emu.devices and emu.device(SENSOR).connected, timeout=10)
            yield Running(gw, emu, adapter, stable)
        finally:
            await gw.stop()
            stable.close()


async def test_lines_become_thingsboard_telemetry_and_attributes(running: Running) -> None:
    emu, peer = running.emu, running.port.peer
    assert peer is not None
    peer.write(b"T=215 P=1.5 FW=2.1.0\r\ngarbage\r\nT=220 P=1.6 FW=2.1.0\r\n")
    device = emu.device(SENSOR)
    await emu.wait_for(lambda: len(device.telemetry) == 2 and "firmware" in device.attributes_client, timeout=10)
    assert [values for _ts, values in device.telemetry] == [
        {"temperature": 21.5, "pressure": 1.5},
        {"temperature": 22.0, "pressure": 1.6},
    ]
    assert device.type == "boiler" and device.parent == GW
    assert device.attributes_client == {"temperature_unit": "C", "pressure_unit": "bar", "firmware": "2.1.0"}
    assert running.adapter.port("boiler").bad_lines == 1


async def test_rpc_and_shared_attributes_reach_the_device(running: Running) -> None:
    emu, peer = running.emu, running.port.peer
    assert peer is not None
    reply = asyncio.ensure_future(emu.rpc(SENSOR, "setSetpoint", {"value": 65}, timeout=10))
    assert await peer.line() == b"SP 65\r\n"
    peer.write(b"SP=65\r\n")
    assert await reply == {"reply": "SP=65", "setpoint": "65"}
    assert await emu.rpc(SENSOR, "reset", None, timeout=10) == {"written": 7}
    assert await peer.line() == b"RESET\r\n"
    unknown = await emu.rpc(SENSOR, "selfDestruct", None, timeout=10)
    assert unknown["code"] == "unknown_method"

    await emu.set_shared_attributes(SENSOR, {"mode": "eco"})
    assert await peer.line() == b"CFG mode eco\r\n"


async def test_unplug_and_replug_show_in_thingsboard_and_status(running: Running) -> None:
    emu, gw, adapter = running.emu, running.gw, running.adapter
    link = adapter.port("boiler").link
    running.port.unplug()
    await emu.wait_for(lambda: not emu.device(SENSOR).connected, timeout=10)
    assert link.state is LinkState.WAITING
    assert gw.hub is not None and gw.hub.handler_for(SENSOR) is None
    assert gw.status()["devices_online"] == 0

    peer = running.port.plug()
    await link.wait_for_state(LinkState.OPEN, timeout=10)
    await emu.wait_for(lambda: emu.device(SENSOR).connected, timeout=10)
    peer.write(b"T=100 P=1.0 FW=2.1.1\r\n")
    await emu.wait_for(lambda: emu.device(SENSOR).attributes_client.get("firmware") == "2.1.1", timeout=10)
    assert emu.device(SENSOR).connects == 2
    (status,) = adapter.status()
    assert status["state"] == "open" and status["reopens"] == 1
    assert adapter.self_telemetry()["serialPortsOpen"] == 1
    assert gw.hub is not None and gw.hub.is_connected(SENSOR)
