"""Uplink end to end: producer -> durable outbox -> Uplink -> mosquitto -> a counting subscriber.

Processes (all on this machine, loopback only):
  broker      Debian mosquitto on a free port, generated configuration (and ACL, if the system under
              test asks for one), started and killed by this script
  counter     a separate process: subscribes to ``v1/gateway/telemetry`` and counts unique
              (device, seq) pairs and duplicates; it also answers ``getSessionLimits`` on the
              broker (the docs/PEER_BENCH.md recipe), as ThingsBoard would
  gateway     the system under test, a separate process whose CPU time and RSS are measured
              (psutil, from here): for ``edge-gateway`` that process holds the producer, the real
              SQLite outbox (WAL, synchronous=FULL, group commit) and the Uplink with its session

Modes:
  live     the producer appends as fast as it can while the uplink drains (the default)
  backlog  the producer fills the outbox first, then the session connects and drains it (the
           recovery after an outage); throughput counts the drain only
  paced    the producer holds --rate records/s for --seconds: the CPU cost at a given load

Reported: records/s (start of the measured phase to the last unique record counted), CPU ms per
10,000 records of the gateway process in that phase (live and paced: producer, outbox and uplink;
backlog: the drain only), its peak RSS, records lost and duplicates as the counter saw them.

Another system under test (thingsboard-gateway 3.8.5, docs/PEER_BENCH.md) plugs in as a subclass of
:class:`SystemUnderTest` registered in ``SYSTEMS``: it says how to start it against the broker, what
broker ACL it needs and how its records are fed; the broker, counter and measurements are shared.

    python benchmarks/uplink_bench.py --records 500000 --devices 1000
    python benchmarks/uplink_bench.py --mode paced --rate 10000 --seconds 20
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TELEMETRY_TOPIC = "v1/gateway/telemetry"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"
SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
    "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
}


@dataclass
class Workload:
    mode: str
    records: int
    devices: int
    body_size: int
    rate: float
    seconds: float

    def device(self, i: int) -> str:
        return f"sensor-{i:05d}"

    @property
    def total(self) -> int:
        if self.mode == "paced":
            return int(self.rate * self.seconds)
        return self.records


# -- the broker ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path, acl: str | None) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type information",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "persistence false",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if acl is not None:
            (workdir / "acl").write_text(acl)
            lines.append(f"acl_file {workdir / 'acl'}")
        conf.write_text("\n".join(lines) + "\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if " running" in line:
                break
        else:
            raise RuntimeError("mosquitto did not start")
        self._drain = threading.Thread(target=lambda: [None for _ in self.proc.stderr or ()], daemon=True)
        self._drain.start()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# -- the counter (separate process) -------------------------------------------------------------------


def counter_main(args: argparse.Namespace) -> None:
    """Count unique (device, seq) on the gateway telemetry topic; answer getSessionLimits."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    expected: int = args.expected
    seen: set[tuple[str, int]] = set()
    state = {"messages": 0, "records": 0, "duplicates": 0, "first": 0.0, "last_new": 0.0}
    done = threading.Event()
    lock = threading.Lock()

    def on_message(client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(RPC_REQUEST):
            request = json.loads(msg.payload)
            if request.get("method") == "getSessionLimits":
                client.publish(RPC_RESPONSE + msg.topic[len(RPC_REQUEST) :], json.dumps(SESSION_LIMITS), 1)
            return
        now = time.time()
        doc = json.loads(msg.payload)
        with lock:
            state["messages"] += 1
            if not state["first"]:
                state["first"] = now
            for device, entries in doc.items():
                for entry in entries if isinstance(entries, list) else [entries]:
                    values = entry.get("values", entry) if isinstance(entry, dict) else {}
                    if "seq" not in values:  # a peer's own statistics, not the workload
                        continue
                    key = (device, int(values["seq"]))
                    state["records"] += 1
                    if key in seen:
                        state["duplicates"] += 1
                    else:
                        seen.add(key)
                        state["last_new"] = now
            if len(seen) >= expected:
                done.set()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(TELEMETRY_TOPIC, 1), (RPC_REQUEST + "+", 1)])

    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("counter: no SUBACK")
    print("READY", flush=True)
    # Finished when everything arrived, or when nothing new came for --idle seconds after the
    # gateway said it was done (stdin closes then).
    stdin_closed = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        stdin_closed.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    while not done.is_set():
        if stdin_closed.is_set():
            with lock:
                idle = time.time() - max(state["last_new"], state["first"] or time.time())
            if idle > args.idle:
                break
        done.wait(0.2)
    client.disconnect()
    client.loop_stop()
    with lock:
        result = dict(state, unique=len(seen), expected=expected)
    print("RESULT " + json.dumps(result), flush=True)


# -- systems under test ---------------------------------------------------------------------------------


@dataclass
class SutReport:
    started_at: float = 0.0  # wall clock of the first record offered to the system
    finished_at: float = 0.0  # wall clock when the system said it had nothing left to send
    detail: dict[str, Any] = field(default_factory=dict)


class SystemUnderTest(abc.ABC):
    """One gateway implementation: how to start it against the broker and feed it the workload.

    The harness measures the process returned by :meth:`start` (CPU, RSS) and counts what arrives
    at the broker. A system that needs its own feeder (a local broker and a publisher, as the
    thingsboard-gateway MQTT connector does) starts it in :meth:`start` and stops it in :meth:`stop`.
    """

    name: str = ""

    def broker_acl(self) -> str | None:
        """mosquitto ACL text the system needs on the upstream broker (None: no ACL)."""
        return None

    @abc.abstractmethod
    def start(self, broker_port: int, workload: Workload, workdir: Path) -> subprocess.Popen[str]:
        """Start the system; return its process (the one measured)."""

    @abc.abstractmethod
    def wait_done(self, proc: subprocess.Popen[str], timeout: float, on_start: Callable[[], None]) -> SutReport:
        """Block until the system has sent everything (or ``timeout``); its report.

        Call ``on_start()`` when the measured phase begins (the harness samples CPU time there).
        """

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class EdgeGateway(SystemUnderTest):
    """This project: producer + real outbox + Uplink + MqttSession, in one process."""

    name = "edge-gateway"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def start(self, broker_port: int, workload: Workload, workdir: Path) -> subprocess.Popen[str]:
        cmd = [
            sys.executable,
            __file__,
            "_edge",
            "--port",
            str(broker_port),
            "--db",
            str(workdir / "outbox.sqlite3"),
            "--workload",
            json.dumps(asdict(workload)),
            "--commit-interval",
            str(self.args.commit_interval),
        ]
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)

    def wait_done(self, proc: subprocess.Popen[str], timeout: float, on_start: Callable[[], None]) -> SutReport:
        report = SutReport()
        assert proc.stdout is not None
        deadline = time.time() + timeout
        for line in proc.stdout:
            if line.startswith("START "):
                on_start()
                report.started_at = float(line.split()[1])
            elif line.startswith("DONE "):
                report.detail = json.loads(line[5:])
                report.finished_at = report.detail["finished_at"]
                return report
            if time.time() > deadline:
                break
        raise RuntimeError("edge-gateway: no DONE line")

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.stdin is not None:
            proc.stdin.close()  # it exits once stdin closes (its CPU was read before)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            super().stop(proc)


TBGW_VERSION = "3.8.5"
TBGW_FIXTURES = REPO / "benchmarks" / "fixtures" / "tbgw"  # the PEER_BENCH configuration, copied from ../shared


class ThingsBoardGateway(SystemUnderTest):
    """thingsboard-gateway 3.8.5 from PyPI, its MQTT connector fed by a local publisher.

    docs/PEER_BENCH.md's recipe: its own venv (created on first use under --tbgw-venv), the
    fixture configuration with the same payload budget as edge-gateway (maxPayloadSizeBytes 65536),
    logging at WARNING, memory storage; a feeder process publishes ``sensor/<device>/data`` to a
    second local broker at QoS 1. The upstream broker's ACL keeps its own client-side RPC from being
    echoed back to it; the counter answers getSessionLimits. Measured: the gateway process only.
    """

    name = "thingsboard-gateway"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.venv = Path(args.tbgw_venv)
        self.feeder: subprocess.Popen[str] | None = None
        self.local: Broker | None = None

    def broker_acl(self) -> str | None:
        return (
            "topic readwrite #\n"  # anonymous clients: the counter
            "user gwtoken\n"
            "topic write #\n"
            "topic read v1/devices/me/rpc/response/#\n"
            "topic read v1/devices/me/attributes/#\n"
            "topic read v1/gateway/#\n"
        )

    def ensure_installed(self) -> Path:
        exe = self.venv / "bin" / "thingsboard-gateway"
        if not exe.exists():
            print(f"installing thingsboard-gateway {TBGW_VERSION} into {self.venv} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
            subprocess.run(
                [str(self.venv / "bin" / "pip"), "install", "-q", f"thingsboard-gateway=={TBGW_VERSION}"],
                check=True,
            )
        return exe

    def start(self, broker_port: int, workload: Workload, workdir: Path) -> subprocess.Popen[str]:
        exe = self.ensure_installed()
        local_dir = workdir / "local-broker"
        local_dir.mkdir()
        self.local = Broker(local_dir, None)
        conf = workdir / "tbgw-config"
        conf.mkdir()
        gw = json.loads((TBGW_FIXTURES / "tb_gateway.json").read_text())
        gw["thingsboard"].update(host="127.0.0.1", port=broker_port, maxPayloadSizeBytes=65536)
        gw["thingsboard"]["security"] = {"type": "accessToken", "accessToken": "gwtoken"}
        (conf / "tb_gateway.json").write_text(json.dumps(gw, indent=2))
        mq = json.loads((TBGW_FIXTURES / "mqtt.json").read_text())
        mq["broker"]["port"] = self.local.port
        for m in mq["mapping"]:
            m["converter"]["timeseries"] = [
                {"type": "integer", "key": "seq", "value": "${seq}"},
                {"type": "double", "key": "temp", "value": "${temp}"},
                {"type": "integer", "key": "hum", "value": "${hum}"},
                {"type": "string", "key": "p", "value": "${p}"},
            ]
        (conf / "mqtt.json").write_text(json.dumps(mq, indent=2))
        logs = json.loads((TBGW_FIXTURES / "logs.json").read_text())
        for logger in logs.get("loggers", {}).values():
            logger["level"] = "WARNING"
        if "root" in logs:
            logs["root"]["level"] = "WARNING"
        (conf / "logs.json").write_text(json.dumps(logs, indent=2))
        run_dir = workdir / "tbgw-run"
        (run_dir / "logs").mkdir(parents=True)
        env = dict(os.environ, TB_GW_CONFIG_DIR=str(conf) + "/")
        self.workload = workload
        return subprocess.Popen(
            [str(exe)], cwd=run_dir, env=env, stdin=subprocess.DEVNULL,
            stdout=(run_dir / "stdout.log").open("w"), stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def wait_done(self, proc: subprocess.Popen[str], timeout: float, on_start: Callable[[], None]) -> SutReport:
        assert self.local is not None
        time.sleep(self.args.tbgw_warmup)  # it connects both sides and asks getSessionLimits first
        if proc.poll() is not None:
            raise RuntimeError(f"thingsboard-gateway exited with {proc.returncode}")
        report = SutReport()
        self.feeder = subprocess.Popen(
            [sys.executable, __file__, "_feed", "--port", str(self.local.port),
             "--workload", json.dumps(asdict(self.workload))],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.feeder.stdout is not None
        line = _read_line(self.feeder.stdout, "START ")
        on_start()
        report.started_at = float(line.split()[1])
        report.detail = json.loads(_read_line(self.feeder.stdout, "FED ")[4:])
        self.feeder.wait(timeout)
        return report

    def stop(self, proc: subprocess.Popen[str]) -> None:
        super().stop(proc)
        if self.feeder is not None and self.feeder.poll() is None:
            self.feeder.kill()
        if self.local is not None:
            self.local.stop()


def feed_main(args: argparse.Namespace) -> None:
    """Publish the workload to ``sensor/<device>/data`` (QoS 1) as fast as the broker takes it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    w = Workload(**json.loads(args.workload))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-feeder")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    pad = "x" * max(0, w.body_size - 45)
    devices = [w.device(i) for i in range(w.devices)]
    n_dev = len(devices)
    print(f"START {time.time()}", flush=True)
    start = time.monotonic()
    info = None
    for i in range(w.total):
        seq, d = divmod(i, n_dev)
        body = f'{{"seq":{seq},"temp":{20 + d % 10}.5,"hum":{40 + seq % 50},"p":"{pad}"}}'
        info = client.publish(f"sensor/{devices[d]}/data", body, qos=1)
        if w.mode == "paced" and i % 100 == 99:
            ahead = start + (i + 1) / w.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    if info is not None:
        info.wait_for_publish(600)
    print("FED " + json.dumps({"fed_s": round(time.monotonic() - start, 3)}), flush=True)
    client.disconnect()
    client.loop_stop()


SYSTEMS: dict[str, type[SystemUnderTest]] = {EdgeGateway.name: EdgeGateway, ThingsBoardGateway.name: ThingsBoardGateway}


def edge_main(args: argparse.Namespace) -> None:
    """The edge-gateway process: producer -> Outbox -> Uplink -> MqttSession -> broker."""
    asyncio.run(_edge(args))


async def _edge(args: argparse.Namespace) -> None:
    from gateway.core.clock import Clock
    from gateway.core.records import RecordKind
    from gateway.store.outbox import Outbox
    from gateway.upstream.session import AccessToken, MqttSession, SessionConfig, SessionState
    from gateway.upstream.uplink import Uplink

    w = Workload(**json.loads(args.workload))
    outbox = await Outbox.open(Path(args.db), clock=Clock(trust="always"), commit_interval=args.commit_interval)
    session = MqttSession(
        SessionConfig(host="127.0.0.1", port=args.port, credentials=AccessToken("gwtoken"), limits_timeout=10.0)
    )
    uplink = Uplink(outbox, session)
    devices = [w.device(i) for i in range(w.devices)]
    pad = "x" * max(0, w.body_size - 45)
    total = w.total
    append = outbox.append
    telemetry = RecordKind.TELEMETRY

    acked = 0
    all_acked = asyncio.get_running_loop().create_future()
    real_ack = outbox.ack

    def ack(ids: Any) -> None:
        nonlocal acked
        ids = list(ids)
        real_ack(ids)
        acked += len(ids)
        if acked >= total and not all_acked.done():
            all_acked.set_result(None)

    outbox.ack = ack  # type: ignore[method-assign]

    async def produce() -> None:
        t0 = int(time.time() * 1000)
        n_dev = len(devices)
        interval = 1000 / w.rate if w.mode == "paced" else 0.0
        start = time.monotonic()
        # Producers wait for durability, as a device waits for its acknowledgement: at most
        # `window` records are accepted-but-not-yet-durable at any time (bounded memory).
        window: list[asyncio.Future[None]] = []
        for i in range(total):
            seq, d = divmod(i, n_dev)
            fut = append(
                telemetry,
                devices[d],
                f'{{"seq":{seq},"temp":{20 + d % 10}.5,"hum":{40 + seq % 50},"p":"{pad}"}}',
                t0 + i,
            )
            if i % 1000 == 999:
                if w.mode != "backlog":
                    window.append(fut)
                    if len(window) > 20:
                        await window.pop(0)
                if interval:
                    ahead = start + (i + 1) / w.rate - time.monotonic()
                    await asyncio.sleep(max(0.0, ahead))
                else:
                    await asyncio.sleep(0)

    run = asyncio.ensure_future(uplink.run())
    if w.mode == "backlog":
        await produce()
        await outbox.flush()
        print(f"START {time.time()}", flush=True)
        session.start()
    else:
        session.start()
        await session.wait_for_state(SessionState.CONNECTED)
        print(f"START {time.time()}", flush=True)
        await produce()
    await all_acked
    finished = time.time()
    await outbox.flush()
    print(
        "DONE "
        + json.dumps(
            {
                "finished_at": finished,
                "uplink": asdict(uplink.stats()),
                "session": asdict(session.stats()),
                "limits": [session.limits.max_payload_size, session.limits.max_inflight_messages],
                "outbox_left": outbox.stats().records,
            }
        ),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the harness closes stdin
    run.cancel()
    await session.stop()
    await outbox.close()


# -- the harness ---------------------------------------------------------------------------------------


class Sampler:
    """CPU time and peak RSS of one process, sampled from outside (psutil)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu = 0.0
        self.cpu_at_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.1)

    def sample(self) -> None:
        try:
            t = self.proc.cpu_times()
            self.cpu = t.user + t.system
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        except Exception:  # the process ended
            pass

    def mark_start(self) -> None:
        self.sample()
        self.cpu_at_start = self.cpu

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _read_line(stream: IO[str], prefix: str) -> str:
    for line in stream:
        if line.startswith(prefix):
            return line
    raise RuntimeError(f"no {prefix!r} line")


def run_once(sut: SystemUnderTest, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="uplink-bench-"))
    broker = Broker(workdir, sut.broker_acl())
    counter = subprocess.Popen(
        [sys.executable, __file__, "_counter", "--port", str(broker.port), "--expected", str(workload.total),
         "--idle", str(args.idle)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc: subprocess.Popen[str] | None = None
    try:
        assert counter.stdout is not None and counter.stdin is not None
        _read_line(counter.stdout, "READY")
        proc = sut.start(broker.port, workload, workdir)
        sampler = Sampler(proc.pid)
        report = sut.wait_done(proc, args.timeout, sampler.mark_start)
        sampler.stop()
        counter.stdin.close()
        counted = json.loads(_read_line(counter.stdout, "RESULT ")[7:])
        sut.stop(proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        counter.kill()
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    end = max(counted["last_new"], report.finished_at)
    wall = end - report.started_at
    n = workload.total
    cpu = sampler.cpu - sampler.cpu_at_start
    return {
        "system": sut.name,
        "mode": workload.mode,
        "records": n,
        "seconds": round(wall, 3),
        "records_per_s": round(n / wall) if wall > 0 else None,
        # the gateway's own view: until the broker acknowledged the last record
        "acked_per_s": round(n / (report.finished_at - report.started_at)) if report.finished_at else None,
        "cpu_s": round(cpu, 3),  # of the measured phase
        "cpu_s_total": round(sampler.cpu, 3),  # of the whole process life (start-up, backlog fill)
        "cpu_ms_per_10k": round(cpu * 1000 / (n / 10_000), 1),
        "cpu_percent_of_core": round(cpu / wall * 100, 1) if wall > 0 else None,
        "peak_rss_mib": round(sampler.peak_rss / 2**20, 1),
        "unique_received": counted["unique"],
        "lost": n - counted["unique"],
        "duplicates": counted["duplicates"],
        "messages": counted["messages"],
        "records_per_message": round(counted["records"] / counted["messages"], 1) if counted["messages"] else 0,
        "detail": report.detail,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role")
    c = sub.add_parser("_counter")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--expected", type=int, required=True)
    c.add_argument("--idle", type=float, default=5.0)
    e = sub.add_parser("_edge")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--db", required=True)
    e.add_argument("--workload", required=True)
    e.add_argument("--commit-interval", type=float, default=0.05)
    f = sub.add_parser("_feed")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--workload", required=True)
    p.add_argument("--compare", action="store_true",
                   help="edge-gateway, then thingsboard-gateway, on the same workload (--peer-records: the peer's)")
    p.add_argument("--peer-records", type=int, default=None, help="records for thingsboard-gateway (it is slow)")
    p.add_argument("--tbgw-venv", default=str(REPO / ".bench" / "tbgw-venv"))
    p.add_argument("--tbgw-warmup", type=float, default=8.0, help="seconds thingsboard-gateway gets to connect")
    p.add_argument("--system", choices=sorted(SYSTEMS), default=EdgeGateway.name)
    p.add_argument("--mode", choices=["live", "backlog", "paced"], default="live")
    p.add_argument("--records", type=int, default=300_000, help="records (live, backlog)")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--body-size", type=int, default=60, help="approximate JSON body length")
    p.add_argument("--rate", type=float, default=10_000, help="records/s (paced)")
    p.add_argument("--seconds", type=float, default=20.0, help="duration (paced)")
    p.add_argument("--commit-interval", type=float, default=0.05, help="outbox group commit interval")
    p.add_argument("--idle", type=float, default=5.0, help="counter: give up after this long without news")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    if args.role == "_counter":
        counter_main(args)
        return
    if args.role == "_edge":
        edge_main(args)
        return
    if args.role == "_feed":
        feed_main(args)
        return
    workload = Workload(args.mode, args.records, args.devices, args.body_size, args.rate, args.seconds)
    runs: list[tuple[SystemUnderTest, Workload]] = []
    if args.compare:
        if args.mode == "backlog":
            raise SystemExit("--compare: the peer has no backlog mode (use live or paced)")
        peer = Workload(args.mode, args.peer_records or args.records, args.devices, args.body_size, args.rate,
                        args.seconds)  # fmt: skip
        runs = [(EdgeGateway(args), workload), (ThingsBoardGateway(args), peer)]
    else:
        runs = [(SYSTEMS[args.system](args), workload)]  # type: ignore[call-arg]
    for (sut, wl), _ in [(r, i) for i in range(args.repeat) for r in runs]:
        r = run_once(sut, wl, args)
        if args.json:
            print(json.dumps(r))
            continue
        print(
            f"{r['system']} {r['mode']}: {r['records']} records in {r['seconds']} s "
            f"= {r['records_per_s']:,} records/s delivered ({r['acked_per_s'] or '-'}/s acknowledged); "
            f"CPU {r['cpu_ms_per_10k']} ms/10k records ({r['cpu_percent_of_core']} % of a core); "
            f"peak RSS {r['peak_rss_mib']} MiB; lost {r['lost']}, duplicates {r['duplicates']}; "
            f"{r['messages']} messages, {r['records_per_message']} records/message"
        )
        up = r["detail"].get("uplink", {})
        print(f"  uplink: {up}")


if __name__ == "__main__":
    main()
