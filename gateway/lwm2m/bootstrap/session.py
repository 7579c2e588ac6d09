"""One bootstrap as a sans-IO state machine: which request goes next, given the device's answers.

Sequence (LwM2M Core 6.1, LWM2M_FACTS section 2): Bootstrap-Delete ``/`` (the client keeps the
bootstrap-server account), Bootstrap-Discover ``/0`` (to learn which Security instance is the bootstrap
server's, so it is never overwritten; skipped for clients that did not send ``pct``, i.e. 1.0), the
Writes built by ``build_writes`` (Security ``/0/x``, Server ``/1/x``), Bootstrap-Finish.

Policy: an answer 5.xx or no answer (after CoAP's own retransmissions) is retried up to ``retries``
times; a 4.xx answer to a Write or the Finish fails the bootstrap (the device stays in bootstrap mode
and asks again); a 4.xx to the Delete or the Discover is tolerated (then the bootstrap-server account
is assumed to be ``/0/0``, as in Leshan and Wakaama).

>>> s = BootstrapSession("ep", lambda taken: [Step(Op.WRITE, LwM2mPath(1, 0), b"x", 11542)], discover=False)
>>> s.start().op.name, s.on_answer(0x42, b"").op.name, s.on_answer(0x44, b"").op.name
('DELETE', 'WRITE', 'FINISH')
>>> s.on_answer(0x44, b"") is None, s.result.value
(True, 'success')
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.linkformat import LinkFormatError, parse_discover
from gateway.lwm2m.path import ROOT, LwM2mPath

SECURITY_OBJECT: Final = LwM2mPath(0)


class Op(enum.Enum):
    DELETE = "Bootstrap-Delete"
    DISCOVER = "Bootstrap-Discover"
    WRITE = "Bootstrap-Write"
    FINISH = "Bootstrap-Finish"


class Result(enum.StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Step:
    """One request of the server: ``op`` on ``path`` (a Write with its payload and Content-Format)."""

    op: Op
    path: LwM2mPath
    payload: bytes = field(default=b"", repr=False)  # a Security instance carries keys
    content_format: int | None = None

    def __str__(self) -> str:
        return f"{self.op.value} {self.path}"


class BootstrapError(Exception):
    """The bootstrap cannot go on (writes cannot be built: a configuration or store problem)."""


WriteBuilder = Callable[[frozenset[int]], list[Step]]
"""``(Security instance ids the bootstrap-server account uses) -> the Writes``; may raise BootstrapError."""

_FINISH: Final = Step(Op.FINISH, ROOT)


def code_text(code: int) -> str:
    """``0x84`` -> ``"4.04"``."""
    return f"{code >> 5}.{code & 31:02d}"


class BootstrapSession:
    """The state of one bootstrap (see the module docstring)."""

    __slots__ = ("_build", "_current", "_discover", "_retries", "_steps", "_tries", "detail", "endpoint", "result")

    def __init__(self, endpoint: str, build_writes: WriteBuilder, *, discover: bool, retries: int = 1) -> None:
        self.endpoint = endpoint
        self._build = build_writes
        self._discover = discover
        self._retries = retries
        self._steps: list[Step] = []
        self._current: Step | None = None
        self._tries = 0
        self.result = Result.RUNNING
        #: Why it failed (for the log and the operator view), or what happened.
        self.detail = ""

    @property
    def current(self) -> Step | None:
        return self._current

    def start(self) -> Step:
        return self._go(Step(Op.DELETE, ROOT))

    def on_answer(self, code: int, payload: bytes) -> Step | None:
        """The device answered the current request with ``code``; the next request, or None when done."""
        step = self._current
        assert step is not None, "no request outstanding"
        klass = code >> 5
        if klass == 2:
            return self._succeeded(step, payload)
        diagnostic = payload[:100].decode("utf-8", "replace") if payload else ""
        what = f"{step} answered {code_text(code)}" + (f" ({diagnostic})" if diagnostic else "")
        if klass == 5 and self._tries <= self._retries:
            return self._again(step)
        if step.op is Op.DELETE:
            return self._after_delete()
        if step.op is Op.DISCOVER:
            return self._writes(frozenset({0}))
        return self._fail(what)

    def on_timeout(self) -> Step | None:
        """No answer to the current request (CoAP retransmissions exhausted)."""
        step = self._current
        assert step is not None, "no request outstanding"
        if self._tries <= self._retries:
            return self._again(step)
        return self._fail(f"{step}: no answer")

    def abort(self, why: str) -> None:
        if self.result is Result.RUNNING:
            self._fail(why)

    # -- internals ----------------------------------------------------------------------------------

    def _go(self, step: Step) -> Step:
        self._current = step
        self._tries = 1
        return step

    def _again(self, step: Step) -> Step:
        self._tries += 1
        return step

    def _succeeded(self, step: Step, payload: bytes) -> Step | None:
        match step.op:
            case Op.DELETE:
                return self._after_delete()
            case Op.DISCOVER:
                try:
                    links = parse_discover(payload)
                except LinkFormatError:
                    return self._writes(frozenset({0}))
                taken = frozenset(
                    link.path.ids[1] for link in links if link.path.depth == 2 and link.path.ids[0] == 0
                )
                return self._writes(taken)
            case Op.FINISH:
                self._current = None
                self.result = Result.SUCCESS
                self.detail = "finished"
                return None
        return self._next()

    def _after_delete(self) -> Step | None:
        if self._discover:
            return self._go(Step(Op.DISCOVER, SECURITY_OBJECT, content_format=ContentFormat.LINK))
        return self._writes(frozenset({0}))

    def _writes(self, taken: frozenset[int]) -> Step | None:
        try:
            self._steps = [*self._build(taken), _FINISH]
        except BootstrapError as exc:
            return self._fail(str(exc))
        return self._next()

    def _next(self) -> Step | None:
        if not self._steps:
            return self._fail("nothing left to send before Bootstrap-Finish")
        return self._go(self._steps.pop(0))

    def _fail(self, why: str) -> Step | None:
        self._current = None
        self.result = Result.FAILED
        self.detail = why
        return None  # nothing more to send
