"""Device management against the fleet simulator: every operation, every content format, block-wise both ways."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.lwm2m.codec import ContentFormat
from gateway.lwm2m.model.types import ResourceType
from gateway.lwm2m.node import (
    MultipleResource,
    ObjectInstanceNode,
    ObjectNode,
    ResourceInstance,
    SingleResource,
)
from gateway.lwm2m.path import LwM2mPath
from gateway.lwm2m.server import CoapError, LwM2mServer, ResponseCode

F = ContentFormat


@pytest.fixture
async def device(server: LwM2mServer, fleet_factory: Any) -> Any:
    fleet = await fleet_factory(1, blob=bytes(range(256)) * 20)  # object 19 with a 5120-byte value
    await fleet.register_and_wait()
    return fleet.clients[0]


async def test_read_single_resources_as_text(server: LwM2mServer, device: Any) -> None:
    ep = device.endpoint
    manufacturer = await server.read(ep, "/3/0/0")
    assert manufacturer.ok and manufacturer.code == ResponseCode.CONTENT
    assert manufacturer.content_format == F.TEXT
    assert manufacturer.value == SingleResource(0, "edge-gateway", ResourceType.STRING)
    battery = await server.read(ep, LwM2mPath(3, 0, 9))
    assert battery.value == SingleResource(9, 100, ResourceType.INTEGER)
    temperature = await server.read(ep, "/3303/0/5700")
    assert isinstance(temperature.value, SingleResource) and isinstance(temperature.value.value, float)


@pytest.mark.parametrize("fmt", [F.TLV, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_JSON, F.LWM2M_CBOR, F.TLV_OLD])
async def test_read_an_instance_in_every_node_format(server: LwM2mServer, device: Any, fmt: ContentFormat) -> None:
    response = await server.read(device.endpoint, "/3/0", format=fmt)
    assert response.ok and response.content_format == fmt
    instance = response.value
    assert isinstance(instance, ObjectInstanceNode)
    assert instance.resources[0] == SingleResource(0, "edge-gateway", ResourceType.STRING)
    assert instance.resources[2] == SingleResource(2, device.endpoint, ResourceType.STRING)
    assert instance.resources[11] == MultipleResource(11, {0: 0}, ResourceType.INTEGER)


async def test_read_an_object_and_a_resource_instance(server: LwM2mServer, device: Any) -> None:
    obj = await server.read(device.endpoint, "/3303")
    assert isinstance(obj.value, ObjectNode) and list(obj.value.instances) == [0]
    item = await server.read(device.endpoint, "/3/0/11/0")
    assert item.value == ResourceInstance(0, 0, ResourceType.INTEGER)


async def test_read_errors_are_responses(server: LwM2mServer, device: Any) -> None:
    missing = await server.read(device.endpoint, "/3/0/99")
    assert not missing.ok and missing.code == ResponseCode.NOT_FOUND
    assert missing.value is None
    with pytest.raises(CoapError) as e:
        missing.value_or_raise()
    assert e.value.code == ResponseCode.NOT_FOUND
    with pytest.raises(ValueError):
        await server.read(device.endpoint, "/3/x")


async def test_discover(server: LwM2mServer, device: Any) -> None:
    await server.write_attributes(device.endpoint, "/3303/0", {"pmin": 10, "pmax": 60})
    response = await server.discover(device.endpoint, "/3303/0")
    assert response.ok
    links = response.value
    assert links is not None
    assert links[0].path == LwM2mPath(3303, 0) and links[0].attributes == {"pmin": "10", "pmax": "60"}
    assert LwM2mPath(3303, 0, 5700) in [link.path for link in links]


async def test_write_replace_and_partial_update(server: LwM2mServer, device: Any) -> None:
    ep = device.endpoint
    # a single writable resource, as plain text
    response = await server.write(ep, "/1/0/6", SingleResource(6, True, ResourceType.BOOLEAN))
    assert response.ok and response.code == ResponseCode.CHANGED
    assert (await server.read(ep, "/1/0/6")).value == SingleResource(6, True, ResourceType.BOOLEAN)
    # partial update of an instance (POST), in the client's node format
    instance = ObjectInstanceNode(0, {6: SingleResource(6, False, ResourceType.BOOLEAN)})
    assert (await server.write(ep, "/1/0", instance, replace=False)).ok
    assert (await server.read(ep, "/1/0/6")).value == SingleResource(6, False, ResourceType.BOOLEAN)
    # a read-only resource: the device says no, and that is a response
    refused = await server.write(ep, "/3/0/0", SingleResource(0, "x", ResourceType.STRING))
    assert refused.code == ResponseCode.METHOD_NOT_ALLOWED and refused.error == "/3/0/0 is not writable"


@pytest.mark.parametrize("fmt", [F.TLV, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_JSON, F.LWM2M_CBOR])
async def test_write_in_every_node_format(server: LwM2mServer, device: Any, fmt: ContentFormat) -> None:
    instance = ObjectInstanceNode(0, {6: SingleResource(6, True, ResourceType.BOOLEAN)})
    assert (await server.write(device.endpoint, "/1/0", instance, replace=False, format=fmt)).ok
    assert device.overrides[LwM2mPath(1, 0, 6)] is True


async def test_write_lifetime_makes_the_client_update(server: LwM2mServer, device: Any, recorder: Any) -> None:
    assert (await server.write(device.endpoint, "/1/0/1", SingleResource(1, 777, ResourceType.INTEGER))).ok
    await recorder.until(lambda: any(reg.lifetime == 777 for reg, _ in recorder.updated))


async def test_write_attributes(server: LwM2mServer, device: Any) -> None:
    attrs = {"pmin": 5, "pmax": 60, "gt": 30.5, "lt": 10.0, "st": 0.5, "epmin": 1, "epmax": 120}
    assert (await server.write_attributes(device.endpoint, "/3303/0/5700", attrs)).ok
    assert device.attributes["/3303/0/5700"] == (
        "pmin=5", "pmax=60", "gt=30.5", "lt=10.0", "st=0.5", "epmin=1", "epmax=120")
    assert (await server.write_attributes(device.endpoint, "/3303/0/5700", {"gt": None})).ok
    assert device.attributes["/3303/0/5700"] == ("gt",)


async def test_execute_with_and_without_arguments(server: LwM2mServer, device: Any, recorder: Any) -> None:
    assert (await server.execute(device.endpoint, "/3/0/4")).ok
    assert (await server.execute(device.endpoint, "/3303/0/5605", {0: "all", 1: None})).ok
    assert device.executions == [("/3/0/4", b""), ("/3303/0/5605", b"0='all',1")]
    # Registration Update Trigger: the client sends an Update
    assert (await server.execute(device.endpoint, "/1/0/8")).ok
    await recorder.until(lambda: len(recorder.updated) == 1)


async def test_create_and_delete(server: LwM2mServer, device: Any) -> None:
    ep = device.endpoint
    instance = ObjectInstanceNode(4, {5700: SingleResource(5700, 12.5, ResourceType.FLOAT)})
    created = await server.create(ep, "/3303", instance)
    assert created.ok and created.code == ResponseCode.CREATED and created.value == LwM2mPath(3303, 4)
    assert (await server.read(ep, "/3303/4/5700")).value == SingleResource(5700, 12.5, ResourceType.FLOAT)
    again = await server.create(ep, "/3303", instance)
    assert again.code == ResponseCode.BAD_REQUEST
    deleted = await server.delete(ep, "/3303/4")
    assert deleted.ok and deleted.code == ResponseCode.DELETED
    assert (await server.read(ep, "/3303/4/5700")).code == ResponseCode.NOT_FOUND
    with pytest.raises(ValueError):
        await server.create(ep, "/3303/0", instance)


@pytest.mark.parametrize("fmt", [None, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR])
async def test_read_composite(server: LwM2mServer, device: Any, fmt: ContentFormat | None) -> None:
    response = await server.read_composite(device.endpoint, ["/3/0/0", "/3/0/9", "/1/0"], format=fmt)
    assert response.ok
    values = response.value
    assert values is not None
    assert values[LwM2mPath(3, 0, 0)] == "edge-gateway"
    assert values[LwM2mPath(3, 0, 9)] == 100
    assert values[LwM2mPath(1, 0, 1)] == 300


async def test_write_composite(server: LwM2mServer, device: Any) -> None:
    values = {LwM2mPath(1, 0, 6): True, LwM2mPath(3, 0, 13): 1700000000}
    assert (await server.write_composite(device.endpoint, values)).ok
    read = await server.read_composite(device.endpoint, ["/1/0/6", "/3/0/13"])
    assert read.value == values
    refused = await server.write_composite(device.endpoint, {LwM2mPath(3303, 0, 5700): 1.5})
    assert refused.code == ResponseCode.METHOD_NOT_ALLOWED


async def test_blockwise_read_of_a_large_value(server: LwM2mServer, device: Any) -> None:
    response = await server.read(device.endpoint, "/19/0/0/0")
    assert response.ok
    assert response.value == ResourceInstance(0, bytes(range(256)) * 20, ResourceType.OPAQUE)
    # a large node too: the whole object 19 in TLV takes several blocks
    whole = await server.read(device.endpoint, "/19", format=F.TLV)
    assert isinstance(whole.value, ObjectNode)


async def test_blockwise_write_of_a_large_value(server: LwM2mServer, device: Any) -> None:
    data = bytes(reversed(range(256))) * 12  # 3072 bytes: three Block1 blocks
    value = ResourceInstance(0, data, ResourceType.OPAQUE)
    response = await server.write(device.endpoint, "/19/0/0/0", value)
    assert response.ok
    assert device.overrides[LwM2mPath(19, 0, 0, 0)] == data
    assert (await server.read(device.endpoint, "/19/0/0/0")).value == value
