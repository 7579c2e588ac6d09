"""Operating the bootstrap server: ``edge-gateway bootstrap list|show|add|remove|trigger``, the running
service's control commands behind them, and ThingsBoard's RPCs ``lwm2mBootstrapConfig`` and
``lwm2mBootstrapTrigger``. Secrets (PSK keys) are never printed or returned: configurations are
shown by :meth:`~gateway.lwm2m.bootstrap.config.BootstrapConfig.summary`.

Without a running service the CLI works on the store file (``trigger`` needs the service).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from gateway.lwm2m.bootstrap.config import parse_config
from gateway.lwm2m.bootstrap.server import trigger_bootstrap
from gateway.lwm2m.bootstrap.store import BootstrapStore
from gateway.lwm2m.tbcredentials import CredentialsFormatError
from gateway.store.clients import ClientStoreError, Source

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
RPC_CONFIG: Final = "lwm2mBootstrapConfig"
RPC_TRIGGER: Final = "lwm2mBootstrapTrigger"

Command = Callable[[dict[str, Any]], Awaitable[Any]]


def overview(store: BootstrapStore) -> dict[str, Any]:
    """Configurations and the last bootstrap of each endpoint, without secrets."""
    return {
        "configs": [c.summary() for c in store.configs()],
        "last_bootstraps": [h.as_dict() for h in store.history()],
    }


def show(store: BootstrapStore, name: str, pattern: bool = False) -> dict[str, Any]:
    cfg = store.get_config(name, pattern=pattern)
    effective = None if pattern else store.effective(name)
    last = next((h.as_dict() for h in store.history() if h.endpoint == name), None)
    if cfg is None and effective is None and last is None:
        raise ValueError(f"no bootstrap configuration or bootstrap for {name!r}")
    return {
        "name": name,
        "config": cfg.summary() if cfg else None,
        "effective": effective.summary() if effective else None,
        "last_bootstrap": last,
    }


def put(store: BootstrapStore, obj: object, source: Source) -> dict[str, Any]:
    try:
        cfg = parse_config(obj, source=source)
        changed = store.put(cfg)
    except (CredentialsFormatError, ClientStoreError) as exc:
        raise ValueError(str(exc)) from None
    return {"name": cfg.name, "result": "stored" if changed else "unchanged"}


def remove(store: BootstrapStore, name: object, pattern: object, source: Source) -> dict[str, Any]:
    if not isinstance(name, str):
        raise ValueError("expected a configuration name (endpoint or pattern)")
    try:
        done = store.remove(name, pattern=bool(pattern), by=source)
    except ClientStoreError as exc:
        raise ValueError(str(exc)) from None
    if not done:
        raise ValueError(f"no bootstrap configuration {name!r}")
    return {"name": name, "result": "removed"}


def control_commands(store: BootstrapStore, lwm2m: Callable[[], Any]) -> dict[str, Command]:
    """The running service's side of ``edge-gateway bootstrap`` (ValueError: the error reply)."""

    async def add(req: dict[str, Any]) -> Any:
        return put(store, req.get("config"), Source.CLI)

    async def remove_(req: dict[str, Any]) -> Any:
        return remove(store, req.get("name"), req.get("pattern"), Source.CLI)

    async def list_(_req: dict[str, Any]) -> Any:
        return overview(store)

    async def show_(req: dict[str, Any]) -> Any:
        return show(store, str(req.get("name")), bool(req.get("pattern")))

    async def trigger(req: dict[str, Any]) -> Any:
        return await _trigger(lwm2m(), req.get("endpoint"))

    return {"bootstrap.add": add, "bootstrap.remove": remove_, "bootstrap.list": list_, "bootstrap.show": show_,
            "bootstrap.trigger": trigger}


async def _trigger(server: Any, endpoint: object) -> dict[str, Any]:
    if not isinstance(endpoint, str):
        raise ValueError("expected an endpoint name")
    if server is None:
        raise ValueError("the LwM2M server is not running")
    try:
        code = await trigger_bootstrap(server, endpoint, timeout=30.0)
    except Exception as exc:
        raise ValueError(f"{endpoint}: {exc}") from None
    return {"endpoint": endpoint, "result": code}


def rpc_handlers(store: BootstrapStore, lwm2m: Callable[[], Any]) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    """ThingsBoard RPCs to the gateway device.

    ``lwm2mBootstrapConfig`` params: ``{"config": {...}}`` (add or replace, ThingsBoard's shape),
    ``{"remove": "name", "pattern": false}``, or ``{}`` (list); ``lwm2mBootstrapTrigger``:
    ``{"endpoint": "..."}`` (Execute /1/x/9 on the registered device)."""

    async def config_rpc(params: Any) -> Any:
        try:
            p = params if isinstance(params, Mapping) else {}
            if "config" in p:
                return put(store, p["config"], Source.THINGSBOARD)
            if "remove" in p:
                return remove(store, p["remove"], p.get("pattern"), Source.THINGSBOARD)
            return overview(store)
        except ValueError as exc:
            return {"error": str(exc)}

    async def trigger_rpc(params: Any) -> Any:
        try:
            return await _trigger(lwm2m(), params.get("endpoint") if isinstance(params, Mapping) else None)
        except ValueError as exc:
            return {"error": str(exc)}

    return {RPC_CONFIG: config_rpc, RPC_TRIGGER: trigger_rpc}


# --- command line ------------------------------------------------------------------------------------


def configure_cli(parser: argparse.ArgumentParser, *, config_help: str = "configuration file") -> None:
    sub = parser.add_subparsers(dest="bootstrap_command", required=True)

    def leaf(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", "-c", help=config_help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    leaf("list", "configurations and the last bootstrap of each endpoint")
    p = leaf("show", "one endpoint or template: its configuration, effective configuration, last bootstrap")
    p.add_argument("name")
    p.add_argument("--pattern", action="store_true", help="NAME is a template's pattern")
    p = leaf("add", "add or replace a configuration (ThingsBoard's bootstrap JSON shape)")
    p.add_argument("file", help="JSON file with the configuration, or - for standard input")
    p = leaf("remove", "remove a configuration")
    p.add_argument("name")
    p.add_argument("--pattern", action="store_true", help="NAME is a template's pattern")
    p = leaf("trigger", "server-initiated bootstrap: Execute /1/x/9 on a registered device")
    p.add_argument("endpoint")


def run_cli(args: argparse.Namespace, *, db_path: Path, control_socket: Path) -> int:
    cmd = args.bootstrap_command
    try:
        if cmd == "add":
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"{args.file}: not JSON ({exc})") from None
            result = _ask_or_open(control_socket, db_path, "bootstrap.add", {"config": obj},
                                  lambda s: put(s, obj, Source.CLI))
        elif cmd == "remove":
            result = _ask_or_open(control_socket, db_path, "bootstrap.remove",
                                  {"name": args.name, "pattern": args.pattern},
                                  lambda s: remove(s, args.name, args.pattern, Source.CLI))
        elif cmd == "show":
            result = _ask_or_open(control_socket, db_path, "bootstrap.show",
                                  {"name": args.name, "pattern": args.pattern},
                                  lambda s: show(s, args.name, args.pattern))
        elif cmd == "trigger":
            from gateway import control

            try:
                result = control.ask(control_socket, "bootstrap.trigger", timeout=40.0, endpoint=args.endpoint)
            except (FileNotFoundError, ConnectionRefusedError):
                raise ValueError("trigger needs the running gateway (its control socket is not there)") from None
        else:
            result = _ask_or_open(control_socket, db_path, "bootstrap.list", {}, overview)
    except (OSError, RuntimeError, ValueError, ClientStoreError) as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(result, indent=2))
    elif cmd == "list":
        _print_overview(result)
    elif cmd == "show":
        for key in ("config", "effective", "last_bootstrap"):
            value = result.get(key)
            print(f"{key}: " + (", ".join(f"{k}={v}" for k, v in value.items()) if value else "-"))
    else:
        print(f"{result.get('name') or result.get('endpoint')}: {result.get('result')}")
    return EXIT_OK


def _ask_or_open(
    control_socket: Path, db_path: Path, cmd: str, request: dict[str, Any], offline: Callable[[BootstrapStore], Any]
) -> Any:
    from gateway import control

    def on_the_file() -> Any:
        store = BootstrapStore.open(db_path)
        try:
            return offline(store)
        finally:
            store.close()

    return control.ask_or_offline(control_socket, cmd, request, on_the_file)


def _print_overview(result: Mapping[str, Any]) -> None:
    configs, history = result.get("configs", []), result.get("last_bootstraps", [])
    if not configs:
        print("no bootstrap configurations")
    for c in configs:
        print(f"{c['kind']:8} {c['name']}  bootstrap={c['bootstrap_security'] or '-'}  "
              f"server={c['server_security'] or '-'}  ({c['source']})")
    if history:
        print()
        print("last bootstraps:")
    for h in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["at_ms"] / 1000))
        print(f"  {h['endpoint']}  {when}  {h['result']}  {h['servers'] or '-'}  {h['detail']}")
