"""GPIO backends: libgpiod or RPi.GPIO on a Raspberry Pi, a null backend everywhere else, a fake one
for tests.

The LED and the button talk to a :class:`GpioBackend` only, in physical levels (True = high);
``active_low`` is applied by them. Pins are BCM numbers.

:func:`open_backend` picks one: the null backend when GPIO is disabled or the machine is not a
Raspberry Pi (device tree model), else :func:`pi_backend`: :class:`LibgpiodBackend` (the kernel's
GPIO character device, through Debian's ``python3-libgpiod`` or the ``gpiod`` 2.x bindings; the
image uses it: Debian's kernel has no /dev/gpiomem), else :class:`RpiGpioBackend` (``RPi.GPIO`` on
Raspberry Pi OS; a Pi 5 needs the ``rpi-lgpio`` package, which provides the same module). Imports
happen only then. When neither works (module missing, no access to the device, an unknown board)
the null backend is used, with one warning; the rest of the gateway does not notice the difference.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import select
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


#: Labels of the GPIO controllers of the Raspberry Pi's header, whose line offsets are the BCM
#: numbers: BCM2835/6/7 (Pi 1 to 3, Zero 2 W, CM3), BCM2711 (Pi 4, 400, CM4), RP1 (Pi 5).
PI_CHIP_LABELS = ("pinctrl-bcm2835", "pinctrl-bcm2711", "pinctrl-rp1")

CONSUMER = "edge-gateway"


class LibgpiodBackend:
    """The GPIO character device through libgpiod's Python bindings: the 1.x API (Debian 12's
    ``python3-libgpiod``) or the 2.x API (``gpiod`` from PyPI, later Debian releases).

    ``chip``: the device (``/dev/gpiochipN``); by default the one whose label is a Raspberry Pi
    header controller (:data:`PI_CHIP_LABELS`). Each pin is its own line request, released by
    :meth:`close`. Edges of watched inputs are read by one thread waiting on the requests' file
    descriptors; callbacks run there.
    """

    name = "libgpiod"

    def __init__(self, chip: str | None = None, *, module: Any = None, dev: Path = Path("/dev")) -> None:
        self._gpiod: Any = module if module is not None else importlib.import_module("gpiod")
        self._v2 = hasattr(self._gpiod, "request_lines")
        # 2.x: the enums (Direction, Value, Bias, Edge) are in the gpiod.line submodule
        self._line: Any = importlib.import_module(f"{self._gpiod.__name__}.line") if self._v2 else None
        self.chip_path = chip if chip is not None else self._find_chip(dev)
        self._chip: Any = None if self._v2 else self._gpiod.Chip(self.chip_path)
        self._lines: dict[int, Any] = {}  # pin -> 1.x line or 2.x request
        self._pulls: dict[int, bool] = {}
        self._watched: dict[int, tuple[int, EdgeCallback]] = {}  # pin -> (fd, callback)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._closing = False

    # -- the chip --------------------------------------------------------------------------------

    def _label(self, path: str) -> str:
        chip = self._gpiod.Chip(path)
        try:
            return str(chip.get_info().label if self._v2 else chip.label())
        finally:
            chip.close()

    def _find_chip(self, dev: Path) -> str:
        seen = []
        for path in sorted(dev.glob("gpiochip*"), key=lambda p: (len(p.name), p.name)):
            try:
                label = self._label(str(path))
            except OSError as exc:
                seen.append(f"{path.name}: {exc}")
                continue
            if label in PI_CHIP_LABELS:
                return str(path)
            seen.append(f"{path.name}: {label}")
        if not seen:
            raise RuntimeError(f"no GPIO character device ({dev}/gpiochip*)")
        raise RuntimeError(f"no Raspberry Pi GPIO controller among {', '.join(seen)}")

    # -- requests --------------------------------------------------------------------------------

    def _request_input(self, pin: int, pull_up: bool, edges: bool) -> None:
        g = self._gpiod
        old = self._lines.pop(pin, None)
        if old is not None:
            old.release()
        if self._v2:
            ln = self._line
            settings = g.LineSettings(
                direction=ln.Direction.INPUT,
                bias=ln.Bias.PULL_UP if pull_up else ln.Bias.PULL_DOWN,
                edge_detection=ln.Edge.BOTH if edges else ln.Edge.NONE,
            )
            self._lines[pin] = g.request_lines(self.chip_path, consumer=CONSUMER, config={pin: settings})
        else:
            line = self._chip.get_line(pin)
            line.request(
                consumer=CONSUMER,
                type=g.LINE_REQ_EV_BOTH_EDGES if edges else g.LINE_REQ_DIR_IN,
                flags=g.LINE_REQ_FLAG_BIAS_PULL_UP if pull_up else g.LINE_REQ_FLAG_BIAS_PULL_DOWN,
            )
            self._lines[pin] = line
        self._pulls[pin] = pull_up

    def setup_output(self, pin: int, level: bool) -> None:
        g = self._gpiod
        old = self._lines.pop(pin, None)
        if old is not None:
            old.release()
        if self._v2:
            settings = g.LineSettings(direction=self._line.Direction.OUTPUT, output_value=self._value(level))
            self._lines[pin] = g.request_lines(self.chip_path, consumer=CONSUMER, config={pin: settings})
        else:
            line = self._chip.get_line(pin)
            line.request(consumer=CONSUMER, type=g.LINE_REQ_DIR_OUT, default_val=int(level))
            self._lines[pin] = line

    def _value(self, level: bool) -> Any:
        return self._line.Value.ACTIVE if level else self._line.Value.INACTIVE

    def setup_input(self, pin: int, *, pull_up: bool) -> None:
        self._request_input(pin, pull_up, edges=False)

    def write(self, pin: int, level: bool) -> None:
        if self._v2:
            self._lines[pin].set_value(pin, self._value(level))
        else:
            self._lines[pin].set_value(int(level))

    def read(self, pin: int) -> bool:
        if self._v2:
            return bool(self._lines[pin].get_value(pin) == self._line.Value.ACTIVE)
        return bool(self._lines[pin].get_value())

    # -- edges -----------------------------------------------------------------------------------

    def watch(self, pin: int, callback: EdgeCallback) -> None:
        self._request_input(pin, self._pulls.get(pin, True), edges=True)
        req = self._lines[pin]
        fd = int(req.fd if self._v2 else req.event_fd())
        with self._lock:
            self._watched[pin] = (fd, callback)
            if self._thread is None:
                self._wake_r, self._wake_w = os.pipe()
                self._thread = threading.Thread(target=self._edges, name="gpio-edges", daemon=True)
                self._thread.start()
            else:
                os.write(self._wake_w, b"w")

    def _read_events(self, pin: int) -> int:
        req = self._lines[pin]
        if self._v2:
            return len(req.read_edge_events())
        req.event_read()
        return 1

    def _edges(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                watched = dict(self._watched)
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            by_fd = {fd: (pin, callback) for pin, (fd, callback) in watched.items()}
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            for fd, _mask in poller.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 64)
                    continue
                pin, callback = by_fd[fd]
                try:
                    for _ in range(self._read_events(pin)):
                        callback()
                except Exception:
                    log.exception("GPIO %d: reading an edge failed", pin)
                    time.sleep(1.0)  # never spin on a broken line

    def close(self) -> None:
        with self._lock:
            self._closing = True
            thread = self._thread
            if thread is not None:
                os.write(self._wake_w, b"c")
        if thread is not None:
            thread.join(5.0)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._thread = None
        for req in self._lines.values():
            with contextlib.suppress(Exception):
                req.release()
        self._lines.clear()
        self._watched.clear()
        if self._chip is not None:
            self._chip.close()
            self._chip = None


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


def pi_backend() -> GpioBackend:
    """libgpiod, else RPi.GPIO; the error says why neither works."""
    try:
        return LibgpiodBackend()
    except Exception as exc:
        gpiod_error = f"libgpiod: {type(exc).__name__}: {exc}"
    try:
        return RpiGpioBackend()
    except Exception as exc:
        raise RuntimeError(f"{gpiod_error}; RPi.GPIO: {type(exc).__name__}: {exc}") from exc


def open_backend(
    enabled: bool = True,
    *,
    is_pi: Callable[[], bool] = is_raspberry_pi,
    factory: Callable[[], GpioBackend] = pi_backend,
) -> GpioBackend:
    """The backend to use here: libgpiod or RPi.GPIO on a Raspberry Pi, else (or if both fail) the
    null backend."""
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
    "PI_CHIP_LABELS",
    "FakeBackend",
    "GpioBackend",
    "LibgpiodBackend",
    "NullBackend",
    "RpiGpioBackend",
    "is_raspberry_pi",
    "open_backend",
    "pi_backend",
]
