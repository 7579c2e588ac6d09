"""Values and the node tree: ObjLink, type inference, node <-> flat path map conversion and its errors."""

from __future__ import annotations

import pytest

from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import (
    NULL_OBJLINK,
    MultipleResource,
    NodeError,
    ObjectInstanceNode,
    ObjectNode,
    ObjLink,
    ResourceInstance,
    SingleResource,
    Value,
    build_node,
    infer_type,
    iter_leaves,
    node_from_values,
    node_to_values,
    resource_model,
)
from gateway.lwm2m.path import LwM2mPath

T = ResourceType
P = LwM2mPath
DEVICE = ObjectModel(3, "Device", resources={
    7: ResourceModel(7, "Voltage", T.INTEGER, Operations.R, multiple=True),
    13: ResourceModel(13, "Time", T.TIME, Operations.RW),
})
model_of = {3: DEVICE}.get

NODE = ObjectNode(3, {0: ObjectInstanceNode(0, {
    0: SingleResource(0, "OMA", T.STRING),
    7: MultipleResource(7, {1: 5000, 0: 3800}, T.INTEGER),
    13: SingleResource(13, 1700000000, T.TIME),
})})
FLAT: dict[LwM2mPath, Value] = {P(3, 0, 0): "OMA", P(3, 0, 7, 0): 3800, P(3, 0, 7, 1): 5000, P(3, 0, 13): 1700000000}


def test_objlink() -> None:
    link = ObjLink.parse("3:0")
    assert link == ObjLink(3, 0) and str(link) == "3:0" and not link.is_null
    assert ObjLink.parse("65535:65535") == NULL_OBJLINK and NULL_OBJLINK.is_null
    assert hash(ObjLink(1, 2)) == hash(ObjLink(1, 2)) and ObjLink(1, 2) < ObjLink(2, 0)
    # the last one has a fullwidth digit
    for bad in ["3", "3:", ":0", "3:0:1", "-1:0", "3:65536", " 3:0", "3:0 ", "a:b", "\uff13:0"]:
        with pytest.raises(ValueError):
            ObjLink.parse(bad)
    with pytest.raises(ValueError):
        ObjLink(70000, 0)
    with pytest.raises(ValueError):
        ObjLink(True, 0)


def test_infer_type() -> None:
    assert [infer_type(v) for v in ("x", 1, 1.0, True, b"x", ObjLink(1, 1))] == [
        T.STRING, T.INTEGER, T.FLOAT, T.BOOLEAN, T.OPAQUE, T.OBJLNK]
    with pytest.raises(NodeError):
        infer_type(None)  # type: ignore[arg-type]
    with pytest.raises(NodeError):
        infer_type(bytearray(b"x"))  # type: ignore[arg-type]


def test_node_to_values_in_id_order() -> None:
    assert node_to_values(NODE, P(3)) == FLAT
    assert list(node_to_values(NODE, P(3))) == sorted(FLAT)
    assert list(iter_leaves(NODE.instances[0].resources[7], P(3, 0, 7))) == [
        (P(3, 0, 7, 0), 3800, T.INTEGER), (P(3, 0, 7, 1), 5000, T.INTEGER)]


def test_node_from_values_at_every_level() -> None:
    assert node_from_values(P(3), FLAT, model_of) == NODE
    assert node_from_values(P(3, 0), FLAT, model_of) == NODE.instances[0]
    sub = {p: v for p, v in FLAT.items() if p.startswith(P(3, 0, 7))}
    assert node_from_values(P(3, 0, 7), sub, model_of) == NODE.instances[0].resources[7]
    assert node_from_values(P(3, 0, 7, 1), {P(3, 0, 7, 1): 5000}, model_of) == ResourceInstance(1, 5000, T.INTEGER)
    # without a model the types come from the values
    assert node_from_values(P(3, 0, 13), {P(3, 0, 13): 1}) == SingleResource(13, 1, T.INTEGER)
    # an empty multiple resource exists only thanks to the model
    assert node_from_values(P(3, 0, 7), {}, model_of) == MultipleResource(7, {}, T.INTEGER)


@pytest.mark.parametrize(
    ("path", "leaves", "complaint"),
    [
        (P(), [], "root"),
        (P(3, 0), [(P(3, 1, 0), 1, T.INTEGER)], "outside"),
        (P(3), [(P(3, 0), 1, T.INTEGER)], "resources or resource instances"),
        (P(3), [(P(3, 0, 1), 1, T.INTEGER), (P(3, 0, 1), 2, T.INTEGER)], "more than one value"),
        (P(3), [(P(3, 0, 1), 1, T.INTEGER), (P(3, 0, 1, 0), 2, T.INTEGER)], "both"),
        (P(3), [(P(3, 0, 1, 0), 1, T.INTEGER), (P(3, 0, 1), 2, T.INTEGER)], "both"),
        (P(3), [(P(3, 0, 1, 0), 1, T.INTEGER), (P(3, 0, 1, 0), 2, T.INTEGER)], "more than one value"),
        (P(3), [(P(3, 0, 1, 0), 1, T.INTEGER), (P(3, 0, 1, 1), "x", T.STRING)], "different types"),
        (P(3, 0, 9), [], "no value"),
        (P(3, 0, 7, 0), [], "no value"),
    ],
)
def test_build_node_rejects(path: LwM2mPath, leaves: list[tuple[LwM2mPath, object, ResourceType]],
                            complaint: str) -> None:
    with pytest.raises(NodeError, match=complaint):
        build_node(path, leaves, model_of)  # type: ignore[arg-type]


def test_untyped_numbers_in_one_resource_become_floats() -> None:
    node = build_node(P(3, 0, 1), [(P(3, 0, 1, 0), 1, T.INTEGER), (P(3, 0, 1, 1), 2.5, T.FLOAT),
                                   (P(3, 0, 1, 2), 3, T.INTEGER)])
    assert node == MultipleResource(1, {0: 1.0, 1: 2.5, 2: 3.0}, T.FLOAT)
    assert isinstance(node, MultipleResource)
    assert all(type(v) is float for v in node.instances.values())


def test_node_path_must_match() -> None:
    with pytest.raises(NodeError):
        node_to_values(NODE, P(4))
    with pytest.raises(NodeError):
        node_to_values(NODE.instances[0], P(3))
    with pytest.raises(NodeError):
        list(iter_leaves(SingleResource(1, 1, T.INTEGER), P(3, 0, 2)))


def test_resource_model_lookup() -> None:
    assert resource_model(model_of, P(3, 0, 7, 1)) is DEVICE.resources[7]
    assert resource_model(model_of, P(3, 0, 99)) is None
    assert resource_model(model_of, P(4, 0, 7)) is None
    assert resource_model(model_of, P(3, 0)) is None
