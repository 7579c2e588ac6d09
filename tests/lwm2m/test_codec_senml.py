"""SenML JSON (110) and SenML CBOR (112): the section 4 vectors byte-exact, the OMA Device example,
name/time resolution (RFC 8428), typing by the model, composite bodies, and malformed packs."""

from __future__ import annotations

import json
from decimal import Decimal

import cbor2
import pytest

from gateway.lwm2m.codec import registry
from gateway.lwm2m.codec.entries import Entry, to_node, to_timestamped, to_values
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.codec.senml_cbor import (
    decode_senml_cbor,
    decode_senml_cbor_paths,
    encode_senml_cbor,
    encode_senml_cbor_paths,
    encode_senml_cbor_values,
)
from gateway.lwm2m.codec.senml_json import (
    decode_senml_json,
    decode_senml_json_paths,
    encode_senml_json,
    encode_senml_json_paths,
    encode_senml_json_values,
)
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import (
    MultipleResource,
    ObjectInstanceNode,
    ObjLink,
    ResourceInstance,
    SingleResource,
    TimestampedValue,
    Value,
)
from gateway.lwm2m.path import LwM2mPath

T = ResourceType
P = LwM2mPath


def model(oid: int, multiple: bool, resources: dict[int, tuple[ResourceType, bool]]) -> ObjectModel:
    return ObjectModel(
        id=oid, name=f"Object {oid}", multiple=multiple,
        resources={rid: ResourceModel(rid, f"R{rid}", rtype, Operations.RW, multiple=many)
                   for rid, (rtype, many) in resources.items()},
    )


ONE, MANY = False, True
MODELS = {
    0: model(0, True, {0: (T.STRING, ONE), 3: (T.OPAQUE, ONE), 10: (T.INTEGER, ONE)}),
    1: model(1, True, {0: (T.INTEGER, ONE), 1: (T.INTEGER, ONE), 6: (T.BOOLEAN, ONE), 7: (T.STRING, ONE)}),
    3: model(3, False, {0: (T.STRING, ONE), 1: (T.STRING, ONE), 2: (T.STRING, ONE), 3: (T.STRING, ONE),
                        6: (T.INTEGER, MANY), 7: (T.INTEGER, MANY), 8: (T.INTEGER, MANY), 9: (T.INTEGER, ONE),
                        10: (T.INTEGER, ONE), 11: (T.INTEGER, MANY), 13: (T.TIME, ONE), 14: (T.STRING, ONE),
                        16: (T.STRING, ONE), 21: (T.UNSIGNED_INTEGER, ONE)}),
    6: model(6, False, {0: (T.FLOAT, ONE), 1: (T.FLOAT, ONE), 5: (T.TIME, ONE)}),
    66: model(66, True, {2: (T.OBJLNK, ONE)}),
}
model_of = MODELS.get

# LWM2M_FACTS.md section 4 (V)
CBOR_SINGLE = bytes.fromhex("81A221662F332F302F3003744F70656E204D6F62696C6520416C6C69616E6365")
CBOR_OPAQUE = bytes.fromhex("81a221662f302f302f330843abcdef")
CBOR_COMPOSITE = bytes.fromhex(
    "83A200662F332F302F3003744F70656E204D6F62696C6520416C6C69616E6365"
    "A200662F332F302F3902185FA200662F312F302F31021A00015180"
)

# The Device object instance in SenML JSON, as in the OMA LwM2M 1.1 Core specification's example.
DEVICE_JSON = (
    b'[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},{"n":"1","vs":"Lightweight M2M Client"},'
    b'{"n":"2","vs":"345000123"},{"n":"3","vs":"1.0"},{"n":"6/0","v":1},{"n":"6/1","v":5},'
    b'{"n":"7/0","v":3800},{"n":"7/1","v":5000},{"n":"8/0","v":125},{"n":"8/1","v":900},'
    b'{"n":"9","v":100},{"n":"10","v":15},{"n":"11/0","v":0},{"n":"13","v":1367491215},'
    b'{"n":"14","vs":"+02:00"},{"n":"16","vs":"U"}]'
)
DEVICE_NODE = ObjectInstanceNode(0, {
    0: SingleResource(0, "Open Mobile Alliance", T.STRING),
    1: SingleResource(1, "Lightweight M2M Client", T.STRING),
    2: SingleResource(2, "345000123", T.STRING),
    3: SingleResource(3, "1.0", T.STRING),
    6: MultipleResource(6, {0: 1, 1: 5}, T.INTEGER),
    7: MultipleResource(7, {0: 3800, 1: 5000}, T.INTEGER),
    8: MultipleResource(8, {0: 125, 1: 900}, T.INTEGER),
    9: SingleResource(9, 100, T.INTEGER),
    10: SingleResource(10, 15, T.INTEGER),
    11: MultipleResource(11, {0: 0}, T.INTEGER),
    13: SingleResource(13, 1367491215, T.TIME),
    14: SingleResource(14, "+02:00", T.STRING),
    16: SingleResource(16, "U", T.STRING),
})


# -- vectors -------------------------------------------------------------------------------------------------


def test_cbor_single_string_vector() -> None:
    node = SingleResource(0, "Open Mobile Alliance", T.STRING)
    assert encode_senml_cbor(node, P(3, 0, 0)) == CBOR_SINGLE
    assert registry.decode(ContentFormat.SENML_CBOR, CBOR_SINGLE, P(3, 0, 0), model_of) == node
    assert cbor2.loads(CBOR_SINGLE) == [{-2: "/3/0/0", 3: "Open Mobile Alliance"}]


def test_cbor_opaque_vector() -> None:
    node = SingleResource(3, b"\xab\xcd\xef", T.OPAQUE)
    assert encode_senml_cbor(node, P(0, 0, 3)) == CBOR_OPAQUE
    assert registry.decode(ContentFormat.SENML_CBOR, CBOR_OPAQUE, P(0, 0, 3), model_of) == node


def test_cbor_composite_vector() -> None:
    values: dict[LwM2mPath, Value] = {P(3, 0, 0): "Open Mobile Alliance", P(3, 0, 9): 95, P(1, 0, 1): 86400}
    assert registry.encode(ContentFormat.SENML_CBOR, values, None, model_of) == CBOR_COMPOSITE
    assert registry.decode(ContentFormat.SENML_CBOR, CBOR_COMPOSITE, None, model_of) == values
    assert list(registry.decode(ContentFormat.SENML_CBOR, CBOR_COMPOSITE, None, model_of)) == list(values)


def test_json_opaque_example() -> None:
    node = SingleResource(3, b"\xab\xcd\xef", T.OPAQUE)
    assert encode_senml_json(node, P(0, 0, 3)) == b'[{"bn":"/0/0/3","vd":"q83v"}]'
    assert registry.decode(ContentFormat.SENML_JSON, b'[{"bn":"/0/0/3","vd":"q83v"}]', P(0, 0, 3)) == node


def test_json_device_example_both_ways() -> None:
    assert to_node(decode_senml_json(DEVICE_JSON, model_of), P(3, 0), model_of) == DEVICE_NODE
    assert encode_senml_json(DEVICE_NODE, P(3, 0)) == DEVICE_JSON


def test_cbor_device_matches_json_device() -> None:
    payload = encode_senml_cbor(DEVICE_NODE, P(3, 0))
    as_json = [{{-2: "bn", 0: "n", 2: "v", 3: "vs"}[k]: v for k, v in r.items()} for r in cbor2.loads(payload)]
    assert as_json == json.loads(DEVICE_JSON)
    assert to_node(decode_senml_cbor(payload, model_of), P(3, 0), model_of) == DEVICE_NODE


def test_send_example() -> None:
    payload = b'[{"n":"/6/0/0","v":43.61092},{"n":"/6/0/1","v":3.98835},{"n":"/3/0/9","v":95}]'
    assert registry.decode(ContentFormat.SENML_JSON, payload, None, model_of) == {
        P(6, 0, 0): 43.61092, P(6, 0, 1): 3.98835, P(3, 0, 9): 95}


def test_multiple_resource_and_resource_instance() -> None:
    node = MultipleResource(7, {0: 3800, 1: 5000}, T.INTEGER)
    payload = encode_senml_json(node, P(3, 0, 7))
    assert payload == b'[{"bn":"/3/0/7/","n":"0","v":3800},{"n":"1","v":5000}]'
    assert registry.decode(ContentFormat.SENML_JSON, payload, P(3, 0, 7), model_of) == node
    instance = ResourceInstance(1, 5000, T.INTEGER)
    payload = encode_senml_cbor(instance, P(3, 0, 7, 1))
    assert registry.decode(ContentFormat.SENML_CBOR, payload, P(3, 0, 7, 1), model_of) == instance


def test_empty_multiple_resource_needs_the_model() -> None:
    assert registry.decode(ContentFormat.SENML_JSON, b"[]", P(3, 0, 7), model_of) == MultipleResource(
        7, {}, T.INTEGER)
    with pytest.raises(CodecError):
        registry.decode(ContentFormat.SENML_JSON, b"[]", P(3, 0, 9), model_of)


# -- resolution ----------------------------------------------------------------------------------------------


def test_base_name_carries_over_and_changes() -> None:
    payload = b'[{"bn":"/3/0/","n":"9","v":1},{"n":"10","v":2},{"bn":"/1/0/","n":"1","v":3},{"n":"0","v":4}]'
    assert list(registry.decode(ContentFormat.SENML_JSON, payload, None)) == [
        P(3, 0, 9), P(3, 0, 10), P(1, 0, 1), P(1, 0, 0)]


def test_times_absolute_relative_and_base() -> None:
    now = 1_700_000_000.0
    payload = json.dumps([
        {"bn": "/3/0/", "bt": 1_600_000_000, "n": "9", "v": 1, "t": 5},  # absolute base + offset
        {"n": "10", "v": 2},  # base time alone
        {"bt": -60, "n": "9", "v": 3},  # relative base time: a minute ago
        {"bt": 0, "n": "9", "v": 4, "t": 1_650_000_000},  # base 0: t is absolute on its own
    ]).encode()
    values = registry.decode_timestamped(ContentFormat.SENML_JSON, payload, P(3, 0), model_of, now=now)
    assert values == [
        TimestampedValue(P(3, 0, 9), 1, 1_600_000_005.0),
        TimestampedValue(P(3, 0, 10), 2, 1_600_000_000.0),
        TimestampedValue(P(3, 0, 9), 3, now - 60),
        TimestampedValue(P(3, 0, 9), 4, 1_650_000_000.0),
    ]
    # the node holds the newest value of each path
    node = registry.decode(ContentFormat.SENML_JSON, payload, P(3, 0), model_of, now=now)
    assert isinstance(node, ObjectInstanceNode)
    assert node.resources[9] == SingleResource(9, 3, T.INTEGER)


def test_untimed_values_have_no_timestamp_and_the_last_wins() -> None:
    payload = b'[{"n":"/3/0/9","v":1},{"n":"/3/0/9","v":2}]'
    assert registry.decode_timestamped(ContentFormat.SENML_JSON, payload, None) == [
        TimestampedValue(P(3, 0, 9), 1, None), TimestampedValue(P(3, 0, 9), 2, None)]
    assert registry.decode(ContentFormat.SENML_JSON, payload, None) == {P(3, 0, 9): 2}


def test_relative_time_defaults_to_the_clock() -> None:
    import time

    before = time.time()
    (value,) = registry.decode_timestamped(ContentFormat.SENML_JSON, b'[{"n":"/3/0/9","v":1,"t":-10}]', None)
    assert value.ts is not None and before - 10 <= value.ts <= time.time() - 10


def test_leshan_decimal_fraction_base_time_in_cbor() -> None:
    payload = cbor2.dumps([{-3: Decimal("1700000000.5"), 0: "/3/0/9", 2: 1}])
    (value,) = registry.decode_timestamped(ContentFormat.SENML_CBOR, payload, None)
    assert value.ts == 1_700_000_000.5


def test_timestamped_encode_round_trip() -> None:
    values = [TimestampedValue(P(3, 0, 9), 90, 1_700_000_000.0), TimestampedValue(P(3, 0, 9), 91, None),
              TimestampedValue(P(6, 0, 0), 1.5, 1_700_000_001.25)]
    for fmt in (ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.LWM2M_JSON):
        payload = registry.encode_timestamped(fmt, values, model_of)
        assert registry.decode_timestamped(fmt, payload, None, model_of) == values


def test_base_value_is_added() -> None:
    payload = b'[{"bn":"/3/0/","bv":100,"n":"9","v":-5},{"n":"10","v":1.5}]'
    assert registry.decode(ContentFormat.SENML_JSON, payload, None) == {P(3, 0, 9): 95, P(3, 0, 10): 101.5}


def test_unknown_labels_are_ignored_but_must_understand_ones_are_not() -> None:
    ok = b'[{"bver":10,"n":"/3/0/9","u":"%","v":95,"ut":60}]'
    assert registry.decode(ContentFormat.SENML_JSON, ok, None) == {P(3, 0, 9): 95}
    with pytest.raises(CodecError, match="must-understand"):
        registry.decode(ContentFormat.SENML_JSON, b'[{"n":"/3/0/9","v":95,"foo_":1}]', None)


# -- typing by the model -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "value", "rtype"),
    [
        ({"n": "/3/0/9", "v": 95.0}, 95, T.INTEGER),
        ({"n": "/6/0/0", "v": 43}, 43.0, T.FLOAT),
        ({"n": "/3/0/13", "v": 1367491215}, 1367491215, T.TIME),
        ({"n": "/3/0/21", "v": 2**64 - 1}, 2**64 - 1, T.UNSIGNED_INTEGER),
        ({"n": "/1/0/6", "vb": True}, True, T.BOOLEAN),
        ({"n": "/66/0/2", "vlo": "3:0"}, ObjLink(3, 0), T.OBJLNK),
        ({"n": "/0/0/3", "vd": "q83v"}, b"\xab\xcd\xef", T.OPAQUE),
        ({"n": "/0/0/3", "vd": "q83v7w=="}, b"\xab\xcd\xef\xef", T.OPAQUE),  # padded is accepted
        ({"n": "/0/0/3", "vd": "-_8"}, b"\xfb\xff", T.OPAQUE),  # the url alphabet
        ({"n": "/99/0/1", "v": 1}, 1, T.INTEGER),  # no model: as the payload says
        ({"n": "/99/0/1", "v": 1.0}, 1.0, T.FLOAT),
        ({"n": "/99/0/1", "vs": "x"}, "x", T.STRING),
    ],
)
def test_typing(record: dict[str, object], value: object, rtype: ResourceType) -> None:
    node = registry.decode(ContentFormat.SENML_JSON, json.dumps([record]).encode(),
                           P.parse(str(record["n"])), model_of)
    assert isinstance(node, SingleResource)
    assert node.value == value and type(node.value) is type(value) and node.type is rtype


@pytest.mark.parametrize(
    ("records", "complaint"),
    [
        ([{"n": "/3/0/9", "v": 9.5}], "not an integer"),
        ([{"n": "/3/0/9", "vs": "95"}], "string value for a Integer resource"),
        ([{"n": "/3/0/21", "v": -1}], "unsigned"),
        ([{"n": "/3/0/9", "v": 2**63}], "signed 64-bit"),
        ([{"n": "/99/0/9", "v": 2**64}], "64-bit"),
        ([{"n": "/3/0/9", "v": True}], "expected a number, got bool"),
        ([{"n": "/1/0/6", "vb": 1}], "true or false"),
        ([{"n": "/1/0/6", "v": 1}], "a number for a Boolean"),
        ([{"n": "/0/0/3", "vs": "q83v"}], "string value for a Opaque"),
        ([{"n": "/0/0/3", "vd": "q8!v"}], "not base64url"),
        ([{"n": "/0/0/3", "vd": "q"}], "not base64url"),
        ([{"n": "/0/0/3", "vd": 5}], "base64url text"),
        ([{"n": "/66/0/2", "vlo": "3"}], "invalid object link"),
        ([{"n": "/66/0/2", "vlo": "3:65536"}], "invalid object link"),
        ([{"n": "/3/0/0", "vb": True}], "boolean value for a String"),
        ([{"n": "/3/0/9"}], "no value"),
        ([{"n": "/99/0/9", "v": 1, "vs": "1"}], "more than one value"),
        ([{"n": "/3/0", "v": 1}], "not a resource"),
        ([{"n": "/3/0/x", "v": 1}], "'x' is not a number"),
        ([{"n": "3/0/9", "v": 1}], "must start with '/'"),
        ([{"bn": 3, "n": "/3/0/9", "v": 1}], "base name must be text"),
        ([{"n": 9, "v": 1}], "name must be text"),
        ([{"n": "/3/0/9", "v": 1, "t": "now"}], "time must be a number"),
        ([{"bt": True, "n": "/3/0/9", "v": 1}], "time must be a number"),
        ([{"bv": "1", "n": "/3/0/9", "v": 1}], "base value must be a number"),
        ([[]], "not a map"),
        ({"n": "/3/0/9", "v": 1}, "must be an array"),
    ],
)
def test_bad_records(records: object, complaint: str) -> None:
    with pytest.raises(CodecError, match=complaint):
        decode_senml_json(json.dumps(records).encode(), model_of)
    cbor_records = records
    if isinstance(records, list):
        labels = {"bn": -2, "bt": -3, "bv": -5, "n": 0, "t": 6, "v": 2, "vs": 3, "vb": 4, "vd": 8}
        cbor_records = [
            {labels.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in records
        ]
        for r in cbor_records:  # CBOR carries opaque data as bytes, not base64 text
            if isinstance(r, dict) and isinstance(r.get(8), str):
                r[8] = 5
    with pytest.raises(CodecError):
        decode_senml_cbor(cbor2.dumps(cbor_records), model_of)


def test_node_decode_rejects_values_outside_the_path() -> None:
    with pytest.raises(CodecError, match="outside"):
        registry.decode(ContentFormat.SENML_JSON, b'[{"n":"/3/0/9","v":1},{"n":"/1/0/1","v":1}]', P(3, 0))
    with pytest.raises(CodecError, match="outside"):
        registry.decode_timestamped(ContentFormat.SENML_JSON, b'[{"n":"/1/0/1","v":1}]', P(3, 0))


def test_node_decode_rejects_a_resource_that_is_both_single_and_multiple() -> None:
    with pytest.raises(CodecError, match="both"):
        registry.decode(ContentFormat.SENML_JSON, b'[{"n":"/3/0/7","v":1},{"n":"/3/0/7/0","v":1}]', P(3, 0))


@pytest.mark.parametrize(
    "payload",
    [b"", b"[", b'[{"n":"/3/0/9","v":NaN}]', b'[{"n":"/3/0/9","v":Infinity}]', b"\xff[]", b"[" * 100000,
     b'[{"n":"/3/0/9","v":1}] x', b'[{"n":"/3/0/9","v":' + b"9" * 5000 + b"}]"],
)
def test_bad_json(payload: bytes) -> None:
    with pytest.raises(CodecError):
        decode_senml_json(payload)


@pytest.mark.parametrize(
    ("payload_hex", "complaint"),
    [
        ("", "premature end"),
        ("81A221662F332F302F3003", "CBOR"),  # truncated
        ("81A221662F332F302F30037454", "CBOR"),  # text string cut
        ("81A102180201", "trailing"),  # trailing bytes after the item
        ("81A300662F332F302F3902010202", "Duplicate"),
        ("81A200662F332F302F3962C328", "CBOR"),  # invalid UTF-8 in a text string
    ],
)
def test_bad_cbor(payload_hex: str, complaint: str) -> None:
    with pytest.raises(CodecError, match=complaint):
        decode_senml_cbor(bytes.fromhex(payload_hex))


def test_cbor_deep_nesting_and_self_reference() -> None:
    with pytest.raises(CodecError):
        decode_senml_cbor(b"\x81" * 10000)
    with pytest.raises(CodecError):  # a shared reference to itself
        decode_senml_cbor(bytes.fromhex("D81C81D81D00"))


def test_cbor_vd_must_be_bytes() -> None:
    with pytest.raises(CodecError, match="byte string"):
        decode_senml_cbor(cbor2.dumps([{0: "/0/0/3", 8: "q83v"}]), model_of)


# -- composite request bodies --------------------------------------------------------------------------------


def test_composite_request_bodies() -> None:
    paths = [P(3, 0, 0), P(3, 0, 9), P(1, 0), P(5)]
    json_body = encode_senml_json_paths(paths)
    assert json_body == b'[{"n":"/3/0/0"},{"n":"/3/0/9"},{"n":"/1/0"},{"n":"/5"}]'
    assert decode_senml_json_paths(json_body) == paths
    cbor_body = encode_senml_cbor_paths(paths)
    assert cbor2.loads(cbor_body) == [{0: "/3/0/0"}, {0: "/3/0/9"}, {0: "/1/0"}, {0: "/5"}]
    assert decode_senml_cbor_paths(cbor_body) == paths
    assert registry.decode_paths(ContentFormat.SENML_JSON, b'[{"bn":"/3/0/","n":"0"},{"n":"9"},{"bn":"/"}]') == [
        P(3, 0, 0), P(3, 0, 9), P()]
    with pytest.raises(CodecError, match="names only"):
        decode_senml_json_paths(b'[{"n":"/3/0/0","v":1}]')
    with pytest.raises(CodecError):
        decode_senml_json_paths(b'[{"n":"/3/0/0/1/2"}]')


def test_composite_write_values() -> None:
    values: list[Entry] = [(P(3, 0, 14), "+01:00", T.STRING, None), (P(1, 0, 1), 60, T.INTEGER, None),
              (P(0, 0, 3), b"\x01", T.OPAQUE, None), (P(66, 0, 2), ObjLink(1, 0), T.OBJLNK, None)]
    assert encode_senml_json_values(values) == (
        b'[{"n":"/3/0/14","vs":"+01:00"},{"n":"/1/0/1","v":60},{"n":"/0/0/3","vd":"AQ"},'
        b'{"n":"/66/0/2","vlo":"1:0"}]')
    for payload, decode in [(encode_senml_json_values(values), decode_senml_json),
                            (encode_senml_cbor_values(values), decode_senml_cbor)]:
        assert to_values(decode(payload, model_of)) == {p: v for p, v, _, _ in values}
        assert to_timestamped(decode(payload, model_of), None)[0] == TimestampedValue(P(3, 0, 14), "+01:00", None)


def test_encode_rejects_values_json_cannot_carry() -> None:
    with pytest.raises(CodecError):
        encode_senml_json(SingleResource(0, float("nan"), T.FLOAT), P(6, 0, 0))
    with pytest.raises(CodecError):
        encode_senml_json_values([(P(3, 0), 1, T.INTEGER, None)])
    with pytest.raises(CodecError):
        encode_senml_cbor(SingleResource(9, "x", T.INTEGER), P(3, 0, 9))


def test_cbor_floats_use_the_shortest_exact_form() -> None:
    assert encode_senml_cbor(SingleResource(0, 1.5, T.FLOAT), P(6, 0, 0)).endswith(bytes.fromhex("02F93E00"))
    assert encode_senml_cbor(SingleResource(0, 43.5, T.FLOAT), P(6, 0, 0)).endswith(bytes.fromhex("02F95170"))
    assert encode_senml_cbor(SingleResource(0, 0.1, T.FLOAT), P(6, 0, 0)).endswith(
        bytes.fromhex("02FB3FB999999999999A"))
    assert encode_senml_cbor(SingleResource(0, 100000.0, T.FLOAT), P(6, 0, 0)).endswith(bytes.fromhex("02FA47C35000"))


def test_cbor_trailing_bytes_after_a_large_pack() -> None:
    # cbor2 reads ahead in 4 KiB blocks: the trailing-byte check must still see the exact end.
    payload = cbor2.dumps([{0: "/3/0/0", 3: "x" * 10000}, {0: "/3/0/1", 3: "y" * 5000}])
    assert len(decode_senml_cbor(payload)) == 2
    with pytest.raises(CodecError, match="1 trailing bytes at offset 15027"):
        decode_senml_cbor(payload + b"\x00")
