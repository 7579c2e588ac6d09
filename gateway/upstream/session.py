"""The MQTT session to ThingsBoard: paho-mqtt 2.x driven by the asyncio loop, with no network thread.

Driving paho from the loop
    paho's socket callbacks hand its socket to the loop: ``on_socket_open`` adds a reader that calls
    ``loop_read`` (and, on TLS, calls it again while the SSL object still holds decrypted bytes, which
    do not make the file descriptor readable), ``on_socket_close`` removes it,
    ``on_socket_register_write``/``unregister_write`` add and remove a writer that calls
    ``loop_write``. One periodic timer (1 s) calls ``loop_misc`` for keepalive pings. Every paho call
    happens on the loop thread; nothing blocks it.

Non-blocking connect: the socket is pre-connected on the loop, then handed to paho
    paho's ``connect()``/``reconnect()`` open the socket themselves with ``socket.create_connection``
    (blocking DNS and TCP handshake, up to the connect timeout) and, for TLS, a blocking
    ``do_handshake()``. On a flaky 3G uplink that is seconds of a frozen loop. So a connect attempt is
    an ordinary task:

    1. ``loop.getaddrinfo`` resolves the host;
    2. ``loop.sock_connect`` connects a non-blocking socket to each address in turn;
    3. for TLS, ``SSLContext.wrap_socket(do_handshake_on_connect=False)`` and ``do_handshake()``
       retried on ``SSLWantRead/WriteError`` while awaiting readability/writability (the context
       checks the certificate chain and the host name; X.509 client credentials are loaded into it);
    4. a fresh paho client whose ``_create_socket()`` returns that socket, and paho's ``reconnect()``:
       it sets the socket non-blocking, calls ``on_socket_open`` and queues CONNECT. Nothing blocks.

    The whole attempt runs under one deadline (``connect_timeout``), and CONNACK + SUBACK under another.
    The session is CONNECTED once the downlink subscriptions are acknowledged (ready both ways).
    Why not paho's own connect in the loop's executor, with the socket callbacks marshalled back by
    ``call_soon_threadsafe``: ``reconnect()`` does more than open a socket (it resets paho's packet
    state, clears its outgoing queue, queues CONNECT, calls our callbacks) and would do it on a worker
    thread while the loop must keep away from the client (publish, ``loop_misc``); a ``stop()`` could
    not cancel a hanging connect (the thread runs on until the timeout), and DNS and TLS failures
    arrive from another thread. Pre-connecting keeps all of paho on one thread and makes an attempt
    cancellable at every step. The price is one private hook, ``Client._create_socket`` (the single
    place where paho opens sockets, unchanged from 1.6 to 2.2); the import below refuses a paho
    without it, and every test that connects exercises it.

Reconnects
    Exponential backoff with full jitter (a delay drawn uniformly between ``reconnect_min`` and
    ``min(reconnect_max, reconnect_min * 2**n)``), reset after a connection that stayed up for
    ``stable_after`` seconds. CONNACK 4/5 (bad user name or password, not authorised) are permanent
    for these credentials: state ``CREDENTIALS_REJECTED``, one ERROR line per streak, the rejection
    listeners are told (status, LED, re-provisioning), and the next try waits
    ``rejected_retry`` x [0.5, 1.5] (5-15 min by default). :meth:`MqttSession.set_credentials`
    retries at once with new credentials.

Session limits
    After each CONNACK the session subscribes to the downlink topics and asks ``getSessionLimits``.
    The session reports CONNECTED at once (RPC replies and requests need no limits) with
    *provisional* limits (``final`` False: 8 KiB, 10 in flight, for anyone who must publish before
    the answer). The answer replaces them; without one within ``limits_timeout``, ThingsBoard's
    defaults (65536 bytes / 100) apply. The uplink sends data only under final limits. Measured
    reason for waiting rather than sending early: with any provisional size, a server configured
    below it gets oversized publishes in the first round trip, which ThingsBoard answers by
    dropping the session (a reconnect loop on a slow link) and a lax broker by acknowledging and
    discarding them (loss). One round trip after a reconnect is the price; a server that never
    answers costs ``limits_timeout`` per connection, never more.

Publishing
    :meth:`MqttSession.publish` returns a future resolved by the PUBACK (QoS 1) and failed with
    :class:`ConnectionLost` when the connection drops first. Publishing while not connected fails at
    once: paho never holds messages across connections (each connection gets a fresh client), the
    outbox does. ``maxInflightMessages`` is enforced here, not by paho: paho 2.2 refuses
    ``max_inflight_messages_set`` on an open connection, and the limit is only known after CONNACK.
    paho runs unlimited; a publish beyond the limit waits in the session (in order) for a PUBACK to
    free a slot, and fails with the others if the connection drops. The uplink keeps its own window
    below the limit, so this queue holds at most a few control messages (RPC replies, requests).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import random
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.upstream import thingsboard as tb

log = logging.getLogger("gateway.upstream.session")
_paho_log = logging.getLogger("gateway.upstream.paho")

if not callable(getattr(mqtt.Client, "_create_socket", None)):  # pragma: no cover - guards a paho upgrade
    raise ImportError("paho-mqtt without Client._create_socket: the non-blocking connect needs it (paho 1.6-2.x)")

#: CONNACK reason codes (MQTT 5 numbering, which paho 2 also uses for 3.1.1's return codes 4 and 5)
#: that mean "these credentials will not do".
_REJECTED_REASONS = frozenset({134, 135})  # bad user name or password, not authorized


class SessionState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CREDENTIALS_REJECTED = "credentials_rejected"
    STOPPED = "stopped"


class ConnectionLost(ConnectionError):
    """The connection was not there, or dropped before the broker acknowledged the message."""


class PublishRejected(Exception):
    """The broker answered a publish with a failure reason code (MQTT 5 only)."""


# -- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessToken:
    """ThingsBoard access token: the MQTT user name, no password."""

    token: str

    def __repr__(self) -> str:
        return "AccessToken(<secret>)"


@dataclass(frozen=True, slots=True)
class MqttBasic:
    """ThingsBoard MQTT_BASIC credentials; the server matches client id and/or user name (+ password)."""

    client_id: str = ""
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class X509:
    """Client certificate and key (PEM files) for mutual TLS; the server identifies the device by it."""

    cert_file: str
    key_file: str
    key_password: str | None = field(default=None, repr=False)


Credentials = AccessToken | MqttBasic | X509


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: str | None = None  # None: the system's trust store
    check_hostname: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    host: str
    port: int = 1883
    credentials: Credentials
    tls: TlsSettings | None = None  # always on (with defaults) for X509
    client_id: str = ""  # empty: MqttBasic's, else a random one per session object
    keepalive: int = 60
    connect_timeout: float = 30.0  # DNS + TCP + TLS, and again for the CONNACK
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    stable_after: float = 30.0  # a connection up this long resets the backoff
    rejected_retry: float = 600.0  # x [0.5, 1.5] after CONNACK 4/5
    ask_session_limits: bool = True
    limits_timeout: float = 10.0
    #: Topics subscribed after CONNACK; None: ThingsBoard's downlink topics. The provisioning
    #: connection passes ("/provision/response",) (with ask_session_limits False). Empty: no
    #: SUBSCRIBE, CONNECTED at CONNACK.
    subscriptions: tuple[str, ...] | None = None
    misc_interval: float = 1.0


class LimitsSource(enum.Enum):
    PROVISIONAL = "provisional"  # connected, answer pending
    SERVER = "server"  # ThingsBoard's answer
    DEFAULT = "default"  # no (usable) answer in time: ThingsBoard's defaults


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_payload_size: int
    max_inflight_messages: int
    source: LimitsSource
    answer: Any = None  # the server's whole answer (rate limits too), when there was one

    @property
    def final(self) -> bool:
        """False while the server's answer is still awaited."""
        return self.source is not LimitsSource.PROVISIONAL


PROVISIONAL_LIMITS = SessionLimits(8192, 10, LimitsSource.PROVISIONAL)
DEFAULT_LIMITS = SessionLimits(tb.DEFAULT_MAX_PAYLOAD_SIZE, tb.DEFAULT_MAX_INFLIGHT_MESSAGES, LimitsSource.DEFAULT)


@dataclass(slots=True)
class SessionStats:
    connects: int = 0  # connections established (CONNACK 0, then SUBACK)
    connect_failures: int = 0  # attempts that did not reach CONNACK 0
    rejections: int = 0  # CONNACK 4/5
    connection_losses: int = 0
    publishes: int = 0
    pubacks: int = 0
    failed_publishes: int = 0  # futures failed with ConnectionLost / PublishRejected
    in_flight: int = 0  # publishes awaiting their PUBACK
    waiting: int = 0  # publishes held back by maxInflightMessages
    peak_in_flight: int = 0


StateListener = Callable[[SessionState], None]
LimitsListener = Callable[[SessionLimits], None]
RejectedListener = Callable[[str], None]
MessageHandler = Callable[[str, bytes], None]


class _Client(mqtt.Client):
    """A paho client that never opens a socket itself: it is given one, already connected."""

    def __init__(self, sock: socket.socket, client_id: str) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self._given_socket: socket.socket | None = sock

    def _create_socket(self) -> Any:
        sock, self._given_socket = self._given_socket, None
        if sock is None:
            # paho reconnects by itself only to downgrade the protocol or pick a client id; the
            # session decides about reconnects, so that path is an error, not a blocking connect.
            raise ConnectionError("the session opens sockets, not paho")
        return sock


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class MqttSession:
    """One MQTT connection to ThingsBoard at a time, kept up until :meth:`stop`.

    Listeners are called on the loop, from inside paho's callbacks: they must return quickly and
    not call :meth:`publish` synchronously (schedule a task or wake one instead).
    """

    def __init__(self, config: SessionConfig, *, logger: logging.Logger | None = None) -> None:
        self._config = config
        #: where this session logs (per-device sessions use a quieter logger: one line per session
        #: and event would flood the journal when thousands of them lose the uplink together)
        self._log = logger or log
        creds = config.credentials
        self._client_id = config.client_id or (
            creds.client_id if isinstance(creds, MqttBasic) and creds.client_id else "edge-gw-" + secrets.token_hex(6)
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = SessionState.DISCONNECTED
        self._limits = PROVISIONAL_LIMITS
        self._client: _Client | None = None
        self._sock: Any = None  # what paho registered with the loop
        self._pending: dict[int, asyncio.Future[None]] = {}  # mid -> future, in flight in paho
        self._waiting: collections.deque[tuple[str, bytes, int, asyncio.Future[None]]] = collections.deque()
        self._drain_scheduled = False
        self._stats = SessionStats()
        self._state_listeners: list[StateListener] = []
        self._limits_listeners: list[LimitsListener] = []
        self._rejected_listeners: list[RejectedListener] = []
        self._state_waiters: list[tuple[frozenset[SessionState], asyncio.Future[SessionState]]] = []
        self._message_handler: MessageHandler | None = None
        self._attempt_task: asyncio.Task[None] | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._connack_handle: asyncio.TimerHandle | None = None
        self._limits_handle: asyncio.TimerHandle | None = None
        self._limits_request_id: int | None = None
        self._own_rpc: dict[int, bytes] = {}  # recent client-side RPC requests (a plain broker echoes them)
        self._subscribe_mid = -1
        self._next_id = 0
        self._failures = 0  # consecutive attempts without a stable connection (backoff exponent)
        self._connected_at = 0.0
        self._rejection_logged = False
        self._failure_logged = False
        self._stopping = False
        self._ssl_context: ssl.SSLContext | None = None

    # -- public -----------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def limits(self) -> SessionLimits:
        return self._limits

    @property
    def config(self) -> SessionConfig:
        return self._config

    def stats(self) -> SessionStats:
        self._stats.in_flight = len(self._pending)
        self._stats.waiting = len(self._waiting)
        return replace(self._stats)

    def add_state_listener(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def add_limits_listener(self, listener: LimitsListener) -> None:
        self._limits_listeners.append(listener)

    def add_rejected_listener(self, listener: RejectedListener) -> None:
        """``listener(reason)`` when ThingsBoard rejects the credentials (CONNACK 4/5)."""
        self._rejected_listeners.append(listener)

    def set_message_handler(self, handler: MessageHandler) -> None:
        """``handler(topic, payload)`` for every message that comes down, except the session's own."""
        self._message_handler = handler

    def start(self) -> None:
        """Start connecting (at once) and keep the connection up. Call from the running loop."""
        if self._loop is not None:
            raise RuntimeError("MqttSession.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._schedule_attempt(0.0)
        self._tick_handle = self._loop.call_later(self._config.misc_interval, self._tick)

    async def stop(self) -> None:
        """Disconnect cleanly if connected, fail what is in flight, and stop reconnecting."""
        if self._state is SessionState.STOPPED or self._loop is None:
            self._set_state(SessionState.STOPPED)
            return
        self._stopping = True
        for handle in (self._retry_handle, self._tick_handle, self._connack_handle, self._limits_handle):
            if handle is not None:
                handle.cancel()
        task = self._attempt_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # unlike awaiting it, keeps a cancel of stop() itself apart
        client = self._client
        if client is not None and self._state is SessionState.CONNECTED:
            try:
                client.disconnect()
                client.loop_write()  # DISCONNECT fits the socket buffer unless it is already full
            except Exception:
                self._log.debug("clean disconnect failed", exc_info=True)
        if self._client is not None:
            self._abort("session stopped")
        self._set_state(SessionState.STOPPED)

    async def wait_for_state(self, *states: SessionState) -> SessionState:
        """Return as soon as the session is in one of ``states`` (at once if it is)."""
        if self._state in states:
            return self._state
        fut: asyncio.Future[SessionState] = asyncio.get_running_loop().create_future()
        entry = (frozenset(states), fut)
        self._state_waiters.append(entry)
        try:
            return await fut
        finally:
            if entry in self._state_waiters:
                self._state_waiters.remove(entry)

    def set_credentials(self, credentials: Credentials) -> None:
        """Use new credentials (after re-provisioning) and reconnect with them at once."""
        self._config = replace(self._config, credentials=credentials)
        self._ssl_context = None
        self._rejection_logged = False
        if self._state is SessionState.CREDENTIALS_REJECTED:
            self._set_state(SessionState.DISCONNECTED)
        self.reconnect_now()

    def reconnect_now(self) -> None:
        """Drop the connection (if any) and try again without waiting out a backoff delay."""
        if self._loop is None or self._stopping:
            return
        if self._attempt_task is not None and not self._attempt_task.done():
            self._attempt_task.cancel()
        if self._client is not None:
            self._abort("reconnect requested")
        self._failures = 0
        self._schedule_attempt(0.0)

    def next_request_id(self) -> int:
        """A request id unique within this session (client RPC, attribute requests)."""
        self._next_id = self._next_id % 2_000_000_000 + 1
        return self._next_id

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]:
        """Publish; the future resolves on PUBACK (QoS 1) or once written (QoS 0).

        Fails at once with :class:`ConnectionLost` unless CONNECTED, and later when the connection
        drops before the PUBACK. Nobody awaits for you: retrieve the result or the exception.
        """
        if self._loop is None:
            raise RuntimeError("MqttSession.publish() before start()")
        fut: asyncio.Future[None] = self._loop.create_future()
        client = self._client
        if self._state is not SessionState.CONNECTED or client is None:
            self._stats.failed_publishes += 1
            fut.set_exception(ConnectionLost(f"not connected to ThingsBoard ({self._state.value})"))
            return fut
        if qos > 0 and (self._waiting or len(self._pending) >= self._limits.max_inflight_messages):
            self._waiting.append((topic, payload, qos, fut))  # sent as PUBACKs free slots
        else:
            self._publish_on(client, topic, payload, qos, fut)
        return fut

    def send_client_rpc(self, method: str, params: Any = None) -> tuple[int, asyncio.Future[None]]:
        """Publish a client-side RPC request; returns its id (the reply comes on the response topic)."""
        request_id = self.next_request_id()
        payload = tb.client_rpc_request(method, params)
        self._remember_own_rpc(request_id, payload)
        return request_id, self.publish(tb.client_rpc_topic(request_id), payload)

    # -- connecting -------------------------------------------------------------------------

    def _schedule_attempt(self, delay: float) -> None:
        assert self._loop is not None
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._retry_handle = self._loop.call_later(delay, self._begin_attempt)

    def _begin_attempt(self) -> None:
        assert self._loop is not None
        self._retry_handle = None
        if self._stopping or (self._attempt_task is not None and not self._attempt_task.done()):
            return
        if self._client is not None:
            return
        self._attempt_task = self._loop.create_task(self._attempt(), name="mqtt-connect")

    async def _attempt(self) -> None:
        assert self._loop is not None
        cfg = self._config
        if self._state is not SessionState.CREDENTIALS_REJECTED:
            self._set_state(SessionState.CONNECTING)
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                sock = await self._open_socket()
        except (OSError, ValueError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            self._attempt_failed(f"cannot reach {cfg.host}:{cfg.port}: {reason}")
            return
        client = _Client(sock, self._client_id)
        self._configure(client)
        self._client = client
        try:
            client.connect_async(cfg.host, cfg.port, cfg.keepalive)
            client.reconnect()
        except Exception as exc:
            sock.close()  # if paho failed before taking it
            self._abort(f"MQTT connect failed: {exc}")
            return
        self._connack_handle = self._loop.call_later(cfg.connect_timeout, self._connack_timeout, client)

    async def _open_socket(self) -> socket.socket:
        assert self._loop is not None
        loop = self._loop
        cfg = self._config
        infos = await loop.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        last: OSError = OSError(f"no address for {cfg.host}")
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            if self._tls_settings() is None:
                return sock
            return await self._tls_handshake(sock)
        raise last

    def _tls_settings(self) -> TlsSettings | None:
        cfg = self._config
        if cfg.tls is None and isinstance(cfg.credentials, X509):
            return TlsSettings()
        return cfg.tls

    def _get_ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            settings = self._tls_settings() or TlsSettings()
            try:
                ctx = ssl.create_default_context(cafile=settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"TLS CA file {settings.ca_file!r}: {exc}") from None
            ctx.check_hostname = settings.check_hostname
            creds = self._config.credentials
            if isinstance(creds, X509):
                try:
                    ctx.load_cert_chain(creds.cert_file, creds.key_file, creds.key_password)
                except (OSError, ssl.SSLError) as exc:
                    raise ValueError(
                        f"X.509 client certificate {creds.cert_file!r} / key {creds.key_file!r}: {exc}"
                    ) from None
            self._ssl_context = ctx
        return self._ssl_context

    async def _tls_handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        try:
            tls = self._get_ssl_context().wrap_socket(
                sock, server_hostname=self._config.host, do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        try:
            while True:
                try:
                    tls.do_handshake()
                    return tls
                except ssl.SSLWantReadError:
                    await self._wait_io(tls, write=False)
                except ssl.SSLWantWriteError:
                    await self._wait_io(tls, write=True)
        except BaseException:
            tls.close()
            raise

    async def _wait_io(self, sock: socket.socket, *, write: bool) -> None:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = sock.fileno()
        if write:
            self._loop.add_writer(fd, _wake, fut)
        else:
            self._loop.add_reader(fd, _wake, fut)
        try:
            await fut
        finally:
            if write:
                self._loop.remove_writer(fd)
            else:
                self._loop.remove_reader(fd)

    def _configure(self, client: _Client) -> None:
        creds = self._config.credentials
        if isinstance(creds, AccessToken):
            client.username_pw_set(creds.token)
        elif isinstance(creds, MqttBasic):
            client.username_pw_set(creds.username or None, creds.password or None)
        # paho 2.2 refuses to change max_inflight_messages on an open connection, and the server's
        # limit arrives after CONNACK: paho runs unlimited, the session enforces the limit itself.
        client.max_inflight_messages_set(0)
        client.suppress_exceptions = True  # our callbacks log their own errors; paho must stay consistent
        client.enable_logger(_paho_log)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message

    def _attempt_failed(self, reason: str) -> None:
        self._stats.connect_failures += 1
        if self._state is SessionState.CREDENTIALS_REJECTED:
            # keep showing the rejection: nothing says the credentials are good now
            self._log.info("ThingsBoard connection failed: %s (credentials were rejected before)", reason)
            self._schedule_attempt(self._config.rejected_retry * random.uniform(0.5, 1.5))
            return
        delay = self._backoff()
        if not self._failure_logged:
            self._log.warning("ThingsBoard connection failed: %s; retrying in %.1f s", reason, delay)
            self._failure_logged = True
        else:
            self._log.info("ThingsBoard connection failed again: %s; retrying in %.1f s", reason, delay)
        self._set_state(SessionState.DISCONNECTED)
        self._schedule_attempt(delay)

    def _backoff(self) -> float:
        cfg = self._config
        ceiling = min(cfg.reconnect_max, cfg.reconnect_min * (2.0 ** min(self._failures, 30)))
        self._failures += 1
        return random.uniform(cfg.reconnect_min, max(cfg.reconnect_min, ceiling))

    def _connack_timeout(self, client: _Client) -> None:
        if client is self._client and self._state is not SessionState.CONNECTED:
            self._abort(f"no CONNACK and SUBACK within {self._config.connect_timeout:g} s")

    # -- paho callbacks (all on the loop thread) ----------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if client is self._client and self._loop is not None:
            self._sock = sock
            self._loop.add_reader(sock, self._on_readable, client)

    def _on_socket_close(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if client is self._client:
            self._unregister()

    def _on_register_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if client is self._client and self._loop is not None:
            self._loop.add_writer(sock, self._on_writable, client)

    def _on_unregister_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if client is self._client and self._loop is not None:
            self._loop.remove_writer(sock)

    def _unregister(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _on_readable(self, client: _Client) -> None:
        try:
            client.loop_read()
            sock = client.socket()
            if isinstance(sock, ssl.SSLSocket):
                tls: ssl.SSLSocket = sock
                # Decrypted bytes left in the SSL object do not make the descriptor readable again.
                for _ in range(10_000):
                    if client is not self._client or client.socket() is not tls or not tls.pending():
                        break
                    client.loop_read()
        except Exception:
            self._log.exception("MQTT read failed")
            if client is self._client:
                self._abort("internal error while reading")

    def _on_writable(self, client: _Client) -> None:
        try:
            client.loop_write()
        except Exception:
            self._log.exception("MQTT write failed")
            if client is self._client:
                self._abort("internal error while writing")

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Properties | None
    ) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            if reason.value in _REJECTED_REASONS:
                self._rejected(f"CONNACK {reason.value} {reason}")
            else:
                self._log.warning("ThingsBoard refused the connection: %s", reason)
            return  # paho closes the socket and calls on_disconnect next
        assert self._loop is not None
        self._rejection_logged = False
        # CONNECTED once the downlink subscriptions are acknowledged: ready both ways. The CONNACK
        # deadline keeps running until then.
        topics = self._subscriptions()
        if topics:
            _rc, mid = client.subscribe([(topic, 1) for topic in topics])
            self._subscribe_mid = -1 if mid is None else mid
        else:
            self._subscribe_mid = -1
            self._loop.call_soon(self._subscribed, client, [])
        if self._config.ask_session_limits:
            self._limits = PROVISIONAL_LIMITS
            request_id = self.next_request_id()
            payload = tb.client_rpc_request("getSessionLimits", {})
            self._remember_own_rpc(request_id, payload)
            self._limits_request_id = request_id
            fut = self._loop.create_future()
            fut.add_done_callback(_retrieve)
            self._publish_on(client, tb.client_rpc_topic(request_id), payload, 1, fut)
            self._limits_handle = self._loop.call_later(self._config.limits_timeout, self._limits_timed_out, client)
        else:
            self._limits = DEFAULT_LIMITS

    def _on_subscribe(
        self,
        client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        if client is not self._client or mid != self._subscribe_mid:
            return
        self._subscribed(client, reasons)

    def _subscriptions(self) -> tuple[str, ...]:
        topics = self._config.subscriptions
        return tb.DOWNLINK_SUBSCRIPTIONS if topics is None else topics

    def _subscribed(self, client: mqtt.Client, reasons: list[ReasonCode]) -> None:
        if client is not self._client:
            return
        assert self._loop is not None
        if self._connack_handle is not None:
            self._connack_handle.cancel()
            self._connack_handle = None
        refused = [t for t, r in zip(self._subscriptions(), reasons, strict=False) if r.is_failure]
        if refused:
            self._log.warning("ThingsBoard refused the subscriptions %s: that downlink will not arrive", refused)
        self._stats.connects += 1
        self._connected_at = self._loop.time()
        self._failure_logged = False
        self._log.info("connected to ThingsBoard at %s:%d", self._config.host, self._config.port)
        self._set_state(SessionState.CONNECTED)
        self._notify_limits()

    def _on_disconnect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Properties | None
    ) -> None:
        if client is self._client:
            self._connection_lost(str(reason))

    def _on_publish(
        self, client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode, _props: Properties | None
    ) -> None:
        if client is not self._client:
            return
        fut = self._pending.pop(mid, None)
        if self._waiting:
            self._schedule_drain()
        if fut is None or fut.done():
            return
        if reason.is_failure:
            self._stats.failed_publishes += 1
            fut.set_exception(PublishRejected(str(reason)))
        else:
            self._stats.pubacks += 1
            fut.set_result(None)

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is not self._client:
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self._log.warning("ignoring a message whose topic is not UTF-8")
            return
        payload = bytes(msg.payload)
        rid = self._limits_request_id
        if rid is not None and topic == tb.DEVICE_RPC_RESPONSE + str(rid):
            self._limits_answered(payload)
            return
        if topic.startswith(tb.DEVICE_RPC_REQUEST):
            suffix = topic[len(tb.DEVICE_RPC_REQUEST) :]
            if suffix.isdigit() and self._own_rpc.get(int(suffix)) == payload:
                # Our own request, echoed by a plain broker (ThingsBoard does not echo). Only the same
                # id *and* the same bytes: the server's own request ids may well collide with ours.
                return
        handler = self._message_handler
        if handler is None:
            return
        try:
            handler(topic, payload)
        except Exception:
            self._log.exception("handling a message on %s failed", topic)

    # -- state --------------------------------------------------------------------------------

    def _publish_on(self, client: mqtt.Client, topic: str, payload: bytes, qos: int, fut: asyncio.Future[None]) -> None:
        info = client.publish(topic, payload, qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._stats.failed_publishes += 1
            fut.set_exception(ConnectionLost(mqtt.error_string(info.rc)))
            return
        self._stats.publishes += 1
        self._pending[info.mid] = fut
        n = len(self._pending)
        if n > self._stats.peak_in_flight:
            self._stats.peak_in_flight = n

    def _schedule_drain(self) -> None:
        # Not from inside paho's on_publish: paho is in the middle of its own bookkeeping there.
        if not self._drain_scheduled and self._waiting and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        client = self._client
        limit = self._limits.max_inflight_messages
        while self._waiting and client is not None and len(self._pending) < limit:
            topic, payload, qos, fut = self._waiting.popleft()
            self._publish_on(client, topic, payload, qos, fut)

    def _remember_own_rpc(self, request_id: int, payload: bytes) -> None:
        self._own_rpc[request_id] = payload
        if len(self._own_rpc) > 64:
            del self._own_rpc[next(iter(self._own_rpc))]

    def _rejected(self, reason: str) -> None:
        self._stats.rejections += 1
        if not self._rejection_logged:
            self._log.error(
                "ThingsBoard at %s:%d rejected the gateway's credentials (%s): check the access token or "
                "certificate, or re-provision; retrying about every %.0f s",
                self._config.host,
                self._config.port,
                reason,
                self._config.rejected_retry,
            )
            self._rejection_logged = True
        else:
            self._log.debug("credentials rejected again (%s)", reason)
        self._set_state(SessionState.CREDENTIALS_REJECTED)
        for listener in list(self._rejected_listeners):
            try:
                listener(reason)
            except Exception:
                self._log.exception("credentials-rejected listener failed")

    def _abort(self, reason: str) -> None:
        """Close the current connection from our side (timeouts, stop, errors)."""
        client = self._client
        if client is None:
            return
        sock = client.socket()
        self._unregister()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._connection_lost(reason)

    def _connection_lost(self, reason: str) -> None:
        assert self._loop is not None
        client, self._client = self._client, None
        self._unregister()
        for handle in (self._connack_handle, self._limits_handle):
            if handle is not None:
                handle.cancel()
        self._connack_handle = self._limits_handle = None
        self._limits_request_id = None
        if client is not None:
            client.drop_out_messages()
        pending, self._pending = self._pending, {}
        waiting, self._waiting = self._waiting, collections.deque()
        for fut in [*pending.values(), *(w[3] for w in waiting)]:
            if not fut.done():
                self._stats.failed_publishes += 1
                fut.set_exception(ConnectionLost(reason))
        if self._stopping:
            self._set_state(SessionState.STOPPED)
            return
        if self._state is SessionState.CREDENTIALS_REJECTED:
            delay = self._config.rejected_retry * random.uniform(0.5, 1.5)
            self._schedule_attempt(delay)
            return
        if self._state is SessionState.CONNECTED:
            self._stats.connection_losses += 1
            if self._loop.time() - self._connected_at >= self._config.stable_after:
                self._failures = 0
            delay = self._backoff()
            self._log.warning("ThingsBoard connection lost (%s); reconnecting in %.1f s", reason, delay)
            self._set_state(SessionState.DISCONNECTED)
            self._schedule_attempt(delay)
            return
        self._attempt_failed(reason)

    def _limits_answered(self, payload: bytes) -> None:
        if self._limits_handle is not None:
            self._limits_handle.cancel()
            self._limits_handle = None
        self._limits_request_id = None
        try:
            answer = json.loads(payload)
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            self._log.warning("getSessionLimits answer is not a JSON object: using defaults")
            self._set_limits(DEFAULT_LIMITS)
            return

        def positive(key: str, default: int) -> int:
            value = answer.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
            return default

        limits = SessionLimits(
            positive("maxPayloadSize", tb.DEFAULT_MAX_PAYLOAD_SIZE),
            positive("maxInflightMessages", tb.DEFAULT_MAX_INFLIGHT_MESSAGES),
            LimitsSource.SERVER,
            answer,
        )
        self._log.info(
            "session limits: maxPayloadSize %d, maxInflightMessages %d",
            limits.max_payload_size,
            limits.max_inflight_messages,
        )
        self._set_limits(limits)

    def _limits_timed_out(self, client: _Client) -> None:
        self._limits_handle = None
        if client is not self._client:
            return
        self._limits_request_id = None
        self._log.warning(
            "ThingsBoard did not answer getSessionLimits within %.0f s: using maxPayloadSize %d, "
            "maxInflightMessages %d",
            self._config.limits_timeout,
            DEFAULT_LIMITS.max_payload_size,
            DEFAULT_LIMITS.max_inflight_messages,
        )
        self._set_limits(DEFAULT_LIMITS)

    def _set_limits(self, limits: SessionLimits) -> None:
        self._limits = limits
        self._schedule_drain()
        self._notify_limits()

    def _notify_limits(self) -> None:
        for listener in list(self._limits_listeners):
            try:
                listener(self._limits)
            except Exception:
                self._log.exception("limits listener failed")

    def _set_state(self, state: SessionState) -> None:
        if state is self._state:
            return
        self._state = state
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                self._log.exception("state listener failed")
        for states, fut in list(self._state_waiters):
            if state in states and not fut.done():
                fut.set_result(state)

    def _tick(self) -> None:
        assert self._loop is not None
        if self._stopping:
            return
        client = self._client
        if client is not None and client.socket() is not None:
            try:
                client.loop_misc()
            except Exception:
                self._log.exception("MQTT keepalive processing failed")
                if client is self._client:
                    self._abort("internal error in keepalive")
        self._tick_handle = self._loop.call_later(self._config.misc_interval, self._tick)


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
