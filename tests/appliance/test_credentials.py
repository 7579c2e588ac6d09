"""Stored gateway credentials: round trips, modes, bad files treated as absent, factory reset."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from gateway.store import credentials
from gateway.store.credentials import GatewayCredentials, X509Pem
from gateway.upstream.session import X509, AccessToken, MqttBasic

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def files(d: Path) -> set[str]:
    return set(os.listdir(d))


@pytest.mark.parametrize(
    "creds",
    [AccessToken("tok-123"), MqttBasic(client_id="cid", username="user", password="pw"), MqttBasic(username="u")],
    ids=["token", "basic", "basic-user-only"],
)
def test_round_trip(tmp_path: Path, creds: AccessToken | MqttBasic) -> None:
    saved = credentials.save(tmp_path, creds, device_name="gw-1", server="tb:1883", provisioned_at_ms=42)
    assert saved == GatewayCredentials(creds, "gw-1", "tb:1883", 42)
    assert credentials.load(tmp_path) == saved
    assert mode(tmp_path / "credentials.json") == 0o600
    assert files(tmp_path) == {"credentials.json"}


def test_x509_files_written_next_to_it_key_0600(tmp_path: Path) -> None:
    saved = credentials.save(tmp_path, X509Pem(CERT, KEY), device_name="gw-x")
    assert isinstance(saved.credentials, X509)
    cert, key = Path(saved.credentials.cert_file), Path(saved.credentials.key_file)
    assert cert.parent == key.parent == tmp_path
    assert cert.read_bytes() == CERT and key.read_bytes() == KEY
    assert mode(key) == 0o600 and mode(cert) == 0o600
    assert saved.credentials_type == "X509_CERTIFICATE"
    assert credentials.load(tmp_path) == saved
    doc = json.loads((tmp_path / "credentials.json").read_text())
    assert doc["certFile"] == cert.name  # relative: the state directory may move
    assert "PRIVATE" not in (tmp_path / "credentials.json").read_text()
    assert "KEY" not in repr(X509Pem(CERT, KEY))


def test_replacing_x509_removes_the_old_files(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite3").write_bytes(b"queued data")
    first = credentials.save(tmp_path, X509Pem(CERT, KEY))
    second = credentials.save(tmp_path, X509Pem(CERT + b"2", KEY + b"2"))
    assert isinstance(first.credentials, X509) and isinstance(second.credentials, X509)
    assert first.credentials.cert_file != second.credentials.cert_file
    names = {Path(second.credentials.cert_file).name, Path(second.credentials.key_file).name}
    assert files(tmp_path) == {"credentials.json", "outbox.sqlite3", *names}
    credentials.save(tmp_path, AccessToken("t"))
    assert files(tmp_path) == {"credentials.json", "outbox.sqlite3"}


def test_forget_keeps_the_outbox(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite3").write_bytes(b"queued data")
    (tmp_path / "outbox.sqlite3-wal").write_bytes(b"wal")
    credentials.save(tmp_path, X509Pem(CERT, KEY))
    assert credentials.forget(tmp_path) is True
    assert credentials.load(tmp_path) is None
    assert files(tmp_path) == {"outbox.sqlite3", "outbox.sqlite3-wal"}
    assert (tmp_path / "outbox.sqlite3").read_bytes() == b"queued data"
    assert credentials.forget(tmp_path) is False


def test_leftovers_of_an_interrupted_write_are_cleaned_up(tmp_path: Path) -> None:
    (tmp_path / ".credentials.json.tmp-999").write_bytes(b'{"creden')
    (tmp_path / "x509-0123456789ab.pem").write_bytes(CERT)  # written, never committed
    (tmp_path / ".x509-0123456789ab.key.tmp-999").write_bytes(b"half")
    assert credentials.load(tmp_path) is None
    credentials.save(tmp_path, AccessToken("t"))
    assert files(tmp_path) == {"credentials.json"}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not valid JSON"),
        (b'{"version": 1, "credentialsType": "ACCESS_TO', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"credentialsType": "ACCESS_TOKEN"}', "token is missing"),
        (b'{"credentialsType": "ACCESS_TOKEN", "token": 5}', "token is not a string"),
        (b'{"credentialsType": "MQTT_BASIC", "password": "x"}', "without clientId and userName"),
        (b'{"credentialsType": "PSK", "token": "x"}', "unknown credentialsType"),
        (b'{"version": 7, "credentialsType": "ACCESS_TOKEN", "token": "x"}', "format version 7"),
        (b'{"credentialsType": "X509_CERTIFICATE", "certFile": "x509-a.pem", "keyFile": "x509-a.key"}', "missing"),
        (b"\x00" * 512, "not valid JSON"),
    ],
)
def test_corrupt_or_partial_file_is_absent_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, why: str
) -> None:
    (tmp_path / "credentials.json").write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="gateway.store.credentials"):
        assert credentials.load(tmp_path) is None
    (record,) = caplog.records
    assert why in record.getMessage() and "provision again" in record.getMessage()


def test_error_message_never_shows_the_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "credentials.json").write_text('{"credentialsType": "MQTT_BASIC", "password": "hunter2", "x": ')
    with caplog.at_level(logging.DEBUG):
        assert credentials.load(tmp_path) is None
    assert "hunter2" not in caplog.text


def test_x509_with_a_vanished_key_file_is_absent(tmp_path: Path) -> None:
    saved = credentials.save(tmp_path, X509Pem(CERT, KEY))
    assert isinstance(saved.credentials, X509)
    os.unlink(saved.credentials.key_file)
    assert credentials.load(tmp_path) is None


def test_unreadable_state_dir_is_absent_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").mkdir()  # EISDIR on read
    assert credentials.load(tmp_path) is None


def test_app_reader_compatibility(tmp_path: Path) -> None:
    """The JSON keeps the field names gateway/app.py's interim reader used."""
    credentials.save(tmp_path, MqttBasic(client_id="c", username="u", password="p"))
    doc = json.loads((tmp_path / "credentials.json").read_text())
    assert (doc["credentialsType"], doc["clientId"], doc["userName"], doc["password"]) == ("MQTT_BASIC", "c", "u", "p")
