"""LwM2M device profiles: the TOML form, its errors, and the endpoint -> profile choice."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.lwm2m.bridge import (
    DEFAULT_PROFILE_NAME,
    AfterRegistration,
    ObserveStrategy,
    Profile,
    ProfileError,
    ProfileSet,
    load_profile_file,
    load_profiles,
)
from gateway.lwm2m.bridge.profiles import camel_case_key, parse_profile
from gateway.lwm2m.path import LwM2mPath

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "profiles"

FULL = """
name = "temperature-sensor"
observe_strategy = "COMPOSITE_BY_OBJECT"
after_registration = "observe_only"
initial_read_as_strategy = true
default_object_version = "1.1"
object_version_must_match = false
transport_log = "telemetry"

[match]
endpoints = ["temp-*"]
objects = [3303]
priority = 5

[paths."/3303_1.1/0/5700"]
telemetry = true
observe = true
pmin = 10
pmax = 300
st = 0.5

[paths."/3/0/9"]
key = "battery"
telemetry = true
attribute = true

[paths."/3/0"]
pmax = 600

[paths."/3/0/7/1"]
telemetry = true
"""


def parse(text: str, name: str = "p") -> Profile:
    return parse_profile(tomllib.loads(text), source="p.toml", default_name=name)


def problems(text: str) -> list[str]:
    with pytest.raises(ProfileError) as info:
        parse(text)
    return info.value.problems


def test_a_full_profile() -> None:
    p = parse(FULL)
    assert p.name == "temperature-sensor"
    assert p.observe_strategy is ObserveStrategy.COMPOSITE_BY_OBJECT
    assert p.after_registration is AfterRegistration.OBSERVE_ONLY
    assert p.initial_read_as_strategy and not p.object_version_must_match
    assert p.default_object_version == "1.1" and p.transport_log == "telemetry"
    assert p.match_endpoints == ("temp-*",) and p.match_objects == (3303,) and p.priority == 5
    by_text = {s.text: s for s in p.paths}
    temp = by_text["/3303_1.1/0/5700"]
    assert temp.path == LwM2mPath(3303, 0, 5700) and temp.version == "1.1"
    assert temp.key == "sensorValue"  # ThingsBoard's default: camelCase of the resource name
    assert temp.telemetry and temp.observe and not temp.attribute
    assert dict(temp.notify) == {"pmin": 10, "pmax": 300, "st": 0.5}
    battery = by_text["/3/0/9"]
    assert battery.key == "battery" and battery.telemetry and battery.attribute and battery.version is None
    assert by_text["/3/0"].key is None and dict(by_text["/3/0"].notify) == {"pmax": 600}
    assert by_text["/3/0/7/1"].key == "powerSourceVoltage1"  # a resource instance: the instance id appended
    assert p.object_ids() == (3, 3303)


def test_defaults() -> None:
    p = parse("", name="from-file-name")
    assert p.name == "from-file-name" and p.paths == ()
    assert p.observe_strategy is ObserveStrategy.SINGLE
    assert p.after_registration is AfterRegistration.READ_AND_OBSERVE_PROFILE
    assert p.object_version_must_match and p.default_object_version == "1.0" and p.transport_log == "off"
    assert not p.has_rule and not p.default


def test_every_problem_is_reported_with_its_key() -> None:
    found = problems(
        """
observe_stratgy = "SINGLE"
after_registration = "read_all"
transport_log = "yes"
[match]
endpoints = "temp-*"
[paths."/3/0/9"]
telemetry = "yes"
pmin = -1
gt = "high"
[paths."/3/x/9"]
telemetry = true
[paths."/0/0/1"]
observe = true
[paths."/3/0"]
telemetry = true
[paths."/32769/0/1"]
telemetry = true
[paths."/3/0/1"]
key = "dup"
attribute = true
[paths."/3/0/2"]
key = "dup"
attribute = true
[paths."/3/0/3"]
colour = "red"
"""
    )
    text = "\n".join(found)
    assert 'observe_stratgy: unknown key (did you mean "observe_strategy"?)' in text
    assert "after_registration: expected one of" in text and "read_all" in text
    assert 'transport_log: expected one of "off", "telemetry", "log"' in text
    assert "match.endpoints: expected a list of endpoint name patterns" in text
    assert 'paths."/3/0/9".telemetry: expected true or false' in text
    assert 'paths."/3/0/9".pmin: expected a whole number of seconds >= 0' in text
    assert 'paths."/3/0/9".gt: expected a number' in text
    assert "paths.\"/3/x/9\": invalid LwM2M path '/3/x/9'" in text
    assert 'paths."/0/0/1": the Security object (0) is never exposed' in text
    assert 'paths."/3/0": telemetry, attribute and key belong to resources' in text
    assert 'paths."/32769/0/1".key: required: resource /32769/0/1 is not in the object models' in text
    assert 'paths."/3/0/2".key: key \'dup\' is also the key of paths."/3/0/1"' in text
    assert 'paths."/3/0/3".colour: unknown key' in text
    assert all(line.startswith("p.toml: ") for line in found)


def test_the_same_path_twice_is_refused() -> None:
    found = problems('[paths."/3/0/9"]\nobserve = true\n[paths."/3/00/9"]\nobserve = true\n')
    assert found == ['p.toml: paths."/3/00/9": the same path as paths."/3/0/9"']
    # a versioned and a plain path are different rules
    p = parse('[paths."/3/0/9"]\nobserve = true\n[paths."/3_1.1/0/9"]\nobserve = true\n')
    assert len(p.paths) == 2


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Battery Level", "batteryLevel"),
        ("PkgName", "pkgname"),
        ("Model Number", "modelNumber"),
        ("LwM2M Server URI", "lwm2mServerUri"),
        ("Sensor Value", "sensorValue"),
        ("Min Measured Value", "minMeasuredValue"),
        ("", ""),
    ],
)
def test_camel_case_keys_as_thingsboard_makes_them(name: str, key: str) -> None:
    assert camel_case_key(name) == key


def rule(name: str, *, endpoints: tuple[str, ...] = (), objects: tuple[int, ...] = (), priority: int = 0,
         default: bool = False) -> Profile:
    return Profile(name, match_endpoints=endpoints, match_objects=objects, priority=priority, default=default,
                   source=f"{name}.toml")


def test_profile_choice_by_name_objects_priority_and_default() -> None:
    profiles = ProfileSet(
        [
            rule("by-objects", objects=(3303, 3)),
            rule("by-name", endpoints=("temp-*",)),
            rule("both", endpoints=("lab-*",), objects=(3304,)),
            rule("urgent", endpoints=("temp-9*",), priority=10),
            rule("fallback", default=True),
        ]
    )
    assert profiles.choose("temp-1", {3, 3303}).name == "by-name"  # name rules before object rules
    assert profiles.choose("temp-99", {3}).name == "urgent"  # priority first
    assert profiles.choose("x", {1, 3, 3303}).name == "by-objects"  # every listed object registered
    assert profiles.choose("x", {3303}).name == "fallback"
    assert profiles.choose("lab-1", {3303}).name == "fallback"  # both conditions needed
    assert profiles.choose("lab-1", [3304]).name == "both"
    assert profiles.default.name == "fallback"


def test_without_a_default_the_builtin_default_profile() -> None:
    profiles = ProfileSet([rule("by-name", endpoints=("temp-*",))])
    chosen = profiles.choose("other", {3})
    assert chosen.name == DEFAULT_PROFILE_NAME and chosen.paths == ()
    # a profile file called "default" is the default
    assert ProfileSet([Profile("default", paths=())]).choose("x", ()).name == "default"


def test_conflicting_profiles_are_refused() -> None:
    with pytest.raises(ProfileError, match=r"'a' is also defined in a\.toml"):
        ProfileSet([rule("a"), rule("a")])
    with pytest.raises(ProfileError, match="more than one default profile"):
        ProfileSet([rule("a", default=True), rule("b", default=True)])


def test_a_profiles_directory(tmp_path: Path) -> None:
    (tmp_path / "sensor.toml").write_text('[match]\nendpoints = ["s-*"]\n[paths."/3/0/9"]\ntelemetry = true\n')
    (tmp_path / "fallback.toml").write_text("[match]\ndefault = true\n")
    (tmp_path / "notes.txt").write_text("not a profile")
    profiles = load_profiles(tmp_path)
    assert sorted(p.name for p in profiles) == ["fallback", "sensor"]
    assert profiles.choose("s-1", ()).name == "sensor"
    assert profiles.choose("t-1", ()).name == "fallback"
    assert len(load_profiles(tmp_path / "missing")) == 0  # no directory: the built-in default only


def test_errors_of_several_files_come_together(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("name = 3\n")
    (tmp_path / "b.toml").write_text("this is not toml\n")
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path)
    assert len(info.value.problems) == 2
    assert f"{tmp_path / 'a.toml'}: name: expected a string" in info.value.problems[0]
    assert f"{tmp_path / 'b.toml'}: not valid TOML" in info.value.problems[1]


def test_the_example_profiles_load() -> None:
    files = sorted(EXAMPLES.glob("*.toml"))
    assert files, f"no example profiles in {EXAMPLES}"
    for file in files:
        load_profile_file(file)
    profiles = load_profiles(EXAMPLES)
    assert len(profiles) == len(files)
