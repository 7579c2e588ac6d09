"""From LwM2M values to ThingsBoard keys and back: pure functions, no I/O.

- :class:`Plan`: a profile applied to one registration shape (which objects, in which versions): the
  key of every mapped path, what to observe, read and write attributes on after registration, and the
  key -> path map for downlink. Devices of one kind share one plan (:func:`plan_for` caches them).
- :func:`uplink_records`: the values of a notification or Send as telemetry records (grouped by the
  device's timestamp, else the receive time) and client attributes.
- :func:`leshan_text`: a node as ThingsBoard's LwM2M RPC answers show it
  (``LwM2mSingleResource [id=9, value=87, type=INTEGER]``: Leshan's ``toString``).
- :func:`coerce` and the node builders: JSON values from ThingsBoard (RPC params, shared attributes)
  as typed LwM2M values, by the resource model.

Values go upstream as JSON: numbers, strings and booleans as they are; opaque bytes as lower-case hex
(Leshan's conversion of OPAQUE to text); object links as ``"oid:iid"``; a multiple resource mapped by
its resource path as an object ``{"0": v0, "1": v1}``. A float that is not finite is dropped (JSON has
no NaN) and counted by the caller.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from gateway.lwm2m.bridge.profiles import PathSpec, Profile
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import (
    ModelLookup,
    MultipleResource,
    Node,
    ObjectInstanceNode,
    ObjectNode,
    ObjLink,
    ResourceInstance,
    SingleResource,
    TimestampedValue,
    Value,
    infer_type,
    resource_model,
)
from gateway.lwm2m.path import LwM2mPath

if TYPE_CHECKING:
    from gateway.lwm2m.server.registration import Registration

__all__ = [
    "Plan",
    "Target",
    "coerce",
    "instance_node",
    "json_value",
    "leshan_text",
    "leshan_values_text",
    "plan_for",
    "resource_node",
    "uplink_records",
]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the values of one path go: ``key``, as telemetry and/or as a client attribute."""

    key: str
    telemetry: bool
    attribute: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """A profile applied to a registration shape (see the module docstring)."""

    profile: Profile
    #: resource (instance) path -> where its values go
    targets: Mapping[LwM2mPath, Target]
    #: key -> path, for RPC ``{"key": ...}`` and shared-attribute writes
    keys: Mapping[str, LwM2mPath]
    observe: tuple[LwM2mPath, ...]
    #: attribute/telemetry paths that are not observed (read after registration)
    unobserved: tuple[LwM2mPath, ...]
    #: path -> notification attributes to write after registration
    notify: tuple[tuple[LwM2mPath, Mapping[str, int | float]], ...]
    #: the object versions this plan was made for (oid -> version, None: not registered)
    versions: tuple[tuple[int, str | None], ...]

    @property
    def name(self) -> str:
        return self.profile.name


def registered_version(reg: Registration, oid: int, default: str) -> str | None:
    """The version of object ``oid`` as ``reg`` registered it (``default`` without ``ver=``), None if
    not registered."""
    obj = reg.objects.get(oid)
    if obj is None:
        return None
    return obj.version.strip('"') if obj.version else default


def _applies(spec: PathSpec, version: str | None, profile: Profile) -> bool:
    if version is None:
        return False  # the device has no such object
    return spec.version is None or not profile.object_version_must_match or spec.version == version


_PLANS: dict[tuple[int, tuple[tuple[int, str | None], ...]], Plan] = {}
_PLANS_LIMIT: Final = 4096


def plan_for(profile: Profile, reg: Registration) -> Plan:
    """The plan of ``profile`` for ``reg`` (shared by every registration of the same shape)."""
    versions = tuple(
        (oid, registered_version(reg, oid, profile.default_object_version)) for oid in profile.object_ids()
    )
    cache_key = (id(profile), versions)
    plan = _PLANS.get(cache_key)
    if plan is not None and plan.profile is profile:
        return plan
    plan = make_plan(profile, dict(versions))
    if len(_PLANS) >= _PLANS_LIMIT:
        _PLANS.clear()
    _PLANS[cache_key] = plan
    return plan


def make_plan(profile: Profile, versions: Mapping[int, str | None]) -> Plan:
    """The plan of ``profile`` for a device with these object versions (oid -> version or None)."""
    targets: dict[LwM2mPath, Target] = {}
    keys: dict[str, LwM2mPath] = {}
    observe: list[LwM2mPath] = []
    unobserved: list[LwM2mPath] = []
    notify: list[tuple[LwM2mPath, Mapping[str, int | float]]] = []
    for spec in profile.paths:
        if not _applies(spec, versions.get(spec.object_id), profile):
            continue
        if spec.key is not None:
            keys[spec.key] = spec.path
            if spec.telemetry or spec.attribute:
                targets[spec.path] = Target(spec.key, spec.telemetry, spec.attribute)
                if not spec.observe:
                    unobserved.append(spec.path)
        if spec.observe:
            observe.append(spec.path)
        if spec.notify:
            notify.append((spec.path, spec.notify))
    return Plan(
        profile=profile,
        targets=targets,
        keys=keys,
        observe=tuple(observe),
        unobserved=tuple(unobserved),
        notify=tuple(notify),
        versions=tuple(sorted(versions.items())),
    )


# -- uplink -----------------------------------------------------------------------------------------------


def json_value(value: Value) -> Any:
    """``value`` as ThingsBoard gets it (see the module docstring); ValueError for a non-finite float."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"{value!r} is not a JSON number")
        return value
    if kind is int or kind is str or kind is bool:
        return value
    if kind is bytes:
        return value.hex()  # type: ignore[union-attr]
    return str(value)  # ObjLink: "oid:iid"


def uplink_records(
    targets: Mapping[LwM2mPath, Target], values: Sequence[TimestampedValue], received_ms: int
) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any], int]:
    """(telemetry records as (ts_ms, {key: value}) in first-seen order, client attributes, values
    dropped). Values of paths the plan does not map are ignored (not counted)."""
    telemetry: dict[int, dict[str, Any]] = {}
    attributes: dict[str, Any] = {}
    dropped = 0
    for path, value, ts in values:
        target = targets.get(path)
        instance: int | None = None
        if target is None:
            if path.depth != 4:
                continue
            target = targets.get(path.parent)
            if target is None:
                continue
            instance = path.ids[3]
        try:
            converted = json_value(value)
        except ValueError:
            dropped += 1
            continue
        ts_ms = received_ms if ts is None else int(ts * 1000)
        if target.telemetry:
            record = telemetry.get(ts_ms)
            if record is None:
                record = telemetry[ts_ms] = {}
            _put(record, target.key, instance, converted)
        if target.attribute:
            _put(attributes, target.key, instance, converted)
    return list(telemetry.items()), attributes, dropped


def _put(into: dict[str, Any], key: str, instance: int | None, value: Any) -> None:
    if instance is None:
        into[key] = value
        return
    current = into.get(key)
    if not isinstance(current, dict):
        current = into[key] = {}
    current[str(instance)] = value


# -- Leshan's text form (what ThingsBoard's RPC answers carry as "value") -------------------------------------

_TYPE_NAMES: Final = {t: t.name for t in ResourceType} | {ResourceType.CORELNK: "CORELINK"}


def _text(value: Value, rtype: ResourceType) -> str:
    if type(value) is bool:
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ObjLink):
        return f"ObjectLink [objectId={value.oid}, objectInstanceId={value.iid}]"
    if rtype is ResourceType.TIME and isinstance(value, int):
        return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(value))
    return str(value)


def _instance_text(riid: int, value: Value, rtype: ResourceType) -> str:
    return f"LwM2mResourceInstance [id={riid}, value={_text(value, rtype)}, type={_TYPE_NAMES[rtype]}]"


def leshan_text(node: Node) -> str:
    """``node`` as Leshan's ``toString`` writes it (ThingsBoard's RPC answers show this text)."""
    if isinstance(node, SingleResource):
        value = _text(node.value, node.type)
        return f"LwM2mSingleResource [id={node.id}, value={value}, type={_TYPE_NAMES[node.type]}]"
    if isinstance(node, ResourceInstance):
        return _instance_text(node.id, node.value, node.type)
    if isinstance(node, MultipleResource):
        inner = ", ".join(f"{k}={_instance_text(k, node.instances[k], node.type)}" for k in sorted(node.instances))
        return f"LwM2mMultipleResource [id={node.id}, values={{{inner}}}, type={_TYPE_NAMES[node.type]}]"
    if isinstance(node, ObjectInstanceNode):
        inner = ", ".join(f"{k}={leshan_text(node.resources[k])}" for k in sorted(node.resources))
        return f"LwM2mObjectInstance [id={node.id}, resources={{{inner}}}]"
    inner = ", ".join(f"{k}={leshan_text(node.instances[k])}" for k in sorted(node.instances))
    return f"LwM2mObject [id={node.id}, instances={{{inner}}}]"


def leshan_values_text(values: Mapping[LwM2mPath, Value], model_of: ModelLookup) -> str:
    """A composite answer (path -> value) as Leshan's map ``toString``: ``{/3/0/9=LwM2mSingleResource [...]}``."""
    parts = []
    for path in sorted(values):
        value = values[path]
        rmodel = resource_model(model_of, path)
        rtype = rmodel.type if rmodel is not None and rmodel.type is not ResourceType.NONE else infer_type(value)
        if path.depth == 4:
            parts.append(f"{path}={_instance_text(path.ids[3], value, rtype)}")
        else:
            parts.append(f"{path}={leshan_text(SingleResource(path.ids[-1], value, rtype))}")
    return "{" + ", ".join(parts) + "}"


# -- downlink: JSON values -> typed LwM2M values ----------------------------------------------------------


def coerce(value: Any, rtype: ResourceType | None, where: object) -> tuple[Value, ResourceType]:
    """A JSON value as a value of ``rtype`` (None: by the JSON type); ValueError saying why not."""
    if value is None or isinstance(value, dict | list):
        raise ValueError(f"{where}: {json.dumps(value)} is not a resource value")
    if rtype is None:
        if isinstance(value, bool):
            return value, ResourceType.BOOLEAN
        if isinstance(value, int):
            return value, ResourceType.INTEGER
        if isinstance(value, float):
            return value, ResourceType.FLOAT
        return str(value), ResourceType.STRING
    try:
        return _coerce(value, rtype), rtype
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{where}: {value!r} is not a {rtype.value} value ({exc})") from None


def _coerce(value: Any, rtype: ResourceType) -> Value:
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if rtype in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.TIME):
        if isinstance(value, bool):
            raise ValueError("a boolean is not an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("not a whole number")
            value = int(value)
        number = int(value.strip()) if isinstance(value, str) else int(value)
        if rtype is ResourceType.UNSIGNED_INTEGER and number < 0:
            raise ValueError("negative")
        return number
    if rtype is ResourceType.FLOAT:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        number_f = float(value)
        if not math.isfinite(number_f):
            raise ValueError("not finite")
        return number_f
    if rtype is ResourceType.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise ValueError("expected true or false")
    if rtype is ResourceType.OPAQUE:
        if not isinstance(value, str):
            raise ValueError("opaque values are written as hex text")
        return bytes.fromhex(value)
    if rtype is ResourceType.OBJLNK:
        return ObjLink.parse(str(value))
    raise ValueError("an executable resource takes no value")


def _rtype(model_of: ModelLookup, path: LwM2mPath) -> tuple[ResourceType | None, bool | None]:
    rmodel = resource_model(model_of, path)
    if rmodel is None:
        return None, None
    if rmodel.type is ResourceType.NONE:
        raise ValueError(f"{path} is executable: it takes Execute, not a value")
    return rmodel.type, rmodel.multiple


def resource_node(path: LwM2mPath, value: Any, model_of: ModelLookup) -> SingleResource | MultipleResource:
    """The resource ``path`` (``/oid/iid/rid``) holding ``value``: a JSON object ``{"0": v, ...}``
    makes a multiple resource, anything else a single one. ValueError if the value does not fit."""
    rtype, multiple = _rtype(model_of, path)
    rid = path.ids[2]
    if isinstance(value, dict):
        if multiple is False:
            raise ValueError(f"{path} is a single resource: give one value, not an object")
        instances: dict[int, Value] = {}
        kind = rtype
        for riid_text, item in value.items():
            riid = _id(riid_text, f"{path}: resource instance id")
            converted, kind = coerce(item, rtype if rtype is not None else kind, f"{path}/{riid}")
            instances[riid] = converted
        if kind is None:
            kind = ResourceType.STRING
        return MultipleResource(rid, instances, kind)
    if multiple:
        raise ValueError(f'{path} is a multiple resource: give its instances as an object {{"0": value, ...}}')
    converted, kind = coerce(value, rtype, path)
    return SingleResource(rid, converted, kind)


def instance_node(path: LwM2mPath, iid: int, value: Any, model_of: ModelLookup) -> ObjectInstanceNode:
    """An object instance of the object of ``path`` with resources ``{"rid": value, ...}``."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f'{path}: expected the resources as an object {{"rid": value, ...}}, got {value!r}')
    oid = path.ids[0]
    resources: dict[int, SingleResource | MultipleResource] = {}
    for rid_text, item in value.items():
        rid = _id(rid_text, f"{path}: resource id")
        resources[rid] = resource_node(LwM2mPath(oid, iid, rid), item, model_of)
    return ObjectInstanceNode(iid, resources)


def object_node(path: LwM2mPath, instances: Mapping[int, ObjectInstanceNode]) -> ObjectNode:
    return ObjectNode(path.ids[0], dict(instances))


def _id(text: Any, what: str) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    elif isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 5:
        number = int(text)
    else:
        raise ValueError(f"{what} {text!r} is not a number")
    if not 0 <= number <= 65534:
        raise ValueError(f"{what} {number} out of range 0..65534")
    return number


def flat_values(values: Mapping[str, Any], resolve: Any, model_of: ModelLookup) -> dict[LwM2mPath, Value]:
    """WriteComposite ``nodes``: ``{"/3/0/14": "+02", "batteryLevel": 5, "/3/0/7": {"0": 1}}`` as typed
    resource (instance) values; ``resolve(text)`` turns a path or key into a path (ValueError if neither)."""
    result: dict[LwM2mPath, Value] = {}
    for name, value in values.items():
        path: LwM2mPath = resolve(name)
        if path.depth < 3:
            if path.depth != 2 or not isinstance(value, dict):
                raise ValueError(f"{name}: WriteComposite writes resources or resource instances, not {path}")
            for rid_text, item in value.items():
                rpath = path.child(_id(rid_text, f"{name}: resource id"))
                result.update(_leaves(rpath, item, model_of))
            continue
        result.update(_leaves(path, value, model_of))
    return result


def _leaves(path: LwM2mPath, value: Any, model_of: ModelLookup) -> dict[LwM2mPath, Value]:
    if path.depth == 4:
        rtype, _ = _rtype(model_of, path)
        return {path: coerce(value, rtype, path)[0]}
    node = resource_node(path, value, model_of)
    if isinstance(node, MultipleResource):
        return {path.child(riid): v for riid, v in node.instances.items()}
    return {path: node.value}


def registration_links(reg: Registration) -> list[str]:
    """The registered objects as link strings (``</3>;ver=1.1``, ``</3/0>``): DiscoverAll's answer."""
    prefix = "" if reg.root_path == "/" else reg.root_path
    links: list[str] = []
    for obj in reg.objects.values():
        if obj.version is not None or not obj.instances:
            links.append(f"<{prefix}/{obj.id}>" + (f";ver={obj.version.strip(chr(34))}" if obj.version else ""))
        links.extend(f"<{prefix}/{obj.id}/{iid}>" for iid in obj.instances)
    return links


def group_by_object(paths: Iterable[LwM2mPath]) -> list[list[LwM2mPath]]:
    """Paths grouped by object id, in first-seen order (COMPOSITE_BY_OBJECT)."""
    groups: dict[int, list[LwM2mPath]] = {}
    for path in paths:
        groups.setdefault(path.ids[0], []).append(path)
    return list(groups.values())
