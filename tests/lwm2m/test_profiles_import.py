"""``profiles import``: ThingsBoard LwM2M profile JSON -> profile TOML, for every fixture in
shared/fixtures/thingsboard/ and the strictness ThingsBoard has (observeAttr refuses unknown keys)."""

from __future__ import annotations

import argparse
import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.lwm2m.bridge import AfterRegistration, ObserveStrategy, load_profile_file
from gateway.lwm2m.bridge.profiles import parse_profile
from gateway.lwm2m.bridge.tbprofile_import import (
    ProfileImportError,
    add_cli,
    import_file,
    import_thingsboard_profile,
    profile_to_toml,
)
from gateway.lwm2m.path import LwM2mPath

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"  # copied from ../shared/fixtures
PROFILE_FIXTURES = [*sorted(FIXTURES.glob("profile-*.json")), FIXTURES / "upstream-device_profile.json"]

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.mark.parametrize("file", PROFILE_FIXTURES, ids=lambda p: p.name)
def test_every_fixture_profile_imports_and_reads_back(file: Path, tmp_path: Path) -> None:
    profile, text = import_file(file)
    out = tmp_path / "p.toml"
    out.write_text(text)
    again = load_profile_file(out)
    assert again.paths == profile.paths
    assert again.observe_strategy is profile.observe_strategy
    assert again.after_registration is profile.after_registration
    assert again.default_object_version == profile.default_object_version
    # every path of the JSON is in the profile, with its version and ThingsBoard's key name
    data = json.loads(file.read_text())
    transport = data["profileData"]["transportConfiguration"] if "profileData" in data else data
    oa = transport["observeAttr"]
    texts = {s.text: s for s in profile.paths}
    for path in set(oa["observe"]) | set(oa["attribute"]) | set(oa["telemetry"]):
        spec = texts[path]
        assert spec.key == oa["keyName"][path]
        assert spec.observe == (path in oa["observe"])
        assert spec.attribute == (path in oa["attribute"])
        assert spec.telemetry == (path in oa["telemetry"])
    for path, attrs in oa["attributeLwm2m"].items():
        assert dict(texts[path].notify) == attrs


def test_observe_only_fixture() -> None:
    imported = import_thingsboard_profile(fixture("profile-observe-only.json"), name="th")
    p = imported.profile
    assert p.name == "th" and p.observe_strategy is ObserveStrategy.SINGLE
    assert p.after_registration is AfterRegistration.READ_AND_OBSERVE_PROFILE  # what ThingsBoard does with 1
    assert p.object_version_must_match and p.default_object_version == "1.0"
    battery = next(s for s in p.paths if s.text == "/3_1.2/0/9")
    assert battery.path == LwM2mPath(3, 0, 9) and battery.version == "1.2" and battery.key == "batteryLevel"
    assert battery.observe and battery.telemetry and dict(battery.notify) == {"pmin": 60, "pmax": 3600}
    temperature = next(s for s in p.paths if s.text == "/3303_1.1/0/5700")
    assert dict(temperature.notify) == {"pmin": 10, "pmax": 300, "st": 0.5}
    assert any("bootstrap" in note for note in imported.notes)
    assert dict(p.thingsboard["client_settings"])["powerMode"] == "DRX"


def test_composite_fixture() -> None:
    p = import_thingsboard_profile(fixture("profile-composite.json")).profile
    assert p.observe_strategy is ObserveStrategy.COMPOSITE_ALL
    assert p.initial_read_as_strategy is True
    assert p.default_object_version == "1.1"
    instance = next(s for s in p.paths if s.text == "/3_1.2/0")  # attributes on an object instance
    assert instance.key is None and dict(instance.notify) == {"pmin": 30, "pmax": 600}
    temp = next(s for s in p.paths if s.text == "/3303_1.1/0/5700")
    assert dict(temp.notify) == {"pmin": 5, "pmax": 120, "gt": 30.0, "lt": 5.0}
    assert {s.key for s in p.paths if s.attribute} == {"manufacturer", "modelNumber", "firmwareVersion", "pkgname",
                                                        "pkgversion"}
    assert dict(p.thingsboard["client_settings"])["fwUpdateStrategy"] == 2


def test_whole_device_profile_and_its_name() -> None:
    data = fixture("upstream-device_profile.json")
    p = import_thingsboard_profile(data, default_name="upstream").profile
    assert p.name == "upstream"  # this DeviceProfile has no name field
    assert [(s.text, s.key, s.observe, s.telemetry) for s in p.paths] == [("/3_1.1/0/0", "testData", True, True)]
    data["name"] = "Monitoring LwM2M"
    assert import_thingsboard_profile(data).profile.name == "Monitoring LwM2M"
    assert import_thingsboard_profile(data, name="given").profile.name == "given"
    # the same transport configuration alone gives the same paths
    alone = data["profileData"]["transportConfiguration"]
    assert import_thingsboard_profile(alone).profile.paths == import_thingsboard_profile(data).profile.paths


def test_an_unknown_key_inside_observe_attr_is_refused_with_its_name() -> None:
    data = fixture("profile-observe-only.json")
    data["observeAttr"]["observeInterval"] = 5
    with pytest.raises(ProfileImportError, match=r"observeAttr\.observeInterval: unknown key 'observeInterval'"):
        import_thingsboard_profile(data)
    data = fixture("profile-observe-only.json")
    data["observeAttr"]["attributeLwm2m"]["/3_1.2/0/9"]["pmiin"] = 5
    with pytest.raises(ProfileImportError, match=r'attributeLwm2m\."/3_1.2/0/9"\.pmiin: unknown key'):
        import_thingsboard_profile(data)
    # in a whole DeviceProfile the key path says where
    whole = fixture("upstream-device_profile.json")
    whole["profileData"]["transportConfiguration"]["observeAttr"]["colour"] = "red"
    with pytest.raises(ProfileImportError, match=r"profileData\.transportConfiguration\.observeAttr\.colour"):
        import_thingsboard_profile(whole)


def test_unknown_keys_elsewhere_are_ignored_as_thingsboard_does() -> None:
    data = fixture("profile-observe-only.json")
    data["somethingNew"] = True
    data["clientLwM2mSettings"]["futureSetting"] = "x"
    data["bootstrap"][0]["securityHost"] = "ignored"
    assert import_thingsboard_profile(data).profile.paths


@pytest.mark.parametrize(
    ("value", "strategy"),
    [
        ("SINGLE", ObserveStrategy.SINGLE),
        ("COMPOSITE_ALL", ObserveStrategy.COMPOSITE_ALL),
        ("COMPOSITE_BY_OBJECT", ObserveStrategy.COMPOSITE_BY_OBJECT),
        (0, ObserveStrategy.SINGLE),
        (1, ObserveStrategy.COMPOSITE_ALL),
        (2, ObserveStrategy.COMPOSITE_BY_OBJECT),
        (None, ObserveStrategy.SINGLE),
    ],
)
def test_strategies_as_names_or_numbers(value: Any, strategy: ObserveStrategy) -> None:
    data = fixture("profile-observe-only.json")
    data["observeAttr"]["observeStrategy"] = value
    assert import_thingsboard_profile(data).profile.observe_strategy is strategy


@pytest.mark.parametrize("value", ["composite_all", 3, -1, True, 1.0])
def test_bad_strategies_are_refused(value: Any) -> None:
    data = fixture("profile-observe-only.json")
    data["observeAttr"]["observeStrategy"] = value
    with pytest.raises(ProfileImportError, match="observeStrategy: expected SINGLE, COMPOSITE_ALL"):
        import_thingsboard_profile(data)


def test_missing_and_null_fields_take_thingsboards_defaults() -> None:
    p = import_thingsboard_profile({"type": "LWM2M", "observeAttr": None}, name="empty").profile
    assert p.paths == () and p.observe_strategy is ObserveStrategy.SINGLE and p.default_object_version == "1.0"
    data = {"type": "LWM2M", "observeAttr": {"observe": None, "telemetry": ["/3303/0/5700"], "keyName": None,
                                             "initAttrTelAsObsStrategy": None}}
    imported = import_thingsboard_profile(data)
    spec = imported.profile.paths[0]
    assert spec.key == "sensorValue" and spec.telemetry  # no keyName: ThingsBoard's default key
    assert any("no keyName" in note for note in imported.notes)


def test_legacy_after_registration_choice() -> None:
    data = fixture("profile-observe-only.json")
    data["clientLwM2mSettings"]["clientOnlyObserveAfterConnect"] = 2
    assert import_thingsboard_profile(data).profile.after_registration is AfterRegistration.READ_AND_OBSERVE_ALL


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"type": "MQTT"}, "'MQTT' is not an LwM2M transport configuration"),
        ({"transportType": "MQTT", "profileData": {}}, "transportType: 'MQTT' is not an LwM2M device profile"),
        ({"profileData": {"transportConfiguration": None}}, "transportConfiguration: expected an object"),
        ({"foo": 1}, "neither a DeviceProfile"),
        ({"type": "LWM2M", "observeAttr": {"observe": "/3/0/9"}}, "observe: expected an array of path strings"),
        ({"type": "LWM2M", "observeAttr": {"observe": ["/3/x"]}}, "invalid LwM2M path '/3/x'"),
        ({"type": "LWM2M", "observeAttr": {"telemetry": ["/3/0"], "keyName": {"/3/0": "k"}}},
         "belong to resources"),
        ({"type": "LWM2M", "observeAttr": {"attributeLwm2m": {"/3/0/9": {"pmin": "10"}}}}, "pmin: expected a number"),
        ({"type": "LWM2M", "observeAttr": {"telemetry": ["/32770/0/1"]}}, "no key name for /32770/0/1"),
        ({"type": "LWM2M", "clientLwM2mSettings": {"defaultObjectIDVer": "2.0"}}, "defaultObjectIDVer"),
    ],
)
def test_refusals_name_the_problem(data: Any, message: str) -> None:
    with pytest.raises(ProfileImportError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        import_thingsboard_profile(data)


def test_credentials_are_not_a_profile() -> None:
    with pytest.raises(ProfileImportError, match="neither a DeviceProfile"):
        import_thingsboard_profile(fixture("credentials-psk.json"))


def test_toml_round_trip_keeps_odd_text() -> None:
    data = copy.deepcopy(fixture("profile-observe-only.json"))
    data["observeAttr"]["keyName"]["/3_1.2/0/9"] = 'bat"tery\\level'
    imported = import_thingsboard_profile(data, name='quoted "name" é')
    text = profile_to_toml(imported.profile, imported.notes)
    again = parse_profile(tomllib.loads(text), source=imported.profile.source, default_name="x")
    assert again == imported.profile


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge-gateway")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.fn(args))


def test_cli_import_to_stdout_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = FIXTURES / "profile-composite.json"
    assert run_cli("profiles", "import", str(source), "--name", "tracker") == 0
    out = capsys.readouterr().out
    assert 'name = "tracker"' in out and tomllib.loads(out)["observe_strategy"] == "COMPOSITE_ALL"
    assert run_cli("profiles", "import", str(source), "--into", str(tmp_path / "profiles")) == 0
    written = tmp_path / "profiles" / "profile-composite.toml"
    assert load_profile_file(written).name == "profile-composite"
    assert run_cli("profiles", "import", str(source), "--into", str(tmp_path / "profiles")) == 1
    assert "exists (use --force" in capsys.readouterr().err
    assert run_cli("profiles", "import", str(source), "--into", str(tmp_path / "profiles"), "--force") == 0
    assert run_cli("profiles", "check", str(tmp_path / "profiles")) == 0
    assert "profile-composite: 11 paths, COMPOSITE_ALL" in capsys.readouterr().out


def test_cli_reports_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "LWM2M", "observeAttr": {"observ": []}}')
    assert run_cli("profiles", "import", str(bad)) == 1
    assert "observeAttr.observ: unknown key 'observ'" in capsys.readouterr().err
    (tmp_path / "not-json.json").write_text("{")
    assert run_cli("profiles", "import", str(tmp_path / "not-json.json")) == 1
    assert "not JSON" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.toml").write_text("after_registration = 1\n")
    assert run_cli("profiles", "check", str(broken)) == 1
    assert "after_registration: expected one of" in capsys.readouterr().err
