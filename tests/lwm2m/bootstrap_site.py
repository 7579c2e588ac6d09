"""A bootstrap server and an LwM2M server on ephemeral loopback ports, both with NoSec and DTLS
listeners, sharing the clients store as the gateway does (the bootstrap tests' fixture and the
benchmark's, and the process the kill -9 test kills: ``python -m tests.lwm2m.bootstrap_site STATE_DIR``)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.lwm2m.bootstrap import BootstrapServer, BootstrapSettings, BootstrapStore
from gateway.lwm2m.security import SecurityBinding
from gateway.lwm2m.server import LwM2mServer, Registration, RegistrationListener, ServerConfig
from gateway.store.clients import ClientStore, follow_dtls
from gateway.transport.dtls import DtlsServer
from gateway.transport.dtls_coap import DtlsTransport

log = logging.getLogger("test.bootstrap")


class Registered(RegistrationListener):
    def __init__(self) -> None:
        self.registrations: list[Registration] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def on_registered(self, reg: Registration) -> None:
        self.registrations.append(reg)
        for predicate, future in list(self._waiters):
            if not future.done() and predicate():
                future.set_result(None)

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await asyncio.wait_for(future, timeout)


@dataclass
class Site:
    clients: ClientStore
    store: BootstrapStore
    lwm2m: LwM2mServer
    bootstrap: BootstrapServer
    registered: Registered
    ports: dict[str, int] = field(default_factory=dict)
    _closers: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        await self.bootstrap.stop()
        await self.lwm2m.stop()
        for close in self._closers:
            close()
        self.clients.close()
        self.store.close()


async def open_site(
    state: Path, *, ports: dict[str, int] | None = None, server_credentials: dict[str, Any] | None = None,
    **settings: Any,
) -> Site:
    """``server_credentials``: rpk/x509/trust of both servers (as the gateway shares them)."""
    ports = ports or {}
    loop = asyncio.get_running_loop()
    clients = ClientStore.open(state / "clients.sqlite3")
    store = BootstrapStore.open(state / "bootstrap.sqlite3")
    if server_credentials:
        clients.set_server_credentials(**server_credentials)
        store.set_server_credentials(**server_credentials)
    registered = Registered()
    lwm2m = LwM2mServer(config=ServerConfig(), registration_check=SecurityBinding(clients), listener=registered)
    await lwm2m.start(("127.0.0.1", ports.get("lwm2m", 0)))
    dtls = DtlsServer(clients)
    unfollow = follow_dtls(clients, dtls)

    async def lwm2m_dtls(mman: Any) -> DtlsTransport:
        return await DtlsTransport.create_server_transport(
            mman, log, loop, bind=("127.0.0.1", ports.get("lwm2m_dtls", 0)), server=dtls
        )

    _, transport = await lwm2m.add_transport(lwm2m_dtls)
    got = {"lwm2m": lwm2m.address[1], "lwm2m_dtls": transport.port}
    bs_settings = BootstrapSettings(
        server_host="127.0.0.1", lwm2m_port=got["lwm2m"], lwm2m_dtls_port=got["lwm2m_dtls"], **settings
    )
    bootstrap = BootstrapServer(store, clients, bs_settings)
    got["bootstrap"] = await bootstrap.start(("127.0.0.1", ports.get("bootstrap", 0)))
    got["bootstrap_dtls"] = await bootstrap.start_dtls(("127.0.0.1", ports.get("bootstrap_dtls", 0)), DtlsServer(store))
    site = Site(clients, store, lwm2m, bootstrap, registered, got)
    site._closers.append(unfollow)
    return site


async def _serve(state: Path) -> None:
    ports = json.loads((state / "ports.json").read_text()) if (state / "ports.json").exists() else None
    site = await open_site(state, ports=ports, request_timeout=5.0)
    (state / "ports.json").write_text(json.dumps(site.ports))
    print(json.dumps(site.ports), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(_serve(Path(sys.argv[1])))
