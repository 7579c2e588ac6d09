"""Converters for plain line-oriented serial sensors: one received line in, one :class:`Reading` out.

Pure code: a converter sees the bytes of one line (without its terminator) and returns the
telemetry and attributes it carries, or raises :class:`ConversionError` with a short reason. No
other exception escapes :meth:`Converter.convert`, whatever the device sends. The way back, a
ThingsBoard RPC or attribute update turned into a line to write, is :class:`LineTemplate`.

Conventions shared by every converter:

- A line is decoded as UTF-8 and stripped of surrounding whitespace (so a CR left over from CRLF
  does no harm). Longer than ``max_line_length`` bytes, not UTF-8, or empty: ConversionError.
- An absent value is skipped, not an error: JSON ``null``, an empty ``key=`` value, a regex group
  that did not take part in the match. A line that yields no value at all is a ConversionError.
- Numbers must be finite: NaN and infinities (``NaN``, ``1e999``, ``temp=inf``) are refused.
- Keys: ``telemetry_keys`` / ``attribute_keys`` route them. Neither given: all telemetry. Only
  ``attribute_keys`` given: those are attributes, every other key telemetry. ``telemetry_keys``
  given: only the listed keys are telemetry, keys in neither list are dropped.
- ``ts_key`` names the device's timestamp: a number below 1e11 is seconds (1e11 s is the year
  5138), anything else milliseconds (1e11 ms is March 1973); it becomes ``Reading.ts_ms`` and is
  not sent as telemetry. Missing from a line: ``ts_ms`` is None.
- Units (regex converter): the key stays as configured and the unit is a static attribute
  ``<key>_unit``, listed in :attr:`Converter.static_attributes` for the caller to publish once
  (when the device connects), not repeated with every reading.

>>> JsonLineConverter(ts_key="ts").convert(b'{"temp": 21.5, "ts": 1700000000}')
Reading(telemetry={'temp': 21.5}, attributes={}, ts_ms=1700000000000)
>>> KeyValueConverter().convert(b"temp=21.5,hum=40,ok=true\\r")
Reading(telemetry={'temp': 21.5, 'hum': 40, 'ok': True}, attributes={}, ts_ms=None)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn, Protocol, TypeAlias, get_args

Value: TypeAlias = bool | int | float | str
FieldType: TypeAlias = Literal["int", "float", "str", "bool"]
Target: TypeAlias = Literal["telemetry", "attribute"]

FIELD_TYPES: Final[tuple[str, ...]] = get_args(FieldType)
TARGETS: Final[tuple[str, ...]] = get_args(Target)

DEFAULT_MAX_LINE_LENGTH: Final = 1024
#: Nested JSON objects deeper than this are refused rather than flattened.
MAX_JSON_DEPTH: Final = 8
#: Device timestamps: numbers below this are seconds, others milliseconds.
SECONDS_BELOW: Final = 1e11
#: Timestamps at or beyond this (ms, the year 5138) are refused as nonsense.
MAX_TS_MS: Final = 100_000_000_000_000


@dataclass(frozen=True, slots=True)
class Reading:
    """What one line said: time series values, client attributes and the device's own time."""

    telemetry: dict[str, Value]
    attributes: dict[str, Value] = field(default_factory=dict)
    ts_ms: int | None = None


class ConversionError(Exception):
    """A line the converter cannot use (a remote error: count it, log it, carry on)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConverterConfigError(ValueError):
    """A converter's configuration is wrong; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class TemplateError(ValueError):
    """A line template is malformed, or the values given cannot fill it."""


class Converter(Protocol):
    """Turns one received line into a :class:`Reading`."""

    @property
    def static_attributes(self) -> Mapping[str, Value]:
        """Attributes that hold for every line (units): publish them once per connection."""
        ...

    def convert(self, line: bytes) -> Reading:
        """The reading in ``line`` (no terminator); raises :class:`ConversionError`, nothing else."""
        ...


# --- Shared parsing --------------------------------------------------------------------------------


def _short(text: str) -> str:
    """A bounded, printable excerpt of device text for a reason (no escapes that grow it)."""
    excerpt = "".join(char if char.isprintable() else "?" for char in text[:24])
    return repr(excerpt if len(text) <= 24 else excerpt[:21] + "...")


def _line_text(line: bytes, max_line_length: int) -> str:
    if len(line) > max_line_length:
        raise ConversionError(f"line too long ({len(line)} > {max_line_length} bytes)")
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConversionError("not UTF-8") from None
    if not text:
        raise ConversionError("empty line")
    return text


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Either of the two in one match (the hot path of untyped values): group 1 is set for an integer.
_NUMBER = re.compile(r"([+-]?[0-9]+)|[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = frozenset({"nan", "inf", "infinity"})
_BOOLS: Final = {"true": True, "false": False, "1": True, "0": False}


def _to_int(raw: str, key: str) -> int:
    try:
        return int(raw)
    except ValueError:  # more digits than int() converts
        raise ConversionError(f"{key!r}: integer too long") from None


def _to_float(raw: str, key: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ConversionError(f"{key!r}: not a finite number")
    return value


def _auto_value(raw: str, key: str, _number: Callable[[str], re.Match[str] | None] = _NUMBER.fullmatch) -> Value:
    """A number, a bool or else the text itself."""
    number = _number(raw)
    if number is not None:
        if number.lastindex:
            return _to_int(raw, key)
        value = float(raw)
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return value
        raise ConversionError(f"{key!r}: not a finite number")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered.lstrip("+-") in _NON_FINITE:
        raise ConversionError(f"{key!r}: not a finite number")
    return raw


def _typed_value(raw: str, kind: str, key: str) -> Value:
    """``raw`` as the declared type: int, float, bool (true/false/1/0) or str."""
    if kind == "str":
        return raw
    if kind == "int":
        if _INT.fullmatch(raw):
            return _to_int(raw, key)
    elif kind == "float":
        if _FLOAT.fullmatch(raw):
            return _to_float(raw, key)
        if raw.lower().lstrip("+-") in _NON_FINITE:
            raise ConversionError(f"{key!r}: not a finite number")
    else:
        flag = _BOOLS.get(raw.lower())
        if flag is not None:
            return flag
    raise ConversionError(f"{key!r}: {_short(raw)} is not {'an' if kind == 'int' else 'a'} {kind}")


def _timestamp_ms(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConversionError(f"timestamp {key!r} is not a number")
    # isfinite() only for floats: a huge int would not convert to one.
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise ConversionError(f"timestamp {key!r} out of range")
    ms = value * 1000 if value < SECONDS_BELOW else value
    if ms >= MAX_TS_MS:
        raise ConversionError(f"timestamp {key!r} out of range")
    return round(ms)


def _key_list(value: Iterable[str] | None, key: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConverterConfigError(key, "expected a list of key names")
    names = list(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConverterConfigError(key, f"expected non-empty key names, got {name!r}")
    return frozenset(names)


def _max_line_length(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConverterConfigError("max_line_length", f"expected a positive integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class _KeyRouting:
    """Where each key of a line goes: telemetry, attributes, the timestamp, or nowhere."""

    telemetry_keys: frozenset[str] | None
    attribute_keys: frozenset[str]
    ts_key: str | None

    @classmethod
    def create(
        cls,
        telemetry_keys: Iterable[str] | None,
        attribute_keys: Iterable[str] | None,
        ts_key: str | None,
    ) -> _KeyRouting:
        telemetry = _key_list(telemetry_keys, "telemetry_keys")
        attributes = _key_list(attribute_keys, "attribute_keys") or frozenset()
        if telemetry is not None and telemetry & attributes:
            both = ", ".join(sorted(telemetry & attributes))
            raise ConverterConfigError("attribute_keys", f"also listed in telemetry_keys: {both}")
        if ts_key is not None and (not isinstance(ts_key, str) or not ts_key):
            raise ConverterConfigError("ts_key", f"expected a key name, got {ts_key!r}")
        if ts_key is not None and (ts_key in attributes or (telemetry is not None and ts_key in telemetry)):
            raise ConverterConfigError("ts_key", f"{ts_key!r} is also listed as telemetry or attribute")
        return cls(telemetry, attributes, ts_key)

    @property
    def everything_is_telemetry(self) -> bool:
        """No key lists and no timestamp key: a line's values are its telemetry as they are."""
        return self.telemetry_keys is None and not self.attribute_keys and self.ts_key is None

    def route(self, values: Iterable[tuple[str, Value]]) -> Reading:
        telemetry: dict[str, Value] = {}
        attributes: dict[str, Value] = {}
        ts_ms = None
        for key, value in values:
            if key == self.ts_key:
                ts_ms = _timestamp_ms(value, key)
            elif key in self.attribute_keys:
                attributes[key] = value
            elif self.telemetry_keys is None or key in self.telemetry_keys:
                telemetry[key] = value
        if not telemetry and not attributes:
            raise ConversionError("no values")
        return Reading(telemetry, attributes, ts_ms)


# --- JSON lines ------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> NoReturn:
    raise ConversionError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ConversionError(f"non-finite number {_short(text)}")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ConversionError(f"duplicate key {_short(key)}")
            seen.add(key)
    return result


class JsonLineConverter:
    """One JSON object per line, e.g. ``{"temp": 21.5, "cfg": {"fw": "1.2"}, "ts": 1700000000}``.

    Nested objects are flattened with dots (``cfg.fw``), up to :data:`MAX_JSON_DEPTH` levels;
    the key lists and ``ts_key`` use the flattened names. Arrays are refused (a
    ThingsBoard time series holds one value per key), ``null`` values are skipped, an empty key
    or two keys flattening to the same name are refused.
    """

    def __init__(
        self,
        telemetry_keys: Iterable[str] | None = None,
        attribute_keys: Iterable[str] | None = None,
        ts_key: str | None = None,
        *,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        self._routing = _KeyRouting.create(telemetry_keys, attribute_keys, ts_key)
        self.max_line_length = _max_line_length(max_line_length)

    @property
    def static_attributes(self) -> Mapping[str, Value]:
        return {}

    def convert(self, line: bytes) -> Reading:
        text = _line_text(line, self.max_line_length)
        try:
            document = json.loads(
                text,
                parse_constant=_refuse_constant,
                parse_float=_finite_float,
                object_pairs_hook=_unique_object,
            )
        except json.JSONDecodeError as exc:
            raise ConversionError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
        except ValueError:  # an integer with more digits than int() converts
            raise ConversionError("invalid JSON: number too long") from None
        except RecursionError:
            raise ConversionError("invalid JSON: nested too deeply") from None
        if not isinstance(document, dict):
            raise ConversionError(f"not a JSON object but {_json_kind(document)}")
        flat: dict[str, Value] = {}
        _flatten(document, "", flat, 1)
        return self._routing.route(flat.items())


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a bool" if isinstance(value, bool) else "a number"


def _flatten(document: dict[str, Any], prefix: str, out: dict[str, Value], depth: int) -> None:
    for key, value in document.items():
        if not key:
            raise ConversionError(f"empty key in {_short(prefix[:-1]) if prefix else 'the object'}")
        name = prefix + key
        if isinstance(value, dict):
            if depth >= MAX_JSON_DEPTH:
                raise ConversionError(f"nested deeper than {MAX_JSON_DEPTH} levels at {_short(name)}")
            _flatten(value, name + ".", out, depth + 1)
        elif isinstance(value, list):
            raise ConversionError(f"array value for {_short(name)}")
        elif value is not None:
            if name in out:
                raise ConversionError(f"duplicate key {_short(name)}")
            out[name] = value


# --- key=value -------------------------------------------------------------------------------------


def _field_type(value: object, key: str) -> FieldType:
    if value not in FIELD_TYPES:
        raise ConverterConfigError(key, f"expected one of {', '.join(FIELD_TYPES)}, got {value!r}")
    return value  # type: ignore[return-value]


class KeyValueConverter:
    """``key=value`` pairs, e.g. ``temp=21.5,hum=40,door=open``.

    Values are int, float, true/false (any case) or else text, unless ``types`` declares a key's
    type (``"int"``, ``"float"``, ``"bool"`` accepting true/false/1/0, or ``"str"``); a value
    that does not parse as its declared type is a ConversionError. Whitespace around keys and
    values is ignored, empty pairs (``a=1,,b=2``) are skipped, a key given twice is refused.
    """

    def __init__(
        self,
        pair_sep: str = ",",
        kv_sep: str = "=",
        types: Mapping[str, str] | None = None,
        *,
        telemetry_keys: Iterable[str] | None = None,
        attribute_keys: Iterable[str] | None = None,
        ts_key: str | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        for name, sep in (("pair_sep", pair_sep), ("kv_sep", kv_sep)):
            if not isinstance(sep, str) or not sep:
                raise ConverterConfigError(name, f"expected a non-empty string, got {sep!r}")
        if pair_sep in kv_sep or kv_sep in pair_sep:
            raise ConverterConfigError("kv_sep", f"{kv_sep!r} and pair_sep {pair_sep!r} must differ")
        if types is not None and not isinstance(types, Mapping):
            raise ConverterConfigError("types", "expected a table of key = type")
        self.pair_sep = pair_sep
        self.kv_sep = kv_sep
        self.types: dict[str, FieldType] = {
            key: _field_type(kind, f"types.{key}") for key, kind in (types or {}).items()
        }
        self._routing = _KeyRouting.create(telemetry_keys, attribute_keys, ts_key)
        self._plain = self._routing.everything_is_telemetry
        self.max_line_length = _max_line_length(max_line_length)

    @property
    def static_attributes(self) -> Mapping[str, Value]:
        return {}

    def convert(self, line: bytes) -> Reading:
        # The hot path of a busy port: one pass, locals only, the checks in the order of the
        # common case (a pair with a separator and a key).
        text = _line_text(line, self.max_line_length)
        values: dict[str, Value] = {}
        kv_sep = self.kv_sep
        types = self.types
        for pair in text.split(self.pair_sep):
            key, sep, raw = pair.partition(kv_sep)
            key = key.strip()
            if not sep or not key:
                if not pair.strip():
                    continue
                if not sep:
                    raise ConversionError(f"no {kv_sep!r} in {_short(pair.strip())}")
                raise ConversionError(f"empty key before {_short(raw.strip())}")
            if key in values:
                raise ConversionError(f"duplicate key {_short(key)}")
            raw = raw.strip()
            if not raw:
                continue
            kind = types.get(key) if types else None
            values[key] = _auto_value(raw, key) if kind is None else _typed_value(raw, kind, key)
        if self._plain:
            if not values:
                raise ConversionError("no values")
            return Reading(values)
        return self._routing.route(values.items())


# --- Regular expression ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What to do with one named group of a :class:`RegexConverter` pattern.

    ``key`` defaults to the group name. ``scale`` multiplies a numeric value (the result is a
    float), e.g. 0.1 for a sensor reporting tenths. ``unit`` becomes the static attribute
    ``<key>_unit``.
    """

    type: FieldType
    target: Target = "telemetry"
    key: str | None = None
    unit: str | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        _field_type(self.type, "type")
        if self.target not in TARGETS:
            raise ConverterConfigError("target", f"expected one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ConverterConfigError("key", f"expected a non-empty string, got {self.key!r}")
        if self.unit is not None and (not isinstance(self.unit, str) or not self.unit):
            raise ConverterConfigError("unit", f"expected a non-empty string, got {self.unit!r}")
        if self.scale is not None:
            if isinstance(self.scale, bool) or not isinstance(self.scale, int | float):
                raise ConverterConfigError("scale", f"expected a number, got {self.scale!r}")
            if not math.isfinite(self.scale) or self.scale == 0:
                raise ConverterConfigError("scale", f"expected a finite, non-zero number, got {self.scale!r}")
            if self.type not in ("int", "float"):
                raise ConverterConfigError("scale", f"only numbers can be scaled, this field is {self.type}")


class RegexConverter:
    """A regular expression with named groups, e.g. ``T=(?P<t>[-0-9.]+)C H=(?P<h>[0-9]+)%``.

    The whole (stripped) line must match (``re.fullmatch``): a truncated line is refused rather
    than read as a smaller number. Groups without a :class:`FieldSpec` are ignored, as are groups
    that matched nothing. ``ts_field`` names a group holding the device's timestamp.
    """

    def __init__(
        self,
        pattern: str | re.Pattern[str],
        fields: Mapping[str, FieldSpec],
        *,
        ts_field: str | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        try:
            self.pattern = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ConverterConfigError("pattern", f"not a regular expression: {exc}") from None
        if not isinstance(self.pattern.pattern, str):
            raise ConverterConfigError("pattern", "expected a text pattern, not bytes")
        groups = set(self.pattern.groupindex)
        if not isinstance(fields, Mapping) or not fields:
            raise ConverterConfigError("fields", "expected at least one field")
        for name, spec in fields.items():
            if name not in groups:
                raise ConverterConfigError(f"fields.{name}", f"the pattern has no group (?P<{name}>...)")
            if not isinstance(spec, FieldSpec):
                raise ConverterConfigError(f"fields.{name}", "expected a FieldSpec")
        if ts_field is not None and (ts_field not in groups or ts_field in fields):
            raise ConverterConfigError("ts_field", f"{ts_field!r} must be a group of the pattern and not also a field")
        self.fields = dict(fields)
        self.ts_field = ts_field
        self.max_line_length = _max_line_length(max_line_length)
        self._static = self._unit_attributes()

    def _unit_attributes(self) -> dict[str, Value]:
        outputs: dict[tuple[str, str], str] = {}
        units: dict[str, Value] = {}
        for name, spec in self.fields.items():
            target = (spec.target, spec.key or name)
            if target in outputs:
                raise ConverterConfigError(
                    f"fields.{name}.key", f"{target[0]} {target[1]!r} is also filled by {outputs[target]!r}"
                )
            outputs[target] = name
            if spec.unit is not None:
                units[f"{spec.key or name}_unit"] = spec.unit
        for key in units:
            if ("attribute", key) in outputs:
                raise ConverterConfigError(
                    f"fields.{outputs['attribute', key]}.key", f"{key!r} is also a unit attribute"
                )
        return units

    @property
    def static_attributes(self) -> Mapping[str, Value]:
        """``{"<key>_unit": unit}`` for each field with a unit."""
        return self._static

    def convert(self, line: bytes) -> Reading:
        text = _line_text(line, self.max_line_length)
        match = self.pattern.fullmatch(text)
        if match is None:
            raise ConversionError("no match")
        telemetry: dict[str, Value] = {}
        attributes: dict[str, Value] = {}
        for name, spec in self.fields.items():
            raw = match.group(name)
            if not raw:
                continue
            value = _typed_value(raw.strip(), spec.type, name)
            if spec.scale is not None and isinstance(value, int | float):
                try:
                    value = value * spec.scale
                except OverflowError:  # an int too large for a float
                    value = math.inf
                if not math.isfinite(value):
                    raise ConversionError(f"{name!r}: not a finite number once scaled")
            (telemetry if spec.target == "telemetry" else attributes)[spec.key or name] = value
        ts_ms = None
        if self.ts_field is not None and (raw_ts := match.group(self.ts_field)):
            ts_ms = _timestamp_ms(_auto_value(raw_ts.strip(), self.ts_field), self.ts_field)
        if not telemetry and not attributes:
            raise ConversionError("no values")
        return Reading(telemetry, attributes, ts_ms)


# --- Lines to write --------------------------------------------------------------------------------

_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")
# Control characters could end the line early or drive the device's terminal: never sent.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class LineTemplate:
    """Turns an RPC or an attribute update into the line to write, e.g. ``"SET {name} {value}"``.

    Only ``{identifier}`` placeholders exist (``{{`` and ``}}`` are literal braces): no
    attribute access, indexing, conversions or format specs, which :meth:`str.format` would
    allow. Values must be strings, numbers or bools (written ``true``/``false``; floats in
    their shortest form); strings with control characters (CR, LF, ...) are refused so that a
    value cannot smuggle in a second command. A line break at the end of the template (as in
    ``"SET {name} {value}\\n"``) is dropped; ``terminator`` is what ends every line.
    """

    def __init__(self, template: str, *, terminator: str = "\n") -> None:
        if not isinstance(template, str):
            raise TemplateError(f"template: expected a string, got {template!r}")
        if not isinstance(terminator, str) or not terminator:
            raise TemplateError(f"terminator: expected a non-empty string, got {terminator!r}")
        self.template = template
        self.terminator = terminator
        body = template.removesuffix("\n").removesuffix("\r")
        if "\n" in body or "\r" in body:
            raise TemplateError(f"template {template!r}: a line break inside the line")
        parts: list[tuple[str, str | None]] = []
        literal: list[str] = []
        position = 0
        for token in _TEMPLATE_TOKEN.finditer(body):
            literal.append(body[position : token.start()])
            position = token.end()
            text = token.group()
            if text in ("{{", "}}"):
                literal.append(text[0])
            elif token.group(1) is not None:
                parts.append(("".join(literal), token.group(1)))
                literal = []
            else:
                raise TemplateError(
                    f"template {template!r}: {text!r} at position {token.start()} is not a {{name}} "
                    f"placeholder (write {text * 2!r} for a literal brace)"
                )
        literal.append(body[position:])
        parts.append(("".join(literal), None))
        self._parts = tuple(parts)
        #: Placeholder names, each once, in order of appearance.
        self.placeholders: tuple[str, ...] = tuple(dict.fromkeys(n for _, n in parts if n is not None))

    def render(self, values: Mapping[str, object]) -> bytes:
        """The line (UTF-8, terminator included) with each placeholder filled from ``values``."""
        missing = [name for name in self.placeholders if name not in values]
        if missing:
            raise TemplateError(f"template {self.template!r}: no value for {', '.join(missing)}")
        out: list[str] = []
        for literal, name in self._parts:
            out.append(literal)
            if name is not None:
                out.append(self._format(name, values[name]))
        out.append(self.terminator)
        return "".join(out).encode("utf-8", errors="replace")

    def render_rpc(self, method: str, params: object) -> bytes:
        """The line for an RPC: ``{method}``, plus each key of ``params`` if it is a table,
        else the whole of it as ``{params}``."""
        values: dict[str, object] = dict(params) if isinstance(params, Mapping) else {"params": params}
        values["method"] = method
        return self.render(values)

    def render_attribute(self, name: str, value: object) -> bytes:
        """The line for an attribute update: ``{name}`` and ``{value}``."""
        return self.render({"name": name, "value": value})

    def _format(self, name: str, value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            try:
                return str(value)
            except ValueError:
                raise TemplateError(f"value for {name!r}: integer too long") from None
        if isinstance(value, float):
            if not math.isfinite(value):
                raise TemplateError(f"value for {name!r}: not a finite number")
            return repr(value)
        if isinstance(value, str):
            if _CONTROL.search(value) or any(char in value for char in self.terminator):
                raise TemplateError(f"value for {name!r}: control characters or line terminator")
            return value
        raise TemplateError(f"value for {name!r}: a {type(value).__name__}, not a string, number or bool")


# --- From configuration ----------------------------------------------------------------------------

_ROUTING_OPTIONS = ("telemetry_keys", "attribute_keys", "ts_key")
_OPTIONS: Final[dict[str, tuple[str, ...]]] = {
    "json": (*_ROUTING_OPTIONS, "max_line_length"),
    "kv": ("pair_sep", "kv_sep", "types", *_ROUTING_OPTIONS, "max_line_length"),
    "regex": ("pattern", "fields", "ts_field", "max_line_length"),
}
_FIELD_OPTIONS = ("type", "target", "key", "unit", "scale")


def build_converter(config: Mapping[str, Any], *, where: str = "converter") -> Converter:
    """The converter a configuration table describes, e.g. (TOML)::

        [devices.boiler.converter]
        type = "regex"
        pattern = 'T=(?P<t>-?[0-9]+)'
        fields.t = { type = "int", key = "temperature", unit = "C", scale = 0.1 }

    ``type`` is ``"json"``, ``"kv"`` or ``"regex"``; the other keys are the converter's
    arguments. Raises :class:`ConverterConfigError` naming the key (prefixed with ``where``).
    """
    if not isinstance(config, Mapping):
        raise ConverterConfigError(where, "expected a table")
    kind = config.get("type")
    if not isinstance(kind, str) or kind not in _OPTIONS:
        raise ConverterConfigError(f"{where}.type", f"expected one of {', '.join(_OPTIONS)}, got {kind!r}")
    unknown = sorted(set(config) - {"type", *_OPTIONS[kind]})
    if unknown:
        raise ConverterConfigError(
            f"{where}.{unknown[0]}",
            f"unknown key for a {kind} converter (known: {', '.join(_OPTIONS[kind])})",
        )
    options = {key: value for key, value in config.items() if key != "type"}
    try:
        if kind == "json":
            return JsonLineConverter(**options)
        if kind == "kv":
            return KeyValueConverter(**options)
        if "pattern" not in options:
            raise ConverterConfigError("pattern", "required for a regex converter")
        if not isinstance(options.get("fields"), Mapping):
            raise ConverterConfigError("fields", "required: a table of group name = field")
        options["fields"] = {name: _field_spec(spec, f"fields.{name}") for name, spec in options["fields"].items()}
        return RegexConverter(**options)
    except ConverterConfigError as exc:
        raise ConverterConfigError(f"{where}.{exc.key}", exc.message) from None


def _field_spec(config: object, key: str) -> FieldSpec:
    if not isinstance(config, Mapping):
        raise ConverterConfigError(key, "expected a table with type, target, key, unit, scale")
    unknown = sorted(set(config) - set(_FIELD_OPTIONS))
    if unknown:
        raise ConverterConfigError(f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(_FIELD_OPTIONS)})")
    if "type" not in config:
        raise ConverterConfigError(f"{key}.type", f"required: one of {', '.join(FIELD_TYPES)}")
    try:
        return FieldSpec(**config)
    except ConverterConfigError as exc:
        raise ConverterConfigError(f"{key}.{exc.key}", exc.message) from None
