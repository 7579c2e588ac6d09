"""The [[serial.ports]] tables: typed values from TOML, and every problem reported with its key path."""

from __future__ import annotations

import tomllib
from typing import Any

from gateway.serial.config import RpcMethodConfig, SerialPortConfig, explain, parse_ports
from gateway.serial.port import LinkSettings, Rs485Settings

EXAMPLE = """
[[serial.ports]]
name = "boiler"
path = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
baudrate = 9600
parity = "even"
stopbits = 2
device = "Boiler 1"
profile = "boiler"
terminator = "\\r\\n"
converter = { type = "regex", pattern = 'T=(?P<t>-?[0-9]+)', fields.t = { type = "int", unit = "C", scale = 0.1 } }
attribute_template = "SET {name} {value}"
attribute_keys = ["setpoint"]
rpc.setpoint = { template = "SP {value}", reply = '^SP=(?P<value>[-0-9.]+)$', timeout_s = 3 }
rpc.reboot = "REBOOT"

[[serial.ports]]
name = "meter"
path = "/dev/serial/by-id/usb-Silicon_Labs_CP2102_0001-if00-port0"
protocol = "slipmux"
max_message_size = 1200
rs485 = { rts_level_for_tx = true, delay_before_tx_s = 0.002 }
"""


def problems_of(*tables: Any) -> list[str]:
    ports, problems = parse_ports(list(tables), label="gateway.toml")
    assert ports == [] or not problems
    return problems


def test_example_parses_into_typed_ports() -> None:
    ports, problems = parse_ports(tomllib.loads(EXAMPLE)["serial"]["ports"], label="gateway.toml")
    assert problems == []
    boiler, meter = ports
    assert isinstance(boiler, SerialPortConfig)
    assert (boiler.baudrate, boiler.parity, boiler.stopbits, boiler.terminator) == (9600, "even", 2.0, "\r\n")
    assert boiler.rpc == {
        "setpoint": RpcMethodConfig(template="SP {value}", reply="^SP=(?P<value>[-0-9.]+)$", timeout_s=3.0),
        "reboot": RpcMethodConfig(template="REBOOT"),
    }
    assert boiler.attribute_keys == ("setpoint",) and boiler.line_write_terminator == "\r\n"
    assert boiler.converter_config()["max_line_length"] == 1024
    assert boiler.link_settings() == LinkSettings(
        path=boiler.path, baudrate=9600, parity="even", stopbits=2.0, rtscts=False, xonxoff=False
    )
    assert meter.protocol == "slipmux" and meter.max_message_size == 1200
    assert meter.rs485 == Rs485Settings(rts_level_for_tx=True, delay_before_tx_s=0.002)
    assert meter.link_settings().rs485 == meter.rs485 and meter.link_settings().bytes_per_second == 11520


def test_absent_section_is_no_ports() -> None:
    assert parse_ports(None) == ([], [])
    assert parse_ports([]) == ([], [])


def test_value_problems_name_their_key() -> None:
    got = problems_of(
        {
            "name": "bad name!", "path": "/dev/x", "baudrate": "fast", "parity": "pair", "stopbits": 3,
            "bytesize": True, "flow_control": "cts", "exclusive": "yes", "reopen_min_s": 0,
            "device": "d", "converter": {"type": "kv"}, "max_line_length": 0, "attribute_keys": "setpoint",
            "baudrat": 9600,
        }
    )  # fmt: skip
    assert got == [
        'gateway.toml: serial.ports[0].baudrat: unknown key (did you mean "baudrate"?)',
        'gateway.toml: serial.ports[0].name: expected a string matching [A-Za-z0-9][A-Za-z0-9._-]{0,62}, '
        'got "bad name!"',
        'gateway.toml: serial.ports[0].baudrate: expected an integer from 50 to 4000000, got "fast"',
        "gateway.toml: serial.ports[0].bytesize: expected one of 5, 6, 7, 8, got true",
        'gateway.toml: serial.ports[0].parity: expected one of "none", "even", "odd", "mark", "space", got "pair"',
        "gateway.toml: serial.ports[0].stopbits: expected one of 1, 1.5, 2, got 3",
        'gateway.toml: serial.ports[0].flow_control: expected one of "none", "rtscts", "xonxoff", got "cts"',
        'gateway.toml: serial.ports[0].exclusive: expected true or false, got "yes"',
        "gateway.toml: serial.ports[0].reopen_min_s: expected a number from 0.01 to 3600.0, got 0",
        "gateway.toml: serial.ports[0].max_line_length: expected an integer from 1 to 65536, got 0",
        'gateway.toml: serial.ports[0].attribute_keys: expected a list of non-empty strings, got "setpoint"',
    ]


def test_missing_and_inconsistent_keys() -> None:
    assert problems_of({"name": "", "path": "/dev/x", "protocol": "slipmux"}) == [
        "gateway.toml: serial.ports[0].name: must not be empty"
    ]
    assert problems_of({}) == [
        "gateway.toml: serial.ports[0].name: required",
        "gateway.toml: serial.ports[0].path: required",
        'gateway.toml: serial.ports[0].device: required for protocol = "lines"',
        "gateway.toml: serial.ports[0].converter: required: a table with type = json, kv or regex",
    ]
    assert problems_of(
        {"name": "m", "path": "/dev/m", "protocol": "slipmux", "device": "x", "flow_control": "rtscts",
         "rs485": {"required": True, "rts_lvl": 1}, "reopen_min_s": 10, "reopen_max_s": 5}
    ) == [
        'gateway.toml: serial.ports[0].rs485.rts_lvl: unknown key (did you mean "rts_level_for_tx"?)',
        'gateway.toml: serial.ports[0].device: only for protocol = "lines"',
        "gateway.toml: serial.ports[0].reopen_max_s: must not be below reopen_min_s",
    ]  # fmt: skip
    assert problems_of(
        {"name": "m", "path": "/dev/m", "device": "d", "converter": {"type": "kv"}, "max_message_size": 100,
         "flow_control": "rtscts", "rs485": {}, "reopen_min_s": 10, "reopen_max_s": 5}
    ) == [
        'gateway.toml: serial.ports[0].max_message_size: only for protocol = "slipmux"',
        "gateway.toml: serial.ports[0].reopen_max_s: must not be below reopen_min_s",
        'gateway.toml: serial.ports[0].rs485: RS-485 direction control uses RTS: not with flow_control = "rtscts"',
    ]  # fmt: skip


def test_converter_templates_and_rpc_are_checked() -> None:
    got = problems_of(
        {
            "name": "s", "path": "/dev/s", "device": "d", "terminator": "", "write_terminator": "\n",
            "converter": {"type": "regex", "pattern": "(?P<t>x)", "fields": {"t": {"type": "number"}}},
            "attribute_template": "SET {key} {value}",
            "rpc": {
                "a": {"template": "A {", "reply": "("},
                "b": {"reply": "x"},
                "c": 5,
                "d": {"template": "D", "timeout_s": -1},
            },
        }
    )  # fmt: skip
    where = "gateway.toml: serial.ports[0]."
    assert got == [
        f"{where}rpc.b.template: required",
        f"{where}rpc.c: expected a table {{template, reply, timeout_s}} or a template string, got 5",
        f"{where}rpc.d.timeout_s: expected a number from 0.01 to 300.0, got -1",
        f"{where}terminator: must not be empty",
        f"{where}converter.fields.t.type: expected one of int, float, str, bool, got 'number'",
        f"{where}attribute_template: only {{name}} and {{value}} exist, not {{key}}",
        f"{where}rpc.a.template: template 'A {{': '{{' at position 2 is not a {{name}} placeholder "
        "(write '{{' for a literal brace)",
        f"{where}rpc.a.reply: not a regular expression: missing ), unterminated subpattern at position 0",
    ]
    assert problems_of(
        {"name": "s", "path": "/dev/s", "device": "d", "converter": {"type": "kv"}, "attribute_keys": ["a"]}
    ) == [f"{where}attribute_keys: needs an attribute_template"]


def test_duplicates_across_ports() -> None:
    base = {"converter": {"type": "json"}}
    got = problems_of(
        {"name": "Boiler", "path": "/dev/a", "device": "d1", **base},
        {"name": "boiler", "path": "/dev/b", "device": "d1", **base},
        {"name": "c", "path": "/dev/a", "protocol": "slipmux"},
    )
    assert got == [
        "gateway.toml: serial.ports[1].name: 'boiler' is also serial.ports[0].name",
        "gateway.toml: serial.ports[1].device: 'd1' is also serial.ports[0].device",
        "gateway.toml: serial.ports[2].path: '/dev/a' is also serial.ports[0].path",
    ]


def test_not_a_list_of_tables() -> None:
    assert parse_ports({"name": "x"}, label="f")[1] == [
        "f: serial.ports: expected a list of tables ([[serial.ports]]), got a table"
    ]
    assert parse_ports(["x"], prefix="ports")[1] == ['ports[0]: expected a table, got "x"']


def test_explain_lists_every_key() -> None:
    lines = explain()
    assert any(line.startswith("serial.ports[].baudrate = 115200  # line speed") for line in lines)
    assert any(line.startswith("serial.ports[].rs485 = (absent)") for line in lines)
    assert any(line.startswith("serial.ports[].rs485.delay_before_tx_s = 0.0") for line in lines)
    assert any(line.startswith("serial.ports[].rpc.<method>.timeout_s = 2.0") for line in lines)
