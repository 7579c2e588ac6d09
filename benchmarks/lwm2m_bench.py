"""LwM2M server at fleet scale: registrations, observation set-up, notifications, loop stalls, memory.

The server runs in this process exactly as the gateway runs it (``LwM2mServer`` on UDP, a listener that
observes two resources of every device as soon as it registers, as the bridge does). The fleet runs in
``--processes`` other processes (``python -m gateway.sim.lwm2m_client``), one UDP socket per simulated
client, all released at the same moment ("go").

Phases:
  storm     every client registers at once; each is then observed on /3303/0/5700 and /3/0/9.
            Reports the time until all are registered, registrations/s, and the time until all
            2N observations are established.
  notify    the fleet notifies every observation each ``2N / --rate`` seconds for ``--duration`` s.
            Reports notifications processed/s, the server's CPU share, the longest event-loop stall.
Then the RSS of this process (the server) with N registrations and 2N observations.

Loop stalls are measured by a 10 ms ticker: the stall is how late it ran, and how much CPU this
process got meanwhile tells a busy loop from a process the OS did not run. The simulators run at
``--sim-nice`` (10): they stand in for devices elsewhere and must not starve the server on a small
machine. ``gc.freeze()`` is called after the storm (``--no-freeze`` to compare). Example::

    python benchmarks/lwm2m_bench.py --endpoints 20000 --processes 4 --rate 10000 --duration 120
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from gateway.lwm2m.node import TimestampedValue
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import LwM2mServer, Observation, Registration, RegistrationListener, ServerConfig

OBSERVED = (LwM2mPath(3303, 0, 5700), LwM2mPath(3, 0, 9))
ROOT = Path(__file__).resolve().parents[1]


def udp_receive_buffer_errors() -> int:
    """Datagrams the kernel dropped for a full receive buffer (all sockets of this machine)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Observer(RegistrationListener):
    """Observes two resources of every device that registers (as the ThingsBoard bridge will): the
    endpoints go into a queue that ``workers`` tasks work off (a task per device would put 20,000
    coroutines and their frames in front of the garbage collector during a storm)."""

    def __init__(self, server: LwM2mServer, total: int, workers: int = 2000) -> None:
        self.server = server
        self.total = total
        self.registered = 0
        self.observed = 0
        self.observe_failed = 0
        self.notifications = 0
        self.first_registered_at = 0.0
        self.all_registered_at = 0.0
        self.all_observed_at = 0.0
        self.done_registering = asyncio.get_running_loop().create_future()
        self.done_observing = asyncio.get_running_loop().create_future()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(workers)]

    def close(self) -> None:
        for worker in self._workers:
            worker.cancel()

    async def _work(self) -> None:
        while True:
            await self._observe(await self._queue.get())

    def on_registered(self, registration: Registration) -> None:
        self.registered += 1
        if self.registered == 1:
            self.first_registered_at = time.monotonic()
        if self.registered == self.total:
            self.all_registered_at = time.monotonic()
            self.done_registering.set_result(None)
        self._queue.put_nowait(registration.endpoint)

    async def _observe(self, endpoint: str) -> None:
        for path in OBSERVED:
            try:
                response = await self.server.observe(endpoint, path, timeout=60)
            except Exception:
                self.observe_failed += 1
                continue
            if response.observation is None:
                self.observe_failed += 1
                continue
            self.observed += 1
            if self.observed == 2 * self.total:
                self.all_observed_at = time.monotonic()
                self.done_observing.set_result(None)

    def on_notification(
        self, registration: Registration, observation: Observation, values: list[TimestampedValue], ts: float
    ) -> None:
        self.notifications += 1


class GcMeter:
    """The longest garbage collection pause per generation."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.count[generation] += 1
        self.longest[generation] = max(self.longest[generation], time.perf_counter() - self._started)

    def report(self) -> dict[str, Any]:
        return {"collections": list(self.count), "longest_ms": [round(t * 1000, 1) for t in self.longest]}

    def reset(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]


class StallMeter:
    """A ticker every ``period`` s; the longest lateness is the longest loop stall."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.max_stall = 0.0
        self.stalls_over_100ms = 0
        self.stalls_over_50ms = 0
        #: of the longest stall, how much this process ran (the rest: the OS ran something else)
        self.max_stall_cpu = 0.0
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.max_stall = 0.0
        self.stalls_over_100ms = 0
        self.stalls_over_50ms = 0
        self.max_stall_cpu = 0.0

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            cpu_before = time.thread_time()
            await asyncio.sleep(self.period)
            stall = loop.time() - before - self.period
            if stall > self.max_stall:
                self.max_stall = stall
                self.max_stall_cpu = time.thread_time() - cpu_before
            if stall > 0.05:
                self.stalls_over_50ms += 1
            if stall > 0.1:
                self.stalls_over_100ms += 1

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def start_fleet(args: argparse.Namespace, port: int, interval: float) -> list[asyncio.subprocess.Process]:
    per = -(-args.endpoints // args.processes)
    procs = []
    remaining = args.endpoints
    for k in range(args.processes):
        count = min(per, remaining)
        remaining -= count
        if count <= 0:
            break
        cmd = [
            sys.executable, "-m", "gateway.sim.lwm2m_client",
            "--server", f"127.0.0.1:{port}", "--count", str(count), "--prefix", f"sim{k}-",
            "--lifetime", str(args.lifetime), "--notify-interval", str(interval),
            "--duration", str(args.duration + 600), "--stats-interval", "1", "--wait-go", "--wait-notify",
        ]
        if args.confirmable:
            cmd.append("--confirmable")
        procs.append(await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            # the fleet stands in for devices elsewhere: it must not take the server's CPU on a small box
            preexec_fn=(lambda: os.nice(args.sim_nice)) if args.sim_nice else None,
        ))
    for proc in procs:  # wait until every simulator has its sockets open
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        assert json.loads(line)["event"] == "ready", line
    return procs


async def drain(proc: asyncio.subprocess.Process, last: dict[str, Any]) -> None:
    """Keep the simulator's latest stats line."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        last.update(json.loads(line))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    config = ServerConfig(admit_nosec=True, request_timeout=60.0, udp_receive_buffer=args.rcvbuf_mib << 20)
    server = LwM2mServer(config=config)
    observer = Observer(server, args.endpoints)
    server.add_listener(observer)
    await server.start(("127.0.0.1", 0))
    port = server.address[1]
    interval = 2 * args.endpoints / args.rate if args.rate else 0
    rss_start = rss_mib()
    procs = await start_fleet(args, port, interval)
    sim_stats: list[dict[str, Any]] = [{} for _ in procs]
    drains = [asyncio.ensure_future(drain(p, s)) for p, s in zip(procs, sim_stats, strict=True)]
    stalls = StallMeter()
    stalls.start()
    gcm = GcMeter()
    drops0 = udp_receive_buffer_errors()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    for proc in procs:  # go
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    result: dict[str, Any] = {"endpoints": args.endpoints, "processes": args.processes, "rate_target": args.rate}
    try:
        await asyncio.wait_for(observer.done_registering, args.timeout)
        result["all_registered_s"] = round(observer.all_registered_at - t0, 2)
        result["registrations_per_s"] = round(args.endpoints / (observer.all_registered_at - t0))
        await asyncio.wait_for(observer.done_observing, args.timeout)
        result["all_observed_s"] = round(observer.all_observed_at - t0, 2)
        result["observations_per_s"] = round(2 * args.endpoints / (observer.all_observed_at - t0))
    except TimeoutError:
        result["timeout"] = {"registered": observer.registered, "observed": observer.observed}
    result["observe_failed"] = observer.observe_failed
    result["storm_udp_drops"] = udp_receive_buffer_errors() - drops0
    result["storm_cpu_s"] = round(time.process_time() - cpu0, 2)
    result["storm_simulators_cpu_s"] = round(sum(s.get("cpu_s", 0) for s in sim_stats), 2)
    result["storm_max_stall_ms"] = round(stalls.max_stall * 1000, 1)
    result["storm_gc"] = gcm.report()
    gc.collect()
    if not args.no_freeze:
        gc.freeze()
    result["rss_mib_after_storm"] = round(rss_mib(), 1)
    result["rss_mib_before"] = round(rss_start, 1)
    stats = server.stats()
    result["server_after_storm"] = {k: stats[k] for k in ("registrations", "observations", "dedup_entries",
                                                            "timers", "udp_send_dropped", "duplicate_requests")}

    # notifications
    if args.duration:
        for proc in procs:  # notify from now on
            assert proc.stdin is not None
            proc.stdin.write(b"notify\n")
        await asyncio.sleep(max(interval, 1.0))  # every observation has started notifying
        stalls.reset()
        gcm.reset()
        n0 = observer.notifications
        drops1 = udp_receive_buffer_errors()
        times0 = os.times()
        wakeups0 = server.stats()["udp_wakeups"]
        cpu1 = time.process_time()
        t1 = time.monotonic()
        samples = []
        while time.monotonic() - t1 < args.duration:
            before = observer.notifications
            await asyncio.sleep(1.0)
            samples.append(observer.notifications - before)
        wall = time.monotonic() - t1
        processed = observer.notifications - n0
        result["notifications_per_s"] = round(processed / wall)
        result["notifications_per_s_min_1s"] = min(samples) if samples else 0
        result["notify_cpu_share"] = round((time.process_time() - cpu1) / wall, 3)
        times1 = os.times()
        result["notify_cpu_user_sys_s"] = [round(times1.user - times0.user, 1), round(times1.system - times0.system, 1)]
        result["notify_datagrams_per_wakeup"] = round(processed / max(1, server.stats()["udp_wakeups"] - wakeups0), 1)
        result["notify_max_stall_ms"] = round(stalls.max_stall * 1000, 1)
        result["notify_stalls_over_100ms"] = stalls.stalls_over_100ms
        result["notify_stalls_over_50ms"] = stalls.stalls_over_50ms
        result["notify_longest_stall_cpu_ms"] = round(stalls.max_stall_cpu * 1000, 1)
        result["notify_gc"] = gcm.report()
        result["notify_udp_drops"] = udp_receive_buffer_errors() - drops1
    result["simulators"] = {k: sum(s.get(k, 0) for s in sim_stats)
                            for k in ("cpu_s", "register_sent", "retransmissions", "notifications", "timeouts")}
    result["rss_mib_end"] = round(rss_mib(), 1)
    result["rss_max_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    stats = server.stats()
    result["server_end"] = {k: stats[k] for k in ("registrations", "observations", "notifications",
                                                    "bad_notifications", "stale_notifications",
                                                    "udp_received", "udp_send_dropped", "pending_requests")}
    stalls.stop()
    observer.close()
    for proc in procs:
        proc.terminate()
    for proc in procs:
        await proc.wait()
    for d in drains:
        d.cancel()
    await server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2, help="simulator processes (<= 19,000 clients each)")
    parser.add_argument("--rate", type=float, default=10000, help="aggregate notifications/s")
    parser.add_argument("--duration", type=float, default=30, help="seconds of notifications (0: skip)")
    parser.add_argument("--lifetime", type=int, default=600)
    parser.add_argument("--confirmable", action="store_true", help="CON notifications (default NON)")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--no-freeze", action="store_true", help="do not gc.freeze() after the storm")
    parser.add_argument("--rcvbuf-mib", type=int, default=16, help="the server's UDP receive buffer")
    parser.add_argument("--sim-nice", type=int, default=10, help="niceness of the simulator processes (0: none)")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
