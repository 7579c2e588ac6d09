"""The whole gateway as a process, against the ThingsBoard emulator on a real socket.

The producer is the gateway's synthetic-device adapter: after each round of readings is durable it
appends "<run> <seq>" to an ack file. That file is the proof of what the gateway accepted, so the
tests can compare exactly what arrived upstream with what was acknowledged, across kill -9s.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from gateway.sim.tbemu import ThingsBoardEmulator

TOKEN = "gw-token"
GATEWAY = "test-gateway"
DEVICES = 3


def write_config(tmp: Path, port: int, *, interval: float = 0.01, extra: str = "") -> Path:
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f"""
[gateway]
name = "{GATEWAY}"
state_dir = "{tmp / 'state'}"
telemetry_interval_s = 3600
[thingsboard]
host = "127.0.0.1"
port = {port}
credentials = "access_token"
token = "{TOKEN}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[lwm2m]
port = 0
dtls_port = 0
[clock]
trust = "always"
[outbox]
commit_interval_ms = 20
[demo]
synthetic_devices = {DEVICES}
interval_s = {interval}
ack_file = "{tmp / 'acks'}"
{extra}
"""
    )
    return cfg


async def start_gateway(cfg: Path, log: Path) -> asyncio.subprocess.Process:
    fh = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "-c", str(cfg), stdout=fh, stderr=fh
        )
    finally:
        fh.close()


def read_acks(path: Path) -> set[tuple[int, int]]:
    acked: set[tuple[int, int]] = set()
    if not path.exists():
        return acked
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:  # a kill may cut the last line short
            acked.add((int(parts[0]), int(parts[1])))
    return acked


def received(emu: ThingsBoardEmulator) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for child in emu.children(GATEWAY):
        out[child.name] = [(int(v["run"]), int(v["seq"])) for _ts, v in child.telemetry if "seq" in v]
    return out


def check_delivery(emu: ThingsBoardEmulator, acked: set[tuple[int, int]]) -> dict[str, int]:
    got = received(emu)
    assert len(got) == DEVICES, f"devices seen upstream: {sorted(got)}"
    dups = {}
    for name, seqs in got.items():
        missing = acked - set(seqs)
        assert not missing, f"{name}: {len(missing)} acknowledged records never arrived, e.g. {sorted(missing)[:5]}"
        # Per-device order: first arrivals are in production order within each run.
        first: dict[tuple[int, int], int] = {}
        for i, key in enumerate(seqs):
            first.setdefault(key, i)
        by_run: dict[int, list[int]] = defaultdict(list)
        for run, seq in sorted(first, key=first.__getitem__):
            by_run[run].append(seq)
        for run, order in by_run.items():
            assert order == sorted(order), f"{name}: run {run} arrived out of order"
        dups[name] = len(seqs) - len(first)
    return dups


async def wait_all_delivered(emu: ThingsBoardEmulator, acked: set[tuple[int, int]], timeout: float) -> None:
    def done() -> bool:
        got = received(emu)
        return len(got) == DEVICES and all(acked <= set(v) for v in got.values())

    await emu.wait_for(done, timeout=timeout)


async def wait_acks(emu: ThingsBoardEmulator, proc: asyncio.subprocess.Process, path: Path, n: int) -> None:
    """Until ``n`` rounds are acknowledged; fails at once if the gateway exits."""

    def done() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}; see {path.parent / 'gw.log'}")
        return len(read_acks(path)) >= n

    # The ack file is not an emulator event: poll it (bounded by the deadline).
    async with asyncio.timeout(30):
        while not done():
            await asyncio.sleep(0.05)


async def stop_gateway(proc: asyncio.subprocess.Process, log: Path | None = None) -> int:
    proc.send_signal(signal.SIGTERM)
    rc = await asyncio.wait_for(proc.wait(), 30)
    if rc != 0 and log is not None:
        print(f"gateway exited with {rc}; the end of its log:\n" + "\n".join(log.read_text().splitlines()[-40:]))
    return rc


async def test_records_flow_and_clean_stop(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_device(GATEWAY, token=TOKEN, gateway=True)
        cfg = write_config(tmp_path, emu.port, interval=0.02)
        proc = await start_gateway(cfg, tmp_path / "gw.log")
        await wait_acks(emu, proc, tmp_path / "acks", 20)
        assert await stop_gateway(proc, tmp_path / "gw.log") == 0
        acked = read_acks(tmp_path / "acks")
        await wait_all_delivered(emu, acked, timeout=10)
        check_delivery(emu, acked)
        assert emu.device(GATEWAY).attributes_client.get("version")
        for child in emu.children(GATEWAY):
            assert child.type == "synthetic"


@pytest.mark.slow
async def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    """20+ kill -9s while records stream; every acknowledged record arrives, duplicates are reported."""
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    log = tmp_path / "gw.log"
    async with ThingsBoardEmulator() as emu:
        emu.add_device(GATEWAY, token=TOKEN, gateway=True)
        cfg = write_config(tmp_path, emu.port, interval=0.005)
        for _ in range(22):
            proc = await start_gateway(cfg, log)
            await asyncio.sleep(rng.uniform(0.3, 2.5))  # a random moment: that is the point here
            proc.kill()
            await proc.wait()
        acked = read_acks(tmp_path / "acks")
        assert len(acked) > 100, "the producer never got going"
        proc = await start_gateway(cfg, log)
        await wait_acks(emu, proc, tmp_path / "acks", len(acked) + 1)
        await wait_all_delivered(emu, acked, timeout=60)
        assert await stop_gateway(proc, tmp_path / "gw.log") == 0
        acked = read_acks(tmp_path / "acks")
        await wait_all_delivered(emu, acked, timeout=10)
        dups = check_delivery(emu, acked)
        total = sum(len(v) for v in received(emu).values())
        print(f"\nkill -9 x22: {len(acked)} acknowledged rounds x {DEVICES} devices, {total} records received, "
              f"duplicates per device: {dups}")


@pytest.mark.parametrize("outage_s", [5.0, pytest.param(60.0, marks=pytest.mark.slow)])
async def test_uplink_outage_loses_nothing_and_keeps_order(tmp_path: Path, outage_s: float) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_device(GATEWAY, token=TOKEN, gateway=True)
        cfg = write_config(tmp_path, emu.port, interval=0.01)
        proc = await start_gateway(cfg, tmp_path / "gw.log")
        try:
            await emu.wait_for(lambda: sum(len(v) for v in received(emu).values()) >= 30, timeout=30)
            await emu.stop()
            before = len(read_acks(tmp_path / "acks"))
            await asyncio.sleep(outage_s)  # the outage itself: records keep coming meanwhile
            during = len(read_acks(tmp_path / "acks")) - before
            assert during > outage_s * 20, f"only {during} rounds accepted during the outage (log: {tmp_path})"
            await emu.start()
            acked = read_acks(tmp_path / "acks")
            await wait_all_delivered(emu, acked, timeout=60 + outage_s)
        finally:
            assert await stop_gateway(proc, tmp_path / "gw.log") == 0
        acked = read_acks(tmp_path / "acks")
        await wait_all_delivered(emu, acked, timeout=10)
        check_delivery(emu, acked)


async def test_unsynchronised_clock_records_are_restamped(tmp_path: Path) -> None:
    """Readings taken before the clock sync are held, then arrive stamped with when they were taken."""
    import time

    marker = tmp_path / "synchronized"
    async with ThingsBoardEmulator() as emu:
        emu.add_device(GATEWAY, token=TOKEN, gateway=True)
        cfg = write_config(tmp_path, emu.port, interval=0.05)
        text = cfg.read_text().replace('trust = "always"', f'trust = "marker"\nsync_marker = "{marker}"')
        cfg.write_text(text)
        t0 = time.time()
        proc = await start_gateway(cfg, tmp_path / "gw.log")
        try:
            await wait_acks(emu, proc, tmp_path / "acks", 20)
            held = received(emu)
            assert all(not v for v in held.values()), "unsynchronised readings were sent before the sync"
            t_sync = time.time()
            marker.touch()
            await emu.wait_for(lambda: all(len(v) >= 20 for v in received(emu).values()) and
                               len(received(emu)) == DEVICES, timeout=30)
        finally:
            assert await stop_gateway(proc, tmp_path / "gw.log") == 0
        for child in emu.children(GATEWAY):
            stamps = [ts for ts, v in child.telemetry if "seq" in v]
            early = [ts for ts in stamps if ts is not None and ts < t_sync * 1000]
            assert early, "no reading kept its pre-sync time"
            assert all(t0 * 1000 - 1000 <= ts <= t_sync * 1000 + 1000 for ts in early)
            assert stamps == sorted(stamps)


async def test_broken_config_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[thingsboard]\nport = "not a port"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "-c", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await proc.communicate()
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "thingsboard.port" in lines[0] and "expected an integer" in lines[0]


async def test_unwritable_state_dir_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root writes anywhere; a state dir below a regular file cannot be created by anyone
        blocker = tmp_path / "file"
        blocker.write_text("")
        state = blocker / "state"
    else:
        state = tmp_path / "ro"
        state.mkdir()
        state.chmod(0o500)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{state}"\n[thingsboard]\ncredentials = "access_token"\ntoken = "x"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "-c", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await proc.communicate()
    assert proc.returncode == 1
    errors = [line for line in err.decode().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(state) in errors[0], err.decode()
