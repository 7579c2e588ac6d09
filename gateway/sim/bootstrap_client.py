"""Simulated LwM2M clients that bootstrap first, then register where they were told, over DTLS if told.

Built on :mod:`gateway.sim.lwm2m_client` without changing it: a :class:`BootstrapSimClient` is a
:class:`~gateway.sim.lwm2m_client.SimClient` that answers the bootstrap server's Delete, Discover,
Write and Finish, and then swaps its socket for one to the LwM2M server it was given. DTLS goes through
:class:`DtlsLink`, a connected UDP socket with the project's non-blocking
:class:`~gateway.transport.dtls.DtlsClient` engine behind the socket's ``send``/``recv``/``fileno``, so
the CoAP code of the simulator runs over it unchanged. Still no task per client: every socket is an
``add_reader`` callback; each link's handshake timers are the engine's. :class:`DtlsFleet` skips the
bootstrap: each client has its own PSK, RPK or X.509 credentials and registers once its DTLS session
is up (benchmarks/dtls_bench.py ``register``).

Knobs for refusal tests: ``write_error`` (answer Bootstrap-Writes with that code), ``ignore_finish``
(never answer Bootstrap-Finish), ``on_write`` (a hook called with each Bootstrap-Write's path, before
the answer: tests kill the gateway there).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from gateway.lwm2m.codec import CodecError, ContentFormat, decode
from gateway.lwm2m.node import iter_leaves
from gateway.lwm2m.path import LwM2mPath
from gateway.sim.lwm2m_client import (
    ACCEPT,
    BAD_REQUEST,
    CHANGED,
    CONTENT,
    CONTENT_FORMAT,
    DELETE,
    DELETED,
    GET,
    NOT_ACCEPTABLE,
    POST,
    PUT,
    URI_PATH,
    URI_QUERY,
    CoapMessage,
    Fleet,
    Option,
    SimClient,
    udp_client_socket,
    uint,
)
from gateway.transport.dtls import Addr, DtlsClient, DtlsSession, RpkKeyPair, X509Credentials
from gateway.transport.dtls import KeyFormat as DtlsKeyFormat

_MAX_QUEUED: Final = 32

Credentials = dict[str, Any]
"""``{"psk": (identity, key)}``, ``{"rpk": RpkKeyPair}`` or ``{"x509": X509Credentials}``: what
:meth:`DtlsClient.connect` takes."""


class DtlsLink:
    """A connected UDP socket carrying DTLS: ``send``/``recv``/``fileno``/``close`` like the socket.

    The handshake starts at once, or with ``connect=False`` at :meth:`handshake` (again after a
    failure); ``on_established`` runs when a session is up."""

    def __init__(
        self,
        sock: socket.socket,
        addr: Addr,
        loop: asyncio.AbstractEventLoop,
        credentials: Credentials,
        *,
        connect: bool = True,
    ):
        self.sock = sock
        self.addr: Addr = tuple(addr[:2])
        self.credentials = credentials
        self._plain: deque[bytes] = deque()
        self._queued: list[bytes] = []
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        self.on_established: Callable[[], None] | None = None
        self.engine = DtlsClient(
            loop=loop,
            send=self._raw_send,
            on_established=self._established,
            on_data=lambda _s, data: self._plain.append(data),
            on_closed=self._closed,
            on_handshake_failed=lambda _a, why: self._closed(None, why),
        )
        self.session: DtlsSession | None = None
        if connect:
            self.handshake()

    def handshake(self) -> None:
        """Start a (new) handshake; data sent meanwhile waits for it."""
        self.failure = None
        self.session = self.engine.connect(self.addr, **self.credentials)

    def _raw_send(self, _addr: Addr, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(data)

    def _established(self, session: DtlsSession) -> None:
        queued, self._queued = self._queued, []
        for data in queued:
            session.send(data)
        if self.on_established is not None:
            self.on_established()

    def _closed(self, _session: DtlsSession | None, why: str) -> None:
        self.failure = why
        if self.on_failure is not None:
            self.on_failure(why)

    def send(self, data: bytes) -> int:
        if self.session is not None and self.session.established:
            self.session.send(data)
        elif self.failure is None and len(self._queued) < _MAX_QUEUED:
            self._queued.append(data)  # CoAP would retransmit anyway; this saves the wait
        return len(data)

    def recv(self, _size: int) -> bytes:
        while not self._plain:
            data = self.sock.recv(65535)  # BlockingIOError when nothing is left: the caller stops
            self.engine.datagram_received(data, self.addr)
        return self._plain.popleft()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.on_failure = None  # closed on purpose
        with contextlib.suppress(Exception):
            if self.session is not None and self.session.established:
                self.session.close()
        self.engine.close()
        self.sock.close()


def open_link(
    loop: asyncio.AbstractEventLoop,
    family: int,
    sockaddr: Any,
    bind_host: str,
    credentials: Credentials | None,
    *,
    connect: bool = True,
) -> socket.socket | DtlsLink:
    sock = udp_client_socket(family, sockaddr, bind_host)
    if credentials is None:
        return sock
    return DtlsLink(sock, sockaddr, loop, credentials, connect=connect)


async def _prepare(fleet: Fleet) -> tuple[asyncio.AbstractEventLoop, int, Any, str]:
    """Start a fleet's loop and timers; resolve its server: (loop, family, sockaddr, bind host)."""
    from gateway.lwm2m.server.timers import TimerQueue

    loop = fleet._loop = asyncio.get_running_loop()
    fleet._timers = TimerQueue(loop)
    host, port = fleet.server
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    return loop, family, sockaddr, fleet.bind_host or ("::1" if family == socket.AF_INET6 else "127.0.0.1")


class BootstrapSimClient(SimClient):
    """A simulated client with a bootstrap phase (see the module docstring)."""

    __slots__ = (
        "bootstrap_credentials",
        "bootstrap_state",
        "bs_security",
        "bs_server",
        "ignore_finish",
        "on_finish",
        "on_write",
        "security_mode",
        "server_uri",
        "write_error",
    )

    def __init__(self, fleet: Fleet, endpoint: str, sock: Any) -> None:
        super().__init__(fleet, endpoint, sock)
        self.bootstrap_state = "factory"  # -> requested -> finished | refused | failed -> registering
        self.bs_security: dict[int, dict[int, Any]] = {}
        self.bs_server: dict[int, dict[int, Any]] = {}
        self.write_error: int | None = None
        self.ignore_finish = False
        self.on_write: Callable[[BootstrapSimClient, LwM2mPath], None] | None = None
        self.on_finish: Callable[[BootstrapSimClient], None] | None = None
        self.bootstrap_credentials: Credentials | None = None
        self.security_mode: int | None = None
        self.server_uri: str | None = None

    @property
    def bootstrap_fleet(self) -> BootstrapFleet:
        assert isinstance(self.fleet, BootstrapFleet)
        return self.fleet

    # -- Bootstrap-Request ---------------------------------------------------------------------------

    def bootstrap(self) -> None:
        fleet = self.bootstrap_fleet
        options: list[Option] = [(URI_PATH, b"bs"), (URI_QUERY, f"ep={self.endpoint}".encode())]
        if fleet.lwm2m_version != "1.0":
            options.append((URI_QUERY, f"pct={fleet.pct}".encode()))
        self.bootstrap_state = "requested"
        fleet.stats["bootstrap_sent"] += 1
        self.request(POST, options, b"", self._bootstrap_answered)

    def _bootstrap_answered(self, response: CoapMessage | None) -> None:
        fleet = self.bootstrap_fleet
        if response is None or response.code != CHANGED:
            self.last_error = None if response is None else response.code
            self.bootstrap_state = "refused"
            fleet.stats["bootstrap_refused"] += 1
            fleet.changed()

    # -- the bootstrap server's requests ---------------------------------------------------------------

    def _on_request(self, m: CoapMessage) -> None:
        if self.ignore_finish and m.code == POST and m.strings(URI_PATH) == ["bs"]:
            self.fleet.stats["finish_ignored"] += 1
            return
        super()._on_request(m)

    def _handle(self, m: CoapMessage) -> tuple[int, list[Option], bytes]:
        segments = m.strings(URI_PATH)
        if self.bootstrap_state != "requested":
            if m.code == POST and len(segments) == 3 and segments[0] == "1" and segments[2] == "9":
                self.executions.append(("/" + "/".join(segments), m.payload))
                self.fleet.loop.call_soon(self._rebootstrap)  # after the answer
                return CHANGED, [], b""
            return super()._handle(m)
        stats = self.fleet.stats
        if m.code == DELETE:
            stats["bootstrap_delete"] += 1
            if not segments:
                self.bs_security.clear()
                self.bs_server.clear()
            elif len(segments) == 2 and segments[0] in ("0", "1"):
                (self.bs_security if segments[0] == "0" else self.bs_server).pop(int(segments[1]), None)
            return DELETED, [], b""
        if m.code == GET and m.uint(ACCEPT) == ContentFormat.LINK:
            stats["bootstrap_discover"] += 1
            links = ["</>;lwm2m=1.1", '</0/0>;uri="coap://bootstrap"']  # the bootstrap-server account
            links += [f"</0/{i}>;ssid={r.get(10, 0)}" for i, r in sorted(self.bs_security.items())]
            links += [f"</1/{i}>;ssid={r.get(0, 0)}" for i, r in sorted(self.bs_server.items())]
            return CONTENT, [(CONTENT_FORMAT, uint(ContentFormat.LINK))], ",".join(links).encode()
        if m.code == PUT and segments:
            return self._bootstrap_write(m, segments)
        if m.code == POST and segments == ["bs"]:
            return self._finish()
        return super()._handle(m)

    def _bootstrap_write(self, m: CoapMessage, segments: list[str]) -> tuple[int, list[Option], bytes]:
        stats = self.fleet.stats
        try:
            path = LwM2mPath.parse("/" + "/".join(segments))
        except ValueError:
            return BAD_REQUEST, [], b"not an LwM2M path"
        if self.on_write is not None:
            self.on_write(self, path)
        if self.write_error is not None:
            stats["bootstrap_write_refused"] += 1
            return self.write_error, [], b"simulated write error"
        cf = m.uint(CONTENT_FORMAT)
        try:
            node = decode(cf if cf is not None else ContentFormat.TLV, m.payload, path, self.fleet.model_of)
        except CodecError as e:
            return BAD_REQUEST, [], str(e).encode()
        for p, value, _ in iter_leaves(node, path):
            if p.depth >= 3 and p.ids[0] in (0, 1):
                target = self.bs_security if p.ids[0] == 0 else self.bs_server
                target.setdefault(p.ids[1], {})[p.ids[2]] = value
        stats["bootstrap_write"] += 1
        return CHANGED, [], b""

    def _finish(self) -> tuple[int, list[Option], bytes]:
        if self.on_finish is not None:
            self.on_finish(self)
        if self.server_account() is None:
            self.fleet.stats["bootstrap_inconsistent"] += 1
            return NOT_ACCEPTABLE, [], b"no LwM2M server account"
        self.bootstrap_state = "finished"
        self.fleet.stats["bootstrap_finished"] += 1
        self.bootstrap_fleet.bootstrapped += 1
        self.fleet.loop.call_soon(self._switch_to_server)
        self.fleet.changed()
        return CHANGED, [], b""

    def server_account(self) -> tuple[dict[int, Any], dict[int, Any]] | None:
        """(Security resources, Server resources) of the first LwM2M server account written."""
        for security in self.bs_security.values():
            if security.get(1) or not security.get(0):
                continue
            ssid = security.get(10)
            server = next((s for s in self.bs_server.values() if s.get(0) == ssid), None)
            if server is not None:
                return security, server
        return None

    # -- between the servers ----------------------------------------------------------------------------

    def rebootstrap(self) -> None:
        self._rebootstrap()

    def _rebootstrap(self) -> None:
        """Bootstrap-Request Trigger executed (or a bootstrap that never finished): back to the
        bootstrap server, on a new link."""
        fleet = self.bootstrap_fleet
        if self.registered:
            self.registered = False
            fleet.registered -= 1
        fleet.timers.cancel(self.update_timer)
        self.update_timer = None
        host, port = fleet.server
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._relink(family, (host, port), self.bootstrap_credentials)
        self.bootstrap()

    def _relink(self, family: int, sockaddr: Any, credentials: Credentials | None) -> None:
        loop = self.fleet.loop
        old = self.sock
        with contextlib.suppress(Exception):
            loop.remove_reader(old.fileno())
        old.close()
        bind_host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        link = open_link(loop, family, sockaddr, bind_host, credentials)
        if isinstance(link, DtlsLink):
            link.on_failure = self.bootstrap_fleet._link_failed
        self.sock = link  # type: ignore[assignment]
        self.outgoing.clear()
        loop.add_reader(link.fileno(), self.readable)

    # -- on to the LwM2M server ------------------------------------------------------------------------

    def _switch_to_server(self) -> None:
        fleet = self.bootstrap_fleet
        account = self.server_account()
        assert account is not None
        security, server = account
        uri = urlsplit(str(security[0]))
        mode = int(security.get(2, 3))
        credentials: Credentials | None = None
        if uri.scheme == "coaps":
            if mode == 0:
                credentials = {"psk": (bytes(security[3]), bytes(security[5]))}
            elif mode == 1:
                credentials = {"rpk": RpkKeyPair(bytes(security[3]), bytes(security[5]), DtlsKeyFormat.DER)}
            elif mode == 2:  # /0/x/3: the client's certificate (DER), /0/x/5: its private key (DER)
                credentials = {"x509": X509Credentials(bytes(security[3]), bytes(security[5]), DtlsKeyFormat.DER)}
            else:
                self.bootstrap_state = "failed"
                fleet.stats["unsupported_security_mode"] += 1
                fleet.changed()
                return
        self.security_mode = mode
        self.server_uri = str(security[0])
        host = uri.hostname or "127.0.0.1"
        port = uri.port or (5684 if uri.scheme == "coaps" else 5683)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sockaddr = (host, port, 0, 0) if family == socket.AF_INET6 else (host, port)
        self._relink(family, sockaddr, credentials)
        self.lifetime = int(server.get(1, self.lifetime))
        self.bootstrap_state = "registering"
        self.register()


class BootstrapFleet(Fleet):
    """Simulated clients that bootstrap from ``server`` (the bootstrap server), then register.

    ``bootstrap_credentials(endpoint)``: the factory credentials for a DTLS bootstrap (None: NoSec)."""

    def __init__(
        self,
        server: tuple[str, int],
        count: int,
        *,
        bootstrap_credentials: Callable[[str], Credentials | None] | None = None,
        pct: int = ContentFormat.TLV,
        **kw: Any,
    ) -> None:
        super().__init__(server, count, **kw)
        self.bootstrap_credentials = bootstrap_credentials
        self.pct = pct
        self.bootstrapped = 0

    async def start(self) -> None:
        """Open every client's link to the bootstrap server (nothing is sent yet)."""
        loop, family, sockaddr, bind_host = await _prepare(self)
        for i in range(self.start_index, self.start_index + self.count):
            endpoint = f"{self.prefix}{i:06d}"
            creds = self.bootstrap_credentials(endpoint) if self.bootstrap_credentials else None
            link = open_link(loop, family, sockaddr, bind_host, creds)
            client = BootstrapSimClient(self, endpoint, link)
            client.bootstrap_credentials = creds
            if isinstance(link, DtlsLink):
                link.on_failure = self._link_failed
            self.clients.append(client)
            self._by_endpoint[client.endpoint] = client
            loop.add_reader(link.fileno(), client.readable)

    def _link_failed(self, _why: str) -> None:
        self.stats["dtls_failed"] += 1
        self.changed()

    def bootstrap_all(self) -> None:
        for client in self.clients:
            assert isinstance(client, BootstrapSimClient)
            client.bootstrap()

    def bs_client(self, endpoint: str) -> BootstrapSimClient:
        client = self.client(endpoint)
        assert isinstance(client, BootstrapSimClient)
        return client


class DtlsFleet(Fleet):
    """Simulated clients that register with the LwM2M server over DTLS, each with its own credentials.

    ``credentials(endpoint)`` gives what the DTLS client presents (PSK, RPK or X.509; None: NoSec);
    ``endpoints`` names the clients (default: ``prefix`` + index, as :class:`Fleet`). Nothing is sent
    at :meth:`start`; :meth:`register_all` starts every handshake, and each client registers as soon
    as its session is up. A handshake that fails is started again after ``retry_after`` seconds
    (spread by up to half as much), as a device would (``dtls_failed`` counts the failures).
    """

    def __init__(
        self,
        server: tuple[str, int],
        count: int,
        *,
        credentials: Callable[[str], Credentials | None],
        endpoints: Sequence[str] | None = None,
        retry_after: float = 1.0,
        **kw: Any,
    ) -> None:
        super().__init__(server, len(endpoints) if endpoints is not None else count, **kw)
        self.credentials = credentials
        self.endpoints = endpoints
        self.retry_after = retry_after
        self.established = 0

    async def start(self) -> None:
        """Open every client's link (no handshake yet)."""
        loop, family, sockaddr, bind_host = await _prepare(self)
        names = self.endpoints
        if names is None:
            names = [f"{self.prefix}{i:06d}" for i in range(self.start_index, self.start_index + self.count)]
        for endpoint in names:
            link = open_link(loop, family, sockaddr, bind_host, self.credentials(endpoint), connect=False)
            client = SimClient(self, endpoint, link)  # type: ignore[arg-type]  # a socket look-alike
            if isinstance(link, DtlsLink):
                link.on_established = functools.partial(self._established, client)
                link.on_failure = functools.partial(self._failed, link)
            self.clients.append(client)
            self._by_endpoint[endpoint] = client
            loop.add_reader(link.fileno(), client.readable)

    def register_all(self, rate: float | None = None) -> None:
        """Every client starts its handshake (at once, or ``rate`` per second) and then registers."""
        now = self.loop.time()
        for n, client in enumerate(self.clients):
            if rate is None:
                self._begin(client)
            else:
                self.timers.call_at(now + n / rate, self._begin, client)

    def _begin(self, client: SimClient) -> None:
        link = client.sock
        if isinstance(link, DtlsLink):
            link.handshake()
        else:
            client.register()

    def _established(self, client: SimClient) -> None:
        self.established += 1
        if not client.registered:
            client.register()

    def _failed(self, link: DtlsLink, _why: str) -> None:
        self.stats["dtls_failed"] += 1
        delay = self.retry_after * (1 + random.random() / 2)
        self.timers.call_at(self.loop.time() + delay, DtlsLink.handshake, link)
        self.changed()
