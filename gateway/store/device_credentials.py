"""ThingsBoard credentials of devices in per-device mode, one small store per device.

Layout: ``<root>/<slug>-<hash>/`` holds exactly what :mod:`gateway.store.credentials` keeps for the
gateway itself (``credentials.json`` as the single commit point, X.509 files next to it, all 0600),
so every guarantee of that store holds per device: written atomically (temp, fsync, rename, directory
fsync), kill -9 at any point leaves the old or the new credentials, never a mix, and an unusable
file is logged and treated as absent. ``<hash>`` is the first 16 hex digits of the SHA-256 of the
device name (names may hold any character, and two names must not share a directory); ``<slug>`` is
the name cut down to 32 safe characters, for people listing the directory. ``deviceName`` inside
``credentials.json`` must match, or the entry is ignored.

Why one directory per device and not one file for all: provisioning 20,000 endpoints would rewrite a
growing file 20,000 times (gigabytes on an SD card); here each device costs one small atomic write,
and a lookup is one file read, O(1), done only the first time an endpoint is seen after a start.

Every function does blocking file I/O: call them through ``asyncio.to_thread``. Secrets are never
logged: messages name the device and the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path

from gateway.store import credentials as store
from gateway.store.credentials import GatewayCredentials, NewCredentials

log = logging.getLogger("gateway.store.device_credentials")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def device_dir(root: Path, device: str) -> Path:
    """The directory that holds ``device``'s credentials (whether or not it exists)."""
    digest = hashlib.sha256(device.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    slug = _UNSAFE.sub("_", device)[:32].lstrip(".") or "device"
    return Path(root) / f"{slug}-{digest}"


def load(root: Path, device: str) -> GatewayCredentials | None:
    """``device``'s stored credentials, or None (none stored, or unusable: logged)."""
    directory = device_dir(root, device)
    if not store.path(directory).exists():
        return None
    creds = store.load(directory)
    if creds is not None and creds.device_name != device:
        log.error(
            "device credentials in %s belong to %r, not %r: ignored (the device will be provisioned again)",
            directory,
            creds.device_name,
            device,
        )
        return None
    return creds


def save(root: Path, device: str, credentials: NewCredentials, *, server: str = "") -> GatewayCredentials:
    """Store ``device``'s new credentials (0600, atomic); raises OSError when the disk refuses."""
    directory = device_dir(root, device)
    _mkdir_private(Path(root))
    _mkdir_private(directory)
    return store.save(directory, credentials, device_name=device, server=server)


def forget(root: Path, device: str) -> bool:
    """Remove ``device``'s credentials (power-loss safe: ``credentials.json`` goes first)."""
    directory = device_dir(root, device)
    if not directory.exists():
        return False
    existed = store.forget(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()  # empty now, unless someone put files there
    return existed


def _mkdir_private(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    # the new directory's entry must survive a power loss before anything inside it counts
    fd = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["device_dir", "forget", "load", "save"]
