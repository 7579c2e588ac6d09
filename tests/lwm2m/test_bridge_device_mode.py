"""Per-device mode end to end: simulated LwM2M endpoints -> the composed gateway -> ThingsBoard emulator.

A profile with ``[upstream] mode = "device"`` makes each of its endpoints a plain ThingsBoard device
with its own MQTT session (device API), provisioned on first sight through the Device Provisioning
API; its records travel through the device-mode outbox. Real emulator (through a TCP relay that can
be cut), real SQLite, the project's LwM2M fleet simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from test_bridge_e2e import GW, Link, send_sequence, values_of

from gateway import config
from gateway.app import Gateway
from gateway.lwm2m.path import LwM2mPath
from gateway.sim.lwm2m_client import Fleet
from gateway.sim.tbemu import ThingsBoardEmulator
from gateway.store import device_credentials
from gateway.upstream.device_sessions import DeviceSessions
from gateway.upstream.session import SessionState

KEY, SECRET = "dev-provision-key", "dev-provision-secret-xyz"

DEVICE_PROFILE = f"""
name = "dev-sensor"
after_registration = "observe_only"
[match]
endpoints = ["dev-*"]
[upstream]
mode = "device"
provision_key = "{KEY}"
provision_secret = "{SECRET}"
[paths."/3303/0/5700"]
key = "temperature"
telemetry = true
[paths."/3/0/9"]
key = "battery"
telemetry = true
"""

# The same devices, but the profile's secret is wrong: ThingsBoard answers NOT_FOUND.
WRONG_SECRET_PROFILE = DEVICE_PROFILE.replace('name = "dev-sensor"', 'name = "dev-wrong"').replace(
    'endpoints = ["dev-*"]', 'endpoints = ["dev-bad-*"]\npriority = 10'
).replace(SECRET, "not-the-secret")


def write_config(tmp_path: Path, port: int, lwm2m_extra: str = "") -> Path:
    profiles_dir = tmp_path / "profiles"
    profiles_dir.mkdir(exist_ok=True)
    (profiles_dir / "device.toml").write_text(DEVICE_PROFILE)
    (profiles_dir / "wrong.toml").write_text(WRONG_SECRET_PROFILE)
    cfg_file = tmp_path / "gateway.toml"
    cfg_file.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
telemetry_interval_s = 3600
[thingsboard]
port = {port}
credentials = "access_token"
token = "tok"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[provisioning]
retry_s = 600
[clock]
trust = "always"
[lwm2m]
bind = "127.0.0.1"
port = 0
dtls = false
admit_unknown_nosec = true
profiles_dir = "profiles"
{lwm2m_extra}
[gpio]
enabled = false
""")
    return cfg_file


@contextlib.asynccontextmanager
async def emulator() -> AsyncIterator[tuple[ThingsBoardEmulator, Link]]:
    emu = ThingsBoardEmulator()
    emu.add_device(GW, token="tok", gateway=True)
    emu.add_provision_profile(KEY, SECRET, device_type="dev-sensor")
    await emu.start()
    link = Link(emu.port)
    await link.up()
    try:
        yield emu, link
    finally:
        await link.down()
        await emu.stop()


@contextlib.asynccontextmanager
async def gateway(cfg_file: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(config.load(cfg_file, env={}))
    await gw.start()
    try:
        assert gw.session is not None and gw.lwm2m is not None and gw.device_sessions is not None
        await asyncio.wait_for(gw.session.wait_for_state(SessionState.CONNECTED), 10)
        yield gw
    finally:
        await gw.stop()


@contextlib.asynccontextmanager
async def fleet(gw: Gateway, count: int, prefix: str) -> AsyncIterator[Fleet]:
    assert gw.lwm2m is not None
    f = Fleet(gw.lwm2m.address, count, prefix=prefix)
    await f.start()
    try:
        await f.register_and_wait()
        yield f
    finally:
        await f.close()


async def until(sessions: DeviceSessions, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until ``predicate()`` holds, re-checked whenever the device sessions report a change."""
    changed = asyncio.Event()
    sessions.add_listener(changed.set)
    async with asyncio.timeout(timeout):
        while not predicate():
            changed.clear()
            await changed.wait()


def own_session(emu: ThingsBoardEmulator, name: str) -> bool:
    """``name`` is a plain device of its own (not a gateway child) connected over its own session."""
    device = emu.devices.get(name)
    return device is not None and device.parent is None and not device.gateway and device.connected


async def test_endpoints_provisioned_on_first_sight_each_with_its_own_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        emulator() as (emu, link),
        gateway(write_config(tmp_path, link.port)) as gw,
        fleet(gw, 20, "dev-") as good,
        fleet(gw, 1, "dev-bad-") as bad,
    ):
        names = [c.endpoint for c in good.clients]
        assert gw.device_sessions is not None
        sessions = gw.device_sessions
        await emu.wait_for(lambda: all(own_session(emu, n) for n in names), 20)
        await until(sessions, lambda: sessions.stats().provision_refused == 1)
        assert emu.counters.provision_requests == 21  # 20 granted, 1 refused
        for name in names:
            assert emu.device(name).type == "dev-sensor" and emu.device(name).provision_key == KEY
        assert emu.children(GW) == []  # nothing went through the gateway API
        granted = [r.request for r in emu.provision_log if r.response["status"] == "SUCCESS"]
        assert sorted(r["deviceName"] for r in granted) == sorted(names)
        assert all("gateway" not in r for r in granted)

        # telemetry arrives on each endpoint's own device
        now = time.time()
        for i, client in enumerate(good.clients):
            send_sequence(client, i + 1, now)
        await emu.wait_for(lambda: all(values_of(emu, n, "temperature") for n in names), 20)
        for i, name in enumerate(names):
            assert values_of(emu, name, "temperature") == [float(i + 1)]
            assert emu.device(name).telemetry[0][0] == int(now * 1000)

        # an RPC to one of them round-trips through the bridge's RPC handling
        reply = await emu.rpc(names[3], "Read", {"id": "/3/0/9"}, timeout=15)
        assert reply["result"] == "CONTENT"
        reply = await emu.rpc(names[3], "Read", {"id": "/3304/0/5700"}, timeout=15)
        assert reply["code"] == "unknown_path"

        # the refused one: reported plainly, once; counted; in status; the others unaffected
        bad_name = bad.clients[0].endpoint
        state = sessions.device_state(bad_name)
        assert state is not None and state["credentials"] == "refused" and state["session"] == "none"
        assert "NOT_FOUND" in state["problem"]
        lines = [m for r in caplog.records if bad_name in (m := r.getMessage()) and r.levelno >= logging.ERROR]
        assert len(lines) == 1 and "provisioning refused" in lines[0] and "NOT_FOUND" in lines[0]
        assert gw.status()["device_sessions"]["problems"] == {bad_name: state["problem"]}
        send_sequence(bad.clients[0], 99, now)  # its data waits in the outbox
        await bad.until(lambda: bad.stats["send_ok"] == 1, 10)
        assert bad_name not in emu.devices
        stats = sessions.stats()
        assert stats.provisioned == 20 and stats.sessions_open == 20 and stats.sessions_connected == 20

        # credentials: 0600, and no secret in any log line
        root = tmp_path / "state" / "devices"
        for name in names:
            creds_file = device_credentials.device_dir(root, name) / "credentials.json"
            assert stat.S_IMODE(os.stat(creds_file).st_mode) == 0o600
        tokens = [emu.device(n).token for n in names]
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert SECRET not in text and all(t is not None and t not in text for t in tokens)


async def test_restart_reuses_the_stored_device_credentials(tmp_path: Path) -> None:
    async with emulator() as (emu, link):
        cfg_file = write_config(tmp_path, link.port)
        async with gateway(cfg_file) as gw, fleet(gw, 3, "dev-") as f:
            names = [c.endpoint for c in f.clients]
            await emu.wait_for(lambda: all(own_session(emu, n) for n in names), 20)
        assert emu.counters.provision_requests == 3
        await emu.wait_for(lambda: not any(emu.device(n).connected for n in names), 10)
        async with gateway(cfg_file) as gw, fleet(gw, 3, "dev-") as f:
            await emu.wait_for(lambda: all(own_session(emu, n) for n in names), 20)
            for i, client in enumerate(f.clients):
                send_sequence(client, i + 10, time.time())
            await emu.wait_for(lambda: all(values_of(emu, n, "temperature") for n in names), 20)
            assert gw.device_sessions is not None and gw.device_sessions.stats().provisioned == 0
        assert emu.counters.provision_requests == 3  # no re-provisioning
        assert all(emu.device(n).connects == 2 for n in names)


async def test_uplink_down_then_up_nothing_lost_order_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with emulator() as (emu, link), gateway(write_config(tmp_path, link.port)) as gw, fleet(gw, 5, "dev-") as f:
        names = [c.endpoint for c in f.clients]
        await emu.wait_for(lambda: all(own_session(emu, n) for n in names), 20)
        await link.down()
        await emu.wait_for(lambda: not any(emu.device(n).connected for n in names), 10)
        sent: dict[str, list[tuple[int, int]]] = {n: [] for n in names}
        for seq in range(1, 31):
            for client in f.clients:
                ts = time.time() + seq  # distinct, increasing device timestamps
                send_sequence(client, seq, ts)
                sent[client.endpoint].append((seq, int(ts * 1000)))
        expected = sum(len(v) for v in sent.values())
        await f.until(lambda: f.stats["send_ok"] == expected, 20)
        assert gw.device_sessions is not None
        assert gw.device_sessions.outbox.stats().records == expected
        await link.up()
        await emu.wait_for(
            lambda: all(len(values_of(emu, n, "temperature")) >= len(items) for n, items in sent.items()), 30
        )
        for name, items in sent.items():
            received = [(int(v["temperature"]), ts) for ts, v in emu.device(name).telemetry if "temperature" in v]
            assert received == items, name
        assert emu.children(GW) == []
        # five sessions lost the uplink together: one summary line, not a line per session and event
        lost = [r for r in caplog.records if r.name.startswith("gateway.upstream.device_sessions") and (
                "ThingsBoard connection lost" in r.getMessage() or "disconnections from ThingsBoard" in r.getMessage())]
        assert len(lost) == 1, [r.getMessage() for r in lost]


async def test_shared_attributes_are_synced_over_the_devices_own_session(tmp_path: Path) -> None:
    profile = DEVICE_PROFILE + '[paths."/3/0/14"]\nkey = "utcOffset"\n'  # writable: synced on registration
    async with emulator() as (emu, link):
        cfg_file = write_config(tmp_path, link.port)
        (tmp_path / "profiles" / "device.toml").write_text(profile)
        async with gateway(cfg_file) as gw, fleet(gw, 1, "dev-") as f:
            name = f.clients[0].endpoint
            await emu.wait_for(lambda: own_session(emu, name), 20)
            # changed in ThingsBoard while the device is away
            f.clients[0].deregister()
            await f.until(lambda: f.stats["deregistered"] == 1)
            await emu.wait_for(lambda: not emu.device(name).connected, 10)
            emu.device(name).attributes_shared["utcOffset"] = "+03"
            f.clients[0].register()
            await f.until(lambda: f.stats["write"] == 1, 20)  # asked over its own session, then written
            assert f.clients[0]._values_under(LwM2mPath.parse("/3/0/14")) == {LwM2mPath.parse("/3/0/14"): "+03"}
            assert emu.children(GW) == []  # never asked through the gateway API


async def test_sessions_are_capped_and_idle_ones_make_room_for_data(tmp_path: Path) -> None:
    async with emulator() as (emu, link):
        cfg_file = write_config(tmp_path, link.port, "device_sessions_max = 3")
        async with gateway(cfg_file) as gw, fleet(gw, 6, "dev-") as f:
            assert gw.device_sessions is not None
            sessions = gw.device_sessions
            names = [c.endpoint for c in f.clients]
            # all six are provisioned, but only three get a session; the others wait (never unbounded)
            await until(sessions, lambda: sessions.stats().provisioned == 6)
            await emu.wait_for(lambda: sum(own_session(emu, n) for n in names) == 3, 10)
            assert sessions.stats().sessions_open == 3 and sessions.stats().waiting_for_session == 3
            peak = 0

            def all_delivered() -> bool:
                nonlocal peak
                peak = max(peak, sum(emu.devices[n].connected for n in names if n in emu.devices))
                return all(values_of(emu, n, "temperature") for n in names)

            # each reports once: those without a session take the least recently idle ones' places
            for i, client in enumerate(f.clients):
                send_sequence(client, i, time.time())
            await emu.wait_for(all_delivered, 20)
            assert peak <= 3 and sessions.stats().sessions_open <= 3
            assert sessions.stats().evictions >= 3
            assert [values_of(emu, n, "temperature") for n in names] == [[float(i)] for i in range(6)]
