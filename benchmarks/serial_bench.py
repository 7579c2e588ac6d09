"""Serial links at 115200 baud: LwM2M notifications over slipmux, and plain line sensors.

The gateway side runs in this process exactly as the gateway would run it: a
:class:`~gateway.serial.port.SerialLink` per port (pyserial, ``add_reader``) on the slave side of
a pseudo-terminal, and either

- ``lwm2m``: a :class:`~gateway.transport.slipmux.SlipmuxTransport` per port under the project's
  ``LwM2mServer``, with a listener that observes ``/3303/0/5700`` of every device that registers
  (as the ThingsBoard bridge does); or
- ``lines``: the :class:`~gateway.serial.sensors.SerialSensorAdapter` with a key=value converter,
  through a ``DeviceHub`` into a real ``Outbox`` (SQLite, in a temporary directory).

The devices run in another process (``--device-side``, started by this one) on the pty masters.
A pty has no baud rate, so the device emulates one: a byte it sends reaches the gateway no earlier
than the line would have carried it (``--baud``/10 bytes per second, 8N1), in pieces of
``--chunk`` bytes (0: whole frames, as a UART FIFO read at frame ends delivers them; 62: an FTDI
USB packet). What the gateway sends back (ACKs) is delayed by its own line time as well.

``lwm2m`` devices register (``b=N``), answer the Observe and then notify as fast as the line
allows: NON notifications back to back, or CON ones (``--con``), each waiting for its ACK before
the next (RFC 7641: one CON notification in flight), so the turnaround through the gateway costs
line time. Reported:

- notifications/s received by the LwM2M server, per link;
- line utilisation: bytes that reached the gateway / (seconds x raw byte rate); the target is 80%;
- the gateway process's CPU (``process_time`` over wall time) as a share of one core; the target
  for 8 busy ports is under 10%.

Run: ``python benchmarks/serial_bench.py`` (all scenarios) or e.g.
``python benchmarks/serial_bench.py --scenario lwm2m --ports 8 --con --seconds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiocoap import Message  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402
from aiocoap.numbers.types import Type  # noqa: E402

from gateway.transport.slipmux_frames import ConfigurationFrame, SlipmuxDecoder, encode_configuration  # noqa: E402

TEXT = 0
SENML_JSON = 110
FORMATS = {"server": None, "text": TEXT, "senml-json": SENML_JSON}
OBSERVED = "/3303/0/5700"
REPORT_INTERVAL_S = 0.05

# ----------------------------------------------------------------------------------------------
# The device side (a separate process): paced writes on the pty masters


@dataclass
class DevicePort:
    """One emulated device: its line (what it sends, when it arrives) and its CoAP state."""

    index: int
    fd: int
    mode: str
    rate: float
    chunk: int
    con: bool
    decoder: SlipmuxDecoder = field(default_factory=SlipmuxDecoder)
    due: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival time, bytes), in order
    line_free_at: float = 0.0
    mid: int = 0x1000
    seq: int = 0
    token: bytes = b""
    accept: int = 0
    streaming: bool = False
    waiting_ack: int | None = None
    ack_arrived_at: float = 0.0
    sent_frames: int = 0
    written: int = 0

    def send(self, frame: bytes, now: float) -> None:
        """Put ``frame`` on the line: its pieces arrive as the line would carry them."""
        start = max(now, self.line_free_at)
        piece = self.chunk or len(frame)
        for offset in range(0, len(frame), piece):
            part = frame[offset : offset + piece]
            start += len(part) / self.rate
            self.due.append((start, part))
        self.line_free_at = start
        self.sent_frames += 1

    def next_mid(self) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def register(self, now: float) -> None:
        if self.mode == "lwm2m":
            message = Message(
                mtype=Type.CON, code=Code.POST, mid=self.next_mid(), token=b"rg%02d" % self.index,
                uri_path=["rd"], uri_query=[f"ep=serial-{self.index}", "b=N", "lt=3600", "lwm2m=1.1"],
                payload=b"</3303/0>", content_format=40,
            )  # fmt: skip
            self.send(encode_configuration(message.encode()), now)
        else:
            self.streaming = True

    def received(self, data: bytes, now: float) -> None:
        # the bytes left the gateway now; the device has them once the line carried them
        arrived = now + len(data) / self.rate
        for frame in self.decoder.feed(data):
            if not isinstance(frame, ConfigurationFrame):
                continue
            message = Message.decode(frame.coap)
            if message.mtype is Type.ACK and message.code == Code.EMPTY and message.mid == self.waiting_ack:
                self.waiting_ack = None
                self.ack_arrived_at = arrived
            elif message.code == Code.GET and message.opt.observe == 0:
                self.token = message.token
                self.accept = int(message.opt.accept) if message.opt.accept is not None else TEXT
                reply = self._value_message(Type.ACK, message.mid)
                self.send(encode_configuration(reply), arrived)
                self.streaming = True

    def _value_message(self, mtype: Type, mid: int) -> bytes:
        self.seq += 1
        value = 20 + (self.seq % 1000) / 100
        if self.accept == SENML_JSON:
            payload = b'[{"bn":"%s","v":%.2f}]' % (OBSERVED.encode(), value)
        else:
            payload = b"%.2f" % value
        header = bytes([0x40 | (int(mtype) << 4) | len(self.token), int(Code.CONTENT), mid >> 8, mid & 0xFF])
        seq = self.seq & 0xFFFFFF
        observe = bytes([0x63, seq >> 16, (seq >> 8) & 0xFF, seq & 0xFF])  # option 6, 3 bytes
        content_format = bytes([0x61, self.accept]) if self.accept else b"\x60"  # option 12 (0: no bytes)
        return header + self.token + observe + content_format + b"\xff" + payload

    def line(self, value: float) -> bytes:
        return b"temp=%.2f,hum=%.1f,seq=%d\n" % (20 + value, 40 + value, self.seq)

    def produce(self, now: float) -> None:
        """Keep the line busy: the next frame as soon as the previous one is (nearly) through."""
        if not self.streaming or self.line_free_at > now + 0.002 or len(self.due) > 16:
            return
        if self.mode == "lines":
            self.seq += 1
            self.send(self.line((self.seq % 1000) / 100), now)
            return
        if self.con:
            if self.waiting_ack is not None:
                return
            mid = self.next_mid()
            self.waiting_ack = mid
            self.send(encode_configuration(self._value_message(Type.CON, mid)), max(now, self.ack_arrived_at))
        else:
            self.send(encode_configuration(self._value_message(Type.NON, self.next_mid())), now)


def device_side(args: argparse.Namespace) -> None:
    fds = [int(fd) for fd in args.fds.split(",")]
    rate = args.baud / 10
    ports = [DevicePort(i, fd, args.scenario, rate, args.chunk, args.con) for i, fd in enumerate(fds)]
    by_fd = {p.fd: p for p in ports}
    for p in ports:
        os.set_blocking(p.fd, False)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with contextlib.suppress(PermissionError):
        os.nice(-10)  # the devices stand in for UARTs, which a busy host does not slow down
    report = sys.stdout.fileno()
    os.set_blocking(report, False)
    reported_at = 0.0
    now = time.monotonic()
    for p in ports:
        p.register(now)
    while not stop:
        now = time.monotonic()
        if now - reported_at >= REPORT_INTERVAL_S:  # what the devices put on their lines, so far
            reported_at = now
            with contextlib.suppress(BlockingIOError):
                os.write(report, (" ".join(str(p.written) for p in ports) + "\n").encode())
        writable: list[int] = []
        for p in ports:
            p.produce(now)
            while p.due and p.due[0][0] <= now:
                try:
                    n = os.write(p.fd, p.due[0][1])
                except BlockingIOError:
                    writable.append(p.fd)  # the gateway is not reading: the device waits
                    break
                except OSError:
                    return
                p.written += n
                when, data = p.due[0]
                if n < len(data):
                    p.due[0] = (when, data[n:])
                    writable.append(p.fd)
                    break
                p.due.pop(0)
        next_due = min((p.due[0][0] for p in ports if p.due and p.fd not in writable), default=now + 0.002)
        timeout = max(0.0, min(next_due, now + 0.002) - time.monotonic())
        readable, _, _ = select.select(fds, writable, [], timeout)
        now = time.monotonic()
        for fd in readable:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            by_fd[fd].received(data, now)


# ----------------------------------------------------------------------------------------------
# The gateway side (this process)


def open_ptys(n: int) -> tuple[list[int], list[str]]:
    masters, paths = [], []
    for _ in range(n):
        master, slave = os.openpty()
        tty.setraw(master)
        masters.append(master)
        paths.append(os.ttyname(slave))
        os.close(slave)
    return masters, paths


class Offered:
    """The devices' running byte counts (their process reports them every REPORT_INTERVAL_S)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = b""
        self.latest: list[int] = []
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
            return
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        if lines:
            self.latest = [int(x) for x in lines[-1].split()]

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.fd)


def start_devices(args: argparse.Namespace, masters: list[int]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, __file__, "--device-side", "--fds", ",".join(map(str, masters)),
        "--scenario", args.scenario, "--baud", str(args.baud), "--chunk", str(args.chunk),
    ]  # fmt: skip
    if args.con:
        cmd.append("--con")
    proc = subprocess.Popen(cmd, pass_fds=masters, cwd=ROOT, stdout=subprocess.PIPE)
    for fd in masters:
        os.close(fd)
    return proc


async def measure(
    args: argparse.Namespace, links: list[Any], count: Any, ready: Any, offered: Offered
) -> dict[str, Any]:
    await asyncio.wait_for(ready(), 30)
    await asyncio.sleep(args.warmup)  # steady state first: registration and observe done
    n0, b0, o0 = count(), [link.bytes_in for link in links], offered.latest
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(args.seconds)
    n1, b1, o1 = count(), [link.bytes_in for link in links], offered.latest
    cpu1, t1 = time.process_time(), time.monotonic()
    offered.close()
    wall = t1 - t0
    rate = args.baud / 10
    per_link = [(after - before) / wall / rate for before, after in zip(b0, b1, strict=True)]
    sent = [(after - before) / wall / rate for before, after in zip(o0, o1, strict=True)]
    return {
        "scenario": args.scenario + (" CON" if args.con else " NON" if args.scenario == "lwm2m" else ""),
        "ports": args.ports,
        "baud": args.baud,
        "chunk": args.chunk or "frame",
        **({"format": args.format, "fast_path": not args.no_fast_path} if args.scenario == "lwm2m" else {}),
        "seconds": round(wall, 1),
        "messages_per_s": round((n1 - n0) / wall),
        "messages_per_s_per_link": round((n1 - n0) / wall / len(links)),
        "utilisation_min": round(min(per_link), 3),
        "utilisation_mean": round(sum(per_link) / len(per_link), 3),
        # what the emulated devices managed to put on their lines (below 1: the host starved them)
        "offered_mean": round(sum(sent) / len(sent), 3) if sent else None,
        "gateway_cpu_of_one_core": round((cpu1 - cpu0) / wall, 4),
    }


async def run_lwm2m(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.lwm2m.server import LwM2mServer, Observation, Registration, RegistrationListener, ServerConfig
    from gateway.serial.port import LinkSettings, SerialLink
    from gateway.transport.slipmux import SlipmuxTransport

    loop = asyncio.get_running_loop()
    log = logging.getLogger("bench.slipmux")

    class Observer(RegistrationListener):
        def __init__(self) -> None:
            self.notifications = 0
            self.observed = 0
            self.failures: list[str] = []
            self.tasks: set[asyncio.Task[None]] = set()

        def on_registered(self, registration: Registration) -> None:
            task = loop.create_task(self.observe(registration.endpoint))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        async def observe(self, endpoint: str) -> None:
            try:
                response = await server.observe(endpoint, OBSERVED, format=FORMATS[args.format], timeout=30)
            except Exception as exc:
                self.failures.append(f"{endpoint}: {exc!r}")
                return
            if response.observation is not None:
                self.observed += 1

        def on_notification(
            self, registration: Registration, observation: Observation, values: Any, ts: float
        ) -> None:
            self.notifications += 1

    observer = Observer()
    server = LwM2mServer(config=ServerConfig(admit_nosec=True), listener=observer)
    masters, paths = open_ptys(args.ports)
    links = [SerialLink(f"ttyS{i}", LinkSettings(path, baudrate=args.baud)) for i, path in enumerate(paths)]
    for link in links:

        async def factory(mman: Any, link: SerialLink = link) -> SlipmuxTransport:
            return await SlipmuxTransport.create(mman, log, loop, link=link)

        _, transport = await server.add_transport(factory)
        if not args.no_fast_path:
            transport.notification_sink = server.exchanges
    proc = start_devices(args, masters)

    async def ready() -> None:
        while observer.observed < args.ports:
            if observer.failures:
                raise RuntimeError(f"observe failed: {observer.failures}")
            await asyncio.sleep(0.05)

    try:
        return await measure(args, links, lambda: observer.notifications, ready, Offered(proc))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        await server.stop()


async def run_lines(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.core.clock import Clock
    from gateway.core.hub import DeviceHub
    from gateway.serial.config import parse_ports
    from gateway.serial.sensors import SerialSensorAdapter
    from gateway.store.outbox import Outbox

    masters, paths = open_ptys(args.ports)
    tables = [
        {"name": f"s{i}", "path": path, "baudrate": args.baud, "device": f"sensor-{i}", "converter": {"type": "kv"}}
        for i, path in enumerate(paths)
    ]
    ports, problems = parse_ports(tables)
    assert not problems, problems
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock(sync_marker=None, trust="always")
        outbox = await Outbox.open(Path(tmp) / "outbox.sqlite3", clock=clock)
        adapter = SerialSensorAdapter(DeviceHub(outbox), ports, clock=clock)
        await adapter.start()
        proc = start_devices(args, masters)

        async def ready() -> None:
            while sum(p.lines for p in adapter.ports) < args.ports:
                await asyncio.sleep(0.05)

        try:
            result = await measure(
                args, [p.link for p in adapter.ports], lambda: sum(p.lines for p in adapter.ports), ready, Offered(proc)
            )
            result["bad_lines"] = sum(p.bad_lines + p.splitter.overlong for p in adapter.ports)
            return result
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            await adapter.stop()
            await outbox.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("lwm2m", "lines", "all"), default="all")
    parser.add_argument("--ports", type=int, default=1)
    parser.add_argument("--con", action="store_true", help="CON notifications, each waiting for its ACK")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--chunk", type=int, default=0, help="bytes per delivery (0: whole frames)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--no-fast-path", action="store_true", help="every notification through aiocoap")
    parser.add_argument(
        "--format", choices=tuple(FORMATS), default="server", help="notification format (server: what it asks)"
    )
    parser.add_argument("--device-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fds", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device_side:
        device_side(args)
        return
    logging.basicConfig(level=logging.WARNING)
    if args.scenario != "all":
        runner = run_lwm2m if args.scenario == "lwm2m" else run_lines
        print(json.dumps(asyncio.run(runner(args))))
        return
    plan: list[dict[str, Any]] = [
        {"scenario": "lwm2m", "ports": 1},
        {"scenario": "lwm2m", "ports": 1, "con": True},
        {"scenario": "lwm2m", "ports": 1, "chunk": 62},
        {"scenario": "lwm2m", "ports": 8},
        {"scenario": "lwm2m", "ports": 8, "format": "senml-json"},
        {"scenario": "lwm2m", "ports": 8, "con": True},
        {"scenario": "lwm2m", "ports": 8, "chunk": 62},
        {"scenario": "lwm2m", "ports": 8, "no_fast_path": True},
        {"scenario": "lines", "ports": 1},
        {"scenario": "lines", "ports": 8},
        {"scenario": "lines", "ports": 8, "chunk": 62},
    ]
    for changes in plan:
        run_args = argparse.Namespace(**{**vars(args), "con": False, "chunk": 0, **changes})
        runner = run_lwm2m if run_args.scenario == "lwm2m" else run_lines
        print(json.dumps(asyncio.run(runner(run_args))), flush=True)


if __name__ == "__main__":
    main()
