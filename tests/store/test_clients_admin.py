"""Managing the clients' credentials: ThingsBoard's RPC, the control socket, and ``edge-gateway clients``.

The CLI runs against a real control socket served by the store's control commands (the running
service's side), and against the file when no service runs. Keys go in through files, standard input
or a prompt, and never come out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control import ControlServer
from gateway.core.hub import RpcError
from gateway.lwm2m.tbcredentials import SecurityMode
from gateway.store.clients import (
    RPC_METHOD,
    ClientEntry,
    ClientStore,
    Source,
    configure_cli,
    control_commands,
    entry_from_wire,
    entry_to_wire,
    rpc_handler,
    run_cli,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"  # copied from ../shared/fixtures
KEY = b"a-text-psk-key-16"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"credentials-{name}.json").read_text())  # type: ignore[no-any-return]


def secrets_of(obj: dict[str, Any]) -> list[str]:
    """Every secret a ThingsBoard credentials fixture holds, as it is written there."""
    out = []
    if obj["client"].get("securityConfigClientMode") == "PSK":
        out.append(obj["client"]["key"])
    for part in obj.get("bootstrap", {}).values():
        if part.get("clientSecretKey"):
            out.append(part["clientSecretKey"])
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClientStore]:
    s = ClientStore.open(tmp_path / "clients.sqlite3")
    yield s
    s.close()


# --- ThingsBoard's RPC ------------------------------------------------------------------------------------------


async def test_rpc_takes_every_fixture_in_every_wrapping(store: ClientStore) -> None:
    rpc = rpc_handler(store)
    assert RPC_METHOD == "lwm2mClientCredentials"
    for name, params_of in (
        ("nosec", lambda o: o),
        ("psk", json.dumps),  # ThingsBoard's string form
        ("rpk", lambda o: {"credentialsType": "LWM2M_CREDENTIALS", "credentialsValue": json.dumps(o)}),
        ("x509", lambda o: json.dumps(json.dumps(o))),
    ):
        obj = fixture(name)
        result = await rpc(params_of(obj))
        endpoint = obj["client"]["endpoint"]
        assert result["result"] == "added" and result["endpoint"] == endpoint
        assert result["mode"] == obj["client"]["securityConfigClientMode"]
        assert result["source"] == "thingsboard" and "credentialsId" in result
        text = json.dumps(result)
        for secret in secrets_of(obj):
            assert secret not in text
        entry = store.get(endpoint)
        assert entry is not None and entry.source is Source.THINGSBOARD
        assert store.bootstrap_for(endpoint) is not None
    psk = fixture("psk")
    assert store.psk_key(psk["client"]["identity"].encode()) == bytes.fromhex(psk["client"]["key"])
    assert (await rpc(psk))["result"] == "unchanged"
    psk["client"]["key"] = "ab" * 16
    assert (await rpc(psk))["result"] == "updated"
    assert store.psk_key(psk["client"]["identity"].encode()) == bytes.fromhex("ab" * 16)


async def test_rpc_remove_and_errors(store: ClientStore) -> None:
    rpc = rpc_handler(store)
    await rpc(fixture("psk"))
    endpoint = fixture("psk")["client"]["endpoint"]
    assert await rpc({"remove": endpoint}) == {"endpoint": endpoint, "result": "removed"}
    assert store.get(endpoint) is None

    async def error(params: Any) -> RpcError:
        with pytest.raises(RpcError) as exc:
            await rpc(params)
        return exc.value

    assert (await error({"remove": endpoint})).code == "not_found"
    assert (await error(json.dumps({"remove": 5}))).code == "bad_credentials"
    assert (await error("{not json")).code == "bad_credentials"
    bad = fixture("psk")
    bad["client"]["key"] = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d"  # 31 hex digits
    exc = await error(bad)
    assert exc.code == "bad_credentials" and "client.key" in str(exc) and bad["client"]["key"] not in str(exc)
    assert exc.as_reply()["code"] == "bad_credentials"
    # the identity belongs to another endpoint
    await rpc(fixture("psk"))
    clash = fixture("psk")
    clash["client"]["endpoint"] = "another"
    assert (await error(clash)).code == "conflict"
    # config-managed entries are the file's
    store.sync_config([ClientEntry.nosec("from-file")])
    nosec = fixture("nosec")
    nosec["client"]["endpoint"] = "from-file"
    assert (await error(nosec)).code == "managed_by_config"
    assert (await error({"remove": "from-file"})).code == "managed_by_config"


# --- the wire format of the control socket ------------------------------------------------------------------------


def test_wire_round_trip() -> None:
    cert = base64.b64decode(fixture("x509")["client"]["cert"])
    for entry in (
        ClientEntry.nosec("a"),
        ClientEntry.psk("b", bytes.fromhex("00ff"), KEY),
        ClientEntry.rpk("c", base64.b64decode(fixture("rpk")["client"]["key"])),
        ClientEntry.x509("d", cert=cert),
        ClientEntry.x509("e", cert_name="cam"),
    ):
        assert entry_from_wire(json.loads(json.dumps(entry_to_wire(entry))), Source.CLI) == entry
    with pytest.raises(ValueError):
        entry_from_wire({"endpoint": "x", "mode": "PSK", "identity_hex": "zz"}, Source.CLI)
    with pytest.raises(ValueError):
        entry_from_wire("nope", Source.CLI)


# --- the CLI ---------------------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edge-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    configure_cli(sub.add_parser("clients"))
    return parser.parse_args(["clients", *argv])


class Paths:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "clients.sqlite3"
        self.sock = root / "control.sock"

    def run(self, *argv: str) -> int:
        return run_cli(parse(*argv), db_path=self.db, control_socket=self.sock)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path)


def test_cli_without_a_service_works_on_the_file(
    paths: Paths, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = paths.root / "dev.key"
    key_file.write_text("text:" + KEY.decode() + "\n")
    assert paths.run("add", "dev-1", "--mode", "psk", "--identity", "dev-1-id", "--key-file", str(key_file)) == 0
    out = capsys.readouterr().out
    assert out.startswith("dev-1: added (PSK, sha256:")
    # the key from standard input (not a terminal)
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY.hex() + "\n"))
    assert paths.run("add", "dev-2", "--mode", "PSK") == 0
    # ... or from a prompt that does not echo
    prompts: list[str] = []

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty(""))

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return "base64:" + base64.b64encode(KEY).decode()

    monkeypatch.setattr("getpass.getpass", getpass)
    assert paths.run("add", "dev-3", "--mode", "psk", "--identity", "hex:0001") == 0
    assert prompts and "dev-3" in prompts[0]
    rpk = paths.root / "dev.pub"
    rpk.write_text(fixture("rpk")["client"]["key"])
    assert paths.run("add", "meter-1", "--mode", "rpk", "--public-key-file", str(rpk)) == 0
    assert paths.run("add", "cam-1", "--mode", "x509", "--cn", "cam-1.example") == 0
    tb = paths.root / "tb.json"
    tb.write_text(json.dumps(json.dumps(fixture("x509"))))
    assert paths.run("add", "--thingsboard-json", str(tb)) == 0
    capsys.readouterr()
    assert paths.run("list") == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == ["ENDPOINT", "MODE", "IDENTITY", "FINGERPRINT", "SOURCE"]
    assert "dev-1-id" in table and "hex:0001" in table and "name:cam-1.example" in table
    assert KEY.hex() not in table and KEY.decode() not in table
    assert paths.run("list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    endpoints = {"dev-1", "dev-2", "dev-3", "meter-1", "cam-1", "urn:imei:356938035643809"}
    assert {r["endpoint"] for r in rows} == endpoints
    assert all(r["source"] == "cli" for r in rows)
    with ClientStore.open(paths.db) as s:
        assert s.psk_key(b"dev-1-id") == KEY and s.psk_key(b"dev-2") == KEY and s.psk_key(b"\x00\x01") == KEY
        assert s.get("meter-1") is not None and s.get("meter-1").mode is SecurityMode.RPK  # type: ignore[union-attr]
    assert paths.run("remove", "dev-1") == 0
    assert capsys.readouterr().out.strip() == "dev-1: removed"
    assert paths.run("remove", "dev-1") == 1
    assert "no credentials" in capsys.readouterr().err


def test_cli_errors_and_usage(
    paths: Paths, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("00" * 16 + "\n"))
    assert paths.run("add", "a", "--mode", "psk") == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("11" * 16 + "\n"))
    assert paths.run("add", "a", "--mode", "psk") == 1
    assert "already has credentials" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("11" * 16 + "\n"))
    assert paths.run("add", "a", "--mode", "psk", "--replace") == 0
    assert "a: updated" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("not hex, no prefix\n"))
    assert paths.run("add", "b", "--mode", "psk") == 1
    err = capsys.readouterr().err
    assert "not valid hex" in err and "not hex, no prefix" not in err
    assert paths.run("add", "b") == 2
    assert paths.run("add", "b", "--mode", "nosec", "--cn", "x") == 2
    assert paths.run("add", "b", "--mode", "rpk") == 2
    assert paths.run("add", "b", "--mode", "x509", "--cn", "x", "--cert-file", "y") == 2
    with pytest.raises(SystemExit):
        parse("add", "b", "--mode", "psk", "--key", "00")  # keys are never taken on the command line
    with ClientStore.open(paths.db) as s:
        s.sync_config([ClientEntry.nosec("cfg")])
    assert paths.run("remove", "cfg") == 1
    assert "configuration file" in capsys.readouterr().err


def test_cli_refuses_when_a_silent_service_holds_the_store(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    with ClientStore.open(paths.db):
        assert paths.run("list") == 1
    assert "held by a running gateway" in capsys.readouterr().err


async def test_cli_through_the_running_service(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    store = ClientStore.open(paths.db)
    heard: list[str] = []
    store.add_listener(lambda changes: heard.extend(f"{c.action} {c.endpoint}" for c in changes))
    server = ControlServer(paths.sock)
    for name, fn in control_commands(store).items():
        server.command(name, fn)
    await server.start()
    try:
        key_file = paths.root / "k"
        key_file.write_text(KEY.hex())
        rc = await asyncio.to_thread(paths.run, "add", "live-1", "--mode", "psk", "--key-file", str(key_file))
        assert rc == 0
        assert heard == ["added live-1"]  # the running store's listeners heard it: no restart
        assert store.psk_key(b"live-1") == KEY
        assert await asyncio.to_thread(paths.run, "list", "--json") == 0
        out = capsys.readouterr().out
        assert json.loads(out.split("\n", 1)[1])[0]["endpoint"] == "live-1"
        assert KEY.hex() not in out
        assert await asyncio.to_thread(paths.run, "remove", "live-1") == 0
        assert heard == ["added live-1", "removed live-1"]
        assert await asyncio.to_thread(paths.run, "remove", "live-1") == 1
        assert "no credentials" in capsys.readouterr().err
    finally:
        await server.close()
        store.close()
