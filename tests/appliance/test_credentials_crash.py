"""kill -9 at every step of writing (or forgetting) the credentials: never half of them.

A child process performs one save()/forget() and SIGKILLs itself just before its k-th file-system
call that can change the disk, for every k (see _credentials_crash_child.py). After each kill,
load() must return either the complete old credentials (or None when there were none) or the
complete new ones; the outbox is never touched; a later save() leaves no debris behind.

kill -9 is not a power cut (the page cache survives it), but the ordering that makes a power cut
safe is the same one this checks: every file the commit point references is complete and durable
(fsynced, renamed, directory fsynced) before the commit point is renamed into place.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.store import credentials
from gateway.store.credentials import GatewayCredentials, X509Pem
from gateway.upstream.session import X509, AccessToken, MqttBasic

CHILD = Path(__file__).with_name("_credentials_crash_child.py")
REPO = Path(__file__).resolve().parents[2]
OUTBOX = b"SQLite format 3\x00 queued records"

OLD_X509 = X509Pem(b"-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n", b"OLD PRIVATE KEY\n" * 64)


def run_child(state: Path, operation: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(CHILD), str(state), operation, str(kill_at)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def prepare(base: Path, initial: str) -> Path:
    state = base / "state"
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(mode=0o700)
    (state / "outbox.sqlite3").write_bytes(OUTBOX)
    if initial == "token":
        credentials.save(state, AccessToken("OLD-TOKEN"), device_name="old-device")
    elif initial == "x509":
        credentials.save(state, OLD_X509, device_name="old-device")
    return state


def describe(creds: GatewayCredentials | None) -> tuple[object, ...] | None:
    """What must match exactly: the type, the values, the device name and, for X.509, the file contents."""
    if creds is None:
        return None
    c = creds.credentials
    if isinstance(c, X509):
        return ("x509", Path(c.cert_file).read_bytes(), Path(c.key_file).read_bytes(), creds.device_name)
    return (type(c).__name__, c, creds.device_name)


EXPECTED_NEW = {
    "x509": ("x509", b"-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n", b"NEW PRIVATE KEY\n" * 64),
    "token": ("AccessToken", AccessToken("NEW-TOKEN")),
    "basic": ("MqttBasic", MqttBasic(client_id="new-client", username="new-user", password="new-password")),
    "forget": None,
}
EXPECTED_OLD = {
    "empty": None,
    "token": ("AccessToken", AccessToken("OLD-TOKEN"), "old-device"),
    "x509": ("x509", OLD_X509.cert_pem, OLD_X509.key_pem, "old-device"),
}


@pytest.mark.parametrize(
    ("initial", "operation"),
    [("empty", "x509"), ("token", "x509"), ("x509", "basic"), ("x509", "x509"), ("x509", "forget"), ("empty", "token")],
)
def test_kill_9_at_every_step(tmp_path: Path, initial: str, operation: str) -> None:
    state = prepare(tmp_path, initial)
    done = run_child(state, operation, 0)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout)
    assert steps >= 4  # at least: open, write, fsync, replace of credentials.json (or an unlink)
    new = EXPECTED_NEW[operation]
    if new is not None:
        new = (*new, "new-device")
    old = EXPECTED_OLD[initial]
    outcomes: dict[str, int] = {"old": 0, "new": 0}
    for k in range(1, steps + 1):
        state = prepare(tmp_path, initial)
        r = run_child(state, operation, k)
        assert r.returncode == -signal.SIGKILL, f"step {k}: {r.returncode} {r.stderr}"
        got = describe(credentials.load(state))
        assert got in (old, new), f"kill before step {k}/{steps}: {got!r}"
        outcomes["old" if got == old else "new"] += 1
        assert (state / "outbox.sqlite3").read_bytes() == OUTBOX
        if got is not None:
            assert stat_mode(state / "credentials.json") == 0o600
        # the next save (the gateway provisioning again) works and leaves no debris
        final = credentials.save(state, AccessToken("AFTER"))
        assert credentials.load(state) == final
        assert sorted(os.listdir(state)) == ["credentials.json", "outbox.sqlite3"]
    # the kill points span the commit: some leave the old state, the last ones the new
    assert outcomes["old"] >= 1 and outcomes["new"] >= 1, outcomes


def stat_mode(p: Path) -> int:
    return p.stat().st_mode & 0o777
