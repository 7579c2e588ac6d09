"""ThingsBoard's LwM2M RPC methods, run on a device through the LwM2M server.

Method names and params are those of ThingsBoard's LwM2M transport (``{"id": "/3/0/9"}`` or
``{"key": "batteryLevel"}``, versioned ids such as ``/3_1.2/0/9`` accepted):

=======================  ==========================================================  ===================
method                   params                                                      answer ``value``
=======================  ==========================================================  ===================
Read, Observe            ``id`` | ``key``                                            Leshan text of the node
Discover                 ``id`` | ``key``                                            link format
DiscoverAll              --                                                          JSON list of links
WriteReplace             ``id``, ``value`` (resource: a value, ``{"riid": v}`` for    --
                         a multiple resource; instance: ``{"rid": v}``)
WriteUpdate              ``id`` (instance or resource), ``value`` as above           --
WriteAttributes          ``id``, ``attributes`` ``{"pmin": 10, "pmax": 60, ...}``   --
WriteComposite           ``nodes`` ``{"/3/0/14": "+02", "key": v, "/3/0": {..}}``   --
ReadComposite,           ``ids`` ``[...]`` | ``keys`` ``[...]``                     ``{/3/0/9=Lw..., ...}``
ObserveComposite
Execute                  ``id``, optional ``value`` (arguments, ``"0='on',1"``)      --
Create                   ``id`` (object, or object/instance), ``value``              ``location=/oid/iid``
                         ``{"rid": v}`` or ``nodes`` ``{"iid": {"rid": v}}``
Delete                   ``id`` (object instance)                                    --
ObserveCancel            ``id`` | ``key``                                            count cancelled
ObserveCompositeCancel   ``ids`` | ``keys``                                          count cancelled
ObserveCancelAll         --                                                          count cancelled
ObserveReadAll           --                                                          JSON list of observations
=======================  ==========================================================  ===================

A success answer is ThingsBoard's ``{"result": "CONTENT", "value": "..."}`` (``result`` the CoAP
response name, ``value`` text, absent when there is none). A failure raises :class:`LwM2mRpcError`,
whose reply is ``{"result": ..., "error": "...", "code": "..."}``:

======================  =====================  ===================================================
``code``                ``result``             when
======================  =====================  ===================================================
``coap_error``          the CoAP name          the device answered with an error (``"coap": "4.04"``)
``unknown_path``        BAD_REQUEST            the object is not registered (or not in that version)
``unknown_key``         BAD_REQUEST            no path of the device's profile has that key
``bad_params``          BAD_REQUEST            params missing or malformed, a value of the wrong type
``unknown_method``      METHOD_NOT_ALLOWED     not one of ThingsBoard's LwM2M methods
``unsupported``         METHOD_NOT_ALLOWED     composite operation on an LwM2M 1.0 device
``device_offline``      SERVICE_UNAVAILABLE    the endpoint is not registered
``device_gone``         SERVICE_UNAVAILABLE    it de-registered, expired or re-registered meanwhile
``queue_full``          SERVICE_UNAVAILABLE    a sleeping (queue-mode) device has too many requests held
``timeout``             TIMEOUT                no answer before the RPC's timeout (a queue-mode device
                                               that did not wake up in time)
``invalid_response``    INTERNAL_SERVER_ERROR  the device's answer could not be decoded
======================  =====================  ===================================================

Reads, Observes and their composite forms also send the values they return upstream (mapped by the
device's profile), as ThingsBoard does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.core.hub import RpcError
from gateway.lwm2m.bridge.mapping import (
    Plan,
    coerce,
    flat_values,
    instance_node,
    leshan_text,
    leshan_values_text,
    registered_version,
    registration_links,
    resource_node,
)
from gateway.lwm2m.bridge.profiles import parse_versioned_path
from gateway.lwm2m.codec import CodecError
from gateway.lwm2m.linkformat import encode_discover
from gateway.lwm2m.node import (
    ModelLookup,
    Node,
    NodeError,
    ResourceInstance,
    TimestampedValue,
    Value,
    iter_leaves,
    resource_model,
)
from gateway.lwm2m.path import LwM2mPath, PathError
from gateway.lwm2m.server import (
    DeviceNotRegistered,
    InvalidResponse,
    LwM2mServer,
    QueueFull,
    Registration,
    RequestFailed,
    RequestTimeout,
    Response,
)
from gateway.lwm2m.server.operations import NOTIFICATION_ATTRIBUTES

__all__ = ["METHODS", "LwM2mRpcError", "RpcTarget", "run_rpc"]


class LwM2mRpcError(RpcError):
    """An RPC that failed; the reply carries ThingsBoard's ``result`` besides ``error`` and ``code``."""

    def __init__(self, code: str, message: str, result: str, coap: str | None = None) -> None:
        super().__init__(code, message)
        self.result = result
        self.coap = coap

    def as_reply(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"result": self.result, "error": str(self), "code": self.code}
        if self.coap is not None:
            reply["coap"] = self.coap
        return reply


def _bad(message: str, code: str = "bad_params") -> LwM2mRpcError:
    return LwM2mRpcError(code, message, "BAD_REQUEST")


@dataclass(slots=True)
class RpcTarget:
    """One RPC's device: its endpoint, registration and plan, and where read values go."""

    server: LwM2mServer
    endpoint: str
    reg: Registration
    plan: Plan | None
    timeout: float
    post: Callable[[list[TimestampedValue]], None]

    @property
    def model_of(self) -> ModelLookup:
        models = self.reg.models
        return models.model_of if models is not None else self.server.models.model_of

    def resolve(self, text: Any, what: str = "id") -> LwM2mPath:
        """A path from ``/3/0/9``, ``/3_1.2/0/9`` or a key of the profile; checked against the registration."""
        if not isinstance(text, str) or not text:
            raise _bad(f"{what}: expected a path such as /3/0/9 or a key name, got {text!r}")
        if not text.startswith("/"):
            path = self.plan.keys.get(text) if self.plan is not None else None
            if path is None:
                profile = self.plan.name if self.plan is not None else "(none)"
                raise _bad(f"no path of profile {profile!r} has the key {text!r} on {self.endpoint}", "unknown_key")
            return path
        try:
            path, version = parse_versioned_path(text)
        except PathError as exc:
            raise _bad(f"{what}: {exc}") from None
        self.check(path, version)
        return path

    def check(self, path: LwM2mPath, version: str | None = None) -> None:
        oid = path.ids[0]
        if oid == 0:
            raise _bad(f"{path}: the Security object is not accessible to a server", "unknown_path")
        default = self.plan.profile.default_object_version if self.plan is not None else "1.0"
        registered = registered_version(self.reg, oid, default)
        if registered is None:
            objects = ", ".join(f"/{o}" for o in sorted(self.reg.objects)) or "none"
            raise _bad(f"object {oid} is not registered by {self.endpoint} (it registered {objects})", "unknown_path")
        strict = self.plan is None or self.plan.profile.object_version_must_match
        if version is not None and strict and version != registered:
            raise _bad(
                f"{self.endpoint} registered object {oid} in version {registered}, not {version}", "unknown_path"
            )


Handler = Callable[[RpcTarget, Mapping[str, Any]], Awaitable[dict[str, Any]]]


def _ok(response: Response[Any], value: str | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"result": response.code.name}
    if value:
        reply["value"] = value
    return reply


def _checked(t: RpcTarget, response: Response[Any], what: str) -> None:
    if not response.ok:
        code = response.code
        text = f"{t.endpoint}: {what}: {code.dotted} {code.name_printable}"
        if response.error:
            text += f": {response.error}"
        raise LwM2mRpcError("coap_error", text, code.name, code.dotted)


def _target_path(t: RpcTarget, params: Mapping[str, Any]) -> LwM2mPath:
    if params.get("key"):
        return t.resolve(params["key"], "key")
    if params.get("id"):
        return t.resolve(params["id"], "id")
    raise _bad("params need 'id' (a path such as /3/0/9) or 'key' (a key of the device profile)")


def _target_paths(t: RpcTarget, params: Mapping[str, Any]) -> list[LwM2mPath]:
    for field, what in (("keys", "keys"), ("ids", "ids")):
        items = params.get(field)
        if items:
            if not isinstance(items, list):
                raise _bad(f"{field}: expected a list, got {items!r}")
            return list(dict.fromkeys(t.resolve(item, what) for item in items))
    raise _bad("params need 'ids' (a list of paths) or 'keys' (a list of keys of the device profile)")


def _leaves(node: Node, path: LwM2mPath) -> list[TimestampedValue]:
    if isinstance(node, ResourceInstance):
        return [TimestampedValue(path, node.value, None)]
    return [TimestampedValue(p, v, None) for p, v, _ in iter_leaves(node, path)]


def _composite_supported(t: RpcTarget) -> None:
    if t.reg.lwm2m_version == "1.0":
        raise LwM2mRpcError(
            "unsupported",
            f"{t.endpoint} speaks LwM2M 1.0, which has no composite operations",
            "METHOD_NOT_ALLOWED",
        )


# -- the methods --------------------------------------------------------------------------------------------


async def _read(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    path = _target_path(t, params)
    response = await t.server.read(t.endpoint, path, timeout=t.timeout)
    _checked(t, response, f"Read {path}")
    assert response.value is not None
    t.post(_leaves(response.value, path))
    return _ok(response, leshan_text(response.value))


async def _observe(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    path = _target_path(t, params)
    response = await t.server.observe(t.endpoint, path, timeout=t.timeout)
    _checked(t, response, f"Observe {path}")
    assert response.value is not None
    t.post(_leaves(response.value, path))
    return _ok(response, leshan_text(response.value))


async def _discover(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    path = _target_path(t, params)
    response = await t.server.discover(t.endpoint, path, timeout=t.timeout)
    _checked(t, response, f"Discover {path}")
    return _ok(response, encode_discover(response.value or [], t.reg.root_path).decode())


async def _discover_all(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"result": "CONTENT", "value": json.dumps(registration_links(t.reg))}


def _value_param(params: Mapping[str, Any]) -> Any:
    if "value" not in params:
        raise _bad("params need 'value'")
    return params["value"]


async def _write(t: RpcTarget, params: Mapping[str, Any], *, replace: bool) -> dict[str, Any]:
    path = _target_path(t, params)
    value = _value_param(params)
    model_of = t.model_of
    method = "WriteReplace" if replace else "WriteUpdate"
    try:
        node: Node
        if path.depth == 3:
            node = resource_node(path, value, model_of)
        elif path.depth == 2:
            node = instance_node(path, path.ids[1], value, model_of)
        elif path.depth == 4 and replace:
            rmodel = resource_model(model_of, path)
            converted, rtype = coerce(value, rmodel.type if rmodel is not None else None, path)
            node = ResourceInstance(path.ids[3], converted, rtype)
        else:
            raise ValueError(f"{method} writes an object instance or a resource, not {path}")
    except ValueError as exc:
        raise _bad(str(exc)) from None
    response = await t.server.write(t.endpoint, path, node, replace=replace, timeout=t.timeout)
    _checked(t, response, f"{method} {path}")
    return _ok(response)


async def _write_replace(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    return await _write(t, params, replace=True)


async def _write_update(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    return await _write(t, params, replace=False)


async def _write_attributes(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    path = _target_path(t, params)
    attributes = params.get("attributes")
    if not isinstance(attributes, Mapping) or not attributes:
        raise _bad('params need \'attributes\', e.g. {"pmin": 10, "pmax": 60}')
    unknown = [name for name in attributes if name not in NOTIFICATION_ATTRIBUTES]
    if unknown:
        raise _bad(f"unknown notification attribute(s) {', '.join(map(repr, unknown))} "
                   f"(known: {', '.join(sorted(NOTIFICATION_ATTRIBUTES))})")
    try:
        response = await t.server.write_attributes(t.endpoint, path, dict(attributes), timeout=t.timeout)
    except ValueError as exc:  # a value that is not a number (the names were checked above)
        raise _bad(str(exc)) from None
    _checked(t, response, f"WriteAttributes {path}")
    return _ok(response)


async def _execute(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    path = _target_path(t, params)
    if path.depth != 3:
        raise _bad(f"Execute targets a resource (/oid/iid/rid), not {path}")
    arguments = params.get("value")
    if arguments is not None and not isinstance(arguments, str):
        if isinstance(arguments, bool) or not isinstance(arguments, int | float):
            raise _bad(f"value: Execute arguments are text such as \"0='on',1\", got {arguments!r}")
        arguments = str(arguments)
    response = await t.server.execute(t.endpoint, path, arguments or None, timeout=t.timeout)
    _checked(t, response, f"Execute {path}")
    return _ok(response)


async def _create(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    path = _target_path(t, params)
    if path.depth not in (1, 2):
        raise _bad(f"Create targets an object (/oid) or a new instance (/oid/iid), not {path}")
    object_path = LwM2mPath(path.ids[0])
    try:
        if params.get("nodes"):
            nodes = params["nodes"]
            if not isinstance(nodes, Mapping):
                raise ValueError('nodes: expected {"iid": {"rid": value, ...}, ...}')
            instances = [instance_node(object_path, _iid(k), v, t.model_of) for k, v in nodes.items()]
        else:
            iid = path.ids[1] if path.depth == 2 else _free_instance(t.reg, path.ids[0])
            instances = [instance_node(object_path, iid, _value_param(params), t.model_of)]
    except ValueError as exc:
        raise _bad(str(exc)) from None
    locations = []
    response: Response[LwM2mPath] | None = None
    for instance in instances:
        response = await t.server.create(t.endpoint, object_path, instance, timeout=t.timeout)
        _checked(t, response, f"Create {object_path}/{instance.id}")
        locations.append(f"location={response.value}")
    assert response is not None
    return _ok(response, ",".join(locations))


def _iid(text: Any) -> int:
    if isinstance(text, str) and text.isascii() and text.isdigit() and int(text) < 65535:
        return int(text)
    raise ValueError(f"nodes: instance id {text!r} is not a number")


def _free_instance(reg: Registration, oid: int) -> int:
    obj = reg.objects.get(oid)
    used = set(obj.instances) if obj is not None else set()
    return next(i for i in range(65535) if i not in used)


async def _delete(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    path = _target_path(t, params)
    if path.depth != 2:
        raise _bad(f"Delete targets an object instance (/oid/iid), not {path}")
    response = await t.server.delete(t.endpoint, path, timeout=t.timeout)
    _checked(t, response, f"Delete {path}")
    return _ok(response)


async def _read_composite(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    paths = _target_paths(t, params)
    _composite_supported(t)
    response = await t.server.read_composite(t.endpoint, paths, timeout=t.timeout)
    _checked(t, response, "ReadComposite " + ",".join(map(str, paths)))
    values: Mapping[LwM2mPath, Value] = response.value or {}
    t.post([TimestampedValue(p, v, None) for p, v in values.items()])
    return _ok(response, leshan_values_text(values, t.model_of))


async def _observe_composite(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    paths = _target_paths(t, params)
    _composite_supported(t)
    response = await t.server.observe_composite(t.endpoint, paths, timeout=t.timeout)
    _checked(t, response, "ObserveComposite " + ",".join(map(str, paths)))
    values: Mapping[LwM2mPath, Value] = response.value or {}
    t.post([TimestampedValue(p, v, None) for p, v in values.items()])
    return _ok(response, leshan_values_text(values, t.model_of))


async def _write_composite(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    nodes = params.get("nodes")
    if not isinstance(nodes, Mapping) or not nodes:
        raise _bad('params need \'nodes\', e.g. {"/3/0/14": "+02", "/1/0/2": 100}')
    _composite_supported(t)
    try:
        values = flat_values(nodes, lambda name: t.resolve(name, "nodes"), t.model_of)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    response = await t.server.write_composite(t.endpoint, values, timeout=t.timeout)
    _checked(t, response, "WriteComposite")
    return _ok(response)


async def _observe_cancel(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    path = _target_path(t, params)
    count = 0
    for observation in t.server.observations(t.endpoint):
        if not observation.composite and observation.path.startswith(path):
            await t.server.cancel_observation(observation, active=False)
            count += 1
    return {"result": "CONTENT", "value": str(count)}


async def _observe_composite_cancel(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    wanted = set(_target_paths(t, params))
    count = 0
    for observation in t.server.observations(t.endpoint):
        if observation.composite and set(observation.paths) == wanted:
            await t.server.cancel_observation(observation, active=False)
            count += 1
    return {"result": "CONTENT", "value": str(count)}


async def _observe_cancel_all(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    observations = t.server.observations(t.endpoint)
    for observation in observations:
        await t.server.cancel_observation(observation, active=False)
    return {"result": "CONTENT", "value": str(len(observations))}


async def _observe_read_all(t: RpcTarget, params: Mapping[str, Any]) -> dict[str, Any]:
    found = []
    for observation in t.server.observations(t.endpoint):
        if observation.composite:
            found.append("CompositeObservation: [" + ", ".join(map(str, observation.paths)) + "]")
        else:
            found.append(f"SingleObservation:{observation.path}")
    return {"result": "CONTENT", "value": json.dumps(sorted(found))}


METHODS: Final[dict[str, Handler]] = {
    "Read": _read,
    "Discover": _discover,
    "DiscoverAll": _discover_all,
    "WriteUpdate": _write_update,
    "WriteReplace": _write_replace,
    "WriteAttributes": _write_attributes,
    "ReadComposite": _read_composite,
    "WriteComposite": _write_composite,
    "Delete": _delete,
    "Execute": _execute,
    "Create": _create,
    "Observe": _observe,
    "ObserveCancel": _observe_cancel,
    "ObserveCancelAll": _observe_cancel_all,
    "ObserveReadAll": _observe_read_all,
    "ObserveComposite": _observe_composite,
    "ObserveCompositeCancel": _observe_composite_cancel,
}


def parse_params(params: Any) -> Mapping[str, Any]:
    """RPC params as an object; a JSON text (the RPC debug terminal sends one) is parsed first."""
    if params is None or params == "":
        return {}
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            raise _bad(f"params are not a JSON object: {params[:80]!r}") from None
    if not isinstance(params, Mapping):
        raise _bad(f'params must be an object such as {{"id": "/3/0/9"}}, got {json.dumps(params)[:80]}')
    return params


async def run_rpc(target: RpcTarget, method: str, params: Any) -> dict[str, Any]:
    """Run ThingsBoard LwM2M RPC ``method`` on ``target``; the reply, or :class:`LwM2mRpcError`."""
    handler = METHODS.get(method)
    if handler is None:
        raise LwM2mRpcError(
            "unknown_method",
            f"unsupported LwM2M RPC method {method!r} (known: {', '.join(METHODS)})",
            "METHOD_NOT_ALLOWED",
        )
    endpoint = target.endpoint
    try:
        return await handler(target, parse_params(params))
    except LwM2mRpcError:
        raise
    except DeviceNotRegistered:
        raise LwM2mRpcError("device_offline", f"{endpoint} is not registered", "SERVICE_UNAVAILABLE") from None
    except RequestTimeout as exc:
        raise LwM2mRpcError("timeout", f"{endpoint} did not answer {method} in time: {exc}", "TIMEOUT") from None
    except QueueFull as exc:
        raise LwM2mRpcError("queue_full", f"{endpoint}: {exc}", "SERVICE_UNAVAILABLE") from None
    except RequestFailed as exc:
        raise LwM2mRpcError("device_gone", f"{endpoint}: {method} failed: {exc}", "SERVICE_UNAVAILABLE") from None
    except InvalidResponse as exc:
        raise LwM2mRpcError("invalid_response", f"{endpoint}: {exc}", "INTERNAL_SERVER_ERROR") from None
    except (CodecError, NodeError, ValueError) as exc:
        raise _bad(f"{endpoint}: {method}: {exc}") from None
