"""kill -9 of the gateway's bootstrap + LwM2M server process in the middle of a zero-touch bootstrap
(a real subprocess, ``tests/lwm2m/bootstrap_site.py``): whatever the device ends up holding, the
restarted gateway accepts it, and the device registers over DTLS-PSK.

(a) killed when the device receives the Write of its new Security instance (before it applies it):
    the gateway had stored the generated credentials as pending; the device holds none of them and
    bootstraps again; the new bootstrap replaces the pending credentials.
(b) killed when the device receives Bootstrap-Finish (it holds the new credentials, the gateway has
    them pending, not committed): the device's Register with them is accepted and commits them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.lwm2m.bootstrap import BootstrapStore, parse_config
from gateway.sim.bootstrap_client import BootstrapFleet, BootstrapSimClient
from gateway.store.clients import ClientStore, Source

KEY = "00112233445566778899aabbccddeeff"
ROOT = Path(__file__).resolve().parents[2]


class Gateway:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.proc: subprocess.Popen[str] | None = None
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lwm2m.bootstrap_site", str(self.state)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the gateway process did not start"
        self.ports = json.loads(line)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def configure(state: Path, endpoint: str) -> None:
    store = BootstrapStore.open(state / "bootstrap.sqlite3")
    try:
        store.put(parse_config({"endpoint": endpoint, "bootstrap": {
            "bootstrapServer": {"securityMode": "PSK", "clientPublicKeyOrId": f"bs-{endpoint}", "clientSecretKey": KEY},
            "lwm2mServer": {"securityMode": "PSK", "generate": True}}}, source=Source.CLI))
    finally:
        store.close()


def server_side(state: Path, endpoint: str) -> tuple[Any, Any]:
    store = ClientStore.open(state / "clients.sqlite3", lock=False)
    try:
        return store.get(endpoint), store.pending(endpoint)
    finally:
        store.close()


def held(client: BootstrapSimClient) -> tuple[bytes, bytes] | None:
    account = client.server_account()
    return None if account is None else (bytes(account[0][3]), bytes(account[0][5]))


@pytest.mark.parametrize("when", ["write", "finish"])
async def test_kill_9_mid_bootstrap(tmp_path: Path, when: str) -> None:
    ep = "dev-000000"
    configure(tmp_path, ep)
    gw = Gateway(tmp_path)
    gw.start()
    fleet = BootstrapFleet(("127.0.0.1", gw.ports["bootstrap_dtls"]), 1, prefix="dev-",
                           bootstrap_credentials=lambda e: {"psk": (f"bs-{e}".encode(), bytes.fromhex(KEY))})
    await fleet.start()
    client = fleet.bs_client(ep)
    killed = asyncio.get_running_loop().create_future()

    def kill(*_: Any) -> None:
        if not killed.done():
            gw.kill()
            killed.set_result(None)

    if when == "write":
        client.on_write = lambda c, path: kill() if path.depth == 2 and path.ids[0] == 0 else None
    else:
        client.on_finish = kill
    try:
        fleet.bootstrap_all()
        await asyncio.wait_for(killed, 30)
        committed, pending = server_side(tmp_path, ep)
        assert pending is not None, "the generated credentials are stored before they are written"
        device = held(client)
        if when == "write":
            assert device is None  # killed before the device applied anything
            assert committed is None
        else:
            assert device == (pending.identity, pending.key)  # the device holds what is pending
        gw.start()  # same ports
        client.on_write = None
        client.on_finish = None
        if when == "write":
            client.rebootstrap()  # the device's bootstrap never finished: it asks again
        await fleet.until(lambda: fleet.registered == 1, timeout=60)
        gw.kill()
        committed, pending = server_side(tmp_path, ep)
        device = held(client)
        assert pending is None and committed is not None
        assert device == (committed.identity, committed.key)
    finally:
        gw.stop()
        await fleet.close()
