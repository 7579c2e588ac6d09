"""The image's own files, checked without building anything (fast, no root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from image_helpers import require

from gateway.upstream.provisioning import read_provision_file

IMAGE = Path(__file__).resolve().parents[2] / "image"
UNITS = sorted((IMAGE / "files/rootfs/usr/local/lib/systemd/system").glob("*.service"))


def test_the_boot_partition_example_is_a_provisioning_file_the_gateway_accepts() -> None:
    settings = read_provision_file(IMAGE / "files/boot/edge-gateway-provision.toml.example")
    assert set(settings["provisioning"]) == {"key", "secret"}
    assert set(settings["thingsboard"]) == {"host", "port"}


@pytest.mark.parametrize(
    "script",
    ["build.sh", "lib/pack.sh", "files/rootfs/usr/local/sbin/edge-gateway-grow-root"],
)
def test_shell_scripts_parse(script: str) -> None:
    path = IMAGE / script
    shell = "bash" if path.read_text().startswith("#!/usr/bin/env bash") else "sh"
    r = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert path.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_first_boot_units_verify(unit: Path, tmp_path: Path) -> None:
    require("systemd-analyze", root=False)
    # verify checks that ExecStart= exists: point the image's own script at a stand-in
    text = unit.read_text().replace("/usr/local/sbin/edge-gateway-grow-root", "/bin/true")
    (tmp_path / unit.name).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / unit.name)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    ours = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
