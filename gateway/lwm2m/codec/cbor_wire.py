"""CBOR on the wire for the CBOR-based formats: a guarded cbor2 decoder and a small encoder.

Decoding goes through cbor2's C decoder, wrapped so that *any* failure (bad structure, truncation,
invalid UTF-8, malformed tags, nesting deeper than :data:`MAX_DEPTH`, duplicate map keys, trailing
bytes) becomes :class:`CodecError`. Encoding is done here rather than by cbor2 because the formats
need map keys in insertion order (``{-2: bn, 3: vs}`` as in the LwM2M vectors) together with the
RFC 8949 preferred serialisation of floats (the shortest of half, single or double precision that
keeps the value), which cbor2 only offers together with key sorting.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from typing import Final

import cbor2

from gateway.lwm2m.codec.errors import CodecError

#: Deep enough for LwM2M CBOR (4 nested maps, array keys, a tag); SenML needs 3.
MAX_DEPTH: Final = 12


def loads(payload: bytes, what: str) -> object:
    """The single CBOR data item that is all of ``payload``; :class:`CodecError` otherwise."""
    fp = io.BytesIO(payload)
    try:
        item = cbor2.CBORDecoder(fp, max_depth=MAX_DEPTH, allow_duplicate_keys=False).decode()
    except Exception as e:  # cbor2 raises its own errors, but also ValueError/TypeError from tag decoders
        raise CodecError(f"invalid CBOR in {what}: {e}") from None
    end = fp.tell()
    if end != len(payload):
        raise CodecError(f"invalid CBOR in {what}: {len(payload) - end} trailing bytes at offset {end}")
    return item


_HALF = struct.Struct(">Be")
_SINGLE = struct.Struct(">Bf")
_DOUBLE = struct.Struct(">Bd")


def dumps(item: object) -> bytes:
    """Encode ints, floats, bools, str, bytes, lists/tuples and dicts (keys in insertion order)."""
    out = bytearray()
    _encode(out, item)
    return bytes(out)


def _head(out: bytearray, major: int, n: int) -> None:
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out += bytes((mt | 24, n))
    elif n < 0x10000:
        out.append(mt | 25)
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(mt | 26)
        out += n.to_bytes(4, "big")
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out += n.to_bytes(8, "big")
    else:
        raise CodecError(f"integer {n} too large for CBOR without bignums")


def _encode(out: bytearray, item: object) -> None:
    if isinstance(item, str):
        data = item.encode()
        _head(out, 3, len(data))
        out += data
    elif isinstance(item, bool):
        out.append(0xF5 if item else 0xF4)
    elif isinstance(item, int):
        if item >= 0:
            _head(out, 0, item)
        else:
            _head(out, 1, -1 - item)
    elif isinstance(item, float):
        out += _float(item)
    elif isinstance(item, bytes):
        _head(out, 2, len(item))
        out += item
    elif isinstance(item, Mapping):
        _head(out, 5, len(item))
        for key, value in item.items():
            _encode(out, key)
            _encode(out, value)
    elif isinstance(item, Sequence):
        _head(out, 4, len(item))
        for element in item:
            _encode(out, element)
    else:
        raise CodecError(f"cannot encode {type(item).__name__} as CBOR")


def _float(x: float) -> bytes:
    # Preferred serialisation: the shortest form that decodes to the same value.
    try:
        half = _HALF.pack(0xF9, x)
        if _HALF.unpack(half)[1] == x:
            return half
    except OverflowError:
        pass
    single = _SINGLE.pack(0xFA, x) if abs(x) <= 3.4028234663852886e38 else b""
    if single and _SINGLE.unpack(single)[1] == x:
        return single
    return _DOUBLE.pack(0xFB, x)
