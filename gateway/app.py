"""Composition root: builds the gateway's parts from the configuration, runs and supervises them.

Start-up order matters to systemd: READY=1 is sent only once the outbox is open and every local
listener is bound; the uplink may still be connecting (a gateway with a dead 3G link is "ready":
it serves its devices and queues their data). Shutdown on SIGTERM/SIGINT: stop the producers,
make everything accepted durable, give in-flight publishes a moment to be acknowledged, close the
session and the outbox. What is not acknowledged stays queued and is replayed after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway import __version__, config, logs, sysinfo
from gateway.control import ControlServer
from gateway.core.clock import Clock
from gateway.core.hub import DeviceHub
from gateway.demo import SyntheticDevices
from gateway.hw.backend import open_backend
from gateway.hw.button import Button
from gateway.hw.led import StatusLed, pattern_for
from gateway.lwm2m.bootstrap import BootstrapServer, BootstrapSettings, BootstrapStore, parse_config
from gateway.lwm2m.bootstrap import cli as bootstrap_cli
from gateway.lwm2m.bridge import BridgeConfig, LwM2mBridge, ProfileError, load_profiles
from gateway.lwm2m.model.registry import ModelRegistry
from gateway.lwm2m.security import SecurityBinding
from gateway.lwm2m.server import LwM2mServer, ServerConfig
from gateway.notify import Notifier
from gateway.serial.port import SerialLink, links_telemetry
from gateway.serial.sensors import SerialSensorAdapter
from gateway.store import credentials as cred_store
from gateway.store.atomic import write_atomic
from gateway.store.clients import (
    RPC_METHOD,
    ClientStore,
    ClientStoreError,
    Source,
    check_client_entries,
    control_commands,
    follow_dtls,
    rpc_handler,
)
from gateway.store.outbox import Outbox, OutboxError, OutboxLimits
from gateway.transport.dtls import DtlsServer, RpkKeyPair, TrustStore, X509Credentials
from gateway.transport.dtls_coap import DtlsTransport
from gateway.transport.gnutls import GnuTLSError, GnuTLSUnavailable
from gateway.transport.slipmux import SlipmuxTransport
from gateway.upstream.device_sessions import DeviceModeSettings, DeviceSessions, provision_keys
from gateway.upstream.downlink import Downlink
from gateway.upstream.provisioning import (
    Phase,
    Provisioner,
    ProvisioningNotConfigured,
    ProvisionSettings,
    resolve_device_name,
)
from gateway.upstream.session import (
    X509,
    AccessToken,
    Credentials,
    MqttBasic,
    MqttSession,
    SessionConfig,
    SessionState,
    TlsSettings,
)
from gateway.upstream.uplink import Uplink

log = logging.getLogger("gateway.app")

#: How long a clean stop waits for in-flight publishes to be acknowledged.
DRAIN_TIMEOUT_S = 5.0


class StartupError(Exception):
    """The gateway cannot run at all; the message is the one line systemd and the operator see."""


def session_credentials(cfg: config.Config) -> Credentials | None:
    """The MQTT credentials the configuration names, or None when provisioning must supply them."""
    tb_cfg = cfg.thingsboard
    match tb_cfg.credentials:
        case "access_token":
            return AccessToken(tb_cfg.token)
        case "mqtt_basic":
            return MqttBasic(client_id=tb_cfg.client_id, username=tb_cfg.username, password=tb_cfg.password)
        case "x509":
            return X509(cert_file=tb_cfg.cert_file, key_file=tb_cfg.key_file)
    return None


def session_config(cfg: config.Config, credentials: Credentials) -> SessionConfig:
    t = cfg.thingsboard
    tls = None
    if t.tls or isinstance(credentials, X509):
        tls = TlsSettings(ca_file=t.ca_file or None)
    return SessionConfig(
        host=t.host,
        port=t.port,
        credentials=credentials,
        tls=tls,
        keepalive=t.keepalive_s,
        reconnect_min=t.reconnect_min_s,
        reconnect_max=t.reconnect_max_s,
        rejected_retry=t.rejected_retry_s,
        limits_timeout=t.session_limits_timeout_s,
    )


class Gateway:
    def __init__(self, cfg: config.Config, ring: logs.RingBuffer | None = None) -> None:
        self.cfg = cfg
        self.ring = ring or logs.RingBuffer()
        self.notifier = Notifier()
        self.clock = Clock(
            sync_marker=Path(cfg.clock.sync_marker) if cfg.clock.sync_marker else None, trust=cfg.clock.trust
        )
        self.started_mono = time.monotonic()
        self.cpu = sysinfo.CpuMeter()
        self.outbox: Outbox | None = None
        self.hub: DeviceHub | None = None
        self.session: MqttSession | None = None
        self.uplink: Uplink | None = None
        self.downlink: Downlink | None = None
        self.control = ControlServer(cfg.state_path(cfg.gateway.control_socket))
        self.demo: SyntheticDevices | None = None
        self.lwm2m: LwM2mServer | None = None
        self.bridge: LwM2mBridge | None = None
        self.device_sessions: DeviceSessions | None = None  # per-device mode (profiles' [upstream] mode)
        self.dtls: DtlsServer | None = None
        self.serial: SerialSensorAdapter | None = None
        self.slipmux: list[SlipmuxTransport] = []
        self.dtls_transport: DtlsTransport | None = None
        self.bootstrap: BootstrapServer | None = None
        self.bootstrap_store: BootstrapStore | None = None
        self._unfollow_dtls: Any = None
        self.clients: ClientStore | None = None
        self.security: SecurityBinding | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._provisioning = "not needed"
        self._last_status_write = 0.0
        self._own_ring = False
        self.gpio = open_backend(cfg.gpio.enabled)
        self.led = StatusLed(self.gpio, cfg.gpio.led_pin, active_low=cfg.gpio.led_active_low)
        self.button = Button(
            self.gpio,
            cfg.gpio.button_pin,
            active_low=cfg.gpio.active_low,
            debounce_s=cfg.gpio.debounce_ms / 1000,
            hold_s=cfg.gpio.reset_hold_s,
            on_short=self._on_button_short,
            on_long=self._on_button_long,
        )
        self.provisioner: Provisioner | None = None
        self._provisioning_task: asyncio.Task[None] | None = None
        self._upstream_tasks: list[asyncio.Task[Any]] = []

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        root = logging.getLogger()
        if self.ring not in root.handlers:  # in-process use (tests): logs.setup() was not called
            root.addHandler(self.ring)
            self._own_ring = True
        self.led.start()
        self.button.start()
        self._prepare_state_dir()
        limits = OutboxLimits(
            max_bytes=cfg.outbox.max_bytes,
            max_age_s=cfg.outbox.max_age_days * 86400,
            unsynced=cfg.outbox.unsynced,
            hold_max_s=cfg.outbox.hold_max_s,
        )
        try:
            self.outbox = await Outbox.open(
                cfg.outbox_path,
                limits=limits,
                clock=self.clock,
                commit_interval=cfg.outbox.commit_interval_ms / 1000,
                commit_records=cfg.outbox.commit_records,
            )
        except OutboxError as exc:
            raise StartupError(str(exc)) from None
        self.hub = DeviceHub(self.outbox)
        self._open_clients()

        credentials = session_credentials(cfg)
        if credentials is None:
            stored = cred_store.load(cfg.gateway.state_dir)
            credentials = stored.credentials if stored is not None else None
            if stored is not None:
                self._provisioning = f"provisioned as {stored.device_name}"
        if credentials is not None:
            self._start_upstream(credentials)
        else:
            self._start_provisioning()

        if cfg.lwm2m.enabled:
            await self._start_lwm2m()
            if cfg.lwm2m.bootstrap.enabled:
                await self._start_bootstrap()

        self.control.command("status", self._cmd_status)
        self.control.command("devices", self._cmd_devices)
        self.control.command("provision", self._cmd_provision)
        try:
            await self.control.start()
        except OSError as exc:
            raise StartupError(f"cannot open the control socket {self.control.path}: {exc.strerror}") from None

        await self._start_serial()

        if cfg.demo.synthetic_devices:
            self.demo = SyntheticDevices(
                self.hub, cfg.demo.synthetic_devices, cfg.demo.interval_s, ack_file=cfg.demo.ack_file
            )
            await self.demo.start()

        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._self_telemetry(), name="self-telemetry"))
        self.notifier.ready(self.status_line())
        self.notifier.start_watchdog()
        log.info("gateway %s ready (state in %s)", __version__, cfg.gateway.state_dir)

    def _open_clients(self) -> None:
        """The LwM2M clients' credentials: the store, synced with [[lwm2m.clients]]; the security binding."""
        cfg = self.cfg
        try:
            self.clients = ClientStore.open(cfg.state_path(cfg.lwm2m.clients_db))
            base_dir = Path(cfg.sources[0]).parent if cfg.sources and cfg.sources[0] != "environment" else None
            entries, _ = check_client_entries(cfg.lwm2m.clients, label="configuration", base_dir=base_dir)
            synced = self.clients.sync_config(entries)  # (config.load has reported every problem)
        except ClientStoreError as exc:
            raise StartupError(str(exc)) from None
        log.info(
            "LwM2M clients: %d known; from the configuration file %d added, %d updated, %d removed",
            len(self.clients), len(synced.added), len(synced.updated), len(synced.removed),
        )
        self.security = SecurityBinding(self.clients, allow_unknown_nosec=cfg.lwm2m.admit_unknown_nosec)
        for name, fn in control_commands(self.clients).items():
            self.control.command(name, fn)

    async def _start_lwm2m(self) -> None:
        lw = self.cfg.lwm2m
        models = ModelRegistry()
        if lw.models_dir:
            for problem in models.load_dir(Path(lw.models_dir)):
                log.error("object models: %s", problem)
        profiles_dir = self.cfg.config_path(lw.profiles_dir)
        try:
            profiles = load_profiles(profiles_dir, models)
        except ProfileError as exc:
            raise StartupError(f"LwM2M profiles: {exc.problems[0]}" + (
                f" (and {len(exc.problems) - 1} more: edge-gateway profiles check {profiles_dir})"
                if len(exc.problems) > 1 else "")) from None
        log.info(
            "LwM2M profiles: %s (default %s) from %s",
            ", ".join(p.name for p in profiles) or "none", profiles.default.name, profiles_dir,
        )
        self.lwm2m = LwM2mServer(
            models=models,
            config=ServerConfig(
                admit_nosec=lw.admit_unknown_nosec,
                request_timeout=lw.request_timeout_s,
                queue_awake_time=lw.queue_awake_s,
                max_held_per_device=lw.max_held_per_device,
                max_held_total=lw.max_held_total,
                udp_receive_buffer=lw.receive_buffer,
            ),
            registration_check=self.security,
        )
        assert self.hub is not None
        await self._start_device_sessions(profiles)
        # The bridge listens from construction, so that no registration escapes it.
        self.bridge = LwM2mBridge(self.lwm2m, self.hub, profiles, config=BridgeConfig(workers=lw.bridge_workers))
        await self.bridge.start()
        try:
            await self.lwm2m.start((lw.bind, lw.port))
        except OSError as exc:
            await self.bridge.stop()
            self.lwm2m = self.bridge = None
            raise StartupError(f"LwM2M server cannot listen on [{lw.bind}]:{lw.port}: {exc.strerror or exc}") from None
        host, port = self.lwm2m.address[:2]
        log.info("LwM2M server listening on [%s]:%d (CoAP/UDP)", host, port)
        if lw.dtls:
            await self._start_dtls()

    async def _start_device_sessions(self, profiles: Any) -> None:
        """Per-device mode, when some profile asks for it: its own outbox, sessions and credentials."""
        keys = provision_keys({p.name: p.upstream for p in profiles})
        if not keys:
            return
        assert self.hub is not None
        cfg, lw, t = self.cfg, self.cfg.lwm2m, self.cfg.thingsboard
        settings = DeviceModeSettings(
            host=t.host, port=t.port, tls=TlsSettings(ca_file=t.ca_file or None) if t.tls else None,
            keepalive=t.keepalive_s, reconnect_min=t.reconnect_min_s, reconnect_max=t.reconnect_max_s,
            rejected_retry=t.rejected_retry_s, limits_timeout=t.session_limits_timeout_s,
            credentials_dir=cfg.state_path(lw.device_credentials_dir), max_sessions=lw.device_sessions_max,
            provision_timeout_s=cfg.provisioning.timeout_s, provision_retry_s=cfg.provisioning.retry_s,
        )  # fmt: skip
        assert self.outbox is not None
        try:
            self.device_sessions = await DeviceSessions.open(
                cfg.state_path(lw.device_outbox), settings, keys, self.hub, limits=self.outbox.limits,
                clock=self.clock, commit_interval=cfg.outbox.commit_interval_ms / 1000,
                commit_records=cfg.outbox.commit_records,
            )  # fmt: skip
        except OutboxError as exc:
            raise StartupError(str(exc)) from None
        self.hub.device_route = self.device_sessions
        await self.device_sessions.start()
        log.info("per-device mode for profiles %s (at most %d sessions)", ", ".join(sorted(keys)),
                 settings.max_sessions)

    async def _start_dtls(self) -> None:
        assert self.lwm2m is not None and self.clients is not None
        lw = self.cfg.lwm2m
        try:
            rpk = x509 = None
            if lw.server_key_file:
                key = Path(lw.server_key_file).read_bytes()
                rpk = RpkKeyPair.from_pem(key)
                if lw.server_cert_file:
                    x509 = X509Credentials(Path(lw.server_cert_file).read_bytes(), key)
            trust = None
            if lw.trust_ca_file or lw.trust_ca_dir:
                trust = TrustStore(ca_file=lw.trust_ca_file or None, ca_dir=lw.trust_ca_dir or None)
            self.clients.set_server_credentials(rpk=rpk, x509=x509, trust=trust)
            self.dtls = DtlsServer(self.clients)
        except (OSError, ValueError, GnuTLSError, GnuTLSUnavailable) as exc:
            raise StartupError(f"DTLS: {exc}") from None
        self._unfollow_dtls = follow_dtls(self.clients, self.dtls)
        loop = asyncio.get_running_loop()
        dtls = self.dtls

        async def transport(mman: Any) -> DtlsTransport:
            return await DtlsTransport.create_server_transport(
                mman, log, loop, bind=(lw.bind, lw.dtls_port), server=dtls, receive_buffer=lw.receive_buffer
            )

        try:
            _, self.dtls_transport = await self.lwm2m.add_transport(transport)
        except OSError as exc:
            where = f"[{lw.bind}]:{lw.dtls_port}"
            raise StartupError(f"LwM2M DTLS cannot listen on {where}: {exc.strerror or exc}") from None
        modes = "PSK" + (", RPK" if rpk else "") + (", X.509" if x509 else "")
        log.info("LwM2M server listening on [%s]:%d (CoAP/DTLS: %s)", lw.bind, self.dtls_transport.port, modes)

    async def _start_bootstrap(self) -> None:
        """The LwM2M bootstrap server on its own ports ([lwm2m.bootstrap]); it writes generated
        credentials into the clients store the LwM2M server's DTLS and binding use."""
        assert self.lwm2m is not None and self.clients is not None
        lw, bs = self.cfg.lwm2m, self.cfg.lwm2m.bootstrap
        try:
            store = BootstrapStore.open(self.cfg.state_path(bs.db))
            store.sync_config([parse_config(c, source=Source.CONFIG) for c in bs.configs])
        except (ClientStoreError, ValueError) as exc:  # (config.load has reported every problem)
            raise StartupError(f"bootstrap: {exc}") from None
        self.bootstrap_store = store
        clients = self.clients
        store.set_server_credentials(rpk=clients.server_rpk, x509=clients.server_x509, trust=clients.trust)
        dtls_port = self.dtls_transport.port if self.dtls_transport is not None else lw.dtls_port
        settings = BootstrapSettings(
            server_host=bs.server_host, lwm2m_port=self.lwm2m.address[1], lwm2m_dtls_port=dtls_port,
            request_timeout=bs.request_timeout_s, retries=bs.retries, max_active=bs.max_active,
            receive_buffer=lw.receive_buffer,
        )
        self.bootstrap = BootstrapServer(store, self.clients, settings)
        try:
            port = await self.bootstrap.start((bs.bind, bs.port))
            secure = await self.bootstrap.start_dtls((bs.bind, bs.dtls_port), DtlsServer(store)) if bs.dtls else None
        except (OSError, GnuTLSError, GnuTLSUnavailable) as exc:
            raise StartupError(f"LwM2M bootstrap server cannot listen on [{bs.bind}]: {exc}") from None
        for name, fn in bootstrap_cli.control_commands(store, lambda: self.lwm2m).items():
            self.control.command(name, fn)
        self._register_bootstrap_rpcs()
        log.info("LwM2M bootstrap server listening on [%s]:%d (NoSec)%s; %d configurations", bs.bind, port,
                 f" and :{secure} (DTLS)" if secure else "", len(store.configs()))

    def _register_bootstrap_rpcs(self) -> None:
        if self.downlink is not None and self.bootstrap_store is not None:
            for method, handler in bootstrap_cli.rpc_handlers(self.bootstrap_store, lambda: self.lwm2m).items():
                self.downlink.register_method(method, handler)

    async def _start_serial(self) -> None:
        """Plain line sensors through their adapter; LwM2M-over-serial ports as LwM2M transports."""
        assert self.hub is not None
        ports = self.cfg.serial.ports
        lines = [p for p in ports if p.protocol == "lines"]
        if lines:
            self.serial = SerialSensorAdapter(self.hub, lines, clock=self.clock)
            await self.serial.start()
        loop = asyncio.get_running_loop()
        for p in (p for p in ports if p.protocol == "slipmux"):
            assert self.lwm2m is not None  # check-config refuses slipmux ports without the LwM2M server
            link = SerialLink(p.name, p.link_settings(), reopen_min_s=p.reopen_min_s, reopen_max_s=p.reopen_max_s)

            async def factory(mman: Any, link: SerialLink = link, size: int = p.max_message_size) -> SlipmuxTransport:
                return await SlipmuxTransport.create(mman, log, loop, link=link, max_message_size=size)

            _, transport = await self.lwm2m.add_transport(factory)
            transport.notification_sink = self.lwm2m.exchanges
            self.slipmux.append(transport)
            log.info("LwM2M over serial on %s (%s)", p.name, p.path)

    def _prepare_state_dir(self) -> None:
        state = self.cfg.gateway.state_dir
        try:
            state.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StartupError(f"state directory {state}: {exc.strerror}") from None
        if not os.access(state, os.W_OK | os.X_OK):
            raise StartupError(f"state directory {state} is not writable by uid {os.getuid()}")

    def _start_upstream(self, credentials: Credentials) -> None:
        assert self.outbox is not None and self.hub is not None
        self.session = MqttSession(session_config(self.cfg, credentials))
        self.uplink = Uplink(self.outbox, self.session)
        self.downlink = Downlink(self.session, self.hub)
        self.hub.attribute_source = self.downlink
        self.hub.delivery = self.uplink
        self.downlink.register_method("status", self._rpc_status)
        self.downlink.register_method("getLogs", self._rpc_get_logs)
        if self.clients is not None:
            self.downlink.register_method(RPC_METHOD, rpc_handler(self.clients))
        self.downlink.register_method("reprovision", self._rpc_reprovision)
        self.downlink.register_method("restart", self._rpc_restart)
        self._register_bootstrap_rpcs()
        self.downlink.add_gateway_attributes_listener(self._on_gateway_attributes)
        self.session.add_state_listener(self._on_session_state)
        self.session.start()
        loop = asyncio.get_running_loop()
        self._upstream_tasks = [
            loop.create_task(self.uplink.run(), name="uplink"),
            loop.create_task(self._report_attributes(), name="client-attributes"),
        ]
        self._update_led()

    async def _stop_upstream(self) -> None:
        if self.uplink is not None:
            self.uplink.close()
        if self.hub is not None:
            self.hub.delivery = None
        for task in self._upstream_tasks:
            task.cancel()
        for task in self._upstream_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._upstream_tasks = []
        if self.downlink is not None:
            await self.downlink.close()
        if self.session is not None:
            await self.session.stop()
        if self.hub is not None:
            self.hub.attribute_source = None
        self.session = self.uplink = self.downlink = None

    async def _on_gateway_attributes(self, update: Any) -> None:
        """Remote management: shared attributes ``logLevel`` and ``config`` of the gateway device.

        A valid change is applied at once and acknowledged with the client attribute
        ``configStatus`` = "applied"; an invalid one is refused as a whole, the old configuration
        stays, and ``configStatus`` says why.
        """
        changes: dict[str, Any] = {}
        values = dict(update.values)
        if "logLevel" in values:
            level = values["logLevel"]
            changes.setdefault("gateway", {})["log_level"] = level.lower() if isinstance(level, str) else level
        if "config" in values:
            raw = values["config"]
            if isinstance(raw, str):  # ThingsBoard's UI stores JSON attributes as text too
                try:
                    raw = json.loads(raw)
                except ValueError:
                    raw = None
            if not isinstance(raw, dict):
                await self._report_config_status("refused: config: expected a JSON object")
                return
            for section, items in raw.items():
                if isinstance(items, dict) and isinstance(changes.get(section), dict):
                    changes[section].update(items)
                else:
                    changes[section] = items
        if not changes:
            return
        cfg, problems = config.apply_runtime_changes(self.cfg, changes)
        if problems:
            log.warning("remote configuration refused: %s", "; ".join(problems))
            await self._report_config_status("refused: " + "; ".join(problems))
            return
        self.cfg = cfg
        logs.set_level(cfg.gateway.log_level)
        log.info("remote configuration applied: %s", json.dumps(changes, sort_keys=True))
        await self._report_config_status("applied")

    async def _report_config_status(self, text: str) -> None:
        if self.hub is not None:
            with contextlib.suppress(OutboxError):
                await self.hub.self_attributes(
                    {"configStatus": text, "logLevel": self.cfg.gateway.log_level,
                     "telemetryIntervalS": self.cfg.gateway.telemetry_interval_s}
                )  # fmt: skip

    # -- provisioning -------------------------------------------------------------------------

    def _start_provisioning(self) -> None:
        self.provisioner = Provisioner(ProvisionSettings.from_config(self.cfg), resolve_device_name(self.cfg))
        self.provisioner.add_listener(self._on_provisioning)
        self._provisioning = self.provisioner.status
        self._update_led()
        self._provisioning_task = asyncio.get_running_loop().create_task(self._provision(), name="provisioning")

    async def _provision(self) -> None:
        assert self.provisioner is not None
        try:
            creds = await self.provisioner.run()
        except ProvisioningNotConfigured as exc:
            # Status and LED say so; devices are still served and their data queued.
            log.warning("gateway: not provisioned: %s", exc)
            return
        self._provisioning = f"provisioned as {creds.device_name}"
        self._start_upstream(creds.credentials)

    def _on_provisioning(self, _phase: Phase, status: str) -> None:
        self._provisioning = status
        self._update_led()
        self.notifier.status(self.status_line())
        self._write_status(force=True)

    async def reprovision(self) -> str:
        """Forget the stored credentials and provision again (button, CLI, RPC); queued data stays."""
        if session_credentials(self.cfg) is not None:
            raise RuntimeError("credentials come from the configuration file: edit it instead of re-provisioning")
        if self._provisioning_task is not None:
            self._provisioning_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._provisioning_task
        await self._stop_upstream()
        await asyncio.to_thread(cred_store.forget, self.cfg.gateway.state_dir)
        log.warning("gateway: credentials forgotten, provisioning again")
        self._start_provisioning()
        return self._provisioning

    # -- GPIO ---------------------------------------------------------------------------------

    def _update_led(self) -> None:
        self.led.set(
            pattern_for(
                provisioning=self.provisioner.phase if self.provisioner is not None and self.session is None else None,
                uplink=self.session.state if self.session is not None else None,
            )
        )

    def _on_button_short(self) -> None:
        log.info("button: %s", self.status_line())
        if self.session is not None:
            self.session.reconnect_now()

    def _on_button_long(self) -> None:
        log.warning("button: held, factory reset (credentials forgotten, queued data kept)")
        self._tasks.append(asyncio.get_running_loop().create_task(self._reprovision_quietly(), name="factory-reset"))

    async def _reprovision_quietly(self) -> None:
        try:
            await self.reprovision()
        except RuntimeError as exc:
            log.warning("factory reset refused: %s", exc)

    def handle_signals(self) -> None:
        """SIGTERM/SIGINT request a clean stop, also while still starting."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)

    async def run_until_stopped(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self.notifier.stopping()
        log.info("gateway: stopping")
        if self.demo is not None:
            await self.demo.stop()
        if self.serial is not None:
            await self.serial.stop()
        await self.control.close()
        if self.bootstrap is not None:
            await self.bootstrap.stop()
        if self.bootstrap_store is not None:
            self.bootstrap_store.close()
        if self._unfollow_dtls is not None:
            self._unfollow_dtls()
        if self.lwm2m is not None:
            await self.lwm2m.stop()
        if self.bridge is not None:  # after the server: every endpoint's disconnect is written
            await self.bridge.stop()
        if self.device_sessions is not None:  # after the bridge: nothing appends any more
            await self.device_sessions.stop(DRAIN_TIMEOUT_S)
        if self.clients is not None:
            self.clients.close()
        if self.outbox is not None:
            with contextlib.suppress(OutboxError):
                await self.outbox.flush()
        if self.uplink is not None and self.session is not None and self.session.state is SessionState.CONNECTED:
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while self.uplink.stats().in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if self._provisioning_task is not None:
            self._provisioning_task.cancel()
        for task in [*self._tasks, *([self._provisioning_task] if self._provisioning_task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._write_status(force=True)
        await self._stop_upstream()
        await self.led.close()
        self.button.close()
        self.gpio.close()
        if self.outbox is not None:
            await self.outbox.close()
        await self.notifier.close()
        log.info("gateway: stopped")
        if self._own_ring:
            logging.getLogger().removeHandler(self.ring)

    # -- reporting ----------------------------------------------------------------------------

    def _on_session_state(self, state: SessionState) -> None:
        self._update_led()
        self.notifier.status(self.status_line())
        self._write_status()

    def uplink_state(self) -> str:
        if self.session is None:
            return "not provisioned"
        return self.session.state.name.lower().replace("_", " ")

    def status_line(self) -> str:
        q = self.outbox.stats() if self.outbox is not None else None
        queued = q.records if q is not None else 0
        if self.session is None:
            return f"{self._provisioning}, {queued} queued"
        state = self.uplink_state()
        if state == "connected":
            return f"connected to {self.cfg.thingsboard.host}, {queued} queued"
        if state == "credentials rejected":
            return f"credentials rejected by {self.cfg.thingsboard.host}, {queued} queued"
        return f"offline ({state}), {queued} queued"

    def status(self) -> dict[str, Any]:
        q = self.outbox.stats() if self.outbox is not None else None
        return {
            "version": __version__,
            "running": True,
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "uplink": self.uplink_state(),
            "upstream": f"{self.cfg.thingsboard.host}:{self.cfg.thingsboard.port}",
            "provisioning": self._provisioning,
            "outbox": asdict(q) if q is not None else {},
            "uplink_stats": asdict(self.uplink.stats()) if self.uplink is not None else {},
            "session_stats": asdict(self.session.stats()) if self.session is not None else {},
            "devices_online": self.hub.online if self.hub is not None else 0,
            "lwm2m_registered": len(self.lwm2m.registrations) if self.lwm2m is not None else 0,
            "lwm2m": self.lwm2m.stats() if self.lwm2m is not None else {},
            "lwm2m_bridge": asdict(self.bridge.stats()) if self.bridge is not None else {},
            "lwm2m_bootstrap": self.bootstrap.stats() if self.bootstrap is not None else {},
            "device_sessions": self.device_sessions.status() if self.device_sessions is not None else {},
            "lwm2m_clients": len(self.clients) if self.clients is not None else 0,
            "lwm2m_security": self.security.stats() if self.security is not None else {},
            "serial": [*(self.serial.status() if self.serial else []), *(t.stats() for t in self.slipmux)],
            "clock_synced": self.clock.synced(),
            "last_errors": list(self.ring.errors),
        }

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status_write < 10.0:
            return
        self._last_status_write = now
        status = self.status()
        status["written_at_ms"] = int(time.time() * 1000)
        try:
            write_atomic(self.cfg.state_path(self.cfg.gateway.status_file), json.dumps(status).encode())
        except OSError as exc:
            log.debug("status file not written: %s", exc)

    async def _cmd_status(self, _req: dict[str, Any]) -> Any:
        return self.status()

    async def _cmd_devices(self, _req: dict[str, Any]) -> Any:
        assert self.hub is not None
        out: list[dict[str, Any]] = []
        registered: set[str] = set()
        if self.lwm2m is not None:
            for d in self.lwm2m.devices():
                registered.add(d.endpoint)
                entry = self.hub.entry(d.endpoint)
                out.append({
                    "name": d.endpoint, "adapter": "lwm2m", "address": d.address,
                    "mode": f"{d.binding} {d.lwm2m_version}", "lifetime_left_s": round(d.lifetime_left),
                    "last_seen_ms": int(d.last_seen * 1000), "objects": list(d.objects),
                    "observations": d.observations, "held_requests": d.held_requests,
                    "profile": "" if entry is None else entry.profile,
                })  # fmt: skip
        for dev in self.hub.devices():
            if dev.name not in registered:
                out.append({"name": dev.name, "profile": dev.profile, "adapter": dev.adapter.name})
        return out

    async def _cmd_provision(self, req: dict[str, Any]) -> Any:
        if not req.get("force"):
            return {"provisioning": self._provisioning, "uplink": self.uplink_state()}
        try:
            return {"provisioning": await self.reprovision()}
        except RuntimeError as exc:
            raise ValueError(str(exc)) from None

    async def _rpc_reprovision(self, _params: Any) -> Any:
        # Answer first, then drop the session the answer travels on.
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, lambda: self._tasks.append(loop.create_task(self._reprovision_quietly())))
        return {"reprovisioning": True}

    async def _rpc_restart(self, _params: Any) -> Any:
        # systemd (Restart=always) starts the service again; queued data is replayed.
        asyncio.get_running_loop().call_later(0.5, self.request_stop)
        return {"restarting": True}

    async def _rpc_status(self, _params: Any) -> Any:
        return self.status()

    async def _rpc_get_logs(self, params: Any) -> Any:
        n = 100
        if isinstance(params, dict) and isinstance(params.get("lines"), int):
            n = max(1, min(500, params["lines"]))
        elif isinstance(params, int):
            n = max(1, min(500, params))
        return {"lines": list(self.ring.lines)[-n:]}

    def self_telemetry(self) -> dict[str, Any]:
        q = self.outbox.stats() if self.outbox is not None else None
        values: dict[str, Any] = {
            "uptimeS": round(time.monotonic() - self.started_mono),
            "uplinkConnected": self.uplink_state() == "connected",
            "devicesOnline": self.hub.online if self.hub is not None else 0,
            "cpuPercent": self.cpu.percent(),
        }
        if q is not None:
            values.update(
                queueRecords=q.records,
                queueBytes=q.bytes,
                queueOldestAgeS=(round(time.time() - q.oldest_ts_ms / 1000) if q.oldest_ts_ms else 0),
                recordsAcked=q.acked,
                recordsDropped=sum(q.dropped.values()),
                recordsRejected=q.rejected,
            )
        if self.uplink is not None:
            u = self.uplink.stats()
            values.update(recordsSent=u.records_sent, publishes=u.publishes, resends=u.resends)
        if self.security is not None:
            values.update(self.security.telemetry())
        if self.bootstrap is not None:
            b = self.bootstrap.stats()
            values.update(bootstrapsDone=b.get("succeeded", 0), bootstrapsFailed=b.get("failed", 0),
                          bootstrapsActive=b.get("active", 0))
        if self.serial is not None or self.slipmux:
            links = [p.link for p in self.serial.ports] if self.serial is not None else []
            links += [t.link for t in self.slipmux if isinstance(t.link, SerialLink)]
            values.update(links_telemetry(links))
            if self.serial is not None:
                values.update(self.serial.line_telemetry())
        for key, reader in (
            ("rssBytes", sysinfo.rss_bytes),
            ("memAvailableBytes", sysinfo.memory_available_bytes),
            ("socTemperatureC", sysinfo.soc_temperature_c),
            ("loadAverage", sysinfo.load_average),
        ):
            v = reader()
            if v is not None:
                values[key] = v
        return values

    async def _self_telemetry(self) -> None:
        assert self.hub is not None
        while True:
            await asyncio.sleep(self.cfg.gateway.telemetry_interval_s)
            try:
                await self.hub.self_telemetry_nowait(self.self_telemetry())
            except OutboxError as exc:
                log.warning("gateway telemetry not queued: %s", exc)
            self.notifier.status(self.status_line())
            self._write_status()

    async def _report_attributes(self) -> None:
        """Client attributes of the gateway device, once per start (queued like everything else)."""
        assert self.hub is not None
        attrs = {
            "version": __version__,
            "addresses": ",".join(sysinfo.addresses()),
            "boardSerial": sysinfo.board_serial() or "",
        }
        with contextlib.suppress(OutboxError):
            await self.hub.self_attributes(attrs)


async def _amain(cfg: config.Config, ring: logs.RingBuffer) -> int:
    gw = Gateway(cfg, ring)
    gw.handle_signals()
    try:
        await gw.start()
    except StartupError as exc:
        log.error("edge-gateway cannot start: %s", exc)
        gw.notifier.send(f"STATUS=cannot start: {exc}")
        if gw.outbox is not None:
            await gw.outbox.close()
        return 1
    try:
        await gw.run_until_stopped()
    finally:
        await gw.stop()
    return 0


def main(cfg: config.Config) -> int:
    ring = logs.setup(cfg.gateway.log_level)
    return asyncio.run(_amain(cfg, ring))


__all__ = ["Gateway", "StartupError", "main"]
