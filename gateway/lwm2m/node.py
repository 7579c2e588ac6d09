"""LwM2M values and the node tree (object, object instance, single/multiple resource, resource instance).

Values in Python, by resource type:

=================  ==========================================================================
STRING, CORELNK    ``str`` (a CoRE link value stays the link-format text)
INTEGER            ``int`` (signed 64-bit range)
UNSIGNED_INTEGER   ``int`` (0 .. 2**64-1)
FLOAT              ``float``
BOOLEAN            ``bool``
OPAQUE             ``bytes``
TIME               ``int``: seconds since the Unix epoch (UTC). An int rather than a ``datetime``
                   because every LwM2M format carries TIME as an integer and the bridge wants
                   epoch numbers; ``datetime.fromtimestamp(v, UTC)`` when a date is needed.
OBJLNK             :class:`ObjLink`
=================  ==========================================================================

Nodes are plain slotted dataclasses, not frozen ones: they hold dicts (so freezing them would be
shallow anyway) and the hot decoders build one per value, where a frozen dataclass costs three times
as much to construct. Treat them as values: build new ones rather than changing shared ones.

Two shapes of the same data: the node tree (what a Read of one path returns, as in Leshan) and the
flat form ``dict[LwM2mPath, Value]`` keyed by resource or resource-instance paths (what composite
operations and SenML carry). :func:`node_to_values` and :func:`node_from_values` convert between them.
The flat form cannot hold an empty object instance or an empty multiple resource.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from gateway.lwm2m.model.types import ObjectModel, ResourceModel, ResourceType
from gateway.lwm2m.path import MAX_ID, LwM2mPath, PathError


@dataclass(frozen=True, slots=True, order=True)
class ObjLink:
    """An object link value ``oid:iid``; ``ObjLink(65535, 65535)`` is the null link."""

    oid: int
    iid: int

    def __post_init__(self) -> None:
        if not (type(self.oid) is int and type(self.iid) is int and 0 <= self.oid <= MAX_ID
                and 0 <= self.iid <= MAX_ID):
            raise ValueError(f"object link ids must be ints in 0..{MAX_ID}, got {self.oid!r}:{self.iid!r}")

    def __str__(self) -> str:
        return f"{self.oid}:{self.iid}"

    @classmethod
    def parse(cls, text: str) -> ObjLink:
        """Parse ``"oid:iid"``; raises ``ValueError`` if it is anything else."""
        oid, colon, iid = text.partition(":")
        if not colon or not _is_u16_text(oid) or not _is_u16_text(iid):
            raise ValueError(f"invalid object link {text!r}: expected 'oid:iid' with ids 0..{MAX_ID}")
        return cls(int(oid), int(iid))

    @property
    def is_null(self) -> bool:
        return self.oid == MAX_ID and self.iid == MAX_ID


NULL_OBJLINK: Final = ObjLink(MAX_ID, MAX_ID)

#: A resource (instance) value; see the module docstring for which type carries which.
Value = str | int | float | bool | bytes | ObjLink

#: How codecs find the model of an object: ``model_of(oid)`` -> the model, or None if unknown.
ModelLookup = Callable[[int], ObjectModel | None]


def no_models(oid: int) -> ObjectModel | None:
    """A :data:`ModelLookup` that knows no object (every value decodes untyped)."""
    return None


def resource_model(model_of: ModelLookup, path: LwM2mPath) -> ResourceModel | None:
    """The model of the resource ``path`` points into, or None if the object or resource is unknown."""
    ids = path.ids
    if len(ids) < 3:
        return None
    model = model_of(ids[0])
    return None if model is None else model.resources.get(ids[2])


class NodeError(ValueError):
    """Values do not fit together into a node (conflicting shapes, paths outside the node...)."""


@dataclass(slots=True)
class ResourceInstance:
    """One instance of a multiple resource, as read from ``/oid/iid/rid/riid``."""

    id: int
    value: Value
    type: ResourceType


@dataclass(slots=True)
class SingleResource:
    id: int
    value: Value
    type: ResourceType


@dataclass(slots=True)
class MultipleResource:
    """A multiple-instance resource: resource instance id -> value, all of one type."""

    id: int
    instances: dict[int, Value]
    type: ResourceType


Resource = SingleResource | MultipleResource


@dataclass(slots=True)
class ObjectInstanceNode:
    id: int
    resources: dict[int, Resource]


@dataclass(slots=True)
class ObjectNode:
    id: int
    instances: dict[int, ObjectInstanceNode]


Node = ObjectNode | ObjectInstanceNode | SingleResource | MultipleResource | ResourceInstance


def infer_type(value: Value) -> ResourceType:
    """The resource type a bare Python value stands for when no model says otherwise."""
    t = type(value)
    if t is str:
        return ResourceType.STRING
    if t is bool:
        return ResourceType.BOOLEAN
    if t is int:
        return ResourceType.INTEGER
    if t is float:
        return ResourceType.FLOAT
    if t is bytes:
        return ResourceType.OPAQUE
    if t is ObjLink:
        return ResourceType.OBJLNK
    raise NodeError(f"{value!r} ({t.__name__}) is not an LwM2M value")


def node_depth(node: Node) -> int:
    """The path depth a node lives at: 1 object, 2 instance, 3 resource, 4 resource instance."""
    if isinstance(node, SingleResource | MultipleResource):
        return 3
    if isinstance(node, ObjectInstanceNode):
        return 2
    if isinstance(node, ObjectNode):
        return 1
    return 4


def check_node_path(node: Node, path: LwM2mPath) -> None:
    """Raise :class:`NodeError` unless ``path`` is where ``node`` lives (depth and last id)."""
    depth = node_depth(node)
    if path.depth != depth or path.ids[-1] != node.id:
        raise NodeError(f"a {type(node).__name__} with id {node.id} cannot live at {path}")


def iter_leaves(node: Node, path: LwM2mPath) -> Iterator[tuple[LwM2mPath, Value, ResourceType]]:
    """Every value in ``node`` (which lives at ``path``) with its full path and type, in id order."""
    check_node_path(node, path)
    yield from _leaves(node, path.ids)


def _leaves(node: Node, ids: tuple[int, ...]) -> Iterator[tuple[LwM2mPath, Value, ResourceType]]:
    # Nodes are built by application code too: check the ids the dict keys give.
    if isinstance(node, SingleResource | ResourceInstance):
        yield _path(ids), node.value, node.type
    elif isinstance(node, MultipleResource):
        for riid in sorted(node.instances):
            yield _path((*ids, riid)), node.instances[riid], node.type
    else:
        children: Mapping[int, Node] = node.resources if isinstance(node, ObjectInstanceNode) else node.instances
        for key in sorted(children):
            child = children[key]
            if child.id != key:
                raise NodeError(f"{_path(ids)}: {type(child).__name__} {child.id} filed under id {key}")
            yield from _leaves(child, (*ids, key))


def _path(ids: tuple[int, ...]) -> LwM2mPath:
    try:
        return LwM2mPath(*ids)
    except PathError as e:
        raise NodeError(str(e)) from None


def node_to_values(node: Node, path: LwM2mPath) -> dict[LwM2mPath, Value]:
    """The flat form of ``node`` (which lives at ``path``): leaf path -> value."""
    return {p: v for p, v, _ in iter_leaves(node, path)}


def node_from_values(
    path: LwM2mPath, values: Mapping[LwM2mPath, Value], model_of: ModelLookup = no_models
) -> Node:
    """The node at ``path`` built from flat values; types come from the model, else from the values."""
    leaves = []
    for p, v in values.items():
        rmodel = resource_model(model_of, p)
        leaves.append((p, v, infer_type(v) if rmodel is None else rmodel.type))
    return build_node(path, leaves, model_of)


def build_node(
    path: LwM2mPath,
    leaves: Iterable[tuple[LwM2mPath, Value, ResourceType]],
    model_of: ModelLookup = no_models,
) -> Node:
    """Assemble the node at ``path`` from typed leaves (resource or resource-instance paths under it).

    The payload's shape decides single vs multiple (a value at ``/3/0/7/0`` makes ``/3/0/7`` a multiple
    resource); the model is only consulted for an empty multiple resource. Raises :class:`NodeError`
    for a leaf outside ``path``, a duplicate, a resource that is both single and multiple, or
    instances of one resource with different types (integers among floats are promoted to float).
    """
    prefix = path.ids
    depth = len(prefix)
    if depth == 0:
        raise NodeError("values at the root path have no single node; use the path -> value form")
    tree: dict[int, dict[int, _Collected]] = {}  # iid -> rid -> what was collected
    for leaf_path, value, rtype in leaves:
        ids = leaf_path.ids
        if ids[:depth] != prefix:
            raise NodeError(f"{leaf_path} is outside the requested path {path}")
        n = len(ids)
        if n < 3:
            raise NodeError(f"{leaf_path}: values belong to resources or resource instances")
        resources = tree.setdefault(ids[1], {})
        collected = resources.get(ids[2])
        if n == 3:
            if collected is not None:
                raise NodeError(f"{leaf_path}: more than one value, or both single and multiple")
            resources[ids[2]] = _Collected(value, None, rtype)
        elif collected is None:
            resources[ids[2]] = _Collected(None, {ids[3]: value}, rtype)
        else:
            collected.add_instance(ids[3], value, rtype, leaf_path)

    oid = prefix[0]
    if depth == 1:
        return ObjectNode(oid, {iid: _instance(iid, res) for iid, res in tree.items()})
    iid = prefix[1]
    resources = tree.get(iid, {})
    if depth == 2:
        return _instance(iid, resources)
    rid = prefix[2]
    collected = resources.get(rid)
    if depth == 3:
        if collected is None:
            model = model_of(oid)
            rmodel = None if model is None else model.resources.get(rid)
            if rmodel is not None and rmodel.multiple:
                return MultipleResource(rid, {}, rmodel.type)
            raise NodeError(f"no value for resource {path}")
        return collected.resource(rid)
    if collected is None or collected.instances is None:
        raise NodeError(f"no value for resource instance {path}")
    return ResourceInstance(prefix[3], collected.instances[prefix[3]], collected.type)


class _Collected:
    """The values of one resource gathered so far by :func:`build_node`."""

    __slots__ = ("instances", "type", "value")

    def __init__(self, value: Value | None, instances: dict[int, Value] | None, rtype: ResourceType):
        self.value = value
        self.instances = instances  # None for a single resource
        self.type = rtype

    def add_instance(self, riid: int, value: Value, rtype: ResourceType, where: LwM2mPath) -> None:
        instances = self.instances
        if instances is None:
            raise NodeError(f"{where}: resource {where.parent} has both a single value and instances")
        if riid in instances:
            raise NodeError(f"{where}: more than one value")
        if rtype is not self.type:
            numbers = (ResourceType.INTEGER, ResourceType.FLOAT)
            if self.type not in numbers or rtype not in numbers:
                kinds = f"{self.type.value}, {rtype.value}"
                raise NodeError(f"{where}: instances of one resource with different types ({kinds})")
            # An untyped payload mixing 3 and 2.5 in one resource: the resource is a float one.
            for k, v in instances.items():
                instances[k] = float(v)  # type: ignore[arg-type]
            self.type = ResourceType.FLOAT
        if self.type is ResourceType.FLOAT and type(value) is int:
            value = float(value)
        instances[riid] = value

    def resource(self, rid: int) -> Resource:
        if self.instances is None:
            assert self.value is not None
            return SingleResource(rid, self.value, self.type)
        return MultipleResource(rid, self.instances, self.type)


def _instance(iid: int, resources: dict[int, _Collected]) -> ObjectInstanceNode:
    return ObjectInstanceNode(iid, {rid: c.resource(rid) for rid, c in resources.items()})


def _is_u16_text(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= MAX_ID


class TimestampedValue(NamedTuple):
    """One value as a device reported it: where, what, and when (Unix seconds; None if untimed)."""

    path: LwM2mPath
    value: Value
    ts: float | None
