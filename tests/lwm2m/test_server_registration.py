"""The registration interface without sockets: Register/Update parameters, versions, bindings, payloads."""

from __future__ import annotations

import contextlib

import pytest
from aiocoap.numbers.codes import Code
from hypothesis import given
from hypothesis import strategies as st

from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.server.registration import (
    DEFAULT_LIFETIME,
    RegistrationError,
    RegistrationUpdate,
    parse_register,
    parse_update,
)

LINK = ContentFormat.LINK
REAL_11 = (
    b'</>;rt="oma.lwm2m";ct="60 110 112 1542 1543 11542 11543",'
    b"</1>;ver=1.1,</1/0>,</2>,</3>;ver=1.1,</3/0>,</3442/0>"
)


def test_register_minimal_defaults() -> None:
    req = parse_register(["ep=dev"], b"</3/0>", None)
    assert req.endpoint == "dev"
    assert req.lifetime == DEFAULT_LIFETIME
    assert req.lwm2m_version == "1.0"
    assert (req.binding, req.queue_mode) == ("U", False)  # b= missing means UDP
    assert req.sms is None
    assert list(req.links.objects) == [3]


def test_register_real_11_payload() -> None:
    req = parse_register(["ep=anjay", "lt=86400", "lwm2m=1.1", "b=U"], REAL_11, LINK)
    assert req.lwm2m_version == "1.1"
    assert sorted(req.links.objects) == [1, 2, 3, 3442]
    assert req.links.objects[3].version == "1.1"
    assert ContentFormat.SENML_CBOR in req.links.content_formats


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2", '"1.0"'])
def test_served_versions(version: str) -> None:
    assert parse_register(["ep=d", f"lwm2m={version}"], b"</3/0>", LINK).lwm2m_version == version.strip('"')


@pytest.mark.parametrize("version", ["1.3", "2.0", "0.9", "10.1"])
def test_versions_the_server_cannot_speak_get_412(version: str) -> None:
    with pytest.raises(RegistrationError) as e:
        parse_register(["ep=d", f"lwm2m={version}"], b"</3/0>", LINK)
    assert e.value.code == Code.PRECONDITION_FAILED
    assert version in e.value.reason


@pytest.mark.parametrize(
    ("query", "payload", "cf", "code", "reason"),
    [
        (["lt=60"], b"</3/0>", LINK, Code.BAD_REQUEST, "missing endpoint"),
        (["ep="], b"</3/0>", LINK, Code.BAD_REQUEST, "empty endpoint"),
        (["ep=a\x01b"], b"</3/0>", LINK, Code.BAD_REQUEST, "control characters"),
        (["ep=d", "lt=abc"], b"</3/0>", LINK, Code.BAD_REQUEST, "lt='abc'"),
        (["ep=d", "lt=0"], b"</3/0>", LINK, Code.BAD_REQUEST, "out of range"),
        (["ep=d", "lt"], b"</3/0>", LINK, Code.BAD_REQUEST, "lifetime"),
        (["ep=d", "lwm2m=one"], b"</3/0>", LINK, Code.BAD_REQUEST, "not a version"),
        (["ep=d", "lwm2m=1.1.1"], b"</3/0>", LINK, Code.BAD_REQUEST, "not a version"),
        (["ep=d", "b=X"], b"</3/0>", LINK, Code.BAD_REQUEST, "not a binding"),
        (["ep=d", "b=UU"], b"</3/0>", LINK, Code.BAD_REQUEST, "not a binding"),
        (["ep=d", "b=Q"], b"</3/0>", LINK, Code.BAD_REQUEST, "names no transport"),
        (["ep=d", "ep=e"], b"</3/0>", LINK, Code.BAD_REQUEST, "given twice"),
        (["ep=d"], b"hello", LINK, Code.BAD_REQUEST, "object list"),
        (["ep=d"], b"</3/0", LINK, Code.BAD_REQUEST, "unterminated"),
        (["ep=d"], b"</3/abc>", LINK, Code.BAD_REQUEST, "object list"),
        (["ep=d"], b"\xff\xfe", LINK, Code.BAD_REQUEST, "UTF-8"),
        (["ep=d"], b'{"objects": [3]}', 50, Code.UNSUPPORTED_CONTENT_FORMAT, "link format"),
    ],
)
def test_garbage_is_refused_with_a_reason(
    query: list[str], payload: bytes, cf: int, code: Code, reason: str
) -> None:
    with pytest.raises(RegistrationError) as e:
        parse_register(query, payload, cf)
    assert e.value.code == code
    assert reason in e.value.reason


def test_lenient_link_format() -> None:
    # quoted 1.0 ver, unquoted 1.1 ver, unknown attributes and objects, whitespace, empty elements
    payload = b'</1/0>;ver="1.0", </3>;ver=1.1;foo=bar,,</3/0>;x,</65000/3>, </0/0>'
    req = parse_register(["ep=d"], payload, LINK)
    assert sorted(req.links.objects) == [1, 3, 65000]  # the Security object is never registered
    assert req.links.objects[1].version == "1.0"
    assert req.links.objects[3].version == "1.1"


def test_alternate_root_path() -> None:
    req = parse_register(["ep=d"], b'</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3303/0>', LINK)
    assert req.links.root_path == "/lwm2m"
    assert sorted(req.links.objects) == [1, 3303]


def test_empty_register_payload_is_accepted() -> None:
    assert parse_register(["ep=d"], b"", None).links.objects == {}


@pytest.mark.parametrize(
    ("query", "binding", "queue"),
    [
        (["b=UQ"], "UQ", True),  # LwM2M 1.0 style
        (["b=U", "Q"], "U", True),  # 1.1 style
        (["Q"], "U", True),
        (["b=US"], "US", False),
        (["b=N"], "N", False),
        (["b=T"], "T", False),
    ],
)
def test_bindings(query: list[str], binding: str, queue: bool) -> None:
    req = parse_register(["ep=d", *query], b"", None)
    assert (req.binding, req.queue_mode) == (binding, queue)


def test_unknown_query_parameters_are_ignored() -> None:
    assert parse_register(["ep=d", "pid=12", "apn=x", "", "sms=+123"], b"", None).sms == "+123"


def test_update_carries_only_what_changed() -> None:
    assert parse_update([], b"", None) == RegistrationUpdate()
    assert parse_update([], b"", None).empty
    update = parse_update(["lt=120"], b"", None)
    assert (update.lifetime, update.binding, update.links) == (120, None, None)
    update = parse_update(["Q"], b"", None)
    assert (update.binding, update.queue_mode) == (None, True)
    update = parse_update(["b=U"], b"", None)
    assert (update.binding, update.queue_mode) == ("U", False)
    update = parse_update([], b"</3/0>,</3303/0>", LINK)
    assert update.links is not None and sorted(update.links.objects) == [3, 3303]
    with pytest.raises(RegistrationError):
        parse_update(["lt=-1"], b"", None)


def test_identical_payloads_share_one_parse() -> None:
    a = parse_register(["ep=a"], b"</1/0>,</3/0>,</3303/0>", LINK)
    b = parse_register(["ep=b"], b"</1/0>,</3/0>,</3303/0>", LINK)
    assert a.links is b.links


@given(st.lists(st.text(max_size=30), max_size=8), st.binary(max_size=200), st.sampled_from([None, 0, 40, 50, 11542]))
def test_fuzzed_register_raises_only_registration_error(query: list[str], payload: bytes, cf: int | None) -> None:
    with contextlib.suppress(RegistrationError):
        parse_register(query, payload, cf)


@given(st.lists(st.sampled_from(["ep=d", "lt=5", "lwm2m=1.1", "b=U", "Q", "sms=1", "lt=x"]), max_size=6),
       st.binary(max_size=100))
def test_fuzzed_update_raises_only_registration_error(query: list[str], payload: bytes) -> None:
    with contextlib.suppress(RegistrationError):
        parse_update(query, payload, 40)
