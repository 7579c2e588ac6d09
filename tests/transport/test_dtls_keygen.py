"""P-256 key pairs made in process by GnuTLS (what the bootstrap server hands out for generated RPK
credentials): the public key matches the private one, every pair is new, and the pair works; and
the server's reading of a ClientHello's certificate type extension."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from gateway.lwm2m.bootstrap.server import generate_rpk
from gateway.transport import dtls
from gateway.transport.dtls import DtlsClient, KeyFormat, RpkKeyPair, generate_p256_key_pair, p256_spki, p256_xy


def test_the_pair_is_a_p256_spki_and_an_unencrypted_pkcs8() -> None:
    public, private = generate_p256_key_pair()
    x, y = p256_xy(public)  # ValueError unless a secp256r1 SubjectPublicKeyInfo
    assert p256_spki(x, y) == public
    assert private[:2] == b"\x30\x81" and b"\x2a\x86\x48\xce\x3d\x02\x01" in private  # PKCS#8, id-ecPublicKey
    assert repr(RpkKeyPair(public, private, KeyFormat.DER)) == "RpkKeyPair(format=DER)"


def test_every_pair_is_new() -> None:
    pairs = [generate_p256_key_pair() for _ in range(50)]
    assert len({p for p, _ in pairs}) == 50
    assert len({k for _, k in pairs}) == 50


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to cross-check with")
def test_openssl_derives_the_same_public_key() -> None:
    # GnuTLS gives the coordinates as integers: a zero byte in front when the high bit is set (most
    # of these 40 pairs have one), a shorter one when the top byte is zero (about 1 pair in 128)
    for _ in range(40):
        public, private = generate_p256_key_pair()
        derived = subprocess.run(
            ["openssl", "pkey", "-inform", "DER", "-pubout", "-outform", "DER"],
            input=private, check=True, capture_output=True,
        ).stdout  # fmt: skip
        assert derived == public


def test_generation_is_cheap_enough_for_the_event_loop() -> None:
    generate_rpk()
    t0 = time.process_time()
    for _ in range(20):
        generate_rpk()
    assert (time.process_time() - t0) / 20 < 0.005  # about 0.1-0.2 ms; the openssl CLI took 10-20 ms


def test_the_client_hello_tells_whether_the_client_sends_a_raw_public_key() -> None:
    """What the server reads from each ClientHello to pick its RPK-only credentials."""
    public, private = generate_p256_key_pair()
    offers: dict[str, bool] = {}
    for kind, creds in (
        ("rpk", {"rpk": RpkKeyPair(public, private, KeyFormat.DER)}),
        ("psk", {"psk": (b"id", b"sixteen-byte-key")}),
    ):
        sent: list[bytes] = []
        client = DtlsClient(send=lambda _addr, data, sent=sent: sent.append(data))
        client.connect(("127.0.0.1", 9), **creds)
        assert dtls._client_hello_random(sent[0]) is not None
        offers[kind] = dtls._wants_raw_public_key(sent[0])
        client.close()
    assert offers == {"rpk": True, "psk": False}
    assert dtls._client_hello_extension(b"\x16\xfe\xfd" + bytes(60), 19) is None  # truncated
