"""First-boot provisioning: ThingsBoard's Device Provisioning API over MQTT, and the boot-partition import.

The exchange (docs/THINGSBOARD_API.md, "Provisioning")
    An MQTT connection with the user name ``provision`` (no password), made by the ordinary
    :class:`~gateway.upstream.session.MqttSession` (non-blocking connect on the loop, TLS when
    ``thingsboard.tls``, reconnects with backoff while ThingsBoard is unreachable) with its
    ``subscriptions`` set to ``/provision/response`` and no ``getSessionLimits``. Once subscribed,
    one request on ``/provision/request``::

        {"deviceName": ..., "provisionDeviceKey": ..., "provisionDeviceSecret": ..., "gateway": true,
         + "credentialsType": "ACCESS_TOKEN", "token": <generated here>
         | "credentialsType": "MQTT_BASIC", "clientId", "username", "password": <generated here>
         | "credentialsType": "X509_CERTIFICATE", "hash": <PEM certificate generated here>
         | nothing: the server generates an access token}

    The answer: ``SUCCESS`` with ``credentialsType``/``credentialsValue`` (a token, an object
    ``{clientId, userName, password}``, or the certificate) is stored at once with
    :func:`gateway.store.credentials.save` (atomic, 0600); ``NOT_FOUND``/``FAILURE`` raise
    :class:`ProvisioningRefused`. No answer within ``provisioning.timeout_s`` raises
    :class:`ProvisioningTimeout`. A connection lost before the answer: the request is sent again
    once reconnected.

    ThingsBoard creates the device when it answers SUCCESS; a second request for the same name is
    answered FAILURE ("device already exists"). That is why the credentials are written before
    anything else happens, and why a FAILURE is reported with that likely cause.

X.509 (``credentials_type = "X509_CERTIFICATE"``)
    The gateway generates an EC P-256 key pair and a self-signed certificate (CN = device name,
    CA:FALSE, clientAuth, valid 100 years: a Pi without a real-time clock may provision with its
    clock far off, and ThingsBoard identifies the device by the certificate itself, not by a
    chain) with the ``openssl`` command-line tool. Why the tool: the ``cryptography`` package is
    not a dependency (and not installed on the target), Python's ``ssl`` module cannot generate
    keys, and ``openssl`` is on every Raspberry Pi OS image. Nothing touches the disk: the key goes
    from ``openssl genpkey``'s stdout into memory and into ``openssl req`` through a pipe
    (``/dev/fd/N``), and is written only by :func:`~gateway.store.credentials.save` (0600).

The provision key and secret are never logged (nor is any generated secret): log lines name the
device, the server and the answer's status and message. :class:`ProvisionSettings` hides them
from ``repr``.

:class:`Provisioner` loops until provisioned: a refusal waits ``provisioning.retry_s`` (x 0.9-1.1,
so that a fleet does not synchronise) and is never hammered; other failures (no answer, a bad
answer, a local error) back off exponentially up to ``retry_s``; an unreachable server is retried
by the session's own backoff. Its phase (:class:`Phase`) and one-line status ("provisioning",
"unreachable", "refused: <message>", "provisioned", ...) feed STATUS=, the LED and ``status``.

Boot partition
    :func:`import_provision_file` turns ``/boot/firmware/edge-gateway-provision.toml`` (FAT: no
    permissions, readable by anyone with the SD card) into the drop-in
    ``<config dir>/gateway.d/90-provisioning.toml`` (0600, owned by the service's user), then
    removes the source. :func:`cmd_import_provisioning` is the ``edge-gateway import-provisioning``
    command that ``edge-gateway-provision-import.service`` runs once at boot.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import datetime
import enum
import json
import logging
import os
import pwd
import random
import re
import secrets
import shutil
import sys
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import config, sysinfo
from gateway.store import credentials as store
from gateway.store.atomic import write_atomic
from gateway.store.credentials import GatewayCredentials, NewCredentials, X509Pem
from gateway.upstream.session import AccessToken, MqttBasic, MqttSession, SessionConfig, SessionState, TlsSettings

log = logging.getLogger("gateway.upstream.provisioning")

PROVISION_USERNAME = "provision"
REQUEST_TOPIC = "/provision/request"
RESPONSE_TOPIC = "/provision/response"
CREDENTIALS_TYPES = ("ACCESS_TOKEN", "MQTT_BASIC", "X509_CERTIFICATE")
CERT_DAYS = 36500

BOOT_FILE = Path("/boot/firmware/edge-gateway-provision.toml")
DROPIN_NAME = "90-provisioning.toml"


# -- errors and phases --------------------------------------------------------------------------


class ProvisioningError(Exception):
    """Provisioning did not succeed this time (no answer, a bad answer, a local problem)."""


class ProvisioningRefused(ProvisioningError):
    """ThingsBoard answered NOT_FOUND or FAILURE: these settings will not do as they are."""

    def __init__(self, status: str, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}{_hint(status)}")


class ProvisioningTimeout(ProvisioningError):
    """Connected, asked, and no answer arrived in time."""


class ProvisioningNotConfigured(ProvisioningError):
    """No provision key or secret: nothing to ask with."""


def _hint(status: str) -> str:
    if status == "NOT_FOUND":
        return " (wrong provision key or secret, or provisioning is disabled in the device profile)"
    if status == "FAILURE":
        return (
            " (the device probably exists already in ThingsBoard: delete it there, or provision under "
            "another name; or the profile only allows pre-provisioned devices)"
        )
    return ""


class Phase(enum.Enum):
    PROVISIONING = "provisioning"
    UNREACHABLE = "unreachable"
    REFUSED = "refused"
    FAILED = "failed"
    NOT_CONFIGURED = "not configured"
    PROVISIONED = "provisioned"


PhaseListener = Callable[[Phase, str], None]


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionSettings:
    host: str
    port: int = 1883
    tls: TlsSettings | None = None
    key: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    credentials_type: str = ""  # "" (server-generated token) or one of CREDENTIALS_TYPES
    state_dir: Path
    timeout_s: float = 30.0  # for the answer, per request
    retry_s: float = 300.0  # after a refusal; the ceiling of the other backoffs
    connect_timeout: float = 30.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    keepalive: int = 60
    openssl: str = "openssl"

    @classmethod
    def from_config(cls, cfg: config.Config) -> ProvisionSettings:
        t, p = cfg.thingsboard, cfg.provisioning
        return cls(
            host=t.host,
            port=t.port,
            tls=TlsSettings(ca_file=t.ca_file or None) if t.tls else None,
            key=p.key,
            secret=p.secret,
            credentials_type=p.credentials_type,
            state_dir=cfg.gateway.state_dir,
            timeout_s=p.timeout_s,
            retry_s=p.retry_s,
            reconnect_min=t.reconnect_min_s,
            reconnect_max=t.reconnect_max_s,
            keepalive=t.keepalive_s,
        )


def resolve_device_name(cfg: config.Config) -> str:
    """provisioning.device_name, else gateway.name, else derived from the board serial / machine-id."""
    return cfg.provisioning.device_name or cfg.gateway.name or sysinfo.default_device_name()


# -- one exchange -------------------------------------------------------------------------------


async def provision(
    settings: ProvisionSettings,
    device_name: str,
    *,
    on_phase: PhaseListener | None = None,
) -> GatewayCredentials:
    """Ask ThingsBoard for credentials for ``device_name`` and store them in ``settings.state_dir``.

    Waits (reconnecting with backoff, phase UNREACHABLE) while ThingsBoard cannot be reached; wrap
    it in ``asyncio.timeout`` for a deadline. Raises :class:`ProvisioningRefused` (NOT_FOUND,
    FAILURE), :class:`ProvisioningTimeout`, :class:`ProvisioningNotConfigured` or
    :class:`ProvisioningError` (a bad answer, openssl or the disk failing).
    """
    if not settings.key or not settings.secret:
        raise ProvisioningNotConfigured(
            "no provision key/secret: set [provisioning] key and secret, or place "
            f"{BOOT_FILE.name} on the boot partition"
        )
    if not device_name.strip():
        raise ProvisioningNotConfigured("empty device name")
    if settings.credentials_type not in ("", *CREDENTIALS_TYPES):
        raise ProvisioningNotConfigured(f"unknown credentials type {settings.credentials_type!r}")

    def report(phase: Phase, text: str = "") -> None:
        if on_phase is not None:
            try:
                on_phase(phase, text)
            except Exception:
                log.exception("provisioning phase listener failed")

    creds = await request_credentials(settings, device_name, on_phase=report)
    try:
        saved = await asyncio.to_thread(
            store.save,
            settings.state_dir,
            creds,
            device_name=device_name,
            server=f"{settings.host}:{settings.port}",
        )
    except OSError as exc:
        raise ProvisioningError(
            f"provisioned as {device_name!r}, but the credentials could not be stored in "
            f"{settings.state_dir}: {exc.strerror or exc}"
        ) from None
    log.info(
        "provisioned as %r at %s:%d (%s); credentials stored",
        device_name,
        settings.host,
        settings.port,
        saved.credentials_type,
    )
    return saved


async def request_credentials(
    settings: ProvisionSettings,
    device_name: str,
    *,
    gateway: bool = True,
    on_phase: Callable[[Phase, str], None] | None = None,
) -> NewCredentials:
    """One provisioning exchange for ``device_name``: the credentials granted, not stored yet.

    ``gateway`` False provisions a plain device (per-device mode: ``"gateway"`` is left out of the
    request). Raises as :func:`provision`; the caller stores the result.
    """
    request, pending = await build_request(settings, device_name, gateway=gateway)
    payload = json.dumps(request).encode()
    answer = await _exchange(settings, payload, device_name, on_phase or (lambda _p, _t: None))
    return interpret_answer(answer, settings.credentials_type, pending)


async def build_request(
    settings: ProvisionSettings, device_name: str, *, gateway: bool = True
) -> tuple[dict[str, Any], NewCredentials | None]:
    """The request, and what the gateway generated for it (None: the server generates a token)."""
    request: dict[str, Any] = {
        "deviceName": device_name,
        "provisionDeviceKey": settings.key,
        "provisionDeviceSecret": settings.secret,
    }
    if gateway:
        request["gateway"] = True
    pending: NewCredentials | None = None
    kind = settings.credentials_type
    if kind == "ACCESS_TOKEN":
        token = secrets.token_urlsafe(18)
        request.update(credentialsType=kind, token=token)
        pending = AccessToken(token)
    elif kind == "MQTT_BASIC":
        basic = MqttBasic(
            client_id="edge-gw-" + secrets.token_hex(8), username=device_name, password=secrets.token_urlsafe(24)
        )
        request.update(
            credentialsType=kind, clientId=basic.client_id, username=basic.username, password=basic.password
        )
        pending = basic
    elif kind == "X509_CERTIFICATE":
        pem = await generate_x509(device_name, openssl=settings.openssl)
        request.update(credentialsType=kind, hash=pem.cert_pem.decode("ascii"))
        pending = pem
    return request, pending


async def _exchange(
    settings: ProvisionSettings, payload: bytes, device_name: str, report: Callable[[Phase, str], None]
) -> bytes:
    session = MqttSession(
        SessionConfig(
            host=settings.host,
            port=settings.port,
            credentials=AccessToken(PROVISION_USERNAME),
            tls=settings.tls,
            keepalive=settings.keepalive,
            connect_timeout=settings.connect_timeout,
            reconnect_min=settings.reconnect_min,
            reconnect_max=settings.reconnect_max,
            ask_session_limits=False,
            subscriptions=(RESPONSE_TOPIC,),
        )
    )
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    def on_message(topic: str, data: bytes) -> None:
        if topic == RESPONSE_TOPIC and not answer.done():
            answer.set_result(data)

    def on_state(state: SessionState) -> None:
        if state is SessionState.DISCONNECTED:
            report(Phase.UNREACHABLE, "")

    session.set_message_handler(on_message)
    session.add_state_listener(on_state)
    report(Phase.PROVISIONING, "")
    session.start()
    try:
        while True:
            state = await session.wait_for_state(SessionState.CONNECTED, SessionState.CREDENTIALS_REJECTED)
            if state is SessionState.CREDENTIALS_REJECTED:
                raise ProvisioningError(
                    f"ThingsBoard at {settings.host}:{settings.port} refused the provisioning connection "
                    "(user name 'provision')"
                )
            report(Phase.PROVISIONING, "")
            log.info(
                "asking ThingsBoard at %s:%d to provision %r (%s)",
                settings.host,
                settings.port,
                device_name,
                settings.credentials_type or "server-generated access token",
            )
            session.publish(REQUEST_TOPIC, payload).add_done_callback(_retrieve)
            lost = loop.create_task(
                session.wait_for_state(
                    SessionState.DISCONNECTED, SessionState.CONNECTING, SessionState.CREDENTIALS_REJECTED
                )
            )
            try:
                waited: list[asyncio.Future[Any]] = [answer, lost]
                await asyncio.wait(waited, timeout=settings.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
            if answer.done():
                return answer.result()
            if not lost.done() or lost.cancelled():
                raise ProvisioningTimeout(
                    f"no answer from ThingsBoard at {settings.host}:{settings.port} within {settings.timeout_s:g} s"
                )
            log.warning("provisioning: connection lost before the answer; asking again once reconnected")
    finally:
        await session.stop()


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


def interpret_answer(raw: bytes, requested: str, pending: NewCredentials | None) -> NewCredentials:
    """The credentials a provisioning answer grants; raises ProvisioningRefused or ProvisioningError."""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProvisioningError(f"ThingsBoard's provisioning answer is not JSON ({len(raw)} bytes)") from None
    if not isinstance(answer, dict):
        raise ProvisioningError("ThingsBoard's provisioning answer is not a JSON object")
    status = answer.get("status")
    if not isinstance(status, str) or not status:
        raise ProvisioningError("ThingsBoard's provisioning answer has no status")
    if status != "SUCCESS":
        message = answer.get("errorMsg")
        raise ProvisioningRefused(str(status), message if isinstance(message, str) and message else "no message")
    kind = answer.get("credentialsType") or requested or "ACCESS_TOKEN"
    value = answer.get("credentialsValue")
    if kind == "ACCESS_TOKEN":
        if isinstance(value, str) and value:
            return AccessToken(value)
        if isinstance(pending, AccessToken):
            return pending
        raise ProvisioningError("ThingsBoard's SUCCESS answer carries no access token")
    if kind == "MQTT_BASIC":
        if isinstance(value, str):
            with contextlib.suppress(ValueError, RecursionError):
                value = json.loads(value)
        sent = pending if isinstance(pending, MqttBasic) else MqttBasic()
        if not isinstance(value, dict):
            value = {}

        def pick(key: str, fallback: str) -> str:
            v = value.get(key)
            return v if isinstance(v, str) and v else fallback

        basic = MqttBasic(
            client_id=pick("clientId", sent.client_id),
            username=pick("userName", sent.username),
            password=pick("password", sent.password),
        )
        if not basic.client_id and not basic.username:
            raise ProvisioningError("ThingsBoard's MQTT_BASIC answer has neither a client id nor a user name")
        return basic
    if kind == "X509_CERTIFICATE":
        if not isinstance(pending, X509Pem):
            raise ProvisioningError("ThingsBoard assigned an X.509 certificate the gateway did not ask for (no key)")
        if isinstance(value, str) and value and _der(value) != _der(pending.cert_pem.decode("ascii")):
            log.warning(
                "ThingsBoard's answer carries a certificate other than the one the gateway sent: keeping the "
                "gateway's own; if the connection is refused, re-provision"
            )
        return pending
    raise ProvisioningError(f"ThingsBoard granted credentials of an unknown type {kind!r}")


def _der(pem: str) -> bytes | None:
    """The DER bytes of a PEM certificate, with or without its BEGIN/END lines (ThingsBoard trims them)."""
    body = re.sub(r"-----(BEGIN|END) CERTIFICATE-----|\s", "", pem)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None


# -- X.509 key pair -----------------------------------------------------------------------------


async def generate_x509(device_name: str, *, openssl: str = "openssl") -> X509Pem:
    """A new EC P-256 private key and a self-signed client certificate for it (PEM, in memory)."""
    exe = shutil.which(openssl)
    if exe is None:
        raise ProvisioningError(
            "X509_CERTIFICATE provisioning needs the openssl command-line tool (apt install openssl)"
        )
    key = await _run_openssl(
        exe, "genpkey", "-algorithm", "EC",
        "-pkeyopt", "ec_paramgen_curve:P-256", "-pkeyopt", "ec_param_enc:named_curve",
    )  # fmt: skip
    cn = re.sub(r"[^A-Za-z0-9._-]", "_", device_name)[:64] or "edge-gateway"
    cnf = (
        "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n"
        f"[dn]\nCN = {cn}\n"
        "[ext]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        "extendedKeyUsage = clientAuth\nsubjectKeyIdentifier = hash\n"
    ).encode()
    cert = await _run_openssl(
        exe, "req", "-new", "-x509", "-sha256", "-days", str(CERT_DAYS), "-key", "{0}", "-config", "{1}",
        inputs=(key, cnf),
    )  # fmt: skip
    if b"-----BEGIN CERTIFICATE-----" not in cert or b"PRIVATE KEY-----" not in key:
        raise ProvisioningError("openssl produced no certificate or key")
    return X509Pem(cert_pem=cert, key_pem=key)


async def _run_openssl(exe: str, *args: str, inputs: tuple[bytes, ...] = ()) -> bytes:
    """Run openssl; ``{i}`` in ``args`` becomes /dev/fd/N, a pipe that yields ``inputs[i]``."""
    fds: list[int] = []
    try:
        argv = [exe]
        for data in inputs:
            r, w = os.pipe()
            fds.append(r)
            try:
                os.write(w, data)  # a few hundred bytes: fits the pipe buffer, never blocks
            finally:
                os.close(w)
        for a in args:
            m = re.fullmatch(r"\{(\d)\}", a)
            argv.append(f"/dev/fd/{fds[int(m.group(1))]}" if m else a)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=fds,
        )
    except OSError as exc:
        raise ProvisioningError(f"cannot run openssl: {exc.strerror or exc}") from None
    finally:
        for fd in fds:
            os.close(fd)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise ProvisioningError(f"openssl {args[0]} failed (exit {proc.returncode}): {last[0]}")
    return out


# -- the loop -----------------------------------------------------------------------------------


class Provisioner:
    """Provisions until it succeeds; :meth:`run` returns the stored credentials.

    ``sleep`` is injectable (tests). Listeners get ``(phase, status line)`` on every change.
    """

    def __init__(
        self,
        settings: ProvisionSettings,
        device_name: str,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.device_name = device_name
        self._sleep = sleep
        self._phase = Phase.PROVISIONING
        self._detail = ""
        self._listeners: list[PhaseListener] = []
        self.attempts = 0
        self.refusals = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def status(self) -> str:
        """One line: "provisioning", "unreachable", "refused: NOT_FOUND: ...", "provisioned", ..."""
        return f"{self._phase.value}: {self._detail}" if self._detail else self._phase.value

    def add_listener(self, listener: PhaseListener) -> None:
        self._listeners.append(listener)

    def _set(self, phase: Phase, detail: str = "") -> None:
        if (phase, detail) == (self._phase, self._detail):
            return
        self._phase, self._detail = phase, detail
        status = self.status
        for listener in list(self._listeners):
            try:
                listener(phase, status)
            except Exception:
                log.exception("provisioning listener failed")

    async def run(self) -> GatewayCredentials:
        """Try until provisioned. Raises ProvisioningNotConfigured at once when there is nothing to ask with."""
        failures = 0
        last_refusal = ""
        s = self.settings
        while True:
            self.attempts += 1
            try:
                creds = await provision(s, self.device_name, on_phase=self._set)
            except ProvisioningNotConfigured as exc:
                self._set(Phase.NOT_CONFIGURED, str(exc))
                log.error("provisioning: %s", exc)
                raise
            except ProvisioningRefused as exc:
                self.refusals += 1
                failures = 0
                delay = s.retry_s * random.uniform(0.9, 1.1)
                self._set(Phase.REFUSED, str(exc))
                if str(exc) != last_refusal:
                    log.error(
                        "provisioning as %r refused by ThingsBoard at %s:%d: %s; asking again every %.0f s",
                        self.device_name,
                        s.host,
                        s.port,
                        exc,
                        s.retry_s,
                    )
                    last_refusal = str(exc)
                else:
                    log.info("provisioning refused again (%s)", exc.status)
            except ProvisioningTimeout as exc:
                delay = self._backoff(failures)
                failures += 1
                self._set(Phase.UNREACHABLE, str(exc))
                log.warning("provisioning: %s; asking again in %.0f s", exc, delay)
            except ProvisioningError as exc:
                delay = self._backoff(failures)
                failures += 1
                self._set(Phase.FAILED, str(exc))
                log.error("provisioning failed: %s; trying again in %.0f s", exc, delay)
            else:
                self._set(Phase.PROVISIONED)
                return creds
            await self._sleep(delay)

    def _backoff(self, failures: int) -> float:
        s = self.settings
        ceiling = min(s.retry_s, max(s.reconnect_min, 1.0) * 2.0 ** min(failures, 20))
        return ceiling * random.uniform(0.5, 1.0)


# -- boot-partition import ----------------------------------------------------------------------


class ProvisionFileError(ValueError):
    """The provisioning file is not usable; ``problems`` lists what is wrong (never a secret's value)."""

    def __init__(self, source: Path, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class ImportResult:
    action: str  # "imported", "unchanged" (the same settings were imported before), "nothing" (no source)
    dropin: Path
    source_removed: bool
    source_error: str = ""  # why the source could not be removed (it still holds the secret)


_FILE_SCHEMA: dict[str, dict[str, str]] = {
    "provisioning": {"key": "secret", "secret": "secret", "device_name": "str", "credentials_type": "ctype"},
    "thingsboard": {"host": "str", "port": "port", "tls": "bool"},
}
_REQUIRED = (("provisioning", "key"), ("provisioning", "secret"))


def read_provision_file(source: Path) -> dict[str, dict[str, Any]]:
    """The validated settings of a provisioning file; raises ProvisionFileError listing every problem."""
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise ProvisionFileError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    return parse_provision_file(raw, source)


def parse_provision_file(raw: bytes, source: Path) -> dict[str, dict[str, Any]]:
    problems: list[str] = []
    if raw.startswith(b"\xef\xbb\xbf"):  # a Windows editor's byte order mark
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProvisionFileError(source, ["not UTF-8 text (save it as UTF-8)"]) from None
    try:
        data = tomllib.loads(text.replace("\r\n", "\n"))
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionFileError(source, [f"not valid TOML: {exc}"]) from None
    out: dict[str, dict[str, Any]] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            problems.append(f"{section}: outside any section (it belongs under [provisioning] or [thingsboard])")
            continue
        schema = _FILE_SCHEMA.get(section)
        if schema is None:
            problems.append(f"[{section}]: unknown section (allowed: [provisioning], [thingsboard])")
            continue
        values: dict[str, Any] = {}
        for key, value in table.items():
            kind = schema.get(key)
            where = f"{section}.{key}"
            if kind is None:
                problems.append(f"{where}: unknown key (allowed: {', '.join(schema)})")
                continue
            if kind in ("secret", "str"):
                if not isinstance(value, str) or not value.strip():
                    problems.append(f"{where}: expected a non-empty string in quotes")
                    continue
                values[key] = value.strip()
            elif kind == "ctype":
                if value not in ("", *CREDENTIALS_TYPES):
                    problems.append(f"{where}: expected one of {', '.join(repr(t) for t in CREDENTIALS_TYPES)}")
                    continue
                values[key] = value
            elif kind == "port":
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                    problems.append(f"{where}: expected a port number from 1 to 65535 (no quotes)")
                    continue
                values[key] = value
            elif kind == "bool":
                if not isinstance(value, bool):
                    problems.append(f"{where}: expected true or false (no quotes)")
                    continue
                values[key] = value
        out[section] = values
    for section, key in _REQUIRED:
        table = data.get(section)
        if not isinstance(table, dict) or key not in table:
            problems.append(f"{section}.{key}: required (the provision {key} from the ThingsBoard device profile)")
    if problems:
        raise ProvisionFileError(source, problems)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # A JSON string without ASCII escaping is a valid TOML basic string (same escapes, \\uXXXX for
    # control characters, no surrogate pairs).
    return json.dumps(str(value), ensure_ascii=False)


def render_dropin(settings: Mapping[str, Mapping[str, Any]], source: Path) -> bytes:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"# Imported from {source} by 'edge-gateway import-provisioning' on {when}.",
        "# It holds the provision secret: keep it readable by the service's user only (0600).",
    ]
    for section, values in settings.items():
        if not values:
            continue
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != {k: dict(v) for k, v in settings.items() if v}:  # pragma: no cover - a bug here
        raise AssertionError("the drop-in does not read back as imported")
    return text.encode()


def import_provision_file(
    src: Path = BOOT_FILE,
    dst_dir: Path = config.DEFAULT_PATH.parent / "gateway.d",
    *,
    owner: str | None = None,
) -> ImportResult:
    """Import the boot partition's provisioning file as a 0600 drop-in, then remove the source.

    Idempotent: without a source it does nothing; the same settings again only remove the source.
    ``owner``: the user the drop-in must belong to (the service's; the import runs as root).
    Raises ProvisionFileError for a bad file (which is left in place for the installer to fix)
    and OSError when the drop-in cannot be written. A source that cannot be removed is reported in
    the result (``source_error``), not raised: the import itself succeeded.
    """
    src, dst_dir = Path(src), Path(dst_dir)
    dropin = dst_dir / DROPIN_NAME
    if not src.exists():
        return ImportResult("nothing", dropin, source_removed=False)
    settings = read_provision_file(src)
    uid = gid = -1
    if owner is not None:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise ProvisionFileError(src, [f"no user {owner!r} to give the imported file to"]) from None
        uid, gid = pw.pw_uid, pw.pw_gid
    action = "imported"
    try:
        with dropin.open("rb") as fh:
            if tomllib.load(fh) == {k: v for k, v in settings.items() if v}:
                action = "unchanged"
    except (OSError, tomllib.TOMLDecodeError):
        pass
    if action == "imported":
        dst_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        write_atomic(dropin, render_dropin(settings, src), 0o600)
    st = dropin.stat()
    if st.st_mode & 0o777 != 0o600 or (owner is not None and (st.st_uid, st.st_gid) != (uid, gid)):
        if owner is not None:
            os.chown(dropin, uid, gid)
        os.chmod(dropin, 0o600)
        _fsync(dropin)
    # Only now, with the drop-in durable, may the source go: a crash before this line imports again.
    try:
        src.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        return ImportResult(action, dropin, source_removed=False, source_error=exc.strerror or str(exc))
    _fsync(src.parent)
    return ImportResult(action, dropin, source_removed=True)


def _fsync(p: Path) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if p.is_dir() else 0)
    try:
        fd = os.open(p, flags)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # FAT may refuse a directory fsync; the unlink still happened
            os.fsync(fd)
    finally:
        os.close(fd)


def cmd_import_provisioning(args: argparse.Namespace) -> int:
    """``edge-gateway import-provisioning [-c FILE] [--source FILE] [--owner USER]``; 0 ok, 1 error."""
    config_path = Path(getattr(args, "config", None) or os.environ.get("EDGE_GATEWAY_CONFIG") or config.DEFAULT_PATH)
    source = Path(getattr(args, "source", None) or BOOT_FILE)
    owner = getattr(args, "owner", None)
    dst_dir = config_path.parent / "gateway.d"
    try:
        result = import_provision_file(source, dst_dir, owner=owner)
    except ProvisionFileError as exc:
        for problem in exc.problems:
            print(f"edge-gateway: {exc.source}: {problem}", file=sys.stderr)
        print(f"edge-gateway: {exc.source} not imported: fix it on the boot partition and reboot", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"edge-gateway: cannot write {dst_dir / DROPIN_NAME}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if result.action == "nothing":
        print(f"nothing to import: {source} does not exist")
        return 0
    what = "imported" if result.action == "imported" else "already imported (same settings)"
    print(f"{source}: {what} as {result.dropin} (mode 0600{', owner ' + owner if owner else ''})")
    status = 0
    if result.source_removed:
        print(f"{source}: removed from the boot partition")
    else:
        print(
            f"edge-gateway: could not remove {source} ({result.source_error}): it still holds the provision "
            "secret, remove it by hand",
            file=sys.stderr,
        )
        status = 1
    if config_path.exists():
        try:
            config.load(config_path, env={})
        except config.ConfigError as exc:
            for problem in exc.problems:
                print(f"edge-gateway: {problem}", file=sys.stderr)
            status = 1
    return status


__all__ = [
    "BOOT_FILE",
    "DROPIN_NAME",
    "ImportResult",
    "Phase",
    "ProvisionFileError",
    "ProvisionSettings",
    "Provisioner",
    "ProvisioningError",
    "ProvisioningNotConfigured",
    "ProvisioningRefused",
    "ProvisioningTimeout",
    "build_request",
    "cmd_import_provisioning",
    "generate_x509",
    "import_provision_file",
    "interpret_answer",
    "provision",
    "resolve_device_name",
]
