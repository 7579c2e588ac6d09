"""The ThingsBoard MQTT-transport emulator, driven by paho-mqtt 2.x clients (a peer we did not write)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.sim.tbemu import (
    DEFAULT_SESSION_LIMITS,
    BasicCredentials,
    ClientRpcRequest,
    Device,
    PayloadError,
    RpcError,
    ThingsBoardEmulator,
    TlsListener,
    parse_telemetry,
)

TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------
# A paho client bridged to asyncio: paho runs in its own thread (loop_start), results come back
# as futures and a message queue on the test's event loop.
# --------------------------------------------------------------------------------------------


class Client:
    def __init__(
        self,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
        tls: dict[str, str] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = port
        # No automatic reconnection: a test opens a new client when it wants one (and paho's
        # reconnect back-off would make loop_stop wait for up to a second).
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        self.paho.max_inflight_messages_set(0)
        if username is not None:
            self.paho.username_pw_set(username, password)
        if tls is not None:
            self.paho.tls_set(ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key"))
        self.connack: asyncio.Future[ReasonCode] = self.loop.create_future()
        self.disconnected: asyncio.Future[ReasonCode] = self.loop.create_future()
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._lock = threading.Lock()
        self._ack_waiters: dict[int, asyncio.Future[Any]] = {}
        self._early_acks: dict[int, Any] = {}
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_publish = self._on_ack
        self.paho.on_subscribe = self._on_subscribe

    # paho thread -> event loop
    def _resolve(self, future: asyncio.Future[Any], value: Any) -> None:
        def set_result() -> None:
            if not future.done():
                future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop may be closed during teardown
            self.loop.call_soon_threadsafe(set_result)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        self._resolve(self.connack, reason)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        self._resolve(self.disconnected, reason)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.messages.put_nowait, (message.topic, bytes(message.payload)))

    def _on_ack(self, _c: Any, _u: Any, mid: int, *rest: Any) -> None:
        with self._lock:
            waiter = self._ack_waiters.pop(mid, None)
            if waiter is None:
                self._early_acks[mid] = rest
        if waiter is not None:
            self._resolve(waiter, rest)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _props: Any) -> None:
        self._on_ack(_c, _u, mid, reasons)

    async def _wait_ack(self, mid: int) -> Any:
        future: asyncio.Future[Any] = self.loop.create_future()
        with self._lock:
            if mid in self._early_acks:
                return self._early_acks.pop(mid)
            self._ack_waiters[mid] = future
        return await asyncio.wait_for(future, TIMEOUT)

    # test API
    async def connect(self) -> ReasonCode:
        self.paho.connect_async("127.0.0.1", self.port, keepalive=30)
        self.paho.loop_start()
        return await asyncio.wait_for(self.connack, TIMEOUT)

    async def subscribe(self, *topics: str, qos: int = 1) -> list[ReasonCode]:
        _result, mid = self.paho.subscribe([(t, qos) for t in topics])
        assert mid is not None
        (reasons,) = await self._wait_ack(mid)
        return list(reasons)

    async def publish(self, topic: str, payload: Any, qos: int = 1) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.paho.publish(topic, data, qos=qos)
        if qos:
            await self._wait_ack(info.mid)

    async def receive(self, timeout: float = TIMEOUT) -> tuple[str, Any]:
        topic, payload = await asyncio.wait_for(self.messages.get(), timeout)
        return topic, json.loads(payload) if payload else None

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@contextlib.asynccontextmanager
async def connected(port: int, **kwargs: Any) -> AsyncIterator[Client]:
    client = Client(port, **kwargs)
    try:
        reason = await client.connect()
        assert not reason.is_failure, reason
        yield client
    finally:
        client.close()


async def refused(port: int, **kwargs: Any) -> ReasonCode:
    client = Client(port, **kwargs)
    try:
        return await client.connect()
    finally:
        client.close()


async def raw_connack(port: int, username: bytes | None) -> bytes:
    """Send a hand-built MQTT 3.1.1 CONNECT and return the 4 CONNACK bytes as sent on the wire."""
    flags = 0x02 | (0x80 if username is not None else 0)
    variable = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c"
    payload = b"\x00\x03raw" + (len(username).to_bytes(2, "big") + username if username is not None else b"")
    body = variable + payload
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(bytes([0x10, len(body)]) + body)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
    finally:
        writer.close()


@pytest.fixture
async def emu() -> AsyncIterator[ThingsBoardEmulator]:
    async with ThingsBoardEmulator() as emulator:
        yield emulator


# --------------------------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------------------------


async def test_access_token_connects_and_disconnects(emu: ThingsBoardEmulator) -> None:
    device = emu.add_device("d1", token="TOKEN1")
    async with connected(emu.port, username="TOKEN1"):
        await emu.wait_for(lambda: device.connected)
        assert device.connects == 1
    await emu.wait_for(lambda: not device.connected)


async def test_unknown_token_gets_connack_5(emu: ThingsBoardEmulator) -> None:
    emu.add_device("d1", token="TOKEN1")
    reason = await refused(emu.port, username="WRONG")
    assert reason == ReasonCode(PacketTypes.CONNACK, "Not authorized")
    assert await raw_connack(emu.port, b"WRONG") == b"\x20\x02\x00\x05"
    assert emu.counters.refused == 2


async def test_empty_or_missing_username_gets_connack_4(emu: ThingsBoardEmulator) -> None:
    reason = await refused(emu.port, username="")
    assert reason == ReasonCode(PacketTypes.CONNACK, "Bad user name or password")
    assert await raw_connack(emu.port, b"") == b"\x20\x02\x00\x04"
    assert await raw_connack(emu.port, None) == b"\x20\x02\x00\x04"


async def test_mqtt_basic_credentials(emu: ThingsBoardEmulator) -> None:
    device = emu.add_device("basic", basic=BasicCredentials("cid-1", "user-1", "pw-1"))
    async with connected(emu.port, client_id="cid-1", username="user-1", password="pw-1") as client:
        await client.publish("v1/devices/me/telemetry", {"t": 1})
        assert [values for _ts, values in device.telemetry] == [{"t": 1}]
    wrong = await refused(emu.port, client_id="cid-1", username="user-1", password="nope")
    assert wrong == ReasonCode(PacketTypes.CONNACK, "Not authorized")
    other_client = await refused(emu.port, client_id="cid-2", username="user-1", password="pw-1")
    assert other_client.is_failure


async def test_subscriptions_outside_thingsboard_topics_are_refused(emu: ThingsBoardEmulator) -> None:
    emu.add_device("d1", token="T1")
    async with connected(emu.port, username="T1") as client:
        reasons = await client.subscribe("v1/devices/me/rpc/request/+", "#", "v1/devices/me/telemetry")
        assert [r.is_failure for r in reasons] == [False, True, True]


# --------------------------------------------------------------------------------------------
# Device API
# --------------------------------------------------------------------------------------------


async def test_me_topics_are_isolated_between_devices(emu: ThingsBoardEmulator) -> None:
    a = emu.add_device("A", token="TA")
    b = emu.add_device("B", token="TB")
    async with connected(emu.port, username="TA") as ca, connected(emu.port, username="TB") as cb:
        await ca.subscribe(
            "v1/devices/me/rpc/request/+", "v1/devices/me/rpc/response/+", "v1/devices/me/attributes"
        )
        await cb.subscribe("v1/devices/me/rpc/response/+")
        await cb.publish("v1/devices/me/telemetry", {"b": 1})
        await cb.publish("v1/devices/me/attributes", {"fromB": True})
        await cb.publish("v1/devices/me/rpc/request/1", {"method": "getSessionLimits", "params": {}})
        assert await cb.receive() == ("v1/devices/me/rpc/response/1", DEFAULT_SESSION_LIMITS)
        assert [v for _ts, v in b.telemetry] == [{"b": 1}] and a.telemetry == []
        assert b.attributes_client == {"fromB": True} and a.attributes_client == {}
        assert b.client_rpcs == [ClientRpcRequest(1, "getSessionLimits", {})] and a.client_rpcs == []
        # A's first message must be the one addressed to it, not anything B published or got.
        rpc = asyncio.create_task(emu.rpc("A", "ping"))
        topic, request = await ca.receive()
        assert (topic, request) == ("v1/devices/me/rpc/request/1", {"method": "ping", "params": {}})
        await ca.publish(topic.replace("request", "response"), {"pong": True})
        assert await rpc == {"pong": True}
        assert ca.messages.empty()


async def test_device_telemetry_forms(emu: ThingsBoardEmulator) -> None:
    device = emu.add_device("d1", token="T1")
    async with connected(emu.port, username="T1") as client:
        await client.publish("v1/devices/me/telemetry", {"a": 1})
        await client.publish("v1/devices/me/telemetry", [{"b": 2}, {"c": 3}])
        await client.publish("v1/devices/me/telemetry", {"ts": 1451649600512, "values": {"d": 4}})
        await client.publish(
            "v1/devices/me/telemetry",
            [{"ts": 1451649600513, "values": {"e": 5}}, {"ts": 1451649600514, "values": {"f": 6}}],
        )
    assert [v for _ts, v in device.telemetry] == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}, {"e": 5}, {"f": 6}]
    assert [ts for ts, _v in device.telemetry[3:]] == [1451649600512, 1451649600513, 1451649600514]
    assert emu.counters.records == 6 and device.publishes == 4


async def test_malformed_json_is_counted_and_ignored(emu: ThingsBoardEmulator) -> None:
    device = emu.add_device("d1", token="T1")
    async with connected(emu.port, username="T1") as client:
        await client.publish("v1/devices/me/telemetry", b"{not json")
        await client.publish("v1/devices/me/telemetry", [1, 2])
        await client.publish("v1/devices/me/telemetry", {"ok": True})
    assert emu.counters.malformed == 2 and device.malformed == 2
    assert [v for _ts, v in device.telemetry] == [{"ok": True}]


async def test_oversize_publish_dropped() -> None:
    async with ThingsBoardEmulator(max_payload_size=100) as emu:
        device = emu.add_device("d1", token="T1")
        async with connected(emu.port, username="T1") as client:
            await client.publish("v1/devices/me/telemetry", {"big": "x" * 200})
            await client.publish("v1/devices/me/telemetry", {"small": 1})
        assert emu.counters.oversize == 1
        assert [v for _ts, v in device.telemetry] == [{"small": 1}]


async def test_oversize_publish_disconnects_before_puback() -> None:
    async with ThingsBoardEmulator(max_payload_size=100, oversize_policy="disconnect") as emu:
        device = emu.add_device("d1", token="T1")
        async with connected(emu.port, username="T1") as client:
            info = client.paho.publish("v1/devices/me/telemetry", json.dumps({"big": "x" * 200}), qos=1)
            after = client.paho.publish("v1/devices/me/telemetry", json.dumps({"after": 1}), qos=1)
            await asyncio.wait_for(client.disconnected, TIMEOUT)
            assert not info.is_published() and not after.is_published()
        assert emu.counters.oversize == 1 and device.telemetry == []
        await emu.wait_for(lambda: not device.connected)


async def test_attribute_request_answers_from_stored_attributes(emu: ThingsBoardEmulator) -> None:
    device = emu.add_device("d1", token="T1")
    device.attributes_shared.update({"fw_version": "1.2", "interval": 30})
    async with connected(emu.port, username="T1") as client:
        await client.subscribe("v1/devices/me/attributes/response/+")
        await client.publish("v1/devices/me/attributes", {"model": "pi4", "serial": "abc"})
        await client.publish(
            "v1/devices/me/attributes/request/7", {"clientKeys": "model,missing", "sharedKeys": "interval"}
        )
        assert await client.receive() == (
            "v1/devices/me/attributes/response/7",
            {"client": {"model": "pi4"}, "shared": {"interval": 30}},
        )
        # Only shared keys asked for: no "client" section (ThingsBoard leaves empty scopes out).
        await client.publish("v1/devices/me/attributes/request/8", {"sharedKeys": "fw_version"})
        assert await client.receive() == (
            "v1/devices/me/attributes/response/8",
            {"shared": {"fw_version": "1.2"}},
        )
        await client.publish("v1/devices/me/attributes/request/9", {})
        _topic, everything = await client.receive()
        assert everything == {
            "client": {"model": "pi4", "serial": "abc"},
            "shared": {"fw_version": "1.2", "interval": 30},
        }
    assert len(device.attribute_requests) == 3


async def test_shared_attribute_update_reaches_only_its_device(emu: ThingsBoardEmulator) -> None:
    a = emu.add_device("A", token="TA")
    emu.add_device("B", token="TB")
    async with connected(emu.port, username="TA") as ca, connected(emu.port, username="TB") as cb:
        await ca.subscribe("v1/devices/me/attributes")
        await cb.subscribe("v1/devices/me/attributes")
        assert await emu.set_shared_attributes("A", {"interval": 10, "old": 1}) == 1
        assert await ca.receive() == ("v1/devices/me/attributes", {"interval": 10, "old": 1})
        await emu.set_shared_attributes("A", {"interval": 20}, deleted=["old"])
        assert await ca.receive() == ("v1/devices/me/attributes", {"interval": 20, "deleted": ["old"]})
        assert a.attributes_shared == {"interval": 20}
        assert await emu.set_shared_attributes("B", {"x": 1}) == 1
        assert await cb.receive() == ("v1/devices/me/attributes", {"x": 1})
        assert ca.messages.empty()


async def test_server_side_rpc_round_trip(emu: ThingsBoardEmulator) -> None:
    device = emu.add_device("d1", token="T1")
    async with connected(emu.port, username="T1") as client:
        with pytest.raises(RpcError):
            await emu.rpc("d1", "reboot")  # not subscribed yet
        await client.subscribe("v1/devices/me/rpc/request/+")
        for expected_id in (2, 3):
            call = asyncio.create_task(emu.rpc("d1", "getValue", {"id": "/3/0/9"}))
            topic, request = await client.receive()
            assert topic == f"v1/devices/me/rpc/request/{expected_id}"
            assert request == {"method": "getValue", "params": {"id": "/3/0/9"}}
            await client.publish(f"v1/devices/me/rpc/response/{expected_id}", {"value": 87})
            assert await call == {"value": 87}
        with pytest.raises(TimeoutError):
            await emu.rpc("d1", "ignored", timeout=0.2)
    assert [r.method for r in device.rpc_replies] == ["getValue", "getValue"]


async def test_get_session_limits_answered() -> None:
    limits = {"maxPayloadSize": 1024, "maxInflightMessages": 5, "rateLimits": {}, "gatewayRateLimits": {}}
    async with ThingsBoardEmulator(session_limits=limits) as emu:
        device = emu.add_device("gw", token="G", gateway=True)
        async with connected(emu.port, username="G") as client:
            await client.subscribe("v1/devices/me/rpc/response/+")
            await client.publish("v1/devices/me/rpc/request/1", {"method": "getSessionLimits", "params": {}})
            assert await client.receive() == ("v1/devices/me/rpc/response/1", limits)
        assert device.client_rpcs == [ClientRpcRequest(1, "getSessionLimits", {})]


async def test_get_session_limits_never_answered_does_not_block_the_session() -> None:
    async with ThingsBoardEmulator(answer_session_limits=False) as emu:
        device = emu.add_device("gw", token="G", gateway=True)
        async with connected(emu.port, username="G") as client:
            await client.subscribe("v1/devices/me/rpc/response/+", "v1/devices/me/attributes/response/+")
            await client.publish("v1/devices/me/rpc/request/1", {"method": "getSessionLimits", "params": {}})
            await client.publish("v1/devices/me/telemetry", {"after": 1})
            await client.publish("v1/devices/me/attributes/request/2", {})
            # The next (and only) message is the attribute response: limits never come.
            assert await client.receive() == ("v1/devices/me/attributes/response/2", {})
            assert client.messages.empty()
        assert [c.method for c in device.client_rpcs] == ["getSessionLimits"]
        assert [v for _ts, v in device.telemetry] == [{"after": 1}]


async def test_other_client_side_rpc_uses_handler_or_errors() -> None:
    async def handler(device: Device, method: str, params: Any) -> Any:
        if method == "fail":
            raise ValueError("no such thing")
        return {"device": device.name, "echo": params}

    async with ThingsBoardEmulator(client_rpc_handler=handler) as emu:
        emu.add_device("d1", token="T1")
        async with connected(emu.port, username="T1") as client:
            await client.subscribe("v1/devices/me/rpc/response/+")
            await client.publish("v1/devices/me/rpc/request/1", {"method": "getTime", "params": [1]})
            assert await client.receive() == ("v1/devices/me/rpc/response/1", {"device": "d1", "echo": [1]})
            await client.publish("v1/devices/me/rpc/request/2", {"method": "fail", "params": {}})
            assert await client.receive() == ("v1/devices/me/rpc/response/2", {"error": "no such thing"})
    async with ThingsBoardEmulator() as emu:
        emu.add_device("d1", token="T1")
        async with connected(emu.port, username="T1") as client:
            await client.publish("v1/devices/me/rpc/request/3", {"method": "getTime", "params": {}})
            topic, answer = await client.receive()
            assert topic == "v1/devices/me/rpc/response/3" and "error" in answer


async def test_claim(emu: ThingsBoardEmulator) -> None:
    device = emu.add_device("d1", token="T1")
    async with connected(emu.port, username="T1") as client:
        await client.publish("v1/devices/me/claim", {"secretKey": "s", "durationMs": 60000})
    assert device.claims == [{"secretKey": "s", "durationMs": 60000}]


# --------------------------------------------------------------------------------------------
# Gateway API
# --------------------------------------------------------------------------------------------


async def test_gateway_connect_telemetry_attributes_and_disconnect(emu: ThingsBoardEmulator) -> None:
    seen: list[str] = []
    emu.on_device_created = lambda device: seen.append(device.name)
    emu.add_device("gw", token="G", gateway=True)
    async with connected(emu.port, username="G") as gw:
        await gw.publish("v1/gateway/connect", {"device": "A", "type": "thermometer"})
        a = emu.device("A")
        assert (a.type, a.parent, a.connected, a.connects) == ("thermometer", "gw", True, 1)
        await gw.publish(
            "v1/gateway/telemetry",
            {
                "A": [{"ts": 1000, "values": {"t": 1}}, {"ts": 1001, "values": {"t": 2}}],
                "B": [{"h": 50}],
                "C": {"ts": 2000, "values": {"p": 3}},
            },
        )
        assert a.telemetry == [(1000, {"t": 1}), (1001, {"t": 2})]
        b, c = emu.device("B"), emu.device("C")
        assert [v for _ts, v in b.telemetry] == [{"h": 50}] and b.type == "default" and b.connected
        assert c.telemetry == [(2000, {"p": 3})]
        await gw.publish("v1/gateway/attributes", {"A": {"model": "x1"}, "B": {"fw": "2"}})
        assert a.attributes_client == {"model": "x1"} and b.attributes_client == {"fw": "2"}
        await gw.publish("v1/gateway/disconnect", {"device": "A"})
        assert not a.connected and b.connected
        assert emu.device("gw").telemetry == []
    assert seen == ["A", "B", "C"]
    assert emu.counters.records == 4
    await emu.wait_for(lambda: not b.connected)  # children go offline with their gateway


async def test_gateway_telemetry_metadata_goes_to_gateway_metrics(emu: ThingsBoardEmulator) -> None:
    gateway = emu.add_device("gw", token="G", gateway=True)
    meta = {"connector": "lwm2m", "receivedTs": 1, "publishedTs": 2}
    async with connected(emu.port, username="G") as gw:
        await gw.publish("v1/gateway/telemetry", {"A": [{"ts": 5, "values": {"t": 1}, "metadata": meta}]})
    assert emu.device("A").telemetry == [(5, {"t": 1})]
    assert gateway.gateway_metrics == [meta]


async def test_gateway_telemetry_bad_entry_loses_only_that_device(emu: ThingsBoardEmulator) -> None:
    emu.add_device("gw", token="G", gateway=True)
    async with connected(emu.port, username="G") as gw:
        await gw.publish("v1/gateway/telemetry", {"A": [{"t": 1}], "B": [7]})
    assert [v for _ts, v in emu.device("A").telemetry] == [{"t": 1}]
    assert "B" not in emu.devices and emu.counters.malformed == 1


async def test_gateway_attribute_request_uses_server_format(emu: ThingsBoardEmulator) -> None:
    emu.add_device("gw", token="G", gateway=True)
    async with connected(emu.port, username="G") as gw:
        await gw.subscribe("v1/gateway/attributes/response")
        await gw.publish("v1/gateway/attributes", {"A": {"model": "x1", "serial": "s1"}})
        emu.device("A").attributes_shared.update({"interval": 30, "mode": "eco"})
        await gw.publish(
            "v1/gateway/attributes/request", {"id": 1, "device": "A", "client": False, "key": "interval"}
        )
        assert await gw.receive() == ("v1/gateway/attributes/response", {"id": 1, "device": "A", "value": 30})
        request = {"id": 2, "device": "A", "client": True, "keys": ["model", "serial", "nope"]}
        await gw.publish("v1/gateway/attributes/request", request)
        assert await gw.receive() == (
            "v1/gateway/attributes/response",
            {"id": 2, "device": "A", "values": {"model": "x1", "serial": "s1"}},
        )
        # One key asked for as a list is still "values" (isMultipleAttributesRequest).
        await gw.publish(
            "v1/gateway/attributes/request", {"id": 3, "device": "A", "client": False, "keys": ["mode"]}
        )
        assert await gw.receive() == (
            "v1/gateway/attributes/response",
            {"id": 3, "device": "A", "values": {"mode": "eco"}},
        )


async def test_gateway_rpc_round_trip_and_attribute_update(emu: ThingsBoardEmulator) -> None:
    emu.add_device("gw", token="G", gateway=True)
    async with connected(emu.port, username="G") as gw:
        await gw.subscribe("v1/gateway/rpc", "v1/gateway/attributes")
        await gw.publish("v1/gateway/connect", {"device": "A"})
        call = asyncio.create_task(emu.rpc("A", "Read", {"id": "/3/0/9"}))
        topic, request = await gw.receive()
        assert topic == "v1/gateway/rpc"
        assert request == {"device": "A", "data": {"id": 1, "method": "Read", "params": {"id": "/3/0/9"}}}
        await gw.publish("v1/gateway/rpc", {"device": "A", "id": 1, "data": {"value": 87}})
        assert await call == {"value": 87}
        assert emu.device("A").rpc_replies[0].response == {"value": 87}
        assert await emu.set_shared_attributes("A", {"interval": 5}, deleted=["x"]) == 1
        assert await gw.receive() == (
            "v1/gateway/attributes",
            {"device": "A", "data": {"interval": 5, "deleted": ["x"]}},
        )
        await gw.publish("v1/gateway/disconnect", {"device": "A"})
        with pytest.raises(RpcError):
            await emu.rpc("A", "Read")


async def test_gateway_claim(emu: ThingsBoardEmulator) -> None:
    emu.add_device("gw", token="G", gateway=True)
    async with connected(emu.port, username="G") as gw:
        await gw.publish("v1/gateway/claim", {"A": {"secretKey": "k", "durationMs": 1000}})
    assert emu.device("A").claims == [{"secretKey": "k", "durationMs": 1000}]


async def test_gateway_topics_from_a_plain_device_are_not_gateway_api(emu: ThingsBoardEmulator) -> None:
    emu.add_device("d1", token="T1")
    async with connected(emu.port, username="T1") as client:
        await client.publish("v1/gateway/telemetry", {"A": [{"t": 1}]})
    assert "A" not in emu.devices and emu.counters.unsupported == 1


# --------------------------------------------------------------------------------------------
# Provisioning
# --------------------------------------------------------------------------------------------


async def provision(port: int, request: dict[str, Any]) -> dict[str, Any]:
    async with connected(port, username="provision", password="") as client:
        await client.subscribe("/provision/response")
        await client.publish("/provision/request", request)
        topic, response = await client.receive()
        assert topic == "/provision/response"
        assert isinstance(response, dict)
        return response


KEY = {"provisionDeviceKey": "pk", "provisionDeviceSecret": "ps"}


async def test_provision_access_token_then_connect(emu: ThingsBoardEmulator) -> None:
    emu.add_provision_profile("pk", "ps", gateway_default=False)
    response = await provision(emu.port, {"deviceName": "gw-1", "gateway": True, **KEY})
    assert response["status"] == "SUCCESS" and response["credentialsType"] == "ACCESS_TOKEN"
    token = response["credentialsValue"]
    device = emu.device("gw-1")
    assert device.gateway and device.token == token and device.provisioned
    async with connected(emu.port, username=token) as client:
        await client.publish("v1/gateway/telemetry", {"A": [{"t": 1}]})
    assert emu.device("A").parent == "gw-1"
    requested = await provision(
        emu.port, {"deviceName": "d-2", "credentialsType": "ACCESS_TOKEN", "token": "MINE", **KEY}
    )
    assert requested == {"credentialsValue": "MINE", "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}
    assert not emu.device("d-2").gateway


async def test_provision_mqtt_basic_then_connect(emu: ThingsBoardEmulator) -> None:
    emu.add_provision_profile("pk", "ps")
    request = {
        "deviceName": "b-1",
        "credentialsType": "MQTT_BASIC",
        "clientId": "cid",
        "username": "user",
        "password": "pw",
        **KEY,
    }
    response = await provision(emu.port, request)
    assert response == {
        "credentialsValue": {"clientId": "cid", "userName": "user", "password": "pw"},
        "credentialsType": "MQTT_BASIC",
        "status": "SUCCESS",
    }
    async with connected(emu.port, client_id="cid", username="user", password="pw") as client:
        await client.publish("v1/devices/me/telemetry", {"up": 1})
    assert [v for _ts, v in emu.device("b-1").telemetry] == [{"up": 1}]


async def test_provision_not_found_and_failure(emu: ThingsBoardEmulator) -> None:
    emu.add_provision_profile("pk", "ps")
    emu.add_provision_profile("pre", "secret", allow_create=False)
    emu.add_device("existing", token="E")
    emu.add_device("pre-1", token="PRE1", provision_key="pre")
    wrong_secret = await provision(
        emu.port, {"deviceName": "x", "provisionDeviceKey": "pk", "provisionDeviceSecret": "no"}
    )
    assert wrong_secret == {"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}
    unknown_key = await provision(
        emu.port, {"deviceName": "x", "provisionDeviceKey": "?", "provisionDeviceSecret": "ps"}
    )
    assert unknown_key["status"] == "NOT_FOUND"
    exists = await provision(emu.port, {"deviceName": "existing", **KEY})
    assert exists == {"errorMsg": "Failed to provision device!", "status": "FAILURE"}
    pre = {"provisionDeviceKey": "pre", "provisionDeviceSecret": "secret"}
    assert (await provision(emu.port, {"deviceName": "not-there", **pre}))["status"] == "FAILURE"
    assert await provision(emu.port, {"deviceName": "pre-1", **pre}) == {
        "credentialsValue": "PRE1",
        "credentialsType": "ACCESS_TOKEN",
        "status": "SUCCESS",
    }
    taken = await provision(emu.port, {"deviceName": "y", "token": "E", **KEY})
    assert taken["status"] == "FAILURE" and "y" not in emu.devices
    assert [r.response["status"] for r in emu.provision_log] == [
        "NOT_FOUND",
        "NOT_FOUND",
        "FAILURE",
        "FAILURE",
        "SUCCESS",
        "FAILURE",
    ]


async def test_provision_client_may_only_use_provisioning_topics(emu: ThingsBoardEmulator) -> None:
    async with connected(emu.port, username="provision") as client:
        reasons = await client.subscribe("/provision/response", "v1/devices/me/rpc/request/+")
        assert [r.is_failure for r in reasons] == [False, True]
        await client.publish("v1/devices/me/telemetry", {"t": 1})
    assert emu.counters.unsupported == 1 and emu.counters.records == 0


# --------------------------------------------------------------------------------------------
# X.509 over TLS (certificates made with the openssl command-line tool)
# --------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command-line tool not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tbemu-ca",
        cwd=d,
    )
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1"]), ("device", [])):
        _openssl(
            "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", *extra, cwd=d
        )
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "basicConstraints=CA:FALSE\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=d,
        )  # fmt: skip
    yield d


async def test_provision_x509_then_connect_over_tls(pki: Path) -> None:
    tls = TlsListener(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    async with ThingsBoardEmulator(tls=tls) as emu:
        emu.add_provision_profile("pk", "ps")
        pem = (pki / "device.pem").read_text()
        response = await provision(
            emu.port, {"deviceName": "x-1", "credentialsType": "X509_CERTIFICATE", "hash": pem, **KEY}
        )
        assert response["status"] == "SUCCESS" and response["credentialsType"] == "X509_CERTIFICATE"
        assert ssl.PEM_cert_to_DER_cert(response["credentialsValue"]) == ssl.PEM_cert_to_DER_cert(pem)
        assert emu.tls_port is not None
        device_tls = {
            "ca": str(pki / "ca.pem"),
            "cert": str(pki / "device.pem"),
            "key": str(pki / "device.key"),
        }
        async with connected(emu.tls_port, tls=device_tls) as client:
            await client.publish("v1/devices/me/telemetry", {"secure": True})
        assert [v for _ts, v in emu.device("x-1").telemetry] == [{"secure": True}]
        # A certificate the emulator does not know (the server's own) is refused with 5.
        unknown = {"ca": str(pki / "ca.pem"), "cert": str(pki / "server.pem"), "key": str(pki / "server.key")}
        assert (await refused(emu.tls_port, tls=unknown)) == ReasonCode(PacketTypes.CONNACK, "Not authorized")


# --------------------------------------------------------------------------------------------
# Outages and load
# --------------------------------------------------------------------------------------------


async def test_stop_and_start_on_the_same_port(emu: ThingsBoardEmulator) -> None:
    device = emu.add_device("d1", token="T1")
    port = emu.port
    client = Client(port, username="T1")
    try:
        await client.connect()
        await client.publish("v1/devices/me/telemetry", {"n": 1})
        await emu.stop()
        await asyncio.wait_for(client.disconnected, TIMEOUT)
        assert not device.connected
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        client.close()
    await emu.start()
    assert emu.port == port
    async with connected(port, username="T1") as again:
        await again.publish("v1/devices/me/telemetry", {"n": 2})
    assert [v for _ts, v in device.telemetry] == [{"n": 1}, {"n": 2}]


async def test_disconnect_clients(emu: ThingsBoardEmulator) -> None:
    a = emu.add_device("A", token="TA")
    b = emu.add_device("B", token="TB")
    async with connected(emu.port, username="TA") as ca, connected(emu.port, username="TB") as cb:
        assert await emu.disconnect_clients() == 2
        await asyncio.wait_for(asyncio.gather(ca.disconnected, cb.disconnected), TIMEOUT)
        assert not a.connected and not b.connected


async def test_every_pubacked_qos1_publish_is_already_recorded(emu: ThingsBoardEmulator) -> None:
    count = 5000
    device = emu.add_device("d1", token="T1")
    loop = asyncio.get_running_loop()
    all_acked: asyncio.Future[None] = loop.create_future()
    acked = 0
    late: list[tuple[int, int]] = []

    def on_publish(*_args: Any) -> None:  # paho's thread, once per PUBACK
        nonlocal acked
        acked += 1
        recorded = len(device.telemetry)
        if recorded < acked:
            late.append((acked, recorded))
        if acked == count:
            loop.call_soon_threadsafe(all_acked.set_result, None)

    async with connected(emu.port, username="T1") as client:
        client.paho.on_publish = on_publish
        for n in range(count):
            client.paho.publish("v1/devices/me/telemetry", json.dumps({"n": n}), qos=1)
        await asyncio.wait_for(all_acked, 120)
        assert late == []  # no PUBACK ever arrived before its record
        assert [v["n"] for _ts, v in device.telemetry] == list(range(count))
        assert emu.counters.records == count


# --------------------------------------------------------------------------------------------
# Payload parsing (no sockets)
# --------------------------------------------------------------------------------------------


_values = st.dictionaries(
    st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=8) | st.booleans(), max_size=4
)


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=2**53), _values), min_size=1, max_size=5))
def test_parse_telemetry_ts_form_round_trips(records: list[tuple[int, dict[str, Any]]]) -> None:
    payload = [{"ts": ts, "values": values} for ts, values in records]
    assert parse_telemetry(payload, 0) == (records, [])
    assert parse_telemetry(payload[0], 0) == (records[:1], [])


@given(_values.filter(lambda v: not ("ts" in v and "values" in v)))
def test_parse_telemetry_plain_form_gets_server_time(values: dict[str, Any]) -> None:
    assert parse_telemetry(values, 42) == ([(42, values)], [])
    assert parse_telemetry([values, values], 42) == ([(42, values), (42, values)], [])


@pytest.mark.parametrize(
    "payload", [1, "x", None, [1], [{"a": 1}, 2], {"ts": "soon", "values": {}}, {"ts": 1, "values": 2}]
)
def test_parse_telemetry_rejects(payload: Any) -> None:
    with pytest.raises(PayloadError):
        parse_telemetry(payload, 0)


# --------------------------------------------------------------------------------------------
# The command line (the README demo)
# --------------------------------------------------------------------------------------------


async def _read_until(stream: asyncio.StreamReader, marker: str) -> str:
    while True:
        line = (await asyncio.wait_for(stream.readline(), TIMEOUT)).decode()
        assert line, f"stream ended before {marker!r}"
        if marker in line:
            return line


async def test_cli_runs_until_sigint_and_shows_telemetry() -> None:
    args = ["--port", "0", "--http-port", "0", "--token", "gw=GWTOKEN:gateway", "--provision", "pk:ps"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.sim.tbemu", *args, "--print-telemetry", "--summary-interval", "0.2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        http_line = await _read_until(process.stderr, "HTTP API on")
        http_port = int(http_line.rsplit(":", 1)[1].split("/")[0])
        mqtt_line = await _read_until(process.stderr, "MQTT on")
        port = int(mqtt_line.split("MQTT on 127.0.0.1:")[1].split(";")[0])
        assert "gw (gateway)" in mqtt_line
        async with connected(port, username="GWTOKEN") as gw:
            await gw.publish("v1/gateway/telemetry", {"sensor-1": [{"ts": 7, "values": {"t": 21.5}}]})
        assert "child device 'sensor-1'" in await _read_until(process.stderr, "child device")
        assert (
            await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        ).decode() == 'sensor-1 7 {"t":21.5}\n'
        assert "sensor-1=1 (+1)" in await _read_until(process.stderr, "sensor-1=1")
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
        writer.write(b"GET /api/devices/sensor-1 HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["latest"] == [[7, {"t": 21.5}]]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
