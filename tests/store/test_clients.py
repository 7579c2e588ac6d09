"""The LwM2M clients' credentials store: lookups, persistence, uniqueness, file mode, listeners, config sync.

The store's file is real SQLite in a temporary directory; principals are the DTLS server's own types.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import stat
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway import config
from gateway.lwm2m.tbcredentials import CredentialsFormatError, SecurityMode, parse_credentials
from gateway.store.clients import (
    ClientChange,
    ClientConfigEntry,
    ClientConflict,
    ClientEntry,
    ClientStore,
    ClientStoreBusy,
    ClientStoreError,
    ManagedByConfig,
    Source,
    check_client_entries,
    decode_certificate,
    decode_psk_identity,
    decode_psk_key,
    decode_public_key,
    follow_dtls,
)
from gateway.transport.dtls import (
    CredentialsProvider,
    PskPrincipal,
    RpkKeyPair,
    RpkPrincipal,
    TrustStore,
    X509Principal,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"  # copied from ../shared/fixtures
KEY = bytes(range(16))
KEY2 = bytes(range(100, 132))

# a P-256 key (from a fixture; test-only) and a pinned certificate (another fixture)
SPKI = base64.b64decode(
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpTcawD6Ib3uTF1qb7423Vd92uM4Sk5tcnFK+ifbuJJyF82gApCfqHYz7SZLgvM9c0J7LaIFikbtWSO/m+64Cyg=="
)
SPKI2 = base64.b64decode(
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEUEBxNl/RcYJNm8mk91CyVXoIJiROYDlXcSSqK6e5bDHwOW4ZiN2lNnXalyF0Jxw8MbAytnDMERXyAja5VEMeVQ=="
)


def fixture_cert() -> bytes:
    obj = json.loads((FIXTURES / "credentials-x509.json").read_text())
    return base64.b64decode(obj["client"]["cert"])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "clients.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[ClientStore]:
    s = ClientStore.open(db)
    yield s
    s.close()


def x509_principal(cert: bytes = b"\x30\x00", cn: str | None = "cam-1", sans: tuple[str, ...] = (), ok: bool = True,
                   error: str = "") -> X509Principal:  # fmt: skip
    return X509Principal(cn, sans, ok, cert, error)


# --- the file ------------------------------------------------------------------------------------------------


def test_file_is_private_and_in_wal_mode(db: Path) -> None:
    old = os.umask(0o022)
    try:
        store = ClientStore.open(db)
        store.add(ClientEntry.psk("a", b"a-id", KEY))
    finally:
        os.umask(old)
    try:
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.lock")):
            assert path.exists(), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        store.close()


def test_existing_file_is_made_private(db: Path) -> None:
    ClientStore.open(db).close()
    os.chmod(db, 0o644)
    ClientStore.open(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_persistence_across_reopen(db: Path) -> None:
    creds = parse_credentials((FIXTURES / "credentials-rpk.json").read_text())
    with ClientStore.open(db) as store:
        store.add(ClientEntry.psk("psk-1", "psk-1-id", KEY))
        store.add(ClientEntry.rpk("rpk-1", SPKI), bootstrap=creds.bootstrap)
        store.add(ClientEntry.x509("x-1", cert=fixture_cert()))
        store.add(ClientEntry.x509("x-2", cert_name="cam-2.example"))
        store.add(ClientEntry.nosec("plain-1"))
        before = store.entries()
    with ClientStore.open(db) as again:
        assert again.entries() == before
        assert [e.updated_ms for e in again.entries()] == [e.updated_ms for e in before]
        assert again.psk_key(b"psk-1-id") == KEY
        assert again.rpk_allowed(SPKI)
        assert again.bootstrap_for("rpk-1") == creds.bootstrap
        assert again.bootstrap_for("psk-1") is None
        assert again.bootstrap_for("nobody") is None
        assert again.skipped_rows == 0


def test_second_opener_is_refused(db: Path) -> None:
    with ClientStore.open(db), pytest.raises(ClientStoreBusy):
        ClientStore.open(db)
    ClientStore.open(db).close()  # released


def test_unusable_rows_are_skipped_not_fatal(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with ClientStore.open(db) as store:
        store.add(ClientEntry.psk("good", b"good-id", KEY))
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO clients (endpoint, mode, identity, psk_key, source, updated_ms) VALUES (?, ?, ?, ?, ?, ?)",
        ("bad", "PSK", b"bad-id", b"short", "cli", 0),
    )
    conn.commit()
    conn.close()
    with caplog.at_level(logging.ERROR), ClientStore.open(db) as store:
        assert [e.endpoint for e in store.entries()] == ["good"]
        assert store.skipped_rows == 1
    assert "'bad' unusable" in caplog.text
    assert b"short".hex() not in caplog.text


def test_garbage_file_is_a_clear_error(db: Path) -> None:
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ClientStoreError, match="move it aside"):
        ClientStore.open(db)


def test_newer_schema_is_refused(db: Path) -> None:
    ClientStore.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    with pytest.raises(ClientStoreError, match="newer gateway"):
        ClientStore.open(db)


# --- lookups -------------------------------------------------------------------------------------------------


def test_lookups_by_endpoint_identity_key_certificate_and_name(store: ClientStore) -> None:
    cert = fixture_cert()
    store.add(ClientEntry.psk("psk-1", b"psk-1-id", KEY))
    store.add(ClientEntry.rpk("rpk-1", SPKI))
    store.add(ClientEntry.x509("x-1", cert=cert))
    store.add(ClientEntry.x509("x-2", cert_name="cam-2.example"))
    store.add(ClientEntry.x509("x-3"))
    assert store.get("psk-1") is store.by_psk_identity(b"psk-1-id")
    assert store.by_public_key(SPKI) is store.get("rpk-1")
    assert store.by_certificate(cert) is store.get("x-1")
    assert store.by_cert_name("cam-2.example") is store.get("x-2")
    assert store.by_cert_name("x-3") is store.get("x-3")  # bound by the endpoint name by default
    assert store.by_psk_identity(b"nope") is None and store.get("nope") is None
    assert len(store) == 5 and "psk-1" in store
    # the indexes are dictionaries keyed by the material itself: O(1)
    assert isinstance(store._by_identity, dict) and set(store._by_identity) == {b"psk-1-id"}
    assert set(store._by_public_key) == {SPKI}
    assert set(store._by_name) == {"cam-2.example", "x-3"}


def test_lookups_are_constant_time(tmp_path: Path) -> None:
    """200 times more clients, about the same time per lookup (a scan would be ~200 times slower).
    Bounds are loose: best of several rounds, against a noisy machine."""
    stores = {}
    for n in (100, 20_000):
        stores[n] = ClientStore.open(tmp_path / f"c{n}.sqlite3")
        stores[n].sync_config([ClientEntry.psk(f"ep-{i}", f"id-{i}", KEY) for i in range(n)])

    def per_lookup(n: int) -> float:
        s = stores[n]
        ids = [f"id-{i}".encode() for i in range(0, n, max(1, n // 100))] * 100
        best = float("inf")
        for _ in range(7):
            t = time.perf_counter()
            for ident in ids:
                s.psk_key(ident)
            best = min(best, (time.perf_counter() - t) / len(ids))
        return best

    try:
        ratios = []
        for _ in range(3):
            small, large = per_lookup(100), per_lookup(20_000)
            ratios.append(large / small)
            if large < small * 10 and large < 2e-5:
                break
        else:
            pytest.fail(f"lookups slow down with the number of clients: ratios {ratios}")
    finally:
        for s in stores.values():
            s.close()


def test_credentials_provider(store: ClientStore) -> None:
    assert isinstance(store, CredentialsProvider)
    store.add(ClientEntry.psk("psk-1", b"psk-1-id", KEY))
    store.add(ClientEntry.rpk("rpk-1", SPKI))
    assert store.psk_key(b"psk-1-id") == KEY
    assert store.psk_key(b"psk-1") is None
    assert store.rpk_allowed(SPKI)
    assert not store.rpk_allowed(SPKI2)
    assert not store.rpk_allowed(b"garbage")
    # a client that sends its point compressed is the same key
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    compressed = prefix + bytes([2 + (SPKI[-1] & 1)]) + SPKI[27:59]
    assert store.rpk_allowed(compressed)
    assert store.server_rpk is None and store.server_x509 is None and store.trust is None


def test_x509_allowed(store: ClientStore) -> None:
    cert = fixture_cert()
    store.add(ClientEntry.x509("pinned", cert=cert))
    store.add(ClientEntry.x509("named", cert_name="cam-1"))
    # a pinned certificate needs no CA, but must be valid
    assert store.x509_allowed(x509_principal(cert, cn="whatever", ok=False, error="unknown CA"))
    assert store.x509_allowed(x509_principal(cert, ok=True))
    assert not store.x509_allowed(x509_principal(cert, ok=False, error="certificate expired"))
    # bound by name: trusted chain, CN or subjectAltName
    assert store.x509_allowed(x509_principal(cn="cam-1"))
    assert store.x509_allowed(x509_principal(cn="other", sans=("x.example", "cam-1")))
    assert not store.x509_allowed(x509_principal(cn="cam-1", ok=False, error="unknown CA"))
    assert not store.x509_allowed(x509_principal(cn="stranger"))
    assert store.entry_for(x509_principal(cn="cam-1")) is store.get("named")
    assert store.entry_for(PskPrincipal(b"x")) is None
    assert store.entry_for("not a principal") is None


# --- uniqueness and who may change what ------------------------------------------------------------------------


def test_material_belongs_to_one_endpoint(store: ClientStore) -> None:
    store.add(ClientEntry.psk("a", b"shared-id", KEY))
    with pytest.raises(ClientConflict) as exc:
        store.add(ClientEntry.psk("b", b"shared-id", KEY2))
    assert exc.value.field == "identity" and exc.value.owner == "a"
    assert KEY2.hex() not in str(exc.value)
    store.add(ClientEntry.rpk("r1", SPKI))
    with pytest.raises(ClientConflict, match="raw public key"):
        store.add(ClientEntry.rpk("r2", SPKI))
    store.add(ClientEntry.x509("x1", cert=fixture_cert()))
    with pytest.raises(ClientConflict, match="certificate"):
        store.add(ClientEntry.x509("x2", cert=fixture_cert()))
    store.add(ClientEntry.x509("x3", cert_name="cam"))
    with pytest.raises(ClientConflict, match="certificate name"):
        store.add(ClientEntry.x509("x4", cert_name="cam"))
    # an endpoint may change its own material; freed material may be reused
    store.put(ClientEntry.psk("a", b"shared-id", KEY2))
    assert store.psk_key(b"shared-id") == KEY2
    store.remove("a")
    store.add(ClientEntry.psk("b", b"shared-id", KEY))
    assert store.by_psk_identity(b"shared-id") is store.get("b")
    with pytest.raises(ClientStoreError, match="already has credentials"):
        store.add(ClientEntry.nosec("b"))
    with pytest.raises(ClientStoreError, match="no credentials to update"):
        store.update(ClientEntry.nosec("zzz"))


def test_mode_change_moves_the_indexes(store: ClientStore) -> None:
    store.add(ClientEntry.psk("a", b"a-id", KEY))
    store.update(ClientEntry.rpk("a", SPKI))
    assert store.psk_key(b"a-id") is None and store.rpk_allowed(SPKI)
    store.update(ClientEntry.nosec("a"))
    assert not store.rpk_allowed(SPKI) and store.get("a") == ClientEntry.nosec("a")


def test_config_entries_are_changed_only_by_the_file(store: ClientStore) -> None:
    store.sync_config([ClientEntry.psk("cfg", b"cfg-id", KEY)])
    with pytest.raises(ManagedByConfig, match="configuration file"):
        store.put(ClientEntry.psk("cfg", b"cfg-id", KEY2, source=Source.THINGSBOARD))
    with pytest.raises(ManagedByConfig):
        store.remove("cfg", by=Source.CLI)
    assert store.psk_key(b"cfg-id") == KEY


def test_entry_rules() -> None:
    with pytest.raises(CredentialsFormatError, match="16 to 64 bytes"):
        ClientEntry.psk("a", b"id", b"short")
    with pytest.raises(CredentialsFormatError, match="128"):
        ClientEntry.psk("a", b"i" * 129, KEY)
    with pytest.raises(CredentialsFormatError, match="NO_SEC"):
        ClientEntry.psk("a", "NO_SEC", KEY)
    with pytest.raises(CredentialsFormatError) as exc:
        ClientEntry("a", SecurityMode.NO_SEC, key=KEY)
    assert exc.value.field == "key"
    with pytest.raises(CredentialsFormatError):
        ClientEntry.rpk("a", b"\x30\x00")
    with pytest.raises(CredentialsFormatError):
        ClientEntry.x509("a", cert=fixture_cert(), cert_name="x")
    with pytest.raises(CredentialsFormatError, match="endpoint"):
        ClientEntry.nosec("")


def test_secrets_stay_out_of_reprs_lists_and_logs(store: ClientStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    entry = ClientEntry.psk("a", b"a-id", KEY2)
    store.add(entry)
    store.put(ClientEntry.psk("a", b"a-id", KEY))
    store.remove("a")
    for text in (repr(entry), str(entry), repr(store.list_clients()), repr(store), caplog.text):
        assert KEY2.hex() not in text and repr(KEY2) not in text and KEY.hex() not in text
    assert "sha256:" in repr(entry)


def test_list_clients_shows_no_secrets(store: ClientStore) -> None:
    store.add(ClientEntry.psk("a", b"a-id", KEY))
    store.add(ClientEntry.psk("b", bytes.fromhex("00ff10"), KEY2))
    store.add(ClientEntry.rpk("c", SPKI))
    store.add(ClientEntry.x509("d", cert_name="cam"))
    rows = [s.as_dict() for s in store.list_clients()]
    assert [r["endpoint"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["identity"] == "a-id" and rows[0]["fingerprint"].endswith("(16 bytes)")
    assert rows[1]["identity"] == "hex:00ff10"
    assert rows[3]["fingerprint"] == "name:cam"
    text = json.dumps(rows)
    assert KEY.hex() not in text and KEY2.hex() not in text and "key" not in rows[0]


# --- listeners -----------------------------------------------------------------------------------------------------


def test_listeners_hear_each_committed_change(store: ClientStore, caplog: pytest.LogCaptureFixture) -> None:
    heard: list[list[ClientChange]] = []
    store.add_listener(lambda changes: heard.append(list(changes)))

    def broken(_changes: Sequence[ClientChange]) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add(ClientEntry.psk("a", b"a-id", KEY))
    assert store.put(ClientEntry.psk("a", b"a-id", KEY)) is None  # unchanged: nobody hears
    store.put(ClientEntry.psk("a", b"a-id", KEY2))
    store.remove("a")
    assert store.remove("a") is None
    assert [[c.action for c in batch] for batch in heard] == [["added"], ["updated"], ["removed"]]
    assert heard[1][0].old is not None and heard[1][0].old.key == KEY
    assert "listener" in caplog.text and "failed" in caplog.text


def test_a_failed_write_changes_nothing(store: ClientStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add(ClientEntry.psk("a", b"a-id", KEY))
    heard: list[object] = []
    store.add_listener(heard.append)
    store.conn.execute(
        "CREATE TRIGGER no_writes BEFORE INSERT ON clients BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    with pytest.raises(ClientStoreError, match="disk on fire"):
        store.put(ClientEntry.psk("a", b"a-id", KEY2))
    assert store.psk_key(b"a-id") == KEY and not heard
    assert store.conn.execute("SELECT count(*) FROM clients").fetchone()[0] == 1


class FakeSession:
    def __init__(self, principal: object) -> None:
        self.principal = principal


class FakeDtlsServer:
    def __init__(self, sessions: list[FakeSession]) -> None:
        self.sessions = sessions
        self.closed: list[tuple[FakeSession, str]] = []
        self.reloads = 0

    def close_where(self, predicate: Any, reason: str = "closed") -> int:
        chosen = [s for s in self.sessions if predicate(s)]
        for s in chosen:
            self.sessions.remove(s)
            self.closed.append((s, reason))
        return len(chosen)

    def reload_credentials(self) -> None:
        self.reloads += 1


def test_follow_dtls_closes_exactly_the_sessions_of_removed_or_changed_clients(store: ClientStore) -> None:
    cert = fixture_cert()
    store.add(ClientEntry.psk("a", b"a-id", KEY))
    store.add(ClientEntry.psk("b", b"b-id", KEY))
    store.add(ClientEntry.rpk("r", SPKI))
    store.add(ClientEntry.x509("x", cert=cert))
    store.add(ClientEntry.x509("n", cert_name="cam-1"))
    sessions = {
        "a": FakeSession(PskPrincipal(b"a-id")),
        "b": FakeSession(PskPrincipal(b"b-id")),
        "r": FakeSession(RpkPrincipal(SPKI)),
        "x": FakeSession(x509_principal(cert, cn="whatever", ok=False, error="unknown CA")),
        "n": FakeSession(x509_principal(cn="cam-1")),
        "handshaking": FakeSession(None),
    }
    server = FakeDtlsServer(list(sessions.values()))
    unsubscribe = follow_dtls(store, server)  # type: ignore[arg-type]

    def closed() -> set[str]:
        return {name for name, s in sessions.items() if any(s is c for c, _ in server.closed)}

    store.put(ClientEntry.psk("a", b"a-id", KEY, source=Source.CLI))  # unchanged: nothing
    store.add(ClientEntry.nosec("new"))  # additions: nothing
    assert closed() == set()
    store.put(ClientEntry.psk("a", b"a-id", KEY2))  # key changed: re-authenticate
    assert closed() == {"a"}
    store.remove("r")
    store.remove("x")
    store.remove("n")
    assert closed() == {"a", "r", "x", "n"}
    assert all(reason == "credentials removed or changed" for _, reason in server.closed)
    store.set_server_credentials(trust=TrustStore(ca_pem=b"x"))
    assert server.reloads == 1
    unsubscribe()
    store.remove("b")
    store.set_server_credentials()
    assert "b" not in closed() and server.reloads == 1


def test_server_credentials_are_held_for_the_dtls_server(store: ClientStore) -> None:
    pair = RpkKeyPair.from_raw_hex("11" * 32, "22" * 32, "33" * 32)
    store.set_server_credentials(rpk=pair, trust=TrustStore(ca_file="/x"))
    assert store.server_rpk is pair and store.trust == TrustStore(ca_file="/x") and store.server_x509 is None


# --- the configuration file -----------------------------------------------------------------------------------------


def test_sync_config(store: ClientStore, caplog: pytest.LogCaptureFixture) -> None:
    store.add(ClientEntry.psk("cli-keep", b"keep-id", KEY))
    store.add(ClientEntry.psk("tb-taken", b"tb-id", KEY, source=Source.THINGSBOARD))
    store.add(ClientEntry.psk("cli-clash", b"clash-id", KEY))
    heard: list[list[ClientChange]] = []
    store.add_listener(lambda c: heard.append(list(c)))
    first = store.sync_config([
        ClientEntry.psk("cfg-1", b"cfg-1-id", KEY),
        ClientEntry.nosec("cfg-2"),
        ClientEntry.psk("tb-taken", b"tb-id", KEY2),  # the file takes the endpoint over
        ClientEntry.psk("cfg-3", b"clash-id", KEY),  # ... and the identity
    ])  # fmt: skip
    assert sorted(first.added) == ["cfg-1", "cfg-2", "cfg-3"]
    assert first.updated == ("tb-taken",) and first.displaced == ("cli-clash",) and first.removed == ()
    assert len(heard) == 1  # one batch
    assert store.get("tb-taken") is not None and store.get("tb-taken").source is Source.CONFIG  # type: ignore[union-attr]
    assert store.get("cli-clash") is None and store.get("cli-keep") is not None
    assert "cli-clash" in caplog.text
    second = store.sync_config([ClientEntry.psk("cfg-1", b"cfg-1-id", KEY2), ClientEntry.nosec("cfg-2")])
    assert second.updated == ("cfg-1",) and sorted(second.removed) == ["cfg-3", "tb-taken"] and second.unchanged == 1
    third = store.sync_config([ClientEntry.psk("cfg-1", b"cfg-1-id", KEY2), ClientEntry.nosec("cfg-2")])
    assert third.unchanged == 2 and not (third.added or third.updated or third.removed)
    assert len(heard) == 2  # nothing to say the third time
    assert store.get("cli-keep") is not None
    with pytest.raises(ClientConflict):
        store.sync_config([ClientEntry.psk("x", b"same", KEY), ClientEntry.psk("y", b"same", KEY)])
    with pytest.raises(ClientStoreError, match="twice"):
        store.sync_config([ClientEntry.nosec("x"), ClientEntry.nosec("x")])


def test_sync_survives_reopen(db: Path) -> None:
    entries = [ClientEntry.psk(f"ep-{i}", f"id-{i}", KEY) for i in range(500)]
    with ClientStore.open(db) as s:
        assert len(s.sync_config(entries).added) == 500
    with ClientStore.open(db) as s:
        assert s.sync_config(entries).unchanged == 500
        assert all(e.source is Source.CONFIG for e in s.entries())


CONFIG_TOML = """
[[lwm2m.clients]]
endpoint = "psk-hex"
mode = "PSK"
identity = "psk-hex-id"
key = "000102030405060708090a0b0c0d0e0f"

[[lwm2m.clients]]
endpoint = "psk-text"
mode = "PSK"
key = "text:a-text-key-of-16+"

[[lwm2m.clients]]
endpoint = "psk-file"
mode = "PSK"
identity = "hex:0001ff"
key_file = "psk-file.key"

[[lwm2m.clients]]
endpoint = "rpk-b64"
mode = "RPK"
public_key = "{spki_b64}"

[[lwm2m.clients]]
endpoint = "rpk-xy"
mode = "RPK"
public_key = "{x},{y}"

[[lwm2m.clients]]
endpoint = "x509-pinned"
mode = "X509"
cert = "device.pem"

[[lwm2m.clients]]
endpoint = "x509-named"
mode = "X509"
cn = "cam-7.example"

[[lwm2m.clients]]
endpoint = "plain"
"""


def build_entries(text: str, tmp: Path) -> tuple[list[ClientConfigEntry], list[str]]:
    """What config.load does with [[lwm2m.clients]]: the loader's own _build for each table."""
    problems: list[str] = []
    tables = tomllib.loads(text)["lwm2m"]["clients"]
    built = [
        config._build(ClientConfigEntry, t, f"lwm2m.clients[{i}].", problems, "g.toml") for i, t in enumerate(tables)
    ]
    return built, problems


def test_config_section_through_the_config_loader(tmp_path: Path) -> None:
    (tmp_path / "psk-file.key").write_text("base64:" + base64.b64encode(KEY2).decode() + "\n")
    b64 = base64.b64encode(fixture_cert()).decode()
    (tmp_path / "device.pem").write_text(f"-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
    text = CONFIG_TOML.replace("{x}", SPKI2[27:59].hex()).replace("{y}", SPKI2[59:].hex())
    text = text.replace("{spki_b64}", base64.b64encode(SPKI).decode())
    built, problems = build_entries(text, tmp_path)
    assert problems == []
    entries, problems = check_client_entries(built, label="g.toml", base_dir=tmp_path)
    assert problems == []
    by = {e.endpoint: e for e in entries}
    assert by["psk-hex"].key == bytes(range(16)) and by["psk-hex"].identity == b"psk-hex-id"
    assert by["psk-text"].key == b"a-text-key-of-16+" and by["psk-text"].identity == b"psk-text"
    assert by["psk-file"].key == KEY2 and by["psk-file"].identity == b"\x00\x01\xff"
    assert by["rpk-b64"].public_key == SPKI
    assert by["rpk-xy"].public_key == SPKI2
    assert by["x509-pinned"].cert == fixture_cert()
    assert by["x509-named"].bound_name == "cam-7.example"
    assert by["plain"].mode is SecurityMode.NO_SEC
    assert all(e.source is Source.CONFIG for e in entries)
    assert len(entries) == 8
    # the same key twice is refused
    twice = text.replace(f"{SPKI2[27:59].hex()},{SPKI2[59:].hex()}", f"{SPKI[27:59].hex()},{SPKI[59:].hex()}")
    entries, problems = check_client_entries(build_entries(twice, tmp_path)[0], label="g.toml", base_dir=tmp_path)
    assert len(entries) == 7
    fingerprint = ClientEntry.rpk("x", SPKI).fingerprint
    assert problems == [
        f"g.toml: lwm2m.clients[4].public_key: the raw public key {fingerprint} is also given to endpoint 'rpk-b64' "
        "(endpoint 'rpk-xy')"
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"endpoint": "a", "mode": "PSK"}, "lwm2m.clients[0].key: required"),
        ({"endpoint": "a", "mode": "PSK", "key": "xyz"}, "lwm2m.clients[0].key: the PSK key is not valid hex (write t"),
        ({"endpoint": "a", "mode": "PSK", "key": "00" * 8}, "lwm2m.clients[0].key: a PSK key is 16 to 64 bytes, got 8"),
        ({"endpoint": "a", "mode": "PSK", "key": "00" * 16, "key_file": "k"}, "lwm2m.clients[0].key_file: give key"),
        ({"endpoint": "a", "mode": "PSK", "key_file": "/nonexistent/k"}, "lwm2m.clients[0].key_file: cannot read"),
        ({"endpoint": "a", "mode": "PSK", "identity": "NO_SEC", "key": "00" * 16}, "lwm2m.clients[0].identity"),
        ({"endpoint": "a", "mode": "RPK"}, "lwm2m.clients[0].public_key: required"),
        ({"endpoint": "a", "mode": "RPK", "public_key": "00" * 64}, "lwm2m.clients[0].public_key: the public key is"),
        ({"endpoint": "a", "mode": "X509", "cert": "/nonexistent.pem"}, "lwm2m.clients[0].cert: cannot read"),
        ({"endpoint": "a", "mode": "X509", "cert": "x.pem", "cn": "y"}, "lwm2m.clients[0].cn: give cert"),
        ({"endpoint": "a", "key": "00" * 16}, 'lwm2m.clients[0].key: not used with mode = "NO_SEC"'),
        ({"mode": "NO_SEC"}, "lwm2m.clients[0].endpoint"),
    ],
)
def test_config_problems_name_the_key(table: dict[str, str], message: str) -> None:
    entries, problems = check_client_entries([ClientConfigEntry(**table)], label="g.toml")  # type: ignore[arg-type]
    assert entries == []
    assert len(problems) == 1 and problems[0].startswith("g.toml: " + message), problems
    assert "00000000" not in problems[0]


def test_config_duplicates_across_tables() -> None:
    tables = [
        ClientConfigEntry(endpoint="a", mode="PSK", identity="same", key="00" * 16),
        ClientConfigEntry(endpoint="b", mode="PSK", identity="same", key="11" * 16),
        ClientConfigEntry(endpoint="a"),
    ]
    entries, problems = check_client_entries(tables, label="g.toml")
    assert [e.endpoint for e in entries] == ["a"]
    assert problems[0].startswith("g.toml: lwm2m.clients[1].identity: the PSK identity 'same' is also given to")
    assert problems[1] == "g.toml: lwm2m.clients[2].endpoint: 'a' is already listed at lwm2m.clients[0]"


def test_config_loader_reports_unknown_keys_and_bad_modes(tmp_path: Path) -> None:
    _, problems = build_entries('[[lwm2m.clients]]\nendpoint = "a"\nmode = "psk"\nkee = "00"\n', tmp_path)
    assert any("lwm2m.clients[0].mode: expected one of" in p for p in problems)
    assert any('lwm2m.clients[0].kee: unknown key (did you mean "key"?)' in p for p in problems)
    assert [f.name for f in ClientConfigEntry.__dataclass_fields__.values() if f.metadata.get("secret")] == ["key"]


# --- material notations ---------------------------------------------------------------------------------------


def test_decode_psk_key_and_identity() -> None:
    assert decode_psk_key("00" * 16) == bytes(16)
    expected = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert decode_psk_key("hex:00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff") == expected
    assert decode_psk_key("00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff") == expected
    assert decode_psk_key("text:sixteen-bytes-key") == b"sixteen-bytes-key"
    assert decode_psk_key("base64:" + base64.b64encode(KEY2).decode()) == KEY2
    with pytest.raises(CredentialsFormatError, match="16 to 64"):
        decode_psk_key("text:short")
    with pytest.raises(CredentialsFormatError, match="64"):
        decode_psk_key("00" * 65)
    assert decode_psk_identity("dev-1") == b"dev-1"
    assert decode_psk_identity("text:hex:literal") == b"hex:literal"
    assert decode_psk_identity("hex:0001") == b"\x00\x01"
    with pytest.raises(CredentialsFormatError):
        decode_psk_identity("")


def test_decode_public_key_notations() -> None:
    x, y = SPKI[27:59], SPKI[59:]
    pem = "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(SPKI).decode() + "\n-----END PUBLIC KEY-----\n"
    for text in (
        base64.b64encode(SPKI).decode(),
        "base64:" + base64.b64encode(SPKI).decode(),
        pem,
        SPKI.hex(),
        "hex:" + SPKI.hex(),
        (b"\x04" + x + y).hex(),
        (x + y).hex(),
        f"{x.hex()}, {y.hex()}",
        f"hex:{x.hex()},{y.hex()}",
    ):
        assert decode_public_key(text) == SPKI, text
    for bad in ("", "zz", "00" * 64, f"{x.hex()},{x.hex()}"):
        with pytest.raises(CredentialsFormatError):
            decode_public_key(bad)


def test_decode_certificate_notations(tmp_path: Path) -> None:
    der = fixture_cert()
    b64 = base64.b64encode(der).decode()
    pem = f"-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"
    (tmp_path / "c.pem").write_text(pem)
    (tmp_path / "c.der").write_bytes(der)
    assert decode_certificate(b64) == der
    assert decode_certificate(pem) == der
    assert decode_certificate(str(tmp_path / "c.pem")) == der
    assert decode_certificate("c.der", base_dir=tmp_path) == der
    assert decode_certificate(der) == der
    with pytest.raises(CredentialsFormatError):
        decode_certificate(b"\x30\x03\x01\x01\x00")
