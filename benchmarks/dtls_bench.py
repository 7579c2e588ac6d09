"""DTLS server benchmark: full handshakes per second, server CPU per handshake, memory per session.

The server (the project's DtlsServer under the aiocoap transport, one asyncio loop) runs in this
process; the load comes from other processes running the project's non-blocking GnuTLS client
(``DtlsClient``), many handshakes in flight each, so the load is not the bottleneck the way a
blocking client would be. Keys and certificates are made with openssl in a temporary directory.

    python benchmarks/dtls_bench.py rate --mode psk --seconds 10      # handshakes/s, CPU/handshake
    python benchmarks/dtls_bench.py sessions --count 2000              # memory per held session
    python benchmarks/dtls_bench.py wrongkey --seconds 5               # CPU per wrong-key attempt
    python benchmarks/dtls_bench.py burst --count 2000                 # 3 x count clients at once
    python benchmarks/dtls_bench.py register --count 2000 --processes 3 --keys /tmp/dtls-bench-keys
                              # 3 x count endpoints register at once through the LwM2M layer
    python benchmarks/dtls_bench.py engine --mode rpk --count 2000     # server CPU/handshake, no sockets
    python benchmarks/dtls_bench.py all                                # everything, default sizes

Each handshake is a full one (no resumption): ClientHello, HelloVerifyRequest, ClientHello with
cookie, the server's flight, the client's flight, the server's Finished; then the client sends
close_notify (``rate``) or a CoAP CON POST, retransmitted until answered (``sessions``, ``burst``).
``DTLS_BENCH_VERBOSE=1`` prints the server's counters; ``DTLS_BENCH_PROFILE=file`` profiles it.

Measured on the 2-core development machine (GnuTLS 3.7.9, shared with other jobs, so rates vary
with the load; server CPU per handshake is the steadier figure), November 2026:
  rate psk   2,500-3,060/s, 0.25-0.28 ms server CPU per handshake (0.31-0.41 ms when contended)
  rate rpk   783/s with the server at 68% of a core: 0.875 ms (0.97-1.2 ms contended)
  rate x509  601/s at 76% of a core: 1.27 ms with the chain cache; 1.47-1.86 ms --no-x509-cache
  wrongkey   2,600-3,600 attempts/s, 0.16 ms server CPU each, all refused at once (bad_record_mac)
  sessions   2,000 held with CoAP state: 9.6-9.9 KiB heap in use, 12.7-13.1 KiB RSS per session
             (--inflight 32); 16-24 KiB RSS when all 2,000 connect at once (heap fragmentation)
  burst      2,000 PSK + 2,000 RPK + 2,000 X.509 at once: all answered in 24 s, load-generator bound
             (server CPU 8.5 s; the clients' ECDHE costs as much as the server's)
GnuTLS/nettle P-256 here: key generation 0.16 ms, ECDSA sign 0.11 ms, verify 0.25 ms, so an
ECDHE-ECDSA handshake with client authentication needs about 0.7 ms of server crypto alone.

December 2026, same machine (other jobs shared the 2 cores during most runs: with them busy every
figure below gets up to 2x worse, CPU per handshake included):
  rate psk   2,344-8,294/s, 0.11-0.22 ms server CPU per handshake
  rate rpk   635-1,976/s, 0.48-0.73 ms (1,187-1,976/s whenever the other jobs were quiet)
  rate x509  665-1,626/s, 0.55-0.84 ms (993-1,626/s whenever the other jobs were quiet)
  engine     server alone, no sockets: psk 0.08-0.13, rpk 0.49-0.60, x509 0.58-0.70 ms; of that,
             about 2/3 is GnuTLS/nettle and 1/3 Python and ctypes (31 foreign calls and about 10
             callbacks per handshake, no single hot spot); per handshake the server sends 4
             datagrams (HelloVerifyRequest, its flight, CCS+Finished, close_notify)
  register   2,000 PSK + 2,000 RPK + 2,000 X.509 through the LwM2M layer: all 6,000 registered in
             4.9-9.9 s (target 15 s), server CPU 3.6-5.4 s (48-73% of a core), RSS 101-112 MB
             (+57-68 MB), 0 failures; 3,600-7,400 hellos wait out the 1,000 half-open cap (their
             clients retransmit after 1-2 s; without the cap: 9.0 s and 141 MB, no faster)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import ctypes
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiocoap
from aiocoap import resource as coap_resource

from gateway.transport.dtls import (
    Addr,
    DtlsClient,
    DtlsServer,
    DtlsSession,
    InMemoryCredentials,
    RpkKeyPair,
    TrustStore,
    X509Credentials,
)
from gateway.transport.dtls_coap import DtlsTransport, attach_dtls_transport

PSK_ID = b"bench-identity"
PSK_KEY = b"bench-psk-key-16"
WRONG_KEY = b"wrong-psk-key-16"
MODES = ("psk", "rpk", "x509")

# --- keys ------------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_keys(root: Path) -> None:
    """A CA, a server certificate, a client certificate, server and client raw key pairs."""
    for name in ("ca", "server", "client", "server-rpk", "client-rpk"):
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=root)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=bench-ca", "-days", "30", "-out", "ca.pem", cwd=root
    )
    for name, cn in (("server", "gateway"), ("client", "LwX50900000000")):
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=root)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-out", f"{name}.pem", cwd=root,
        )  # fmt: skip
    for name in ("server-rpk", "client-rpk"):
        _openssl("ec", "-in", f"{name}.key", "-pubout", "-out", f"{name}.pub", cwd=root)
        _openssl("ec", "-in", f"{name}.key", "-pubout", "-outform", "DER", "-out", f"{name}.der", cwd=root)
        (root / f"{name}.pem").write_bytes((root / f"{name}.pub").read_bytes() + (root / f"{name}.key").read_bytes())


def server_credentials(root: Path) -> InMemoryCredentials:
    return InMemoryCredentials(
        psk={PSK_ID: PSK_KEY},
        rpk_keys={(root / "client-rpk.der").read_bytes()},
        server_rpk=RpkKeyPair.from_pem((root / "server-rpk.pem").read_bytes()),
        server_x509=X509Credentials(
            (root / "server.pem").read_bytes() + (root / "ca.pem").read_bytes(), (root / "server.key").read_bytes()
        ),
        trust=TrustStore(ca_file=str(root / "ca.pem")),
    )


def client_credentials(root: Path, mode: str) -> dict[str, Any]:
    if mode == "psk":
        return {"psk": (PSK_ID, PSK_KEY)}
    if mode == "wrongkey":
        return {"psk": (PSK_ID, WRONG_KEY)}
    if mode == "rpk":
        return {"rpk": RpkKeyPair.from_pem((root / "client-rpk.pem").read_bytes())}
    return {"x509": X509Credentials((root / "client.pem").read_bytes(), (root / "client.key").read_bytes())}


# --- load clients (child processes) -------------------------------------------------------------------


class _Slot(asyncio.DatagramProtocol):
    """One client socket doing handshakes one after another (``close``), or one device (``hold``):
    handshake, then a CoAP CON POST retransmitted as CoAP does (2 s, doubling) until answered; a
    failed handshake is started again, as a device would."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: Any = None
        self.engine = DtlsClient(
            loop=load.loop,
            send=lambda addr, data: self.transport.sendto(data, addr),
            on_established=self.established,
            on_data=self.data,
            on_handshake_failed=self.failed,
        )
        self.started = 0.0
        self.answered = False
        self.retry: asyncio.TimerHandle | None = None
        self.post = b""

    async def bind(self) -> None:
        self.transport, _ = await self.load.loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.engine.datagram_received(data, addr)

    def start(self) -> None:
        if self.load.stopping:
            return
        self.started = time.monotonic()
        self.engine.connect(self.load.server, **self.load.credentials)

    def established(self, session: DtlsSession) -> None:
        self.load.done += 1
        took = time.monotonic() - self.started
        self.load.latency += took
        if took > 0.5:
            self.load.slow += 1
        if self.load.action == "close":
            session.close()
            self.start()
        else:  # a CoAP CON POST, as a registration would be; the session stays open
            msg = aiocoap.Message(code=aiocoap.POST, uri_path=["rd"], payload=b"</3/0>")
            msg.mtype, msg.mid, msg.token = aiocoap.CON, 1, b"\x01"
            self.post = msg.encode()
            self.send_post(session, 2.0)
            self.load.start_next()

    def send_post(self, session: DtlsSession, timeout: float) -> None:
        if self.answered or not session.established or self.load.stopping:
            return
        session.send(self.post)
        self.load.posts += 1
        self.retry = self.load.loop.call_later(timeout, self.send_post, session, 2 * timeout)

    def data(self, session: DtlsSession, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.load.answered += 1
            if self.retry is not None:
                self.retry.cancel()

    def failed(self, addr: Addr, reason: str) -> None:
        self.load.failed += 1
        self.start()


class _Load:
    def __init__(self, server: Addr, credentials: dict[str, Any], action: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = server
        self.credentials = credentials
        self.action = action
        self.done = self.failed = self.answered = self.slow = self.posts = 0
        self.latency = 0.0
        self.stopping = False
        self.waiting: list[_Slot] = []  # hold mode with a ramp: devices not started yet

    def start_next(self) -> None:
        if self.waiting and not self.stopping:
            self.waiting.pop().start()


async def _load_main(
    port: int,
    keys: str,
    mode: str,
    slots: int,
    seconds: float,
    action: str,
    ready: Any,
    go: Any,
    release: Any,
    inflight: int = 0,
) -> dict[str, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, slots + 256)), hard))
    load = _Load(("127.0.0.1", port), client_credentials(Path(keys), mode), action)
    loop = load.loop
    all_slots = []
    for _ in range(slots):
        slot = _Slot(load)
        await slot.bind()
        all_slots.append(slot)
    ready.set()
    await loop.run_in_executor(None, go.wait)
    t0 = time.monotonic()
    cpu0 = time.process_time()
    first = all_slots if action == "close" or not inflight else all_slots[:inflight]
    load.waiting = [] if first is all_slots else all_slots[inflight:][::-1]
    for slot in first:
        slot.start()
    if action == "close":
        await asyncio.sleep(seconds)
    else:  # hold: until every slot is established and answered, or the time is up
        while load.answered < slots and time.monotonic() - t0 < seconds:
            await asyncio.sleep(0.05)
    load.stopping = True
    result = {
        "done": load.done,
        "failed": load.failed,
        "answered": load.answered,
        "elapsed": time.monotonic() - t0,
        "cpu": time.process_time() - cpu0,
        "latency": load.latency / max(1, load.done),
        "slow": load.slow,
        "posts": load.posts,
    }
    if action == "hold":
        await loop.run_in_executor(None, release.wait)  # keep the sessions until the parent has measured
    for slot in all_slots:
        slot.engine.close()
        slot.transport.close()
    return result


def _load_process(
    port: int,
    keys: str,
    mode: str,
    slots: int,
    seconds: float,
    action: str,
    ready: Any,
    go: Any,
    release: Any,
    out: Any,
    inflight: int = 0,
) -> None:
    out.put(asyncio.run(_load_main(port, keys, mode, slots, seconds, action, ready, go, release, inflight)))


class _Children:
    """The load processes (spawned), each with a ready event and a queue for its result."""

    def __init__(self) -> None:
        self.mp = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.readies: list[Any] = []
        self.outs: list[Any] = []

    def start(self, target: Any, make_args: Any) -> None:
        """Start ``target(*make_args(ready, out))``."""
        ready, out = self.mp.Event(), self.mp.Queue()
        p = self.mp.Process(target=target, args=make_args(ready, out), daemon=True)
        p.start()
        self.procs.append(p)
        self.readies.append(ready)
        self.outs.append(out)

    async def all_ready(self) -> None:
        loop = asyncio.get_running_loop()
        for ready in self.readies:
            await loop.run_in_executor(None, ready.wait)

    async def results(self) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(None, out.get) for out in self.outs]

    async def join(self) -> None:
        loop = asyncio.get_running_loop()
        for p in self.procs:
            await loop.run_in_executor(None, p.join)


# --- the server (this process) -------------------------------------------------------------------------


class _Ok(coap_resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CREATED)


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to ``port`` (full receive buffer)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return int(fields[-1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ]


def heap_in_use() -> int:
    """Bytes malloc has handed out and not got back (glibc), C and Python alike; 0 if unknown."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)
    except (OSError, AttributeError):
        return 0


def trim_heap() -> None:
    """Give freed heap back to the system (what a burst of handshakes left), so RSS shows what lives."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Run:
    mode: str
    processes: int
    slots: int
    handshakes: int
    failed: int
    seconds: float
    server_cpu: float
    client_cpu: float
    latency: float
    slow: int
    udp_drops: int
    rss_delta: int
    raw_rss_delta: int
    heap_delta: int
    sessions_held: int
    answered: int

    @property
    def rate(self) -> float:
        return self.handshakes / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_handshake_ms(self) -> float:
        return 1000 * self.server_cpu / max(1, self.handshakes + self.failed)


async def serve_and_load(
    keys: Path,
    mode: str,
    *,
    processes: int,
    slots: int,
    seconds: float,
    action: str,
    inflight: int = 0,
    **server_kw: Any,
) -> Run:
    loop = asyncio.get_running_loop()
    site = coap_resource.Site()
    site.add_resource(["rd"], _Ok())
    ctx = aiocoap.Context(loop=loop, serversite=site, loggername="bench")
    server = DtlsServer(server_credentials(keys), **server_kw)
    transport = await attach_dtls_transport(ctx, server, bind=("127.0.0.1", 0))
    counts = {"records_in": 0, "coap_out": 0}
    if os.environ.get("DTLS_BENCH_VERBOSE"):
        on_data, send = server.on_data, transport.send

        def counting_data(session: DtlsSession, data: bytes) -> None:
            counts["records_in"] += 1
            assert on_data is not None
            on_data(session, data)

        def counting_send(message: aiocoap.Message) -> None:
            counts["coap_out"] += 1
            send(message)

        server.on_data = counting_data
        transport.send = counting_send  # type: ignore[method-assign]
    children = _Children()
    go, release = children.mp.Event(), children.mp.Event()
    for i in range(processes):
        n = slots // processes + (1 if i < slots % processes else 0)
        children.start(
            _load_process,
            lambda ready, out, n=n: (
                transport.port, str(keys), mode, n, seconds, action, ready, go, release, out, inflight
            ),
        )  # fmt: skip
    await children.all_ready()
    gc.collect()
    trim_heap()
    rss0 = rss_bytes()
    heap0 = heap_in_use()
    stats0 = dict(server.stats)
    drops0 = socket_drops(transport.port)
    cpu0 = time.process_time()
    go.set()
    if action == "hold":
        t0 = time.monotonic()
        target = slots
        while time.monotonic() - t0 < seconds and sum(1 for x in server.sessions.values() if x.established) < target:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the CoAP answers
        gc.collect()
        raw_rss = rss_bytes()
        trim_heap()
        rss1 = rss_bytes()
        heap1 = heap_in_use()
        cpu = time.process_time() - cpu0
        held = sum(1 for x in server.sessions.values() if x.established)
        release.set()
    results = await children.results()
    if os.environ.get("DTLS_BENCH_VERBOSE"):
        print("load results:", results, "server socket drops:", socket_drops(transport.port) - drops0)
    if action != "hold":
        cpu = time.process_time() - cpu0
        raw_rss = rss1 = rss_bytes()
        heap1 = heap_in_use()
        held = len(server.sessions)
    await children.join()
    stats = {k: server.stats[k] - stats0.get(k, 0) for k in server.stats}
    drops = socket_drops(transport.port) - drops0
    if os.environ.get("DTLS_BENCH_VERBOSE"):
        print("server stats:", stats, counts, "dropped sends:", transport._udp.dropped_sends if transport._udp else "?")
    await ctx.shutdown()
    return Run(
        mode=mode,
        processes=processes,
        slots=slots,
        handshakes=stats["handshakes_completed"],
        failed=stats["handshakes_failed"] + sum(int(r["failed"]) for r in results),
        seconds=max(r["elapsed"] for r in results),
        server_cpu=cpu,
        client_cpu=sum(r["cpu"] for r in results),
        latency=sum(r["latency"] for r in results) / len(results),
        slow=sum(int(r["slow"]) for r in results),
        udp_drops=drops,
        rss_delta=rss1 - rss0,
        raw_rss_delta=raw_rss - rss0,
        heap_delta=heap1 - heap0,
        sessions_held=held,
        answered=sum(int(r["answered"]) for r in results),
    )


# --- scenarios -------------------------------------------------------------------------------------------


async def bench_rate(keys: Path, mode: str, seconds: float, processes: int, slots: int, **server_kw: Any) -> Run:
    run = await serve_and_load(
        keys, mode, processes=processes, slots=slots, seconds=seconds, action="close", **server_kw
    )
    print(
        f"rate {mode:5} {run.rate:8.0f} handshakes/s  server CPU {run.cpu_per_handshake_ms:.3f} ms/handshake"
        f"  (server {100 * run.server_cpu / run.seconds:.0f}% of a core,"
        f" clients {run.client_cpu / run.seconds:.2f} cores,"
        f" {processes} processes x {slots // processes} in flight, failed {run.failed},"
        f" latency {1000 * run.latency:.1f} ms, {run.slow} over 0.5 s,"
        f" {run.udp_drops} dropped at the server socket)"
    )
    return run


async def bench_sessions(keys: Path, mode: str, count: int, processes: int, inflight: int) -> Run:
    run = await serve_and_load(
        keys, mode, processes=processes, slots=count, seconds=120, action="hold", inflight=inflight,
        max_handshakes=count,
    )  # fmt: skip
    n = max(1, run.sessions_held)
    print(
        f"sessions {mode:5} {run.sessions_held} held ({inflight or 'all'} connecting at a time per process),"
        f" {run.answered} CoAP answers, {run.failed} failed handshakes"
        f" (retried), {run.udp_drops} dropped at the server socket: per session"
        f" {run.heap_delta / n / 1024:.1f} KiB heap in use, {run.rss_delta / n / 1024:.1f} KiB RSS"
        f" ({run.raw_rss_delta / n / 1024:.1f} KiB before returning the handshake storm's freed heap)"
    )
    return run


async def bench_wrongkey(keys: Path, seconds: float, processes: int, slots: int) -> Run:
    run = await serve_and_load(keys, "wrongkey", processes=processes, slots=slots, seconds=seconds, action="close")
    per = 1000 * run.server_cpu / max(1, run.failed)
    print(
        f"wrongkey {run.failed / run.seconds:8.0f} attempts/s  server CPU {per:.3f} ms/attempt"
        f"  (every attempt refused at once with bad_record_mac: {run.handshakes == 0})"
    )
    return run


async def bench_burst(keys: Path, count: int, processes: int) -> dict[str, float]:
    """count clients of each mode start at once; time until all of them have a CoAP answer."""
    loop = asyncio.get_running_loop()
    site = coap_resource.Site()
    site.add_resource(["rd"], _Ok())
    ctx = aiocoap.Context(loop=loop, serversite=site, loggername="bench")
    server = DtlsServer(server_credentials(keys), max_handshakes=1000)
    transport = await attach_dtls_transport(ctx, server, bind=("127.0.0.1", 0))
    children = _Children()
    go, release = children.mp.Event(), children.mp.Event()
    for mode in MODES:
        for i in range(processes):
            n = count // processes + (1 if i < count % processes else 0)
            children.start(
                _load_process,
                lambda ready, out, mode=mode, n=n: (transport.port, str(keys), mode, n, 60.0, "hold", ready, go,
                                                    release, out),
            )  # fmt: skip
    await children.all_ready()
    cpu0 = time.process_time()
    drops0 = socket_drops(transport.port)
    stats0 = dict(server.stats)
    t0 = time.monotonic()
    go.set()
    release.set()  # each load process ends when all its devices are answered (or after 60 s)
    results = await children.results()
    elapsed = max(r["elapsed"] for r in results)
    cpu = time.process_time() - cpu0
    answered = sum(int(r["answered"]) for r in results)
    drops = socket_drops(transport.port) - drops0
    stats = {k: server.stats[k] - stats0.get(k, 0) for k in server.stats}
    per_mode = [max(r["elapsed"] for r in results[i * processes : (i + 1) * processes]) for i in range(3)]
    await children.join()
    print(
        f"burst {count} PSK + {count} RPK + {count} X.509 at once: {answered}/{3 * count} answered in {elapsed:.1f} s"
        f" (PSK/RPK/X.509 done after {per_mode[0]:.1f}/{per_mode[1]:.1f}/{per_mode[2]:.1f} s; server CPU"
        f" {cpu:.1f} s; {stats['handshakes_completed']} handshakes, {stats['handshakes_failed']} failed,"
        f" {stats['handshakes_refused_limit']} hellos over the half-open limit, {drops} datagrams dropped at the"
        f" server socket, {time.monotonic() - t0:.1f} s wall)"
    )
    await ctx.shutdown()
    return {"answered": answered, "seconds": elapsed, "server_cpu": cpu}


# --- register: 3 x N endpoints register at once through the LwM2M layer --------------------------------
#
# The service's path end to end: the LwM2M server (LwM2mServer) with the DTLS transport, the
# credentials store (ClientStore, SQLite, all 3 x N clients) as the DTLS server's provider, and the
# SecurityBinding as the registration check. The devices are the project's simulator
# (gateway.sim.bootstrap_client.DtlsFleet: one UDP socket and one non-blocking DTLS client engine
# each, no task per device) in --processes other processes at nice 10, each with a third of every
# mode. Every device starts its handshake at the same moment and sends its Register (CON, with
# CoAP retransmission) as soon as its session is up.
# Each device has its own credentials: PSK identity/key, a P-256 key pair (made in process by
# GnuTLS), an X.509 certificate with CN = endpoint (all signed by one CA, with one shared key pair:
# the openssl CLI signs about 30 certificates/s, so --keys keeps them between runs).


def _endpoints(count: int) -> list[tuple[str, str]]:
    """(endpoint, mode), the modes interleaved."""
    return [(f"{mode}-{i:06d}", mode) for i in range(count) for mode in MODES]


def _psk_of(endpoint: str) -> tuple[bytes, bytes]:
    return f"{endpoint}-id".encode(), hashlib.sha256(endpoint.encode()).digest()[:16]


async def make_population(root: Path, count: int) -> None:
    """Per-endpoint RPK key pairs and X.509 certificates (CN = endpoint) for ``count`` of each mode,
    in ``root`` (kept: only what is missing is made)."""
    from gateway.transport.dtls import generate_p256_key_pair

    if not (root / "ca.pem").exists():
        make_keys(root)
    rpk_file = root / "rpk-pairs.json"
    pairs = json.loads(rpk_file.read_text()) if rpk_file.exists() else []
    if len(pairs) < count:
        pairs += [[p.hex(), k.hex()] for p, k in (generate_p256_key_pair() for _ in range(count - len(pairs)))]
        rpk_file.write_text(json.dumps(pairs))
    certs = root / "x509"
    certs.mkdir(exist_ok=True)
    if not (root / "client-shared.csr").exists():
        _openssl("req", "-new", "-key", "client.key", "-subj", "/CN=template", "-out", "client-shared.csr", cwd=root)
    missing = [i for i in range(count) if not (certs / f"x509-{i:06d}.der").exists()]
    if missing:
        print(f"signing {len(missing)} client certificates with the openssl CLI ...", flush=True)
    sem = asyncio.Semaphore(max(2, os.cpu_count() or 2))

    async def sign(i: int) -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(
                "openssl", "x509", "-req", "-in", "client-shared.csr", "-subj", f"/CN=x509-{i:06d}",
                "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", str(1000 + i), "-days", "30",
                "-outform", "DER", "-out", f"x509/x509-{i:06d}.der", cwd=root,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await proc.wait() != 0:
                raise RuntimeError(f"openssl could not sign the certificate of x509-{i:06d}")

    await asyncio.gather(*(sign(i) for i in missing))


def _population_credentials(root: Path) -> Any:
    """endpoint -> what its DTLS client presents (built lazily, in the load process)."""
    from gateway.transport.dtls import KeyFormat

    pairs = json.loads((root / "rpk-pairs.json").read_text())
    client_key = (root / "client.key").read_bytes()

    def credentials(endpoint: str) -> dict[str, Any]:
        mode, _, n = endpoint.partition("-")
        if mode == "psk":
            return {"psk": _psk_of(endpoint)}
        if mode == "rpk":
            pub, priv = pairs[int(n)]
            return {"rpk": RpkKeyPair(bytes.fromhex(pub), bytes.fromhex(priv), KeyFormat.DER)}
        cert = (root / "x509" / f"{endpoint}.der").read_bytes()
        pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(cert) + b"-----END CERTIFICATE-----\n"
        return {"x509": X509Credentials(pem, client_key)}

    return credentials


async def _fleet_main(
    port: int, keys: str, endpoints: list[str], ready: Any, go: Any, seconds: float
) -> dict[str, Any]:
    from gateway.sim.bootstrap_client import DtlsFleet
    from gateway.sim.lwm2m_client import _raise_open_file_limit

    os.nice(10)
    _raise_open_file_limit(len(endpoints) + 256)
    loop = asyncio.get_running_loop()
    fleet = DtlsFleet(("127.0.0.1", port), 0, credentials=_population_credentials(Path(keys)), endpoints=endpoints)
    await fleet.start()
    ready.set()
    await loop.run_in_executor(None, go.wait)
    t0, cpu0 = time.monotonic(), time.process_time()
    fleet.register_all()
    with contextlib.suppress(TimeoutError):
        await fleet.until(lambda: fleet.registered == len(endpoints), seconds)
    result = {
        "registered": fleet.registered,
        "established": fleet.established,
        "elapsed": time.monotonic() - t0,
        "done_at": time.time(),
        "cpu": time.process_time() - cpu0,
        **{k: fleet.stats[k] for k in ("dtls_failed", "register_failed", "timeouts", "retransmissions")},
    }
    await fleet.close()
    return result


def _fleet_process(port: int, keys: str, endpoints: list[str], ready: Any, go: Any, out: Any, seconds: float) -> None:
    out.put(asyncio.run(_fleet_main(port, keys, endpoints, ready, go, seconds)))


async def bench_register(keys: Path, count: int, processes: int, seconds: float, **server_kw: Any) -> dict[str, Any]:
    """3 x ``count`` endpoints (PSK, RPK, X.509) register at once through the LwM2M server."""
    from gateway.lwm2m.security import SecurityBinding
    from gateway.lwm2m.server import LwM2mServer, Registration, RegistrationListener, ServerConfig
    from gateway.store.clients import ClientEntry, ClientStore, Source, follow_dtls

    await make_population(keys, count)
    loop = asyncio.get_running_loop()
    population = _endpoints(count)
    pairs = json.loads((keys / "rpk-pairs.json").read_text())
    with tempfile.TemporaryDirectory(prefix="dtls-register-") as state:
        store = ClientStore.open(Path(state) / "clients.sqlite3")
        entries = []
        for endpoint, mode in population:
            if mode == "psk":
                identity, key = _psk_of(endpoint)
                entries.append(ClientEntry.psk(endpoint, identity, key, source=Source.CONFIG))
            elif mode == "rpk":
                public = bytes.fromhex(pairs[int(endpoint[4:])][0])
                entries.append(ClientEntry.rpk(endpoint, public, source=Source.CONFIG))
            else:
                entries.append(ClientEntry.x509(endpoint, source=Source.CONFIG))  # bound by CN
        store.sync_config(entries)
        store.set_server_credentials(
            rpk=RpkKeyPair.from_pem((keys / "server-rpk.pem").read_bytes()),
            x509=X509Credentials(
                (keys / "server.pem").read_bytes() + (keys / "ca.pem").read_bytes(), (keys / "server.key").read_bytes()
            ),
            trust=TrustStore(ca_file=str(keys / "ca.pem")),
        )
        done = loop.create_future()
        registered: list[float] = []

        class Listener(RegistrationListener):
            def on_registered(self, registration: Registration) -> None:
                registered.append(time.monotonic())
                if len(registered) == len(population) and not done.done():
                    done.set_result(None)

        binding = SecurityBinding(store)
        lwm2m = LwM2mServer(config=ServerConfig(), registration_check=binding, listener=Listener())
        await lwm2m.start(("127.0.0.1", 0))
        dtls = DtlsServer(store, **server_kw)
        unfollow = follow_dtls(store, dtls)

        async def factory(mman: Any) -> DtlsTransport:
            return await DtlsTransport.create_server_transport(
                mman, logging.getLogger("bench"), loop, bind=("127.0.0.1", 0), server=dtls,
                receive_buffer=ServerConfig().udp_receive_buffer,
            )  # fmt: skip

        _, transport = await lwm2m.add_transport(factory)
        children = _Children()
        go = children.mp.Event()
        names = [e for e, _ in population]
        for i in range(processes):
            part = names[i::processes]
            children.start(_fleet_process, lambda ready, out, part=part: (transport.port, str(keys), part, ready, go,
                                                                          out, seconds))  # fmt: skip
        await children.all_ready()
        gc.collect()
        rss0 = rss_bytes()
        drops0 = socket_drops(transport.port)
        stats0 = dict(dtls.stats)
        profiler = None
        if os.environ.get("DTLS_BENCH_REGISTER_PROFILE"):  # the server side of the storm only
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        cpu0, t0, wall0 = time.process_time(), time.monotonic(), time.time()
        go.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), seconds)
        all_at = time.monotonic() - t0 if done.done() else None
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.environ["DTLS_BENCH_REGISTER_PROFILE"])
        rss1 = rss_bytes()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        results = await children.results()
        await children.join()
        stats = {k: dtls.stats[k] - stats0.get(k, 0) for k in dtls.stats}
        drops = socket_drops(transport.port) - drops0
        half = sorted(registered)[len(registered) // 2] - t0 if registered else 0.0
        summary: dict[str, Any] = {
            "endpoints": len(population),
            "registered": len(registered),
            "all_registered_s": all_at,
            "half_registered_s": round(half, 2),
            "server_cpu_s": round(cpu, 2),
            "server_cpu_pct_of_a_core": round(100 * cpu / (all_at or seconds), 1),
            "server_rss_mb": round(rss1 / 2**20, 1),
            "server_rss_growth_mb": round((rss1 - rss0) / 2**20, 1),
            "server_peak_rss_mb": round(peak / 2**20, 1),
            "handshakes": stats.get("handshakes_completed", 0),
            "handshakes_failed": stats.get("handshakes_failed", 0),
            "hellos_over_half_open_limit": stats.get("handshakes_refused_limit", 0),
            "server_socket_drops": drops,
            "binding_refusals": sum(binding.refusals.values()),
            "clients_cpu_s": round(sum(r["cpu"] for r in results), 2),
            "clients": {k: sum(int(r.get(k, 0)) for r in results)
                        for k in ("dtls_failed", "register_failed", "timeouts", "retransmissions")},
            "last_client_done_s": round(max(r["done_at"] for r in results) - wall0, 2),
        }  # fmt: skip
        took = f"{all_at:.1f} s" if all_at is not None else f"NOT within {seconds:.0f} s"
        print(
            f"register {count} PSK + {count} RPK + {count} X.509 at once through the LwM2M layer:"
            f" {len(registered)}/{len(population)} registered, all in {took} (half in {half:.1f} s);"
            f" server CPU {cpu:.1f} s ({summary['server_cpu_pct_of_a_core']:.0f}% of a core),"
            f" RSS {summary['server_rss_mb']:.0f} MB (+{summary['server_rss_growth_mb']:.0f} MB, peak"
            f" {summary['server_peak_rss_mb']:.0f} MB); {summary['handshakes']} handshakes,"
            f" {summary['handshakes_failed']} failed, {summary['hellos_over_half_open_limit']} hellos over the"
            f" half-open limit, {drops} dropped at the server socket, {summary['binding_refusals']} refused by the"
            f" binding; clients: {summary['clients']}, {summary['clients_cpu_s']:.1f} s CPU in {processes} processes"
        )
        unfollow()
        await lwm2m.stop()
        store.close()
        return summary


# --- engine: the server engine alone, in process ------------------------------------------------------


def bench_engine(keys: Path, mode: str, count: int) -> float:
    """Server CPU per full handshake with the server and client engines wired together in this
    process (no sockets, no event loop): only the time inside the server's ``datagram_received`` is
    counted, so neither the load clients nor the kernel's loopback sends are in it. Steadier than
    ``rate`` on a shared machine; returns ms per handshake."""
    queue: collections.deque[tuple[bool, Addr, bytes]] = collections.deque()
    server = DtlsServer(server_credentials(keys), send=lambda a, d: queue.append((False, a, d)), max_handshakes=count)
    credentials = client_credentials(keys, mode)
    server_addr: Addr = ("10.0.0.1", 5684)
    spent, done, warmup = 0.0, 0, 50

    def pump() -> None:
        nonlocal spent
        while queue:
            to_server, peer, data = queue.popleft()
            if to_server:
                t = time.process_time()
                server.datagram_received(data, peer)
                spent += time.process_time() - t
            else:
                client.datagram_received(data, server_addr)

    for i in range(count + warmup):
        if i == warmup:
            spent, done0 = 0.0, done
        addr: Addr = (f"10.1.{i // 250}.{i % 250}", 40000 + i % 1000)
        client = DtlsClient(send=lambda _a, d, addr=addr: queue.append((True, addr, d)))
        session = client.connect(server_addr, **credentials)
        pump()
        if session.established:
            done += 1
            session.close()  # close_notify, answered by the server's
            pump()
        client.close()
    server.close()
    per = 1000 * spent / max(1, done - done0)
    print(f"engine {mode:5} {done - done0} handshakes, server CPU {per:.3f} ms/handshake (in process, no sockets)")
    return per


def _in_fresh_process(scenario: str, mode: str, args: argparse.Namespace) -> Any:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run(
            [sys.executable, __file__, scenario, "--mode", mode, "--count", str(args.count),
             "--processes", str(args.processes), "--inflight", str(args.inflight), "--json", f.name],
            check=True,
        )  # fmt: skip
        return json.loads(Path(f.name).read_text())[f"{scenario}_{mode}"]


async def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["rate", "sessions", "wrongkey", "burst", "register", "engine", "all"])
    ap.add_argument("--mode", choices=MODES, default=None, help="default: all three")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--processes", type=int, default=2, help="load processes")
    ap.add_argument("--slots", type=int, default=64, help="handshakes in flight, over all load processes")
    ap.add_argument("--count", type=int, default=2000, help="sessions held (sessions) / clients per mode (burst)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keys", type=Path, help="register: keep keys and certificates here between runs")
    ap.add_argument("--timeout", type=float, default=60.0, help="register: give up after this many seconds")
    ap.add_argument(
        "--inflight", type=int, default=0, help="sessions: handshakes in flight per load process (0: all at once)"
    )
    ap.add_argument(
        "--no-x509-cache", action="store_true", help="verify every client chain (first contact of every device)"
    )
    args = ap.parse_args(argv)
    modes = [args.mode] if args.mode else list(MODES)
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.scenario == "register":
        with contextlib.ExitStack() as stack:
            keys = args.keys or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dtls-bench-")))
            keys.mkdir(parents=True, exist_ok=True)
            out["register"] = await bench_register(keys, args.count, max(1, args.processes), args.timeout)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="dtls-bench-") as tmp:
        keys = Path(tmp)
        make_keys(keys)
        if args.scenario == "engine":
            for mode in modes:
                out[f"engine_{mode}"] = {"server_cpu_ms": bench_engine(keys, mode, args.count)}
        if args.scenario in ("rate", "all"):
            for mode in modes:
                kw = {"x509_cache_size": 0} if args.no_x509_cache else {}
                r = await bench_rate(keys, mode, args.seconds, args.processes, args.slots, **kw)
                out[f"rate_{mode}"] = {"per_s": r.rate, "server_cpu_ms": r.cpu_per_handshake_ms}
        if args.scenario in ("wrongkey", "all"):
            r = await bench_wrongkey(keys, args.seconds, args.processes, args.slots)
            out["wrongkey"] = {"per_s": r.failed / r.seconds, "server_cpu_ms": 1000 * r.server_cpu / max(1, r.failed)}
        if args.scenario in ("sessions", "all"):
            for mode in modes:
                if len(modes) > 1:  # a fresh process per mode: freed memory would be reused otherwise
                    out[f"sessions_{mode}"] = _in_fresh_process("sessions", mode, args)
                    continue
                r = await bench_sessions(keys, mode, args.count, max(args.processes, args.count // 1000), args.inflight)
                out[f"sessions_{mode}"] = {
                    "held": r.sessions_held,
                    "answered": r.answered,
                    "heap_bytes_per_session": r.heap_delta / max(1, r.sessions_held),
                    "rss_bytes_per_session": r.rss_delta / max(1, r.sessions_held),
                }
        if args.scenario in ("burst", "all"):
            out["burst"] = await bench_burst(keys, args.count, max(1, args.processes // 2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    if os.environ.get("DTLS_BENCH_PROFILE"):  # profile the server process: DTLS_BENCH_PROFILE=out.prof
        import cProfile

        cProfile.run("asyncio.run(main())", os.environ["DTLS_BENCH_PROFILE"])
    else:
        asyncio.run(main())
