"""The device-mode outbox (``by_device=True``): each device's records read alone, in id order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.core.clock import Clock
from gateway.core.records import RecordKind
from gateway.store.outbox import Outbox, OutboxError, OutboxLimits

NOW = int(time.time() * 1000)


async def test_records_of_each_device_in_order_after_a_cursor(tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "d.sqlite3", clock=Clock(trust="always"), by_device=True)
    try:
        for i in range(30):
            ob.append(RecordKind.SELF_TELEMETRY, f"dev-{i % 3}", f'{{"i":{i}}}', NOW + i)
        await ob.flush()
        assert sorted(await ob.pending_devices()) == ["dev-0", "dev-1", "dev-2"]
        (a, held_a), (b, held_b), (none, _) = await ob.read_devices([("dev-0", 0), ("dev-1", 5), ("x", 0)], 4, 1 << 20)
        assert [r.body for r in a] == ['{"i":0}', '{"i":3}', '{"i":6}', '{"i":9}'] and not held_a
        assert [r.id for r in b] == [8, 11, 14, 17] and all(r.device == "dev-1" for r in b) and not held_b
        assert none == []
        # about max_bytes, at least one
        ((one, _),) = await ob.read_devices([("dev-2", 0)], 100, 1)
        assert len(one) == 1
        ob.ack(r.id for r in a)
        await ob.flush()
        ((rest, _),) = await ob.read_devices([("dev-0", 0)], 100, 1 << 20)
        assert [r.id for r in rest] == [13, 16, 19, 22, 25, 28]
    finally:
        await ob.close()
    # the index is there on reopening; the gateway's own outbox refuses per-device reads
    ob = await Outbox.open(tmp_path / "d.sqlite3", clock=Clock(trust="always"), by_device=True)
    try:
        ((rest, _),) = await ob.read_devices([("dev-0", 12)], 100, 1 << 20)
        assert rest[0].id == 13
    finally:
        await ob.close()
    plain = await Outbox.open(tmp_path / "g.sqlite3", clock=Clock(trust="always"))
    try:
        with pytest.raises(OutboxError, match="not opened by device"):
            await plain.read_devices([("dev-0", 0)], 1, 1)
    finally:
        await plain.close()


async def test_a_held_record_stops_its_device_only(tmp_path: Path) -> None:
    clock = Clock(trust="marker", sync_marker=tmp_path / "never")  # never synchronised
    ob = await Outbox.open(tmp_path / "d.sqlite3", clock=clock, by_device=True,
                           limits=OutboxLimits(unsynced="hold", hold_max_s=3600))
    try:
        ob.append(RecordKind.SELF_TELEMETRY, "a", "{}", NOW)  # stamped by its producer
        ob.append(RecordKind.SELF_TELEMETRY, "a", "{}")  # no ts: held until the clock is synchronised
        ob.append(RecordKind.SELF_TELEMETRY, "b", "{}", NOW)
        await ob.flush()
        (a, held_a), (b, held_b) = await ob.read_devices([("a", 0), ("b", 0)], 10, 1 << 20)
        assert [r.id for r in a] == [1] and held_a
        assert [r.id for r in b] == [3] and not held_b
    finally:
        await ob.close()
