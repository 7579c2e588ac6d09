"""The uplink: moves records from the durable outbox to ThingsBoard, at least once, in order.

How it runs
    While the session is CONNECTED and its limits are final (the answer to ``getSessionLimits``,
    or the defaults after its timeout: see :mod:`gateway.upstream.session`), one task reads
    batches of records after a cursor, packs runs of consecutive records of the same kind into
    publishes of up to the session's ``maxPayloadSize`` (:func:`gateway.upstream.thingsboard.pack`),
    and keeps up to ``maxInflightMessages`` publishes in flight (one less when there is room, so
    that RPC replies and client requests never queue behind data). A PUBACK acknowledges that
    publish's records in the outbox, which deletes them. Records are never reordered: the cursor
    only moves forward while connected, and packing only joins neighbours of one kind.

At least once
    When the connection drops, every publish not acknowledged yet fails; the cursor goes back to
    just before the lowest unacknowledged id, and after the reconnect everything from there is sent
    again. Records that were acknowledged but are not deleted yet (the outbox deletes in batches) may
    go out twice: duplicates are acceptable and counted (``resends``); losses are not possible.

Too large to ever send
    A single record whose message alone exceeds ``maxPayloadSize`` can never be delivered; left in
    the queue it would block everything behind it forever. Such a record is acknowledged without
    being sent, counted in ``dropped_oversize`` and logged (device, kind, size); this is judged only
    under final limits, never provisional ones.

Cost
    No asyncio object per record: one future and one done-callback per publish, one wake-up event.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.core.records import Record
from gateway.logs import RateLimited
from gateway.upstream import thingsboard as tb
from gateway.upstream.session import ConnectionLost, SessionLimits, SessionState

log = logging.getLogger("gateway.upstream.uplink")


class OutboxReader(Protocol):
    """What the uplink needs of :class:`gateway.store.outbox.Outbox`."""

    async def read(self, after_id: int, max_records: int, max_bytes: int) -> list[Record]: ...

    async def wait_readable(self, after_id: int) -> None: ...

    def ack(self, ids: Iterable[int]) -> None: ...


class PublishSession(Protocol):
    """What the uplink needs of :class:`gateway.upstream.session.MqttSession`."""

    @property
    def state(self) -> SessionState: ...

    @property
    def limits(self) -> SessionLimits: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]: ...

    def add_state_listener(self, listener: Callable[[SessionState], None]) -> None: ...

    def add_limits_listener(self, listener: Callable[[SessionLimits], None]) -> None: ...


@dataclass(slots=True)
class UplinkStats:
    records_sent: int = 0  # records acknowledged by the broker (PUBACK), resends included
    publishes: int = 0  # publishes sent
    publishes_acked: int = 0
    publishes_failed: int = 0  # publishes whose connection dropped before the PUBACK
    bytes: int = 0  # payload bytes sent
    resends: int = 0  # records sent again after a connection loss
    dropped_oversize: int = 0  # records too large to ever send, acknowledged unsent
    in_flight: int = 0  # publishes awaiting their PUBACK now
    in_flight_records: int = 0
    peak_in_flight: int = 0


@dataclass(slots=True)
class _InFlight:
    ids: list[int]
    fut: asyncio.Future[None]
    generation: int


class Uplink:
    """Outbox -> MQTT session. ``await run()`` until cancelled; it survives any number of reconnects."""

    def __init__(
        self,
        outbox: OutboxReader,
        session: PublishSession,
        *,
        read_records: int = 20_000,
        read_bytes: int = 2 * 1024 * 1024,
        reserve_in_flight: int = 1,
    ) -> None:
        self._outbox = outbox
        self._session = session
        self._read_records = read_records
        self._read_bytes = read_bytes
        self._reserve = reserve_in_flight
        self._cursor = 0  # every record up to here was published (or dropped) on this connection
        self._high_water = 0  # the highest id ever published: at or below it, a publish is a resend
        self._generation = 0  # changes at every connection loss: work of an older one is void
        self._in_flight: dict[int, _InFlight] = {}  # keyed by the first id of each publish
        self._in_flight_records = 0
        self._wake = asyncio.Event()
        self._stats = UplinkStats()
        self._oversize_log = RateLimited(log, interval=60.0)
        # (record id, sequence, future): released once every record up to the id is acknowledged
        self._delivery_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_seq = 0
        self._closed = False
        session.add_state_listener(self._on_state)
        session.add_limits_listener(self._on_limits)

    def stats(self) -> UplinkStats:
        s = self._stats
        s.in_flight = len(self._in_flight)
        s.in_flight_records = self._in_flight_records
        return replace(s)

    @property
    def cursor(self) -> int:
        return self._cursor

    @property
    def delivered_through(self) -> int:
        """Every record with an id up to this one has been acknowledged by the broker (or dropped
        as oversize) since this uplink started, or was gone from the outbox before."""
        if self._in_flight:
            return min(self._in_flight) - 1
        return self._cursor

    async def wait_delivered(self, record_id: int) -> None:
        """Return once :attr:`delivered_through` reaches ``record_id``; ConnectionError if this
        uplink is closed first (a new one replaces it after re-provisioning)."""
        if self._closed:
            raise ConnectionError("the uplink stopped")
        if record_id <= self.delivered_through:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter_seq += 1
        heapq.heappush(self._delivery_waiters, (record_id, self._waiter_seq, fut))
        await fut

    def close(self) -> None:
        """Fail every :meth:`wait_delivered` (the uplink task is being stopped)."""
        self._closed = True
        waiters, self._delivery_waiters = self._delivery_waiters, []
        for _, _, fut in waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("the uplink stopped"))

    def _release_waiters(self) -> None:
        waiters = self._delivery_waiters
        if not waiters:
            return
        through = self.delivered_through
        while waiters and waiters[0][0] <= through:
            fut = heapq.heappop(waiters)[2]
            if not fut.done():
                fut.set_result(None)

    async def run(self) -> None:
        """Move records until cancelled."""
        session = self._session
        while True:
            if session.state is not SessionState.CONNECTED or not session.limits.final:
                await self._sleep()  # woken by the state and limits listeners
                continue
            generation = self._generation
            batch = await self._outbox.read(self._cursor, self._read_records, self._read_bytes)
            if generation != self._generation:
                continue  # the connection dropped meanwhile: the cursor was rewound
            if not batch:
                self._release_waiters()  # nothing in flight any more may have moved the mark
                await self._wait_readable(self._cursor, generation)
                continue
            await self._send(batch, generation)

    # -- internals ----------------------------------------------------------------------------

    async def _sleep(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    async def _wait_readable(self, after_id: int, generation: int) -> None:
        """Until there is something after ``after_id`` or the connection state changes."""
        readable = asyncio.ensure_future(self._outbox.wait_readable(after_id))
        self._wake.clear()
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            while generation == self._generation and self._session.state is SessionState.CONNECTED:
                if readable.done():
                    readable.result()
                    return
                if woken.done():
                    self._wake.clear()
                    woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait((readable, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (readable, woken):
                if not fut.done():
                    fut.cancel()

    async def _send(self, batch: list[Record], generation: int) -> None:
        session = self._session
        stats = self._stats
        n = len(batch)
        i = 0
        while i < n:
            if generation != self._generation:
                return
            limits = session.limits
            if not limits.final:
                return  # a new connection asks again: back to waiting for the answer
            cap = max(1, limits.max_inflight_messages - self._reserve)
            if len(self._in_flight) >= cap:
                await self._sleep()
                continue
            packed = tb.pack(batch, limits.max_payload_size, i)
            if packed is None:
                self._drop_oversize(batch[i], limits)
                i += 1
                continue
            fut = session.publish(packed.topic, packed.payload)
            if fut.done() and fut.exception() is not None:
                # Not connected any more: the state listener has rewound the cursor. Should the
                # session refuse while it still says CONNECTED, wait for news instead of spinning.
                if generation == self._generation:
                    log.warning("publish refused at once: %s", fut.exception())
                    await self._sleep()
                return
            end = i + packed.count
            ids = [r.id for r in batch[i:end]]
            entry = _InFlight(ids, fut, generation)
            self._in_flight[ids[0]] = entry
            self._in_flight_records += packed.count
            fut.add_done_callback(functools.partial(self._on_done, entry))
            if ids[0] <= self._high_water:
                stats.resends += sum(1 for x in ids if x <= self._high_water)
            last = ids[-1]
            if last > self._high_water:
                self._high_water = last
            self._cursor = last
            stats.publishes += 1
            stats.bytes += len(packed.payload)
            if len(self._in_flight) > stats.peak_in_flight:
                stats.peak_in_flight = len(self._in_flight)
            i = end

    def _drop_oversize(self, record: Record, limits: SessionLimits) -> None:
        self._stats.dropped_oversize += 1
        self._outbox.ack((record.id,))
        self._cursor = record.id
        if record.id > self._high_water:
            self._high_water = record.id
        self._oversize_log.warning(
            "oversize",
            "dropped record %d (%s of device %r, %d bytes of body): larger than the session's "
            "maxPayloadSize %d, it can never be sent",
            record.id,
            record.kind.name,
            record.device,
            len(record.body),
            limits.max_payload_size,
        )

    def _on_done(self, entry: _InFlight, fut: asyncio.Future[None]) -> None:
        if entry.generation == self._generation and self._in_flight.pop(entry.ids[0], None) is entry:
            self._in_flight_records -= len(entry.ids)
        exc = fut.exception()
        if exc is None:
            # Acknowledged by the broker: final, whatever happened to the connection since.
            self._stats.records_sent += len(entry.ids)
            self._stats.publishes_acked += 1
            self._outbox.ack(entry.ids)
            self._release_waiters()
        else:
            self._stats.publishes_failed += 1
            if not isinstance(exc, ConnectionLost) and entry.generation == self._generation:
                # Refused by the broker while the connection stays up (MQTT 5 reason code): send
                # again from there, as after a connection loss.
                log.warning("publish refused (%s): sending again from record %d", exc, entry.ids[0])
                self._in_flight[entry.ids[0]] = entry  # counted in the rewind
                self._rewind()
        self._wake.set()

    def _rewind(self) -> None:
        """Go back to before the lowest record not acknowledged; void the current generation."""
        lowest = None
        for entry in self._in_flight.values():
            fut = entry.fut
            if fut.done() and fut.exception() is None:
                continue  # acknowledged; its done-callback has not run yet
            first = entry.ids[0]
            if lowest is None or first < lowest:
                lowest = first
        if lowest is not None and lowest - 1 < self._cursor:
            self._cursor = lowest - 1
        self._in_flight.clear()
        self._in_flight_records = 0
        self._generation += 1
        self._wake.set()

    def _on_state(self, state: SessionState) -> None:
        if state is not SessionState.CONNECTED:
            self._rewind()
        else:
            self._wake.set()

    def _on_limits(self, _limits: SessionLimits) -> None:
        self._wake.set()
