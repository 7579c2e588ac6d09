"""The registration interface without I/O: what a Register or Update says, and what is registered.

:func:`parse_register` and :func:`parse_update` turn the Uri-Query options, Content-Format and payload
of ``POST /rd`` and ``POST /rd/{id}`` into a :class:`RegisterRequest` / :class:`RegistrationUpdate`,
or raise :class:`RegistrationError` with the CoAP code and a reason for the device:

- 4.12 Precondition Failed for a well-formed LwM2M version this server does not speak (1.3, 2.0):
  the one code on which clients such as Anjay retry with a lower version;
- 4.00 Bad Request for anything else that is wrong (no ``ep``, ``lt=abc``, ``b=X``, a payload that is
  not link format), with a reason saying what;
- 4.15 Unsupported Content-Format for a payload declared as something other than link format.

Lenient where real clients differ: ``b=`` missing means ``U``; 1.0-style ``b=UQ`` from a 1.1 client is
queue mode like ``b=U&Q``; unknown query parameters are ignored; a missing ``lwm2m=`` means 1.0; the
link format itself is parsed by :func:`gateway.lwm2m.linkformat.parse_registration`.

>>> req = parse_register(["ep=dev-1", "lt=300", "lwm2m=1.1", "b=U", "Q"], b"</1/0>,</3/0>", 40)
>>> req.endpoint, req.lifetime, req.lwm2m_version, req.binding, req.queue_mode, sorted(req.links.objects)
('dev-1', 300, '1.1', 'U', True, [1, 3])
>>> try:
...     parse_register(["ep=dev-1", "lwm2m=1.3"], b"</3/0>", None)
... except RegistrationError as e:
...     print(e.code.dotted, e.reason)
4.12 LwM2M version 1.3 is not supported (this server speaks 1.0, 1.1, 1.2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from aiocoap.numbers.codes import Code

from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.linkformat import LinkFormatError, RegisteredObject, RegistrationLinks, parse_registration
from gateway.lwm2m.model.registry import ClientModels

#: LwM2M enabler versions this server serves.
SERVED_VERSIONS: Final = ("1.0", "1.1", "1.2")
_SERVED_KEYS: Final = frozenset({(1, 0), (1, 1), (1, 2)})

DEFAULT_LIFETIME: Final = 86400
MAX_LIFETIME: Final = 2**31 - 1
MAX_ENDPOINT_LENGTH: Final = 256
_BINDING_LETTERS: Final = frozenset("UTSNQ")

#: Where registrations live: ``Location-Path: rd/{id}``.
RD_SEGMENT: Final = "rd"


class RegistrationError(Exception):
    """A Register or Update that cannot be accepted: the CoAP ``code`` to answer and the ``reason``."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(f"{code.dotted}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """What a Register (``POST /rd``) says."""

    endpoint: str
    lifetime: int
    lwm2m_version: str
    binding: str
    queue_mode: bool
    sms: str | None
    links: RegistrationLinks


@dataclass(frozen=True, slots=True)
class RegistrationUpdate:
    """What an Update (``POST /rd/{id}``) says; ``None`` for what it did not carry (unchanged)."""

    lifetime: int | None = None
    binding: str | None = None
    queue_mode: bool | None = None
    sms: str | None = None
    links: RegistrationLinks | None = None

    @property
    def empty(self) -> bool:
        """An Update that only refreshes the lifetime."""
        return self == _EMPTY_UPDATE


_EMPTY_UPDATE: Final = RegistrationUpdate()


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered LwM2M client, as of its last Register or Update (immutable: an Update makes a
    new one). ``address`` is where it registered from (for people; requests use the transport's
    remote); ``claims`` what its transport authenticated (empty for NoSec)."""

    endpoint: str
    id: str
    lwm2m_version: str
    binding: str
    queue_mode: bool
    lifetime: int
    sms: str | None
    links: RegistrationLinks
    address: str
    registered_at: float
    claims: tuple[object, ...] = ()
    models: ClientModels | None = field(default=None, compare=False, repr=False)

    @property
    def location(self) -> str:
        """The registration's location path, ``/rd/{id}``."""
        return f"/{RD_SEGMENT}/{self.id}"

    @property
    def objects(self) -> dict[int, RegisteredObject]:
        """The objects the client registered, by id (never the Security object 0)."""
        return self.links.objects

    @property
    def root_path(self) -> str:
        return self.links.root_path

    @property
    def content_formats(self) -> tuple[ContentFormat, ...]:
        """The formats the client declared (``ct=``), empty for LwM2M 1.0 clients."""
        return self.links.content_formats

    def object_paths(self) -> list[str]:
        """``/1/0``, ``/3/0``, ``/3303``...: the registered objects and instances, for people."""
        paths: list[str] = []
        for obj in self.links.objects.values():
            if obj.instances:
                paths.extend(f"/{obj.id}/{iid}" for iid in obj.instances)
            else:
                paths.append(f"/{obj.id}")
        return paths

    def updated(self, update: RegistrationUpdate, models: ClientModels | None = None) -> Registration:
        """This registration with what ``update`` carried."""
        changes: dict[str, object] = {}
        if update.lifetime is not None:
            changes["lifetime"] = update.lifetime
        if update.binding is not None:
            changes["binding"] = update.binding
        if update.queue_mode is not None:
            changes["queue_mode"] = update.queue_mode
        if update.sms is not None:
            changes["sms"] = update.sms
        if update.links is not None:
            changes["links"] = update.links
            changes["models"] = models
        return dataclasses.replace(self, **changes) if changes else self  # type: ignore[arg-type]


# -- parsing -------------------------------------------------------------------------------------------


def parse_query(options: Sequence[str]) -> dict[str, str | None]:
    """Uri-Query options as a dict: ``"lt=300"`` -> ``{"lt": "300"}``, ``"Q"`` -> ``{"Q": None}``.

    A parameter given twice is a 4.00 error (which one would the client mean?).
    """
    params: dict[str, str | None] = {}
    for option in options:
        if not option:
            continue
        name, eq, value = option.partition("=")
        if name in params:
            raise RegistrationError(Code.BAD_REQUEST, f"parameter {name!r} given twice")
        params[name] = value if eq else None
    return params


def parse_register(query: Sequence[str], payload: bytes, content_format: int | None) -> RegisterRequest:
    """Read a Register request; raises :class:`RegistrationError`."""
    params = parse_query(query)
    endpoint = params.get("ep")
    if endpoint is None:
        raise RegistrationError(Code.BAD_REQUEST, "missing endpoint name (ep=)")
    _check_endpoint(endpoint)
    version = _version(params["lwm2m"]) if "lwm2m" in params else "1.0"
    lifetime = DEFAULT_LIFETIME if "lt" not in params else _lifetime(params["lt"])
    binding, queue_mode = _binding(params.get("b") if "b" in params else "U", "Q" in params)
    sms = params.get("sms")
    links = _links(payload, content_format)
    return RegisterRequest(endpoint, lifetime, version, binding, queue_mode, sms, links)


def parse_update(query: Sequence[str], payload: bytes, content_format: int | None) -> RegistrationUpdate:
    """Read an Update request; raises :class:`RegistrationError`.

    An Update says only what changed. ``Q`` without ``b=`` switches queue mode on; a ``b=`` without
    ``Q`` (and without a 1.0-style ``Q`` letter) switches it off.
    """
    params = parse_query(query)
    lifetime = None if "lt" not in params else _lifetime(params["lt"])
    binding: str | None = None
    queue_mode: bool | None = None
    if "b" in params:
        binding, queue_mode = _binding(params["b"], "Q" in params)
    elif "Q" in params:
        queue_mode = True
    sms = params.get("sms")
    links = _links(payload, content_format) if payload else None
    return RegistrationUpdate(lifetime, binding, queue_mode, sms, links)


def _check_endpoint(endpoint: str) -> None:
    if not endpoint:
        raise RegistrationError(Code.BAD_REQUEST, "empty endpoint name (ep=)")
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise RegistrationError(Code.BAD_REQUEST, f"endpoint name longer than {MAX_ENDPOINT_LENGTH} characters")
    if not endpoint.isprintable():
        raise RegistrationError(Code.BAD_REQUEST, "endpoint name contains control characters")


def _version(text: str | None) -> str:
    if text is None:
        raise RegistrationError(Code.BAD_REQUEST, "lwm2m= without a version")
    version = text.strip().strip('"')
    major, dot, minor = version.partition(".")
    if not (dot and major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()
            and len(major) <= 3 and len(minor) <= 3):
        raise RegistrationError(Code.BAD_REQUEST, f"lwm2m={text!r} is not a version (expected e.g. 1.1)")
    key = (int(major), int(minor))
    if key not in _SERVED_KEYS:
        raise RegistrationError(
            Code.PRECONDITION_FAILED,
            f"LwM2M version {version} is not supported (this server speaks {', '.join(SERVED_VERSIONS)})",
        )
    return f"{key[0]}.{key[1]}"


def _lifetime(text: str | None) -> int:
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise RegistrationError(Code.BAD_REQUEST, f"lt={text!r} is not a lifetime in seconds")
    value = int(text)
    if not 0 < value <= MAX_LIFETIME:
        raise RegistrationError(Code.BAD_REQUEST, f"lt={value} out of range 1..{MAX_LIFETIME}")
    return value


def _binding(text: str | None, q_param: bool) -> tuple[str, bool]:
    if not text:
        raise RegistrationError(Code.BAD_REQUEST, "b= without a binding")
    letters = set(text)
    if not letters <= _BINDING_LETTERS or len(letters) != len(text):
        raise RegistrationError(Code.BAD_REQUEST, f"b={text!r} is not a binding (letters U, T, S, N, Q)")
    if letters == {"Q"}:
        raise RegistrationError(Code.BAD_REQUEST, f"b={text!r} names no transport")
    return text, q_param or "Q" in letters


# Devices of one kind send the same payload: parse it once. Bounded; cleared wholesale when full.
_LINKS_CACHE_SIZE: Final = 1024
_LINKS_CACHE: dict[bytes, RegistrationLinks] = {}
_NO_LINKS: Final = RegistrationLinks()


def _links(payload: bytes, content_format: int | None) -> RegistrationLinks:
    if content_format is not None and content_format != ContentFormat.LINK:
        raise RegistrationError(
            Code.UNSUPPORTED_CONTENT_FORMAT,
            f"the object list must be link format (Content-Format 40), not {content_format}",
        )
    if not payload.strip():
        return _NO_LINKS
    cached = _LINKS_CACHE.get(payload)
    if cached is not None:
        return cached
    try:
        links = parse_registration(payload)
    except LinkFormatError as e:
        raise RegistrationError(Code.BAD_REQUEST, f"object list: {e}") from None
    if len(_LINKS_CACHE) >= _LINKS_CACHE_SIZE:
        _LINKS_CACHE.clear()
    _LINKS_CACHE[bytes(payload)] = links
    return links
