"""End to end through the real DTLS server: the credentials store as its CredentialsProvider, the
security binding as the LwM2M server's registration check, and libcoap's GnuTLS client (a peer the
project did not write) doing LwM2M Registers.

* a PSK client whose identity is in the store gets through the handshake and registers;
* the same identity under another endpoint name: 4.00;
* ``remove`` while its session is open: the session is closed, and a new handshake fails;
* a client added at run time (CLI-style, and through ThingsBoard's RPC) works at once, no restart;
* RPK and X.509 (bound by CN) clients from the store register too; the server's own key pair,
  certificate and trust store come through the store (a reload of the running DTLS server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.lwm2m.security import RefusalReason, SecurityBinding
from gateway.lwm2m.server import LwM2mServer, Registration, RegistrationListener, ServerConfig
from gateway.store.clients import ClientEntry, ClientStore, follow_dtls, rpc_handler
from gateway.transport.dtls import (
    Addr,
    DtlsServer,
    DtlsSession,
    PskPrincipal,
    RpkKeyPair,
    RpkPrincipal,
    TrustStore,
    X509Credentials,
    X509Principal,
)
from gateway.transport.dtls_coap import DtlsTransport

GNUTLS = "coap-client-gnutls"

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(shutil.which(GNUTLS) is None, reason="libcoap3-bin not installed"),
]

log = logging.getLogger("test.security.dtls")

KEY_A = b"key-of-device-a!"  # libcoap takes -k as text
KEY_C = b"key-of-device-c!!"


@dataclass
class Events:
    registered: list[Registration] = field(default_factory=list)
    established: list[DtlsSession] = field(default_factory=list)
    closed: list[tuple[DtlsSession, str]] = field(default_factory=list)
    failed: list[tuple[Addr, str]] = field(default_factory=list)
    _waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = field(default_factory=list)

    def changed(self) -> None:
        for predicate, future in list(self._waiters):
            if not future.done() and predicate():
                future.set_result(None)

    async def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await asyncio.wait_for(future, timeout)


class Listener(RegistrationListener):
    def __init__(self, events: Events) -> None:
        self.events = events

    def on_registered(self, registration: Registration) -> None:
        self.events.registered.append(registration)
        self.events.changed()


@dataclass
class Site:
    store: ClientStore
    binding: SecurityBinding
    dtls: DtlsServer
    server: LwM2mServer
    port: int
    events: Events


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    events = Events()
    store = ClientStore.open(tmp_path / "clients.sqlite3")
    store.add(ClientEntry.psk("dev-a", b"dev-a-id", KEY_A))
    binding = SecurityBinding(store)

    def established(s: DtlsSession) -> None:
        events.established.append(s)
        events.changed()

    def closed(s: DtlsSession, reason: str) -> None:
        events.closed.append((s, reason))
        events.changed()

    def failed(addr: Addr, reason: str) -> None:
        events.failed.append((addr, reason))
        events.changed()

    dtls = DtlsServer(store, on_established=established, on_closed=closed, on_handshake_failed=failed)
    unfollow = follow_dtls(store, dtls)
    server = LwM2mServer(config=ServerConfig(), registration_check=binding, listener=Listener(events))
    loop = asyncio.get_running_loop()

    async def transport(mman: Any) -> DtlsTransport:
        return await DtlsTransport.create_server_transport(mman, log, loop, bind=("127.0.0.1", 0), server=dtls)

    _, dtls_transport = await server.add_transport(transport)
    try:
        yield Site(store, binding, dtls, server, dtls_transport.port, events)
    finally:
        unfollow()
        await server.stop()
        store.close()


async def coap_client(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        GNUTLS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


def register_args(site: Site, endpoint: str, identity: bytes, key: bytes, *extra: str) -> list[str]:
    return [
        "-B", "10", *extra,
        "-m", "post", "-t", "40", "-e", "</1/0>,</3/0>",
        "-u", identity.decode(), "-k", key.decode(),
        f"coaps://127.0.0.1:{site.port}/rd?ep={endpoint}&lt=300&lwm2m=1.1&b=U",
    ]  # fmt: skip


async def run_client(*args: str) -> tuple[int, str]:
    proc = await coap_client(*args)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, (out + err).decode(errors="replace")


async def test_psk_client_from_the_store_registers(site: Site) -> None:
    rc, output = await run_client(*register_args(site, "dev-a", b"dev-a-id", KEY_A))
    assert rc == 0, output
    await site.events.until(lambda: any(r.endpoint == "dev-a" for r in site.events.registered))
    (reg,) = site.events.registered
    assert reg.claims == (PskPrincipal(b"dev-a-id"),)
    assert site.binding.stats()["allowed"] == 1


async def test_identity_of_another_endpoint_is_refused_with_4_00(site: Site) -> None:
    site.store.add(ClientEntry.psk("dev-b", b"dev-b-id", b"key-of-device-b!"))
    _, output = await run_client(*register_args(site, "dev-b", b"dev-a-id", KEY_A))
    assert "4.00" in output, output
    assert site.binding.refusals[RefusalReason.ENDPOINT_MISMATCH] == 1
    assert site.server.registrations.device("dev-b") is None
    # an unknown identity never gets past the handshake
    _, output = await run_client(*register_args(site, "dev-a", b"who-am-i", KEY_A))
    await site.events.until(lambda: any("unknown PSK identity" in r for _, r in site.events.failed))
    assert site.server.registrations.device("dev-a") is None


async def test_remove_closes_the_session_and_the_next_handshake_fails(site: Site) -> None:
    # -G 8: the Register is repeated every second over the same DTLS session
    proc = await coap_client(*register_args(site, "dev-a", b"dev-a-id", KEY_A, "-G", "8"))
    try:
        await site.events.until(lambda: any(r.endpoint == "dev-a" for r in site.events.registered))
        (session,) = [s for s in site.events.established if s.principal == PskPrincipal(b"dev-a-id")]
        assert session.established
        site.store.remove("dev-a")
        await site.events.until(lambda: any(s is session for s, _ in site.events.closed))
        assert [r for s, r in site.events.closed if s is session] == ["credentials removed or changed"]
        assert not session.established
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    failures_before = len(site.events.failed)
    registers_before = len(site.events.registered)
    _, output = await run_client(*register_args(site, "dev-a", b"dev-a-id", KEY_A))
    await site.events.until(lambda: len(site.events.failed) > failures_before)
    assert "unknown PSK identity" in site.events.failed[-1][1]
    assert len(site.events.registered) == registers_before, output
    assert not any(s.established for s in site.dtls.sessions.values())


async def test_clients_added_at_run_time_work_without_restart(site: Site) -> None:
    # as the CLI (through the running service) would
    site.store.add(ClientEntry.psk("dev-c", b"dev-c-id", KEY_C))
    rc, output = await run_client(*register_args(site, "dev-c", b"dev-c-id", KEY_C))
    assert rc == 0, output
    await site.events.until(lambda: any(r.endpoint == "dev-c" for r in site.events.registered))
    # as ThingsBoard's RPC would (the credentials JSON as a string, key in hex)
    creds = {
        "client": {
            "securityConfigClientMode": "PSK",
            "endpoint": "dev-d",
            "identity": "dev-d-id",
            "key": b"tb-key-device-d!".hex(),
        }
    }
    result = await rpc_handler(site.store)(json.dumps(creds))
    assert result["result"] == "added"
    rc, output = await run_client(*register_args(site, "dev-d", b"dev-d-id", b"tb-key-device-d!"))
    assert rc == 0, output
    await site.events.until(lambda: any(r.endpoint == "dev-d" for r in site.events.registered))
    assert site.store.get("dev-d") is not None


# --- RPK and X.509 -------------------------------------------------------------------------------------------


@dataclass
class Pki:
    root: Path
    ca: Path
    server_chain: bytes
    server_key: bytes
    server_rpk: bytes  # PEM: public key + private key
    client_cert: Path  # CN=cam-1, signed by the CA
    client_key: Path
    client_rpk: Path  # PEM for coap-client -M
    client_spki: bytes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> bytes:
        return subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True).stdout

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")
    for name, cn in (("server", "gateway"), ("client", "cam-1")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2")  # fmt: skip
    for name in ("server-rpk", "client-rpk"):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")
        pub = openssl("ec", "-in", f"{name}.key", "-pubout")
        (d / f"{name}.pem").write_bytes(pub + (d / f"{name}.key").read_bytes())
    spki = openssl("ec", "-in", "client-rpk.key", "-pubout", "-outform", "DER")
    return Pki(
        root=d,
        ca=d / "ca.pem",
        server_chain=(d / "server.pem").read_bytes() + (d / "ca.pem").read_bytes(),
        server_key=(d / "server.key").read_bytes(),
        server_rpk=(d / "server-rpk.pem").read_bytes(),
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        client_rpk=d / "client-rpk.pem",
        client_spki=spki,
    )


def secure_register_args(site: Site, endpoint: str, *credentials: str) -> list[str]:
    return [
        "-B", "10", *credentials,
        "-m", "post", "-t", "40", "-e", "</1/0>,</3/0>",
        f"coaps://127.0.0.1:{site.port}/rd?ep={endpoint}&lt=300&lwm2m=1.1&b=U",
    ]  # fmt: skip


async def test_rpk_and_x509_clients_from_the_store(site: Site, pki: Pki) -> None:
    # the server's own credentials arrive through the store: the running DTLS server reloads
    site.store.set_server_credentials(
        rpk=RpkKeyPair.from_pem(pki.server_rpk),
        x509=X509Credentials(pki.server_chain, pki.server_key),
        trust=TrustStore(ca_file=str(pki.ca)),
    )
    site.store.add(ClientEntry.rpk("meter-1", pki.client_spki))
    site.store.add(ClientEntry.x509("cam-1"))  # bound by CN = the endpoint name
    rc, output = await run_client(*secure_register_args(site, "meter-1", "-M", str(pki.client_rpk)))
    assert rc == 0, output
    await site.events.until(lambda: any(r.endpoint == "meter-1" for r in site.events.registered))
    x509_args = ("-c", str(pki.client_cert), "-j", str(pki.client_key), "-C", str(pki.ca))
    rc, output = await run_client(*secure_register_args(site, "cam-1", *x509_args))
    assert rc == 0, output
    await site.events.until(lambda: any(r.endpoint == "cam-1" for r in site.events.registered))
    by_endpoint = {r.endpoint: r.claims for r in site.events.registered}
    assert by_endpoint["meter-1"] == (RpkPrincipal(pki.client_spki),)
    (cam,) = by_endpoint["cam-1"]
    assert isinstance(cam, X509Principal) and cam.common_name == "cam-1" and cam.chain_ok
    # the certificate of cam-1 registering as meter-1: 4.00
    _, output = await run_client(*secure_register_args(site, "meter-1", *x509_args))
    assert "4.00" in output, output
    assert site.binding.refusals[RefusalReason.ENDPOINT_MISMATCH] == 1
    # removed: the key no longer opens a session
    site.store.remove("meter-1")
    failures = len(site.events.failed)
    await run_client(*secure_register_args(site, "meter-1", "-M", str(pki.client_rpk)))
    await site.events.until(lambda: len(site.events.failed) > failures)
    assert "unknown raw public key" in site.events.failed[-1][1]
