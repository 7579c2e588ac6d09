"""The one error every LwM2M payload decoder (and encoder) raises: :class:`CodecError`.

A device's payload is untrusted input. Whatever is wrong with it (truncated, lying lengths, bad UTF-8,
a value of the wrong type, a path outside the request), the codecs report it as a ``CodecError``
whose message says what is wrong and where (byte offset or path), never as ``IndexError``,
``struct.error``, ``UnicodeDecodeError``, a cbor2 error or ``RecursionError``. The CoAP layer turns it
into 4.00 Bad Request (or logs the misbehaving device for responses and notifications).
"""

from __future__ import annotations


class CodecError(ValueError):
    """A payload could not be decoded, or a value could not be encoded, in the given content format."""
