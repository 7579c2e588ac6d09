"""Configuration of serial ports: the ``[[serial.ports]]`` tables, typed and checked.

One table per port. Every port has a name (logs, status, telemetry, and the host of
``coap+uart://<name>/`` URIs), a path (best the stable ``/dev/serial/by-id/...`` link) and line
settings; ``protocol`` says what speaks on it: ``"lines"``, a plain sensor sending text lines
(one ThingsBoard device per port), or ``"slipmux"``, an LwM2M client speaking CoAP in slipmux
frames::

    [[serial.ports]]
    name = "boiler"
    path = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
    baudrate = 9600
    device = "Boiler 1"
    profile = "boiler"
    converter = { type = "kv" }
    attribute_template = "SET {name} {value}"
    rpc.setpoint = { template = "SP {value}", reply = '^SP=(?P<value>[-0-9.]+)$', timeout_s = 3 }

    [[serial.ports]]
    name = "meter"
    path = "/dev/serial/by-id/usb-Silicon_Labs_CP2102_0001-if00-port0"
    protocol = "slipmux"
    rs485 = { rts_level_for_tx = true }

:func:`parse_ports` validates a list of such tables and reports every problem with its key path
(``serial.ports[1].parity: expected one of ...``), in the format of :mod:`gateway.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.serial.converters import ConverterConfigError, LineTemplate, TemplateError, build_converter
from gateway.serial.port import LinkSettings, Parity, Rs485Settings

DEFAULT_PREFIX: Final = "serial.ports"
#: Port names: usable as a URI host (coap+uart://<name>/), compared without regard to case.
NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"

Protocol = Literal["lines", "slipmux"]
FlowControl = Literal["none", "rtscts", "xonxoff"]


def _f(default: Any, doc: str, **meta: Any) -> Any:
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"doc": doc, **meta})
    return field(default=default, metadata={"doc": doc, **meta})


@dataclass(frozen=True, slots=True)
class RpcMethodConfig:
    """An RPC method of a line sensor: the line to write, and optionally the reply line to wait for."""

    template: str = _f("", "line written for the RPC: {method}, {params} or each key of a params table")
    reply: str = _f("", "regular expression a received line must match to be the reply (empty: no reply awaited)")
    timeout_s: float = _f(2.0, "how long to wait for the reply line", min=0.01, max=300.0)


@dataclass(frozen=True, slots=True)
class SerialPortConfig:
    name: str = _f("", "port name: logs, status, telemetry, coap+uart://<name>/", pattern=NAME_PATTERN, required=True)
    path: str = _f("", "device path, best /dev/serial/by-id/...", required=True)
    baudrate: int = _f(115200, "line speed in baud", min=50, max=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = _f(8, "data bits")
    parity: Parity = _f("none", "parity")  # noqa: RUF009
    stopbits: float = _f(1.0, "stop bits: 1, 1.5 or 2", choices=(1, 1.5, 2))
    flow_control: FlowControl = _f("none", "none, rtscts (hardware) or xonxoff (software flow control)")  # noqa: RUF009
    exclusive: bool = _f(True, "lock the port so that no other program opens it")
    rs485: Rs485Settings | None = _f(None, "kernel RS-485 direction control (a table; absent: off)")  # noqa: RUF009
    reopen_min_s: float = _f(1.0, "first delay before reopening a lost port", min=0.01, max=3600.0)
    reopen_max_s: float = _f(30.0, "longest delay between reopen attempts (doubling)", min=0.01, max=3600.0)
    protocol: Protocol = _f("lines", "lines (a plain sensor) or slipmux (LwM2M over CoAP)")  # noqa: RUF009
    # protocol = "lines"
    device: str = _f("", "lines: ThingsBoard device name of the sensor", lines=True)
    profile: str = _f("serial-sensor", "lines: ThingsBoard device profile (type)", lines=True)
    terminator: str = _f("\n", "lines: what ends a received line", lines=True)
    write_terminator: str = _f("", "lines: what ends a written line (empty: the terminator)", lines=True)
    max_line_length: int = _f(1024, "lines: longer lines are dropped and counted", min=1, max=65536, lines=True)
    converter: Mapping[str, Any] = _f({}, "lines: how lines become values (type = json, kv or regex)", lines=True)
    rpc: Mapping[str, RpcMethodConfig] = _f({}, "lines: RPC methods: {template, reply, timeout_s}", lines=True)
    attribute_template: str = _f("", "lines: line written per shared attribute update: {name} {value}", lines=True)
    attribute_keys: tuple[str, ...] = _f((), "lines: shared attributes to write (empty: all)", lines=True)
    # protocol = "slipmux"
    max_message_size: int = _f(2048, "slipmux: largest CoAP message accepted", min=64, max=65536, slipmux=True)

    def link_settings(self) -> LinkSettings:
        return LinkSettings(
            path=self.path,
            baudrate=self.baudrate,
            bytesize=self.bytesize,
            parity=self.parity,
            stopbits=self.stopbits,
            rtscts=self.flow_control == "rtscts",
            xonxoff=self.flow_control == "xonxoff",
            rs485=self.rs485,
            exclusive=self.exclusive,
        )

    @property
    def line_write_terminator(self) -> str:
        return self.write_terminator or self.terminator

    def converter_config(self) -> dict[str, Any]:
        """The converter table, with the port's line length unless it sets its own."""
        table = dict(self.converter)
        table.setdefault("max_line_length", self.max_line_length)
        return table


# --- Validation ------------------------------------------------------------------------------------


class _Problems:
    def __init__(self, label: str) -> None:
        self.label = label
        self.list: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.list.append(f"{self.label}: {path}: {message}" if self.label else f"{path}: {message}")


def parse_ports(
    value: object, *, label: str = "", prefix: str = DEFAULT_PREFIX
) -> tuple[list[SerialPortConfig], list[str]]:
    """Check a list of port tables; return the ports that are valid and every problem found.

    Each problem is one line, ``"<label>: <key path>: <what is wrong>"`` (the label is the file the
    tables came from). The configuration is usable only if the problem list is empty.
    """
    problems = _Problems(label)
    if value is None:
        return [], []
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        problems.add(prefix, f"expected a list of tables ([[{prefix}]]), got {_shown(value)}")
        return [], problems.list
    ports: list[SerialPortConfig] = []
    names: dict[str, str] = {}
    paths: dict[str, str] = {}
    devices: dict[str, str] = {}
    for index, table in enumerate(value):
        where = f"{prefix}[{index}]"
        before = len(problems.list)
        port = _port(table, where, problems)
        if port is None or len(problems.list) > before:
            continue
        for seen, key, what in ((names, port.name.lower(), "name"), (paths, port.path, "path")):
            if key in seen:
                problems.add(f"{where}.{what}", f"{getattr(port, what)!r} is also {seen[key]}.{what}")
            seen[key] = where
        if port.protocol == "lines":
            if port.device in devices:
                problems.add(f"{where}.device", f"{port.device!r} is also {devices[port.device]}.device")
            devices[port.device] = where
        ports.append(port)
    return (ports if not problems.list else []), problems.list


def _port(table: object, where: str, problems: _Problems) -> SerialPortConfig | None:
    if not isinstance(table, Mapping):
        problems.add(where, f"expected a table, got {_shown(table)}")
        return None
    values = _fields(SerialPortConfig, table, where, problems)
    protocol = values.get("protocol", "lines")
    for f in dataclasses.fields(SerialPortConfig):
        if f.name not in table:
            continue
        if f.metadata.get("lines") and protocol != "lines":
            problems.add(f"{where}.{f.name}", 'only for protocol = "lines"')
        if f.metadata.get("slipmux") and protocol != "slipmux":
            problems.add(f"{where}.{f.name}", 'only for protocol = "slipmux"')
    for f in dataclasses.fields(SerialPortConfig):
        if f.metadata.get("required") and f.name not in table:
            problems.add(f"{where}.{f.name}", "required")
        elif f.metadata.get("required") and values.get(f.name) == "":
            problems.add(f"{where}.{f.name}", "must not be empty")
    if "rpc" in values:
        values["rpc"] = _rpc_methods(values["rpc"], f"{where}.rpc", problems)
    try:
        port = SerialPortConfig(**values)
    except (TypeError, ValueError) as exc:  # only if a check above let something through
        problems.add(where, str(exc))
        return None
    if port.reopen_max_s < port.reopen_min_s:
        problems.add(f"{where}.reopen_max_s", "must not be below reopen_min_s")
    if port.rs485 is not None and port.flow_control == "rtscts":
        problems.add(f"{where}.rs485", "RS-485 direction control uses RTS: not with flow_control = \"rtscts\"")
    if port.protocol == "lines":
        _check_lines(port, where, problems)
    return port


def _check_lines(port: SerialPortConfig, where: str, problems: _Problems) -> None:
    if not port.device:
        problems.add(f"{where}.device", 'required for protocol = "lines"')
    if not port.terminator:
        problems.add(f"{where}.terminator", "must not be empty")
    if not port.converter:
        problems.add(f"{where}.converter", "required: a table with type = json, kv or regex")
    else:
        try:
            build_converter(port.converter_config(), where=f"{where}.converter")
        except ConverterConfigError as exc:
            problems.add(exc.key, exc.message)
    write_terminator = port.line_write_terminator
    if not write_terminator:
        return  # the templates cannot be checked without one
    if port.attribute_template:
        try:
            template = LineTemplate(port.attribute_template, terminator=write_terminator)
        except TemplateError as exc:
            problems.add(f"{where}.attribute_template", str(exc))
        else:
            unknown = [p for p in template.placeholders if p not in ("name", "value")]
            if unknown:
                problems.add(f"{where}.attribute_template", f"only {{name}} and {{value}} exist, not {{{unknown[0]}}}")
    elif port.attribute_keys:
        problems.add(f"{where}.attribute_keys", "needs an attribute_template")
    for method, spec in port.rpc.items():
        try:
            LineTemplate(spec.template, terminator=write_terminator)
        except TemplateError as exc:
            problems.add(f"{where}.rpc.{method}.template", str(exc))
        if spec.reply:
            try:
                re.compile(spec.reply)
            except re.error as exc:
                problems.add(f"{where}.rpc.{method}.reply", f"not a regular expression: {exc}")


def _rpc_methods(value: Mapping[str, Any], where: str, problems: _Problems) -> dict[str, RpcMethodConfig]:
    methods: dict[str, RpcMethodConfig] = {}
    for method, table in value.items():
        path = f"{where}.{method}"
        if isinstance(table, str):  # rpc.reboot = "REBOOT": just a template
            table = {"template": table}
        if not isinstance(table, Mapping):
            expected = "a table {template, reply, timeout_s} or a template string"
            problems.add(path, f"expected {expected}, got {_shown(table)}")
            continue
        values = _fields(RpcMethodConfig, table, path, problems)
        if not values.get("template"):
            problems.add(f"{path}.template", "required")
            continue
        methods[method] = RpcMethodConfig(**values)
    return methods


def _fields(cls: Any, table: Mapping[str, Any], where: str, problems: _Problems) -> dict[str, Any]:
    """The table's values for ``cls``'s fields, converted; problems for unknown keys and bad values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(fields)})"
            problems.add(f"{where}.{key}", f"unknown key{hint}")
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            continue
        ok, converted = _convert(hints[name], table[name], f.metadata, f"{where}.{name}", problems)
        if ok:
            out[name] = converted
    return out


def _convert(tp: Any, value: Any, meta: Mapping[str, Any], path: str, problems: _Problems) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):  # X | None: only a table can be given
        (inner,) = (a for a in typing.get_args(tp) if a is not type(None))
        return _convert(inner, value, meta, path, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.add(path, f"expected a table, got {_shown(value)}")
            return False, None
        before = len(problems.list)
        values = _fields(tp, value, path, problems)
        if len(problems.list) > before:
            return False, None
        cls: Any = tp
        return True, cls(**values)
    ok, converted = _scalar(tp, origin, value, meta)
    if not ok:
        problems.add(path, f"expected {_describe(tp, origin, meta)}, got {_shown(value)}")
    return ok, converted


def _scalar(tp: Any, origin: Any, value: Any, meta: Mapping[str, Any]) -> tuple[bool, Any]:
    if origin is Literal:
        choices = typing.get_args(tp)
        # 1 == 1.0 == True in Python: compare types too, so that stopbits = true is refused
        match = [c for c in choices if c == value and not isinstance(value, bool)]
        return (bool(match), match[0] if match else None)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return False, None
        return _in_range(value, meta), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, None
        allowed = meta.get("choices")
        if allowed is not None:
            return value in allowed, float(value)
        return _in_range(float(value), meta), float(value)
    if tp is str:
        if not isinstance(value, str):
            return False, None
        pattern = meta.get("pattern")
        return (pattern is None or value == "" or re.fullmatch(pattern, value) is not None), value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return False, None
        return True, tuple(value)
    if origin is Mapping:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else None
    return False, None


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _describe(tp: Any, origin: Any, meta: Mapping[str, Any]) -> str:
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in typing.get_args(tp))
    lo, hi = meta.get("min"), meta.get("max")
    rng = f" from {lo} to {hi}" if lo is not None and hi is not None else ""
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + rng
    if tp is float and meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    if tp is float:
        return "a number" + rng
    if tp is str:
        return f"a string matching {meta['pattern']}" if meta.get("pattern") else "a string"
    if origin is tuple:
        return "a list of non-empty strings"
    return "a table"


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def explain(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """One line per key of a port table: path, default, doc (as ``gateway.config.explain``)."""
    lines: list[str] = []
    for cls, where in (
        (SerialPortConfig, f"{prefix}[]"),
        (Rs485Settings, f"{prefix}[].rs485"),
        (RpcMethodConfig, f"{prefix}[].rpc.<method>"),
    ):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default: Any = f.default
            else:
                factory: Any = f.default_factory
                default = factory()
            doc = f.metadata.get("doc", "")
            lines.append(f"{where}.{f.name} = {_shown(default) if default is not None else '(absent)'}  # {doc}")
    return lines


__all__ = ["DEFAULT_PREFIX", "RpcMethodConfig", "SerialPortConfig", "explain", "parse_ports"]
