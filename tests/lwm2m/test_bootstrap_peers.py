"""Bootstrap against clients the project did not write.

* libcoap's ``coap-client-notls`` and ``coap-client-gnutls`` (PSK) send the Bootstrap-Request: 2.04 for
  a configured endpoint, 4.00 for an unknown one, 4.00 for a PSK identity bound to another endpoint.
  coap-client exits after the answer: the server's Delete then goes unanswered and that bootstrap
  fails (logged), which is also the "client never answers" path.
* a tiny LwM2M client on aiocoap (its own CoAP stack) does the whole sequence, Bootstrap-Request to
  Finish; the bytes the server wrote are decoded here with a TLV reader written from the spec (not the
  project's codec) and checked: Security resource ids 0-5, 10, 11 with the mode values (3 NoSec, 0
  PSK), Server resource ids 0, 1, 2, 6, 7, and the Server TLV against LWM2M_FACTS vector 3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap import Message, interfaces
from aiocoap.numbers.codes import Code

from gateway.lwm2m.bootstrap import parse_config
from gateway.store.clients import Source
from tests.lwm2m.bootstrap_site import Site, open_site

KEY = "00112233445566778899aabbccddeeff"
NOTLS, GNUTLS = "coap-client-notls", "coap-client-gnutls"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = await open_site(tmp_path, request_timeout=3.0, retries=0)
    yield s
    await s.close()


def tlv(data: bytes) -> dict[int, bytes]:
    """Resource id -> value bytes of an object instance's TLV (OMA LwM2M Core 7.4.3), or of the one
    instance inside an object-instance TLV."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        t = data[pos]
        pos += 1
        id_len = 2 if t & 0x20 else 1
        ident = int.from_bytes(data[pos : pos + id_len], "big")
        pos += id_len
        len_len = (t >> 3) & 3
        length = int.from_bytes(data[pos : pos + len_len], "big") if len_len else t & 7
        pos += len_len
        value = data[pos : pos + length]
        pos += length
        if t >> 6 == 0:  # an object instance: its resources
            return tlv(value)
        out[ident] = value
    return out


def tlv_entries(data: bytes) -> list[bytes]:
    """The raw TLV entries (type byte to the end of the value) of an instance's resources."""
    entries, pos = [], 0
    while pos < len(data):
        start, t = pos, data[pos]
        pos += 1 + (2 if t & 0x20 else 1)
        len_len = (t >> 3) & 3
        length = int.from_bytes(data[pos : pos + len_len], "big") if len_len else t & 7
        pos += len_len + length
        entries.append(data[start:pos])
    return entries


class LwM2mDevice(interfaces.Resource):  # type: ignore[misc]
    """The device side of a bootstrap on aiocoap: records every request, answers as a client would."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[Code, tuple[str, ...], int | None, bytes]] = []
        self.finished = asyncio.get_running_loop().create_future()

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return True

    async def render(self, request: Message) -> Message:
        path = tuple(request.opt.uri_path)
        self.requests.append((request.code, path, request.opt.content_format, request.payload))
        if request.code == Code.DELETE:
            return Message(code=Code.DELETED)
        if request.code == Code.GET:
            return Message(code=Code.CONTENT, payload=b'</>;lwm2m=1.1,</0/0>', content_format=40)
        if request.code == Code.POST and path == ("bs",) and not self.finished.done():
            self.finished.set_result(None)
        return Message(code=Code.CHANGED)

    async def render_to_pipe(self, pipe: Any) -> None:
        await self._render_to_pipe(pipe)


async def aiocoap_bootstrap(site: Site, endpoint: str, pct: int | None) -> LwM2mDevice:
    device = LwM2mDevice()
    ctx = await aiocoap.Context.create_server_context(device, bind=("127.0.0.1", 0))
    try:
        query = f"ep={endpoint}" + (f"&pct={pct}" if pct is not None else "")
        uri = f"coap://127.0.0.1:{site.ports['bootstrap']}/bs?{query}"
        response = await ctx.request(Message(code=Code.POST, uri=uri)).response
        assert response.code == Code.CHANGED
        await asyncio.wait_for(device.finished, 15)
    finally:
        await ctx.shutdown()
    return device


@pytest.mark.parametrize("pct", [None, 11542])
async def test_aiocoap_client_bootstrap_bytes(site: Site, pct: int | None) -> None:
    site.store.put(parse_config({"endpoint": "aio-1", "bootstrap": {
        "bootstrapServer": {"securityMode": "NO_SEC"},
        "lwm2mServer": {"securityMode": "PSK", "clientPublicKeyOrId": "aio-id", "clientSecretKey": KEY}},
        "servers": [{"shortServerId": 1, "lifetime": 86400, "binding": "U"}]}, source=Source.CLI))
    device = await aiocoap_bootstrap(site, "aio-1", pct)
    ops = [(code, path) for code, path, _, _ in device.requests]
    expected_start = [(Code.DELETE, ())] + ([(Code.GET, ("0",))] if pct is not None else [])
    assert ops[: len(expected_start)] == expected_start  # never a Delete of /0/0 alone
    writes = {path: (cf, payload) for code, path, cf, payload in device.requests if code == Code.PUT}
    assert ops[-1] == (Code.POST, ("bs",))
    assert set(writes) == {("0", "1"), ("1", "0")}  # /0/0 (the bootstrap server's) untouched
    cf, payload = writes[("0", "1")]
    assert cf == 11542
    security = tlv(payload)
    assert set(security) == {0, 1, 2, 3, 4, 5, 10, 11}
    assert security[0] == f"coaps://127.0.0.1:{site.ports['lwm2m_dtls']}".encode()
    assert security[1] == b"\x00"  # not the bootstrap server
    assert security[2] == b"\x00"  # PSK
    assert security[3] == b"aio-id" and security[5] == bytes.fromhex(KEY)
    assert security[10] == b"\x01"
    cf, payload = writes[("1", "0")]
    server = tlv(payload)
    assert set(server) == {0, 1, 2, 6, 7}
    # LWM2M_FACTS section 3, vector 3: /1 = 08000F C10001 C40100015180 C10601 C10755 (ssid 1,
    # lifetime 86400, storing true, binding "U"); the same resource entries, plus res 2 (pmin)
    vector = bytes.fromhex("08000FC10001C40100015180C10601C10755")
    entries = tlv_entries(tlv_instance_body(payload))
    assert [e for e in entries if e[1] != 2] == tlv_entries(vector[3:])


def tlv_instance_body(payload: bytes) -> bytes:
    t = payload[0]
    if t >> 6 != 0:
        return payload
    pos = 1 + (2 if t & 0x20 else 1)
    len_len = (t >> 3) & 3
    return payload[pos + len_len :]


async def test_aiocoap_client_nosec_account(site: Site) -> None:
    site.store.put(parse_config({"endpoint": "aio-2", "bootstrap": {
        "bootstrapServer": {"securityMode": "NO_SEC"}, "lwm2mServer": {"securityMode": "NO_SEC"}},
        "acl": [{"objectId": 3, "instanceId": 0, "access": {"1": 3}, "owner": 1}]}))
    device = await aiocoap_bootstrap(site, "aio-2", 11542)
    writes = {path: payload for code, path, _, payload in device.requests if code == Code.PUT}
    acl = tlv(writes[("2", "0")])  # Access Control: object 3, instance 0, ACL {ssid 1: R|W}, owner 1
    assert acl[0] == b"\x03" and acl[1] == b"\x00" and acl[3] == b"\x01"
    assert acl[2] == bytes.fromhex("410103")  # resource instance 1 (the ssid), 1 byte, value 3
    security = tlv(writes[("0", "1")])
    assert security[2] == b"\x03" and security[3] == b"" and security[5] == b""
    assert security[0] == f"coap://127.0.0.1:{site.ports['lwm2m']}".encode()


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.peer
@pytest.mark.skipif(shutil.which(NOTLS) is None or shutil.which(GNUTLS) is None, reason="libcoap3-bin not installed")
async def test_libcoap_bootstrap_requests(site: Site) -> None:
    site.store.put(parse_config({"endpoint": "lc-1", "bootstrap": {
        "bootstrapServer": {"securityMode": "NO_SEC"}, "lwm2mServer": {"securityMode": "NO_SEC"}}}))
    site.store.put(parse_config({"endpoint": "lc-2", "bootstrap": {
        "bootstrapServer": {"securityMode": "PSK", "clientPublicKeyOrId": "lc-2-id",
                            "clientSecretKey": b"libcoap-psk-key!".hex()},
        "lwm2mServer": {"securityMode": "PSK", "generate": True}}}))
    site.store.put(parse_config({"endpoint": "lc-3", "bootstrap": {
        "bootstrapServer": {"securityMode": "PSK", "clientPublicKeyOrId": "lc-3-id",
                            "clientSecretKey": b"libcoap-psk-kez!".hex()},
        "lwm2mServer": {"securityMode": "NO_SEC"}}}))
    bs, bss = site.ports["bootstrap"], site.ports["bootstrap_dtls"]
    ended: list[tuple[str, Any, str]] = []
    site.bootstrap.listeners.append(lambda ep, result, detail: ended.append((ep, result, detail)))
    _, out = await run(NOTLS, "-m", "post", "-B", "3", "-v", "6", f"coap://127.0.0.1:{bs}/bs?ep=lc-1")
    assert "2.04" in out, out
    _, out = await run(NOTLS, "-m", "post", "-B", "3", "-v", "6", f"coap://127.0.0.1:{bs}/bs?ep=nobody")
    assert "4.00" in out, out
    _, out = await run(GNUTLS, "-m", "post", "-B", "3", "-v", "6", "-u", "lc-2-id", "-k", "libcoap-psk-key!",
                        f"coaps://127.0.0.1:{bss}/bs?ep=lc-2&pct=11542")
    assert "2.04" in out, out
    # lc-3's identity while claiming to be lc-2: endpoint/identity mismatch
    _, out = await run(GNUTLS, "-m", "post", "-B", "3", "-v", "6", "-u", "lc-3-id", "-k", "libcoap-psk-kez!",
                        f"coaps://127.0.0.1:{bss}/bs?ep=lc-2")
    assert "4.00" in out, out
    assert site.bootstrap.counters["refused"] == 2


async def test_bootstrap_pack_over_aiocoap(site: Site) -> None:
    from gateway.lwm2m.codec import decode
    from gateway.lwm2m.path import LwM2mPath

    site.store.put(parse_config({"endpoint": "pack-1", "bootstrap": {
        "bootstrapServer": {"securityMode": "NO_SEC"}, "lwm2mServer": {"securityMode": "PSK", "generate": True}}}))
    ctx = await aiocoap.Context.create_client_context()
    try:
        uri = f"coap://127.0.0.1:{site.ports['bootstrap']}/bspack?ep=pack-1"
        response = await ctx.request(Message(code=Code.GET, uri=uri, accept=112)).response
        assert response.code == Code.CONTENT and response.opt.content_format == 112
        values = decode(112, response.payload, None)
        refused = await ctx.request(Message(code=Code.GET, uri=uri, accept=0)).response
        assert refused.code == Code.NOT_ACCEPTABLE
    finally:
        await ctx.shutdown()
    assert values[LwM2mPath(0, 1, 2)] == 0 and values[LwM2mPath(1, 0, 0)] == values[LwM2mPath(0, 1, 10)]
    pending = site.clients.pending("pack-1")  # no Finish after a pack: confirmed by the first Register
    assert pending is not None and pending.identity == values[LwM2mPath(0, 1, 3)]


async def test_bad_bootstrap_requests_get_clear_answers(site: Site) -> None:
    site.store.put(parse_config({"endpoint": "ok-1", "bootstrap": {
        "bootstrapServer": {"securityMode": "NO_SEC"}, "lwm2mServer": {"securityMode": "NO_SEC"}}}))
    base = f"coap://127.0.0.1:{site.ports['bootstrap']}"
    ctx = await aiocoap.Context.create_client_context()
    try:
        async def ask(code: Code, path: str) -> tuple[Code, bytes]:
            response = await ctx.request(Message(code=code, uri=base + path)).response
            return response.code, response.payload

        assert (await ask(Code.POST, "/bs"))[0] == Code.BAD_REQUEST  # no ep
        assert (await ask(Code.POST, "/bs?ep=ok-1&pct=abc"))[0] == Code.UNSUPPORTED_CONTENT_FORMAT
        assert (await ask(Code.POST, "/bs?ep=ok-1&pct=60"))[0] == Code.UNSUPPORTED_CONTENT_FORMAT
        assert (await ask(Code.POST, "/bs?ep=" + "x" * 300))[0] == Code.BAD_REQUEST
        assert (await ask(Code.GET, "/bs"))[0] == Code.METHOD_NOT_ALLOWED
        assert (await ask(Code.POST, "/rd?ep=ok-1"))[0] == Code.NOT_FOUND
        site.bootstrap.settings = dataclasses.replace(site.bootstrap.settings, max_active=0)
        code, text = await ask(Code.POST, "/bs?ep=ok-1")
        assert code == Code.SERVICE_UNAVAILABLE and b"try again" in text
    finally:
        await ctx.shutdown()
