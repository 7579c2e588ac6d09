"""ThingsBoard's MQTT device and gateway APIs as pure code: topics, payload builders, downlink parsers.

Nothing here does I/O. Builders turn outbox records (whose ``body`` is JSON text serialised once by its
producer) into MQTT payloads by string concatenation, never by re-parsing the bodies; parsers turn
what ThingsBoard sends down into small frozen dataclasses and raise :class:`ProtocolError` (and only
that) for anything malformed. Facts: docs/THINGSBOARD_API.md.

>>> from gateway.core.records import Record, RecordKind
>>> recs = [Record(1, RecordKind.TELEMETRY, "A", 1000, '{"t":1}'),
...         Record(2, RecordKind.TELEMETRY, "B", None, '{"t":2}'),
...         Record(3, RecordKind.TELEMETRY, "A", 2000, '{"t":3}')]
>>> p = pack(recs, 65536)
>>> p.topic, p.count
('v1/gateway/telemetry', 3)
>>> p.payload.decode()
'{"A":[{"ts":1000,"values":{"t":1}},{"ts":2000,"values":{"t":3}}],"B":[{"t":2}]}'

Caveats:
- Bodies are trusted to be JSON objects (the producers serialise them with ``json.dumps``); a
  malformed body makes a malformed ThingsBoard message, which the server rejects.
- Within one gateway telemetry message, records are grouped by device (a JSON object cannot repeat a
  device key without the server keeping only the last); each device's records keep their order,
  and records of different kinds are never packed together, so a CONNECT between two telemetry
  records of a device stays between them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from gateway.core.records import Record, RecordKind

JsonValue: TypeAlias = Any
"""A value as ``json.loads`` returns it (dict, list, str, int, float, bool or None)."""

# -- topics ------------------------------------------------------------------------------------

DEVICE_TELEMETRY = "v1/devices/me/telemetry"
DEVICE_ATTRIBUTES = "v1/devices/me/attributes"
DEVICE_ATTRIBUTES_REQUEST = "v1/devices/me/attributes/request/"  # + request id
DEVICE_ATTRIBUTES_RESPONSE = "v1/devices/me/attributes/response/"  # + request id
DEVICE_RPC_REQUEST = "v1/devices/me/rpc/request/"  # + request id (both directions)
DEVICE_RPC_RESPONSE = "v1/devices/me/rpc/response/"  # + request id (both directions)
DEVICE_CLAIM = "v1/devices/me/claim"

GATEWAY_CONNECT = "v1/gateway/connect"
GATEWAY_DISCONNECT = "v1/gateway/disconnect"
GATEWAY_TELEMETRY = "v1/gateway/telemetry"
GATEWAY_ATTRIBUTES = "v1/gateway/attributes"
GATEWAY_ATTRIBUTES_REQUEST = "v1/gateway/attributes/request"
GATEWAY_ATTRIBUTES_RESPONSE = "v1/gateway/attributes/response"
GATEWAY_RPC = "v1/gateway/rpc"
GATEWAY_CLAIM = "v1/gateway/claim"

#: What the gateway subscribes to on every connect: the device API's and the gateway API's downlinks.
DOWNLINK_SUBSCRIPTIONS: tuple[str, ...] = (
    DEVICE_ATTRIBUTES,
    DEVICE_ATTRIBUTES_RESPONSE + "+",
    DEVICE_RPC_REQUEST + "+",
    DEVICE_RPC_RESPONSE + "+",
    GATEWAY_RPC,
    GATEWAY_ATTRIBUTES,
    GATEWAY_ATTRIBUTES_RESPONSE,
)

TOPIC_BY_KIND: Mapping[RecordKind, str] = {
    RecordKind.TELEMETRY: GATEWAY_TELEMETRY,
    RecordKind.ATTRIBUTES: GATEWAY_ATTRIBUTES,
    RecordKind.CONNECT: GATEWAY_CONNECT,
    RecordKind.DISCONNECT: GATEWAY_DISCONNECT,
    RecordKind.CLAIM: GATEWAY_CLAIM,
    RecordKind.SELF_TELEMETRY: DEVICE_TELEMETRY,
    RecordKind.SELF_ATTRIBUTES: DEVICE_ATTRIBUTES,
    RecordKind.SELF_CLAIM: DEVICE_CLAIM,
}

#: ThingsBoard's defaults, used when the server does not answer ``getSessionLimits``.
DEFAULT_MAX_PAYLOAD_SIZE = 65536
DEFAULT_MAX_INFLIGHT_MESSAGES = 100


class ProtocolError(ValueError):
    """Something ThingsBoard sent (or would be sent) does not follow its API.

    ``request_id`` and ``device`` carry what could be read before the problem was found, so that a
    malformed request can still be answered with an error.
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        request_id: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(f"{topic}: {message}" if topic else message)
        self.topic = topic
        self.request_id = request_id
        self.device = device


def dumps(value: JsonValue) -> str:
    """Compact JSON text as ThingsBoard gets it (UTF-8, no NaN/Infinity)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# -- uplink: packing outbox records ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packed:
    """One MQTT publish built from ``count`` consecutive records starting where packing began."""

    topic: str
    payload: bytes
    count: int


def payload_budget(topic: str, max_payload_size: int) -> int:
    """The largest payload that may be published on ``topic`` under the session's ``maxPayloadSize``.

    ThingsBoard decodes with Netty's ``MqttDecoder(maxPayloadSize)``, whose limit applies to the
    PUBLISH packet's remaining part: topic (2 + its bytes), packet id (2) and payload. Staying under
    that also satisfies the stricter reading (payload only).
    """
    return max_payload_size - len(topic.encode()) - 4


def _blen(text: str) -> int:
    # str.isascii() is O(1) for ASCII-only compact strings; that is the common case.
    return len(text) if text.isascii() else len(text.encode())


def _members(body: str) -> str:
    """The members of a JSON object's text, without the braces (``'{"a":1}'`` -> ``'"a":1'``)."""
    body = body.strip()
    return body[1:-1].strip() if len(body) >= 2 and body[0] == "{" and body[-1] == "}" else ""


def pack(records: Sequence[Record], max_payload_size: int, start: int = 0) -> Packed | None:
    """Pack ``records[start:]`` into the next publish, as many as fit and share one topic.

    Only consecutive records of the same kind are packed together. Returns ``None`` when
    ``records[start]`` alone does not fit into ``max_payload_size``: it can never be sent and the
    caller must drop it. Raises ``IndexError`` when ``start`` is past the end.
    """
    first = records[start]
    kind = first.kind
    topic = TOPIC_BY_KIND[kind]
    budget = payload_budget(topic, max_payload_size)
    if kind is RecordKind.TELEMETRY:
        return _pack_gateway_telemetry(records, start, topic, budget)
    if kind is RecordKind.SELF_TELEMETRY:
        return _pack_device_telemetry(records, start, topic, budget)
    if kind is RecordKind.ATTRIBUTES or kind is RecordKind.CLAIM:
        return _pack_gateway_objects(records, start, topic, budget, merge=kind is RecordKind.ATTRIBUTES)
    if kind is RecordKind.SELF_ATTRIBUTES:
        return _pack_device_attributes(records, start, topic, budget)
    # One record per publish: connect, disconnect and the gateway's own claim each name one device.
    if kind is RecordKind.SELF_CLAIM:
        text = first.body
    else:
        members = _members(first.body)
        text = '{"device":' + dumps(first.device) + ("," + members if members else "") + "}"
    payload = text.encode()
    return Packed(topic, payload, 1) if len(payload) <= budget else None


def pack_all(records: Sequence[Record], max_payload_size: int) -> tuple[list[Packed], list[Record]]:
    """Pack every record: the publishes in order, and the records too large to ever be sent."""
    out: list[Packed] = []
    oversize: list[Record] = []
    i = 0
    while i < len(records):
        p = pack(records, max_payload_size, i)
        if p is None:
            oversize.append(records[i])
            i += 1
        else:
            out.append(p)
            i += p.count
    return out, oversize


def _entry(ts: int | None, body: str) -> str:
    # Without a timestamp the server stamps the values on arrival: the body alone is the entry.
    return body if ts is None else f'{{"ts":{ts},"values":{body}}}'


_KEYS: dict[str, tuple[str, int]] = {}  # device -> (its JSON string, its UTF-8 length): the hot path's cache
_KEYS_MAX = 65536


def _key(device: str) -> tuple[str, int]:
    key = _KEYS.get(device)
    if key is None:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        text = dumps(device)
        key = _KEYS[device] = (text, _blen(text))
    return key


def _pack_gateway_telemetry(records: Sequence[Record], start: int, topic: str, budget: int) -> Packed | None:
    # {"A":[e1,e2],"B":[e3]}: 2 braces + per device (key + ':[' + ']' + a comma but the first) + entries
    # and the commas between them. The hot loop of the uplink: keep it plain.
    groups: dict[str, list[str]] = {}  # device -> ['"A":[' + first entry, entry, ...]
    size = 1  # "{" + "}" - the comma the first device does not have
    n = len(records)
    i = start
    kind = RecordKind.TELEMETRY
    keys = _KEYS
    while i < n:
        r = records[i]
        if r.kind is not kind:
            break
        ts = r.ts_ms
        entry = r.body if ts is None else f'{{"ts":{ts},"values":{r.body}}}'
        add = len(entry) if entry.isascii() else len(entry.encode())
        group = groups.get(r.device)
        if group is None:
            key = keys.get(r.device) or _key(r.device)
            add += key[1] + 4  # key + ":[" + "]" + ","
            if size + add > budget:
                break
            groups[r.device] = [key[0] + ":[" + entry]
        else:
            add += 1
            if size + add > budget:
                break
            group.append(entry)
        size += add
        i += 1
    if i == start:
        return None
    text = "{" + "],".join(map(",".join, groups.values())) + "]}"
    return Packed(topic, text.encode(), i - start)


def _pack_device_telemetry(records: Sequence[Record], start: int, topic: str, budget: int) -> Packed | None:
    entries: list[str] = []
    size = 2  # [ ]
    n = len(records)
    i = start
    kind = RecordKind.SELF_TELEMETRY
    while i < n:
        r = records[i]
        if r.kind is not kind:
            break
        entry = _entry(r.ts_ms, r.body)
        add = _blen(entry) + (1 if entries else 0)
        if size + add > budget:
            break
        entries.append(entry)
        size += add
        i += 1
    if i == start:
        return None
    return Packed(topic, ("[" + ",".join(entries) + "]").encode(), i - start)


def _merge_objects(bodies: Sequence[str]) -> str | None:
    """Merge JSON object texts key by key, later ones winning; ``None`` if one is not an object."""
    merged: dict[str, Any] = {}
    for body in bodies:
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(value, dict):
            return None
        merged.update(value)
    return dumps(merged)


def _pack_gateway_objects(
    records: Sequence[Record], start: int, topic: str, budget: int, *, merge: bool
) -> Packed | None:
    """``{"A":{..},"B":{..}}`` for gateway attributes (merged per device) and claims (last wins).

    A device repeating within one message is rare (two attribute sets in one burst); only then are
    its bodies parsed and merged, so that the message names each device once.
    """
    objs: dict[str, tuple[str, str, int]] = {}  # device -> (key JSON, object text, bytes of key:text)
    total = 0  # bytes of all key:text items, without the separating commas
    n = len(records)
    i = start
    kind = records[start].kind
    while i < n:
        r = records[i]
        if r.kind is not kind:
            break
        prev = objs.get(r.device)
        if prev is None:
            key = dumps(r.device)
            text = r.body
            new_total = total + _blen(key) + 1 + _blen(text)
            count = len(objs) + 1
        else:
            key = prev[0]
            if merge:
                merged = _merge_objects((prev[1], r.body))
                if merged is None:
                    break  # not mergeable: it goes, as it is, into the next message
                text = merged
            else:
                text = r.body  # a newer claim replaces the older one
            new_total = total - prev[2] + _blen(key) + 1 + _blen(text)
            count = len(objs)
        if 2 + new_total + count - 1 > budget:
            break
        objs[r.device] = (key, text, new_total - total + (prev[2] if prev else 0))
        total = new_total
        i += 1
    if i == start:
        return None
    payload = ("{" + ",".join(k + ":" + t for k, t, _ in objs.values()) + "}").encode()
    return Packed(topic, payload, i - start)


def _pack_device_attributes(records: Sequence[Record], start: int, topic: str, budget: int) -> Packed | None:
    """The gateway's own client attributes: one object, later records winning key by key."""
    text = records[start].body
    if _blen(text) > budget:
        return None
    i = start + 1
    kind = RecordKind.SELF_ATTRIBUTES
    while i < len(records) and records[i].kind is kind:
        merged = _merge_objects((text, records[i].body))
        if merged is None or _blen(merged) > budget:
            break
        text = merged
        i += 1
    return Packed(topic, text.encode(), i - start)


# -- uplink: single messages -----------------------------------------------------------------------


def claim_body(secret_key: str | None = None, duration_ms: int | None = None) -> str:
    """The body of a claim record: ``{"secretKey":..,"durationMs":..}``, both optional."""
    body: dict[str, Any] = {}
    if secret_key is not None:
        body["secretKey"] = secret_key
    if duration_ms is not None:
        body["durationMs"] = duration_ms
    return dumps(body)


def gateway_rpc_reply(device: str, request_id: int, data: JsonValue) -> bytes:
    """The answer to a server-side RPC for a child device, published on :data:`GATEWAY_RPC`."""
    return dumps({"device": device, "id": request_id, "data": data}).encode()


def device_rpc_reply_topic(request_id: int) -> str:
    return f"{DEVICE_RPC_RESPONSE}{request_id}"


def client_rpc_topic(request_id: int) -> str:
    """Where the gateway publishes its own (client-side) RPC request ``request_id``."""
    return f"{DEVICE_RPC_REQUEST}{request_id}"


def client_rpc_request(method: str, params: JsonValue = None) -> bytes:
    return dumps({"method": method, "params": {} if params is None else params}).encode()


def attribute_request_topic(request_id: int) -> str:
    return f"{DEVICE_ATTRIBUTES_REQUEST}{request_id}"


def attribute_request(client_keys: Iterable[str] = (), shared_keys: Iterable[str] = ()) -> bytes:
    """A device-API attribute request: comma-separated key lists; an empty list is left out."""
    body: dict[str, str] = {}
    client = ",".join(client_keys)
    shared = ",".join(shared_keys)
    if client:
        body["clientKeys"] = client
    if shared:
        body["sharedKeys"] = shared
    return dumps(body).encode()


def gateway_attribute_request(request_id: int, device: str, keys: Sequence[str], *, client: bool) -> bytes:
    """A gateway-API attribute request in the form the server parses (``key`` for one, ``keys`` for more)."""
    if not keys:
        raise ValueError("an attribute request needs at least one key")
    body: dict[str, Any] = {"id": request_id, "device": device, "client": client}
    if len(keys) == 1:
        body["key"] = keys[0]
    else:
        body["keys"] = list(keys)
    return dumps(body).encode()


# -- downlink: parsing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AttributeUpdate:
    """Shared attributes of the gateway device changed (``v1/devices/me/attributes``)."""

    values: dict[str, JsonValue]
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AttributeResponse:
    """The answer to the gateway's own attribute request ``request_id``."""

    request_id: int
    client: dict[str, JsonValue]
    shared: dict[str, JsonValue]


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcRequest:
    """A server-side RPC to the gateway device itself."""

    request_id: int
    method: str
    params: JsonValue


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcResponse:
    """The answer to the gateway's client-side RPC ``request_id``."""

    request_id: int
    result: JsonValue


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayRpcRequest:
    """A server-side RPC to a child device, to be answered on :data:`GATEWAY_RPC`."""

    device: str
    request_id: int
    method: str
    params: JsonValue


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayAttributeUpdate:
    """Shared attributes of a child device changed."""

    device: str
    values: dict[str, JsonValue]
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayAttributeResponse:
    """The answer to a gateway-API attribute request.

    The server answers a one-key request with ``"value"`` (the key is not repeated: the requester
    knows it) and a several-key request with ``"values"``; a key it does not have is left out.
    """

    request_id: int
    device: str
    values: dict[str, JsonValue] | None = None
    value: JsonValue = None
    has_value: bool = False


Downlink: TypeAlias = (
    AttributeUpdate
    | AttributeResponse
    | RpcRequest
    | RpcResponse
    | GatewayRpcRequest
    | GatewayAttributeUpdate
    | GatewayAttributeResponse
)

_ID_SUFFIX = re.compile(r"[0-9]{1,18}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load(topic: str, payload: bytes, request_id: int | None = None) -> JsonValue:
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload is not UTF-8: {exc.reason}", topic=topic, request_id=request_id) from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}", topic=topic, request_id=request_id) from None


def _object(value: JsonValue, what: str, topic: str, **ctx: Any) -> dict[str, JsonValue]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {_kind(value)}", topic=topic, **ctx)
    return value


def _kind(value: JsonValue) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _string(obj: dict[str, JsonValue], key: str, topic: str, **ctx: Any) -> str:
    if key not in obj:
        raise ProtocolError(f'missing "{key}"', topic=topic, **ctx)
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise ProtocolError(f'"{key}" must be a non-empty string, got {_kind(value)}', topic=topic, **ctx)
    return value


def _int_id(obj: dict[str, JsonValue], key: str, topic: str, **ctx: Any) -> int:
    if key not in obj:
        raise ProtocolError(f'missing "{key}"', topic=topic, **ctx)
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f'"{key}" must be an integer, got {_kind(value)}', topic=topic, **ctx)
    return value


def _deleted(obj: dict[str, JsonValue], topic: str, **ctx: Any) -> tuple[dict[str, JsonValue], tuple[str, ...]]:
    values = dict(obj)
    deleted = values.pop("deleted", [])
    if not isinstance(deleted, list) or not all(isinstance(k, str) for k in deleted):
        raise ProtocolError('"deleted" must be an array of key names', topic=topic, **ctx)
    return values, tuple(deleted)


def _topic_id(topic: str, prefix: str) -> int:
    suffix = topic[len(prefix) :]
    if not _ID_SUFFIX.fullmatch(suffix):
        raise ProtocolError(f"request id {suffix!r} in the topic is not a number", topic=topic)
    return int(suffix)


def parse_downlink(topic: str, payload: bytes) -> Downlink:
    """Parse one message ThingsBoard sent on ``topic``; raise :class:`ProtocolError` if it is malformed."""
    if topic == GATEWAY_RPC:
        return _parse_gateway_rpc(topic, payload)
    if topic == GATEWAY_ATTRIBUTES:
        obj = _object(_load(topic, payload), "payload", topic)
        device = _string(obj, "device", topic)
        data = _object(obj.get("data"), '"data"', topic, device=device)
        values, deleted = _deleted(data, topic, device=device)
        return GatewayAttributeUpdate(device=device, values=values, deleted=deleted)
    if topic == GATEWAY_ATTRIBUTES_RESPONSE:
        obj = _object(_load(topic, payload), "payload", topic)
        request_id = _int_id(obj, "id", topic)
        device = _string(obj, "device", topic, request_id=request_id)
        if "values" in obj:
            values = _object(obj["values"], '"values"', topic, request_id=request_id, device=device)
            return GatewayAttributeResponse(request_id=request_id, device=device, values=values)
        if "value" in obj:
            return GatewayAttributeResponse(request_id=request_id, device=device, value=obj["value"], has_value=True)
        return GatewayAttributeResponse(request_id=request_id, device=device)
    if topic == DEVICE_ATTRIBUTES:
        obj = _object(_load(topic, payload), "payload", topic)
        values, deleted = _deleted(obj, topic)
        return AttributeUpdate(values=values, deleted=deleted)
    if topic.startswith(DEVICE_RPC_REQUEST):
        request_id = _topic_id(topic, DEVICE_RPC_REQUEST)
        obj = _object(_load(topic, payload, request_id), "payload", topic, request_id=request_id)
        method = _string(obj, "method", topic, request_id=request_id)
        return RpcRequest(request_id=request_id, method=method, params=obj.get("params"))
    if topic.startswith(DEVICE_RPC_RESPONSE):
        request_id = _topic_id(topic, DEVICE_RPC_RESPONSE)
        return RpcResponse(request_id=request_id, result=_load(topic, payload, request_id))
    if topic.startswith(DEVICE_ATTRIBUTES_RESPONSE):
        request_id = _topic_id(topic, DEVICE_ATTRIBUTES_RESPONSE)
        obj = _object(_load(topic, payload, request_id), "payload", topic, request_id=request_id)
        client = _object(obj.get("client", {}), '"client"', topic, request_id=request_id)
        shared = _object(obj.get("shared", {}), '"shared"', topic, request_id=request_id)
        return AttributeResponse(request_id=request_id, client=client, shared=shared)
    raise ProtocolError("not a ThingsBoard downlink topic", topic=topic)


def _parse_gateway_rpc(topic: str, payload: bytes) -> GatewayRpcRequest:
    obj = _object(_load(topic, payload), "payload", topic)
    if "id" in obj:
        # {"device","id","data"} is a reply: a plain broker echoes the gateway's own (ThingsBoard does not)
        raise ProtocolError("an RPC reply, not a request", topic=topic)
    device = _string(obj, "device", topic)
    data = _object(obj.get("data"), '"data"', topic, device=device)
    request_id = _int_id(data, "id", topic, device=device)
    method = _string(data, "method", topic, device=device, request_id=request_id)
    return GatewayRpcRequest(device=device, request_id=request_id, method=method, params=data.get("params"))
