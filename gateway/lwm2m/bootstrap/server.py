"""The LwM2M bootstrap server: its own CoAP listeners (NoSec UDP, DTLS), Bootstrap-Request, the
sequence of :mod:`gateway.lwm2m.bootstrap.session`, Bootstrap-Pack, and server-initiated bootstrap.

Usage::

    bs = BootstrapServer(store, clients, BootstrapSettings(server_host="192.0.2.7"))
    await bs.start(("::", 5783))                       # NoSec
    await bs.start_dtls(("::", 5784), DtlsServer(store))   # PSK / RPK / X.509 bootstrap
    ...
    await bs.stop()

Nothing here runs per endpoint: a bootstrap in progress is a slotted record, its requests go through
the shared token table (:class:`~gateway.lwm2m.server.exchanges.Exchanges`) and each answer drives the
sans-IO session from a future callback; no task, no timer of its own. The LwM2M server is not touched.

Zero-touch: when the configuration says ``"generate": true``, fresh credentials are made and stored
as *pending* in the clients store (fsync) before the Security instance carrying them is written;
Bootstrap-Finish answered 2.04 commits them. A crash in between leaves both the old and the pending
credentials accepted, and the device's first Register with the new ones commits them (see
:meth:`gateway.store.clients.ClientStore.put_pending`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiocoap
from aiocoap import Message
from aiocoap.numbers.codes import Code

from gateway.lwm2m.bootstrap.config import BootstrapConfig, ServerAccount, ServerSecurity
from gateway.lwm2m.bootstrap.objects import WRITE_FORMATS, ServerWrite, pack_values, server_uri, write_steps
from gateway.lwm2m.bootstrap.session import BootstrapError, BootstrapSession, Op, Result, Step, code_text
from gateway.lwm2m.bootstrap.store import BootstrapStore
from gateway.lwm2m.codec import CodecError, ContentFormat, encode
from gateway.lwm2m.model.registry import ModelRegistry
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.security import RefusalReason, SecurityBinding
from gateway.lwm2m.server.coap import LwM2mMessageManager, LwM2mSite, Reply, TransportFactory, attach_transport
from gateway.lwm2m.server.dedup import RecentRequests
from gateway.lwm2m.server.errors import RequestFailed, RequestTimeout
from gateway.lwm2m.server.exchanges import Exchanges
from gateway.lwm2m.server.timers import TimerQueue
from gateway.lwm2m.server.udp import UdpTransport
from gateway.lwm2m.tbcredentials import SecurityMode
from gateway.store.clients import ClientEntry, ClientStore, ClientStoreError, Source

log = logging.getLogger("gateway.lwm2m.bootstrap")

BS_SEGMENT: Final = "bs"
PACK_SEGMENT: Final = "bspack"
DEFAULT_PORT: Final = 5783
DEFAULT_DTLS_PORT: Final = 5784
_PACK_FORMATS: Final = (ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON, ContentFormat.LWM2M_CBOR)
_MODELS: Final = ModelRegistry()


@dataclass(frozen=True, slots=True)
class BootstrapSettings:
    """How the bootstrap server behaves (``[lwm2m.bootstrap]``)."""

    server_host: str = ""  # written into server URIs; "": this host's primary address
    lwm2m_port: int = 5683
    lwm2m_dtls_port: int = 5684
    request_timeout: float = 30.0  # per request, CoAP retransmissions included
    retries: int = 1
    max_active: int = 2000
    discover: bool = True
    receive_buffer: int = 4 * 1024 * 1024
    max_in_flight: int = 1000


class _Bootstrap:
    """One bootstrap in progress."""

    __slots__ = ("config", "endpoint", "fmt", "future", "generated", "mman", "peer", "remote", "servers", "session")

    def __init__(self, endpoint: str, remote: Any, mman: Any, config: BootstrapConfig, fmt: int) -> None:
        self.endpoint = endpoint
        self.remote = remote
        self.mman = mman
        self.config = config
        self.fmt = fmt
        self.peer = str(getattr(remote, "hostinfo", remote))
        self.generated = False
        self.servers: list[ServerWrite] = []
        self.session: BootstrapSession
        self.future: asyncio.Future[Message] | None = None  # the request in flight


def primary_address() -> str:
    """This host's address towards the rest of the network (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def generate_rpk() -> tuple[bytes, bytes]:
    """A fresh P-256 key pair: (SubjectPublicKeyInfo DER, PKCS#8 DER), what /0/x/3 and /0/x/5 carry.

    Made in process by GnuTLS (about 0.1-0.2 ms), so the event loop is not held up: the openssl CLI
    this used before blocked it 10-20 ms per device. The private key never touches a file. OSError
    if GnuTLS is missing or fails."""
    try:  # GnuTLS is loaded only when keys are generated, as for the DTLS transport
        from gateway.transport.dtls import generate_p256_key_pair
        from gateway.transport.gnutls import GnuTLSError
    except ImportError as exc:
        raise OSError(f"GnuTLS unavailable: {exc}") from None
    try:
        return generate_p256_key_pair()
    except GnuTLSError as exc:
        raise OSError(str(exc)) from None


def generated_identity(endpoint: str) -> bytes:
    """A PSK identity for generated credentials: the endpoint and a random tag (a new identity per
    bootstrap, so the old and the pending credentials can both be accepted)."""
    identity = f"{endpoint}#{secrets.token_hex(4)}".encode()
    if len(identity) > 128:
        identity = b"bs#" + secrets.token_hex(16).encode()
    return identity


class BootstrapServer:
    """See the module docstring."""

    def __init__(
        self,
        store: BootstrapStore,
        clients: ClientStore,
        settings: BootstrapSettings | None = None,
        *,
        binding: SecurityBinding | None = None,
    ) -> None:
        self.store = store
        self.clients = clients
        self.settings = settings or BootstrapSettings()
        self.binding = binding or SecurityBinding(store)
        self._host = self.settings.server_host or primary_address()
        self._active: dict[str, _Bootstrap] = {}
        self._recent = RecentRequests(60.0, 100_000)
        self._context: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: TimerQueue | None = None
        self._exchanges: Exchanges | None = None
        self._transports: list[tuple[LwM2mMessageManager, Any]] = []
        #: The bound ports: "coap" and "coaps".
        self.ports: dict[str, int] = {}
        #: Called with (endpoint, result, detail) after each bootstrap ends (tests, the operator view).
        self.listeners: list[Callable[[str, Result, str], None]] = []
        self.counters: dict[str, int] = {"requests": 0, "refused": 0, "succeeded": 0, "failed": 0, "packs": 0}

    # -- life cycle ---------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._context is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        self._timers = TimerQueue(loop)
        self._exchanges = Exchanges(loop, self._timers, lambda *a: None, self.settings.max_in_flight)
        self._context = aiocoap.Context(loop=loop, serversite=LwM2mSite(self), loggername="gateway.lwm2m.bscoap")

    async def add_transport(self, factory: TransportFactory) -> Any:
        self._ensure_started()
        pair = await attach_transport(self._context, self, self._recent, factory)
        self._transports.append(pair)
        return pair[1]

    async def start(self, bind: tuple[str, int] = ("::", DEFAULT_PORT)) -> int:
        """Serve bootstrap over CoAP/UDP (NoSec); returns the port."""
        self._ensure_started()
        loop, size = self.loop, self.settings.receive_buffer

        async def udp(mman: Any) -> UdpTransport:
            return await UdpTransport.create(mman, log, loop, bind=bind, receive_buffer=size)

        transport = await self.add_transport(udp)
        self.ports["coap"] = int(transport.port)
        return self.ports["coap"]

    async def start_dtls(self, bind: tuple[str, int], dtls: Any) -> int:
        """Serve bootstrap over CoAP/DTLS with ``dtls`` (a DtlsServer on this store); returns the port."""
        from gateway.transport.dtls_coap import DtlsTransport

        self._ensure_started()
        loop, size = self.loop, self.settings.receive_buffer

        async def factory(mman: Any) -> DtlsTransport:
            return await DtlsTransport.create_server_transport(
                mman, log, loop, bind=bind, server=dtls, receive_buffer=size
            )

        transport = await self.add_transport(factory)
        self.ports["coaps"] = int(transport.port)
        return self.ports["coaps"]

    async def stop(self) -> None:
        if self._context is None:
            return
        for b in list(self._active.values()):
            b.session.abort("the bootstrap server stopped")
            self._done(b)
        self.exchanges.close(RequestFailed("the bootstrap server stopped"))
        self.timers.close()
        context, self._context = self._context, None
        await context.shutdown()
        self._transports.clear()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "not started"
        return self._loop

    @property
    def timers(self) -> TimerQueue:
        assert self._timers is not None, "not started"
        return self._timers

    @property
    def exchanges(self) -> Exchanges:
        assert self._exchanges is not None, "not started"
        return self._exchanges

    @property
    def active(self) -> int:
        return len(self._active)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "active": len(self._active)}

    # -- RequestHandler -------------------------------------------------------------------------------

    def handle_request(self, mman: Any, request: Message) -> Reply:
        try:
            path = tuple(request.opt.uri_path)
            if path == (BS_SEGMENT,):
                if request.code == Code.POST:
                    return self._bootstrap_request(mman, request)
                return Reply(Code.METHOD_NOT_ALLOWED, b"/bs takes POST (Bootstrap-Request)")
            if path == (PACK_SEGMENT,):
                if request.code == Code.GET:
                    return self._pack(request)
                return Reply(Code.METHOD_NOT_ALLOWED, b"/bspack takes GET (Bootstrap-Pack-Request)")
            return Reply(Code.NOT_FOUND, b"this is an LwM2M bootstrap server: POST /bs?ep=...")
        except Exception:
            log.exception("bootstrap: handling %r failed", request)
            return Reply(Code.INTERNAL_SERVER_ERROR)

    def take_response(self, mman: Any, response: Message) -> bool:
        return self.exchanges.take_response(mman, response)

    def remote_failed(self, remote: Any, exc: Exception) -> None:
        self.exchanges.fail_remote(remote, RequestFailed(f"{getattr(remote, 'hostinfo', remote)}: {exc}"))

    # -- Bootstrap-Request ------------------------------------------------------------------------------

    def _admit(self, request: Message) -> tuple[str, BootstrapConfig, dict[str, str]] | Reply:
        query: dict[str, str] = {}
        for item in request.opt.uri_query:
            key, _, value = item.partition("=")
            query[key] = value
        endpoint = query.get("ep", "")
        peer = str(getattr(request.remote, "hostinfo", request.remote))
        if not endpoint:
            return self._refuse("", peer, Code.BAD_REQUEST, "the endpoint name (ep=) is missing")
        claims = tuple(request.remote.authenticated_claims)
        decision = self.binding.check_bootstrap(endpoint, claims, peer)
        if not decision.allowed:
            code = Code.BAD_REQUEST if decision.reason is RefusalReason.UNKNOWN_ENDPOINT else decision.code
            assert code is not None
            return self._refuse(endpoint, peer, code, decision.message, decision.detail)
        config = self.store.effective(endpoint)
        if config is None or config.lwm2m_server is None:
            return self._refuse(endpoint, peer, Code.BAD_REQUEST, "no bootstrap configuration for this endpoint")
        return endpoint, config, query

    def _refuse(self, endpoint: str, peer: str, code: Code, message: str, detail: str = "") -> Reply:
        self.counters["refused"] += 1
        log.info("bootstrap: request of %r from %s refused (%s): %s", endpoint, peer, code_text(int(code)),
                 detail or message)
        if endpoint and self.store.get_config(endpoint) is not None:
            self.store.record(endpoint, "refused", "", f"{code_text(int(code))} {detail or message}", peer)
        return Reply(code, message.encode())

    def _bootstrap_request(self, mman: Any, request: Message) -> Reply:
        self.counters["requests"] += 1
        admitted = self._admit(request)
        if isinstance(admitted, Reply):
            return admitted
        endpoint, config, query = admitted
        pct = query.get("pct")
        fmt: int = ContentFormat.TLV
        if pct is not None:
            if not pct.isdigit() or int(pct) not in WRITE_FORMATS:
                why = f"pct={pct[:16]} is not a format this server writes"
                return Reply(Code.UNSUPPORTED_CONTENT_FORMAT, why.encode())
            fmt = int(pct)
        old = self._active.get(endpoint)
        if old is not None:
            old.session.abort("a new Bootstrap-Request arrived")
            self._done(old)
        if len(self._active) >= self.settings.max_active:
            return Reply(Code.SERVICE_UNAVAILABLE, b"too many bootstraps in progress: try again later")
        b = _Bootstrap(endpoint, request.remote, mman, config, fmt)
        b.session = BootstrapSession(
            endpoint,
            functools.partial(self._build_writes, b),
            discover=self.settings.discover and pct is not None,
            retries=self.settings.retries,
        )
        self._active[endpoint] = b
        log.debug("bootstrap: %s from %s (format %d)", endpoint, b.peer, fmt)
        # the 2.04 goes out first (it is the reply to this request), then the Delete
        self.loop.call_soon(self._send, b, b.session.start())
        return Reply(Code.CHANGED)

    def _build_writes(self, b: _Bootstrap, taken: frozenset[int]) -> list[Step]:
        b.servers = self._resolve(b.endpoint, b.config, b)
        try:
            return write_steps(b.servers, taken, b.fmt, b.config.acl)
        except CodecError as exc:
            raise BootstrapError(f"cannot encode the server accounts: {exc}") from None

    def _resolve(self, endpoint: str, config: BootstrapConfig, b: _Bootstrap | None) -> list[ServerWrite]:
        """The server accounts for one device, with its credentials (generated and stored as pending
        here, before anything carrying them leaves)."""
        security = config.lwm2m_server
        assert security is not None
        pub, secret = self._credentials(endpoint, security, b)
        server_key = b""
        rpk = self.clients.server_rpk  # the LwM2M server's key pair
        if security.mode is SecurityMode.RPK and rpk is not None:
            server_key = _spki_der(rpk)
        accounts: Sequence[ServerAccount] = config.servers or (ServerAccount(),)
        out = []
        for a in accounts:
            nosec = security.mode is SecurityMode.NO_SEC
            port = a.port or (self.settings.lwm2m_port if nosec else self.settings.lwm2m_dtls_port)
            out.append(
                ServerWrite(
                    uri=server_uri(a.host or self._host, port, not nosec),
                    mode=security.mode,
                    short_server_id=a.short_server_id,
                    lifetime=a.lifetime,
                    binding=a.binding,
                    default_min_period=a.default_min_period,
                    notif_if_disabled=a.notif_if_disabled,
                    client_hold_off_time=a.client_hold_off_time,
                    public_key_or_id=pub,
                    server_public_key=a.server_public_key or server_key,
                    secret_key=secret,
                )
            )
        return out

    def _credentials(self, endpoint: str, security: ServerSecurity, b: _Bootstrap | None) -> tuple[bytes, bytes]:
        if security.mode is SecurityMode.NO_SEC:
            return b"", b""
        if not security.generate:
            assert security.public_key_or_id is not None and security.secret_key is not None
            known = self.clients.psk_key(security.public_key_or_id) if security.mode is SecurityMode.PSK else None
            if security.mode is SecurityMode.PSK and known != security.secret_key:
                self._pending(ClientEntry.psk(endpoint, security.public_key_or_id, security.secret_key))
                if b is not None:
                    b.generated = True
            return security.public_key_or_id, security.secret_key
        if security.mode is SecurityMode.PSK:
            identity, key = generated_identity(endpoint), os.urandom(32)
            self._pending(ClientEntry.psk(endpoint, identity, key, source=Source.BOOTSTRAP))
            public, private = identity, key
        else:
            try:
                public, private = generate_rpk()
            except OSError as exc:
                raise BootstrapError(f"cannot generate an RPK key pair: {exc}") from None
            self._pending(ClientEntry.rpk(endpoint, public, source=Source.BOOTSTRAP))
        if b is not None:
            b.generated = True
        return public, private

    def _pending(self, entry: ClientEntry) -> None:
        try:
            self.clients.put_pending(entry)
        except ClientStoreError as exc:
            raise BootstrapError(f"cannot store the credentials for the LwM2M server: {exc}") from None

    # -- the sequence ----------------------------------------------------------------------------------

    def _send(self, b: _Bootstrap, step: Step) -> None:
        if self._active.get(b.endpoint) is not b:
            return
        match step.op:
            case Op.DELETE:
                message = Message(code=Code.DELETE)
            case Op.DISCOVER:
                message = Message(code=Code.GET, accept=ContentFormat.LINK)
            case Op.WRITE:
                message = Message(code=Code.PUT, payload=step.payload, content_format=step.content_format)
            case Op.FINISH:
                message = Message(code=Code.POST)
        message.opt.uri_path = (BS_SEGMENT,) if step.op is Op.FINISH else tuple(str(i) for i in step.path.ids)
        try:
            future = self.exchanges.request(b.mman, b.remote, message, self.settings.request_timeout)
        except Exception as exc:
            b.session.abort(f"{step}: cannot send: {exc}")
            self._done(b)
            return
        b.future = future
        future.add_done_callback(functools.partial(self._answered, b, step))

    def _answered(self, b: _Bootstrap, step: Step, future: asyncio.Future[Message]) -> None:
        if self._active.get(b.endpoint) is not b or future.cancelled():
            return
        exc = future.exception()
        session = b.session
        if isinstance(exc, RequestTimeout):
            log.info("bootstrap: %s: %s: no answer", b.endpoint, step)
            nxt = session.on_timeout()
        elif exc is not None:
            session.abort(f"{step}: {exc}")
            nxt = None
        else:
            response = future.result()
            code = int(response.code)
            if code >> 5 != 2:
                text = response.payload[:100].decode("utf-8", "replace")
                log.warning("bootstrap: %s answered %s with %s%s", b.endpoint, step, code_text(code),
                            f" ({text})" if text else "")
            nxt = session.on_answer(code, response.payload)
        if nxt is not None:
            self._send(b, nxt)
        else:
            self._done(b)

    def _done(self, b: _Bootstrap) -> None:
        if self._active.get(b.endpoint) is b:
            del self._active[b.endpoint]
        if b.future is not None and not b.future.done():
            b.future.cancel()  # aborted: free the device's turn (NSTART=1) for what comes next
        session = b.session
        servers = ", ".join(w.uri for w in b.servers)
        if session.result is Result.SUCCESS:
            self.counters["succeeded"] += 1
            self._confirm(b)
            log.info("bootstrap: %s bootstrapped (%s) from %s", b.endpoint, servers, b.peer)
            self.store.record(b.endpoint, "success", servers, "finished", b.peer)
        else:
            self.counters["failed"] += 1
            log.warning("bootstrap: %s from %s failed: %s", b.endpoint, b.peer, session.detail)
            self.store.record(b.endpoint, "failed", servers, session.detail, b.peer)
        for listener in list(self.listeners):
            try:
                listener(b.endpoint, session.result, session.detail)
            except Exception:
                log.exception("bootstrap: listener %r failed", listener)

    def _confirm(self, b: _Bootstrap) -> None:
        endpoint = b.endpoint
        try:
            if b.generated:
                self.clients.commit_pending(endpoint)  # pending stays on failure: the Register confirms it
            elif (
                b.config.lwm2m_server is not None
                and b.config.lwm2m_server.mode is SecurityMode.NO_SEC
                and self.clients.get(endpoint) is None
            ):
                self.clients.put(ClientEntry.nosec(endpoint, source=Source.BOOTSTRAP))
        except ClientStoreError as exc:
            log.error("bootstrap: %s: cannot store its credentials: %s", endpoint, exc)

    # -- Bootstrap-Pack (1.2) -----------------------------------------------------------------------------

    def _pack(self, request: Message) -> Reply:
        self.counters["packs"] += 1
        admitted = self._admit(request)
        if isinstance(admitted, Reply):
            return admitted
        endpoint, config, _ = admitted
        accept = request.opt.accept
        fmt = ContentFormat.SENML_CBOR if accept is None else accept
        if fmt not in _PACK_FORMATS:
            return Reply(Code.NOT_ACCEPTABLE, b"Bootstrap-Pack comes as SenML CBOR (112), SenML JSON or LwM2M CBOR")
        try:
            servers = self._resolve(endpoint, config, None)
            payload = encode(fmt, pack_values(servers), None, _MODELS.model_of)
        except (BootstrapError, CodecError) as exc:
            log.error("bootstrap: pack for %s: %s", endpoint, exc)
            return Reply(Code.INTERNAL_SERVER_ERROR, b"cannot build the pack")
        # no Finish follows a pack: generated credentials stay pending until the device registers
        self.store.record(endpoint, "pack sent", ", ".join(w.uri for w in servers), "Bootstrap-Pack",
                          str(getattr(request.remote, "hostinfo", "")))
        return Reply(Code.CONTENT, payload, content_format=int(fmt))


def _spki_der(rpk: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of the server's key pair (written to /0/x/4 for RPK)."""
    from gateway.lwm2m.tbcredentials import parse_der_base64
    from gateway.transport.dtls import KeyFormat

    if rpk.format is KeyFormat.DER:
        return bytes(rpk.public)
    text = rpk.public.decode("ascii", "replace")
    start = text.find("-----BEGIN PUBLIC KEY-----")
    if start < 0:
        return b""
    end = text.find("-----END PUBLIC KEY-----", start)
    return parse_der_base64(text[start : end + 24], "server public key", "PUBLIC KEY")


async def trigger_bootstrap(lwm2m: Any, endpoint: str, *, timeout: float | None = None) -> str:
    """Server-initiated bootstrap: Execute ``/1/x/9`` (Bootstrap-Request Trigger) on a registered
    device. Returns the code's text ("2.04"); raises the LwM2M server's errors."""
    device = lwm2m.registrations.device(endpoint)
    if device is None:
        from gateway.lwm2m.server.errors import DeviceNotRegistered

        raise DeviceNotRegistered(endpoint)
    server_object = device.reg.links.objects.get(1)
    iid = server_object.instances[0] if server_object is not None and server_object.instances else 0
    response = await lwm2m.execute(endpoint, LwM2mPath(1, iid, 9), timeout=timeout)
    return code_text(int(response.code))
