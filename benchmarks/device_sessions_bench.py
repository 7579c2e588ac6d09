"""Per-device mode: the cost of one device-API session per endpoint, and the session cap at work.

Runs :class:`gateway.upstream.device_sessions.DeviceSessions` (real device-mode outbox on SQLite,
real MqttSessions) in this process against Debian's mosquitto on a free loopback port; a separate
counter process subscribes to ``v1/devices/me/telemetry`` and counts unique (device, seq) pairs and
duplicates. Credentials are stored beforehand (ACCESS_TOKEN per device, as provisioning would leave
them): mosquitto has no Device Provisioning API. ``getSessionLimits`` is not asked (a plain broker
would deliver every session's request to every other session's RPC subscription); ThingsBoard's
defaults apply.

Phases:
  sessions   ``--cap`` registered endpoints: each opens its session; time until all are connected,
             RSS and file descriptors per session
  idle       those sessions idle for ``--idle-s`` seconds: CPU per session per second (keepalive
             timers, paho's loop_misc)
  data       ``--records`` telemetry records per endpoint through their own sessions: records/s and
             CPU ms per 10,000 records
  beyond     ``--beyond`` more endpoints, not registered, one record each while the cap is full:
             idle sessions are closed least recently used first; time until every record is
             delivered, evictions, the most sessions ever open (must not exceed the cap)

    python benchmarks/device_sessions_bench.py --cap 1000 --beyond 2000
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from uplink_bench import Broker

from gateway.core.records import RecordKind
from gateway.store import device_credentials
from gateway.upstream.device_sessions import DeviceModeSettings, DeviceSessions, ProvisionKey
from gateway.upstream.session import AccessToken

PROFILE = "bench-device"


def counter_main(port: int) -> None:
    """Subscriber process: counts unique (device, seq) telemetry values; prints JSON when stdin closes."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen: set[tuple[str, int]] = set()
    dups = 0
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal dups
        for entry in json.loads(msg.payload):
            values = entry.get("values", entry)
            key = (values["d"], values["seq"])
            with lock:
                if key in seen:
                    dups += 1
                seen.add(key)

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe("v1/devices/me/telemetry", qos=1)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    print("ready", flush=True)
    sys.stdin.read()
    time.sleep(1.0)  # let the last PUBLISHes arrive
    client.loop_stop()
    with lock:
        print(json.dumps({"unique": len(seen), "duplicates": dups}), flush=True)


class _NoDevices:
    def handler_for(self, device: str) -> None:
        return None


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` holds (polled every 10 ms: a benchmark, not a test)."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)
    return time.perf_counter() - start


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def run(args: argparse.Namespace, port: int, workdir: Path) -> dict[str, Any]:
    proc = psutil.Process()
    root = workdir / "devices"
    total = args.cap + args.beyond
    names = [f"ep-{i:06d}" for i in range(total)]
    t0 = time.perf_counter()
    await asyncio.to_thread(
        lambda: [device_credentials.save(root, n, AccessToken(f"tok-{n}")) for n in names]
    )
    store_s = time.perf_counter() - t0
    settings = DeviceModeSettings(
        host="127.0.0.1",
        port=port,
        credentials_dir=root,
        max_sessions=args.cap,
        ask_session_limits=False,
        keepalive=60,
    )
    sessions = await DeviceSessions.open(
        workdir / "device-outbox.sqlite3", settings, {PROFILE: ProvisionKey("k", "s")}, _NoDevices()
    )
    await sessions.start()
    report: dict[str, Any] = {"devices": total, "cap": args.cap, "credentials_store_s": round(store_s, 2)}
    try:
        registered = names[: args.cap]
        rss0, fds0 = proc.memory_info().rss, proc.num_fds()
        t0 = time.perf_counter()
        for n in registered:
            sessions.connected(n, PROFILE)
        connect_s = await until(lambda: sessions.stats().sessions_connected == args.cap, 300, "sessions up")
        rss1, fds1 = proc.memory_info().rss, proc.num_fds()
        report["sessions"] = {
            "connect_all_s": round(connect_s, 2),
            "rss_per_session_kib": round((rss1 - rss0) / args.cap / 1024, 1),
            "fds_per_session": round((fds1 - fds0) / args.cap, 2),
            "rss_mib": round(rss1 / 2**20, 1),
        }

        c0, w0 = cpu_s(proc), time.perf_counter()
        await asyncio.sleep(args.idle_s)
        c1, w1 = cpu_s(proc), time.perf_counter()
        report["idle"] = {
            "cpu_percent": round(100 * (c1 - c0) / (w1 - w0), 2),
            "cpu_us_per_session_s": round(1e6 * (c1 - c0) / (w1 - w0) / args.cap, 1),
        }

        sent0 = sessions.stats().records_sent
        c0, t0 = cpu_s(proc), time.perf_counter()
        now = int(time.time() * 1000)
        for seq in range(args.records):
            for n in registered:
                sessions.append(RecordKind.TELEMETRY, n, json.dumps({"d": n, "seq": seq}), now + seq)
            if seq % 10 == 9:
                await asyncio.sleep(0)  # let the pump and the sessions run
        want = args.records * args.cap
        await until(lambda: sessions.stats().records_sent - sent0 >= want, 600, "data delivered")
        dt, dc = time.perf_counter() - t0, cpu_s(proc) - c0
        report["data"] = {
            "records": want,
            "records_per_s": round(want / dt),
            "cpu_ms_per_10k": round(1000 * dc / want * 10_000, 1),
        }

        beyond = names[args.cap :]
        peak = 0

        def delivered() -> bool:
            nonlocal peak
            st = sessions.stats()
            peak = max(peak, st.sessions_open)
            return st.records_sent - sent0 >= want + len(beyond)

        ev0 = sessions.stats().evictions
        c0, t0 = cpu_s(proc), time.perf_counter()
        for n in beyond:
            sessions.append(RecordKind.TELEMETRY, n, json.dumps({"d": n, "seq": 0}), now)
        if beyond:
            await until(delivered, 900, "beyond the cap")
        dt, dc = time.perf_counter() - t0, cpu_s(proc) - c0
        st = sessions.stats()
        report["beyond"] = {
            "devices": len(beyond),
            "delivered_s": round(dt, 2),
            "sessions_per_s": round(len(beyond) / dt, 1) if beyond else 0,
            "cpu_ms_per_session": round(1000 * dc / len(beyond), 2) if beyond else 0,
            "evictions": st.evictions - ev0,
            "peak_sessions_open": peak,
            "cap_respected": peak <= args.cap,
        }
        report["rss_peak_mib"] = round(proc.memory_info().rss / 2**20, 1)
    finally:
        await sessions.stop()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=int, default=1000, help="max sessions (and registered endpoints)")
    parser.add_argument("--beyond", type=int, default=2000, help="endpoints beyond the cap, one record each")
    parser.add_argument("--records", type=int, default=20, help="records per registered endpoint")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--counter", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.counter:
        counter_main(args.counter)
        return 0
    with tempfile.TemporaryDirectory(prefix="device-sessions-bench-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir, None)
        counter = subprocess.Popen(
            [sys.executable, __file__, "--counter", str(broker.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert counter.stdout is not None and counter.stdin is not None
            counter.stdout.readline()  # "ready"
            report = asyncio.run(run(args, broker.port, workdir))
            counter.stdin.close()
            counted: Mapping[str, int] = json.loads(counter.stdout.readline())
            expected = args.records * args.cap + args.beyond
            report["counted"] = {**counted, "expected": expected, "lost": expected - counted["unique"]}
        finally:
            if counter.poll() is None:
                counter.kill()
            broker.stop()
    report["host"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
