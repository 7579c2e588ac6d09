"""Plain serial sensors: one port, one ThingsBoard device, text lines in, telemetry out.

For each ``protocol = "lines"`` port, :class:`SerialSensorAdapter` opens a :class:`SerialLink`,
splits what arrives into lines (:class:`LineSplitter`) and turns each line into telemetry and
attributes with the port's converter (:func:`~gateway.serial.converters.build_converter`). The
device is connected in the hub (``hub.connect``) when the port opens, with the converter's static
attributes (units) once, and disconnected when the port is lost; it comes back by itself when the
port is reopened.

What comes down from ThingsBoard becomes written lines:

- an RPC whose method the port configures (``rpc.<method>``) is rendered through its
  :class:`~gateway.serial.converters.LineTemplate` and written. Without a ``reply`` pattern the
  answer is ``{"written": <bytes>}`` once the driver took the line; with one, the first received
  line matching it (within ``timeout_s``) is the answer: ``{"reply": <line>, <named groups>}``,
  and that line is not converted. RPCs waiting for replies take turns per port.
- a shared attribute update becomes one line per attribute through ``attribute_template``.

A sensor that sends garbage costs nothing but counters and a rate-limited warning: a line the
converter refuses is counted (``badLines``), an over-long one is dropped up to the next
terminator (``overlongLines``). Nothing a device sends raises out of the adapter.

Telemetry is queued with ``hub.telemetry_nowait`` straight from the port's read callback: no
task per line. Connects and disconnects of a port run in order on that port's own small chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.core.clock import Clock
from gateway.core.hub import DeviceHub, RpcError
from gateway.logs import RateLimited
from gateway.serial.config import SerialPortConfig
from gateway.serial.converters import ConversionError, Converter, LineTemplate, Reading, TemplateError, build_converter
from gateway.serial.port import LinkClosedError, LinkError, LinkState, SerialLink, links_telemetry

log = logging.getLogger("gateway.serial.sensors")

#: Lines kept while the device is being connected in the hub (normally none or a few).
MAX_EARLY_LINES: Final = 256
#: How far ahead of the clock a port's line stamps may run to stay distinct (see SensorPort._stamps).
MAX_STAMP_LEAD_MS: Final = 1000
_EXCERPT: Final = 48


class LineSplitter:
    """Bytes in, complete lines out (terminator removed), in memory bounded by ``max_length``.

    A line longer than ``max_length`` is dropped and counted once (``overlong``); what follows it
    up to the next terminator is dropped too, so the splitter is back in step at the next line.
    The result does not depend on how the bytes were cut into pieces.

    >>> s = LineSplitter(b"\\r\\n", 8)
    >>> s.feed(b"t=1\\r"), s.feed(b"\\nt=2\\r\\nt=3")
    ([], [b't=1', b't=2'])
    """

    __slots__ = ("_buffer", "_discarding", "max_length", "overlong", "terminator")

    def __init__(self, terminator: bytes, max_length: int) -> None:
        if not terminator:
            raise ValueError("the line terminator must not be empty")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.terminator = terminator
        self.max_length = max_length
        self.overlong = 0
        self._buffer = b""
        self._discarding = False

    def reset(self) -> None:
        """Forget a partial line (after the port was reopened)."""
        self._buffer = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes received after the last complete line (the start of the next one)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        parts = buffer.split(self.terminator)
        tail = parts.pop()
        lines: list[bytes] = []
        for part in parts:
            if self._discarding:
                self._discarding = False  # the rest of an over-long line
            elif len(part) > self.max_length:
                self.overlong += 1
            else:
                lines.append(part)
        # the tail may end with the start of a terminator split between two reads
        keep = len(self.terminator) - 1
        if len(tail) > self.max_length + keep:
            if not self._discarding:
                self.overlong += 1
                self._discarding = True
            tail = tail[len(tail) - keep :] if keep else b""
        self._buffer = tail
        return lines


@dataclass(frozen=True, slots=True)
class RpcMethod:
    template: LineTemplate
    reply: re.Pattern[str] | None
    timeout_s: float


def _excerpt(line: bytes) -> str:
    text = line[:_EXCERPT].decode("utf-8", errors="replace")
    return repr(text + ("..." if len(line) > _EXCERPT else ""))


class SensorPort:
    """One ``lines`` port: its link, converter, counters and the device it stands for."""

    def __init__(self, adapter: SerialSensorAdapter, config: SerialPortConfig) -> None:
        self.adapter = adapter
        self.config = config
        self.name = config.name
        self.device = config.device
        self.converter: Converter = build_converter(config.converter_config(), where=f"{config.name}.converter")
        self.splitter = LineSplitter(config.terminator.encode(), config.max_line_length)
        terminator = config.line_write_terminator
        self.methods = {
            method: RpcMethod(
                LineTemplate(spec.template, terminator=terminator),
                re.compile(spec.reply) if spec.reply else None,
                spec.timeout_s,
            )
            for method, spec in config.rpc.items()
        }
        self.attribute_template = (
            LineTemplate(config.attribute_template, terminator=terminator) if config.attribute_template else None
        )
        self.attribute_keys = frozenset(config.attribute_keys)
        self.link = SerialLink(
            config.name,
            config.link_settings(),
            on_data=self._data,
            on_state=self._state,
            reopen_min_s=config.reopen_min_s,
            reopen_max_s=config.reopen_max_s,
        )
        self.ready = False  # connected in the hub: lines go out as telemetry
        self._last_ts = 0  # the last stamp given to a line (ms): stamps only go up
        self._early: list[tuple[bytes, int | None]] = []  # lines (and stamps) before the connect
        self._reply: tuple[re.Pattern[str], asyncio.Future[dict[str, Any]]] | None = None
        self._rpc_turn = asyncio.Lock()
        self._chain: asyncio.Future[None] | None = None  # the last connect/disconnect step
        self._attribute_tasks: set[asyncio.Task[None]] = set()
        self._watched: asyncio.Future[None] | None = None
        self.lines = 0
        self.bad_lines = 0
        self.early_dropped = 0
        self.rpcs = 0
        self.rpc_errors = 0
        self.attribute_lines = 0
        self.last_bad_line = ""

    # -- link callbacks -----------------------------------------------------------------------------

    def _state(self, state: LinkState) -> None:
        if state is LinkState.OPEN:
            self.splitter.reset()
            self._then(self._connect)
        elif self.adapter.hub.is_connected(self.device) or self.ready or self._chain is not None:
            self.ready = False
            self._early.clear()
            if self._reply is not None and not self._reply[1].done():
                self._reply[1].set_exception(RpcError("offline", f"serial port {self.name} closed"))
            self._then(self._disconnect)

    def _data(self, data: bytes) -> None:
        lines = self.splitter.feed(data)
        if not lines:
            return
        stamps = self._stamps(lines)
        if self._reply is not None or not self.ready:
            for line, ts_ms in zip(lines, stamps, strict=True):
                self._line(line, ts_ms)
            return
        # The busy case, one read of a streaming port holding many lines: straight through.
        convert = self._convert
        report = self._report
        for line, ts_ms in zip(lines, stamps, strict=True):
            reading = convert(line)
            if reading is not None:
                self.lines += 1
                report(reading, ts_ms)

    def _convert(self, line: bytes) -> Reading | None:
        """The reading in ``line``; None for a bad line (counted and logged) or a blank one."""
        try:
            return self.converter.convert(line)
        except ConversionError as exc:
            if line.strip():  # a blank line is no bad line
                self._bad(line, exc.reason)
        except Exception as exc:  # a converter bug must not stop the port
            self._bad(line, f"converter failed: {exc!r}")
        return None

    def _stamps(self, lines: list[bytes]) -> list[int | None]:
        """When each line of one read arrived, in ms of the gateway's clock (None while it is not
        trusted: the outbox then stamps the records itself).

        A streaming port is read in batches (every 50 ms at 115200 baud), so one read holds many
        lines; stamped on arrival in the outbox they would all share one millisecond, and
        ThingsBoard keeps one value per key and timestamp. Each line is dated back by the line
        time of the bytes that came after it, and stamps only go up (by 1 ms at least) per port:
        up to :data:`MAX_STAMP_LEAD_MS` ahead of the clock when lines come faster than one per ms.
        """
        clock = self.adapter.clock
        now = clock.now_ms() if clock is not None else None
        if now is None:
            return [None] * len(lines)
        ms_per_byte = 1000.0 / self.link.bytes_per_second
        overhead = len(self.splitter.terminator)
        after = self.splitter.pending
        stamps: list[int | None] = [None] * len(lines)
        for i in range(len(lines) - 1, -1, -1):
            stamps[i] = now - int(after * ms_per_byte)
            after += len(lines[i]) + overhead
        last = self._last_ts
        limit = now + MAX_STAMP_LEAD_MS
        for i, ts in enumerate(stamps):
            assert ts is not None
            if ts <= last < limit:
                ts = last + 1
            stamps[i] = last = ts
        self._last_ts = last
        return stamps

    def _line(self, line: bytes, ts_ms: int | None = None) -> None:
        if not line.strip():
            return
        reply = self._reply
        if reply is not None and not reply[1].done():
            text = line.decode("utf-8", errors="replace").strip()
            match = reply[0].search(text)
            if match is not None:
                groups = {k: v for k, v in match.groupdict().items() if v is not None}
                reply[1].set_result({"reply": text, **groups})
                return
        if not self.ready:
            if len(self._early) < MAX_EARLY_LINES:
                self._early.append((line, ts_ms))
            else:
                self.early_dropped += 1
            return
        reading = self._convert(line)
        if reading is not None:
            self.lines += 1
            self._report(reading, ts_ms)

    def _bad(self, line: bytes, reason: str) -> None:
        self.bad_lines += 1
        self.last_bad_line = reason
        self.adapter.complaints.warning(
            ("bad-line", self.name),
            "serial %s (%s): bad line %s: %s",
            self.name, self.device, _excerpt(line), reason, extra={"port": self.name, "device": self.device},
        )  # fmt: skip

    def _report(self, reading: Reading, ts_ms: int | None = None) -> None:
        """Queue what a line said; ``ts_ms``: when the line arrived (the device's own time wins)."""
        hub = self.adapter.hub
        if reading.telemetry:
            try:
                future = hub.telemetry_nowait(
                    self.device, reading.telemetry, ts_ms if reading.ts_ms is None else reading.ts_ms
                )
            except Exception as exc:  # the outbox is closed or full
                self._not_queued(exc)
            else:
                if future is not self._watched:  # one callback per group commit, not per line
                    self._watched = future
                    future.add_done_callback(self._queued)
        if reading.attributes:
            self._spawn_attributes(dict(reading.attributes))

    def _queued(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._not_queued(future.exception())

    def _not_queued(self, exc: BaseException | None) -> None:
        self.adapter.complaints.warning(
            ("not-queued", self.name),
            "serial %s (%s): readings not queued: %s",
            self.name, self.device, exc, extra={"port": self.name, "device": self.device},
        )  # fmt: skip

    def _spawn_attributes(self, values: dict[str, Any]) -> None:
        async def send() -> None:
            try:
                await self.adapter.hub.attributes(self.device, values)
            except Exception as exc:
                self._not_queued(exc)

        task = asyncio.get_running_loop().create_task(send(), name=f"serial {self.name} attributes")
        self._attribute_tasks.add(task)
        task.add_done_callback(self._attribute_tasks.discard)

    # -- connect / disconnect, in order -----------------------------------------------------------

    def _then(self, step: Callable[[], Awaitable[None]]) -> None:
        previous = self._chain

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await previous
            try:
                await step()
            except Exception:
                log.exception("serial %s: %s failed", self.name, step.__name__, extra={"port": self.name})

        task = asyncio.get_running_loop().create_task(run(), name=f"serial {self.name} {step.__name__}")
        self._chain = task
        task.add_done_callback(self._chain_done)

    def _chain_done(self, task: asyncio.Future[None]) -> None:
        if self._chain is task:
            self._chain = None

    async def _connect(self) -> None:
        hub = self.adapter.hub
        if self.link.state is not LinkState.OPEN:
            return  # lost again before its turn came
        await hub.connect(self.device, self.config.profile, self.adapter)
        static = dict(self.converter.static_attributes)
        if static:
            await hub.attributes(self.device, static)
        if self.link.state is not LinkState.OPEN:
            return
        self.ready = True
        early, self._early = self._early, []
        for line, ts_ms in early:
            self._line(line, ts_ms)

    async def _disconnect(self) -> None:
        # attributes of the closing connection go first
        if self._attribute_tasks:
            await asyncio.gather(*self._attribute_tasks, return_exceptions=True)
        await self.adapter.hub.disconnect(self.device)

    async def settle(self) -> None:
        """Wait until pending connects, disconnects and attribute reports are queued."""
        while self._chain is not None or self._attribute_tasks:
            pending: list[asyncio.Future[Any]] = [*self._attribute_tasks]
            if self._chain is not None:
                pending.append(self._chain)
            await asyncio.gather(*pending, return_exceptions=True)

    # -- ThingsBoard -> device ----------------------------------------------------------------------

    async def rpc(self, method: str, params: Any, timeout: float) -> Any:
        spec = self.methods.get(method)
        if spec is None:
            known = ", ".join(sorted(self.methods)) or "none"
            raise RpcError("unknown_method", f"serial device {self.device!r} has no method {method!r} (has: {known})")
        try:
            line = spec.template.render_rpc(method, params)
        except TemplateError as exc:
            raise RpcError("bad_params", str(exc)) from None
        if spec.reply is None:
            try:
                async with asyncio.timeout(timeout):
                    await self.write(line)
            except TimeoutError:
                raise RpcError("timeout", f"serial port {self.name} took no line within {timeout:g} s") from None
            return {"written": len(line)}
        wait = min(spec.timeout_s, timeout)
        try:
            async with asyncio.timeout(wait):
                async with self._rpc_turn:
                    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                    self._reply = (spec.reply, future)
                    try:
                        await self.write(line)
                        return await future
                    finally:
                        self._reply = None
        except TimeoutError:
            raise RpcError(
                "timeout", f"no reply from {self.device!r} matching {spec.reply.pattern!r} within {wait:g} s"
            ) from None

    async def write(self, line: bytes) -> None:
        """Write ``line`` and wait until the driver took it; RpcError when the port cannot take it."""
        try:
            self.link.write(line)
            await self.link.drain()
        except LinkClosedError:
            state = f"{self.link.state} ({self.link.last_error})" if self.link.last_error else str(self.link.state)
            raise RpcError("offline", f"serial port {self.name} is {state}") from None
        except LinkError as exc:
            raise RpcError("busy", str(exc)) from None

    def attributes_updated(self, values: Mapping[str, Any]) -> None:
        template = self.attribute_template
        if template is None:
            return
        for name, value in values.items():
            if self.attribute_keys and name not in self.attribute_keys:
                continue
            try:
                line = template.render_attribute(name, value)
                self.link.write(line)
            except (TemplateError, LinkError) as exc:
                self.adapter.complaints.warning(
                    ("attribute", self.name),
                    "serial %s (%s): shared attribute %r not written: %s",
                    self.name, self.device, name, exc, extra={"port": self.name, "device": self.device},
                )  # fmt: skip
            else:
                self.attribute_lines += 1

    # -- reporting ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            **self.link.stats().as_dict(),
            "protocol": "lines",
            "device": self.device,
            "connected": self.ready,
            "lines": self.lines,
            "badLines": self.bad_lines,
            "overlongLines": self.splitter.overlong,
            "lastBadLine": self.last_bad_line,
            "rpcs": self.rpcs,
            "rpcErrors": self.rpc_errors,
            "attributeLines": self.attribute_lines,
        }


class SerialSensorAdapter:
    """The hub's southbound adapter for every ``lines`` port (see the module docstring)."""

    name = "serial"

    def __init__(self, hub: DeviceHub, ports: Sequence[SerialPortConfig], *, clock: Clock | None = None) -> None:
        self.hub = hub
        #: The gateway's clock: lines are stamped on arrival with it (without one, or while it is not
        #: trusted, the outbox stamps them, and lines of one read may share a millisecond).
        self.clock = clock
        self.complaints = RateLimited(log)
        self.ports = [SensorPort(self, config) for config in ports if config.protocol == "lines"]
        self._by_device = {port.device: port for port in self.ports}

    async def start(self) -> None:
        """Open every port (those that are absent are retried in the background)."""
        for port in self.ports:
            port.link.start()

    async def stop(self) -> None:
        """Close every port; returns once their disconnects are queued."""
        for port in self.ports:
            port.link.close()
        for port in self.ports:
            await port.settle()

    def port(self, name: str) -> SensorPort:
        return next(p for p in self.ports if p.name == name)

    # -- Southbound -------------------------------------------------------------------------------

    async def rpc(self, device: str, method: str, params: Any, timeout: float) -> Any:
        port = self._by_device.get(device)
        if port is None:
            raise RpcError("unknown_device", f"no serial sensor is named {device!r}")
        port.rpcs += 1
        try:
            return await port.rpc(method, params, timeout)
        except RpcError:
            port.rpc_errors += 1
            raise

    async def attributes_updated(self, device: str, values: Mapping[str, Any], deleted: Sequence[str]) -> None:
        port = self._by_device.get(device)
        if port is not None:
            port.attributes_updated(values)

    # -- reporting ----------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Per port: link state and counters (for ``edge-gateway status``)."""
        return [port.status() for port in self.ports]

    def line_telemetry(self) -> dict[str, Any]:
        """Line counters for the gateway's own telemetry (good lines, bad and over-long ones)."""
        return {
            "serialLines": sum(p.lines for p in self.ports),
            "serialBadLines": sum(p.bad_lines + p.splitter.overlong for p in self.ports),
        }

    def self_telemetry(self) -> dict[str, Any]:
        """:func:`~gateway.serial.port.links_telemetry` of these ports plus :meth:`line_telemetry`."""
        return {**links_telemetry(p.link for p in self.ports), **self.line_telemetry()}


__all__ = ["LineSplitter", "RpcMethod", "SensorPort", "SerialSensorAdapter"]
