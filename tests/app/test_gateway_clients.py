from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from gateway import config
from gateway.app import Gateway
from gateway.cli import main
from gateway.sim.tbemu import ThingsBoardEmulator
from gateway.store.clients import ClientStore
from gateway.upstream.session import SessionState

GW = "inproc-gateway"


async def register(port: int, endpoint: str) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    try:
        req = aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/rd?ep={endpoint}&lt=60",
                              payload=b"</3/0>", content_format=40)
        return await ctx.request(req).response
    finally:
        await ctx.shutdown()


async def test_wiring(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_device(GW, token="tok", gateway=True)
        f = tmp_path / "g.toml"
        (tmp_path / "k.key").write_text("text:a-sixteen-byte-key")
        f.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
[thingsboard]
port = {emu.port}
credentials = "access_token"
token = "tok"
[lwm2m]
port = 0
dtls_port = 0
[[lwm2m.clients]]
endpoint = "plain-1"
[[lwm2m.clients]]
endpoint = "psk-1"
mode = "PSK"
key_file = "k.key"
[clock]
trust = "always"
""")
        gw = Gateway(config.load(f, env={}))
        await gw.start()
        try:
            assert gw.session is not None and gw.clients is not None and gw.lwm2m is not None
            await asyncio.wait_for(gw.session.wait_for_state(SessionState.CONNECTED), 10)
            assert len(gw.clients) == 2
            port = gw.lwm2m.address[1]
            assert (await register(port, "plain-1")).code == Code.CREATED
            assert (await register(port, "stranger")).code == Code.FORBIDDEN
            assert (await register(port, "psk-1")).code == Code.FORBIDDEN
            creds = json.dumps({"client": {"securityConfigClientMode": "NO_SEC", "endpoint": "stranger"}})
            reply = await emu.rpc(GW, "lwm2mClientCredentials", creds, timeout=10)
            assert reply["result"] == "added", reply
            assert (await register(port, "stranger")).code == Code.CREATED
            reply = await emu.rpc(GW, "lwm2mClientCredentials", {"remove": "psk-1"}, timeout=10)
            assert reply["code"] == "managed_by_config", reply
            st = gw.status()
            assert st["lwm2m_security"]["refused"] == 2 and st["lwm2m_clients"] == 3
            assert gw.self_telemetry()["lwm2mRefusedNosecForSecuredEndpoint"] == 1
            # the CLI through the control socket
            rc = await asyncio.to_thread(main, ["clients", "list", "-c", str(f), "--json"])
            assert rc == 0
        finally:
            await gw.stop()
    # what ThingsBoard added survives the stop (the store is a file, not memory)
    with ClientStore.open(tmp_path / "state" / "clients.sqlite3") as s:
        assert s.get("stranger") is not None and s.get("stranger").source.value == "thingsboard"


COAP_CLIENT_GNUTLS = shutil.which("coap-client-gnutls")


@pytest.mark.skipif(COAP_CLIENT_GNUTLS is None, reason="coap-client-gnutls (libcoap3-bin) is not installed")
async def test_psk_device_registers_over_the_gateways_dtls_port(tmp_path: Path) -> None:
    """coap-client-gnutls (a peer the project did not write) registers over DTLS-PSK with the gateway."""
    f = tmp_path / "g.toml"
    (tmp_path / "k.key").write_text("text:a-sixteen-byte-key")
    f.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
[thingsboard]
credentials = "provision"
[lwm2m]
bind = "127.0.0.1"
port = 0
dtls_port = 0
[[lwm2m.clients]]
endpoint = "psk-dev"
mode = "PSK"
identity = "psk-dev-identity"
key_file = "k.key"
""")
    gw = Gateway(config.load(f, env={}))
    await gw.start()
    try:
        assert gw.lwm2m is not None and gw.dtls_transport is not None
        port = gw.dtls_transport.port

        async def register(key: str) -> tuple[int, str]:
            assert COAP_CLIENT_GNUTLS is not None
            proc = await asyncio.create_subprocess_exec(
                COAP_CLIENT_GNUTLS, "-B", "10", "-m", "post", "-t", "40", "-e", "</1/0>,</3/0>",
                "-u", "psk-dev-identity", "-k", key,
                f"coaps://127.0.0.1:{port}/rd?ep=psk-dev&lt=300&lwm2m=1.1&b=U",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            return proc.returncode or 0, (out + err).decode(errors="replace")

        rc, output = await register("wrong-sixteen-byte-key")
        assert gw.lwm2m.registrations.get("psk-dev") is None, output
        rc, output = await register("a-sixteen-byte-key")
        assert rc == 0, output
        reg = gw.lwm2m.registrations.get("psk-dev")
        assert reg is not None, output
        devices = await gw._cmd_devices({})
        assert any(d["name"] == "psk-dev" for d in devices)
    finally:
        await gw.stop()
