"""CBOR (Content-Format 60): one value of a single resource or resource instance as a plain CBOR item.

The item types follow LwM2M CBOR (:mod:`gateway.lwm2m.codec.lwm2m_cbor`): integers, floats, text,
byte strings, booleans, object links as ``"oid:iid"`` text.
"""

from __future__ import annotations

from gateway.lwm2m.codec import cbor_wire
from gateway.lwm2m.codec.lwm2m_cbor import cbor_item, cbor_leaf
from gateway.lwm2m.codec.values import single_value_type
from gateway.lwm2m.node import ModelLookup, ResourceInstance, SingleResource, no_models
from gateway.lwm2m.path import LwM2mPath


def decode_cbor(
    payload: bytes, path: LwM2mPath, model_of: ModelLookup = no_models
) -> SingleResource | ResourceInstance:
    """The value in ``payload`` for the resource (instance) at ``path``; raises :class:`CodecError`."""
    ids = path.ids
    declared = single_value_type(model_of, path, "CBOR (60)")
    value, rtype = cbor_leaf(cbor_wire.loads(payload, "CBOR value"), declared, f"CBOR value for {path}")
    if len(ids) == 3:
        return SingleResource(ids[2], value, rtype)
    return ResourceInstance(ids[3], value, rtype)


def encode_cbor(node: SingleResource | ResourceInstance, path: LwM2mPath) -> bytes:
    """One value as a plain CBOR item."""
    return cbor_wire.dumps(cbor_item(node.value, node.type, path))
