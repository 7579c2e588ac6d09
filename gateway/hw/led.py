"""The status LED: one pattern at a time, played by one asyncio task.

What the installer sees (durations in seconds, "on/off"):

=====================  ==========================================  ===============================
pattern                looks like                                  meaning
=====================  ==========================================  ===============================
booting                fast flicker, 0.1/0.1                       starting up
provisioning           even blink, 0.5/0.5                         asking ThingsBoard for credentials
online                 steady on                                   connected to ThingsBoard
offline                on, with a short dark blip every 2 s        no uplink: data is queued
                       (1.8/0.2)
credentials rejected   double flash, pause (0.2/0.2/0.2/1.4)       ThingsBoard refused the gateway
                                                                   (or refused to provision it)
fault                  triple flash, pause (0.2/0.2 x3, 1.0 dark)  needs a technician: bad
                                                                   configuration, disk, ...
off                    dark                                        stopped
=====================  ==========================================  ===============================

A new pattern starts at once, from its first "on" step. The task writes only level changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass

from gateway.hw.backend import GpioBackend
from gateway.upstream.provisioning import Phase
from gateway.upstream.session import SessionState

log = logging.getLogger("gateway.hw.led")


class LedPattern(enum.Enum):
    OFF = "off"
    BOOTING = "booting"
    PROVISIONING = "provisioning"
    ONLINE = "online"
    OFFLINE = "offline"
    REJECTED = "credentials rejected"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class Blink:
    """``steps``: on, off, on, off, ... durations in seconds, repeated; empty: steady ``steady``."""

    steps: tuple[float, ...] = ()
    steady: bool = False

    def __post_init__(self) -> None:
        if len(self.steps) % 2 or any(d <= 0 for d in self.steps):
            raise ValueError("a blink needs pairs of positive on/off durations")


PATTERNS: dict[LedPattern, Blink] = {
    LedPattern.OFF: Blink(),
    LedPattern.BOOTING: Blink((0.1, 0.1)),
    LedPattern.PROVISIONING: Blink((0.5, 0.5)),
    LedPattern.ONLINE: Blink(steady=True),
    LedPattern.OFFLINE: Blink((1.8, 0.2)),
    LedPattern.REJECTED: Blink((0.2, 0.2, 0.2, 1.4)),
    LedPattern.FAULT: Blink((0.2, 0.2, 0.2, 0.2, 0.2, 1.0)),
}


def pattern_for(
    *,
    provisioning: Phase | None = None,
    uplink: SessionState | None = None,
    fault: bool = False,
) -> LedPattern:
    """The pattern for the gateway's state: a fault wins, then provisioning (while not provisioned),
    then the uplink; nothing known yet: booting."""
    if fault:
        return LedPattern.FAULT
    if provisioning is not None and provisioning is not Phase.PROVISIONED:
        return {
            Phase.PROVISIONING: LedPattern.PROVISIONING,
            Phase.UNREACHABLE: LedPattern.OFFLINE,
            Phase.REFUSED: LedPattern.REJECTED,
            Phase.FAILED: LedPattern.FAULT,
            Phase.NOT_CONFIGURED: LedPattern.FAULT,
        }[provisioning]
    if uplink is None:
        return LedPattern.BOOTING
    return {
        SessionState.CONNECTED: LedPattern.ONLINE,
        SessionState.CREDENTIALS_REJECTED: LedPattern.REJECTED,
        SessionState.DISCONNECTED: LedPattern.OFFLINE,
        SessionState.CONNECTING: LedPattern.OFFLINE,
        SessionState.STOPPED: LedPattern.OFF,
    }[uplink]


class StatusLed:
    """Plays :data:`PATTERNS` on ``pin`` (-1: no LED, everything is a no-op)."""

    def __init__(
        self,
        backend: GpioBackend,
        pin: int,
        *,
        active_low: bool = False,
        initial: LedPattern = LedPattern.BOOTING,
    ) -> None:
        self._backend = backend
        self._pin = pin
        self._active_low = active_low
        self._pattern = initial
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._level: bool | None = None
        self._broken = pin < 0

    @property
    def pattern(self) -> LedPattern:
        return self._pattern

    def set(self, pattern: LedPattern) -> None:
        """Show ``pattern`` (at once; the same pattern again changes nothing)."""
        if pattern is self._pattern:
            return
        self._pattern = pattern
        self._changed.set()

    def start(self) -> None:
        """Set the pin up and start the one task that plays the patterns. Call from the running loop."""
        if self._task is not None:
            raise RuntimeError("StatusLed.start() called twice")
        if self._broken:
            return
        try:
            self._backend.setup_output(self._pin, self._active_low)  # dark
            self._level = False
        except Exception as exc:
            log.warning("status LED on GPIO %d unavailable: %s", self._pin, exc)
            self._broken = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="status-led")

    async def close(self) -> None:
        """Stop the task and leave the LED dark."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self._broken and self._level:
            self._write(False)

    def _write(self, on: bool) -> None:
        if on == self._level or self._broken:
            return
        try:
            self._backend.write(self._pin, on != self._active_low)
            self._level = on
        except Exception as exc:
            log.warning("status LED on GPIO %d failed: %s; LED off from now on", self._pin, exc)
            self._broken = True

    async def _run(self) -> None:
        while not self._broken:
            self._changed.clear()
            blink = PATTERNS[self._pattern]
            if not blink.steps:
                self._write(blink.steady)
                await self._changed.wait()
                continue
            i = 0
            while not self._changed.is_set() and not self._broken:
                self._write(i % 2 == 0)
                try:
                    async with asyncio.timeout(blink.steps[i]):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                i = (i + 1) % len(blink.steps)


__all__ = ["PATTERNS", "Blink", "LedPattern", "StatusLed", "pattern_for"]
