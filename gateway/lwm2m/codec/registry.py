"""One entry point for every LwM2M content format: decode, encode, and choosing a format for a client.

>>> from gateway.lwm2m.path import LwM2mPath
>>> node = decode(ContentFormat.TEXT, b"95", LwM2mPath(3, 0, 9))
>>> node.value, node.type.value
('95', 'String')
>>> decode(ContentFormat.SENML_JSON, b'[{"n":"/3/0/9","v":95}]', None)
{LwM2mPath(3, 0, 9): 95}

Two shapes (see :mod:`gateway.lwm2m.node`): with a request ``path``, :func:`decode` returns the node at
that path (Read, Observe notifications, Write payloads); with ``path=None`` it returns the flat
path -> value map of composite operations. :func:`decode_timestamped` returns every value with its
device timestamp, in payload order (notifications and Send with historical values).

Format numbers may be plain ints from the CoAP Content-Format option; legacy 1542/1543 are accepted.
Every failure, including an unsupported format or a format that cannot carry the requested shape,
is a :class:`CodecError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, overload

from gateway.lwm2m.codec.cbor import decode_cbor, encode_cbor
from gateway.lwm2m.codec.entries import Entry, to_node, to_timestamped, to_values, typed_entries
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.codec.lwm2m_cbor import decode_lwm2m_cbor, encode_lwm2m_cbor, encode_lwm2m_cbor_values
from gateway.lwm2m.codec.lwm2m_json import decode_lwm2m_json, encode_lwm2m_json, encode_lwm2m_json_values
from gateway.lwm2m.codec.opaque import decode_opaque, encode_opaque
from gateway.lwm2m.codec.senml_cbor import (
    decode_senml_cbor,
    decode_senml_cbor_paths,
    encode_senml_cbor,
    encode_senml_cbor_paths,
    encode_senml_cbor_values,
)
from gateway.lwm2m.codec.senml_json import (
    decode_senml_json,
    decode_senml_json_paths,
    encode_senml_json,
    encode_senml_json_paths,
    encode_senml_json_values,
)
from gateway.lwm2m.codec.text import decode_text, encode_text
from gateway.lwm2m.codec.tlv import decode_tlv, encode_tlv
from gateway.lwm2m.node import (
    ModelLookup,
    Node,
    ResourceInstance,
    SingleResource,
    TimestampedValue,
    Value,
    iter_leaves,
    no_models,
)
from gateway.lwm2m.path import LwM2mPath

F = ContentFormat

_SingleEncoder = Callable[[SingleResource | ResourceInstance, LwM2mPath], bytes]
_SINGLE_ENCODERS: Final[dict[ContentFormat, _SingleEncoder]] = {
    F.TEXT: encode_text,
    F.OPAQUE: encode_opaque,
    F.CBOR: encode_cbor,
}

_SELF_DESCRIBING: Final = frozenset({F.SENML_JSON, F.SENML_CBOR, F.LWM2M_JSON, F.LWM2M_CBOR})

_NodeEncoder = Callable[[Node, LwM2mPath], bytes]
_NODE_ENCODERS: Final[dict[ContentFormat, _NodeEncoder]] = {
    F.TLV: encode_tlv,
    F.SENML_JSON: encode_senml_json,
    F.SENML_CBOR: encode_senml_cbor,
    F.LWM2M_JSON: encode_lwm2m_json,
    F.LWM2M_CBOR: encode_lwm2m_cbor,
}

_ValuesEncoder = Callable[[Iterable[Entry]], bytes]
_VALUES_ENCODERS: Final[dict[ContentFormat, _ValuesEncoder]] = {
    F.SENML_JSON: encode_senml_json_values,
    F.SENML_CBOR: encode_senml_cbor_values,
    F.LWM2M_JSON: encode_lwm2m_json_values,
    F.LWM2M_CBOR: encode_lwm2m_cbor_values,
}


def _entries(
    fmt: ContentFormat, payload: bytes, path: LwM2mPath | None, model_of: ModelLookup, now: float | None
) -> list[Entry]:
    if fmt is F.SENML_CBOR:
        return decode_senml_cbor(payload, model_of, now)
    if fmt is F.SENML_JSON:
        return decode_senml_json(payload, model_of, now)
    if fmt is F.LWM2M_CBOR:
        return decode_lwm2m_cbor(payload, model_of, now)
    return decode_lwm2m_json(payload, path, model_of, now)


def _format(fmt: int) -> ContentFormat:
    return ContentFormat.of(fmt)


@overload
def decode(
    fmt: int, payload: bytes, path: LwM2mPath, model_of: ModelLookup = ..., *, now: float | None = ...
) -> Node: ...
@overload
def decode(
    fmt: int, payload: bytes, path: None, model_of: ModelLookup = ..., *, now: float | None = ...
) -> dict[LwM2mPath, Value]: ...
def decode(
    fmt: int,
    payload: bytes,
    path: LwM2mPath | None,
    model_of: ModelLookup = no_models,
    *,
    now: float | None = None,
) -> Node | dict[LwM2mPath, Value]:
    """Decode ``payload`` in content format ``fmt``.

    With a ``path``: the node at that path (a single resource or resource instance for TEXT, OPAQUE
    and CBOR). With ``path=None``: the path -> value map of a composite response or Write-Composite
    (SenML JSON/CBOR, LwM2M JSON/CBOR). When a self-describing payload holds several values for one
    path, the newest (by device time, else the later) wins. ``now`` (Unix seconds) resolves relative
    SenML times; only needed for :func:`decode_timestamped` results, default the current time.
    Types come from ``model_of``; unknown resources decode as OPAQUE (TLV) or as what the payload says.
    """
    f = _format(fmt)
    # `is` tests rather than dict or set lookups: an Enum member hashes in Python code, and this runs
    # for every notification.
    if path is None:
        if not _is_self_describing(f):
            raise CodecError(f"content format {f.name} ({f.value}) cannot carry values of several paths")
        return to_values(_entries(f, payload, None, model_of, now))
    if f is F.TLV:
        return decode_tlv(payload, path, model_of)
    if f is F.TEXT:
        return decode_text(payload, path, model_of)
    if _is_self_describing(f):
        return to_node(_entries(f, payload, path, model_of, now), path, model_of)
    if f is F.OPAQUE:
        return decode_opaque(payload, path, model_of)
    if f is F.CBOR:
        return decode_cbor(payload, path, model_of)
    raise CodecError(f"content format {f.name} ({f.value}) does not carry resource values")


def _is_self_describing(f: ContentFormat) -> bool:
    return f is F.SENML_CBOR or f is F.SENML_JSON or f is F.LWM2M_CBOR or f is F.LWM2M_JSON


def decode_timestamped(
    fmt: int,
    payload: bytes,
    path: LwM2mPath | None,
    model_of: ModelLookup = no_models,
    *,
    now: float | None = None,
) -> list[TimestampedValue]:
    """Every value in ``payload`` with its path and device time (None if it has none), in payload order.

    For the formats without times (TEXT, OPAQUE, CBOR, TLV) ``path`` is required and every ``ts`` is
    None. Times below 2**28 are relative to ``now`` (default: the current time), per RFC 8428.
    A value outside ``path`` (when given) is a :class:`CodecError`.
    """
    f = _format(fmt)
    if _is_self_describing(f):
        return to_timestamped(_entries(f, payload, path, model_of, now), path)
    if path is None:
        raise CodecError(f"content format {f.name} ({f.value}) needs the request path")
    node = decode(f, payload, path, model_of)
    return [TimestampedValue(p, v, None) for p, v, _ in iter_leaves(node, path)]


@overload
def encode(fmt: int, content: Node, path: LwM2mPath, model_of: ModelLookup = ...) -> bytes: ...
@overload
def encode(
    fmt: int, content: Mapping[LwM2mPath, Value], path: None, model_of: ModelLookup = ...
) -> bytes: ...
def encode(
    fmt: int,
    content: Node | Mapping[LwM2mPath, Value],
    path: LwM2mPath | None,
    model_of: ModelLookup = no_models,
) -> bytes:
    """Encode a node living at ``path``, or (``path=None``) a path -> value map for composite operations.

    A node carries its types; a map's values are typed by ``model_of``, else by their Python type.
    Raises :class:`CodecError` for a format that cannot carry the content or an ill-typed value.
    """
    f = _format(fmt)
    if isinstance(content, Mapping):
        encoder = _VALUES_ENCODERS.get(f)
        if encoder is None:
            raise CodecError(f"content format {f.name} ({f.value}) cannot carry values of several paths")
        return encoder(typed_entries(content, model_of))
    if path is None:
        raise CodecError("encoding a node needs the path it lives at")
    single = _SINGLE_ENCODERS.get(f)
    if single is not None:
        if not isinstance(content, SingleResource | ResourceInstance):
            raise CodecError(f"content format {f.name} ({f.value}) carries one value, not {path}")
        return single(content, path)
    node_encoder = _NODE_ENCODERS.get(f)
    if node_encoder is None:
        raise CodecError(f"content format {f.name} ({f.value}) does not carry resource values")
    return node_encoder(content, path)


def encode_timestamped(
    fmt: int, values: Iterable[TimestampedValue], model_of: ModelLookup = no_models
) -> bytes:
    """Values with device times (Send, notifications with history): SenML JSON/CBOR or LwM2M JSON."""
    f = _format(fmt)
    if f is F.LWM2M_CBOR or f not in _VALUES_ENCODERS:
        raise CodecError(f"content format {f.name} ({f.value}) cannot carry timestamped values")
    return _VALUES_ENCODERS[f](typed_entries(values, model_of))


def decode_paths(fmt: int, payload: bytes) -> list[LwM2mPath]:
    """The paths of a Read-Composite / Observe-Composite request body (SenML JSON or CBOR)."""
    f = _format(fmt)
    if f is F.SENML_CBOR:
        return decode_senml_cbor_paths(payload)
    if f is F.SENML_JSON:
        return decode_senml_json_paths(payload)
    raise CodecError(f"content format {f.name} ({f.value}) is not used for composite requests")


def encode_paths(fmt: int, paths: Sequence[LwM2mPath]) -> bytes:
    """A Read-Composite / Observe-Composite request body ``[{"n": "/3/0/0"}, ...]``."""
    f = _format(fmt)
    if f is F.SENML_CBOR:
        return encode_senml_cbor_paths(paths)
    if f is F.SENML_JSON:
        return encode_senml_json_paths(paths)
    raise CodecError(f"content format {f.name} ({f.value}) is not used for composite requests")


# -- choosing a format -------------------------------------------------------------------------------------


class FormatNeed(enum.Enum):
    """What a request or response has to carry."""

    VALUE = "value"  # one single resource or resource instance (not opaque)
    OPAQUE_VALUE = "opaque value"  # one opaque resource or resource instance
    NODE = "node"  # an object, an object instance or a multiple resource
    COMPOSITE = "composite"  # values or paths of several nodes (Read/Write/Observe-Composite)


_NODE_PREFERENCE: Final = (F.SENML_CBOR, F.LWM2M_CBOR, F.SENML_JSON, F.TLV, F.LWM2M_JSON)
_COMPOSITE_PREFERENCE: Final = (F.SENML_CBOR, F.SENML_JSON, F.LWM2M_CBOR)
_VALUE_CAPABLE: Final = frozenset({F.TEXT, F.CBOR, F.TLV, *_SELF_DESCRIBING})


def choose_format(
    client_formats: Iterable[int],
    need: FormatNeed,
    *,
    lwm2m_version: str = "1.0",
    preferred: int | None = None,
) -> ContentFormat:
    """The content format to ask a client for (Accept) or to send it (Content-Format).

    ``client_formats``: the ``ct=`` list of its registration (empty for 1.0 clients, which do not send
    one); ``lwm2m_version``: its ``lwm2m=`` parameter; ``preferred``: its preferred format (``pct`` of
    a Bootstrap-Request), used whenever it can carry what is needed.

    - one value: plain text (every client supports it), opaque for opaque resources;
    - a node: TLV for LwM2M 1.0 clients; for 1.1+ the first declared of SenML CBOR, LwM2M CBOR,
      SenML JSON, TLV, LwM2M JSON, and TLV if the client declared none;
    - composite: the first declared of SenML CBOR, SenML JSON, LwM2M CBOR, else SenML CBOR.

    The result is the number to put on the wire: TLV_OLD / JSON_OLD when the client declared only the
    legacy number (every function here accepts those too).
    """
    numbers = set(client_formats)
    declared = {f for f in map(ContentFormat.known, numbers) if f is not None}
    pct = ContentFormat.known(preferred) if preferred is not None else None
    chosen = _choose(declared, need, lwm2m_version, pct)
    legacy = _LEGACY_OF.get(chosen)
    if legacy is not None and legacy in numbers and chosen not in numbers:
        return legacy
    return chosen


_LEGACY_OF: Final = {F.TLV: F.TLV_OLD, F.LWM2M_JSON: F.JSON_OLD}


def _choose(
    declared: set[ContentFormat], need: FormatNeed, lwm2m_version: str, pct: ContentFormat | None
) -> ContentFormat:
    if need is FormatNeed.OPAQUE_VALUE:
        return F.OPAQUE
    if need is FormatNeed.VALUE:
        return pct if pct is not None and pct in _VALUE_CAPABLE else F.TEXT
    if need is FormatNeed.NODE:
        if pct is not None and pct in _NODE_PREFERENCE:
            return pct
        if lwm2m_version == "1.0":
            return F.TLV
        return next((f for f in _NODE_PREFERENCE if f in declared), F.TLV)
    if pct is not None and pct in _COMPOSITE_PREFERENCE:
        return pct
    return next((f for f in _COMPOSITE_PREFERENCE if f in declared), F.SENML_CBOR)
