"""Bootstrap security in RPK and X.509 modes (NoSec and PSK are in test_bootstrap_flow): the
simulator bootstraps with a raw public key / a certificate (CN = endpoint, chained to the trust
store), gets generated PSK credentials and registers; libcoap's GnuTLS client (a peer the project
did not write) sends Bootstrap-Requests with RPK and X.509, and the binding rule holds: a key or
certificate of one endpoint claiming another endpoint is answered 4.00."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.lwm2m.bootstrap import parse_config
from gateway.sim.bootstrap_client import BootstrapFleet
from gateway.store.clients import Source
from gateway.transport.dtls import RpkKeyPair, TrustStore, X509Credentials
from tests.lwm2m.bootstrap_site import Site, open_site

GNUTLS = "coap-client-gnutls"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed for the keys")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_chain: bytes
    server_key: bytes
    server_rpk: bytes
    files: Path

    def client(self, name: str) -> tuple[bytes, bytes]:
        return (self.files / f"{name}.pem").read_bytes(), (self.files / f"{name}.key").read_bytes()

    def rpk_pem(self, name: str) -> Path:
        return self.files / f"{name}-rpk.pem"

    def spki(self, name: str) -> bytes:
        return (self.files / f"{name}-rpk.der").read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("bspki")

    def openssl(*args: str) -> bytes:
        return subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True).stdout

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bs-ca")
    for name in ("server", "cam-000000", "cam-000001"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2")  # fmt: skip
    for name in ("server", "meter-000000", "meter-000001"):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}-rpk.key")
        pub = openssl("ec", "-in", f"{name}-rpk.key", "-pubout")
        (d / f"{name}-rpk.pem").write_bytes(pub + (d / f"{name}-rpk.key").read_bytes())
        (d / f"{name}-rpk.der").write_bytes(openssl("ec", "-in", f"{name}-rpk.key", "-pubout", "-outform", "DER"))
    return Pki(d / "ca.pem", (d / "server.pem").read_bytes() + (d / "ca.pem").read_bytes(),
               (d / "server.key").read_bytes(), (d / "server-rpk.pem").read_bytes(), d)


@pytest.fixture
async def site(tmp_path: Path, pki: Pki) -> AsyncIterator[Site]:
    creds = {"rpk": RpkKeyPair.from_pem(pki.server_rpk), "x509": X509Credentials(pki.server_chain, pki.server_key),
             "trust": TrustStore(ca_file=str(pki.ca))}
    s = await open_site(tmp_path, server_credentials=creds, request_timeout=3.0, retries=0)
    generate = {"lwm2mServer": {"securityMode": "PSK", "generate": True}}
    s.store.put(parse_config({"pattern": "cam-*", "bootstrap": {"bootstrapServer": {"securityMode": "X509"},
                                                                 **generate}}))
    for name in ("meter-000000", "meter-000001"):
        spki = base64.b64encode(pki.spki(name)).decode()
        s.store.put(parse_config({"endpoint": name, "bootstrap": {
            "bootstrapServer": {"securityMode": "RPK", "clientPublicKeyOrId": spki}, **generate}},
            source=Source.CLI))
    yield s
    await s.close()


@pytest.mark.parametrize("kind", ["meter", "cam"])
async def test_rpk_and_x509_bootstrap_then_psk_registration(site: Site, pki: Pki, kind: str) -> None:
    def credentials(endpoint: str) -> dict[str, Any]:
        if kind == "meter":
            return {"rpk": RpkKeyPair.from_pem(pki.rpk_pem(endpoint).read_bytes())}
        cert, key = pki.client(endpoint)
        return {"x509": X509Credentials(cert, key)}

    fleet = BootstrapFleet(("127.0.0.1", site.ports["bootstrap_dtls"]), 2, prefix=f"{kind}-",
                           bootstrap_credentials=credentials)
    await fleet.start()
    try:
        fleet.bootstrap_all()
        await site.registered.until(lambda: len(site.registered.registrations) == 2)
        for i in range(2):
            entry = site.clients.get(f"{kind}-{i:06d}")
            assert entry is not None and entry.identity is not None
    finally:
        await fleet.close()


@pytest.mark.peer
@pytest.mark.skipif(shutil.which(GNUTLS) is None, reason="libcoap3-bin not installed")
async def test_libcoap_rpk_and_x509_bootstrap_requests(site: Site, pki: Pki) -> None:
    async def request(endpoint: str, *creds: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            GNUTLS, "-m", "post", "-B", "3", "-v", "6", *creds,
            f"coaps://127.0.0.1:{site.ports['bootstrap_dtls']}/bs?ep={endpoint}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return out.decode(errors="replace")

    rpk = ("-M", str(pki.rpk_pem("meter-000000")))
    cert = ("-c", str(pki.files / "cam-000000.pem"), "-j", str(pki.files / "cam-000000.key"), "-C", str(pki.ca))
    assert "2.04" in (out := await request("meter-000000", *rpk)), out
    assert "2.04" in (out := await request("cam-000000", *cert)), out
    assert "4.00" in (out := await request("meter-000001", *rpk)), out  # meter-000000's key
    assert "4.00" in (out := await request("cam-000001", *cert)), out  # cam-000000's certificate
