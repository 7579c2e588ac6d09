"""Importing the installer's provisioning file from the boot partition."""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import tomllib
from pathlib import Path

import pytest

from gateway import config
from gateway.upstream.provisioning import (
    DROPIN_NAME,
    ProvisionFileError,
    cmd_import_provisioning,
    import_provision_file,
)

GOOD = """# from the installer
[provisioning]
key = "  abc123key "
secret = "s3cr3t-value"
device_name = "plant-7 gateway"

[thingsboard]
host = "tb.example.com"
port = 8883
tls = true
"""
MAIN = '[gateway]\nstate_dir = "/var/lib/edge-gateway"\n[thingsboard]\nhost = "127.0.0.1"\n'


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    boot = tmp_path / "boot" / "firmware"
    boot.mkdir(parents=True)
    etc = tmp_path / "etc" / "edge-gateway"
    etc.mkdir(parents=True)
    (etc / "gateway.toml").write_text(MAIN)
    return boot / "edge-gateway-provision.toml", etc / "gateway.d", etc / "gateway.toml"


def test_import_makes_a_0600_dropin_and_removes_the_source(layout: tuple[Path, Path, Path]) -> None:
    src, dst_dir, main = layout
    src.write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())  # Notepad: BOM and CRLF
    result = import_provision_file(src, dst_dir)
    dropin = dst_dir / DROPIN_NAME
    assert (result.action, result.dropin, result.source_removed) == ("imported", dropin, True)
    assert not src.exists()
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o600
    assert tomllib.loads(dropin.read_text()) == {
        "provisioning": {"key": "abc123key", "secret": "s3cr3t-value", "device_name": "plant-7 gateway"},
        "thingsboard": {"host": "tb.example.com", "port": 8883, "tls": True},
    }
    cfg = config.load(main, env={})  # the drop-in wins over the main file
    assert (cfg.provisioning.key, cfg.provisioning.secret) == ("abc123key", "s3cr3t-value")
    assert (cfg.thingsboard.host, cfg.thingsboard.port, cfg.thingsboard.tls) == ("tb.example.com", 8883, True)


def test_idempotent(layout: tuple[Path, Path, Path]) -> None:
    src, dst_dir, _main = layout
    src.write_text(GOOD)
    import_provision_file(src, dst_dir)
    dropin = dst_dir / DROPIN_NAME
    before = dropin.read_bytes(), dropin.stat().st_ino
    again = import_provision_file(src, dst_dir)  # next boot: nothing there any more
    assert (again.action, again.source_removed) == ("nothing", False)
    src.write_text(GOOD)  # the installer copies the same file again
    same = import_provision_file(src, dst_dir)
    assert (same.action, same.source_removed) == ("unchanged", True)
    assert (dropin.read_bytes(), dropin.stat().st_ino) == before and not src.exists()
    src.write_text(GOOD.replace("s3cr3t-value", "new-secret"))  # a new secret replaces the old one
    assert import_provision_file(src, dst_dir).action == "imported"
    assert tomllib.loads(dropin.read_text())["provisioning"]["secret"] == "new-secret"
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o600


def test_minimal_file(layout: tuple[Path, Path, Path]) -> None:
    src, dst_dir, _main = layout
    src.write_text('[provisioning]\nkey = "k"\nsecret = "s"\n')
    import_provision_file(src, dst_dir)
    assert tomllib.loads((dst_dir / DROPIN_NAME).read_text()) == {"provisioning": {"key": "k", "secret": "s"}}


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ('[provisioning]\nkey = "k"\n', ["provisioning.secret: required"]),
        (
            '[provisioning]\nkey = "k"\nsecret = ""\nkeyy = 1\n[thingsboard]\nport = "8883"\ntls = "yes"\n[x]\n',
            [
                "provisioning.secret: expected a non-empty string",
                "provisioning.keyy: unknown key",
                "thingsboard.port: expected a port number",
                "thingsboard.tls: expected true or false",
                "[x]: unknown section",
            ],
        ),
        ('[provisioning]\nkey = k\nsecret = "hidden-value"\n', ["not valid TOML"]),
        ('[provisioning]\nkey = "k"\nsecret = "s"\ncredentials_type = "PSK"\n', ["credentials_type: expected one of"]),
        ("secret = 'hidden-value'\n", ["secret: outside any section", "provisioning.key: required"]),
    ],
)
def test_bad_file_is_refused_clearly_and_left_in_place(
    layout: tuple[Path, Path, Path], text: str, problems: list[str]
) -> None:
    src, dst_dir, _main = layout
    src.write_text(text)
    with pytest.raises(ProvisionFileError) as info:
        import_provision_file(src, dst_dir)
    message = str(info.value)
    for p in problems:
        assert p in message, message
    assert all(line.startswith(f"{src}: ") for line in message.splitlines())
    assert "hidden-value" not in message
    assert src.exists() and not (dst_dir / DROPIN_NAME).exists()


def test_not_utf8(layout: tuple[Path, Path, Path]) -> None:
    src, dst_dir, _main = layout
    src.write_bytes(b'[provisioning]\nkey = "\xff"\n')
    with pytest.raises(ProvisionFileError, match="not UTF-8"):
        import_provision_file(src, dst_dir)


def test_owner_is_the_services_user(layout: tuple[Path, Path, Path]) -> None:
    src, dst_dir, _main = layout
    # as root: the service's user stand-in; otherwise chown to oneself is all one can do
    owner = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    pw = pwd.getpwnam(owner)
    src.write_text(GOOD)
    import_provision_file(src, dst_dir, owner=owner)
    st = (dst_dir / DROPIN_NAME).stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (pw.pw_uid, pw.pw_gid, 0o600)
    src.write_text(GOOD)
    with pytest.raises(ProvisionFileError, match="no user 'no-such-user-xyz'"):
        import_provision_file(src, dst_dir, owner="no-such-user-xyz")


def test_source_that_cannot_be_removed_is_reported(
    layout: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst_dir, _main = layout
    src.write_text(GOOD)
    real_unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:
        if self == src:
            raise OSError(30, "Read-only file system")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    result = import_provision_file(src, dst_dir)
    assert (result.action, result.source_removed, result.source_error) == ("imported", False, "Read-only file system")
    assert (dst_dir / DROPIN_NAME).exists()


def args(main: Path, src: Path, owner: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(config=str(main), source=str(src), owner=owner)


def test_command(layout: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src, dst_dir, main = layout
    assert cmd_import_provisioning(args(main, src)) == 0
    assert "nothing to import" in capsys.readouterr().out
    src.write_text(GOOD)
    assert cmd_import_provisioning(args(main, src)) == 0
    out = capsys.readouterr().out
    assert f"imported as {dst_dir / DROPIN_NAME} (mode 0600)" in out and "removed from the boot partition" in out
    assert "s3cr3t" not in out
    src.write_text('[provisioning]\nkey = "k"\n')
    assert cmd_import_provisioning(args(main, src)) == 1
    err = capsys.readouterr().err
    assert "provisioning.secret: required" in err and "fix it on the boot partition" in err
    # an import that makes the whole configuration invalid is reported (exit 1), the import stays
    main.write_text(MAIN + "[provisioning]\ncredentials_type = \"X509_CERTIFICATE\"\nretry_s = 1\n")
    src.write_text(GOOD)
    assert cmd_import_provisioning(args(main, src)) == 1
    assert "provisioning.retry_s" in capsys.readouterr().err
    assert not src.exists()
