"""The amd64 image: what image/build.sh produces, and the system booted under systemd-nspawn.

The boot test is the one of issue 6 ("the service booted for real under systemd") run on the image
of issue 7: the root file system that goes into the disk image, booted with ``systemd-nspawn -b``,
with a provisioning file where the boot partition is mounted. The gateway must reach READY under
systemd, import the file, provision itself against the ThingsBoard emulator and send telemetry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from image_helpers import (
    NSPAWN_TOOLS,
    Build,
    Emulator,
    NspawnGuest,
    build_image,
    debugfs,
    ext4_header,
    fat_files,
    fat_label,
    kernel_command_line_environment,
    network_namespace,
    partitions,
    provisioning_file,
    remove_tree,
    require,
    wait_for,
)

# Skipped where the tools or root are missing, failed instead under scripts/test (see require()).
pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]

DEVICE = "image-boot-test"
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# the build's output


def test_outputs_checksum_and_bmap(amd64_build: Build) -> None:
    image = amd64_build.path(".img")
    compressed = amd64_build.path(".img.zst")
    sums = amd64_build.path(".img.zst.sha256").read_text().split()
    assert sums[1] == compressed.name
    h = hashlib.sha256()
    with compressed.open("rb") as fh:
        for block in iter(lambda: fh.read(MIB), b""):
            h.update(block)
    assert sums[0] == h.hexdigest()
    bmap = ET.parse(amd64_build.path(".img.bmap")).getroot()
    assert int(bmap.findtext("ImageSize") or 0) == image.stat().st_size
    mapped = int(bmap.findtext("MappedBlocksCount") or 0) * int(bmap.findtext("BlockSize") or 0)
    assert 0 < mapped < image.stat().st_size  # the image is sparse, the bmap skips the holes
    for suffix in (".vmlinuz", ".initrd.img", ".manifest"):
        assert amd64_build.path(suffix).stat().st_size > 0
    stages = [line.split()[0] for line in amd64_build.timings.splitlines()]
    assert stages == ["base", "rootfs", "wheels", "gateway", "configure", "kernel", "pack", "compress", "total"]


def test_a_second_build_gives_the_same_image(
    amd64_build: Build, tmp_path_factory: pytest.TempPathFactory, report: Callable[[str], None]
) -> None:
    """Reproducible: a second build from scratch (its own empty cache: mmdebstrap from the Debian
    archive again, packages and wheels downloaded again) of the same commit gives a bit-identical
    disk image. Time stamps are clamped to SOURCE_DATE_EPOCH (the commit's time), file-system ids
    and hash seeds derived from it, the FAT written invariantly. (Days apart the archive may have
    moved on: the manifest says which package versions an image holds.)"""
    out = tmp_path_factory.mktemp("image-amd64-again")
    try:
        again = build_image(
            out, "amd64", report, timeout=float(os.environ.get("EDGE_GATEWAY_IMAGE_BUILD_TIMEOUT", "900")),
            COMPRESS="zst", COMPRESS_LEVEL="3", CACHE_DIR=str(out / "cache"),
        )
        first = amd64_build.path(".img.zst.sha256").read_text().split()[0]
        second = again.path(".img.zst.sha256").read_text().split()[0]
        assert second == first, "two builds of the same tree gave different images"
        assert again.path(".manifest").read_text() == amd64_build.path(".manifest").read_text()
    finally:
        remove_tree(out)


def test_disk_layout_boot_and_root_partitions(amd64_build: Build) -> None:
    image = amd64_build.path(".img")
    boot, root = partitions(image)
    assert (boot.type, boot.bootable, boot.start % (4 * MIB)) == ("c", True, 0)
    assert (root.type, root.start % (4 * MIB)) == ("83", 0)
    assert root.start >= boot.start + boot.size
    assert root.start + root.size == image.stat().st_size
    # FAT boot partition: label, the README and the example provisioning file
    assert fat_label(image, boot.start) == "RASPIFIRM"
    files = fat_files(image, boot.start)
    assert {"README.txt", "edge-gateway-provision.toml.example"} <= set(files), files
    # ext4 root: label, fills its partition, holds the gateway, an empty /boot/firmware mount point
    header = ext4_header(image, root.start)
    assert header["Filesystem volume name"] == "RASPIROOT"
    assert int(header["Block count"]) * int(header["Block size"]) == root.size
    assert debugfs(image, root.start, "cat /etc/machine-id").strip() == "uninitialized"
    listing = debugfs(image, root.start, "ls -l /boot/firmware")
    assert [line for line in listing.splitlines() if line.split() and line.split()[-1] not in (".", "..")] == []
    assert "edge-gateway" in debugfs(image, root.start, "ls /opt/edge-gateway/bin")
    # file ownership survived mkfs.ext4 -d: the service's state directory is created at boot, but
    # /etc/shadow is root's and private
    assert re.search(r"Mode:\s+0640", debugfs(image, root.start, "stat /etc/shadow"))


def test_appliance_settings(amd64_build: Build) -> None:
    r = amd64_build.rootfs
    assert (r / "etc/machine-id").read_text() == "uninitialized\n"
    assert not list((r / "etc/ssh").glob("ssh_host_*")), "SSH host keys must be made on each board"
    shadow = {line.split(":")[0]: line.split(":")[1] for line in (r / "etc/shadow").read_text().splitlines()}
    assert shadow["root"].startswith("!"), "root must be locked unless the builder configured it"
    assert "edge-gateway:" in (r / "etc/passwd").read_text()
    group = (r / "etc/group").read_text()
    assert re.search(r"^dialout:.*edge-gateway", group, re.M) and re.search(r"^gpio:.*edge-gateway", group, re.M)
    fstab = [
        line.split() for line in (r / "etc/fstab").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert {f[1]: f[0] for f in fstab} == {"/": "LABEL=RASPIROOT", "/boot/firmware": "LABEL=RASPIFIRM"}
    assert all("noatime" in f[3] for f in fstab) and not any(f[2] == "swap" for f in fstab)
    journald = (r / "etc/systemd/journald.conf.d/50-edge-gateway-image.conf").read_text()
    assert "Storage=volatile" in journald and "RuntimeMaxUse=" in journald
    assert "net.core.rmem_max = 33554432" in (r / "etc/sysctl.d/60-edge-gateway.conf").read_text()
    wants = r / "etc/systemd/system"
    for link in (
        "multi-user.target.wants/edge-gateway.service",
        "edge-gateway.service.wants/edge-gateway-provision-import.service",
        "multi-user.target.wants/edge-gateway-ssh-host-keys.service",
        "multi-user.target.wants/edge-gateway-grow-root.service",
        "local-fs.target.wants/tmp.mount",
    ):
        assert (wants / link).is_symlink(), link
    assert os.readlink(wants / "systemd-firstboot.service") == "/dev/null"
    assert (r / "etc/edge-gateway/gateway.toml").read_bytes() == (
        Path(__file__).parents[2] / "config/gateway.toml"
    ).read_bytes()
    assert (r / "etc/sysusers.d/edge-gateway.conf").is_file()
    # The LwM2M device profiles the configuration names (profiles_dir = "profiles", beside it)
    shipped = sorted((Path(__file__).parents[2] / "config/profiles").glob("*.toml"))
    assert [p.name for p in sorted((r / "etc/edge-gateway/profiles").glob("*.toml"))] == [p.name for p in shipped]
    # The gateway: a venv from wheels, python3-systemd from Debian, nothing to compile on the board
    manifest = amd64_build.path(".manifest").read_text()
    assert re.search(r"^deb python3-systemd ", manifest, re.M)
    assert re.search(r"^pypi edge_gateway ", manifest, re.M)
    assert not re.search(r"^deb (gcc|build-essential|python3-dev|libsystemd-dev) ", manifest, re.M)
    cfg = (r / "opt/edge-gateway/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg


def test_initramfs_generated_once(amd64_build: Build) -> None:
    # the log of the mmdebstrap run that made the base (kept next to the cached tarball)
    log = (amd64_build.out / "mmdebstrap.log").read_text()
    generated = re.findall(r"^update-initramfs: Generating (\S+)", log, re.M)
    assert len(generated) == 1, generated
    # the runs that installing the kernel and initramfs-tools asked for were deferred to that one
    assert re.search(r"^edge-gateway-image: deferred: update-initramfs -c -k ", log, re.M), log[-3000:]
    assert len(list((amd64_build.rootfs / "boot").glob("initrd.img-*"))) == 1


# ---------------------------------------------------------------------------------------------
# booted


@pytest.fixture
def booted(amd64_build: Build, tmp_path: Path) -> Iterator[tuple[NspawnGuest, Emulator]]:
    require(*NSPAWN_TOOLS)
    with network_namespace("egw-nspawn") as netns:
        emulator = Emulator(netns, tmp_path / "emulator.log")
        guest = None
        try:
            prov = provisioning_file(tmp_path / "edge-gateway-provision.toml", DEVICE)
            guest = NspawnGuest(
                amd64_build.rootfs,
                tmp_path / "nspawn",
                netns,
                {"edge-gateway-provision.toml": prov},
                kernel_command_line_environment(),
            )
            yield guest, emulator
        finally:
            if guest is not None:
                guest.stop()
            emulator.close()


def test_boots_under_nspawn_reaches_ready_provisions_and_sends_telemetry(
    booted: tuple[NspawnGuest, Emulator], report: Callable[[str], None]
) -> None:
    guest, emulator = booted

    def active() -> bool:
        return guest.run("systemctl", "is-active", "edge-gateway.service").stdout.strip() == "active"

    # READY=1: Type=notify makes the unit active only when the gateway says so
    wait_for(active, 120, "edge-gateway.service to be active (READY=1)", guest.journal)
    t_ready = time.monotonic() - guest.started
    wait_for(lambda: emulator.telemetry(DEVICE), 60, f"telemetry from {DEVICE}", emulator.text)
    t_telemetry = time.monotonic() - guest.started
    assert f"provisioned device '{DEVICE}'" in emulator.text()
    record = emulator.telemetry(DEVICE)[0]
    assert record["uplinkConnected"] is True

    state = guest.run("systemctl", "is-system-running", "--wait", timeout=120).stdout.strip()
    failed = guest.run("systemctl", "--failed", "--plain", "--no-legend").stdout.split()
    failed_units = [u for u in failed if u.endswith((".service", ".mount", ".socket", ".target", ".timer"))]
    # In a container only: the root is an overlay, which systemd-remount-fs cannot remount with the
    # image's ext4 options (errors=remount-ro). Everything else must have started.
    assert set(failed_units) <= {"systemd-remount-fs.service"}, (state, failed_units, guest.journal())

    status = guest.run("systemctl", "show", "-p", "StatusText", "--value", "edge-gateway.service").stdout
    assert "connected" in status, status
    # The provisioning file was imported (0600, the service's user) and removed from the boot partition
    assert guest.run("test", "-e", "/boot/firmware/edge-gateway-provision.toml").returncode == 1
    dropin = guest.run("stat", "-c", "%a %U", "/etc/edge-gateway/gateway.d/90-provisioning.toml").stdout.split()
    assert dropin == ["600", "edge-gateway"]
    creds = guest.run("stat", "-c", "%a %U", "/var/lib/edge-gateway/credentials.json").stdout.split()
    assert creds == ["600", "edge-gateway"]
    # First boot: this system's own SSH host keys, and sshd running with them
    assert guest.run("sh", "-c", "ls /etc/ssh/ssh_host_*_key").stdout.count("\n") >= 2
    assert guest.run("systemctl", "is-active", "ssh.service").stdout.strip() == "active"
    # Logs reach journald through python3-systemd (the venv sees Debian's package): structured fields
    journal = guest.run("journalctl", "-u", "edge-gateway.service", "-o", "json", "--no-pager").stdout
    entries = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    assert any(e.get("SYSLOG_IDENTIFIER") == "edge-gateway" and "LOGGER" in e for e in entries), journal[-3000:]
    # the shipped device profiles were loaded by the LwM2M bridge
    assert any("LwM2M profiles: lwm2m-device, temperature-sensor" in e.get("MESSAGE", "") for e in entries), (
        journal[-3000:]
    )
    # The journal is kept in RAM only
    assert guest.run("test", "-d", "/run/log/journal").returncode == 0
    assert guest.run("sh", "-c", "ls /var/log/journal 2>/dev/null").stdout.strip() == ""
    # The operator's CLI, asking the running service
    st = guest.run("edge-gateway", "status", "--json", "-c", "/etc/edge-gateway/gateway.toml")
    assert st.returncode == 0, st.stdout + st.stderr
    assert json.loads(st.stdout)

    # Clean shutdown within the unit's TimeoutStopSec
    t0 = time.monotonic()
    assert guest.stop() == 0
    report(
        f"amd64 under systemd-nspawn: edge-gateway.service active (READY=1) {t_ready:.1f} s after start, "
        f"first telemetry at {t_telemetry:.1f} s, powered off in {time.monotonic() - t0:.1f} s"
    )
    state = guest.upper / "var/lib/edge-gateway"
    assert stat.S_IMODE((state / "credentials.json").stat().st_mode) == 0o600
    # the service stopped cleanly: SQLite removes the outbox's write-ahead log when the last
    # connection closes (a killed gateway leaves it behind)
    assert (state / "outbox.sqlite3").is_file()
    assert not (state / "outbox.sqlite3-wal").exists(), sorted(p.name for p in state.iterdir())
