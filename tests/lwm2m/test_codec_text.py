"""Plain text (0), opaque (42) and plain CBOR (60): one value, read as the resource model says."""

from __future__ import annotations

import pytest

from gateway.lwm2m.codec import registry
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.codec.opaque import decode_opaque, encode_opaque
from gateway.lwm2m.codec.text import decode_text, encode_text
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import MultipleResource, ObjLink, ResourceInstance, SingleResource
from gateway.lwm2m.path import LwM2mPath

T = ResourceType
P = LwM2mPath
TYPES = {0: T.STRING, 1: T.INTEGER, 2: T.UNSIGNED_INTEGER, 3: T.FLOAT, 4: T.BOOLEAN, 5: T.OPAQUE, 6: T.TIME,
         7: T.OBJLNK, 8: T.CORELNK, 9: T.NONE, 11: T.INTEGER}
MODEL = ObjectModel(90, "All types", multiple=True, resources={
    rid: ResourceModel(rid, rtype.value, rtype, Operations.RW, multiple=rid > 10) for rid, rtype in TYPES.items()})
model_of = {90: MODEL}.get


@pytest.mark.parametrize(
    ("rid", "text", "value"),
    [
        (0, "Open Mobile Alliance", "Open Mobile Alliance"), (0, "", ""), (0, "é ü", "é ü"),
        (1, "95", 95), (1, "-9223372036854775808", -(2**63)), (1, "9223372036854775807", 2**63 - 1), (1, "0", 0),
        (2, "18446744073709551615", 2**64 - 1),
        (3, "23.5", 23.5), (3, "-0.001", -0.001), (3, "1e+20", 1e20), (3, "2.5e-07", 2.5e-07), (3, "20", 20.0),
        (4, "1", True), (4, "0", False),
        (6, "1367491215", 1367491215),
        (7, "3:0", ObjLink(3, 0)), (7, "65535:65535", ObjLink(65535, 65535)),
        (8, "</3/0>;pmin=10", "</3/0>;pmin=10"),
    ],
)
def test_text_values(rid: int, text: str, value: object) -> None:
    node = decode_text(text.encode(), P(90, 0, rid), model_of)
    assert node.value == value and type(node.value) is type(value) and node.type is TYPES[rid]
    if rid != 3 or text == repr(value):
        assert encode_text(node, P(90, 0, rid)) == text.encode()
    assert decode_text(encode_text(node, P(90, 0, rid)), P(90, 0, rid), model_of) == node


@pytest.mark.parametrize(
    ("rid", "text", "complaint"),
    [
        (1, "", "not a decimal integer"), (1, "9.5", "not a decimal integer"), (1, " 95", "not a decimal integer"),
        (1, "95\n", "not a decimal integer"), (1, "+95", "not a decimal integer"), (1, "1_000", "not a decimal"),
        (1, "9223372036854775808", "signed 64-bit"), (1, "٣", "not a decimal integer"),
        (2, "-1", "unsigned"), (2, "18446744073709551616", "unsigned 64-bit"),
        (3, "nan", "not a decimal number"), (3, "inf", "not a decimal number"), (3, "1e999", "out of the float"),
        (3, "1,5", "not a decimal number"), (3, "", "not a decimal number"), (3, "0x10", "not a decimal"),
        (4, "true", "not a boolean"), (4, "2", "not a boolean"), (4, "", "not a boolean"),
        (5, "q83v", "cannot be carried as plain text"),
        (6, "2024-01-01T00:00:00Z", "not a decimal integer"),
        (7, "3", "invalid object link"), (7, "3:", "invalid object link"), (7, "-1:0", "invalid object link"),
        (7, "70000:0", "invalid object link"),
    ],
)
def test_text_rejects(rid: int, text: str, complaint: str) -> None:
    with pytest.raises(CodecError, match=complaint):
        decode_text(text.encode(), P(90, 0, rid), model_of)


def test_text_without_a_model_is_a_string() -> None:
    assert decode_text(b"95", P(3303, 0, 5700)) == SingleResource(5700, "95", T.STRING)


def test_text_resource_instance_and_bad_paths() -> None:
    assert decode_text(b"7", P(90, 0, 11, 3), model_of) == ResourceInstance(3, 7, T.INTEGER)
    assert registry.encode(ContentFormat.TEXT, ResourceInstance(3, 7, T.INTEGER), P(90, 0, 11, 3)) == b"7"
    for fmt in (ContentFormat.TEXT, ContentFormat.CBOR, ContentFormat.OPAQUE):
        with pytest.raises(CodecError, match="cannot carry the multiple resource /90/0/11"):
            registry.decode(fmt, b"7", P(90, 0, 11), model_of)
    for path in (P(90, 0), P(90), P()):
        with pytest.raises(CodecError, match="one resource value"):
            decode_text(b"7", path, model_of)
    with pytest.raises(CodecError, match="not UTF-8"):
        decode_text(b"\xff", P(90, 0, 0), model_of)


def test_text_encode_rejects() -> None:
    for node in [SingleResource(5, b"x", T.OPAQUE), SingleResource(3, float("inf"), T.FLOAT),
                 SingleResource(1, "1", T.INTEGER), SingleResource(4, 1, T.BOOLEAN)]:
        with pytest.raises(CodecError):
            encode_text(node, P(90, 0, node.id))
    with pytest.raises(CodecError, match="carries one value"):
        registry.encode(ContentFormat.TEXT, MultipleResource(11, {0: 1}, T.INTEGER), P(90, 0, 11))


def test_opaque() -> None:
    assert decode_opaque(b"\x00\xff", P(90, 0, 5), model_of) == SingleResource(5, b"\x00\xff", T.OPAQUE)
    assert decode_opaque(b"", P(99, 0, 1)) == SingleResource(1, b"", T.OPAQUE)  # unknown: opaque is fine
    assert decode_opaque(b"x", P(90, 0, 5, 2), model_of) == ResourceInstance(2, b"x", T.OPAQUE)
    assert encode_opaque(SingleResource(5, b"\x00\xff", T.OPAQUE), P(90, 0, 5)) == b"\x00\xff"
    with pytest.raises(CodecError, match="opaque content for a Integer"):
        decode_opaque(b"\x01", P(90, 0, 1), model_of)
    with pytest.raises(CodecError):
        decode_opaque(b"\x01", P(90, 0), model_of)
    with pytest.raises(CodecError):
        encode_opaque(SingleResource(0, "x", T.STRING), P(90, 0, 0))


@pytest.mark.parametrize(
    ("rid", "payload_hex", "value"),
    [(0, "626161", "aa"), (1, "185F", 95), (1, "3863", -100), (2, "1BFFFFFFFFFFFFFFFF", 2**64 - 1),
     (3, "F93E00", 1.5), (3, "FB3FB999999999999A", 0.1), (4, "F5", True), (5, "42ABCD", b"\xab\xcd"),
     (6, "1A5182428F", 1367491215), (7, "63333A30", ObjLink(3, 0))],
)
def test_plain_cbor(rid: int, payload_hex: str, value: object) -> None:
    payload = bytes.fromhex(payload_hex)
    node = registry.decode(ContentFormat.CBOR, payload, P(90, 0, rid), model_of)
    assert isinstance(node, SingleResource)
    assert node.value == value and type(node.value) is type(value)
    assert registry.encode(ContentFormat.CBOR, node, P(90, 0, rid)) == payload


def test_plain_cbor_rejects() -> None:
    for payload_hex, rid in [("6161", 1), ("F5", 1), ("18", 1), ("185F00", 1), ("A0", 1), ("F93E00", 1)]:
        with pytest.raises(CodecError):
            registry.decode(ContentFormat.CBOR, bytes.fromhex(payload_hex), P(90, 0, rid), model_of)
