"""The server against an LwM2M client the project did not write: the npm package ``lwm2m-node-lib``
(installed into tests/peers/node_modules by scripts/bootstrap), driven by tests/peers/lwm2m_client.js.

lwm2m-node-lib speaks LwM2M 1.0 with plain-text values and opens a new socket for each Update and
De-register (so the registration follows it to the new address, as NoSec allows)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import SingleResource
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import DeregistrationReason, LwM2mServer

PEERS = Path(__file__).resolve().parents[1] / "peers"
NODE = shutil.which("node")
LIBRARY = PEERS / "node_modules" / "lwm2m-node-lib"

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(NODE is None, reason="node is not installed (apt install nodejs npm)"),
    pytest.mark.skipif(
        not LIBRARY.is_dir(),
        reason="lwm2m-node-lib is not installed: run scripts/bootstrap (npm install in tests/peers)",
    ),
]


class NodeClient:
    """One lwm2m-node-lib client process: JSON commands in, JSON events out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []

    async def event(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """The next event called ``name`` (earlier events of other names are kept in ``seen``)."""
        assert self.proc.stdout is not None

        async def read() -> dict[str, Any]:
            while True:
                line = await self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise AssertionError(f"lwm2m-node-lib client exited while waiting for {name!r}: {self.seen}")
                event: dict[str, Any] = json.loads(line)
                self.seen.append(event)
                if event.get("event") == "error":
                    raise AssertionError(f"lwm2m-node-lib client reported {event}")
                if event.get("event") == name:
                    return event

        return await asyncio.wait_for(read(), timeout)

    def command(self, **command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())


@pytest.fixture
async def node_client(server: LwM2mServer) -> AsyncIterator[NodeClient]:
    host, port = server.address
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, str(PEERS / "lwm2m_client.js"), host, str(port), "node-client",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        cwd=PEERS,
    )
    client = NodeClient(proc)
    try:
        await client.event("registered")
        yield client
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_register(server: LwM2mServer, node_client: NodeClient, recorder: Any) -> None:
    reg = server.registrations.get("node-client")
    assert reg is not None
    assert reg.lwm2m_version == "1.0" and reg.binding == "U" and reg.lifetime == 60
    assert sorted(reg.objects) == [3, 3303]
    assert [r.endpoint for r in recorder.registered] == ["node-client"]


async def test_read(server: LwM2mServer, node_client: NodeClient) -> None:
    manufacturer = await server.read("node-client", "/3/0/0")
    assert manufacturer.value == SingleResource(0, "Open Mobile Alliance", ResourceType.STRING)
    temperature = await server.read("node-client", "/3303/0/5700")
    assert temperature.value == SingleResource(5700, 21.5, ResourceType.FLOAT)  # typed by the model
    battery = await server.read("node-client", "/3/0/9")
    assert battery.value == SingleResource(9, 87, ResourceType.INTEGER)


async def test_write(server: LwM2mServer, node_client: NodeClient) -> None:
    response = await server.write("node-client", "/3303/0/5701", SingleResource(5701, "Far", ResourceType.STRING))
    assert response.ok
    event = await node_client.event("write")
    assert event == {"event": "write", "path": "/3303/0/5701", "value": "Far"}
    assert (await server.read("node-client", "/3303/0/5701")).value.value == "Far"  # type: ignore[union-attr]


async def test_execute(server: LwM2mServer, node_client: NodeClient) -> None:
    assert (await server.execute("node-client", "/3/0/4")).ok
    assert (await node_client.event("execute"))["path"] == "/3/0/4"


async def test_observe_and_notify(server: LwM2mServer, node_client: NodeClient, recorder: Any) -> None:
    response = await server.observe("node-client", "/3303/0/5700")
    assert response.ok and response.observation is not None
    node_client.command(cmd="set", object="/3303/0", resource="5700", value="30.25")
    await recorder.until(lambda: len(recorder.notifications) >= 1)
    _, observation, values = recorder.notifications[-1]
    assert observation == response.observation
    assert [(v.path, v.value) for v in values] == [(LwM2mPath(3303, 0, 5700), 30.25)]
    node_client.command(cmd="set", object="/3303/0", resource="5700", value="31.5")
    await recorder.until(lambda: recorder.notifications[-1][2][0].value == 31.5)


async def test_update_and_deregister(server: LwM2mServer, node_client: NodeClient, recorder: Any) -> None:
    node_client.command(cmd="update")
    await node_client.event("updated")
    await recorder.until(lambda: len(recorder.updated) == 1)
    _reg, update = recorder.updated[0]
    assert update.lifetime == 60 and update.links is not None
    # the update came from a new socket: the registration followed it, and requests reach it there
    assert (await server.read("node-client", "/3/0/0")).ok
    node_client.command(cmd="deregister")
    await node_client.event("deregistered")
    await recorder.until(lambda: len(recorder.deregistered) == 1)
    assert recorder.deregistered[0][1] == DeregistrationReason.DEREGISTERED
    assert len(server.registrations) == 0
