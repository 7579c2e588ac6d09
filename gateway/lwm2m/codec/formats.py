"""CoAP Content-Format numbers used by LwM2M (IANA "CoAP Content-Formats" registry).

The pre-registration numbers 1542 (TLV) and 1543 (LwM2M JSON) used by LwM2M 1.0 clients are accepted
and normalised to 11542 and 11543 by :meth:`ContentFormat.of`.
"""

from __future__ import annotations

import enum

from gateway.lwm2m.codec.errors import CodecError


class ContentFormat(enum.IntEnum):
    TEXT = 0
    LINK = 40
    OPAQUE = 42
    CBOR = 60
    SENML_JSON = 110
    SENML_CBOR = 112
    TLV = 11542
    LWM2M_JSON = 11543
    LWM2M_CBOR = 11544
    TLV_OLD = 1542  # LwM2M 1.0 drafts and early clients; same format as TLV
    JSON_OLD = 1543  # LwM2M 1.0 drafts and early clients; same format as LWM2M_JSON

    @classmethod
    def of(cls, number: int) -> ContentFormat:
        """The format for a Content-Format number, legacy numbers mapped to the registered ones.

        Raises :class:`CodecError` for a number that is not an LwM2M content format.
        """
        if type(number) is ContentFormat:  # an Enum hashes in Python code: avoid the dict for members
            return _LEGACY.get(number, number) if number is cls.TLV_OLD or number is cls.JSON_OLD else number
        fmt = _BY_NUMBER.get(number)
        if fmt is None:
            raise CodecError(f"unsupported content format {number}")
        return fmt

    @classmethod
    def known(cls, number: int) -> ContentFormat | None:
        """Like :meth:`of`, but ``None`` for an unknown number (for lists such as a client's ``ct=``)."""
        return _BY_NUMBER.get(number)


_LEGACY = {ContentFormat.TLV_OLD: ContentFormat.TLV, ContentFormat.JSON_OLD: ContentFormat.LWM2M_JSON}
# Looked up on every decoded payload: a dict by int is ten times cheaper than ContentFormat(number).
_BY_NUMBER: dict[int, ContentFormat] = {int(f): _LEGACY.get(f, f) for f in ContentFormat}
