"""gateway.upstream.thingsboard: packing outbox records into ThingsBoard messages, parsing downlinks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.records import Record, RecordKind
from gateway.upstream import thingsboard as tb

K = RecordKind


def rec(i: int, kind: RecordKind, device: str, body: Any, ts: int | None = None) -> Record:
    return Record(i, kind, device, ts, body if isinstance(body, str) else tb.dumps(body))


# -- packing --------------------------------------------------------------------------------------


def test_gateway_telemetry_groups_by_device_keeps_order_and_omits_missing_ts() -> None:
    records = [
        rec(1, K.TELEMETRY, "A", {"t": 1}, 1000),
        rec(2, K.TELEMETRY, "B", {"h": 2}, None),
        rec(3, K.TELEMETRY, "A", {"t": 3}, 3000),
    ]
    p = tb.pack(records, 65536)
    assert p is not None and p.topic == tb.GATEWAY_TELEMETRY and p.count == 3
    assert json.loads(p.payload) == {
        "A": [{"ts": 1000, "values": {"t": 1}}, {"ts": 3000, "values": {"t": 3}}],
        "B": [{"h": 2}],
    }


def test_a_kind_change_ends_the_message_so_connect_stays_between_telemetry() -> None:
    records = [
        rec(1, K.TELEMETRY, "A", {"t": 1}, 1),
        rec(2, K.CONNECT, "A", {"type": "thermo"}),
        rec(3, K.TELEMETRY, "A", {"t": 2}, 2),
        rec(4, K.DISCONNECT, "A", {}),
    ]
    packed, oversize = tb.pack_all(records, 65536)
    assert oversize == []
    assert [(p.topic, p.count) for p in packed] == [
        (tb.GATEWAY_TELEMETRY, 1),
        (tb.GATEWAY_CONNECT, 1),
        (tb.GATEWAY_TELEMETRY, 1),
        (tb.GATEWAY_DISCONNECT, 1),
    ]
    assert json.loads(packed[1].payload) == {"device": "A", "type": "thermo"}
    assert json.loads(packed[3].payload) == {"device": "A"}


def test_connect_and_disconnect_are_one_per_message() -> None:
    records = [rec(1, K.CONNECT, "A", {}), rec(2, K.CONNECT, "B", {"type": "x"})]
    packed, _ = tb.pack_all(records, 65536)
    assert [json.loads(p.payload) for p in packed] == [{"device": "A"}, {"device": "B", "type": "x"}]


def test_gateway_attributes_merge_per_device_later_wins() -> None:
    records = [
        rec(1, K.ATTRIBUTES, "A", {"fw": "1", "sn": "x"}),
        rec(2, K.ATTRIBUTES, "B", {"fw": "2"}),
        rec(3, K.ATTRIBUTES, "A", {"fw": "3"}),
    ]
    p = tb.pack(records, 65536)
    assert p is not None and p.count == 3 and p.topic == tb.GATEWAY_ATTRIBUTES
    assert json.loads(p.payload) == {"A": {"fw": "3", "sn": "x"}, "B": {"fw": "2"}}
    assert p.payload.count(b'"A"') == 1


def test_unmergeable_attribute_body_goes_into_the_next_message() -> None:
    records = [rec(1, K.ATTRIBUTES, "A", {"a": 1}), rec(2, K.ATTRIBUTES, "A", "[1]")]
    packed, _ = tb.pack_all(records, 65536)
    assert [p.count for p in packed] == [1, 1]


def test_gateway_claims_last_one_wins() -> None:
    records = [rec(1, K.CLAIM, "A", tb.claim_body("s1", 1000)), rec(2, K.CLAIM, "A", tb.claim_body("s2"))]
    p = tb.pack(records, 65536)
    assert p is not None and json.loads(p.payload) == {"A": {"secretKey": "s2"}}


def test_device_api_telemetry_attributes_and_claim() -> None:
    records = [
        rec(1, K.SELF_TELEMETRY, "", {"cpu": 1}, 5),
        rec(2, K.SELF_TELEMETRY, "", {"cpu": 2}),
        rec(3, K.SELF_ATTRIBUTES, "", {"v": "1", "a": 1}),
        rec(4, K.SELF_ATTRIBUTES, "", {"v": "2"}),
        rec(5, K.SELF_CLAIM, "", tb.claim_body("k")),
    ]
    packed, _ = tb.pack_all(records, 65536)
    assert [(p.topic, p.count) for p in packed] == [
        (tb.DEVICE_TELEMETRY, 2),
        (tb.DEVICE_ATTRIBUTES, 2),
        (tb.DEVICE_CLAIM, 1),
    ]
    assert json.loads(packed[0].payload) == [{"ts": 5, "values": {"cpu": 1}}, {"cpu": 2}]
    assert json.loads(packed[1].payload) == {"v": "2", "a": 1}
    assert json.loads(packed[2].payload) == {"secretKey": "k"}


def test_split_at_max_payload_size_counts_utf8_bytes() -> None:
    body = tb.dumps({"name": "äöü€" * 10})
    records = [rec(i, K.TELEMETRY, "Gerät-ü", body, 1_700_000_000_000 + i) for i in range(1, 200)]
    limit = 1000
    packed, oversize = tb.pack_all(records, limit)
    assert oversize == []
    assert sum(p.count for p in packed) == len(records)
    budget = tb.payload_budget(tb.GATEWAY_TELEMETRY, limit)
    for p in packed:
        assert len(p.payload) <= budget
        json.loads(p.payload)
    # full messages: the next record would not have fitted
    assert all(len(p.payload) > budget - 200 for p in packed[:-1])


def test_a_record_too_large_alone_is_reported() -> None:
    records = [rec(1, K.TELEMETRY, "A", {"x": "y" * 500}, 1), rec(2, K.TELEMETRY, "A", {"x": 1}, 2)]
    assert tb.pack(records, 300) is None
    packed, oversize = tb.pack_all(records, 300)
    assert [r.id for r in oversize] == [1] and [p.count for p in packed] == [1]


def test_payload_budget_leaves_room_for_topic_and_packet_id() -> None:
    assert tb.payload_budget(tb.GATEWAY_TELEMETRY, 65536) == 65536 - len(tb.GATEWAY_TELEMETRY) - 4


# Property: whatever the records and the limit, packing loses, reorders or invents nothing, and no
# message exceeds the budget.

devices = st.sampled_from(["A", "B", "Gerät ü", 'q"uote', "€"])
bodies = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8), max_size=3).map(tb.dumps)
kinds = st.sampled_from(list(RecordKind))


@st.composite
def record_lists(draw: st.DrawFn) -> list[Record]:
    n = draw(st.integers(0, 25))
    out = []
    for i in range(1, n + 1):
        kind = draw(kinds)
        device = "" if kind >= K.SELF_TELEMETRY else draw(devices)
        ts = draw(st.none() | st.integers(0, 2**45))
        out.append(Record(i, kind, device, ts, draw(bodies)))
    return out


def _unpack(p: tb.Packed) -> list[tuple[str, str, Any]]:
    """(topic, device, item) in the order the server would apply them per device."""
    doc = json.loads(p.payload)
    if p.topic == tb.GATEWAY_TELEMETRY:
        return [(p.topic, dev, entry) for dev, entries in doc.items() for entry in entries]
    if p.topic in (tb.GATEWAY_ATTRIBUTES, tb.GATEWAY_CLAIM):
        return [(p.topic, dev, body) for dev, body in doc.items()]
    if p.topic in (tb.GATEWAY_CONNECT, tb.GATEWAY_DISCONNECT):
        return [(p.topic, doc.pop("device"), doc)]
    if p.topic == tb.DEVICE_TELEMETRY:
        return [(p.topic, "", entry) for entry in doc]
    return [(p.topic, "", doc)]


def _expected_item(r: Record) -> Any:
    body = json.loads(r.body)
    if r.kind in (K.TELEMETRY, K.SELF_TELEMETRY):
        return body if r.ts_ms is None else {"ts": r.ts_ms, "values": body}
    return body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_lists(), st.integers(40, 3000))
def test_packing_property(records: list[Record], limit: int) -> None:
    packed, oversize = tb.pack_all(records, limit)
    oversize_ids = {r.id for r in oversize}
    # every record is either carried or reported oversize, in order
    i = 0
    for p in packed:
        while records[i].id in oversize_ids:
            i += 1
        run = records[i : i + p.count]
        assert {r.kind for r in run} == {run[0].kind} and tb.TOPIC_BY_KIND[run[0].kind] == p.topic
        assert len(p.payload) <= tb.payload_budget(p.topic, limit)
        items = _unpack(p)
        if p.topic in (tb.GATEWAY_ATTRIBUTES, tb.DEVICE_ATTRIBUTES):
            state: dict[str, dict[str, Any]] = {}
            for r in run:
                state.setdefault(r.device, {}).update(json.loads(r.body))
            assert {dev: item for _t, dev, item in items} == state
        elif p.topic == tb.GATEWAY_CLAIM:
            last = {r.device: json.loads(r.body) for r in run}
            assert {dev: item for _t, dev, item in items} == last
        else:
            for dev in {r.device for r in run}:
                assert [it for _t, d, it in items if d == dev] == [_expected_item(r) for r in run if r.device == dev]
        i += p.count
    assert all(r.id in oversize_ids for r in records[i:])
    for r in oversize:
        assert tb.pack([r], limit) is None


# -- builders -----------------------------------------------------------------------------------------


def test_builders() -> None:
    assert json.loads(tb.gateway_rpc_reply("A", 7, {"ok": True})) == {"device": "A", "id": 7, "data": {"ok": True}}
    assert json.loads(tb.attribute_request(["a", "b"], ["c"])) == {"clientKeys": "a,b", "sharedKeys": "c"}
    assert json.loads(tb.attribute_request()) == {}
    assert json.loads(tb.gateway_attribute_request(3, "A", ["k"], client=False)) == {
        "id": 3,
        "device": "A",
        "client": False,
        "key": "k",
    }
    assert json.loads(tb.gateway_attribute_request(4, "A", ["k", "l"], client=True))["keys"] == ["k", "l"]
    with pytest.raises(ValueError):
        tb.gateway_attribute_request(5, "A", [], client=True)
    assert json.loads(tb.client_rpc_request("getSessionLimits")) == {"method": "getSessionLimits", "params": {}}
    assert tb.client_rpc_topic(9) == "v1/devices/me/rpc/request/9"
    assert tb.device_rpc_reply_topic(9) == "v1/devices/me/rpc/response/9"
    assert json.loads(tb.claim_body(duration_ms=5)) == {"durationMs": 5}


# -- parsing ------------------------------------------------------------------------------------------


def j(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_parse_every_downlink_type() -> None:
    assert tb.parse_downlink(
        tb.GATEWAY_RPC, j({"device": "A", "data": {"id": 4, "method": "Read", "params": {"id": "/3/0/9"}}})
    ) == tb.GatewayRpcRequest(device="A", request_id=4, method="Read", params={"id": "/3/0/9"})
    assert tb.parse_downlink(
        tb.GATEWAY_ATTRIBUTES, j({"device": "A", "data": {"k": 1, "deleted": ["x"]}})
    ) == tb.GatewayAttributeUpdate(device="A", values={"k": 1}, deleted=("x",))
    assert tb.parse_downlink(
        tb.GATEWAY_ATTRIBUTES_RESPONSE, j({"id": 2, "device": "A", "value": 5})
    ) == tb.GatewayAttributeResponse(request_id=2, device="A", value=5, has_value=True)
    assert tb.parse_downlink(
        tb.GATEWAY_ATTRIBUTES_RESPONSE, j({"id": 2, "device": "A", "values": {"a": 1}})
    ) == tb.GatewayAttributeResponse(request_id=2, device="A", values={"a": 1})
    assert tb.parse_downlink(
        tb.GATEWAY_ATTRIBUTES_RESPONSE, j({"id": 2, "device": "A"})
    ) == tb.GatewayAttributeResponse(request_id=2, device="A")
    assert tb.parse_downlink(tb.DEVICE_ATTRIBUTES, j({"a": 1, "deleted": ["b"]})) == tb.AttributeUpdate(
        values={"a": 1}, deleted=("b",)
    )
    assert tb.parse_downlink("v1/devices/me/rpc/request/17", j({"method": "ping"})) == tb.RpcRequest(
        request_id=17, method="ping", params=None
    )
    assert tb.parse_downlink("v1/devices/me/rpc/response/3", j({"maxPayloadSize": 1})) == tb.RpcResponse(
        request_id=3, result={"maxPayloadSize": 1}
    )
    assert tb.parse_downlink("v1/devices/me/attributes/response/8", j({"shared": {"s": 1}})) == tb.AttributeResponse(
        request_id=8, client={}, shared={"s": 1}
    )


@pytest.mark.parametrize(
    ("topic", "payload", "message", "request_id", "device"),
    [
        (tb.GATEWAY_RPC, b"{not json", "malformed JSON", None, None),
        (tb.GATEWAY_RPC, b"\xff\xfe", "not UTF-8", None, None),
        (tb.GATEWAY_RPC, j([1]), "must be a JSON object", None, None),
        (tb.GATEWAY_RPC, j({"data": {}}), 'missing "device"', None, None),
        (tb.GATEWAY_RPC, j({"device": 3, "data": {}}), '"device" must be a non-empty string', None, None),
        (tb.GATEWAY_RPC, j({"device": "A", "data": {"id": "1"}}), '"id" must be an integer', None, "A"),
        (tb.GATEWAY_RPC, j({"device": "A", "data": {"id": True}}), '"id" must be an integer', None, "A"),
        (tb.GATEWAY_RPC, j({"device": "A", "data": {"id": 5}}), 'missing "method"', 5, "A"),
        (tb.GATEWAY_RPC, j({"device": "A", "id": 5, "data": {}}), "an RPC reply", None, None),
        (tb.GATEWAY_ATTRIBUTES, j({"device": "A", "data": {"deleted": "x"}}), '"deleted" must be', None, "A"),
        (tb.GATEWAY_ATTRIBUTES_RESPONSE, j({"device": "A"}), 'missing "id"', None, None),
        ("v1/devices/me/rpc/request/12", b"{", "malformed JSON", 12, None),
        ("v1/devices/me/rpc/request/12", j({"params": 1}), 'missing "method"', 12, None),
        ("v1/devices/me/rpc/request/x1", j({"method": "a"}), "not a number", None, None),
        ("v1/devices/me/rpc/request/\u0661", j({"method": "a"}), "not a number", None, None),
        ("v1/devices/me/attributes/response/1", j({"client": []}), '"client" must be a JSON object', 1, None),
        (tb.DEVICE_ATTRIBUTES, b"NaN", "malformed JSON", None, None),
        ("v2/fw/response/1/chunk/0", b"", "not a ThingsBoard downlink topic", None, None),
    ],
)
def test_parse_errors_are_clear(
    topic: str, payload: bytes, message: str, request_id: int | None, device: str | None
) -> None:
    with pytest.raises(tb.ProtocolError) as info:
        tb.parse_downlink(topic, payload)
    assert message in str(info.value) and topic in str(info.value)
    assert info.value.request_id == request_id and info.value.device == device


def test_deeply_nested_json_is_a_protocol_error() -> None:
    with pytest.raises(tb.ProtocolError):
        tb.parse_downlink(tb.DEVICE_ATTRIBUTES, b"[" * 100_000 + b"]" * 100_000)


topics = st.sampled_from(
    [
        tb.GATEWAY_RPC,
        tb.GATEWAY_ATTRIBUTES,
        tb.GATEWAY_ATTRIBUTES_RESPONSE,
        tb.DEVICE_ATTRIBUTES,
        "v1/devices/me/rpc/request/1",
        "v1/devices/me/rpc/response/2",
        "v1/devices/me/attributes/response/3",
    ]
) | st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        "device": json_values | st.text(max_size=5),
        "id": json_values | st.integers(),
        "data": json_values
        | st.fixed_dictionaries({}, optional={"id": json_values, "method": json_values, "params": json_values}),
        "method": json_values,
        "value": json_values,
        "values": json_values,
        "client": json_values,
        "shared": json_values,
        "deleted": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(topics, st.binary(max_size=200) | json_values.map(j) | shaped.map(j))
def test_parsers_raise_only_protocol_error(topic: str, payload: bytes) -> None:
    try:
        message = tb.parse_downlink(topic, payload)
    except tb.ProtocolError:
        return
    assert isinstance(
        message,
        tb.GatewayRpcRequest
        | tb.GatewayAttributeUpdate
        | tb.GatewayAttributeResponse
        | tb.AttributeUpdate
        | tb.AttributeResponse
        | tb.RpcRequest
        | tb.RpcResponse,
    )
