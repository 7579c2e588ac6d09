"""The built-in object definitions: complete, well-formed, and right about the facts the gateway relies on."""

from __future__ import annotations

import itertools

import pytest

from gateway.lwm2m.model.builtin import BUILTIN_MODELS
from gateway.lwm2m.model.core import CORE_MODELS, CORE_OBJECT_VERSIONS
from gateway.lwm2m.model.ipso import IPSO_MODELS
from gateway.lwm2m.model.registry import ModelRegistry
from gateway.lwm2m.model.table import define, revise
from gateway.lwm2m.model.types import (
    ObjectModel,
    Operations,
    ResourceModel,
    ResourceType,
    object_urn,
    version_key,
)

REGISTRY = ModelRegistry()

REQUIRED_OBJECTS = {
    0, 1, 2, 3, 4, 5, 6, 7, 9, 19,
    3200, 3201, 3202, 3203, 3300, 3301, 3303, 3304, 3311, 3312, 3315, 3316, 3317, 3323, 3328, 3331,
    3336, 3340, 3341, 3342, 3347, 3348,
}  # fmt: skip

ALL = [pytest.param(m, id=f"{m.id}-v{m.version}") for m in BUILTIN_MODELS]
IPSO = [pytest.param(m, id=f"{m.id}-v{m.version}") for m in IPSO_MODELS]


def model(oid: int, version: str) -> ObjectModel:
    found = [m for m in BUILTIN_MODELS if m.id == oid and m.version == version]
    assert len(found) == 1, f"{oid} v{version}: {len(found)} definitions"
    return found[0]


def res(oid: int, version: str, rid: int) -> ResourceModel:
    resource = model(oid, version).resource(rid)
    assert resource is not None, f"/{oid} v{version} has no resource {rid}"
    return resource


# --- completeness and shape -----------------------------------------------------------------------------


def test_every_required_object_is_built_in() -> None:
    assert {m.id for m in BUILTIN_MODELS} == REQUIRED_OBJECTS


def test_each_object_version_is_defined_once() -> None:
    keys = [(m.id, version_key(m.version)) for m in BUILTIN_MODELS]
    assert len(keys) == len(set(keys))
    assert len(REGISTRY) == len(BUILTIN_MODELS)


def test_core_and_ipso_split_by_id_range() -> None:
    assert all(m.id < 2048 for m in CORE_MODELS)
    assert all(3200 <= m.id <= 3400 for m in IPSO_MODELS)


@pytest.mark.parametrize("m", ALL)
def test_object_header_is_well_formed(m: ObjectModel) -> None:
    assert m.name.strip() == m.name and m.name
    version_key(m.version)
    version_key(m.lwm2m_version)
    assert m.lwm2m_version in {"1.0", "1.1"}
    assert m.urn == object_urn(m.id, m.version)
    assert m.resources, "an object without resources"


@pytest.mark.parametrize("m", ALL)
def test_resources_are_well_formed(m: ObjectModel) -> None:
    for rid, r in m.resources.items():
        where = f"/{m.id} v{m.version} resource {rid}"
        assert r.id == rid, where
        assert 0 <= rid <= 65535, where
        assert r.name and r.name.strip() == r.name and "  " not in r.name, where
        assert isinstance(r.type, ResourceType), where
        assert isinstance(r.operations, Operations), where
        # An executable carries no value and is neither read nor written; only executables have no type.
        if Operations.E in r.operations:
            assert r.operations == Operations.E and r.type is ResourceType.NONE, where
        else:
            assert r.type is not ResourceType.NONE, where
    assert list(m.resources) == sorted(m.resources), f"/{m.id} v{m.version}: rows out of order"


def test_the_table_refuses_a_resource_id_twice() -> None:
    row = (1, "A", Operations.R, False, False, ResourceType.INTEGER, "", "")
    with pytest.raises(ValueError, match="resource 1 defined twice"):
        define(9999, "Twice", [row, row], multiple=False, mandatory=False)


def test_revise_adds_replaces_and_drops() -> None:
    base = define(
        9999,
        "Base",
        [
            (1, "A", Operations.R, False, True, ResourceType.INTEGER, "", ""),
            (2, "B", Operations.R, False, False, ResourceType.INTEGER, "", ""),
        ],
        multiple=True,
        mandatory=False,
    )
    later = revise(
        base,
        version="1.1",
        drop=[2],
        rows=[
            (1, "A", Operations.RW, False, True, ResourceType.FLOAT, "", "m"),
            (3, "C", Operations.E, False, False, ResourceType.NONE, "", ""),
        ],
    )
    assert later.version == "1.1" and later.urn == "urn:oma:lwm2m:ext:9999:1.1"
    assert sorted(later.resources) == [1, 3]
    assert later.resources[1].type is ResourceType.FLOAT and later.resources[1].operations == Operations.RW
    assert base.resources[1].type is ResourceType.INTEGER  # the base is untouched
    assert later.multiple and not later.mandatory


def test_a_later_minor_version_keeps_every_resource_of_the_earlier_one() -> None:
    by_id: dict[int, list[ObjectModel]] = {}
    for m in BUILTIN_MODELS:
        by_id.setdefault(m.id, []).append(m)
    for versions in by_id.values():
        versions.sort(key=lambda m: version_key(m.version))
        for older, newer in itertools.pairwise(versions):
            if version_key(older.version)[0] != version_key(newer.version)[0]:
                continue  # a major version may drop resources (Location 2.0)
            assert set(older.resources) <= set(newer.resources), f"/{newer.id} v{newer.version}"
            for rid in older.resources:
                assert older.resources[rid].type == newer.resources[rid].type, f"/{newer.id}/{rid}"


def test_ipso_reusable_resources_are_the_same_everywhere() -> None:
    seen: dict[int, tuple[str, ResourceType, Operations]] = {}
    for m in IPSO_MODELS:
        for r in m.resources.values():
            signature = (r.name, r.type, r.operations)
            assert seen.setdefault(r.id, signature) == signature, f"/{m.id}/{r.id} differs from {seen[r.id]}"


@pytest.mark.parametrize("m", IPSO)
def test_ipso_objects_are_multiple_and_optional_with_one_mandatory_resource(m: ObjectModel) -> None:
    assert m.multiple and not m.mandatory
    mandatory = [r.id for r in m.resources.values() if r.mandatory]
    expected = {3336: 2}.get(m.id, 1)  # Location: latitude and longitude
    assert len(mandatory) == expected, mandatory


# --- facts about the core objects -----------------------------------------------------------------------

MANDATORY_CORE = {
    # object: (multiple instances, mandatory object, mandatory resources), from Core 1.1 Appendix E
    (0, "1.1"): (True, True, {0, 1, 2, 3, 4, 5}),
    (1, "1.1"): (True, True, {0, 1, 6, 7, 8}),
    (2, "1.0"): (True, False, {0, 1, 3}),
    (3, "1.1"): (False, True, {4, 11, 16}),
    (4, "1.0"): (False, False, {0, 1, 2, 4}),
    (5, "1.0"): (False, False, {0, 1, 2, 3, 5, 9}),
    (6, "1.0"): (False, False, {0, 1, 5}),
    (7, "1.0"): (False, False, {6, 7}),
    (9, "1.0"): (True, False, {0, 1, 4, 6, 7, 9, 10, 11, 12}),
    (19, "1.0"): (True, False, {0}),
}


@pytest.mark.parametrize(("key", "expected"), MANDATORY_CORE.items(), ids=lambda v: str(v))
def test_core_object_instances_and_mandatory_resources(
    key: tuple[int, str], expected: tuple[bool, bool, set[int]]
) -> None:
    m = model(*key)
    multiple, mandatory, resources = expected
    assert (m.multiple, m.mandatory) == (multiple, mandatory)
    assert {r.id for r in m.resources.values() if r.mandatory} == resources


def test_security_resource_ids_per_facts_sheet() -> None:
    names = {
        0: "LWM2M Server URI", 1: "Bootstrap-Server", 2: "Security Mode", 3: "Public Key or Identity",
        4: "Server Public Key", 5: "Secret Key", 6: "SMS Security Mode", 7: "SMS Binding Key Parameters",
        8: "SMS Binding Secret Key(s)", 9: "LwM2M Server SMS Number", 10: "Short Server ID",
        11: "Client Hold Off Time", 12: "Bootstrap-Server Account Timeout", 13: "Matching Type", 14: "SNI",
        15: "Certificate Usage", 16: "DTLS/TLS Ciphersuite", 17: "OSCORE Security Mode",
    }  # fmt: skip
    security = model(0, "1.1")
    assert {rid: r.name for rid, r in security.resources.items()} == names
    assert set(model(0, "1.0").resources) == set(range(13))
    # Only the bootstrap server touches the Security object: no operations for LwM2M servers.
    assert all(r.operations == Operations.NONE for r in security.resources.values())
    assert res(0, "1.1", 16).multiple and res(0, "1.1", 16).type is ResourceType.UNSIGNED_INTEGER
    assert res(0, "1.1", 1).type is ResourceType.BOOLEAN
    for rid in (3, 4, 5):
        assert res(0, "1.1", rid).type is ResourceType.OPAQUE
    assert res(0, "1.1", 0).type is ResourceType.STRING
    assert res(0, "1.1", 10).type is ResourceType.INTEGER
    assert res(0, "1.1", 10).range == "1..65534"


def test_security_mode_is_an_integer_0_to_4() -> None:
    mode = res(0, "1.1", 2)
    assert (mode.type, mode.mandatory, mode.multiple) == (ResourceType.INTEGER, True, False)
    assert mode.range == "0..4"


def test_server_resource_ids_per_facts_sheet() -> None:
    names = {
        0: "Short Server ID", 1: "Lifetime", 2: "Default Minimum Period", 3: "Default Maximum Period",
        4: "Disable", 5: "Disable Timeout", 6: "Notification Storing When Disabled or Offline", 7: "Binding",
        8: "Registration Update Trigger", 9: "Bootstrap-Request Trigger", 10: "APN Link",
        11: "TLS-DTLS Alert Code", 12: "Last Bootstrapped", 21: "Trigger", 22: "Preferred Transport",
        23: "Mute Send",
    }  # fmt: skip
    server = model(1, "1.1")
    assert set(server.resources) == set(range(24))  # 13-20: retry tuning
    for rid, name in names.items():
        assert server.resources[rid].name == name
    assert set(model(1, "1.0").resources) == set(range(9))


@pytest.mark.parametrize(
    ("path", "name", "rtype", "ops", "multiple", "mandatory", "units"),
    [
        ("1/1.1/0", "Short Server ID", ResourceType.INTEGER, Operations.R, False, True, ""),
        ("1/1.1/1", "Lifetime", ResourceType.INTEGER, Operations.RW, False, True, "s"),
        ("1/1.0/1", "Lifetime", ResourceType.INTEGER, Operations.RW, False, True, "s"),
        ("1/1.1/4", "Disable", ResourceType.NONE, Operations.E, False, False, ""),
        ("1/1.1/6", "Notification Storing When Disabled or Offline", ResourceType.BOOLEAN, Operations.RW,
         False, True, ""),
        ("1/1.1/7", "Binding", ResourceType.STRING, Operations.RW, False, True, ""),
        ("1/1.1/8", "Registration Update Trigger", ResourceType.NONE, Operations.E, False, True, ""),
        ("1/1.1/9", "Bootstrap-Request Trigger", ResourceType.NONE, Operations.E, False, False, ""),
        ("1/1.1/10", "APN Link", ResourceType.OBJLNK, Operations.RW, False, False, ""),
        ("1/1.1/12", "Last Bootstrapped", ResourceType.TIME, Operations.R, False, False, ""),
        ("1/1.1/13", "Registration Priority Order", ResourceType.UNSIGNED_INTEGER, Operations.NONE, False,
         False, ""),
        ("1/1.1/23", "Mute Send", ResourceType.BOOLEAN, Operations.RW, False, False, ""),
        ("2/1.0/2", "ACL", ResourceType.INTEGER, Operations.RW, True, False, ""),
        ("3/1.1/0", "Manufacturer", ResourceType.STRING, Operations.R, False, False, ""),
        ("3/1.1/4", "Reboot", ResourceType.NONE, Operations.E, False, True, ""),
        ("3/1.1/5", "Factory Reset", ResourceType.NONE, Operations.E, False, False, ""),
        ("3/1.1/6", "Available Power Sources", ResourceType.INTEGER, Operations.R, True, False, ""),
        ("3/1.1/7", "Power Source Voltage", ResourceType.INTEGER, Operations.R, True, False, "mV"),
        ("3/1.1/8", "Power Source Current", ResourceType.INTEGER, Operations.R, True, False, "mA"),
        ("3/1.1/9", "Battery Level", ResourceType.INTEGER, Operations.R, False, False, "%"),
        ("3/1.0/9", "Battery Level", ResourceType.INTEGER, Operations.R, False, False, "%"),
        ("3/1.1/10", "Memory Free", ResourceType.INTEGER, Operations.R, False, False, "KB"),
        ("3/1.1/11", "Error Code", ResourceType.INTEGER, Operations.R, True, True, ""),
        ("3/1.1/13", "Current Time", ResourceType.TIME, Operations.RW, False, False, ""),
        ("3/1.1/14", "UTC Offset", ResourceType.STRING, Operations.RW, False, False, ""),
        ("3/1.1/16", "Supported Binding and Modes", ResourceType.STRING, Operations.R, False, True, ""),
        ("3/1.1/22", "ExtDevInfo", ResourceType.OBJLNK, Operations.R, True, False, ""),
        ("4/1.0/2", "Radio Signal Strength", ResourceType.INTEGER, Operations.R, False, True, "dBm"),
        ("4/1.0/4", "IP Addresses", ResourceType.STRING, Operations.R, True, True, ""),
        ("5/1.0/0", "Package", ResourceType.OPAQUE, Operations.W, False, True, ""),
        ("5/1.0/1", "Package URI", ResourceType.STRING, Operations.RW, False, True, ""),
        ("5/1.0/2", "Update", ResourceType.NONE, Operations.E, False, True, ""),
        ("5/1.0/3", "State", ResourceType.INTEGER, Operations.R, False, True, ""),
        ("5/1.0/5", "Update Result", ResourceType.INTEGER, Operations.R, False, True, ""),
        ("5/1.0/8", "Firmware Update Protocol Support", ResourceType.INTEGER, Operations.R, True, False, ""),
        ("6/1.0/0", "Latitude", ResourceType.FLOAT, Operations.R, False, True, "lat"),
        ("6/1.0/5", "Timestamp", ResourceType.TIME, Operations.R, False, True, ""),
        ("6/1.0/4", "Velocity", ResourceType.OPAQUE, Operations.R, False, False, ""),
        ("7/1.0/6", "Start", ResourceType.NONE, Operations.E, False, True, ""),
        ("9/1.0/4", "Install", ResourceType.NONE, Operations.E, False, True, ""),
        ("9/1.0/7", "Update State", ResourceType.INTEGER, Operations.R, False, True, ""),
        ("9/1.0/12", "Activation State", ResourceType.BOOLEAN, Operations.R, False, True, ""),
        ("19/1.0/0", "Data", ResourceType.OPAQUE, Operations.RW, True, True, ""),
        ("19/1.0/2", "Data Creation Time", ResourceType.TIME, Operations.RW, False, False, ""),
    ],
)  # fmt: skip
def test_core_resource_facts(
    path: str,
    name: str,
    rtype: ResourceType,
    ops: Operations,
    multiple: bool,
    mandatory: bool,
    units: str,
) -> None:
    oid, version, rid = path.split("/")
    r = res(int(oid), version, int(rid))
    assert (r.name, r.type, r.operations, r.multiple, r.mandatory, r.units) == (
        name,
        rtype,
        ops,
        multiple,
        mandatory,
        units,
    )


def test_ranges_that_decoders_and_operators_rely_on() -> None:
    assert res(3, "1.1", 9).range == "0..100"
    assert res(5, "1.0", 3).range == "0..3"
    assert res(5, "1.0", 5).range == "0..9"
    assert res(5, "1.1", 5).range == "0..11"
    assert res(1, "1.1", 0).range == "1..65534"


def test_firmware_update_has_no_resource_4() -> None:
    for version in ("1.0", "1.1", "1.2"):
        assert model(5, version).resource(4) is None


def test_versions_on_record() -> None:
    assert REGISTRY.versions(0) == ("1.0", "1.1")
    assert REGISTRY.versions(1) == ("1.0", "1.1")
    assert REGISTRY.versions(2) == ("1.0", "1.1")
    assert REGISTRY.versions(3) == ("1.0", "1.1", "1.2")
    assert REGISTRY.versions(4) == ("1.0", "1.1", "1.2", "1.3")
    assert REGISTRY.versions(5) == ("1.0", "1.1", "1.2")
    assert REGISTRY.versions(3303) == ("1.0", "1.1")
    assert REGISTRY.versions(3336) == ("1.0", "2.0")
    assert model(0, "1.1").lwm2m_version == "1.1"
    assert model(1, "1.1").lwm2m_version == "1.1"
    assert model(3, "1.1").lwm2m_version == "1.1"
    assert model(3303, "1.1").lwm2m_version == "1.0"
    assert model(3, "1.1").urn == "urn:oma:lwm2m:oma:3:1.1"
    assert model(3303, "1.0").urn == "urn:oma:lwm2m:ext:3303"


def test_the_implied_core_versions_are_all_built_in() -> None:
    for table in CORE_OBJECT_VERSIONS.values():
        for oid, version in table.items():
            if oid == 21:  # OSCORE: not built in, resolves to nothing
                continue
            assert model(oid, version)


# --- facts about the IPSO objects -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_temperature_sensor_value(version: str) -> None:
    value = res(3303, version, 5700)
    assert (value.name, value.type, value.operations, value.mandatory, value.multiple) == (
        "Sensor Value",
        ResourceType.FLOAT,
        Operations.R,
        True,
        False,
    )
    assert res(3303, version, 5701).type is ResourceType.STRING
    assert res(3303, version, 5605).operations == Operations.E
    assert "Cel" in model(3303, version).description


def test_temperature_1_1_adds_timestamps_and_quality() -> None:
    added = set(model(3303, "1.1").resources) - set(model(3303, "1.0").resources)
    assert added == {5750, 5518, 6050, 6042, 6049}
    assert res(3303, "1.1", 5518).type is ResourceType.TIME


@pytest.mark.parametrize(
    ("oid", "rid", "rtype", "ops"),
    [
        (3200, 5500, ResourceType.BOOLEAN, Operations.R),
        (3201, 5550, ResourceType.BOOLEAN, Operations.RW),
        (3202, 5600, ResourceType.FLOAT, Operations.R),
        (3203, 5650, ResourceType.FLOAT, Operations.RW),
        (3300, 5700, ResourceType.FLOAT, Operations.R),
        (3301, 5700, ResourceType.FLOAT, Operations.R),
        (3304, 5700, ResourceType.FLOAT, Operations.R),
        (3311, 5850, ResourceType.BOOLEAN, Operations.RW),
        (3312, 5850, ResourceType.BOOLEAN, Operations.RW),
        (3315, 5700, ResourceType.FLOAT, Operations.R),
        (3316, 5700, ResourceType.FLOAT, Operations.R),
        (3317, 5700, ResourceType.FLOAT, Operations.R),
        (3323, 5700, ResourceType.FLOAT, Operations.R),
        (3328, 5700, ResourceType.FLOAT, Operations.R),
        (3331, 5700, ResourceType.FLOAT, Operations.R),
        (3336, 5514, ResourceType.STRING, Operations.R),
        (3340, 5521, ResourceType.FLOAT, Operations.RW),
        (3341, 5527, ResourceType.STRING, Operations.RW),
        (3342, 5500, ResourceType.BOOLEAN, Operations.R),
        (3347, 5500, ResourceType.BOOLEAN, Operations.R),
        (3348, 5547, ResourceType.INTEGER, Operations.R),
    ],
)
def test_ipso_key_resource(oid: int, rid: int, rtype: ResourceType, ops: Operations) -> None:
    r = res(oid, "1.0", rid)
    assert (r.type, r.operations, r.mandatory) == (rtype, ops, True)


def test_ipso_spot_checks() -> None:
    assert res(3311, "1.0", 5851).range == "0..100"
    assert res(3311, "1.0", 5852).units == "s"
    assert res(3340, "1.0", 5523).operations == Operations.E
    assert res(3340, "1.0", 5526).range == "0..4"
    assert res(3341, "1.0", 5530).type is ResourceType.NONE
    assert res(3336, "1.0", 5705).units == "deg"
    assert res(3336, "2.0", 6051).type is ResourceType.FLOAT
    assert model(3336, "2.0").resource(5514) is None
    assert res(3200, "1.0", 5503).units == "ms"
