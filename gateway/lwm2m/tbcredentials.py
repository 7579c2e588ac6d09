"""ThingsBoard's LwM2M device credentials JSON, parsed and validated (pure code: text in, values out).

ThingsBoard keeps an LwM2M device's credentials as a JSON text (``LwM2MDeviceCredentials``)::

    {"client": {"securityConfigClientMode": "PSK", "endpoint": "dev-1", "identity": "dev-1", "key": "<hex>"},
     "bootstrap": {"bootstrapServer": {"securityMode": "PSK", "clientPublicKeyOrId": "dev-1",
                                       "clientSecretKey": "<hex>"},
                   "lwm2mServer": {"securityMode": "PSK", ...}}}

:func:`parse_credentials` accepts that object, the same text as a JSON *string* (ThingsBoard stores it
that way), or a whole ``DeviceCredentials`` envelope whose ``credentialsValue`` holds the string. Rules,
as ThingsBoard validates them (shared/fixtures/thingsboard/README.md, part b):

* ``client.securityConfigClientMode``: ``NO_SEC``, ``PSK``, ``RPK`` or ``X509``;
* ``client.endpoint``: required, not blank, at most :data:`MAX_ENDPOINT_BYTES` bytes of UTF-8;
* PSK: ``identity`` UTF-8, 1-128 bytes (RFC 7925), not ``"NO_SEC"``; ``key`` hex, 32, 64 or 128
  characters (16, 32 or 64 bytes);
* RPK: ``key`` base64 of the DER SubjectPublicKeyInfo of an EC P-256 key (PEM armour and newlines are
  stripped first); kept in its uncompressed form, the one DTLS clients send;
* X509: ``cert`` base64 of a DER X.509 certificate with an EC key, optional. With a certificate the
  device must present exactly that one; without, any certificate the trust store accepts whose CN
  (or a subjectAltName) is the endpoint name.

``decoded`` (added by ThingsBoard when it re-serialises credentials) and a null ``key`` are ignored:
``decoded`` is never a second key. Unknown keys inside ``client`` and the bootstrap parts are
ignored, as ThingsBoard does; an unknown key at the top level is an error (ThingsBoard refuses it too).
``bootstrap`` is optional here (the gateway's RPC takes ``{"client": ...}`` alone) and parsed when
present: the bootstrap server writes its values into the device's Security object.

Every problem raises :class:`CredentialsFormatError`, whose ``field`` names the JSON key path
(``client.key``). Messages never contain key material: they give lengths and kinds, not values.

>>> creds = parse_credentials('{"client": {"securityConfigClientMode": "PSK", "endpoint": "dev-1", '
...                           '"identity": "dev-1-id", "key": "000102030405060708090a0b0c0d0e0f"}}')
>>> creds.client.endpoint, creds.client.mode.value, creds.credentials_id
('dev-1', 'PSK', 'dev-1-id')
>>> creds.client
PskClient(endpoint='dev-1', identity=b'dev-1-id', key=<16 bytes>)
>>> try:
...     parse_credentials({"client": {"securityConfigClientMode": "PSK", "endpoint": "e", "key": "xy"}})
... except CredentialsFormatError as exc:
...     print(exc.field, "|", exc.problem)
client.identity | expected a PSK identity (text), got nothing
"""

from __future__ import annotations

import base64
import binascii
import calendar
import enum
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

MAX_ENDPOINT_BYTES: Final = 252
"""The longest endpoint name: ``ep=<name>`` must fit one CoAP Uri-Query option (255 bytes)."""

MAX_PSK_IDENTITY_BYTES: Final = 128
"""RFC 7925 4.2: clients and servers support PSK identities of up to 128 bytes."""

TB_PSK_KEY_BYTES: Final = (16, 32, 64)
"""Key sizes ThingsBoard accepts for PSK (32, 64 or 128 hex digits)."""

NO_SEC_IDENTITY: Final = "NO_SEC"
"""A PSK identity ThingsBoard refuses (it is its NoSec marker)."""


class CredentialsFormatError(ValueError):
    """Credentials that cannot be used; ``field`` is the JSON key path (``client.key``), ``problem``
    what is wrong. Never carries key material."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class SecurityMode(enum.StrEnum):
    """An LwM2M security mode, spelled as ThingsBoard spells it."""

    PSK = "PSK"
    RPK = "RPK"
    X509 = "X509"
    NO_SEC = "NO_SEC"

    @property
    def security_object_value(self) -> int:
        """The value of Security object resource /0/x/2 (LwM2M: 0 PSK, 1 RPK, 2 Certificate, 3 NoSec)."""
        return _SECURITY_OBJECT_VALUE[self]

    @classmethod
    def parse(cls, value: object, where: str) -> SecurityMode:
        """``value`` as a mode (case-sensitive, as Jackson reads enums); CredentialsFormatError otherwise."""
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        known = ", ".join(m.value for m in cls)
        raise CredentialsFormatError(where, f"expected one of {known}, got {_kind(value)}")


_SECURITY_OBJECT_VALUE: Final = {SecurityMode.PSK: 0, SecurityMode.RPK: 1, SecurityMode.X509: 2, SecurityMode.NO_SEC: 3}


# --- the values ---------------------------------------------------------------------------------------


def _secret_repr(value: bytes | None) -> str:
    return "None" if value is None else f"<{len(value)} bytes>"


@dataclass(frozen=True, slots=True)
class NoSecClient:
    endpoint: str

    @property
    def mode(self) -> SecurityMode:
        return SecurityMode.NO_SEC


@dataclass(frozen=True, slots=True)
class PskClient:
    """``identity`` as the device sends it in the DTLS handshake; ``key`` the pre-shared key (raw)."""

    endpoint: str
    identity: bytes
    key: bytes = field(repr=False)

    @property
    def mode(self) -> SecurityMode:
        return SecurityMode.PSK

    def __repr__(self) -> str:
        return f"PskClient(endpoint={self.endpoint!r}, identity={self.identity!r}, key={_secret_repr(self.key)})"


@dataclass(frozen=True, slots=True)
class RpkClient:
    """``public_key``: the device's DER SubjectPublicKeyInfo (secp256r1, uncompressed point)."""

    endpoint: str
    public_key: bytes

    @property
    def mode(self) -> SecurityMode:
        return SecurityMode.RPK

    def __repr__(self) -> str:
        fingerprint = hashlib.sha256(self.public_key).hexdigest()[:16]
        return f"RpkClient(endpoint={self.endpoint!r}, public_key=<sha256:{fingerprint}>)"


@dataclass(frozen=True, slots=True)
class X509Client:
    """``cert``: the DER certificate the device must present, or None (any certificate the trust store
    accepts whose CN or subjectAltName is the endpoint name)."""

    endpoint: str
    cert: bytes | None = None

    @property
    def mode(self) -> SecurityMode:
        return SecurityMode.X509

    def __repr__(self) -> str:
        cert = "None" if self.cert is None else f"<certificate sha256:{hashlib.sha256(self.cert).hexdigest()[:16]}>"
        return f"X509Client(endpoint={self.endpoint!r}, cert={cert})"


ClientCredential: TypeAlias = NoSecClient | PskClient | RpkClient | X509Client


@dataclass(frozen=True, slots=True)
class BootstrapServerCredential:
    """What ThingsBoard's bootstrap server writes into the device's Security object for one server.

    ``public_key_or_id`` (/0/x/3): the PSK identity (UTF-8 bytes), the device's SubjectPublicKeyInfo
    (RPK) or its certificate (X509), DER; ``secret_key`` (/0/x/5): the PSK key (raw) or the device's
    PKCS#8 private key (DER). Both None for NoSec.
    """

    mode: SecurityMode
    public_key_or_id: bytes | None = None
    secret_key: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shown = repr(self.public_key_or_id) if self.mode is SecurityMode.PSK else _secret_repr(self.public_key_or_id)
        return (
            f"BootstrapServerCredential(mode={self.mode.value}, public_key_or_id={shown}, "
            f"secret_key={_secret_repr(self.secret_key)})"
        )


@dataclass(frozen=True, slots=True)
class BootstrapCredentials:
    """``bootstrap``: the device's credentials for the bootstrap server and for the LwM2M server."""

    bootstrap_server: BootstrapServerCredential
    lwm2m_server: BootstrapServerCredential


@dataclass(frozen=True, slots=True)
class LwM2mDeviceCredentials:
    """One device's ``LwM2MDeviceCredentials``: the client part and (when given) the bootstrap part."""

    client: ClientCredential
    bootstrap: BootstrapCredentials | None = None

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    @property
    def credentials_id(self) -> str:
        """ThingsBoard's ``credentialsId`` for these credentials: the PSK identity; for X509 with a
        certificate the SHA3-256 hex of its base64 text; otherwise the endpoint."""
        c = self.client
        if isinstance(c, PskClient):
            return c.identity.decode()
        if isinstance(c, X509Client) and c.cert is not None:
            return hashlib.sha3_256(base64.b64encode(c.cert)).hexdigest()
        return c.endpoint


# --- parsing ---------------------------------------------------------------------------------------------

_TOP_LEVEL: Final = frozenset({"client", "bootstrap"})
_ENVELOPE_TYPE: Final = "LWM2M_CREDENTIALS"
_MAX_STRING_NESTING: Final = 2  # a JSON string holding JSON holding ... the object


def parse_credentials(data: str | bytes | Mapping[str, Any]) -> LwM2mDeviceCredentials:
    """Parse ThingsBoard LwM2M credentials (see the module docstring for what is accepted).

    ``data`` is the decoded JSON object, its text, a JSON string holding that text, or a
    ``DeviceCredentials`` envelope (``credentialsType``/``credentialsValue``) in any of these forms.
    Raises :class:`CredentialsFormatError`.
    """
    obj = _as_object(data, "")
    if "credentialsValue" in obj:
        kind = obj.get("credentialsType", _ENVELOPE_TYPE)
        if kind != _ENVELOPE_TYPE:
            raise CredentialsFormatError("credentialsType", f"expected {_ENVELOPE_TYPE!r}, got {_kind(kind)}")
        obj = _as_object(obj["credentialsValue"], "credentialsValue")
    unknown = sorted(set(obj) - _TOP_LEVEL)
    if unknown:
        raise CredentialsFormatError(unknown[0], "unknown key (LwM2M credentials have only 'client' and 'bootstrap')")
    if "client" not in obj:
        raise CredentialsFormatError("client", "missing (the LwM2M client credentials must be given)")
    client = parse_client(obj["client"])
    bootstrap = None
    if obj.get("bootstrap") is not None:
        bootstrap = parse_bootstrap(obj["bootstrap"])
    return LwM2mDeviceCredentials(client, bootstrap)


def as_json_object(data: object, where: str = "") -> dict[str, Any]:
    """``data`` as a JSON object: a mapping, JSON text, or JSON text inside (at most two) JSON strings."""
    return _as_object(data, where)


def _as_object(data: object, where: str) -> dict[str, Any]:
    for _ in range(_MAX_STRING_NESTING + 2):  # the text, the strings around it, then the object
        if isinstance(data, bytes | bytearray):
            try:
                data = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise CredentialsFormatError(where, "not UTF-8 text") from None
        if isinstance(data, Mapping):
            return dict(data)
        if not isinstance(data, str):
            raise CredentialsFormatError(where, f"expected a JSON object, got {_kind(data)}")
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise CredentialsFormatError(where, f"not valid JSON ({_json_problem(exc)})") from None
    raise CredentialsFormatError(where, "expected a JSON object, got JSON text nested in strings too deeply")


def _json_problem(exc: Exception) -> str:
    # json's message quotes no input, only positions: safe to show
    return str(exc).split(":")[0] if isinstance(exc, json.JSONDecodeError) else "nested too deeply"


def parse_client(obj: object, where: str = "client") -> ClientCredential:
    """The ``client`` part alone; CredentialsFormatError names ``where.<key>``."""
    if not isinstance(obj, Mapping):
        raise CredentialsFormatError(where, f"expected a JSON object, got {_kind(obj)}")
    mode = SecurityMode.parse(obj.get("securityConfigClientMode"), f"{where}.securityConfigClientMode")
    endpoint = check_endpoint(obj.get("endpoint"), f"{where}.endpoint")
    match mode:
        case SecurityMode.NO_SEC:
            return NoSecClient(endpoint)
        case SecurityMode.PSK:
            identity = check_psk_identity(obj.get("identity"), f"{where}.identity")
            key = parse_tb_psk_key(obj.get("key"), f"{where}.key")
            return PskClient(endpoint, identity, key)
        case SecurityMode.RPK:
            return RpkClient(endpoint, parse_public_key_base64(obj.get("key"), f"{where}.key"))
        case SecurityMode.X509:
            cert = obj.get("cert")
            if cert is None or (isinstance(cert, str) and not cert.strip()):
                return X509Client(endpoint, None)
            der = parse_der_base64(cert, f"{where}.cert", "CERTIFICATE")
            parse_certificate(der, f"{where}.cert", require_ec=True)
            return X509Client(endpoint, der)


def parse_bootstrap(obj: object, where: str = "bootstrap") -> BootstrapCredentials:
    """The ``bootstrap`` part: ``bootstrapServer`` and ``lwm2mServer``, both required."""
    if not isinstance(obj, Mapping):
        raise CredentialsFormatError(where, f"expected a JSON object, got {_kind(obj)}")
    parts = []
    for key in ("bootstrapServer", "lwm2mServer"):
        if obj.get(key) is None:
            raise CredentialsFormatError(f"{where}.{key}", "missing (both bootstrapServer and lwm2mServer are needed)")
        parts.append(_bootstrap_server(obj[key], f"{where}.{key}"))
    return BootstrapCredentials(parts[0], parts[1])


def _bootstrap_server(obj: object, where: str) -> BootstrapServerCredential:
    if not isinstance(obj, Mapping):
        raise CredentialsFormatError(where, f"expected a JSON object, got {_kind(obj)}")
    mode = SecurityMode.parse(obj.get("securityMode"), f"{where}.securityMode")
    pub, sec = obj.get("clientPublicKeyOrId"), obj.get("clientSecretKey")
    match mode:
        case SecurityMode.NO_SEC:
            return BootstrapServerCredential(mode)
        case SecurityMode.PSK:
            identity = check_psk_identity(pub, f"{where}.clientPublicKeyOrId")
            return BootstrapServerCredential(mode, identity, parse_tb_psk_key(sec, f"{where}.clientSecretKey"))
        case SecurityMode.RPK:
            public = parse_public_key_base64(pub, f"{where}.clientPublicKeyOrId")
        case SecurityMode.X509:
            public = parse_der_base64(pub, f"{where}.clientPublicKeyOrId", "CERTIFICATE")
            parse_certificate(public, f"{where}.clientPublicKeyOrId", require_ec=True)
    private = parse_der_base64(sec, f"{where}.clientSecretKey", "PRIVATE KEY", "EC PRIVATE KEY")
    check_ec_pkcs8(private, f"{where}.clientSecretKey")
    return BootstrapServerCredential(mode, public, private)


def bootstrap_to_json(bootstrap: BootstrapCredentials) -> dict[str, Any]:
    """The ``bootstrap`` object in ThingsBoard's encodings (:func:`parse_bootstrap` reads it back).
    It holds secrets: store it like a key, never log it."""

    def one(c: BootstrapServerCredential) -> dict[str, Any]:
        out: dict[str, Any] = {"securityMode": c.mode.value}
        if c.mode is SecurityMode.PSK and c.public_key_or_id is not None and c.secret_key is not None:
            out["clientPublicKeyOrId"] = c.public_key_or_id.decode("utf-8", "surrogatepass")
            out["clientSecretKey"] = c.secret_key.hex()
        elif c.public_key_or_id is not None and c.secret_key is not None:
            out["clientPublicKeyOrId"] = base64.b64encode(c.public_key_or_id).decode()
            out["clientSecretKey"] = base64.b64encode(c.secret_key).decode()
        return out

    return {"bootstrapServer": one(bootstrap.bootstrap_server), "lwm2mServer": one(bootstrap.lwm2m_server)}


# --- field rules (shared with the configuration file and the CLI) ------------------------------------------


def check_endpoint(value: object, where: str = "endpoint") -> str:
    """An endpoint name: a non-blank string of at most :data:`MAX_ENDPOINT_BYTES` bytes of UTF-8."""
    if not isinstance(value, str) or not value.strip():
        raise CredentialsFormatError(where, f"expected a non-empty endpoint name, got {_kind(value)}")
    if len(value) * 4 > MAX_ENDPOINT_BYTES:  # (short names cannot be too long: skip the encoding)
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_ENDPOINT_BYTES:
            raise CredentialsFormatError(where, f"{size} bytes long, at most {MAX_ENDPOINT_BYTES} (one CoAP Uri-Query)")
    if _CONTROL.search(value):
        raise CredentialsFormatError(where, "contains control characters")
    return value


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def check_psk_identity(value: object, where: str = "identity") -> bytes:
    """A PSK identity given as text: 1-128 bytes of UTF-8, not ``"NO_SEC"``; returned as bytes."""
    if not isinstance(value, str) or not value:
        raise CredentialsFormatError(where, f"expected a PSK identity (text), got {_kind(value)}")
    if value == NO_SEC_IDENTITY:
        raise CredentialsFormatError(where, f"{NO_SEC_IDENTITY!r} is not a usable PSK identity")
    identity = value.encode("utf-8", "surrogatepass")
    check_psk_identity_bytes(identity, where)
    return identity


def check_psk_identity_bytes(identity: bytes, where: str = "identity") -> bytes:
    if not 1 <= len(identity) <= MAX_PSK_IDENTITY_BYTES:
        raise CredentialsFormatError(
            where, f"a PSK identity is 1 to {MAX_PSK_IDENTITY_BYTES} bytes (RFC 7925), got {len(identity)}"
        )
    return identity


_HEX: Final = re.compile(r"[0-9a-fA-F]*")


def parse_tb_psk_key(value: object, where: str = "key") -> bytes:
    """A PSK key as ThingsBoard takes it: hex, 32, 64 or 128 digits."""
    if not isinstance(value, str) or not value:
        raise CredentialsFormatError(where, f"expected the PSK key in hex, got {_kind(value)}")
    text = value.strip()
    if not _HEX.fullmatch(text):
        raise CredentialsFormatError(
            where, f"expected hex (32, 64 or 128 hex digits), got {len(text)} characters that are not hex"
        )
    if len(text) not in tuple(2 * n for n in TB_PSK_KEY_BYTES):
        raise CredentialsFormatError(where, f"expected 32, 64 or 128 hex digits (16, 32 or 64 bytes), got {len(text)}")
    return bytes.fromhex(text)


_PEM: Final = re.compile(r"-----(BEGIN|END) ([A-Z0-9 ]+)-----")
_B64_ALPHABET: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def parse_der_base64(value: object, where: str, *pem_labels: str) -> bytes:
    """DER bytes from base64 text; PEM armour (of one of ``pem_labels``), spaces and newlines are
    stripped first, as ThingsBoard does."""
    if not isinstance(value, str) or not value.strip():
        raise CredentialsFormatError(where, f"expected base64 DER, got {_kind(value)}")
    text = value
    for m in _PEM.finditer(value):
        if pem_labels and m.group(2) not in pem_labels:
            raise CredentialsFormatError(where, f"a PEM {m.group(2)!r} block, expected {' or '.join(pem_labels)}")
    text = _PEM.sub("", text)
    text = "".join(text.split())
    if not _B64_ALPHABET.fullmatch(text) or len(text) % 4 == 1:
        raise CredentialsFormatError(where, f"not base64 ({len(text)} characters)")
    try:
        der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CredentialsFormatError(where, f"not base64 ({len(text)} characters)") from None
    if not der:
        raise CredentialsFormatError(where, "empty after base64 decoding")
    return der


def parse_public_key_base64(value: object, where: str) -> bytes:
    """An EC P-256 SubjectPublicKeyInfo from base64 DER (or PEM), in the uncompressed form."""
    der = parse_der_base64(value, where, "PUBLIC KEY")
    try:
        return canonical_p256_spki(der)
    except ValueError as exc:
        raise CredentialsFormatError(where, str(exc)) from None


# --- DER: just enough to read SubjectPublicKeyInfo, certificates and PKCS#8 ---------------------------------

_SEQUENCE, _SET, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID, _BOOLEAN = 0x30, 0x31, 0x02, 0x03, 0x04, 0x06, 0x01
_OID_EC_PUBLIC_KEY: Final = "1.2.840.10045.2.1"
_OID_P256: Final = "1.2.840.10045.3.1.7"
_OID_CN: Final = "2.5.4.3"
_OID_SAN: Final = "2.5.29.17"
_CURVE_NAMES: Final = {"1.2.840.10045.3.1.7": "P-256", "1.3.132.0.34": "P-384", "1.3.132.0.35": "P-521"}
_KEY_NAMES: Final = {
    "1.2.840.113549.1.1.1": "an RSA key",
    "1.3.101.112": "an Ed25519 key",
    "1.3.101.110": "an X25519 key",
}


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``; ValueError if malformed."""
    if pos + 2 > end:
        raise ValueError("truncated DER")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("unsupported DER tag")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        if length < 0x80 or buf[pos] == 0:
            raise ValueError("non-minimal DER length")
        pos += n
    if pos + length > end:
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _expect(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    t, start, stop = _tlv(buf, pos, end)
    if t != tag:
        raise ValueError(f"malformed {what}")
    return start, stop


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        t, s, e = _tlv(buf, pos, end)
        out.append((t, s, e))
        pos = e
    return out


def _oid(raw: bytes) -> str:
    if not raw or raw[-1] & 0x80:
        raise ValueError("malformed object identifier")
    parts: list[int] = []
    value = 0
    for b in raw:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    first = min(parts[0] // 40, 2)
    return ".".join(str(p) for p in [first, parts[0] - 40 * first, *parts[1:]])


def _algorithm(buf: bytes, start: int, end: int) -> tuple[str, str | None]:
    """(algorithm OID, parameter OID or None) of an AlgorithmIdentifier's content."""
    kids = _children(buf, start, end)
    if not kids or kids[0][0] != _OID:
        raise ValueError("malformed algorithm identifier")
    alg = _oid(buf[kids[0][1] : kids[0][2]])
    param = _oid(buf[kids[1][1] : kids[1][2]]) if len(kids) > 1 and kids[1][0] == _OID else None
    return alg, param


# secp256r1 (SEC 2 / FIPS 186-4)
_P: Final = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_B: Final = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_P256_SPKI_PREFIX: Final = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")


def _on_p256(x: int, y: int) -> bool:
    return x < _P and y < _P and (y * y - (x * x * x - 3 * x + _B)) % _P == 0


def canonical_p256_spki(der: bytes) -> bytes:
    """The 91-byte DER SubjectPublicKeyInfo (uncompressed point) of a secp256r1 public key given as a
    SubjectPublicKeyInfo in DER, with the point compressed or not. ValueError says what else it is."""
    if len(der) == 91 and der.startswith(_P256_SPKI_PREFIX):
        x, y = int.from_bytes(der[27:59], "big"), int.from_bytes(der[59:], "big")
        if not _on_p256(x, y):
            raise ValueError("the public key is not a point on the P-256 curve")
        return der
    start, end = _expect(der, 0, len(der), _SEQUENCE, "SubjectPublicKeyInfo")
    if end != len(der):
        raise ValueError("trailing bytes after the SubjectPublicKeyInfo")
    kids = _children(der, start, end)
    if len(kids) != 2 or kids[0][0] != _SEQUENCE or kids[1][0] != _BIT_STRING:
        raise ValueError("malformed SubjectPublicKeyInfo")
    alg, curve = _algorithm(der, kids[0][1], kids[0][2])
    if alg != _OID_EC_PUBLIC_KEY:
        raise ValueError(f"{_KEY_NAMES.get(alg, f'a key of algorithm {alg}')}, expected an EC P-256 key")
    if curve != _OID_P256:
        name = _CURVE_NAMES.get(curve or "", f"curve {curve}")
        raise ValueError(f"an EC key on {name}, expected P-256 (secp256r1)")
    bits = der[kids[1][1] : kids[1][2]]
    if len(bits) < 2 or bits[0] != 0:
        raise ValueError("malformed public key bits")
    point = bits[1:]
    if len(point) == 65 and point[0] == 4:
        x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
    elif len(point) == 33 and point[0] in (2, 3):
        x = int.from_bytes(point[1:], "big")
        rhs = (x * x * x - 3 * x + _B) % _P
        y = pow(rhs, (_P + 1) // 4, _P)  # p = 3 (mod 4)
        if y & 1 != point[0] & 1:
            y = _P - y
    else:
        raise ValueError("malformed P-256 point")
    if not _on_p256(x, y):
        raise ValueError("the public key is not a point on the P-256 curve")
    return _P256_SPKI_PREFIX + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def p256_spki_from_xy(x: bytes, y: bytes) -> bytes:
    """The SubjectPublicKeyInfo of a P-256 key given as raw x and y (32 bytes each); ValueError if the
    point is not on the curve."""
    if len(x) != 32 or len(y) != 32:
        raise ValueError("a P-256 coordinate is 32 bytes")
    return canonical_p256_spki(_P256_SPKI_PREFIX + x + y)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the gateway reads from a certificate: subject CN, subjectAltNames (DNS, e-mail, URI, IP as
    text), validity (epoch seconds) and the public key's algorithm (``EC P-256``, ``EC P-384``, ...)."""

    common_name: str | None
    sans: tuple[str, ...]
    not_before: float
    not_after: float
    key_algorithm: str

    def names(self) -> tuple[str, ...]:
        """The names an endpoint may be bound by: the CN first, then the subjectAltNames."""
        return ((self.common_name,) if self.common_name else ()) + self.sans


def parse_certificate(der: bytes, where: str = "cert", *, require_ec: bool = False) -> CertificateInfo:
    """Read a DER X.509 certificate; CredentialsFormatError if it is not one (or, with
    ``require_ec``, if its key is not an EC key, as ThingsBoard requires)."""
    try:
        info = _certificate(der)
    except (ValueError, IndexError) as exc:
        raise CredentialsFormatError(where, f"not a DER X.509 certificate ({exc})") from None
    if require_ec and not info.key_algorithm.startswith("EC"):
        raise CredentialsFormatError(where, f"the certificate holds {info.key_algorithm}, expected an EC key")
    return info


def _certificate(der: bytes) -> CertificateInfo:
    start, end = _expect(der, 0, len(der), _SEQUENCE, "certificate")
    if end != len(der):
        raise ValueError("trailing bytes after the certificate")
    outer = _children(der, start, end)
    if len(outer) != 3 or outer[0][0] != _SEQUENCE:
        raise ValueError("malformed certificate")
    tbs = _children(der, outer[0][1], outer[0][2])
    i = 1 if tbs and tbs[0][0] == 0xA0 else 0  # [0] version
    if len(tbs) < i + 6 or tbs[i][0] != _INTEGER:
        raise ValueError("malformed TBSCertificate")
    _sig, _issuer, validity, subject, spki = tbs[i + 1 : i + 6]
    if validity[0] != _SEQUENCE or subject[0] != _SEQUENCE or spki[0] != _SEQUENCE:
        raise ValueError("malformed TBSCertificate")
    times = _children(der, validity[1], validity[2])
    if len(times) != 2:
        raise ValueError("malformed validity")
    not_before, not_after = (_time(t, der[s:e]) for t, s, e in times)
    cn = _common_name(der, subject[1], subject[2])
    spki_kids = _children(der, spki[1], spki[2])
    if not spki_kids or spki_kids[0][0] != _SEQUENCE:
        raise ValueError("malformed SubjectPublicKeyInfo")
    alg, param = _algorithm(der, spki_kids[0][1], spki_kids[0][2])
    key_alg = (
        f"EC {_CURVE_NAMES.get(param or '', param or '?')}" if alg == _OID_EC_PUBLIC_KEY else _KEY_NAMES.get(alg, alg)
    )
    sans: tuple[str, ...] = ()
    for t, s, e in tbs[i + 6 :]:
        if t == 0xA3:  # [3] extensions
            sans = _subject_alt_names(der, s, e)
    return CertificateInfo(cn, sans, not_before, not_after, key_alg)


def _time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii")
    if tag == 0x17 and len(text) == 13 and text.endswith("Z"):  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (tag == 0x18 and len(text) == 15 and text.endswith("Z")):  # GeneralizedTime
        raise ValueError("malformed validity time")
    if not text[:14].isdigit():
        raise ValueError("malformed validity time")
    y, mo, d, h, mi, s = (int(text[a:b]) for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)))
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
        raise ValueError("malformed validity time")
    return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


_STRING_CODECS: Final = {  # UTF8String, PrintableString, IA5String, T61String, BMPString, UniversalString
    0x0C: "utf-8",
    0x13: "ascii",
    0x16: "ascii",
    0x14: "latin-1",
    0x1E: "utf-16-be",
    0x1C: "utf-32-be",
}


def _common_name(der: bytes, start: int, end: int) -> str | None:
    for t, s, e in _children(der, start, end):
        if t != _SET:
            raise ValueError("malformed name")
        for t2, s2, e2 in _children(der, s, e):
            if t2 != _SEQUENCE:
                raise ValueError("malformed name")
            kids = _children(der, s2, e2)
            if len(kids) == 2 and kids[0][0] == _OID and _oid(der[kids[0][1] : kids[0][2]]) == _OID_CN:
                codec = _STRING_CODECS.get(kids[1][0])
                if codec is None:
                    raise ValueError("unsupported string type in the CN")
                return der[kids[1][1] : kids[1][2]].decode(codec, errors="replace")
    return None


def _subject_alt_names(der: bytes, start: int, end: int) -> tuple[str, ...]:
    seq_start, seq_end = _expect(der, start, end, _SEQUENCE, "extensions")
    for t, s, e in _children(der, seq_start, seq_end):
        if t != _SEQUENCE:
            raise ValueError("malformed extension")
        kids = _children(der, s, e)
        if not kids or kids[0][0] != _OID or _oid(der[kids[0][1] : kids[0][2]]) != _OID_SAN:
            continue
        value = kids[-1]
        if value[0] != _OCTET_STRING:
            raise ValueError("malformed subjectAltName")
        names_start, names_end = _expect(der, value[1], value[2], _SEQUENCE, "subjectAltName")
        names: list[str] = []
        for nt, ns, ne in _children(der, names_start, names_end):
            raw = der[ns:ne]
            if nt in (0x81, 0x82, 0x86):  # rfc822Name, dNSName, uniformResourceIdentifier (IA5String)
                names.append(raw.decode("ascii", errors="replace"))
            elif nt == 0x87 and len(raw) in (4, 16):  # iPAddress
                names.append(str(ipaddress.ip_address(raw)))
        return tuple(names)
    return ()


def check_ec_pkcs8(der: bytes, where: str) -> None:
    """That ``der`` is a PKCS#8 PrivateKeyInfo holding an EC key (as ThingsBoard requires)."""
    try:
        start, end = _expect(der, 0, len(der), _SEQUENCE, "PrivateKeyInfo")
        kids = _children(der, start, end)
        if end != len(der) or len(kids) < 3 or kids[0][0] != _INTEGER or kids[1][0] != _SEQUENCE:
            raise ValueError("malformed PrivateKeyInfo")
        if kids[2][0] != _OCTET_STRING:
            raise ValueError("malformed PrivateKeyInfo")
        alg, _ = _algorithm(der, kids[1][1], kids[1][2])
    except (ValueError, IndexError) as exc:
        raise CredentialsFormatError(where, f"not a DER PKCS#8 private key ({exc})") from None
    if alg != _OID_EC_PUBLIC_KEY:
        raise CredentialsFormatError(where, f"{_KEY_NAMES.get(alg, f'a key of algorithm {alg}')}, expected an EC key")


def _kind(value: object) -> str:
    """A value's kind for an error message, never its content (it may be a key)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else f"a string of {len(value)} characters"
    if isinstance(value, Mapping):
        return "a JSON object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


__all__ = [
    "MAX_ENDPOINT_BYTES",
    "MAX_PSK_IDENTITY_BYTES",
    "NO_SEC_IDENTITY",
    "TB_PSK_KEY_BYTES",
    "BootstrapCredentials",
    "BootstrapServerCredential",
    "CertificateInfo",
    "ClientCredential",
    "CredentialsFormatError",
    "LwM2mDeviceCredentials",
    "NoSecClient",
    "PskClient",
    "RpkClient",
    "SecurityMode",
    "X509Client",
    "as_json_object",
    "bootstrap_to_json",
    "canonical_p256_spki",
    "check_ec_pkcs8",
    "check_endpoint",
    "check_psk_identity",
    "check_psk_identity_bytes",
    "p256_spki_from_xy",
    "parse_bootstrap",
    "parse_certificate",
    "parse_client",
    "parse_credentials",
    "parse_der_base64",
    "parse_public_key_base64",
    "parse_tb_psk_key",
]
