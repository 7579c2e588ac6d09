"""Bootstrap configurations and the last bootstrap of each endpoint, on disk (SQLite, 0600).

:class:`BootstrapStore` keeps every configuration in memory (lookups are dictionary hits, templates a
short list) and is also the bootstrap listeners' credentials directory: the DTLS server's
``CredentialsProvider`` (``psk_key``, ``rpk_allowed``, ``x509_allowed``) and the security binding's
``ClientDirectory`` (``get``, ``entry_for``), built from the ``bootstrapServer`` parts. The server's own
key pair, certificate and trust store are the LwM2M server's (:meth:`set_server_credentials`).

Configurations come from the configuration file (``[[lwm2m.bootstrap.configs]]``, synced at start:
the file's entries follow the file), the CLI and ThingsBoard; like the clients store, an entry the
file manages can only be changed in the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.lwm2m.bootstrap.config import (
    BootstrapConfig,
    BootstrapConfigError,
    config_to_json,
    parse_config,
    specificity,
)
from gateway.lwm2m.tbcredentials import SecurityMode, canonical_p256_spki
from gateway.store.clients import (
    ClientEntry,
    ClientStoreError,
    ServerCredentials,
    Source,
    principal_mode,
    principal_names,
)

if TYPE_CHECKING:
    from gateway.transport.dtls import X509Principal

log = logging.getLogger("gateway.lwm2m.bootstrap")

BOOTSTRAP_FILE: Final = "bootstrap.sqlite3"

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS configs (
        name TEXT NOT NULL, is_pattern INTEGER NOT NULL, body TEXT NOT NULL, source TEXT NOT NULL,
        updated_ms INTEGER NOT NULL, PRIMARY KEY (name, is_pattern)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS history (
        endpoint TEXT PRIMARY KEY NOT NULL, at_ms INTEGER NOT NULL, result TEXT NOT NULL,
        servers TEXT NOT NULL, detail TEXT NOT NULL, peer TEXT NOT NULL) WITHOUT ROWID""",
)


class BootstrapStoreError(ClientStoreError):
    """The store cannot do what was asked (the message says why, never a secret)."""


@dataclass(frozen=True, slots=True)
class LastBootstrap:
    """The last bootstrap of an endpoint, for the operator."""

    endpoint: str
    at_ms: int
    result: str
    servers: str
    detail: str
    peer: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BootstrapStore(ServerCredentials):
    """See the module docstring. Open with :meth:`open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._exact: dict[str, BootstrapConfig] = {}
        self._patterns: list[BootstrapConfig] = []  # most specific first
        self._auth: dict[str, ClientEntry] = {}  # endpoint -> its bootstrap credentials
        self._by_identity: dict[bytes, ClientEntry] = {}
        self._by_public_key: dict[bytes, ClientEntry] = {}
        self._by_cert: dict[bytes, ClientEntry] = {}

    @classmethod
    def open(cls, path: Path) -> BootstrapStore:
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise BootstrapStoreError(f"bootstrap store {path}: cannot open: {exc}") from None
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(f"{path}{suffix}", 0o600)
        store = cls(path, conn)
        for name, body, source, updated in conn.execute("SELECT name, body, source, updated_ms FROM configs"):
            try:
                cfg = parse_config(json.loads(body), source=Source(source), where=name)
            except (BootstrapConfigError, ValueError) as exc:
                log.error("bootstrap store %s: configuration %r unusable (%s): skipped", path, name, exc)
                continue
            store._index(dataclasses.replace(cfg, updated_ms=int(updated)))
        return store

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BootstrapStoreError(f"bootstrap store {self.path} is closed")
        return self._conn

    # -- configurations ---------------------------------------------------------------------------

    def configs(self) -> list[BootstrapConfig]:
        return sorted([*self._exact.values(), *self._patterns], key=lambda c: (c.is_pattern, c.name))

    def get_config(self, name: str, *, pattern: bool = False) -> BootstrapConfig | None:
        if not pattern:
            return self._exact.get(name)
        return next((c for c in self._patterns if c.name == name), None)

    def effective(self, endpoint: str) -> BootstrapConfig | None:
        """The endpoint's own configuration over its most specific template; None if neither exists."""
        template = next((c for c in self._patterns if c.matches(endpoint)), None)
        own = self._exact.get(endpoint)
        if own is None:
            if template is None:
                return None
            return dataclasses.replace(template, name=endpoint, is_pattern=False)
        return own.merged_over(template)

    def put(self, cfg: BootstrapConfig) -> bool:
        """Add or replace a configuration (False: nothing changed). A file-managed one only by the file."""
        old = self.get_config(cfg.name, pattern=cfg.is_pattern)
        if old is not None and old.source is Source.CONFIG and cfg.source is not Source.CONFIG:
            raise BootstrapStoreError(
                f"the bootstrap configuration {cfg.name!r} comes from the configuration file: edit it there"
            )
        if old is not None and old == cfg:
            return False
        auth = cfg.bootstrap_server
        if not cfg.is_pattern and auth is not None and auth.per_device:
            entry = auth.client_entry(cfg.name)
            owner = self._owner(entry)
            if owner is not None and owner != cfg.name:
                raise BootstrapStoreError(f"the bootstrap credentials of {cfg.name!r} already belong to {owner!r}")
        cfg = dataclasses.replace(cfg, updated_ms=int(time.time() * 1000))
        body = json.dumps(config_to_json(cfg), separators=(",", ":"))
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO configs (name, is_pattern, body, source, updated_ms) VALUES (?, ?, ?, ?, ?)",
                (cfg.name, int(cfg.is_pattern), body, cfg.source.value, cfg.updated_ms),
            )
        except sqlite3.Error as exc:
            raise BootstrapStoreError(f"bootstrap store {self.path}: cannot write: {exc}") from None
        if old is not None:
            self._unindex(old)
        self._index(cfg)
        log.info("bootstrap: configuration %r %s (%s)", cfg.name, "updated" if old else "added", cfg.source.value)
        return True

    def remove(self, name: str, *, pattern: bool = False, by: Source = Source.CLI) -> bool:
        old = self.get_config(name, pattern=pattern)
        if old is None:
            return False
        if old.source is Source.CONFIG and by is not Source.CONFIG:
            raise BootstrapStoreError(f"the bootstrap configuration {name!r} comes from the configuration file")
        try:
            self.conn.execute("DELETE FROM configs WHERE name = ? AND is_pattern = ?", (name, int(pattern)))
        except sqlite3.Error as exc:
            raise BootstrapStoreError(f"bootstrap store {self.path}: cannot write: {exc}") from None
        self._unindex(old)
        log.info("bootstrap: configuration %r removed", name)
        return True

    def sync_config(self, configs: Sequence[BootstrapConfig]) -> tuple[int, int]:
        """Make the file-managed configurations exactly ``configs``: (put, removed)."""
        wanted = {(c.name, c.is_pattern): dataclasses.replace(c, source=Source.CONFIG) for c in configs}
        removed = 0
        for c in self.configs():
            if c.source is Source.CONFIG and (c.name, c.is_pattern) not in wanted:
                self.remove(c.name, pattern=c.is_pattern, by=Source.CONFIG)
                removed += 1
        put = 0
        for c in wanted.values():
            old = self.get_config(c.name, pattern=c.is_pattern)
            if old is not None and old.source is not Source.CONFIG:
                self.remove(c.name, pattern=c.is_pattern, by=Source.CONFIG)
            put += self.put(c)
        return put, removed

    def _index(self, cfg: BootstrapConfig) -> None:
        if cfg.is_pattern:
            self._patterns.append(cfg)
            self._patterns.sort(key=specificity, reverse=True)
            return
        self._exact[cfg.name] = cfg
        auth = cfg.bootstrap_server
        if auth is None:
            return
        entry = auth.client_entry(cfg.name)
        self._auth[cfg.name] = entry
        if entry.identity is not None:
            self._by_identity[entry.identity] = entry
        if entry.public_key is not None:
            self._by_public_key[entry.public_key] = entry
        if entry.cert_sha256 is not None:
            self._by_cert[entry.cert_sha256] = entry

    def _unindex(self, cfg: BootstrapConfig) -> None:
        if cfg.is_pattern:
            self._patterns = [c for c in self._patterns if c.name != cfg.name]
            return
        self._exact.pop(cfg.name, None)
        entry = self._auth.pop(cfg.name, None)
        if entry is None:
            return
        for index, key in ((self._by_identity, entry.identity), (self._by_public_key, entry.public_key),
                           (self._by_cert, entry.cert_sha256)):
            if key is not None and index.get(key) is entry:
                del index[key]

    def _owner(self, entry: ClientEntry) -> str | None:
        for index, key in ((self._by_identity, entry.identity), (self._by_public_key, entry.public_key),
                           (self._by_cert, entry.cert_sha256)):
            owner = index.get(key) if key is not None else None
            if owner is not None:
                return owner.endpoint
        return None

    # -- history --------------------------------------------------------------------------------------

    def record(self, endpoint: str, result: str, servers: str, detail: str, peer: str) -> None:
        """The outcome of a bootstrap (kept: the last one per endpoint). Never raises."""
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO history (endpoint, at_ms, result, servers, detail, peer) VALUES (?,?,?,?,?,?)",
                (endpoint, int(time.time() * 1000), result, servers, detail[:300], peer),
            )
        except (sqlite3.Error, BootstrapStoreError) as exc:
            log.error("bootstrap store %s: cannot record the bootstrap of %r: %s", self.path, endpoint, exc)

    def history(self) -> list[LastBootstrap]:
        rows = self.conn.execute("SELECT endpoint, at_ms, result, servers, detail, peer FROM history ORDER BY endpoint")
        return [LastBootstrap(*row) for row in rows]

    # -- the bootstrap listeners' credentials (CredentialsProvider, ClientDirectory) ---------------

    def psk_key(self, identity: bytes) -> bytes | None:
        entry = self._by_identity.get(identity)
        return entry.key if entry is not None else None

    def rpk_allowed(self, spki_der: bytes) -> bool:
        try:
            return canonical_p256_spki(spki_der) in self._by_public_key
        except ValueError:
            return False

    def x509_allowed(self, principal: X509Principal) -> bool:
        return self.entry_for(principal) is not None

    def get(self, endpoint: str) -> ClientEntry | None:
        """The bootstrap credentials an endpoint must use (a template's NoSec/X.509 by name included)."""
        entry = self._auth.get(endpoint)
        if entry is not None:
            return entry
        cfg = self.effective(endpoint)
        if cfg is None or cfg.bootstrap_server is None:
            return None
        return cfg.bootstrap_server.client_entry(endpoint)

    def entry_for(self, principal: object) -> ClientEntry | None:
        match principal_mode(principal):
            case SecurityMode.PSK:
                return self._by_identity.get(getattr(principal, "identity", b""))
            case SecurityMode.RPK:
                try:
                    return self._by_public_key.get(canonical_p256_spki(getattr(principal, "spki_der", b"")))
                except ValueError:
                    return None
            case SecurityMode.X509:
                cert = getattr(principal, "cert_der", b"")
                pinned = self._by_cert.get(hashlib.sha256(cert).digest())
                if pinned is not None:
                    return pinned
                if not getattr(principal, "chain_ok", False):
                    return None
                for name in principal_names(principal):
                    entry = self.get(name)
                    if entry is not None and entry.mode is SecurityMode.X509 and entry.cert is None:
                        return entry
        return None

    def __repr__(self) -> str:
        return f"<BootstrapStore {self.path} {len(self._exact)} endpoints, {len(self._patterns)} templates>"
