"""Status LED patterns and the button with the fake GPIO backend, in virtual time (no real waiting)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from appliance_helpers import run_virtual

from gateway.hw.backend import (
    FakeBackend,
    LibgpiodBackend,
    NullBackend,
    RpiGpioBackend,
    is_raspberry_pi,
    open_backend,
)
from gateway.hw.button import Button
from gateway.hw.led import PATTERNS, Blink, LedPattern, StatusLed, pattern_for
from gateway.upstream.provisioning import Phase
from gateway.upstream.session import SessionState

LED, BTN = 17, 27


def approx_transitions(got: list[tuple[float, bool]], want: list[tuple[float, bool]]) -> None:
    assert len(got) == len(want), got
    for (t, level), (wt, wlevel) in zip(got, want, strict=True):
        assert level == wlevel and t == pytest.approx(wt, abs=1e-6), (got, want)


def expected(start: float, blink: Blink, until: float) -> list[tuple[float, bool]]:
    """Level changes a pattern should produce from ``start`` to ``until`` (exclusive)."""
    out: list[tuple[float, bool]] = []
    t, i = start, 0
    while t < until - 1e-9:
        out.append((t, i % 2 == 0))
        t += blink.steps[i]
        i = (i + 1) % len(blink.steps)
    return out


@pytest.mark.parametrize(
    "pattern", [LedPattern.BOOTING, LedPattern.PROVISIONING, LedPattern.OFFLINE, LedPattern.REJECTED, LedPattern.FAULT]
)
def test_blink_patterns_exact_timing(pattern: LedPattern) -> None:
    async def main() -> list[tuple[float, bool]]:
        loop = asyncio.get_running_loop()
        gpio = FakeBackend(clock=loop.time)
        led = StatusLed(gpio, LED, initial=LedPattern.OFF)
        led.start()
        await asyncio.sleep(1.0)
        led.set(pattern)
        await asyncio.sleep(10.05)  # ends between two steps (all are multiples of 0.1 s)
        await led.close()
        assert loop.time() == pytest.approx(11.05)
        return gpio.transitions(LED)

    got = run_virtual(main())
    want = [(0.0, False), *expected(1.0, PATTERNS[pattern], 11.05)]
    if want[-1][1]:
        want.append((11.05, False))  # close() leaves it dark
    approx_transitions(got, want)


def test_steady_patterns_and_switching() -> None:
    async def main() -> list[tuple[float, bool]]:
        loop = asyncio.get_running_loop()
        gpio = FakeBackend(clock=loop.time)
        led = StatusLed(gpio, LED)  # starts booting
        led.start()
        await asyncio.sleep(0.35)  # booting: on 0, off .1, on .2, off .3
        led.set(LedPattern.ONLINE)  # at once, from "on"
        await asyncio.sleep(60.0)  # steady: no writes at all
        led.set(LedPattern.ONLINE)  # the same again: nothing
        led.set(LedPattern.PROVISIONING)
        await asyncio.sleep(0.75)
        led.set(LedPattern.OFF)
        await asyncio.sleep(5.0)
        await led.close()
        return gpio.transitions(LED)

    approx_transitions(
        run_virtual(main()),
        [
            (0.0, False),  # set-up: dark
            (0.0, True), (0.1, False), (0.2, True), (0.3, False),
            (0.35, True),  # online
            # provisioning starts with "on": already on, no write; off after 0.5
            (60.85, False),
        ],
    )  # fmt: skip


def test_active_low_led_inverts_the_pin() -> None:
    async def main() -> list[tuple[float, bool]]:
        gpio = FakeBackend(clock=asyncio.get_running_loop().time)
        led = StatusLed(gpio, LED, active_low=True, initial=LedPattern.ONLINE)
        led.start()
        await asyncio.sleep(1)
        await led.close()
        return gpio.transitions(LED)

    approx_transitions(run_virtual(main()), [(0.0, True), (0.0, False), (1.0, True)])


def test_no_led_pin_and_failing_backend_are_harmless(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeBackend):
        def write(self, pin: int, level: bool) -> None:
            raise OSError(5, "Input/output error")

    async def main() -> None:
        none = StatusLed(FakeBackend(), -1)
        none.start()
        none.set(LedPattern.FAULT)
        await none.close()
        broken = StatusLed(Broken(), LED)
        broken.start()  # set-up fails: a warning, then nothing
        broken.set(LedPattern.FAULT)
        await asyncio.sleep(5)
        await broken.close()

    with caplog.at_level(logging.WARNING):
        run_virtual(main())
    assert [r.getMessage() for r in caplog.records] == [
        "status LED on GPIO 17 unavailable: [Errno 5] Input/output error"
    ]


def test_pattern_for_the_gateway_state() -> None:
    assert pattern_for() is LedPattern.BOOTING
    assert pattern_for(provisioning=Phase.PROVISIONING) is LedPattern.PROVISIONING
    assert pattern_for(provisioning=Phase.UNREACHABLE) is LedPattern.OFFLINE
    assert pattern_for(provisioning=Phase.REFUSED) is LedPattern.REJECTED
    assert pattern_for(provisioning=Phase.NOT_CONFIGURED) is LedPattern.FAULT
    assert pattern_for(provisioning=Phase.PROVISIONED, uplink=SessionState.CONNECTED) is LedPattern.ONLINE
    assert pattern_for(uplink=SessionState.CONNECTING) is LedPattern.OFFLINE
    assert pattern_for(uplink=SessionState.CREDENTIALS_REJECTED) is LedPattern.REJECTED
    assert pattern_for(uplink=SessionState.CONNECTED, fault=True) is LedPattern.FAULT
    assert pattern_for(uplink=SessionState.STOPPED) is LedPattern.OFF


# -- button -------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def short(self) -> None:
        self.events.append(("short", asyncio.get_running_loop().time()))

    def long(self) -> None:
        self.events.append(("long", asyncio.get_running_loop().time()))

    def rounded(self) -> list[tuple[str, float]]:
        return [(e, round(t, 6)) for e, t in self.events]


def make_button(gpio: FakeBackend, rec: Recorder, **kw: float | bool) -> Button:
    b = Button(gpio, BTN, on_short=rec.short, on_long=rec.long, **kw)  # type: ignore[arg-type]
    b.start()
    return b


def test_hold_10_s_is_a_factory_reset_while_still_held() -> None:
    rec = Recorder()

    async def main() -> None:
        gpio = FakeBackend(clock=asyncio.get_running_loop().time)
        b = make_button(gpio, rec)
        await asyncio.sleep(1.0)
        gpio.press(BTN)
        await asyncio.sleep(9.9)  # not yet
        assert rec.events == [] and b.pressed
        await asyncio.sleep(0.2)
        assert rec.rounded() == [("long", 11.05)]  # 1.0 + 0.05 debounce + 10
        await asyncio.sleep(20.0)  # holding on does not repeat it
        gpio.release(BTN)
        await asyncio.sleep(1.0)  # nor does the release count as a short press
        assert rec.rounded() == [("long", 11.05)] and not b.pressed
        b.close()

    run_virtual(main())


def test_short_press_and_debounce() -> None:
    rec = Recorder()

    async def main() -> None:
        gpio = FakeBackend(clock=asyncio.get_running_loop().time)
        b = make_button(gpio, rec, debounce_s=0.05)
        # contact bounce: 5 edges 10 ms apart, then held
        for i in range(5):
            gpio.press(BTN) if i % 2 == 0 else gpio.release(BTN)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        for i in range(4):  # bouncing on release, ending released
            gpio.release(BTN) if i % 2 == 0 else gpio.press(BTN)
            await asyncio.sleep(0.01)
        gpio.release(BTN)
        await asyncio.sleep(1.0)
        assert rec.rounded() == [("short", 0.64)]  # last edge 0.59 + 0.05
        assert (b.short_presses, b.long_presses) == (1, 0)
        # a glitch shorter than the debounce time counts for nothing
        gpio.press(BTN)
        await asyncio.sleep(0.02)
        gpio.release(BTN)
        await asyncio.sleep(1.0)
        assert len(rec.events) == 1
        # held 9 s, then let go: a short press (not a reset)
        gpio.press(BTN)
        await asyncio.sleep(9.0)
        gpio.release(BTN)
        await asyncio.sleep(0.1)
        assert [e for e, _t in rec.events] == ["short", "short"]
        b.close()

    run_virtual(main())


def test_button_held_at_start_is_ignored_until_released() -> None:
    rec = Recorder()

    async def main() -> None:
        gpio = FakeBackend(clock=asyncio.get_running_loop().time)
        gpio.pulls[BTN] = True
        gpio.levels[BTN] = False  # held (active low) before the gateway starts
        b = make_button(gpio, rec)
        assert b.pressed
        await asyncio.sleep(30.0)
        gpio.release(BTN)
        await asyncio.sleep(1.0)
        assert rec.events == []
        gpio.press(BTN)
        await asyncio.sleep(0.2)
        gpio.release(BTN)
        await asyncio.sleep(0.2)
        assert [e for e, _ in rec.events] == ["short"]
        b.close()

    run_virtual(main())


def test_active_high_button_and_edges_from_another_thread() -> None:
    rec = Recorder()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gpio = FakeBackend(clock=loop.time)
        b = make_button(gpio, rec, active_low=False, hold_s=3.0)
        assert gpio.pulls[BTN] is False  # pull-down
        done = asyncio.Event()
        # RPi.GPIO calls back from its own thread
        await loop.run_in_executor(None, gpio.press, BTN)
        loop.call_later(5.0, done.set)
        await done.wait()
        assert [e for e, _ in rec.events] == ["long"]
        b.close()

    run_virtual(main())


def test_callback_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        gpio = FakeBackend(clock=asyncio.get_running_loop().time)
        b = Button(gpio, BTN, on_short=boom)
        b.start()
        gpio.press(BTN)
        await asyncio.sleep(0.1)
        gpio.release(BTN)
        await asyncio.sleep(0.1)
        assert b.short_presses == 1
        b.close()

    with caplog.at_level(logging.ERROR):
        run_virtual(main())
    assert "button action failed" in caplog.text


# -- backends -------------------------------------------------------------------------------------------


def test_backend_choice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(open_backend(False), NullBackend)
    assert isinstance(open_backend(True, is_pi=lambda: False), NullBackend)
    fake = FakeBackend()
    assert open_backend(True, is_pi=lambda: True, factory=lambda: fake) is fake

    def no_module() -> RpiGpioBackend:
        raise ImportError("No module named 'RPi'")

    with caplog.at_level(logging.WARNING):
        assert isinstance(open_backend(True, is_pi=lambda: True, factory=no_module), NullBackend)
    assert "GPIO unavailable (ImportError: No module named 'RPi')" in caplog.text
    # on this (non-Pi) machine the real thing degrades to the null backend whatever happens
    assert isinstance(open_backend(True, is_pi=lambda: True), (LibgpiodBackend, RpiGpioBackend, NullBackend))
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\x00")
    assert is_raspberry_pi((tmp_path / "absent", model))
    model.write_bytes(b"QEMU Virtual Machine\x00")
    assert not is_raspberry_pi((model,))
    assert not is_raspberry_pi((tmp_path / "absent",))


def test_null_backend_is_silent() -> None:
    async def main() -> None:
        gpio = NullBackend()
        led = StatusLed(gpio, LED)
        led.start()
        b = Button(gpio, BTN, on_short=lambda: None)
        b.start()
        await asyncio.sleep(3)
        b.close()
        await led.close()

    run_virtual(main())
