"""``edge-gateway``: run the service and talk to the running one.

    edge-gateway run [-c FILE]            the service's main job (systemd runs this)
    edge-gateway check-config [FILE]      every error with its key path; exit 1 if any
    edge-gateway status [--json]          uplink, queue, endpoints: asked from the running service
    edge-gateway devices [--json]         devices the running service knows
    edge-gateway clients add|remove|list  LwM2M clients' credentials (keys never echoed)
    edge-gateway bootstrap list|show|add|remove|trigger  LwM2M bootstrap configurations, last bootstraps
    edge-gateway profiles import|check    LwM2M device profiles: convert ThingsBoard's JSON, validate
    edge-gateway version

Output is for people by default and JSON with ``--json``. Anything that takes longer than a second
shows its progress on stderr (gateway/progress.py). Exit codes: 0 ok, 1 error the user can
fix (the message says how), 2 usage, 3 the service is not running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway import __version__, config, control
from gateway.lwm2m.bootstrap import cli as bootstrap_cli
from gateway.lwm2m.bridge import tbprofile_import as profiles_cli
from gateway.progress import Progress
from gateway.store import clients as clients_cli

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


def _config_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("EDGE_GATEWAY_CONFIG")
    return Path(env) if env else config.DEFAULT_PATH


def _load_or_exit(path: Path) -> config.Config:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(f"edge-gateway: invalid configuration: {exc.one_line()}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.explain:
        from gateway.serial.config import explain as explain_serial

        print("\n".join(config.explain() + explain_serial()))
        return EXIT_OK
    path = _config_path(args.file)
    try:
        with Progress(f"checking {path}"):
            cfg = config.load(path)
    except config.ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(config.redacted(cfg), indent=2))
    else:
        print(f"{path}: ok ({', '.join(cfg.sources) or 'defaults only'})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import main as run_gateway  # imported here: the other commands start faster

    cfg = _load_or_exit(_config_path(args.config))
    return run_gateway(cfg)


def _ask(cfg: config.Config, cmd: str) -> Any:
    sock = cfg.state_path(cfg.gateway.control_socket)
    try:
        with Progress(f"asking the service ({cmd})"):
            return control.ask(sock, cmd)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        print(f"edge-gateway: permission denied on {sock}: run as root or as the service's user",
              file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None


def _age(ms: float | None) -> str:
    if ms is None:
        return "-"
    s = max(0.0, time.time() - ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.0f} s"


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(_config_path(args.config))
    status = _ask(cfg, "status")
    if status is None:
        snapshot = cfg.state_path(cfg.gateway.status_file)
        try:
            status = json.loads(snapshot.read_text())
            status["running"] = False
        except (OSError, ValueError):
            print("edge-gateway: the service is not running and has left no status", file=sys.stderr)
            return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    q = status.get("outbox", {})
    lines = [
        f"service:      {'running' if status.get('running', True) else 'not running (last known state)'}"
        f", up {status.get('uptime_s', 0):.0f} s, version {status.get('version', '?')}",
        f"uplink:       {status.get('uplink', '?')} ({status.get('upstream', '')})",
        f"provisioning: {status.get('provisioning', '?')}",
        f"queue:        {q.get('records', 0)} records, {q.get('bytes', 0) / 1e6:.1f} MB, "
        f"oldest {_age(q.get('oldest_ts_ms'))}, dropped {sum((q.get('dropped') or {}).values())}",
        f"devices:      {status.get('devices_online', 0)} online",
    ]
    errors = status.get("last_errors") or []
    if errors:
        lines.append("last errors:")
        lines += [f"  {e}" for e in errors[-5:]]
    print("\n".join(lines))
    return EXIT_OK


def cmd_devices(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(_config_path(args.config))
    devices = _ask(cfg, "devices")
    if devices is None:
        print("edge-gateway: the service is not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps(devices, indent=2))
        return EXIT_OK
    if not devices:
        print("no devices")
        return EXIT_OK
    cols = ["name", "profile", "adapter", "address", "mode", "last_seen"]
    rows = [[str(d.get(c, "") if c != "last_seen" else _age(d.get("last_seen_ms"))) for c in cols] for d in devices]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return EXIT_OK


def cmd_clients(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(_config_path(args.config))
    return clients_cli.run_cli(
        args,
        db_path=cfg.state_path(cfg.lwm2m.clients_db),
        control_socket=cfg.state_path(cfg.gateway.control_socket),
    )


def cmd_bootstrap(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(_config_path(args.config))
    return bootstrap_cli.run_cli(
        args,
        db_path=cfg.state_path(cfg.lwm2m.bootstrap.db),
        control_socket=cfg.state_path(cfg.gateway.control_socket),
    )


def cmd_provision(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(_config_path(args.config))
    sock = cfg.state_path(cfg.gateway.control_socket)
    try:
        if args.force:
            print("edge-gateway: forgetting the stored credentials and provisioning again ...", file=sys.stderr)
        with Progress("provisioning" if args.force else "asking the service (provision)"):
            result = control.ask(sock, "provision", timeout=60.0, force=bool(args.force))
    except (FileNotFoundError, ConnectionRefusedError):
        print("edge-gateway: the service is not running; it provisions itself when it starts", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except RuntimeError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"provisioning: {result.get('provisioning')}")
    return EXIT_OK


def cmd_import_provisioning(args: argparse.Namespace) -> int:
    from gateway.upstream import provisioning

    return provisioning.cmd_import_provisioning(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        from gateway.sim import lwm2m_client
    except ImportError as exc:  # the simulator's extras are not installed on a production image
        print(f"edge-gateway: the simulator needs the 'sim' extra: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return lwm2m_client.main(["--help"] if not args.sim_args else args.sim_args)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"edge-gateway {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gateway", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", help=f"configuration file (default {config.DEFAULT_PATH}, "
                        "or $EDGE_GATEWAY_CONFIG)")
        return sp

    sp = with_config(sub.add_parser("run", help="run the gateway (the service's main job)"))
    sp.set_defaults(fn=cmd_run)
    sp = sub.add_parser("check-config", help="validate a configuration file")
    sp.add_argument("file", nargs="?")
    sp.add_argument("--json", action="store_true", help="print the effective configuration (secrets hidden)")
    sp.add_argument("--explain", action="store_true", help="list every key with its type and default")
    sp.set_defaults(fn=cmd_check_config)
    sp = with_config(sub.add_parser("status", help="how the running gateway is doing"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)
    sp = with_config(sub.add_parser("devices", help="devices the running gateway knows"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_devices)
    sp = sub.add_parser("clients", help="LwM2M clients' credentials: add, remove, list (keys never echoed)")
    clients_cli.configure_cli(
        sp, config_help=f"configuration file (default {config.DEFAULT_PATH}, or $EDGE_GATEWAY_CONFIG)"
    )
    sp.set_defaults(fn=cmd_clients)
    sp = sub.add_parser("bootstrap", help="LwM2M bootstrap: configurations, last bootstraps, trigger (no secrets)")
    bootstrap_cli.configure_cli(
        sp, config_help=f"configuration file (default {config.DEFAULT_PATH}, or $EDGE_GATEWAY_CONFIG)"
    )
    sp.set_defaults(fn=cmd_bootstrap)
    sp = with_config(sub.add_parser("provision", help="provisioning state; --force forgets credentials"))
    sp.add_argument("--force", action="store_true", help="forget the stored credentials and provision again")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_provision)
    sp = with_config(sub.add_parser(
        "import-provisioning",
        help="move the installer's provisioning file from the boot partition into the configuration"))
    sp.add_argument("--source", help="file to import (default /boot/firmware/edge-gateway-provision.toml)")
    sp.add_argument("--owner", help="give the imported file to this user (the service's; needs root)")
    sp.set_defaults(fn=cmd_import_provisioning)
    profiles_cli.add_cli(sub)
    sp = sub.add_parser(
        "simulate", help="run N simulated LwM2M clients against a server (see 'simulate --help')", add_help=False
    )
    sp.add_argument("sim_args", nargs=argparse.REMAINDER)
    sp.set_defaults(fn=cmd_simulate)
    sp = sub.add_parser("version", help="print the version")
    sp.set_defaults(fn=cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:  # the simulator parses its own options (and --help)
        return cmd_simulate(argparse.Namespace(sim_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
