"""Acknowledge only what is kept: a CON notification's ACK and a Send's answer wait for durability.

A listener (the ThingsBoard bridge) hands a notification's values to the outbox, whose group commit
makes them durable some milliseconds later (:meth:`RegistrationListener.durable_barrier` gives that
commit's future). The device is told "received" only once that future is done: a power cut in
between loses nothing the device believes delivered, because it retransmits what was not
acknowledged. The outbox commits in order, so the latest barrier also covers everything before it.

If the commit failed (the outbox refused the batch: disk full beyond its own policy, counted and
logged there) the notification is not acknowledged and a Send is answered 5.00.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

#: What to do once the barrier is known: called with True (kept) or False (not kept).
Action = Callable[[bool], None]


class DurableAcks:
    """Counts for the operator (``edge-gateway status``) and the deferral itself."""

    __slots__ = ("deferred", "withheld")

    def __init__(self) -> None:
        self.deferred = 0  # acknowledgements that waited for a commit
        self.withheld = 0  # acknowledgements not sent because the commit failed

    def after(self, barrier: asyncio.Future[None] | None, action: Action) -> None:
        """Run ``action(kept)`` now if ``barrier`` is None or done, else when it is done."""
        if barrier is None:
            action(True)
            return
        if barrier.done():
            self._run(action, barrier)
            return
        self.deferred += 1
        barrier.add_done_callback(functools.partial(self._run, action))

    def _run(self, action: Action, barrier: asyncio.Future[None]) -> None:
        kept = not barrier.cancelled() and barrier.exception() is None
        if not kept:
            self.withheld += 1
        action(kept)


def combine(barriers: list[asyncio.Future[None]]) -> asyncio.Future[None]:
    """One barrier for several listeners' (done once all are; failed if any failed)."""
    if len(barriers) == 1:
        return barriers[0]
    return asyncio.gather(*barriers)  # type: ignore[return-value]
