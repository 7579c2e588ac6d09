"""What can go wrong with an operation on a device, as exceptions the bridge can tell apart.

An answer from the device, even an error answer (4.04 Not Found, 4.05 Method Not Allowed), is not an
exception: it is a :class:`~gateway.lwm2m.server.response.Response` with that code. Exceptions are
for the cases where there is no usable answer:

- :class:`DeviceNotRegistered`: no registration for that endpoint (any more);
- :class:`RequestTimeout`: no answer before the deadline (also a ``TimeoutError``);
- :class:`QueueFull`: a queue-mode device is asleep and its held requests (or all held requests)
  are at their bound;
- :class:`RequestFailed`: the device reset the request, the network reported an error, or the
  device went away (deregistered, expired, re-registered) while the request was pending;
- :class:`InvalidResponse`: the device answered, but the answer cannot be understood (a payload
  that does not decode, a content format nobody asked for);
- :class:`CoapError`: raised by :meth:`Response.value_or_raise` for an error answer.
"""

from __future__ import annotations

from typing import Any


class LwM2mError(Exception):
    """Base of every error an LwM2M server operation raises."""


class DeviceNotRegistered(LwM2mError, LookupError):
    def __init__(self, endpoint: str) -> None:
        super().__init__(f"device {endpoint!r} is not registered")
        self.endpoint = endpoint


class RequestTimeout(LwM2mError, TimeoutError):
    """No answer before the deadline (for a sleeping queue-mode device: it did not wake in time)."""


class QueueFull(LwM2mError):
    """A request for a sleeping queue-mode device could not be held: a bound is reached."""


class RequestFailed(LwM2mError):
    """The request ended without an answer: reset by the device, a network error, or the
    registration ended while it was pending."""


class InvalidResponse(LwM2mError):
    """The device answered with something that cannot be used; ``code`` is the CoAP code it sent."""

    def __init__(self, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.code = code


class CoapError(LwM2mError):
    """An error answer (4.xx, 5.xx) turned into an exception: ``code`` and the device's diagnostic text."""

    def __init__(self, code: Any, diagnostic: str | None = None) -> None:
        text = f"{code.dotted if hasattr(code, 'dotted') else code} {getattr(code, 'name', '')}".strip()
        super().__init__(text + (f": {diagnostic}" if diagnostic else ""))
        self.code = code
        self.diagnostic = diagnostic
