"""Logging: journald with structured fields when the service runs under systemd, stderr otherwise.

Structured fields come from ``extra=``: ``log.warning("...", extra={"endpoint": ep, "device": d,
"error_code": "4.03"})`` becomes ENDPOINT=, DEVICE=, ERROR_CODE= in the journal. A ring buffer keeps
the last lines for the ``getLogs`` RPC and the last errors for ``edge-gateway status``.
Secrets never reach a log call: code logs identities and endpoint names, never keys or tokens.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time
from typing import Any

STRUCTURED = ("endpoint", "device", "error_code", "peer", "port")
_FORMAT = "%(levelname)s %(name)s: %(message)s"


class RingBuffer(logging.Handler):
    def __init__(self, lines: int = 500, errors: int = 20) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self.errors: collections.deque[str] = collections.deque(maxlen=errors)
        self.setFormatter(logging.Formatter("%(asctime)s " + _FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a bad log call must never break the caller
            return
        self.lines.append(text)
        if record.levelno >= logging.WARNING:
            self.errors.append(text)


class _JournalFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key in STRUCTURED:
            value = getattr(record, key, None)
            if value is not None:
                setattr(record, key.upper(), str(value))
        return True


def _journal_handler() -> logging.Handler | None:
    # JOURNAL_STREAM is set by systemd when stderr goes to the journal.
    if not os.environ.get("JOURNAL_STREAM") and not os.environ.get("INVOCATION_ID"):
        return None
    try:
        from systemd import journal  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER="edge-gateway")
    handler.addFilter(_JournalFields())
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler


def setup(level: str = "info", ring: RingBuffer | None = None) -> RingBuffer:
    ring = ring or RingBuffer()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _journal_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s " + _FORMAT))
        logging.Formatter.converter = time.gmtime
    root.addHandler(handler)
    root.addHandler(ring)
    set_level(level)
    # aiocoap and amqtt are chatty at INFO (retransmissions, connections)
    for noisy in ("coap", "coap-server", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return ring


def set_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))


class RateLimited:
    """Log a repeated complaint at most once per ``interval`` seconds per key, with the count skipped."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 4096) -> None:
        self.log = logger
        self.interval = interval
        self._last: collections.OrderedDict[Any, tuple[float, int]] = collections.OrderedDict()
        self._max = max_keys

    def warning(self, key: Any, msg: str, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        skipped = last[1] if last else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self._max:
            self._last.popitem(last=False)
        if skipped:
            msg += f" ({skipped} similar suppressed)"
        self.log.warning(msg, *args, **kwargs)
