"""systemd service notifications (sd_notify): READY, STATUS, WATCHDOG, STOPPING.

Uses systemd-python when it is installed and a plain datagram to $NOTIFY_SOCKET otherwise (the
protocol is one AF_UNIX datagram of ``KEY=VALUE`` lines; a leading ``@`` names an abstract socket).
The watchdog is pinged from the asyncio loop itself, so a blocked loop stops the pings and systemd
restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger("gateway.notify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self._watchdog_usec = int(usec)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC), or None without a watchdog."""
        return self._watchdog_usec / 2e6 if self._watchdog_usec else None

    def send(self, state: str) -> None:
        if self._address is None:
            return
        addr = self._address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(state.encode(), addr)
        except OSError as exc:  # systemd gone or socket full: never fatal
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1\n" + (f"STATUS={status}" if status else ""))
        self._last_status = status

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def stopping(self, status: str = "stopping") -> None:
        self.send(f"STOPPING=1\nSTATUS={status}")

    def start_watchdog(self) -> None:
        interval = self.watchdog_interval
        if interval is None or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._watchdog(interval), name="watchdog")

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
