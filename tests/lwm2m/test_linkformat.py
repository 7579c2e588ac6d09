"""CoRE link format: the lenient parser, registration payloads (the real 1.1 payload of LWM2M_FACTS.md
section 6), Discover and Bootstrap-Discover both ways, and rejection of garbage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.linkformat import (
    DiscoveredLink,
    Link,
    LinkFormatError,
    RegisteredObject,
    RegistrationLinks,
    encode_discover,
    encode_links,
    encode_registration,
    parse_discover,
    parse_links,
    parse_registration,
)
from gateway.lwm2m.path import LwM2mPath

F = ContentFormat
P = LwM2mPath

REAL_1_1 = (
    b'</>;rt="oma.lwm2m";ct="60 110 112 1542 1543 11542 11543",</1>;ver=1.1,</1/0>,</2>,</3>;ver=1.1,</3/0>,'
    b"</3442/0>"
)


def test_real_1_1_registration() -> None:
    reg = parse_registration(REAL_1_1)
    assert reg.root_path == "/"
    assert reg.content_formats == (F.CBOR, F.SENML_JSON, F.SENML_CBOR, F.TLV_OLD, F.JSON_OLD, F.TLV, F.LWM2M_JSON)
    assert reg.objects == {
        1: RegisteredObject(1, "1.1", (0,)),
        2: RegisteredObject(2, None, ()),
        3: RegisteredObject(3, "1.1", (0,)),
        3442: RegisteredObject(3442, None, (0,)),
    }
    assert list(reg.objects) == [1, 2, 3, 3442]


def test_registration_round_trip() -> None:
    reg = parse_registration(REAL_1_1)
    assert parse_registration(encode_registration(reg)) == reg
    assert encode_registration(reg) == REAL_1_1


def test_1_0_registration_with_quoted_versions() -> None:
    reg = parse_registration(b'</1/0>,</3/0>,</4/0>,</5>;ver="1.0",</3303/0>,</3303/1>;ver="1.1"')
    assert reg.root_path == "/" and reg.content_formats == ()
    assert reg.objects[5] == RegisteredObject(5, "1.0", ())
    assert reg.objects[3303] == RegisteredObject(3303, "1.1", (0, 1))
    again = encode_registration(reg, quote_versions=True)
    assert b'ver="1.0"' in again and parse_registration(again) == reg


def test_alternate_root() -> None:
    reg = parse_registration(b'</lwm2m>;rt="oma.lwm2m";ct=110,</lwm2m/1/0>,</lwm2m/3/0>,</lwm2m/5>')
    assert reg.root_path == "/lwm2m"
    assert reg.content_formats == (F.SENML_JSON,)
    assert set(reg.objects) == {1, 3, 5}
    assert parse_registration(encode_registration(reg)) == reg
    with pytest.raises(LinkFormatError, match="outside the root path /lwm2m"):
        parse_registration(b'</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</3/0>')
    with pytest.raises(LinkFormatError, match="outside the root"):
        parse_registration(b'</lwm2m/>;rt="oma.lwm2m",</lwm2mx/3/0>')


def test_root_link_without_rt_and_multi_valued_rt() -> None:
    assert parse_registration(b"</>;ct=60,</3/0>").content_formats == (F.CBOR,)
    reg = parse_registration(b'</>;rt="core.rd oma.lwm2m";ct="112",</3/0>')
    assert reg.content_formats == (F.SENML_CBOR,)


def test_lenient_forms() -> None:
    payload = b'  </1/0> ,\n\t</3/0> ; ver = 1.1 ,,</5>;obs;title="a,b;c \\"q\\"",\r\n</0/0>,</6/0>;rt=x\n'
    reg = parse_registration(payload)
    assert reg.objects == {1: RegisteredObject(1, None, (0,)), 3: RegisteredObject(3, "1.1", (0,)),
                           5: RegisteredObject(5, None, ()), 6: RegisteredObject(6, None, (0,))}
    links = parse_links(payload)
    assert links[2] == Link("/5", (("obs", None), ("title", 'a,b;c "q"')))
    assert links[2].has("obs") and links[2].get("obs") is None and not links[2].has("pmin")


def test_unknown_content_formats_are_dropped_and_duplicates_merged() -> None:
    reg = parse_registration(b'</>;rt="oma.lwm2m";ct="50 110 110 11544",</3/0>')
    assert reg.content_formats == (F.SENML_JSON, F.LWM2M_CBOR)


def test_security_object_is_ignored() -> None:
    assert 0 not in parse_registration(b"</0/0>,</1/0>").objects


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "no links"),
        (b"  \n ", "no links"),
        (b",,", "no links"),
        (b"</3/0", "unterminated '<' at offset 0"),
        (b"</3/0>,</4/0", "unterminated '<' at offset 7"),
        (b"</3/0,</4/0>", "unterminated '<'"),
        (b'</3/0>;title="abc', "unterminated quoted value"),
        (b"hello", "expected '<' at offset 0"),
        (b"</3/0> x", "expected ';' or ','"),
        (b'</3/0>;ver="1.1"x', "expected ';' or ','"),
        (b"</3/0>;=5", "missing parameter name"),
        (b'</3/0>;ver=1"1', "stray"),
        (b"</3/\xff>", "not UTF-8"),
        (b"</70000/0>", "70000 > 65535"),
        (b"</3/65535>", "reserved"),
        (b"</3/-1>", "not a number"),
        (b"</foo/bar>", "not a number"),
        (b"<coap://host/3/0>", "must start with '/'"),
        (b"</3/0/1/2/3>", "more than 4 levels"),
        (b"</3>;ver=x", "invalid ver"),
        (b"</3>;ver=1", "invalid ver"),
        (b'</>;rt="oma.lwm2m";ct="60 abc",</3/0>', "not a content format"),
        (b'</>;ct="-1",</3/0>', "not a content format"),
    ],
)
def test_registration_rejects(payload: bytes, complaint: str) -> None:
    with pytest.raises(LinkFormatError, match=complaint):
        parse_registration(payload)


# -- Discover ------------------------------------------------------------------------------------------------


def test_discover_with_attributes() -> None:
    payload = b"</3/0/9>;pmin=10;pmax=60,</3/0/1>"
    links = parse_discover(payload)
    assert links == [DiscoveredLink(P(3, 0, 9), {"pmin": "10", "pmax": "60"}), DiscoveredLink(P(3, 0, 1), {})]
    assert encode_discover(links) == payload


def test_discover_object_with_dim_and_versions() -> None:
    payload = b"</3>;ver=1.1,</3/0>;pmin=10,</3/0/1>,</3/0/7>;dim=2;gt=50.5,</3/0/7/0>,</3/0/7/1>,</3/0/13>"
    links = parse_discover(payload)
    assert links[0] == DiscoveredLink(P(3), {"ver": "1.1"})
    assert links[3] == DiscoveredLink(P(3, 0, 7), {"dim": "2", "gt": "50.5"})
    assert encode_discover(links) == payload


def test_bootstrap_discover() -> None:
    payload = b'</>;lwm2m=1.1,</0/0>;ssid=101;uri="coap://server:5683",</0/1>,</1/0>;ssid=101,</3/0>'
    links = parse_discover(payload)
    assert links[0] == DiscoveredLink(P(), {"lwm2m": "1.1"})
    assert links[1] == DiscoveredLink(P(0, 0), {"ssid": "101", "uri": "coap://server:5683"})
    assert links[3].path == P(1, 0) and links[4] == DiscoveredLink(P(3, 0), {})
    assert encode_discover(links) == payload


def test_discover_under_an_alternate_root() -> None:
    links = parse_discover(b"</lwm2m/3/0/9>;pmax=60", root="/lwm2m")
    assert links == [DiscoveredLink(P(3, 0, 9), {"pmax": "60"})]
    assert encode_discover(links, root="/lwm2m") == b"</lwm2m/3/0/9>;pmax=60"
    with pytest.raises(LinkFormatError):
        parse_discover(b"</3/0/9>", root="/lwm2m")


def test_encode_quotes_what_needs_it() -> None:
    link = Link("/3/0", (("title", "a b"), ("ssid", "1"), ("uri", "coap://x"), ("obs", None), ("q", 'x"y')))
    assert encode_links([link]) == b'</3/0>;title="a b";ssid=1;uri="coap://x";obs;q="x\\"y"'
    assert parse_links(encode_links([link])) == [link]
    with pytest.raises(LinkFormatError):
        encode_links([Link("/3>", ())])
    with pytest.raises(LinkFormatError):
        encode_links([Link("/3", (("a;b", "1"),))])


# -- properties ---------------------------------------------------------------------------------------------

names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_."), min_size=1, max_size=8)
values = st.none() | st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
targets = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="<>"), max_size=15).map(
    lambda t: "/" + t.strip(" \t\r\n"))
links = st.builds(Link, targets, st.lists(st.tuples(names, values), max_size=4).map(tuple))


@given(st.lists(links, min_size=1, max_size=5))
def test_links_round_trip(original: list[Link]) -> None:
    parsed = parse_links(encode_links(original))
    # the writer cannot keep whitespace at the ends of an unquoted value, nor of a target
    assert parsed == original


@given(st.dictionaries(st.integers(1, 65535), st.tuples(
    st.none() | st.sampled_from(["1.0", "1.1", "1.2", "2.0"]), st.sets(st.integers(0, 65534), max_size=3))))
def test_registration_property_round_trip(objects: dict[int, tuple[str | None, set[int]]]) -> None:
    reg = RegistrationLinks("/", (F.SENML_CBOR,), {
        oid: RegisteredObject(oid, ver, tuple(sorted(iids))) for oid, (ver, iids) in objects.items()})
    assert parse_registration(encode_registration(reg)) == reg


@settings(max_examples=300)
@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_parsers_raise_only_link_format_error(payload: bytes) -> None:
    for parse in (parse_links, parse_registration, parse_discover):
        with contextlib.suppress(LinkFormatError):
            parse(payload)


@settings(max_examples=300)
@given(st.data())
def test_mutated_registration_raises_only_link_format_error(data: st.DataObject) -> None:
    payload = bytearray(REAL_1_1)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.sampled_from(b'<>;,="/ \\0123456789\xff'))
    with contextlib.suppress(LinkFormatError):
        parse_registration(bytes(payload))
