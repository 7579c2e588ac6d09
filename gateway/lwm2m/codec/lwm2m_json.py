"""LwM2M JSON (Content-Format 11543, legacy 1543): the LwM2M 1.0 JSON format.

``{"bn":"/3/0/","bt":1700000000,"e":[{"n":"0","sv":"Open Mobile Alliance"},{"n":"7/0","v":3800,"t":-5}]}``

An entry's path is the base name + its name; with no base name, names are relative to the request
path (or absolute). Values: ``v`` numbers, ``sv`` strings (standard base64 for opaque resources),
``bv`` booleans, ``ov`` object links ``"oid:iid"``. Times: ``bt`` + ``t``, made absolute as in
SenML (values below 2**28 are relative to now).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable

from gateway.lwm2m.codec.entries import Entry
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.senml_json import dumps_json, parse_json
from gateway.lwm2m.codec.values import (
    check_value,
    model_type,
    number_value,
    objlink,
    resolve_time,
    time_seconds,
)
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import (
    ModelLookup,
    Node,
    NodeError,
    ObjLink,
    ResourceInstance,
    SingleResource,
    Value,
    check_node_path,
    iter_leaves,
    no_models,
)
from gateway.lwm2m.path import LwM2mPath, PathError

_T = ResourceType


def decode_lwm2m_json(
    payload: bytes,
    path: LwM2mPath | None = None,
    model_of: ModelLookup = no_models,
    now: float | None = None,
) -> list[Entry]:
    """Every entry, resolved and typed, in order. ``path``: the request path relative names hang off."""
    document = parse_json(payload, "LwM2M JSON")
    if type(document) is not dict:
        raise CodecError("LwM2M JSON must be an object with an 'e' array")
    bn = document.get("bn")
    if bn is None:
        base = "" if path is None or path.is_root else str(path) + "/"
    elif type(bn) is str:
        base = bn
    else:
        raise CodecError("LwM2M JSON: 'bn' must be text")
    raw_bt = document.get("bt")
    base_time = None if raw_bt is None else time_seconds(raw_bt, "LwM2M JSON 'bt'")
    records = document.get("e")
    if type(records) is not list:
        raise CodecError("LwM2M JSON: 'e' must be an array of entries")
    entries: list[Entry] = []
    for index, record in enumerate(records):
        if type(record) is not dict:
            raise CodecError(f"LwM2M JSON entry {index} is not an object")
        name = record.get("n", "")
        if type(name) is not str:
            raise CodecError(f"LwM2M JSON entry {index}: 'n' must be text")
        if bn is None and name.startswith("/"):
            full = name  # an absolute name, as in composite payloads
        elif name:
            full = base + name
        else:
            full = base.rstrip("/")
        try:
            entry_path = LwM2mPath.parse(full)
        except PathError as e:
            raise CodecError(f"LwM2M JSON entry {index}: {e}") from None
        ids = entry_path.ids
        if len(ids) < 3:
            raise CodecError(f"LwM2M JSON entry {index}: {entry_path} is not a resource or resource instance")
        where = f"LwM2M JSON entry {index} {entry_path}"
        raw_t = record.get("t")
        ts = base_time
        if raw_t is not None:
            seconds = time_seconds(raw_t, where)
            ts = seconds if ts is None else ts + seconds
        if ts is not None:
            if now is None:
                now = time.time()
            ts = resolve_time(ts, now)
        rtype = model_type(model_of, ids[0], ids[2])
        value, rtype = _value(record, rtype, where)
        entries.append((entry_path, value, rtype, ts))
    return entries


def _value(record: dict[str, object], rtype: ResourceType | None, where: str) -> tuple[Value, ResourceType]:
    present = [key for key in ("v", "sv", "bv", "ov") if key in record]
    if len(present) != 1:
        raise CodecError(f"{where}: {'no value' if not present else 'more than one value'}")
    key = present[0]
    raw = record[key]
    if key == "v":
        return number_value(raw, rtype, where)
    if key == "bv":
        if type(raw) is not bool:
            raise CodecError(f"{where}: 'bv' must be true or false")
        if rtype is not None and rtype is not _T.BOOLEAN:
            raise CodecError(f"{where}: boolean value for a {rtype.value} resource")
        return raw, _T.BOOLEAN
    if key == "ov":
        if rtype is not None and rtype is not _T.OBJLNK:
            raise CodecError(f"{where}: object link for a {rtype.value} resource")
        return objlink(raw, where), _T.OBJLNK
    if type(raw) is not str:
        raise CodecError(f"{where}: 'sv' must be text")
    if rtype is _T.OPAQUE:
        try:
            return base64.b64decode(raw, validate=True), rtype
        except (binascii.Error, ValueError):
            raise CodecError(f"{where}: opaque value is not base64") from None
    if rtype is None or rtype is _T.STRING or rtype is _T.CORELNK:
        return raw, rtype or _T.STRING
    raise CodecError(f"{where}: string value for a {rtype.value} resource")


def encode_lwm2m_json(node: Node, path: LwM2mPath) -> bytes:
    """``node`` (which lives at ``path``): base name = the path (+ ``/`` above resource level)."""
    try:
        check_node_path(node, path)
    except NodeError as e:
        raise CodecError(str(e)) from None
    if isinstance(node, SingleResource | ResourceInstance):
        entry: dict[str, object] = {}
        _put_value(entry, node.value, node.type, path)
        return dumps_json({"bn": str(path), "e": [entry]})
    base = str(path) + "/"
    cut = len(base)
    records = []
    try:
        for leaf, value, rtype in iter_leaves(node, path):
            entry = {"n": str(leaf)[cut:]}
            _put_value(entry, value, rtype, leaf)
            records.append(entry)
    except NodeError as e:
        raise CodecError(str(e)) from None
    return dumps_json({"bn": base, "e": records})


def encode_lwm2m_json_values(entries: Iterable[Entry]) -> bytes:
    """Entries with absolute names (and ``t`` where a time is given), no base name."""
    records = []
    for path, value, rtype, ts in entries:
        if path.depth < 3:
            raise CodecError(f"{path}: values belong to resources or resource instances")
        entry: dict[str, object] = {"n": str(path)}
        _put_value(entry, value, rtype, path)
        if ts is not None:
            entry["t"] = ts
        records.append(entry)
    return dumps_json({"e": records})


def _put_value(entry: dict[str, object], value: Value, rtype: ResourceType, where: LwM2mPath) -> None:
    value = check_value(value, rtype, where)
    if rtype is _T.STRING or rtype is _T.CORELNK:
        entry["sv"] = value
    elif rtype is _T.OPAQUE:
        assert isinstance(value, bytes)
        entry["sv"] = base64.b64encode(value).decode("ascii")
    elif rtype is _T.BOOLEAN:
        entry["bv"] = value
    elif rtype is _T.OBJLNK:
        assert isinstance(value, ObjLink)
        entry["ov"] = f"{value.oid}:{value.iid}"
    else:
        entry["v"] = value
