"""Pure pieces of the device-management operations: URI paths, formats, Write-Attributes and Execute
arguments. No I/O; the server turns them into CoAP requests.

>>> uri_path("/", LwM2mPath(3, 0, 9)), uri_path("/lwm2m", LwM2mPath(3)), uri_path("/", ROOT)
(('3', '0', '9'), ('lwm2m', '3'), ())
>>> attributes_query({"pmin": 10, "pmax": 60, "gt": 25.5, "st": None})
('pmin=10', 'pmax=60', 'gt=25.5', 'st')
>>> execute_arguments({0: "on", 1: None})
b"0='on',1"
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from gateway.lwm2m.codec import ContentFormat, FormatNeed, choose_format
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import ModelLookup, Node, ResourceInstance, SingleResource, resource_model
from gateway.lwm2m.path import ROOT, LwM2mPath, PathError
from gateway.lwm2m.server.registration import Registration

#: Write-Attributes names (LwM2M 1.1 and 1.2 notification attributes).
NOTIFICATION_ATTRIBUTES: Final = frozenset({"pmin", "pmax", "gt", "lt", "st", "epmin", "epmax", "edge", "con", "hqmax"})
_INTEGER_ATTRIBUTES: Final = frozenset({"pmin", "pmax", "epmin", "epmax", "edge", "con", "hqmax"})


def as_path(path: LwM2mPath | str) -> LwM2mPath:
    """A path from a path or its text (``"/3/0/9"``); ``ValueError`` (:class:`PathError`) if invalid."""
    return path if isinstance(path, LwM2mPath) else LwM2mPath.parse(path)


def uri_path(root: str, path: LwM2mPath) -> tuple[str, ...]:
    """Uri-Path segments for ``path`` on a client whose objects live under ``root``."""
    prefix = () if root in ("", "/") else tuple(s for s in root.split("/") if s)
    return prefix + tuple(str(i) for i in path.ids)


def location_to_path(location: tuple[str, ...], root: str) -> LwM2mPath | None:
    """The path a Create answer's Location-Path names (``("3303", "1")`` -> ``/3303/1``), if any."""
    prefix = uri_path(root, ROOT)
    segments = location[len(prefix):] if location[: len(prefix)] == prefix else location
    try:
        return LwM2mPath.parse("/" + "/".join(segments)) if segments else None
    except PathError:
        return None


def value_need(model_of: ModelLookup, path: LwM2mPath) -> FormatNeed:
    """What a Read (or Observe) of ``path`` returns: one value, one opaque value, or a node."""
    if path.depth < 3:
        return FormatNeed.NODE
    rmodel = resource_model(model_of, path)
    if rmodel is None:
        return FormatNeed.NODE  # unknown resource: a format that carries anything (TLV for 1.0)
    if path.depth == 3 and rmodel.multiple:
        return FormatNeed.NODE
    return FormatNeed.OPAQUE_VALUE if rmodel.type is ResourceType.OPAQUE else FormatNeed.VALUE


def read_format(reg: Registration, model_of: ModelLookup, path: LwM2mPath) -> ContentFormat:
    """The Accept of a Read/Observe of ``path`` on this client."""
    return choose_format(reg.content_formats, value_need(model_of, path), lwm2m_version=reg.lwm2m_version)


def write_format(reg: Registration, node: Node) -> ContentFormat:
    """The Content-Format of a Write of ``node``: plain text / opaque for one value, else a node format."""
    if isinstance(node, SingleResource | ResourceInstance):
        need = FormatNeed.OPAQUE_VALUE if node.type is ResourceType.OPAQUE else FormatNeed.VALUE
    else:
        need = FormatNeed.NODE
    return choose_format(reg.content_formats, need, lwm2m_version=reg.lwm2m_version)


def composite_format(reg: Registration) -> ContentFormat:
    return choose_format(reg.content_formats, FormatNeed.COMPOSITE, lwm2m_version=reg.lwm2m_version)


def composite_request_format(fmt: ContentFormat) -> ContentFormat:
    """The format of a Read/Observe-Composite *request* body (paths only): SenML JSON or CBOR."""
    return fmt if fmt in (ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR) else ContentFormat.SENML_CBOR


def attributes_query(attributes: Mapping[str, float | int | None]) -> tuple[str, ...]:
    """Uri-Query options of a Write-Attributes; a ``None`` value removes the attribute.

    Raises ``ValueError`` for an unknown name or a value that is not a finite number (integers only
    for pmin, pmax, epmin, epmax, edge, con, hqmax).
    """
    query = []
    for name, value in attributes.items():
        if name not in NOTIFICATION_ATTRIBUTES:
            known = ", ".join(sorted(NOTIFICATION_ATTRIBUTES))
            raise ValueError(f"unknown notification attribute {name!r} (known: {known})")
        if value is None:
            query.append(name)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"attribute {name} must be a number, not {value!r}")
        if name in _INTEGER_ATTRIBUTES:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"attribute {name} must be an integer, not {value!r}")
            if value < 0:
                raise ValueError(f"attribute {name} must not be negative")
            query.append(f"{name}={int(value)}")
        else:
            if not math.isfinite(value):
                raise ValueError(f"attribute {name} must be finite, not {value!r}")
            query.append(f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}")
    return tuple(query)


def execute_arguments(arguments: str | Mapping[int, str | None] | None) -> bytes:
    """The payload of an Execute: text as given, or ``{0: "on", 1: None}`` -> ``0='on',1``."""
    if arguments is None:
        return b""
    if isinstance(arguments, str):
        return arguments.encode()
    parts = []
    for digit, value in arguments.items():
        if not (isinstance(digit, int) and 0 <= digit <= 9):
            raise ValueError(f"execute argument numbers are 0..9, not {digit!r}")
        if value is None:
            parts.append(str(digit))
        else:
            if "'" in value or not value.isprintable():
                raise ValueError(f"execute argument {digit} contains a quote or control characters")
            parts.append(f"{digit}='{value}'")
    return ",".join(parts).encode()
