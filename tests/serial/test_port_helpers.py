"""Pseudo-terminals standing in for UARTs: the device end of a port, and a by-id style link to it.

The gateway opens a pty's slave path (``/dev/pts/N``) exactly as it opens a real port; the test
is the device on the master side. Closing the master is an unplug: the gateway reads EOF and
``/dev/pts/N`` disappears. A symlink (``by-id/<name>``) switched to a new pty is a replug under a
stable path. Also the helpers' own checks (imported by the other serial tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

__all__ = ["PtyPeer", "StablePath"]


class PtyPeer:
    """The device end of a pseudo-terminal; :attr:`path` is what the gateway opens."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)
        self.received = bytearray()
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self.closed = False

    def write(self, data: bytes) -> None:
        """Send ``data`` to the gateway (all of it: small test writes fit the pty's buffer)."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                raise AssertionError("the pty's buffer is full: write less at a time") from None
            view = view[n:]

    def start_reading(self) -> None:
        """Collect what the gateway writes (call once the gateway has the port open)."""
        if self._reading:
            return
        self._reading = True
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._stop_reading()
        self.received += data
        assert self._changed is not None
        self._changed.set()

    def _stop_reading(self) -> None:
        if self._reading and not self.closed and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.master)
        self._reading = False

    async def read_until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        """Everything received up to and including the first ``marker``; it is consumed."""
        self.start_reading()
        assert self._changed is not None
        async with asyncio.timeout(timeout):
            while (index := self.received.find(marker)) < 0:
                self._changed.clear()
                await self._changed.wait()
        end = index + len(marker)
        data = bytes(self.received[:end])
        del self.received[:end]
        return data

    async def line(self, timeout: float = 5.0) -> bytes:
        return await self.read_until(b"\n", timeout)

    def close(self) -> None:
        """Unplug: the gateway sees EOF and the slave path goes away."""
        if self.closed:
            return
        self._stop_reading()
        self.closed = True
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class StablePath:
    """A ``/dev/serial/by-id/...`` stand-in: a symlink that follows the device across replugs."""

    def __init__(self, directory: Path, name: str = "usb-Test_Sensor_0001-if00-port0") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name
        self.peer: PtyPeer | None = None

    def plug(self) -> PtyPeer:
        self.peer = PtyPeer()
        tmp = self.path.with_suffix(".new")
        tmp.symlink_to(self.peer.path)
        tmp.replace(self.path)  # atomically, as udev does
        return self.peer

    def unplug(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self) -> None:
        self.unplug()


async def test_peer_round_trip() -> None:
    peer = PtyPeer()
    try:
        fd = os.open(peer.path, os.O_RDWR | os.O_NOCTTY)
        try:
            import termios
            import tty

            tty.setraw(fd, termios.TCSANOW)
            os.write(fd, b"from gateway\n")
            assert await peer.line() == b"from gateway\n"
            peer.write(b"to gateway\n")
            assert os.read(fd, 100) == b"to gateway\n"
        finally:
            os.close(fd)
    finally:
        peer.close()
    assert not os.path.exists(peer.path)


async def test_stable_path_follows_replug(tmp_path: Path) -> None:
    stable = StablePath(tmp_path / "by-id")
    first = stable.plug()
    assert os.path.realpath(stable.path) == first.path
    stable.unplug()
    assert not stable.path.exists()
    second = stable.plug()
    try:
        assert os.path.realpath(stable.path) == second.path
    finally:
        stable.close()
