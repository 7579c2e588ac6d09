"""Child process of the outbox crash test (tests/store/test_outbox.py).

Usage: python _outbox_crash_child.py QUEUE_FILE RUN

Appends numbered TELEMETRY records (``{"seq":N}``, N = RUN * 10_000_000 + i) forever. After each
batch's future resolves successfully (the batch is committed and fsynced), prints the highest seq
that batch carried, one per line, flushed. Prints ``ready`` once the outbox is open. The test kills
it with SIGKILL at random moments.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from gateway.core.clock import Clock
from gateway.core.records import RecordKind
from gateway.store.outbox import Outbox

SEQ_PER_RUN = 10_000_000


async def main(path: Path, run: int) -> None:
    ob = await Outbox.open(path, clock=Clock(sync_marker=None, trust="always"), commit_interval=0.002)
    out = sys.stdout
    last_seq: dict[asyncio.Future[None], int] = {}
    in_flight: list[asyncio.Future[None]] = []

    def report(fut: asyncio.Future[None]) -> None:
        seq = last_seq.pop(fut)
        if not fut.cancelled() and fut.exception() is None:
            out.write(f"{seq}\n")
            out.flush()

    rng = random.Random(run)
    seq = run * SEQ_PER_RUN
    print("ready", flush=True)
    while True:
        for _ in range(rng.randint(1, 400)):
            fut = ob.append(RecordKind.TELEMETRY, "dev", f'{{"seq":{seq}}}')
            if fut not in last_seq:
                fut.add_done_callback(report)
                in_flight.append(fut)
            last_seq[fut] = seq
            seq += 1
        while len(in_flight) > 4:
            await in_flight.pop(0)
        await asyncio.sleep(0)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
