"""The Security (0) and Server (1) object instances a bootstrap writes, and their Bootstrap-Write steps.

Resource ids and values as in LwM2M Core E.1/E.2 (LWM2M_FACTS section 2): Security 0 URI, 1
Bootstrap-Server, 2 Security Mode (0 PSK, 1 RPK, 2 Certificate, 3 NoSec), 3 Public Key or Identity,
4 Server Public Key, 5 Secret Key, 10 Short Server ID, 11 Client Hold Off Time; Server 0 Short Server
ID, 1 Lifetime, 2 Default Minimum Period, 6 Notification Storing, 7 Binding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from gateway.lwm2m.bootstrap.config import AclEntry
from gateway.lwm2m.bootstrap.session import Op, Step
from gateway.lwm2m.codec import ContentFormat, encode
from gateway.lwm2m.model.registry import ModelRegistry
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import MultipleResource, ObjectInstanceNode, Resource, SingleResource, Value
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.tbcredentials import SecurityMode

#: Formats a bootstrap may write in when the client asked for them with ``pct``.
WRITE_FORMATS: Final = frozenset(
    {ContentFormat.TLV, ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.LWM2M_CBOR}
)

_MODELS: Final = ModelRegistry()


@dataclass(frozen=True, slots=True)
class ServerWrite:
    """One LwM2M server account, resolved for one device."""

    uri: str
    mode: SecurityMode
    short_server_id: int
    lifetime: int
    binding: str
    default_min_period: int = 1
    notif_if_disabled: bool = True
    client_hold_off_time: int = 1
    public_key_or_id: bytes = b""
    server_public_key: bytes = b""
    secret_key: bytes = field(default=b"", repr=False)


def _r(rid: int, value: object, rtype: ResourceType) -> SingleResource:
    return SingleResource(rid, value, rtype)  # type: ignore[arg-type]


def security_instance(iid: int, w: ServerWrite) -> ObjectInstanceNode:
    resources = [
        _r(0, w.uri, ResourceType.STRING),
        _r(1, False, ResourceType.BOOLEAN),
        _r(2, w.mode.security_object_value, ResourceType.INTEGER),
        _r(3, w.public_key_or_id, ResourceType.OPAQUE),
        _r(4, w.server_public_key, ResourceType.OPAQUE),
        _r(5, w.secret_key, ResourceType.OPAQUE),
        _r(10, w.short_server_id, ResourceType.INTEGER),
        _r(11, w.client_hold_off_time, ResourceType.INTEGER),
    ]
    return ObjectInstanceNode(iid, {r.id: r for r in resources})


def server_instance(iid: int, w: ServerWrite) -> ObjectInstanceNode:
    resources = [
        _r(0, w.short_server_id, ResourceType.INTEGER),
        _r(1, w.lifetime, ResourceType.INTEGER),
        _r(2, w.default_min_period, ResourceType.INTEGER),
        _r(6, w.notif_if_disabled, ResourceType.BOOLEAN),
        _r(7, w.binding, ResourceType.STRING),
    ]
    return ObjectInstanceNode(iid, {r.id: r for r in resources})


def acl_instance(iid: int, a: AclEntry) -> ObjectInstanceNode:
    resources: list[Resource] = [
        _r(0, a.object_id, ResourceType.INTEGER),
        _r(1, a.instance_id, ResourceType.INTEGER),
        _r(3, a.owner, ResourceType.INTEGER),
    ]
    if a.access:
        resources.append(MultipleResource(2, dict(a.access), ResourceType.INTEGER))
    return ObjectInstanceNode(iid, {r.id: r for r in resources})


def write_steps(
    servers: list[ServerWrite], taken: frozenset[int], fmt: int, acl: tuple[AclEntry, ...] = ()
) -> list[Step]:
    """Bootstrap-Write steps for ``servers``: Security instances in ids not in ``taken`` (the
    bootstrap-server account's), Server instances from 0; then the Access Control instances."""
    steps = []
    free = (i for i in range(65535) if i not in taken)
    for n, w in enumerate(servers):
        sec = LwM2mPath(0, next(free))
        steps.append(Step(Op.WRITE, sec, encode(fmt, security_instance(sec.ids[1], w), sec, _MODELS.model_of), fmt))
        srv = LwM2mPath(1, n)
        steps.append(Step(Op.WRITE, srv, encode(fmt, server_instance(n, w), srv, _MODELS.model_of), fmt))
    for n, a in enumerate(acl):
        path = LwM2mPath(2, n)
        steps.append(Step(Op.WRITE, path, encode(fmt, acl_instance(n, a), path, _MODELS.model_of), fmt))
    return steps


def pack_values(servers: list[ServerWrite]) -> dict[LwM2mPath, Value]:
    """The resources of a Bootstrap-Pack (1.2): the same instances as flat path -> value."""
    values: dict[LwM2mPath, Value] = {}
    for n, w in enumerate(servers):
        for iid, node, oid in ((n + 1, security_instance(n + 1, w), 0), (n, server_instance(n, w), 1)):
            for rid, res in node.resources.items():
                assert isinstance(res, SingleResource)
                values[LwM2mPath(oid, iid, rid)] = res.value
    return values


def server_uri(host: str, port: int, secure: bool) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{'coaps' if secure else 'coap'}://{shown}:{port}"
