"""Value rules shared by the codecs: range limits, type checks before encoding, typing of decoded values.

The decoders of self-describing formats (SenML, LwM2M JSON/CBOR) see a number, a string, a boolean...
and use the resource model, when there is one, to give it its LwM2M type (a number for a TIME
resource is a TIME, for an UNSIGNED_INTEGER resource it must not be negative). Without a model the
value keeps the type it arrived with (:func:`gateway.lwm2m.node.infer_type`).
"""

from __future__ import annotations

import math
from typing import Final

from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import ModelLookup, ObjLink, Value
from gateway.lwm2m.path import LwM2mPath

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
UINT64_MAX: Final = 2**64 - 1

_T = ResourceType
_INTEGRAL: Final = frozenset({_T.INTEGER, _T.UNSIGNED_INTEGER, _T.TIME})


def model_type(model_of: ModelLookup, oid: int, rid: int) -> ResourceType | None:
    """The declared type of resource ``rid`` of object ``oid``; None if unknown or executable."""
    model = model_of(oid)
    if model is None:
        return None
    rmodel = model.resources.get(rid)
    if rmodel is None or rmodel.type is _T.NONE:
        return None
    return rmodel.type


def single_value_type(model_of: ModelLookup, path: LwM2mPath, what: str) -> ResourceType | None:
    """The declared type for a format that carries one value (text, opaque, CBOR) at ``path``.

    Raises :class:`CodecError` above resource level, or for a multiple resource (which such a format
    cannot carry: it needs a resource instance path).
    """
    ids = path.ids
    if len(ids) < 3:
        raise CodecError(f"{what} carries one resource value, not {path}")
    model = model_of(ids[0])
    rmodel = None if model is None else model.resources.get(ids[2])
    if rmodel is None:
        return None
    if rmodel.multiple and len(ids) == 3:
        raise CodecError(f"{what} cannot carry the multiple resource {path}; read its instances or use TLV/SenML")
    return None if rmodel.type is _T.NONE else rmodel.type


def check_value(value: Value, rtype: ResourceType, where: LwM2mPath | str) -> Value:
    """``value`` made ready to encode as ``rtype``, or :class:`CodecError` if it cannot be one.

    The only conversion is int -> float for a FLOAT resource.
    """
    t = type(value)
    if rtype is _T.STRING or rtype is _T.CORELNK:
        ok = t is str
    elif rtype in _INTEGRAL:
        ok = t is int
        if isinstance(value, int) and ok:
            _check_int_range(value, rtype, where)
    elif rtype is _T.FLOAT:
        if isinstance(value, int) and t is int:
            try:
                return float(value)
            except OverflowError:
                raise CodecError(f"{where}: integer {value} does not fit a float") from None
        ok = t is float
    elif rtype is _T.BOOLEAN:
        ok = t is bool
    elif rtype is _T.OPAQUE:
        ok = t is bytes
    elif rtype is _T.OBJLNK:
        ok = t is ObjLink
    else:
        raise CodecError(f"{where}: an executable resource (type none) has no value to encode")
    if not ok:
        raise CodecError(f"{where}: {t.__name__} value {value!r:.40} for a {rtype.value} resource")
    return value


def _check_int_range(value: int, rtype: ResourceType, where: object) -> None:
    if rtype is _T.UNSIGNED_INTEGER:
        if not 0 <= value <= UINT64_MAX:
            raise CodecError(f"{where}: {value} out of the unsigned 64-bit range")
    elif not INT64_MIN <= value <= INT64_MAX:
        raise CodecError(f"{where}: {value} out of the signed 64-bit range")


def number_value(number: object, rtype: ResourceType | None, where: object) -> tuple[Value, ResourceType]:
    """A decoded number typed by the model: (value, type). Raises :class:`CodecError` if it does not fit.

    Integral floats (``95.0``) are accepted for integer resources. Without a model an int stays an
    INTEGER and a float a FLOAT. A non-finite float (a binary format can carry NaN) is only a FLOAT.
    """
    if type(number) is int:
        assert isinstance(number, int)
        if rtype is None:
            if not INT64_MIN <= number <= UINT64_MAX:
                raise CodecError(f"{where}: integer {number} out of the 64-bit range")
            return number, _T.INTEGER
        if rtype in _INTEGRAL:
            _check_int_range(number, rtype, where)
            return number, rtype
        if rtype is _T.FLOAT:
            try:
                return float(number), rtype
            except OverflowError:
                raise CodecError(f"{where}: integer {number} does not fit a float") from None
    elif type(number) is float:
        assert isinstance(number, float)
        if rtype is None or rtype is _T.FLOAT:
            return number, _T.FLOAT
        if rtype in _INTEGRAL:
            if not number.is_integer():
                raise CodecError(f"{where}: {number} is not an integer, as the {rtype.value} resource needs")
            as_int = int(number)
            _check_int_range(as_int, rtype, where)
            return as_int, rtype
    else:
        raise CodecError(f"{where}: expected a number, got {type(number).__name__}")
    raise CodecError(f"{where}: a number for a {rtype.value} resource")


def objlink(text: object, where: object) -> ObjLink:
    """Parse an ``"oid:iid"`` object link, raising :class:`CodecError`."""
    if type(text) is not str:
        raise CodecError(f"{where}: object link must be text 'oid:iid', got {type(text).__name__}")
    try:
        return ObjLink.parse(text)
    except ValueError as e:
        raise CodecError(f"{where}: {e}") from None


def time_seconds(number: object, where: object) -> float:
    """A SenML/LwM2M JSON time value (int, float or decimal) as float seconds, or CodecError."""
    t = type(number)
    if t is int or t is float:
        try:
            seconds = float(number)  # type: ignore[arg-type]
        except OverflowError:
            raise CodecError(f"{where}: time {number} out of range") from None
    elif t.__name__ == "Decimal":  # CBOR decimal fractions (tag 4), as Leshan writes them
        try:
            seconds = float(number)  # type: ignore[arg-type]
        except (ValueError, OverflowError):
            raise CodecError(f"{where}: time {number} out of range") from None
    else:
        raise CodecError(f"{where}: time must be a number, got {t.__name__}")
    if not math.isfinite(seconds):
        raise CodecError(f"{where}: time {number} is not finite")
    return seconds


#: RFC 8428: times below 2**28 are relative to "now"; at or above it they are absolute epoch seconds.
RELATIVE_TIME_LIMIT: Final = 2**28


def resolve_time(seconds: float, now: float) -> float:
    """An RFC 8428 time value (base time + time) made absolute; CodecError if it is out of range."""
    if not math.isfinite(seconds):
        raise CodecError(f"time {seconds} is out of range")
    return seconds if seconds >= RELATIVE_TIME_LIMIT else now + seconds
