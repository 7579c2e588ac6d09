"""Helpers for the image tests: build the image, run the ThingsBoard emulator in a network namespace
of its own, boot the image under systemd-nspawn or qemu, read files out of the disk image.

Every boot test has its own network: a namespace made with ``ip netns add`` holding only a loopback
interface. The emulator listens on 127.0.0.1 there, the booted system (nspawn: the same namespace;
qemu: user-mode networking, whose 10.0.2.2 is that loopback) reaches it, and nothing uses or sees
the host's ports (the host's 1883 and 5683 may be taken).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "image" / "build.sh"
PACK = REPO / "image" / "lib" / "pack.sh"

PROVISION_KEY = "image-test-key-4b1d"
PROVISION_SECRET = "image-test-secret-77c2"

#: Settings only the tests give the booted gateway, on the kernel command line (systemd.setenv=):
#: the test machine's clock is not NTP-synchronised (the gateway would rightly hold its records
#: until it is), and the gateway's own telemetry comes every 5 s instead of every minute.
TEST_ENVIRONMENT = {
    "EDGE_GATEWAY__CLOCK__TRUST": "always",
    "EDGE_GATEWAY__GATEWAY__TELEMETRY_INTERVAL_S": "5.0",
}


#: What image/build.sh needs (scripts/build-image --install-deps installs it), and what booting needs.
BUILD_TOOLS = ("mmdebstrap", "sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "bmaptool", "zstd", "unshare", "findmnt")
NSPAWN_TOOLS = ("systemd-nspawn", "nsenter", "ip")
INSPECT_TOOLS = ("sfdisk", "mdir", "minfo", "debugfs", "dumpe2fs")

#: Set by scripts/test (the README's and CI's test command, which installs every tool first): an
#: image test that cannot run here then fails with the reason instead of being skipped.
REQUIRED = os.environ.get("EDGE_GATEWAY_IMAGE_REQUIRED") == "1"


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def skip_reason(*tools: str, root: bool = True) -> str | None:
    """Why an image test cannot run here (not root, a tool missing), or None."""
    if root and os.geteuid() != 0:
        return "image tests run as root (mmdebstrap, mounts, network namespaces)"
    missing = missing_tools(*tools)
    if missing:
        return f"not installed: {', '.join(missing)} (scripts/build-image --install-deps installs them)"
    return None


def require(*tools: str, root: bool = True) -> None:
    """Skip the test when this machine cannot run it, or fail with the reason when
    EDGE_GATEWAY_IMAGE_REQUIRED=1 (scripts/test, CI: there it must run)."""
    reason = skip_reason(*tools, root=root)
    if reason is None:
        return
    if REQUIRED:
        pytest.fail(f"{reason} [EDGE_GATEWAY_IMAGE_REQUIRED=1: scripts/test runs the image tests]", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# building


@dataclass
class Build:
    out: Path
    name: str
    log: Path
    timings: str

    def path(self, suffix: str) -> Path:
        return self.out / f"{self.name}{suffix}"

    @property
    def rootfs(self) -> Path:
        return self.out / "rootfs"


def build_image(out: Path, arch: str, report: Callable[[str], None], timeout: float, **env: str) -> Build:
    """Run image/build.sh for ``arch`` into ``out``; its stage timings go to ``report``."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    environment = {**os.environ, "ARCH": arch, "OUT": str(out), **env}
    t0 = time.monotonic()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["bash", str(BUILD)], env=environment, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = proc.wait(timeout)
        except BaseException:  # the timeout, pytest-timeout, Ctrl-C: stop the whole build, let it clean up
            stop_process_group(proc, grace=120)
            remove_tree(out / ".work")
            raise
    took = time.monotonic() - t0
    text = log.read_text(errors="replace")
    assert returncode == 0, f"image/build.sh ARCH={arch} failed ({returncode}) after {took:.0f} s:\n" + "\n".join(
        text.splitlines()[-60:]
    )
    timings = (out / "timings.txt").read_text()
    report(f"image/build.sh ARCH={arch}: {took:.0f} s\n" + timings.rstrip())
    version = re.search(r'^__version__ = "(.*)"$', (REPO / "gateway" / "__init__.py").read_text(), re.M)
    assert version
    return Build(out=out, name=f"edge-gateway-{version.group(1)}-{arch}", log=log, timings=timings)


def stop_process_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the process group ``proc`` leads (started with start_new_session), SIGKILL after
    ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def remove_tree(path: Path) -> None:
    """rm -rf that never crosses into another file system (a mount left inside)."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


# ---------------------------------------------------------------------------------------------
# disk image inspection without mounting


@dataclass
class Partition:
    start: int  # bytes
    size: int  # bytes
    type: str
    bootable: bool


def partitions(image: Path) -> list[Partition]:
    r = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True)
    table = json.loads(r.stdout)["partitiontable"]
    assert table["label"] == "dos", table
    sector = int(table.get("sectorsize", 512))
    return [
        Partition(p["start"] * sector, p["size"] * sector, p["type"], bool(p.get("bootable", False)))
        for p in table["partitions"]
    ]


def mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def fat_files(image: Path, offset: int) -> list[str]:
    r = subprocess.run(
        ["mdir", "-/", "-b", "-i", f"{image}@@{offset}", "::/"], capture_output=True, text=True, env=mtools_env()
    )
    assert r.returncode == 0, r.stderr
    return [line.strip().removeprefix("::/") for line in r.stdout.splitlines() if line.strip()]


def fat_label(image: Path, offset: int) -> str:
    r = subprocess.run(["minfo", "-i", f"{image}@@{offset}", "::"], capture_output=True, text=True, env=mtools_env())
    m = re.search(r'disk label="([^"]*)"', r.stdout)
    assert m, r.stdout + r.stderr
    return m.group(1).strip()


def fat_put(image: Path, offset: int, src: Path, name: str) -> None:
    subprocess.run(["mcopy", "-o", "-i", f"{image}@@{offset}", str(src), f"::/{name}"], check=True, env=mtools_env())


def debugfs(image: Path, offset: int, request: str) -> str:
    r = subprocess.run(
        ["debugfs", "-R", request, f"{image}?offset={offset}"], capture_output=True, text=True, timeout=60
    )
    return r.stdout


def ext4_header(image: Path, offset: int) -> dict[str, str]:
    r = subprocess.run(["dumpe2fs", "-h", f"{image}?offset={offset}"], capture_output=True, text=True, timeout=60)
    out = {}
    for line in r.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------
# network namespace and emulator


@contextlib.contextmanager
def network_namespace(prefix: str) -> Iterator[str]:
    name = f"{prefix}-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Emulator:
    """``python -m gateway.sim.tbemu`` on 127.0.0.1:1883 inside a network namespace."""

    def __init__(self, netns: str, log: Path) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            [
                "ip", "netns", "exec", netns,
                sys.executable, "-m", "gateway.sim.tbemu",
                "--host", "127.0.0.1", "--port", "1883",
                "--provision", f"{PROVISION_KEY}:{PROVISION_SECRET}",
                "--print-telemetry", "--summary-interval", "5",
            ],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(lambda: "MQTT on 127.0.0.1:1883" in self.text(), 30, "the emulator to listen", self.text)
        except BaseException:
            self.close()
            raise

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def telemetry(self, device: str) -> list[dict[str, object]]:
        records = []
        for line in self.text().splitlines():
            if line.startswith(device + " "):
                _, _, payload = line.split(" ", 2)
                records.append(json.loads(payload))
        return records

    def close(self) -> None:
        stop_process_group(self.proc, grace=10)
        self._fh.close()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, details: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{details()[-6000:]}")


def provisioning_file(path: Path, device: str, host: str | None = None) -> Path:
    lines = [
        "[provisioning]",
        f'key = "{PROVISION_KEY}"',
        f'secret = "{PROVISION_SECRET}"',
        f'device_name = "{device}"',
    ]
    if host:
        lines += ["", "[thingsboard]", f'host = "{host}"', "port = 1883"]
    path.write_text("\n".join(lines) + "\n")
    return path


def kernel_command_line_environment(env: Mapping[str, str] = TEST_ENVIRONMENT) -> list[str]:
    return [f"systemd.setenv={k}={v}" for k, v in env.items()]


# ---------------------------------------------------------------------------------------------
# systemd-nspawn


class NspawnGuest:
    """The image's root file system booted with ``systemd-nspawn -b``.

    The tree is not changed: the guest runs on an overlay (lower: the tree, upper: ``work/upper``)
    mounted in a private mount namespace that ends with nspawn, as does the tmpfs nspawn needs on
    /run/systemd/nspawn on a host not run by systemd. ``--register=no --keep-unit``: there is no
    machined or host systemd to register with. Network: the namespace ``netns``.
    """

    def __init__(self, rootfs: Path, work: Path, netns: str, boot_files: Mapping[str, Path], args: list[str]) -> None:
        self.work = work
        self.upper = work / "upper"
        for d in ("upper", "ovwork", "merged"):
            (work / d).mkdir(parents=True, exist_ok=True)
        copies = "\n".join(
            f'install -m 0644 "{src}" "{work}/merged/boot/firmware/{name}"' for name, src in boot_files.items()
        )
        script = f"""set -eu
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
mount -t overlay overlay -o "lowerdir={rootfs},upperdir={work}/upper,workdir={work}/ovwork" "{work}/merged"
{copies}
exec systemd-nspawn --quiet --directory="{work}/merged" --boot --register=no --keep-unit \\
    --machine=egw-image-test --network-namespace-path=/run/netns/{netns} --console=pipe \\
    -- {" ".join(args)}
"""
        (work / "nspawn.sh").write_text(script)
        self.console = work / "console.log"
        self._fh = self.console.open("wb")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", str(work / "nspawn.sh")],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started = time.monotonic()
        self.init_pid = 0
        try:
            wait_for(self._find_init, 60, "the container's init", self._console_text)
        except BaseException:
            self.stop(timeout=10)
            raise

    def _console_text(self) -> str:
        return self.console.read_text(errors="replace")

    def _find_init(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited ({self.proc.returncode}):\n{self._console_text()}")
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    self.init_pid = int(stat.parent.name)
                    return True
        return False

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in the guest (its namespaces, its root, its programs)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def journal(self) -> str:
        r = self.run("journalctl", "-b", "--no-pager", "-o", "short-monotonic")
        return r.stdout + r.stderr

    def stop(self, timeout: float = 60) -> int | None:
        """Power the guest off (nspawn turns SIGTERM into the container's clean shutdown); after
        ``timeout`` seconds kill nspawn and the container's init (which would outlive nspawn: it is
        PID 1 of its own PID namespace, and killing it ends every process in there)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.init_pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)
                stop_process_group(self.proc, grace=0)
        if not self._fh.closed:
            self._fh.close()
        return self.proc.returncode


# ---------------------------------------------------------------------------------------------
# qemu


class QemuGuest:
    """An image booted by qemu-system-aarch64 (TCG) with the kernel and initrd taken from it."""

    def __init__(
        self,
        image: Path,
        kernel: Path,
        initrd: Path,
        work: Path,
        netns: str,
        append: list[str],
        machine: list[str],
        qemu: str = "qemu-system-aarch64",
    ) -> None:
        self.console = work / "console.log"
        self.monitor = work / "monitor.sock"
        cmd = [
            "ip", "netns", "exec", netns, qemu, *machine,
            "-nodefaults", "-no-reboot", "-display", "none",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", " ".join(append),
            "-drive", f"file={image},if=none,format=raw,id=disk0,cache=unsafe", "-device", "virtio-blk-pci,drive=disk0",
            "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-serial", f"file:{self.console}",
            "-monitor", f"unix:{self.monitor},server,nowait",
        ]  # fmt: skip
        self._err = (work / "qemu.stderr").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._err, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()

    def text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, timeout: float) -> float:
        """Seconds since qemu started when ``pattern`` (a regex) showed up on the serial console."""
        rx = re.compile(pattern, re.M)

        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu exited ({self.proc.returncode}) before {pattern!r}:\n{self.text()[-6000:]}")
            return bool(rx.search(self.text()))

        wait_for(seen, timeout, f"{pattern!r} on the serial console", self.text)
        return time.monotonic() - self.started

    def _monitor(self, command: str) -> None:
        """Send a command to qemu's human monitor and wait until it has run (the next prompt)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.monitor))
            seen = b""
            while b"(qemu)" not in seen:
                seen += s.recv(4096) or b"(qemu)"
            s.sendall(command.encode() + b"\n")
            seen = b""
            while b"(qemu)" not in seen:
                chunk = s.recv(4096)
                if not chunk:
                    break
                seen += chunk

    def stop(self, timeout: float = 240) -> bool:
        """Press the power button (the virt machine's GPIO key, which logind turns into a clean
        poweroff), again every minute until qemu exits. True if it did so within ``timeout``."""
        clean = False
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self._monitor("system_powerdown")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(min(60.0, max(1.0, deadline - time.monotonic())))
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        else:
            clean = True
        self._err.close()
        return clean
