"""The security binding: every rule, its CoAP code, the counters, the rate-limited log; and the binding
as the LwM2M server's registration check for NoSec registrations over real UDP."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from gateway.lwm2m.security import ALLOW, RefusalReason, SecurityBinding
from gateway.lwm2m.server import LwM2mServer, Refusal, RegistrationCheck, ServerConfig
from gateway.store.clients import ClientEntry, ClientStore
from gateway.transport.dtls import PskPrincipal, RpkPrincipal, X509Principal

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"  # copied from ../shared/fixtures
KEY = b"0123456789abcdef"
SPKI = base64.b64decode(
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpTcawD6Ib3uTF1qb7423Vd92uM4Sk5tcnFK+ifbuJJyF82gApCfqHYz7SZLgvM9c0J7LaIFikbtWSO/m+64Cyg=="
)


def fixture_cert() -> bytes:
    return base64.b64decode(json.loads((FIXTURES / "credentials-x509.json").read_text())["client"]["cert"])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClientStore]:
    s = ClientStore.open(tmp_path / "clients.sqlite3")
    s.add(ClientEntry.nosec("plain"))
    s.add(ClientEntry.psk("psk-a", b"psk-a-id", KEY))
    s.add(ClientEntry.psk("psk-b", b"psk-b-id", KEY))
    s.add(ClientEntry.rpk("rpk-a", SPKI))
    s.add(ClientEntry.x509("x-pinned", cert=fixture_cert()))
    s.add(ClientEntry.x509("x-named", cert_name="cam.example"))
    s.add(ClientEntry.x509("x-default"))
    yield s
    s.close()


def cert(
    cn: str | None, sans: tuple[str, ...] = (), ok: bool = True, der: bytes = b"\x30\x00", error: str = ""
) -> X509Principal:
    return X509Principal(cn, sans, ok, der, error)


def test_the_binding_is_a_registration_check(store: ClientStore) -> None:
    check: RegistrationCheck = SecurityBinding(store)
    assert check("plain", ()) is None
    refusal = check("stranger", ())
    assert isinstance(refusal, Refusal) and refusal.code == Code.FORBIDDEN


@pytest.mark.parametrize(
    ("endpoint", "claims"),
    [
        ("plain", ()),
        ("psk-a", (PskPrincipal(b"psk-a-id"),)),
        ("rpk-a", (RpkPrincipal(SPKI),)),
        ("x-named", (cert("cam.example"),)),
        ("x-named", (cert("other", sans=("x.example", "cam.example")),)),
        ("x-default", (cert("x-default"),)),
        ("x-pinned", (cert("anything", ok=False, der=fixture_cert(), error="unknown CA"),)),  # self-signed
    ],
)
def test_admitted(store: ClientStore, endpoint: str, claims: tuple[object, ...]) -> None:
    binding = SecurityBinding(store)
    assert binding.check(endpoint, claims) is ALLOW
    assert binding.stats()["allowed"] == 1 and binding.stats()["refused"] == 0


@pytest.mark.parametrize(
    ("endpoint", "claims", "reason", "code"),
    [
        ("stranger", (), RefusalReason.UNKNOWN_ENDPOINT, "4.03"),
        ("psk-a", (), RefusalReason.NOSEC_FOR_SECURED_ENDPOINT, "4.03"),
        ("rpk-a", (), RefusalReason.NOSEC_FOR_SECURED_ENDPOINT, "4.03"),
        ("x-named", (), RefusalReason.NOSEC_FOR_SECURED_ENDPOINT, "4.03"),
        ("psk-b", (PskPrincipal(b"psk-a-id"),), RefusalReason.ENDPOINT_MISMATCH, "4.00"),
        ("stranger", (PskPrincipal(b"psk-a-id"),), RefusalReason.ENDPOINT_MISMATCH, "4.00"),
        ("plain", (PskPrincipal(b"psk-a-id"),), RefusalReason.ENDPOINT_MISMATCH, "4.00"),
        ("psk-a", (RpkPrincipal(SPKI),), RefusalReason.ENDPOINT_MISMATCH, "4.00"),  # configured PSK, came with RPK
        ("x-named", (cert("x-default"),), RefusalReason.ENDPOINT_MISMATCH, "4.00"),
        ("psk-a", (PskPrincipal(b"gone-id"),), RefusalReason.CREDENTIALS_REMOVED, "4.03"),
        ("x-named", (cert("cam.example", ok=False, error="unknown CA"),), RefusalReason.UNTRUSTED_CERTIFICATE, "4.03"),
        ("psk-a", ("a token of some other transport",), RefusalReason.UNSUPPORTED_CLAIMS, "4.03"),
    ],
)
def test_refused(
    store: ClientStore, endpoint: str, claims: tuple[object, ...], reason: RefusalReason, code: str
) -> None:
    binding = SecurityBinding(store)
    decision = binding.check(endpoint, claims, "192.0.2.7:5684")
    assert not decision.allowed and decision.reason is reason and decision.code is not None
    assert decision.code.dotted == code
    refusal = decision.refusal()
    assert refusal is not None and refusal.code == decision.code
    # what the device hears names no other endpoint
    for other in ("psk-a", "psk-b", "x-default", "plain"):
        if other != endpoint:
            assert other not in refusal.reason
    assert binding.stats()[f"refused_{reason.value}"] == 1 and binding.stats()["refused"] == 1


def test_pinned_certificate_must_still_be_valid(store: ClientStore) -> None:
    binding = SecurityBinding(store)
    expired = cert("x", ok=False, der=fixture_cert(), error="certificate expired")
    assert binding.check("x-pinned", (expired,)).reason is RefusalReason.UNTRUSTED_CERTIFICATE


def test_allow_unknown_nosec_admits_only_unknown_nosec(store: ClientStore) -> None:
    binding = SecurityBinding(store, allow_unknown_nosec=True)
    assert binding.check("stranger", ()) is ALLOW
    assert binding.check("psk-a", ()).reason is RefusalReason.NOSEC_FOR_SECURED_ENDPOINT
    assert binding.check("stranger", (PskPrincipal(b"psk-a-id"),)).reason is RefusalReason.ENDPOINT_MISMATCH


def test_changes_in_the_store_apply_at_once(store: ClientStore) -> None:
    binding = SecurityBinding(store)
    assert binding.check("new-1", ()).reason is RefusalReason.UNKNOWN_ENDPOINT
    store.add(ClientEntry.nosec("new-1"))
    assert binding.check("new-1", ()) is ALLOW
    store.remove("psk-a")
    assert binding.check("psk-a", (PskPrincipal(b"psk-a-id"),)).reason is RefusalReason.CREDENTIALS_REMOVED


def test_counters_and_telemetry(store: ClientStore) -> None:
    binding = SecurityBinding(store)
    for _ in range(3):
        binding("stranger", ())
    binding("psk-b", (PskPrincipal(b"psk-a-id"),))
    binding("plain", ())
    stats = binding.stats()
    assert stats["allowed"] == 1 and stats["refused"] == 4
    assert stats["refused_unknown_endpoint"] == 3 and stats["refused_endpoint_mismatch"] == 1
    tele = binding.telemetry()
    assert tele["lwm2mRegistrationsRefused"] == 4
    assert tele["lwm2mRefusedUnknownEndpoint"] == 3 and tele["lwm2mRefusedEndpointMismatch"] == 1
    assert set(tele) == {"lwm2mRegistrationsRefused"} | {r.telemetry_key for r in RefusalReason}


def test_refusals_are_logged_once_per_endpoint_and_reason(
    store: ClientStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("gateway.lwm2m.security.time.monotonic", lambda: now[0])
    binding = SecurityBinding(store, log_interval=60.0, log_burst=3)
    caplog.set_level(logging.WARNING, logger="gateway.lwm2m.security")
    for _ in range(5):
        binding("stranger", (), "192.0.2.7:40000")
    binding("psk-b", (PskPrincipal(b"psk-a-id"),), "192.0.2.8:40001")
    lines = [r for r in caplog.records if r.name == "gateway.lwm2m.security"]
    assert len(lines) == 2
    first = lines[0]
    assert "'stranger'" in first.getMessage() and "192.0.2.7:40000" in first.getMessage()
    assert "4.03 unknown_endpoint" in first.getMessage()
    assert first.endpoint == "stranger" and first.peer == "192.0.2.7:40000" and first.error_code == "4.03"  # type: ignore[attr-defined]
    assert "psk-a" in lines[1].getMessage() and "4.00 endpoint_mismatch" in lines[1].getMessage()
    assert KEY.decode() not in caplog.text and KEY.hex() not in caplog.text
    # after the interval the next refusal is logged again, with the repeats it stands for
    now[0] += 61
    binding("stranger", ())
    assert "(4 more since the last report)" in caplog.records[-1].getMessage()
    assert "an unknown peer" in caplog.records[-1].getMessage()
    # a flood of made-up endpoint names: at most log_burst lines per reason and interval
    caplog.clear()
    for i in range(50):
        binding(f"made-up-{i}", ())
    assert len(caplog.records) == 2  # the budget left in this window (1 used above)
    now[0] += 61
    binding("made-up-x", ())
    assert "48 more LwM2M refusals (unknown_endpoint) were not logged" in caplog.text
    assert binding.stats()["refused_unknown_endpoint"] == 57
    assert binding.stats()["log_lines_suppressed"] == 4 + 48


def test_bootstrap_request_uses_the_same_rule(store: ClientStore, caplog: pytest.LogCaptureFixture) -> None:
    binding = SecurityBinding(store)
    assert binding.check_bootstrap("psk-a", (PskPrincipal(b"psk-a-id"),)) is ALLOW
    assert binding.check_bootstrap("psk-a", ()).reason is RefusalReason.NOSEC_FOR_SECURED_ENDPOINT
    assert "Bootstrap-Request of 'psk-a'" in caplog.text


# --- as the LwM2M server's registration check, NoSec over real UDP --------------------------------------------------


async def register(port: int, endpoint: str) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    try:
        request = aiocoap.Message(
            code=aiocoap.POST,
            uri=f"coap://127.0.0.1:{port}/rd?ep={endpoint}&lt=60&lwm2m=1.1&b=U",
            payload=b"</1/0>,</3/0>",
            content_format=40,
        )
        return await ctx.request(request).response
    finally:
        await ctx.shutdown()


async def test_nosec_registrations_through_the_server(store: ClientStore) -> None:
    binding = SecurityBinding(store)
    server = LwM2mServer(config=ServerConfig(), registration_check=binding)
    await server.start(("127.0.0.1", 0))
    try:
        port = server.address[1]
        assert (await register(port, "plain")).code == Code.CREATED
        refused = await register(port, "stranger")
        assert refused.code == Code.FORBIDDEN and refused.payload == b"endpoint not known to this gateway"
        secured = await register(port, "psk-a")
        assert secured.code == Code.FORBIDDEN and secured.payload == b"this endpoint must use DTLS"
        assert server.registrations.device("plain") is not None
        assert server.registrations.device("psk-a") is None
        assert binding.stats()["refused"] == 2
        binding.allow_unknown_nosec = True  # the demo's switch
        assert (await register(port, "stranger")).code == Code.CREATED
    finally:
        await server.stop()
