"""Fuzzing: whatever bytes a device sends, every decoder raises CodecError and nothing else.

Inputs: random bytes, mutations of valid payloads of every format, and structurally valid JSON and
CBOR documents with random content (which get past the parsers and exercise the record logic).
The default run is short; the ``slow`` variants run the same checks at length.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from functools import partial

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.lwm2m.codec import CodecError, ContentFormat, registry
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import (
    MultipleResource,
    Node,
    ObjectInstanceNode,
    ObjectNode,
    ObjLink,
    ResourceInstance,
    SingleResource,
)
from gateway.lwm2m.path import LwM2mPath

T = ResourceType
F = ContentFormat
P = LwM2mPath

DEVICE = ObjectModel(3, "Device", resources={
    rid: ResourceModel(rid, str(rid), rtype, Operations.RW, multiple=many)
    for rid, (rtype, many) in {0: (T.STRING, False), 6: (T.INTEGER, True), 7: (T.INTEGER, True),
                               9: (T.INTEGER, False), 13: (T.TIME, False), 21: (T.UNSIGNED_INTEGER, False),
                               22: (T.FLOAT, False), 23: (T.BOOLEAN, False), 24: (T.OPAQUE, False),
                               25: (T.OBJLNK, True), 26: (T.CORELNK, False), 4: (T.NONE, False)}.items()
})
MODELS = {3: DEVICE, 2: ObjectModel(2, "ACL", multiple=True, resources={
    2: ResourceModel(2, "ACL", T.INTEGER, Operations.RW, multiple=True)})}
model_of = MODELS.get

FORMATS = [F.TEXT, F.OPAQUE, F.CBOR, F.TLV, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_JSON, F.LWM2M_CBOR]
PATHS = [P(3), P(3, 0), P(3, 0, 7), P(3, 0, 7, 1), P(3, 0, 9), P(3, 0, 22), P(3, 0, 24), P(3, 0, 25, 0),
         P(2), P(2, 1), P(99, 0, 1), P()]

SEEDS: dict[F, list[bytes]] = {
    F.TLV: [
        bytes.fromhex("C800144F70656E204D6F62696C6520416C6C69616E6365C801164C69676874776569676874204D324D2043"
                      "6C69656E74860641000141010588070842000ED842011388C10964C40D5182428FC11055"),
        bytes.fromhex("08000EC10001C101008302417F07C1037F080212C10003C101008702417F0761013601C1037F"),
        bytes.fromhex("C10964"), bytes.fromhex("88070842000ED842011388"),
    ],
    F.SENML_JSON: [
        b'[{"bn":"/3/0/","bt":1700000000,"n":"0","vs":"Open Mobile Alliance"},{"n":"7/0","v":3800,"t":-5},'
        b'{"n":"9","v":95},{"n":"23","vb":true},{"n":"24","vd":"q83v"},{"n":"25/0","vlo":"3:0"}]',
        b'[{"n":"/3/0/9"},{"n":"/3/0/0"}]',
    ],
    F.SENML_CBOR: [
        bytes.fromhex("83A200662F332F302F3003744F70656E204D6F62696C6520416C6C69616E6365A200662F332F302F3902185F"
                      "A200662F312F302F31021A00015180"),
        bytes.fromhex("81a221662f302f302f330843abcdef"),
        cbor2.dumps([{-2: "/3/0/", -3: 1700000000, 0: "7/0", 2: 3800, 6: -5}, {0: "25/0", "vlo": "3:0"}]),
    ],
    F.LWM2M_JSON: [
        b'{"bn":"/3/0/","bt":1700000000,"e":[{"n":"0","sv":"OMA"},{"n":"7/0","v":3800,"t":-5},'
        b'{"n":"23","bv":true},{"n":"24","sv":"q83v"},{"n":"25/0","ov":"3:0"}]}',
    ],
    F.LWM2M_CBOR: [
        bytes.fromhex("A1830D181A01182A"), bytes.fromhex("A10DA1181AA101182A"),
        bytes.fromhex("BF820D181ABF01182A0215FFFF"),
        cbor2.dumps({3: {0: {0: "OMA", 7: {0: 3800, 1: 5000}, 9: 95, 24: b"\x01", 25: {0: "3:0"}}}}),
    ],
    F.TEXT: [b"95", b"23.5", b"3:0", b"1"],
    F.CBOR: [bytes.fromhex("185F"), bytes.fromhex("F93E00"), bytes.fromhex("63333A30")],
}
ALL_SEEDS = [seed for seeds in SEEDS.values() for seed in seeds]


def decode_everything(payload: bytes, formats: list[F] = FORMATS) -> None:
    """Every decoder on every shape; the only exception allowed out is CodecError."""
    for fmt in formats:
        calls: list[Callable[[], object]] = [
            partial(registry.decode, fmt, payload, path, model_of) for path in PATHS
        ]
        calls += [
            partial(registry.decode, fmt, payload, None, model_of),
            partial(registry.decode_timestamped, fmt, payload, None, model_of, now=1e9),
            partial(registry.decode_timestamped, fmt, payload, P(3, 0), model_of, now=1e9),
            partial(registry.decode_paths, fmt, payload),
        ]
        for call in calls:
            with contextlib.suppress(CodecError):
                call()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(ALL_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "repeat"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x1B, 0x9F, 0xBF, 0xFF, 0x22, 0x5B, 0x7B]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[i]
        elif op == "truncate":
            del data[i:]
        elif op == "repeat":
            data[i:i] = data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


_labels = st.sampled_from(["bn", "bt", "bv", "n", "t", "v", "vs", "vb", "vd", "vlo", "e", "sv", "bv", "ov", "x_"])
_names = st.sampled_from(["/3/0/", "/3/0/9", "/3/0/7/0", "0", "7/1", "/3", "/2/1/2/3", "/99/0/1", "", "x", "/3/0/25/0"])
_json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-(2**1100), 2**1100)
                 | st.floats(allow_nan=False) | st.sampled_from([1e308, -1e308, 2**28, -(2**28)])
                 | _names | st.text(max_size=6))
json_documents = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_labels, inner, max_size=5),
    max_leaves=20,
)

_cbor_keys = st.sampled_from([-5, -3, -2, 0, 2, 3, 4, 6, 8, "vlo", 3, 7, 9, 65535, 65536, -1, "n"]) | st.tuples(
    st.integers(-1, 70000), st.integers(0, 70000))
_cbor_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-(2**1100), 2**1100)
                 | st.floats() | st.binary(max_size=6)
                 | _names | st.just(cbor2.undefined))
cbor_documents = st.recursive(
    _cbor_scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.dictionaries(_cbor_keys, inner, max_size=5)
                   | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 4, 5, 24, 30, 32, 258, 260, 1000]), inner)),
    max_leaves=20,
)


def _cbor(document: object) -> bytes | None:
    try:
        return cbor2.dumps(document)
    except Exception:
        return None


QUICK = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))


@QUICK
@given(st.binary(max_size=64))
def test_random_bytes(payload: bytes) -> None:
    decode_everything(payload)


@QUICK
@given(mutated())
def test_mutated_payloads(payload: bytes) -> None:
    decode_everything(payload)


@QUICK
@given(json_documents)
def test_json_documents(document: object) -> None:
    decode_everything(json.dumps(document).encode(), [F.SENML_JSON, F.LWM2M_JSON])


@QUICK
@given(cbor_documents)
def test_cbor_documents(document: object) -> None:
    payload = _cbor(document)
    if payload is not None:
        decode_everything(payload, [F.SENML_CBOR, F.LWM2M_CBOR, F.CBOR])


def test_every_truncation_of_every_seed() -> None:
    for seed in ALL_SEEDS:
        for cut in range(len(seed)):
            decode_everything(seed[:cut])


@pytest.mark.parametrize(
    "payload",
    [b"[" * 5000, b"{\"e\":" * 3000, b"\x81" * 5000, b"\xa1\x01" * 5000, b"\x9f" * 5000, b"\xd8\x1c\x81\xd8\x1d\x00",
     b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x5b\x00\x00\x00\x10\x00\x00\x00\x00", b"\xc2\x5a\x00\x10\x00\x00",
     b"\xd9\x01\x00\x81\x00", b'[{"n":"/3/0/9","v":1e999}]', b'[{"n":"/3/0/9","v":' + b"1" * 4400 + b"}]",
     b"\xc1\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\xa1\x83\x03\x00\x0d\xc1\x1b\x7f\xff\xff\xff\xff\xff\xff\xff",
     b'[{"bv":1' + b"0" * 400 + b',"n":"/3/0/9","v":1.5}]', b'[{"bt":1e308,"n":"/3/0/9","v":1,"t":1e308}]',
     b'[{"n":"/3/0/22","v":1e308,"bv":1e308}]', b'{"bt":1e308,"e":[{"n":"/3/0/9","v":1,"t":1e308}]}'],
    ids=lambda b: b[:12].hex(),
)
def test_nasty_payloads(payload: bytes) -> None:
    decode_everything(payload)


@pytest.mark.slow
@LONG
@given(st.binary(max_size=256))
def test_random_bytes_long(payload: bytes) -> None:
    decode_everything(payload)


@pytest.mark.slow
@LONG
@given(mutated())
def test_mutated_payloads_long(payload: bytes) -> None:
    decode_everything(payload)


@pytest.mark.slow
@LONG
@given(json_documents)
def test_json_documents_long(document: object) -> None:
    decode_everything(json.dumps(document).encode(), [F.SENML_JSON, F.LWM2M_JSON])


@pytest.mark.slow
@LONG
@given(cbor_documents)
def test_cbor_documents_long(document: object) -> None:
    payload = _cbor(document)
    if payload is not None:
        decode_everything(payload, [F.SENML_CBOR, F.LWM2M_CBOR, F.CBOR])


# -- encoders: application code can hand over a malformed node; that too must be a CodecError ---------

_any_values = (st.none() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5) | st.binary(max_size=5)
               | st.booleans() | st.builds(ObjLink, st.integers(0, 65535), st.integers(0, 65535))
               | st.lists(st.integers(), max_size=2))
_any_ids = st.integers(-2, 70000) | st.sampled_from([0, 1, 255, 256, 65534, 65535])
_types = st.sampled_from(list(ResourceType))
_resources = (st.builds(SingleResource, _any_ids, _any_values, _types)
              | st.builds(MultipleResource, _any_ids, st.dictionaries(_any_ids, _any_values, max_size=3), _types))
_instances = st.builds(ObjectInstanceNode, _any_ids, st.dictionaries(_any_ids, _resources, max_size=3))
_garbage_nodes = (_resources | _instances | st.builds(ResourceInstance, _any_ids, _any_values, _types)
                  | st.builds(ObjectNode, _any_ids, st.dictionaries(_any_ids, _instances, max_size=2)))
_paths = st.lists(st.integers(0, 65535), max_size=4).filter(lambda ids: len(ids) < 2 or ids[1] != 65535).map(
    lambda ids: P(*ids))


def encode_everything(node: Node, path: LwM2mPath) -> None:
    for fmt in FORMATS:
        with contextlib.suppress(CodecError):
            registry.encode(fmt, node, path, model_of)
        if isinstance(node, SingleResource | ResourceInstance):
            with contextlib.suppress(CodecError):
                registry.encode(fmt, {path: node.value}, None, model_of)


@QUICK
@given(_garbage_nodes, _paths)
def test_encoders_raise_only_codec_error(node: Node, path: LwM2mPath) -> None:
    encode_everything(node, path)


@pytest.mark.slow
@LONG
@given(_garbage_nodes, _paths)
def test_encoders_raise_only_codec_error_long(node: Node, path: LwM2mPath) -> None:
    encode_everything(node, path)
