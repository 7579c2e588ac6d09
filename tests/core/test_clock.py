"""Clock: sync detection (marker, kernel, always), caching, stamps and offsets with injected time."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.clock import Clock, kernel_clock_synced, read_boot_id


class FakeTime:
    """Injectable wall and monotonic clocks (seconds)."""

    def __init__(self, wall: float = 1_000.0, mono: float = 50.0) -> None:
        self.w = wall
        self.m = mono

    def wall(self) -> float:
        return self.w

    def mono(self) -> float:
        return self.m

    def advance(self, s: float) -> None:
        self.w += s
        self.m += s


class KernelStub:
    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> bool | None:
        self.calls += 1
        return self.answer


def test_always_trusts_the_wall_clock(tmp_path: Path) -> None:
    ft = FakeTime(wall=1_700_000_000.123, mono=10.0)
    c = Clock(sync_marker=tmp_path / "absent", trust="always", wall=ft.wall, mono=ft.mono, boot_id="b")
    assert c.synced()
    assert c.now_ms() == 1_700_000_000_123
    assert c.mono_ms() == 10_000
    assert c.offset_ms() == 1_700_000_000_123 - 10_000
    assert c.boot_id == "b"


def test_marker_policy_follows_the_marker_file_with_a_one_second_cache(tmp_path: Path) -> None:
    marker = tmp_path / "synchronized"
    ft = FakeTime()
    kernel = KernelStub(True)  # must be ignored by "marker"
    c = Clock(sync_marker=marker, trust="marker", wall=ft.wall, mono=ft.mono, boot_id="b", kernel_synced=kernel)
    assert not c.synced()
    assert c.now_ms() is None
    assert c.offset_ms() is None
    marker.touch()
    ft.advance(0.5)
    assert not c.synced(), "cached for 1 s"
    ft.advance(0.5)
    assert c.synced()
    assert c.now_ms() == int(ft.w * 1000)
    assert kernel.calls == 0
    marker.unlink()
    ft.advance(1.0)
    assert not c.synced(), "the marker went away (re-checked after the cache period)"


def test_auto_policy_uses_marker_or_kernel(tmp_path: Path) -> None:
    marker = tmp_path / "synchronized"
    ft = FakeTime()
    kernel = KernelStub(False)
    c = Clock(sync_marker=marker, trust="auto", wall=ft.wall, mono=ft.mono, boot_id="b", kernel_synced=kernel)
    assert not c.synced()
    kernel.answer = True
    ft.advance(1.0)
    assert c.synced(), "kernel says synchronised"
    kernel.answer = None  # adjtimex unavailable
    ft.advance(1.0)
    assert not c.synced()
    marker.touch()
    ft.advance(1.0)
    assert c.synced(), "marker alone is enough"


def test_auto_without_marker_path(tmp_path: Path) -> None:
    ft = FakeTime()
    c = Clock(sync_marker=None, trust="auto", wall=ft.wall, mono=ft.mono, boot_id="b", kernel_synced=lambda: True)
    assert c.synced()
    c2 = Clock(sync_marker=None, trust="marker", wall=ft.wall, mono=ft.mono, boot_id="b")
    assert not c2.synced()


def test_check_is_cached_on_the_hot_path(tmp_path: Path) -> None:
    ft = FakeTime()
    kernel = KernelStub(False)
    c = Clock(sync_marker=tmp_path / "m", trust="auto", wall=ft.wall, mono=ft.mono, boot_id="b", kernel_synced=kernel)
    for _ in range(10_000):
        c.now_ms()
        ft.advance(0.00005)  # 0.5 s in total
    assert kernel.calls == 1
    ft.advance(0.6)
    c.synced()
    assert kernel.calls == 2
    c.invalidate()
    c.synced()
    assert kernel.calls == 3


def test_sync_and_steps_give_consistent_offsets(tmp_path: Path) -> None:
    """A record taken before sync at mono m gets ts = m + offset = the wall time it was taken."""
    marker = tmp_path / "synchronized"
    ft = FakeTime(wall=86_400.0, mono=100.0)  # wrong wall clock (1970) before sync
    c = Clock(sync_marker=marker, trust="marker", wall=ft.wall, mono=ft.mono, boot_id="b", cache_s=0)
    taken_mono = c.mono_ms()
    assert c.now_ms() is None
    ft.advance(30.0)
    # NTP steps the wall clock forward to the real time and timesyncd touches the marker
    ft.w = 1_700_000_000.0
    marker.touch()
    assert c.synced()
    offset = c.offset_ms()
    assert offset is not None
    assert taken_mono + offset == 1_700_000_000_000 - 30_000
    # a later backwards step changes the offset and now_ms, never mono_ms
    before = c.mono_ms()
    ft.w -= 3600.0
    assert c.now_ms() == 1_700_000_000_000 - 3_600_000
    assert c.mono_ms() == before
    assert c.offset_ms() == offset - 3_600_000


def test_rejects_unknown_trust() -> None:
    with pytest.raises(ValueError, match="trust"):
        Clock(trust="sometimes")  # type: ignore[arg-type]


def test_boot_id_from_proc_or_fallback(tmp_path: Path) -> None:
    proc = Path("/proc/sys/kernel/random/boot_id")
    if proc.exists():
        assert Clock(sync_marker=None).boot_id == proc.read_text().strip()
    missing = read_boot_id(tmp_path / "nope")
    assert missing.startswith("process-")
    assert missing != read_boot_id(tmp_path / "nope"), "a fresh id per call when unknown"
    (tmp_path / "id").write_text("abc\n")
    assert read_boot_id(tmp_path / "id") == "abc"


def test_kernel_check_runs() -> None:
    assert kernel_clock_synced() in (True, False, None)
