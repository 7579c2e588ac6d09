"""The vocabulary of LwM2M object models: resource types, operations, object and resource definitions.

Shared by the codecs (which need a resource's type to decode TLV and text values), the built-in
object definitions and the OMA DDF XML loader.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ResourceType(enum.Enum):
    """Data types of LwM2M resources (Core 1.1/1.2, Appendix C); values are the DDF XML spellings."""

    STRING = "String"
    INTEGER = "Integer"
    UNSIGNED_INTEGER = "Unsigned Integer"
    FLOAT = "Float"
    BOOLEAN = "Boolean"
    OPAQUE = "Opaque"
    TIME = "Time"
    OBJLNK = "Objlnk"
    CORELNK = "Corelnk"
    NONE = "none"  # executable resources carry no value


class Operations(enum.Flag):
    """Which operations a resource allows (DDF ``<Operations>``: R, W, RW, E or empty)."""

    NONE = 0
    R = enum.auto()
    W = enum.auto()
    E = enum.auto()
    RW = R | W


@dataclass(frozen=True, slots=True)
class ResourceModel:
    id: int
    name: str
    type: ResourceType
    operations: Operations
    multiple: bool = False
    mandatory: bool = False
    units: str = ""
    range: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class ObjectModel:
    id: int
    name: str
    version: str = "1.0"  # object version ("1.0", "1.1", "1.2")
    lwm2m_version: str = "1.0"  # minimal LwM2M enabler version
    multiple: bool = False  # multiple instances allowed
    mandatory: bool = False
    urn: str = ""
    description: str = ""
    resources: dict[int, ResourceModel] = field(default_factory=dict)

    def resource(self, rid: int) -> ResourceModel | None:
        return self.resources.get(rid)


def version_key(version: str) -> tuple[int, int]:
    """The sortable form of an object or enabler version ``"major.minor"``, e.g. ``"1.10"`` -> ``(1, 10)``.

    Raises ``ValueError`` for anything else (``"1"``, ``"1.x"``, ``"v1.1"``).
    """
    major, dot, minor = version.strip().partition(".")
    if not dot or not major.isdigit() or not minor.isdigit() or not major.isascii() or not minor.isascii():
        raise ValueError(f"not an object version (major.minor): {version!r}")
    return int(major), int(minor)


def object_urn(oid: int, version: str = "1.0") -> str:
    """The object's URN by the OMA registry's id ranges; version 1.0 carries no version suffix.

    >>> object_urn(3, "1.1"), object_urn(3303), object_urn(10241)
    ('urn:oma:lwm2m:oma:3:1.1', 'urn:oma:lwm2m:ext:3303', 'urn:oma:lwm2m:x:10241')
    """
    if oid < 2048:
        kind = "oma"
    elif oid <= 10240:
        kind = "ext"
    else:
        kind = "x"
    suffix = "" if version_key(version) == (1, 0) else f":{version}"
    return f"urn:oma:lwm2m:{kind}:{oid}{suffix}"
