"""Serial ports on the event loop: opened with pyserial, read and written without threads, reopened
with backoff when the device goes away.

A :class:`SerialLink` owns one port. Its file descriptor is watched with ``loop.add_reader``; what
arrives goes to ``on_data(bytes)`` as soon as the kernel has it. Writes are queued and flushed
with ``loop.add_writer`` when the driver's buffer is full, so :meth:`SerialLink.write` never
blocks; the queue keeps whole writes in order, which is what keeps frames of different senders
from interleaving. Read errors, EOF (a hung-up tty, a closed pty) and write errors (``EIO``,
``ENXIO`` after a USB adapter was pulled) close the port; it is reopened with exponential backoff
(``reopen_min_s`` doubling up to ``reopen_max_s``) until the device is back, e.g. under the same
``/dev/serial/by-id/...`` link. ``on_state`` hears every change of :class:`LinkState`.

One timer per port while it waits; nothing runs while a port is open and idle.

Reads are batched while a port streams: after a read the descriptor is left alone for
``read_batch_s`` (50 ms; less on fast lines, so that the driver's buffer cannot fill), so a
saturated 115200-baud port costs 20 reads a second instead of one per frame. The first bytes
after a quiet spell are read at once, and so are the bytes after every write: a write usually
asks for an answer (a CoAP ACK or response, an RPC reply line), which must not wait. Streaming
ports are read by one shared timer per loop (:class:`_BatchReads`), not watched: a port that keeps
streaming costs one ``read`` per batch and no ``epoll_ctl``; one that has gone quiet (the read
finds nothing) is watched again.

:class:`FdLink` is the same byte stream over a descriptor someone else opened (the master side of
a pseudo-terminal: the device end in tests, benchmarks and the simulator). It does not reopen.

Caveats: RS-485 direction control is the kernel's (``TIOCSRS485``), set through pyserial; drivers
without it (and pseudo-terminals) refuse it: the port then opens without it, with a warning, unless
``Rs485Settings.required``. Adapters that switch direction in hardware need no setting at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import serial
import serial.rs485

log = logging.getLogger("gateway.serial")

Parity = Literal["none", "even", "odd", "mark", "space"]
ByteSize = Literal[5, 6, 7, 8]

PARITIES: Final[dict[str, str]] = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}
STOP_BITS: Final[dict[float, float]] = {
    1: serial.STOPBITS_ONE,
    1.5: serial.STOPBITS_ONE_POINT_FIVE,
    2: serial.STOPBITS_TWO,
}

#: Bytes asked of the kernel per read (a tty delivers what it has; at 115200 baud that is little).
READ_SIZE: Final = 4096
#: Default bound of the write queue: a slow or stuck port refuses writes beyond it.
DEFAULT_MAX_QUEUED: Final = 64 * 1024
#: While a port only receives, it is read at most this often (s): see :func:`read_batch_for`.
DEFAULT_READ_BATCH_S: Final = 0.05
#: ... and never so seldom that more than this many bytes wait in the driver (its buffer is 4 KiB).
READ_BATCH_MAX_BYTES: Final = 1024


def read_batch_for(bytes_per_second: float, batch_s: float = DEFAULT_READ_BATCH_S) -> float:
    """How long a streaming port is left alone after a read: ``batch_s``, shorter on fast lines.

    >>> read_batch_for(11520), round(read_batch_for(400_000), 4)
    (0.05, 0.0026)
    """
    return min(batch_s, READ_BATCH_MAX_BYTES / bytes_per_second) if batch_s > 0 else 0.0


class LinkState(enum.StrEnum):
    """Where a port is: ``closed`` (not started, or stopped), ``waiting`` (the device is absent or
    failed; retried with backoff), ``open``."""

    CLOSED = "closed"
    WAITING = "waiting"
    OPEN = "open"


class LinkError(ConnectionError):
    """A write the link cannot take."""


class LinkClosedError(LinkError):
    """The port is not open (the device is unplugged, or the link was stopped)."""


class WriteQueueFull(LinkError):
    """The port's write queue is full: the device does not read fast enough (or flow control holds it)."""


@dataclass(frozen=True, slots=True)
class Rs485Settings:
    """Kernel RS-485 direction control (``TIOCSRS485``): RTS drives the transceiver's driver enable.

    ``required``: refuse to open the port when the driver cannot do it (default: open without it
    and warn: the adapter may switch direction in hardware).
    """

    rts_level_for_tx: bool = field(default=True, metadata={"doc": "RTS level while sending"})
    rts_level_for_rx: bool = field(default=False, metadata={"doc": "RTS level while receiving"})
    delay_before_tx_s: float = field(default=0.0, metadata={"doc": "RTS settle time, s", "min": 0, "max": 1})
    delay_before_rx_s: float = field(default=0.0, metadata={"doc": "RTS hold time after, s", "min": 0, "max": 1})
    required: bool = field(default=False, metadata={"doc": "refuse to open the port without direction control"})

    def to_pyserial(self) -> serial.rs485.RS485Settings:
        return serial.rs485.RS485Settings(
            rts_level_for_tx=self.rts_level_for_tx,
            rts_level_for_rx=self.rts_level_for_rx,
            delay_before_tx=self.delay_before_tx_s or None,
            delay_before_rx=self.delay_before_rx_s or None,
        )


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How to open a port: ``path`` (best a stable ``/dev/serial/by-id/...`` link) and its line settings."""

    path: str
    baudrate: int = 115200
    bytesize: ByteSize = 8
    parity: Parity = "none"
    stopbits: float = 1
    rtscts: bool = False
    xonxoff: bool = False
    rs485: Rs485Settings | None = None
    #: Lock the port (``flock``) so that a second program cannot open it behind our back.
    exclusive: bool = True

    def __post_init__(self) -> None:
        if self.parity not in PARITIES:
            raise ValueError(f"parity: expected one of {', '.join(PARITIES)}, got {self.parity!r}")
        if self.stopbits not in STOP_BITS:
            raise ValueError(f"stopbits: expected 1, 1.5 or 2, got {self.stopbits!r}")
        if self.bytesize not in (5, 6, 7, 8):
            raise ValueError(f"bytesize: expected 5 to 8, got {self.bytesize!r}")
        if self.baudrate <= 0:
            raise ValueError(f"baudrate: expected a positive number, got {self.baudrate!r}")

    @property
    def bits_per_byte(self) -> float:
        """Bits on the line per byte: start bit, data bits, parity bit, stop bits (10 for 8N1)."""
        return 1 + self.bytesize + (self.parity != "none") + self.stopbits

    @property
    def bytes_per_second(self) -> float:
        """The line's raw byte rate (11,520 bytes/s at 115200 8N1)."""
        return self.baudrate / self.bits_per_byte


@dataclass(frozen=True, slots=True)
class LinkStats:
    """A snapshot of one link for ``edge-gateway status`` and gateway telemetry."""

    name: str
    path: str
    state: LinkState
    last_error: str
    bytes_in: int
    bytes_out: int
    opens: int
    """Successful opens; every one after the first is a reopen."""
    open_failures: int
    queued_out: int
    dropped_out: int
    """Bytes that were queued for the port when it was lost."""
    rs485: str
    """``kernel`` (direction control active), ``unsupported`` (asked for, the driver refused) or ``off``."""

    @property
    def reopens(self) -> int:
        return max(0, self.opens - 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "state": str(self.state),
            "lastError": self.last_error,
            "bytesIn": self.bytes_in,
            "bytesOut": self.bytes_out,
            "reopens": self.reopens,
            "openFailures": self.open_failures,
            "queuedOut": self.queued_out,
            "droppedOut": self.dropped_out,
            "rs485": self.rs485,
        }


def links_telemetry(links: Iterable[SerialLink]) -> dict[str, Any]:
    """Gateway telemetry for serial ports of any kind: how many are open / waiting, reopens, and
    ``serialState.<port>`` per port."""
    values: dict[str, Any] = {"serialPortsOpen": 0, "serialPortsWaiting": 0, "serialReopens": 0}
    for link in links:
        stats = link.stats()
        values["serialPortsOpen"] += stats.state is LinkState.OPEN
        values["serialPortsWaiting"] += stats.state is LinkState.WAITING
        values["serialReopens"] += stats.reopens
        values[f"serialState.{stats.name}"] = str(stats.state)
    return values


DataCallback = Callable[[bytes], None]
StateCallback = Callable[[LinkState], None]


class ByteLink(Protocol):
    """What sits on a byte stream (the line sensor adapter, the slipmux transport) needs of it."""

    name: str
    on_data: DataCallback | None
    on_state: StateCallback | None

    @property
    def state(self) -> LinkState: ...

    @property
    def bytes_per_second(self) -> float: ...

    @property
    def queued_out(self) -> int: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def write(self, data: bytes) -> None: ...


class _BatchReads:
    """The streaming ports of one event loop, read together by one timer (see the module docstring).

    ``join(stream, batch)``: read ``stream`` again at the latest ``batch`` seconds from now (when
    the timer fires for any member, every member is read); ``leave(stream)`` takes it out.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.members: dict[_FdStream, None] = {}  # ordered: ports are read in the order they joined
        self._timer: asyncio.TimerHandle | None = None

    def join(self, stream: _FdStream, batch: float) -> None:
        self.members[stream] = None
        due = self.loop.time() + batch
        timer = self._timer
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(due, self._tick)

    def leave(self, stream: _FdStream) -> None:
        self.members.pop(stream, None)
        if not self.members and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        members, self.members = self.members, {}
        for stream in members:
            stream._batch_read()


_BATCH_READS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _BatchReads] = weakref.WeakKeyDictionary()


def _batch_reads(loop: asyncio.AbstractEventLoop) -> _BatchReads:
    batch = _BATCH_READS.get(loop)
    if batch is None:
        batch = _BATCH_READS[loop] = _BatchReads(loop)
    return batch


class _FdStream:
    """Reading, the write queue, counters and state over one non-blocking descriptor."""

    def __init__(
        self,
        name: str,
        *,
        on_data: DataCallback | None,
        on_state: StateCallback | None,
        max_queued: int,
        read_batch_s: float,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.name = name
        self.on_data = on_data
        self.on_state = on_state
        self.max_queued = max_queued
        self.read_batch_s = read_batch_s
        self._loop = loop
        self._fd: int | None = None
        self._batched = False  # streaming: read by the loop's _BatchReads, the descriptor not watched
        self._opened = 0  # descriptors attached so far (a reopen may reuse the number)
        self._out = bytearray()
        self._writing = False
        self._drained: list[asyncio.Future[None]] = []
        self._state_waiters: list[tuple[LinkState, asyncio.Future[None]]] = []
        self._state: LinkState = LinkState.CLOSED
        self.last_error = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped_out = 0
        self.reads = 0
        self.writes = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def queued_out(self) -> int:
        """Bytes accepted by :meth:`write` and not yet handed to the driver."""
        return len(self._out)

    @property
    def bytes_per_second(self) -> float:
        """The line's byte rate (what read batching and, above it, CoAP timeouts follow)."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------------

    def _set_state(self, state: LinkState) -> None:
        if state is self._state:
            return
        self._state = state
        waiters, self._state_waiters = self._state_waiters, []
        for wanted, future in waiters:
            if wanted is state:
                if not future.done():
                    future.set_result(None)
            else:
                self._state_waiters.append((wanted, future))
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("serial %s: state listener failed", self.name, extra={"port": self.name})

    async def wait_for_state(self, state: LinkState, timeout: float | None = None) -> None:
        """Return once the link is in ``state`` (at once if it is); TimeoutError after ``timeout`` s."""
        if self._state is state:
            return
        future: asyncio.Future[None] = self.loop.create_future()
        self._state_waiters.append((state, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            with contextlib.suppress(ValueError):
                self._state_waiters.remove((state, future))

    # -- descriptor -------------------------------------------------------------------------------

    def _attach(self, fd: int) -> None:
        self._fd = fd
        self._opened += 1
        self.loop.add_reader(fd, self._readable)
        self._set_state(LinkState.OPEN)

    def _detach(self) -> int | None:
        """Stop watching the descriptor and drop the queue; returns the descriptor (not closed)."""
        fd, self._fd = self._fd, None
        if self._batched:
            self._batched = False
            _batch_reads(self.loop).leave(self)
        elif fd is not None:
            self.loop.remove_reader(fd)
        if fd is not None and self._writing:
            self.loop.remove_writer(fd)
        self._writing = False
        self.dropped_out += len(self._out)
        self._out.clear()
        self._wake_drained(LinkClosedError(f"serial port {self.name} closed"))
        return fd

    def _lost(self, reason: str) -> None:
        """The port failed (read/write error, EOF): subclasses close it and decide what follows."""
        raise NotImplementedError

    def _readable(self) -> None:
        """The watched descriptor has bytes."""
        fd = self._fd
        if fd is not None and not self._batched:
            self._read(fd, watched=True)

    def _batch_read(self) -> None:
        """The batch is over: read what the line brought meanwhile."""
        fd = self._fd
        if fd is not None and self._batched:
            self._batched = False
            self._read(fd, watched=False)

    def _read(self, fd: int, *, watched: bool) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            if not watched:  # the line went quiet: wait for its next bytes
                self.loop.add_reader(fd, self._readable)
            return
        except OSError as exc:
            self._lost(_describe(exc))
            return
        if not data:
            if not watched:
                # No bytes: a tty in pyserial's non-blocking mode (VMIN=0) says so with an empty read,
                # not EAGAIN. Watch it again; if it hung up, the watched read says so.
                self.loop.add_reader(fd, self._readable)
                return
            self._lost("end of file (device hung up or unplugged)")
            return
        self.reads += 1
        self.bytes_in += len(data)
        writes = self.writes
        opened = self._opened
        if self.on_data is not None:
            try:
                self.on_data(data)
            except Exception:
                log.exception("serial %s: data listener failed", self.name, extra={"port": self.name})
        if self._opened != opened or self._fd != fd:  # closed or reopened inside on_data
            return
        if self.writes != writes:
            # the listener just wrote something (an ACK, a reply): its answer must not wait
            if not watched:
                self.loop.add_reader(fd, self._readable)
            return
        batch = read_batch_for(self.bytes_per_second, self.read_batch_s)
        if batch > 0:
            # let the line fill the driver's buffer for a while: one read for many frames
            if watched:
                self.loop.remove_reader(fd)
            self._batched = True
            _batch_reads(self.loop).join(self, batch)
        elif not watched:
            self.loop.add_reader(fd, self._readable)

    def _read_again(self) -> None:
        """Stop batching: watch the descriptor again (its next bytes are read at once)."""
        if self._batched:
            self._batched = False
            _batch_reads(self.loop).leave(self)
            if self._fd is not None:
                self.loop.add_reader(self._fd, self._readable)

    # -- writing ----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the port (whole and in order); what the driver takes now is written now.

        Raises :class:`LinkClosedError` when the port is not open (or failed just now: the link
        then goes on to reopen it) and :class:`WriteQueueFull` when ``max_queued`` bytes are
        already waiting (nothing of ``data`` is then written).
        """
        fd = self._fd
        if fd is None:
            raise LinkClosedError(f"serial port {self.name} is {self._state}")
        if not data:
            return
        self.writes += 1
        if self._batched:  # an answer is likely to follow: listen at once
            self._read_again()
        if self._out:
            if len(self._out) + len(data) > self.max_queued:
                raise WriteQueueFull(f"serial port {self.name}: {len(self._out)} bytes already queued")
            self._out += data
            return
        try:
            written = os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as exc:
            reason = _describe(exc)
            # not from inside the caller's call: it may be in the middle of its own bookkeeping
            self.loop.call_soon(self._lost_if_current, fd, reason)
            raise LinkClosedError(f"serial port {self.name}: {reason}") from None
        self.bytes_out += written
        if written < len(data):
            # The rest is queued even beyond max_queued: half a write on the line is worse.
            self._out += memoryview(data)[written:]
            self._writing = True
            self.loop.add_writer(fd, self._writable)

    def _lost_if_current(self, fd: int, reason: str) -> None:
        if self._fd == fd:
            self._lost(reason)

    def _writable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            written = os.write(fd, self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(_describe(exc))
            return
        self.bytes_out += written
        del self._out[:written]
        if not self._out:
            self._writing = False
            self.loop.remove_writer(fd)
            self._wake_drained(None)

    async def drain(self) -> None:
        """Return once every queued byte went to the driver; LinkClosedError if the port closes first."""
        if not self._out:
            if self._fd is None:
                raise LinkClosedError(f"serial port {self.name} is {self._state}")
            return
        future: asyncio.Future[None] = self.loop.create_future()
        self._drained.append(future)
        await future

    def _wake_drained(self, exc: Exception | None) -> None:
        waiters, self._drained = self._drained, []
        for future in waiters:
            if future.done():
                continue
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)


def _describe(exc: OSError) -> str:
    if exc.errno in (errno.EIO, errno.ENXIO, errno.ENODEV):
        return f"{exc.strerror or 'I/O error'} (device unplugged?)"
    return exc.strerror or str(exc)


class SerialLink(_FdStream):
    """One serial port, opened with pyserial and kept open (see the module docstring).

    ``start()`` opens it (or starts waiting for it), ``close()`` closes it for good. Stats for
    status and telemetry: :meth:`stats`.
    """

    def __init__(
        self,
        name: str,
        settings: LinkSettings,
        *,
        on_data: DataCallback | None = None,
        on_state: StateCallback | None = None,
        reopen_min_s: float = 1.0,
        reopen_max_s: float = 30.0,
        max_queued: int = DEFAULT_MAX_QUEUED,
        read_batch_s: float = DEFAULT_READ_BATCH_S,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not 0 < reopen_min_s <= reopen_max_s:
            raise ValueError(f"reopen delays: need 0 < min <= max, got {reopen_min_s}, {reopen_max_s}")
        super().__init__(
            name, on_data=on_data, on_state=on_state, max_queued=max_queued, read_batch_s=read_batch_s, loop=loop
        )
        self.settings = settings
        self.reopen_min_s = reopen_min_s
        self.reopen_max_s = reopen_max_s
        self._serial: serial.Serial | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._opened_mono = 0.0
        self._rs485 = "off"
        self._warned_rs485 = False
        self.opens = 0
        self.open_failures = 0

    @property
    def bytes_per_second(self) -> float:
        return self.settings.bytes_per_second

    @property
    def next_attempt_in(self) -> float | None:
        """Seconds until the next open attempt while waiting, else None."""
        if self._timer is None:
            return None
        return max(0.0, self._timer.when() - self.loop.time())

    def stats(self) -> LinkStats:
        return LinkStats(
            name=self.name,
            path=self.settings.path,
            state=self._state,
            last_error=self.last_error,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            opens=self.opens,
            open_failures=self.open_failures,
            queued_out=len(self._out),
            dropped_out=self.dropped_out,
            rs485=self._rs485,
        )

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the port now; if that fails, keep trying with backoff (state ``waiting``)."""
        if self._state is not LinkState.CLOSED:
            return
        self._set_state(LinkState.WAITING)
        self._try_open()

    def retry_now(self) -> None:
        """While waiting: try to open the port now instead of at the end of the backoff delay
        (e.g. when udev reports that a device appeared). The backoff keeps growing if it fails."""
        if self._state is LinkState.WAITING:
            if self._timer is not None:
                self._timer.cancel()
            self._try_open()

    def close(self) -> None:
        """Close the port and stop reopening it (state ``closed``). Queued output is dropped."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_port()
        self._set_state(LinkState.CLOSED)

    def _try_open(self) -> None:
        self._timer = None
        if self._state is not LinkState.WAITING:
            return
        try:
            port = self._open()
        except Exception as exc:  # pyserial raises SerialException, ValueError, OSError
            self.open_failures += 1
            reason = _open_error(exc)
            if reason != self.last_error:
                log.warning(
                    "serial %s: cannot open %s: %s; retrying",
                    self.name, self.settings.path, reason, extra={"port": self.name},
                )  # fmt: skip
            self.last_error = reason
            self._schedule_reopen()
            return
        self._serial = port
        self.opens += 1
        self._opened_mono = time.monotonic()
        if self.opens > 1:
            log.info("serial %s: %s open again", self.name, self.settings.path, extra={"port": self.name})
        else:
            log.info("serial %s: %s open", self.name, self.settings.path, extra={"port": self.name})
        self._attach(port.fileno())

    def _open(self) -> serial.Serial:
        s = self.settings
        port = serial.Serial()
        port.port = s.path
        port.baudrate = s.baudrate
        port.bytesize = s.bytesize
        port.parity = PARITIES[s.parity]
        port.stopbits = STOP_BITS[s.stopbits]
        port.rtscts = s.rtscts
        port.xonxoff = s.xonxoff
        port.exclusive = s.exclusive
        port.timeout = 0
        port.write_timeout = 0
        port.open()
        self._rs485 = "off"
        if s.rs485 is not None:
            try:
                port.rs485_mode = s.rs485.to_pyserial()
            except (ValueError, OSError, NotImplementedError) as exc:
                if s.rs485.required:
                    port.close()
                    raise OSError(errno.ENOTTY, f"RS-485 direction control not available: {exc}") from None
                self._rs485 = "unsupported"
                if not self._warned_rs485:
                    self._warned_rs485 = True
                    log.warning(
                        "serial %s: the driver has no RS-485 direction control (%s); opened without it",
                        self.name, exc, extra={"port": self.name},
                    )  # fmt: skip
            else:
                self._rs485 = "kernel"
        return port

    def _schedule_reopen(self) -> None:
        delay = min(self.reopen_max_s, self.reopen_min_s * 2.0 ** min(self._failures, 30))
        self._failures += 1
        self._timer = self.loop.call_later(delay, self._try_open)

    def _lost(self, reason: str) -> None:
        if self._fd is None:
            return
        # A port that stayed open a while starts over at the shortest delay; one that fails
        # right after opening keeps backing off.
        if time.monotonic() - self._opened_mono >= self.reopen_max_s:
            self._failures = 0
        log.warning("serial %s: lost %s: %s", self.name, self.settings.path, reason, extra={"port": self.name})
        self.last_error = reason
        self._close_port()
        self._set_state(LinkState.WAITING)
        if self._state is LinkState.WAITING and self._timer is None:
            self._schedule_reopen()

    def _close_port(self) -> None:
        self._detach()
        port, self._serial = self._serial, None
        if port is None:
            return
        # Discard unsent output first: closing a tty otherwise waits for it to drain (up to 30 s
        # when flow control holds it).
        with contextlib.suppress(Exception):
            port.reset_output_buffer()
        with contextlib.suppress(Exception):
            port.close()


def _open_error(exc: Exception) -> str:
    errno_ = getattr(exc, "errno", None)
    if errno_ == errno.ENOENT:
        return "no such device (not plugged in?)"
    if errno_ in (errno.EACCES, errno.EPERM):
        return "permission denied (is the service user in the dialout group?)"
    if errno_ == errno.EBUSY or "exclusively lock" in str(exc):
        return "in use by another program"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class FdLink(_FdStream):
    """A byte stream over a descriptor opened elsewhere (a pty master): open until EOF or :meth:`close`.

    It takes ownership of ``fd`` (closes it) and makes it non-blocking. ``bytes_per_second`` is
    the rate the peer's port is set to (sizes and timeouts above it follow it).
    """

    def __init__(
        self,
        name: str,
        fd: int,
        *,
        bytes_per_second: float = 115200 / 10,
        on_data: DataCallback | None = None,
        on_state: StateCallback | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        read_batch_s: float = DEFAULT_READ_BATCH_S,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(
            name, on_data=on_data, on_state=on_state, max_queued=max_queued, read_batch_s=read_batch_s, loop=loop
        )
        os.set_blocking(fd, False)
        self._owned: int | None = fd
        self._rate = bytes_per_second

    @property
    def bytes_per_second(self) -> float:
        return self._rate

    def start(self) -> None:
        if self._owned is not None and self._fd is None and self._state is LinkState.CLOSED:
            self._attach(self._owned)

    def close(self) -> None:
        self._detach()
        fd, self._owned = self._owned, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._set_state(LinkState.CLOSED)

    def _lost(self, reason: str) -> None:
        self.last_error = reason
        self.close()
