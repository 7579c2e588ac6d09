"""What SenML JSON (110) and SenML CBOR (112) share: resolving records into typed, timed values, and
building records from values. The two format modules only differ in how labels are spelled and how
the pack is parsed and serialised.

Resolution follows RFC 8428: the name of a record is the latest base name (``bn``) + its name
(``n``) and must be an LwM2M path; its time is the latest base time (``bt``) + its time (``t``),
absolute (Unix seconds) when >= 2**28 and otherwise relative to "now"; base values (``bv``) are added
to numeric values; a label ending in ``_`` that this code does not know makes the pack invalid.
Values: ``v`` numbers, ``vs`` strings, ``vb`` booleans, ``vd`` opaque data, ``vlo`` object links
(``"oid:iid"``). The resource model types them (:mod:`gateway.lwm2m.codec.values`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NamedTuple

from gateway.lwm2m.codec.entries import Entry
from gateway.lwm2m.codec.errors import CodecError
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
)
from gateway.lwm2m.path import LwM2mPath, PathError

_T = ResourceType


class Labels(NamedTuple):
    """How one SenML serialisation spells each label."""

    bn: object
    bt: object
    n: object
    t: object
    v: object
    vs: object
    vb: object
    vd: object
    vlo: object
    bv: object


JSON_LABELS: Final = Labels("bn", "bt", "n", "t", "v", "vs", "vb", "vd", "vlo", "bv")
CBOR_LABELS: Final = Labels(-2, -3, 0, 6, 2, 3, 4, 8, "vlo", -5)

#: Turns the raw ``vd`` of one serialisation into bytes (base64url text in JSON, a byte string in CBOR).
OpaqueReader = Callable[[object, str], bytes]


def resolve(
    records: object,
    labels: Labels,
    read_opaque: OpaqueReader,
    model_of: ModelLookup,
    now: float | None,
) -> list[Entry]:
    """Every record of a SenML pack as (path, typed value, type, time) in pack order."""
    if type(records) is not list:
        raise CodecError("a SenML pack must be an array of records")
    l_bn, l_bt, l_n, l_t, l_v, l_vs, l_vb, l_vd, l_vlo, l_bv = labels
    parse = LwM2mPath.parse
    base_name = ""
    base_time: float | None = None
    base_value: int | float | None = None
    entries: list[Entry] = []
    for index, record in enumerate(records):
        if type(record) is not dict:
            raise CodecError(f"SenML record {index} is not a map/object")
        found = 0
        bn = record.get(l_bn)
        if bn is not None:
            if type(bn) is not str:
                raise CodecError(f"SenML record {index}: base name must be text")
            base_name = bn
            found += 1
        bt = record.get(l_bt)
        if bt is not None:
            base_time = bt if type(bt) is float else time_seconds(bt, _Where(index, "base time"))
            found += 1
        bv = record.get(l_bv)
        if bv is not None:
            if type(bv) is not int and type(bv) is not float:
                raise CodecError(f"SenML record {index}: base value must be a number")
            base_value = bv
            found += 1
        n = record.get(l_n)
        if n is None:
            name = base_name
        elif type(n) is str:
            name = base_name + n
            found += 1
        else:
            raise CodecError(f"SenML record {index}: name must be text")
        try:
            path = parse(name)
        except PathError as e:
            raise CodecError(f"SenML record {index}: {e}") from None
        ids = path.ids
        if len(ids) < 3:
            raise CodecError(f"SenML record {index}: {path} is not a resource or resource instance")
        t = record.get(l_t)
        if t is not None:
            found += 1
            seconds = t if type(t) is float else time_seconds(t, _Where(index, "time"))
            ts: float | None = seconds if base_time is None else base_time + seconds
        else:
            ts = base_time
        if ts is not None:
            if now is None:
                now = time.time()
            ts = resolve_time(ts, now)

        declared = model_type(model_of, ids[0], ids[2])
        where = _Where(index, path)  # cheap; formatted only into an error message
        v = record.get(l_v)
        vs = record.get(l_vs)
        vb = record.get(l_vb)
        vd = record.get(l_vd)
        vlo = record.get(l_vlo)
        kinds = (v is not None) + (vs is not None) + (vb is not None) + (vd is not None) + (vlo is not None)
        if kinds != 1:
            raise CodecError(f"{where}: {'no value' if kinds == 0 else 'more than one value'}")
        value: Value
        rtype: ResourceType
        if v is not None:
            if base_value is not None:
                if type(v) is not int and type(v) is not float:
                    raise CodecError(f"{where}: value must be a number")
                try:
                    v = v + base_value
                except OverflowError:
                    raise CodecError(f"{where}: value + base value overflows") from None
                if type(v) is float and not math.isfinite(v):
                    raise CodecError(f"{where}: value + base value overflows")
            if type(v) is float and (declared is _T.FLOAT or declared is None):
                value, rtype = v, _T.FLOAT  # the common case, without the general conversion
            else:
                value, rtype = number_value(v, declared, where)
        elif vs is not None:
            if type(vs) is not str:
                raise CodecError(f"{where}: string value must be text")
            if declared is not None and declared is not _T.STRING and declared is not _T.CORELNK:
                raise CodecError(f"{where}: string value for a {declared.value} resource")
            value, rtype = vs, declared or _T.STRING
        elif vb is not None:
            if type(vb) is not bool:
                raise CodecError(f"{where}: boolean value must be true or false")
            if declared is not None and declared is not _T.BOOLEAN:
                raise CodecError(f"{where}: boolean value for a {declared.value} resource")
            value, rtype = vb, _T.BOOLEAN
        elif vd is not None:
            if declared is not None and declared is not _T.OPAQUE:
                raise CodecError(f"{where}: data value for a {declared.value} resource")
            value, rtype = read_opaque(vd, str(where)), _T.OPAQUE
        else:
            if declared is not None and declared is not _T.OBJLNK:
                raise CodecError(f"{where}: object link for a {declared.value} resource")
            value, rtype = objlink(vlo, where), _T.OBJLNK
        if found + kinds < len(record):
            _check_unknown_labels(record, labels, index)
        entries.append((path, value, rtype, ts))
    return entries


class _Where:
    """Names a record (and what in it) in error messages; formatted only when an error is raised."""

    __slots__ = ("index", "what")

    def __init__(self, index: int, what: object) -> None:
        self.index = index
        self.what = what

    def __str__(self) -> str:
        return f"SenML record {self.index} {self.what}"


def resolve_names(records: object, labels: Labels) -> list[LwM2mPath]:
    """The paths of a Read-/Observe-Composite request body (records with names and no values)."""
    if type(records) is not list:
        raise CodecError("a SenML pack must be an array of records")
    base_name = ""
    paths: list[LwM2mPath] = []
    value_labels = (labels.v, labels.vs, labels.vb, labels.vd, labels.vlo)
    for index, record in enumerate(records):
        if type(record) is not dict:
            raise CodecError(f"SenML record {index} is not a map/object")
        bn = record.get(labels.bn)
        if bn is not None:
            if type(bn) is not str:
                raise CodecError(f"SenML record {index}: base name must be text")
            base_name = bn
        n = record.get(labels.n, "")
        if type(n) is not str:
            raise CodecError(f"SenML record {index}: name must be text")
        if any(label in record for label in value_labels):
            raise CodecError(f"SenML record {index}: a composite request carries names only")
        _check_unknown_labels(record, labels, index)
        try:
            paths.append(LwM2mPath.parse(base_name + n))
        except PathError as e:
            raise CodecError(f"SenML record {index}: {e}") from None
    return paths


def _check_unknown_labels(record: dict[object, object], labels: Labels, index: int) -> None:
    for key in record:
        if type(key) is str and key.endswith("_") and key not in labels:
            raise CodecError(f"SenML record {index}: unknown must-understand label {key!r}")


# -- encoding ------------------------------------------------------------------------------------------------

#: Turns bytes into what one serialisation puts under ``vd``.
OpaqueWriter = Callable[[bytes], object]


def node_records(
    node: Node, path: LwM2mPath, labels: Labels, write_opaque: OpaqueWriter
) -> list[dict[object, object]]:
    """Records for a node, the LwM2M way: a leaf gets ``bn`` = its path and no name; otherwise ``bn`` is
    the path + ``/`` (on the first record only) and names are relative (``"0"``, ``"7/1"``)."""
    try:
        check_node_path(node, path)
    except NodeError as e:
        raise CodecError(str(e)) from None
    if isinstance(node, SingleResource | ResourceInstance):
        record: dict[object, object] = {labels.bn: str(path)}
        _put_value(record, node.value, node.type, path, labels, write_opaque)
        return [record]
    base = str(path) + "/"
    cut = len(base)
    records: list[dict[object, object]] = []
    try:
        for leaf, value, rtype in iter_leaves(node, path):
            record = {labels.bn: base, labels.n: str(leaf)[cut:]} if not records else {labels.n: str(leaf)[cut:]}
            _put_value(record, value, rtype, leaf, labels, write_opaque)
            records.append(record)
    except NodeError as e:
        raise CodecError(str(e)) from None
    return records


def value_records(
    values: Iterable[Entry],
    labels: Labels,
    write_opaque: OpaqueWriter,
) -> list[dict[object, object]]:
    """Records with full names (composite operations, Send), with ``t`` when a time is given."""
    records: list[dict[object, object]] = []
    for path, value, rtype, ts in values:
        if path.depth < 3:
            raise CodecError(f"{path}: SenML values belong to resources or resource instances")
        record: dict[object, object] = {labels.n: str(path)}
        _put_value(record, value, rtype, path, labels, write_opaque)
        if ts is not None:
            record[labels.t] = ts
        records.append(record)
    return records


def name_records(paths: Sequence[LwM2mPath], labels: Labels) -> list[dict[object, object]]:
    """A Read-/Observe-Composite request body: one ``{n: path}`` per path."""
    return [{labels.n: str(p)} for p in paths]


def _put_value(
    record: dict[object, object],
    value: Value,
    rtype: ResourceType,
    where: LwM2mPath,
    labels: Labels,
    write_opaque: OpaqueWriter,
) -> None:
    value = check_value(value, rtype, where)
    if rtype is _T.STRING or rtype is _T.CORELNK:
        record[labels.vs] = value
    elif rtype is _T.BOOLEAN:
        record[labels.vb] = value
    elif rtype is _T.OPAQUE:
        assert isinstance(value, bytes)
        record[labels.vd] = write_opaque(value)
    elif rtype is _T.OBJLNK:
        assert isinstance(value, ObjLink)
        record[labels.vlo] = f"{value.oid}:{value.iid}"
    else:
        record[labels.v] = value
