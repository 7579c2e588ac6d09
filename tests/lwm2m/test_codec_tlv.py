"""TLV (11542): the five byte-exact vectors of LWM2M_FACTS.md section 3 in both directions, the type-byte
rules, typed values, and every kind of malformed input as CodecError."""

from __future__ import annotations

import contextlib

import pytest

from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.tlv import decode_tlv, encode_tlv
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import (
    NULL_OBJLINK,
    MultipleResource,
    Node,
    ObjectInstanceNode,
    ObjectNode,
    ObjLink,
    ResourceInstance,
    SingleResource,
    node_to_values,
)
from gateway.lwm2m.path import LwM2mPath

T = ResourceType


def model(oid: int, multiple: bool, resources: dict[int, tuple[ResourceType, bool]]) -> ObjectModel:
    return ObjectModel(
        id=oid,
        name=f"Object {oid}",
        multiple=multiple,
        resources={
            rid: ResourceModel(rid, f"Resource {rid}", rtype, Operations.RW, multiple=many)
            for rid, (rtype, many) in resources.items()
        },
    )


ONE, MANY = False, True
MODELS = {
    1: model(1, True, {0: (T.INTEGER, ONE), 1: (T.INTEGER, ONE), 2: (T.INTEGER, ONE), 3: (T.INTEGER, ONE),
                       4: (T.NONE, ONE), 5: (T.INTEGER, ONE), 6: (T.BOOLEAN, ONE), 7: (T.STRING, ONE),
                       8: (T.NONE, ONE)}),
    2: model(2, True, {0: (T.INTEGER, ONE), 1: (T.INTEGER, ONE), 2: (T.INTEGER, MANY), 3: (T.INTEGER, ONE)}),
    3: model(3, False, {0: (T.STRING, ONE), 1: (T.STRING, ONE), 2: (T.STRING, ONE), 3: (T.STRING, ONE),
                        4: (T.NONE, ONE), 5: (T.NONE, ONE), 6: (T.INTEGER, MANY), 7: (T.INTEGER, MANY),
                        8: (T.INTEGER, MANY), 9: (T.INTEGER, ONE), 10: (T.INTEGER, ONE),
                        11: (T.INTEGER, MANY), 12: (T.NONE, ONE), 13: (T.TIME, ONE), 14: (T.STRING, ONE),
                        15: (T.STRING, ONE), 16: (T.STRING, ONE)}),
    65: model(65, True, {0: (T.OBJLNK, MANY), 1: (T.STRING, ONE), 2: (T.INTEGER, ONE)}),
    66: model(66, True, {0: (T.STRING, ONE), 1: (T.STRING, ONE), 2: (T.OBJLNK, ONE)}),
    # every type, for the value tests
    90: model(90, True, {0: (T.STRING, ONE), 1: (T.INTEGER, ONE), 2: (T.UNSIGNED_INTEGER, ONE),
                         3: (T.FLOAT, ONE), 4: (T.BOOLEAN, ONE), 5: (T.OPAQUE, ONE), 6: (T.TIME, ONE),
                         7: (T.OBJLNK, ONE), 8: (T.CORELNK, ONE), 300: (T.INTEGER, MANY)}),
}
model_of = MODELS.get
P = LwM2mPath

DEVICE = bytes.fromhex(
    "C800144F70656E204D6F62696C6520416C6C69616E6365C801164C69676874776569676874204D324D20436C69656E74"
    "C80209333435303030313233C303312E30860641000141010588070842000ED842011388870841007D42010384C10964"
    "C10A0F830B410000C40D5182428FC60E2B30323A3030C11055"
)
ACCESS_CONTROL = bytes.fromhex("08000EC10001C101008302417F07C1037F080212C10003C101008702417F0761013601C1037F")
SERVER = bytes.fromhex("08000FC10001C40100015180C10601C10755")
OBJECT_65 = bytes.fromhex("88000C440000420000440100420001C8010D38363133383030373535353030C40212345678")
OBJECT_66 = bytes.fromhex(
    "080026C8000B6D79536572766963652031C8010F496E7465726E65742E31352E323334C40200430000"
    "080126C8000B6D79536572766963652032C8010F496E7465726E65742E31352E323335C402FFFFFFFF"
)


def single(rid: int, value: object, rtype: ResourceType) -> SingleResource:
    return SingleResource(rid, value, rtype)  # type: ignore[arg-type]


DEVICE_INSTANCE = ObjectInstanceNode(0, {
    0: single(0, "Open Mobile Alliance", T.STRING),
    1: single(1, "Lightweight M2M Client", T.STRING),
    2: single(2, "345000123", T.STRING),
    3: single(3, "1.0", T.STRING),
    6: MultipleResource(6, {0: 1, 1: 5}, T.INTEGER),
    7: MultipleResource(7, {0: 3800, 1: 5000}, T.INTEGER),
    8: MultipleResource(8, {0: 125, 1: 900}, T.INTEGER),
    9: single(9, 100, T.INTEGER),
    10: single(10, 15, T.INTEGER),
    11: MultipleResource(11, {0: 0}, T.INTEGER),
    13: single(13, 1367491215, T.TIME),
    14: single(14, "+02:00", T.STRING),
    16: single(16, "U", T.STRING),
})
ACL_OBJECT = ObjectNode(2, {
    0: ObjectInstanceNode(0, {0: single(0, 1, T.INTEGER), 1: single(1, 0, T.INTEGER),
                              2: MultipleResource(2, {127: 7}, T.INTEGER), 3: single(3, 127, T.INTEGER)}),
    2: ObjectInstanceNode(2, {0: single(0, 3, T.INTEGER), 1: single(1, 0, T.INTEGER),
                              2: MultipleResource(2, {127: 7, 310: 1}, T.INTEGER), 3: single(3, 127, T.INTEGER)}),
})
SERVER_OBJECT = ObjectNode(1, {0: ObjectInstanceNode(0, {
    0: single(0, 1, T.INTEGER), 1: single(1, 86400, T.INTEGER), 6: single(6, True, T.BOOLEAN),
    7: single(7, "U", T.STRING)})})
OBJECT_65_INSTANCE = ObjectInstanceNode(0, {
    0: MultipleResource(0, {0: ObjLink(66, 0), 1: ObjLink(66, 1)}, T.OBJLNK),
    1: single(1, "8613800755500", T.STRING),
    2: single(2, 0x12345678, T.INTEGER),
})
OBJECT_66_OBJECT = ObjectNode(66, {
    0: ObjectInstanceNode(0, {0: single(0, "myService 1", T.STRING), 1: single(1, "Internet.15.234", T.STRING),
                              2: single(2, ObjLink(67, 0), T.OBJLNK)}),
    1: ObjectInstanceNode(1, {0: single(0, "myService 2", T.STRING), 1: single(1, "Internet.15.235", T.STRING),
                              2: single(2, NULL_OBJLINK, T.OBJLNK)}),
})

VECTORS = [
    pytest.param(DEVICE, P(3, 0), DEVICE_INSTANCE, id="device /3/0"),
    pytest.param(bytes.fromhex("080079") + DEVICE, P(3), ObjectNode(3, {0: DEVICE_INSTANCE}), id="device /3"),
    pytest.param(ACCESS_CONTROL, P(2), ACL_OBJECT, id="access control /2"),
    pytest.param(SERVER, P(1), SERVER_OBJECT, id="server /1"),
    pytest.param(OBJECT_65, P(65, 0), OBJECT_65_INSTANCE, id="objlnk /65/0"),
    pytest.param(OBJECT_66, P(66), OBJECT_66_OBJECT, id="object 66 /66"),
]


@pytest.mark.parametrize(("payload", "path", "node"), VECTORS)
def test_vector_decodes(payload: bytes, path: LwM2mPath, node: Node) -> None:
    decoded = decode_tlv(payload, path, model_of)
    assert decoded == node
    # == treats True as 1: compare the exact Python types too
    assert [type(v) for v in node_to_values(decoded, path).values()] == [
        type(v) for v in node_to_values(node, path).values()
    ]


@pytest.mark.parametrize(("payload", "path", "node"), VECTORS)
def test_vector_encodes_byte_exact(payload: bytes, path: LwM2mPath, node: Node) -> None:
    assert encode_tlv(node, path) == payload


def test_vector_sizes_match_the_facts() -> None:
    assert (len(DEVICE), len(ACCESS_CONTROL), len(SERVER), len(OBJECT_65), len(OBJECT_66)) == (121, 38, 18, 37, 82)


def test_unknown_object_is_still_readable_as_opaque() -> None:
    node = decode_tlv(DEVICE, P(3, 0))
    assert isinstance(node, ObjectInstanceNode)
    assert node.resources[0] == SingleResource(0, b"Open Mobile Alliance", T.OPAQUE)
    assert node.resources[7] == MultipleResource(7, {0: b"\x0e\xd8", 1: b"\x13\x88"}, T.OPAQUE)
    assert encode_tlv(node, P(3, 0)) == DEVICE  # and writes back the same bytes


def test_executable_resource_in_the_model_decodes_as_opaque() -> None:
    assert decode_tlv(bytes.fromhex("C104FF"), P(1, 0, 4), model_of) == SingleResource(4, b"\xff", T.OPAQUE)


# -- the shapes a client may answer with ------------------------------------------------------------------


def test_single_resource() -> None:
    assert decode_tlv(bytes.fromhex("C10964"), P(3, 0, 9), model_of) == SingleResource(9, 100, T.INTEGER)


def test_multiple_resource_wrapped_or_bare() -> None:
    expected = MultipleResource(7, {0: 3800, 1: 5000}, T.INTEGER)
    assert decode_tlv(bytes.fromhex("88070842000ED842011388"), P(3, 0, 7), model_of) == expected
    assert decode_tlv(bytes.fromhex("42000ED842011388"), P(3, 0, 7), model_of) == expected


def test_empty_multiple_resource() -> None:
    assert decode_tlv(b"\x80\x07", P(3, 0, 7), model_of) == MultipleResource(7, {}, T.INTEGER)
    assert decode_tlv(b"", P(3, 0, 7), model_of) == MultipleResource(7, {}, T.INTEGER)
    assert encode_tlv(MultipleResource(7, {}, T.INTEGER), P(3, 0, 7)) == b"\x80\x07"
    with pytest.raises(CodecError):
        decode_tlv(b"", P(3, 0, 9), model_of)


def test_resource_instance() -> None:
    assert decode_tlv(bytes.fromhex("42011388"), P(3, 0, 7, 1), model_of) == ResourceInstance(1, 5000, T.INTEGER)
    assert encode_tlv(ResourceInstance(1, 5000, T.INTEGER), P(3, 0, 7, 1)) == bytes.fromhex("42011388")


def test_instance_with_or_without_wrapper() -> None:
    wrapped = bytes.fromhex("080079") + DEVICE
    assert decode_tlv(wrapped, P(3, 0), model_of) == DEVICE_INSTANCE


def test_object_with_bare_resources_is_instance_0_of_a_single_instance_object() -> None:
    assert decode_tlv(DEVICE, P(3), model_of) == ObjectNode(3, {0: DEVICE_INSTANCE})
    with pytest.raises(CodecError, match="multiple-instance"):
        decode_tlv(bytes.fromhex("C10001"), P(2), model_of)


def test_empty_object_and_empty_instance() -> None:
    assert decode_tlv(b"", P(2), model_of) == ObjectNode(2, {})
    assert decode_tlv(b"", P(2, 0), model_of) == ObjectInstanceNode(0, {})
    assert decode_tlv(b"\x00\x05", P(2), model_of) == ObjectNode(2, {5: ObjectInstanceNode(5, {})})


# -- values ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rid", "value_hex", "value"),
    [
        (1, "7F", 127), (1, "0080", 128), (1, "80", -128), (1, "FF7F", -129), (1, "7FFFFFFF", 2**31 - 1),
        (1, "0000000080000000", 2**31), (1, "8000000000000000", -(2**63)),
        (2, "00C8", 200), (2, "0000FFFF", 65535), (2, "FFFFFFFFFFFFFFFF", 2**64 - 1), (2, "7F", 127),
        (3, "3FC00000", 1.5), (3, "3FB999999999999A", 0.1), (3, "C1200000", -10.0),
        (4, "01", True), (4, "00", False),
        (5, "", b""), (5, "00FF", b"\x00\xff"),
        (6, "5182428F", 1367491215), (6, "80000000", -(2**31)),
        (7, "00420001", ObjLink(66, 1)),
        (8, "3C2F333E", "</3>"),
        (0, "C3A9", "é"), (0, "", ""),
    ],
)
def test_typed_values_both_ways(rid: int, value_hex: str, value: object) -> None:
    data = bytes.fromhex(value_hex)
    header = bytes([0xC0 | len(data), rid]) if len(data) < 8 else bytes([0xC8, rid, len(data)])
    path = P(90, 0, rid)
    node = decode_tlv(header + data, path, model_of)
    assert isinstance(node, SingleResource)
    assert node.value == value and type(node.value) is type(value)
    assert encode_tlv(node, path) == header + data


@pytest.mark.parametrize(("value_hex", "value"), [("C8", 200), ("FFFF", 65535), ("FFFFFFFF", 2**32 - 1)])
def test_unsigned_integers_are_read_unsigned(value_hex: str, value: int) -> None:
    data = bytes.fromhex(value_hex)
    node = decode_tlv(bytes([0xC0 | len(data), 2]) + data, P(90, 0, 2), model_of)
    assert node == SingleResource(2, value, T.UNSIGNED_INTEGER)


def test_float_written_as_double_only_when_single_loses_it() -> None:
    assert encode_tlv(SingleResource(3, 0.5, T.FLOAT), P(90, 0, 3)) == bytes.fromhex("C4033F000000")
    assert len(encode_tlv(SingleResource(3, 1e300, T.FLOAT), P(90, 0, 3))) == 3 + 8
    assert encode_tlv(SingleResource(3, 2, T.FLOAT), P(90, 0, 3)) == bytes.fromhex("C40340000000")  # int ok


@pytest.mark.parametrize(
    ("size", "header_hex"),
    [(7, "C700"), (8, "C80008"), (255, "C800FF"), (256, "D0000100"), (65535, "D000FFFF"),
     (65536, "D800010000")],
)
def test_length_field_sizes(size: int, header_hex: str) -> None:
    payload = bytes.fromhex(header_hex) + b"x" * size
    node = SingleResource(0, b"x" * size, T.OPAQUE)
    assert encode_tlv(node, P(99, 0, 0)) == payload
    assert decode_tlv(payload, P(99, 0, 0)) == node


def test_16_bit_identifiers() -> None:
    node = MultipleResource(300, {1000: 1, 2: 2}, T.INTEGER)
    payload = encode_tlv(node, P(90, 0, 300))
    # A7: multiple resource, 16-bit id, length 7 | 012C: id 300 | 410202: instance 2 = 2 | 6103E801: 1000 = 1
    assert payload == bytes.fromhex("A7012C41020261" "03E801")
    assert decode_tlv(payload, P(90, 0, 300), model_of) == node


def test_encode_rejects_bad_values() -> None:
    for node in [
        SingleResource(1, "7", T.INTEGER), SingleResource(1, True, T.INTEGER), SingleResource(1, 2**63, T.INTEGER),
        SingleResource(2, -1, T.UNSIGNED_INTEGER), SingleResource(4, 1, T.BOOLEAN),
        SingleResource(5, "ab", T.OPAQUE), SingleResource(7, (1, 2), T.OBJLNK),  # type: ignore[arg-type]
        SingleResource(0, b"x", T.STRING), SingleResource(4, None, T.NONE),  # type: ignore[arg-type]
    ]:
        with pytest.raises(CodecError):
            encode_tlv(node, P(90, 0, node.id))


def test_encode_rejects_a_node_at_the_wrong_path() -> None:
    with pytest.raises(CodecError):
        encode_tlv(SingleResource(9, 1, T.INTEGER), P(3, 0, 10))
    with pytest.raises(CodecError):
        encode_tlv(SingleResource(9, 1, T.INTEGER), P(3, 0))


# -- malformed input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload_hex", "path", "complaint"),
    [
        # truncation and lying lengths
        ("C8", P(3, 0), "truncated: header at offset 0"),
        ("C80014", P(3, 0), "length 20 at offset 0 runs past"),
        ("E8", P(3, 0), "truncated"),  # 16-bit id cut
        ("D80000", P(3, 0), "truncated"),  # 24-bit length field cut
        ("C109", P(3, 0, 9), "runs past"),
        ("080005C10964", P(3), "length 5 at offset 0 runs past"),  # instance says 5 bytes, 3 are there
        ("080003C10964C1", P(3), "truncated: header at offset 6"),  # trailing half entry
        ("88070642000ED84202", P(3, 0, 7), "length 2 at offset 7 runs past the end of its container (offset 9)"),
        ("08FFFF00", P(3), "length 255 at offset 0 runs past"),
        ("0800", P(3), "truncated"),
        # nesting where it is not allowed
        ("080003080100", P(3), "object instance at offset 3 among resources"),
        ("080003410001", P(3), "resource instance at offset 3 among resources"),
        ("880703C10000", P(3, 0, 7), "resource at offset 3 inside a multiple resource"),
        ("C10001", P(2), "multiple-instance"),
        ("080003C10964C10A0F", P(3), "resource at offset 6 among object instances"),
        # duplicates, reserved ids, ids that contradict the path
        ("C10964C10964", P(3, 0), "resource 9 twice"),
        ("080003C10964080003C10964", P(3), "object instance 0 twice"),
        ("28FFFF00", P(3), "reserved"),
        ("C10A0F", P(3, 0, 9), "resource 10 at offset 0 is not 9"),
        ("080100", P(3, 0), "object instance 1 at offset 0 is not 0"),
        ("4101FF", P(3, 0, 7, 2), "resource instance 1 at offset 0 is not 2"),
        ("C2040002", P(1, 0, 6), "resource 4 at offset 0 is not 6"),
        ("C10964C10A0F", P(3, 0, 9), "expected one resource"),
        ("C10964", P(3, 0, 7, 1), "resource instance 9 at offset 0 is not 1"),
        ("4100014101FF", P(3, 0, 7, 1), "expected one resource instance"),
        # values that cannot be of the resource's type
        ("C309000102", P(3, 0, 9), "3 bytes at offset 0 cannot be a Integer"),
        ("C10602", P(1, 0, 6), "boolean at offset 0"),
        ("C30300FF00", P(90, 0, 3), "cannot be a Float"),
        ("C103FF", P(90, 0, 3), "cannot be a Float"),
        ("C3070001FF", P(90, 0, 7), "cannot be a Objlnk"),
        ("C200C328", P(90, 0, 0), "string at offset 2 is not UTF-8"),
        ("C5020000000000", P(90, 0, 2), "cannot be a Unsigned Integer"),
    ],
)
def test_malformed(payload_hex: str, path: LwM2mPath, complaint: str) -> None:
    with pytest.raises(CodecError) as info:
        decode_tlv(bytes.fromhex(payload_hex), path, model_of)
    assert complaint in str(info.value)


def test_root_path_is_refused() -> None:
    with pytest.raises(CodecError):
        decode_tlv(DEVICE, P())


def test_every_prefix_of_every_vector_decodes_or_raises_codec_error() -> None:
    for payload, path in [(DEVICE, P(3, 0)), (ACCESS_CONTROL, P(2)), (SERVER, P(1)), (OBJECT_65, P(65, 0)),
                          (OBJECT_66, P(66))]:
        for cut in range(len(payload)):
            with contextlib.suppress(CodecError):
                decode_tlv(payload[:cut], path, model_of)
