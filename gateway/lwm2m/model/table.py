"""The compact table notation in which the built-in object definitions (``core.py``, ``ipso.py``) are written.

One resource is one row::

    # id   name               ops  instances  required  type   range        units
    (9,    "Battery Level",   R,   ONE,       OPT,      INT,   "0..100",    "%"),

and one object version is :func:`define` over its rows. A later version of an object is written as the
earlier one plus what changed (:func:`revise`), which is how the OMA registry evolves them too: the
reader sees at a glance what version 1.1 added.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType, object_urn

# Names for the columns, so that a row reads like the spec's table.
R = Operations.R
W = Operations.W
RW = Operations.RW
E = Operations.E
NO_OPS = Operations.NONE  # Security object resources: only the bootstrap server touches them

ONE = False  # single instance
MANY = True  # multiple instances
MAND = True
OPT = False

STR = ResourceType.STRING
INT = ResourceType.INTEGER
UINT = ResourceType.UNSIGNED_INTEGER
FLOAT = ResourceType.FLOAT
BOOL = ResourceType.BOOLEAN
OPAQUE = ResourceType.OPAQUE
TIME = ResourceType.TIME
OBJLNK = ResourceType.OBJLNK
CORELNK = ResourceType.CORELNK
NONE = ResourceType.NONE

Row = tuple[int, str, Operations, bool, bool, ResourceType, str, str]


def _resources(oid: int, version: str, rows: Iterable[Row]) -> dict[int, ResourceModel]:
    resources: dict[int, ResourceModel] = {}
    for rid, name, ops, multiple, mandatory, rtype, value_range, units in rows:
        if rid in resources:
            raise ValueError(f"object {oid} version {version}: resource {rid} defined twice")
        resources[rid] = ResourceModel(
            id=rid,
            name=name,
            type=rtype,
            operations=ops,
            multiple=multiple,
            mandatory=mandatory,
            units=units,
            range=value_range,
        )
    return resources


def define(
    oid: int,
    name: str,
    rows: Iterable[Row],
    *,
    version: str = "1.0",
    lwm2m: str = "1.0",
    multiple: bool,
    mandatory: bool,
    description: str = "",
) -> ObjectModel:
    """One object version from its resource rows; a resource id given twice is a ``ValueError``."""
    return ObjectModel(
        id=oid,
        name=name,
        version=version,
        lwm2m_version=lwm2m,
        multiple=multiple,
        mandatory=mandatory,
        urn=object_urn(oid, version),
        description=description,
        resources=dict(sorted(_resources(oid, version, rows).items())),
    )


def revise(
    base: ObjectModel,
    *,
    version: str,
    lwm2m: str | None = None,
    rows: Iterable[Row] = (),
    drop: Iterable[int] = (),
) -> ObjectModel:
    """Another version of ``base``: the resources in ``drop`` removed, ``rows`` added or replacing
    the resource with the same id. Everything else (name, instances, mandatory) is kept."""
    dropped = set(drop)
    resources = {rid: res for rid, res in base.resources.items() if rid not in dropped}
    resources.update(_resources(base.id, version, rows))
    return ObjectModel(
        id=base.id,
        name=base.name,
        version=version,
        lwm2m_version=base.lwm2m_version if lwm2m is None else lwm2m,
        multiple=base.multiple,
        mandatory=base.mandatory,
        urn=object_urn(base.id, version),
        description=base.description,
        resources=dict(sorted(resources.items())),
    )
