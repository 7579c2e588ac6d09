"""First boot: the gateway provisions itself once, stores its credentials, and never again unless told."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from pathlib import Path

from gateway import config
from gateway.app import Gateway
from gateway.sim.tbemu import ThingsBoardEmulator
from gateway.upstream.session import SessionState


def write_config(tmp: Path, port: int, key: str = "pkey", secret: str = "psecret") -> Path:
    f = tmp / "g.toml"
    f.write_text(f"""
[gateway]
name = "site-gw-1"
state_dir = "{tmp / 'state'}"
[thingsboard]
port = {port}
credentials = "provision"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[provisioning]
key = "{key}"
secret = "{secret}"
retry_s = 10
[lwm2m]
port = 0
dtls_port = 0
[clock]
trust = "always"
[demo]
synthetic_devices = 1
interval_s = 0.05
""")
    return f


async def test_provisions_once_then_uses_stored_credentials(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile("pkey", "psecret", gateway_default=True)
        cfg = config.load(write_config(tmp_path, emu.port), env={})
        gw = Gateway(cfg)
        await gw.start()
        try:
            await emu.wait_for(lambda: "site-gw-1" in emu.devices and bool(emu.children("site-gw-1")), timeout=20)
            assert gw.session is not None
            await asyncio.wait_for(gw.session.wait_for_state(SessionState.CONNECTED), 10)
            assert gw.status()["provisioning"].startswith("provisioned")
        finally:
            await gw.stop()
        creds = tmp_path / "state" / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert json.loads(creds.read_text())["credentialsType"] == "ACCESS_TOKEN"
        assert emu.counters.provision_requests == 1
        # A restart uses the stored credentials: no second provisioning request.
        gw = Gateway(cfg)
        await gw.start()
        try:
            assert gw.session is not None
            await asyncio.wait_for(gw.session.wait_for_state(SessionState.CONNECTED), 10)
        finally:
            await gw.stop()
        assert emu.counters.provision_requests == 1


async def test_refused_provisioning_keeps_serving_and_queueing(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile("pkey", "psecret")
        cfg = config.load(write_config(tmp_path, emu.port, secret="s3cr3t-XYZ"), env={})
        gw = Gateway(cfg)
        await gw.start()
        try:
            async with asyncio.timeout(20):
                while not gw.status()["provisioning"].startswith("refused"):
                    await asyncio.sleep(0.05)
            status = gw.status()
            assert "NOT_FOUND" in status["provisioning"] or "not found" in status["provisioning"].lower()
            assert "s3cr3t-XYZ" not in json.dumps(status)  # the secret is never shown
            async with asyncio.timeout(10):
                while gw.status()["outbox"]["records"] < 20:  # the synthetic device's data queues
                    await asyncio.sleep(0.05)
        finally:
            await gw.stop()
        assert emu.counters.provision_requests == 1  # retried slowly (retry_s), not hammered


async def test_provision_force_through_the_cli(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile("pkey", "psecret", gateway_default=True)
        f = write_config(tmp_path, emu.port)
        gw = Gateway(config.load(f, env={}))
        await gw.start()
        try:
            assert gw.provisioner is not None
            await emu.wait_for(lambda: "site-gw-1" in emu.devices, timeout=20)
            async with asyncio.timeout(10):
                while gw.session is None:
                    await asyncio.sleep(0.05)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "provision", "--force", "--json", "-c", str(f),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert "provisioning" in json.loads(out)
            # ThingsBoard refuses a second provisioning of an existing device name (FAILURE):
            # the gateway says so instead of pretending.
            async with asyncio.timeout(20):
                while emu.counters.provision_requests < 2:
                    await asyncio.sleep(0.05)
        finally:
            await gw.stop()
