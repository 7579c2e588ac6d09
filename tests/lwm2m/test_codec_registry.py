"""The registry: format numbers (legacy ones too), dispatch by shape, refusals, and choose_format."""

from __future__ import annotations

import pytest

from gateway.lwm2m.codec import CodecError, ContentFormat, FormatNeed, choose_format, registry
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import MultipleResource, ObjectInstanceNode, SingleResource, TimestampedValue
from gateway.lwm2m.path import LwM2mPath

F = ContentFormat
N = FormatNeed
T = ResourceType
P = LwM2mPath


def test_format_numbers() -> None:
    assert F.of(1542) is F.TLV and F.of(1543) is F.LWM2M_JSON and F.of(112) is F.SENML_CBOR
    assert F.known(9999) is None
    with pytest.raises(CodecError, match="unsupported content format 50"):
        F.of(50)


def test_legacy_tlv_number_decodes_and_encodes() -> None:
    node = SingleResource(9, b"d", T.OPAQUE)
    assert registry.decode(1542, b"\xc1\x09\x64", P(3, 0, 9)) == node
    assert registry.encode(F.TLV_OLD, node, P(3, 0, 9)) == b"\xc1\x09\x64"


@pytest.mark.parametrize("fmt", [F.LINK, 50, 9999])
def test_unsupported_formats(fmt: int) -> None:
    with pytest.raises(CodecError):
        registry.decode(fmt, b"", P(3, 0, 9))
    with pytest.raises(CodecError):
        registry.encode(fmt, SingleResource(9, 1, T.INTEGER), P(3, 0, 9))


@pytest.mark.parametrize("fmt", [F.TEXT, F.OPAQUE, F.CBOR, F.TLV])
def test_formats_without_composite(fmt: F) -> None:
    with pytest.raises(CodecError, match="several paths"):
        registry.decode(fmt, b"1", None)
    with pytest.raises(CodecError, match="several paths"):
        registry.encode(fmt, {P(3, 0, 9): 1}, None)
    with pytest.raises(CodecError):
        registry.decode_paths(fmt, b"")
    with pytest.raises(CodecError):
        registry.encode_paths(fmt, [P(3)])
    with pytest.raises(CodecError, match="timestamped"):
        registry.encode_timestamped(fmt, [])
    with pytest.raises(CodecError, match="needs the request path"):
        registry.decode_timestamped(fmt, b"1", None)


def test_single_value_formats_refuse_nodes() -> None:
    node = ObjectInstanceNode(0, {9: SingleResource(9, 1, T.INTEGER)})
    for fmt in (F.TEXT, F.OPAQUE, F.CBOR):
        with pytest.raises(CodecError, match="carries one value"):
            registry.encode(fmt, node, P(3, 0))
        with pytest.raises(CodecError):
            registry.decode(fmt, b"1", P(3, 0))


def test_encode_node_needs_its_path() -> None:
    with pytest.raises(CodecError, match="needs the path"):
        registry.encode(F.TLV, SingleResource(9, 1, T.INTEGER), None)  # type: ignore[call-overload]


def test_decode_timestamped_of_untimed_formats() -> None:
    payload = registry.encode(F.TLV, MultipleResource(7, {0: 1, 1: 2}, T.INTEGER), P(3, 0, 7))
    assert registry.decode_timestamped(F.TLV, payload, P(3, 0, 7)) == [
        TimestampedValue(P(3, 0, 7, 0), b"\x01", None), TimestampedValue(P(3, 0, 7, 1), b"\x02", None)]
    assert registry.decode_timestamped(F.TEXT, b"95", P(3, 0, 9)) == [TimestampedValue(P(3, 0, 9), "95", None)]


def test_root_path_node_is_refused_by_self_describing_formats() -> None:
    with pytest.raises(CodecError):
        registry.decode(F.SENML_JSON, b'[{"n":"/3/0/9","v":1}]', P())


@pytest.mark.parametrize(
    ("formats", "need", "version", "preferred", "expected"),
    [
        # one value: plain text, opaque for opaque resources
        ([], N.VALUE, "1.0", None, F.TEXT),
        ([110, 112], N.VALUE, "1.1", None, F.TEXT),
        ([112], N.VALUE, "1.1", 112, F.SENML_CBOR),  # the client's preference
        ([], N.VALUE, "1.1", 42, F.TEXT),  # opaque cannot carry any value
        ([112], N.OPAQUE_VALUE, "1.1", None, F.OPAQUE),
        # nodes: TLV for 1.0, SenML CBOR for 1.1+ when declared
        ([], N.NODE, "1.0", None, F.TLV),
        ([], N.NODE, "1.1", None, F.TLV),
        ([60, 110, 112, 1542, 1543, 11542, 11543], N.NODE, "1.1", None, F.SENML_CBOR),
        ([110, 11542], N.NODE, "1.1", None, F.SENML_JSON),
        ([11542, 11543], N.NODE, "1.1", None, F.TLV),
        ([1542], N.NODE, "1.1", None, F.TLV_OLD),  # the number the client knows
        ([1542, 11542], N.NODE, "1.1", None, F.TLV),
        ([11543], N.NODE, "1.1", None, F.LWM2M_JSON),
        ([11544, 110], N.NODE, "1.2", None, F.LWM2M_CBOR),
        ([110, 112], N.NODE, "1.1", 110, F.SENML_JSON),
        ([], N.NODE, "1.0", 11543, F.LWM2M_JSON),
        # composite
        ([60, 110, 112], N.COMPOSITE, "1.1", None, F.SENML_CBOR),
        ([110, 11542], N.COMPOSITE, "1.1", None, F.SENML_JSON),
        ([11544], N.COMPOSITE, "1.2", None, F.LWM2M_CBOR),
        ([], N.COMPOSITE, "1.1", None, F.SENML_CBOR),
        ([110, 112], N.COMPOSITE, "1.1", 110, F.SENML_JSON),
        ([110, 112], N.COMPOSITE, "1.1", 11542, F.SENML_CBOR),  # TLV cannot do composite
        ([99999, -1], N.NODE, "1.1", 77, F.TLV),  # unknown numbers are ignored
    ],
)
def test_choose_format(formats: list[int], need: FormatNeed, version: str, preferred: int | None,
                       expected: F) -> None:
    assert choose_format(formats, need, lwm2m_version=version, preferred=preferred) is expected
