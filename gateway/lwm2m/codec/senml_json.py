"""SenML JSON (Content-Format 110, RFC 8428 as profiled by LwM2M 1.1).

``[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},{"n":"9","v":95},{"n":"7/0","v":3800}]``.
Opaque values (``vd``) are base64url text; unpadded per RFC 8428, padded and standard-alphabet input
is accepted too. Resolution rules and typing: :mod:`gateway.lwm2m.codec.senml`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence

from gateway.lwm2m.codec import senml
from gateway.lwm2m.codec.entries import Entry
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.node import ModelLookup, Node, no_models
from gateway.lwm2m.path import LwM2mPath

_LABELS = senml.JSON_LABELS
_URL_TO_STANDARD = str.maketrans("-_", "+/")


def decode_senml_json(
    payload: bytes, model_of: ModelLookup = no_models, now: float | None = None
) -> list[Entry]:
    """Every record of the pack, resolved and typed, in order (see :mod:`gateway.lwm2m.codec.entries`)."""
    return senml.resolve(parse_json(payload, "SenML JSON"), _LABELS, _read_opaque, model_of, now)


def decode_senml_json_paths(payload: bytes) -> list[LwM2mPath]:
    """The paths of a Read-/Observe-Composite request body ``[{"n":"/3/0/0"},...]``."""
    return senml.resolve_names(parse_json(payload, "SenML JSON"), _LABELS)


def encode_senml_json(node: Node, path: LwM2mPath) -> bytes:
    """``node`` (which lives at ``path``) as a SenML JSON pack with base name."""
    return _dumps(senml.node_records(node, path, _LABELS, _write_opaque))


def encode_senml_json_values(entries: Iterable[Entry]) -> bytes:
    """Records with full names (and ``t`` where a time is given): composite operations and Send."""
    return _dumps(senml.value_records(entries, _LABELS, _write_opaque))


def encode_senml_json_paths(paths: Sequence[LwM2mPath]) -> bytes:
    """A Read-/Observe-Composite request body."""
    return _dumps(senml.name_records(paths, _LABELS))


def parse_json(payload: bytes, what: str) -> object:
    """The JSON document that is ``payload`` (UTF-8, no NaN/Infinity); :class:`CodecError` otherwise."""
    try:
        return _DECODER.decode(bytes(payload).decode())
    except UnicodeDecodeError as e:
        raise CodecError(f"{what} is not UTF-8 (byte offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise CodecError(f"invalid {what}: {e.msg} at offset {e.pos}") from None
    except (ValueError, RecursionError) as e:
        raise CodecError(f"invalid {what}: {e}") from None


def dumps_json(document: object) -> bytes:
    """Compact UTF-8 JSON; :class:`CodecError` for a value JSON cannot carry (NaN, infinity)."""
    try:
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError as e:
        raise CodecError(f"cannot write JSON: {e}") from None


_dumps = dumps_json


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


# One decoder for all payloads: json.loads() with an option builds a new one each call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _read_opaque(raw: object, where: str) -> bytes:
    if type(raw) is not str:
        raise CodecError(f"{where}: data value must be base64url text")
    text = raw.rstrip("=").translate(_URL_TO_STANDARD)
    if len(text) % 4 == 1:
        raise CodecError(f"{where}: data value is not base64url (bad length)")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CodecError(f"{where}: data value is not base64url") from None


def _write_opaque(data: bytes) -> object:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
