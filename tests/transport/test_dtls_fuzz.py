"""Fuzzing the DTLS server's datagram entry: random datagrams, and real handshake and record
datagrams mutated, delivered to servers in every state. Whatever arrives, the server neither raises
nor breaks its own bookkeeping, and its real sessions keep working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dtls_helpers import SERVER_ADDR, PkiSet, Wire, make_test_pki
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.transport import dtls
from gateway.transport.dtls import (
    DtlsServer,
    InMemoryCredentials,
    RpkKeyPair,
    SessionState,
    TrustStore,
    X509Credentials,
)

PSK = (b"fuzz-identity", b"fuzz-key-0123456")
PEER = ("10.9.9.9", 4444)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiSet:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


class Setup:
    """Holds the credentials so that hypothesis does not print keys when a case fails."""

    def __init__(self, credentials: InMemoryCredentials) -> None:
        self.credentials = credentials

    def __repr__(self) -> str:
        return "Setup()"


@pytest.fixture(scope="module")
def setup(pki: PkiSet) -> Setup:
    return Setup(
        InMemoryCredentials(
            psk=dict([PSK]),
            rpk_keys={pki.client_rpk.spki_der},
            server_rpk=RpkKeyPair.from_pem(pki.server_rpk.pem_bytes),
            server_x509=X509Credentials(pki.server_chain, pki.server.key_bytes),
            trust=TrustStore(ca_file=str(pki.ca.cert)),
        )
    )


@pytest.fixture(scope="module")
def transcripts(setup: Setup, pki: PkiSet) -> list[bytes]:
    """Every client datagram of real PSK, RPK and X.509 handshakes followed by application data."""
    out: list[bytes] = []
    modes: list[dict[str, Any]] = [
        {"psk": PSK},
        {"rpk": RpkKeyPair.from_pem(pki.client_rpk.pem_bytes)},
        {"x509": X509Credentials(pki.client.cert_bytes, pki.client.key_bytes)},
    ]
    for i, kw in enumerate(modes):
        server = DtlsServer(setup.credentials)
        wire = Wire(server)
        session = wire.client(("10.0.0.1", 1000 + i)).connect(SERVER_ADDR, **kw)
        wire.pump()
        session.send(b"\x40\x01\x00\x01")  # a CoAP ping
        wire.pump()
        session.close()
        wire.pump()
        out += [d for direction, _, d in wire.log if direction == "up"]
        server.close()
    return out


def check_invariants(server: DtlsServer) -> None:
    assert server.stats["internal_errors"] == 0
    assert set(server._by_addr.values()) == set(server.sessions.values())
    assert server.handshaking == sum(s.state is SessionState.HANDSHAKING for s in server.sessions.values())
    assert server.handshaking <= server.max_handshakes and len(server.sessions) <= server.max_sessions
    for s in server.sessions.values():
        assert s.state is not SessionState.CLOSED and s._handle and dtls._links.get(s.id) is s


def mutate(data: bytes, op: int, pos: int, value: int, length: int) -> bytes:
    if not data:
        return bytes([value])
    pos %= len(data)
    match op:
        case 0:  # flip a byte
            return data[:pos] + bytes([data[pos] ^ (value or 1)]) + data[pos + 1 :]
        case 1:  # truncate
            return data[:pos]
        case 2:  # insert
            return data[:pos] + bytes([value]) * length + data[pos:]
        case 3:  # delete a run
            return data[:pos] + data[pos + length :]
        case 4:  # overwrite a record length field
            return data[:11] + bytes([value, length % 256]) + data[13:]
        case _:  # duplicate a tail (two records in one datagram)
            return data + data[pos:]


mutation = st.tuples(st.integers(0, 5), st.integers(0, 1 << 16), st.integers(0, 255), st.integers(0, 300))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datagrams=st.lists(st.tuples(st.binary(max_size=1500), st.integers(0, 3)), max_size=20))
def test_random_datagrams(setup: Setup, datagrams: list[tuple[bytes, int]]) -> None:
    server = DtlsServer(setup.credentials, max_handshakes=2, max_sessions=2)
    server.send = lambda addr, data: None
    failures = dtls.callback_failures
    for data, port in datagrams:
        server.datagram_received(data, ("10.1.1.1", 5000 + port))
        check_invariants(server)
    server.handle_timeouts(float("inf"))
    check_invariants(server)
    assert not server.sessions
    server.close()
    assert dtls.callback_failures == failures


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.lists(st.tuples(st.integers(0, 10_000), mutation), min_size=1, max_size=12),
    prefix=st.integers(0, 40),
)
def test_mutated_handshake_datagrams(setup: Setup, transcripts: list[bytes], picks: list[Any], prefix: int) -> None:
    """Replay a prefix of real client datagrams (driving the server into some state), then
    mutated ones; then a genuine client must still get through."""
    server = DtlsServer(setup.credentials, max_handshakes=4)
    wire = Wire(server)
    wire.tap = lambda direction, addr, data: direction == "up"  # the replayed client cannot listen
    failures = dtls.callback_failures
    for data in transcripts[: prefix % (len(transcripts) + 1)]:
        server.datagram_received(data, PEER)
    check_invariants(server)
    for index, (op, pos, value, length) in picks:
        server.datagram_received(mutate(transcripts[index % len(transcripts)], op, pos, value, length), PEER)
        check_invariants(server)
    wire.tap = None
    wire.queue.clear()
    session = wire.client(("10.2.2.2", 2222)).connect(SERVER_ADDR, psk=PSK)
    wire.pump()
    assert session.established
    server.handle_timeouts(float("inf"))
    check_invariants(server)
    server.close()
    assert dtls.callback_failures == failures


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(mutation, min_size=1, max_size=10))
def test_mutated_records_to_an_established_session(setup: Setup, picks: list[tuple[int, int, int, int]]) -> None:
    server = DtlsServer(setup.credentials)
    wire = Wire(server)
    received: list[bytes] = []
    server.on_data = lambda s, d: received.append(d)
    session = wire.client(PEER).connect(SERVER_ADDR, psk=PSK)
    wire.pump()
    wire.log.clear()
    session.send(b"genuine")
    (record,) = [d for direction, _, d in wire.log if direction == "up"]
    wire.queue.clear()
    for op, pos, value, length in picks:
        server.datagram_received(mutate(record, op, pos, value, length), PEER)
        check_invariants(server)
    wire.queue.clear()  # what the server said to the garbage (nothing, or an alert) is not pumped
    if session.established and server.session_for(PEER) is not None:
        session.send(b"still here")
        wire.pump()
        assert received[-1] == b"still here"
        assert all(d in (b"genuine", b"still here") for d in received)  # nothing forged got through
    server.close()


@given(st.binary(max_size=600))
def test_client_hello_parsers_never_raise(data: bytes) -> None:
    dtls._client_hello_random(data)
    dtls._client_hello_extension(data, 19)
    dtls._wants_raw_public_key(data)
    list(dtls._records(data))


def test_pki_not_in_repo(pki: PkiSet) -> None:
    assert not Path(pki.root).is_relative_to(Path(__file__).resolve().parents[2])


@given(st.binary(max_size=200))
def test_cookie_probe_never_raises(data: bytes) -> None:
    dtls._has_cookie(data)
