"""Plain text (Content-Format 0): one value of a single resource or resource instance.

The resource model decides how the text reads (LwM2M Core, Appendix C): integers and TIME in
decimal (TIME as Unix seconds), floats in decimal or exponent notation, booleans ``0``/``1``, object
links ``oid:iid``, strings and CoRE links as UTF-8. Opaque values are not allowed in plain text (use
Content-Format 42); with no model the value decodes as a string.
"""

from __future__ import annotations

import math
import re
from typing import Final

from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.values import check_value, number_value, objlink, single_value_type
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import ModelLookup, ObjLink, ResourceInstance, SingleResource, Value, no_models
from gateway.lwm2m.path import LwM2mPath

_T = ResourceType
_INTEGER: Final = re.compile(r"-?[0-9]{1,20}")
_UNSIGNED: Final = re.compile(r"[0-9]{1,20}")
_FLOAT: Final = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,4})?")


def decode_text(
    payload: bytes, path: LwM2mPath, model_of: ModelLookup = no_models
) -> SingleResource | ResourceInstance:
    """The value in ``payload`` for the resource (instance) at ``path``; raises :class:`CodecError`."""
    ids = path.ids
    value, rtype = parse_text_value(payload, single_value_type(model_of, path, "plain text"), path)
    if len(ids) == 3:
        return SingleResource(ids[2], value, rtype)
    return ResourceInstance(ids[3], value, rtype)


def parse_text_value(payload: bytes, rtype: ResourceType | None, where: object) -> tuple[Value, ResourceType]:
    """One plain-text value read as ``rtype`` (a string when the type is unknown)."""
    try:
        text = payload.decode()
    except UnicodeDecodeError as e:
        raise CodecError(f"{where}: plain text is not UTF-8 (byte offset {e.start})") from None
    if rtype is None or rtype is _T.STRING or rtype is _T.CORELNK:
        return text, rtype or _T.STRING
    if rtype is _T.INTEGER or rtype is _T.TIME:
        if _INTEGER.fullmatch(text) is None:
            raise CodecError(f"{where}: {text!r:.40} is not a decimal integer")
        return number_value(int(text), rtype, where)
    if rtype is _T.UNSIGNED_INTEGER:
        if _UNSIGNED.fullmatch(text) is None:
            raise CodecError(f"{where}: {text!r:.40} is not an unsigned decimal integer")
        return number_value(int(text), rtype, where)
    if rtype is _T.FLOAT:
        if len(text) > 400 or _FLOAT.fullmatch(text) is None:
            raise CodecError(f"{where}: {text!r:.40} is not a decimal number")
        value = float(text)
        if not math.isfinite(value):
            raise CodecError(f"{where}: {text!r:.40} is out of the float range")
        return value, rtype
    if rtype is _T.BOOLEAN:
        if text == "1":
            return True, rtype
        if text == "0":
            return False, rtype
        raise CodecError(f"{where}: {text!r:.40} is not a boolean ('0' or '1')")
    if rtype is _T.OBJLNK:
        return objlink(text, where), rtype
    raise CodecError(f"{where}: a {rtype.value} resource cannot be carried as plain text")


def encode_text(node: SingleResource | ResourceInstance, path: LwM2mPath) -> bytes:
    """The plain-text form of one value; :class:`CodecError` for opaque or ill-typed values."""
    return format_text_value(node.value, node.type, path).encode()


def format_text_value(value: Value, rtype: ResourceType, where: LwM2mPath | str) -> str:
    """One value as LwM2M plain text."""
    if rtype is _T.OPAQUE:
        raise CodecError(f"{where}: opaque values cannot be carried as plain text; use Content-Format 42")
    value = check_value(value, rtype, where)
    if rtype is _T.STRING or rtype is _T.CORELNK:
        assert isinstance(value, str)
        return value
    if rtype is _T.BOOLEAN:
        return "1" if value else "0"
    if rtype is _T.FLOAT:
        assert isinstance(value, float)
        if not math.isfinite(value):
            raise CodecError(f"{where}: {value} cannot be written as plain text")
        return repr(value)
    if rtype is _T.OBJLNK:
        assert isinstance(value, ObjLink)
        return f"{value.oid}:{value.iid}"
    return str(value)
