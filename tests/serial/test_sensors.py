"""Plain serial sensors on pseudo-terminals, through a real DeviceHub and Outbox: each converter with
good and garbage lines, over-long lines, RPC and shared attributes written as lines, unplug and
replug. Records are read back from the outbox; waiting is on the outbox, never on the clock."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_port_helpers import PtyPeer, StablePath

from gateway.core.clock import Clock
from gateway.core.hub import DeviceHub, RpcError
from gateway.core.records import Record, RecordKind
from gateway.serial.config import SerialPortConfig, parse_ports
from gateway.serial.port import LinkState
from gateway.serial.sensors import LineSplitter, SerialSensorAdapter
from gateway.store.outbox import Outbox

FAST = {"reopen_min_s": 0.01, "reopen_max_s": 0.04}

# --- LineSplitter ----------------------------------------------------------------------------------


def test_splitter_keeps_partial_lines_and_crlf_split_across_reads() -> None:
    s = LineSplitter(b"\r\n", 32)
    assert s.feed(b"a=1\r") == []
    assert s.feed(b"\nb=2\r\nc=") == [b"a=1", b"b=2"]
    assert s.feed(b"3\r\n") == [b"c=3"]
    assert s.overlong == 0


def test_splitter_drops_an_overlong_line_once_and_resyncs() -> None:
    s = LineSplitter(b"\n", 8)
    assert s.feed(b"x" * 5) == []
    assert s.feed(b"y" * 20) == []  # now too long: dropped, counted once
    assert s.feed(b"z" * 100) == []
    assert s.feed(b"zz\nok=1\n" + b"w" * 9 + b"\nok=2\n") == [b"ok=1", b"ok=2"]
    assert s.overlong == 2


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_splitter_result_does_not_depend_on_read_sizes(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\r\n" for line in lines)
    whole = LineSplitter(b"\r\n", 8)
    expected = whole.feed(stream)
    assert expected == [line for line in lines if len(line) <= 8]
    pieces = LineSplitter(b"\r\n", 8)
    got: list[bytes] = []
    last = 0
    for cut in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        got += pieces.feed(stream[last:cut])
        last = cut
    assert got == expected and pieces.overlong == whole.overlong == len(lines) - len(expected)


# --- fixtures ----------------------------------------------------------------------------------------


class Records:
    """Records of the outbox as they become durable."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.after = 0
        self.seen: list[Record] = []

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self.outbox.wait_readable(self.after)
                new = await self.outbox.read(self.after, 10_000, 1 << 24)
                self.seen += new
                self.after = new[-1].id

    def of(self, kind: RecordKind, device: str) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.seen if r.kind is kind and r.device == device]

    def kinds(self, device: str) -> list[RecordKind]:
        return [r.kind for r in self.seen if r.device == device]


class Bench:
    def __init__(self, outbox: Outbox, tmp_path: Path, clock: Clock) -> None:
        self.outbox = outbox
        self.clock = clock
        self.hub = DeviceHub(outbox)
        self.records = Records(outbox)
        self.tmp_path = tmp_path
        self.adapters: list[SerialSensorAdapter] = []
        self.peers: list[PtyPeer | StablePath] = []

    def peer(self) -> PtyPeer:
        p = PtyPeer()
        self.peers.append(p)
        return p

    def stable(self) -> StablePath:
        s = StablePath(self.tmp_path / "by-id")
        self.peers.append(s)
        return s

    async def adapter(self, *tables: dict[str, Any]) -> SerialSensorAdapter:
        adapter = SerialSensorAdapter(self.hub, ports(*tables), clock=self.clock)
        self.adapters.append(adapter)
        await adapter.start()
        return adapter


def ports(*tables: dict[str, Any]) -> list[SerialPortConfig]:
    parsed, problems = parse_ports([{**FAST, **t} for t in tables], label="test.toml")
    assert problems == []
    return parsed


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    clock = Clock(sync_marker=None, trust="always")
    outbox = await Outbox.open(tmp_path / "outbox.sqlite3", clock=clock, commit_interval=0.002)
    b = Bench(outbox, tmp_path, clock)
    try:
        yield b
    finally:
        for adapter in b.adapters:
            await adapter.stop()
        for peer in b.peers:
            peer.close()
        await outbox.close()


def regex_converter() -> dict[str, Any]:
    return {
        "type": "regex",
        "pattern": r"T=(?P<t>-?[0-9]+) H=(?P<h>[0-9]+)%",
        "fields": {
            "t": {"type": "int", "key": "temperature", "unit": "C", "scale": 0.1},
            "h": {"type": "int", "key": "humidity", "unit": "%"},
        },
    }


# --- lines in ----------------------------------------------------------------------------------------


async def test_each_converter_with_good_and_bad_lines(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    pj, pk, pr = bench.peer(), bench.peer(), bench.peer()
    adapter = await bench.adapter(
        {"name": "j", "path": pj.path, "device": "json-1", "converter": {"type": "json", "ts_key": "ts"}},
        {"name": "k", "path": pk.path, "device": "kv-1", "terminator": "\r\n", "profile": "kv",
         "converter": {"type": "kv", "attribute_keys": ["fw"]}},
        {"name": "r", "path": pr.path, "device": "regex-1", "converter": regex_converter()},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="gateway.serial.sensors"):
        ts = int(time.time()) - 60  # the device's own clock, in seconds
        pj.write(b'{"temp": 21.5, "ts": %d}\n{"temp": \nnot json\n\xff\xfe\n\n{"temp": 22, "ok": true}\n' % ts)
        pk.write(b"temp=21.5,fw=1.2\r\n=x\r\ntemp=nan\r\ntemp=22\r\n")
        pr.write(b"T=215 H=40%\nT=abc\nT=-5 H=41%\n")
        await bench.records.until(
            lambda: len(bench.records.of(RecordKind.TELEMETRY, "json-1")) == 2
            and len(bench.records.of(RecordKind.TELEMETRY, "kv-1")) == 2
            and len(bench.records.of(RecordKind.TELEMETRY, "regex-1")) == 2
        )
    r = bench.records
    assert r.of(RecordKind.CONNECT, "json-1") == [{"type": "serial-sensor"}]
    assert r.of(RecordKind.CONNECT, "kv-1") == [{"type": "kv"}]
    assert r.of(RecordKind.TELEMETRY, "json-1") == [{"temp": 21.5}, {"temp": 22, "ok": True}]
    assert next(x.ts_ms for x in r.seen if x.device == "json-1" and x.kind is RecordKind.TELEMETRY) == ts * 1000
    assert r.of(RecordKind.TELEMETRY, "kv-1") == [{"temp": 21.5}, {"temp": 22}]
    assert r.of(RecordKind.TELEMETRY, "regex-1") == [
        {"temperature": 21.5, "humidity": 40},
        {"temperature": -0.5, "humidity": 41},
    ]
    await adapter.stop()  # attributes are queued by their own small tasks: let them land
    await bench.records.until(lambda: RecordKind.DISCONNECT in r.kinds("kv-1"))
    assert r.of(RecordKind.ATTRIBUTES, "kv-1") == [{"fw": 1.2}]
    # units once per connection, before any reading
    assert r.of(RecordKind.ATTRIBUTES, "regex-1") == [{"temperature_unit": "C", "humidity_unit": "%"}]
    assert r.kinds("regex-1")[:2] == [RecordKind.CONNECT, RecordKind.ATTRIBUTES]
    status = {s["name"]: s for s in adapter.status()}
    assert (status["j"]["lines"], status["j"]["badLines"]) == (2, 3)  # the empty line is no bad line
    assert (status["k"]["lines"], status["k"]["badLines"]) == (2, 2)
    assert (status["r"]["lines"], status["r"]["badLines"]) == (2, 1) and status["r"]["lastBadLine"] == "no match"
    # rate-limited: one warning per port, not one per bad line
    warned = [m for m in caplog.messages if "bad line" in m]
    assert len(warned) == 3 and "bad line '{\"temp\": ': invalid JSON" in warned[0]


async def test_lines_of_one_read_get_distinct_rising_arrival_stamps(bench: Bench) -> None:
    """A streaming port is read in batches: the lines of one read must not share a timestamp (ThingsBoard
    keeps one value per key and millisecond). Each is dated back by the line time of what followed it."""
    peer = bench.peer()
    await bench.adapter({"name": "p", "path": peer.path, "device": "fast-1", "baudrate": 9600,
                         "converter": {"type": "kv", "ts_key": "ts"}})  # fmt: skip
    await bench.records.until(lambda: RecordKind.CONNECT in bench.records.kinds("fast-1"))
    before = int(time.time() * 1000)
    peer.write(b"".join(b"seq=%d\n" % i for i in range(40)))  # 40 lines at once, 7 bytes each
    peer.write(b"seq=40,ts=%d\n" % (before - 5000))  # the device's own time wins
    await bench.records.until(lambda: len(bench.records.of(RecordKind.TELEMETRY, "fast-1")) == 41)
    after = int(time.time() * 1000)
    records = [r for r in bench.records.seen if r.device == "fast-1" and r.kind is RecordKind.TELEMETRY]
    assert [json.loads(r.body)["seq"] for r in records] == list(range(41))
    stamps = [r.ts_ms or 0 for r in records[:40]]
    assert all(r.ts_ms is not None for r in records)
    assert stamps == sorted(stamps) and len(set(stamps)) == 40  # distinct and rising
    assert before - 1000 <= stamps[0] and stamps[-1] <= after + 1000
    assert records[40].ts_ms == before - 5000


def test_stamps_date_each_line_back_by_the_line_time_after_it() -> None:
    now = [1_700_000_000.0]  # wall-clock seconds; every step below is exact in binary
    clock = Clock(sync_marker=None, trust="always", wall=lambda: now[0])
    (config,) = ports({"name": "p", "path": "/dev/null", "device": "d", "baudrate": 9600, "converter": {"type": "kv"}})
    port = SerialSensorAdapter(DeviceHub.__new__(DeviceHub), [config], clock=clock).ports[0]
    t = 1_700_000_000_000
    # 960 bytes/s: a 4-byte line takes 4.17 ms; 2 bytes of the next line came after the last one
    lines = port.splitter.feed(b"a=1\na=2\na=3\na=")
    assert port._stamps(lines) == [t - 10, t - 6, t - 2]
    # 62 ms later, a read of 30 lines that took 125 ms of line time: stamps still rise from the last one
    now[0] += 0.0625
    stamps = port._stamps(port.splitter.feed(b"4\n" + b"b=1\n" * 29))
    assert stamps[0] == t - 1 and stamps[-1] == t + 62
    assert stamps == sorted(set(stamps))  # type: ignore[type-var]  # rising, none twice
    # the clock steps back: 1 ms apart, but never more than a second ahead of it ...
    now[0] -= 0.5625
    assert port._stamps([b"x=1"] * 3) == [t + 63, t + 64, t + 65]
    now[0] -= 0.5
    assert port._stamps([b"x=1"] * 3) == [t - 1008, t - 1004, t - 1000]


async def test_lines_without_a_trusted_clock_are_stamped_by_the_outbox(bench: Bench, tmp_path: Path) -> None:
    peer = bench.peer()
    table = {"name": "p", "path": peer.path, "device": "plain-1", "converter": {"type": "kv"}}
    untrusted = Clock(sync_marker=tmp_path / "never", trust="marker")
    adapter = SerialSensorAdapter(bench.hub, ports(table), clock=untrusted)
    bench.adapters.append(adapter)
    await adapter.start()
    await bench.records.until(lambda: RecordKind.CONNECT in bench.records.kinds("plain-1"))
    peer.write(b"a=1\na=2\n")
    await bench.records.until(lambda: len(bench.records.of(RecordKind.TELEMETRY, "plain-1")) == 2)
    assert bench.records.of(RecordKind.TELEMETRY, "plain-1") == [{"a": 1}, {"a": 2}]
    assert adapter.port("p")._last_ts == 0  # nothing stamped here: the outbox did


async def test_overlong_lines_are_dropped_and_counted(bench: Bench) -> None:
    peer = bench.peer()
    adapter = await bench.adapter(
        {"name": "p", "path": peer.path, "device": "long-1", "max_line_length": 16, "converter": {"type": "kv"}}
    )
    peer.write(b"a=" + b"1" * 100 + b"\nb=2\n")
    peer.write(b"c=" + b"3" * 40)
    peer.write(b"3" * 40 + b"\nd=4\n")
    await bench.records.until(lambda: len(bench.records.of(RecordKind.TELEMETRY, "long-1")) == 2)
    assert bench.records.of(RecordKind.TELEMETRY, "long-1") == [{"b": 2}, {"d": 4}]
    port = adapter.port("p")
    assert port.splitter.overlong == 2 and port.bad_lines == 0
    assert adapter.self_telemetry()["serialBadLines"] == 2


async def test_garbage_storm_never_breaks_the_port(bench: Bench) -> None:
    peer = bench.peer()
    adapter = await bench.adapter({"name": "g", "path": peer.path, "device": "noisy", "converter": regex_converter()})
    noise = bytes(range(256)).replace(b"\n", b"") * 8
    for i in range(50):
        peer.write(noise[i : i + 200] + b"\n")
    peer.write(b"T=100 H=50%\n")
    await bench.records.until(lambda: bool(bench.records.of(RecordKind.TELEMETRY, "noisy")))
    port = adapter.port("g")
    assert port.bad_lines == 50 and port.lines == 1 and port.link.state is LinkState.OPEN


# --- lines out -----------------------------------------------------------------------------------------


async def test_rpc_writes_its_template_line(bench: Bench) -> None:
    peer = bench.peer()
    adapter = await bench.adapter(
        {
            "name": "b", "path": peer.path, "device": "boiler", "converter": {"type": "kv"},
            "write_terminator": "\r\n",
            "rpc": {
                "setpoint": {"template": "SP {value}"},
                "reboot": "REBOOT",
                "read": {"template": "GET {what}", "reply": r"^OK (?P<value>\S+)$", "timeout_s": 5},
            },
        }
    )  # fmt: skip
    await bench.records.until(lambda: bench.hub.is_connected("boiler"))
    assert bench.hub.handler_for("boiler") is adapter
    assert await adapter.rpc("boiler", "setpoint", {"value": 21.5}, 5) == {"written": 9}
    assert await peer.line() == b"SP 21.5\r\n"
    assert await adapter.rpc("boiler", "reboot", None, 5) == {"written": 8}
    assert await peer.line() == b"REBOOT\r\n"

    reply = asyncio.ensure_future(adapter.rpc("boiler", "read", {"what": "sp"}, 5))
    assert await peer.line() == b"GET sp\r\n"
    peer.write(b"temp=20\nOK 21.5\n")  # a reading first: it stays a reading
    assert await reply == {"reply": "OK 21.5", "value": "21.5"}
    await bench.records.until(lambda: bool(bench.records.of(RecordKind.TELEMETRY, "boiler")))
    assert bench.records.of(RecordKind.TELEMETRY, "boiler") == [{"temp": 20}]
    assert adapter.port("b").rpcs == 3


async def test_rpc_errors(bench: Bench) -> None:
    stable = bench.stable()
    stable.plug()
    adapter = await bench.adapter(
        {
            "name": "b", "path": str(stable.path), "device": "dev", "converter": {"type": "kv"},
            "rpc": {"set": "SET {value}", "ask": {"template": "ASK", "reply": "^ANSWER", "timeout_s": 0.05}},
        }
    )  # fmt: skip
    with pytest.raises(RpcError) as info:
        await adapter.rpc("dev", "nope", None, 5)
    assert info.value.code == "unknown_method" and "has: ask, set" in str(info.value)
    with pytest.raises(RpcError) as info:
        await adapter.rpc("dev", "set", {"other": 1}, 5)
    assert info.value.code == "bad_params"
    with pytest.raises(RpcError) as info:
        await adapter.rpc("dev", "set", {"value": "1\nREBOOT"}, 5)  # no second command smuggled in
    assert info.value.code == "bad_params"
    with pytest.raises(RpcError) as info:
        await adapter.rpc("dev", "ask", None, 5)  # the device never answers
    assert info.value.code == "timeout" and "'^ANSWER'" in str(info.value)
    with pytest.raises(RpcError) as info:
        await adapter.rpc("other", "set", {"value": 1}, 5)
    assert info.value.code == "unknown_device"
    stable.unplug()
    await adapter.port("b").link.wait_for_state(LinkState.WAITING, timeout=5)
    with pytest.raises(RpcError) as info:
        await adapter.rpc("dev", "set", {"value": 1}, 5)
    assert info.value.code == "offline" and "waiting" in str(info.value)
    assert adapter.port("b").rpc_errors == 5


async def test_reply_wait_ends_when_the_port_closes(bench: Bench) -> None:
    stable = bench.stable()
    peer = stable.plug()
    adapter = await bench.adapter(
        {"name": "b", "path": str(stable.path), "device": "dev", "converter": {"type": "kv"},
         "rpc": {"ask": {"template": "ASK", "reply": "^ANSWER", "timeout_s": 30}}}
    )  # fmt: skip
    pending = asyncio.ensure_future(adapter.rpc("dev", "ask", None, 30))
    assert await peer.line() == b"ASK\n"
    stable.unplug()
    with pytest.raises(RpcError) as info:
        await asyncio.wait_for(pending, 5)
    assert info.value.code == "offline"


async def test_shared_attributes_become_lines(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    peer = bench.peer()
    adapter = await bench.adapter(
        {"name": "a", "path": peer.path, "device": "thermo", "converter": {"type": "kv"},
         "attribute_template": "SET {name}={value}", "attribute_keys": ["setpoint", "mode"]}
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="gateway.serial.sensors"):
        await adapter.attributes_updated("thermo", {"setpoint": 20.5, "other": 1, "mode": "eco"}, [])
        await adapter.attributes_updated("thermo", {"mode": "a\rb"}, [])
    assert await peer.read_until(b"eco\n") == b"SET setpoint=20.5\nSET mode=eco\n"
    assert "shared attribute 'mode' not written" in caplog.text
    assert adapter.port("a").attribute_lines == 2
    await adapter.attributes_updated("nobody", {"x": 1}, [])  # not ours: ignored


# --- unplug / replug --------------------------------------------------------------------------------------


async def test_unplug_and_replug_reconnects_the_device(bench: Bench) -> None:
    stable = bench.stable()
    first = stable.plug()
    adapter = await bench.adapter(
        {"name": "u", "path": str(stable.path), "device": "usb-1", "converter": regex_converter()}
    )
    first.write(b"T=200 H=30%\n")
    r = bench.records
    await r.until(lambda: len(r.of(RecordKind.TELEMETRY, "usb-1")) == 1)

    stable.unplug()
    await r.until(lambda: RecordKind.DISCONNECT in r.kinds("usb-1"))
    assert not bench.hub.is_connected("usb-1")
    (status,) = adapter.status()
    assert status["state"] == "waiting" and not status["connected"] and status["lastError"]
    assert adapter.self_telemetry()["serialState.u"] == "waiting"

    second = stable.plug()
    # what a device sends before the port is open is lost (opening flushes the input)
    await adapter.port("u").link.wait_for_state(LinkState.OPEN, timeout=5)
    second.write(b"T=210 H=31%\n")
    await r.until(lambda: len(r.of(RecordKind.TELEMETRY, "usb-1")) == 2)
    assert bench.hub.is_connected("usb-1")
    assert r.kinds("usb-1") == [
        RecordKind.CONNECT, RecordKind.ATTRIBUTES, RecordKind.TELEMETRY, RecordKind.DISCONNECT,
        RecordKind.CONNECT, RecordKind.ATTRIBUTES, RecordKind.TELEMETRY,
    ]  # fmt: skip
    telemetry = adapter.self_telemetry()
    assert telemetry["serialPortsOpen"] == 1 and telemetry["serialReopens"] == 1

    await adapter.stop()
    await r.until(lambda: r.kinds("usb-1")[-1] is RecordKind.DISCONNECT)
    assert adapter.status()[0]["state"] == "closed"


async def test_absent_port_at_start_connects_when_plugged(bench: Bench) -> None:
    stable = bench.stable()
    adapter = await bench.adapter(
        {"name": "late", "path": str(stable.path), "device": "late-1", "converter": {"type": "json"}}
    )
    assert adapter.port("late").link.state is LinkState.WAITING and not bench.hub.is_connected("late-1")
    peer = stable.plug()
    await adapter.port("late").link.wait_for_state(LinkState.OPEN, timeout=5)
    peer.write(b'{"v": 1}\n')
    await bench.records.until(lambda: bool(bench.records.of(RecordKind.TELEMETRY, "late-1")))
    assert bench.records.kinds("late-1") == [RecordKind.CONNECT, RecordKind.TELEMETRY]

