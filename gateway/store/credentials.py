"""The gateway's own ThingsBoard credentials, kept in the state directory.

Layout of ``state_dir``::

    credentials.json        the commit point: type, secret values or file names, device name
    x509-<id>.pem           X.509_CERTIFICATE only: the gateway's certificate (0600)
    x509-<id>.key           ... and its private key (0600)

``credentials.json`` (mode 0600)::

    {"version": 1, "credentialsType": "ACCESS_TOKEN", "token": "...",
     "deviceName": "edge-gateway-1234", "server": "tb.example.com:1883", "provisionedAtMs": 1700000000000}
    {"version": 1, "credentialsType": "MQTT_BASIC", "clientId": "...", "userName": "...", "password": "...", ...}
    {"version": 1, "credentialsType": "X509_CERTIFICATE", "certFile": "x509-1a2b.pem", "keyFile": "x509-1a2b.key", ...}

Power loss (or kill -9) at any point of :func:`save` or :func:`forget` leaves either the old
credentials or the new ones, complete, never a mix:

1. X.509 files are written first, each with :func:`~gateway.store.atomic.write_atomic` (temp file,
   fsync, rename, fsync of the directory) under names no earlier credentials use, so nothing that
   ``credentials.json`` references is ever overwritten;
2. ``credentials.json`` is replaced the same way: its rename is the single commit point;
3. only then are files no longer referenced removed (older X.509 files, temp files of an
   interrupted earlier write).

A crash before 2 leaves unreferenced files, which the next :func:`save` or :func:`forget` removes.
:func:`forget` removes ``credentials.json`` first (the commit point of a factory reset), then the
files it referenced. The outbox and everything else in the state directory stay.

:func:`load` never raises for a bad file: a corrupt, partial or inconsistent ``credentials.json``
(or one whose X.509 files are gone) is logged as an error and treated as absent, so the gateway
provisions again instead of crashing at every start. Only one process writes these files (the
gateway service; the CLI asks the service).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.store.atomic import write_atomic
from gateway.upstream.session import X509, AccessToken, Credentials, MqttBasic

log = logging.getLogger("gateway.store.credentials")

CREDENTIALS_FILE = "credentials.json"
FORMAT_VERSION = 1
_X509_PREFIX = "x509-"
_X509_SUFFIXES = (".pem", ".key")
#: write_atomic's temp files: ".<name>.tmp-<pid>"
_TMP_PREFIXES = (f".{CREDENTIALS_FILE}.tmp-", f".{_X509_PREFIX}")

ACCESS_TOKEN = "ACCESS_TOKEN"
MQTT_BASIC = "MQTT_BASIC"
X509_CERTIFICATE = "X509_CERTIFICATE"


class CredentialsError(ValueError):
    """Stored credentials that cannot be used; the message says why (never the secret)."""


@dataclass(frozen=True, slots=True)
class X509Pem:
    """A freshly generated certificate and private key (PEM), not yet stored."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


NewCredentials = AccessToken | MqttBasic | X509Pem


@dataclass(frozen=True, slots=True)
class GatewayCredentials:
    """Stored credentials of the gateway device, ready for :class:`~gateway.upstream.session.SessionConfig`.

    For X509, ``credentials`` names the certificate and key files in the state directory.
    """

    credentials: Credentials
    device_name: str = ""
    server: str = ""  # "host:port" the gateway was provisioned at (informational)
    provisioned_at_ms: int = 0

    @property
    def credentials_type(self) -> str:
        """ThingsBoard's name of the type: ACCESS_TOKEN, MQTT_BASIC or X509_CERTIFICATE."""
        return _type_of(self.credentials)


def _type_of(creds: Credentials | X509Pem) -> str:
    if isinstance(creds, AccessToken):
        return ACCESS_TOKEN
    if isinstance(creds, MqttBasic):
        return MQTT_BASIC
    return X509_CERTIFICATE


def path(state_dir: Path) -> Path:
    return Path(state_dir) / CREDENTIALS_FILE


# -- load ---------------------------------------------------------------------------------------


def load(state_dir: Path) -> GatewayCredentials | None:
    """The stored credentials, or None when there are none or they are unusable (logged as an error)."""
    file = path(state_dir)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("stored credentials %s unreadable (%s): the gateway will provision again", file, exc.strerror)
        return None
    try:
        return parse(raw, Path(state_dir))
    except CredentialsError as exc:
        log.error("stored credentials %s unusable (%s): the gateway will provision again", file, exc)
        return None


def parse(raw: bytes, state_dir: Path) -> GatewayCredentials:
    """``credentials.json``'s content as credentials; CredentialsError says what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise CredentialsError(f"not valid JSON ({len(raw)} bytes; an interrupted write or a damaged file)") from None
    if not isinstance(data, dict):
        raise CredentialsError("not a JSON object")
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CredentialsError(f"format version {version!r}, this gateway reads {FORMAT_VERSION}")

    def text(key: str, *, required: bool = False) -> str:
        value = data.get(key, "")
        if not isinstance(value, str):
            raise CredentialsError(f"{key} is not a string")
        if required and not value:
            raise CredentialsError(f"{key} is missing")
        return value

    kind = data.get("credentialsType")
    creds: Credentials
    if kind == ACCESS_TOKEN:
        creds = AccessToken(text("token", required=True))
    elif kind == MQTT_BASIC:
        client_id, username = text("clientId"), text("userName")
        if not client_id and not username:
            raise CredentialsError("MQTT_BASIC without clientId and userName")
        creds = MqttBasic(client_id=client_id, username=username, password=text("password"))
    elif kind == X509_CERTIFICATE:
        files = []
        for key in ("certFile", "keyFile"):
            name = Path(text(key, required=True))
            file = name if name.is_absolute() else Path(state_dir) / name
            try:
                if not file.is_file() or file.stat().st_size == 0:
                    raise CredentialsError(f"{key} {file} is missing or empty")
            except OSError as exc:
                raise CredentialsError(f"{key} {file}: {exc.strerror}") from None
            files.append(str(file))
        creds = X509(cert_file=files[0], key_file=files[1])
    else:
        raise CredentialsError(f"unknown credentialsType {kind!r}")
    at = data.get("provisionedAtMs", 0)
    return GatewayCredentials(
        credentials=creds,
        device_name=text("deviceName"),
        server=text("server"),
        provisioned_at_ms=at if isinstance(at, int) and not isinstance(at, bool) else 0,
    )


# -- save / forget ------------------------------------------------------------------------------


def save(
    state_dir: Path,
    credentials: NewCredentials,
    *,
    device_name: str = "",
    server: str = "",
    provisioned_at_ms: int | None = None,
) -> GatewayCredentials:
    """Store new credentials (replacing any older ones) and return them as :func:`load` would.

    X.509 material is written to new files next to ``credentials.json`` (key and certificate 0600).
    Raises OSError (disk full, read-only file system): the old credentials, if any, are then intact.
    """
    state_dir = Path(state_dir)
    at = int(time.time() * 1000) if provisioned_at_ms is None else provisioned_at_ms
    doc: dict[str, Any] = {"version": FORMAT_VERSION, "credentialsType": _type_of(credentials)}
    stored: Credentials
    if isinstance(credentials, AccessToken):
        if not credentials.token:
            raise ValueError("empty access token")
        doc["token"] = credentials.token
        stored = credentials
    elif isinstance(credentials, MqttBasic):
        if not credentials.client_id and not credentials.username:
            raise ValueError("MQTT_BASIC credentials need a client id or a user name")
        doc.update(clientId=credentials.client_id, userName=credentials.username, password=credentials.password)
        stored = credentials
    else:
        ident = _new_x509_id(state_dir)
        cert = state_dir / f"{_X509_PREFIX}{ident}.pem"
        key = state_dir / f"{_X509_PREFIX}{ident}.key"
        write_atomic(cert, credentials.cert_pem, 0o600)
        write_atomic(key, credentials.key_pem, 0o600)
        doc.update(certFile=cert.name, keyFile=key.name)
        stored = X509(cert_file=str(cert), key_file=str(key))
    doc.update(deviceName=device_name, server=server, provisionedAtMs=at)
    write_atomic(path(state_dir), json.dumps(doc, indent=1).encode() + b"\n", 0o600)  # the commit point
    keep = {doc["certFile"], doc["keyFile"]} if "certFile" in doc else set()
    _remove_leftovers(state_dir, keep)
    return GatewayCredentials(credentials=stored, device_name=device_name, server=server, provisioned_at_ms=at)


def forget(state_dir: Path) -> bool:
    """Factory reset: remove the stored credentials (and their X.509 files); keep everything else.

    Returns True when there were credentials. Power-loss safe: ``credentials.json`` goes first.
    """
    state_dir = Path(state_dir)
    try:
        os.unlink(path(state_dir))
        existed = True
    except FileNotFoundError:
        existed = False
    if existed:
        _fsync_dir(state_dir)
        log.warning("stored credentials removed (factory reset): the gateway will provision again")
    _remove_leftovers(state_dir, set())
    return existed


def _new_x509_id(state_dir: Path) -> str:
    while True:
        ident = secrets.token_hex(6)
        if not any((state_dir / f"{_X509_PREFIX}{ident}{s}").exists() for s in _X509_SUFFIXES):
            return ident


def _remove_leftovers(state_dir: Path, keep: set[str]) -> None:
    """Remove X.509 files not in ``keep`` and temp files of interrupted writes (best effort)."""
    removed = False
    try:
        names = os.listdir(state_dir)
    except OSError:
        return
    for name in names:
        x509 = name.startswith(_X509_PREFIX) and name.endswith(_X509_SUFFIXES)
        tmp = name.startswith(_TMP_PREFIXES) and ".tmp-" in name
        if (x509 and name not in keep) or tmp:
            try:
                os.unlink(state_dir / name)
                removed = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove the old credentials file %s: %s", state_dir / name, exc.strerror)
    if removed:
        _fsync_dir(state_dir)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "ACCESS_TOKEN",
    "CREDENTIALS_FILE",
    "MQTT_BASIC",
    "X509_CERTIFICATE",
    "CredentialsError",
    "GatewayCredentials",
    "NewCredentials",
    "X509Pem",
    "forget",
    "load",
    "parse",
    "save",
]
