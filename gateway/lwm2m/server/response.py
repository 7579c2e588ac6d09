"""Results of operations on devices: :class:`Response` and the :class:`Observation` handle.

``ResponseCode`` is aiocoap's ``Code`` (an ``IntEnum``-like value with ``.dotted`` == ``"2.05"`` and
``.is_successful()``), re-exported so that callers never import aiocoap themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from aiocoap.numbers.codes import Code as ResponseCode

from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server.errors import CoapError

T = TypeVar("T")

__all__ = ["Observation", "Response", "ResponseCode"]


@dataclass(frozen=True, slots=True)
class Observation:
    """An active observation on a device: one path (Observe) or several (Observe-Composite).

    ``token`` identifies it on the wire and here; notifications for it reach the listener's
    ``on_notification`` until it is cancelled, the device ends it, or the registration ends.
    """

    endpoint: str
    registration_id: str
    paths: tuple[LwM2mPath, ...]
    composite: bool
    content_format: int
    token: bytes

    @property
    def path(self) -> LwM2mPath:
        """The observed path (the first one of a composite observation)."""
        return self.paths[0]

    def __str__(self) -> str:
        what = ",".join(map(str, self.paths))
        return f"{'composite ' if self.composite else ''}observation {self.token.hex()} of {what} on {self.endpoint}"


@dataclass(frozen=True, slots=True)
class Response(Generic[T]):
    """A device's answer: ``code``; ``value`` when it succeeded and carried one; ``error`` its
    diagnostic text when it did not. ``content_format`` is the format the payload came in;
    ``observation`` is set by a successful Observe / Observe-Composite."""

    code: ResponseCode
    value: T | None = None
    error: str | None = None
    content_format: int | None = None
    observation: Observation | None = None

    @property
    def ok(self) -> bool:
        """True for a 2.xx answer."""
        return bool(self.code.is_successful())

    def value_or_raise(self) -> T | None:
        """``value`` for a 2.xx answer; :class:`~gateway.lwm2m.server.errors.CoapError` otherwise."""
        if not self.ok:
            raise CoapError(self.code, self.error)
        return self.value

    def __str__(self) -> str:
        text = f"{self.code.dotted} {self.code.name_printable}"
        if self.error:
            text += f": {self.error}"
        return text
