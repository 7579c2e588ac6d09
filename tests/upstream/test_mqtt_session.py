"""MqttSession against real brokers: the ThingsBoard emulator (amqtt) and mosquitto."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from upstream_helpers import TIMEOUT, Condition, Peer, limits_future, session_config, wait_state

from gateway.sim.tbemu import ThingsBoardEmulator, TlsListener
from gateway.upstream import session as session_mod
from gateway.upstream import thingsboard as tb
from gateway.upstream.session import (
    X509,
    AccessToken,
    ConnectionLost,
    LimitsSource,
    MqttBasic,
    MqttSession,
    SessionState,
    TlsSettings,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def emu() -> AsyncIterator[ThingsBoardEmulator]:
    async with ThingsBoardEmulator() as e:
        e.add_device("gw", token="GW_TOKEN", gateway=True)
        yield e


class LoopLag:
    """Measures the longest gap between 5 ms ticks of the loop: a blocked loop shows up here."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.worst = max(self.worst, now - last)
            last = now

    def stop(self) -> float:
        self._task.cancel()
        return self.worst


async def test_connects_with_token_subscribes_and_publishes(emu: ThingsBoardEmulator) -> None:
    s = MqttSession(session_config(emu.port))
    states: list[SessionState] = []
    s.add_state_listener(states.append)
    s.start()
    try:
        await wait_state(s, SessionState.CONNECTED)
        await asyncio.wait_for(s.publish(tb.DEVICE_TELEMETRY, b'{"cpu":7}'), TIMEOUT)
        assert [v for _ts, v in emu.device("gw").telemetry] == [{"cpu": 7}]
        assert emu.device("gw").connected
        assert states[:2] == [SessionState.CONNECTING, SessionState.CONNECTED]
        stats = s.stats()
        assert stats.connects == 1 and stats.pubacks >= 1 and stats.in_flight == 0
    finally:
        await s.stop()
    assert s.state is SessionState.STOPPED
    await emu.wait_for(lambda: not emu.device("gw").connected)


async def test_session_limits_answered_are_applied(emu: ThingsBoardEmulator) -> None:
    emu.session_limits = {"maxPayloadSize": 5000, "maxInflightMessages": 7}
    s = MqttSession(session_config(emu.port))
    answered = limits_future(s, lambda lim: lim.source is LimitsSource.SERVER)
    s.start()
    try:
        limits = await asyncio.wait_for(answered, TIMEOUT)
        assert (limits.max_payload_size, limits.max_inflight_messages, limits.final) == (5000, 7, True)
        assert limits.answer == emu.session_limits
        assert [c.method for c in emu.device("gw").client_rpcs] == ["getSessionLimits"]
    finally:
        await s.stop()


async def test_session_limits_never_answered_do_not_block(emu: ThingsBoardEmulator) -> None:
    emu.answer_session_limits = False
    s = MqttSession(session_config(emu.port, limits_timeout=0.5))
    defaulted = limits_future(s, lambda lim: lim.source is LimitsSource.DEFAULT)
    s.start()
    try:
        await wait_state(s, SessionState.CONNECTED)
        # connected at once with provisional limits; publishing works before any answer
        assert s.limits.source is LimitsSource.PROVISIONAL and not s.limits.final
        await asyncio.wait_for(s.publish(tb.DEVICE_TELEMETRY, b'{"a":1}'), TIMEOUT)
        assert not defaulted.done()
        limits = await asyncio.wait_for(defaulted, TIMEOUT)
        assert (limits.max_payload_size, limits.max_inflight_messages) == (65536, 100)
        assert s.state is SessionState.CONNECTED
    finally:
        await s.stop()


async def test_unknown_token_is_rejected_once_loudly_then_retried_slowly(
    emu: ThingsBoardEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.upstream.session")
    s = MqttSession(session_config(emu.port, AccessToken("WRONG"), reconnect_min=0.01, rejected_retry=0.4))
    rejections: list[tuple[float, str]] = []
    third: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def rejected(reason: str) -> None:
        rejections.append((time.monotonic(), reason))
        if len(rejections) == 3 and not third.done():
            third.set_result(None)

    s.add_rejected_listener(rejected)
    s.start()
    try:
        await asyncio.wait_for(third, TIMEOUT)
        assert s.state is SessionState.CREDENTIALS_REJECTED
        assert "135" in rejections[0][1]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(rejections)]
        assert all(g >= 0.4 * 0.5 * 0.9 for g in gaps), gaps  # the slow retry, not the 10 ms backoff
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "rejected the gateway's credentials" in errors[0].getMessage()
        assert emu.counters.refused == 3
        # re-provisioned: new credentials are used at once
        s.set_credentials(AccessToken("GW_TOKEN"))
        await wait_state(s, SessionState.CONNECTED)
    finally:
        await s.stop()


async def test_empty_token_gets_connack_4_and_is_rejected(emu: ThingsBoardEmulator) -> None:
    s = MqttSession(session_config(emu.port, MqttBasic(client_id="nobody"), rejected_retry=60))
    reasons: list[str] = []
    s.add_rejected_listener(reasons.append)
    s.start()
    try:
        await wait_state(s, SessionState.CREDENTIALS_REJECTED)
        assert "134" in reasons[0]  # CONNACK 4 (bad user name or password) in MQTT 5 numbering
    finally:
        await s.stop()


async def test_mqtt_basic_credentials(emu: ThingsBoardEmulator) -> None:
    from gateway.sim.tbemu import BasicCredentials

    emu.add_device("gw2", gateway=True, basic=BasicCredentials(client_id="cid", username="u", password="p"))
    s = MqttSession(session_config(emu.port, MqttBasic(client_id="cid", username="u", password="p")))
    s.start()
    try:
        await wait_state(s, SessionState.CONNECTED)
        await s.publish(tb.DEVICE_ATTRIBUTES, b'{"fw":"1"}')
        assert emu.device("gw2").attributes_client == {"fw": "1"}
    finally:
        await s.stop()


@pytest.mark.peer  # mosquitto
async def test_mosquitto_bad_password_is_rejected(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory(users={"gw": "secret"})
    s = MqttSession(session_config(broker.port, MqttBasic(username="gw", password="nope"), rejected_retry=60))
    s.start()
    try:
        await wait_state(s, SessionState.CREDENTIALS_REJECTED)
        s.set_credentials(MqttBasic(username="gw", password="secret"))
        await wait_state(s, SessionState.CONNECTED)
    finally:
        await s.stop()


@pytest.mark.peer  # mosquitto
async def test_reconnects_after_broker_killed_and_restarted(mosquitto: Any) -> None:
    s = MqttSession(session_config(mosquitto.port, ask_session_limits=False))
    s.start()
    try:
        await wait_state(s, SessionState.CONNECTED)
        first = s.publish("t/1", b"x")
        await first
        pending = [s.publish("t/1", b"y" * 100) for _ in range(5)]
        mosquitto.kill()
        await wait_state(s, SessionState.DISCONNECTED, SessionState.CONNECTING)
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(r is None or isinstance(r, ConnectionLost) for r in results)
        # publishing while disconnected fails at once, nothing is queued in paho
        late = s.publish("t/1", b"z")
        assert late.done() and isinstance(late.exception(), ConnectionLost)
        failures_before = s.stats().connect_failures
        mosquitto.start()
        await wait_state(s, SessionState.CONNECTED)
        await asyncio.wait_for(s.publish("t/1", b"again"), TIMEOUT)
        stats = s.stats()
        assert stats.connects == 2 and stats.connection_losses == 1
        assert stats.connect_failures >= failures_before
    finally:
        await s.stop()


def test_backoff_is_exponential_with_jitter_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    s = MqttSession(session_config(1, reconnect_min=1.0, reconnect_max=60.0))
    seen: list[tuple[float, float]] = []

    def upper(a: float, b: float) -> float:
        seen.append((a, b))
        return b

    monkeypatch.setattr(session_mod.random, "uniform", upper)
    delays = [s._backoff() for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert all(a == 1.0 for a, _ in seen)  # drawn from [min, ceiling]


async def test_tcp_connect_that_hangs_does_not_block_the_loop() -> None:
    # A listener with a full accept queue: the kernel drops further SYNs, connect() hangs.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.socket()
    filler.connect(("127.0.0.1", port))
    s = MqttSession(session_config(port, connect_timeout=0.6, reconnect_min=30, reconnect_max=30))
    lag = LoopLag()
    failed = asyncio.get_running_loop().create_future()
    s.add_state_listener(lambda st: st is SessionState.DISCONNECTED and not failed.done() and failed.set_result(None))
    t0 = time.monotonic()
    s.start()
    try:
        await wait_state(s, SessionState.CONNECTING)
        await asyncio.wait_for(failed, TIMEOUT)
        assert time.monotonic() - t0 >= 0.5
        assert lag.stop() < 0.2
        assert s.stats().connect_failures == 1
    finally:
        await s.stop()
        filler.close()
        server.close()


async def test_tls_handshake_that_hangs_does_not_block_the_loop(pki: Path) -> None:
    # Accepts TCP, never answers the TLS ClientHello.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = session_config(port, tls=TlsSettings(ca_file=str(pki / "ca.pem")), connect_timeout=0.5, reconnect_min=30)
    s = MqttSession(cfg)
    lag = LoopLag()
    s.start()
    try:
        await wait_state(s, SessionState.CONNECTING)
        await wait_state(s, SessionState.DISCONNECTED)
        assert accepted and lag.stop() < 0.2
    finally:
        await s.stop()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


async def test_no_connack_times_out() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)  # never answers the CONNECT

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    s = MqttSession(session_config(port, connect_timeout=0.3, reconnect_min=30))
    s.start()
    try:
        await wait_state(s, SessionState.CONNECTING)
        await wait_state(s, SessionState.DISCONNECTED)
        assert s.stats().connect_failures == 1
    finally:
        await s.stop()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


async def test_x509_and_token_over_tls(pki: Path) -> None:
    tls = TlsListener(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    async with ThingsBoardEmulator(tls=tls) as emu:
        emu.add_device("gw-x509", gateway=True, x509_pem=(pki / "device.pem").read_text())
        emu.add_device("gw-token", gateway=True, token="TLS_TOKEN")
        assert emu.tls_port is not None
        ca = TlsSettings(ca_file=str(pki / "ca.pem"))
        x509 = X509(str(pki / "device.pem"), str(pki / "device.key"))
        for name, cfg in (
            ("gw-x509", session_config(emu.tls_port, x509, tls=ca)),
            ("gw-token", session_config(emu.tls_port, AccessToken("TLS_TOKEN"), tls=ca)),
        ):
            s = MqttSession(cfg)
            s.start()
            try:
                await wait_state(s, SessionState.CONNECTED)
                await asyncio.wait_for(s.publish(tb.DEVICE_TELEMETRY, b'{"tls":1}'), TIMEOUT)
                assert [v for _ts, v in emu.device(name).telemetry] == [{"tls": 1}]
            finally:
                await s.stop()
        # a certificate the server does not know: rejected like a bad token
        other = X509(str(pki / "other.pem"), str(pki / "other.key"))
        s = MqttSession(session_config(emu.tls_port, other, tls=ca, rejected_retry=60))
        s.start()
        try:
            await wait_state(s, SessionState.CREDENTIALS_REJECTED)
        finally:
            await s.stop()


async def test_tls_server_not_trusted_fails_to_connect(pki: Path) -> None:
    tls = TlsListener(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    async with ThingsBoardEmulator(tls=tls) as emu:
        emu.add_device("gw", token="T", gateway=True)
        assert emu.tls_port is not None
        s = MqttSession(session_config(emu.tls_port, AccessToken("T"), tls=TlsSettings(), reconnect_min=30))
        s.start()
        try:
            await wait_state(s, SessionState.CONNECTING)
            await wait_state(s, SessionState.DISCONNECTED)
            assert s.stats().connects == 0
        finally:
            await s.stop()


@pytest.mark.peer  # mosquitto
async def test_own_client_rpc_echoed_by_a_plain_broker_is_not_taken_for_a_request(mosquitto: Any) -> None:
    s = MqttSession(session_config(mosquitto.port, limits_timeout=0.3))
    seen: list[tuple[str, bytes]] = []
    s.set_message_handler(lambda t, p: seen.append((t, p)))
    defaulted = limits_future(s, lambda lim: lim.source is LimitsSource.DEFAULT)
    s.start()
    try:
        await asyncio.wait_for(defaulted, TIMEOUT)
        assert not [t for t, _ in seen if t.startswith(tb.DEVICE_RPC_REQUEST)]
    finally:
        await s.stop()


@pytest.mark.peer  # mosquitto
async def test_limits_answered_by_a_responder_on_mosquitto(mosquitto: Any) -> None:
    """The recipe of docs/PEER_BENCH.md: a responder answers getSessionLimits on a plain broker."""

    def answer(peer: Peer, topic: str, payload: bytes) -> None:
        if json.loads(payload).get("method") == "getSessionLimits":
            rid = topic.rsplit("/", 1)[1]
            peer.publish(tb.DEVICE_RPC_RESPONSE + rid, {"maxPayloadSize": 3000, "maxInflightMessages": 4})

    responder = Peer(mosquitto.port, on_message=answer)
    await responder.connect()
    await responder.subscribe(tb.DEVICE_RPC_REQUEST + "+")
    s = MqttSession(session_config(mosquitto.port))
    answered = limits_future(s, lambda lim: lim.source is LimitsSource.SERVER)
    s.start()
    try:
        limits = await asyncio.wait_for(answered, TIMEOUT)
        assert (limits.max_payload_size, limits.max_inflight_messages) == (3000, 4)
    finally:
        await s.stop()
        responder.close()


async def test_stop_while_connecting_and_twice() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.socket()
    filler.connect(server.getsockname())
    s = MqttSession(session_config(server.getsockname()[1], connect_timeout=30))
    s.start()
    try:
        await wait_state(s, SessionState.CONNECTING)
        await asyncio.wait_for(s.stop(), 2)
        assert s.state is SessionState.STOPPED
        await s.stop()
        assert s.publish("a", b"b").exception() is not None
    finally:
        filler.close()
        server.close()


@pytest.mark.peer  # mosquitto
@pytest.mark.parametrize(("stable_after", "reset"), [(0.0, True), (1e9, False)])
async def test_backoff_resets_only_after_a_connection_that_stayed_up(
    mosquitto: Any, monkeypatch: pytest.MonkeyPatch, stable_after: float, reset: bool
) -> None:
    ceilings: list[float] = []

    def record(a: float, b: float) -> float:
        ceilings.append(b)
        return a  # retry fast; the ceiling is what the test looks at

    monkeypatch.setattr(session_mod.random, "uniform", record)
    mosquitto.kill()  # down at start: a few failed attempts first
    s = MqttSession(session_config(mosquitto.port, reconnect_min=0.01, stable_after=stable_after))
    failures = Condition(lambda: s.stats().connect_failures >= 3)
    s.add_state_listener(lambda _st: failures.poke())
    s.start()
    try:
        await failures.wait()
        mosquitto.start()
        await wait_state(s, SessionState.CONNECTED)
        before = len(ceilings)
        mosquitto.kill()
        await wait_state(s, SessionState.DISCONNECTED, SessionState.CONNECTING)
        first_after_loss = ceilings[before]
        assert (first_after_loss == 0.01) is reset, ceilings
    finally:
        await s.stop()
