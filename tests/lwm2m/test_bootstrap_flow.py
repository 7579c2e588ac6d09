"""Bootstrap then registration with the project's simulator, through real sockets: NoSec and DTLS-PSK
bootstrap, NoSec / PSK (given and generated) / RPK (generated) LwM2M servers; zero-touch at 100
devices; refusals (unknown endpoint, wrong bootstrap key, endpoint/identity mismatch, no Finish
answer, Writes answered with errors); Bootstrap-Pack; server-initiated bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.lwm2m.bootstrap import Result, parse_config, trigger_bootstrap
from gateway.lwm2m.bootstrap.server import generate_rpk
from gateway.lwm2m.tbcredentials import SecurityMode
from gateway.sim.bootstrap_client import BootstrapFleet, Credentials
from gateway.sim.lwm2m_client import code
from gateway.store.clients import Source
from gateway.transport.dtls import KeyFormat, RpkKeyPair
from tests.lwm2m.bootstrap_site import Site, open_site

KEY = "00112233445566778899aabbccddeeff"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = await open_site(tmp_path, request_timeout=3.0, retries=0)
    yield s
    await s.close()


def bs_psk(endpoint: str) -> Credentials:
    return {"psk": (f"bs-{endpoint}".encode(), bytes.fromhex(KEY))}


def add(site: Site, obj: dict[str, Any]) -> None:
    site.store.put(parse_config(obj, source=Source.CLI))


def psk_config(endpoint: str, server: dict[str, Any]) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "bootstrap": {
            "bootstrapServer": {"securityMode": "PSK", "clientPublicKeyOrId": f"bs-{endpoint}", "clientSecretKey": KEY},
            "lwm2mServer": server,
        },
    }


async def fleet_of(site: Site, count: int, *, dtls: bool, prefix: str = "dev-", **kw: Any) -> BootstrapFleet:
    port = site.ports["bootstrap_dtls" if dtls else "bootstrap"]
    fleet = BootstrapFleet(
        ("127.0.0.1", port), count, prefix=prefix, bootstrap_credentials=bs_psk if dtls else None, **kw
    )
    await fleet.start()
    return fleet


async def test_nosec_bootstrap_then_nosec_registration(site: Site) -> None:
    add(site, {"endpoint": "dev-000000", "bootstrap": {"bootstrapServer": {"securityMode": "NO_SEC"},
                                                       "lwm2mServer": {"securityMode": "NO_SEC"}},
               "servers": [{"shortServerId": 7, "lifetime": 120}]})
    fleet = await fleet_of(site, 1, dtls=False)
    try:
        fleet.bootstrap_all()
        await site.registered.until(lambda: len(site.registered.registrations) == 1)
        client = fleet.bs_client("dev-000000")
        assert client.server_uri == f"coap://127.0.0.1:{site.ports['lwm2m']}"
        assert client.security_mode == 3
        security, server = client.server_account() or ({}, {})
        assert security[10] == 7 and server[0] == 7 and server[1] == 120 and server[7] == "U"
        assert site.registered.registrations[0].lifetime == 120
        last = {h.endpoint: h for h in site.store.history()}["dev-000000"]
        assert last.result == "success" and str(site.ports["lwm2m"]) in last.servers
        assert site.clients.get("dev-000000") is not None  # a NoSec entry, so that it may register
    finally:
        await fleet.close()


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
async def test_psk_bootstrap_then_generated_psk_registration(site: Site, version: str) -> None:
    add(site, psk_config("dev-000000", {"securityMode": "PSK", "generate": True}))
    fleet = await fleet_of(site, 1, dtls=True, lwm2m_version=version)
    try:
        fleet.bootstrap_all()
        await site.registered.until(lambda: len(site.registered.registrations) == 1)
        client = fleet.bs_client("dev-000000")
        security, _ = client.server_account() or ({}, {})
        assert client.server_uri == f"coaps://127.0.0.1:{site.ports['lwm2m_dtls']}"
        assert security[2] == 0 and len(security[5]) == 32
        entry = site.clients.get("dev-000000")
        assert entry is not None and entry.mode is SecurityMode.PSK and entry.source is Source.BOOTSTRAP
        assert entry.identity == security[3] and entry.key == security[5]
        assert site.clients.pending("dev-000000") is None
        assert site.registered.registrations[0].claims  # registered over DTLS
    finally:
        await fleet.close()


async def test_psk_bootstrap_then_configured_psk_registration(site: Site) -> None:
    server = {"securityMode": "PSK", "clientPublicKeyOrId": "dev-lw-id", "clientSecretKey": KEY * 2}
    add(site, psk_config("dev-000000", server))
    fleet = await fleet_of(site, 1, dtls=True)
    try:
        fleet.bootstrap_all()
        await site.registered.until(lambda: len(site.registered.registrations) == 1)
        entry = site.clients.get("dev-000000")
        assert entry is not None and entry.identity == b"dev-lw-id"
    finally:
        await fleet.close()


async def test_psk_bootstrap_then_generated_rpk_registration(site: Site) -> None:
    public, private = generate_rpk()
    site.clients.set_server_credentials(rpk=RpkKeyPair(public, private, KeyFormat.DER))
    add(site, psk_config("dev-000000", {"securityMode": "RPK", "generate": True}))
    fleet = await fleet_of(site, 1, dtls=True)
    try:
        fleet.bootstrap_all()
        await site.registered.until(lambda: len(site.registered.registrations) == 1)
        client = fleet.bs_client("dev-000000")
        security, _ = client.server_account() or ({}, {})
        assert security[2] == 1 and security[4] == public  # the server's raw public key in /0/x/4
        entry = site.clients.get("dev-000000")
        assert entry is not None and entry.mode is SecurityMode.RPK
    finally:
        await fleet.close()


async def test_zero_touch_100_devices_get_distinct_keys(site: Site) -> None:
    add(site, {"pattern": "zt-*", "bootstrap": {"lwm2mServer": {"securityMode": "PSK", "generate": True}}})
    for i in range(100):
        ep = f"zt-{i:06d}"
        add(site, {"endpoint": ep, "bootstrap": {"bootstrapServer": {
            "securityMode": "PSK", "clientPublicKeyOrId": f"bs-{ep}", "clientSecretKey": KEY}}})
    fleet = await fleet_of(site, 100, dtls=True, prefix="zt-")
    try:
        fleet.bootstrap_all()
        await site.registered.until(lambda: len(site.registered.registrations) == 100, timeout=60)
        keys = {site.clients.get(f"zt-{i:06d}").key for i in range(100)}  # type: ignore[union-attr]
        assert len(keys) == 100
        assert all(r.claims for r in site.registered.registrations)
    finally:
        await fleet.close()


async def test_refusals(site: Site) -> None:
    add(site, psk_config("dev-000000", {"securityMode": "PSK", "generate": True}))
    add(site, psk_config("dev-000001", {"securityMode": "PSK", "generate": True}))
    # unknown endpoint (NoSec): 4.00
    fleet = await fleet_of(site, 1, dtls=False, prefix="nobody-")
    # dev-000000 over NoSec although it has PSK bootstrap credentials: 4.03
    nosec = await fleet_of(site, 1, dtls=False)
    # the identity of dev-000001 under the name dev-000000: 4.00
    wrong_name = BootstrapFleet(("127.0.0.1", site.ports["bootstrap_dtls"]), 1, prefix="dev-",
                                bootstrap_credentials=lambda ep: bs_psk("dev-000001"))
    await wrong_name.start()
    # a wrong bootstrap key: the handshake fails, nothing reaches the bootstrap server
    wrong_key = BootstrapFleet(("127.0.0.1", site.ports["bootstrap_dtls"]), 1, prefix="dev-", start_index=1,
                               bootstrap_credentials=lambda ep: {"psk": (f"bs-{ep}".encode(), b"x" * 16)})
    await wrong_key.start()
    try:
        for f in (fleet, nosec, wrong_name, wrong_key):
            f.bootstrap_all()
        await fleet.until(lambda: fleet.stats["bootstrap_refused"] == 1)
        await nosec.until(lambda: nosec.stats["bootstrap_refused"] == 1)
        await wrong_name.until(lambda: wrong_name.stats["bootstrap_refused"] == 1)
        assert fleet.clients[0].last_error == code(4, 0)
        assert nosec.clients[0].last_error == code(4, 3)
        assert wrong_name.clients[0].last_error == code(4, 0)
        await wrong_key.until(lambda: wrong_key.stats["dtls_failed"] == 1, timeout=20)
        assert site.bootstrap.counters["succeeded"] == 0
        assert site.clients.pending("dev-000000") is None and site.clients.get("dev-000000") is None
    finally:
        for f in (fleet, nosec, wrong_name, wrong_key):
            await f.close()


async def test_writes_answered_with_errors_and_no_finish(site: Site) -> None:
    add(site, psk_config("dev-000000", {"securityMode": "PSK", "generate": True}))
    add(site, psk_config("dev-000001", {"securityMode": "PSK", "generate": True}))
    fleet = await fleet_of(site, 2, dtls=True)
    fleet.bs_client("dev-000000").write_error = code(5, 0)
    fleet.bs_client("dev-000001").ignore_finish = True
    try:
        ended: list[tuple[str, Result, str]] = []
        done = asyncio.get_running_loop().create_future()

        def on_end(endpoint: str, result: Result, detail: str) -> None:
            ended.append((endpoint, result, detail))
            if len(ended) == 2 and not done.done():
                done.set_result(None)

        site.bootstrap.listeners.append(on_end)
        fleet.bootstrap_all()
        await asyncio.wait_for(done, 30)  # the unanswered Finish ends at the request timeout (3 s)
        assert fleet.stats["finish_ignored"] >= 1
        history = {h.endpoint: h for h in site.store.history()}
        assert history["dev-000000"].result == "failed" and "5.00" in history["dev-000000"].detail
        assert history["dev-000001"].result == "failed" and "Bootstrap-Finish" in history["dev-000001"].detail
        assert site.registered.registrations == []
    finally:
        await fleet.close()


async def test_server_initiated_bootstrap(site: Site) -> None:
    add(site, psk_config("dev-000000", {"securityMode": "PSK", "generate": True}))
    fleet = await fleet_of(site, 1, dtls=True)
    try:
        fleet.bootstrap_all()
        await site.registered.until(lambda: len(site.registered.registrations) == 1)
        assert await trigger_bootstrap(site.lwm2m, "dev-000000", timeout=5) == "2.04"
        first = site.clients.get("dev-000000")
        await site.registered.until(lambda: len(site.registered.registrations) == 2)
        client = fleet.bs_client("dev-000000")
        assert client.executions and client.executions[-1][0] == "/1/0/9"
        second = site.clients.get("dev-000000")
        assert first is not None and second is not None and first.key != second.key  # bootstrapped again
    finally:
        await fleet.close()


async def test_a_new_bootstrap_request_replaces_a_stuck_one(tmp_path: Path) -> None:
    s = await open_site(tmp_path, request_timeout=60.0)  # the stuck request would hold the device for 60 s
    try:
        add(s, psk_config("dev-000000", {"securityMode": "PSK", "generate": True}))
        fleet = await fleet_of(s, 1, dtls=True)
        client = fleet.bs_client("dev-000000")
        client.silent = True  # receives the Delete, answers nothing
        fleet.bootstrap_all()
        await fleet.until(lambda: fleet.stats["requests_received"] >= 1)
        client.silent = False
        client.bootstrap()  # the device asks again (its own bootstrap timed out)
        # the unanswered Delete is dropped at once, not left to hold the device's turn until a CoAP
        # retransmission (>= 2 s, ACK_TIMEOUT) gets it answered
        await s.registered.until(lambda: len(s.registered.registrations) == 1, timeout=1.8)
        await fleet.close()
    finally:
        await s.close()
