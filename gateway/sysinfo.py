"""The gateway's own health figures: CPU, memory, SoC temperature, addresses. Read from /proc and /sys.

Every reader returns None where the figure is not readable on this machine (a container, a board
without a thermal zone), never raises.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path


class CpuMeter:
    """CPU use of this process between two calls, in percent of one core."""

    def __init__(self) -> None:
        self._last_cpu = time.process_time()
        self._last_wall = time.monotonic()

    def percent(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        d_wall = wall - self._last_wall
        pct = 100.0 * (cpu - self._last_cpu) / d_wall if d_wall > 0 else 0.0
        self._last_cpu, self._last_wall = cpu, wall
        return round(pct, 1)


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def soc_temperature_c(base: Path = Path("/sys/class/thermal")) -> float | None:
    """The SoC temperature (thermal_zone0 on a Raspberry Pi), in degrees Celsius."""
    try:
        raw = (base / "thermal_zone0" / "temp").read_text().strip()
        return round(int(raw) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def addresses() -> list[str]:
    """Non-loopback IPv4/IPv6 addresses of this host (best effort, no network traffic)."""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addr = str(info[4][0])
            if not addr.startswith(("127.", "::1")):
                found.add(addr)
    except OSError:
        pass
    try:  # the address the default route would use: a connected UDP socket sends nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            found.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(found)


def board_serial() -> str | None:
    """The board's serial number: device tree first (Pi 4/5), then /proc/cpuinfo (older Pis)."""
    for path in ("/sys/firmware/devicetree/base/serial-number", "/proc/device-tree/serial-number"):
        try:
            s = Path(path).read_bytes().rstrip(b"\0").decode("ascii", "replace").strip()
            if s:
                return s
        except OSError:
            continue
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("serial"):
                s = line.split(":", 1)[1].strip()
                if s and set(s) != {"0"}:
                    return s
    except OSError:
        pass
    return None


def machine_id() -> str | None:
    try:
        s = Path("/etc/machine-id").read_text().strip()
        return s if s and s != "uninitialized" else None
    except OSError:
        return None


def default_device_name() -> str:
    serial = board_serial()
    if serial:
        return f"edge-gateway-{serial.lstrip('0')[-12:] or serial}"
    mid = machine_id()
    return f"edge-gateway-{mid[:12]}" if mid else f"edge-gateway-{socket.gethostname()}"
