"""Register, Update, De-register and expiry against the fleet simulator (a separate CoAP implementation)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import (
    DeregistrationReason,
    DeviceNotRegistered,
    LwM2mServer,
    Refusal,
    ResponseCode,
)


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
async def test_clients_of_every_served_version_register_and_are_readable(
    server: LwM2mServer, fleet_factory: Any, recorder: Any, version: str
) -> None:
    fleet = await fleet_factory(3, lwm2m_version=version, prefix=f"v{version}-")
    await fleet.register_and_wait()
    assert len(server.registrations) == 3
    reg = server.registrations.get(f"v{version}-000001")
    assert reg is not None
    assert reg.lwm2m_version == version
    assert sorted(reg.objects) == [1, 3, 3303]
    assert server.registrations.by_location(reg.id) == reg
    assert [r.endpoint for r in recorder.registered] == [c.endpoint for c in fleet.clients]
    response = await server.read(reg.endpoint, "/3/0")
    assert response.ok
    # a 1.0 client declared no formats: the instance comes as TLV; 1.1+ get their first declared node format
    assert response.content_format == (ContentFormat.TLV if version == "1.0" else ContentFormat.SENML_CBOR)


async def test_update_refreshes_lifetime_and_replaces_objects(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    client.update()
    await recorder.until(lambda: len(recorder.updated) == 1)
    reg, update = recorder.updated[0]
    assert update.empty
    client.instances.add(7)
    client.update(with_objects=True, lifetime=1234)
    await recorder.until(lambda: len(recorder.updated) == 2)
    reg, update = recorder.updated[1]
    assert update.lifetime == 1234 and reg.lifetime == 1234
    assert reg.objects[3303].instances == (0, 7)
    assert server.registrations.get(client.endpoint) == reg
    status = server.devices()[0]
    assert status.lifetime == 1234 and 1200 < status.lifetime_left <= 1234


async def test_deregister_ends_the_registration(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(2)
    await fleet.register_and_wait()
    fleet.clients[0].deregister()
    await recorder.until(lambda: len(recorder.deregistered) == 1)
    reg, reason = recorder.deregistered[0]
    assert (reg.endpoint, reason) == (fleet.clients[0].endpoint, DeregistrationReason.DEREGISTERED)
    await fleet.until(lambda: fleet.stats["deregistered"] == 1)
    assert len(server.registrations) == 1
    with pytest.raises(DeviceNotRegistered):
        await server.read(fleet.clients[0].endpoint, "/3/0/0")


async def test_lifetime_expiry(server_factory: Any, fleet_factory: Any, recorder: Any) -> None:
    server = await server_factory(lifetime_grace=0.0)
    fleet = await fleet_factory(20, target=server, lifetime=1, update_interval=3600)
    await fleet.register_and_wait()
    keeper = fleet.clients[0]
    keeper.lifetime = 60
    keeper.update(lifetime=60)  # this one stays
    await recorder.until(lambda: len(recorder.deregistered) == 19, timeout=10)
    assert {reason for _, reason in recorder.deregistered} == {DeregistrationReason.EXPIRED}
    assert list(server.registrations) == [server.registrations.get(keeper.endpoint)]


async def test_no_timer_handle_per_endpoint(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(300)
    await fleet.register_and_wait()
    loop = asyncio.get_running_loop()
    # every lifetime lives in the server's one heap; the loop holds a handful of handles at most
    # (the server's and the simulator's heap timers, aiocoap's transient ones)
    assert len(server.timers) == 300
    assert len(loop._scheduled) < 20  # type: ignore[attr-defined]


async def test_reregistration_from_a_new_address_replaces(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    first = await fleet_factory(1, prefix="same-")
    await first.register_and_wait()
    old = server.registrations.get("same-000000")
    second = await fleet_factory(1, prefix="same-")  # the same endpoint name from another socket
    await second.register_and_wait()
    new = server.registrations.get("same-000000")
    assert old is not None and new is not None
    assert new.id != old.id and new.address != old.address
    assert recorder.deregistered == [(old, DeregistrationReason.REPLACED)]
    assert len(server.registrations) == 1
    assert server.registrations.by_location(old.id) is None
    assert (await server.read("same-000000", "/3/0/2")).ok
    assert second.stats["read"] == 1 and first.stats["read"] == 0


async def test_update_of_an_unknown_location_gets_404(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    reg = server.registrations.get(client.endpoint)
    assert reg is not None
    server._end(server.registrations.device(client.endpoint), DeregistrationReason.EXPIRED)  # type: ignore[arg-type]
    client.update()
    # the simulator answers 4.04 with a new Register, as LwM2M clients must
    await fleet.until(lambda: fleet.stats["register_sent"] == 2 and fleet.registered == 1)
    again = server.registrations.get(client.endpoint)
    assert again is not None and again.id != reg.id


async def test_registration_check_refuses(server_factory: Any, fleet_factory: Any) -> None:
    calls: list[tuple[str, tuple[object, ...]]] = []

    def check(endpoint: str, claims: object) -> Refusal | None:
        calls.append((endpoint, tuple(claims)))  # type: ignore[arg-type]
        if endpoint.endswith("1"):
            return Refusal(ResponseCode.FORBIDDEN, "not on the list")
        return None

    server = await server_factory(registration_check=check)
    fleet = await fleet_factory(2, target=server)
    fleet.register_all()
    await fleet.until(lambda: fleet.registered == 1 and fleet.stats["register_failed"] == 1)
    assert fleet.clients[1].last_error == ResponseCode.FORBIDDEN
    assert sorted(calls) == [("sim-000000", ()), ("sim-000001", ())]
    assert server.stats()["refused_registrations"] == 1


async def test_nosec_is_refused_unless_admitted(server_factory: Any, fleet_factory: Any) -> None:
    server = await server_factory(admit_nosec=False)
    fleet = await fleet_factory(1, target=server)
    fleet.register_all()
    await fleet.until(lambda: fleet.stats["register_failed"] == 1)
    assert fleet.clients[0].last_error == ResponseCode.FORBIDDEN
    assert len(server.registrations) == 0


async def test_operator_view(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(2, queue_mode=True, lifetime=300)
    await fleet.register_and_wait()
    rows = server.devices()
    assert [row.endpoint for row in rows] == ["sim-000000", "sim-000001"]
    row = rows[0]
    assert row.address.startswith("127.0.0.1:")
    assert row.binding == "UQ"
    assert row.objects == ("/1/0", "/3/0", "/3303/0")
    assert 0 < row.lifetime_left <= 300
    assert row.observations == 0 and row.held_requests == 0
    assert abs(row.last_seen - __import__("time").time()) < 10


async def test_a_registration_flood_is_served(server: LwM2mServer, fleet_factory: Any) -> None:
    bystander = await fleet_factory(1, prefix="bystander-")
    await bystander.register_and_wait()
    flood = await fleet_factory(1500, prefix="flood-")
    flood.register_all()
    # the flood is under way; an existing device is still served
    read = await server.read("bystander-000000", LwM2mPath(3, 0, 0), timeout=10)
    assert read.ok
    await flood.until(lambda: flood.registered == 1500, timeout=60)
    assert len(server.registrations) == 1501
    stats = server.stats()
    assert stats["fast_requests"] >= 1501
    assert stats["dedup_entries"] <= 1501 + stats["duplicate_requests"]


async def test_another_transport_plugs_in(server: LwM2mServer, fleet_factory: Any) -> None:
    # what the DTLS and serial transports do: a MessageInterface built for the server's message manager
    import logging

    from gateway.lwm2m.server.udp import UdpTransport

    loop = asyncio.get_running_loop()

    async def second(mman: Any) -> UdpTransport:
        return await UdpTransport.create(mman, logging.getLogger("test"), loop, bind=("127.0.0.1", 0))

    _, transport = await server.add_transport(second)
    fleet = await fleet_factory(2)
    fleet.server = ("127.0.0.1", transport.port)  # the simulator's sockets are connected at start
    for client in fleet.clients:
        client.sock.connect(fleet.server)
    await fleet.register_and_wait()
    assert (await server.read(fleet.clients[0].endpoint, "/3/0/0")).ok
    # without the fast path, notifications come through aiocoap's message layer
    observation = (await server.observe(fleet.clients[1].endpoint, "/3303/0/5700")).observation
    assert observation is not None
    fleet.clients[1].notify(confirmable=True)
    await fleet.until(lambda: not fleet.clients[1].outgoing)
    assert server.stats()["notifications"] == 1 and server.stats()["fast_notifications"] == 0
