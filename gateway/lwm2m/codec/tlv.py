"""LwM2M TLV (Content-Format 11542, legacy 1542).

Each entry: a type byte (bits 7-6 kind: object instance / resource instance / multiple resource /
resource with value; bit 5 a 16-bit identifier; bits 4-3 the size of the length field, 0-3 bytes;
bits 2-0 the length itself when there is no length field), the identifier, the length, the value.

Values are typed by the resource model: integers and TIME are big-endian two's complement of 1, 2, 4
or 8 bytes (unsigned integers are read unsigned, and written signed while below 2**63), floats 4 or
8 bytes, booleans one byte 0/1, object links 2-byte oid + 2-byte iid, strings UTF-8. A resource with
no model decodes to ``bytes`` (OPAQUE), so an unknown object is still readable. Encoding uses the
shortest integer, identifier and length fields, and a 4-byte float whenever it keeps the value, so
``encode(decode(b)) == b`` for payloads written that way (the LwM2M specification examples are).

Nesting rules: object instances contain resources; multiple resources contain resource instances;
nothing else nests. Anything else, truncation or a length pointing past its parent is a
:class:`CodecError` naming the byte offset.
"""

from __future__ import annotations

import struct
from typing import Final

from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.values import check_value
from gateway.lwm2m.model.types import ObjectModel, ResourceModel, ResourceType
from gateway.lwm2m.node import (
    ModelLookup,
    MultipleResource,
    Node,
    NodeError,
    ObjectInstanceNode,
    ObjectNode,
    ObjLink,
    Resource,
    ResourceInstance,
    SingleResource,
    Value,
    check_node_path,
    no_models,
)
from gateway.lwm2m.path import RESERVED_INSTANCE_ID, LwM2mPath, PathError

OBJECT_INSTANCE: Final = 0
RESOURCE_INSTANCE: Final = 1
MULTIPLE_RESOURCE: Final = 2
RESOURCE_VALUE: Final = 3
_KIND_NAMES: Final = ("object instance", "resource instance", "multiple resource", "resource")

_T = ResourceType
_FLOAT32 = struct.Struct(">f")
_FLOAT64 = struct.Struct(">d")
_OBJLNK = struct.Struct(">HH")
_NO_RESOURCES: dict[int, ResourceModel] = {}

# One scanned entry: (kind, identifier, value start, value end, offset of the type byte)
_Entry = tuple[int, int, int, int, int]


def _scan(data: bytes, start: int, end: int) -> list[_Entry]:
    """Split ``data[start:end]`` into its top-level entries, checking every length against ``end``."""
    entries: list[_Entry] = []
    i = start
    while i < end:
        at = i
        t = data[i]
        i += 1
        id_size = 2 if t & 0x20 else 1
        len_size = (t >> 3) & 3
        if i + id_size + len_size > end:
            raise CodecError(f"TLV truncated: header at offset {at} needs {1 + id_size + len_size} bytes")
        ident = data[i] if id_size == 1 else (data[i] << 8) | data[i + 1]
        i += id_size
        if len_size == 0:
            length = t & 7
        elif len_size == 1:
            length = data[i]
        elif len_size == 2:
            length = (data[i] << 8) | data[i + 1]
        else:
            length = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
        i += len_size
        if i + length > end:
            raise CodecError(
                f"TLV length {length} at offset {at} runs past the end of its container (offset {end})"
            )
        entries.append((t >> 6, ident, i, i + length, at))
        i += length
    return entries


def decode_tlv(payload: bytes, path: LwM2mPath, model_of: ModelLookup = no_models) -> Node:
    """The node at ``path`` (object, instance, resource or resource instance) carried by ``payload``."""
    data = bytes(payload)
    ids = path.ids
    depth = len(ids)
    if depth == 0:
        raise CodecError("TLV cannot carry the root path; read objects one by one")
    entries = _scan(data, 0, len(data))
    oid = ids[0]
    model = model_of(oid)
    resources = _NO_RESOURCES if model is None else model.resources
    if depth == 1:
        return _decode_object(data, entries, oid, model, resources)
    iid = ids[1]
    if depth == 2:
        if entries and entries[0][0] == OBJECT_INSTANCE:
            if len(entries) != 1:
                raise CodecError(f"TLV for {path}: expected one object instance, got {len(entries)} entries")
            kind, ident, a, b, at = entries[0]
            if ident != iid:
                raise CodecError(f"TLV for {path}: object instance {ident} at offset {at} is not {iid}")
            entries = _scan(data, a, b)
        return _instance(data, entries, oid, iid, resources)
    rid = ids[2]
    rmodel = resources.get(rid)
    if depth == 3:
        if len(entries) == 1 and entries[0][0] in (RESOURCE_VALUE, MULTIPLE_RESOURCE):
            kind, ident, a, b, at = entries[0]
            if ident != rid:
                raise CodecError(f"TLV for {path}: resource {ident} at offset {at} is not {rid}")
            return _resource(data, kind, rid, a, b, at, oid, iid, rmodel)
        if all(e[0] == RESOURCE_INSTANCE for e in entries) and (entries or (rmodel and rmodel.multiple)):
            # Some clients answer a Read of a multiple resource with its bare instances.
            rtype = _type_of(rmodel)
            return MultipleResource(rid, _instances(data, entries, oid, iid, rid, rtype), rtype)
        raise CodecError(f"TLV for {path}: expected one resource or its instances")
    riid = ids[3]
    if len(entries) != 1 or entries[0][0] not in (RESOURCE_INSTANCE, RESOURCE_VALUE):
        raise CodecError(f"TLV for {path}: expected one resource instance")
    kind, ident, a, b, at = entries[0]
    if ident != riid:
        raise CodecError(f"TLV for {path}: resource instance {ident} at offset {at} is not {riid}")
    rtype = _type_of(rmodel)
    return ResourceInstance(riid, _value(data, a, b, rtype, at, oid, iid, rid), rtype)


def _decode_object(
    data: bytes,
    entries: list[_Entry],
    oid: int,
    model: ObjectModel | None,
    resources: dict[int, ResourceModel],
) -> ObjectNode:
    if entries and entries[0][0] != OBJECT_INSTANCE:
        # Resources without the instance wrapper: acceptable for a single-instance object (Leshan does
        # the same); for a multiple-instance object we could not know which instance it is.
        if model is not None and model.multiple:
            raise CodecError(f"TLV for /{oid}: resources without an instance in a multiple-instance object")
        return ObjectNode(oid, {0: _instance(data, entries, oid, 0, resources)})
    instances: dict[int, ObjectInstanceNode] = {}
    for kind, ident, a, b, at in entries:
        if kind != OBJECT_INSTANCE:
            raise CodecError(f"TLV for /{oid}: {_KIND_NAMES[kind]} at offset {at} among object instances")
        if ident in instances:
            raise CodecError(f"TLV for /{oid}: object instance {ident} twice (offset {at})")
        if ident == RESERVED_INSTANCE_ID:
            raise CodecError(f"TLV for /{oid}: object instance id {ident} is reserved (offset {at})")
        instances[ident] = _instance(data, _scan(data, a, b), oid, ident, resources)
    return ObjectNode(oid, instances)


def _instance(
    data: bytes, entries: list[_Entry], oid: int, iid: int, resources: dict[int, ResourceModel]
) -> ObjectInstanceNode:
    result: dict[int, Resource] = {}
    for kind, rid, a, b, at in entries:
        if kind < MULTIPLE_RESOURCE:
            raise CodecError(f"TLV for /{oid}/{iid}: {_KIND_NAMES[kind]} at offset {at} among resources")
        if rid in result:
            raise CodecError(f"TLV for /{oid}/{iid}: resource {rid} twice (offset {at})")
        result[rid] = _resource(data, kind, rid, a, b, at, oid, iid, resources.get(rid))
    return ObjectInstanceNode(iid, result)


def _resource(
    data: bytes, kind: int, rid: int, a: int, b: int, at: int, oid: int, iid: int,
    rmodel: ResourceModel | None,
) -> Resource:
    rtype = _type_of(rmodel)
    if kind == RESOURCE_VALUE:
        return SingleResource(rid, _value(data, a, b, rtype, at, oid, iid, rid), rtype)
    return MultipleResource(rid, _instances(data, _scan(data, a, b), oid, iid, rid, rtype), rtype)


def _instances(
    data: bytes, entries: list[_Entry], oid: int, iid: int, rid: int, rtype: ResourceType
) -> dict[int, Value]:
    values: dict[int, Value] = {}
    for kind, riid, a, b, at in entries:
        if kind != RESOURCE_INSTANCE:
            raise CodecError(
                f"TLV for /{oid}/{iid}/{rid}: {_KIND_NAMES[kind]} at offset {at} inside a multiple resource"
            )
        if riid in values:
            raise CodecError(f"TLV for /{oid}/{iid}/{rid}: resource instance {riid} twice (offset {at})")
        values[riid] = _value(data, a, b, rtype, at, oid, iid, rid)
    return values


def _type_of(rmodel: ResourceModel | None) -> ResourceType:
    if rmodel is None or rmodel.type is _T.NONE:
        return _T.OPAQUE
    return rmodel.type


def _value(data: bytes, a: int, b: int, rtype: ResourceType, at: int, oid: int, iid: int, rid: int) -> Value:
    n = b - a
    if rtype is _T.INTEGER or rtype is _T.TIME:
        if n == 1 or n == 2 or n == 4 or n == 8:
            return int.from_bytes(data[a:b], "big", signed=True)
    elif rtype is _T.STRING or rtype is _T.CORELNK:
        try:
            return data[a:b].decode()
        except UnicodeDecodeError as e:
            raise CodecError(
                f"TLV for /{oid}/{iid}/{rid}: string at offset {a + e.start} is not UTF-8"
            ) from None
    elif rtype is _T.OPAQUE:
        return data[a:b]
    elif rtype is _T.FLOAT:
        if n == 4:
            return _FLOAT32.unpack_from(data, a)[0]  # type: ignore[no-any-return]
        if n == 8:
            return _FLOAT64.unpack_from(data, a)[0]  # type: ignore[no-any-return]
    elif rtype is _T.BOOLEAN:
        if n == 1 and data[a] < 2:
            return data[a] == 1
        raise CodecError(f"TLV for /{oid}/{iid}/{rid}: boolean at offset {at} is not one byte 0 or 1")
    elif rtype is _T.UNSIGNED_INTEGER:
        if n == 1 or n == 2 or n == 4 or n == 8:
            return int.from_bytes(data[a:b], "big")
    elif rtype is _T.OBJLNK and n == 4:
        oid_link, iid_link = _OBJLNK.unpack_from(data, a)
        return ObjLink(oid_link, iid_link)
    raise CodecError(f"TLV for /{oid}/{iid}/{rid}: {n} bytes at offset {at} cannot be a {rtype.value} value")


# -- encoding --------------------------------------------------------------------------------------------


def encode_tlv(node: Node, path: LwM2mPath) -> bytes:
    """``node`` (which lives at ``path``) as TLV.

    An object is a sequence of object-instance entries; an object instance is its resources without a
    wrapper (as a Read of ``/oid/iid`` returns them); a resource or resource instance is one entry.
    """
    try:
        return _encode_node(node, path)
    except (NodeError, PathError) as e:  # ids that do not fit, or a node filed under the wrong id
        raise CodecError(str(e)) from None


def _encode_node(node: Node, path: LwM2mPath) -> bytes:
    check_node_path(node, path)
    out = bytearray()
    if isinstance(node, ObjectNode):
        for iid in sorted(node.instances):
            instance = node.instances[iid]
            if instance.id != iid:
                raise CodecError(f"{path}: object instance {instance.id} filed under id {iid}")
            inner = bytearray()
            _encode_resources(inner, instance, path.child(iid))
            _entry(out, OBJECT_INSTANCE, iid, inner)
    elif isinstance(node, ObjectInstanceNode):
        _encode_resources(out, node, path)
    elif isinstance(node, ResourceInstance):
        _entry(out, RESOURCE_INSTANCE, node.id, _encode_value(node.value, node.type, path))
    else:
        _encode_resource(out, node, path)
    return bytes(out)


def _encode_resources(out: bytearray, instance: ObjectInstanceNode, path: LwM2mPath) -> None:
    for rid in sorted(instance.resources):
        resource = instance.resources[rid]
        if resource.id != rid:
            raise CodecError(f"{path}: resource {resource.id} filed under id {rid}")
        _encode_resource(out, resource, path.child(rid))


def _encode_resource(out: bytearray, resource: Resource, path: LwM2mPath) -> None:
    if isinstance(resource, SingleResource):
        _entry(out, RESOURCE_VALUE, resource.id, _encode_value(resource.value, resource.type, path))
        return
    inner = bytearray()
    for riid in sorted(resource.instances):
        value = resource.instances[riid]
        _entry(inner, RESOURCE_INSTANCE, riid, _encode_value(value, resource.type, path.child(riid)))
    _entry(out, MULTIPLE_RESOURCE, resource.id, inner)


def _entry(out: bytearray, kind: int, ident: int, value: bytes | bytearray) -> None:
    n = len(value)
    t = kind << 6
    if ident > 0xFF:
        t |= 0x20
    if n < 8:
        out.append(t | n)
    elif n < 0x100:
        out.append(t | 0x08)
    elif n < 0x10000:
        out.append(t | 0x10)
    elif n < 0x1000000:
        out.append(t | 0x18)
    else:
        raise CodecError(f"TLV value of {n} bytes exceeds the 24-bit length field")
    out += ident.to_bytes(2 if ident > 0xFF else 1, "big")
    if n >= 8:
        out += n.to_bytes(1 if n < 0x100 else 2 if n < 0x10000 else 3, "big")
    out += value


def _encode_value(value: Value, rtype: ResourceType, path: LwM2mPath) -> bytes:
    value = check_value(value, rtype, path)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        # Unsigned values too are written as the shortest *signed* integer (200 -> 00 C8) while they
        # fit 63 bits: a reader that treats the resource as signed (Wakaama has no unsigned type)
        # still gets the right number. Only 2**63 and above need the 8-byte unsigned form.
        return _int_bytes(value, signed=value < 2**63)
    if isinstance(value, float):
        single = _float32(value)
        return single if single is not None else _FLOAT64.pack(value)
    if isinstance(value, ObjLink):
        return _OBJLNK.pack(value.oid, value.iid)
    return value


def _int_bytes(value: int, *, signed: bool) -> bytes:
    for size in (1, 2, 4, 8):
        try:
            return value.to_bytes(size, "big", signed=signed)
        except OverflowError:
            continue
    raise CodecError(f"integer {value} does not fit in 8 bytes")


def _float32(value: float) -> bytes | None:
    try:
        packed = _FLOAT32.pack(value)
    except OverflowError:
        return None
    if _FLOAT32.unpack(packed)[0] == value or value != value:
        return packed
    return None
