"""LwM2M CBOR (11544): the section 5 vectors, key forms (int / int array, definite / indefinite), depth
and id limits, typing, and the encoder's folded keys."""

from __future__ import annotations

import cbor2
import pytest

from gateway.lwm2m.codec import registry
from gateway.lwm2m.codec.entries import to_values
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.codec.lwm2m_cbor import decode_lwm2m_cbor, encode_lwm2m_cbor, encode_lwm2m_cbor_values
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import MultipleResource, ObjectInstanceNode, ObjLink, SingleResource, Value
from gateway.lwm2m.path import LwM2mPath

T = ResourceType
P = LwM2mPath
F = ContentFormat.LWM2M_CBOR

MODELS = {
    3: ObjectModel(3, "Device", resources={
        9: ResourceModel(9, "Battery", T.INTEGER, Operations.R),
        13: ResourceModel(13, "Time", T.TIME, Operations.RW),
        7: ResourceModel(7, "Voltage", T.INTEGER, Operations.R, multiple=True),
    }),
    66: ObjectModel(66, "Links", multiple=True, resources={2: ResourceModel(2, "Link", T.OBJLNK, Operations.RW)}),
}
model_of = MODELS.get


@pytest.mark.parametrize(
    "payload_hex",
    ["A1830D181A01182A", "A10DA1181AA101182A"],
    ids=["array key", "nested maps"],
)
def test_single_value_vectors(payload_hex: str) -> None:
    assert to_values(decode_lwm2m_cbor(bytes.fromhex(payload_hex))) == {P(13, 26, 1): 42}


def test_indefinite_vector() -> None:
    payload = bytes.fromhex("BF820D181ABF01182A0215FFFF")
    assert to_values(decode_lwm2m_cbor(payload)) == {P(13, 26, 1): 42, P(13, 26, 2): 21}
    node = registry.decode(F, payload, P(13, 26))
    assert node == ObjectInstanceNode(26, {1: SingleResource(1, 42, T.INTEGER), 2: SingleResource(2, 21, T.INTEGER)})


def test_encoder_folds_single_entry_chains_into_array_keys() -> None:
    assert encode_lwm2m_cbor(SingleResource(1, 42, T.INTEGER), P(13, 26, 1)) == bytes.fromhex("A1830D181A01182A")
    node = ObjectInstanceNode(26, {1: SingleResource(1, 42, T.INTEGER), 2: SingleResource(2, 21, T.INTEGER)})
    payload = encode_lwm2m_cbor(node, P(13, 26))
    assert cbor2.loads(payload) == {(13, 26): {1: 42, 2: 21}}
    assert payload == bytes.fromhex("A1820D181AA201182A0215")


def test_composite_with_several_objects() -> None:
    values: dict[LwM2mPath, Value] = {
        P(3, 0, 9): 95, P(3, 0, 7, 0): 3800, P(3, 0, 7, 1): 5000, P(66, 1, 2): ObjLink(3, 0),
        P(5, 0, 3): 1.5, P(5, 0, 1): "coap://fw", P(5, 0, 0): b"\x00", P(5, 0, 9): True,
    }
    payload = registry.encode(F, values, None, model_of)
    assert cbor2.loads(payload) == {
        (3, 0): {9: 95, 7: {0: 3800, 1: 5000}}, (66, 1, 2): "3:0",
        (5, 0): {3: 1.5, 1: "coap://fw", 0: b"\x00", 9: True}}
    assert registry.decode(F, payload, None, model_of) == values


def test_typing() -> None:
    payload = cbor2.dumps({3: {0: {9: 95.0, 13: 1700000000, 7: {0: 1}}}, 66: {0: {2: "1:2"}}})
    assert registry.decode(F, payload, None, model_of) == {
        P(3, 0, 9): 95, P(3, 0, 13): 1700000000, P(3, 0, 7, 0): 1, P(66, 0, 2): ObjLink(1, 2)}
    node = registry.decode(F, cbor2.dumps({(3, 0, 7): {0: 1}}), P(3, 0, 7), model_of)
    assert node == MultipleResource(7, {0: 1}, T.INTEGER)
    with pytest.raises(CodecError, match="outside the requested path"):
        registry.decode(F, payload, P(3, 0, 7), model_of)
    # half-precision float, epoch-time tag for a TIME resource
    assert registry.decode(F, bytes.fromhex("A1830300 09F93E00".replace(" ", "")), None) == {P(3, 0, 9): 1.5}
    tagged = cbor2.dumps({(3, 0, 13): cbor2.CBORTag(1, 1700000000)})
    assert registry.decode(F, tagged, None, model_of) == {P(3, 0, 13): 1700000000}


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({(3, 0, 9, 0, 1): 1}, "deeper"),
        ({3: {0: {9: {0: {1: 2}}}}}, "deeper"),
        ({(3, 0, 9, 0): {1: 2}}, "deeper"),
        ({3: {0: 5}}, "above resource level"),
        ({3: 5}, "above resource level"),
        ({65536: {0: {0: 1}}}, "not in 0..65535"),
        ({3: {65535: {0: 1}}}, "reserved"),
        ({3: {-1: {0: 1}}}, "not in 0..65535"),
        ({"3": {0: {0: 1}}}, "not an id"),
        ({(): {0: {0: 1}}}, "not an id"),
        ({(3, "0"): {0: 1}}, "not in"),
        ({(3, True): {0: 1}}, "not in"),
        ({3.0: {0: {0: 1}}}, "not an id"),
        ({(3, 0, 9): 1, 3: {0: {9: 2}}}, "more than one value"),
        ({(3, 0, 7): 1, (3, 0, 7, 0): 2}, "both a value and instances"),
        ({(3, 0, 9): "x"}, "text for a Integer"),
        ({(3, 0, 9): 1.5}, "not an integer"),
        ({(3, 0, 9): None}, "NoneType is not an LwM2M value"),
        ({(3, 0, 9): [1]}, "list"),
        ({(66, 0, 2): "12"}, "object link"),
        ({(3, 0, 9): True}, "boolean for a Integer"),
        ({(3, 0, 9): b"\x01"}, "byte string for a Integer"),
        ([1, 2], "must be a map"),
    ],
)
def test_rejects(document: object, complaint: str) -> None:
    with pytest.raises(CodecError, match=complaint):
        decode_lwm2m_cbor(cbor2.dumps(document), model_of)


def test_rejects_malformed_cbor() -> None:
    for payload in [b"", b"\xa1", b"\xbf\x82\x0d\x18\x1a\xbf\x01\x18\x2a", b"\xa1\x01\x02\x03", b"\xa1" * 5000]:
        with pytest.raises(CodecError):
            decode_lwm2m_cbor(payload)


def test_encode_rejects_conflicts_and_bad_values() -> None:
    with pytest.raises(CodecError):
        encode_lwm2m_cbor_values([(P(3, 0, 7), 1, T.INTEGER, None), (P(3, 0, 7, 0), 2, T.INTEGER, None)])
    with pytest.raises(CodecError):
        encode_lwm2m_cbor_values([(P(3, 0, 7, 0), 1, T.INTEGER, None), (P(3, 0, 7), 2, T.INTEGER, None)])
    with pytest.raises(CodecError):
        encode_lwm2m_cbor_values([(P(3, 0), 1, T.INTEGER, None)])
    with pytest.raises(CodecError):
        encode_lwm2m_cbor(SingleResource(9, "1", T.INTEGER), P(3, 0, 9))
    with pytest.raises(CodecError, match="timestamped"):
        registry.encode_timestamped(F, [])
