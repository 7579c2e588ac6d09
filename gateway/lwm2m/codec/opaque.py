"""Opaque (Content-Format 42): the raw bytes of one opaque resource or resource instance."""

from __future__ import annotations

from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.codec.values import single_value_type
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import ModelLookup, ResourceInstance, SingleResource, no_models
from gateway.lwm2m.path import LwM2mPath


def decode_opaque(
    payload: bytes, path: LwM2mPath, model_of: ModelLookup = no_models
) -> SingleResource | ResourceInstance:
    """``payload`` as the value of the resource (instance) at ``path``.

    Raises :class:`CodecError` for a path above resource level or a resource whose model says it is
    not opaque (Content-Format 42 is only for opaque values).
    """
    ids = path.ids
    rtype = single_value_type(model_of, path, "opaque content")
    if rtype is not None and rtype is not ResourceType.OPAQUE:
        raise CodecError(f"{path}: opaque content for a {rtype.value} resource")
    value = bytes(payload)
    if len(ids) == 3:
        return SingleResource(ids[2], value, ResourceType.OPAQUE)
    return ResourceInstance(ids[3], value, ResourceType.OPAQUE)


def encode_opaque(node: SingleResource | ResourceInstance, path: LwM2mPath) -> bytes:
    """The bytes of an opaque value; :class:`CodecError` for any other type."""
    if node.type is not ResourceType.OPAQUE or type(node.value) is not bytes:
        raise CodecError(f"{path}: only opaque values go as Content-Format 42, not {node.type.value}")
    return node.value
