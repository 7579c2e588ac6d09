"""The arm64 (Raspberry Pi) image booted under qemu-system-aarch64: long, so behind a switch.

    EDGE_GATEWAY_IMAGE_ARM64=1 pytest tests/image/test_image_arm64.py

Builds the image (ARCH=arm64: every package's maintainer scripts, the initramfs and pip run under
qemu-user; the base root file system is cached, so a rebuild skips most of that), puts a
provisioning file on its FAT boot partition with mtools, makes the disk 1 GiB larger (as a bigger
SD card would be), and boots it on qemu's ``virt`` machine (Cortex-A53, TCG: no KVM here) with the
kernel and initrd the build took out of the image. The serial console must show the gateway's
service started (Type=notify: READY=1), the ThingsBoard emulator must see the gateway provision
itself and send telemetry, and after a clean shutdown the image must hold what the first boot made:
a machine id, SSH host keys, the root file system grown to the disk, the provisioning file gone.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from image_helpers import (
    BUILD_TOOLS,
    INSPECT_TOOLS,
    Build,
    Emulator,
    QemuGuest,
    build_image,
    debugfs,
    ext4_header,
    fat_files,
    fat_put,
    kernel_command_line_environment,
    network_namespace,
    partitions,
    provisioning_file,
    remove_tree,
    require,
)

ENABLED = os.environ.get("EDGE_GATEWAY_IMAGE_ARM64") == "1"
# Measured on 2 shared cores, uncached: build 16 min (the initramfs under qemu-user 10 min of it),
# READY 68 s after power-on. The limits fail a stuck run clearly, well inside CI's 90 minutes.
BUILD_TIMEOUT = float(os.environ.get("EDGE_GATEWAY_IMAGE_ARM64_BUILD_TIMEOUT", "2400"))
BOOT_TIMEOUT = float(os.environ.get("EDGE_GATEWAY_IMAGE_ARM64_BOOT_TIMEOUT", "420"))
pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(not ENABLED, reason="the arm64 image build and boot take long: set EDGE_GATEWAY_IMAGE_ARM64=1"),
    pytest.mark.timeout(BUILD_TIMEOUT + BOOT_TIMEOUT + 900),
]

DEVICE = "image-arm64-test"
MIB = 1024 * 1024
GROW = 1024 * MIB


@pytest.fixture(scope="module")
def arm64_build(tmp_path_factory: pytest.TempPathFactory, report: Callable[[str], None]) -> Build:
    require(*BUILD_TOOLS, *INSPECT_TOOLS, "qemu-system-aarch64", "ip")
    out = tmp_path_factory.mktemp("image-arm64")
    return build_image(out, "arm64", report, timeout=BUILD_TIMEOUT, COMPRESS="none")


def test_arm64_image_boots_on_qemu_virt_and_provisions(
    arm64_build: Build, tmp_path: Path, report: Callable[[str], None]
) -> None:
    image = tmp_path / "disk.img"
    try:
        boot_and_check(arm64_build, image, tmp_path, report)
    finally:
        image.unlink(missing_ok=True)  # 1 GiB of data or more


def boot_and_check(arm64_build: Build, image: Path, tmp_path: Path, report: Callable[[str], None]) -> None:
    subprocess.run(["cp", "--sparse=always", str(arm64_build.path(".img")), str(image)], check=True)
    boot, root = partitions(image)
    built_root_size = root.size
    firmware = set(fat_files(image, boot.start))
    # raspi-firmware's files: the Pi's boot firmware, config.txt, cmdline.txt, kernel, initrd, DTBs
    assert {"config.txt", "cmdline.txt", "start4.elf", "fixup4.dat", "bootcode.bin"} <= firmware, firmware
    assert any(re.fullmatch(r"vmlinuz-.*-arm64", f) for f in firmware), firmware
    assert any(re.fullmatch(r"initrd\.img-.*-arm64", f) for f in firmware), firmware
    assert any(f.startswith("bcm2711-rpi-4-b") for f in firmware), firmware
    # The installer's provisioning file, on the boot partition
    prov = provisioning_file(tmp_path / "prov.toml", DEVICE, host="10.0.2.2")
    fat_put(image, boot.start, prov, "edge-gateway-provision.toml")
    # A bigger card: first boot grows the root partition and file system to it
    with image.open("r+b") as fh:
        fh.truncate(image.stat().st_size + GROW)

    with network_namespace("egw-qemu") as netns:
        emulator = Emulator(netns, tmp_path / "emulator.log")
        guest = QemuGuest(
            image,
            arm64_build.path(".vmlinuz"),
            arm64_build.path(".initrd.img"),
            tmp_path,
            netns,
            # what raspi-firmware's cmdline.txt says, with qemu's serial console
            # (journald copies the journal to the console: systemd's own status lines stop once the
            # serial getty owns it)
            append=["console=ttyAMA0", "root=LABEL=RASPIROOT", "rw", "fsck.repair=yes", "net.ifnames=0", "rootwait",
                    "systemd.journald.forward_to_console=1", *kernel_command_line_environment()],
            machine=["-M", "virt", "-cpu", "cortex-a53", "-smp", "2", "-m", "1024", "-accel", "tcg,thread=multi"],
        )  # fmt: skip
        try:
            t_ready = guest.wait_console(r"systemd\[1\]: Started edge-gateway\.service", BOOT_TIMEOUT)
            deadline = time.monotonic() + 300
            while not emulator.telemetry(DEVICE) and time.monotonic() < deadline:
                assert guest.proc.poll() is None, guest.text()[-4000:]
                time.sleep(1)
            assert emulator.telemetry(DEVICE), emulator.text()[-3000:] + guest.text()[-4000:]
            t_telemetry = time.monotonic() - guest.started
            assert f"provisioned device '{DEVICE}'" in emulator.text()
            console = guest.text()
            for unit in ("edge-gateway-provision-import", "edge-gateway-ssh-host-keys", "edge-gateway-grow-root"):
                assert re.search(rf"systemd\[1\]: Finished {unit}\.service", console), f"{unit}:\n{console[-4000:]}"
            assert not re.search(r"systemd\[1\]: Failed to start", console), console[-6000:]
            report(
                f"arm64 under qemu (TCG): edge-gateway.service started (READY) {t_ready:.0f} s after power-on, "
                f"first telemetry at {t_telemetry:.0f} s"
            )
        finally:
            clean = guest.stop()
            emulator.close()
    assert clean, "the guest did not power off on the power button\n" + guest.text()[-3000:]

    # What the first boot left in the image
    boot, root = partitions(image)
    # growpart leaves the last 33 sectors alone (where a backup GPT would go)
    end = root.start + root.size
    assert image.stat().st_size - MIB < end <= image.stat().st_size, "the root partition was not grown"
    assert root.size >= built_root_size + GROW - MIB
    header = ext4_header(image, root.start)
    fs_size = int(header["Block count"]) * int(header["Block size"])
    assert root.size - int(header["Block size"]) < fs_size <= root.size, "the file system was not grown"
    assert "edge-gateway-provision.toml" not in fat_files(image, boot.start)
    machine_id = debugfs(image, root.start, "cat /etc/machine-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id
    keys = debugfs(image, root.start, "ls /etc/ssh")
    assert "ssh_host_ed25519_key" in keys, keys
    assert "credentials.json" in debugfs(image, root.start, "ls /var/lib/edge-gateway")
    assert "root-grown" in debugfs(image, root.start, "ls /var/lib/edge-gateway-image")


@pytest.fixture(scope="module", autouse=True)
def _cleanup(tmp_path_factory: pytest.TempPathFactory) -> object:
    yield None
    for d in tmp_path_factory.getbasetemp().glob("image-arm64*"):
        for pattern in ("*.img*", "*.vmlinuz"):
            for f in d.glob(pattern):
                f.unlink()
        remove_tree(d / "rootfs")
        remove_tree(d / ".work")
