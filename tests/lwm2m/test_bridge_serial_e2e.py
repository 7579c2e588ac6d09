"""End to end over a serial line: the project's simulator speaks LwM2M in slipmux frames on a
pseudo-terminal (binding N) to the whole gateway, which has the port in its configuration file as a
``[[serial.ports]]`` slipmux port, and the device reaches the ThingsBoard emulator through the bridge.

And the Non-IP promise: the same client (same profile, same values, same operations) once over
CoAP/UDP and once over the serial line leaves the same data in ThingsBoard: device type and parent,
client attributes, every telemetry key's values with their types, and the RPC replies. Only the
timestamps (and the endpoint names) differ.
"""

from __future__ import annotations

import os
import tty
from pathlib import Path
from typing import Any

from test_bridge_e2e import GW, SENSOR, Site, site, values_of

from gateway.lwm2m.path import LwM2mPath
from gateway.serial.port import FdLink, LinkState
from gateway.sim.lwm2m_client import Fleet, SimClient

PORT = "meter"
# The e2e profile without its writable key (utcOffset, /3/0/14): the bridge's shared-attribute sync on
# registration sends an attribute request straight over MQTT, which can overtake the CONNECT still in
# the outbox, and the emulator (as ThingsBoard would) then creates the device with the default type.
# That race is the bridge's, not the serial line's; this test compares UDP with serial without it.
PROFILE = SENSOR.replace('[paths."/3/0/14"]\nkey = "utcOffset"\n', "")
assert PROFILE != SENSOR


def serial_port_config(path: str) -> str:
    return f"""
[[serial.ports]]
name = "{PORT}"
path = "{path}"
protocol = "slipmux"
baudrate = 115200
"""


async def exercise(s: Site, fleet: Fleet, client: SimClient) -> list[Any]:
    """Register ``client``, then read, write, observe and notify through ThingsBoard RPC and the
    device's own notifications; de-register. Returns the (binding, address) it registered with, then
    the RPC replies."""
    emu, ep = s.emu, client.endpoint
    client.temperature = 21.5
    client.battery = 87
    client.register()
    await fleet.until(lambda: client.registered)
    # after registration: attributes read, battery read, temperature observed (the profile's keys)
    await emu.wait_for(
        lambda: ep in emu.devices
        and emu.device(ep).connected
        and {"units", "manufacturer"} <= emu.device(ep).attributes_client.keys()
        and bool(values_of(emu, ep, "temperature"))
        and bool(values_of(emu, ep, "battery")),
        15,
    )
    registration = s.server.registrations.get(ep)
    assert registration is not None
    binding = (registration.binding, registration.address)
    await s.bridge.idle()
    replies: list[Any] = [binding,
        await emu.rpc(ep, "Read", {"id": "/3/0/9"}, timeout=15),
        await emu.rpc(ep, "WriteReplace", {"id": "/3/0/14", "value": "+02"}, timeout=15),
        await emu.rpc(ep, "Read", {"id": "/3/0/14"}, timeout=15),
        await emu.rpc(ep, "Observe", {"id": "/3/0/9"}, timeout=15),
    ]
    assert client.writes[-1] == LwM2mPath(3, 0, 14)
    # the device notifies: a new temperature, then a new battery level (notify() sends every observation)
    client.temperature = 22.25
    client.notify()
    await emu.wait_for(lambda: values_of(emu, ep, "temperature")[-1:] == [22.25], 15)
    client.battery = 86
    client.notify()
    await emu.wait_for(lambda: values_of(emu, ep, "battery")[-1:] == [86], 15)
    replies.append(await emu.rpc(ep, "ObserveCancelAll", None, timeout=15))
    client.deregister()
    await emu.wait_for(lambda: not emu.device(ep).connected, 15)
    return replies


def thingsboard_view(s: Site, ep: str) -> dict[str, Any]:
    """What ThingsBoard holds of a device, without timestamps: per key the values and their types."""
    device = s.emu.device(ep)
    telemetry: dict[str, list[tuple[str, Any]]] = {}
    for _, values in device.telemetry:
        for key, value in values.items():
            telemetry.setdefault(key, []).append((type(value).__name__, value))
    attributes = {key: (type(value).__name__, value) for key, value in device.attributes_client.items()}
    return {"type": device.type, "parent": device.parent, "attributes": attributes, "telemetry": telemetry}


async def test_same_client_over_udp_and_over_serial_gives_identical_thingsboard_data(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)  # kept open here until the end: a pty nobody holds the slave of reads EIO
    try:
        async with site(tmp_path, [PROFILE], serial_port_config(path)) as s:
            (transport,) = s.gateway.slipmux
            assert transport.link.state is LinkState.OPEN and transport.port_name == PORT
            udp = Fleet(s.server.address, 1, prefix="sim-udp-")
            serial = Fleet(("serial", 0), 1, prefix="sim-serial-", binding="N", links=[FdLink("gateway", master)])
            await udp.start()
            await serial.start()
            try:
                udp_replies = await exercise(s, udp, udp.clients[0])
                serial_replies = await exercise(s, serial, serial.clients[0])
            finally:
                await udp.close()
                await serial.close()

            # the serial device really came over the line, registered with binding N
            assert transport.messages_in > 0 and transport.fast_notifications >= 3
            assert serial.stats["send_errors"] == 0 and serial.stats["timeouts"] == 0
            # ... and reached ThingsBoard exactly as the UDP one did
            assert serial_replies[0] == ("N", PORT) and udp_replies[0][0] == "U"
            assert serial_replies[1:] == udp_replies[1:]
            assert [r["result"] for r in serial_replies[1:]] == ["CONTENT", "CHANGED", "CONTENT", "CONTENT", "CONTENT"]
            udp_view = thingsboard_view(s, "sim-udp-000000")
            serial_view = thingsboard_view(s, "sim-serial-000000")
            assert serial_view == udp_view
            assert serial_view["type"] == "node-sensor" and serial_view["parent"] == GW
            assert serial_view["telemetry"]["temperature"][-1] == ("float", 22.25)
            assert serial_view["telemetry"]["battery"][-1] == ("int", 86)
            assert serial_view["attributes"]["units"] == ("str", "Cel")
    finally:
        os.close(slave)
