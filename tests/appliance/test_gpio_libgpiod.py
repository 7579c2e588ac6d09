"""The libgpiod backend against stand-ins of both Python APIs of libgpiod (1.x: Debian 12's
python3-libgpiod, the image's; 2.x: PyPI's gpiod), with the keyword arguments the real bindings
take. No GPIO hardware is needed: edges come through pipes, as the real event descriptors would."""

from __future__ import annotations

import enum
import logging
import os
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import gateway.hw.backend as backend_module
from gateway.hw.backend import LibgpiodBackend, NullBackend, RpiGpioBackend, open_backend, pi_backend

LABELS = {"gpiochip0": "pinctrl-bcm2711", "gpiochip1": "raspberrypi-exp-gpio"}


class Line:
    """One line of a stand-in chip: level, request, and an event pipe while edges are requested."""

    def __init__(self) -> None:
        self.level = 0
        self.requested: dict[str, Any] | None = None
        self.released = 0
        self._r, self._w = -1, -1

    def open_events(self) -> int:
        self._r, self._w = os.pipe()
        return self._r

    def edge(self, level: int) -> None:
        self.level = level
        os.write(self._w, b"e")

    def take_event(self) -> None:
        os.read(self._r, 1)

    def release(self) -> None:
        self.released += 1
        self.requested = None
        for fd in (self._r, self._w):
            if fd >= 0:
                os.close(fd)
        self._r = self._w = -1


LINES: dict[int, Line] = {}


# -- libgpiod 1.x ---------------------------------------------------------------------------------


def v1_module() -> types.ModuleType:
    m = types.ModuleType("gpiod")
    m.LINE_REQ_DIR_IN, m.LINE_REQ_DIR_OUT, m.LINE_REQ_EV_BOTH_EDGES = 1, 2, 6  # type: ignore[attr-defined]
    m.LINE_REQ_FLAG_BIAS_PULL_DOWN, m.LINE_REQ_FLAG_BIAS_PULL_UP = 16, 32  # type: ignore[attr-defined]

    class V1Line:
        def __init__(self, line: Line) -> None:
            self.line = line

        def request(self, consumer: str, type: int = 1, flags: int = 0, default_val: int | None = None) -> None:
            assert self.line.requested is None, "line busy"
            self.line.requested = {"consumer": consumer, "type": type, "flags": flags}
            if default_val is not None:
                self.line.level = default_val
            if type == m.LINE_REQ_EV_BOTH_EDGES:  # type: ignore[attr-defined]
                self.line.open_events()

        def set_value(self, v: int) -> None:
            assert self.line.requested and self.line.requested["type"] == m.LINE_REQ_DIR_OUT  # type: ignore[attr-defined]
            self.line.level = v

        def get_value(self) -> int:
            assert self.line.requested is not None
            return self.line.level

        def event_fd(self) -> int:
            return self.line._r

        def event_read(self) -> object:
            self.line.take_event()
            return object()

        def release(self) -> None:
            self.line.release()

    class Chip:
        closed = 0

        def __init__(self, path: str) -> None:
            self.path = path

        def label(self) -> str:
            return LABELS[Path(self.path).name]

        def get_line(self, offset: int) -> V1Line:
            return V1Line(LINES.setdefault(offset, Line()))

        def close(self) -> None:
            type(self).closed += 1

    m.Chip = Chip  # type: ignore[attr-defined]
    return m


# -- libgpiod 2.x ---------------------------------------------------------------------------------


def v2_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    m = types.ModuleType("fakegpiod2")
    line_mod = types.ModuleType("fakegpiod2.line")
    line_mod.Direction = enum.Enum("Direction", "AS_IS INPUT OUTPUT")  # type: ignore[attr-defined]
    line_mod.Value = enum.Enum("Value", "INACTIVE ACTIVE")  # type: ignore[attr-defined]
    line_mod.Bias = enum.Enum("Bias", "AS_IS UNKNOWN DISABLED PULL_UP PULL_DOWN")  # type: ignore[attr-defined]
    line_mod.Edge = enum.Enum("Edge", "NONE RISING FALLING BOTH")  # type: ignore[attr-defined]
    Value = line_mod.Value  # type: ignore[attr-defined]

    @dataclass
    class LineSettings:
        direction: Any = None
        edge_detection: Any = None
        bias: Any = None
        output_value: Any = None

    class Request:
        def __init__(self, offsets: dict[int, LineSettings]) -> None:
            self.settings = offsets
            self.fd = -1
            for off, s in offsets.items():
                line = LINES.setdefault(off, Line())
                assert line.requested is None, "line busy"
                line.requested = {"settings": s}
                if s.output_value is not None:
                    line.level = 1 if s.output_value == Value.ACTIVE else 0
                if s.edge_detection == line_mod.Edge.BOTH:  # type: ignore[attr-defined]
                    self.fd = line.open_events()

        def set_value(self, offset: int, value: Any) -> None:
            LINES[offset].level = 1 if value == Value.ACTIVE else 0

        def get_value(self, offset: int) -> Any:
            return Value.ACTIVE if LINES[offset].level else Value.INACTIVE

        def read_edge_events(self) -> list[object]:
            (off,) = self.settings
            LINES[off].take_event()
            return [object()]

        def release(self) -> None:
            for off in self.settings:
                LINES[off].release()

    def request_lines(path: str, consumer: str, config: dict[int, LineSettings]) -> Request:
        assert Path(path).name == "gpiochip0" and consumer == "edge-gateway"
        return Request(config)

    class Chip:
        def __init__(self, path: str) -> None:
            self.path = path

        def get_info(self) -> Any:
            return types.SimpleNamespace(label=LABELS[Path(self.path).name])

        def close(self) -> None:
            pass

    m.LineSettings, m.request_lines, m.Chip = LineSettings, request_lines, Chip  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fakegpiod2", m)
    monkeypatch.setitem(sys.modules, "fakegpiod2.line", line_mod)
    return m


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    LINES.clear()
    for name in ("gpiochip1", "gpiochip0"):
        (tmp_path / name).touch()
    return tmp_path


@pytest.mark.parametrize("api", ["1.x", "2.x"])
def test_led_button_and_edges(api: str, dev: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = v1_module() if api == "1.x" else v2_module(monkeypatch)
    gpio = LibgpiodBackend(module=module, dev=dev)
    assert gpio.chip_path == str(dev / "gpiochip0")  # the header's controller, not the expander
    # the LED: an output, starting dark (low), then written
    gpio.setup_output(17, False)
    assert LINES[17].level == 0 and LINES[17].requested is not None
    gpio.write(17, True)
    assert LINES[17].level == 1
    gpio.write(17, False)
    assert LINES[17].level == 0
    # the button: an input with the pull-up, idle high; watched for edges from the thread
    LINES.setdefault(27, Line()).level = 1
    gpio.setup_input(27, pull_up=True)
    assert gpio.read(27) is True
    edges = threading.Semaphore(0)
    gpio.watch(27, edges.release)
    LINES[27].edge(0)
    assert edges.acquire(timeout=5)
    assert gpio.read(27) is False
    LINES[27].edge(1)
    assert edges.acquire(timeout=5)
    assert gpio.read(27) is True
    # a second watched pin joins the same thread
    LINES.setdefault(22, Line()).level = 1
    gpio.setup_input(22, pull_up=False)
    other = threading.Semaphore(0)
    gpio.watch(22, other.release)
    LINES[22].edge(0)
    assert other.acquire(timeout=5)
    assert not edges.acquire(timeout=0.2)
    request = LINES[27].requested
    assert request is not None
    if api == "1.x":
        assert request["flags"] == module.LINE_REQ_FLAG_BIAS_PULL_UP
        assert LINES[22].requested and LINES[22].requested["flags"] == module.LINE_REQ_FLAG_BIAS_PULL_DOWN
    else:
        assert request["settings"].bias.name == "PULL_UP"
    threads = {t.name for t in threading.enumerate()}
    assert "gpio-edges" in threads
    gpio.close()
    assert all(line.requested is None for line in LINES.values())
    assert "gpio-edges" not in {t.name for t in threading.enumerate()}


def test_no_pi_controller_or_no_device(dev: Path, tmp_path: Path) -> None:
    saved = dict(LABELS)
    try:
        LABELS["gpiochip0"] = "gpio-mockup-A"
        with pytest.raises(RuntimeError, match="no Raspberry Pi GPIO controller among gpiochip0: gpio-mockup-A"):
            LibgpiodBackend(module=v1_module(), dev=dev)
    finally:
        LABELS.update(saved)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="no GPIO character device"):
        LibgpiodBackend(module=v1_module(), dev=empty)


def test_pi_backend_falls_back_to_rpi_gpio_then_reports_both(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_gpiod() -> LibgpiodBackend:
        raise ModuleNotFoundError("No module named 'gpiod'")

    sentinel = NullBackend()
    monkeypatch.setattr(backend_module, "LibgpiodBackend", no_gpiod)
    monkeypatch.setattr(backend_module, "RpiGpioBackend", lambda: sentinel)
    assert pi_backend() is sentinel

    def no_rpi() -> RpiGpioBackend:
        raise RuntimeError("No access to /dev/mem")

    monkeypatch.setattr(backend_module, "RpiGpioBackend", no_rpi)
    with caplog.at_level(logging.WARNING):
        assert isinstance(open_backend(True, is_pi=lambda: True), NullBackend)
    assert "libgpiod: ModuleNotFoundError: No module named 'gpiod'; RPi.GPIO: RuntimeError: No access" in caplog.text
