"""Progress for the operator's CLI: anything still running after a second says so.

    with Progress("asking the service (status)"):
        reply = control.ask(...)

Nothing is shown when the work ends within ``after`` seconds (1 s). After that, on a terminal, one
line on stderr counts the seconds (``edge-gateway: asking the service (status) ... 3 s``), rewritten
in place and erased when the work ends, so the command's own output stays clean; anywhere else (a
pipe, a log, a script reading ``--json`` from stdout) one line when it starts to show and one with
the time it took. stdout is never touched.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO


class Progress:
    def __init__(
        self,
        what: str,
        *,
        stream: TextIO | None = None,
        after: float = 1.0,
        every: float = 0.5,
        tty: bool | None = None,
        prefix: str = "edge-gateway: ",
    ) -> None:
        self.what = what
        self._stream = stream if stream is not None else sys.stderr
        self._after = after
        self._every = every
        self._tty = tty if tty is not None else _isatty(self._stream)
        self._prefix = prefix
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._width = 0
        self.shown = False

    def __enter__(self) -> Progress:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="cli-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if not self.shown:
            return
        took = time.monotonic() - self._t0
        if self._tty:
            self._write("\r" + " " * self._width + "\r")
        else:
            outcome = "done" if exc_type is None else "failed"
            self._write(f"{self._prefix}{self.what}: {outcome} after {took:.1f} s\n")

    def _run(self) -> None:
        if self._done.wait(self._after):
            return
        self.shown = True
        if not self._tty:
            self._write(f"{self._prefix}{self.what} ...\n")
            return
        while True:
            line = f"{self._prefix}{self.what} ... {time.monotonic() - self._t0:.0f} s"
            self._width = max(self._width, len(line))
            self._write("\r" + line.ljust(self._width))
            if self._done.wait(self._every):
                return

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not break the command
            pass


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = ["Progress"]
