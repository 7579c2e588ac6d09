"""The composed gateway in this process against the ThingsBoard emulator: both directions."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import config
from gateway.app import Gateway
from gateway.core.hub import RpcError
from gateway.sim.lwm2m_client import Fleet
from gateway.sim.tbemu import ThingsBoardEmulator
from gateway.upstream.session import SessionState

GW = "inproc-gateway"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Gateway, ThingsBoardEmulator]]:
    async with ThingsBoardEmulator() as emu:
        emu.add_device(GW, token="tok", gateway=True)
        f = tmp_path / "g.toml"
        f.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
telemetry_interval_s = 1
[thingsboard]
port = {emu.port}
credentials = "access_token"
token = "tok"
[lwm2m]
port = 0
dtls_port = 0
[clock]
trust = "always"
[demo]
synthetic_devices = 2
interval_s = 0.05
""")
        gw = Gateway(config.load(f, env={}))
        await gw.start()
        try:
            assert gw.session is not None
            await asyncio.wait_for(gw.session.wait_for_state(SessionState.CONNECTED), 10)
            await emu.wait_for(lambda: len(emu.children(GW)) == 2, timeout=10)
            yield gw, emu
        finally:
            await gw.stop()


async def test_rpc_to_child_device_round_trip(running: tuple[Gateway, ThingsBoardEmulator]) -> None:
    _gw, emu = running
    reply = await emu.rpc("demo-sensor-1", "setOffset", 2.5, timeout=10)
    assert reply == {"offset": 2.5}
    reply = await emu.rpc("demo-sensor-1", "noSuchMethod", None, timeout=10)
    assert "no method" in reply["error"] and reply["code"] == "unknown_method"


async def test_rpc_to_unknown_device_gets_a_prompt_error(running: tuple[Gateway, ThingsBoardEmulator]) -> None:
    gw, emu = running
    # A child ThingsBoard routes to this gateway but no adapter owns: answered, not ignored.
    assert gw.hub is not None
    await gw.hub.disconnect("demo-sensor-2")
    reply = await emu.rpc("demo-sensor-2", "getValue", None, timeout=5)
    assert "error" in reply and "demo-sensor-2" in reply["error"]


async def test_shared_attributes_down_and_attribute_request(running: tuple[Gateway, ThingsBoardEmulator]) -> None:
    gw, emu = running
    assert gw.hub is not None
    seen: list[tuple[str, dict[str, Any]]] = []
    assert gw.demo is not None

    async def updated(device: str, values: Any, deleted: Any) -> None:
        seen.append((device, dict(values)))

    gw.demo.attributes_updated = updated  # type: ignore[method-assign]
    await emu.set_shared_attributes("demo-sensor-1", {"interval": 5})
    await emu.wait_for(lambda: bool(seen), timeout=5)
    assert seen == [("demo-sensor-1", {"interval": 5})]
    got = await gw.hub.request_attributes("demo-sensor-1", ["interval", "missing"])
    assert got == {"interval": 5}


async def test_gateway_rpcs_and_own_telemetry(running: tuple[Gateway, ThingsBoardEmulator]) -> None:
    _gw, emu = running
    assert await emu.rpc(GW, "ping", None, timeout=5) is not None
    status = await emu.rpc(GW, "status", None, timeout=5)
    assert status["uplink"] == "connected" and status["devices_online"] == 2
    logging.getLogger("gateway.test").warning("marker for getLogs")
    logs = await emu.rpc(GW, "getLogs", {"lines": 5}, timeout=5)
    assert 0 < len(logs["lines"]) <= 5 and "marker for getLogs" in logs["lines"][-1]
    await emu.wait_for(lambda: any("queueRecords" in v for _t, v in emu.device(GW).telemetry), timeout=10)
    values = next(v for _t, v in emu.device(GW).telemetry if "queueRecords" in v)
    assert {"uptimeS", "cpuPercent", "recordsSent", "devicesOnline"} <= set(values)


async def test_remote_configuration_applied_or_refused(running: tuple[Gateway, ThingsBoardEmulator]) -> None:
    gw, emu = running
    old_level = logging.getLogger().level

    def status() -> object:
        return emu.device(GW).attributes_client.get("configStatus")

    await emu.set_shared_attributes(GW, {"logLevel": "DEBUG", "config": {"gateway": {"telemetry_interval_s": 30}}})
    await emu.wait_for(lambda: status() == "applied", timeout=10)
    assert gw.cfg.gateway.log_level == "debug" and gw.cfg.gateway.telemetry_interval_s == 30
    assert logging.getLogger().level == logging.DEBUG
    await emu.set_shared_attributes(GW, {"config": {"outbox": {"max_bytes": 1}, "gateway": {"log_level": "info"}}})
    await emu.wait_for(lambda: str(status()).startswith("refused"), timeout=10)
    assert "config.outbox.max_bytes: cannot change at run time" in str(status())
    assert gw.cfg.gateway.log_level == "debug"  # refused as a whole: the old configuration stays
    await emu.set_shared_attributes(GW, {"logLevel": "loud"})
    await emu.wait_for(lambda: "config.gateway.log_level: expected one of" in str(status()), timeout=10)
    logging.getLogger().setLevel(old_level)


async def test_attribute_request_without_upstream_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "s"}"\n[thingsboard]\ncredentials = "provision"\n'
        "[lwm2m]\nport = 0\ndtls_port = 0\n"
    )
    gw = Gateway(config.load(f, env={}))
    await gw.start()
    try:
        assert gw.hub is not None
        with pytest.raises(RpcError, match="not provisioned"):
            await gw.hub.request_attributes("x", ["a"])
    finally:
        await gw.stop()


async def test_lwm2m_devices_visible_through_the_cli(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text(f"""
[gateway]
state_dir = "{tmp_path / 's'}"
[thingsboard]
credentials = "provision"
[lwm2m]
bind = "127.0.0.1"
port = 0
dtls_port = 0
admit_unknown_nosec = true
""")
    gw = Gateway(config.load(f, env={}))
    await gw.start()
    fleet = None
    try:
        assert gw.lwm2m is not None
        fleet = Fleet(gw.lwm2m.address, 3, prefix="cli-")
        await fleet.start()
        fleet.register_all()
        async with asyncio.timeout(10):
            while len(gw.lwm2m.registrations) < 3:
                await asyncio.sleep(0.02)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "devices", "--json", "-c", str(f),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        devices = {d["name"]: d for d in json.loads(out)}
        assert set(devices) == {"cli-000000", "cli-000001", "cli-000002"}
        assert devices["cli-000000"]["adapter"] == "lwm2m" and "/3/0" in devices["cli-000000"]["objects"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "devices", "-c", str(f),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert b"cli-000002" in out and b"NAME" in out
    finally:
        if fleet is not None:
            await fleet.close()
        await gw.stop()
