"""Bootstrap configurations (ThingsBoard's shape, templates, errors with key paths), the store
(file-managed entries, credentials lookups, 0600) and the sans-IO sequence, without sockets."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.lwm2m.bootstrap import (
    BootstrapConfigError,
    BootstrapSession,
    BootstrapStore,
    Op,
    Result,
    config_to_json,
    parse_config,
)
from gateway.lwm2m.bootstrap.session import Step
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.tbcredentials import CredentialsFormatError, SecurityMode
from gateway.store.clients import Source
from gateway.transport.dtls import PskPrincipal

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"
KEY = "00112233445566778899aabbccddeeff"


def tb_bootstrap(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text())["bootstrap"])


@pytest.mark.parametrize("fixture", ["credentials-nosec.json", "credentials-psk.json", "credentials-rpk.json",
                                     "credentials-x509.json"])
def test_thingsboard_bootstrap_parts_parse_and_round_trip(fixture: str) -> None:
    cfg = parse_config({"endpoint": "ep-1", "bootstrap": tb_bootstrap(fixture)})
    assert cfg.bootstrap_server is not None and cfg.lwm2m_server is not None
    again = parse_config(config_to_json(cfg))
    assert again == cfg


def test_acl_round_trip() -> None:
    obj = {"endpoint": "e", "acl": [{"objectId": 3, "instanceId": 0, "access": {"1": 3, "0": 1}, "owner": 1}]}
    cfg = parse_config(obj)
    assert cfg.acl[0].access == ((0, 1), (1, 3))
    assert parse_config(config_to_json(cfg)) == cfg


@pytest.mark.parametrize(("obj", "where"), [
    ({"bootstrap": {}}, "config"),
    ({"endpoint": "a", "pattern": "b*"}, "config"),
    ({"endpoint": "a", "colour": 1}, "config.colour"),
    ({"endpoint": "a", "bootstrap": {"lwm2mServer": {"securityMode": "PSK"}}},
     "config.bootstrap.lwm2mServer.clientPublicKeyOrId"),
    ({"endpoint": "a", "bootstrap": {"lwm2mServer": {"securityMode": "X509", "generate": True}}},
     "config.bootstrap.lwm2mServer.generate"),
    ({"pattern": "a*", "bootstrap": {"bootstrapServer": {"securityMode": "PSK", "clientPublicKeyOrId": "x",
                                                          "clientSecretKey": KEY}}},
     "config.bootstrap.bootstrapServer"),
    ({"endpoint": "a", "servers": [{"shortServerId": 0}]}, "config.servers[0].shortServerId"),
    ({"endpoint": "a", "servers": [{"binding": "Z"}]}, "config.servers[0].binding"),
    ({"endpoint": "a", "servers": [{"bootstrapServerIs": True}]}, "config.servers[0].bootstrapServerIs"),
    ({"endpoint": "a", "servers": [{}, {}]}, "config.servers"),
    ({"endpoint": "a", "acl": [{"objectId": 3, "access": {"x": 1}}]}, "config.acl[0].access"),
    ({"endpoint": "a", "acl": [{"objectId": 3, "access": {"1": 99}}]}, "config.acl[0].access.1"),
])
def test_bad_configurations_name_the_key(obj: dict[str, Any], where: str) -> None:
    with pytest.raises(CredentialsFormatError) as info:
        parse_config(obj)
    assert info.value.where == where if hasattr(info.value, "where") else where in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["endpoint", "pattern", "bootstrap", "servers", "bootstrapServer",
                                         "lwm2mServer", "securityMode", "generate", "host", "port"]), c, max_size=4),
                    max_leaves=12))
def test_any_json_parses_or_raises_the_format_error(obj: object) -> None:
    try:
        parse_config(obj)
    except BootstrapConfigError:
        pass
    except CredentialsFormatError:
        pass


def test_templates_and_store(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.sqlite3"
    store = BootstrapStore.open(path)
    store.put(parse_config({"pattern": "urn:*", "bootstrap": {"bootstrapServer": {"securityMode": "NO_SEC"},
                                                               "lwm2mServer": {"securityMode": "NO_SEC"}}}))
    store.put(parse_config({"pattern": "urn:imei:*", "bootstrap": {
        "lwm2mServer": {"securityMode": "PSK", "generate": True}}, "servers": [{"shortServerId": 9}]}))
    store.put(parse_config({"endpoint": "urn:imei:1", "bootstrap": {"bootstrapServer": {
        "securityMode": "PSK", "clientPublicKeyOrId": "id-1", "clientSecretKey": KEY}}}))
    eff = store.effective("urn:imei:1")
    assert eff is not None and eff.lwm2m_server is not None and eff.lwm2m_server.generate
    assert eff.servers[0].short_server_id == 9 and eff.bootstrap_server.mode is SecurityMode.PSK  # type: ignore[union-attr]
    assert store.effective("urn:other").lwm2m_server.mode is SecurityMode.NO_SEC  # type: ignore[union-attr]
    assert store.effective("plain") is None
    assert store.psk_key(b"id-1") == bytes.fromhex(KEY)
    assert store.entry_for(PskPrincipal(b"id-1")).endpoint == "urn:imei:1"  # type: ignore[union-attr]
    assert store.get("urn:x").mode is SecurityMode.NO_SEC  # type: ignore[union-attr]  # by the template
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.sync_config([parse_config({"endpoint": "urn:imei:1", "bootstrap": {
        "lwm2mServer": {"securityMode": "NO_SEC"}}})])
    with pytest.raises(Exception, match="configuration file"):
        store.remove("urn:imei:1")
    store.close()
    again = BootstrapStore.open(path)
    assert {c.name for c in again.configs()} == {"urn:*", "urn:imei:*", "urn:imei:1"}
    assert again.get_config("urn:imei:1").source is Source.CONFIG  # type: ignore[union-attr]
    assert again.psk_key(b"id-1") is None  # the file's entry replaced the CLI's
    again.close()


def writes(_taken: frozenset[int]) -> list[Step]:
    return [Step(Op.WRITE, LwM2mPath(0, 1), b"s", 11542), Step(Op.WRITE, LwM2mPath(1, 0), b"v", 11542)]


def test_session_sequence_and_policy() -> None:
    s = BootstrapSession("ep", writes, discover=True, retries=1)
    assert s.start().op is Op.DELETE
    step = s.on_answer(0x84, b"")  # 4.04 to the Delete: tolerated
    assert step is not None and step.op is Op.DISCOVER
    step = s.on_answer(0x45, b"</0/0>,</0/1>")  # the bootstrap-server account is /0/0 and /0/1
    assert step is not None and step.path == LwM2mPath(0, 1)
    assert s.on_answer(0xA0, b"") == step  # 5.00: retried once
    assert s.on_answer(0xA0, b"disk full") is None
    assert s.result is Result.FAILED and "5.00" in s.detail and "disk full" in s.detail
    s = BootstrapSession("ep", writes, discover=False, retries=0)
    s.start()
    s.on_answer(0x42, b"")
    s.on_answer(0x44, b"")
    finish = s.on_answer(0x44, b"")
    assert finish is not None and finish.op is Op.FINISH
    assert s.on_timeout() is None and s.result is Result.FAILED and "Bootstrap-Finish" in s.detail
    s = BootstrapSession("ep", writes, discover=False)
    s.start()
    s.on_answer(0x42, b""), s.on_answer(0x44, b""), s.on_answer(0x44, b"")
    assert s.on_answer(0x86, b"inconsistent") is None and "4.06" in s.detail


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.tuples(st.integers(0, 255), st.binary(max_size=40))), max_size=12))
def test_any_answers_from_a_device_end_the_session_cleanly(answers: list[tuple[int, bytes] | None]) -> None:
    s = BootstrapSession("ep", writes, discover=True, retries=1)
    step: Step | None = s.start()
    for answer in answers:
        if step is None:
            break
        step = s.on_timeout() if answer is None else s.on_answer(*answer)
    assert (step is None) == (s.result is not Result.RUNNING)
    assert s.result is Result.RUNNING or s.detail
