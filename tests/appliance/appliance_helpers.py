"""Helpers for the appliance tests: a virtual-time event loop, provisioning settings for the emulator.

``VirtualTimeLoop``: an asyncio loop whose clock jumps. When nothing is ready, instead of blocking
in select() for the time until the next timer, the selector advances the loop's clock by exactly
that much and returns at once. Ten seconds of LED blinking or of holding a button take
microseconds, and the timestamps the code under test sees are exact. Real file descriptors are
still polled (without waiting); with no timer at all the loop waits in real time for another
thread's ``call_soon_threadsafe`` (at most REAL_WAIT_CAP seconds, then it raises instead of
hanging the test).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gateway.upstream.provisioning import ProvisionSettings

T = TypeVar("T")

TIMEOUT = 15.0
REAL_WAIT_CAP = 10.0
KEY = "prov-key-5f3a9c"
SECRET = "prov-secret-b81e44"


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self) -> None:
        self._inner = selectors.DefaultSelector()
        self.now = 0.0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer: only another thread (call_soon_threadsafe) can wake the loop. Wait for it in
            # real time, but not for ever.
            ready = self._inner.select(REAL_WAIT_CAP)
            if not ready:
                raise RuntimeError("virtual-time loop: nothing scheduled and nothing ready (the test would hang)")
            return ready
        self.now += timeout
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._vsel = _VirtualSelector()
        super().__init__(self._vsel)

    def time(self) -> float:
        return self._vsel.now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualTimeLoop` (clock starting at 0)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def prov_settings(port: int, state_dir: Path, **kw: Any) -> ProvisionSettings:
    """Fast settings against the emulator on 127.0.0.1:``port``."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "key": KEY,
        "secret": SECRET,
        "state_dir": state_dir,
        "timeout_s": 5.0,
        "retry_s": 300.0,
        "connect_timeout": 5.0,
        "reconnect_min": 0.02,
        "reconnect_max": 0.2,
    }
    values.update(kw)
    return ProvisionSettings(**values)
