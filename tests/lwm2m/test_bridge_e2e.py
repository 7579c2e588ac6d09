"""End to end: LwM2M client -> gateway (LwM2M server + bridge + hub + outbox + uplink) -> ThingsBoard emulator.

The gateway is the composed :class:`gateway.app.Gateway` (outbox, MQTT session, uplink, downlink);
the LwM2M server and the bridge are attached to its hub here as the composition root attaches them.
Clients: ``lwm2m-node-lib`` (a client the project did not write; LwM2M 1.0, plain text) for the common
operations, and the project's simulator for every RPC method and for the offline run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import config
from gateway.app import Gateway
from gateway.lwm2m.bridge import LwM2mBridge
from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.server import LwM2mServer
from gateway.sim.lwm2m_client import CONTENT_FORMAT, POST, URI_PATH, Fleet, uint
from gateway.sim.tbemu import ThingsBoardEmulator
from gateway.upstream.session import SessionState

GW = "e2e-gateway"
PEERS = Path(__file__).resolve().parents[1] / "peers"
NODE = shutil.which("node")
LIBRARY = PEERS / "node_modules" / "lwm2m-node-lib"

SENSOR = """
name = "node-sensor"
[match]
endpoints = ["node-*", "sim-*"]
[paths."/3303/0/5700"]
key = "temperature"
telemetry = true
observe = true
[paths."/3303/0/5701"]
key = "units"
attribute = true
[paths."/3/0/9"]
key = "battery"
telemetry = true
[paths."/3/0/0"]
key = "manufacturer"
attribute = true
[paths."/3/0/14"]
key = "utcOffset"
"""


class Link:
    """A TCP relay between the gateway and the emulator that can be cut (the uplink goes down) and
    restored on the same port, while the emulator keeps running and keeps what it received."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@dataclass(slots=True)
class Site:
    gateway: Gateway
    server: LwM2mServer
    bridge: LwM2mBridge
    emu: ThingsBoardEmulator
    link: Link


@contextlib.asynccontextmanager
async def site(tmp_path: Path, profiles: list[str], extra_config: str = "") -> AsyncIterator[Site]:
    """Emulator, and the gateway as the service composes it (outbox, uplink connected to the emulator
    through a :class:`Link`, its LwM2M server on an ephemeral port and the bridge) with ``profiles``
    (TOML texts) in its profiles directory; ``extra_config`` is appended to its configuration file."""
    profiles_dir = tmp_path / "profiles"
    profiles_dir.mkdir()
    for i, text in enumerate(profiles):
        (profiles_dir / f"p{i}.toml").write_text(text)
    emu = ThingsBoardEmulator()
    emu.add_device(GW, token="tok", gateway=True)
    await emu.start()
    link = Link(emu.port)
    await link.up()
    cfg_file = tmp_path / "gateway.toml"
    cfg_file.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
telemetry_interval_s = 3600
[thingsboard]
port = {link.port}
credentials = "access_token"
token = "tok"
reconnect_min_s = 0.1
reconnect_max_s = 1.0
[clock]
trust = "always"
[lwm2m]
bind = "127.0.0.1"
port = 0
dtls = false
admit_unknown_nosec = true
request_timeout_s = 20.0
profiles_dir = "profiles"
[gpio]
enabled = false
{extra_config}""")
    gw = Gateway(config.load(cfg_file, env={}))
    await gw.start()
    try:
        assert gw.session is not None and gw.lwm2m is not None and gw.bridge is not None
        await asyncio.wait_for(gw.session.wait_for_state(SessionState.CONNECTED), 10)
        yield Site(gw, gw.lwm2m, gw.bridge, emu, link)
    finally:
        await gw.stop()
        await link.down()
        await emu.stop()


def values_of(emu: ThingsBoardEmulator, device: str, key: str) -> list[Any]:
    """The values of telemetry ``key`` the emulator received for ``device`` (none yet: empty)."""
    found = emu.devices.get(device)
    return [] if found is None else [values[key] for _, values in found.telemetry if key in values]


# -- lwm2m-node-lib ----------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def node_client(server: LwM2mServer, endpoint: str) -> AsyncIterator[Any]:
    from test_server_peers import NodeClient

    host, port = server.address
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, str(PEERS / "lwm2m_client.js"), host, str(port), endpoint,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=PEERS,
    )
    client = NodeClient(proc)
    try:
        await client.event("registered")
        yield client
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.peer
@pytest.mark.skipif(NODE is None, reason="node is not installed (apt install nodejs npm)")
@pytest.mark.skipif(not LIBRARY.is_dir(), reason="lwm2m-node-lib is not installed: run scripts/bootstrap")
async def test_lwm2m_node_lib_device_through_the_gateway(tmp_path: Path) -> None:
    ep = "node-e2e"
    async with site(tmp_path, [SENSOR]) as s, node_client(s.server, ep) as client:
        emu = s.emu
        # the device appears with its profile's type, through the gateway
        await emu.wait_for(lambda: ep in emu.devices and emu.device(ep).connected, 10)
        device = emu.device(ep)
        assert device.type == "node-sensor" and device.parent == GW
        # after registration: attributes read, battery read, temperature observed, under the profile's keys
        await emu.wait_for(lambda: device.attributes_client.get("units") == "Cel" and "manufacturer" in
                           device.attributes_client and bool(values_of(emu, ep, "temperature"))
                           and bool(values_of(emu, ep, "battery")), 15)
        assert device.attributes_client["manufacturer"] == "Open Mobile Alliance"
        assert values_of(emu, ep, "temperature")[0] == 21.5 and values_of(emu, ep, "battery") == [87]
        client.command(cmd="set", object="/3303/0", resource="5700", value="30.25")
        await emu.wait_for(lambda: 30.25 in values_of(emu, ep, "temperature"), 15)

        # shared attribute -> Write seen by the client
        await emu.set_shared_attributes(ep, {"units": "Far"})
        assert await client.event("write") == {"event": "write", "path": "/3303/0/5701", "value": "Far"}

        async def rpc(method: str, params: Any = None) -> Any:
            return await emu.rpc(ep, method, params, timeout=15)

        assert await rpc("Read", {"id": "/3/0/9"}) == {
            "result": "CONTENT", "value": "LwM2mSingleResource [id=9, value=87, type=INTEGER]"}
        assert await rpc("Read", {"key": "manufacturer"}) == {
            "result": "CONTENT", "value": "LwM2mSingleResource [id=0, value=Open Mobile Alliance, type=STRING]"}
        discover = await rpc("Discover", {"id": "/3/0"})
        assert discover["result"] == "CONTENT" and "</3/0/9>" in discover["value"]
        assert await rpc("WriteReplace", {"id": "/3/0/14", "value": "+02"}) == {"result": "CHANGED"}
        assert await client.event("write") == {"event": "write", "path": "/3/0/14", "value": "+02"}
        assert await rpc("WriteAttributes", {"id": "/3/0/9", "attributes": {"pmin": 1, "pmax": 60}}) == {
            "result": "CHANGED"}
        assert await rpc("Execute", {"id": "/3/0/4"}) == {"result": "CHANGED"}
        assert (await client.event("execute"))["path"] == "/3/0/4"
        assert (await rpc("Observe", {"id": "/3/0/9"}))["result"] == "CONTENT"
        assert json.loads((await rpc("ObserveReadAll"))["value"]) == [
            "SingleObservation:/3/0/9", "SingleObservation:/3303/0/5700"]
        assert await rpc("ObserveCancel", {"id": "/3/0/9"}) == {"result": "CONTENT", "value": "1"}
        assert await rpc("ObserveCancelAll") == {"result": "CONTENT", "value": "1"}
        assert json.loads((await rpc("DiscoverAll"))["value"]) == ["</3/0>", "</3303/0>"]

        # precise errors, through MQTT
        reply = await rpc("Read", {"id": "/3304/0/5700"})
        assert reply["result"] == "BAD_REQUEST" and reply["code"] == "unknown_path"
        reply = await rpc("Read", {"id": "/3303/1/5700"})  # the device has no such instance
        assert reply["code"] == "coap_error" and reply["result"] == "NOT_FOUND" and reply["coap"] == "4.04"
        reply = await rpc("ReadComposite", {"ids": ["/3/0/9"]})
        assert reply["code"] == "unsupported" and "LwM2M 1.0" in reply["error"]
        reply = await rpc("Bootstrap", {})
        assert reply["code"] == "unknown_method" and reply["result"] == "METHOD_NOT_ALLOWED"

        # de-registration disconnects it
        client.command(cmd="deregister")
        await client.event("deregistered")
        await emu.wait_for(lambda: not device.connected, 10)
        assert s.gateway.hub is not None and not s.gateway.hub.is_connected(ep)


# -- the project's simulator through the whole gateway ---------------------------------------------------------


async def test_every_rpc_method_through_the_gateway(tmp_path: Path) -> None:
    async with site(tmp_path, [SENSOR]) as s:
        fleet = Fleet(s.server.address, 2)
        await fleet.start()
        try:
            await fleet.register_and_wait()
            ep = "sim-000000"
            emu = s.emu
            await emu.wait_for(lambda: ep in emu.devices and emu.device(ep).type == "node-sensor", 10)
            await s.bridge.idle()

            async def rpc(method: str, params: Any = None, device: str = ep) -> Any:
                return await emu.rpc(device, method, params, timeout=15)

            calls: list[tuple[str, Any, str]] = [
                ("Read", {"id": "/3/0/9"}, "CONTENT"),
                ("Discover", {"id": "/3303/0"}, "CONTENT"),
                ("DiscoverAll", None, "CONTENT"),
                ("WriteReplace", {"id": "/3/0/14", "value": "+01"}, "CHANGED"),
                ("WriteUpdate", {"id": "/3/0", "value": {"15": "UTC"}}, "CHANGED"),
                ("WriteAttributes", {"id": "/3/0/9", "attributes": {"pmin": 2}}, "CHANGED"),
                ("ReadComposite", {"keys": ["battery", "temperature"]}, "CONTENT"),
                ("WriteComposite", {"nodes": {"utcOffset": "+02"}}, "CHANGED"),
                ("Create", {"id": "/3303/4", "value": {"5701": "K"}}, "CREATED"),
                ("Delete", {"id": "/3303/4"}, "DELETED"),
                ("Execute", {"id": "/3/0/4"}, "CHANGED"),
                ("Observe", {"id": "/3/0/9"}, "CONTENT"),
                ("ObserveComposite", {"ids": ["/3303/0/5601", "/3303/0/5602"]}, "CONTENT"),
                ("ObserveReadAll", None, "CONTENT"),
                ("ObserveCompositeCancel", {"ids": ["/3303/0/5601", "/3303/0/5602"]}, "CONTENT"),
                ("ObserveCancel", {"id": "/3/0/9"}, "CONTENT"),
                ("ObserveCancelAll", None, "CONTENT"),
            ]
            for method, params, result in calls:
                reply = await rpc(method, params)
                assert reply["result"] == result, (method, reply)
            assert json.loads((await rpc("ObserveReadAll"))["value"]) == []
            assert fleet.client(ep).executions[-1] == ("/3/0/4", b"")

            # a device that goes away while an RPC waits for it
            gone = fleet.client("sim-000001")
            gone.silent = True
            received = fleet.stats["requests_received"]
            pending = asyncio.ensure_future(rpc("Read", {"id": "/3/0/9"}, device="sim-000001"))
            await fleet.until(lambda: fleet.stats["requests_received"] > received)
            gone.deregister()
            reply = await pending
            assert reply["code"] == "device_gone" and reply["result"] == "SERVICE_UNAVAILABLE"
            await emu.wait_for(lambda: not emu.device("sim-000001").connected, 10)
        finally:
            await fleet.close()


async def test_shared_attributes_changed_while_away_are_written_on_registration(tmp_path: Path) -> None:
    async with site(tmp_path, [SENSOR]) as s:
        fleet = Fleet(s.server.address, 1)
        await fleet.start()
        try:
            await fleet.register_and_wait()
            ep = "sim-000000"
            emu = s.emu
            await emu.wait_for(lambda: ep in emu.devices and emu.device(ep).connected, 10)
            await s.bridge.idle()
            client = fleet.client(ep)
            assert fleet.stats["write"] == 0
            client.deregister()
            await emu.wait_for(lambda: not emu.device(ep).connected, 10)
            # changed in ThingsBoard while the device is away: nobody to tell now
            assert await emu.set_shared_attributes(ep, {"utcOffset": "+05", "unrelated": 1}) == 0
            client.register()
            await emu.wait_for(lambda: emu.device(ep).connected, 10)
            await fleet.until(lambda: fleet.stats["write"] == 1, 15)  # the writable key, written once
            await s.bridge.idle()
            assert s.bridge.stats().attribute_writes == 1
            # the attribute requests were made only once ThingsBoard had the CONNECT: the device was
            # created with its profile's type, not the default type an earlier request would give it
            assert emu.device(ep).type == "node-sensor"
            reply = await emu.rpc(ep, "Read", {"id": "/3/0/14"}, timeout=15)
            assert reply["result"] == "CONTENT" and "value=+05" in reply["value"]
        finally:
            await fleet.close()


def send_sequence(client: Any, seq: int, ts: float) -> None:
    """A Send carrying the sequence number as the temperature, stamped by the device."""
    payload = json.dumps([{"n": "/3303/0/5700", "v": float(seq), "t": ts}]).encode()
    options = [(URI_PATH, b"dp"), (CONTENT_FORMAT, uint(ContentFormat.SENML_JSON))]
    client.request(POST, options, payload, client._sent)


@pytest.mark.slow
async def test_uplink_down_for_60_s_while_100_devices_report(tmp_path: Path) -> None:
    """0 records lost, per-device order and device timestamps kept, connects/disconnects replayed."""
    # nothing observed or read: the temperature values upstream are exactly those of the Sends
    sensor = 'after_registration = "observe_only"\n' + SENSOR.replace("observe = true", "observe = false")
    async with site(tmp_path, [sensor]) as s:
        emu = s.emu
        early = Fleet(s.server.address, 50, prefix="sim-a-")
        late = Fleet(s.server.address, 50, prefix="sim-b-")
        await early.start()
        await late.start()
        try:
            await early.register_and_wait()
            await emu.wait_for(lambda: sum(d.connected for d in emu.children(GW)) == 50, 20)
            await s.link.down()  # the uplink goes down
            await late.register_and_wait()  # 50 devices appear while offline
            clients = early.clients + late.clients
            sent: dict[str, list[tuple[int, int]]] = {c.endpoint: [] for c in clients}
            start = time.time()
            seq = 0
            while time.time() - start < 60.0:  # every device reports once a second for 60 s
                seq += 1
                for client in clients:
                    ts = round(time.time(), 3)
                    send_sequence(client, seq, ts)
                    sent[client.endpoint].append((seq, int(ts * 1000)))
                await asyncio.sleep(1.0)
            gone = early.clients[:5]  # and a few leave while offline
            for client in gone:
                client.deregister()
            expected = sum(len(v) for v in sent.values())
            await early.until(lambda: early.stats["send_ok"] + late.stats["send_ok"] == expected, 30)
            await s.link.up()  # the uplink is back
            await emu.wait_for(
                lambda: all(len(values_of(emu, ep, "temperature")) >= len(items) for ep, items in sent.items()), 120
            )
            await emu.wait_for(lambda: not any(emu.device(c.endpoint).connected for c in gone), 30)
            for ep, items in sent.items():
                received = [(int(v["temperature"]), ts) for ts, v in emu.device(ep).telemetry if "temperature" in v]
                assert received == items, ep  # nothing lost or duplicated, in order, device timestamps
                device = emu.device(ep)
                assert device.type == "node-sensor" and device.parent == GW
            assert all(emu.device(c.endpoint).connected for c in late.clients)
            assert s.bridge.stats().queue_failures == 0
        finally:
            await early.close()
            await late.close()
