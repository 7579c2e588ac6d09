"""Child process of the credentials crash test (tests/appliance/test_credentials_crash.py).

Usage: python _credentials_crash_child.py STATE_DIR OPERATION KILL_AT

Performs one OPERATION on STATE_DIR: ``x509``, ``token``, ``basic`` (save those credentials) or
``forget``. Every file-system call that can change the disk (os.open, write, fchmod, fsync, close,
replace, rename, unlink) is a step; the child SIGKILLs itself just before step KILL_AT. KILL_AT 0:
never; the child then prints the number of steps it made and exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.store import credentials
from gateway.store.credentials import X509Pem
from gateway.upstream.session import AccessToken, MqttBasic

STEPS = ("open", "write", "fchmod", "fsync", "close", "replace", "rename", "unlink")

NEW: dict[str, Any] = {
    "x509": X509Pem(b"-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n", b"NEW PRIVATE KEY\n" * 64),
    "token": AccessToken("NEW-TOKEN"),
    "basic": MqttBasic(client_id="new-client", username="new-user", password="new-password"),
}


def main(state_dir: Path, operation: str, kill_at: int) -> None:
    count = 0

    def wrap(name: str) -> None:
        real = getattr(os, name)

        def step(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(os, name, step)

    for name in STEPS:
        wrap(name)
    if operation == "forget":
        credentials.forget(state_dir)
    else:
        credentials.save(state_dir, NEW[operation], device_name="new-device")
    sys.stdout.write(f"{count}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
