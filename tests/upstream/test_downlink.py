"""Downlink: every message type ThingsBoard sends down, parsed and routed; the gateway's own requests."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from upstream_helpers import TIMEOUT, Condition, Peer, session_config, wait_state

from gateway.core.hub import RpcError
from gateway.sim.tbemu import Device, ThingsBoardEmulator
from gateway.upstream import thingsboard as tb
from gateway.upstream.downlink import Downlink
from gateway.upstream.session import ConnectionLost, MqttSession, SessionState

pytestmark = pytest.mark.timeout(60)


class FakeDevice:
    """A southbound adapter for child devices: records calls, answers from a script."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, float]] = []
        self.updates: list[tuple[str, dict[str, Any], list[str]]] = []
        self.changed = Condition(lambda: False)
        self.hang = asyncio.Event()

    async def rpc(self, device: str, method: str, params: Any, timeout: float) -> Any:
        self.calls.append((device, method, params, timeout))
        if method == "Fail":
            raise RpcError("not_found", f"no resource {params!r} on {device}")
        if method == "Hang":
            await self.hang.wait()
        if method == "Crash":
            raise ZeroDivisionError("boom")
        if method == "NotJson":
            return {"x": object()}
        return {"device": device, "echo": params}

    async def attributes_updated(self, device: str, values: Mapping[str, Any], deleted: Sequence[str]) -> None:
        self.updates.append((device, dict(values), list(deleted)))
        self.changed.poke()


class Directory:
    def __init__(self, handler: FakeDevice, devices: set[str]) -> None:
        self.handler = handler
        self.devices = devices

    def handler_for(self, device: str) -> FakeDevice | None:
        return self.handler if device in self.devices else None


@pytest.fixture
async def setup() -> AsyncIterator[tuple[ThingsBoardEmulator, MqttSession, Downlink, FakeDevice]]:
    answers: dict[str, Any] = {"getTime": {"ts": 12345}}

    async def client_rpc(_device: Device, method: str, params: Any) -> Any:
        if method == "Never":
            await asyncio.Event().wait()
        if method not in answers:
            raise ValueError(f"no method {method}")
        return answers[method]

    async with ThingsBoardEmulator(client_rpc_handler=client_rpc) as emu:
        emu.add_device("gw", token="GW_TOKEN", gateway=True)
        session = MqttSession(session_config(emu.port))
        handler = FakeDevice()
        downlink = Downlink(session, Directory(handler, {"dev1", "dev2"}), rpc_timeout=0.5)
        session.start()
        try:
            await wait_state(session, SessionState.CONNECTED)
            for name in ("dev1", "dev2", "ghost"):  # ghost: ThingsBoard knows it, this gateway does not
                await session.publish(tb.GATEWAY_CONNECT, tb.dumps({"device": name}).encode())
            yield emu, session, downlink, handler
        finally:
            handler.hang.set()
            await downlink.close()
            await session.stop()


async def test_rpc_to_a_child_device_is_routed_and_answered(setup: Any) -> None:
    emu, _session, downlink, handler = setup
    reply = await emu.rpc("dev1", "Read", {"id": "/3/0/9"}, timeout=TIMEOUT)
    assert reply == {"device": "dev1", "echo": {"id": "/3/0/9"}}
    assert handler.calls == [("dev1", "Read", {"id": "/3/0/9"}, 0.5)]
    assert downlink.stats().replies_sent == 1


async def test_rpc_for_a_device_not_connected_here_gets_an_error_at_once(setup: Any) -> None:
    emu, _session, downlink, handler = setup
    reply = await emu.rpc("ghost", "Read", {"id": "/3/0/9"}, timeout=TIMEOUT)
    assert reply == {"error": "device 'ghost' is not connected to this gateway", "code": "device_offline"}
    assert handler.calls == [] and downlink.stats().unknown_device == 1


async def test_rpc_errors_become_error_replies(setup: Any) -> None:
    emu, _session, downlink, _handler = setup
    assert await emu.rpc("dev1", "Fail", "/9/9/9", timeout=TIMEOUT) == {
        "error": "no resource '/9/9/9' on dev1",
        "code": "not_found",
    }
    timed_out = await emu.rpc("dev1", "Hang", timeout=TIMEOUT)
    assert timed_out["code"] == "timeout" and "did not answer 'Hang'" in timed_out["error"]
    crashed = await emu.rpc("dev2", "Crash", timeout=TIMEOUT)
    assert crashed["code"] == "internal"
    assert (await emu.rpc("dev2", "NotJson", timeout=TIMEOUT))["code"] == "internal"
    assert downlink.stats().rpc_errors == 4


async def test_shared_attribute_updates_of_children_and_of_the_gateway(setup: Any) -> None:
    emu, _session, downlink, handler = setup
    seen: list[tb.AttributeUpdate] = []
    got = Condition(lambda: bool(seen))

    async def on_gateway_attributes(update: tb.AttributeUpdate) -> None:
        seen.append(update)
        got.poke()

    downlink.add_gateway_attributes_listener(on_gateway_attributes)
    handler.changed = Condition(lambda: len(handler.updates) == 2)
    await emu.set_shared_attributes("dev1", {"interval": 10})
    await emu.set_shared_attributes("dev2", deleted=["old"])
    await handler.changed.wait()
    assert handler.updates == [("dev1", {"interval": 10}, []), ("dev2", {}, ["old"])]
    await emu.set_shared_attributes("gw", {"log_level": "debug"}, deleted=["x"])
    await got.wait()
    assert seen == [tb.AttributeUpdate(values={"log_level": "debug"}, deleted=("x",))]
    await emu.set_shared_attributes("ghost", {"a": 1})  # not ours: counted, logged, no crash
    await emu.rpc("gw", "ping", timeout=TIMEOUT)  # one round trip later, the update was handled
    assert downlink.stats().unknown_device == 1


async def test_server_side_rpc_to_the_gateway_itself(setup: Any) -> None:
    emu, _session, downlink, _handler = setup
    assert await emu.rpc("gw", "ping", timeout=TIMEOUT) == {"pong": True}

    async def get_config(params: Any) -> Any:
        return {"asked": params, "interval": 60}

    downlink.register_method("getConfig", get_config)
    assert await emu.rpc("gw", "getConfig", {"k": 1}, timeout=TIMEOUT) == {"asked": {"k": 1}, "interval": 60}
    assert await emu.rpc("gw", "reboot", timeout=TIMEOUT) == {
        "error": "unknown method 'reboot'",
        "code": "unknown_method",
    }


async def test_client_side_rpc_and_its_timeout(setup: Any) -> None:
    _emu, session, downlink, _handler = setup
    assert await downlink.call("getTime", {}, timeout=TIMEOUT) == {"ts": 12345}
    assert await downlink.call("nope", timeout=TIMEOUT) == {"error": "no method nope"}
    with pytest.raises(TimeoutError, match="did not answer the client RPC 'Never'"):
        await downlink.call("Never", timeout=0.3)
    assert session.state is SessionState.CONNECTED
    assert await downlink.call("getTime", timeout=TIMEOUT) == {"ts": 12345}


async def test_attribute_requests_device_api_and_gateway_api(setup: Any) -> None:
    emu, _session, downlink, _handler = setup
    gw = emu.device("gw")
    gw.attributes_client.update({"fw": "1.2", "sn": "A1"})
    gw.attributes_shared.update({"interval": 30})
    answer = await downlink.request_attributes(["fw"], ["interval"], timeout=TIMEOUT)
    assert (answer.client, answer.shared) == ({"fw": "1.2"}, {"interval": 30})
    everything = await downlink.request_attributes(timeout=TIMEOUT)
    assert everything.client == {"fw": "1.2", "sn": "A1"}
    dev = emu.device("dev1")
    dev.attributes_shared.update({"target": 21.5, "mode": "eco"})
    dev.attributes_client.update({"model": "X"})
    assert await downlink.request_device_attributes("dev1", ["target"], client=False, timeout=TIMEOUT) == {
        "target": 21.5
    }
    assert await downlink.request_device_attributes(
        "dev1", ["target", "mode", "missing"], client=False, timeout=TIMEOUT
    ) == {"target": 21.5, "mode": "eco"}
    assert await downlink.request_device_attributes("dev1", ["model"], client=True, timeout=TIMEOUT) == {"model": "X"}
    assert await downlink.request_device_attributes("dev1", ["missing"], client=True, timeout=TIMEOUT) == {}


async def test_connection_loss_fails_waiting_calls(setup: Any) -> None:
    emu, session, downlink, _handler = setup
    call = asyncio.ensure_future(downlink.call("Never", timeout=TIMEOUT))
    await emu.wait_for(lambda: any(c.method == "Never" for c in emu.device("gw").client_rpcs), TIMEOUT)
    await emu.disconnect_clients()
    with pytest.raises(ConnectionLost):
        await call
    await wait_state(session, SessionState.CONNECTED)
    assert await emu.rpc("gw", "ping", timeout=TIMEOUT) == {"pong": True}


# -- malformed downlinks, through a plain broker that lets a test send anything ---------------------


def replies(server: Peer) -> list[dict[str, Any]]:
    """The gateway's replies on v1/gateway/rpc (the server peer also hears its own requests)."""
    out = []
    for payload in server.received(tb.GATEWAY_RPC):
        try:
            doc = json.loads(payload)
        except ValueError:
            continue
        if isinstance(doc, dict) and "id" in doc:
            out.append(doc)
    return out


@pytest.mark.peer  # mosquitto
async def test_malformed_downlinks_are_ignored_and_answered_where_possible(
    mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.upstream.downlink")
    server = Peer(mosquitto.port)
    await server.connect()
    await server.subscribe(tb.DEVICE_RPC_RESPONSE + "+")
    await server.subscribe(tb.GATEWAY_RPC)
    session = MqttSession(session_config(mosquitto.port, ask_session_limits=False))
    handler = FakeDevice()
    downlink = Downlink(session, Directory(handler, {"dev1"}))
    session.start()
    try:
        await wait_state(session, SessionState.CONNECTED)
        server.publish(tb.GATEWAY_RPC, b"{not json")
        server.publish(tb.GATEWAY_ATTRIBUTES, b'{"device": 5}')
        server.publish(tb.DEVICE_ATTRIBUTES, b"\xff")
        server.publish(tb.DEVICE_RPC_REQUEST + "77", b"[1,2")  # id known from the topic: error reply
        server.publish(tb.GATEWAY_RPC, {"device": "dev1", "data": {"id": 9, "params": {}}})  # no method
        await server.until(lambda: len(server.received(tb.DEVICE_RPC_RESPONSE + "77")) == 1).wait()
        await server.until(lambda: len(server.received(tb.GATEWAY_RPC)) >= 3).wait()
        err = json.loads(server.received(tb.DEVICE_RPC_RESPONSE + "77")[0])
        assert err["code"] == "bad_request" and "malformed JSON" in err["error"]
        gw_replies = replies(server)
        assert {
            "device": "dev1",
            "id": 9,
            "data": {"error": gw_replies[-1]["data"]["error"], "code": "bad_request"},
        } in [r for r in gw_replies if "id" in r]
        # still working: a good RPC after all that
        server.publish(tb.GATEWAY_RPC, {"device": "dev1", "data": {"id": 10, "method": "Read", "params": 1}})
        await server.until(lambda: any(r["id"] == 10 for r in replies(server))).wait()
        reply = next(r for r in replies(server) if r["id"] == 10)
        assert reply == {"device": "dev1", "id": 10, "data": {"device": "dev1", "echo": 1}}
        assert downlink.stats().malformed >= 5  # plus the echoes of our own replies on a plain broker
        assert session.state is SessionState.CONNECTED and session.stats().connects == 1
        assert any("malformed" in r.getMessage() for r in caplog.records)
    finally:
        await downlink.close()
        await session.stop()
        server.close()


# -- without a broker ---------------------------------------------------------------------------------


class OfflineSession:
    state = SessionState.DISCONNECTED

    def __init__(self) -> None:
        self.handler: Any = None
        self.listeners: list[Any] = []
        self.n = 0

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(ConnectionLost("not connected"))
        return fut

    def next_request_id(self) -> int:
        self.n += 1
        return self.n

    def send_client_rpc(self, method: str, params: Any = None) -> tuple[int, asyncio.Future[None]]:
        return self.next_request_id(), self.publish("x", b"")

    def set_message_handler(self, handler: Any) -> None:
        self.handler = handler

    def add_state_listener(self, listener: Any) -> None:
        self.listeners.append(listener)


async def test_reply_without_a_connection_is_dropped_and_counted() -> None:
    session = OfflineSession()
    downlink = Downlink(session, Directory(FakeDevice(), set()))
    session.handler(tb.GATEWAY_RPC, json.dumps({"device": "x", "data": {"id": 1, "method": "m"}}).encode())
    assert downlink.stats().replies_dropped == 1 and downlink.stats().unknown_device == 1
    with pytest.raises(ConnectionLost):
        await downlink.call("getTime")
    with pytest.raises(ConnectionLost):
        await downlink.request_device_attributes("x", ["a"], client=True)


async def test_unknown_topic_and_late_answers_are_harmless() -> None:
    session = OfflineSession()
    downlink = Downlink(session, Directory(FakeDevice(), set()))
    session.handler("v2/fw/response/1/chunk/0", b"")
    session.handler(tb.DEVICE_RPC_RESPONSE + "99", b"{}")
    session.handler(tb.GATEWAY_ATTRIBUTES_RESPONSE, b'{"id": 4, "device": "d", "value": 1}')
    st = downlink.stats()
    assert st.malformed == 1 and st.unmatched_responses == 2
