"""The bridge against the project's fleet simulator: registration -> connect with the profile's type,
the after-registration sequence of each profile setting, values under the profile's keys with device
timestamps, de-registration, shared attributes -> Write, and every ThingsBoard LwM2M RPC method with
its answer and its errors. The hub writes into a recording outbox (test_bridge_support)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_bridge_support import TEMPERATURE_PROFILE, Harness, bridged, profile

from gateway.core.hub import RpcError
from gateway.core.records import RecordKind
from gateway.lwm2m.bridge import LwM2mRpcError, ProfileSet
from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import LwM2mServer, RegistrationListener
from gateway.sim.lwm2m_client import CONTENT_FORMAT, POST, URI_PATH, Fleet, SimClient, uint

EP = "sim-000000"


@contextlib.asynccontextmanager
async def fleet_of(server: LwM2mServer, count: int = 1, **options: Any) -> AsyncIterator[Fleet]:
    fleet = Fleet(server.address, count, **options)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.close()


@contextlib.asynccontextmanager
async def running(
    server: LwM2mServer, profile_text: str = TEMPERATURE_PROFILE, count: int = 1, **fleet_options: Any
) -> AsyncIterator[tuple[Harness, Fleet]]:
    """A bridge with one profile (the default one unless it has a match rule) and a registered fleet
    whose after-registration work is done."""
    chosen = profile(profile_text)
    if not chosen.has_rule:
        chosen = dataclasses.replace(chosen, default=True)
    async with bridged(server, [chosen]) as h, fleet_of(server, count, **fleet_options) as fleet:
        await fleet.register_and_wait()
        await h.bridge.idle()
        yield h, fleet


async def rpc(h: Harness, method: str, params: Any = None, device: str = EP, timeout: float = 5.0) -> Any:
    return await h.bridge.rpc(device, method, params, timeout)


async def rpc_error(h: Harness, method: str, params: Any = None, device: str = EP, timeout: float = 5.0) -> Any:
    with pytest.raises(LwM2mRpcError) as info:
        await rpc(h, method, params, device, timeout)
    reply = info.value.as_reply()
    assert isinstance(info.value, RpcError)
    return reply


def send(client: SimClient, records: list[dict[str, Any]]) -> None:
    """A LwM2M Send (POST /dp) of these SenML JSON records."""
    options = [(URI_PATH, b"dp"), (CONTENT_FORMAT, uint(ContentFormat.SENML_JSON))]
    client.request(POST, options, json.dumps(records).encode(), client._sent)


# -- registration and values ---------------------------------------------------------------------------------


async def test_registration_connects_with_the_profile_type_then_values_flow(server: LwM2mServer) -> None:
    async with running(server, count=2, notify_interval=0.05) as (h, fleet):
        for ep in (EP, "sim-000001"):
            kinds = h.outbox.kinds(ep)
            assert kinds[0] is RecordKind.CONNECT, kinds  # nothing of a device before its connect
            assert h.outbox.of(ep, RecordKind.CONNECT)[0].body == {"type": "temperature-sensor"}
            assert h.hub.handler_for(ep) is h.bridge
        # attribute paths were read once and became client attributes under their keys
        assert h.outbox.attributes(EP) == {"manufacturer": "edge-gateway", "units": "Cel"}
        # the observed paths: their first values, then notifications, under the profile's keys
        await h.outbox.until(lambda: len(h.outbox.telemetry(EP)) >= 6)
        assert set(h.outbox.latest(EP)) == {"sensorValue", "battery"}
        client = fleet.client(EP)
        assert {o.paths for o in client.observations.values()} == {
            (LwM2mPath(3303, 0, 5700),), (LwM2mPath(3, 0, 9),)}
        assert client.attributes["/3/0/9"] == ("pmin=1", "pmax=30")  # notification attributes written
        # receive-time stamps, ascending per device
        stamps = [ts for ts, _ in h.outbox.telemetry(EP) if ts is not None]
        assert len(stamps) == len(h.outbox.telemetry(EP))
        assert stamps == sorted(stamps) and all(abs(ts / 1000 - time.time()) < 30 for ts in stamps)
        stats = h.bridge.stats()
        assert stats.connects == 2 and stats.setups_done == 2 and stats.setup_errors == 0
        assert h.bridge.profile_of(EP) == "temperature-sensor"


async def test_send_with_device_timestamps_keeps_them_in_order(server: LwM2mServer) -> None:
    async with running(server) as (h, fleet):
        client = fleet.client(EP)
        t0 = 1_600_000_000
        send(client, [
            {"bn": "/3303/0/", "bt": t0, "n": "5700", "v": 20.5},
            {"n": "5700", "v": 21.5, "t": 10},
            {"n": "5701", "vs": "Far", "t": 10},
            {"bn": "/3/0/", "n": "9", "v": 55, "t": 10},
            {"n": "13", "v": 5},  # a path the profile does not map: ignored
        ])
        await h.outbox.until(lambda: h.bridge.stats().sends == 1 and h.outbox.attributes(EP).get("units") == "Far")
        records = [(ts, body) for ts, body in h.outbox.telemetry(EP) if ts is not None and ts < 1_700_000_000_000]
        assert records == [(t0 * 1000, {"sensorValue": 20.5}), ((t0 + 10) * 1000, {"sensorValue": 21.5, "battery": 55})]


async def test_values_that_arrive_before_the_connect_is_written_are_held(server: LwM2mServer) -> None:
    async with bridged(server, [profile(TEMPERATURE_PROFILE)]) as h, fleet_of(server) as fleet:
        h.outbox.manual = True  # the connect record stays not durable until commit()
        await fleet.register_and_wait()
        await h.outbox.until(lambda: len(h.outbox.of(EP, RecordKind.CONNECT)) == 1)
        arrived = asyncio.Event()

        class SendSeen(RegistrationListener):  # called after the bridge, which was added first
            def on_send(self, registration: Any, values: Any, ts: float) -> None:
                arrived.set()

        server.add_listener(SendSeen())
        send(fleet.client(EP), [{"n": "/3303/0/5700", "v": 30.0, "t": 1_700_000_000}])
        await asyncio.wait_for(arrived.wait(), 10)
        assert h.bridge.stats().held == 1
        assert h.outbox.telemetry(EP) == []
        # the Send is not answered while its values are not durable ...
        assert fleet.stats["send_ok"] == 0
        h.outbox.manual = False
        h.outbox.commit()
        await h.bridge.idle()
        # ... and answered once they are
        await fleet.until(lambda: fleet.stats["send_ok"] == 1, 10)
        assert h.outbox.telemetry(EP)[0] == (1_700_000_000_000, {"sensorValue": 30.0})
        assert h.outbox.kinds(EP)[:2] == [RecordKind.CONNECT, RecordKind.TELEMETRY]


async def test_a_con_notification_is_acknowledged_only_once_its_value_is_durable(server: LwM2mServer) -> None:
    async with running(server) as (h, fleet):
        client = fleet.client(EP)
        seen = asyncio.Event()

        class NotificationSeen(RegistrationListener):  # called after the bridge, which was added first
            def on_notification(self, registration: Any, observation: Any, values: Any, ts: float) -> None:
                seen.set()

        server.add_listener(NotificationSeen())
        h.outbox.manual = True  # appended records stay not durable until commit()
        obs = next(o for o in client.observations.values() if [str(p) for p in o.paths] == ["/3303/0/5700"])
        client.notify(obs, confirmable=True)
        await asyncio.wait_for(seen.wait(), 10)
        assert client.outgoing, "the notification was acknowledged before its value was durable"
        acks = server.stats()["acks_after_commit"]
        assert acks >= 1
        h.outbox.manual = False
        h.outbox.commit()
        await fleet.until(lambda: not client.outgoing, 10)  # the ACK arrives after the commit
        assert fleet.stats["retransmissions"] == 0 and server.stats()["acks_withheld"] == 0


async def test_deregistration_expiry_and_reregistration_disconnect(server_factory: Any) -> None:
    server = await server_factory(lifetime_grace=0.0)
    async with bridged(server, [profile(TEMPERATURE_PROFILE)]) as h, fleet_of(
        server, 3, lifetime=1, update_interval=3600
    ) as fleet:
        await fleet.register_and_wait()
        await h.bridge.idle()
        fleet.client(EP).deregister()
        fleet.client("sim-000001").register()  # again, with a registration still active: replaced
        # sim-000002 sends no Update: its lifetime (1 s) expires
        await h.outbox.until(
            lambda: all(h.outbox.of(ep, RecordKind.DISCONNECT) for ep in (EP, "sim-000001", "sim-000002")), 15
        )
        await h.bridge.idle()
        assert h.outbox.kinds(EP)[-1] is RecordKind.DISCONNECT
        replaced = [k for k in h.outbox.kinds("sim-000001") if k in (RecordKind.CONNECT, RecordKind.DISCONNECT)]
        assert replaced[:3] == [RecordKind.CONNECT, RecordKind.DISCONNECT, RecordKind.CONNECT]
        assert not h.hub.is_connected(EP) and not h.hub.is_connected("sim-000002")


async def test_profile_choice_by_pattern_objects_and_default(server: LwM2mServer) -> None:
    by_objects = profile('name = "blob-holder"\n[match]\nobjects = [19]\n')
    fallback = profile('name = "generic"\n[match]\ndefault = true\n')
    by_name = profile('name = "named"\n[match]\nendpoints = ["named-*"]\n')
    async with bridged(server, ProfileSet([by_objects, fallback, by_name])) as h, fleet_of(
        server, 1, prefix="named-"
    ) as named, fleet_of(server, 1, prefix="blob-", blob=b"\x01\x02") as blobs, fleet_of(
        server, 1, prefix="plain-"
    ) as plain:
        for fleet in (named, blobs, plain):
            await fleet.register_and_wait()
        await h.bridge.idle()
        types = {r.device: r.body["type"] for r in h.outbox.records if r.kind is RecordKind.CONNECT}
        assert types == {"named-000000": "named", "blob-000000": "blob-holder", "plain-000000": "generic"}


async def test_an_update_with_new_objects_sets_up_their_paths(server: LwM2mServer) -> None:
    text = TEMPERATURE_PROFILE + '[paths."/19/0/0"]\nkey = "blob"\ntelemetry = true\nobserve = true\n'
    async with running(server, text) as (h, fleet):
        client = fleet.client(EP)
        assert fleet.stats["observe"] == 2
        client.blob = b"\x01\x02"  # the device gains object 19 and says so in an Update
        client.update(with_objects=True)
        await fleet.until(lambda: fleet.stats["updated"] == 1)
        await h.bridge.idle()
        assert fleet.stats["observe"] == 5  # the plan changed: its sequence runs again, with /19/0/0
        await h.outbox.until(lambda: h.outbox.latest(EP).get("blob") == {"0": "0102"})


# -- after registration ------------------------------------------------------------------------------------


async def test_observe_only(server: LwM2mServer) -> None:
    text = TEMPERATURE_PROFILE.replace('"read_and_observe_profile"', '"observe_only"')
    async with running(server, text) as (h, fleet):
        assert fleet.stats["read"] == 0 and fleet.stats["observe"] == 2
        assert h.outbox.attributes(EP) == {}


async def test_read_and_observe_all_reads_every_registered_object(server: LwM2mServer) -> None:
    text = TEMPERATURE_PROFILE.replace('"read_and_observe_profile"', '"read_and_observe_all"')
    async with running(server, text) as (h, fleet):
        assert fleet.stats["read"] == 3  # /1, /3, /3303: whole objects
        assert fleet.stats["observe"] == 2
        assert h.outbox.attributes(EP) == {"manufacturer": "edge-gateway", "units": "Cel"}


async def test_read_and_observe_profile_reads_unobserved_mapped_paths(server: LwM2mServer) -> None:
    async with running(server) as (_h, fleet):
        assert fleet.stats["read"] == 2  # /3/0/0 and /3303/0/5701; not the key-only paths
        assert fleet.stats["write_attributes"] == 1


COMPOSITE = """
name = "composite"
observe_strategy = "{strategy}"
initial_read_as_strategy = {initial}
transport_log = "telemetry"
[paths."/3303/0/5700"]
telemetry = true
observe = true
[paths."/3/0/9"]
key = "battery"
telemetry = true
observe = true
[paths."/3/0/0"]
key = "manufacturer"
attribute = true
[paths."/3303/0/5701"]
key = "units"
attribute = true
"""


@pytest.mark.parametrize(("strategy", "groups"), [
    ("SINGLE", [(LwM2mPath(3, 0, 9),), (LwM2mPath(3303, 0, 5700),)]),
    ("COMPOSITE_ALL", [(LwM2mPath(3303, 0, 5700), LwM2mPath(3, 0, 9))]),
    ("COMPOSITE_BY_OBJECT", [(LwM2mPath(3, 0, 9),), (LwM2mPath(3303, 0, 5700),)]),
])
async def test_observe_strategies(server: LwM2mServer, strategy: str, groups: list[tuple[LwM2mPath, ...]]) -> None:
    async with running(server, COMPOSITE.format(strategy=strategy, initial="true")) as (h, fleet):
        observations = fleet.client(EP).observations.values()
        assert sorted(o.paths for o in observations) == sorted(groups)
        assert all(o.composite == (strategy != "SINGLE") for o in observations)
        if strategy == "SINGLE":  # initial reads one by one
            assert fleet.stats["read"] == 2 and fleet.stats["read_composite"] == 0
        else:  # initial reads as the strategy groups them
            assert fleet.stats["read"] == 0
            assert fleet.stats["read_composite"] == (1 if strategy == "COMPOSITE_ALL" else 2)
        assert h.outbox.attributes(EP) == {"manufacturer": "edge-gateway", "units": "Cel"}
        assert {"sensorValue", "battery"} <= set(h.outbox.latest(EP))


async def test_composite_strategy_on_a_lwm2m_1_0_device_falls_back_to_single(server: LwM2mServer) -> None:
    async with running(server, COMPOSITE.format(strategy="COMPOSITE_ALL", initial="true"),
                       lwm2m_version="1.0") as (h, fleet):
        observations = list(fleet.client(EP).observations.values())
        assert len(observations) == 2 and not any(o.composite for o in observations)
        assert fleet.stats["read"] == 2
        log = [body["transportLog"] for _, body in h.outbox.telemetry(EP) if "transportLog" in body]
        assert any("no composite operations" in line for line in log)


async def test_versioned_paths_apply_only_to_that_object_version(server: LwM2mServer) -> None:
    base = '[paths."/3_1.2/0/9"]\nkey = "battery"\ntelemetry = true\nobserve = true\n'
    # the simulator registers </3/0> without ver=: version default_object_version ("1.0")
    async with running(server, base) as (_h, fleet):
        assert fleet.stats["observe"] == 0
    async with running(server, 'default_object_version = "1.2"\n' + base) as (_h, fleet):
        assert fleet.stats["observe"] == 1
    async with running(server, "object_version_must_match = false\n" + base) as (_h, fleet):
        assert fleet.stats["observe"] == 1


async def test_transport_log_as_telemetry(server: LwM2mServer) -> None:
    async with running(server, COMPOSITE.format(strategy="SINGLE", initial="false")) as (h, fleet):
        await rpc(h, "Read", {"id": "/3/0/9"})
        fleet.client(EP).deregister()
        await h.outbox.until(lambda: bool(h.outbox.of(EP, RecordKind.DISCONNECT)))
        lines = [body["transportLog"] for _, body in h.outbox.telemetry(EP) if "transportLog" in body]
        assert lines[0].startswith("Registration: lwm2m=1.1 b=U lt=300 objects=/1/0,/3/0,/3303/0")
        assert "Observe /3/0/9: 2.05 Content" in lines
        assert "RPC Read: CONTENT" in lines
        assert lines[-1] == "De-registration (deregistered)"
        stamps = [ts for ts, body in h.outbox.telemetry(EP) if "transportLog" in body]
        assert len(set(stamps)) == len(stamps)  # one line per ms: none overwrites another upstream


# -- downlink ------------------------------------------------------------------------------------------------


async def test_shared_attribute_update_writes_the_resource(server: LwM2mServer) -> None:
    async with running(server) as (h, fleet):
        client = fleet.client(EP)
        await h.bridge.attributes_updated(EP, {"utcOffset": "+05:00", "notAKey": 1, "battery": "full"}, [])
        assert client.overrides is not None and client.overrides[LwM2mPath(3, 0, 14)] == "+05:00"
        stats = h.bridge.stats()
        assert stats.attribute_writes == 1
        assert stats.attribute_write_errors == 1  # "full" is no Integer for /3/0/9


async def test_every_rpc_method_against_the_simulator(server: LwM2mServer) -> None:
    async with running(server) as (h, fleet):
        client = fleet.client(EP)
        battery = "LwM2mSingleResource [id=9, value=100, type=INTEGER]"
        assert await rpc(h, "Read", {"id": "/3/0/9"}) == {"result": "CONTENT", "value": battery}
        assert await rpc(h, "Read", {"key": "battery"}) == {"result": "CONTENT", "value": battery}
        assert await rpc(h, "Read", '{"id": "/3_1.0/0/9"}') == {"result": "CONTENT", "value": battery}
        instance = (await rpc(h, "Read", {"id": "/3/0"}))["value"]
        assert instance.startswith("LwM2mObjectInstance [id=0, resources={0=LwM2mSingleResource [id=0, "
                                   "value=edge-gateway, type=STRING], 1=")
        assert "11=LwM2mMultipleResource [id=11, values={0=LwM2mResourceInstance [id=0, value=0, type=INTEGER]}" \
            in instance

        discover = await rpc(h, "Discover", {"id": "/3/0"})
        assert discover["result"] == "CONTENT" and "</3/0/9>;pmin=1;pmax=30" in discover["value"]
        links = json.loads((await rpc(h, "DiscoverAll"))["value"])
        assert links == ["</1/0>", "</3/0>", "</3303/0>"]

        assert await rpc(h, "WriteReplace", {"id": "/3/0/14", "value": "+02"}) == {"result": "CHANGED"}
        assert client.overrides is not None and client.overrides[LwM2mPath(3, 0, 14)] == "+02"
        assert await rpc(h, "WriteUpdate", {"id": "/3/0", "value": {"14": "+03", "15": "Europe/Paris"}}) == {
            "result": "CHANGED"}
        assert client.overrides[LwM2mPath(3, 0, 15)] == "Europe/Paris"
        assert await rpc(h, "WriteAttributes", {"id": "/3303/0/5700", "attributes": {"pmin": 5, "pmax": 50}}) == {
            "result": "CHANGED"}
        assert client.attributes["/3303/0/5700"] == ("pmin=5", "pmax=50")

        composite = await rpc(h, "ReadComposite", {"ids": ["/3/0/9", "/3303/0/5701"]})
        assert composite == {"result": "CONTENT", "value": "{/3/0/9=" + battery + ", /3303/0/5701="
                             "LwM2mSingleResource [id=5701, value=Cel, type=STRING]}"}
        assert (await rpc(h, "ReadComposite", {"keys": ["battery"]}))["value"] == "{/3/0/9=" + battery + "}"
        assert await rpc(h, "WriteComposite", {"nodes": {"/3/0/15": "UTC", "utcOffset": "+05"}}) == {
            "result": "CHANGED"}
        assert client.overrides[LwM2mPath(3, 0, 14)] == "+05" and client.overrides[LwM2mPath(3, 0, 15)] == "UTC"

        assert await rpc(h, "Execute", {"id": "/3/0/4"}) == {"result": "CHANGED"}
        assert await rpc(h, "Execute", {"id": "/3303/0/5605", "value": "0='all'"}) == {"result": "CHANGED"}
        assert client.executions[-2:] == [("/3/0/4", b""), ("/3303/0/5605", b"0='all'")]

        assert await rpc(h, "Create", {"id": "/3303", "value": {"5700": 12.5, "5701": "Cel"}}) == {
            "result": "CREATED", "value": "location=/3303/1"}
        assert await rpc(h, "Create", {"id": "/3303", "nodes": {"7": {"5701": "K"}}}) == {
            "result": "CREATED", "value": "location=/3303/7"}
        assert client.instances == {0, 1, 7}
        assert await rpc(h, "Delete", {"id": "/3303/1"}) == {"result": "DELETED"}
        assert client.instances == {0, 7}

        observed = await rpc(h, "Observe", {"id": "/3303/0/5601"})
        assert observed == {"result": "CONTENT", "value": "LwM2mSingleResource [id=5601, value=15.0, type=FLOAT]"}
        composite = await rpc(h, "ObserveComposite", {"ids": ["/3/0/9", "/3303/0/5602"]})
        assert composite["result"] == "CONTENT" and composite["value"].startswith("{/3/0/9=")
        observations = json.loads((await rpc(h, "ObserveReadAll"))["value"])
        assert observations == [
            "CompositeObservation: [/3/0/9, /3303/0/5602]",
            "SingleObservation:/3/0/9",
            "SingleObservation:/3303/0/5601",
            "SingleObservation:/3303/0/5700",
        ]
        assert await rpc(h, "ObserveCompositeCancel", {"ids": ["/3303/0/5602", "/3/0/9"]}) == {
            "result": "CONTENT", "value": "1"}
        assert await rpc(h, "ObserveCancel", {"id": "/3303/0/5601"}) == {"result": "CONTENT", "value": "1"}
        assert await rpc(h, "ObserveCancelAll") == {"result": "CONTENT", "value": "2"}
        assert await rpc(h, "ObserveReadAll") == {"result": "CONTENT", "value": "[]"}
        assert h.bridge.stats().rpcs == 24 and h.bridge.stats().rpc_errors == 0


async def test_rpc_errors_are_precise(server: LwM2mServer) -> None:
    async with running(server) as (h, _fleet):
        assert await rpc_error(h, "Reboot") == {
            "result": "METHOD_NOT_ALLOWED", "code": "unknown_method",
            "error": "unsupported LwM2M RPC method 'Reboot' (known: Read, Discover, DiscoverAll, WriteUpdate, "
                     "WriteReplace, WriteAttributes, ReadComposite, WriteComposite, Delete, Execute, Create, "
                     "Observe, ObserveCancel, ObserveCancelAll, ObserveReadAll, ObserveComposite, "
                     "ObserveCompositeCancel)"}
        reply = await rpc_error(h, "Read", {"id": "/3304/0/5700"})
        assert reply == {"result": "BAD_REQUEST", "code": "unknown_path",
                         "error": "object 3304 is not registered by sim-000000 (it registered /1, /3, /3303)"}
        reply = await rpc_error(h, "Read", {"id": "/3303/9/5700"})  # the device says no
        assert reply["result"] == "NOT_FOUND" and reply["code"] == "coap_error" and reply["coap"] == "4.04"
        assert reply["error"].startswith("sim-000000: Read /3303/9/5700: 4.04 Not Found")
        reply = await rpc_error(h, "Read", {"id": "/3_1.2/0/9"})
        assert reply["code"] == "unknown_path" and "in version 1.0, not 1.2" in reply["error"]
        reply = await rpc_error(h, "WriteComposite", {"nodes": {"units": "Far"}})  # a read-only resource
        assert reply["result"] == "METHOD_NOT_ALLOWED" and reply["coap"] == "4.05" and "not writable" in reply["error"]
        assert (await rpc_error(h, "Read", {"key": "nope"}))["code"] == "unknown_key"
        assert (await rpc_error(h, "Read", {"id": "/0/0/1"}))["code"] == "unknown_path"
        for method, params, text in [
            ("Read", None, "params need 'id'"),
            ("Read", [1], "params must be an object"),
            ("Read", "{not json", "params are not a JSON object"),
            ("Read", {"id": "/3/0/x"}, "invalid LwM2M path"),
            ("WriteReplace", {"id": "/3/0/9", "value": "abc"}, "is not a Integer value"),
            ("WriteReplace", {"id": "/3/0/4", "value": 1}, "is executable"),
            ("WriteReplace", {"id": "/3/0/9"}, "params need 'value'"),
            ("WriteAttributes", {"id": "/3/0/9", "attributes": {"period": 5}}, "unknown notification attribute"),
            ("WriteAttributes", {"id": "/3/0/9", "attributes": {"pmin": "x"}}, "pmin must be a number"),
            ("Execute", {"id": "/3/0"}, "Execute targets a resource"),
            ("Delete", {"id": "/3303"}, "Delete targets an object instance"),
            ("ReadComposite", {"ids": "/3/0/9"}, "ids: expected a list"),
            ("WriteComposite", {"nodes": {"/3/0": 5}}, "WriteComposite writes resources"),
        ]:
            reply = await rpc_error(h, method, params)
            assert reply["result"] == "BAD_REQUEST" and reply["code"] == "bad_params", (method, reply)
            assert text in reply["error"], (method, reply)
        assert (await rpc_error(h, "Read", {"id": "/3/0/9"}, device="nobody"))["code"] == "device_offline"


async def test_rpc_timeout_and_a_device_that_goes_away_mid_rpc(server: LwM2mServer) -> None:
    async with running(server, count=2) as (h, fleet):
        fleet.client(EP).silent = True  # receives, never answers
        reply = await rpc_error(h, "Read", {"id": "/3/0/9"}, timeout=0.5)
        assert reply["result"] == "TIMEOUT" and reply["code"] == "timeout"

        silent = fleet.client("sim-000001")
        silent.silent = True
        received = fleet.stats["requests_received"]
        pending = asyncio.ensure_future(rpc(h, "Read", {"id": "/3/0/9"}, device="sim-000001", timeout=30))
        await fleet.until(lambda: fleet.stats["requests_received"] > received)
        silent.deregister()  # gone while its Read is pending
        with pytest.raises(LwM2mRpcError) as info:
            await asyncio.wait_for(pending, 10)
        reply = info.value.as_reply()
        assert reply["code"] == "device_gone" and reply["result"] == "SERVICE_UNAVAILABLE"
        assert "ended (deregistered)" in reply["error"]


async def test_rpc_to_a_queue_mode_device_waits_until_it_wakes(server_factory: Any) -> None:
    server = await server_factory(queue_awake_time=0.001)
    # a key but nothing to read or observe: no request after registration
    async with running(server, 'name = "sleepy"\n[paths."/3/0/9"]\nkey = "battery"\n', queue_mode=True) as (h, fleet):
        # the device listens 1 ms after it talked: once that window is over, an RPC is held until it talks
        device = server.registrations.device(EP)
        assert device is not None
        while server.loop.time() <= device.awake_until:
            await asyncio.sleep(0)
        pending = asyncio.ensure_future(rpc(h, "Read", {"id": "/3/0/9"}, timeout=30))
        while server.stats()["held_requests"] == 0 and not pending.done():
            await asyncio.sleep(0)
        assert not pending.done()
        fleet.client(EP).update()  # it wakes up
        assert (await asyncio.wait_for(pending, 10))["result"] == "CONTENT"
        # one that does not wake up in time (asleep: it hears nothing)
        fleet.client(EP).asleep = True
        reply = await rpc_error(h, "Read", {"id": "/3/0/9"}, timeout=0.3)
        assert reply["code"] == "timeout" and reply["result"] == "TIMEOUT"
