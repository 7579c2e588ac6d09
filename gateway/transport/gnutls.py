"""A thin ctypes binding to GnuTLS (``libgnutls.so.30``): only what the DTLS engine uses.

Every function used is declared here once with its ``argtypes`` and ``restype`` (without them
ctypes truncates 64-bit pointers). Opaque GnuTLS handles (sessions, credentials, priority caches,
certificates) are plain integers (``c_void_p`` values). Negative return codes become
:class:`GnuTLSError` through :func:`check`; the hot paths (handshake, record I/O) look at the codes
themselves.

Importing this module loads the library and checks that it is at least :data:`MIN_VERSION`
(``gnutls_psk_set_server_credentials_function2`` appeared in 3.6.13); anything older, or no
library at all, raises :class:`GnuTLSUnavailable` with what to install.

Caveats: ``gnutls_malloc`` and ``gnutls_free`` are exported *data* symbols (function pointers), not
functions; memory that GnuTLS takes ownership of (PSK keys handed back from the server callback)
must come from ``gnutls_malloc``, see :func:`malloc_copy`.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_size_t,
    c_ssize_t,
    c_uint,
    c_void_p,
)
from typing import Any

LIBRARY_NAME = "libgnutls.so.30"
MIN_VERSION = "3.6.13"


class GnuTLSUnavailable(ImportError):
    """libgnutls30 is missing or too old for the DTLS server."""


class GnuTLSError(Exception):
    """A negative GnuTLS return code: ``code`` (int), ``name`` (``GNUTLS_E_...``), ``message``."""

    def __init__(self, code: int, name: str, message: str, what: str = "") -> None:
        self.code = code
        self.name = name
        self.message = message
        self.what = what
        prefix = f"{what}: " if what else ""
        super().__init__(f"{prefix}{message} ({name}, {code})")


# --- constants (values from gnutls/gnutls.h, stable ABI) -------------------------------------------

# gnutls_init flags
SERVER = 1
CLIENT = 1 << 1
DATAGRAM = 1 << 2
NONBLOCK = 1 << 3
NO_SIGNAL = 1 << 6
NO_TICKETS = 1 << 10
ENABLE_RAWPK = 1 << 18

# error codes
E_SUCCESS = 0
E_UNSUPPORTED_VERSION_PACKET = -8
E_INVALID_SESSION = -10
E_FATAL_ALERT_RECEIVED = -12
E_UNEXPECTED_PACKET = -15
E_WARNING_ALERT_RECEIVED = -16
E_ERROR_IN_FINISHED_PACKET = -18
E_UNEXPECTED_HANDSHAKE_PACKET = -19
E_DECRYPTION_FAILED = -24
E_MEMORY_ERROR = -25
E_AGAIN = -28
E_KEYFILE_ERROR = -31
E_SRP_PWD_ERROR = E_KEYFILE_ERROR  # what an unknown PSK identity shows as (misleading name)
E_INSUFFICIENT_CREDENTIALS = -32
E_REHANDSHAKE = -37
E_GOT_APPLICATION_DATA = -38
E_CERTIFICATE_ERROR = -43
E_NO_CERTIFICATE_FOUND = -49
E_SHORT_MEMORY_BUFFER = -51
E_INTERRUPTED = -52
E_PUSH_ERROR = -53
E_PULL_ERROR = -54
E_REQUESTED_DATA_NOT_AVAILABLE = -56
E_NO_CIPHER_SUITES = -87
E_LARGE_PACKET = -7
E_PREMATURE_TERMINATION = -110
E_BAD_COOKIE = -214
E_TIMEDOUT = -319
E_NO_PRIORITIES_WERE_SET = -326
E_SESSION_EOF = -328
E_CERTIFICATE_VERIFICATION_ERROR = -348


class CredentialsType(enum.IntEnum):
    CERTIFICATE = 1
    ANON = 2
    SRP = 3
    PSK = 4


class CertificateType(enum.IntEnum):
    UNKNOWN = 0
    X509 = 1
    OPENPGP = 2
    RAWPK = 3


class CtypeTarget(enum.IntEnum):
    CLIENT = 0
    SERVER = 1
    OURS = 2
    PEERS = 3


class X509Format(enum.IntEnum):
    DER = 0
    PEM = 1


class CertificateRequest(enum.IntEnum):
    IGNORE = 0
    REQUEST = 1
    REQUIRE = 2


class CloseRequest(enum.IntEnum):
    RDWR = 0
    WR = 1


class AlertLevel(enum.IntEnum):
    WARNING = 1
    FATAL = 2


class Alert(enum.IntEnum):
    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INTERNAL_ERROR = 80
    UNKNOWN_PSK_IDENTITY = 115


class HandshakeType(enum.IntEnum):
    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class CertStatus(enum.IntFlag):
    """Verification status bits (``gnutls_certificate_status_t``)."""

    INVALID = 1 << 1
    REVOKED = 1 << 5
    SIGNER_NOT_FOUND = 1 << 6
    SIGNER_NOT_CA = 1 << 7
    INSECURE_ALGORITHM = 1 << 8
    NOT_ACTIVATED = 1 << 9
    EXPIRED = 1 << 10
    SIGNATURE_FAILURE = 1 << 11
    REVOCATION_DATA_SUPERSEDED = 1 << 12
    UNEXPECTED_OWNER = 1 << 14
    SIGNER_CONSTRAINTS_FAILURE = 1 << 16
    MISMATCH = 1 << 17
    PURPOSE_MISMATCH = 1 << 18
    MISSING_OCSP_STATUS = 1 << 19
    INVALID_OCSP_STATUS = 1 << 20
    UNKNOWN_CRIT_EXTENSIONS = 1 << 21


class SanType(enum.IntEnum):
    DNSNAME = 1
    RFC822NAME = 2
    URI = 3
    IPADDRESS = 4
    OTHERNAME = 5
    DN = 6


# gnutls_vdata_types_t
DT_KEY_PURPOSE_OID = 2
KP_TLS_WWW_CLIENT = b"1.3.6.1.5.5.7.3.2"
OID_X520_COMMON_NAME = b"2.5.4.3"
CRT_PRINT_ONELINE = 1
COOKIE_KEY_SIZE = 16
PSK_KEY_RAW = 0


# --- structures and callback types -----------------------------------------------------------------


class Datum(Structure):
    """``gnutls_datum_t``: a pointer and a length."""

    _fields_ = [("data", c_void_p), ("size", c_uint)]


class DtlsPrestate(Structure):
    """``gnutls_dtls_prestate_st``: carries sequence numbers from cookie_verify to the session."""

    _fields_ = [("record_seq", c_uint), ("hsk_read_seq", c_uint), ("hsk_write_seq", c_uint)]


class TypedVdata(Structure):
    """``gnutls_typed_vdata_st``: one extra verification input (a key purpose OID here)."""

    _fields_ = [("type", c_int), ("data", c_char_p), ("size", c_uint)]


#: ssize_t push(gnutls_transport_ptr_t, const void *data, size_t size)
PushFunc = CFUNCTYPE(c_ssize_t, c_void_p, c_void_p, c_size_t)
#: ssize_t pull(gnutls_transport_ptr_t, void *data, size_t size)
PullFunc = CFUNCTYPE(c_ssize_t, c_void_p, c_void_p, c_size_t)
#: int pull_timeout(gnutls_transport_ptr_t, unsigned int ms)
PullTimeoutFunc = CFUNCTYPE(c_int, c_void_p, c_uint)
#: int psk_server_credentials_function2(gnutls_session_t, const gnutls_datum_t *, gnutls_datum_t *)
PskServerFunc2 = CFUNCTYPE(c_int, c_void_p, POINTER(Datum), POINTER(Datum))
#: int certificate_verify_function(gnutls_session_t)
VerifyFunc = CFUNCTYPE(c_int, c_void_p)

_MallocFunc = CFUNCTYPE(c_void_p, c_size_t)
_FreeFunc = CFUNCTYPE(None, c_void_p)


# --- loading -----------------------------------------------------------------------------------------


def _load() -> ctypes.CDLL:
    try:
        return ctypes.CDLL(LIBRARY_NAME)
    except OSError as exc:
        raise GnuTLSUnavailable(
            f"cannot load {LIBRARY_NAME} ({exc}); install GnuTLS: apt-get install libgnutls30"
            " (libgnutls30t64 on Debian 13)"
        ) from exc


_lib = _load()
_P = c_void_p  # any opaque pointer


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


# library and errors
check_version: Callable[[bytes | None], bytes | None] = _fn("gnutls_check_version", c_char_p, c_char_p)
_strerror: Callable[[int], bytes | None] = _fn("gnutls_strerror", c_char_p, c_int)
_strerror_name: Callable[[int], bytes | None] = _fn("gnutls_strerror_name", c_char_p, c_int)
error_is_fatal: Callable[[int], int] = _fn("gnutls_error_is_fatal", c_int, c_int)
global_init: Callable[[], int] = _fn("gnutls_global_init", c_int)

_found = check_version(None)
if check_version(MIN_VERSION.encode()) is None:
    raise GnuTLSUnavailable(
        f"GnuTLS {(_found or b'?').decode()} is too old: the DTLS server needs >= {MIN_VERSION}"
        " (Debian 11+/Raspberry Pi OS bullseye+ ship it)"
    )
VERSION: str = (_found or b"").decode()

# priorities
priority_init: Callable[[Any, bytes, Any], int] = _fn(
    "gnutls_priority_init", c_int, POINTER(c_void_p), c_char_p, POINTER(c_char_p)
)
priority_deinit: Callable[[int], None] = _fn("gnutls_priority_deinit", None, _P)

# certificate credentials
certificate_allocate_credentials: Callable[[Any], int] = _fn(
    "gnutls_certificate_allocate_credentials", c_int, POINTER(c_void_p)
)
certificate_free_credentials: Callable[[int], None] = _fn("gnutls_certificate_free_credentials", None, _P)
certificate_set_x509_key_mem2: Callable[[int, Any, Any, int, bytes | None, int], int] = _fn(
    "gnutls_certificate_set_x509_key_mem2", c_int, _P, POINTER(Datum), POINTER(Datum), c_int, c_char_p, c_uint
)
certificate_set_x509_trust_mem: Callable[[int, Any, int], int] = _fn(
    "gnutls_certificate_set_x509_trust_mem", c_int, _P, POINTER(Datum), c_int
)
certificate_set_x509_trust_file: Callable[[int, bytes, int], int] = _fn(
    "gnutls_certificate_set_x509_trust_file", c_int, _P, c_char_p, c_int
)
certificate_set_x509_trust_dir: Callable[[int, bytes, int], int] = _fn(
    "gnutls_certificate_set_x509_trust_dir", c_int, _P, c_char_p, c_uint
)
certificate_set_rawpk_key_mem: Callable[[int, Any, Any, int, bytes | None, int, Any, int, int], int] = _fn(
    "gnutls_certificate_set_rawpk_key_mem",
    c_int,
    _P,
    POINTER(Datum),
    POINTER(Datum),
    c_int,
    c_char_p,
    c_uint,
    POINTER(c_char_p),
    c_uint,
    c_uint,
)
certificate_set_verify_function: Callable[[int, Any], None] = _fn(
    "gnutls_certificate_set_verify_function", None, _P, VerifyFunc
)
certificate_set_verify_flags: Callable[[int, int], None] = _fn("gnutls_certificate_set_verify_flags", None, _P, c_uint)

# PSK credentials
psk_allocate_server_credentials: Callable[[Any], int] = _fn(
    "gnutls_psk_allocate_server_credentials", c_int, POINTER(c_void_p)
)
psk_free_server_credentials: Callable[[int], None] = _fn("gnutls_psk_free_server_credentials", None, _P)
psk_set_server_credentials_function2: Callable[[int, Any], None] = _fn(
    "gnutls_psk_set_server_credentials_function2", None, _P, PskServerFunc2
)
psk_allocate_client_credentials: Callable[[Any], int] = _fn(
    "gnutls_psk_allocate_client_credentials", c_int, POINTER(c_void_p)
)
psk_free_client_credentials: Callable[[int], None] = _fn("gnutls_psk_free_client_credentials", None, _P)
psk_set_client_credentials2: Callable[[int, Any, Any, int], int] = _fn(
    "gnutls_psk_set_client_credentials2", c_int, _P, POINTER(Datum), POINTER(Datum), c_int
)

# sessions
init: Callable[[Any, int], int] = _fn("gnutls_init", c_int, POINTER(c_void_p), c_uint)
deinit: Callable[[int], None] = _fn("gnutls_deinit", None, _P)
priority_set: Callable[[int, int], int] = _fn("gnutls_priority_set", c_int, _P, _P)
credentials_set: Callable[[int, int, int], int] = _fn("gnutls_credentials_set", c_int, _P, c_int, _P)
certificate_server_set_request: Callable[[int, int], None] = _fn(
    "gnutls_certificate_server_set_request", None, _P, c_int
)
certificate_send_x509_rdn_sequence: Callable[[int, int], None] = _fn(
    "gnutls_certificate_send_x509_rdn_sequence", None, _P, c_int
)
session_set_ptr: Callable[[int, int], None] = _fn("gnutls_session_set_ptr", None, _P, _P)
session_get_ptr: Callable[[int], int | None] = _fn("gnutls_session_get_ptr", c_void_p, _P)
transport_set_ptr: Callable[[int, int], None] = _fn("gnutls_transport_set_ptr", None, _P, _P)
transport_set_push_function: Callable[[int, Any], None] = _fn("gnutls_transport_set_push_function", None, _P, PushFunc)
transport_set_pull_function: Callable[[int, Any], None] = _fn("gnutls_transport_set_pull_function", None, _P, PullFunc)
transport_set_pull_timeout_function: Callable[[int, Any], None] = _fn(
    "gnutls_transport_set_pull_timeout_function", None, _P, PullTimeoutFunc
)
transport_set_errno: Callable[[int, int], None] = _fn("gnutls_transport_set_errno", None, _P, c_int)

# DTLS
dtls_cookie_send: Callable[[Any, bytes, int, Any, int, Any], int] = _fn(
    "gnutls_dtls_cookie_send", c_int, POINTER(Datum), c_char_p, c_size_t, POINTER(DtlsPrestate), _P, PushFunc
)
dtls_cookie_verify: Callable[[Any, bytes, int, bytes, int, Any], int] = _fn(
    "gnutls_dtls_cookie_verify",
    c_int,
    POINTER(Datum),
    c_char_p,
    c_size_t,
    c_char_p,
    c_size_t,
    POINTER(DtlsPrestate),
)
dtls_prestate_set: Callable[[int, Any], None] = _fn("gnutls_dtls_prestate_set", None, _P, POINTER(DtlsPrestate))
dtls_set_mtu: Callable[[int, int], None] = _fn("gnutls_dtls_set_mtu", None, _P, c_uint)
dtls_set_timeouts: Callable[[int, int, int], None] = _fn("gnutls_dtls_set_timeouts", None, _P, c_uint, c_uint)
dtls_get_timeout: Callable[[int], int] = _fn("gnutls_dtls_get_timeout", c_uint, _P)
dtls_get_data_mtu: Callable[[int], int] = _fn("gnutls_dtls_get_data_mtu", c_uint, _P)
record_get_discarded: Callable[[int], int] = _fn("gnutls_record_get_discarded", c_uint, _P)

# I/O
handshake: Callable[[int], int] = _fn("gnutls_handshake", c_int, _P)
record_recv: Callable[[int, Any, int], int] = _fn("gnutls_record_recv", c_ssize_t, _P, c_void_p, c_size_t)
record_send: Callable[[int, bytes, int], int] = _fn("gnutls_record_send", c_ssize_t, _P, c_char_p, c_size_t)
bye: Callable[[int, int], int] = _fn("gnutls_bye", c_int, _P, c_int)
alert_send: Callable[[int, int, int], int] = _fn("gnutls_alert_send", c_int, _P, c_int, c_int)
alert_send_appropriate: Callable[[int, int], int] = _fn("gnutls_alert_send_appropriate", c_int, _P, c_int)
alert_get: Callable[[int], int] = _fn("gnutls_alert_get", c_int, _P)
_alert_get_name: Callable[[int], bytes | None] = _fn("gnutls_alert_get_name", c_char_p, c_int)
handshake_get_last_in: Callable[[int], int] = _fn("gnutls_handshake_get_last_in", c_int, _P)

# session information
auth_get_type: Callable[[int], int] = _fn("gnutls_auth_get_type", c_int, _P)
certificate_type_get2: Callable[[int, int], int] = _fn("gnutls_certificate_type_get2", c_int, _P, c_int)
certificate_get_peers: Callable[[int, Any], Any] = _fn(
    "gnutls_certificate_get_peers", POINTER(Datum), _P, POINTER(c_uint)
)
certificate_verify_peers: Callable[[int, Any, int, Any], int] = _fn(
    "gnutls_certificate_verify_peers", c_int, _P, POINTER(TypedVdata), c_uint, POINTER(c_uint)
)
certificate_verification_status_print: Callable[[int, int, Any, int], int] = _fn(
    "gnutls_certificate_verification_status_print", c_int, c_uint, c_int, POINTER(Datum), c_uint
)
psk_server_get_username2: Callable[[int, Any], int] = _fn("gnutls_psk_server_get_username2", c_int, _P, POINTER(Datum))
session_get_desc: Callable[[int], int | None] = _fn("gnutls_session_get_desc", c_void_p, _P)
try:
    _ciphersuite_get: Callable[[int], bytes | None] | None = _fn("gnutls_ciphersuite_get", c_char_p, _P)
except AttributeError:  # before 3.7.4
    _ciphersuite_get = None

# X.509 certificates
x509_crt_init: Callable[[Any], int] = _fn("gnutls_x509_crt_init", c_int, POINTER(c_void_p))
x509_crt_deinit: Callable[[int], None] = _fn("gnutls_x509_crt_deinit", None, _P)
x509_crt_import: Callable[[int, Any, int], int] = _fn("gnutls_x509_crt_import", c_int, _P, POINTER(Datum), c_int)
x509_crt_get_expiration_time: Callable[[int], int] = _fn("gnutls_x509_crt_get_expiration_time", ctypes.c_long, _P)
x509_crt_get_dn_by_oid: Callable[[int, bytes, int, int, Any, Any], int] = _fn(
    "gnutls_x509_crt_get_dn_by_oid", c_int, _P, c_char_p, c_uint, c_uint, c_void_p, POINTER(c_size_t)
)
x509_crt_get_subject_alt_name2: Callable[[int, int, Any, Any, Any, Any], int] = _fn(
    "gnutls_x509_crt_get_subject_alt_name2",
    c_int,
    _P,
    c_uint,
    c_void_p,
    POINTER(c_size_t),
    POINTER(c_uint),
    POINTER(c_uint),
)

# X.509 private keys (key generation for the bootstrap server's generated RPK credentials)
PK_ECDSA = 4  # gnutls_pk_algorithm_t
ECC_CURVE_SECP256R1 = 2  # gnutls_ecc_curve_t
PKCS_PLAIN = 1  # gnutls_pkcs_encrypt_flags_t: an unencrypted PKCS#8


def curve_to_bits(curve: int) -> int:
    """``GNUTLS_CURVE_TO_BITS``: the ``bits`` argument that names an elliptic curve."""
    return (1 << 31) | curve


x509_privkey_init: Callable[[Any], int] = _fn("gnutls_x509_privkey_init", c_int, POINTER(c_void_p))
x509_privkey_deinit: Callable[[int], None] = _fn("gnutls_x509_privkey_deinit", None, _P)
x509_privkey_generate: Callable[[int, int, int, int], int] = _fn(
    "gnutls_x509_privkey_generate", c_int, _P, c_int, c_uint, c_uint
)
x509_privkey_export2_pkcs8: Callable[[int, int, bytes | None, int, Any], int] = _fn(
    "gnutls_x509_privkey_export2_pkcs8", c_int, _P, c_int, c_char_p, c_uint, POINTER(Datum)
)
x509_privkey_export_ecc_raw: Callable[[int, Any, Any, Any, Any], int] = _fn(
    "gnutls_x509_privkey_export_ecc_raw", c_int, _P, POINTER(c_int), POINTER(Datum), POINTER(Datum), POINTER(Datum)
)

_malloc = _MallocFunc(c_void_p.in_dll(_lib, "gnutls_malloc").value or 0)
_free = _FreeFunc(c_void_p.in_dll(_lib, "gnutls_free").value or 0)

if global_init() < 0:  # reference-counted, idempotent; the library also initialises itself
    raise GnuTLSUnavailable("gnutls_global_init failed")


# --- helpers -----------------------------------------------------------------------------------------


def error_name(code: int) -> str:
    """``GNUTLS_E_...`` for a negative code."""
    name = _strerror_name(code)
    return name.decode() if name else f"GNUTLS_E_{code}"


def strerror(code: int) -> str:
    """GnuTLS's human-readable text for a code."""
    text = _strerror(code)
    return text.decode() if text else f"GnuTLS error {code}"


def error(code: int, what: str = "") -> GnuTLSError:
    """The exception for a negative code."""
    return GnuTLSError(code, error_name(code), strerror(code), what)


def check(code: int, what: str) -> int:
    """Return ``code`` unless it is negative; raise :class:`GnuTLSError` (naming ``what``) if so."""
    if code < 0:
        raise error(code, what)
    return code


def alert_name(alert: int) -> str:
    """The name of a TLS alert description (``"Bad record MAC"``)."""
    name = _alert_get_name(alert)
    return name.decode() if name else f"alert {alert}"


def ciphersuite_name(session: int) -> str:
    """The negotiated cipher suite's name (``TLS_PSK_AES_128_CCM_8``), or the session description."""
    if _ciphersuite_get is not None:
        name = _ciphersuite_get(session)
        if name:
            return name.decode()
    return session_description(session)


def session_description(session: int) -> str:
    """GnuTLS's one-line description of a session: ``(DTLS1.2)-(PSK)-(AES-128-CCM-8)``."""
    ptr = session_get_desc(session)
    if not ptr:
        return ""
    try:
        return ctypes.string_at(ptr).decode(errors="replace")
    finally:
        _free(ptr)


def datum(data: bytes) -> tuple[Datum, Any]:
    """A Datum pointing into a fresh buffer holding ``data``; keep the buffer alive while in use."""
    buf = ctypes.create_string_buffer(data, len(data))
    return Datum(ctypes.cast(buf, c_void_p), len(data)), buf


def datum_bytes(d: Datum) -> bytes:
    """The bytes a Datum points to (a copy)."""
    if not d.data or not d.size:
        return b""
    return ctypes.string_at(d.data, d.size)


def malloc_copy(data: bytes) -> int:
    """Copy ``data`` into memory from ``gnutls_malloc`` (GnuTLS frees it); returns the address."""
    ptr = _malloc(max(len(data), 1))
    if not ptr:
        raise MemoryError("gnutls_malloc failed")
    ctypes.memmove(ptr, data, len(data))
    return int(ptr)


def free_datum(d: Datum) -> None:
    """Release a Datum's data that GnuTLS allocated (``gnutls_free``)."""
    if d.data:
        _free(d.data)
        d.data = None
        d.size = 0


def verification_status_text(status: int, cert_type: int = CertificateType.X509) -> str:
    """GnuTLS's explanation of certificate verification status bits."""
    out = Datum()
    if certificate_verification_status_print(status, cert_type, ctypes.byref(out), 0) < 0:
        return f"verification status 0x{status:x}"
    try:
        return datum_bytes(out).decode(errors="replace")
    finally:
        free_datum(out)


def new_handle() -> c_void_p:
    """An out-parameter for the ``*_init`` / ``*_allocate_*`` functions."""
    return c_void_p()
