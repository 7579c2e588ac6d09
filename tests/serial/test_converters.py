"""Line converters: good and bad lines for each, templates, configuration, and fuzzing (a line
converts or raises ConversionError, nothing else)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.serial.converters import (
    ConversionError,
    Converter,
    ConverterConfigError,
    FieldSpec,
    JsonLineConverter,
    KeyValueConverter,
    LineTemplate,
    Reading,
    RegexConverter,
    TemplateError,
    build_converter,
)


def refused(converter: Converter, line: bytes) -> str:
    with pytest.raises(ConversionError) as info:
        converter.convert(line)
    return info.value.reason


# --- Shared line checks ----------------------------------------------------------------------------

ALL_CONVERTERS = [
    pytest.param(JsonLineConverter(max_line_length=64), id="json"),
    pytest.param(KeyValueConverter(max_line_length=64), id="kv"),
    pytest.param(
        RegexConverter(r"(?P<t>.*)", {"t": FieldSpec("str")}, max_line_length=64),
        id="regex",
    ),
]


@pytest.mark.parametrize("converter", ALL_CONVERTERS)
@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "empty line"),
        (b"  \r", "empty line"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"temp=\xc3", "not UTF-8"),
        (b"x" * 65, "line too long (65 > 64 bytes)"),
    ],
)
def test_bad_lines_for_every_converter(converter: Converter, line: bytes, reason: str) -> None:
    assert refused(converter, line) == reason


@pytest.mark.parametrize("converter", ALL_CONVERTERS)
def test_line_of_exactly_max_length_is_read(converter: Converter) -> None:
    line = b'{"k":"' + b"v" * 56 + b'"}' if isinstance(converter, JsonLineConverter) else b"k=" + b"v" * 62
    assert len(line) == 64
    assert converter.convert(line).telemetry


# --- JSON lines ------------------------------------------------------------------------------------


def test_json_all_telemetry_by_default() -> None:
    reading = JsonLineConverter().convert(b'{"temp": 21.5, "hum": 40, "ok": true, "fw": "1.2"}\r')
    assert reading == Reading({"temp": 21.5, "hum": 40, "ok": True, "fw": "1.2"}, {}, None)


def test_json_nested_objects_flattened_with_dots() -> None:
    reading = JsonLineConverter().convert(b'{"env": {"t": 1, "inner": {"x": "y"}}, "n": null, "e": {}}')
    assert reading.telemetry == {"env.t": 1, "env.inner.x": "y"}


def test_json_routing_attribute_keys_only() -> None:
    reading = JsonLineConverter(attribute_keys=["fw", "cfg.mode"]).convert(
        b'{"temp": 1, "fw": "1.2", "cfg": {"mode": "eco"}}'
    )
    assert reading == Reading({"temp": 1}, {"fw": "1.2", "cfg.mode": "eco"})


def test_json_routing_telemetry_keys_drop_the_rest() -> None:
    reading = JsonLineConverter(telemetry_keys=["temp"], attribute_keys=["fw"]).convert(
        b'{"temp": 1, "fw": "1.2", "junk": 3}'
    )
    assert reading == Reading({"temp": 1}, {"fw": "1.2"})


@pytest.mark.parametrize(
    ("ts", "ts_ms"),
    [
        ("1700000000", 1_700_000_000_000),
        ("1700000000.25", 1_700_000_000_250),
        ("1700000000123", 1_700_000_000_123),
        ("99999999999", 99_999_999_999_000),  # just under 1e11: seconds
        ("100000000000", 100_000_000_000),  # 1e11: milliseconds
    ],
)
def test_json_timestamp_seconds_or_ms_by_magnitude(ts: str, ts_ms: int) -> None:
    reading = JsonLineConverter(ts_key="ts").convert(b'{"t": 1, "ts": %s}' % ts.encode())
    assert reading == Reading({"t": 1}, {}, ts_ms)


def test_json_timestamp_missing_is_none() -> None:
    assert JsonLineConverter(ts_key="ts").convert(b'{"t": 1}').ts_ms is None


def test_json_nested_timestamp_key() -> None:
    assert JsonLineConverter(ts_key="meta.ts").convert(b'{"t":1,"meta":{"ts":1700000000}}').ts_ms == (1_700_000_000_000)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"[1, 2]", "not a JSON object but an array"),
        (b"42", "not a JSON object but a number"),
        (b'"text"', "not a JSON object but a string"),
        (b"true", "not a JSON object but a bool"),
        (b"null", "not a JSON object but null"),
        (b'{"t": NaN}', "non-finite number NaN"),
        (b'{"t": Infinity}', "non-finite number Infinity"),
        (b'{"t": -Infinity}', "non-finite number -Infinity"),
        (b'{"t": 1e999}', "non-finite number '1e999'"),
        (b'{"t": 1', "invalid JSON: Expecting ',' delimiter at column 8"),
        (b'{"t": 1} x', "invalid JSON: Extra data at column 10"),
        (b"{}", "no values"),
        (b'{"t": null}', "no values"),
        (b'{"t": [1, 2]}', "array value for 't'"),
        (b'{"a": {"b": [1]}}', "array value for 'a.b'"),
        (b'{"": 1}', "empty key in the object"),
        (b'{"t": 1, "t": 2}', "duplicate key 't'"),
        (b'{"a.b": 1, "a": {"b": 2}}', "duplicate key 'a.b'"),
        (
            b'{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":1}}}}}}}}}',
            "nested deeper than 8 levels at 'a.a.a.a.a.a.a.a'",
        ),
        (b"[" * 5000 + b"]" * 5000, "invalid JSON: nested too deeply"),
        (b'{"t": ' + b"1" * 5000 + b"}", "invalid JSON: number too long"),
    ],
)
def test_json_bad_lines(line: bytes, reason: str) -> None:
    assert refused(JsonLineConverter(max_line_length=20_000), line) == reason


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        ('"2024-01-01"', "timestamp 'ts' is not a number"),
        ("true", "timestamp 'ts' is not a number"),
        ("0", "timestamp 'ts' out of range"),
        ("-5", "timestamp 'ts' out of range"),
        ("1e20", "timestamp 'ts' out of range"),
        ("1" * 400, "timestamp 'ts' out of range"),
    ],
)
def test_json_bad_timestamps(ts: str, reason: str) -> None:
    assert refused(JsonLineConverter(ts_key="ts"), b'{"t": 1, "ts": %s}' % ts.encode()) == reason


def test_json_key_in_both_lists_is_a_config_error() -> None:
    with pytest.raises(ConverterConfigError, match="attribute_keys: also listed in telemetry_keys: a"):
        JsonLineConverter(telemetry_keys=["a", "b"], attribute_keys=["a"])


# --- key=value -------------------------------------------------------------------------------------


def test_kv_autodetection() -> None:
    reading = KeyValueConverter().convert(b" temp = 21.5 , hum=40,ok=TRUE,off=false,door=open,neg=-3,e=1e3,,")
    assert reading.telemetry == {
        "temp": 21.5,
        "hum": 40,
        "ok": True,
        "off": False,
        "door": "open",
        "neg": -3,
        "e": 1000.0,
    }
    assert type(reading.telemetry["hum"]) is int


def test_kv_text_that_python_would_parse_stays_text() -> None:
    # int() accepts "1_000" and non-ASCII digits; the sensor did not mean a number.
    assert KeyValueConverter().convert("a=1_000,b=\u0661\u0662".encode()).telemetry == {
        "a": "1_000",
        "b": "\u0661\u0662",
    }


def test_kv_declared_types() -> None:
    converter = KeyValueConverter(types={"id": "str", "t": "float", "n": "int", "on": "bool"})
    reading = converter.convert(b"id=007,t=21,n=+5,on=1")
    assert reading.telemetry == {"id": "007", "t": 21.0, "n": 5, "on": True}
    assert type(reading.telemetry["t"]) is float


def test_kv_other_separators_and_routing() -> None:
    converter = KeyValueConverter(pair_sep=";", kv_sep=":", attribute_keys=["fw"], ts_key="ts")
    assert converter.convert(b"t:1;fw:a=b;ts:1700000000000") == Reading({"t": 1}, {"fw": "a=b"}, 1_700_000_000_000)


def test_kv_space_separated() -> None:
    assert KeyValueConverter(pair_sep=" ").convert(b"t=1   h=2").telemetry == {"t": 1, "h": 2}


def test_kv_empty_value_is_absent() -> None:
    assert KeyValueConverter().convert(b"t=,h=2").telemetry == {"h": 2}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"temp", "no '=' in 'temp'"),
        (b"t=1,=2", "empty key before '2'"),
        (b"t=1,t=2", "duplicate key 't'"),
        (b"t=nan", "'t': not a finite number"),
        (b"t=-Infinity", "'t': not a finite number"),
        (b"t=1e999", "'t': not a finite number"),
        (b"t=", "no values"),
        (b"n=1.5", "'n': '1.5' is not an int"),
        (b"f=abc", "'f': 'abc' is not a float"),
        (b"f=inf", "'f': not a finite number"),
        (b"b=yes", "'b': 'yes' is not a bool"),
        (b"n=" + b"9" * 5000, "'n': integer too long"),
    ],
)
def test_kv_bad_lines(line: bytes, reason: str) -> None:
    converter = KeyValueConverter(types={"n": "int", "f": "float", "b": "bool"}, max_line_length=10_000)
    assert refused(converter, line) == reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pair_sep": ""}, "pair_sep: expected a non-empty string"),
        ({"pair_sep": "=", "kv_sep": "="}, "kv_sep: '=' and pair_sep '=' must differ"),
        ({"types": {"t": "double"}}, "types.t: expected one of int, float, str, bool, got 'double'"),
        ({"ts_key": ""}, "ts_key: expected a key name"),
        ({"telemetry_keys": "temp"}, "telemetry_keys: expected a list of key names"),
        ({"max_line_length": 0}, "max_line_length: expected a positive integer"),
    ],
)
def test_kv_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConverterConfigError, match=message):
        KeyValueConverter(**kwargs)


# --- Regular expression ----------------------------------------------------------------------------

SENSOR = RegexConverter(
    r"T=(?P<t>-?[0-9]+) H=(?P<h>[0-9.]+)% (?P<state>\w+)(?: S/N (?P<sn>\w+))?(?: @(?P<ts>[0-9]+))?",
    {
        "t": FieldSpec("int", key="temperature", unit="C", scale=0.1),
        "h": FieldSpec("float", key="humidity", unit="%"),
        "state": FieldSpec("str"),
        "sn": FieldSpec("str", target="attribute", key="serial"),
    },
    ts_field="ts",
)


def test_regex_reading() -> None:
    reading = SENSOR.convert(b"T=-215 H=40.5% heating S/N ab12 @1700000000")
    assert reading == Reading(
        {"temperature": -21.5, "humidity": 40.5, "state": "heating"},
        {"serial": "ab12"},
        1_700_000_000_000,
    )


def test_regex_optional_groups_are_absent() -> None:
    assert SENSOR.convert(b"T=215 H=40% idle") == Reading({"temperature": 21.5, "humidity": 40.0, "state": "idle"})


def test_regex_units_are_static_attributes() -> None:
    assert SENSOR.static_attributes == {"temperature_unit": "C", "humidity_unit": "%"}
    assert "temperature_unit" not in SENSOR.convert(b"T=1 H=2% x").attributes


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"T=215 H=40%", "no match"),
        (b"T=215 H=40% idle extra", "no match"),
        (b"garbage", "no match"),
        (b"T=215 H=1.2.3% idle", "'h': '1.2.3' is not a float"),
        (b"T=215 H=40% idle @0", "timestamp 'ts' out of range"),
    ],
)
def test_regex_bad_lines(line: bytes, reason: str) -> None:
    assert refused(SENSOR, line) == reason


def test_regex_scaled_overflow_is_refused() -> None:
    converter = RegexConverter(r"(?P<v>[0-9]+)", {"v": FieldSpec("int", scale=10.0)}, max_line_length=2000)
    assert refused(converter, b"9" * 400) == "'v': not a finite number once scaled"


def test_regex_group_matching_empty_gives_no_values() -> None:
    converter = RegexConverter(r"v=(?P<v>[0-9]*)", {"v": FieldSpec("int")})
    assert refused(converter, b"v=") == "no values"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("(?P<a>", {}), {}, "pattern: not a regular expression"),
        (("(?P<a>x)", {}), {}, "fields: expected at least one field"),
        (("(?P<a>x)", {"b": FieldSpec("int")}), {}, r"fields.b: the pattern has no group \(\?P<b>"),
        (("(?P<a>x)", {"a": FieldSpec("int")}), {"ts_field": "a"}, "ts_field: 'a' must be a group"),
        (
            ("(?P<a>x)(?P<b>y)", {"a": FieldSpec("int", key="k"), "b": FieldSpec("int", key="k")}),
            {},
            "fields.b.key: telemetry 'k' is also filled by 'a'",
        ),
        (
            (
                "(?P<a>x)(?P<b>y)",
                {"a": FieldSpec("int", unit="C"), "b": FieldSpec("str", "attribute", "a_unit")},
            ),
            {},
            "fields.b.key: 'a_unit' is also a unit attribute",
        ),
    ],
)
def test_regex_config_errors(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConverterConfigError, match=message):
        RegexConverter(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "double"}, "type: expected one of int, float, str, bool"),
        ({"type": "int", "target": "attributes"}, "target: expected one of telemetry, attribute"),
        ({"type": "str", "scale": 2}, "scale: only numbers can be scaled"),
        ({"type": "int", "scale": 0}, "scale: expected a finite, non-zero number"),
        ({"type": "int", "scale": True}, "scale: expected a number"),
        ({"type": "int", "key": ""}, "key: expected a non-empty string"),
    ],
)
def test_field_spec_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConverterConfigError, match=message):
        FieldSpec(**kwargs)


# --- Line templates --------------------------------------------------------------------------------


def test_template_attribute_update() -> None:
    template = LineTemplate("SET {name} {value}\n")
    assert template.render_attribute("interval", 30) == b"SET interval 30\n"
    assert template.render_attribute("led", True) == b"SET led true\n"
    assert template.render_attribute("gain", 0.1) == b"SET gain 0.1\n"
    assert template.placeholders == ("name", "value")


def test_template_rpc_with_table_params_and_scalar_params() -> None:
    assert LineTemplate("{method} {pin}={state}").render_rpc("setGpio", {"pin": 4, "state": False}) == (
        b"setGpio 4=false\n"
    )
    assert LineTemplate("{method}({params})").render_rpc("reboot", 5) == b"reboot(5)\n"


def test_template_terminator_and_literal_braces() -> None:
    template = LineTemplate('{{"set": {v}}}\r\n', terminator="\r\n")
    assert template.render({"v": 1}) == b'{"set": 1}\r\n'
    assert LineTemplate("AT+X={v}", terminator="\r").render({"v": "\u00e9"}) == "AT+X=\u00e9\r".encode()


def test_template_same_placeholder_twice() -> None:
    template = LineTemplate("{a}-{a}-{b}")
    assert template.placeholders == ("a", "b")
    assert template.render({"a": "x", "b": "y", "unused": {"nested": 1}}) == b"x-x-y\n"


def test_template_missing_keys_are_all_named() -> None:
    with pytest.raises(TemplateError, match="no value for name, value"):
        LineTemplate("SET {name} {value}").render({})


@pytest.mark.parametrize(
    "template",
    [
        "{0}",
        "{}",
        "{a.__class__}",
        "{a[0]}",
        "{a!r}",
        "{a:>10}",
        "{a",
        "a}",
        "{ a }",
        "x\ny",
        "x\r\ny\n",
    ],
)
def test_template_refuses_anything_but_plain_placeholders(template: str) -> None:
    with pytest.raises(TemplateError):
        LineTemplate(template)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1\nREBOOT", "control characters or line terminator"),
        ("1\rREBOOT", "control characters or line terminator"),
        ("\x03", "control characters or line terminator"),
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        (None, "a NoneType, not a string, number or bool"),
        ({"a": 1}, "a dict, not a string, number or bool"),
        ([1], "a list, not a string, number or bool"),
        pytest.param(10**5000, "integer too long", id="huge-int"),
    ],
)
def test_template_refuses_unsafe_values(value: object, message: str) -> None:
    with pytest.raises(TemplateError, match=f"value for 'value': {message}"):
        LineTemplate("SET {name} {value}").render_attribute("x", value)


def test_template_value_may_not_contain_a_custom_terminator() -> None:
    with pytest.raises(TemplateError):
        LineTemplate("{v}", terminator=";").render({"v": "a;b"})
    assert LineTemplate("{v}", terminator=";").render({"v": "a\tb"}) == b"a\tb;"


def test_template_bad_terminator() -> None:
    with pytest.raises(TemplateError, match="terminator"):
        LineTemplate("{v}", terminator="")


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text(), max_size=5), st.text())
def test_template_output_is_one_line_or_an_error(values: dict[str, str], literal: str) -> None:
    escaped = literal.replace("{", "{{").replace("}", "}}").replace("\r", "").replace("\n", "")
    template = LineTemplate(escaped + "".join(f"{{{name}}}" for name in values))
    try:
        line = template.render(values)
    except TemplateError:
        return
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line


# --- Configuration ---------------------------------------------------------------------------------


def test_build_json() -> None:
    converter = build_converter({"type": "json", "attribute_keys": ["fw"], "ts_key": "ts"})
    assert isinstance(converter, JsonLineConverter)
    assert converter.convert(b'{"fw":"1","ts":1700000000,"t":2}') == Reading({"t": 2}, {"fw": "1"}, 1_700_000_000_000)


def test_build_kv() -> None:
    converter = build_converter({"type": "kv", "pair_sep": ";", "types": {"id": "str"}, "max_line_length": 80})
    assert converter.convert(b"id=01;t=2") == Reading({"id": "01", "t": 2})


def test_build_regex() -> None:
    converter = build_converter(
        {
            "type": "regex",
            "pattern": r"T=(?P<t>-?[0-9]+) (?P<fw>\S+)",
            "fields": {
                "t": {"type": "int", "key": "temperature", "unit": "C", "scale": 0.1},
                "fw": {"type": "str", "target": "attribute"},
            },
        }
    )
    assert converter.static_attributes == {"temperature_unit": "C"}
    assert converter.convert(b"T=215 v1.2") == Reading({"temperature": 21.5}, {"fw": "v1.2"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "dev.conv: expected a table"),
        ({}, "dev.conv.type: expected one of json, kv, regex, got None"),
        ({"type": ["json"]}, "dev.conv.type: expected one of json, kv, regex"),
        ({"type": "csv"}, "dev.conv.type: expected one of json, kv, regex, got 'csv'"),
        (
            {"type": "json", "telemetry_key": ["a"]},
            "dev.conv.telemetry_key: unknown key for a json converter",
        ),
        ({"type": "json", "ts_key": 5}, "dev.conv.ts_key: expected a key name, got 5"),
        ({"type": "kv", "types": {"t": "real"}}, "dev.conv.types.t: expected one of int, float, str, bool"),
        ({"type": "kv", "types": ["t"]}, "dev.conv.types: expected a table"),
        ({"type": "kv", "max_line_length": "80"}, "dev.conv.max_line_length: expected a positive integer"),
        ({"type": "regex", "fields": {}}, "dev.conv.pattern: required"),
        ({"type": "regex", "pattern": "(?P<t>x)"}, "dev.conv.fields: required"),
        ({"type": "regex", "pattern": "(", "fields": {}}, "dev.conv.pattern: not a regular expression"),
        ({"type": "regex", "pattern": "(?P<t>x)", "fields": {"t": 1}}, "dev.conv.fields.t: expected a table"),
        ({"type": "regex", "pattern": "(?P<t>x)", "fields": {"t": {}}}, "dev.conv.fields.t.type: required"),
        (
            {"type": "regex", "pattern": "(?P<t>x)", "fields": {"t": {"type": "int", "units": "C"}}},
            "dev.conv.fields.t.units: unknown key",
        ),
        (
            {"type": "regex", "pattern": "(?P<t>x)", "fields": {"t": {"type": "int", "scale": "x"}}},
            "dev.conv.fields.t.scale: expected a number",
        ),
        (
            {"type": "regex", "pattern": "(?P<t>x)", "fields": {"u": {"type": "int"}}},
            "dev.conv.fields.u: the pattern has no group",
        ),
    ],
)
def test_build_errors_name_the_key(config: Any, message: str) -> None:
    with pytest.raises(ConverterConfigError) as info:
        build_converter(config, where="dev.conv")
    assert str(info.value).startswith(message)


# --- Fuzzing ---------------------------------------------------------------------------------------

FUZZ_CONVERTERS: list[Converter] = [
    JsonLineConverter(max_line_length=300),
    JsonLineConverter(telemetry_keys=["a"], attribute_keys=["b"], ts_key="ts", max_line_length=300),
    KeyValueConverter(max_line_length=300),
    KeyValueConverter(pair_sep=" ", kv_sep=":", types={"a": "int", "b": "float", "c": "bool"}, ts_key="ts"),
    SENSOR,
    RegexConverter(r"(?P<a>\S*) (?P<b>.*)", {"a": FieldSpec("float", scale=1e300), "b": FieldSpec("int")}),
]

# Mostly plausible lines (JSON-ish and key=value-ish text), some raw bytes.
plausible_text = st.text(alphabet=st.sampled_from('{}[]":,=; .-+eE0123456789abtsnulfrNaIy\\\r\t\x00\u00e9'))
fuzz_lines = st.one_of(
    st.binary(max_size=400),
    plausible_text.map(lambda text: text.encode("utf-8")),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", errors="surrogatepass")),
)


@settings(max_examples=500)
@given(fuzz_lines)
def test_fuzz_converters_return_a_reading_or_conversion_error(line: bytes) -> None:
    for converter in FUZZ_CONVERTERS:
        try:
            reading = converter.convert(line)
        except ConversionError as exc:
            assert exc.reason and len(exc.reason) < 120
            continue
        assert reading.telemetry or reading.attributes
        for value in (*reading.telemetry.values(), *reading.attributes.values()):
            assert isinstance(value, bool | int | float | str)
            assert not isinstance(value, float) or math.isfinite(value)
        # What a reading holds can always be sent upstream as JSON.
        json.dumps([reading.telemetry, reading.attributes], allow_nan=False)


json_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_keys = st.text(alphabet=st.characters(exclude_characters=".", exclude_categories=["Cs"]), min_size=1, max_size=8)


@given(
    st.dictionaries(
        json_keys,
        st.one_of(json_scalars, st.dictionaries(json_keys, json_scalars, max_size=3)),
        min_size=1,
        max_size=6,
    )
)
def test_json_round_trip(document: dict[str, Any]) -> None:
    line = json.dumps(document).encode()
    expected = {}
    for key, value in document.items():
        if isinstance(value, dict):
            expected.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            expected[key] = value
    if not expected:
        assert refused(JsonLineConverter(max_line_length=10_000), line) == "no values"
        return
    assert JsonLineConverter(max_line_length=10_000).convert(line).telemetry == expected


kv_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,10}", fullmatch=True)


@given(
    st.dictionaries(
        kv_keys,
        st.one_of(
            st.integers(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_kv_round_trip(values: dict[str, Any]) -> None:
    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    line = ",".join(f"{key}={text(value)}" for key, value in values.items()).encode()
    expected = {
        key: value.lower() == "true" if isinstance(value, str) and value.lower() in ("true", "false") else value
        for key, value in values.items()
    }
    # inf/nan-looking words are refused on purpose; skip those draws.
    if any(isinstance(v, str) and v.lower().lstrip("+-") in ("nan", "inf", "infinity") for v in values.values()):
        assert refused(KeyValueConverter(max_line_length=10_000), line)
        return
    assert KeyValueConverter(max_line_length=10_000).convert(line).telemetry == expected
