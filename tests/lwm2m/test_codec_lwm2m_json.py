"""LwM2M JSON (11543, LwM2M 1.0): the Device example, names relative to bn or the request path,
v/sv/bv/ov, opaque as base64, times, and malformed documents."""

from __future__ import annotations

import json

import pytest

from gateway.lwm2m.codec import registry
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.codec.lwm2m_json import decode_lwm2m_json, encode_lwm2m_json
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import MultipleResource, ObjectInstanceNode, ObjLink, SingleResource, TimestampedValue
from gateway.lwm2m.path import LwM2mPath

T = ResourceType
P = LwM2mPath
F = ContentFormat.LWM2M_JSON

MODELS = {
    0: ObjectModel(0, "Security", multiple=True, resources={3: ResourceModel(3, "Key", T.OPAQUE, Operations.RW)}),
    3: ObjectModel(3, "Device", resources={
        0: ResourceModel(0, "Manufacturer", T.STRING, Operations.R),
        7: ResourceModel(7, "Voltage", T.INTEGER, Operations.R, multiple=True),
        9: ResourceModel(9, "Battery", T.INTEGER, Operations.R),
        13: ResourceModel(13, "Time", T.TIME, Operations.RW),
    }),
    66: ObjectModel(66, "Links", multiple=True, resources={2: ResourceModel(2, "Link", T.OBJLNK, Operations.RW)}),
    1: ObjectModel(1, "Server", multiple=True, resources={6: ResourceModel(6, "Store", T.BOOLEAN, Operations.RW)}),
}
model_of = MODELS.get

DEVICE = (b'{"bn":"/3/0/","e":[{"n":"0","sv":"Open Mobile Alliance"},{"n":"7/0","v":3800},'
          b'{"n":"7/1","v":5000},{"n":"9","v":100},{"n":"13","v":1367491215}]}')
DEVICE_NODE = ObjectInstanceNode(0, {
    0: SingleResource(0, "Open Mobile Alliance", T.STRING),
    7: MultipleResource(7, {0: 3800, 1: 5000}, T.INTEGER),
    9: SingleResource(9, 100, T.INTEGER),
    13: SingleResource(13, 1367491215, T.TIME),
})


def test_device_both_ways() -> None:
    assert registry.decode(F, DEVICE, P(3, 0), model_of) == DEVICE_NODE
    assert encode_lwm2m_json(DEVICE_NODE, P(3, 0)) == DEVICE


def test_legacy_number_is_the_same_format() -> None:
    assert registry.decode(ContentFormat.JSON_OLD, DEVICE, P(3, 0), model_of) == DEVICE_NODE
    assert registry.decode(1543, DEVICE, P(3, 0), model_of) == DEVICE_NODE


def test_single_resource() -> None:
    node = SingleResource(9, 100, T.INTEGER)
    payload = encode_lwm2m_json(node, P(3, 0, 9))
    assert payload == b'{"bn":"/3/0/9","e":[{"v":100}]}'
    assert registry.decode(F, payload, P(3, 0, 9), model_of) == node
    # other spellings clients use
    for other, path in [
        (b'{"e":[{"n":"","v":100}]}', P(3, 0, 9)),
        (b'{"e":[{"v":100}]}', P(3, 0, 9)),
        (b'{"bn":"/3/0/9/","e":[{"v":100}]}', P(3, 0, 9)),
        (b'{"e":[{"n":"/3/0/9","v":100}]}', P(3, 0, 9)),
        (b'{"bn":"/","e":[{"n":"3/0/9","v":100}]}', P(3, 0, 9)),
        (b'{"e":[{"n":"9","v":100}]}', P(3, 0)),
    ]:
        decoded = registry.decode(F, other, path, model_of)
        assert decoded == (node if path.is_resource else ObjectInstanceNode(0, {9: node}))


def test_value_kinds() -> None:
    payload = json.dumps({"e": [
        {"n": "/0/0/3", "sv": "q83v"}, {"n": "/66/0/2", "ov": "3:0"}, {"n": "/1/0/6", "bv": False},
        {"n": "/99/0/0", "sv": "text"}, {"n": "/99/0/1", "v": 1.25},
    ]}).encode()
    assert registry.decode(F, payload, None, model_of) == {
        P(0, 0, 3): b"\xab\xcd\xef", P(66, 0, 2): ObjLink(3, 0), P(1, 0, 6): False,
        P(99, 0, 0): "text", P(99, 0, 1): 1.25}
    back = registry.encode(F, registry.decode(F, payload, None, model_of), None, model_of)
    assert registry.decode(F, back, None, model_of) == registry.decode(F, payload, None, model_of)


def test_times() -> None:
    payload = b'{"bn":"/3/0/","bt":1700000000,"e":[{"n":"9","v":90,"t":-60},{"n":"9","v":95}]}'
    assert registry.decode_timestamped(F, payload, P(3, 0), model_of) == [
        TimestampedValue(P(3, 0, 9), 90, 1_699_999_940.0), TimestampedValue(P(3, 0, 9), 95, 1_700_000_000.0)]
    assert registry.decode(F, payload, P(3, 0, 9), model_of) == SingleResource(9, 95, T.INTEGER)
    relative = b'{"e":[{"n":"/3/0/9","v":90,"t":-60}]}'
    assert registry.decode_timestamped(F, relative, None, now=1000.0)[0].ts == 940.0


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ([], "must be an object"),
        ({"bn": 3, "e": []}, "'bn' must be text"),
        ({"e": {}}, "'e' must be an array"),
        ({"bn": "/3/0/"}, "'e' must be an array"),
        ({"e": [5]}, "is not an object"),
        ({"e": [{"n": 9, "v": 1}]}, "'n' must be text"),
        ({"e": [{"n": "/3/0/9"}]}, "no value"),
        ({"e": [{"n": "/3/0/9", "v": 1, "sv": "1"}]}, "more than one value"),
        ({"e": [{"n": "/3/0", "v": 1}]}, "not a resource"),
        ({"e": [{"n": "/3/0/9", "sv": "1"}]}, "string value for a Integer"),
        ({"e": [{"n": "/3/0/9", "bv": 1}]}, "true or false"),
        ({"e": [{"n": "/3/0/9", "bv": True}]}, "boolean value for a Integer"),
        ({"e": [{"n": "/3/0/9", "ov": "1:1"}]}, "object link for a Integer"),
        ({"e": [{"n": "/0/0/3", "sv": "not base64!"}]}, "not base64"),
        ({"e": [{"n": "/0/0/3", "sv": 5}]}, "'sv' must be text"),
        ({"bt": "x", "e": []}, "time must be a number"),
        ({"e": [{"n": "/3/0/9", "v": 1, "t": "-5"}]}, "time must be a number"),
    ],
)
def test_rejects(document: object, complaint: str) -> None:
    with pytest.raises(CodecError, match=complaint):
        decode_lwm2m_json(json.dumps(document).encode(), None, model_of)


def test_relative_names_without_bn_and_without_path_are_rejected() -> None:
    with pytest.raises(CodecError, match="must start with '/'"):
        decode_lwm2m_json(b'{"e":[{"n":"9","v":1}]}', None)
