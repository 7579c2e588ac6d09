"""Helpers for the bridge tests (no tests here): an outbox that records what the hub appends, and a
bridge on the LwM2M test server.

The recording outbox commits once per event-loop iteration (a group commit in miniature); waiting is
event-driven: :meth:`RecordingOutbox.until` resolves when a condition holds after an append.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.core.hub import DeviceHub
from gateway.core.records import RecordKind
from gateway.lwm2m.bridge import BridgeConfig, LwM2mBridge, Profile, ProfileSet
from gateway.lwm2m.bridge.profiles import parse_profile
from gateway.lwm2m.server import LwM2mServer


@dataclass(slots=True)
class Appended:
    kind: RecordKind
    device: str
    body: dict[str, Any]
    ts_ms: int | None


class RecordingOutbox:
    """The outbox protocol of :class:`DeviceHub`, keeping every record in memory."""

    def __init__(self) -> None:
        self.records: list[Appended] = []
        self._future: asyncio.Future[None] | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self.fail = False
        #: True: batches are committed only by :meth:`commit` (to hold the bridge before durability)
        self.manual = False

    def append(self, kind: RecordKind, device: str, body: str, ts_ms: int | None = None) -> asyncio.Future[None]:
        self.records.append(Appended(kind, device, json.loads(body), ts_ms))
        if self._future is None:
            loop = asyncio.get_running_loop()
            self._future = loop.create_future()
            if not self.manual:
                loop.call_soon(self.commit)
        self._changed()
        return self._future

    def commit(self) -> None:
        """Make the open batch durable (resolve its future)."""
        future, self._future = self._future, None
        if future is not None and not future.done():
            if self.fail:
                future.set_exception(RuntimeError("disk full (test)"))
            else:
                future.set_result(None)

    def _changed(self) -> None:
        still = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                still.append((predicate, future))
        self._waiters = still

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AssertionError(f"condition not met within {timeout} s; records: {self.records[-20:]}") from None

    # -- views --------------------------------------------------------------------------------------

    def of(self, device: str, kind: RecordKind) -> list[Appended]:
        return [r for r in self.records if r.device == device and r.kind is kind]

    def telemetry(self, device: str) -> list[tuple[int | None, dict[str, Any]]]:
        return [(r.ts_ms, r.body) for r in self.of(device, RecordKind.TELEMETRY)]

    def latest(self, device: str) -> dict[str, Any]:
        """Every telemetry key of ``device`` with its latest value."""
        merged: dict[str, Any] = {}
        for _, body in self.telemetry(device):
            merged.update(body)
        return merged

    def attributes(self, device: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for r in self.of(device, RecordKind.ATTRIBUTES):
            merged.update(r.body)
        return merged

    def kinds(self, device: str) -> list[RecordKind]:
        return [r.kind for r in self.records if r.device == device]


@dataclass(slots=True)
class Harness:
    outbox: RecordingOutbox
    hub: DeviceHub
    bridge: LwM2mBridge


def profile(text_or_data: str | dict[str, Any], name: str = "test-profile") -> Profile:
    """A profile from TOML text (or its tables)."""
    import tomllib

    data = tomllib.loads(text_or_data) if isinstance(text_or_data, str) else text_or_data
    return parse_profile(data, source=f"<{name}>", default_name=name)


@contextlib.asynccontextmanager
async def bridged(
    server: LwM2mServer, profiles: Iterable[Profile] | ProfileSet, **config: Any
) -> AsyncIterator[Harness]:
    """A started bridge between ``server`` and a hub over a :class:`RecordingOutbox`."""
    outbox = RecordingOutbox()
    hub = DeviceHub(outbox)
    profile_set = profiles if isinstance(profiles, ProfileSet) else ProfileSet(profiles)
    bridge = LwM2mBridge(server, hub, profile_set, config=BridgeConfig(**config))
    await bridge.start()
    try:
        yield Harness(outbox, hub, bridge)
    finally:
        await bridge.stop()


TEMPERATURE_PROFILE = """
name = "temperature-sensor"
after_registration = "read_and_observe_profile"

[match]
endpoints = ["sim-*", "node-*"]

[paths."/3303/0/5700"]
telemetry = true
observe = true

[paths."/3303/0/5701"]
key = "units"
attribute = true

[paths."/3/0/9"]
key = "battery"
telemetry = true
observe = true
pmin = 1
pmax = 30

[paths."/3/0/0"]
key = "manufacturer"
attribute = true

[paths."/3/0/14"]
key = "utcOffset"

[paths."/3303/0/5601"]
key = "minMeasured"
"""
