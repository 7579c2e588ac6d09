"""The aiocoap transport over DTLS: remotes, role reversal and session ends, on real UDP sockets with
the project's GnuTLS client as the device."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import pytest
from dtls_helpers import CoapDtlsHarness, UdpDtlsClient, coap_dtls_server

from gateway.transport.dtls import DtlsClient, InMemoryCredentials, PskPrincipal
from gateway.transport.dtls_coap import COAP_OVERHEAD, DtlsRemote, block_size_exp_for

PSK = (b"LwPSK00000007-identity", b"0123456789abcdef")


@pytest.fixture
async def harness() -> AsyncIterator[CoapDtlsHarness]:
    async with coap_dtls_server(InMemoryCredentials(psk=dict([PSK]))) as h:
        yield h


@pytest.fixture
async def device() -> AsyncIterator[UdpDtlsClient]:
    d = await UdpDtlsClient.open()
    yield d
    d.close()


async def coap_get(device: UdpDtlsClient, path: str, mid: int = 1) -> aiocoap.Message:
    """A CON GET from the device; returns the server's answer."""
    assert device.session is not None
    request = aiocoap.Message(code=aiocoap.GET, uri_path=[path])
    request.mtype, request.mid, request.token = aiocoap.CON, mid, b"tk"
    device.session.send(request.encode())
    return aiocoap.Message.decode(await asyncio.wait_for(device.received.get(), 10))


async def test_request_carries_principal_and_addresses(harness: CoapDtlsHarness, device: UdpDtlsClient) -> None:
    await device.connect(harness.port, psk=PSK)
    response = await coap_get(device, "hello")
    assert response.code == aiocoap.CONTENT
    assert response.payload == f"hello {PskPrincipal(PSK[0])}".encode()
    remote = harness.requests[0].remote
    assert isinstance(remote, DtlsRemote)
    assert remote.authenticated_claims == (PskPrincipal(PSK[0]),)
    assert remote.hostinfo == f"127.0.0.1:{device.local_port}"
    assert remote.uri_base == f"coaps://127.0.0.1:{device.local_port}"
    assert remote.hostinfo_local == f"127.0.0.1:{harness.port}"
    assert remote.scheme == "coaps" and not remote.is_multicast and not remote.is_multicast_locally
    assert remote.maximum_block_size_exp == 6
    assert remote.maximum_payload_size == 1251 - COAP_OVERHEAD


async def test_remote_equality_follows_the_session(harness: CoapDtlsHarness, device: UdpDtlsClient) -> None:
    await device.connect(harness.port, psk=PSK)
    await coap_get(device, "hello", mid=1)
    await coap_get(device, "hello", mid=2)
    first, again = harness.remotes()
    assert first == again and hash(first) == hash(again) and first is again
    await device.connect(harness.port, psk=PSK)  # same address, new session
    await coap_get(device, "hello", mid=3)
    new = harness.remotes()[2]
    assert new != first and new.blockwise_key != first.blockwise_key
    assert new.hostinfo == first.hostinfo
    assert not await harness.transport.recognize_remote(first)
    assert await harness.transport.recognize_remote(new)


async def test_recognize_and_determine_remote(harness: CoapDtlsHarness, device: UdpDtlsClient) -> None:
    await device.connect(harness.port, psk=PSK)
    await coap_get(device, "hello")
    remote = harness.remotes()[0]
    transport = harness.transport
    assert await transport.recognize_remote(remote)
    assert not await transport.recognize_remote(object())
    message = aiocoap.Message(code=aiocoap.GET, uri=f"coaps://127.0.0.1:{device.local_port}/3/0")
    assert await transport.determine_remote(message) is None  # a server opens no sessions
    async with coap_dtls_server(InMemoryCredentials(psk=dict([PSK]))) as other:
        assert not await other.transport.recognize_remote(remote)


async def test_role_reversal_round_trip(harness: CoapDtlsHarness, device: UdpDtlsClient) -> None:
    await device.connect(harness.port, psk=PSK)
    await coap_get(device, "hello")
    remote = harness.remotes()[0]

    request = aiocoap.Message(code=aiocoap.GET, uri_path=["3", "0", "0"])
    request.remote = remote
    pending = asyncio.ensure_future(harness.ctx.request(request).response)
    incoming = aiocoap.Message.decode(await asyncio.wait_for(device.received.get(), 10))
    assert incoming.code == aiocoap.GET and incoming.opt.uri_path == ("3", "0", "0")
    assert device.session is not None
    answer = aiocoap.Message(code=aiocoap.CONTENT, payload=b"Open Mobile")
    answer.mtype, answer.mid, answer.token = aiocoap.ACK, incoming.mid, incoming.token
    device.session.send(answer.encode())
    response = await asyncio.wait_for(pending, 10)
    assert response.payload == b"Open Mobile"
    assert response.remote == remote


async def test_pending_request_fails_when_the_session_ends(harness: CoapDtlsHarness, device: UdpDtlsClient) -> None:
    await device.connect(harness.port, psk=PSK)
    await coap_get(device, "hello")
    request = aiocoap.Message(code=aiocoap.GET, uri_path=["3", "0"])
    request.remote = harness.remotes()[0]
    pending = asyncio.ensure_future(harness.ctx.request(request).response)
    await asyncio.wait_for(device.received.get(), 10)  # the device got it, and goes away instead
    assert device.session is not None
    device.session.close()
    with pytest.raises(aiocoap.error.NetworkError) as failure:
        await asyncio.wait_for(pending, 10)
    assert failure.value.args == ("DTLS session ended: close_notify",)


async def test_request_to_a_dead_remote_fails_at_once(harness: CoapDtlsHarness, device: UdpDtlsClient) -> None:
    await device.connect(harness.port, psk=PSK)
    await coap_get(device, "hello")
    remote = harness.remotes()[0]
    remote.session.close()
    request = aiocoap.Message(code=aiocoap.GET, uri_path=["3", "0"])
    request.remote = remote
    with pytest.raises(aiocoap.error.Error):
        await asyncio.wait_for(harness.ctx.request(request).response, 10)


async def test_shutdown_closes_sessions(device: UdpDtlsClient) -> None:
    async with coap_dtls_server(InMemoryCredentials(psk=dict([PSK]))) as h:
        await device.connect(h.port, psk=PSK)
        await coap_get(device, "hello")
    await asyncio.wait_for(device.closed.wait(), 10)  # close_notify from the server's shutdown
    assert device.session is not None and device.session.closed_reason == "close_notify"


async def test_small_mtu_shrinks_blocks(device: UdpDtlsClient) -> None:
    async with coap_dtls_server(InMemoryCredentials(psk=dict([PSK])), mtu=400) as h:
        await device.connect(h.port, psk=PSK)
        response = await coap_get(device, "big")
        assert response.opt.block2 is not None
        assert response.opt.block2.size_exponent == 3  # 128-byte blocks fit 371 bytes of record
        assert len(response.payload) == 128
        assert h.server.session_for(("127.0.0.1", device.local_port)) is not None


@pytest.mark.parametrize(
    ("data_mtu", "exp"), [(1251, 6), (1152, 6), (1151, 5), (640, 5), (639, 4), (371, 3), (144, 0), (60, 0)]
)
def test_block_size_exp_for(data_mtu: int, exp: int) -> None:
    assert block_size_exp_for(data_mtu) == exp


class _Stalling(asyncio.DatagramProtocol):
    """A real client socket that completes the cookie exchange and then goes silent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.second_hello = asyncio.Event()
        self.engine = DtlsClient(send=self._send)
        self.transport: asyncio.DatagramTransport

    def _send(self, addr: Any, data: bytes) -> None:
        self.sent += 1
        if self.sent <= 2:  # ClientHello, then ClientHello with the cookie
            self.transport.sendto(data, addr)
        if self.sent == 2:
            self.second_hello.set()

    async def bind(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.engine.datagram_received(data, addr)


async def test_handshake_flood_on_real_sockets(device: UdpDtlsClient) -> None:
    """Spoofable hellos cost one stateless reply each; half-open handshakes are capped; the
    established session keeps working throughout."""
    loop = asyncio.get_running_loop()
    async with coap_dtls_server(InMemoryCredentials(psk=dict([PSK])), max_handshakes=16) as h:
        await device.connect(h.port, psk=PSK)
        assert (await coap_get(device, "hello", mid=1)).code == aiocoap.CONTENT

        # 1: hellos without cookies from 40 ports, 10 each: a HelloVerifyRequest each, no state
        hello_source = DtlsClient(send=lambda a, d: hellos.append(d))
        hellos: list[bytes] = []
        hello_source.connect(("127.0.0.1", h.port), psk=PSK)
        hello_source.close()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Spoofer(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                replies.put_nowait(data)

        spoofers = [(await loop.create_datagram_endpoint(Spoofer, local_addr=("127.0.0.1", 0)))[0] for _ in range(40)]
        for t in spoofers:
            for _ in range(10):
                t.sendto(hellos[0], ("127.0.0.1", h.port))
        for _ in range(400):
            reply = await asyncio.wait_for(replies.get(), 10)
            assert reply[13] == 3  # HelloVerifyRequest
        assert h.server.stats["handshakes_started"] == 1 and len(h.server.sessions) == 1

        # 2: 40 clients that pass the cookie check and stall: at most 16 half-open handshakes
        stalling = []
        for _ in range(40):
            s = _Stalling(h.port)
            await s.bind()
            s.engine.connect(("127.0.0.1", h.port), psk=PSK)
            stalling.append(s)
        for s in stalling:
            await asyncio.wait_for(s.second_hello.wait(), 10)
        # the device's request is queued behind every second hello: its answer means all were seen
        assert (await coap_get(device, "hello", mid=2)).code == aiocoap.CONTENT
        assert h.server.handshaking == 16
        assert h.server.stats["handshakes_refused_limit"] == 24
        assert h.server.stats["internal_errors"] == 0
        for t in spoofers:
            t.close()
        for s in stalling:
            s.engine.close()
            s.transport.close()
