"""Provisioning against the ThingsBoard emulator: every credentials type, refusals, outages, secrecy."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
import stat
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from appliance_helpers import KEY, SECRET, TIMEOUT, prov_settings

from gateway import config
from gateway.sim.tbemu import BasicCredentials, ThingsBoardEmulator, TlsListener
from gateway.store import credentials
from gateway.store.credentials import X509Pem
from gateway.upstream.provisioning import (
    Phase,
    Provisioner,
    ProvisioningError,
    ProvisioningNotConfigured,
    ProvisioningRefused,
    ProvisioningTimeout,
    ProvisionSettings,
    generate_x509,
    interpret_answer,
    provision,
    resolve_device_name,
)
from gateway.upstream.session import X509, AccessToken, MqttBasic, MqttSession, SessionConfig, SessionState, TlsSettings

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command-line tool is absent")


async def connects(port: int, creds: AccessToken | MqttBasic | X509, tls: TlsSettings | None = None) -> None:
    """The stored credentials are good: a gateway session gets CONNECTED with them."""
    s = MqttSession(SessionConfig(host="127.0.0.1", port=port, credentials=creds, tls=tls, rejected_retry=60))
    s.start()
    try:
        state = await asyncio.wait_for(
            s.wait_for_state(SessionState.CONNECTED, SessionState.CREDENTIALS_REJECTED), TIMEOUT
        )
        assert state is SessionState.CONNECTED
    finally:
        await s.stop()


async def test_server_generated_access_token(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, SECRET)
        creds = await asyncio.wait_for(provision(prov_settings(emu.port, tmp_path), "gw-1"), TIMEOUT)
        device = emu.device("gw-1")
        assert device.gateway and device.provisioned
        assert emu.provision_log[0].request == {
            "deviceName": "gw-1",
            "provisionDeviceKey": KEY,
            "provisionDeviceSecret": SECRET,
            "gateway": True,
        }
        assert creds.credentials == AccessToken(str(device.token))
        assert creds.device_name == "gw-1" and creds.server == f"127.0.0.1:{emu.port}"
        assert credentials.load(tmp_path) == creds
        assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
        await connects(emu.port, creds.credentials)
        assert device.connects == 1


async def test_access_token_generated_by_the_gateway(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, SECRET)
        creds = await provision(prov_settings(emu.port, tmp_path, credentials_type="ACCESS_TOKEN"), "gw-2")
        request = emu.provision_log[0].request
        assert request["credentialsType"] == "ACCESS_TOKEN" and len(request["token"]) >= 20
        assert creds.credentials == AccessToken(request["token"]) == AccessToken(str(emu.device("gw-2").token))
        await connects(emu.port, creds.credentials)


async def test_mqtt_basic(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, SECRET)
        creds = await provision(prov_settings(emu.port, tmp_path, credentials_type="MQTT_BASIC"), "gw-basic")
        request = emu.provision_log[0].request
        assert request["credentialsType"] == "MQTT_BASIC"
        assert request["username"] == "gw-basic" and request["clientId"] and len(request["password"]) >= 24
        basic = creds.credentials
        assert isinstance(basic, MqttBasic)
        assert emu.device("gw-basic").basic == BasicCredentials(basic.client_id, basic.username, basic.password)
        assert credentials.load(tmp_path) == creds
        await connects(emu.port, basic)


@needs_openssl
async def test_x509_certificate(tmp_path: Path, pki: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, SECRET)
        creds = await provision(prov_settings(emu.port, state, credentials_type="X509_CERTIFICATE"), "gw/x 509")
        request = emu.provision_log[0].request
    x509 = creds.credentials
    assert isinstance(x509, X509)
    cert_pem = Path(x509.cert_file).read_text()
    assert request["credentialsType"] == "X509_CERTIFICATE" and request["hash"] == cert_pem
    assert emu.device("gw/x 509").x509_pem == cert_pem
    assert stat.S_IMODE(Path(x509.key_file).stat().st_mode) == 0o600
    assert credentials.load(state) == creds
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text"], input=cert_pem, capture_output=True, text=True, check=True
    ).stdout
    assert "prime256v1" in text and "CN = gw_x_509" in text and "CA:FALSE" in text
    assert "TLS Web Client Authentication" in text
    # the key and certificate the gateway made work for mutual TLS: a server that trusts exactly
    # this certificate (ThingsBoard matches it by its hash) accepts the gateway's session
    tls = TlsListener(str(pki / "server.pem"), str(pki / "server.key"), cafile=x509.cert_file)
    async with ThingsBoardEmulator(tls=tls) as emu2:
        emu2.add_device("gw/x 509", gateway=True, x509_pem=cert_pem)
        assert emu2.tls_port is not None
        await connects(emu2.tls_port, x509, TlsSettings(ca_file=str(pki / "ca.pem")))
        assert emu2.device("gw/x 509").connects == 1


@needs_openssl
async def test_generated_key_pair_matches_and_is_fresh() -> None:
    a = await generate_x509("gw")
    b = await generate_x509("gw")
    assert a.key_pem != b.key_pem
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.pem").write_bytes(a.cert_pem)
        (Path(d) / "k.pem").write_bytes(a.key_pem)
        ctx.load_cert_chain(Path(d) / "c.pem", Path(d) / "k.pem")  # raises if they do not belong together
        (Path(d) / "k.pem").write_bytes(b.key_pem)
        with pytest.raises(ssl.SSLError):
            ctx.load_cert_chain(Path(d) / "c.pem", Path(d) / "k.pem")


async def test_missing_openssl_is_a_plain_error(tmp_path: Path) -> None:
    s = prov_settings(1, tmp_path, credentials_type="X509_CERTIFICATE", openssl="/nonexistent/openssl")
    with pytest.raises(ProvisioningError, match="needs the openssl command-line tool"):
        await provision(s, "gw")


async def test_not_found_is_refused_plainly_and_nothing_is_stored(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, "another secret")
        with pytest.raises(ProvisioningRefused) as info:
            await provision(prov_settings(emu.port, tmp_path), "gw-1")
    assert info.value.status == "NOT_FOUND"
    assert info.value.message == "Provision data was not found!"
    assert "wrong provision key or secret" in str(info.value)
    assert credentials.load(tmp_path) is None
    assert "gw-1" not in emu.devices


async def test_failure_when_the_device_exists(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, SECRET)
        emu.add_device("gw-1", token="someone-else")
        with pytest.raises(ProvisioningRefused) as info:
            await provision(prov_settings(emu.port, tmp_path), "gw-1")
    assert info.value.status == "FAILURE"
    assert "exists already" in str(info.value)


async def test_refusal_is_retried_slowly_never_hammered(tmp_path: Path) -> None:
    async with ThingsBoardEmulator() as emu:
        delays: list[float] = []

        async def sleep(delay: float) -> None:  # virtual: records the wait, returns at once
            delays.append(delay)
            if len(delays) == 2:
                emu.add_provision_profile(KEY, SECRET)  # the administrator fixes the profile

        p = Provisioner(prov_settings(emu.port, tmp_path, retry_s=300.0), "gw-1", sleep=sleep)
        statuses: list[str] = []
        p.add_listener(lambda _phase, status: statuses.append(status))
        creds = await asyncio.wait_for(p.run(), TIMEOUT)
    assert emu.counters.provision_requests == 3  # one request per attempt
    assert len(delays) == 2 and all(270.0 <= d <= 330.0 for d in delays)
    refused = "refused: NOT_FOUND: Provision data was not found!"
    # (listeners hear changes: the Provisioner starts in "provisioning")
    assert [s.split(" (")[0] for s in statuses] == [refused, "provisioning", refused, "provisioning", "provisioned"]
    assert p.phase is Phase.PROVISIONED and p.status == "provisioned" and p.refusals == 2
    assert credentials.load(tmp_path) == creds


async def test_unreachable_then_reachable(tmp_path: Path) -> None:
    emu = ThingsBoardEmulator()
    await emu.start()
    port = emu.port
    await emu.stop()  # an outage: the port is known, nothing listens
    emu.add_provision_profile(KEY, SECRET)
    p = Provisioner(prov_settings(port, tmp_path), "gw-1")
    unreachable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    phases: list[Phase] = []

    def listener(phase: Phase, _status: str) -> None:
        phases.append(phase)
        if phase is Phase.UNREACHABLE and not unreachable.done():
            unreachable.set_result(None)

    p.add_listener(listener)
    task = asyncio.create_task(p.run())
    try:
        await asyncio.wait_for(unreachable, TIMEOUT)
        assert p.status == "unreachable"
        await emu.start()  # back, on the same port: the session's backoff finds it
        creds = await asyncio.wait_for(task, TIMEOUT)
    finally:
        task.cancel()
        await emu.stop()
    assert creds.credentials == AccessToken(str(emu.device("gw-1").token))
    assert phases[0] is Phase.UNREACHABLE and phases[-2:] == [Phase.PROVISIONING, Phase.PROVISIONED]
    assert emu.counters.provision_requests == 1 and p.attempts == 1


async def test_no_answer_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, SECRET)
        monkeypatch.setattr(emu, "_on_provision_publish", lambda *_a: None)  # a server that never answers
        with pytest.raises(ProvisioningTimeout, match=r"no answer from ThingsBoard .* within 0\.3 s"):
            await provision(prov_settings(emu.port, tmp_path, timeout_s=0.3), "gw-1")
    assert credentials.load(tmp_path) is None


async def test_connection_lost_before_the_answer_asks_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, SECRET)
        original = emu._on_provision_publish
        seen: list[Any] = []

        def drop_first(connection: Any, topic: str, data: bytes) -> None:
            seen.append(json.loads(data))
            if len(seen) == 1:  # the connection drops before an answer
                asyncio.get_running_loop().create_task(emu.disconnect_clients())
                return
            original(connection, topic, data)

        monkeypatch.setattr(emu, "_on_provision_publish", drop_first)
        creds = await asyncio.wait_for(provision(prov_settings(emu.port, tmp_path), "gw-1"), TIMEOUT)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert creds.credentials == AccessToken(str(emu.device("gw-1").token))


async def test_secrets_never_reach_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with ThingsBoardEmulator() as emu:
        emu.add_provision_profile(KEY, SECRET)
        settings = prov_settings(emu.port, tmp_path, credentials_type="MQTT_BASIC")
        assert KEY not in repr(settings) and SECRET not in repr(settings)
        bad = prov_settings(emu.port, tmp_path, secret="wrong-" + SECRET)

        async def sleep(_delay: float) -> None:
            raise asyncio.CancelledError  # stop after the first refusal

        with pytest.raises(asyncio.CancelledError):
            await Provisioner(bad, "gw-0", sleep=sleep).run()
        creds = await provision(settings, "gw-1")
    basic = creds.credentials
    assert isinstance(basic, MqttBasic)
    gateway_lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway.upstream")]
    assert any("refused" in line for line in gateway_lines) and any("provisioned" in line for line in gateway_lines)
    for secret in (KEY, SECRET, basic.password):
        assert secret not in caplog.text
        assert all(secret not in r.getMessage() for r in caplog.records)


async def test_not_configured(tmp_path: Path) -> None:
    p = Provisioner(prov_settings(1, tmp_path, key=""), "gw")
    with pytest.raises(ProvisioningNotConfigured):
        await p.run()
    assert p.phase is Phase.NOT_CONFIGURED and p.status.startswith("not configured: no provision key/secret")


def test_answers_as_thingsboard_may_send_them() -> None:
    sent = MqttBasic(client_id="c", username="u", password="p")
    as_string = json.dumps({"clientId": "c2", "userName": "u2", "password": "p2"})
    got = interpret_answer(
        json.dumps({"status": "SUCCESS", "credentialsType": "MQTT_BASIC", "credentialsValue": as_string}).encode(),
        "MQTT_BASIC",
        sent,
    )
    assert got == MqttBasic(client_id="c2", username="u2", password="p2")
    partial = json.dumps({"status": "SUCCESS", "credentialsType": "MQTT_BASIC", "credentialsValue": {"clientId": "c"}})
    assert interpret_answer(partial.encode(), "MQTT_BASIC", sent) == sent
    pem = X509Pem(b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n", b"k")
    trimmed = {"status": "SUCCESS", "credentialsType": "X509_CERTIFICATE", "credentialsValue": "AAEC"}
    assert interpret_answer(json.dumps(trimmed).encode(), "X509_CERTIFICATE", pem) is pem
    with pytest.raises(ProvisioningError, match="did not ask for"):
        interpret_answer(json.dumps(trimmed).encode(), "", None)
    for bad in (b"nope", b"[]", b'{"credentialsValue": "x"}', b'{"status": "SUCCESS", "credentialsType": "PSK"}'):
        with pytest.raises(ProvisioningError) as info:
            interpret_answer(bad, "", None)
        assert not isinstance(info.value, ProvisioningRefused)
    with pytest.raises(ProvisioningRefused, match="FAILURE: no message"):
        interpret_answer(b'{"status": "FAILURE"}', "", None)


def test_settings_and_device_name_from_config(tmp_path: Path) -> None:
    f = tmp_path / "gateway.toml"
    f.write_text(
        '[gateway]\nstate_dir = "/srv/gw"\n[thingsboard]\nhost = "tb.example"\nport = 8883\ntls = true\n'
        '[provisioning]\nkey = "k"\nsecret = "s"\ncredentials_type = "X509_CERTIFICATE"\ntimeout_s = 12\n'
    )
    cfg = config.load(f, env={})
    s = ProvisionSettings.from_config(cfg)
    assert (s.host, s.port, s.tls, s.key, s.secret) == ("tb.example", 8883, TlsSettings(ca_file=None), "k", "s")
    assert (s.credentials_type, s.timeout_s, s.state_dir) == ("X509_CERTIFICATE", 12.0, Path("/srv/gw"))
    assert resolve_device_name(cfg).startswith("edge-gateway-")
    f.write_text('[gateway]\nname = "gw-a"\n')
    assert resolve_device_name(config.load(f, env={})) == "gw-a"
    f.write_text('[gateway]\nname = "gw-a"\n[provisioning]\ndevice_name = "gw-b"\n')
    assert resolve_device_name(config.load(f, env={})) == "gw-b"


def test_x509_provisioning_needs_tls(tmp_path: Path) -> None:
    f = tmp_path / "gateway.toml"
    f.write_text('[provisioning]\ncredentials_type = "X509_CERTIFICATE"\n')
    with pytest.raises(config.ConfigError, match=r"thingsboard\.tls: must be true"):
        config.load(f, env={})


async def test_session_without_subscriptions_is_connected_at_connack() -> None:
    """The session option the provisioning connection uses: its own subscriptions, or none at all."""
    async with ThingsBoardEmulator() as emu:
        emu.add_device("gw", token="T", gateway=True)
        cfg = SessionConfig(host="127.0.0.1", port=emu.port, credentials=AccessToken("T"), subscriptions=())
        s = MqttSession(replace(cfg, ask_session_limits=False))
        s.start()
        try:
            await asyncio.wait_for(s.wait_for_state(SessionState.CONNECTED), TIMEOUT)
            assert s.stats().connects == 1 and s.limits.final
            assert emu._broker is not None
            assert not any(subs for subs in emu._broker.subscriptions.values())  # nothing subscribed
        finally:
            await s.stop()
