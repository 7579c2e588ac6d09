"""Decode rate of typical LwM2M notifications, per content format (decodes per second, one core).

The gateway must decode about 10,000 notifications/s from 20,000 devices on a Raspberry Pi; a Pi 4
runs CPython roughly 5-8x slower than a desktop core, so compare these numbers against ~50,000/s.

    python benchmarks/codec_bench.py [--seconds 1.0]

Each case is decoded through the public entry point (``registry.decode`` /
``registry.decode_timestamped``) with a model lookup, as the observe path will call it.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

from gateway.lwm2m.codec import ContentFormat, registry
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType
from gateway.lwm2m.node import TimestampedValue
from gateway.lwm2m.path import LwM2mPath

T = ResourceType
MODELS = {
    3: ObjectModel(3, "Device", resources={
        9: ResourceModel(9, "Battery Level", T.INTEGER, Operations.R),
        7: ResourceModel(7, "Power Source Voltage", T.INTEGER, Operations.R, multiple=True),
    }),
    3303: ObjectModel(3303, "Temperature", multiple=True, resources={
        5700: ResourceModel(5700, "Sensor Value", T.FLOAT, Operations.R),
        5701: ResourceModel(5701, "Sensor Units", T.STRING, Operations.R),
    }),
}
model_of = MODELS.get

TEMPERATURE = LwM2mPath(3303, 0, 5700)
BATTERY = LwM2mPath(3, 0, 9)
F = ContentFormat

NOW = 1_700_000_000.0
TEMPERATURE_NODE = registry.decode(F.TEXT, b"23.5", TEMPERATURE, model_of)
SENML_CBOR = registry.encode(F.SENML_CBOR, TEMPERATURE_NODE, TEMPERATURE)  # [{-2: "/3303/0/5700", 2: 23.5}]
SENML_CBOR_TIMED = registry.encode_timestamped(
    F.SENML_CBOR, [TimestampedValue(TEMPERATURE, 23.5, NOW)], model_of)  # [{0: ..., 2: 23.5, 6: 1.7e9}]
SENML_JSON = b'[{"bn":"/3303/0/5700","v":23.5}]'
SENML_JSON_TIMED = b'[{"bn":"/3303/0/5700","bt":1700000000,"v":23.5}]'
COMPOSITE = bytes.fromhex(
    "83A200662F332F302F3003744F70656E204D6F62696C6520416C6C69616E6365A200662F332F302F3902185F"
    "A200662F312F302F31021A00015180"
)  # LWM2M_FACTS.md section 4

CASES: list[tuple[str, Callable[[], object]]] = [
    ("text       float /3303/0/5700", lambda: registry.decode(F.TEXT, b"23.5", TEMPERATURE, model_of)),
    ("text       int   /3/0/9", lambda: registry.decode(F.TEXT, b"95", BATTERY, model_of)),
    ("TLV        float /3303/0/5700",
     lambda: registry.decode(F.TLV, bytes.fromhex("E41644" "41BC0000"), TEMPERATURE, model_of)),
    ("TLV        int   /3/0/9", lambda: registry.decode(F.TLV, b"\xc1\x09\x5f", BATTERY, model_of)),
    ("TLV        multi /3/0/7, 2 instances",
     lambda: registry.decode(F.TLV, bytes.fromhex("88070842000ED842011388"), LwM2mPath(3, 0, 7), model_of)),
    ("SenML-CBOR float /3303/0/5700", lambda: registry.decode(F.SENML_CBOR, SENML_CBOR, TEMPERATURE, model_of)),
    ("SenML-CBOR timed (decode_timestamped)",
     lambda: registry.decode_timestamped(F.SENML_CBOR, SENML_CBOR_TIMED, TEMPERATURE, model_of, now=NOW)),
    ("SenML-CBOR composite, 3 values", lambda: registry.decode(F.SENML_CBOR, COMPOSITE, None, model_of)),
    ("SenML-JSON float /3303/0/5700", lambda: registry.decode(F.SENML_JSON, SENML_JSON, TEMPERATURE, model_of)),
    ("SenML-JSON timed (decode_timestamped)",
     lambda: registry.decode_timestamped(F.SENML_JSON, SENML_JSON_TIMED, TEMPERATURE, model_of, now=NOW)),
]


def rate(call: Callable[[], object], seconds: float) -> float:
    """Best-of-5 decodes per second."""
    call()
    batch = 1000
    best = 0.0
    for _ in range(5):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds / 5
        while True:
            for _ in range(batch):
                call()
            count += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per case")
    args = parser.parse_args()
    print(f"# {platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
          f"{platform.processor() or 'unknown cpu'}")
    for name, call in CASES:
        per_second = rate(call, args.seconds)
        print(f"{name:40s} {per_second:>12,.0f} /s   {1e6 / per_second:6.2f} us")


if __name__ == "__main__":
    main()
