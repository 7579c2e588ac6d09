"""Property tests: decode(encode(x)) == x for every format, for random node trees, path -> value maps and
timestamped values of every resource type (typed by a model), and untyped SenML."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.lwm2m.codec import ContentFormat, registry
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import (
    MultipleResource,
    Node,
    ObjectInstanceNode,
    ObjectNode,
    ObjLink,
    Resource,
    ResourceInstance,
    SingleResource,
    TimestampedValue,
    Value,
    iter_leaves,
)
from gateway.lwm2m.path import LwM2mPath

T = ResourceType
F = ContentFormat
P = LwM2mPath

# One object per instance multiplicity; resource 0-8 single, 10-18 multiple, one per type (+ CORELNK).
TYPES = [T.STRING, T.INTEGER, T.UNSIGNED_INTEGER, T.FLOAT, T.BOOLEAN, T.OPAQUE, T.TIME, T.OBJLNK, T.CORELNK]


def _model(oid: int, multiple: bool) -> ObjectModel:
    resources = {}
    for i, rtype in enumerate(TYPES):
        resources[i] = ResourceModel(i, f"single {rtype.value}", rtype, Operations.RW)
        resources[10 + i] = ResourceModel(10 + i, f"multiple {rtype.value}", rtype, Operations.RW, multiple=True)
    return ObjectModel(oid, f"Test {oid}", multiple=multiple, resources=resources)


MODELS = {90: _model(90, True), 91: _model(91, False), 32769: _model(32769, True)}
model_of = MODELS.get
OBJECT_IDS = st.sampled_from(sorted(MODELS))

VALUES: dict[ResourceType, st.SearchStrategy[Value]] = {
    T.STRING: st.text(st.characters(blacklist_categories=["Cs"]), max_size=20),
    T.CORELNK: st.text(st.characters(blacklist_categories=["Cs"]), max_size=20),
    T.INTEGER: st.integers(-(2**63), 2**63 - 1),
    T.UNSIGNED_INTEGER: st.integers(0, 2**64 - 1),
    T.TIME: st.integers(-(2**63), 2**63 - 1),
    T.FLOAT: st.floats(allow_nan=False, allow_infinity=False),
    T.BOOLEAN: st.booleans(),
    T.OPAQUE: st.binary(max_size=40),
    T.OBJLNK: st.builds(ObjLink, st.integers(0, 65535), st.integers(0, 65535)),
}
IDS = st.integers(0, 65535)
INSTANCE_IDS = st.integers(0, 65534)


@st.composite
def resources(draw: st.DrawFn, rid: int | None = None, *, text: bool = True) -> Resource:
    if rid is None:
        rid = draw(st.sampled_from(sorted(MODELS[90].resources)))
    rtype = TYPES[rid % 10]
    if rtype is T.OPAQUE and not text:
        rtype = T.STRING
    if rid >= 10:
        instances = draw(st.dictionaries(IDS, VALUES[rtype], max_size=4))
        return MultipleResource(rid, instances, rtype)
    return SingleResource(rid, draw(VALUES[rtype]), rtype)


@st.composite
def instances(draw: st.DrawFn, iid: int) -> ObjectInstanceNode:
    rids = draw(st.sets(st.sampled_from(sorted(MODELS[90].resources)), max_size=6))
    return ObjectInstanceNode(iid, {rid: draw(resources(rid)) for rid in sorted(rids)})


@st.composite
def nodes_with_paths(draw: st.DrawFn) -> tuple[Node, LwM2mPath]:
    oid = draw(OBJECT_IDS)
    level = draw(st.integers(1, 4))
    if level == 1:
        iids = draw(st.sets(INSTANCE_IDS, max_size=3)) if MODELS[oid].multiple else draw(st.sets(st.just(0)))
        return ObjectNode(oid, {iid: draw(instances(iid)) for iid in sorted(iids)}), P(oid)
    iid = draw(INSTANCE_IDS)
    if level == 2:
        return draw(instances(iid)), P(oid, iid)
    resource = draw(resources())
    if level == 3:
        return resource, P(oid, iid, resource.id)
    rid = draw(st.sampled_from(range(10, 19)))
    rtype = TYPES[rid % 10]
    riid = draw(IDS)
    return ResourceInstance(riid, draw(VALUES[rtype]), rtype), P(oid, iid, rid, riid)


def typed_leaves(node: Node, path: LwM2mPath) -> list[tuple[LwM2mPath, type, Value, ResourceType]]:
    """Leaves with their exact Python types, so that 1 == 1.0 == True cannot hide a change."""
    return [(p, type(v), _same_nan(v), t) for p, v, t in iter_leaves(node, path)]


def _same_nan(v: Value) -> Value:
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def has_empty_container(node: Node) -> bool:
    if isinstance(node, ObjectNode):
        return any(not i.resources or has_empty_container(i) for i in node.instances.values())
    if isinstance(node, ObjectInstanceNode):
        return any(has_empty_container(r) for r in node.resources.values())
    return isinstance(node, MultipleResource) and not node.instances


NODE_FORMATS = [F.TLV, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_JSON, F.LWM2M_CBOR]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("fmt", NODE_FORMATS)
@FAST
@given(case=nodes_with_paths())
def test_node_round_trip(fmt: F, case: tuple[Node, LwM2mPath]) -> None:
    node, path = case
    payload = registry.encode(fmt, node, path, model_of)
    decoded = registry.decode(fmt, payload, path, model_of)
    assert typed_leaves(decoded, path) == typed_leaves(node, path)
    if fmt is F.TLV or not has_empty_container(node):
        # TLV keeps empty instances and multiple resources; the others keep everything else
        assert decoded == node


@FAST
@given(case=nodes_with_paths())
def test_tlv_is_canonical(case: tuple[Node, LwM2mPath]) -> None:
    node, path = case
    payload = registry.encode(F.TLV, node, path, model_of)
    assert registry.encode(F.TLV, registry.decode(F.TLV, payload, path, model_of), path, model_of) == payload


@pytest.mark.parametrize("fmt", [F.TEXT, F.CBOR, F.OPAQUE])
@FAST
@given(data=st.data())
def test_single_value_round_trip(fmt: F, data: st.DataObject) -> None:
    oid = data.draw(OBJECT_IDS)
    rid = 5 if fmt is F.OPAQUE else data.draw(st.sampled_from([r for r in range(9) if TYPES[r] is not T.OPAQUE]))
    rtype = TYPES[rid]
    node = SingleResource(rid, data.draw(VALUES[rtype]), rtype)
    path = P(oid, data.draw(INSTANCE_IDS), rid)
    decoded = registry.decode(fmt, registry.encode(fmt, node, path, model_of), path, model_of)
    assert typed_leaves(decoded, path) == typed_leaves(node, path)


@st.composite
def value_maps(draw: st.DrawFn) -> dict[LwM2mPath, Value]:
    values: dict[LwM2mPath, Value] = {}
    for _ in range(draw(st.integers(0, 6))):
        oid = draw(OBJECT_IDS)
        iid = draw(INSTANCE_IDS)
        rid = draw(st.sampled_from(sorted(MODELS[90].resources)))
        value = draw(VALUES[TYPES[rid % 10]])
        if rid >= 10:
            riid = draw(IDS)
            if P(oid, iid, rid) not in values:
                values[P(oid, iid, rid, riid)] = value
        elif not any(p.startswith(P(oid, iid, rid)) for p in values):
            values[P(oid, iid, rid)] = value
    return values


def typed_map(values: dict[LwM2mPath, Value]) -> list[tuple[LwM2mPath, type, Value]]:
    return sorted((p, type(v), v) for p, v in values.items())


@pytest.mark.parametrize("fmt", [F.SENML_JSON, F.SENML_CBOR, F.LWM2M_JSON, F.LWM2M_CBOR])
@FAST
@given(values=value_maps())
def test_composite_round_trip(fmt: F, values: dict[LwM2mPath, Value]) -> None:
    payload = registry.encode(fmt, values, None, model_of)
    assert typed_map(registry.decode(fmt, payload, None, model_of)) == typed_map(values)


@st.composite
def untyped_maps(draw: st.DrawFn) -> dict[LwM2mPath, Value]:
    kinds = [T.STRING, T.INTEGER, T.FLOAT, T.BOOLEAN, T.OPAQUE, T.OBJLNK]
    paths = draw(st.sets(st.builds(P, st.integers(100, 65535), INSTANCE_IDS, IDS), max_size=5))
    return {p: draw(VALUES[draw(st.sampled_from(kinds))]) for p in paths}


@pytest.mark.parametrize("fmt", [F.SENML_JSON, F.SENML_CBOR])
@FAST
@given(values=untyped_maps())
def test_untyped_senml_round_trip(fmt: F, values: dict[LwM2mPath, Value]) -> None:
    payload = registry.encode(fmt, values, None)
    assert typed_map(registry.decode(fmt, payload, None)) == typed_map(values)


@pytest.mark.parametrize("fmt", [F.SENML_JSON, F.SENML_CBOR, F.LWM2M_JSON])
@FAST
@given(data=st.data())
def test_timestamped_round_trip(fmt: F, data: st.DataObject) -> None:
    values = [
        TimestampedValue(path, value, ts)
        for path, value in data.draw(value_maps()).items()
        for ts in data.draw(st.lists(st.none() | st.floats(2**28, 2**33), min_size=1, max_size=2))
    ]
    payload = registry.encode_timestamped(fmt, values, model_of)
    decoded = registry.decode_timestamped(fmt, payload, None, model_of, now=0.0)
    assert [(v.path, type(v.value), v.value, v.ts) for v in decoded] == [
        (v.path, type(v.value), v.value, v.ts) for v in values]


@pytest.mark.parametrize("fmt", [F.SENML_JSON, F.SENML_CBOR])
@FAST
@given(paths=st.lists(st.builds(lambda ids: P(*ids), st.lists(IDS, max_size=4).filter(
    lambda ids: len(ids) < 2 or ids[1] != 65535)), max_size=5))
def test_composite_request_round_trip(fmt: F, paths: list[LwM2mPath]) -> None:
    assert registry.decode_paths(fmt, registry.encode_paths(fmt, paths)) == paths
