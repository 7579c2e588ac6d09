"""Outbox throughput and cost: appends, reads and acks against a real SQLite file.

Phases (each on a fresh queue file):
  append    append N records as fast as the loop allows, until all are durable
  drain     read + ack the N records appended above, until the queue is empty and committed
  pipeline  a producer and a consumer (wait_readable/read/ack, as the uplink does) at once
  paced     the pipeline with the producer held to --rate records/s (CPU cost at a given load)

Prints records/s, CPU ms per 10,000 records (process CPU: the loop and the outbox's database
thread together) and RSS. Example:

    python benchmarks/outbox_bench.py --records 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.core.clock import Clock
from gateway.core.records import RecordKind
from gateway.store.outbox import Outbox, OutboxLimits


@dataclass
class Result:
    name: str
    records: int
    wall_s: float
    cpu_s: float

    def line(self) -> str:
        rate = self.records / self.wall_s if self.wall_s else float("inf")
        cpu_per_10k = self.cpu_s * 1000 / (self.records / 10_000) if self.records else 0.0
        return (
            f"{self.name:<9} {self.records:>9} records  {self.wall_s:7.2f} s  {rate:>10,.0f} records/s  "
            f"CPU {cpu_per_10k:6.1f} ms/10k records  ({self.cpu_s / self.wall_s * 100:5.1f} % of one core)  "
            f"RSS {rss_mib():6.1f} MiB"
        )


def rss_mib() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bodies(n_devices: int, body_size: int) -> tuple[list[str], list[str]]:
    devices = [f"sensor-{i:05d}" for i in range(n_devices)]
    pad = max(0, body_size - 40)
    template = '{"temperature":21.5,"humidity":40.1' + (',"pad":"' + "x" * pad + '"' if pad else "") + "}"
    return devices, [template]


async def open_outbox(path: Path, args: argparse.Namespace) -> Outbox:
    clock = Clock(trust="always" if not args.unsynced else "marker", sync_marker=None)
    limits = OutboxLimits(unsynced="send_without_ts")
    return await Outbox.open(
        path,
        limits=limits,
        clock=clock,
        commit_interval=args.commit_interval,
        commit_records=args.commit_records,
    )


async def produce(ob: Outbox, n: int, args: argparse.Namespace, rate: float | None = None) -> None:
    devices, (body,) = bodies(args.devices, args.body_size)
    nd = len(devices)
    kind = RecordKind.TELEMETRY
    append = ob.append
    chunk = args.chunk
    pending: list[asyncio.Future[None]] = []
    start = time.perf_counter()
    i = 0
    while i < n:
        m = min(chunk, n - i)
        fut = None
        for j in range(i, i + m):
            fut = append(kind, devices[j % nd], body)
        i += m
        if fut is not None and (not pending or pending[-1] is not fut):
            pending.append(fut)
        # Bound the memory of a producer that outruns the disk: wait for old batches.
        while len(pending) > args.max_batches_in_flight:
            await pending.pop(0)
        if rate is not None:
            ahead = i / rate - (time.perf_counter() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        else:
            await asyncio.sleep(0)
    for f in pending:
        await f


async def consume(ob: Outbox, n: int, args: argparse.Namespace) -> None:
    after = 0
    got = 0
    while got < n:
        await ob.wait_readable(after)
        recs = await ob.read(after, args.read_records, args.read_bytes)
        if recs:
            after = recs[-1].id
            got += len(recs)
            ob.ack([r.id for r in recs])
    await ob.flush()


async def phase(name: str, n: int, coro_factory: object) -> Result:
    t0, c0 = time.perf_counter(), time.process_time()
    await coro_factory  # type: ignore[misc]
    return Result(name, n, time.perf_counter() - t0, time.process_time() - c0)


async def run(args: argparse.Namespace) -> None:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="outbox-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    n = args.records
    print(
        f"outbox bench: {n} records, body ~{args.body_size} B, {args.devices} devices, "
        f"commit_interval={args.commit_interval}s, read {args.read_records} records/{args.read_bytes} B, "
        f"dir {base}, {os.cpu_count()} CPUs"
    )
    results: list[Result] = []
    try:
        if "append" in args.phases or "drain" in args.phases:
            path = base / "append.db"
            ob = await open_outbox(path, args)
            results.append(await phase("append", n, produce(ob, n, args)))
            print(results[-1].line(), flush=True)
            if "drain" in args.phases:
                results.append(await phase("drain", n, consume(ob, n, args)))
                print(results[-1].line(), flush=True)
            await ob.close()
        if "pipeline" in args.phases:
            path = base / "pipeline.db"
            ob = await open_outbox(path, args)
            both = asyncio.gather(produce(ob, n, args), consume(ob, n, args))
            results.append(await phase("pipeline", n, both))
            print(results[-1].line(), flush=True)
            st = ob.stats()
            await ob.close()
            print(f"          commits={st.commits} records_left={st.records}")
        if "paced" in args.phases:
            path = base / "paced.db"
            ob = await open_outbox(path, args)
            m = min(n, int(args.rate * args.paced_seconds))
            both = asyncio.gather(produce(ob, m, args, rate=args.rate), consume(ob, m, args))
            results.append(await phase("paced", m, both))
            print(results[-1].line() + f"  [target {args.rate:,.0f}/s]", flush=True)
            st = ob.stats()
            await ob.close()
            print(f"          commits={st.commits} ({st.commits / results[-1].wall_s:.1f}/s)")
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000, help="records per phase")
    p.add_argument("--body-size", type=int, default=60, help="approximate body length in characters")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=1000, help="appends between yields to the loop")
    p.add_argument("--max-batches-in-flight", type=int, default=8)
    p.add_argument("--commit-interval", type=float, default=0.05)
    p.add_argument("--commit-records", type=int, default=20000)
    p.add_argument("--read-records", type=int, default=2000)
    p.add_argument("--read-bytes", type=int, default=256 * 1024)
    p.add_argument("--rate", type=float, default=50_000, help="producer rate of the paced phase")
    p.add_argument("--paced-seconds", type=float, default=10.0)
    p.add_argument("--unsynced", action="store_true", help="clock not synchronised (records without ts)")
    p.add_argument(
        "--phases",
        default="append,drain,pipeline,paced",
        type=lambda s: set(s.split(",")),
        help="comma-separated: append,drain,pipeline,paced",
    )
    p.add_argument("--dir", help="directory for the queue files (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
