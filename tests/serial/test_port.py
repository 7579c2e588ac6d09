"""SerialLink and FdLink on pseudo-terminals: reading, the write queue, unplug and replug under a
stable path, backoff, open errors, RS-485 where the driver lacks it, exclusive access."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_port_helpers import PtyPeer, StablePath

from gateway.serial.port import (
    DEFAULT_READ_BATCH_S,
    READ_BATCH_MAX_BYTES,
    FdLink,
    LinkClosedError,
    LinkSettings,
    LinkState,
    Rs485Settings,
    SerialLink,
    WriteQueueFull,
    _batch_reads,
    read_batch_for,
)

FAST = {"reopen_min_s": 0.01, "reopen_max_s": 0.04}


class Recorder:
    """on_data / on_state of a link, with a way to wait for bytes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.states: list[LinkState] = []
        self.changed = asyncio.Event()

    def on_data(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def on_state(self, state: LinkState) -> None:
        self.states.append(state)

    async def wait_bytes(self, n: int, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while len(self.data) < n:
                self.changed.clear()
                await self.changed.wait()
        return bytes(self.data)


@pytest.fixture
def peer() -> Iterator[PtyPeer]:
    p = PtyPeer()
    yield p
    p.close()


@pytest.fixture
def stable(tmp_path: Path) -> Iterator[StablePath]:
    s = StablePath(tmp_path / "by-id")
    yield s
    s.close()


@pytest.fixture
async def links() -> AsyncIterator[list[SerialLink]]:
    made: list[SerialLink] = []
    yield made
    for link in made:
        link.close()


def make(links: list[SerialLink], path: str | Path, rec: Recorder | None = None, **kw: object) -> SerialLink:
    settings_kw = {k: kw.pop(k) for k in list(kw) if k in LinkSettings.__dataclass_fields__}
    link = SerialLink(
        "test",
        LinkSettings(str(path), **settings_kw),  # type: ignore[arg-type]
        on_data=rec.on_data if rec else None,
        on_state=rec.on_state if rec else None,
        **{**FAST, **kw},  # type: ignore[arg-type]
    )
    links.append(link)
    return link


async def test_reads_and_writes(peer: PtyPeer, links: list[SerialLink]) -> None:
    rec = Recorder()
    link = make(links, peer.path, rec, baudrate=9600, parity="even", stopbits=2)
    link.start()
    assert link.state is LinkState.OPEN and rec.states == [LinkState.WAITING, LinkState.OPEN]
    peer.write(b"temp=21.5\n")
    assert await rec.wait_bytes(10) == b"temp=21.5\n"
    link.write(b"SET 1\n")
    assert await peer.line() == b"SET 1\n"
    stats = link.stats()
    assert (stats.bytes_in, stats.bytes_out, stats.state, stats.reopens) == (10, 6, LinkState.OPEN, 0)
    assert stats.as_dict()["state"] == "open" and stats.rs485 == "off"
    assert link.settings.bits_per_byte == 12 and link.bytes_per_second == 800


async def test_large_writes_queue_in_order(peer: PtyPeer, links: list[SerialLink]) -> None:
    link = make(links, peer.path, max_queued=1 << 20)
    link.start()
    blob = bytes(range(256)) * 1024  # 256 KiB: far more than the pty buffer takes at once
    link.write(blob[: 1 << 17])
    link.write(blob[1 << 17 :] + b"\xff\n")  # stays behind the first write
    assert link.queued_out > 0
    drained = asyncio.ensure_future(link.drain())
    got = await peer.read_until(b"\xff\n", timeout=10)
    await asyncio.wait_for(drained, 5)
    assert got == blob + b"\xff\n" and link.queued_out == 0
    assert link.stats().bytes_out == len(blob) + 2


async def test_write_queue_is_bounded(peer: PtyPeer, links: list[SerialLink]) -> None:
    link = make(links, peer.path, max_queued=4096)
    link.start()
    # nobody reads the far end: the pty fills up, then the queue
    chunk = b"x" * 1024
    with pytest.raises(WriteQueueFull):
        for _ in range(1000):
            link.write(chunk)
    assert 0 < link.queued_out <= 4096 + len(chunk)


async def test_unplug_then_replug_under_a_stable_path(stable: StablePath, links: list[SerialLink]) -> None:
    rec = Recorder()
    first = stable.plug()
    link = make(links, stable.path, rec)
    link.start()
    first.write(b"a")
    await rec.wait_bytes(1)

    stable.unplug()  # the USB adapter is pulled: EOF, and the path is gone
    await link.wait_for_state(LinkState.WAITING, timeout=5)
    assert "end of file" in link.last_error or "unplugged" in link.last_error
    with pytest.raises(LinkClosedError):
        link.write(b"lost")

    second = stable.plug()
    await link.wait_for_state(LinkState.OPEN, timeout=5)
    second.write(b"b")
    assert await rec.wait_bytes(2) == b"ab"
    link.write(b"c")
    assert await second.read_until(b"c") == b"c"
    stats = link.stats()
    assert stats.reopens == 1 and stats.state is LinkState.OPEN
    assert rec.states == [LinkState.WAITING, LinkState.OPEN, LinkState.WAITING, LinkState.OPEN]


async def test_absent_device_waits_with_growing_backoff(tmp_path: Path, links: list[SerialLink]) -> None:
    link = make(links, tmp_path / "nothing", reopen_min_s=1.0, reopen_max_s=4.0)
    link.start()
    assert link.state is LinkState.WAITING
    assert link.last_error == "no such device (not plugged in?)"
    delays = [link.next_attempt_in]
    for _ in range(4):
        link.retry_now()
        delays.append(link.next_attempt_in)
    assert [round(d or 0) for d in delays] == [1, 2, 4, 4, 4]
    assert link.stats().open_failures == 5 and link.stats().opens == 0
    link.close()
    assert link.state is LinkState.CLOSED and link.next_attempt_in is None


async def test_not_a_tty_is_an_open_error(tmp_path: Path, links: list[SerialLink]) -> None:
    plain = tmp_path / "file"
    plain.write_text("")
    link = make(links, plain)
    link.start()
    assert link.state is LinkState.WAITING and "ioctl" in link.last_error.lower()


async def test_second_opener_is_refused(peer: PtyPeer, links: list[SerialLink]) -> None:
    make(links, peer.path).start()
    other = make(links, peer.path)
    other.start()
    assert other.state is LinkState.WAITING and other.last_error == "in use by another program"


async def test_rs485_without_driver_support(
    peer: PtyPeer, links: list[SerialLink], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.serial"):
        link = make(links, peer.path, rs485=Rs485Settings(delay_before_tx_s=0.001))
        link.start()
    assert link.state is LinkState.OPEN and link.stats().rs485 == "unsupported"
    assert "no RS-485 direction control" in caplog.text
    link.close()

    strict = make(links, peer.path, rs485=Rs485Settings(required=True))
    strict.start()
    assert strict.state is LinkState.WAITING and "RS-485" in strict.last_error


async def test_close_drops_the_queue_and_stops(peer: PtyPeer, links: list[SerialLink]) -> None:
    rec = Recorder()
    link = make(links, peer.path, rec, max_queued=1 << 20)
    link.start()
    for _ in range(400):  # fill the pty, then the queue
        link.write(b"y" * 512)
    drained = asyncio.ensure_future(link.drain())
    link.close()
    with pytest.raises(LinkClosedError):
        await drained
    assert link.state is LinkState.CLOSED and link.stats().dropped_out > 0
    assert rec.states[-1] is LinkState.CLOSED
    link.start()  # a closed link may be started again
    assert link.state is LinkState.OPEN


async def test_fd_link_ends_at_eof() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    rec = Recorder()
    link = FdLink("device", master, bytes_per_second=960, on_data=rec.on_data, on_state=rec.on_state)
    link.start()
    os.write(slave, b"hi")
    assert await rec.wait_bytes(2) == b"hi"
    link.write(b"ho")
    assert os.read(slave, 10) == b"ho"
    os.close(slave)
    await link.wait_for_state(LinkState.CLOSED, timeout=5)
    assert rec.states == [LinkState.OPEN, LinkState.CLOSED] and link.bytes_per_second == 960


async def test_streaming_reads_are_batched_until_the_gateway_writes(peer: PtyPeer, links: list[SerialLink]) -> None:
    rec = Recorder()
    # at 300 baud a pause may last up to 1024 bytes' worth (34 s): longer than this test
    link = make(links, peer.path, rec, baudrate=300, read_batch_s=60.0)
    link.start()
    peer.write(b"a")
    await rec.wait_bytes(1)  # the first bytes after a quiet spell come at once
    peer.write(b"b")
    for _ in range(20):
        await asyncio.sleep(0)  # loop iterations: a registered reader would run in them
    assert bytes(rec.data) == b"a" and link.reads == 1  # left alone after a read
    link.write(b"?")  # a question: its answer must not wait for the batch
    assert await rec.wait_bytes(2) == b"ab" and link.reads == 2
    assert await peer.read_until(b"?") == b"?"


async def test_streaming_ports_are_read_by_one_shared_timer(links: list[SerialLink]) -> None:
    """Batched ports are read together by the loop's one timer, without touching epoll while they
    stream; a port found quiet at the timer is watched again."""
    loop = asyncio.get_running_loop()
    peers = [PtyPeer(), PtyPeer()]
    try:
        recs = [Recorder(), Recorder()]
        # 300 baud: a batch lasts 1024 bytes' worth (34 s), so only this test fires the timer
        pair = [make(links, p.path, r, baudrate=300, read_batch_s=60.0) for p, r in zip(peers, recs, strict=True)]
        for link in pair:
            link.start()
        for peer, rec in zip(peers, recs, strict=True):
            peer.write(b"a")
            await rec.wait_bytes(1)  # read at once, then batched
        batch = _batch_reads(loop)
        assert list(batch.members) == pair and all(link._batched for link in pair)
        timer = batch._timer
        assert timer is not None

        def fire() -> None:  # what the timer does when it is due
            assert batch._timer is not None
            batch._timer.cancel()
            batch._tick()

        watched: list[int] = []
        real_add = loop.add_reader

        def add_reader(fd: int, callback: Any, *args: Any) -> None:
            watched.append(fd)
            real_add(fd, callback, *args)

        loop.add_reader = add_reader  # type: ignore[method-assign,assignment]
        try:
            for peer in peers:
                peer.write(b"b")
            for link in pair:  # the bytes are in the driver (nobody reads them yet)
                assert link._fd is not None
                await asyncio.wait_for(loop.run_in_executor(None, select.select, [link._fd], [], [], 5), 10)
            fire()
            assert [bytes(r.data) for r in recs] == [b"ab", b"ab"] and [link.reads for link in pair] == [2, 2]
            assert watched == [] and list(batch.members) == pair  # still streaming: no epoll change
            fire()  # nothing came meanwhile: both are watched again, the timer stops
            assert sorted(watched) == sorted(link._fd or -1 for link in pair)
            assert batch.members == {} and batch._timer is None and not any(link._batched for link in pair)
        finally:
            del loop.add_reader
        peers[0].write(b"c")  # and a quiet port's next bytes come at once
        assert await recs[0].wait_bytes(3) == b"abc"
    finally:
        for peer in peers:
            peer.close()


def test_read_batch_shrinks_on_fast_lines() -> None:
    assert read_batch_for(11520) == DEFAULT_READ_BATCH_S
    assert read_batch_for(400_000) == READ_BATCH_MAX_BYTES / 400_000
    assert read_batch_for(11520, 0) == 0.0
