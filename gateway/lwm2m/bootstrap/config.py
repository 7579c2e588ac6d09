"""Bootstrap configurations: what the bootstrap server tells a device, per endpoint or per name pattern.

The JSON shape is ThingsBoard's ``bootstrap`` part of the LwM2M device credentials (``bootstrapServer``
and ``lwm2mServer``), plus the LwM2M server accounts to write in the shape of ThingsBoard's profile
``bootstrap[]`` entries::

    {"endpoint": "urn:imei:356938035643802",            # or "pattern": "urn:imei:*" (a template)
     "bootstrap": {
        "bootstrapServer": {"securityMode": "PSK", "clientPublicKeyOrId": "id", "clientSecretKey": "<hex>"},
        "lwm2mServer": {"securityMode": "PSK", "generate": true}},
     "servers": [{"shortServerId": 1, "host": "", "port": 0, "lifetime": 300, "binding": "U"}]}

* ``bootstrapServer``: how the device authenticates to *this* bootstrap server (its factory
  credentials): PSK identity + hex key, RPK public key (base64 SPKI), X.509 certificate (base64 DER,
  pinned) or ``{"securityMode": "X509"}`` alone (any trusted certificate whose CN is the endpoint).
  Secret keys of the device (``clientSecretKey`` for RPK/X.509) are not needed and not kept.
* ``lwm2mServer``: the device's credentials for the LwM2M server, written to ``/0/x/3`` and ``/0/x/5``;
  ``"generate": true`` (PSK or RPK): fresh ones per device, stored in the gateway's credentials store
  (zero-touch).
* ``servers``: LwM2M server accounts (``/0/x`` + ``/1/x``); empty host/port: this gateway (the
  configured ``server_host`` and the LwM2M port of the mode). Default: one account, short server id 1.

A pattern (``*``, ``?``, ``[...]`` as in shell globs) is a template: an endpoint's own configuration
takes what it lacks from the most specific matching template (the longest pattern). A template's
``bootstrapServer`` can only be ``NO_SEC`` or ``X509`` without a certificate (there is no per-device
material in a template).
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.lwm2m.tbcredentials import (
    CredentialsFormatError,
    SecurityMode,
    check_endpoint,
    check_psk_identity,
    parse_certificate,
    parse_der_base64,
    parse_public_key_base64,
    parse_tb_psk_key,
)
from gateway.store.clients import ClientEntry, Source

DEFAULT_SHORT_SERVER_ID: Final = 1
_BINDING: Final = re.compile(r"U|UQ|T|TQ|S|SQ|US|UQS|N|NQ|UT|UN|UTN|TN")


class BootstrapConfigError(CredentialsFormatError):
    """A bootstrap configuration that cannot be used; ``where`` is the JSON key path."""


def _problem(where: str, message: str) -> BootstrapConfigError:
    return BootstrapConfigError(where, message)


@dataclass(frozen=True, slots=True)
class BootstrapAuth:
    """How a device authenticates to the bootstrap server (the ``bootstrapServer`` part)."""

    mode: SecurityMode
    identity: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    public_key: bytes | None = None
    cert: bytes | None = None

    def client_entry(self, endpoint: str) -> ClientEntry:
        """As a credentials entry (what the bootstrap DTLS listener and the binding check)."""
        match self.mode:
            case SecurityMode.PSK:
                assert self.identity is not None and self.key is not None
                return ClientEntry.psk(endpoint, self.identity, self.key, source=Source.CONFIG)
            case SecurityMode.RPK:
                assert self.public_key is not None
                return ClientEntry.rpk(endpoint, self.public_key, source=Source.CONFIG)
            case SecurityMode.X509:
                return ClientEntry.x509(endpoint, cert=self.cert, source=Source.CONFIG)
        return ClientEntry.nosec(endpoint, source=Source.CONFIG)

    @property
    def per_device(self) -> bool:
        return self.identity is not None or self.public_key is not None or self.cert is not None


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """The device's credentials for the LwM2M server (the ``lwm2mServer`` part), or ``generate``."""

    mode: SecurityMode
    public_key_or_id: bytes | None = None
    secret_key: bytes | None = field(default=None, repr=False)
    generate: bool = False


@dataclass(frozen=True, slots=True)
class ServerAccount:
    """One LwM2M server account: Security ``/0/x`` and Server ``/1/x`` (ThingsBoard's profile shape)."""

    short_server_id: int = DEFAULT_SHORT_SERVER_ID
    host: str = ""
    port: int = 0
    lifetime: int = 300
    binding: str = "U"
    default_min_period: int = 1
    notif_if_disabled: bool = True
    server_public_key: bytes | None = None
    client_hold_off_time: int = 1


@dataclass(frozen=True, slots=True)
class AclEntry:
    """One Access Control instance (object 2): who may do what on object instance ``/oid/iid``.
    ``access``: short server id -> bits (1 Read/Observe, 2 Write, 4 Execute, 8 Delete, 16 Create)."""

    object_id: int
    instance_id: int
    access: tuple[tuple[int, int], ...]
    owner: int


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    """One configuration (see the module docstring)."""

    name: str
    is_pattern: bool = False
    bootstrap_server: BootstrapAuth | None = None
    lwm2m_server: ServerSecurity | None = None
    servers: tuple[ServerAccount, ...] = ()
    source: Source = Source.CLI
    updated_ms: int = field(default=0, compare=False)
    acl: tuple[AclEntry, ...] = ()

    def matches(self, endpoint: str) -> bool:
        return fnmatch.fnmatchcase(endpoint, self.name) if self.is_pattern else endpoint == self.name

    def merged_over(self, template: BootstrapConfig | None) -> BootstrapConfig:
        """This configuration with what it lacks taken from ``template``."""
        if template is None:
            return self
        return dataclasses.replace(
            self,
            bootstrap_server=self.bootstrap_server or template.bootstrap_server,
            lwm2m_server=self.lwm2m_server or template.lwm2m_server,
            servers=self.servers or template.servers,
            acl=self.acl or template.acl,
        )

    def summary(self) -> dict[str, Any]:
        """For people (``bootstrap list``): no secrets."""
        return {
            "name": self.name,
            "kind": "pattern" if self.is_pattern else "endpoint",
            "bootstrap_security": self.bootstrap_server.mode.value if self.bootstrap_server else None,
            "server_security": (
                self.lwm2m_server.mode.value + (" (generate)" if self.lwm2m_server.generate else "")
                if self.lwm2m_server
                else None
            ),
            "servers": [f"{s.short_server_id}:{s.host or '(gateway)'}:{s.port or '(default)'}" for s in self.servers],
            "source": self.source.value,
            "updated_ms": self.updated_ms,
        }


# --- JSON -----------------------------------------------------------------------------------------------


def parse_config(obj: object, *, source: Source = Source.CLI, where: str = "config") -> BootstrapConfig:
    """A configuration from its JSON object; BootstrapConfigError names the key that is wrong."""
    if not isinstance(obj, Mapping):
        raise _problem(where, "expected a JSON object")
    known = {"endpoint", "pattern", "bootstrap", "servers", "bootstrapServer", "lwm2mServer", "acl"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise _problem(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(known))})")
    endpoint, pattern = obj.get("endpoint"), obj.get("pattern")
    if (endpoint is None) == (pattern is None):
        raise _problem(where, 'give exactly one of "endpoint" and "pattern"')
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern.strip():
            raise _problem(f"{where}.pattern", "expected a non-empty glob pattern")
        name, is_pattern = pattern, True
    else:
        name, is_pattern = check_endpoint(endpoint, f"{where}.endpoint"), False
    part = obj.get("bootstrap", {k: obj[k] for k in ("bootstrapServer", "lwm2mServer") if k in obj})
    if not isinstance(part, Mapping):
        raise _problem(f"{where}.bootstrap", "expected a JSON object with bootstrapServer and/or lwm2mServer")
    bs = part.get("bootstrapServer")
    auth = None if bs is None else _auth(bs, f"{where}.bootstrap.bootstrapServer")
    if auth is not None and is_pattern and auth.per_device:
        raise _problem(
            f"{where}.bootstrap.bootstrapServer",
            "a template (pattern) cannot hold one device's credentials: give them per endpoint",
        )
    if auth is not None and is_pattern and auth.mode in (SecurityMode.PSK, SecurityMode.RPK):
        raise _problem(f"{where}.bootstrap.bootstrapServer", f"{auth.mode.value} needs per-device credentials")
    ls = part.get("lwm2mServer")
    security = None if ls is None else _server_security(ls, f"{where}.bootstrap.lwm2mServer", is_pattern)
    servers_obj = obj.get("servers", [])
    if not isinstance(servers_obj, list):
        raise _problem(f"{where}.servers", "expected a list of server accounts")
    servers = tuple(_account(s, f"{where}.servers[{i}]", security) for i, s in enumerate(servers_obj))
    ids = [s.short_server_id for s in servers]
    if len(set(ids)) != len(ids):
        raise _problem(f"{where}.servers", "short server ids must be unique")
    acl_obj = obj.get("acl", [])
    if not isinstance(acl_obj, list):
        raise _problem(f"{where}.acl", "expected a list of access control entries")
    acl = tuple(_acl(a, f"{where}.acl[{i}]") for i, a in enumerate(acl_obj))
    return BootstrapConfig(name, is_pattern, auth, security, servers, source, acl=acl)


def _acl(obj: object, where: str) -> AclEntry:
    if not isinstance(obj, Mapping):
        raise _problem(where, "expected a JSON object with objectId, instanceId, access, owner")
    access = obj.get("access", {})
    if not isinstance(access, Mapping):
        raise _problem(f"{where}.access", 'expected {"<short server id>": <bits>}')
    rights = []
    for ssid, bits in access.items():
        if not str(ssid).isdigit() or not 0 <= int(ssid) <= 65535:
            raise _problem(f"{where}.access", f"{ssid!r} is not a short server id (0: default for all)")
        if not isinstance(bits, int) or isinstance(bits, bool) or not 0 <= bits <= 31:
            raise _problem(f"{where}.access.{ssid}", "expected access bits 0-31 (1 R, 2 W, 4 E, 8 D, 16 C)")
        rights.append((int(ssid), bits))
    return AclEntry(
        _int(obj, "objectId", -1, where, 1, 65534),
        _int(obj, "instanceId", 65535, where, 0, 65535),
        tuple(sorted(rights)),
        _int(obj, "owner", 0, where, 0, 65535),
    )


def _auth(obj: object, where: str) -> BootstrapAuth:
    if not isinstance(obj, Mapping):
        raise _problem(where, "expected a JSON object")
    mode = SecurityMode.parse(obj.get("securityMode"), f"{where}.securityMode")
    pub = obj.get("clientPublicKeyOrId")
    match mode:
        case SecurityMode.PSK:
            return BootstrapAuth(
                mode,
                identity=check_psk_identity(pub, f"{where}.clientPublicKeyOrId"),
                key=parse_tb_psk_key(obj.get("clientSecretKey"), f"{where}.clientSecretKey"),
            )
        case SecurityMode.RPK:
            return BootstrapAuth(mode, public_key=parse_public_key_base64(pub, f"{where}.clientPublicKeyOrId"))
        case SecurityMode.X509:
            if pub in (None, ""):
                return BootstrapAuth(mode)
            cert = parse_der_base64(pub, f"{where}.clientPublicKeyOrId", "CERTIFICATE")
            parse_certificate(cert, f"{where}.clientPublicKeyOrId")
            return BootstrapAuth(mode, cert=cert)
    return BootstrapAuth(mode)


def _server_security(obj: object, where: str, is_pattern: bool) -> ServerSecurity:
    if not isinstance(obj, Mapping):
        raise _problem(where, "expected a JSON object")
    mode = SecurityMode.parse(obj.get("securityMode"), f"{where}.securityMode")
    generate = obj.get("generate", False)
    if not isinstance(generate, bool):
        raise _problem(f"{where}.generate", "expected true or false")
    if generate:
        if mode not in (SecurityMode.PSK, SecurityMode.RPK):
            raise _problem(f"{where}.generate", f"the gateway generates PSK or RPK credentials, not {mode.value}")
        return ServerSecurity(mode, generate=True)
    pub, sec = obj.get("clientPublicKeyOrId"), obj.get("clientSecretKey")
    if mode is SecurityMode.NO_SEC:
        return ServerSecurity(mode)
    if is_pattern:
        raise _problem(where, f"a template cannot hold one device's {mode.value} credentials: use \"generate\": true")
    if mode is SecurityMode.PSK:
        return ServerSecurity(
            mode,
            check_psk_identity(pub, f"{where}.clientPublicKeyOrId"),
            parse_tb_psk_key(sec, f"{where}.clientSecretKey"),
        )
    if mode is SecurityMode.RPK:
        public = parse_public_key_base64(pub, f"{where}.clientPublicKeyOrId")
    else:
        public = parse_der_base64(pub, f"{where}.clientPublicKeyOrId", "CERTIFICATE")
        parse_certificate(public, f"{where}.clientPublicKeyOrId")
    private = parse_der_base64(sec, f"{where}.clientSecretKey", "PRIVATE KEY", "EC PRIVATE KEY")
    return ServerSecurity(mode, public, private)


def _int(obj: Mapping[str, Any], key: str, default: int, where: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _problem(f"{where}.{key}", f"expected an integer from {lo} to {hi}")
    return value


def _account(obj: object, where: str, security: ServerSecurity | None) -> ServerAccount:
    if not isinstance(obj, Mapping):
        raise _problem(where, "expected a JSON object")
    if obj.get("bootstrapServerIs"):
        raise _problem(f"{where}.bootstrapServerIs", "the bootstrap server never rewrites its own account")
    mode = obj.get("securityMode")
    if mode is not None and security is not None and SecurityMode.parse(mode, f"{where}.securityMode") != security.mode:
        raise _problem(f"{where}.securityMode", f"differs from lwm2mServer.securityMode ({security.mode.value})")
    host = obj.get("host") or ""
    if not isinstance(host, str):
        raise _problem(f"{where}.host", "expected a host name or address")
    if host == "0.0.0.0":
        host = ""
    binding = obj.get("binding", "U")
    if not isinstance(binding, str) or not _BINDING.fullmatch(binding):
        raise _problem(f"{where}.binding", "expected an LwM2M binding such as U, UQ or T")
    notif = obj.get("notifIfDisabled", True)
    if not isinstance(notif, bool):
        raise _problem(f"{where}.notifIfDisabled", "expected true or false")
    spk = obj.get("serverPublicKey")
    server_key = None if not spk else parse_der_base64(spk, f"{where}.serverPublicKey", "PUBLIC KEY", "CERTIFICATE")
    return ServerAccount(
        short_server_id=_int(obj, "shortServerId", DEFAULT_SHORT_SERVER_ID, where, 1, 65534),
        host=host,
        port=_int(obj, "port", 0, where, 0, 65535),
        lifetime=_int(obj, "lifetime", 300, where, 1, 2**31 - 1),
        binding=binding,
        default_min_period=_int(obj, "defaultMinPeriod", 1, where, 0, 2**31 - 1),
        notif_if_disabled=notif,
        server_public_key=server_key,
        client_hold_off_time=_int(obj, "clientHoldOffTime", 1, where, 0, 2**31 - 1),
    )


def config_to_json(cfg: BootstrapConfig) -> dict[str, Any]:
    """The JSON object :func:`parse_config` reads back. It holds secrets (PSK keys): store it like a key."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    out: dict[str, Any] = {"pattern" if cfg.is_pattern else "endpoint": cfg.name}
    part: dict[str, Any] = {}
    auth = cfg.bootstrap_server
    if auth is not None:
        a: dict[str, Any] = {"securityMode": auth.mode.value}
        if auth.identity is not None and auth.key is not None:
            a["clientPublicKeyOrId"] = auth.identity.decode("utf-8", "surrogatepass")
            a["clientSecretKey"] = auth.key.hex()
        elif auth.public_key is not None:
            a["clientPublicKeyOrId"] = b64(auth.public_key)
        elif auth.cert is not None:
            a["clientPublicKeyOrId"] = b64(auth.cert)
        part["bootstrapServer"] = a
    sec = cfg.lwm2m_server
    if sec is not None:
        s: dict[str, Any] = {"securityMode": sec.mode.value}
        if sec.generate:
            s["generate"] = True
        elif sec.public_key_or_id is not None and sec.secret_key is not None:
            if sec.mode is SecurityMode.PSK:
                s["clientPublicKeyOrId"] = sec.public_key_or_id.decode("utf-8", "surrogatepass")
                s["clientSecretKey"] = sec.secret_key.hex()
            else:
                s["clientPublicKeyOrId"] = b64(sec.public_key_or_id)
                s["clientSecretKey"] = b64(sec.secret_key)
        part["lwm2mServer"] = s
    if part:
        out["bootstrap"] = part
    if cfg.acl:
        out["acl"] = [
            {"objectId": a.object_id, "instanceId": a.instance_id, "access": {str(k): v for k, v in a.access},
             "owner": a.owner}
            for a in cfg.acl
        ]
    if cfg.servers:
        out["servers"] = [
            {
                "shortServerId": a2.short_server_id,
                "host": a2.host,
                "port": a2.port,
                "lifetime": a2.lifetime,
                "binding": a2.binding,
                "defaultMinPeriod": a2.default_min_period,
                "notifIfDisabled": a2.notif_if_disabled,
                "clientHoldOffTime": a2.client_hold_off_time,
                **({"serverPublicKey": b64(a2.server_public_key)} if a2.server_public_key else {}),
            }
            for a2 in cfg.servers
        ]
    return out


def specificity(cfg: BootstrapConfig) -> tuple[int, int]:
    """Sort key: an endpoint's own configuration first, then longer (more literal) patterns."""
    literal = len(cfg.name) - sum(cfg.name.count(c) for c in "*?[")
    return (0 if cfg.is_pattern else 1, literal)
