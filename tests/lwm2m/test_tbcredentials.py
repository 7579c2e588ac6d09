"""ThingsBoard LwM2M credentials JSON: every fixture, every accepted wrapping, every rule, and fuzzing.

The fixtures are shared/fixtures/thingsboard/credentials-*.json (hand-written, fresh P-256 keys) and the
RPK example ThingsBoard's own source carries as a Java string constant.
"""

from __future__ import annotations

import base64
import contextlib
import doctest
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.lwm2m import tbcredentials
from gateway.lwm2m.tbcredentials import (
    BootstrapCredentials,
    CredentialsFormatError,
    NoSecClient,
    PskClient,
    RpkClient,
    SecurityMode,
    X509Client,
    bootstrap_to_json,
    canonical_p256_spki,
    p256_spki_from_xy,
    parse_bootstrap,
    parse_certificate,
    parse_credentials,
)

# copies of ../shared/fixtures/thingsboard, so that a clone runs the tests anywhere
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"  # copied from ../shared/fixtures

UPSTREAM_RPK = FIXTURES / "upstream-CREDENTIALS_VALUE_LVM2M_RPK_DESCRIPTION.json"
CREDENTIAL_FILES = [*sorted(FIXTURES.glob("credentials-*.json")), UPSTREAM_RPK]

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures/thingsboard not found")


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())  # type: ignore[no-any-return]


def psk(**client: Any) -> dict[str, Any]:
    base = {"securityConfigClientMode": "PSK", "endpoint": "dev-1", "identity": "dev-1-id", "key": "00" * 16}
    base.update(client)
    return {"client": {k: v for k, v in base.items() if v is not ...}}


def problem(data: Any) -> CredentialsFormatError:
    with pytest.raises(CredentialsFormatError) as exc:
        parse_credentials(data)
    return exc.value


# --- the fixtures --------------------------------------------------------------------------------------


def test_every_fixture_file_is_covered() -> None:
    names = {p.name for p in CREDENTIAL_FILES}
    assert {"credentials-nosec.json", "credentials-psk.json", "credentials-rpk.json", "credentials-x509.json"} <= names
    assert all(p.is_file() for p in CREDENTIAL_FILES)


@pytest.mark.parametrize("path", CREDENTIAL_FILES, ids=lambda p: p.name)
def test_fixture_parses_in_every_wrapping(path: Path) -> None:
    text = path.read_text()
    obj = json.loads(text)
    direct = parse_credentials(obj)
    envelope = {
        "deviceId": {"entityType": "DEVICE", "id": "7b3b2a10-0000-0000-0000-000000000000"},
        "credentialsType": "LWM2M_CREDENTIALS",
        "credentialsId": direct.credentials_id,
        "credentialsValue": text,  # a JSON text inside a JSON string, as ThingsBoard stores it
    }
    for wrapped in (
        text,
        text.encode(),
        json.dumps(text),  # the whole thing as a JSON string
        json.dumps(json.dumps(text)),  # ... twice
        envelope,
        json.dumps(envelope),
    ):
        assert parse_credentials(wrapped) == direct
    assert direct.bootstrap is not None
    assert direct.client.endpoint == obj["client"]["endpoint"]


def test_nosec_fixture() -> None:
    creds = parse_credentials(load("credentials-nosec.json"))
    assert creds.client == NoSecClient("urn:imei:356938035643801")
    assert creds.client.mode is SecurityMode.NO_SEC
    assert creds.credentials_id == "urn:imei:356938035643801"
    assert creds.bootstrap is not None
    assert creds.bootstrap.bootstrap_server.mode is SecurityMode.NO_SEC
    assert creds.bootstrap.lwm2m_server.public_key_or_id is None


def test_psk_fixture() -> None:
    obj = load("credentials-psk.json")
    creds = parse_credentials(obj)
    key = bytes.fromhex(obj["client"]["key"])
    assert creds.client == PskClient("urn:imei:356938035643802", b"urn:imei:356938035643802", key)
    assert creds.credentials_id == "urn:imei:356938035643802"  # the identity
    assert creds.bootstrap is not None
    for part in (creds.bootstrap.bootstrap_server, creds.bootstrap.lwm2m_server):
        assert part.mode is SecurityMode.PSK
        assert part.public_key_or_id == b"urn:imei:356938035643802"  # plain UTF-8, not base64
        assert part.secret_key == key


def test_rpk_fixture() -> None:
    obj = load("credentials-rpk.json")
    creds = parse_credentials(obj)
    spki = base64.b64decode(obj["client"]["key"])
    assert creds.client == RpkClient("urn:imei:356938035643803", spki)
    assert len(spki) == 91
    assert creds.credentials_id == "urn:imei:356938035643803"
    assert creds.bootstrap is not None
    assert creds.bootstrap.lwm2m_server.public_key_or_id == spki
    pkcs8 = base64.b64decode(obj["bootstrap"]["lwm2mServer"]["clientSecretKey"])
    assert creds.bootstrap.lwm2m_server.secret_key == pkcs8


def test_upstream_rpk_example() -> None:
    creds = parse_credentials(UPSTREAM_RPK.read_text())
    assert isinstance(creds.client, RpkClient)
    assert creds.client.endpoint == "LwRpk00000000"
    assert creds.bootstrap is not None and creds.bootstrap.bootstrap_server.mode is SecurityMode.RPK


def test_x509_fixture_and_its_certificate() -> None:
    obj = load("credentials-x509.json")
    creds = parse_credentials(obj)
    der = base64.b64decode(obj["client"]["cert"])
    assert creds.client == X509Client("urn:imei:356938035643809", der)
    # ThingsBoard's credentialsId: SHA3-256 hex of the one-line base64 certificate
    assert creds.credentials_id == hashlib.sha3_256(obj["client"]["cert"].encode()).hexdigest()
    info = parse_certificate(der)
    assert info.common_name == "urn:imei:356938035643809"
    assert info.key_algorithm == "EC P-256"
    assert info.not_before < info.not_after
    assert creds.bootstrap is not None and creds.bootstrap.lwm2m_server.public_key_or_id == der


def test_bootstrap_round_trips() -> None:
    for path in CREDENTIAL_FILES:
        creds = parse_credentials(path.read_text())
        assert creds.bootstrap is not None
        assert parse_bootstrap(json.loads(json.dumps(bootstrap_to_json(creds.bootstrap)))) == creds.bootstrap


def test_module_doctest() -> None:
    assert doctest.testmod(tbcredentials).failed == 0


# --- what ThingsBoard adds when it re-serialises -----------------------------------------------------------


def test_decoded_is_ignored_never_a_second_key() -> None:
    obj = load("credentials-psk.json")
    obj["client"]["decoded"] = base64.b64encode(b"\xff" * 32).decode()  # a different "key"
    creds = parse_credentials(obj)
    assert isinstance(creds.client, PskClient)
    assert creds.client.key == bytes.fromhex(obj["client"]["key"])
    rpk = load("credentials-rpk.json")
    rpk["client"]["decoded"] = "not even base64 !!"
    assert parse_credentials(rpk) == parse_credentials(load("credentials-rpk.json"))


def test_x509_with_null_key_and_decoded() -> None:
    obj = load("credentials-x509.json")
    obj["client"]["key"] = None
    obj["client"]["decoded"] = obj["client"]["cert"]
    assert parse_credentials(obj) == parse_credentials(load("credentials-x509.json"))


def test_x509_without_certificate_binds_by_name() -> None:
    for cert in (..., None, "", "  "):
        obj = {"client": {"securityConfigClientMode": "X509", "endpoint": "cam-1"}}
        if cert is not ...:
            obj["client"]["cert"] = cert
        creds = parse_credentials(obj)
        assert creds.client == X509Client("cam-1", None)
        assert creds.credentials_id == "cam-1"
        assert creds.bootstrap is None


def test_pem_armour_and_newlines_are_stripped() -> None:
    obj = load("credentials-x509.json")
    b64 = obj["client"]["cert"]
    lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    pem = f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"
    obj["client"]["cert"] = pem
    assert parse_credentials(obj) == parse_credentials(load("credentials-x509.json"))
    rpk = load("credentials-rpk.json")
    rpk["client"]["key"] = f"-----BEGIN PUBLIC KEY-----\n{rpk['client']['key']}\n-----END PUBLIC KEY-----"
    assert parse_credentials(rpk) == parse_credentials(load("credentials-rpk.json"))


def test_bootstrap_is_optional_but_complete_when_given() -> None:
    assert parse_credentials(psk()).bootstrap is None
    obj = psk()
    obj["bootstrap"] = {"bootstrapServer": {"securityMode": "NO_SEC"}}
    assert problem(obj).field == "bootstrap.lwm2mServer"
    obj["bootstrap"]["lwm2mServer"] = {"securityMode": "RPK", "clientPublicKeyOrId": "AAAA", "clientSecretKey": "x"}
    assert problem(obj).field == "bootstrap.lwm2mServer.clientPublicKeyOrId"


# --- the rules -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "field", "words"),
    [
        ({"key": "00" * 15}, "client.key", "got 30"),
        ({"key": "00" * 24}, "client.key", "got 48"),
        ({"key": "0" * 33}, "client.key", "got 33"),
        ({"key": "zz" * 16}, "client.key", "not hex"),
        ({"key": ...}, "client.key", "got nothing"),
        ({"key": 1234}, "client.key", "a number"),
        ({"identity": "NO_SEC"}, "client.identity", "'NO_SEC'"),
        ({"identity": ""}, "client.identity", "empty"),
        ({"identity": "é" * 65}, "client.identity", "got 130"),
        ({"endpoint": "  "}, "client.endpoint", "non-empty"),
        ({"endpoint": "e" * 253}, "client.endpoint", "253 bytes"),
        ({"endpoint": "a\nb"}, "client.endpoint", "control"),
        ({"securityConfigClientMode": "psk"}, "client.securityConfigClientMode", "NO_SEC"),
        ({"securityConfigClientMode": ...}, "client.securityConfigClientMode", "nothing"),
    ],
)
def test_psk_rules(client: dict[str, Any], field: str, words: str) -> None:
    exc = problem(psk(**client))
    assert exc.field == field
    assert words in exc.problem


def test_psk_accepted_shapes() -> None:
    for key_hex in ("AB" * 16, "ab" * 32, "0f" * 64):
        creds = parse_credentials(psk(key=key_hex))
        assert isinstance(creds.client, PskClient) and creds.client.key == bytes.fromhex(key_hex)
    long_id = "urn:imei:" + "x" * 119
    creds = parse_credentials(psk(identity=long_id, endpoint="e" * 252))
    assert isinstance(creds.client, PskClient) and len(creds.client.identity) == 128


def test_errors_never_show_key_material() -> None:
    secret = "a1b2c3d4e5f60718293a4b5c6d7e8f9"  # 31 hex digits: invalid, and must not be echoed
    for obj in (
        psk(key=secret),
        psk(key=secret + "q"),
        {"client": {"securityConfigClientMode": "RPK", "endpoint": "e", "key": secret}},
        {"client": {"securityConfigClientMode": "X509", "endpoint": "e", "cert": secret}},
    ):
        exc = problem(obj)
        assert secret not in str(exc) and secret[:8] not in str(exc)
    # and the values' reprs hide keys
    creds = parse_credentials(load("credentials-psk.json"))
    key_hex = load("credentials-psk.json")["client"]["key"]
    assert key_hex not in repr(creds) and repr(bytes.fromhex(key_hex)) not in repr(creds)
    x = parse_credentials(load("credentials-rpk.json"))
    assert load("credentials-rpk.json")["bootstrap"]["lwm2mServer"]["clientSecretKey"][:20] not in repr(x)


def test_unknown_top_level_key_and_wrong_envelope() -> None:
    obj = psk()
    obj["clinet"] = {}
    assert problem(obj).field == "clinet"
    assert problem({"bootstrap": {}}).field == "client"
    env = {"credentialsType": "ACCESS_TOKEN", "credentialsValue": json.dumps(psk())}
    assert problem(env).field == "credentialsType"
    assert problem({"credentialsValue": "{not json"}).field == "credentialsValue"
    assert "not valid JSON" in str(problem("{"))
    assert "JSON object" in str(problem("[1, 2]"))
    assert "JSON object" in str(problem(json.dumps(json.dumps(json.dumps(json.dumps(psk()))))))
    assert "UTF-8" in str(problem(b"\xff\xfe"))


def test_unknown_keys_inside_client_are_ignored() -> None:
    obj = psk()
    obj["client"]["somethingNew"] = [1, 2]
    assert parse_credentials(obj) == parse_credentials(psk())


# --- RPK keys --------------------------------------------------------------------------------------------------


def rpk(key: str) -> dict[str, Any]:
    return {"client": {"securityConfigClientMode": "RPK", "endpoint": "m-1", "key": key}}


def fixture_spki() -> bytes:
    return base64.b64decode(load("credentials-rpk.json")["client"]["key"])


def test_compressed_point_is_stored_uncompressed() -> None:
    spki = fixture_spki()
    x, y = spki[27:59], spki[59:]
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    compressed = prefix + bytes([2 + (y[-1] & 1)]) + x
    assert canonical_p256_spki(compressed) == spki
    creds = parse_credentials(rpk(base64.b64encode(compressed).decode()))
    assert isinstance(creds.client, RpkClient) and creds.client.public_key == spki
    assert p256_spki_from_xy(x, y) == spki


def test_points_off_the_curve_are_refused() -> None:
    spki = bytearray(fixture_spki())
    spki[-1] ^= 1
    exc = problem(rpk(base64.b64encode(bytes(spki)).decode()))
    assert exc.field == "client.key" and "not a point on the P-256 curve" in exc.problem
    with pytest.raises(ValueError, match="32 bytes"):
        p256_spki_from_xy(b"\0" * 31, b"\0" * 32)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
@pytest.mark.parametrize(
    ("genkey", "words"),
    [
        (["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"], "an RSA key"),
        (["ecparam", "-name", "secp384r1", "-genkey", "-noout"], "P-384"),
        (["genpkey", "-algorithm", "ED25519"], "Ed25519"),
    ],
)
def test_other_key_types_are_refused(tmp_path: Path, genkey: list[str], words: str) -> None:
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", *genkey, "-out", str(key)], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    exc = problem(rpk(base64.b64encode(der).decode()))
    assert exc.field == "client.key" and words in exc.problem


def test_garbage_public_keys() -> None:
    for key in ("", "!!!!", "QUJD", "A", base64.b64encode(b"\x30\x03\x02\x01\x00").decode()):
        assert problem(rpk(key)).field == "client.key"
    assert "PEM" in problem(rpk("-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----")).problem


# --- certificates --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ec.key", "-out", "ec.pem", "-days", "3", "-subj", "/O=Acme/CN=cam-1",
        "-addext", "subjectAltName=DNS:cam-1.example,URI:urn:dev:cam-1,IP:10.0.0.7,IP:2001:db8::1,email:a@b.c",
        "-outform", "PEM")  # fmt: skip
    run("req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", "rsa.key", "-out", "rsa.pem", "-days", "3",
        "-subj", "/CN=rsa-dev")  # fmt: skip
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes", "-keyout", "p384.key",
        "-out", "p384.pem", "-days", "3", "-subj", "/CN=p384-dev")  # fmt: skip
    run("req", "-x509", *ec, "-keyout", "nocn.key", "-out", "nocn.pem", "-days", "3", "-subj", "/O=No Name")
    run("req", "-x509", *ec, "-keyout", "utf8.key", "-out", "utf8.pem", "-days", "3", "-utf8", "-subj", "/CN=Gerät-ä")
    return d


def der_of(path: Path) -> bytes:
    command = ["openssl", "x509", "-in", str(path), "-outform", "DER"]
    return subprocess.run(command, check=True, capture_output=True).stdout


def test_certificate_names_agree_with_gnutls(made_certs: Path) -> None:
    from gateway.transport.dtls import _x509_names  # an independent reader (GnuTLS) to compare with

    for name in ("ec", "rsa", "p384", "nocn", "utf8"):
        der = der_of(made_certs / f"{name}.pem")
        info = parse_certificate(der)
        cn, sans, not_after = _x509_names(der)
        assert (info.common_name, info.sans, info.not_after) == (cn, sans, not_after), name
    info = parse_certificate(der_of(made_certs / "ec.pem"))
    assert info.common_name == "cam-1"
    assert info.sans == ("cam-1.example", "urn:dev:cam-1", "10.0.0.7", "2001:db8::1", "a@b.c")
    assert info.names()[0] == "cam-1"
    assert parse_certificate(der_of(made_certs / "utf8.pem")).common_name == "Gerät-ä"
    assert parse_certificate(der_of(made_certs / "nocn.pem")).common_name is None


def test_x509_key_type_rules(made_certs: Path) -> None:
    def x509(der: bytes) -> dict[str, Any]:
        return {"client": {"securityConfigClientMode": "X509", "endpoint": "d", "cert": base64.b64encode(der).decode()}}

    exc = problem(x509(der_of(made_certs / "rsa.pem")))
    assert exc.field == "client.cert" and "RSA" in exc.problem
    creds = parse_credentials(x509(der_of(made_certs / "p384.pem")))  # any EC key, as ThingsBoard
    assert isinstance(creds.client, X509Client)
    good = der_of(made_certs / "ec.pem")
    for bad in (good[:-1], good + b"\0", b"\x30\x00", good[:40]):
        assert problem(x509(bad)).field == "client.cert"


# --- fuzzing: anything parses or raises CredentialsFormatError ----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
field_values = (
    st.none()
    | st.text(max_size=200)
    | st.integers()
    | st.sampled_from(["NO_SEC", "PSK", "RPK", "X509", "00" * 16, "", fixture_spki().hex()])
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_any_json(value: Any) -> None:
    with contextlib.suppress(CredentialsFormatError):
        parse_credentials(value if isinstance(value, dict) else json.dumps(value))


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["NO_SEC", "PSK", "RPK", "X509", "x"]),
    st.dictionaries(st.sampled_from(["endpoint", "identity", "key", "cert", "decoded"]), field_values),
)
def test_fuzz_client_fields(mode: str, fields: dict[str, Any]) -> None:
    with contextlib.suppress(CredentialsFormatError):
        parse_credentials({"client": {"securityConfigClientMode": mode, **fields}})


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_der(data: st.DataObject) -> None:
    cert = base64.b64decode(load("credentials-x509.json")["client"]["cert"])
    for original, parse in ((cert, parse_certificate), (fixture_spki(), canonical_p256_spki)):
        buf = bytearray(original)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(buf)))
        for candidate in (bytes(buf), bytes(buf[:cut])):
            with contextlib.suppress(ValueError):  # CredentialsFormatError is a ValueError
                parse(candidate)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_der(raw: bytes) -> None:
    for parse in (parse_certificate, canonical_p256_spki):
        with contextlib.suppress(ValueError):
            parse(raw)  # type: ignore[operator]


def test_bootstrap_types() -> None:
    creds = parse_credentials(load("credentials-x509.json"))
    assert isinstance(creds.bootstrap, BootstrapCredentials)
    assert creds.bootstrap.bootstrap_server.mode.security_object_value == 2
    assert SecurityMode.NO_SEC.security_object_value == 3
