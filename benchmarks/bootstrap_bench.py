"""Zero-touch at scale: N devices bootstrap at once over DTLS-PSK, get generated PSK credentials for
the LwM2M server, then register over DTLS-PSK with them.

The gateway side (bootstrap server + LwM2M server, one process, as in the service) runs in a child
process so that its CPU is measured alone; the simulated fleet (the project's simulator, one UDP
socket and one non-blocking DTLS client engine per device, no task per device) runs here.

    python benchmarks/bootstrap_bench.py --count 1000

Prints one JSON line: time to all bootstrapped and all registered, bootstraps/s, the gateway's CPU
seconds (user+system) over the run, and what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.lwm2m.bootstrap import BootstrapServer, BootstrapSettings, BootstrapStore, parse_config  # noqa: E402
from gateway.lwm2m.security import SecurityBinding  # noqa: E402
from gateway.lwm2m.server import LwM2mServer, ServerConfig  # noqa: E402
from gateway.sim.bootstrap_client import BootstrapFleet  # noqa: E402
from gateway.sim.lwm2m_client import _raise_open_file_limit  # noqa: E402
from gateway.store.clients import ClientStore, Source, follow_dtls  # noqa: E402
from gateway.transport.dtls import DtlsServer  # noqa: E402
from gateway.transport.dtls_coap import DtlsTransport  # noqa: E402

KEY = "00112233445566778899aabbccddeeff"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve(state: Path) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    loop = asyncio.get_running_loop()
    clients = ClientStore.open(state / "clients.sqlite3")
    store = BootstrapStore.open(state / "bootstrap.sqlite3")
    lwm2m = LwM2mServer(config=ServerConfig(), registration_check=SecurityBinding(clients))
    await lwm2m.start(("127.0.0.1", 0))
    dtls = DtlsServer(clients)
    follow_dtls(clients, dtls)

    async def factory(mman: Any) -> DtlsTransport:
        return await DtlsTransport.create_server_transport(mman, logging.getLogger(), loop, bind=("127.0.0.1", 0),
                                                           server=dtls)

    _, transport = await lwm2m.add_transport(factory)
    bootstrap = BootstrapServer(store, clients, BootstrapSettings(
        server_host="127.0.0.1", lwm2m_port=lwm2m.address[1], lwm2m_dtls_port=transport.port))
    await bootstrap.start(("127.0.0.1", 0))
    bs_port = await bootstrap.start_dtls(("127.0.0.1", 0), DtlsServer(store))
    print(json.dumps({"bootstrap_dtls": bs_port}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():  # "stats" -> one JSON line; EOF ends
        if line.strip() == b"stats":
            print(json.dumps({"bootstrap": bootstrap.stats(), "registered": len(lwm2m.registrations),
                              "committed": sum(1 for e in clients.entries() if e.source is Source.BOOTSTRAP)}),
                  flush=True)


async def run(count: int, timeout: float) -> dict[str, Any]:
    _raise_open_file_limit(count * 3 + 100)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        store = BootstrapStore.open(state / "bootstrap.sqlite3")
        store.conn.execute("PRAGMA synchronous=OFF")  # set-up only
        store.put(parse_config({"pattern": "bench-*",
                                "bootstrap": {"lwm2mServer": {"securityMode": "PSK", "generate": True}}}))
        for i in range(count):
            ep = f"bench-{i:06d}"
            store.put(parse_config({"endpoint": ep, "bootstrap": {"bootstrapServer": {
                "securityMode": "PSK", "clientPublicKeyOrId": f"bs-{ep}", "clientSecretKey": KEY}}}))
        store.close()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(state)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        port = json.loads(proc.stdout.readline())["bootstrap_dtls"]
        key = bytes.fromhex(KEY)
        fleet = BootstrapFleet(("127.0.0.1", port), count, prefix="bench-",
                               bootstrap_credentials=lambda ep: {"psk": (f"bs-{ep}".encode(), key)})
        await fleet.start()
        cpu0, fleet_cpu0, t0 = cpu_seconds(proc.pid), time.process_time(), time.monotonic()
        fleet.bootstrap_all()
        result: dict[str, Any] = {"count": count}
        try:
            await fleet.until(lambda: fleet.bootstrapped == count, timeout)
            result["all_bootstrapped_s"] = round(time.monotonic() - t0, 2)
            await fleet.until(lambda: fleet.registered == count, timeout)
            result["all_registered_s"] = round(time.monotonic() - t0, 2)
        except TimeoutError:
            result["timeout_s"] = timeout
        elapsed = time.monotonic() - t0
        result["bootstrapped"] = fleet.bootstrapped
        result["registered"] = fleet.registered
        result["bootstraps_per_s"] = round(fleet.bootstrapped / result.get("all_bootstrapped_s", elapsed), 1)
        result["gateway_cpu_s"] = round(cpu_seconds(proc.pid) - cpu0, 2)
        result["gateway_cpu_pct_of_a_core"] = round(100 * result["gateway_cpu_s"] / elapsed, 1)
        result["fleet_cpu_s"] = round(time.process_time() - fleet_cpu0, 2)
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        result["gateway"] = json.loads(proc.stdout.readline())
        result["fleet"] = {k: v for k, v in fleet.stats.items() if k in (
            "bootstrap_refused", "dtls_failed", "register_failed", "timeouts", "retransmissions")}
        keys = {c.server_account()[0][5] for c in fleet.clients if c.server_account()}  # type: ignore[attr-defined,index]
        result["distinct_keys"] = len(keys)
        await fleet.close()
        proc.stdin.close()
        proc.wait(10)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(Path(args.serve)))
        return
    print(json.dumps(asyncio.run(run(args.count, args.timeout))))


if __name__ == "__main__":
    main()
