"""LwM2M CBOR (Content-Format 11544, LwM2M 1.2).

Nested maps whose keys are path components from the object id down: an integer (one level) or an
array of integers (several levels), so ``{[13,26,1]: 42}``, ``{13: {26: {1: 42}}}`` and
``{[13,26]: {1: 42}}`` all put 42 at ``/13/26/1``. Leaves sit at resource or resource-instance level:
integers, floats (half precision too), text, byte strings, booleans, object links as text
``"oid:iid"``, and TIME as an integer (an epoch-time tag is accepted). Definite and indefinite lengths
are accepted; paths deeper than oid/iid/rid/riid and ids >= 65536 are rejected.

The encoder folds chains of single-entry maps into array keys (``{[13,26,1]: 42}``); the format has
no timestamps.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from gateway.lwm2m.codec import cbor_wire
from gateway.lwm2m.codec.entries import Entry
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.values import check_value, model_type, number_value, objlink
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import (
    ModelLookup,
    Node,
    NodeError,
    ObjLink,
    Value,
    iter_leaves,
    no_models,
)
from gateway.lwm2m.path import MAX_ID, RESERVED_INSTANCE_ID, LwM2mPath

_T = ResourceType


def decode_lwm2m_cbor(
    payload: bytes, model_of: ModelLookup = no_models, now: float | None = None
) -> list[Entry]:
    """Every value with its absolute path and type, in payload order.

    The format has no times, so every ``ts`` is None; ``now`` is accepted (and unused) so that all
    self-describing decoders share one signature.
    """
    document = cbor_wire.loads(payload, "LwM2M CBOR")
    if type(document) is not dict:
        raise CodecError("LwM2M CBOR must be a map keyed by path components")
    entries: list[Entry] = []
    _walk(document, (), entries, model_of)
    seen = {e[0] for e in entries}
    if len(seen) != len(entries):
        raise CodecError("LwM2M CBOR: a path has more than one value")
    for e in entries:
        if e[0].depth == 4 and e[0].parent in seen:
            raise CodecError(f"LwM2M CBOR: {e[0].parent} has both a value and instances")
    return entries


def _walk(
    node: dict[object, object], prefix: tuple[int, ...], entries: list[Entry], model_of: ModelLookup
) -> None:
    for key, value in node.items():
        ids = prefix + _key_ids(key, prefix)
        if type(value) is dict:
            if len(ids) >= 4:
                raise CodecError(f"LwM2M CBOR: a map below {_show(ids)}, deeper than a resource instance")
            _walk(value, ids, entries, model_of)
            continue
        if len(ids) < 3:
            raise CodecError(f"LwM2M CBOR: value at {_show(ids)}, above resource level")
        path = LwM2mPath._trusted(ids)
        where = f"LwM2M CBOR {path}"
        leaf, rtype = cbor_leaf(value, model_type(model_of, ids[0], ids[2]), where)
        entries.append((path, leaf, rtype, None))


def _key_ids(key: object, prefix: tuple[int, ...]) -> tuple[int, ...]:
    ids: tuple[object, ...]
    if type(key) is int:
        ids = (key,)
    elif type(key) is tuple and key:
        ids = key
    else:
        raise CodecError(f"LwM2M CBOR: key {key!r:.40} under {_show(prefix)} is not an id or array of ids")
    if len(prefix) + len(ids) > 4:
        raise CodecError(f"LwM2M CBOR: path {_show(prefix)} + {key!r:.40} is deeper than a resource instance")
    for level, i in enumerate(ids, start=len(prefix)):
        if type(i) is not int or not 0 <= i <= MAX_ID:
            raise CodecError(f"LwM2M CBOR: id {i!r:.40} under {_show(prefix)} is not in 0..{MAX_ID}")
        if level == 1 and i == RESERVED_INSTANCE_ID:
            raise CodecError(f"LwM2M CBOR: object instance id {i} under {_show(prefix)} is reserved")
    return ids  # type: ignore[return-value]


def _show(ids: tuple[int, ...]) -> str:
    return "/" + "/".join(map(str, ids))


def cbor_leaf(raw: object, rtype: ResourceType | None, where: str) -> tuple[Value, ResourceType]:
    """A decoded CBOR item as an LwM2M value, typed by the model when there is one."""
    t = type(raw)
    if t is int or t is float:
        return number_value(raw, rtype, where)
    if t is str:
        assert isinstance(raw, str)
        if rtype is _T.OBJLNK:
            return objlink(raw, where), rtype
        if rtype is None or rtype is _T.STRING or rtype is _T.CORELNK:
            return raw, rtype or _T.STRING
        raise CodecError(f"{where}: text for a {rtype.value} resource")
    if t is bytes:
        assert isinstance(raw, bytes)
        if rtype is None or rtype is _T.OPAQUE:
            return raw, _T.OPAQUE
        raise CodecError(f"{where}: a byte string for a {rtype.value} resource")
    if t is bool:
        assert isinstance(raw, bool)
        if rtype is None or rtype is _T.BOOLEAN:
            return raw, _T.BOOLEAN
        raise CodecError(f"{where}: a boolean for a {rtype.value} resource")
    if isinstance(raw, datetime.datetime) and (rtype is None or rtype is _T.TIME):
        try:
            return int(raw.timestamp()), _T.TIME
        except (OverflowError, ValueError, OSError):
            raise CodecError(f"{where}: time out of range") from None
    raise CodecError(f"{where}: {t.__name__} is not an LwM2M value")


def encode_lwm2m_cbor(node: Node, path: LwM2mPath) -> bytes:
    """``node`` (which lives at ``path``) with absolute paths. Empty instances/resources are left out."""
    try:
        leaves = [(p, v, t, None) for p, v, t in iter_leaves(node, path)]
    except NodeError as e:
        raise CodecError(str(e)) from None
    return encode_lwm2m_cbor_values(leaves)


def encode_lwm2m_cbor_values(entries: Iterable[Entry]) -> bytes:
    """Values at absolute paths as one map (times, having no place in the format, are ignored)."""
    tree: dict[int, object] = {}
    for path, value, rtype, _ in entries:
        ids = path.ids
        if len(ids) < 3:
            raise CodecError(f"{path}: values belong to resources or resource instances")
        level = tree
        for depth, i in enumerate(ids[:-1], start=1):
            child = level.setdefault(i, {})
            if type(child) is not dict:
                raise CodecError(f"{path}: {_show(ids[:depth])} has both a value and instances")
            level = child
        if ids[-1] in level:
            raise CodecError(f"{path}: more than one value, or both a value and instances")
        level[ids[-1]] = cbor_item(value, rtype, path)
    return cbor_wire.dumps(_fold(tree))


def cbor_item(value: Value, rtype: ResourceType, where: LwM2mPath) -> object:
    """An LwM2M value as what :func:`cbor_wire.dumps` writes (object links as ``"oid:iid"``)."""
    value = check_value(value, rtype, where)
    if isinstance(value, ObjLink):
        return f"{value.oid}:{value.iid}"
    return value


def _fold(tree: dict[int, object]) -> dict[object, object]:
    # {13: {26: {1: 42}}} -> {(13, 26, 1): 42}: follow chains of single-entry maps into array keys.
    folded: dict[object, object] = {}
    for key, value in tree.items():
        ids = [key]
        while type(value) is dict and len(value) == 1:
            (child_key, value), = value.items()
            ids.append(child_key)
        if type(value) is dict:
            value = _fold(value)
        folded[ids[0] if len(ids) == 1 else tuple(ids)] = value
    return folded
