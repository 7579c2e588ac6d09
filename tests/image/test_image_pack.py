"""image/lib/pack.sh: the disk image made from two trees without mounting anything (seconds, no root).

The full build and the boot tests are in test_image_amd64.py and test_image_arm64.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from image_helpers import INSPECT_TOOLS, PACK, debugfs, ext4_header, fat_files, fat_label, fat_put, partitions, require

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _tools() -> None:
    require(*INSPECT_TOOLS, "mkfs.vfat", "mcopy", "mkfs.ext4", root=False)


def trees(tmp_path: Path) -> tuple[Path, Path]:
    boot, root = tmp_path / "boot", tmp_path / "root"
    (boot / "overlays").mkdir(parents=True)
    (boot / "config.txt").write_text("arm_64bit=1\n")
    (boot / "overlays" / "README").write_text("overlays\n")
    (boot / "edge-gateway-provision.toml.example").write_text("[provisioning]\n")
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "machine-id").write_text("uninitialized\n")
    (root / "etc" / "secret").write_text("x\n")
    (root / "etc" / "secret").chmod(0o600)
    return boot, root


def pack(tmp_path: Path, boot: Path, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(PACK), str(boot), str(root), str(tmp_path / "disk.img")],
        capture_output=True,
        text=True,
        env={**os.environ, "BOOT_MIB": "64", "ROOT_MIB": "64", **env},
        timeout=120,
    )


def test_mbr_fat_boot_and_ext4_root(tmp_path: Path) -> None:
    boot, root = trees(tmp_path)
    r = pack(tmp_path, boot, root)
    assert r.returncode == 0, r.stderr
    image = tmp_path / "disk.img"
    assert image.stat().st_size == (4 + 64 + 64) * MIB
    p1, p2 = partitions(image)
    assert (p1.start, p1.size, p1.type, p1.bootable) == (4 * MIB, 64 * MIB, "c", True)
    assert (p2.start, p2.size, p2.type) == (68 * MIB, 64 * MIB, "83")
    assert fat_label(image, p1.start) == "RASPIFIRM"
    assert set(fat_files(image, p1.start)) >= {
        "config.txt",
        "overlays/",
        "overlays/README",
        "edge-gateway-provision.toml.example",
    }
    assert ext4_header(image, p2.start)["Filesystem volume name"] == "RASPIROOT"
    assert debugfs(image, p2.start, "cat /etc/machine-id") == "uninitialized\n"
    assert "0600" in debugfs(image, p2.start, "stat /etc/secret")
    # the installer's step: a file put on the boot partition of the image, still without mounting
    (tmp_path / "prov.toml").write_text("[provisioning]\nkey = 'k'\nsecret = 's'\n")
    fat_put(image, p1.start, tmp_path / "prov.toml", "edge-gateway-provision.toml")
    assert "edge-gateway-provision.toml" in fat_files(image, p1.start)


def test_sparse_and_reproducible_with_a_seed(tmp_path: Path) -> None:
    boot, root = trees(tmp_path)
    env = {"SEED": "edge-gateway-test", "SOURCE_DATE_EPOCH": "1700000000"}
    assert pack(tmp_path, boot, root, **env).returncode == 0
    first = (tmp_path / "disk.img").read_bytes()
    assert (tmp_path / "disk.img").stat().st_blocks * 512 < len(first) / 2  # holes stay holes
    assert pack(tmp_path, boot, root, **env).returncode == 0
    assert (tmp_path / "disk.img").read_bytes() == first


def test_refuses_a_root_whose_boot_firmware_is_not_empty(tmp_path: Path) -> None:
    boot, root = trees(tmp_path)
    (root / "boot" / "firmware" / "config.txt").write_text("stray\n")
    r = pack(tmp_path, boot, root)
    assert r.returncode != 0
    assert "boot/firmware is not empty" in r.stderr
