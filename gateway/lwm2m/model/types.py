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
