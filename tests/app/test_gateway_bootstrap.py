"""The bootstrap server inside the gateway: [lwm2m.bootstrap] from the file (a zero-touch template),
per-device bootstrap credentials through ThingsBoard's RPC, a simulated device bootstrapping over
DTLS-PSK and registering with generated credentials, the operator view through the CLI (no secret
printed), and a server-initiated bootstrap from the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

from gateway import config
from gateway.app import Gateway
from gateway.cli import main
from gateway.sim.bootstrap_client import BootstrapFleet
from gateway.sim.tbemu import ThingsBoardEmulator
from gateway.upstream.session import SessionState

GW = "bs-gateway"
KEY = "f9df72bc97fda4aac6923d7175d98895"


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(list(args))
    return rc, out.getvalue()


async def test_bootstrap_in_the_gateway(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_device(GW, token="tok", gateway=True)
        f = tmp_path / "g.toml"
        f.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
[thingsboard]
port = {emu.port}
credentials = "access_token"
token = "tok"
[lwm2m]
bind = "127.0.0.1"
port = 0
dtls_port = 0
[lwm2m.bootstrap]
enabled = true
bind = "127.0.0.1"
port = 0
dtls_port = 0
server_host = "127.0.0.1"
[[lwm2m.bootstrap.configs]]
pattern = "site-*"
bootstrap = {{ lwm2mServer = {{ securityMode = "PSK", generate = true }} }}
servers = [{{ shortServerId = 3, lifetime = 120 }}]
[clock]
trust = "always"
""")
        gw = Gateway(config.load(f, env={}))
        await gw.start()
        fleet = None
        try:
            assert gw.session is not None and gw.bootstrap is not None and gw.lwm2m is not None
            await asyncio.wait_for(gw.session.wait_for_state(SessionState.CONNECTED), 10)
            ep = "site-000000"
            reply = await emu.rpc(GW, "lwm2mBootstrapConfig", {"config": {"endpoint": ep, "bootstrap": {
                "bootstrapServer": {"securityMode": "PSK", "clientPublicKeyOrId": f"bs-{ep}",
                                    "clientSecretKey": KEY}}}}, timeout=10)
            assert reply == {"name": ep, "result": "stored"}, reply
            fleet = BootstrapFleet(("127.0.0.1", gw.bootstrap.ports["coaps"]), 1, prefix="site-",
                                   bootstrap_credentials=lambda e: {"psk": (f"bs-{e}".encode(), bytes.fromhex(KEY))})
            await fleet.start()
            fleet.bootstrap_all()
            await fleet.until(lambda: fleet.registered == 1, timeout=30)
            assert gw.clients is not None and gw.clients.get(ep) is not None
            assert gw.lwm2m.registrations.device(ep) is not None
            assert gw.status()["lwm2m_bootstrap"]["succeeded"] == 1
            assert gw.self_telemetry()["bootstrapsDone"] == 1
            rc, out = await asyncio.to_thread(cli, "bootstrap", "list", "-c", str(f), "--json")
            assert rc == 0
            listed = json.loads(out)
            assert {c["name"] for c in listed["configs"]} == {"site-*", ep}
            (last,) = listed["last_bootstraps"]
            assert last["endpoint"] == ep and last["result"] == "success"
            rc, shown = await asyncio.to_thread(cli, "bootstrap", "show", ep, "-c", str(f))
            assert rc == 0 and "PSK (generate)" in shown
            key = gw.clients.get(ep).key  # type: ignore[union-attr]
            for text in (out, shown):
                assert KEY not in text and key.hex() not in text  # type: ignore[union-attr]
            rc, out = await asyncio.to_thread(cli, "bootstrap", "trigger", ep, "-c", str(f), "--json")
            assert rc == 0 and json.loads(out)["result"] == "2.04"
            await fleet.until(lambda: fleet.stats["bootstrap_finished"] == 2, timeout=30)
            await fleet.until(lambda: fleet.registered == 1, timeout=30)
            reply = await emu.rpc(GW, "lwm2mBootstrapTrigger", {"endpoint": ep}, timeout=10)
            assert reply == {"endpoint": ep, "result": "2.04"}, reply
            await fleet.until(lambda: fleet.stats["bootstrap_finished"] == 3, timeout=30)
            reply = await emu.rpc(GW, "lwm2mBootstrapTrigger", {"endpoint": "nobody"}, timeout=10)
            assert "error" in reply
        finally:
            if fleet is not None:
                await fleet.close()
            await gw.stop()
