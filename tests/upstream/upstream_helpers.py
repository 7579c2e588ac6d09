"""Helpers for the upstream tests: an in-memory outbox, a paho peer bridged to asyncio, small waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.core.records import Record, RecordKind
from gateway.upstream.session import (
    AccessToken,
    Credentials,
    MqttSession,
    SessionConfig,
    SessionLimits,
    SessionState,
)

TIMEOUT = 10.0


def session_config(port: int, credentials: Credentials | None = None, **kw: Any) -> SessionConfig:
    """Fast settings for tests: short backoff, short timeouts."""
    defaults: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "credentials": credentials or AccessToken("GW_TOKEN"),
        "reconnect_min": 0.02,
        "reconnect_max": 0.2,
        "connect_timeout": 5.0,
        "limits_timeout": 5.0,
        "keepalive": 30,
    }
    defaults.update(kw)
    return SessionConfig(**defaults)


async def wait_state(session: MqttSession, *states: SessionState, timeout: float = TIMEOUT) -> SessionState:
    return await asyncio.wait_for(session.wait_for_state(*states), timeout)


def limits_future(session: MqttSession, predicate: Callable[[SessionLimits], bool]) -> asyncio.Future[SessionLimits]:
    fut: asyncio.Future[SessionLimits] = asyncio.get_running_loop().create_future()

    def listener(limits: SessionLimits) -> None:
        if predicate(limits) and not fut.done():
            fut.set_result(limits)

    session.add_limits_listener(listener)
    if predicate(session.limits):
        fut.set_result(session.limits)
    return fut


class Watcher:
    """Conditions re-checked whenever something the test watches changes (``poke()``)."""

    def __init__(self) -> None:
        self.conditions: list[Condition] = []

    def poke(self) -> None:
        for cond in list(self.conditions):
            cond.poke()
            if cond.fut.done():
                self.conditions.remove(cond)

    async def until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        cond = Condition(predicate)
        self.conditions.append(cond)
        try:
            await cond.wait(timeout)
        finally:
            if cond in self.conditions:
                self.conditions.remove(cond)


def watch_acks(outbox: Any, watcher: Watcher) -> None:
    """Poke ``watcher`` after every ``outbox.ack`` (for outboxes that have no hook of their own)."""
    real_ack = outbox.ack

    def ack(ids: Iterable[int]) -> None:
        real_ack(ids)
        watcher.poke()

    outbox.ack = ack


class Condition:
    """An asyncio future that resolves once ``predicate()`` holds; re-checked by ``poke()``."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self.predicate = predicate
        self.fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.poke()

    def poke(self) -> None:
        if not self.fut.done() and self.predicate():
            self.fut.set_result(None)

    async def wait(self, timeout: float = TIMEOUT) -> None:
        await asyncio.wait_for(asyncio.shield(self.fut), timeout)


# -- an in-memory outbox with the real one's API ---------------------------------------------------


@dataclass
class FakeOutboxStats:
    records: int
    appended: int
    acked: int


class FakeOutbox:
    """The Outbox API in memory: ids increase, read is id order, ack deletes at once."""

    def __init__(self) -> None:
        self.records: dict[int, Record] = {}
        self.last_id = 0
        self.acked = 0
        self.ack_calls: list[list[int]] = []
        self._changed = asyncio.Event()
        self.reads = 0
        self.watcher = Watcher()  # poked at every append and ack

    def append(self, kind: RecordKind, device: str, body: str, ts_ms: int | None = None) -> asyncio.Future[None]:
        self.last_id += 1
        self.records[self.last_id] = Record(self.last_id, kind, device, ts_ms, body)
        self._changed.set()
        self.watcher.poke()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def put(self, kind: RecordKind, device: str, body: str, ts_ms: int | None = None) -> None:
        await self.append(kind, device, body, ts_ms)

    async def read(self, after_id: int, max_records: int, max_bytes: int) -> list[Record]:
        self.reads += 1
        out: list[Record] = []
        size = 0
        for rid, r in self.records.items():
            if rid <= after_id:
                continue
            if out and (len(out) >= max_records or size + r.size > max_bytes):
                break
            out.append(r)
            size += r.size
        await asyncio.sleep(0)  # the real one hops to a thread: let others run
        return out

    async def wait_readable(self, after_id: int) -> None:
        while not any(rid > after_id for rid in self.records):
            self._changed.clear()
            await self._changed.wait()

    def ack(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self.ack_calls.append(ids)
        for rid in ids:
            if self.records.pop(rid, None) is not None:
                self.acked += 1
        self.watcher.poke()

    def stats(self) -> FakeOutboxStats:
        return FakeOutboxStats(len(self.records), self.last_id, self.acked)


# -- a paho client in its own thread, bridged to the test's loop -----------------------------------


class Peer:
    """A plain MQTT client (paho, threaded): subscribes, records or answers what it receives."""

    def __init__(
        self,
        port: int,
        *,
        client_id: str = "",
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
        on_message: Callable[[Peer, str, bytes], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = port
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self.paho.max_inflight_messages_set(0)
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.user_on_message = on_message
        self.waiters: list[Condition] = []
        self._connack: asyncio.Future[Any] = self.loop.create_future()
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self.paho.on_connect = lambda c, u, f, rc, p: self._to_loop(self._connected, rc)
        self.paho.on_subscribe = lambda c, u, mid, rcs, p: self._to_loop(self._subacked, mid)
        self.paho.on_message = self._on_message

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed at teardown
            self.loop.call_soon_threadsafe(fn, *args)

    def _connected(self, rc: Any) -> None:
        if not self._connack.done():
            self._connack.set_result(rc)

    def _subacked(self, mid: int) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        with self.lock:
            self.messages.append((msg.topic, payload))
        if self.user_on_message is not None:
            self.user_on_message(self, msg.topic, payload)
        self._to_loop(self._poke)

    def _poke(self) -> None:
        for w in list(self.waiters):
            w.poke()

    def until(self, predicate: Callable[[], bool]) -> Condition:
        cond = Condition(predicate)
        self.waiters.append(cond)
        return cond

    async def connect(self) -> None:
        self.paho.connect("127.0.0.1", self.port, keepalive=30)
        self.paho.loop_start()
        rc = await asyncio.wait_for(self._connack, TIMEOUT)
        assert not rc.is_failure, rc

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        fut: asyncio.Future[None] = self.loop.create_future()
        with self.lock:  # the SUBACK cannot be handled before the mid is registered
            rc, mid = self.paho.subscribe(topic, qos)
            assert rc == mqtt.MQTT_ERR_SUCCESS
            self._subacks[mid] = fut
        await asyncio.wait_for(fut, TIMEOUT)

    def publish(self, topic: str, payload: Any, qos: int = 1) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.paho.publish(topic, data, qos)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()

    def received(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]
