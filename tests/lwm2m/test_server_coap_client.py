"""Raw CoAP against the server with libcoap's ``coap-client-notls`` (a CoAP implementation the project
did not write): malformed registrations, unknown paths, a block-wise Register."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest

from gateway.lwm2m.server import LwM2mServer

COAP_CLIENT = shutil.which("coap-client-notls")

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-notls not installed (apt install libcoap3-bin)"),
]


async def coap(server: LwM2mServer, *args: str, path: str) -> str:
    """Run coap-client-notls against ``path`` on the server; its stderr (where it prints error codes)."""
    host, port = server.address
    assert COAP_CLIENT is not None
    proc = await asyncio.create_subprocess_exec(
        COAP_CLIENT, "-B", "10", *args, f"coap://{host}:{port}{path}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    return err.decode().strip()


def register(payload: str = "</1/0>,</3/0>", block: int | None = None) -> list[str]:
    args = ["-m", "post", "-t", "40", "-e", payload]
    if block is not None:
        args += ["-b", str(block)]
    return args


@pytest.mark.parametrize(
    ("path", "payload", "expected"),
    [
        ("/rd?lt=60", "</3/0>", "4.00 missing endpoint name (ep=)"),
        ("/rd?ep=x&lt=soon", "</3/0>", "4.00 lt='soon' is not a lifetime in seconds"),
        ("/rd?ep=x&b=Z", "</3/0>", "4.00 b='Z' is not a binding (letters U, T, S, N, Q)"),
        ("/rd?ep=x&lwm2m=v1", "</3/0>", "4.00 lwm2m='v1' is not a version (expected e.g. 1.1)"),
        ("/rd?ep=x", "hello world", "4.00 object list: expected '<' at offset 0"),
        ("/rd?ep=x", "</3/0", "4.00 object list: unterminated '<' at offset 0"),
        ("/rd?ep=x&lwm2m=1.3", "</3/0>", "4.12 LwM2M version 1.3 is not supported"),
        ("/rd?ep=x&lwm2m=2.0", "</3/0>", "4.12 LwM2M version 2.0 is not supported"),
    ],
)
async def test_malformed_registrations(server: LwM2mServer, path: str, payload: str, expected: str) -> None:
    err = await coap(server, *register(payload=payload), path=path)
    assert err.startswith(expected)
    assert len(server.registrations) == 0


async def test_registration_in_the_wrong_content_format(server: LwM2mServer) -> None:
    err = await coap(server, "-m", "post", "-t", "50", "-e", '{"objects":[3]}', path="/rd?ep=x")
    assert err.startswith("4.15 the object list must be link format")


async def test_unknown_paths_and_methods(server: LwM2mServer) -> None:
    assert await coap(server, "-m", "get", path="/nothing/here") == "4.04 no such resource on this LwM2M server"
    assert await coap(server, "-m", "get", path="/rd") == "4.05 /rd takes POST (Register)"
    assert await coap(server, "-m", "put", path="/dp") == "4.05 /dp takes POST (Send)"
    assert await coap(server, "-m", "post", path="/rd/unknown") == "4.04 unknown registration: register again"
    assert await coap(server, "-m", "delete", path="/rd/unknown") == "4.04 unknown registration"


async def test_register_update_deregister(server: LwM2mServer, recorder: Any) -> None:
    assert await coap(server, *register(), path="/rd?ep=libcoap&lt=120&lwm2m=1.1&b=U") == ""
    reg = server.registrations.get("libcoap")
    assert reg is not None and reg.lifetime == 120 and sorted(reg.objects) == [1, 3]
    assert await coap(server, "-m", "post", path=f"{reg.location}?lt=300") == ""
    assert server.registrations.get("libcoap").lifetime == 300  # type: ignore[union-attr]
    assert await coap(server, "-m", "delete", path=reg.location) == ""
    assert len(server.registrations) == 0
    assert [r.endpoint for r in recorder.registered] == ["libcoap"]
    assert len(recorder.updated) == 1 and len(recorder.deregistered) == 1


async def test_blockwise_register(server: LwM2mServer) -> None:
    # 200 objects in 64-byte Block1 blocks: aiocoap assembles them, the LwM2M handler answers
    payload = ",".join(f"</{3300 + i}/0>" for i in range(200))
    assert await coap(server, *register(payload=payload, block=64), path="/rd?ep=big&lt=60") == ""
    reg = server.registrations.get("big")
    assert reg is not None and len(reg.objects) == 200
    assert server.stats()["slow_requests"] > 1


async def test_lenient_link_format_with_alternate_root(server: LwM2mServer) -> None:
    payload = '</lwm2m>;rt="oma.lwm2m";ct=110, </lwm2m/1/0>;ver="1.0",</lwm2m/3/0>;unknown=1,,</lwm2m/3303/0>'
    assert await coap(server, *register(payload=payload), path="/rd?ep=rooted&lwm2m=1.0") == ""
    reg = server.registrations.get("rooted")
    assert reg is not None and reg.root_path == "/lwm2m" and sorted(reg.objects) == [1, 3, 3303]
