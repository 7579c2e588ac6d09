"""The LwM2M clients' credentials: per endpoint, its security mode and the material it authenticates with.

One :class:`ClientStore` per gateway, on the event loop. It is

* the DTLS server's :class:`~gateway.transport.dtls.CredentialsProvider`: ``psk_key``, ``rpk_allowed``
  and ``x509_allowed`` are dictionary lookups (O(1)), run inside the handshake;
* the registry the security binding asks which endpoint a DTLS principal belongs to
  (:mod:`gateway.lwm2m.security`);
* durable: a SQLite file in the state directory (``clients.sqlite3``, WAL, mode 0600), read once at
  start into the in-memory index; every change is written (one transaction, fsync) before it is
  applied to the index and announced to the listeners.

Three ways to manage it, all the same data, each entry marked with where it came from (:class:`Source`):

* the configuration file, ``[[lwm2m.clients]]`` (:class:`ClientConfigEntry`, :func:`check_client_entries`),
  synced at start by :meth:`ClientStore.sync_config`: config-managed entries follow the file, the others
  stay; the CLI and ThingsBoard cannot change a config-managed entry (edit the file instead);
* the CLI, ``edge-gateway clients add|remove|list`` (:func:`configure_cli`, :func:`run_cli`): through the
  running service's control socket (:func:`control_commands`), or on the file when no service runs;
* ThingsBoard, the gateway RPC ``lwm2mClientCredentials`` (:func:`rpc_handler`) taking ThingsBoard's
  LwM2M credentials JSON (:mod:`gateway.lwm2m.tbcredentials`).

Rules: one entry per endpoint; a PSK identity, a raw public key, a pinned certificate or a certificate
name belongs to at most one endpoint (:class:`ClientConflict`). Changes apply without a restart: the DTLS
server asks the store on every handshake, and :func:`follow_dtls` closes the sessions of a client whose
credentials were removed or changed.

Secrets (PSK keys, the bootstrap part's private keys) are never in a log line, a ``repr``, an error
message or :meth:`ClientStore.list_clients`; :meth:`ClientStore.entries` returns them, for code only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import enum
import errno
import fcntl
import getpass
import hashlib
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from gateway.lwm2m.tbcredentials import (
    NO_SEC_IDENTITY,
    BootstrapCredentials,
    ClientCredential,
    CredentialsFormatError,
    LwM2mDeviceCredentials,
    NoSecClient,
    PskClient,
    RpkClient,
    SecurityMode,
    X509Client,
    as_json_object,
    bootstrap_to_json,
    canonical_p256_spki,
    check_endpoint,
    check_psk_identity_bytes,
    p256_spki_from_xy,
    parse_bootstrap,
    parse_certificate,
    parse_credentials,
    parse_der_base64,
)

if TYPE_CHECKING:
    from gateway.transport.dtls import DtlsServer, DtlsSession, RpkKeyPair, TrustStore, X509Credentials, X509Principal

log = logging.getLogger("gateway.store.clients")

CLIENTS_FILE: Final = "clients.sqlite3"
"""The store's file name in the state directory."""

SCHEMA_VERSION: Final = 1
PSK_KEY_MIN, PSK_KEY_MAX = 16, 64
"""PSK key sizes the gateway accepts from the configuration and the CLI (bytes)."""

#: Chain errors a *pinned* certificate may have: it need not chain to the trust store (ThingsBoard's
#: rule: a device whose certificate is configured must present exactly that one), but an expired or
#: not yet valid one is still refused. The text is the DTLS server's (``X509Principal.chain_error``).
PINNED_CHAIN_ERRORS_ACCEPTED: Final = frozenset({"", "unknown CA"})

_BUSY_TIMEOUT_MS: Final = 5000
_LOGGED_CHANGES: Final = 20  # a bulk sync logs the first changes one by one, then a count


class Source(enum.StrEnum):
    """Who manages an entry."""

    CONFIG = "config"
    CLI = "cli"
    THINGSBOARD = "thingsboard"


class ClientStoreError(Exception):
    """The store cannot do what was asked; the message says why (never a secret)."""


class ClientConflict(ClientStoreError):
    """Material that already belongs to another endpoint (``field``: identity, public_key, cert, cn)."""

    def __init__(self, endpoint: str, field: str, owner: str, what: str) -> None:
        super().__init__(f"{what} of {endpoint!r} already belongs to endpoint {owner!r}")
        self.endpoint = endpoint
        self.field = field
        self.owner = owner


class ManagedByConfig(ClientStoreError):
    """The entry comes from the configuration file: only the file changes it."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(
            f"the credentials of {endpoint!r} come from the configuration file ([[lwm2m.clients]]): edit it instead"
        )
        self.endpoint = endpoint


class ClientStoreBusy(ClientStoreError):
    """Another process (the running gateway) holds the store."""


# --- entries ---------------------------------------------------------------------------------------------

_MATERIAL: Final = (("identity", "identity"), ("key", "key"), ("public_key", "public_key"), ("cert", "cert"))
_NOT_USED: Final = {  # (attribute, name in messages) that must be None in each mode
    SecurityMode.NO_SEC: (*_MATERIAL, ("cert_name", "cn")),
    SecurityMode.PSK: (("public_key", "public_key"), ("cert", "cert"), ("cert_name", "cn")),
    SecurityMode.RPK: (("identity", "identity"), ("key", "key"), ("cert", "cert"), ("cert_name", "cn")),
    SecurityMode.X509: (("identity", "identity"), ("key", "key"), ("public_key", "public_key")),
}


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """One endpoint's credentials. Build with :meth:`nosec`, :meth:`psk`, :meth:`rpk`, :meth:`x509` or
    :meth:`from_thingsboard`; the constructor checks the material fits the mode (CredentialsFormatError).

    ``public_key`` is a P-256 SubjectPublicKeyInfo (DER, uncompressed point); ``cert`` a pinned DER
    certificate; ``cert_name`` the CN or subjectAltName an X.509 client must carry when no certificate
    is pinned (None: the endpoint name).
    """

    endpoint: str
    mode: SecurityMode
    identity: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    public_key: bytes | None = None
    cert: bytes | None = None
    cert_name: str | None = None
    source: Source = Source.CLI
    updated_ms: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint, "endpoint")
        mode = self.mode
        for attr, name in _NOT_USED[mode]:
            if getattr(self, attr) is not None:
                raise CredentialsFormatError(name, f"not used in mode {mode.value}")
        if mode is SecurityMode.PSK:
            if self.identity is None:
                raise CredentialsFormatError("identity", "a PSK client needs an identity")
            check_psk_identity_bytes(self.identity, "identity")
            if self.identity == NO_SEC_IDENTITY.encode():
                raise CredentialsFormatError("identity", f"{NO_SEC_IDENTITY!r} is not a usable PSK identity")
            if self.key is None:
                raise CredentialsFormatError("key", "a PSK client needs a key")
            if not PSK_KEY_MIN <= len(self.key) <= PSK_KEY_MAX:
                raise CredentialsFormatError(
                    "key", f"a PSK key is {PSK_KEY_MIN} to {PSK_KEY_MAX} bytes, got {len(self.key)}"
                )
        elif mode is SecurityMode.RPK:
            if self.public_key is None:
                raise CredentialsFormatError("public_key", "an RPK client needs its public key")
            if canonical_p256_spki(self.public_key) != self.public_key:
                raise CredentialsFormatError("public_key", "not in the uncompressed form (use ClientEntry.rpk)")
        elif mode is SecurityMode.X509:
            if self.cert is not None:
                if self.cert_name is not None:
                    raise CredentialsFormatError("cn", "a pinned certificate is matched as a whole, not by name")
                parse_certificate(self.cert, "cert")
            elif self.cert_name is not None and not self.cert_name.strip():
                raise CredentialsFormatError("cn", "empty certificate name")

    # constructors

    @classmethod
    def nosec(cls, endpoint: str, *, source: Source = Source.CLI) -> ClientEntry:
        return cls(endpoint, SecurityMode.NO_SEC, source=source)

    @classmethod
    def psk(cls, endpoint: str, identity: bytes | str, key: bytes, *, source: Source = Source.CLI) -> ClientEntry:
        ident = identity.encode("utf-8", "surrogatepass") if isinstance(identity, str) else identity
        return cls(endpoint, SecurityMode.PSK, identity=ident, key=key, source=source)

    @classmethod
    def rpk(cls, endpoint: str, public_key: bytes, *, source: Source = Source.CLI) -> ClientEntry:
        """``public_key``: a P-256 SubjectPublicKeyInfo in DER (compressed or not)."""
        try:
            spki = canonical_p256_spki(public_key)
        except ValueError as exc:
            raise CredentialsFormatError("public_key", str(exc)) from None
        return cls(endpoint, SecurityMode.RPK, public_key=spki, source=source)

    @classmethod
    def x509(
        cls, endpoint: str, *, cert: bytes | None = None, cert_name: str | None = None, source: Source = Source.CLI
    ) -> ClientEntry:
        """Pin ``cert`` (DER), or bind by name: ``cert_name`` (default: the endpoint) as CN or subjectAltName
        of any certificate the trust store accepts."""
        return cls(endpoint, SecurityMode.X509, cert=cert, cert_name=cert_name, source=source)

    @classmethod
    def from_thingsboard(cls, creds: LwM2mDeviceCredentials | ClientCredential, *, source: Source) -> ClientEntry:
        client = creds.client if isinstance(creds, LwM2mDeviceCredentials) else creds
        match client:
            case NoSecClient():
                return cls.nosec(client.endpoint, source=source)
            case PskClient():
                return cls.psk(client.endpoint, client.identity, client.key, source=source)
            case RpkClient():
                return cls.rpk(client.endpoint, client.public_key, source=source)
            case X509Client():
                return cls.x509(client.endpoint, cert=client.cert, source=source)

    # what it is

    @property
    def bound_name(self) -> str | None:
        """For X.509 without a pinned certificate: the CN/subjectAltName the client must present."""
        if self.mode is not SecurityMode.X509 or self.cert is not None:
            return None
        return self.cert_name or self.endpoint

    @property
    def cert_sha256(self) -> bytes | None:
        return hashlib.sha256(self.cert).digest() if self.cert is not None else None

    @property
    def fingerprint(self) -> str:
        """What people see instead of the material: a short SHA-256 of the key or certificate, or the
        certificate name. For PSK only 32 bits (enough to tell keys apart, no help to guess one)."""
        match self.mode:
            case SecurityMode.PSK:
                assert self.key is not None
                return f"sha256:{hashlib.sha256(self.key).hexdigest()[:8]} ({len(self.key)} bytes)"
            case SecurityMode.RPK:
                assert self.public_key is not None
                return f"sha256:{hashlib.sha256(self.public_key).hexdigest()[:16]}"
            case SecurityMode.X509:
                if self.cert is not None:
                    return f"sha256:{hashlib.sha256(self.cert).hexdigest()[:16]}"
                return f"name:{self.bound_name}"
        return "-"

    def same_material(self, other: ClientEntry) -> bool:
        """Same endpoint, mode and material (source and time aside)."""
        return (self.endpoint, self.mode, self.identity, self.key, self.public_key, self.cert, self.bound_name) == (
            other.endpoint,
            other.mode,
            other.identity,
            other.key,
            other.public_key,
            other.cert,
            other.bound_name,
        )

    def matches(self, principal: object) -> bool:
        """Whether a DTLS principal authenticated as this entry (PSK identity, raw public key, pinned
        certificate, or a certificate carrying the bound name; the chain check is the DTLS layer's)."""
        kind = principal_mode(principal)
        if kind is not self.mode:
            return False
        if kind is SecurityMode.PSK:
            return bool(getattr(principal, "identity", None) == self.identity)
        if kind is SecurityMode.RPK:
            return _canonical_or_none(getattr(principal, "spki_der", b"")) == self.public_key
        if self.cert is not None:
            return bool(getattr(principal, "cert_der", None) == self.cert)
        return self.bound_name in principal_names(principal)

    def summary(self) -> ClientSummary:
        return ClientSummary(
            endpoint=self.endpoint,
            mode=self.mode,
            identity=show_identity(self.identity) if self.identity is not None else None,
            fingerprint=self.fingerprint,
            source=self.source,
            updated_ms=self.updated_ms,
        )

    def __repr__(self) -> str:
        ident = f", identity={self.identity!r}" if self.identity is not None else ""
        return (
            f"ClientEntry({self.endpoint!r}, {self.mode.value}{ident}, {self.fingerprint}, source={self.source.value})"
        )


@dataclass(frozen=True, slots=True)
class ClientSummary:
    """An entry for people and for the RPC: no secrets."""

    endpoint: str
    mode: SecurityMode
    identity: str | None
    fingerprint: str
    source: Source
    updated_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "mode": self.mode.value,
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "source": self.source.value,
            "updatedMs": self.updated_ms,
        }


@dataclass(frozen=True, slots=True)
class ClientChange:
    """One endpoint's entry before and after a change (None: absent)."""

    endpoint: str
    old: ClientEntry | None
    new: ClientEntry | None

    @property
    def action(self) -> Literal["added", "updated", "removed"]:
        return "added" if self.old is None else "removed" if self.new is None else "updated"


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What :meth:`ClientStore.sync_config` did, by endpoint."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: int = 0
    displaced: tuple[str, ...] = ()  # CLI/ThingsBoard entries removed because the file claims their material


ChangeListener = Callable[[Sequence[ClientChange]], None]
"""Called on the loop after each committed change (a batch for :meth:`ClientStore.sync_config`)."""


def principal_mode(principal: object) -> SecurityMode | None:
    """The mode a DTLS principal authenticated with, or None for anything else."""
    from gateway.transport.dtls import PskPrincipal, RpkPrincipal, X509Principal  # loads GnuTLS: only when used

    if isinstance(principal, PskPrincipal):
        return SecurityMode.PSK
    if isinstance(principal, RpkPrincipal):
        return SecurityMode.RPK
    if isinstance(principal, X509Principal):
        return SecurityMode.X509
    return None


def principal_names(principal: object) -> tuple[str, ...]:
    """CN first, then the subjectAltNames, of an X.509 principal (() for others)."""
    cn = getattr(principal, "common_name", None)
    sans = getattr(principal, "sans", ())
    return ((cn,) if isinstance(cn, str) and cn else ()) + tuple(s for s in sans if isinstance(s, str))


def _canonical_or_none(spki: bytes) -> bytes | None:
    if len(spki) == 91:
        return spki  # the usual case; a bad 91-byte key simply matches nothing
    try:
        return canonical_p256_spki(spki)
    except ValueError:
        return None


def show_identity(identity: bytes) -> str:
    """A PSK identity for people: its text when printable UTF-8, else ``hex:...``."""
    try:
        text = identity.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + identity.hex()
    return text if text.isprintable() and not text.startswith("hex:") else "hex:" + identity.hex()


# --- the store -------------------------------------------------------------------------------------------

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS clients (
    endpoint    TEXT PRIMARY KEY NOT NULL,
    mode        TEXT NOT NULL CHECK (mode IN ('NO_SEC', 'PSK', 'RPK', 'X509')),
    identity    BLOB UNIQUE,
    psk_key     BLOB,
    public_key  BLOB UNIQUE,
    cert        BLOB,
    cert_sha256 BLOB UNIQUE,
    cert_name   TEXT,
    source      TEXT NOT NULL,
    bootstrap   TEXT,
    updated_ms  INTEGER NOT NULL
) WITHOUT ROWID
"""
_COLUMNS: Final = (
    "endpoint, mode, identity, psk_key, public_key, cert, cert_sha256, cert_name, source, bootstrap, updated_ms"
)


class ClientStore:
    """The credentials of every LwM2M client (see the module docstring). Open with :meth:`open`.

    The server's own DTLS credentials (``server_rpk``, ``server_x509``, ``trust``) are held here too,
    so the store is a complete :class:`~gateway.transport.dtls.CredentialsProvider`; they come from
    the configuration (:meth:`set_server_credentials`), not from the file.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._entries: dict[str, ClientEntry] = {}
        self._claims = _Claims()
        # the indexes (O(1) lookups), shared with _claims
        self._by_identity = self._claims.identity
        self._by_public_key = self._claims.public_key
        self._by_cert = self._claims.cert  # by SHA-256 of the DER certificate
        self._by_name = self._claims.name  # X.509 entries bound by name
        self._listeners: list[ChangeListener] = []
        self._server_listeners: list[Callable[[], None]] = []
        self._server_rpk: RpkKeyPair | None = None
        self._server_x509: X509Credentials | None = None
        self._trust: TrustStore | None = None
        self.skipped_rows = 0  # rows of the file that could not be used (logged)

    # -- life cycle -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, lock: bool = True) -> ClientStore:
        """Open (or create) the store at ``path`` and load it. With ``lock`` (the service, and the CLI
        when no service runs) only one process may have it open: :class:`ClientStoreBusy` otherwise.
        Raises :class:`ClientStoreError` for a file that cannot be used."""
        path = Path(path)
        lock_fd = _lock(path) if lock else None
        try:
            _create_private(path)
            try:
                conn = sqlite3.connect(str(path), isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
            except sqlite3.Error as exc:
                raise ClientStoreError(f"clients store {path}: cannot open: {exc}") from None
            try:
                _setup(conn, path)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        store = cls(path, conn, lock_fd)
        store._load()
        return store

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ClientStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ClientStoreError(f"clients store {self.path} is closed")
        return self._conn

    def _load(self) -> None:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM clients").fetchall()
        for row in rows:
            try:
                entry = _entry_from_row(row)
                self._check_unique(entry)
            except (CredentialsFormatError, ClientStoreError, ValueError, TypeError) as exc:
                self.skipped_rows += 1
                log.error("clients store %s: entry %r unusable (%s): skipped", self.path, row[0], exc)
                continue
            self._index(entry)

    # -- CredentialsProvider (the DTLS server) ---------------------------------------------------------

    def psk_key(self, identity: bytes) -> bytes | None:
        entry = self._by_identity.get(identity)
        return entry.key if entry is not None else None

    def rpk_allowed(self, spki_der: bytes) -> bool:
        key = _canonical_or_none(spki_der)
        return key is not None and key in self._by_public_key

    def x509_allowed(self, principal: X509Principal) -> bool:
        return self._x509_entry(principal) is not None

    def _x509_entry(self, principal: X509Principal) -> ClientEntry | None:
        pinned = self._by_cert.get(hashlib.sha256(principal.cert_der).digest())
        if pinned is not None:
            return pinned if principal.chain_error in PINNED_CHAIN_ERRORS_ACCEPTED else None
        if not principal.chain_ok:
            return None
        for name in principal_names(principal):
            entry = self._by_name.get(name)
            if entry is not None:
                return entry
        return None

    @property
    def server_rpk(self) -> RpkKeyPair | None:
        return self._server_rpk

    @property
    def server_x509(self) -> X509Credentials | None:
        return self._server_x509

    @property
    def trust(self) -> TrustStore | None:
        return self._trust

    def set_server_credentials(
        self,
        *,
        rpk: RpkKeyPair | None = None,
        x509: X509Credentials | None = None,
        trust: TrustStore | None = None,
    ) -> None:
        """The server's own key pair, certificate chain and trust store (from the configuration); the
        server listeners (the DTLS server's reload) hear about it."""
        self._server_rpk, self._server_x509, self._trust = rpk, x509, trust
        for listener in list(self._server_listeners):
            try:
                listener()
            except Exception:
                log.exception("clients store: server credentials listener %r failed", listener)

    # -- lookups ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._entries

    def get(self, endpoint: str) -> ClientEntry | None:
        return self._entries.get(endpoint)

    def by_psk_identity(self, identity: bytes) -> ClientEntry | None:
        return self._by_identity.get(identity)

    def by_public_key(self, spki_der: bytes) -> ClientEntry | None:
        key = _canonical_or_none(spki_der)
        return self._by_public_key.get(key) if key is not None else None

    def by_certificate(self, cert_der: bytes) -> ClientEntry | None:
        """The entry that pins exactly this certificate."""
        return self._by_cert.get(hashlib.sha256(cert_der).digest())

    def by_cert_name(self, name: str) -> ClientEntry | None:
        """The X.509 entry bound to this CN/subjectAltName (no pinned certificate)."""
        return self._by_name.get(name)

    def entry_for(self, principal: object) -> ClientEntry | None:
        """The entry a DTLS principal authenticated as (None: none, any more)."""
        match principal_mode(principal):
            case SecurityMode.PSK:
                return self._by_identity.get(getattr(principal, "identity", b""))
            case SecurityMode.RPK:
                return self.by_public_key(getattr(principal, "spki_der", b""))
            case SecurityMode.X509:
                return self._x509_entry(cast("X509Principal", principal))
        return None

    def entries(self) -> list[ClientEntry]:
        """Every entry, with its secrets, by endpoint (for code; show :meth:`list_clients` to people)."""
        return [self._entries[k] for k in sorted(self._entries)]

    def list_clients(self) -> list[ClientSummary]:
        """Every entry without secrets, by endpoint."""
        return [e.summary() for e in self.entries()]

    def bootstrap_for(self, endpoint: str) -> BootstrapCredentials | None:
        """The ``bootstrap`` part ThingsBoard sent with the endpoint's credentials, if any (read from the
        file: the bootstrap server asks once per Bootstrap-Request)."""
        row = self.conn.execute("SELECT bootstrap FROM clients WHERE endpoint = ?", (endpoint,)).fetchone()
        if row is None or row[0] is None:
            return None
        try:
            return parse_bootstrap(json.loads(row[0]))
        except (CredentialsFormatError, ValueError) as exc:
            log.error("clients store %s: bootstrap part of %r unusable (%s)", self.path, endpoint, exc)
            return None

    # -- changes ------------------------------------------------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def add_server_listener(self, listener: Callable[[], None]) -> None:
        self._server_listeners.append(listener)

    def remove_server_listener(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._server_listeners.remove(listener)

    def add(self, entry: ClientEntry, *, bootstrap: BootstrapCredentials | None = None) -> ClientChange:
        """Add a new endpoint; ClientStoreError if it exists (use :meth:`put` to replace)."""
        if entry.endpoint in self._entries:
            raise ClientStoreError(f"endpoint {entry.endpoint!r} already has credentials (replace them explicitly)")
        change = self.put(entry, bootstrap=bootstrap)
        assert change is not None
        return change

    def update(self, entry: ClientEntry, *, bootstrap: BootstrapCredentials | None = None) -> ClientChange | None:
        """Replace an existing endpoint's credentials; ClientStoreError if it has none."""
        if entry.endpoint not in self._entries:
            raise ClientStoreError(f"endpoint {entry.endpoint!r} has no credentials to update")
        return self.put(entry, bootstrap=bootstrap)

    def put(self, entry: ClientEntry, *, bootstrap: BootstrapCredentials | None = None) -> ClientChange | None:
        """Add or replace ``entry`` (its ``source`` says who asks); None when nothing changed.

        Raises :class:`ManagedByConfig` when a CLI/ThingsBoard change meets a config-managed entry,
        :class:`ClientConflict` when the material belongs to another endpoint, ClientStoreError (and
        changes nothing) when the file cannot be written.
        """
        old = self._entries.get(entry.endpoint)
        if old is not None and old.source is Source.CONFIG and entry.source is not Source.CONFIG:
            raise ManagedByConfig(entry.endpoint)
        self._check_unique(entry)
        boot_text = _bootstrap_text(bootstrap)
        if (
            old is not None
            and old.same_material(entry)
            and old.source is entry.source
            and boot_text == self._stored_bootstrap(entry.endpoint)
        ):
            return None
        new = dataclasses.replace(entry, updated_ms=_now_ms())
        change = ClientChange(entry.endpoint, old, new)
        self._commit([change], {entry.endpoint: boot_text})
        return change

    def remove(self, endpoint: str, *, by: Source = Source.CLI) -> ClientChange | None:
        """Remove an endpoint's credentials (None if it had none); its DTLS sessions end (listeners)."""
        old = self._entries.get(endpoint)
        if old is None:
            return None
        if old.source is Source.CONFIG and by is not Source.CONFIG:
            raise ManagedByConfig(endpoint)
        change = ClientChange(endpoint, old, None)
        self._commit([change], {})
        return change

    def sync_config(self, entries: Sequence[ClientEntry]) -> SyncResult:
        """Make the config-managed entries exactly ``entries`` (all with source CONFIG), in one
        transaction: new ones added, changed ones replaced, config entries no longer listed removed,
        CLI/ThingsBoard entries kept, except those the file takes over (same endpoint: replaced;
        material the file claims for another endpoint: removed, with a warning)."""
        wanted: dict[str, ClientEntry] = {}
        for e in entries:
            if e.source is not Source.CONFIG:
                e = dataclasses.replace(e, source=Source.CONFIG)
            if e.endpoint in wanted:
                raise ClientStoreError(f"endpoint {e.endpoint!r} is listed twice in the configuration")
            wanted[e.endpoint] = e
        # the file's entries claim their material first
        claims = _Claims()
        for e in wanted.values():
            owner = claims.owner_of(e)
            if owner is not None:
                raise ClientConflict(e.endpoint, owner[0], owner[1], owner[2])
            claims.add(e)
        changes: list[ClientChange] = []
        displaced: list[str] = []
        unchanged = 0
        for ep, old in self._entries.items():
            if ep in wanted:
                continue
            if old.source is Source.CONFIG:
                changes.append(ClientChange(ep, old, None))
            elif claims.owner_of(old) is not None:
                displaced.append(ep)
                changes.append(ClientChange(ep, old, None))
                log.warning(
                    "clients: %s credentials of %r removed: the configuration file gives its %s to another endpoint",
                    old.source.value,
                    ep,
                    old.mode.value,
                )
        now = _now_ms()
        for ep, e in wanted.items():
            current = self._entries.get(ep)
            if current is not None and current.source is Source.CONFIG and current.same_material(e):
                unchanged += 1
                continue
            if current is not None and current.source is not Source.CONFIG:
                log.info("clients: %r is now managed by the configuration file (was %s)", ep, current.source.value)
            changes.append(ClientChange(ep, current, dataclasses.replace(e, updated_ms=now)))
        if changes:
            self._commit(changes, {c.endpoint: None for c in changes if c.new is not None})
        return SyncResult(
            added=tuple(c.endpoint for c in changes if c.action == "added"),
            updated=tuple(c.endpoint for c in changes if c.action == "updated"),
            removed=tuple(c.endpoint for c in changes if c.action == "removed" and c.endpoint not in displaced),
            unchanged=unchanged,
            displaced=tuple(displaced),
        )

    # -- internals ------------------------------------------------------------------------------------

    def _check_unique(self, entry: ClientEntry) -> None:
        owner = self._claims.owner_of(entry)
        if owner is not None:
            raise ClientConflict(entry.endpoint, owner[0], owner[1], owner[2])

    def _stored_bootstrap(self, endpoint: str) -> str | None:
        row = self.conn.execute("SELECT bootstrap FROM clients WHERE endpoint = ?", (endpoint,)).fetchone()
        return None if row is None else cast("str | None", row[0])

    def _commit(self, changes: Sequence[ClientChange], bootstrap: Mapping[str, str | None]) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM clients WHERE endpoint = ?", [(c.endpoint,) for c in changes])
                conn.executemany(
                    f"INSERT INTO clients ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_row(c.new, bootstrap.get(c.endpoint)) for c in changes if c.new is not None],
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise ClientStoreError(f"clients store {self.path}: conflicting entries ({exc})") from None
        except sqlite3.Error as exc:
            raise ClientStoreError(f"clients store {self.path}: cannot write: {exc}") from None
        for c in changes:
            if c.old is not None:
                self._unindex(c.old)
        for c in changes:
            if c.new is not None:
                self._index(c.new)
        for c in changes[:_LOGGED_CHANGES]:
            shown = c.new if c.new is not None else c.old
            if shown is not None:
                log.info("clients: %s %r (%s, %s)", c.action, c.endpoint, shown.mode.value, shown.source.value)
        if len(changes) > _LOGGED_CHANGES:
            log.info("clients: %d more changes", len(changes) - _LOGGED_CHANGES)
        for listener in list(self._listeners):
            try:
                listener(changes)
            except Exception:
                log.exception("clients store: listener %r failed", listener)

    def _index(self, e: ClientEntry) -> None:
        self._entries[e.endpoint] = e
        self._claims.add(e)

    def _unindex(self, e: ClientEntry) -> None:
        if self._entries.get(e.endpoint) is e:
            del self._entries[e.endpoint]
        self._claims.discard(e)

    def __repr__(self) -> str:
        return f"<ClientStore {self.path} {len(self._entries)} clients>"


class _Claims:
    """Who owns which material: PSK identities, raw public keys, pinned certificates (by SHA-256),
    certificate names. Each key belongs to one endpoint."""

    __slots__ = ("cert", "identity", "name", "public_key")

    def __init__(self) -> None:
        self.identity: dict[bytes, ClientEntry] = {}
        self.public_key: dict[bytes, ClientEntry] = {}
        self.cert: dict[bytes, ClientEntry] = {}
        self.name: dict[str, ClientEntry] = {}

    def owner_of(self, e: ClientEntry) -> tuple[str, str, str] | None:
        """(field, owner endpoint, what) for the first of ``e``'s material another endpoint owns."""
        checks: list[tuple[ClientEntry | None, str, str]] = []
        if e.identity is not None:
            checks.append((self.identity.get(e.identity), "identity", f"PSK identity {show_identity(e.identity)!r}"))
        if e.public_key is not None:
            checks.append((self.public_key.get(e.public_key), "public_key", f"raw public key {e.fingerprint}"))
        sha = e.cert_sha256
        if sha is not None:
            checks.append((self.cert.get(sha), "cert", f"certificate {e.fingerprint}"))
        name = e.bound_name
        if name is not None:
            checks.append((self.name.get(name), "cn", f"certificate name {name!r}"))
        for owner, field_name, what in checks:
            if owner is not None and owner.endpoint != e.endpoint:
                return field_name, owner.endpoint, what
        return None

    def add(self, e: ClientEntry) -> None:
        if e.identity is not None:
            self.identity[e.identity] = e
        if e.public_key is not None:
            self.public_key[e.public_key] = e
        sha = e.cert_sha256
        if sha is not None:
            self.cert[sha] = e
        name = e.bound_name
        if name is not None:
            self.name[name] = e

    def discard(self, e: ClientEntry) -> None:
        if e.identity is not None and self.identity.get(e.identity) is e:
            del self.identity[e.identity]
        if e.public_key is not None and self.public_key.get(e.public_key) is e:
            del self.public_key[e.public_key]
        sha = e.cert_sha256
        if sha is not None and self.cert.get(sha) is e:
            del self.cert[sha]
        name = e.bound_name
        if name is not None and self.name.get(name) is e:
            del self.name[name]


def _row(e: ClientEntry, bootstrap: str | None) -> tuple[Any, ...]:
    return (
        e.endpoint,
        e.mode.value,
        e.identity,
        e.key,
        e.public_key,
        e.cert,
        e.cert_sha256,
        e.cert_name,
        e.source.value,
        bootstrap,
        e.updated_ms,
    )


def _entry_from_row(row: Sequence[Any]) -> ClientEntry:
    endpoint, mode, identity, key, public_key, cert, _sha, cert_name, source, _boot, updated_ms = row
    if not all(v is None or isinstance(v, bytes) for v in (identity, key, public_key, cert)):
        raise TypeError("key material stored as text, not as a blob")
    return ClientEntry(
        endpoint=endpoint,
        mode=SecurityMode(mode),
        identity=identity,
        key=key,
        public_key=public_key,
        cert=cert,
        cert_name=cert_name,
        source=Source(source),
        updated_ms=int(updated_ms),
    )


def _bootstrap_text(bootstrap: BootstrapCredentials | None) -> str | None:
    return None if bootstrap is None else json.dumps(bootstrap_to_json(bootstrap), separators=(",", ":"))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _lock(path: Path) -> int:
    """An exclusive flock on ``<file>.lock`` (never on the database: closing another descriptor of it
    would drop SQLite's own locks)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ClientStoreError(f"clients store: cannot create {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ClientStoreBusy(f"clients store {path} is in use by another process (the running gateway)") from None
        raise ClientStoreError(f"clients store: cannot lock {lock_path}: {exc.strerror}") from None
    return fd


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does (SQLite would use the umask); tighten an existing one."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ClientStoreError(f"clients store {path}: cannot open: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
    except OSError as exc:
        log.warning("clients store %s: cannot make it private (mode 0600): %s", path, exc.strerror)
    finally:
        os.close(fd)


def _setup(conn: sqlite3.Connection, path: Path) -> None:
    try:
        row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise ClientStoreError(f"clients store {path}: cannot use WAL mode")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ClientStoreError(
                    f"clients store {path}: written by a newer gateway "
                    f"(schema {version}, this one reads {SCHEMA_VERSION})"
                )
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        raise ClientStoreError(f"clients store {path}: not usable ({exc}): move it aside to start empty") from None
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.chmod(f"{path}{suffix}", 0o600)


# --- the DTLS server follows the store ----------------------------------------------------------------------


def follow_dtls(store: ClientStore, server: DtlsServer) -> Callable[[], None]:
    """Keep ``server`` in step with ``store``: sessions authenticated as an entry that was removed, or
    whose material changed, are closed (close_notify); new server credentials reload the server. PSK,
    RPK and X.509 lookups always ask the store, so additions need nothing. Returns an unsubscribe."""

    def on_change(changes: Sequence[ClientChange]) -> None:
        identities: set[bytes] = set()
        keys: set[bytes] = set()
        certs: set[bytes] = set()
        names: set[str] = set()
        for c in changes:
            old = c.old
            if old is None or (c.new is not None and c.new.same_material(old)):
                continue
            if old.identity is not None:
                identities.add(old.identity)
            if old.public_key is not None:
                keys.add(old.public_key)
            if old.cert is not None:
                certs.add(old.cert)
            if old.bound_name is not None:
                names.add(old.bound_name)
        if not (identities or keys or certs or names):
            return

        def stale(session: DtlsSession) -> bool:
            p = session.principal
            match principal_mode(p):
                case SecurityMode.PSK:
                    return getattr(p, "identity", None) in identities
                case SecurityMode.RPK:
                    return _canonical_or_none(getattr(p, "spki_der", b"")) in keys
                case SecurityMode.X509:
                    if getattr(p, "cert_der", None) in certs:
                        return True
                    return bool(names) and any(n in names for n in principal_names(p)) and store.entry_for(p) is None
            return False

        closed = server.close_where(stale, "credentials removed or changed")
        if closed:
            log.info("clients: closed %d DTLS session(s) whose credentials were removed or changed", closed)

    def on_server() -> None:
        server.reload_credentials()

    store.add_listener(on_change)
    store.add_server_listener(on_server)

    def unsubscribe() -> None:
        store.remove_listener(on_change)
        store.remove_server_listener(on_server)

    return unsubscribe


# --- material in the configuration file and on the command line ------------------------------------------


def decode_psk_key(text: str, where: str = "key") -> bytes:
    """A PSK key written as ``hex:...`` (or bare hex), ``text:...`` (UTF-8) or ``base64:...``; 16-64 bytes."""
    raw = _decode_prefixed(text.strip(), where, default="hex", what="PSK key", kinds=("hex", "text", "base64"))
    if not PSK_KEY_MIN <= len(raw) <= PSK_KEY_MAX:
        raise CredentialsFormatError(where, f"a PSK key is {PSK_KEY_MIN} to {PSK_KEY_MAX} bytes, got {len(raw)}")
    return raw


def decode_psk_identity(text: str, where: str = "identity") -> bytes:
    """A PSK identity written as text (UTF-8, or ``text:...``) or ``hex:...``; 1-128 bytes."""
    raw = _decode_prefixed(text, where, default="text", what="PSK identity", kinds=("hex", "text"))
    check_psk_identity_bytes(raw, where)
    if raw == NO_SEC_IDENTITY.encode():
        raise CredentialsFormatError(where, f"{NO_SEC_IDENTITY!r} is not a usable PSK identity")
    return raw


def _decode_prefixed(text: str, where: str, *, default: str, what: str, kinds: tuple[str, ...]) -> bytes:
    kind, sep, body = text.partition(":")
    if not sep or kind not in kinds:
        kind, body = default, text
    if not body:
        raise CredentialsFormatError(where, f"empty {what}")
    try:
        if kind == "hex":
            return bytes.fromhex("".join(body.replace(":", " ").split()))
        if kind == "base64":
            return base64.b64decode("".join(body.split()), validate=True)
    except (ValueError, binascii.Error):
        hint = ' (write text keys as "text:...")' if kind == "hex" and default == "hex" else ""
        raise CredentialsFormatError(where, f"the {what} is not valid {kind}{hint}") from None
    return body.encode("utf-8", "surrogatepass")


def decode_public_key(text: str, where: str = "public_key") -> bytes:
    """A P-256 public key as the SubjectPublicKeyInfo the DTLS client sends: from PEM, base64 DER, hex
    DER, hex ``04||x||y`` or ``x||y``, or ``"x,y"`` in hex."""
    text = text.strip()
    if not text:
        raise CredentialsFormatError(where, "empty public key")
    try:
        if text.startswith("-----BEGIN"):
            return canonical_p256_spki(parse_der_base64(text, where, "PUBLIC KEY"))
        kind, sep, body = text.partition(":")
        if sep and kind in ("hex", "base64"):
            text = body.strip()
        if "," in text:
            x, y = (bytes.fromhex(p.strip()) for p in text.split(",", 1))
            return p256_spki_from_xy(x, y)
        if kind != "base64":
            try:
                raw = bytes.fromhex("".join(text.split()))
            except ValueError:
                if kind == "hex":
                    raise CredentialsFormatError(where, "not valid hex") from None
                raw = b""
            if raw:
                if len(raw) == 64:
                    return p256_spki_from_xy(raw[:32], raw[32:])
                if len(raw) == 65 and raw[0] == 4:
                    return p256_spki_from_xy(raw[1:33], raw[33:])
                return canonical_p256_spki(raw)
        return canonical_p256_spki(parse_der_base64(text, where, "PUBLIC KEY"))
    except ValueError as exc:
        if isinstance(exc, CredentialsFormatError):
            raise
        raise CredentialsFormatError(where, str(exc)) from None


def decode_certificate(text_or_path: str | bytes, where: str = "cert", *, base_dir: Path | None = None) -> bytes:
    """A DER certificate from PEM text, base64 DER, raw DER bytes, or a file holding PEM or DER."""
    data = text_or_path
    if isinstance(data, str):
        text = data.strip()
        if not text:
            raise CredentialsFormatError(where, "empty certificate")
        if text.startswith("-----BEGIN"):
            return _certificate_der(text, where)
        with contextlib.suppress(CredentialsFormatError):
            return _certificate_der(text, where)  # base64 DER
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CredentialsFormatError(where, f"cannot read {path}: {exc.strerror}") from None
    if data.startswith(b"\x30"):
        parse_certificate(data, where)
        return data
    try:
        return _certificate_der(data.decode("ascii"), where)
    except UnicodeDecodeError:
        raise CredentialsFormatError(where, "neither a PEM nor a DER certificate") from None


def _certificate_der(text: str, where: str) -> bytes:
    der = parse_der_base64(text, where, "CERTIFICATE")
    parse_certificate(der, where)
    return der


# --- the configuration file: [[lwm2m.clients]] -----------------------------------------------------------------


def _opt(default: str, doc: str, **meta: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **meta})


@dataclass(frozen=True, slots=True)
class ClientConfigEntry:
    """One ``[[lwm2m.clients]]`` table of the configuration file (config-managed credentials)."""

    endpoint: str = _opt("", "endpoint name the device registers with (ep=)")
    mode: Literal["NO_SEC", "PSK", "RPK", "X509"] = _opt("NO_SEC", "security mode")
    identity: str = _opt("", "PSK identity: text, or hex:...; empty: the endpoint name")
    key: str = _opt("", "PSK key, 16-64 bytes: hex, or text:..., base64:...", secret=True)
    key_file: str = _opt("", "file holding the PSK key in the same notation (instead of key)", secret_path=True)
    public_key: str = _opt("", 'RPK: the device\'s P-256 public key: PEM, base64 DER, hex DER, hex x||y or "x,y"')
    cert: str = _opt("", "X509: pin this certificate (a PEM/DER file, PEM text or base64 DER)")
    cn: str = _opt("", "X509 without cert: the CN or subjectAltName the device certificate must carry; empty: endpoint")


def client_entry_from_config(c: ClientConfigEntry, *, base_dir: Path | None = None) -> ClientEntry:
    """The store entry for one ``[[lwm2m.clients]]`` table; CredentialsFormatError names the key."""
    endpoint = check_endpoint(c.endpoint, "endpoint")
    mode = SecurityMode.parse(c.mode, "mode")
    used = {
        SecurityMode.NO_SEC: set(),
        SecurityMode.PSK: {"identity", "key", "key_file"},
        SecurityMode.RPK: {"public_key"},
        SecurityMode.X509: {"cert", "cn"},
    }[mode]
    for name in ("identity", "key", "key_file", "public_key", "cert", "cn"):
        if getattr(c, name) and name not in used:
            raise CredentialsFormatError(name, f'not used with mode = "{mode.value}"')
    match mode:
        case SecurityMode.NO_SEC:
            return ClientEntry.nosec(endpoint, source=Source.CONFIG)
        case SecurityMode.PSK:
            identity = decode_psk_identity(c.identity, "identity") if c.identity else endpoint.encode()
            if c.key and c.key_file:
                raise CredentialsFormatError("key_file", "give key or key_file, not both")
            if c.key_file:
                key_path = Path(c.key_file).expanduser()
                if not key_path.is_absolute() and base_dir is not None:
                    key_path = base_dir / key_path
                try:
                    key_text = key_path.read_text().strip()
                except (OSError, UnicodeDecodeError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) else "not text"
                    raise CredentialsFormatError("key_file", f"cannot read {key_path}: {why}") from None
                key = decode_psk_key(key_text, "key_file")
            elif c.key:
                key = decode_psk_key(c.key, "key")
            else:
                raise CredentialsFormatError("key", 'required with mode = "PSK" (or key_file)')
            return ClientEntry.psk(endpoint, identity, key, source=Source.CONFIG)
        case SecurityMode.RPK:
            if not c.public_key:
                raise CredentialsFormatError("public_key", 'required with mode = "RPK"')
            return ClientEntry(endpoint, mode, public_key=decode_public_key(c.public_key), source=Source.CONFIG)
        case SecurityMode.X509:
            if c.cert and c.cn:
                raise CredentialsFormatError("cn", "give cert (pinned) or cn (bound by name), not both")
            cert = decode_certificate(c.cert, "cert", base_dir=base_dir) if c.cert else None
            return ClientEntry.x509(endpoint, cert=cert, cert_name=c.cn or None, source=Source.CONFIG)


def check_client_entries(
    entries: Sequence[ClientConfigEntry],
    *,
    label: str,
    where: str = "lwm2m.clients",
    base_dir: Path | None = None,
) -> tuple[list[ClientEntry], list[str]]:
    """Validate ``[[lwm2m.clients]]``: every problem as ``<label>: lwm2m.clients[3].key: ...`` (with the
    endpoint named), duplicates of endpoints, PSK identities, raw public keys and certificates across
    tables included. Returns the store entries (of the valid tables) and the problems."""
    out: list[ClientEntry] = []
    problems: list[str] = []
    claims = _Claims()
    seen: dict[str, int] = {}
    for i, c in enumerate(entries):
        at = f"{label}: {where}[{i}]"
        named = f" (endpoint {c.endpoint!r})" if c.endpoint else ""
        try:
            entry = client_entry_from_config(c, base_dir=base_dir)
        except CredentialsFormatError as exc:
            problems.append(f"{at}.{exc.field}: {exc.problem}{named}")
            continue
        if entry.endpoint in seen:
            problems.append(f"{at}.endpoint: {entry.endpoint!r} is already listed at {where}[{seen[entry.endpoint]}]")
            continue
        owner = claims.owner_of(entry)
        if owner is not None:
            field_name, other, what = owner
            problems.append(f"{at}.{field_name}: the {what} is also given to endpoint {other!r}{named}")
            continue
        seen[entry.endpoint] = i
        claims.add(entry)
        out.append(entry)
    return out, problems


# --- management: the control socket (CLI), ThingsBoard's RPC ---------------------------------------------------


def entry_to_wire(entry: ClientEntry) -> dict[str, Any]:
    """An entry as JSON for the control socket (it holds the key: only for that 0600 socket)."""
    out: dict[str, Any] = {"endpoint": entry.endpoint, "mode": entry.mode.value}
    if entry.identity is not None:
        out["identity_hex"] = entry.identity.hex()
    if entry.key is not None:
        out["key_hex"] = entry.key.hex()
    if entry.public_key is not None:
        out["public_key_b64"] = base64.b64encode(entry.public_key).decode()
    if entry.cert is not None:
        out["cert_b64"] = base64.b64encode(entry.cert).decode()
    if entry.cert_name is not None:
        out["cert_name"] = entry.cert_name
    return out


def entry_from_wire(obj: object, source: Source) -> ClientEntry:
    if not isinstance(obj, Mapping):
        raise ValueError("expected an entry object")
    try:

        def raw(name: str, decode: Callable[[str], bytes]) -> bytes | None:
            v = obj.get(name)
            return decode(v) if isinstance(v, str) else None

        return ClientEntry(
            endpoint=str(obj.get("endpoint", "")),
            mode=SecurityMode.parse(obj.get("mode"), "mode"),
            identity=raw("identity_hex", bytes.fromhex),
            key=raw("key_hex", bytes.fromhex),
            public_key=raw("public_key_b64", base64.b64decode),
            cert=raw("cert_b64", base64.b64decode),
            cert_name=obj.get("cert_name") if isinstance(obj.get("cert_name"), str) else None,
            source=source,
        )
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"invalid entry: {exc}") from None


ControlCommand = Callable[[dict[str, Any]], Awaitable[Any]]


def control_commands(store: ClientStore) -> dict[str, ControlCommand]:
    """The running service's side of ``edge-gateway clients``: register each on the ControlServer.
    Errors are ValueErrors (the control socket's error reply)."""

    async def add(req: dict[str, Any]) -> Any:
        entry = entry_from_wire(req.get("entry"), Source.CLI)
        try:
            change = store.put(entry) if req.get("replace") else store.add(entry)
        except ClientStoreError as exc:
            raise ValueError(str(exc)) from None
        return _result(store, entry.endpoint, change)

    async def remove(req: dict[str, Any]) -> Any:
        endpoint = req.get("endpoint")
        if not isinstance(endpoint, str):
            raise ValueError("expected an endpoint name")
        try:
            change = store.remove(endpoint, by=Source.CLI)
        except ClientStoreError as exc:
            raise ValueError(str(exc)) from None
        if change is None:
            raise ValueError(f"endpoint {endpoint!r} has no credentials")
        return {"endpoint": endpoint, "result": "removed"}

    async def list_(_req: dict[str, Any]) -> Any:
        return [s.as_dict() for s in store.list_clients()]

    return {"clients.add": add, "clients.remove": remove, "clients.list": list_}


def _result(store: ClientStore, endpoint: str, change: ClientChange | None) -> dict[str, Any]:
    entry = store.get(endpoint)
    out: dict[str, Any] = {"result": "unchanged" if change is None else change.action}
    if entry is not None:
        out.update(entry.summary().as_dict())
    return out


RPC_METHOD: Final = "lwm2mClientCredentials"


def rpc_handler(store: ClientStore) -> Callable[[Any], Awaitable[Any]]:
    """The gateway RPC :data:`RPC_METHOD`: params are ThingsBoard's LwM2M credentials (object, JSON
    text, or a DeviceCredentials envelope), or ``{"remove": "<endpoint>"}``. The result names the
    endpoint, mode, what happened and the fingerprint, never a secret. Errors are RpcErrors with
    codes ``bad_credentials``, ``conflict``, ``managed_by_config``, ``not_found``, ``store_error``."""
    from gateway.core.hub import RpcError

    async def lwm2m_client_credentials(params: Any) -> Any:
        try:
            obj = as_json_object(params, "params")
        except CredentialsFormatError as exc:
            raise RpcError("bad_credentials", str(exc)) from None
        try:
            if "remove" in obj:
                endpoint = obj["remove"]
                if len(obj) != 1 or not isinstance(endpoint, str):
                    raise RpcError("bad_credentials", 'expected {"remove": "<endpoint>"}')
                change = store.remove(endpoint, by=Source.THINGSBOARD)
                if change is None:
                    raise RpcError("not_found", f"endpoint {endpoint!r} has no credentials on this gateway")
                return {"endpoint": endpoint, "result": "removed"}
            creds = parse_credentials(obj)
            entry = ClientEntry.from_thingsboard(creds, source=Source.THINGSBOARD)
            change = store.put(entry, bootstrap=creds.bootstrap)
        except CredentialsFormatError as exc:
            raise RpcError("bad_credentials", str(exc)) from None
        except ManagedByConfig as exc:
            raise RpcError("managed_by_config", str(exc)) from None
        except ClientConflict as exc:
            raise RpcError("conflict", str(exc)) from None
        except ClientStoreError as exc:
            raise RpcError("store_error", str(exc)) from None
        out = _result(store, entry.endpoint, change)
        out["credentialsId"] = creds.credentials_id
        return out

    return lwm2m_client_credentials


# --- the CLI: edge-gateway clients add|remove|list ----------------------------------------------------------------

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

_CLI_MODES: Final = {"nosec": "NO_SEC", "no_sec": "NO_SEC", "psk": "PSK", "rpk": "RPK", "x509": "X509"}

CLI_EPILOG: Final = """\
examples:
  edge-gateway clients add sensor-7 --mode psk --identity sensor-7-id      (asks for the key, not echoed)
  edge-gateway clients add sensor-7 --mode psk --key-file /root/sensor-7.key
  edge-gateway clients add meter-2 --mode rpk --public-key-file meter-2.pub.pem
  edge-gateway clients add cam-1 --mode x509 --cn cam-1.example            (any trusted certificate with that name)
  edge-gateway clients add --thingsboard-json device-credentials.json
  edge-gateway clients remove sensor-7
  edge-gateway clients list [--json]
Key notation: hex (default), text:..., base64:...; keys are never taken on the command line.
"""


def configure_cli(parser: argparse.ArgumentParser, *, config_help: str = "configuration file") -> None:
    """Add ``add``, ``remove`` and ``list`` under ``parser`` (``edge-gateway clients``); each sets
    ``args.clients_command``. Run the parsed arguments with :func:`run_cli`."""
    parser.epilog = CLI_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="clients_command", required=True)

    def leaf(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            help=help_text,
            epilog=CLI_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # "--key" must not pass for "--key-file": keys never go on the command line
        )
        sp.add_argument("-c", "--config", help=config_help)
        sp.add_argument("--json", action="store_true", help="print the result as JSON")
        return sp

    add = leaf("add", "add (or with --replace, replace) an endpoint's credentials")
    add.add_argument("endpoint", nargs="?", help="endpoint name (ep=); from the JSON with --thingsboard-json")
    add.add_argument("--mode", type=str.lower, choices=sorted(_CLI_MODES), help="security mode")
    add.add_argument("--identity", help="PSK identity (text, or hex:...); default: the endpoint name")
    add.add_argument("--key-file", help="PSK: read the key from this file ('-': standard input); default: prompt")
    add.add_argument("--public-key-file", help="RPK: the device's public key (PEM, DER, base64 or hex)")
    add.add_argument("--cert-file", help="X509: pin this device certificate (PEM or DER)")
    add.add_argument("--cn", help="X509: bind by this CN/subjectAltName instead (default: the endpoint name)")
    add.add_argument("--thingsboard-json", metavar="FILE", help="ThingsBoard LwM2M credentials JSON ('-': stdin)")
    add.add_argument("--replace", action="store_true", help="replace existing credentials of the endpoint")
    rm = leaf("remove", "remove an endpoint's credentials (its DTLS sessions end)")
    rm.add_argument("endpoint")
    leaf("list", "list endpoints: mode, identity, key fingerprint (never keys)")


def run_cli(args: argparse.Namespace, *, db_path: Path, control_socket: Path) -> int:
    """Run ``edge-gateway clients ...``: through the running service's control socket, or on the store
    file when no service runs. Output for people, or JSON with ``--json``; keys are never printed."""
    cmd = args.clients_command
    try:
        if cmd == "add":
            entry = _entry_from_args(args)
            request: dict[str, Any] = {"entry": entry_to_wire(entry), "replace": bool(args.replace)}
            result = _ask_or_open(
                control_socket, db_path, "clients.add", request, lambda s: _offline_add(s, entry, args)
            )
        elif cmd == "remove":
            result = _ask_or_open(
                control_socket, db_path, "clients.remove", {"endpoint": args.endpoint},
                lambda s: _offline_remove(s, args.endpoint),
            )  # fmt: skip
        else:
            result = _ask_or_open(
                control_socket, db_path, "clients.list", {}, lambda s: [x.as_dict() for x in s.list_clients()]
            )
    except (CredentialsFormatError, ClientStoreError, RuntimeError, ValueError) as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except _UsageError as exc:
        print(f"edge-gateway clients {cmd}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
    elif cmd == "list":
        _print_table(result)
    else:
        what = result.get("result", "done")
        extra = f" ({result['mode']}, {result['fingerprint']})" if "fingerprint" in result else ""
        print(f"{result.get('endpoint', '')}: {what}{extra}")
    return EXIT_OK


class _UsageError(Exception):
    pass


def _entry_from_args(args: argparse.Namespace) -> ClientEntry:
    if args.thingsboard_json:
        for name in ("mode", "identity", "key_file", "public_key_file", "cert_file", "cn"):
            if getattr(args, name):
                raise _UsageError(f"--{name.replace('_', '-')} does not go with --thingsboard-json")
        text = sys.stdin.read() if args.thingsboard_json == "-" else _read_text(args.thingsboard_json)
        creds = parse_credentials(text)
        if args.endpoint and args.endpoint != creds.endpoint:
            raise _UsageError(f"the JSON is for endpoint {creds.endpoint!r}, not {args.endpoint!r}")
        return ClientEntry.from_thingsboard(creds, source=Source.CLI)
    if not args.endpoint or not args.mode:
        raise _UsageError("give an endpoint and --mode (or --thingsboard-json FILE)")
    endpoint = check_endpoint(args.endpoint, "endpoint")
    mode = SecurityMode(_CLI_MODES[args.mode])
    allowed = {
        SecurityMode.NO_SEC: set(),
        SecurityMode.PSK: {"identity", "key_file"},
        SecurityMode.RPK: {"public_key_file"},
        SecurityMode.X509: {"cert_file", "cn"},
    }[mode]
    for name in ("identity", "key_file", "public_key_file", "cert_file", "cn"):
        if getattr(args, name) and name not in allowed:
            raise _UsageError(f"--{name.replace('_', '-')} does not go with --mode {args.mode}")
    match mode:
        case SecurityMode.NO_SEC:
            return ClientEntry.nosec(endpoint)
        case SecurityMode.PSK:
            identity = decode_psk_identity(args.identity, "--identity") if args.identity else endpoint.encode()
            return ClientEntry.psk(endpoint, identity, _read_key(args.key_file, endpoint))
        case SecurityMode.RPK:
            if not args.public_key_file:
                raise _UsageError("--mode rpk needs --public-key-file")
            data = Path(args.public_key_file).read_bytes() if args.public_key_file != "-" else sys.stdin.buffer.read()
            if data.startswith(b"\x30"):
                return ClientEntry.rpk(endpoint, data)
            spki = decode_public_key(data.decode("ascii", "replace"), "public key")
            return ClientEntry(endpoint, mode, public_key=spki)
        case SecurityMode.X509:
            if args.cert_file and args.cn:
                raise _UsageError("give --cert-file (pinned) or --cn (bound by name), not both")
            cert = decode_certificate(Path(args.cert_file).read_bytes(), "certificate") if args.cert_file else None
            return ClientEntry.x509(endpoint, cert=cert, cert_name=args.cn)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def _read_key(key_file: str | None, endpoint: str) -> bytes:
    """The PSK key from a file, standard input or a prompt that does not echo."""
    if key_file == "-" or (key_file is None and not sys.stdin.isatty()):
        text = sys.stdin.readline()
    elif key_file is not None:
        text = _read_text(key_file)
    else:
        text = getpass.getpass(f"PSK key for {endpoint} (hex, or text:..., base64:...): ")
    return decode_psk_key(text.strip(), "PSK key")


def _ask_or_open(
    control_socket: Path,
    db_path: Path,
    cmd: str,
    request: dict[str, Any],
    offline: Callable[[ClientStore], Any],
) -> Any:
    from gateway import control

    try:
        return control.ask(control_socket, cmd, **request)
    except (FileNotFoundError, ConnectionRefusedError):
        pass  # no service: work on the file
    except PermissionError:
        raise ValueError(f"permission denied on {control_socket}: run as root or as the service's user") from None
    try:
        store = ClientStore.open(db_path)
    except ClientStoreBusy:
        raise ValueError(
            f"the clients store {db_path} is held by a running gateway that does not answer on {control_socket}"
        ) from None
    with store:
        return offline(store)


def _offline_add(store: ClientStore, entry: ClientEntry, args: argparse.Namespace) -> Any:
    change = store.put(entry) if args.replace else store.add(entry)
    return _result(store, entry.endpoint, change)


def _offline_remove(store: ClientStore, endpoint: str) -> Any:
    if store.remove(endpoint, by=Source.CLI) is None:
        raise ValueError(f"endpoint {endpoint!r} has no credentials")
    return {"endpoint": endpoint, "result": "removed"}


def _print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        print("no clients")
        return
    cols = ["endpoint", "mode", "identity", "fingerprint", "source"]
    table = [[str(r.get(c) or "-") for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)).rstrip())


__all__ = [
    "CLIENTS_FILE",
    "PINNED_CHAIN_ERRORS_ACCEPTED",
    "RPC_METHOD",
    "ChangeListener",
    "ClientChange",
    "ClientConfigEntry",
    "ClientConflict",
    "ClientEntry",
    "ClientStore",
    "ClientStoreBusy",
    "ClientStoreError",
    "ClientSummary",
    "ManagedByConfig",
    "Source",
    "SyncResult",
    "check_client_entries",
    "client_entry_from_config",
    "configure_cli",
    "control_commands",
    "decode_certificate",
    "decode_psk_identity",
    "decode_psk_key",
    "decode_public_key",
    "entry_from_wire",
    "entry_to_wire",
    "follow_dtls",
    "principal_mode",
    "principal_names",
    "rpc_handler",
    "run_cli",
    "show_identity",
]
