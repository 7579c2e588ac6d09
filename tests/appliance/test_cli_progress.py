"""Progress in the operator's CLI: anything that takes longer than a second says so on stderr,
stdout (the command's output, --json for scripts) stays clean."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.progress import Progress


def test_quick_work_shows_nothing() -> None:
    out = io.StringIO()
    with Progress("quick", stream=out, after=0.5, tty=True):
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_slow_work_on_a_terminal_counts_seconds_then_erases_its_line() -> None:
    out = io.StringIO()
    with Progress("slow", stream=out, after=0.2, every=0.1, tty=True) as p:
        time.sleep(0.6)
    assert p.shown
    text = out.getvalue()
    assert "\redge-gateway: slow ... 0 s" in text
    assert text.count("\r") >= 3  # rewritten in place, never a new line
    assert "\n" not in text
    assert text.endswith("\r") and text.rstrip("\r").split("\r")[-1].strip() == ""  # erased


def test_slow_work_elsewhere_says_when_it_started_and_how_it_ended() -> None:
    out = io.StringIO()
    with Progress("slow", stream=out, after=0.2, tty=False):
        time.sleep(0.4)
    lines = out.getvalue().splitlines()
    assert lines[0] == "edge-gateway: slow ..."
    assert lines[1].startswith("edge-gateway: slow: done after 0.")
    out = io.StringIO()
    with pytest.raises(RuntimeError), Progress("doomed", stream=out, after=0.1, tty=False):
        time.sleep(0.3)
        raise RuntimeError("boom")
    assert "edge-gateway: doomed: failed after" in out.getvalue()


@pytest.fixture
def slow_service(tmp_path: Path) -> Iterator[Path]:
    """A control socket that answers after 1.5 s, as a busy service would."""
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{state}"\n')
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "control.sock"))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            time.sleep(1.5)
            status = {"running": True, "uplink": "connected", "outbox": {"records": 3}}
            conn.sendall(json.dumps({"ok": True, "result": status}).encode() + b"\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield cfg
    finally:
        server.close()
        t.join(5)


def test_status_from_a_slow_service_shows_progress_and_keeps_json_clean(
    slow_service: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--json", "-c", str(slow_service)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["outbox"]["records"] == 3
    assert "edge-gateway: asking the service (status) ...\n" in err
    assert "edge-gateway: asking the service (status): done after 1." in err
