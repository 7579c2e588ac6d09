"""The DTLS server engine without sockets: handshakes with the project's GnuTLS client over an
in-memory wire, cookies, limits, timers, session replacement, replays and garbage."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dtls_helpers import SERVER_ADDR, PkiSet, Wire, make_test_pki

from gateway.transport import dtls, gnutls
from gateway.transport.dtls import (
    RETRANSMIT_FLOOR,
    DtlsClient,
    DtlsServer,
    DtlsSession,
    InMemoryCredentials,
    PskPrincipal,
    RpkKeyPair,
    RpkPrincipal,
    SessionState,
    TrustStore,
    X509Credentials,
    X509Principal,
    p256_private_der,
    p256_spki,
    p256_xy,
)

PSK = (b"endpoint-1", b"0123456789abcdef")
ALERT = 21
APPLICATION_DATA = 23
HANDSHAKE = 22


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiSet:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def credentials(pki: PkiSet) -> InMemoryCredentials:
    return InMemoryCredentials(
        psk=dict([PSK]),
        rpk_keys={pki.client_rpk.spki_der},
        server_rpk=RpkKeyPair.from_pem(pki.server_rpk.pem_bytes),
        server_x509=X509Credentials(pki.server_chain, pki.server.key_bytes),
        trust=TrustStore(ca_file=str(pki.ca.cert)),
    )


class Events:
    """Everything a server reported."""

    def __init__(self) -> None:
        self.established: list[DtlsSession] = []
        self.data: list[tuple[DtlsSession, bytes]] = []
        self.closed: list[tuple[DtlsSession, str]] = []
        self.failed: list[tuple[Any, str]] = []

    def hook(self, server: DtlsServer) -> DtlsServer:
        server.on_established = self.established.append
        server.on_data = lambda s, d: self.data.append((s, d))
        server.on_closed = lambda s, r: self.closed.append((s, r))
        server.on_handshake_failed = lambda a, r: self.failed.append((a, r))
        return server


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_server(credentials: InMemoryCredentials, events: Events) -> Any:
    servers: list[DtlsServer] = []

    def make(**kw: Any) -> DtlsServer:
        s = events.hook(DtlsServer(kw.pop("credentials", credentials), **kw))
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()
        assert s.stats["internal_errors"] == 0


class FakeLoop:
    """Just what the engine uses of an event loop, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.pending: list[FakeHandle] = []
        self.calls = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, fn: Callable[[], None]) -> FakeHandle:
        self.calls += 1
        h = FakeHandle(self, when, fn)
        self.pending.append(h)
        return h

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while due := [h for h in self.pending if h.when <= self.now]:
            for h in due:
                self.pending.remove(h)
                h.fn()


class FakeHandle:
    def __init__(self, loop: FakeLoop, when: float, fn: Callable[[], None]) -> None:
        self.loop, self.when, self.fn = loop, when, fn

    def cancel(self) -> None:
        if self in self.loop.pending:
            self.loop.pending.remove(self)


def addr(i: int) -> tuple[str, int]:
    return (f"10.0.{i // 250}.{i % 250 + 1}", 40000 + i)


def handshake(wire: Wire, i: int, **credentials: Any) -> tuple[DtlsClient, DtlsSession]:
    client = wire.client(addr(i))
    session = client.connect(SERVER_ADDR, **(credentials or {"psk": PSK}))
    wire.pump()
    return client, session


def records(datagram: bytes) -> list[tuple[int, int]]:
    return list(dtls._records(datagram))


# --- the three modes and the cipher suites ------------------------------------------------------------


def test_psk_rpk_x509_negotiate_ccm8(make_server: Any, events: Events, pki: PkiSet) -> None:
    wire = Wire(make_server())
    handshake(wire, 1, psk=PSK)
    handshake(wire, 2, rpk=RpkKeyPair.from_pem(pki.client_rpk.pem_bytes))
    handshake(wire, 3, x509=X509Credentials(pki.client.cert_bytes, pki.client.key_bytes))
    psk, rpk, x509 = events.established
    assert psk.principal == PskPrincipal(PSK[0])
    assert psk.cipher_suite == "TLS_PSK_WITH_AES_128_CCM_8"
    assert rpk.principal == RpkPrincipal(pki.client_rpk.spki_der)
    assert rpk.cipher_suite == "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"
    assert isinstance(x509.principal, X509Principal) and x509.principal.common_name == "LwX50900000000"
    assert x509.cipher_suite == "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"
    assert [s.data_mtu for s in events.established] == [1251, 1251, 1251]
    assert not events.failed


@pytest.mark.parametrize(
    ("offer", "negotiated"),
    [
        ("+AES-128-GCM:+AES-128-CBC:+AES-128-CCM-8", "TLS_PSK_WITH_AES_128_CCM_8"),  # server's order
        ("+AES-128-CBC", "TLS_PSK_WITH_AES_128_CBC_SHA256"),
        ("+AES-128-GCM", "TLS_PSK_WITH_AES_128_GCM_SHA256"),
        ("+AES-256-GCM", "TLS_PSK_WITH_AES_256_GCM_SHA384"),
    ],
)
def test_cipher_suite_choice(make_server: Any, events: Events, offer: str, negotiated: str) -> None:
    wire = Wire(make_server())
    priority = f"NONE:+VERS-DTLS1.2:+COMP-NULL:{offer}:+AEAD:+SHA256:+SHA384:+PSK:+SIGN-ALL:+GROUP-SECP256R1"
    handshake(wire, 1, psk=PSK, priority=priority)
    assert events.established[0].cipher_suite == negotiated


def test_ecdhe_psk_only_client(make_server: Any, events: Events) -> None:
    wire = Wire(make_server())
    priority = "NONE:+VERS-DTLS1.2:+COMP-NULL:+AES-128-CBC:+SHA256:+ECDHE-PSK:+SIGN-ALL:+GROUP-SECP256R1"
    handshake(wire, 1, psk=PSK, priority=priority)
    assert events.established[0].cipher_suite == "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256"


def test_server_rpk_from_raw_hex(credentials: InMemoryCredentials, make_server: Any, events: Events) -> None:
    # the seed's ThingsBoard server key pair, given as x, y, d
    x = "405354ea8893471d9296afbc8b020a5c6201b0bb25812a53b849d4480fa5f069"
    y = "30c9237e946a3a1692c1cafaa01a238a077f632c99371348337512363f28212b"
    d = "274671fe40ce937b8a6352cf0a418e8a39e4bf0bb9bf74c910db953c20c73802"
    pair = RpkKeyPair.from_raw_hex(x, y, d)
    assert pair.public.hex() == (
        "3059301306072a8648ce3d020106082a8648ce3d030107034200044053"
        "54ea8893471d9296afbc8b020a5c6201b0bb25812a53b849d4480fa5f06930c9237e946a3a1692c1cafaa01a238a07"
        "7f632c99371348337512363f28212b"
    )
    assert p256_xy(pair.public) == (bytes.fromhex(x), bytes.fromhex(y))
    credentials.server_rpk = pair
    credentials.server_x509 = None
    credentials.rpk_keys.add(pair.public)
    wire = Wire(make_server())
    # the client uses the same key pair: enough to show the server loaded it
    handshake(wire, 1, rpk=pair)
    assert events.established[0].principal == RpkPrincipal(pair.public)


def test_p256_helpers_reject_bad_input() -> None:
    with pytest.raises(ValueError):
        p256_spki(b"\0" * 31, b"\0" * 32)
    with pytest.raises(ValueError):
        p256_private_der(b"\0" * 32, b"\0" * 32, b"\0" * 33)
    with pytest.raises(ValueError):
        p256_xy(b"\x30" * 91)


def test_key_material_not_in_repr(pki: PkiSet) -> None:
    pair = RpkKeyPair.from_pem(pki.client_rpk.pem_bytes)
    assert "PRIVATE" not in repr(pair) and "PRIVATE" not in repr(X509Credentials(b"c", pki.client.key_bytes))
    assert "0123456789abcdef" not in repr(InMemoryCredentials(psk=dict([PSK])))


# --- cookies and floods --------------------------------------------------------------------------------


def client_hello(wire: Wire) -> bytes:
    """A real first ClientHello (no cookie)."""
    c = wire.client(("198.51.100.1", 1))
    c.connect(SERVER_ADDR, psk=PSK)
    direction, _, hello = wire.queue.popleft()
    assert direction == "up" and dtls._client_hello_random(hello) is not None
    return hello


def test_client_hello_without_cookie_gets_stateless_verify_request(make_server: Any) -> None:
    server = make_server()
    wire = Wire(server)
    hello = client_hello(wire)
    links = len(dtls._links)
    server.datagram_received(hello, ("203.0.113.5", 5000))
    (reply,) = wire.queue
    assert reply[0] == "down" and reply[1] == ("203.0.113.5", 5000)
    assert records(reply[2]) == [(HANDSHAKE, 0)] and reply[2][13] == 3  # HelloVerifyRequest
    assert not server.sessions and server.handshaking == 0 and len(dtls._links) == links


def test_spoofed_handshake_flood_costs_only_the_cookie(make_server: Any) -> None:
    server = make_server()
    wire = Wire(server)
    hello = client_hello(wire)
    replies: list[int] = []
    server.send = lambda a, d: replies.append(len(d))  # to addresses nobody listens on
    links = len(dtls._links)
    n = 5000
    server.datagram_received(hello, addr(0))  # warm up
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.process_time()
    for i in range(1, n + 1):
        server.datagram_received(hello, addr(i))
    cpu = time.process_time() - t0
    grown = tracemalloc.get_traced_memory()[0] - before - sys.getsizeof(replies)
    tracemalloc.stop()
    assert server.stats["cookies_sent"] == n + 1 and len(replies) == n + 1
    assert max(replies) < len(hello)  # no amplification
    assert not server.sessions and server.handshaking == 0 and len(dtls._links) == links
    assert grown < 64 * 1024, f"{grown} bytes kept for {n} spoofed hellos"
    assert cpu / n < 0.001  # well under 1 ms each (about 20 us here)


def test_half_open_handshakes_capped_and_expire(make_server: Any, events: Events) -> None:
    server = make_server(max_handshakes=4, handshake_deadline=5.0)
    wire = Wire(server)
    sent_after_cookie: set[Any] = set()

    def stall(direction: str, address: Any, data: bytes) -> bool:
        # clients complete the cookie exchange, then never send their second flight
        if direction == "up" and dtls._client_hello_random(data) is None:
            return False
        if direction == "down":
            sent_after_cookie.add(address)
        return True

    wire.tap = stall
    for i in range(10):
        handshake(wire, i)
    assert server.handshaking == 4
    assert server.stats["handshakes_refused_limit"] == 6
    # the deadline frees the slots, each with an alert and a clear reason
    wire.tap = None
    wire.log.clear()
    server.handle_timeouts(time.monotonic() + 5.0)
    assert server.handshaking == 0 and not server.sessions
    assert [r for _, r in events.failed] == ["handshake not completed within 5 s"] * 4
    alerts = [d for direction, _, d in wire.log if direction == "down" and d[0] == ALERT]
    assert len(alerts) == 4
    # and a legitimate client gets in afterwards
    handshake(wire, 99)
    assert events.established and events.established[0].addr == addr(99)


def test_session_cap_evicts_least_recently_active(make_server: Any, events: Events) -> None:
    server = make_server(max_sessions=3)
    wire = Wire(server)
    clients = [handshake(wire, i) for i in range(3)]
    clients[0][1].send(b"still here")  # session 0 becomes the most recently active
    wire.pump()
    handshake(wire, 3)
    assert [r for _, r in events.closed] == ["evicted: session limit"]
    assert events.closed[0][0].addr == addr(1)
    assert len(server.sessions) == 3
    assert clients[1][1].state is SessionState.CLOSED  # it got the close_notify
    assert clients[1][1].closed_reason == "close_notify"


def test_idle_session_evicted_with_close_notify(credentials: InMemoryCredentials, events: Events) -> None:
    loop = FakeLoop()
    server = events.hook(DtlsServer(credentials, loop=loop, idle_timeout=30.0))  # type: ignore[arg-type]
    wire = Wire(server)
    _, session = handshake(wire, 1)
    loop.advance(20)
    session.send(b"activity")  # postpones the eviction to 30 s after this
    wire.pump()
    loop.advance(20)
    assert not events.closed
    loop.advance(11)
    wire.pump()
    assert [r for _, r in events.closed] == ["idle"]
    assert session.closed_reason == "close_notify"
    assert not server.sessions
    server.close()


# --- session lifecycle ---------------------------------------------------------------------------------


def test_data_both_ways_and_close_notify(make_server: Any, events: Events) -> None:
    server = make_server()
    wire = Wire(server)
    received: list[bytes] = []
    client = wire.client(addr(1), on_data=lambda s, d: received.append(d))
    session = client.connect(SERVER_ADDR, psk=PSK)
    wire.pump()
    session.send(b"ping")
    wire.pump()
    ((server_session, data),) = events.data
    assert data == b"ping"
    server_session.send(b"pong")
    wire.pump()
    assert received == [b"pong"]
    session.close()
    wire.pump()
    assert events.closed == [(server_session, "close_notify")]
    assert not server.sessions


def test_records_alone_and_packed_in_one_datagram_are_all_read(make_server: Any, events: Events) -> None:
    # one record per datagram is read with one gnutls_record_recv (nothing can be left buffered);
    # several records in one datagram are read until GnuTLS has nothing more
    server = make_server()
    wire = Wire(server)
    _, session = handshake(wire, 1)
    wire.log.clear()
    for text in (b"a", b"b", b"c"):
        session.send(text)
    singles = [d for direction, _, d in wire.log if direction == "up"]
    assert [len(records(d)) for d in singles] == [1, 1, 1]
    wire.pump()
    assert [d for _, d in events.data] == [b"a", b"b", b"c"]
    wire.log.clear()
    for text in (b"d", b"e", b"f"):
        session.send(text)
    packed = b"".join(d for direction, _, d in wire.log if direction == "up")
    wire.queue.clear()
    server.datagram_received(packed, addr(1))
    assert [d for _, d in events.data] == [b"a", b"b", b"c", b"d", b"e", b"f"]
    server.datagram_received(singles[0], addr(1))  # a replay: dropped, and the session goes on
    session.send(b"g")
    wire.pump()
    assert [d for _, d in events.data][-1] == b"g" and len(events.data) == 7


def test_server_close_sends_close_notify(make_server: Any) -> None:
    server = make_server()
    wire = Wire(server)
    _, session = handshake(wire, 1)
    server.close()
    wire.pump()
    assert session.state is SessionState.CLOSED and session.closed_reason == "close_notify"


def test_new_client_hello_from_known_address_replaces_session(make_server: Any, events: Events) -> None:
    server = make_server()
    wire = Wire(server)
    handshake(wire, 1)
    old = events.established[0]
    second_client = wire.client(addr(1))  # the device rebooted: same address, new handshake
    second = second_client.connect(SERVER_ADDR, psk=PSK)
    wire.pump()
    assert second.established
    assert events.closed == [(old, "replaced by a new handshake")]
    assert len(server.sessions) == 1 and server.session_for(addr(1)) is events.established[1]


def test_replayed_client_hello_does_not_replace_session(make_server: Any, events: Events) -> None:
    server = make_server()
    wire = Wire(server)
    handshake(wire, 1)
    hellos = [d for direction, _, d in wire.log if direction == "up" and dtls._client_hello_random(d)]
    assert len(hellos) == 2  # without and with cookie
    for hello in hellos:
        server.datagram_received(hello, addr(1))
    wire.pump()
    assert not events.closed and len(server.sessions) == 1
    assert server.session_for(addr(1)) is events.established[0]


def test_replayed_records_are_dropped(make_server: Any, events: Events) -> None:
    server = make_server()
    wire = Wire(server)
    _, session = handshake(wire, 1)
    wire.log.clear()
    session.send(b"once")
    (record,) = [d for direction, _, d in wire.log if direction == "up"]
    wire.pump()
    for _ in range(3):
        server.datagram_received(record, addr(1))
    assert [d for _, d in events.data] == [b"once"]
    session.send(b"twice")
    wire.pump()
    assert [d for _, d in events.data] == [b"once", b"twice"]


def test_garbage_and_truncated_records_do_not_hurt_a_session(make_server: Any, events: Events) -> None:
    server = make_server()
    wire = Wire(server)
    _, session = handshake(wire, 1)
    wire.log.clear()
    session.send(b"payload")
    (record,) = [d for direction, _, d in wire.log if direction == "up"]
    wire.queue.clear()
    bad = [
        b"",
        b"\x17",
        os.urandom(12),
        os.urandom(200),
        record[:13],
        record[:-1],
        record[:20],
        record[:11] + b"\xff\xff" + record[13:],  # length beyond the datagram
        record[:-1] + bytes([record[-1] ^ 1]),  # one bit flipped in the tag
        record + os.urandom(40),
        bytes([HANDSHAKE]) + record[1:],  # wrong content type
    ]
    for datagram in bad:
        server.datagram_received(datagram, addr(1))
    assert session.established and len(server.sessions) == 1
    wire.pump()
    session.send(b"after")
    wire.pump()
    assert b"after" in [d for _, d in events.data]
    assert not events.closed


def test_garbage_from_unknown_addresses_is_dropped(make_server: Any) -> None:
    server = make_server()
    wire = Wire(server)
    for i in range(200):
        server.datagram_received(os.urandom(i), addr(i))
    assert not wire.queue and not server.sessions


def test_send_larger_than_data_mtu_refused(make_server: Any, events: Events) -> None:
    server = make_server()
    wire = Wire(server)
    handshake(wire, 1)
    session = events.established[0]
    session.send(b"x" * session.data_mtu)
    with pytest.raises(ValueError, match="data MTU"):
        session.send(b"x" * (session.data_mtu + 1))


def test_send_on_closed_session_raises(make_server: Any, events: Events) -> None:
    wire = Wire(make_server())
    handshake(wire, 1)
    session = events.established[0]
    session.close()
    with pytest.raises(ConnectionError):
        session.send(b"late")


def test_smaller_mtu(make_server: Any, events: Events) -> None:
    wire = Wire(make_server(mtu=400))
    handshake(wire, 1)
    assert events.established[0].data_mtu == 400 - 29  # record header 13, nonce 8, tag 8


# --- refusals and alerts -------------------------------------------------------------------------------


def sent_alerts(wire: Wire) -> list[int]:
    return [d[-1] for direction, _, d in wire.log if direction == "down" and d[0] == ALERT and d[4] == 0]


def test_wrong_key_fails_at_once_with_bad_record_mac(make_server: Any, events: Events) -> None:
    wire = Wire(make_server())
    _, session = handshake(wire, 1, psk=(PSK[0], b"fedcba9876543210"))
    assert session.state is SessionState.CLOSED
    assert events.failed[0][1].startswith("bad record MAC: the client's Finished could not be decrypted")
    assert sent_alerts(wire) == [20]
    assert session.closed_reason == "peer sent fatal alert: Bad record MAC"


def test_unknown_identity_gets_unknown_psk_identity_alert(make_server: Any, events: Events) -> None:
    wire = Wire(make_server())
    handshake(wire, 1, psk=(b"stranger", PSK[1]))
    assert events.failed[0][1] == "unknown PSK identity 'stranger' (8 bytes)"
    assert sent_alerts(wire) == [115]


def test_unknown_raw_public_key_refused(make_server: Any, events: Events, pki: PkiSet) -> None:
    wire = Wire(make_server())
    handshake(wire, 1, rpk=RpkKeyPair.from_pem(pki.stranger_rpk.pem_bytes))
    assert events.failed[0][1].startswith("unknown raw public key sha256:")
    assert sent_alerts(wire) == [49]


@pytest.mark.parametrize(
    ("which", "reason", "alert"),
    [
        ("client_expired", "certificate chain error: certificate expired (CN='LwX50900000002')", 45),
        ("client_other_ca", "certificate chain error: unknown CA (CN='LwX50900000001')", 48),
    ],
)
def test_bad_certificates_refused(
    make_server: Any, events: Events, pki: PkiSet, which: str, reason: str, alert: int
) -> None:
    wire = Wire(make_server())
    cert = getattr(pki, which)
    handshake(wire, 1, x509=X509Credentials(cert.cert_bytes, cert.key_bytes))
    assert events.failed[0][1] == reason
    assert sent_alerts(wire) == [alert]


def test_unverified_certificate_accepted_when_provider_says_so(
    credentials: InMemoryCredentials, make_server: Any, events: Events, pki: PkiSet
) -> None:
    credentials.accept_unverified_x509 = True
    wire = Wire(make_server())
    cert = pki.client_other_ca
    handshake(wire, 1, x509=X509Credentials(cert.cert_bytes, cert.key_bytes))
    principal = events.established[0].principal
    assert isinstance(principal, X509Principal)
    assert not principal.chain_ok and principal.chain_error == "unknown CA"


def test_failing_provider_fails_only_that_handshake(
    credentials: InMemoryCredentials, make_server: Any, events: Events
) -> None:
    class Broken(InMemoryCredentials):
        def psk_key(self, identity: bytes) -> bytes | None:
            if identity == b"boom":
                raise RuntimeError("store offline")
            return super().psk_key(identity)

    broken = Broken(psk=dict([PSK]))
    wire = Wire(make_server(credentials=broken))
    before = dtls.callback_failures
    handshake(wire, 1, psk=(b"boom", PSK[1]))
    assert events.failed[0][1] == "PSK lookup for identity 'boom' (4 bytes) failed"
    assert dtls.callback_failures == before + 1
    handshake(wire, 2)
    assert events.established


def test_callback_exceptions_are_contained(make_server: Any, events: Events, caplog: Any) -> None:
    server = make_server()

    def explode(session: DtlsSession, data: bytes) -> None:
        raise RuntimeError("application bug")

    server.on_data = explode
    wire = Wire(server)
    _, session = handshake(wire, 1)
    with caplog.at_level(logging.ERROR):
        session.send(b"x")
        wire.pump()
    assert server.stats["callback_errors"] == 1
    assert session.established and len(server.sessions) == 1


def test_handshake_deadline_must_be_short() -> None:
    with pytest.raises(ValueError):
        DtlsServer(InMemoryCredentials(), handshake_deadline=30.0)


# --- timers ---------------------------------------------------------------------------------------------


async def test_lost_server_flight_is_retransmitted(credentials: InMemoryCredentials, events: Events) -> None:
    loop = asyncio.get_running_loop()
    server = events.hook(DtlsServer(credentials, loop=loop, retransmit_timeout=0.05))
    wire = Wire(server)
    dropped: list[bytes] = []
    queued = asyncio.Event()

    def lose_first_server_hello(direction: str, address: Any, data: bytes) -> bool:
        if direction == "down" and data[13] == 2 and not dropped:  # ServerHello
            dropped.append(data)
            return False
        queued.set()
        return True

    wire.tap = lose_first_server_hello
    _, session = handshake(wire, 1)
    assert dropped and not session.established
    deadline = server.next_deadline()
    assert deadline is not None and deadline - loop.time() >= RETRANSMIT_FLOOR - 0.01
    queued.clear()
    await asyncio.wait_for(queued.wait(), 5)  # the server's retransmission timer fires on the loop
    wire.pump()
    assert session.established and events.established
    server.close()


def test_one_timer_for_all_sessions(credentials: InMemoryCredentials) -> None:
    """However many sessions wait, the engine keeps at most one call_at pending on the loop."""

    loop = FakeLoop()
    server = DtlsServer(credentials, loop=loop, idle_timeout=60.0)  # type: ignore[arg-type]
    wire = Wire(server)
    wire.tap = lambda d, a, data: d == "down" or dtls._client_hello_random(data) is not None
    for i in range(50):
        handshake(wire, i)  # 50 half-open handshakes, each with a retransmission timer
        assert len(loop.pending) <= 1
    assert server.handshaking == 50
    (armed,) = loop.pending
    assert armed.when == server.next_deadline()
    server.close()
    assert not loop.pending


async def test_timer_runs_on_the_event_loop(credentials: InMemoryCredentials, events: Events) -> None:
    loop = asyncio.get_running_loop()
    server = events.hook(DtlsServer(credentials, loop=loop, handshake_deadline=0.3))
    wire = Wire(server)
    wire.tap = lambda d, a, data: d == "down" or dtls._client_hello_random(data) is not None
    handshake(wire, 1)
    assert server.handshaking == 1
    done = loop.create_future()
    server.on_handshake_failed = lambda a, r: done.set_result(r)
    assert await asyncio.wait_for(done, 5) == "handshake not completed within 0.3 s"
    assert server.handshaking == 0
    server.close()


def test_cookie_secret_rotation(make_server: Any, events: Events) -> None:
    server = make_server()
    wire = Wire(server)
    client = wire.client(addr(1))
    client.connect(SERVER_ADDR, psk=PSK)
    wire.pump(1)  # hello -> server
    server.rotate_cookie_secret()  # rotated once: the cookie just sent is still accepted
    wire.pump()
    assert len(events.established) == 1

    client = wire.client(addr(2))
    client.connect(SERVER_ADDR, psk=PSK)
    wire.pump(1)
    server.rotate_cookie_secret()  # rotated twice: the cookie is stale
    server.rotate_cookie_secret()
    cookies = server.stats["cookies_sent"]
    wire.pump()
    assert server.stats["cookies_sent"] == cookies + 1  # a new HelloVerifyRequest instead
    assert len(events.established) == 1 and len(server.sessions) == 1


def test_reload_credentials_keeps_open_sessions(
    credentials: InMemoryCredentials, make_server: Any, events: Events, pki: PkiSet, tmp_path: Path
) -> None:
    server = make_server()
    wire = Wire(server)
    _, old = handshake(wire, 1, rpk=RpkKeyPair.from_pem(pki.client_rpk.pem_bytes))
    credentials.server_rpk = RpkKeyPair.from_pem(pki.stranger_rpk.pem_bytes)
    server.reload_credentials()
    old.send(b"still works")
    wire.pump()
    assert events.data[-1][1] == b"still works"
    handshake(wire, 2, rpk=RpkKeyPair.from_pem(pki.client_rpk.pem_bytes))
    assert len(events.established) == 2


def test_verified_certificate_chains_are_remembered(
    make_server: Any, events: Events, pki: PkiSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = gnutls.certificate_verify_peers

    def counting(*args: Any) -> int:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(gnutls, "certificate_verify_peers", counting)
    server = make_server()
    wire = Wire(server)
    cert = X509Credentials(pki.client.cert_bytes, pki.client.key_bytes)
    handshake(wire, 1, x509=cert)
    handshake(wire, 2, x509=cert)
    assert len(calls) == 1 and len(events.established) == 2
    assert events.established[1].principal == events.established[0].principal
    # a failed chain is never remembered
    bad = X509Credentials(pki.client_other_ca.cert_bytes, pki.client_other_ca.key_bytes)
    handshake(wire, 3, x509=bad)
    handshake(wire, 4, x509=bad)
    assert len(calls) == 3 and len(events.failed) == 2
    # a reload of the trust store forgets, and so does time
    server.reload_credentials()
    handshake(wire, 5, x509=cert)
    assert len(calls) == 4
    monkeypatch.setattr(dtls, "X509_CACHE_TTL", -1.0)
    server.reload_credentials()
    handshake(wire, 6, x509=cert)
    handshake(wire, 7, x509=cert)
    assert len(calls) == 6


def test_certificate_chain_cache_can_be_off(
    make_server: Any, events: Events, pki: PkiSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = gnutls.certificate_verify_peers

    def counting(*args: Any) -> int:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(gnutls, "certificate_verify_peers", counting)
    wire = Wire(make_server(x509_cache_size=0))
    cert = X509Credentials(pki.client.cert_bytes, pki.client.key_bytes)
    handshake(wire, 1, x509=cert)
    handshake(wire, 2, x509=cert)
    assert len(calls) == 2 and len(events.established) == 2


def test_trust_store_directory(
    credentials: InMemoryCredentials, make_server: Any, events: Events, pki: PkiSet, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca.cert_bytes)
    credentials.trust = TrustStore(ca_dir=str(tmp_path))
    wire = Wire(make_server())
    handshake(wire, 1, x509=X509Credentials(pki.client.cert_bytes, pki.client.key_bytes))
    principal = events.established[0].principal
    assert isinstance(principal, X509Principal) and principal.chain_ok


def test_trust_store_pem_and_a_bad_file(credentials: InMemoryCredentials, pki: PkiSet, tmp_path: Path) -> None:
    credentials.trust = TrustStore(ca_pem=pki.ca.cert_bytes)
    DtlsServer(credentials).close()
    credentials.trust = TrustStore(ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(gnutls.GnuTLSError, match="trust store file"):
        DtlsServer(credentials)


def test_close_twice_is_harmless(make_server: Any) -> None:
    server = make_server()
    server.close()
    server.close()
    server.datagram_received(b"\x16" * 40, addr(1))


def test_refusal_logs_are_rate_limited_per_kind(make_server: Any, caplog: Any) -> None:
    wire = Wire(make_server())
    with caplog.at_level(logging.WARNING, logger="gateway.transport.dtls"):
        for i in range(60):
            handshake(wire, i, psk=(f"made-up-{i}".encode(), PSK[1]))
    refusals = [r for r in caplog.records if "unknown PSK identity" in r.getMessage()]
    assert len(refusals) == 20
    assert "0123456789abcdef" not in caplog.text  # never key material


def test_close_where_ends_the_sessions_of_a_principal(
    credentials: InMemoryCredentials, make_server: Any, events: Events
) -> None:
    credentials.psk[b"other"] = PSK[1]
    server = make_server()
    wire = Wire(server)
    _, first = handshake(wire, 1)
    _, second = handshake(wire, 2, psk=(b"other", PSK[1]))
    del credentials.psk[PSK[0]]  # the credentials store removed the endpoint
    assert server.close_where(lambda s: s.principal == PskPrincipal(PSK[0]), "credentials removed") == 1
    wire.pump()
    assert [r for _, r in events.closed] == ["credentials removed"]
    assert first.state is SessionState.CLOSED and second.established
