"""The systemd units: ``systemd-analyze verify`` and the sandboxing score.

The units name /opt/edge-gateway/bin/edge-gateway, which is not installed here: verify runs on
temporary copies whose executable is /bin/true (verify checks that ExecStart= exists).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = sorted(p.name for p in SYSTEMD_DIR.glob("*.service"))
INSTALLED_BINARY = "/opt/edge-gateway/bin/edge-gateway"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def test_the_units_are_there() -> None:
    assert {"edge-gateway.service", "edge-gateway-provision-import.service"} <= set(UNITS)


@pytest.fixture
def unit_copies(tmp_path: Path) -> Path:
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text()
        assert INSTALLED_BINARY in text, f"{name} does not run {INSTALLED_BINARY}"
        (tmp_path / name).write_text(text.replace(INSTALLED_BINARY, "/bin/true"))
    return tmp_path


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify(unit_copies: Path, unit: str) -> None:
    assert ANALYZE is not None
    r = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit_copies / unit)],
        capture_output=True,
        text=True,
        cwd=unit_copies,
        timeout=60,
    )
    # verify also reports problems of other units it loads (the host's); only ours count
    ours = [line for line in (r.stdout + r.stderr).splitlines() if any(u in line for u in UNITS)]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def security(unit: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "security", "--offline=yes", *extra, str(unit)],
        capture_output=True,
        text=True,
        cwd=unit.parent,
        timeout=60,
    )


def exposure(r: subprocess.CompletedProcess[str]) -> float:
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


def test_service_sandboxing_score(unit_copies: Path) -> None:
    r = security(unit_copies / "edge-gateway.service", "--threshold=20")
    assert r.returncode == 0, r.stdout + r.stderr  # --threshold=20: fails above 2.0
    assert exposure(r) <= 2.0


def test_import_unit_sandboxing_score(unit_copies: Path) -> None:
    r = security(unit_copies / "edge-gateway-provision-import.service", "--threshold=20")
    assert r.returncode == 0, r.stdout + r.stderr
    assert exposure(r) <= 2.0


def test_import_unit_runs_before_the_service_only_when_there_is_a_file() -> None:
    text = (SYSTEMD_DIR / "edge-gateway-provision-import.service").read_text()
    assert "ConditionPathExists=/boot/firmware/edge-gateway-provision.toml" in text
    assert "Before=edge-gateway.service" in text
    assert re.search(r"^Type=oneshot$", text, re.M)
    assert re.search(r"^ExecStart=\S+ import-provisioning .*--owner edge-gateway", text, re.M)
