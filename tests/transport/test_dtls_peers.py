"""CoAP over DTLS against peers the project did not write: libcoap's GnuTLS and OpenSSL clients.

Each test runs a real client process against the aiocoap context on the DTLS transport (127.0.0.1,
an ephemeral port) and checks the answer and what the server authenticated.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import aiocoap
import pytest
from aiocoap import resource
from dtls_helpers import (
    BIG_PAYLOAD,
    ClientRun,
    CoapDtlsHarness,
    PkiSet,
    UdpDtlsClient,
    coap_dtls_server,
    make_test_pki,
    run_coap_client,
)

from gateway.transport.dtls import (
    InMemoryCredentials,
    PskPrincipal,
    RpkKeyPair,
    RpkPrincipal,
    TrustStore,
    X509Credentials,
    X509Principal,
)

GNUTLS = "coap-client-gnutls"
OPENSSL = "coap-client-openssl"

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(shutil.which(GNUTLS) is None, reason="libcoap3-bin not installed"),
]

PSK_ID = b"LwPSK00000000-identity"
PSK_KEY = b"secret-psk-key16"
LONG_ID = b"urn:imei:" + b"0123456789abcdef" * 7 + b"0123456"  # 128 bytes (RFC 7925)
LONG_KEY = b"a-64-byte-text-key-" + b"x" * 45
assert len(LONG_ID) == 128 and len(LONG_KEY) == 64


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiSet:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def credentials(pki: PkiSet) -> InMemoryCredentials:
    return InMemoryCredentials(
        psk={PSK_ID: PSK_KEY, LONG_ID: LONG_KEY},
        rpk_keys={pki.client_rpk.spki_der},
        server_rpk=RpkKeyPair.from_pem(pki.server_rpk.pem_bytes),
        server_x509=X509Credentials(pki.server_chain, pki.server.key_bytes),
        trust=TrustStore(ca_file=str(pki.ca.cert)),
    )


def psk_args(identity: bytes = PSK_ID, key: bytes = PSK_KEY) -> list[str]:
    # libcoap takes -u/-k as text; the test identities and keys are chosen to be printable or hex
    return ["-u", identity.decode(), "-k", key.decode("latin-1")]


def url(h: CoapDtlsHarness, path: str = "hello") -> str:
    return f"coaps://127.0.0.1:{h.port}/{path}"


async def get(binary: str, h: CoapDtlsHarness, *args: str, path: str = "hello") -> ClientRun:
    return await run_coap_client(binary, "-B", "10", *args, url(h, path))


async def get_to_file(binary: str, h: CoapDtlsHarness, out: Path, *args: str, path: str) -> bytes:
    run = await run_coap_client(binary, "-B", "10", "-o", str(out), *args, url(h, path))
    assert run.returncode == 0, run.output
    return out.read_bytes()


async def refused(h: CoapDtlsHarness, binary: str, *args: str) -> tuple[ClientRun, str]:
    """Run a client that must be refused; return its run and the server's reason."""
    run = await get(binary, h, *args)
    await asyncio.wait_for(h.failure_seen.wait(), 10)
    assert not h.requests, "a refused client must not reach the CoAP layer"
    assert b"hello" not in run.stdout
    return run, h.failures[-1][1]


async def still_serves(h: CoapDtlsHarness) -> None:
    run = await get(GNUTLS, h, *psk_args())
    assert run.stdout.strip() == b"hello " + str(PskPrincipal(PSK_ID)).encode(), run.output


# --- the three modes -----------------------------------------------------------------------------------


async def test_gnutls_psk(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials) as h:
        run = await get(GNUTLS, h, *psk_args())
        assert run.returncode == 0, run.output
        assert run.stdout.strip() == b"hello " + str(PskPrincipal(PSK_ID)).encode()
        (request,) = h.requests
        assert request.remote.authenticated_claims == (PskPrincipal(PSK_ID),)
        (session,) = h.established
        assert session.cipher_suite == "TLS_PSK_WITH_AES_128_CCM_8"


async def test_gnutls_psk_128_byte_identity_text_key(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials) as h:
        run = await get(GNUTLS, h, *psk_args(LONG_ID, LONG_KEY))
        assert run.returncode == 0, run.output
        assert run.stdout.startswith(b"hello PSK identity 'urn:imei:")
        (request,) = h.requests
        assert request.remote.authenticated_claims == (PskPrincipal(LONG_ID),)


async def test_gnutls_rpk(credentials: InMemoryCredentials, pki: PkiSet) -> None:
    async with coap_dtls_server(credentials) as h:
        run = await get(GNUTLS, h, "-M", str(pki.client_rpk.pem))
        assert run.returncode == 0, run.output
        assert run.stdout.startswith(b"hello raw public key sha256:")
        (request,) = h.requests
        assert request.remote.authenticated_claims == (RpkPrincipal(pki.client_rpk.spki_der),)
        assert h.established[0].cipher_suite == "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"


async def test_gnutls_x509(credentials: InMemoryCredentials, pki: PkiSet) -> None:
    async with coap_dtls_server(credentials) as h:
        run = await get(GNUTLS, h, "-c", str(pki.client.cert), "-j", str(pki.client.key), "-C", str(pki.ca.cert))
        assert run.returncode == 0, run.output
        assert run.stdout.strip() == b"hello certificate CN='LwX50900000000'"
        (request,) = h.requests
        (principal,) = request.remote.authenticated_claims
        assert isinstance(principal, X509Principal)
        assert principal.common_name == "LwX50900000000"
        assert principal.chain_ok
        assert principal.sans == ("dev1.example", "urn:imei:4901542032", "10.1.2.3")
        assert principal.cert_der.startswith(b"\x30\x82")
        assert h.established[0].cipher_suite == "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"


async def test_openssl_psk_128_byte_identity(credentials: InMemoryCredentials) -> None:
    credentials.psk[LONG_ID] = b"0123456789abcdef"
    async with coap_dtls_server(credentials) as h:
        run = await get(OPENSSL, h, *psk_args(LONG_ID, b"0123456789abcdef"))
        assert run.returncode == 0, run.output
        (request,) = h.requests
        assert request.remote.authenticated_claims == (PskPrincipal(LONG_ID),)
        # OpenSSL offers GCM first; the server's precedence picks CCM_8
        assert h.established[0].cipher_suite == "TLS_PSK_WITH_AES_128_CCM_8"


async def test_openssl_x509(credentials: InMemoryCredentials, pki: PkiSet) -> None:
    async with coap_dtls_server(credentials) as h:
        run = await get(OPENSSL, h, "-c", str(pki.client.cert), "-j", str(pki.client.key), "-C", str(pki.ca.cert))
        assert run.returncode == 0, run.output
        assert run.stdout.strip() == b"hello certificate CN='LwX50900000000'"
        assert h.established[0].cipher_suite == "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"


async def test_dual_stack_bind_serves_ipv4_peer(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials, bind="::") as h:
        run = await run_coap_client(GNUTLS, "-B", "10", *psk_args(), f"coaps://127.0.0.1:{h.port}/hello")
        assert run.returncode == 0, run.output
        assert h.requests[0].remote.hostinfo.startswith("127.0.0.1:")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_peer(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials, bind="::") as h:
        device = await UdpDtlsClient.open("::1")
        try:
            session = await device.connect(h.port, psk=(PSK_ID, PSK_KEY))
            assert session.established
            (server_session,) = h.established
            assert server_session.addr[0] == "::1"
        finally:
            device.close()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_literal_in_sni_is_refused_by_gnutls(credentials: InMemoryCredentials) -> None:
    """Known limitation: libcoap 4.3.1 puts the IPv6 literal of coaps://[::1]/ into SNI, which RFC
    6066 forbids and GnuTLS refuses (it has no switch for that). Clients given a host name, an IPv4
    address, or that send no SNI for literals (as most do) are not affected."""
    async with coap_dtls_server(credentials, bind="::") as h:
        run = await run_coap_client(GNUTLS, "-B", "10", *psk_args(), f"coaps://[::1]:{h.port}/hello")
        await asyncio.wait_for(h.failure_seen.wait(), 10)
        assert "SNI" in h.failures[0][1]
        assert not h.requests and "Illegal parameter" in run.output


# --- CoAP behaviour over the session ---------------------------------------------------------------


async def test_block2_sized_from_data_mtu(credentials: InMemoryCredentials, tmp_path: Path) -> None:
    async with coap_dtls_server(credentials) as h:
        assert await get_to_file(GNUTLS, h, tmp_path / "big", *psk_args(), path="big") == BIG_PAYLOAD
        session = h.established[0]
        assert session.data_mtu == 1251  # CCM_8 at MTU 1280
        remote = session.user
        assert remote.maximum_block_size_exp == 6
        assert remote.maximum_payload_size == 1251 - 128


async def test_role_reversal_request_over_live_session(credentials: InMemoryCredentials) -> None:
    """The server sends a request to a device through the remote of its earlier request."""
    async with coap_dtls_server(credentials) as h:
        # an observation keeps coap-client (and so its DTLS session) alive for a while
        client = asyncio.create_task(get(GNUTLS, h, "-s", "20", *psk_args(), path="obs"))
        try:
            await asyncio.wait_for(h.request_seen.wait(), 10)
            remote = h.requests[0].remote
            assert await h.transport.recognize_remote(remote)
            request = aiocoap.Message(code=aiocoap.GET, uri_path=["3", "0"])
            request.remote = remote
            response = await asyncio.wait_for(h.ctx.request(request).response, 10)
            # libcoap's client has no /3/0 and says so, over the same session
            assert response.code == aiocoap.NOT_FOUND
            assert response.remote == remote
        finally:
            client.cancel()
            with pytest.raises(asyncio.CancelledError):
                await client
        assert h.server.stats["handshakes_completed"] == 1


# --- refusals ------------------------------------------------------------------------------------------


async def test_wrong_psk_key_refused_fast(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials) as h:
        run, reason = await refused(h, GNUTLS, *psk_args(PSK_ID, b"wrong-psk-key-16"))
        assert "wrong PSK key" in reason and "LwPSK00000000-identity" in reason
        assert "Bad record MAC" in run.output  # the client got the alert, no 30 s wait
        await still_serves(h)


async def test_wrong_psk_key_refused_openssl(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials) as h:
        run, reason = await refused(h, OPENSSL, *psk_args(PSK_ID, b"wrong-psk-key-16"))
        assert "wrong PSK key" in reason
        assert "bad record mac" in run.output
        await still_serves(h)


async def test_unknown_psk_identity_refused(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials) as h:
        run, reason = await refused(h, GNUTLS, *psk_args(b"nobody", PSK_KEY))
        assert reason == "unknown PSK identity 'nobody' (6 bytes)"
        assert "Alert '115'" in run.output
        await still_serves(h)


async def test_wrong_raw_public_key_refused(credentials: InMemoryCredentials, pki: PkiSet) -> None:
    async with coap_dtls_server(credentials) as h:
        run, reason = await refused(h, GNUTLS, "-M", str(pki.stranger_rpk.pem))
        assert reason.startswith("unknown raw public key sha256:")
        assert "Alert '49'" in run.output  # access denied
        await still_serves(h)


@pytest.mark.parametrize("binary", [GNUTLS, OPENSSL])
async def test_certificate_from_another_ca_refused(credentials: InMemoryCredentials, pki: PkiSet, binary: str) -> None:
    async with coap_dtls_server(credentials) as h:
        c = pki.client_other_ca
        run, reason = await refused(h, binary, "-c", str(c.cert), "-j", str(c.key), "-C", str(pki.ca.cert))
        assert reason == "certificate chain error: unknown CA (CN='LwX50900000001')"
        assert ("Alert '48'" if binary == GNUTLS else "unknown ca") in run.output
        await still_serves(h)


async def test_expired_certificate_refused(credentials: InMemoryCredentials, pki: PkiSet) -> None:
    async with coap_dtls_server(credentials) as h:
        c = pki.client_expired
        run, reason = await refused(h, OPENSSL, "-c", str(c.cert), "-j", str(c.key), "-C", str(pki.ca.cert))
        assert reason == "certificate chain error: certificate expired (CN='LwX50900000002')"
        assert "certificate expired" in run.output
        await still_serves(h)


async def test_psk_only_server_refuses_certificates(pki: PkiSet) -> None:
    async with coap_dtls_server(InMemoryCredentials(psk={PSK_ID: PSK_KEY})) as h:
        await refused(h, GNUTLS, "-c", str(pki.client.cert), "-j", str(pki.client.key), "-C", str(pki.ca.cert))
        await still_serves(h)


def test_pki_files_are_temporary(pki: PkiSet) -> None:
    assert not Path(pki.root).is_relative_to(Path(__file__).parent.parent.parent)


# --- aiocoap's tinydtls client (DTLSSocket, optional) ----------------------------------------------------


class _DeviceObject(resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"device 3/0")


async def _tinydtls_client(h: CoapDtlsHarness, identity: bytes, key: bytes) -> aiocoap.Context:
    pytest.importorskip("DTLSSocket")
    ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
    site = resource.Site()
    site.add_resource(["3", "0"], _DeviceObject())
    ctx.serversite = site  # the device answers the server's requests over the same session
    ctx.client_credentials.load_from_dict(
        {
            f"coaps://127.0.0.1:{h.port}/*": {
                "dtls": {"psk": {"ascii": key.decode()}, "client-identity": {"ascii": identity.decode()}}
            }
        }
    )
    return ctx


async def test_tinydtls_psk_and_role_reversal(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials) as h:
        client = await _tinydtls_client(h, PSK_ID, PSK_KEY)
        try:
            request = aiocoap.Message(code=aiocoap.GET, uri=url(h))
            response = await asyncio.wait_for(client.request(request).response, 10)
            assert response.payload == b"hello " + str(PskPrincipal(PSK_ID)).encode()
            assert h.established[0].cipher_suite == "TLS_PSK_WITH_AES_128_CCM_8"

            # role reversal: the server asks the device through the stored remote
            to_device = aiocoap.Message(code=aiocoap.GET, uri_path=["3", "0"])
            to_device.remote = h.requests[0].remote
            answer = await asyncio.wait_for(h.ctx.request(to_device).response, 10)
            assert answer.code == aiocoap.CONTENT
            assert answer.payload == b"device 3/0"
        finally:
            await client.shutdown()


async def test_tinydtls_wrong_key_refused(credentials: InMemoryCredentials) -> None:
    async with coap_dtls_server(credentials) as h:
        client = await _tinydtls_client(h, PSK_ID, b"wrong-psk-key-16")
        try:
            request = aiocoap.Message(code=aiocoap.GET, uri=url(h))
            with pytest.raises(aiocoap.error.Error):
                await asyncio.wait_for(client.request(request).response, 10)
            assert "wrong PSK key" in h.failures[0][1]
        finally:
            await client.shutdown()
        await still_serves(h)
