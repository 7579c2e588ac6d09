"""The model registry: built-ins plus DDF files, version resolution, and the per-client view."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.lwm2m.model import (
    BUILTIN_MODELS,
    ClientModels,
    ModelError,
    ModelMatch,
    ModelRegistry,
    ObjectModel,
    ResourceType,
    implied_version,
)
from gateway.lwm2m.model.registry import BUILTIN_ORIGIN
from gateway.lwm2m.model.table import INT, ONE, OPT, R, define


def ddf(oid: int, version: str | None = None, name: str = "Thing", rtype: str = "Integer") -> bytes:
    version_element = f"<ObjectVersion>{version}</ObjectVersion>" if version else ""
    return (
        f"<LWM2M><Object><Name>{name}</Name><ObjectID>{oid}</ObjectID>{version_element}"
        f"<Resources><Item ID='0'><Name>Value</Name><Operations>R</Operations><Type>{rtype}</Type></Item>"
        f"</Resources></Object></LWM2M>"
    ).encode()


def thing(oid: int, version: str) -> ObjectModel:
    return define(oid, f"Thing {version}", [(0, "Value", R, ONE, OPT, INT, "", "")], version=version,
                  multiple=True, mandatory=False)  # fmt: skip


@pytest.fixture
def registry() -> ModelRegistry:
    return ModelRegistry()


# --- lookups --------------------------------------------------------------------------------------------


def test_starts_with_the_built_ins(registry: ModelRegistry) -> None:
    assert len(registry) == len(BUILTIN_MODELS)
    assert 3 in registry and 3303 in registry and 42 not in registry
    assert registry.object_ids()[:3] == [0, 1, 2]
    assert registry.origin(3, "1.1") == BUILTIN_ORIGIN


def test_an_empty_registry() -> None:
    empty = ModelRegistry(models=())
    assert len(empty) == 0 and empty.get(3) is None and empty.versions(3) == ()


def test_no_version_gives_the_newest(registry: ModelRegistry) -> None:
    device = registry.get(3)
    assert device is not None and device.version == "1.2"
    match = registry.resolve(3)
    assert match is not None and match.exact and match.requested is None


def test_an_existing_version_is_exact(registry: ModelRegistry) -> None:
    for version in ("1.0", "1.1", "1.2"):
        match = registry.resolve(3, version)
        assert match is not None and match.exact and match.model.version == version


def test_an_unknown_object_is_none_not_an_error(registry: ModelRegistry) -> None:
    assert registry.get(31337) is None
    assert registry.get(31337, "1.0") is None
    assert registry.resolve(31337) is None
    assert registry.model_of(31337) is None


def test_model_of_fits_the_codecs(registry: ModelRegistry) -> None:
    lookup: Callable[[int], ObjectModel | None] = registry.model_of
    model = lookup(3303)
    assert model is not None and model.resources[5700].type is ResourceType.FLOAT


@pytest.mark.parametrize(
    ("available", "wanted", "chosen"),
    [
        (["1.0", "1.1", "1.2"], "1.7", "1.2"),  # newer minor: the newest of that major
        (["1.0", "1.2"], "1.1", "1.0"),  # between two: the older one
        (["1.1", "1.2"], "1.0", "1.1"),  # older than all: the oldest of that major
        (["1.0", "2.0", "2.3"], "2.1", "2.0"),
        (["1.0", "2.0", "2.3"], "1.5", "1.0"),  # the major matters more than the distance
        (["1.0", "1.4", "3.0"], "2.0", "1.4"),  # no such major: the newest not newer
        (["2.0", "3.0"], "1.0", "2.0"),  # no such major, nothing older: the oldest
        (["1.0", "1.10"], "1.9", "1.0"),  # versions compare as numbers, not text
        (["1.0", "1.10"], "1.11", "1.10"),
    ],
)
def test_the_closest_version(available: list[str], wanted: str, chosen: str) -> None:
    registry = ModelRegistry(models=[thing(40000, v) for v in available])
    match = registry.resolve(40000, wanted)
    assert match is not None and match.model.version == chosen and not match.exact
    assert match.requested == wanted
    assert registry.get(40000, wanted) is match.model


def test_the_closest_built_in_version(registry: ModelRegistry) -> None:
    match = registry.resolve(3303, "1.5")
    assert match is not None and match.model.version == "1.1" and not match.exact
    match = registry.resolve(3336, "2.2")
    assert match is not None and match.model.version == "2.0"
    match = registry.resolve(3336, "1.9")
    assert match is not None and match.model.version == "1.0"


@pytest.mark.parametrize("odd", ["1", "one", "", "v1.1", "1.1.1"])
def test_an_unparsable_version_gets_the_newest_inexactly(registry: ModelRegistry, odd: str) -> None:
    match = registry.resolve(3, odd)
    assert match is not None and match.model.version == "1.2" and not match.exact


def test_a_quoted_version_as_lwm2m_1_0_writes_it(registry: ModelRegistry) -> None:
    match = registry.resolve(3, '"1.1"')
    assert match is not None and match.model.version == "1.1" and match.exact


def test_versions_and_equivalent_spellings(registry: ModelRegistry) -> None:
    assert registry.versions(3303) == ("1.0", "1.1")
    assert registry.versions(42) == ()
    match = registry.resolve(3303, "1.01")
    assert match is not None and match.model.version == "1.1" and match.exact


def test_match_exact_when_nothing_was_requested() -> None:
    assert ModelMatch(thing(40000, "1.0")).exact
    assert not ModelMatch(thing(40000, "1.0"), requested="junk").exact


# --- adding and replacing -------------------------------------------------------------------------------


def test_add_replaces_the_same_id_and_version_and_invalidates_lookups(registry: ModelRegistry) -> None:
    before = registry.get(3303, "1.1")
    assert before is not None and registry.get(3303, "1.4") is before
    fixed = thing(3303, "1.1")
    registry.add(fixed, origin="fix.xml")
    assert registry.get(3303, "1.1") is fixed
    assert registry.get(3303, "1.4") is fixed  # cached lookups see the change
    assert registry.origin(3303, "1.1") == "fix.xml"
    assert len(registry) == len(BUILTIN_MODELS)


def test_add_a_newer_version(registry: ModelRegistry) -> None:
    registry.add(thing(3303, "1.2"))
    assert registry.get(3303) is not None and registry.get(3303).version == "1.2"  # type: ignore[union-attr]
    assert registry.versions(3303) == ("1.0", "1.1", "1.2")


def test_add_refuses_a_malformed_version(registry: ModelRegistry) -> None:
    with pytest.raises(ValueError, match="not an object version"):
        registry.add(ObjectModel(id=40000, name="x", version="new"))


def test_origin_of_something_absent(registry: ModelRegistry) -> None:
    assert registry.origin(3, "9.9") is None
    assert registry.origin(3, "nonsense") is None


# --- loading a directory --------------------------------------------------------------------------------


def test_load_dir_loads_good_files_and_reports_bad_ones(registry: ModelRegistry, tmp_path: Path) -> None:
    (tmp_path / "a_scale.xml").write_bytes(ddf(33001, "1.0", name="Scale"))
    (tmp_path / "b_broken.xml").write_bytes(b"<LWM2M><Object>")
    (tmp_path / "c_laughs.xml").write_bytes(b'<!DOCTYPE x [<!ENTITY a "b">]><LWM2M/>')
    (tmp_path / "d_door.XML").write_bytes(ddf(33002, "1.1", name="Door"))
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.xml").write_bytes(ddf(33003))

    errors = registry.load_dir(tmp_path)

    assert [Path(e.source).name for e in errors] == ["b_broken.xml", "c_laughs.xml"]
    assert all(isinstance(e, ModelError) for e in errors)
    assert "not well-formed" in errors[0].problem and "DOCTYPE" in errors[1].problem
    scale, door = registry.get(33001), registry.get(33002)
    assert scale is not None and scale.name == "Scale"
    assert door is not None and door.version == "1.1"
    assert registry.get(33003) is None  # not recursive
    assert registry.origin(33001, "1.0") == str(tmp_path / "a_scale.xml")


def test_a_ddf_file_overrides_a_built_in(registry: ModelRegistry, tmp_path: Path) -> None:
    (tmp_path / "3303.xml").write_bytes(ddf(3303, "1.1", name="Temperature (vendor fix)", rtype="Opaque"))
    assert registry.load_dir(tmp_path) == []
    model = registry.get(3303, "1.1")
    assert model is not None and model.name == "Temperature (vendor fix)"
    assert model.resources[0].type is ResourceType.OPAQUE
    old = registry.get(3303, "1.0")
    assert old is not None and old.name == "Temperature"


def test_the_same_object_in_two_files_keeps_the_first(registry: ModelRegistry, tmp_path: Path) -> None:
    (tmp_path / "1_first.xml").write_bytes(ddf(33001, "1.0", name="First"))
    (tmp_path / "2_second.xml").write_bytes(ddf(33001, "1.0", name="Second"))
    (tmp_path / "3_other_version.xml").write_bytes(ddf(33001, "1.1", name="Third"))
    [error] = registry.load_dir(tmp_path)
    assert error.source == str(tmp_path / "2_second.xml")
    assert "already defined by" in error.problem and "1_first.xml" in error.problem
    first = registry.get(33001, "1.0")
    assert first is not None and first.name == "First"
    assert registry.versions(33001) == ("1.0", "1.1")


def test_a_missing_directory_is_one_error(registry: ModelRegistry, tmp_path: Path) -> None:
    [error] = registry.load_dir(tmp_path / "absent")
    assert error.source == str(tmp_path / "absent")
    assert "cannot list the DDF model directory" in error.problem
    assert len(registry) == len(BUILTIN_MODELS)


def test_a_file_instead_of_a_directory(registry: ModelRegistry, tmp_path: Path) -> None:
    path = tmp_path / "models.xml"
    path.write_bytes(ddf(33001))
    [error] = registry.load_dir(path)
    assert error.source == str(path)


def test_an_empty_directory(registry: ModelRegistry, tmp_path: Path) -> None:
    assert registry.load_dir(tmp_path) == []
    assert len(registry) == len(BUILTIN_MODELS)


# --- the per-client view --------------------------------------------------------------------------------


def test_implied_versions() -> None:
    assert implied_version(1, "1.0") == "1.0"
    assert implied_version(1, "1.1") == "1.1"
    assert implied_version(0, "1.1") == "1.1"
    assert implied_version(2, "1.1") == "1.0"
    assert implied_version(3, "1.1") == "1.1"
    assert implied_version(4, "1.1") == "1.2"
    assert implied_version(4, "1.1.1") == "1.2"  # a patch release is its minor release
    assert implied_version(3, "1.2") == "1.1"  # newer than known: the newest table known
    assert implied_version(3303, "1.1") == "1.0"  # not a core object
    assert implied_version(3, "junk") == "1.0"
    assert implied_version(3, "0.9") == "1.0"


def test_client_view_resolves_registered_versions(registry: ModelRegistry) -> None:
    # </>;rt="oma.lwm2m",</1>;ver=1.1,</1/0>,</3>;ver=1.0,</3/0>,</4/0>,</3303/0>,</3303/1>,</31337/0>
    client = registry.for_client({1: "1.1", 3: "1.0", 4: None, 3303: None, 31337: None}, lwm2m_version="1.1")
    assert isinstance(client, ClientModels)
    versions = {oid: client.get(oid).version for oid in (1, 3, 4, 3303)}  # type: ignore[union-attr]
    assert versions == {1: "1.1", 3: "1.0", 4: "1.2", 3303: "1.0"}
    assert client.get(31337) is None
    assert client.model_of(3) is client.get(3)
    assert client.objects == {1: "1.1", 3: "1.0", 4: "1.2", 3303: "1.0", 31337: "1.0"}
    assert client.lwm2m_version == "1.1"


def test_client_view_of_a_lwm2m_1_0_client(registry: ModelRegistry) -> None:
    client = registry.for_client({1: None, 3: None, 3303: None})
    assert [client.get(oid).version for oid in (1, 3, 3303)] == ["1.0", "1.0", "1.0"]  # type: ignore[union-attr]


def test_client_view_of_an_object_not_registered_is_the_newest(registry: ModelRegistry) -> None:
    client = registry.for_client({3: "1.0"})
    model = client.get(5)
    assert model is not None and model.version == "1.2"
    match = client.resolve(5)
    assert match is not None and match.exact


def test_client_view_reports_inexact_versions(registry: ModelRegistry) -> None:
    client = registry.for_client({3: "1.1", 3303: "1.4", 3336: "2.1", 31337: "5.0"}, lwm2m_version="1.1")
    inexact = client.inexact()
    assert sorted(inexact) == [3303, 3336]
    assert inexact[3303].model.version == "1.1" and inexact[3303].requested == "1.4"
    assert inexact[3336].model.version == "2.0"


def test_client_view_follows_registry_changes(registry: ModelRegistry) -> None:
    client = registry.for_client({3303: "1.4"})
    assert client.get(3303).version == "1.1"  # type: ignore[union-attr]
    registry.add(thing(3303, "1.4"))
    assert client.get(3303).version == "1.4"  # type: ignore[union-attr]
    assert client.inexact() == {}


def test_client_view_copies_its_input(registry: ModelRegistry) -> None:
    objects: dict[int, str | None] = {3: "1.0"}
    client = registry.for_client(objects)
    objects[3] = "1.2"
    assert client.get(3).version == "1.0"  # type: ignore[union-attr]


def test_the_lookup_cache_stays_bounded(registry: ModelRegistry) -> None:
    # Clients choose the version strings; thousands of odd ones must not pile up.
    for n in range(10_000):
        assert registry.get(3, f"1.{n}") is not None
    assert len(registry._cache) <= 4096
