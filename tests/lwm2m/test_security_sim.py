"""The simulator's DTLS clients register through the real server: the credentials store (PSK, RPK
and X.509 bound by CN) as the DTLS provider and the security binding as the registration check.

* a DtlsFleet with one PSK, one RPK and one X.509 device: each handshakes, then registers, and the
  registration carries its principal;
* a client whose handshake fails (a key the store does not know) tries again and gets in once its
  key is added, without a restart;
* a bootstrapped account in Certificate mode (/0/x/2 = 2, certificate and key in /0/x/3 and /0/x/5,
  DER) registers over DTLS with that certificate.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.lwm2m.security import SecurityBinding
from gateway.lwm2m.server import LwM2mServer, Registration, RegistrationListener, ServerConfig
from gateway.sim.bootstrap_client import BootstrapFleet, BootstrapSimClient, DtlsFleet
from gateway.store.clients import ClientEntry, ClientStore, follow_dtls
from gateway.transport.dtls import (
    DtlsServer,
    KeyFormat,
    PskPrincipal,
    RpkKeyPair,
    RpkPrincipal,
    TrustStore,
    X509Credentials,
    X509Principal,
    generate_p256_key_pair,
)
from gateway.transport.dtls_coap import DtlsTransport

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed for the certificates")

log = logging.getLogger("test.security.sim")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_chain: bytes
    server_key: bytes
    cert_pem: bytes  # CN=cam-000000
    cert_der: bytes
    key_pem: bytes
    key_der: bytes  # PKCS#8


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("simpki")

    def openssl(*args: str) -> bytes:
        return subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True).stdout

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sim-ca")
    for name in ("server", "cam-000000"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2")  # fmt: skip
    return Pki(
        ca=d / "ca.pem",
        server_chain=(d / "server.pem").read_bytes() + (d / "ca.pem").read_bytes(),
        server_key=(d / "server.key").read_bytes(),
        cert_pem=(d / "cam-000000.pem").read_bytes(),
        cert_der=openssl("x509", "-in", "cam-000000.pem", "-outform", "DER"),
        key_pem=(d / "cam-000000.key").read_bytes(),
        key_der=openssl("pkcs8", "-topk8", "-nocrypt", "-in", "cam-000000.key", "-outform", "DER"),
    )


class Registered(RegistrationListener):
    def __init__(self) -> None:
        self.registrations: list[Registration] = []
        self.changed = asyncio.Event()

    def on_registered(self, registration: Registration) -> None:
        self.registrations.append(registration)
        self.changed.set()

    async def until(self, count: int, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.registrations) < count:
                self.changed.clear()
                await self.changed.wait()

    def claims(self) -> dict[str, tuple[Any, ...]]:
        return {r.endpoint: r.claims for r in self.registrations}


@dataclass
class Site:
    store: ClientStore
    port: int
    registered: Registered


@pytest.fixture
async def site(tmp_path: Path, pki: Pki) -> AsyncIterator[Site]:
    store = ClientStore.open(tmp_path / "clients.sqlite3")
    server_pub, server_priv = generate_p256_key_pair()
    store.set_server_credentials(
        rpk=RpkKeyPair(server_pub, server_priv, KeyFormat.DER),
        x509=X509Credentials(pki.server_chain, pki.server_key),
        trust=TrustStore(ca_file=str(pki.ca)),
    )
    registered = Registered()
    server = LwM2mServer(config=ServerConfig(), registration_check=SecurityBinding(store), listener=registered)
    dtls = DtlsServer(store)
    unfollow = follow_dtls(store, dtls)
    loop = asyncio.get_running_loop()

    async def factory(mman: Any) -> DtlsTransport:
        return await DtlsTransport.create_server_transport(mman, log, loop, bind=("127.0.0.1", 0), server=dtls)

    _, transport = await server.add_transport(factory)
    try:
        yield Site(store, transport.port, registered)
    finally:
        unfollow()
        await server.stop()
        store.close()


async def test_psk_rpk_and_x509_devices_register(site: Site, pki: Pki) -> None:
    rpk_public, rpk_private = generate_p256_key_pair()
    site.store.add(ClientEntry.psk("psk-000000", b"psk-id", b"sixteen-byte-key"))
    site.store.add(ClientEntry.rpk("rpk-000000", rpk_public))
    site.store.add(ClientEntry.x509("cam-000000"))  # bound by CN
    credentials = {
        "psk-000000": {"psk": (b"psk-id", b"sixteen-byte-key")},
        "rpk-000000": {"rpk": RpkKeyPair(rpk_public, rpk_private, KeyFormat.DER)},
        "cam-000000": {"x509": X509Credentials(pki.cert_pem, pki.key_pem)},
    }
    fleet = DtlsFleet(("127.0.0.1", site.port), 0, credentials=credentials.__getitem__, endpoints=list(credentials))
    await fleet.start()
    try:
        assert fleet.established == 0 and fleet.stats["datagrams_sent"] == 0  # nothing before register_all
        fleet.register_all()
        await site.registered.until(3)
        await fleet.until(lambda: fleet.registered == 3)
        claims = site.registered.claims()
        assert claims["psk-000000"] == (PskPrincipal(b"psk-id"),)
        assert claims["rpk-000000"] == (RpkPrincipal(rpk_public),)
        (cam,) = claims["cam-000000"]
        assert isinstance(cam, X509Principal) and cam.common_name == "cam-000000" and cam.chain_ok
        assert fleet.established == 3 and fleet.stats["dtls_failed"] == 0
    finally:
        await fleet.close()


async def test_a_failed_handshake_is_tried_again(site: Site) -> None:
    public, private = generate_p256_key_pair()
    fleet = DtlsFleet(
        ("127.0.0.1", site.port), 1, prefix="late-", retry_after=0.1,
        credentials=lambda _ep: {"rpk": RpkKeyPair(public, private, KeyFormat.DER)},
    )  # fmt: skip
    await fleet.start()
    try:
        fleet.register_all()
        await fleet.until(lambda: fleet.stats["dtls_failed"] >= 1)  # unknown raw public key
        assert fleet.registered == 0
        site.store.add(ClientEntry.rpk("late-000000", public))
        await fleet.until(lambda: fleet.registered == 1)
        assert site.registered.claims()["late-000000"] == (RpkPrincipal(public),)
    finally:
        await fleet.close()


async def test_a_bootstrapped_certificate_account_registers(site: Site, pki: Pki) -> None:
    site.store.add(ClientEntry.x509("cam-000000"))
    fleet = BootstrapFleet(("127.0.0.1", site.port), 1, prefix="cam-")
    await fleet.start()
    try:
        client = fleet.bs_client("cam-000000")
        # what a Bootstrap-Write of a Certificate-mode account leaves in objects 0 and 1
        client.bs_security[1] = {0: f"coaps://127.0.0.1:{site.port}", 1: False, 2: 2, 3: pki.cert_der,
                                 5: pki.key_der, 10: 1}  # fmt: skip
        client.bs_server[1] = {0: 1, 1: 300}
        client.bootstrap_state = "finished"
        BootstrapSimClient._switch_to_server(client)
        await fleet.until(lambda: fleet.registered == 1)
        (cam,) = site.registered.claims()["cam-000000"]
        assert isinstance(cam, X509Principal) and cam.common_name == "cam-000000"
        assert client.security_mode == 2
    finally:
        await fleet.close()
