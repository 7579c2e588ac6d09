"""SenML CBOR (Content-Format 112, RFC 8428 as profiled by LwM2M 1.1).

Integer labels: bn -2, bt -3, bv -5, n 0, v 2, vs 3, vb 4, t 6, vd 8 (a byte string); object links
under the text label ``"vlo"``. ``[{-2: "/3/0/0", 3: "Open Mobile Alliance"}]`` is
``81 A2 21 66 2F332F302F30 03 74 4F70656E...``. Times may be integers, floats or (as Leshan writes
them) decimal fractions. Resolution rules and typing: :mod:`gateway.lwm2m.codec.senml`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.lwm2m.codec import cbor_wire, senml
from gateway.lwm2m.codec.entries import Entry
from gateway.lwm2m.codec.errors import CodecError
from gateway.lwm2m.node import ModelLookup, Node, no_models
from gateway.lwm2m.path import LwM2mPath

_LABELS = senml.CBOR_LABELS


def decode_senml_cbor(
    payload: bytes, model_of: ModelLookup = no_models, now: float | None = None
) -> list[Entry]:
    """Every record of the pack, resolved and typed, in order (see :mod:`gateway.lwm2m.codec.entries`)."""
    return senml.resolve(cbor_wire.loads(payload, "SenML CBOR"), _LABELS, _read_opaque, model_of, now)


def decode_senml_cbor_paths(payload: bytes) -> list[LwM2mPath]:
    """The paths of a Read-/Observe-Composite request body ``[{0: "/3/0/0"}, ...]``."""
    return senml.resolve_names(cbor_wire.loads(payload, "SenML CBOR"), _LABELS)


def encode_senml_cbor(node: Node, path: LwM2mPath) -> bytes:
    """``node`` (which lives at ``path``) as a SenML CBOR pack with base name."""
    return cbor_wire.dumps(senml.node_records(node, path, _LABELS, _write_opaque))


def encode_senml_cbor_values(entries: Iterable[Entry]) -> bytes:
    """Records with full names (and ``t`` where a time is given): composite operations and Send."""
    return cbor_wire.dumps(senml.value_records(entries, _LABELS, _write_opaque))


def encode_senml_cbor_paths(paths: Sequence[LwM2mPath]) -> bytes:
    """A Read-/Observe-Composite request body."""
    return cbor_wire.dumps(senml.name_records(paths, _LABELS))


def _read_opaque(raw: object, where: str) -> bytes:
    if type(raw) is not bytes:
        raise CodecError(f"{where}: data value must be a byte string")
    return raw


def _write_opaque(data: bytes) -> object:
    return data
