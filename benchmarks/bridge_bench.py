"""LwM2M fleet -> gateway (LwM2M server + bridge + hub + durable outbox + uplink) -> mosquitto.

This process runs the gateway's data path as the service composes it: ``LwM2mServer`` on UDP, the
``LwM2mBridge`` with a profile that observes two resources of every endpoint (/3303/0/5700 and
/3/0/9, both telemetry), the ``DeviceHub``, the SQLite ``Outbox`` (WAL, group commits) and the
``Uplink`` on an ``MqttSession`` to a Debian mosquitto started here (QoS 1: PUBACK is the receipt).
The fleet runs in ``--processes`` other processes (``python -m gateway.sim.lwm2m_client``), niced.

Phases:
  storm    every endpoint registers at once; the bridge connects each (``v1/gateway/connect`` record),
           writes nothing, observes both resources (their first values are records too).
  notify   every observation notifies each ``2N / --rate`` s for ``--duration`` s (NON by default).
  drain    the fleet stops; the uplink empties the outbox.

Reported: latency from a notification's arrival (the record's receive timestamp) to the PUBACK of
the publish that carried it, p50/p99/max (1 ms histogram, every record); records queued by the bridge
vs. records acknowledged by the broker (lost = queued - acknowledged, must be 0); notifications
sent by the fleet vs. received (UDP drops are the kernel's, counted separately); RSS of this process
with the uplink and outbox running; its CPU share; the longest event-loop stall. Example::

    python benchmarks/bridge_bench.py --endpoints 20000 --processes 2 --rate 10000 --duration 300
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lwm2m_bench import StallMeter, drain, rss_mib, start_fleet, udp_receive_buffer_errors
from uplink_bench import Broker

from gateway.core.clock import Clock
from gateway.core.hub import DeviceHub
from gateway.core.records import Record, RecordKind
from gateway.lwm2m.bridge import BridgeConfig, LwM2mBridge, ProfileSet
from gateway.lwm2m.bridge.profiles import parse_profile
from gateway.lwm2m.server import LwM2mServer, ServerConfig
from gateway.store.outbox import Outbox
from gateway.upstream.session import AccessToken, MqttSession, SessionConfig, SessionState
from gateway.upstream.uplink import Uplink

PROFILE = {
    "name": "bench-sensor",
    "after_registration": "observe_only",
    "match": {"default": True},
    "paths": {
        "/3303/0/5700": {"key": "temperature", "telemetry": True, "observe": True},
        "/3/0/9": {"key": "battery", "telemetry": True, "observe": True},
    },
}


class Latency:
    """Notification arrival -> PUBACK, per telemetry record: a 1 ms histogram (no list of samples:
    at 10,000 records/s a list would itself be the RSS this benchmark measures)."""

    def __init__(self, limit_ms: int = 60_000) -> None:
        self.buckets = [0] * (limit_ms + 1)
        self.count = 0
        self.max_ms = 0
        self.active = False  # only records of the notify phase are sampled

    def add(self, ms: int) -> None:
        ms = max(0, ms)
        self.count += 1
        self.max_ms = max(self.max_ms, ms)
        self.buckets[min(ms, len(self.buckets) - 1)] += 1

    def percentile(self, p: float) -> int:
        if not self.count:
            return 0
        wanted = p / 100 * self.count
        seen = 0
        for ms, n in enumerate(self.buckets):
            seen += n
            if seen >= wanted:
                return ms
        return len(self.buckets) - 1


def watch(outbox: Outbox, latency: Latency) -> dict[str, int]:
    """Wrap the outbox's read/ack to time each telemetry record from its timestamp to its PUBACK."""
    ts_of: dict[int, int] = {}
    counts = {"acked_telemetry": 0, "acked_records": 0}
    read, ack = outbox.read, outbox.ack

    async def timed_read(after_id: int, max_records: int, max_bytes: int) -> list[Record]:
        records = await read(after_id, max_records, max_bytes)
        for r in records:
            if r.kind is RecordKind.TELEMETRY and r.ts_ms is not None:
                ts_of[r.id] = r.ts_ms
        return records

    def timed_ack(ids: Iterable[int]) -> None:
        ids = list(ids)
        now_ms = int(time.time() * 1000)
        counts["acked_records"] += len(ids)
        for i in ids:
            ts = ts_of.pop(i, None)
            if ts is not None:
                counts["acked_telemetry"] += 1
                if latency.active:
                    latency.add(now_ms - ts)
        ack(ids)

    outbox.read = timed_read  # type: ignore[method-assign]
    outbox.ack = timed_ack  # type: ignore[method-assign]
    return counts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    broker = Broker(workdir, acl=None) if args.broker is None else None
    host, port = ("127.0.0.1", broker.port) if broker is not None else args.broker.split(":")
    result: dict[str, Any] = {"endpoints": args.endpoints, "rate_target": args.rate, "duration_s": args.duration,
                              "workers": args.workers, "confirmable": args.confirmable}
    rss_start = rss_mib()
    outbox = await Outbox.open(
        workdir / "outbox.sqlite3", clock=Clock(sync_marker=None, trust="always"), tail_bytes=args.outbox_tail_bytes
    )
    latency = Latency()
    counts = watch(outbox, latency)
    session = MqttSession(SessionConfig(host=host, port=int(port), credentials=AccessToken("bench"),
                                        limits_timeout=1.0, reconnect_max=2.0))
    uplink = Uplink(outbox, session)
    session.start()
    uplink_task = asyncio.ensure_future(uplink.run())
    await asyncio.wait_for(session.wait_for_state(SessionState.CONNECTED), 30)

    hub = DeviceHub(outbox)
    server = LwM2mServer(config=ServerConfig(admit_nosec=True, request_timeout=60.0,
                                             udp_receive_buffer=args.rcvbuf_mib << 20))
    profiles = ProfileSet([parse_profile(PROFILE, source="bench", default_name="bench")])
    bridge = LwM2mBridge(server, hub, profiles, config=BridgeConfig(workers=args.workers, request_timeout=60.0))
    await bridge.start()
    await server.start(("127.0.0.1", 0))
    interval = 2 * args.endpoints / args.rate if args.rate else 0
    procs = await start_fleet(args, server.address[1], interval)
    sim_stats: list[dict[str, Any]] = [{} for _ in procs]
    drains = [asyncio.ensure_future(drain(p, s)) for p, s in zip(procs, sim_stats, strict=True)]
    stalls = StallMeter()
    stalls.start()
    drops0 = udp_receive_buffer_errors()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    deadline = t0 + args.timeout
    while bridge.stats().setups_done < args.endpoints and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await bridge.idle()
    storm = time.monotonic() - t0
    stats = bridge.stats()
    result["storm"] = {
        "all_set_up_s": round(storm, 2),
        "endpoints_per_s": round(stats.setups_done / storm),
        "connects": stats.connects,
        "observations": server.stats()["observations"],
        "setup_errors": stats.setup_errors,
        "cpu_s": round(time.process_time() - cpu0, 1),
        "max_stall_ms": round(stalls.max_stall * 1000, 1),
        "udp_drops": udp_receive_buffer_errors() - drops0,
    }
    gc.collect()
    if not args.no_freeze:
        gc.freeze()
    # let the storm's records drain before measuring
    while outbox.stats().records and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    result["rss_mib_after_storm"] = round(rss_mib(), 1)

    queued0 = bridge.stats().records
    acked0 = counts["acked_telemetry"]
    notifications0 = server.stats()["notifications"]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"notify\n")
    latency.active = True
    if args.slow_callbacks:  # name what blocks the loop (debug mode costs CPU: for diagnosis only)
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 0.05
    stalls.reset()
    drops1 = udp_receive_buffer_errors()
    times0 = os.times()
    cpu1 = time.process_time()
    t1 = time.monotonic()
    peak_queue = 0
    rss_peak = 0.0
    backlog_spikes: list[tuple[float, int]] = []  # (s into the phase, records queued) when over 1 s of data
    next_rss = t1
    while time.monotonic() - t1 < args.duration:
        await asyncio.sleep(0.1)
        queued_now = outbox.stats().records
        peak_queue = max(peak_queue, queued_now)
        if queued_now > args.rate:
            backlog_spikes.append((round(time.monotonic() - t1, 1), queued_now))
        if time.monotonic() >= next_rss:
            rss_peak = max(rss_peak, rss_mib())
            next_rss += 1.0
    wall = time.monotonic() - t1
    cpu = time.process_time() - cpu1
    times1 = os.times()
    received = server.stats()["notifications"] - notifications0
    for proc in procs:  # the fleet stops: nothing more is produced
        proc.terminate()
    for proc in procs:
        await proc.wait()
    drain_start = time.monotonic()
    while (bridge.stats().records - queued0) > (counts["acked_telemetry"] - acked0) and \
            time.monotonic() - drain_start < 120:
        await asyncio.sleep(0.1)
    latency.active = False
    queued = bridge.stats().records - queued0
    acked = counts["acked_telemetry"] - acked0
    result["notify"] = {
        "notifications_received": received,
        "notifications_per_s": round(received / wall),
        "records_queued": queued,
        "records_acked": acked,
        "records_lost": queued - acked,
        "drain_s": round(time.monotonic() - drain_start, 2),
        "latency_ms": {"p50": latency.percentile(50), "p99": latency.percentile(99), "max": latency.max_ms,
                       "samples": latency.count},
        "cpu_share": round(cpu / wall, 3),
        "cpu_user_sys_s": [round(times1.user - times0.user, 1), round(times1.system - times0.system, 1)],
        "max_stall_ms": round(stalls.max_stall * 1000, 1),
        "longest_stall_cpu_ms": round(stalls.max_stall_cpu * 1000, 1),  # the rest: the OS ran others
        "stalls_over_100ms": stalls.stalls_over_100ms,
        "outbox_peak_records": peak_queue,
        "outbox_backlog_over_1s": backlog_spikes[:50],
        "udp_drops": udp_receive_buffer_errors() - drops1,
        "rss_mib_peak": round(rss_peak, 1),
    }
    result["fleet"] = {k: sum(s.get(k, 0) for s in sim_stats)
                       for k in ("notifications", "register_sent", "retransmissions", "timeouts", "cpu_s")}
    u = uplink.stats()
    result["uplink"] = {"publishes": u.publishes, "records_sent": u.records_sent, "resends": u.resends,
                        "peak_in_flight": u.peak_in_flight}
    result["bridge"] = asdict(bridge.stats())
    result["outbox_reads"] = {"memory": outbox.tail_reads, "database": outbox.db_reads}
    result["rss_mib_start"] = round(rss_start, 1)
    result["rss_mib_end"] = round(rss_mib(), 1)
    result["rss_max_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    stalls.stop()
    for d in drains:
        d.cancel()
    await server.stop()
    await bridge.stop()
    uplink_task.cancel()
    await asyncio.gather(uplink_task, return_exceptions=True)
    await session.stop()
    await outbox.close()
    if broker is not None:
        broker.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2, help="simulator processes (<= 19,000 clients each)")
    parser.add_argument("--rate", type=float, default=1000, help="aggregate notifications/s")
    parser.add_argument("--duration", type=float, default=30, help="seconds of notifications")
    parser.add_argument("--lifetime", type=int, default=3600)
    parser.add_argument("--workers", type=int, default=32, help="the bridge's after-registration workers")
    parser.add_argument("--confirmable", action="store_true", help="CON notifications (default NON)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-freeze", action="store_true", help="do not gc.freeze() after the storm")
    parser.add_argument("--rcvbuf-mib", type=int, default=16, help="the server's UDP receive buffer")
    parser.add_argument("--sim-nice", type=int, default=10, help="niceness of the simulator processes (0: none)")
    parser.add_argument("--slow-callbacks", action="store_true", help="log loop callbacks over 50 ms")
    parser.add_argument("--outbox-tail-bytes", type=int, default=4 * 1024 * 1024,
                        help="committed records the outbox serves from memory (0: every read from SQLite)")
    parser.add_argument("--broker", help="host:port of a running broker (default: start mosquitto here)")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
