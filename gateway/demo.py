"""Synthetic devices for the demo and for load tests of the uplink: telemetry without real hardware.

One task drives all of them (no task per device). Each reading carries a per-device sequence
number, so that whoever watches upstream can check that nothing is lost or reordered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.core.hub import DeviceHub, RpcError

log = logging.getLogger("gateway.demo")


class SyntheticDevices:
    name = "demo"

    def __init__(
        self, hub: DeviceHub, count: int, interval_s: float, prefix: str = "demo-sensor-", ack_file: str = ""
    ) -> None:
        self.hub = hub
        # Where accepted rounds are reported: the crash tests' proof of what was acknowledged.
        self._ack_fd = os.open(ack_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if ack_file else None
        self.names = [f"{prefix}{i + 1}" for i in range(count)]
        self.interval_s = interval_s
        self.seq = 0
        self.run_id = secrets.randbits(31)  # tells this process's readings from an earlier run's
        self._task: asyncio.Task[None] | None = None
        self._offsets: dict[str, float] = {}

    async def start(self) -> None:
        for name in self.names:
            await self.hub.connect(name, "synthetic", self)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="demo-devices")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ack_fd is not None:
            os.close(self._ack_fd)
            self._ack_fd = None

    def reading(self, name: str, seq: int, now: float) -> dict[str, Any]:
        phase = (zlib.crc32(name.encode()) % 360) / 57.3
        return {
            "run": self.run_id,
            "seq": seq,
            "temperature": round(21.0 + 3.0 * math.sin(now / 60.0 + phase) + self._offsets.get(name, 0.0), 2),
            "humidity": round(45.0 + 10.0 * math.cos(now / 90.0 + phase), 1),
        }

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.seq += 1
            now = time.time()
            pending: asyncio.Future[None] | None = None
            for name in self.names:
                pending = self.hub.telemetry_nowait(name, self.reading(name, self.seq, now))
            if pending is not None:
                try:
                    await pending  # one group commit carries the whole round
                except Exception as exc:  # outbox full/disk full: say so, keep producing
                    log.warning("demo: readings not queued: %s", exc)
                else:
                    if self._ack_fd is not None:
                        os.write(self._ack_fd, b"%d %d\n" % (self.run_id, self.seq))
            next_at += self.interval_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def rpc(self, device: str, method: str, params: Any, timeout: float) -> Any:
        if method == "getValue":
            return self.reading(device, self.seq, time.time())
        if method == "setOffset":
            if not isinstance(params, int | float) or isinstance(params, bool):
                raise RpcError("bad_params", "setOffset expects a number")
            self._offsets[device] = float(params)
            return {"offset": float(params)}
        raise RpcError("unknown_method", f"synthetic device {device!r} has no method {method!r}")

    async def attributes_updated(self, device: str, values: Mapping[str, Any], deleted: Sequence[str]) -> None:
        log.info("demo: %s shared attributes updated: %s", device, ", ".join(sorted(values)) or "-")
