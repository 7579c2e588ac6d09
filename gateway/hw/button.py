"""The button: a short press shows the status and reconnects; holding it is a factory reset.

Edges come from the backend (libgpiod's or RPi.GPIO's thread) and are handed to the loop. A
change counts only once the level has stayed the same for ``debounce_s`` after the last edge
(contact bounce). Holding the button ``hold_s`` (10 s) calls ``on_long`` while it is still held, so
the LED can acknowledge at once; releasing it earlier calls ``on_short``. A button already held
when the gateway starts (stuck, or held through a reboot) counts for nothing until released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.hw.backend import GpioBackend

log = logging.getLogger("gateway.hw.button")

Action = Callable[[], None]


class Button:
    """``pin`` -1: no button, everything is a no-op. Callbacks run on the loop and must not block."""

    def __init__(
        self,
        backend: GpioBackend,
        pin: int,
        *,
        active_low: bool = True,
        debounce_s: float = 0.05,
        hold_s: float = 10.0,
        on_short: Action | None = None,
        on_long: Action | None = None,
    ) -> None:
        self._backend = backend
        self._pin = pin
        self._active_low = active_low
        self._debounce_s = debounce_s
        self._hold_s = hold_s
        self.on_short = on_short
        self.on_long = on_long
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pressed = False
        self._settle_handle: asyncio.TimerHandle | None = None
        self._hold_handle: asyncio.TimerHandle | None = None
        self._closed = False
        self.short_presses = 0
        self.long_presses = 0

    @property
    def pressed(self) -> bool:
        """The debounced state."""
        return self._pressed

    def start(self) -> None:
        """Set the pin up and watch it. Call from the running loop."""
        if self._pin < 0:
            return
        self._loop = asyncio.get_running_loop()
        try:
            self._backend.setup_input(self._pin, pull_up=self._active_low)
            self._pressed = self._is_pressed()
            self._backend.watch(self._pin, self._edge_from_any_thread)
        except Exception as exc:
            log.warning("button on GPIO %d unavailable: %s", self._pin, exc)
            self._closed = True
            return
        if self._pressed:
            log.warning("button on GPIO %d is held at start: ignored until released", self._pin)

    def close(self) -> None:
        self._closed = True
        for handle in (self._settle_handle, self._hold_handle):
            if handle is not None:
                handle.cancel()
        self._settle_handle = self._hold_handle = None

    def _is_pressed(self) -> bool:
        return self._backend.read(self._pin) != self._active_low

    def _edge_from_any_thread(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the gateway is shutting down
            loop.call_soon_threadsafe(self._edge)

    def _edge(self) -> None:
        if self._closed or self._loop is None:
            return
        if self._settle_handle is not None:
            self._settle_handle.cancel()
        self._settle_handle = self._loop.call_later(self._debounce_s, self._settle)

    def _settle(self) -> None:
        self._settle_handle = None
        if self._closed or self._loop is None:
            return
        try:
            pressed = self._is_pressed()
        except Exception as exc:
            log.warning("button on GPIO %d unreadable: %s", self._pin, exc)
            return
        if pressed == self._pressed:
            return  # a bounce that came back to where it was
        self._pressed = pressed
        if pressed:
            self._hold_handle = self._loop.call_later(self._hold_s, self._held)
            return
        if self._hold_handle is not None:  # released before the hold time: a short press
            self._hold_handle.cancel()
            self._hold_handle = None
            self.short_presses += 1
            log.info("button: short press (status, reconnect)")
            self._call(self.on_short)

    def _held(self) -> None:
        self._hold_handle = None
        if self._closed:
            return
        self.long_presses += 1
        log.warning("button held %.0f s: factory reset", self._hold_s)
        self._call(self.on_long)

    def _call(self, action: Action | None) -> None:
        if action is None:
            return
        try:
            action()
        except Exception:
            log.exception("button action failed")


__all__ = ["Button"]
