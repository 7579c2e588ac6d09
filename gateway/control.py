"""The running service's control socket: the CLI asks, the service answers (one JSON line each way).

A unix stream socket in the state directory, mode 0600 (the service's user and root only). The
service registers one callable per command; the CLI never starts a second gateway to find out
how the first one is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.control")

Command = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST = 64 * 1024


class ControlServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._commands: dict[str, Command] = {}
        self._server: asyncio.AbstractServer | None = None

    def command(self, name: str, fn: Command) -> None:
        self._commands[name] = fn

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            reply: dict[str, Any]
            try:
                if len(line) > MAX_REQUEST:
                    raise ValueError("request too long")
                req = json.loads(line)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError('expected {"cmd": "..."}')
                fn = self._commands.get(req["cmd"])
                if fn is None:
                    raise ValueError(f"unknown command {req['cmd']!r} (known: {', '.join(sorted(self._commands))})")
                reply = {"ok": True, "result": await fn(req)}
            except ValueError as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("control: command failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def ask(path: Path, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """Blocking client used by the CLI. Raises OSError if no service listens, RuntimeError on an error reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "unknown error"))
    return reply.get("result")


def ask_or_offline(path: Path, cmd: str, request: dict[str, Any], offline: Callable[[], Any]) -> Any:
    """Ask the running service; when none listens on ``path``, ``offline()`` does the work on the
    files instead (CLI commands that manage a store the service also holds)."""
    try:
        return ask(path, cmd, **request)
    except (FileNotFoundError, ConnectionRefusedError):
        return offline()  # no service: work on the file
    except PermissionError:
        raise ValueError(f"permission denied on {path}: run as root or as the service's user") from None
