"""Typed configuration from TOML: one file, a drop-in directory, environment overrides for secrets.

Every section is a frozen dataclass; the loader walks the dataclasses' type hints, so the schema and
the code that uses it cannot drift apart. All errors in a file are collected and reported together,
each with its key path and what is expected::

    gateway.toml: thingsboard.port: expected an integer from 1 to 65535, got "abc"
    gateway.toml: outbox.max_byts: unknown key (did you mean "max_bytes"?)

Sources, later ones winning key by key:
1. the main file (``/etc/edge-gateway/gateway.toml`` for the service);
2. ``<main file's directory>/gateway.d/*.toml`` in name order (drop-ins);
3. environment variables ``EDGE_GATEWAY__SECTION__KEY=value`` (double underscores separate the
   path; the value is read as a TOML value when it parses as one, else as a string). Meant for
   secrets such as ``EDGE_GATEWAY__THINGSBOARD__TOKEN``, so that they need not be in a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib  # Python >= 3.11 (Raspberry Pi OS Bookworm ships 3.11)
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.serial.config import SerialPortConfig, parse_ports
from gateway.store.clients import ClientConfigEntry, check_client_entries

ENV_PREFIX = "EDGE_GATEWAY__"
DEFAULT_PATH = Path("/etc/edge-gateway/gateway.toml")


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` lists them, ``str()`` gives one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def one_line(self) -> str:
        first = self.problems[0]
        more = len(self.problems) - 1
        return first if not more else f"{first} (and {more} more: run 'edge-gateway check-config')"


# ----------------------------------------------------------------------------------------------
# Schema. Field metadata: "doc" (shown by check-config --explain), "min"/"max" for numbers,
# "secret" (never printed), "size" (accepts "256MiB"-style strings), "pattern" for strings.


def _f(default: Any, doc: str, **meta: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **meta})
    return field(default=default, metadata={"doc": doc, **meta})


@dataclass(frozen=True, slots=True)
class GatewaySection:
    name: str = _f("", "device name of this gateway in ThingsBoard; empty: derived from the board serial")
    state_dir: Path = _f(Path("/var/lib/edge-gateway"), "where the outbox and credentials live")  # noqa: RUF009
    log_level: Literal["debug", "info", "warning", "error"] = _f("info", "log level")
    telemetry_interval_s: float = _f(60.0, "how often the gateway reports its own telemetry", min=1.0)
    status_file: str = _f("status.json", "status snapshot for 'edge-gateway status' (in state_dir)")
    control_socket: str = _f("control.sock", "unix socket the CLI asks the running service on (in state_dir)")


@dataclass(frozen=True, slots=True)
class ThingsBoardSection:
    host: str = _f("127.0.0.1", "ThingsBoard MQTT host")
    port: int = _f(1883, "ThingsBoard MQTT port (8883 for TLS)", min=1, max=65535)
    credentials: Literal["access_token", "mqtt_basic", "x509", "provision"] = _f(
        "provision", "how to authenticate: a token, MQTT basic, an X.509 certificate, or provision on first boot"
    )
    token: str = _f("", "access token (credentials = access_token)", secret=True)
    client_id: str = _f("", "MQTT client id (mqtt_basic)")
    username: str = _f("", "MQTT user name (mqtt_basic)")
    password: str = _f("", "MQTT password (mqtt_basic)", secret=True)
    tls: bool = _f(False, "use TLS (always on for x509)")
    ca_file: str = _f("", "CA bundle to verify the server; empty: the system's")
    cert_file: str = _f("", "client certificate (x509)")
    key_file: str = _f("", "client private key (x509)", secret_path=True)
    keepalive_s: int = _f(60, "MQTT keepalive", min=5, max=65535)
    reconnect_min_s: float = _f(1.0, "first reconnect delay", min=0.1)
    reconnect_max_s: float = _f(60.0, "longest reconnect delay (exponential backoff with jitter)", min=0.1)
    rejected_retry_s: float = _f(600.0, "retry delay after the server rejected the credentials", min=10.0)
    session_limits_timeout_s: float = _f(10.0, "how long to wait for the getSessionLimits answer", min=0.1)


@dataclass(frozen=True, slots=True)
class ProvisioningSection:
    key: str = _f("", "provision device key of the ThingsBoard device profile", secret=True)
    secret: str = _f("", "provision device secret", secret=True)
    device_name: str = _f("", "name to provision under; empty: gateway.name or the board serial")
    credentials_type: Literal["ACCESS_TOKEN", "MQTT_BASIC", "X509_CERTIFICATE", ""] = _f(
        "", "credentials type to ask for; empty: let the server generate an access token"
    )
    retry_s: float = _f(300.0, "retry delay after a refused provisioning request", min=10.0)
    timeout_s: float = _f(30.0, "how long to wait for ThingsBoard's answer to a provisioning request", min=1.0)


@dataclass(frozen=True, slots=True)
class OutboxSection:
    path: str = _f("outbox.sqlite3", "the queue's SQLite file (relative to gateway.state_dir)")
    max_bytes: int = _f(256 * 1024 * 1024, "queue bound in bytes, e.g. \"256MiB\"", min=1024 * 1024, size=True)
    max_age_days: float = _f(30.0, "records older than this are dropped (counted, logged)", min=0.01)
    commit_interval_ms: int = _f(50, "group commit: longest wait before a batch is written", min=1, max=5000)
    commit_records: int = _f(20000, "group commit: largest batch", min=1, max=1_000_000)
    unsynced: Literal["hold", "send_without_ts"] = _f(
        "hold", "records taken before the clock was synchronised: hold until re-stamped, or send without ts"
    )
    hold_max_s: float = _f(3600.0, "longest hold of unsynchronised records before sending them without ts", min=0)


@dataclass(frozen=True, slots=True)
class ClockSection:
    trust: Literal["auto", "marker", "always"] = _f(
        "auto", "when the wall clock is trusted: auto (timesyncd marker or kernel), marker only, always"
    )
    sync_marker: str = _f("/run/systemd/timesync/synchronized", "file that marks a synchronised clock")


@dataclass(frozen=True, slots=True)
class DemoSection:
    synthetic_devices: int = _f(0, "number of synthetic devices reporting telemetry (demo only)", min=0, max=100_000)
    interval_s: float = _f(1.0, "seconds between two readings of each synthetic device", min=0.001)
    ack_file: str = _f("", "append each round's sequence number here once it is durable (tests)")


@dataclass(frozen=True, slots=True)
class GpioSection:
    enabled: bool = _f(True, "drive the status LED and read the button (only on a Raspberry Pi; a no-op elsewhere)")
    led_pin: int = _f(17, "BCM number of the status LED's pin; -1: no LED", min=-1, max=63)
    led_active_low: bool = _f(False, "the LED lights when its pin is low (wired to 3.3 V)")
    button_pin: int = _f(27, "BCM number of the button's pin; -1: no button", min=-1, max=63)
    active_low: bool = _f(True, "the button pulls its pin to ground when pressed (internal pull-up)")
    debounce_ms: int = _f(50, "the button's level must be stable this long to count", min=1, max=1000)
    reset_hold_s: float = _f(10.0, "holding the button this long is a factory reset", min=2.0, max=60.0)


@dataclass(frozen=True, slots=True)
class Lwm2mBootstrapSection:
    enabled: bool = _f(False, "run the LwM2M bootstrap server (its own ports; devices learn which LwM2M server "
                       "to use and with which credentials)")
    bind: str = _f("::", "address the bootstrap server listens on")
    port: int = _f(5783, "CoAP/UDP port of the bootstrap server (NoSec; 5783/5784 as the Leshan "
                   "sandbox's bootstrap server; ThingsBoard uses 5687/5688)", min=0, max=65535)
    dtls: bool = _f(True, "serve bootstrap over DTLS (PSK, RPK, X.509) too; the server's key, certificate and "
                    "trust store are lwm2m.server_key_file, server_cert_file and trust_ca_*")
    dtls_port: int = _f(5784, "CoAP/DTLS port of the bootstrap server", min=0, max=65535)
    server_host: str = _f("", "host written into the LwM2M server URIs sent to devices; empty: this gateway's "
                          "primary address")
    db: str = _f("bootstrap.sqlite3", "bootstrap configurations and the last bootstrap of each endpoint "
                 "(relative to gateway.state_dir)")
    request_timeout_s: float = _f(30.0, "deadline of one bootstrap request to a device (all CoAP "
                                  "retransmissions); a device that never answers Bootstrap-Finish fails after it",
                                  min=1.0)
    retries: int = _f(1, "a request answered 5.xx or not at all is sent again this many times", min=0, max=10)
    max_active: int = _f(2000, "bootstraps in progress at once; more are answered 5.03", min=1)
    configs: list[dict[str, Any]] = _f(  # noqa: RUF009
        [], "[[lwm2m.bootstrap.configs]] tables in ThingsBoard's bootstrap JSON shape: endpoint or pattern, "
        "bootstrap = {bootstrapServer, lwm2mServer}, servers"
    )


@dataclass(frozen=True, slots=True)
class Lwm2mSection:
    enabled: bool = _f(True, "run the LwM2M server")
    bind: str = _f("::", "address the LwM2M server listens on (\"::\" also takes IPv4)")
    port: int = _f(5683, "CoAP/UDP port of the LwM2M server (NoSec)", min=0, max=65535)
    admit_unknown_nosec: bool = _f(
        False, "let endpoints that are not in the credentials store register without security (demo only)"
    )
    models_dir: str = _f("", "directory of OMA DDF XML object models to load besides the built-in ones")
    profiles_dir: str = _f("profiles", "directory of LwM2M device profiles (*.toml; relative to the configuration "
                           "file's directory); missing: the built-in default profile only")
    bridge_workers: int = _f(32, "after-registration sequences (write attributes, observe, read) run at once",
                             min=1, max=1024)
    request_timeout_s: float = _f(93.0, "deadline of a request to a device (all CoAP retransmissions)", min=1.0)
    queue_awake_s: float = _f(93.0, "how long a queue-mode device listens after it last talked", min=1.0)
    max_held_per_device: int = _f(32, "requests held for one sleeping queue-mode device", min=1)
    max_held_total: int = _f(10_000, "requests held for all sleeping devices together", min=1)
    receive_buffer: int = _f(16 * 1024 * 1024, "UDP receive buffer (capped by net.core.rmem_max)", min=65536, size=True)
    dtls: bool = _f(True, "serve CoAP over DTLS (PSK, RPK, X.509) beside NoSec")
    dtls_port: int = _f(5684, "CoAP/DTLS port of the LwM2M server", min=0, max=65535)
    server_key_file: str = _f("", "the server's EC P-256 private key (PEM): its raw public key for RPK, and with "
                              "server_cert_file its certificate key for X.509; empty: PSK only", secret_path=True)
    server_cert_file: str = _f("", "the server's certificate chain (PEM) for X.509 clients; empty: no X.509")
    trust_ca_file: str = _f("", "CA certificates (PEM) that client certificates must chain to")
    trust_ca_dir: str = _f("", "a directory of CA certificates (PEM) that client certificates may chain to")
    clients_db: str = _f("clients.sqlite3", "the LwM2M clients' credentials store (relative to gateway.state_dir)")
    device_sessions_max: int = _f(1000, "per-device mode (profiles with [upstream] mode = \"device\"): most "
                                  "device sessions open at once; beyond it the least recently idle one is closed "
                                  "for a device with data, the others wait", min=1, max=100_000)
    device_outbox: str = _f("device-outbox.sqlite3", "per-device mode: the queue of those devices' records "
                            "(relative to gateway.state_dir)")
    device_credentials_dir: str = _f("devices", "per-device mode: the devices' ThingsBoard credentials, one "
                                     "directory each (relative to gateway.state_dir)")
    clients: list[ClientConfigEntry] = _f(  # noqa: RUF009
        [], "[[lwm2m.clients]] tables: endpoint, mode, identity, key or key_file, public_key, cert, cn"
    )
    bootstrap: Lwm2mBootstrapSection = field(default_factory=Lwm2mBootstrapSection)


@dataclass(frozen=True, slots=True)
class SerialSection:
    #: [[serial.ports]]: validated by gateway.serial.config.parse_ports (its own key paths)
    ports: tuple[SerialPortConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    thingsboard: ThingsBoardSection = field(default_factory=ThingsBoardSection)
    provisioning: ProvisioningSection = field(default_factory=ProvisioningSection)
    outbox: OutboxSection = field(default_factory=OutboxSection)
    clock: ClockSection = field(default_factory=ClockSection)
    demo: DemoSection = field(default_factory=DemoSection)
    gpio: GpioSection = field(default_factory=GpioSection)
    lwm2m: Lwm2mSection = field(default_factory=Lwm2mSection)
    serial: SerialSection = field(default_factory=SerialSection, metadata={"internal": True})
    sources: tuple[str, ...] = field(default=(), metadata={"internal": True})

    def state_path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.gateway.state_dir / p

    def config_path(self, name: str) -> Path:
        """``name`` relative to the directory of the main configuration file (the working directory
        when the configuration came from the environment alone)."""
        p = Path(name)
        if p.is_absolute() or not self.sources or self.sources[0] == "environment":
            return p
        return Path(self.sources[0]).parent / p

    @property
    def outbox_path(self) -> Path:
        return self.state_path(self.outbox.path)


# ----------------------------------------------------------------------------------------------
# Loading


def load(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (plus drop-ins and environment overrides) and validate it. Raises ConfigError."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    problems: list[str] = []
    sources: list[str] = []
    if path is not None:
        files = [path]
        dropin = path.parent / "gateway.d"
        if dropin.is_dir():
            files += sorted(p for p in dropin.glob("*.toml") if p.is_file())
        for file in files:
            try:
                with file.open("rb") as fh:
                    data = tomllib.load(fh)
            except FileNotFoundError:
                problems.append(f"{file}: file not found")
                continue
            except PermissionError:
                problems.append(f"{file}: permission denied (the service reads it as its own user)")
                continue
            except tomllib.TOMLDecodeError as exc:
                problems.append(f"{file}: not valid TOML: {exc}")
                continue
            except OSError as exc:
                problems.append(f"{file}: cannot read: {exc.strerror}")
                continue
            _deep_merge(merged, data, origin=str(file))
            sources.append(str(file))
    env_data = _from_env(env, problems)
    if env_data:
        _deep_merge(merged, env_data, origin="environment")
        sources.append("environment")
    if problems:
        raise ConfigError(problems)
    label = str(path) if path else "defaults"
    serial_table = merged.pop("serial", None)
    cfg = _build(Config, merged, "", problems, label=label)
    if serial_table is not None:
        if not isinstance(serial_table, Mapping):
            problems.append(f"{label}: serial: expected a table")
        else:
            problems += [f"{label}: serial.{k}: unknown key (known: ports)" for k in serial_table if k != "ports"]
            ports, port_problems = parse_ports(serial_table.get("ports", []), label=label)
            problems += port_problems
            cfg = dataclasses.replace(cfg, serial=SerialSection(tuple(ports)))
    if problems:
        raise ConfigError(problems)
    assert isinstance(cfg, Config)
    cfg = dataclasses.replace(cfg, sources=tuple(sources))
    _check_consistency(cfg, problems, str(path) if path else "defaults")
    if problems:
        raise ConfigError(problems)
    return cfg


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any], origin: str) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, origin)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _from_env(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            problems.append(f"environment: {name}: empty key path")
            continue
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                problems.append(f"environment: {name}: conflicts with another variable")
                break
        else:
            node[parts[-1]] = value
    return out


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise ValueError(text)
    unit = (m.group(2) or "b").lower()
    return int(float(m.group(1)) * _UNITS[unit])


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' for a in typing.get_args(tp))
    lo, hi = meta.get("min"), meta.get("max")
    rng = ""
    if lo is not None and hi is not None:
        rng = f" from {lo} to {hi}"
    elif lo is not None:
        rng = f" of at least {lo}"
    if tp is bool:
        return "true or false"
    if tp is int:
        return ("a size such as \"256MiB\" or an integer" if meta.get("size") else "an integer") + rng
    if tp is float:
        return "a number" + rng
    if tp is Path:
        return "a path"
    if tp is str:
        return "a string"
    if origin in (list, tuple):
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _shown(value: Any, meta: Mapping[str, Any]) -> str:
    if meta.get("secret") and value:
        return "<secret>"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _build(cls: Any, data: Any, prefix: str, problems: list[str], label: str) -> Any:
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(data, Mapping):
        problems.append(f"{label}: {where}: expected a table, got {_shown(data, {})}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(fields)})"
            problems.append(f"{label}: {prefix}{key}: unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        tp = hints[name]
        value = data[name]
        path = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, path + ".", problems, label)
            continue
        item_tp = _dataclass_items(tp)
        if item_tp is not None:
            if not isinstance(value, list):
                problems.append(f"{label}: {path}: expected a list of tables ([[{path}]]), got {_shown(value, {})}")
                continue
            kwargs[name] = [_build(item_tp, v, f"{path}[{i}].", problems, label) for i, v in enumerate(value)]
            continue
        ok, converted = _convert(tp, value, f.metadata)
        if not ok:
            problems.append(
                f"{label}: {path}: expected {_describe(tp, f.metadata)}, got {_shown(value, f.metadata)}"
            )
            continue
        kwargs[name] = converted
    return cls(**kwargs)


def _dataclass_items(tp: Any) -> Any:
    """The item type of ``list[SomeDataclass]`` (an array of tables), else None."""
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):
            return item
    return None


def _convert(tp: Any, value: Any, meta: Mapping[str, Any]) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return (value in typing.get_args(tp), value)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            ok, v = _convert(arg, value, meta)
            if ok:
                return True, v
        return False, None
    if tp is type(None):
        return (value is None, None)
    if tp is bool:
        return (isinstance(value, bool), value)
    if origin is dict:  # a free-form table (checked by its owner, e.g. bootstrap configurations)
        return (isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else None)
    if tp is int:
        if isinstance(value, str) and meta.get("size"):
            try:
                value = parse_size(value)
            except ValueError:
                return False, None
        if not isinstance(value, int) or isinstance(value, bool):
            return False, None
        return (_in_range(value, meta), value)
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False, None
        return (_in_range(float(value), meta), float(value))
    if tp is str:
        if not isinstance(value, str):
            return False, None
        pattern = meta.get("pattern")
        return (pattern is None or re.fullmatch(pattern, value) is not None, value)
    if tp is Path:
        return (isinstance(value, str) and value != "", Path(value) if isinstance(value, str) else None)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, None
        out = []
        for item in value:
            ok, v = _convert(item_tp, item, {})
            if not ok:
                return False, None
            out.append(v)
        return True, out
    return False, None


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _check_consistency(cfg: Config, problems: list[str], label: str) -> None:
    if not cfg.lwm2m.enabled and any(p.protocol == "slipmux" for p in cfg.serial.ports):
        problems.append(f"{label}: serial.ports: a slipmux (LwM2M over serial) port needs lwm2m.enabled = true")
    base_dir = Path(label).parent if cfg.sources else None  # relative key_file / cert: beside the main file
    problems.extend(check_client_entries(cfg.lwm2m.clients, label=label, base_dir=base_dir)[1])
    problems.extend(bootstrap_config_problems(cfg.lwm2m.bootstrap.configs, label))
    tb = cfg.thingsboard
    if tb.credentials == "access_token" and not tb.token:
        problems.append(
            f"{label}: thingsboard.token: required when thingsboard.credentials = \"access_token\" "
            f"(or set {ENV_PREFIX}THINGSBOARD__TOKEN)"
        )
    if tb.credentials == "mqtt_basic" and not (tb.client_id or tb.username):
        problems.append(f"{label}: thingsboard.username: client_id or username required for mqtt_basic")
    if tb.credentials == "x509" and not (tb.cert_file and tb.key_file):
        problems.append(f"{label}: thingsboard.cert_file: cert_file and key_file required for x509")
    if tb.reconnect_max_s < tb.reconnect_min_s:
        problems.append(f"{label}: thingsboard.reconnect_max_s: must not be below reconnect_min_s")
    if tb.credentials == "provision" and cfg.provisioning.credentials_type == "X509_CERTIFICATE" and not tb.tls:
        problems.append(
            f"{label}: thingsboard.tls: must be true when provisioning.credentials_type = \"X509_CERTIFICATE\" "
            "(a client certificate needs ThingsBoard's TLS port, usually 8883)"
        )


def bootstrap_config_problems(configs: list[dict[str, Any]], label: str) -> list[str]:
    """``[[lwm2m.bootstrap.configs]]``: each must parse (gateway.lwm2m.bootstrap.config), names unique."""
    from gateway.lwm2m.bootstrap.config import parse_config
    from gateway.lwm2m.tbcredentials import CredentialsFormatError

    problems, seen = [], set()
    for i, obj in enumerate(configs):
        where = f"lwm2m.bootstrap.configs[{i}]"
        try:
            c = parse_config(obj, where=where)
        except CredentialsFormatError as exc:
            problems.append(f"{label}: {exc}")
            continue
        if (c.name, c.is_pattern) in seen:
            problems.append(f"{label}: {where}: {c.name!r} is configured twice")
        seen.add((c.name, c.is_pattern))
    return problems


def explain(cls: Any = Config, prefix: str = "") -> list[str]:
    """One line per key: path, type, default, doc (secrets' defaults are not shown)."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += explain(tp, f"{prefix}{f.name}.")
            continue
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        lines.append(
            f"{prefix}{f.name} = {_shown(default, f.metadata)}  # {_describe(tp, f.metadata)}; "
            f"{f.metadata.get('doc', '')}"
        )
    return lines


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective configuration as a dict, secrets replaced by "<secret>" (empty ones stay empty)."""

    def walk(obj: Any) -> Any:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.metadata.get("internal"):
                continue
            if dataclasses.is_dataclass(v):
                out[f.name] = walk(v)
            elif isinstance(v, list) and any(dataclasses.is_dataclass(x) for x in v):
                out[f.name] = [walk(x) for x in v]
            elif f.metadata.get("secret") and v:
                out[f.name] = "<secret>"
            else:
                out[f.name] = str(v) if isinstance(v, Path) else v
        return out

    return walk(cfg)  # type: ignore[no-any-return]


#: Keys that ThingsBoard may change at run time (shared attribute ``config`` of the gateway device).
RUNTIME_KEYS = frozenset({"gateway.log_level", "gateway.telemetry_interval_s"})


def apply_runtime_changes(cfg: Config, changes: Any) -> tuple[Config, list[str]]:
    """``cfg`` with ``changes`` (``{"gateway": {"log_level": "debug"}}``) applied, or the problems.

    Only :data:`RUNTIME_KEYS` may change; anything else, or a bad value, is refused with its key
    path, and then nothing at all is applied (the old configuration stays).
    """
    problems: list[str] = []
    if not isinstance(changes, Mapping):
        return cfg, ["config: expected an object such as {\"gateway\": {\"log_level\": \"debug\"}}"]
    sections: dict[str, dict[str, Any]] = {}
    for section, values in changes.items():
        if not isinstance(values, Mapping):
            problems.append(f"config.{section}: expected an object")
            continue
        for key, value in values.items():
            path = f"{section}.{key}"
            if path not in RUNTIME_KEYS:
                allowed = ", ".join(sorted(RUNTIME_KEYS))
                problems.append(f"config.{path}: cannot change at run time (allowed: {allowed})")
                continue
            current = getattr(cfg, section)
            f = next(f for f in dataclasses.fields(current) if f.name == key)
            ok, converted = _convert(typing.get_type_hints(type(current))[key], value, f.metadata)
            if not ok:
                tp = typing.get_type_hints(type(current))[key]
                problems.append(f"config.{path}: expected {_describe(tp, f.metadata)}, got {_shown(value, f.metadata)}")
                continue
            sections.setdefault(section, {})[key] = converted
    if problems:
        return cfg, problems
    for section, values in sections.items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
    return cfg, []
