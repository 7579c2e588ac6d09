"""GPIO backends: RPi.GPIO on a Raspberry Pi, a null backend everywhere else, a fake one for tests.

The LED and the button talk to a :class:`GpioBackend` only, in physical levels (True = high);
``active_low`` is applied by them. Pins are BCM numbers.

:func:`open_backend` picks one: the null backend when GPIO is disabled or the machine is not a
Raspberry Pi (device tree model), else :class:`RpiGpioBackend`, whose ``RPi.GPIO`` import happens
only then, and falls back to the null backend (with one warning) when the import or the set-up
fails: RPi.GPIO missing, no access to /dev/gpiomem, or a board RPi.GPIO does not support (a Pi 5
needs the ``rpi-lgpio`` package, which provides the same ``RPi.GPIO`` module). The rest of the
gateway does not notice the difference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("gateway.hw")

EdgeCallback = Callable[[], None]

#: Where the board's model is read (the /sys path works under systemd's ProcSubset=pid).
MODEL_PATHS = (Path("/sys/firmware/devicetree/base/model"), Path("/proc/device-tree/model"))


class GpioBackend(Protocol):
    name: str

    def setup_output(self, pin: int, level: bool) -> None:
        """Make ``pin`` an output at ``level``."""

    def setup_input(self, pin: int, *, pull_up: bool) -> None:
        """Make ``pin`` an input with the internal pull-up (or pull-down)."""

    def write(self, pin: int, level: bool) -> None: ...

    def read(self, pin: int) -> bool: ...

    def watch(self, pin: int, callback: EdgeCallback) -> None:
        """Call ``callback()`` after every edge of input ``pin``, from any thread (it must be thread-safe)."""

    def close(self) -> None:
        """Release the pins (outputs go back to inputs)."""


class NullBackend:
    """No GPIO: writes go nowhere, inputs never change."""

    name = "null"

    def setup_output(self, pin: int, level: bool) -> None:
        pass

    def setup_input(self, pin: int, *, pull_up: bool) -> None:
        pass

    def write(self, pin: int, level: bool) -> None:
        pass

    def read(self, pin: int) -> bool:
        return True

    def watch(self, pin: int, callback: EdgeCallback) -> None:
        pass

    def close(self) -> None:
        pass


class RpiGpioBackend:
    """RPi.GPIO (BCM numbering). Its edge callbacks run on RPi.GPIO's own thread."""

    name = "RPi.GPIO"

    def __init__(self) -> None:
        import RPi.GPIO as gpio  # only here: the module refuses to import on anything but a Pi

        self._gpio: Any = gpio
        gpio.setwarnings(False)
        gpio.setmode(gpio.BCM)
        self._pins: set[int] = set()

    def setup_output(self, pin: int, level: bool) -> None:
        g = self._gpio
        g.setup(pin, g.OUT, initial=g.HIGH if level else g.LOW)
        self._pins.add(pin)

    def setup_input(self, pin: int, *, pull_up: bool) -> None:
        g = self._gpio
        g.setup(pin, g.IN, pull_up_down=g.PUD_UP if pull_up else g.PUD_DOWN)
        self._pins.add(pin)

    def write(self, pin: int, level: bool) -> None:
        self._gpio.output(pin, self._gpio.HIGH if level else self._gpio.LOW)

    def read(self, pin: int) -> bool:
        return bool(self._gpio.input(pin))

    def watch(self, pin: int, callback: EdgeCallback) -> None:
        self._gpio.add_event_detect(pin, self._gpio.BOTH, callback=lambda _channel: callback())

    def close(self) -> None:
        if self._pins:
            self._gpio.cleanup(sorted(self._pins))
            self._pins.clear()


class FakeBackend:
    """For tests: records every write with a timestamp from ``clock``; tests press and release inputs.

    An input's idle level follows its pull (pull-up: high); :meth:`press` drives it to the other
    level and calls the watchers, as a real edge would.
    """

    name = "fake"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.writes: list[tuple[float, int, bool]] = []  # (time, pin, level)
        self.levels: dict[int, bool] = {}
        self.outputs: set[int] = set()
        self.pulls: dict[int, bool] = {}  # input pin -> pull-up?
        self.closed = False
        self._watchers: dict[int, list[EdgeCallback]] = {}
        self._lock = threading.Lock()

    def setup_output(self, pin: int, level: bool) -> None:
        self.outputs.add(pin)
        self.write(pin, level)

    def setup_input(self, pin: int, *, pull_up: bool) -> None:
        self.pulls[pin] = pull_up
        self.levels.setdefault(pin, pull_up)

    def write(self, pin: int, level: bool) -> None:
        if pin not in self.outputs:
            raise RuntimeError(f"GPIO {pin} written before it was set up as an output")
        with self._lock:
            self.levels[pin] = level
            self.writes.append((self.clock(), pin, level))

    def read(self, pin: int) -> bool:
        return self.levels.get(pin, False)

    def watch(self, pin: int, callback: EdgeCallback) -> None:
        self._watchers.setdefault(pin, []).append(callback)

    def close(self) -> None:
        self.closed = True

    # -- for tests ------------------------------------------------------------------------------

    def set_input(self, pin: int, level: bool) -> None:
        """Drive input ``pin`` to ``level``; watchers are called on a change (an edge)."""
        if self.levels.get(pin) == level:
            return
        self.levels[pin] = level
        for callback in list(self._watchers.get(pin, [])):
            callback()

    def press(self, pin: int) -> None:
        self.set_input(pin, not self.pulls.get(pin, True))

    def release(self, pin: int) -> None:
        self.set_input(pin, self.pulls.get(pin, True))

    def transitions(self, pin: int) -> list[tuple[float, bool]]:
        """(time, level) of every write to ``pin``."""
        return [(t, level) for t, p, level in self.writes if p == pin]


def is_raspberry_pi(model_paths: tuple[Path, ...] = MODEL_PATHS) -> bool:
    for p in model_paths:
        try:
            return "raspberry pi" in p.read_bytes().rstrip(b"\0").decode("ascii", "replace").lower()
        except OSError:
            continue
    return False


def open_backend(
    enabled: bool = True,
    *,
    is_pi: Callable[[], bool] = is_raspberry_pi,
    factory: Callable[[], GpioBackend] = RpiGpioBackend,
) -> GpioBackend:
    """The backend to use here: RPi.GPIO on a Raspberry Pi, else (or if it fails) the null backend."""
    if not enabled:
        log.info("GPIO disabled in the configuration: no status LED, no button")
        return NullBackend()
    if not is_pi():
        log.info("not a Raspberry Pi: no status LED, no button")
        return NullBackend()
    try:
        return factory()
    except Exception as exc:  # ImportError, RuntimeError ("can only be run on a Raspberry Pi"), OSError ...
        log.warning("GPIO unavailable (%s: %s): no status LED, no button", type(exc).__name__, exc)
        return NullBackend()


__all__ = [
    "FakeBackend",
    "GpioBackend",
    "NullBackend",
    "RpiGpioBackend",
    "is_raspberry_pi",
    "open_backend",
]
