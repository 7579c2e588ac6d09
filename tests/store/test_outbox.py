"""The durable outbox against real SQLite files: durability, replay, acks, group commit, bounds,
timestamps and the clock, disk full (a real tmpfs and fault injection), read-only and corrupt files,
a property test and a kill -9 test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.clock import Clock
from gateway.core.records import Record, RecordKind
from gateway.store.outbox import SCHEMA_VERSION, Outbox, OutboxError, OutboxLimits

T = RecordKind.TELEMETRY
A = RecordKind.ATTRIBUTES
BIG = 10**12


class FakeTime:
    """Injectable wall and monotonic clocks (seconds)."""

    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 1_000.0) -> None:
        self.w = wall
        self.m = mono

    def wall(self) -> float:
        return self.w

    def mono(self) -> float:
        return self.m

    def advance(self, s: float) -> None:
        self.w += s
        self.m += s


def synced_clock(ft: FakeTime, boot: str = "boot-1") -> Clock:
    return Clock(sync_marker=None, trust="always", wall=ft.wall, mono=ft.mono, boot_id=boot)


def marker_clock(ft: FakeTime, marker: Path, boot: str = "boot-1") -> Clock:
    return Clock(sync_marker=marker, trust="marker", wall=ft.wall, mono=ft.mono, boot_id=boot, cache_s=0)


async def read_all(ob: Outbox, after: int = 0) -> list[Record]:
    return await ob.read(after, BIG, BIG)


def raw_rows(path: Path) -> list[tuple[Any, ...]]:
    """The rows as a second, independent connection sees them (committed data only)."""
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT id, kind, device, ts, body FROM outbox ORDER BY id").fetchall()
    finally:
        con.close()


def integrity(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


@pytest.fixture
async def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def ob(tmp_path: Path, ft: FakeTime) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "state" / "outbox.db", clock=synced_clock(ft), commit_interval=0.001)
    yield box
    await box.close()


# ------------------------------------------------------------------------------------ durability


async def test_future_resolves_only_once_the_batch_is_durable(tmp_path: Path, ft: FakeTime) -> None:
    path = tmp_path / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.05)
    try:
        futs = [box.append(T, f"dev{i}", json.dumps({"i": i})) for i in range(3)]
        assert futs[0] is futs[1] is futs[2], "one future per batch"
        assert not futs[0].done()
        assert raw_rows(path) == [], "nothing committed before the group commit"
        await futs[0]
        rows = raw_rows(path)  # a second connection, while the outbox is still open
        assert [r[4] for r in rows] == ['{"i": 0}', '{"i": 1}', '{"i": 2}']
        assert [r[3] for r in rows] == [int(ft.w * 1000)] * 3
        await box.put(A, "devA", '{"k":1}')
        assert raw_rows(path)[-1][1:] == (int(A), "devA", int(ft.w * 1000), '{"k":1}')
    finally:
        await box.close()


async def test_flush_and_close_make_pending_appends_durable(tmp_path: Path, ft: FakeTime) -> None:
    path = tmp_path / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=10.0)
    box.append(T, "d", "{}")
    await box.flush()
    assert len(raw_rows(path)) == 1
    fut = box.append(T, "d", '{"last":1}')
    await box.close()
    assert fut.done() and fut.exception() is None
    assert len(raw_rows(path)) == 2
    with pytest.raises(OutboxError, match="closed"):
        box.append(T, "d", "{}")
    with pytest.raises(OutboxError, match="closed"):
        await box.read(0, 10, 1000)
    box.ack([1])  # ignored after close: the record is delivered again after a restart
    await box.close()  # idempotent


async def test_restart_replays_unacked_records_in_id_order(tmp_path: Path, ft: FakeTime) -> None:
    path = tmp_path / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001)
    for i in range(60):
        box.append(T if i % 2 else A, f"d{i % 3}", json.dumps({"n": i}))
    await box.flush()
    recs = await read_all(box)
    assert [json.loads(r.body)["n"] for r in recs] == list(range(60))
    ids = [r.id for r in recs]
    assert ids == sorted(set(ids))
    box.ack(ids[::3])
    await box.close()

    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001)
    again = await read_all(box)
    kept = [r for i, r in enumerate(recs) if i % 3]
    assert [(r.id, r.kind, r.device, r.ts_ms, r.body) for r in again] == [
        (r.id, r.kind, r.device, r.ts_ms, r.body) for r in kept
    ]
    assert box.stats().records == len(kept)
    assert box.stats().bytes == sum(r.size for r in kept)
    # ids keep increasing, even after the queue has been emptied and reopened
    await box.put(T, "d", '{"n":60}')
    newest = (await read_all(box))[-1]
    assert newest.id > ids[-1]
    box.ack(r.id for r in await read_all(box))
    await box.close()
    assert raw_rows(path) == []
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001)
    try:
        await box.put(T, "d", '{"n":61}')
        (rec,) = await read_all(box)
        assert rec.id == newest.id + 1
    finally:
        await box.close()


async def test_ack_deletes_and_updates_stats(ob: Outbox) -> None:
    for i in range(10):
        ob.append(T, "dev", json.dumps({"i": i}))
    await ob.flush()
    recs = await read_all(ob)
    st0 = ob.stats()
    assert (st0.records, st0.bytes, st0.appended) == (10, sum(r.size for r in recs), 10)
    ob.ack([recs[0].id, recs[1].id, recs[5].id, 999_999])  # unknown ids are harmless
    await ob.flush()
    left = await read_all(ob)
    assert [r.id for r in left] == [r.id for i, r in enumerate(recs) if i not in (0, 1, 5)]
    st1 = ob.stats()
    assert (st1.records, st1.acked) == (7, 3)
    assert st1.bytes == sum(r.size for r in left)
    assert len(raw_rows(ob.path)) == 7
    ob.ack([recs[0].id])  # acked twice: counted once
    await ob.flush()
    assert ob.stats().acked == 3


async def test_group_commit_shares_one_future_per_batch(tmp_path: Path, ft: FakeTime) -> None:
    path = tmp_path / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=5.0, commit_records=100)
    try:
        commits0 = box.stats().commits
        futs = [box.append(T, "d", json.dumps({"i": i})) for i in range(1000)]
        distinct = list(dict.fromkeys(futs))
        assert len(distinct) == 10, "sealed every 100 records"
        assert all(futs[i] is distinct[i // 100] for i in range(1000))
        await asyncio.gather(*distinct)
        assert len(raw_rows(path)) == 1000
        # at most one commit runs at a time: batches sealed meanwhile share the next transaction
        assert 1 <= box.stats().commits - commits0 <= 10
        # by time: fewer records than commit_records ride in one commit
        box2 = await Outbox.open(tmp_path / "q2.db", clock=synced_clock(ft), commit_interval=0.01)
        futs2 = {box2.append(T, "d", "{}") for _ in range(500)}
        assert len(futs2) == 1
        await futs2.pop()
        assert box2.stats().commits == 1
        await box2.close()
    finally:
        await box.close()


async def test_commit_interval_zero_commits_at_the_next_loop_iteration(tmp_path: Path, ft: FakeTime) -> None:
    box = await Outbox.open(tmp_path / "q.db", clock=synced_clock(ft), commit_interval=0)
    try:
        f1 = box.append(T, "d", "{}")
        f2 = box.append(T, "d", "{}")
        assert f1 is f2
        await f1
        assert len(raw_rows(box.path)) == 2
        with pytest.raises(ValueError):
            await Outbox.open(tmp_path / "x.db", clock=synced_clock(ft), commit_records=0)
    finally:
        await box.close()


async def test_read_limits(ob: Outbox) -> None:
    for i in range(10):
        ob.append(T, "d", "x" * 67 + str(i))  # size 101 each
    await ob.flush()
    recs = await read_all(ob)
    assert all(r.size == 101 for r in recs)
    assert [r.id for r in await ob.read(0, 3, BIG)] == [r.id for r in recs[:3]]
    assert [r.id for r in await ob.read(0, BIG, 350)] == [r.id for r in recs[:3]]
    assert [r.id for r in await ob.read(0, BIG, 1)] == [recs[0].id], "always at least one"
    assert [r.id for r in await ob.read(recs[4].id, 2, BIG)] == [recs[5].id, recs[6].id]
    assert await ob.read(recs[-1].id, 10, BIG) == []
    assert await ob.read(0, 0, BIG) == []


async def test_wait_readable(ob: Outbox) -> None:
    waiter = asyncio.create_task(ob.wait_readable(0))
    done, _ = await asyncio.wait({waiter}, timeout=0.1)
    assert not done, "nothing to read yet"
    ob.append(T, "d", "{}")
    await asyncio.wait_for(waiter, 5)
    (rec,) = await read_all(ob)
    await asyncio.wait_for(ob.wait_readable(0), 5)  # returns at once
    waiter = asyncio.create_task(ob.wait_readable(rec.id))
    done, _ = await asyncio.wait({waiter}, timeout=0.1)
    assert not done, "nothing after the last id"
    ob.append(T, "d", "{}")
    await asyncio.wait_for(waiter, 5)
    # a cancelled wait (the uplink cancels it when the connection drops) leaves nothing behind
    waiter = asyncio.create_task(ob.wait_readable(10**9))
    done, _ = await asyncio.wait({waiter}, timeout=0.05)
    assert not done
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await ob.put(T, "d", "{}")
    assert len(await read_all(ob)) == 3
    # closing wakes the waiters with an error
    last = (await read_all(ob))[-1].id
    waiter = asyncio.create_task(ob.wait_readable(last))
    done, _ = await asyncio.wait({waiter}, timeout=0.05)
    assert not done
    await ob.close()
    with pytest.raises(OutboxError, match="closed"):
        await asyncio.wait_for(waiter, 5)


# ---------------------------------------------------------------------------------------- bounds


def body_of_size(size: int, device: str, tag: int) -> str:
    """A body whose Record.size is exactly ``size``."""
    head = f'{{"t":{tag},"p":"'
    return head + "x" * (size - len(device) - 32 - len(head) - 2) + '"}'


async def test_size_bound_drops_oldest_telemetry_first(
    tmp_path: Path, ft: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.store.outbox")
    limits = OutboxLimits(max_bytes=20_000)
    box = await Outbox.open(tmp_path / "q.db", limits=limits, clock=synced_clock(ft), commit_interval=0.001)
    try:
        for i in range(50):
            box.append(A, "d", body_of_size(100, "d", i))
        for i in range(50, 200):
            box.append(T, "d", body_of_size(100, "d", i))
        await box.flush()
        assert box.stats().bytes == 20_000
        assert box.stats().dropped == {}, "at the bound is not over it"
        for i in range(200, 210):
            box.append(T, "d", body_of_size(100, "d", i))
        await box.flush()
        st = box.stats()
        # 21,000 bytes > 20,000: down to 98 % (19,600): the 14 oldest telemetry records go
        assert st.dropped == {"size": 14}
        assert (st.records, st.bytes) == (196, 19_600)
        tags = [json.loads(r.body)["t"] for r in await read_all(box)]
        assert tags == list(range(50)) + list(range(64, 210))
        drops = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(drops) == 1 and "dropped 14 records" in drops[0].getMessage()
    finally:
        await box.close()

    # nothing droppable left: the oldest of any kind go
    limits = OutboxLimits(max_bytes=5_000)
    box = await Outbox.open(tmp_path / "q2.db", limits=limits, clock=synced_clock(ft), commit_interval=0.001)
    try:
        for i in range(60):
            box.append(A, "d", body_of_size(100, "d", i))
        await box.flush()
        assert box.stats().dropped == {"size": 11}
        tags = [json.loads(r.body)["t"] for r in await read_all(box)]
        assert tags == list(range(11, 60))
    finally:
        await box.close()


async def test_lowered_size_bound_applies_at_open(tmp_path: Path, ft: FakeTime) -> None:
    path = tmp_path / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001)
    for i in range(100):
        box.append(T, "d", body_of_size(100, "d", i))
    await box.close()
    box = await Outbox.open(path, limits=OutboxLimits(max_bytes=5_000), clock=synced_clock(ft))
    try:
        await box.flush()
        assert box.stats().bytes <= 5_000
        assert box.stats().dropped["size"] == 51
    finally:
        await box.close()


async def test_age_bound(tmp_path: Path, ft: FakeTime) -> None:
    limits = OutboxLimits(max_age_s=60)
    box = await Outbox.open(tmp_path / "q.db", limits=limits, clock=synced_clock(ft), commit_interval=0.001)
    try:
        now = int(ft.w * 1000)
        box.append(T, "d", '{"age":120}', ts_ms=now - 120_000)
        box.append(A, "d", '{"age":30}', ts_ms=now - 30_000)
        box.append(T, "d", '{"age":0}')
        await box.flush()
        assert [r.body for r in await read_all(box)] == ['{"age":30}', '{"age":0}']
        assert box.stats().dropped == {"age": 1}
        assert box.stats().oldest_ts_ms == now - 30_000
        ft.advance(45)  # the 30 s old record is now 75 s old; no new appends needed
        await box.flush()
        assert [r.body for r in await read_all(box)] == ['{"age":0}']
        assert box.stats().dropped == {"age": 2}
        assert box.stats().oldest_ts_ms == now
    finally:
        await box.close()


def segments(path: Path) -> list[tuple[int, int, int, int | None]]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT first_id, last_id, count, min_ts FROM seg ORDER BY last_id").fetchall()
    finally:
        con.close()


async def test_age_bound_finds_old_records_anywhere_and_keeps_segments_small(tmp_path: Path, ft: FakeTime) -> None:
    limits = OutboxLimits(max_age_s=3600)
    box = await Outbox.open(tmp_path / "q.db", limits=limits, clock=synced_clock(ft), commit_interval=0.001)
    try:
        now = int(ft.w * 1000)
        for i in range(300):
            box.append(T, "d", json.dumps({"i": i}))
        box.append(T, "d", '{"late":1}', ts_ms=now - 2 * 3600_000)  # buffered on the device: too old
        box.append(A, "d", '{"late":2}', ts_ms=now - 1800_000)
        for i in range(300, 600):
            box.append(T, "d", json.dumps({"i": i}))
        await box.flush()
        bodies = [r.body for r in await read_all(box)]
        assert '{"late":1}' not in bodies and '{"late":2}' in bodies
        assert len(bodies) == 601
        assert box.stats().dropped == {"age": 1}
        assert box.stats().oldest_ts_ms == now - 1800_000
        # one record per commit: commit groups are merged into segments of >= 256 records
        for i in range(600):
            await box.put(T, "d", json.dumps({"j": i}))
        assert len(segments(box.path)) <= 4
        # delivering the head forgets its segments; the oldest ts follows
        recs = await read_all(box)
        box.ack(r.id for r in recs[:-10])
        await box.flush()
        assert box.stats().records == 10
        assert len(segments(box.path)) == 1
        ft.advance(4000)  # everything is now older than an hour
        await box.flush()
        assert await read_all(box) == []
        assert box.stats().records == 0
        assert box.stats().oldest_ts_ms is None
        assert segments(box.path) == []
    finally:
        await box.close()


async def test_restamped_records_are_aged_by_when_they_were_taken(tmp_path: Path) -> None:
    ft = FakeTime(wall=86_400.0, mono=100.0)
    marker = tmp_path / "synchronized"
    limits = OutboxLimits(max_age_s=60, unsynced="hold")
    box = await Outbox.open(tmp_path / "q.db", limits=limits, clock=marker_clock(ft, marker), commit_interval=0.001)
    try:
        box.append(T, "d", '{"taken":"-100s"}')
        ft.advance(70)
        box.append(T, "d", '{"taken":"-30s"}')
        await box.flush()
        ft.advance(30)
        ft.w = 1_700_000_000.0
        marker.touch()
        await box.flush()  # re-stamps, then the age bound sees the first one is 100 s old
        recs = await read_all(box)
        assert [(r.body, r.ts_ms) for r in recs] == [('{"taken":"-30s"}', 1_700_000_000_000 - 30_000)]
        assert box.stats().dropped == {"age": 1}
        assert box.stats().restamped == 2
        assert box.stats().oldest_ts_ms == 1_700_000_000_000 - 30_000
    finally:
        await box.close()


# ------------------------------------------------------------------------------- clock and stamps


async def test_hold_stops_reads_at_the_first_held_record(tmp_path: Path, ft: FakeTime) -> None:
    marker = tmp_path / "synchronized"  # absent: not synchronised
    limits = OutboxLimits(unsynced="hold", hold_max_s=10)
    box = await Outbox.open(tmp_path / "q.db", limits=limits, clock=marker_clock(ft, marker))
    try:
        box.append(T, "d1", '{"u":1}')
        ft.advance(4)
        box.append(T, "d1", '{"u":2}')
        box.append(T, "d2", '{"explicit":1}', ts_ms=1_234)  # stamped, but behind held records
        await box.flush()
        assert [r[3] for r in raw_rows(box.path)] == [None, None, 1_234]
        assert await read_all(box) == []
        ft.advance(5.9)
        assert await read_all(box) == []
        ft.advance(0.1)  # the first record is 10 s old: released without ts; the second still held
        assert [(r.body, r.ts_ms) for r in await read_all(box)] == [('{"u":1}', None)]
        waiter = asyncio.create_task(box.wait_readable((await read_all(box))[0].id))
        done, _ = await asyncio.wait({waiter}, timeout=0.05)
        assert not done
        ft.advance(4)
        await asyncio.wait_for(waiter, 5)  # re-checks at least once a second
        assert [(r.body, r.ts_ms) for r in await read_all(box)] == [
            ('{"u":1}', None),
            ('{"u":2}', None),
            ('{"explicit":1}', 1_234),
        ]
    finally:
        await box.close()


async def test_send_without_ts_does_not_hold(tmp_path: Path, ft: FakeTime) -> None:
    limits = OutboxLimits(unsynced="send_without_ts")
    box = await Outbox.open(tmp_path / "q.db", limits=limits, clock=marker_clock(ft, tmp_path / "m"))
    try:
        box.append(T, "d", '{"u":1}')
        box.append(T, "d", '{"u":2}', ts_ms=5)
        await box.flush()
        await asyncio.wait_for(box.wait_readable(0), 5)
        assert [(r.body, r.ts_ms) for r in await read_all(box)] == [('{"u":1}', None), ('{"u":2}', 5)]
    finally:
        await box.close()


async def test_restamp_after_sync_gives_the_time_each_record_was_taken(tmp_path: Path) -> None:
    ft = FakeTime(wall=86_400.0, mono=100.0)  # no RTC: the wall clock starts in 1970
    marker = tmp_path / "synchronized"
    box = await Outbox.open(tmp_path / "q.db", clock=marker_clock(ft, marker), commit_interval=0.001)
    try:
        box.append(T, "d", '{"r":1}')
        ft.advance(2)
        box.append(T, "d", '{"r":2}')
        ft.advance(3)
        box.append(A, "d", '{"r":3}')
        await box.flush()
        assert [r[3] for r in raw_rows(box.path)] == [None, None, None]
        waiter = asyncio.create_task(box.wait_readable(0))
        assert await read_all(box) == [], "held until synchronised"
        ft.advance(1)
        ft.w = 1_700_000_000.0  # NTP steps the clock; timesyncd touches the marker
        marker.touch()
        box.append(T, "d", '{"r":4}')
        await box.flush()
        await asyncio.wait_for(waiter, 5)
        recs = await read_all(box)
        sync = 1_700_000_000_000
        assert [(r.body, r.ts_ms) for r in recs] == [
            ('{"r":1}', sync - 6_000),
            ('{"r":2}', sync - 4_000),
            ('{"r":3}', sync - 1_000),
            ('{"r":4}', sync),
        ]
        assert box.stats().restamped == 3
        assert [r[3] for r in raw_rows(box.path)] == [r.ts_ms for r in recs]
    finally:
        await box.close()


async def test_restamp_across_restart_same_boot_only(tmp_path: Path) -> None:
    ft = FakeTime(wall=86_400.0, mono=100.0)
    marker = tmp_path / "synchronized"
    path = tmp_path / "q.db"
    limits = OutboxLimits(unsynced="hold", hold_max_s=60)
    box = await Outbox.open(path, limits=limits, clock=marker_clock(ft, marker, boot="A"))
    box.append(T, "d", '{"boot":"A","n":1}')
    await box.close()
    # the service restarts within the same boot, then the clock is synchronised
    ft.advance(10)
    box = await Outbox.open(path, limits=limits, clock=marker_clock(ft, marker, boot="A"))
    box.append(T, "d", '{"boot":"A","n":2}')
    await box.flush()
    ft.w = 1_700_000_000.0
    marker.touch()
    recs = await read_all(box)
    assert [(r.body, r.ts_ms) for r in recs] == [
        ('{"boot":"A","n":1}', 1_700_000_000_000 - 10_000),
        ('{"boot":"A","n":2}', 1_700_000_000_000),
    ]
    box.ack(r.id for r in recs)
    # a record of this boot that never gets stamped here ...
    marker.unlink()
    box.append(T, "d", '{"boot":"A","n":3}')
    await box.close()
    # ... is held after a reboot (its offset is unknown), even though the clock is synced now,
    # for hold_max_s from when this process first saw it, and blocks what comes after it
    ft2 = FakeTime(wall=1_700_001_000.0, mono=5.0)
    marker.touch()
    box = await Outbox.open(path, limits=limits, clock=marker_clock(ft2, marker, boot="B"))
    try:
        box.append(T, "d", '{"boot":"B","n":1}')
        await box.flush()
        assert await read_all(box) == []
        ft2.advance(59.9)
        assert await read_all(box) == []
        ft2.advance(0.1)
        assert [(r.body, r.ts_ms) for r in await read_all(box)] == [
            ('{"boot":"A","n":3}', None),
            ('{"boot":"B","n":1}', 1_700_001_000_000),
        ]
        assert box.stats().restamped == 0
    finally:
        await box.close()


async def test_wall_clock_steps_never_reorder_drop_or_duplicate(tmp_path: Path, ft: FakeTime) -> None:
    path = tmp_path / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001)
    expected: list[str] = []
    stamps: list[int] = []
    for step in (0.0, -3600.0, +7200.0, -1.0, +86_400.0 * 2):
        ft.w += step
        for _ in range(7):
            body = json.dumps({"n": len(expected)})
            expected.append(body)
            stamps.append(int(ft.w * 1000))
            box.append(T, f"d{len(expected) % 2}", body)
        await box.flush()
    recs = await read_all(box)
    assert [r.body for r in recs] == expected
    assert [r.ts_ms for r in recs] == stamps
    assert [r.id for r in recs] == sorted({r.id for r in recs})
    assert box.stats().dropped == {}
    await box.close()
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001)
    try:
        assert [r.body for r in await read_all(box)] == expected
    finally:
        await box.close()


# ---------------------------------------------------------------------------------- disk full


@contextlib.contextmanager
def tmpfs(d: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs on ``d`` (skip the test if that is not permitted); unmount it afterwards."""
    d.mkdir(exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({r.stderr.strip() or r.returncode}): covered by the injection tests")
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True, check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB file system, to fill up."""
    with tmpfs(tmp_path / "fs", "size=512k") as d:
        yield d


async def put_batch(box: Outbox, kind: RecordKind, seqs: range, pad: int = 200) -> OutboxError | None:
    fut = None
    for s in seqs:
        fut = box.append(kind, "dev", json.dumps({"seq": s, "pad": "x" * pad}))
    assert fut is not None
    try:
        await fut
    except OutboxError as exc:
        return exc
    return None


async def test_disk_full_on_a_real_tmpfs(small_tmpfs: Path, ft: FakeTime) -> None:
    path = small_tmpfs / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001)
    accepted: dict[int, RecordKind] = {}
    seq = 0
    try:
        # telemetry fills the disk: the oldest telemetry makes room, nothing is refused
        for _ in range(300):
            err = await put_batch(box, T, range(seq, seq + 50))
            assert err is None, err
            accepted.update(dict.fromkeys(range(seq, seq + 50), T))
            seq += 50
        st = box.stats()
        assert st.dropped.get("disk_full", 0) > 0
        assert st.rejected == 0
        assert st.records > 500, "the queue keeps using the disk"
        # records that may not be dropped fill it up for good: refused, with a clear error
        error: OutboxError | None = None
        for _ in range(200):
            error = await put_batch(box, A, range(seq, seq + 50))
            if error is None:
                accepted.update(dict.fromkeys(range(seq, seq + 50), A))
            seq += 50
            if error is not None:
                break
        assert error is not None
        assert str(error) == f"outbox: disk full at {path}: 50 records not accepted"
        assert box.stats().rejected == 50

        # nothing accepted is lost except the counted drops, oldest telemetry first, in order
        recs = await read_all(box)
        seqs = [json.loads(r.body)["seq"] for r in recs]
        assert seqs == sorted(seqs)
        assert set(seqs) <= set(accepted)
        attrs = [s for s, k in accepted.items() if k is A]
        assert [s for s in seqs if accepted[s] is A] == attrs
        assert len(accepted) - len(seqs) == sum(box.stats().dropped.values())
        assert box.stats().records == len(recs)
        assert integrity(path) == "ok"

        # delivering records frees room: appends are accepted again
        box.ack(r.id for r in recs[: len(recs) // 2])
        await box.flush()
        assert await put_batch(box, A, range(seq, seq + 50)) is None
        seq += 50
        expect = [json.loads(r.body)["seq"] for r in await read_all(box)]
    finally:
        await box.close()
    assert integrity(path) == "ok"
    box = await Outbox.open(path, clock=synced_clock(ft))
    try:
        assert [json.loads(r.body)["seq"] for r in await read_all(box)] == expect
    finally:
        await box.close()


async def test_disk_filled_by_someone_else(small_tmpfs: Path, ft: FakeTime) -> None:
    path = small_tmpfs / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001)
    try:
        assert await put_batch(box, T, range(200)) is None
        assert await put_batch(box, A, range(200, 220)) is None
        filler = small_tmpfs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 1024)
        finally:
            os.close(fd)
        outcomes = []
        for i in range(20):
            err = await put_batch(box, T, range(1000 + 50 * i, 1050 + 50 * i))
            assert err is None or "disk full" in str(err)
            outcomes.append(err is None)
        assert integrity(path) == "ok"
        seqs = [json.loads(r.body)["seq"] for r in await read_all(box)]
        assert list(range(200, 220)) == [s for s in seqs if 200 <= s < 220], "attributes kept"
        assert seqs == sorted(seqs)
        filler.unlink()
        assert await put_batch(box, T, range(5000, 5050)) is None
        assert box.stats().records == len(await read_all(box))
    finally:
        await box.close()
    assert integrity(path) == "ok"


class FaultyConnection(sqlite3.Connection):
    """Raises a SQLite error for the next statements that start with the planned prefixes."""

    plan: ClassVar[list[tuple[str, int]]] = []
    names: ClassVar[dict[int, tuple[str, str]]] = {
        13: ("SQLITE_FULL", "database or disk is full"),
        10: ("SQLITE_IOERR", "disk I/O error"),
        8: ("SQLITE_READONLY", "attempt to write a readonly database"),
    }

    def _fault(self, sql: str) -> None:
        for i, (prefix, code) in enumerate(self.plan):
            if sql.startswith(prefix):
                del self.plan[i]
                name, text = self.names[code]
                exc = sqlite3.OperationalError(text)
                exc.sqlite_errorcode = code
                exc.sqlite_errorname = name
                raise exc

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self._fault(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self._fault(sql)
        return super().executemany(sql, parameters)


@pytest.fixture
async def faulty(tmp_path: Path, ft: FakeTime, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Outbox]:
    monkeypatch.setattr(FaultyConnection, "plan", [])
    monkeypatch.setattr(Outbox, "connection_factory", FaultyConnection)
    box = await Outbox.open(tmp_path / "q.db", clock=synced_clock(ft), commit_interval=0.001)
    yield box
    await box.close()


async def test_injected_disk_full_drops_droppable_and_retries_once(faulty: Outbox) -> None:
    for i in range(20):
        faulty.append(A if i < 5 else T, "d", json.dumps({"i": i}))
    await faulty.flush()
    FaultyConnection.plan.append(("INSERT INTO outbox", 13))  # the first try fails, the retry succeeds
    await faulty.put(A, "d", '{"i":20}')
    st = faulty.stats()
    assert st.dropped.get("disk_full", 0) > 0
    assert st.rejected == 0
    recs = await read_all(faulty)
    ids = [json.loads(r.body)["i"] for r in recs]
    assert ids[:5] == [0, 1, 2, 3, 4], "non-droppable records kept"
    assert ids[-1] == 20
    assert len(recs) == 21 - st.dropped["disk_full"]
    # the dropped ones are the oldest telemetry
    assert ids[5:-1] == list(range(20 - (15 - st.dropped["disk_full"]), 20))


async def test_injected_disk_full_twice_rejects_the_batch(faulty: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    faulty.append(T, "d", '{"i":0}')
    await faulty.flush()
    (first,) = await read_all(faulty)
    faulty.ack([first.id])  # rides with the batch that will be rejected
    FaultyConnection.plan += [("INSERT INTO outbox", 13), ("INSERT INTO outbox", 13)]
    fut = faulty.append(A, "d", '{"i":1}')
    faulty.append(A, "d", '{"i":2}')
    with pytest.raises(OutboxError) as info:
        await fut
    assert str(info.value) == f"outbox: disk full at {faulty.path}: 2 records not accepted"
    assert "\n" not in str(info.value)
    st = faulty.stats()
    assert st.rejected == 2
    assert st.acked == 1, "the acks of a rejected commit are still applied"
    assert await read_all(faulty) == []
    await faulty.put(A, "d", '{"i":3}')
    assert [r.body for r in await read_all(faulty)] == ['{"i":3}']
    assert any("2 records not accepted" in r.getMessage() for r in caplog.records)


async def test_injected_failures_keep_acks_for_the_next_commit(faulty: Outbox) -> None:
    for i in range(3):
        faulty.append(T, "d", json.dumps({"i": i}))
    await faulty.flush()
    recs = await read_all(faulty)
    faulty.ack([recs[0].id])
    # the commit fails (on its acks), the acks-only retry too: the ack is kept for the next commit
    ack_sql = "SELECT count(*), total(n) FROM outbox WHERE id"
    FaultyConnection.plan += [(ack_sql, 10), (ack_sql, 10)]
    with pytest.raises(OutboxError, match="I/O error"):
        await faulty.put(T, "d", '{"i":3}')
    assert [r.id for r in await read_all(faulty)] == [r.id for r in recs]
    await faulty.flush()
    assert [r.id for r in await read_all(faulty)] == [r.id for r in recs[1:]]
    assert faulty.stats().acked == 1


async def test_injected_io_and_readonly_errors_reject_without_crashing(faulty: Outbox) -> None:
    FaultyConnection.plan.append(("COMMIT", 10))
    with pytest.raises(OutboxError, match=r"^outbox: I/O error on .*q\.db \(disk I/O error\): 1 records not accepted$"):
        await faulty.put(T, "d", '{"i":0}')
    FaultyConnection.plan.append(("INSERT INTO outbox", 8))
    with pytest.raises(OutboxError, match=r"cannot write .*readonly database"):
        await faulty.put(T, "d", '{"i":1}')
    await faulty.put(T, "d", '{"i":2}')
    assert [r.body for r in await read_all(faulty)] == ['{"i":2}']
    assert faulty.stats().rejected == 2
    assert integrity(faulty.path) == "ok"


# --------------------------------------------------------------------------- open-time failures


def assert_one_line(exc: OutboxError, *parts: str) -> None:
    text = str(exc)
    assert "\n" not in text
    for part in parts:
        assert part in text, (part, text)


async def test_read_only_state_directory(tmp_path: Path, ft: FakeTime) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as d:
        with pytest.raises(OutboxError) as info:
            await Outbox.open(d / "q.db", clock=synced_clock(ft))
        assert_one_line(info.value, str(d), "read-only")
        # an existing queue on a file system that has become read-only
        subprocess.run(["mount", "-o", "remount,rw", str(d)], check=True)
        box = await Outbox.open(d / "q.db", clock=synced_clock(ft))
        try:
            await box.put(T, "d", "{}")
        finally:
            await box.close()
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        with pytest.raises(OutboxError) as info:
            await Outbox.open(d / "q.db", clock=synced_clock(ft))
        assert_one_line(info.value, str(d), "read-only")


async def test_unusable_paths(tmp_path: Path, ft: FakeTime) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutboxError) as info:
        await Outbox.open(tmp_path / "afile" / "q.db", clock=synced_clock(ft))
    assert_one_line(info.value, str(tmp_path / "afile"))
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutboxError) as info:
        await Outbox.open(tmp_path / "adir", clock=synced_clock(ft))
    assert_one_line(info.value, str(tmp_path / "adir"), "directory")


async def test_unwritable_directory_for_the_service_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="outbox-perm-"))
    os.chmod(base, 0o755)
    d = base / "locked"
    d.mkdir(mode=0o755)  # owned by root: the unprivileged service user may not write here
    code = (
        "import asyncio, os, sys\n"
        "from pathlib import Path\n"
        "from gateway.core.clock import Clock\n"
        "from gateway.store.outbox import Outbox, OutboxError\n"
        "clock = Clock(sync_marker=None, trust='always')\n"
        "os.setgid(65534); os.setuid(65534)  # after the imports: the interpreter may live under /root\n"
        "async def main():\n"
        "    try:\n"
        "        await Outbox.open(Path(sys.argv[1]), clock=clock)\n"
        "    except OutboxError as e:\n"
        "        print(e)\n"
        "asyncio.run(main())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(d / "q.db")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    shutil.rmtree(base)
    if "Permission denied" not in r.stdout and r.returncode != 0:
        pytest.skip(f"cannot run as an unprivileged user here: {r.stderr.strip()[-200:]}")
    assert r.stdout.strip() == f"outbox: state directory {d} is not writable: Permission denied"


async def test_one_outbox_per_file(tmp_path: Path, ft: FakeTime) -> None:
    path = tmp_path / "q.db"
    box = await Outbox.open(path, clock=synced_clock(ft))
    try:
        with pytest.raises(OutboxError) as info:
            await Outbox.open(path, clock=synced_clock(ft))
        assert_one_line(info.value, str(path), "in use")
    finally:
        await box.close()
    box = await Outbox.open(path, clock=synced_clock(ft))  # free again once closed
    await box.close()


async def test_corrupt_files_give_a_clear_error(tmp_path: Path, ft: FakeTime) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(OutboxError) as info:
        await Outbox.open(garbage, clock=synced_clock(ft))
    assert_one_line(info.value, str(garbage), "corrupt or not an outbox database", "move it aside")

    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(OutboxError) as info:
        await Outbox.open(foreign, clock=synced_clock(ft))
    assert_one_line(info.value, str(foreign), "not an outbox database", "users")

    newer = tmp_path / "newer.db"
    box = await Outbox.open(newer, clock=synced_clock(ft))
    await box.close()
    con = sqlite3.connect(newer)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(OutboxError) as info:
        await Outbox.open(newer, clock=synced_clock(ft))
    assert_one_line(info.value, str(newer), f"schema version {SCHEMA_VERSION + 1}", "newer")

    damaged = tmp_path / "damaged.db"
    box = await Outbox.open(damaged, clock=synced_clock(ft), commit_interval=0.001)
    for i in range(3000):
        box.append(T, "d", json.dumps({"i": i, "pad": "y" * 50}))
    await box.close()
    data = bytearray(damaged.read_bytes())
    assert len(data) > 8 * 4096
    data[2 * 4096 :] = b"\xa5" * (len(data) - 2 * 4096)
    damaged.write_bytes(bytes(data))
    with pytest.raises(OutboxError) as info:
        await Outbox.open(damaged, clock=synced_clock(ft))
    assert_one_line(info.value, str(damaged), "corrupt")


# ------------------------------------------------------------------------------ property test

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 25), st.sampled_from([T, A, RecordKind.SELF_TELEMETRY])),
        st.tuples(st.just("ack"), st.lists(st.integers(0, 60), max_size=30)),
        st.tuples(st.just("ack_unknown"), st.integers(-3, 10**9)),
        st.tuples(st.just("flush")),
        st.tuples(st.just("check")),
        st.tuples(st.just("reopen")),
    ),
    max_size=30,
)


async def _run_ops(ops: list[tuple[Any, ...]], directory: Path) -> None:
    path = directory / "q.db"
    ft = FakeTime()

    async def open_box() -> Outbox:
        return await Outbox.open(path, clock=synced_clock(ft), commit_interval=0.001, commit_records=7)

    box = await open_box()
    pending: list[tuple[asyncio.Future[None], str]] = []
    live: list[str] = []  # bodies appended, durable and not acked, in append order
    seen_ids: dict[str, int] = {}
    max_id = 0
    seq = 0

    async def settle() -> None:
        for fut, body in pending:
            await fut  # every future succeeds here (no faults)
            live.append(body)
        pending.clear()

    async def check() -> None:
        nonlocal max_id
        await settle()
        await box.flush()  # commits the acks too
        recs = await read_all(box)
        assert [r.body for r in recs] == live, "every durable, unacked record is readable, in id order"
        ids = [r.id for r in recs]
        assert ids == sorted(set(ids))
        for r in recs:
            assert seen_ids.setdefault(r.body, r.id) == r.id, "ids are stable"
        max_id = max([max_id, *ids])
        assert box.stats().records == len(recs)
        assert box.stats().bytes == sum(r.size for r in recs)

    try:
        for op in ops:
            if op[0] == "append":
                for _ in range(op[1]):
                    body = json.dumps({"seq": seq})
                    seq += 1
                    pending.append((box.append(op[2], f"dev{seq % 4}", body), body))
            elif op[0] == "ack":
                await settle()
                recs = await read_all(box)
                if recs:
                    chosen = [recs[i] for i in sorted({i % len(recs) for i in op[1]})]
                    box.ack(r.id for r in chosen)
                    gone = {r.body for r in chosen}
                    live[:] = [b for b in live if b not in gone]
            elif op[0] == "ack_unknown":
                box.ack([op[1]] if op[1] > max_id + 10**6 or op[1] <= 0 else [])
            elif op[0] == "flush":
                await box.flush()
            elif op[0] == "check":
                await check()
            elif op[0] == "reopen":
                await box.close()
                for fut, body in pending:
                    assert fut.done() and fut.exception() is None
                    live.append(body)
                pending.clear()
                box = await open_box()
                await check()
                await box.put(T, "probe", "{}")
                newest = (await read_all(box))[-1]
                assert newest.id > max_id, "ids keep increasing across restarts"
                box.ack([newest.id])
        await check()
    finally:
        await box.close()


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_property_appended_records_are_acked_or_readable_in_order(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(_run_ops(ops, Path(d)))


# -------------------------------------------------------------------------------------- crash test

CHILD = Path(__file__).with_name("_outbox_crash_child.py")
SEQ_PER_RUN = 10_000_000


@pytest.mark.slow
def test_kill_9_never_loses_a_durable_record(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    rng = random.Random(20240601)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    printed: list[int] = []
    runs = 25
    for run in range(1, runs + 1):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(path), str(run)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            # kill at a random moment: right away (mid first commits) or after k accepted batches
            for _ in range(rng.choice([0, 0, 1, 2, 5, 10, 20, 40, 80])):
                line = child.stdout.readline()
                if not line.endswith("\n"):
                    break
                printed.append(int(line))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            rest = child.stdout.read()  # lines printed before the kill count too
            child.wait()
            child.stdout.close()
        printed += [int(x) for x in rest.split("\n")[:-1] if x]
        assert child.returncode == -signal.SIGKILL
    assert printed, "the child reported accepted batches"

    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        seqs = [json.loads(b)["seq"] for (b,) in con.execute("SELECT body FROM outbox ORDER BY id")]
    finally:
        con.close()
    assert len(seqs) == len(set(seqs)), "no duplicates"
    assert seqs == sorted(seqs), "id order is append order"
    assert set(printed) <= set(seqs), "every record reported durable survived kill -9"
    by_run: dict[int, list[int]] = {}
    for s in seqs:
        by_run.setdefault(s // SEQ_PER_RUN, []).append(s)
    for run, got in by_run.items():
        base = run * SEQ_PER_RUN
        assert got == list(range(base, base + len(got))), f"run {run}: a gap-free prefix"
    # and the outbox itself reads them all back after the crashes
    count = len(seqs)

    async def reread() -> list[Record]:
        box = await Outbox.open(path, clock=Clock(sync_marker=None, trust="always"))
        try:
            return await read_all(box)
        finally:
            await box.close()

    recs = asyncio.run(reread())
    assert [json.loads(r.body)["seq"] for r in recs] == seqs
    assert len(recs) == count
