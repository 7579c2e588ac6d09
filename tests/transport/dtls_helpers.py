"""Helpers for the DTLS tests: a scratch PKI made with the openssl CLI, and a CoAP-over-DTLS harness.

Nothing here is committed: every run makes fresh keys (secp256r1 everywhere, as LwM2M uses).
An expired certificate is issued with ``openssl ca -startdate/-enddate`` (no clock faking).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap import resource

from gateway.transport.dtls import Addr, CredentialsProvider, DtlsClient, DtlsServer, DtlsSession
from gateway.transport.dtls_coap import DtlsRemote, DtlsTransport, attach_dtls_transport

_CA_CONFIG = """\
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = policy_any
copy_extensions = copy
[ policy_any ]
commonName = supplied
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class RpkFiles:
    pem: Path  # PUBLIC KEY + EC PRIVATE KEY, as coap-client-gnutls -M wants it
    spki_der: bytes

    @property
    def pem_bytes(self) -> bytes:
        return self.pem.read_bytes()


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path

    @property
    def cert_bytes(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_bytes(self) -> bytes:
        return self.key.read_bytes()


class Pki:
    """A scratch PKI under ``root``: CAs, certificates signed by them, raw key pairs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def key(self, name: str) -> Path:
        path = self.root / f"{name}.key"
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path), cwd=self.root)
        return path

    def ca(self, name: str) -> CertFiles:
        key = self.key(name)
        cert = self.root / f"{name}.pem"
        _openssl(
            "req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={name}", "-days", "3650",
            "-out", str(cert), cwd=self.root,
        )  # fmt: skip
        ca_dir = self.root / f"{name}.db"
        ca_dir.mkdir()
        (ca_dir / "index.txt").write_text("")
        (ca_dir / "serial").write_text("1000\n")
        (ca_dir / "ca.cnf").write_text(_CA_CONFIG.format(dir=ca_dir))
        return CertFiles(cert, key)

    def issue(
        self,
        ca: CertFiles,
        name: str,
        *,
        cn: str,
        sans: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> CertFiles:
        """A certificate for ``cn`` signed by ``ca``; ``start``/``end`` as ``YYYYMMDDHHMMSSZ``."""
        key = self.key(name)
        csr = self.root / f"{name}.csr"
        req = ["req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr)]
        if sans:
            req += ["-addext", f"subjectAltName={sans}"]
        _openssl(*req, cwd=self.root)
        cert = self.root / f"{name}.pem"
        ca_dir = ca.cert.with_suffix(".db")
        _openssl(
            "ca", "-config", str(ca_dir / "ca.cnf"), "-batch", "-notext",
            "-cert", str(ca.cert), "-keyfile", str(ca.key),
            "-startdate", start or "20240101000000Z", "-enddate", end or "20491231000000Z",
            "-in", str(csr), "-out", str(cert), cwd=self.root,
        )  # fmt: skip
        return CertFiles(cert, key)

    def rpk(self, name: str) -> RpkFiles:
        key = self.key(name)
        pub = self.root / f"{name}.pub.pem"
        der = self.root / f"{name}.spki.der"
        _openssl("ec", "-in", str(key), "-pubout", "-out", str(pub), cwd=self.root)
        _openssl("ec", "-in", str(key), "-pubout", "-outform", "DER", "-out", str(der), cwd=self.root)
        pem = self.root / f"{name}.rpk.pem"
        pem.write_bytes(pub.read_bytes() + key.read_bytes())
        return RpkFiles(pem, der.read_bytes())


@dataclass(frozen=True)
class PkiSet:
    """Everything the DTLS tests use, made once per test session."""

    root: Path
    ca: CertFiles
    other_ca: CertFiles
    server: CertFiles  # CN=gateway, signed by ca
    client: CertFiles  # CN=LwX50900000000, SANs, signed by ca
    client_other_ca: CertFiles  # signed by other_ca
    client_expired: CertFiles  # signed by ca, expired in 2021
    server_rpk: RpkFiles
    client_rpk: RpkFiles
    stranger_rpk: RpkFiles  # not configured on the server

    @property
    def server_chain(self) -> bytes:
        return self.server.cert_bytes + self.ca.cert_bytes


def make_test_pki(root: Path) -> PkiSet:
    pki = Pki(root)
    ca = pki.ca("ca")
    other = pki.ca("other-ca")
    return PkiSet(
        root=root,
        ca=ca,
        other_ca=other,
        server=pki.issue(ca, "server", cn="gateway", sans="DNS:gateway.local"),
        client=pki.issue(
            ca, "client", cn="LwX50900000000", sans="DNS:dev1.example,URI:urn:imei:4901542032,IP:10.1.2.3"
        ),
        client_other_ca=pki.issue(other, "client-other", cn="LwX50900000001"),
        client_expired=pki.issue(
            ca, "client-expired", cn="LwX50900000002", start="20200101000000Z", end="20210101000000Z"
        ),
        server_rpk=pki.rpk("server-rpk"),
        client_rpk=pki.rpk("client-rpk"),
        stranger_rpk=pki.rpk("stranger-rpk"),
    )


# --- a CoAP-over-DTLS server for tests ------------------------------------------------------------------

BIG_PAYLOAD = bytes(range(256)) * 12  # 3072 bytes: needs Block2 over DTLS


class _Hello(resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self, harness: CoapDtlsHarness) -> None:
        super().__init__()
        self.harness = harness

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        self.harness.requests.append(request)
        self.harness.request_seen.set()
        claims = list(request.remote.authenticated_claims)
        return aiocoap.Message(payload=f"hello {claims[0] if claims else 'nobody'}".encode())

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.harness.requests.append(request)
        self.harness.request_seen.set()
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload[::-1])


class _Big(resource.Resource):  # type: ignore[misc]
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=BIG_PAYLOAD)


class _Observable(resource.ObservableResource):  # type: ignore[misc]
    def __init__(self, harness: CoapDtlsHarness) -> None:
        super().__init__()
        self.harness = harness

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        self.harness.requests.append(request)
        self.harness.request_seen.set()
        return aiocoap.Message(payload=b"observed")


class CoapDtlsHarness:
    """An aiocoap context serving /hello, /big and /obs over the DTLS transport on 127.0.0.1:0."""

    def __init__(self) -> None:
        self.requests: list[aiocoap.Message] = []
        self.request_seen = asyncio.Event()
        self.established: list[DtlsSession] = []
        self.closed: list[tuple[DtlsSession, str]] = []
        self.failures: list[tuple[Addr, str]] = []
        self.failure_seen = asyncio.Event()
        self.ctx: aiocoap.Context
        self.transport: DtlsTransport
        self.server: DtlsServer

    @property
    def port(self) -> int:
        return self.transport.port

    def remotes(self) -> list[DtlsRemote]:
        return [r.remote for r in self.requests]

    async def start(self, credentials: CredentialsProvider, bind: str = "127.0.0.1", **kw: Any) -> None:
        site = resource.Site()
        site.add_resource(["hello"], _Hello(self))
        site.add_resource(["big"], _Big())
        site.add_resource(["obs"], _Observable(self))
        loop = asyncio.get_running_loop()
        self.ctx = aiocoap.Context(loop=loop, serversite=site, loggername="test.dtls.coap")

        def failed(addr: Addr, reason: str) -> None:
            self.failures.append((addr, reason))
            self.failure_seen.set()

        self.server = DtlsServer(
            credentials,
            on_established=self.established.append,
            on_closed=lambda s, r: self.closed.append((s, r)),
            on_handshake_failed=failed,
            **kw,
        )
        self.transport = await attach_dtls_transport(self.ctx, self.server, bind=(bind, 0))

    async def stop(self) -> None:
        await self.ctx.shutdown()


@contextlib.asynccontextmanager
async def coap_dtls_server(
    credentials: CredentialsProvider, bind: str = "127.0.0.1", **kw: Any
) -> AsyncIterator[CoapDtlsHarness]:
    h = CoapDtlsHarness()
    await h.start(credentials, bind=bind, **kw)
    try:
        yield h
    finally:
        await h.stop()


@dataclass
class ClientRun:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).decode(errors="replace")


async def run_coap_client(binary: str, *args: str, timeout: float = 30.0) -> ClientRun:
    """Run a libcoap client to completion (it gives up by itself after ``-B``)."""
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return ClientRun(proc.returncode if proc.returncode is not None else -1, out, err)


# --- an in-memory network between a DtlsServer and DtlsClients (no sockets, no clock) --------------------

SERVER_ADDR: Addr = ("192.0.2.1", 5684)


class Wire:
    """Carries datagrams between one server engine and client engines, one at a time, in order.

    ``tap`` sees every datagram (direction ``"up"`` client->server or ``"down"``) and may return
    False to drop it. Every datagram is also kept in ``log`` for replay tests.
    """

    def __init__(self, server: DtlsServer) -> None:
        self.server = server
        self.clients: dict[Addr, DtlsClient] = {}
        self.queue: deque[tuple[str, Addr, bytes]] = deque()
        self.log: list[tuple[str, Addr, bytes]] = []
        self.tap: Callable[[str, Addr, bytes], bool] | None = None
        server.send = lambda addr, data: self._put("down", addr, data)

    def _put(self, direction: str, addr: Addr, data: bytes) -> None:
        self.log.append((direction, addr, data))
        if self.tap is None or self.tap(direction, addr, data):
            self.queue.append((direction, addr, data))

    def client(self, addr: Addr, **kw: Any) -> DtlsClient:
        c = DtlsClient(send=lambda _to, data: self._put("up", addr, data), **kw)
        self.clients[addr] = c
        return c

    def pump(self, limit: int = 100_000) -> int:
        n = 0
        while self.queue and n < limit:
            direction, addr, data = self.queue.popleft()
            if direction == "up":
                self.server.datagram_received(data, addr)
            elif addr in self.clients:
                self.clients[addr].datagram_received(data, SERVER_ADDR)
            n += 1
        return n


# --- the project's own DTLS client on a real UDP socket ------------------------------------------------


class UdpDtlsClient(asyncio.DatagramProtocol):
    """A :class:`DtlsClient` on its own UDP socket (127.0.0.1, ephemeral port), one session."""

    def __init__(self) -> None:
        self.engine: DtlsClient
        self.transport: asyncio.DatagramTransport
        self.session: DtlsSession | None = None
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.established = asyncio.Event()
        self.closed = asyncio.Event()
        self.failed: list[str] = []
        self.host = "127.0.0.1"

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> UdpDtlsClient:
        self = cls()
        self.host = host
        loop = asyncio.get_running_loop()
        self.engine = DtlsClient(
            loop=loop,
            send=lambda addr, data: self.transport.sendto(data, addr),
            on_established=lambda s: self.established.set(),
            on_data=lambda s, data: self.received.put_nowait(data),
            on_closed=lambda s, r: self.closed.set(),
            on_handshake_failed=self._failed,
        )
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        return self

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.engine.datagram_received(data, addr)

    def _failed(self, addr: Addr, reason: str) -> None:
        self.failed.append(reason)
        self.closed.set()

    @property
    def local_port(self) -> int:
        return int(self.transport.get_extra_info("sockname")[1])

    async def connect(self, port: int, timeout: float = 10.0, **credentials: Any) -> DtlsSession:
        self.established.clear()
        self.session = self.engine.connect((self.host, port), **credentials)
        self.closed.clear()  # (a previous session may have just been replaced)
        done = asyncio.ensure_future(self.established.wait())
        failed = asyncio.ensure_future(self.closed.wait())
        await asyncio.wait([done, failed], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        failed.cancel()
        if not self.session.established:
            raise ConnectionError(f"handshake failed: {self.failed}")
        return self.session

    def close(self) -> None:
        self.engine.close()
        self.transport.close()
