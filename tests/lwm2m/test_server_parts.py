"""The server's small parts: the timer heap, duplicate detection, request helpers, aiocoap internals used."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap.messagemanager import MessageManager

from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import operations as ops
from gateway.lwm2m.server.dedup import RecentRequests
from gateway.lwm2m.server.timers import BATCH, TimerQueue


async def test_timers_fire_in_deadline_order_on_one_loop_handle() -> None:
    loop = asyncio.get_running_loop()
    timers = TimerQueue(loop)
    fired: list[int] = []
    done = loop.create_future()
    now = loop.time()
    for i in (3, 1, 2):
        timers.call_at(now + i * 0.01, fired.append, i)
    timers.call_at(now + 0.05, done.set_result, None)
    assert len(timers) == 4
    await asyncio.wait_for(done, 5)
    assert fired == [1, 2, 3]
    assert len(timers) == 0


async def test_cancelled_timers_do_not_fire_and_the_heap_is_compacted() -> None:
    loop = asyncio.get_running_loop()
    timers = TimerQueue(loop)
    fired: list[int] = []
    entries = [timers.call_at(loop.time() + 60, fired.append, i) for i in range(1000)]
    for entry in entries[:900]:
        timers.cancel(entry)
    timers.cancel(entries[0])  # twice: a no-op
    assert len(timers) == 100
    assert len(timers._heap) < 1000  # rebuilt once more than half was cancelled
    done = loop.create_future()
    timers.call_at(loop.time(), done.set_result, None)
    await asyncio.wait_for(done, 5)
    assert fired == []
    timers.close()


async def test_a_burst_of_due_timers_is_worked_off_in_slices() -> None:
    loop = asyncio.get_running_loop()
    timers = TimerQueue(loop)
    count = BATCH * 2 + 10
    fired: list[int] = []
    done = loop.create_future()

    def hit(i: int) -> None:
        fired.append(i)
        if len(fired) == count:
            done.set_result(None)

    now = loop.time()
    for i in range(count):
        timers.call_at(now, hit, i)
    await asyncio.wait_for(done, 5)
    assert sorted(fired) == list(range(count))


async def test_a_failing_timer_callback_does_not_stop_the_others() -> None:
    loop = asyncio.get_running_loop()
    timers = TimerQueue(loop)
    done = loop.create_future()

    def boom(_: object) -> None:
        raise RuntimeError("boom")

    timers.call_at(loop.time(), boom, None)
    timers.call_at(loop.time(), done.set_result, "ok")
    assert await asyncio.wait_for(done, 5) == "ok"


def test_recent_requests_expire_in_order_and_are_bounded() -> None:
    recent = RecentRequests(lifetime=10.0, max_entries=3)
    recent.add(("a", 1), now=0.0)
    recent.set_response(("a", 1), "reply-a")
    assert recent.lookup(("a", 1)) == [10.0, "reply-a"]
    recent.add(("b", 2), now=5.0)
    recent.add(("c", 3), now=6.0)
    recent.add(("d", 4), now=7.0)  # over the bound: the oldest goes
    assert recent.lookup(("a", 1)) is None
    assert recent.dropped == 1
    recent.purge(now=15.5)  # b expired (5 + 10), c and d not
    assert recent.lookup(("b", 2)) is None
    assert len(recent) == 2
    recent.set_response(("zzz", 0), "ignored")  # unknown key: nothing happens
    assert len(recent) == 2


def test_uri_paths_and_locations() -> None:
    assert ops.uri_path("/", LwM2mPath(3303, 0, 5700)) == ("3303", "0", "5700")
    assert ops.uri_path("/lwm2m", LwM2mPath(3, 0)) == ("lwm2m", "3", "0")
    assert ops.location_to_path(("3303", "1"), "/") == LwM2mPath(3303, 1)
    assert ops.location_to_path(("lwm2m", "3303", "1"), "/lwm2m") == LwM2mPath(3303, 1)
    assert ops.location_to_path(("x",), "/") is None


def test_write_attributes_query() -> None:
    assert ops.attributes_query({"pmin": 5, "pmax": 60.0, "st": 0.5, "lt": -3, "gt": None}) == (
        "pmin=5", "pmax=60", "st=0.5", "lt=-3", "gt")
    for bad in ({"pmin": 1.5}, {"pmin": -1}, {"st": float("nan")}, {"dim": 2}, {"gt": "3"}, {"pmax": True}):
        with pytest.raises(ValueError):
            ops.attributes_query(bad)  # type: ignore[arg-type]


def test_execute_arguments() -> None:
    assert ops.execute_arguments(None) == b""
    assert ops.execute_arguments("5='x'") == b"5='x'"
    assert ops.execute_arguments({0: "on", 3: None}) == b"0='on',3"
    with pytest.raises(ValueError):
        ops.execute_arguments({10: "x"})
    with pytest.raises(ValueError):
        ops.execute_arguments({1: "it's"})


def test_the_aiocoap_internals_the_server_relies_on_exist() -> None:
    # gateway/lwm2m/server/coap.py subclasses aiocoap 0.4.17's MessageManager; an upgrade that
    # renames these must fail here, not in production.
    for name in ("_remove_exchange", "_send_empty_ack", "_send_initially", "_continue_backlog",
                 "_deduplicate_message", "_store_response_for_duplicates", "_process_request", "_next_message_id"):
        assert callable(getattr(MessageManager, name)), name


def test_parse_notification_fast_path() -> None:
    from gateway.lwm2m.server.fastpath import parse_notification

    token = b"abcdef"
    head = bytes((0x56, 0x45, 0x12, 0x34)) + token
    # Observe 300 (2 bytes), Content-Format 112, payload
    assert parse_notification(head + bytes((0x62, 0x01, 0x2C, 0x61, 0x70, 0xFF)) + b"\x81") == (300, 112, b"\x81")
    # ETag (4) and Max-Age (14) are fine; no payload
    assert parse_notification(head + bytes((0x41, 0xAA, 0x21, 0x07, 0x81, 0x3C))) == (7, None, b"")
    # Block2 (23): left to aiocoap
    assert parse_notification(head + bytes((0x61, 0x07, 0xD1, 0x04, 0x0E))) is None
    # an unknown option (Uri-Path 11 in a response), a payload marker without payload, truncation
    assert parse_notification(head + bytes((0xB1, 0x31))) is None
    assert parse_notification(head + bytes((0x61, 0x07, 0xFF))) is None
    assert parse_notification(head + bytes((0x62, 0x01))) is None
    assert parse_notification(head + bytes((0xD1,))) is None
    assert parse_notification(head + bytes((0xF0,))) is None
