"""Misbehaving devices get a clear error and cost the other devices nothing."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import InvalidResponse, LwM2mServer, RequestTimeout
from gateway.sim.lwm2m_client import CONTENT, CONTENT_FORMAT, NON, OBSERVE, encode_message, uint

TEMPERATURE = LwM2mPath(3303, 0, 5700)


async def test_a_device_that_never_answers_times_out_alone(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(5)
    await fleet.register_and_wait()
    mute = fleet.clients[0]
    mute.silent = True
    stuck = asyncio.ensure_future(server.read(mute.endpoint, "/3/0/0", timeout=1.0))
    # the others answer while the mute one is being retried
    others = await asyncio.wait_for(
        asyncio.gather(*(server.read(c.endpoint, "/3/0/0") for c in fleet.clients[1:])), 5
    )
    assert all(r.ok for r in others)
    assert not stuck.done()
    with pytest.raises(RequestTimeout, match="no answer"):
        await stuck
    assert server.stats()["pending_requests"] == 0
    assert mute.fleet.stats["requests_received"] >= 1


async def test_requests_in_flight_are_bounded_server_wide(server_factory: Any, fleet_factory: Any) -> None:
    server = await server_factory(max_in_flight=2)
    fleet = await fleet_factory(6, target=server)
    await fleet.register_and_wait()
    for client in fleet.clients:
        client.silent = True
    reads = [asyncio.ensure_future(server.read(c.endpoint, "/3/0/0", timeout=0.5)) for c in fleet.clients]
    await fleet.until(lambda: fleet.stats["requests_received"] == 2)
    assert server.stats()["requests_in_flight"] == 2
    assert server.exchanges.queued == 4
    for client in fleet.clients:
        client.silent = False
    results = await asyncio.gather(*reads, return_exceptions=True)
    # the first two time out (their answers were never sent), the others go as room frees up
    assert sum(isinstance(r, RequestTimeout) for r in results) >= 2
    assert server.stats()["requests_in_flight"] == 0 and server.stats()["pending_requests"] == 0


async def test_wrong_content_format(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(2)
    await fleet.register_and_wait()
    liar = fleet.clients[0]
    liar.wrong_format = True  # SenML CBOR bytes labelled as TLV
    with pytest.raises(InvalidResponse, match=liar.endpoint):
        await server.read(liar.endpoint, "/3/0")
    assert (await server.read(fleet.clients[1].endpoint, "/3/0")).ok


async def test_truncated_tlv(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(1, lwm2m_version="1.0")  # a 1.0 client answers in TLV
    await fleet.register_and_wait()
    client = fleet.clients[0]
    client.truncate = True
    with pytest.raises(InvalidResponse) as e:
        await server.read(client.endpoint, "/3/0", format=ContentFormat.TLV)
    assert "/3/0" in str(e.value)


async def test_undecodable_notifications_are_dropped_and_counted(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(2)
    await fleet.register_and_wait()
    bad, good = fleet.clients
    for client in (bad, good):
        assert (await server.observe(client.endpoint, TEMPERATURE)).observation is not None
    (obs,) = bad.observations.values()
    garbage = encode_message(NON, CONTENT, bad._next_mid(), obs.token,
                             [(OBSERVE, uint(obs.seq + 1)), (CONTENT_FORMAT, uint(ContentFormat.TLV))], b"\xc8\x00")
    bad._send(garbage)
    good.notify()  # on loopback the server reads its socket in order: the garbage is handled first
    await recorder.until(lambda: len(recorder.notifications) == 1)
    assert recorder.notifications[0][0].endpoint == good.endpoint
    assert server.stats()["bad_notifications"] == 1


async def test_unparsable_datagrams_are_ignored(server: LwM2mServer, fleet_factory: Any) -> None:
    fleet = await fleet_factory(1)
    await fleet.register_and_wait()
    host, port = server.address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"", b"\x00", b"\xff" * 20, b"\x40\x01", bytes(range(64))):
            sock.sendto(junk, (host, port))
    # still serving
    assert (await server.read(fleet.clients[0].endpoint, "/3/0/0")).ok
    assert server.stats()["udp_unparsable"] >= 3


async def test_duplicate_registrations_are_answered_once(
    server: LwM2mServer, fleet_factory: Any, recorder: Any
) -> None:
    fleet = await fleet_factory(1)
    client = fleet.clients[0]
    client.register()
    (out,) = client.outgoing.values()
    client._send(out.data)  # the same CON again (as if our ACK had been lost)
    client._send(out.data)
    # the answer and two copies of it (from duplicate detection, not a second registration)
    await fleet.until(lambda: fleet.registered == 1 and fleet.stats["datagrams_received"] == 3)
    assert server.stats()["duplicate_requests"] == 2
    assert len(recorder.registered) == 1


async def test_pending_requests_are_bounded_per_device(server_factory: Any, fleet_factory: Any) -> None:
    from gateway.lwm2m.server import QueueFull

    server = await server_factory(max_pending_per_device=2)
    fleet = await fleet_factory(1, target=server)
    await fleet.register_and_wait()
    client = fleet.clients[0]
    client.silent = True
    pending = [asyncio.ensure_future(server.read(client.endpoint, "/3/0/0", timeout=0.3)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="already has 2 requests pending"):
        await server.read(client.endpoint, "/3/0/0")
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, RequestTimeout) for r in results)
    assert server.stats()["pending_requests"] == 0


async def test_a_cancelled_request_frees_its_place(server_factory: Any, fleet_factory: Any) -> None:
    server = await server_factory(max_in_flight=1)
    fleet = await fleet_factory(2, target=server)
    await fleet.register_and_wait()
    mute, other = fleet.clients
    mute.silent = True
    stuck = asyncio.ensure_future(server.read(mute.endpoint, "/3/0/0", timeout=60))
    await fleet.until(lambda: fleet.stats["requests_received"] == 1)
    waiting = asyncio.ensure_future(server.read(other.endpoint, "/3/0/0"))
    await asyncio.sleep(0)
    assert server.exchanges.queued == 1
    stuck.cancel()  # the caller gives up: the window has room again at once
    response = await asyncio.wait_for(waiting, 5)
    assert response.ok
    assert server.stats()["pending_requests"] == 0
