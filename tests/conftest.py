"""Shared fixtures: real peer programs on ephemeral loopback ports.

``mosquitto``: a Debian mosquitto broker started for one test from a generated configuration, on a
free port, anonymous access. ``mosquitto_factory(...)`` builds others (password file, ACL, extra
configuration lines, persistence) and ``broker.kill()`` / ``broker.start()`` restart one on the
same port. Readiness is the broker's own "running" log line, not a sleep or a connect loop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the kernel's ephemeral choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoBroker:
    """One mosquitto process on 127.0.0.1:``port`` with a generated configuration file."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        persistence: bool = False,
        extra_config: str = "",
        start_timeout: float = 10.0,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.config_file = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "log_dest stderr",  # unbuffered, unlike stdout into a pipe
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",  # "running" is logged at this level
            "log_timestamp false",
            "max_queued_messages 0",  # no per-client queue limit: a slow subscriber loses nothing
            f"persistence {'true' if persistence else 'false'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to "mosquitto", who cannot read pytest's 0700 tmp dirs
        if persistence:
            lines += [f"persistence_location {workdir}/", "autosave_interval 0"]
        if users is not None:
            pwfile = workdir / "passwords"
            pwfile.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pwfile), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            aclfile = workdir / "acl"
            aclfile.write_text(acl)
            lines.append(f"acl_file {aclfile}")
        self.config_file.write_text("\n".join(lines) + "\n" + extra_config + "\n")
        self.proc: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []
        self._drain: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start (again, on the same port) and return once the broker says it is running."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.proc = proc
        ready = threading.Event()
        assert proc.stderr is not None
        stream = proc.stderr

        def drain() -> None:
            for line in stream:
                self.log_lines.append(line.rstrip())
                if " running" in line:
                    ready.set()
            ready.set()  # EOF: it exited

        self._drain = threading.Thread(target=drain, name=f"mosquitto-{self.port}", daemon=True)
        self._drain.start()
        if not ready.wait(self.start_timeout) or proc.poll() is not None:
            self.kill()
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(self.log_lines[-20:]))

    def stop(self) -> None:
        """SIGTERM: mosquitto closes its clients cleanly (and saves persistence if configured)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes; its clients see the connection drop."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        proc.wait(10)
        if self._drain is not None:
            self._drain.join(10)
            self._drain = None
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Build and start brokers: ``mosquitto_factory(users={"gw": "pw"}, acl=..., extra_config=...)``."""
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    brokers: list[MosquittoBroker] = []

    def make(**kwargs: object) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"mosquitto-{len(brokers)}", **kwargs)  # type: ignore[arg-type]
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A running anonymous mosquitto on a free loopback port."""
    return mosquitto_factory()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away PKI made with the openssl tool: ``ca.pem``; ``server.pem``/``server.key`` valid for
    127.0.0.1; ``device.pem``/``device.key`` and ``other.pem``/``other.key`` (client certificates)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command-line tool is not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")
    for name in ("server", "device", "other"):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        ext = "subjectAltName=IP:127.0.0.1\n" if name == "server" else "basicConstraints=CA:FALSE\n"
        (d / f"{name}.ext").write_text(ext)
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    return d
