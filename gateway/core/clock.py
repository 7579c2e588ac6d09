"""The gateway's notion of time: is the wall clock trustworthy yet, and what time is it.

A Raspberry Pi has no battery-backed RTC: after a boot without network its wall clock starts at
whatever fake-hwclock saved (or 1970) and is wrong until NTP synchronises it. Records taken before
that must not carry a wall-clock timestamp. They are stamped with the *monotonic* clock of the
current boot instead (``boot_id``, ``mono_ms``) and re-stamped once the clock is synchronised:
``ts = mono_ms + offset_ms()``, where ``offset_ms() = wall - mono`` measured after the sync. This is
valid for every record of the same boot because ``CLOCK_MONOTONIC`` (``time.monotonic`` on Linux)
counts from boot, is shared by every process of that boot and is never stepped.

Whether the clock is synchronised:

* ``trust="marker"``: only when systemd-timesyncd's marker file exists
  (``/run/systemd/timesync/synchronized``, on a tmpfs, so gone after every boot);
* ``trust="auto"`` (default): the marker file exists, or the kernel says so (``adjtimex``: the
  ``STA_UNSYNC`` status bit is clear; chrony, ntpd and timesyncd all clear it when they discipline
  the clock);
* ``trust="always"``: the wall clock is always trusted (e.g. a board with an RTC).

The answer is cached for ``cache_s`` (1 s) of monotonic time so that the check (a ``stat`` and a
syscall) is never on a per-record hot path. ``wall``, ``mono`` and ``kernel_synced`` are injectable so
tests can simulate a sync or a wall-clock step without touching the system clock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

__all__ = ["DEFAULT_SYNC_MARKER", "Clock", "TrustPolicy", "kernel_clock_synced", "read_boot_id"]

TrustPolicy = Literal["auto", "always", "marker"]

DEFAULT_SYNC_MARKER = Path("/run/systemd/timesync/synchronized")
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
_STA_UNSYNC = 0x0040  # <linux/timex.h>: clock not synchronised


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` as the (legacy-ABI) glibc/musl ``adjtimex`` symbol expects it."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


_adjtimex: Callable[[ctypes._Pointer[_Timex]], int] | None = None
_adjtimex_loaded = False


def _load_adjtimex() -> Callable[[ctypes._Pointer[_Timex]], int] | None:
    global _adjtimex, _adjtimex_loaded
    if not _adjtimex_loaded:
        _adjtimex_loaded = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = getattr(libc, "adjtimex", None) or getattr(libc, "ntp_adjtime", None)
        except (OSError, AttributeError):
            fn = None
        if fn is not None:
            fn.argtypes = [ctypes.POINTER(_Timex)]
            fn.restype = ctypes.c_int
            _adjtimex = fn
    return _adjtimex


def kernel_clock_synced() -> bool | None:
    """The kernel's view (``adjtimex`` with ``modes = 0``, read-only): True when ``STA_UNSYNC`` is
    clear, False when set, None when the call is unavailable (not Linux, seccomp, ...)."""
    fn = _load_adjtimex()
    if fn is None:
        return None
    tx = _Timex()  # zeroed: modes = 0 only reads the state
    if fn(ctypes.pointer(tx)) < 0:
        return None
    return not (tx.status & _STA_UNSYNC)


def read_boot_id(path: Path = _BOOT_ID_PATH) -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``). When unreadable, a random id for this
    process: safe, since records of an unknown boot are then never re-stamped with this boot's
    offset (they are treated as records of an earlier boot)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return text or f"process-{uuid.uuid4()}"


class Clock:
    """Wall and monotonic time plus "is the wall clock synchronised" (see the module docstring)."""

    __slots__ = (
        "_boot_id",
        "_cache_ms",
        "_checked_at",
        "_kernel_synced",
        "_marker",
        "_mono",
        "_synced",
        "_trust",
        "_wall",
    )

    def __init__(
        self,
        sync_marker: Path | None = DEFAULT_SYNC_MARKER,
        trust: TrustPolicy = "auto",
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        boot_id: str | None = None,
        *,
        kernel_synced: Callable[[], bool | None] = kernel_clock_synced,
        cache_s: float = 1.0,
    ) -> None:
        if trust not in ("auto", "always", "marker"):
            raise ValueError(f"clock trust must be 'auto', 'always' or 'marker', not {trust!r}")
        if cache_s < 0:
            raise ValueError("clock cache_s must be >= 0")
        self._marker = sync_marker
        self._trust: TrustPolicy = trust
        self._wall = wall
        self._mono = mono
        self._kernel_synced = kernel_synced
        self._boot_id = boot_id if boot_id is not None else read_boot_id()
        self._cache_ms = int(cache_s * 1000)
        self._synced = trust == "always"
        self._checked_at: int | None = None

    @property
    def boot_id(self) -> str:
        """The id of the current boot: monotonic stamps are only comparable within one boot."""
        return self._boot_id

    @property
    def trust(self) -> TrustPolicy:
        return self._trust

    def _check(self) -> bool:
        if self._marker is not None:
            try:
                if self._marker.exists():
                    return True
            except OSError:
                pass
        if self._trust == "auto":
            return self._kernel_synced() is True
        return False

    def synced(self) -> bool:
        """Whether the wall clock can be trusted. Re-checked at most once per ``cache_s``."""
        if self._trust == "always":
            return True
        now = int(self._mono() * 1000)
        checked = self._checked_at
        if checked is None or now - checked >= self._cache_ms or now < checked:
            self._synced = self._check()
            self._checked_at = now
        return self._synced

    def invalidate(self) -> None:
        """Forget the cached answer: the next :meth:`synced` checks again."""
        self._checked_at = None

    def now_ms(self) -> int | None:
        """Wall-clock ms since the epoch, or None while the clock is not synchronised."""
        if self.synced():
            return int(self._wall() * 1000)
        return None

    def mono_ms(self) -> int:
        """Monotonic ms since boot (comparable across processes of the same boot)."""
        return int(self._mono() * 1000)

    def offset_ms(self) -> int | None:
        """``wall - mono`` in ms while synchronised (``ts = mono_ms + offset``), else None."""
        if not self.synced():
            return None
        return int(self._wall() * 1000) - int(self._mono() * 1000)

    def __repr__(self) -> str:
        return f"Clock(trust={self._trust!r}, marker={self._marker}, boot_id={self._boot_id!r})"
