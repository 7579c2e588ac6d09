"""The bridge's pure parts: plans, values upstream, Leshan's text form, JSON values downstream."""

from __future__ import annotations

import math
from typing import Any

import pytest
from test_bridge_support import TEMPERATURE_PROFILE, profile

from gateway.lwm2m.bridge.mapping import (
    Target,
    coerce,
    flat_values,
    instance_node,
    json_value,
    leshan_text,
    leshan_values_text,
    make_plan,
    plan_for,
    registration_links,
    resource_node,
    uplink_records,
)
from gateway.lwm2m.linkformat import RegisteredObject, RegistrationLinks
from gateway.lwm2m.model import ModelRegistry, ResourceType
from gateway.lwm2m.node import (
    MultipleResource,
    ObjectInstanceNode,
    ObjectNode,
    ObjLink,
    ResourceInstance,
    SingleResource,
    TimestampedValue,
)
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import Registration

P = LwM2mPath
MODELS = ModelRegistry()


def registration(objects: dict[int, str | None], endpoint: str = "ep") -> Registration:
    links = RegistrationLinks("/", (), {oid: RegisteredObject(oid, ver, (0,)) for oid, ver in objects.items()})
    return Registration(endpoint, "id", "1.1", "U", False, 300, None, links, "127.0.0.1:1", 0.0)


def test_a_plan_from_a_profile() -> None:
    plan = make_plan(profile(TEMPERATURE_PROFILE), {3: "1.0", 3303: "1.0"})
    assert plan.targets[P(3303, 0, 5700)] == Target("sensorValue", True, False)
    assert plan.targets[P(3303, 0, 5701)] == Target("units", False, True)
    assert P(3, 0, 14) not in plan.targets and plan.keys["utcOffset"] == P(3, 0, 14)
    assert plan.observe == (P(3303, 0, 5700), P(3, 0, 9))
    assert plan.unobserved == (P(3303, 0, 5701), P(3, 0, 0))
    assert plan.notify == ((P(3, 0, 9), {"pmin": 1, "pmax": 30}),)
    # objects the device lacks: their paths do nothing
    partial = make_plan(profile(TEMPERATURE_PROFILE), {3: "1.0", 3303: None})
    assert partial.observe == (P(3, 0, 9),) and "units" not in partial.keys


def test_plans_are_shared_by_registrations_of_one_shape() -> None:
    p = profile('[paths."/3_1.1/0/9"]\nkey = "battery"\ntelemetry = true\n')
    first = plan_for(p, registration({3: "1.1", 1: None}, "a"))
    assert first is plan_for(p, registration({3: "1.1", 3303: None}, "b"))  # object 3 in the same version
    other = plan_for(p, registration({3: None}, "c"))  # no ver=: default_object_version 1.0
    assert other is not first and other.targets == {} and first.targets[P(3, 0, 9)].key == "battery"


def test_uplink_records_group_by_device_time() -> None:
    targets = {
        P(3303, 0, 5700): Target("temperature", True, False),
        P(3, 0, 9): Target("battery", True, True),
        P(3, 0, 11): Target("errors", True, False),
        P(19, 0, 0): Target("blob", True, False),
    }
    values = [
        TimestampedValue(P(3303, 0, 5700), 20.5, 100.0),
        TimestampedValue(P(3, 0, 9), 80, 100.0),
        TimestampedValue(P(3303, 0, 5700), 21.5, 101.5),
        TimestampedValue(P(3, 0, 11, 0), 0, None),
        TimestampedValue(P(3, 0, 11, 3), 5, None),
        TimestampedValue(P(19, 0, 0), b"\x01\xff", None),
        TimestampedValue(P(3303, 0, 5701), "Cel", None),  # not mapped
        TimestampedValue(P(3303, 0, 5700), math.nan, 102.0),
    ]
    records, attributes, dropped = uplink_records(targets, values, 999_000)
    assert records == [
        (100_000, {"temperature": 20.5, "battery": 80}),
        (101_500, {"temperature": 21.5}),
        (999_000, {"errors": {"0": 0, "3": 5}, "blob": "01ff"}),
    ]
    assert attributes == {"battery": 80} and dropped == 1


@pytest.mark.parametrize(("value", "expected"), [
    (1, 1), (2.5, 2.5), ("x", "x"), (True, True), (b"\x00\xab", "00ab"), (ObjLink(3, 0), "3:0"),
])
def test_json_values(value: Any, expected: Any) -> None:
    assert json_value(value) == expected


def test_json_values_refuse_non_finite_numbers() -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        json_value(math.inf)


def test_leshan_text() -> None:
    assert leshan_text(SingleResource(9, 87, ResourceType.INTEGER)) == \
        "LwM2mSingleResource [id=9, value=87, type=INTEGER]"
    assert leshan_text(SingleResource(5700, 21.5, ResourceType.FLOAT)) == \
        "LwM2mSingleResource [id=5700, value=21.5, type=FLOAT]"
    assert leshan_text(SingleResource(1, True, ResourceType.BOOLEAN)) == \
        "LwM2mSingleResource [id=1, value=true, type=BOOLEAN]"
    assert leshan_text(SingleResource(0, b"\x01\x02", ResourceType.OPAQUE)) == \
        "LwM2mSingleResource [id=0, value=0102, type=OPAQUE]"
    assert leshan_text(SingleResource(13, 0, ResourceType.TIME)) == \
        "LwM2mSingleResource [id=13, value=Thu Jan 01 00:00:00 UTC 1970, type=TIME]"
    assert leshan_text(SingleResource(7, ObjLink(3, 0), ResourceType.OBJLNK)) == \
        "LwM2mSingleResource [id=7, value=ObjectLink [objectId=3, objectInstanceId=0], type=OBJLNK]"
    multiple = MultipleResource(11, {1: 5, 0: 0}, ResourceType.INTEGER)
    assert leshan_text(multiple) == (
        "LwM2mMultipleResource [id=11, values={0=LwM2mResourceInstance [id=0, value=0, type=INTEGER], "
        "1=LwM2mResourceInstance [id=1, value=5, type=INTEGER]}, type=INTEGER]")
    assert leshan_text(ResourceInstance(1, "a", ResourceType.STRING)) == \
        "LwM2mResourceInstance [id=1, value=a, type=STRING]"
    instance = ObjectInstanceNode(0, {9: SingleResource(9, 87, ResourceType.INTEGER)})
    assert leshan_text(instance) == \
        "LwM2mObjectInstance [id=0, resources={9=LwM2mSingleResource [id=9, value=87, type=INTEGER]}]"
    assert leshan_text(ObjectNode(3, {0: instance})).startswith("LwM2mObject [id=3, instances={0=LwM2mObjectInstance")
    text = leshan_values_text({P(3303, 0, 5700): 20.0, P(3, 0, 9): 87, P(3, 0, 11, 0): 1}, MODELS.model_of)
    assert text == ("{/3/0/9=LwM2mSingleResource [id=9, value=87, type=INTEGER], /3/0/11/0=LwM2mResourceInstance "
                    "[id=0, value=1, type=INTEGER], /3303/0/5700=LwM2mSingleResource [id=5700, value=20.0, "
                    "type=FLOAT]}")


@pytest.mark.parametrize(("value", "rtype", "expected"), [
    (5, ResourceType.INTEGER, 5),
    (5.0, ResourceType.INTEGER, 5),
    ("-12", ResourceType.INTEGER, -12),
    (3, ResourceType.FLOAT, 3.0),
    ("2.5", ResourceType.FLOAT, 2.5),
    (12, ResourceType.STRING, "12"),
    (True, ResourceType.STRING, "true"),
    ("true", ResourceType.BOOLEAN, True),
    (0, ResourceType.BOOLEAN, False),
    ("00ff", ResourceType.OPAQUE, b"\x00\xff"),
    ("3:1", ResourceType.OBJLNK, ObjLink(3, 1)),
    (1700000000, ResourceType.TIME, 1700000000),
    (7, ResourceType.UNSIGNED_INTEGER, 7),
    (7, None, 7),
    ("x", None, "x"),
    (1.5, None, 1.5),
])
def test_coerce(value: Any, rtype: ResourceType | None, expected: Any) -> None:
    converted, kind = coerce(value, rtype, "/x")
    assert converted == expected and type(converted) is type(expected)
    if rtype is not None:
        assert kind is rtype


@pytest.mark.parametrize(("value", "rtype"), [
    (5.5, ResourceType.INTEGER), (True, ResourceType.INTEGER), ("x", ResourceType.INTEGER),
    (-1, ResourceType.UNSIGNED_INTEGER), ("maybe", ResourceType.BOOLEAN), (2, ResourceType.BOOLEAN),
    ("zz", ResourceType.OPAQUE), (5, ResourceType.OPAQUE), ("3", ResourceType.OBJLNK), (None, None),
    ({"a": 1}, None), ([1], ResourceType.STRING), ("nan", ResourceType.FLOAT), (1, ResourceType.NONE),
])
def test_coerce_refuses(value: Any, rtype: ResourceType | None) -> None:
    with pytest.raises(ValueError, match="/x"):
        coerce(value, rtype, "/x")


def test_nodes_from_json() -> None:
    model_of = MODELS.model_of
    assert resource_node(P(3, 0, 14), "+02", model_of) == SingleResource(14, "+02", ResourceType.STRING)
    assert resource_node(P(3, 0, 11), {"0": 1, "2": "3"}, model_of) == \
        MultipleResource(11, {0: 1, 2: 3}, ResourceType.INTEGER)
    with pytest.raises(ValueError, match="is a multiple resource"):
        resource_node(P(3, 0, 11), 5, model_of)
    with pytest.raises(ValueError, match="is a single resource"):
        resource_node(P(3, 0, 14), {"0": "x"}, model_of)
    with pytest.raises(ValueError, match="is executable"):
        resource_node(P(3, 0, 4), 1, model_of)
    assert resource_node(P(32769, 0, 1), 5, model_of) == SingleResource(1, 5, ResourceType.INTEGER)  # no model
    node = instance_node(P(3303), 2, {"5700": 12, "5701": "Cel"}, model_of)
    assert node == ObjectInstanceNode(2, {5700: SingleResource(5700, 12.0, ResourceType.FLOAT),
                                          5701: SingleResource(5701, "Cel", ResourceType.STRING)})
    with pytest.raises(ValueError, match="resource id 'x' is not a number"):
        instance_node(P(3303), 2, {"x": 1}, model_of)

    def resolve(name: str) -> LwM2mPath:
        return {"units": P(3303, 0, 5701)}.get(name) or LwM2mPath.parse(name)

    assert flat_values({"/3/0/14": "+1", "units": "K", "/3/0/11": {"0": 2}, "/3/0": {"15": "UTC"}},
                       resolve, model_of) == {
        P(3, 0, 14): "+1", P(3303, 0, 5701): "K", P(3, 0, 11, 0): 2, P(3, 0, 15): "UTC"}


def test_registration_links() -> None:
    links = RegistrationLinks("/", (), {
        1: RegisteredObject(1, "1.1", (0,)), 3: RegisteredObject(3, None, (0,)), 5: RegisteredObject(5, '"1.0"', ()),
    })
    reg = Registration("ep", "id", "1.1", "U", False, 300, None, links, "a", 0.0)
    assert registration_links(reg) == ["</1>;ver=1.1", "</1/0>", "</3/0>", "</5>;ver=1.0"]
