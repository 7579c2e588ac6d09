"""sd_notify against a real NOTIFY_SOCKET datagram socket: READY, STATUS, WATCHDOG."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

from gateway.notify import Notifier
from gateway.sim.tbemu import ThingsBoardEmulator


def _socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    return s, path


async def _recv(s: socket.socket, timeout: float = 10.0) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.sock_recv(s, 4096), timeout)).decode()


async def test_blocked_loop_stops_watchdog_pings(tmp_path: Path) -> None:
    s, path = _socket(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    assert n.watchdog_interval == 0.05
    n.ready("ok")
    assert (await _recv(s)).startswith("READY=1")
    n.start_watchdog()
    assert await _recv(s) == "WATCHDOG=1"
    assert await _recv(s) == "WATCHDOG=1"
    time.sleep(0.5)  # the loop is blocked: that is what is being tested
    pending = 0
    while True:
        try:
            s.recv(4096)
            pending += 1
        except BlockingIOError:
            break
    assert pending <= 1, f"{pending} pings were sent while the loop was blocked"
    assert await _recv(s) == "WATCHDOG=1"  # pings resume with the loop
    await n.close()
    s.close()


async def test_gateway_process_notifies_ready_status_watchdog(tmp_path: Path) -> None:
    s, path = _socket(tmp_path)
    async with ThingsBoardEmulator() as emu:
        emu.add_device("gw", token="tok", gateway=True)
        cfg = tmp_path / "g.toml"
        cfg.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
[thingsboard]
port = {emu.port}
credentials = "access_token"
token = "tok"
[lwm2m]
port = 0
dtls_port = 0
[clock]
trust = "always"
""")
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "PATH": "/usr/bin:/bin"}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(cfg), env=env,
                                                    stderr=asyncio.subprocess.DEVNULL)
        try:
            seen: list[str] = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                msg = await _recv(s, timeout=max(0.1, deadline - time.monotonic()))
                seen.append(msg)
                ready = any(m.startswith("READY=1") for m in seen)
                connected = any("STATUS=connected to" in m for m in seen)
                pings = sum(m == "WATCHDOG=1" for m in seen)
                if ready and connected and pings >= 2:
                    break
            else:
                raise AssertionError(f"notifications seen: {seen}")
            ready_at = next(i for i, m in enumerate(seen) if m.startswith("READY=1"))
            assert all(m != "WATCHDOG=1" for m in seen[:ready_at])
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        rest: list[str] = []
        while True:
            try:
                rest.append(s.recv(4096).decode())
            except BlockingIOError:
                break
        assert any(m.startswith("STOPPING=1") for m in rest)
    s.close()
