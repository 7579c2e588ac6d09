"""The outbox's committed tail in memory: reads served from it equal what the database holds.

Every test compares :meth:`Outbox.read` (tail when the reader keeps up) with a read of the same
range from the database file itself, through a second, independent SQLite connection.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_outbox import FakeTime, marker_clock, synced_clock

from gateway.core.records import Record, RecordKind
from gateway.store.outbox import Outbox, OutboxLimits

BIG = 1 << 30


def committed_after(path: Path, after: int, acked: set[int]) -> list[tuple[int, str]]:
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT id, body FROM outbox WHERE id > ? ORDER BY id", (after,)).fetchall()
    finally:
        con.close()
    return [(rid, body) for rid, body in rows if rid not in acked]


def ids_bodies(records: list[Record]) -> list[tuple[int, str]]:
    return [(r.id, r.body) for r in records]


async def test_a_reader_that_keeps_up_reads_from_memory(tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.sqlite3", clock=synced_clock(FakeTime()), commit_interval=0.0)
    try:
        cursor = 0
        for round_ in range(20):
            for i in range(50):
                ob.append(RecordKind.TELEMETRY, f"d{i % 3}", f'{{"r":{round_},"i":{i}}}', 1_700_000_000_000 + i)
            await ob.flush()
            await ob.wait_readable(cursor)
            got = await ob.read(cursor, 1000, BIG)
            assert ids_bodies(got) == committed_after(ob.path, cursor, set())
            cursor = got[-1].id
            ob.ack(r.id for r in got)
        assert ob.tail_reads >= 20 and ob.db_reads == 0
    finally:
        await ob.close()


async def test_a_lagging_reader_reads_from_the_database(tmp_path: Path) -> None:
    ob = await Outbox.open(
        tmp_path / "o.sqlite3", clock=synced_clock(FakeTime()), commit_interval=0.0, tail_bytes=2000
    )
    try:
        for i in range(500):
            ob.append(RecordKind.TELEMETRY, "dev", f'{{"i":{i}}}', 1_700_000_000_000 + i)
        await ob.flush()
        got = await ob.read(0, 1000, BIG)  # the oldest are no longer in the 2000-byte tail
        assert len(got) == 500 and ob.db_reads == 1
        newest = await ob.read(490, 1000, BIG)
        assert ids_bodies(newest) == committed_after(ob.path, 490, set()) and ob.tail_reads == 1
    finally:
        await ob.close()


async def test_rewind_after_acks_does_not_return_deleted_records(tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.sqlite3", clock=synced_clock(FakeTime()), commit_interval=0.0)
    try:
        for i in range(10):
            ob.append(RecordKind.TELEMETRY, "dev", f'{{"i":{i}}}', 1_700_000_000_000 + i)
        await ob.flush()
        first = await ob.read(0, 100, BIG)
        ob.ack([first[2].id, first[5].id])  # PUBACKs out of order, then the connection drops
        rewound = await ob.read(0, 100, BIG)  # from memory: the acked ones are skipped
        await ob.flush()  # the acks are now deleted in the database too
        assert ids_bodies(rewound) == committed_after(ob.path, 0, set())
        assert len(rewound) == 8 and ob.db_reads == 0
    finally:
        await ob.close()


async def test_unstamped_records_are_read_from_the_database(tmp_path: Path) -> None:
    ft = FakeTime()
    marker = tmp_path / "synced"
    ob = await Outbox.open(
        tmp_path / "o.sqlite3", clock=marker_clock(ft, marker), commit_interval=0.0,
        limits=OutboxLimits(unsynced="send_without_ts"),
    )
    try:
        ob.append(RecordKind.TELEMETRY, "dev", '{"before":1}')  # clock not synced: no timestamp
        await ob.flush()
        ob.append(RecordKind.TELEMETRY, "dev", '{"after":1}', 1_700_000_000_000)
        await ob.flush()
        got = await ob.read(0, 100, BIG)
        assert [r.body for r in got] == ['{"before":1}', '{"after":1}'] and got[0].ts_ms is None
        assert ob.db_reads == 1  # the unstamped record is not in the tail
    finally:
        await ob.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), tail=st.sampled_from([0, 300, 3000, 1 << 20]))
def test_reads_equal_the_database_whatever_the_order_of_appends_acks_and_rewinds(
    tmp_path_factory: pytest.TempPathFactory, seed: int, tail: int
) -> None:
    rng = random.Random(seed)
    path = tmp_path_factory.mktemp("tail") / "o.sqlite3"

    async def run() -> None:
        ob = await Outbox.open(path, clock=synced_clock(FakeTime()), commit_interval=0.0, tail_bytes=tail)
        acked: set[int] = set()
        cursor = 0
        try:
            for _ in range(40):
                op = rng.random()
                if op < 0.5:
                    for _ in range(rng.randint(1, 30)):
                        body = '{"v":' + "9" * rng.randint(1, 40) + "}"
                        ob.append(RecordKind.TELEMETRY, "dev", body, 1_700_000_000_000)
                    await ob.flush()
                elif op < 0.8:
                    got = await ob.read(cursor, rng.randint(1, 50), rng.randint(1, 2000))
                    want = committed_after(path, cursor, acked)
                    assert ids_bodies(got) == want[: len(got)]
                    assert got or not want
                    if got:
                        cursor = got[-1].id
                        chosen = [r.id for r in got if rng.random() < 0.7]
                        ob.ack(chosen)
                        acked.update(chosen)
                else:  # the session dropped: back to the lowest unacked record
                    await ob.flush()
                    acked.clear()  # deleted in the database now
                    cursor = max(0, rng.randint(0, cursor))
            await ob.flush()
            acked.clear()
            everything = await ob.read(0, 10_000, BIG)
            assert ids_bodies(everything) == committed_after(path, 0, set())
        finally:
            await ob.close()

    asyncio.run(run())
