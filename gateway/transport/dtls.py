"""A DTLS 1.2 server engine on GnuTLS: datagrams in, datagrams and plaintext out, no sockets.

:class:`DtlsServer` takes every datagram that arrives on the server's UDP socket
(:meth:`DtlsServer.datagram_received`) and hands back what must be sent (its ``send`` callback),
what was authenticated (``on_established``), what was decrypted (``on_data``) and what ended
(``on_closed``). PSK, RPK (RFC 7250) and X.509 are served on the same port: every credential is set
on every handshake and the client's offer (cipher suites, certificate-type extensions) decides.

What it promises:

* No per-peer state before a valid cookie: an unknown address gets a stateless HelloVerifyRequest
  (``gnutls_dtls_cookie_send`` with a secret that rotates), nothing else.
* One timer for everything: retransmissions, handshake deadlines and idle eviction of all
  sessions live in one heap; with an event loop the engine keeps a single ``loop.call_at`` armed
  for the earliest entry. GnuTLS's retransmission timeout gets a floor (it can report 0 forever).
* A failed handshake always sends an alert and ends in one log line that says why (unknown PSK
  identity, wrong key, unknown raw public key, certificate expired, unknown CA, timeout...).
* A new ClientHello from a known address (epoch 0, valid cookie, a new client random) replaces
  the old session; a replay of the hello that opened the current session does not.
* Limits: at most ``max_sessions`` sessions (the least recently active established one makes room)
  and at most ``max_handshakes`` half-open ones (more are dropped), idle sessions evicted.

Callbacks from GnuTLS are a handful of module-level ctypes functions shared by every session; a
session reaches them as a small integer id. Everything runs on one thread (one asyncio loop).

Caveats: DTLS Connection IDs (RFC 9146) and DTLS 1.3 are not in GnuTLS, so a NAT rebinding costs a
new handshake; no session resumption (every handshake is a full one).
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import errno
import hashlib
import heapq
import ipaddress
import itertools
import logging
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from ctypes import byref, c_size_t, c_uint, c_void_p
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

from gateway.transport import gnutls as g

log = logging.getLogger(__name__)

Addr: TypeAlias = tuple[Any, ...]
"""A socket address as asyncio reports it: ``(host, port)`` or ``(host, port, flowinfo, scope_id)``."""

# --- principals -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PskPrincipal:
    """A peer authenticated with a pre-shared key; ``identity`` as the client sent it."""

    identity: bytes

    def __str__(self) -> str:
        return f"PSK identity {_show_identity(self.identity)}"


@dataclass(frozen=True, slots=True)
class RpkPrincipal:
    """A peer authenticated with a raw public key (RFC 7250): its SubjectPublicKeyInfo, DER."""

    spki_der: bytes

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the SubjectPublicKeyInfo, hex (what the logs show)."""
        return hashlib.sha256(self.spki_der).hexdigest()

    def __str__(self) -> str:
        return f"raw public key sha256:{self.fingerprint[:16]}"


@dataclass(frozen=True, slots=True)
class X509Principal:
    """A peer authenticated with an X.509 certificate.

    ``chain_ok`` tells whether the chain verified against the trust store; ``chain_error`` says why
    not (``certificate expired``, ``unknown CA``, ...). ``sans`` holds DNS names, URIs, e-mail
    addresses and IP addresses from the subjectAltName extension, as text.
    """

    common_name: str | None
    sans: tuple[str, ...]
    chain_ok: bool
    cert_der: bytes
    chain_error: str = ""

    def __str__(self) -> str:
        return f"certificate CN={self.common_name!r}"


Principal: TypeAlias = PskPrincipal | RpkPrincipal | X509Principal

# --- credentials ------------------------------------------------------------------------------------

_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")


def p256_spki(x: bytes, y: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a secp256r1 public key given as raw x and y (32 bytes each)."""
    if len(x) != 32 or len(y) != 32:
        raise ValueError("a secp256r1 coordinate is 32 bytes")
    return _P256_SPKI_PREFIX + x + y


def p256_xy(spki_der: bytes) -> tuple[bytes, bytes]:
    """The raw x and y of a secp256r1 SubjectPublicKeyInfo (DER); ValueError for anything else."""
    if len(spki_der) != 91 or not spki_der.startswith(_P256_SPKI_PREFIX):
        raise ValueError("not a secp256r1 SubjectPublicKeyInfo")
    return spki_der[27:59], spki_der[59:91]


def p256_private_der(x: bytes, y: bytes, d: bytes) -> bytes:
    """The DER ECPrivateKey (SEC 1) of a secp256r1 key pair given as raw x, y and d."""
    if len(d) != 32:
        raise ValueError("a secp256r1 private scalar is 32 bytes")
    return bytes.fromhex("30770201010420") + d + bytes.fromhex("a00a06082a8648ce3d030107a14403420004") + x + y


def generate_p256_key_pair() -> tuple[bytes, bytes]:
    """A fresh secp256r1 key pair from GnuTLS: (SubjectPublicKeyInfo DER, unencrypted PKCS#8 DER).

    In process and about 0.2 ms (no openssl process), so it may run on the event loop; the private
    key only ever lives in memory."""
    handle = g.new_handle()
    g.check(g.x509_privkey_init(ctypes.byref(handle)), "x509_privkey_init")
    key = handle.value or 0
    pkcs8, x, y = g.Datum(), g.Datum(), g.Datum()
    try:
        bits = g.curve_to_bits(g.ECC_CURVE_SECP256R1)
        g.check(g.x509_privkey_generate(key, g.PK_ECDSA, bits, 0), "x509_privkey_generate")
        g.check(
            g.x509_privkey_export2_pkcs8(key, g.X509Format.DER, None, g.PKCS_PLAIN, ctypes.byref(pkcs8)),
            "x509_privkey_export2_pkcs8",
        )
        curve = ctypes.c_int()
        g.check(
            g.x509_privkey_export_ecc_raw(key, ctypes.byref(curve), ctypes.byref(x), ctypes.byref(y), None),
            "x509_privkey_export_ecc_raw",
        )
        # GnuTLS gives the coordinates as integers: a leading zero byte may be added or dropped
        bx, by = (g.datum_bytes(c).lstrip(b"\0").rjust(32, b"\0") for c in (x, y))
        return p256_spki(bx, by), g.datum_bytes(pkcs8)
    finally:
        for d in (pkcs8, x, y):
            g.free_datum(d)
        g.x509_privkey_deinit(key)


class KeyFormat(enum.Enum):
    PEM = g.X509Format.PEM
    DER = g.X509Format.DER


@dataclass(frozen=True, slots=True)
class RpkKeyPair:
    """The server's raw public key pair (RFC 7250).

    ``public`` is a SubjectPublicKeyInfo and ``private`` a private key (PKCS#8 or SEC 1), both in
    ``format``; with PEM the same text may hold both. Build from the seed's hex with
    :meth:`from_raw_hex`.
    """

    public: bytes
    private: bytes
    format: KeyFormat = KeyFormat.PEM

    @classmethod
    def from_raw_hex(cls, x: str, y: str, d: str) -> RpkKeyPair:
        """A secp256r1 key pair from hex x, y (public) and d (private), as ThingsBoard shows them."""
        bx, by, bd = bytes.fromhex(x), bytes.fromhex(y), bytes.fromhex(d)
        return cls(p256_spki(bx, by), p256_private_der(bx, by, bd), KeyFormat.DER)

    @classmethod
    def from_pem(cls, pem: bytes) -> RpkKeyPair:
        """A key pair from one PEM text holding both ``PUBLIC KEY`` and the private key."""
        return cls(pem, pem, KeyFormat.PEM)

    def __repr__(self) -> str:  # never show the private key
        return f"RpkKeyPair(format={self.format.name})"


@dataclass(frozen=True, slots=True)
class X509Credentials:
    """The server's certificate chain (leaf first) and private key, PEM or DER."""

    chain: bytes
    private_key: bytes
    format: KeyFormat = KeyFormat.PEM

    def __repr__(self) -> str:
        return f"X509Credentials(format={self.format.name})"


@dataclass(frozen=True, slots=True)
class TrustStore:
    """Where client certificates are verified against: a CA file, a directory of CA files and/or
    PEM text (all PEM)."""

    ca_file: str | None = None
    ca_dir: str | None = None
    ca_pem: bytes | None = None


@runtime_checkable
class CredentialsProvider(Protocol):
    """What the DTLS server asks about credentials; the credentials store implements it.

    Lookups run inside the handshake, on the event loop: they must be fast (O(1)) and must not
    block. ``server_rpk``/``server_x509``/``trust`` are read when the server (re)loads credentials.
    """

    def psk_key(self, identity: bytes) -> bytes | None:
        """The key (16-64 bytes) for a PSK identity (up to 128 bytes), or None if unknown."""
        ...

    def rpk_allowed(self, spki_der: bytes) -> bool:
        """Whether a client's raw public key (SubjectPublicKeyInfo, DER) is configured."""
        ...

    def x509_allowed(self, principal: X509Principal) -> bool:
        """Whether a client certificate is accepted; ``principal.chain_ok`` holds the chain check."""
        ...

    @property
    def server_rpk(self) -> RpkKeyPair | None: ...

    @property
    def server_x509(self) -> X509Credentials | None: ...

    @property
    def trust(self) -> TrustStore | None: ...


@dataclass(slots=True)
class InMemoryCredentials:
    """A dict-backed :class:`CredentialsProvider` (tests, benchmarks, small fixed setups)."""

    psk: dict[bytes, bytes] = field(default_factory=dict)
    rpk_keys: set[bytes] = field(default_factory=set)
    server_rpk: RpkKeyPair | None = None
    server_x509: X509Credentials | None = None
    trust: TrustStore | None = None
    accept_unverified_x509: bool = False

    def psk_key(self, identity: bytes) -> bytes | None:
        return self.psk.get(identity)

    def rpk_allowed(self, spki_der: bytes) -> bool:
        return spki_der in self.rpk_keys

    def x509_allowed(self, principal: X509Principal) -> bool:
        return principal.chain_ok or self.accept_unverified_x509

    def __repr__(self) -> str:
        return f"InMemoryCredentials({len(self.psk)} PSK, {len(self.rpk_keys)} RPK)"


# --- GnuTLS configuration ---------------------------------------------------------------------------

#: Server priorities. Cipher order with %SERVER_PRECEDENCE: CCM_8 (the LwM2M/RFC 7925 suites)
#: first, then CCM, GCM and CBC-SHA256 that common clients offer. Plain PSK before ECDHE-PSK
#: (the LwM2M mandatory suite, and the cheapest). Certificate types: GnuTLS follows the client's
#: order, and clients that offer raw public keys at all mean to use them (see _wants_raw_public_key).
SERVER_PRIORITY = (
    "NONE:+VERS-DTLS1.2:+COMP-NULL"
    ":+AES-128-CCM-8:+AES-256-CCM-8:+AES-128-CCM:+AES-256-CCM:+AES-128-GCM:+AES-256-GCM"
    ":+CHACHA20-POLY1305:+AES-128-CBC:+AES-256-CBC"
    ":+AEAD:+SHA256:+SHA384"
    ":+PSK:+ECDHE-PSK:+ECDHE-ECDSA:+ECDHE-RSA"
    ":+SIGN-ALL:+GROUP-SECP256R1:+GROUP-X25519:+GROUP-SECP384R1"
    ":+CTYPE-SRV-RAWPK:+CTYPE-SRV-X509:+CTYPE-CLI-RAWPK:+CTYPE-CLI-X509"
    ":%SERVER_PRECEDENCE"
)

RETRANSMIT_FLOOR = 0.05
"""Shortest retransmission timer (s): ``gnutls_dtls_get_timeout`` may return 0 forever."""

COOKIE_ROTATION = 60.0
"""Seconds between cookie secret rotations (the previous secret is still accepted)."""

X509_CACHE_TTL = 600.0
"""Seconds a verified client certificate chain is trusted without verifying it again."""

_RECV_BUF_SIZE = 1 << 16
_recv_buf = ctypes.create_string_buffer(_RECV_BUF_SIZE)
_recv_ptr = ctypes.cast(_recv_buf, c_void_p)

_EAGAIN = errno.EAGAIN

# DTLS record layer (RFC 6347): type(1) version(2) epoch(2) seq(6) length(2)
_REC_HEADER = 13
_CT_CHANGE_CIPHER_SPEC = 20
_CT_ALERT = 21
_CT_HANDSHAKE = 22
_CT_APPLICATION_DATA = 23


def _client_hello_random(data: bytes) -> bytes | None:
    """The client random if ``data`` starts with an epoch-0 ClientHello record, else None."""
    if (
        len(data) >= _REC_HEADER + 12 + 34
        and data[0] == _CT_HANDSHAKE
        and data[3] == 0
        and data[4] == 0
        and data[_REC_HEADER] == g.HandshakeType.CLIENT_HELLO
    ):
        return data[_REC_HEADER + 14 : _REC_HEADER + 46]
    return None


def _has_cookie(client_hello: bytes) -> bool:
    """Whether a ClientHello carries a cookie at all (the first one of a handshake does not)."""
    sid = _REC_HEADER + 12 + 34  # session id length byte
    return (
        len(client_hello) > sid + 1
        and len(client_hello) > sid + 1 + client_hello[sid]
        and (client_hello[sid + 1 + client_hello[sid]] != 0)
    )


_EXT_CLIENT_CERTIFICATE_TYPE = 19  # RFC 7250
_CERT_TYPE_RAW_PUBLIC_KEY = 2


def _client_hello_extension(data: bytes, wanted: int) -> bytes | None:
    """The first extension of type ``wanted`` in an unfragmented epoch-0 ClientHello record (None if
    absent or if it cannot tell). Scans with byte arithmetic and stops at the one wanted: it runs for
    every ClientHello with a cookie."""
    try:
        hs = _REC_HEADER
        body_len = (data[hs + 1] << 16) | (data[hs + 2] << 8) | data[hs + 3]
        if data[hs + 6] or data[hs + 7] or data[hs + 8]:
            return None  # a fragment (offset > 0)
        if ((data[hs + 9] << 16) | (data[hs + 10] << 8) | data[hs + 11]) != body_len:
            return None  # fragmented
        end = min(len(data), hs + 12 + body_len)
        pos = hs + 12 + 2 + 32
        pos += 1 + data[pos]  # session id
        pos += 1 + data[pos]  # cookie
        pos += 2 + ((data[pos] << 8) | data[pos + 1])  # cipher suites
        pos += 1 + data[pos]  # compression methods
        ext_end = min(end, pos + 2 + ((data[pos] << 8) | data[pos + 1]))
        pos += 2
        while pos + 4 <= ext_end:
            elen = (data[pos + 2] << 8) | data[pos + 3]
            if ((data[pos] << 8) | data[pos + 1]) == wanted:
                return data[pos + 4 : pos + 4 + elen]
            pos += 4 + elen
        return None
    except IndexError:
        return None


def _wants_raw_public_key(client_hello: bytes) -> bool:
    """Whether the client's first choice of its own certificate type is a raw public key."""
    ext = _client_hello_extension(client_hello, _EXT_CLIENT_CERTIFICATE_TYPE)
    return ext is not None and len(ext) >= 2 and ext[0] >= 1 and ext[1] == _CERT_TYPE_RAW_PUBLIC_KEY


def _records(data: bytes) -> Iterator[tuple[int, int]]:
    """(content type, epoch) of each record in a datagram, as far as the headers are sane."""
    pos = 0
    n = len(data)
    while pos + _REC_HEADER <= n:
        length = (data[pos + 11] << 8) | data[pos + 12]
        yield data[pos], (data[pos + 3] << 8) | data[pos + 4]
        pos += _REC_HEADER + length


def _framed_length(data: bytes) -> int:
    """How many leading bytes of a datagram are whole DTLS records.

    GnuTLS must never see a record that claims more bytes than the datagram holds: it keeps the
    partial record and waits for the rest, and every later datagram of the session is then read
    as garbage (one spoofed datagram would silence a session). RFC 6347 4.1.2.7: drop it.
    """
    pos = 0
    n = len(data)
    while pos + _REC_HEADER <= n:
        end = pos + _REC_HEADER + ((data[pos + 11] << 8) | data[pos + 12])
        if end > n:
            break
        pos = end
    return pos


def _show_identity(identity: bytes) -> str:
    """A PSK identity for a log line (identities travel in clear; this is not key material)."""
    shown = identity[:64]
    try:
        text = repr(shown.decode("ascii"))
    except UnicodeDecodeError:
        text = shown.hex()
    return text + ("..." if len(identity) > 64 else "") + f" ({len(identity)} bytes)"


def _show_addr(addr: Addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _addr_key(addr: Addr) -> bytes:
    return f"{addr[0]}|{addr[1]}".encode()


class _RateLimitedLog:
    """At most ``burst`` log lines per kind of refusal and ``period`` seconds; the rest are counted.

    The kind is the reason's leading words ("unknown PSK identity", "certificate chain error"), so
    a flood of made-up identities is one kind, not one per identity.
    """

    _KIND = re.compile(r"[A-Za-z .-]*")

    def __init__(self, burst: int = 20, period: float = 10.0) -> None:
        self.burst = burst
        self.period = period
        self._windows: dict[str, tuple[float, int]] = {}

    def warning(self, reason: str, msg: str, *args: object) -> None:
        match = self._KIND.match(reason)
        reason = (match.group() if match else "").strip()[:40] or "other"
        if len(self._windows) > 64:
            self._windows.clear()
        now = time.monotonic()
        start, count = self._windows.get(reason, (now, 0))
        if now - start >= self.period:
            if count > self.burst:
                log.warning("%d more '%s' refusals in the last %.0f s", count - self.burst, reason, now - start)
            start, count = now, 0
        count += 1
        self._windows[reason] = (start, count)
        if count <= self.burst:
            log.warning(msg, *args)


# --- the module-level GnuTLS callbacks --------------------------------------------------------------


class _Link(Protocol):
    """What the shared callbacks reach through a transport pointer."""

    _handle: int

    def _push(self, data: bytes) -> None: ...

    def _pull(self) -> bytes | None: ...

    def _has_input(self) -> bool: ...


_links: dict[int, _Link] = {}
_ids = itertools.count(1)  # 0 would arrive in the callbacks as None


callback_failures = 0
"""Exceptions caught inside the GnuTLS callbacks since start (each was logged)."""


def _callback_failed(what: str) -> None:
    global callback_failures
    callback_failures += 1
    log.exception(what)


def _again(ptr: int | None) -> int:
    link = _links.get(ptr or 0)
    if link is not None and link._handle:
        g.transport_set_errno(link._handle, _EAGAIN)
    return -1


def _push_cb(ptr: int | None, data: int | None, size: int) -> int:
    try:
        link = _links[ptr or 0]
        link._push(ctypes.string_at(data or 0, size))
        return size
    except Exception:
        _callback_failed("DTLS push failed")
        return _again(ptr)


def _pull_cb(ptr: int | None, buf: int | None, size: int) -> int:
    try:
        link = _links[ptr or 0]
        data = link._pull()
        if data is None:
            return _again(ptr)
        n = min(len(data), size)
        ctypes.memmove(buf or 0, data, n)
        return n
    except Exception:
        _callback_failed("DTLS pull failed")
        return _again(ptr)


def _pull_timeout_cb(ptr: int | None, ms: int) -> int:
    try:
        link = _links.get(ptr or 0)
        return 1 if link is not None and link._has_input() else 0
    except Exception:
        _callback_failed("DTLS pull-timeout failed")
        return -1


def _session_of(handle: int | None) -> DtlsSession | None:
    sid = g.session_get_ptr(handle or 0)
    link = _links.get(sid or 0)
    return link if isinstance(link, DtlsSession) else None


def _psk_cb(handle: int | None, username: Any, key: Any) -> int:
    try:
        session = _session_of(handle)
        if session is None or not isinstance(session._owner, DtlsServer):
            return -1
        identity = g.datum_bytes(username.contents)
        session._fail_reason = f"PSK lookup for identity {_show_identity(identity)} failed"
        psk = session._owner._lookup_psk(session, identity)
        if psk is None:
            return -1
        out = key.contents
        out.data = g.malloc_copy(psk)
        out.size = len(psk)
        return 0
    except Exception:
        _callback_failed("DTLS PSK lookup failed")
        return -1


def _verify_cb(handle: int | None) -> int:
    try:
        session = _session_of(handle)
        if session is None or not isinstance(session._owner, DtlsServer):
            return -1
        return 0 if session._owner._verify_peer(session) else -1
    except Exception:
        _callback_failed("DTLS certificate verification failed")
        return -1


_PUSH = g.PushFunc(_push_cb)
_PULL = g.PullFunc(_pull_cb)
_PULL_TIMEOUT = g.PullTimeoutFunc(_pull_timeout_cb)
_PSK = g.PskServerFunc2(_psk_cb)
_VERIFY = g.VerifyFunc(_verify_cb)

# --- sessions ---------------------------------------------------------------------------------------


class SessionState(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


class DtlsSession:
    """One DTLS association with one peer address (server or client side).

    ``principal`` is what the peer authenticated with (set once established); ``data_mtu`` is the
    largest plaintext :meth:`send` accepts in one record (size CoAP blocks from it).
    """

    __slots__ = (
        "__weakref__",
        "_busy",
        "_ccs_seen",
        "_creds",
        "_data_mtu",
        "_deadline",
        "_fail_alert",
        "_fail_reason",
        "_handle",
        "_hello_random",
        "_inbox",
        "_out",
        "_outlen",
        "_owner",
        "_starved",
        "_timer_gen",
        "addr",
        "cipher_suite",
        "closed_reason",
        "id",
        "last_activity",
        "principal",
        "started",
        "state",
        "user",
    )

    def __init__(self, owner: _Engine, addr: Addr, handle: int, now: float) -> None:
        self.id = next(_ids)
        self.addr = addr
        self.state = SessionState.HANDSHAKING
        self.principal: Principal | None = None
        self.cipher_suite = ""
        self.closed_reason = ""
        self.started = now
        self.last_activity = now
        self.user: Any = None  # free for the layer above (the CoAP transport keeps its remote here)
        self._owner = owner
        self._handle = handle
        self._inbox: bytes | None = None
        self._out: list[bytes] | None = None  # records to send, packed, while busy
        self._outlen = 0
        self._busy = False
        self._starved = False  # GnuTLS asked for input that was not there (it has nothing buffered)
        self._timer_gen = 0
        self._deadline = 0.0
        self._hello_random: bytes | None = None
        self._ccs_seen = False
        self._fail_reason = ""
        self._fail_alert = -1
        self._creds: _ServerCredentials | None = None
        self._data_mtu = 0

    def __repr__(self) -> str:
        return f"<DtlsSession {self.id} {_show_addr(self.addr)} {self.state.value} {self.principal}>"

    # transport pointer protocol (the shared callbacks)
    def _push(self, data: bytes) -> None:
        out = self._out
        if out is None:
            self._owner._transmit(self.addr, data)
            return
        # while GnuTLS works on a datagram, its records (one push each) are packed into as few
        # datagrams as the MTU allows (RFC 6347 4.1.1): half the sends during a handshake
        if out and self._outlen + len(data) > self._owner.mtu:
            self._flush()
        out.append(data)
        self._outlen += len(data)

    def _flush(self) -> None:
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._outlen = 0
            self._owner._transmit(self.addr, data)

    def _pull(self) -> bytes | None:
        data, self._inbox = self._inbox, None
        if data is None:
            self._starved = True
        return data

    def _has_input(self) -> bool:
        if self._inbox is None:
            self._starved = True
            return False
        return True

    @property
    def established(self) -> bool:
        return self.state is SessionState.ESTABLISHED

    @property
    def data_mtu(self) -> int:
        """The largest plaintext one record can carry (``gnutls_dtls_get_data_mtu`` once
        established; it depends on the cipher suite); 0 before."""
        return self._data_mtu

    def send(self, plaintext: bytes) -> None:
        """Encrypt and send one datagram's worth of plaintext (at most :attr:`data_mtu` bytes).

        Raises :class:`ConnectionError` if the session is not established, :class:`ValueError`
        if the plaintext does not fit, :class:`gnutls.GnuTLSError` for other failures.
        """
        if self.state is not SessionState.ESTABLISHED:
            raise ConnectionError(f"DTLS session {self.id} is {self.state.value}")
        rc = g.record_send(self._handle, plaintext, len(plaintext))
        if rc < 0:
            if rc == g.E_LARGE_PACKET:
                raise ValueError(f"{len(plaintext)} bytes exceed the DTLS data MTU {self.data_mtu}")
            raise g.error(rc, "gnutls_record_send")
        self.last_activity = self._owner._now()

    def close(self) -> None:
        """Send close_notify and forget the session (``on_closed`` runs with reason ``closed``)."""
        if self.state is SessionState.CLOSED:
            return
        self._owner._close(self, "closed", notify=True)


# --- the engine -------------------------------------------------------------------------------------


class _Engine:
    """Session table, the one timer heap, and the handshake/record drivers shared by both roles."""

    def __init__(
        self,
        *,
        mtu: int,
        handshake_deadline: float,
        retransmit_timeout: float,
        idle_timeout: float | None,
        loop: asyncio.AbstractEventLoop | None,
        send: Callable[[Addr, bytes], None] | None,
        on_established: Callable[[DtlsSession], None] | None,
        on_data: Callable[[DtlsSession, bytes], None] | None,
        on_closed: Callable[[DtlsSession, str], None] | None,
        on_handshake_failed: Callable[[Addr, str], None] | None,
    ) -> None:
        if not 256 <= mtu <= 65507:
            raise ValueError(f"mtu {mtu} out of range 256..65507")
        if not RETRANSMIT_FLOOR <= retransmit_timeout <= 60:
            raise ValueError(f"retransmit_timeout {retransmit_timeout} out of range {RETRANSMIT_FLOOR}..60 s")
        self.mtu = mtu
        self.handshake_deadline = handshake_deadline
        self.retransmit_timeout = retransmit_timeout
        self.idle_timeout = idle_timeout
        self.send: Callable[[Addr, bytes], None] = send or (lambda addr, data: None)
        self.on_established = on_established
        self.on_data = on_data
        self.on_closed = on_closed
        self.on_handshake_failed = on_handshake_failed
        self.sessions: dict[int, DtlsSession] = {}
        self._by_addr: OrderedDict[Addr, DtlsSession] = OrderedDict()  # LRU order by activity
        self._handshaking = 0
        self._heap: list[tuple[float, int, int]] = []
        self._loop = loop
        self._armed_at: float | None = None
        self._armed: asyncio.TimerHandle | None = None
        self._closed = False
        self.refused = _RateLimitedLog()
        self.stats: dict[str, int] = {
            "datagrams": 0,
            "dropped": 0,
            "cookies_sent": 0,
            "handshakes_started": 0,
            "handshakes_completed": 0,
            "handshakes_failed": 0,
            "handshakes_refused_limit": 0,
            "sessions_evicted": 0,
            "internal_errors": 0,
            "callback_errors": 0,
        }

    # clock and the one timer

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drive the timer from ``loop`` (and use its clock) from now on."""
        if self._loop is loop:
            return
        if self.sessions:
            raise RuntimeError("cannot change the event loop of a DTLS engine with open sessions")
        self._loop = loop
        self._arm(self.next_deadline())

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeouts` next has work (engine clock), or None."""
        heap = self._heap
        while heap:
            when, sid, gen = heap[0]
            s = self.sessions.get(sid)
            if s is not None and s._timer_gen == gen:
                return when
            heapq.heappop(heap)
        return None

    def _set_timer(self, session: DtlsSession, when: float) -> None:
        session._timer_gen += 1
        heapq.heappush(self._heap, (when, session.id, session._timer_gen))
        if len(self._heap) > 4 * len(self.sessions) + 1024:
            self._heap = [e for e in self._heap if (s := self.sessions.get(e[1])) and s._timer_gen == e[2]]
            heapq.heapify(self._heap)
        if self._loop is not None and (self._armed_at is None or when < self._armed_at):
            self._arm(when)

    def _arm(self, when: float | None) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        self._armed_at = when
        if when is not None and self._loop is not None and not self._closed:
            self._armed = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._armed = None
        self._armed_at = None
        try:
            self.handle_timeouts()
        finally:
            self._arm(self.next_deadline())

    def handle_timeouts(self, now: float | None = None) -> None:
        """Run every timer that is due: retransmissions, handshake deadlines, idle eviction."""
        now = self._now() if now is None else now
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, sid, gen = heapq.heappop(heap)
            s = self.sessions.get(sid)
            if s is None or s._timer_gen != gen:
                continue
            self._begin(s)
            try:
                self._on_timer(s, now)
            except Exception:
                self.stats["internal_errors"] += 1
                log.exception("DTLS timer for %r failed", s)
                self._destroy(s, "internal error")
            finally:
                self._end(s)

    def _on_timer(self, s: DtlsSession, now: float) -> None:
        if s.state is SessionState.HANDSHAKING:
            if now >= s._deadline:
                s._fail_reason = s._fail_reason or f"handshake not completed within {self.handshake_deadline:g} s"
                self._fail(s, g.E_TIMEDOUT)
            else:
                self._drive_handshake(s, now)
        elif s.state is SessionState.ESTABLISHED and self.idle_timeout is not None:
            idle_until = s.last_activity + self.idle_timeout
            if now >= idle_until:
                log.info(
                    "DTLS session %d with %s idle for %.0f s: closing",
                    s.id,
                    _show_addr(s.addr),
                    now - s.last_activity,
                )
                self._close(s, "idle", notify=True)
            else:
                self._set_timer(s, idle_until)

    # session lifecycle

    def _new_session(self, addr: Addr, flags: int, now: float) -> DtlsSession:
        h = g.new_handle()
        g.check(g.init(byref(h), flags), "gnutls_init")
        handle = int(h.value or 0)
        s = DtlsSession(self, addr, handle, now)
        try:
            g.session_set_ptr(handle, s.id)
            g.transport_set_ptr(handle, s.id)
            g.transport_set_push_function(handle, _PUSH)
            g.transport_set_pull_function(handle, _PULL)
            g.transport_set_pull_timeout_function(handle, _PULL_TIMEOUT)
            g.dtls_set_mtu(handle, self.mtu)
            g.dtls_set_timeouts(
                handle, int(self.retransmit_timeout * 1000), max(1000, int(self.handshake_deadline * 1000))
            )
        except Exception:
            g.deinit(handle)
            raise
        s._deadline = now + self.handshake_deadline
        _links[s.id] = s
        self.sessions[s.id] = s
        self._by_addr[addr] = s
        self._handshaking += 1
        self.stats["handshakes_started"] += 1
        return s

    def _destroy(self, s: DtlsSession, reason: str) -> None:
        """Forget a session and release its GnuTLS state (deferred while it is being driven)."""
        was = s.state
        if was is SessionState.CLOSED and s.id not in self.sessions:
            return
        if was is SessionState.HANDSHAKING:
            self._handshaking -= 1
        s.state = SessionState.CLOSED
        s.closed_reason = s.closed_reason or reason
        self.sessions.pop(s.id, None)
        if self._by_addr.get(s.addr) is s:
            del self._by_addr[s.addr]
        s._timer_gen += 1
        if not s._busy:
            self._release(s)
        if was is SessionState.ESTABLISHED and self.on_closed is not None:
            self._callback(self.on_closed, s, s.closed_reason)

    def _release(self, s: DtlsSession) -> None:
        _links.pop(s.id, None)
        if s._handle:
            g.deinit(s._handle)
            s._handle = 0
        if s._creds is not None:
            s._creds.release()
            s._creds = None

    def _close(self, s: DtlsSession, reason: str, *, notify: bool) -> None:
        if notify and s.state is SessionState.ESTABLISHED and s._handle:
            g.bye(s._handle, g.CloseRequest.WR)  # close_notify; we do not wait for the peer's
        self._destroy(s, reason)

    def _fail(self, s: DtlsSession, rc: int) -> None:
        """End a handshake that failed with ``rc``: alert, one log line, no state left."""
        if s._handle:
            if s._fail_alert >= 0:
                g.alert_send(s._handle, g.AlertLevel.FATAL, s._fail_alert)
            elif g.alert_send_appropriate(s._handle, rc) < 0:
                g.alert_send(s._handle, g.AlertLevel.FATAL, g.Alert.HANDSHAKE_FAILURE)
        reason = s._fail_reason or self._describe_failure(s, rc)
        self.stats["handshakes_failed"] += 1
        self.refused.warning(reason, "DTLS handshake with %s failed: %s", _show_addr(s.addr), reason)
        self._destroy(s, reason)
        if self.on_handshake_failed is not None:
            self._callback(self.on_handshake_failed, s.addr, reason)

    def _describe_failure(self, s: DtlsSession, rc: int) -> str:
        if rc == g.E_FATAL_ALERT_RECEIVED and s._handle:
            return f"peer sent fatal alert: {g.alert_name(g.alert_get(s._handle))}"
        if rc == g.E_NO_CERTIFICATE_FOUND:
            return "the client sent no certificate or raw public key"
        return f"{g.strerror(rc)} ({g.error_name(rc)})"

    def _callback(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("DTLS callback %r failed", fn)

    # drivers

    def _begin(self, s: DtlsSession) -> None:
        """GnuTLS is about to work on the session: hold its output, defer its release."""
        s._busy = True
        s._out = []

    def _end(self, s: DtlsSession) -> None:
        s._flush()
        s._out = None
        s._busy = False
        s._inbox = None
        if s.state is SessionState.CLOSED:
            self._release(s)

    def _feed(self, s: DtlsSession, data: bytes, now: float) -> None:
        framed = _framed_length(data)
        if framed < len(data):
            self.stats["dropped"] += 1
            if not framed:
                return
            data = data[:framed]
        s._inbox = data
        self._begin(s)
        try:
            # one record in an established session (the usual datagram): once GnuTLS has read it
            # and returned its plaintext, nothing is buffered, so no call is needed to find out
            single = s.state is SessionState.ESTABLISHED and framed == _REC_HEADER + ((data[11] << 8) | data[12])
            if s.state is SessionState.HANDSHAKING:
                self._drive_handshake(s, now, data)
            if s.state is SessionState.ESTABLISHED:
                s.last_activity = now
                if self._by_addr.get(s.addr) is s:
                    self._by_addr.move_to_end(s.addr)
                self._drive_records(s, single)
        finally:
            self._end(s)

    def _drive_handshake(self, s: DtlsSession, now: float, data: bytes | None = None) -> None:
        h = s._handle
        if data is not None:
            discarded = g.record_get_discarded(h)
        warnings = 0
        for _ in range(16):
            s._starved = False
            rc = g.handshake(h)
            if rc == 0:
                self._established(s, now)
                return
            if rc in (g.E_AGAIN, g.E_INTERRUPTED):
                if s._starved:
                    break
                continue  # GnuTLS dropped a buffered record without reading on: it has more
            if g.error_is_fatal(rc) == 0 and warnings < 8:
                warnings += 1
                continue  # a warning alert: keep going
            self._fail(s, rc)
            return
        if (
            data is not None
            and s.state is SessionState.HANDSHAKING
            and self._undecryptable_finished(s, data, discarded)
        ):
            return
        timeout = max(g.dtls_get_timeout(h) / 1000.0, RETRANSMIT_FLOOR)
        self._set_timer(s, min(now + timeout, s._deadline))

    def _undecryptable_finished(self, s: DtlsSession, data: bytes, discarded_before: int) -> bool:
        """A wrong PSK shows only as a Finished that GnuTLS silently drops: fail fast instead of
        letting the client retransmit until the deadline."""
        epoch1 = False
        for ctype, epoch in _records(data):
            if ctype == _CT_CHANGE_CIPHER_SPEC:
                s._ccs_seen = True
            elif epoch >= 1 and s._ccs_seen:
                epoch1 = True
        if not epoch1 or g.record_get_discarded(s._handle) == discarded_before:
            return False
        last_in = g.handshake_get_last_in(s._handle)
        if last_in not in (g.HandshakeType.CLIENT_KEY_EXCHANGE, g.HandshakeType.CERTIFICATE_VERIFY):
            return False
        s._fail_alert = g.Alert.BAD_RECORD_MAC
        s._fail_reason = s._fail_reason or self._wrong_key_reason(s)
        self._fail(s, g.E_DECRYPTION_FAILED)
        return True

    def _wrong_key_reason(self, s: DtlsSession) -> str:
        return "bad record MAC: the peer's Finished could not be decrypted (wrong key)"

    def _established(self, s: DtlsSession, now: float) -> None:
        s.state = SessionState.ESTABLISHED
        self._handshaking -= 1
        self.stats["handshakes_completed"] += 1
        s.last_activity = now
        s.cipher_suite = sys.intern(g.ciphersuite_name(s._handle))
        s._data_mtu = g.dtls_get_data_mtu(s._handle)
        self._on_established(s)
        if s.state is not SessionState.ESTABLISHED:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "DTLS session %d with %s established: %s, %s",
                s.id,
                _show_addr(s.addr),
                s.cipher_suite,
                s.principal,
            )
        if self.on_established is not None:
            self._callback(self.on_established, s)
        if s.state is SessionState.ESTABLISHED:
            if self.idle_timeout is not None:
                self._set_timer(s, now + self.idle_timeout)
            else:
                s._timer_gen += 1  # drop pending retransmission timers

    def _on_established(self, s: DtlsSession) -> None:
        """Role-specific work when a handshake completes (the server fills in the principal)."""

    def _drive_records(self, s: DtlsSession, single: bool = False) -> None:
        """Read every record GnuTLS has (``single``: the datagram was one record)."""
        h = s._handle
        for _ in range(64):
            if s.state is not SessionState.ESTABLISHED:
                return
            s._starved = False
            n = g.record_recv(h, _recv_ptr, _RECV_BUF_SIZE)
            if n > 0:
                if self.on_data is not None:
                    self._callback(self.on_data, s, _recv_buf[:n])
                if single and s._inbox is None:
                    return  # GnuTLS took the datagram and returned its only record
                continue
            if n == 0:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("DTLS session %d with %s: close_notify received", s.id, _show_addr(s.addr))
                self._close(s, "close_notify", notify=True)
                return
            if n in (g.E_AGAIN, g.E_INTERRUPTED):
                if s._starved:
                    return
                continue  # a dropped record (replay, bad MAC) ends a call early: read on
            if n == g.E_REHANDSHAKE or g.error_is_fatal(n) == 0:
                continue  # renegotiation is not supported; warnings are ignored
            reason = self._describe_failure(s, n)
            log.info("DTLS session %d with %s ended: %s", s.id, _show_addr(s.addr), reason)
            self._close(s, reason, notify=False)
            return

    def _transmit(self, addr: Addr, data: bytes) -> None:
        self.send(addr, data)

    def close(self) -> None:
        """Close every session (close_notify) and stop the timer."""
        for s in list(self.sessions.values()):
            self._close(s, "shutdown", notify=True)
        self._closed = True
        self._arm(None)
        self._heap.clear()


class _ServerCredentials:
    """The GnuTLS credential objects and priority cache built from a provider.

    Sessions hold a reference count: after a reload, the old objects are freed when the last
    session that uses them ends.
    """

    def __init__(self, provider: CredentialsProvider, priority: str) -> None:
        self.psk = 0
        self.cert = 0  # X.509 (and our raw public key, if any); or only the raw public key
        self.cert_rpk = 0  # only our raw public key
        self.priority = 0
        self.users = 1  # the server's own reference
        try:
            self._build(provider, priority)
        except Exception:
            self.release()
            raise

    def _build(self, provider: CredentialsProvider, priority: str) -> None:
        h = g.new_handle()
        err = ctypes.c_char_p()
        rc = g.priority_init(byref(h), priority.encode(), byref(err))
        if rc < 0:
            at = err.value.decode(errors="replace") if err.value else ""
            raise g.error(rc, f"DTLS priority string invalid near {at[:40]!r}")
        self.priority = int(h.value or 0)

        h = g.new_handle()
        g.check(g.psk_allocate_server_credentials(byref(h)), "gnutls_psk_allocate_server_credentials")
        self.psk = int(h.value or 0)
        g.psk_set_server_credentials_function2(self.psk, _PSK)

        rpk, x509, trust = provider.server_rpk, provider.server_x509, provider.trust
        if x509 is not None:
            self.cert = self._certificate_credentials(x509, rpk, trust)
        if rpk is not None:
            # GnuTLS takes the server certificate type in the *client's* order, and clients such
            # as libcoap offer X.509 first even when they authenticate with a raw public key: a
            # client that asks to send a raw public key gets credentials holding only ours.
            self.cert_rpk = self._certificate_credentials(None, rpk, None)
            if not self.cert:
                self.cert = self.cert_rpk

    @staticmethod
    def _certificate_credentials(x509: X509Credentials | None, rpk: RpkKeyPair | None, trust: TrustStore | None) -> int:
        h = g.new_handle()
        g.check(g.certificate_allocate_credentials(byref(h)), "gnutls_certificate_allocate_credentials")
        cred = int(h.value or 0)
        try:
            g.certificate_set_verify_function(cred, _VERIFY)
            if x509 is not None:
                cd, cbuf = g.datum(x509.chain)
                kd, kbuf = g.datum(x509.private_key)
                g.check(
                    g.certificate_set_x509_key_mem2(cred, byref(cd), byref(kd), x509.format.value, None, 0),
                    "server X.509 certificate/key",
                )
                del cbuf, kbuf
            if rpk is not None:
                pd, pbuf = g.datum(rpk.public)
                kd, kbuf = g.datum(rpk.private)
                g.check(
                    g.certificate_set_rawpk_key_mem(cred, byref(pd), byref(kd), rpk.format.value, None, 0, None, 0, 0),
                    "server raw public key pair",
                )
                del pbuf, kbuf
            if trust is not None:
                if trust.ca_file:
                    g.check(
                        g.certificate_set_x509_trust_file(cred, trust.ca_file.encode(), g.X509Format.PEM),
                        f"trust store file {trust.ca_file}",
                    )
                if trust.ca_dir:
                    g.check(
                        g.certificate_set_x509_trust_dir(cred, trust.ca_dir.encode(), g.X509Format.PEM),
                        f"trust store directory {trust.ca_dir}",
                    )
                if trust.ca_pem:
                    td, tbuf = g.datum(trust.ca_pem)
                    g.check(g.certificate_set_x509_trust_mem(cred, byref(td), g.X509Format.PEM), "trust PEM")
                    del tbuf
        except Exception:
            g.certificate_free_credentials(cred)
            raise
        return cred

    def acquire(self) -> _ServerCredentials:
        self.users += 1
        return self

    def release(self) -> None:
        self.users -= 1
        if self.users > 0:
            return
        if self.cert_rpk and self.cert_rpk != self.cert:
            g.certificate_free_credentials(self.cert_rpk)
        self.cert_rpk = 0
        if self.cert:
            g.certificate_free_credentials(self.cert)
            self.cert = 0
        if self.psk:
            g.psk_free_server_credentials(self.psk)
            self.psk = 0
        if self.priority:
            g.priority_deinit(self.priority)
            self.priority = 0


class _CookieSender:
    """The transport pointer ``gnutls_dtls_cookie_send`` pushes through (synchronously)."""

    __slots__ = ("_handle", "addr", "id", "server")

    def __init__(self, server: DtlsServer) -> None:
        self.id = next(_ids)
        self.server = server
        self.addr: Addr | None = None
        self._handle = 0

    def _push(self, data: bytes) -> None:
        if self.addr is not None:
            self.server._transmit(self.addr, data)

    def _pull(self) -> bytes | None:
        return None

    def _has_input(self) -> bool:
        return False


class DtlsServer(_Engine):
    """A DTLS 1.2 server for one UDP socket: PSK, RPK and X.509 on the same port.

    Feed it every datagram with :meth:`datagram_received`; it calls ``send(addr, data)`` for every
    datagram to transmit and ``on_established(session)``, ``on_data(session, plaintext)``,
    ``on_closed(session, reason)`` (established sessions only) and
    ``on_handshake_failed(addr, reason)``. The callbacks may be given here or assigned later.

    With ``loop`` the engine arms its one timer on that loop; without, call
    :meth:`handle_timeouts` at :meth:`next_deadline` (tests, other drivers).

    ``mtu`` is the largest datagram sent (records and flights are cut to it; the plaintext a
    session carries is :attr:`DtlsSession.data_mtu`, 1251 bytes with CCM_8 at 1280).
    ``handshake_deadline`` (< 30 s) ends a handshake that has not completed, with an alert;
    ``retransmit_timeout`` is the first retransmission interval (doubling, RFC 6347).
    ``max_handshakes`` caps half-open sessions (further ClientHellos with valid cookies are
    dropped; clients retry); ``max_sessions`` caps all sessions (the least recently active
    established one is closed to make room); ``idle_timeout`` closes silent sessions (None: never).
    ``x509_cache_size`` verified client chains are remembered (0: verify every handshake).
    """

    def __init__(
        self,
        credentials: CredentialsProvider,
        *,
        mtu: int = 1280,
        handshake_deadline: float = 10.0,
        retransmit_timeout: float = 1.0,
        max_sessions: int = 10000,
        max_handshakes: int = 1000,
        idle_timeout: float | None = 3600.0,
        priority: str = SERVER_PRIORITY,
        x509_cache_size: int = 4096,
        loop: asyncio.AbstractEventLoop | None = None,
        send: Callable[[Addr, bytes], None] | None = None,
        on_established: Callable[[DtlsSession], None] | None = None,
        on_data: Callable[[DtlsSession, bytes], None] | None = None,
        on_closed: Callable[[DtlsSession, str], None] | None = None,
        on_handshake_failed: Callable[[Addr, str], None] | None = None,
    ) -> None:
        if not 0 < handshake_deadline < 30:
            raise ValueError("handshake_deadline must be between 0 and 30 s")
        super().__init__(
            mtu=mtu,
            handshake_deadline=handshake_deadline,
            retransmit_timeout=retransmit_timeout,
            idle_timeout=idle_timeout,
            loop=loop,
            send=send,
            on_established=on_established,
            on_data=on_data,
            on_closed=on_closed,
            on_handshake_failed=on_handshake_failed,
        )
        self.max_sessions = max_sessions
        self.max_handshakes = max_handshakes
        self.x509_cache_size = x509_cache_size
        self._x509_cache: OrderedDict[bytes, tuple[float, X509Principal]] = OrderedDict()
        self._last_status = 0
        self.provider = credentials
        self._priority = priority
        self._creds = _ServerCredentials(credentials, priority)
        self._cookie_sender = _CookieSender(self)
        _links[self._cookie_sender.id] = self._cookie_sender
        self._cookie_keys: list[tuple[g.Datum, Any]] = [g.datum(os.urandom(g.COOKIE_KEY_SIZE))]
        self._cookie_rotate_at = self._now() + COOKIE_ROTATION
        self._init_flags = g.SERVER | g.DATAGRAM | g.NONBLOCK | g.NO_SIGNAL | g.ENABLE_RAWPK

    def reload_credentials(self) -> None:
        """Re-read the server's key pair, certificate and trust store from the provider.

        New handshakes use the new ones; sessions already open keep theirs. PSK and RPK lookups
        always ask the provider and need no reload.
        """
        new = _ServerCredentials(self.provider, self._priority)
        old, self._creds = self._creds, new
        old.release()
        self._x509_cache.clear()

    @property
    def handshaking(self) -> int:
        """Half-open sessions now."""
        return self._handshaking

    def session_for(self, addr: Addr) -> DtlsSession | None:
        """The current session with a peer address, if any."""
        return self._by_addr.get(addr)

    def close_where(self, predicate: Callable[[DtlsSession], bool], reason: str = "closed") -> int:
        """Close (close_notify) every session ``predicate`` selects, e.g. those of a principal whose
        credentials were removed; half-open ones are dropped. Returns how many were closed."""
        chosen = [s for s in self.sessions.values() if predicate(s)]
        for s in chosen:
            self._close(s, reason, notify=True)
        return len(chosen)

    # datagrams in

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        """Process one datagram from ``addr``; never raises for anything a peer can send."""
        self.stats["datagrams"] += 1
        if self._closed:
            return
        try:
            self._datagram(data, addr)
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("DTLS: datagram from %s could not be processed", _show_addr(addr))
            s = self._by_addr.get(addr)
            if s is not None:
                self._destroy(s, "internal error")

    def _datagram(self, data: bytes, addr: Addr) -> None:
        if len(data) < _REC_HEADER:
            self.stats["dropped"] += 1
            return
        now = self._now()
        s = self._by_addr.get(addr)
        random = _client_hello_random(data)
        if s is not None and (random is None or (s.state is SessionState.HANDSHAKING and random == s._hello_random)):
            self._feed(s, data, now)
            return
        if random is None:
            self.stats["dropped"] += 1  # not a handshake start from an unknown address
            return
        prestate = self._verify_cookie(data, addr, now)
        if prestate is None:
            return
        if s is not None:
            if random == s._hello_random:
                self.stats["dropped"] += 1  # a replay of the hello that opened the current session
                return
            log.info("DTLS: new handshake from %s replaces session %d", _show_addr(addr), s.id)
            self._close(s, "replaced by a new handshake", notify=False)
        if not self._make_room(addr):
            return
        self._start(data, addr, random, prestate, now)

    def _verify_cookie(self, data: bytes, addr: Addr, now: float) -> g.DtlsPrestate | None:
        if now >= self._cookie_rotate_at:
            self.rotate_cookie_secret(now)
        client = _addr_key(addr)
        prestate = g.DtlsPrestate()
        if _has_cookie(data):
            for key, _buf in self._cookie_keys:
                if g.dtls_cookie_verify(byref(key), client, len(client), data, len(data), byref(prestate)) == 0:
                    return prestate
        # no valid cookie: answer with a HelloVerifyRequest and keep nothing
        self._cookie_sender.addr = addr
        try:
            rc = g.dtls_cookie_send(
                byref(self._cookie_keys[0][0]),
                client,
                len(client),
                byref(prestate),
                self._cookie_sender.id,
                _PUSH,
            )
        finally:
            self._cookie_sender.addr = None
        if rc < 0:
            self.stats["dropped"] += 1
        else:
            self.stats["cookies_sent"] += 1
        return None

    def rotate_cookie_secret(self, now: float | None = None) -> None:
        """Start signing cookies with a new secret; the previous one is still accepted."""
        self._cookie_keys = [g.datum(os.urandom(g.COOKIE_KEY_SIZE)), self._cookie_keys[0]]
        self._cookie_rotate_at = (self._now() if now is None else now) + COOKIE_ROTATION

    def _make_room(self, addr: Addr) -> bool:
        if self._handshaking >= self.max_handshakes:
            self.stats["handshakes_refused_limit"] += 1
            self.refused.warning(
                "handshake limit",
                "DTLS: %d handshakes in progress: ignoring ClientHello from %s",
                self._handshaking,
                _show_addr(addr),
            )
            return False
        while len(self.sessions) >= self.max_sessions:
            victim = next((s for s in self._by_addr.values() if s.state is SessionState.ESTABLISHED), None)
            if victim is None:
                self.stats["handshakes_refused_limit"] += 1
                return False
            self.stats["sessions_evicted"] += 1
            self.refused.warning(
                "session limit",
                "DTLS: %d sessions: evicting the least recently active, %d with %s",
                len(self.sessions),
                victim.id,
                _show_addr(victim.addr),
            )
            self._close(victim, "evicted: session limit", notify=True)
        return True

    def _start(self, data: bytes, addr: Addr, random: bytes, prestate: g.DtlsPrestate, now: float) -> None:
        s = self._new_session(addr, self._init_flags, now)
        s._hello_random = random
        s._creds = self._creds.acquire()
        h = s._handle
        try:
            g.check(g.priority_set(h, s._creds.priority), "gnutls_priority_set")
            g.check(g.credentials_set(h, g.CredentialsType.PSK, s._creds.psk), "PSK credentials")
            cert = s._creds.cert
            if s._creds.cert_rpk != cert and _wants_raw_public_key(data):
                cert = s._creds.cert_rpk
            if cert:
                g.check(g.credentials_set(h, g.CredentialsType.CERTIFICATE, cert), "certificates")
                g.certificate_server_set_request(h, g.CertificateRequest.REQUIRE)
                # no CA names in the CertificateRequest: smaller flights, and clients send their
                # certificate anyway, so an untrusted one is refused with a clear "unknown CA"
                g.certificate_send_x509_rdn_sequence(h, 1)
            g.dtls_prestate_set(h, byref(prestate))
        except Exception:
            self._destroy(s, "setup failed")
            raise
        self._feed(s, data, now)

    # authentication (called from the GnuTLS callbacks)

    def _lookup_psk(self, s: DtlsSession, identity: bytes) -> bytes | None:
        key = self.provider.psk_key(identity)
        s._fail_reason = ""
        if key is None:
            s._fail_reason = f"unknown PSK identity {_show_identity(identity)}"
            s._fail_alert = g.Alert.UNKNOWN_PSK_IDENTITY
            return None
        s.principal = PskPrincipal(identity)
        return key

    def _wrong_key_reason(self, s: DtlsSession) -> str:
        who = f" for {s.principal}" if isinstance(s.principal, PskPrincipal) else ""
        return f"bad record MAC: the client's Finished could not be decrypted: wrong PSK key{who}"

    def _verify_peer(self, s: DtlsSession) -> bool:
        h = s._handle
        n = c_uint(0)
        peers = g.certificate_get_peers(h, byref(n))
        if not peers or n.value == 0:
            s._fail_reason = "no client certificate or raw public key"
            s._fail_alert = g.Alert.BAD_CERTIFICATE
            return False
        first = g.datum_bytes(peers[0])
        ctype = g.certificate_type_get2(h, g.CtypeTarget.PEERS)
        if ctype == g.CertificateType.RAWPK:
            rpk = RpkPrincipal(first)
            if not self.provider.rpk_allowed(first):
                s._fail_reason = f"unknown raw public key sha256:{rpk.fingerprint}"
                s._fail_alert = g.Alert.ACCESS_DENIED
                return False
            s.principal = rpk
            return True
        if ctype != g.CertificateType.X509:
            s._fail_reason = f"unsupported certificate type {ctype}"
            s._fail_alert = g.Alert.UNSUPPORTED_CERTIFICATE
            return False
        chain = [g.datum_bytes(peers[i]) for i in range(n.value)]
        principal = self._verified_chain(h, chain)
        if principal is None:
            s._fail_reason = "certificate chain error: the chain could not be checked"
            s._fail_alert = g.Alert.BAD_CERTIFICATE
            return False
        cn, chain_error = principal.common_name, principal.chain_error
        alert = _chain_error(self._last_status)[1] if chain_error else -1  # (failures are never cached)
        if not self.provider.x509_allowed(principal):
            s._fail_reason = (
                f"certificate chain error: {chain_error} (CN={cn!r})"
                if chain_error
                else f"certificate CN={cn!r} not accepted"
            )
            s._fail_alert = alert if chain_error else g.Alert.ACCESS_DENIED
            return False
        s.principal = principal
        return True

    def _verified_chain(self, h: int, chain: list[bytes]) -> X509Principal | None:
        """Verify a client's certificate chain against the trust store, remembering good ones.

        A chain that verified is not verified again until it expires or :data:`X509_CACHE_TTL`
        passes (reconnecting devices cost an ECDSA verification less); the handshake still proves
        possession of the key every time. Trust store reloads forget everything.
        """
        key = hashlib.sha256(b"".join(len(c).to_bytes(4, "big") + c for c in chain)).digest()
        cache = self._x509_cache
        now = time.time()
        hit = cache.get(key)
        if hit is not None and hit[0] > now:
            cache.move_to_end(key)
            return hit[1]
        status = c_uint(0)
        purpose = g.TypedVdata(g.DT_KEY_PURPOSE_OID, g.KP_TLS_WWW_CLIENT, 0)
        if g.certificate_verify_peers(h, byref(purpose), 1, byref(status)) < 0:
            return None
        self._last_status = status.value
        cn, sans, not_after = _x509_names(chain[0])
        chain_error, _ = _chain_error(status.value)
        principal = X509Principal(cn, sans, status.value == 0, chain[0], chain_error)
        if status.value == 0 and self.x509_cache_size > 0:
            cache[key] = (min(not_after, now + X509_CACHE_TTL), principal)
            if len(cache) > self.x509_cache_size:
                cache.popitem(last=False)
        return principal

    def _on_established(self, s: DtlsSession) -> None:
        if s.principal is None:  # cannot happen with the credentials set; never admit anonymous
            log.error("DTLS session %d with %s established without a principal", s.id, _show_addr(s.addr))
            self._close(s, "no principal", notify=False)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        _links.pop(self._cookie_sender.id, None)
        self._creds.release()


def _chain_error(status: int) -> tuple[str, int]:
    """A short, clear reason and the matching alert for certificate verification status bits."""
    if status == 0:
        return "", -1
    st = g.CertStatus(status)
    if st & g.CertStatus.EXPIRED:
        return "certificate expired", g.Alert.CERTIFICATE_EXPIRED
    if st & g.CertStatus.NOT_ACTIVATED:
        return "certificate not yet valid", g.Alert.CERTIFICATE_EXPIRED
    if st & g.CertStatus.REVOKED:
        return "certificate revoked", g.Alert.CERTIFICATE_REVOKED
    if st & (g.CertStatus.SIGNER_NOT_FOUND | g.CertStatus.SIGNER_NOT_CA):
        return "unknown CA", g.Alert.UNKNOWN_CA
    if st & g.CertStatus.PURPOSE_MISMATCH:
        return "certificate not for TLS client authentication", g.Alert.UNSUPPORTED_CERTIFICATE
    return g.verification_status_text(status).strip() or f"status 0x{status:x}", g.Alert.BAD_CERTIFICATE


def _x509_names(der: bytes) -> tuple[str | None, tuple[str, ...], float]:
    """Subject CN, subjectAltNames (text) and notAfter (epoch seconds) of a DER certificate."""
    h = g.new_handle()
    g.check(g.x509_crt_init(byref(h)), "gnutls_x509_crt_init")
    crt = int(h.value or 0)
    try:
        d, keep = g.datum(der)
        g.check(g.x509_crt_import(crt, byref(d), g.X509Format.DER), "client certificate")
        del keep
        buf = ctypes.create_string_buffer(1024)
        size = c_size_t(len(buf))
        cn: str | None = None
        if g.x509_crt_get_dn_by_oid(crt, g.OID_X520_COMMON_NAME, 0, 0, buf, byref(size)) == 0:
            cn = buf.raw[: size.value].rstrip(b"\0").decode(errors="replace")
        sans: list[str] = []
        for seq in range(64):
            size = c_size_t(len(buf))
            san_type, critical = c_uint(0), c_uint(0)
            rc = g.x509_crt_get_subject_alt_name2(crt, seq, buf, byref(size), byref(san_type), byref(critical))
            if rc == g.E_REQUESTED_DATA_NOT_AVAILABLE:
                break
            if rc < 0:
                continue
            raw = buf.raw[: size.value]
            if rc == g.SanType.IPADDRESS:
                sans.append(str(ipaddress.ip_address(raw)))
            elif rc in (g.SanType.DNSNAME, g.SanType.RFC822NAME, g.SanType.URI):
                sans.append(raw.rstrip(b"\0").decode(errors="replace"))
        return cn, tuple(sans), float(g.x509_crt_get_expiration_time(crt))
    finally:
        g.x509_crt_deinit(crt)


# --- a client (tests, load generation) ----------------------------------------------------------------

#: Client priorities by mode: what a constrained LwM2M client typically offers (CCM_8 first).
CLIENT_PRIORITY_PSK = (
    "NONE:+VERS-DTLS1.2:+COMP-NULL:+AES-128-CCM-8:+AES-128-GCM:+AES-128-CBC:+AEAD:+SHA256"
    ":+PSK:+ECDHE-PSK:+SIGN-ALL:+GROUP-SECP256R1"
)
CLIENT_PRIORITY_RPK = (
    "NONE:+VERS-DTLS1.2:+COMP-NULL:+AES-128-CCM-8:+AES-128-GCM:+AES-128-CBC:+AEAD:+SHA256"
    ":+ECDHE-ECDSA:+SIGN-ALL:+GROUP-SECP256R1:+CTYPE-CLI-RAWPK:+CTYPE-SRV-RAWPK"
)
CLIENT_PRIORITY_X509 = (
    "NONE:+VERS-DTLS1.2:+COMP-NULL:+AES-128-CCM-8:+AES-128-GCM:+AES-128-CBC:+AEAD:+SHA256"
    ":+ECDHE-ECDSA:+ECDHE-RSA:+SIGN-ALL:+GROUP-SECP256R1:+CTYPE-CLI-X509:+CTYPE-SRV-X509"
)


class _ClientCredentials:
    """One client identity: a GnuTLS credentials object and the priority cache that fits it."""

    def __init__(
        self,
        psk: tuple[bytes, bytes] | None,
        rpk: RpkKeyPair | None,
        x509: X509Credentials | None,
        priority: str | None,
    ) -> None:
        self.kind = g.CredentialsType.PSK if psk is not None else g.CredentialsType.CERTIFICATE
        self.handle = 0
        self.priority = 0
        try:
            self._build(psk, rpk, x509, priority)
        except Exception:
            self.free()
            raise

    def _build(
        self,
        psk: tuple[bytes, bytes] | None,
        rpk: RpkKeyPair | None,
        x509: X509Credentials | None,
        priority: str | None,
    ) -> None:
        h = g.new_handle()
        if psk is not None:
            g.check(g.psk_allocate_client_credentials(byref(h)), "gnutls_psk_allocate_client_credentials")
            self.handle = int(h.value or 0)
            ud, ubuf = g.datum(psk[0])
            kd, kbuf = g.datum(psk[1])
            g.check(g.psk_set_client_credentials2(self.handle, byref(ud), byref(kd), g.PSK_KEY_RAW), "PSK")
            del ubuf, kbuf
            default = CLIENT_PRIORITY_PSK
        else:
            g.check(g.certificate_allocate_credentials(byref(h)), "gnutls_certificate_allocate_credentials")
            self.handle = int(h.value or 0)
            if rpk is not None:
                pd, pbuf = g.datum(rpk.public)
                kd, kbuf = g.datum(rpk.private)
                g.check(
                    g.certificate_set_rawpk_key_mem(
                        self.handle, byref(pd), byref(kd), rpk.format.value, None, 0, None, 0, 0
                    ),
                    "client raw public key pair",
                )
                del pbuf, kbuf
                default = CLIENT_PRIORITY_RPK
            elif x509 is not None:
                cd, cbuf = g.datum(x509.chain)
                kd, kbuf = g.datum(x509.private_key)
                g.check(
                    g.certificate_set_x509_key_mem2(self.handle, byref(cd), byref(kd), x509.format.value, None, 0),
                    "client certificate/key",
                )
                del cbuf, kbuf
                default = CLIENT_PRIORITY_X509
            else:
                raise ValueError("a DTLS client needs psk, rpk or x509 credentials")
        ph = g.new_handle()
        err = ctypes.c_char_p()
        g.check(g.priority_init(byref(ph), (priority or default).encode(), byref(err)), "client priority")
        self.priority = int(ph.value or 0)

    def free(self) -> None:
        if self.handle:
            if self.kind == g.CredentialsType.PSK:
                g.psk_free_client_credentials(self.handle)
            else:
                g.certificate_free_credentials(self.handle)
            self.handle = 0
        if self.priority:
            g.priority_deinit(self.priority)
            self.priority = 0


class DtlsClient(_Engine):
    """A DTLS 1.2 client engine: the server's peer in tests and the load benchmark.

    Same shape as :class:`DtlsServer`: :meth:`connect` starts a handshake and returns its session,
    :meth:`datagram_received` takes what the server sent. It does not verify the server's
    certificate or key (tests check the server side).
    """

    def __init__(
        self,
        *,
        mtu: int = 1280,
        handshake_deadline: float = 10.0,
        retransmit_timeout: float = 1.0,
        loop: asyncio.AbstractEventLoop | None = None,
        send: Callable[[Addr, bytes], None] | None = None,
        on_established: Callable[[DtlsSession], None] | None = None,
        on_data: Callable[[DtlsSession, bytes], None] | None = None,
        on_closed: Callable[[DtlsSession, str], None] | None = None,
        on_handshake_failed: Callable[[Addr, str], None] | None = None,
    ) -> None:
        super().__init__(
            mtu=mtu,
            handshake_deadline=handshake_deadline,
            retransmit_timeout=retransmit_timeout,
            idle_timeout=None,
            loop=loop,
            send=send,
            on_established=on_established,
            on_data=on_data,
            on_closed=on_closed,
            on_handshake_failed=on_handshake_failed,
        )
        self._credentials: dict[tuple[Any, ...], _ClientCredentials] = {}

    def connect(
        self,
        addr: Addr,
        *,
        psk: tuple[bytes, bytes] | None = None,
        rpk: RpkKeyPair | None = None,
        x509: X509Credentials | None = None,
        priority: str | None = None,
    ) -> DtlsSession:
        """Start a handshake with ``addr`` as PSK ``(identity, key)``, RPK or X.509 client."""
        addr = tuple(addr[:2])  # replies come as (host, port[, flowinfo, scope_id]): match on the first two
        key = (psk, rpk, x509, priority)
        creds = self._credentials.get(key)
        if creds is None:
            creds = self._credentials[key] = _ClientCredentials(psk, rpk, x509, priority)
        old = self._by_addr.get(addr)
        if old is not None:
            self._close(old, "replaced by a new handshake", notify=False)
        now = self._now()
        s = self._new_session(addr, g.CLIENT | g.DATAGRAM | g.NONBLOCK | g.NO_SIGNAL | g.ENABLE_RAWPK, now)
        try:
            g.check(g.priority_set(s._handle, creds.priority), "gnutls_priority_set")
            g.check(g.credentials_set(s._handle, creds.kind, creds.handle), "client credentials")
        except Exception:
            self._destroy(s, "setup failed")
            raise
        self._begin(s)
        try:
            self._drive_handshake(s, now)
        finally:
            self._end(s)
        return s

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        """Process one datagram from the server at ``addr``."""
        self.stats["datagrams"] += 1
        s = self._by_addr.get(addr[:2])
        if s is None or self._closed:
            self.stats["dropped"] += 1
            return
        self._feed(s, data, self._now())

    def _on_established(self, s: DtlsSession) -> None:
        s.principal = None  # the client does not authenticate the server here

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        for creds in self._credentials.values():
            creds.free()
        self._credentials.clear()
