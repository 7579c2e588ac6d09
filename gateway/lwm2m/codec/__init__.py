"""LwM2M content formats: pure functions from bytes to values and back (no I/O).

Most callers need only :mod:`gateway.lwm2m.codec.registry` (``decode``, ``encode``,
``decode_timestamped``, ``choose_format``), :class:`ContentFormat` and :class:`CodecError`.
"""

from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.codec.registry import (
    FormatNeed,
    choose_format,
    decode,
    decode_paths,
    decode_timestamped,
    encode,
    encode_paths,
    encode_timestamped,
)

__all__ = [
    "CodecError",
    "ContentFormat",
    "FormatNeed",
    "choose_format",
    "decode",
    "decode_paths",
    "decode_timestamped",
    "encode",
    "encode_paths",
    "encode_timestamped",
]
