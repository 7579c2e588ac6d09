"""Information reporting against the fleet simulator: Observe, cancel, Observe-Composite, CON and NON
notifications, Send."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import ResourceInstance, SingleResource
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import LwM2mServer, ObservationEnd, ResponseCode

TEMPERATURE = LwM2mPath(3303, 0, 5700)


@pytest.mark.parametrize("confirmable", [False, True])
async def test_observe_and_notifications(
    server: LwM2mServer, fleet_factory: Any, recorder: Any, confirmable: bool
) -> None:
    fleet = await fleet_factory(2, confirmable_notifications=confirmable)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    response = await server.observe(client.endpoint, TEMPERATURE)
    assert response.ok and isinstance(response.value, SingleResource)
    observation = response.observation
    assert observation is not None
    assert (observation.endpoint, observation.paths, observation.composite) == (client.endpoint, (TEMPERATURE,), False)
    assert server.observations(client.endpoint) == [observation]
    for step in range(3):
        client.temperature = 30.0 + step
        client.notify()
    await recorder.until(lambda: len(recorder.notifications) == 3)
    reg, obs, values = recorder.notifications[-1]
    assert reg.endpoint == client.endpoint and obs == observation
    assert [(v.path, v.value) for v in values] == [(TEMPERATURE, 32.0)]
    assert [n[2][0].value for n in recorder.notifications] == [30.0, 31.0, 32.0]
    if confirmable:  # every CON notification was acknowledged
        await fleet.until(lambda: not client.outgoing)
    assert server.stats()["notifications"] == 3


async def test_active_cancel_sends_observe_1(server: LwM2mServer, fleet_factory: Any, recorder: Any) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    observation = (await server.observe(client.endpoint, TEMPERATURE)).observation
    assert observation is not None and len(client.observations) == 1
    await server.cancel_observation(observation)
    assert client.observations == {} and fleet.stats["observe_cancelled"] == 1
    assert server.observations(client.endpoint) == []


async def test_passive_cancel_resets_the_next_notification(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    observation = (await server.observe(client.endpoint, TEMPERATURE)).observation
    assert observation is not None
    await server.cancel_observation(observation, active=False)
    client.notify()  # NON: the server answers with RST, the client forgets the observation
    await fleet.until(lambda: fleet.stats["observations_reset"] == 1)
    assert client.observations == {}
    assert recorder.notifications == []


async def test_a_con_notification_for_a_forgotten_observation_is_reset(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(1, confirmable_notifications=True)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    observation = (await server.observe(client.endpoint, TEMPERATURE)).observation
    assert observation is not None
    await server.cancel_observation(observation, active=False)
    client.notify()
    await fleet.until(lambda: fleet.stats["observations_reset"] == 1)
    assert recorder.notifications == []


async def test_observe_composite(server: LwM2mServer, fleet_factory: Any, recorder: Any) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    response = await server.observe_composite(client.endpoint, ["/3/0/9", TEMPERATURE])
    assert response.ok and response.value is not None
    assert set(response.value) == {LwM2mPath(3, 0, 9), TEMPERATURE}
    observation = response.observation
    assert observation is not None and observation.composite
    client.battery = 42
    client.notify()
    await recorder.until(lambda: len(recorder.notifications) == 1)
    values = {v.path: v.value for v in recorder.notifications[0][2]}
    assert values[LwM2mPath(3, 0, 9)] == 42
    await server.cancel_observation(observation)
    assert client.observations == {}


async def test_reobserving_a_path_replaces_the_old_observation(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    ep = fleet.clients[0].endpoint
    first = (await server.observe(ep, TEMPERATURE)).observation
    second = (await server.observe(ep, TEMPERATURE)).observation
    assert first is not None and second is not None and first.token != second.token
    assert server.observations(ep) == [second]


async def test_stale_and_duplicate_notifications_are_dropped(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    await server.observe(client.endpoint, TEMPERATURE)
    (obs,) = client.observations.values()
    client.notify()
    obs.seq -= 2  # the next one carries an older sequence number
    client.notify()
    obs.seq += 5
    client.notify()
    await recorder.until(lambda: len(recorder.notifications) == 2)
    assert server.stats()["stale_notifications"] == 1


async def test_registration_end_drops_observations(server: LwM2mServer, fleet_factory: Any, recorder: Any) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    await server.observe(client.endpoint, TEMPERATURE)
    assert len(server.exchanges) == 1
    observations = dict(client.observations)
    client.deregister()
    await recorder.until(lambda: len(recorder.deregistered) == 1)
    assert len(server.exchanges) == 0
    # a device that still notifies afterwards is reset; nobody hears of it
    client.observations.update(observations)
    client.registered = True
    client.notify()
    await fleet.until(lambda: fleet.stats["observations_reset"] == 1)
    assert recorder.notifications == []


async def test_an_error_notification_ends_the_observation(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    observation = (await server.observe(client.endpoint, TEMPERATURE)).observation
    (obs,) = client.observations.values()
    obs.paths = (LwM2mPath(3303, 0, 9999),)  # the resource "disappeared": the device sends 4.04
    client.notify()  # encoding fails in the simulator: nothing is sent
    from gateway.sim.lwm2m_client import NON, NOT_FOUND, OBSERVE, encode_message, uint

    client._send(encode_message(NON, NOT_FOUND, client._next_mid(), obs.token, [(OBSERVE, uint(obs.seq + 1))]))
    await recorder.until(lambda: len(recorder.ended) == 1)
    assert recorder.ended == [(observation, ObservationEnd.ERROR_NOTIFICATION)]
    assert server.observations(client.endpoint) == []


async def test_a_large_notification_is_completed_blockwise(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(1, blob=b"a" * 3000)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    response = await server.observe(client.endpoint, "/19/0/0/0")
    assert response.ok and response.value == ResourceInstance(0, b"a" * 3000, ResourceType.OPAQUE)
    client.blob = b"b" * 2500
    client.notify()
    await recorder.until(lambda: len(recorder.notifications) == 1)
    assert recorder.notifications[0][2][0].value == b"b" * 2500


@pytest.mark.parametrize("fmt", [ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON, ContentFormat.LWM2M_CBOR])
async def test_send(server: LwM2mServer, fleet_factory: Any, recorder: Any, fmt: ContentFormat) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    client.send_values([TEMPERATURE, LwM2mPath(3, 0, 9)], fmt)
    await recorder.until(lambda: len(recorder.sends) == 1)
    reg, values = recorder.sends[0]
    assert reg.endpoint == client.endpoint
    assert {v.path for v in values} == {TEMPERATURE, LwM2mPath(3, 0, 9)}
    if fmt != ContentFormat.LWM2M_CBOR:  # LwM2M CBOR carries no time
        assert all(v.ts is not None for v in values)
    await fleet.until(lambda: fleet.stats["send_ok"] == 1)


async def test_send_from_an_unregistered_client_is_refused(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(1)
    fleet.clients[0].send_values([TEMPERATURE])
    await fleet.until(lambda: fleet.stats["send_failed"] == 1)
    assert server.stats()["sends"] == 0


async def test_observe_of_a_missing_resource_is_an_error_response(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    response = await server.observe(fleet.clients[0].endpoint, "/3303/0/9999")
    assert response.code == ResponseCode.NOT_FOUND and response.observation is None
    assert len(server.exchanges) == 0


async def test_notifications_take_the_fast_path_only_from_the_device(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(2)
    await fleet.register_and_wait()
    device, spoofer = fleet.clients
    await server.observe(device.endpoint, TEMPERATURE)
    (obs,) = device.observations.values()
    device.notify()
    await recorder.until(lambda: len(recorder.notifications) == 1)
    assert server.stats()["fast_notifications"] == 1
    # the same token from another address is not the device's notification: reset, not delivered
    from gateway.sim.lwm2m_client import _notification_bytes

    spoofer._non_sent[0x4242] = obs.token
    spoofer.observations[obs.token] = obs
    spoofer._send(_notification_bytes(False, 0x4242, obs.token, obs.seq + 10, 0, b"99.0"))
    await fleet.until(lambda: fleet.stats["observations_reset"] == 1)
    assert len(recorder.notifications) == 1
    assert server.stats()["fast_notifications"] == 1
