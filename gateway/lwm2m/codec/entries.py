"""Resolved values of the self-describing formats (SenML JSON/CBOR, LwM2M JSON, LwM2M CBOR).

Those decoders produce a list of :data:`Entry` -- (path, typed value, type, absolute time or None) --
in payload order; this module turns such a list into what callers ask for: the node at a request
path, the flat path -> value map of composite operations, or the timestamped list a notification or
Send carries. Encoders take entries too (:func:`typed_entries` builds them from a flat map).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.values import model_type
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import (
    ModelLookup,
    Node,
    NodeError,
    ResourceInstance,
    SingleResource,
    TimestampedValue,
    Value,
    build_node,
    infer_type,
)
from gateway.lwm2m.path import LwM2mPath

#: One value: its path, the value, its LwM2M type, and its absolute time (Unix seconds) or None.
Entry = tuple[LwM2mPath, Value, ResourceType, float | None]


def newest(entries: Iterable[Entry]) -> dict[LwM2mPath, Entry]:
    """One entry per path: the one with the latest time (the later one when times are equal or absent)."""
    by_path: dict[LwM2mPath, Entry] = {}
    for entry in entries:
        old = by_path.get(entry[0])
        if old is None or old[3] is None or entry[3] is None or entry[3] >= old[3]:
            by_path[entry[0]] = entry
    return by_path


def to_node(entries: list[Entry], path: LwM2mPath, model_of: ModelLookup) -> Node:
    """The node at ``path`` holding the (newest) values of ``entries``; CodecError if they do not fit."""
    if len(entries) == 1:  # the usual notification: one value, at the path observed
        leaf, value, rtype, _ = entries[0]
        ids = path.ids
        if leaf.ids == ids:
            if len(ids) == 3:
                return SingleResource(ids[2], value, rtype)
            return ResourceInstance(ids[3], value, rtype)
    try:
        return build_node(path, ((p, v, t) for p, v, t, _ in newest(entries).values()), model_of)
    except NodeError as e:
        raise CodecError(str(e)) from None


def to_values(entries: list[Entry]) -> dict[LwM2mPath, Value]:
    """Path -> (newest) value."""
    return {p: e[1] for p, e in newest(entries).items()}


def to_timestamped(entries: list[Entry], path: LwM2mPath | None) -> list[TimestampedValue]:
    """Every entry in payload order; :class:`CodecError` for one outside ``path`` (when given)."""
    result = []
    for p, v, _, ts in entries:
        if path is not None and not p.startswith(path):
            raise CodecError(f"{p} is outside the requested path {path}")
        result.append(TimestampedValue(p, v, ts))
    return result


def typed_entries(
    values: Mapping[LwM2mPath, Value] | Iterable[TimestampedValue], model_of: ModelLookup
) -> list[Entry]:
    """Entries for encoding: the type of each value from the model, else from its Python type."""
    items: Iterable[tuple[LwM2mPath, Value, float | None]] = (
        ((p, v, None) for p, v in values.items()) if isinstance(values, Mapping) else values
    )
    result: list[Entry] = []
    for path, value, ts in items:
        ids = path.ids
        rtype = model_type(model_of, ids[0], ids[2]) if len(ids) >= 3 else None
        if rtype is None:
            try:
                rtype = infer_type(value)
            except NodeError as e:
                raise CodecError(f"{path}: {e}") from None
        result.append((path, value, rtype, ts))
    return result
