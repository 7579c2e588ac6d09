"""Deadlines for many objects on one event-loop timer: a heap and a single ``loop.call_at``.

20,000 registrations must not mean 20,000 timer handles. Every deadline of the LwM2M server
(registration lifetimes, request deadlines, held queue-mode requests) is an entry in one heap; the
loop only ever holds one timer, armed for the earliest entry.

Entries are cancelled lazily (marked, skipped when they come up); when more than half the heap is
cancelled it is rebuilt, so a churn of short-lived deadlines does not grow it without bound. A burst
of due entries (a fleet whose lifetimes all end in the same second) is worked off in slices of
:data:`BATCH` so that one expiry storm does not stall the loop.

>>> import asyncio
>>> async def demo() -> list[str]:
...     loop = asyncio.get_running_loop()
...     timers = TimerQueue(loop)
...     fired: list[str] = []
...     timers.call_at(loop.time() + 0.02, fired.append, "second")
...     timers.call_at(loop.time() + 0.01, fired.append, "first")
...     gone = timers.call_at(loop.time(), fired.append, "never")
...     timers.cancel(gone)
...     await asyncio.sleep(0.05)
...     return fired
>>> asyncio.run(demo())
['first', 'second']
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger("gateway.lwm2m.server")

#: How many due entries one timer callback runs before yielding to the loop.
BATCH: Final = 2000

# An entry is a list so that it can be cancelled in place: [when, seq, callback, arg].
# Lists compare element-wise and seq is unique, so callbacks are never compared.
Timer = list[Any]

_WHEN, _SEQ, _CALLBACK, _ARG = range(4)


class TimerQueue:
    """Many deadlines, one ``loop.call_at``. Times are ``loop.time()`` values."""

    __slots__ = ("_cancelled", "_handle", "_heap", "_loop", "_seq", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[Timer] = []
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._when = 0.0
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        """Live (not cancelled) entries."""
        return len(self._heap) - self._cancelled

    def call_at(self, when: float, callback: Callable[[Any], object], arg: Any) -> Timer:
        """Run ``callback(arg)`` at loop time ``when`` (or soon after); returns the entry for :meth:`cancel`."""
        self._seq += 1
        entry: Timer = [when, self._seq, callback, arg]
        heapq.heappush(self._heap, entry)
        if self._handle is None or when < self._when:
            self._arm(when)
        return entry

    def cancel(self, entry: Timer | None) -> None:
        """Forget ``entry`` (no-op for None, or an entry that already ran or was cancelled)."""
        if entry is None or entry[_CALLBACK] is None:
            return
        entry[_CALLBACK] = None
        entry[_ARG] = None
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[_CALLBACK] is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def close(self) -> None:
        """Drop every entry and the loop timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()
        self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        heap = self._heap
        now = self._loop.time()
        ran = 0
        while heap and heap[0][_WHEN] <= now:
            entry = heapq.heappop(heap)
            callback = entry[_CALLBACK]
            if callback is None:
                self._cancelled -= 1
                continue
            arg = entry[_ARG]
            entry[_CALLBACK] = None
            entry[_ARG] = None
            try:
                callback(arg)
            except Exception:
                log.exception("timer callback %r failed", callback)
            ran += 1
            if ran >= BATCH:
                # more are due: let the loop breathe, then continue
                self._when = now
                self._handle = self._loop.call_soon(self._fire)
                return
        if heap:
            self._arm(heap[0][_WHEN])
