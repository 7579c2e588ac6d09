"""Queue mode: requests to a sleeping device are held, bounded, sent one at a time when it talks,
and time out at their deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import LwM2mServer, QueueFull, RequestFailed, RequestTimeout

TEMPERATURE = LwM2mPath(3303, 0, 5700)


@pytest.fixture
async def sleeper(server_factory: Any, fleet_factory: Any) -> tuple[LwM2mServer, Any]:
    # awake time 0: the device listens only right when it talks, so every request waits for it
    server = await server_factory(queue_awake_time=0.0, max_held_per_device=3, max_held_total=5)
    fleet = await fleet_factory(2, target=server, queue_mode=True)
    await fleet.register_and_wait()
    return server, fleet


async def test_held_requests_go_one_at_a_time_when_the_device_talks(sleeper: tuple[LwM2mServer, Any]) -> None:
    server, fleet = sleeper
    client = fleet.clients[0]
    assert server.registrations.get(client.endpoint).queue_mode  # type: ignore[union-attr]
    reads = [asyncio.ensure_future(server.read(client.endpoint, path)) for path in ("/3/0/0", "/3/0/9", TEMPERATURE)]
    await asyncio.sleep(0)  # one loop turn: the reads reach the queue (no time passes)
    assert fleet.stats["requests_received"] == 0
    assert server.devices()[0].held_requests == 3
    assert server.stats()["held_requests"] == 3
    client.update()  # the device wakes up
    results = await asyncio.wait_for(asyncio.gather(*reads), 10)
    assert all(r.ok for r in results)
    assert results[0].value.value == "edge-gateway"  # type: ignore[union-attr]
    assert fleet.stats["requests_received"] == 3
    assert server.stats()["held_requests"] == 0


async def test_a_notification_or_send_also_wakes_the_device(sleeper: tuple[LwM2mServer, Any]) -> None:
    server, fleet = sleeper
    client = fleet.clients[1]
    read = asyncio.ensure_future(server.read(client.endpoint, "/3/0/2"))
    await asyncio.sleep(0)
    client.send_values([TEMPERATURE])
    response = await asyncio.wait_for(read, 10)
    assert response.ok and response.value.value == client.endpoint  # type: ignore[union-attr]


async def test_held_requests_time_out_at_their_deadline(sleeper: tuple[LwM2mServer, Any]) -> None:
    server, fleet = sleeper
    with pytest.raises(RequestTimeout, match="did not wake up"):
        await server.read(fleet.clients[0].endpoint, "/3/0/0", timeout=0.2)
    assert server.stats()["held_requests"] == 0


async def test_held_requests_are_bounded_per_device_and_in_total(sleeper: tuple[LwM2mServer, Any]) -> None:
    server, fleet = sleeper
    a, b = (c.endpoint for c in fleet.clients)
    held = [asyncio.ensure_future(server.read(a, "/3/0/0", timeout=30)) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="already has 3"):
        await server.read(a, "/3/0/0")
    held += [asyncio.ensure_future(server.read(b, "/3/0/0", timeout=30)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="5 requests are held"):
        await server.read(b, "/3/0/0")
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_deregistration_fails_held_requests(sleeper: tuple[LwM2mServer, Any], recorder: Any) -> None:
    server, fleet = sleeper
    client = fleet.clients[0]
    read = asyncio.ensure_future(server.read(client.endpoint, "/3/0/0"))
    await asyncio.sleep(0)
    client.deregister()
    with pytest.raises(RequestFailed, match=r"registration of .* ended"):
        await asyncio.wait_for(read, 10)
    assert server.stats()["held_requests"] == 0


async def test_a_device_awake_for_a_while_is_reached_directly(server_factory: Any, fleet_factory: Any) -> None:
    server = await server_factory(queue_awake_time=60.0)
    fleet = await fleet_factory(1, target=server, queue_mode=True)
    await fleet.register_and_wait()
    response = await asyncio.wait_for(server.read(fleet.clients[0].endpoint, "/3/0/0"), 10)
    assert response.ok
