"""CoAP over slipmux between two aiocoap contexts on the two ends of a pseudo-terminal.

The gateway end opens the pty's slave path with a SerialLink (as it opens a USB adapter); the
device end is an FdLink on the master. Both run the same transport: requests both ways (role
reversal included), observation, line noise and broken frames, block-wise transfers sized for
a 9600-baud link, per-port ordering, and the port going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tty
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import aiocoap.resource as resource
import pytest
from aiocoap.numbers.constants import TransportTuning

from gateway.serial.port import FdLink, LinkSettings, LinkState, SerialLink
from gateway.transport.slipmux import (
    BASE_ACK_TIMEOUT,
    SCHEME,
    SerialTuning,
    SlipmuxRemote,
    SlipmuxTransport,
    ack_timeout_for,
    attach_slipmux,
    block_size_exp_for,
)
from gateway.transport.slipmux_frames import encode_configuration, encode_diagnostic, encode_ip

BIG = bytes(range(256)) * 12  # 3 KiB


class Text(resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """GET: a fixed text; POST: the payload reversed; records the requests."""

    def __init__(self, text: bytes) -> None:
        super().__init__()
        self.text = text
        self.requests: list[aiocoap.Message] = []

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        self.requests.append(request)
        return aiocoap.Message(payload=self.text)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.requests.append(request)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload[::-1])


class Stalled(resource.Resource):  # type: ignore[misc]
    """Never answers (until the test ends)."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = asyncio.Event()
        self.release: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        self.reached.set()
        await self.release
        return aiocoap.Message(payload=b"late")


class Counter(resource.ObservableResource):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def bump(self) -> None:
        self.value += 1
        self.updated_state()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=str(self.value).encode())


class Ends:
    """The gateway (an aiocoap server on the slave) and the device (on the master) of one pty."""

    def __init__(self, baudrate: int) -> None:
        self.baudrate = baudrate
        master, slave = os.openpty()
        tty.setraw(master)
        self.path = os.ttyname(slave)
        os.close(slave)
        self.master = master
        self.gw_site = resource.Site()
        self.registered: list[aiocoap.Message] = []
        self.gw_hello = Text(b"hello from the gateway")
        self.gw_site.add_resource(["hello"], self.gw_hello)
        self.gw_site.add_resource(["big"], Text(BIG))
        self.gw_site.add_resource(["rd"], Text(b""))
        self.dev_site = resource.Site()
        self.dev_device = Text(b"Open Mobile Alliance")
        self.dev_site.add_resource(["3", "0"], self.dev_device)
        self.dev_site.add_resource(["big"], Text(BIG))
        self.counter = Counter()
        self.dev_site.add_resource(["count"], self.counter)
        self.stalled = Stalled()
        self.dev_site.add_resource(["stall"], self.stalled)
        self.gw: aiocoap.Context
        self.dev: aiocoap.Context
        self.gw_transport: SlipmuxTransport
        self.dev_transport: SlipmuxTransport
        self.link: SerialLink
        self.dev_link: FdLink

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.gw = aiocoap.Context(loop=loop, serversite=self.gw_site, loggername="test.slipmux.gw")
        self.dev = aiocoap.Context(loop=loop, serversite=self.dev_site, loggername="test.slipmux.dev")
        self.link = SerialLink("ttyUSB0", LinkSettings(self.path, baudrate=self.baudrate), reopen_min_s=0.01)
        self.gw_transport = await attach_slipmux(self.gw, self.link)
        self.dev_link = FdLink("gw", self.master, bytes_per_second=self.baudrate / 10)
        self.dev_transport = await attach_slipmux(self.dev, self.dev_link)
        assert self.link.state is LinkState.OPEN

    async def stop(self) -> None:
        if not self.stalled.release.done():
            self.stalled.release.set_result(None)
        await self.dev.shutdown()
        await self.gw.shutdown()

    async def device_request(self, message: aiocoap.Message, timeout: float = 10.0) -> aiocoap.Message:
        return await asyncio.wait_for(self.dev.request(message).response, timeout)

    async def gateway_request(self, message: aiocoap.Message, timeout: float = 10.0) -> aiocoap.Message:
        return await asyncio.wait_for(self.gw.request(message).response, timeout)

    def device_sends_raw(self, data: bytes) -> None:
        self.dev_link.write(data)


@contextlib.asynccontextmanager
async def ends(baudrate: int = 115200) -> AsyncIterator[Ends]:
    e = Ends(baudrate)
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


@pytest.fixture
async def pair() -> AsyncIterator[Ends]:
    async with ends() as e:
        yield e


# --- sizing ----------------------------------------------------------------------------------------


def test_block_sizes_and_timeouts_follow_the_line_speed() -> None:
    assert [block_size_exp_for(b / 10) for b in (1200, 4800, 9600, 19200, 38400, 115200)] == [0, 2, 4, 5, 6, 6]
    assert math.isclose(ack_timeout_for(960, 1024), BASE_ACK_TIMEOUT + 1024 / 960)
    tuning = SerialTuning(3.0, reliability=True)
    assert tuning.ACK_TIMEOUT == 3.0 and tuning.reliability is True
    # what follows from ACK_TIMEOUT scales with it
    assert math.isclose(tuning.MAX_TRANSMIT_SPAN, TransportTuning().MAX_TRANSMIT_SPAN * 1.5)


async def test_remote_identity_and_sizes() -> None:
    async with ends(9600) as e:
        remote = e.gw_transport.remote
        assert remote.scheme == SCHEME == "coap+uart"
        assert (remote.hostinfo, remote.hostinfo_local, remote.uri_base) == ("ttyUSB0", "ttyUSB0", "coap+uart://ttyUSB0")
        assert remote.maximum_block_size_exp == 4 and remote.maximum_payload_size == 256
        assert math.isclose(remote.transport_tuning.ACK_TIMEOUT, 2 + 2 * (256 + 64 + 3) / 960)
        assert remote == SlipmuxRemote(e.gw_transport) and hash(remote) == hash(SlipmuxRemote(e.gw_transport))
        assert remote != e.dev_transport.remote and not remote.is_multicast and remote.authenticated_claims == ()
        assert await e.gw_transport.recognize_remote(remote)
        assert not await e.gw_transport.recognize_remote(e.dev_transport.remote)
        elsewhere = aiocoap.Message(code=aiocoap.GET, uri="coap+uart://ttyUSB1/x")
        assert await e.gw_transport.determine_remote(elsewhere) is None
        assert await e.gw_transport.determine_remote(aiocoap.Message(code=aiocoap.GET, uri="coap://a/x")) is None


# --- requests both ways ------------------------------------------------------------------------------


async def test_device_get_is_answered(pair: Ends) -> None:
    response = await pair.device_request(aiocoap.Message(code=aiocoap.GET, uri="coap+uart://gw/hello"))
    assert response.code == aiocoap.CONTENT and response.payload == b"hello from the gateway"
    assert response.remote == pair.dev_transport.remote and response.remote.uri_base == "coap+uart://gw"
    (request,) = pair.gw_hello.requests
    assert request.remote is pair.gw_transport.remote
    assert request.opt.uri_host is None  # the port name is not sent in every request
    assert pair.gw_transport.messages_in == 1 and pair.gw_transport.messages_out == 1


async def test_role_reversal_through_the_stored_remote(pair: Ends) -> None:
    """The LwM2M pattern: the device registers; the server later reads it through that remote."""
    post = aiocoap.Message(code=aiocoap.POST, uri="coap+uart://gw/rd?ep=meter-1&b=N", payload=b"</3/0>")
    assert (await pair.device_request(post)).code == aiocoap.CHANGED
    stored = pair.gw_site._resources[("rd",)].requests[0].remote
    assert isinstance(stored, SlipmuxRemote)

    read = aiocoap.Message(code=aiocoap.GET, uri_path=["3", "0"])
    read.remote = stored
    response = await pair.gateway_request(read)
    assert response.code == aiocoap.CONTENT and response.payload == b"Open Mobile Alliance"
    # sent with aiocoap's default tuning, re-tuned for the link on the way out
    assert isinstance(read.transport_tuning, SerialTuning) and pair.gw_transport.retuned == 1

    by_uri = aiocoap.Message(code=aiocoap.POST, uri="coap+uart://TTYUSB0/3/0", payload=b"abc")
    response = await pair.gateway_request(by_uri)
    assert response.payload == b"cba" and pair.dev_device.requests[-1].opt.uri_host is None
    assert isinstance(by_uri.transport_tuning, SerialTuning)  # set when its remote was determined


async def test_gateway_observes_the_device(pair: Ends) -> None:
    request = aiocoap.Message(code=aiocoap.GET, uri_path=["count"], observe=0)
    request.remote = pair.gw_transport.remote
    pending = pair.gw.request(request)
    first = await asyncio.wait_for(pending.response, 10)
    assert first.payload == b"0" and first.opt.observe is not None
    notifications = pending.observation.__aiter__()
    for expected in (b"1", b"2", b"3"):
        pair.counter.bump()
        notification = await asyncio.wait_for(notifications.__anext__(), 10)
        assert notification.payload == expected and notification.remote is pair.gw_transport.remote
    pending.observation.cancel()


async def test_many_requests_both_ways_keep_frames_whole(pair: Ends) -> None:
    def device_get(i: int) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.POST, uri="coap+uart://gw/hello", payload=b"%04d" % i * 200)

    def gateway_get(i: int) -> aiocoap.Message:
        message = aiocoap.Message(code=aiocoap.POST, uri_path=["3", "0"], payload=b"%04d" % i * 200)
        message.remote = pair.gw_transport.remote
        return message

    results = await asyncio.gather(
        *(pair.device_request(device_get(i), 30) for i in range(15)),
        *(pair.gateway_request(gateway_get(i), 30) for i in range(15)),
    )
    assert [r.payload for r in results] == [(b"%04d" % (i % 15) * 200)[::-1] for i in range(30)]
    for transport in (pair.gw_transport, pair.dev_transport):
        counters = transport.decoder.counters()
        assert counters["frames_ok"] >= 30
        assert all(value == 0 for name, value in counters.items() if name != "frames_ok"), counters


# --- a bad line ----------------------------------------------------------------------------------------


async def test_noise_and_broken_frames_are_counted_and_the_link_keeps_working(
    pair: Ends, caplog: pytest.LogCaptureFixture
) -> None:
    good = encode_configuration(bytes.fromhex("40010000"))  # an empty CON: a ping
    bad_fcs = bytearray(encode_configuration(bytes.fromhex("4101123442b1330130")))
    bad_fcs[-2] ^= 0x01
    with caplog.at_level(logging.INFO, logger="gateway.transport.slipmux"):
        pair.device_sends_raw(b"\x00garbage\xff\xfe")  # noise between frames
        pair.device_sends_raw(bytes(bad_fcs))
        pair.device_sends_raw(b"\xc0\xa9\x40\x01\x00\xdb\xc0")  # aborted (ESC END)
        pair.device_sends_raw(b"\xc0\xa9\x40\x01\xdb\x01\x02\x03\x04\xc0")  # bad escape
        pair.device_sends_raw(b"\xc0\x21\x22\xc0")  # unknown frame type
        pair.device_sends_raw(b"\xc0\xa9\x40\xc0")  # too short
        pair.device_sends_raw(encode_configuration(b"\x80\x01\x00\x00"))  # CoAP version 2: unparsable
        pair.device_sends_raw(encode_diagnostic("Hello World!"))
        pair.device_sends_raw(encode_ip(bytes.fromhex("45000014") + bytes(16)))
        pair.device_sends_raw(good[:5])  # a frame cut short (too short), then a fresh one
        pair.device_sends_raw(good)
        response = await pair.device_request(aiocoap.Message(code=aiocoap.GET, uri="coap+uart://gw/hello"))
    assert response.payload == b"hello from the gateway"
    counters = pair.gw_transport.decoder.counters()
    assert counters["bad_fcs"] == 1 and counters["aborted"] == 1 and counters["bad_escape"] == 1
    assert counters["unknown_type"] == 1 and counters["too_short"] == 2 and counters["ip_frames"] == 1
    stats = pair.gw_transport.stats()
    assert stats["unparsable"] == 1 and stats["diagnostics"] == 1 and stats["lastDiagnostic"] == "Hello World!"
    assert stats["framer"] == counters and stats["state"] == "open" and stats["port"] == "ttyUSB0"
    assert "serial ttyUSB0: device says: Hello World!" in caplog.text
    assert "unparsable" in caplog.text


async def test_diagnostic_floods_are_rate_limited(pair: Ends, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.transport.slipmux"):
        for i in range(200):
            pair.device_sends_raw(encode_diagnostic(f"debug line {i}"))
        await pair.device_request(aiocoap.Message(code=aiocoap.GET, uri="coap+uart://gw/hello"))
    logged = [m for m in caplog.messages if "device says" in m]
    assert pair.gw_transport.diagnostics == 200 and 20 <= len(logged) < 40


# --- slow links ------------------------------------------------------------------------------------------


async def test_blockwise_3kib_both_ways_at_9600_baud() -> None:
    async with ends(9600) as e:
        response = await e.device_request(aiocoap.Message(code=aiocoap.GET, uri="coap+uart://gw/big"), 30)
        assert response.payload == BIG
        # 256-byte blocks (12 of them), not aiocoap's default 1024
        assert e.gw_transport.messages_out == 12 and e.gw_transport.remote.maximum_block_size_exp == 4

        out_before = e.gw_transport.messages_out
        read = aiocoap.Message(code=aiocoap.GET, uri_path=["big"])
        read.remote = e.gw_transport.remote
        assert (await e.gateway_request(read, 30)).payload == BIG
        assert e.gw_transport.messages_out - out_before == 12  # one request per block

        post = aiocoap.Message(code=aiocoap.POST, uri_path=["3", "0"], payload=BIG)
        post.remote = e.gw_transport.remote
        reply = await e.gateway_request(post, 60)
        assert reply.payload == BIG[::-1]  # Block1 up, Block2 back
        assert e.gw_transport.decoder.bad_fcs == e.dev_transport.decoder.bad_fcs == 0


# --- the port going away -----------------------------------------------------------------------------------


async def test_unplug_fails_pending_requests_and_later_ones_at_once(pair: Ends) -> None:
    stall = aiocoap.Message(code=aiocoap.GET, uri_path=["stall"])
    stall.remote = pair.gw_transport.remote
    pending = pair.gw.request(stall)
    await asyncio.wait_for(pair.stalled.reached.wait(), 10)
    pair.dev_link.close()  # the device end goes away: EOF on the gateway's port
    with pytest.raises(aiocoap.error.NetworkError) as info:
        await asyncio.wait_for(pending.response, 10)
    assert info.value.args[0].startswith("serial port ttyUSB0 closed: end of file")
    assert pair.link.state is LinkState.WAITING

    again = aiocoap.Message(code=aiocoap.GET, uri_path=["3", "0"])
    again.remote = pair.gw_transport.remote
    with pytest.raises(aiocoap.error.NetworkError) as info:
        await pair.gateway_request(again, 5)
    assert info.value.args[0] == "serial port ttyUSB0 is waiting"
    assert pair.gw_transport.send_failures >= 1


async def test_shutdown_closes_the_link_and_forgets_the_message_manager() -> None:
    e = Ends(115200)
    await e.start()
    transport: Any = e.gw_transport
    await e.stop()
    assert e.link.state is LinkState.CLOSED and transport._mman is None
    assert not await transport.recognize_remote(transport.remote)
